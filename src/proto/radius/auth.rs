//! Everything RADIUS keys with the shared secret (PROTOCOLS.md §5.1, 5.3–5.5):
//! User-Password hiding (RFC 2865 §5.2), the Accounting-Request and Response
//! Authenticators (RFC 2865 §3, RFC 2866 §3), Message-Authenticator (RFC 3579 §3.2) and
//! the salted MS-MPPE-Send/Recv-Key encryption (RFC 2548 §2.4.2).
//!
//! MD5 and HMAC-MD5 come from RustCrypto (`md-5`, `hmac`): aws-lc-rs has no HMAC-MD5.

use ::hmac::{Hmac, Mac};
use md5::{Digest, Md5};

use super::packet::{AUTHENTICATOR_LEN, HEADER_LEN, attr, attribute_spans};

/// The longest password User-Password can carry (RFC 2865 §5.2).
pub const MAX_PASSWORD_LEN: usize = 128;
/// Message-Authenticator's value length.
pub const MESSAGE_AUTHENTICATOR_LEN: usize = 16;

type HmacMd5 = Hmac<Md5>;

/// The User-Password attribute value for `password` (RFC 2865 §5.2): the password padded
/// with zeros to a multiple of 16 bytes, XORed with an MD5 chain seeded by the Request
/// Authenticator. `None` if the password is longer than [`MAX_PASSWORD_LEN`].
pub fn hide_user_password(password: &[u8], secret: &[u8], request_authenticator: &[u8; 16]) -> Option<Vec<u8>> {
    if password.len() > MAX_PASSWORD_LEN {
        return None;
    }
    let mut hidden = password.to_vec();
    hidden.resize(password.len().div_ceil(16).max(1) * 16, 0);
    xor_md5_chain(secret, request_authenticator, &mut hidden, Direction::Encrypt);
    Some(hidden)
}

/// Why an MS-MPPE-Send-Key or MS-MPPE-Recv-Key value cannot be decrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MppeKeyError {
    #[error("{length} bytes is not a 2-byte salt followed by a non-empty multiple of 16 bytes")]
    BadLength { length: usize },
    #[error("the decrypted key length {key_length} does not fit in the {available} bytes available")]
    BadKeyLength { key_length: usize, available: usize },
}

/// Decrypts an MS-MPPE-Send-Key or MS-MPPE-Recv-Key value (RFC 2548 §2.4.2):
/// `Salt(2) || C`, where `C` XOR an MD5 chain seeded by `RequestAuthenticator || Salt` is
/// `KeyLength(1) || Key || padding`. The Request Authenticator is that of *our*
/// Access-Request.
pub fn decrypt_mppe_key(
    value: &[u8],
    secret: &[u8],
    request_authenticator: &[u8; 16],
) -> Result<Vec<u8>, MppeKeyError> {
    let bad_length = MppeKeyError::BadLength { length: value.len() };
    let Some((salt, encrypted)) = value.split_first_chunk::<2>() else {
        return Err(bad_length);
    };
    if encrypted.is_empty() || !encrypted.len().is_multiple_of(16) {
        return Err(bad_length);
    }
    let mut seed = [0u8; AUTHENTICATOR_LEN + 2];
    seed[..AUTHENTICATOR_LEN].copy_from_slice(request_authenticator);
    seed[AUTHENTICATOR_LEN..].copy_from_slice(salt);
    let mut plain = encrypted.to_vec();
    xor_md5_chain(secret, &seed, &mut plain, Direction::Decrypt);
    let key_length = usize::from(plain[0]);
    let available = plain.len() - 1;
    if key_length > available {
        return Err(MppeKeyError::BadKeyLength { key_length, available });
    }
    Ok(plain[1..1 + key_length].to_vec())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Encrypt,
    Decrypt,
}

/// The cipher shared by User-Password and the MPPE keys: `b1 = MD5(secret || seed)`,
/// `bi = MD5(secret || c(i-1))`, each 16-byte block XORed with its `b`. Both directions
/// chain on the *ciphertext*.
fn xor_md5_chain(secret: &[u8], seed: &[u8], data: &mut [u8], direction: Direction) {
    let mut previous_ciphertext = seed.to_vec();
    for block in data.chunks_mut(16) {
        let mut md5 = Md5::new();
        md5.update(secret);
        md5.update(&previous_ciphertext);
        let pad = md5.finalize();
        if direction == Direction::Decrypt {
            previous_ciphertext = block.to_vec();
        }
        for (byte, pad_byte) in block.iter_mut().zip(pad) {
            *byte ^= pad_byte;
        }
        if direction == Direction::Encrypt {
            previous_ciphertext = block.to_vec();
        }
    }
}

