//! A worker's packet buffers: one allocation at start, handed out by index, so the
//! packet path never allocates. Each buffer carries the msghdr/iovec/sockaddr an
//! io_uring SendMsg or RecvMsg needs, at a fixed address for as long as the
//! operation is in flight.
//!
//! In front of each buffer lies [`RECV_PREFIX`] bytes of room: a multishot receive
//! (see recv_ring.rs) writes its header, the sender's address and the control messages
//! there, so that the datagram itself lands at offset 0 of the buffer, where the packet
//! path expects it.

use std::mem::{size_of, zeroed};
use std::net::{IpAddr, SocketAddr};

use super::sys;

/// Room for a 1500-byte tunnel packet, the 24-byte OpenVPN data header in front of
/// it, and a TCP length prefix, with slack.
pub const BUF_SIZE: usize = 2048;

/// The largest tunnel MTU the buffers hold: a packet read from the TUN lands after the
/// data-channel header room, and the sealed packet must still fit a buffer.
pub const MAX_TUN_MTU: u16 = (BUF_SIZE - crate::proto::openvpn::data::HEADROOM - 24) as u16;

pub type BufId = u32;

/// What a multishot receive writes before the datagram: its 16-byte header, the sender's
/// address and the control messages (sizes in recv_ring.rs, which checks they add up).
pub const RECV_PREFIX: usize = 128;

/// One buffer with its receive room in front; aligned so that the control messages a
/// receive writes there are aligned too.
#[repr(C, align(64))]
struct Slot([u8; RECV_PREFIX + BUF_SIZE]);

/// The kernel-facing message header of one buffer.
pub struct MsgMeta {
    pub hdr: libc::msghdr,
    pub iov: libc::iovec,
    pub addr: libc::sockaddr_storage,
    /// Ancillary data: the packet-info control message (local address).
    control: [u64; 8],
}

pub struct BufferPool {
    data: Box<[Slot]>,
    meta: Box<[MsgMeta]>,
    free: Vec<BufId>,
}

impl BufferPool {
    pub fn new(count: usize) -> Self {
        BufferPool {
            data: (0..count).map(|_| Slot([0; RECV_PREFIX + BUF_SIZE])).collect(),
            // SAFETY: msghdr, iovec and sockaddr_storage are plain C data; all-zero is valid.
            meta: (0..count).map(|_| unsafe { zeroed::<MsgMeta>() }).collect(),
            free: (0..count as BufId).rev().collect(),
        }
    }

    pub fn alloc(&mut self) -> Option<BufId> {
        self.free.pop()
    }

    pub fn release(&mut self, id: BufId) {
        debug_assert!(!self.free.contains(&id), "buffer {id} released twice");
        self.free.push(id);
    }

    pub fn available(&self) -> usize {
        self.free.len()
    }

    pub fn get(&self, id: BufId) -> &[u8; BUF_SIZE] {
        payload(&self.data[id as usize])
    }

    pub fn get_mut(&mut self, id: BufId) -> &mut [u8; BUF_SIZE] {
        payload_mut(&mut self.data[id as usize])
    }

    /// The buffer with its receive room in front, where a multishot receive writes.
    pub fn with_prefix(&self, id: BufId) -> &[u8] {
        &self.data[id as usize].0
    }

    /// Where a multishot receive into `id` starts, and how much it may write.
    pub fn receive_area(&mut self, id: BufId) -> (*mut u8, u32) {
        let slot = &mut self.data[id as usize].0;
        (slot.as_mut_ptr(), slot.len() as u32)
    }

    /// All the buffers' memory, for registering it with the ring (fixed buffers).
    pub fn region(&mut self) -> libc::iovec {
        libc::iovec { iov_base: self.data.as_mut_ptr().cast(), iov_len: std::mem::size_of_val(&*self.data) }
    }

    /// Mutable access to several buffers at once, put into `many` in the order of `ids`
    /// (a caller's array: nothing is allocated); `ids` must be distinct and ascending.
    pub fn get_many_mut<'a>(&'a mut self, ids: &[BufId], many: &mut [&'a mut [u8]]) {
        let mut rest: &mut [Slot] = &mut self.data;
        let mut rest_starts_at = 0;
        for (&id, borrowed) in ids.iter().zip(many) {
            let skip = (id as usize).checked_sub(rest_starts_at).expect("buffer ids are distinct and ascending");
            let (one, tail) = std::mem::take(&mut rest)[skip..].split_first_mut().expect("buffer ids are in the pool");
            *borrowed = payload_mut(one);
            rest = tail;
            rest_starts_at = id as usize + 1;
        }
    }

