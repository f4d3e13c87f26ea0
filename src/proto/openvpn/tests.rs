//! Whole sessions in memory: the client core against the acceptor and server core,
//! over a simulated network that can drop, duplicate and reorder packets, on
//! virtual time.

use std::cell::Cell;
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;

use super::acceptor::{Accepted, Acceptor};
use super::client::{ClientEvent, ClientSession, ClientSettings};
use super::data::DataKey;
use super::keys::Role;
use super::push::PushConfig;
use super::reliable::Timing;
use super::session::{AuthDecision, AuthGrant, CloseReason, Event, ServerSession, ServerSettings, SessionError};
use super::static_key::StaticKey;
use super::tls_crypt::TlsCrypt;
use super::wrap::{Wrap, open_stateless};
use crate::crypto::AeadAlgorithm;
use crate::testing::XorShift;

struct TestCa {
    cert: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let cert = p.self_signed(&key).unwrap().der().clone();
        TestCa { cert, issuer: Issuer::new(p, key) }
    }

    fn leaf(&self, cn: &str, server: bool) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec![cn.to_string()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages =
            vec![if server { ExtendedKeyUsagePurpose::ServerAuth } else { ExtendedKeyUsagePurpose::ClientAuth }];
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        (vec![cert.der().clone()], PrivatePkcs8KeyDer::from(key.serialize_der()).into())
    }
}

fn roots(ca: &TestCa) -> Arc<RootCertStore> {
    let mut r = RootCertStore::empty();
    r.add(ca.cert.clone()).unwrap();
    Arc::new(r)
}

struct Setup {
    server_settings: Arc<ServerSettings>,
    client_settings: Arc<ClientSettings>,
    static_key: StaticKey,
    tls_crypt: bool,
}

const PEER_INFO_26: &str = "IV_VER=2.6.14\nIV_PLAT=linux\nIV_TCPNL=1\nIV_MTU=1600\nIV_NCP=2\n\
    IV_CIPHERS=AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305\nIV_PROTO=990\n";

fn setup(client_ca: &TestCa, server_ca: &TestCa, peer_info: &str, tls13: bool) -> Setup {
    let (server_chain, server_key) = server_ca.leaf("vpn.test", true);
    let verifier = WebPkiClientVerifier::builder(roots(server_ca)).build().unwrap();
    let tls = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(server_chain, server_key)
        .unwrap();
    let (client_chain, client_key) = client_ca.leaf("alice", false);
    let versions: &[&rustls::SupportedProtocolVersion] =
        if tls13 { &[&rustls::version::TLS13] } else { &[&rustls::version::TLS12] };
    let client_tls = rustls::ClientConfig::builder_with_protocol_versions(versions)
        .with_root_certificates(roots(server_ca))
        .with_client_auth_cert(client_chain, client_key)
        .unwrap();
    let timing = Timing { initial_timeout: Duration::from_millis(500), max_timeout: Duration::from_secs(2) };
    Setup {
        server_settings: Arc::new(ServerSettings {
            tls: Arc::new(tls),
            data_ciphers: vec![AeadAlgorithm::ChaCha20Poly1305, AeadAlgorithm::Aes256Gcm],
            reneg_interval: None,
            handshake_window: Duration::from_secs(60),
            reliable: timing,
        }),
        client_settings: Arc::new(ClientSettings {
            tls: Arc::new(client_tls),
            server_name: ServerName::try_from("vpn.test").unwrap(),
            username: String::new(),
            password: String::new(),
            peer_info: peer_info.to_string(),
            options: "V4,dev-type tun,link-mtu 1559,tun-mtu 1500,proto UDPv4,cipher AES-256-GCM,auth [null-digest],keysize 256,key-method 2,tls-client".into(),
            reliable: timing,
        }),
        static_key: StaticKey::generate(),
        tls_crypt: true,
    }
}

