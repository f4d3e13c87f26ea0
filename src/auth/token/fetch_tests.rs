//! `fetch_jwks` against a real HTTPS server on 127.0.0.1, whose certificate comes from a CA
//! generated here and passed as the extra CA file. Loopback only.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::tests::{NOW, RSA_KID, good_claims, test_jwks_json, test_policy, token};
use super::*;
use crate::pki::test_support::TempDir;

const TIMEOUT: Duration = Duration::from_secs(5);

/// A CA and a server certificate for 127.0.0.1 it issued.
struct TestPki {
    ca_pem: String,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: PrivatePkcs8KeyDer<'static>,
}

fn test_pki(ca_name: &str) -> TestPki {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, ca_name);
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca_params, &ca_key);
    let server_key = KeyPair::generate().expect("server key");
    let mut server_params = CertificateParams::new(Vec::<String>::new()).expect("server params");
    server_params.subject_alt_names = vec![SanType::IpAddress(Ipv4Addr::LOCALHOST.into())];
    let server_cert = server_params.signed_by(&server_key, &issuer).expect("server certificate");
    TestPki {
        ca_pem: ca_cert.pem(),
        server_chain: vec![server_cert.der().clone()],
        server_key: PrivatePkcs8KeyDer::from(server_key.serialize_der()),
    }
}

/// An HTTPS server on 127.0.0.1 answering GETs from a fixed table, one connection at a
/// time, each closed after its response. Stops when dropped.
struct TestServer {
    base_url: String,
    address: SocketAddr,
    requested_paths: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    /// `routes` gets the server's base URL (`https://127.0.0.1:port`) and returns
    /// (path, body) pairs.
    fn start(pki: &TestPki, routes: impl FnOnce(&str) -> Vec<(String, String)>) -> TestServer {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1");
        let address = listener.local_addr().expect("local address");
        let base_url = format!("https://{address}");
        let routes = routes(&base_url);
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(pki.server_chain.clone(), PrivateKeyDer::Pkcs8(pki.server_key.clone_key()))
            .expect("server certificate");
        let config = Arc::new(config);
        let requested_paths = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (requested_paths, stop) = (requested_paths.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    // A client refusing the certificate ends its connection mid-handshake.
                    let _ = serve_one(stream, config.clone(), &routes, &requested_paths);
                }
            })
        };
        TestServer { base_url, address, requested_paths, stop, thread: Some(thread) }
    }

    fn requested_paths(&self) -> Vec<String> {
        self.requested_paths.lock().expect("paths lock").clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.address);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve_one(
    stream: TcpStream,
    config: Arc<rustls::ServerConfig>,
    routes: &[(String, String)],
    requested_paths: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(TIMEOUT))?;
    let connection = rustls::ServerConnection::new(config).map_err(std::io::Error::other)?;
    let mut tls = rustls::StreamOwned::new(connection, stream);
    let mut request = Vec::new();
    let mut chunk = [0; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let read = tls.read(&mut chunk)?;
        if read == 0 || request.len() > 16 * 1024 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        request.extend_from_slice(&chunk[..read]);
    }
    let request = String::from_utf8_lossy(&request);
    let path = request.split(' ').nth(1).unwrap_or_default().to_string();
    // Recorded before answering: the client may check the record as soon as it has the answer.
    requested_paths.lock().expect("paths lock").push(path.clone());
    let response = match routes.iter().find(|(route, _)| *route == path) {
        Some((_, body)) => format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
        None => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string(),
    };
    tls.write_all(response.as_bytes())?;
    tls.conn.send_close_notify();
    tls.flush()
}

/// Writes `pki`'s CA certificate to a file in `dir`.
fn ca_file(dir: &TempDir, pki: &TestPki, name: &str) -> PathBuf {
    std::fs::create_dir_all(dir.path()).expect("temp dir");
    let path = dir.path().join(name);
    std::fs::write(&path, &pki.ca_pem).expect("CA file");
    path
}

