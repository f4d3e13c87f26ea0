//! `p2sgw loadgen` end to end: many OpenVPN-protocol clients from one client namespace,
//! through p2sgw or a real OpenVPN 2.6 server in the gateway namespace, to
//! `p2sgw loadgen-sink` on the vnet host. Needs root (run through `tests/run`).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

const SINK_PORT: u16 = 9000;

fn sink_addr() -> String {
    format!("{VNET_HOST_ADDR}:{SINK_PORT}")
}

fn start_sink(topo: &Topology) -> Proc {
    let sink = topo.vnet().spawn(&[P2SGW, "loadgen-sink", "--listen", &sink_addr()], "sink");
    sink.wait_for_log("echoing UDP", Duration::from_secs(10)).expect("the sink starts");
    sink
}

/// The JSON report: the one line of the load generator's output that is an object.
fn report(output: &str) -> serde_json::Value {
    let line = output.lines().find(|l| l.starts_with('{')).unwrap_or_else(|| panic!("no JSON report in:\n{output}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("bad JSON report {line:?}: {e}"))
}

fn number(report: &serde_json::Value, key: &str) -> f64 {
    report[key].as_f64().unwrap_or_else(|| panic!("{key} missing from {report}"))
}

/// p2sgw keeps one session per certificate, so every client gets its own.
fn profiles_for(gw: &Gateway, topo: &Topology, n: usize) -> PathBuf {
    let dir = topo.temp_dir().join("profiles");
    std::fs::create_dir_all(&dir).unwrap();
    for k in 0..n {
        let name = format!("lg{k}");
        gw.issue(&name);
        let written = gw.profile(&name, "udp");
        std::fs::rename(&written, dir.join(format!("{name}.ovpn"))).unwrap();
    }
    dir
}

#[test]
fn twenty_clients_through_p2sgw_echo_and_hold_their_sessions() {
    const N: usize = 20;
    let topo = Topology::new(1);
    let gw = Gateway::start(&topo, GatewayOptions::default());
    let profiles = profiles_for(&gw, &topo, N);
    let _sink = start_sink(&topo);

    let loadgen = topo.client(0).spawn(
        &[
            P2SGW,
            "loadgen",
            "--profile",
            path(&profiles),
            "--clients",
            &N.to_string(),
            "--sink",
            &sink_addr(),
            "--duration",
            "2",
            "--rate",
            "2000",
            "--hold",
            "4",
            "--json",
        ],
        "loadgen",
    );
    // The sessions exist from the handshakes on and last through traffic and hold.
    let all_there = wait_until(Duration::from_secs(10), Duration::from_millis(200), || gw.sessions().len() == N);
    assert!(all_there, "p2sgw lists {} sessions, expected {N}; loadgen:\n{}", gw.sessions().len(), loadgen.log_text());
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(gw.sessions().len(), N, "sessions stay up during traffic and --hold");

    let status = loadgen.wait_exit(Duration::from_secs(30)).unwrap();
    let output = loadgen.log_text();
    assert!(status.success(), "loadgen failed:\n{output}");
    let r = report(&output);
    assert_eq!(r["clients"], N);
    assert_eq!(r["connected"], N, "{r}");
    assert_eq!(r["failed"], 0);
    assert!(number(&r, "handshakes_per_sec") > 0.0);
    assert!(number(&r, "sent_packets") >= 3000.0, "2000 pps for 2 s: {r}");
    assert!(number(&r, "received_packets") > 0.0, "{r}");
    assert!(number(&r, "loss_ratio") < 0.02, "{r}");
    assert!(number(&r, "rtt_p50_us") > 0.0 && number(&r, "rtt_max_us") >= number(&r, "rtt_p99_us"));
    eprintln!("p2sgw: {r}");

    // The explicit-exit-notify at the end frees the sessions at once.
    let gone = wait_until(Duration::from_secs(5), Duration::from_millis(100), || gw.sessions().is_empty());
    assert!(gone, "{} sessions left after loadgen exited", gw.sessions().len());
}

#[test]
fn loadgen_connects_to_openvpn_2_6_and_traffic_echoes() {
    const N: usize = 5;
    let topo = Topology::new(1);
    let work = topo.temp_dir();
    let pki = work.join("pki");
    p2sgw(&["pki", "init", "--dir", path(&pki), "--gateway", GATEWAY_NAME]);
    p2sgw(&["pki", "issue", "--dir", path(&pki), "--name", "lg"]);
    // Only for `p2sgw profile`: p2sgw itself does not run in this test.
    let config = work.join("gw.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nname = \"{GATEWAY_NAME}\"\nstate_dir = \"{}\"\n[network]\nroutes = [\"{VNET_SUBNET}\"]\n",
            work.display()
        ),
    )
    .unwrap();
    let profile = work.join("lg.ovpn");
    p2sgw(&["profile", "--config", path(&config), "--name", "lg", "--out", path(&profile), "--transport", "udp"]);

    let server_conf = openvpn_server_config(work, &pki);
    let server = topo.gw().spawn(&["openvpn", "--config", path(&server_conf)], "openvpn-server");
    server.wait_for_log("Initialization Sequence Completed", Duration::from_secs(20)).expect("openvpn starts");
    let _sink = start_sink(&topo);

    let output = topo
        .client(0)
        .exec_with_timeout(
            &[
                P2SGW,
                "loadgen",
                "--profile",
                path(&profile),
                "--clients",
                &N.to_string(),
                "--sink",
                &sink_addr(),
                "--duration",
                "2",
                "--rate",
                "1000",
                "--json",
            ],
            Duration::from_secs(60),
        )
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "loadgen failed:\n{stdout}\n{stderr}\nserver:\n{}", server.log_tail(30));
    let r = report(&stdout);
    assert_eq!(r["connected"], N, "{r}\n{stderr}");
    assert!(number(&r, "received_packets") > 0.0, "{r}");
    assert!(number(&r, "loss_ratio") < 0.02, "{r}");
    eprintln!("openvpn: {r}");
    // All clients share one certificate: duplicate-cn lets them all stay.
    let log = server.log_text();
    assert_eq!(log.matches("Data Channel: cipher 'AES-256-GCM'").count(), N, "{log}");
}

/// An OpenVPN 2.6 server like perf/compare-openvpn's, with the same PKI, tls-crypt key and
/// pool; `duplicate-cn` because the load generator's clients share one certificate.
fn openvpn_server_config(work: &Path, pki: &Path) -> PathBuf {
    let conf = work.join("openvpn-server.conf");
    let p = |name: &str| pki.join(name).display().to_string();
    std::fs::write(
        &conf,
        format!(
            "port 1194\nproto udp\nmultihome\ndev tun\nca {}\ncert {}\nkey {}\ndh none\ntls-crypt {}\n\
             topology subnet\nserver 172.16.201.0 255.255.255.0\npush \"route 10.50.0.0 255.255.255.0\"\n\
             keepalive 10 60\ndata-ciphers AES-256-GCM\nduplicate-cn\nverb 3\n",
            p("ca.crt"),
            p("server.crt"),
            p("server.key"),
            p("tls-crypt.key")
        ),
    )
    .unwrap();
    conf
}
