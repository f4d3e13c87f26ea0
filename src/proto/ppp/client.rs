//! A userspace PPP peer (the client side of [`super::server`]) for tests and load
//! generation: LCP with options like Windows sends them, MS-CHAPv2 from a password or
//! EAP-TLS with a certificate, IPCP asking for an address and DNS servers, then IPv4
//! packets.

use std::collections::VecDeque;
use std::net::Ipv4Addr;

use super::packet::{
    CHAP_MS_CHAP_V2, ConfigOption, ControlPacket, Frame, Negotiation, OptionVerdict, answer_configure_request, code,
    control_frame, frame, ipcp_option, lcp_option, parse_options, protocol, push_option,
};
use super::server::DropReason;
use crate::crypto::mschapv2;
use crate::proto::eap::tls::{EapTlsPeer, PeerStep};
use crate::proto::eap::{self, method};

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The CHAP Name (may be `DOMAIN\user`), or the EAP Identity.
    pub user: String,
    pub password: String,
    /// Sign in with EAP-TLS instead of MS-CHAPv2.
    pub eap_tls: Option<EapTlsConfig>,
}

/// The client's TLS for EAP-TLS: its certificate and key, and the roots and name the
/// gateway's certificate is checked against.
#[derive(Debug, Clone)]
pub struct EapTlsConfig {
    pub tls: std::sync::Arc<rustls::ClientConfig>,
    pub server_name: rustls::pki_types::ServerName<'static>,
}

/// TLS data per EAP-TLS packet: what Windows uses, well inside the gateway's MRU.
const EAP_TLS_FRAGMENT: usize = 1400;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// The gateway accepted the password and proved it knows it too.
    Authenticated,
    IpUp {
        address: Ipv4Addr,
        primary_dns: Option<Ipv4Addr>,
        secondary_dns: Option<Ipv4Addr>,
    },
    TunnelPacket(Vec<u8>),
    Closed(String),
}

/// MS-CHAPv2 Response sent, waiting for the verdict.
struct PendingAuth {
    expected_authenticator_response: String,
    hlak: [u8; 32],
}

pub struct PppClient {
    config: ClientConfig,
    magic: u32,
    lcp: Negotiation,
    pending_auth: Option<PendingAuth>,
    eap_tls: Option<EapTlsPeer>,
    hlak: Option<[u8; 32]>,
    authenticated: bool,
    ipcp: Negotiation,
    /// IPCP options asked for, updated by the gateway's Naks.
    ipcp_wanted: Vec<(u8, Ipv4Addr)>,
    ip_up: bool,
    closed: bool,
    frames: VecDeque<Vec<u8>>,
    events: VecDeque<ClientEvent>,
}

impl PppClient {
    /// A client whose LCP Configure-Request is ready to send.
    pub fn new(config: ClientConfig) -> Self {
        let mut magic = [0u8; 4];
        aws_lc_rs::rand::fill(&mut magic).expect("the system RNG works");
        let mut client = PppClient {
            config,
            magic: u32::from_be_bytes(magic).max(1),
            lcp: Negotiation::default(),
            pending_auth: None,
            eap_tls: None,
            hlak: None,
            authenticated: false,
            ipcp: Negotiation::default(),
            ipcp_wanted: [
                ipcp_option::IP_ADDRESS,
                ipcp_option::PRIMARY_DNS,
                ipcp_option::PRIMARY_NBNS,
                ipcp_option::SECONDARY_DNS,
                ipcp_option::SECONDARY_NBNS,
            ]
            .into_iter()
            .map(|kind| (kind, Ipv4Addr::UNSPECIFIED))
            .collect(),
            ip_up: false,
            closed: false,
            frames: VecDeque::new(),
            events: VecDeque::new(),
        };
        // What Windows asks for: a large MRU, a magic number, and options a gateway
        // rejects (callback, endpoint discriminator).
        let mut options = Vec::new();
        push_option(&mut options, lcp_option::MRU, &4091u16.to_be_bytes());
        push_option(&mut options, lcp_option::MAGIC_NUMBER, &client.magic.to_be_bytes());
        push_option(&mut options, lcp_option::CALLBACK, &[6]);
        push_option(&mut options, lcp_option::ENDPOINT_DISCRIMINATOR, &[1, 0x70, 0x32, 0x73, 0x67]);
        let request = client.lcp.send_request(protocol::LCP, options);
        client.frames.push_back(request);
        client
    }

