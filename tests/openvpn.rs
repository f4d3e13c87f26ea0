//! End to end with the real OpenVPN 2.6 client: the gateway and its clients in network
//! namespaces this test creates, reaching a host in a "vnet" namespace behind the
//! gateway. Needs root (run through `tests/run`).

mod common;

use std::time::{Duration, Instant};

use common::*;

const CONNECT: Duration = Duration::from_secs(30);

fn connect(topo: &Topology, k: usize, profile: &std::path::Path, extra: &[&str]) -> OpenVpnClient {
    let client = OpenVpnClient::start(topo.client(k), profile, extra);
    if let Err(e) = client.wait_connected(CONNECT) {
        panic!("client {k} did not connect: {e}");
    }
    client
}

/// Ping and iperf3 both ways to the vnet host, and the gateway's TUN counted it.
fn check_traffic(topo: &Topology, k: usize) {
    let p = ping(topo.client(k), VNET_HOST_ADDR, 5, Duration::from_millis(200));
    assert!(p.all_received(), "ping through the tunnel: {}", p.output);
    let (rx0, tx0) = tun_counters(topo.gw(), "p2sgw0");
    let up_server = iperf3_server_port(topo.vnet(), VNET_HOST_ADDR, 5201);
    let up = iperf3_client_port(topo.client(k), VNET_HOST_ADDR, 5201, 2, false);
    let down_server = iperf3_server_port(topo.vnet(), VNET_HOST_ADDR, 5202);
    let down = iperf3_client_port(topo.client(k), VNET_HOST_ADDR, 5202, 2, true);
    drop((up_server, down_server));
    assert!(up.received_bytes > 1_000_000, "upload moved {} bytes", up.received_bytes);
    assert!(down.received_bytes > 1_000_000, "download moved {} bytes", down.received_bytes);
    let (rx1, tx1) = tun_counters(topo.gw(), "p2sgw0");
    // TUN rx = packets the gateway decrypted and wrote; tx = packets it read to encrypt.
    assert!(rx1 - rx0 >= up.received_bytes, "gateway TUN rx grew {} for {} uploaded", rx1 - rx0, up.received_bytes);
    assert!(
        tx1 - tx0 >= down.received_bytes,
        "gateway TUN tx grew {} for {} downloaded",
        tx1 - tx0,
        down.received_bytes
    );
    eprintln!("client {k}: up {:.0} Mbit/s, down {:.0} Mbit/s", up.bits_per_second / 1e6, down.bits_per_second / 1e6);
}

#[test]
fn udp_aes_256_gcm_reaches_the_vnet() {
    let topo = Topology::new(1);
    let gw = Gateway::start(&topo, GatewayOptions::default());
    gw.issue("alice");
    let client = connect(&topo, 0, &gw.profile("alice", "udp"), &["--data-ciphers", "AES-256-GCM"]);
    let log = client.log_text();
    assert!(log.contains("Data Channel: cipher 'AES-256-GCM'"), "cipher in client log");
    assert!(log.contains("tls-ekm"), "keys come from the TLS exporter");
    assert!(log.contains("dhcp-option DNS 10.50.0.53") && log.contains("dhcp-option DOMAIN corp.example"));
    check_traffic(&topo, 0);
    gw.wait_for_line(&["client connected", "user=alice", "transport=\"udp\""], Duration::from_secs(1)).unwrap();
}

#[test]
fn tcp_chacha20_poly1305_reaches_the_vnet() {
    let topo = Topology::new(1);
    let gw = Gateway::start(&topo, GatewayOptions::default());
    gw.issue("alice");
    let client = connect(&topo, 0, &gw.profile("alice", "tcp"), &["--data-ciphers", "CHACHA20-POLY1305"]);
    assert!(client.log_text().contains("Data Channel: cipher 'CHACHA20-POLY1305'"));
    check_traffic(&topo, 0);
    gw.wait_for_line(&["client connected", "transport=\"tcp\"", "CHACHA20-POLY1305"], Duration::from_secs(1)).unwrap();
}

