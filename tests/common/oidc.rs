//! An OpenID Connect identity provider stand-in for the end-to-end tests:
//!
//! - `Issuer` mints signed tokens (compact JWS: RS256, PS256, ES256) and publishes its public keys
//!   as a JWKS. Its keys come from aws-lc-rs; nothing here uses the gateway's own token code.
//! - `OidcServer` serves the discovery document and the JWKS over HTTPS from a namespace
//!   (python3 `http.server` + `ssl`), with a CA and server certificate made for the test. The JWKS
//!   can be replaced while it runs (key rotation).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _, RSA_PKCS1_SHA256, RSA_PSS_SHA256, RsaEncoding,
    RsaKeyPair,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
use serde_json::{Value, json};

use super::netns::Netns;
use super::process::Proc;
use super::radius::{fresh_dir, write_file};
use super::topology::VNET_HOST_ADDR;

pub const OIDC_DEFAULT_PORT: u16 = 8443;
/// The server prints this once it listens.
pub const OIDC_READY_MARKER: &str = "oidc server ready";
/// A DNS name the server certificate carries besides its IP address.
pub const OIDC_CERT_DNS_NAME: &str = "oidc.test";
/// Where the JWKS is served, below the issuer URL.
pub const JWKS_PATH: &str = "/discovery/keys";
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";

const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// Signature algorithms the minter supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JwsAlg {
    Rs256,
    Ps256,
    Es256,
}

impl JwsAlg {
    pub const ALL: [JwsAlg; 3] = [JwsAlg::Rs256, JwsAlg::Ps256, JwsAlg::Es256];

    /// The JOSE name, e.g. `RS256`.
    pub fn name(self) -> &'static str {
        match self {
            JwsAlg::Rs256 => "RS256",
            JwsAlg::Ps256 => "PS256",
            JwsAlg::Es256 => "ES256",
        }
    }

    fn index(self) -> usize {
        match self {
            JwsAlg::Rs256 => 0,
            JwsAlg::Ps256 => 1,
            JwsAlg::Es256 => 2,
        }
    }
}

/// One generation of signing keys: a separate key per algorithm, each with its own kid.
struct SigningKeys {
    rs256: RsaKeyPair,
    ps256: RsaKeyPair,
    es256: EcdsaKeyPair,
    /// Indexed by `JwsAlg::index`.
    kids: [String; 3],
}

impl SigningKeys {
    fn generate(generation: u32) -> SigningKeys {
        let rsa = || RsaKeyPair::generate(KeySize::Rsa2048).expect("RSA-2048 key generation");
        let mut tag = [0u8; 4];
        aws_lc_rs::rand::fill(&mut tag).expect("system randomness");
        let tag: String = tag.iter().map(|byte| format!("{byte:02x}")).collect();
        SigningKeys {
            rs256: rsa(),
            ps256: rsa(),
            es256: EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("P-256 key generation"),
            kids: JwsAlg::ALL.map(|alg| format!("{}-g{generation}-{tag}", alg.name().to_lowercase())),
        }
    }

    fn kid(&self, alg: JwsAlg) -> &str {
        &self.kids[alg.index()]
    }

    fn jwks_entries(&self) -> Vec<Value> {
        let rsa_jwk = |alg: JwsAlg, key: &RsaKeyPair| {
            let public = key.public_key();
            json!({
                "kty": "RSA",
                "use": "sig",
                "alg": alg.name(),
                "kid": self.kid(alg),
                "n": URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero()),
                "e": URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero()),
            })
        };
        // Uncompressed point: 0x04 || x (32) || y (32).
        let point = self.es256.public_key().as_ref();
        assert_eq!(point.len(), 65, "P-256 public keys are 65-byte uncompressed points");
        vec![
            rsa_jwk(JwsAlg::Rs256, &self.rs256),
            rsa_jwk(JwsAlg::Ps256, &self.ps256),
            json!({
                "kty": "EC",
                "use": "sig",
                "alg": "ES256",
                "kid": self.kid(JwsAlg::Es256),
                "crv": "P-256",
                "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
            }),
        ]
    }

    fn sign(&self, alg: JwsAlg, message: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        let rsa_sign = |key: &RsaKeyPair, padding: &'static dyn RsaEncoding| {
            let mut signature = vec![0u8; key.public_modulus_len()];
            key.sign(padding, &rng, message, &mut signature).expect("RSA signing");
            signature
        };
        match alg {
            JwsAlg::Rs256 => rsa_sign(&self.rs256, &RSA_PKCS1_SHA256),
            // PSS with a 32-byte salt (= hash length), as RFC 7518 §3.5 requires.
            JwsAlg::Ps256 => rsa_sign(&self.ps256, &RSA_PSS_SHA256),
            // Fixed-size r || s, the JWS encoding (RFC 7518 §3.4), not DER.
            JwsAlg::Es256 => self.es256.sign(&rng, message).expect("ECDSA signing").as_ref().to_vec(),
        }
    }
}

