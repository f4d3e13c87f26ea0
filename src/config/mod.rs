//! The gateway's TOML configuration: schema, embedded defaults, and validation that
//! refuses a bad file with its path, line and reason before anything starts.
//!
//! Every key is documented in README.md ("Configuration reference").
//!
//! Loading happens in three passes over the text, each able to name the line at fault:
//! 1. TOML syntax and unknown keys (with a "did you mean"), from the parser's spans;
//! 2. types (serde), from the span toml attaches to the failing value;
//! 3. semantic rules ([`Config::validate`]), located through the [`Provenance`] kept in
//!    the loaded `Config`: the line and column of every key the file set.
//!
//! Whether the files the configuration names exist is a separate step,
//! [`Config::check_files`], because `pki init` loads a configuration before its files exist.

mod files;
mod render;
mod source;
#[cfg(test)]
mod tests;
mod validate;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::crypto::AeadAlgorithm;

pub use source::Provenance;
pub use validate::parse_thumbprint;

/// Where the gateway keeps its state (PKI, revocations) when the config does not say.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/p2sgw";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub gateway: GatewayConfig,
    pub listen: ListenConfig,
    pub network: NetworkConfig,
    pub pki: PkiConfig,
    pub openvpn: OpenVpnConfig,
    pub dataplane: DataplaneConfig,
    pub auth: AuthConfig,
    pub radius: RadiusConfig,
    pub token: TokenConfig,
    pub admin: AdminConfig,
    pub sstp: SstpConfig,
    pub ikev2: Ikev2Config,
    /// Where each key was written; empty for a configuration built in code. Not part of
    /// the configuration itself: it never affects equality and is never serialized.
    #[serde(skip)]
    provenance: Provenance,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Public DNS name or IP address clients connect to. Written into client profiles
    /// and into the server certificate by `p2sgw pki init`. Default: the host name.
    pub name: Option<String>,
    /// State directory (generated PKI on embedded defaults).
    pub state_dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    /// UDP listen addresses for the OpenVPN protocol; empty disables UDP.
    pub udp: Vec<SocketAddr>,
    /// TCP listen addresses for OpenVPN over TCP; empty disables TCP.
    pub tcp: Vec<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// Client address pool. The first host address is the gateway's own tunnel address.
    pub pool: Ipv4Net,
    /// Prefixes pushed to clients (the VNet and custom routes).
    pub routes: Vec<Ipv4Net>,
    /// Send all client traffic through the tunnel (pushes 0.0.0.0/1 and 128.0.0.0/1).
    pub full_tunnel: bool,
    /// DNS servers pushed to clients.
    pub dns_servers: Vec<IpAddr>,
    /// DNS search domains pushed to clients.
    pub dns_search: Vec<String>,
    /// Extra pools chosen by group, `"GROUP=PREFIX"`, the first matching entry winning.
    /// GROUP is matched against RADIUS Filter-Id and MS-Azure-Policy-ID values and token
    /// `groups` claims.
    pub group_pools: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PkiConfig {
    /// PKI directory made by `p2sgw pki init`. Default: `<state_dir>/pki`.
    pub dir: Option<PathBuf>,
    /// Server certificate (PEM, leaf first, chain may follow). Default: `<dir>/server.crt`.
    pub server_cert: Option<PathBuf>,
    /// Server private key (PEM). Default: `<dir>/server.key`.
    pub server_key: Option<PathBuf>,
    /// Trusted root CAs for client certificates (PEM files, at most 20 certificates).
    /// Default: `<dir>/ca.crt`.
    pub trusted_roots: Vec<PathBuf>,
    /// CRL files (PEM or DER). `<dir>/crl.pem` is always added when it exists.
    pub crl_files: Vec<PathBuf>,
    /// Revoked client certificates by SHA-1 thumbprint (hex, colons/spaces allowed).
    /// `<dir>/revoked.txt` is always added when it exists.
    pub revoked_thumbprints: Vec<String>,
    /// tls-crypt key (OpenVPN static key V1). Default: `<dir>/tls-crypt.key`.
    pub tls_crypt_key: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpenVpnConfig {
    /// Data ciphers in order of preference.
    pub data_ciphers: Vec<AeadAlgorithm>,
    /// Wrap the control channel with tls-crypt (v1).
    pub tls_crypt: bool,
    /// Seconds of silence after which a keepalive ping is sent (pushed as `ping`).
    pub keepalive_interval_secs: u32,
    /// Seconds without any packet from a client after which its session is dropped
    /// (pushed as `ping-restart`).
    pub keepalive_timeout_secs: u32,
    /// Renegotiate data keys every this many seconds (0 disables server-side reneg).
    pub reneg_secs: u32,
    /// A TLS handshake must finish within this many seconds.
    pub handshake_window_secs: u32,
    /// Tunnel MTU pushed to clients and set on the TUN device.
    pub tun_mtu: u16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataplaneConfig {
    /// Worker threads (one per core, pinned). 0 means one per online CPU.
    pub workers: usize,
    /// Name of the multi-queue TUN device.
    pub tun_name: String,
    /// Kernel offloads on the TUN device (TSO/USO super-packets split by the workers,
    /// decrypted packets coalesced into one write) and UDP GSO towards OpenVPN clients.
    /// Off: one system call per packet, as on kernels without them.
    pub offload: bool,
    /// Steer each packet the kernel sends into the TUN device to the queue of the worker
    /// owning its session (an eBPF program; needs CAP_BPF). Off, or without CAP_BPF: the
    /// kernel picks the queue by flow, and the reading worker seals for UDP sessions or
    /// hands the packet to the owner of a TCP one.
    pub steering: bool,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig { name: None, state_dir: PathBuf::from(DEFAULT_STATE_DIR) }
    }
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            udp: vec![SocketAddr::from((Ipv4Addr::UNSPECIFIED, 1194))],
            tcp: vec![SocketAddr::from((Ipv4Addr::UNSPECIFIED, 443))],
        }
    }
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            pool: Ipv4Net::new(Ipv4Addr::new(172, 16, 201, 0), 24).expect("valid prefix"),
            routes: Vec::new(),
            full_tunnel: false,
            dns_servers: Vec::new(),
            dns_search: Vec::new(),
            group_pools: Vec::new(),
        }
    }
}

