//! The session table every worker reads without locks: sessions by tunnel address
//! (for packets read from the TUN) and by peer-id.
//!
//! A session is owned by one worker (the one whose socket its client's packets reach),
//! but any worker may read a packet for it from its own TUN queue: IFF_MULTI_QUEUE picks
//! the queue by flow hash, not by owner. For UDP clients that worker seals the packet
//! itself with the session's shared keys (their packet-id counter is atomic) and sends
//! it from its own socket in the same SO_REUSEPORT group. TCP streams cannot be written
//! by two threads, so those packets are handed to the owner.
//!
//! With TUN steering (see `steering`) the kernel puts a packet on the owner's queue in
//! the first place; the table keeps the steering map in step with its sessions by address.
//! The paths above remain for packets it cannot steer (no CAP_BPF, or read before
//! their session's map entry was written).
//!
//! An OpenVPN client over UDP whose address changes (NAT rebinding, another network)
//! moves its session there ("float") once a data packet from the new address opens: the
//! owner swaps the session's transport, which the other workers read at each packet.
//!
//! IKEv2 sessions send ESP like UDP ones (any worker seals with the session's outbound SA,
//! whose sequence counter is atomic). Their inbound SAs are found by SPI, by whichever
//! worker the client's ESP reaches.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, ArcSwapOption};

use super::steering::TunSteering;
use crate::proto::esp::{InboundSa, OutboundSa};
use crate::proto::openvpn::data::DataKey;

/// How a session's packets reach its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Over UDP, from the socket for listen address `listener` (any worker's), with
    /// source address `local` when that socket is bound to a wildcard address.
    Udp { listener: usize, peer: SocketAddr, local: Option<IpAddr> },
    /// Over a TCP connection owned by the session's worker.
    Tcp,
    /// SSTP: PPP in TLS over a TCP connection owned by the session's worker.
    Sstp,
    /// IKEv2: ESP in UDP (RFC 3948), as the session's [`EspOutbound`] says.
    Esp,
}

/// Data-channel keys of a session: the one to send with, and those accepted on
/// receive, by key id.
#[derive(Default)]
pub struct KeySet {
    pub send: Option<Arc<DataKey>>,
    pub recv: [Option<Arc<DataKey>>; 8],
}

/// How an IKEv2 session's packets leave: its current outbound ESP SA, from the NAT-T
/// socket for listen address `listener` (any worker's), to the client's address.
/// Replaced whole at a CHILD SA rekey or when the client's address changes.
pub struct EspOutbound {
    /// Shared with the route that replaces this one when the client moves.
    pub sa: Arc<OutboundSa>,
    pub inbound_spi: u32,
    pub listener: usize,
    pub peer: SocketAddr,
    /// Source address when the socket is bound to a wildcard address.
    pub local: Option<IpAddr>,
}

/// The receiving half of a CHILD SA. Its replay window needs exclusive access: the
/// SO_REUSEPORT steering brings an SA's packets to one worker (by its SPI), so the lock
/// is uncontended.
pub struct EspInbound {
    pub session: Arc<SessionShared>,
    pub sa: Mutex<InboundSa>,
}

/// Traffic counters, updated by whichever worker moves the packet.
#[derive(Default)]
pub struct SessionStats {
    pub rx_bytes: AtomicU64,
    pub rx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub tx_packets: AtomicU64,
    /// Coarse clock (data-plane seconds) of the last packet each way.
    pub last_rx: AtomicU64,
    pub last_tx: AtomicU64,
}

/// A snapshot of a session's counters ("received" is from the client).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
}

impl SessionStats {
    pub fn snapshot(&self) -> Traffic {
        Traffic {
            rx_bytes: self.rx_bytes.load(Ordering::Relaxed),
            rx_packets: self.rx_packets.load(Ordering::Relaxed),
            tx_bytes: self.tx_bytes.load(Ordering::Relaxed),
            tx_packets: self.tx_packets.load(Ordering::Relaxed),
        }
    }

    pub fn received(&self, bytes: usize, now_secs: u64) {
        self.rx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.rx_packets.fetch_add(1, Ordering::Relaxed);
        // Skip the store when unchanged: the cache line stays shared between workers.
        if self.last_rx.load(Ordering::Relaxed) != now_secs {
            self.last_rx.store(now_secs, Ordering::Relaxed);
        }
    }

    pub fn sent(&self, bytes: usize, now_secs: u64) {
        self.tx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.tx_packets.fetch_add(1, Ordering::Relaxed);
        if self.last_tx.load(Ordering::Relaxed) != now_secs {
            self.last_tx.store(now_secs, Ordering::Relaxed);
        }
    }
}

