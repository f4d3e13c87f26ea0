//! SSTP packets (MS-SSTP 2.2, PROTOCOLS.md §2.2): the 4-byte header, data packets
//! carrying one PPP frame, and control messages made of attributes.

/// Version 1.0.
pub const VERSION: u8 = 0x10;
pub const HEADER_LEN: usize = 4;
/// The Length field has 12 bits.
pub const MAX_PACKET_LEN: usize = 0x0fff;
/// The largest PPP frame a data packet carries.
pub const MAX_DATA_LEN: usize = MAX_PACKET_LEN - HEADER_LEN;
/// The control bit in the second header byte.
const CONTROL_BIT: u8 = 0x01;
const ATTRIBUTE_HEADER_LEN: usize = 4;
/// Message type and attribute count after the packet header.
const CONTROL_HEADER_LEN: usize = 4;

/// Control message types (MS-SSTP 2.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum MessageType {
    CallConnectRequest = 1,
    CallConnectAck = 2,
    CallConnectNak = 3,
    CallConnected = 4,
    CallAbort = 5,
    CallDisconnect = 6,
    CallDisconnectAck = 7,
    EchoRequest = 8,
    EchoResponse = 9,
}

impl MessageType {
    pub fn from_u16(value: u16) -> Option<Self> {
        use MessageType::*;
        Some(match value {
            1 => CallConnectRequest,
            2 => CallConnectAck,
            3 => CallConnectNak,
            4 => CallConnected,
            5 => CallAbort,
            6 => CallDisconnect,
            7 => CallDisconnectAck,
            8 => EchoRequest,
            9 => EchoResponse,
            _ => return None,
        })
    }
}

/// Attribute IDs (MS-SSTP 2.2.4).
pub mod attribute {
    pub const NO_ERROR: u8 = 0;
    pub const ENCAPSULATED_PROTOCOL_ID: u8 = 1;
    pub const STATUS_INFO: u8 = 2;
    pub const CRYPTO_BINDING: u8 = 3;
    pub const CRYPTO_BINDING_REQ: u8 = 4;
}

/// STATUS_INFO status values (MS-SSTP 2.2.8).
pub mod status {
    pub const NO_ERROR: u32 = 0;
    pub const DUPLICATE_ATTRIBUTE: u32 = 1;
    pub const UNRECOGNIZED_ATTRIBUTE: u32 = 2;
    pub const INVALID_ATTRIB_VALUE_LENGTH: u32 = 3;
    pub const VALUE_NOT_SUPPORTED: u32 = 4;
    pub const UNACCEPTED_FRAME_RECEIVED: u32 = 5;
    pub const RETRY_COUNT_EXCEEDED: u32 = 6;
    pub const INVALID_FRAME_RECEIVED: u32 = 7;
    pub const NEGOTIATION_TIMEOUT: u32 = 8;
    pub const ATTRIB_NOT_SUPPORTED_IN_MSG: u32 = 9;
    pub const REQUIRED_ATTRIBUTE_MISSING: u32 = 10;
    pub const STATUS_INFO_NOT_SUPPORTED_IN_MSG: u32 = 11;
}

/// ENCAPSULATED_PROTOCOL_ID value for PPP.
pub const ENCAPSULATED_PROTOCOL_PPP: u16 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("SSTP version {0:#04x}; only 1.0 (0x10) is spoken")]
    BadVersion(u8),
    #[error("SSTP packet Length {0} is shorter than its header")]
    BadLength(usize),
    #[error("control packet shorter than its message header")]
    ShortControl,
    #[error("control message type {0} is unknown")]
    UnknownMessageType(u16),
    #[error("attribute {index} overruns the message or has a Length below 4")]
    BadAttribute { index: usize },
    #[error("the message declares {declared} attributes and carries {found}")]
    AttributeCount { declared: usize, found: usize },
}

/// The length of the packet starting `stream`, once its header has arrived: `Ok(None)`
/// asks for more bytes. A wrong version or length means the stream cannot be followed.
pub fn packet_len(stream: &[u8]) -> Result<Option<usize>, PacketError> {
    let Some(header) = stream.get(..HEADER_LEN) else { return Ok(None) };
    if header[0] != VERSION {
        return Err(PacketError::BadVersion(header[0]));
    }
    let length = usize::from(u16::from_be_bytes([header[2], header[3]]) & 0x0fff);
    if length < HEADER_LEN {
        return Err(PacketError::BadLength(length));
    }
    Ok(Some(length))
}

