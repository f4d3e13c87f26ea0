//! The requests the gateway sends (PROTOCOLS.md §5.3–5.7): Access-Request with PAP,
//! MS-CHAPv2 or EAP pass-through, and Accounting-Request.
//!
//! A builder checks everything it can and produces a [`Request`]: attributes in plain
//! form. The client encodes it for each server it tries, since the identifier, Request
//! Authenticator, shared secret (and so the hidden password) and Acct-Delay-Time differ
//! per server. Every request starts with a Message-Authenticator (BlastRADIUS,
//! CVE-2024-3596).

use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::auth::{MAX_PASSWORD_LEN, hide_user_password, sign_request};
use super::packet::{
    AUTHENTICATOR_LEN, Attribute, Code, EncodeError, HEADER_LEN, MAX_PACKET_LEN, MAX_VALUE_LEN, Packet, attr,
    check_value_len, ms,
};

/// Where the Message-Authenticator value sits in every request: right after the header
/// and its own 2-byte attribute header.
const MESSAGE_AUTHENTICATOR_VALUE_AT: usize = HEADER_LEN + 2;
const MESSAGE_AUTHENTICATOR_ATTRIBUTE_LEN: usize = 18;

/// How the gateway names itself in every request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NasInfo {
    /// NAS-Identifier: what server-side policies and logs see (for example the gateway's name).
    pub identifier: String,
    /// NAS-IP-Address, if the operator wants one sent.
    pub ip_address: Option<Ipv4Addr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// Access-Request, to a server's authentication port.
    Access,
    /// Accounting-Request, to a server's accounting port.
    Accounting,
}

/// Why a request cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    #[error("a {length}-byte password is longer than the {MAX_PASSWORD_LEN} bytes RADIUS User-Password can carry")]
    PasswordTooLong { length: usize },
    #[error("attribute {kind} is set by the RADIUS client itself and cannot be given as an extra attribute")]
    ReservedAttribute { kind: u8 },
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Field {
    Plain(Attribute),
    /// Hidden with the secret and Request Authenticator of each transmission.
    UserPassword(Vec<u8>),
    /// The delay before the request was handed to the client; the client adds the time
    /// it spent on servers that did not answer.
    AcctDelayTime(Duration),
}

impl Field {
    fn encoded_len(&self) -> usize {
        match self {
            Field::Plain(attribute) => 2 + attribute.value.len(),
            Field::UserPassword(password) => 2 + password.len().div_ceil(16).max(1) * 16,
            Field::AcctDelayTime(_) => 6,
        }
    }
}

/// A checked request, ready for [`super::RadiusClient::send`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    kind: RequestKind,
    fields: Vec<Field>,
}

impl Request {
    fn new(kind: RequestKind, fields: Vec<Field>) -> Result<Request, BuildError> {
        for field in &fields {
            match field {
                Field::Plain(attribute) => check_value_len(attribute)?,
                Field::UserPassword(password) if password.len() > MAX_PASSWORD_LEN => {
                    return Err(BuildError::PasswordTooLong { length: password.len() });
                }
                Field::UserPassword(_) | Field::AcctDelayTime(_) => {}
            }
        }
        let length =
            HEADER_LEN + MESSAGE_AUTHENTICATOR_ATTRIBUTE_LEN + fields.iter().map(Field::encoded_len).sum::<usize>();
        if length > MAX_PACKET_LEN {
            return Err(EncodeError::PacketTooLong { length }.into());
        }
        Ok(Request { kind, fields })
    }

    pub fn kind(&self) -> RequestKind {
        self.kind
    }

