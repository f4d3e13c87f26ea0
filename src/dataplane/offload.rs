//! Kernel offloads on the TUN device (IFF_VNET_HDR with TUNSETOFFLOAD), over tun-rs's
//! virtio_net_hdr helpers (`gso_split`, `GROTable`).
//!
//! Reads: the kernel hands a queue TCP (TSO) and, with USO, UDP super-packets of up to
//! 64 KiB of one flow behind a virtio_net_hdr. [`split_tun_read`] cuts one into
//! tunnel-sized packets, each in a pool buffer at `HEADROOM`, so that routing and
//! sealing stay as for a plain read.
//!
//! Writes: every packet written carries a virtio_net_hdr in front. The decrypted packets
//! of one completion batch are staged in a [`Coalescer`], which merges consecutive
//! segments of a TCP flow (and of a UDP flow with USO) into one super-packet (GRO), so
//! the kernel takes a burst in one write instead of one write per packet. A batch of
//! one packet is written from its pool buffer, the header in the headroom in front of
//! it; coalescing copies the packets into buffers that can grow to 64 KiB (a pool
//! buffer holds one packet).

use tun_rs::{ExpandBuffer, GROTable, VIRTIO_NET_HDR_GSO_UDP_L4, VIRTIO_NET_HDR_LEN, VirtioNetHdr, gso_split};

use super::buffers::{BUF_SIZE, BufId, BufferPool};
use super::counters::DropReason;
use crate::proto::openvpn::data::HEADROOM;

/// The virtio_net_hdr in front of each read and write.
pub const VNET_HDR_LEN: usize = VIRTIO_NET_HDR_LEN;

/// What one read may bring: the header and an IP packet of at most 64 KiB.
pub const TUN_READ_SIZE: usize = VNET_HDR_LEN + u16::MAX as usize;

/// The most packets one super-packet is split into: 64 KiB at a 256-byte segment size,
/// far below what a tunnel MTU gives (about 45 segments of 1400 bytes).
pub const MAX_SPLIT_SEGMENTS: usize = 256;

// From include/uapi/linux/virtio_net.h (tun-rs does not re-export these two).
const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;
const VIRTIO_NET_HDR_GSO_ECN: u8 = 0x80;
/// Where a UDP header keeps its checksum (a TCP header keeps it at 16).
const UDP_CHECKSUM_OFFSET: u16 = 6;

