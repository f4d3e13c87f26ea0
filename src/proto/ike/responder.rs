//! The IKEv2 responder state machine, sans-IO (like quinn-proto's `Endpoint`): one
//! [`Responder`] holds every IKE SA of one socket pair. The driver feeds it datagrams
//! ([`Responder::handle_datagram`]) and timeouts, and drains [`Transmit`]s and
//! [`Event`]s. Decisions that need the outside world (may this identity connect, which
//! address does it get) are asked with [`Event::AuthRequest`] and answered later with
//! [`Responder::authorize`]: the exchange is parked meanwhile, nothing blocks.
//!
//! Transport contract: `Transmit::message` and the bytes given to `handle_datagram` are
//! bare IKE messages. The driver strips the 4-byte non-ESP marker from IKE datagrams
//! received on the NAT-T port (4500) and prepends it when sending from that port; ESP
//! and NAT keepalives never reach this core.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;

use super::auth::{self, AuthError, SigningKey};
use super::crypto::{self, EncrAlgorithm, IkeKeys, IkeSuite, PrfAlgorithm, SkCipher};
use super::message::{
    self, CERT_X509_SIGNATURE, Configuration, Delete, HEADER_LEN, Header, Identification, Message, Notify, Payload,
    Reassembly, TrafficSelector, cfg_attr, cfg_type, exchange, flags, notify, payload_type, protocol,
};
use super::proposal::{self, Algorithms, ChildContext, EspChoice, IkeChoice};
use super::ts;
use crate::crypto::dh::{DhGroup, KeyExchange};

/// Identifies one IKE session across IKE SA rekeys (the SPIs change, this does not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

/// Validation of the peer's certificate chain, provided by the gateway (trusted roots,
/// CRLs, revoked thumbprints). Called synchronously: it must only do local work.
pub trait PeerVerifier: Send + Sync {
    /// `chain[0]` is the peer's end-entity certificate, the rest the intermediates it sent.
    /// `Err` carries the reason, for the log.
    fn verify_chain(&self, chain: &[Vec<u8>]) -> Result<(), String>;
    /// SHA-1 hashes of the trusted CAs' SubjectPublicKeyInfo, sent in CERTREQ
    /// ([`auth::spki_sha1`] computes them). Empty: no CERTREQ.
    fn certreq_hashes(&self) -> Vec<[u8; 20]>;
}

/// Our certificate chain, private key and the ID we present.
#[derive(Debug)]
pub struct Credential {
    /// End-entity first, DER.
    pub chain: Vec<Vec<u8>>,
    pub key: SigningKey,
    pub identity: Identification,
}

impl Credential {
    /// From a DER chain (end-entity first) and a PKCS#8 DER key; the ID is the
    /// certificate's first DNS name (what clients compare with the configured server name).
    pub fn new(chain: Vec<Vec<u8>>, pkcs8_key: &[u8]) -> Result<Credential, AuthError> {
        let leaf = chain.first().ok_or_else(|| AuthError::BadCertificate("empty certificate chain".into()))?;
        let identity = auth::identity_for_certificate(leaf)?;
        Ok(Credential { key: SigningKey::from_pkcs8(pkcs8_key)?, chain, identity })
    }
}

/// Timers (strongSwan's defaults where it has them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// First retransmission of our requests; doubles each try.
    pub retransmit_timeout: Duration,
    /// Sends of a request before the peer is declared dead.
    pub retransmit_tries: u32,
    /// Quiet time after which a liveness check (DPD) is sent.
    pub dpd_interval: Duration,
    /// How long a half-open SA (after IKE_SA_INIT) waits for IKE_AUTH, and a parked
    /// authorization for the driver.
    pub half_open_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            retransmit_timeout: Duration::from_secs(4),
            retransmit_tries: 5,
            dpd_interval: Duration::from_secs(30),
            half_open_timeout: Duration::from_secs(30),
        }
    }
}

pub struct ResponderConfig {
    pub algorithms: Algorithms,
    pub credential: Arc<Credential>,
    pub verifier: Arc<dyn PeerVerifier>,
    pub timing: Timing,
    /// Largest IKE message (without IP/UDP headers and non-ESP marker) we send when the
    /// peer supports RFC 7383 fragmentation. 1200 keeps datagrams within 1280 bytes.
    pub fragment_size: usize,
    /// Half-open SAs beyond which IKE_SA_INIT requests must carry a valid COOKIE.
    pub cookie_threshold: usize,
    /// Offer EAP to peers that send IKE_AUTH without AUTH.
    pub eap: bool,
    /// The first byte of every SPI we choose (IKE and ESP). A gateway running one
    /// responder per worker tags them with the worker's index, so that any worker can
    /// tell which one owns the SA a message is for.
    pub spi_tag: Option<u8>,
}

impl ResponderConfig {
    pub fn new(credential: Arc<Credential>, verifier: Arc<dyn PeerVerifier>) -> ResponderConfig {
        ResponderConfig {
            algorithms: Algorithms::default(),
            credential,
            verifier,
            timing: Timing::default(),
            fragment_size: 1200,
            cookie_threshold: 1000,
            eap: false,
            spi_tag: None,
        }
    }
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Send from this address (the one the request arrived on).
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// A bare IKE message: add the non-ESP marker when `local` is the NAT-T socket.
    pub message: Vec<u8>,
}

/// What the gateway must decide about an authenticated peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthRequest {
    /// The peer's IDi.
    pub identity: Identification,
    /// Subject DN of the verified end-entity certificate (certificate authentication).
    pub certificate_subject: Option<String>,
    /// That certificate (DER), for the gateway's revocation bookkeeping.
    pub certificate: Option<Vec<u8>>,
    /// The EAP identity, after EAP authentication succeeded (the authenticator, e.g.
    /// RADIUS, has already accepted it: this asks for the address and routes).
    pub eap_identity: Option<String>,
    /// The peer asked for a virtual IPv4 address (CP request).
    pub wants_ipv4: bool,
    /// INITIAL_CONTACT: the peer has no other SA with us; older sessions of the same
    /// identity are stale (a rebooted client) and may be closed.
    pub initial_contact: bool,
    pub remote: SocketAddr,
}

/// The gateway's answer to an [`AuthRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authorization {
    Accept(Grant),
    /// Answered with AUTHENTICATION_FAILED; the session closes.
    Reject,
}

/// What an accepted peer gets.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Grant {
    pub virtual_ipv4: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    /// Networks reachable through the tunnel: the responder's traffic selectors are
    /// narrowed to these, and IPv4 ones other than 0.0.0.0/0 are announced as
    /// INTERNAL_IP4_SUBNET (split tunnel).
    pub routes: Vec<IpNet>,
}

/// One direction's ESP key: cipher key followed by the 4-byte salt.
#[derive(Clone, PartialEq, Eq)]
pub struct EspKey(pub Vec<u8>);

impl std::fmt::Debug for EspKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EspKey({} bytes)", self.0.len())
    }
}

/// The authenticator's answer to an [`Event::EapMessage`]: whole EAP packets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EapReply {
    /// The next EAP Request (e.g. from a RADIUS Access-Challenge).
    Request(Vec<u8>),
    /// EAP-Success and the MSK (64 bytes normally; RADIUS: MS-MPPE-Recv-Key ||
    /// Send-Key). An empty MSK means the method derives none.
    Success { message: Vec<u8>, msk: Vec<u8> },
    /// EAP-Failure: sent, then the session closes.
    Failure { message: Vec<u8> },
}

/// A CHILD SA (a pair of ESP SAs) for the data plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildSa {
    pub session: SessionId,
    /// We receive ESP with this SPI (chosen by us).
    pub inbound_spi: u32,
    /// We send ESP with this SPI (chosen by the peer).
    pub outbound_spi: u32,
    pub algorithm: EncrAlgorithm,
    /// Decrypts what the peer sends (the "initiator" keys when the peer started the SA).
    pub inbound_key: EspKey,
    pub outbound_key: EspKey,
    /// The peer's side (TSi when the peer initiated), narrowed.
    pub remote_ts: Vec<TrafficSelector>,
    /// Our side (TSr), narrowed.
    pub local_ts: Vec<TrafficSelector>,
    pub virtual_ipv4: Option<Ipv4Addr>,
    /// Where ESP goes: the peer's current IKE address and our local address.
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// NAT detected (or faked by strongSwan's kernel-libipsec): ESP in UDP (RFC 3948).
    pub udp_encapsulation: bool,
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer deleted the IKE SA.
    PeerDeleted,
    /// We deleted it ([`Responder::close`]).
    LocalDeleted,
    /// Liveness checks or our requests went unanswered.
    PeerUnresponsive,
    /// Authentication failed or the gateway refused the peer.
    AuthenticationFailed(String),
    /// The gateway never answered the [`AuthRequest`] in time.
    AuthorizationTimeout,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Answer with [`Responder::authorize`].
    AuthRequest {
        session: SessionId,
        request: AuthRequest,
    },
    /// An EAP Response from the peer (the first one is Response/Identity) for the
    /// authenticator; answer with [`Responder::eap_reply`].
    EapMessage {
        session: SessionId,
        identity: String,
        message: Vec<u8>,
        /// Where the peer is (for the RADIUS Calling-Station-Id and the log).
        remote: SocketAddr,
    },
    IkeSaEstablished {
        session: SessionId,
        identity: Identification,
        remote: SocketAddr,
    },
    ChildSaEstablished(ChildSa),
    /// Install `new`; the old pair stays valid until its [`Event::ChildSaDeleted`].
    ChildSaRekeyed {
        old_inbound_spi: u32,
        new: ChildSa,
    },
    ChildSaDeleted {
        session: SessionId,
        inbound_spi: u32,
        outbound_spi: u32,
    },
    IkeSaRekeyed {
        session: SessionId,
    },
    /// The peer's address changed (NAT rebinding, MOBIKE): send ESP there.
    PeerAddressChanged {
        session: SessionId,
        local: SocketAddr,
        remote: SocketAddr,
    },
    /// A peer failed authentication (bad certificate, bad AUTH) and was answered
    /// AUTHENTICATION_FAILED; for the log. Any session it had is closed. (Not sent when
    /// the gateway refused it with [`Authorization::Reject`].)
    AuthenticationFailed {
        remote: SocketAddr,
        reason: String,
    },
    /// Every CHILD SA of the session was reported deleted before this; free its address.
    /// Emitted for every session that produced an `AuthRequest`.
    SessionClosed {
        session: SessionId,
        reason: CloseReason,
    },
}

