//! Verification of OIDC / Microsoft Entra ID access tokens (JWTs) that users present as
//! their VPN password.
//!
//! - [`verify`] checks a token against a key set and a [`TokenPolicy`]; it does no I/O.
//! - [`fetch_jwks`] loads a key set from a file, a URL or OIDC discovery (blocking: run it
//!   on a blocking thread).
//! - [`KeyCache`] decides when to fetch: periodically, and when a token names a key the
//!   set lacks (rate-limited), keeping the last good set when a fetch fails.
//!
//! Only RS256, PS256 and ES256 are accepted; `none` and the HMAC algorithms are refused
//! before any key is looked at.

mod cache;
mod fetch;
mod jwks;
mod jwt;
mod policy;

#[cfg(test)]
mod fetch_tests;
#[cfg(test)]
mod tests;

use serde_json::{Map, Value};

pub use cache::{KeyCache, RefreshReason, RefreshTiming};
pub use fetch::{FetchError, HttpTrust, JwksSource, fetch_jwks};
pub use jwks::{Jwks, JwksError, RSA_BITS, SkippedKey};
pub use jwt::{Algorithm, MAX_TOKEN_LEN, looks_like_jwt};
pub use policy::{
    ClaimCondition, ClaimTest, DEFAULT_CLOCK_SKEW, DEFAULT_GROUPS_CLAIM, GroupPool, MAX_CLOCK_SKEW, TokenPolicy,
};

/// A token that passed signature and policy checks.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedToken {
    /// `sub`: stable for the user (and, in Entra ID, for the application).
    pub subject: String,
    /// For logs and status: `upn`, `preferred_username`, `unique_name`, `email` or `sub`,
    /// the first present. Chosen by the identity provider's users: not a safe file name.
    pub user_name: String,
    pub issuer: String,
    /// `tid`, when the token has one.
    pub tenant_id: Option<String>,
    /// The policy's groups claim, empty when the token has none.
    pub groups: Vec<String>,
    /// `exp`, seconds since 1970: the session should not outlive it without a new token.
    pub expires_at: u64,
    /// The address pool the group mapping chose, if any mapping matched.
    pub pool: Option<String>,
    /// All claims, for anything the fields above do not cover (e.g. Entra's `oid`).
    pub claims: Map<String, Value>,
}

/// Why a token was refused. The text suits both the log and an `AUTH_FAILED` reason: it
/// never contains the token or its signature, and every token-supplied value in it is
/// shortened and stripped of control characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is {len} bytes long, more than the {MAX_TOKEN_LEN} accepted")]
    TooLarge { len: usize },
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    #[error("algorithm {0} refused")]
    AlgorithmRefused(String),
    #[error("algorithm {0} not supported (RS256, PS256 and ES256 are)")]
    AlgorithmUnsupported(String),
    #[error("token has critical header extensions (crit), which are not supported")]
    CriticalHeader,
    /// The key set may be out of date: see [`KeyCache::start_refresh_for_unknown_key`].
    #[error("unknown signing key id {0}")]
    UnknownKeyId(String),
    #[error("token names no signing key (kid) and several keys could have signed it")]
    AmbiguousKey,
    #[error("no signing key for algorithm {0}")]
    NoKeyForAlgorithm(Algorithm),
    #[error("algorithm {alg} does not match signing key {kid} ({key})")]
    KeyAlgorithmMismatch { alg: Algorithm, kid: String, key: String },
    #[error("bad {alg} signature{}", .kid.as_ref().map(|kid| format!(" for key {kid}")).unwrap_or_default())]
    BadSignature { kid: Option<String>, alg: Algorithm },
    #[error("token expired {} ago", human_duration(*.ago_secs))]
    Expired { ago_secs: u64 },
    #[error("token not valid for another {}", human_duration(*.in_secs))]
    NotYetValid { in_secs: u64 },
    #[error("token issued {} in the future", human_duration(*.in_secs))]
    IssuedInFuture { in_secs: u64 },
    #[error("missing claim {0}")]
    MissingClaim(String),
    #[error("claim {claim} is not {expected}")]
    BadClaim { claim: String, expected: &'static str },
    #[error("issuer {0} not allowed")]
    IssuerNotAllowed(String),
    #[error("audience {0} not allowed")]
    AudienceNotAllowed(String),
    #[error("tenant {0} not allowed")]
    TenantNotAllowed(String),
    /// Holds the condition, e.g. "claim amr containing mfa".
    #[error("missing {0}")]
    ConditionNotMet(String),
    #[error("user is in none of the allowed groups")]
    NotInAllowedGroup,
    #[error(
        "token lists no {claim}: the user is in too many groups for a token (Entra ID group overage); \
         emit only the groups assigned to the application"
    )]
    GroupOverage { claim: String },
}

/// Verifies `token`'s signature with `keys`, then applies `policy` at time `now_unix`
/// (seconds since 1970).
pub fn verify(token: &str, keys: &Jwks, policy: &TokenPolicy, now_unix: u64) -> Result<VerifiedToken, TokenError> {
    let jws = jwt::parse(token)?;
    keys.verify_signature(jws.header.kid.as_deref(), jws.header.alg, jws.signing_input, &jws.signature)?;
    let claims = jwt::parse_claims(&jws.payload)?;
    policy.check(claims, now_unix)
}

/// A token-supplied string made fit for a log line or an `AUTH_FAILED` reason: anything but
/// printable ASCII escaped (no control or bidi characters), at most 128 characters kept
/// (room for any issuer URL an operator has to compare).
fn shown(text: &str) -> String {
    const MAX_CHARS: usize = 128;
    let mut out = String::new();
    for (index, c) in text.chars().enumerate() {
        if index == MAX_CHARS {
            out.push_str("...");
            break;
        }
        if c == ' ' || c.is_ascii_graphic() {
            out.push(c);
        } else {
            out.extend(c.escape_default());
        }
    }
    out
}

/// "42 seconds", "5 minutes", "3 hours", "12 days": seconds below 2 minutes, minutes below
/// 2 hours, hours below 2 days, then days.
fn human_duration(secs: u64) -> String {
    let (count, unit) = match secs {
        0..120 => (secs, "second"),
        120..7_200 => (secs / 60, "minute"),
        7_200..172_800 => (secs / 3_600, "hour"),
        _ => (secs / 86_400, "day"),
    };
    if count == 1 { format!("1 {unit}") } else { format!("{count} {unit}s") }
}
