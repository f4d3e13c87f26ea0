//! The per-packet work around the cipher: looking a session up (by tunnel address for
//! packets from the TUN, by peer-id for packets from clients) in a table of 10,000
//! sessions, and parsing packet headers. Before timing anything it checks, with a
//! counting allocator, that sealing, opening and looking up allocate nothing.
//!
//!   cargo bench --bench packet_path

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use p2sgw::crypto::AeadAlgorithm;
use p2sgw::dataplane::table::{SessionShared, SessionTable, Transport};
use p2sgw::proto::openvpn::data::{DataHeader, DataKey, HEADROOM};
use p2sgw::proto::openvpn::keys::{Key2, Role};
use p2sgw::proto::openvpn::packet::ControlHeader;

/// Counts every allocation the process makes.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const SESSIONS: u32 = 10_000;

fn table() -> SessionTable {
    let table = SessionTable::new(2 * SESSIONS as usize);
    for peer_id in 0..SESSIONS {
        let address = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 8, 0, 2)) + peer_id);
        let transport = Transport::Udp { listener: 0, peer: ([192, 0, 2, 1], 40_000).into(), local: None };
        table.insert(Arc::new(SessionShared::new(peer_id, address, 0, transport, true)));
    }
    table
}

fn keys() -> (DataKey, DataKey) {
    let key2 = Key2::from_ekm(std::array::from_fn(|i| i as u8));
    let alg = AeadAlgorithm::Aes256Gcm;
    let server = DataKey::new(1, &key2.direction_keys(alg, Role::Server)).expect("server key");
    let client = DataKey::new(1, &key2.direction_keys(alg, Role::Client)).expect("client key");
    (server, client)
}

/// The steady-state packet path (look up, seal; parse, open, count) must not allocate.
fn assert_no_allocation_per_packet(table: &SessionTable) {
    let (server, client) = keys();
    let mut buf = vec![0x45u8; HEADROOM + 1400];
    let guard = table.address_guard();
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for i in 0..10_000u32 {
        let address = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 8, 0, 2)) + i % SESSIONS);
        let session = guard.get(&address).expect("session");
        let sealed = client.seal_v2(session.peer_id, &mut buf, 1400).expect("seal");
        let header = DataHeader::parse(&buf[..sealed]).expect("header");
        let (_, payload) = server.open(&mut buf[..sealed]).expect("open");
        session.stats.received(payload.len(), u64::from(i));
        black_box((header, table.by_peer_id(session.peer_id)));
        buf[HEADROOM..].fill(0x45);
    }
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    println!("allocations in 10,000 packets (lookup, seal, parse, open, count): {allocations}");
    assert_eq!(allocations, 0, "the packet path allocates");
}

fn lookups_and_codecs(c: &mut Criterion) {
    let table = table();
    assert_no_allocation_per_packet(&table);

    let mut group = c.benchmark_group("session_lookup");
    group.throughput(Throughput::Elements(1));
    let guard = table.address_guard();
    let mut i = 0u32;
    group.bench_function("by_address_10k", |b| {
        b.iter(|| {
            i = i.wrapping_add(7919) % SESSIONS;
            black_box(guard.get(&Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 8, 0, 2)) + i)).is_some())
        })
    });
    group.bench_function("by_peer_id_10k", |b| {
        b.iter(|| {
            i = i.wrapping_add(7919) % SESSIONS;
            black_box(table.by_peer_id(i).is_some())
        })
    });
    group.finish();

    let (_, client) = keys();
    let mut data = vec![0x45u8; HEADROOM + 1400];
    let n = client.seal_v2(7, &mut data, 1400).expect("seal");
    let data = &data[..n];
    // A P_ACK_V1 with one acknowledgement, as a client sends between handshake packets.
    let mut control = vec![5u8 << 3];
    control.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8, 1, 0, 0, 0, 9, 8, 7, 6, 5, 4, 3, 2, 1]);
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(1));
    group.bench_function("data_header_parse", |b| b.iter(|| black_box(DataHeader::parse(black_box(data)).is_ok())));
    group.bench_function("control_header_parse", |b| {
        b.iter(|| black_box(ControlHeader::parse(black_box(&control)).is_ok()))
    });
    group.finish();
}

criterion_group!(benches, lookups_and_codecs);
criterion_main!(benches);
