//! The RADIUS packet codec (RFC 2865 §3 and §5, PROTOCOLS.md §5.1–5.2 and §5.5):
//! `Code(1) Identifier(1) Length(2) Authenticator(16) Attributes`, each attribute
//! `Type(1) Length(1) Value`. Decoding refuses anything malformed with a [`DecodeError`]
//! and never panics; encoding refuses values and packets RADIUS cannot carry.

use std::fmt;
use std::net::Ipv4Addr;

pub const HEADER_LEN: usize = 20;
pub const MAX_PACKET_LEN: usize = 4096;
pub const AUTHENTICATOR_LEN: usize = 16;
/// An attribute's value fits in 255 bytes minus its 2-byte header.
pub const MAX_VALUE_LEN: usize = 253;
/// A Vendor-Specific sub-attribute's value: 253 minus Vendor-Id(4), type(1) and length(1).
pub const MAX_VENDOR_VALUE_LEN: usize = MAX_VALUE_LEN - 6;

/// Packet types this client sends or understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    AccessRequest = 1,
    AccessAccept = 2,
    AccessReject = 3,
    AccountingRequest = 4,
    AccountingResponse = 5,
    AccessChallenge = 11,
    StatusServer = 12,
}

impl Code {
    pub fn from_u8(code: u8) -> Option<Code> {
        Some(match code {
            1 => Code::AccessRequest,
            2 => Code::AccessAccept,
            3 => Code::AccessReject,
            4 => Code::AccountingRequest,
            5 => Code::AccountingResponse,
            11 => Code::AccessChallenge,
            12 => Code::StatusServer,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Code::AccessRequest => "Access-Request",
            Code::AccessAccept => "Access-Accept",
            Code::AccessReject => "Access-Reject",
            Code::AccountingRequest => "Accounting-Request",
            Code::AccountingResponse => "Accounting-Response",
            Code::AccessChallenge => "Access-Challenge",
            Code::StatusServer => "Status-Server",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Attribute types (RFC 2865, 2866, 2869, 3579).
pub mod attr {
    pub const USER_NAME: u8 = 1;
    pub const USER_PASSWORD: u8 = 2;
    pub const NAS_IP_ADDRESS: u8 = 4;
    pub const NAS_PORT: u8 = 5;
    pub const SERVICE_TYPE: u8 = 6;
    pub const FRAMED_PROTOCOL: u8 = 7;
    pub const FRAMED_IP_ADDRESS: u8 = 8;
    pub const FRAMED_IP_NETMASK: u8 = 9;
    pub const FILTER_ID: u8 = 11;
    pub const FRAMED_MTU: u8 = 12;
    pub const REPLY_MESSAGE: u8 = 18;
    pub const FRAMED_ROUTE: u8 = 22;
    pub const STATE: u8 = 24;
    pub const CLASS: u8 = 25;
    pub const VENDOR_SPECIFIC: u8 = 26;
    pub const SESSION_TIMEOUT: u8 = 27;
    pub const IDLE_TIMEOUT: u8 = 28;
    pub const CALLED_STATION_ID: u8 = 30;
    pub const CALLING_STATION_ID: u8 = 31;
    pub const NAS_IDENTIFIER: u8 = 32;
    pub const PROXY_STATE: u8 = 33;
    pub const ACCT_STATUS_TYPE: u8 = 40;
    pub const ACCT_DELAY_TIME: u8 = 41;
    pub const ACCT_INPUT_OCTETS: u8 = 42;
    pub const ACCT_OUTPUT_OCTETS: u8 = 43;
    pub const ACCT_SESSION_ID: u8 = 44;
    pub const ACCT_AUTHENTIC: u8 = 45;
    pub const ACCT_SESSION_TIME: u8 = 46;
    pub const ACCT_INPUT_PACKETS: u8 = 47;
    pub const ACCT_OUTPUT_PACKETS: u8 = 48;
    pub const ACCT_TERMINATE_CAUSE: u8 = 49;
    pub const ACCT_MULTI_SESSION_ID: u8 = 50;
    pub const ACCT_LINK_COUNT: u8 = 51;
    pub const ACCT_INPUT_GIGAWORDS: u8 = 52;
    pub const ACCT_OUTPUT_GIGAWORDS: u8 = 53;
    pub const EVENT_TIMESTAMP: u8 = 55;
    pub const NAS_PORT_TYPE: u8 = 61;
    pub const CONNECT_INFO: u8 = 77;
    pub const EAP_MESSAGE: u8 = 79;
    pub const MESSAGE_AUTHENTICATOR: u8 = 80;
    pub const ACCT_INTERIM_INTERVAL: u8 = 85;
    pub const NAS_PORT_ID: u8 = 87;

    /// Service-Type value Framed.
    pub const SERVICE_TYPE_FRAMED: u32 = 2;
    /// Framed-Protocol value PPP.
    pub const FRAMED_PROTOCOL_PPP: u32 = 1;
    /// NAS-Port-Type value Virtual (what VPN policies match on).
    pub const NAS_PORT_TYPE_VIRTUAL: u32 = 5;
}

/// Microsoft vendor-specific attributes (RFC 2548), inside Vendor-Specific.
pub mod ms {
    pub const VENDOR_ID: u32 = 311;
    pub const CHAP_ERROR: u8 = 2;
    pub const CHAP_CHALLENGE: u8 = 11;
    pub const MPPE_SEND_KEY: u8 = 16;
    pub const MPPE_RECV_KEY: u8 = 17;
    pub const CHAP2_RESPONSE: u8 = 25;
    pub const CHAP2_SUCCESS: u8 = 26;
    /// "MS-Azure-Policy-ID": sent by Azure's RADIUS policies to name the policy (group)
    /// that matched. Opaque octets (seen starting 6a d1 bd); see
    /// [`super::azure_policy_id_text`].
    pub const AZURE_POLICY_ID: u8 = 65;
}

/// A printable form of an MS-Azure-Policy-ID value for matching against configured
/// groups: lowercase hex of the whole value.
pub fn azure_policy_id_text(raw: &[u8]) -> String {
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

/// One attribute as it is on the wire (no interpretation of the value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribute {
    pub kind: u8,
    pub value: Vec<u8>,
}

impl Attribute {
    pub fn new(kind: u8, value: impl Into<Vec<u8>>) -> Self {
        Attribute { kind, value: value.into() }
    }

    /// An "integer" attribute (32-bit, network order).
    pub fn integer(kind: u8, value: u32) -> Self {
        Attribute { kind, value: value.to_be_bytes().to_vec() }
    }

    pub fn ipv4(kind: u8, address: Ipv4Addr) -> Self {
        Attribute { kind, value: address.octets().to_vec() }
    }

    /// A Vendor-Specific attribute holding one sub-attribute in the RFC 2865 §5.26
    /// format: `Vendor-Id(4) Vendor-Type(1) Vendor-Length(1) Value`. A value longer than
    /// [`MAX_VENDOR_VALUE_LEN`] makes an attribute that encoding refuses.
    pub fn vendor(vendor_id: u32, vendor_type: u8, value: &[u8]) -> Self {
        let mut bytes = Vec::with_capacity(6 + value.len());
        bytes.extend_from_slice(&vendor_id.to_be_bytes());
        bytes.push(vendor_type);
        // Truncation only happens for values encoding refuses anyway (see above).
        bytes.push((value.len() + 2).min(255) as u8);
        bytes.extend_from_slice(value);
        Attribute { kind: attr::VENDOR_SPECIFIC, value: bytes }
    }

    fn encoded_len(&self) -> usize {
        2 + self.value.len()
    }
}

/// One sub-attribute of a Vendor-Specific attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VendorAttribute<'a> {
    pub vendor_id: u32,
    pub vendor_type: u8,
    pub value: &'a [u8],
}

/// The sub-attributes of one Vendor-Specific value, which must be in the RFC 2865 §5.26
/// recommended format (Microsoft's are).
pub fn decode_vendor_specific(value: &[u8]) -> Result<Vec<VendorAttribute<'_>>, DecodeError> {
    let Some((vendor_id, mut rest)) = value.split_first_chunk::<4>() else {
        return Err(DecodeError::BadVendorSpecific { vendor_id: None });
    };
    let vendor_id = u32::from_be_bytes(*vendor_id);
    let bad = DecodeError::BadVendorSpecific { vendor_id: Some(vendor_id) };
    let mut subs = Vec::new();
    if rest.is_empty() {
        return Err(bad);
    }
    while let [vendor_type, length, after @ ..] = rest {
        let value_len = usize::from(*length).checked_sub(2).ok_or(bad.clone())?;
        if value_len > after.len() {
            return Err(bad);
        }
        subs.push(VendorAttribute { vendor_id, vendor_type: *vendor_type, value: &after[..value_len] });
        rest = &after[value_len..];
    }
    if !rest.is_empty() {
        return Err(bad);
    }
    Ok(subs)
}

/// Why bytes are not a RADIUS packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("{received} bytes is shorter than the 20-byte RADIUS header")]
    TooShort { received: usize },
    #[error("Length field {length} is outside 20..=4096 or beyond the {received} bytes received")]
    BadLength { length: usize, received: usize },
    #[error("unknown RADIUS code {0}")]
    UnknownCode(u8),
    #[error("attribute {kind} at offset {offset} has length {length}, which is below 2 or runs past the packet")]
    BadAttributeLength { offset: usize, kind: u8, length: u8 },
    #[error("malformed Vendor-Specific attribute{}", vendor_id.map(|v| format!(" (vendor {v})")).unwrap_or_default())]
    BadVendorSpecific { vendor_id: Option<u32> },
}

/// Why a packet cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("attribute {kind} has a {length}-byte value; RADIUS carries at most 253 (247 inside Vendor-Specific)")]
    ValueTooLong { kind: u8, length: usize },
    #[error("the packet would be {length} bytes; RADIUS allows at most 4096")]
    PacketTooLong { length: usize },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub code: Code,
    pub identifier: u8,
    pub authenticator: [u8; AUTHENTICATOR_LEN],
    pub attributes: Vec<Attribute>,
}

