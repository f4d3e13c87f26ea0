//! UDP encapsulation of ESP and IKE on port 4500 (RFC 3948, PROTOCOLS.md §4.3).
//!
//! | UDP payload | meaning |
//! |---|---|
//! | exactly one byte `0xFF` | NAT keepalive (drop silently) |
//! | `00 00 00 00` (the non-ESP marker), then an IKE message | IKE |
//! | anything else: the first 4 bytes are the (non-zero) SPI | ESP |
//!
//! IKE on port 500 never carries the marker; ESP-in-UDP has no marker at all (the ESP
//! header follows the UDP header directly).

/// Prefixes every IKE message on port 4500 (RFC 3948 §2.2): where ESP has its SPI,
/// which is never 0.
pub const NON_ESP_MARKER: [u8; 4] = [0; 4];

/// The whole payload of a NAT-keepalive packet (RFC 3948 §2.3).
const NAT_KEEPALIVE: [u8; 1] = [0xFF];

/// What a datagram received on port 4500 carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port4500<'a> {
    /// Sent by a client behind NAT to keep its mapping open (strongSwan: every 20 s).
    NatKeepalive,
    /// An IKE message, without the non-ESP marker.
    Ike(&'a [u8]),
    /// An ESP packet: the whole datagram, for the inbound SA with this SPI.
    Esp { spi: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClassifyError {
    #[error("{len}-byte datagram on port 4500 is neither a NAT keepalive nor long enough for an SPI or marker")]
    TooShort { len: usize },
    #[error("ESP packet on port 4500 with reserved SPI {0} (SPIs 1-255 are never assigned)")]
    ReservedSpi(u32),
}

/// Sorts a UDP payload received on port 4500.
pub fn classify_port_4500(datagram: &[u8]) -> Result<Port4500<'_>, ClassifyError> {
    if datagram == NAT_KEEPALIVE {
        return Ok(Port4500::NatKeepalive);
    }
    let Some((first, rest)) = datagram.split_first_chunk::<4>() else {
        return Err(ClassifyError::TooShort { len: datagram.len() });
    };
    match u32::from_be_bytes(*first) {
        0 => Ok(Port4500::Ike(rest)),
        spi @ 1..=255 => Err(ClassifyError::ReservedSpi(spi)),
        spi => Ok(Port4500::Esp { spi }),
    }
}

/// The UDP payload that carries `ike_message` on port 4500: the non-ESP marker, then
/// the message.
pub fn with_non_esp_marker(ike_message: &[u8]) -> Vec<u8> {
    let mut datagram = Vec::with_capacity(NON_ESP_MARKER.len() + ike_message.len());
    datagram.extend_from_slice(&NON_ESP_MARKER);
    datagram.extend_from_slice(ike_message);
    datagram
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The start of an IKE_SA_INIT request header: SPIi, SPIr = 0, next payload SA (33),
    /// version 2.0, exchange 34, flags Initiator, message id 0, length 28.
    const IKE_HEADER: [u8; 28] = [
        0x8f, 0x1e, 0x2d, 0x3c, 0x4b, 0x5a, 0x69, 0x78, 0, 0, 0, 0, 0, 0, 0, 0, 33, 0x20, 34, 0x08, 0, 0, 0, 0, 0, 0,
        0, 28,
    ];

    #[test]
    fn nat_keepalive_is_exactly_one_ff_byte() {
        assert_eq!(classify_port_4500(&[0xFF]), Ok(Port4500::NatKeepalive));
        // Any other short datagram is garbage, including a keepalive with extra bytes.
        assert_eq!(classify_port_4500(&[]), Err(ClassifyError::TooShort { len: 0 }));
        assert_eq!(classify_port_4500(&[0x00]), Err(ClassifyError::TooShort { len: 1 }));
        assert_eq!(classify_port_4500(&[0xFF, 0xFF]), Err(ClassifyError::TooShort { len: 2 }));
        assert_eq!(classify_port_4500(&[0, 0, 0]), Err(ClassifyError::TooShort { len: 3 }));
    }

    #[test]
    fn ike_behind_the_marker_round_trips() {
        let datagram = with_non_esp_marker(&IKE_HEADER);
        assert_eq!(datagram.len(), 32);
        assert_eq!(datagram[..4], [0, 0, 0, 0]);
        assert_eq!(classify_port_4500(&datagram), Ok(Port4500::Ike(&IKE_HEADER[..])));
        // A bare marker is IKE with an empty message (the IKE parser refuses it).
        assert_eq!(classify_port_4500(&NON_ESP_MARKER), Ok(Port4500::Ike(&[][..])));
    }

    #[test]
    fn esp_is_recognised_by_its_spi() {
        // The RFC 7634 Appendix A packet starts with SPI 01020304, sequence number 5.
        let esp = [0x01, 0x02, 0x03, 0x04, 0, 0, 0, 5, 0x10, 0x11];
        assert_eq!(classify_port_4500(&esp), Ok(Port4500::Esp { spi: 0x0102_0304 }));
        assert_eq!(classify_port_4500(&[0xFF, 0xFF, 0xFF, 0xFF]), Ok(Port4500::Esp { spi: u32::MAX }));
        assert_eq!(classify_port_4500(&[0, 0, 1, 0]), Ok(Port4500::Esp { spi: 256 }));
        // An IKE header sent without the marker is read as ESP (its SPIi is non-zero):
        // it then fails the SPI lookup, as on any RFC 3948 implementation.
        assert!(matches!(classify_port_4500(&IKE_HEADER), Ok(Port4500::Esp { spi: 0x8f1e_2d3c })));
    }

    #[test]
    fn reserved_spis_are_refused() {
        for spi in [1u32, 2, 255] {
            let datagram = [&spi.to_be_bytes()[..], &[0u8; 40]].concat();
            assert_eq!(classify_port_4500(&datagram), Err(ClassifyError::ReservedSpi(spi)));
        }
    }
}
