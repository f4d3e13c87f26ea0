//! Crypto binding (MS-SSTP 3.2.5.2, PROTOCOLS.md §2.5): the CALL_CONNECTED message
//! proves that whoever authenticated inside PPP is the one holding this TLS connection,
//! by a MAC keyed from the PPP authentication keys over the server certificate's hash.

use aws_lc_rs::{digest, hmac};

use super::packet::{self, MessageType, attribute};
use crate::proto::ppp::SessionKeys;

/// Higher-Layer Authentication Key: 32 bytes from the PPP authentication keys.
pub type Hlak = [u8; 32];

/// The CMK seed (ASCII, no NUL).
const CMK_SEED: &[u8; 29] = b"SSTP inner method derived CMK";
/// A CALL_CONNECTED with its one CRYPTO_BINDING attribute is always this long.
pub const CALL_CONNECTED_LEN: usize = 112;
/// The CRYPTO_BINDING attribute value: Reserved(3) Hash-Protocol(1) Nonce(32)
/// Cert-Hash(32) Compound-MAC(32).
const BINDING_VALUE_LEN: usize = 100;
/// Where the Compound MAC sits in a CALL_CONNECTED.
const MAC_OFFSET: usize = 80;
const NONCE_OFFSET: usize = 16;
const CERT_HASH_OFFSET: usize = 48;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashProtocol {
    Sha1,
    Sha256,
}

impl HashProtocol {
    /// The bit in the Hash Protocol Bitmask (MS-SSTP 2.2.6).
    pub fn bit(self) -> u8 {
        match self {
            HashProtocol::Sha1 => 0x01,
            HashProtocol::Sha256 => 0x02,
        }
    }

    fn from_bit(bit: u8) -> Option<Self> {
        match bit {
            0x01 => Some(HashProtocol::Sha1),
            0x02 => Some(HashProtocol::Sha256),
            _ => None,
        }
    }

    fn hmac(self) -> hmac::Algorithm {
        match self {
            HashProtocol::Sha1 => hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            HashProtocol::Sha256 => hmac::HMAC_SHA256,
        }
    }

    /// Digest (and MAC) length: 20 or 32 bytes.
    pub fn output_len(self) -> usize {
        match self {
            HashProtocol::Sha1 => 20,
            HashProtocol::Sha256 => 32,
        }
    }
}

/// The hashes of the gateway's TLS leaf certificate (DER), as the client computes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertHashes {
    pub sha1: [u8; 20],
    pub sha256: [u8; 32],
}

impl CertHashes {
    pub fn of_der(certificate_der: &[u8]) -> Self {
        let mut hashes = CertHashes { sha1: [0; 20], sha256: [0; 32] };
        hashes.sha1.copy_from_slice(digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, certificate_der).as_ref());
        hashes.sha256.copy_from_slice(digest::digest(&digest::SHA256, certificate_der).as_ref());
        hashes
    }

    /// The 32-byte Cert Hash field for `hash` (SHA-1 left-aligned, zero-padded).
    pub fn field(&self, hash: HashProtocol) -> [u8; 32] {
        let mut field = [0u8; 32];
        match hash {
            HashProtocol::Sha1 => field[..20].copy_from_slice(&self.sha1),
            HashProtocol::Sha256 => field.copy_from_slice(&self.sha256),
        }
        field
    }
}

/// The server's HLAK (MS-SSTP 3.2.5.2.4): MS-MPPE-Recv-Key || MS-MPPE-Send-Key, which
/// for MS-CHAPv2 is the client's MasterSendKey || MasterReceiveKey and for EAP through
/// RADIUS is the first 32 bytes of the MSK; or the MSK itself; truncated or zero-padded
/// to 32 bytes; all zeros without keys.
pub fn server_hlak(keys: &SessionKeys) -> Hlak {
    let material: Vec<u8> = match keys {
        SessionKeys::Mppe { send, recv } => recv.iter().chain(send).copied().collect(),
        SessionKeys::Msk(msk) => msk.clone(),
        SessionKeys::None => Vec::new(),
    };
    let mut hlak = [0u8; 32];
    let used = material.len().min(32);
    hlak[..used].copy_from_slice(&material[..used]);
    hlak
}

/// `CMK = HMAC-H(HLAK, seed || LEN as u16 little-endian || 0x01)`, the first T1 block of
/// the PRF+ (PROTOCOLS.md §2.5, pitfall 4).
pub fn compound_mac_key(hash: HashProtocol, hlak: &Hlak) -> hmac::Key {
    let mut input = CMK_SEED.to_vec();
    let length = u16::try_from(hash.output_len()).expect("20 or 32");
    input.extend_from_slice(&length.to_le_bytes());
    input.push(0x01);
    let cmk = hmac::sign(&hmac::Key::new(hash.hmac(), hlak), &input);
    hmac::Key::new(hash.hmac(), cmk.as_ref())
}

