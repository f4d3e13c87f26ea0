//! Steering of client datagrams to the worker that owns their session: a classic BPF
//! program on each SO_REUSEPORT group (SO_ATTACH_REUSEPORT_CBPF, which needs no
//! capability) picks the socket by what the datagram says about its session.
//!
//! - OpenVPN: a P_DATA_V2 packet carries its session's peer-id, and the control plane
//!   gives each session a peer-id whose residue modulo the worker count is its owner.
//! - IKE (port 500, and port 4500 after the non-ESP marker): the SPI the gateway chose
//!   starts with its owner's index ([`crate::proto::ike::ResponderConfig::spi_tag`]).
//! - ESP (port 4500): its SPI, chosen by the gateway, starts with the owner's index too.
//!
//! Everything else (handshakes, control packets, zero SPIs of IKE_SA_INIT, NAT
//! keepalives) is left to the kernel's 4-tuple hash, as without a program.
//!
//! What the kernel runs (net/core/sock_reuseport.c, `run_bpf_filter`, Linux 4.5 to 6.18):
//! the program sees the datagram with the skb's data advanced past the UDP header, so
//! offset 0 is the first byte of the UDP payload and the length (`BPF_LEN`) is the
//! payload's. It returns an index into the group's sockets; an index at or past the
//! group's size makes the kernel fall back to its hash, which is how a program says "no
//! preference" ([`NO_PREFERENCE`]). A load past the end of the packet would end the
//! program with 0 (socket 0), so every program checks the length first.
//!
//! Socket index = worker index: a group lists its sockets in the order they were bound,
//! and serve.rs binds each listen address's sockets worker by worker, so socket `i` is
//! worker `i`'s. That fails when other sockets share the group (those of a previous
//! gateway process still open; the kernel also moves the last socket into the place of
//! one that leaves): datagrams then reach the wrong worker, or another process. The
//! workers cope with what reaches them: OpenVPN data for another worker's session is
//! handed to its owner, IKE messages are passed to their owner by mailbox, and any
//! worker opens ESP.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, RawFd};

use libc::sock_filter;
use tracing::warn;

use super::{UdpRole, WorkerIo};

/// Past every group's last socket: the kernel picks by its hash.
pub const NO_PREFERENCE: u32 = u32::MAX;

/// P_DATA_V2's opcode, in the top five bits of the first byte.
const OPCODE_DATA_V2: u32 = 9;
/// The peer-id OpenVPN sends when the server assigned none.
const UNDEFINED_PEER_ID: u32 = 0x00ff_ffff;
const IKE_HEADER_LEN: u32 = 28;
/// The IKE header's flags byte, and its Initiator bit.
const IKE_FLAGS_OFFSET: u32 = 19;
const IKE_FLAG_INITIATOR: u32 = 0x08;
/// The non-ESP marker in front of IKE messages on port 4500.
const NON_ESP_MARKER_LEN: u32 = 4;

/// The program for sockets serving `role`, with `workers` sockets in each group.
pub fn program_for(role: UdpRole, workers: usize) -> Vec<sock_filter> {
    match role {
        UdpRole::OpenVpn => openvpn_program(workers),
        UdpRole::Ike(_) => ike_program(false),
        UdpRole::NatT(_) => ike_program(true),
    }
}

/// Attaches the steering programs to every UDP group (through worker 0's sockets, after
/// every worker's are bound: a program attached before a socket joins its group is lost).
/// A kernel that refuses leaves that group to its hash, which the workers cope with.
pub fn steer_to_owners(io: &[WorkerIo]) {
    let Some(first) = io.first() else { return };
    if io.len() < 2 {
        return;
    }
    for (socket, role) in first.udp.iter().zip(&first.udp_roles) {
        if let Err(e) = attach(socket.as_raw_fd(), &program_for(*role, io.len())) {
            warn!(?role, error = %e, "cannot steer datagrams to their session's worker; the kernel's hash spreads them");
        }
    }
}