/// HMAC-MD5 of `packet` keyed with the secret. The caller has already put the right
/// authenticator in the header and zeroed the Message-Authenticator value.
pub fn message_authenticator(secret: &[u8], packet: &[u8]) -> [u8; MESSAGE_AUTHENTICATOR_LEN] {
    let mut hmac = HmacMd5::new_from_slice(secret).expect("HMAC accepts keys of any length");
    hmac.update(packet);
    hmac.finalize().into_bytes().into()
}

/// `MD5(Code || Identifier || Length || authenticator || Attributes || Secret)`: with the
/// Request Authenticator, a reply's Response Authenticator; with 16 zero bytes, an
/// Accounting-Request's Request Authenticator.
pub(crate) fn packet_md5(secret: &[u8], packet: &[u8], authenticator: &[u8; 16]) -> [u8; AUTHENTICATOR_LEN] {
    let mut md5 = Md5::new();
    md5.update(&packet[..4]);
    md5.update(authenticator);
    md5.update(&packet[HEADER_LEN..]);
    md5.update(secret);
    md5.finalize().into()
}

/// Fills in the Message-Authenticator (whose value must be zero) of an encoded request,
/// then for an Accounting-Request its Request Authenticator, which covers the MAC
/// (FreeRADIUS computes an Accounting-Request's MAC over a zero authenticator field).
pub(crate) fn sign_request(packet: &mut [u8], secret: &[u8], message_authenticator_at: usize, accounting: bool) {
    let mac = message_authenticator(secret, packet);
    packet[message_authenticator_at..message_authenticator_at + MESSAGE_AUTHENTICATOR_LEN].copy_from_slice(&mac);
    if accounting {
        let authenticator = packet_md5(secret, packet, &[0; AUTHENTICATOR_LEN]);
        packet[4..HEADER_LEN].copy_from_slice(&authenticator);
    }
}

/// Why a reply is not authentic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("wrong Response Authenticator (a different shared secret, or not a reply to our request)")]
    BadResponseAuthenticator,
    #[error("no Message-Authenticator, which this reply must carry")]
    MissingMessageAuthenticator,
    #[error("wrong Message-Authenticator (a different shared secret?)")]
    BadMessageAuthenticator,
    #[error("Message-Authenticator is not 16 bytes, or appears more than once")]
    MalformedMessageAuthenticator,
}

