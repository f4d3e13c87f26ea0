//! A client's session follows it to a new address only on a data packet that opens with
//! its keys and passes its replay window; datagrams for another worker's session go to
//! that worker. Real workers (rings, loopback sockets) with hand-made sessions, driven
//! through their receive path without running their loops.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use super::{Link, Worker};
use crate::crypto::AeadAlgorithm;
use crate::dataplane::counters::{DropReason, WorkerCounters};
use crate::dataplane::table::{KeySet, SessionShared, SessionTable, Transport};
use crate::dataplane::{ControlEvent, HandOff, Inbox, Settings, Shared, UdpRole, WorkerIo, sys};
use crate::proto::openvpn::data::{DataKey, HEADROOM, PING_MAGIC};
use crate::proto::openvpn::keys::{Key2, Role};
use crate::proto::openvpn::reliable::Timing;
use crate::proto::openvpn::session::{ServerSession, ServerSettings};
use crate::proto::openvpn::wrap::Wrap;

const HOME: &str = "192.0.2.10:40000";
const ROAMED: &str = "198.51.100.7:51234";

fn server_settings() -> Arc<ServerSettings> {
    let cert = rcgen::generate_simple_self_signed(vec!["vpn.test".into()]).expect("certificate");
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der());
    let tls = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key.into())
        .expect("server config");
    Arc::new(ServerSettings {
        tls: Arc::new(tls),
        data_ciphers: vec![AeadAlgorithm::Aes256Gcm],
        reneg_interval: None,
        handshake_window: Duration::from_secs(60),
        reliable: Timing::default(),
    })
}

/// `workers` workers on one loopback OpenVPN listener, and the control plane's end.
fn workers(n: usize) -> (Vec<Worker>, UnboundedReceiver<ControlEvent>) {
    let (to_control, events) = unbounded_channel();
    let shared = Arc::new(Shared {
        table: SessionTable::new(64),
        settings: ArcSwap::from_pointee(Settings {
            openvpn: server_settings(),
            ping_interval: Duration::from_secs(10),
            ping_timeout: Duration::from_secs(60),
            sstp: None,
        }),
        tls_crypt: None,
        inboxes: (0..n).map(|_| Arc::new(Inbox::new().expect("inbox"))).collect(),
        counters: (0..n).map(|_| WorkerCounters::default()).collect(),
        to_control,
        epoch: Instant::now(),
    });
    let workers = (0..n)
        .map(|index| {
            let io = WorkerIo {
                udp: vec![sys::udp_socket(&"127.0.0.1:0".parse().unwrap()).expect("socket")],
                udp_roles: vec![UdpRole::OpenVpn],
                tcp: Vec::new(),
                // Nothing is written to it: the rings are never submitted.
                tun: sys::eventfd().expect("eventfd"),
                tun_offload: None,
                udp_gso: false,
                ike: None,
            };
            Worker::new(index, shared.clone(), io).expect("worker")
        })
        .collect();
    (workers, events)
}

fn udp_from(peer: &str) -> Link {
    Link::Udp { listener: 0, peer: peer.parse().unwrap(), local: None }
}

/// The data keys of a session: the gateway's and its client's.
fn keys() -> (Arc<DataKey>, DataKey) {
    let key2 = Key2::from_ekm(std::array::from_fn(|i| (i * 7) as u8));
    let alg = AeadAlgorithm::Aes256Gcm;
    let server = DataKey::new(0, &key2.direction_keys(alg, Role::Server)).expect("server key");
    let client = DataKey::new(0, &key2.direction_keys(alg, Role::Client)).expect("client key");
    (Arc::new(server), client)
}

