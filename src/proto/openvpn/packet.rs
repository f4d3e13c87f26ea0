//! OpenVPN packet framing: the opcode/key-id byte and the control-packet layout
//! (PROTOCOLS.md §1.2–1.3). Data packets are in [`super::data`].
//!
//! A control packet on the wire is `byte0 | session_id(8) | body` without wrapping, and
//! `byte0 | session_id(8) | replay_id(4) | time(4) | tag(32) | encrypted body` with
//! tls-crypt. The body is the same in both cases:
//! `ack_count | acks[ack_count] | [remote_session_id if ack_count > 0] | [message_id] | payload`.

use std::fmt;

pub type SessionId = [u8; 8];

/// At most this many packet-ids are acknowledged in one packet (RELIABLE_ACK_SIZE).
pub const MAX_ACKS: usize = 8;

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Opcode {
    SoftResetV1 = 3,
    ControlV1 = 4,
    AckV1 = 5,
    DataV1 = 6,
    HardResetClientV2 = 7,
    HardResetServerV2 = 8,
    DataV2 = 9,
    HardResetClientV3 = 10,
    ControlWkcV1 = 11,
}

impl Opcode {
    pub fn from_u8(v: u8) -> Option<Opcode> {
        Some(match v {
            3 => Opcode::SoftResetV1,
            4 => Opcode::ControlV1,
            5 => Opcode::AckV1,
            6 => Opcode::DataV1,
            7 => Opcode::HardResetClientV2,
            8 => Opcode::HardResetServerV2,
            9 => Opcode::DataV2,
            10 => Opcode::HardResetClientV3,
            11 => Opcode::ControlWkcV1,
            _ => return None,
        })
    }

    pub fn is_data(self) -> bool {
        matches!(self, Opcode::DataV1 | Opcode::DataV2)
    }

    /// Packets that carry a reliable message id (everything on the control channel
    /// except bare ACKs).
    pub fn is_reliable(self) -> bool {
        !matches!(self, Opcode::AckV1 | Opcode::DataV1 | Opcode::DataV2)
    }

    /// The first byte of a packet with this opcode and key id.
    pub fn byte0(self, key_id: u8) -> u8 {
        ((self as u8) << 3) | (key_id & 7)
    }
}

/// Splits the first byte into the raw opcode and the key id.
pub fn split_byte0(b: u8) -> (u8, u8) {
    (b >> 3, b & 7)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("packet too short")]
    Truncated,
    #[error("unknown opcode {0}")]
    UnknownOpcode(u8),
    #[error("unsupported opcode {0:?}")]
    Unsupported(Opcode),
    #[error("ACK count {0} exceeds {MAX_ACKS}")]
    TooManyAcks(u8),
}

/// Up to [`MAX_ACKS`] acknowledged packet-ids, stored inline.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct AckList {
    ids: [u32; MAX_ACKS],
    len: u8,
}

impl AckList {
    pub fn push(&mut self, id: u32) -> bool {
        if (self.len as usize) < MAX_ACKS {
            self.ids[self.len as usize] = id;
            self.len += 1;
            true
        } else {
            false
        }
    }

    pub fn as_slice(&self) -> &[u32] {
        &self.ids[..self.len as usize]
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn contains(&self, id: u32) -> bool {
        self.as_slice().contains(&id)
    }
}

impl fmt::Debug for AckList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

/// The part of a control packet after `byte0 | session_id` (and after the tls-crypt
/// envelope, once removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlBody<'a> {
    pub acks: AckList,
    /// The peer's session id, present whenever acks are.
    pub remote_session_id: Option<SessionId>,
    /// Reliable message id; absent in P_ACK_V1.
    pub message_id: Option<u32>,
    pub payload: &'a [u8],
}

