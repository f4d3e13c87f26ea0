//! strongSwan 5.9 (Debian's `charon-systemd` and `swanctl`) as IKEv2 client or responder inside
//! a test namespace, plus the swanctl.conf builders and a small PKI for them.
//!
//! These machines have no kernel ESP (no xfrm), so every charon loads `kernel-libipsec`: ESP is
//! done in userspace and always encapsulated in UDP 4500 (charon fakes a NAT), and the tunnel is
//! a TUN device `ipsec0` in the namespace. On a client it carries the virtual IP, and charon
//! routes the remote traffic selectors through it in routing table 220 (rule priority 220).
//!
//! Several instances run at once (one per namespace): each gets a private directory
//! `<dir>/<name>/` with its own `strongswan.conf` (passed in `STRONGSWAN_CONF`, so nothing of
//! /etc/strongswan.d is read), its own vici socket there, and its own swanctl directory
//! (`SWANCTL_DIR`, so /etc/swanctl is never read). charon-systemd writes no pid file and does not
//! log to the journal here; its log (ike 2, cfg 2, net 1, chd 1) goes to stderr, which is the
//! `Proc` log `<role>-charon-<name>.log` in the test directory (dumped when a test fails).
//! Without the `resolve` plugin, DNS servers a gateway assigns are ignored: /etc/resolv.conf,
//! which `ip netns exec` shares with the host, is never touched.

use std::fmt::Write as _;
use std::fs;
use std::net::Ipv4Addr;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use ipnet::Ipv4Net;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};

use super::netns::Netns;
use super::process::{Proc, run_with_timeout, tail};
use super::tools::wait_until;
use super::topology::{Topology, VNET_GW_ADDR, VNET_SUBNET, VPN_POOL_ROUTE};

pub const CHARON: &str = "/usr/sbin/charon-systemd";
pub const SWANCTL: &str = "swanctl";
/// The TUN device kernel-libipsec creates in charon's namespace.
pub const IPSEC_TUN: &str = "ipsec0";
/// kernel-libipsec's default MTU of that device (`charon.plugins.kernel-libipsec.mtu`).
pub const IPSEC_TUN_MTU: u32 = 1400;
/// The routing table charon installs its routes in.
pub const CHARON_ROUTING_TABLE: &str = "220";
/// AES-GCM-256 first, then strongSwan's defaults.
pub const DEFAULT_IKE_PROPOSALS: &str = "aes256gcm16-prfsha384-ecp384,default";
pub const DEFAULT_ESP_PROPOSALS: &str = "aes256gcm16,default";
/// Connection and child names the config builders use unless told otherwise.
pub const DEFAULT_CONN: &str = "gw";
pub const DEFAULT_CHILD: &str = "net";

/// The plugins charon loads: crypto, certificates, EAP-MSCHAPv2 and EAP-TLS, userspace ESP, sockets,
/// vici. No `resolve` (DNS), `updown` (scripts) or `stroke`.
const PLUGINS: &str = "random nonce openssl aes sha1 sha2 hmac kdf gcm curve25519 chapoly pem pkcs1 pkcs8 x509 \
                       revocation constraints pubkey eap-identity eap-mschapv2 eap-tls kernel-libipsec \
                       kernel-netlink socket-default vici";
/// swanctl reads every one of these below `SWANCTL_DIR` and complains about missing ones.
const SWANCTL_SUBDIRS: [&str; 14] = [
    "x509", "x509ca", "x509ocsp", "x509aa", "x509ac", "x509crl", "pubkey", "private", "rsa", "ecdsa", "bliss", "pkcs8",
    "pkcs12", "conf.d",
];
const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long charon itself may take to set up or tear down an IKE SA (swanctl `--timeout`).
const EXCHANGE_TIMEOUT_SECS: u64 = 20;
/// Hard limit for any swanctl command (above the exchange timeout).
const SWANCTL_TIMEOUT: Duration = Duration::from_secs(EXCHANGE_TIMEOUT_SECS + 10);
/// Lines of charon's log in error messages.
const ERROR_LOG_LINES: usize = 40;
/// sun_path holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

/// One charon-systemd process inside a namespace, driven with swanctl over its private vici socket.
/// Dropping it stops the process by PID (SIGTERM, then SIGKILL).
pub struct Charon {
    name: String,
    namespace: String,
    swanctl_dir: PathBuf,
    vici_uri: String,
    process: Proc,
}

