//! OpenVPN data-channel key material (`struct key2`, PROTOCOLS.md §1.9).
//!
//! Both derivations yield 256 bytes laid out as
//! `keys[0] = cipher[64] || hmac[64]`, `keys[1] = cipher[64] || hmac[64]`.
//! The client sends with `keys[0]` and the server with `keys[1]`; for AEAD ciphers
//! the 8-byte implicit IV is the start of the *hmac* slot of the same key.

use crate::crypto::AeadAlgorithm;
use crate::crypto::prf::tls1_prf;

/// TLS exporter label for data keys (RFC 5705 / RFC 8446 §7.5), used with no context
/// and a length of [`KEY2_LEN`].
pub const EKM_LABEL: &[u8] = b"EXPORTER-OpenVPN-datakeys";

/// Size of a `key2`: two directions of 64 cipher + 64 hmac bytes.
pub const KEY2_LEN: usize = 256;
/// Length of the implicit part of the AEAD nonce (the packet-id supplies the rest).
pub const IMPLICIT_IV_LEN: usize = 8;

const SLOT_LEN: usize = 64;
const DIRECTION_LEN: usize = 2 * SLOT_LEN;
const PRE_MASTER_LEN: usize = 48;
const MASTER_LABEL: &[u8] = b"OpenVPN master secret";
const EXPANSION_LABEL: &[u8] = b"OpenVPN key expansion";

/// Which end of the tunnel we are; decides which half of the key material we send with.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Client,
    Server,
}

impl Role {
    /// Index into `key2` of the half this role sends with.
    fn send_index(self) -> usize {
        match self {
            Role::Client => 0,
            Role::Server => 1,
        }
    }
}

/// The 256 bytes of OpenVPN data-channel key material for one key_id.
#[derive(Clone, PartialEq, Eq)]
pub struct Key2([u8; KEY2_LEN]);

/// One side's data-channel keys, borrowed from a [`Key2`]. Key slices are exactly
/// `algorithm.key_len()` bytes long.
#[derive(Clone, Copy)]
pub struct DirectionKeys<'a> {
    pub algorithm: AeadAlgorithm,
    pub send_key: &'a [u8],
    pub send_implicit_iv: [u8; IMPLICIT_IV_LEN],
    pub recv_key: &'a [u8],
    pub recv_implicit_iv: [u8; IMPLICIT_IV_LEN],
}

impl Key2 {
    /// From `TLS-Exporter(EKM_LABEL, no context, 256)` of the control-channel TLS session.
    pub fn from_ekm(bytes: [u8; KEY2_LEN]) -> Key2 {
        Key2(bytes)
    }

    /// The legacy derivation, used when `tls-ekm` was not negotiated:
    /// ```text
    /// master = PRF(client.pre_master, "OpenVPN master secret" || client.random1 || server.random1)
    /// key2   = PRF(master, "OpenVPN key expansion" || client.random2 || server.random2
    ///                      || client_sid || server_sid)
    /// ```
    /// with the TLS 1.0 PRF. The session ids are the control-channel ones of this TLS
    /// session (client's own id and server's own id).
    pub fn from_openvpn_prf(
        client_pre_master: &[u8; PRE_MASTER_LEN],
        client_random1: &[u8; 32],
        server_random1: &[u8; 32],
        client_random2: &[u8; 32],
        server_random2: &[u8; 32],
        client_sid: &[u8; 8],
        server_sid: &[u8; 8],
    ) -> Key2 {
        let mut master_seed = [0u8; MASTER_LABEL.len() + 64];
        concat_into(&mut master_seed, &[MASTER_LABEL, client_random1, server_random1]);
        let mut master = [0u8; PRE_MASTER_LEN];
        tls1_prf(client_pre_master, &master_seed, &mut master);

        let mut expansion_seed = [0u8; EXPANSION_LABEL.len() + 64 + 16];
        concat_into(&mut expansion_seed, &[EXPANSION_LABEL, client_random2, server_random2, client_sid, server_sid]);
        let mut key2 = [0u8; KEY2_LEN];
        tls1_prf(&master, &expansion_seed, &mut key2);
        Key2(key2)
    }

    pub fn as_bytes(&self) -> &[u8; KEY2_LEN] {
        &self.0
    }

    /// The keys `role` seals with and opens with for `algorithm`.
    pub fn direction_keys(&self, algorithm: AeadAlgorithm, role: Role) -> DirectionKeys<'_> {
        let send = role.send_index();
        let recv = 1 - send;
        DirectionKeys {
            algorithm,
            send_key: self.cipher_key(send, algorithm),
            send_implicit_iv: self.implicit_iv(send),
            recv_key: self.cipher_key(recv, algorithm),
            recv_implicit_iv: self.implicit_iv(recv),
        }
    }

    fn cipher_key(&self, index: usize, algorithm: AeadAlgorithm) -> &[u8] {
        let start = index * DIRECTION_LEN;
        &self.0[start..start + algorithm.key_len()]
    }

    fn implicit_iv(&self, index: usize) -> [u8; IMPLICIT_IV_LEN] {
        let start = index * DIRECTION_LEN + SLOT_LEN;
        let mut iv = [0u8; IMPLICIT_IV_LEN];
        iv.copy_from_slice(&self.0[start..start + IMPLICIT_IV_LEN]);
        iv
    }
}

impl std::fmt::Debug for Key2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key2(..)")
    }
}

