//! MS-CHAPv2 (RFC 2759) and the MPPE keys derived from it (RFC 3079 §3), PROTOCOLS.md
//! §2.8–2.9.
//!
//! The gateway needs these on both sides of the exchange: as a RADIUS client it only
//! forwards a peer's NT-Response, but a local user list storing NT password hashes must
//! verify that response and produce the authenticator response and MPPE keys itself.
//!
//! MD4 and DES come from RustCrypto (`md4`, `des`; aws-lc-rs has neither); SHA-1 from
//! aws-lc-rs.

use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::digest::{Context, SHA1_FOR_LEGACY_USE_ONLY};
use des::Des;
use des::cipher::{BlockEncrypt, KeyInit};
use md4::{Digest, Md4};

/// MD4 of the password (an NT password hash).
pub type PasswordHash = [u8; 16];

const MAGIC_SERVER_SIGNING: &[u8; 39] = b"Magic server to client signing constant";
const MAGIC_PAD: &[u8; 41] = b"Pad to make it do more than one iteration";
const MAGIC_MASTER_KEY: &[u8; 27] = b"This is the MPPE Master Key";
/// RFC 3079 Magic2: the client's send key, the server's receive key.
const MAGIC_CLIENT_SEND: &[u8; 84] =
    b"On the client side, this is the send key; on the server side, it is the receive key.";
/// RFC 3079 Magic3: the client's receive key, the server's send key.
const MAGIC_CLIENT_RECEIVE: &[u8; 84] =
    b"On the client side, this is the receive key; on the server side, it is the send key.";

/// `NtPasswordHash`: MD4 of the password in UTF-16LE (RFC 2759 §8.3).
pub fn nt_password_hash(password: &str) -> PasswordHash {
    let mut md4 = Md4::new();
    for unit in password.encode_utf16() {
        md4.update(unit.to_le_bytes());
    }
    md4.finalize().into()
}

/// `HashNtPasswordHash`: MD4 of the password hash (RFC 2759 §8.4).
pub fn nt_password_hash_hash(password_hash: &PasswordHash) -> PasswordHash {
    Md4::digest(password_hash).into()
}

/// `ChallengeHash` (RFC 2759 §8.2): the first 8 bytes of
/// `SHA1(PeerChallenge || AuthenticatorChallenge || UserName)`, where the user name loses
/// any `DOMAIN\` prefix (as pppd does, up to the last backslash).
pub fn challenge_hash(peer_challenge: &[u8; 16], authenticator_challenge: &[u8; 16], user_name: &[u8]) -> [u8; 8] {
    let bare_name = match user_name.iter().rposition(|&b| b == b'\\') {
        Some(backslash) => &user_name[backslash + 1..],
        None => user_name,
    };
    let mut sha1 = Context::new(&SHA1_FOR_LEGACY_USE_ONLY);
    sha1.update(peer_challenge);
    sha1.update(authenticator_challenge);
    sha1.update(bare_name);
    let mut out = [0u8; 8];
    out.copy_from_slice(&sha1.finish().as_ref()[..8]);
    out
}

/// `GenerateNTResponse` (RFC 2759 §8.1): the 24-byte NT-Response a peer sends.
pub fn generate_nt_response(
    authenticator_challenge: &[u8; 16],
    peer_challenge: &[u8; 16],
    user_name: &[u8],
    password_hash: &PasswordHash,
) -> [u8; 24] {
    let challenge = challenge_hash(peer_challenge, authenticator_challenge, user_name);
    challenge_response(&challenge, password_hash)
}

/// `ChallengeResponse` (RFC 2759 §8.5): the challenge DES-encrypted under the three 7-byte
/// thirds of the zero-padded password hash.
fn challenge_response(challenge: &[u8; 8], password_hash: &PasswordHash) -> [u8; 24] {
    let mut padded_hash = [0u8; 21];
    padded_hash[..16].copy_from_slice(password_hash);
    let mut response = [0u8; 24];
    for (key_bytes, out) in padded_hash.chunks_exact(7).zip(response.chunks_exact_mut(8)) {
        let key_bytes: &[u8; 7] = key_bytes.try_into().expect("chunks_exact(7) yields 7-byte chunks");
        let des = Des::new(&des_key(key_bytes).into());
        let mut block = (*challenge).into();
        des.encrypt_block(&mut block);
        out.copy_from_slice(&block);
    }
    response
}