#[test]
fn tls_1_2_and_aes_128_gcm_also_work() {
    let topo = Topology::new(1);
    let gw = Gateway::start(&topo, GatewayOptions::default());
    gw.issue("alice");
    let client =
        connect(&topo, 0, &gw.profile("alice", "udp"), &["--tls-version-max", "1.2", "--data-ciphers", "AES-128-GCM"]);
    let log = client.log_text();
    assert!(log.contains("TLSv1.2"), "TLS 1.2 negotiated");
    assert!(log.contains("Data Channel: cipher 'AES-128-GCM'"));
    let p = ping(topo.client(0), VNET_HOST_ADDR, 3, Duration::from_millis(200));
    assert!(p.all_received(), "{}", p.output);
}

#[test]
fn client_of_an_unknown_ca_is_refused() {
    let topo = Topology::new(1);
    let gw = Gateway::start(&topo, GatewayOptions::default());
    gw.issue("alice");
    // Mallory's certificate comes from another CA; the rest of the profile is genuine.
    let other = topo.temp_dir().join("other-pki");
    p2sgw(&["pki", "init", "--dir", path(&other), "--gateway", "elsewhere.example"]);
    p2sgw(&["pki", "issue", "--dir", path(&other), "--name", "mallory"]);
    let genuine = std::fs::read_to_string(gw.profile("alice", "udp")).unwrap();
    let cert = std::fs::read_to_string(other.join("clients/mallory.crt")).unwrap();
    let key = std::fs::read_to_string(other.join("clients/mallory.key")).unwrap();
    let forged = replace_block(&replace_block(&genuine, "cert", &cert), "key", &key);
    let profile = topo.temp_dir().join("mallory.ovpn");
    std::fs::write(&profile, forged).unwrap();
    let client = OpenVpnClient::start(topo.client(0), &profile, &[]);
    gw.wait_for_line(&["TLS handshake failed", "UnknownIssuer"], Duration::from_secs(20)).unwrap();
    assert!(!client.log_text().contains(OPENVPN_CONNECTED_MARKER));
}

fn replace_block(profile: &str, tag: &str, content: &str) -> String {
    let (open, close) = (format!("<{tag}>\n"), format!("</{tag}>"));
    let start = profile.find(&open).expect("block") + open.len();
    let end = profile.find(&close).expect("block end");
    format!("{}{}{}", &profile[..start], content, &profile[end..])
}

#[test]
fn revoked_client_is_refused_and_a_live_one_is_cut_within_two_seconds() {
    let topo = Topology::new(2);
    let gw = Gateway::start(&topo, GatewayOptions::default());
    gw.issue("alice");
    gw.issue("bob");
    let alice_profile = gw.profile("alice", "udp");
    let alice = connect(&topo, 0, &alice_profile, &[]);
    let bob = connect(&topo, 1, &gw.profile("bob", "udp"), &[]);

    let revoked_at = Instant::now();
    gw.revoke("alice");
    alice.wait_for_log("AUTH_FAILED,certificate revoked", Duration::from_secs(2)).expect("alice is cut at once");
    let cut_after = revoked_at.elapsed();
    assert!(cut_after < Duration::from_secs(2), "cut after {cut_after:?}");
    alice.wait_exit(Duration::from_secs(5)).expect("the client gives up after AUTH_FAILED");
    // Bob is untouched.
    let p = ping(topo.client(1), VNET_HOST_ADDR, 3, Duration::from_millis(200));
    assert!(p.all_received(), "bob keeps working: {}", p.output);
    drop(bob);

    // A fresh attempt with the revoked certificate fails in the TLS handshake.
    let _again = OpenVpnClient::start(topo.client(0), &alice_profile, &[]);
    gw.wait_for_line(&["TLS handshake failed", "Revoked"], Duration::from_secs(20)).unwrap();
    eprintln!("live session cut {cut_after:?} after `pki revoke`");
}

