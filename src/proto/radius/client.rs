//! The sans-IO RADIUS client (PROTOCOLS.md §5.8): requests in, datagrams out, replies
//! matched and verified, retransmission with exponential backoff, failover across
//! servers. It owns no socket and reads no clock: the caller passes `now`, sends what
//! [`RadiusClient::poll_transmit`] returns from one UDP socket, feeds every datagram
//! received on it to [`RadiusClient::handle_datagram`], and calls
//! [`RadiusClient::handle_timeout`] at [`RadiusClient::poll_timeout`].
//!
//! - A retransmission to the same server repeats the same bytes: same identifier,
//!   Request Authenticator and Acct-Delay-Time (RFC 5080 §2.2.1). Moving to another server
//!   makes a new packet.
//! - Each server destination (address and port) has its own 256 identifiers; requests
//!   beyond that wait in line for one.
//! - New requests start at the server that answered last (sticky failover). A server
//!   that lets a request time out is skipped by new requests for `dead_time`, then tried
//!   again; a server that is skipped is still tried last rather than not at all.
//! - A reply is accepted only from the destination the request went to, with its
//!   identifier, a correct Response Authenticator and a correct Message-Authenticator.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::auth::{VerifyError, verify_reply};
use super::packet::{AUTHENTICATOR_LEN, Code, DecodeError, Packet, attr};
use super::reply::{Reply, ReplyError};
use super::request::{Request, RequestKind};

/// One RADIUS server.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Where Access-Requests go (usually port 1812).
    pub auth_address: SocketAddr,
    /// Where Accounting-Requests go (usually port 1813).
    pub acct_address: SocketAddr,
    pub secret: Vec<u8>,
}

/// Leaves the shared secret out of logs.
impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("auth_address", &self.auth_address)
            .field("acct_address", &self.acct_address)
            .field("secret", &format_args!("<{} bytes>", self.secret.len()))
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// In order of preference.
    pub servers: Vec<ServerConfig>,
    /// The average wait per try. A server gets `timeout × tries_per_server` in all,
    /// split with exponential backoff: with 5 s and 3 tries, the tries wait 2.1, 4.3 and
    /// 8.6 s, so two dead servers cost 30 s before the request fails.
    pub timeout: Duration,
    pub tries_per_server: u32,
    /// How long new requests skip a server that let a request time out.
    pub dead_time: Duration,
    /// Refuse Access-Accept, -Reject and -Challenge without a Message-Authenticator (the
    /// BlastRADIUS defence). Replies carrying EAP-Message need one regardless.
    pub require_message_authenticator: bool,
}

impl ClientConfig {
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
    pub const DEFAULT_TRIES_PER_SERVER: u32 = 3;
    pub const DEFAULT_DEAD_TIME: Duration = Duration::from_secs(60);
    pub const MAX_TRIES_PER_SERVER: u32 = 10;
    pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

    /// The defaults: 5 s per try, 3 tries per server, 60 s dead time, and
    /// Message-Authenticator required.
    pub fn new(servers: Vec<ServerConfig>) -> Self {
        ClientConfig {
            servers,
            timeout: Self::DEFAULT_TIMEOUT,
            tries_per_server: Self::DEFAULT_TRIES_PER_SERVER,
            dead_time: Self::DEFAULT_DEAD_TIME,
            require_message_authenticator: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("no RADIUS server configured")]
    NoServers,
    #[error("RADIUS tries per server must be 1 to {max}, not {0}", max = ClientConfig::MAX_TRIES_PER_SERVER)]
    BadTries(u32),
    #[error("RADIUS timeout must be above zero and at most an hour, not {0:?}")]
    BadTimeout(Duration),
    #[error("RADIUS server {0} has an empty shared secret")]
    EmptySecret(SocketAddr),
}

/// Names a request from [`RadiusClient::send`] to its event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(u64);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RADIUS request #{}", self.0)
    }
}

