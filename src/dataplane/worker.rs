//! One data-plane worker: an io_uring loop over its UDP sockets, TCP listeners and
//! connections, its TUN queue and its mailbox.
//!
//! Each ring wait returns a batch of completions. The worker processes the whole batch
//! (opening and sealing each packet with its session's AEAD key, queueing TUN writes and
//! socket sends as new submissions) before the next single `io_uring_enter`, which both
//! submits everything and waits for the next batch.

#[cfg(test)]
mod float_tests;
mod ike;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::{self, Read as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{IoUring, cqueue, opcode, squeue, types};
use tracing::{debug, warn};

use super::buffers::{BUF_SIZE, BufId, BufferPool};
use super::counters::{DropReason, WorkerCounters};
use super::gro::{GRO_RECV_DEPTH, GroReceives, Received};
use super::gso::{Datagram, Destination, GsoBatch, GsoSends};
use super::offload::{Coalescer, ReadBuffers, TUN_READ_SIZE, WriteFrom, split_tun_read};
use super::recv_ring::{self, BufRing, GRO_BUFFER, GRO_GROUP, LargeRing, PLAIN_GROUP, TUN_GROUP, TunRing};
use super::sstp::{EapProgress, SstpConn, TLS_HANDSHAKE_RECORD};
use super::table::{KeySet, SessionShared, Transport};
use super::tcp::{Frame, MAX_QUEUED_OUTPUT, Stream, TcpConn};
use super::{
    ControlEvent, HandOff, Handed, Inbox, LocalHandle, SessionKind, Shared, SstpGrant, UdpRole, WorkerCommand,
    WorkerIo, sys,
};
use crate::crypto::ReplayWindow;
use crate::proto::openvpn::acceptor::{Accepted, Acceptor};
use crate::proto::openvpn::data::{self, DataHeader, HEADROOM, Payload};
use crate::proto::openvpn::key_method::iv_proto;
use crate::proto::openvpn::packet::Opcode;
use crate::proto::openvpn::session::{AuthDecision, CloseReason, Event, ServerSession, SessionError};
use crate::proto::ppp::AuthVerdict;
use crate::proto::sstp::{self, SstpServer};

const RING_ENTRIES: u32 = 1024;
const POOL_BUFFERS: usize = 4096;
// A pool buffer's id is its id in the provided-buffer ring, 16 bits there.
const _: () = assert!(POOL_BUFFERS <= 1 << 16);
/// Receives kept in flight per UDP socket.
const UDP_RECV_DEPTH: usize = 64;
/// Buffers in the ring of the TUN queue's multishot read: as many packets (with offloads,
/// super-packets) as one completion batch takes from the queue before the read waits for
/// buffers to come back.
const TUN_RING_BUFFERS: u16 = 64;
/// Reads kept in flight on the TUN queue where the kernel has no multishot read. Few: every
/// packet wakes them all, the losers poll again, and a read that loses 128 times in a row
/// goes to an io-wq thread, which blocks in the read (io_uring's APOLL_MAX_RETRY).
const TUN_READ_DEPTH: usize = 8;
/// Housekeeping period: keepalives, dead peers, stale TCP connections.
const TICK: Duration = Duration::from_secs(1);
/// A TCP connection that has not completed a handshake within this time is closed.
const TCP_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);
/// How long a closing connection's last bytes (an SSTP goodbye) may take to leave.
const LINGER_TIMEOUT: Duration = Duration::from_secs(5);
/// What one read of TLS plaintext takes (a TLS record's payload is at most 16 KiB).
const PLAINTEXT_CHUNK: usize = 16 * 1024;

// io_uring user_data: operation kind in the top byte, then two indices.
const OP_UDP_RECV: u64 = 1;
const OP_UDP_SEND: u64 = 2;
const OP_TUN_READ: u64 = 3;
const OP_TUN_WRITE: u64 = 4;
const OP_TCP_ACCEPT: u64 = 5;
const OP_TCP_RECV: u64 = 6;
const OP_TCP_SEND: u64 = 7;
const OP_WAKE: u64 = 8;
/// A read from a TUN queue with offloads, into a read buffer (not a pool buffer).
const OP_TUN_READ_OFFLOAD: u64 = 9;
/// A write of the coalescer's (its slot in the second index).
const OP_TUN_WRITE_STAGED: u64 = 10;
/// A UDP GSO send (its slot in the second index).
const OP_UDP_GSO_SEND: u64 = 11;
/// A receive on a UDP socket with GRO, into a GRO receive buffer (its slot in the
/// second index).
const OP_UDP_RECV_GRO: u64 = 12;
/// A multishot receive on a UDP socket (plain or GRO), into buffers of a provided ring.
const OP_UDP_RECV_MULTI: u64 = 13;
/// The multishot read on the TUN queue, into buffers of its provided ring.
const OP_TUN_READ_MULTI: u64 = 14;

/// Fixed-buffer indices: the pool's memory, then each TUN read buffer (with offloads).
const POOL_BUFFER_INDEX: u16 = 0;
const FIRST_READ_BUFFER_INDEX: u16 = 1;

fn user_data(op: u64, a: u32, b: u32) -> u64 {
    (op << 56) | (u64::from(a & 0x00ff_ffff) << 32) | u64::from(b)
}

fn split_user_data(ud: u64) -> (u64, u32, u32) {
    (ud >> 56, ((ud >> 32) & 0x00ff_ffff) as u32, ud as u32)
}

/// A file as SQEs name it: its slot in the ring's fixed-file table (the kernel then
/// takes no reference on the file per operation), or its plain fd where the kernel
/// refused the table.
#[derive(Debug, Clone, Copy)]
enum RingFile {
    Fixed(u32),
    Fd(RawFd),
}

/// Builds an SQE on `$file`, with `$fd` bound to its `types::Fixed` or `types::Fd`.
macro_rules! on_file {
    ($file:expr, $fd:ident => $sqe:expr) => {
        match $file {
            RingFile::Fixed(slot) => {
                let $fd = types::Fixed(slot);
                $sqe
            }
            RingFile::Fd(raw) => {
                let $fd = types::Fd(raw);
                $sqe
            }
        }
    };
}

/// The worker's long-lived files in the ring's fixed-file table: its UDP sockets, TCP
/// listeners, TUN queue and inbox eventfd. Accepted TCP connections stay plain fds: the
/// worker sets socket options on them and reads TLS from them with ordinary calls, which
/// a direct (ring-only) descriptor would not allow, and they carry few, large operations
/// (SSTP and OpenVPN over TCP), where a file reference per operation costs nothing that
/// shows.
struct RingFiles {
    udp: Vec<RingFile>,
    tcp: Vec<RingFile>,
    tun: TunFile,
    wake: RingFile,
}

impl RingFiles {
    fn register(ring: &IoUring, io: &WorkerIo, wake: RawFd, fixed_buffers: bool, worker: usize) -> RingFiles {
        let fds: Vec<RawFd> =
            io.udp.iter().chain(&io.tcp).map(AsRawFd::as_raw_fd).chain([io.tun.as_raw_fd(), wake]).collect();
        let fixed = match ring.submitter().register_files(&fds) {
            Ok(()) => true,
            Err(e) => {
                warn!(worker, error = %e, "io_uring fixed files refused; operations name plain descriptors");
                false
            }
        };
        let file = |i: usize| if fixed { RingFile::Fixed(i as u32) } else { RingFile::Fd(fds[i]) };
        let (udp, tcp) = (io.udp.len(), io.tcp.len());
        RingFiles {
            udp: (0..udp).map(file).collect(),
            tcp: (udp..udp + tcp).map(file).collect(),
            tun: TunFile { file: file(udp + tcp), fixed_buffers },
            wake: file(udp + tcp + 1),
        }
    }
}

/// The TUN queue as SQEs name it, and whether the pool and the TUN read buffers are
/// registered with the ring (reads and writes from them then go by ReadFixed/WriteFixed,
/// and the kernel does not map their pages per operation).
#[derive(Debug, Clone, Copy)]
struct TunFile {
    file: RingFile,
    fixed_buffers: bool,
}

impl TunFile {
    /// A read into registered buffer `index` (pool or read buffer) at `ptr`.
    fn read(self, ptr: *mut u8, len: u32, index: u16) -> squeue::Entry {
        if self.fixed_buffers {
            on_file!(self.file, fd => opcode::ReadFixed::new(fd, ptr, len, index).build())
        } else {
            on_file!(self.file, fd => opcode::Read::new(fd, ptr, len).build())
        }
    }

    /// A write of bytes in a pool buffer.
    fn write_pool(self, bytes: &[u8]) -> squeue::Entry {
        let (ptr, len) = (bytes.as_ptr(), bytes.len() as u32);
        if self.fixed_buffers {
            on_file!(self.file, fd => opcode::WriteFixed::new(fd, ptr, len, POOL_BUFFER_INDEX).build())
        } else {
            on_file!(self.file, fd => opcode::Write::new(fd, ptr, len).build())
        }
    }

    /// A write of bytes outside the registered buffers (the coalescer's super-packets).
    fn write(self, bytes: &[u8]) -> squeue::Entry {
        on_file!(self.file, fd => opcode::Write::new(fd, bytes.as_ptr(), bytes.len() as u32).build())
    }
}

/// Registers the pool's memory (index 0) and the TUN read buffers (from index 1) as the
/// ring's fixed buffers; false, after one warning, when the kernel refuses (too old, or
/// a locked-memory limit without CAP_IPC_LOCK). The coalescer's buffers are not among
/// them: they grow (and move) with the flows merged into them.
fn register_buffers(ring: &IoUring, bufs: &mut BufferPool, reads: Option<&mut ReadBuffers>, worker: usize) -> bool {
    let mut regions = vec![bufs.region()];
    if let Some(reads) = reads {
        regions.extend(reads.regions());
    }
    // SAFETY: the regions are the pool's and the read buffers' heap memory, which stays
    // put and outlives the ring (the worker drops its ring first).
    match unsafe { ring.submitter().register_buffers(&regions) } {
        Ok(()) => true,
        Err(e) => {
            warn!(worker, error = %e, "io_uring fixed buffers refused; TUN reads and writes map their buffers each time");
            false
        }
    }
}

/// Multishot receives on the UDP sockets: the provided-buffer rings, and the message
/// header the receives are armed with. Sockets with UDP GRO take their buffers from the
/// GRO ring, the others from the ring of pool buffers.
struct Multishot {
    plain: Option<BufRing>,
    gro: Option<LargeRing>,
    msghdr: Box<libc::msghdr>,
}

impl Multishot {
    /// None, after one warning, when the kernel refuses a buffer ring (the sockets then
    /// receive with one RecvMsg per buffer). Multishot RecvMsg came in Linux 6.0, before
    /// DEFER_TASKRUN (6.1): a ring without the latter receives one by one too.
    fn new(ring: &IoUring, deferred: bool, udp_gro: &[bool], worker: usize) -> Option<Multishot> {
        if !deferred {
            return None;
        }
        Multishot::register(ring, udp_gro)
            .inspect_err(|e| warn!(worker, error = %e, "io_uring buffer rings refused; UDP receives go one by one"))
            .ok()
    }

    /// A ring of pool buffers as deep as the single receives were (UDP_RECV_DEPTH per
    /// plain socket), and a GRO ring of GRO_RECV_DEPTH large buffers per GRO socket.
    fn register(ring: &IoUring, udp_gro: &[bool]) -> io::Result<Multishot> {
        let ring_of = |sockets: usize, depth: usize| (sockets * depth).next_power_of_two().min(32768) as u16;
        let plain_sockets = udp_gro.iter().filter(|&&g| !g).count();
        let gro_sockets = udp_gro.len() - plain_sockets;
        let plain = (plain_sockets > 0)
            .then(|| BufRing::register(&ring.submitter(), ring_of(plain_sockets, UDP_RECV_DEPTH), PLAIN_GROUP))
            .transpose()?;
        let gro = (gro_sockets > 0)
            .then(|| {
                LargeRing::register(&ring.submitter(), GRO_GROUP, ring_of(gro_sockets, GRO_RECV_DEPTH), GRO_BUFFER)
            })
            .transpose()?;
        Ok(Multishot { plain, gro, msghdr: Box::new(recv_ring::multishot_msghdr()) })
    }
}

