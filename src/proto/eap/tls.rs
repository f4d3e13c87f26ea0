//! EAP-TLS (RFC 5216; TLS 1.3 as RFC 9190 has it), sans-IO over rustls.
//!
//! [`EapTlsServer`] is the authenticator the gateway runs: it sends the Start, carries
//! the TLS handshake of a `rustls::ServerConnection` (which requires and verifies the
//! client certificate) in EAP Requests, fragmenting both ways, and concludes with the
//! MSK and the client's certificate, or with the reason for a failure. The driver sends
//! EAP-Success or EAP-Failure itself (PPP builds them). [`EapTlsPeer`] is the other
//! side, over a `rustls::ClientConnection`, for tests and the test client.
//!
//! Type data: `Flags(1) [TLS Message Length(4)] TLS data`. L: the length is present
//! (first fragment of a fragmented message); M: more fragments follow; S: Start. Each
//! fragment is acknowledged by an empty message of the other side (RFC 5216 §2.1.5).

use std::io::{Read as _, Write as _};
use std::sync::Arc;

use rustls::client::ClientConnectionData;
use rustls::pki_types::ServerName;
use rustls::server::ServerConnectionData;
use rustls::{ClientConnection, ConnectionCommon, ProtocolVersion, ServerConnection};

use super::{HEADER_LEN, code, encode, method};

/// Flag bits (RFC 5216 §3.1).
pub mod flag {
    pub const LENGTH_INCLUDED: u8 = 0x80;
    pub const MORE_FRAGMENTS: u8 = 0x40;
    pub const START: u8 = 0x20;
}

/// The largest TLS message accepted in fragments: a handshake flight with a long client
/// certificate chain stays far below it.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Bytes an EAP-TLS packet takes besides its TLS data: EAP header, type, flags and the
/// TLS Message Length.
pub const OVERHEAD: usize = HEADER_LEN + 2 + 4;
/// The MSK's length (RFC 5216 §2.3, RFC 9190 §2.3).
pub const MSK_LEN: usize = 64;
/// Key_Material is 128 bytes; the MSK is its first 64. In TLS 1.3 the exporter's output
/// depends on the length asked for, so it must be asked for 128 bytes.
const KEY_MATERIAL_LEN: usize = 128;
/// RFC 5216 §2.3: TLS-PRF-128(master_secret, "client EAP encryption", client.random ||
/// server.random), which is the TLS 1.2 exporter with no context.
const TLS12_LABEL: &[u8] = b"client EAP encryption";
/// RFC 9190 §2.3: TLS-Exporter("EXPORTER_EAP_TLS_Key_Material", Type-Code, 128).
const TLS13_LABEL: &[u8] = b"EXPORTER_EAP_TLS_Key_Material";
/// RFC 9190 §2.5: the one byte of application data that says the handshake is over.
const COMMITMENT: u8 = 0x00;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EapTlsError {
    #[error("EAP packet shorter than its header, type and flags")]
    TooShort,
    #[error("EAP Length {declared} is below 4 or beyond the {available} bytes received")]
    BadLength { declared: usize, available: usize },
    #[error("EAP code {0} where a Request or Response was expected")]
    UnexpectedCode(u8),
    #[error("EAP method {0} instead of EAP-TLS")]
    OtherMethod(u8),
    #[error("TLS Message Length {0} is beyond the {MAX_MESSAGE} bytes accepted")]
    MessageTooLong(usize),
    #[error("the fragments carry more than the announced TLS Message Length {0}")]
    FragmentOverrun(usize),
    #[error("the fragments carry {received} bytes, not the announced TLS Message Length {announced}")]
    LengthMismatch { announced: usize, received: usize },
    #[error("a fragment with the More flag carries no data")]
    EmptyFragment,
}

/// One EAP-TLS Request or Response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsMessage<'a> {
    pub code: u8,
    pub id: u8,
    /// M and S; L is implied by `tls_length`.
    pub flags: u8,
    /// The TLS Message Length, when the L flag is set.
    pub tls_length: Option<u32>,
    pub data: &'a [u8],
}

