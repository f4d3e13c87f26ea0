//! UDP GRO on receive, for the OpenVPN and NAT-T sockets: with UDP_GRO set, one receive
//! may bring several datagrams of one flow back to back, all of the size a UDP_GRO
//! control message gives but the last, which may be shorter (the kernel coalesced them,
//! in the NIC or in its GRO layer). Such receives land in a large buffer of this
//! module's, and each datagram is copied apart into a pool buffer at offset 0, where a
//! plain receive would have put it: the OpenVPN and ESP paths, which open packets in
//! place and write them to the TUN from the same buffer, stay as they are. A datagram
//! costs a copy (tens of nanoseconds for 1.4 KB) instead of a receive (~750 ns).

use std::mem::{size_of, zeroed};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;

use super::buffers::{BUF_SIZE, BufId, BufferPool};
use super::sys;

/// One GRO receive at most: the largest UDP payload, rounded up.
pub const GRO_RECV_SIZE: usize = 64 * 1024;
/// GRO receives kept in flight per socket (each holds a 64 KiB buffer).
pub const GRO_RECV_DEPTH: usize = 32;

/// The datagrams in a receive of `len` bytes, by their range: cut every `segment` bytes
/// (the last may be shorter) for a GRO receive, one datagram without a segment size.
pub fn datagrams(len: usize, segment: Option<usize>) -> impl Iterator<Item = Range<usize>> {
    let step = segment.filter(|&s| s > 0).unwrap_or(len).max(1);
    (0..len).step_by(step).map(move |start| start..len.min(start + step))
}

/// What one receive brought: its bytes, the sender, and its control messages.
pub struct Received<'a> {
    pub data: &'a [u8],
    pub peer: Option<SocketAddr>,
    pub local: Option<IpAddr>,
    pub segment: Option<usize>,
}

/// How a receive was copied apart.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    /// Datagrams copied into pool buffers.
    pub datagrams: usize,
    /// Datagrams dropped: larger than a pool buffer, or no pool buffer left.
    pub too_long: usize,
    pub no_buffer: usize,
}

/// Copies each datagram of `data` (cut by `segment`) into a pool buffer of its own, at
/// offset 0, and pushes `(buffer, length)` onto `into`.
pub fn split_into(data: &[u8], segment: Option<usize>, bufs: &mut BufferPool, into: &mut Vec<(BufId, usize)>) -> Split {
    let mut split = Split::default();
    for range in datagrams(data.len(), segment) {
        let len = range.len();
        if len > BUF_SIZE {
            split.too_long += 1;
            continue;
        }
        let Some(b) = bufs.alloc() else {
            split.no_buffer += 1;
            continue;
        };
        bufs.get_mut(b)[..len].copy_from_slice(&data[range]);
        into.push((b, len));
        split.datagrams += 1;
    }
    split
}

/// One GRO receive's buffer and message header, at a fixed address while in flight.
struct GroRecv {
    data: Box<[u8]>,
    hdr: libc::msghdr,
    iov: libc::iovec,
    addr: libc::sockaddr_storage,
    /// Room for a packet-info message (40 bytes for IPv6) and a UDP_GRO one (24 bytes).
    control: [u64; 12],
}

/// A worker's GRO receive buffers, by slot (made on first use).
#[derive(Default)]
pub struct GroReceives {
    /// Boxed: the kernel writes a receive's header while the list grows.
    #[allow(clippy::vec_box)]
    slots: Vec<Box<GroRecv>>,
    free: Vec<u32>,
}

