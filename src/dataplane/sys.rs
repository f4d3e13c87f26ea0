//! Thin wrappers over the few system calls the data plane makes outside io_uring:
//! sockets with SO_REUSEPORT, eventfds, CPU pinning and sockaddr conversion.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

fn set_int_opt(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: value is a valid c_int living across the call; the size matches.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// Socket buffers big enough for bursts of tunnel traffic. As root the *FORCE
/// variants pass net.core.[rw]mem_max; otherwise the kernel caps the value.
const SOCKET_BUFFER: libc::c_int = 4 << 20;

fn size_buffers(fd: RawFd) {
    for (force, plain) in [(libc::SO_RCVBUFFORCE, libc::SO_RCVBUF), (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF)] {
        if set_int_opt(fd, libc::SOL_SOCKET, force, SOCKET_BUFFER).is_err() {
            let _ = set_int_opt(fd, libc::SOL_SOCKET, plain, SOCKET_BUFFER);
        }
    }
}

fn socket_for(addr: &SocketAddr, ty: libc::c_int) -> io::Result<OwnedFd> {
    let domain = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain socket(2) call; the fd is owned below.
    let fd = cvt(unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    set_int_opt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    set_int_opt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    if addr.is_ipv6() {
        set_int_opt(fd.as_raw_fd(), libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
    }
    Ok(fd)
}

fn bind(fd: &OwnedFd, addr: &SocketAddr) -> io::Result<()> {
    let (storage, len) = sockaddr_from(addr);
    // SAFETY: storage holds a valid sockaddr of length len.
    cvt(unsafe { libc::bind(fd.as_raw_fd(), (&storage as *const libc::sockaddr_storage).cast(), len) }).map(drop)
}

/// A UDP socket in the SO_REUSEPORT group for `addr`: each worker binds its own, and
/// the kernel spreads clients over them by a hash of the address 4-tuple.
pub fn udp_socket(addr: &SocketAddr) -> io::Result<OwnedFd> {
    let fd = socket_for(addr, libc::SOCK_DGRAM)?;
    size_buffers(fd.as_raw_fd());
    if addr.ip().is_unspecified() {
        // Learn each datagram's local address, to answer from it (multi-homed hosts).
        match addr {
            SocketAddr::V4(_) => set_int_opt(fd.as_raw_fd(), libc::IPPROTO_IP, libc::IP_PKTINFO, 1)?,
            SocketAddr::V6(_) => set_int_opt(fd.as_raw_fd(), libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1)?,
        }
    }
    bind(&fd, addr)?;
    Ok(fd)
}

/// Makes `hdr` send from local address `from` (IP_PKTINFO / IPV6_PKTINFO in `control`,
/// which must outlive the send).
pub fn set_source_address(hdr: &mut libc::msghdr, control: &mut [u64; 8], from: IpAddr) {
    *control = [0; 8];
    hdr.msg_control = control.as_mut_ptr().cast();
    // SAFETY: the control buffer (64 bytes, 8-aligned) holds one cmsghdr with an
    // in_pktinfo or in6_pktinfo (CMSG_SPACE of either is at most 40 bytes).
    unsafe {
        let (level, ty, len) = match from {
            IpAddr::V4(_) => (libc::IPPROTO_IP, libc::IP_PKTINFO, size_of::<libc::in_pktinfo>()),
            IpAddr::V6(_) => (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, size_of::<libc::in6_pktinfo>()),
        };
        hdr.msg_controllen = libc::CMSG_SPACE(len as u32) as usize;
        let c = libc::CMSG_FIRSTHDR(hdr);
        (*c).cmsg_level = level;
        (*c).cmsg_type = ty;
        (*c).cmsg_len = libc::CMSG_LEN(len as u32) as usize;
        match from {
            IpAddr::V4(a) => {
                let info = libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: libc::in_addr { s_addr: u32::from_ne_bytes(a.octets()) },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                };
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast(), info);
            }
            IpAddr::V6(a) => {
                let info = libc::in6_pktinfo { ipi6_addr: libc::in6_addr { s6_addr: a.octets() }, ipi6_ifindex: 0 };
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast(), info);
            }
        }
    }
}