/// The ring of the TUN queue's multishot read; None, after one warning, where the kernel
/// has no multishot read (it came in Linux 6.7) or refuses the ring: the queue is then read
/// by TUN_READ_DEPTH single reads.
fn register_tun_ring(ring: &IoUring, offload: bool, worker: usize) -> Option<TunRing> {
    let mut probe = io_uring::Probe::new();
    let registered =
        if ring.submitter().register_probe(&mut probe).is_ok() && probe.is_supported(opcode::ReadMulti::CODE) {
            TunRing::register(&ring.submitter(), TUN_RING_BUFFERS, offload)
        } else {
            Err(io::Error::new(io::ErrorKind::Unsupported, "no IORING_OP_READ_MULTISHOT"))
        };
    registered
        .inspect_err(
            |e| warn!(worker, error = %e, "io_uring multishot TUN read refused; the TUN queue is read by single reads"),
        )
        .ok()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Udp { listener: usize, peer: SocketAddr, local: Option<IpAddr> },
    Tcp { conn: u32 },
}

struct Local {
    generation: u32,
    proto: Box<ServerSession>,
    link: Link,
    peer: SocketAddr,
    shared: Option<Arc<SessionShared>>,
    replay: [ReplayWindow; 8],
    scheduled: Option<Instant>,
}

pub(super) struct Worker {
    // Dropped first: the kernel must stop using buffers before they are freed.
    ring: IoUring,
    index: usize,
    shared: Arc<Shared>,
    inbox: Arc<Inbox>,
    io: WorkerIo,
    bufs: BufferPool,
    acceptor: Acceptor,
    sessions: Vec<Option<Local>>,
    session_generations: Vec<u32>,
    free_sessions: Vec<u32>,
    by_addr: HashMap<(usize, SocketAddr), u32>,
    by_peer: HashMap<u32, u32>,
    /// SSTP sessions: peer-id to connection.
    sstp_by_peer: HashMap<u32, u32>,
    /// Where TLS plaintext of SSTP connections is read into.
    plaintext: Box<[u8]>,
    conns: Vec<Option<TcpConn>>,
    conn_generations: Vec<u32>,
    free_conns: Vec<u32>,
    conn_opened: Vec<Instant>,
    timers: BinaryHeap<Reverse<(Instant, u32, u32)>>,
    udp_armed: Vec<usize>,
    /// Reads in flight on the TUN queue (the multishot read counts one).
    tun_armed: usize,
    wake_buf: Box<u64>,
    now_secs: u64,
    shutdown_at: Option<Instant>,
    /// This worker's IKEv2 responder, when IKEv2 is enabled.
    ike: Option<ike::IkeEndpoint>,
    /// The TUN queue's multishot read and its buffers; None where the kernel refused it.
    tun_ring: Option<TunRing>,
    /// With TUN offloads and single reads: where they land (super-packets).
    tun_reads: Option<ReadBuffers>,
    /// With TUN offloads: the batch's TUN writes.
    gro: Option<Coalescer>,
    /// The packets cut from one read (reused).
    split: Vec<(BufId, usize)>,
    /// Per UDP socket, the largest datagram sent by UDP GSO; 0 where it is off (port 500
    /// IKE sockets, a kernel without it, or the offload switch off).
    udp_gso_segment: Vec<usize>,
    /// Sealed datagrams for one client gathered for a GSO send, the sends in flight,
    /// and a spare list of datagrams (reused).
    gso_batch: GsoBatch,
    gso_sends: GsoSends,
    gso_datagrams: Vec<Datagram>,
    /// Per UDP socket, whether it receives with UDP GRO (OpenVPN and NAT-T sockets, the
    /// offload switch on, and a kernel that takes it); their receive buffers, and the
    /// datagrams cut from one receive (reused).
    udp_gro: Vec<bool>,
    gro_receives: GroReceives,
    gro_split: Vec<(BufId, usize)>,
    files: RingFiles,
    /// Multishot receives with provided buffers; None where the kernel refused them.
    multishot: Option<Multishot>,
}

impl Worker {
    pub(super) fn new(index: usize, shared: Arc<Shared>, io: WorkerIo) -> io::Result<Worker> {
        let (ring, deferred) = match IoUring::builder().setup_single_issuer().setup_defer_taskrun().build(RING_ENTRIES)
        {
            Ok(ring) => (ring, true),
            Err(_) => (IoUring::new(RING_ENTRIES)?, false),
        };
        let inbox = shared.inboxes[index].clone();
        let acceptor = Acceptor::new(shared.tls_crypt.clone());
        let udp_armed = vec![0; io.udp.len()];
        let ike = io.ike.clone().map(ike::IkeEndpoint::new);
        let tun_ring = register_tun_ring(&ring, io.tun_offload.is_some(), index);
        let mut tun_reads = (io.tun_offload.is_some() && tun_ring.is_none()).then(|| ReadBuffers::new(TUN_READ_DEPTH));
        let gro = io.tun_offload.map(|o| Coalescer::new(o.udp));
        let udp_gso_segment = (0..io.udp.len())
            .map(|i| {
                // OpenVPN data and ESP go by GSO; IKE messages leave alone (send_ike).
                let sends_data = matches!(io.udp_roles[i], UdpRole::OpenVpn | UdpRole::NatT(_));
                let gso = io.udp_gso && sends_data && sys::udp_gso_supported(io.udp[i].as_raw_fd());
                if gso { BUF_SIZE } else { 0 }
            })
            .collect();
        let udp_gro = (0..io.udp.len())
            .map(|i| {
                let receives_data = matches!(io.udp_roles[i], UdpRole::OpenVpn | UdpRole::NatT(_));
                io.udp_gso && receives_data && sys::enable_udp_gro(io.udp[i].as_raw_fd())
            })
            .collect::<Vec<bool>>();
        let mut bufs = BufferPool::new(POOL_BUFFERS);
        let fixed_buffers = register_buffers(&ring, &mut bufs, tun_reads.as_mut(), index);
        let files = RingFiles::register(&ring, &io, inbox.wake.as_raw_fd(), fixed_buffers, index);
        let multishot = Multishot::new(&ring, deferred, &udp_gro, index);
        Ok(Worker {
            ring,
            index,
            inbox,
            acceptor,
            io,
            bufs,
            sessions: Vec::new(),
            session_generations: Vec::new(),
            free_sessions: Vec::new(),
            by_addr: HashMap::new(),
            by_peer: HashMap::new(),
            sstp_by_peer: HashMap::new(),
            plaintext: vec![0; PLAINTEXT_CHUNK].into_boxed_slice(),
            conns: Vec::new(),
            conn_generations: Vec::new(),
            free_conns: Vec::new(),
            conn_opened: Vec::new(),
            timers: BinaryHeap::new(),
            udp_armed,
            tun_armed: 0,
            wake_buf: Box::new(0),
            now_secs: shared.secs(Instant::now()),
            shutdown_at: None,
            ike,
            tun_ring,
            tun_reads,
            gro,
            split: Vec::with_capacity(super::offload::MAX_SPLIT_SEGMENTS),
            udp_gso_segment,
            gso_batch: GsoBatch::default(),
            gso_sends: GsoSends::default(),
            gso_datagrams: Vec::with_capacity(super::gso::MAX_SEGMENTS),
            udp_gro,
            gro_receives: GroReceives::default(),
            gro_split: Vec::new(),
            files,
            multishot,
            shared,
        })
    }

    fn counters(&self) -> &WorkerCounters {
        &self.shared.counters[self.index]
    }

    fn count_drop(&self, reason: DropReason) {
        self.shared.counters[self.index].drop(reason);
    }

    fn push(&mut self, entry: squeue::Entry) {
        push_entry(&mut self.ring, &entry);
    }

