//! EAP methods the gateway terminates itself (RFC 3748), sans-IO: EAP packets in, EAP
//! packets out. [`tls`] is EAP-TLS (RFC 5216, and RFC 9190 for TLS 1.3), the
//! authenticator and a peer for tests and the test client.

pub mod tls;

/// EAP codes (RFC 3748 §4).
pub mod code {
    pub const REQUEST: u8 = 1;
    pub const RESPONSE: u8 = 2;
    pub const SUCCESS: u8 = 3;
    pub const FAILURE: u8 = 4;
}

/// EAP method types (RFC 3748 §5, IANA).
pub mod method {
    pub const IDENTITY: u8 = 1;
    /// Legacy Nak: the peer wants another method (RFC 3748 §5.3.1).
    pub const NAK: u8 = 3;
    pub const TLS: u8 = 13;
}

/// `Code(1) Identifier(1) Length(2) Data`.
pub const HEADER_LEN: usize = 4;

/// An EAP packet with `data` (type and type data, or nothing for Success/Failure).
pub fn encode(code: u8, id: u8, data: &[u8]) -> Vec<u8> {
    let length = u16::try_from(HEADER_LEN + data.len()).expect("EAP packets are built far below 64 KiB");
    let mut out = Vec::with_capacity(usize::from(length));
    out.extend_from_slice(&[code, id]);
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(data);
    out
}
