//! The data plane: one pinned worker thread per core. Each owns an io_uring ring, its
//! own sockets in the SO_REUSEPORT groups of every listen address, and one queue of the
//! multi-queue TUN device. Workers drive the sans-IO protocol cores and never block:
//! authentication decisions come from the control plane by message.

pub mod buffers;
pub mod counters;
pub mod gro;
pub mod gso;
pub mod offload;
pub mod recv_ring;
pub mod reuseport;
pub mod sstp;
pub mod steering;
pub mod sys;
pub mod table;
pub mod tcp;
pub mod tun;
mod worker;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam_queue::{ArrayQueue, SegQueue};

use crate::proto::ike;
use crate::proto::openvpn::session::{AuthDecision, AuthRequest, CloseReason, ServerSettings};
use crate::proto::openvpn::tls_crypt::TlsCrypt;
use crate::proto::ppp::{AuthVerdict, MsChapV2Verify, NetworkConfig};
use counters::WorkerCounters;
use table::SessionTable;

/// Settings a reload may change; workers read them at each use.
pub struct Settings {
    pub openvpn: Arc<ServerSettings>,
    /// Send a keepalive ping after this long without sending anything.
    pub ping_interval: Duration,
    /// Drop a session after this long without hearing from its client.
    pub ping_timeout: Duration,
    /// SSTP on the TCP listeners; `None` when disabled.
    pub sstp: Option<Arc<SstpListener>>,
}

/// What a worker needs to serve SSTP connections.
pub struct SstpListener {
    /// TLS with the gateway's certificate, no client certificate.
    pub tls: Arc<rustls::ServerConfig>,
    pub settings: crate::proto::sstp::SstpSettings,
}

/// Which kind of session a [`LocalHandle`] names: an OpenVPN session slot or an SSTP
/// connection (each has its own numbering in a worker).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionKind {
    OpenVpn,
    Sstp,
    /// An IKE session of the worker's responder (its 64-bit id split into slot and
    /// generation).
    Ike,
}

/// Identifies a worker-local session across messages (slot and generation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LocalHandle {
    pub worker: usize,
    pub kind: SessionKind,
    pub slot: u32,
    pub generation: u32,
}