impl Charon {
    /// Starts charon-systemd in `ns` with its files in `<dir>/<name>/` (strongswan.conf, the vici
    /// socket, the swanctl directory; `name`: a short tag such as `alice` or `responder`, unique
    /// per `dir`) and waits until its vici socket answers.
    pub fn start(ns: &Netns, dir: &Path, name: &str) -> Charon {
        assert!(
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'),
            "charon instance name {name:?} must be letters, digits or '-'"
        );
        let home = dir.join(name);
        let swanctl_dir = home.join("swanctl");
        for sub in SWANCTL_SUBDIRS {
            let path = swanctl_dir.join(sub);
            fs::create_dir_all(&path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        }
        let socket = home.join("vici");
        let socket_text = socket.to_str().expect("test paths are UTF-8");
        assert!(socket_text.len() <= MAX_SOCKET_PATH, "vici socket path {socket_text} is too long for a unix socket");
        let conf_path = home.join("strongswan.conf");
        fs::write(&conf_path, strongswan_conf(socket_text))
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", conf_path.display()));

        let strongswan_conf_env = format!("STRONGSWAN_CONF={}", conf_path.display());
        let process = ns.spawn(&["env", &strongswan_conf_env, CHARON], &format!("charon-{name}"));
        let charon = Charon {
            name: name.to_owned(),
            namespace: ns.name().to_owned(),
            swanctl_dir,
            vici_uri: format!("unix://{socket_text}"),
            process,
        };
        // The socket file appears before charon accepts on it; a harmless query proves it does.
        let answers = || socket.exists() && charon.swanctl(&["--stats"]).status.success();
        let ready =
            wait_until(STARTUP_TIMEOUT, Duration::from_millis(50), || !charon.process.is_running() || answers());
        if !ready || !charon.process.is_running() {
            panic!(
                "charon {name} in {} did not answer on {} within {STARTUP_TIMEOUT:?} (exit status: {:?}); log:\n{}",
                charon.namespace,
                charon.vici_uri,
                charon.process.try_exit_status(),
                charon.log_tail()
            );
        }
        charon
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `unix://…/vici`, for `swanctl --uri`.
    pub fn vici_uri(&self) -> &str {
        &self.vici_uri
    }

    /// The directory `SWANCTL_DIR` points to (credentials in `x509/`, `x509ca/`, `private/`).
    pub fn swanctl_dir(&self) -> &Path {
        &self.swanctl_dir
    }

    pub fn process(&self) -> &Proc {
        &self.process
    }

    /// Copies the private keys of `conf` into the swanctl directory, writes its text as
    /// `swanctl.conf` and loads everything (`swanctl --load-all`). Panics with swanctl's output
    /// and the charon log if loading fails.
    pub fn load_swanctl(&self, conf: &SwanctlConf) {
        let private_dir = self.swanctl_dir.join("private");
        for (index, key) in conf.private_keys.iter().enumerate() {
            // Numbered, so two keys with the same file name cannot overwrite each other.
            let file_name =
                key.file_name().unwrap_or_else(|| panic!("private key path {} has no file name", key.display()));
            let target = private_dir.join(format!("{index}-{}", file_name.to_string_lossy()));
            fs::copy(key, &target)
                .unwrap_or_else(|e| panic!("cannot copy {} to {}: {e}", key.display(), target.display()));
        }
        let conf_path = self.swanctl_dir.join("swanctl.conf");
        fs::write(&conf_path, &conf.text).unwrap_or_else(|e| panic!("cannot write {}: {e}", conf_path.display()));
        let conf_text = conf_path.to_str().expect("test paths are UTF-8");
        let output = self.swanctl(&["--load-all", "--noprompt", "--file", conf_text]);
        if !output.status.success() {
            panic!(
                "charon {}: swanctl --load-all failed ({}):\n{}\nconfig:\n{}\ncharon log:\n{}",
                self.name,
                output.status,
                output_text(&output),
                conf.text,
                self.log_tail()
            );
        }
    }

    /// Brings up CHILD SA `child` of connection `ike` and waits for it (at most 20 s). The error
    /// carries swanctl's output and the tail of charon's log.
    pub fn initiate(&self, child: &str, ike: &str) -> Result<(), String> {
        let timeout = EXCHANGE_TIMEOUT_SECS.to_string();
        self.swanctl_ok(&["--initiate", "--child", child, "--ike", ike, "--timeout", &timeout])
    }

    /// Deletes IKE SA `ike` (and its CHILD SAs), telling the peer, and waits for it (at most 20 s).
    pub fn terminate(&self, ike: &str) -> Result<(), String> {
        let timeout = EXCHANGE_TIMEOUT_SECS.to_string();
        self.swanctl_ok(&["--terminate", "--ike", ike, "--timeout", &timeout])
    }

    /// Runs `swanctl <args> --uri <this charon>`; the output whatever the exit status.
    /// Panics only if swanctl cannot run or hangs.
    pub fn swanctl(&self, args: &[&str]) -> Output {
        let mut command = Command::new(SWANCTL);
        command.args(args).args(["--uri", &self.vici_uri]).env("SWANCTL_DIR", &self.swanctl_dir);
        run_with_timeout(&mut command, SWANCTL_TIMEOUT).unwrap_or_else(|e| panic!("charon {}: {e}", self.name))
    }

    /// Runs `swanctl <args>`; `Err` with its output and the charon log tail unless it exits 0.
    pub fn swanctl_ok(&self, args: &[&str]) -> Result<(), String> {
        let output = self.swanctl(args);
        if output.status.success() {
            return Ok(());
        }
        Err(format!(
            "charon {} in {}: swanctl {} failed ({}):\n{}\ncharon log ends with:\n{}",
            self.name,
            self.namespace,
            args.join(" "),
            output.status,
            output_text(&output),
            self.log_tail()
        ))
    }

    /// `swanctl --list-sas` as text (empty when there are no SAs).
    pub fn list_sas(&self) -> String {
        String::from_utf8_lossy(&self.swanctl(&["--list-sas"]).stdout).into_owned()
    }

    /// The virtual IPv4 address this client was assigned (from `--list-sas`), if an IKE SA is up.
    pub fn virtual_ip(&self) -> Option<Ipv4Addr> {
        parse_virtual_ip(&self.list_sas())
    }

    /// The ESP traffic of every installed CHILD SA called `child`, from `--list-sas`; `None`
    /// when there is none.
    pub fn esp_counters(&self, child: &str) -> Option<EspCounters> {
        parse_esp_counters(&self.list_sas(), child)
    }

    /// Whether charon lists no IKE SA at all.
    pub fn has_no_sas(&self) -> bool {
        self.list_sas().trim().is_empty()
    }

    /// Everything charon logged so far.
    pub fn log(&self) -> String {
        self.process.log_text()
    }

    fn log_tail(&self) -> String {
        tail(&self.log(), ERROR_LOG_LINES)
    }

    /// Waits until charon's log contains `pattern`.
    pub fn wait_for_log(&self, pattern: &str, timeout: Duration) -> Result<(), String> {
        self.process.wait_for_log(pattern, timeout)
    }

    /// Kills charon with SIGKILL, as a client that vanishes (no Delete is sent; its TUN and
    /// routes go with it). Returns once it is reaped.
    pub fn kill(&self) {
        self.process.signal(libc::SIGKILL);
        if let Err(e) = self.process.wait_exit(Duration::from_secs(5)) {
            panic!("charon {}: {e}", self.name);
        }
    }
}

fn strongswan_conf(vici_socket: &str) -> String {
    // charon-systemd reads the `charon-systemd` section (falling back to `charon`).
    format!(
        r#"charon-systemd {{
    load = {PLUGINS}
    journal {{
        default = -1
    }}
    filelog {{
        stderr {{
            time_format = %H:%M:%S
            ike_name = yes
            flush_line = yes
            default = 1
            ike = 2
            cfg = 2
            net = 1
            chd = 1
        }}
    }}
    plugins {{
        vici {{
            socket = unix://{vici_socket}
        }}
    }}
}}
"#
    )
}

