//! Who a certificate names: the gateway's own identity and the identity of a client.

use anyhow::{Context as _, Result, anyhow, bail};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;

use super::{Thumbprint, load_certs, load_private_key, serial_to_hex};
use crate::config::Config;

/// The gateway's certificate chain and private key, as the TLS server presents them.
#[derive(Debug)]
pub struct ServerIdentity {
    /// Leaf first, then any intermediates from the same file.
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub common_name: String,
}

impl ServerIdentity {
    /// Loads `server_cert_path()` and `server_key_path()` and checks that the key belongs
    /// to the certificate.
    pub fn load(config: &Config) -> Result<ServerIdentity> {
        let cert_path = config.server_cert_path();
        let key_path = config.server_key_path();
        let chain = load_certs(&cert_path)?;
        let key = load_private_key(&key_path)?;
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => {
                anyhow!("server key {} does not belong to the certificate {}", key_path.display(), cert_path.display())
            }
            e => anyhow!("server key {} / certificate {}: {e}", key_path.display(), cert_path.display()),
        })?;
        let common_name =
            subject_common_name(&chain[0]).with_context(|| format!("server certificate {}", cert_path.display()))?;
        Ok(ServerIdentity { chain, key, common_name })
    }
}

/// What sessions lists and logs show about a client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The subject CN, or the whole subject when it has no CN.
    pub common_name: String,
    pub thumbprint: Thumbprint,
    pub serial_hex: String,
    /// The issuer's distinguished name (RFC 4514 style).
    pub issuer: String,
    pub not_after: OffsetDateTime,
}

pub fn client_identity(leaf_der: &[u8]) -> Result<ClientIdentity> {
    let cert = parse_certificate(leaf_der)?;
    let common_name = first_common_name(&cert).unwrap_or_else(|| cert.subject().to_string());
    Ok(ClientIdentity {
        common_name,
        thumbprint: Thumbprint::of_der(leaf_der),
        serial_hex: serial_to_hex(cert.raw_serial()),
        issuer: cert.issuer().to_string(),
        not_after: cert.validity().not_after.to_datetime(),
    })
}

/// The subject common name of a certificate; an error if it has none.
pub fn subject_common_name(cert_der: &[u8]) -> Result<String> {
    let cert = parse_certificate(cert_der)?;
    match first_common_name(&cert) {
        Some(cn) => Ok(cn),
        None => bail!("certificate subject \"{}\" has no common name (CN)", cert.subject()),
    }
}

pub(crate) fn parse_certificate(der: &[u8]) -> Result<X509Certificate<'_>> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| anyhow!("not an X.509 certificate: {e}"))?;
    Ok(cert)
}

fn first_common_name(cert: &X509Certificate<'_>) -> Option<String> {
    let attribute = cert.subject().iter_common_name().next()?;
    attribute.as_str().ok().map(str::to_string)
}