/// Checks a reply (`packet` = the bytes up to its Length, already decoded successfully):
/// its Response Authenticator, and its Message-Authenticator computed with *our* Request
/// Authenticator in the header (RFC 3579 §3.2). Without a Message-Authenticator the reply
/// is refused when `require_message_authenticator`. Bytes shorter than a header are
/// refused as unauthentic.
pub fn verify_reply(
    packet: &[u8],
    secret: &[u8],
    request_authenticator: &[u8; 16],
    require_message_authenticator: bool,
) -> Result<(), VerifyError> {
    if packet.len() < HEADER_LEN {
        return Err(VerifyError::BadResponseAuthenticator);
    }
    let expected = packet_md5(secret, packet, request_authenticator);
    if !constant_time_eq(&expected, &packet[4..HEADER_LEN]) {
        return Err(VerifyError::BadResponseAuthenticator);
    }
    let mut mac_ranges =
        attribute_spans(packet).filter_map(|span| span.ok()).filter(|(kind, _)| *kind == attr::MESSAGE_AUTHENTICATOR);
    let Some((_, mac_range)) = mac_ranges.next() else {
        return match require_message_authenticator {
            true => Err(VerifyError::MissingMessageAuthenticator),
            false => Ok(()),
        };
    };
    if mac_range.len() != MESSAGE_AUTHENTICATOR_LEN || mac_ranges.next().is_some() {
        return Err(VerifyError::MalformedMessageAuthenticator);
    }
    let mut copy = packet.to_vec();
    copy[4..HEADER_LEN].copy_from_slice(request_authenticator);
    copy[mac_range.clone()].fill(0);
    match constant_time_eq(&message_authenticator(secret, &copy), &packet[mac_range]) {
        true => Ok(()),
        false => Err(VerifyError::BadMessageAuthenticator),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::testing::hex;

    /// The server side of [`decrypt_mppe_key`], for tests and the test server.
    pub(crate) fn encrypt_mppe_key(
        key: &[u8],
        salt: [u8; 2],
        secret: &[u8],
        request_authenticator: &[u8; 16],
    ) -> Vec<u8> {
        let mut plain = vec![key.len() as u8];
        plain.extend_from_slice(key);
        plain.resize(plain.len().div_ceil(16) * 16, 0);
        let mut seed = request_authenticator.to_vec();
        seed.extend_from_slice(&salt);
        xor_md5_chain(secret, &seed, &mut plain, Direction::Encrypt);
        let mut value = salt.to_vec();
        value.extend_from_slice(&plain);
        value
    }

    /// The server side of [`hide_user_password`]: the password with its NUL padding removed.
    pub(crate) fn recover_user_password(hidden: &[u8], secret: &[u8], request_authenticator: &[u8; 16]) -> Vec<u8> {
        let mut plain = hidden.to_vec();
        xor_md5_chain(secret, request_authenticator, &mut plain, Direction::Decrypt);
        while plain.last() == Some(&0) {
            plain.pop();
        }
        plain
    }

    fn authenticator(s: &str) -> [u8; 16] {
        hex(s).try_into().unwrap()
    }

    const RFC_SECRET: &[u8] = b"xyzzy5461";

    #[test]
    fn rfc2865_user_password_example() {
        // RFC 2865 §7.1.
        let ra = authenticator("0f403f9473978057bd83d5cb98f4227a");
        let hidden = hide_user_password(b"arctangent", RFC_SECRET, &ra).unwrap();
        assert_eq!(hidden, hex("0dbe708d93d413ce3196e43f782a0aee"));
        assert_eq!(recover_user_password(&hidden, RFC_SECRET, &ra), b"arctangent");
    }

    #[test]
    fn long_and_empty_passwords() {
        let ra = [3; 16];
        let long = [b'p'; 40];
        let hidden = hide_user_password(&long, b"s", &ra).unwrap();
        assert_eq!(hidden.len(), 48);
        assert_eq!(recover_user_password(&hidden, b"s", &ra), long);
        // The second block chains on the first ciphertext block, not on the authenticator.
        assert_ne!(hidden[16..32], hide_user_password(&long[16..32], b"s", &ra).unwrap()[..]);
        assert_eq!(hide_user_password(b"", b"s", &ra).unwrap().len(), 16);
        assert_eq!(hide_user_password(&[b'x'; 128], b"s", &ra).unwrap().len(), 128);
        assert_eq!(hide_user_password(&[b'x'; 129], b"s", &ra), None);
    }

    #[test]
    fn rfc2865_response_authenticator_example() {
        // RFC 2865 §7.1: the Access-Accept answering the request above.
        let accept = hex("0200002686fe220e7624ba2a1005f6bf9b55e0b20606000000010f06000000000e06c0a80103");
        let ra = authenticator("0f403f9473978057bd83d5cb98f4227a");
        assert_eq!(packet_md5(RFC_SECRET, &accept, &ra)[..], accept[4..20]);
        assert_eq!(verify_reply(&accept, RFC_SECRET, &ra, false), Ok(()));
        assert_eq!(verify_reply(&accept, RFC_SECRET, &ra, true), Err(VerifyError::MissingMessageAuthenticator));
        assert_eq!(verify_reply(&accept, b"xyzzy5462", &ra, false), Err(VerifyError::BadResponseAuthenticator));
        assert_eq!(verify_reply(&accept, RFC_SECRET, &[0; 16], false), Err(VerifyError::BadResponseAuthenticator));
    }

    #[test]
    fn rfc5997_status_server_message_authenticator() {
        // RFC 5997 §6: Status-Server with Message-Authenticator, and the Access-Accept reply.
        let request = hex("0cda00268a54f4686fb394c52866e302185d062350125a665e2e1e8411f3e243822097c84fa3");
        let mut zeroed = request.clone();
        zeroed[22..38].fill(0);
        assert_eq!(message_authenticator(RFC_SECRET, &zeroed)[..], request[22..38]);
        let mut signed = zeroed.clone();
        sign_request(&mut signed, RFC_SECRET, 22, false);
        assert_eq!(signed, request);

        let reply = hex("02da0014ef0d552a4bf2d693ec2b6fe8b5411d66");
        let ra = authenticator("8a54f4686fb394c52866e302185d0623");
        assert_eq!(verify_reply(&reply, RFC_SECRET, &ra, false), Ok(()));
    }

    /// A reply signed as a server signs it: MAC over the request authenticator, then the
    /// Response Authenticator over the result.
    fn signed_reply(secret: &[u8], ra: &[u8; 16], with_mac: bool) -> Vec<u8> {
        let mut reply = vec![2, 9, 0, 0];
        reply.extend_from_slice(ra);
        reply.extend_from_slice(&[attr::REPLY_MESSAGE, 4, b'h', b'i']);
        if with_mac {
            reply.extend_from_slice(&[attr::MESSAGE_AUTHENTICATOR, 18]);
            reply.extend_from_slice(&[0; 16]);
        }
        let len = reply.len() as u16;
        reply[2..4].copy_from_slice(&len.to_be_bytes());
        if with_mac {
            let mac = message_authenticator(secret, &reply);
            reply[26..42].copy_from_slice(&mac);
        }
        let response = packet_md5(secret, &reply, ra);
        reply[4..20].copy_from_slice(&response);
        reply
    }

    #[test]
    fn message_authenticator_on_replies() {
        let ra = [0x42; 16];
        let reply = signed_reply(b"secret", &ra, true);
        assert_eq!(verify_reply(&reply, b"secret", &ra, true), Ok(()));

        // A wrong MAC (with the Response Authenticator recomputed to match, as a
        // BlastRADIUS forger could) is refused.
        let mut forged = reply.clone();
        forged[30] ^= 1;
        let response = packet_md5(b"secret", &forged, &ra);
        forged[4..20].copy_from_slice(&response);
        assert_eq!(verify_reply(&forged, b"secret", &ra, true), Err(VerifyError::BadMessageAuthenticator));

        // Tampering anywhere breaks the Response Authenticator first.
        let mut tampered = reply.clone();
        tampered[23] ^= 1;
        assert_eq!(verify_reply(&tampered, b"secret", &ra, true), Err(VerifyError::BadResponseAuthenticator));

        let without = signed_reply(b"secret", &ra, false);
        assert_eq!(verify_reply(&without, b"secret", &ra, true), Err(VerifyError::MissingMessageAuthenticator));
        assert_eq!(verify_reply(&without, b"secret", &ra, false), Ok(()));
    }

    #[test]
    fn mppe_key_round_trip_and_length_checks() {
        let ra = [0x17; 16];
        for key_len in [16, 32] {
            let key: Vec<u8> = (0..key_len as u8).collect();
            let value = encrypt_mppe_key(&key, [0x80, 0x01], b"secret", &ra);
            // 16-byte keys take 32 bytes after the salt, 32-byte keys 48 (PROTOCOLS.md §5.5).
            assert_eq!(value.len(), 2 + if key_len == 16 { 32 } else { 48 });
            assert_eq!(decrypt_mppe_key(&value, b"secret", &ra), Ok(key.clone()));
            // A different salt gives different bytes for the same key.
            assert_ne!(encrypt_mppe_key(&key, [0x80, 0x02], b"secret", &ra), value);
        }
        let value = encrypt_mppe_key(&[9; 16], [0x80, 0x01], b"secret", &ra);
        assert_eq!(decrypt_mppe_key(&value[..33], b"secret", &ra), Err(MppeKeyError::BadLength { length: 33 }));
        assert_eq!(decrypt_mppe_key(&value[..2], b"secret", &ra), Err(MppeKeyError::BadLength { length: 2 }));
        assert_eq!(decrypt_mppe_key(&[], b"secret", &ra), Err(MppeKeyError::BadLength { length: 0 }));
        // Key length byte past the end (here: the right value decrypted with a wrong
        // secret gives a random length byte; force one that is too big).
        let mut plain_too_long = vec![40u8];
        plain_too_long.resize(32, 0);
        let mut encrypted = plain_too_long.clone();
        let mut seed = ra.to_vec();
        seed.extend_from_slice(&[0x80, 0x01]);
        xor_md5_chain(b"secret", &seed, &mut encrypted, Direction::Encrypt);
        let mut value = vec![0x80, 0x01];
        value.extend_from_slice(&encrypted);
        assert_eq!(
            decrypt_mppe_key(&value, b"secret", &ra),
            Err(MppeKeyError::BadKeyLength { key_length: 40, available: 31 })
        );
    }
}