fn output_text(output: &Output) -> String {
    format!(
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout).trim_end(),
        String::from_utf8_lossy(&output.stderr).trim_end()
    )
}

/// Bytes and packets of ESP traffic charon counted on a CHILD SA (summed over its instances).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EspCounters {
    pub in_bytes: u64,
    pub in_packets: u64,
    pub out_bytes: u64,
    pub out_packets: u64,
}

/// The virtual IP in `swanctl --list-sas` output: the bracketed address after the local
/// endpoint, e.g. `local  'CN=alice' @ 192.168.100.2[4500] [172.16.202.1]`.
pub fn parse_virtual_ip(list_sas: &str) -> Option<Ipv4Addr> {
    list_sas.lines().find_map(|line| {
        let endpoint = line.trim_start().strip_prefix("local ")?.rsplit_once(" @ ")?.1;
        endpoint.split_whitespace().skip(1).find_map(|token| token.strip_prefix('[')?.strip_suffix(']')?.parse().ok())
    })
}

/// Sums the `in`/`out` lines of every CHILD SA block named `child` in `swanctl --list-sas`:
///
/// ```text
///   net: #1, reqid 1, INSTALLED, TUNNEL-in-UDP, ESP:AES_GCM_16-256
///     in  c8d2b4e1,    252 bytes,     3 packets,     0s ago
///     out 5c62d45d,    252 bytes,     3 packets,     0s ago
/// ```
pub fn parse_esp_counters(list_sas: &str, child: &str) -> Option<EspCounters> {
    let header = format!("{child}: #");
    let mut counters = None;
    let mut in_block = false;
    for line in list_sas.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        // IKE SAs start in column 0, CHILD SAs at 2, their details at 4.
        if indent <= 2 {
            in_block = indent == 2 && trimmed.starts_with(&header);
            if in_block {
                counters.get_or_insert_with(EspCounters::default);
            }
            continue;
        }
        if !in_block {
            continue;
        }
        let (is_inbound, rest) = if let Some(rest) = trimmed.strip_prefix("in ") {
            (true, rest)
        } else if let Some(rest) = trimmed.strip_prefix("out ") {
            (false, rest)
        } else {
            continue;
        };
        let number_before = |unit: &str| -> u64 {
            rest.split(',')
                .find_map(|field| field.trim().strip_suffix(unit).and_then(|n| n.trim().parse().ok()))
                .unwrap_or_else(|| panic!("cannot read {unit:?} in swanctl line {line:?}"))
        };
        let (bytes, packets) = (number_before(" bytes"), number_before(" packets"));
        let total = counters.get_or_insert_with(EspCounters::default);
        if is_inbound {
            total.in_bytes += bytes;
            total.in_packets += packets;
        } else {
            total.out_bytes += bytes;
            total.out_packets += packets;
        }
    }
    counters
}