    /// The packet for one server: `nonce` is the Request Authenticator of an
    /// Access-Request (an Accounting-Request's is computed), `waited` is added to
    /// Acct-Delay-Time. Returns the bytes and the Request Authenticator they carry.
    pub fn encode(
        &self,
        identifier: u8,
        secret: &[u8],
        nonce: [u8; AUTHENTICATOR_LEN],
        waited: Duration,
    ) -> (Vec<u8>, [u8; AUTHENTICATOR_LEN]) {
        let (code, header_authenticator) = match self.kind {
            RequestKind::Access => (Code::AccessRequest, nonce),
            RequestKind::Accounting => (Code::AccountingRequest, [0; AUTHENTICATOR_LEN]),
        };
        let mut attributes = Vec::with_capacity(self.fields.len() + 1);
        attributes.push(Attribute::new(attr::MESSAGE_AUTHENTICATOR, [0; 16]));
        attributes.extend(self.fields.iter().map(|field| {
            match field {
                Field::Plain(attribute) => attribute.clone(),
                Field::UserPassword(password) => Attribute::new(
                    attr::USER_PASSWORD,
                    hide_user_password(password, secret, &nonce)
                        .expect("password length checked when the request was built"),
                ),
                Field::AcctDelayTime(delay) => Attribute::integer(attr::ACCT_DELAY_TIME, seconds(*delay + waited)),
            }
        }));
        let packet = Packet { code, identifier, authenticator: header_authenticator, attributes };
        let mut bytes = packet.encode().expect("lengths checked when the request was built");
        sign_request(&mut bytes, secret, MESSAGE_AUTHENTICATOR_VALUE_AT, self.kind == RequestKind::Accounting);
        let mut authenticator = [0; AUTHENTICATOR_LEN];
        authenticator.copy_from_slice(&bytes[4..HEADER_LEN]);
        (bytes, authenticator)
    }
}

fn seconds(duration: Duration) -> u32 {
    u32::try_from(duration.as_secs()).unwrap_or(u32::MAX)
}

/// The peer's MS-CHAPv2 Response, as relayed in MS-CHAP2-Response (RFC 2548 §2.3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MsChap2Response {
    /// The PPP CHAP Identifier of the Response.
    pub ident: u8,
    pub peer_challenge: [u8; 16],
    pub nt_response: [u8; 24],
}

impl MsChap2Response {
    /// `Ident(1) Flags(1)=0 PeerChallenge(16) Reserved(8)=0 NT-Response(24)`: 50 bytes.
    pub fn to_bytes(&self) -> [u8; 50] {
        let mut bytes = [0u8; 50];
        bytes[0] = self.ident;
        bytes[2..18].copy_from_slice(&self.peer_challenge);
        bytes[26..50].copy_from_slice(&self.nt_response);
        bytes
    }
}

/// How the user proves who they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// PAP: the password (or the one-time code answering an Access-Challenge).
    Pap { password: Vec<u8> },
    /// MS-CHAPv2 relayed from PPP: the challenge the gateway sent and the peer's response.
    MsChapV2 { authenticator_challenge: [u8; 16], response: MsChap2Response },
    /// One EAP packet from the peer, relayed as EAP-Message attributes.
    Eap { message: Vec<u8> },
}

/// An Access-Request to build. Fields are public: set `state` to answer an
/// Access-Challenge, `calling_station_id` to the client's public address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRequest {
    pub user_name: Vec<u8>,
    pub credentials: Credentials,
    /// The State of the Access-Challenge this request answers, echoed byte for byte.
    pub state: Option<Vec<u8>>,
    /// Calling-Station-Id: the client's public IP (and port).
    pub calling_station_id: Option<String>,
    /// Anything else to send, after the standard attributes (for example Framed-Protocol
    /// = PPP for SSTP, Called-Station-Id, Connect-Info).
    pub extra_attributes: Vec<Attribute>,
}

impl AccessRequest {
    pub fn pap(user_name: impl Into<Vec<u8>>, password: impl Into<Vec<u8>>) -> Self {
        Self::with_credentials(user_name.into(), Credentials::Pap { password: password.into() })
    }

    pub fn ms_chap_v2(
        user_name: impl Into<Vec<u8>>,
        authenticator_challenge: [u8; 16],
        response: MsChap2Response,
    ) -> Self {
        Self::with_credentials(user_name.into(), Credentials::MsChapV2 { authenticator_challenge, response })
    }

