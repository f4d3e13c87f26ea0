//! PPP frames as SSTP carries them (PROTOCOLS.md §2.6: no HDLC flags, escaping or FCS)
//! and the packet format shared by LCP, IPCP, CHAP and EAP (RFC 1661 §5).

/// PPP protocol numbers (PROTOCOLS.md §2.6).
pub mod protocol {
    pub const IPV4: u16 = 0x0021;
    pub const IPV6: u16 = 0x0057;
    pub const IPCP: u16 = 0x8021;
    pub const IPV6CP: u16 = 0x8057;
    pub const CCP: u16 = 0x80fd;
    pub const LCP: u16 = 0xc021;
    pub const PAP: u16 = 0xc023;
    pub const CHAP: u16 = 0xc223;
    pub const EAP: u16 = 0xc227;
}

/// Codes shared by LCP and the NCPs (RFC 1661 §5).
pub mod code {
    pub const CONFIGURE_REQUEST: u8 = 1;
    pub const CONFIGURE_ACK: u8 = 2;
    pub const CONFIGURE_NAK: u8 = 3;
    pub const CONFIGURE_REJECT: u8 = 4;
    pub const TERMINATE_REQUEST: u8 = 5;
    pub const TERMINATE_ACK: u8 = 6;
    pub const CODE_REJECT: u8 = 7;
    /// LCP only, as are the codes below.
    pub const PROTOCOL_REJECT: u8 = 8;
    pub const ECHO_REQUEST: u8 = 9;
    pub const ECHO_REPLY: u8 = 10;
    pub const DISCARD_REQUEST: u8 = 11;
    pub const IDENTIFICATION: u8 = 12;
    pub const TIME_REMAINING: u8 = 13;
}

/// LCP configuration options (RFC 1661 §6, PROTOCOLS.md §2.7).
pub mod lcp_option {
    pub const MRU: u8 = 1;
    pub const ACCM: u8 = 2;
    pub const AUTH_PROTOCOL: u8 = 3;
    pub const MAGIC_NUMBER: u8 = 5;
    pub const PROTOCOL_FIELD_COMPRESSION: u8 = 7;
    pub const ADDRESS_CONTROL_FIELD_COMPRESSION: u8 = 8;
    pub const CALLBACK: u8 = 13;
    pub const MRRU: u8 = 17;
    pub const ENDPOINT_DISCRIMINATOR: u8 = 19;
}

/// IPCP configuration options (RFC 1332, RFC 1877).
pub mod ipcp_option {
    pub const IP_COMPRESSION_PROTOCOL: u8 = 2;
    pub const IP_ADDRESS: u8 = 3;
    pub const PRIMARY_DNS: u8 = 129;
    pub const PRIMARY_NBNS: u8 = 130;
    pub const SECONDARY_DNS: u8 = 131;
    pub const SECONDARY_NBNS: u8 = 132;
}

/// CHAP algorithm 0x81: MS-CHAPv2 (RFC 2759 §2).
pub const CHAP_MS_CHAP_V2: u8 = 0x81;

/// The address and control bytes that start an uncompressed frame.
const ADDRESS_CONTROL: [u8; 2] = [0xff, 0x03];

/// Bytes a frame header takes when this side sends it (never compressed).
pub const FRAME_HEADER_LEN: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("empty PPP frame")]
    Empty,
    #[error("PPP frame ends inside its protocol field")]
    Truncated,
    #[error("PPP protocol field {0:#06x} is not a valid protocol number")]
    InvalidProtocol(u16),
}

/// One PPP frame: its protocol and information field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    pub protocol: u16,
    pub information: &'a [u8],
}

impl<'a> Frame<'a> {
    /// Parses a frame with or without the `FF 03` address/control bytes and with a one-
    /// or two-byte protocol field (ACFC and PFC, RFC 1661 §6.5–6.6): a peer may use them
    /// once agreed, and both forms are unambiguous.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, FrameError> {
        let rest = bytes.strip_prefix(&ADDRESS_CONTROL).unwrap_or(bytes);
        let (&first, after_first) = rest.split_first().ok_or(FrameError::Empty)?;
        // Protocol numbers have an odd low byte and an even high byte (RFC 1661 §2), so
        // an odd first byte is a compressed one-byte field.
        if first & 1 == 1 {
            return Ok(Frame { protocol: u16::from(first), information: after_first });
        }
        let (&second, information) = after_first.split_first().ok_or(FrameError::Truncated)?;
        let protocol = u16::from_be_bytes([first, second]);
        if second & 1 == 0 {
            return Err(FrameError::InvalidProtocol(protocol));
        }
        Ok(Frame { protocol, information })
    }
}

/// Appends an uncompressed frame (`FF 03`, two-byte protocol, information) to `out`.
pub fn push_frame(out: &mut Vec<u8>, protocol: u16, information: &[u8]) {
    out.reserve(FRAME_HEADER_LEN + information.len());
    out.extend_from_slice(&ADDRESS_CONTROL);
    out.extend_from_slice(&protocol.to_be_bytes());
    out.extend_from_slice(information);
}

