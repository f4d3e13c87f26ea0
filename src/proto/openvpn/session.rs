//! The server side of one OpenVPN client session: TLS handshakes over the reliable
//! control channel, key-method 2, authentication hand-off, PUSH_REPLY, renegotiation
//! and teardown. Sans-IO: the caller feeds packets and time, and drains packets to
//! send ([`ServerSession::poll_transmit`]) and [`Event`]s.
//!
//! The data channel itself is not here: the session hands out data keys
//! ([`Event::InstallKeys`]) and the data plane seals and opens packets with them.
//! Keepalive and dead-peer detection also live in the data plane, which sees traffic.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::CertificateDer;
use tracing::debug;

use super::channel::{ChannelError, KeyChannel};
use super::data::DataKey;
use super::key_method::{
    ClientKeyMethod2, KeyMethodError, PeerInfo, ServerKeyMethod2, iv_proto, negotiate_cipher, server_options_string,
};
use super::keys::{EKM_LABEL, Key2, Role};
use super::packet::{Opcode, SessionId};
use super::push::{KeyDerivation, Negotiated, PushConfig, push_options, push_reply_messages};
use super::reliable::{Reliable, Timing};
use super::wrap::{UnwrapError, Wrap};
use crate::crypto::AeadAlgorithm;

/// How long the previous key keeps decrypting after a new one took over (or until
/// the next key takes over, whichever comes first).
const TRANSITION_WINDOW: Duration = Duration::from_secs(60);
/// How long a closing session waits for its last message (AUTH_FAILED, RESTART…) to
/// be acknowledged.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// Key states kept at once: the active key, its lame duck and one being negotiated.
const MAX_KEY_STATES: usize = 3;

/// Settings shared by every session of a gateway (swapped as a whole on reload).
pub struct ServerSettings {
    pub tls: Arc<rustls::ServerConfig>,
    pub data_ciphers: Vec<AeadAlgorithm>,
    /// Server-initiated renegotiation interval; None disables it.
    pub reneg_interval: Option<Duration>,
    pub handshake_window: Duration,
    pub reliable: Timing,
}

/// What the session asks of, or tells, its driver.
#[derive(Debug)]
pub enum Event {
    /// The client finished TLS and sent its credentials: decide with
    /// [`ServerSession::auth_decision`].
    Authenticate(AuthRequest),
    /// Keys for `key_id` are ready: install them for receiving.
    InstallKeys(NewKeys),
    /// Send data with `key_id` from now on.
    ActivateKey(u8),
    /// Forget `key_id`.
    RetireKey(u8),
    /// The session is over; the driver frees its resources.
    Closed(CloseReason),
}

#[derive(Debug)]
pub struct AuthRequest {
    pub username: String,
    pub password: String,
    pub peer_info: PeerInfo,
    /// The raw peer-info text, for logs.
    pub peer_info_text: String,
    /// The client's certificate (verified by TLS against the trusted roots).
    pub client_cert: Option<CertificateDer<'static>>,
    pub cipher: AeadAlgorithm,
    /// A renegotiation of an accepted session (the grant of the first decision stands).
    pub renegotiation: bool,
    /// From the start of this key's negotiation to this request (TLS and key method).
    pub handshake_duration: Duration,
}

#[derive(Debug)]
pub struct NewKeys {
    pub key_id: u8,
    pub cipher: AeadAlgorithm,
    pub key: Arc<DataKey>,
}

#[derive(Debug, Clone)]
pub enum AuthDecision {
    Accept(AuthGrant),
    /// Refuse; the reason reaches the client in `AUTH_FAILED,<reason>`.
    Reject {
        reason: String,
    },
}