/// Adds a UDP_SEGMENT control message (the segment size of a UDP GSO send) to `hdr`,
/// after the one `set_source_address` may have put into `control`.
pub fn add_udp_segment(hdr: &mut libc::msghdr, control: &mut [u64; 8], segment: u16) {
    if hdr.msg_control.is_null() {
        *control = [0; 8];
        hdr.msg_control = control.as_mut_ptr().cast();
        hdr.msg_controllen = 0;
    }
    // SAFETY: CMSG_SPACE of a u16 is 24 bytes; after an in6_pktinfo message (40 bytes)
    // that still ends within the 64-byte, 8-aligned control buffer, which `hdr` points
    // at; the data is written unaligned.
    unsafe {
        let space = libc::CMSG_SPACE(size_of::<u16>() as u32) as usize;
        assert!(hdr.msg_controllen + space <= size_of::<[u64; 8]>(), "control buffer too small");
        let c = control.as_mut_ptr().cast::<u8>().add(hdr.msg_controllen).cast::<libc::cmsghdr>();
        (*c).cmsg_level = libc::SOL_UDP;
        (*c).cmsg_type = libc::UDP_SEGMENT;
        (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), segment);
        hdr.msg_controllen += space;
    }
}

/// Whether the kernel takes UDP GSO sends on this socket (Linux 4.18+): setting the
/// socket's default segment size to 0 (none) changes nothing but fails without it.
pub fn udp_gso_supported(fd: RawFd) -> bool {
    set_udp_segment(fd, 0).is_ok()
}

/// The socket's default UDP GSO segment size: every send longer than `size` leaves as
/// datagrams of `size` bytes (0: none). The gateway sets it per send instead; tests and
/// benches use it to make a burst arrive as one GSO packet.
pub fn set_udp_segment(fd: RawFd, size: u16) -> io::Result<()> {
    set_int_opt(fd, libc::SOL_UDP, libc::UDP_SEGMENT, libc::c_int::from(size))
}

/// Asks for UDP GRO on receive (Linux 5.0+): one receive may then bring several
/// datagrams of one flow, with a UDP_GRO control message giving their size. False when
/// the kernel refuses (the socket then receives datagram by datagram).
pub fn enable_udp_gro(fd: RawFd) -> bool {
    set_int_opt(fd, libc::SOL_UDP, libc::UDP_GRO, 1).is_ok()
}

/// What the control messages of a receive say: the local address the datagram was sent
/// to (packet info, on sockets bound to a wildcard address) and, for a UDP GRO receive,
/// the size of each coalesced datagram (the last may be shorter).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReceiveControl {
    pub local: Option<IpAddr>,
    pub gro_segment: Option<usize>,
}

/// Reads the control messages the kernel put into `hdr` (its `msg_control` and
/// `msg_controllen` as a receive left them).
pub fn receive_control(hdr: &libc::msghdr) -> ReceiveControl {
    let mut found = ReceiveControl::default();
    // SAFETY: msg_control/msg_controllen describe a control buffer of the caller's that
    // the kernel filled; the CMSG macros walk only within it (each header is checked to
    // lie inside by CMSG_NXTHDR), and the data is read unaligned.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(hdr);
        while !c.is_null() {
            let data_len = (*c).cmsg_len.saturating_sub(libc::CMSG_LEN(0) as usize);
            match ((*c).cmsg_level, (*c).cmsg_type) {
                (libc::IPPROTO_IP, libc::IP_PKTINFO) if data_len >= size_of::<libc::in_pktinfo>() => {
                    let info: libc::in_pktinfo = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                    found.local = Some(IpAddr::V4(Ipv4Addr::from(info.ipi_addr.s_addr.to_ne_bytes())));
                }
                (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) if data_len >= size_of::<libc::in6_pktinfo>() => {
                    let info: libc::in6_pktinfo = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                    found.local = Some(IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr)));
                }
                (libc::SOL_UDP, libc::UDP_GRO) if data_len >= size_of::<libc::c_int>() => {
                    let segment: libc::c_int = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                    found.gro_segment = usize::try_from(segment).ok().filter(|&s| s > 0);
                }
                _ => {}
            }
            c = libc::CMSG_NXTHDR(hdr, c);
        }
    }
    found
}