/// From workers to the control plane.
#[derive(Debug)]
pub enum ControlEvent {
    /// A client finished its handshake: decide, and answer with
    /// [`WorkerCommand::AuthResult`].
    Authenticate { handle: LocalHandle, peer: SocketAddr, transport: &'static str, request: Box<AuthRequest> },
    /// An SSTP client's MS-CHAPv2 response: check it, and answer with
    /// [`WorkerCommand::SstpAuthResult`].
    VerifySstp { handle: LocalHandle, peer: SocketAddr, request: Box<MsChapV2Verify> },
    /// An SSTP client's EAP-TLS handshake verified this certificate (DER): admit it,
    /// and answer with [`WorkerCommand::SstpCertificateResult`].
    AdmitSstpCertificate { handle: LocalHandle, peer: SocketAddr, certificate: Vec<u8> },
    /// An IKEv2 client authenticated (certificate checked, or EAP accepted by RADIUS):
    /// decide, and answer with [`WorkerCommand::IkeAuthorization`].
    AuthorizeIke { handle: LocalHandle, peer: SocketAddr, request: Box<ike::AuthRequest> },
    /// An EAP message from an IKEv2 client, for RADIUS; answer with
    /// [`WorkerCommand::IkeEapReply`].
    IkeEap { handle: LocalHandle, peer: SocketAddr, identity: String, message: Vec<u8> },
    /// An OpenVPN client over UDP moved to a new address (a data packet from there opened).
    ClientMoved { handle: LocalHandle, peer_id: u32, peer: SocketAddr },
    /// A session ended. `peer_id`/`address`/`traffic` are set when it held a grant.
    Closed {
        handle: LocalHandle,
        peer: SocketAddr,
        peer_id: Option<u32>,
        address: Option<Ipv4Addr>,
        traffic: Option<table::Traffic>,
        reason: CloseReason,
    },
}

/// From the control plane to one worker.
#[derive(Debug)]
pub enum WorkerCommand {
    AuthResult {
        handle: LocalHandle,
        decision: AuthDecision,
    },
    /// The verdict on an SSTP client's MS-CHAPv2 response, with its tunnel when admitted.
    SstpAuthResult {
        handle: LocalHandle,
        verdict: AuthVerdict,
        grant: Option<SstpGrant>,
    },
    /// The decision on an SSTP client's EAP-TLS certificate: its tunnel when admitted.
    SstpCertificateResult {
        handle: LocalHandle,
        grant: Option<SstpGrant>,
    },
    /// The decision on an IKEv2 client, with its peer-id when admitted.
    IkeAuthorization {
        handle: LocalHandle,
        decision: ike::Authorization,
        peer_id: Option<u32>,
    },
    IkeEapReply {
        handle: LocalHandle,
        reply: ike::EapReply,
    },
    /// An IKE message for an SA this worker owns, received by another worker (the
    /// kernel spreads port 500 and port 4500 flows over workers independently).
    IkeDatagram {
        local: SocketAddr,
        remote: SocketAddr,
        data: Vec<u8>,
    },
    /// Ends a session; `notice` is sent to the client first (e.g. "RESTART",
    /// "AUTH_FAILED,certificate revoked").
    Close {
        peer_id: u32,
        reason: String,
        notice: Option<String>,
    },
    /// Tell every client to reconnect elsewhere, then stop.
    Shutdown,
}

/// What an admitted SSTP client gets.
#[derive(Debug, Clone, Copy)]
pub struct SstpGrant {
    pub peer_id: u32,
    pub network: NetworkConfig,
}

/// A packet for a session owned by another worker.
pub struct Handoff {
    pub what: Handed,
    pub len: u16,
    pub data: [u8; buffers::BUF_SIZE],
}

#[derive(Debug, Clone, Copy)]
pub enum Handed {
    /// From the TUN, for the TCP or SSTP session with this peer-id.
    TunPacket { peer_id: u32 },
    /// A client's datagram that reached another worker's socket for listen address
    /// `listener` (as `Transport::Udp`).
    Datagram { listener: usize, peer: SocketAddr, local: Option<IpAddr> },
}

/// A worker's mailbox: commands, handed-off packets, and the eventfd that wakes it.
pub struct Inbox {
    commands: SegQueue<WorkerCommand>,
    packets: ArrayQueue<Box<Handoff>>,
    /// Boxes for handoffs, recycled so that a handoff does not allocate.
    spare: ArrayQueue<Box<Handoff>>,
    wake: OwnedFd,
}

const HANDOFF_QUEUE: usize = 1024;

impl Inbox {
    pub fn new() -> std::io::Result<Self> {
        let spare = ArrayQueue::new(HANDOFF_QUEUE);
        for _ in 0..HANDOFF_QUEUE {
            let handoff = Handoff { what: Handed::TunPacket { peer_id: 0 }, len: 0, data: [0; buffers::BUF_SIZE] };
            let _ = spare.push(Box::new(handoff));
        }
        Ok(Inbox { commands: SegQueue::new(), packets: ArrayQueue::new(HANDOFF_QUEUE), spare, wake: sys::eventfd()? })
    }

    pub fn send(&self, cmd: WorkerCommand) {
        self.commands.push(cmd);
        sys::eventfd_signal(self.wake.as_raw_fd());
    }

    /// Queues a packet from the TUN for the TCP or SSTP session `peer_id` of this worker.
    pub fn hand_off(&self, peer_id: u32, packet: &[u8]) -> HandOff {
        self.queue(Handed::TunPacket { peer_id }, packet)
    }

    /// Queues a client's datagram another worker's socket received (on listen address
    /// `listener`, from `peer`, to local address `local`) for this worker's session.
    pub fn hand_off_datagram(
        &self,
        listener: usize,
        peer: SocketAddr,
        local: Option<IpAddr>,
        packet: &[u8],
    ) -> HandOff {
        self.queue(Handed::Datagram { listener, peer, local }, packet)
    }

    fn queue(&self, what: Handed, packet: &[u8]) -> HandOff {
        let Some(mut h) = self.spare.pop() else { return HandOff::Full };
        h.what = what;
        h.len = packet.len() as u16;
        h.data[..packet.len()].copy_from_slice(packet);
        match self.packets.push(h) {
            Ok(()) => {
                // One wake-up per burst: the worker drains the queue until it is empty.
                let woke = self.packets.len() == 1;
                if woke {
                    sys::eventfd_signal(self.wake.as_raw_fd());
                }
                HandOff::Queued { woke }
            }
            Err(h) => {
                let _ = self.spare.push(h);
                HandOff::Full
            }
        }
    }

