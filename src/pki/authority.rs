//! The gateway's own certificate authority: `pki init`, `pki issue`, `pki revoke`.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow, bail};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SanType,
    SerialNumber, SignatureAlgorithm,
};
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};
use x509_parser::extensions::ParsedExtension;
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};
use x509_parser::public_key::PublicKey;

use super::files::{
    PUBLIC_FILE_MODE, SECRET_FILE_MODE, create_private_dir, load_certs, load_private_key, load_revoked_list,
    write_atomically,
};
use super::identity::parse_certificate;
use super::{KeyAlgorithm, Thumbprint, serial_to_hex, strip_leading_zeros};
use crate::proto::openvpn::static_key::StaticKey;

const CA_CERT_FILE: &str = "ca.crt";
const CA_KEY_FILE: &str = "ca.key";
const SERVER_CERT_FILE: &str = "server.crt";
const SERVER_KEY_FILE: &str = "server.key";
const TLS_CRYPT_KEY_FILE: &str = "tls-crypt.key";
const REVOKED_LIST_FILE: &str = "revoked.txt";
const CRL_FILE: &str = "crl.pem";
const CLIENTS_DIR: &str = "clients";
const INDEX_FILE: &str = "index.toml";
/// Held while a change is made (see [`lock_changes`]).
const LOCK_FILE: &str = ".lock";

/// Validity of the root CA; the server certificate expires with it.
const CA_VALIDITY: Duration = Duration::days(3650);
/// `nextUpdate` of each generated CRL. The gateway itself keeps using an older CRL
/// (it does not enforce nextUpdate); this only matters to other consumers of `crl.pem`.
const CRL_VALIDITY: Duration = Duration::days(30);
/// Certificates start this long before "now" so that clients with a slow clock accept them.
const CLOCK_SKEW_ALLOWANCE: Duration = Duration::hours(1);
const MAX_CLIENT_NAME_LEN: usize = 64;

const REVOKED_LIST_HEADER: &str = "\
# Revoked client certificates, by SHA-1 thumbprint of the certificate (40 hex digits,
# upper or lower case, ':' or spaces allowed). One per line; text after '#' is a comment.
# `p2sgw pki revoke` appends here. The gateway re-reads this file when it changes and
# disconnects sessions that use a listed certificate, whichever CA issued it.
";

/// What `Pki::init` created.
#[derive(Debug, Clone)]
pub struct InitSummary {
    pub dir: PathBuf,
    pub key_algorithm: KeyAlgorithm,
    pub ca_cert_path: PathBuf,
    pub ca_common_name: String,
    pub ca_thumbprint: Thumbprint,
    pub ca_not_after: OffsetDateTime,
    pub server_cert_path: PathBuf,
    pub server_key_path: PathBuf,
    /// The server certificate's CN (the gateway name); clients check it with `verify-x509-name`.
    pub server_common_name: String,
    pub tls_crypt_key_path: PathBuf,
    pub crl_path: PathBuf,
    pub revoked_list_path: PathBuf,
}

/// A client certificate `Pki::issue` just wrote.
#[derive(Debug, Clone)]
pub struct IssuedClient {
    pub name: String,
    pub thumbprint: Thumbprint,
    pub serial_hex: String,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub not_after: OffsetDateTime,
}

/// Which certificate to revoke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeTarget {
    /// A client issued by this PKI.
    Name(String),
    /// Any certificate, issued here or elsewhere.
    Thumbprint(Thumbprint),
}

/// The outcome of `Pki::revoke`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedClient {
    pub thumbprint: Thumbprint,
    /// Set when this PKI issued the certificate.
    pub name: Option<String>,
    /// Set when this PKI issued the certificate (its serial is then in `crl.pem`).
    pub serial_hex: Option<String>,
    /// The certificate was already revoked; nothing changed.
    pub already: bool,
}

/// One issued client certificate, as kept in `clients/index.toml`. A name keeps its
/// revoked certificates here (their serials stay on the CRL) next to at most one
/// active certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientRecord {
    pub name: String,
    pub thumbprint: Thumbprint,
    #[serde(rename = "serial")]
    pub serial_hex: String,
    #[serde(with = "rfc3339")]
    pub not_after: OffsetDateTime,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "rfc3339_option")]
    pub revoked_at: Option<OffsetDateTime>,
}