/// The device `ns` sends traffic for `dst` through (`ip route get`), e.g. `ipsec0`.
pub fn route_device(ns: &Netns, dst: &str) -> Option<String> {
    let output = ns.exec(&["ip", "-o", "route", "get", dst]);
    let text = String::from_utf8_lossy(&output.stdout);
    let mut words = text.split_whitespace();
    words.find(|&word| word == "dev")?;
    words.next().map(str::to_owned)
}

/// The text of a swanctl.conf and the private keys it needs (copied into the swanctl
/// `private/` directory on load: swanctl reads keys only from there). Certificates are
/// referenced by absolute path.
#[derive(Debug, Clone)]
pub struct SwanctlConf {
    pub text: String,
    pub private_keys: Vec<PathBuf>,
}

impl SwanctlConf {
    /// A hand-written config.
    pub fn raw(text: &str, private_keys: &[&Path]) -> SwanctlConf {
        SwanctlConf { text: text.to_owned(), private_keys: private_keys.iter().map(|key| key.to_path_buf()).collect() }
    }
}

/// How a client proves who it is.
#[derive(Debug, Clone)]
pub enum ClientAuth {
    /// A certificate (RSA or ECDSA) and its private key (PEM); the IKE identity is the
    /// certificate's subject unless `ClientOptions::local_id` says otherwise.
    Certificate { cert: PathBuf, key: PathBuf },
    /// EAP-MSCHAPv2 with this user name and password; the gateway still authenticates with its
    /// certificate.
    EapMschapv2 { identity: String, secret: String },
    /// EAP-TLS with a certificate and its private key (PEM) whose subject or SAN is `identity`
    /// (the EAP identity). The TLS server, typically a RADIUS server behind the gateway, must
    /// present a certificate for `server_id` that chains to `server_ca`; the gateway still
    /// authenticates with its certificate in IKE.
    EapTls { cert: PathBuf, key: PathBuf, identity: String, server_id: String, server_ca: PathBuf },
}

