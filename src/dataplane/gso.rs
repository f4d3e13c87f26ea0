//! UDP GSO towards clients (OpenVPN data, and ESP in UDP on port 4500): the sealed
//! packets a super-packet (or a batch) yields for one client, all of one size but the
//! last, leave in one `sendmsg` with a UDP_SEGMENT control message; the kernel cuts them
//! apart (in the NIC when it can).

use std::net::{IpAddr, SocketAddr};

use super::buffers::{BufId, BufferPool};
use super::sys;

/// Datagrams per GSO send at most (the kernel's UDP_MAX_SEGMENTS before Linux 6.9).
pub const MAX_SEGMENTS: usize = 64;
/// Bytes per GSO send at most: one UDP datagram's payload over IPv6.
const MAX_BYTES: usize = u16::MAX as usize - 40 - 8;

/// Where a batch goes: a worker's UDP socket, the client, and the local address to
/// answer from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Destination {
    pub listener: usize,
    pub peer: SocketAddr,
    pub local: Option<IpAddr>,
}

/// A sealed datagram in a pool buffer: `bufs[id][start..end]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Datagram {
    pub id: BufId,
    pub start: usize,
    pub end: usize,
}

impl Datagram {
    pub fn size(&self) -> usize {
        self.end - self.start
    }
}

/// The datagrams gathered for one GSO send.
#[derive(Default)]
pub struct GsoBatch {
    destination: Option<Destination>,
    datagrams: Vec<Datagram>,
    bytes: usize,
    /// A datagram shorter than the first ended the batch (only the last may be).
    closed: bool,
}

impl GsoBatch {
    /// Adds `datagram` for `to`; when it cannot join, returns it with the batch
    /// unchanged (send the batch, then start a new one with it).
    pub fn add(&mut self, to: Destination, datagram: Datagram, max_segment: usize) -> Result<(), Datagram> {
        let len = datagram.size();
        match self.datagrams.first() {
            None => {
                if len > max_segment {
                    return Err(datagram);
                }
                self.destination = Some(to);
            }
            Some(first) => {
                let joins = self.destination == Some(to)
                    && !self.closed
                    && len <= first.size()
                    && self.datagrams.len() < MAX_SEGMENTS
                    && self.bytes + len <= MAX_BYTES;
                if !joins {
                    return Err(datagram);
                }
                self.closed = len < first.size();
            }
        }
        self.bytes += len;
        self.datagrams.push(datagram);
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.datagrams.is_empty()
    }

    /// Empties the batch into `into` (cleared first); returns where it goes.
    pub fn take(&mut self, into: &mut Vec<Datagram>) -> Option<Destination> {
        into.clear();
        into.append(&mut self.datagrams);
        self.bytes = 0;
        self.closed = false;
        self.destination.take()
    }
}

/// One GSO send in flight: its message header, vector and control data at a fixed
/// address, and the buffers it sends.
pub struct GsoSend {
    hdr: libc::msghdr,
    iov: [libc::iovec; MAX_SEGMENTS],
    addr: libc::sockaddr_storage,
    control: [u64; 8],
    pub destination: Destination,
    pub datagrams: Vec<Datagram>,
}

/// The worker's GSO sends, by slot.
#[derive(Default)]
pub struct GsoSends {
    /// Boxed: the kernel reads a send's header and vector while the list grows.
    #[allow(clippy::vec_box)]
    slots: Vec<Box<GsoSend>>,
    free: Vec<u32>,
}

