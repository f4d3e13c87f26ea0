//! Provided buffer rings for multishot operations: one multishot receive per UDP socket and
//! one multishot read on the TUN queue stay armed, and the kernel picks each datagram's or
//! packet's buffer from a ring the worker keeps filled, instead of the worker arming one
//! `RecvMsg` or `Read` per buffer.
//!
//! Each UDP buffer receives, back to back: a 16-byte `io_uring_recvmsg_out` header, the
//! sender's address in a field of [`NAME_LEN`] bytes, the control messages in a field of
//! [`CONTROL_LEN`] bytes, then the datagram. The two fields are sized so that the header
//! part is exactly a pool buffer's receive room ([`RECV_PREFIX`]): a plain datagram lands
//! at offset 0 of its pool buffer and is opened and written to the TUN in place. GRO
//! receives (up to 64 KiB) get a ring of large buffers of their own ([`LargeRing`]),
//! copied apart into pool buffers as GRO receives always were.
//!
//! The TUN read ([`TunRing`]) takes pool buffers offered from `HEADROOM` on, so that a
//! packet is sealed in place; with offloads, large buffers for a virtio_net_hdr and a
//! super-packet, cut into pool buffers as before.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::io;
use std::mem::{size_of, zeroed};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::Submitter;
use io_uring::types::{BufRingEntry, RecvMsgOut};

use super::buffers::{BufId, BufferPool, RECV_PREFIX};
use super::counters::DropReason;
use super::gro::{GRO_RECV_SIZE, Received};
use super::offload::{TUN_READ_SIZE, split_tun_read};
use super::sys;
use crate::proto::openvpn::data::HEADROOM;

/// The sender's address field: a sockaddr_in6 (28 bytes), rounded up to 8 so that the
/// control messages after it stay aligned.
pub const NAME_LEN: usize = 32;
/// The control messages field: an IPv6 packet-info message (40 bytes) and a UDP_GRO
/// one (24 bytes), with slack.
pub const CONTROL_LEN: usize = 80;
const RECVMSG_OUT_LEN: usize = 16;
const _: () = assert!(RECVMSG_OUT_LEN + NAME_LEN + CONTROL_LEN == RECV_PREFIX);

/// Buffer group ids: pool buffers for plain receives, large buffers for GRO receives, and
/// the buffers of the TUN queue's read.
pub const PLAIN_GROUP: u16 = 0;
pub const GRO_GROUP: u16 = 1;
pub const TUN_GROUP: u16 = 2;

/// The message header a multishot receive is armed with: only the sizes of the address
/// and control fields matter (the kernel lays each buffer out by them).
pub fn multishot_msghdr() -> libc::msghdr {
    // SAFETY: msghdr is plain C data; all-zero is valid.
    let mut hdr: libc::msghdr = unsafe { zeroed() };
    hdr.msg_namelen = NAME_LEN as libc::socklen_t;
    hdr.msg_controllen = CONTROL_LEN;
    hdr
}