/// A token issuer: signing keys and the tokens it mints.
pub struct Issuer {
    generation: u32,
    current: SigningKeys,
    previous: Option<SigningKeys>,
}

impl Default for Issuer {
    fn default() -> Self {
        Issuer::new()
    }
}

impl Issuer {
    /// Fresh RSA-2048 keys (one for RS256, one for PS256) and a P-256 key, with random kids.
    pub fn new() -> Issuer {
        Issuer { generation: 1, current: SigningKeys::generate(1), previous: None }
    }

    /// The kid that `mint(alg, …)` puts in the header.
    pub fn kid(&self, alg: JwsAlg) -> &str {
        self.current.kid(alg)
    }

    /// The current public keys: `{"keys": [RS256 key, PS256 key, ES256 key]}`, each with
    /// kty, use = "sig", alg, kid and the key parameters (n/e or crv/x/y).
    pub fn jwks(&self) -> Value {
        json!({ "keys": self.current.jwks_entries() })
    }

    pub fn jwks_json(&self) -> String {
        self.jwks().to_string()
    }

    /// The current and the previous generation's keys, as an IdP publishes them during a rollover.
    pub fn jwks_json_with_previous(&self) -> String {
        let mut keys = self.current.jwks_entries();
        if let Some(previous) = &self.previous {
            keys.extend(previous.jwks_entries());
        }
        json!({ "keys": keys }).to_string()
    }

    /// New keys and kids for every algorithm; the old ones are kept only for
    /// `jwks_json_with_previous`. Tokens minted before keep their old kid.
    pub fn rotate(&mut self) {
        self.generation += 1;
        self.previous = Some(std::mem::replace(&mut self.current, SigningKeys::generate(self.generation)));
    }

    /// A compact JWS over `claims` with header `{"alg", "typ": "JWT", "kid"}`.
    pub fn mint(&self, alg: JwsAlg, claims: &Value) -> String {
        let header = json!({ "alg": alg.name(), "typ": "JWT", "kid": self.kid(alg) });
        self.sign_with_header(alg, &header, claims)
    }