impl<'a> TlsMessage<'a> {
    /// Parses an EAP Request or Response of type EAP-TLS; bytes beyond Length are
    /// ignored (PPP may pad).
    pub fn parse(packet: &'a [u8]) -> Result<Self, EapTlsError> {
        if packet.len() < HEADER_LEN + 1 {
            return Err(EapTlsError::TooShort);
        }
        let declared = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
        if declared < HEADER_LEN || declared > packet.len() {
            return Err(EapTlsError::BadLength { declared, available: packet.len() });
        }
        let (code, id) = (packet[0], packet[1]);
        if code != code::REQUEST && code != code::RESPONSE {
            return Err(EapTlsError::UnexpectedCode(code));
        }
        let body = &packet[HEADER_LEN..declared];
        match body.first() {
            None => return Err(EapTlsError::TooShort),
            Some(&method::TLS) => {}
            Some(&other) => return Err(EapTlsError::OtherMethod(other)),
        }
        let &flags = body.get(1).ok_or(EapTlsError::TooShort)?;
        let mut data = &body[2..];
        let mut tls_length = None;
        if flags & flag::LENGTH_INCLUDED != 0 {
            let length: [u8; 4] = data.get(..4).ok_or(EapTlsError::TooShort)?.try_into().expect("4 bytes");
            tls_length = Some(u32::from_be_bytes(length));
            data = &data[4..];
        }
        Ok(TlsMessage { code, id, flags: flags & !flag::LENGTH_INCLUDED, tls_length, data })
    }

    /// The packet's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(6 + self.data.len());
        body.push(method::TLS);
        match self.tls_length {
            Some(length) => {
                body.push(self.flags | flag::LENGTH_INCLUDED);
                body.extend_from_slice(&length.to_be_bytes());
            }
            None => body.push(self.flags & !flag::LENGTH_INCLUDED),
        }
        body.extend_from_slice(self.data);
        encode(self.code, self.id, &body)
    }

    fn has_more(&self) -> bool {
        self.flags & flag::MORE_FRAGMENTS != 0
    }
}

/// TLS messages cut into fragments and put back together (RFC 5216 §2.1.5).
struct Fragments {
    /// TLS data per EAP packet.
    max_fragment: usize,
    /// The message being sent; emptied once its last fragment is out.
    outgoing: Vec<u8>,
    sent: usize,
    incoming: Vec<u8>,
    announced: Option<usize>,
}

impl Fragments {
    fn new(max_fragment: usize) -> Self {
        Fragments {
            max_fragment: max_fragment.max(1),
            outgoing: Vec::new(),
            sent: 0,
            incoming: Vec::new(),
            announced: None,
        }
    }

    fn is_sending(&self) -> bool {
        !self.outgoing.is_empty()
    }

    /// The next fragment, as a message with `code` and `id`.
    fn next(&mut self, code: u8, id: u8) -> Vec<u8> {
        let remaining = self.outgoing.len() - self.sent;
        let take = remaining.min(self.max_fragment);
        let mut flags = 0;
        let fragmented = self.outgoing.len() > self.max_fragment;
        let tls_length = (self.sent == 0 && fragmented)
            .then(|| u32::try_from(self.outgoing.len()).expect("TLS flights are far below 4 GiB"));
        if take < remaining {
            flags |= flag::MORE_FRAGMENTS;
        }
        let data = &self.outgoing[self.sent..self.sent + take];
        let packet = TlsMessage { code, id, flags, tls_length, data }.encode();
        self.sent += take;
        if self.sent == self.outgoing.len() {
            self.outgoing.clear();
            self.sent = 0;
        }
        packet
    }

