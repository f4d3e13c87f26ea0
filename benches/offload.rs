//! The data plane's offload glue over tun-rs: splitting a 64 KB TCP super-packet read
//! from the TUN device (TSO) into 1400-byte packets in pool buffers, and coalescing 45
//! such packets of one flow back into one TUN write (GRO; each iteration first puts the
//! packets into pool buffers, as opening them in place does). Before timing, each checks
//! its result: segment count, sizes, checksums and sequence numbers; one write carrying
//! the whole flow.
//!
//!   cargo bench --bench offload

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use p2sgw::dataplane::buffers::{BufId, BufferPool};
use p2sgw::dataplane::offload::{Coalescer, Flushed, VNET_HDR_LEN, WriteFrom, split_tun_read};
use p2sgw::proto::openvpn::data::HEADROOM;

const SEGMENT: usize = 1400;
const SEGMENTS: usize = 45;
const ACK: u8 = 0x10;

fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum >> 16) + (sum & 0xffff);
    }
    sum as u16
}

fn sum(bytes: &[u8]) -> u64 {
    bytes.chunks(2).map(|c| u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum()
}

fn pseudo_sum(packet: &[u8]) -> u64 {
    sum(&packet[12..20]) + 6 + (packet.len() - 20) as u64
}

/// A TCP/IPv4 packet (vnet host to a client) with `data`, checksums valid.
fn tcp_packet(seq: u32, data: &[u8]) -> Vec<u8> {
    let total = 40 + data.len();
    let mut p = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 6, 0, 0, 10, 50, 0, 2, 172, 16, 0, 2];
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    let ip = !fold(sum(&p));
    p[10..12].copy_from_slice(&ip.to_be_bytes());
    p.extend_from_slice(&5201u16.to_be_bytes());
    p.extend_from_slice(&40000u16.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&1u32.to_be_bytes());
    p.extend_from_slice(&[5 << 4, ACK, 0x01, 0xf6, 0, 0, 0, 0]);
    p.extend_from_slice(data);
    let tcp = !fold(pseudo_sum(&p) + sum(&p[20..]));
    p[36..38].copy_from_slice(&tcp.to_be_bytes());
    p
}

/// What a TUN queue with TSO reads: virtio_net_hdr (TCPv4, gso_size 1400, checksum
/// partial) and a 64 KB TCP packet.
fn super_packet_read(data: &[u8]) -> Vec<u8> {
    let mut packet = tcp_packet(1, data);
    let partial = fold(pseudo_sum(&packet));
    packet[36..38].copy_from_slice(&partial.to_be_bytes());
    let hdr = tun_rs::VirtioNetHdr {
        flags: 1,
        gso_type: tun_rs::VIRTIO_NET_HDR_GSO_TCPV4,
        hdr_len: 40,
        gso_size: SEGMENT as u16,
        csum_start: 20,
        csum_offset: 16,
    };
    let mut read = vec![0u8; VNET_HDR_LEN];
    hdr.encode(&mut read).expect("the buffer holds a header");
    read.extend_from_slice(&packet);
    read
}

fn split(c: &mut Criterion) {
    let data: Vec<u8> = (0..SEGMENTS * SEGMENT).map(|i| (i % 251) as u8).collect();
    let read = super_packet_read(&data);
    let mut pool = BufferPool::new(256);
    let mut out: Vec<(BufId, usize)> = Vec::with_capacity(64);

    let mut check = read.clone();
    assert_eq!(split_tun_read(&mut check, &mut pool, &mut out), Ok(true));
    assert_eq!(out.len(), SEGMENTS);
    for (i, &(b, len)) in out.iter().enumerate() {
        assert_eq!(len, 40 + SEGMENT);
        let seg = &pool.get(b)[HEADROOM..HEADROOM + len];
        assert_eq!(fold(sum(&seg[..20])), 0xffff, "IP checksum of segment {i}");
        assert_eq!(fold(pseudo_sum(seg) + sum(&seg[20..])), 0xffff, "TCP checksum of segment {i}");
        assert_eq!(u32::from_be_bytes(seg[24..28].try_into().unwrap()), 1 + (i * SEGMENT) as u32);
        assert_eq!(&seg[40..], &data[i * SEGMENT..(i + 1) * SEGMENT]);
    }
    for (b, _) in out.drain(..) {
        pool.release(b);
    }

    let mut group = c.benchmark_group("offload");
    group.throughput(Throughput::Bytes(data.len() as u64));
    let mut input = read.clone();
    group.bench_function("gso_split_64k_tcp_into_1400", |bench| {
        bench.iter(|| {
            // The split completes checksums in place: start from the kernel's bytes each time.
            input.copy_from_slice(&read);
            split_tun_read(black_box(&mut input), &mut pool, &mut out).expect("a valid super-packet");
            for (b, _) in out.drain(..) {
                pool.release(b);
            }
        })
    });
    group.finish();
}

fn coalesce(c: &mut Criterion) {
    let data: Vec<u8> = (0..SEGMENTS * SEGMENT).map(|i| (i * 3 % 251) as u8).collect();
    let packets: Vec<Vec<u8>> =
        data.chunks(SEGMENT).enumerate().map(|(i, chunk)| tcp_packet(1 + (i * SEGMENT) as u32, chunk)).collect();
    let mut gro = Coalescer::new(true);
    let mut pool = BufferPool::new(256);
    let stage_all = |gro: &mut Coalescer, pool: &mut BufferPool| {
        for p in &packets {
            let id = pool.alloc().expect("the pool holds a batch");
            pool.get_mut(id)[HEADROOM..HEADROOM + p.len()].copy_from_slice(p);
            gro.stage(id, HEADROOM, HEADROOM + p.len());
        }
    };

    stage_all(&mut gro, &mut pool);
    let mut writes = Vec::new();
    let flushed = gro.flush(&mut pool, |from, bytes| writes.push((from, bytes.to_vec())));
    assert_eq!(flushed, Flushed { packets: SEGMENTS, writes: 1, coalesced: 1 });
    let (WriteFrom::Coalesced(slot), write) = &writes[0] else { panic!("a coalesced write expected") };
    let packet = &write[VNET_HDR_LEN..];
    assert_eq!(packet.len(), 40 + data.len());
    assert_eq!(fold(sum(&packet[..20])), 0xffff, "IP checksum of the coalesced packet");
    assert_eq!(&packet[40..], &data[..]);
    gro.written(*slot);
    assert_eq!(pool.available(), 256);

    let mut group = c.benchmark_group("offload");
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.bench_function("gro_coalesce_45x1400_tcp", |bench| {
        bench.iter(|| {
            stage_all(&mut gro, &mut pool);
            let mut written = None;
            let flushed = gro.flush(&mut pool, |from, bytes| {
                black_box(bytes);
                written = Some(from);
            });
            assert_eq!(flushed.writes, 1);
            if let Some(WriteFrom::Coalesced(slot)) = written {
                gro.written(slot);
            }
        })
    });
    group.finish();
}

criterion_group!(benches, split, coalesce);
criterion_main!(benches);
