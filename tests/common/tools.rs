//! Traffic and measurement helpers run inside namespaces: ping, iperf3, interface counters,
//! the OpenVPN client, and a polling `wait_until`.

use std::ops::Deref;
use std::path::Path;
use std::time::{Duration, Instant};

use super::netns::Netns;
use super::process::Proc;

/// iperf3's default port, used by `iperf3_server` and `iperf3_client`.
pub const IPERF3_PORT: u16 = 5201;
/// OpenVPN logs this line once the tunnel is up (routes and addresses applied).
pub const OPENVPN_CONNECTED_MARKER: &str = "Initialization Sequence Completed";
/// Printed instead when the tunnel came up but e.g. a pushed route could not be installed.
const OPENVPN_CONNECTED_WITH_ERRORS: &str = "Initialization Sequence Completed With Errors";

/// Calls `condition` every `poll` until it returns true (→ true) or `timeout` passes (→ false).
pub fn wait_until(timeout: Duration, poll: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        std::thread::sleep(poll.min(deadline - now));
    }
}

/// How long ping waits for a reply after the last request.
const REPLY_WAIT_SECS: u32 = 1;

/// Summary of one `ping` run.
#[derive(Debug, Clone, PartialEq)]
pub struct PingResult {
    /// Echo requests sent; 0 when ping could not send at all (e.g. "Network is unreachable").
    pub sent: u32,
    pub received: u32,
    pub loss_pct: f64,
    /// ping's complete stdout and stderr, for assertion messages.
    pub output: String,
}

impl PingResult {
    /// At least one request sent and every one answered.
    pub fn all_received(&self) -> bool {
        self.sent > 0 && self.received == self.sent
    }
}

/// Sends `count` echo requests from `ns` to `dst`, `interval` apart, and waits at most
/// `REPLY_WAIT_SECS` for the last reply. Unreachable destinations give `received == 0`, not a panic.
pub fn ping(ns: &Netns, dst: &str, count: u32, interval: Duration) -> PingResult {
    assert!(count > 0, "ping needs a positive count");
    // No `-w`: with a deadline ping keeps sending until `count` replies arrive.
    let expected_duration = interval.as_secs_f64() * f64::from(count) + f64::from(REPLY_WAIT_SECS);
    let output = ns
        .exec_with_timeout(
            &[
                "ping",
                "-n",
                "-q",
                "-c",
                &count.to_string(),
                "-i",
                &format!("{:.3}", interval.as_secs_f64()),
                "-W",
                &REPLY_WAIT_SECS.to_string(),
                dst,
            ],
            Duration::from_secs_f64(expected_duration + 10.0),
        )
        .unwrap_or_else(|e| panic!("ping {dst} from {}: {e}", ns.name()));
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    parse_ping_summary(&text)
}

/// Parses ping's summary line, e.g. "5 packets transmitted, 4 received, +1 errors, 20% packet
/// loss, time 4005ms", out of its whole output. No summary line means nothing was sent.
pub fn parse_ping_summary(text: &str) -> PingResult {
    let Some(summary) = text.lines().find(|line| line.contains("packets transmitted")) else {
        return PingResult { sent: 0, received: 0, loss_pct: 100.0, output: text.to_owned() };
    };
    let number_before = |suffix: &str| -> Option<&str> {
        summary.split(',').map(str::trim).find_map(|field| field.strip_suffix(suffix).map(str::trim))
    };
    fn parsed<T: std::str::FromStr>(field: Option<&str>, summary: &str) -> T {
        field.and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("cannot parse ping summary {summary:?}"))
    }
    let sent = parsed(number_before("packets transmitted"), summary);
    let received = parsed(number_before("received"), summary);
    let loss_pct = parsed(number_before("% packet loss"), summary);
    PingResult { sent, received, loss_pct, output: text.to_owned() }
}

/// Byte counters of one iperf3 test as reported in its JSON summary.
#[derive(Debug, Clone, PartialEq)]
pub struct IperfResult {
    /// Bytes the sending side wrote (`end.sum_sent.bytes`).
    pub sent_bytes: u64,
    /// Bytes the receiving side read (`end.sum_received.bytes`).
    pub received_bytes: u64,
    /// Receiver-side goodput (`end.sum_received.bits_per_second`).
    pub bits_per_second: f64,
}

