//! End to end: SSTP with the Windows-like test client (`examples/sstp_client.rs`: rustls,
//! the in-tree SSTP and PPP client, a TUN device) in a client namespace, MS-CHAPv2
//! checked by a real FreeRADIUS 3.2 or by the local NT-hash list, EAP-TLS with
//! certificates from the gateway's PKI (refused from another CA or once revoked), and
//! OpenVPN over TCP on the same port at the same time. Needs root (run through
//! `tests/run`).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

const CONNECT: Duration = Duration::from_secs(30);

/// The test client, next to the gateway binary. `cargo test` builds the examples only
/// when no test target is named (`--test sstp` skips them), so it is built here once,
/// with the same profile (a no-op when it is up to date).
fn sstp_client_path() -> PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    let bin_dir = std::path::Path::new(P2SGW).parent().expect("the binary's directory");
    BUILT.call_once(|| {
        let mut cargo = std::process::Command::new(env!("CARGO"));
        cargo.args(["build", "--example", "sstp_client", "--manifest-path"]);
        cargo.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"));
        if bin_dir.ends_with("release") {
            cargo.arg("--release");
        }
        let out = run_with_timeout(&mut cargo, Duration::from_secs(600)).expect("cargo build --example sstp_client");
        assert!(out.status.success(), "cannot build the SSTP test client:\n{}", String::from_utf8_lossy(&out.stderr));
    });
    let client = bin_dir.join("examples/sstp_client");
    assert!(client.exists(), "{} is missing", client.display());
    client
}

fn radius_config(extra: &str) -> String {
    format!(
        "[auth]\nrequire = [\"certificate\", \"radius\"]\n\n\
         [radius]\nservers = [\"10.50.0.2:1812\"]\nsecrets = [{DEFAULT_RADIUS_SECRET:?}]\ntimeout_secs = 2\ntries = 2\n\n\
         [sstp]\nenabled = true\n{extra}\n"
    )
}

/// Starts the SSTP client in client namespace `k`.
fn start_sstp(topo: &Topology, gw: &Gateway, k: usize, user: &str, password: &str, extra: &[&str]) -> Proc {
    start_sstp_with_env(topo, gw, k, user, password, extra, &[])
}

/// Like [`start_sstp`], with `NAME=value` environment settings for the client.
fn start_sstp_with_env(
    topo: &Topology,
    gw: &Gateway,
    k: usize,
    user: &str,
    password: &str,
    extra: &[&str],
    env: &[&str],
) -> Proc {
    start_sstp_client(topo, gw, k, &["--user", user, "--password", password], extra, env)
}

/// Starts the SSTP client in client namespace `k` with sign-in arguments `sign_in`
/// (`--user`/`--password` or `--cert`/`--key`), `extra` arguments and `NAME=value`
/// environment settings.
fn start_sstp_client(topo: &Topology, gw: &Gateway, k: usize, sign_in: &[&str], extra: &[&str], env: &[&str]) -> Proc {
    let client = sstp_client_path();
    let server = format!("{}:443", topo.gateway_addr_for(k));
    let ca = gw.pki_dir().join("ca.crt");
    let mut args = vec!["env"];
    args.extend_from_slice(env);
    args.extend([path(&client), "--server", &server, "--server-name", GATEWAY_NAME, "--ca", path(&ca)]);
    args.extend_from_slice(sign_in);
    args.extend(["--route", VNET_SUBNET]);
    args.extend_from_slice(extra);
    topo.client(k).spawn(&args, "sstp-client")
}

fn connect_sstp(topo: &Topology, gw: &Gateway, k: usize, user: &str, password: &str) -> Proc {
    let client = start_sstp(topo, gw, k, user, password, &[]);
    if let Err(e) = client.wait_for_log("SSTP connected", CONNECT) {
        panic!("SSTP client {k} did not connect: {e}\ngateway log:\n{}", gw.process.log_tail(40));
    }
    client
}

/// Ping and iperf3 both ways to the vnet host; returns (up, down) in Mbit/s.
fn check_traffic(topo: &Topology, k: usize, port: u16) -> (f64, f64) {
    let p = ping(topo.client(k), VNET_HOST_ADDR, 5, Duration::from_millis(200));
    assert!(p.all_received(), "client {k}: ping through the tunnel: {}", p.output);
    let up_server = iperf3_server_port(topo.vnet(), VNET_HOST_ADDR, port);
    let up = iperf3_client_port(topo.client(k), VNET_HOST_ADDR, port, 2, false);
    let down_server = iperf3_server_port(topo.vnet(), VNET_HOST_ADDR, port + 1);
    let down = iperf3_client_port(topo.client(k), VNET_HOST_ADDR, port + 1, 2, true);
    drop((up_server, down_server));
    assert!(up.received_bytes > 1_000_000, "client {k}: upload moved {} bytes", up.received_bytes);
    assert!(down.received_bytes > 1_000_000, "client {k}: download moved {} bytes", down.received_bytes);
    (up.bits_per_second / 1e6, down.bits_per_second / 1e6)
}