    /// Takes one received fragment: `Some(message)` once the message is whole (empty
    /// for an acknowledgement).
    fn receive(&mut self, message: &TlsMessage<'_>) -> Result<Option<Vec<u8>>, EapTlsError> {
        // The length counts on a message's first fragment only.
        if self.incoming.is_empty()
            && self.announced.is_none()
            && let Some(length) = message.tls_length
        {
            let length = usize::try_from(length).unwrap_or(usize::MAX);
            if length > MAX_MESSAGE {
                return Err(EapTlsError::MessageTooLong(length));
            }
            self.announced = Some(length);
        }
        let limit = self.announced.unwrap_or(MAX_MESSAGE);
        if self.incoming.len() + message.data.len() > limit {
            return Err(match self.announced {
                Some(announced) => EapTlsError::FragmentOverrun(announced),
                None => EapTlsError::MessageTooLong(self.incoming.len() + message.data.len()),
            });
        }
        self.incoming.extend_from_slice(message.data);
        if message.has_more() {
            if message.data.is_empty() {
                return Err(EapTlsError::EmptyFragment);
            }
            return Ok(None);
        }
        if let Some(announced) = self.announced.take().filter(|a| *a != self.incoming.len()) {
            return Err(EapTlsError::LengthMismatch { announced, received: self.incoming.len() });
        }
        Ok(Some(std::mem::take(&mut self.incoming)))
    }
}

/// Key_Material's first 64 bytes, for the TLS version the connection used.
fn export_msk<D>(tls: &ConnectionCommon<D>) -> Result<Vec<u8>, String> {
    let (label, context): (&[u8], Option<&[u8]>) = match tls.protocol_version() {
        Some(ProtocolVersion::TLSv1_3) => (TLS13_LABEL, Some(&[method::TLS])),
        Some(ProtocolVersion::TLSv1_2) => (TLS12_LABEL, None),
        other => return Err(format!("EAP-TLS keys are not defined for {other:?}")),
    };
    let material = tls
        .export_keying_material([0u8; KEY_MATERIAL_LEN], label, context)
        .map_err(|e| format!("cannot derive the EAP-TLS keys: {e}"))?;
    Ok(material[..MSK_LEN].to_vec())
}

/// Feeds TLS records into a connection; the first TLS error, if any.
fn feed<D>(tls: &mut ConnectionCommon<D>, mut input: &[u8]) -> Result<(), rustls::Error> {
    while !input.is_empty() {
        tls.read_tls(&mut input).map_err(|e| rustls::Error::General(e.to_string()))?;
        tls.process_new_packets()?;
    }
    Ok(())
}

/// Moves everything TLS has to send into `out`.
fn drain<D>(tls: &mut ConnectionCommon<D>, out: &mut Vec<u8>) {
    while tls.wants_write() {
        // Writing into a Vec cannot fail.
        if tls.write_tls(out).is_err() {
            break;
        }
    }
}

/// What the gateway learned from a successful EAP-TLS conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EapTlsSuccess {
    /// The Master Session Key (64 bytes).
    pub msk: Vec<u8>,
    /// The client's leaf certificate (DER), verified against the trust store.
    pub peer_certificate: Vec<u8>,
    /// "TLSv1.2" or "TLSv1.3", for logs.
    pub version: &'static str,
}

/// The authenticator's answer to a Response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerStep {
    /// An EAP Request to send.
    Request(Vec<u8>),
    /// Send EAP-Success: the client is who its certificate says.
    Success(Box<EapTlsSuccess>),
    /// Send EAP-Failure.
    Failure(String),
}

/// The gateway's side of one EAP-TLS conversation.
pub struct EapTlsServer {
    tls: ServerConnection,
    /// The Identifier of the last Request sent.
    id: u8,
    fragments: Fragments,
    commitment_sent: bool,
    /// TLS failed and its alert is on the way; the conversation ends in this failure.
    failed: Option<String>,
    over: bool,
}

impl EapTlsServer {
    /// `tls` must require a client certificate; `max_fragment` is the TLS data per
    /// EAP packet (the link's MTU less [`OVERHEAD`]).
    pub fn new(tls: Arc<rustls::ServerConfig>, max_fragment: usize) -> Result<Self, rustls::Error> {
        let mut tls = ServerConnection::new(tls)?;
        tls.set_buffer_limit(None);
        Ok(EapTlsServer {
            tls,
            id: 0,
            fragments: Fragments::new(max_fragment),
            commitment_sent: false,
            failed: None,
            over: false,
        })
    }

