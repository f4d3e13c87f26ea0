//! AEAD algorithms and keys (aws-lc-rs underneath).

use std::fmt;
use std::str::FromStr;

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
        Self::ALL
            .into_iter()
            .find(|a| a.openvpn_name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
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
