//! The gateway's side of one PPP link: LCP, then MS-CHAPv2 (verified by the driver) or
//! EAP relayed to RADIUS, then IPCP with the address the driver assigns, then IPv4
//! packets. PROTOCOLS.md §2.7–2.11.
//!
//! The driver feeds frames ([`PppServer::handle_frame`]) and time, drains frames to send
//! ([`PppServer::poll_frame`]) and [`Event`]s, and answers the events that ask something
//! ([`PppServer::answer_ms_chap_v2`], [`PppServer::eap_to_peer`],
//! [`PppServer::eap_result`], [`PppServer::assign_network`]).

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use tracing::debug;

use super::packet::{
    CHAP_MS_CHAP_V2, ConfigOption, ControlError, ControlPacket, Frame, FrameError, Negotiation, OptionVerdict,
    answer_configure_request, code, control_frame, frame, ipcp_option, lcp_option, parse_options, protocol,
    push_option,
};
use super::protocol_name;
use crate::crypto::mschapv2::MppeKeys;

/// How long a Terminate-Request waits for its Terminate-Ack (RFC 1661 §4.6 restart timer).
const TERMINATE_WAIT: Duration = Duration::from_secs(3);
/// Configure-Naks or -Rejects of our request tolerated before giving up (RFC 1661 §4.6
/// Max-Failure).
const MAX_CONFIGURE_FAILURES: u32 = 5;
/// The smallest MRU a peer may ask for: IPv4's minimum datagram size (RFC 791).
const MIN_PEER_MRU: u16 = 576;
/// The largest MRU this side takes: a whole frame must fit one SSTP data packet
/// (4095 bytes less its 4-byte header and the 4 bytes of PPP header).
const MAX_MRU: u16 = 4087;
/// CHAP codes (RFC 1994 §4).
mod chap {
    pub const CHALLENGE: u8 = 1;
    pub const RESPONSE: u8 = 2;
    pub const SUCCESS: u8 = 3;
    pub const FAILURE: u8 = 4;
    /// MS-CHAPv2 Response Value-Size: PeerChallenge(16) Reserved(8) NT-Response(24) Flags(1).
    pub const RESPONSE_VALUE_SIZE: u8 = 49;
}
/// EAP codes and the Identity type (RFC 3748 §4–5).
mod eap {
    pub const REQUEST: u8 = 1;
    pub const RESPONSE: u8 = 2;
    pub const SUCCESS: u8 = 3;
    pub const FAILURE: u8 = 4;
    pub const TYPE_IDENTITY: u8 = 1;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// CHAP with algorithm 0x81 (RFC 2759).
    MsChapV2,
    /// EAP (RFC 3748): the driver runs the method behind [`Event::EapFromPeer`] (the
    /// gateway's EAP-TLS, `proto::eap::tls`) or relays it to RADIUS.
    Eap,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The authentication protocol offered first.
    pub auth: AuthMethod,
    /// Offered instead when the peer Naks or Rejects `auth` (once: a peer refusing both
    /// ends the link). Windows answers an offer it is not configured for with a Nak
    /// naming the protocol it wants.
    pub fallback_auth: Option<AuthMethod>,
    /// The Name in the MS-CHAPv2 Challenge.
    pub server_name: String,
    /// The MRU this side asks for.
    pub mru: u16,
    /// From the first frame until IPCP is up; beyond it the link is terminated.
    pub establish_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            auth: AuthMethod::MsChapV2,
            fallback_auth: None,
            server_name: "p2sgw".into(),
            mru: 1500,
            establish_timeout: Duration::from_secs(90),
        }
    }
}

/// The addresses IPCP hands out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetworkConfig {
    /// The gateway's end of the link.
    pub local: Ipv4Addr,
    /// The client's address.
    pub peer: Ipv4Addr,
    pub primary_dns: Option<Ipv4Addr>,
    pub secondary_dns: Option<Ipv4Addr>,
}

/// Keys the authentication produced, named from the gateway's side; SSTP's crypto
/// binding is built from them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionKeys {
    /// MS-MPPE-Send-Key and MS-MPPE-Recv-Key (MS-CHAPv2, or EAP through RADIUS, where they
    /// are the two halves of the MSK).
    Mppe { send: Vec<u8>, recv: Vec<u8> },
    /// An EAP Master Session Key.
    Msk(Vec<u8>),
    /// The method produced none.
    None,
}

impl From<MppeKeys> for SessionKeys {
    fn from(keys: MppeKeys) -> Self {
        SessionKeys::Mppe { send: keys.server_send.to_vec(), recv: keys.server_receive.to_vec() }
    }
}