/// Why a datagram was ignored (for counters and debug logs; nothing to do about it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Dropped {
    #[error("malformed: {0}")]
    Malformed(#[from] message::ParseError),
    #[error("no IKE SA with this SPI")]
    UnknownSpi,
    #[error("message ID {0} out of window")]
    OutOfWindow(u32),
    #[error("integrity check failed")]
    Integrity,
    #[error("a response we did not ask for")]
    UnexpectedResponse,
    #[error("not valid in this state")]
    WrongState,
    #[error("{0}")]
    Refused(&'static str),
}

/// The initial exchange, kept for the AUTH computations.
struct InitExchange {
    request: Vec<u8>,
    response: Vec<u8>,
    ni: Vec<u8>,
    nr: Vec<u8>,
    /// The peer's SIGNATURE_HASH_ALGORITHMS (RFC 7427); empty if it sent none.
    peer_hashes: Vec<u16>,
}

/// The crypto and message-ID state of one IKE SA (a session has a second one while an
/// IKE rekey retires the old SA).
struct IkeSa {
    spi_i: [u8; 8],
    spi_r: [u8; 8],
    suite: IkeSuite,
    /// The key-exchange group, reused when we rekey the IKE SA.
    group: DhGroup,
    keys: IkeKeys,
    cipher: SkCipher,
    /// We started this IKE SA (only after a rekey we initiated).
    original_initiator: bool,
    /// Next request ID expected from the peer.
    peer_next_id: u32,
    /// Our last response, for retransmitted requests.
    last_response: Option<(u32, Vec<Vec<u8>>)>,
    reassembly: Reassembly,
    next_request_id: u32,
    outstanding: Option<Outstanding>,
}

impl IkeSa {
    /// Decrypts the SK payload and, for RFC 7383 fragments, collects them: the whole
    /// message's first payload type and plaintext, or `None` while fragments are missing.
    fn open(
        &mut self,
        header: &Header,
        data: &[u8],
        encrypted: &message::Encrypted,
    ) -> Result<Option<(u8, Vec<u8>)>, Dropped> {
        let plaintext = self.cipher.open(data, encrypted.iv_offset).map_err(|_| Dropped::Integrity)?;
        match encrypted.fragment {
            None => Ok(Some((encrypted.first_inner, plaintext))),
            Some((number, total)) => self
                .reassembly
                .add(header.message_id, number, total, encrypted.first_inner, plaintext)
                .map_err(|_| Dropped::Refused("fragment reassembly limits")),
        }
    }

    fn our_spi(&self) -> [u8; 8] {
        if self.original_initiator { self.spi_i } else { self.spi_r }
    }

    fn header(&self, exchange: u8, message_id: u32, response: bool) -> Header {
        let mut f = if self.original_initiator { flags::INITIATOR } else { 0 };
        if response {
            f |= flags::RESPONSE;
        }
        Header { spi_i: self.spi_i, spi_r: self.spi_r, next_payload: 0, exchange, flags: f, message_id, length: 0 }
    }
}

/// A request we sent and wait the answer for.
struct Outstanding {
    message_id: u32,
    datagrams: Vec<Vec<u8>>,
    kind: RequestKind,
    next_send: Instant,
    sends: u32,
}

enum RequestKind {
    Liveness,
    DeleteIke,
    DeleteChild,
    RekeyChild {
        old_inbound_spi: u32,
        new_inbound_spi: u32,
        ni: Vec<u8>,
        ke: Option<KeyExchange>,
    },
    RekeyIke {
        new_spi_i: [u8; 8],
        ni: Vec<u8>,
        ke: KeyExchange,
    },
    /// Delete of the old IKE SA after our IKE rekey, sent on that old SA.
    DeleteRetired,
}

struct Child {
    sa: ChildSa,
}

/// A parked IKE_AUTH request waiting for [`Responder::authorize`].
struct PendingAuth {
    message_id: u32,
    proposals: Vec<message::Proposal>,
    tsi: Vec<TrafficSelector>,
    tsr: Vec<TrafficSelector>,
    wants_cp: bool,
    wants_ipv4: bool,
    identity: Identification,
    eap_identity: Option<String>,
    initial_contact: bool,
    /// `Some` for EAP authentication: the MSK once EAP succeeded.
    eap_msk: Option<Vec<u8>>,
    deadline: Instant,
}

const EAP_REQUEST: u8 = 1;
const EAP_RESPONSE: u8 = 2;
const EAP_TYPE_IDENTITY: u8 = 1;

/// EAP in progress (RFC 7296 §2.16).
struct EapExchange {
    /// The first IKE_AUTH's CHILD SA request, completed after EAP.
    request: PendingAuth,
    /// Identifier of our last EAP Request.
    identifier: u8,
    phase: EapPhase,
}

enum EapPhase {
    /// Waiting for the peer's next EAP Response.
    PeerTurn,
    /// The peer's response is with the authenticator; the request is parked.
    AuthenticatorTurn { message_id: u32 },
    /// EAP succeeded; waiting for the peer's AUTH keyed with the MSK.
    FinalAuth,
}

enum State {
    /// IKE_SA_INIT answered; waiting for IKE_AUTH until the deadline.
    HalfOpen {
        deadline: Instant,
    },
    Eap(Box<EapExchange>),
    AwaitingAuthorization(Box<PendingAuth>),
    Established,
}

struct Session {
    id: SessionId,
    local: SocketAddr,
    remote: SocketAddr,
    udp_encapsulation: bool,
    peer_fragmentation: bool,
    init: InitExchange,
    ike: IkeSa,
    /// The previous IKE SA after a rekey, until the peer deletes it.
    retiring: Option<(IkeSa, Instant)>,
    state: State,
    children: Vec<Child>,
    grant: Grant,
    last_heard: Instant,
    /// The session produced an AuthRequest: the driver must hear when it closes.
    driver_knows: bool,
    /// Its key in `Responder::by_init` while not established.
    init_key: ([u8; 8], SocketAddr),
    /// Its entry in `Responder::timers`.
    timer: Option<Instant>,
}

pub struct Responder {
    config: Arc<ResponderConfig>,
    sessions: HashMap<SessionId, Session>,
    /// Our IKE SPI → session (current and retiring SAs).
    by_spi: HashMap<[u8; 8], SessionId>,
    /// Sessions not yet established by the initiator's SPI and address, to answer
    /// retransmitted IKE_SA_INIT (and to count half-open SAs for cookies).
    by_init: HashMap<([u8; 8], SocketAddr), SessionId>,
    /// Each session's next deadline; may run early (then the session just reschedules).
    timers: BTreeSet<(Instant, SessionId)>,
    inbound_spis: HashSet<u32>,
    /// Current and previous COOKIE secrets, by version (RFC 7296 §2.6).
    cookie_secrets: [[u8; 32]; 2],
    cookie_version: u8,
    next_session: u64,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
}

const NONCE_LEN: usize = 32;
/// A COOKIE is the secret's version byte and 16 bytes of MAC.
const COOKIE_MAC_LEN: usize = 16;
/// How long a retired IKE SA waits for the peer's Delete after an IKE rekey.
const RETIRING_TIMEOUT: Duration = Duration::from_secs(60);

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    // The system RNG failing is not recoverable and aws-lc aborts before that; a zero
    // buffer is never returned to a peer because every user checks for collisions.
    let _ = aws_lc_rs::rand::fill(&mut out);
    out
}

fn nat_hash(spi_i: &[u8; 8], spi_r: &[u8; 8], addr: SocketAddr) -> Vec<u8> {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(spi_i);
    ctx.update(spi_r);
    match addr.ip() {
        IpAddr::V4(a) => ctx.update(&a.octets()),
        IpAddr::V6(a) => ctx.update(&a.octets()),
    }
    ctx.update(&addr.port().to_be_bytes());
    ctx.finish().as_ref().to_vec()
}

fn error_notify(notify_type: u16) -> Payload {
    Payload::Notify(Notify::new(notify_type, Vec::new()))
}

/// The payloads of a decrypted request, by kind.
#[derive(Default)]
struct Parts {
    sa: Option<Vec<message::Proposal>>,
    ke: Option<(u16, Vec<u8>)>,
    nonce: Option<Vec<u8>>,
    idi: Option<Identification>,
    certs: Vec<Vec<u8>>,
    auth: Option<(u8, Vec<u8>)>,
    tsi: Option<Vec<TrafficSelector>>,
    tsr: Option<Vec<TrafficSelector>>,
    cp: Option<Configuration>,
    eap: Option<Vec<u8>>,
    notifies: Vec<Notify>,
    deletes: Vec<Delete>,
}

impl Parts {
    fn of(payloads: Vec<Payload>) -> Parts {
        let mut p = Parts::default();
        for payload in payloads {
            match payload {
                Payload::Sa(s) => p.sa = Some(s),
                Payload::Ke { group, data } => p.ke = Some((group, data)),
                Payload::Nonce(n) => p.nonce = Some(n),
                Payload::IdI(id) => p.idi = Some(id),
                Payload::Cert { encoding: CERT_X509_SIGNATURE, data } => p.certs.push(data),
                Payload::Auth { method, data } => p.auth = Some((method, data)),
                Payload::TsI(t) => p.tsi = Some(t),
                Payload::TsR(t) => p.tsr = Some(t),
                Payload::Cp(c) => p.cp = Some(c),
                Payload::Eap(e) => p.eap = Some(e),
                Payload::Notify(n) => p.notifies.push(n),
                Payload::Delete(d) => p.deletes.push(d),
                _ => {}
            }
        }
        p
    }

    fn notify(&self, notify_type: u16) -> Option<&Notify> {
        self.notifies.iter().find(|n| n.notify_type == notify_type)
    }
}

