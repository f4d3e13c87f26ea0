//! The per-packet work around the cipher: looking a session up (by tunnel address for
//! packets from the TUN, with where its client is, by peer-id for OpenVPN packets from
//! clients, by SPI for ESP packets) in a table of 10,000 sessions. Before timing anything
//! it checks, with a counting allocator, that sealing, opening and looking up allocate
//! nothing, and neither do multishot receives over loopback into a ring of pool buffers
//! (parsed, released and handed back to the ring), nor multishot reads from a TUN device
//! (in a network namespace of their own) into its ring of pool buffers or, with offloads,
//! of large buffers cut into pool buffers. Header parsing is timed in benches/codec.rs.
//!
//!   cargo bench --bench packet_path

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use io_uring::{IoUring, cqueue, opcode, types};
use p2sgw::crypto::AeadAlgorithm;
use p2sgw::dataplane::buffers::BufferPool;
use p2sgw::dataplane::recv_ring::{self, BufRing, PLAIN_GROUP, TUN_GROUP, TunRing};
use p2sgw::dataplane::table::{EspInbound, SessionShared, SessionTable, Transport};
use p2sgw::proto::esp::{InboundSa, SaKey, keymat_len};
use p2sgw::proto::openvpn::data::{DataHeader, DataKey, HEADROOM};
use p2sgw::proto::openvpn::keys::{Key2, Role};

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
/// Inbound SPIs of the IKEv2 sessions are consecutive from here (the table hashes them
/// with SipHash, so their spacing does not matter).
const FIRST_SPI: u32 = 0xc000_0000;

/// 10,000 OpenVPN sessions by address and peer-id, and the inbound SAs of 10,000 IKEv2
/// sessions by SPI.
fn table() -> SessionTable {
    let table = SessionTable::new(2 * SESSIONS as usize);
    for peer_id in 0..SESSIONS {
        let address = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 8, 0, 2)) + peer_id);
        let transport = Transport::Udp { listener: 0, peer: ([192, 0, 2, 1], 40_000).into(), local: None };
        table.insert(Arc::new(SessionShared::new(peer_id, address, 0, transport, true)));
    }
    let algorithm = AeadAlgorithm::Aes256Gcm;
    let keymat: Vec<u8> = (0..keymat_len(algorithm) as u8).collect();
    for index in 0..SESSIONS {
        let peer_id = SESSIONS + index;
        let address = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 9, 0, 2)) + index);
        let transport = Transport::Esp;
        // Not published by address: the address lookups keep their 10,000 entries.
        let session = Arc::new(SessionShared::new(peer_id, address, 0, transport, true));
        let spi = FIRST_SPI + index;
        let sa = InboundSa::new(spi, SaKey::from_keymat(algorithm, &keymat).expect("SA key")).expect("inbound SA");
        table.insert_inbound_sa(spi, Arc::new(EspInbound { session, sa: Mutex::new(sa) }));
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
        black_box(**session.transport.load());
        let sealed = client.seal_v2(session.peer_id, &mut buf, 1400).expect("seal");
        let header = DataHeader::parse(&buf[..sealed]).expect("header");
        let (_, payload) = server.open(&mut buf[..sealed]).expect("open");
        session.stats.received(payload.len(), u64::from(i));
        black_box((header, table.by_peer_id(session.peer_id), table.inbound_sa(FIRST_SPI + i % SESSIONS)));
        buf[HEADROOM..].fill(0x45);
    }
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    println!("allocations in 10,000 packets (lookups, seal, parse, open, count): {allocations}");
    assert_eq!(allocations, 0, "the packet path allocates");
}

/// Receiving by multishot RecvMsg into a provided ring of pool buffers must not allocate:
/// the parse of each buffer, its release to the pool, the ring's refill and the re-arm.
fn assert_no_allocation_per_receive() {
    use std::os::fd::AsRawFd;
    let receiver = std::net::UdpSocket::bind("127.0.0.1:0").expect("receiver");
    let to = receiver.local_addr().expect("address");
    let sender = std::net::UdpSocket::bind("127.0.0.1:0").expect("sender");
    let mut ring = IoUring::new(64).expect("ring");
    let mut pool = BufferPool::new(64);
    let mut buffers = BufRing::register(&ring.submitter(), 32, PLAIN_GROUP).expect("buffer ring");
    let msghdr = recv_ring::multishot_msghdr();
    let payload = [0x38u8; 1400];
    let mut received = 0usize;
    let mut armed = false;
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..1000 {
        while buffers.held() < buffers.capacity() {
            let id = pool.alloc().expect("a pool buffer");
            let (addr, len) = pool.receive_area(id);
            buffers.add(addr, len, id as u16);
        }
        buffers.publish();
        if !armed {
            let recv = opcode::RecvMsgMulti::new(types::Fd(receiver.as_raw_fd()), &msghdr, PLAIN_GROUP).build();
            // SAFETY: the message header and the pool outlive the receive.
            unsafe { ring.submission().push(&recv).expect("room in the queue") };
            armed = true;
        }
        for _ in 0..16 {
            sender.send_to(&payload, to).expect("send");
        }
        let mut batch = 0;
        while batch < 16 {
            ring.submit_and_wait(1).expect("wait");
            for completion in ring.completion() {
                armed &= cqueue::more(completion.flags());
                let Some(id) = cqueue::buffer_select(completion.flags()) else { continue };
                buffers.consumed();
                let id = u32::from(id);
                let datagram = recv_ring::parse(&pool.with_prefix(id)[..completion.result() as usize]);
                received += black_box(datagram.map_or(0, |d| d.data.len()));
                pool.release(id);
                batch += 1;
            }
        }
    }
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    assert_eq!(received, 16_000 * payload.len());
    println!("allocations in 16,000 multishot receives (parse, release, refill, re-arm): {allocations}");
    assert_eq!(allocations, 0, "the receive path allocates");
}