/// A real FreeRADIUS in the vnet knowing carol, and an SSTP gateway asking it.
fn carol_behind_freeradius(topo: &Topology) -> (FreeRadius, Gateway) {
    let radius = FreeRadius::start(
        topo.vnet(),
        RadiusOptions { users: vec![RadiusUser::new("carol", "s3cret-Pass")], ..Default::default() },
    );
    let gw = Gateway::start(topo, GatewayOptions { extra: radius_config(""), ..Default::default() });
    (radius, gw)
}

#[test]
fn ms_chap_v2_through_freeradius_reaches_the_vnet() {
    let topo = Topology::new(1);
    let (radius, gw) = carol_behind_freeradius(&topo);
    let client = connect_sstp(&topo, &gw, 0, "carol", "s3cret-Pass");
    let (up, down) = check_traffic(&topo, 0, 5201);
    eprintln!("SSTP: up {up:.0} Mbit/s, down {down:.0} Mbit/s");

    let list = gw.sessions();
    let carol = session_of(&list, "carol").unwrap_or_else(|| panic!("carol listed: {list:?}"));
    assert_eq!(carol["protocol"], "sstp");
    assert_eq!(carol["auth"], "radius");
    assert!(carol["virtual_address"].as_str().is_some_and(|a| a.starts_with("172.16.201.")), "{carol}");
    assert!(carol["bytes_in"].as_u64().unwrap_or(0) > 1_000_000, "traffic counted: {carol}");
    gw.wait_for_line(&["client connected", "user=carol", "transport=\"sstp\""], Duration::from_secs(1)).unwrap();
    let start = radius.wait_for_accounting(|r| r.status_type == "Start", Duration::from_secs(10)).unwrap();
    assert_eq!(start.user_name.as_deref(), Some("carol"));

    client.kill();
    let stop = radius.wait_for_accounting(|r| r.status_type == "Stop", Duration::from_secs(10)).unwrap();
    assert_eq!(stop.user_name.as_deref(), Some("carol"));
    assert!(wait_until(Duration::from_secs(5), Duration::from_millis(50), || gw.sessions().is_empty()));
}

#[test]
fn wrong_password_is_refused() {
    let topo = Topology::new(1);
    let (radius, gw) = carol_behind_freeradius(&topo);
    let client = start_sstp(&topo, &gw, 0, "carol", "wrong", &["--expect-fail"]);
    let status = client.wait_exit(CONNECT).expect("the client gives up");
    assert!(status.success(), "refused as expected: {}", client.log_tail(10));
    assert!(client.log_text().contains("SSTP refused"), "{}", client.log_tail(10));
    gw.wait_for_line(&["authentication refused", "transport=\"sstp\"", "carol"], Duration::from_secs(5)).unwrap();
    assert!(gw.sessions().is_empty());
    drop(radius);
}

#[test]
fn openvpn_tcp_and_sstp_share_port_443() {
    let topo = Topology::new(2);
    let (radius, gw) = carol_behind_freeradius(&topo);
    gw.issue("alice");
    let profile = gw.profile("alice", "tcp");
    let openvpn = OpenVpnClient::start(topo.client(0), &profile, &[]);
    openvpn.wait_connected(CONNECT).expect("OpenVPN over TCP connects");
    let sstp = connect_sstp(&topo, &gw, 1, "carol", "s3cret-Pass");

    let (ovpn_up, ovpn_down) = check_traffic(&topo, 0, 5201);
    let (sstp_up, sstp_down) = check_traffic(&topo, 1, 5203);
    eprintln!(
        "throughput through p2sgw, same run: OpenVPN-over-TCP up {ovpn_up:.0} / down {ovpn_down:.0} Mbit/s; \
         SSTP up {sstp_up:.0} / down {sstp_down:.0} Mbit/s"
    );
    let list = gw.sessions();
    assert_eq!(session_of(&list, "alice").map(|s| s["protocol"].clone()), Some("openvpn-tcp".into()));
    assert_eq!(session_of(&list, "carol").map(|s| s["protocol"].clone()), Some("sstp".into()));
    drop((sstp, openvpn, radius));
}

