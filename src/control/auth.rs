//! Which check admits a client: the configured combinations (`[auth] require`) matched
//! against what the client presented (a certificate, a password, a token, or the answer
//! to an MFA challenge). Pure functions; the control plane runs the checks.

use base64::Engine as _;

use crate::auth::token::looks_like_jwt;
use crate::config::AuthRequirement;

/// What the OpenVPN password field carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Password {
    None,
    /// A password for RADIUS.
    Plain(String),
    /// An OIDC / Entra ID access token.
    Token(String),
    /// The answer to a dynamic challenge: `CRV1::<state id>::<response>`.
    ChallengeResponse {
        state_id: String,
        response: String,
    },
}

impl Password {
    pub fn classify(password: &str) -> Password {
        if password.is_empty() {
            return Password::None;
        }
        if let Some(rest) = password.strip_prefix("CRV1::")
            && let Some((state_id, response)) = rest.split_once("::")
        {
            return Password::ChallengeResponse { state_id: state_id.to_string(), response: response.to_string() };
        }
        if looks_like_jwt(password) {
            Password::Token(password.to_string())
        } else {
            Password::Plain(password.to_string())
        }
    }
}

/// The check to run besides the certificate (which TLS has verified when present).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    CertificateOnly,
    Radius,
    Token,
}

/// A refusal: the reason for the client (in AUTH_FAILED) and a short kind for counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: String,
    pub kind: &'static str,
}

impl Refusal {
    pub fn new(kind: &'static str, reason: impl Into<String>) -> Refusal {
        Refusal { reason: reason.into(), kind }
    }
}

/// Picks the combination to check. A password, token or challenge answer, when given,
/// is checked: the first combination that uses it (and whose certificate need is met)
/// wins. Without one, the first certificate-only combination does.
pub fn choose(require: &[AuthRequirement], has_certificate: bool, password: &Password) -> Result<Check, Refusal> {
    let certificate_ok = |r: &&AuthRequirement| !r.certificate || has_certificate;
    let wanted: fn(&AuthRequirement) -> bool = match password {
        Password::None => |r| !r.needs_password(),
        Password::Plain(_) | Password::ChallengeResponse { .. } => |r| r.radius,
        Password::Token(_) => |r| r.token,
    };
    if let Some(r) = require.iter().filter(certificate_ok).find(|r| wanted(r)) {
        return Ok(if r.radius {
            Check::Radius
        } else if r.token {
            Check::Token
        } else {
            Check::CertificateOnly
        });
    }
    // A password nothing asks for (a profile with auth-user-pass used on a gateway
    // that only wants certificates) does not stand in the way of a certificate.
    if !matches!(password, Password::None | Password::ChallengeResponse { .. })
        && require.iter().filter(certificate_ok).any(|r| !r.needs_password())
    {
        return Ok(Check::CertificateOnly);
    }
    // Nothing fits: say what is missing.
    let any = |f: fn(&AuthRequirement) -> bool| require.iter().any(f);
    Err(match password {
        _ if !has_certificate && require.iter().all(|r| r.certificate) => {
            Refusal::new("certificate_required", "a client certificate is required")
        }
        Password::None => Refusal::new("password_required", "a username and password are required"),
        Password::Token(_) if !any(|r| r.token) => Refusal::new("method_not_allowed", "tokens are not accepted here"),
        Password::Plain(_) | Password::ChallengeResponse { .. } if !any(|r| r.radius) => {
            if any(|r| r.token) {
                Refusal::new("token_required", "the password must be an access token")
            } else {
                Refusal::new("method_not_allowed", "passwords are not accepted here")
            }
        }
        _ => Refusal::new("certificate_required", "a client certificate is required with this password"),
    })
}

/// The OpenVPN dynamic-challenge message (after `AUTH_FAILED,`): the client shows
/// `prompt`, reads the response, and reconnects with `CRV1::<state_id>::<response>`.
pub fn dynamic_challenge(state_id: &str, user: &str, prompt: &str) -> String {
    let user = base64::engine::general_purpose::STANDARD.encode(user);
    // The prompt is the last field: colons in it are fine, commas and NULs are not.
    let prompt: String = prompt.chars().map(|c| if c == ',' || c.is_control() { ' ' } else { c }).collect();
    format!("CRV1:R,E:{state_id}:{user}:{prompt}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(list: &[&str]) -> Vec<AuthRequirement> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    const JWT: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln";

    #[test]
    fn classifies_passwords() {
        assert_eq!(Password::classify(""), Password::None);
        assert_eq!(Password::classify("hunter2"), Password::Plain("hunter2".into()));
        assert_eq!(
            Password::classify("CRV1::abc::123456"),
            Password::ChallengeResponse { state_id: "abc".into(), response: "123456".into() }
        );
        assert_eq!(Password::classify(JWT), Password::Token(JWT.into()));
        assert_eq!(Password::classify("CRV1::no-response"), Password::Plain("CRV1::no-response".into()));
    }

    #[test]
    fn the_credentials_presented_decide_the_combination() {
        let r = req(&["certificate", "certificate+radius", "token"]);
        let pw = Password::Plain("p".into());
        assert_eq!(choose(&r, true, &Password::None), Ok(Check::CertificateOnly));
        assert_eq!(choose(&r, true, &pw), Ok(Check::Radius), "a password given is checked");
        assert_eq!(choose(&r, false, &Password::Token(JWT.into())), Ok(Check::Token));
        assert_eq!(choose(&r, false, &pw).unwrap_err().kind, "certificate_required");
        assert_eq!(choose(&r, false, &Password::None).unwrap_err().kind, "password_required");
    }

    #[test]
    fn refusals_say_what_is_missing() {
        assert_eq!(
            choose(&req(&["certificate"]), false, &Password::None).unwrap_err().reason,
            "a client certificate is required"
        );
        assert_eq!(
            choose(&req(&["radius"]), false, &Password::Token(JWT.into())).unwrap_err().reason,
            "tokens are not accepted here"
        );
        assert_eq!(
            choose(&req(&["token"]), false, &Password::Plain("p".into())).unwrap_err().reason,
            "the password must be an access token"
        );
        assert_eq!(choose(&req(&["certificate+radius"]), true, &Password::None).unwrap_err().kind, "password_required");
        assert_eq!(
            choose(&req(&["certificate"]), true, &Password::Plain("p".into())),
            Ok(Check::CertificateOnly),
            "a password nobody asked for is ignored"
        );
    }

    #[test]
    fn challenge_message_follows_crv1() {
        assert_eq!(dynamic_challenge("s1", "bob", "Enter code, please"), "CRV1:R,E:s1:Ym9i:Enter code  please");
    }
}