#[test]
fn twenty_clients_get_distinct_addresses_and_all_reach_the_vnet() {
    const N: usize = 20;
    let topo = Topology::new(N);
    let gw = Gateway::start(&topo, GatewayOptions::default());
    let profiles: Vec<_> = (0..N)
        .map(|k| {
            let name = format!("user{k}");
            gw.issue(&name);
            gw.profile(&name, if k % 2 == 0 { "udp" } else { "tcp" })
        })
        .collect();
    let clients: Vec<_> = (0..N).map(|k| OpenVpnClient::start(topo.client(k), &profiles[k], &[])).collect();
    for (k, c) in clients.iter().enumerate() {
        if let Err(e) = c.wait_connected(Duration::from_secs(60)) {
            panic!("client {k}: {e}");
        }
    }
    let mut addresses: Vec<String> =
        clients.iter().map(|c| pushed_address(&c.log_text()).expect("ifconfig pushed")).collect();
    for k in 0..N {
        let p = ping(topo.client(k), VNET_HOST_ADDR, 2, Duration::from_millis(200));
        assert!(p.all_received(), "client {k}: {}", p.output);
    }
    addresses.sort();
    addresses.dedup();
    assert_eq!(addresses.len(), N, "every client has its own address: {addresses:?}");
}

/// Pings the vnet host from client `k` for `secs` seconds while iperf3 sends a steady
/// 40 Mbit/s (below what the path carries, so that a lost ping means a lost packet,
/// not a congested queue); returns the ping result.
fn traffic_for(topo: &Topology, k: usize, secs: u32) -> PingResult {
    let count = (secs * 5).to_string();
    let pinger = topo.client(k).spawn(&["ping", "-c", &count, "-i", "0.2", VNET_HOST_ADDR], "ping");
    let _server = iperf3_server(topo.vnet(), VNET_HOST_ADDR);
    let load = iperf3_client_with(topo.client(k), VNET_HOST_ADDR, IPERF3_PORT, secs, false, &["--bitrate", "40M"]);
    let expected = 40e6 / 8.0 * f64::from(secs);
    assert!(
        load.received_bytes as f64 > 0.9 * expected,
        "iperf3 moved {} of {expected} bytes across renegotiations",
        load.received_bytes
    );
    pinger.wait_exit(Duration::from_secs(u64::from(secs) + 20)).expect("ping finishes");
    parse_ping_summary(&pinger.log_text())
}

#[test]
fn gateway_renegotiation_every_10_seconds_loses_no_connection() {
    let topo = Topology::new(1);
    let gw = Gateway::start(&topo, GatewayOptions { reneg_secs: 10, ..Default::default() });
    gw.issue("alice");
    let client = connect(&topo, 0, &gw.profile("alice", "udp"), &[]);
    let p = traffic_for(&topo, 0, 25);
    assert!(p.sent >= 120 && p.received + 1 >= p.sent, "ping across renegotiations: {}", p.output);
    let renegotiations = client.log_text().matches("Outgoing Data Channel: Cipher").count() - 1;
    assert!(renegotiations >= 2, "expected at least two renegotiations, saw {renegotiations}");
    assert!(client.is_running());
    eprintln!("{renegotiations} gateway-initiated renegotiations, ping loss {:.1}%", p.loss_pct);
}

#[test]
fn client_renegotiation_loses_no_connection() {
    let topo = Topology::new(1);
    let gw = Gateway::start(&topo, GatewayOptions::default());
    gw.issue("alice");
    let client = connect(&topo, 0, &gw.profile("alice", "tcp"), &["--reneg-sec", "8"]);
    let p = traffic_for(&topo, 0, 20);
    assert!(p.sent >= 95 && p.received + 1 >= p.sent, "ping across renegotiations: {}", p.output);
    let renegotiations = client.log_text().matches("Outgoing Data Channel: Cipher").count() - 1;
    assert!(renegotiations >= 2, "expected at least two renegotiations, saw {renegotiations}");
    eprintln!("{renegotiations} client-initiated renegotiations, ping loss {:.1}%", p.loss_pct);
}

