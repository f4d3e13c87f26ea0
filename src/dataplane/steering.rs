//! TUN queue steering: an eBPF program on the multi-queue TUN device sends each packet
//! the kernel routes into the tunnel to the queue of the worker that owns the session of
//! its destination, so that worker reads it and seals it with its own state: no
//! hand-off to another worker's mailbox (TCP, SSTP) and no second worker sealing with
//! the session's shared keys (UDP, IKEv2).
//!
//! The kernel runs the program (BPF_PROG_TYPE_SOCKET_FILTER, attached with
//! TUNSETSTEERINGEBPF) in `tun_select_queue` for every packet, in place of its automatic
//! queue choice; the return value, cut to 16 bits, modulo the number of queues is the
//! queue. The program reads the IPv4 destination and looks it up in a BPF hash map
//! (tunnel address → worker index) that the session table keeps in step with its sessions
//! by address ([`TunSteering::follow`]). A destination without a session gets the
//! packet's flow hash xor the destination (the hash is 0 where nothing computed it, and
//! the destination alone still spreads those packets), and anything else (not IPv4, too
//! short) the flow hash.
//!
//! Without the program the kernel's own choice (`tun_automq_select_queue`) takes the queue
//! that last wrote a packet of the flow (the owner, for flows the client sends on), else
//! one by hash: flows only the VNet sends on (UDP streams to clients), flows the client
//! has not written for 3 s, and flows beyond the 4,096 it remembers land on any worker.
//!
//! Queue index == worker index: the kernel numbers a TUN queue by the order it was
//! attached (`tun_attach` gives it `numqueues`), `tun::create` makes queue 0 with the
//! device and queues 1.. with tun-rs's `try_clone` (each opens /dev/net/tun and attaches),
//! and `serve` hands the queues to the workers in that order. The numbering would change
//! if a queue were detached (the last one takes its place); p2sgw keeps every queue open
//! until it exits.
//!
//! The program is 25 instructions, written here as bytecode through a small typed helper
//! and loaded with bpf(2) directly: a compiler toolchain (clang with aya or libbpf-rs)
//! would add a build-time dependency and an object file to ship for less code than this
//! module. Loading needs CAP_BPF; without it the gateway keeps the kernel's choice
//! (see `serve`).

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

// bpf(2) commands, map and program types (linux/bpf.h).
const BPF_MAP_CREATE: libc::c_long = 0;
#[cfg(test)]
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_PROG_LOAD: libc::c_long = 5;
#[cfg(test)]
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;
/// Hash map entries are allocated as sessions come, not all at creation.
const BPF_F_NO_PREALLOC: u32 = 1;
const BPF_PSEUDO_MAP_FD: u8 = 1;
const HELPER_MAP_LOOKUP_ELEM: i32 = 1;
const HELPER_SKB_LOAD_BYTES: i32 = 26;
/// `_IOR('T', 224, int)` (linux/if_tun.h).
const TUNSETSTEERINGEBPF: libc::c_ulong = 0x8004_54e0;

/// Offsets of the `struct __sk_buff` fields the program reads.
const SKB_PROTOCOL: i16 = 16;
const SKB_HASH: i16 = 68;
/// Where the destination address sits in an IPv4 header.
const IPV4_DESTINATION: i32 = 16;

/// A BPF register.
#[derive(Clone, Copy)]
#[repr(u8)]
enum Reg {
    R0 = 0,
    R1,
    R2,
    R3,
    R4,
    R6 = 6,
    R7,
    /// The frame pointer (read only).
    R10 = 10,
}

/// One BPF instruction (`struct bpf_insn`).
#[derive(Clone, Copy, Default)]
#[repr(C)]
struct Insn {
    code: u8,
    /// Destination register in the low nibble, source in the high one (on little-endian
    /// machines; the bit-field order flips on big-endian ones).
    regs: u8,
    off: i16,
    imm: i32,
}