/// A peer's MS-CHAPv2 Response to check, with RADIUS (MS-CHAP2-Response) or a local NT
/// hash (`crypto::mschapv2::verify_nt_response`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MsChapV2Verify {
    /// The Name of the Response, as sent (it may carry a `DOMAIN\` prefix).
    pub user: String,
    /// The CHAP Identifier of the Response (MS-CHAP2-Response starts with it).
    pub ident: u8,
    pub authenticator_challenge: [u8; 16],
    pub peer_challenge: [u8; 16],
    pub nt_response: [u8; 24],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthVerdict {
    Success {
        /// `S=<40 uppercase hex>` (RADIUS MS-CHAP2-Success text, or
        /// `crypto::mschapv2::generate_authenticator_response`), optionally followed by
        /// ` M=<message>`.
        authenticator_response: String,
        keys: SessionKeys,
    },
    Failure {
        /// The MS-CHAP failure text (`E=691 R=0 C=<32 hex> V=3 M=...`, e.g. RADIUS
        /// MS-CHAP-Error); `None` sends a generic error 691.
        message: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EapResult {
    Success {
        keys: SessionKeys,
        /// The EAP-Success from RADIUS, relayed as is; `None` builds one.
        packet: Option<Vec<u8>>,
    },
    Failure {
        /// The EAP-Failure from RADIUS; `None` builds one.
        packet: Option<Vec<u8>>,
    },
}

#[derive(Debug)]
pub enum Event {
    /// Check this MS-CHAPv2 Response and answer with [`PppServer::answer_ms_chap_v2`].
    VerifyMsChapV2(MsChapV2Verify),
    /// An EAP Response from the peer (the first is its Identity), for the EAP method
    /// the driver runs or relays; answer with [`PppServer::eap_to_peer`] (the next
    /// Request) or [`PppServer::eap_result`].
    EapFromPeer(Vec<u8>),
    /// Authentication succeeded: give the link its addresses with
    /// [`PppServer::assign_network`].
    Authenticated { user: String, keys: SessionKeys },
    /// IPCP is open: IPv4 packets flow.
    IpUp { peer: Ipv4Addr },
    /// An IPv4 packet from the peer.
    TunnelPacket(Vec<u8>),
    /// The link is down; nothing more will be sent or reported.
    Closed(CloseReason),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer sent a Terminate-Request.
    PeerTerminated,
    AuthFailed(String),
    /// The peer and the gateway could not agree (the text says on what).
    Negotiation(String),
    /// LCP, authentication and IPCP did not finish in time.
    EstablishTimeout,
    /// The driver closed the link.
    Local(String),
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::PeerTerminated => f.write_str("the client ended the PPP link"),
            CloseReason::AuthFailed(e) => write!(f, "authentication failed: {e}"),
            CloseReason::Negotiation(e) => write!(f, "PPP negotiation failed: {e}"),
            CloseReason::EstablishTimeout => f.write_str("PPP negotiation did not finish in time"),
            CloseReason::Local(e) => f.write_str(e),
        }
    }
}