/// A combination of checks that admits a client: `certificate`, `radius`, `token`, or
/// several joined by `+` (all must pass).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct AuthRequirement {
    pub certificate: bool,
    pub radius: bool,
    pub token: bool,
}

impl AuthRequirement {
    pub const CERTIFICATE: AuthRequirement = AuthRequirement { certificate: true, radius: false, token: false };

    /// Needs a username and password (a RADIUS password or a token).
    pub fn needs_password(&self) -> bool {
        self.radius || self.token
    }
}

impl fmt::Display for AuthRequirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<&str> = [(self.certificate, "certificate"), (self.radius, "radius"), (self.token, "token")]
            .into_iter()
            .filter_map(|(on, name)| on.then_some(name))
            .collect();
        f.write_str(&parts.join("+"))
    }
}

impl std::str::FromStr for AuthRequirement {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut r = AuthRequirement::default();
        for part in s.split('+').map(str::trim) {
            let flag = match part {
                "certificate" => &mut r.certificate,
                "radius" => &mut r.radius,
                "token" => &mut r.token,
                other => {
                    return Err(format!(
                        "unknown authentication method {other:?} in {s:?} (use certificate, radius, token, joined by +)"
                    ));
                }
            };
            if *flag {
                return Err(format!("{part} appears twice in {s:?}"));
            }
            *flag = true;
        }
        Ok(r)
    }
}

impl Serialize for AuthRequirement {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for AuthRequirement {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Combinations of checks, any one of which admits a client.
    pub require: Vec<AuthRequirement>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig { require: vec![AuthRequirement::CERTIFICATE] }
    }
}