/// A road-warrior client: connects to `gateway`, asks for a virtual IPv4 address and tunnels
/// `remote_ts`. Start from [`ClientOptions::certificate`], [`ClientOptions::eap_mschapv2`] or
/// [`ClientOptions::eap_tls`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub conn: String,
    pub child: String,
    /// The address to connect to (`remote_addrs`).
    pub gateway: String,
    /// The identity the gateway's certificate must prove; by default its address (an IP SAN).
    pub gateway_id: String,
    /// The CA the gateway's certificate must chain to.
    pub ca_cert: PathBuf,
    pub auth: ClientAuth,
    /// Our IKE identity (`local.id`); unset: the certificate subject, or our IP address with EAP.
    pub local_id: Option<String>,
    /// Subnets to tunnel; the gateway may narrow them.
    pub remote_ts: Vec<String>,
    pub ike_proposals: String,
    pub esp_proposals: String,
    /// IKE SA rekeying interval; unset: strongSwan's 4 h.
    pub ike_rekey_time: Option<Duration>,
    /// How long an IKE SA may outlive its rekey time (hard lifetime = rekey + this); unset:
    /// 10 % of the rekey time, which short test lifetimes make too tight.
    pub ike_over_time: Option<Duration>,
    /// CHILD SA rekeying interval and hard lifetime; unset: 1 h and 110 % of the rekey time.
    pub rekey_time: Option<Duration>,
    pub life_time: Option<Duration>,
    /// Liveness checks of the gateway when idle this long; unset: none.
    pub dpd_delay: Option<Duration>,
}

impl ClientOptions {
    pub fn certificate(gateway: &str, ca_cert: &Path, cert: &Path, key: &Path) -> ClientOptions {
        ClientOptions::new(
            gateway,
            ca_cert,
            ClientAuth::Certificate { cert: cert.to_path_buf(), key: key.to_path_buf() },
        )
    }

    pub fn eap_mschapv2(gateway: &str, ca_cert: &Path, identity: &str, secret: &str) -> ClientOptions {
        let auth = ClientAuth::EapMschapv2 { identity: identity.to_owned(), secret: secret.to_owned() };
        ClientOptions::new(gateway, ca_cert, auth)
    }

    /// EAP-TLS as `identity` with `client` (see [`ClientAuth::EapTls`] for `server_id` and
    /// `server_ca`).
    pub fn eap_tls(
        gateway: &str,
        ca_cert: &Path,
        client: &CertFiles,
        identity: &str,
        server_id: &str,
        server_ca: &Path,
    ) -> ClientOptions {
        let auth = ClientAuth::EapTls {
            cert: client.cert.clone(),
            key: client.key.clone(),
            identity: identity.to_owned(),
            server_id: server_id.to_owned(),
            server_ca: server_ca.to_path_buf(),
        };
        ClientOptions::new(gateway, ca_cert, auth)
    }

    fn new(gateway: &str, ca_cert: &Path, auth: ClientAuth) -> ClientOptions {
        ClientOptions {
            conn: DEFAULT_CONN.to_owned(),
            child: DEFAULT_CHILD.to_owned(),
            gateway: gateway.to_owned(),
            gateway_id: gateway.to_owned(),
            ca_cert: ca_cert.to_path_buf(),
            auth,
            local_id: None,
            remote_ts: vec![VNET_SUBNET.to_owned()],
            ike_proposals: DEFAULT_IKE_PROPOSALS.to_owned(),
            esp_proposals: DEFAULT_ESP_PROPOSALS.to_owned(),
            ike_rekey_time: None,
            ike_over_time: None,
            rekey_time: None,
            life_time: None,
            dpd_delay: None,
        }
    }
}