fn discovery_document(base_url: &str, jwks_uri: &str) -> String {
    serde_json::json!({
        "issuer": format!("{base_url}/tenant/v2.0"),
        "jwks_uri": jwks_uri,
        "id_token_signing_alg_values_supported": ["RS256"],
    })
    .to_string()
}

#[test]
fn fetches_a_key_set_from_an_https_url() {
    let pki = test_pki("p2sgw test IdP CA");
    let server = TestServer::start(&pki, |_| vec![("/keys".to_string(), test_jwks_json())]);
    let dir = TempDir::new("token-fetch-url");
    let trust = HttpTrust::new(false, &[ca_file(&dir, &pki, "ca.pem")], TIMEOUT).expect("trust");
    let jwks = fetch_jwks(&JwksSource::Url(format!("{}/keys", server.base_url)), &trust).expect("key set");
    assert_eq!(jwks.key_count(), 2);
    assert!(verify(&token(Algorithm::Rs256, RSA_KID, &good_claims()), &jwks, &test_policy(), NOW).is_ok());
    assert_eq!(server.requested_paths(), ["/keys"]);
}

#[test]
fn discovery_leads_to_the_jwks_uri() {
    let pki = test_pki("p2sgw test IdP CA");
    let server = TestServer::start(&pki, |base| {
        vec![
            (
                "/tenant/v2.0/.well-known/openid-configuration".to_string(),
                discovery_document(base, &format!("{base}/tenant/discovery/v2.0/keys")),
            ),
            ("/tenant/discovery/v2.0/keys".to_string(), test_jwks_json()),
        ]
    });
    let dir = TempDir::new("token-fetch-discovery");
    // The system roots as well as the test CA, as a deployment would have them.
    let trust = HttpTrust::new(true, &[ca_file(&dir, &pki, "ca.pem")], TIMEOUT).expect("trust");
    // Entra v1 issuers end with a slash; the well-known path must not double it.
    let source = JwksSource::Discovery { issuer: format!("{}/tenant/v2.0/", server.base_url) };
    let jwks = fetch_jwks(&source, &trust).expect("key set");
    assert_eq!(jwks.key_count(), 2);
    assert_eq!(
        server.requested_paths(),
        ["/tenant/v2.0/.well-known/openid-configuration", "/tenant/discovery/v2.0/keys"]
    );
}

#[test]
fn a_server_certificate_from_an_untrusted_ca_is_refused() {
    let pki = test_pki("p2sgw test IdP CA");
    let other_pki = test_pki("some other CA");
    let server = TestServer::start(&pki, |_| vec![("/keys".to_string(), test_jwks_json())]);
    let dir = TempDir::new("token-fetch-untrusted");
    let trust = HttpTrust::new(false, &[ca_file(&dir, &other_pki, "other-ca.pem")], TIMEOUT).expect("trust");
    let url = format!("{}/keys", server.base_url);
    match fetch_jwks(&JwksSource::Url(url.clone()), &trust) {
        Err(FetchError::Http { url: failed, reason }) => {
            assert_eq!(failed, url);
            assert!(reason.contains("UnknownIssuer"), "{reason}");
        }
        other => panic!("expected a TLS failure, got {other:?}"),
    }
    assert!(server.requested_paths().is_empty());
}

#[test]
fn discovery_refuses_a_plain_http_jwks_uri() {
    let pki = test_pki("p2sgw test IdP CA");
    let server = TestServer::start(&pki, |base| {
        let plain = base.replacen("https://", "http://", 1);
        vec![
            ("/.well-known/openid-configuration".to_string(), discovery_document(base, &format!("{plain}/keys"))),
            ("/keys".to_string(), test_jwks_json()),
        ]
    });
    let dir = TempDir::new("token-fetch-plain");
    let trust = HttpTrust::new(false, &[ca_file(&dir, &pki, "ca.pem")], TIMEOUT).expect("trust");
    let error = fetch_jwks(&JwksSource::Discovery { issuer: server.base_url.clone() }, &trust).unwrap_err();
    assert!(matches!(error, FetchError::Discovery { .. }), "{error}");
    assert!(error.to_string().contains("names a jwks_uri that is not https: http://127.0.0.1:"), "{error}");
    assert_eq!(server.requested_paths(), ["/.well-known/openid-configuration"]);
}

