//! `p2sgw loadgen-sink`: a UDP echo server for the far side of the tunnels.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use anyhow::{Context as _, Result};

use super::sys::{BATCH, DATAGRAM_CAPACITY};

/// Echoes every datagram back to its sender, forever; batches with recvmmsg/sendmmsg.
pub fn run_sink(listen: SocketAddr) -> Result<()> {
    let socket = UdpSocket::bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
    eprintln!("loadgen-sink: echoing UDP on {listen}");
    let mut buffers = vec![[0u8; DATAGRAM_CAPACITY]; BATCH];
    loop {
        echo_batch(&socket, &mut buffers).context("echo")?;
    }
}

/// Receives a batch (blocking for the first datagram) and sends each back; returns how many.
fn echo_batch(socket: &UdpSocket, buffers: &mut [[u8; DATAGRAM_CAPACITY]]) -> io::Result<usize> {
    let fd = socket.as_raw_fd();
    let mut iovecs: Vec<libc::iovec> = buffers
        .iter_mut()
        .map(|b| libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: DATAGRAM_CAPACITY })
        .collect();
    // SAFETY: zeroed sockaddr_storage and mmsghdr are valid empty values.
    let mut addresses: Vec<libc::sockaddr_storage> = vec![unsafe { std::mem::zeroed() }; buffers.len()];
    // SAFETY: as above.
    let mut headers: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; buffers.len()];
    for ((h, iov), addr) in headers.iter_mut().zip(iovecs.iter_mut()).zip(addresses.iter_mut()) {
        h.msg_hdr.msg_iov = iov;
        h.msg_hdr.msg_iovlen = 1;
        h.msg_hdr.msg_name = (addr as *mut libc::sockaddr_storage).cast();
        h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
    }
    // SAFETY: every header points at a live iovec, buffer and address slot of the stated sizes.
    let n = unsafe {
        libc::recvmmsg(fd, headers.as_mut_ptr(), headers.len() as u32, libc::MSG_WAITFORONE, std::ptr::null_mut())
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted { Ok(0) } else { Err(e) };
    }
    let n = n as usize;
    // Send back exactly what came, to where it came from: lengths become the iovec lengths.
    for h in &mut headers[..n] {
        // SAFETY: msg_iov points at one of `iovecs`, alive here.
        unsafe { (*h.msg_hdr.msg_iov).iov_len = h.msg_len as usize };
    }
    let mut done = 0;
    while done < n {
        // SAFETY: the first `n` headers are filled in by recvmmsg and still point at live data.
        let sent = unsafe { libc::sendmmsg(fd, headers[done..n].as_mut_ptr(), (n - done) as u32, 0) };
        if sent <= 0 {
            // A destination that vanished (ICMP error) must not stop the echo for the others.
            done += 1;
        } else {
            done += sent as usize;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn echoes_each_datagram_to_its_sender() {
        let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        a.send_to(b"from a", sink.local_addr().unwrap()).unwrap();
        b.send_to(&[7u8; 1400], sink.local_addr().unwrap()).unwrap();
        let mut buffers = vec![[0u8; DATAGRAM_CAPACITY]; BATCH];
        let mut echoed = 0;
        while echoed < 2 {
            echoed += echo_batch(&sink, &mut buffers).unwrap();
        }
        let mut buf = [0u8; 2048];
        for s in [&a, &b] {
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        }
        let (n, from) = a.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from), (&b"from a"[..], sink.local_addr().unwrap()));
        let n = b.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], &[7u8; 1400][..]);
    }
}