/// The swanctl.conf of a client as described by `opts`.
pub fn client_conf(opts: &ClientOptions) -> SwanctlConf {
    let mut connection = String::new();
    let mut line = |text: String| {
        connection.push_str("        ");
        connection.push_str(&text);
        connection.push('\n');
    };
    line("version = 2".to_owned());
    line(format!("remote_addrs = {}", opts.gateway));
    line("vips = 0.0.0.0".to_owned());
    line(format!("proposals = {}", opts.ike_proposals));
    if let Some(delay) = opts.dpd_delay {
        line(format!("dpd_delay = {}s", delay.as_secs().max(1)));
    }
    if let Some(rekey) = opts.ike_rekey_time {
        line(format!("rekey_time = {}s", rekey.as_secs().max(1)));
    }
    if let Some(over) = opts.ike_over_time {
        line(format!("over_time = {}s", over.as_secs().max(1)));
    }

    let mut local = String::new();
    // Top-level sections after `connections`: secrets, authorities.
    let mut sections = String::new();
    let mut private_keys = Vec::new();
    match &opts.auth {
        ClientAuth::Certificate { cert, key } => {
            let _ = write!(local, "auth = pubkey\n            certs = {}\n", absolute(cert));
            private_keys.push(key.clone());
        }
        ClientAuth::EapMschapv2 { identity, secret } => {
            let _ = write!(local, "auth = eap-mschapv2\n            eap_id = {}\n", quoted(identity));
            let _ = write!(
                sections,
                "secrets {{\n    eap-client {{\n        id = {}\n        secret = {}\n    }}\n}}\n",
                quoted(identity),
                quoted(secret)
            );
        }
        ClientAuth::EapTls { cert, key, identity, server_id, server_ca } => {
            let _ = write!(
                local,
                "auth = eap-tls\n            certs = {}\n            eap_id = {}\n            aaa_id = {}\n",
                absolute(cert),
                quoted(identity),
                quoted(server_id)
            );
            private_keys.push(key.clone());
            // Trusted for the TLS server's certificate; `remote.cacerts` still limits IKE to the gateway's CA.
            let _ = write!(
                sections,
                "authorities {{\n    eap-server {{\n        cacert = {}\n    }}\n}}\n",
                absolute(server_ca)
            );
        }
    }
    if let Some(id) = &opts.local_id {
        let _ = writeln!(local, "            id = {}", quoted(id));
    }

    let mut child = format!("remote_ts = {}\n", opts.remote_ts.join(","));
    let _ = writeln!(child, "                esp_proposals = {}", opts.esp_proposals);
    if let Some(rekey) = opts.rekey_time {
        let _ = writeln!(child, "                rekey_time = {}s", rekey.as_secs().max(1));
    }
    if let Some(life) = opts.life_time {
        let _ = writeln!(child, "                life_time = {}s", life.as_secs().max(1));
    }

    let text = format!(
        r#"connections {{
    {conn} {{
{connection}        local {{
            {local}        }}
        remote {{
            auth = pubkey
            id = {gateway_id}
            cacerts = {ca}
        }}
        children {{
            {child_name} {{
                {child}            }}
        }}
    }}
}}
{sections}"#,
        conn = opts.conn,
        gateway_id = quoted(&opts.gateway_id),
        ca = absolute(&opts.ca_cert),
        child_name = opts.child,
    );
    SwanctlConf { text, private_keys }
}

/// A strongSwan gateway for road warriors: certificate clients (chained to `ca_cert`) and, if
/// `eap_users` is not empty, EAP-MSCHAPv2 clients; addresses from `pool`, `local_ts` as the
/// tunnelled subnets.
#[derive(Debug, Clone)]
pub struct ResponderOptions {
    /// `local_addrs`; `%any` answers on every address.
    pub listen: String,
    /// Our IKE identity; must be named by the server certificate (its IP SAN, say).
    pub server_id: String,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub ca_cert: PathBuf,
    /// The virtual IP pool, e.g. `172.16.202.0/24`.
    pub pool: String,
    pub dns: Vec<Ipv4Addr>,
    pub local_ts: Vec<String>,
    /// (user name, password) of EAP-MSCHAPv2 users.
    pub eap_users: Vec<(String, String)>,
    pub ike_proposals: String,
    pub esp_proposals: String,
}

impl ResponderOptions {
    pub fn new(server_id: &str, server_cert: &Path, server_key: &Path, ca_cert: &Path) -> ResponderOptions {
        ResponderOptions {
            listen: "%any".to_owned(),
            server_id: server_id.to_owned(),
            server_cert: server_cert.to_path_buf(),
            server_key: server_key.to_path_buf(),
            ca_cert: ca_cert.to_path_buf(),
            pool: "172.16.202.0/24".to_owned(),
            dns: Vec::new(),
            local_ts: vec![VNET_SUBNET.to_owned()],
            eap_users: Vec::new(),
            ike_proposals: DEFAULT_IKE_PROPOSALS.to_owned(),
            esp_proposals: DEFAULT_ESP_PROPOSALS.to_owned(),
        }
    }
}

/// Connection names in [`responder_conf`]: one per client authentication method.
pub const RESPONDER_CERT_CONN: &str = "rw-cert";
pub const RESPONDER_EAP_CONN: &str = "rw-eap";

