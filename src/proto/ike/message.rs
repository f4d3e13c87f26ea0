//! The IKEv2 message codec (RFC 7296 §3, PROTOCOLS.md §3.1–3.2, 3.7–3.9, 3.12; RFC 7383
//! for SKF). A message is a 28-byte [`Header`] and a chain of payloads; the encrypted
//! payloads (SK, SKF) are carried as opaque bytes here and opened by
//! [`super::crypto::SkCipher`]. Decoding refuses anything malformed with a typed
//! [`ParseError`] and never panics; encoding is the exact inverse of decoding.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const HEADER_LEN: usize = 28;
/// The only IKE version spoken: major 2, minor 0.
pub const VERSION: u8 = 0x20;
/// Larger messages are refused before any work (strongSwan's default limit is 10000).
pub const MAX_MESSAGE_LEN: usize = 65_535;

/// Exchange types (RFC 7296 §3.1).
pub mod exchange {
    pub const IKE_SA_INIT: u8 = 34;
    pub const IKE_AUTH: u8 = 35;
    pub const CREATE_CHILD_SA: u8 = 36;
    pub const INFORMATIONAL: u8 = 37;
}

/// Header flags.
pub mod flags {
    pub const INITIATOR: u8 = 0x08;
    pub const VERSION: u8 = 0x10;
    pub const RESPONSE: u8 = 0x20;
}

/// Payload types (RFC 7296 §3.2, RFC 7383).
pub mod payload_type {
    pub const NONE: u8 = 0;
    pub const SA: u8 = 33;
    pub const KE: u8 = 34;
    pub const IDI: u8 = 35;
    pub const IDR: u8 = 36;
    pub const CERT: u8 = 37;
    pub const CERTREQ: u8 = 38;
    pub const AUTH: u8 = 39;
    pub const NONCE: u8 = 40;
    pub const NOTIFY: u8 = 41;
    pub const DELETE: u8 = 42;
    pub const VENDOR_ID: u8 = 43;
    pub const TSI: u8 = 44;
    pub const TSR: u8 = 45;
    pub const SK: u8 = 46;
    pub const CP: u8 = 47;
    pub const EAP: u8 = 48;
    pub const SKF: u8 = 53;
}

/// Notify message types (RFC 7296 §3.10.1 and later RFCs).
pub mod notify {
    pub const UNSUPPORTED_CRITICAL_PAYLOAD: u16 = 1;
    pub const INVALID_IKE_SPI: u16 = 4;
    pub const INVALID_MAJOR_VERSION: u16 = 5;
    pub const INVALID_SYNTAX: u16 = 7;
    pub const INVALID_MESSAGE_ID: u16 = 9;
    pub const INVALID_SPI: u16 = 11;
    pub const NO_PROPOSAL_CHOSEN: u16 = 14;
    pub const INVALID_KE_PAYLOAD: u16 = 17;
    pub const AUTHENTICATION_FAILED: u16 = 24;
    pub const SINGLE_PAIR_REQUIRED: u16 = 34;
    pub const NO_ADDITIONAL_SAS: u16 = 35;
    pub const INTERNAL_ADDRESS_FAILURE: u16 = 36;
    pub const FAILED_CP_REQUIRED: u16 = 37;
    pub const TS_UNACCEPTABLE: u16 = 38;
    pub const TEMPORARY_FAILURE: u16 = 43;
    pub const CHILD_SA_NOT_FOUND: u16 = 44;
    pub const INITIAL_CONTACT: u16 = 16384;
    pub const NAT_DETECTION_SOURCE_IP: u16 = 16388;
    pub const NAT_DETECTION_DESTINATION_IP: u16 = 16389;
    pub const COOKIE: u16 = 16390;
    pub const USE_TRANSPORT_MODE: u16 = 16391;
    pub const REKEY_SA: u16 = 16393;
    pub const ESP_TFC_PADDING_NOT_SUPPORTED: u16 = 16394;
    pub const MOBIKE_SUPPORTED: u16 = 16396;
    pub const MULTIPLE_AUTH_SUPPORTED: u16 = 16404;
    pub const EAP_ONLY_AUTHENTICATION: u16 = 16417;
    pub const IKEV2_FRAGMENTATION_SUPPORTED: u16 = 16430;
    pub const SIGNATURE_HASH_ALGORITHMS: u16 = 16431;
}

/// Security protocol identifiers in proposals, notifies and deletes.
pub mod protocol {
    pub const IKE: u8 = 1;
    pub const AH: u8 = 2;
    pub const ESP: u8 = 3;
}

/// Why bytes are not a valid IKEv2 message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("message too short for an IKE header ({0} bytes)")]
    ShortHeader(usize),
    #[error("unsupported IKE major version {0} (only 2 is spoken)")]
    UnsupportedVersion(u8),
    #[error("header length {header} does not match the {actual} bytes received")]
    LengthMismatch { header: u32, actual: usize },
    #[error("message of {0} bytes exceeds the limit")]
    TooLong(usize),
    #[error("payload {payload_type} is truncated or its length field is invalid")]
    TruncatedPayload { payload_type: u8 },
    #[error("payload {payload_type} has a malformed body: {reason}")]
    Malformed { payload_type: u8, reason: &'static str },
    #[error("unknown payload type {0} is marked critical")]
    UnsupportedCritical(u8),
    #[error("an encrypted payload (SK/SKF) must be the last payload of a message")]
    EncryptedNotLast,
}

