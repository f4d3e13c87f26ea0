//! JSON Web Key Sets (RFC 7517, RFC 7518 §6): RSA and P-256 signing keys, turned into
//! aws-lc-rs public keys once, when the set is loaded. A key this gateway cannot use is
//! skipped with a reason; the set is refused only when no key is left.

use std::fmt;

use aws_lc_rs::signature::{self, ParsedPublicKey, RsaPublicKeyComponents};
use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde_json::{Map, Value};

use super::jwt::Algorithm;
use super::{TokenError, shown};

/// RSA moduli accepted, in bits: the range aws-lc-rs verifies, with NIST's 2048-bit floor.
pub const RSA_BITS: std::ops::RangeInclusive<usize> = 2048..=8192;

/// Key material is base64url; RFC 7518 forbids padding, but a stray `=` from the identity
/// provider is harmless here (unlike in a token, whose text the signature covers).
const KEY_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A key of the set that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedKey {
    pub kid: Option<String>,
    pub reason: String,
}

impl fmt::Display for SkippedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kid {
            Some(kid) => write!(f, "key {kid}: {}", self.reason),
            None => write!(f, "key without kid: {}", self.reason),
        }
    }
}

/// Why a whole key set was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    #[error("not a JSON object ({0})")]
    NotJson(String),
    #[error("no \"keys\" array")]
    NoKeysArray,
    #[error("no usable signing key{}", skipped_summary(.0))]
    NoUsableKeys(Vec<SkippedKey>),
}

fn skipped_summary(skipped: &[SkippedKey]) -> String {
    let reasons: Vec<String> = skipped.iter().map(SkippedKey::to_string).collect();
    if reasons.is_empty() { String::new() } else { format!(" ({})", reasons.join("; ")) }
}

/// The verification keys of one identity provider.
#[derive(Debug)]
pub struct Jwks {
    keys: Vec<SigningKey>,
    skipped: Vec<SkippedKey>,
}

#[derive(Debug)]
struct SigningKey {
    kid: Option<String>,
    /// The JWK's `alg`, when it pins the key to one algorithm.
    alg: Option<Algorithm>,
    material: KeyMaterial,
}

#[derive(Debug)]
enum KeyMaterial {
    /// Without an `alg`, an RSA key may sign with either padding; both are parsed up front.
    Rsa {
        bits: usize,
        pkcs1: ParsedPublicKey,
        pss: ParsedPublicKey,
    },
    EcP256(ParsedPublicKey),
}

impl Jwks {
    /// Parses a JWKS document (`{"keys": [...]}`).
    pub fn parse(json: &[u8]) -> Result<Jwks, JwksError> {
        let document: Value = serde_json::from_slice(json).map_err(|e| JwksError::NotJson(e.to_string()))?;
        let Some(Value::Array(entries)) = document.get("keys") else {
            return Err(match document {
                Value::Object(_) => JwksError::NoKeysArray,
                _ => JwksError::NotJson("the document is not an object".to_string()),
            });
        };
        let mut keys = Vec::new();
        let mut skipped = Vec::new();
        for entry in entries {
            match parse_key(entry) {
                Ok(key) => keys.push(key),
                Err(reason) => {
                    let kid = entry.get("kid").and_then(Value::as_str).map(shown);
                    skipped.push(SkippedKey { kid, reason });
                }
            }
        }
        if keys.is_empty() {
            return Err(JwksError::NoUsableKeys(skipped));
        }
        Ok(Jwks { keys, skipped })
    }

    /// Number of usable keys (at least one).
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// The keys of the document that were left out, for the log.
    pub fn skipped(&self) -> &[SkippedKey] {
        &self.skipped
    }

    /// The key that must have signed a token with this header.
    fn select(&self, kid: Option<&str>, alg: Algorithm) -> Result<&SigningKey, TokenError> {
        let Some(kid) = kid else {
            // Single-key issuers may leave `kid` out; with several candidates, trying each
            // would multiply the cost of a forged token, so the token must name its key.
            let mut candidates = self.keys.iter().filter(|k| k.accepts(alg));
            return match (candidates.next(), candidates.next()) {
                (Some(only), None) => Ok(only),
                (None, _) => Err(TokenError::NoKeyForAlgorithm(alg)),
                (Some(_), Some(_)) => Err(TokenError::AmbiguousKey),
            };
        };
        let mut named = self.keys.iter().filter(|k| k.kid.as_deref() == Some(kid)).peekable();
        let Some(first) = named.peek() else {
            return Err(TokenError::UnknownKeyId(shown(kid)));
        };
        let first_description = first.describe();
        named.find(|k| k.accepts(alg)).ok_or_else(|| TokenError::KeyAlgorithmMismatch {
            alg,
            kid: shown(kid),
            key: first_description,
        })
    }

    /// Checks the signature of `signing_input` with the key the header designates.
    pub(crate) fn verify_signature(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
        signing_input: &[u8],
        signature: &[u8],
    ) -> Result<(), TokenError> {
        let key = self.select(kid, alg)?;
        let public_key = match (&key.material, alg) {
            (KeyMaterial::Rsa { pss, .. }, Algorithm::Ps256) => pss,
            (KeyMaterial::Rsa { pkcs1, .. }, _) => pkcs1,
            (KeyMaterial::EcP256(point), _) => point,
        };
        public_key
            .verify_sig(signing_input, signature)
            .map_err(|_| TokenError::BadSignature { kid: kid.map(shown), alg })
    }
}