impl AuthConfig {
    pub fn uses(&self, method: fn(&AuthRequirement) -> bool) -> bool {
        self.require.iter().any(method)
    }
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RadiusConfig {
    /// Authentication servers, tried in order (failover).
    pub servers: Vec<SocketAddr>,
    /// Accounting servers; empty means the authentication hosts on port 1813.
    pub accounting_servers: Vec<SocketAddr>,
    /// Shared secrets: one for every server, or one per server in `servers` order.
    pub secrets: Vec<String>,
    /// Seconds to wait for one server before trying the next.
    pub timeout_secs: u32,
    /// Transmissions per server (the first and its retries) within the timeout.
    pub tries: u32,
    pub nas_identifier: String,
    /// Send accounting Start, Interim-Update and Stop records.
    pub accounting: bool,
    /// Interim-Update period when the server does not set Acct-Interim-Interval.
    pub interim_interval_secs: u32,
    /// Refuse replies without a Message-Authenticator (the BlastRADIUS defence). Servers
    /// without that fix (FreeRADIUS before 3.2.5) must add it to replies, or this must
    /// be turned off.
    pub require_message_authenticator: bool,
}

impl fmt::Debug for RadiusConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RadiusConfig")
            .field("servers", &self.servers)
            .field("accounting_servers", &self.accounting_servers)
            .field("secrets", &format_args!("<{} hidden>", self.secrets.len()))
            .field("timeout_secs", &self.timeout_secs)
            .field("tries", &self.tries)
            .finish_non_exhaustive()
    }
}

impl Default for RadiusConfig {
    fn default() -> Self {
        RadiusConfig {
            servers: Vec::new(),
            accounting_servers: Vec::new(),
            secrets: Vec::new(),
            timeout_secs: 5,
            tries: 3,
            nas_identifier: "p2sgw".to_string(),
            accounting: true,
            interim_interval_secs: 300,
            require_message_authenticator: true,
        }
    }
}

impl RadiusConfig {
    /// The secret shared with server `index`.
    pub fn secret_for(&self, index: usize) -> &str {
        self.secrets.get(index).or(self.secrets.first()).map_or("", String::as_str)
    }