/// The fixed IKE header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub spi_i: [u8; 8],
    pub spi_r: [u8; 8],
    pub next_payload: u8,
    pub exchange: u8,
    pub flags: u8,
    pub message_id: u32,
    pub length: u32,
}

impl Header {
    /// Parses the header alone (enough to route a message to its SA).
    pub fn parse(data: &[u8]) -> Result<Header, ParseError> {
        if data.len() < HEADER_LEN {
            return Err(ParseError::ShortHeader(data.len()));
        }
        if data[17] >> 4 != 2 {
            return Err(ParseError::UnsupportedVersion(data[17] >> 4));
        }
        let header = Header {
            spi_i: data[0..8].try_into().expect("8-byte slice"),
            spi_r: data[8..16].try_into().expect("8-byte slice"),
            next_payload: data[16],
            exchange: data[18],
            flags: data[19],
            message_id: u32::from_be_bytes(data[20..24].try_into().expect("4-byte slice")),
            length: u32::from_be_bytes(data[24..28].try_into().expect("4-byte slice")),
        };
        if header.length as usize != data.len() {
            return Err(ParseError::LengthMismatch { header: header.length, actual: data.len() });
        }
        if data.len() > MAX_MESSAGE_LEN {
            return Err(ParseError::TooLong(data.len()));
        }
        Ok(header)
    }

    pub fn is_response(&self) -> bool {
        self.flags & flags::RESPONSE != 0
    }

    pub fn is_initiator(&self) -> bool {
        self.flags & flags::INITIATOR != 0
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.spi_i);
        out.extend_from_slice(&self.spi_r);
        out.push(self.next_payload);
        out.push(VERSION);
        out.push(self.exchange);
        out.push(self.flags);
        out.extend_from_slice(&self.message_id.to_be_bytes());
        out.extend_from_slice(&self.length.to_be_bytes());
    }
}

/// A transform attribute (RFC 7296 §3.3.5). Only Key Length (14, TV format) is defined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransformAttribute {
    /// AF bit set: a 2-byte value in place of the length.
    Short { kind: u16, value: u16 },
    /// AF bit clear: a length-prefixed value.
    Long { kind: u16, value: Vec<u8> },
}

pub const KEY_LENGTH_ATTRIBUTE: u16 = 14;

/// Transform types (RFC 7296 §3.3.2).
pub mod transform_type {
    pub const ENCR: u8 = 1;
    pub const PRF: u8 = 2;
    pub const INTEG: u8 = 3;
    pub const DH: u8 = 4;
    pub const ESN: u8 = 5;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transform {
    pub transform_type: u8,
    pub id: u16,
    pub attributes: Vec<TransformAttribute>,
}

impl Transform {
    pub fn new(transform_type: u8, id: u16, key_length: Option<u16>) -> Transform {
        let attributes = key_length
            .map(|bits| vec![TransformAttribute::Short { kind: KEY_LENGTH_ATTRIBUTE, value: bits }])
            .unwrap_or_default();
        Transform { transform_type, id, attributes }
    }

    pub fn key_length(&self) -> Option<u16> {
        self.attributes.iter().find_map(|a| match a {
            TransformAttribute::Short { kind: KEY_LENGTH_ATTRIBUTE, value } => Some(*value),
            _ => None,
        })
    }

    /// True when an attribute other than the key length is present: RFC 7296 §3.3.6
    /// says such a transform must be treated as unknown.
    pub fn has_unknown_attributes(&self) -> bool {
        self.attributes.iter().any(|a| !matches!(a, TransformAttribute::Short { kind: KEY_LENGTH_ATTRIBUTE, .. }))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    pub number: u8,
    pub protocol: u8,
    pub spi: Vec<u8>,
    pub transforms: Vec<Transform>,
}

/// Identification payload body (IDi / IDr).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identification {
    pub id_type: u8,
    pub data: Vec<u8>,
}

/// ID types (RFC 7296 §3.5).
pub mod id_type {
    pub const IPV4_ADDR: u8 = 1;
    pub const FQDN: u8 = 2;
    pub const RFC822_ADDR: u8 = 3;
    pub const IPV6_ADDR: u8 = 5;
    pub const DER_ASN1_DN: u8 = 9;
    pub const DER_ASN1_GN: u8 = 10;
    pub const KEY_ID: u8 = 11;
}

impl Identification {
    /// `IDx'` of RFC 7296 §2.15: the body without the generic header, as signed.
    pub fn body(&self) -> Vec<u8> {
        let mut out = vec![self.id_type, 0, 0, 0];
        out.extend_from_slice(&self.data);
        out
    }