    /// `user_name` should be the EAP identity (RFC 3579 §2.1).
    pub fn eap(user_name: impl Into<Vec<u8>>, eap_message: impl Into<Vec<u8>>) -> Self {
        Self::with_credentials(user_name.into(), Credentials::Eap { message: eap_message.into() })
    }

    fn with_credentials(user_name: Vec<u8>, credentials: Credentials) -> Self {
        AccessRequest { user_name, credentials, state: None, calling_station_id: None, extra_attributes: Vec::new() }
    }

    /// Message-Authenticator (added at encoding), User-Name, the credentials, State,
    /// NAS-Identifier, NAS-IP-Address, Service-Type = Framed, NAS-Port-Type = Virtual,
    /// Calling-Station-Id, then the extra attributes.
    pub fn build(&self, nas: &NasInfo) -> Result<Request, BuildError> {
        let mut fields = vec![Field::Plain(Attribute::new(attr::USER_NAME, self.user_name.clone()))];
        match &self.credentials {
            Credentials::Pap { password } => fields.push(Field::UserPassword(password.clone())),
            Credentials::MsChapV2 { authenticator_challenge, response } => {
                fields.push(vendor(ms::CHAP_CHALLENGE, authenticator_challenge));
                fields.push(vendor(ms::CHAP2_RESPONSE, &response.to_bytes()));
            }
            Credentials::Eap { message } => {
                fields.extend(split_eap_message(message).map(|chunk| plain(attr::EAP_MESSAGE, chunk)));
            }
        }
        if let Some(state) = &self.state {
            fields.push(plain(attr::STATE, state));
        }
        push_nas_fields(&mut fields, nas, self.calling_station_id.as_deref());
        push_extra(&mut fields, &self.extra_attributes)?;
        Request::new(RequestKind::Access, fields)
    }
}

/// EAP-Message attributes of at most 253 bytes, consecutive and in order; an empty
/// message (EAP-Start) is one empty attribute (RFC 3579 §3.1).
fn split_eap_message(message: &[u8]) -> impl Iterator<Item = &[u8]> {
    let empty: &[u8] = &[];
    let chunks = message.chunks(MAX_VALUE_LEN);
    message.is_empty().then_some(empty).into_iter().chain(chunks)
}

fn plain(kind: u8, value: &[u8]) -> Field {
    Field::Plain(Attribute::new(kind, value))
}

fn vendor(vendor_type: u8, value: &[u8]) -> Field {
    Field::Plain(Attribute::vendor(ms::VENDOR_ID, vendor_type, value))
}

fn integer(kind: u8, value: u32) -> Field {
    Field::Plain(Attribute::integer(kind, value))
}

fn push_nas_fields(fields: &mut Vec<Field>, nas: &NasInfo, calling_station_id: Option<&str>) {
    fields.push(plain(attr::NAS_IDENTIFIER, nas.identifier.as_bytes()));
    if let Some(address) = nas.ip_address {
        fields.push(Field::Plain(Attribute::ipv4(attr::NAS_IP_ADDRESS, address)));
    }
    fields.push(integer(attr::SERVICE_TYPE, attr::SERVICE_TYPE_FRAMED));
    fields.push(integer(attr::NAS_PORT_TYPE, attr::NAS_PORT_TYPE_VIRTUAL));
    if let Some(id) = calling_station_id {
        fields.push(plain(attr::CALLING_STATION_ID, id.as_bytes()));
    }
}

fn push_extra(fields: &mut Vec<Field>, extra: &[Attribute]) -> Result<(), BuildError> {
    for attribute in extra {
        if matches!(attribute.kind, attr::MESSAGE_AUTHENTICATOR | attr::USER_PASSWORD | attr::ACCT_DELAY_TIME) {
            return Err(BuildError::ReservedAttribute { kind: attribute.kind });
        }
        fields.push(Field::Plain(attribute.clone()));
    }
    Ok(())
}