    pub fn accounting_addresses(&self) -> Vec<SocketAddr> {
        if self.accounting_servers.is_empty() {
            self.servers.iter().map(|a| SocketAddr::new(a.ip(), 1813)).collect()
        } else {
            self.accounting_servers.clone()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenConfig {
    /// Accepted `iss` values, e.g. `https://sts.windows.net/<tenant>/`.
    pub issuers: Vec<String>,
    /// Accepted `aud` values (one or more).
    pub audiences: Vec<String>,
    /// Required `tid` (Entra tenant id).
    pub tenant: Option<String>,
    /// Signing keys from a local JWKS file…
    pub jwks_file: Option<PathBuf>,
    /// …or from this HTTPS URL; with neither, from the first issuer's OIDC discovery.
    pub jwks_uri: Option<String>,
    /// Extra CA certificates (PEM) trusted when fetching keys, besides the system's.
    pub ca_files: Vec<PathBuf>,
    /// Tolerated clock difference for `exp` and `nbf`.
    pub clock_skew_secs: u32,
    /// Conditions on claims, `"claim=value"`: the claim equals the value, or (an array)
    /// contains it; e.g. `"amr=mfa"`.
    pub required_claims: Vec<String>,
    /// When not empty, the token's `groups` must include one of these.
    pub allowed_groups: Vec<String>,
    /// Verify the token again at every renegotiation (the client sends it again), so
    /// that a token that expired while connected ends the session.
    pub recheck_on_renegotiation: bool,
    /// Fetch the issuer's keys at most this often when a token names an unknown key
    /// (so that a flood of forged key ids cannot hammer the identity provider).
    pub min_key_refresh_secs: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// The admin API's Unix socket (root only); default `<state_dir>/admin.sock`.
    pub socket: Option<PathBuf>,
    /// Also serve the admin API and `/metrics` over HTTPS on this address, with the
    /// gateway's server certificate; every request must carry the bearer token.
    pub tcp: Option<SocketAddr>,
    /// File holding the bearer token for `tcp` (one line, at least 32 characters).
    pub token_file: Option<PathBuf>,
}

/// SSTP (the Windows built-in VPN client) on the `[listen] tcp` addresses, beside
/// OpenVPN over TCP. Users sign in with MS-CHAPv2, checked by the RADIUS servers or
/// against `local_users_file`; this counts as the `radius` method of `[auth] require`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SstpConfig {
    pub enabled: bool,
    /// Users checked by the gateway itself, one `user:NTHASHHEX` per line (the MD4 of
    /// the UTF-16LE password); users not in it are asked of the RADIUS servers.
    pub local_users_file: Option<PathBuf>,
    /// Accept the SHA-1 crypto binding besides SHA-256 (only for very old clients).
    pub allow_sha1_binding: bool,
}

/// IKEv2/IPsec, the protocol built into Windows, macOS, iOS and Android, and spoken by
/// strongSwan: IKE on UDP 500 and 4500, ESP in UDP on 4500 (RFC 3948), handled in
/// userspace by the same workers as OpenVPN.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ikev2Config {
    pub enabled: bool,
    /// Addresses to serve IKEv2 on; each gets a socket on port 500 and one on 4500.
    pub listen: Vec<IpAddr>,
    /// Also accept what stock Windows proposes: DH group 2 (MODP-1024), SHA-1 and
    /// AES-CBC for IKE. Weak; only for clients that cannot be configured.
    pub legacy_windows: bool,
    /// A client not heard from for this long gets a liveness check; one that does not
    /// answer it (after retransmissions) loses its session and address.
    pub dpd_secs: u32,
}

impl Default for Ikev2Config {
    fn default() -> Self {
        Ikev2Config {
            enabled: false,
            listen: vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)],
            legacy_windows: false,
            dpd_secs: 30,
        }
    }
}

impl Default for TokenConfig {
    fn default() -> Self {
        TokenConfig {
            issuers: Vec::new(),
            audiences: Vec::new(),
            tenant: None,
            jwks_file: None,
            jwks_uri: None,
            ca_files: Vec::new(),
            clock_skew_secs: 120,
            required_claims: Vec::new(),
            allowed_groups: Vec::new(),
            recheck_on_renegotiation: true,
            min_key_refresh_secs: 60,
        }
    }
}

impl Default for OpenVpnConfig {
    fn default() -> Self {
        OpenVpnConfig {
            data_ciphers: vec![AeadAlgorithm::Aes256Gcm, AeadAlgorithm::ChaCha20Poly1305, AeadAlgorithm::Aes128Gcm],
            tls_crypt: true,
            keepalive_interval_secs: 10,
            keepalive_timeout_secs: 60,
            reneg_secs: 3600,
            handshake_window_secs: 60,
            tun_mtu: 1500,
        }
    }
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        DataplaneConfig { workers: 0, tun_name: "p2sgw0".to_string(), offload: true, steering: true }
    }
}

