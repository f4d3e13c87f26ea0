//! OpenVPN over TCP: a stream of packets, each preceded by a 2-byte big-endian length.
//! This holds a connection's receive buffer and its double-buffered output, so a
//! connection allocates nothing after it has warmed up.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;

/// Largest packet accepted on a TCP stream: what a packet buffer holds. OpenVPN
/// packets are the tunnel MTU plus a few dozen bytes.
pub const MAX_FRAME: usize = super::buffers::BUF_SIZE;
const RECV_BUFFER: usize = 32 * 1024;
/// Output queued beyond this drops data packets (control packets still go): a slow
/// client must not pin unbounded memory.
pub const MAX_QUEUED_OUTPUT: usize = 1 << 20;

pub struct TcpConn {
    pub generation: u32,
    pub fd: OwnedFd,
    pub peer: SocketAddr,
    pub listener: usize,
    pub recv: Box<[u8]>,
    pub recv_len: usize,
    /// Bytes waiting for the next send.
    pub out: Vec<u8>,
    /// Bytes of the send in flight (and how far it got).
    pub inflight: Vec<u8>,
    pub inflight_done: usize,
    pub recv_pending: bool,
    pub send_pending: bool,
    /// The local session this connection carries, once one exists (OpenVPN).
    pub session: Option<u32>,
    pub stream: Stream,
    pub closing: bool,
    /// Close once the queued output is sent, or at this instant if the peer does not
    /// take it.
    pub linger_until: Option<std::time::Instant>,
}

/// Which protocol a connection speaks, known from its first byte.
pub enum Stream {
    Unknown,
    OpenVpn,
    Sstp(Box<super::sstp::SstpConn>),
}

/// What the next frame in the receive buffer is.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A complete packet at `recv[start..end]`.
    Packet {
        start: usize,
        end: usize,
    },
    Incomplete,
    /// Length 0 or above [`MAX_FRAME`]: the stream is not OpenVPN.
    Invalid,
}

/// The frame starting at `offset` of a received byte stream.
pub fn frame_at(stream: &[u8], offset: usize) -> Frame {
    let avail = stream.get(offset..).unwrap_or_default();
    if avail.len() < 2 {
        return Frame::Incomplete;
    }
    let len = u16::from_be_bytes([avail[0], avail[1]]) as usize;
    if len == 0 || len > MAX_FRAME {
        return Frame::Invalid;
    }
    if avail.len() < 2 + len {
        return Frame::Incomplete;
    }
    Frame::Packet { start: offset + 2, end: offset + 2 + len }
}

impl TcpConn {
    pub fn new(generation: u32, fd: OwnedFd, peer: SocketAddr, listener: usize) -> Self {
        TcpConn {
            generation,
            fd,
            peer,
            listener,
            recv: vec![0u8; RECV_BUFFER].into_boxed_slice(),
            recv_len: 0,
            out: Vec::new(),
            inflight: Vec::new(),
            inflight_done: 0,
            recv_pending: false,
            send_pending: false,
            session: None,
            stream: Stream::Unknown,
            closing: false,
            linger_until: None,
        }
    }

    /// Looks at the frame at `offset` in the received bytes.
    pub fn frame_at(&self, offset: usize) -> Frame {
        frame_at(&self.recv[..self.recv_len], offset)
    }

    /// Drops the first `consumed` received bytes.
    pub fn consume(&mut self, consumed: usize) {
        self.recv.copy_within(consumed..self.recv_len, 0);
        self.recv_len -= consumed;
    }

    /// Queues one packet with its length prefix.
    pub fn queue(&mut self, packet: &[u8]) {
        self.out.extend_from_slice(&(packet.len() as u16).to_be_bytes());
        self.out.extend_from_slice(packet);
    }

    /// Moves queued output into the in-flight buffer if no send is pending; returns
    /// whether there is something to send.
    pub fn start_send(&mut self) -> bool {
        if self.send_pending || self.out.is_empty() {
            return false;
        }
        std::mem::swap(&mut self.out, &mut self.inflight);
        self.out.clear();
        self.inflight_done = 0;
        true
    }

    /// Accounts for `n` bytes sent; returns true when the in-flight buffer is done.
    pub fn sent(&mut self, n: usize) -> bool {
        self.inflight_done += n;
        if self.inflight_done >= self.inflight.len() {
            self.inflight.clear();
            self.inflight_done = 0;
            true
        } else {
            false
        }
    }

    pub fn queued(&self) -> usize {
        self.out.len() + self.inflight.len() - self.inflight_done
    }

    /// Nothing of the kernel still refers to this connection's buffers.
    pub fn idle(&self) -> bool {
        !self.recv_pending && !self.send_pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{FromRawFd, IntoRawFd};

    fn conn() -> TcpConn {
        let fd = std::fs::File::open("/dev/null").unwrap().into_raw_fd();
        // SAFETY: fd is a freshly opened, owned file descriptor.
        TcpConn::new(0, unsafe { OwnedFd::from_raw_fd(fd) }, "192.0.2.1:5".parse().unwrap(), 0)
    }

    #[test]
    fn frames() {
        let mut c = conn();
        let data = [0u8, 3, 0xa, 0xb, 0xc, 0, 2, 0xd];
        c.recv[..data.len()].copy_from_slice(&data);
        c.recv_len = data.len();
        assert_eq!(c.frame_at(0), Frame::Packet { start: 2, end: 5 });
        assert_eq!(c.frame_at(5), Frame::Incomplete);
        c.consume(5);
        assert_eq!(&c.recv[..3], &[0, 2, 0xd]);
        c.recv[..2].copy_from_slice(&[0, 0]);
        assert_eq!(c.frame_at(0), Frame::Invalid);
        c.recv[..2].copy_from_slice(&[0xff, 0xff]);
        assert_eq!(c.frame_at(0), Frame::Invalid);
        c.recv[..2].copy_from_slice(&((MAX_FRAME + 1) as u16).to_be_bytes());
        assert_eq!(c.frame_at(0), Frame::Invalid, "longer than a packet buffer");
    }

    #[test]
    fn a_tls_record_is_never_an_openvpn_frame() {
        // A ClientHello record header: handshake (0x16), TLS 1.0 record version, length.
        let client_hello = [super::super::sstp::TLS_HANDSHAKE_RECORD, 0x03, 0x01, 0x00, 0xf4];
        assert_eq!(frame_at(&client_hello, 0), Frame::Invalid, "0x16xx is longer than any OpenVPN frame");
    }

    #[test]
    fn double_buffered_output() {
        let mut c = conn();
        c.queue(b"abc");
        assert!(c.start_send());
        assert_eq!(c.inflight, vec![0, 3, b'a', b'b', b'c']);
        c.send_pending = true;
        c.queue(b"d");
        assert!(!c.start_send(), "one send at a time");
        assert_eq!(c.queued(), 5 + 3);
        assert!(!c.sent(2));
        assert!(c.sent(3));
        c.send_pending = false;
        assert!(c.start_send());
        assert_eq!(c.inflight, vec![0, 1, b'd']);
    }
}
