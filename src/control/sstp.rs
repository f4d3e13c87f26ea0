//! SSTP sign-in on the control plane: a worker's MS-CHAPv2 response is checked against
//! the local NT-hash list (`[sstp] local_users_file`) or by the RADIUS servers; a
//! certificate a worker's EAP-TLS verified is admitted like an OpenVPN client's (refused
//! when revoked, named by its CN). An admitted client gets its address from the pools
//! like an OpenVPN client. MS-CHAPv2 counts as the `radius` method of `[auth] require`,
//! EAP-TLS as `certificate`.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Instant;

use anyhow::Context as _;
use tracing::warn;

use super::auth::Refusal;
use super::{Admission, ClientInfo, ControlPlane};
use crate::config::{AuthRequirement, Config};
use crate::crypto::mschapv2::{self, PasswordHash};
use crate::dataplane::{LocalHandle, SstpGrant, WorkerCommand};
use crate::pki::client_identity;
use crate::proto::ppp::{AuthMethod, AuthVerdict, MsChapV2Verify, NetworkConfig, SessionKeys};
use crate::proto::radius::{AccessReply, AccessRequest, MsChap2Response};

/// Whether `[auth] require` admits passwords alone (MS-CHAPv2, the `radius` method).
fn passwords_alone(require: &[AuthRequirement]) -> bool {
    require.iter().any(|r| r.radius && !r.certificate && !r.token)
}

/// Whether `[auth] require` admits certificates alone (EAP-TLS).
fn certificates_alone(require: &[AuthRequirement]) -> bool {
    require.iter().any(|r| r.certificate && !r.radius && !r.token)
}

/// The PPP authentication protocol SSTP clients are offered first, and the one offered
/// when they refuse it: EAP (for EAP-TLS) when certificates alone are admitted, since a
/// certificate is the stronger proof; MS-CHAPv2 when passwords alone are.
pub fn ppp_auth(config: &Config) -> (AuthMethod, Option<AuthMethod>) {
    let require = &config.auth.require;
    match (certificates_alone(require), passwords_alone(require)) {
        (true, true) => (AuthMethod::Eap, Some(AuthMethod::MsChapV2)),
        (true, false) => (AuthMethod::Eap, None),
        (false, _) => (AuthMethod::MsChapV2, None),
    }
}

/// `[sstp] local_users_file`: NT password hashes by user name.
#[derive(Default)]
pub struct LocalUsers(HashMap<String, PasswordHash>);