/// What a multishot receive wrote into `buffer` (the completion's result bytes of it):
/// the datagram, its sender and control messages. None when the layout does not parse,
/// the sender is missing, or anything was cut short (a datagram larger than the buffer,
/// or control messages that did not fit): such a datagram is dropped.
pub fn parse(buffer: &[u8]) -> Option<Received<'_>> {
    let out = RecvMsgOut::parse(buffer, &multishot_msghdr()).ok()?;
    if out.is_payload_truncated() || out.is_control_data_truncated() || out.is_name_data_truncated() {
        return None;
    }
    // SAFETY: sockaddr_storage is plain C data; all-zero is valid (family 0: no address).
    let mut name: libc::sockaddr_storage = unsafe { zeroed() };
    let name_bytes = out.name_data();
    // SAFETY: at most NAME_LEN (32) bytes go into the 128-byte storage.
    unsafe {
        std::ptr::copy_nonoverlapping(
            name_bytes.as_ptr(),
            (&mut name as *mut libc::sockaddr_storage).cast::<u8>(),
            name_bytes.len().min(NAME_LEN),
        )
    };
    let peer = sys::sockaddr_to(&name);
    // The control messages are walked in an aligned copy, zero-padded well past the
    // field: a length in a message header can then never lead a read outside it.
    let control_bytes = out.control_data();
    let mut control = [0u64; 2 * CONTROL_LEN / 8];
    let used = control_bytes.len().min(CONTROL_LEN);
    // SAFETY: `used` bytes fit the copy (CONTROL_LEN of 2 * CONTROL_LEN).
    unsafe { std::ptr::copy_nonoverlapping(control_bytes.as_ptr(), control.as_mut_ptr().cast::<u8>(), used) };
    // SAFETY: msghdr is plain C data; all-zero is valid.
    let mut hdr: libc::msghdr = unsafe { zeroed() };
    hdr.msg_control = control.as_mut_ptr().cast();
    hdr.msg_controllen = used;
    let control = sys::receive_control(&hdr);
    // The kernel lays the datagram right after the two fields.
    let data = buffer.get(RECV_PREFIX..RECV_PREFIX + out.payload_data().len())?;
    Some(Received { data, peer, local: control.local, segment: control.gro_segment })
}

/// A provided buffer ring: the entries the kernel takes buffers from, in page-aligned
/// memory of ours. The worker adds buffers at the tail and publishes them; the kernel
/// consumes them from the head, one per datagram, and names the buffer in the completion.
pub struct BufRing {
    entries: NonNull<BufRingEntry>,
    layout: Layout,
    mask: u16,
    tail: u16,
    /// Buffers added and not yet consumed by a receive.
    held: usize,
}

impl BufRing {
    /// A ring of `entries` (a power of two, at most 32768), registered with `submitter`
    /// as buffer group `group`.
    pub fn register(submitter: &Submitter<'_>, entries: u16, group: u16) -> io::Result<BufRing> {
        assert!(entries.is_power_of_two() && entries <= 32768);
        let layout = Layout::from_size_align(usize::from(entries) * size_of::<BufRingEntry>(), 4096)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: the layout has a non-zero size.
        let memory = unsafe { alloc_zeroed(layout) }.cast::<BufRingEntry>();
        let entries_ptr = NonNull::new(memory).ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        let ring = BufRing { entries: entries_ptr, layout, mask: entries - 1, tail: 0, held: 0 };
        // SAFETY: the memory is page-aligned, holds `entries` entries, and lives as long as
        // the BufRing; the worker drops its ring (which unregisters the group) first.
        unsafe { submitter.register_buf_ring_with_flags(memory as u64, entries, group, 0) }?;
        Ok(ring)
    }

    pub fn capacity(&self) -> usize {
        usize::from(self.mask) + 1
    }

    pub fn held(&self) -> usize {
        self.held
    }

    /// Adds a buffer at the tail (seen by the kernel after [`BufRing::publish`]).
    pub fn add(&mut self, addr: *mut u8, len: u32, id: u16) {
        assert!(self.held < self.capacity(), "buffer ring overfilled");
        // SAFETY: the index is masked into the ring's entries.
        let entry = unsafe { &mut *self.entries.as_ptr().add(usize::from(self.tail & self.mask)) };
        entry.set_addr(addr as u64);
        entry.set_len(len);
        entry.set_bid(id);
        self.tail = self.tail.wrapping_add(1);
        self.held += 1;
    }

    /// Hands the buffers added so far to the kernel.
    pub fn publish(&self) {
        // SAFETY: the tail field lies in the first entry, inside our memory; the kernel
        // reads it concurrently, hence the atomic store (release: entries first).
        unsafe {
            let tail = BufRingEntry::tail(self.entries.as_ptr()).cast_mut();
            (*tail.cast::<AtomicU16>()).store(self.tail, Ordering::Release);
        }
    }