/// Sets the program of the SO_REUSEPORT group `fd` is bound in (replacing any other).
pub fn attach(fd: RawFd, program: &[sock_filter]) -> io::Result<()> {
    let len = u16::try_from(program.len()).map_err(|_| io::Error::other("BPF program too long"))?;
    let fprog = libc::sock_fprog { len, filter: program.as_ptr().cast_mut() };
    // SAFETY: fprog points at `program`, which outlives the call (the kernel copies it).
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&fprog as *const libc::sock_fprog).cast(),
            size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// P_DATA_V2 with a defined peer-id: the worker `peer_id % workers`.
fn openvpn_program(workers: usize) -> Vec<sock_filter> {
    let mut p = Assembler::default();
    p.op(libc::BPF_LD | libc::BPF_W | libc::BPF_LEN, 0);
    p.jump(libc::BPF_JGE, 4, Next, Fallback);
    p.op(libc::BPF_LD | libc::BPF_B | libc::BPF_ABS, 0);
    p.op(libc::BPF_ALU | libc::BPF_RSH | libc::BPF_K, 3);
    p.jump(libc::BPF_JEQ, OPCODE_DATA_V2, Next, Fallback);
    // The opcode byte and the 24-bit peer-id, in network order.
    p.op(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0);
    p.op(libc::BPF_ALU | libc::BPF_AND | libc::BPF_K, 0x00ff_ffff);
    p.jump(libc::BPF_JEQ, UNDEFINED_PEER_ID, Fallback, Next);
    p.op(libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K, u32::try_from(workers).unwrap_or(u32::MAX).max(1));
    p.op(libc::BPF_RET | libc::BPF_A, 0);
    p.finish()
}

/// IKE messages: the first byte of the gateway's SPI (the responder's when the message
/// comes from the original initiator, by the I flag; else the initiator's), unless that
/// SPI is zero. With `nat_t`, after the non-ESP marker; and ESP: the first byte of its SPI.
fn ike_program(nat_t: bool) -> Vec<sock_filter> {
    let mut p = Assembler::default();
    let base = if nat_t { NON_ESP_MARKER_LEN } else { 0 };
    if nat_t {
        // NAT keepalives (one 0xFF byte) and anything shorter than a marker.
        p.op(libc::BPF_LD | libc::BPF_W | libc::BPF_LEN, 0);
        p.jump(libc::BPF_JGE, NON_ESP_MARKER_LEN, Next, Fallback);
        p.op(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0);
        p.jump(libc::BPF_JEQ, 0, Label("ike"), Next);
        // ESP; SPIs 1 to 255 are reserved (the workers drop them).
        p.jump(libc::BPF_JGE, 256, Next, Fallback);
        p.op(libc::BPF_LD | libc::BPF_B | libc::BPF_ABS, 0);
        p.op(libc::BPF_RET | libc::BPF_A, 0);
        p.label("ike");
    }
    p.op(libc::BPF_LD | libc::BPF_W | libc::BPF_LEN, 0);
    p.jump(libc::BPF_JGE, base + IKE_HEADER_LEN, Next, Fallback);
    p.op(libc::BPF_LD | libc::BPF_B | libc::BPF_ABS, base + IKE_FLAGS_OFFSET);
    p.jump(libc::BPF_JSET, IKE_FLAG_INITIATOR, Label("responder spi"), Next);
    p.op(libc::BPF_LDX | libc::BPF_W | libc::BPF_IMM, base);
    p.always(Label("spi"));
    p.label("responder spi");
    p.op(libc::BPF_LDX | libc::BPF_W | libc::BPF_IMM, base + 8);
    p.label("spi");
    // Zero (an IKE_SA_INIT request has no responder SPI yet): no preference.
    p.op(libc::BPF_LD | libc::BPF_W | libc::BPF_IND, 0);
    p.jump(libc::BPF_JEQ, 0, Next, Label("tag"));
    p.op(libc::BPF_LD | libc::BPF_W | libc::BPF_IND, 4);
    p.jump(libc::BPF_JEQ, 0, Fallback, Next);
    p.label("tag");
    p.op(libc::BPF_LD | libc::BPF_B | libc::BPF_IND, 0);
    p.op(libc::BPF_RET | libc::BPF_A, 0);
    p.finish()
}

