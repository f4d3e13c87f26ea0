//! What a TUN packet read by a worker other than its session's owner costs, the work TUN
//! steering saves (1400-byte packets):
//!
//! - `handoff/*`: a TCP or SSTP session's packet handed to the owner: `Inbox::hand_off`
//!   (copy into a recycled box, queue it, an eventfd write for the first packet of a
//!   burst) and the owner's drain (pop, copy into its packet buffer, recycle the box), per
//!   packet, for bursts of 1 and 32; and `handoff/wake` alone, the eventfd write and the
//!   owner's read of it (through io_uring in the worker, here read(2)).
//! - `shared_seal/*`: a UDP session's packets sealed by two threads at once with the
//!   session's shared keys (its atomic packet-id and traffic counters bounce between the
//!   cores), against two threads each sealing its own session's; per packet, both threads
//!   together.
//!
//!   cargo bench --bench handoff

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use p2sgw::crypto::AeadAlgorithm;
use p2sgw::dataplane::table::{KeySet, SessionShared, Transport};
use p2sgw::dataplane::{HandOff, Inbox, sys};
use p2sgw::proto::openvpn::data::{DataKey, HEADROOM};
use p2sgw::proto::openvpn::keys::{Key2, Role};

const PACKET: usize = 1400;
const PEER_ID: u32 = 7;

fn handoff(c: &mut Criterion) {
    let inbox = Inbox::new().expect("eventfd");
    let packet = [0x45u8; PACKET];
    let mut owner_buffer = vec![0u8; p2sgw::dataplane::buffers::BUF_SIZE];
    let mut group = c.benchmark_group("handoff");
    for burst in [1u64, 32] {
        group.throughput(Throughput::Elements(burst));
        group.bench_function(format!("hand_off_and_drain/burst{burst}"), |b| {
            b.iter(|| {
                for _ in 0..burst {
                    assert!(matches!(inbox.hand_off(PEER_ID, black_box(&packet)), HandOff::Queued { .. }));
                }
                while let Some(h) = inbox.next_packet() {
                    let len = usize::from(h.len);
                    owner_buffer[HEADROOM..HEADROOM + len].copy_from_slice(&h.data[..len]);
                    black_box(&owner_buffer);
                    inbox.recycle(h);
                }
            })
        });
    }
    group.throughput(Throughput::Elements(1));
    let wake = sys::eventfd().expect("eventfd");
    group.bench_function("wake", |b| {
        b.iter(|| {
            use std::os::fd::AsRawFd as _;
            sys::eventfd_signal(wake.as_raw_fd());
            let mut count = 0u64;
            // SAFETY: reads 8 bytes into a u64 from an eventfd this closure owns.
            let n = unsafe { libc::read(wake.as_raw_fd(), (&mut count as *mut u64).cast(), 8) };
            assert_eq!(n, 8);
        })
    });
    group.finish();
}

fn session(key: &Arc<DataKey>) -> SessionShared {
    let transport = Transport::Udp { listener: 0, peer: ([192, 0, 2, 1], 40_000).into(), local: None };
    let session = SessionShared::new(PEER_ID, Ipv4Addr::new(10, 8, 0, 2), 0, transport, true);
    session.keys.store(Arc::new(KeySet { send: Some(key.clone()), ..KeySet::default() }));
    session
}

/// Two threads each seal `packets` packets for their session, as `Worker::seal_into` does;
/// returns the wall time of the slower.
fn seal_on_two_threads(sessions: [&SessionShared; 2], packets: u64) -> Duration {
    let start = Barrier::new(2);
    std::thread::scope(|s| {
        let threads = sessions.map(|session| {
            let start = &start;
            s.spawn(move || {
                let mut buf = vec![0u8; p2sgw::dataplane::buffers::BUF_SIZE];
                start.wait();
                let began = Instant::now();
                for _ in 0..packets {
                    let keys = session.keys.load();
                    let key = keys.send.as_ref().expect("a send key");
                    let n = key.seal_v2(session.peer_id, &mut buf, PACKET).expect("seal");
                    session.stats.sent(n, 1);
                }
                began.elapsed()
            })
        });
        threads.map(|t| t.join().expect("sealing thread")).into_iter().max().unwrap_or_default()
    })
}

fn shared_seal(c: &mut Criterion) {
    let key2 = Key2::from_ekm(std::array::from_fn(|i| i as u8));
    let key = || Arc::new(DataKey::new(1, &key2.direction_keys(AeadAlgorithm::Aes256Gcm, Role::Server)).expect("key"));
    let (shared_key, other_key) = (key(), key());
    let (one, other) = (session(&shared_key), session(&other_key));
    let mut group = c.benchmark_group("shared_seal");
    // One iteration: a packet on each thread.
    group.throughput(Throughput::Elements(2));
    group.bench_function("one_session_two_threads", |b| b.iter_custom(|n| seal_on_two_threads([&one, &one], n)));
    group.bench_function("own_session_each", |b| b.iter_custom(|n| seal_on_two_threads([&one, &other], n)));
    group.finish();
}

criterion_group!(benches, handoff, shared_seal);
criterion_main!(benches);