impl Responder {
    pub fn new(config: Arc<ResponderConfig>) -> Responder {
        Responder {
            config,
            sessions: HashMap::new(),
            by_spi: HashMap::new(),
            by_init: HashMap::new(),
            timers: BTreeSet::new(),
            inbound_spis: HashSet::new(),
            cookie_secrets: [random_bytes(), random_bytes()],
            cookie_version: 0,
            next_session: 1,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Sessions in any state.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Sessions not yet established (by_init holds exactly those).
    fn half_open_count(&self) -> usize {
        self.by_init.len()
    }

    /// An IKE datagram (without non-ESP marker) received on `local` from `remote`.
    /// `local` must be the address the peer sent to (IP_PKTINFO when the socket is bound
    /// to a wildcard): NAT detection hashes it. `Err` says why the datagram was ignored or
    /// refused, for debug logs and counters; an error notify may still have been queued,
    /// so drain [`Self::poll_transmit`] and [`Self::poll_event`] either way.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        data: &[u8],
    ) -> Result<(), Dropped> {
        let header = Header::parse(data)?;
        if header.exchange == exchange::IKE_SA_INIT && !header.is_response() && header.spi_r == [0; 8] {
            return self.handle_init(now, local, remote, header, data);
        }
        let our_spi = if header.is_initiator() { header.spi_r } else { header.spi_i };
        let id = *self.by_spi.get(&our_spi).ok_or(Dropped::UnknownSpi)?;
        let mut session = self.take_session(id).ok_or(Dropped::UnknownSpi)?;
        let result = self.handle_protected(now, &mut session, local, remote, header, data);
        self.keep_or_close(session);
        result
    }

    /// Our SPI of the IKE SA an IKE message is for, read from its header alone; `None`
    /// for a new IKE_SA_INIT request (and anything too short to be IKE). With
    /// [`ResponderConfig::spi_tag`], its first byte names the responder that owns the SA.
    pub fn our_spi(data: &[u8]) -> Option<[u8; 8]> {
        if data.len() < HEADER_LEN {
            return None;
        }
        let (spi_i, spi_r) = (&data[0..8], &data[8..16]);
        // The original initiator (a client, unless we rekeyed the IKE SA) sets the I flag.
        let ours = if data[19] & flags::INITIATOR != 0 { spi_r } else { spi_i };
        let spi: [u8; 8] = ours.try_into().ok()?;
        (spi != [0; 8]).then_some(spi)
    }

    /// Puts a session back, or forgets it when it was closed (no IKE SA left).
    fn keep_or_close(&mut self, mut session: Session) {
        if self.by_spi.get(&session.ike.our_spi()) == Some(&session.id) {
            session.timer = self.session_deadline(&session);
            if let Some(deadline) = session.timer {
                self.timers.insert((deadline, session.id));
            }
            self.sessions.insert(session.id, session);
        }
    }

    /// Takes a session out for processing; [`Self::keep_or_close`] puts it back.
    fn take_session(&mut self, id: SessionId) -> Option<Session> {
        let session = self.sessions.remove(&id)?;
        if let Some(deadline) = session.timer {
            self.timers.remove(&(deadline, id));
        }
        Some(session)
    }

    /// Removes every index entry of a session and reports it closed.
    fn close_session(&mut self, session: &mut Session, reason: CloseReason) {
        for child in session.children.drain(..) {
            self.inbound_spis.remove(&child.sa.inbound_spi);
            self.events.push_back(Event::ChildSaDeleted {
                session: session.id,
                inbound_spi: child.sa.inbound_spi,
                outbound_spi: child.sa.outbound_spi,
            });
        }
        // Current, retiring and reserved (IKE rekey in progress) SPIs.
        self.by_spi.remove(&session.ike.our_spi());
        if let Some((old, _)) = session.retiring.take() {
            self.by_spi.remove(&old.our_spi());
        }
        if let Some(Outstanding { kind: RequestKind::RekeyIke { new_spi_i, .. }, .. }) = &session.ike.outstanding {
            self.by_spi.remove(new_spi_i);
        }
        self.by_init.remove(&session.init_key);
        if session.driver_knows {
            self.events.push_back(Event::SessionClosed { session: session.id, reason });
        }
    }

    /// COOKIE = version | prf(secret_version, Ni | IPi | SPIi) (RFC 7296 §2.6).
    fn cookie_for(&self, version: u8, ni: &[u8], remote: SocketAddr, spi_i: &[u8; 8]) -> Vec<u8> {
        let ip = match remote.ip() {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        };
        let secret = &self.cookie_secrets[usize::from(version % 2)];
        let mac = PrfAlgorithm::HmacSha256.prf(secret, &[ni, &ip, spi_i]);
        [&[version][..], &mac[..COOKIE_MAC_LEN]].concat()
    }

    /// Whether a COOKIE came from the current or the previous secret.
    fn cookie_is_valid(&self, cookie: &[u8], ni: &[u8], remote: SocketAddr, spi_i: &[u8; 8]) -> bool {
        let Some(&version) = cookie.first() else { return false };
        let known = version == self.cookie_version || version == self.cookie_version.wrapping_sub(1);
        known
            && aws_lc_rs::constant_time::verify_slices_are_equal(&self.cookie_for(version, ni, remote, spi_i), cookie)
                .is_ok()
    }

    /// Replaces the COOKIE secret; cookies made with the previous one stay valid until
    /// the next rotation. Call every few minutes while cookies are demanded.
    pub fn rotate_cookie_secret(&mut self) {
        self.cookie_version = self.cookie_version.wrapping_add(1);
        self.cookie_secrets[usize::from(self.cookie_version % 2)] = random_bytes();
    }

    fn send_init_error(&mut self, local: SocketAddr, remote: SocketAddr, request: &Header, payload: Payload) {
        let header = Header {
            spi_i: request.spi_i,
            spi_r: [0; 8],
            next_payload: 0,
            exchange: exchange::IKE_SA_INIT,
            flags: flags::RESPONSE,
            message_id: 0,
            length: 0,
        };
        let message = Message { header, payloads: vec![payload] }.encode();
        self.transmits.push_back(Transmit { local, remote, message });
    }

    fn allocate_ike_spi(&self) -> [u8; 8] {
        loop {
            let mut spi: [u8; 8] = random_bytes();
            if let Some(tag) = self.config.spi_tag {
                spi[0] = tag;
            }
            if spi != [0; 8] && !self.by_spi.contains_key(&spi) {
                return spi;
            }
        }
    }

    fn allocate_esp_spi(&mut self) -> u32 {
        loop {
            let mut bytes: [u8; 4] = random_bytes();
            if let Some(tag) = self.config.spi_tag {
                bytes[0] = tag;
            }
            let spi = u32::from_be_bytes(bytes);
            // 0 is invalid and 1..=255 are reserved (RFC 4303 §2.1).
            if spi > 255 && self.inbound_spis.insert(spi) {
                return spi;
            }
        }
    }

    fn handle_init(
        &mut self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        header: Header,
        data: &[u8],
    ) -> Result<(), Dropped> {
        if header.message_id != 0 || !header.is_initiator() {
            return Err(Dropped::Refused("IKE_SA_INIT request with a wrong message ID or flags"));
        }
        if let Some(id) = self.by_init.get(&(header.spi_i, remote))
            && let Some(s) = self.sessions.get(id)
        {
            if s.init.request == data {
                self.transmits.push_back(Transmit { local, remote, message: s.init.response.clone() });
                return Ok(());
            }
            return Err(Dropped::Refused("a different IKE_SA_INIT for an existing half-open SA"));
        }
        let message = match Message::parse(data) {
            Ok(m) => m,
            Err(message::ParseError::UnsupportedCritical(t)) => {
                let n = Notify::new(notify::UNSUPPORTED_CRITICAL_PAYLOAD, vec![t]);
                self.send_init_error(local, remote, &header, Payload::Notify(n));
                return Err(Dropped::Refused("unsupported critical payload"));
            }
            Err(e) => return Err(e.into()),
        };
        let first_is_cookie =
            matches!(message.payloads.first(), Some(Payload::Notify(n)) if n.notify_type == notify::COOKIE);
        let parts = Parts::of(message.payloads);
        let received_cookie = if first_is_cookie { parts.notify(notify::COOKIE) } else { None };
        let (Some(proposals), Some((ke_group, ke_data)), Some(ni)) = (&parts.sa, &parts.ke, &parts.nonce) else {
            self.send_init_error(local, remote, &header, error_notify(notify::INVALID_SYNTAX));
            return Err(Dropped::Refused("IKE_SA_INIT without SA, KE or nonce"));
        };
        if !(16..=256).contains(&ni.len()) {
            self.send_init_error(local, remote, &header, error_notify(notify::INVALID_SYNTAX));
            return Err(Dropped::Refused("nonce length out of range"));
        }
        if self.half_open_count() >= self.config.cookie_threshold {
            let valid = received_cookie.is_some_and(|n| self.cookie_is_valid(&n.data, ni, remote, &header.spi_i));
            if !valid {
                let cookie = self.cookie_for(self.cookie_version, ni, remote, &header.spi_i);
                self.send_init_error(local, remote, &header, Payload::Notify(Notify::new(notify::COOKIE, cookie)));
                return Ok(());
            }
        }
        let (suite, group, mut reply) = match proposal::choose_ike(proposals, &self.config.algorithms, *ke_group, None)
        {
            IkeChoice::Chosen { suite, group, proposal } => (suite, group, proposal),
            IkeChoice::WrongGroup(group) => {
                let n = Notify::new(notify::INVALID_KE_PAYLOAD, group.id().to_be_bytes().to_vec());
                self.send_init_error(local, remote, &header, Payload::Notify(n));
                return Ok(());
            }
            IkeChoice::NoProposalChosen => {
                self.send_init_error(local, remote, &header, error_notify(notify::NO_PROPOSAL_CHOSEN));
                return Err(Dropped::Refused("no acceptable IKE proposal"));
            }
        };
        reply.spi.clear();
        let ke = KeyExchange::generate(group).map_err(|_| Dropped::Refused("key generation failed"))?;
        let Ok(shared) = ke.agree(ke_data) else {
            self.send_init_error(local, remote, &header, error_notify(notify::INVALID_SYNTAX));
            return Err(Dropped::Refused("invalid KE public value"));
        };
        let nr: [u8; NONCE_LEN] = random_bytes();
        let spi_i = header.spi_i;
        let spi_r = self.allocate_ike_spi();

        // NAT detection (RFC 7296 §2.23): hashes use the SPIs of the request (SPIr = 0).
        let zero = [0u8; 8];
        let peer_behind_nat = !parts
            .notifies
            .iter()
            .any(|n| n.notify_type == notify::NAT_DETECTION_SOURCE_IP && n.data == nat_hash(&spi_i, &zero, remote));
        let we_behind_nat = !parts
            .notifies
            .iter()
            .any(|n| n.notify_type == notify::NAT_DETECTION_DESTINATION_IP && n.data == nat_hash(&spi_i, &zero, local));
        let nat_d_present = parts.notify(notify::NAT_DETECTION_SOURCE_IP).is_some();
        let peer_fragmentation = parts.notify(notify::IKEV2_FRAGMENTATION_SUPPORTED).is_some();
        let peer_hashes: Vec<u16> = parts
            .notify(notify::SIGNATURE_HASH_ALGORITHMS)
            .map(|n| n.data.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect())
            .unwrap_or_default();

        let mut payloads = vec![
            Payload::Sa(vec![reply]),
            Payload::Ke { group: group.id(), data: ke.public_value().to_vec() },
            Payload::Nonce(nr.to_vec()),
        ];
        if nat_d_present {
            payloads
                .push(Payload::Notify(Notify::new(notify::NAT_DETECTION_SOURCE_IP, nat_hash(&spi_i, &spi_r, local))));
            payloads.push(Payload::Notify(Notify::new(
                notify::NAT_DETECTION_DESTINATION_IP,
                nat_hash(&spi_i, &spi_r, remote),
            )));
        }
        let hashes = self.config.verifier.certreq_hashes();
        if !hashes.is_empty() {
            payloads.push(Payload::CertReq { encoding: CERT_X509_SIGNATURE, data: hashes.concat() });
        }
        if peer_fragmentation {
            payloads.push(Payload::Notify(Notify::new(notify::IKEV2_FRAGMENTATION_SUPPORTED, Vec::new())));
        }
        if parts.notify(notify::SIGNATURE_HASH_ALGORITHMS).is_some() {
            let data = auth::SUPPORTED_HASHES.iter().flat_map(|h| h.to_be_bytes()).collect();
            payloads.push(Payload::Notify(Notify::new(notify::SIGNATURE_HASH_ALGORITHMS, data)));
        }
        let response_header = Header {
            spi_i,
            spi_r,
            next_payload: 0,
            exchange: exchange::IKE_SA_INIT,
            flags: flags::RESPONSE,
            message_id: 0,
            length: 0,
        };
        let response = Message { header: response_header, payloads }.encode();

        let seed = crypto::skeyseed(suite.prf, ni, &nr, &shared);
        let keys = crypto::derive_ike_keys(suite, &seed, ni, &nr, &spi_i, &spi_r);
        let cipher = SkCipher::new(suite, &keys, false);
        let id = SessionId(self.next_session);
        self.next_session += 1;
        let session = Session {
            id,
            local,
            remote,
            udp_encapsulation: peer_behind_nat || we_behind_nat,
            peer_fragmentation,
            init: InitExchange {
                request: data.to_vec(),
                response: response.clone(),
                ni: ni.clone(),
                nr: nr.to_vec(),
                peer_hashes,
            },
            ike: IkeSa {
                spi_i,
                spi_r,
                suite,
                group,
                keys,
                cipher,
                original_initiator: false,
                peer_next_id: 1,
                last_response: None,
                reassembly: Reassembly::default(),
                next_request_id: 0,
                outstanding: None,
            },
            retiring: None,
            state: State::HalfOpen { deadline: now + self.config.timing.half_open_timeout },
            children: Vec::new(),
            grant: Grant::default(),
            last_heard: now,
            driver_knows: false,
            init_key: (spi_i, remote),
            timer: None,
        };
        self.by_spi.insert(spi_r, id);
        self.by_init.insert((spi_i, remote), id);
        self.keep_or_close(session);
        self.transmits.push_back(Transmit { local, remote, message: response });
        Ok(())
    }

    /// Every message after IKE_SA_INIT: on the current or the retiring IKE SA.
    fn handle_protected(
        &mut self,
        now: Instant,
        s: &mut Session,
        local: SocketAddr,
        remote: SocketAddr,
        header: Header,
        data: &[u8],
    ) -> Result<(), Dropped> {
        let our_spi = if header.is_initiator() { header.spi_r } else { header.spi_i };
        let on_retiring = s.retiring.as_ref().is_some_and(|(old, _)| old.our_spi() == our_spi);
        if !on_retiring && s.ike.our_spi() != our_spi {
            return Err(Dropped::UnknownSpi);
        }
        let outer = message::parse_chain(header.next_payload, &data[HEADER_LEN..], HEADER_LEN)?;
        let Some(Payload::Encrypted(encrypted)) = outer.last().cloned() else {
            return Err(Dropped::Refused("no encrypted payload"));
        };
        if header.is_response() {
            return self.handle_response(now, s, on_retiring, header, data, &encrypted);
        }
        let sa = if on_retiring { &mut s.retiring.as_mut().expect("checked above").0 } else { &mut s.ike };
        // A retransmitted request: resend our cached response (on fragment 1 only, RFC 7383 §2.6.1).
        if header.message_id.wrapping_add(1) == sa.peer_next_id {
            if let Some((id, datagrams)) = &sa.last_response
                && *id == header.message_id
                && encrypted.fragment.is_none_or(|(n, _)| n == 1)
            {
                for message in datagrams.clone() {
                    self.transmits.push_back(Transmit { local, remote, message });
                }
                return Ok(());
            }
            return Err(Dropped::OutOfWindow(header.message_id));
        }
        if header.message_id != sa.peer_next_id {
            return Err(Dropped::OutOfWindow(header.message_id));
        }
        let Some((first, inner)) = sa.open(&header, data, &encrypted)? else { return Ok(()) };
        sa.peer_next_id += 1;
        s.last_heard = now;
        if (local, remote) != (s.local, s.remote) {
            s.local = local;
            s.remote = remote;
            if matches!(s.state, State::Established) {
                self.events.push_back(Event::PeerAddressChanged { session: s.id, local, remote });
                for child in &mut s.children {
                    child.sa.local = local;
                    child.sa.remote = remote;
                }
            }
        }
        let payloads = match message::parse_chain(first, &inner, 0) {
            Ok(p) => p,
            Err(message::ParseError::UnsupportedCritical(t)) => {
                let n = Notify::new(notify::UNSUPPORTED_CRITICAL_PAYLOAD, vec![t]);
                self.respond(s, on_retiring, header.exchange, header.message_id, vec![Payload::Notify(n)]);
                return Err(Dropped::Refused("unsupported critical payload"));
            }
            Err(e) => {
                self.respond(
                    s,
                    on_retiring,
                    header.exchange,
                    header.message_id,
                    vec![error_notify(notify::INVALID_SYNTAX)],
                );
                return Err(e.into());
            }
        };
        let parts = Parts::of(payloads);
        match (header.exchange, on_retiring) {
            (exchange::INFORMATIONAL, _) => self.handle_informational(s, on_retiring, header.message_id, parts),
            (_, true) => {
                self.respond(
                    s,
                    true,
                    header.exchange,
                    header.message_id,
                    vec![error_notify(notify::TEMPORARY_FAILURE)],
                );
                Err(Dropped::WrongState)
            }
            (exchange::IKE_AUTH, false) => self.handle_auth(now, s, header.message_id, parts),
            (exchange::CREATE_CHILD_SA, false) => self.handle_create_child(now, s, header.message_id, parts),
            _ => Err(Dropped::Refused("unknown exchange type")),
        }
    }

    /// Encrypts and sends a response (fragmenting it if the peer supports that and it is
    /// too large), and caches it for retransmitted requests.
    fn respond(&mut self, s: &mut Session, on_retiring: bool, exchange: u8, message_id: u32, payloads: Vec<Payload>) {
        let fragment_size = if s.peer_fragmentation { Some(self.config.fragment_size) } else { None };
        let sa = if on_retiring {
            match s.retiring.as_mut() {
                Some((old, _)) => old,
                None => return,
            }
        } else {
            &mut s.ike
        };
        let header = sa.header(exchange, message_id, true);
        let datagrams = seal_message(&mut sa.cipher, header, &payloads, fragment_size);
        for message in &datagrams {
            self.transmits.push_back(Transmit { local: s.local, remote: s.remote, message: message.clone() });
        }
        sa.last_response = Some((message_id, datagrams));
    }

    /// Sends a request of ours on the current IKE SA (window size 1: callers check
    /// nothing is outstanding).
    fn request(&mut self, now: Instant, s: &mut Session, exchange: u8, payloads: Vec<Payload>, kind: RequestKind) {
        self.request_on(now, s, false, exchange, payloads, kind);
    }

    fn request_on(
        &mut self,
        now: Instant,
        s: &mut Session,
        on_retiring: bool,
        exchange: u8,
        payloads: Vec<Payload>,
        kind: RequestKind,
    ) {
        let fragment_size = if s.peer_fragmentation { Some(self.config.fragment_size) } else { None };
        let sa = match (on_retiring, s.retiring.as_mut()) {
            (true, Some((old, _))) => old,
            (true, None) => return,
            (false, _) => &mut s.ike,
        };
        let message_id = sa.next_request_id;
        sa.next_request_id += 1;
        let header = sa.header(exchange, message_id, false);
        let datagrams = seal_message(&mut sa.cipher, header, &payloads, fragment_size);
        for message in &datagrams {
            self.transmits.push_back(Transmit { local: s.local, remote: s.remote, message: message.clone() });
        }
        sa.outstanding = Some(Outstanding {
            message_id,
            datagrams,
            kind,
            next_send: now + self.config.timing.retransmit_timeout,
            sends: 1,
        });
    }

    /// Answers a CREATE_CHILD_SA request with an error notify and drops it.
    fn refuse_create_child(
        &mut self,
        s: &mut Session,
        message_id: u32,
        notify_type: u16,
        why: &'static str,
    ) -> Result<(), Dropped> {
        self.respond(s, false, exchange::CREATE_CHILD_SA, message_id, vec![error_notify(notify_type)]);
        Err(Dropped::Refused(why))
    }

    fn fail_auth(&mut self, s: &mut Session, message_id: u32, reason: String) -> Result<(), Dropped> {
        self.respond(s, false, exchange::IKE_AUTH, message_id, vec![error_notify(notify::AUTHENTICATION_FAILED)]);
        self.events.push_back(Event::AuthenticationFailed { remote: s.remote, reason: reason.clone() });
        self.close_session(s, CloseReason::AuthenticationFailed(reason));
        Err(Dropped::Refused("authentication failed"))
    }

    /// Our AUTH over ResponderSignedOctets = RealMessage2 | NonceIData | prf(SK_pr, IDr'):
    /// a signature, or after EAP the MIC keyed with the MSK (SK_pr without one).
    fn our_auth(&self, s: &Session, eap_msk: Option<&[u8]>) -> Result<Payload, AuthError> {
        let credential = &self.config.credential;
        let prf = s.ike.suite.prf;
        let octets =
            [&s.init.response[..], &s.init.ni, &prf.prf(&s.ike.keys.sk_pr, &[&credential.identity.body()])].concat();
        Ok(match eap_msk {
            Some(msk) => {
                let key = if msk.is_empty() { &s.ike.keys.sk_pr[..] } else { msk };
                Payload::Auth { method: auth::method::SHARED_KEY_MIC, data: auth::shared_key_mic(prf, key, &octets) }
            }
            None => {
                let (method, data) = credential.key.sign(&octets, &s.init.peer_hashes)?;
                Payload::Auth { method, data }
            }
        })
    }

    /// InitiatorSignedOctets = RealMessage1 | NonceRData | prf(SK_pi, IDi').
    fn initiator_octets(s: &Session, idi: &Identification) -> Vec<u8> {
        [&s.init.request[..], &s.init.nr, &s.ike.suite.prf.prf(&s.ike.keys.sk_pi, &[&idi.body()])].concat()
    }

    fn handle_auth(&mut self, now: Instant, s: &mut Session, message_id: u32, parts: Parts) -> Result<(), Dropped> {
        if matches!(s.state, State::Eap(_)) {
            return self.handle_eap(now, s, message_id, parts);
        }
        if !matches!(s.state, State::HalfOpen { .. }) {
            return Err(Dropped::WrongState);
        }
        let Some(idi) = parts.idi.clone() else {
            return self.fail_auth(s, message_id, "IKE_AUTH without IDi".into());
        };
        let child_request = |eap_msk| PendingAuth {
            message_id,
            proposals: parts.sa.clone().unwrap_or_default(),
            tsi: parts.tsi.clone().unwrap_or_default(),
            tsr: parts.tsr.clone().unwrap_or_default(),
            wants_cp: parts.cp.as_ref().is_some_and(|cp| cp.cfg_type == cfg_type::REQUEST),
            wants_ipv4: parts.cp.as_ref().is_some_and(|cp| {
                cp.cfg_type == cfg_type::REQUEST
                    && cp.attributes.iter().any(|(t, _)| *t == cfg_attr::INTERNAL_IP4_ADDRESS)
            }),
            identity: idi.clone(),
            eap_identity: None,
            initial_contact: parts.notify(notify::INITIAL_CONTACT).is_some(),
            eap_msk,
            deadline: now + self.config.timing.half_open_timeout,
        };
        let Some((auth_method, auth_data)) = &parts.auth else {
            // No AUTH: the peer wants EAP (RFC 7296 §2.16). We authenticate first, with
            // our certificate, and ask for its EAP identity (Windows' IDi is only an address).
            if !self.config.eap {
                return self.fail_auth(s, message_id, format!("{} asked for EAP, which is not enabled", idi.display()));
            }
            let ours = match self.our_auth(s, None) {
                Ok(a) => a,
                Err(e) => return self.fail_auth(s, message_id, format!("cannot sign our AUTH: {e}")),
            };
            let credential = self.config.credential.clone();
            let mut payloads = vec![Payload::IdR(credential.identity.clone())];
            payloads.extend(
                credential.chain.iter().map(|der| Payload::Cert { encoding: CERT_X509_SIGNATURE, data: der.clone() }),
            );
            payloads.push(ours);
            let identifier = 1;
            payloads.push(Payload::Eap(vec![EAP_REQUEST, identifier, 0, 5, EAP_TYPE_IDENTITY]));
            s.state = State::Eap(Box::new(EapExchange {
                request: child_request(Some(Vec::new())),
                identifier,
                phase: EapPhase::PeerTurn,
            }));
            self.respond(s, false, exchange::IKE_AUTH, message_id, payloads);
            return Ok(());
        };
        let Some(leaf) = parts.certs.first() else {
            return self.fail_auth(s, message_id, format!("{} sent no certificate", idi.display()));
        };
        if let Err(reason) = self.config.verifier.verify_chain(&parts.certs) {
            return self.fail_auth(s, message_id, format!("certificate of {} refused: {reason}", idi.display()));
        }
        if !auth::identity_matches_certificate(&idi, leaf) {
            return self.fail_auth(s, message_id, format!("ID {} is not in its certificate", idi.display()));
        }
        let octets = Self::initiator_octets(s, &idi);
        if let Err(e) = auth::verify_signature(leaf, *auth_method, auth_data, &octets) {
            return self.fail_auth(s, message_id, format!("AUTH of {} refused: {e}", idi.display()));
        }
        let pending = child_request(None);
        let request = AuthRequest {
            identity: idi.clone(),
            certificate_subject: Some(auth::certificate_subject(leaf)),
            certificate: Some(leaf.clone()),
            eap_identity: None,
            wants_ipv4: pending.wants_ipv4,
            initial_contact: pending.initial_contact,
            remote: s.remote,
        };
        s.state = State::AwaitingAuthorization(Box::new(pending));
        s.driver_knows = true;
        self.events.push_back(Event::AuthRequest { session: s.id, request });
        Ok(())
    }

    /// IKE_AUTH requests during EAP: EAP responses, then the final AUTH.
    fn handle_eap(&mut self, now: Instant, s: &mut Session, message_id: u32, parts: Parts) -> Result<(), Dropped> {
        let State::Eap(eap) = &mut s.state else { return Err(Dropped::WrongState) };
        match std::mem::replace(&mut eap.phase, EapPhase::PeerTurn) {
            EapPhase::PeerTurn => {
                let Some(message) = parts.eap else {
                    return self.fail_auth(s, message_id, "IKE_AUTH during EAP without an EAP payload".into());
                };
                // Code(1) Identifier(1) Length(2) [Type(1) Data]: a Response to our last Request.
                if message.len() < 5 || message[0] != EAP_RESPONSE || message[1] != eap.identifier {
                    return self.fail_auth(s, message_id, "unexpected EAP message".into());
                }
                if eap.request.eap_identity.is_none() {
                    if message[4] != EAP_TYPE_IDENTITY {
                        return self.fail_auth(s, message_id, "the EAP identity response is missing".into());
                    }
                    eap.request.eap_identity = Some(String::from_utf8_lossy(&message[5..]).into_owned());
                }
                eap.phase = EapPhase::AuthenticatorTurn { message_id };
                eap.request.deadline = now + self.config.timing.half_open_timeout;
                let identity = eap.request.eap_identity.clone().unwrap_or_default();
                s.driver_knows = true;
                self.events.push_back(Event::EapMessage { session: s.id, identity, message, remote: s.remote });
                Ok(())
            }
            EapPhase::AuthenticatorTurn { message_id: parked } => {
                eap.phase = EapPhase::AuthenticatorTurn { message_id: parked };
                Err(Dropped::WrongState)
            }
            EapPhase::FinalAuth => {
                let Some((auth::method::SHARED_KEY_MIC, mic)) = &parts.auth else {
                    return self.fail_auth(s, message_id, "no shared-key AUTH after EAP".into());
                };
                let identity = eap.request.identity.clone();
                let msk = eap.request.eap_msk.clone().unwrap_or_default();
                let prf = s.ike.suite.prf;
                let key = if msk.is_empty() { s.ike.keys.sk_pi.clone() } else { msk };
                let octets = Self::initiator_octets(s, &identity);
                let expected = auth::shared_key_mic(prf, &key, &octets);
                if aws_lc_rs::constant_time::verify_slices_are_equal(&expected, mic).is_err() {
                    return self.fail_auth(s, message_id, "the AUTH after EAP does not match the MSK".into());
                }
                let State::Eap(eap) = std::mem::replace(&mut s.state, State::Established) else {
                    unreachable!("state checked at the top")
                };
                let mut pending = eap.request;
                pending.message_id = message_id;
                pending.deadline = now + self.config.timing.half_open_timeout;
                let request = AuthRequest {
                    identity: pending.identity.clone(),
                    certificate_subject: None,
                    certificate: None,
                    eap_identity: pending.eap_identity.clone(),
                    wants_ipv4: pending.wants_ipv4,
                    initial_contact: pending.initial_contact,
                    remote: s.remote,
                };
                s.state = State::AwaitingAuthorization(Box::new(pending));
                self.events.push_back(Event::AuthRequest { session: s.id, request });
                Ok(())
            }
        }
    }

    /// The authenticator's answer to an [`Event::EapMessage`] (e.g. relayed from RADIUS).
    /// Ignored when the session is gone or not waiting for it.
    pub fn eap_reply(&mut self, now: Instant, session: SessionId, reply: EapReply) {
        let Some(mut s) = self.take_session(session) else { return };
        if let State::Eap(eap) = &mut s.state
            && let EapPhase::AuthenticatorTurn { message_id } = eap.phase
        {
            eap.request.deadline = now + self.config.timing.half_open_timeout;
            match reply {
                EapReply::Request(message) => {
                    eap.identifier = message.get(1).copied().unwrap_or_default();
                    eap.phase = EapPhase::PeerTurn;
                    self.respond(&mut s, false, exchange::IKE_AUTH, message_id, vec![Payload::Eap(message)]);
                }
                EapReply::Success { message, msk } => {
                    eap.request.eap_msk = Some(msk);
                    eap.phase = EapPhase::FinalAuth;
                    self.respond(&mut s, false, exchange::IKE_AUTH, message_id, vec![Payload::Eap(message)]);
                }
                EapReply::Failure { message } => {
                    self.respond(&mut s, false, exchange::IKE_AUTH, message_id, vec![Payload::Eap(message)]);
                    self.close_session(&mut s, CloseReason::AuthenticationFailed("EAP authentication failed".into()));
                }
            }
        }
        self.keep_or_close(s);
    }

    /// The gateway's answer to an [`Event::AuthRequest`]. Ignored when the session is
    /// gone or not waiting.
    pub fn authorize(&mut self, now: Instant, session: SessionId, decision: Authorization) {
        let Some(mut s) = self.take_session(session) else { return };
        if matches!(s.state, State::AwaitingAuthorization(_)) {
            let State::AwaitingAuthorization(pending) = std::mem::replace(&mut s.state, State::Established) else {
                unreachable!("state checked just above")
            };
            match decision {
                Authorization::Reject => {
                    // The gateway logged its reason when it decided.
                    self.respond(
                        &mut s,
                        false,
                        exchange::IKE_AUTH,
                        pending.message_id,
                        vec![error_notify(notify::AUTHENTICATION_FAILED)],
                    );
                    self.close_session(&mut s, CloseReason::AuthenticationFailed("refused by the gateway".into()));
                }
                Authorization::Accept(grant) => self.complete_auth(now, &mut s, *pending, grant),
            }
        }
        self.keep_or_close(s);
    }

    fn complete_auth(&mut self, now: Instant, s: &mut Session, pending: PendingAuth, grant: Grant) {
        let ours = match self.our_auth(s, pending.eap_msk.as_deref()) {
            Ok(a) => a,
            Err(e) => {
                let _ = self.fail_auth(s, pending.message_id, format!("cannot sign our AUTH: {e}"));
                return;
            }
        };
        let mut payloads = Vec::new();
        // After EAP, IDr and CERT went with the first IKE_AUTH response.
        if pending.eap_msk.is_none() {
            let credential = &self.config.credential;
            payloads.push(Payload::IdR(credential.identity.clone()));
            payloads.extend(
                credential.chain.iter().map(|der| Payload::Cert { encoding: CERT_X509_SIGNATURE, data: der.clone() }),
            );
        }
        payloads.push(ours);
        s.grant = grant.clone();
        self.events.push_back(Event::IkeSaEstablished {
            session: s.id,
            identity: pending.identity.clone(),
            remote: s.remote,
        });
        if pending.wants_cp {
            payloads.push(Payload::Cp(config_reply(&grant)));
        }
        if pending.wants_ipv4 && grant.virtual_ipv4.is_none() {
            payloads.push(error_notify(notify::INTERNAL_ADDRESS_FAILURE));
        } else {
            match self.negotiate_child(s, &pending.proposals, &pending.tsi, &pending.tsr, ChildContext::IkeAuth) {
                Ok((choice, tsi, tsr)) => {
                    let inbound_spi = self.allocate_esp_spi();
                    let keymat_len = 2 * choice.encr.keymat_len();
                    let keymat = crypto::child_keymat(
                        s.ike.suite.prf,
                        &s.ike.keys.sk_d,
                        None,
                        &s.init.ni,
                        &s.init.nr,
                        keymat_len,
                    );
                    let child = self.child_sa(s, &choice, inbound_spi, &keymat, true, tsi.clone(), tsr.clone());
                    payloads.push(Payload::Sa(vec![choice.reply(inbound_spi)]));
                    payloads.push(Payload::TsI(tsi));
                    payloads.push(Payload::TsR(tsr));
                    s.children.push(Child { sa: child.clone() });
                    self.events.push_back(Event::ChildSaEstablished(child));
                }
                Err(n) => payloads.push(n),
            }
        }
        s.state = State::Established;
        s.last_heard = now;
        self.by_init.remove(&s.init_key);
        self.respond(s, false, exchange::IKE_AUTH, pending.message_id, payloads);
    }

    /// ESP proposal and traffic selectors, or the error notify to answer with.
    fn negotiate_child(
        &self,
        s: &Session,
        proposals: &[message::Proposal],
        tsi: &[TrafficSelector],
        tsr: &[TrafficSelector],
        context: ChildContext,
    ) -> Result<(EspChoice, Vec<TrafficSelector>, Vec<TrafficSelector>), Payload> {
        let choice = match proposal::choose_esp(proposals, &self.config.algorithms, context) {
            Ok(c) => c,
            Err(Some(group)) => {
                return Err(Payload::Notify(Notify::new(
                    notify::INVALID_KE_PAYLOAD,
                    group.id().to_be_bytes().to_vec(),
                )));
            }
            Err(None) => return Err(error_notify(notify::NO_PROPOSAL_CHOSEN)),
        };
        let peer_side = match s.grant.virtual_ipv4 {
            Some(vip) => vec![ts::host(IpAddr::V4(vip))],
            None => vec![ts::host(s.remote.ip())],
        };
        let allowed: Vec<TrafficSelector> = s.grant.routes.iter().map(|net| ts::from_net(*net)).collect();
        let tsi = ts::narrow(tsi, &peer_side);
        let tsr = ts::narrow(tsr, &allowed);
        if tsi.is_empty() || tsr.is_empty() {
            return Err(error_notify(notify::TS_UNACCEPTABLE));
        }
        Ok((choice, tsi, tsr))
    }

    /// Builds the data-plane view of a CHILD SA from KEYMAT (encr_i | encr_r for AEAD).
    #[allow(clippy::too_many_arguments)]
    fn child_sa(
        &self,
        s: &Session,
        choice: &EspChoice,
        inbound_spi: u32,
        keymat: &[u8],
        peer_initiated: bool,
        tsi: Vec<TrafficSelector>,
        tsr: Vec<TrafficSelector>,
    ) -> ChildSa {
        let (initiator_key, responder_key) = keymat.split_at(choice.encr.keymat_len());
        let (inbound, outbound, remote_ts, local_ts) = if peer_initiated {
            (initiator_key, responder_key, tsi, tsr)
        } else {
            (responder_key, initiator_key, tsr, tsi)
        };
        ChildSa {
            session: s.id,
            inbound_spi,
            outbound_spi: choice.peer_spi,
            algorithm: choice.encr,
            inbound_key: EspKey(inbound.to_vec()),
            outbound_key: EspKey(outbound.to_vec()),
            remote_ts,
            local_ts,
            virtual_ipv4: s.grant.virtual_ipv4,
            local: s.local,
            remote: s.remote,
            udp_encapsulation: s.udp_encapsulation,
        }
    }

    fn handle_create_child(
        &mut self,
        now: Instant,
        s: &mut Session,
        message_id: u32,
        parts: Parts,
    ) -> Result<(), Dropped> {
        if !matches!(s.state, State::Established) {
            self.respond(
                s,
                false,
                exchange::CREATE_CHILD_SA,
                message_id,
                vec![error_notify(notify::TEMPORARY_FAILURE)],
            );
            return Err(Dropped::WrongState);
        }
        let (Some(proposals), Some(ni)) = (&parts.sa, &parts.nonce) else {
            return self.refuse_create_child(
                s,
                message_id,
                notify::INVALID_SYNTAX,
                "CREATE_CHILD_SA without SA or nonce",
            );
        };
        // A rekey of what we are rekeying ourselves: the peer retries later, after ours
        // completed (RFC 7296 §2.25 instead of the §2.8.1 nonce tie-break).
        let rekeying_ike = proposals.iter().any(|p| p.protocol == protocol::IKE);
        let colliding = match &s.ike.outstanding {
            Some(Outstanding { kind: RequestKind::RekeyIke { .. }, .. }) => true,
            Some(Outstanding { kind: RequestKind::RekeyChild { old_inbound_spi, .. }, .. }) => {
                let ours = s.children.iter().find(|c| c.sa.inbound_spi == *old_inbound_spi);
                let theirs = parts.notify(notify::REKEY_SA).map(|n| n.spi.clone());
                ours.is_some_and(|c| theirs == Some(c.sa.outbound_spi.to_be_bytes().to_vec()))
            }
            _ => false,
        };
        if colliding {
            return self.refuse_create_child(
                s,
                message_id,
                notify::TEMPORARY_FAILURE,
                "rekey collision: ours is in progress",
            );
        }
        if rekeying_ike {
            return self.handle_ike_rekey(now, s, message_id, &parts);
        }
        // A CHILD SA rekey names the old SA by the SPI the peer receives on (our outbound).
        let rekeyed = match parts.notify(notify::REKEY_SA) {
            Some(n) if n.protocol == protocol::ESP && n.spi.len() == 4 => {
                let spi = u32::from_be_bytes(n.spi[..].try_into().expect("length checked"));
                match s.children.iter().find(|c| c.sa.outbound_spi == spi) {
                    Some(c) => Some(c.sa.clone()),
                    None => {
                        let n = Notify {
                            protocol: protocol::ESP,
                            spi: spi.to_be_bytes().to_vec(),
                            notify_type: notify::CHILD_SA_NOT_FOUND,
                            data: Vec::new(),
                        };
                        self.respond(s, false, exchange::CREATE_CHILD_SA, message_id, vec![Payload::Notify(n)]);
                        return Err(Dropped::Refused("rekey of an unknown CHILD SA"));
                    }
                }
            }
            _ => None,
        };
        let ke_group = parts.ke.as_ref().map(|(g, _)| *g);
        let (tsi, tsr) = match &rekeyed {
            // A rekey keeps the selectors; the peer proposes what it had.
            Some(old) => (old.remote_ts.clone(), old.local_ts.clone()),
            None => (parts.tsi.clone().unwrap_or_default(), parts.tsr.clone().unwrap_or_default()),
        };
        let (choice, tsi, tsr) =
            match self.negotiate_child(s, proposals, &tsi, &tsr, ChildContext::CreateChildSa { ke_group }) {
                Ok(c) => c,
                Err(n) => {
                    self.respond(s, false, exchange::CREATE_CHILD_SA, message_id, vec![n]);
                    return Err(Dropped::Refused("CHILD SA not acceptable"));
                }
            };
        let nr: [u8; NONCE_LEN] = random_bytes();
        let mut payloads = Vec::new();
        let inbound_spi = self.allocate_esp_spi();
        payloads.push(Payload::Sa(vec![choice.reply(inbound_spi)]));
        payloads.push(Payload::Nonce(nr.to_vec()));
        let shared = match (choice.group, &parts.ke) {
            (Some(group), Some((_, data))) => {
                let ke = KeyExchange::generate(group).map_err(|_| Dropped::Refused("key generation failed"))?;
                let Ok(shared) = ke.agree(data) else {
                    self.inbound_spis.remove(&inbound_spi);
                    return self.refuse_create_child(s, message_id, notify::INVALID_SYNTAX, "invalid KE public value");
                };
                payloads.push(Payload::Ke { group: group.id(), data: ke.public_value().to_vec() });
                Some(shared)
            }
            _ => None,
        };
        payloads.push(Payload::TsI(tsi.clone()));
        payloads.push(Payload::TsR(tsr.clone()));
        let keymat = crypto::child_keymat(
            s.ike.suite.prf,
            &s.ike.keys.sk_d,
            shared.as_deref(),
            ni,
            &nr,
            2 * choice.encr.keymat_len(),
        );
        let child = self.child_sa(s, &choice, inbound_spi, &keymat, true, tsi, tsr);
        s.children.push(Child { sa: child.clone() });
        self.events.push_back(match rekeyed {
            Some(old) => Event::ChildSaRekeyed { old_inbound_spi: old.inbound_spi, new: child },
            None => Event::ChildSaEstablished(child),
        });
        self.respond(s, false, exchange::CREATE_CHILD_SA, message_id, payloads);
        Ok(())
    }

    /// IKE SA rekey started by the peer (RFC 7296 §1.3.2, §2.18).
    fn handle_ike_rekey(
        &mut self,
        now: Instant,
        s: &mut Session,
        message_id: u32,
        parts: &Parts,
    ) -> Result<(), Dropped> {
        let (Some(proposals), Some(ni), Some((ke_group, ke_data))) = (&parts.sa, &parts.nonce, &parts.ke) else {
            return self.refuse_create_child(s, message_id, notify::INVALID_SYNTAX, "IKE rekey without KE");
        };
        let old_prf = s.ike.suite.prf;
        let (suite, group, mut reply) =
            match proposal::choose_ike(proposals, &self.config.algorithms, *ke_group, Some(old_prf)) {
                IkeChoice::Chosen { suite, group, proposal } => (suite, group, proposal),
                IkeChoice::WrongGroup(group) => {
                    let n = Notify::new(notify::INVALID_KE_PAYLOAD, group.id().to_be_bytes().to_vec());
                    self.respond(s, false, exchange::CREATE_CHILD_SA, message_id, vec![Payload::Notify(n)]);
                    return Ok(());
                }
                IkeChoice::NoProposalChosen => {
                    return self.refuse_create_child(
                        s,
                        message_id,
                        notify::NO_PROPOSAL_CHOSEN,
                        "no acceptable IKE rekey proposal",
                    );
                }
            };
        let Some(peer_proposal) = proposals.iter().find(|p| p.number == reply.number && p.protocol == protocol::IKE)
        else {
            return Err(Dropped::Refused("chosen proposal vanished"));
        };
        let Ok(new_spi_i) = <[u8; 8]>::try_from(&peer_proposal.spi[..]) else {
            return self.refuse_create_child(
                s,
                message_id,
                notify::INVALID_SYNTAX,
                "IKE rekey proposal without an 8-byte SPI",
            );
        };
        let ke = KeyExchange::generate(group).map_err(|_| Dropped::Refused("key generation failed"))?;
        let Ok(shared) = ke.agree(ke_data) else {
            return self.refuse_create_child(s, message_id, notify::INVALID_SYNTAX, "invalid KE public value");
        };
        let nr: [u8; NONCE_LEN] = random_bytes();
        let new_spi_r = self.allocate_ike_spi();
        reply.spi = new_spi_r.to_vec();
        let payloads = vec![
            Payload::Sa(vec![reply]),
            Payload::Nonce(nr.to_vec()),
            Payload::Ke { group: group.id(), data: ke.public_value().to_vec() },
        ];
        // SKEYSEED' = prf_old(SK_d_old, g^ir | Ni | Nr); the new SA's keys use its own PRF
        // (RFC 7296 §2.18), which equals the old one whenever the peer offers it.
        let seed = crypto::rekey_skeyseed(old_prf, &s.ike.keys.sk_d, &shared, ni, &nr);
        let keys = crypto::derive_ike_keys(suite, &seed, ni, &nr, &new_spi_i, &new_spi_r);
        self.respond(s, false, exchange::CREATE_CHILD_SA, message_id, payloads);
        let new_sa = IkeSa {
            spi_i: new_spi_i,
            spi_r: new_spi_r,
            suite,
            group,
            cipher: SkCipher::new(suite, &keys, false),
            keys,
            original_initiator: false,
            peer_next_id: 0,
            last_response: None,
            reassembly: Reassembly::default(),
            next_request_id: 0,
            outstanding: None,
        };
        let old = std::mem::replace(&mut s.ike, new_sa);
        if let Some((older, _)) = s.retiring.replace((old, now + RETIRING_TIMEOUT)) {
            self.by_spi.remove(&older.our_spi());
        }
        self.by_spi.insert(new_spi_r, s.id);
        self.events.push_back(Event::IkeSaRekeyed { session: s.id });
        Ok(())
    }

    fn handle_informational(
        &mut self,
        s: &mut Session,
        on_retiring: bool,
        message_id: u32,
        parts: Parts,
    ) -> Result<(), Dropped> {
        if parts.deletes.iter().any(|d| d.protocol == protocol::IKE) {
            self.respond(s, on_retiring, exchange::INFORMATIONAL, message_id, Vec::new());
            if on_retiring {
                if let Some((old, _)) = s.retiring.take() {
                    self.by_spi.remove(&old.our_spi());
                }
            } else {
                self.close_session(s, CloseReason::PeerDeleted);
            }
            return Ok(());
        }
        let mut ours = Vec::new();
        for delete in parts.deletes.iter().filter(|d| d.protocol == protocol::ESP && d.spi_size == 4) {
            for spi in &delete.spis {
                let spi = u32::from_be_bytes(spi[..].try_into().expect("SPI size checked to be 4"));
                if let Some(pos) = s.children.iter().position(|c| c.sa.outbound_spi == spi) {
                    let child = s.children.remove(pos);
                    self.inbound_spis.remove(&child.sa.inbound_spi);
                    ours.push(child.sa.inbound_spi.to_be_bytes().to_vec());
                    self.events.push_back(Event::ChildSaDeleted {
                        session: s.id,
                        inbound_spi: child.sa.inbound_spi,
                        outbound_spi: child.sa.outbound_spi,
                    });
                }
            }
        }
        let payloads = if ours.is_empty() {
            Vec::new()
        } else {
            vec![Payload::Delete(Delete { protocol: protocol::ESP, spi_size: 4, spis: ours })]
        };
        self.respond(s, on_retiring, exchange::INFORMATIONAL, message_id, payloads);
        Ok(())
    }

    fn handle_response(
        &mut self,
        now: Instant,
        s: &mut Session,
        on_retiring: bool,
        header: Header,
        data: &[u8],
        encrypted: &message::Encrypted,
    ) -> Result<(), Dropped> {
        let sa = match (on_retiring, s.retiring.as_mut()) {
            (true, Some((old, _))) => old,
            (true, None) => return Err(Dropped::UnexpectedResponse),
            (false, _) => &mut s.ike,
        };
        let Some(outstanding) = &sa.outstanding else { return Err(Dropped::UnexpectedResponse) };
        if outstanding.message_id != header.message_id {
            return Err(Dropped::UnexpectedResponse);
        }
        let Some((first, inner)) = sa.open(&header, data, encrypted)? else { return Ok(()) };
        let outstanding = sa.outstanding.take().expect("checked above");
        s.last_heard = now;
        let parts = Parts::of(message::parse_chain(first, &inner, 0).unwrap_or_default());
        match outstanding.kind {
            RequestKind::Liveness | RequestKind::DeleteChild => Ok(()),
            RequestKind::DeleteIke => {
                self.close_session(s, CloseReason::LocalDeleted);
                Ok(())
            }
            RequestKind::RekeyChild { old_inbound_spi, new_inbound_spi, ni, ke } => {
                self.finish_child_rekey(now, s, old_inbound_spi, new_inbound_spi, ni, ke, parts)
            }
            RequestKind::RekeyIke { new_spi_i, ni, ke } => self.finish_ike_rekey(now, s, new_spi_i, &ni, &ke, parts),
            RequestKind::DeleteRetired => {
                if let Some((old, _)) = s.retiring.take() {
                    self.by_spi.remove(&old.our_spi());
                }
                Ok(())
            }
        }
    }

    /// Starts a rekey of the session's IKE SA (its lifetime is up), with the same
    /// algorithms. Returns false when the session is busy or unknown; try later.
    pub fn rekey_ike(&mut self, now: Instant, session: SessionId) -> bool {
        let Some(mut s) = self.take_session(session) else { return false };
        let idle = s.ike.outstanding.is_none() && s.retiring.is_none() && matches!(s.state, State::Established);
        if idle && let Ok(ke) = KeyExchange::generate(s.ike.group) {
            let new_spi_i = self.allocate_ike_spi();
            // Reserve the SPI now so no other SA takes it meanwhile.
            self.by_spi.insert(new_spi_i, s.id);
            let mut reply = proposal::ike_reply(1, s.ike.suite, s.ike.group);
            reply.spi = new_spi_i.to_vec();
            let ni: [u8; NONCE_LEN] = random_bytes();
            let payloads = vec![
                Payload::Sa(vec![reply]),
                Payload::Nonce(ni.to_vec()),
                Payload::Ke { group: s.ike.group.id(), data: ke.public_value().to_vec() },
            ];
            let kind = RequestKind::RekeyIke { new_spi_i, ni: ni.to_vec(), ke };
            self.request(now, &mut s, exchange::CREATE_CHILD_SA, payloads, kind);
            self.keep_or_close(s);
            return true;
        }
        self.keep_or_close(s);
        false
    }

    /// The peer's answer to our IKE rekey: switch to the new SA and delete the old one.
    fn finish_ike_rekey(
        &mut self,
        now: Instant,
        s: &mut Session,
        new_spi_i: [u8; 8],
        ni: &[u8],
        ke: &KeyExchange,
        parts: Parts,
    ) -> Result<(), Dropped> {
        let chosen = parts.sa.as_ref().and_then(|sa| sa.iter().find(|p| p.protocol == protocol::IKE));
        let new_spi_r = chosen.and_then(|p| <[u8; 8]>::try_from(&p.spi[..]).ok());
        let shared = parts.ke.as_ref().filter(|(g, _)| *g == ke.group().id()).and_then(|(_, d)| ke.agree(d).ok());
        let (Some(new_spi_r), Some(shared), Some(nr)) = (new_spi_r, shared, parts.nonce.as_ref()) else {
            // Refused (INVALID_KE, NO_PROPOSAL_CHOSEN...): keep the current SA.
            self.by_spi.remove(&new_spi_i);
            return Err(Dropped::Refused("the peer refused our IKE SA rekey"));
        };
        let old_prf = s.ike.suite.prf;
        let seed = crypto::rekey_skeyseed(old_prf, &s.ike.keys.sk_d, &shared, ni, nr);
        let keys = crypto::derive_ike_keys(s.ike.suite, &seed, ni, nr, &new_spi_i, &new_spi_r);
        let new_sa = IkeSa {
            spi_i: new_spi_i,
            spi_r: new_spi_r,
            suite: s.ike.suite,
            group: s.ike.group,
            cipher: SkCipher::new(s.ike.suite, &keys, true),
            keys,
            original_initiator: true,
            peer_next_id: 0,
            last_response: None,
            reassembly: Reassembly::default(),
            next_request_id: 0,
            outstanding: None,
        };
        let old = std::mem::replace(&mut s.ike, new_sa);
        s.retiring = Some((old, now + RETIRING_TIMEOUT));
        self.events.push_back(Event::IkeSaRekeyed { session: s.id });
        let delete = Delete { protocol: protocol::IKE, spi_size: 0, spis: Vec::new() };
        self.request_on(
            now,
            s,
            true,
            exchange::INFORMATIONAL,
            vec![Payload::Delete(delete)],
            RequestKind::DeleteRetired,
        );
        Ok(())
    }

    /// Starts a rekey of the CHILD SA that receives on `inbound_spi` (lifetime or sequence
    /// numbers running out). Returns false when the session is busy or unknown; try later.
    pub fn rekey_child(&mut self, now: Instant, session: SessionId, inbound_spi: u32) -> bool {
        let Some(mut s) = self.take_session(session) else { return false };
        let started = self.start_child_rekey(now, &mut s, inbound_spi);
        self.keep_or_close(s);
        started
    }

    fn start_child_rekey(&mut self, now: Instant, s: &mut Session, inbound_spi: u32) -> bool {
        if s.ike.outstanding.is_some() || !matches!(s.state, State::Established) {
            return false;
        }
        let Some(old) = s.children.iter().find(|c| c.sa.inbound_spi == inbound_spi).map(|c| c.sa.clone()) else {
            return false;
        };
        let Ok(ke) = KeyExchange::generate(s.ike.group) else { return false };
        let new_inbound_spi = self.allocate_esp_spi();
        let (id, key_length) = old.algorithm.id();
        // Offer PFS with the IKE SA's group first, and the same without PFS: peers
        // configured either way find a match.
        let proposal = |number: u8, group: Option<DhGroup>| {
            let mut transforms = vec![message::Transform::new(message::transform_type::ENCR, id, key_length)];
            if let Some(group) = group {
                transforms.push(message::Transform::new(message::transform_type::DH, group.id(), None));
            }
            transforms.push(message::Transform::new(message::transform_type::ESN, 0, None));
            message::Proposal {
                number,
                protocol: protocol::ESP,
                spi: new_inbound_spi.to_be_bytes().to_vec(),
                transforms,
            }
        };
        let ni: [u8; NONCE_LEN] = random_bytes();
        let payloads = vec![
            Payload::Notify(Notify {
                protocol: protocol::ESP,
                spi: inbound_spi.to_be_bytes().to_vec(),
                notify_type: notify::REKEY_SA,
                data: Vec::new(),
            }),
            Payload::Sa(vec![proposal(1, Some(s.ike.group)), proposal(2, None)]),
            Payload::Nonce(ni.to_vec()),
            Payload::Ke { group: s.ike.group.id(), data: ke.public_value().to_vec() },
            // We are the initiator of this exchange: TSi is our side.
            Payload::TsI(old.local_ts.clone()),
            Payload::TsR(old.remote_ts.clone()),
        ];
        let kind =
            RequestKind::RekeyChild { old_inbound_spi: inbound_spi, new_inbound_spi, ni: ni.to_vec(), ke: Some(ke) };
        self.request(now, s, exchange::CREATE_CHILD_SA, payloads, kind);
        true
    }

    #[allow(clippy::too_many_arguments)]
    fn finish_child_rekey(
        &mut self,
        now: Instant,
        s: &mut Session,
        old_inbound_spi: u32,
        new_inbound_spi: u32,
        ni: Vec<u8>,
        ke: Option<KeyExchange>,
        parts: Parts,
    ) -> Result<(), Dropped> {
        let old = s.children.iter().find(|c| c.sa.inbound_spi == old_inbound_spi).map(|c| c.sa.clone());
        let ke_group = parts.ke.as_ref().map(|(g, _)| *g);
        let accepted = parts.sa.as_ref().and_then(|sa| {
            proposal::choose_esp(sa, &self.config.algorithms, ChildContext::CreateChildSa { ke_group }).ok()
        });
        let (Some(old), Some(choice), Some(nr)) = (old, accepted, parts.nonce.as_ref()) else {
            // Refused (or the old SA went away meanwhile): keep using the old one.
            self.inbound_spis.remove(&new_inbound_spi);
            return Err(Dropped::Refused("the peer refused our CHILD SA rekey"));
        };
        let shared = match (&ke, &parts.ke, choice.group) {
            (Some(ke), Some((_, data)), Some(group)) if group == ke.group() => match ke.agree(data) {
                Ok(shared) => Some(shared),
                Err(_) => {
                    self.inbound_spis.remove(&new_inbound_spi);
                    return Err(Dropped::Refused("invalid KE in the CHILD SA rekey response"));
                }
            },
            (_, None, None) => None,
            _ => {
                self.inbound_spis.remove(&new_inbound_spi);
                return Err(Dropped::Refused("the CHILD SA rekey response's DH group does not match"));
            }
        };
        let keymat = crypto::child_keymat(
            s.ike.suite.prf,
            &s.ike.keys.sk_d,
            shared.as_deref(),
            &ni,
            nr,
            2 * choice.encr.keymat_len(),
        );
        // We initiated: TSi is our side, TSr the peer's.
        let child =
            self.child_sa(s, &choice, new_inbound_spi, &keymat, false, old.local_ts.clone(), old.remote_ts.clone());
        s.children.push(Child { sa: child.clone() });
        self.events.push_back(Event::ChildSaRekeyed { old_inbound_spi, new: child });
        // Retire the old pair: delete our inbound SPI.
        if let Some(pos) = s.children.iter().position(|c| c.sa.inbound_spi == old_inbound_spi) {
            let removed = s.children.remove(pos);
            self.inbound_spis.remove(&removed.sa.inbound_spi);
            self.events.push_back(Event::ChildSaDeleted {
                session: s.id,
                inbound_spi: removed.sa.inbound_spi,
                outbound_spi: removed.sa.outbound_spi,
            });
            let delete =
                Delete { protocol: protocol::ESP, spi_size: 4, spis: vec![old_inbound_spi.to_be_bytes().to_vec()] };
            self.request(now, s, exchange::INFORMATIONAL, vec![Payload::Delete(delete)], RequestKind::DeleteChild);
        }
        Ok(())
    }

    /// Deletes a session (administrative disconnect, session expiry): sends Delete and
    /// reports it closed when answered or given up.
    pub fn close(&mut self, now: Instant, session: SessionId) {
        let Some(mut s) = self.take_session(session) else { return };
        if matches!(s.state, State::Established) {
            let delete = Delete { protocol: protocol::IKE, spi_size: 0, spis: Vec::new() };
            // Window 1: an outstanding request is abandoned for the Delete.
            s.ike.outstanding = None;
            self.request(now, &mut s, exchange::INFORMATIONAL, vec![Payload::Delete(delete)], RequestKind::DeleteIke);
        } else {
            self.close_session(&mut s, CloseReason::LocalDeleted);
        }
        self.keep_or_close(s);
    }

    /// ESP arrived on this session: the peer is alive, no need for DPD. Cheap enough for
    /// every packet batch: the DPD timer is not moved, it fires and finds the peer alive.
    pub fn note_activity(&mut self, session: SessionId, now: Instant) {
        if let Some(s) = self.sessions.get_mut(&session) {
            s.last_heard = s.last_heard.max(now);
        }
    }

    /// The earliest time [`Responder::handle_timeout`] has work to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|(deadline, _)| *deadline)
    }