/// Spreads 56 key bits over 8 bytes, 7 bits each, with the low bit set for odd parity
/// (RFC 2759 §8.6; DES ignores the parity bit, §9.3 shows it set).
fn des_key(bits56: &[u8; 7]) -> [u8; 8] {
    let packed = bits56.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
    let mut key = [0u8; 8];
    for (i, byte) in key.iter_mut().enumerate() {
        let seven = ((packed >> (49 - 7 * i)) & 0x7f) as u8;
        let with_room = seven << 1;
        *byte = with_room | u8::from(with_room.count_ones().is_multiple_of(2));
    }
    key
}

/// `GenerateAuthenticatorResponse` (RFC 2759 §8.7): the `S=<40 uppercase hex>` string the
/// authenticator returns in its Success message, proving it knows the password too.
pub fn generate_authenticator_response(
    password_hash: &PasswordHash,
    nt_response: &[u8; 24],
    peer_challenge: &[u8; 16],
    authenticator_challenge: &[u8; 16],
    user_name: &[u8],
) -> String {
    let password_hash_hash = nt_password_hash_hash(password_hash);
    let mut inner = Context::new(&SHA1_FOR_LEGACY_USE_ONLY);
    inner.update(&password_hash_hash);
    inner.update(nt_response);
    inner.update(MAGIC_SERVER_SIGNING);
    let inner = inner.finish();

    let challenge = challenge_hash(peer_challenge, authenticator_challenge, user_name);
    let mut outer = Context::new(&SHA1_FOR_LEGACY_USE_ONLY);
    outer.update(inner.as_ref());
    outer.update(&challenge);
    outer.update(MAGIC_PAD);
    let digest = outer.finish();

    let mut text = String::with_capacity(42);
    text.push_str("S=");
    for b in digest.as_ref() {
        text.push_str(&format!("{b:02X}"));
    }
    text
}

/// Server side: whether `nt_response` is what a peer knowing the password behind
/// `password_hash` would have sent (compared in constant time).
pub fn verify_nt_response(
    password_hash: &PasswordHash,
    authenticator_challenge: &[u8; 16],
    peer_challenge: &[u8; 16],
    user_name: &[u8],
    nt_response: &[u8; 24],
) -> bool {
    let expected = generate_nt_response(authenticator_challenge, peer_challenge, user_name, password_hash);
    verify_slices_are_equal(&expected, nt_response).is_ok()
}

/// `GetMasterKey` (RFC 3079 §3.4): the first 16 bytes of
/// `SHA1(PasswordHashHash || NT-Response || "This is the MPPE Master Key")`.
pub fn mppe_master_key(password_hash: &PasswordHash, nt_response: &[u8; 24]) -> [u8; 16] {
    let mut sha1 = Context::new(&SHA1_FOR_LEGACY_USE_ONLY);
    sha1.update(&nt_password_hash_hash(password_hash));
    sha1.update(nt_response);
    sha1.update(MAGIC_MASTER_KEY);
    let mut key = [0u8; 16];
    key.copy_from_slice(&sha1.finish().as_ref()[..16]);
    key
}

/// The 128-bit MPPE start keys of one MS-CHAPv2 authentication, named from the
/// server's (the gateway's) side, as RADIUS names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MppeKeys {
    /// The server's send key = the client's receive key = RADIUS MS-MPPE-Send-Key.
    pub server_send: [u8; 16],
    /// The server's receive key = the client's send key = RADIUS MS-MPPE-Recv-Key.
    pub server_receive: [u8; 16],
}

/// `GetAsymmetricStartKey` (RFC 3079 §3.4) for 128-bit keys, both directions.
pub fn mppe_keys(password_hash: &PasswordHash, nt_response: &[u8; 24]) -> MppeKeys {
    let master_key = mppe_master_key(password_hash, nt_response);
    MppeKeys {
        server_send: asymmetric_start_key(&master_key, MAGIC_CLIENT_RECEIVE),
        server_receive: asymmetric_start_key(&master_key, MAGIC_CLIENT_SEND),
    }
}