/// Which server a request may go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerChoice {
    /// The preferred server, failing over to the others.
    Any,
    /// Only this one (an index into [`ClientConfig::servers`]): every Access-Request after
    /// the first of an EAP or challenge conversation, since its State only means
    /// something to the server that issued it. Take the index from the previous
    /// [`ClientEvent::Reply`].
    Pinned(usize),
}

// One per request: boxing the reply would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    Reply {
        id: RequestId,
        /// The index of the server that answered.
        server: usize,
        reply: Reply,
        /// The whole reply, for attributes [`Reply`] does not interpret.
        packet: Packet,
    },
    Failed {
        id: RequestId,
        reason: FailureReason,
    },
}

/// One server a failed request went to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAttempt {
    pub address: SocketAddr,
    /// Transmissions; 0 when the request was moved on before its turn because the server
    /// had just failed another request.
    pub tries: u32,
    /// Why replies from it were refused, if any came.
    pub refused: Option<VerifyError>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureReason {
    /// No server gave a usable answer in time.
    NoAnswer { attempts: Vec<ServerAttempt> },
    /// A server answered authentically, but with something this client cannot use.
    BadReply { server: SocketAddr, error: ReplyError },
    /// [`ServerChoice::Pinned`] named a server that is not configured.
    NoSuchServer { index: usize, configured: usize },
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureReason::NoAnswer { attempts } => {
                f.write_str("no answer from RADIUS server")?;
                if attempts.len() > 1 {
                    f.write_str("s")?;
                }
                for (i, attempt) in attempts.iter().enumerate() {
                    let separator = if i == 0 { " " } else { ", " };
                    write!(f, "{separator}{}", attempt.address)?;
                    match attempt.tries {
                        0 => f.write_str(" (skipped: it had just stopped answering)")?,
                        1 => f.write_str(" (1 try")?,
                        n => write!(f, " ({n} tries")?,
                    }
                    if let Some(refused) = attempt.refused {
                        write!(f, "; its replies were refused: {refused}")?;
                    }
                    if attempt.tries > 0 {
                        f.write_str(")")?;
                    }
                }
                Ok(())
            }
            FailureReason::BadReply { server, error } => {
                write!(f, "RADIUS server {server} sent a reply that cannot be used: {error}")
            }
            FailureReason::NoSuchServer { index, configured } => {
                write!(f, "no RADIUS server number {index} (there are {configured})")
            }
        }
    }
}

impl std::error::Error for FailureReason {}

/// Why a datagram was not taken as a reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DropReason {
    #[error("not a RADIUS packet: {0}")]
    Malformed(#[from] DecodeError),
    #[error("no request with identifier {identifier} is waiting for a reply from {from} (late or duplicate reply?)")]
    NotPending { from: SocketAddr, identifier: u8 },
    #[error("{code} from {from} does not answer request identifier {identifier}")]
    UnexpectedCode { from: SocketAddr, identifier: u8, code: Code },
    #[error("reply from {from} refused: {error}")]
    Unauthentic { from: SocketAddr, error: VerifyError },
}

#[derive(Debug)]
struct Attempt {
    server: usize,
    tries: u32,
    refused: Option<VerifyError>,
}

#[derive(Debug)]
struct InFlight {
    destination: SocketAddr,
    identifier: u8,
    authenticator: [u8; AUTHENTICATOR_LEN],
    bytes: Vec<u8>,
    /// When the first transmission to this server went out.
    started: Instant,
    deadline: Instant,
}

#[derive(Debug)]
enum State {
    /// Between servers (only inside one call).
    Moving,
    /// In line for an identifier at this destination.
    Waiting(SocketAddr),
    InFlight(InFlight),
}

#[derive(Debug)]
struct Pending {
    request: Request,
    submitted: Instant,
    /// Servers still to try, in order.
    remaining: VecDeque<usize>,
    /// Servers tried so far; the last is the current one.
    attempts: Vec<Attempt>,
    state: State,
}

/// The 256 identifiers of one destination.
#[derive(Debug)]
struct IdentifierSpace {
    owners: Box<[Option<RequestId>; 256]>,
    /// Where the search for a free identifier starts: handing them out in rotation
    /// delays reuse, so a late reply is unlikely to meet a new request with its identifier.
    next: u8,
    waiting: VecDeque<RequestId>,
}

