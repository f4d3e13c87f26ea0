//! AEAD algorithms and keys (aws-lc-rs underneath).

use std::fmt;
use std::str::FromStr;

use aws_lc_rs::aead::{self as lc_aead, Aad, LessSafeKey, Nonce, UnboundKey};

use super::CryptoError;

/// Nonce length of every algorithm here (96 bits).
pub const NONCE_LEN: usize = 12;
/// Authentication tag length of every algorithm here (128 bits).
pub const TAG_LEN: usize = 16;

/// The AEAD data ciphers p2sgw speaks.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum AeadAlgorithm {
    Aes128Gcm,
    Aes256Gcm,
    ChaCha20Poly1305,
}

impl AeadAlgorithm {
    pub const ALL: [AeadAlgorithm; 3] = [Self::Aes256Gcm, Self::Aes128Gcm, Self::ChaCha20Poly1305];

    /// Key length in bytes.
    pub fn key_len(self) -> usize {
        match self {
            Self::Aes128Gcm => 16,
            Self::Aes256Gcm | Self::ChaCha20Poly1305 => 32,
        }
    }

    fn aws_lc_algorithm(self) -> &'static lc_aead::Algorithm {
        match self {
            Self::Aes128Gcm => &lc_aead::AES_128_GCM,
            Self::Aes256Gcm => &lc_aead::AES_256_GCM,
            Self::ChaCha20Poly1305 => &lc_aead::CHACHA20_POLY1305,
        }
    }

    /// The name OpenVPN uses in `data-ciphers`, `IV_CIPHERS` and the pushed `cipher`.
    pub fn openvpn_name(self) -> &'static str {
        match self {
            Self::Aes128Gcm => "AES-128-GCM",
            Self::Aes256Gcm => "AES-256-GCM",
            Self::ChaCha20Poly1305 => "CHACHA20-POLY1305",
        }
    }
}

impl fmt::Display for AeadAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.openvpn_name())
    }
}

impl FromStr for AeadAlgorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|a| a.openvpn_name().eq_ignore_ascii_case(s)).ok_or_else(|| {
            format!("unknown data cipher {s:?} (supported: AES-256-GCM, AES-128-GCM, CHACHA20-POLY1305)")
        })
    }
}

impl serde::Serialize for AeadAlgorithm {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.openvpn_name())
    }
}

impl<'de> serde::Deserialize<'de> for AeadAlgorithm {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One AEAD key for one direction. The nonce is supplied per call, so the caller owns
/// nonce uniqueness (each protocol builds it from its own packet counter).
///
/// `Send + Sync`: one key is shared read-only by all worker threads.
pub struct AeadKey {
    algorithm: AeadAlgorithm,
    key: LessSafeKey,
}

impl AeadKey {
    pub fn new(algorithm: AeadAlgorithm, key: &[u8]) -> Result<AeadKey, CryptoError> {
        let wrong_length = CryptoError::WrongKeyLength { algorithm, expected: algorithm.key_len(), actual: key.len() };
        if key.len() != algorithm.key_len() {
            return Err(wrong_length);
        }
        let unbound = UnboundKey::new(algorithm.aws_lc_algorithm(), key).map_err(|_| wrong_length)?;
        Ok(AeadKey { algorithm, key: LessSafeKey::new(unbound) })
    }

    pub fn algorithm(&self) -> AeadAlgorithm {
        self.algorithm
    }

    /// Encrypts `data` in place and returns the tag. Never call twice with the same
    /// nonce under one key.
    pub fn seal_in_place_separate_tag(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        data: &mut [u8],
    ) -> Result<[u8; TAG_LEN], CryptoError> {
        let tag = self
            .key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), data)
            .map_err(|_| CryptoError::SealFailed)?;
        tag.as_ref().try_into().map_err(|_| CryptoError::SealFailed)
    }

    /// Checks the tag and decrypts `data` in place. On failure the contents of `data`
    /// are unspecified and must not be used.
    pub fn open_in_place_separate_tag(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        tag: &[u8; TAG_LEN],
        data: &mut [u8],
    ) -> Result<(), CryptoError> {
        self.key
            .open_in_place_separate_tag(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), tag, data)
            .map(|_| ())
            .map_err(|_| CryptoError::AuthenticationFailed)
    }
}