/// A configuration problem, located where the operator has to fix it.
///
/// `line` and `column` are 1-based; both are 0 when the problem concerns the file as a
/// whole (it cannot be read, or a default value that no line of it sets is at fault).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl ConfigError {
    fn at(file: &Path, location: Option<Location>, message: String) -> ConfigError {
        let Location { line, column } = location.unwrap_or(Location { line: 0, column: 0 });
        ConfigError { file: file.to_path_buf(), line, column, message }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(f, "{}:{}:{}: {}", self.file.display(), self.line, self.column, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// A 1-based position in a configuration file (columns count characters, not bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

/// The name used in errors about a configuration that was not read from a file.
const BUILT_IN_ORIGIN: &str = "<built-in configuration>";

impl Config {
    /// Reads, parses and validates the configuration file at `path`.
    ///
    /// Does not look at the files the configuration names; see [`Config::check_files`].
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let bytes = std::fs::read(path)
            .map_err(|e| ConfigError::at(path, None, format!("cannot read the configuration file: {e}")))?;
        let text = String::from_utf8(bytes).map_err(|e| {
            let valid_len = e.utf8_error().valid_up_to();
            let valid_prefix = String::from_utf8_lossy(&e.as_bytes()[..valid_len]);
            let location = source::location_of(&valid_prefix, valid_len);
            ConfigError::at(path, Some(location), "the file is not valid UTF-8 text".to_string())
        })?;
        Config::from_toml_str(&text, path)
    }

    /// Parses and validates configuration text; `origin` is the file name errors carry.
    pub fn from_toml_str(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        let config = source::parse(text, origin)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the semantic rules (address plan, timers, names...). [`Config::load`] and
    /// [`Config::from_toml_str`] already do; call it again after changing a `Config` in code.
    /// The error points at the offending key when the configuration came from a file.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.first_problem(validate::violations(self))
    }

    /// Checks that every file the gateway will read at start-up exists and is readable:
    /// server certificate and key, trusted roots, configured CRLs, the tls-crypt key when
    /// tls-crypt is on, and `<pki dir>/crl.pem` / `revoked.txt` when they exist. Contents
    /// are not parsed here (that is the PKI loader's job). `check-config` and `serve` run
    /// this; `pki init`, which creates these files, does not.
    pub fn check_files(&self) -> Result<(), ConfigError> {
        self.first_problem(files::problems(self))
    }

    /// Where this configuration was read from, and where each of its keys was written.
    pub fn provenance(&self) -> &Provenance {
        &self.provenance
    }

    /// Turns problems into the one error to show: the first in file order, so that fixing
    /// errors top to bottom converges. Problems with no line (defaults at fault) come last.
    fn first_problem(&self, problems: Vec<Problem>) -> Result<(), ConfigError> {
        let file = self.provenance.file().unwrap_or(Path::new(BUILT_IN_ORIGIN));
        let located = problems.into_iter().map(|problem| {
            let location = self.provenance.locate(&problem.keys);
            ConfigError::at(file, location, problem.message)
        });
        match located.min_by_key(|e| (e.line == 0, e.line, e.column)) {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// The effective configuration as TOML: every key with the value in force, defaults
    /// included. Keys left unset (no TOML value means "unset") are shown commented out with
    /// the value the gateway derives for them; parsing the output gives back an equal `Config`.
    pub fn to_toml_string(&self) -> String {
        render::effective_toml(self)
    }

    /// The PKI directory: `[pki] dir`, or `<state_dir>/pki`.
    pub fn pki_dir(&self) -> PathBuf {
        self.pki.dir.clone().unwrap_or_else(|| self.gateway.state_dir.join("pki"))
    }

    pub fn server_cert_path(&self) -> PathBuf {
        self.pki.server_cert.clone().unwrap_or_else(|| self.pki_dir().join("server.crt"))
    }

    pub fn server_key_path(&self) -> PathBuf {
        self.pki.server_key.clone().unwrap_or_else(|| self.pki_dir().join("server.key"))
    }

    pub fn tls_crypt_key_path(&self) -> PathBuf {
        self.pki.tls_crypt_key.clone().unwrap_or_else(|| self.pki_dir().join("tls-crypt.key"))
    }

    /// Trusted roots: `[pki] trusted_roots` (or `<dir>/ca.crt`), then the roots added
    /// through the admin API (`<dir>/trusted-roots/*.pem`, by name).
    pub fn trusted_root_paths(&self) -> Vec<PathBuf> {
        let mut paths = if self.pki.trusted_roots.is_empty() {
            vec![self.pki_dir().join("ca.crt")]
        } else {
            self.pki.trusted_roots.clone()
        };
        let mut added: Vec<PathBuf> = std::fs::read_dir(self.added_roots_dir())
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "pem"))
                    .collect()
            })
            .unwrap_or_default();
        added.sort();
        paths.extend(added);
        paths
    }

    /// Where the admin API keeps the roots it adds.
    pub fn added_roots_dir(&self) -> PathBuf {
        self.pki_dir().join("trusted-roots")
    }

    /// CRL files: `[pki] crl_files` plus `<dir>/crl.pem` (read only if it exists).
    pub fn crl_paths(&self) -> Vec<PathBuf> {
        let mut v = self.pki.crl_files.clone();
        let own = self.pki_dir().join("crl.pem");
        if !v.contains(&own) {
            v.push(own);
        }
        v
    }

    /// The revoked-thumbprints file `pki revoke` maintains: `<dir>/revoked.txt`.
    pub fn revoked_list_path(&self) -> PathBuf {
        self.pki_dir().join("revoked.txt")
    }

    /// The admin API's Unix socket: `[admin] socket`, or `<state_dir>/admin.sock`.
    pub fn admin_socket_path(&self) -> PathBuf {
        self.admin.socket.clone().unwrap_or_else(|| self.gateway.state_dir.join("admin.sock"))
    }

    /// The name clients connect to: `[gateway] name`, or this host's name.
    pub fn gateway_name(&self) -> String {
        self.gateway.name.clone().unwrap_or_else(host_name)
    }

    /// The gateway's own address inside the pool (the first host address).
    pub fn gateway_tunnel_address(&self) -> Ipv4Addr {
        let net = u32::from(self.network.pool.network());
        Ipv4Addr::from(net + 1)
    }
}