impl Packet {
    /// Parses a packet. Bytes after the Length field's end are padding and ignored
    /// (RFC 2865 §3).
    pub fn decode(bytes: &[u8]) -> Result<Packet, DecodeError> {
        let Some((header, _)) = bytes.split_first_chunk::<HEADER_LEN>() else {
            return Err(DecodeError::TooShort { received: bytes.len() });
        };
        let length = usize::from(u16::from_be_bytes([header[2], header[3]]));
        if !(HEADER_LEN..=MAX_PACKET_LEN).contains(&length) || length > bytes.len() {
            return Err(DecodeError::BadLength { length, received: bytes.len() });
        }
        let code = Code::from_u8(header[0]).ok_or(DecodeError::UnknownCode(header[0]))?;
        let mut authenticator = [0u8; AUTHENTICATOR_LEN];
        authenticator.copy_from_slice(&header[4..HEADER_LEN]);
        let attributes = attribute_spans(&bytes[..length])
            .map(|span| span.map(|(kind, range)| Attribute { kind, value: bytes[range].to_vec() }))
            .collect::<Result<_, _>>()?;
        Ok(Packet { code, identifier: header[1], authenticator, attributes })
    }

    /// The wire bytes of the packet, with the authenticator as it is.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let length = self.encoded_len();
        if length > MAX_PACKET_LEN {
            return Err(EncodeError::PacketTooLong { length });
        }
        let mut bytes = Vec::with_capacity(length);
        bytes.push(self.code as u8);
        bytes.push(self.identifier);
        bytes.extend_from_slice(&(length as u16).to_be_bytes());
        bytes.extend_from_slice(&self.authenticator);
        for attribute in &self.attributes {
            check_value_len(attribute)?;
            bytes.push(attribute.kind);
            bytes.push(attribute.encoded_len() as u8);
            bytes.extend_from_slice(&attribute.value);
        }
        Ok(bytes)
    }

    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.attributes.iter().map(Attribute::encoded_len).sum::<usize>()
    }

    /// The value of the first attribute of this type.
    pub fn attribute(&self, kind: u8) -> Option<&[u8]> {
        self.attributes(kind).next()
    }

    /// The values of every attribute of this type, in packet order.
    pub fn attributes(&self, kind: u8) -> impl Iterator<Item = &[u8]> {
        self.attributes.iter().filter(move |a| a.kind == kind).map(|a| a.value.as_slice())
    }

    /// The values of every sub-attribute `vendor_type` of vendor `vendor_id`, in packet
    /// order. Fails if a Vendor-Specific attribute of that vendor is malformed; those of
    /// other vendors are not looked into.
    pub fn vendor_attributes(&self, vendor_id: u32, vendor_type: u8) -> Result<Vec<&[u8]>, DecodeError> {
        let mut values = Vec::new();
        for vsa in self.attributes(attr::VENDOR_SPECIFIC) {
            if vsa.get(..4) != Some(&vendor_id.to_be_bytes()[..]) {
                continue;
            }
            let subs = decode_vendor_specific(vsa)?;
            values.extend(subs.into_iter().filter(|s| s.vendor_type == vendor_type).map(|s| s.value));
        }
        Ok(values)
    }
}

