//! The p2sgw gateway in a test topology: its own PKI and config in the test's temp
//! directory, the `serve` process in the gateway namespace, and the CLI verbs a test
//! needs (issue, revoke, profile).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{Proc, Topology};

pub const P2SGW: &str = env!("CARGO_BIN_EXE_p2sgw");
/// The gateway's address as client 0 sees it (certificate name and profile remote).
pub const GATEWAY_NAME: &str = "192.168.100.1";

/// Knobs a test may turn; everything else is the config's default.
pub struct GatewayOptions {
    pub pool: &'static str,
    pub keepalive: (u32, u32),
    pub reneg_secs: u32,
    pub data_ciphers: &'static str,
    /// Entries of `[network] group_pools`.
    pub group_pools: Vec<String>,
    /// More sections, appended as written (`[auth]`, `[radius]`, `[token]`…).
    pub extra: String,
    /// `p2sgw pki init --key`: the CA's and server's key type.
    pub pki_key: &'static str,
    /// A command the gateway runs under (e.g. `setpriv` dropping capabilities).
    pub launcher: &'static [&'static str],
}

impl Default for GatewayOptions {
    fn default() -> Self {
        GatewayOptions {
            pool: "172.16.201.0/24",
            keepalive: (2, 10),
            reneg_secs: 3600,
            data_ciphers: r#""AES-256-GCM", "CHACHA20-POLY1305", "AES-128-GCM""#,
            group_pools: Vec::new(),
            extra: String::new(),
            pki_key: "ecdsa-p256",
            launcher: &[],
        }
    }
}

pub struct Gateway {
    pub state_dir: PathBuf,
    pub config_path: PathBuf,
    pub process: Proc,
}

/// Runs the p2sgw CLI; panics with its output unless it succeeds.
pub fn p2sgw(args: &[&str]) -> String {
    let out = Command::new(P2SGW).args(args).output().expect("run p2sgw");
    assert!(
        out.status.success(),
        "p2sgw {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Gateway {
    pub fn start(topo: &Topology, opts: GatewayOptions) -> Gateway {
        let state_dir = topo.temp_dir().join("gw");
        let pki = state_dir.join("pki");
        p2sgw(&["pki", "init", "--dir", path(&pki), "--gateway", GATEWAY_NAME, "--key", opts.pki_key]);
        let config_path = topo.temp_dir().join("gw.toml");
        let (interval, timeout) = opts.keepalive;
        let config = format!(
            r#"[gateway]
name = "{GATEWAY_NAME}"
state_dir = "{state}"

[network]
pool = "{pool}"
routes = ["10.50.0.0/24"]
dns_servers = ["10.50.0.53"]
dns_search = ["corp.example"]
group_pools = [{group_pools}]

[openvpn]
data_ciphers = [{ciphers}]
keepalive_interval_secs = {interval}
keepalive_timeout_secs = {timeout}
reneg_secs = {reneg}

{extra}
"#,
            state = state_dir.display(),
            pool = opts.pool,
            ciphers = opts.data_ciphers,
            reneg = opts.reneg_secs,
            group_pools = opts.group_pools.iter().map(|g| format!("{g:?}")).collect::<Vec<_>>().join(", "),
            extra = opts.extra,
        );
        std::fs::write(&config_path, config).expect("write gateway config");
        p2sgw(&["check-config", path(&config_path)]);
        let command =
            [opts.launcher, &["env", "P2SGW_LOG=debug", P2SGW, "serve", "--config", path(&config_path)]].concat();
        let process = topo.gw().spawn(&command, "p2sgw");
        process.wait_for_log("gateway up", Duration::from_secs(20)).expect("gateway starts");
        Gateway { state_dir, config_path, process }
    }

    pub fn pki_dir(&self) -> PathBuf {
        self.state_dir.join("pki")
    }

    /// Issues a client certificate; returns its thumbprint.
    pub fn issue(&self, name: &str) -> String {
        p2sgw(&["pki", "issue", "--dir", path(&self.pki_dir()), "--name", name]).trim().to_string()
    }

    pub fn revoke(&self, name: &str) {
        p2sgw(&["pki", "revoke", "--dir", path(&self.pki_dir()), "--name", name]);
    }

    /// Issues `name` (if `issue`) and writes its profile for `transport`.
    pub fn profile(&self, name: &str, transport: &str) -> PathBuf {
        let out = self.config_path.with_file_name(format!("{name}-{transport}.ovpn"));
        p2sgw(&[
            "profile",
            "--config",
            path(&self.config_path),
            "--name",
            name,
            "--out",
            path(&out),
            "--transport",
            transport,
        ]);
        out
    }

    /// The running gateway's sessions, as `p2sgw sessions --json` lists them.
    pub fn sessions(&self) -> Vec<serde_json::Value> {
        let out = p2sgw(&["sessions", "--json", "--config", path(&self.config_path)]);
        let json: serde_json::Value = serde_json::from_str(&out).expect("sessions JSON");
        json["sessions"].as_array().cloned().expect("a sessions array")
    }

    pub fn log(&self) -> String {
        self.process.log_text()
    }

    /// The metrics scrape through the admin socket (the CLI has no verb for it).
    pub fn metrics(&self) -> String {
        let socket = self.state_dir.join("admin.sock");
        let out = Command::new("curl")
            .args(["-sS", "--fail", "--unix-socket", path(&socket), "http://p2sgw/metrics"])
            .output()
            .expect("run curl");
        assert!(out.status.success(), "metrics scrape: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("UTF-8 metrics")
    }

    /// Waits for a line of the gateway log that contains every one of `parts`.
    pub fn wait_for_line(&self, parts: &[&str], timeout: Duration) -> Result<(), String> {
        let what = parts.join(" … ");
        self.process.wait_for_log_with(timeout, &what, |log| {
            log.lines().any(|l| parts.iter().all(|p| l.contains(p))).then_some(Ok(()))
        })
    }
}

/// A metric of a scrape from [`Gateway::metrics`], summed over its labels (e.g. over
/// workers): `name` as written in the scrape (counters end in `_total`).
pub fn metric_sum(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .filter_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            (key.split('{').next() == Some(name)).then(|| value.parse::<u64>().ok()).flatten()
        })
        .sum()
}

/// The session of `user` in a list from [`Gateway::sessions`].
pub fn session_of<'a>(list: &'a [serde_json::Value], user: &str) -> Option<&'a serde_json::Value> {
    list.iter().find(|s| s["user"] == user)
}

pub fn path(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// The tunnel address openvpn configured, from its log ("ifconfig A M" in PUSH_REPLY).
pub fn pushed_address(client_log: &str) -> Option<String> {
    let reply = client_log.lines().find(|l| l.contains("PUSH_REPLY"))?;
    let at = reply.find("ifconfig ")? + "ifconfig ".len();
    reply[at..].split([' ', ',']).next().map(str::to_string)
}