// Instruction classes and operations (linux/bpf_common.h, linux/bpf.h).
const CLASS_LD: u8 = 0x00;
const CLASS_LDX: u8 = 0x01;
const CLASS_ALU: u8 = 0x04;
const CLASS_JMP: u8 = 0x05;
const CLASS_ALU64: u8 = 0x07;
const SIZE_W: u8 = 0x00;
const SIZE_DW: u8 = 0x18;
const MODE_IMM: u8 = 0x00;
const MODE_MEM: u8 = 0x60;
const SRC_K: u8 = 0x00;
const SRC_X: u8 = 0x08;
const OP_ADD: u8 = 0x00;
const OP_XOR: u8 = 0xa0;
const OP_MOV: u8 = 0xb0;
const OP_END: u8 = 0xd0;
const JMP_JEQ: u8 = 0x10;
const JMP_JNE: u8 = 0x50;
const JMP_CALL: u8 = 0x80;
const JMP_EXIT: u8 = 0x90;
/// With OP_END: convert to big-endian (a byte swap on little-endian machines).
const END_TO_BE: u8 = 0x08;

impl Insn {
    fn new(code: u8, dst: Reg, src: Reg, off: i16, imm: i32) -> Insn {
        Insn::with_source(code, dst, src as u8, off, imm)
    }

    /// An instruction whose source field is `src`: a register, or a pseudo source.
    fn with_source(code: u8, dst: Reg, src: u8, off: i16, imm: i32) -> Insn {
        let dst = dst as u8;
        let regs = if cfg!(target_endian = "little") { dst | (src << 4) } else { (dst << 4) | src };
        Insn { code, regs, off, imm }
    }

    /// dst = src
    fn mov(dst: Reg, src: Reg) -> Insn {
        Insn::new(CLASS_ALU64 | OP_MOV | SRC_X, dst, src, 0, 0)
    }

    /// dst = imm
    fn mov_imm(dst: Reg, imm: i32) -> Insn {
        Insn::new(CLASS_ALU64 | OP_MOV | SRC_K, dst, Reg::R0, 0, imm)
    }

    /// dst += imm
    fn add_imm(dst: Reg, imm: i32) -> Insn {
        Insn::new(CLASS_ALU64 | OP_ADD | SRC_K, dst, Reg::R0, 0, imm)
    }

    /// dst ^= src
    fn xor(dst: Reg, src: Reg) -> Insn {
        Insn::new(CLASS_ALU64 | OP_XOR | SRC_X, dst, src, 0, 0)
    }

    /// dst = the low 32 bits of dst taken as big-endian (the IPv4 address as a number).
    fn from_be32(dst: Reg) -> Insn {
        Insn::new(CLASS_ALU | OP_END | END_TO_BE, dst, Reg::R0, 0, 32)
    }

    /// dst = *(u32 *)(src + off)
    fn load32(dst: Reg, src: Reg, off: i16) -> Insn {
        Insn::new(CLASS_LDX | MODE_MEM | SIZE_W, dst, src, off, 0)
    }

    /// dst = the map of descriptor `fd` (two instruction slots).
    fn load_map(dst: Reg, fd: RawFd) -> [Insn; 2] {
        // The second slot holds the upper 32 bits of the immediate (none).
        [Insn::with_source(CLASS_LD | MODE_IMM | SIZE_DW, dst, BPF_PSEUDO_MAP_FD, 0, fd), Insn::default()]
    }

    /// if dst == imm: skip `skip` instructions
    fn skip_if_eq(dst: Reg, imm: i32, skip: i16) -> Insn {
        Insn::new(CLASS_JMP | JMP_JEQ | SRC_K, dst, Reg::R0, skip, imm)
    }

    /// if dst != imm: skip `skip` instructions
    fn skip_if_ne(dst: Reg, imm: i32, skip: i16) -> Insn {
        Insn::new(CLASS_JMP | JMP_JNE | SRC_K, dst, Reg::R0, skip, imm)
    }

    fn call(helper: i32) -> Insn {
        Insn::new(CLASS_JMP | JMP_CALL, Reg::R0, Reg::R0, 0, helper)
    }