    /// A receive took one of the buffers.
    pub fn consumed(&mut self) {
        self.held = self.held.saturating_sub(1);
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `register` with this layout.
        unsafe { dealloc(self.entries.as_ptr().cast(), self.layout) };
    }
}

/// Large buffers in a provided ring of their own, each going back to the ring as soon as
/// what the kernel put into it is copied apart into pool buffers: GRO receives
/// ([`GRO_BUFFER`] each) and, with TUN offloads, TUN reads ([`TUN_READ_SIZE`]).
pub struct LargeRing {
    ring: BufRing,
    memory: Box<[u8]>,
    /// What the kernel may write into one buffer.
    size: usize,
    /// From one buffer's start to the next: the size rounded up to a cache line.
    stride: usize,
}

/// A GRO ring buffer: the receive's header part, then up to 64 KiB of datagrams.
pub const GRO_BUFFER: usize = RECV_PREFIX + GRO_RECV_SIZE;

impl LargeRing {
    /// `count` buffers (a power of two) of `size` bytes, all handed to the kernel as
    /// buffer group `group`.
    pub fn register(submitter: &Submitter<'_>, group: u16, count: u16, size: usize) -> io::Result<LargeRing> {
        let ring = BufRing::register(submitter, count, group)?;
        let stride = size.next_multiple_of(64);
        let memory = vec![0; usize::from(count) * stride].into_boxed_slice();
        let mut large = LargeRing { ring, memory, size, stride };
        for id in 0..count {
            large.recycle(id);
        }
        large.ring.publish();
        Ok(large)
    }

    /// The buffer `id` the kernel filled.
    pub fn get(&self, id: u16) -> Option<&[u8]> {
        self.memory.get(usize::from(id) * self.stride..)?.get(..self.size)
    }

    pub fn get_mut(&mut self, id: u16) -> Option<&mut [u8]> {
        self.memory.get_mut(usize::from(id) * self.stride..)?.get_mut(..self.size)
    }

    /// The kernel took buffer `id`; the worker is done with it.
    pub fn recycle(&mut self, id: u16) {
        let (size, stride) = (self.size, self.stride);
        if let Some(buffer) = self.memory.get_mut(usize::from(id) * stride..).and_then(|b| b.get_mut(..size)) {
            self.ring.add(buffer.as_mut_ptr(), size as u32, id);
        }
    }

    pub fn ring(&mut self) -> &mut BufRing {
        &mut self.ring
    }
}

/// The provided buffers of the multishot read on a worker's TUN queue (buffer group
/// [`TUN_GROUP`]).
pub enum TunRing {
    /// Pool buffers, each offered from `HEADROOM` on: a packet lands where the packet path
    /// seals it in place, the data-channel header's room in front of it.
    Pool(BufRing),
    /// With offloads: large buffers, each for a virtio_net_hdr and a packet or super-packet
    /// of up to 64 KiB, cut into pool buffers by [`split_tun_read`].
    Large(LargeRing),
}

impl TunRing {
    /// A ring of `count` buffers (a power of two): large ones, all handed to the kernel,
    /// with `offload`; else pool buffers, added by [`TunRing::refill`].
    pub fn register(submitter: &Submitter<'_>, count: u16, offload: bool) -> io::Result<TunRing> {
        Ok(if offload {
            TunRing::Large(LargeRing::register(submitter, TUN_GROUP, count, TUN_READ_SIZE)?)
        } else {
            TunRing::Pool(BufRing::register(submitter, count, TUN_GROUP)?)
        })
    }