/// Writes `parts` back to back into `out`, whose length must be their total length.
fn concat_into(out: &mut [u8], parts: &[&[u8]]) {
    let mut at = 0;
    for part in parts {
        out[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    debug_assert_eq!(at, out.len(), "seed buffer sized for exactly these parts");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::hex;

    fn pattern<const N: usize>(start: u8) -> [u8; N] {
        std::array::from_fn(|i| start.wrapping_add(i as u8))
    }

    /// Inputs of the PRF known-answer test: counting byte patterns, easy to retype.
    fn sample_key2() -> Key2 {
        Key2::from_openvpn_prf(
            &pattern(0x00),
            &pattern(0x10),
            &pattern(0x40),
            &pattern(0x70),
            &pattern(0xa0),
            &[1, 2, 3, 4, 5, 6, 7, 8],
            &[0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8],
        )
    }

    /// Expected key2 for [`sample_key2`]'s inputs, computed independently with Python's
    /// `hmac`/`hashlib` (a from-the-RFC P_MD5 xor P_SHA1, the construction whose
    /// tls1_prf output matches OpenVPN's own `good_prf` vector):
    /// `master = PRF(00..2f, "OpenVPN master secret" || 10..2f || 40..5f)` =
    /// 5b6d58be..b3ddd23a, then `key2 = PRF(master, "OpenVPN key expansion" || 70..8f ||
    /// a0..bf || 0102030405060708 || f1f2f3f4f5f6f7f8)`.
    const SAMPLE_KEY2: &str = "
        e7aae522d8e9ac1a8fe07eb856bc35e18518c17533c6251e3d8e5d4dd511bc3c
        720bcedb2cbd7e790fe30f03cd173958472013deb0c41a960caf911ceb11b349
        fb6bdde3e9deded224db5aef83df49a005e6e498c719dfc5cdd036b0887c9fb4
        eac6f210f38ca14681a9e8fb2c4a532c132ea1b9936ed5079db134daf7c3b62a
        52a76a29f2d1570d10b9bc207f0ff6e16e7253ca815670e1f1075b04c7d1ede1
        514d7f5fb6ff9ba5cc1d1d5c69fbd1258c668967bce0660c25ec94a1a621b1d2
        fb18a24dea8abbfac990c2241f658c007ef51ad7168fa64fda11745d3ca118f5
        03eafc3105538d2335960e8536faa001bf485264a76254e346630c6029f54135";

    #[test]
    fn legacy_prf_key_expansion_known_answer() {
        assert_eq!(sample_key2().as_bytes().to_vec(), hex(SAMPLE_KEY2));
    }

    #[test]
    fn legacy_prf_uses_every_input() {
        // Changing any single input (including the order of the session ids) changes
        // the result, so none is silently dropped from the seeds.
        let base = sample_key2();
        let sid_c = [1, 2, 3, 4, 5, 6, 7, 8];
        let sid_s = [0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8];
        let variants = [
            Key2::from_openvpn_prf(
                &pattern(0x01),
                &pattern(0x10),
                &pattern(0x40),
                &pattern(0x70),
                &pattern(0xa0),
                &sid_c,
                &sid_s,
            ),
            Key2::from_openvpn_prf(
                &pattern(0x00),
                &pattern(0x11),
                &pattern(0x40),
                &pattern(0x70),
                &pattern(0xa0),
                &sid_c,
                &sid_s,
            ),
            Key2::from_openvpn_prf(
                &pattern(0x00),
                &pattern(0x10),
                &pattern(0x41),
                &pattern(0x70),
                &pattern(0xa0),
                &sid_c,
                &sid_s,
            ),
            Key2::from_openvpn_prf(
                &pattern(0x00),
                &pattern(0x10),
                &pattern(0x40),
                &pattern(0x71),
                &pattern(0xa0),
                &sid_c,
                &sid_s,
            ),
            Key2::from_openvpn_prf(
                &pattern(0x00),
                &pattern(0x10),
                &pattern(0x40),
                &pattern(0x70),
                &pattern(0xa1),
                &sid_c,
                &sid_s,
            ),
            Key2::from_openvpn_prf(
                &pattern(0x00),
                &pattern(0x10),
                &pattern(0x40),
                &pattern(0x70),
                &pattern(0xa0),
                &sid_s,
                &sid_c,
            ),
        ];
        for (i, v) in variants.iter().enumerate() {
            assert_ne!(v, &base, "variant {i}");
        }
    }

    #[test]
    fn direction_slices_follow_key2_layout() {
        let key2 = Key2::from_ekm(std::array::from_fn(|i| i as u8));
        for algorithm in AeadAlgorithm::ALL {
            let len = algorithm.key_len();
            let client = key2.direction_keys(algorithm, Role::Client);
            let server = key2.direction_keys(algorithm, Role::Server);

            // Client sends with keys[0] (cipher at 0, hmac at 64), server with keys[1]
            // (cipher at 128, hmac at 192).
            assert_eq!(client.send_key, &key2.as_bytes()[0..len]);
            assert_eq!(client.send_implicit_iv[..], key2.as_bytes()[64..72]);
            assert_eq!(client.recv_key, &key2.as_bytes()[128..128 + len]);
            assert_eq!(client.recv_implicit_iv[..], key2.as_bytes()[192..200]);

            // What one side sends with, the other receives with.
            assert_eq!(server.send_key, client.recv_key);
            assert_eq!(server.send_implicit_iv, client.recv_implicit_iv);
            assert_eq!(server.recv_key, client.send_key);
            assert_eq!(server.recv_implicit_iv, client.send_implicit_iv);
            assert_eq!(server.algorithm, algorithm);
        }
    }
}