/// Splits what a read from a TUN queue with offloads brought (`read`: the
/// virtio_net_hdr, then the packet) into plain IP packets, each in a new pool buffer at
/// `HEADROOM`, appended to `out` as (buffer, length). Returns whether it was a
/// super-packet. On error no buffer is left allocated.
pub fn split_tun_read(
    read: &mut [u8],
    pool: &mut BufferPool,
    out: &mut Vec<(BufId, usize)>,
) -> Result<bool, DropReason> {
    let (header, packet) = read.split_at_mut_checked(VNET_HDR_LEN).ok_or(DropReason::Malformed)?;
    if packet.is_empty() {
        return Err(DropReason::Malformed);
    }
    let mut hdr = VirtioNetHdr::decode(header).map_err(|_| DropReason::Malformed)?;
    if hdr.gso_type == VIRTIO_NET_HDR_GSO_NONE {
        if hdr.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
            complete_checksum(packet, hdr.csum_start, hdr.csum_offset)?;
        }
        if packet.len() > BUF_SIZE - HEADROOM {
            return Err(DropReason::Malformed);
        }
        let b = pool.alloc().ok_or(DropReason::Overload)?;
        pool.get_mut(b)[HEADROOM..HEADROOM + packet.len()].copy_from_slice(packet);
        out.push((b, packet.len()));
        return Ok(false);
    }
    let is_v6 = match packet[0] >> 4 {
        4 => false,
        6 => true,
        _ => return Err(DropReason::Malformed),
    };
    // Like tun-rs's own reader: on the forwarding path the kernel's hdr_len may span
    // the whole first segment, so the header length comes from the headers themselves.
    let transport_start = usize::from(hdr.csum_start);
    let transport_header_len = if hdr.gso_type & !VIRTIO_NET_HDR_GSO_ECN == VIRTIO_NET_HDR_GSO_UDP_L4 {
        8
    } else {
        let data_offset = *packet.get(transport_start + 12).ok_or(DropReason::Malformed)?;
        usize::from(data_offset >> 4) * 4
    };
    let header_len = transport_start + transport_header_len;
    hdr.hdr_len = u16::try_from(header_len).map_err(|_| DropReason::Malformed)?;
    let payload = packet.len().checked_sub(header_len).ok_or(DropReason::Malformed)?;
    if hdr.gso_size == 0 || payload == 0 {
        return Err(DropReason::Malformed);
    }
    let segments = payload.div_ceil(usize::from(hdr.gso_size));
    if segments > MAX_SPLIT_SEGMENTS || segments > pool.available() {
        return Err(DropReason::Overload);
    }
    let mut ids = [0 as BufId; MAX_SPLIT_SEGMENTS];
    for id in &mut ids[..segments] {
        *id = pool.alloc().expect("checked that the pool has this many buffers");
    }
    let ids = &mut ids[..segments];
    // Ascending, to borrow them all at once; segment i goes to the i-th smallest id.
    ids.sort_unstable();
    let mut sizes = [0usize; MAX_SPLIT_SEGMENTS];
    let mut buffers: [&mut [u8]; MAX_SPLIT_SEGMENTS] = std::array::from_fn(|_| Default::default());
    pool.get_many_mut(ids, &mut buffers[..segments]);
    let split = gso_split(packet, hdr, &mut buffers[..segments], &mut sizes[..segments], HEADROOM, is_v6);
    match split {
        Ok(n) => {
            out.extend(ids[..n].iter().copied().zip(sizes[..n].iter().copied()));
            for &id in &ids[n..] {
                pool.release(id);
            }
            Ok(true)
        }
        Err(_) => {
            for &id in ids.iter() {
                pool.release(id);
            }
            Err(DropReason::Malformed)
        }
    }
}

