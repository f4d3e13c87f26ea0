//! The gateway's side of one SSTP connection (MS-SSTP 3.3, PROTOCOLS.md §2.4), with the
//! PPP link it carries. Sans-IO: the driver feeds the bytes TLS decrypted
//! ([`SstpServer::handle_input`]) and time, writes what [`SstpServer::poll_transmit`]
//! returns into TLS, and handles [`Event`]s, answering those that ask something.
//!
//! States: HTTP request → CALL_CONNECT_REQUEST pending → CALL_CONNECTED pending (PPP
//! negotiates; control frames only) → connected (IPv4 flows once IPCP is up too).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use tracing::debug;

use super::binding::{self, BindingError, CertHashes, HashProtocol, Hlak};
use super::http::{self, HttpError};
use super::packet::{self, MessageType, Packet, PacketError, attribute, status};
use crate::proto::ppp::packet::{FRAME_HEADER_LEN, Frame, protocol};
use crate::proto::ppp::{self, AuthVerdict, EapResult, MsChapV2Verify, NetworkConfig, PppServer};

/// After sending CALL_ABORT, how long before closing (MS-SSTP 3.3.2 abort timer 1).
const ABORT_WAIT: Duration = Duration::from_secs(3);
/// After the peer's CALL_ABORT or CALL_DISCONNECT, how long before closing (timer 2).
const PEER_CLOSE_WAIT: Duration = Duration::from_secs(1);
/// After sending CALL_DISCONNECT, how long to wait for its ack (disconnect timer 1).
const DISCONNECT_WAIT: Duration = Duration::from_secs(5);
/// CALL_CONNECT_NAKs before giving up (MS-SSTP leaves the count to the server).
const MAX_CONNECT_NAKS: u32 = 3;

/// Where [`SstpServer::handle_input_with`] delivers IPv4 packets.
pub type PacketSink<'a> = &'a mut dyn FnMut(&[u8]);

#[derive(Debug, Clone)]
pub struct SstpSettings {
    /// Hashes of the gateway's TLS leaf certificate (what the client binds to).
    pub cert_hashes: CertHashes,
    /// Offer SHA-1 crypto binding besides SHA-256 (only for old clients).
    pub allow_sha1: bool,
    pub ppp: ppp::ServerConfig,
    /// From the connection's start to the HTTP request and CALL_CONNECT_REQUEST, and
    /// from CALL_CONNECT_ACK to a verified CALL_CONNECTED.
    pub negotiation_timeout: Duration,
    /// Silence after which an ECHO_REQUEST goes out, and then after which the
    /// connection is aborted.
    pub hello_interval: Duration,
}

impl SstpSettings {
    pub fn new(cert_hashes: CertHashes) -> Self {
        SstpSettings {
            cert_hashes,
            allow_sha1: false,
            ppp: ppp::ServerConfig::default(),
            negotiation_timeout: Duration::from_secs(60),
            hello_interval: Duration::from_secs(60),
        }
    }

    fn offered_hashes(&self) -> u8 {
        HashProtocol::Sha256.bit() | if self.allow_sha1 { HashProtocol::Sha1.bit() } else { 0 }
    }
}