/// An uncompressed frame.
pub fn frame(protocol: u16, information: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    push_frame(&mut out, protocol, information);
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("packet shorter than its 4-byte header")]
    TooShort,
    #[error("packet Length {declared} is below 4 or beyond the {available} bytes received")]
    BadLength { declared: usize, available: usize },
    #[error("configuration option at offset {offset} overruns the packet or has a length below 2")]
    BadOption { offset: usize },
}

/// `Code(1) Identifier(1) Length(2) Data`: LCP, NCP, CHAP and EAP packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlPacket<'a> {
    pub code: u8,
    pub id: u8,
    pub data: &'a [u8],
}

impl<'a> ControlPacket<'a> {
    pub const HEADER_LEN: usize = 4;

    /// Bytes beyond Length are padding and ignored (RFC 1661 §5).
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ControlError> {
        if bytes.len() < Self::HEADER_LEN {
            return Err(ControlError::TooShort);
        }
        let declared = usize::from(u16::from_be_bytes([bytes[2], bytes[3]]));
        if declared < Self::HEADER_LEN || declared > bytes.len() {
            return Err(ControlError::BadLength { declared, available: bytes.len() });
        }
        Ok(ControlPacket { code: bytes[0], id: bytes[1], data: &bytes[Self::HEADER_LEN..declared] })
    }

    /// The packet's bytes. Data is limited by the callers to well below 64 KiB (frames
    /// fit one SSTP packet).
    pub fn encode(code: u8, id: u8, data: &[u8]) -> Vec<u8> {
        let length = u16::try_from(Self::HEADER_LEN + data.len()).expect("control packets are built far below 64 KiB");
        let mut out = Vec::with_capacity(usize::from(length));
        out.extend_from_slice(&[code, id]);
        out.extend_from_slice(&length.to_be_bytes());
        out.extend_from_slice(data);
        out
    }
}

/// A control packet in a frame of `protocol`.
pub fn control_frame(protocol: u16, code: u8, id: u8, data: &[u8]) -> Vec<u8> {
    frame(protocol, &ControlPacket::encode(code, id, data))
}

/// One configuration option: `Type(1) Length(1) Value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigOption<'a> {
    pub kind: u8,
    pub value: &'a [u8],
}

impl ConfigOption<'_> {
    /// The value as a big-endian u16, if it is two bytes long.
    pub fn as_u16(&self) -> Option<u16> {
        Some(u16::from_be_bytes(self.value.try_into().ok()?))
    }

    /// The value as a big-endian u32, if it is four bytes long.
    pub fn as_u32(&self) -> Option<u32> {
        Some(u32::from_be_bytes(self.value.try_into().ok()?))
    }

    pub fn push_to(&self, out: &mut Vec<u8>) {
        push_option(out, self.kind, self.value);
    }
}

/// Splits the data of a Configure-Request/Ack/Nak/Reject into options.
pub fn parse_options(data: &[u8]) -> Result<Vec<ConfigOption<'_>>, ControlError> {
    let mut options = Vec::new();
    let mut offset = 0;
    while offset < data.len() {
        let rest = &data[offset..];
        let length = rest.get(1).map_or(0, |&l| usize::from(l));
        if length < 2 || length > rest.len() {
            return Err(ControlError::BadOption { offset });
        }
        options.push(ConfigOption { kind: rest[0], value: &rest[2..length] });
        offset += length;
    }
    Ok(options)
}

/// Appends `Type Length Value`. Option values are a few bytes (the longest the gateway
/// builds is an Endpoint-Discriminator in the test client).
pub fn push_option(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
    let length = u8::try_from(2 + value.len()).expect("option values are a few bytes");
    out.extend_from_slice(&[kind, length]);
    out.extend_from_slice(value);
}

/// How one side judges one option of the peer's Configure-Request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptionVerdict {
    Ack,
    /// Acceptable with this value instead.
    Nak(Vec<u8>),
    Reject,
}