/// Where a conditional jump goes.
#[derive(Clone, Copy)]
enum Target {
    Next,
    Label(&'static str),
    /// The program's last instruction: return [`NO_PREFERENCE`].
    Fallback,
}
use Target::{Fallback, Label, Next};

/// Classic BPF with forward jumps to named labels, resolved by `finish`.
#[derive(Default)]
struct Assembler {
    code: Vec<sock_filter>,
    labels: Vec<(&'static str, usize)>,
    /// Instruction, its true and false targets (an unconditional jump has only one).
    jumps: Vec<(usize, Target, Option<Target>)>,
}

impl Assembler {
    fn op(&mut self, code: u32, k: u32) {
        self.code.push(sock_filter { code: code as u16, jt: 0, jf: 0, k });
    }

    /// A conditional jump comparing A with `k`.
    fn jump(&mut self, condition: u32, k: u32, if_true: Target, if_false: Target) {
        self.jumps.push((self.code.len(), if_true, Some(if_false)));
        self.op(libc::BPF_JMP | condition | libc::BPF_K, k);
    }

    fn always(&mut self, to: Target) {
        self.jumps.push((self.code.len(), to, None));
        self.op(libc::BPF_JMP | libc::BPF_JA, 0);
    }

    fn label(&mut self, name: &'static str) {
        self.labels.push((name, self.code.len()));
    }

    /// Appends the fallback return and resolves the jumps. Panics on a jump backwards
    /// or too far, or to a missing label: mistakes in the programs above, which the
    /// tests run.
    fn finish(mut self) -> Vec<sock_filter> {
        let fallback = self.code.len();
        self.op(libc::BPF_RET | libc::BPF_K, NO_PREFERENCE);
        let labels = std::mem::take(&mut self.labels);
        let offset = |from: usize, to: Target| -> usize {
            let target = match to {
                Next => from + 1,
                Fallback => fallback,
                Label(name) => labels.iter().find(|(l, _)| *l == name).map(|&(_, at)| at).expect("a defined label"),
            };
            target.checked_sub(from + 1).expect("BPF jumps go forward")
        };
        for (at, if_true, if_false) in std::mem::take(&mut self.jumps) {
            match if_false {
                Some(if_false) => {
                    self.code[at].jt = u8::try_from(offset(at, if_true)).expect("a short jump");
                    self.code[at].jf = u8::try_from(offset(at, if_false)).expect("a short jump");
                }
                None => self.code[at].k = offset(at, if_true) as u32,
            }
        }
        self.code
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::sys;
    use crate::proto::esp::{Port4500, classify_port_4500};
    use crate::proto::ike::Responder;
    use crate::testing::XorShift;
    use std::net::{SocketAddr, UdpSocket};

    const WORKERS: usize = 4;

    /// A group of `WORKERS` sockets on a loopback port, in join order, and clients that
    /// send to it from their own ports.
    struct Group {
        sockets: Vec<UdpSocket>,
        clients: Vec<UdpSocket>,
        /// Per client, the socket the kernel's hash picks for it (measured before a
        /// program is attached).
        hashed: Vec<usize>,
    }

    impl Group {
        fn new(clients: usize) -> Group {
            let first = UdpSocket::from(sys::udp_socket(&"127.0.0.1:0".parse().unwrap()).unwrap());
            let address = first.local_addr().unwrap();
            let mut sockets = vec![first];
            for _ in 1..WORKERS {
                sockets.push(UdpSocket::from(sys::udp_socket(&address).unwrap()));
            }
            let clients: Vec<UdpSocket> = (0..clients).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
            let mut group = Group { sockets, clients, hashed: Vec::new() };
            group.hashed = (0..group.clients.len()).map(|c| group.landing(c, b"before any program")).collect();
            group
        }

        fn address(&self) -> SocketAddr {
            self.sockets[0].local_addr().unwrap()
        }

        fn attach(&self, program: &[sock_filter]) {
            attach(self.sockets[0].as_raw_fd(), program).expect("the kernel takes the program");
        }

        /// Sends `payload` from client `c`; returns the index of the socket it reached.
        fn landing(&self, c: usize, payload: &[u8]) -> usize {
            self.clients[c].send_to(payload, self.address()).unwrap();
            let mut fds: Vec<libc::pollfd> = self
                .sockets
                .iter()
                .map(|s| libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLIN, revents: 0 })
                .collect();
            // SAFETY: fds is a live array of pollfd of the given length.
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 2000) };
            assert_eq!(ready, 1, "exactly one socket receives the datagram");
            let index = fds.iter().position(|f| f.revents & libc::POLLIN != 0).unwrap();
            let mut buf = [0u8; 2048];
            let (n, from) = self.sockets[index].recv_from(&mut buf).unwrap();
            assert_eq!((&buf[..n], from), (payload, self.clients[c].local_addr().unwrap()));
            index
        }