/// An established OpenVPN session over UDP of worker `w` with `peer_id`, its client at
/// `HOME`; returns its slot, what other workers see of it, and the client's key.
fn established(w: &mut Worker, peer_id: u32) -> (u32, Arc<SessionShared>, DataKey) {
    let home: SocketAddr = HOME.parse().unwrap();
    let settings = w.shared.settings.load().openvpn.clone();
    let proto = ServerSession::new(settings, [1; 8], [2; 8], Wrap::Plain, Instant::now()).expect("session");
    let slot = w.new_session(Link::Udp { listener: 0, peer: home, local: None }, home, Box::new(proto));
    let (server_key, client_key) = keys();
    let transport = Transport::Udp { listener: 0, peer: home, local: None };
    let shared = Arc::new(SessionShared::new(peer_id, tunnel_address(peer_id), w.index, transport, true));
    let mut keys = KeySet { send: Some(server_key.clone()), ..KeySet::default() };
    keys.recv[0] = Some(server_key);
    shared.keys.store(Arc::new(keys));
    w.shared.table.insert(shared.clone());
    w.local_mut(slot).expect("the new session").shared = Some(shared.clone());
    w.by_peer.insert(peer_id, slot);
    (slot, shared, client_key)
}

fn tunnel_address(peer_id: u32) -> Ipv4Addr {
    Ipv4Addr::new(172, 16, 201, 2 + peer_id as u8)
}

/// A keepalive ping from the client, sealed with its key: a data packet with peer-id.
fn ping(client: &DataKey, peer_id: u32) -> Vec<u8> {
    let mut buf = vec![0u8; HEADROOM + PING_MAGIC.len() + 64];
    buf[HEADROOM..HEADROOM + PING_MAGIC.len()].copy_from_slice(&PING_MAGIC);
    let len = client.seal_v2(peer_id, &mut buf, PING_MAGIC.len()).expect("seal");
    buf.truncate(len);
    buf
}

/// Feeds `packet` to worker `w` as if its socket had received it from `from`.
fn receive(w: &mut Worker, from: Link, packet: &[u8]) {
    let b = w.bufs.alloc().expect("a buffer");
    w.bufs.get_mut(b)[..packet.len()].copy_from_slice(packet);
    w.on_udp(Instant::now(), from, b, packet.len());
}

fn counter(w: &Worker, field: fn(&WorkerCounters) -> &std::sync::atomic::AtomicU64) -> u64 {
    field(w.counters()).load(Ordering::Relaxed)
}

/// Where the session's client is, as the worker's maps, the session's link and the
/// shared transport say (all must agree).
fn client_address(w: &Worker, slot: u32, shared: &SessionShared) -> SocketAddr {
    let local = w.local(slot).expect("the session");
    let Link::Udp { peer, .. } = local.link else { panic!("a UDP session") };
    assert_eq!(local.peer, peer);
    assert_eq!(w.by_addr.get(&(0, peer)), Some(&slot));
    assert_eq!(w.by_addr.len(), 1, "one address per session");
    let Transport::Udp { peer: sealed_to, .. } = **shared.transport.load() else { panic!("a UDP transport") };
    assert_eq!(sealed_to, peer, "other workers seal towards the same address");
    peer
}

#[test]
fn an_authentic_packet_from_a_new_address_moves_the_session() {
    let (mut ws, mut events) = workers(1);
    let w = &mut ws[0];
    let (slot, shared, client) = established(w, 4);
    receive(w, udp_from(HOME), &ping(&client, 4));
    assert_eq!(shared.stats.rx_packets.load(Ordering::Relaxed), 1);

    receive(w, udp_from(ROAMED), &ping(&client, 4));
    assert_eq!(client_address(w, slot, &shared), ROAMED.parse().unwrap());
    assert_eq!(shared.stats.rx_packets.load(Ordering::Relaxed), 2, "the packet itself is delivered");
    assert_eq!(counter(w, |c| &c.openvpn_floats), 1);
    assert_eq!(w.shared.table.floated_to(0, ROAMED.parse().unwrap()), Some(0));
    match events.try_recv() {
        Ok(ControlEvent::ClientMoved { handle, peer_id: 4, peer }) => {
            assert_eq!((handle.worker, handle.slot, peer), (0, slot, ROAMED.parse().unwrap()));
        }
        other => panic!("the control plane learns the new address: {other:?}"),
    }
    // From the new address on, plain traffic.
    receive(w, udp_from(ROAMED), &ping(&client, 4));
    assert_eq!(counter(w, |c| &c.openvpn_floats), 1);
    assert_eq!(shared.stats.rx_packets.load(Ordering::Relaxed), 3);
}