/// Finishes a checksum the kernel left partial (CHECKSUM_PARTIAL: the pseudo-header sum
/// sits in the checksum field) over `packet[csum_start..]`.
fn complete_checksum(packet: &mut [u8], csum_start: u16, csum_offset: u16) -> Result<(), DropReason> {
    let start = usize::from(csum_start);
    let at = start + usize::from(csum_offset);
    if at + 2 > packet.len() {
        return Err(DropReason::Malformed);
    }
    let partial = u16::from_be_bytes([packet[at], packet[at + 1]]);
    packet[at..at + 2].fill(0);
    let mut sum = !tun_rs::checksum(&packet[start..], u64::from(partial));
    // A UDP checksum of 0 means "none"; a computed 0 is sent as all ones (RFC 768).
    if sum == 0 && csum_offset == UDP_CHECKSUM_OFFSET {
        sum = 0xffff;
    }
    packet[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    Ok(())
}

/// A staged packet for a TUN write: its virtio_net_hdr, then the IP packet. The head of
/// a coalesced flow grows to hold the whole super-packet.
pub struct GroBuffer(Vec<u8>);

/// The most a coalesced packet may grow to: an IP packet's 64 KiB limit. The vector
/// grows on demand (and keeps its capacity when recycled); tun-rs only asks whether
/// the next segment would fit.
const GRO_CAPACITY: usize = 2 * VNET_HDR_LEN + u16::MAX as usize;

impl AsRef<[u8]> for GroBuffer {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl AsMut<[u8]> for GroBuffer {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

impl ExpandBuffer for GroBuffer {
    fn buf_capacity(&self) -> usize {
        GRO_CAPACITY
    }

    fn buf_resize(&mut self, new_len: usize, value: u8) {
        self.0.resize(new_len, value);
    }

    fn buf_extend_from_slice(&mut self, src: &[u8]) {
        self.0.extend_from_slice(src);
    }
}

/// Packets staged per flush at most (tun-rs indexes them with 16 bits; this bounds
/// the memory of one batch).
pub const MAX_STAGED: usize = 256;
/// Recycled buffers that grew beyond a plain packet are kept up to this many.
const KEEP_GROWN: usize = 32;

/// Where the bytes of a TUN write are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteFrom {
    /// A lone packet in its pool buffer: release the buffer once written.
    Pool(BufId),
    /// A coalescer buffer: report the slot to [`Coalescer::written`] once written.
    Coalesced(u32),
}

/// Marks a staged packet's virtio_net_hdr before coalescing. tun-rs writes a header
/// (GSO type 0, 1, 4 or 5) into every packet that remains to be written and leaves the
/// packets merged into another untouched; `GROTable` does not expose its list of the
/// former, so the mark tells them apart.
const NOT_WRITTEN: u8 = 0xff;

/// What one flush did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Flushed {
    /// Packets that were staged.
    pub packets: usize,
    /// Writes submitted for them.
    pub writes: usize,
    /// Of those, writes of a coalesced super-packet.
    pub coalesced: usize,
}

/// The TUN writes of one completion batch: staged, coalesced per flow at the end of the
/// batch, and kept alive while the kernel writes them.
pub struct Coalescer {
    table: GROTable,
    udp: bool,
    /// This batch's packets, in their pool buffers: (buffer, start, end).
    pending: Vec<(BufId, usize, usize)>,
    staged: Vec<GroBuffer>,
    spare: Vec<GroBuffer>,
    in_flight: Vec<Option<GroBuffer>>,
    free_slots: Vec<u32>,
}

impl Coalescer {
    /// `udp`: the device takes UDP super-packets (USO), so UDP flows coalesce too.
    pub fn new(udp: bool) -> Coalescer {
        Coalescer {
            table: GROTable::new(),
            udp,
            pending: Vec::with_capacity(MAX_STAGED),
            staged: Vec::with_capacity(MAX_STAGED),
            spare: Vec::new(),
            in_flight: Vec::new(),
            free_slots: Vec::new(),
        }
    }

    /// Stages the IP packet at `bufs[id][start..end]` (the coalescer holds the buffer
    /// until the flush); true when the stage is full and must be flushed now.
    pub fn stage(&mut self, id: BufId, start: usize, end: usize) -> bool {
        self.pending.push((id, start, end));
        self.pending.len() >= MAX_STAGED
    }

    /// Coalesces the staged packets and hands each resulting write (where its bytes are,
    /// and the bytes, header included) to `submit`; the bytes stay put until reported
    /// written. Staged pool buffers not handed on are released.
    pub fn flush(&mut self, bufs: &mut BufferPool, mut submit: impl FnMut(WriteFrom, &[u8])) -> Flushed {
        let mut flushed = Flushed { packets: self.pending.len(), ..Flushed::default() };
        if let [(id, start, end)] = self.pending[..]
            && start >= VNET_HDR_LEN
        {
            // Nothing to coalesce with: written in place.
            self.pending.clear();
            let buf = bufs.get_mut(id);
            buf[start - VNET_HDR_LEN..start].fill(0);
            submit(WriteFrom::Pool(id), &buf[start - VNET_HDR_LEN..end]);
            flushed.writes = 1;
            return flushed;
        }
        let mut staged = std::mem::take(&mut self.staged);
        for (id, start, end) in self.pending.drain(..) {
            let mut buf = self.spare.pop().unwrap_or_else(|| GroBuffer(Vec::with_capacity(VNET_HDR_LEN + BUF_SIZE)));
            buf.0.clear();
            buf.0.resize(VNET_HDR_LEN, 0);
            buf.0.extend_from_slice(&bufs.get(id)[start..end]);
            bufs.release(id);
            staged.push(buf);
        }
        if staged.is_empty() {
            self.staged = staged;
            return flushed;
        }
        for buf in &mut staged {
            buf.0[..VNET_HDR_LEN].fill(NOT_WRITTEN);
        }
        if self.table.apply_gro(&mut staged, VNET_HDR_LEN, self.udp).is_err() {
            // Only on a broken invariant (offset, batch size): write them one by one.
            for buf in &mut staged {
                buf.0[..VNET_HDR_LEN].fill(0);
            }
        }
        for buf in staged.drain(..) {
            let gso_type = buf.0[1];
            if gso_type == NOT_WRITTEN {
                self.recycle(buf);
                continue;
            }
            let slot = self.free_slots.pop().unwrap_or_else(|| {
                self.in_flight.push(None);
                (self.in_flight.len() - 1) as u32
            });
            submit(WriteFrom::Coalesced(slot), &buf.0);
            // Moving the vector keeps its heap bytes where the kernel reads them.
            self.in_flight[slot as usize] = Some(buf);
            flushed.writes += 1;
            if gso_type != VIRTIO_NET_HDR_GSO_NONE {
                flushed.coalesced += 1;
            }
        }
        self.staged = staged;
        flushed
    }

    /// The kernel is done with the write of `slot`.
    pub fn written(&mut self, slot: u32) {
        if let Some(buf) = self.in_flight.get_mut(slot as usize).and_then(Option::take) {
            self.free_slots.push(slot);
            self.recycle(buf);
        }
    }

    fn recycle(&mut self, buf: GroBuffer) {
        let grown = buf.0.capacity() > VNET_HDR_LEN + BUF_SIZE;
        if self.spare.len() < MAX_STAGED && (!grown || self.spare.len() < KEEP_GROWN) {
            self.spare.push(buf);
        }
    }
}

/// Fixed buffers for reads from a TUN queue with offloads (each holds a super-packet).
pub struct ReadBuffers {
    data: Vec<Box<[u8]>>,
    free: Vec<u32>,
}

impl ReadBuffers {
    pub fn new(count: usize) -> ReadBuffers {
        ReadBuffers {
            data: (0..count).map(|_| vec![0u8; TUN_READ_SIZE].into_boxed_slice()).collect(),
            free: (0..count as u32).rev().collect(),
        }
    }

    pub fn alloc(&mut self) -> Option<u32> {
        self.free.pop()
    }

    pub fn release(&mut self, id: u32) {
        debug_assert!(!self.free.contains(&id), "read buffer {id} released twice");
        self.free.push(id);
    }

    pub fn get_mut(&mut self, id: u32) -> &mut [u8] {
        &mut self.data[id as usize]
    }

    /// Each buffer's memory, in buffer order, for registering with the ring (fixed
    /// buffers).
    pub fn regions(&mut self) -> impl Iterator<Item = libc::iovec> + '_ {
        self.data.iter_mut().map(|b| libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: b.len() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: [u8; 4] = [10, 50, 0, 2];
    const DST: [u8; 4] = [172, 16, 0, 2];

    fn fold(mut sum: u64) -> u16 {
        while sum > 0xffff {
            sum = (sum >> 16) + (sum & 0xffff);
        }
        sum as u16
    }

    /// RFC 1071 sum over 16-bit words.
    fn sum(bytes: &[u8]) -> u64 {
        bytes.chunks(2).map(|c| u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum()
    }

    fn ipv4_header_valid(packet: &[u8]) -> bool {
        fold(sum(&packet[..20])) == 0xffff
    }

    fn transport_checksum_valid(packet: &[u8], protocol: u8) -> bool {
        let transport = &packet[20..];
        let pseudo = sum(&packet[12..20]) + u64::from(protocol) + transport.len() as u64;
        fold(pseudo + sum(transport)) == 0xffff
    }

    fn ipv4_header(total_len: usize, protocol: u8, id: u16) -> Vec<u8> {
        let mut h = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, protocol, 0, 0];
        h[2..4].copy_from_slice(&(total_len as u16).to_be_bytes());
        h[4..6].copy_from_slice(&id.to_be_bytes());
        h.extend_from_slice(&SRC);
        h.extend_from_slice(&DST);
        let c = !fold(sum(&h));
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h
    }

    fn payload(len: usize, seed: usize) -> Vec<u8> {
        (0..len).map(|i| ((i * 7 + seed) % 251) as u8).collect()
    }

    /// A TCP/IPv4 packet from the vnet host to a client, checksums valid.
    fn tcp_packet(seq: u32, flags: u8, data: &[u8]) -> Vec<u8> {
        let mut p = ipv4_header(40 + data.len(), 6, 7);
        let mut tcp = vec![0u8; 20];
        tcp[0..2].copy_from_slice(&5201u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&40000u16.to_be_bytes());
        tcp[4..8].copy_from_slice(&seq.to_be_bytes());
        tcp[8..12].copy_from_slice(&99u32.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = flags;
        tcp[14..16].copy_from_slice(&502u16.to_be_bytes());
        tcp.extend_from_slice(data);
        p.extend_from_slice(&tcp);
        let c = !fold(sum(&p[12..20]) + 6 + tcp.len() as u64 + sum(&p[20..]));
        p[36..38].copy_from_slice(&c.to_be_bytes());
        p
    }

    const ACK: u8 = 0x10;
    const PSH_ACK: u8 = 0x18;

    /// What the kernel hands a TUN queue with TSO: the virtio_net_hdr of a TCPv4
    /// super-packet (checksum partial: the pseudo-header sum in the TCP checksum) and
    /// one IP packet of `data.len()` bytes of payload.
    fn tso_read(seq: u32, data: &[u8], gso_size: u16) -> Vec<u8> {
        let mut packet = tcp_packet(seq, PSH_ACK, data);
        let pseudo = !fold(sum(&packet[12..20]) + 6 + (packet.len() - 20) as u64);
        packet[36..38].copy_from_slice(&(!pseudo).to_be_bytes());
        let hdr = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type: tun_rs::VIRTIO_NET_HDR_GSO_TCPV4,
            hdr_len: 40,
            gso_size,
            csum_start: 20,
            csum_offset: 16,
        };
        let mut read = vec![0u8; VNET_HDR_LEN];
        hdr.encode(&mut read).unwrap();
        read.extend_from_slice(&packet);
        read
    }

    #[test]
    fn a_tso_super_packet_splits_into_valid_segments() {
        let data = payload(45 * 1400 - 600, 3);
        let mut read = tso_read(1_000_000, &data, 1400);
        let mut pool = BufferPool::new(64);
        let mut out = Vec::new();
        assert_eq!(split_tun_read(&mut read, &mut pool, &mut out), Ok(true));
        assert_eq!(out.len(), 45);
        assert_eq!(pool.available(), 64 - 45);
        let mut reassembled = Vec::new();
        for (i, &(b, len)) in out.iter().enumerate() {
            let last = i == out.len() - 1;
            assert_eq!(len, 40 + if last { 800 } else { 1400 }, "segment {i}");
            let seg = &pool.get(b)[HEADROOM..HEADROOM + len];
            assert_eq!(usize::from(u16::from_be_bytes([seg[2], seg[3]])), len);
            assert_eq!(u16::from_be_bytes([seg[4], seg[5]]), 7 + i as u16, "IP id advances");
            assert!(ipv4_header_valid(seg), "IP checksum of segment {i}");
            assert!(transport_checksum_valid(seg, 6), "TCP checksum of segment {i}");
            assert_eq!(u32::from_be_bytes(seg[24..28].try_into().unwrap()), 1_000_000 + 1400 * i as u32);
            assert_eq!(seg[33], if last { PSH_ACK } else { ACK }, "PSH on the last segment only");
            reassembled.extend_from_slice(&seg[40..]);
        }
        assert_eq!(reassembled, data);
    }

    #[test]
    fn a_plain_read_with_a_partial_checksum_is_completed() {
        let packet = tcp_packet(5, PSH_ACK, &payload(300, 1));
        let mut partial = packet.clone();
        let pseudo = !fold(sum(&partial[12..20]) + 6 + (partial.len() - 20) as u64);
        partial[36..38].copy_from_slice(&(!pseudo).to_be_bytes());
        let hdr =
            VirtioNetHdr { flags: VIRTIO_NET_HDR_F_NEEDS_CSUM, csum_start: 20, csum_offset: 16, ..Default::default() };
        let mut read = vec![0u8; VNET_HDR_LEN];
        hdr.encode(&mut read).unwrap();
        read.extend_from_slice(&partial);
        let mut pool = BufferPool::new(4);
        let mut out = Vec::new();
        assert_eq!(split_tun_read(&mut read, &mut pool, &mut out), Ok(false));
        let [(b, len)] = out[..] else { panic!("one packet expected, got {out:?}") };
        assert_eq!(&pool.get(b)[HEADROOM..HEADROOM + len], &packet[..]);
    }

    #[test]
    fn broken_reads_are_refused_and_leave_no_buffer_taken() {
        let mut pool = BufferPool::new(64);
        let mut out = Vec::new();
        // Shorter than the header; a checksum field past the end; a TCP header length
        // past the packet; no buffers left for all segments.
        assert_eq!(split_tun_read(&mut [0u8; 5], &mut pool, &mut out), Err(DropReason::Malformed));
        let mut read = tso_read(1, &payload(300, 0), 1400);
        read[6..8].copy_from_slice(&400u16.to_ne_bytes()); // csum_start beyond the packet
        read[1] = VIRTIO_NET_HDR_GSO_NONE;
        assert_eq!(split_tun_read(&mut read, &mut pool, &mut out), Err(DropReason::Malformed));
        read[1] = tun_rs::VIRTIO_NET_HDR_GSO_TCPV4;
        assert_eq!(split_tun_read(&mut read, &mut pool, &mut out), Err(DropReason::Malformed));
        let mut small = BufferPool::new(2);
        let mut read = tso_read(1, &payload(3000, 0), 1400);
        assert_eq!(split_tun_read(&mut read, &mut small, &mut out), Err(DropReason::Overload));
        assert!(out.is_empty());
        assert_eq!(pool.available(), 64);
        assert_eq!(small.available(), 2);
    }

    /// Reads and decrypted packets come from anywhere: mutated real ones must neither
    /// panic nor leak pool buffers.
    #[test]
    fn mutated_reads_and_packets_are_survived() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let read = tso_read(77, &payload(5000, 4), 1400);
        let packet = tcp_packet(77, ACK, &payload(1000, 5));
        let mut pool = BufferPool::new(64);
        let mut gro = Coalescer::new(true);
        let mut out = Vec::new();
        for _ in 0..20_000 {
            let mut r = read.clone();
            let mut p = packet.clone();
            for _ in 0..1 + next() % 4 {
                let at = next() as usize;
                r[at % read.len()] ^= 1 << (next() % 8);
                p[at % packet.len()] ^= 1 << (next() % 8);
            }
            r.truncate(VNET_HDR_LEN + next() as usize % (read.len() - VNET_HDR_LEN + 1));
            let _ = split_tun_read(&mut r, &mut pool, &mut out);
            for (b, _) in out.drain(..) {
                pool.release(b);
            }
            stage(&mut gro, &mut pool, &packet);
            stage(&mut gro, &mut pool, &p);
            flush_all(&mut gro, &mut pool);
        }
        assert_eq!(pool.available(), 64);
    }

    /// Stages `packet` as the worker does: in a pool buffer at HEADROOM.
    fn stage(gro: &mut Coalescer, pool: &mut BufferPool, packet: &[u8]) -> bool {
        let id = pool.alloc().unwrap();
        pool.get_mut(id)[HEADROOM..HEADROOM + packet.len()].copy_from_slice(packet);
        gro.stage(id, HEADROOM, HEADROOM + packet.len())
    }

    /// Flushes, and completes every write at once.
    fn flush_all(gro: &mut Coalescer, pool: &mut BufferPool) -> (Flushed, Vec<Vec<u8>>) {
        let mut writes = Vec::new();
        let mut done = Vec::new();
        let flushed = gro.flush(pool, |from, bytes| {
            done.push(from);
            writes.push(bytes.to_vec());
        });
        for from in done {
            match from {
                WriteFrom::Pool(id) => pool.release(id),
                WriteFrom::Coalesced(slot) => gro.written(slot),
            }
        }
        (flushed, writes)
    }

    #[test]
    fn one_flow_of_a_batch_is_coalesced_into_one_write() {
        let mut gro = Coalescer::new(false);
        let mut pool = BufferPool::new(64);
        let data = payload(45 * 1400, 9);
        for (i, chunk) in data.chunks(1400).enumerate() {
            let flags = if i == 44 { PSH_ACK } else { ACK };
            assert!(!stage(&mut gro, &mut pool, &tcp_packet(7_000 + 1400 * i as u32, flags, chunk)));
        }
        let (flushed, writes) = flush_all(&mut gro, &mut pool);
        assert_eq!(pool.available(), 64);
        assert_eq!(flushed, Flushed { packets: 45, writes: 1, coalesced: 1 });
        let write = &writes[0];
        let hdr = VirtioNetHdr::decode(write).unwrap();
        assert_eq!(hdr.gso_type, tun_rs::VIRTIO_NET_HDR_GSO_TCPV4);
        assert_eq!(hdr.gso_size, 1400);
        assert_eq!((hdr.csum_start, hdr.csum_offset), (20, 16));
        let packet = &write[VNET_HDR_LEN..];
        assert_eq!(packet.len(), 40 + data.len());
        assert!(ipv4_header_valid(packet));
        assert_eq!(u32::from_be_bytes(packet[24..28].try_into().unwrap()), 7_000);
        assert_eq!(packet[33], PSH_ACK);
        assert_eq!(&packet[40..], &data[..]);
    }

    #[test]
    fn other_packets_and_flows_are_written_apart_with_a_plain_header() {
        let mut gro = Coalescer::new(false);
        let mut pool = BufferPool::new(64);
        let icmp = {
            let mut p = ipv4_header(28, 1, 1);
            p.extend_from_slice(&[8, 0, 0xf7, 0xff, 0, 0, 0, 0]);
            p
        };
        stage(&mut gro, &mut pool, &tcp_packet(100, ACK, &payload(1000, 0)));
        stage(&mut gro, &mut pool, &icmp);
        stage(&mut gro, &mut pool, &tcp_packet(1100, ACK, &payload(1000, 1)));
        // A gap in sequence numbers: its own write.
        stage(&mut gro, &mut pool, &tcp_packet(9_000, ACK, &payload(1000, 2)));
        let (flushed, writes) = flush_all(&mut gro, &mut pool);
        assert_eq!(flushed, Flushed { packets: 4, writes: 3, coalesced: 1 });
        let plain: Vec<&Vec<u8>> = writes.iter().filter(|w| w[1] == VIRTIO_NET_HDR_GSO_NONE).collect();
        assert_eq!(plain.len(), 2);
        assert!(plain.iter().all(|w| w[..VNET_HDR_LEN].iter().all(|&b| b == 0)));
        assert!(plain.iter().any(|w| w[VNET_HDR_LEN..] == icmp[..]));
        // The next batch starts afresh; a lone packet is written from its pool buffer.
        stage(&mut gro, &mut pool, &icmp);
        let mut lone = None;
        let flushed = gro.flush(&mut pool, |from, bytes| lone = Some((from, bytes.to_vec())));
        assert_eq!(flushed, Flushed { packets: 1, writes: 1, coalesced: 0 });
        let Some((WriteFrom::Pool(id), bytes)) = lone else { panic!("written in place expected, got {lone:?}") };
        assert_eq!(bytes[..VNET_HDR_LEN], [0; VNET_HDR_LEN]);
        assert_eq!(bytes[VNET_HDR_LEN..], icmp[..]);
        pool.release(id);
        assert_eq!(pool.available(), 64);
    }
}