#[test]
fn killed_clients_free_their_address_and_reconnects_keep_theirs() {
    // A /29 holds five clients.
    let topo = Topology::new(6);
    let gw = Gateway::start(&topo, GatewayOptions { pool: "172.16.201.0/29", keepalive: (1, 4), ..Default::default() });
    let mut clients = Vec::new();
    for k in 0..5 {
        gw.issue(&format!("user{k}"));
        clients.push(connect(&topo, k, &gw.profile(&format!("user{k}"), "udp"), &[]));
    }
    gw.issue("late");
    let late = gw.profile("late", "udp");
    let refused = OpenVpnClient::start(topo.client(5), &late, &[]);
    refused.wait_failed("AUTH_FAILED", CONNECT).expect("a full pool refuses with a reason");
    assert!(refused.log_text().contains("address pool is exhausted"));
    drop(refused);

    // The same certificate reconnecting replaces its session and keeps its address.
    let before = pushed_address(&clients[1].log_text()).unwrap();
    clients[1].signal(libc::SIGKILL);
    clients[1].wait_exit(Duration::from_secs(5)).unwrap();
    clients[1] = connect(&topo, 1, &gw.profile("user1", "udp"), &[]);
    assert_eq!(pushed_address(&clients[1].log_text()).unwrap(), before);
    gw.wait_for_line(&["reconnect replaces the previous session", "user=user1"], Duration::from_secs(5)).unwrap();

    // A client killed without a goodbye is dropped after the keepalive timeout, and
    // its address goes to the next client.
    let freed = pushed_address(&clients[0].log_text()).unwrap();
    clients[0].signal(libc::SIGKILL);
    gw.wait_for_line(&["client disconnected", "user=user0", "no packet from the client"], Duration::from_secs(15))
        .unwrap();
    let late_client = connect(&topo, 5, &late, &[]);
    assert_eq!(pushed_address(&late_client.log_text()).unwrap(), freed);
    let p = ping(topo.client(5), VNET_HOST_ADDR, 2, Duration::from_millis(200));
    assert!(p.all_received(), "{}", p.output);
}

#[test]
fn embedded_defaults_generate_a_pki_and_serve() {
    let topo = Topology::new(1);
    let state = topo.temp_dir().join("state");
    let serve = topo.gw().spawn(&[P2SGW, "serve", "--state-dir", path(&state)], "p2sgw");
    serve.wait_for_log("gateway up", Duration::from_secs(20)).expect("starts on defaults");
    let log = serve.log_text();
    assert!(log.contains("generated a PKI"), "{log}");
    assert!(log.contains(&format!("p2sgw profile --state-dir {} --name alice", state.display())), "{log}");
    assert!(log.contains("172.16.201.0/24") && log.contains("0.0.0.0:1194") && log.contains("0.0.0.0:443"), "{log}");

    p2sgw(&["pki", "issue", "--dir", path(&state.join("pki")), "--name", "alice"]);
    let profile = topo.temp_dir().join("alice.ovpn");
    p2sgw(&["profile", "--state-dir", path(&state), "--name", "alice", "--out", path(&profile), "--transport", "udp"]);
    // The default gateway name is this host's name, which the client namespace cannot
    // resolve: point the profile at the gateway's address in this topology.
    let text = std::fs::read_to_string(&profile).unwrap();
    let remote = text.lines().find(|l| l.starts_with("remote ")).expect("remote line").to_string();
    std::fs::write(&profile, text.replace(&remote, &format!("remote {GATEWAY_NAME} 1194"))).unwrap();
    let _client = connect(&topo, 0, &profile, &[]);
    let p = ping(topo.client(0), "172.16.201.1", 3, Duration::from_millis(200));
    assert!(p.all_received(), "the gateway's tunnel address answers: {}", p.output);
}

/// Sends junk from client 1's namespace: random datagrams (some posing as data packets
/// or resets) to UDP 1194 and random bytes on TCP 443 connections.
const JUNK_SENDER: &str = r#"
import os, random, socket
random.seed(7)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(3000):
    first = random.choice([0x48, 0x30, 0x38, 0x20, 0x28, random.randrange(256)])
    udp.sendto(bytes([first]) + os.urandom(random.randrange(0, 1400)), ("192.168.100.1", 1194))