    /// A printable form for logs and the driver: names as text, addresses parsed, DNs
    /// and binary IDs in hex.
    pub fn display(&self) -> String {
        match self.id_type {
            id_type::FQDN | id_type::RFC822_ADDR => String::from_utf8_lossy(&self.data).into_owned(),
            id_type::IPV4_ADDR if self.data.len() == 4 => {
                Ipv4Addr::from(<[u8; 4]>::try_from(&self.data[..]).expect("4 bytes")).to_string()
            }
            id_type::IPV6_ADDR if self.data.len() == 16 => {
                Ipv6Addr::from(<[u8; 16]>::try_from(&self.data[..]).expect("16 bytes")).to_string()
            }
            id_type::DER_ASN1_DN => {
                use x509_parser::prelude::FromDer as _;
                match x509_parser::x509::X509Name::from_der(&self.data) {
                    Ok((_, name)) => name.to_string(),
                    Err(_) => format!("DN {}", hex_string(&self.data)),
                }
            }
            _ => format!("type {}: {}", self.id_type, hex_string(&self.data)),
        }
    }
}

pub(crate) fn hex_string(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notify {
    pub protocol: u8,
    pub spi: Vec<u8>,
    pub notify_type: u16,
    pub data: Vec<u8>,
}

impl Notify {
    /// A notify about the IKE SA itself (no SPI).
    pub fn new(notify_type: u16, data: Vec<u8>) -> Notify {
        Notify { protocol: 0, spi: Vec::new(), notify_type, data }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    pub protocol: u8,
    pub spi_size: u8,
    pub spis: Vec<Vec<u8>>,
}

/// One traffic selector (RFC 7296 §3.13.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrafficSelector {
    pub ip_protocol: u8,
    pub start_port: u16,
    pub end_port: u16,
    pub start: IpAddr,
    pub end: IpAddr,
}

pub const TS_IPV4_ADDR_RANGE: u8 = 7;
pub const TS_IPV6_ADDR_RANGE: u8 = 8;

/// Configuration payload (RFC 7296 §3.15).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Configuration {
    pub cfg_type: u8,
    pub attributes: Vec<(u16, Vec<u8>)>,
}

pub mod cfg_type {
    pub const REQUEST: u8 = 1;
    pub const REPLY: u8 = 2;
    pub const SET: u8 = 3;
    pub const ACK: u8 = 4;
}

/// Configuration attribute types (RFC 7296 §3.15.1).
pub mod cfg_attr {
    pub const INTERNAL_IP4_ADDRESS: u16 = 1;
    pub const INTERNAL_IP4_NETMASK: u16 = 2;
    pub const INTERNAL_IP4_DNS: u16 = 3;
    pub const INTERNAL_IP4_NBNS: u16 = 4;
    pub const INTERNAL_IP6_ADDRESS: u16 = 8;
    pub const INTERNAL_IP6_DNS: u16 = 10;
    pub const INTERNAL_IP4_SUBNET: u16 = 13;
    pub const INTERNAL_DNS_DOMAIN: u16 = 25;
}

/// The still-encrypted body of an SK payload, or of one SKF fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encrypted {
    /// Type of the first inner payload (0 in non-first fragments).
    pub first_inner: u8,
    /// `Some((number, total))` for an SKF fragment.
    pub fragment: Option<(u16, u16)>,
    /// Offset in the whole message of the IV (everything before it is authenticated
    /// data for AEAD ciphers).
    pub iv_offset: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    Sa(Vec<Proposal>),
    Ke {
        group: u16,
        data: Vec<u8>,
    },
    IdI(Identification),
    IdR(Identification),
    Cert {
        encoding: u8,
        data: Vec<u8>,
    },
    CertReq {
        encoding: u8,
        data: Vec<u8>,
    },
    Auth {
        method: u8,
        data: Vec<u8>,
    },
    Nonce(Vec<u8>),
    Notify(Notify),
    Delete(Delete),
    VendorId(Vec<u8>),
    TsI(Vec<TrafficSelector>),
    TsR(Vec<TrafficSelector>),
    Cp(Configuration),
    Eap(Vec<u8>),
    /// SK or SKF: must be last; see [`Encrypted`].
    Encrypted(Encrypted),
    /// A payload type this codec does not know, not marked critical.
    Unknown {
        payload_type: u8,
        body: Vec<u8>,
    },
}

/// CERT / CERTREQ encoding for X.509 signature certificates.
pub const CERT_X509_SIGNATURE: u8 = 4;

impl Payload {
    pub fn payload_type(&self) -> u8 {
        use payload_type as t;
        match self {
            Payload::Sa(_) => t::SA,
            Payload::Ke { .. } => t::KE,
            Payload::IdI(_) => t::IDI,
            Payload::IdR(_) => t::IDR,
            Payload::Cert { .. } => t::CERT,
            Payload::CertReq { .. } => t::CERTREQ,
            Payload::Auth { .. } => t::AUTH,
            Payload::Nonce(_) => t::NONCE,
            Payload::Notify(_) => t::NOTIFY,
            Payload::Delete(_) => t::DELETE,
            Payload::VendorId(_) => t::VENDOR_ID,
            Payload::TsI(_) => t::TSI,
            Payload::TsR(_) => t::TSR,
            Payload::Cp(_) => t::CP,
            Payload::Eap(_) => t::EAP,
            Payload::Encrypted(e) if e.fragment.is_some() => t::SKF,
            Payload::Encrypted(_) => t::SK,
            Payload::Unknown { payload_type, .. } => *payload_type,
        }
    }
}

/// A small cursor that turns short reads into [`ParseError::Malformed`].
struct Reader<'a> {
    data: &'a [u8],
    payload_type: u8,
}