    pub(super) fn run(&mut self) -> io::Result<()> {
        for listener in 0..self.io.tcp.len() {
            self.arm_accept(listener);
        }
        self.arm_wake();
        self.rearm();
        let mut completions: Vec<(u64, i32, u32)> = Vec::with_capacity(RING_ENTRIES as usize * 2);
        let mut next_tick = Instant::now() + TICK;
        loop {
            let now = Instant::now();
            let mut deadline = next_tick;
            if let Some(Reverse((t, _, _))) = self.timers.peek() {
                deadline = deadline.min(*t);
            }
            if let Some(t) = self.shutdown_at {
                deadline = deadline.min(t);
            }
            if let Some(t) = self.ike.as_ref().and_then(ike::IkeEndpoint::poll_timeout) {
                deadline = deadline.min(t);
            }
            let wait = deadline.saturating_duration_since(now).max(Duration::from_micros(50));
            let ts = types::Timespec::new().sec(wait.as_secs()).nsec(wait.subsec_nanos());
            let args = types::SubmitArgs::new().timespec(&ts);
            if let Err(e) = self.ring.submitter().submit_with_args(1, &args)
                && !matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN))
            {
                return Err(e);
            }
            completions.clear();
            completions.extend(self.ring.completion().map(|c| (c.user_data(), c.result(), c.flags())));
            let now = Instant::now();
            self.now_secs = self.shared.secs(now);
            if !completions.is_empty() {
                let c = self.counters();
                c.completions.fetch_add(completions.len() as u64, std::sync::atomic::Ordering::Relaxed);
                c.batches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            let shared = self.shared.clone();
            let routes = shared.table.address_guard();
            for &(ud, res, flags) in &completions {
                self.complete(now, ud, res, flags, &routes);
            }
            drop(routes);
            self.drain_inbox(now);
            self.run_timers(now);
            self.ike_timeout(now);
            if now >= next_tick {
                self.tick(now);
                next_tick = now + TICK;
            }
            self.flush_tun_writes();
            self.flush_gso();
            self.rearm();
            if let Some(t) = self.shutdown_at
                && (now >= t
                    || (self.sessions.iter().all(Option::is_none)
                        && !self.ike.as_ref().is_some_and(ike::IkeEndpoint::has_sessions)))
            {
                self.quiesce();
                return Ok(());
            }
        }
    }

    /// Cancels every operation still in flight and reaps the completions. Otherwise
    /// the kernel tears the ring down asynchronously after the process exits, and its
    /// pending receives keep the sockets open meanwhile: a restarted gateway would join
    /// SO_REUSEPORT groups with dead sockets that swallow its clients' packets.
    fn quiesce(&mut self) {
        let _ = self.ring.submit();
        let limit = types::Timespec::new().sec(2);
        if let Err(e) = self.ring.submitter().register_sync_cancel(Some(limit), types::CancelBuilder::any()) {
            warn!(worker = self.index, error = %e, "cannot cancel in-flight operations");
        }
        // Cancelled requests complete through deferred task work, run on this wait.
        let reap = types::Timespec::new().nsec(10_000_000);
        loop {
            let _ = self.ring.submitter().submit_with_args(1, &types::SubmitArgs::new().timespec(&reap));
            if self.ring.completion().count() == 0 {
                break;
            }
        }
        // The fixed-file table holds the sockets too; the ring's own teardown is
        // asynchronous, so they are let go here.
        if matches!(self.files.tun.file, RingFile::Fixed(_)) {
            let _ = self.ring.submitter().unregister_files();
        }
    }

    // ---- arming --------------------------------------------------------------------

    fn rearm(&mut self) {
        if self.multishot.is_some() {
            self.rearm_multishot();
        } else {
            for listener in 0..self.io.udp.len() {
                let file = self.files.udp[listener];
                if self.udp_gro[listener] {
                    while self.udp_armed[listener] < GRO_RECV_DEPTH {
                        let (slot, hdr) = self.gro_receives.prepare();
                        let done = user_data(OP_UDP_RECV_GRO, listener as u32, slot);
                        let recv = on_file!(file, fd => opcode::RecvMsg::new(fd, hdr).build());
                        push_entry(&mut self.ring, &recv.user_data(done));
                        self.udp_armed[listener] += 1;
                    }
                    continue;
                }
                while self.udp_armed[listener] < UDP_RECV_DEPTH {
                    let Some(b) = self.bufs.alloc() else { return };
                    let hdr = self.bufs.prepare_recv(b, 0);
                    let recv = on_file!(file, fd => opcode::RecvMsg::new(fd, hdr).build());
                    self.push(recv.user_data(user_data(OP_UDP_RECV, listener as u32, b)));
                    self.udp_armed[listener] += 1;
                }
            }
        }
        let tun = self.files.tun;
        if let Some(tun_ring) = self.tun_ring.as_mut() {
            tun_ring.refill(&mut self.bufs);
            // Armed at start, and again after a completion without IORING_CQE_F_MORE once
            // the ring has buffers.
            if self.tun_armed == 0 && tun_ring.has_buffers() {
                let read = on_file!(tun.file, fd => opcode::ReadMulti::new(fd, 0, TUN_GROUP).build());
                push_entry(&mut self.ring, &read.user_data(user_data(OP_TUN_READ_MULTI, 0, 0)));
                self.tun_armed = 1;
            }
            return;
        }
        if let Some(reads) = self.tun_reads.as_mut() {
            while self.tun_armed < TUN_READ_DEPTH {
                let Some(r) = reads.alloc() else { return };
                let ptr = reads.get_mut(r).as_mut_ptr();
                let read = tun.read(ptr, TUN_READ_SIZE as u32, FIRST_READ_BUFFER_INDEX + r as u16);
                push_entry(&mut self.ring, &read.user_data(user_data(OP_TUN_READ_OFFLOAD, 0, r)));
                self.tun_armed += 1;
            }
            return;
        }
        while self.tun_armed < TUN_READ_DEPTH {
            let Some(b) = self.bufs.alloc() else { return };
            let ptr = self.bufs.get_mut(b)[HEADROOM..].as_mut_ptr();
            let read = tun.read(ptr, (BUF_SIZE - HEADROOM) as u32, POOL_BUFFER_INDEX);
            self.push(read.user_data(user_data(OP_TUN_READ, 0, b)));
            self.tun_armed += 1;
        }
    }

    /// Refills the ring of pool buffers from the pool, hands the GRO ring its returned
    /// buffers, and arms a multishot receive on each socket that has none (at start, and
    /// after a completion without IORING_CQE_F_MORE) while its ring has buffers.
    fn rearm_multishot(&mut self) {
        let Worker { multishot: Some(m), bufs, ring, files, udp_armed, udp_gro, .. } = self else { return };
        if let Some(plain) = m.plain.as_mut() {
            while plain.held() < plain.capacity() {
                let Some(b) = bufs.alloc() else { break };
                let (addr, len) = bufs.receive_area(b);
                plain.add(addr, len, b as u16);
            }
            plain.publish();
        }
        if let Some(gro) = m.gro.as_mut() {
            gro.ring().publish();
        }
        for (listener, armed) in udp_armed.iter_mut().enumerate() {
            let (group, ring_of_buffers) = if udp_gro[listener] {
                (GRO_GROUP, m.gro.as_mut().map(LargeRing::ring))
            } else {
                (PLAIN_GROUP, m.plain.as_mut())
            };
            if *armed > 0 || ring_of_buffers.is_none_or(|r| r.held() == 0) {
                continue;
            }
            let msghdr: *const libc::msghdr = &*m.msghdr;
            let recv = on_file!(files.udp[listener], fd => opcode::RecvMsgMulti::new(fd, msghdr, group).build());
            push_entry(ring, &recv.user_data(user_data(OP_UDP_RECV_MULTI, listener as u32, 0)));
            *armed = 1;
        }
    }

    fn arm_accept(&mut self, listener: usize) {
        let accept =
            on_file!(self.files.tcp[listener], fd => opcode::AcceptMulti::new(fd).flags(libc::SOCK_CLOEXEC).build());
        self.push(accept.user_data(user_data(OP_TCP_ACCEPT, listener as u32, 0)));
    }

    fn arm_wake(&mut self) {
        let ptr = (&mut *self.wake_buf as *mut u64).cast::<u8>();
        let read = on_file!(self.files.wake, fd => opcode::Read::new(fd, ptr, 8).build());
        self.push(read.user_data(user_data(OP_WAKE, 0, 0)));
    }

    // ---- completions -----------------------------------------------------------------

    fn complete(&mut self, now: Instant, ud: u64, res: i32, flags: u32, routes: &Routes<'_>) {
        let (op, a, b) = split_user_data(ud);
        match op {
            OP_UDP_RECV => {
                self.udp_armed[a as usize] -= 1;
                if res <= 0 {
                    self.bufs.release(b);
                    return;
                }
                match self.bufs.received_from(b) {
                    Some(peer) => {
                        let local = self.bufs.received_on(b);
                        self.on_datagram(now, a as usize, peer, local, b, res as usize);
                    }
                    None => self.bufs.release(b),
                }
            }
            OP_UDP_RECV_GRO => {
                self.udp_armed[a as usize] -= 1;
                self.on_gro_receive(now, a as usize, b, res);
            }
            OP_UDP_RECV_MULTI => self.on_multishot_receive(now, a as usize, res, flags),
            OP_UDP_SEND | OP_TUN_WRITE => {
                if res < 0 {
                    debug!(worker = self.index, error = %io::Error::from_raw_os_error(-res), op, "send failed");
                }
                self.bufs.release(b);
            }
            OP_TUN_READ => {
                self.tun_armed -= 1;
                if res <= 0 {
                    self.bufs.release(b);
                    return;
                }
                self.on_tun(b, res as usize, routes);
            }
            OP_TUN_READ_OFFLOAD => {
                self.tun_armed -= 1;
                self.on_tun_offload(b, res, routes);
            }
            OP_TUN_READ_MULTI => self.on_tun_multishot(res, flags, routes),
            OP_TUN_WRITE_STAGED => {
                if res < 0 {
                    debug!(worker = self.index, error = %io::Error::from_raw_os_error(-res), "TUN write failed");
                }
                if let Some(gro) = self.gro.as_mut() {
                    gro.written(b);
                }
            }
            OP_UDP_GSO_SEND => self.on_gso_sent(b, res),
            OP_TCP_ACCEPT => {
                if res >= 0 {
                    // SAFETY: a successful accept returns a new fd that we now own.
                    let fd = unsafe { OwnedFd::from_raw_fd(res) };
                    self.on_accept(now, a as usize, fd);
                } else {
                    warn!(worker = self.index, error = %io::Error::from_raw_os_error(-res), "accept failed");
                }
                if !cqueue::more(flags) && self.shutdown_at.is_none() {
                    self.arm_accept(a as usize);
                }
            }
            OP_TCP_RECV => self.on_tcp_recv(now, a, b, res),
            OP_TCP_SEND => self.on_tcp_sent(a, b, res),
            OP_WAKE => self.arm_wake(),
            _ => {}
        }
    }

    /// A datagram from `peer` on UDP socket `listener`, in `bufs[b][..len]`.
    fn on_datagram(
        &mut self,
        now: Instant,
        listener: usize,
        peer: SocketAddr,
        local: Option<IpAddr>,
        b: BufId,
        len: usize,
    ) {
        if self.io.udp_roles[listener] == UdpRole::OpenVpn {
            self.on_udp(now, Link::Udp { listener, peer, local }, b, len);
        } else {
            self.on_ike_socket(now, listener, peer, local, b, len);
        }
    }

    /// A receive on a socket with UDP GRO (`res` bytes in GRO receive buffer `slot`):
    /// its datagrams, copied apart into pool buffers, go the way of plain receives.
    fn on_gro_receive(&mut self, now: Instant, listener: usize, slot: u32, res: i32) {
        let mut split = std::mem::take(&mut self.gro_split);
        let received = if res > 0 { self.gro_receives.received(slot, res as usize) } else { None };
        let from = received.and_then(|r| split_gro(r, &mut self.bufs, &self.shared.counters[self.index], &mut split));
        self.gro_receives.release(slot);
        self.deliver_split(now, listener, from, split);
    }

    /// Hands the datagrams cut from a GRO receive (from `from`) on, and keeps the list.
    fn deliver_split(
        &mut self,
        now: Instant,
        listener: usize,
        from: Option<(SocketAddr, Option<IpAddr>)>,
        mut split: Vec<(BufId, usize)>,
    ) {
        if let Some((peer, local)) = from {
            for &(b, len) in &split {
                self.on_datagram(now, listener, peer, local, b, len);
            }
        }
        split.clear();
        self.gro_split = split;
    }

    /// A completion of the multishot receive on UDP socket `listener`: a datagram (a GRO
    /// receive on a GRO socket) in the ring buffer the completion names, or an error. A
    /// completion without IORING_CQE_F_MORE ends the receive; it is armed again at the
    /// end of the batch (after ENOBUFS, once the ring has buffers again).
    fn on_multishot_receive(&mut self, now: Instant, listener: usize, res: i32, flags: u32) {
        if !cqueue::more(flags) {
            self.udp_armed[listener] = 0;
        }
        let Some(m) = self.multishot.as_mut() else { return };
        let Some(id) = cqueue::buffer_select(flags) else {
            if res == -libc::ENOBUFS {
                self.counters().udp_recv_ring_empty.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            } else if res < 0 {
                debug!(worker = self.index, error = %io::Error::from_raw_os_error(-res), "multishot receive failed");
            }
            return;
        };
        let len = usize::try_from(res).unwrap_or(0);
        if self.udp_gro[listener] {
            let Some(gro) = m.gro.as_mut() else { return };
            gro.ring().consumed();
            let mut split = std::mem::take(&mut self.gro_split);
            let received = gro.get(id).and_then(|buffer| recv_ring::parse(&buffer[..len.min(buffer.len())]));
            let from = match received {
                Some(r) => split_gro(r, &mut self.bufs, &self.shared.counters[self.index], &mut split),
                None => {
                    self.shared.counters[self.index].drop(DropReason::Malformed);
                    None
                }
            };
            gro.recycle(id);
            self.deliver_split(now, listener, from, split);
            return;
        }
        let Some(plain) = m.plain.as_mut() else { return };
        plain.consumed();
        let b = BufId::from(id);
        let buffer = self.bufs.with_prefix(b);
        // The datagram lies at offset 0 of the pool buffer (the header part fills the room
        // in front of it), where the packet path takes it.
        match recv_ring::parse(&buffer[..len.min(buffer.len())]) {
            Some(Received { peer: Some(peer), local, data, .. }) => {
                let len = data.len();
                self.on_datagram(now, listener, peer, local, b, len);
            }
            _ => {
                self.bufs.release(b);
                self.count_drop(DropReason::Malformed);
            }
        }
    }

    fn on_udp(&mut self, now: Instant, link: Link, b: BufId, len: usize) {
        self.on_client_datagram(now, link, b, len, false);
    }

    /// A datagram from an OpenVPN client over UDP; `handed`: by the worker whose socket
    /// received it (it is not passed on again).
    fn on_client_datagram(&mut self, now: Instant, link: Link, b: BufId, len: usize, handed: bool) {
        let Link::Udp { listener, peer, .. } = link else { return };
        if let Some(slot) = self.by_addr.get(&(listener, peer)).copied() {
            self.on_packet(now, link, Some(slot), b, len);
            return;
        }
        let first = self.bufs.get(b)[..len].first().copied();
        if first.is_some_and(|f| f >> 3 == Opcode::DataV2 as u8) {
            self.on_unplaced_data(now, link, b, len, handed);
            return;
        }
        // A control packet of a client that floated: the kernel's hash does not know.
        if !handed && let Some(owner) = self.shared.table.floated_to(listener, peer).filter(|&w| w != self.index) {
            self.hand_datagram(owner, link, b, len);
            return;
        }
        self.on_packet(now, link, None, b, len);
    }

    /// P_DATA_V2 from an address where this worker has no session: its peer-id names
    /// the session. Another worker's goes to that worker; one of this worker's floats to
    /// the new address if the packet opens with its keys (authentic and not replayed).
    fn on_unplaced_data(&mut self, now: Instant, link: Link, b: BufId, len: usize, handed: bool) {
        let Link::Udp { listener, .. } = link else { return };
        let Ok(header) = DataHeader::parse(&self.bufs.get(b)[..len]) else {
            self.bufs.release(b);
            self.count_drop(DropReason::Malformed);
            return;
        };
        // TCP sessions, and sessions on other listen addresses, never float.
        let session = header
            .peer_id
            .and_then(|id| self.shared.table.by_peer_id(id))
            .filter(|s| matches!(**s.transport.load(), Transport::Udp { listener: l, .. } if l == listener));
        let Some(session) = session else {
            self.bufs.release(b);
            self.count_drop(DropReason::UnknownSession);
            return;
        };
        if session.owner != self.index {
            if handed {
                self.bufs.release(b);
                self.count_drop(DropReason::UnknownSession);
            } else {
                self.hand_datagram(session.owner, link, b, len);
            }
            return;
        }
        let Some(slot) = self.by_peer.get(&session.peer_id).copied() else {
            self.bufs.release(b);
            self.count_drop(DropReason::UnknownSession);
            return;
        };
        let verdict = self.open_data(slot, b, len);
        if verdict.is_ok() {
            self.float(slot, link);
        }
        self.deliver_data(now, slot, b, verdict);
    }

    /// Moves a session over UDP to the client's new address `to`: this worker's maps, the
    /// link it sends on, the transport other workers seal towards, and the control plane.
    fn float(&mut self, slot: u32, to: Link) {
        let Link::Udp { listener, peer, local } = to else { return };
        let index = self.index;
        let Some(l) = self.local_mut(slot) else { return };
        let Link::Udp { peer: old, .. } = l.link else { return };
        l.link = to;
        l.peer = peer;
        let handle = LocalHandle { worker: index, kind: SessionKind::OpenVpn, slot, generation: l.generation };
        let session = l.shared.clone();
        if self.by_addr.get(&(listener, old)) == Some(&slot) {
            self.by_addr.remove(&(listener, old));
            self.shared.table.forget_float(listener, old, index);
        }
        self.by_addr.insert((listener, peer), slot);
        self.shared.table.note_float(listener, peer, index);
        if let Some(s) = session {
            s.transport.store(Arc::new(Transport::Udp { listener, peer, local }));
            let _ = self.shared.to_control.send(ControlEvent::ClientMoved { handle, peer_id: s.peer_id, peer });
        }
        self.counters().openvpn_floats.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Passes a client's datagram to the worker that owns its session.
    fn hand_datagram(&mut self, owner: usize, link: Link, b: BufId, len: usize) {
        let Link::Udp { listener, peer, local } = link else { return };
        let packet = &self.bufs.get(b)[..len];
        let handed = self.shared.inboxes.get(owner).map(|inbox| inbox.hand_off_datagram(listener, peer, local, packet));
        self.bufs.release(b);
        match handed {
            Some(HandOff::Queued { .. }) => {
                self.counters().datagram_handoffs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Some(HandOff::Full) | None => self.count_drop(DropReason::Overload),
        }
    }

    /// A whole OpenVPN packet from a client in `bufs[b][..len]` (the buffer is consumed).
    fn on_packet(&mut self, now: Instant, link: Link, slot: Option<u32>, b: BufId, len: usize) {
        let Some(&first) = self.bufs.get(b)[..len].first() else {
            self.bufs.release(b);
            self.count_drop(DropReason::Malformed);
            return;
        };
        let opcode = first >> 3;
        if opcode == Opcode::DataV1 as u8 || opcode == Opcode::DataV2 as u8 {
            match slot {
                Some(slot) => self.on_data(now, slot, b, len),
                None => {
                    self.bufs.release(b);
                    self.count_drop(DropReason::UnknownSession);
                }
            }
        } else {
            let packet = self.bufs.get(b)[..len].to_vec();
            self.bufs.release(b);
            self.on_control(now, link, slot, &packet);
        }
    }

    fn on_data(&mut self, now: Instant, slot: u32, b: BufId, len: usize) {
        let verdict = self.open_data(slot, b, len);
        self.deliver_data(now, slot, b, verdict);
    }

    /// Acts on an opened data packet in `bufs[b]` (the buffer is consumed).
    fn deliver_data(&mut self, now: Instant, slot: u32, b: BufId, verdict: Result<DataVerdict, DropReason>) {
        match verdict {
            Ok(DataVerdict::ToTun { start, end, key_id }) => {
                self.write_tun(b, start, end);
                self.note_key_use(now, slot, key_id);
            }
            Ok(DataVerdict::Consumed { key_id, exit }) => {
                self.bufs.release(b);
                self.note_key_use(now, slot, key_id);
                if exit {
                    if let Some(l) = self.local_mut(slot) {
                        l.proto.close(now, CloseReason::ClientExit, None);
                    }
                    self.drive(now, slot);
                }
            }
            Err(reason) => {
                self.bufs.release(b);
                self.count_drop(reason);
            }
        }
    }

    fn open_data(&mut self, slot: u32, b: BufId, len: usize) -> Result<DataVerdict, DropReason> {
        let now_secs = self.now_secs;
        let local = self.sessions.get_mut(slot as usize).and_then(Option::as_mut).ok_or(DropReason::UnknownSession)?;
        let shared = local.shared.as_ref().ok_or(DropReason::NotEstablished)?;
        let buf = &mut self.bufs.get_mut(b)[..len];
        let header = DataHeader::parse(buf).map_err(|_| DropReason::Malformed)?;
        if header.peer_id.is_some_and(|p| p != shared.peer_id) {
            return Err(DropReason::PeerMismatch);
        }
        let key_id = header.key_id;
        let keys = shared.keys.load();
        let key = keys.recv[key_id as usize & 7].as_ref().ok_or(DropReason::NoKey)?;
        let window = &mut local.replay[key_id as usize & 7];
        window.check(u64::from(header.packet_id)).map_err(|_| DropReason::Replay)?;
        let (packet_id, range) = key.open(buf).map_err(|_| DropReason::Decrypt)?;
        window.update(u64::from(packet_id));
        shared.stats.received(len, now_secs);
        let payload = &buf[range.clone()];
        match data::classify(payload) {
            Payload::Ping | Payload::Occ => Ok(DataVerdict::Consumed { key_id, exit: false }),
            Payload::OccExit => Ok(DataVerdict::Consumed { key_id, exit: true }),
            Payload::Ip => {
                if payload.len() < 20 || payload[0] >> 4 != 4 {
                    return Err(DropReason::NotIpv4);
                }
                if payload[12..16] != shared.address.octets() {
                    return Err(DropReason::SpoofedSource);
                }
                Ok(DataVerdict::ToTun { start: range.start, end: range.end, key_id })
            }
        }
    }

    /// The client sends with `key_id`: if that is a renegotiated key, start using it.
    fn note_key_use(&mut self, now: Instant, slot: u32, key_id: u8) {
        let Some(local) = self.local_mut(slot) else { return };
        if local.proto.send_key_id() != Some(key_id) {
            local.proto.data_received(now, key_id);
            self.drive(now, slot);
        }
    }

    fn write_tun(&mut self, b: BufId, start: usize, end: usize) {
        if let Some(gro) = self.gro.as_mut() {
            let full = gro.stage(b, start, end);
            self.counters().wrote_to_tun(end - start);
            if full {
                self.flush_tun_writes();
            }
            return;
        }
        let write = self.files.tun.write_pool(&self.bufs.get(b)[start..end]);
        self.push(write.user_data(user_data(OP_TUN_WRITE, 0, b)));
        self.counters().wrote_to_tun(end - start);
        self.counters().tun_writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Coalesces and submits the TUN writes staged in this batch (with offloads).
    fn flush_tun_writes(&mut self) {
        let Worker { ring, files, bufs, gro, shared, index, .. } = self;
        if let Some(gro) = gro.as_mut() {
            flush_coalescer(ring, files.tun, bufs, gro, &shared.counters[*index]);
        }
    }

    /// A read from the TUN queue with offloads, in read buffer `r`: its packets, cut
    /// from a super-packet or alone, each go the way of a plain read.
    fn on_tun_offload(&mut self, r: u32, res: i32, routes: &Routes<'_>) {
        let Some(reads) = self.tun_reads.as_mut() else { return };
        if res <= 0 {
            reads.release(r);
            return;
        }
        let mut split = std::mem::take(&mut self.split);
        let outcome = split_tun_read(&mut reads.get_mut(r)[..res as usize], &mut self.bufs, &mut split);
        reads.release(r);
        self.deliver_tun_read(outcome, split, routes);
    }

    /// A completion of the multishot read on the TUN queue: a packet (with offloads, a
    /// virtio_net_hdr and a packet or super-packet) in the ring buffer the completion
    /// names, or an error. A completion without IORING_CQE_F_MORE ends the read; it is armed
    /// again at the end of the batch (after ENOBUFS, once the ring has buffers again).
    fn on_tun_multishot(&mut self, res: i32, flags: u32, routes: &Routes<'_>) {
        if !cqueue::more(flags) {
            self.tun_armed = 0;
        }
        let Some(tun_ring) = self.tun_ring.as_mut() else { return };
        let Some(id) = cqueue::buffer_select(flags) else {
            if res == -libc::ENOBUFS {
                self.counters().tun_read_ring_empty.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            } else if res < 0 {
                debug!(worker = self.index, error = %io::Error::from_raw_os_error(-res), "multishot TUN read failed");
            }
            return;
        };
        let mut split = std::mem::take(&mut self.split);
        let outcome = tun_ring.take(id, usize::try_from(res).unwrap_or(0), &mut self.bufs, &mut split);
        self.deliver_tun_read(outcome, split, routes);
    }

    /// Counts what a TUN read brought (`outcome`: a super-packet or not, or why it was
    /// dropped) and hands the packets cut from it (`split`) on; keeps the list.
    fn deliver_tun_read(
        &mut self,
        outcome: Result<bool, DropReason>,
        mut split: Vec<(BufId, usize)>,
        routes: &Routes<'_>,
    ) {
        match outcome {
            Ok(true) => {
                let c = self.counters();
                c.tun_super_reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                c.tun_split_packets.fetch_add(split.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
            Ok(false) => {}
            Err(reason) => self.count_drop(reason),
        }
        for (b, len) in split.drain(..) {
            self.on_tun(b, len, routes);
        }
        self.split = split;
    }

    /// A packet read from the TUN, at `bufs[b][HEADROOM..HEADROOM + len]`.
    fn on_tun(&mut self, b: BufId, len: usize, routes: &Routes<'_>) {
        let pkt = &self.bufs.get(b)[HEADROOM..HEADROOM + len];
        if len < 20 || pkt[0] >> 4 != 4 {
            self.bufs.release(b);
            self.count_drop(DropReason::NotIpv4);
            return;
        }
        let dst = Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]);
        let Some(session) = routes.get(&dst) else {
            self.bufs.release(b);
            self.count_drop(DropReason::NoRoute);
            return;
        };
        let transport = **session.transport.load();
        match transport {
            Transport::Udp { listener, peer, local } => match self.seal_into(session, b, len) {
                Ok((start, end)) => {
                    self.send_udp_data(Destination { listener, peer, local }, Datagram { id: b, start, end });
                    self.sealed_from_tun(session, len);
                }
                Err(reason) => {
                    self.bufs.release(b);
                    self.count_drop(reason);
                }
            },
            Transport::Esp => match self.send_esp(session, b, len) {
                Ok(()) => self.sealed_from_tun(session, len),
                Err(reason) => {
                    self.bufs.release(b);
                    self.count_drop(reason);
                }
            },
            Transport::Tcp | Transport::Sstp => {
                if session.owner == self.index {
                    let peer_id = session.peer_id;
                    if matches!(transport, Transport::Sstp) {
                        let sent = send_sstp_data(
                            &mut self.conns,
                            &self.sstp_by_peer,
                            peer_id,
                            self.now_secs,
                            &self.bufs.get(b)[HEADROOM..HEADROOM + len],
                        );
                        self.bufs.release(b);
                        self.after_sstp_send(sent, len);
                    } else {
                        self.send_tcp_data(peer_id, b, len);
                    }
                } else {
                    let handed = self.shared.inboxes[session.owner]
                        .hand_off(session.peer_id, &self.bufs.get(b)[HEADROOM..HEADROOM + len]);
                    self.bufs.release(b);
                    match handed {
                        HandOff::Queued { woke } => {
                            let c = self.counters();
                            c.handoffs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            c.handoff_wakes.fetch_add(u64::from(woke), std::sync::atomic::Ordering::Relaxed);
                        }
                        HandOff::Full => self.count_drop(DropReason::Overload),
                    }
                }
            }
        }
    }

    /// Counts a TUN packet of `len` bytes sealed for `session`'s client by this worker,
    /// and whether the session is another worker's (sealed with its shared keys).
    fn sealed_from_tun(&self, session: &SessionShared, len: usize) {
        let c = self.counters();
        c.sent_from_tun(len);
        if session.owner != self.index {
            c.tun_foreign_sealed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Seals the plaintext at `bufs[b][HEADROOM..HEADROOM + len]` in place with the
    /// session's current key; returns the packet's range in the buffer.
    fn seal_into(&mut self, session: &SessionShared, b: BufId, len: usize) -> Result<(usize, usize), DropReason> {
        let keys = session.keys.load();
        let key = keys.send.as_ref().ok_or(DropReason::NotEstablished)?;
        let buf = self.bufs.get_mut(b);
        let range = if session.data_v2 {
            key.seal_v2(session.peer_id, buf, len).map(|n| (0, n))
        } else {
            key.seal_v1(buf, len).map(|r| (r.start, r.end))
        }
        .map_err(|_| DropReason::Overload)?;
        session.stats.sent(range.1 - range.0, self.now_secs);
        Ok(range)
    }

    fn send_udp(
        &mut self,
        listener: usize,
        peer: SocketAddr,
        local: Option<IpAddr>,
        b: BufId,
        start: usize,
        end: usize,
    ) {
        let hdr = self.bufs.prepare_send(b, start, end, &peer, local);
        let send = on_file!(self.files.udp[listener], fd => opcode::SendMsg::new(fd, hdr).build());
        self.push(send.user_data(user_data(OP_UDP_SEND, 0, b)));
    }

    /// Sends a sealed data packet (OpenVPN or ESP in UDP) to a client: in the batch of a GSO
    /// send (flushed when the next packet cannot join, and at the end of the completion
    /// batch) where the socket takes them, else alone.
    fn send_udp_data(&mut self, to: Destination, datagram: Datagram) {
        let max_segment = self.udp_gso_segment[to.listener];
        if max_segment == 0 {
            self.send_udp(to.listener, to.peer, to.local, datagram.id, datagram.start, datagram.end);
            return;
        }
        if let Err(datagram) = self.gso_batch.add(to, datagram, max_segment) {
            self.flush_gso();
            if let Err(d) = self.gso_batch.add(to, datagram, max_segment) {
                self.send_udp(to.listener, to.peer, to.local, d.id, d.start, d.end);
            }
        }
    }

    /// Sends the gathered GSO batch: one `sendmsg` for several datagrams, or a plain
    /// send for one.
    fn flush_gso(&mut self) {
        let mut datagrams = std::mem::take(&mut self.gso_datagrams);
        if let Some(to) = self.gso_batch.take(&mut datagrams) {
            if let [d] = datagrams[..] {
                self.send_udp(to.listener, to.peer, to.local, d.id, d.start, d.end);
            } else {
                let count = datagrams.len() as u64;
                let (slot, hdr) = self.gso_sends.prepare(to, &mut datagrams, &mut self.bufs);
                let send = on_file!(self.files.udp[to.listener], fd => opcode::SendMsg::new(fd, hdr).build());
                self.push(send.user_data(user_data(OP_UDP_GSO_SEND, 0, slot)));
                let c = self.counters();
                c.udp_gso_sends.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                c.udp_gso_datagrams.fetch_add(count, std::sync::atomic::Ordering::Relaxed);
            }
        }
        datagrams.clear();
        self.gso_datagrams = datagrams;
    }

    /// A GSO send completed. When the kernel refused it (EIO: no checksum offload on
    /// the way out; EINVAL: a segment larger than the route's MTU), its datagrams go
    /// again one by one, and the socket stops using GSO (EIO) or for that size (EINVAL).
    fn on_gso_sent(&mut self, slot: u32, res: i32) {
        let mut datagrams = std::mem::take(&mut self.gso_datagrams);
        if let Some(to) = self.gso_sends.finish(slot, &mut datagrams) {
            let segment = datagrams.first().map_or(0, Datagram::size);
            let limit = &mut self.udp_gso_segment[to.listener];
            match -res {
                libc::EIO | libc::EOPNOTSUPP => {
                    if *limit != 0 {
                        warn!(worker = self.index, error = %io::Error::from_raw_os_error(-res),
                            "UDP GSO refused on a socket; sending datagram by datagram");
                    }
                    *limit = 0;
                }
                libc::EINVAL => {
                    debug!(worker = self.index, segment, "UDP GSO refused for this size; larger datagrams go alone");
                    *limit = (*limit).min(segment.saturating_sub(1));
                }
                _ => {
                    if res < 0 {
                        debug!(worker = self.index, error = %io::Error::from_raw_os_error(-res), "GSO send failed");
                    }
                    for d in datagrams.drain(..) {
                        self.bufs.release(d.id);
                    }
                }
            }
            for d in datagrams.drain(..) {
                self.send_udp(to.listener, to.peer, to.local, d.id, d.start, d.end);
            }
        }
        self.gso_datagrams = datagrams;
    }

    /// Seals a TUN packet for a TCP session this worker owns and queues it.
    fn send_tcp_data(&mut self, peer_id: u32, b: BufId, len: usize) {
        let Some(slot) = self.by_peer.get(&peer_id).copied() else {
            self.bufs.release(b);
            self.count_drop(DropReason::NoRoute);
            return;
        };
        let Some((session, conn)) = self.local(slot).and_then(|l| match l.link {
            Link::Tcp { conn } => l.shared.clone().map(|s| (s, conn)),
            Link::Udp { .. } => None,
        }) else {
            self.bufs.release(b);
            self.count_drop(DropReason::NotEstablished);
            return;
        };
        if self.conns.get(conn as usize).and_then(Option::as_ref).is_none_or(|c| c.queued() > MAX_QUEUED_OUTPUT) {
            self.bufs.release(b);
            self.count_drop(DropReason::Overload);
            return;
        }
        match self.seal_into(&session, b, len) {
            Ok((start, end)) => {
                self.queue_tcp_from_buffer(conn, b, start, end);
                self.counters().sent_from_tun(len);
            }
            Err(reason) => {
                self.bufs.release(b);
                self.count_drop(reason);
            }
        }
    }

    // ---- control channel ------------------------------------------------------------

    fn on_control(&mut self, now: Instant, link: Link, slot: Option<u32>, packet: &[u8]) {
        if let Some(slot) = slot {
            let now_secs = self.now_secs;
            let Some(local) = self.local_mut(slot) else { return };
            match local.proto.handle_packet(now, packet) {
                Ok(()) => {
                    if let Some(s) = &local.shared {
                        s.stats.last_rx.store(now_secs, std::sync::atomic::Ordering::Relaxed);
                    }
                    self.drive(now, slot);
                    return;
                }
                // Another session id from this address: a client that restarted. Only the
                // acceptor can admit it (a reset, or a valid cookie bound to this address).
                Err(SessionError::WrongSession) => {}
                Err(e) => {
                    debug!(worker = self.index, error = %e, "control packet refused");
                    self.count_drop(DropReason::ControlRefused);
                    return;
                }
            }
        }
        let settings = self.shared.settings.load().openvpn.clone();
        let peer = self.link_peer(link);
        match self.acceptor.handle(now, sys::unix_time(), peer, packet, &settings) {
            Ok(Accepted::Reply(reply)) => self.send_control(link, &reply),
            Ok(Accepted::Session(session)) => {
                if let Some(old) = slot {
                    if let Some(l) = self.local_mut(old) {
                        l.proto.close(
                            now,
                            CloseReason::Local("replaced by a new connection from the same address".into()),
                            None,
                        );
                    }
                    self.drive(now, old);
                }
                let slot = self.new_session(link, peer, session);
                self.drive(now, slot);
            }
            Err(refusal) => {
                debug!(worker = self.index, %peer, reason = %refusal, "packet from unknown peer dropped");
                self.count_drop(DropReason::ControlRefused);
            }
        }
    }

    fn link_peer(&self, link: Link) -> SocketAddr {
        match link {
            Link::Udp { peer, .. } => peer,
            Link::Tcp { conn } => {
                self.conns[conn as usize].as_ref().map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |c| c.peer)
            }
        }
    }

    fn new_session(&mut self, link: Link, peer: SocketAddr, proto: Box<ServerSession>) -> u32 {
        let slot = self.free_sessions.pop().unwrap_or_else(|| {
            self.sessions.push(None);
            self.session_generations.push(0);
            (self.sessions.len() - 1) as u32
        });
        let generation = self.session_generations[slot as usize].wrapping_add(1);
        self.session_generations[slot as usize] = generation;
        self.sessions[slot as usize] =
            Some(Local { generation, proto, link, peer, shared: None, replay: Default::default(), scheduled: None });
        match link {
            Link::Udp { listener, peer, .. } => {
                self.by_addr.insert((listener, peer), slot);
            }
            Link::Tcp { conn } => {
                if let Some(c) = self.conns[conn as usize].as_mut() {
                    c.session = Some(slot);
                }
            }
        }
        slot
    }

    fn local(&self, slot: u32) -> Option<&Local> {
        self.sessions.get(slot as usize).and_then(Option::as_ref)
    }

    fn local_mut(&mut self, slot: u32) -> Option<&mut Local> {
        self.sessions.get_mut(slot as usize).and_then(Option::as_mut)
    }

    fn send_control(&mut self, link: Link, packet: &[u8]) {
        match link {
            Link::Udp { listener, peer, local } => {
                let Some(b) = self.bufs.alloc() else {
                    self.count_drop(DropReason::Overload);
                    return;
                };
                self.bufs.get_mut(b)[..packet.len()].copy_from_slice(packet);
                self.send_udp(listener, peer, local, b, 0, packet.len());
            }
            Link::Tcp { conn } => self.queue_tcp(conn, packet),
        }
    }

    /// Sends what the session has to send and acts on its events.
    fn drive(&mut self, now: Instant, slot: u32) {
        loop {
            let Some(local) = self.local_mut(slot) else { return };
            let link = local.link;
            let Some(packet) = local.proto.poll_transmit(now) else { break };
            self.send_control(link, &packet);
        }
        while let Some(event) = self.local_mut(slot).and_then(|l| l.proto.poll_event()) {
            self.on_event(slot, event);
        }
        if let Some(local) = self.local_mut(slot)
            && let Some(t) = local.proto.poll_timeout()
            && local.scheduled.is_none_or(|s| t < s)
        {
            local.scheduled = Some(t);
            let generation = local.generation;
            self.timers.push(Reverse((t, slot, generation)));
        }
    }

    fn on_event(&mut self, slot: u32, event: Event) {
        let index = self.index;
        let Some(local) = self.local_mut(slot) else { return };
        match event {
            Event::Authenticate(request) => {
                let handle =
                    LocalHandle { worker: index, kind: SessionKind::OpenVpn, slot, generation: local.generation };
                let transport = if matches!(local.link, Link::Udp { .. }) { "udp" } else { "tcp" };
                let peer = local.peer;
                let _ = self.shared.to_control.send(ControlEvent::Authenticate {
                    handle,
                    peer,
                    transport,
                    request: Box::new(request),
                });
            }
            Event::InstallKeys(k) => {
                local.replay[k.key_id as usize & 7] = ReplayWindow::new();
                if let Some(s) = &local.shared {
                    s.keys.rcu(|cur| {
                        let mut next = clone_keys(cur);
                        next.recv[k.key_id as usize & 7] = Some(k.key.clone());
                        next
                    });
                }
            }
            Event::ActivateKey(id) => {
                if let Some(s) = &local.shared {
                    s.keys.rcu(|cur| {
                        let mut next = clone_keys(cur);
                        next.send = next.recv[id as usize & 7].clone();
                        next
                    });
                }
            }
            Event::RetireKey(id) => {
                if let Some(s) = &local.shared {
                    s.keys.rcu(|cur| {
                        let mut next = clone_keys(cur);
                        next.recv[id as usize & 7] = None;
                        next
                    });
                }
            }
            Event::Closed(reason) => self.teardown(slot, reason),
        }
    }

    fn teardown(&mut self, slot: u32, reason: CloseReason) {
        let Some(local) = self.sessions.get_mut(slot as usize).and_then(Option::take) else { return };
        self.free_sessions.push(slot);
        match local.link {
            Link::Udp { listener, peer, .. } => {
                if self.by_addr.get(&(listener, peer)) == Some(&slot) {
                    self.by_addr.remove(&(listener, peer));
                    self.shared.table.forget_float(listener, peer, self.index);
                }
            }
            Link::Tcp { conn } => self.close_conn(conn),
        }
        let (peer_id, address, traffic) = match &local.shared {
            Some(s) => {
                self.shared.table.remove(s);
                if self.by_peer.get(&s.peer_id) == Some(&slot) {
                    self.by_peer.remove(&s.peer_id);
                }
                (Some(s.peer_id), Some(s.address), Some(s.stats.snapshot()))
            }
            None => (None, None, None),
        };
        let handle = LocalHandle { worker: self.index, kind: SessionKind::OpenVpn, slot, generation: local.generation };
        let _ = self.shared.to_control.send(ControlEvent::Closed {
            handle,
            peer: local.peer,
            peer_id,
            address,
            traffic,
            reason,
        });
    }

    // ---- mailbox ---------------------------------------------------------------------

    fn drain_inbox(&mut self, now: Instant) {
        while let Some(cmd) = self.inbox.commands.pop() {
            match cmd {
                WorkerCommand::AuthResult { handle, decision } => self.on_auth_result(now, handle, decision),
                WorkerCommand::Close { peer_id, reason, notice } => {
                    if let Some(slot) = self.by_peer.get(&peer_id).copied() {
                        if let Some(l) = self.local_mut(slot) {
                            l.proto.close(now, CloseReason::Local(reason), notice.as_deref());
                        }
                        self.drive(now, slot);
                    } else if let Some(conn) = self.sstp_by_peer.get(&peer_id).copied() {
                        if let Some(server) = self.sstp_conn(conn).and_then(|s| s.server.as_mut()) {
                            server.disconnect(now, &reason);
                        }
                        self.pump_sstp(conn);
                    } else {
                        self.close_ike(now, peer_id, &reason);
                    }
                }
                WorkerCommand::SstpAuthResult { handle, verdict, grant } => {
                    self.on_sstp_verdict(now, handle, Some(verdict), grant)
                }
                WorkerCommand::SstpCertificateResult { handle, grant } => {
                    self.on_sstp_verdict(now, handle, None, grant)
                }
                WorkerCommand::IkeAuthorization { handle, decision, peer_id } => {
                    self.on_ike_authorization(now, handle, decision, peer_id)
                }
                WorkerCommand::IkeEapReply { handle, reply } => self.on_ike_eap_reply(now, handle, reply),
                WorkerCommand::IkeDatagram { local, remote, data } => self.handle_ike(now, local, remote, &data),
                WorkerCommand::Shutdown => self.begin_shutdown(now),
            }
        }
        while let Some(h) = self.inbox.next_packet() {
            let len = h.len as usize;
            match h.what {
                Handed::Datagram { listener, peer, local } => match self.bufs.alloc() {
                    Some(b) => {
                        self.bufs.get_mut(b)[..len].copy_from_slice(&h.data[..len]);
                        self.on_client_datagram(now, Link::Udp { listener, peer, local }, b, len, true);
                    }
                    None => self.count_drop(DropReason::Overload),
                },
                Handed::TunPacket { peer_id } if self.sstp_by_peer.contains_key(&peer_id) => {
                    let sent =
                        send_sstp_data(&mut self.conns, &self.sstp_by_peer, peer_id, self.now_secs, &h.data[..len]);
                    self.after_sstp_send(sent, len);
                }
                Handed::TunPacket { peer_id } => match self.bufs.alloc() {
                    Some(b) => {
                        self.bufs.get_mut(b)[HEADROOM..HEADROOM + len].copy_from_slice(&h.data[..len]);
                        self.send_tcp_data(peer_id, b, len);
                    }
                    None => self.count_drop(DropReason::Overload),
                },
            }
            self.inbox.recycle(h);
        }
    }

    fn on_auth_result(&mut self, now: Instant, handle: LocalHandle, decision: AuthDecision) {
        let index = self.index;
        let now_secs = self.now_secs;
        let live = self.local(handle.slot).is_some_and(|l| l.generation == handle.generation);
        if !live {
            // The session ended while the control plane was deciding: give back the grant.
            if let AuthDecision::Accept(grant) = decision {
                let _ = self.shared.to_control.send(ControlEvent::Closed {
                    handle,
                    peer: SocketAddr::from(([0, 0, 0, 0], 0)),
                    traffic: None,
                    peer_id: Some(grant.peer_id),
                    address: Some(grant.push.address),
                    reason: CloseReason::Local("closed before authentication finished".into()),
                });
            }
            return;
        }
        let Some(local) = self.sessions.get_mut(handle.slot as usize).and_then(Option::as_mut) else { return };
        // A renegotiation's decision finds the session already published.
        if let (AuthDecision::Accept(grant), None) = (&decision, &local.shared) {
            let transport = match local.link {
                Link::Udp { listener, peer, local } => Transport::Udp { listener, peer, local },
                Link::Tcp { .. } => Transport::Tcp,
            };
            let data_v2 = local.proto.peer_info().is_some_and(|p| p.has(iv_proto::DATA_V2));
            let shared = Arc::new(SessionShared::new(grant.peer_id, grant.push.address, index, transport, data_v2));
            shared.stats.last_rx.store(now_secs, std::sync::atomic::Ordering::Relaxed);
            shared.stats.last_tx.store(now_secs, std::sync::atomic::Ordering::Relaxed);
            self.shared.table.insert(shared.clone());
            local.shared = Some(shared);
            self.by_peer.insert(grant.peer_id, handle.slot);
        }
        local.proto.auth_decision(now, decision);
        self.drive(now, handle.slot);
    }

    fn begin_shutdown(&mut self, now: Instant) {
        if self.shutdown_at.is_some() {
            return;
        }
        self.shutdown_at = Some(now + SHUTDOWN_GRACE);
        let slots: Vec<u32> = (0..self.sessions.len() as u32).filter(|&s| self.local(s).is_some()).collect();
        for slot in slots {
            if let Some(l) = self.local_mut(slot) {
                l.proto.close(now, CloseReason::Local("gateway shutting down".into()), Some("RESTART"));
            }
            self.drive(now, slot);
        }
        self.close_all_ike(now);
        let sstp_conns: Vec<u32> = self.sstp_by_peer.values().copied().collect();
        for conn in sstp_conns {
            if let Some(server) = self.sstp_conn(conn).and_then(|s| s.server.as_mut()) {
                server.disconnect(now, "gateway shutting down");
            }
            self.pump_sstp(conn);
        }
    }

    // ---- time ------------------------------------------------------------------------

    fn run_timers(&mut self, now: Instant) {
        while let Some(Reverse((t, slot, generation))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            let Some(local) = self.local_mut(slot) else { continue };
            if local.generation != generation || local.scheduled != Some(t) {
                continue; // superseded by an earlier deadline, or a reused slot
            }
            local.scheduled = None;
            local.proto.handle_timeout(now);
            self.drive(now, slot);
        }
    }

    /// Once a second: keepalive pings, dead clients, key exhaustion, stale connections.
    fn tick(&mut self, now: Instant) {
        let settings = self.shared.settings.load();
        let ping_every = settings.ping_interval.as_secs().max(1);
        let timeout = settings.ping_timeout.as_secs().max(2);
        let now_secs = self.now_secs;
        for slot in 0..self.sessions.len() as u32 {
            let Some(local) = self.local_mut(slot) else { continue };
            let Some(shared) = local.shared.clone() else { continue };
            let last_rx = shared.stats.last_rx.load(std::sync::atomic::Ordering::Relaxed);
            let last_tx = shared.stats.last_tx.load(std::sync::atomic::Ordering::Relaxed);
            if now_secs.saturating_sub(last_rx) >= timeout {
                local.proto.close(now, CloseReason::Local(format!("no packet from the client for {timeout} s")), None);
                self.drive(now, slot);
                continue;
            }
            if shared.keys.load().send.as_ref().is_some_and(|k| k.send_pid_exhausted()) {
                local.proto.renegotiate(now);
                self.drive(now, slot);
            }
            if now_secs.saturating_sub(last_tx) >= ping_every {
                self.send_ping(slot, &shared);
            }
        }
        for conn in 0..self.conns.len() as u32 {
            // Once its TLS handshake is done, an SSTP connection times out by the SSTP timers.
            let stale = self.conns[conn as usize].as_ref().is_some_and(|c| {
                let waiting = match &c.stream {
                    Stream::Sstp(sstp) => sstp.server.is_none(),
                    Stream::Unknown | Stream::OpenVpn => c.session.is_none(),
                };
                let handshake_expired =
                    waiting && now.duration_since(self.conn_opened[conn as usize]) > TCP_HANDSHAKE_TIMEOUT;
                let linger_expired = c.linger_until.is_some_and(|t| now >= t);
                !c.closing && (handshake_expired || linger_expired)
            });
            if stale {
                self.close_conn(conn);
            }
        }
        self.sstp_timers(now);
        self.ike_tick(now);
    }

    fn send_ping(&mut self, slot: u32, shared: &Arc<SessionShared>) {
        let Some(link) = self.local(slot).map(|l| l.link) else { return };
        let Some(b) = self.bufs.alloc() else { return };
        self.bufs.get_mut(b)[HEADROOM..HEADROOM + data::PING_MAGIC.len()].copy_from_slice(&data::PING_MAGIC);
        match self.seal_into(shared, b, data::PING_MAGIC.len()) {
            Ok((start, end)) => match link {
                Link::Udp { listener, peer, local } => self.send_udp(listener, peer, local, b, start, end),
                Link::Tcp { conn } => self.queue_tcp_from_buffer(conn, b, start, end),
            },
            Err(_) => self.bufs.release(b),
        }
    }

    // ---- TCP -------------------------------------------------------------------------

    fn on_accept(&mut self, now: Instant, listener: usize, fd: OwnedFd) {
        if self.shutdown_at.is_some() {
            return;
        }
        let peer = match sys::peer_addr(fd.as_raw_fd()) {
            Ok(p) => p,
            Err(_) => return,
        };
        sys::tune_tcp_connection(fd.as_raw_fd());
        let conn = self.free_conns.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.conn_generations.push(0);
            self.conn_opened.push(now);
            (self.conns.len() - 1) as u32
        });
        let generation = self.conn_generations[conn as usize].wrapping_add(1);
        self.conn_generations[conn as usize] = generation;
        self.conn_opened[conn as usize] = now;
        self.conns[conn as usize] = Some(TcpConn::new(generation, fd, peer, listener));
        debug!(worker = self.index, %peer, "TCP connection accepted");
        self.arm_tcp_recv(conn);
    }

    fn arm_tcp_recv(&mut self, conn: u32) {
        let Some(c) = self.conns.get_mut(conn as usize).and_then(Option::as_mut) else { return };
        if c.recv_pending || c.closing {
            return;
        }
        c.recv_pending = true;
        let (fd, generation) = (c.fd.as_raw_fd(), c.generation);
        let ptr = c.recv[c.recv_len..].as_mut_ptr();
        let room = (c.recv.len() - c.recv_len) as u32;
        self.push(opcode::Recv::new(types::Fd(fd), ptr, room).build().user_data(user_data(
            OP_TCP_RECV,
            conn,
            generation,
        )));
    }

    fn on_tcp_recv(&mut self, now: Instant, conn: u32, generation: u32, res: i32) {
        let Some(c) = self.conns.get_mut(conn as usize).and_then(Option::as_mut) else { return };
        if c.generation != generation {
            return;
        }
        c.recv_pending = false;
        if res <= 0 || c.closing {
            self.close_conn(conn);
            return;
        }
        c.recv_len += res as usize;
        // The first byte tells the protocols apart: an OpenVPN stream starts with its
        // first packet's length, whose high byte 0x16 would mean more than MAX_FRAME.
        if matches!(c.stream, Stream::Unknown) {
            let sstp = self.shared.settings.load().sstp.clone();
            c.stream = match sstp.filter(|_| c.recv[0] == TLS_HANDSHAKE_RECORD) {
                Some(listener) => match SstpConn::new(listener) {
                    Ok(sstp) => Stream::Sstp(Box::new(sstp)),
                    Err(e) => {
                        warn!(worker = self.index, error = %e, "cannot start TLS for an SSTP connection");
                        self.close_conn(conn);
                        return;
                    }
                },
                None => Stream::OpenVpn,
            };
        }
        if matches!(c.stream, Stream::Sstp(_)) {
            self.on_sstp_recv(now, conn);
            return;
        }
        let mut offset = 0;
        loop {
            let Some(c) = self.conns.get_mut(conn as usize).and_then(Option::as_mut) else { return };
            if c.closing {
                return;
            }
            match c.frame_at(offset) {
                Frame::Packet { start, end } => {
                    offset = end;
                    let slot = c.session;
                    let Some(b) = self.bufs.alloc() else {
                        self.count_drop(DropReason::Overload);
                        continue;
                    };
                    let len = end - start;
                    let c = self.conns[conn as usize].as_ref().expect("checked above");
                    self.bufs.get_mut(b)[..len].copy_from_slice(&c.recv[start..end]);
                    self.on_packet(now, Link::Tcp { conn }, slot, b, len);
                }
                Frame::Incomplete => {
                    c.consume(offset);
                    break;
                }
                Frame::Invalid => {
                    self.count_drop(DropReason::Malformed);
                    self.close_conn(conn);
                    return;
                }
            }
        }
        self.arm_tcp_recv(conn);
    }

    /// Queues `bufs[b][start..end]` on a TCP connection and releases the buffer.
    fn queue_tcp_from_buffer(&mut self, conn: u32, b: BufId, start: usize, end: usize) {
        let queued = match self.conns.get_mut(conn as usize).and_then(Option::as_mut).filter(|c| !c.closing) {
            Some(c) => {
                c.queue(&self.bufs.get(b)[start..end]);
                true
            }
            None => false,
        };
        self.bufs.release(b);
        if queued {
            self.kick_tcp_send(conn);
        }
    }

    fn queue_tcp(&mut self, conn: u32, packet: &[u8]) {
        let Some(c) = self.conns.get_mut(conn as usize).and_then(Option::as_mut) else { return };
        if c.closing {
            return;
        }
        c.queue(packet);
        self.kick_tcp_send(conn);
    }

    fn kick_tcp_send(&mut self, conn: u32) {
        let Some(c) = self.conns.get_mut(conn as usize).and_then(Option::as_mut) else { return };
        let resume = !c.send_pending && c.inflight_done < c.inflight.len();
        if !resume && !c.start_send() {
            return;
        }
        c.send_pending = true;
        let (fd, generation) = (c.fd.as_raw_fd(), c.generation);
        let rest = &c.inflight[c.inflight_done..];
        let (ptr, len) = (rest.as_ptr(), rest.len() as u32);
        self.push(opcode::Send::new(types::Fd(fd), ptr, len).flags(libc::MSG_NOSIGNAL).build().user_data(user_data(
            OP_TCP_SEND,
            conn,
            generation,
        )));
    }

    fn on_tcp_sent(&mut self, conn: u32, generation: u32, res: i32) {
        let Some(c) = self.conns.get_mut(conn as usize).and_then(Option::as_mut) else { return };
        if c.generation != generation {
            return;
        }
        c.send_pending = false;
        if res < 0 {
            self.close_conn(conn);
            return;
        }
        c.sent(res as usize);
        if c.closing {
            self.finish_close(conn);
        } else if c.linger_until.is_some() && c.queued() == 0 {
            self.close_conn(conn);
        } else {
            self.kick_tcp_send(conn);
        }
    }

    /// Closes a connection and its session. Buffers stay until the kernel is done.
    fn close_conn(&mut self, conn: u32) {
        let Some(c) = self.conns.get_mut(conn as usize).and_then(Option::as_mut) else { return };
        if !c.closing {
            c.closing = true;
            // Wakes a pending receive (it completes with 0) so the slot can be freed.
            // SAFETY: shutdown(2) on an fd we own.
            unsafe { libc::shutdown(c.fd.as_raw_fd(), libc::SHUT_RDWR) };
            let is_sstp = matches!(c.stream, Stream::Sstp(_));
            if let Some(slot) = c.session.take() {
                if let Some(l) = self.local_mut(slot) {
                    l.proto.close(Instant::now(), CloseReason::Local("TCP connection closed".into()), None);
                }
                self.drive(Instant::now(), slot);
            }
            if is_sstp {
                self.end_sstp(conn, CloseReason::Local("TCP connection closed".into()));
            }
        }
        self.finish_close(conn);
    }

    fn finish_close(&mut self, conn: u32) {
        if self.conns.get(conn as usize).and_then(Option::as_ref).is_some_and(|c| c.closing && c.idle()) {
            self.conns[conn as usize] = None;
            self.free_conns.push(conn);
        }
    }

    // ---- SSTP ------------------------------------------------------------------------

    fn sstp_conn(&mut self, conn: u32) -> Option<&mut SstpConn> {
        match &mut self.conns.get_mut(conn as usize)?.as_mut()?.stream {
            Stream::Sstp(sstp) => Some(sstp),
            _ => None,
        }
    }

    fn sstp_handle(&self, conn: u32) -> Option<LocalHandle> {
        let c = self.conns.get(conn as usize)?.as_ref()?;
        Some(LocalHandle { worker: self.index, kind: SessionKind::Sstp, slot: conn, generation: c.generation })
    }

    fn after_sstp_send(&mut self, sent: Result<u32, DropReason>, len: usize) {
        match sent {
            Ok(conn) => {
                self.counters().sent_from_tun(len);
                self.kick_tcp_send(conn);
            }
            Err(reason) => self.count_drop(reason),
        }
    }

    /// Bytes arrived on an SSTP connection (in its receive buffer): through TLS into
    /// the SSTP server; its IPv4 packets go straight to the TUN.
    fn on_sstp_recv(&mut self, now: Instant, conn: u32) {
        let Worker { conns, bufs, gro, ring, files, shared, plaintext, index, now_secs, .. } = self;
        let Some(c) = conns.get_mut(conn as usize).and_then(Option::as_mut) else { return };
        let Stream::Sstp(sstp) = &mut c.stream else { return };
        let counters = &shared.counters[*index];
        let mut failure = None;
        let mut input = &c.recv[..c.recv_len];
        'feed: while !input.is_empty() {
            if let Err(e) = sstp.tls.read_tls(&mut input) {
                failure = Some(CloseReason::Tls(e.to_string()));
                break;
            }
            if let Err(e) = sstp.tls.process_new_packets() {
                failure = Some(CloseReason::Tls(e.to_string()));
                break;
            }
            if sstp.server.is_none() && !sstp.tls.is_handshaking() {
                sstp.server = Some(SstpServer::new(sstp.listener.settings.clone(), now));
            }
            let Some(server) = sstp.server.as_mut() else { continue };
            loop {
                match sstp.tls.reader().read(plaintext) {
                    Ok(0) => {
                        failure = Some(CloseReason::ClientExit);
                        break 'feed;
                    }
                    Ok(n) => {
                        let session = sstp.session.as_deref();
                        let mut to_tun = |packet: &[u8]| {
                            sstp_packet_to_tun(ring, bufs, gro, files.tun, counters, session, *now_secs, packet)
                        };
                        server.handle_input_with(now, &plaintext[..n], Some(&mut to_tun));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        failure = Some(CloseReason::Tls(e.to_string()));
                        break 'feed;
                    }
                }
            }
        }
        c.recv_len = 0;
        self.pump_sstp(conn);
        match failure {
            Some(reason) => {
                debug!(worker = self.index, %reason, "SSTP connection ends");
                self.end_sstp(conn, reason);
                self.close_conn_when_sent(conn);
            }
            None => self.arm_tcp_recv(conn),
        }
    }

    /// Acts on the SSTP server's events and sends what it has to send.
    fn pump_sstp(&mut self, conn: u32) {
        while let Some(event) = self.sstp_conn(conn).and_then(|s| s.server.as_mut()).and_then(|s| s.poll_event()) {
            self.on_sstp_event(conn, event);
        }
        let Some(c) = self.conns.get_mut(conn as usize).and_then(Option::as_mut) else { return };
        let Stream::Sstp(sstp) = &mut c.stream else { return };
        if let Err(e) = sstp.flush(&mut c.out) {
            debug!(worker = self.index, error = %e, "SSTP output failed");
            self.close_conn(conn);
            return;
        }
        self.kick_tcp_send(conn);
    }

    fn on_sstp_event(&mut self, conn: u32, event: sstp::Event) {
        let peer = self.conns.get(conn as usize).and_then(Option::as_ref).map(|c| c.peer);
        match event {
            sstp::Event::VerifyMsChapV2(request) => {
                let (Some(handle), Some(peer)) = (self.sstp_handle(conn), peer) else { return };
                let _ =
                    self.shared.to_control.send(ControlEvent::VerifySstp { handle, peer, request: Box::new(request) });
            }
            sstp::Event::TunnelPacket(packet) => {
                let Worker { conns, bufs, gro, ring, files, shared, index, now_secs, .. } = self;
                let session = match conns.get(conn as usize).and_then(Option::as_ref).map(|c| &c.stream) {
                    Some(Stream::Sstp(sstp)) => sstp.session.as_deref(),
                    _ => None,
                };
                sstp_packet_to_tun(ring, bufs, gro, files.tun, &shared.counters[*index], session, *now_secs, &packet);
            }
            sstp::Event::EapFromPeer(packet) => {
                let (Some(handle), Some(peer)) = (self.sstp_handle(conn), peer) else { return };
                // The OpenVPN control channel's TLS configuration: the gateway's certificate,
                // client certificates checked against the trusted roots, CRLs and revoked
                // thumbprints, rebuilt whenever those change.
                let settings = self.shared.settings.load();
                let Some(sstp) = self.sstp_conn(conn) else { return };
                match sstp.on_eap_response(Instant::now(), &packet, || settings.openvpn.tls.clone()) {
                    EapProgress::Continue => {}
                    EapProgress::Admit { certificate, version } => {
                        debug!(worker = self.index, %peer, version, "SSTP EAP-TLS handshake done");
                        let _ = self.shared.to_control.send(ControlEvent::AdmitSstpCertificate {
                            handle,
                            peer,
                            certificate,
                        });
                    }
                    EapProgress::Refused(reason) => {
                        warn!(worker = self.index, %peer, transport = "sstp", %reason, "EAP-TLS sign-in refused");
                    }
                }
            }
            sstp::Event::Dropped(reason) => {
                debug!(worker = self.index, ?peer, %reason, "SSTP input dropped");
                self.count_drop(DropReason::Malformed);
            }
            sstp::Event::Accepted { correlation_id } => {
                debug!(worker = self.index, ?peer, ?correlation_id, "SSTP call accepted");
            }
            sstp::Event::Authenticated { user } => debug!(worker = self.index, ?peer, %user, "SSTP user authenticated"),
            sstp::Event::Established { user, address } => {
                debug!(worker = self.index, ?peer, %user, %address, "SSTP session established");
            }
            sstp::Event::Closed(reason) => {
                debug!(worker = self.index, ?peer, %reason, "SSTP connection closed");
                self.end_sstp(conn, super::sstp::close_reason(&reason));
                if let Some(sstp) = self.sstp_conn(conn) {
                    sstp.tls.send_close_notify();
                }
                self.close_conn_when_sent(conn);
            }
        }
    }

    /// The control plane's decision on an SSTP client: on its MS-CHAPv2 response
    /// (`verdict`), or on its EAP-TLS certificate (`None`).
    fn on_sstp_verdict(
        &mut self,
        now: Instant,
        handle: LocalHandle,
        verdict: Option<AuthVerdict>,
        grant: Option<SstpGrant>,
    ) {
        let index = self.index;
        let now_secs = self.now_secs;
        let live = self.sstp_handle(handle.slot) == Some(handle)
            && self.sstp_conn(handle.slot).is_some_and(|s| s.server.as_ref().is_some_and(|s| !s.is_closed()));
        if !live {
            // The connection ended while the control plane was deciding: give back the grant.
            if let Some(grant) = grant {
                let _ = self.shared.to_control.send(ControlEvent::Closed {
                    handle,
                    peer: SocketAddr::from(([0, 0, 0, 0], 0)),
                    traffic: None,
                    peer_id: Some(grant.peer_id),
                    address: Some(grant.network.peer),
                    reason: CloseReason::Local("closed before authentication finished".into()),
                });
            }
            return;
        }
        let conn = handle.slot;
        if let Some(grant) = grant {
            let shared = Arc::new(SessionShared::new(grant.peer_id, grant.network.peer, index, Transport::Sstp, false));
            shared.stats.last_rx.store(now_secs, std::sync::atomic::Ordering::Relaxed);
            shared.stats.last_tx.store(now_secs, std::sync::atomic::Ordering::Relaxed);
            self.shared.table.insert(shared.clone());
            self.sstp_by_peer.insert(grant.peer_id, conn);
            if let Some(sstp) = self.sstp_conn(conn) {
                sstp.session = Some(shared);
            }
        }
        match verdict {
            Some(verdict) => {
                if let Some(server) = self.sstp_conn(conn).and_then(|s| s.server.as_mut()) {
                    server.answer_ms_chap_v2(now, verdict);
                    if let Some(grant) = grant {
                        server.assign_network(now, grant.network);
                    }
                }
            }
            None => {
                if let Some(sstp) = self.sstp_conn(conn) {
                    sstp.on_certificate_verdict(now, grant.as_ref());
                }
            }
        }
        self.pump_sstp(conn);
    }

    /// Unpublishes an SSTP connection's session and reports its end (once).
    fn end_sstp(&mut self, conn: u32, reason: CloseReason) {
        let Some(handle) = self.sstp_handle(conn) else { return };
        let Some(c) = self.conns.get_mut(conn as usize).and_then(Option::as_mut) else { return };
        let peer = c.peer;
        let Stream::Sstp(sstp) = &mut c.stream else { return };
        if std::mem::replace(&mut sstp.reported, true) {
            return;
        }
        let session = sstp.session.take();
        let (peer_id, address, traffic) = match &session {
            Some(s) => {
                self.shared.table.remove(s);
                if self.sstp_by_peer.get(&s.peer_id) == Some(&conn) {
                    self.sstp_by_peer.remove(&s.peer_id);
                }
                (Some(s.peer_id), Some(s.address), Some(s.stats.snapshot()))
            }
            None => (None, None, None),
        };
        let _ = self.shared.to_control.send(ControlEvent::Closed { handle, peer, peer_id, address, traffic, reason });
    }

    /// The SSTP timers (negotiation, hello, abort and disconnect waits, PPP's), all
    /// of whole seconds: served by the tick.
    fn sstp_timers(&mut self, now: Instant) {
        for conn in 0..self.conns.len() as u32 {
            let due = self
                .sstp_conn(conn)
                .and_then(|s| s.server.as_ref())
                .and_then(SstpServer::poll_timeout)
                .is_some_and(|t| t <= now);
            if due {
                if let Some(server) = self.sstp_conn(conn).and_then(|s| s.server.as_mut()) {
                    server.handle_timeout(now);
                }
                self.pump_sstp(conn);
            }
        }
    }

    /// Closes a connection once what is queued for it is sent (a goodbye that must arrive).
    fn close_conn_when_sent(&mut self, conn: u32) {
        let Some(c) = self.conns.get_mut(conn as usize).and_then(Option::as_mut) else { return };
        if c.queued() == 0 {
            self.close_conn(conn);
        } else {
            c.linger_until = Some(Instant::now() + LINGER_TIMEOUT);
            self.kick_tcp_send(conn);
        }
    }
}

