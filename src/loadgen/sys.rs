//! The few system calls std lacks: epoll, batched UDP send/receive, the open-files limit.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Datagrams per `recvmmsg`/`sendmmsg` call.
pub const BATCH: usize = 32;
/// Room for any datagram on the path (MTU-sized packets plus tunnel overhead).
pub const DATAGRAM_CAPACITY: usize = 2048;

pub struct Epoll {
    fd: OwnedFd,
    events: Vec<libc::epoll_event>,
}

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: plain syscall; the result is checked before it is used as a descriptor.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Epoll { fd, events: vec![libc::epoll_event { events: 0, u64: 0 }; 256] })
    }

    /// Watches `fd` for input; `token` comes back from [`Epoll::wait`].
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut event = libc::epoll_event { events: libc::EPOLLIN as u32, u64: token };
        // SAFETY: both descriptors are open; the event is a valid pointer for the call.
        if unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout_ms` (0: just look); returns the tokens of readable sockets.
    pub fn wait(&mut self, timeout_ms: i32) -> io::Result<impl Iterator<Item = u64> + '_> {
        // SAFETY: the buffer holds `len` events and lives across the call.
        let n = unsafe {
            libc::epoll_wait(self.fd.as_raw_fd(), self.events.as_mut_ptr(), self.events.len() as i32, timeout_ms)
        };
        let n = match n {
            n if n >= 0 => n as usize,
            _ if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => 0,
            _ => return Err(io::Error::last_os_error()),
        };
        Ok(self.events[..n].iter().map(|e| e.u64))
    }
}

/// Receive buffers for one `recvmmsg`.
pub struct RecvBatch {
    pub buffers: Vec<[u8; DATAGRAM_CAPACITY]>,
    pub lengths: [usize; BATCH],
}

impl RecvBatch {
    pub fn new() -> RecvBatch {
        RecvBatch { buffers: vec![[0u8; DATAGRAM_CAPACITY]; BATCH], lengths: [0; BATCH] }
    }

    /// Reads up to [`BATCH`] datagrams from a non-blocking connected socket; 0 when none wait.
    pub fn receive(&mut self, fd: RawFd) -> io::Result<usize> {
        let mut iovecs: [libc::iovec; BATCH] = std::array::from_fn(|i| libc::iovec {
            iov_base: self.buffers[i].as_mut_ptr().cast(),
            iov_len: DATAGRAM_CAPACITY,
        });
        // SAFETY: zeroed mmsghdr is valid (null name, no control data).
        let mut headers: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for (h, iov) in headers.iter_mut().zip(iovecs.iter_mut()) {
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: every header points at a live iovec over a live buffer of the stated size.
        let n =
            unsafe { libc::recvmmsg(fd, headers.as_mut_ptr(), BATCH as u32, libc::MSG_DONTWAIT, std::ptr::null_mut()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            // ECONNREFUSED: an ICMP error from an earlier send; the socket is fine.
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted | io::ErrorKind::ConnectionRefused => Ok(0),
                _ => Err(e),
            };
        }
        for (len, h) in self.lengths.iter_mut().zip(&headers[..n as usize]) {
            *len = h.msg_len as usize;
        }
        Ok(n as usize)
    }

    pub fn datagram(&mut self, i: usize) -> &mut [u8] {
        &mut self.buffers[i][..self.lengths[i]]
    }
}

/// Sends the datagrams on a non-blocking connected socket; returns how many left (fewer
/// when the socket buffer is full).
pub fn send_batch(fd: RawFd, datagrams: &[&[u8]]) -> io::Result<usize> {
    let count = datagrams.len().min(BATCH);
    let mut iovecs: [libc::iovec; BATCH] =
        std::array::from_fn(|_| libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 });
    // SAFETY: zeroed mmsghdr is valid (null name, no control data).
    let mut headers: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for i in 0..count {
        iovecs[i] = libc::iovec { iov_base: datagrams[i].as_ptr() as *mut _, iov_len: datagrams[i].len() };
        headers[i].msg_hdr.msg_iov = &mut iovecs[i];
        headers[i].msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: the first `count` headers point at live iovecs over the caller's buffers,
    // which sendmmsg only reads.
    let n = unsafe { libc::sendmmsg(fd, headers.as_mut_ptr(), count as u32, libc::MSG_DONTWAIT) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted | io::ErrorKind::ConnectionRefused => Ok(0),
            _ => Err(e),
        };
    }
    Ok(n as usize)
}

/// Raises the soft open-files limit to the hard one (one socket per client); returns it.
pub fn raise_open_files_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: a valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } < 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: a valid in-pointer; raising the soft limit up to the hard one is always allowed.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(limit.rlim_cur)
}
