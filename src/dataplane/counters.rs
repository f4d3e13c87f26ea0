//! Per-worker packet counters, and drops counted by reason. Each worker writes only
//! its own (cache-line aligned) block; readers sum them.

use std::sync::atomic::{AtomicU64, Ordering};

/// Why a packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum DropReason {
    /// Too short, unknown opcode, bad framing.
    Malformed,
    /// A control packet the acceptor or a session refused (bad tls-crypt tag, bad
    /// cookie, wrong session id, replayed control packet…).
    ControlRefused,
    /// A data packet from an address with no session.
    UnknownSession,
    /// A data packet whose peer-id belongs to a session at another address.
    PeerMismatch,
    /// A data packet for a key id the session does not have.
    NoKey,
    Replay,
    /// AEAD authentication failed.
    Decrypt,
    /// A tunnelled packet whose source is not the client's tunnel address.
    SpoofedSource,
    /// A packet from the TUN for an address with no session.
    NoRoute,
    /// Not IPv4 (IPv6 inside the tunnel is not supported yet).
    NotIpv4,
    /// No buffer or queue space.
    Overload,
    /// The session is not established yet (no keys for sending).
    NotEstablished,
}

impl DropReason {
    pub const ALL: [DropReason; 12] = [
        DropReason::Malformed,
        DropReason::ControlRefused,
        DropReason::UnknownSession,
        DropReason::PeerMismatch,
        DropReason::NoKey,
        DropReason::Replay,
        DropReason::Decrypt,
        DropReason::SpoofedSource,
        DropReason::NoRoute,
        DropReason::NotIpv4,
        DropReason::Overload,
        DropReason::NotEstablished,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::ControlRefused => "control_refused",
            DropReason::UnknownSession => "unknown_session",
            DropReason::PeerMismatch => "peer_mismatch",
            DropReason::NoKey => "no_key",
            DropReason::Replay => "replay",
            DropReason::Decrypt => "decrypt",
            DropReason::SpoofedSource => "spoofed_source",
            DropReason::NoRoute => "no_route",
            DropReason::NotIpv4 => "not_ipv4",
            DropReason::Overload => "overload",
            DropReason::NotEstablished => "not_established",
        }
    }
}

#[repr(align(128))]
#[derive(Default)]
pub struct WorkerCounters {
    drops: [AtomicU64; DropReason::ALL.len()],
    /// Packets from clients written to the TUN, and their bytes (inner IP packets).
    pub to_tun: AtomicU64,
    pub to_tun_bytes: AtomicU64,
    /// Packets from the TUN sent to clients, and their bytes (inner IP packets).
    pub from_tun: AtomicU64,
    pub from_tun_bytes: AtomicU64,
    /// TUN packets for a TCP or SSTP session handed to the worker that owns it.
    pub handoffs: AtomicU64,
    /// Mailbox wake-ups (eventfd writes) those hand-offs cost: one per burst that found
    /// the owner's queue empty.
    pub handoff_wakes: AtomicU64,
    /// TUN packets for a UDP or IKEv2 session another worker owns, sealed here with the
    /// session's shared keys. With TUN steering this and `handoffs` stay near 0.
    pub tun_foreign_sealed: AtomicU64,
    /// TSO/USO super-packets read from the TUN queue, and the packets cut from them.
    pub tun_super_reads: AtomicU64,
    pub tun_split_packets: AtomicU64,
    /// Writes to the TUN queue (with offloads one write may carry a coalesced flow), and
    /// of those, writes of a coalesced super-packet.
    pub tun_writes: AtomicU64,
    pub tun_coalesced_writes: AtomicU64,
    /// UDP GSO sends (one `sendmsg` for several datagrams to a client), and the
    /// datagrams they carried.
    pub udp_gso_sends: AtomicU64,
    pub udp_gso_datagrams: AtomicU64,
    /// UDP GRO receives (one receive bringing several datagrams of a client, coalesced by
    /// the kernel), and the datagrams they carried.
    pub udp_gro_receives: AtomicU64,
    pub udp_gro_datagrams: AtomicU64,
    /// Multishot UDP receives ended because their provided-buffer ring was empty (armed
    /// again once buffers are back).
    pub udp_recv_ring_empty: AtomicU64,
    /// Multishot TUN reads ended because their provided-buffer ring was empty (armed
    /// again once buffers are back).
    pub tun_read_ring_empty: AtomicU64,
    /// Completions processed per ring wait, summed (with `batches`, the mean batch).
    pub completions: AtomicU64,
    pub batches: AtomicU64,
    /// OpenVPN sessions over UDP moved to their client's new address (by their owner).
    pub openvpn_floats: AtomicU64,
    /// Client datagrams handed to the worker owning their session (the SO_REUSEPORT
    /// steering did not bring them there), and IKE messages passed to the worker owning
    /// their SA by mailbox.
    pub datagram_handoffs: AtomicU64,
    pub ike_mailbox_passes: AtomicU64,
}

impl WorkerCounters {
    pub fn drop(&self, reason: DropReason) {
        self.drops[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn wrote_to_tun(&self, bytes: usize) {
        self.to_tun.fetch_add(1, Ordering::Relaxed);
        self.to_tun_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn sent_from_tun(&self, bytes: usize) {
        self.from_tun.fetch_add(1, Ordering::Relaxed);
        self.from_tun_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize].load(Ordering::Relaxed)
    }
}

/// Sum of one drop reason over workers.
pub fn total_drops(workers: &[WorkerCounters], reason: DropReason) -> u64 {
    workers.iter().map(|w| w.drops(reason)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_reason() {
        let w = [WorkerCounters::default(), WorkerCounters::default()];
        w[0].drop(DropReason::Replay);
        w[1].drop(DropReason::Replay);
        w[1].drop(DropReason::Decrypt);
        assert_eq!(total_drops(&w, DropReason::Replay), 2);
        assert_eq!(total_drops(&w, DropReason::Decrypt), 1);
        assert_eq!(total_drops(&w, DropReason::NoRoute), 0);
        assert_eq!(DropReason::ALL.iter().map(|r| r.name()).collect::<std::collections::HashSet<_>>().len(), 12);
    }
}