fn push_config() -> PushConfig {
    PushConfig {
        address: Ipv4Addr::new(172, 16, 201, 2),
        netmask: Ipv4Addr::new(255, 255, 255, 0),
        route_gateway: Ipv4Addr::new(172, 16, 201, 1),
        routes: vec!["10.50.0.0/24".parse().unwrap()],
        redirect_gateway: false,
        dns_servers: vec![],
        dns_search: vec![],
        ping_secs: 10,
        ping_restart_secs: 60,
        tun_mtu: 1500,
    }
}

/// A deterministic lossy network.
struct Net {
    rng: XorShift,
    loss_pct: u64,
    dup_pct: u64,
}

impl Net {
    fn new(seed: u64, loss_pct: u64, dup_pct: u64) -> Net {
        Net { rng: XorShift(seed), loss_pct, dup_pct }
    }

    fn rand(&mut self) -> u64 {
        self.rng.below(100)
    }

    /// What arrives of one sent packet: zero, one or two copies.
    fn carry(&mut self, p: Vec<u8>, queue: &mut Vec<Vec<u8>>) {
        if self.rand() >= self.loss_pct {
            if self.rand() < self.dup_pct {
                queue.push(p.clone());
            }
            // Reorder: insert at a random position.
            let pos = if queue.is_empty() { 0 } else { (self.rand() as usize) % (queue.len() + 1) };
            queue.insert(pos, p);
        }
    }
}

/// The server's view, as the data plane keeps it.
#[derive(Default)]
struct ServerSide {
    session: Option<Box<ServerSession>>,
    keys: Vec<(u8, Arc<DataKey>)>,
    active: Option<u8>,
    authenticated: Option<super::session::AuthRequest>,
    closed: Option<CloseReason>,
    decision: Option<AuthDecision>,
}

struct Run {
    setup: Setup,
    acceptor: Acceptor,
    client: ClientSession,
    server: ServerSide,
    net: Net,
    now: Instant,
    to_server: Vec<Vec<u8>>,
    to_client: Vec<Vec<u8>>,
    client_events: Vec<ClientEvent>,
    /// Decides to lose a packet from the client on top of the network's own losses.
    lose_from_client: LossFilter,
}

/// Says whether to lose one packet.
type LossFilter = Box<dyn FnMut(&[u8]) -> bool>;

const PEER: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)), 40000);
const UNIX: u64 = 1_800_000_000;

impl Run {
    fn new(setup: Setup, net: Net) -> Run {
        let now = Instant::now();
        let (server_wrap, client_wrap) = if setup.tls_crypt {
            (
                Some(Arc::new(TlsCrypt::new(&setup.static_key, Role::Server))),
                Wrap::tls_crypt(Arc::new(TlsCrypt::new(&setup.static_key, Role::Client)), 1, UNIX as u32),
            )
        } else {
            (None, Wrap::Plain)
        };
        let client = ClientSession::new(setup.client_settings.clone(), client_wrap, now).unwrap();
        Run {
            acceptor: Acceptor::new(server_wrap),
            setup,
            client,
            server: ServerSide {
                decision: Some(AuthDecision::Accept(AuthGrant { push: push_config(), peer_id: 5 })),
                ..Default::default()
            },
            net,
            now,
            to_server: Vec::new(),
            to_client: Vec::new(),
            client_events: Vec::new(),
            lose_from_client: Box::new(|_| false),
        }
    }

    fn unix(&self, start: Instant) -> u64 {
        UNIX + self.now.duration_since(start).as_secs()
    }