impl GroReceives {
    /// Takes a slot and fills its message header for a receive; returns the slot and a
    /// pointer for RecvMsg, valid until [`GroReceives::release`].
    pub fn prepare(&mut self) -> (u32, *mut libc::msghdr) {
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(Box::new(GroRecv {
                data: vec![0; GRO_RECV_SIZE].into_boxed_slice(),
                // SAFETY: msghdr, iovec and sockaddr_storage are plain C data; all-zero is valid.
                hdr: unsafe { zeroed() },
                iov: libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 },
                // SAFETY: as above.
                addr: unsafe { zeroed() },
                control: [0; 12],
            }));
            (self.slots.len() - 1) as u32
        });
        let r = &mut *self.slots[slot as usize];
        r.iov = libc::iovec { iov_base: r.data.as_mut_ptr().cast(), iov_len: r.data.len() };
        r.hdr = libc::msghdr {
            msg_name: (&mut r.addr as *mut libc::sockaddr_storage).cast(),
            msg_namelen: size_of::<libc::sockaddr_storage>() as libc::socklen_t,
            msg_iov: &mut r.iov,
            msg_iovlen: 1,
            msg_control: r.control.as_mut_ptr().cast(),
            msg_controllen: size_of::<[u64; 12]>(),
            msg_flags: 0,
        };
        (slot, &mut r.hdr)
    }

    /// What the receive in `slot` brought, `len` bytes (the completion's result).
    pub fn received(&self, slot: u32, len: usize) -> Option<Received<'_>> {
        let r = self.slots.get(slot as usize)?;
        let control = sys::receive_control(&r.hdr);
        Some(Received {
            data: &r.data[..len.min(r.data.len())],
            peer: sys::sockaddr_to(&r.addr),
            local: control.local,
            segment: control.gro_segment,
        })
    }

    pub fn release(&mut self, slot: u32) {
        debug_assert!(!self.free.contains(&slot), "GRO receive {slot} released twice");
        self.free.push(slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cut as (start, end) pairs.
    fn ranges(len: usize, segment: Option<usize>) -> Vec<(usize, usize)> {
        datagrams(len, segment).map(|r| (r.start, r.end)).collect()
    }

    #[test]
    fn a_gro_receive_is_cut_at_the_segment_size_and_the_last_may_be_shorter() {
        assert_eq!(ranges(3000, Some(1000)), [(0, 1000), (1000, 2000), (2000, 3000)]);
        assert_eq!(ranges(2500, Some(1000)), [(0, 1000), (1000, 2000), (2000, 2500)]);
        assert_eq!(ranges(700, Some(1000)), [(0, 700)]);
        // Without the control message (or a nonsensical size of 0): one datagram.
        assert_eq!(ranges(1400, None), [(0, 1400)]);
        assert_eq!(ranges(1400, Some(0)), [(0, 1400)]);
        assert_eq!(ranges(0, Some(100)), []);
    }

    #[test]
    fn split_copies_each_datagram_into_a_pool_buffer() {
        let data: Vec<u8> = (0..2500).map(|i| (i / 1000) as u8 + 1).collect();
        let mut bufs = BufferPool::new(2);
        let mut out = Vec::new();
        let split = split_into(&data, Some(1000), &mut bufs, &mut out);
        // Two pool buffers for three datagrams: the third is dropped.
        assert_eq!(split, Split { datagrams: 2, too_long: 0, no_buffer: 1 });
        assert_eq!(out.iter().map(|&(_, len)| len).collect::<Vec<_>>(), [1000, 1000]);
        assert!(bufs.get(out[0].0)[..1000].iter().all(|&x| x == 1));
        assert!(bufs.get(out[1].0)[..1000].iter().all(|&x| x == 2));
        for (b, _) in out.drain(..) {
            bufs.release(b);
        }
        let split = split_into(&data[..2100], None, &mut bufs, &mut out);
        assert_eq!(split, Split { datagrams: 0, too_long: 1, no_buffer: 0 });
        assert!(out.is_empty());
        assert_eq!(bufs.available(), 2);
    }

    /// A control buffer as the kernel fills it for a GRO receive on a wildcard socket.
    #[test]
    fn control_messages_give_the_local_address_and_the_segment_size() {
        let mut control = [0u64; 12];
        // SAFETY: msghdr is plain C data; all-zero is valid.
        let mut hdr: libc::msghdr = unsafe { zeroed() };
        hdr.msg_control = control.as_mut_ptr().cast();
        hdr.msg_controllen = size_of::<[u64; 12]>();
        // SAFETY: CMSG_SPACE only computes a size.
        let (pktinfo_space, gro_space) = unsafe {
            (
                libc::CMSG_SPACE(size_of::<libc::in_pktinfo>() as u32) as usize,
                libc::CMSG_SPACE(size_of::<libc::c_int>() as u32) as usize,
            )
        };
        // SAFETY: both messages fit in the 96-byte control buffer hdr points at (CMSG_SPACE
        // of an in_pktinfo is 32 bytes, of an int 24); data is written unaligned.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&hdr);
            (*c).cmsg_level = libc::IPPROTO_IP;
            (*c).cmsg_type = libc::IP_PKTINFO;
            (*c).cmsg_len = libc::CMSG_LEN(size_of::<libc::in_pktinfo>() as u32) as usize;
            let info = libc::in_pktinfo {
                ipi_ifindex: 2,
                ipi_spec_dst: libc::in_addr { s_addr: 0 },
                ipi_addr: libc::in_addr { s_addr: u32::from_ne_bytes([192, 0, 2, 7]) },
            };
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast(), info);
            let c = control.as_mut_ptr().cast::<u8>().add(pktinfo_space).cast::<libc::cmsghdr>();
            (*c).cmsg_level = libc::SOL_UDP;
            (*c).cmsg_type = libc::UDP_GRO;
            (*c).cmsg_len = libc::CMSG_LEN(size_of::<libc::c_int>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>(), 1380);
        }
        hdr.msg_controllen = pktinfo_space + gro_space;
        let control_read = sys::receive_control(&hdr);
        assert_eq!(
            control_read,
            sys::ReceiveControl { local: Some(IpAddr::from([192, 0, 2, 7])), gro_segment: Some(1380) }
        );
        // Only the packet info (a receive of one datagram): no segment size.
        hdr.msg_controllen = pktinfo_space;
        assert_eq!(sys::receive_control(&hdr).gro_segment, None);
        hdr.msg_controllen = 0;
        assert_eq!(sys::receive_control(&hdr), sys::ReceiveControl::default());
    }

    /// A real GRO receive over loopback: a GSO burst of four datagrams from one socket
    /// arrives in one receive with UDP_GRO, and the split gives the four back.
    #[test]
    fn loopback_gso_burst_comes_back_as_its_datagrams() {
        use super::super::gso::{Datagram, Destination, GsoSends};
        use std::os::fd::AsRawFd;
        let any_port: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let receiver = sys::udp_socket(&any_port).unwrap();
        let sender = sys::udp_socket(&any_port).unwrap();
        if !sys::enable_udp_gro(receiver.as_raw_fd()) || !sys::udp_gso_supported(sender.as_raw_fd()) {
            eprintln!("kernel without UDP GRO or GSO: skipped");
            return;
        }
        // SAFETY: getsockname into a zeroed storage of the right size.
        let receiver_addr = unsafe {
            let mut s: libc::sockaddr_storage = zeroed();
            let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            libc::getsockname(receiver.as_raw_fd(), (&mut s as *mut libc::sockaddr_storage).cast(), &mut len);
            sys::sockaddr_to(&s).unwrap()
        };
        let mut bufs = BufferPool::new(16);
        let mut datagrams = Vec::new();
        let sizes = [1200usize, 1200, 1200, 500];
        for (i, len) in sizes.into_iter().enumerate() {
            let id = bufs.alloc().unwrap();
            bufs.get_mut(id)[..len].fill(i as u8 + 1);
            datagrams.push(Datagram { id, start: 0, end: len });
        }
        let mut sends = GsoSends::default();
        let dest = Destination { listener: 0, peer: receiver_addr, local: None };
        let (_, hdr) = sends.prepare(dest, &mut datagrams, &mut bufs);
        // SAFETY: hdr and everything it points at live in `sends` and `bufs`.
        let sent = unsafe { libc::sendmsg(sender.as_raw_fd(), hdr, 0) };
        assert_eq!(sent, 4100, "{}", std::io::Error::last_os_error());

        let mut receives = GroReceives::default();
        let (slot, hdr) = receives.prepare();
        let mut pollfd = libc::pollfd { fd: receiver.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one live pollfd; hdr points into `receives`, alive across the call.
        let n = unsafe {
            libc::poll(&mut pollfd, 1, 2000);
            libc::recvmsg(receiver.as_raw_fd(), hdr, libc::MSG_DONTWAIT)
        };
        assert!(n > 0, "{}", std::io::Error::last_os_error());
        let received = receives.received(slot, n as usize).unwrap();
        assert_eq!(received.segment, Some(1200), "the burst came coalesced");
        assert_eq!(received.data.len(), 4100);
        let mut out = Vec::new();
        let split = split_into(received.data, received.segment, &mut bufs, &mut out);
        assert_eq!(split.datagrams, 4);
        let got: Vec<(usize, u8)> = out.iter().map(|&(b, len)| (len, bufs.get(b)[0])).collect();
        assert_eq!(got, [(1200, 1), (1200, 2), (1200, 3), (500, 4)]);
        for &(b, len) in &out {
            let first = bufs.get(b)[0];
            assert!(bufs.get(b)[..len].iter().all(|&x| x == first), "each datagram is whole");
        }
        receives.release(slot);
    }
}