/// Acct-Status-Type (RFC 2866 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcctStatusType {
    Start = 1,
    Stop = 2,
    InterimUpdate = 3,
    AccountingOn = 7,
    AccountingOff = 8,
}

/// Acct-Terminate-Cause (RFC 2866 §5.10), the values a VPN gateway has use for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TerminateCause {
    UserRequest = 1,
    LostCarrier = 2,
    LostService = 3,
    IdleTimeout = 4,
    SessionTimeout = 5,
    AdminReset = 6,
    AdminReboot = 7,
    PortError = 8,
    NasError = 9,
    NasRequest = 10,
    NasReboot = 11,
}

/// Cumulative usage of a session. "Input" is what the gateway received *from* the user.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionUsage {
    /// Sent as Acct-Input-Octets (low 32 bits) and Acct-Input-Gigawords (high 32 bits).
    pub input_octets: u64,
    pub output_octets: u64,
    /// Sent modulo 2^32 (the attributes are 32-bit counters with no Gigawords).
    pub input_packets: u64,
    pub output_packets: u64,
    /// Acct-Session-Time, in whole seconds.
    pub session_time: Duration,
}

/// An Accounting-Request to build (RFC 2866; PROTOCOLS.md §5.7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountingRequest {
    pub status: AcctStatusType,
    /// Acct-Session-Id: unique per session, the same in its Start, Interim and Stop.
    pub session_id: String,
    pub user_name: Option<Vec<u8>>,
    pub framed_ip: Option<Ipv4Addr>,
    pub calling_station_id: Option<String>,
    /// Counters and session time, for Interim-Update and Stop.
    pub usage: Option<SessionUsage>,
    /// For Stop.
    pub terminate_cause: Option<TerminateCause>,
    /// Every Class of the Access-Accept, unchanged and in order.
    pub classes: Vec<Vec<u8>>,
    /// When the event happened (Event-Timestamp, seconds since the Unix epoch).
    pub event_timestamp: Option<SystemTime>,
    /// How long the record waited before being handed to the client (Acct-Delay-Time;
    /// the client adds the time it spends failing over).
    pub delay: Duration,
    pub extra_attributes: Vec<Attribute>,
}

impl AccountingRequest {
    pub fn new(status: AcctStatusType, session_id: impl Into<String>) -> Self {
        AccountingRequest {
            status,
            session_id: session_id.into(),
            user_name: None,
            framed_ip: None,
            calling_station_id: None,
            usage: None,
            terminate_cause: None,
            classes: Vec::new(),
            event_timestamp: None,
            delay: Duration::ZERO,
            extra_attributes: Vec::new(),
        }
    }