/// Reading a TUN queue by multishot Read into its provided ring must not allocate: the
/// take of each buffer (with offloads, the cut of a super-packet into pool buffers), their
/// release to the pool, the ring's refill and the re-arm. Runs on a thread in a new network
/// namespace holding the TUN device (10.99.0.1/24, MTU 1500); `offload` sends UDP GSO bursts of 16.
fn assert_no_allocation_per_tun_read(offload: bool) {
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        // SAFETY: unshare changes only this thread's network namespace.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare(CLONE_NEWNET) needs root");
        let _ = std::fs::write("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1");
        let address = Ipv4Addr::new(10, 99, 0, 1);
        let tun = p2sgw::dataplane::tun::create(
            "p2sgwb0",
            address,
            "10.99.0.0/24".parse().expect("net"),
            &[],
            1500,
            1,
            offload,
        )
        .expect("TUN device");
        assert_eq!(tun.offload.is_some(), offload, "TUN offloads as asked");
        let queue = tun.fds[0].as_raw_fd();
        let sender = std::net::UdpSocket::bind("10.99.0.1:0").expect("sender");
        let to = std::net::SocketAddr::from(([10, 99, 0, 2], 9));
        let payload = [0x38u8; 16 * 1400];
        let (sends, per_send) = if offload {
            p2sgw::dataplane::sys::set_udp_segment(sender.as_raw_fd(), 1400).expect("UDP_SEGMENT");
            (1, payload.len())
        } else {
            (16, 1400)
        };
        let mut ring = IoUring::new(64).expect("ring");
        let mut pool = BufferPool::new(64);
        let mut buffers = TunRing::register(&ring.submitter(), 32, offload).expect("buffer ring");
        let mut packets = Vec::with_capacity(64);
        let mut received = 0usize;
        let mut armed = false;
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        for _ in 0..1000 {
            buffers.refill(&mut pool);
            if !armed {
                let read = opcode::ReadMulti::new(types::Fd(queue), 0, TUN_GROUP).build();
                // SAFETY: the ring's buffers outlive the read.
                unsafe { ring.submission().push(&read).expect("room in the queue") };
                armed = true;
            }
            for _ in 0..sends {
                sender.send_to(&payload[..per_send], to).expect("send");
            }
            let mut batch = 0;
            while batch < 16 {
                ring.submit_and_wait(1).expect("wait");
                for completion in ring.completion() {
                    armed &= cqueue::more(completion.flags());
                    let Some(id) = cqueue::buffer_select(completion.flags()) else { continue };
                    let taken = buffers.take(id, completion.result() as usize, &mut pool, &mut packets);
                    assert_eq!(taken, Ok(offload), "a super-packet with offloads, else a packet");
                    for (b, len) in packets.drain(..) {
                        received += black_box(pool.get(b)[HEADROOM..HEADROOM + len].len());
                        pool.release(b);
                        batch += 1;
                    }
                }
            }
        }
        let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
        assert_eq!(received, 16_000 * (1400 + 28));
        let reads = if offload {
            "1,000 multishot TUN reads of 16-packet super-packets (cut, release"
        } else {
            "16,000 multishot TUN reads (take, release"
        };
        println!("allocations in {reads}, refill, re-arm): {allocations}");
        assert_eq!(allocations, 0, "the TUN read path allocates");
    })
    .join()
    .expect("the TUN read check");
}

fn lookups(c: &mut Criterion) {
    let table = table();
    assert_no_allocation_per_packet(&table);
    assert_no_allocation_per_receive();
    assert_no_allocation_per_tun_read(false);
    assert_no_allocation_per_tun_read(true);

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
    // What a worker does for each packet from the TUN before sealing it: the session, and
    // where its client is (swapped when an OpenVPN client floats).
    group.bench_function("route_by_address_10k", |b| {
        b.iter(|| {
            i = i.wrapping_add(7919) % SESSIONS;
            let session = guard.get(&Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 8, 0, 2)) + i));
            black_box(session.map(|s| **s.transport.load()))
        })
    });
    group.bench_function("by_peer_id_10k", |b| {
        b.iter(|| {
            i = i.wrapping_add(7919) % SESSIONS;
            black_box(table.by_peer_id(i).is_some())
        })
    });
    group.bench_function("esp_by_spi_10k", |b| {
        b.iter(|| {
            i = i.wrapping_add(7919) % SESSIONS;
            black_box(table.inbound_sa(FIRST_SPI + i).is_some())
        })
    });
    group.finish();
}

criterion_group!(benches, lookups);
criterion_main!(benches);
