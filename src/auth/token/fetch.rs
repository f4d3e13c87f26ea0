//! Fetching key sets from a file, an https URL, or through OIDC discovery. Blocking: the
//! control plane runs these on a blocking thread.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::Value;
use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};

use super::{Jwks, JwksError};

/// Largest discovery document or key set read. Entra ID's are a few KiB.
const MAX_DOCUMENT_LEN: u64 = 1024 * 1024;
/// Redirects followed, each to https only.
const MAX_REDIRECTS: u32 = 3;

/// Where an identity provider's signing keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// A JWKS document on disk.
    File(PathBuf),
    /// A JWKS document at an https URL.
    Url(String),
    /// OIDC discovery: `<issuer>/.well-known/openid-configuration` names the https `jwks_uri`.
    /// For Entra ID: `https://login.microsoftonline.com/{tenant}/v2.0`.
    Discovery { issuer: String },
}

impl fmt::Display for JwksSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "file {}", path.display()),
            Self::Url(url) => write!(f, "URL {url}"),
            Self::Discovery { issuer } => write!(f, "discovery from {issuer}"),
        }
    }
}

/// Why a key set could not be fetched. Says which document failed and how.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: only https URLs are used to fetch signing keys")]
    NotHttps { url: String },
    #[error("GET {url}: {reason}")]
    Http { url: String, reason: String },
    #[error("{url}: the discovery document {reason}")]
    Discovery { url: String, reason: String },
    #[error("{path}: {reason}", path = .path.display())]
    File { path: PathBuf, reason: String },
    #[error("key set from {origin}: {error}")]
    Jwks { origin: String, error: JwksError },
}

/// The HTTPS client used to fetch keys: TLS by rustls with aws-lc-rs, trusting the system's
/// CA bundle and/or the operator's CA files. Cheap to clone; keeps connections for reuse.
#[derive(Debug, Clone)]
pub struct HttpTrust {
    agent: ureq::Agent,
}

impl HttpTrust {
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

    /// `system_roots`: trust the CA bundle of the system (honouring `SSL_CERT_FILE` and
    /// `SSL_CERT_DIR`); `extra_ca_files`: PEM files of further trusted roots, e.g. a
    /// private CA in front of an on-premises identity provider. `timeout` bounds a whole
    /// request, redirects included. Proxies come from `HTTPS_PROXY`/`NO_PROXY`, if set.
    pub fn new(system_roots: bool, extra_ca_files: &[PathBuf], timeout: Duration) -> anyhow::Result<HttpTrust> {
        let mut roots = Vec::new();
        if system_roots {
            let found = rustls_native_certs::load_native_certs();
            if found.certs.is_empty() {
                let errors: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
                bail!("no system CA certificates found ({}); install the CA bundle", errors.join("; "));
            }
            roots.extend(found.certs);
        }
        for path in extra_ca_files {
            roots.extend(crate::pki::load_certs(path).context("loading a CA file for fetching signing keys")?);
        }
        if roots.is_empty() {
            bail!("fetching signing keys over https needs trusted CA certificates: system roots or CA files");
        }
        let roots: Vec<Certificate<'static>> =
            roots.iter().map(|der| Certificate::from_der(der.as_ref()).to_owned()).collect();
        let tls = TlsConfig::builder()
            .provider(TlsProvider::Rustls)
            .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .root_certs(RootCerts::new_with_certs(&roots))
            .build();
        let agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .https_only(true)
            .timeout_global(Some(timeout))
            .max_redirects(MAX_REDIRECTS)
            .user_agent(concat!("p2sgw/", env!("CARGO_PKG_VERSION")))
            .accept("application/json")
            .build()
            .new_agent();
        Ok(HttpTrust { agent })
    }

    fn get(&self, url: &str) -> Result<Vec<u8>, FetchError> {
        if !is_https(url) {
            return Err(FetchError::NotHttps { url: url.to_string() });
        }
        let http_error = |error: ureq::Error| FetchError::Http { url: url.to_string(), reason: error.to_string() };
        let mut response = self.agent.get(url).call().map_err(http_error)?;
        response.body_mut().with_config().limit(MAX_DOCUMENT_LEN).read_to_vec().map_err(http_error)
    }
}

/// Fetches and parses the key set `source` designates. Blocking; `trust` is unused for a file.
pub fn fetch_jwks(source: &JwksSource, trust: &HttpTrust) -> Result<Jwks, FetchError> {
    match source {
        JwksSource::File(path) => parse_jwks(&read_file(path)?, &path.display().to_string()),
        JwksSource::Url(url) => parse_jwks(&trust.get(url)?, url),
        JwksSource::Discovery { issuer } => {
            let jwks_uri = discover_jwks_uri(issuer, trust)?;
            parse_jwks(&trust.get(&jwks_uri)?, &jwks_uri)
        }
    }
}

fn discover_jwks_uri(issuer: &str, trust: &HttpTrust) -> Result<String, FetchError> {
    // OIDC Discovery §4: the issuer without its trailing slash, then the well-known path
    // (Entra v1 issuers end with a slash).
    let url = format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'));
    let invalid = |reason: String| FetchError::Discovery { url: url.clone(), reason };
    let document: Value =
        serde_json::from_slice(&trust.get(&url)?).map_err(|e| invalid(format!("is not JSON ({e})")))?;
    let Some(jwks_uri) = document.get("jwks_uri").and_then(Value::as_str) else {
        return Err(invalid("has no jwks_uri".to_string()));
    };
    if !is_https(jwks_uri) {
        return Err(invalid(format!("names a jwks_uri that is not https: {jwks_uri}")));
    }
    Ok(jwks_uri.to_string())
}

fn parse_jwks(json: &[u8], origin: &str) -> Result<Jwks, FetchError> {
    Jwks::parse(json).map_err(|error| FetchError::Jwks { origin: origin.to_string(), error })
}

fn read_file(path: &Path) -> Result<Vec<u8>, FetchError> {
    std::fs::read(path).map_err(|e| FetchError::File { path: path.to_path_buf(), reason: e.to_string() })
}

fn is_https(url: &str) -> bool {
    url.get(..8).is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
}