#[derive(Debug)]
pub enum Event {
    /// The HTTP request was accepted.
    Accepted { correlation_id: Option<String> },
    /// Check an MS-CHAPv2 Response; answer with [`SstpServer::answer_ms_chap_v2`].
    VerifyMsChapV2(MsChapV2Verify),
    /// An EAP packet for RADIUS; answer with [`SstpServer::eap_to_peer`] or
    /// [`SstpServer::eap_result`].
    EapFromPeer(Vec<u8>),
    /// PPP authentication succeeded: assign addresses with [`SstpServer::assign_network`].
    Authenticated { user: String },
    /// Crypto binding verified and IPCP up: a session like any other tunnel's.
    Established { user: String, address: Ipv4Addr },
    /// An IPv4 packet from the client.
    TunnelPacket(Vec<u8>),
    /// Something from the client was dropped; the connection goes on.
    Dropped(DropReason),
    /// The connection is over: close TLS once the last bytes are written.
    Closed(CloseReason),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    Http(HttpError),
    /// The stream cannot be followed any more.
    Framing(PacketError),
    NegotiationTimeout,
    /// The client went silent.
    HelloTimeout,
    /// The client asked for another encapsulated protocol than PPP, repeatedly.
    ProtocolNotSupported,
    CryptoBinding(BindingError),
    /// CALL_ABORT from the client, with its status if it sent one.
    PeerAborted(Option<u32>),
    PeerDisconnected,
    Ppp(ppp::CloseReason),
    /// The driver disconnected the session (admin, revocation, shutdown).
    Local(String),
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::Http(e) => write!(f, "HTTP request refused: {e}"),
            CloseReason::Framing(e) => write!(f, "SSTP stream broken: {e}"),
            CloseReason::NegotiationTimeout => f.write_str("SSTP negotiation did not finish in time"),
            CloseReason::HelloTimeout => f.write_str("the client stopped answering SSTP echo requests"),
            CloseReason::ProtocolNotSupported => f.write_str("the client does not encapsulate PPP"),
            CloseReason::CryptoBinding(e) => write!(f, "crypto binding failed: {e}"),
            CloseReason::PeerAborted(Some(status)) => write!(f, "the client aborted (status {status})"),
            CloseReason::PeerAborted(None) => f.write_str("the client aborted"),
            CloseReason::PeerDisconnected => f.write_str("the client disconnected"),
            CloseReason::Ppp(e) => e.fmt(f),
            CloseReason::Local(e) => f.write_str(e),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DropReason {
    #[error("malformed SSTP control message: {0}")]
    Malformed(PacketError),
    #[error("{message:?} not expected in state {state}")]
    Unexpected { message: MessageType, state: &'static str },
    #[error("data packet before CALL_CONNECT_ACK")]
    DataBeforeConnectAck,
    #[error("data packet while the call is ending")]
    CallEnding,
    #[error("IPv4 packet before the crypto binding was verified")]
    DataBeforeCallConnected,
    #[error("PPP frame of {0} bytes does not fit an SSTP packet")]
    FrameTooLong(usize),
    #[error("PPP: {0}")]
    Ppp(ppp::DropReason),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("the session is not established")]
    NotEstablished,
    #[error("packet of {0} bytes does not fit an SSTP packet")]
    TooLong(usize),
}

#[derive(Debug)]
enum State {
    AwaitingHttp,
    AwaitingConnectRequest,
    /// CALL_CONNECT_ACK sent: PPP negotiates, CALL_CONNECTED awaited.
    AwaitingConnected,
    Connected,
    /// CALL_ABORT sent or received; closing at the deadline.
    Aborting {
        deadline: Instant,
    },
    /// CALL_DISCONNECT sent, awaiting its ack; or the peer's acked, closing.
    Disconnecting {
        deadline: Instant,
    },
    Closed,
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::AwaitingHttp => "awaiting HTTP request",
            State::AwaitingConnectRequest => "awaiting CALL_CONNECT_REQUEST",
            State::AwaitingConnected => "awaiting CALL_CONNECTED",
            State::Connected => "connected",
            State::Aborting { .. } => "aborting",
            State::Disconnecting { .. } => "disconnecting",
            State::Closed => "closed",
        }
    }
}

pub struct SstpServer {
    settings: SstpSettings,
    state: State,
    /// Where the current negotiation step must end.
    negotiation_deadline: Instant,
    last_received: Instant,
    echo_sent: bool,
    connect_naks: u32,
    nonce: [u8; 32],
    ppp: Option<PppServer>,
    hlak: Option<Hlak>,
    /// A CALL_CONNECTED that arrived before PPP authentication produced the HLAK.
    queued_call_connected: Option<Vec<u8>>,
    /// The client's address, once IPCP is up.
    assigned_peer: Option<Ipv4Addr>,
    established: bool,
    /// Why the connection is ending, reported when it has.
    close_reason: Option<CloseReason>,
    input: Vec<u8>,
    output: Vec<u8>,
    events: std::collections::VecDeque<Event>,
}

impl SstpServer {
    /// A connection whose TLS handshake just finished.
    pub fn new(settings: SstpSettings, now: Instant) -> Self {
        SstpServer {
            negotiation_deadline: now + settings.negotiation_timeout,
            settings,
            state: State::AwaitingHttp,
            last_received: now,
            echo_sent: false,
            connect_naks: 0,
            nonce: [0; 32],
            ppp: None,
            hlak: None,
            queued_call_connected: None,
            assigned_peer: None,
            established: false,
            close_reason: None,
            input: Vec::new(),
            output: Vec::new(),
            events: std::collections::VecDeque::new(),
        }
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Crypto binding verified and IPCP up.
    pub fn is_established(&self) -> bool {
        self.established
    }

    /// The largest PPP frame the client accepts (its LCP MRU).
    pub fn peer_mru(&self) -> Option<u16> {
        self.ppp.as_ref().map(|p| p.peer_mru())
    }

    /// The PPP user (or EAP identity), once known.
    pub fn user(&self) -> Option<&str> {
        self.ppp.as_ref().and_then(|p| p.user())
    }

    /// Bytes to write into TLS, if any.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        (!self.output.is_empty()).then(|| std::mem::take(&mut self.output))
    }