impl<'a> ControlBody<'a> {
    /// Parses a body for a packet of `opcode`.
    pub fn parse(opcode: Opcode, mut b: &'a [u8]) -> Result<Self, PacketError> {
        let count = take_u8(&mut b)?;
        if count as usize > MAX_ACKS {
            return Err(PacketError::TooManyAcks(count));
        }
        let mut acks = AckList::default();
        for _ in 0..count {
            acks.push(take_u32(&mut b)?);
        }
        let remote_session_id = if count > 0 { Some(take_sid(&mut b)?) } else { None };
        let message_id = if opcode.is_reliable() { Some(take_u32(&mut b)?) } else { None };
        Ok(ControlBody { acks, remote_session_id, message_id, payload: b })
    }

    /// Appends the encoded body to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.acks.len);
        for id in self.acks.as_slice() {
            out.extend_from_slice(&id.to_be_bytes());
        }
        if !self.acks.is_empty() {
            out.extend_from_slice(&self.remote_session_id.unwrap_or_default());
        }
        if let Some(id) = self.message_id {
            out.extend_from_slice(&id.to_be_bytes());
        }
        out.extend_from_slice(self.payload);
    }

    /// Encoded length of a body with `acks` acknowledgements, a message id or not,
    /// and `payload` bytes.
    pub fn encoded_len(acks: usize, has_message_id: bool, payload: usize) -> usize {
        1 + acks * 4 + if acks > 0 { 8 } else { 0 } + if has_message_id { 4 } else { 0 } + payload
    }
}

/// The cleartext prefix every non-data packet starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlHeader {
    pub opcode: Opcode,
    pub key_id: u8,
    pub session_id: SessionId,
}

impl ControlHeader {
    pub const LEN: usize = 9;

    /// Reads the opcode, key id and sender's session id. Refuses data opcodes and the
    /// key-method-1 resets OpenVPN 2.5+ no longer speaks.
    pub fn parse(packet: &[u8]) -> Result<Self, PacketError> {
        let (&b0, rest) = packet.split_first().ok_or(PacketError::Truncated)?;
        let (raw, key_id) = split_byte0(b0);
        let opcode = Opcode::from_u8(raw).ok_or(PacketError::UnknownOpcode(raw))?;
        if opcode.is_data() {
            return Err(PacketError::Unsupported(opcode));
        }
        let session_id = rest.get(..8).ok_or(PacketError::Truncated)?.try_into().map_err(|_| PacketError::Truncated)?;
        Ok(ControlHeader { opcode, key_id, session_id })
    }

    pub fn to_bytes(&self) -> [u8; 9] {
        let mut h = [0u8; 9];
        h[0] = self.opcode.byte0(self.key_id);
        h[1..].copy_from_slice(&self.session_id);
        h
    }
}

fn take_u8(b: &mut &[u8]) -> Result<u8, PacketError> {
    let (&v, rest) = b.split_first().ok_or(PacketError::Truncated)?;
    *b = rest;
    Ok(v)
}

fn take_u32(b: &mut &[u8]) -> Result<u32, PacketError> {
    if b.len() < 4 {
        return Err(PacketError::Truncated);
    }
    let v = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    *b = &b[4..];
    Ok(v)
}