/// A gateway whose only password user is dave ("Passw0rd!") in the local NT-hash list.
fn gateway_with_local_user(topo: &Topology) -> Gateway {
    let users = topo.temp_dir().join("sstp-users");
    // NT hash of "Passw0rd!" (MD4 of its UTF-16LE), as `user:NTHASHHEX`.
    let hash: String =
        p2sgw::crypto::mschapv2::nt_password_hash("Passw0rd!").iter().map(|b| format!("{b:02X}")).collect();
    std::fs::write(&users, format!("# local SSTP users\ndave:{hash}\n")).unwrap();
    let extra = format!(
        "[auth]\nrequire = [\"certificate\", \"radius\"]\n\n[sstp]\nenabled = true\nlocal_users_file = \"{}\"\n",
        users.display()
    );
    Gateway::start(topo, GatewayOptions { extra, ..Default::default() })
}

#[test]
fn local_nt_hash_users_without_radius() {
    let topo = Topology::new(1);
    let gw = gateway_with_local_user(&topo);
    let client = connect_sstp(&topo, &gw, 0, "dave", "Passw0rd!");
    let p = ping(topo.client(0), VNET_HOST_ADDR, 3, Duration::from_millis(200));
    assert!(p.all_received(), "ping through the tunnel: {}", p.output);
    let list = gw.sessions();
    let dave = session_of(&list, "dave").unwrap_or_else(|| panic!("dave listed: {list:?}"));
    assert_eq!(dave["protocol"], "sstp");
    assert_eq!(dave["auth"], "local");
    drop(client);

    let refused = start_sstp(&topo, &gw, 0, "dave", "wrong", &["--expect-fail"]);
    assert!(refused.wait_exit(CONNECT).expect("the client gives up").success(), "{}", refused.log_tail(10));
    let stranger = start_sstp(&topo, &gw, 0, "erin", "Passw0rd!", &["--expect-fail"]);
    assert!(stranger.wait_exit(CONNECT).expect("the client gives up").success(), "{}", stranger.log_tail(10));
}

#[test]
fn disconnect_cuts_the_sstp_session() {
    let topo = Topology::new(1);
    let (radius, gw) = carol_behind_freeradius(&topo);
    let client = connect_sstp(&topo, &gw, 0, "carol", "s3cret-Pass");
    let list = gw.sessions();
    let id = session_of(&list, "carol").expect("carol listed")["id"].to_string();
    let out = p2sgw(&["disconnect", &id, "--config", path(&gw.config_path)]);
    assert!(out.contains("disconnected"), "{out}");
    let status = client.wait_exit(Duration::from_secs(10)).expect("the client is cut");
    assert_eq!(status.code(), Some(2), "ended by the gateway: {}", client.log_tail(10));
    assert!(client.log_text().contains("SSTP disconnected"), "{}", client.log_tail(10));
    assert!(wait_until(Duration::from_secs(5), Duration::from_millis(50), || gw.sessions().is_empty()));
    gw.wait_for_line(&["client disconnected", "user=carol"], Duration::from_secs(5)).unwrap();
    drop(radius);
}

