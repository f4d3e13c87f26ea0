//! tls-crypt v1: encryption and authentication of control-channel packets with a
//! pre-shared static key (PROTOCOLS.md §1.3; OpenVPN tls_crypt.c).
//!
//! ```text
//! header = byte0 | own session id (8) | packet-id (4) | net_time (4)   cleartext, authenticated
//! tag    = HMAC-SHA256(Ka, header || plaintext)                         32 bytes
//! wire   = header || tag || AES-256-CTR(Ke, IV = tag[0..16], plaintext)
//! ```
//! The tag is a synthetic IV over the *plaintext*, so unwrapping must decrypt before it
//! can verify; the plaintext is released only after the tag matched.
//!
//! Key halves: the server sends with `keys[0]` and receives with `keys[1]`; the client
//! the other way round (OpenVPN: server KEY_DIRECTION_NORMAL, client INVERSE). Within a
//! half, Ke = cipher[0..32] and Ka = hmac[0..32].
//!
//! Replay checking of the packet-id is the caller's (with a `ReplayWindow`).

use aws_lc_rs::cipher::{
    AES_256, DecryptingKey, DecryptionContext, EncryptingKey, EncryptionContext, UnboundCipherKey,
};
use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::hmac;
use aws_lc_rs::iv::FixedLength;

use super::keys::Role;
use super::static_key::{KeyHalf, StaticKey};

/// byte0 and the sender's session id, as the caller passes them to [`TlsCrypt::wrap`].
pub const TLS_CRYPT_HEADER_LEN: usize = 1 + 8;
/// Length of the HMAC-SHA256 tag.
pub const TLS_CRYPT_TAG_LEN: usize = 32;
/// Bytes tls-crypt adds in front of the plaintext: header, packet-id and net_time, tag.
pub const TLS_CRYPT_OVERHEAD: usize = TLS_CRYPT_HEADER_LEN + 8 + TLS_CRYPT_TAG_LEN;

/// Everything before the tag (header, packet-id, net_time): the authenticated cleartext.
const AUTHENTICATED_HEADER_LEN: usize = TLS_CRYPT_HEADER_LEN + 8;
const KEY_LEN: usize = 32;
const CTR_IV_LEN: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TlsCryptError {
    #[error("tls-crypt packet of {len} bytes is shorter than its {TLS_CRYPT_OVERHEAD}-byte header and tag")]
    TooShort { len: usize },
    #[error("tls-crypt authentication failed: the peer uses another tls-crypt key, or the packet was altered")]
    AuthenticationFailed,
}

/// The cleartext fields of an unwrapped packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsCryptHeader {
    /// Opcode and key-id.
    pub byte0: u8,
    /// The sender's session id.
    pub session_id: [u8; 8],
    /// Replay packet-id (starts at 1).
    pub packet_id: u32,
    /// Sender's Unix time when it started using this packet-id sequence.
    pub net_time: u32,
}

/// tls-crypt v1 keys for one side of a session.
pub struct TlsCrypt {
    send_cipher: EncryptingKey,
    send_hmac: hmac::Key,
    recv_cipher: DecryptingKey,
    recv_hmac: hmac::Key,
}

impl TlsCrypt {
    pub fn new(key: &StaticKey, role: Role) -> TlsCrypt {
        let (send, recv) = match role {
            Role::Server => (key.half(0), key.half(1)),
            Role::Client => (key.half(1), key.half(0)),
        };
        TlsCrypt {
            send_cipher: EncryptingKey::ctr(aes_key(&send)).expect("AES-256 supports CTR mode"),
            send_hmac: hmac_key(&send),
            recv_cipher: DecryptingKey::ctr(aes_key(&recv)).expect("AES-256 supports CTR mode"),
            recv_hmac: hmac_key(&recv),
        }
    }