/// Why a frame was dropped. None of these ends the link.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DropReason {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("malformed {protocol} packet: {error}")]
    Malformed { protocol: &'static str, error: ControlError },
    #[error("{protocol} packet with code {code} is not expected now")]
    Unexpected { protocol: &'static str, code: u8 },
    #[error("{protocol} reply with identifier {id} answers no request in flight")]
    StaleReply { protocol: &'static str, id: u8 },
    #[error("{0} frame before LCP is open")]
    BeforeLcpOpen(&'static str),
    #[error("{0} frame while the link is terminating")]
    Terminating(&'static str),
    #[error("IPCP packet before authentication and address assignment")]
    NetworkNotReady,
    #[error("IPv4 packet before IPCP is open")]
    NetworkNotUp,
    #[error("MS-CHAPv2 Response with a wrong Value-Size or cut short")]
    BadChapResponse,
    #[error("the link is closed")]
    Closed,
}

/// Where authentication stands.
#[derive(Debug)]
enum Auth {
    /// LCP is not open yet.
    NotStarted,
    ChallengeSent {
        id: u8,
        challenge: [u8; 16],
    },
    /// The driver is checking the Response.
    Verifying {
        id: u8,
        user: String,
    },
    /// The Success was sent; a repeated Response gets it again (RFC 2759 §5).
    ChapSucceeded {
        id: u8,
        reply: Vec<u8>,
    },
    /// EAP conversation relayed; `id` is the Identifier of the last Request sent.
    Eap {
        id: u8,
        identity: Option<String>,
        awaiting_driver: bool,
    },
    /// Authenticated (or failed and terminating).
    Done,
}

pub struct PppServer {
    config: ServerConfig,
    magic: u32,
    /// The largest frame the peer accepts.
    peer_mru: u16,
    lcp: Negotiation,
    lcp_failures: u32,
    /// Identifier for LCP packets other than Configure-Request.
    lcp_ids: u8,
    auth: Auth,
    user: Option<String>,
    authenticated: bool,
    network: Option<NetworkConfig>,
    ipcp: Negotiation,
    ipcp_failures: u32,
    /// The peer's latest IPCP Configure-Request, held until IPCP can answer it.
    held_ipcp_request: Option<Vec<u8>>,
    ip_up: bool,
    establish_deadline: Instant,
    terminating: Option<(Instant, CloseReason)>,
    closed: bool,
    frames: VecDeque<Vec<u8>>,
    events: VecDeque<Event>,
}

fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    aws_lc_rs::rand::fill(&mut bytes).expect("the system RNG works");
    bytes
}

fn random_magic() -> u32 {
    // Zero means "no magic number" (RFC 1661 §6.4).
    u32::from_be_bytes(random()).max(1)
}

impl PppServer {
    /// A link starting now; its LCP Configure-Request is ready to send.
    pub fn new(config: ServerConfig, now: Instant) -> Self {
        let establish_deadline = now + config.establish_timeout;
        let mut server = PppServer {
            peer_mru: 1500,
            magic: random_magic(),
            lcp: Negotiation::default(),
            lcp_failures: 0,
            lcp_ids: 0,
            auth: Auth::NotStarted,
            user: None,
            authenticated: false,
            network: None,
            ipcp: Negotiation::default(),
            ipcp_failures: 0,
            held_ipcp_request: None,
            ip_up: false,
            establish_deadline,
            terminating: None,
            closed: false,
            frames: VecDeque::new(),
            events: VecDeque::new(),
            config,
        };
        server.send_lcp_request();
        server
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Whether IPv4 packets flow (not once the link is terminating).
    pub fn is_ip_up(&self) -> bool {
        self.ip_up && self.terminating.is_none() && !self.closed
    }

    /// The largest frame the peer accepts (its MRU).
    pub fn peer_mru(&self) -> u16 {
        self.peer_mru
    }

    /// The authenticated user (or EAP identity), once known.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    pub fn poll_frame(&mut self) -> Option<Vec<u8>> {
        self.frames.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed {
            None
        } else if let Some((deadline, _)) = &self.terminating {
            Some(*deadline)
        } else if !self.ip_up {
            Some(self.establish_deadline)
        } else {
            None
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.closed {
            return;
        }
        if let Some((deadline, _)) = &self.terminating {
            if now >= *deadline {
                self.finish_close();
            }
        } else if !self.ip_up && now >= self.establish_deadline {
            self.close(now, CloseReason::EstablishTimeout);
        }
    }

    /// One frame from the peer.
    pub fn handle_frame(&mut self, now: Instant, bytes: &[u8]) -> Result<(), DropReason> {
        if self.closed {
            return Err(DropReason::Closed);
        }
        let frame = Frame::parse(bytes)?;
        if self.terminating.is_some() {
            // RFC 1661 §4.2 Closing state: only Terminate packets matter.
            return match frame.protocol {
                protocol::LCP => self.handle_lcp_while_terminating(frame.information),
                other => Err(DropReason::Terminating(protocol_name(other))),
            };
        }
        match frame.protocol {
            protocol::LCP => self.handle_lcp(now, frame.information),
            other if !self.lcp.is_open() => Err(DropReason::BeforeLcpOpen(protocol_name(other))),
            protocol::CHAP if self.config.auth == AuthMethod::MsChapV2 => self.handle_chap(frame.information),
            protocol::EAP if self.config.auth == AuthMethod::Eap => self.handle_eap(frame.information),
            protocol::IPCP => self.handle_ipcp(now, frame.information),
            protocol::IPV4 if self.ip_up => {
                self.events.push_back(Event::TunnelPacket(frame.information.to_vec()));
                Ok(())
            }
            protocol::IPV4 => Err(DropReason::NetworkNotUp),
            other => {
                // IPv6CP, CCP, IPv6, an authentication protocol not agreed, anything
                // unknown: LCP Protocol-Reject (RFC 1661 §5.7), with as much of the
                // packet as fits the peer's MRU.
                let mut data = other.to_be_bytes().to_vec();
                let room = self.reject_room().saturating_sub(ControlPacket::HEADER_LEN + data.len());
                data.extend_from_slice(&frame.information[..frame.information.len().min(room)]);
                let id = self.next_lcp_id();
                self.frames.push_back(control_frame(protocol::LCP, code::PROTOCOL_REJECT, id, &data));
                debug!(protocol = format_args!("{other:#06x}"), "PPP protocol rejected");
                Ok(())
            }
        }
    }

    /// Frames an IPv4 packet for the peer; `None` until IPCP is up.
    pub fn send_ip(&self, packet: &[u8]) -> Option<Vec<u8>> {
        self.is_ip_up().then(|| frame(protocol::IPV4, packet))
    }

    /// The driver's verdict on an [`Event::VerifyMsChapV2`]. Ignored unless a Response
    /// is being verified (the link may have closed meanwhile).
    pub fn answer_ms_chap_v2(&mut self, now: Instant, verdict: AuthVerdict) {
        let Auth::Verifying { id, user } = std::mem::replace(&mut self.auth, Auth::Done) else {
            debug!("MS-CHAPv2 verdict with no Response being verified; ignored");
            return;
        };
        match verdict {
            AuthVerdict::Success { authenticator_response, keys } => {
                let mut text = authenticator_response;
                if !text.contains(" M=") {
                    text.push_str(" M=Access granted");
                }
                let reply = control_frame(protocol::CHAP, chap::SUCCESS, id, text.as_bytes());
                self.frames.push_back(reply.clone());
                self.auth = Auth::ChapSucceeded { id, reply };
                self.authenticated(now, user, keys);
            }
            AuthVerdict::Failure { message } => {
                let text = message.unwrap_or_else(|| {
                    let challenge: String = random::<16>().iter().map(|b| format!("{b:02X}")).collect();
                    format!("E=691 R=0 C={challenge} V=3 M=Authentication failed")
                });
                self.frames.push_back(control_frame(protocol::CHAP, chap::FAILURE, id, text.as_bytes()));
                self.close(now, CloseReason::AuthFailed(format!("MS-CHAPv2 refused for {user}")));
            }
        }
    }

    /// An EAP Request (from an Access-Challenge) to pass to the peer. Refused unless an
    /// EAP conversation waits for the driver, or if it is not an EAP Request.
    pub fn eap_to_peer(&mut self, packet: &[u8]) -> Result<(), DropReason> {
        let Auth::Eap { id, awaiting_driver, .. } = &mut self.auth else {
            return Err(DropReason::Unexpected { protocol: "EAP", code: packet.first().copied().unwrap_or(0) });
        };
        let request = ControlPacket::parse(packet).map_err(|error| DropReason::Malformed { protocol: "EAP", error })?;
        if request.code != eap::REQUEST || !*awaiting_driver {
            return Err(DropReason::Unexpected { protocol: "EAP", code: request.code });
        }
        *id = request.id;
        *awaiting_driver = false;
        let length = ControlPacket::HEADER_LEN + request.data.len();
        self.frames.push_back(frame(protocol::EAP, &packet[..length]));
        Ok(())
    }

    /// How the EAP conversation ended (RADIUS Access-Accept or Access-Reject).
    pub fn eap_result(&mut self, now: Instant, result: EapResult) {
        let Auth::Eap { id, identity, .. } = std::mem::replace(&mut self.auth, Auth::Done) else {
            debug!("EAP result with no EAP conversation; ignored");
            return;
        };
        let identity = identity.unwrap_or_default();
        let (outcome, packet) = match result {
            EapResult::Success { keys, packet } => (Some(keys), packet),
            EapResult::Failure { packet } => (None, packet),
        };
        let code = if outcome.is_some() { eap::SUCCESS } else { eap::FAILURE };
        let final_packet = packet.unwrap_or_else(|| ControlPacket::encode(code, id, &[]));
        self.frames.push_back(frame(protocol::EAP, &final_packet));
        match outcome {
            Some(keys) => self.authenticated(now, identity, keys),
            None => self.close(now, CloseReason::AuthFailed(format!("EAP refused for {identity}"))),
        }
    }

    /// The addresses for this link, after [`Event::Authenticated`].
    pub fn assign_network(&mut self, now: Instant, network: NetworkConfig) {
        if self.closed || self.network.is_some() {
            return;
        }
        self.network = Some(network);
        self.start_ipcp(now);
    }

    /// Ends the link: Terminate-Request, then [`Event::Closed`] on the Terminate-Ack or
    /// after a short wait.
    pub fn close(&mut self, now: Instant, reason: CloseReason) {
        if self.closed || self.terminating.is_some() {
            return;
        }
        let id = self.next_lcp_id();
        self.frames.push_back(control_frame(protocol::LCP, code::TERMINATE_REQUEST, id, &[]));
        self.terminating = Some((now + TERMINATE_WAIT, reason));
    }

    fn finish_close(&mut self) {
        let reason = self.terminating.take().map_or(CloseReason::PeerTerminated, |(_, reason)| reason);
        self.closed = true;
        self.ip_up = false;
        self.events.push_back(Event::Closed(reason));
    }

    /// How much of a rejected packet a Protocol- or Code-Reject carries: what fits both
    /// the peer's MRU and ours (which keeps it inside one SSTP packet).
    fn reject_room(&self) -> usize {
        usize::from(self.peer_mru.min(self.config.mru).max(MIN_PEER_MRU))
    }

    fn next_lcp_id(&mut self) -> u8 {
        self.lcp_ids = self.lcp_ids.wrapping_add(1);
        // Keep clear of the Configure-Request identifiers, which count from 1 up.
        self.lcp_ids | 0x80
    }

    fn send_lcp_request(&mut self) {
        let mut options = Vec::new();
        push_option(&mut options, lcp_option::MRU, &self.config.mru.to_be_bytes());
        match self.config.auth {
            AuthMethod::MsChapV2 => push_option(
                &mut options,
                lcp_option::AUTH_PROTOCOL,
                &[protocol::CHAP.to_be_bytes()[0], protocol::CHAP.to_be_bytes()[1], CHAP_MS_CHAP_V2],
            ),
            AuthMethod::Eap => push_option(&mut options, lcp_option::AUTH_PROTOCOL, &protocol::EAP.to_be_bytes()),
        }
        push_option(&mut options, lcp_option::MAGIC_NUMBER, &self.magic.to_be_bytes());
        let request = self.lcp.send_request(protocol::LCP, options);
        self.frames.push_back(request);
    }

    fn handle_lcp_while_terminating(&mut self, information: &[u8]) -> Result<(), DropReason> {
        let packet = parse_control("LCP", information)?;
        match packet.code {
            code::TERMINATE_ACK => {
                self.finish_close();
                Ok(())
            }
            code::TERMINATE_REQUEST => {
                self.frames.push_back(control_frame(protocol::LCP, code::TERMINATE_ACK, packet.id, &[]));
                self.finish_close();
                Ok(())
            }
            other => Err(DropReason::Unexpected { protocol: "LCP", code: other }),
        }
    }

    fn handle_lcp(&mut self, now: Instant, information: &[u8]) -> Result<(), DropReason> {
        let packet = parse_control("LCP", information)?;
        match packet.code {
            code::CONFIGURE_REQUEST => {
                if self.lcp.is_open() {
                    // Renegotiating LCP would restart authentication (RFC 1661 §4.3
                    // "tld"); no known SSTP client does it, so it ends the link.
                    self.close(now, CloseReason::Negotiation("the client restarted LCP negotiation".into()));
                    return Ok(());
                }
                let options =
                    parse_options(packet.data).map_err(|error| DropReason::Malformed { protocol: "LCP", error })?;
                let own_magic = self.magic;
                let (reply, data) = answer_configure_request(packet.data, &options, |o| judge_lcp_option(o, own_magic));
                self.frames.push_back(control_frame(protocol::LCP, reply, packet.id, &data));
                self.lcp.we_acked_theirs = reply == code::CONFIGURE_ACK;
                if self.lcp.we_acked_theirs {
                    if let Some(mru) = options.iter().find(|o| o.kind == lcp_option::MRU).and_then(|o| o.as_u16()) {
                        self.peer_mru = mru;
                    }
                    self.on_lcp_progress();
                }
                Ok(())
            }
            code::CONFIGURE_ACK => {
                if !self.lcp.ack_matches(&packet) || self.lcp.peer_acked_ours {
                    return Err(DropReason::StaleReply { protocol: "LCP", id: packet.id });
                }
                self.lcp.peer_acked_ours = true;
                self.on_lcp_progress();
                Ok(())
            }
            code::CONFIGURE_NAK | code::CONFIGURE_REJECT => {
                if packet.id != self.lcp.request_id || self.lcp.peer_acked_ours {
                    return Err(DropReason::StaleReply { protocol: "LCP", id: packet.id });
                }
                let options =
                    parse_options(packet.data).map_err(|error| DropReason::Malformed { protocol: "LCP", error })?;
                self.lcp_failures += 1;
                let refuses_auth = options.iter().any(|o| o.kind == lcp_option::AUTH_PROTOCOL);
                if refuses_auth
                    && self.lcp_failures <= MAX_CONFIGURE_FAILURES
                    && let Some(fallback) = self.config.fallback_auth.take()
                {
                    debug!(refused = ?self.config.auth, offered = ?fallback, "the client refused the authentication protocol; offering the other");
                    self.config.auth = fallback;
                    self.send_lcp_request();
                    return Ok(());
                }
                if refuses_auth || self.lcp_failures > MAX_CONFIGURE_FAILURES {
                    let method = match self.config.auth {
                        AuthMethod::MsChapV2 => "MS-CHAPv2",
                        AuthMethod::Eap => "EAP",
                    };
                    let what = if refuses_auth {
                        format!("the client will not authenticate with {method}")
                    } else {
                        "the client keeps refusing the gateway's LCP options".to_string()
                    };
                    self.close(now, CloseReason::Negotiation(what));
                    return Ok(());
                }
                if packet.code == code::CONFIGURE_NAK {
                    for option in &options {
                        match option.kind {
                            lcp_option::MAGIC_NUMBER => self.magic = random_magic(),
                            lcp_option::MRU => {
                                if let Some(mru) = option.as_u16().filter(|m| (MIN_PEER_MRU..=MAX_MRU).contains(m)) {
                                    self.config.mru = mru;
                                }
                            }
                            _ => {}
                        }
                    }
                    self.send_lcp_request();
                } else {
                    // Resend without what the peer rejected (only MRU or Magic can be).
                    let rejected: Vec<u8> = options.iter().map(|o| o.kind).collect();
                    let ours = self.lcp.request.clone();
                    let mut options = Vec::new();
                    for option in parse_options(&ours).expect("our own request parses") {
                        if !rejected.contains(&option.kind) {
                            option.push_to(&mut options);
                        }
                    }
                    let request = self.lcp.send_request(protocol::LCP, options);
                    self.frames.push_back(request);
                }
                Ok(())
            }
            code::TERMINATE_REQUEST => {
                self.frames.push_back(control_frame(protocol::LCP, code::TERMINATE_ACK, packet.id, &[]));
                self.terminating = Some((now, CloseReason::PeerTerminated));
                self.finish_close();
                Ok(())
            }
            code::PROTOCOL_REJECT => {
                let rejected = packet.data.get(..2).map(|p| u16::from_be_bytes([p[0], p[1]]));
                if rejected == Some(protocol::IPCP) {
                    self.close(now, CloseReason::Negotiation("the client rejects IPCP".into()));
                }
                Ok(())
            }
            code::ECHO_REQUEST if self.lcp.is_open() => {
                let mut data = self.magic.to_be_bytes().to_vec();
                data.extend_from_slice(packet.data.get(4..).unwrap_or_default());
                self.frames.push_back(control_frame(protocol::LCP, code::ECHO_REPLY, packet.id, &data));
                Ok(())
            }
            code::TERMINATE_ACK
            | code::CODE_REJECT
            | code::ECHO_REPLY
            | code::DISCARD_REQUEST
            | code::IDENTIFICATION
            | code::TIME_REMAINING => Ok(()),
            code::ECHO_REQUEST => Err(DropReason::Unexpected { protocol: "LCP", code: packet.code }),
            _ => {
                // Unknown code: Code-Reject with the packet (RFC 1661 §5.6).
                let id = self.next_lcp_id();
                let length = ControlPacket::HEADER_LEN + packet.data.len();
                let room = self.reject_room() - ControlPacket::HEADER_LEN;
                let rejected = &information[..length.min(room)];
                self.frames.push_back(control_frame(protocol::LCP, code::CODE_REJECT, id, rejected));
                Ok(())
            }
        }
    }

    fn on_lcp_progress(&mut self) {
        if !self.lcp.is_open() || !matches!(self.auth, Auth::NotStarted) {
            return;
        }
        match self.config.auth {
            AuthMethod::MsChapV2 => {
                let challenge: [u8; 16] = random();
                let mut data = vec![16];
                data.extend_from_slice(&challenge);
                data.extend_from_slice(self.config.server_name.as_bytes());
                let id = random::<1>()[0];
                self.frames.push_back(control_frame(protocol::CHAP, chap::CHALLENGE, id, &data));
                self.auth = Auth::ChallengeSent { id, challenge };
            }
            AuthMethod::Eap => {
                let id = random::<1>()[0];
                self.frames.push_back(control_frame(protocol::EAP, eap::REQUEST, id, &[eap::TYPE_IDENTITY]));
                self.auth = Auth::Eap { id, identity: None, awaiting_driver: false };
            }
        }
    }

    fn handle_chap(&mut self, information: &[u8]) -> Result<(), DropReason> {
        let packet = parse_control("CHAP", information)?;
        if packet.code != chap::RESPONSE {
            return Err(DropReason::Unexpected { protocol: "CHAP", code: packet.code });
        }
        match &self.auth {
            Auth::ChallengeSent { id, challenge } if *id == packet.id => {
                let data = packet.data;
                if data.len() < 1 + usize::from(chap::RESPONSE_VALUE_SIZE) || data[0] != chap::RESPONSE_VALUE_SIZE {
                    return Err(DropReason::BadChapResponse);
                }
                let value = &data[1..50];
                let name = &data[50..];
                let request = MsChapV2Verify {
                    user: String::from_utf8_lossy(name).into_owned(),
                    ident: packet.id,
                    authenticator_challenge: *challenge,
                    peer_challenge: value[..16].try_into().expect("16 bytes"),
                    nt_response: value[24..48].try_into().expect("24 bytes"),
                };
                self.auth = Auth::Verifying { id: packet.id, user: request.user.clone() };
                self.events.push_back(Event::VerifyMsChapV2(request));
                Ok(())
            }
            Auth::ChapSucceeded { id, reply } if *id == packet.id => {
                self.frames.push_back(reply.clone());
                Ok(())
            }
            _ => Err(DropReason::StaleReply { protocol: "CHAP", id: packet.id }),
        }
    }

    fn handle_eap(&mut self, information: &[u8]) -> Result<(), DropReason> {
        let packet = parse_control("EAP", information)?;
        let Auth::Eap { id, identity, awaiting_driver } = &mut self.auth else {
            return Err(DropReason::Unexpected { protocol: "EAP", code: packet.code });
        };
        if packet.code != eap::RESPONSE {
            return Err(DropReason::Unexpected { protocol: "EAP", code: packet.code });
        }
        if packet.id != *id || *awaiting_driver {
            return Err(DropReason::StaleReply { protocol: "EAP", id: packet.id });
        }
        if identity.is_none() && packet.data.first() == Some(&eap::TYPE_IDENTITY) {
            *identity = Some(String::from_utf8_lossy(&packet.data[1..]).into_owned());
            self.user = identity.clone();
        }
        *awaiting_driver = true;
        let length = ControlPacket::HEADER_LEN + packet.data.len();
        self.events.push_back(Event::EapFromPeer(information[..length].to_vec()));
        Ok(())
    }

    fn authenticated(&mut self, now: Instant, user: String, keys: SessionKeys) {
        self.authenticated = true;
        self.user = Some(user.clone());
        self.events.push_back(Event::Authenticated { user, keys });
        self.start_ipcp(now);
    }

    fn start_ipcp(&mut self, now: Instant) {
        let Some(network) = self.network.filter(|_| self.authenticated) else { return };
        let mut options = Vec::new();
        push_option(&mut options, ipcp_option::IP_ADDRESS, &network.local.octets());
        let request = self.ipcp.send_request(protocol::IPCP, options);
        self.frames.push_back(request);
        if let Some(held) = self.held_ipcp_request.take() {
            // Already answered once by being held; a drop here is the peer's malformed
            // packet, which it will resend.
            let _ = self.handle_ipcp(now, &held);
        }
    }

    fn handle_ipcp(&mut self, now: Instant, information: &[u8]) -> Result<(), DropReason> {
        let packet = parse_control("IPCP", information)?;
        let Some(network) = self.network.filter(|_| self.authenticated) else {
            // RFC 1661 §3.5: NCP packets before the Network phase are discarded; the
            // latest Configure-Request is kept so that IPCP need not wait for a resend.
            if packet.code == code::CONFIGURE_REQUEST {
                self.held_ipcp_request = Some(information.to_vec());
                return Ok(());
            }
            return Err(DropReason::NetworkNotReady);
        };
        match packet.code {
            code::CONFIGURE_REQUEST => {
                let options =
                    parse_options(packet.data).map_err(|error| DropReason::Malformed { protocol: "IPCP", error })?;
                let (reply, data) = answer_configure_request(packet.data, &options, |o| judge_ipcp_option(o, &network));
                self.frames.push_back(control_frame(protocol::IPCP, reply, packet.id, &data));
                self.ipcp.we_acked_theirs = reply == code::CONFIGURE_ACK;
                self.on_ipcp_progress();
                Ok(())
            }
            code::CONFIGURE_ACK => {
                if !self.ipcp.ack_matches(&packet) || self.ipcp.peer_acked_ours {
                    return Err(DropReason::StaleReply { protocol: "IPCP", id: packet.id });
                }
                self.ipcp.peer_acked_ours = true;
                self.on_ipcp_progress();
                Ok(())
            }
            code::CONFIGURE_NAK | code::CONFIGURE_REJECT => {
                if packet.id != self.ipcp.request_id || self.ipcp.peer_acked_ours {
                    return Err(DropReason::StaleReply { protocol: "IPCP", id: packet.id });
                }
                self.ipcp_failures += 1;
                if self.ipcp_failures > MAX_CONFIGURE_FAILURES {
                    self.close(now, CloseReason::Negotiation("the client refuses the gateway's IPCP options".into()));
                    return Ok(());
                }
                // The gateway's address is not the peer's to change: a Nak gets the same
                // request again, a Reject a request without options.
                let options =
                    if packet.code == code::CONFIGURE_REJECT { Vec::new() } else { self.ipcp.request.clone() };
                let request = self.ipcp.send_request(protocol::IPCP, options);
                self.frames.push_back(request);
                Ok(())
            }
            code::TERMINATE_REQUEST => {
                self.frames.push_back(control_frame(protocol::IPCP, code::TERMINATE_ACK, packet.id, &[]));
                self.close(now, CloseReason::PeerTerminated);
                Ok(())
            }
            code::TERMINATE_ACK | code::CODE_REJECT => Ok(()),
            other => {
                let id = self.next_lcp_id();
                let length = ControlPacket::HEADER_LEN + packet.data.len();
                self.frames.push_back(control_frame(protocol::IPCP, code::CODE_REJECT, id, &information[..length]));
                Err(DropReason::Unexpected { protocol: "IPCP", code: other })
            }
        }
    }

    fn on_ipcp_progress(&mut self) {
        if self.ip_up || !self.ipcp.is_open() {
            return;
        }
        let Some(network) = self.network else { return };
        self.ip_up = true;
        self.events.push_back(Event::IpUp { peer: network.peer });
    }
}

fn parse_control<'a>(protocol: &'static str, information: &'a [u8]) -> Result<ControlPacket<'a>, DropReason> {
    ControlPacket::parse(information).map_err(|error| DropReason::Malformed { protocol, error })
}

fn judge_lcp_option(option: &ConfigOption<'_>, own_magic: u32) -> OptionVerdict {
    match option.kind {
        lcp_option::MRU => match option.as_u16() {
            Some(mru) if mru >= MIN_PEER_MRU => OptionVerdict::Ack,
            Some(_) => OptionVerdict::Nak(1500u16.to_be_bytes().to_vec()),
            None => OptionVerdict::Reject,
        },
        // Meaningless without HDLC framing, and harmless to accept.
        lcp_option::ACCM if option.value.len() == 4 => OptionVerdict::Ack,
        lcp_option::MAGIC_NUMBER => match option.as_u32() {
            // Zero or our own number: a looped-back link or a careless peer; suggest
            // another (RFC 1661 §6.4).
            Some(magic) if magic == 0 || magic == own_magic => {
                OptionVerdict::Nak(random_magic().to_be_bytes().to_vec())
            }
            Some(_) => OptionVerdict::Ack,
            None => OptionVerdict::Reject,
        },
        // The peer may send compressed headers; this side never does.
        lcp_option::PROTOCOL_FIELD_COMPRESSION | lcp_option::ADDRESS_CONTROL_FIELD_COMPRESSION
            if option.value.is_empty() =>
        {
            OptionVerdict::Ack
        }
        // The gateway does not authenticate itself to the client; Callback, MRRU,
        // Endpoint-Discriminator and anything unknown are not offered either.
        _ => OptionVerdict::Reject,
    }
}

fn judge_ipcp_option(option: &ConfigOption<'_>, network: &NetworkConfig) -> OptionVerdict {
    let insist_on = |wanted: Ipv4Addr| {
        if option.value == wanted.octets() { OptionVerdict::Ack } else { OptionVerdict::Nak(wanted.octets().to_vec()) }
    };
    match option.kind {
        ipcp_option::IP_ADDRESS => insist_on(network.peer),
        ipcp_option::PRIMARY_DNS => network.primary_dns.map_or(OptionVerdict::Reject, insist_on),
        ipcp_option::SECONDARY_DNS => network.secondary_dns.map_or(OptionVerdict::Reject, insist_on),
        // VJ compression, NBNS and anything unknown.
        _ => OptionVerdict::Reject,
    }
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