    /// Signs with the current `alg` key but uses `header` verbatim (for negative tests: a wrong
    /// kid, a lying `alg`, extra `crit` parameters…).
    pub fn sign_with_header(&self, alg: JwsAlg, header: &Value, claims: &Value) -> String {
        let signing_input = format!("{}.{}", encode_segment(header), encode_segment(claims));
        let signature = self.current.sign(alg, signing_input.as_bytes());
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    let elapsed = SystemTime::now().duration_since(UNIX_EPOCH).expect("the clock is after 1970");
    i64::try_from(elapsed.as_secs()).expect("Unix time fits in i64")
}

/// Typical ID/access-token claims: iss, aud, sub, iat and nbf now, exp `valid_for_secs` from now
/// (negative for an expired token). Add or overwrite claims on the returned object.
pub fn standard_claims(iss: &str, aud: &str, sub: &str, valid_for_secs: i64) -> Value {
    let now = unix_now();
    json!({ "iss": iss, "aud": aud, "sub": sub, "iat": now, "nbf": now, "exp": now + valid_for_secs })
}

/// base64url (no padding) of the compact JSON text of `value`.
pub fn encode_segment(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

/// The JSON inside one base64url segment of a compact JWS (header or payload).
pub fn decode_segment(segment: &str) -> Value {
    let bytes = URL_SAFE_NO_PAD.decode(segment).unwrap_or_else(|e| panic!("segment {segment:?} is not base64url: {e}"));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("segment {segment:?} is not JSON: {e}"))
}

#[derive(Clone, Debug)]
pub struct OidcOptions {
    /// The IPv4 address to listen on; also the host of the issuer URL and an IP SAN of the certificate.
    pub addr: String,
    pub port: u16,
    /// Path part of the issuer URL, e.g. `""` or `"/tenant-1/v2.0"` (Entra ID style); no trailing slash.
    pub issuer_path: String,
}

impl Default for OidcOptions {
    /// The vnet host (reachable from the gateway namespace) on port 8443, issuer without a path.
    fn default() -> Self {
        OidcOptions { addr: VNET_HOST_ADDR.to_owned(), port: OIDC_DEFAULT_PORT, issuer_path: String::new() }
    }
}

/// The HTTPS server of an identity provider. Dropping it stops the server.
pub struct OidcServer {
    // Declared first so the process stops before anything else goes.
    process: Proc,
    issuer_url: String,
    served: ServedFiles,
    ca_cert_pem: String,
    ca_cert_path: PathBuf,
}

impl OidcServer {
    /// Makes a CA and a server certificate (SANs: `opts.addr` and `OIDC_CERT_DNS_NAME`), writes the
    /// discovery document and `jwks_json`, and starts the server inside `ns`.
    pub fn start(ns: &Netns, opts: OidcOptions, jwks_json: &str) -> OidcServer {
        assert!(
            opts.issuer_path.is_empty() || (opts.issuer_path.starts_with('/') && !opts.issuer_path.ends_with('/')),
            "issuer_path {:?} must be empty or start with '/' and not end with one",
            opts.issuer_path
        );
        let base = fresh_dir(ns.dir().path(), &format!("oidc-{}-{}", ns.role(), opts.port));
        let (ca_cert_pem, server_cert_pem, server_key_pem) = make_certificates(&opts.addr);
        let ca_cert_path = base.join("ca.pem");
        let server_cert_path = base.join("server.pem");
        let server_key_path = base.join("server.key");
        write_file(&ca_cert_path, &ca_cert_pem);
        write_file(&server_cert_path, &server_cert_pem);
        write_file(&server_key_path, &server_key_pem);
        let script_path = base.join("server.py");
        write_file(&script_path, SERVER_SCRIPT);

        let issuer_url = format!("https://{}:{}{}", opts.addr, opts.port, opts.issuer_path);
        let served = ServedFiles { web_root: base.join("www"), issuer_path: opts.issuer_path };
        served.set_discovery(&discovery_document(&issuer_url));
        served.set_jwks(jwks_json);
        let path_arg = |path: &Path| path.to_str().expect("test paths are UTF-8").to_owned();
        let process = ns.spawn(
            &[
                "python3",
                "-u",
                &path_arg(&script_path),
                &path_arg(&served.web_root),
                &opts.addr,
                &opts.port.to_string(),
                &path_arg(&server_cert_path),
                &path_arg(&server_key_path),
            ],
            &format!("oidc-{}", opts.port),
        );
        if let Err(e) = process.wait_for_log(OIDC_READY_MARKER, STARTUP_TIMEOUT) {
            panic!("OIDC server did not start: {e}");
        }
        OidcServer { process, issuer_url, served, ca_cert_pem, ca_cert_path }
    }

    /// `https://<addr>:<port><issuer_path>`, the `iss` the tokens should carry.
    pub fn issuer_url(&self) -> &str {
        &self.issuer_url
    }

    pub fn discovery_url(&self) -> String {
        format!("{}{DISCOVERY_PATH}", self.issuer_url)
    }

    pub fn jwks_url(&self) -> String {
        format!("{}{JWKS_PATH}", self.issuer_url)
    }

    /// The CA that signed the server certificate (PEM), for the gateway's trust configuration.
    pub fn ca_cert_pem(&self) -> &str {
        &self.ca_cert_pem
    }

    pub fn ca_cert_path(&self) -> &Path {
        &self.ca_cert_path
    }

    /// The document served by default: issuer, jwks_uri and the fields OpenID Discovery requires.
    pub fn discovery_document(&self) -> Value {
        discovery_document(&self.issuer_url)
    }