    /// The EAP-TLS Start, the Request after the Response with Identifier `previous_id`.
    pub fn start(&mut self, previous_id: u8) -> Vec<u8> {
        self.id = previous_id.wrapping_add(1);
        TlsMessage { code: code::REQUEST, id: self.id, flags: flag::START, tls_length: None, data: &[] }.encode()
    }

    /// The peer's Response to the last Request.
    pub fn handle_response(&mut self, packet: &[u8]) -> ServerStep {
        match self.step(packet) {
            Ok(step) => step,
            Err(reason) => self.fail(reason),
        }
    }

    fn fail(&mut self, reason: String) -> ServerStep {
        self.over = true;
        ServerStep::Failure(reason)
    }

    fn step(&mut self, packet: &[u8]) -> Result<ServerStep, String> {
        if self.over {
            return Err("the EAP-TLS conversation is over".into());
        }
        let message = match TlsMessage::parse(packet) {
            Ok(message) => message,
            Err(EapTlsError::OtherMethod(method::NAK)) => {
                return Err("the client will not use EAP-TLS (it asked for another EAP method)".into());
            }
            Err(e) => return Err(format!("bad EAP-TLS response: {e}")),
        };
        if message.code != code::RESPONSE || message.id != self.id {
            return Err(format!("EAP-TLS packet (code {}, id {}) answers no Request", message.code, message.id));
        }
        if self.fragments.is_sending() {
            if !message.data.is_empty() || message.has_more() {
                return Err("the client sent TLS data before acknowledging the gateway's fragment".into());
            }
            return Ok(self.next_fragment());
        }
        let Some(input) = self.fragments.receive(&message).map_err(|e| format!("bad EAP-TLS fragment: {e}"))? else {
            return Ok(self.request(TlsMessage { code: code::REQUEST, id: 0, flags: 0, tls_length: None, data: &[] }));
        };
        if input.is_empty() {
            // The acknowledgement of the gateway's last message.
            if let Some(reason) = self.failed.take() {
                return Err(reason);
            }
            if self.tls.is_handshaking() {
                return Err("the client stopped in the middle of the TLS handshake".into());
            }
            return self.succeed();
        }
        if let Err(e) = feed::<ServerConnectionData>(&mut self.tls, &input) {
            self.failed = Some(format!("TLS handshake failed: {e}"));
        } else if !self.tls.is_handshaking()
            && self.tls.protocol_version() == Some(ProtocolVersion::TLSv1_3)
            && !self.commitment_sent
        {
            self.commitment_sent = true;
            self.tls.writer().write_all(&[COMMITMENT]).map_err(|e| format!("TLS: {e}"))?;
        }
        let mut output = Vec::new();
        drain::<ServerConnectionData>(&mut self.tls, &mut output);
        if output.is_empty() {
            return Err(self
                .failed
                .take()
                .unwrap_or_else(|| "the client's TLS data left the handshake stalled".into()));
        }
        self.fragments.outgoing = output;
        Ok(self.next_fragment())
    }

    fn next_fragment(&mut self) -> ServerStep {
        self.id = self.id.wrapping_add(1);
        ServerStep::Request(self.fragments.next(code::REQUEST, self.id))
    }

    fn request(&mut self, mut message: TlsMessage<'_>) -> ServerStep {
        self.id = self.id.wrapping_add(1);
        message.id = self.id;
        ServerStep::Request(message.encode())
    }

    fn succeed(&mut self) -> Result<ServerStep, String> {
        self.over = true;
        let peer_certificate = self
            .tls
            .peer_certificates()
            .and_then(|chain| chain.first())
            .ok_or("the client presented no certificate")?
            .to_vec();
        let version = match self.tls.protocol_version() {
            Some(ProtocolVersion::TLSv1_3) => "TLSv1.3",
            _ => "TLSv1.2",
        };
        let msk = export_msk::<ServerConnectionData>(&self.tls)?;
        Ok(ServerStep::Success(Box::new(EapTlsSuccess { msk, peer_certificate, version })))
    }
}

/// The peer's answer to a Request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerStep {
    /// An EAP Response to send.
    Response(Vec<u8>),
    /// The handshake failed; the gateway will send EAP-Failure or end the link.
    Failed(String),
}