impl ClientRecord {
    pub fn is_revoked(&self) -> bool {
        self.revoked_at.is_some()
    }
}

/// The files of an active (issued, not revoked) client.
#[derive(Debug, Clone)]
pub struct ClientCredentials {
    pub record: ClientRecord,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientIndex {
    /// Number of the newest CRL written to `crl.pem`.
    crl_number: u64,
    #[serde(default, rename = "client")]
    clients: Vec<ClientRecord>,
}

impl ClientIndex {
    fn active(&self, name: &str) -> Option<usize> {
        self.clients.iter().position(|c| c.name == name && !c.is_revoked())
    }

    /// The active certificate of `name`, else its newest revoked one.
    fn newest_for_name(&self, name: &str) -> Option<usize> {
        self.active(name).or_else(|| self.clients.iter().rposition(|c| c.name == name))
    }
}

/// An opened PKI directory with its CA loaded.
pub struct Pki {
    dir: PathBuf,
    ca_cert: CertificateDer<'static>,
    ca_key: KeyPair,
    /// The CA's subject key identifier, repeated as the authority key identifier of its CRLs.
    ca_key_id: Vec<u8>,
    ca_not_after: OffsetDateTime,
    key_algorithm: KeyAlgorithm,
    index: ClientIndex,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("dir", &self.dir)
            .field("key_algorithm", &self.key_algorithm)
            .field("clients", &self.index.clients.len())
            .finish_non_exhaustive()
    }
}

impl Pki {
    /// Creates a new PKI in `dir` for the gateway `gateway` (a DNS name or IP address).
    pub fn init(dir: &Path, gateway: &str, key_algorithm: KeyAlgorithm) -> Result<InitSummary> {
        let gateway_san = gateway_subject_alt_name(gateway)?;
        let ca_cert_path = dir.join(CA_CERT_FILE);
        if ca_cert_path.exists() {
            bail!("PKI already initialised at {}; remove it or use another --dir", dir.display());
        }
        create_private_dir(dir)?;
        create_private_dir(&dir.join(CLIENTS_DIR))?;

        let now = now_utc();
        let ca_common_name = format!("p2sgw root CA {gateway}");
        let ca_not_after = now + CA_VALIDITY;
        let mut ca_params = CertificateParams::default();
        ca_params.distinguished_name = common_name_dn(&ca_common_name);
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca_params.not_before = now - CLOCK_SKEW_ALLOWANCE;
        ca_params.not_after = ca_not_after;
        ca_params.serial_number = Some(random_serial());
        let ca_key = generate_key(key_algorithm)?;
        let ca_cert = ca_params.self_signed(&ca_key).context("signing the root CA certificate")?;
        let issuer = Issuer::new(ca_params, &ca_key);

        let mut server_params = leaf_params(gateway, now, ca_not_after);
        server_params.subject_alt_names = vec![gateway_san];
        server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        server_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if key_algorithm.is_rsa() {
            // Customary for RSA server certificates (RSA key transport); some TLS stacks check it.
            server_params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
        }
        let server_key = generate_key(key_algorithm)?;
        let server_cert = server_params.signed_by(&server_key, &issuer).context("signing the server certificate")?;

        let index = ClientIndex { crl_number: 1, clients: Vec::new() };
        let ca_key_id = subject_key_identifier(ca_cert.der())?;
        let crl_pem = signed_crl(&issuer, &ca_key_id, &index, now)?;

        let summary = InitSummary {
            dir: dir.to_path_buf(),
            key_algorithm,
            ca_cert_path: ca_cert_path.clone(),
            ca_common_name,
            ca_thumbprint: Thumbprint::of_der(ca_cert.der()),
            ca_not_after,
            server_cert_path: dir.join(SERVER_CERT_FILE),
            server_key_path: dir.join(SERVER_KEY_FILE),
            server_common_name: gateway.to_string(),
            tls_crypt_key_path: dir.join(TLS_CRYPT_KEY_FILE),
            crl_path: dir.join(CRL_FILE),
            revoked_list_path: dir.join(REVOKED_LIST_FILE),
        };
        write_atomically(&dir.join(CA_KEY_FILE), ca_key.serialize_pem().as_bytes(), SECRET_FILE_MODE)?;
        write_atomically(&summary.server_key_path, server_key.serialize_pem().as_bytes(), SECRET_FILE_MODE)?;
        write_atomically(&summary.server_cert_path, server_cert.pem().as_bytes(), PUBLIC_FILE_MODE)?;
        write_atomically(&summary.tls_crypt_key_path, StaticKey::generate().to_text().as_bytes(), SECRET_FILE_MODE)?;
        write_atomically(&summary.revoked_list_path, REVOKED_LIST_HEADER.as_bytes(), PUBLIC_FILE_MODE)?;
        write_atomically(&summary.crl_path, crl_pem.as_bytes(), PUBLIC_FILE_MODE)?;
        write_index(&dir.join(CLIENTS_DIR).join(INDEX_FILE), &index)?;
        // Last: its presence is what marks the directory as initialised, so an
        // interrupted init can simply be run again.
        write_atomically(&ca_cert_path, ca_cert.pem().as_bytes(), PUBLIC_FILE_MODE)?;
        Ok(summary)
    }