    /// Appends `header || packet_id || net_time || tag || ciphertext` to `out`.
    /// `header` is byte0 followed by our own session id.
    pub fn wrap(
        &self,
        header: &[u8; TLS_CRYPT_HEADER_LEN],
        packet_id: u32,
        net_time: u32,
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) {
        let start = out.len();
        out.reserve(TLS_CRYPT_OVERHEAD + plaintext.len());
        out.extend_from_slice(header);
        out.extend_from_slice(&packet_id.to_be_bytes());
        out.extend_from_slice(&net_time.to_be_bytes());

        let mut mac = hmac::Context::with_key(&self.send_hmac);
        mac.update(&out[start..]);
        mac.update(plaintext);
        let tag = mac.sign();
        out.extend_from_slice(tag.as_ref());

        let ciphertext_start = out.len();
        out.extend_from_slice(plaintext);
        self.send_cipher
            .less_safe_encrypt(&mut out[ciphertext_start..], EncryptionContext::Iv128(ctr_iv(tag.as_ref())))
            .expect("AES-CTR encrypts any length given a 16-byte IV");
    }

    /// Verifies and decrypts `packet`, appending the plaintext to `out`. On failure
    /// `out` is left as it was.
    pub fn unwrap(&self, packet: &[u8], out: &mut Vec<u8>) -> Result<TlsCryptHeader, TlsCryptError> {
        if packet.len() < TLS_CRYPT_OVERHEAD {
            return Err(TlsCryptError::TooShort { len: packet.len() });
        }
        let (authenticated, rest) = packet.split_at(AUTHENTICATED_HEADER_LEN);
        let (tag, ciphertext) = rest.split_at(TLS_CRYPT_TAG_LEN);

        let start = out.len();
        out.extend_from_slice(ciphertext);
        self.recv_cipher
            .decrypt(&mut out[start..], DecryptionContext::Iv128(ctr_iv(tag)))
            .expect("AES-CTR decrypts any length given a 16-byte IV");

        let mut mac = hmac::Context::with_key(&self.recv_hmac);
        mac.update(authenticated);
        mac.update(&out[start..]);
        if verify_slices_are_equal(mac.sign().as_ref(), tag).is_err() {
            out[start..].fill(0);
            out.truncate(start);
            return Err(TlsCryptError::AuthenticationFailed);
        }

        let mut session_id = [0u8; 8];
        session_id.copy_from_slice(&authenticated[1..TLS_CRYPT_HEADER_LEN]);
        let word = |at: usize| {
            u32::from_be_bytes([authenticated[at], authenticated[at + 1], authenticated[at + 2], authenticated[at + 3]])
        };
        Ok(TlsCryptHeader {
            byte0: authenticated[0],
            session_id,
            packet_id: word(TLS_CRYPT_HEADER_LEN),
            net_time: word(TLS_CRYPT_HEADER_LEN + 4),
        })
    }
}

impl std::fmt::Debug for TlsCrypt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsCrypt(..)")
    }
}

fn aes_key(half: &KeyHalf<'_>) -> UnboundCipherKey {
    UnboundCipherKey::new(&AES_256, &half.cipher[..KEY_LEN]).expect("32 bytes is an AES-256 key")
}

fn hmac_key(half: &KeyHalf<'_>) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, &half.hmac[..KEY_LEN])
}