    /// Like [`SstpServer::poll_transmit`], but writes the bytes into `sink` and keeps
    /// the output buffer's memory for the next ones (the data plane's path). On an
    /// error nothing is consumed.
    pub fn write_transmit(&mut self, sink: &mut impl std::io::Write) -> std::io::Result<()> {
        if !self.output.is_empty() {
            sink.write_all(&self.output)?;
            self.output.clear();
        }
        Ok(())
    }

    /// How many bytes wait for [`SstpServer::poll_transmit`] (for back-pressure).
    pub fn pending_output(&self) -> usize {
        self.output.len()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Bytes TLS decrypted from the client. IPv4 packets come out as
    /// [`Event::TunnelPacket`].
    pub fn handle_input(&mut self, now: Instant, bytes: &[u8]) {
        self.handle_input_with(now, bytes, None);
    }

    /// Like [`SstpServer::handle_input`], but the IPv4 packets of the established
    /// session go to `on_packet`, straight from the input, with no copy and no event
    /// (the data plane's path).
    pub fn handle_input_with(&mut self, now: Instant, bytes: &[u8], mut on_packet: Option<PacketSink<'_>>) {
        if self.is_closed() {
            return;
        }
        self.last_received = now;
        self.echo_sent = false;
        // Without a partial packet from before, the input is read in place and only
        // its incomplete tail is kept (at most one packet, 4095 bytes, or a request
        // head, 4096).
        if self.input.is_empty() {
            let consumed = self.process_input(now, bytes, &mut on_packet);
            if !self.is_closed() {
                self.input.extend_from_slice(&bytes[consumed..]);
            }
        } else {
            let mut input = std::mem::take(&mut self.input);
            input.extend_from_slice(bytes);
            let consumed = self.process_input(now, &input, &mut on_packet);
            if !self.is_closed() {
                input.drain(..consumed);
                self.input = input;
            }
        }
    }

    /// Handles every whole packet in `input`; returns how many bytes were used.
    fn process_input(&mut self, now: Instant, input: &[u8], on_packet: &mut Option<PacketSink<'_>>) -> usize {
        let mut consumed = 0;
        while !self.is_closed() {
            let rest = &input[consumed..];
            if matches!(self.state, State::AwaitingHttp) {
                match http::parse_request(rest) {
                    Ok(None) => break,
                    Ok(Some((request, head_len))) => {
                        consumed += head_len;
                        self.output.extend_from_slice(&http::ok_response());
                        self.state = State::AwaitingConnectRequest;
                        self.events.push_back(Event::Accepted { correlation_id: request.correlation_id });
                    }
                    Err(error) => {
                        self.output.extend_from_slice(&error.response());
                        self.finish(CloseReason::Http(error));
                    }
                }
                continue;
            }
            match packet::packet_len(rest) {
                Ok(Some(length)) if length <= rest.len() => {
                    consumed += length;
                    self.handle_packet(now, &rest[..length], on_packet);
                }
                Ok(_) => break,
                Err(error) => {
                    self.abort(now, CloseReason::Framing(error), status::INVALID_FRAME_RECEIVED);
                    return input.len();
                }
            }
        }
        consumed
    }

    /// Sends an IPv4 packet to the client.
    pub fn send_ip(&mut self, packet: &[u8]) -> Result<(), SendError> {
        if !self.established
            || !matches!(self.state, State::Connected)
            || !self.ppp.as_ref().is_some_and(|p| p.is_ip_up())
        {
            return Err(SendError::NotEstablished);
        }
        if !packet::push_data_header(&mut self.output, FRAME_HEADER_LEN + packet.len()) {
            return Err(SendError::TooLong(packet.len()));
        }
        let [high, low] = protocol::IPV4.to_be_bytes();
        self.output.extend_from_slice(&[0xff, 0x03, high, low]);
        self.output.extend_from_slice(packet);
        Ok(())
    }

    pub fn answer_ms_chap_v2(&mut self, now: Instant, verdict: AuthVerdict) {
        if let Some(ppp) = &mut self.ppp {
            ppp.answer_ms_chap_v2(now, verdict);
        }
        self.pump_ppp(now);
    }

    pub fn eap_to_peer(&mut self, now: Instant, packet: &[u8]) -> Result<(), ppp::DropReason> {
        let result = self.ppp.as_mut().map_or(Err(ppp::DropReason::Closed), |ppp| ppp.eap_to_peer(packet));
        self.pump_ppp(now);
        result
    }

    pub fn eap_result(&mut self, now: Instant, result: EapResult) {
        if let Some(ppp) = &mut self.ppp {
            ppp.eap_result(now, result);
        }
        self.pump_ppp(now);
    }

    pub fn assign_network(&mut self, now: Instant, network: NetworkConfig) {
        if let Some(ppp) = &mut self.ppp {
            ppp.assign_network(now, network);
        }
        self.pump_ppp(now);
    }

    /// Ends the session: PPP Terminate, then CALL_DISCONNECT, then [`Event::Closed`].
    pub fn disconnect(&mut self, now: Instant, reason: &str) {
        match (&self.state, &mut self.ppp) {
            (State::AwaitingConnected | State::Connected, Some(ppp)) if !ppp.is_closed() => {
                ppp.close(now, ppp::CloseReason::Local(reason.into()));
                self.close_reason = Some(CloseReason::Local(reason.into()));
                self.pump_ppp(now);
            }
            (State::AwaitingHttp, _) => self.finish(CloseReason::Local(reason.into())),
            _ => self.send_disconnect(now, CloseReason::Local(reason.into())),
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let ppp = self.ppp.as_ref().and_then(|p| p.poll_timeout());
        let own = match &self.state {
            State::AwaitingHttp | State::AwaitingConnectRequest | State::AwaitingConnected => {
                Some(self.negotiation_deadline)
            }
            State::Connected => {
                Some(self.last_received + self.settings.hello_interval * (1 + u32::from(self.echo_sent)))
            }
            State::Aborting { deadline } | State::Disconnecting { deadline } => return Some(*deadline),
            State::Closed => return None,
        };
        [own, ppp].into_iter().flatten().min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        match &self.state {
            State::Closed => return,
            State::Aborting { deadline } | State::Disconnecting { deadline } => {
                if now >= *deadline {
                    let reason = self.close_reason.take().unwrap_or(CloseReason::PeerDisconnected);
                    self.finish(reason);
                }
                return;
            }
            State::AwaitingHttp if now >= self.negotiation_deadline => {
                self.finish(CloseReason::NegotiationTimeout);
                return;
            }
            State::AwaitingConnectRequest | State::AwaitingConnected if now >= self.negotiation_deadline => {
                self.abort(now, CloseReason::NegotiationTimeout, status::NEGOTIATION_TIMEOUT);
                return;
            }
            State::Connected => {
                let silent_for = now.saturating_duration_since(self.last_received);
                if self.echo_sent && silent_for >= self.settings.hello_interval * 2 {
                    self.abort(now, CloseReason::HelloTimeout, status::NEGOTIATION_TIMEOUT);
                    return;
                }
                if !self.echo_sent && silent_for >= self.settings.hello_interval {
                    self.output.extend_from_slice(&packet::control(MessageType::EchoRequest, &[]));
                    self.echo_sent = true;
                }
            }
            _ => {}
        }
        if let Some(ppp) = &mut self.ppp {
            ppp.handle_timeout(now);
        }
        self.pump_ppp(now);
    }

    fn handle_packet(&mut self, now: Instant, bytes: &[u8], on_packet: &mut Option<PacketSink<'_>>) {
        match Packet::parse(bytes) {
            Ok(Packet::Data(frame)) => self.handle_data(now, frame, on_packet),
            Ok(Packet::Control(message)) => self.handle_control(now, bytes, message),
            Err(error) => self.events.push_back(Event::Dropped(DropReason::Malformed(error))),
        }
    }

    fn handle_data(&mut self, now: Instant, frame: &[u8], on_packet: &mut Option<PacketSink<'_>>) {
        let reason = match self.state {
            State::AwaitingConnected | State::Connected => None,
            State::AwaitingHttp | State::AwaitingConnectRequest => Some(DropReason::DataBeforeConnectAck),
            State::Aborting { .. } | State::Disconnecting { .. } | State::Closed => Some(DropReason::CallEnding),
        };
        let Some(ppp) = self.ppp.as_mut().filter(|_| reason.is_none()) else {
            self.events.push_back(Event::Dropped(reason.unwrap_or(DropReason::DataBeforeConnectAck)));
            return;
        };
        // The data path: IPv4 of the established session skips the PPP machinery.
        if self.established
            && ppp.is_ip_up()
            && let Ok(Frame { protocol: protocol::IPV4, information }) = Frame::parse(frame)
        {
            match on_packet {
                Some(deliver) => deliver(information),
                None => self.events.push_back(Event::TunnelPacket(information.to_vec())),
            }
            return;
        }
        if let Err(error) = ppp.handle_frame(now, frame) {
            self.events.push_back(Event::Dropped(DropReason::Ppp(error)));
        }
        self.pump_ppp(now);
    }

    fn handle_control(&mut self, now: Instant, bytes: &[u8], message: packet::ControlMessage<'_>) {
        let unexpected = |state: &State| DropReason::Unexpected { message: message.message_type, state: state.name() };
        match (message.message_type, &self.state) {
            (MessageType::CallConnectRequest, State::AwaitingConnectRequest) => {
                let protocol_id = message.attribute(attribute::ENCAPSULATED_PROTOCOL_ID);
                if protocol_id == Some(&packet::ENCAPSULATED_PROTOCOL_PPP.to_be_bytes()[..]) {
                    self.accept_call(now);
                } else {
                    self.refuse_call(now, protocol_id.unwrap_or_default());
                }
            }
            (MessageType::CallConnected, State::AwaitingConnected) => {
                if self.hlak.is_some() {
                    self.verify_call_connected(now, bytes);
                } else if self.queued_call_connected.is_none() {
                    // Windows sends it as soon as its MS-CHAPv2 Response is out, often
                    // before the verdict: verified when PPP authentication produces the
                    // HLAK (PROTOCOLS.md §2.4).
                    self.queued_call_connected = Some(bytes.to_vec());
                } else {
                    self.events.push_back(Event::Dropped(unexpected(&self.state)));
                }
            }
            (MessageType::EchoRequest, _) => {
                self.output.extend_from_slice(&packet::control(MessageType::EchoResponse, &[]));
            }
            (MessageType::EchoResponse, _) => {}
            (MessageType::CallAbort, State::Aborting { .. }) => {
                let reason = self.close_reason.take().unwrap_or(CloseReason::PeerAborted(None));
                self.finish(reason);
            }
            (MessageType::CallAbort, _) => {
                let peer_status = message.attribute(attribute::STATUS_INFO).and_then(packet::status_of);
                debug!(status = ?peer_status, "SSTP client aborted");
                self.close_reason = Some(CloseReason::PeerAborted(peer_status));
                self.state = State::Aborting { deadline: now + PEER_CLOSE_WAIT };
            }
            (MessageType::CallDisconnect, State::Disconnecting { .. }) => {
                // Both sides disconnecting at once: ack and close.
                self.output.extend_from_slice(&packet::control(MessageType::CallDisconnectAck, &[]));
                let reason = self.close_reason.take().unwrap_or(CloseReason::PeerDisconnected);
                self.finish(reason);
            }
            (MessageType::CallDisconnect, _) => {
                self.output.extend_from_slice(&packet::control(MessageType::CallDisconnectAck, &[]));
                self.close_reason = Some(CloseReason::PeerDisconnected);
                self.state = State::Disconnecting { deadline: now + PEER_CLOSE_WAIT };
            }
            (MessageType::CallDisconnectAck, State::Disconnecting { .. }) => {
                let reason = self.close_reason.take().unwrap_or(CloseReason::PeerDisconnected);
                self.finish(reason);
            }
            (_, state) => self.events.push_back(Event::Dropped(unexpected(state))),
        }
    }

    fn accept_call(&mut self, now: Instant) {
        aws_lc_rs::rand::fill(&mut self.nonce).expect("the system RNG works");
        let mut request = vec![0, 0, 0, self.settings.offered_hashes()];
        request.extend_from_slice(&self.nonce);
        self.output.extend_from_slice(&packet::control(
            MessageType::CallConnectAck,
            &[(attribute::CRYPTO_BINDING_REQ, &request)],
        ));
        self.state = State::AwaitingConnected;
        self.negotiation_deadline = now + self.settings.negotiation_timeout;
        self.ppp = Some(PppServer::new(self.settings.ppp.clone(), now));
        self.pump_ppp(now);
    }

    fn refuse_call(&mut self, now: Instant, protocol_id: &[u8]) {
        self.connect_naks += 1;
        if self.connect_naks > MAX_CONNECT_NAKS {
            self.abort(now, CloseReason::ProtocolNotSupported, status::RETRY_COUNT_EXCEEDED);
            return;
        }
        let info = packet::status_info(attribute::ENCAPSULATED_PROTOCOL_ID, status::VALUE_NOT_SUPPORTED, protocol_id);
        self.output
            .extend_from_slice(&packet::control(MessageType::CallConnectNak, &[(attribute::STATUS_INFO, &info)]));
    }

    fn verify_call_connected(&mut self, now: Instant, message: &[u8]) {
        let hlak = self.hlak.expect("verified only once the HLAK is known");
        let offered = self.settings.offered_hashes();
        match binding::verify_call_connected(message, offered, &self.nonce, &self.settings.cert_hashes, &hlak) {
            Ok(hash) => {
                debug!(?hash, "SSTP crypto binding verified");
                self.state = State::Connected;
                self.maybe_established();
            }
            Err(error) => self.abort(now, CloseReason::CryptoBinding(error), status::INVALID_FRAME_RECEIVED),
        }
    }

    fn maybe_established(&mut self) {
        let Some(ppp) = &self.ppp else { return };
        if self.established || !matches!(self.state, State::Connected) || !ppp.is_ip_up() {
            return;
        }
        self.established = true;
        let user = ppp.user().unwrap_or_default().to_string();
        let address = self.assigned_peer.unwrap_or(Ipv4Addr::UNSPECIFIED);
        self.events.push_back(Event::Established { user, address });
    }

    /// Moves PPP's frames into SSTP data packets and its events to the driver.
    fn pump_ppp(&mut self, now: Instant) {
        let Some(ppp) = &mut self.ppp else { return };
        let mut ppp_events = Vec::new();
        while let Some(frame) = ppp.poll_frame() {
            if !packet::push_data(&mut self.output, &frame) {
                self.events.push_back(Event::Dropped(DropReason::FrameTooLong(frame.len())));
            }
        }
        while let Some(event) = ppp.poll_event() {
            ppp_events.push(event);
        }
        for event in ppp_events {
            match event {
                ppp::Event::VerifyMsChapV2(request) => self.events.push_back(Event::VerifyMsChapV2(request)),
                ppp::Event::EapFromPeer(packet) => self.events.push_back(Event::EapFromPeer(packet)),
                ppp::Event::Authenticated { user, keys } => {
                    self.hlak = Some(binding::server_hlak(&keys));
                    self.events.push_back(Event::Authenticated { user });
                    if let Some(queued) = self.queued_call_connected.take() {
                        self.verify_call_connected(now, &queued);
                    }
                }
                ppp::Event::IpUp { peer } => {
                    self.assigned_peer = Some(peer);
                    self.maybe_established();
                }
                ppp::Event::TunnelPacket(packet) if self.established => {
                    self.events.push_back(Event::TunnelPacket(packet));
                }
                ppp::Event::TunnelPacket(_) => {
                    self.events.push_back(Event::Dropped(DropReason::DataBeforeCallConnected));
                }
                ppp::Event::Closed(reason) => {
                    let reason = self.close_reason.take().unwrap_or(CloseReason::Ppp(reason));
                    self.send_disconnect(now, reason);
                }
            }
        }
    }

    fn send_disconnect(&mut self, now: Instant, reason: CloseReason) {
        if matches!(self.state, State::Aborting { .. } | State::Disconnecting { .. } | State::Closed) {
            return;
        }
        self.output.extend_from_slice(&packet::control(MessageType::CallDisconnect, &[]));
        self.close_reason = Some(reason);
        self.state = State::Disconnecting { deadline: now + DISCONNECT_WAIT };
    }

    fn abort(&mut self, now: Instant, reason: CloseReason, status_code: u32) {
        if matches!(self.state, State::Aborting { .. } | State::Closed) {
            return;
        }
        let info = packet::status_info(attribute::NO_ERROR, status_code, &[]);
        self.output.extend_from_slice(&packet::control(MessageType::CallAbort, &[(attribute::STATUS_INFO, &info)]));
        debug!(%reason, "SSTP connection aborted");
        self.close_reason = Some(reason);
        self.state = State::Aborting { deadline: now + ABORT_WAIT };
    }

    fn finish(&mut self, reason: CloseReason) {
        self.state = State::Closed;
        self.established = false;
        self.events.push_back(Event::Closed(reason));
    }
}