fn take_sid(b: &mut &[u8]) -> Result<SessionId, PacketError> {
    if b.len() < 8 {
        return Err(PacketError::Truncated);
    }
    let mut s = [0u8; 8];
    s.copy_from_slice(&b[..8]);
    *b = &b[8..];
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real packets from OpenVPN 2.6 tests/unit_tests/openvpn/test_pkt.c (no wrapping).
    const CLIENT_RESET_V2_NONE: [u8; 14] =
        [0x38, 0x68, 0x91, 0x92, 0x3f, 0xa3, 0x10, 0x34, 0x37, 0x00, 0x00, 0x00, 0x00, 0x00];
    const CLIENT_CONTROL_WITH_ACK: [u8; 29] = [
        0x20, 0x78, 0x19, 0xbf, 0x2e, 0xbc, 0xd1, 0x9a, 0x45, 0x01, 0x00, 0x00, 0x00, 0x00, 0xea, 0xfe, 0xbf, 0xa4,
        0x41, 0x8a, 0xe3, 0x1b, 0x00, 0x00, 0x00, 0x01, 0x16, 0x03, 0x01,
    ];
    const CLIENT_ACK_NONE_RANDOM_ID: [u8; 22] = [
        0x28, 0xae, 0xb9, 0xaf, 0xe1, 0xf0, 0x1d, 0x79, 0xc8, 0x01, 0x00, 0x00, 0x00, 0x00, 0xdd, 0x85, 0xdb, 0x53,
        0x56, 0x23, 0xb0, 0x2e,
    ];

    fn round_trip(packet: &[u8]) -> (ControlHeader, ControlBody<'_>) {
        let h = ControlHeader::parse(packet).unwrap();
        let body = ControlBody::parse(h.opcode, &packet[9..]).unwrap();
        let mut out = h.to_bytes().to_vec();
        body.encode(&mut out);
        assert_eq!(out, packet, "re-encoding gives the same bytes");
        (h, body)
    }

    #[test]
    fn client_reset() {
        let (h, b) = round_trip(&CLIENT_RESET_V2_NONE);
        assert_eq!(h.opcode, Opcode::HardResetClientV2);
        assert_eq!(h.key_id, 0);
        assert_eq!(h.session_id, [0x68, 0x91, 0x92, 0x3f, 0xa3, 0x10, 0x34, 0x37]);
        assert!(b.acks.is_empty());
        assert_eq!(b.message_id, Some(0));
        assert!(b.payload.is_empty());
    }

    #[test]
    fn control_with_piggybacked_ack() {
        let (h, b) = round_trip(&CLIENT_CONTROL_WITH_ACK);
        assert_eq!(h.opcode, Opcode::ControlV1);
        assert_eq!(b.acks.as_slice(), &[0]);
        assert_eq!(b.remote_session_id, Some([0xea, 0xfe, 0xbf, 0xa4, 0x41, 0x8a, 0xe3, 0x1b]));
        assert_eq!(b.message_id, Some(1));
        assert_eq!(b.payload, &[0x16, 0x03, 0x01]);
    }

    #[test]
    fn bare_ack() {
        let (h, b) = round_trip(&CLIENT_ACK_NONE_RANDOM_ID);
        assert_eq!(h.opcode, Opcode::AckV1);
        assert_eq!(b.message_id, None);
        assert_eq!(b.remote_session_id, Some([0xdd, 0x85, 0xdb, 0x53, 0x56, 0x23, 0xb0, 0x2e]));
    }

    #[test]
    fn malformed_packets_are_errors() {
        assert_eq!(ControlHeader::parse(&[]), Err(PacketError::Truncated));
        assert_eq!(ControlHeader::parse(&[0x38, 1, 2]), Err(PacketError::Truncated));
        assert_eq!(ControlHeader::parse(&[0x08; 9]), Err(PacketError::UnknownOpcode(1)));
        assert_eq!(ControlHeader::parse(&[0x48; 20]), Err(PacketError::Unsupported(Opcode::DataV2)));
        assert_eq!(ControlBody::parse(Opcode::ControlV1, &[9]), Err(PacketError::TooManyAcks(9)));
        assert_eq!(ControlBody::parse(Opcode::ControlV1, &[1, 0, 0, 0, 0, 1]), Err(PacketError::Truncated));
        assert_eq!(ControlBody::parse(Opcode::ControlV1, &[0, 0, 0]), Err(PacketError::Truncated));
        for len in 0..CLIENT_CONTROL_WITH_ACK.len() {
            let p = &CLIENT_CONTROL_WITH_ACK[..len];
            if let Ok(h) = ControlHeader::parse(p) {
                let _ = ControlBody::parse(h.opcode, &p[9..]);
            }
        }
    }

    #[test]
    fn encoded_len_matches() {
        let mut acks = AckList::default();
        acks.push(4);
        acks.push(5);
        let body = ControlBody { acks, remote_session_id: Some([1; 8]), message_id: Some(9), payload: b"hello" };
        let mut out = Vec::new();
        body.encode(&mut out);
        assert_eq!(out.len(), ControlBody::encoded_len(2, true, 5));
    }
}
