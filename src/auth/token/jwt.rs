//! Compact JWS parsing (RFC 7515 §7.1): `header.payload.signature`, each part base64url
//! without padding. Nothing here is trusted until the signature has been checked.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use super::{TokenError, shown};

/// Longest token accepted. Entra ID access tokens carrying 200 group IDs stay under 12 KiB;
/// the bound keeps a hostile password from costing more than a few base64 and JSON passes.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// The JWS signature algorithms this gateway verifies (RFC 7518 §3.1).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// RSASSA-PSS with SHA-256, MGF1 SHA-256 and a 32-byte salt.
    Ps256,
    /// ECDSA on P-256 with SHA-256, signature as the raw 64-byte `r || s`.
    Es256,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Ps256 => "PS256",
            Self::Es256 => "ES256",
        }
    }

    /// The algorithm a JOSE `alg` value names. `none` and the HMAC algorithms are refused
    /// outright, whatever their case: an HS256 token "signed" with the issuer's public key
    /// as the HMAC secret is the classic forgery against verifiers that trust the header.
    pub fn from_jose_name(name: &str) -> Result<Algorithm, TokenError> {
        match name {
            "RS256" => Ok(Self::Rs256),
            "PS256" => Ok(Self::Ps256),
            "ES256" => Ok(Self::Es256),
            _ if name.eq_ignore_ascii_case("none") || name.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("HS")) => {
                Err(TokenError::AlgorithmRefused(shown(name)))
            }
            _ => Err(TokenError::AlgorithmUnsupported(shown(name))),
        }
    }
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The JOSE header fields the verifier uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    pub alg: Algorithm,
    pub kid: Option<String>,
}

/// A token split into its parts; the signature has not been checked.
#[derive(Debug)]
pub(crate) struct UnverifiedJws<'a> {
    pub header: Header,
    /// `base64url(header) "." base64url(payload)`: the bytes the signature covers.
    pub signing_input: &'a [u8],
    pub payload: Vec<u8>,
    pub signature: Vec<u8>,
}

/// Splits and decodes a compact JWS and checks its header.
pub(crate) fn parse(token: &str) -> Result<UnverifiedJws<'_>, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::TooLarge { len: token.len() });
    }
    let [header_b64, payload_b64, signature_b64] = split_parts(token)?;
    let header = parse_header(&decode_header_object(header_b64)?)?;
    let payload = decode_part(payload_b64, Part::Payload)?;
    let signature = decode_part(signature_b64, Part::Signature)?;
    if signature.is_empty() {
        return Err(TokenError::Malformed("the signature is empty"));
    }
    let signing_input = &token.as_bytes()[..header_b64.len() + 1 + payload_b64.len()];
    Ok(UnverifiedJws { header, signing_input, payload, signature })
}

/// The claims of a payload whose signature has been verified.
pub(crate) fn parse_claims(payload: &[u8]) -> Result<Map<String, Value>, TokenError> {
    match serde_json::from_slice(payload) {
        Ok(Value::Object(claims)) => Ok(claims),
        Ok(_) => Err(TokenError::Malformed("the payload is not a JSON object")),
        Err(_) => Err(TokenError::Malformed("the payload is not JSON")),
    }
}

/// Whether `password` has the shape of a JWS: three base64url parts whose first decodes to
/// a JSON object with an `alg`. Cheap, and false for any plausible RADIUS password.
pub fn looks_like_jwt(password: &str) -> bool {
    split_parts(password).is_ok_and(|[header, _, _]| {
        decode_header_object(header).is_ok_and(|h| h.get("alg").is_some_and(Value::is_string))
    })
}

fn split_parts(token: &str) -> Result<[&str; 3], TokenError> {
    let mut parts = token.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(header), Some(payload), Some(signature), None) => {
            if header.is_empty() || payload.is_empty() {
                return Err(TokenError::Malformed("a part is empty"));
            }
            Ok([header, payload, signature])
        }
        _ => Err(TokenError::Malformed("not three dot-separated parts")),
    }
}

/// A part of a compact JWS, for error messages.
#[derive(Copy, Clone)]
enum Part {
    Header,
    Payload,
    Signature,
}

fn decode_part(encoded: &str, part: Part) -> Result<Vec<u8>, TokenError> {
    URL_SAFE_NO_PAD.decode(encoded).map_err(|_| {
        TokenError::Malformed(match part {
            Part::Header => "the header is not base64url",
            Part::Payload => "the payload is not base64url",
            Part::Signature => "the signature is not base64url",
        })
    })
}

fn decode_header_object(encoded: &str) -> Result<Map<String, Value>, TokenError> {
    match serde_json::from_slice(&decode_part(encoded, Part::Header)?) {
        Ok(Value::Object(object)) => Ok(object),
        _ => Err(TokenError::Malformed("the header is not a JSON object")),
    }
}

fn parse_header(header: &Map<String, Value>) -> Result<Header, TokenError> {
    let alg = match header.get("alg") {
        Some(Value::String(alg)) => Algorithm::from_jose_name(alg)?,
        Some(_) => return Err(TokenError::Malformed("the header's alg is not a string")),
        None => return Err(TokenError::Malformed("the header has no alg")),
    };
    // RFC 7515 §4.1.11: a verifier must reject a token whose `crit` lists extensions it does
    // not implement, and this one implements none.
    if header.contains_key("crit") {
        return Err(TokenError::CriticalHeader);
    }
    let kid = match header.get("kid") {
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(TokenError::Malformed("the header's kid is not a string")),
        None => None,
    };
    Ok(Header { alg, kid })
}