/// Sends one datagram now, with a plain `sendmsg` (for control messages of any size,
/// such as IKE, outside the ring's fixed buffers).
pub fn send_datagram(fd: RawFd, data: &[u8], to: &SocketAddr, from: Option<IpAddr>) -> io::Result<()> {
    let (mut addr, len) = sockaddr_from(to);
    let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
    let mut control = [0u64; 8];
    let mut hdr = libc::msghdr {
        msg_name: (&mut addr as *mut libc::sockaddr_storage).cast(),
        msg_namelen: len,
        msg_iov: &mut iov,
        msg_iovlen: 1,
        msg_control: std::ptr::null_mut(),
        msg_controllen: 0,
        msg_flags: 0,
    };
    if let Some(from) = from {
        set_source_address(&mut hdr, &mut control, from);
    }
    // SAFETY: hdr points at live locals (address, iovec over `data`, control buffer).
    cvt(unsafe { libc::sendmsg(fd, &hdr, libc::MSG_DONTWAIT) } as libc::c_int).map(drop)
}

/// A listening TCP socket in the SO_REUSEPORT group for `addr`.
pub fn tcp_listener(addr: &SocketAddr) -> io::Result<OwnedFd> {
    let fd = socket_for(addr, libc::SOCK_STREAM)?;
    bind(&fd, addr)?;
    // SAFETY: listen(2) on an fd we own.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), 1024) })?;
    Ok(fd)
}

/// Prepares an accepted TCP connection: no Nagle delay for control packets.
pub fn tune_tcp_connection(fd: RawFd) {
    let _ = set_int_opt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1);
}

/// The peer address of a connected socket.
pub fn peer_addr(fd: RawFd) -> io::Result<SocketAddr> {
    // SAFETY: zeroed sockaddr_storage is a valid buffer for getpeername.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: storage/len describe a writable buffer.
    cvt(unsafe { libc::getpeername(fd, (&mut storage as *mut libc::sockaddr_storage).cast(), &mut len) })?;
    sockaddr_to(&storage).ok_or_else(|| io::Error::other("unknown address family"))
}

/// An eventfd used to wake a worker's ring.
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain eventfd(2) call; ownership taken below.
    let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
    // SAFETY: fresh fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn eventfd_signal(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64. EAGAIN (counter full) still wakes the reader.
    unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
}

/// Pins the calling thread to `cpu`.
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes within it.
    unsafe {
        let mut set: libc::cpu_set_t = zeroed();
        libc::CPU_SET(cpu, &mut set);
        cvt(libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set)).map(drop)
    }
}

/// The CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data filled by the kernel.
    unsafe {
        let mut set: libc::cpu_set_t = zeroed();
        if libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return vec![0];
        }
        (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect()
    }
}

pub fn sockaddr_from(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is valid; we fill the family-specific view.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
            let sin = unsafe { &mut *(&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_scope_id = a.scope_id();
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

pub fn sockaddr_to(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match storage.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let sin = unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let sin6 = unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Unix time in seconds.
pub fn unix_time() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddr_round_trip() {
        for a in ["192.0.2.1:1194", "[2001:db8::1]:443"] {
            let addr: SocketAddr = a.parse().unwrap();
            let (s, _) = sockaddr_from(&addr);
            assert_eq!(sockaddr_to(&s), Some(addr));
        }
    }

    #[test]
    fn reuseport_group_on_loopback() {
        let a = udp_socket(&"127.0.0.1:0".parse().unwrap()).unwrap();
        // SAFETY: getsockname into a zeroed storage.
        let port = unsafe {
            let mut s: libc::sockaddr_storage = zeroed();
            let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            libc::getsockname(a.as_raw_fd(), (&mut s as *mut libc::sockaddr_storage).cast(), &mut len);
            sockaddr_to(&s).unwrap().port()
        };
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        assert!(udp_socket(&addr).is_ok(), "a second worker socket joins the group");
    }
}
