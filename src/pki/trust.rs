//! Trust material for client certificates: roots, CRLs and revoked thumbprints, and the
//! rustls verifier built from them.

use std::collections::HashSet;
use std::fmt;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{Context as _, Result, anyhow, bail};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

use super::files::{load_certs, load_crls, load_revoked_list};
use super::identity::parse_certificate;
use super::{Thumbprint, strip_leading_zeros};
use crate::config::Config;

/// More roots than this is almost certainly a mistake (a whole system bundle).
const MAX_TRUSTED_ROOTS: usize = 20;

/// Why [`TrustStore::is_revoked`] refuses a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevocationReason {
    /// Its thumbprint is in `[pki] revoked_thumbprints` or the revoked list file.
    ThumbprintListed,
    /// A loaded CRL of its issuer lists its serial number.
    ListedInCrl,
}

impl fmt::Display for RevocationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ThumbprintListed => "thumbprint is on the revoked list",
            Self::ListedInCrl => "serial number is on its issuer's CRL",
        })
    }
}

/// Roots, CRLs and revoked thumbprints loaded from the configuration.
#[derive(Debug, Clone)]
pub struct TrustStore {
    roots: Arc<RootCertStore>,
    /// The roots as loaded (IKEv2 names them in CERTREQ by their key's hash).
    root_certs: Arc<Vec<CertificateDer<'static>>>,
    crls: Vec<CertificateRevocationListDer<'static>>,
    /// (issuer name DER, serial without leading zero bytes) of every CRL entry.
    crl_entries: HashSet<(Vec<u8>, Vec<u8>)>,
    revoked_thumbprints: Arc<HashSet<Thumbprint>>,
}

impl TrustStore {
    pub fn load(config: &Config) -> Result<TrustStore> {
        let mut roots = RootCertStore::empty();
        // Kept to check the signatures of CRLs that our roots issued.
        let mut root_certs: Vec<CertificateDer<'static>> = Vec::new();
        for path in config.trusted_root_paths() {
            for cert in load_certs(&path)? {
                if root_certs.len() == MAX_TRUSTED_ROOTS {
                    bail!(
                        "more than {MAX_TRUSTED_ROOTS} trusted root certificates in [pki] trusted_roots \
                         (at {}); list only the CAs that issue client certificates",
                        path.display()
                    );
                }
                let parsed = parse_certificate(&cert).with_context(|| path.display().to_string())?;
                if !parsed.is_ca() {
                    bail!(
                        "{}: certificate \"{}\" is not a CA certificate (no basicConstraints CA:TRUE); \
                         trusted roots must be the CAs that issue client certificates",
                        path.display(),
                        parsed.subject()
                    );
                }
                roots
                    .add(cert.clone())
                    .map_err(|e| anyhow!("{}: certificate \"{}\": {e}", path.display(), parsed.subject()))?;
                drop(parsed);
                root_certs.push(cert);
            }
        }

        let own_crl = config.pki_dir().join("crl.pem");
        let mut crls = Vec::new();
        let mut crl_entries = HashSet::new();
        for path in config.crl_paths() {
            if path == own_crl && !path.exists() {
                continue;
            }
            for crl in load_crls(&path)? {
                index_crl(&crl, &root_certs, &mut crl_entries).with_context(|| format!("CRL {}", path.display()))?;
                crls.push(crl);
            }
        }

        let mut revoked_thumbprints = HashSet::new();
        for value in &config.pki.revoked_thumbprints {
            let thumbprint = value.parse().map_err(|e| anyhow!("[pki] revoked_thumbprints: {value:?}: {e}"))?;
            revoked_thumbprints.insert(thumbprint);
        }
        revoked_thumbprints.extend(load_revoked_list(&config.revoked_list_path())?);

        Ok(TrustStore {
            roots: Arc::new(roots),
            root_certs: Arc::new(root_certs),
            crls,
            crl_entries,
            revoked_thumbprints: Arc::new(revoked_thumbprints),
        })
    }