/// One whole packet (as [`packet_len`] cut it from the stream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    /// A PPP frame.
    Data(&'a [u8]),
    Control(ControlMessage<'a>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlMessage<'a> {
    pub message_type: MessageType,
    pub attributes: Vec<Attribute<'a>>,
}

impl ControlMessage<'_> {
    pub fn attribute(&self, id: u8) -> Option<&[u8]> {
        self.attributes.iter().find(|a| a.id == id).map(|a| a.value)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attribute<'a> {
    pub id: u8,
    pub value: &'a [u8],
}

impl<'a> Packet<'a> {
    pub fn parse(packet: &'a [u8]) -> Result<Self, PacketError> {
        let length = packet_len(packet)?.ok_or(PacketError::BadLength(packet.len()))?;
        if length != packet.len() {
            return Err(PacketError::BadLength(packet.len()));
        }
        let body = &packet[HEADER_LEN..];
        if packet[1] & CONTROL_BIT == 0 {
            return Ok(Packet::Data(body));
        }
        if body.len() < CONTROL_HEADER_LEN {
            return Err(PacketError::ShortControl);
        }
        let raw_type = u16::from_be_bytes([body[0], body[1]]);
        let message_type = MessageType::from_u16(raw_type).ok_or(PacketError::UnknownMessageType(raw_type))?;
        let declared = usize::from(u16::from_be_bytes([body[2], body[3]]));
        let mut attributes = Vec::new();
        let mut rest = &body[CONTROL_HEADER_LEN..];
        while !rest.is_empty() {
            let index = attributes.len();
            if rest.len() < ATTRIBUTE_HEADER_LEN {
                return Err(PacketError::BadAttribute { index });
            }
            let attribute_len = usize::from(u16::from_be_bytes([rest[2], rest[3]]) & 0x0fff);
            if attribute_len < ATTRIBUTE_HEADER_LEN || attribute_len > rest.len() {
                return Err(PacketError::BadAttribute { index });
            }
            attributes.push(Attribute { id: rest[1], value: &rest[ATTRIBUTE_HEADER_LEN..attribute_len] });
            rest = &rest[attribute_len..];
        }
        if attributes.len() != declared {
            return Err(PacketError::AttributeCount { declared, found: attributes.len() });
        }
        Ok(Packet::Control(ControlMessage { message_type, attributes }))
    }
}

fn header(control: bool, length: usize) -> [u8; HEADER_LEN] {
    let length = u16::try_from(length).ok().filter(|l| usize::from(*l) <= MAX_PACKET_LEN);
    let [high, low] = length.expect("callers keep packets within 4095 bytes").to_be_bytes();
    [VERSION, u8::from(control), high, low]
}

/// Appends a data packet carrying `frame`; `false` (and nothing written) if the frame
/// is longer than [`MAX_DATA_LEN`].
pub fn push_data(out: &mut Vec<u8>, frame: &[u8]) -> bool {
    if frame.len() > MAX_DATA_LEN {
        return false;
    }
    out.extend_from_slice(&header(false, HEADER_LEN + frame.len()));
    out.extend_from_slice(frame);
    true
}

/// Appends the header of a data packet whose PPP frame (`frame_len` bytes) the caller
/// writes next; `false` if it would not fit.
pub fn push_data_header(out: &mut Vec<u8>, frame_len: usize) -> bool {
    if frame_len > MAX_DATA_LEN {
        return false;
    }
    out.extend_from_slice(&header(false, HEADER_LEN + frame_len));
    true
}

/// A control message with the given attributes (each a few dozen bytes).
pub fn control(message_type: MessageType, attributes: &[(u8, &[u8])]) -> Vec<u8> {
    let length = HEADER_LEN
        + CONTROL_HEADER_LEN
        + attributes.iter().map(|(_, value)| ATTRIBUTE_HEADER_LEN + value.len()).sum::<usize>();
    let mut out = Vec::with_capacity(length);
    out.extend_from_slice(&header(true, length));
    out.extend_from_slice(&(message_type as u16).to_be_bytes());
    let count = u16::try_from(attributes.len()).expect("a handful of attributes");
    out.extend_from_slice(&count.to_be_bytes());
    for (id, value) in attributes {
        let attribute_len = u16::try_from(ATTRIBUTE_HEADER_LEN + value.len()).expect("attributes are short");
        out.extend_from_slice(&[0, *id]);
        out.extend_from_slice(&attribute_len.to_be_bytes());
        out.extend_from_slice(value);
    }
    out
}

/// A STATUS_INFO value (MS-SSTP 2.2.8): which attribute, what is wrong with it, and up
/// to 64 bytes of the offending attribute's value.
pub fn status_info(attribute_id: u8, status: u32, offending_value: &[u8]) -> Vec<u8> {
    let mut value = vec![0, 0, 0, attribute_id];
    value.extend_from_slice(&status.to_be_bytes());
    value.extend_from_slice(&offending_value[..offending_value.len().min(64)]);
    value
}

/// The status code of a STATUS_INFO value, if it is long enough.
pub fn status_of(status_info: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(status_info.get(4..8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ms_sstp_call_connect_request_parses_and_encodes() {
        // MS-SSTP §4.7 (PROTOCOLS.md §2.3).
        let request = [0x10, 0x01, 0x00, 0x0e, 0x00, 0x01, 0x00, 0x01, 0x00, 0x01, 0x00, 0x06, 0x00, 0x01];
        assert_eq!(packet_len(&request), Ok(Some(14)));
        let Ok(Packet::Control(message)) = Packet::parse(&request) else { panic!("a control packet") };
        assert_eq!(message.message_type, MessageType::CallConnectRequest);
        assert_eq!(message.attribute(attribute::ENCAPSULATED_PROTOCOL_ID), Some(&[0, 1][..]));
        let encoded = control(
            MessageType::CallConnectRequest,
            &[(attribute::ENCAPSULATED_PROTOCOL_ID, &ENCAPSULATED_PROTOCOL_PPP.to_be_bytes())],
        );
        assert_eq!(encoded, request);
    }

    #[test]
    fn echo_and_data_packets() {
        let echo = control(MessageType::EchoRequest, &[]);
        assert_eq!(echo, [0x10, 0x01, 0x00, 0x08, 0x00, 0x08, 0x00, 0x00]);
        let mut data = Vec::new();
        assert!(push_data(&mut data, &[0xff, 0x03, 0xc0, 0x21]));
        assert_eq!(data, [0x10, 0x00, 0x00, 0x08, 0xff, 0x03, 0xc0, 0x21]);
        assert_eq!(Packet::parse(&data), Ok(Packet::Data(&[0xff, 0x03, 0xc0, 0x21])));
        assert!(!push_data(&mut data, &[0; MAX_DATA_LEN + 1]));
    }

    #[test]
    fn length_reserved_bits_are_masked() {
        // The 4 high bits of Length are reserved (PROTOCOLS.md §2.13 pitfall 1).
        assert_eq!(packet_len(&[0x10, 0x00, 0xf0, 0x08]), Ok(Some(8)));
        assert_eq!(packet_len(&[0x10, 0x00]), Ok(None));
        assert_eq!(packet_len(&[0x11, 0x00, 0x00, 0x08]), Err(PacketError::BadVersion(0x11)));
        assert_eq!(packet_len(&[0x10, 0x00, 0x00, 0x03]), Err(PacketError::BadLength(3)));
    }

    #[test]
    fn malformed_control_messages_are_typed() {
        assert_eq!(Packet::parse(&[0x10, 0x01, 0x00, 0x06, 0x00, 0x08]), Err(PacketError::ShortControl));
        assert_eq!(
            Packet::parse(&[0x10, 0x01, 0x00, 0x08, 0x00, 0x63, 0x00, 0x00]),
            Err(PacketError::UnknownMessageType(0x63))
        );
        assert_eq!(
            Packet::parse(&[0x10, 0x01, 0x00, 0x08, 0x00, 0x08, 0x00, 0x01]),
            Err(PacketError::AttributeCount { declared: 1, found: 0 })
        );
        let overrun = [0x10, 0x01, 0x00, 0x0e, 0x00, 0x01, 0x00, 0x01, 0x00, 0x01, 0x00, 0x07, 0x00, 0x01];
        assert_eq!(Packet::parse(&overrun), Err(PacketError::BadAttribute { index: 0 }));
    }

    #[test]
    fn status_info_layout() {
        let value = status_info(attribute::ENCAPSULATED_PROTOCOL_ID, status::VALUE_NOT_SUPPORTED, &[0, 2]);
        assert_eq!(value, [0, 0, 0, 1, 0, 0, 0, 4, 0, 2]);
        assert_eq!(status_of(&value), Some(status::VALUE_NOT_SUPPORTED));
        let abort = control(MessageType::CallAbort, &[(attribute::STATUS_INFO, &value)]);
        // STATUS_INFO attribute Length = 4 + 8 + value (MS-SSTP 2.2.8).
        assert_eq!(&abort[8..12], [0, attribute::STATUS_INFO, 0, 14]);
    }
}