for i in range(30):
    t = socket.create_connection(("192.168.100.1", 443), timeout=5)
    try:
        t.sendall(os.urandom(random.randrange(1, 5000)))
        t.sendall(bytes([0, 14, 0x38]) + os.urandom(13))
        # Well-framed but longer than any OpenVPN packet (once crashed a worker).
        t.sendall(bytes([0x09, 0x2d, 0x20]) + os.urandom(2348))
    except OSError:
        pass
    t.close()
print("junk sent")
"#;

#[test]
fn junk_is_dropped_and_counted_and_harms_no_one() {
    let topo = Topology::new(2);
    let gw = Gateway::start(&topo, GatewayOptions::default());
    gw.issue("alice");
    let _alice = connect(&topo, 0, &gw.profile("alice", "udp"), &[]);
    let out = topo.client(1).exec_ok(&["python3", "-c", JUNK_SENDER]);
    assert!(out.contains("junk sent"));
    let p = ping(topo.client(0), VNET_HOST_ADDR, 5, Duration::from_millis(200));
    assert!(p.all_received(), "alice is unaffected: {}", p.output);
    gw.process.signal(libc::SIGUSR2);
    gw.wait_for_line(&["statistics", "sessions=1"], Duration::from_secs(5)).unwrap();
    let stats = gw.log().lines().rev().find(|l| l.contains("statistics")).unwrap().to_string();
    for reason in ["control_refused=", "unknown_session="] {
        assert!(stats.contains(reason), "{reason} counted: {stats}");
    }
    assert!(gw.process.is_running(), "the gateway survives");
    // A newcomer still gets in, and no junk became a session.
    gw.issue("bob");
    let _bob = connect(&topo, 1, &gw.profile("bob", "tcp"), &[]);
    gw.process.signal(libc::SIGUSR2);
    gw.wait_for_line(&["statistics", "sessions=2"], Duration::from_secs(5)).unwrap();
}

#[test]
fn a_client_restarting_from_the_same_port_gets_straight_back_in() {
    let topo = Topology::new(1);
    // A keepalive timeout far longer than the test: only the new handshake can free the way.
    let gw = Gateway::start(&topo, GatewayOptions { keepalive: (10, 120), ..Default::default() });
    gw.issue("alice");
    // As behind a NAT that keeps the mapping: the client's source port does not change.
    let profile = topo.temp_dir().join("alice-fixed-port.ovpn");
    let text = std::fs::read_to_string(gw.profile("alice", "udp")).unwrap();
    std::fs::write(&profile, text.replace("nobind\n", "")).unwrap();
    let same_port = ["--lport", "40123"];
    let first = connect(&topo, 0, &profile, &same_port);
    let address = pushed_address(&first.log_text()).unwrap();
    first.signal(libc::SIGKILL);
    first.wait_exit(Duration::from_secs(5)).unwrap();
    let started = Instant::now();
    let second = OpenVpnClient::start(topo.client(0), &profile, &same_port);
    second.wait_connected(Duration::from_secs(8)).expect("reconnects without waiting for the old session to time out");
    eprintln!("reconnected from the same port in {:?}", started.elapsed());
    assert_eq!(pushed_address(&second.log_text()).unwrap(), address);
    let p = ping(topo.client(0), VNET_HOST_ADDR, 3, Duration::from_millis(200));
    assert!(p.all_received(), "{}", p.output);
}

#[test]
fn after_stopping_the_gateway_its_ports_are_free_at_once() {
    let topo = Topology::new(1);
    let gw = Gateway::start(&topo, GatewayOptions::default());
    gw.issue("alice");
    let client = connect(&topo, 0, &gw.profile("alice", "udp"), &[]);
    gw.process.signal(libc::SIGTERM);
    let status = gw.process.wait_exit(Duration::from_secs(10)).expect("stops on SIGTERM");
    assert!(status.success(), "clean exit: {status:?}");
    let sockets = topo.gw().exec_ok(&["ss", "-Hantu"]);
    assert!(
        !sockets.lines().any(|l| l.contains(":1194 ") || (l.contains(":443 ") && l.contains("LISTEN"))),
        "sockets outlive the gateway:\n{sockets}"
    );
    // Clients were told to reconnect rather than left to time out.
    client
        .wait_for_log("Connection reset command was pushed by server", Duration::from_secs(5))
        .expect("told to restart");
}

