//! What the SO_REUSEPORT steering program costs the kernel: 1400-byte P_DATA_V2
//! datagrams sent over loopback to a group of two sockets and received, in bursts of 32,
//! with the kernel's hash choosing the socket and with the OpenVPN steering program
//! (dataplane/reuseport.rs) choosing it by peer-id. Send and receive run on the calling
//! thread, so the difference per datagram is the program's run in the receive path.
//! Before timing, it checks that the steered datagrams land on the socket of their
//! peer-id.
//!
//!   cargo bench --bench reuseport

use std::hint::black_box;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use p2sgw::dataplane::reuseport::{attach, program_for};
use p2sgw::dataplane::{UdpRole, sys};

const BURST: u32 = 32;
const WORKERS: usize = 2;

/// A group of two sockets on a loopback port, with the OpenVPN program when `steered`.
fn group(steered: bool) -> (Vec<UdpSocket>, SocketAddr) {
    let first = UdpSocket::from(sys::udp_socket(&"127.0.0.1:0".parse().unwrap()).expect("socket"));
    let address = first.local_addr().expect("bound");
    let second = UdpSocket::from(sys::udp_socket(&address).expect("socket"));
    if steered {
        attach(first.as_raw_fd(), &program_for(UdpRole::OpenVpn, WORKERS)).expect("the kernel takes the program");
    }
    let sockets = vec![first, second];
    for s in &sockets {
        s.set_nonblocking(true).expect("non-blocking");
    }
    (sockets, address)
}

fn data_v2(peer_id: u32) -> Vec<u8> {
    let mut packet = vec![0x5a; 1400];
    packet[..4].copy_from_slice(&((9 << 27) | peer_id).to_be_bytes());
    packet
}

/// Sends a burst (peer-ids 0..BURST) and receives it; returns how many each socket got.
fn burst(sender: &UdpSocket, to: SocketAddr, sockets: &[UdpSocket], packets: &[Vec<u8>], buf: &mut [u8]) -> [u32; 2] {
    for p in packets {
        sender.send_to(p, to).expect("send");
    }
    let mut got = [0u32; 2];
    while got.iter().sum::<u32>() < BURST {
        for (i, s) in sockets.iter().enumerate() {
            while let Ok(n) = s.recv(buf) {
                black_box(&buf[..n]);
                got[i] += 1;
            }
        }
    }
    got
}

fn steering(c: &mut Criterion) {
    let packets: Vec<Vec<u8>> = (0..BURST).map(data_v2).collect();
    let sender = UdpSocket::bind("127.0.0.1:0").expect("sender");
    let mut buf = vec![0u8; 2048];
    let mut group_of = |steered: bool| {
        let (sockets, address) = group(steered);
        if steered {
            // Half the peer-ids are even: each socket gets its half, whatever the hash says.
            assert_eq!(burst(&sender, address, &sockets, &packets, &mut buf), [BURST / 2, BURST / 2]);
        }
        (sockets, address)
    };
    let hashed = group_of(false);
    let steered = group_of(true);
    let mut bench = c.benchmark_group("reuseport_receive");
    bench.throughput(Throughput::Elements(u64::from(BURST)));
    for (name, (sockets, address)) in [("hash", &hashed), ("steered_by_peer_id", &steered)] {
        bench.bench_function(name, |b| b.iter(|| burst(&sender, *address, sockets, &packets, &mut buf)));
    }
    bench.finish();
}

criterion_group!(benches, steering);
criterion_main!(benches);