/// A CALL_CONNECTED as a client builds it: the binding attribute with the MAC computed
/// over the message with the MAC field zeroed.
pub fn call_connected(hash: HashProtocol, nonce: &[u8; 32], cert_hashes: &CertHashes, hlak: &Hlak) -> Vec<u8> {
    let mut value = [0u8; BINDING_VALUE_LEN];
    value[3] = hash.bit();
    value[4..36].copy_from_slice(nonce);
    value[36..68].copy_from_slice(&cert_hashes.field(hash));
    let mut message = packet::control(MessageType::CallConnected, &[(attribute::CRYPTO_BINDING, &value)]);
    let mac = hmac::sign(&compound_mac_key(hash, hlak), &message);
    message[MAC_OFFSET..MAC_OFFSET + hash.output_len()].copy_from_slice(mac.as_ref());
    message
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BindingError {
    #[error("CALL_CONNECTED is {0} bytes, not 112 with one CRYPTO_BINDING attribute")]
    Malformed(usize),
    #[error("hash protocol {0:#04x} was not offered")]
    HashNotOffered(u8),
    #[error("the nonce is not the one the gateway sent")]
    NonceMismatch,
    #[error(
        "the certificate hash is not the gateway's certificate's: a TLS-intercepting proxy between client and gateway?"
    )]
    CertHashMismatch,
    #[error("the Compound MAC does not verify: the PPP authentication keys differ")]
    MacMismatch,
}