/// The CTR IV: the first 128 bits of the tag.
fn ctr_iv(tag: &[u8]) -> FixedLength<CTR_IV_LEN> {
    let mut iv = [0u8; CTR_IV_LEN];
    iv.copy_from_slice(&tag[..CTR_IV_LEN]);
    FixedLength::from(iv)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `static_key` of OpenVPN v2.6.14 tests/unit_tests/openvpn/test_pkt.c.
    const TEST_PKT_STATIC_KEY: &str = "<tls-auth>
-----BEGIN OpenVPN Static key V1-----
37268ea8f95d7f71f9fb8fc03770c460
daf714a483d815c013ce0a537efc18f2
8f4f172669d9e6a413bac6741d8ea054
00f49b7fd6326470f23798c606bf53d4
de63ebc64ec59d57ce5d04d5b62e68b5
3ca6e5354351097fa370446c4d269f18
7bb6ae54af2dc70ff7317fe2f8754b82
82aad4202f9fa42c8640245d883e2c54
a0c1c489a036cf3a8964d8d289c1583b
9447c262b1da5fd167a5d27bd5ac5143
17bc2343a31a2efc38dd920d910375f5
1c2e27f3afd36c49269da079f7ce466e
bb0f9ad13e9bbb4665974e6bc24b513c
5700393bf4a3e7f967e2f384069ac8a8
e78b18b15604993fd16515cce9c0f3e4
2b4126b999005ade802797b0eeb8b9e6
-----END OpenVPN Static key V1-----
</tls-auth>
";

    /// `client_reset_v2_tls_crypt` of the same file: a real 2.6 client's
    /// P_CONTROL_HARD_RESET_CLIENT_V2 wrapped with the key above.
    const CLIENT_RESET_V2_TLS_CRYPT: [u8; 54] = [
        0x38, 0xf4, 0x19, 0xcb, 0x12, 0xd1, 0xf9, 0xe4, 0x8f, 0x00, 0x00, 0x00, 0x01, 0x61, 0xd3, 0xf8, 0xe1, 0x33,
        0x02, 0x06, 0xf5, 0x68, 0x02, 0xbe, 0x44, 0xfb, 0xed, 0x90, 0x50, 0x64, 0xe3, 0xdb, 0x43, 0x41, 0x6b, 0xec,
        0x5e, 0x52, 0x67, 0x19, 0x46, 0x2b, 0x7e, 0xb9, 0x0c, 0x96, 0xde, 0xfc, 0x9b, 0x05, 0xc4, 0x48, 0x79, 0xf7,
    ];
    const CLIENT_SESSION_ID: [u8; 8] = [0xf4, 0x19, 0xcb, 0x12, 0xd1, 0xf9, 0xe4, 0x8f];

    fn test_key() -> StaticKey {
        StaticKey::parse(TEST_PKT_STATIC_KEY).unwrap()
    }

    #[test]
    fn server_unwraps_real_client_reset() {
        let server = TlsCrypt::new(&test_key(), Role::Server);
        let mut out = b"kept".to_vec();
        let header = server.unwrap(&CLIENT_RESET_V2_TLS_CRYPT, &mut out).unwrap();
        assert_eq!(
            header,
            TlsCryptHeader { byte0: 0x38, session_id: CLIENT_SESSION_ID, packet_id: 1, net_time: 0x61d3_f8e1 }
        );
        // No ACKs, message packet-id 0, after what `out` already held.
        assert_eq!(out, b"kept\x00\x00\x00\x00\x00");
    }

    #[test]
    fn client_wrap_reproduces_real_client_reset() {
        // tls-crypt is deterministic (synthetic IV), so wrapping the same fields must
        // give the client's bytes exactly.
        let client = TlsCrypt::new(&test_key(), Role::Client);
        let mut header = [0u8; TLS_CRYPT_HEADER_LEN];
        header[0] = 0x38;
        header[1..].copy_from_slice(&CLIENT_SESSION_ID);
        let mut out = Vec::new();
        client.wrap(&header, 1, 0x61d3_f8e1, &[0, 0, 0, 0, 0], &mut out);
        assert_eq!(out, CLIENT_RESET_V2_TLS_CRYPT);
    }

    #[test]
    fn a_side_refuses_packets_wrapped_for_the_other_direction() {
        let client = TlsCrypt::new(&test_key(), Role::Client);
        let mut out = Vec::new();
        assert_eq!(client.unwrap(&CLIENT_RESET_V2_TLS_CRYPT, &mut out), Err(TlsCryptError::AuthenticationFailed));
        assert!(out.is_empty());
    }

    #[test]
    fn server_wrap_unwrapped_by_client() {
        let key = StaticKey::generate();
        let server = TlsCrypt::new(&key, Role::Server);
        let client = TlsCrypt::new(&key, Role::Client);
        let header = [0x40, 1, 2, 3, 4, 5, 6, 7, 8];
        let plaintext: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();

        for (packet_id, payload) in [(1u32, &plaintext[..]), (2, &[][..]), (3, &plaintext[..17])] {
            let mut wire = Vec::new();
            server.wrap(&header, packet_id, 1_700_000_000, payload, &mut wire);
            assert_eq!(wire.len(), TLS_CRYPT_OVERHEAD + payload.len());
            assert_eq!(wire[..TLS_CRYPT_HEADER_LEN], header);
            if payload.len() > 16 {
                assert_ne!(wire[TLS_CRYPT_OVERHEAD..], payload[..], "payload must be encrypted");
            }
            let mut out = Vec::new();
            let parsed = client.unwrap(&wire, &mut out).unwrap();
            assert_eq!(
                parsed,
                TlsCryptHeader {
                    byte0: 0x40,
                    session_id: [1, 2, 3, 4, 5, 6, 7, 8],
                    packet_id,
                    net_time: 1_700_000_000
                }
            );
            assert_eq!(out, payload);
        }
    }

    #[test]
    fn refuses_tampering_and_leaves_output_alone() {
        let server = TlsCrypt::new(&test_key(), Role::Server);
        for i in 0..CLIENT_RESET_V2_TLS_CRYPT.len() {
            let mut packet = CLIENT_RESET_V2_TLS_CRYPT;
            packet[i] ^= 0x01;
            let mut out = b"before".to_vec();
            assert_eq!(server.unwrap(&packet, &mut out), Err(TlsCryptError::AuthenticationFailed), "byte {i}");
            assert_eq!(out, b"before");
        }
        // An appended byte is tampering too.
        let longer = [&CLIENT_RESET_V2_TLS_CRYPT[..], &[0]].concat();
        assert_eq!(server.unwrap(&longer, &mut Vec::new()), Err(TlsCryptError::AuthenticationFailed));
    }

    #[test]
    fn refuses_short_packets() {
        let server = TlsCrypt::new(&test_key(), Role::Server);
        for len in 0..TLS_CRYPT_OVERHEAD {
            assert_eq!(
                server.unwrap(&CLIENT_RESET_V2_TLS_CRYPT[..len], &mut Vec::new()),
                Err(TlsCryptError::TooShort { len })
            );
        }
        // Exactly the overhead (empty plaintext) is well-formed but does not authenticate.
        assert_eq!(
            server.unwrap(&CLIENT_RESET_V2_TLS_CRYPT[..TLS_CRYPT_OVERHEAD], &mut Vec::new()),
            Err(TlsCryptError::AuthenticationFailed)
        );
    }

    #[test]
    fn aes_ctr_counter_carries_across_all_128_bits() {
        // OpenSSL's AES-256-CTR (what OpenVPN uses) increments the whole 128-bit block;
        // with a random tag as IV the low 64 bits can overflow inside one packet. Vector
        // from Python `cryptography` (OpenSSL): key 00..1f, IV 0001020304050607
        // fffffffffffffffe, 48 zero bytes.
        let expected = [
            0x13, 0x17, 0x04, 0x95, 0x13, 0x3e, 0x84, 0x9a, 0xef, 0xb0, 0xfd, 0x0e, 0x74, 0x81, 0xf2, 0x7c, 0x22, 0x70,
            0x80, 0x7a, 0x14, 0x28, 0x0a, 0x16, 0x5c, 0x7f, 0x69, 0x2e, 0xf2, 0xab, 0x52, 0x92, 0x7b, 0x71, 0x28, 0x38,
            0xe3, 0x68, 0x6d, 0x36, 0xd1, 0x31, 0xb1, 0x9a, 0xaf, 0x6a, 0xf8, 0xbf,
        ];
        let key: [u8; 32] = std::array::from_fn(|i| i as u8);
        let iv = [0, 1, 2, 3, 4, 5, 6, 7, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe];
        let cipher = EncryptingKey::ctr(UnboundCipherKey::new(&AES_256, &key).unwrap()).unwrap();
        let mut data = [0u8; 48];
        cipher.less_safe_encrypt(&mut data, EncryptionContext::Iv128(ctr_iv(&iv))).unwrap();
        assert_eq!(data, expected);
    }

    #[test]
    fn tls_crypt_is_shareable_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<TlsCrypt>();
    }
}
