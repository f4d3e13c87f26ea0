//! What a correctly signed token must also say before it lets a user in: who issued it,
//! for whom, when, and with which claims and groups.

use std::fmt;
use std::time::Duration;

use serde_json::{Map, Value};

use super::{TokenError, VerifiedToken, shown};

/// Clock difference tolerated between the gateway and the identity provider.
pub const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(120);
/// Largest skew a configuration should allow: beyond this, an expired token lives on.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(600);
/// The claim Entra ID and most OIDC providers put group memberships in.
pub const DEFAULT_GROUPS_CLAIM: &str = "groups";

/// Claims tried in order for the user name shown in logs and status: Entra ID work accounts
/// carry `upn`, v2 tokens `preferred_username`, v1 guest tokens `unique_name`.
const USER_NAME_CLAIMS: [&str; 4] = ["upn", "preferred_username", "unique_name", "email"];

/// The rules a token must pass after its signature is verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenPolicy {
    /// Accepted `iss` values, compared exactly. Entra ID v1 tokens say
    /// `https://sts.windows.net/{tenant}/`, v2 tokens `https://login.microsoftonline.com/{tenant}/v2.0`.
    pub issuers: Vec<String>,
    /// Accepted `aud` values; a token whose `aud` (a string or an array) names any of them passes.
    pub audiences: Vec<String>,
    /// When set, the `tid` claim must equal it (ASCII case-insensitively: it is a GUID).
    pub tenant_id: Option<String>,
    /// Applied to `exp`, `nbf` and `iat`.
    pub clock_skew: Duration,
    /// Every condition must hold.
    pub required_claims: Vec<ClaimCondition>,
    /// The claim listing the user's groups (`groups`, or `roles` for Entra app roles).
    pub groups_claim: String,
    /// When not empty, the user must be in at least one of these groups (exact match).
    pub allowed_groups: Vec<String>,
    /// Address pool by group: among the user's groups, the mapping with the highest
    /// priority wins; on a tie, the one listed first.
    pub group_pools: Vec<GroupPool>,
}

/// A condition on one claim, e.g. `amr` containing `mfa`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimCondition {
    pub claim: String,
    pub test: ClaimTest,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimTest {
    /// The claim is this string (or a number or boolean written this way in JSON).
    Equals(String),
    /// The claim is an array with this string as an element, or a space-separated list of
    /// words (as OAuth's `scp` is) with this word among them.
    Contains(String),
}

/// Users in `group` get addresses from the pool named `pool`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupPool {
    pub group: String,
    pub pool: String,
    pub priority: i32,
}

impl TokenPolicy {
    /// A policy checking issuer, audience and validity times only.
    pub fn new(issuers: Vec<String>, audiences: Vec<String>) -> TokenPolicy {
        TokenPolicy {
            issuers,
            audiences,
            tenant_id: None,
            clock_skew: DEFAULT_CLOCK_SKEW,
            required_claims: Vec::new(),
            groups_claim: DEFAULT_GROUPS_CLAIM.to_string(),
            allowed_groups: Vec::new(),
            group_pools: Vec::new(),
        }
    }

    /// Applies the policy to the claims of a token whose signature has been verified.
    pub(crate) fn check(&self, claims: Map<String, Value>, now_unix: u64) -> Result<VerifiedToken, TokenError> {
        let issuer = string_claim(&claims, "iss")?.ok_or_else(|| TokenError::MissingClaim("iss".to_string()))?;
        if !self.issuers.iter().any(|allowed| allowed == issuer) {
            return Err(TokenError::IssuerNotAllowed(shown(issuer)));
        }
        self.check_audience(&claims)?;
        let tenant_id = string_claim(&claims, "tid")?;
        if let Some(required) = &self.tenant_id {
            match tenant_id {
                Some(tid) if tid.eq_ignore_ascii_case(required) => {}
                Some(tid) => return Err(TokenError::TenantNotAllowed(shown(tid))),
                None => return Err(TokenError::MissingClaim("tid".to_string())),
            }
        }
        let expires_at = self.check_times(&claims, now_unix)?;
        if let Some(unmet) = self.required_claims.iter().find(|condition| !condition.holds(&claims)) {
            return Err(TokenError::ConditionNotMet(unmet.to_string()));
        }
        let groups = self.groups(&claims)?;
        if !self.allowed_groups.is_empty() && !groups.iter().any(|group| self.allowed_groups.contains(group)) {
            return Err(TokenError::NotInAllowedGroup);
        }
        let pool = self.pool_for(&groups);
        let subject = string_claim(&claims, "sub")?.ok_or_else(|| TokenError::MissingClaim("sub".to_string()))?;
        let user_name = USER_NAME_CLAIMS
            .iter()
            .find_map(|name| claims.get(*name).and_then(Value::as_str).filter(|value| !value.is_empty()))
            .unwrap_or(subject);
        Ok(VerifiedToken {
            subject: subject.to_string(),
            user_name: user_name.to_string(),
            issuer: issuer.to_string(),
            tenant_id: tenant_id.map(str::to_string),
            groups,
            expires_at,
            pool,
            claims,
        })
    }