/// Starts a one-shot iperf3 server (`iperf3 -s -1`) bound to `bind_addr` on the default port
/// and returns once it listens. It exits by itself after serving one test.
pub fn iperf3_server(ns: &Netns, bind_addr: &str) -> Proc {
    iperf3_server_port(ns, bind_addr, IPERF3_PORT)
}

pub fn iperf3_server_port(ns: &Netns, bind_addr: &str, port: u16) -> Proc {
    let port_text = port.to_string();
    let server = ns.spawn(
        &["iperf3", "--server", "--one-off", "--forceflush", "--bind", bind_addr, "--port", &port_text],
        "iperf3-server",
    );
    // Watch the socket rather than the log: it is the thing the client needs.
    let listening = || {
        let output = ns.exec(&["ss", "-H", "-l", "-t", "-n", "sport", "=", &format!(":{port}")]);
        !output.stdout.is_empty()
    };
    let ready = wait_until(Duration::from_secs(10), Duration::from_millis(20), || !server.is_running() || listening());
    if !ready || !server.is_running() {
        panic!(
            "iperf3 server on {bind_addr}:{port} in {} did not start listening; log:\n{}",
            ns.name(),
            server.log_text()
        );
    }
    server
}

/// Runs an iperf3 TCP test of `secs` seconds from `ns` to `server` (default port); `reverse`
/// makes the server send. Panics with iperf3's error if the test fails.
pub fn iperf3_client(ns: &Netns, server: &str, secs: u32, reverse: bool) -> IperfResult {
    iperf3_client_port(ns, server, IPERF3_PORT, secs, reverse)
}

pub fn iperf3_client_port(ns: &Netns, server: &str, port: u16, secs: u32, reverse: bool) -> IperfResult {
    iperf3_client_with(ns, server, port, secs, reverse, &[])
}

