//! Certificates: the gateway's own small PKI (`p2sgw pki init|issue|revoke`), loading of
//! PEM/DER material, and the trust store that verifies client certificates.
//!
//! Layout of a PKI directory (all files replaced atomically):
//! - `ca.crt`, `ca.key`: the self-signed root CA;
//! - `server.crt`, `server.key`: the gateway's certificate (CN = gateway name);
//! - `tls-crypt.key`: the OpenVPN tls-crypt key;
//! - `revoked.txt`: revoked client certificates by SHA-1 thumbprint;
//! - `crl.pem`: the CA's CRL, listing the revoked certificates it issued;
//! - `clients/index.toml`, `clients/<name>.crt|.key`: issued client certificates.

mod authority;
mod files;
mod identity;
mod trust;

use std::fmt;
use std::str::FromStr;

pub use authority::{
    ClientCredentials, ClientRecord, InitSummary, IssuedClient, Pki, RevokeTarget, RevokedClient,
    list_revoked_thumbprint, unlist_revoked_thumbprint,
};
pub use files::{load_certs, load_crls, load_private_key, load_revoked_list, pem_certificate, write_atomically};
pub use identity::{ClientIdentity, ServerIdentity, client_identity, subject_common_name};
pub use trust::{RevocationReason, SourceStamp, TrustStore};

/// Key type of the CA and of every certificate it issues.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum KeyAlgorithm {
    #[default]
    EcdsaP256,
    Rsa2048,
    Rsa3072,
}

impl KeyAlgorithm {
    pub const ALL: [KeyAlgorithm; 3] = [Self::EcdsaP256, Self::Rsa2048, Self::Rsa3072];

    pub fn name(self) -> &'static str {
        match self {
            Self::EcdsaP256 => "ecdsa-p256",
            Self::Rsa2048 => "rsa-2048",
            Self::Rsa3072 => "rsa-3072",
        }
    }

    fn is_rsa(self) -> bool {
        matches!(self, Self::Rsa2048 | Self::Rsa3072)
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for KeyAlgorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown key algorithm {s:?} (supported: ecdsa-p256, rsa-2048, rsa-3072)"))
    }
}

/// SHA-1 of a certificate's DER encoding: the "thumbprint" Azure and Windows show.
#[derive(Copy, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Thumbprint(pub [u8; 20]);

impl Thumbprint {
    pub fn of_der(cert_der: &[u8]) -> Self {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, cert_der);
        Thumbprint(digest.as_ref().try_into().expect("SHA-1 digests are 20 bytes"))
    }
}

/// Upper-case hex without separators, as Azure shows it.
impl fmt::Display for Thumbprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02X}"))
    }
}

impl fmt::Debug for Thumbprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Thumbprint({self})")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ThumbprintParseError {
    #[error("a thumbprint is 40 hex digits (SHA-1); found a non-hex character {0:?}")]
    NotHex(char),
    #[error("a thumbprint is 40 hex digits (SHA-1); found {0}")]
    WrongLength(usize),
}

/// Accepts upper or lower case, with or without `:` or space separators. Also drops the
/// invisible left-to-right marks that copying a thumbprint from Windows' certificate
/// dialog tends to add.
impl FromStr for Thumbprint {
    type Err = ThumbprintParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut nibbles = Vec::with_capacity(40);
        for c in s.chars() {
            match c {
                ':' | '\u{200e}' | '\u{200f}' | '\u{feff}' => {}
                c if c.is_whitespace() => {}
                c => nibbles.push(c.to_digit(16).ok_or(ThumbprintParseError::NotHex(c))? as u8),
            }
        }
        if nibbles.len() != 40 {
            return Err(ThumbprintParseError::WrongLength(nibbles.len()));
        }
        let mut out = [0u8; 20];
        for (byte, pair) in out.iter_mut().zip(nibbles.chunks_exact(2)) {
            *byte = pair[0] << 4 | pair[1];
        }
        Ok(Thumbprint(out))
    }
}

impl serde::Serialize for Thumbprint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Thumbprint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Upper-case hex of a serial number's significant bytes (as `openssl x509 -serial`).
fn serial_to_hex(raw_serial: &[u8]) -> String {
    let significant = strip_leading_zeros(raw_serial);
    if significant.is_empty() {
        return "00".to_string();
    }
    significant.iter().map(|b| format!("{b:02X}")).collect()
}

/// DER INTEGERs carry a 0x00 prefix when the top bit is set; compare serials without it.
fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[first..]
}

#[cfg(test)]
pub(crate) mod test_support;

#[cfg(test)]
mod tests;