    /// Message-Authenticator (added at encoding), Acct-Status-Type, Acct-Session-Id,
    /// User-Name, Framed-IP-Address, counters, Acct-Session-Time, Acct-Terminate-Cause,
    /// Class…, Event-Timestamp, Acct-Delay-Time, NAS-Identifier, NAS-IP-Address,
    /// Service-Type = Framed, NAS-Port-Type = Virtual, Calling-Station-Id, then the extras.
    pub fn build(&self, nas: &NasInfo) -> Result<Request, BuildError> {
        let mut fields = vec![
            integer(attr::ACCT_STATUS_TYPE, self.status as u32),
            plain(attr::ACCT_SESSION_ID, self.session_id.as_bytes()),
        ];
        if let Some(user_name) = &self.user_name {
            fields.push(plain(attr::USER_NAME, user_name));
        }
        if let Some(address) = self.framed_ip {
            fields.push(Field::Plain(Attribute::ipv4(attr::FRAMED_IP_ADDRESS, address)));
        }
        if let Some(usage) = &self.usage {
            let low = |counter: u64| counter as u32; // the low 32 bits, by definition
            let high = |counter: u64| (counter >> 32) as u32;
            fields.extend([
                integer(attr::ACCT_INPUT_OCTETS, low(usage.input_octets)),
                integer(attr::ACCT_INPUT_GIGAWORDS, high(usage.input_octets)),
                integer(attr::ACCT_OUTPUT_OCTETS, low(usage.output_octets)),
                integer(attr::ACCT_OUTPUT_GIGAWORDS, high(usage.output_octets)),
                integer(attr::ACCT_INPUT_PACKETS, low(usage.input_packets)),
                integer(attr::ACCT_OUTPUT_PACKETS, low(usage.output_packets)),
                integer(attr::ACCT_SESSION_TIME, seconds(usage.session_time)),
            ]);
        }
        if let Some(cause) = self.terminate_cause {
            fields.push(integer(attr::ACCT_TERMINATE_CAUSE, cause as u32));
        }
        fields.extend(self.classes.iter().map(|class| plain(attr::CLASS, class)));
        if let Some(time) = self.event_timestamp {
            let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
            fields.push(integer(attr::EVENT_TIMESTAMP, seconds(since_epoch)));
        }
        fields.push(Field::AcctDelayTime(self.delay));
        push_nas_fields(&mut fields, nas, self.calling_station_id.as_deref());
        push_extra(&mut fields, &self.extra_attributes)?;
        Request::new(RequestKind::Accounting, fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::radius::auth::tests::recover_user_password;
    use crate::proto::radius::auth::{message_authenticator, packet_md5};

    fn nas() -> NasInfo {
        NasInfo { identifier: "gw1".into(), ip_address: Some(Ipv4Addr::new(192, 0, 2, 1)) }
    }

    fn integer_of(packet: &Packet, kind: u8) -> Option<u32> {
        packet.attribute(kind).map(|v| u32::from_be_bytes(v.try_into().unwrap()))
    }

    /// Checks the Message-Authenticator of a request we encoded, as a server does.
    fn assert_signed(bytes: &[u8], secret: &[u8], accounting: bool) {
        let packet = Packet::decode(bytes).unwrap();
        assert_eq!(packet.attributes[0].kind, attr::MESSAGE_AUTHENTICATOR, "Message-Authenticator comes first");
        let mut zeroed = bytes.to_vec();
        zeroed[22..38].fill(0);
        if accounting {
            zeroed[4..20].fill(0);
            assert_eq!(packet_md5(secret, bytes, &[0; 16])[..], bytes[4..20]);
        }
        assert_eq!(message_authenticator(secret, &zeroed)[..], bytes[22..38]);
    }

    #[test]
    fn pap_request() {
        let mut request = AccessRequest::pap("nemo", "arctangent");
        request.calling_station_id = Some("198.51.100.7:50000".into());
        request.state = Some(b"state-1".to_vec());
        request.extra_attributes.push(Attribute::integer(attr::FRAMED_PROTOCOL, attr::FRAMED_PROTOCOL_PPP));
        let request = request.build(&nas()).unwrap();
        assert_eq!(request.kind(), RequestKind::Access);
        let ra = [0x0f; 16];
        let (bytes, authenticator) = request.encode(9, b"secret", ra, Duration::ZERO);
        assert_eq!(authenticator, ra);
        assert_signed(&bytes, b"secret", false);
        let packet = Packet::decode(&bytes).unwrap();
        assert_eq!((packet.code, packet.identifier), (Code::AccessRequest, 9));
        let kinds: Vec<u8> = packet.attributes.iter().map(|a| a.kind).collect();
        assert_eq!(
            kinds,
            [
                attr::MESSAGE_AUTHENTICATOR,
                attr::USER_NAME,
                attr::USER_PASSWORD,
                attr::STATE,
                attr::NAS_IDENTIFIER,
                attr::NAS_IP_ADDRESS,
                attr::SERVICE_TYPE,
                attr::NAS_PORT_TYPE,
                attr::CALLING_STATION_ID,
                attr::FRAMED_PROTOCOL
            ]
        );
        let hidden = packet.attribute(attr::USER_PASSWORD).unwrap();
        assert_eq!(recover_user_password(hidden, b"secret", &ra), b"arctangent");
        assert_eq!(packet.attribute(attr::STATE), Some(&b"state-1"[..]));
        assert_eq!(integer_of(&packet, attr::SERVICE_TYPE), Some(2));
        assert_eq!(integer_of(&packet, attr::NAS_PORT_TYPE), Some(5));
        assert_eq!(packet.attribute(attr::CALLING_STATION_ID), Some(&b"198.51.100.7:50000"[..]));
        // A different secret (another server) hides the password differently.
        let (other, _) = request.encode(9, b"other", ra, Duration::ZERO);
        assert_ne!(Packet::decode(&other).unwrap().attribute(attr::USER_PASSWORD), Some(hidden));
    }

    #[test]
    fn ms_chap_v2_request() {
        let response = MsChap2Response { ident: 0x42, peer_challenge: [0x21; 16], nt_response: [0x82; 24] };
        let request = AccessRequest::ms_chap_v2("User", [0x5b; 16], response).build(&nas()).unwrap();
        let (bytes, _) = request.encode(1, b"s", [1; 16], Duration::ZERO);
        assert_signed(&bytes, b"s", false);
        let packet = Packet::decode(&bytes).unwrap();
        assert_eq!(packet.attribute(attr::USER_PASSWORD), None);
        assert_eq!(packet.vendor_attributes(ms::VENDOR_ID, ms::CHAP_CHALLENGE).unwrap(), vec![&[0x5b; 16][..]]);
        let chap2 = packet.vendor_attributes(ms::VENDOR_ID, ms::CHAP2_RESPONSE).unwrap();
        assert_eq!(chap2.len(), 1);
        let mut expected = vec![0x42, 0];
        expected.extend_from_slice(&[0x21; 16]);
        expected.extend_from_slice(&[0; 8]);
        expected.extend_from_slice(&[0x82; 24]);
        assert_eq!(chap2[0], &expected[..]);
    }

    #[test]
    fn eap_messages_are_split_at_253_bytes() {
        let eap: Vec<u8> = (0..600u32).map(|i| i as u8).collect();
        let mut request = AccessRequest::eap("anonymous", eap.clone());
        request.state = Some(vec![7; 20]);
        let (bytes, _) = request.build(&nas()).unwrap().encode(3, b"s", [2; 16], Duration::ZERO);
        assert_signed(&bytes, b"s", false);
        let packet = Packet::decode(&bytes).unwrap();
        let chunks: Vec<&[u8]> = packet.attributes(attr::EAP_MESSAGE).collect();
        assert_eq!(chunks.iter().map(|c| c.len()).collect::<Vec<_>>(), [253, 253, 94]);
        assert_eq!(chunks.concat(), eap);
        // Consecutive: nothing between the EAP-Message attributes.
        let first = packet.attributes.iter().position(|a| a.kind == attr::EAP_MESSAGE).unwrap();
        assert!(packet.attributes[first..first + 3].iter().all(|a| a.kind == attr::EAP_MESSAGE));

        let (bytes, _) =
            AccessRequest::eap("x", vec![]).build(&nas()).unwrap().encode(3, b"s", [2; 16], Duration::ZERO);
        let packet = Packet::decode(&bytes).unwrap();
        assert_eq!(packet.attributes(attr::EAP_MESSAGE).collect::<Vec<_>>(), vec![&b""[..]]);
    }

    #[test]
    fn builders_refuse_what_radius_cannot_carry() {
        assert_eq!(
            AccessRequest::pap("u", vec![b'p'; 129]).build(&nas()),
            Err(BuildError::PasswordTooLong { length: 129 })
        );
        assert!(matches!(
            AccessRequest::pap(vec![b'u'; 254], "p").build(&nas()),
            Err(BuildError::Encode(EncodeError::ValueTooLong { kind: attr::USER_NAME, .. }))
        ));
        assert!(matches!(
            AccessRequest::eap("u", vec![0; 4001]).build(&nas()),
            Err(BuildError::Encode(EncodeError::PacketTooLong { .. }))
        ));
        let mut request = AccessRequest::pap("u", "p");
        request.extra_attributes.push(Attribute::new(attr::MESSAGE_AUTHENTICATOR, [0; 16]));
        assert_eq!(request.build(&nas()), Err(BuildError::ReservedAttribute { kind: attr::MESSAGE_AUTHENTICATOR }));
        // The size check at build time matches the encoded size exactly: header 20,
        // Message-Authenticator 18, User-Name 3, NAS-Identifier 5, NAS-IP-Address,
        // Service-Type and NAS-Port-Type 6 each, and 4000 bytes of EAP in 16 attributes.
        let largest = AccessRequest::eap("u", vec![0; 4000]);
        let (bytes, _) = largest.build(&nas()).unwrap().encode(0, b"s", [0; 16], Duration::ZERO);
        assert_eq!(bytes.len(), 4096);
    }

    #[test]
    fn accounting_stop_request() {
        let mut request = AccountingRequest::new(AcctStatusType::Stop, "sess-1");
        request.user_name = Some(b"alice".to_vec());
        request.framed_ip = Some(Ipv4Addr::new(172, 16, 201, 9));
        request.usage = Some(SessionUsage {
            input_octets: 5 * (1 << 32) + 7,
            output_octets: 123,
            input_packets: (1 << 32) + 3,
            output_packets: 4,
            session_time: Duration::from_millis(3_600_900),
        });
        request.terminate_cause = Some(TerminateCause::UserRequest);
        request.classes = vec![b"c1".to_vec(), b"c2".to_vec()];
        request.event_timestamp = Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        request.delay = Duration::from_secs(2);
        let request = request.build(&nas()).unwrap();
        assert_eq!(request.kind(), RequestKind::Accounting);
        let (bytes, authenticator) = request.encode(4, b"acct-secret", [9; 16], Duration::from_secs(15));
        assert_signed(&bytes, b"acct-secret", true);
        assert_eq!(authenticator[..], bytes[4..20]);
        let packet = Packet::decode(&bytes).unwrap();
        assert_eq!(packet.code, Code::AccountingRequest);
        assert_eq!(integer_of(&packet, attr::ACCT_STATUS_TYPE), Some(2));
        assert_eq!(packet.attribute(attr::ACCT_SESSION_ID), Some(&b"sess-1"[..]));
        assert_eq!(packet.attribute(attr::FRAMED_IP_ADDRESS), Some(&[172, 16, 201, 9][..]));
        assert_eq!(integer_of(&packet, attr::ACCT_INPUT_OCTETS), Some(7));
        assert_eq!(integer_of(&packet, attr::ACCT_INPUT_GIGAWORDS), Some(5));
        assert_eq!(integer_of(&packet, attr::ACCT_OUTPUT_OCTETS), Some(123));
        assert_eq!(integer_of(&packet, attr::ACCT_OUTPUT_GIGAWORDS), Some(0));
        assert_eq!(integer_of(&packet, attr::ACCT_INPUT_PACKETS), Some(3));
        assert_eq!(integer_of(&packet, attr::ACCT_SESSION_TIME), Some(3600));
        assert_eq!(integer_of(&packet, attr::ACCT_TERMINATE_CAUSE), Some(1));
        assert_eq!(packet.attributes(attr::CLASS).collect::<Vec<_>>(), vec![&b"c1"[..], &b"c2"[..]]);
        assert_eq!(integer_of(&packet, attr::EVENT_TIMESTAMP), Some(1_700_000_000));
        assert_eq!(integer_of(&packet, attr::ACCT_DELAY_TIME), Some(17));
        assert_eq!(packet.attribute(attr::NAS_IDENTIFIER), Some(&b"gw1"[..]));
        assert_eq!(integer_of(&packet, attr::NAS_PORT_TYPE), Some(5));
        // The same request and identifier encode to the same bytes (a retransmission).
        assert_eq!(request.encode(4, b"acct-secret", [1; 16], Duration::from_secs(15)).0, bytes);
    }
}