fn asymmetric_start_key(master_key: &[u8; 16], magic: &[u8; 84]) -> [u8; 16] {
    let mut sha1 = Context::new(&SHA1_FOR_LEGACY_USE_ONLY);
    sha1.update(master_key);
    sha1.update(&[0x00; 40]);
    sha1.update(magic);
    sha1.update(&[0xf2; 40]);
    let mut key = [0u8; 16];
    key.copy_from_slice(&sha1.finish().as_ref()[..16]);
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex<const N: usize>(s: &str) -> [u8; N] {
        let bytes: Vec<u8> = (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect();
        bytes.try_into().unwrap()
    }

    // RFC 2759 §9.2: user "User", password "clientPass".
    const USER: &[u8] = b"User";
    const PASSWORD: &str = "clientPass";
    fn authenticator_challenge() -> [u8; 16] {
        hex("5B5D7C7D7B3F2F3E3C2C602132262628")
    }
    fn peer_challenge() -> [u8; 16] {
        hex("21402324255E262A28295F2B3A337C7E")
    }
    fn nt_response() -> [u8; 24] {
        hex("82309ECD8D708B5EA08FAA3981CD83544233114A3D85D6DF")
    }

    #[test]
    fn rfc2759_hashes() {
        let hash = nt_password_hash(PASSWORD);
        assert_eq!(hash, hex::<16>("44EBBA8D5312B8D611474411F56989AE"));
        assert_eq!(nt_password_hash_hash(&hash), hex::<16>("41C00C584BD2D91C4017A2A12FA59F3F"));
        assert_eq!(challenge_hash(&peer_challenge(), &authenticator_challenge(), USER), hex::<8>("D02E4386BCE91226"));
    }

    #[test]
    fn rfc2759_nt_response_and_authenticator_response() {
        let hash = nt_password_hash(PASSWORD);
        let response = generate_nt_response(&authenticator_challenge(), &peer_challenge(), USER, &hash);
        assert_eq!(response, nt_response());
        assert_eq!(
            generate_authenticator_response(&hash, &response, &peer_challenge(), &authenticator_challenge(), USER),
            "S=407A5589115FD0D6209F510FE9C04566932CDA56"
        );
    }

    #[test]
    fn domain_prefix_is_not_hashed() {
        assert_eq!(
            challenge_hash(&peer_challenge(), &authenticator_challenge(), b"CONTOSO\\User"),
            challenge_hash(&peer_challenge(), &authenticator_challenge(), USER)
        );
    }

    #[test]
    fn rfc2759_des_key_parity_example() {
        // RFC 2759 §9.3: password "MyPw", 7-byte key piece FC156AF7EDCD6C.
        assert_eq!(des_key(&hex("FC156AF7EDCD6C")), hex::<8>("FD0B5B5E7F6E34D9"));
    }

    #[test]
    fn server_verifies_the_rfc_response_and_refuses_others() {
        let hash = nt_password_hash(PASSWORD);
        assert!(verify_nt_response(&hash, &authenticator_challenge(), &peer_challenge(), USER, &nt_response()));
        let mut wrong = nt_response();
        wrong[23] ^= 1;
        assert!(!verify_nt_response(&hash, &authenticator_challenge(), &peer_challenge(), USER, &wrong));
        let other_password = nt_password_hash("clientpass");
        assert!(!verify_nt_response(
            &other_password,
            &authenticator_challenge(),
            &peer_challenge(),
            USER,
            &nt_response()
        ));
    }

    #[test]
    fn rfc3079_mppe_keys() {
        // RFC 3079 §3.5 (same inputs as RFC 2759 §9.2). Its "SendStartKey128" is the
        // server's send key; the Magic2 (server receive) value is computed, PROTOCOLS.md §2.9.
        let hash = nt_password_hash(PASSWORD);
        assert_eq!(mppe_master_key(&hash, &nt_response()), hex::<16>("FDECE3717A8C838CB388E527AE3CDD31"));
        let keys = mppe_keys(&hash, &nt_response());
        assert_eq!(keys.server_send, hex::<16>("8B7CDC149B993A1BA118CB153F56DCCB"));
        assert_eq!(keys.server_receive, hex::<16>("D5F0E9521E3EA9589645E86051C82226"));
    }
}
