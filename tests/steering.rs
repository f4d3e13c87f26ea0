//! TUN queue steering end to end: a gateway with two workers, real OpenVPN clients over
//! UDP and TCP, and traffic from the vnet host to the clients that the kernel's own queue
//! choice cannot follow (UDP flows the clients never answer, so no worker ever wrote them
//! into the TUN device). With steering each packet is read by the worker owning its
//! session; without it some are sealed by the other worker with the session's shared keys
//! (UDP) or handed over to the owner (TCP). Needs root (run through `tests/run`).

mod common;

use std::time::Duration;

use common::*;

/// Half over UDP, half over TCP: eight sessions leave both workers owning some (each
/// client lands on a worker by the hash of its address and port), but for 1 in 128 runs.
const CLIENTS: usize = 8;

/// Sends 32 UDP datagrams, each from its own source port (its own flow), to port 9 of
/// every address given.
const VNET_SENDER: &str = r#"
import socket, sys
sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(32)]
for address in sys.argv[1:]:
    for s in sockets:
        s.sendto(b"x" * 200, (address, 9))
print("sent")
"#;

/// The sum of the samples of `name` whose labels include every one of `labels`.
fn sample(metrics: &str, name: &str, labels: &[&str]) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|label| l.contains(label)))
        .map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<u64>().ok()).expect("a counter value"))
        .sum()
}

/// What the workers counted of packets read from the TUN for the other worker's sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Foreign {
    sealed_here: u64,
    handed_off: u64,
    wakes: u64,
}

fn foreign(metrics: &str) -> Foreign {
    let family = "p2sgw_worker_tun_foreign_packets_total";
    Foreign {
        sealed_here: sample(metrics, family, &["outcome=\"sealed_here\""]),
        handed_off: sample(metrics, family, &["outcome=\"handed_off\""]),
        wakes: sample(metrics, "p2sgw_worker_handoff_wakes_total", &[]),
    }
}

/// Packets each worker sent to clients.
fn to_clients(metrics: &str) -> [u64; 2] {
    let worker = |w: &str| sample(metrics, "p2sgw_worker_packets_total", &[w, "direction=\"to_clients\""]);
    [worker("worker=\"0\""), worker("worker=\"1\"")]
}

struct Run {
    topo: Topology,
    gw: Gateway,
    addresses: Vec<String>,
    _clients: Vec<OpenVpnClient>,
}

/// A two-worker gateway with `steering` and CLIENTS clients connected through it.
fn gateway_with_clients(steering: bool, launcher: &'static [&'static str], clients: usize) -> Run {
    let topo = Topology::new(clients);
    let extra = format!("[dataplane]\nworkers = 2\nsteering = {steering}\n");
    let gw = Gateway::start(&topo, GatewayOptions { extra, launcher, ..Default::default() });
    let started: Vec<_> = (0..clients)
        .map(|k| {
            let name = format!("user{k}");
            gw.issue(&name);
            let profile = gw.profile(&name, if k % 2 == 0 { "udp" } else { "tcp" });
            OpenVpnClient::start(topo.client(k), &profile, &[])
        })
        .collect();
    for (k, c) in started.iter().enumerate() {
        if let Err(e) = c.wait_connected(Duration::from_secs(60)) {
            panic!("client {k}: {e}");
        }
    }
    let addresses = started.iter().map(|c| pushed_address(&c.log_text()).expect("ifconfig pushed")).collect();
    Run { topo, gw, addresses, _clients: started }
}

/// Sends the unanswered UDP flows and pings every client from the vnet host; returns the
/// foreign-packet counters' growth and the packets each worker sent to clients meanwhile.
fn push_from_vnet(run: &Run) -> (Foreign, [u64; 2]) {
    let before = run.gw.metrics();
    let mut args = vec!["python3", "-c", VNET_SENDER];
    args.extend(run.addresses.iter().map(String::as_str));
    assert!(run.topo.vnet().exec_ok(&args).contains("sent"));
    for address in &run.addresses {
        // Reachability, not loss: right after the burst above a reply may be lost on a busy
        // machine (seen once in a full suite run).
        let p = ping(run.topo.vnet(), address, 3, Duration::from_millis(100));
        assert!(p.received > 0, "the vnet host reaches client {address}: {}", p.output);
    }
    let after = run.gw.metrics();
    let (f0, f1) = (foreign(&before), foreign(&after));
    let (t0, t1) = (to_clients(&before), to_clients(&after));
    let grown = Foreign {
        sealed_here: f1.sealed_here - f0.sealed_here,
        handed_off: f1.handed_off - f0.handed_off,
        wakes: f1.wakes - f0.wakes,
    };
    (grown, [t1[0] - t0[0], t1[1] - t0[1]])
}

#[test]
fn with_steering_every_tun_packet_is_read_by_its_sessions_worker() {
    let run = gateway_with_clients(true, &[], CLIENTS);
    run.gw.wait_for_line(&["TUN steering on"], Duration::from_secs(1)).unwrap();
    assert!(run.gw.metrics().contains("p2sgw_tun_steering 1"));
    let (grown, per_worker) = push_from_vnet(&run);
    eprintln!("steered: {grown:?}, packets to clients by worker {per_worker:?}");
    // The sessions' map entries were written before their clients got their addresses,
    // so not even the first packet of a flow goes astray.
    assert_eq!(grown, Foreign { sealed_here: 0, handed_off: 0, wakes: 0 });
    if per_worker.contains(&0) {
        eprintln!("note: one worker owns every session this run (the kernel's hash put all clients there)");
    }
}

#[test]
fn without_steering_the_kernel_puts_packets_on_other_workers_queues() {
    let run = gateway_with_clients(false, &[], CLIENTS);
    assert!(!run.gw.log().contains("TUN steering on"));
    assert!(run.gw.metrics().contains("p2sgw_tun_steering 0"));
    let (grown, per_worker) = push_from_vnet(&run);
    eprintln!("not steered: {grown:?}, packets to clients by worker {per_worker:?}");
    // 32 flows to each of 8 clients, each flow on a queue picked by its hash.
    assert!(grown.sealed_here > 0, "UDP sessions' packets sealed by the other worker: {grown:?}");
    assert!(grown.handed_off > 0, "TCP sessions' packets handed over: {grown:?}");
    assert!(grown.wakes > 0 && grown.wakes <= grown.handed_off, "{grown:?}");
}

#[test]
fn without_cap_bpf_the_gateway_warns_and_serves_as_without_steering() {
    let launcher: &[&str] = &["setpriv", "--bounding-set", "-bpf,-sys_admin", "--"];
    let run = gateway_with_clients(true, launcher, 2);
    run.gw.wait_for_line(&["WARN", "cannot steer TUN packets", "CAP_BPF"], Duration::from_secs(1)).unwrap();
    assert!(run.gw.metrics().contains("p2sgw_tun_steering 0"));
    for k in 0..2 {
        let p = ping(run.topo.client(k), VNET_HOST_ADDR, 3, Duration::from_millis(100));
        assert!(p.all_received(), "client {k} reaches the vnet: {}", p.output);
    }
    let (grown, _) = push_from_vnet(&run);
    assert!(grown.sealed_here + grown.handed_off > 0, "the kernel's queue choice, as before: {grown:?}");
}