    /// The client's HLAK (MS-SSTP 3.2.5.2.4): MasterSendKey || MasterReceiveKey, known as
    /// soon as the MS-CHAPv2 Response is sent, as Windows computes it; for EAP-TLS the
    /// MSK's first 32 bytes, known once the TLS handshake is over.
    pub fn hlak(&self) -> Option<[u8; 32]> {
        self.hlak
    }

    pub fn is_authenticated(&self) -> bool {
        self.authenticated
    }

    pub fn poll_frame(&mut self) -> Option<Vec<u8>> {
        self.frames.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    pub fn send_ip(&self, packet: &[u8]) -> Option<Vec<u8>> {
        self.ip_up.then(|| frame(protocol::IPV4, packet))
    }

    pub fn handle_frame(&mut self, bytes: &[u8]) -> Result<(), DropReason> {
        if self.closed {
            return Err(DropReason::Closed);
        }
        let frame = Frame::parse(bytes)?;
        match frame.protocol {
            protocol::LCP => self.handle_lcp(frame.information),
            protocol::CHAP => self.handle_chap(frame.information),
            protocol::EAP => self.handle_eap(frame.information),
            protocol::IPCP => self.handle_ipcp(frame.information),
            protocol::IPV4 if self.ip_up => {
                self.events.push_back(ClientEvent::TunnelPacket(frame.information.to_vec()));
                Ok(())
            }
            protocol::IPV4 => Err(DropReason::NetworkNotUp),
            _ => Err(DropReason::Unexpected { protocol: super::protocol_name(frame.protocol), code: 0 }),
        }
    }

    fn close_with(&mut self, reason: String) {
        if !self.closed {
            self.closed = true;
            self.ip_up = false;
            self.events.push_back(ClientEvent::Closed(reason));
        }
    }

    fn handle_lcp(&mut self, information: &[u8]) -> Result<(), DropReason> {
        let packet = parse("LCP", information)?;
        match packet.code {
            code::CONFIGURE_REQUEST => {
                let options =
                    parse_options(packet.data).map_err(|error| DropReason::Malformed { protocol: "LCP", error })?;
                let wanted: &[u8] = if self.config.eap_tls.is_some() { &EAP } else { &MS_CHAP_V2 };
                let (reply, data) = answer_configure_request(packet.data, &options, |o| judge_lcp_option(o, wanted));
                self.frames.push_back(control_frame(protocol::LCP, reply, packet.id, &data));
                self.lcp.we_acked_theirs = reply == code::CONFIGURE_ACK;
            }
            code::CONFIGURE_ACK if self.lcp.ack_matches(&packet) => self.lcp.peer_acked_ours = true,
            code::CONFIGURE_REJECT | code::CONFIGURE_NAK if packet.id == self.lcp.request_id => {
                let answered =
                    parse_options(packet.data).map_err(|error| DropReason::Malformed { protocol: "LCP", error })?;
                let ours = self.lcp.request.clone();
                let mut options = Vec::new();
                for option in parse_options(&ours).expect("our own request parses") {
                    match answered.iter().find(|a| a.kind == option.kind) {
                        None => option.push_to(&mut options),
                        Some(_) if packet.code == code::CONFIGURE_REJECT => {}
                        Some(suggested) => suggested.push_to(&mut options),
                    }
                }
                let request = self.lcp.send_request(protocol::LCP, options);
                self.frames.push_back(request);
            }
            code::ECHO_REQUEST => {
                let mut data = self.magic.to_be_bytes().to_vec();
                data.extend_from_slice(packet.data.get(4..).unwrap_or_default());
                self.frames.push_back(control_frame(protocol::LCP, code::ECHO_REPLY, packet.id, &data));
            }
            code::TERMINATE_REQUEST => {
                self.frames.push_back(control_frame(protocol::LCP, code::TERMINATE_ACK, packet.id, &[]));
                self.close_with("the gateway ended the PPP link".into());
            }
            code::TERMINATE_ACK => self.close_with("PPP link closed".into()),
            code::ECHO_REPLY | code::PROTOCOL_REJECT | code::CODE_REJECT => {}
            other => return Err(DropReason::Unexpected { protocol: "LCP", code: other }),
        }
        Ok(())
    }

    fn handle_chap(&mut self, information: &[u8]) -> Result<(), DropReason> {
        const CHALLENGE: u8 = 1;
        const RESPONSE: u8 = 2;
        const SUCCESS: u8 = 3;
        const FAILURE: u8 = 4;
        let packet = parse("CHAP", information)?;
        match packet.code {
            CHALLENGE => {
                let value = packet
                    .data
                    .get(1..17)
                    .filter(|_| packet.data[0] == 16)
                    .ok_or(DropReason::Malformed { protocol: "CHAP", error: super::packet::ControlError::TooShort })?;
                let authenticator_challenge: [u8; 16] = value.try_into().expect("16 bytes");
                let mut peer_challenge = [0u8; 16];
                aws_lc_rs::rand::fill(&mut peer_challenge).expect("the system RNG works");
                let user = self.config.user.as_bytes();
                let hash = mschapv2::nt_password_hash(&self.config.password);
                let nt_response =
                    mschapv2::generate_nt_response(&authenticator_challenge, &peer_challenge, user, &hash);
                let mut data = vec![49];
                data.extend_from_slice(&peer_challenge);
                data.extend_from_slice(&[0; 8]);
                data.extend_from_slice(&nt_response);
                data.push(0);
                data.extend_from_slice(user);
                self.frames.push_back(control_frame(protocol::CHAP, RESPONSE, packet.id, &data));
                let keys = mschapv2::mppe_keys(&hash, &nt_response);
                // The client's send key is the server's receive key.
                let mut hlak = [0u8; 32];
                hlak[..16].copy_from_slice(&keys.server_receive);
                hlak[16..].copy_from_slice(&keys.server_send);
                self.hlak = Some(hlak);
                self.pending_auth = Some(PendingAuth {
                    expected_authenticator_response: mschapv2::generate_authenticator_response(
                        &hash,
                        &nt_response,
                        &peer_challenge,
                        &authenticator_challenge,
                        user,
                    ),
                    hlak,
                });
            }
            SUCCESS => {
                let Some(pending) = self.pending_auth.take() else {
                    return Err(DropReason::Unexpected { protocol: "CHAP", code: SUCCESS });
                };
                let text = String::from_utf8_lossy(packet.data);
                let proof = text.split(' ').next().unwrap_or_default();
                if proof != pending.expected_authenticator_response {
                    self.close_with(format!("the gateway's authenticator response {proof:?} is wrong"));
                    return Ok(());
                }
                self.hlak = Some(pending.hlak);
                self.authenticated = true;
                self.events.push_back(ClientEvent::Authenticated);
                self.send_ipcp_request();
            }
            FAILURE => {
                self.pending_auth = None;
                self.hlak = None;
                self.close_with(format!("authentication refused: {}", String::from_utf8_lossy(packet.data)));
            }
            other => return Err(DropReason::Unexpected { protocol: "CHAP", code: other }),
        }
        Ok(())
    }

    fn handle_eap(&mut self, information: &[u8]) -> Result<(), DropReason> {
        let packet = parse("EAP", information)?;
        let length = ControlPacket::HEADER_LEN + packet.data.len();
        match packet.code {
            eap::code::REQUEST => {
                let Some(setup) = &self.config.eap_tls else {
                    return Err(DropReason::Unexpected { protocol: "EAP", code: packet.code });
                };
                match packet.data.first() {
                    Some(&method::IDENTITY) => {
                        let mut data = vec![method::IDENTITY];
                        data.extend_from_slice(self.config.user.as_bytes());
                        self.frames.push_back(control_frame(protocol::EAP, eap::code::RESPONSE, packet.id, &data));
                    }
                    Some(&method::TLS) => {
                        if self.eap_tls.is_none() {
                            match EapTlsPeer::new(setup.tls.clone(), setup.server_name.clone(), EAP_TLS_FRAGMENT) {
                                Ok(peer) => self.eap_tls = Some(peer),
                                Err(e) => {
                                    self.close_with(format!("cannot start TLS: {e}"));
                                    return Ok(());
                                }
                            }
                        }
                        let peer = self.eap_tls.as_mut().expect("created above");
                        let step = peer.handle_request(&information[..length]);
                        if self.hlak.is_none() {
                            self.hlak = peer.msk().map(|msk| msk[..32].try_into().expect("the MSK has 64 bytes"));
                        }
                        match step {
                            PeerStep::Response(response) => self.frames.push_back(frame(protocol::EAP, &response)),
                            PeerStep::Failed(reason) => self.close_with(reason),
                        }
                    }
                    _ => {
                        // Legacy Nak (RFC 3748 §5.3.1): only EAP-TLS.
                        let data = [method::NAK, method::TLS];
                        self.frames.push_back(control_frame(protocol::EAP, eap::code::RESPONSE, packet.id, &data));
                    }
                }
            }
            eap::code::SUCCESS => {
                if self.hlak.is_none() {
                    self.close_with("EAP-Success before the TLS handshake finished".into());
                    return Ok(());
                }
                self.authenticated = true;
                self.events.push_back(ClientEvent::Authenticated);
                self.send_ipcp_request();
            }
            eap::code::FAILURE => {
                self.hlak = None;
                let why = self.eap_tls.as_ref().and_then(|p| p.failure()).map(|f| format!(": {f}")).unwrap_or_default();
                self.close_with(format!("authentication refused (EAP-Failure){why}"));
            }
            other => return Err(DropReason::Unexpected { protocol: "EAP", code: other }),
        }
        Ok(())
    }

    fn send_ipcp_request(&mut self) {
        let mut options = Vec::new();
        for (kind, address) in &self.ipcp_wanted {
            push_option(&mut options, *kind, &address.octets());
        }
        let request = self.ipcp.send_request(protocol::IPCP, options);
        self.frames.push_back(request);
    }

    fn handle_ipcp(&mut self, information: &[u8]) -> Result<(), DropReason> {
        let packet = parse("IPCP", information)?;
        match packet.code {
            code::CONFIGURE_REQUEST => {
                let options =
                    parse_options(packet.data).map_err(|error| DropReason::Malformed { protocol: "IPCP", error })?;
                let (reply, data) = answer_configure_request(packet.data, &options, |o| match o.kind {
                    ipcp_option::IP_ADDRESS if o.value.len() == 4 => OptionVerdict::Ack,
                    _ => OptionVerdict::Reject,
                });
                self.frames.push_back(control_frame(protocol::IPCP, reply, packet.id, &data));
                self.ipcp.we_acked_theirs = reply == code::CONFIGURE_ACK;
            }
            code::CONFIGURE_ACK if self.ipcp.ack_matches(&packet) => self.ipcp.peer_acked_ours = true,
            code::CONFIGURE_NAK | code::CONFIGURE_REJECT if packet.id == self.ipcp.request_id => {
                let answered =
                    parse_options(packet.data).map_err(|error| DropReason::Malformed { protocol: "IPCP", error })?;
                for option in answered {
                    if packet.code == code::CONFIGURE_REJECT {
                        self.ipcp_wanted.retain(|(kind, _)| *kind != option.kind);
                    } else if let (Some(entry), Ok(octets)) = (
                        self.ipcp_wanted.iter_mut().find(|(kind, _)| *kind == option.kind),
                        <[u8; 4]>::try_from(option.value),
                    ) {
                        entry.1 = Ipv4Addr::from(octets);
                    }
                }
                self.send_ipcp_request();
            }
            code::TERMINATE_REQUEST => {
                self.frames.push_back(control_frame(protocol::IPCP, code::TERMINATE_ACK, packet.id, &[]));
            }
            other => return Err(DropReason::Unexpected { protocol: "IPCP", code: other }),
        }
        if !self.ip_up && self.ipcp.is_open() {
            self.ip_up = true;
            let wanted = |kind| self.ipcp_wanted.iter().find(|(k, _)| *k == kind).map(|(_, a)| *a);
            let event = ClientEvent::IpUp {
                address: wanted(ipcp_option::IP_ADDRESS).unwrap_or(Ipv4Addr::UNSPECIFIED),
                primary_dns: wanted(ipcp_option::PRIMARY_DNS),
                secondary_dns: wanted(ipcp_option::SECONDARY_DNS),
            };
            self.events.push_back(event);
        }
        Ok(())
    }
}

fn parse<'a>(protocol: &'static str, information: &'a [u8]) -> Result<ControlPacket<'a>, DropReason> {
    ControlPacket::parse(information).map_err(|error| DropReason::Malformed { protocol, error })
}

const MS_CHAP_V2: [u8; 3] = [0xc2, 0x23, CHAP_MS_CHAP_V2];
const EAP: [u8; 2] = [0xc2, 0x27];

/// The client accepts the gateway's MRU and magic number and only the authentication
/// protocol it is set up for (`wanted`), which it names in a Nak of any other.
fn judge_lcp_option(option: &ConfigOption<'_>, wanted: &[u8]) -> OptionVerdict {
    match option.kind {
        lcp_option::MRU | lcp_option::MAGIC_NUMBER => OptionVerdict::Ack,
        lcp_option::AUTH_PROTOCOL if option.value == wanted => OptionVerdict::Ack,
        lcp_option::AUTH_PROTOCOL => OptionVerdict::Nak(wanted.to_vec()),
        _ => OptionVerdict::Reject,
    }
}