        /// Where the datagram must land: the steered worker, or the hash's choice.
        fn check(&self, c: usize, payload: &[u8], steered: Option<usize>) {
            let expected = steered.filter(|&w| w < WORKERS).unwrap_or(self.hashed[c]);
            assert_eq!(self.landing(c, payload), expected, "payload {payload:02x?} from client {c}");
        }
    }

    fn data_v2(peer_id: u32, len: usize) -> Vec<u8> {
        let mut p = vec![0u8; len.max(4)];
        p[..4].copy_from_slice(&((9 << 27) | (2 << 24) | peer_id).to_be_bytes());
        p.truncate(len);
        p
    }

    /// An IKE header with these SPIs and flags, after the non-ESP marker when `nat_t`.
    fn ike(spi_i: [u8; 8], spi_r: [u8; 8], flags: u8, nat_t: bool) -> Vec<u8> {
        let mut m = if nat_t { vec![0; 4] } else { Vec::new() };
        m.extend_from_slice(&spi_i);
        m.extend_from_slice(&spi_r);
        m.extend_from_slice(&[46, 0x20, 37, flags, 0, 0, 0, 1, 0, 0, 0, 60]);
        m.extend_from_slice(&[0xab; 32]);
        m
    }

    fn spi(tag: u8) -> [u8; 8] {
        [tag, 0x5a, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66]
    }

    /// The owner a worker would find by parsing the datagram (the programs must agree).
    fn owner_by_parsing(role: UdpRole, payload: &[u8]) -> Option<usize> {
        match role {
            UdpRole::OpenVpn => {
                let word = u32::from_be_bytes(payload.get(..4)?.try_into().ok()?);
                let peer_id = word & 0x00ff_ffff;
                (word >> 27 == 9 && peer_id != UNDEFINED_PEER_ID).then_some(peer_id as usize % WORKERS)
            }
            UdpRole::Ike(_) => Responder::our_spi(payload).map(|spi| usize::from(spi[0])),
            UdpRole::NatT(_) => match classify_port_4500(payload).ok()? {
                Port4500::Esp { spi } => Some((spi >> 24) as usize),
                Port4500::Ike(message) => Responder::our_spi(message).map(|spi| usize::from(spi[0])),
                Port4500::NatKeepalive => None,
            },
        }
    }

    #[test]
    fn openvpn_data_goes_to_the_worker_of_its_peer_id_and_the_rest_to_the_hash() {
        let group = Group::new(16);
        assert!(group.hashed.iter().collect::<std::collections::HashSet<_>>().len() > 1, "the hash spreads clients");
        group.attach(&openvpn_program(WORKERS));
        for peer_id in 0..12 {
            // From every client: the peer-id decides, not the address.
            for c in [0, 5, 11] {
                group.check(c, &data_v2(peer_id, 60), Some(peer_id as usize % WORKERS));
            }
        }
        group.check(1, &data_v2(0x00ab_cdef, 4), Some(0x00ab_cdef % WORKERS));
        for c in 0..group.clients.len() {
            group.check(c, &data_v2(UNDEFINED_PEER_ID, 60), None);
            group.check(c, &data_v2(3, 3), None); // too short for a peer-id
            group.check(c, &[], None);
            group.check(c, &[0x38; 60], None); // P_CONTROL_HARD_RESET_CLIENT_V2
            group.check(c, &[0x30, 0, 0, 1, 5, 6], None); // P_DATA_V1: no peer-id
            group.check(c, &[0x20; 60], None); // P_CONTROL_V1
        }
    }