/// One line for the log: the usable keys, then the skipped ones.
impl fmt::Display for Jwks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<String> = self.keys.iter().map(SigningKey::describe_with_kid).collect();
        write!(f, "{} key(s): {}", keys.len(), keys.join(", "))?;
        if !self.skipped.is_empty() {
            write!(f, "; {} skipped{}", self.skipped.len(), skipped_summary(&self.skipped))?;
        }
        Ok(())
    }
}

impl KeyMaterial {
    fn fits(&self, alg: Algorithm) -> bool {
        matches!(
            (self, alg),
            (KeyMaterial::Rsa { .. }, Algorithm::Rs256 | Algorithm::Ps256) | (KeyMaterial::EcP256(_), Algorithm::Es256)
        )
    }

    fn describe(&self) -> String {
        match self {
            KeyMaterial::Rsa { bits, .. } => format!("RSA-{bits}"),
            KeyMaterial::EcP256(_) => "EC P-256".to_string(),
        }
    }
}

impl SigningKey {
    fn accepts(&self, alg: Algorithm) -> bool {
        self.material.fits(alg) && self.alg.is_none_or(|pinned| pinned == alg)
    }

    fn describe(&self) -> String {
        let kind = self.material.describe();
        match self.alg {
            Some(alg) => format!("{kind} for {alg} only"),
            None => kind,
        }
    }

    fn describe_with_kid(&self) -> String {
        format!("{} {}", self.kid.as_deref().unwrap_or("(no kid)"), self.describe())
    }
}

fn parse_key(entry: &Value) -> Result<SigningKey, String> {
    let Value::Object(jwk) = entry else {
        return Err("not a JSON object".to_string());
    };
    let kid = match jwk.get("kid") {
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err("kid is not a string".to_string()),
        None => None,
    };
    match jwk.get("use") {
        None => {}
        Some(Value::String(key_use)) if key_use == "sig" => {}
        Some(other) => return Err(format!("use is {}, not sig", shown(&other.to_string()))),
    }
    if let Some(ops) = jwk.get("key_ops") {
        let verifies = ops.as_array().is_some_and(|ops| ops.iter().any(|op| op.as_str() == Some("verify")));
        if !verifies {
            return Err("key_ops does not include verify".to_string());
        }
    }
    let alg = match jwk.get("alg") {
        Some(Value::String(alg)) => {
            Some(Algorithm::from_jose_name(alg).map_err(|_| format!("alg {} not supported", shown(alg)))?)
        }
        Some(_) => return Err("alg is not a string".to_string()),
        None => None,
    };
    let material = match jwk.get("kty").and_then(Value::as_str) {
        Some("RSA") => parse_rsa(jwk)?,
        Some("EC") => parse_ec(jwk)?,
        Some(kty) => return Err(format!("key type {} not supported", shown(kty))),
        None => return Err("no kty".to_string()),
    };
    if let Some(alg) = alg
        && !material.fits(alg)
    {
        return Err(format!("alg {alg} does not fit the key type ({})", material.describe()));
    }
    Ok(SigningKey { kid, alg, material })
}

fn parse_rsa(jwk: &Map<String, Value>) -> Result<KeyMaterial, String> {
    let n = decode_member(jwk, "n")?;
    let e = decode_member(jwk, "e")?;
    // aws-lc-rs wants big-endian integers without leading zeros; some producers add one.
    let n = strip_leading_zeros(&n);
    let e = strip_leading_zeros(&e);
    let bits = n.first().map_or(0, |top| n.len() * 8 - top.leading_zeros() as usize);
    if !RSA_BITS.contains(&bits) {
        return Err(format!("RSA key of {bits} bits (2048 to 8192 accepted)"));
    }
    let exponent_ok = (1..=4).contains(&e.len())
        && e.last().is_some_and(|low| low & 1 == 1)
        && e.iter().fold(0u64, |acc, &b| acc << 8 | u64::from(b)) >= 3;
    if !exponent_ok {
        return Err("RSA exponent is not an odd number from 3 to 2^32 - 1".to_string());
    }
    let components = RsaPublicKeyComponents { n, e };
    let parse = |params| components.to_parsed_public_key(params).map_err(|err| format!("RSA key rejected: {err}"));
    Ok(KeyMaterial::Rsa {
        bits,
        pkcs1: parse(&signature::RSA_PKCS1_2048_8192_SHA256)?,
        pss: parse(&signature::RSA_PSS_2048_8192_SHA256)?,
    })
}

fn parse_ec(jwk: &Map<String, Value>) -> Result<KeyMaterial, String> {
    match jwk.get("crv").and_then(Value::as_str) {
        Some("P-256") => {}
        Some(curve) => return Err(format!("curve {} not supported", shown(curve))),
        None => return Err("no crv".to_string()),
    }
    let x = decode_member(jwk, "x")?;
    let y = decode_member(jwk, "y")?;
    if x.len() != 32 || y.len() != 32 {
        return Err("P-256 coordinates must be 32 bytes each".to_string());
    }
    // SEC 1 uncompressed point: 0x04 || x || y. Parsing checks that it lies on the curve.
    let point: Vec<u8> = [&[0x04][..], &x, &y].concat();
    ParsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
        .map(KeyMaterial::EcP256)
        .map_err(|_| "not a point on P-256".to_string())
}

fn decode_member(jwk: &Map<String, Value>, name: &str) -> Result<Vec<u8>, String> {
    let Some(Value::String(encoded)) = jwk.get(name) else {
        return Err(format!("no {name}"));
    };
    KEY_BASE64.decode(encoded).map_err(|_| format!("{name} is not base64url"))
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let first_nonzero = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[first_nonzero..]
}