    /// Runs until `done` or virtual `limit`; returns whether `done` became true.
    fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Run) -> bool) -> bool {
        let start = self.now;
        let step = Duration::from_millis(20);
        while self.now.duration_since(start) < limit {
            while let Some(p) = self.client.poll_transmit(self.now) {
                if !(self.lose_from_client)(&p) {
                    self.net.carry(p, &mut self.to_server);
                }
            }
            for p in std::mem::take(&mut self.to_server) {
                self.server_receive(&p, start);
            }
            if let Some(s) = self.server.session.as_mut() {
                s.handle_timeout(self.now);
                while let Some(p) = s.poll_transmit(self.now) {
                    self.net.carry(p, &mut self.to_client);
                }
            }
            self.drain_server_events();
            for p in std::mem::take(&mut self.to_client) {
                let _ = self.client.handle_packet(self.now, &p);
            }
            while let Some(e) = self.client.poll_event() {
                self.client_events.push(e);
            }
            if done(self) {
                return true;
            }
            self.now += step;
        }
        false
    }

    fn server_receive(&mut self, p: &[u8], start: Instant) {
        let unix = self.unix(start);
        match self.server.session.as_mut() {
            Some(s) => {
                let _ = s.handle_packet(self.now, p);
            }
            None => match self.acceptor.handle(self.now, unix, PEER, p, &self.setup.server_settings) {
                Ok(Accepted::Reply(r)) => self.net.carry(r, &mut self.to_client),
                Ok(Accepted::Session(s)) => self.server.session = Some(s),
                Err(_) => {}
            },
        }
        self.drain_server_events();
    }

    fn drain_server_events(&mut self) {
        let Some(s) = self.server.session.as_mut() else { return };
        while let Some(e) = s.poll_event() {
            match e {
                Event::Authenticate(req) => {
                    self.server.authenticated = Some(req);
                    if let Some(d) = self.server.decision.clone() {
                        s.auth_decision(self.now, d);
                    }
                }
                Event::InstallKeys(k) => self.server.keys.push((k.key_id, k.key)),
                Event::ActivateKey(id) => self.server.active = Some(id),
                Event::RetireKey(id) => self.server.keys.retain(|(k, _)| *k != id),
                Event::Closed(r) => self.server.closed = Some(r),
            }
        }
    }

    fn connected(&self) -> Option<(&super::client::Pushed, &Arc<DataKey>)> {
        self.client_events.iter().find_map(|e| match e {
            ClientEvent::Connected { pushed, key } => Some((pushed, key)),
            _ => None,
        })
    }
}

/// Data sealed with one side's keys opens with the other's.
fn assert_keys_pair(c: &DataKey, s: &DataKey, cipher: AeadAlgorithm, key_id: u8) {
    assert_eq!((c.key_id(), s.key_id()), (key_id, key_id));
    assert_eq!((c.algorithm(), s.algorithm()), (cipher, cipher));
    for (from, to) in [(c, s), (s, c)] {
        let mut buf = vec![0u8; super::data::HEADROOM + 100];
        buf[super::data::HEADROOM..].copy_from_slice(&[0x45; 100]);
        let n = from.seal_v2(7, &mut buf, 100).unwrap();
        let (_, range) = to.open(&mut buf[..n]).unwrap();
        assert_eq!(&buf[range], &[0x45; 100][..]);
    }
}

fn handshake(setup: Setup, net: Net) -> Run {
    let mut run = Run::new(setup, net);
    let ok = run.run_until(Duration::from_secs(60), |r| r.connected().is_some() && r.server.active.is_some());
    assert!(ok, "no connection: server closed = {:?}, client events = {:?}", run.server.closed, run.client_events);
    run
}

fn check_connected(run: &Run, expect_cipher: AeadAlgorithm) {
    let (pushed, client_keys) = run.connected().unwrap();
    assert_eq!(pushed.address, Some(Ipv4Addr::new(172, 16, 201, 2)));
    assert_eq!(pushed.cipher, Some(expect_cipher));
    let (_, server_keys) = run.server.keys.iter().find(|(k, _)| *k == 0).unwrap();
    assert_keys_pair(client_keys, server_keys, expect_cipher, 0);
    let req = run.server.authenticated.as_ref().unwrap();
    assert!(req.client_cert.is_some(), "the verified client certificate reaches the auth decision");
    assert_eq!(req.peer_info.iv_proto & 990, req.peer_info.iv_proto);
}