/// Checks a CALL_CONNECTED (the whole packet, header included) against what the
/// gateway offered and knows; returns the hash protocol the client chose.
pub fn verify_call_connected(
    message: &[u8],
    offered: u8,
    nonce: &[u8; 32],
    cert_hashes: &CertHashes,
    hlak: &Hlak,
) -> Result<HashProtocol, BindingError> {
    let layout_ok = message.len() == CALL_CONNECTED_LEN
        && message[1] & 1 == 1
        && message[4..12] == [0, MessageType::CallConnected as u8, 0, 1, 0, attribute::CRYPTO_BINDING, 0, 0x68];
    if !layout_ok {
        return Err(BindingError::Malformed(message.len()));
    }
    let bit = message[15];
    let hash =
        HashProtocol::from_bit(bit).filter(|h| offered & h.bit() != 0).ok_or(BindingError::HashNotOffered(bit))?;
    if message[NONCE_OFFSET..NONCE_OFFSET + 32] != nonce[..] {
        return Err(BindingError::NonceMismatch);
    }
    // Only the hash's own bytes count; SHA-1 padding is not checked.
    let cert_hash = &message[CERT_HASH_OFFSET..CERT_HASH_OFFSET + hash.output_len()];
    if cert_hash != &cert_hashes.field(hash)[..hash.output_len()] {
        return Err(BindingError::CertHashMismatch);
    }
    let mut zeroed = message.to_vec();
    zeroed[MAC_OFFSET..].fill(0);
    let mac = &message[MAC_OFFSET..MAC_OFFSET + hash.output_len()];
    hmac::verify(&compound_mac_key(hash, hlak), &zeroed, mac).map_err(|_| BindingError::MacMismatch)?;
    Ok(hash)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::hex;

    // MS-SSTP §4.7 "Crypto Binding" example: the CALL_CONNECT_ACK nonce, the
    // CALL_CONNECTED message, and the MPPE keys of that exchange (MasterSendKey
    // 2A1BB40D..., MasterReceiveKey 8FD3FAC4..., client view; the same values are in
    // sstp-client's cmac unit test).
    const ACK_NONCE: &str = "412B489AEBD7ECC7D08966F26BE7CD72B231A0E9210D7C91B308862B0344C435";
    const CALL_CONNECTED: &str = "10010070000400010003006800000002
        412B489AEBD7ECC7D08966F26BE7CD72B231A0E9210D7C91B308862B0344C435
        7993EF314C493DACE9F02D60E7E61C84B6690AAFE9D7AEEA92CBBE8AD599422D
        52A68EFD8CFFBF52770B8F0FE8EC73716583AF6D611EB6D179B3B20840985449";
    const CLIENT_SEND_KEY: &str = "2A1BB40D55AB0F5EF32F06F2B3CC73C4";
    const CLIENT_RECEIVE_KEY: &str = "8FD3FAC41D7A1315A19228D9024CA164";

    fn example_keys() -> SessionKeys {
        // The server's send key is the client's receive key.
        SessionKeys::Mppe { send: hex(CLIENT_RECEIVE_KEY), recv: hex(CLIENT_SEND_KEY) }
    }

    fn example_cert_hashes() -> CertHashes {
        let message = hex(CALL_CONNECTED);
        CertHashes { sha1: [0; 20], sha256: message[48..80].try_into().unwrap() }
    }

    #[test]
    fn ms_sstp_example_verifies_with_sha256() {
        let message = hex(CALL_CONNECTED);
        let nonce: [u8; 32] = hex(ACK_NONCE).try_into().unwrap();
        let hlak = server_hlak(&example_keys());
        assert_eq!(&hlak[..16], &hex(CLIENT_SEND_KEY)[..], "server HLAK = Recv || Send (pitfall 7)");
        let verified = verify_call_connected(&message, 0x02, &nonce, &example_cert_hashes(), &hlak);
        assert_eq!(verified, Ok(HashProtocol::Sha256));
        // A client building the same message produces the published bytes.
        assert_eq!(call_connected(HashProtocol::Sha256, &nonce, &example_cert_hashes(), &hlak), message);
    }

    #[test]
    fn ms_sstp_example_fails_every_wrong_input() {
        let message = hex(CALL_CONNECTED);
        let nonce: [u8; 32] = hex(ACK_NONCE).try_into().unwrap();
        let hashes = example_cert_hashes();
        let hlak = server_hlak(&example_keys());
        let reversed = server_hlak(&SessionKeys::Mppe { send: hex(CLIENT_SEND_KEY), recv: hex(CLIENT_RECEIVE_KEY) });
        assert_eq!(verify_call_connected(&message, 0x02, &nonce, &hashes, &reversed), Err(BindingError::MacMismatch));
        assert_eq!(verify_call_connected(&message, 0x01, &nonce, &hashes, &hlak), Err(BindingError::HashNotOffered(2)));
        let mut other_nonce = nonce;
        other_nonce[0] ^= 1;
        assert_eq!(
            verify_call_connected(&message, 0x03, &other_nonce, &hashes, &hlak),
            Err(BindingError::NonceMismatch)
        );
        let other_cert = CertHashes { sha1: [0; 20], sha256: [7; 32] };
        assert_eq!(
            verify_call_connected(&message, 0x02, &nonce, &other_cert, &hlak),
            Err(BindingError::CertHashMismatch)
        );
        assert_eq!(
            verify_call_connected(&message[..111], 0x02, &nonce, &hashes, &hlak),
            Err(BindingError::Malformed(111))
        );
    }

    #[test]
    fn sha1_binding_vector() {
        // The HMAC-SHA1-160 Compound MAC vector of sstp-client's cmac unit test (an
        // earlier MS-SSTP example): the certificate hash is 20 bytes, zero-padded.
        let mut message = hex("10010070000400010003006800000001
            0F1A2D58D4A3E3000FAD3CE4906E07B707AA9E441CCEAC5CBD7B2CC1C9D86CDF
            5826B629BDA59B8E6FD8DCD2622FD34C534805A5000000000000000000000000");
        message.extend_from_slice(&hex("69915DD583D8062FEF16F61DB2F03290EC27CB6C"));
        message.extend_from_slice(&[0; 12]);
        let nonce: [u8; 32] = message[16..48].try_into().unwrap();
        let hashes = CertHashes { sha1: message[48..68].try_into().unwrap(), sha256: [0; 32] };
        let keys = SessionKeys::Mppe {
            send: hex("D88E56BAB3CA2BDF0373B7F5A8A13B19"),
            recv: hex("4B3128F43925D9006EEFB1C4E86515A1"),
        };
        let hlak = server_hlak(&keys);
        assert_eq!(verify_call_connected(&message, 0x03, &nonce, &hashes, &hlak), Ok(HashProtocol::Sha1));
        assert_eq!(call_connected(HashProtocol::Sha1, &nonce, &hashes, &hlak), message);
    }

    #[test]
    fn rfc2759_derived_cmk() {
        // PROTOCOLS.md §2.5 derived vector: RFC 2759/3079 User / clientPass.
        let keys = SessionKeys::Mppe {
            send: hex("8b7cdc149b993a1ba118cb153f56dccb"),
            recv: hex("d5f0e9521e3ea9589645e86051c82226"),
        };
        let hlak = server_hlak(&keys);
        assert_eq!(hlak.to_vec(), hex("d5f0e9521e3ea9589645e86051c822268b7cdc149b993a1ba118cb153f56dccb"));
        // The CMK itself is hidden in a key; check it through a MAC over nothing.
        let cmk = hex("150707e682b16f4ca9430560c562894afd10050db4182d35c3e9e06284445271");
        let expected = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &cmk), b"");
        assert_eq!(hmac::sign(&compound_mac_key(HashProtocol::Sha256, &hlak), b"").as_ref(), expected.as_ref());
    }

    #[test]
    fn hlak_padding_and_truncation() {
        assert_eq!(server_hlak(&SessionKeys::None), [0; 32]);
        let msk: Vec<u8> = (0..64).collect();
        assert_eq!(server_hlak(&SessionKeys::Msk(msk.clone()))[..], msk[..32]);
        let short = server_hlak(&SessionKeys::Msk(vec![9; 8]));
        assert_eq!(&short[..8], &[9; 8]);
        assert_eq!(&short[8..], &[0; 24]);
        // EAP through RADIUS: Recv-Key = MSK[0..32] comes first.
        let radius = SessionKeys::Mppe { send: msk[32..].to_vec(), recv: msk[..32].to_vec() };
        assert_eq!(server_hlak(&radius)[..], msk[..32]);
    }
}