impl IdentifierSpace {
    fn new() -> Self {
        IdentifierSpace { owners: Box::new([None; 256]), next: 0, waiting: VecDeque::new() }
    }

    fn allocate(&mut self, id: RequestId) -> Option<u8> {
        let free = (0..=255u8).map(|k| self.next.wrapping_add(k)).find(|&i| self.owners[usize::from(i)].is_none())?;
        self.owners[usize::from(free)] = Some(id);
        self.next = free.wrapping_add(1);
        Some(free)
    }

    fn has_free(&self) -> bool {
        self.owners.iter().any(Option::is_none)
    }
}

#[derive(Debug)]
pub struct RadiusClient {
    config: ClientConfig,
    dead_until: Vec<Option<Instant>>,
    /// The server that answered last: new requests start there.
    preferred: usize,
    next_request: u64,
    pending: HashMap<RequestId, Pending>,
    identifiers: HashMap<SocketAddr, IdentifierSpace>,
    timers: BTreeSet<(Instant, RequestId)>,
    transmits: VecDeque<(SocketAddr, Vec<u8>)>,
    events: VecDeque<ClientEvent>,
}

impl RadiusClient {
    pub fn new(config: ClientConfig) -> Result<Self, ConfigError> {
        if config.servers.is_empty() {
            return Err(ConfigError::NoServers);
        }
        if !(1..=ClientConfig::MAX_TRIES_PER_SERVER).contains(&config.tries_per_server) {
            return Err(ConfigError::BadTries(config.tries_per_server));
        }
        if config.timeout.is_zero() || config.timeout > ClientConfig::MAX_TIMEOUT {
            return Err(ConfigError::BadTimeout(config.timeout));
        }
        if let Some(server) = config.servers.iter().find(|s| s.secret.is_empty()) {
            return Err(ConfigError::EmptySecret(server.auth_address));
        }
        Ok(RadiusClient {
            dead_until: vec![None; config.servers.len()],
            config,
            preferred: 0,
            next_request: 0,
            pending: HashMap::new(),
            identifiers: HashMap::new(),
            timers: BTreeSet::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        })
    }

    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Starts a request. Its outcome comes as exactly one [`ClientEvent`] with this id
    /// (unless cancelled).
    pub fn send(&mut self, now: Instant, request: Request, server: ServerChoice) -> RequestId {
        let id = RequestId(self.next_request);
        self.next_request += 1;
        let remaining = match server {
            ServerChoice::Any => self.failover_order(now),
            ServerChoice::Pinned(index) if index < self.config.servers.len() => VecDeque::from([index]),
            ServerChoice::Pinned(index) => {
                let configured = self.config.servers.len();
                self.events
                    .push_back(ClientEvent::Failed { id, reason: FailureReason::NoSuchServer { index, configured } });
                return id;
            }
        };
        self.pending
            .insert(id, Pending { request, submitted: now, remaining, attempts: Vec::new(), state: State::Moving });
        self.move_to_next_server(now, id);
        id
    }

    /// Forgets a request (its user went away): no event will come for it, and a late
    /// reply is dropped.
    pub fn cancel(&mut self, now: Instant, id: RequestId) {
        let Some(pending) = self.pending.remove(&id) else {
            return;
        };
        match pending.state {
            State::InFlight(flight) => {
                self.timers.remove(&(flight.deadline, id));
                self.release_identifier(now, flight.destination, flight.identifier);
            }
            State::Waiting(destination) => {
                if let Some(space) = self.identifiers.get_mut(&destination) {
                    space.waiting.retain(|&waiting| waiting != id);
                }
            }
            State::Moving => {}
        }
    }