/// The swanctl.conf of a road-warrior gateway as described by `opts`.
pub fn responder_conf(opts: &ResponderOptions) -> SwanctlConf {
    let mut text = String::from("connections {\n");
    let mut connection = |name: &str, remote: &str| {
        let _ = write!(
            text,
            r#"    {name} {{
        version = 2
        local_addrs = {listen}
        pools = pool
        proposals = {ike}
        local {{
            auth = pubkey
            certs = {cert}
            id = {id}
        }}
        remote {{
            {remote}
        }}
        children {{
            {DEFAULT_CHILD} {{
                local_ts = {local_ts}
                esp_proposals = {esp}
            }}
        }}
    }}
"#,
            listen = opts.listen,
            ike = opts.ike_proposals,
            cert = absolute(&opts.server_cert),
            id = quoted(&opts.server_id),
            local_ts = opts.local_ts.join(","),
            esp = opts.esp_proposals,
        );
    };
    connection(RESPONDER_CERT_CONN, &format!("auth = pubkey\n            cacerts = {}", absolute(&opts.ca_cert)));
    if !opts.eap_users.is_empty() {
        // The client sends no AUTH payload and an identity of its choice (its IP address by
        // default): EAP asks for the user name.
        connection(RESPONDER_EAP_CONN, "auth = eap-mschapv2\n            eap_id = %any");
    }
    text.push_str("}\n");
    let dns = if opts.dns.is_empty() {
        String::new()
    } else {
        format!("\n        dns = {}", opts.dns.iter().map(Ipv4Addr::to_string).collect::<Vec<_>>().join(","))
    };
    let _ = write!(text, "pools {{\n    pool {{\n        addrs = {}{dns}\n    }}\n}}\n", opts.pool);
    if !opts.eap_users.is_empty() {
        text.push_str("secrets {\n");
        for (index, (user, password)) in opts.eap_users.iter().enumerate() {
            let _ = write!(
                text,
                "    eap-user{index} {{\n        id = {}\n        secret = {}\n    }}\n",
                quoted(user),
                quoted(password)
            );
        }
        text.push_str("}\n");
    }
    SwanctlConf { text, private_keys: vec![opts.server_key.clone()] }
}

/// charon as the gateway in the topology's `gw` namespace: the strongSwan baseline the p2sgw
/// IKEv2 responder is compared with. ESP runs in kernel-libipsec; decrypted packets leave
/// `ipsec0` and are forwarded to the vnet (ip_forward=1), and the route back to a client's
/// virtual IP is charon's (table 220, via `ipsec0`). Derefs to its [`Charon`].
pub struct StrongswanResponder {
    charon: Charon,
    options: ResponderOptions,
}

impl StrongswanResponder {
    /// Starts charon in `topology.gw()` with its files in the topology's directory, loads the
    /// config and makes sure the vnet host routes the pool back through the gateway.
    pub fn start(topology: &Topology, options: ResponderOptions) -> StrongswanResponder {
        let pool: Ipv4Net = options
            .pool
            .parse()
            .unwrap_or_else(|e| panic!("responder pool {:?} is not an IPv4 prefix: {e}", options.pool));
        let routed_back: Ipv4Net = VPN_POOL_ROUTE.parse().expect("VPN_POOL_ROUTE is an IPv4 prefix");
        if !routed_back.contains(&pool) {
            topology.vnet().ip(&["route", "add", &pool.to_string(), "via", VNET_GW_ADDR]);
        }
        topology.gw().sysctl("net.ipv4.ip_forward", "1");
        let charon = Charon::start(topology.gw(), topology.temp_dir(), "responder");
        charon.load_swanctl(&responder_conf(&options));
        StrongswanResponder { charon, options }
    }

    pub fn options(&self) -> &ResponderOptions {
        &self.options
    }

    pub fn charon(&self) -> &Charon {
        &self.charon
    }
}

impl Deref for StrongswanResponder {
    type Target = Charon;

    fn deref(&self) -> &Charon {
        &self.charon
    }
}

/// Starts a client charon in `ns` (files in `<dir>/<name>/`), loads `opts` and brings the tunnel
/// up; panics with the log if it does not come up.
pub fn connected_client(ns: &Netns, dir: &Path, name: &str, opts: &ClientOptions) -> Charon {
    let charon = Charon::start(ns, dir, name);
    charon.load_swanctl(&client_conf(opts));
    charon.initiate(&opts.child, &opts.conn).unwrap_or_else(|e| panic!("{e}"));
    charon
}