/// The client's side of EAP-TLS.
pub struct EapTlsPeer {
    tls: ClientConnection,
    fragments: Fragments,
    /// The last Request's Identifier and the Response to it (resent for a repeat).
    last: Option<(u8, Vec<u8>)>,
    commitment_received: bool,
    /// Why TLS failed (the gateway's alert, or this side's verdict on the gateway).
    failure: Option<String>,
}

impl EapTlsPeer {
    pub fn new(
        tls: Arc<rustls::ClientConfig>,
        server_name: ServerName<'static>,
        max_fragment: usize,
    ) -> Result<Self, rustls::Error> {
        let mut tls = ClientConnection::new(tls, server_name)?;
        tls.set_buffer_limit(None);
        Ok(EapTlsPeer {
            tls,
            fragments: Fragments::new(max_fragment),
            last: None,
            commitment_received: false,
            failure: None,
        })
    }

    /// The MSK, once the handshake is done (and for TLS 1.3 the gateway committed to
    /// ending it).
    pub fn msk(&self) -> Option<Vec<u8>> {
        let tls13 = self.tls.protocol_version() == Some(ProtocolVersion::TLSv1_3);
        if self.tls.is_handshaking() || (tls13 && !self.commitment_received) {
            return None;
        }
        export_msk::<ClientConnectionData>(&self.tls).ok()
    }

    /// Why the TLS handshake failed, if it did.
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    pub fn handle_request(&mut self, packet: &[u8]) -> PeerStep {
        let message = match TlsMessage::parse(packet) {
            Ok(message) if message.code == code::REQUEST => message,
            Ok(message) => return PeerStep::Failed(format!("EAP code {} where a Request was expected", message.code)),
            Err(e) => return PeerStep::Failed(format!("bad EAP-TLS request: {e}")),
        };
        if let Some((id, response)) = &self.last
            && *id == message.id
        {
            return PeerStep::Response(response.clone());
        }
        let response = match self.answer(&message) {
            Ok(response) => response,
            Err(reason) => return PeerStep::Failed(reason),
        };
        self.last = Some((message.id, response.clone()));
        PeerStep::Response(response)
    }

    fn answer(&mut self, message: &TlsMessage<'_>) -> Result<Vec<u8>, String> {
        let ack = TlsMessage { code: code::RESPONSE, id: message.id, flags: 0, tls_length: None, data: &[] };
        if message.flags & flag::START != 0 {
            drain::<ClientConnectionData>(&mut self.tls, &mut self.fragments.outgoing);
            self.fragments.sent = 0;
            return Ok(self.fragments.next(code::RESPONSE, message.id));
        }
        if self.fragments.is_sending() {
            return Ok(self.fragments.next(code::RESPONSE, message.id));
        }
        let Some(input) = self.fragments.receive(message).map_err(|e| format!("bad EAP-TLS fragment: {e}"))? else {
            return Ok(ack.encode());
        };
        if let Err(e) = feed::<ClientConnectionData>(&mut self.tls, &input) {
            // Acknowledged all the same: the gateway ends with EAP-Failure (RFC 5216
            // §2.1.3), or reads this side's alert.
            self.failure = Some(format!("TLS handshake failed: {e}"));
            drain::<ClientConnectionData>(&mut self.tls, &mut self.fragments.outgoing);
            if self.fragments.is_sending() {
                return Ok(self.fragments.next(code::RESPONSE, message.id));
            }
            return Ok(ack.encode());
        }
        let mut plaintext = [0u8; 16];
        while let Ok(n) = self.tls.reader().read(&mut plaintext) {
            if n == 0 {
                break;
            }
            if plaintext[..n] != [COMMITMENT] {
                return Err("the gateway sent application data other than the EAP-TLS commitment".into());
            }
            self.commitment_received = true;
        }
        drain::<ClientConnectionData>(&mut self.tls, &mut self.fragments.outgoing);
        if self.fragments.is_sending() {
            return Ok(self.fragments.next(code::RESPONSE, message.id));
        }
        Ok(ack.encode())
    }
}

#[cfg(test)]
#[path = "tls_tests.rs"]
mod tests;
