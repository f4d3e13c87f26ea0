//! Prometheus metrics for `/metrics` on the admin listener (OpenMetrics text).
//!
//! The data plane counts in its own per-worker atomics and the control plane owns its
//! tallies; a scrape reads both into a fresh registry, so nothing on the packet path
//! knows about Prometheus.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::ControlPlane;
use crate::dataplane::counters::{DropReason, WorkerCounters, total_drops};

type Labels = Vec<(&'static str, String)>;
/// One of a worker's counters.
type WorkerCounter = fn(&WorkerCounters) -> &std::sync::atomic::AtomicU64;

/// What the control plane tallies between scrapes.
pub struct Metrics {
    /// Sessions admitted, by (protocol, authentication method).
    admitted: BTreeMap<(&'static str, &'static str), u64>,
    /// From a client's first handshake packet to its authentication request.
    handshake: Histogram,
    /// From the authentication request to the decision (RADIUS and token checks wait here).
    auth: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            admitted: BTreeMap::new(),
            // 1 ms to ~16 s.
            handshake: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            // 50 µs to ~6.5 s: a local decision takes microseconds, RADIUS milliseconds.
            auth: Histogram::new(exponential_buckets(0.000_05, 2.0, 18)),
        }
    }
}

impl Metrics {
    pub fn admitted(&mut self, transport: &'static str, method: &'static str) {
        *self.admitted.entry((transport, method)).or_default() += 1;
    }

    pub fn auth_decided(&mut self, decision_time: Duration, first_handshake: Option<Duration>) {
        self.auth.observe(decision_time.as_secs_f64());
        if let Some(handshake) = first_handshake {
            self.handshake.observe(handshake.as_secs_f64());
        }
    }
}

