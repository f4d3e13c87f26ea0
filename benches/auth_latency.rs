//! Authentication latency that p2sgw adds over FreeRADIUS's own: PAP Access-Requests
//! to a real FreeRADIUS 3.2, timed (a) as bare UDP round trips (a prepared request,
//! a blocking socket: what the server itself costs) and (b) through p2sgw's RADIUS
//! service (the control plane's task, the sans-IO client, reply verification). Both
//! run one after the other in one process against the same server.
//!
//!   sudo cargo bench --bench auth_latency [-- REQUESTS]
//!
//! Needs root: FreeRADIUS runs on the loopback of a network namespace of its own.

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use common::{DEFAULT_RADIUS_SECRET, FreeRadius, Netns, RadiusClient, RadiusOptions, RadiusUser};
use hdrhistogram::Histogram;
use p2sgw::config::RadiusConfig;
use p2sgw::control::radius::RadiusService;
use p2sgw::proto::radius::{AccessReply, AccessRequest, NasInfo, Packet, auth::verify_reply};

fn main() {
    let requests: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(2000);
    let ns = Netns::new("bench");
    let server = FreeRadius::start(
        &ns,
        RadiusOptions {
            listen_addr: "127.0.0.1".into(),
            clients: vec![RadiusClient::new("127.0.0.0/8", DEFAULT_RADIUS_SECRET)],
            users: vec![RadiusUser::new("bob", "hello")],
            ..Default::default()
        },
    );
    let home = std::fs::File::open("/proc/self/ns/net").expect("own network namespace");
    enter(&format!("/var/run/netns/{}", ns.name()));
    let address: SocketAddr = ([127, 0, 0, 1], server.auth_port()).into();

    let bare = bare_round_trips(address, requests);
    let through = service_round_trips(address, requests);
    // Back home, so that removing the namespace finds no process of ours in it.
    enter_fd(&home);
    println!("PAP Access-Request → Access-Accept, {requests} requests each, FreeRADIUS 3.2 (-X) on loopback:");
    println!("{:<34} {:>10} {:>10} {:>10}", "", "p50 µs", "p99 µs", "max µs");
    for (name, h) in [("bare UDP round trip (FreeRADIUS)", &bare), ("through p2sgw's RADIUS service", &through)] {
        println!("{name:<34} {:>10} {:>10} {:>10}", h.value_at_quantile(0.5), h.value_at_quantile(0.99), h.max());
    }
    println!(
        "{:<34} {:>10} {:>10}",
        "added by p2sgw",
        through.value_at_quantile(0.5) as i64 - bare.value_at_quantile(0.5) as i64,
        through.value_at_quantile(0.99) as i64 - bare.value_at_quantile(0.99) as i64
    );
}

/// Moves this thread (and the sockets it makes) into the network namespace at `path`.
fn enter(path: &str) {
    enter_fd(&std::fs::File::open(path).expect("namespace file"));
}

fn enter_fd(namespace: &std::fs::File) {
    // SAFETY: setns on a namespace fd we hold open, for the calling thread only.
    let rc = unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

fn bare_round_trips(server: SocketAddr, n: usize) -> Histogram<u64> {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let nas = NasInfo { identifier: "bench".into(), ip_address: None };
    let mut h = histogram();
    let mut buf = [0u8; 4096];
    for i in 0..n {
        // Prepared outside the timing: only the server's part is measured.
        let request = AccessRequest::pap("bob", "hello").build(&nas).expect("request");
        let mut nonce = [0u8; 16];
        aws_lc_rs::rand::fill(&mut nonce).unwrap();
        let (bytes, authenticator) = request.encode(i as u8, DEFAULT_RADIUS_SECRET.as_bytes(), nonce, Duration::ZERO);
        let start = Instant::now();
        socket.send_to(&bytes, server).unwrap();
        let (len, _) = socket.recv_from(&mut buf).expect("FreeRADIUS answers");
        h.record(start.elapsed().as_micros() as u64).unwrap();
        verify_reply(&buf[..len], DEFAULT_RADIUS_SECRET.as_bytes(), &authenticator, true).expect("authentic reply");
        assert_eq!(Packet::decode(&buf[..len]).unwrap().code as u8, 2, "Access-Accept");
    }
    h
}

fn service_round_trips(server: SocketAddr, n: usize) -> Histogram<u64> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let config = RadiusConfig {
            servers: vec![server],
            secrets: vec![DEFAULT_RADIUS_SECRET.into()],
            ..RadiusConfig::default()
        };
        let service = RadiusService::start(&config).await.expect("RADIUS service");
        let mut h = histogram();
        for _ in 0..n {
            let start = Instant::now();
            let reply = service.access(AccessRequest::pap("bob", "hello")).await.expect("reply");
            h.record(start.elapsed().as_micros() as u64).unwrap();
            assert!(matches!(reply, AccessReply::Accept(_)));
        }
        h
    })
}