    /// Opens the PKI in `dir` made by [`Pki::init`].
    pub fn open(dir: &Path) -> Result<Pki> {
        let ca_cert_path = dir.join(CA_CERT_FILE);
        let ca_key_path = dir.join(CA_KEY_FILE);
        for path in [&ca_cert_path, &ca_key_path] {
            if !path.exists() {
                bail!("no PKI at {}: {} is missing (create one with `p2sgw pki init`)", dir.display(), path.display());
            }
        }
        let ca_cert = load_certs(&ca_cert_path)?.swap_remove(0);
        let parsed = parse_certificate(&ca_cert).with_context(|| ca_cert_path.display().to_string())?;
        let key_algorithm = key_algorithm_of(&parsed).with_context(|| ca_cert_path.display().to_string())?;
        let ca_not_after = parsed.validity().not_after.to_datetime();
        let ca_spki = parsed.public_key().raw.to_vec();
        drop(parsed);

        let ca_key =
            KeyPair::from_der_and_sign_algo(&load_private_key(&ca_key_path)?, key_algorithm.signature_algorithm())
                .map_err(|e| anyhow!("{}: not a usable {key_algorithm} key: {e}", ca_key_path.display()))?;
        if rcgen::PublicKeyData::subject_public_key_info(&ca_key) != ca_spki {
            bail!("{} does not belong to {}", ca_key_path.display(), ca_cert_path.display());
        }
        let ca_key_id = subject_key_identifier(&ca_cert).with_context(|| ca_cert_path.display().to_string())?;
        let index = read_index(&dir.join(CLIENTS_DIR).join(INDEX_FILE))?;
        Ok(Pki { dir: dir.to_path_buf(), ca_cert, ca_key, ca_key_id, ca_not_after, key_algorithm, index })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn ca_cert_path(&self) -> PathBuf {
        self.dir.join(CA_CERT_FILE)
    }

    pub fn key_algorithm(&self) -> KeyAlgorithm {
        self.key_algorithm
    }

    /// Every certificate issued, revoked ones included, oldest first.
    pub fn clients(&self) -> &[ClientRecord] {
        &self.index.clients
    }

    /// Issues a client certificate valid for `days` days, with CN = `name`.
    pub fn issue(&mut self, name: &str, days: u32) -> Result<IssuedClient> {
        validate_client_name(name)?;
        if days == 0 {
            bail!("a client certificate must be valid for at least one day");
        }
        let _lock = lock_changes(&self.dir)?;
        self.index = read_index(&self.index_path())?;
        if let Some(active) = self.index.active(name) {
            bail!(
                "a certificate for {name:?} already exists (thumbprint {}); revoke it before issuing a new one",
                self.index.clients[active].thumbprint
            );
        }
        let now = now_utc();
        let not_after = now + Duration::days(i64::from(days));
        if not_after > self.ca_not_after {
            bail!(
                "{days} days would outlive the CA, which expires on {}; ask for fewer days",
                self.ca_not_after.date()
            );
        }
        let mut params = leaf_params(name, now, not_after);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = generate_key(self.key_algorithm)?;
        let issuer = Issuer::from_ca_cert_der(&self.ca_cert, &self.ca_key)
            .map_err(|e| anyhow!("{}: {e}", self.ca_cert_path().display()))?;
        let cert = params.signed_by(&key, &issuer).with_context(|| format!("signing the certificate for {name:?}"))?;
        let serial = params.serial_number.as_ref().expect("leaf_params sets a serial number");

        let record = ClientRecord {
            name: name.to_string(),
            thumbprint: Thumbprint::of_der(cert.der()),
            serial_hex: serial_to_hex(serial.as_ref()),
            not_after,
            revoked_at: None,
        };
        let (cert_path, key_path) = self.client_paths(name);
        write_atomically(&key_path, key.serialize_pem().as_bytes(), SECRET_FILE_MODE)?;
        write_atomically(&cert_path, cert.pem().as_bytes(), PUBLIC_FILE_MODE)?;
        let mut index = self.index.clone();
        index.clients.push(record.clone());
        write_index(&self.index_path(), &index)?;
        self.index = index;
        Ok(IssuedClient {
            name: record.name,
            thumbprint: record.thumbprint,
            serial_hex: record.serial_hex,
            cert_path,
            key_path,
            not_after,
        })
    }

    /// Revokes a certificate: lists its thumbprint in `revoked.txt` and, when this PKI
    /// issued it, adds its serial to `crl.pem`. Revoking twice changes nothing.
    pub fn revoke(&mut self, target: RevokeTarget) -> Result<RevokedClient> {
        let _lock = lock_changes(&self.dir)?;
        self.index = read_index(&self.index_path())?;
        let (thumbprint, position) = match target {
            RevokeTarget::Name(name) => {
                let position = self.index.newest_for_name(&name).ok_or_else(|| {
                    anyhow!("no client certificate named {name:?} was issued by the PKI at {}", self.dir.display())
                })?;
                (self.index.clients[position].thumbprint, Some(position))
            }
            RevokeTarget::Thumbprint(thumbprint) => {
                (thumbprint, self.index.clients.iter().position(|c| c.thumbprint == thumbprint))
            }
        };
        let record = position.map(|p| self.index.clients[p].clone());
        let now = now_utc();

        // The thumbprint list is what the gateway enforces for any issuer, so it goes first.
        let revoked_list_path = self.dir.join(REVOKED_LIST_FILE);
        let already_listed = load_revoked_list(&revoked_list_path)?.contains(&thumbprint);
        if !already_listed {
            let label = record.as_ref().map_or("not issued by this PKI", |r| r.name.as_str());
            append_revoked_line(&revoked_list_path, thumbprint, label, now)?;
        }

        let newly_revoked_record = position.filter(|&p| !self.index.clients[p].is_revoked());
        if let Some(p) = newly_revoked_record {
            let mut index = self.index.clone();
            index.clients[p].revoked_at = Some(now);
            index.crl_number += 1;
            let issuer = Issuer::from_ca_cert_der(&self.ca_cert, &self.ca_key)
                .map_err(|e| anyhow!("{}: {e}", self.ca_cert_path().display()))?;
            let crl_pem = signed_crl(&issuer, &self.ca_key_id, &index, now)?;
            write_atomically(&self.dir.join(CRL_FILE), crl_pem.as_bytes(), PUBLIC_FILE_MODE)?;
            write_index(&self.index_path(), &index)?;
            self.index = index;
        }
        Ok(RevokedClient {
            thumbprint,
            name: record.as_ref().map(|r| r.name.clone()),
            serial_hex: record.map(|r| r.serial_hex),
            already: already_listed && newly_revoked_record.is_none(),
        })
    }

    /// The certificate and key files of the active client `name`.
    pub fn client_credentials(&self, name: &str) -> Result<ClientCredentials> {
        let Some(position) = self.index.newest_for_name(name) else {
            bail!(
                "no client certificate named {name:?} was issued by the PKI at {} (issue one with `p2sgw pki issue`)",
                self.dir.display()
            );
        };
        let record = self.index.clients[position].clone();
        if let Some(revoked_at) = record.revoked_at {
            bail!("the certificate of {name:?} was revoked on {}; issue a new one first", revoked_at.date());
        }
        let (cert_path, key_path) = self.client_paths(name);
        Ok(ClientCredentials { record, cert_path, key_path })
    }

    fn client_paths(&self, name: &str) -> (PathBuf, PathBuf) {
        let clients = self.dir.join(CLIENTS_DIR);
        (clients.join(format!("{name}.crt")), clients.join(format!("{name}.key")))
    }

    fn index_path(&self) -> PathBuf {
        self.dir.join(CLIENTS_DIR).join(INDEX_FILE)
    }
}

impl KeyAlgorithm {
    fn signature_algorithm(self) -> &'static SignatureAlgorithm {
        match self {
            Self::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Self::Rsa2048 | Self::Rsa3072 => &rcgen::PKCS_RSA_SHA256,
        }
    }
}