    fn session_deadline(&self, s: &Session) -> Option<Instant> {
        let mut deadline = match &s.state {
            State::HalfOpen { deadline } => Some(*deadline),
            State::AwaitingAuthorization(p) => Some(p.deadline),
            State::Eap(e) => Some(e.request.deadline),
            State::Established => Some(match &s.ike.outstanding {
                Some(o) => o.next_send,
                None => s.last_heard + self.config.timing.dpd_interval,
            }),
        };
        if let Some((_, retire_at)) = &s.retiring {
            deadline = deadline.map(|d| d.min(*retire_at));
        }
        deadline
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let mut due = Vec::new();
        while let Some(&(deadline, id)) = self.timers.first()
            && deadline <= now
        {
            self.timers.pop_first();
            due.push(id);
        }
        for id in due {
            let Some(mut s) = self.take_session(id) else { continue };
            self.session_timeout(now, &mut s);
            self.keep_or_close(s);
        }
    }

    fn session_timeout(&mut self, now: Instant, s: &mut Session) {
        if let Some((old, retire_at)) = &s.retiring
            && *retire_at <= now
        {
            self.by_spi.remove(&old.our_spi());
            s.retiring = None;
        }
        match &s.state {
            State::HalfOpen { deadline } if *deadline <= now => {
                self.close_session(s, CloseReason::PeerUnresponsive);
            }
            State::Eap(e) if e.request.deadline <= now => {
                if let EapPhase::AuthenticatorTurn { message_id } = e.phase {
                    let n = error_notify(notify::AUTHENTICATION_FAILED);
                    self.respond(s, false, exchange::IKE_AUTH, message_id, vec![n]);
                }
                let reason =
                    if s.driver_knows { CloseReason::AuthorizationTimeout } else { CloseReason::PeerUnresponsive };
                self.close_session(s, reason);
            }
            State::AwaitingAuthorization(p) if p.deadline <= now => {
                let message_id = p.message_id;
                self.respond(
                    s,
                    false,
                    exchange::IKE_AUTH,
                    message_id,
                    vec![error_notify(notify::AUTHENTICATION_FAILED)],
                );
                self.close_session(s, CloseReason::AuthorizationTimeout);
            }
            State::Established => {
                let timing = self.config.timing;
                match &mut s.ike.outstanding {
                    Some(o) if o.next_send <= now => {
                        if o.sends >= timing.retransmit_tries {
                            self.close_session(s, CloseReason::PeerUnresponsive);
                            return;
                        }
                        o.sends += 1;
                        o.next_send = now + timing.retransmit_timeout * (1 << (o.sends - 1).min(8));
                        for message in o.datagrams.clone() {
                            self.transmits.push_back(Transmit { local: s.local, remote: s.remote, message });
                        }
                    }
                    Some(_) => {}
                    None if s.last_heard + timing.dpd_interval <= now => {
                        self.request(now, s, exchange::INFORMATIONAL, Vec::new(), RequestKind::Liveness);
                    }
                    None => {}
                }
            }
            _ => {}
        }
    }
}