/// Key types of [`IkePki`] certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    EcdsaP256,
    Rsa2048,
}

impl KeyType {
    fn generate(self) -> KeyPair {
        let algorithm = match self {
            KeyType::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyType::Rsa2048 => &rcgen::PKCS_RSA_SHA256,
        };
        KeyPair::generate_for(algorithm).unwrap_or_else(|e| panic!("cannot generate a {self:?} key: {e}"))
    }
}

/// A certificate and its private key, both PEM files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A CA (ECDSA P-256), a server certificate and client certificates for IKEv2 tests, as PEM files
/// in one directory (`ca.pem`, `<name>.pem`, `<name>.key`).
pub struct IkePki {
    dir: PathBuf,
    ca_cert: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    server: CertFiles,
}

impl IkePki {
    /// Creates `dir`, the CA and a server certificate of `server_key` type naming `server_name`
    /// (an IP address or DNS name, as SAN and CN; serverAuth EKU).
    pub fn generate(dir: &Path, server_name: &str, server_key: KeyType) -> IkePki {
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let ca_key = KeyType::EcdsaP256.generate();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "p2sgw test IKE CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key).expect("self-signed CA certificate");
        let ca_path = dir.join("ca.pem");
        write_file(&ca_path, &ca_cert.pem());
        let mut pki = IkePki {
            dir: dir.to_path_buf(),
            ca_cert: ca_path,
            issuer: Issuer::new(ca_params, ca_key),
            server: CertFiles { cert: PathBuf::new(), key: PathBuf::new() },
        };
        // `CertificateParams::new` makes an IP SAN of an address, a DNS SAN otherwise.
        let server_san = CertificateParams::new(vec![server_name.to_owned()])
            .unwrap_or_else(|e| panic!("server name {server_name:?}: {e}"))
            .subject_alt_names;
        pki.server = pki.issue("server", server_name, server_san, server_key, ExtendedKeyUsagePurpose::ServerAuth);
        pki
    }

    pub fn ca_cert(&self) -> &Path {
        &self.ca_cert
    }

    pub fn server(&self) -> &CertFiles {
        &self.server
    }

    /// A client certificate with subject `CN=<name>` (its IKE identity) and no SAN.
    pub fn issue_client(&self, name: &str, key_type: KeyType) -> CertFiles {
        self.issue(name, name, Vec::new(), key_type, ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// A client certificate with subject `CN=<email>` and `email` as rfc822Name SAN, so that
    /// strongSwan finds it for the identity `email` (e.g. an EAP identity `dave@example.org`).
    /// Files `<email>.pem` and `<email>.key`.
    pub fn issue_email_client(&self, email: &str, key_type: KeyType) -> CertFiles {
        let address = email.try_into().unwrap_or_else(|e| panic!("e-mail address {email:?}: {e}"));
        self.issue(email, email, vec![SanType::Rfc822Name(address)], key_type, ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue(
        &self,
        file_stem: &str,
        name: &str,
        subject_alt_names: Vec<SanType>,
        key_type: KeyType,
        usage: ExtendedKeyUsagePurpose,
    ) -> CertFiles {
        let key = key_type.generate();
        let mut params = CertificateParams::default();
        params.subject_alt_names = subject_alt_names;
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.issuer).unwrap_or_else(|e| panic!("certificate for {name}: {e}"));
        let files = CertFiles {
            cert: self.dir.join(format!("{file_stem}.pem")),
            key: self.dir.join(format!("{file_stem}.key")),
        };
        write_file(&files.cert, &cert.pem());
        write_file(&files.key, &key.serialize_pem());
        files
    }
}

fn write_file(path: &Path, contents: &str) {
    fs::write(path, contents).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

fn absolute(path: &Path) -> String {
    assert!(path.is_absolute(), "swanctl needs absolute credential paths, got {}", path.display());
    path.to_str().expect("test paths are UTF-8").to_owned()
}

/// A swanctl.conf string value in double quotes (identities may contain `=`, `,` or spaces).
fn quoted(value: &str) -> String {
    assert!(
        !value.contains(['"', '\\', '\n']),
        "swanctl value {value:?} must not contain quotes, backslashes or newlines"
    );
    format!("\"{value}\"")
}