#[test]
fn handshake_tls13_tls_crypt_ekm() {
    let ca = TestCa::new("ca");
    let run = handshake(setup(&ca, &ca, PEER_INFO_26, true), Net::new(1, 0, 0));
    check_connected(&run, AeadAlgorithm::ChaCha20Poly1305);
    let (pushed, _) = run.connected().unwrap();
    assert!(pushed.ekm, "2.6 clients get tls-ekm");
    assert_eq!(pushed.peer_id, Some(5));
    assert!(pushed.options.iter().any(|o| o == "route 10.50.0.0 255.255.255.0"));
}

#[test]
fn handshake_tls12_without_tls_crypt_and_legacy_prf() {
    let ca = TestCa::new("ca");
    let mut s = setup(&ca, &ca, "IV_VER=2.4.0\nIV_NCP=2\nIV_PROTO=2\n", false);
    s.tls_crypt = false;
    let mut run = Run::new(s, Net::new(2, 0, 0));
    let most_acks = Rc::new(Cell::new(0));
    let most_acks_seen = most_acks.clone();
    run.lose_from_client = Box::new(move |p| {
        let mut scratch = Vec::new();
        let (_, body) = open_stateless(None, p, &mut scratch).expect("the client's packets parse");
        most_acks_seen.set(most_acks_seen.get().max(body.acks.as_slice().len()));
        false
    });
    assert!(run.run_until(Duration::from_secs(60), |r| r.connected().is_some() && r.server.active.is_some()));
    check_connected(&run, AeadAlgorithm::Aes256Gcm);
    assert!(!run.connected().unwrap().0.ekm, "no tls-ekm for a client that did not offer it");
    // The client's last ACKs (of the PUSH_REPLY) would hold more than 4 ids.
    run.run_until(Duration::from_secs(1), |_| false);
    assert_eq!(most_acks.get(), 4, "without tls-crypt and tls-ekm the client sends at most 4 ACKs a packet");
}

#[test]
fn handshake_survives_loss_duplication_and_reordering() {
    let ca = TestCa::new("ca");
    for seed in [3, 4, 5] {
        let run = handshake(setup(&ca, &ca, PEER_INFO_26, true), Net::new(seed, 25, 15));
        check_connected(&run, AeadAlgorithm::ChaCha20Poly1305);
    }
}

#[test]
fn rejection_reaches_the_client() {
    let ca = TestCa::new("ca");
    let mut run = Run::new(setup(&ca, &ca, PEER_INFO_26, true), Net::new(6, 0, 0));
    run.server.decision = Some(AuthDecision::Reject { reason: "certificate revoked".into() });
    let done = run.run_until(Duration::from_secs(10), |r| r.server.closed.is_some());
    assert!(done);
    assert!(run.client_events.iter().any(|e| matches!(e, ClientEvent::AuthFailed(r) if r == "certificate revoked")));
    assert_eq!(run.server.closed, Some(CloseReason::AuthFailed("certificate revoked".into())));
    assert!(run.server.keys.is_empty(), "no data keys for a refused client");
}

#[test]
fn unknown_ca_is_refused_in_tls() {
    let good = TestCa::new("ca");
    let other = TestCa::new("other");
    let mut run = Run::new(setup(&other, &good, PEER_INFO_26, true), Net::new(7, 0, 0));
    run.run_until(Duration::from_secs(10), |r| r.server.closed.is_some());
    assert!(matches!(run.server.closed, Some(CloseReason::Tls(_))), "{:?}", run.server.closed);
    assert!(run.server.authenticated.is_none());
}

#[test]
fn no_shared_cipher_is_refused_with_a_reason() {
    let ca = TestCa::new("ca");
    let mut run = Run::new(setup(&ca, &ca, "IV_CIPHERS=AES-128-GCM\nIV_PROTO=990\n", true), Net::new(8, 0, 0));
    run.run_until(Duration::from_secs(10), |r| r.server.closed.is_some());
    assert!(
        run.client_events
            .iter()
            .any(|e| matches!(e, ClientEvent::AuthFailed(r) if r.contains("no shared data cipher"))),
        "{:?}",
        run.client_events
    );
}