fn generate_key(algorithm: KeyAlgorithm) -> Result<KeyPair> {
    let key = match algorithm {
        KeyAlgorithm::EcdsaP256 => KeyPair::generate_for(algorithm.signature_algorithm()),
        KeyAlgorithm::Rsa2048 => KeyPair::generate_rsa_for(algorithm.signature_algorithm(), rcgen::RsaKeySize::_2048),
        KeyAlgorithm::Rsa3072 => KeyPair::generate_rsa_for(algorithm.signature_algorithm(), rcgen::RsaKeySize::_3072),
    };
    key.map_err(|e| anyhow!("generating a {algorithm} key: {e}"))
}

/// The key algorithm of a CA certificate, which its issued certificates then share.
fn key_algorithm_of(cert: &x509_parser::certificate::X509Certificate<'_>) -> Result<KeyAlgorithm> {
    let spki = cert.public_key();
    match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) => match rsa.key_size() {
            2048 => Ok(KeyAlgorithm::Rsa2048),
            3072 => Ok(KeyAlgorithm::Rsa3072),
            bits => bail!("the CA has an RSA-{bits} key; p2sgw issues with rsa-2048, rsa-3072 or ecdsa-p256"),
        },
        Ok(PublicKey::EC(_))
            if spki.algorithm.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY
                && spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok()) == Some(OID_EC_P256) =>
        {
            Ok(KeyAlgorithm::EcdsaP256)
        }
        _ => bail!("the CA key is of an unsupported type; p2sgw issues with rsa-2048, rsa-3072 or ecdsa-p256"),
    }
}

