//! Batched against per-packet sealing and opening of the OpenVPN data channel: 32 packets
//! (an io_uring completion batch) of 64 and 1400 bytes, for AES-256-GCM and
//! ChaCha20-Poly1305.
//!
//! `per_packet` does what the worker does today for each packet: load the session's keys
//! from its `ArcSwap` (`Worker::seal_into`, `Worker::open_data`), pick the send key or the
//! receive key by key-id, seal or open, count the bytes. `batch` loads the keys once for
//! the 32 packets and runs the same cipher and counting in one loop. The difference is
//! the cost of the per-packet key lookup, which `batch32/key_lookup` also times alone.
//! Both leave the replay window out (worker-local state, the same per packet either
//! way). Throughput counts payload bytes of the batch.
//!
//!   cargo bench --bench batch

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::Arc;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use p2sgw::crypto::AeadAlgorithm;
use p2sgw::dataplane::table::{KeySet, SessionShared, Transport};
use p2sgw::proto::openvpn::data::{DataHeader, DataKey, HEADROOM};
use p2sgw::proto::openvpn::keys::{Key2, Role};

const BATCH: usize = 32;
const KEY_ID: u8 = 1;
const PEER_ID: u32 = 7;
/// Data-plane clock for the traffic counters (its value does not matter here).
const NOW_SECS: u64 = 100;

/// A gateway session holding the server's keys as the worker sees them, and the client's
/// key (which makes packets for the gateway to open).
fn gateway_session(alg: AeadAlgorithm) -> (SessionShared, DataKey) {
    let key2 = Key2::from_ekm(std::array::from_fn(|i| i as u8));
    let server = Arc::new(DataKey::new(KEY_ID, &key2.direction_keys(alg, Role::Server)).expect("server key"));
    let client = DataKey::new(KEY_ID, &key2.direction_keys(alg, Role::Client)).expect("client key");
    let transport = Transport::Udp { listener: 0, peer: ([192, 0, 2, 1], 40_000).into(), local: None };
    let session = SessionShared::new(PEER_ID, Ipv4Addr::new(10, 8, 0, 2), 0, transport, true);
    let mut keys = KeySet { send: Some(server.clone()), ..KeySet::default() };
    keys.recv[usize::from(KEY_ID)] = Some(server);
    session.keys.store(Arc::new(keys));
    (session, client)
}

/// Seals like `Worker::seal_into`: the keys are loaded for every packet.
fn seal_per_packet(session: &SessionShared, bufs: &mut [Vec<u8>], size: usize) -> usize {
    let mut sealed = 0;
    for buf in bufs {
        let keys = session.keys.load();
        let key = keys.send.as_ref().expect("the session has a send key");
        let n = key.seal_v2(session.peer_id, buf, size).expect("seal");
        session.stats.sent(n, NOW_SECS);
        sealed += n;
    }
    sealed
}

/// The same work with the keys loaded once for the batch.
fn seal_batch(session: &SessionShared, bufs: &mut [Vec<u8>], size: usize) -> usize {
    let keys = session.keys.load();
    let key = keys.send.as_ref().expect("the session has a send key");
    let mut sealed = 0;
    for buf in bufs {
        let n = key.seal_v2(session.peer_id, buf, size).expect("seal");
        session.stats.sent(n, NOW_SECS);
        sealed += n;
    }
    sealed
}

/// Opens like `Worker::open_data`: header parsed for the key-id, keys loaded for every
/// packet.
fn open_per_packet(session: &SessionShared, packets: &mut [Vec<u8>]) -> usize {
    let mut opened = 0;
    for packet in packets {
        let header = DataHeader::parse(packet).expect("data header");
        let keys = session.keys.load();
        let key = keys.recv[usize::from(header.key_id & 7)].as_ref().expect("the session has a receive key");
        let (_, range) = key.open(packet).expect("open");
        session.stats.received(packet.len(), NOW_SECS);
        opened += range.len();
    }
    opened
}

/// The same work with the keys loaded once for the batch (`open` still checks each
/// packet's key-id).
fn open_batch(session: &SessionShared, packets: &mut [Vec<u8>]) -> usize {
    let keys = session.keys.load();
    let mut opened = 0;
    for packet in packets {
        let header = DataHeader::parse(packet).expect("data header");
        let key = keys.recv[usize::from(header.key_id & 7)].as_ref().expect("the session has a receive key");
        let (_, range) = key.open(packet).expect("open");
        session.stats.received(packet.len(), NOW_SECS);
        opened += range.len();
    }
    opened
}

fn batched_vs_single(c: &mut Criterion) {
    // What the batch saves per packet, alone: one load of the session's keys (an
    // `ArcSwap` guard) and the pick of the send key.
    let (session, _) = gateway_session(AeadAlgorithm::Aes256Gcm);
    let mut group = c.benchmark_group(format!("batch{BATCH}"));
    group.throughput(Throughput::Elements(1));
    group.bench_function("key_lookup", |b| {
        b.iter(|| black_box(black_box(&session).keys.load().send.as_ref().map(|k| k.key_id())))
    });
    group.finish();

    for alg in [AeadAlgorithm::Aes256Gcm, AeadAlgorithm::ChaCha20Poly1305] {
        let (session, client) = gateway_session(alg);
        let mut group = c.benchmark_group(format!("batch{BATCH}/{alg}"));
        for size in [64usize, 1400] {
            group.throughput(Throughput::Bytes((size * BATCH) as u64));
            let mut bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0x45u8; HEADROOM + size]).collect();
            // Both variants seal the same packets (checked once, untimed).
            let (single, batched) = (seal_per_packet(&session, &mut bufs, size), seal_batch(&session, &mut bufs, size));
            assert_eq!((single, batched), (BATCH * (HEADROOM + size), BATCH * (HEADROOM + size)));

            group.bench_with_input(BenchmarkId::new("seal_per_packet", size), &size, |b, &size| {
                b.iter(|| black_box(seal_per_packet(&session, &mut bufs, size)))
            });
            group.bench_with_input(BenchmarkId::new("seal_batch", size), &size, |b, &size| {
                b.iter(|| black_box(seal_batch(&session, &mut bufs, size)))
            });

            // Open decrypts in place: every iteration gets fresh copies of 32 packets the
            // client sealed (copied untimed).
            let sealed: Vec<Vec<u8>> = (0..BATCH)
                .map(|_| {
                    let mut buf = vec![0x45u8; HEADROOM + size];
                    let n = client.seal_v2(PEER_ID, &mut buf, size).expect("client seal");
                    buf.truncate(n);
                    buf
                })
                .collect();
            let (single, batched) =
                (open_per_packet(&session, &mut sealed.clone()), open_batch(&session, &mut sealed.clone()));
            assert_eq!((single, batched), (BATCH * size, BATCH * size));

            group.bench_with_input(BenchmarkId::new("open_per_packet", size), &size, |b, _| {
                b.iter_batched_ref(
                    || sealed.clone(),
                    |packets| black_box(open_per_packet(&session, packets)),
                    BatchSize::SmallInput,
                )
            });
            group.bench_with_input(BenchmarkId::new("open_batch", size), &size, |b, _| {
                b.iter_batched_ref(
                    || sealed.clone(),
                    |packets| black_box(open_batch(&session, packets)),
                    BatchSize::SmallInput,
                )
            });
        }
        group.finish();
    }
}

criterion_group!(benches, batched_vs_single);
criterion_main!(benches);