/// A rule a configuration breaks, with the keys to blame, most specific first
/// (e.g. `network.routes[2]`, then `network.routes`). The section of the first key is the
/// fallback location when none of them was written in the file.
struct Problem {
    keys: Vec<String>,
    message: String,
}

impl Problem {
    fn new(keys: &[&str], message: String) -> Problem {
        Problem { keys: keys.iter().map(|k| k.to_string()).collect(), message }
    }

    /// A problem with the `index`-th element of the array at `key`.
    fn element(key: &str, index: usize, message: String) -> Problem {
        Problem { keys: vec![format!("{key}[{index}]"), key.to_string()], message }
    }
}

/// `"GROUP=PREFIX"` of `[network] group_pools`.
pub fn parse_group_pool(entry: &str) -> Option<(String, Ipv4Net)> {
    let (group, prefix) = entry.rsplit_once('=')?;
    let group = group.trim();
    if group.is_empty() {
        return None;
    }
    Some((group.to_string(), prefix.trim().parse().ok()?))
}

/// `"claim=value"` of `[token] required_claims`.
pub fn parse_claim_condition(entry: &str) -> Option<(String, String)> {
    let (claim, value) = entry.split_once('=')?;
    let (claim, value) = (claim.trim(), value.trim());
    (!claim.is_empty() && !value.is_empty()).then(|| (claim.to_string(), value.to_string()))
}

impl Config {
    /// The extra pools with their groups, in priority order.
    pub fn group_pools(&self) -> Vec<(String, Ipv4Net)> {
        self.network.group_pools.iter().filter_map(|e| parse_group_pool(e)).collect()
    }

    /// Whether clients present a certificate in every admitted combination.
    pub fn client_certificate_required(&self) -> bool {
        self.auth.require.iter().all(|r| r.certificate)
    }

    /// Whether some admitted combination needs a username and password.
    pub fn password_used(&self) -> bool {
        self.auth.require.iter().any(AuthRequirement::needs_password)
    }
}

/// This host's name, or "localhost" if it has none.
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".to_string();
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..len]) {
        Ok(s) if !s.is_empty() => s.to_string(),
        _ => "localhost".to_string(),
    }
}