fn subject_key_identifier(cert_der: &[u8]) -> Result<Vec<u8>> {
    let cert = parse_certificate(cert_der)?;
    cert.iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
            _ => None,
        })
        .ok_or_else(|| anyhow!("the CA certificate has no subject key identifier"))
}

fn common_name_dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

/// Parameters shared by the server and client certificates.
fn leaf_params(common_name: &str, now: OffsetDateTime, not_after: OffsetDateTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name_dn(common_name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.not_before = now - CLOCK_SKEW_ALLOWANCE;
    params.not_after = not_after;
    params.serial_number = Some(random_serial());
    params.use_authority_key_identifier_extension = true;
    params
}

/// 16 random bytes, top bit clear so the DER INTEGER is positive and exactly 16 bytes.
fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).expect("the system RNG works");
    bytes[0] = (bytes[0] & 0x7f).max(1);
    SerialNumber::from_slice(&bytes)
}

fn gateway_subject_alt_name(gateway: &str) -> Result<SanType> {
    if let Ok(ip) = gateway.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let is_label = |label: &str| {
        (1..=63).contains(&label.len())
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if gateway.len() > 253 || !gateway.split('.').all(is_label) {
        bail!(
            "gateway name {gateway:?} is neither an IP address nor a DNS name; \
             set [gateway] name to the name clients connect to"
        );
    }
    let dns_name = gateway.to_string().try_into().map_err(|e| anyhow!("gateway name {gateway:?}: {e}"))?;
    Ok(SanType::DnsName(dns_name))
}

fn validate_client_name(name: &str) -> Result<()> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-');
    let starts_well = name.starts_with(|c: char| c.is_ascii_alphanumeric());
    if name.len() > MAX_CLIENT_NAME_LEN || !starts_well || !name.chars().all(allowed) {
        bail!(
            "invalid client name {name:?}: use 1 to {MAX_CLIENT_NAME_LEN} characters from A-Z a-z 0-9 . _ @ -, \
             starting with a letter or digit"
        );
    }
    Ok(())
}