#[test]
fn a_forged_or_replayed_packet_moves_nothing() {
    let (mut ws, mut events) = workers(1);
    let w = &mut ws[0];
    let (slot, shared, client) = established(w, 5);
    let home: SocketAddr = HOME.parse().unwrap();

    // Forged: the right peer-id, a broken tag.
    let mut forged = ping(&client, 5);
    forged[10] ^= 1;
    receive(w, udp_from(ROAMED), &forged);
    assert_eq!(w.counters().drops(DropReason::Decrypt), 1);

    // Replayed: a packet the client sent from home, repeated from elsewhere.
    let seen = ping(&client, 5);
    receive(w, udp_from(HOME), &seen);
    receive(w, udp_from(ROAMED), &seen);
    assert_eq!(w.counters().drops(DropReason::Replay), 1);

    // Garbage with the session's peer-id.
    let mut junk = vec![0x48, 0, 0, 5];
    junk.extend_from_slice(&[0xaa; 40]);
    receive(w, udp_from(ROAMED), &junk);
    assert_eq!(w.counters().drops(DropReason::Decrypt), 2);

    assert_eq!(client_address(w, slot, &shared), home, "the session stays");
    assert_eq!(counter(w, |c| &c.openvpn_floats), 0);
    assert_eq!(w.shared.table.floated_to(0, ROAMED.parse().unwrap()), None);
    assert!(events.try_recv().is_err(), "nothing to tell the control plane");
    assert_eq!(shared.stats.rx_packets.load(Ordering::Relaxed), 1);
}

#[test]
fn tcp_sessions_and_unknown_peer_ids_never_float() {
    let (mut ws, _events) = workers(1);
    let w = &mut ws[0];
    let tcp = Arc::new(SessionShared::new(6, tunnel_address(6), 0, Transport::Tcp, true));
    let (server_key, client) = keys();
    tcp.keys.store(Arc::new(KeySet { send: Some(server_key), ..KeySet::default() }));
    w.shared.table.insert(tcp.clone());
    receive(w, udp_from(ROAMED), &ping(&client, 6));
    receive(w, udp_from(ROAMED), &ping(&client, 9));
    assert_eq!(w.counters().drops(DropReason::UnknownSession), 2);
    assert!(matches!(**tcp.transport.load(), Transport::Tcp));
    assert!(w.by_addr.is_empty());
    assert_eq!(counter(w, |c| &c.openvpn_floats), 0);
}

#[test]
fn data_for_another_workers_session_is_handed_to_it_and_floats_there() {
    let (mut ws, _events) = workers(2);
    let (slot, shared, client) = established(&mut ws[1], 7);

    // Worker 0 received it (the steering was not in place): it goes to worker 1.
    receive(&mut ws[0], udp_from(ROAMED), &ping(&client, 7));
    assert_eq!(counter(&ws[0], |c| &c.datagram_handoffs), 1);
    assert_eq!(ws[1].inbox.packets.len(), 1);
    ws[1].drain_inbox(Instant::now());
    assert_eq!(client_address(&ws[1], slot, &shared), ROAMED.parse().unwrap());
    assert_eq!(counter(&ws[1], |c| &c.openvpn_floats), 1);

    // Its control packets from the new address, which the kernel's hash may bring to
    // worker 0, follow it there.
    receive(&mut ws[0], udp_from(ROAMED), &[0x20; 40]);
    assert_eq!(counter(&ws[0], |c| &c.datagram_handoffs), 2);
    ws[1].drain_inbox(Instant::now());
    assert_eq!(ws[1].counters().drops(DropReason::ControlRefused), 1, "the session saw it (and refused junk)");

    // A handed datagram is not handed on again (its session is another worker's by now).
    let (_, _, other) = established(&mut ws[0], 8);
    let elsewhere = "203.0.113.5:4000".parse().unwrap();
    let handed = ws[1].inbox.hand_off_datagram(0, elsewhere, None, &ping(&other, 8));
    assert!(matches!(handed, HandOff::Queued { .. }));
    ws[1].drain_inbox(Instant::now());
    assert_eq!(ws[1].counters().drops(DropReason::UnknownSession), 1);
    assert_eq!(counter(&ws[1], |c| &c.datagram_handoffs), 0);
    assert!(ws[0].inbox.packets.is_empty());
}