impl LocalUsers {
    /// Reads the file when SSTP is enabled and one is configured; lines are
    /// `user:NTHASHHEX`, blank lines and `#` comments are skipped.
    pub fn load(config: &Config) -> anyhow::Result<LocalUsers> {
        let Some(path) = config.sstp.local_users_file.as_ref().filter(|_| config.sstp.enabled) else {
            return Ok(LocalUsers::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the SSTP local users file {}", path.display()))?;
        LocalUsers::parse(&text).with_context(|| format!("SSTP local users file {}", path.display()))
    }

    fn parse(text: &str) -> anyhow::Result<LocalUsers> {
        let mut users = HashMap::new();
        for (number, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (user, hash) = line
                .rsplit_once(':')
                .with_context(|| format!("line {number}: expected user:NTHASHHEX (32 hex digits)"))?;
            let hash = parse_nt_hash(hash.trim())
                .with_context(|| format!("line {number}: the NT hash must be 32 hex digits"))?;
            if users.insert(user.trim().to_string(), hash).is_some() {
                anyhow::bail!("line {number}: user {:?} is listed twice", user.trim());
            }
        }
        Ok(LocalUsers(users))
    }

    fn get(&self, user: &str) -> Option<&PasswordHash> {
        self.0.get(user)
    }
}

fn parse_nt_hash(hex: &str) -> Option<PasswordHash> {
    if hex.len() != 32 || !hex.is_ascii() {
        return None;
    }
    let mut hash = [0u8; 16];
    for (i, byte) in hash.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(hash)
}

/// The name MS-CHAPv2 hashes: the Response's Name without a `DOMAIN\` prefix
/// (RFC 2759 §4).
fn account_name(user: &str) -> &str {
    user.rsplit_once('\\').map_or(user, |(_, name)| name)
}

/// Checks a response against a local NT hash: the verdict the PPP server sends.
fn verify_locally(hash: &PasswordHash, request: &MsChapV2Verify) -> AuthVerdict {
    let name = account_name(&request.user).as_bytes();
    let matches = mschapv2::verify_nt_response(
        hash,
        &request.authenticator_challenge,
        &request.peer_challenge,
        name,
        &request.nt_response,
    );
    if !matches {
        return AuthVerdict::Failure { message: None };
    }
    AuthVerdict::Success {
        authenticator_response: mschapv2::generate_authenticator_response(
            hash,
            &request.nt_response,
            &request.peer_challenge,
            &request.authenticator_challenge,
            name,
        ),
        keys: mschapv2::mppe_keys(hash, &request.nt_response).into(),
    }
}

/// What the checks concluded for one SSTP client.
pub enum SstpResult {
    Admit { admission: Admission, verdict: AuthVerdict },
    Refuse { refusal: Refusal, verdict: AuthVerdict },
}

pub struct SstpOutcome {
    asked: Instant,
    handle: LocalHandle,
    peer: SocketAddr,
    user: String,
    result: SstpResult,
}

fn refuse(kind: &'static str, reason: impl Into<String>) -> SstpResult {
    SstpResult::Refuse { refusal: Refusal::new(kind, reason), verdict: AuthVerdict::Failure { message: None } }
}

/// A RADIUS answer to an MS-CHAPv2 Access-Request, as the PPP server's verdict.
fn from_radius(user: &str, reply: Result<AccessReply, String>) -> SstpResult {
    match reply {
        Ok(AccessReply::Accept(mut info)) => {
            let (Some(success), Some(send), Some(recv)) =
                (info.ms_chap2_success.take(), info.mppe_send_key.take(), info.mppe_recv_key.take())
            else {
                return refuse(
                    "radius_reject",
                    "the RADIUS server accepted without MS-CHAP2-Success and MPPE keys, which SSTP needs",
                );
            };
            SstpResult::Admit {
                admission: Admission::from_radius(user.to_string(), info),
                verdict: AuthVerdict::Success {
                    authenticator_response: success.text,
                    keys: SessionKeys::Mppe { send, recv },
                },
            }
        }
        Ok(AccessReply::Reject { reply_message, ms_chap_error, .. }) => SstpResult::Refuse {
            refusal: Refusal::new(
                "radius_reject",
                reply_message.unwrap_or_else(|| "wrong username or password".to_string()),
            ),
            verdict: AuthVerdict::Failure { message: ms_chap_error.map(|m| m.text) },
        },
        Ok(AccessReply::Challenge { .. }) => {
            refuse("radius_reject", "the RADIUS server sent a challenge, which MS-CHAPv2 over SSTP cannot answer")
        }
        Err(e) => {
            warn!(error = %e, "RADIUS authentication failed");
            refuse("radius_unreachable", "no authentication server answered")
        }
    }
}

impl ControlPlane {
    /// An SSTP client's MS-CHAPv2 response: checked locally at once, or through RADIUS
    /// by a task whose outcome comes back to the loop.
    pub(super) fn verify_sstp(&mut self, handle: LocalHandle, peer: SocketAddr, request: MsChapV2Verify) {
        let mut outcome =
            SstpOutcome { asked: Instant::now(), handle, peer, user: request.user.clone(), result: refuse("", "") };
        if !passwords_alone(&self.config.auth.require) {
            outcome.result = refuse("method_not_allowed", "passwords alone (MS-CHAPv2) are not accepted here");
            return self.finish_sstp(outcome);
        }
        if let Some(hash) = self.local_users.get(account_name(&request.user)) {
            let verdict = verify_locally(hash, &request);
            outcome.result = match verdict {
                AuthVerdict::Success { .. } => {
                    SstpResult::Admit { admission: Admission::plain(request.user.clone(), "local"), verdict }
                }
                AuthVerdict::Failure { .. } => {
                    SstpResult::Refuse { refusal: Refusal::new("local_reject", "wrong username or password"), verdict }
                }
            };
            return self.finish_sstp(outcome);
        }
        let Some(radius) = self.radius.clone() else {
            outcome.result = refuse("local_reject", "unknown user (not in the local users file)");
            return self.finish_sstp(outcome);
        };
        let response = MsChap2Response {
            ident: request.ident,
            peer_challenge: request.peer_challenge,
            nt_response: request.nt_response,
        };
        let mut access = AccessRequest::ms_chap_v2(request.user.clone(), request.authenticator_challenge, response);
        access.calling_station_id = Some(peer.to_string());
        let results = self.sstp_outcomes.clone();
        tokio::spawn(async move {
            outcome.result = from_radius(&outcome.user, radius.access(access).await);
            let _ = results.send(outcome);
        });
    }

    /// Turns a verdict into the worker's answer, admitting the client if it passed.
    pub(super) fn finish_sstp(&mut self, outcome: SstpOutcome) {
        let SstpOutcome { asked, handle, peer, user, result } = outcome;
        self.metrics.auth_decided(asked.elapsed(), None);
        let (verdict, grant) = match result {
            SstpResult::Refuse { refusal, verdict } => {
                *self.refusals.entry(refusal.kind).or_default() += 1;
                warn!(%peer, transport = "sstp", %user, reason = %refusal.reason, kind = refusal.kind, "authentication refused");
                (verdict, None)
            }
            SstpResult::Admit { admission, verdict } => {
                let client = ClientInfo { cipher: None, version: None, platform: Some("SSTP") };
                match self.admit(handle, peer, "sstp", None, &client, admission) {
                    Ok((peer_id, address)) => (verdict, Some(SstpGrant { peer_id, network: self.ipcp(address) })),
                    // The reason is logged by admit; the client gets the generic 691.
                    Err(_) => (AuthVerdict::Failure { message: None }, None),
                }
            }
        };
        self.shared.inboxes[handle.worker].send(WorkerCommand::SstpAuthResult { handle, verdict, grant });
    }

    /// A client certificate a worker's EAP-TLS verified: admitted like an OpenVPN
    /// client's certificate (checked against the revocations current now, named by its
    /// CN, replacing an older session of the same certificate), answered with
    /// [`WorkerCommand::SstpCertificateResult`].
    pub(super) fn admit_sstp_certificate(&mut self, handle: LocalHandle, peer: SocketAddr, certificate: Vec<u8>) {
        let asked = Instant::now();
        let refusal = match client_identity(&certificate) {
            Err(_) => Err(Refusal::new("bad_certificate", "the client certificate cannot be read")),
            Ok(identity) if !certificates_alone(&self.config.auth.require) => Err(Refusal::new(
                "method_not_allowed",
                format!("certificates alone (EAP-TLS) are not accepted here ({})", identity.common_name),
            )),
            Ok(identity) => match self.trust.is_revoked(&certificate) {
                Some(why) => {
                    warn!(%peer, user = %identity.common_name, thumbprint = %identity.thumbprint, %why, "revoked certificate refused");
                    Err(Refusal::new("revoked", "certificate revoked"))
                }
                None => Ok(identity),
            },
        };
        self.metrics.auth_decided(asked.elapsed(), None);
        let grant = match refusal {
            Err(refusal) => {
                *self.refusals.entry(refusal.kind).or_default() += 1;
                warn!(%peer, transport = "sstp", reason = %refusal.reason, kind = refusal.kind, "authentication refused");
                None
            }
            Ok(identity) => {
                let admission = Admission::plain(identity.common_name.clone(), "certificate");
                let client = ClientInfo { cipher: None, version: None, platform: Some("SSTP") };
                self.admit(handle, peer, "sstp", Some((certificate, identity)), &client, admission)
                    .ok()
                    .map(|(peer_id, address)| SstpGrant { peer_id, network: self.ipcp(address) })
            }
        };
        self.shared.inboxes[handle.worker].send(WorkerCommand::SstpCertificateResult { handle, grant });
    }

    /// The addresses IPCP hands an SSTP client: its own, the gateway's end of its pool,
    /// and the first two IPv4 DNS servers.
    fn ipcp(&self, address: Ipv4Addr) -> NetworkConfig {
        let local = self
            .pools
            .pool(address)
            .map_or(Ipv4Addr::from(u32::from(self.config.network.pool.network()) + 1), |p| p.gateway_address());
        let mut dns = self.config.network.dns_servers.iter().filter_map(|a| match a {
            std::net::IpAddr::V4(v4) => Some(*v4),
            std::net::IpAddr::V6(_) => None,
        });
        NetworkConfig { local, peer: address, primary_dns: dns.next(), secondary_dns: dns.next() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eap_is_offered_when_certificates_alone_are_admitted() {
        let mut config = Config::default();
        let parse = |list: &[&str]| list.iter().map(|r| r.parse::<AuthRequirement>().unwrap()).collect::<Vec<_>>();
        config.auth.require = parse(&["certificate", "radius"]);
        assert_eq!(ppp_auth(&config), (AuthMethod::Eap, Some(AuthMethod::MsChapV2)));
        config.auth.require = parse(&["certificate"]);
        assert_eq!(ppp_auth(&config), (AuthMethod::Eap, None));
        config.auth.require = parse(&["radius"]);
        assert_eq!(ppp_auth(&config), (AuthMethod::MsChapV2, None));
        config.auth.require = parse(&["certificate+radius", "radius"]);
        assert_eq!(ppp_auth(&config), (AuthMethod::MsChapV2, None));
    }

    #[test]
    fn local_users_file() {
        let users = LocalUsers::parse(
            "# comment\n\nalice:8846F7EAEE8FB117AD06BDD830B7586C\n bob : 00112233445566778899aabbccddeeff \n",
        )
        .unwrap();
        assert_eq!(users.get("alice"), Some(&mschapv2::nt_password_hash("password")));
        assert_eq!(users.get("bob").unwrap()[1], 0x11);
        assert!(users.get("carol").is_none());
        assert!(LocalUsers::parse("alice").err().expect("refused").to_string().contains("line 1"));
        assert!(LocalUsers::parse("alice:1234").err().expect("refused").to_string().contains("32 hex"));
        let twice = "a:8846F7EAEE8FB117AD06BDD830B7586C\na:8846F7EAEE8FB117AD06BDD830B7586C";
        assert!(LocalUsers::parse(twice).err().expect("refused").to_string().contains("twice"));
    }

    #[test]
    fn verifies_the_rfc_2759_response() {
        // RFC 2759 §9.2: user "User", password "clientPass".
        let hex = |s: &str| -> Vec<u8> {
            (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
        };
        let request = MsChapV2Verify {
            user: "DOMAIN\\User".into(),
            ident: 1,
            authenticator_challenge: hex("5B5D7C7D7B3F2F3E3C2C602132262628").try_into().unwrap(),
            peer_challenge: hex("21402324255E262A28295F2B3A337C7E").try_into().unwrap(),
            nt_response: hex("82309ECD8D708B5EA08FAA3981CD83544233114A3D85D6DF").try_into().unwrap(),
        };
        let hash = mschapv2::nt_password_hash("clientPass");
        match verify_locally(&hash, &request) {
            AuthVerdict::Success { authenticator_response, keys } => {
                assert_eq!(authenticator_response, "S=407A5589115FD0D6209F510FE9C04566932CDA56");
                assert!(matches!(keys, SessionKeys::Mppe { .. }));
            }
            other => panic!("expected success, got {other:?}"),
        }
        let wrong = mschapv2::nt_password_hash("wrongPass");
        assert_eq!(verify_locally(&wrong, &request), AuthVerdict::Failure { message: None });
    }
}
