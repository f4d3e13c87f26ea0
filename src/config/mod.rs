//! The gateway's TOML configuration: schema, embedded defaults, and validation that
//! refuses a bad file with its path, line and reason before anything starts.
//!
//! Every key is documented in README.md ("Configuration reference").

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::crypto::AeadAlgorithm;

/// Where the gateway keeps its state (PKI, revocations) when the config does not say.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/p2sgw";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub gateway: GatewayConfig,
    pub listen: ListenConfig,
    pub network: NetworkConfig,
    pub pki: PkiConfig,
    pub openvpn: OpenVpnConfig,
    pub dataplane: DataplaneConfig,
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
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
}

impl Default for Config {
    fn default() -> Self {
        Config {
            gateway: GatewayConfig::default(),
            listen: ListenConfig::default(),
            network: NetworkConfig::default(),
            pki: PkiConfig::default(),
            openvpn: OpenVpnConfig::default(),
            dataplane: DataplaneConfig::default(),
        }
    }
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
        }
    }
}

impl Default for PkiConfig {
    fn default() -> Self {
        PkiConfig {
            dir: None,
            server_cert: None,
            server_key: None,
            trusted_roots: Vec::new(),
            crl_files: Vec::new(),
            revoked_thumbprints: Vec::new(),
            tls_crypt_key: None,
        }
    }
}

impl Default for OpenVpnConfig {
    fn default() -> Self {
        OpenVpnConfig {
            data_ciphers: vec![
                AeadAlgorithm::Aes256Gcm,
                AeadAlgorithm::ChaCha20Poly1305,
                AeadAlgorithm::Aes128Gcm,
            ],
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
        DataplaneConfig { workers: 0, tun_name: "p2sgw0".to_string() }
    }
}

impl Config {
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

    /// Trusted roots: `[pki] trusted_roots`, or `<dir>/ca.crt`.
    pub fn trusted_root_paths(&self) -> Vec<PathBuf> {
        if self.pki.trusted_roots.is_empty() {
            vec![self.pki_dir().join("ca.crt")]
        } else {
            self.pki.trusted_roots.clone()
        }
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