#[test]
fn http_and_document_errors_name_the_url() {
    let pki = test_pki("p2sgw test IdP CA");
    let server = TestServer::start(&pki, |_| {
        vec![
            ("/.well-known/openid-configuration".to_string(), r#"{"issuer":"x"}"#.to_string()),
            ("/empty-keys".to_string(), r#"{"keys":[]}"#.to_string()),
        ]
    });
    let dir = TempDir::new("token-fetch-errors");
    let trust = HttpTrust::new(false, &[ca_file(&dir, &pki, "ca.pem")], TIMEOUT).expect("trust");
    let base = &server.base_url;

    let error = fetch_jwks(&JwksSource::Url(format!("{base}/missing")), &trust).unwrap_err();
    assert_eq!(error.to_string(), format!("GET {base}/missing: http status: 404"));
    let error = fetch_jwks(&JwksSource::Discovery { issuer: base.clone() }, &trust).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("{base}/.well-known/openid-configuration: the discovery document has no jwks_uri")
    );
    let error = fetch_jwks(&JwksSource::Url(format!("{base}/empty-keys")), &trust).unwrap_err();
    assert_eq!(error.to_string(), format!("key set from {base}/empty-keys: no usable signing key"));
}

#[test]
fn plain_http_urls_are_refused_without_a_request() {
    let pki = test_pki("p2sgw test IdP CA");
    let dir = TempDir::new("token-fetch-http");
    let trust = HttpTrust::new(false, &[ca_file(&dir, &pki, "ca.pem")], TIMEOUT).expect("trust");
    // Port 9 (discard) on loopback: never contacted, the scheme is checked first.
    let error = fetch_jwks(&JwksSource::Url("http://127.0.0.1:9/keys".to_string()), &trust).unwrap_err();
    assert_eq!(error, FetchError::NotHttps { url: "http://127.0.0.1:9/keys".to_string() });
    let error = fetch_jwks(&JwksSource::Discovery { issuer: "http://127.0.0.1:9".to_string() }, &trust).unwrap_err();
    assert!(matches!(error, FetchError::NotHttps { .. }), "{error}");
}

#[test]
fn key_sets_are_read_from_files() {
    let dir = TempDir::new("token-fetch-file");
    std::fs::create_dir_all(dir.path()).expect("temp dir");
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, test_jwks_json()).expect("JWKS file");
    let pki = test_pki("p2sgw test IdP CA");
    let trust = HttpTrust::new(false, &[ca_file(&dir, &pki, "ca.pem")], TIMEOUT).expect("trust");
    assert_eq!(fetch_jwks(&JwksSource::File(path.clone()), &trust).expect("key set").key_count(), 2);
    let missing = dir.path().join("missing.json");
    let error = fetch_jwks(&JwksSource::File(missing.clone()), &trust).unwrap_err();
    assert!(error.to_string().starts_with(&format!("{}: No such file", missing.display())), "{error}");
}

#[test]
fn http_trust_needs_some_root() {
    let error = HttpTrust::new(false, &[], TIMEOUT).unwrap_err();
    assert!(error.to_string().contains("needs trusted CA certificates"), "{error}");
    let dir = TempDir::new("token-fetch-bad-ca");
    std::fs::create_dir_all(dir.path()).expect("temp dir");
    let not_pem = dir.path().join("not-a-ca.pem");
    std::fs::write(&not_pem, "hello").expect("file");
    let error = HttpTrust::new(false, &[not_pem], TIMEOUT).unwrap_err();
    assert!(format!("{error:#}").contains("no \"BEGIN CERTIFICATE\" block found"), "{error:#}");
}