    /// Takes a datagram received from `from`. `Ok` when it was the reply to a pending
    /// request (whose event is then ready); anything else is dropped, with the reason.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) -> Result<(), DropReason> {
        let packet = Packet::decode(datagram)?;
        let identifier = packet.identifier;
        let not_pending = DropReason::NotPending { from, identifier };
        let id = self
            .identifiers
            .get(&from)
            .and_then(|space| space.owners[usize::from(identifier)])
            .ok_or(not_pending.clone())?;
        let pending = self.pending.get_mut(&id).ok_or(not_pending.clone())?;
        let State::InFlight(flight) = &pending.state else {
            return Err(not_pending);
        };
        let kind = pending.request.kind();
        let expected = match kind {
            RequestKind::Access => {
                matches!(packet.code, Code::AccessAccept | Code::AccessReject | Code::AccessChallenge)
            }
            RequestKind::Accounting => packet.code == Code::AccountingResponse,
        };
        if !expected {
            return Err(DropReason::UnexpectedCode { from, identifier, code: packet.code });
        }
        let attempt = pending.attempts.last_mut().expect("a request in flight has an attempt");
        let server = attempt.server;
        let secret = &self.config.servers[server].secret;
        let length = packet.encoded_len(); // the Length field: decoding consumed exactly that
        let require_message_authenticator = kind == RequestKind::Access
            && (self.config.require_message_authenticator || packet.attribute(attr::EAP_MESSAGE).is_some());
        if let Err(error) =
            verify_reply(&datagram[..length], secret, &flight.authenticator, require_message_authenticator)
        {
            attempt.refused = Some(error);
            return Err(DropReason::Unauthentic { from, error });
        }
        let event = match Reply::from_packet(kind, &packet, secret, &flight.authenticator) {
            Ok(reply) => ClientEvent::Reply { id, server, reply, packet },
            Err(error) => ClientEvent::Failed { id, reason: FailureReason::BadReply { server: from, error } },
        };
        let (deadline, destination) = (flight.deadline, flight.destination);
        self.pending.remove(&id);
        self.timers.remove(&(deadline, id));
        self.dead_until[server] = None;
        self.preferred = server;
        self.events.push_back(event);
        self.release_identifier(now, destination, identifier);
        Ok(())
    }

    /// Retransmits, fails over and gives up as due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(deadline, id)) = self.timers.first() {
            if deadline > now {
                break;
            }
            self.timers.pop_first();
            self.on_deadline(now, id);
        }
    }

    /// The next datagram to send, and where.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// When [`Self::handle_timeout`] next has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|&(deadline, _)| deadline)
    }

    /// The servers a new unpinned request tries, in order: from the preferred one on,
    /// those not recently failed first, then the recently failed ones, soonest back first.
    fn failover_order(&self, now: Instant) -> VecDeque<usize> {
        let count = self.config.servers.len();
        let cyclic = (0..count).map(|k| (self.preferred + k) % count);
        let is_alive = |&server: &usize| self.dead_until[server].is_none_or(|until| until <= now);
        let mut order: VecDeque<usize> = cyclic.clone().filter(is_alive).collect();
        let mut dead: Vec<usize> = cyclic.filter(|s| !is_alive(s)).collect();
        dead.sort_by_key(|&server| self.dead_until[server]);
        order.extend(dead);
        order
    }

    fn destination(&self, server: usize, kind: RequestKind) -> SocketAddr {
        let config = &self.config.servers[server];
        match kind {
            RequestKind::Access => config.auth_address,
            RequestKind::Accounting => config.acct_address,
        }
    }

    /// Sends a request to the next server on its list, or fails it if there is none.
    fn move_to_next_server(&mut self, now: Instant, id: RequestId) {
        let Some(pending) = self.pending.get_mut(&id) else {
            return;
        };
        pending.state = State::Moving;
        let Some(server) = pending.remaining.pop_front() else {
            let Some(pending) = self.pending.remove(&id) else {
                return;
            };
            let attempts = pending
                .attempts
                .into_iter()
                .map(|a| ServerAttempt {
                    address: self.destination(a.server, pending.request.kind()),
                    tries: a.tries,
                    refused: a.refused,
                })
                .collect();
            self.events.push_back(ClientEvent::Failed { id, reason: FailureReason::NoAnswer { attempts } });
            return;
        };
        pending.attempts.push(Attempt { server, tries: 0, refused: None });
        let kind = pending.request.kind();
        let destination = self.destination(server, kind);
        let space = self.identifiers.entry(destination).or_insert_with(IdentifierSpace::new);
        match space.allocate(id) {
            Some(identifier) => self.transmit_first(now, id, destination, identifier),
            None => {
                space.waiting.push_back(id);
                if let Some(pending) = self.pending.get_mut(&id) {
                    pending.state = State::Waiting(destination);
                }
            }
        }
    }

    /// First transmission to the current server: a new packet (identifier, Request
    /// Authenticator, hidden password, Acct-Delay-Time).
    fn transmit_first(&mut self, now: Instant, id: RequestId, destination: SocketAddr, identifier: u8) {
        let deadline = try_deadline(&self.config, now, 1);
        let Some(pending) = self.pending.get_mut(&id) else {
            return;
        };
        let attempt = pending.attempts.last_mut().expect("a request moving to a server has an attempt");
        attempt.tries = 1;
        let mut nonce = [0u8; AUTHENTICATOR_LEN];
        aws_lc_rs::rand::fill(&mut nonce).expect("the system RNG works");
        let waited = now.saturating_duration_since(pending.submitted);
        let secret = &self.config.servers[attempt.server].secret;
        let (bytes, authenticator) = pending.request.encode(identifier, secret, nonce, waited);
        self.transmits.push_back((destination, bytes.clone()));
        self.timers.insert((deadline, id));
        pending.state =
            State::InFlight(InFlight { destination, identifier, authenticator, bytes, started: now, deadline });
    }

    fn on_deadline(&mut self, now: Instant, id: RequestId) {
        let tries_per_server = self.config.tries_per_server;
        let Some(pending) = self.pending.get_mut(&id) else {
            return;
        };
        let State::InFlight(flight) = &mut pending.state else {
            return;
        };
        let attempt = pending.attempts.last_mut().expect("a request in flight has an attempt");
        if attempt.tries < tries_per_server {
            attempt.tries += 1;
            flight.deadline = try_deadline(&self.config, flight.started, attempt.tries);
            self.timers.insert((flight.deadline, id));
            self.transmits.push_back((flight.destination, flight.bytes.clone()));
            return;
        }
        let (destination, identifier, server) = (flight.destination, flight.identifier, attempt.server);
        self.dead_until[server] = Some(now + self.config.dead_time);
        self.move_to_next_server(now, id);
        self.release_identifier(now, destination, identifier);
    }

    /// Frees an identifier and hands free identifiers to the requests waiting in line,
    /// moving on those whose server has meanwhile stopped answering.
    fn release_identifier(&mut self, now: Instant, destination: SocketAddr, identifier: u8) {
        let Some(space) = self.identifiers.get_mut(&destination) else {
            return;
        };
        space.owners[usize::from(identifier)] = None;
        loop {
            let Some(space) = self.identifiers.get_mut(&destination) else {
                return;
            };
            if !space.has_free() {
                return;
            }
            let Some(next) = space.waiting.pop_front() else {
                return;
            };
            let Some(pending) = self.pending.get(&next) else {
                continue;
            };
            let server = pending.attempts.last().expect("a waiting request has an attempt").server;
            let server_failed = self.dead_until[server].is_some_and(|until| until > now);
            if server_failed && !pending.remaining.is_empty() {
                self.move_to_next_server(now, next);
            } else if let Some(identifier) = space.allocate(next) {
                self.transmit_first(now, next, destination, identifier);
            }
        }
    }
}

/// When the `tries_done`-th try to a server first tried at `started` times out: the
/// per-server budget `timeout × tries` split 1 : 2 : 4 …, so that the last try ends
/// exactly at the budget (tries and timeout are bounded by [`RadiusClient::new`]).
fn try_deadline(config: &ClientConfig, started: Instant, tries_done: u32) -> Instant {
    let tries = config.tries_per_server;
    started + config.timeout * tries * ((1 << tries_done) - 1) / ((1 << tries) - 1)
}