#[derive(Debug, Clone)]
pub struct AuthGrant {
    pub push: PushConfig,
    pub peer_id: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    HandshakeTimeout,
    Tls(String),
    Protocol(String),
    AuthFailed(String),
    /// The client said goodbye (explicit-exit-notify).
    ClientExit,
    /// The driver closed it (revocation, admin, shutdown, replaced by a reconnect).
    Local(String),
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::HandshakeTimeout => f.write_str("TLS handshake did not finish in time"),
            CloseReason::Tls(e) => write!(f, "TLS error: {e}"),
            CloseReason::Protocol(e) => write!(f, "protocol error: {e}"),
            CloseReason::AuthFailed(e) => write!(f, "authentication failed: {e}"),
            CloseReason::ClientExit => f.write_str("client disconnected"),
            CloseReason::Local(e) => f.write_str(e),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Unwrap(#[from] UnwrapError),
    #[error("packet for another session")]
    WrongSession,
    #[error("packet for unknown key id {0}")]
    UnknownKey(u8),
    #[error("unexpected {0:?}")]
    UnexpectedOpcode(Opcode),
    #[error("session closed")]
    Closed,
    #[error("cannot start TLS: {0}")]
    Tls(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// TLS handshake and key-method exchange under way.
    Negotiating,
    /// Keys derived; waiting for the authentication decision (first key only).
    AwaitingAuth,
    /// Keys installed for receiving.
    Established,
}

struct KeyState {
    chan: KeyChannel,
    phase: Phase,
    keys: Option<Arc<DataKey>>,
    installed: bool,
    /// When its negotiation began (the resets were exchanged, or a SOFT_RESET).
    started: Instant,
    /// When this key started sending, if it has.
    active_since: Option<Instant>,
    retire_at: Option<Instant>,
}

struct Client {
    peer_info: PeerInfo,
    cipher: AeadAlgorithm,
    ekm: bool,
    cert: Option<CertificateDer<'static>>,
}

enum Auth {
    Pending,
    Accepted { grant: AuthGrant, negotiated: Negotiated },
    Rejected,
}

pub struct ServerSession {
    settings: Arc<ServerSettings>,
    local_sid: SessionId,
    remote_sid: SessionId,
    wrap: Wrap,
    keys: Vec<KeyState>,
    send_key: Option<u8>,
    client: Option<Client>,
    auth: Auth,
    push_requested: bool,
    push_sent: bool,
    /// Fraction (0.9–1.0) of the reneg interval used, so that sessions started
    /// together do not all renegotiate at once.
    reneg_jitter: f64,
    closing: Option<(Instant, CloseReason)>,
    closed: bool,
    events: VecDeque<Event>,
    scratch: Vec<u8>,
}

impl ServerSession {
    /// A session whose resets (message id 0 each way) were already exchanged; the
    /// client's next packet carries its ClientHello.
    pub fn new(
        settings: Arc<ServerSettings>,
        local_sid: SessionId,
        remote_sid: SessionId,
        wrap: Wrap,
        now: Instant,
    ) -> Result<Self, rustls::Error> {
        let tls = rustls::ServerConnection::new(settings.tls.clone())?;
        let chan = KeyChannel::new(0, tls.into(), Reliable::after_resets(settings.reliable), now);
        let mut jitter = [0u8; 2];
        let _ = aws_lc_rs::rand::fill(&mut jitter);
        Ok(ServerSession {
            reneg_jitter: 0.9 + 0.1 * f64::from(u16::from_be_bytes(jitter)) / f64::from(u16::MAX),
            settings,
            local_sid,
            remote_sid,
            wrap,
            keys: vec![KeyState::new(chan, now)],
            send_key: None,
            client: None,
            auth: Auth::Pending,
            push_requested: false,
            push_sent: false,
            closing: None,
            closed: false,
            events: VecDeque::new(),
            scratch: Vec::new(),
        })
    }

    pub fn local_session_id(&self) -> SessionId {
        self.local_sid
    }

    pub fn remote_session_id(&self) -> SessionId {
        self.remote_sid
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// The key data is being sent with.
    pub fn send_key_id(&self) -> Option<u8> {
        self.send_key
    }

    /// Settings for future key states (after a reload).
    pub fn set_settings(&mut self, settings: Arc<ServerSettings>) {
        self.settings = settings;
    }

    pub fn negotiated(&self) -> Option<&Negotiated> {
        match &self.auth {
            Auth::Accepted { negotiated, .. } => Some(negotiated),
            _ => None,
        }
    }

    pub fn peer_info(&self) -> Option<&PeerInfo> {
        self.client.as_ref().map(|c| &c.peer_info)
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Processes one control packet (anything but P_DATA) from the client.
    pub fn handle_packet(&mut self, now: Instant, packet: &[u8]) -> Result<(), SessionError> {
        if self.closed {
            return Err(SessionError::Closed);
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        let result = self.handle_packet_inner(now, packet, &mut scratch);
        self.scratch = scratch;
        result
    }

    fn handle_packet_inner(&mut self, now: Instant, packet: &[u8], scratch: &mut Vec<u8>) -> Result<(), SessionError> {
        let (header, body) = match self.wrap.open(packet, Some(self.remote_sid), scratch) {
            Err(UnwrapError::OtherSession) => return Err(SessionError::WrongSession),
            other => other?,
        };
        if !body.acks.is_empty() && body.remote_session_id != Some(self.local_sid) {
            return Err(SessionError::WrongSession);
        }
        let idx = match header.opcode {
            Opcode::ControlV1 | Opcode::AckV1 | Opcode::HardResetClientV2 => {
                self.key_index(header.key_id).ok_or(SessionError::UnknownKey(header.key_id))?
            }
            Opcode::SoftResetV1 => match self.key_index(header.key_id) {
                Some(i) => i,
                None => self.start_key_state(now, header.key_id)?,
            },
            other => return Err(SessionError::UnexpectedOpcode(other)),
        };
        let ks = &mut self.keys[idx];
        ks.chan.reliable.on_acks(body.acks.as_slice());
        if let Some(id) = body.message_id {
            ks.chan.reliable.receive(id, header.opcode, body.payload);
        }
        if let Err(e) = ks.chan.deliver() {
            // Let the TLS alert, if any, go out before closing.
            ks.chan.flush_tls();
            self.close_now(match e {
                ChannelError::Tls(m) => CloseReason::Tls(m),
                other => CloseReason::Protocol(other.to_string()),
            });
            return Ok(());
        }
        self.process_cleartext(now, idx);
        if let Some(ks) = self.keys.get_mut(idx) {
            ks.chan.flush_tls();
        }
        self.check_activation(now);
        self.finish_closing(now);
        Ok(())
    }

    fn key_index(&self, key_id: u8) -> Option<usize> {
        self.keys.iter().position(|k| k.chan.key_id == key_id)
    }

    /// Starts a new key state (renegotiation) and sends our SOFT_RESET for it.
    fn start_key_state(&mut self, now: Instant, key_id: u8) -> Result<usize, SessionError> {
        if key_id == 0 || self.keys.iter().any(|k| k.phase != Phase::Established) {
            // Key id 0 is only for the first key, and one negotiation at a time.
            return Err(SessionError::UnknownKey(key_id));
        }
        if self.keys.len() >= MAX_KEY_STATES {
            // Drop the oldest lame duck to make room.
            if let Some(i) = self.keys.iter().position(|k| Some(k.chan.key_id) != self.send_key) {
                let old = self.keys.remove(i);
                self.events.push_back(Event::RetireKey(old.chan.key_id));
            }
        }
        let tls =
            rustls::ServerConnection::new(self.settings.tls.clone()).map_err(|e| SessionError::Tls(e.to_string()))?;
        let mut chan = KeyChannel::new_with_timing(key_id, tls.into(), self.settings.reliable, now);
        chan.reliable.send(Opcode::SoftResetV1, Vec::new());
        self.keys.push(KeyState::new(chan, now));
        debug!(key_id, "renegotiation started");
        Ok(self.keys.len() - 1)
    }

    /// Starts a server-initiated renegotiation now (e.g. when the packet-id space of
    /// the current key runs low).
    pub fn renegotiate(&mut self, now: Instant) {
        if self.closed || self.closing.is_some() || !matches!(self.auth, Auth::Accepted { .. }) {
            return;
        }
        let latest = self.keys.iter().max_by_key(|k| k.chan.started).map_or(0, |k| k.chan.key_id);
        let next = if latest >= 7 { 1 } else { latest + 1 };
        let _ = self.start_key_state(now, next);
    }

    fn process_cleartext(&mut self, now: Instant, idx: usize) {
        loop {
            let Some(ks) = self.keys.get_mut(idx) else { return };
            if ks.keys.is_none() {
                if !ks.chan.handshake_done() || ks.chan.cleartext.is_empty() {
                    return;
                }
                match ClientKeyMethod2::parse(&ks.chan.cleartext) {
                    Ok((km2, used)) => {
                        ks.chan.cleartext.drain(..used);
                        self.on_client_key_method(now, idx, km2);
                        if self.closing.is_some() || self.closed {
                            return;
                        }
                    }
                    Err(KeyMethodError::Incomplete) => return,
                    Err(e) => {
                        self.close_now(CloseReason::Protocol(format!("bad key-method message: {e}")));
                        return;
                    }
                }
            } else {
                let Some(msg) = ks.chan.take_text() else { return };
                self.on_control_message(now, &msg);
                if self.closed {
                    return;
                }
            }
        }
    }

    fn on_client_key_method(&mut self, now: Instant, idx: usize, km2: ClientKeyMethod2) {
        let first = self.client.is_none();
        let leaf = match &self.keys[idx].chan.tls {
            rustls::Connection::Server(c) => {
                c.peer_certificates().and_then(|c| c.first()).map(|c| c.clone().into_owned())
            }
            rustls::Connection::Client(_) => None,
        };
        let peer_info = PeerInfo::parse(&km2.peer_info);
        let cipher = match &self.client {
            Some(c) => Some(c.cipher),
            None => negotiate_cipher(&self.settings.data_ciphers, &peer_info),
        };
        // Our key-method message goes first in every case: a client reads the first
        // cleartext as one, even when what follows is AUTH_FAILED.
        let mut randoms = [0u8; 64];
        aws_lc_rs::rand::fill(&mut randoms).expect("the system RNG works");
        let ours = ServerKeyMethod2 {
            random1: randoms[..32].try_into().expect("32 bytes"),
            random2: randoms[32..].try_into().expect("32 bytes"),
            options: server_options_string(
                &km2.options,
                cipher.or(self.settings.data_ciphers.first().copied()).unwrap_or(AeadAlgorithm::Aes256Gcm),
            ),
        };
        self.keys[idx].chan.write_message(&ours.encode());
        if first {
            let Some(cipher) = cipher else {
                let offered =
                    if peer_info.ciphers.is_empty() { "none".to_string() } else { peer_info.ciphers.join(":") };
                let allowed: Vec<&str> = self.settings.data_ciphers.iter().map(|c| c.openvpn_name()).collect();
                self.reject(
                    now,
                    format!("no shared data cipher (client offers {offered}; gateway allows {})", allowed.join(":")),
                );
                return;
            };
            let ekm = peer_info.has(iv_proto::TLS_KEY_EXPORT);
            self.client = Some(Client { peer_info, cipher, ekm, cert: leaf.clone() });
        } else if self.client.as_ref().and_then(|c| c.cert.as_ref()) != leaf.as_ref() {
            self.close_now(CloseReason::Protocol("client certificate changed during renegotiation".into()));
            return;
        }
        let Some(client) = self.client.as_ref() else { return };
        let (cipher, ekm) = (client.cipher, client.ekm);
        let ks = &mut self.keys[idx];
        let key2 = if ekm {
            match ks.chan.export_data_keys(EKM_LABEL) {
                Ok(bytes) => Key2::from_ekm(bytes),
                Err(e) => {
                    self.close_now(CloseReason::Tls(format!("keying material export failed: {e}")));
                    return;
                }
            }
        } else {
            Key2::from_openvpn_prf(
                &km2.pre_master,
                &km2.random1,
                &ours.random1,
                &km2.random2,
                &ours.random2,
                &self.remote_sid,
                &self.local_sid,
            )
        };
        match DataKey::new(ks.chan.key_id, &key2.direction_keys(cipher, Role::Server)) {
            Ok(k) => ks.keys = Some(Arc::new(k)),
            Err(e) => {
                self.close_now(CloseReason::Protocol(format!("cannot build data keys: {e}")));
                return;
            }
        }
        // Every key, the first and each renegotiated one, waits for a decision: the
        // client sends its credentials again, and a token may have expired meanwhile.
        ks.phase = Phase::AwaitingAuth;
        let client = self.client.as_ref().expect("set above");
        self.events.push_back(Event::Authenticate(AuthRequest {
            username: km2.username,
            password: km2.password,
            peer_info: client.peer_info.clone(),
            peer_info_text: km2.peer_info,
            client_cert: client.cert.clone(),
            cipher,
            renegotiation: !first,
            handshake_duration: now.saturating_duration_since(ks.started),
        }));
    }

    /// The driver's answer to [`Event::Authenticate`].
    pub fn auth_decision(&mut self, now: Instant, decision: AuthDecision) {
        if self.closed || self.closing.is_some() || matches!(self.auth, Auth::Rejected) {
            return;
        }
        match decision {
            AuthDecision::Reject { reason } => self.reject(now, reason),
            AuthDecision::Accept(_) if matches!(self.auth, Auth::Accepted { .. }) => {
                // A renegotiated key passed: it may now carry data.
                for ks in &mut self.keys {
                    if ks.phase == Phase::AwaitingAuth {
                        ks.phase = Phase::Established;
                    }
                }
                self.install_ready_keys();
            }
            AuthDecision::Accept(grant) => {
                let Some(client) = &self.client else { return };
                let negotiated = Negotiated {
                    cipher: client.cipher,
                    peer_id: client.peer_info.has(iv_proto::DATA_V2).then_some(grant.peer_id),
                    key_derivation: if client.ekm {
                        KeyDerivation::Ekm { protocol_flags: client.peer_info.has(iv_proto::CC_EXIT_NOTIFY) }
                    } else {
                        KeyDerivation::Prf
                    },
                    push_mtu: client.peer_info.mtu.is_some(),
                };
                let request_push = client.peer_info.has(iv_proto::REQUEST_PUSH);
                self.auth = Auth::Accepted { grant, negotiated };
                for ks in &mut self.keys {
                    if ks.phase == Phase::AwaitingAuth {
                        ks.phase = Phase::Established;
                    }
                }
                self.install_ready_keys();
                if self.push_requested || request_push {
                    self.send_push_reply(now);
                }
            }
        }
    }

    fn install_ready_keys(&mut self) {
        if !matches!(self.auth, Auth::Accepted { .. }) {
            return;
        }
        let Some(cipher) = self.client.as_ref().map(|c| c.cipher) else { return };
        for ks in &mut self.keys {
            if ks.phase == Phase::Established
                && !ks.installed
                && let Some(key) = ks.keys.clone()
            {
                ks.installed = true;
                self.events.push_back(Event::InstallKeys(NewKeys { key_id: ks.chan.key_id, cipher, key }));
            }
        }
    }

    fn on_control_message(&mut self, now: Instant, msg: &str) {
        match msg {
            "PUSH_REQUEST" => {
                if matches!(self.auth, Auth::Accepted { .. }) {
                    if !self.push_sent {
                        self.send_push_reply(now);
                    }
                } else {
                    self.push_requested = true;
                }
            }
            "EXIT" => self.close_now(CloseReason::ClientExit),
            other => debug!(message = other, "ignoring control message"),
        }
    }

    fn send_push_reply(&mut self, now: Instant) {
        let Auth::Accepted { grant, negotiated } = &self.auth else { return };
        let messages = push_reply_messages(&push_options(&grant.push, negotiated));
        let Some(idx) = self.keys.iter().position(|k| k.phase == Phase::Established) else { return };
        let ks = &mut self.keys[idx];
        for m in &messages {
            ks.chan.write_text(m);
        }
        ks.chan.flush_tls();
        self.push_sent = true;
        let key_id = ks.chan.key_id;
        self.activate(now, key_id);
    }

    /// Switches sending to `key_id`; the previous key decrypts for a while longer.
    fn activate(&mut self, now: Instant, key_id: u8) {
        if self.send_key == Some(key_id) {
            return;
        }
        // One lame duck at most, as in OpenVPN: an older one goes now. This also keeps
        // the 7 key ids from wrapping onto a key still in use.
        let mut retired = Vec::new();
        self.keys.retain(|k| {
            let lame = k.retire_at.is_some();
            if lame {
                retired.push(k.chan.key_id);
            }
            !lame
        });
        self.events.extend(retired.into_iter().map(Event::RetireKey));
        if let Some(old) = self.send_key.and_then(|id| self.key_index(id)) {
            self.keys[old].retire_at = Some(now + TRANSITION_WINDOW);
        }
        if let Some(i) = self.key_index(key_id) {
            self.keys[i].active_since = Some(now);
        }
        self.send_key = Some(key_id);
        self.events.push_back(Event::ActivateKey(key_id));
    }

    /// A renegotiated key takes over once the client has everything it needs (our
    /// key-method message is acknowledged), so it can decrypt what we send with it.
    fn check_activation(&mut self, now: Instant) {
        if !self.push_sent {
            return;
        }
        let ready = self
            .keys
            .iter()
            .find(|k| k.installed && k.active_since.is_none() && k.retire_at.is_none() && k.chan.reliable.all_acked())
            .map(|k| k.chan.key_id);
        if let Some(id) = ready {
            self.activate(now, id);
        }
    }

    /// The data plane authenticated a packet under `key_id`: if that key is new, the
    /// client already sends with it, so we can too.
    pub fn data_received(&mut self, now: Instant, key_id: u8) {
        if self.push_sent
            && self.send_key != Some(key_id)
            && let Some(k) = self.keys.iter().find(|k| k.chan.key_id == key_id)
            && k.installed
            && k.active_since.is_none()
            && k.retire_at.is_none()
        {
            self.activate(now, key_id);
        }
    }

    fn reject(&mut self, now: Instant, reason: String) {
        self.auth = Auth::Rejected;
        let notice = if reason.is_empty() { "AUTH_FAILED".to_string() } else { format!("AUTH_FAILED,{reason}") };
        self.close(now, CloseReason::AuthFailed(reason), Some(&notice));
    }

    /// Ends the session. With `notice` (e.g. "RESTART", "HALT", "AUTH_FAILED,…"),
    /// the message is sent first and the session lingers briefly for its ACK.
    pub fn close(&mut self, now: Instant, reason: CloseReason, notice: Option<&str>) {
        if self.closed || self.closing.is_some() {
            return;
        }
        let chan_idx = self
            .send_key
            .and_then(|id| self.key_index(id))
            .or_else(|| self.keys.iter().rposition(|k| k.chan.handshake_done()));
        match (notice, chan_idx) {
            (Some(text), Some(i)) => {
                let chan = &mut self.keys[i].chan;
                chan.write_text(text);
                chan.flush_tls();
                self.closing = Some((now + CLOSE_LINGER, reason));
            }
            _ => self.close_now(reason),
        }
    }

    /// Ends a closing session once its last message is acknowledged or its linger
    /// time is up; true if the session is closed.
    fn finish_closing(&mut self, now: Instant) -> bool {
        if let Some((deadline, _)) = &self.closing
            && (*deadline <= now || self.keys.iter().all(|k| k.chan.reliable.all_acked()))
        {
            let (_, reason) = self.closing.take().expect("checked above");
            self.close_now(reason);
        }
        self.closed
    }

    fn close_now(&mut self, reason: CloseReason) {
        // A session already closing keeps the reason it was closed for.
        let reason = self.closing.take().map_or(reason, |(_, r)| r);
        if !self.closed {
            self.closed = true;
            self.events.push_back(Event::Closed(reason));
        }
    }

    /// The next control packet to send.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        let (local, remote) = (self.local_sid, self.remote_sid);
        for bare_ack in [false, true] {
            for ks in &mut self.keys {
                if let Some(p) = ks.chan.poll_packet(now, bare_ack, &mut self.wrap, local, remote, &mut self.scratch) {
                    return Some(p);
                }
            }
        }
        None
    }

    /// When [`Self::handle_timeout`] should next run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed {
            return None;
        }
        let mut t: Option<Instant> = self.closing.as_ref().map(|(d, _)| *d);
        let mut earliest = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        for ks in &self.keys {
            earliest(ks.chan.reliable.next_timeout());
            if ks.phase != Phase::Established {
                earliest(Some(ks.chan.started + self.settings.handshake_window));
            }
            earliest(ks.retire_at);
        }
        earliest(self.reneg_due());
        t
    }

    fn reneg_due(&self) -> Option<Instant> {
        let interval = self.settings.reneg_interval?;
        if self.keys.iter().any(|k| k.phase != Phase::Established) || self.closing.is_some() {
            return None;
        }
        let since = self.send_key.and_then(|id| self.keys.iter().find(|k| k.chan.key_id == id))?.active_since?;
        Some(since + interval.mul_f64(self.reneg_jitter))
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.closed {
            return;
        }
        if self.finish_closing(now) {
            return;
        }
        let window = self.settings.handshake_window;
        if let Some(stuck) =
            self.keys.iter().position(|k| k.phase != Phase::Established && k.chan.started + window <= now)
        {
            if self.keys[stuck].phase == Phase::AwaitingAuth {
                self.reject(now, "authentication timed out".into());
            } else if self.send_key.is_none() {
                self.close_now(CloseReason::HandshakeTimeout);
            } else {
                self.close_now(CloseReason::Protocol("renegotiation did not finish in time".into()));
            }
            return;
        }
        let mut retired = Vec::new();
        self.keys.retain(|k| match k.retire_at {
            Some(t) if t <= now => {
                retired.push(k.chan.key_id);
                false
            }
            _ => true,
        });
        self.events.extend(retired.into_iter().map(Event::RetireKey));
        if self.reneg_due().is_some_and(|t| t <= now) {
            self.renegotiate(now);
        }
    }
}

impl KeyState {
    fn new(chan: KeyChannel, now: Instant) -> Self {
        KeyState {
            chan,
            phase: Phase::Negotiating,
            keys: None,
            installed: false,
            started: now,
            active_since: None,
            retire_at: None,
        }
    }
}
