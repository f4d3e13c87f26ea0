//! OpenVPN static keys ("OpenVPN Static key V1"): 256 bytes used by tls-crypt.
//!
//! The 256 bytes map onto `struct key2` in OpenVPN: `keys[0] = cipher[64] || hmac[64]`
//! and `keys[1] = cipher[64] || hmac[64]`.

use std::fmt::Write as _;

const BEGIN: &str = "-----BEGIN OpenVPN Static key V1-----";
const END: &str = "-----END OpenVPN Static key V1-----";

#[derive(Clone, PartialEq, Eq)]
pub struct StaticKey([u8; 256]);

/// One direction's half of a static key.
#[derive(Clone, Copy)]
pub struct KeyHalf<'a> {
    pub cipher: &'a [u8; 64],
    pub hmac: &'a [u8; 64],
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StaticKeyError {
    #[error("no \"{BEGIN}\" line")]
    MissingBegin,
    #[error("no \"{END}\" line")]
    MissingEnd,
    #[error("key body is not hexadecimal")]
    NotHex,
    #[error("key body has {0} bytes; a static key has 256")]
    WrongLength(usize),
}

impl StaticKey {
    pub fn from_bytes(bytes: [u8; 256]) -> Self {
        StaticKey(bytes)
    }

    /// A fresh random key.
    pub fn generate() -> Self {
        let mut b = [0u8; 256];
        aws_lc_rs::rand::fill(&mut b).expect("the system RNG works");
        StaticKey(b)
    }

    pub fn as_bytes(&self) -> &[u8; 256] {
        &self.0
    }

    /// `keys[0]` (index 0) or `keys[1]` (index 1).
    pub fn half(&self, index: usize) -> KeyHalf<'_> {
        let base = index * 128;
        KeyHalf {
            cipher: self.0[base..base + 64].try_into().expect("64-byte slice"),
            hmac: self.0[base + 64..base + 128].try_into().expect("64-byte slice"),
        }
    }

    /// Parses the PEM-like text form. Text outside the BEGIN/END lines (comments, or
    /// `<tls-crypt>` tags of an inline profile block) is ignored.
    pub fn parse(text: &str) -> Result<Self, StaticKeyError> {
        let start = text.find(BEGIN).ok_or(StaticKeyError::MissingBegin)? + BEGIN.len();
        let end = text[start..].find(END).ok_or(StaticKeyError::MissingEnd)? + start;
        let hex: String = text[start..end].chars().filter(|c| !c.is_whitespace()).collect();
        if !hex.len().is_multiple_of(2) || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(StaticKeyError::NotHex);
        }
        let len = hex.len() / 2;
        if len != 256 {
            return Err(StaticKeyError::WrongLength(len));
        }
        let mut out = [0u8; 256];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| StaticKeyError::NotHex)?;
        }
        Ok(StaticKey(out))
    }

    /// The text form OpenVPN writes with `--genkey`: 16 lines of 32 hex digits.
    pub fn to_text(&self) -> String {
        let mut s = String::with_capacity(700);
        s.push_str("#\n# 2048 bit OpenVPN static key\n#\n");
        s.push_str(BEGIN);
        s.push('\n');
        for line in self.0.chunks(16) {
            for b in line {
                let _ = write!(s, "{b:02x}");
            }
            s.push('\n');
        }
        s.push_str(END);
        s.push('\n');
        s
    }
}

impl std::fmt::Debug for StaticKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StaticKey(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_halves() {
        let k = StaticKey::generate();
        let parsed = StaticKey::parse(&format!("<tls-crypt>\n{}</tls-crypt>\n", k.to_text())).unwrap();
        assert_eq!(parsed, k);
        assert_eq!(parsed.half(1).cipher[..], k.as_bytes()[128..192]);
        assert_eq!(parsed.half(0).hmac[..], k.as_bytes()[64..128]);
    }

    #[test]
    fn refuses_short_and_garbled_keys() {
        assert_eq!(StaticKey::parse("nothing"), Err(StaticKeyError::MissingBegin));
        let short = format!("{BEGIN}\nabcd\n{END}\n");
        assert_eq!(StaticKey::parse(&short), Err(StaticKeyError::WrongLength(2)));
        let bad = format!("{BEGIN}\nzz\n{END}\n");
        assert_eq!(StaticKey::parse(&bad), Err(StaticKeyError::NotHex));
    }
}