#[test]
fn server_renegotiation_rotates_keys() {
    let ca = TestCa::new("ca");
    let mut s = setup(&ca, &ca, PEER_INFO_26, true);
    Arc::get_mut(&mut s.server_settings).unwrap().reneg_interval = Some(Duration::from_secs(10));
    let mut run = handshake(s, Net::new(9, 10, 5));
    for round in 1..=8u8 {
        let want = if round <= 7 { round } else { 1 };
        let ok = run.run_until(Duration::from_secs(40), |r| {
            r.server.active == Some(want)
                && r.client_events.iter().any(|e| matches!(e, ClientEvent::Rekeyed { key } if key.key_id() == want))
        });
        assert!(ok, "round {round}: server closed {:?}", run.server.closed);
        let client_keys = run
            .client_events
            .iter()
            .rev()
            .find_map(|e| match e {
                ClientEvent::Rekeyed { key } if key.key_id() == want => Some(key),
                _ => None,
            })
            .unwrap();
        let (_, server_keys) = run.server.keys.iter().find(|(k, _)| *k == want).unwrap();
        assert_keys_pair(client_keys, server_keys, AeadAlgorithm::ChaCha20Poly1305, want);
        assert!(run.server.keys.len() <= 2, "at most the active key and one lame duck");
        run.client_events.retain(|e| !matches!(e, ClientEvent::Rekeyed { .. }));
    }
    assert!(run.server.closed.is_none());
}

#[test]
fn client_exit_closes_the_session() {
    let ca = TestCa::new("ca");
    let mut run = handshake(setup(&ca, &ca, PEER_INFO_26, true), Net::new(10, 0, 0));
    run.client.send_message("EXIT");
    assert!(run.run_until(Duration::from_secs(5), |r| r.server.closed.is_some()));
    assert_eq!(run.server.closed, Some(CloseReason::ClientExit));
}

#[test]
fn acceptor_drops_forged_and_unauthenticated_packets() {
    let ca = TestCa::new("ca");
    let s = setup(&ca, &ca, PEER_INFO_26, true);
    let acceptor = Acceptor::new(Some(Arc::new(TlsCrypt::new(&s.static_key, Role::Server))));
    let now = Instant::now();
    // A reset wrapped with another key fails tls-crypt authentication.
    let other_key = StaticKey::generate();
    let mut forged = ClientSession::new(
        s.client_settings.clone(),
        Wrap::tls_crypt(Arc::new(TlsCrypt::new(&other_key, Role::Client)), 1, UNIX as u32),
        now,
    )
    .unwrap();
    let reset = forged.poll_transmit(now).unwrap();
    assert!(acceptor.handle(now, UNIX, PEER, &reset, &s.server_settings).is_err());
    // A genuine reset gets a stateless reply, but echoing a wrong cookie makes no session.
    let mut client = ClientSession::new(
        s.client_settings.clone(),
        Wrap::tls_crypt(Arc::new(TlsCrypt::new(&s.static_key, Role::Client)), 1, UNIX as u32),
        now,
    )
    .unwrap();
    let reset = client.poll_transmit(now).unwrap();
    let Ok(Accepted::Reply(reply)) = acceptor.handle(now, UNIX, PEER, &reset, &s.server_settings) else {
        panic!("a reset gets a reply")
    };
    client.handle_packet(now, &reply).unwrap();
    let next = client.poll_transmit(now).unwrap();
    let elsewhere: SocketAddr = "192.0.2.8:40000".parse().unwrap();
    assert!(
        acceptor.handle(now, UNIX, elsewhere, &next, &s.server_settings).is_err(),
        "the cookie is bound to the client's address"
    );
    assert!(acceptor.handle(now, UNIX + 3600, PEER, &next, &s.server_settings).is_err(), "an old cookie is refused");
    assert!(matches!(acceptor.handle(now, UNIX, PEER, &next, &s.server_settings), Ok(Accepted::Session(_))));
    // Garbage never panics.
    for len in 0..80 {
        let junk: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
        let _ = acceptor.handle(now, UNIX, PEER, &junk, &s.server_settings);
    }
}