/// The CP reply for a grant: address, DNS servers and split-tunnel subnets.
fn config_reply(grant: &Grant) -> Configuration {
    let mut attributes = Vec::new();
    if let Some(vip) = grant.virtual_ipv4 {
        attributes.push((cfg_attr::INTERNAL_IP4_ADDRESS, vip.octets().to_vec()));
    }
    for dns in &grant.dns {
        attributes.push((cfg_attr::INTERNAL_IP4_DNS, dns.octets().to_vec()));
    }
    for route in &grant.routes {
        if let IpNet::V4(net) = route
            && net.prefix_len() > 0
        {
            attributes.push((cfg_attr::INTERNAL_IP4_SUBNET, [net.network().octets(), net.netmask().octets()].concat()));
        }
    }
    Configuration { cfg_type: cfg_type::REPLY, attributes }
}

/// Seals an inner payload chain into one SK message, or into SKF fragments of at most
/// `fragment_size` bytes when given and needed (RFC 7383 §2.5).
pub(crate) fn seal_message(
    cipher: &mut SkCipher,
    header: Header,
    payloads: &[Payload],
    fragment_size: Option<usize>,
) -> Vec<Vec<u8>> {
    let (first, inner) = message::encode_chain(payloads);
    let whole_len = inner.len() + cipher.fragment_overhead();
    let chunk = match fragment_size {
        Some(size) if whole_len > size && size > cipher.fragment_overhead() + 16 => size - cipher.fragment_overhead(),
        _ => return cipher.seal(header, first, None, &inner).map(|m| vec![m]).unwrap_or_default(),
    };
    let pieces: Vec<&[u8]> = inner.chunks(chunk).collect();
    let total = pieces.len() as u16;
    pieces
        .iter()
        .enumerate()
        .filter_map(|(i, piece)| {
            let number = i as u16 + 1;
            let first_inner = if number == 1 { first } else { payload_type::NONE };
            cipher.seal(header, first_inner, Some((number, total)), piece).ok()
        })
        .collect()
}