/// Queues a submission, flushing the queue to the kernel when it is full.
fn push_entry(ring: &mut IoUring, entry: &squeue::Entry) {
    // SAFETY: every entry refers to memory owned by the worker (pool buffers,
    // connection buffers, wake_buf) that stays put until its completion arrives.
    unsafe {
        while ring.submission().push(entry).is_err() {
            let _ = ring.submit();
        }
    }
}

/// Puts a TUN packet for the SSTP session `peer_id` (owned by this worker) into its
/// connection's output, through TLS; returns the connection to kick.
fn send_sstp_data(
    conns: &mut [Option<TcpConn>],
    sstp_by_peer: &HashMap<u32, u32>,
    peer_id: u32,
    now_secs: u64,
    packet: &[u8],
) -> Result<u32, DropReason> {
    let conn = *sstp_by_peer.get(&peer_id).ok_or(DropReason::NoRoute)?;
    let c = conns.get_mut(conn as usize).and_then(Option::as_mut).ok_or(DropReason::NoRoute)?;
    if c.closing || c.queued() > MAX_QUEUED_OUTPUT {
        return Err(DropReason::Overload);
    }
    let Stream::Sstp(sstp) = &mut c.stream else { return Err(DropReason::NoRoute) };
    let (Some(server), Some(session)) = (sstp.server.as_mut(), sstp.session.as_ref()) else {
        return Err(DropReason::NotEstablished);
    };
    server.send_ip(packet).map_err(|e| match e {
        sstp::SendError::NotEstablished => DropReason::NotEstablished,
        sstp::SendError::TooLong(_) => DropReason::Malformed,
    })?;
    session.stats.sent(packet.len(), now_secs);
    sstp.flush(&mut c.out).map_err(|_| DropReason::Overload)?;
    Ok(conn)
}