/// The OpenMetrics text of everything the gateway counts.
pub fn render(plane: &ControlPlane) -> String {
    let mut registry = Registry::with_prefix("p2sgw");

    let sessions = Family::<Labels, Gauge>::default();
    let mut by_kind: BTreeMap<(String, &'static str), i64> = BTreeMap::new();
    for rec in plane.sessions.values() {
        *by_kind.entry((super::protocol_name(rec.transport), rec.method)).or_default() += 1;
    }
    for ((protocol, auth), n) in by_kind {
        sessions.get_or_create(&vec![("protocol", protocol), ("auth", auth.to_string())]).set(n);
    }
    registry.register("sessions", "Established sessions", sessions);

    let handshakes = Family::<Labels, Counter>::default();
    for (&(transport, method), &n) in &plane.metrics.admitted {
        handshakes
            .get_or_create(&vec![("protocol", super::protocol_name(transport)), ("auth", method.into())])
            .inc_by(n);
    }
    registry.register("handshakes", "Clients admitted (handshake and authentication passed)", handshakes);

    let failures = Family::<Labels, Counter>::default();
    for (&reason, &n) in &plane.refusals {
        failures.get_or_create(&vec![("reason", reason.to_string())]).inc_by(n);
    }
    registry.register("auth_failures", "Clients refused, by reason", failures);
    registry.register(
        "handshake_duration_seconds",
        "Time from a client's first handshake packet to its authentication request",
        plane.metrics.handshake.clone(),
    );
    registry.register(
        "auth_duration_seconds",
        "Time to decide an authentication request (includes RADIUS and token checks)",
        plane.metrics.auth.clone(),
    );

    let workers = &plane.shared.counters;
    let sum = |f: fn(&crate::dataplane::counters::WorkerCounters) -> &std::sync::atomic::AtomicU64| {
        workers.iter().map(|w| f(w).load(Ordering::Relaxed)).sum::<u64>()
    };
    let bytes = Family::<Labels, Counter>::default();
    bytes.get_or_create(&vec![("direction", "from_clients".into())]).inc_by(sum(|w| &w.to_tun_bytes));
    bytes.get_or_create(&vec![("direction", "to_clients".into())]).inc_by(sum(|w| &w.from_tun_bytes));
    registry.register("tunnel_bytes", "Bytes of IP packets carried through the tunnels", bytes);

    let drops = Family::<Labels, Counter>::default();
    for reason in DropReason::ALL {
        drops.get_or_create(&vec![("reason", reason.name().into())]).inc_by(total_drops(workers, reason));
    }
    registry.register("drops", "Packets dropped, by reason", drops);

    let packets = Family::<Labels, Counter>::default();
    let batches = Family::<Labels, Counter>::default();
    let completions = Family::<Labels, Counter>::default();
    let handoffs = Family::<Labels, Counter>::default();
    let handoff_wakes = Family::<Labels, Counter>::default();
    let foreign = Family::<Labels, Counter>::default();
    for (index, w) in workers.iter().enumerate() {
        let worker = || ("worker", index.to_string());
        packets
            .get_or_create(&vec![worker(), ("direction", "from_clients".into())])
            .inc_by(w.to_tun.load(Ordering::Relaxed));
        packets
            .get_or_create(&vec![worker(), ("direction", "to_clients".into())])
            .inc_by(w.from_tun.load(Ordering::Relaxed));
        batches.get_or_create(&vec![worker()]).inc_by(w.batches.load(Ordering::Relaxed));
        completions.get_or_create(&vec![worker()]).inc_by(w.completions.load(Ordering::Relaxed));
        handoffs.get_or_create(&vec![worker()]).inc_by(w.handoffs.load(Ordering::Relaxed));
        handoff_wakes.get_or_create(&vec![worker()]).inc_by(w.handoff_wakes.load(Ordering::Relaxed));
        foreign
            .get_or_create(&vec![worker(), ("outcome", "sealed_here".into())])
            .inc_by(w.tun_foreign_sealed.load(Ordering::Relaxed));
        foreign
            .get_or_create(&vec![worker(), ("outcome", "handed_off".into())])
            .inc_by(w.handoffs.load(Ordering::Relaxed));
    }
    registry.register("worker_packets", "Tunnel packets moved by each worker", packets);
    registry.register("worker_batches", "io_uring completion batches each worker processed", batches);
    registry.register(
        "worker_completions",
        "io_uring completions each worker processed (divided by batches: the mean batch size)",
        completions,
    );
    registry.register("worker_handoffs", "Packets a worker handed to the worker owning their session", handoffs);
    registry.register(
        "worker_handoff_wakes",
        "Mailbox wake-ups (eventfd writes) a worker's hand-offs cost, one per burst",
        handoff_wakes,
    );
    // Without TUN steering the kernel picks a worker's queue by flow, not by session owner.
    registry.register(
        "worker_tun_foreign_packets",
        "Packets a worker read from the TUN device for a session another worker owns: sealed here with the \
         session's shared keys (UDP, IKEv2) or handed off to the owner (TCP, SSTP)",
        foreign,
    );
    let steering = Gauge::<i64>::default();
    steering.set(i64::from(plane.shared.table.steers()));
    registry.register(
        "tun_steering",
        "1 when an eBPF program puts each TUN packet on the queue of the worker owning its session",
        steering,
    );

    // Kernel offloads at work: tun_writes well below worker_packets{direction="from_clients"}
    // (coalesced writes), tun_split_packets / tun_super_reads packets per TUN read, and
    // udp_gso_datagrams / udp_gso_sends datagrams per send, udp_gro_datagrams /
    // udp_gro_receives datagrams per coalesced receive. udp_recv_ring_empty and
    // tun_read_ring_empty: multishot receives and TUN reads that found their io_uring
    // buffer ring empty (the pool ran short, or a burst outran a completion batch).
    let offload_counters: [(&str, &str, WorkerCounter); 10] = [
        ("worker_tun_super_reads", "TSO/USO super-packets a worker read from the TUN device", |w| &w.tun_super_reads),
        ("worker_tun_split_packets", "Packets a worker cut from TUN super-packets", |w| &w.tun_split_packets),
        ("worker_tun_writes", "Writes a worker made to the TUN device (one may carry a coalesced flow)", |w| {
            &w.tun_writes
        }),
        ("worker_tun_coalesced_writes", "TUN writes carrying several packets of a flow coalesced (GRO)", |w| {
            &w.tun_coalesced_writes
        }),
        ("worker_udp_gso_sends", "UDP GSO sends (one sendmsg for several datagrams to a client)", |w| &w.udp_gso_sends),
        ("worker_udp_gso_datagrams", "Datagrams sent by UDP GSO sends", |w| &w.udp_gso_datagrams),
        ("worker_udp_gro_receives", "UDP GRO receives (one receive bringing several datagrams of a client)", |w| {
            &w.udp_gro_receives
        }),
        ("worker_udp_gro_datagrams", "Datagrams received by UDP GRO receives", |w| &w.udp_gro_datagrams),
        ("worker_udp_recv_ring_empty", "Multishot UDP receives that found their buffer ring empty", |w| {
            &w.udp_recv_ring_empty
        }),
        ("worker_tun_read_ring_empty", "Multishot TUN reads that found their buffer ring empty", |w| {
            &w.tun_read_ring_empty
        }),
    ];
    // Steering to the session's owner: handoffs and mailbox passes stay near 0 while the
    // SO_REUSEPORT programs steer (dataplane/reuseport.rs).
    let steering_counters: [(&str, &str, WorkerCounter); 3] = [
        ("worker_openvpn_floats", "OpenVPN sessions a worker moved to their client's new address", |w| {
            &w.openvpn_floats
        }),
        ("worker_datagram_handoffs", "Client datagrams a worker handed to the worker owning their session", |w| {
            &w.datagram_handoffs
        }),
        ("worker_ike_mailbox_passes", "IKE messages a worker passed to the worker owning their SA", |w| {
            &w.ike_mailbox_passes
        }),
    ];
    for (name, help, counter) in offload_counters.into_iter().chain(steering_counters) {
        let family = Family::<Labels, Counter>::default();
        for (index, w) in workers.iter().enumerate() {
            family.get_or_create(&vec![("worker", index.to_string())]).inc_by(counter(w).load(Ordering::Relaxed));
        }
        registry.register(name, help, family);
    }

    let pool = Family::<Labels, Gauge>::default();
    pool.get_or_create(&vec![("state", "in_use".into())]).set(i64::from(plane.pools.in_use()));
    pool.get_or_create(&vec![("state", "free".into())])
        .set(i64::from(plane.pools.capacity()) - i64::from(plane.pools.in_use()));
    registry.register("pool_addresses", "Client addresses of the pools", pool);

    let mut text = String::new();
    encode(&mut text, &registry).expect("writing to a String cannot fail");
    text
}