/// The answer to a Configure-Request (RFC 1661 §5.2–5.4): Configure-Reject with every
/// rejected option if there is one, otherwise Configure-Nak with every naked option and
/// its suggested value, otherwise Configure-Ack echoing the request. Returns the code
/// and data of the reply.
pub fn answer_configure_request(
    request_data: &[u8],
    options: &[ConfigOption<'_>],
    mut judge: impl FnMut(&ConfigOption<'_>) -> OptionVerdict,
) -> (u8, Vec<u8>) {
    let mut rejected = Vec::new();
    let mut naked = Vec::new();
    for option in options {
        match judge(option) {
            OptionVerdict::Ack => {}
            OptionVerdict::Nak(value) => push_option(&mut naked, option.kind, &value),
            OptionVerdict::Reject => option.push_to(&mut rejected),
        }
    }
    if !rejected.is_empty() {
        (code::CONFIGURE_REJECT, rejected)
    } else if !naked.is_empty() {
        (code::CONFIGURE_NAK, naked)
    } else {
        (code::CONFIGURE_ACK, request_data.to_vec())
    }
}

/// Our side of one option negotiation (LCP or IPCP): the Configure-Request in flight
/// and who has acknowledged whom.
#[derive(Debug, Clone, Default)]
pub(crate) struct Negotiation {
    pub request_id: u8,
    pub request: Vec<u8>,
    pub peer_acked_ours: bool,
    pub we_acked_theirs: bool,
}

impl Negotiation {
    pub fn is_open(&self) -> bool {
        self.peer_acked_ours && self.we_acked_theirs
    }

    /// A new Configure-Request of ours, with the next identifier; returns the frame.
    pub fn send_request(&mut self, protocol: u16, options: Vec<u8>) -> Vec<u8> {
        self.request_id = self.request_id.wrapping_add(1);
        self.request = options;
        self.peer_acked_ours = false;
        control_frame(protocol, code::CONFIGURE_REQUEST, self.request_id, &self.request)
    }

    /// Whether a Configure-Ack matches the request in flight (RFC 1661 §5.2: same
    /// identifier, same options).
    pub fn ack_matches(&self, packet: &ControlPacket<'_>) -> bool {
        packet.id == self.request_id && packet.data == self.request.as_slice()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_parse_with_and_without_compression() {
        let full = [0xff, 0x03, 0xc0, 0x21, 1, 2, 3];
        assert_eq!(Frame::parse(&full), Ok(Frame { protocol: protocol::LCP, information: &[1, 2, 3] }));
        let no_address = [0xc0, 0x21, 9];
        assert_eq!(Frame::parse(&no_address), Ok(Frame { protocol: protocol::LCP, information: &[9] }));
        let one_byte_protocol = [0x21, 0x45, 0x00];
        assert_eq!(Frame::parse(&one_byte_protocol), Ok(Frame { protocol: protocol::IPV4, information: &[0x45, 0] }));
        assert_eq!(Frame::parse(&[0xff, 0x03]), Err(FrameError::Empty));
        assert_eq!(Frame::parse(&[0xff, 0x03, 0xc0]), Err(FrameError::Truncated));
        assert_eq!(Frame::parse(&[0xc0, 0x20]), Err(FrameError::InvalidProtocol(0xc020)));
        assert_eq!(frame(protocol::IPCP, &[1]), [0xff, 0x03, 0x80, 0x21, 1]);
    }

    #[test]
    fn control_packets_honour_length_and_ignore_padding() {
        let packet = ControlPacket::parse(&[9, 7, 0, 8, 1, 2, 3, 4, 0xee, 0xee]).unwrap();
        assert_eq!(packet, ControlPacket { code: 9, id: 7, data: &[1, 2, 3, 4] });
        assert_eq!(ControlPacket::parse(&[1, 1, 0]), Err(ControlError::TooShort));
        assert_eq!(ControlPacket::parse(&[1, 1, 0, 9, 0]), Err(ControlError::BadLength { declared: 9, available: 5 }));
        assert_eq!(ControlPacket::parse(&[1, 1, 0, 3]), Err(ControlError::BadLength { declared: 3, available: 4 }));
        assert_eq!(ControlPacket::encode(5, 2, b"bye"), [5, 2, 0, 7, b'b', b'y', b'e']);
    }

    #[test]
    fn options_split_and_reject_bad_lengths() {
        // MRU 1500, Magic-Number, PFC (RFC 1661 §6.1, 6.4, 6.5).
        let data = [1, 4, 0x05, 0xdc, 5, 6, 1, 2, 3, 4, 7, 2];
        let options = parse_options(&data).unwrap();
        assert_eq!(options.len(), 3);
        assert_eq!(options[0].as_u16(), Some(1500));
        assert_eq!(options[1].as_u32(), Some(0x0102_0304));
        assert_eq!(options[2], ConfigOption { kind: 7, value: &[] });
        assert_eq!(parse_options(&[1, 1]), Err(ControlError::BadOption { offset: 0 }));
        assert_eq!(parse_options(&[7, 2, 1, 5, 0]), Err(ControlError::BadOption { offset: 2 }));
    }

    #[test]
    fn configure_answers_prefer_reject_then_nak() {
        let data = [1, 4, 0x05, 0xdc, 13, 3, 6, 5, 6, 0, 0, 0, 0];
        let options = parse_options(&data).unwrap();
        let judge = |o: &ConfigOption<'_>| match o.kind {
            13 => OptionVerdict::Reject,
            5 => OptionVerdict::Nak(vec![9, 9, 9, 9]),
            _ => OptionVerdict::Ack,
        };
        assert_eq!(answer_configure_request(&data, &options, judge), (code::CONFIGURE_REJECT, vec![13, 3, 6]));
        let without_callback = [1, 4, 0x05, 0xdc, 5, 6, 0, 0, 0, 0];
        let options = parse_options(&without_callback).unwrap();
        assert_eq!(
            answer_configure_request(&without_callback, &options, judge),
            (code::CONFIGURE_NAK, vec![5, 6, 9, 9, 9, 9])
        );
        let options = parse_options(&without_callback[..4]).unwrap();
        assert_eq!(
            answer_configure_request(&without_callback[..4], &options, judge),
            (code::CONFIGURE_ACK, without_callback[..4].to_vec())
        );
    }
}