    /// Fills the message header of `id` to send `data[start..end]` to `to`, from local
    /// address `from` when given (a socket bound to the wildcard address must answer
    /// from the address the client wrote to), and returns a pointer for SendMsg. Valid
    /// until the buffer is released.
    pub fn prepare_send(
        &mut self,
        id: BufId,
        start: usize,
        end: usize,
        to: &SocketAddr,
        from: Option<IpAddr>,
    ) -> *const libc::msghdr {
        let base = self.get_mut(id).as_mut_ptr();
        let m = &mut self.meta[id as usize];
        let (addr, len) = sys::sockaddr_from(to);
        m.addr = addr;
        // SAFETY: start..end lies within the buffer (callers pass ranges inside it).
        m.iov = libc::iovec { iov_base: unsafe { base.add(start) }.cast(), iov_len: end - start };
        m.hdr = libc::msghdr {
            msg_name: (&mut m.addr as *mut libc::sockaddr_storage).cast(),
            msg_namelen: len,
            msg_iov: &mut m.iov,
            msg_iovlen: 1,
            msg_control: std::ptr::null_mut(),
            msg_controllen: 0,
            msg_flags: 0,
        };
        if let Some(from) = from {
            sys::set_source_address(&mut m.hdr, &mut m.control, from);
        }
        &m.hdr
    }

    /// Fills the message header of `id` to receive into `data[start..]`, and returns a
    /// pointer for RecvMsg.
    pub fn prepare_recv(&mut self, id: BufId, start: usize) -> *mut libc::msghdr {
        let base = self.get_mut(id).as_mut_ptr();
        let m = &mut self.meta[id as usize];
        // SAFETY: start < BUF_SIZE.
        m.iov = libc::iovec { iov_base: unsafe { base.add(start) }.cast(), iov_len: BUF_SIZE - start };
        m.hdr = libc::msghdr {
            msg_name: (&mut m.addr as *mut libc::sockaddr_storage).cast(),
            msg_namelen: std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t,
            msg_iov: &mut m.iov,
            msg_iovlen: 1,
            msg_control: m.control.as_mut_ptr().cast(),
            msg_controllen: size_of::<[u64; 8]>(),
            msg_flags: 0,
        };
        &mut m.hdr
    }

    /// The sender of what RecvMsg put into `id`.
    pub fn received_from(&self, id: BufId) -> Option<SocketAddr> {
        sys::sockaddr_to(&self.meta[id as usize].addr)
    }

    /// The local address what RecvMsg put into `id` was sent to (from the packet-info
    /// control message, present on sockets bound to a wildcard address).
    pub fn received_on(&self, id: BufId) -> Option<IpAddr> {
        sys::receive_control(&self.meta[id as usize].hdr).local
    }
}

fn payload(slot: &Slot) -> &[u8; BUF_SIZE] {
    slot.0.last_chunk().expect("a slot ends with a buffer")
}

fn payload_mut(slot: &mut Slot) -> &mut [u8; BUF_SIZE] {
    slot.0.last_chunk_mut().expect("a slot ends with a buffer")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_release_exhaust() {
        let mut p = BufferPool::new(3);
        let a = p.alloc().unwrap();
        let b = p.alloc().unwrap();
        let c = p.alloc().unwrap();
        assert!(p.alloc().is_none());
        assert_ne!(a, b);
        assert_ne!(b, c);
        p.release(b);
        assert_eq!(p.alloc(), Some(b));
        assert_eq!(p.available(), 0);
    }

    #[test]
    fn many_buffers_at_once_are_the_right_ones() {
        let mut p = BufferPool::new(8);
        for id in 0..8 {
            p.get_mut(id)[0] = id as u8;
        }
        let mut many: [&mut [u8]; 3] = Default::default();
        p.get_many_mut(&[1, 4, 7], &mut many);
        assert_eq!(
            many.iter().map(|b| (b[0], b.len())).collect::<Vec<_>>(),
            [(1, BUF_SIZE), (4, BUF_SIZE), (7, BUF_SIZE)]
        );
        for b in many {
            b[1] = 0xaa;
        }
        assert_eq!((0..8).filter(|&id| p.get(id)[1] == 0xaa).collect::<Vec<_>>(), [1, 4, 7]);
    }

    #[test]
    fn send_header_points_into_the_buffer() {
        let mut p = BufferPool::new(1);
        let id = p.alloc().unwrap();
        let to: SocketAddr = "192.0.2.1:1194".parse().unwrap();
        let hdr = p.prepare_send(id, 3, 10, &to, None);
        // SAFETY: hdr points into the pool's metadata, alive for this test.
        let (iov, name) = unsafe { (*(*hdr).msg_iov, (*hdr).msg_name) };
        assert_eq!(iov.iov_len, 7);
        assert_eq!(iov.iov_base as usize, p.get(id).as_ptr() as usize + 3);
        // SAFETY: msg_name points at the stored sockaddr.
        assert_eq!(sys::sockaddr_to(unsafe { &*(name as *const libc::sockaddr_storage) }), Some(to));
    }
}