    /// Tops a ring of pool buffers up from `pool` (as far as it has buffers), and hands the
    /// kernel the buffers added since the last call.
    pub fn refill(&mut self, pool: &mut BufferPool) {
        match self {
            TunRing::Pool(ring) => {
                while ring.held() < ring.capacity() {
                    let Some(b) = pool.alloc() else { break };
                    let area = &mut pool.get_mut(b)[HEADROOM..];
                    ring.add(area.as_mut_ptr(), area.len() as u32, b as u16);
                }
                ring.publish();
            }
            TunRing::Large(large) => large.ring().publish(),
        }
    }

    /// Whether a read has buffers to take.
    pub fn has_buffers(&self) -> bool {
        match self {
            TunRing::Pool(ring) => ring.held() > 0,
            TunRing::Large(large) => large.ring.held() > 0,
        }
    }

    /// What a read brought into buffer `id` (`len` bytes): its packets, each in a pool
    /// buffer at `HEADROOM`, appended to `out` as (buffer, length); returns whether it was a
    /// super-packet. A large buffer goes back to the ring at once; a pool buffer is the
    /// packet's, released by the packet path.
    pub fn take(
        &mut self,
        id: u16,
        len: usize,
        pool: &mut BufferPool,
        out: &mut Vec<(BufId, usize)>,
    ) -> Result<bool, DropReason> {
        match self {
            TunRing::Pool(ring) => {
                ring.consumed();
                out.push((BufId::from(id), len));
                Ok(false)
            }
            TunRing::Large(large) => {
                large.ring.consumed();
                let outcome = match large.get_mut(id) {
                    Some(buffer) => {
                        let read = len.min(buffer.len());
                        split_tun_read(&mut buffer[..read], pool, out)
                    }
                    None => Err(DropReason::Malformed),
                };
                large.recycle(id);
                outcome
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, SocketAddr};
    use std::os::fd::AsRawFd;

    use io_uring::{IoUring, cqueue, opcode, types};

    use super::super::buffers::{BUF_SIZE, BufferPool};
    use super::*;

    fn local_addr(fd: &std::os::fd::OwnedFd) -> SocketAddr {
        // SAFETY: getsockname into a zeroed storage of the right size.
        unsafe {
            let mut s: libc::sockaddr_storage = zeroed();
            let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            libc::getsockname(fd.as_raw_fd(), (&mut s as *mut libc::sockaddr_storage).cast(), &mut len);
            sys::sockaddr_to(&s).unwrap()
        }
    }

    /// Waits for at least one completion and returns (result, flags) of all there are.
    fn reap(ring: &mut IoUring) -> Vec<(i32, u32)> {
        let ts = types::Timespec::new().sec(2);
        let _ = ring.submitter().submit_with_args(1, &types::SubmitArgs::new().timespec(&ts));
        ring.completion().map(|c| (c.result(), c.flags())).collect()
    }

    /// A multishot receive on a loopback socket (bound to the wildcard address, with
    /// packet info on, as the gateway's) through a ring of pool buffers: every datagram
    /// arrives in place at offset 0 of its pool buffer with its sender and the local
    /// address; an empty ring ends the receive with ENOBUFS, and refilling and re-arming
    /// recovers the datagrams that waited meanwhile.
    #[test]
    fn multishot_receive_fills_pool_buffers_in_place_and_recovers_from_an_empty_ring() {
        let wildcard: SocketAddr = "0.0.0.0:0".parse().unwrap();
        let receiver = sys::udp_socket(&wildcard).unwrap();
        let port = local_addr(&receiver).port();
        let to: SocketAddr = ([127, 0, 0, 1], port).into();
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let sender_addr = sender.local_addr().unwrap();

        let mut ring = IoUring::builder().setup_single_issuer().setup_defer_taskrun().build(64).unwrap();
        let mut pool = BufferPool::new(8);
        let mut buf_ring = BufRing::register(&ring.submitter(), 4, PLAIN_GROUP).unwrap();
        let fill = |buf_ring: &mut BufRing, pool: &mut BufferPool| {
            while buf_ring.held() < buf_ring.capacity() {
                let id = pool.alloc().unwrap();
                let (addr, len) = pool.receive_area(id);
                buf_ring.add(addr, len, id as u16);
            }
            buf_ring.publish();
        };
        fill(&mut buf_ring, &mut pool);
        let hdr = multishot_msghdr();
        let arm = |ring: &mut IoUring| {
            let recv = opcode::RecvMsgMulti::new(types::Fd(receiver.as_raw_fd()), &hdr, PLAIN_GROUP).build();
            // SAFETY: hdr and the ring's buffers outlive the receive.
            unsafe { ring.submission().push(&recv.user_data(7)).unwrap() };
        };
        arm(&mut ring);
        ring.submit().unwrap();

        // Six datagrams for a ring of four buffers.
        for i in 0..6u8 {
            sender.send_to(&vec![i; 100 + usize::from(i)], to).unwrap();
        }
        let mut got = Vec::new();
        let mut ended = None;
        while ended.is_none() {
            for (res, flags) in reap(&mut ring) {
                match cqueue::buffer_select(flags) {
                    Some(id) => {
                        buf_ring.consumed();
                        let received = parse(&pool.with_prefix(u32::from(id))[..res as usize]).unwrap();
                        assert_eq!(received.peer, Some(sender_addr));
                        assert_eq!(received.local, Some(IpAddr::from([127, 0, 0, 1])));
                        assert_eq!(received.segment, None);
                        let len = received.data.len();
                        assert_eq!(
                            received.data.as_ptr(),
                            pool.get(u32::from(id)).as_ptr(),
                            "the datagram lands at offset 0 of its pool buffer"
                        );
                        assert!(pool.get(u32::from(id))[..len].iter().all(|&x| usize::from(x) + 100 == len));
                        got.push(len);
                        assert!(cqueue::more(flags), "the receive stays armed while it has buffers");
                        pool.release(u32::from(id));
                    }
                    None => ended = Some((res, cqueue::more(flags))),
                }
            }
        }
        assert_eq!(got, [100, 101, 102, 103]);
        assert_eq!(ended, Some((-libc::ENOBUFS, false)), "an empty ring ends the multishot receive");
        assert_eq!(buf_ring.held(), 0);

        // Buffers go back to the ring; re-armed, the receive brings the two that waited.
        fill(&mut buf_ring, &mut pool);
        arm(&mut ring);
        while got.len() < 6 {
            for (res, flags) in reap(&mut ring) {
                let id = cqueue::buffer_select(flags).expect("a datagram");
                buf_ring.consumed();
                got.push(parse(&pool.with_prefix(u32::from(id))[..res as usize]).unwrap().data.len());
                pool.release(u32::from(id));
            }
        }
        assert_eq!(got, [100, 101, 102, 103, 104, 105]);
        drop(ring);
    }

    /// A datagram larger than a pool buffer is reported truncated, and parse refuses it.
    #[test]
    fn a_datagram_larger_than_the_buffer_is_refused() {
        let receiver = sys::udp_socket(&"127.0.0.1:0".parse().unwrap()).unwrap();
        let to = local_addr(&receiver);
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut ring = IoUring::new(8).unwrap();
        let mut pool = BufferPool::new(1);
        let mut buf_ring = BufRing::register(&ring.submitter(), 1, PLAIN_GROUP).unwrap();
        let id = pool.alloc().unwrap();
        let (addr, len) = pool.receive_area(id);
        buf_ring.add(addr, len, id as u16);
        buf_ring.publish();
        let hdr = multishot_msghdr();
        let recv = opcode::RecvMsgMulti::new(types::Fd(receiver.as_raw_fd()), &hdr, PLAIN_GROUP).build();
        // SAFETY: hdr and the pool outlive the receive.
        unsafe { ring.submission().push(&recv).unwrap() };
        ring.submit().unwrap();
        sender.send_to(&vec![9; BUF_SIZE + 1], to).unwrap();
        let (res, flags) = reap(&mut ring)[0];
        assert_eq!(cqueue::buffer_select(flags), Some(id as u16));
        let out = RecvMsgOut::parse(&pool.with_prefix(id)[..res as usize], &hdr).unwrap();
        assert!(out.is_payload_truncated());
        assert!(parse(&pool.with_prefix(id)[..res as usize]).is_none());
    }

    /// A UDP GSO burst of four datagrams arrives through the GRO ring as one receive,
    /// with its segment size, and splits back into the four.
    #[test]
    fn gso_burst_arrives_as_one_multishot_receive_on_the_gro_ring() {
        use super::super::gro::split_into;
        use super::super::gso::{Datagram, Destination, GsoSends};
        let any_port: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let receiver = sys::udp_socket(&any_port).unwrap();
        let sender = sys::udp_socket(&any_port).unwrap();
        assert!(sys::enable_udp_gro(receiver.as_raw_fd()) && sys::udp_gso_supported(sender.as_raw_fd()));
        let mut ring = IoUring::new(8).unwrap();
        let mut gro = LargeRing::register(&ring.submitter(), GRO_GROUP, 2, GRO_BUFFER).unwrap();
        let hdr = multishot_msghdr();
        let recv = opcode::RecvMsgMulti::new(types::Fd(receiver.as_raw_fd()), &hdr, GRO_GROUP).build();
        // SAFETY: hdr and the GRO ring outlive the receive.
        unsafe { ring.submission().push(&recv).unwrap() };
        ring.submit().unwrap();

        let mut bufs = BufferPool::new(16);
        let mut datagrams = Vec::new();
        for (i, len) in [1200usize, 1200, 1200, 500].into_iter().enumerate() {
            let id = bufs.alloc().unwrap();
            bufs.get_mut(id)[..len].fill(i as u8 + 1);
            datagrams.push(Datagram { id, start: 0, end: len });
        }
        let mut sends = GsoSends::default();
        let dest = Destination { listener: 0, peer: local_addr(&receiver), local: None };
        let (_, send_hdr) = sends.prepare(dest, &mut datagrams, &mut bufs);
        // SAFETY: send_hdr and everything it points at live in `sends` and `bufs`.
        assert_eq!(unsafe { libc::sendmsg(sender.as_raw_fd(), send_hdr, 0) }, 4100);

        let completions = reap(&mut ring);
        assert_eq!(completions.len(), 1, "one receive for the burst");
        let (res, flags) = completions[0];
        let id = cqueue::buffer_select(flags).unwrap();
        gro.ring().consumed();
        let received = parse(&gro.get(id).unwrap()[..res as usize]).unwrap();
        assert_eq!(received.peer, Some(local_addr(&sender)));
        assert_eq!(received.segment, Some(1200));
        let mut out = Vec::new();
        assert_eq!(split_into(received.data, received.segment, &mut bufs, &mut out).datagrams, 4);
        let got: Vec<(usize, u8)> = out.iter().map(|&(b, len)| (len, bufs.get(b)[0])).collect();
        assert_eq!(got, [(1200, 1), (1200, 2), (1200, 3), (500, 4)]);
        gro.recycle(id);
        assert_eq!(gro.ring().held(), 2);
    }

    /// Runs `test` on a thread of its own in a new network namespace without IPv6 (so
    /// that nothing but the test's packets reaches a TUN device made there), with a TUN
    /// device of one queue at 10.99.0.1/24, with or without `offload`.
    fn with_tun_in_new_namespace(offload: bool, test: impl FnOnce(super::super::tun::TunQueues) + Send + 'static) {
        let thread = std::thread::spawn(move || {
            // SAFETY: unshare changes only this thread's network namespace.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare(CLONE_NEWNET) needs root");
            for conf in ["all", "default"] {
                let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{conf}/disable_ipv6"), "1");
            }
            let address = std::net::Ipv4Addr::new(10, 99, 0, 1);
            let tun =
                super::super::tun::create("p2sgwt0", address, "10.99.0.0/24".parse().unwrap(), &[], 1400, 1, offload)
                    .unwrap();
            test(tun)
        });
        if let Err(panic) = thread.join() {
            std::panic::resume_unwind(panic);
        }
    }

    /// The UDP datagram in an IPv4 packet from 10.99.0.1 to 10.99.0.2:9: its payload.
    fn udp_payload_to_the_tunnel_peer(packet: &[u8]) -> &[u8] {
        assert_eq!(packet[0], 0x45, "IPv4 without options");
        assert_eq!(usize::from(u16::from_be_bytes([packet[2], packet[3]])), packet.len());
        assert_eq!((packet[9], &packet[12..16], &packet[16..20]), (17, &[10, 99, 0, 1][..], &[10, 99, 0, 2][..]));
        assert_eq!(u16::from_be_bytes([packet[22], packet[23]]), 9);
        &packet[28..]
    }

    /// The multishot read on a TUN queue without offloads, on a ring of pool buffers:
    /// every packet lands at HEADROOM of its pool buffer and stays there for the packet
    /// path; an empty ring ends the read with ENOBUFS, and refilling and re-arming
    /// recovers the packets that waited in the queue meanwhile.
    #[test]
    fn multishot_tun_read_lands_packets_at_headroom_and_recovers_from_an_empty_ring() {
        with_tun_in_new_namespace(false, |tun| {
            assert_eq!(tun.offload, None);
            let queue = tun.fds[0].as_raw_fd();
            let mut ring = IoUring::builder().setup_single_issuer().setup_defer_taskrun().build(64).unwrap();
            let mut pool = BufferPool::new(8);
            let mut tun_ring = TunRing::register(&ring.submitter(), 4, false).unwrap();
            assert!(!tun_ring.has_buffers(), "pool buffers come with the first refill");
            tun_ring.refill(&mut pool);
            assert_eq!(pool.available(), 4);
            let arm = |ring: &mut IoUring| {
                let read = opcode::ReadMulti::new(types::Fd(queue), 0, TUN_GROUP).build();
                // SAFETY: the ring's buffers (the pool's) outlive the read.
                unsafe { ring.submission().push(&read.user_data(9)).unwrap() };
            };
            arm(&mut ring);
            ring.submit().unwrap();

            // Six packets for a ring of four buffers.
            let sender = std::net::UdpSocket::bind("10.99.0.1:0").unwrap();
            for i in 0..6u8 {
                sender.send_to(&vec![i; 100 + usize::from(i)], "10.99.0.2:9").unwrap();
            }
            let mut got = Vec::new();
            let mut ended = None;
            let mut packets = Vec::new();
            while ended.is_none() {
                for (res, flags) in reap(&mut ring) {
                    let Some(id) = cqueue::buffer_select(flags) else {
                        ended = Some((res, cqueue::more(flags)));
                        continue;
                    };
                    assert!(cqueue::more(flags), "the read stays armed while it has buffers");
                    assert_eq!(tun_ring.take(id, res as usize, &mut pool, &mut packets), Ok(false));
                    let [(b, len)] = packets[..] else { panic!("one packet per read: {packets:?}") };
                    assert_eq!((b, len), (BufId::from(id), res as usize));
                    let payload = udp_payload_to_the_tunnel_peer(&pool.get(b)[HEADROOM..HEADROOM + len]);
                    assert!(payload.iter().all(|&x| usize::from(x) + 100 == payload.len()));
                    got.push(payload.len());
                    packets.clear();
                    pool.release(b);
                }
            }
            assert_eq!(got, [100, 101, 102, 103]);
            assert_eq!(ended, Some((-libc::ENOBUFS, false)), "an empty ring ends the multishot read");
            assert!(!tun_ring.has_buffers());

            // The buffers came back to the pool; refilled and re-armed, the read brings the
            // two packets that waited.
            tun_ring.refill(&mut pool);
            arm(&mut ring);
            while got.len() < 6 {
                for (res, flags) in reap(&mut ring) {
                    let id = cqueue::buffer_select(flags).expect("a packet");
                    tun_ring.take(id, res as usize, &mut pool, &mut packets).unwrap();
                    for (b, len) in packets.drain(..) {
                        got.push(udp_payload_to_the_tunnel_peer(&pool.get(b)[HEADROOM..HEADROOM + len]).len());
                        pool.release(b);
                    }
                }
            }
            assert_eq!(got, [100, 101, 102, 103, 104, 105]);
            drop(ring);
        });
    }

    /// The multishot read on a TUN queue with offloads, on a ring of large buffers: a UDP
    /// GSO burst sent through the device arrives as one super-packet, cut into its four
    /// datagrams in pool buffers at HEADROOM; a plain datagram after it arrives alone; each
    /// large buffer goes back to the ring at once.
    #[test]
    fn multishot_tun_read_with_offloads_cuts_a_super_packet_into_pool_buffers() {
        with_tun_in_new_namespace(true, |tun| {
            assert_eq!(tun.offload.map(|o| o.udp), Some(true), "TUN offloads with USO (Linux 6.2+)");
            let queue = tun.fds[0].as_raw_fd();
            let mut ring = IoUring::builder().setup_single_issuer().setup_defer_taskrun().build(64).unwrap();
            let mut pool = BufferPool::new(16);
            let mut tun_ring = TunRing::register(&ring.submitter(), 2, true).unwrap();
            assert!(tun_ring.has_buffers(), "large buffers are all handed to the kernel at once");
            tun_ring.refill(&mut pool);
            assert_eq!(pool.available(), 16, "a ring of large buffers takes nothing from the pool");
            let read = opcode::ReadMulti::new(types::Fd(queue), 0, TUN_GROUP).build();
            // SAFETY: the ring's large buffers outlive the read.
            unsafe { ring.submission().push(&read).unwrap() };
            ring.submit().unwrap();

            let sender = std::net::UdpSocket::bind("10.99.0.1:0").unwrap();
            sys::set_udp_segment(sender.as_raw_fd(), 1200).expect("UDP_SEGMENT");
            let burst: Vec<u8> = [1200, 1200, 1200, 500]
                .into_iter()
                .enumerate()
                .flat_map(|(i, len)| std::iter::repeat_n(i as u8 + 1, len))
                .collect();
            sender.send_to(&burst, "10.99.0.2:9").unwrap();
            sender.send_to(&[7; 300], "10.99.0.2:9").unwrap();

            let mut reads = Vec::new();
            while reads.len() < 2 {
                for (res, flags) in reap(&mut ring) {
                    let id = cqueue::buffer_select(flags).expect("a packet");
                    assert!(cqueue::more(flags));
                    let mut packets = Vec::new();
                    let outcome = tun_ring.take(id, res as usize, &mut pool, &mut packets).unwrap();
                    let datagrams: Vec<(usize, u8)> = packets
                        .iter()
                        .map(|&(b, len)| {
                            let payload = udp_payload_to_the_tunnel_peer(&pool.get(b)[HEADROOM..HEADROOM + len]);
                            assert!(payload.iter().all(|&x| x == payload[0]));
                            (payload.len(), payload[0])
                        })
                        .collect();
                    reads.push((outcome, datagrams));
                    for (b, _) in packets {
                        pool.release(b);
                    }
                    assert!(tun_ring.has_buffers());
                }
            }
            assert_eq!(
                reads,
                [(true, vec![(1200, 1), (1200, 2), (1200, 3), (500, 4)]), (false, vec![(300, 7)])],
                "one super-packet cut into four datagrams, then a plain one"
            );
            assert_eq!(pool.available(), 16);
            drop(ring);
        });
    }
}
