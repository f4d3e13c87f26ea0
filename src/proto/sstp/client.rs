//! A userspace SSTP client (what Windows does, PROTOCOLS.md §2.3–2.5) over the bytes
//! inside TLS, with its [`PppClient`], for tests and load generation: HTTP request,
//! CALL_CONNECT_REQUEST, PPP with MS-CHAPv2 or EAP-TLS, CALL_CONNECTED with the crypto binding,
//! then IPv4 packets.

use std::collections::VecDeque;
use std::net::Ipv4Addr;

use super::binding::{self, CertHashes, HashProtocol};
use super::http;
use super::packet::{self, MessageType, Packet, attribute};
use crate::proto::ppp::client::{ClientConfig as PppClientConfig, ClientEvent, EapTlsConfig, PppClient};

#[derive(Debug, Clone)]
pub struct SstpClientConfig {
    /// The Host header.
    pub host: String,
    pub user: String,
    pub password: String,
    /// Sign in with EAP-TLS (a certificate) instead of MS-CHAPv2.
    pub eap_tls: Option<EapTlsConfig>,
    /// The hashes of the certificate TLS showed (the binding proves it is the gateway's).
    pub server_cert_hashes: CertHashes,
    /// Send CALL_CONNECTED right after the MS-CHAPv2 Response, before the verdict, as
    /// Windows does; otherwise after the CHAP Success.
    pub call_connected_early: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SstpClientEvent {
    IpUp { address: Ipv4Addr, primary_dns: Option<Ipv4Addr>, secondary_dns: Option<Ipv4Addr> },
    TunnelPacket(Vec<u8>),
    Closed(String),
}

enum State {
    AwaitingHttp,
    AwaitingConnectAck,
    /// ACK received; PPP runs.
    Negotiating {
        hash: HashProtocol,
        nonce: [u8; 32],
        connected_sent: bool,
    },
    Closed,
}

pub struct SstpClient {
    config: SstpClientConfig,
    state: State,
    ppp: Option<PppClient>,
    /// Why PPP ended, reported when the gateway's CALL_DISCONNECT follows.
    ppp_closed: Option<String>,
    input: Vec<u8>,
    output: Vec<u8>,
    events: VecDeque<SstpClientEvent>,
}

impl SstpClient {
    /// A client whose HTTP request is ready to send.
    pub fn new(config: SstpClientConfig) -> Self {
        let mut guid = [0u8; 16];
        aws_lc_rs::rand::fill(&mut guid).expect("the system RNG works");
        let correlation_id: String = guid.iter().map(|b| format!("{b:02X}")).collect();
        let output = http::client_request(&config.host, &correlation_id);
        SstpClient {
            config,
            state: State::AwaitingHttp,
            ppp: None,
            ppp_closed: None,
            input: Vec::new(),
            output,
            events: VecDeque::new(),
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        (!self.output.is_empty()).then(|| std::mem::take(&mut self.output))
    }

    pub fn poll_event(&mut self) -> Option<SstpClientEvent> {
        self.events.pop_front()
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Whether CALL_CONNECTED went out.
    pub fn call_connected_sent(&self) -> bool {
        matches!(self.state, State::Negotiating { connected_sent: true, .. })
    }

    /// Sends an IPv4 packet; `false` until IPCP is up.
    pub fn send_ip(&mut self, packet: &[u8]) -> bool {
        match self.ppp.as_ref().and_then(|ppp| ppp.send_ip(packet)) {
            Some(frame) => packet::push_data(&mut self.output, &frame),
            None => false,
        }
    }

    /// Sends an SSTP ECHO_REQUEST (the gateway must answer).
    pub fn send_echo_request(&mut self) {
        self.output.extend_from_slice(&packet::control(MessageType::EchoRequest, &[]));
    }

    /// Sends CALL_DISCONNECT; closed when the gateway acks it.
    pub fn disconnect(&mut self) {
        self.output.extend_from_slice(&packet::control(MessageType::CallDisconnect, &[]));
    }

    /// Bytes TLS decrypted from the gateway.
    pub fn handle_input(&mut self, bytes: &[u8]) {
        self.input.extend_from_slice(bytes);
        let input = std::mem::take(&mut self.input);
        let mut consumed = 0;
        while !self.is_closed() {
            let rest = &input[consumed..];
            if matches!(self.state, State::AwaitingHttp) {
                match http::parse_response(rest) {
                    Ok(None) => break,
                    Ok(Some(head_len)) => {
                        consumed += head_len;
                        self.output.extend_from_slice(&packet::control(
                            MessageType::CallConnectRequest,
                            &[(attribute::ENCAPSULATED_PROTOCOL_ID, &packet::ENCAPSULATED_PROTOCOL_PPP.to_be_bytes())],
                        ));
                        self.state = State::AwaitingConnectAck;
                    }
                    Err(error) => self.close(error.to_string()),
                }
                continue;
            }
            match packet::packet_len(rest) {
                Ok(Some(length)) if length <= rest.len() => {
                    consumed += length;
                    self.handle_packet(&rest[..length]);
                }
                Ok(_) => break,
                Err(error) => self.close(format!("SSTP stream broken: {error}")),
            }
        }
        self.input = input;
        self.input.drain(..consumed.min(self.input.len()));
    }

    fn close(&mut self, reason: String) {
        if !self.is_closed() {
            self.state = State::Closed;
            self.events.push_back(SstpClientEvent::Closed(reason));
        }
    }

    fn handle_packet(&mut self, bytes: &[u8]) {
        let message = match Packet::parse(bytes) {
            Ok(Packet::Data(frame)) => {
                if let Some(ppp) = &mut self.ppp {
                    // A dropped frame is the gateway's fault; the tests look at outcomes.
                    let _ = ppp.handle_frame(frame);
                }
                self.pump_ppp();
                return;
            }
            Ok(Packet::Control(message)) => message,
            Err(error) => return self.close(format!("malformed SSTP packet from the gateway: {error}")),
        };
        match message.message_type {
            MessageType::CallConnectAck => {
                let Some(request) = message.attribute(attribute::CRYPTO_BINDING_REQ).filter(|r| r.len() == 36) else {
                    return self.close("CALL_CONNECT_ACK without a crypto binding request".into());
                };
                let hash = if request[3] & HashProtocol::Sha256.bit() != 0 {
                    HashProtocol::Sha256
                } else {
                    HashProtocol::Sha1
                };
                let nonce = request[4..36].try_into().expect("32 bytes");
                self.state = State::Negotiating { hash, nonce, connected_sent: false };
                self.ppp = Some(PppClient::new(PppClientConfig {
                    user: self.config.user.clone(),
                    password: self.config.password.clone(),
                    eap_tls: self.config.eap_tls.clone(),
                }));
                self.pump_ppp();
            }
            MessageType::CallConnectNak => self.close("the gateway refused the call (CALL_CONNECT_NAK)".into()),
            MessageType::EchoRequest => {
                self.output.extend_from_slice(&packet::control(MessageType::EchoResponse, &[]));
            }
            MessageType::CallAbort => self.close("the gateway aborted the call".into()),
            MessageType::CallDisconnect => {
                self.output.extend_from_slice(&packet::control(MessageType::CallDisconnectAck, &[]));
                let reason = self.ppp_closed.take().unwrap_or_else(|| "the gateway disconnected".into());
                self.close(reason);
            }
            MessageType::CallDisconnectAck => self.close("disconnected".into()),
            _ => {}
        }
    }

    fn pump_ppp(&mut self) {
        let Some(ppp) = &mut self.ppp else { return };
        while let Some(frame) = ppp.poll_frame() {
            packet::push_data(&mut self.output, &frame);
        }
        if let State::Negotiating { hash, nonce, connected_sent } = &mut self.state
            && !*connected_sent
            && let Some(hlak) = ppp.hlak().filter(|_| self.config.call_connected_early || ppp.is_authenticated())
        {
            let message = binding::call_connected(*hash, nonce, &self.config.server_cert_hashes, &hlak);
            self.output.extend_from_slice(&message);
            *connected_sent = true;
        }
        while let Some(event) = ppp.poll_event() {
            match event {
                ClientEvent::Authenticated => {}
                ClientEvent::IpUp { address, primary_dns, secondary_dns } => {
                    self.events.push_back(SstpClientEvent::IpUp { address, primary_dns, secondary_dns })
                }
                ClientEvent::TunnelPacket(packet) => self.events.push_back(SstpClientEvent::TunnelPacket(packet)),
                ClientEvent::Closed(reason) => self.ppp_closed = Some(reason),
            }
        }
    }
}