/// Captures a whole session of the client `start` launches with the given
/// `SSLKEYLOGFILE=` setting (as `user`, cut by `p2sgw disconnect` after a few pings);
/// returns how many packets tshark shows for a display filter, with the TLS keys.
fn capture_session(
    topo: &Topology,
    gw: &Gateway,
    user: &str,
    start: impl FnOnce(&str) -> Proc,
) -> impl Fn(&str) -> usize {
    let pcap = topo.temp_dir().join(format!("sstp-{user}.pcapng"));
    let keys = topo.temp_dir().join(format!("keys-{user}.log"));
    let capture =
        topo.client(0).spawn(&["dumpcap", "-i", CLIENT_IFNAME, "-f", "tcp port 443", "-w", path(&pcap)], "dumpcap");
    capture.wait_for_log("Capturing on", Duration::from_secs(10)).expect("dumpcap starts");
    let client = start(&format!("SSLKEYLOGFILE={}", keys.display()));
    client.wait_for_log("SSTP connected", CONNECT).expect("connects");
    let p = ping(topo.client(0), VNET_HOST_ADDR, 3, Duration::from_millis(200));
    assert!(p.all_received(), "ping through the tunnel: {}", p.output);
    let id = session_of(&gw.sessions(), user).unwrap_or_else(|| panic!("{user} listed"))["id"].to_string();
    p2sgw(&["disconnect", &id, "--config", path(&gw.config_path)]);
    client.wait_exit(Duration::from_secs(10)).expect("the client is cut");
    std::thread::sleep(Duration::from_millis(500));
    capture.kill();

    let keylog_option = format!("tls.keylog_file:{}", keys.display());
    move |filter: &str| -> usize {
        let out = std::process::Command::new("tshark")
            .args(["-r", path(&pcap), "-o", &keylog_option, "-Y", filter])
            .output()
            .expect("run tshark");
        assert!(out.status.success(), "tshark -Y {filter}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().count()
    }
}

/// What every SSTP session shows in tshark, with no malformed packet and no expert error.
fn assert_decodes(tshark: impl Fn(&str) -> usize, method: &[(&str, &str)]) {
    for &(filter, what) in [
        ("http.request.method == \"SSTP_DUPLEX_POST\"", "the HTTP request"),
        ("sstp.messagetype == 0x0001", "CALL_CONNECT_REQUEST"),
        ("sstp.messagetype == 0x0004", "CALL_CONNECTED"),
        ("lcp", "LCP"),
        ("ipcp", "IPCP"),
        ("icmp && ip.src == 172.16.201.2", "the tunnelled pings"),
        ("sstp.messagetype == 0x0006", "CALL_DISCONNECT"),
    ]
    .iter()
    .chain(method)
    {
        assert!(tshark(filter) > 0, "tshark finds no {what} ({filter})");
    }
    assert_eq!(tshark("_ws.malformed"), 0, "malformed packets");
    assert_eq!(tshark("_ws.expert.severity == error"), 0, "expert errors");
}

/// tshark over a capture of a whole session (TLS keys from the client's key log):
/// `tshark -r sstp.pcapng -o tls.keylog_file:keys.log` decodes SSTP, LCP, CHAP, IPCP and
/// the tunnelled pings, with no malformed packet and no expert error.
#[test]
fn capture_decodes_in_tshark() {
    let topo = Topology::new(1);
    let gw = gateway_with_local_user(&topo);
    let tshark = capture_session(&topo, &gw, "dave", |keylog| {
        start_sstp_with_env(&topo, &gw, 0, "dave", "Passw0rd!", &[], &[keylog])
    });
    assert_decodes(tshark, &[("chap", "MS-CHAPv2")]);
}

/// The same for EAP-TLS: tshark follows the EAP-TLS fragments (L and M flags, the
/// acknowledgements) and finds the inner TLS handshake in them.
#[test]
fn eap_tls_capture_decodes_in_tshark() {
    let topo = Topology::new(1);
    let gw = gateway_with_local_user(&topo);
    gw.issue("heidi");
    let (cert, key) = issued(&gw, "heidi");
    let tshark =
        capture_session(&topo, &gw, "heidi", |keylog| start_sstp_eap_tls(&topo, &gw, 0, &cert, &key, &[], &[keylog]));
    assert_decodes(
        tshark,
        &[
            ("eap.type == 13", "EAP-TLS"),
            ("eap.tls.flags.start == 1", "the EAP-TLS Start"),
            ("eap.tls.flags.more_fragments == 1", "a fragmented EAP-TLS message"),
            ("eap.tls.fragments", "EAP-TLS fragments put back together"),
            ("eap.code == 3", "EAP-Success"),
            ("tls.handshake.type == 1 && eap", "the inner ClientHello"),
        ],
    );
}

/// Starts the SSTP client in client namespace `k`, signing in with EAP-TLS, with
/// `NAME=value` environment settings.
fn start_sstp_eap_tls(
    topo: &Topology,
    gw: &Gateway,
    k: usize,
    cert: &Path,
    key: &Path,
    extra: &[&str],
    env: &[&str],
) -> Proc {
    start_sstp_client(topo, gw, k, &["--cert", path(cert), "--key", path(key)], extra, env)
}

/// The certificate and key files `gw.issue(name)` wrote.
fn issued(gw: &Gateway, name: &str) -> (PathBuf, PathBuf) {
    let clients = gw.pki_dir().join("clients");
    (clients.join(format!("{name}.crt")), clients.join(format!("{name}.key")))
}

fn connect_eap_tls(topo: &Topology, gw: &Gateway, k: usize, name: &str) -> Proc {
    let (cert, key) = issued(gw, name);
    let client = start_sstp_eap_tls(topo, gw, k, &cert, &key, &[], &[]);
    if let Err(e) = client.wait_for_log("SSTP connected", CONNECT) {
        panic!(
            "EAP-TLS client {name} did not connect: {e}\nclient log:\n{}\ngateway log:\n{}",
            client.log_tail(20),
            gw.process.log_tail(40)
        );
    }
    client
}

/// Runs a client that must be refused; returns its output.
fn refused_eap_tls(topo: &Topology, gw: &Gateway, cert: &Path, key: &Path) -> String {
    let client = start_sstp_eap_tls(topo, gw, 0, cert, key, &["--expect-fail"], &[]);
    let status = client.wait_exit(CONNECT).expect("the client gives up");
    assert!(status.success(), "refused as expected: {}", client.log_tail(10));
    let log = client.log_text();
    assert!(log.contains("SSTP refused"), "{log}");
    assert!(gw.sessions().is_empty(), "no session: {:?}", gw.sessions());
    log
}

#[test]
fn eap_tls_certificate_reaches_the_vnet() {
    let topo = Topology::new(1);
    let gw = gateway_with_local_user(&topo);
    gw.issue("erin");
    let client = connect_eap_tls(&topo, &gw, 0, "erin");
    let (up, down) = check_traffic(&topo, 0, 5201);
    eprintln!("SSTP with EAP-TLS: up {up:.0} Mbit/s, down {down:.0} Mbit/s");

    let list = gw.sessions();
    let erin = session_of(&list, "erin").unwrap_or_else(|| panic!("erin listed: {list:?}"));
    assert_eq!(erin["protocol"], "sstp");
    assert_eq!(erin["auth"], "certificate");
    assert!(erin["virtual_address"].as_str().is_some_and(|a| a.starts_with("172.16.201.")), "{erin}");
    gw.wait_for_line(
        &["client connected", "user=erin", "method=\"certificate\"", "transport=\"sstp\""],
        Duration::from_secs(1),
    )
    .unwrap();
    client.kill();
    assert!(wait_until(Duration::from_secs(5), Duration::from_millis(50), || gw.sessions().is_empty()));
}

#[test]
fn eap_tls_certificate_of_an_unknown_ca_is_refused() {
    let topo = Topology::new(1);
    let gw = gateway_with_local_user(&topo);
    let other = topo.temp_dir().join("other-pki");
    p2sgw(&["pki", "init", "--dir", path(&other), "--gateway", "other.example.net"]);
    p2sgw(&["pki", "issue", "--dir", path(&other), "--name", "mallory"]);
    let clients = other.join("clients");
    let log = refused_eap_tls(&topo, &gw, &clients.join("mallory.crt"), &clients.join("mallory.key"));
    assert!(log.contains("EAP-Failure"), "{log}");
    gw.wait_for_line(&["EAP-TLS sign-in refused", "UnknownIssuer"], Duration::from_secs(5)).unwrap();
}

#[test]
fn eap_tls_revoked_certificate_is_refused() {
    let topo = Topology::new(1);
    let gw = gateway_with_local_user(&topo);
    gw.issue("frank");
    gw.revoke("frank");
    // The gateway picks up the revocation within its trust check interval.
    std::thread::sleep(Duration::from_secs(2));
    let (cert, key) = issued(&gw, "frank");
    refused_eap_tls(&topo, &gw, &cert, &key);
    gw.wait_for_line(&["EAP-TLS sign-in refused", "Revoked"], Duration::from_secs(5)).unwrap();
}

#[test]
fn eap_tls_live_session_is_cut_when_its_certificate_is_revoked() {
    let topo = Topology::new(1);
    let gw = gateway_with_local_user(&topo);
    gw.issue("grace");
    let client = connect_eap_tls(&topo, &gw, 0, "grace");
    let p = ping(topo.client(0), VNET_HOST_ADDR, 3, Duration::from_millis(200));
    assert!(p.all_received(), "ping through the tunnel: {}", p.output);
    gw.revoke("grace");
    let status = client.wait_exit(Duration::from_secs(10)).expect("the client is cut");
    assert_eq!(status.code(), Some(2), "ended by the gateway: {}", client.log_tail(10));
    assert!(client.log_text().contains("SSTP disconnected"), "{}", client.log_tail(10));
    gw.wait_for_line(&["certificate revoked: cutting its session", "grace"], Duration::from_secs(5)).unwrap();
    assert!(wait_until(Duration::from_secs(5), Duration::from_millis(50), || gw.sessions().is_empty()));
}