    /// A verifier that requires a client certificate chaining to a trusted root, not
    /// revoked by a loaded CRL of its issuer nor by thumbprint.
    /// `mandatory`: refuse clients without a certificate; otherwise a certificate is
    /// optional (passwords or tokens admit those), but one presented is still checked.
    pub fn client_verifier(&self, mandatory: bool) -> Result<Arc<dyn ClientCertVerifier>> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut builder = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider)
            .with_crls(self.crls.iter().cloned())
            // Enterprise roots often come without CRLs, and intermediates' CRLs are not
            // published here: only the leaf is checked, against whatever CRLs we have.
            .only_check_end_entity_revocation()
            .allow_unknown_revocation_status();
        if !mandatory {
            builder = builder.allow_unauthenticated();
        }
        let inner = builder.build().map_err(|e| anyhow!("building the client certificate verifier: {e}"))?;
        Ok(Arc::new(ThumbprintRevocationVerifier { inner, revoked: self.revoked_thumbprints.clone() }))
    }

    /// Whether a certificate accepted earlier is revoked now (used to cut live sessions
    /// after the revocation sources change).
    pub fn is_revoked(&self, leaf_der: &[u8]) -> Option<RevocationReason> {
        if self.revoked_thumbprints.contains(&Thumbprint::of_der(leaf_der)) {
            return Some(RevocationReason::ThumbprintListed);
        }
        // The leaf passed verification when the session started, so it parses.
        let cert = parse_certificate(leaf_der).ok()?;
        let key = (cert.issuer().as_raw().to_vec(), strip_leading_zeros(cert.raw_serial()).to_vec());
        self.crl_entries.contains(&key).then_some(RevocationReason::ListedInCrl)
    }

    /// The state of every file [`TrustStore::load`] reads, missing optional ones
    /// included: reload when it differs from the stamp taken at the last load.
    pub fn stamp(config: &Config) -> SourceStamp {
        let mut paths = config.trusted_root_paths();
        paths.extend(config.crl_paths());
        paths.push(config.revoked_list_path());
        SourceStamp(
            paths
                .into_iter()
                .map(|path| {
                    let state = FileState::of(&path);
                    (path, state)
                })
                .collect(),
        )
    }

    /// The trusted roots (DER), in the order loaded.
    pub fn root_certificates(&self) -> &[CertificateDer<'static>] {
        &self.root_certs
    }

    /// Checks a client certificate chain outside TLS (IKEv2 sends it in CERT payloads):
    /// the same roots, CRLs and revoked thumbprints as the TLS verifier, at `now`.
    pub fn verify_client_chain(&self, chain: &[Vec<u8>], now: SystemTime) -> Result<()> {
        let (leaf, intermediates) = chain.split_first().ok_or_else(|| anyhow!("no certificate"))?;
        let leaf = CertificateDer::from(leaf.as_slice());
        let intermediates: Vec<CertificateDer<'_>> =
            intermediates.iter().map(|c| CertificateDer::from(c.as_slice())).collect();
        let now = UnixTime::since_unix_epoch(now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default());
        self.client_verifier(true)?.verify_client_cert(&leaf, &intermediates, now).map_err(|e| anyhow!("{e}"))?;
        Ok(())
    }

    pub fn root_count(&self) -> usize {
        self.roots.len()
    }

    /// Revocation entries loaded: listed thumbprints plus CRL entries (a certificate
    /// revoked by `p2sgw pki revoke` counts in both).
    pub fn revoked_count(&self) -> usize {
        self.revoked_thumbprints.len() + self.crl_entries.len()
    }
}

/// Records the entries of a CRL. A CRL from one of our roots must carry that root's
/// signature; others (from intermediates the client presents) are checked by webpki
/// during the handshake.
fn index_crl(
    crl_der: &[u8],
    root_certs: &[CertificateDer<'static>],
    entries: &mut HashSet<(Vec<u8>, Vec<u8>)>,
) -> Result<()> {
    let (_, crl) = x509_parser::parse_x509_crl(crl_der).map_err(|e| anyhow!("not a valid CRL: {e}"))?;
    let issuer = crl.issuer().as_raw();
    let issuer_roots: Vec<_> = root_certs
        .iter()
        .filter_map(|der| parse_certificate(der).ok())
        .filter(|root| root.subject().as_raw() == issuer)
        .collect();
    if !issuer_roots.is_empty() {
        let signed_by_a_root = issuer_roots.iter().any(|root| crl.verify_signature(root.public_key()).is_ok());
        if !signed_by_a_root {
            bail!("its signature does not verify with the trusted root \"{}\"", crl.issuer());
        }
    }
    for revoked in crl.iter_revoked_certificates() {
        entries.insert((issuer.to_vec(), strip_leading_zeros(revoked.raw_serial()).to_vec()));
    }
    Ok(())
}

/// webpki's verifier, plus refusal of certificates revoked by thumbprint.
#[derive(Debug)]
struct ThumbprintRevocationVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    revoked: Arc<HashSet<Thumbprint>>,
}

impl ClientCertVerifier for ThumbprintRevocationVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if self.revoked.contains(&Thumbprint::of_der(end_entity)) {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        self.inner.verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }
}

/// Identity of the trust sources' current contents; compare two with `==`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceStamp(Vec<(PathBuf, Option<FileState>)>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileState {
    modified: SystemTime,
    len: u64,
    // Atomic replacement (rename) changes the inode even within one mtime tick.
    inode: u64,
}

impl FileState {
    fn of(path: &Path) -> Option<FileState> {
        let meta = std::fs::metadata(path).ok()?;
        Some(FileState { modified: meta.modified().ok()?, len: meta.len(), inode: meta.ino() })
    }
}
