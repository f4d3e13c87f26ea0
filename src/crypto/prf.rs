//! The TLS 1.0/1.1 PRF (RFC 2246 §5), still needed by OpenVPN's legacy data-key
//! derivation when the peer does not use TLS-EKM.
//!
//! `PRF(secret, seed) = P_MD5(S1, seed) XOR P_SHA1(S2, seed)`, where S1 is the first
//! and S2 the last `ceil(len/2)` bytes of the secret (they share the middle byte when
//! the length is odd). No label argument: callers put the label at the start of `seed`.
//!
//! MD5 comes from the `md-5` crate (aws-lc-rs has no HMAC-MD5); SHA-1 from aws-lc-rs.

use ::hmac::{Hmac, Mac};
use aws_lc_rs::hmac as lc_hmac;
use md5::Md5;

const MD5_LEN: usize = 16;
const SHA1_LEN: usize = 20;

/// Fills `out` with `PRF(secret, seed)`.
pub fn tls1_prf(secret: &[u8], seed: &[u8], out: &mut [u8]) {
    let half = secret.len().div_ceil(2);
    let (md5_secret, sha1_secret) = (&secret[..half], &secret[secret.len() - half..]);
    out.fill(0);
    xor_p_md5(md5_secret, seed, out);
    xor_p_sha1(sha1_secret, seed, out);
}

/// P_hash (RFC 2246 §5): `A(0) = seed, A(i) = HMAC(secret, A(i-1))`, output blocks
/// `HMAC(secret, A(i) || seed)`; XORed into `out`.
fn xor_p_md5(secret: &[u8], seed: &[u8], out: &mut [u8]) {
    let keyed = <Hmac<Md5> as Mac>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    let mut a = [0u8; MD5_LEN];
    let mut first = keyed.clone();
    first.update(seed);
    a.copy_from_slice(&first.finalize().into_bytes());
    for chunk in out.chunks_mut(MD5_LEN) {
        let mut block = keyed.clone();
        block.update(&a);
        block.update(seed);
        xor_into(chunk, &block.finalize().into_bytes());
        let mut next = keyed.clone();
        next.update(&a);
        a.copy_from_slice(&next.finalize().into_bytes());
    }
}

fn xor_p_sha1(secret: &[u8], seed: &[u8], out: &mut [u8]) {
    let key = lc_hmac::Key::new(lc_hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    let mut a = lc_hmac::sign(&key, seed);
    for chunk in out.chunks_mut(SHA1_LEN) {
        let mut block = lc_hmac::Context::with_key(&key);
        block.update(a.as_ref());
        block.update(seed);
        xor_into(chunk, block.sign().as_ref());
        a = lc_hmac::sign(&key, a.as_ref());
    }
}

fn xor_into(out: &mut [u8], bytes: &[u8]) {
    for (o, b) in out.iter_mut().zip(bytes) {
        *o ^= b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // OpenVPN v2.6.14 tests/unit_tests/openvpn/test_crypto.c, crypto_test_tls_prf:
    // ssl_tls1_PRF(seed, secret) with these strings must give `good_prf`. The secret is
    // 117 bytes long, so the odd-length overlap of the two halves is exercised.
    const SECRET: &[u8] = b"Lorem ipsum dolor sit amet, consectetur adipisici elit, sed eiusmod tempor incidunt ut labore et dolore magna aliqua.";
    const SEED: &[u8] = b"Quis aute iure reprehenderit in voluptate velit esse cillum dolore";
    const GOOD_PRF: [u8; 32] = [
        0xd9, 0x8c, 0x85, 0x18, 0xc8, 0x5e, 0x94, 0x69, 0x27, 0x91, 0x6a, 0xcf, 0xc2, 0xd5, 0x92, 0xfb, 0xb1, 0x56,
        0x7e, 0x4b, 0x4b, 0x14, 0x59, 0xe6, 0xa9, 0x04, 0xac, 0x2d, 0xda, 0xb7, 0x2d, 0x67,
    ];

    #[test]
    fn openvpn_good_prf_vector() {
        assert_eq!(SECRET.len() % 2, 1);
        let mut out = [0u8; 32];
        tls1_prf(SECRET, SEED, &mut out);
        assert_eq!(out, GOOD_PRF);
    }

    #[test]
    fn output_is_a_prefix_stream_for_any_length() {
        // Lengths that are not multiples of the 16/20-byte blocks must give prefixes of
        // the same stream, and `out`'s previous contents must not leak in.
        let mut long = [0u8; 256];
        tls1_prf(SECRET, SEED, &mut long);
        assert_eq!(long[..32], GOOD_PRF);
        for len in [1, 15, 17, 21, 47, 48, 100] {
            let mut out = vec![0xAAu8; len];
            tls1_prf(SECRET, SEED, &mut out);
            assert_eq!(out[..], long[..len], "len {len}");
        }
    }
}