/// What every worker may know about an established session.
pub struct SessionShared {
    pub peer_id: u32,
    pub address: Ipv4Addr,
    pub owner: usize,
    /// Replaced (by the owner) when an OpenVPN client over UDP floats to a new address.
    pub transport: ArcSwap<Transport>,
    /// Whether the client takes P_DATA_V2 (with the peer-id) or P_DATA_V1.
    pub data_v2: bool,
    pub keys: ArcSwap<KeySet>,
    /// IKEv2 sessions: where ESP goes (none until the first CHILD SA).
    pub esp: ArcSwapOption<EspOutbound>,
    pub stats: SessionStats,
}

impl SessionShared {
    pub fn new(peer_id: u32, address: Ipv4Addr, owner: usize, transport: Transport, data_v2: bool) -> Self {
        SessionShared {
            peer_id,
            address,
            owner,
            transport: ArcSwap::from_pointee(transport),
            data_v2,
            keys: ArcSwap::from_pointee(KeySet::default()),
            esp: ArcSwapOption::empty(),
            stats: SessionStats::default(),
        }
    }
}

pub struct SessionTable {
    by_peer_id: Box<[ArcSwapOption<SessionShared>]>,
    by_address: papaya::HashMap<Ipv4Addr, Arc<SessionShared>>,
    by_inbound_spi: papaya::HashMap<u32, Arc<EspInbound>>,
    /// The TUN steering map, told the owner of each address as sessions come and go.
    steering: Option<TunSteering>,
    /// Addresses OpenVPN clients floated to (listen address index, client address), and
    /// the worker serving them: the kernel's hash may bring their control packets to
    /// another worker, which passes them on.
    floated: papaya::HashMap<(usize, SocketAddr), usize>,
}

impl SessionTable {
    /// A table for peer-ids `0..capacity`.
    pub fn new(capacity: usize) -> Self {
        SessionTable {
            by_peer_id: (0..capacity).map(|_| ArcSwapOption::empty()).collect(),
            by_address: papaya::HashMap::new(),
            by_inbound_spi: papaya::HashMap::new(),
            steering: None,
            floated: papaya::HashMap::new(),
        }
    }

    /// Keeps `steering`'s map in step with the sessions by address from now on.
    pub fn steer_with(&mut self, steering: TunSteering) {
        self.steering = Some(steering);
    }

    /// Whether the TUN device steers packets to the worker owning their session.
    pub fn steers(&self) -> bool {
        self.steering.is_some()
    }

    pub fn capacity(&self) -> usize {
        self.by_peer_id.len()
    }

    /// Publishes a session (replacing whatever held its address or peer-id).
    pub fn insert(&self, s: Arc<SessionShared>) {
        if let Some(slot) = self.by_peer_id.get(s.peer_id as usize) {
            slot.store(Some(s.clone()));
        }
        let address = s.address;
        self.by_address.pin().insert(address, s);
        self.resteer(address);
    }