    fn exit() -> Insn {
        Insn::new(CLASS_JMP | JMP_EXIT, Reg::R0, Reg::R0, 0, 0)
    }
}

/// The steering program over the map of descriptor `map` (see the module comment).
fn program(map: RawFd) -> [Insn; 25] {
    use Reg::*;
    let eth_p_ip = i32::from(0x0800u16.to_be());
    let [map_low, map_high] = Insn::load_map(R1, map);
    [
        Insn::mov(R6, R1),                   // 0: r6 = skb
        Insn::load32(R7, R6, SKB_HASH),      // 1: r7 = the flow hash
        Insn::load32(R0, R6, SKB_PROTOCOL),  // 2
        Insn::skip_if_ne(R0, eth_p_ip, 19),  // 3: not IPv4 → 23
        Insn::mov(R1, R6),                   // 4: bpf_skb_load_bytes(skb, 16, fp - 4, 4)
        Insn::mov_imm(R2, IPV4_DESTINATION), // 5
        Insn::mov(R3, R10),                  // 6
        Insn::add_imm(R3, -4),               // 7
        Insn::mov_imm(R4, 4),                // 8
        Insn::call(HELPER_SKB_LOAD_BYTES),   // 9
        Insn::skip_if_ne(R0, 0, 12),         // 10: too short → 23
        map_low,                             // 11: bpf_map_lookup_elem(map, fp - 4)
        map_high,                            // 12
        Insn::mov(R2, R10),                  // 13
        Insn::add_imm(R2, -4),               // 14
        Insn::call(HELPER_MAP_LOOKUP_ELEM),  // 15
        Insn::skip_if_eq(R0, 0, 2),          // 16: no session → 19
        Insn::load32(R0, R0, 0),             // 17: the owner's queue
        Insn::exit(),                        // 18
        Insn::load32(R0, R10, -4),           // 19: hash ^ destination
        Insn::from_be32(R0),                 // 20
        Insn::xor(R0, R7),                   // 21
        Insn::exit(),                        // 22
        Insn::mov(R0, R7),                   // 23: the flow hash
        Insn::exit(),                        // 24
    ]
}

#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// bpf(2) with `attr`; returns the syscall's non-negative result (a new fd for the
/// commands that make one).
fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: attr is a live, zero-padded repr(C) prefix of union bpf_attr for `cmd`,
    // and its size is passed along; the kernel reads at most that many bytes (and
    // writes only fields of the struct, for the commands used here).
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, (attr as *mut T).cast::<u8>(), size_of::<T>() as u32) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

fn name(s: &str) -> [u8; 16] {
    let mut out = [0; 16];
    out[..s.len()].copy_from_slice(s.as_bytes());
    out
}

/// The steering program and its map of tunnel addresses to worker (queue) indices.
pub struct TunSteering {
    map: OwnedFd,
    program: OwnedFd,
    /// Serialises map changes: each writes what the session table holds for the address
    /// at that moment, so the last change for an address writes its latest state.
    changes: Mutex<()>,
}

impl TunSteering {
    /// Makes the map (room for `capacity` addresses) and loads the program; the error of
    /// a refused program carries the verifier's log.
    pub fn load(capacity: usize) -> io::Result<TunSteering> {
        let mut map_attr = MapCreateAttr {
            map_type: BPF_MAP_TYPE_HASH,
            key_size: 4,
            value_size: 4,
            max_entries: u32::try_from(capacity.max(1)).unwrap_or(u32::MAX),
            map_flags: BPF_F_NO_PREALLOC,
            map_name: name("p2sgw_steering"),
            ..Default::default()
        };
        let fd = bpf(BPF_MAP_CREATE, &mut map_attr)?;
        // SAFETY: BPF_MAP_CREATE returned a new descriptor that nothing else owns.
        let map = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };

        let insns = program(map.as_raw_fd());
        let license = c"Apache-2.0";
        let mut log = vec![0u8; 64 * 1024];
        let mut load_attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_SOCKET_FILTER,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: 1,
            log_size: log.len() as u32,
            log_buf: log.as_mut_ptr() as u64,
            prog_name: name("p2sgw_steer"),
            ..Default::default()
        };
        let program = match bpf(BPF_PROG_LOAD, &mut load_attr) {
            // SAFETY: BPF_PROG_LOAD returned a new descriptor that nothing else owns.
            Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd as RawFd) },
            Err(e) => {
                let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
                let verifier = String::from_utf8_lossy(&log[..end]);
                let verifier = verifier.trim();
                if verifier.is_empty() {
                    return Err(e);
                }
                return Err(io::Error::new(e.kind(), format!("{e}; verifier: {verifier}")));
            }
        };
        Ok(TunSteering { map, program, changes: Mutex::new(()) })
    }

    /// Makes the program choose the queue of every packet sent into the TUN device that
    /// `tun` is a queue of.
    pub fn attach(&self, tun: BorrowedFd<'_>) -> io::Result<()> {
        let fd: libc::c_int = self.program.as_raw_fd();
        // SAFETY: TUNSETSTEERINGEBPF reads one int (a program fd) from the pointer.
        let rc = unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETSTEERINGEBPF, &fd as *const libc::c_int) };
        if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }

    /// Brings the map's entry for `address` in line with the session table:
    /// `current_owner` reads the worker owning the address's session now (None: no
    /// session). Called after each change of the table by address, so that a removal
    /// that lost a race to a reconnect leaves the successor's owner in place (the
    /// table's remove-if). A map update is one short syscall that does not sleep (the
    /// element is allocated atomically), made by the worker publishing or ending a
    /// session, next to the handshake work that costs far more.
    pub(crate) fn follow(&self, address: Ipv4Addr, current_owner: impl FnOnce() -> Option<usize>) {
        let _serialised = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        let key = address.octets();
        let result = match current_owner() {
            Some(owner) => {
                let value = owner as u32;
                let mut attr = MapElemAttr {
                    map_fd: self.map.as_raw_fd() as u32,
                    key: key.as_ptr() as u64,
                    value: (&value as *const u32) as u64,
                    flags: 0,
                };
                bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
            }
            None => {
                let mut attr =
                    MapElemAttr { map_fd: self.map.as_raw_fd() as u32, key: key.as_ptr() as u64, ..Default::default() };
                match bpf(BPF_MAP_DELETE_ELEM, &mut attr) {
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
                    other => other.map(drop),
                }
            }
        };
        if let Err(e) = result {
            tracing::warn!(%address, error = %e, "cannot update the TUN steering map; its packets may reach another worker");
        }
    }

    /// Loads for a test; None (the test is skipped) when the process is not root.
    #[cfg(test)]
    pub(crate) fn load_in_test(capacity: usize) -> Option<TunSteering> {
        match TunSteering::load(capacity) {
            Ok(steering) => Some(steering),
            // SAFETY: geteuid has no preconditions.
            Err(e) if unsafe { libc::geteuid() } != 0 => {
                eprintln!("skipped: loading BPF needs root ({e})");
                None
            }
            Err(e) => panic!("cannot load the steering program as root: {e}"),
        }
    }

    /// The worker the map names for `address`.
    #[cfg(test)]
    pub(crate) fn lookup(&self, address: Ipv4Addr) -> Option<u32> {
        let key = address.octets();
        let mut value = 0u32;
        let mut attr = MapElemAttr {
            map_fd: self.map.as_raw_fd() as u32,
            key: key.as_ptr() as u64,
            value: (&mut value as *mut u32) as u64,
            flags: 0,
        };
        bpf(BPF_MAP_LOOKUP_ELEM, &mut attr).ok().map(|_| value)
    }

    /// Runs the program on `packet` (an IP packet, given to the kernel behind an Ethernet
    /// header of `ethertype`) and returns its result.
    #[cfg(test)]
    pub(crate) fn run(&self, ethertype: u16, packet: &[u8]) -> io::Result<u32> {
        #[repr(C)]
        #[derive(Default)]
        struct TestRunAttr {
            prog_fd: u32,
            retval: u32,
            data_size_in: u32,
            data_size_out: u32,
            data_in: u64,
            data_out: u64,
            repeat: u32,
            duration: u32,
        }
        let mut frame = vec![0u8; 12];
        frame.extend(ethertype.to_be_bytes());
        frame.extend(packet);
        let mut attr = TestRunAttr {
            prog_fd: self.program.as_raw_fd() as u32,
            data_size_in: frame.len() as u32,
            data_in: frame.as_ptr() as u64,
            repeat: 1,
            ..Default::default()
        };
        bpf(BPF_PROG_TEST_RUN, &mut attr)?;
        Ok(attr.retval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ETH_P_IP: u16 = 0x0800;
    const ETH_P_IPV6: u16 = 0x86dd;

    /// A UDP-in-IPv4 header from the vnet host to `destination`.
    fn ipv4_to(destination: Ipv4Addr) -> Vec<u8> {
        let mut p = vec![0u8; 28];
        p[0] = 0x45;
        p[9] = 17;
        p[12..16].copy_from_slice(&[10, 50, 0, 2]);
        p[16..20].copy_from_slice(&destination.octets());
        p
    }

    #[test]
    fn the_program_picks_the_owners_queue_and_spreads_the_rest() {
        let Some(steering) = TunSteering::load_in_test(16) else { return };
        let (a, b, unknown) =
            (Ipv4Addr::new(172, 16, 201, 2), Ipv4Addr::new(172, 16, 201, 3), Ipv4Addr::new(172, 16, 201, 77));
        steering.follow(a, || Some(1));
        steering.follow(b, || Some(0));
        assert_eq!(steering.run(ETH_P_IP, &ipv4_to(a)).unwrap(), 1);
        assert_eq!(steering.run(ETH_P_IP, &ipv4_to(b)).unwrap(), 0);
        // The test run's packet has no flow hash (0): what is left is the destination,
        // whose low 16 bits (the ones the kernel keeps) differ between clients.
        assert_eq!(steering.run(ETH_P_IP, &ipv4_to(unknown)).unwrap(), u32::from(unknown));
        // Twenty bytes hold the destination; fewer get the flow hash, with no lookup
        // (bpf_skb_load_bytes fails). Linux 6.x's test run refuses IPv4 frames shorter
        // than an IPv4 header itself; older kernels run the program on them.
        assert_eq!(steering.run(ETH_P_IP, &ipv4_to(a)[..20]).unwrap(), 1);
        for len in [0, 1, 16, 19] {
            match steering.run(ETH_P_IP, &ipv4_to(a)[..len]) {
                Ok(queue) => assert_eq!(queue, 0, "{len}-byte packet"),
                Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{len}-byte packet"),
            }
        }
        // Not IPv4: bytes 16..20 of this IPv6 header spell a mapped address, unread.
        let mut ipv6 = vec![0u8; 40];
        ipv6[0] = 0x60;
        ipv6[16..20].copy_from_slice(&a.octets());
        assert_eq!(steering.run(ETH_P_IPV6, &ipv6).unwrap(), 0);
        assert_eq!(steering.run(0x0806, &ipv4_to(a)).unwrap(), 0, "ARP");
    }

    #[test]
    fn map_changes_set_and_delete() {
        let Some(steering) = TunSteering::load_in_test(4) else { return };
        let a = Ipv4Addr::new(172, 16, 201, 2);
        assert_eq!(steering.lookup(a), None);
        steering.follow(a, || Some(3));
        assert_eq!(steering.lookup(a), Some(3));
        steering.follow(a, || Some(2));
        assert_eq!(steering.lookup(a), Some(2));
        steering.follow(a, || None);
        assert_eq!(steering.lookup(a), None);
        steering.follow(a, || None); // deleting an absent entry is no error
        assert_eq!(steering.run(ETH_P_IP, &ipv4_to(a)).unwrap(), u32::from(a));
    }
}