#[test]
fn another_clients_packets_neither_reach_nor_disturb_a_session() {
    let ca = TestCa::new("ca");
    let mut run = handshake(setup(&ca, &ca, PEER_INFO_26, true), Net::new(11, 0, 0));
    // A second client instance from the same address, same second: its replay ids
    // restart at 1 under the same time as the first client's.
    let settings = run.setup.client_settings.clone();
    let key = Arc::new(TlsCrypt::new(&run.setup.static_key, Role::Client));
    let mut newcomer = ClientSession::new(settings, Wrap::tls_crypt(key, 1, UNIX as u32), run.now).unwrap();
    let reset = newcomer.poll_transmit(run.now).unwrap();
    let session = run.server.session.as_mut().unwrap();
    assert_eq!(session.handle_packet(run.now, &reset), Err(SessionError::WrongSession));
    // The first client's session still accepts its own next packets.
    run.client.send_message("EXIT");
    assert!(run.run_until(Duration::from_secs(5), |r| r.server.closed.is_some()));
    assert_eq!(run.server.closed, Some(CloseReason::ClientExit));
}

#[test]
fn a_renegotiation_refused_by_the_auth_decision_ends_the_session() {
    let ca = TestCa::new("ca");
    let mut s = setup(&ca, &ca, PEER_INFO_26, true);
    Arc::get_mut(&mut s.server_settings).unwrap().reneg_interval = Some(Duration::from_secs(10));
    let mut run = handshake(s, Net::new(12, 0, 0));
    let first = run.server.authenticated.take().expect("first decision asked");
    assert!(!first.renegotiation);
    run.server.decision = Some(AuthDecision::Reject { reason: "token expired 3 minutes ago".into() });
    assert!(run.run_until(Duration::from_secs(30), |r| r.server.closed.is_some()));
    assert!(run.server.authenticated.as_ref().is_some_and(|r| r.renegotiation), "the renegotiation asked again");
    assert_eq!(run.server.closed, Some(CloseReason::AuthFailed("token expired 3 minutes ago".into())));
    assert!(
        run.client_events.iter().any(|e| matches!(e, ClientEvent::AuthFailed(r) if r == "token expired 3 minutes ago")),
        "{:?}",
        run.client_events
    );
}

/// The packet carrying the client's first ACK of the server's reset is lost. The
/// acceptor, like OpenVPN 2.6's, creates a session only from a packet whose ACK
/// record echoes the cookie of its stateless reset, so without repeated ACKs every
/// retransmission would be dropped and the handshake would stall for good.
#[test]
fn a_lost_ack_of_the_server_reset_is_repeated() {
    let ca = TestCa::new("ca");
    for tls_crypt in [true, false] {
        let mut s = setup(&ca, &ca, PEER_INFO_26, true);
        s.tls_crypt = tls_crypt;
        let server_key = tls_crypt.then(|| TlsCrypt::new(&s.static_key, Role::Server));
        let mut run = Run::new(s, Net::new(13, 0, 0));
        let lost = Rc::new(Cell::new(0));
        let lost_in_filter = lost.clone();
        run.lose_from_client = Box::new(move |p| {
            let mut scratch = Vec::new();
            let (_, body) = open_stateless(server_key.as_ref(), p, &mut scratch).expect("the client's packets open");
            let first_ack_of_reset = lost_in_filter.get() == 0 && body.acks.contains(0);
            if first_ack_of_reset {
                lost_in_filter.set(1);
            }
            first_ack_of_reset
        });
        let ok = run.run_until(Duration::from_secs(5), |r| r.connected().is_some() && r.server.active.is_some());
        assert_eq!(lost.get(), 1, "tls-crypt {tls_crypt}: the ACK was lost once");
        assert!(ok, "tls-crypt {tls_crypt}: no connection within 5 s: client events = {:?}", run.client_events);
        check_connected(&run, AeadAlgorithm::ChaCha20Poly1305);
    }
}