    #[test]
    fn ike_messages_go_to_the_worker_of_the_gateway_spi() {
        for nat_t in [false, true] {
            let group = Group::new(8);
            group.attach(&ike_program(nat_t));
            for c in 0..group.clients.len() {
                for tag in 0..WORKERS as u8 {
                    // From the client (I flag): our SPI is the responder's.
                    group.check(c, &ike([0x77; 8], spi(tag), 0x08, nat_t), Some(usize::from(tag)));
                    // From the client after we rekeyed the IKE SA (we are the original initiator).
                    group.check(c, &ike(spi(tag), [0x77; 8], 0x20, nat_t), Some(usize::from(tag)));
                }
                // A tag past the group: no preference.
                group.check(c, &ike([0x77; 8], spi(9), 0x08, nat_t), None);
                // IKE_SA_INIT: no responder SPI yet; zero SPI with any flags.
                group.check(c, &ike([0x77; 8], [0; 8], 0x08, nat_t), None);
                group.check(c, &ike([0; 8], [0x77; 8], 0x20, nat_t), None);
                // A message cut short of its header.
                let short = ike([0x77; 8], spi(1), 0x08, nat_t);
                group.check(c, &short[..if nat_t { 31 } else { 27 }], None);
            }
        }
    }

    #[test]
    fn esp_on_port_4500_goes_to_the_worker_of_its_spi() {
        let group = Group::new(8);
        group.attach(&ike_program(true));
        for c in 0..group.clients.len() {
            for tag in 0..WORKERS as u32 {
                let spi = (tag << 24) | 0x0012_3456;
                let mut esp = spi.to_be_bytes().to_vec();
                esp.extend_from_slice(&[0x42; 40]);
                group.check(c, &esp, Some(tag as usize));
            }
            group.check(c, &[0x09, 1, 2, 3, 0x42, 0x42], None); // tag past the group
            group.check(c, &[0xff], None); // NAT keepalive
            group.check(c, &[0, 0, 0, 7, 0x42, 0x42], None); // reserved SPI
            group.check(c, &[1, 2, 3], None);
        }
    }

    /// Random datagrams, most of them shaped like the packets each program looks at:
    /// every one lands where parsing it in the worker says its owner is.
    #[test]
    fn programs_agree_with_the_workers_parsers_on_random_datagrams() {
        let bound: SocketAddr = "127.0.0.1:500".parse().unwrap();
        let mut rng = XorShift(0x5eed_1234_abcd_0001);
        for role in [UdpRole::OpenVpn, UdpRole::Ike(bound), UdpRole::NatT(bound)] {
            let group = Group::new(4);
            group.attach(&program_for(role, WORKERS));
            for _ in 0..300 {
                let len = rng.below(72) as usize;
                let mut payload: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                // Most are shaped like what the program looks at, with owners in and
                // past the group.
                match (role, rng.below(3)) {
                    (UdpRole::OpenVpn, 0 | 1) if len > 0 => payload[0] = 0x48 | (payload[0] & 7),
                    (UdpRole::NatT(_), 0) if len >= 4 => {
                        payload[..4].fill(0);
                        for at in [4, 12] {
                            if let Some(b) = payload.get_mut(at) {
                                *b %= 6;
                            }
                        }
                    }
                    (UdpRole::NatT(_), 1) if len > 0 => payload[0] %= 6,
                    (UdpRole::Ike(_), 0 | 1) => {
                        for at in [0, 8] {
                            if let Some(b) = payload.get_mut(at) {
                                *b %= 6;
                            }
                        }
                    }
                    _ => {}
                }
                let c = rng.below(group.clients.len() as u64) as usize;
                group.check(c, &payload, owner_by_parsing(role, &payload));
            }
        }
    }
}