    fn check_audience(&self, claims: &Map<String, Value>) -> Result<(), TokenError> {
        let audiences: Vec<&str> = match claims.get("aud") {
            Some(Value::String(aud)) => vec![aud],
            Some(Value::Array(auds)) => auds.iter().filter_map(Value::as_str).collect(),
            Some(_) => return Err(bad_claim("aud", "a string or an array of strings")),
            None => return Err(TokenError::MissingClaim("aud".to_string())),
        };
        if audiences.iter().any(|aud| self.audiences.iter().any(|allowed| allowed == aud)) {
            return Ok(());
        }
        Err(TokenError::AudienceNotAllowed(shown(&audiences.join(", "))))
    }

    /// Checks `exp` (required), `nbf` and `iat`; returns `exp`.
    fn check_times(&self, claims: &Map<String, Value>, now: u64) -> Result<u64, TokenError> {
        let skew = self.clock_skew.as_secs();
        let expires_at = numeric_date(claims, "exp")?.ok_or_else(|| TokenError::MissingClaim("exp".to_string()))?;
        if now >= expires_at.saturating_add(skew) {
            return Err(TokenError::Expired { ago_secs: now - expires_at });
        }
        if let Some(not_before) = numeric_date(claims, "nbf")?
            && not_before > now.saturating_add(skew)
        {
            return Err(TokenError::NotYetValid { in_secs: not_before - now });
        }
        if let Some(issued_at) = numeric_date(claims, "iat")?
            && issued_at > now.saturating_add(skew)
        {
            return Err(TokenError::IssuedInFuture { in_secs: issued_at - now });
        }
        Ok(expires_at)
    }

    fn groups(&self, claims: &Map<String, Value>) -> Result<Vec<String>, TokenError> {
        let name = &self.groups_claim;
        match claims.get(name) {
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| item.as_str().map(str::to_string))
                .collect::<Option<Vec<String>>>()
                .ok_or_else(|| bad_claim(name, "an array of strings")),
            Some(_) => Err(bad_claim(name, "an array of strings")),
            None => {
                let needs_groups = !self.allowed_groups.is_empty() || !self.group_pools.is_empty();
                if needs_groups && has_group_overage(claims, name) {
                    return Err(TokenError::GroupOverage { claim: name.clone() });
                }
                Ok(Vec::new())
            }
        }
    }

    fn pool_for(&self, groups: &[String]) -> Option<String> {
        let mut best: Option<&GroupPool> = None;
        for mapping in self.group_pools.iter().filter(|mapping| groups.contains(&mapping.group)) {
            if best.is_none_or(|best| mapping.priority > best.priority) {
                best = Some(mapping);
            }
        }
        best.map(|mapping| mapping.pool.clone())
    }
}

impl ClaimCondition {
    pub fn equals(claim: &str, value: &str) -> ClaimCondition {
        ClaimCondition { claim: claim.to_string(), test: ClaimTest::Equals(value.to_string()) }
    }

    pub fn contains(claim: &str, value: &str) -> ClaimCondition {
        ClaimCondition { claim: claim.to_string(), test: ClaimTest::Contains(value.to_string()) }
    }

    fn holds(&self, claims: &Map<String, Value>) -> bool {
        let Some(value) = claims.get(&self.claim) else {
            return false;
        };
        match &self.test {
            ClaimTest::Equals(expected) => scalar_equals(value, expected),
            ClaimTest::Contains(expected) => match value {
                Value::Array(items) => items.iter().any(|item| scalar_equals(item, expected)),
                Value::String(words) => words.split(' ').any(|word| word == expected),
                _ => false,
            },
        }
    }
}

/// `claim amr containing mfa`: reads well after "missing".
impl fmt::Display for ClaimCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.test {
            ClaimTest::Equals(value) => write!(f, "claim {} equal to {value}", self.claim),
            ClaimTest::Contains(value) => write!(f, "claim {} containing {value}", self.claim),
        }
    }
}

fn scalar_equals(value: &Value, expected: &str) -> bool {
    match value {
        Value::String(text) => text == expected,
        Value::Bool(flag) => expected == if *flag { "true" } else { "false" },
        Value::Number(number) => {
            let written = number.to_string();
            written == expected
        }
        _ => false,
    }
}

/// Entra ID leaves the groups claim out when a user is in more groups than a token can hold
/// (200 in a JWT) and points at Microsoft Graph instead, through `_claim_names`.
fn has_group_overage(claims: &Map<String, Value>, groups_claim: &str) -> bool {
    claims.get("_claim_names").and_then(|names| names.get(groups_claim)).is_some()
        || claims.get("hasgroups").and_then(Value::as_bool) == Some(true)
}

fn string_claim<'a>(claims: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, TokenError> {
    match claims.get(name) {
        Some(Value::String(value)) => Ok(Some(value)),
        Some(_) => Err(bad_claim(name, "a string")),
        None => Ok(None),
    }
}

/// A NumericDate (RFC 7519 §2): seconds since 1970, possibly with a fraction.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<u64>, TokenError> {
    let Some(value) = claims.get(name) else {
        return Ok(None);
    };
    let seconds = value.as_u64().or_else(|| {
        // `as` truncates the fraction and saturates absurdly large values.
        value.as_f64().filter(|secs| secs.is_finite() && *secs >= 0.0).map(|secs| secs as u64)
    });
    seconds.map(Some).ok_or_else(|| bad_claim(name, "a time in seconds since 1970"))
}

fn bad_claim(name: &str, expected: &'static str) -> TokenError {
    TokenError::BadClaim { claim: name.to_string(), expected }
}