impl GsoSends {
    /// Takes a slot for the datagrams in `datagrams` (which it empties; two or more,
    /// all `datagrams[0]`'s size but the last) and fills its message header; returns
    /// the slot and a pointer for SendMsg, valid until [`GsoSends::finish`].
    pub fn prepare(
        &mut self,
        to: Destination,
        datagrams: &mut Vec<Datagram>,
        bufs: &mut BufferPool,
    ) -> (u32, *const libc::msghdr) {
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(Box::new(GsoSend {
                // SAFETY: msghdr, iovec and sockaddr_storage are plain C data; all-zero is valid.
                hdr: unsafe { std::mem::zeroed() },
                iov: [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; MAX_SEGMENTS],
                // SAFETY: as above.
                addr: unsafe { std::mem::zeroed() },
                control: [0; 8],
                destination: to,
                datagrams: Vec::with_capacity(MAX_SEGMENTS),
            }));
            (self.slots.len() - 1) as u32
        });
        let send = &mut *self.slots[slot as usize];
        send.destination = to;
        std::mem::swap(&mut send.datagrams, datagrams);
        debug_assert!((2..=MAX_SEGMENTS).contains(&send.datagrams.len()));
        for (iov, d) in send.iov.iter_mut().zip(&send.datagrams) {
            let bytes = &mut bufs.get_mut(d.id)[d.start..d.end];
            *iov = libc::iovec { iov_base: bytes.as_mut_ptr().cast(), iov_len: bytes.len() };
        }
        let (addr, len) = sys::sockaddr_from(&to.peer);
        send.addr = addr;
        send.hdr = libc::msghdr {
            msg_name: (&mut send.addr as *mut libc::sockaddr_storage).cast(),
            msg_namelen: len,
            msg_iov: send.iov.as_mut_ptr(),
            msg_iovlen: send.datagrams.len(),
            msg_control: std::ptr::null_mut(),
            msg_controllen: 0,
            msg_flags: 0,
        };
        if let Some(from) = to.local {
            sys::set_source_address(&mut send.hdr, &mut send.control, from);
        }
        let segment = u16::try_from(send.datagrams[0].size()).expect("a datagram fits a pool buffer");
        sys::add_udp_segment(&mut send.hdr, &mut send.control, segment);
        (slot, &send.hdr)
    }

    /// The kernel is done with `slot`: its datagrams (their buffers are the caller's
    /// again) go into `into`, and the slot is free.
    pub fn finish(&mut self, slot: u32, into: &mut Vec<Datagram>) -> Option<Destination> {
        let send = self.slots.get_mut(slot as usize)?;
        into.clear();
        into.append(&mut send.datagrams);
        self.free.push(slot);
        Some(send.destination)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to(port: u16) -> Destination {
        Destination { listener: 0, peer: SocketAddr::from(([192, 0, 2, 1], port)), local: None }
    }

    fn datagram(id: BufId, len: usize) -> Datagram {
        Datagram { id, start: 0, end: len }
    }

    #[test]
    fn equal_datagrams_for_one_client_batch_and_a_shorter_one_ends_the_batch() {
        let mut batch = GsoBatch::default();
        for id in 0..3 {
            assert_eq!(batch.add(to(1), datagram(id, 1424), 1500), Ok(()));
        }
        // Another client, or a longer datagram, cannot join.
        assert_eq!(batch.add(to(2), datagram(9, 1424), 1500), Err(datagram(9, 1424)));
        assert_eq!(batch.add(to(1), datagram(9, 1425), 1500), Err(datagram(9, 1425)));
        assert_eq!(batch.add(to(1), datagram(3, 800), 1500), Ok(()));
        assert_eq!(batch.add(to(1), datagram(9, 800), 1500), Err(datagram(9, 800)));
        let mut out = Vec::new();
        assert_eq!(batch.take(&mut out), Some(to(1)));
        assert_eq!(out.iter().map(|d| d.id).collect::<Vec<_>>(), [0, 1, 2, 3]);
        assert!(batch.is_empty());
        // Too big for the socket's segment limit: not even a batch of one.
        assert_eq!(batch.add(to(1), datagram(5, 1424), 1400), Err(datagram(5, 1424)));
    }

    #[test]
    fn a_batch_stops_at_the_segment_and_byte_limits() {
        let mut batch = GsoBatch::default();
        for id in 0..MAX_SEGMENTS as BufId {
            assert_eq!(batch.add(to(1), datagram(id, 100), 1500), Ok(()));
        }
        assert!(batch.add(to(1), datagram(99, 100), 1500).is_err());
        let mut out = Vec::new();
        batch.take(&mut out);
        let per = 1400;
        let fit = MAX_BYTES / per;
        for id in 0..fit as BufId {
            assert_eq!(batch.add(to(1), datagram(id, per), 1500), Ok(()));
        }
        assert!(batch.add(to(1), datagram(99, per), 1500).is_err());
    }

    #[test]
    fn a_prepared_send_points_at_each_datagram_with_the_segment_size() {
        let mut bufs = BufferPool::new(4);
        let ids: Vec<BufId> = (0..3).map(|_| bufs.alloc().unwrap()).collect();
        let mut datagrams = vec![
            Datagram { id: ids[0], start: 4, end: 104 },
            Datagram { id: ids[1], start: 0, end: 100 },
            Datagram { id: ids[2], start: 8, end: 58 },
        ];
        let mut sends = GsoSends::default();
        let local = Some(IpAddr::from([192, 0, 2, 9]));
        let dest = Destination { local, ..to(1194) };
        let (slot, hdr) = sends.prepare(dest, &mut datagrams, &mut bufs);
        assert!(datagrams.is_empty());
        // SAFETY: hdr points into the slot, alive until finish.
        let hdr = unsafe { &*hdr };
        assert_eq!(hdr.msg_iovlen, 3);
        // SAFETY: msg_iov points at the slot's vector of msg_iovlen entries.
        let iov = unsafe { std::slice::from_raw_parts(hdr.msg_iov, 3) };
        assert_eq!(iov[0].iov_base as usize, bufs.get(ids[0]).as_ptr() as usize + 4);
        assert_eq!(iov.iter().map(|v| v.iov_len).collect::<Vec<_>>(), [100, 100, 50]);
        let mut found = (None, None);
        // SAFETY: the control data was filled by set_source_address and add_udp_segment
        // within msg_controllen; CMSG_* walk only inside it.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(hdr);
            while !c.is_null() {
                match ((*c).cmsg_level, (*c).cmsg_type) {
                    (libc::SOL_UDP, libc::UDP_SEGMENT) => {
                        found.0 = Some(std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<u16>()))
                    }
                    (libc::IPPROTO_IP, libc::IP_PKTINFO) => found.1 = Some(()),
                    _ => {}
                }
                c = libc::CMSG_NXTHDR(hdr, c);
            }
        }
        assert_eq!(found, (Some(100), Some(())));
        let mut back = Vec::new();
        assert_eq!(sends.finish(slot, &mut back), Some(dest));
        assert_eq!(back.len(), 3);
    }

    /// A real GSO send over loopback: three datagrams leave as three.
    #[test]
    fn loopback_receives_the_segments_apart() {
        use std::os::fd::AsRawFd;
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver.set_read_timeout(Some(std::time::Duration::from_secs(2))).unwrap();
        let sender = sys::udp_socket(&"127.0.0.1:0".parse().unwrap()).unwrap();
        if !sys::udp_gso_supported(sender.as_raw_fd()) {
            eprintln!("kernel without UDP GSO: skipped");
            return;
        }
        let mut bufs = BufferPool::new(4);
        let mut datagrams = Vec::new();
        for (i, len) in [300usize, 300, 120].into_iter().enumerate() {
            let id = bufs.alloc().unwrap();
            bufs.get_mut(id)[..len].fill(i as u8 + 1);
            datagrams.push(Datagram { id, start: 0, end: len });
        }
        let dest = Destination { listener: 0, peer: receiver.local_addr().unwrap(), local: None };
        let mut sends = GsoSends::default();
        let (_, hdr) = sends.prepare(dest, &mut datagrams, &mut bufs);
        // SAFETY: hdr and everything it points at live in `sends` and `bufs`.
        let sent = unsafe { libc::sendmsg(sender.as_raw_fd(), hdr, 0) };
        assert_eq!(sent, 720, "{}", std::io::Error::last_os_error());
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        for _ in 0..3 {
            let n = receiver.recv(&mut buf).unwrap();
            got.push((n, buf[0]));
        }
        assert_eq!(got, [(300, 1), (300, 2), (120, 3)]);
    }
}