/// Like [`iperf3_client_port`], with extra iperf3 arguments (e.g. `["--bitrate", "40M"]`).
pub fn iperf3_client_with(
    ns: &Netns,
    server: &str,
    port: u16,
    secs: u32,
    reverse: bool,
    extra: &[&str],
) -> IperfResult {
    let (port_text, secs_text) = (port.to_string(), secs.to_string());
    let mut args = vec![
        "iperf3",
        "--client",
        server,
        "--port",
        &port_text,
        "--time",
        &secs_text,
        "--json",
        "--connect-timeout",
        "5000",
    ];
    if reverse {
        args.push("--reverse");
    }
    args.extend_from_slice(extra);
    let output = ns
        .exec_with_timeout(&args, Duration::from_secs(u64::from(secs) + 30))
        .unwrap_or_else(|e| panic!("iperf3 client in {}: {e}", ns.name()));
    let json = String::from_utf8_lossy(&output.stdout);
    parse_iperf3_json(&json).unwrap_or_else(|e| {
        panic!(
            "iperf3 client in {} to {server}:{port} failed ({}): {e}\nstderr: {}",
            ns.name(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim_end()
        )
    })
}

/// Extracts the summary of `iperf3 --json` output, or iperf3's `"error"` message.
pub fn parse_iperf3_json(json: &str) -> Result<IperfResult, String> {
    if let Some(error) = json_string_field(json, "error") {
        return Err(error);
    }
    let field = |object: &str, key: &str| {
        json_number_in_object(json, object, key).ok_or_else(|| format!("no end.{object}.{key} in output:\n{json}"))
    };
    Ok(IperfResult {
        sent_bytes: field("sum_sent", "bytes")? as u64,
        received_bytes: field("sum_received", "bytes")? as u64,
        bits_per_second: field("sum_received", "bits_per_second")?,
    })
}

// iperf3's JSON is read with two narrow extractors instead of a JSON dependency: the summaries
// `sum_sent` / `sum_received` are flat objects whose keys occur nowhere else in the document.

/// A number field of the flat object stored under key `object`.
fn json_number_in_object(json: &str, object: &str, key: &str) -> Option<f64> {
    let after_object_key = &json[json.find(&format!("\"{object}\""))?..];
    let body_start = after_object_key.find('{')? + 1;
    let body = &after_object_key[body_start..body_start + after_object_key[body_start..].find('}')?];
    let after_key = &body[body.find(&format!("\"{key}\""))? + key.len() + 2..];
    let value = after_key.trim_start().strip_prefix(':')?.trim_start();
    let end = value.find(|c: char| !(c.is_ascii_digit() || "+-.eE".contains(c))).unwrap_or(value.len());
    value[..end].parse().ok()
}

/// A top-level string field without escapes (iperf3's `"error"`).
fn json_string_field(json: &str, key: &str) -> Option<String> {
    let after_key = &json[json.find(&format!("\"{key}\""))? + key.len() + 2..];
    let value = after_key.trim_start().strip_prefix(':')?.trim_start().strip_prefix('"')?;
    Some(value[..value.find('"')?].to_owned())
}

/// `(rx_bytes, tx_bytes)` of interface `ifname` in `ns`; panics if it does not exist.
pub fn tun_counters(ns: &Netns, ifname: &str) -> (u64, u64) {
    let statistics = format!("/sys/class/net/{ifname}/statistics");
    // `ip netns exec` mounts the namespace's own /sys, so this reads the right interface.
    let text = ns.exec_ok(&["cat", &format!("{statistics}/rx_bytes"), &format!("{statistics}/tx_bytes")]);
    let counters: Vec<u64> =
        text.lines().map(|line| line.trim().parse().expect("sysfs byte counters are integers")).collect();
    match counters[..] {
        [rx, tx] => (rx, tx),
        _ => panic!("unexpected counters for {ifname} in {}: {text:?}", ns.name()),
    }
}

/// An `openvpn` client process; derefs to its `Proc` (log, kill, signal, ...).
pub struct OpenVpnClient {
    process: Proc,
}

impl OpenVpnClient {
    /// Starts `openvpn --cd <profile dir> --config <profile> --verb 4 <extra_args>` in `ns`
    /// (relative paths in the profile resolve against its directory). Logs to `<role>-openvpn.log`.
    pub fn start(ns: &Netns, profile_path: &Path, extra_args: &[&str]) -> OpenVpnClient {
        let profile_dir = profile_path.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let (profile_dir, profile) = (profile_dir.to_string_lossy(), profile_path.to_string_lossy());
        let mut args = vec!["openvpn", "--cd", &profile_dir, "--config", &profile, "--verb", "4"];
        args.extend_from_slice(extra_args);
        OpenVpnClient { process: ns.spawn(&args, "openvpn") }
    }

    /// Waits for "Initialization Sequence Completed". Fails on "... With Errors", when openvpn
    /// exits, or after `timeout`; errors include the log tail.
    pub fn wait_connected(&self, timeout: Duration) -> Result<(), String> {
        self.process.wait_for_log_with(timeout, &format!("{OPENVPN_CONNECTED_MARKER:?}"), |log| {
            for line in log.lines() {
                if line.contains(OPENVPN_CONNECTED_WITH_ERRORS) {
                    return Some(Err(format!("connected with errors: {line}")));
                }
                if line.contains(OPENVPN_CONNECTED_MARKER) {
                    return Some(Ok(()));
                }
            }
            None
        })
    }

    /// Waits for `pattern` (e.g. "AUTH_FAILED", "TLS Error") in the log, also after openvpn has
    /// exited. Fails if the tunnel comes up instead, or after `timeout`.
    pub fn wait_failed(&self, pattern: &str, timeout: Duration) -> Result<(), String> {
        self.process.wait_for_log_with(timeout, &format!("{pattern:?}"), |log| {
            if log.contains(pattern) {
                Some(Ok(()))
            } else if log.contains(OPENVPN_CONNECTED_MARKER) {
                Some(Err(format!("connected although {pattern:?} was expected")))
            } else {
                None
            }
        })
    }

    pub fn process(&self) -> &Proc {
        &self.process
    }
}

impl Deref for OpenVpnClient {
    type Target = Proc;

    fn deref(&self) -> &Proc {
        &self.process
    }
}