/// A CRL listing every revoked certificate of `index`, numbered `index.crl_number`.
fn signed_crl(
    issuer: &Issuer<'_, &KeyPair>,
    ca_key_id: &[u8],
    index: &ClientIndex,
    now: OffsetDateTime,
) -> Result<String> {
    let revoked_certs = index
        .clients
        .iter()
        .filter_map(|record| record.revoked_at.map(|at| (record, at)))
        .map(|(record, revocation_time)| {
            Ok(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&decode_hex(&record.serial_hex)?),
                revocation_time,
                reason_code: None,
                invalidity_date: None,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let params = CertificateRevocationListParams {
        this_update: now,
        next_update: now + CRL_VALIDITY,
        crl_number: SerialNumber::from_slice(strip_leading_zeros(&index.crl_number.to_be_bytes())),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::PreSpecified(ca_key_id.to_vec()),
    };
    let crl = params.signed_by(issuer).context("signing the CRL")?;
    crl.pem().context("encoding the CRL")
}

fn decode_hex(hex: &str) -> Result<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        bail!("serial {hex:?} is not hex bytes");
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| anyhow!("serial {hex:?} is not hex bytes")))
        .collect()
}

/// Lists `thumbprint` in the revoked-list file at `path` (for certificates of any
/// issuer); false when it was listed already.
pub fn list_revoked_thumbprint(path: &Path, thumbprint: Thumbprint, label: &str) -> Result<bool> {
    if load_revoked_list(path)?.contains(&thumbprint) {
        return Ok(false);
    }
    append_revoked_line(path, thumbprint, label, now_utc())?;
    Ok(true)
}

/// Takes `thumbprint` off the revoked-list file at `path`; false when it was not listed.
pub fn unlist_revoked_thumbprint(path: &Path, thumbprint: Thumbprint) -> Result<bool> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut kept = String::with_capacity(text.len());
    let mut removed = false;
    for line in text.lines() {
        let value = line.split('#').next().unwrap_or("").trim();
        if !value.is_empty() && value.parse::<Thumbprint>().is_ok_and(|t| t == thumbprint) {
            removed = true;
        } else {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    if removed {
        write_atomically(path, kept.as_bytes(), PUBLIC_FILE_MODE)?;
    }
    Ok(removed)
}

fn append_revoked_line(path: &Path, thumbprint: Thumbprint, label: &str, now: OffsetDateTime) -> Result<()> {
    let mut text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => REVOKED_LIST_HEADER.to_string(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    let _ = writeln!(text, "{thumbprint}  # {label}, revoked {}", format_time(now));
    write_atomically(path, text.as_bytes(), PUBLIC_FILE_MODE)
}

/// Serializes changes to a PKI's files between processes (`p2sgw pki` commands, the
/// gateway's admin API): each change re-reads the index under the lock, so two at once
/// cannot lose each other's certificates. Released when the returned file is dropped.
fn lock_changes(dir: &Path) -> Result<fs::File> {
    let path = dir.join(LOCK_FILE);
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening the PKI lock {}", path.display()))?;
    file.lock().with_context(|| format!("locking {}", path.display()))?;
    Ok(file)
}

fn read_index(path: &Path) -> Result<ClientIndex> {
    let text = fs::read_to_string(path).with_context(|| format!("reading the client index {}", path.display()))?;
    toml::from_str(&text).map_err(|e| anyhow!("{}: {e}", path.display()))
}

fn write_index(path: &Path, index: &ClientIndex) -> Result<()> {
    let body = toml::to_string(index).context("encoding the client index")?;
    let text = format!("# Client certificates issued by this PKI. Maintained by `p2sgw pki`; do not edit.\n{body}");
    write_atomically(path, text.as_bytes(), PUBLIC_FILE_MODE)
}

/// The current time in whole seconds (certificates and CRLs carry no fractions).
fn now_utc() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(OffsetDateTime::now_utc().unix_timestamp())
        .expect("the current time is a valid timestamp")
}

fn format_time(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).expect("RFC 3339 formats any UTC time from years 0 to 9999")
}

mod rfc3339 {
    use serde::{Deserialize as _, Deserializer, Serializer};
    use time::OffsetDateTime;
    use time::format_description::well_known::Rfc3339;

    pub fn serialize<S: Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_time(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
        let text = String::deserialize(d)?;
        OffsetDateTime::parse(&text, &Rfc3339).map_err(serde::de::Error::custom)
    }
}

mod rfc3339_option {
    use serde::{Deserializer, Serializer};
    use time::OffsetDateTime;

    pub fn serialize<S: Serializer>(t: &Option<OffsetDateTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => super::rfc3339::serialize(t, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<OffsetDateTime>, D::Error> {
        super::rfc3339::deserialize(d).map(Some)
    }
}