/// A client behind a NAT whose public address changes mid-session (as from Wi-Fi to LTE)
/// keeps its session on a two-worker gateway: the first authentic data packet from the
/// new address moves the session there (OpenVPN's float), pings keep flowing, and the
/// steering by peer-id brought every data packet to the session's worker. A renegotiation
/// afterwards works too, though its control packets from the new address may reach the
/// other worker (which hands them over).
#[test]
fn a_client_whose_nat_address_changes_keeps_its_session() {
    let topo = Topology::new(1);
    let lan = topo.behind_nat(0);
    let gw = Gateway::start(&topo, GatewayOptions { extra: "[dataplane]\nworkers = 2\n".into(), ..Default::default() });
    gw.issue("alice");
    let client = OpenVpnClient::start(&lan, &gw.profile("alice", "udp"), &["--reneg-sec", "25"]);
    client.wait_connected(CONNECT).unwrap_or_else(|e| panic!("{e}\n{}", gw.log()));
    let connected = Instant::now();
    let before = session_of(&gw.sessions(), "alice").cloned().expect("alice's session");
    let home = topo.client_addr_for(0);
    assert!(before["public_address"].as_str().unwrap().starts_with(&format!("{home}:")), "{before}");

    let pinger = lan.spawn(&["ping", "-c", "40", "-i", "0.2", VNET_HOST_ADDR], "ping");
    std::thread::sleep(Duration::from_secs(2));
    let roamed = "192.168.100.3";
    topo.renumber_nat(0, roamed);
    pinger.wait_exit(Duration::from_secs(30)).expect("ping finishes");
    let across = parse_ping_summary(&pinger.log_text());
    assert!(across.sent == 40 && across.received + 2 >= across.sent, "pings across the move: {}", across.output);

    let after = session_of(&gw.sessions(), "alice").cloned().expect("alice's session after the move");
    assert_eq!((&after["id"], &after["virtual_address"]), (&before["id"], &before["virtual_address"]), "{after}");
    assert!(after["public_address"].as_str().unwrap().starts_with(&format!("{roamed}:")), "{after}");
    let moved = format!("new_peer={roamed}:");
    gw.wait_for_line(&["client moved to a new address", "user=alice", &moved], Duration::from_secs(1)).unwrap();
    assert_eq!(gw.log().matches("client moved to a new address").count(), 1, "logged once");
    let metrics = gw.metrics();
    assert_eq!(metric_sum(&metrics, "p2sgw_worker_openvpn_floats_total"), 1, "{metrics}");
    assert_eq!(metric_sum(&metrics, "p2sgw_worker_datagram_handoffs_total"), 0, "data steered to its worker");

    // The client renegotiates 25 s after connecting, from the new address.
    let renegotiated = || client.log_text().matches("Outgoing Data Channel: Cipher").count() >= 2;
    let deadline = Duration::from_secs(25 + 20).saturating_sub(connected.elapsed());
    assert!(wait_until(deadline, Duration::from_millis(200), renegotiated), "{}", client.log_text());
    let p = ping(&lan, VNET_HOST_ADDR, 5, Duration::from_millis(200));
    assert!(p.all_received(), "after the renegotiation: {}", p.output);
    let log = client.log_text();
    assert_eq!(log.matches(OPENVPN_CONNECTED_MARKER).count(), 1, "never reconnected:\n{log}");
    assert_eq!(session_of(&gw.sessions(), "alice").map(|s| s["id"].clone()), Some(before["id"].clone()));
    let handed = metric_sum(&gw.metrics(), "p2sgw_worker_datagram_handoffs_total");
    eprintln!("ping loss {:.1}% across the move; {handed} control packets handed over", across.loss_pct);
}