    /// The next packet handed to this worker; give the box back with [`Inbox::recycle`].
    pub fn next_packet(&self) -> Option<Box<Handoff>> {
        self.packets.pop()
    }

    pub fn recycle(&self, h: Box<Handoff>) {
        let _ = self.spare.push(h);
    }
}

/// What became of a packet handed to another worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandOff {
    /// Queued; `woke` when this packet started a burst and signalled the worker.
    Queued { woke: bool },
    /// The worker's queue is full (it is overloaded).
    Full,
}

/// State shared by all workers and the control plane.
pub struct Shared {
    pub table: SessionTable,
    pub settings: ArcSwap<Settings>,
    pub tls_crypt: Option<Arc<TlsCrypt>>,
    pub inboxes: Vec<Arc<Inbox>>,
    pub counters: Vec<WorkerCounters>,
    pub to_control: tokio::sync::mpsc::UnboundedSender<ControlEvent>,
    /// Zero of the data plane's coarse clock (whole seconds since start).
    pub epoch: Instant,
}

impl Shared {
    pub fn secs(&self, now: Instant) -> u64 {
        now.duration_since(self.epoch).as_secs()
    }
}

/// What a UDP socket of a worker serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpRole {
    OpenVpn,
    /// IKE on port 500, bound to this address.
    Ike(SocketAddr),
    /// IKE and ESP on the NAT-T port 4500 (RFC 3948), bound to this address.
    NatT(SocketAddr),
}

/// What each worker is given at start.
pub struct WorkerIo {
    pub udp: Vec<OwnedFd>,
    /// One per entry of `udp`.
    pub udp_roles: Vec<UdpRole>,
    pub tcp: Vec<OwnedFd>,
    pub tun: OwnedFd,
    /// The kernel offloads of the TUN queue; `None` when it reads and writes plain packets.
    pub tun_offload: Option<tun::TunOffload>,
    /// Try UDP GSO and GRO on the OpenVPN and NAT-T sockets (the `offload` switch; each
    /// socket is probed).
    pub udp_gso: bool,
    /// The worker's IKEv2 responder settings (its SPIs tagged with the worker's index),
    /// when IKEv2 is enabled.
    pub ike: Option<Arc<ike::ResponderConfig>>,
}

pub struct Dataplane {
    pub shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Dataplane {
    /// Starts one worker per entry of `io`, pinned to `cpus[i]` when given.
    pub fn start(shared: Arc<Shared>, io: Vec<WorkerIo>, cpus: &[usize]) -> std::io::Result<Dataplane> {
        let mut threads = Vec::new();
        for (index, io) in io.into_iter().enumerate() {
            let shared = shared.clone();
            let cpu = cpus.get(index).copied();
            let t = std::thread::Builder::new().name(format!("p2sgw-worker-{index}")).spawn(move || {
                if let Some(cpu) = cpu
                    && let Err(e) = sys::pin_to_cpu(cpu)
                {
                    tracing::warn!(worker = index, cpu, error = %e, "cannot pin worker to its CPU");
                }
                // A worker that dies would leave its clients and TUN queue stranded while
                // the gateway looks alive: stop the whole process instead, so that the
                // service manager restarts it and clients reconnect.
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    worker::Worker::new(index, shared, io).and_then(|mut w| w.run())
                }));
                match outcome {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::error!(worker = index, error = %e, "worker failed; stopping the gateway");
                        std::process::exit(70);
                    }
                    Err(_) => {
                        tracing::error!(worker = index, "worker panicked; stopping the gateway");
                        std::process::abort();
                    }
                }
            })?;
            threads.push(t);
        }
        Ok(Dataplane { shared, threads })
    }

    /// Asks every worker to notify its clients and stop, and waits for them.
    pub fn shutdown(self) {
        for inbox in &self.shared.inboxes {
            inbox.send(WorkerCommand::Shutdown);
        }
        for t in self.threads {
            let _ = t.join();
        }
    }
}