    /// Removes `s`, but only the entries that still point at it: a reconnect may
    /// already have taken its address.
    pub fn remove(&self, s: &Arc<SessionShared>) {
        if let Some(slot) = self.by_peer_id.get(s.peer_id as usize) {
            let current = slot.load();
            if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, s)) {
                slot.compare_and_swap(&current, None);
            }
        }
        let map = self.by_address.pin();
        let _ = map.remove_if(&s.address, |_, v| Arc::ptr_eq(v, s));
        self.resteer(s.address);
    }

    /// Tells the steering map who owns `address` now, after a change.
    fn resteer(&self, address: Ipv4Addr) {
        if let Some(steering) = &self.steering {
            steering.follow(address, || self.by_address.pin().get(&address).map(|s| s.owner));
        }
    }

    pub fn by_peer_id(&self, peer_id: u32) -> Option<Arc<SessionShared>> {
        self.by_peer_id.get(peer_id as usize).and_then(|slot| slot.load_full())
    }

    /// A read guard on the sessions by tunnel address. Workers hold one across a batch
    /// of TUN packets and look each destination up with its `get`.
    pub fn address_guard(
        &self,
    ) -> papaya::HashMapRef<'_, Ipv4Addr, Arc<SessionShared>, std::hash::RandomState, papaya::LocalGuard<'_>> {
        self.by_address.pin()
    }

    /// Publishes an inbound ESP SA (SPIs are unique: the responders allocate them).
    pub fn insert_inbound_sa(&self, spi: u32, sa: Arc<EspInbound>) {
        self.by_inbound_spi.pin().insert(spi, sa);
    }

    pub fn remove_inbound_sa(&self, spi: u32) {
        self.by_inbound_spi.pin().remove(&spi);
    }

    pub fn inbound_sa(&self, spi: u32) -> Option<Arc<EspInbound>> {
        self.by_inbound_spi.pin().get(&spi).cloned()
    }

    /// The worker a client floated to `peer` on listen address `listener` is served by.
    pub fn floated_to(&self, listener: usize, peer: SocketAddr) -> Option<usize> {
        self.floated.pin().get(&(listener, peer)).copied()
    }

    pub fn note_float(&self, listener: usize, peer: SocketAddr, worker: usize) {
        self.floated.pin().insert((listener, peer), worker);
    }

    /// Forgets a floated address, if `worker` is the one serving it.
    pub fn forget_float(&self, listener: usize, peer: SocketAddr, worker: usize) {
        let _ = self.floated.pin().remove_if(&(listener, peer), |_, w| *w == worker);
    }

    pub fn len(&self) -> usize {
        self.by_address.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(peer_id: u32, last: u8) -> Arc<SessionShared> {
        Arc::new(SessionShared::new(
            peer_id,
            Ipv4Addr::new(172, 16, 201, last),
            0,
            Transport::Udp { listener: 0, peer: "192.0.2.1:1".parse().unwrap(), local: None },
            true,
        ))
    }

    #[test]
    fn insert_lookup_remove() {
        let t = SessionTable::new(16);
        let a = session(3, 2);
        t.insert(a.clone());
        assert!(Arc::ptr_eq(&t.by_peer_id(3).unwrap(), &a));
        assert!(Arc::ptr_eq(t.address_guard().get(&Ipv4Addr::new(172, 16, 201, 2)).unwrap(), &a));
        t.remove(&a);
        assert!(t.by_peer_id(3).is_none());
        assert!(t.is_empty());
        assert!(t.by_peer_id(99).is_none(), "out-of-range peer-ids are simply unknown");
    }

    #[test]
    fn the_steering_map_follows_inserts_replacements_and_removals() {
        let Some(steering) = TunSteering::load_in_test(16) else { return };
        let mut t = SessionTable::new(16);
        t.steer_with(steering);
        let address = Ipv4Addr::new(172, 16, 201, 2);
        let on_worker =
            |owner: usize, peer_id: u32| Arc::new(SessionShared::new(peer_id, address, owner, Transport::Tcp, false));
        let steered_to = |t: &SessionTable| t.steering.as_ref().unwrap().lookup(address);
        let first = on_worker(1, 3);
        t.insert(first.clone());
        assert_eq!(steered_to(&t), Some(1));
        // The client reconnects and lands on the other worker: its address moves.
        let second = on_worker(0, 4);
        t.insert(second.clone());
        assert_eq!(steered_to(&t), Some(0));
        // The first session's teardown comes after and must not take the entry away.
        t.remove(&first);
        assert_eq!(steered_to(&t), Some(0));
        t.remove(&second);
        assert_eq!(steered_to(&t), None);
    }

    #[test]
    fn removing_a_replaced_session_keeps_its_successor() {
        let t = SessionTable::new(16);
        let old = session(3, 2);
        t.insert(old.clone());
        let new = session(4, 2); // same address, handed over on reconnect
        t.insert(new.clone());
        t.remove(&old);
        assert!(Arc::ptr_eq(t.address_guard().get(&Ipv4Addr::new(172, 16, 201, 2)).unwrap(), &new));
        assert!(t.by_peer_id(3).is_none());
        assert!(Arc::ptr_eq(&t.by_peer_id(4).unwrap(), &new));
    }

    #[test]
    fn a_floated_address_names_its_worker_until_that_worker_forgets_it() {
        let t = SessionTable::new(4);
        let roamed: SocketAddr = "198.51.100.7:5000".parse().unwrap();
        t.note_float(0, roamed, 1);
        assert_eq!(t.floated_to(0, roamed), Some(1));
        assert_eq!(t.floated_to(1, roamed), None, "per listen address");
        t.forget_float(0, roamed, 0);
        assert_eq!(t.floated_to(0, roamed), Some(1), "only the worker serving it forgets it");
        t.forget_float(0, roamed, 1);
        assert_eq!(t.floated_to(0, roamed), None);
    }
}