    /// Replaces the served JWKS (atomically: a client never sees half a file).
    pub fn set_jwks(&self, jwks_json: &str) {
        self.served.set_jwks(jwks_json);
    }

    /// Replaces the served discovery document (e.g. with a wrong issuer, for a negative test).
    pub fn set_discovery(&self, document: &Value) {
        self.served.set_discovery(document);
    }

    /// How many GET requests for URL path `path` (e.g. `"/discovery/keys"`) have been answered.
    pub fn request_count(&self, path: &str) -> usize {
        let needle = format!("\"GET {path} ");
        self.process.log_text().lines().filter(|line| line.contains(&needle)).count()
    }

    /// One line per request (`"GET /path HTTP/1.1" 200 -`), plus TLS errors.
    pub fn log_text(&self) -> String {
        self.process.log_text()
    }

    pub fn process(&self) -> &Proc {
        &self.process
    }

    /// Stops the server (the IdP becomes unreachable).
    pub fn stop(&self) {
        self.process.kill();
    }
}

/// The directory the server serves, laid out by URL path.
struct ServedFiles {
    web_root: PathBuf,
    /// The issuer URL's path; the well-known files live below it.
    issuer_path: String,
}

impl ServedFiles {
    fn set_jwks(&self, jwks_json: &str) {
        self.replace(&format!("{}{JWKS_PATH}", self.issuer_path), jwks_json);
    }

    fn set_discovery(&self, document: &Value) {
        self.replace(&format!("{}{DISCOVERY_PATH}", self.issuer_path), &document.to_string());
    }

    /// Writes a sibling file and renames it over the served one, so a client never reads half a file.
    fn replace(&self, url_path: &str, contents: &str) {
        let path = self.web_root.join(url_path.trim_start_matches('/'));
        let parent = path.parent().expect("served files are below the web root");
        fs::create_dir_all(parent).unwrap_or_else(|e| panic!("cannot create {}: {e}", parent.display()));
        let staging = parent.join(".staging");
        write_file(&staging, contents);
        fs::rename(&staging, &path).unwrap_or_else(|e| panic!("cannot rename into {}: {e}", path.display()));
    }
}

fn discovery_document(issuer_url: &str) -> Value {
    json!({
        "issuer": issuer_url,
        "jwks_uri": format!("{issuer_url}{JWKS_PATH}"),
        "authorization_endpoint": format!("{issuer_url}/oauth2/authorize"),
        "token_endpoint": format!("{issuer_url}/oauth2/token"),
        "response_types_supported": ["code", "id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": JwsAlg::ALL.map(JwsAlg::name),
    })
}

/// (CA certificate, server certificate, server key), all PEM. The server certificate names
/// `addr` (IP SAN) and `OIDC_CERT_DNS_NAME`.
fn make_certificates(addr: &str) -> (String, String, String) {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "p2sgw test OIDC CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key).expect("self-signed CA certificate");
    let ca = rcgen::Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate().expect("server key");
    let mut params = CertificateParams::new(vec![addr.to_owned(), OIDC_CERT_DNS_NAME.to_owned()])
        .unwrap_or_else(|e| panic!("server certificate names {addr:?}: {e}"));
    params.distinguished_name.push(DnType::CommonName, OIDC_CERT_DNS_NAME);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = params.signed_by(&server_key, &ca).expect("server certificate");
    (ca_cert.pem(), server_cert.pem(), server_key.serialize_pem())
}

/// Serves `web_root` over HTTPS as application/json, never cached, one log line per request.
/// Usage: server.py <web_root> <addr> <port> <cert.pem> <key.pem>
const SERVER_SCRIPT: &str = r#"
import http.server
import ssl
import sys

web_root, addr, port, cert, key = sys.argv[1:6]


class Handler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, directory=web_root, **kwargs)

    def guess_type(self, path):
        return "application/json"

    def end_headers(self):
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, fmt, *args):
        print(fmt % args, flush=True)


server = http.server.ThreadingHTTPServer((addr, int(port)), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
# The handshake then runs in the request's thread, so a stalled client cannot block the others.
server.socket = context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
print("oidc server ready on %s:%s" % (addr, port), flush=True)
server.serve_forever()
"#;