pub(crate) fn check_value_len(attribute: &Attribute) -> Result<(), EncodeError> {
    match attribute.value.len() > MAX_VALUE_LEN {
        true => Err(EncodeError::ValueTooLong { kind: attribute.kind, length: attribute.value.len() }),
        false => Ok(()),
    }
}

/// Walks the attributes of a packet whose header is already checked (`bytes` ends at
/// the Length field), yielding each type and the byte range of its value.
pub(crate) fn attribute_spans(
    bytes: &[u8],
) -> impl Iterator<Item = Result<(u8, std::ops::Range<usize>), DecodeError>> + '_ {
    let mut offset = HEADER_LEN;
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed || offset >= bytes.len() {
            return None;
        }
        let kind = bytes[offset];
        let length = bytes.get(offset + 1).copied().unwrap_or(0);
        let end = offset + usize::from(length);
        if length < 2 || end > bytes.len() {
            failed = true;
            return Some(Err(DecodeError::BadAttributeLength { offset, kind, length }));
        }
        let value = offset + 2..end;
        offset = end;
        Some(Ok((kind, value)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::hex;

    fn sample() -> Packet {
        Packet {
            code: Code::AccessAccept,
            identifier: 7,
            authenticator: [0xab; 16],
            attributes: vec![
                Attribute::new(attr::USER_NAME, "nemo"),
                Attribute::ipv4(attr::FRAMED_IP_ADDRESS, Ipv4Addr::new(10, 8, 0, 50)),
                Attribute::integer(attr::SESSION_TIMEOUT, 3600),
                Attribute::new(attr::CLASS, vec![]),
                Attribute::vendor(ms::VENDOR_ID, ms::CHAP2_SUCCESS, b"\x01S=00"),
                Attribute::new(attr::CLASS, vec![1, 2, 3]),
            ],
        }
    }

    #[test]
    fn round_trip() {
        let packet = sample();
        let bytes = packet.encode().unwrap();
        assert_eq!(bytes.len(), packet.encoded_len());
        assert_eq!(&bytes[..4], &[2, 7, 0, bytes.len() as u8]);
        assert_eq!(Packet::decode(&bytes).unwrap(), packet);
        assert_eq!(packet.attribute(attr::FRAMED_IP_ADDRESS), Some(&[10, 8, 0, 50][..]));
        assert_eq!(packet.attributes(attr::CLASS).collect::<Vec<_>>(), vec![&[][..], &[1, 2, 3][..]]);
        assert_eq!(packet.vendor_attributes(ms::VENDOR_ID, ms::CHAP2_SUCCESS).unwrap(), vec![&b"\x01S=00"[..]]);
        assert_eq!(packet.vendor_attributes(ms::VENDOR_ID, ms::CHAP_ERROR).unwrap(), Vec::<&[u8]>::new());
    }

    #[test]
    fn rfc2865_access_request_example_decodes() {
        // RFC 2865 §7.1: Access-Request from NAS 192.168.1.16 for user "nemo", port 3.
        let bytes = hex(concat!(
            "010000380f403f9473978057bd83d5cb98f4227a",
            "01066e656d6f",
            "02120dbe708d93d413ce3196e43f782a0aee",
            "0406c0a80110",
            "050600000003"
        ));
        let packet = Packet::decode(&bytes).unwrap();
        assert_eq!(packet.code, Code::AccessRequest);
        assert_eq!(packet.identifier, 0);
        assert_eq!(packet.attribute(attr::USER_NAME), Some(&b"nemo"[..]));
        assert_eq!(packet.attribute(attr::NAS_IP_ADDRESS), Some(&[192, 168, 1, 16][..]));
        assert_eq!(packet.encode().unwrap(), bytes);
    }

    #[test]
    fn padding_after_length_is_ignored() {
        let mut bytes = sample().encode().unwrap();
        let expected = Packet::decode(&bytes).unwrap();
        bytes.extend_from_slice(&[0; 9]);
        assert_eq!(Packet::decode(&bytes).unwrap(), expected);
    }

    #[test]
    fn malformed_packets_are_refused() {
        let good = sample().encode().unwrap();
        let with_length = |length: u16| {
            let mut b = good.clone();
            b[2..4].copy_from_slice(&length.to_be_bytes());
            b
        };
        assert_eq!(Packet::decode(&good[..19]), Err(DecodeError::TooShort { received: 19 }));
        assert!(matches!(Packet::decode(&with_length(19)), Err(DecodeError::BadLength { length: 19, .. })));
        assert!(matches!(Packet::decode(&with_length(4097)), Err(DecodeError::BadLength { .. })));
        // Length beyond what arrived (truncated datagram).
        assert!(matches!(Packet::decode(&good[..good.len() - 1]), Err(DecodeError::BadLength { .. })));
        // Length cutting an attribute in half.
        assert!(matches!(
            Packet::decode(&with_length(good.len() as u16 - 1)),
            Err(DecodeError::BadAttributeLength { .. })
        ));
        let mut unknown_code = good.clone();
        unknown_code[0] = 99;
        assert_eq!(Packet::decode(&unknown_code), Err(DecodeError::UnknownCode(99)));
        for bad_attr_len in [0u8, 1, 200] {
            let mut b = good.clone();
            b[21] = bad_attr_len;
            assert!(matches!(Packet::decode(&b), Err(DecodeError::BadAttributeLength { offset: 20, .. })));
        }
        // A lone type byte at the end.
        let mut b = good.clone();
        b.push(attr::CLASS);
        let len = b.len() as u16;
        b[2..4].copy_from_slice(&len.to_be_bytes());
        assert!(matches!(Packet::decode(&b), Err(DecodeError::BadAttributeLength { .. })));
    }

    #[test]
    fn oversize_values_and_packets_are_not_encoded() {
        let mut packet = sample();
        packet.attributes.push(Attribute::new(attr::CLASS, vec![0; 254]));
        assert_eq!(packet.encode(), Err(EncodeError::ValueTooLong { kind: attr::CLASS, length: 254 }));
        let mut packet = sample();
        packet.attributes.push(Attribute::vendor(ms::VENDOR_ID, ms::CHAP_ERROR, &[0; 248]));
        assert!(matches!(packet.encode(), Err(EncodeError::ValueTooLong { kind: attr::VENDOR_SPECIFIC, .. })));
        let mut packet = sample();
        packet.attributes.push(Attribute::vendor(ms::VENDOR_ID, ms::CHAP_ERROR, &[0; 247]));
        assert!(packet.encode().is_ok());
        packet.attributes.extend((0..16).map(|_| Attribute::new(attr::CLASS, vec![0; 253])));
        assert!(matches!(packet.encode(), Err(EncodeError::PacketTooLong { .. })));
    }

    #[test]
    fn vendor_specific_parsing() {
        let two = [0, 0, 1, 0x37, 16, 4, 0xaa, 0xbb, 17, 2];
        let subs = decode_vendor_specific(&two).unwrap();
        assert_eq!(subs.len(), 2);
        assert_eq!((subs[0].vendor_id, subs[0].vendor_type, subs[0].value), (311, 16, &[0xaa, 0xbb][..]));
        assert_eq!((subs[1].vendor_type, subs[1].value), (17, &[][..]));
        for bad in [
            &[0, 0, 1][..],
            &[0, 0, 1, 0x37],
            &[0, 0, 1, 0x37, 16, 1],
            &[0, 0, 1, 0x37, 16, 5, 0],
            &[0, 0, 1, 0x37, 16, 2, 9],
        ] {
            assert!(decode_vendor_specific(bad).is_err(), "{bad:?}");
        }
        // A malformed Microsoft VSA is an error when Microsoft attributes are asked for,
        // and another vendor's odd format is not looked into.
        let mut packet = sample();
        packet.attributes.push(Attribute::new(attr::VENDOR_SPECIFIC, vec![0, 0, 0, 9, 0xff]));
        assert!(packet.vendor_attributes(ms::VENDOR_ID, ms::MPPE_SEND_KEY).is_ok());
        packet.attributes.push(Attribute::new(attr::VENDOR_SPECIFIC, vec![0, 0, 1, 0x37, 16, 9]));
        assert!(packet.vendor_attributes(ms::VENDOR_ID, ms::MPPE_SEND_KEY).is_err());
    }

    #[test]
    fn azure_policy_id_is_printed_as_hex() {
        assert_eq!(azure_policy_id_text(&[0x6a, 0xd1, 0xbd, 0x00, 0x0f]), "6ad1bd000f");
    }

    #[test]
    fn mutated_packets_never_panic() {
        let mut rng = crate::testing::XorShift(0x5eed_1234);
        let good = sample().encode().unwrap();
        for _ in 0..20_000 {
            let mut bytes = good.clone();
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(bytes.len() as u64) as usize;
                bytes[i] = rng.next() as u8;
            }
            bytes.truncate(rng.below(bytes.len() as u64 + 1) as usize);
            if let Ok(packet) = Packet::decode(&bytes) {
                let _ = packet.vendor_attributes(ms::VENDOR_ID, ms::MPPE_SEND_KEY);
                assert!(packet.encode().is_ok(), "a decoded packet re-encodes");
            }
        }
    }
}