/// Writes an IPv4 packet from an SSTP client to the TUN, from a pool buffer (or through
/// the coalescer, with offloads).
#[allow(clippy::too_many_arguments)]
fn sstp_packet_to_tun(
    ring: &mut IoUring,
    bufs: &mut BufferPool,
    gro: &mut Option<Coalescer>,
    tun: TunFile,
    counters: &WorkerCounters,
    session: Option<&SessionShared>,
    now_secs: u64,
    packet: &[u8],
) {
    let Some(session) = session else {
        counters.drop(DropReason::NotEstablished);
        return;
    };
    if packet.len() < 20 || packet[0] >> 4 != 4 {
        counters.drop(DropReason::NotIpv4);
        return;
    }
    if packet[12..16] != session.address.octets() {
        counters.drop(DropReason::SpoofedSource);
        return;
    }
    if packet.len() > BUF_SIZE - HEADROOM {
        counters.drop(DropReason::Malformed);
        return;
    }
    let Some(b) = bufs.alloc() else {
        counters.drop(DropReason::Overload);
        return;
    };
    // At HEADROOM like a packet opened in place, so that the virtio_net_hdr of a TUN
    // with offloads fits in front.
    let (start, end) = (HEADROOM, HEADROOM + packet.len());
    bufs.get_mut(b)[start..end].copy_from_slice(packet);
    session.stats.received(packet.len(), now_secs);
    if let Some(gro) = gro.as_mut() {
        counters.wrote_to_tun(packet.len());
        if gro.stage(b, start, end) {
            flush_coalescer(ring, tun, bufs, gro, counters);
        }
        return;
    }
    let write = tun.write_pool(&bufs.get(b)[start..end]).user_data(user_data(OP_TUN_WRITE, 0, b));
    push_entry(ring, &write);
    counters.wrote_to_tun(packet.len());
    counters.tun_writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Coalesces the coalescer's staged packets and submits their writes to the TUN queue.
fn flush_coalescer(
    ring: &mut IoUring,
    tun: TunFile,
    bufs: &mut BufferPool,
    gro: &mut Coalescer,
    counters: &WorkerCounters,
) {
    let flushed = gro.flush(bufs, |from, bytes| {
        let write = match from {
            WriteFrom::Pool(id) => tun.write_pool(bytes).user_data(user_data(OP_TUN_WRITE, 0, id)),
            WriteFrom::Coalesced(slot) => tun.write(bytes).user_data(user_data(OP_TUN_WRITE_STAGED, 0, slot)),
        };
        push_entry(ring, &write);
    });
    counters.tun_writes.fetch_add(flushed.writes as u64, std::sync::atomic::Ordering::Relaxed);
    counters.tun_coalesced_writes.fetch_add(flushed.coalesced as u64, std::sync::atomic::Ordering::Relaxed);
}

/// Copies the datagrams of a GRO receive apart into pool buffers (onto `split`),
/// counting them and what was dropped; returns the sender and the local address.
fn split_gro(
    received: Received<'_>,
    bufs: &mut BufferPool,
    counters: &WorkerCounters,
    split: &mut Vec<(BufId, usize)>,
) -> Option<(SocketAddr, Option<IpAddr>)> {
    let peer = received.peer?;
    let cut = super::gro::split_into(received.data, received.segment, bufs, split);
    if received.segment.is_some() {
        counters.udp_gro_receives.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        counters.udp_gro_datagrams.fetch_add(cut.datagrams as u64, std::sync::atomic::Ordering::Relaxed);
    }
    for _ in 0..cut.too_long {
        counters.drop(DropReason::Malformed);
    }
    for _ in 0..cut.no_buffer {
        counters.drop(DropReason::Overload);
    }
    Some((peer, received.local))
}

enum DataVerdict {
    ToTun { start: usize, end: usize, key_id: u8 },
    Consumed { key_id: u8, exit: bool },
}

type Routes<'a> = papaya::HashMapRef<'a, Ipv4Addr, Arc<SessionShared>, std::hash::RandomState, papaya::LocalGuard<'a>>;

fn clone_keys(cur: &Arc<KeySet>) -> KeySet {
    KeySet { send: cur.send.clone(), recv: cur.recv.clone() }
}