impl fmt::Debug for AeadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AeadKey({})", self.algorithm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::hex;

    struct Vector {
        algorithm: AeadAlgorithm,
        key: &'static str,
        nonce: &'static str,
        aad: &'static str,
        plaintext: Vec<u8>,
        ciphertext: &'static str,
        tag: &'static str,
    }

    fn check(v: &Vector) {
        let key = AeadKey::new(v.algorithm, &hex(v.key)).unwrap();
        let nonce: [u8; NONCE_LEN] = hex(v.nonce).try_into().unwrap();
        let aad = hex(v.aad);
        let mut data = v.plaintext.clone();
        let tag = key.seal_in_place_separate_tag(&nonce, &aad, &mut data).unwrap();
        assert_eq!(data, hex(v.ciphertext), "{} ciphertext", v.algorithm);
        assert_eq!(tag.to_vec(), hex(v.tag), "{} tag", v.algorithm);

        key.open_in_place_separate_tag(&nonce, &aad, &tag, &mut data).unwrap();
        assert_eq!(data, v.plaintext, "{} round trip", v.algorithm);
    }

    // McGrew & Viega, "The Galois/Counter Mode of Operation (GCM)", test cases 4 and 16
    // (the NIST GCM submission's vectors: 60-byte plaintext, 20-byte AAD, 96-bit IV).
    const GCM_PLAINTEXT: &str = "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72
        1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39";
    const GCM_AAD: &str = "feedfacedeadbeeffeedfacedeadbeefabaddad2";
    const GCM_IV: &str = "cafebabefacedbaddecaf888";

    #[test]
    fn aes_128_gcm_test_case_4() {
        check(&Vector {
            algorithm: AeadAlgorithm::Aes128Gcm,
            key: "feffe9928665731c6d6a8f9467308308",
            nonce: GCM_IV,
            aad: GCM_AAD,
            plaintext: hex(GCM_PLAINTEXT),
            ciphertext: "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e
                21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091",
            tag: "5bc94fbc3221a5db94fae95ae7121a47",
        });
    }

    #[test]
    fn aes_256_gcm_test_case_16() {
        check(&Vector {
            algorithm: AeadAlgorithm::Aes256Gcm,
            key: "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
            nonce: GCM_IV,
            aad: GCM_AAD,
            plaintext: hex(GCM_PLAINTEXT),
            ciphertext: "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa
                8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
            tag: "76fc6ece0f4e1768cddf8853bb2d551b",
        });
    }

    // McGrew & Viega test cases 1 and 13: all-zero key and IV, empty plaintext and AAD
    // (only the tag is produced).
    #[test]
    fn aes_gcm_empty_plaintext_test_cases_1_and_13() {
        for (algorithm, key, tag) in [
            (AeadAlgorithm::Aes128Gcm, "00000000000000000000000000000000", "58e2fccefa7e3061367f1d57a4e7455a"),
            (
                AeadAlgorithm::Aes256Gcm,
                "0000000000000000000000000000000000000000000000000000000000000000",
                "530f8afbc74536b9a963b4f1c4cb738b",
            ),
        ] {
            check(&Vector {
                algorithm,
                key,
                nonce: "000000000000000000000000",
                aad: "",
                plaintext: Vec::new(),
                ciphertext: "",
                tag,
            });
        }
    }

    // RFC 8439 section 2.8.2.
    #[test]
    fn chacha20_poly1305_rfc8439_2_8_2() {
        check(&Vector {
            algorithm: AeadAlgorithm::ChaCha20Poly1305,
            key: "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f",
            nonce: "070000004041424344454647",
            aad: "50515253c0c1c2c3c4c5c6c7",
            plaintext: b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.".to_vec(),
            ciphertext: "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6
                3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36
                92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc
                3ff4def08e4b7a9de576d26586cec64b6116",
            tag: "1ae10b594f09e26a7e902ecbd0600691",
        });
    }

    #[test]
    fn refuses_tampered_tag_ciphertext_and_aad() {
        for algorithm in AeadAlgorithm::ALL {
            let key = AeadKey::new(algorithm, &vec![7u8; algorithm.key_len()]).unwrap();
            let nonce = [1u8; NONCE_LEN];
            let mut data = *b"some payload";
            let tag = key.seal_in_place_separate_tag(&nonce, b"aad", &mut data).unwrap();

            let mut bad_tag = tag;
            bad_tag[15] ^= 1;
            let mut copy = data;
            assert_eq!(
                key.open_in_place_separate_tag(&nonce, b"aad", &bad_tag, &mut copy),
                Err(CryptoError::AuthenticationFailed)
            );

            let mut flipped = data;
            flipped[0] ^= 0x80;
            assert!(key.open_in_place_separate_tag(&nonce, b"aad", &tag, &mut flipped).is_err());

            let mut copy = data;
            assert!(key.open_in_place_separate_tag(&nonce, b"aae", &tag, &mut copy).is_err());

            let mut copy = data;
            assert!(key.open_in_place_separate_tag(&[2u8; NONCE_LEN], b"aad", &tag, &mut copy).is_err());
        }
    }

    #[test]
    fn refuses_wrong_key_length() {
        assert_eq!(
            AeadKey::new(AeadAlgorithm::Aes256Gcm, &[0u8; 16]).unwrap_err(),
            CryptoError::WrongKeyLength { algorithm: AeadAlgorithm::Aes256Gcm, expected: 32, actual: 16 }
        );
        assert!(AeadKey::new(AeadAlgorithm::Aes128Gcm, &[0u8; 32]).is_err());
        assert!(AeadKey::new(AeadAlgorithm::ChaCha20Poly1305, &[]).is_err());
    }

    #[test]
    fn key_is_shareable_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<AeadKey>();
    }
}