impl<'a> Reader<'a> {
    fn malformed(&self, reason: &'static str) -> ParseError {
        ParseError::Malformed { payload_type: self.payload_type, reason }
    }
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ParseError> {
        if self.data.len() < n {
            return Err(self.malformed(what));
        }
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Ok(head)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, ParseError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, ParseError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

/// Parses a payload chain starting with `first` from `data`, which starts at byte
/// `base_offset` of the whole message (so SK/SKF can record where their IV is).
pub fn parse_chain(first: u8, data: &[u8], base_offset: usize) -> Result<Vec<Payload>, ParseError> {
    let mut payloads = Vec::new();
    let mut next = first;
    let mut offset = 0;
    while next != payload_type::NONE {
        let this = next;
        let rest = &data[offset..];
        if rest.len() < 4 {
            return Err(ParseError::TruncatedPayload { payload_type: this });
        }
        let length = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        if length < 4 || length > rest.len() {
            return Err(ParseError::TruncatedPayload { payload_type: this });
        }
        next = rest[0];
        let critical = rest[1] & 0x80 != 0;
        let body = &rest[4..length];
        if this == payload_type::SK || this == payload_type::SKF {
            if length != rest.len() {
                return Err(ParseError::EncryptedNotLast);
            }
            payloads.push(parse_encrypted(this, next, body, base_offset + offset + 4)?);
            return Ok(payloads);
        }
        match parse_body(this, body)? {
            Some(p) => payloads.push(p),
            None if critical => return Err(ParseError::UnsupportedCritical(this)),
            None => payloads.push(Payload::Unknown { payload_type: this, body: body.to_vec() }),
        }
        offset += length;
    }
    // Trailing bytes after the last payload are not part of any payload.
    if offset != data.len() {
        return Err(ParseError::Malformed { payload_type: first, reason: "bytes after the last payload" });
    }
    Ok(payloads)
}

fn parse_encrypted(this: u8, first_inner: u8, body: &[u8], body_offset: usize) -> Result<Payload, ParseError> {
    if this == payload_type::SK {
        return Ok(Payload::Encrypted(Encrypted { first_inner, fragment: None, iv_offset: body_offset }));
    }
    let mut r = Reader { data: body, payload_type: this };
    let number = r.u16("fragment number")?;
    let total = r.u16("total fragments")?;
    if number == 0 || total == 0 || number > total {
        return Err(r.malformed("fragment number out of range"));
    }
    Ok(Payload::Encrypted(Encrypted { first_inner, fragment: Some((number, total)), iv_offset: body_offset + 4 }))
}

/// Parses one known payload body; `None` for an unknown type.
fn parse_body(this: u8, body: &[u8]) -> Result<Option<Payload>, ParseError> {
    use payload_type as t;
    let mut r = Reader { data: body, payload_type: this };
    let payload = match this {
        t::SA => Payload::Sa(parse_proposals(&mut r)?),
        t::KE => {
            let group = r.u16("group")?;
            r.take(2, "reserved")?;
            Payload::Ke { group, data: r.rest().to_vec() }
        }
        t::IDI | t::IDR => {
            let id_type = r.u8("ID type")?;
            r.take(3, "reserved")?;
            let id = Identification { id_type, data: r.rest().to_vec() };
            if this == t::IDI { Payload::IdI(id) } else { Payload::IdR(id) }
        }
        t::CERT | t::CERTREQ => {
            let encoding = r.u8("encoding")?;
            let data = r.rest().to_vec();
            if this == t::CERT { Payload::Cert { encoding, data } } else { Payload::CertReq { encoding, data } }
        }
        t::AUTH => {
            let method = r.u8("method")?;
            r.take(3, "reserved")?;
            Payload::Auth { method, data: r.rest().to_vec() }
        }
        t::NONCE => Payload::Nonce(r.rest().to_vec()),
        t::NOTIFY => {
            let protocol = r.u8("protocol")?;
            let spi_size = r.u8("SPI size")?;
            let notify_type = r.u16("notify type")?;
            let spi = r.take(usize::from(spi_size), "SPI")?.to_vec();
            Payload::Notify(Notify { protocol, spi, notify_type, data: r.rest().to_vec() })
        }
        t::DELETE => {
            let protocol = r.u8("protocol")?;
            let spi_size = r.u8("SPI size")?;
            let count = r.u16("SPI count")?;
            let mut spis = Vec::with_capacity(usize::from(count).min(body.len()));
            for _ in 0..count {
                spis.push(r.take(usize::from(spi_size), "SPI")?.to_vec());
            }
            if !r.rest().is_empty() {
                return Err(r.malformed("bytes after the SPIs"));
            }
            Payload::Delete(Delete { protocol, spi_size, spis })
        }
        t::VENDOR_ID => Payload::VendorId(r.rest().to_vec()),
        t::TSI | t::TSR => {
            let selectors = parse_selectors(&mut r)?;
            if this == t::TSI { Payload::TsI(selectors) } else { Payload::TsR(selectors) }
        }
        t::CP => {
            let cfg_type = r.u8("CFG type")?;
            r.take(3, "reserved")?;
            let mut attributes = Vec::new();
            while !r.data.is_empty() {
                // The R bit (0x8000) is reserved: masked off.
                let kind = r.u16("attribute type")? & 0x7fff;
                let len = r.u16("attribute length")?;
                attributes.push((kind, r.take(usize::from(len), "attribute value")?.to_vec()));
            }
            Payload::Cp(Configuration { cfg_type, attributes })
        }
        t::EAP => {
            // Code(1) Identifier(1) Length(2): the EAP length must equal the payload's.
            if body.len() < 4 || usize::from(u16::from_be_bytes([body[2], body[3]])) != body.len() {
                return Err(r.malformed("EAP length does not match the payload"));
            }
            Payload::Eap(body.to_vec())
        }
        _ => return Ok(None),
    };
    Ok(Some(payload))
}

fn parse_proposals(r: &mut Reader<'_>) -> Result<Vec<Proposal>, ParseError> {
    let mut proposals = Vec::new();
    loop {
        let last = r.u8("proposal last")?;
        r.take(1, "reserved")?;
        let length = usize::from(r.u16("proposal length")?);
        if length < 8 {
            return Err(r.malformed("proposal length"));
        }
        let mut p = Reader { data: r.take(length - 4, "proposal body")?, payload_type: r.payload_type };
        let number = p.u8("proposal number")?;
        let protocol = p.u8("protocol")?;
        let spi_size = p.u8("SPI size")?;
        let count = p.u8("transform count")?;
        let spi = p.take(usize::from(spi_size), "SPI")?.to_vec();
        let mut transforms = Vec::with_capacity(usize::from(count));
        for i in 0..count {
            let t_last = p.u8("transform last")?;
            p.take(1, "reserved")?;
            let t_length = usize::from(p.u16("transform length")?);
            if t_length < 8 {
                return Err(p.malformed("transform length"));
            }
            let mut t = Reader { data: p.take(t_length - 4, "transform body")?, payload_type: p.payload_type };
            let transform_type = t.u8("transform type")?;
            t.take(1, "reserved")?;
            let id = t.u16("transform ID")?;
            let mut attributes = Vec::new();
            while !t.data.is_empty() {
                let kind = t.u16("attribute type")?;
                if kind & 0x8000 != 0 {
                    attributes.push(TransformAttribute::Short { kind: kind & 0x7fff, value: t.u16("attribute")? });
                } else {
                    let len = usize::from(t.u16("attribute length")?);
                    attributes.push(TransformAttribute::Long { kind, value: t.take(len, "attribute")?.to_vec() });
                }
            }
            let expect_last = if i + 1 == count { 0 } else { 3 };
            if t_last != expect_last {
                return Err(p.malformed("transform count does not match the last-transform marks"));
            }
            transforms.push(Transform { transform_type, id, attributes });
        }
        if !p.data.is_empty() {
            return Err(p.malformed("bytes after the transforms"));
        }
        proposals.push(Proposal { number, protocol, spi, transforms });
        match last {
            0 if r.data.is_empty() => return Ok(proposals),
            2 if !r.data.is_empty() => {}
            _ => return Err(r.malformed("proposal last-marks do not match the payload length")),
        }
    }
}

fn parse_selectors(r: &mut Reader<'_>) -> Result<Vec<TrafficSelector>, ParseError> {
    let count = r.u8("TS count")?;
    r.take(3, "reserved")?;
    let mut selectors = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let ts_type = r.u8("TS type")?;
        let ip_protocol = r.u8("IP protocol")?;
        let length = r.u16("selector length")?;
        let start_port = r.u16("start port")?;
        let end_port = r.u16("end port")?;
        let (start, end) = match (ts_type, length) {
            (TS_IPV4_ADDR_RANGE, 16) => {
                let a: [u8; 4] = r.take(4, "address")?.try_into().expect("4 bytes");
                let b: [u8; 4] = r.take(4, "address")?.try_into().expect("4 bytes");
                (IpAddr::from(a), IpAddr::from(b))
            }
            (TS_IPV6_ADDR_RANGE, 40) => {
                let a: [u8; 16] = r.take(16, "address")?.try_into().expect("16 bytes");
                let b: [u8; 16] = r.take(16, "address")?.try_into().expect("16 bytes");
                (IpAddr::from(a), IpAddr::from(b))
            }
            _ => return Err(r.malformed("unsupported selector type or length")),
        };
        selectors.push(TrafficSelector { ip_protocol, start_port, end_port, start, end });
    }
    if !r.data.is_empty() {
        return Err(r.malformed("bytes after the selectors"));
    }
    Ok(selectors)
}

/// Encodes a payload chain (no SK/SKF: those are built by the cipher). Returns the type
/// of the first payload (0 if empty) and the bytes.
pub fn encode_chain(payloads: &[Payload]) -> (u8, Vec<u8>) {
    let mut out = Vec::new();
    for (i, payload) in payloads.iter().enumerate() {
        let next = payloads.get(i + 1).map_or(payload_type::NONE, Payload::payload_type);
        let start = out.len();
        out.extend_from_slice(&[next, 0, 0, 0]);
        encode_body(payload, &mut out);
        let len = u16::try_from(out.len() - start).unwrap_or(u16::MAX);
        out[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
    }
    (payloads.first().map_or(payload_type::NONE, Payload::payload_type), out)
}

fn encode_body(payload: &Payload, out: &mut Vec<u8>) {
    match payload {
        Payload::Sa(proposals) => {
            for (i, p) in proposals.iter().enumerate() {
                let start = out.len();
                out.extend_from_slice(&[if i + 1 == proposals.len() { 0 } else { 2 }, 0, 0, 0]);
                out.extend_from_slice(&[p.number, p.protocol, p.spi.len() as u8, p.transforms.len() as u8]);
                out.extend_from_slice(&p.spi);
                for (j, t) in p.transforms.iter().enumerate() {
                    let t_start = out.len();
                    out.extend_from_slice(&[if j + 1 == p.transforms.len() { 0 } else { 3 }, 0, 0, 0]);
                    out.extend_from_slice(&[t.transform_type, 0]);
                    out.extend_from_slice(&t.id.to_be_bytes());
                    for a in &t.attributes {
                        match a {
                            TransformAttribute::Short { kind, value } => {
                                out.extend_from_slice(&(kind | 0x8000).to_be_bytes());
                                out.extend_from_slice(&value.to_be_bytes());
                            }
                            TransformAttribute::Long { kind, value } => {
                                out.extend_from_slice(&kind.to_be_bytes());
                                out.extend_from_slice(&(value.len() as u16).to_be_bytes());
                                out.extend_from_slice(value);
                            }
                        }
                    }
                    let t_len = (out.len() - t_start) as u16;
                    out[t_start + 2..t_start + 4].copy_from_slice(&t_len.to_be_bytes());
                }
                let len = (out.len() - start) as u16;
                out[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
            }
        }
        Payload::Ke { group, data } => {
            out.extend_from_slice(&group.to_be_bytes());
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(data);
        }
        Payload::IdI(id) | Payload::IdR(id) => out.extend_from_slice(&id.body()),
        Payload::Cert { encoding, data } | Payload::CertReq { encoding, data } => {
            out.push(*encoding);
            out.extend_from_slice(data);
        }
        Payload::Auth { method, data } => {
            out.extend_from_slice(&[*method, 0, 0, 0]);
            out.extend_from_slice(data);
        }
        Payload::Nonce(data) | Payload::VendorId(data) | Payload::Eap(data) => out.extend_from_slice(data),
        Payload::Notify(n) => {
            out.extend_from_slice(&[n.protocol, n.spi.len() as u8]);
            out.extend_from_slice(&n.notify_type.to_be_bytes());
            out.extend_from_slice(&n.spi);
            out.extend_from_slice(&n.data);
        }
        Payload::Delete(d) => {
            out.extend_from_slice(&[d.protocol, d.spi_size]);
            out.extend_from_slice(&(d.spis.len() as u16).to_be_bytes());
            for spi in &d.spis {
                out.extend_from_slice(spi);
            }
        }
        Payload::TsI(selectors) | Payload::TsR(selectors) => {
            out.extend_from_slice(&[selectors.len() as u8, 0, 0, 0]);
            for ts in selectors {
                let (ts_type, len) =
                    if ts.start.is_ipv4() { (TS_IPV4_ADDR_RANGE, 16u16) } else { (TS_IPV6_ADDR_RANGE, 40) };
                out.extend_from_slice(&[ts_type, ts.ip_protocol]);
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(&ts.start_port.to_be_bytes());
                out.extend_from_slice(&ts.end_port.to_be_bytes());
                for addr in [ts.start, ts.end] {
                    match addr {
                        IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
                        IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
                    }
                }
            }
        }
        Payload::Cp(cp) => {
            out.extend_from_slice(&[cp.cfg_type, 0, 0, 0]);
            for (kind, value) in &cp.attributes {
                out.extend_from_slice(&kind.to_be_bytes());
                out.extend_from_slice(&(value.len() as u16).to_be_bytes());
                out.extend_from_slice(value);
            }
        }
        Payload::Unknown { body, .. } => out.extend_from_slice(body),
        // Built by the cipher, never through the plain encoder.
        Payload::Encrypted(_) => {}
    }
}

/// A parsed unencrypted message (IKE_SA_INIT), or the outer layer of an encrypted one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub header: Header,
    pub payloads: Vec<Payload>,
}

impl Message {
    pub fn parse(data: &[u8]) -> Result<Message, ParseError> {
        let header = Header::parse(data)?;
        let payloads = parse_chain(header.next_payload, &data[HEADER_LEN..], HEADER_LEN)?;
        Ok(Message { header, payloads })
    }

    /// Encodes an unencrypted message; the header's next-payload and length are filled in.
    pub fn encode(&self) -> Vec<u8> {
        let (first, body) = encode_chain(&self.payloads);
        let mut header = self.header;
        header.next_payload = first;
        header.length = (HEADER_LEN + body.len()) as u32;
        let mut out = Vec::with_capacity(header.length as usize);
        header.encode(&mut out);
        out.extend_from_slice(&body);
        out
    }
}

pub fn notifies(payloads: &[Payload]) -> impl Iterator<Item = &Notify> {
    payloads.iter().filter_map(|p| match p {
        Payload::Notify(n) => Some(n),
        _ => None,
    })
}

pub fn find_notify(payloads: &[Payload], notify_type: u16) -> Option<&Notify> {
    notifies(payloads).find(|n| n.notify_type == notify_type)
}

/// Reassembly of one fragmented message (RFC 7383 §2.6), after each fragment was
/// authenticated and decrypted on its own. Limits keep a peer from pinning memory.
#[derive(Debug, Default)]
pub struct Reassembly {
    message_id: u32,
    total: u16,
    first_inner: u8,
    parts: Vec<Option<Vec<u8>>>,
    bytes: usize,
}

/// At most this many fragments per message (strongSwan's default limit is also small).
pub const MAX_FRAGMENTS: u16 = 64;
/// At most this many decrypted bytes per reassembled message.
pub const MAX_REASSEMBLED_LEN: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReassemblyError {
    #[error("{0} fragments announced, more than the limit")]
    TooManyFragments(u16),
    #[error("the reassembled message would exceed {MAX_REASSEMBLED_LEN} bytes")]
    TooLarge,
    #[error("fragment {number} of {total} contradicts the earlier total of {earlier}")]
    InconsistentTotal { number: u16, total: u16, earlier: u16 },
}

impl Reassembly {
    /// Adds one decrypted fragment; returns the first inner payload type and the whole
    /// inner chain once every fragment is present. A fragment of a newer message
    /// replaces an unfinished older one; duplicates are ignored.
    pub fn add(
        &mut self,
        message_id: u32,
        number: u16,
        total: u16,
        first_inner: u8,
        plaintext: Vec<u8>,
    ) -> Result<Option<(u8, Vec<u8>)>, ReassemblyError> {
        if total > MAX_FRAGMENTS {
            return Err(ReassemblyError::TooManyFragments(total));
        }
        if self.parts.is_empty() || self.message_id != message_id {
            *self = Reassembly { message_id, total, parts: vec![None; usize::from(total)], ..Default::default() };
        } else if self.total != total {
            return Err(ReassemblyError::InconsistentTotal { number, total, earlier: self.total });
        }
        let slot = &mut self.parts[usize::from(number - 1)];
        if slot.is_some() {
            return Ok(None);
        }
        if self.bytes + plaintext.len() > MAX_REASSEMBLED_LEN {
            return Err(ReassemblyError::TooLarge);
        }
        if number == 1 {
            self.first_inner = first_inner;
        }
        self.bytes += plaintext.len();
        *slot = Some(plaintext);
        if self.parts.iter().any(Option::is_none) {
            return Ok(None);
        }
        let whole = self.parts.iter_mut().flat_map(|p| p.take().unwrap_or_default()).collect();
        let first = self.first_inner;
        *self = Reassembly::default();
        Ok(Some((first, whole)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_payloads() -> Vec<Payload> {
        vec![
            Payload::Sa(vec![
                Proposal {
                    number: 1,
                    protocol: protocol::IKE,
                    spi: vec![],
                    transforms: vec![
                        Transform::new(transform_type::ENCR, 20, Some(256)),
                        Transform::new(transform_type::PRF, 5, None),
                        Transform::new(transform_type::DH, 19, None),
                    ],
                },
                Proposal {
                    number: 2,
                    protocol: protocol::ESP,
                    spi: vec![1, 2, 3, 4],
                    transforms: vec![Transform {
                        transform_type: transform_type::ENCR,
                        id: 12,
                        attributes: vec![TransformAttribute::Long { kind: 3, value: vec![9, 9] }],
                    }],
                },
            ]),
            Payload::Ke { group: 19, data: vec![7; 64] },
            Payload::Nonce(vec![1; 32]),
            Payload::Notify(Notify { protocol: 3, spi: vec![0xaa; 4], notify_type: notify::REKEY_SA, data: vec![] }),
            Payload::Notify(Notify::new(notify::NAT_DETECTION_SOURCE_IP, vec![5; 20])),
            Payload::IdI(Identification { id_type: id_type::FQDN, data: b"client.test".to_vec() }),
            Payload::IdR(Identification { id_type: id_type::IPV4_ADDR, data: vec![10, 0, 0, 1] }),
            Payload::Cert { encoding: CERT_X509_SIGNATURE, data: vec![0x30, 0x82] },
            Payload::CertReq { encoding: CERT_X509_SIGNATURE, data: vec![0x11; 20] },
            Payload::Auth { method: 14, data: vec![0x0c, 0x30] },
            Payload::Delete(Delete { protocol: 3, spi_size: 4, spis: vec![vec![1, 2, 3, 4], vec![5, 6, 7, 8]] }),
            Payload::VendorId(b"vendor".to_vec()),
            Payload::TsI(vec![TrafficSelector {
                ip_protocol: 0,
                start_port: 0,
                end_port: 65535,
                start: "0.0.0.0".parse().unwrap(),
                end: "255.255.255.255".parse().unwrap(),
            }]),
            Payload::TsR(vec![TrafficSelector {
                ip_protocol: 6,
                start_port: 443,
                end_port: 443,
                start: "::".parse().unwrap(),
                end: "::ffff".parse().unwrap(),
            }]),
            Payload::Cp(Configuration {
                cfg_type: cfg_type::REQUEST,
                attributes: vec![(cfg_attr::INTERNAL_IP4_ADDRESS, vec![]), (cfg_attr::INTERNAL_IP4_DNS, vec![])],
            }),
            Payload::Eap(vec![1, 7, 0, 5, 1]),
            Payload::Unknown { payload_type: 200, body: vec![1, 2, 3] },
        ]
    }

    fn header() -> Header {
        Header {
            spi_i: [1; 8],
            spi_r: [0; 8],
            next_payload: 0,
            exchange: exchange::IKE_SA_INIT,
            flags: flags::INITIATOR,
            message_id: 0,
            length: 0,
        }
    }

    #[test]
    fn every_payload_round_trips() {
        let message = Message { header: header(), payloads: sample_payloads() };
        let bytes = message.encode();
        let parsed = Message::parse(&bytes).unwrap();
        assert_eq!(parsed.payloads, message.payloads);
        assert_eq!(parsed.header.length as usize, bytes.len());
        assert_eq!(parsed.header.next_payload, payload_type::SA);
        assert_eq!(parsed.encode(), bytes);
    }

    /// A hand-built IKE_SA_INIT fragment checked byte by byte against RFC 7296 §3.1/§3.3.
    #[test]
    fn header_and_sa_layout_match_the_rfc() {
        let message = Message {
            header: header(),
            payloads: vec![Payload::Sa(vec![Proposal {
                number: 1,
                protocol: protocol::IKE,
                spi: vec![],
                transforms: vec![Transform::new(transform_type::ENCR, 20, Some(128))],
            }])],
        };
        let bytes = message.encode();
        let expected: Vec<u8> = [
            &[1u8; 8][..],
            &[0; 8],
            &[33, 0x20, 34, 0x08, 0, 0, 0, 0, 0, 0, 0, 28 + 24],
            &[0, 0, 0, 24],                                  // SA generic header: last payload, length 24
            &[0, 0, 0, 20, 1, 1, 0, 1],                      // proposal: last, len 20, #1, IKE, no SPI, 1 transform
            &[0, 0, 0, 12, 1, 0, 0, 20, 0x80, 0x0e, 0, 128], // ENCR AES-GCM-16, key length 128
        ]
        .concat();
        assert_eq!(bytes, expected);
    }

    #[test]
    fn parse_errors_are_typed() {
        let bytes = Message { header: header(), payloads: sample_payloads() }.encode();
        assert_eq!(Message::parse(&bytes[..10]), Err(ParseError::ShortHeader(10)));
        let mut v1 = bytes.clone();
        v1[17] = 0x10;
        assert_eq!(Message::parse(&v1), Err(ParseError::UnsupportedVersion(1)));
        assert!(matches!(Message::parse(&bytes[..bytes.len() - 1]), Err(ParseError::LengthMismatch { .. })));
        // A critical unknown payload.
        let mut critical =
            Message { header: header(), payloads: vec![Payload::Unknown { payload_type: 200, body: vec![] }] }.encode();
        critical[HEADER_LEN + 1] = 0x80;
        assert_eq!(Message::parse(&critical), Err(ParseError::UnsupportedCritical(200)));
        // A payload length pointing past the end.
        let mut truncated = Message { header: header(), payloads: vec![Payload::Nonce(vec![0; 8])] }.encode();
        truncated[HEADER_LEN + 3] = 200;
        assert_eq!(Message::parse(&truncated), Err(ParseError::TruncatedPayload { payload_type: 40 }));
        // An EAP payload whose inner length disagrees.
        let eap = Message { header: header(), payloads: vec![Payload::Eap(vec![1, 7, 0, 9, 1])] }.encode();
        assert!(matches!(Message::parse(&eap), Err(ParseError::Malformed { payload_type: 48, .. })));
    }

    #[test]
    fn encrypted_payload_must_be_last_and_records_its_iv_offset() {
        // Nonce, then SK with 4 body bytes.
        let (_, mut chain) = encode_chain(&[Payload::Nonce(vec![0; 4])]);
        chain[0] = payload_type::SK;
        chain.extend_from_slice(&[payload_type::IDI, 0, 0, 8, 9, 9, 9, 9]);
        let payloads = parse_chain(payload_type::NONCE, &chain, HEADER_LEN).unwrap();
        assert_eq!(
            payloads[1],
            Payload::Encrypted(Encrypted { first_inner: payload_type::IDI, fragment: None, iv_offset: 28 + 8 + 4 })
        );
        chain.extend_from_slice(&[0, 0, 0, 4]);
        assert_eq!(parse_chain(payload_type::NONCE, &chain, HEADER_LEN), Err(ParseError::EncryptedNotLast));
        // SKF: number and total precede the IV.
        let skf = [payload_type::IDI, 0, 0, 12, 0, 2, 0, 3, 1, 1, 1, 1];
        let payloads = parse_chain(payload_type::SKF, &skf, HEADER_LEN).unwrap();
        assert_eq!(
            payloads[0],
            Payload::Encrypted(Encrypted { first_inner: payload_type::IDI, fragment: Some((2, 3)), iv_offset: 36 })
        );
        let bad = [0, 0, 0, 12, 0, 4, 0, 3, 1, 1, 1, 1];
        assert!(matches!(parse_chain(payload_type::SKF, &bad, 28), Err(ParseError::Malformed { .. })));
    }

    #[test]
    fn reassembly_orders_fragments_and_enforces_limits() {
        let mut r = Reassembly::default();
        assert_eq!(r.add(1, 2, 3, 0, b"bb".to_vec()), Ok(None));
        assert_eq!(r.add(1, 2, 3, 0, b"XX".to_vec()), Ok(None), "a duplicate is ignored");
        assert_eq!(r.add(1, 1, 3, payload_type::IDI, b"aa".to_vec()), Ok(None));
        assert_eq!(
            r.add(1, 3, 4, 0, b"cc".to_vec()),
            Err(ReassemblyError::InconsistentTotal { number: 3, total: 4, earlier: 3 })
        );
        assert_eq!(r.add(1, 3, 3, 0, b"cc".to_vec()), Ok(Some((payload_type::IDI, b"aabbcc".to_vec()))));
        assert_eq!(r.add(2, 1, 65, 0, vec![]), Err(ReassemblyError::TooManyFragments(65)));
        let mut r = Reassembly::default();
        assert_eq!(r.add(3, 1, 2, 0, vec![0; MAX_REASSEMBLED_LEN]), Ok(None));
        assert_eq!(r.add(3, 2, 2, 0, vec![0; 1]), Err(ReassemblyError::TooLarge));
        // A newer message replaces an unfinished one.
        assert_eq!(r.add(4, 1, 1, 35, vec![1]), Ok(Some((35, vec![1]))));
    }

    #[test]
    fn identification_display() {
        let ip = Identification { id_type: id_type::IPV4_ADDR, data: vec![192, 0, 2, 7] };
        assert_eq!(ip.display(), "192.0.2.7");
        assert_eq!(ip.body(), vec![1, 0, 0, 0, 192, 0, 2, 7]);
        // SEQUENCE { SET { SEQUENCE { OID 2.5.4.3 (CN), UTF8String "mallory" } } }
        let cn =
            [&[0x30, 0x12, 0x31, 0x10, 0x30, 0x0e, 0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, 0x07][..], b"mallory"].concat();
        let dn = Identification { id_type: id_type::DER_ASN1_DN, data: cn };
        assert_eq!(dn.display(), "CN=mallory");
        let bad = Identification { id_type: id_type::DER_ASN1_DN, data: vec![0x04, 0x00] };
        assert_eq!(bad.display(), "DN 0400");
        let other = Identification { id_type: 11, data: vec![0xab] };
        assert_eq!(other.display(), "type 11: ab");
    }
}
