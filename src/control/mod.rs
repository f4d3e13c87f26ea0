//! The control plane: everything off the packet path. It decides authentication
//! (certificates, RADIUS with MFA challenges and accounting, OIDC tokens), hands out
//! tunnel addresses and peer-ids, keeps the session registry, and watches the trust
//! material (roots, CRLs, revoked thumbprints) so that a revocation takes effect at
//! once, cutting live sessions of a revoked certificate within a second.
//!
//! It runs on a tokio runtime apart from the workers and talks to them only by
//! message, so nothing here can stall a packet. Checks that wait (RADIUS, fetching a
//! token issuer's keys) run as tasks; their outcomes come back to the loop, which
//! alone owns the pools and the registry.

mod admin;
pub mod auth;
pub mod ike;
mod leases;
mod metrics;
mod peer_ids;
pub mod pools;
pub mod radius;
mod sstp;
pub mod tls;
pub mod token;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tracing::{error, info, warn};

use crate::admin::AdminCall;
use crate::config::Config;
use crate::crypto::AeadAlgorithm;
use crate::dataplane::counters::{DropReason, WorkerCounters, total_drops};
use crate::dataplane::table::Traffic;
use crate::dataplane::{ControlEvent, LocalHandle, Settings, Shared, WorkerCommand};
use crate::pki::{ClientIdentity, ServerIdentity, SourceStamp, Thumbprint, TrustStore, client_identity};
use crate::proto::openvpn::push::PushConfig;
use crate::proto::openvpn::session::{AuthDecision, AuthGrant, AuthRequest, CloseReason};
use crate::proto::radius::{
    AccessReply, AccessRequest, AccountingRequest, AcctStatusType, SessionUsage, TerminateCause, azure_policy_id_text,
};
use auth::{Check, Password, Refusal, choose, dynamic_challenge};
use leases::Leases;
use pools::Pools;
use radius::RadiusService;
use token::TokenService;

/// How often the trust sources are checked, and accounting and time limits served.
const TICK: Duration = Duration::from_secs(1);
/// How long an MFA challenge waits for its answer.
const CHALLENGE_LIFETIME: Duration = Duration::from_secs(180);

/// The result of the checks for one client.
struct Admission {
    /// For logs and accounting: the certificate's name, the RADIUS user or the token's user.
    user: String,
    method: &'static str,
    groups: Vec<String>,
    framed_ip: Option<Ipv4Addr>,
    session_timeout: Option<Duration>,
    classes: Vec<Vec<u8>>,
    interim: Option<Duration>,
    /// `sub` of the token a session was admitted with, which later tokens must match.
    token_subject: Option<String>,
}

enum Verdict {
    Admit(Admission),
    Refuse(Refusal),
    /// An MFA challenge from RADIUS: relayed to the client as a dynamic challenge.
    Challenge {
        state: Vec<u8>,
        prompt: String,
        user: String,
    },
    /// A renegotiation passed.
    Renewed,
}

/// What the session list and logs show about a client's software.
struct ClientInfo<'a> {
    cipher: Option<AeadAlgorithm>,
    version: Option<&'a str>,
    platform: Option<&'a str>,
}

/// A client being authenticated, and the verdict once known.
struct Outcome {
    /// When the worker asked.
    asked: Instant,
    handle: LocalHandle,
    peer: SocketAddr,
    transport: &'static str,
    certificate: Option<(Vec<u8>, ClientIdentity)>,
    request: Box<AuthRequest>,
    verdict: Verdict,
}

struct PendingChallenge {
    state: Vec<u8>,
    user: String,
    expires: Instant,
}

struct Accounting {
    session_id: String,
    classes: Vec<Vec<u8>>,
    interval: Duration,
    next_interim: Instant,
}

/// One connected client, as the control plane knows it.
struct SessionRecord {
    /// Unique for the life of the process (peer-ids are reused).
    id: u64,
    handle: LocalHandle,
    peer: SocketAddr,
    transport: &'static str,
    user: String,
    method: &'static str,
    /// The OpenVPN data cipher (SSTP has only its TLS).
    cipher: Option<AeadAlgorithm>,
    thumbprint: Option<Thumbprint>,
    certificate: Option<Vec<u8>>,
    address: Ipv4Addr,
    since: SystemTime,
    started: Instant,
    token_subject: Option<String>,
    accounting: Option<Accounting>,
    /// RADIUS Session-Timeout.
    expires: Option<Instant>,
}

pub struct ControlPlane {
    config: Config,
    /// Where `config` came from (`None`: the embedded defaults); reload reads it again.
    config_path: Option<std::path::PathBuf>,
    started: Instant,
    /// The TUN device, whose addresses follow the pools.
    tun: tun_rs::SyncDevice,
    next_session_id: u64,
    metrics: metrics::Metrics,
    shared: Arc<Shared>,
    server_identity: ServerIdentity,
    trust: TrustStore,
    trust_stamp: SourceStamp,
    pools: Pools,
    peer_ids: peer_ids::PeerIds,
    sessions: HashMap<u32, SessionRecord>,
    by_thumbprint: HashMap<Thumbprint, u32>,
    /// Peer-ids of sessions told to close, freed when their worker confirms.
    closing: HashSet<u32>,
    /// Which session holds each address (a reconnect inherits its predecessor's).
    address_owner: HashMap<Ipv4Addr, u32>,
    /// The address each client last had, offered again when free (also after a restart).
    leases: Leases,
    radius: Option<RadiusService>,
    tokens: Option<Arc<TokenService>>,
    challenges: HashMap<String, PendingChallenge>,
    outcomes: UnboundedSender<Outcome>,
    outcomes_rx: Option<UnboundedReceiver<Outcome>>,
    sstp_outcomes: UnboundedSender<sstp::SstpOutcome>,
    sstp_outcomes_rx: Option<UnboundedReceiver<sstp::SstpOutcome>>,
    /// `[sstp] local_users_file`, by user name.
    local_users: sstp::LocalUsers,
    /// Refusals by kind, for the statistics.
    refusals: BTreeMap<&'static str, u64>,
    /// What the IKEv2 responders check certificates against (kept in step with `trust`).
    ike_trust: Arc<ike::SharedTrust>,
    /// IKEv2 clients in an EAP conversation with RADIUS.
    ike_eap: HashMap<LocalHandle, ike::EapConversation>,
    ike_eap_outcomes: UnboundedSender<ike::EapOutcome>,
    ike_eap_outcomes_rx: Option<UnboundedReceiver<ike::EapOutcome>>,
}

impl ControlPlane {
    /// Builds the control plane; with RADIUS configured, call from within the tokio
    /// runtime (the RADIUS client binds its socket).
    pub async fn new(
        config: Config,
        config_path: Option<std::path::PathBuf>,
        shared: Arc<Shared>,
        tun: tun_rs::SyncDevice,
        server_identity: ServerIdentity,
        trust: TrustStore,
        ike_trust: Arc<ike::SharedTrust>,
    ) -> anyhow::Result<Self> {
        let radius =
            if config.radius.servers.is_empty() { None } else { Some(RadiusService::start(&config.radius).await?) };
        let tokens = if config.auth.uses(|r| r.token) { Some(TokenService::new(&config.token)?) } else { None };
        let capacity = shared.table.capacity() as u32;
        let leases = Leases::load(&config.gateway.state_dir);
        let (outcomes, outcomes_rx) = unbounded_channel();
        let (sstp_outcomes, sstp_outcomes_rx) = unbounded_channel();
        let (ike_eap_outcomes, ike_eap_outcomes_rx) = unbounded_channel();
        let local_users = sstp::LocalUsers::load(&config)?;
        Ok(ControlPlane {
            trust_stamp: TrustStore::stamp(&config),
            peer_ids: peer_ids::PeerIds::new(capacity, shared.inboxes.len()),
            pools: Pools::new(config.network.pool, &config.group_pools()),
            config,
            config_path,
            started: Instant::now(),
            tun,
            next_session_id: 1,
            metrics: metrics::Metrics::default(),
            shared,
            server_identity,
            trust,
            sessions: HashMap::new(),
            by_thumbprint: HashMap::new(),
            closing: HashSet::new(),
            address_owner: HashMap::new(),
            leases,
            radius,
            tokens,
            challenges: HashMap::new(),
            outcomes,
            outcomes_rx: Some(outcomes_rx),
            sstp_outcomes,
            sstp_outcomes_rx: Some(sstp_outcomes_rx),
            local_users,
            refusals: BTreeMap::new(),
            ike_trust,
            ike_eap: HashMap::new(),
            ike_eap_outcomes,
            ike_eap_outcomes_rx: Some(ike_eap_outcomes_rx),
        })
    }

    /// Runs until SIGINT or SIGTERM.
    pub async fn run(
        mut self,
        mut events: UnboundedReceiver<ControlEvent>,
        mut admin: tokio::sync::mpsc::Receiver<AdminCall>,
    ) -> anyhow::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut sigterm = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
        let mut sigint = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
        let mut sighup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
        let mut sigusr2 = signal(SignalKind::user_defined2()).context("cannot watch SIGUSR2")?;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut outcomes = self.outcomes_rx.take().context("the control plane runs once")?;
        let mut sstp_outcomes = self.sstp_outcomes_rx.take().context("the control plane runs once")?;
        let mut ike_eap_outcomes = self.ike_eap_outcomes_rx.take().context("the control plane runs once")?;
        if let Some(tokens) = &self.tokens {
            spawn_key_refresh(tokens);
        }
        loop {
            tokio::select! {
                Some(event) = events.recv() => self.on_event(event),
                Some(outcome) = outcomes.recv() => self.finish(outcome),
                Some(outcome) = sstp_outcomes.recv() => self.finish_sstp(outcome),
                Some(outcome) = ike_eap_outcomes.recv() => self.finish_ike_eap(outcome),
                _ = tick.tick() => self.on_tick(),
                Some(call) = admin.recv() => self.on_admin(call).await,
                _ = sighup.recv() => {
                    info!("SIGHUP: reloading the configuration");
                    // Refusals are logged by reload itself.
                    let _ = self.reload().await;
                }
                _ = sigusr2.recv() => self.log_statistics(),
                _ = sigterm.recv() => { info!("SIGTERM: shutting down"); break; }
                _ = sigint.recv() => { info!("SIGINT: shutting down"); break; }
            }
        }
        self.log_statistics();
        self.leases.save_if_changed();
        Ok(())
    }

    fn on_event(&mut self, event: ControlEvent) {
        match event {
            ControlEvent::Authenticate { handle, peer, transport, request } => {
                self.authenticate(handle, peer, transport, request)
            }
            ControlEvent::VerifySstp { handle, peer, request } => self.verify_sstp(handle, peer, *request),
            ControlEvent::AdmitSstpCertificate { handle, peer, certificate } => {
                self.admit_sstp_certificate(handle, peer, certificate)
            }
            ControlEvent::AuthorizeIke { handle, peer, request } => self.authorize_ike(handle, peer, *request),
            ControlEvent::IkeEap { handle, peer, identity, message } => {
                self.relay_ike_eap(handle, peer, identity, message)
            }
            ControlEvent::ClientMoved { handle, peer_id, peer } => self.client_moved(handle, peer_id, peer),
            ControlEvent::Closed { handle, peer, peer_id, address, traffic, reason } => {
                self.closed(handle, peer, peer_id, address, traffic, reason)
            }
        }
    }

    /// A client's session followed it to a new address (the sessions list and RADIUS
    /// accounting show that one from now on).
    fn client_moved(&mut self, handle: LocalHandle, peer_id: u32, peer: SocketAddr) {
        let Some(rec) = self.sessions.get_mut(&peer_id).filter(|r| r.handle == handle) else { return };
        info!(user = %rec.user, old_peer = %rec.peer, new_peer = %peer, transport = rec.transport, "client moved to a new address");
        rec.peer = peer;
    }

    fn on_tick(&mut self) {
        // Failures are logged; the previous material stays in force.
        let _ = self.check_trust(false);
        let now = Instant::now();
        self.challenges.retain(|_, c| c.expires > now);
        let expired: Vec<u32> = self
            .sessions
            .iter()
            .filter(|(id, r)| r.expires.is_some_and(|t| t <= now) && !self.closing.contains(id))
            .map(|(&id, _)| id)
            .collect();
        for peer_id in expired {
            let Some(rec) = self.sessions.get(&peer_id) else { continue };
            info!(user = %rec.user, peer = %rec.peer, "session time limit reached");
            self.closing.insert(peer_id);
            self.shared.inboxes[rec.handle.worker].send(WorkerCommand::Close {
                peer_id,
                reason: "session time limit reached".into(),
                notice: Some("RESTART".into()),
            });
        }
        self.send_interim_updates(now);
        self.leases.save_if_changed();
    }

    // ---- authentication -------------------------------------------------------------

    fn authenticate(
        &mut self,
        handle: LocalHandle,
        peer: SocketAddr,
        transport: &'static str,
        request: Box<AuthRequest>,
    ) {
        let mut outcome = Outcome {
            asked: Instant::now(),
            handle,
            peer,
            transport,
            certificate: None,
            request,
            verdict: Verdict::Renewed,
        };
        if outcome.request.renegotiation {
            return self.renegotiate(outcome);
        }
        if let Some(cert) = &outcome.request.client_cert {
            let Ok(identity) = client_identity(cert) else {
                outcome.verdict =
                    Verdict::Refuse(Refusal::new("bad_certificate", "the client certificate cannot be read"));
                return self.finish(outcome);
            };
            if let Some(why) = self.trust.is_revoked(cert) {
                warn!(%peer, user = %identity.common_name, thumbprint = %identity.thumbprint, %why, "revoked certificate refused");
                outcome.verdict = Verdict::Refuse(Refusal::new("revoked", "certificate revoked"));
                return self.finish(outcome);
            }
            outcome.certificate = Some((cert.to_vec(), identity));
        }
        let password = Password::classify(&outcome.request.password);
        let check = match choose(&self.config.auth.require, outcome.certificate.is_some(), &password) {
            Ok(check) => check,
            Err(refusal) => {
                outcome.verdict = Verdict::Refuse(refusal);
                return self.finish(outcome);
            }
        };
        match (check, password) {
            (Check::CertificateOnly, _) => {
                let user = outcome.certificate.as_ref().map_or_else(String::new, |(_, id)| id.common_name.clone());
                outcome.verdict = Verdict::Admit(Admission::plain(user, "certificate"));
                self.finish(outcome);
            }
            (Check::Radius, Password::ChallengeResponse { state_id, response }) => {
                match self.challenges.remove(&state_id).filter(|c| c.expires > Instant::now()) {
                    Some(challenge) => self.ask_radius(outcome, challenge.user, response, Some(challenge.state)),
                    None => {
                        outcome.verdict = Verdict::Refuse(Refusal::new(
                            "mfa_expired",
                            "the one-time code request expired or was already used; connect again",
                        ));
                        self.finish(outcome);
                    }
                }
            }
            (Check::Radius, Password::Plain(password)) => {
                let user = outcome.request.username.clone();
                self.ask_radius(outcome, user, password, None);
            }
            (Check::Token, Password::Token(token)) => self.ask_token(outcome, token, None),
            (_, _) => {
                outcome.verdict =
                    Verdict::Refuse(Refusal::new("password_required", "a username and password are required"));
                self.finish(outcome);
            }
        }
    }

    /// A renegotiation: token sessions show a valid token again (if configured); the
    /// others passed their checks when they started.
    fn renegotiate(&mut self, mut outcome: Outcome) {
        let Some(rec) = self.sessions.values().find(|r| r.handle == outcome.handle) else {
            outcome.verdict = Verdict::Refuse(Refusal::new("unknown_session", "session unknown to the gateway"));
            return self.finish(outcome);
        };
        if rec.method != "token" || !self.config.token.recheck_on_renegotiation {
            return self.finish(outcome);
        }
        let subject = rec.token_subject.clone();
        match Password::classify(&outcome.request.password) {
            Password::Token(token) => self.ask_token(outcome, token, subject),
            _ => {
                outcome.verdict =
                    Verdict::Refuse(Refusal::new("token_required", "the access token must be sent again"));
                self.finish(outcome);
            }
        }
    }

    fn ask_radius(&mut self, mut outcome: Outcome, user: String, password: String, state: Option<Vec<u8>>) {
        let Some(radius) = self.radius.clone() else {
            outcome.verdict = Verdict::Refuse(Refusal::new("method_not_allowed", "RADIUS is not configured"));
            return self.finish(outcome);
        };
        if user.is_empty() {
            outcome.verdict = Verdict::Refuse(Refusal::new("password_required", "a username is required"));
            return self.finish(outcome);
        }
        let mut request = AccessRequest::pap(user.clone(), password);
        request.state = state;
        request.calling_station_id = Some(outcome.peer.to_string());
        let results = self.outcomes.clone();
        tokio::spawn(async move {
            outcome.verdict = match radius.access(request).await {
                Ok(AccessReply::Accept(info)) => Verdict::Admit(Admission::from_radius(user, info)),
                Ok(AccessReply::Reject { reply_message, .. }) => Verdict::Refuse(Refusal::new(
                    "radius_reject",
                    reply_message.unwrap_or_else(|| "wrong username or password".to_string()),
                )),
                Ok(AccessReply::Challenge { state: Some(state), reply_message, .. }) => Verdict::Challenge {
                    state,
                    prompt: reply_message.unwrap_or_else(|| "Enter your one-time code".to_string()),
                    user,
                },
                Ok(AccessReply::Challenge { state: None, .. }) => Verdict::Refuse(Refusal::new(
                    "radius_reject",
                    "the authentication server sent a challenge without State",
                )),
                Err(e) => {
                    warn!(error = %e, "RADIUS authentication failed");
                    Verdict::Refuse(Refusal::new("radius_unreachable", "no authentication server answered"))
                }
            };
            let _ = results.send(outcome);
        });
    }

    fn ask_token(&mut self, mut outcome: Outcome, token: String, same_subject_as: Option<String>) {
        let Some(tokens) = self.tokens.clone() else {
            outcome.verdict = Verdict::Refuse(Refusal::new("method_not_allowed", "tokens are not accepted here"));
            return self.finish(outcome);
        };
        let results = self.outcomes.clone();
        tokio::spawn(async move {
            outcome.verdict = match tokens.verify(&token).await {
                Ok(t) => match same_subject_as {
                    Some(subject) if subject != t.subject => Verdict::Refuse(Refusal::new(
                        "token_invalid",
                        "the token belongs to another user than the session",
                    )),
                    Some(_) => Verdict::Renewed,
                    None => Verdict::Admit(Admission {
                        groups: t.groups.clone(),
                        token_subject: Some(t.subject.clone()),
                        ..Admission::plain(t.user_name.clone(), "token")
                    }),
                },
                Err(reason) => Verdict::Refuse(Refusal::new("token_invalid", reason)),
            };
            let _ = results.send(outcome);
        });
    }

    /// Turns a verdict into the worker's answer.
    fn finish(&mut self, outcome: Outcome) {
        let Outcome { asked, handle, peer, transport, certificate, request, verdict } = outcome;
        self.metrics.auth_decided(asked.elapsed(), (!request.renegotiation).then_some(request.handshake_duration));
        let decision = match verdict {
            Verdict::Refuse(refusal) => {
                *self.refusals.entry(refusal.kind).or_default() += 1;
                let user = certificate
                    .as_ref()
                    .map(|(_, id)| id.common_name.as_str())
                    .filter(|_| request.username.is_empty())
                    .unwrap_or(&request.username);
                warn!(%peer, transport, %user, reason = %refusal.reason, kind = refusal.kind, "authentication refused");
                AuthDecision::Reject { reason: refusal.reason }
            }
            Verdict::Challenge { state, prompt, user } => {
                let mut id = [0u8; 16];
                aws_lc_rs::rand::fill(&mut id).expect("the system RNG works");
                let state_id: String = id.iter().map(|b| format!("{b:02x}")).collect();
                info!(%peer, %user, "MFA challenge sent to the client");
                let reason = dynamic_challenge(&state_id, &user, &prompt);
                self.challenges
                    .insert(state_id, PendingChallenge { state, user, expires: Instant::now() + CHALLENGE_LIFETIME });
                AuthDecision::Reject { reason }
            }
            Verdict::Renewed => match self.sessions.iter().find(|(_, r)| r.handle == handle) {
                Some((&peer_id, rec)) => {
                    AuthDecision::Accept(AuthGrant { push: self.push_config(rec.address), peer_id })
                }
                None => AuthDecision::Reject { reason: "session unknown to the gateway".into() },
            },
            Verdict::Admit(admission) => {
                let client = ClientInfo {
                    cipher: Some(request.cipher),
                    version: request.peer_info.version.as_deref(),
                    platform: request.peer_info.platform.as_deref(),
                };
                match self.admit(handle, peer, transport, certificate, &client, admission) {
                    Ok((peer_id, address)) => {
                        AuthDecision::Accept(AuthGrant { push: self.push_config(address), peer_id })
                    }
                    Err(reason) => AuthDecision::Reject { reason },
                }
            }
        };
        self.shared.inboxes[handle.worker].send(WorkerCommand::AuthResult { handle, decision });
    }

    fn admit(
        &mut self,
        handle: LocalHandle,
        peer: SocketAddr,
        transport: &'static str,
        certificate: Option<(Vec<u8>, ClientIdentity)>,
        client: &ClientInfo<'_>,
        admission: Admission,
    ) -> Result<(u32, Ipv4Addr), String> {
        let refuse = |this: &mut Self, kind: &'static str, reason: &str| {
            *this.refusals.entry(kind).or_default() += 1;
            warn!(%peer, transport, user = %admission.user, reason, "authentication refused");
            reason.to_string()
        };
        let Some(peer_id) = self.peer_ids.take(handle.worker) else {
            return Err(refuse(self, "no_slot", "the gateway has no free session slot"));
        };
        let thumbprint = certificate.as_ref().map(|(_, id)| id.thumbprint);
        let lease_key =
            leases::client_key(thumbprint.map(|t| t.to_string()).as_deref(), admission.method, &admission.user);
        // The same certificate connecting again replaces its old session and keeps its
        // address. (Users with passwords or tokens may have several devices connected.)
        let previous =
            thumbprint.and_then(|t| self.by_thumbprint.get(&t).copied()).filter(|id| self.sessions.contains_key(id));
        let address = match previous.and_then(|id| self.sessions.get(&id)) {
            Some(rec) => rec.address,
            None => {
                let preferred = self.leases.get(&lease_key);
                match self.pools.allocate(&admission.groups, admission.framed_ip, preferred) {
                    Ok(a) => a,
                    Err(reason) => {
                        self.peer_ids.give_back(peer_id);
                        return Err(refuse(self, "pool_exhausted", reason));
                    }
                }
            }
        };
        if let Some(framed) = admission.framed_ip.filter(|f| *f != address) {
            warn!(user = %admission.user, %framed, %address, "Framed-IP-Address is taken or outside the pools; another address is used");
        }
        if let Some((old, rec)) = previous.and_then(|old| self.sessions.remove(&old).map(|rec| (old, rec))) {
            info!(user = %admission.user, old_peer = %rec.peer, new_peer = %peer, "reconnect replaces the previous session");
            self.closing.insert(old);
            self.shared.inboxes[rec.handle.worker].send(WorkerCommand::Close {
                peer_id: old,
                reason: "replaced by a new connection with the same certificate".into(),
                notice: None,
            });
            self.stop_accounting(&rec, None, TerminateCause::UserRequest);
        }
        self.address_owner.insert(address, peer_id);
        self.leases.set(lease_key, address);
        if let Some(t) = thumbprint {
            self.by_thumbprint.insert(t, peer_id);
        }
        let now = Instant::now();
        let accounting =
            (admission.method == "radius" && self.config.radius.accounting && self.radius.is_some()).then(|| {
                let mut id = [0u8; 8];
                aws_lc_rs::rand::fill(&mut id).expect("the system RNG works");
                let interval = admission
                    .interim
                    .unwrap_or(Duration::from_secs(self.config.radius.interim_interval_secs.into()))
                    .max(Duration::from_secs(10));
                Accounting {
                    session_id: id.iter().map(|b| format!("{b:02X}")).collect(),
                    classes: admission.classes.clone(),
                    interval,
                    next_interim: now + interval,
                }
            });
        info!(
            user = %admission.user,
            method = admission.method,
            thumbprint = thumbprint.map(|t| t.to_string()).unwrap_or_default(),
            %peer,
            transport,
            %address,
            cipher = client.cipher.map_or_else(|| if transport == "ikev2" { "ESP" } else { "TLS" }.to_string(), |c| c.to_string()),
            client = client.version.unwrap_or("unknown"),
            platform = client.platform.unwrap_or("unknown"),
            "client connected"
        );
        self.metrics.admitted(transport, admission.method);
        let id = self.next_session_id;
        self.next_session_id += 1;
        let record = SessionRecord {
            id,
            handle,
            peer,
            transport,
            user: admission.user,
            method: admission.method,
            cipher: client.cipher,
            thumbprint,
            certificate: certificate.map(|(der, _)| der),
            address,
            since: SystemTime::now(),
            started: now,
            token_subject: admission.token_subject,
            accounting,
            expires: admission.session_timeout.map(|t| now + t),
        };
        self.account(&record, AcctStatusType::Start, None, None);
        self.sessions.insert(peer_id, record);
        Ok((peer_id, address))
    }

    // ---- accounting -----------------------------------------------------------------

    fn account(
        &self,
        rec: &SessionRecord,
        status: AcctStatusType,
        traffic: Option<Traffic>,
        cause: Option<TerminateCause>,
    ) {
        let (Some(acct), Some(radius)) = (&rec.accounting, &self.radius) else { return };
        let mut request = AccountingRequest::new(status, acct.session_id.clone());
        request.user_name = Some(rec.user.clone().into_bytes());
        request.framed_ip = Some(rec.address);
        request.calling_station_id = Some(rec.peer.to_string());
        request.classes = acct.classes.clone();
        request.event_timestamp = Some(SystemTime::now());
        if status != AcctStatusType::Start {
            let t = traffic.unwrap_or_default();
            request.usage = Some(SessionUsage {
                input_octets: t.rx_bytes,
                output_octets: t.tx_bytes,
                input_packets: t.rx_packets,
                output_packets: t.tx_packets,
                session_time: rec.started.elapsed(),
            });
        }
        request.terminate_cause = cause;
        radius.account(request);
    }

    fn stop_accounting(&self, rec: &SessionRecord, traffic: Option<Traffic>, cause: TerminateCause) {
        let traffic = traffic.or_else(|| {
            let peer_id = self.sessions.iter().find(|(_, r)| r.handle == rec.handle).map(|(&id, _)| id)?;
            self.shared.table.by_peer_id(peer_id).map(|s| s.stats.snapshot())
        });
        self.account(rec, AcctStatusType::Stop, traffic, Some(cause));
    }

    fn send_interim_updates(&mut self, now: Instant) {
        let due: Vec<u32> = self
            .sessions
            .iter()
            .filter(|(_, r)| r.accounting.as_ref().is_some_and(|a| a.next_interim <= now))
            .map(|(&id, _)| id)
            .collect();
        for peer_id in due {
            let traffic = self.shared.table.by_peer_id(peer_id).map(|s| s.stats.snapshot());
            if let Some(rec) = self.sessions.get(&peer_id) {
                self.account(rec, AcctStatusType::InterimUpdate, traffic, None);
            }
            if let Some(acct) = self.sessions.get_mut(&peer_id).and_then(|r| r.accounting.as_mut()) {
                acct.next_interim = now + acct.interval;
            }
        }
    }

    // ---- sessions ending ------------------------------------------------------------

    fn closed(
        &mut self,
        handle: LocalHandle,
        peer: SocketAddr,
        peer_id: Option<u32>,
        address: Option<Ipv4Addr>,
        traffic: Option<Traffic>,
        reason: CloseReason,
    ) {
        self.ike_eap.remove(&handle);
        let Some(peer_id) = peer_id else {
            match &reason {
                CloseReason::Tls(e) => warn!(%peer, error = %e, "TLS handshake failed"),
                CloseReason::HandshakeTimeout => info!(%peer, "handshake timed out"),
                CloseReason::AuthFailed(_) => {} // logged with its reason when decided
                other => info!(%peer, reason = %other, "connection closed before authentication"),
            }
            return;
        };
        let record = self.sessions.remove(&peer_id);
        let was_closing = self.closing.remove(&peer_id);
        if record.is_none() && !was_closing {
            // Not ours to free (a duplicate report).
            warn!(peer_id, worker = handle.worker, "close reported for an unknown session");
            return;
        }
        if let Some(rec) = &record {
            if let Some(t) = rec.thumbprint
                && self.by_thumbprint.get(&t) == Some(&peer_id)
            {
                self.by_thumbprint.remove(&t);
            }
            let secs = rec.since.elapsed().map_or(0, |d| d.as_secs());
            info!(user = %rec.user, peer = %rec.peer, transport = rec.transport, address = %rec.address, connected_secs = secs, %reason, "client disconnected");
            self.account(rec, AcctStatusType::Stop, traffic, Some(terminate_cause(&reason)));
        }
        if let Some(address) = address
            && self.address_owner.get(&address) == Some(&peer_id)
        {
            self.address_owner.remove(&address);
            self.pools.release(address);
        }
        self.peer_ids.give_back(peer_id);
    }

    /// One log line with sessions, traffic and drops by reason (on SIGUSR2 and at exit).
    fn log_statistics(&self) {
        let workers = &self.shared.counters;
        let sum = |f: fn(&WorkerCounters) -> u64| workers.iter().map(f).sum::<u64>();
        let batches = sum(|w| w.batches.load(Ordering::Relaxed));
        let mean_batch =
            if batches == 0 { 0.0 } else { sum(|w| w.completions.load(Ordering::Relaxed)) as f64 / batches as f64 };
        let drops: Vec<String> = DropReason::ALL
            .iter()
            .map(|&r| (r, total_drops(workers, r)))
            .filter(|&(_, n)| n > 0)
            .map(|(r, n)| format!("{}={n}", r.name()))
            .collect();
        info!(
            sessions = self.sessions.len(),
            pool_in_use = self.pools.in_use(),
            pool_capacity = self.pools.capacity(),
            refusals = ?self.refusals,
            to_tun = sum(|w| w.to_tun.load(Ordering::Relaxed)),
            from_tun = sum(|w| w.from_tun.load(Ordering::Relaxed)),
            handoffs = sum(|w| w.handoffs.load(Ordering::Relaxed)),
            tun_foreign_sealed = sum(|w| w.tun_foreign_sealed.load(Ordering::Relaxed)),
            mean_batch = format!("{mean_batch:.1}"),
            drops = if drops.is_empty() { "none".to_string() } else { drops.join(" ") },
            "statistics"
        );
    }

    fn push_config(&self, address: Ipv4Addr) -> PushConfig {
        let n = &self.config.network;
        let o = &self.config.openvpn;
        let (netmask, route_gateway) = match self.pools.pool(address) {
            Some(p) => (p.network().netmask(), p.gateway_address()),
            None => (n.pool.netmask(), Ipv4Addr::from(u32::from(n.pool.network()) + 1)),
        };
        PushConfig {
            address,
            netmask,
            route_gateway,
            routes: n.routes.clone(),
            redirect_gateway: n.full_tunnel,
            dns_servers: n.dns_servers.clone(),
            dns_search: n.dns_search.clone(),
            ping_secs: o.keepalive_interval_secs,
            ping_restart_secs: o.keepalive_timeout_secs,
            tun_mtu: o.tun_mtu,
        }
    }

    /// Reloads the trust material if its files changed (or `force`), then cuts the
    /// sessions whose certificates are now revoked. Fails when the new material cannot
    /// be loaded (the previous one stays in force).
    fn check_trust(&mut self, force: bool) -> Result<(), String> {
        let stamp = TrustStore::stamp(&self.config);
        if !force && stamp == self.trust_stamp {
            return Ok(());
        }
        self.trust_stamp = stamp;
        let trust = match TrustStore::load(&self.config) {
            Ok(t) => t,
            Err(e) => {
                let e = format!("{e:#}");
                error!(error = %e, "trust material changed but cannot be loaded; keeping the previous one");
                return Err(e);
            }
        };
        match tls::openvpn_settings(&self.config, &trust, &self.server_identity) {
            Ok(openvpn) => {
                let current = self.shared.settings.load();
                self.shared.settings.store(Arc::new(Settings {
                    openvpn,
                    ping_interval: current.ping_interval,
                    ping_timeout: current.ping_timeout,
                    sstp: current.sstp.clone(),
                }));
            }
            Err(e) => {
                let e = format!("{e:#}");
                error!(error = %e, "cannot build the TLS configuration; keeping the previous one");
                return Err(e);
            }
        }
        info!(roots = trust.root_count(), revoked = trust.revoked_count(), "trust material reloaded");
        self.ike_trust.replace(trust.clone());
        self.trust = trust;
        let revoked: Vec<u32> = self
            .sessions
            .iter()
            .filter(|(id, rec)| {
                !self.closing.contains(id)
                    && rec.certificate.as_ref().is_some_and(|c| self.trust.is_revoked(c).is_some())
            })
            .map(|(&id, _)| id)
            .collect();
        for peer_id in revoked {
            let Some(rec) = self.sessions.get(&peer_id) else { continue };
            warn!(user = %rec.user, thumbprint = ?rec.thumbprint, peer = %rec.peer, "certificate revoked: cutting its session");
            self.close_session(peer_id, "certificate revoked", "AUTH_FAILED,certificate revoked");
        }
        Ok(())
    }

    /// Switches to the pools of `new`: live sessions keep their addresses (reserved in
    /// the new pools when inside them), and the TUN device gets the gateway address of
    /// each new pool. Prefixes no pool and no session uses any more leave the device.
    fn rebuild_pools(&mut self, new: &Config) -> Result<(), String> {
        let mut pools = Pools::new(new.network.pool, &new.group_pools());
        let old_nets = self.pools.networks();
        let new_nets = pools.networks();
        let added: Vec<_> = new_nets.iter().filter(|n| !old_nets.contains(n)).copied().collect();
        let unused: Vec<_> = old_nets
            .iter()
            .filter(|n| !new_nets.contains(n) && !self.sessions.values().any(|r| n.contains(&r.address)))
            .copied()
            .collect();
        let needed = new_nets.iter().map(|n| 2 * crate::pool::AddressPool::client_capacity(*n) as usize).sum::<usize>();
        if needed > self.shared.table.capacity() {
            return Err(format!(
                "the new pools hold more clients than this process has session slots ({}); restart the gateway to grow them",
                self.shared.table.capacity() / 2
            ));
        }
        crate::dataplane::tun::set_pool_addresses(&self.tun, &added, &unused).map_err(|e| e.to_string())?;
        for rec in self.sessions.values() {
            pools.reserve(rec.address);
        }
        self.pools = pools;
        Ok(())
    }
}

/// Loads a token issuer's keys now and refreshes them on schedule, until a reload
/// replaces the service.
fn spawn_key_refresh(tokens: &Arc<TokenService>) {
    let tokens = Arc::downgrade(tokens);
    tokio::spawn(async move {
        while let Some(service) = tokens.upgrade() {
            service.refresh_if_due().await;
            drop(service);
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
    });
}

impl Admission {
    /// What an Access-Accept grants: groups from Filter-Id and MS-Azure-Policy-ID, the
    /// Framed-IP-Address, Session-Timeout, Class and interim interval.
    fn from_radius(user: String, info: crate::proto::radius::AcceptInfo) -> Admission {
        let mut groups = info.filter_ids.clone();
        groups.extend(info.azure_policy_ids.iter().map(|p| azure_policy_id_text(p)));
        Admission {
            user,
            method: "radius",
            groups,
            framed_ip: info.framed_ip,
            session_timeout: info.session_timeout,
            classes: info.classes,
            interim: info.acct_interim_interval,
            token_subject: None,
        }
    }

    fn plain(user: String, method: &'static str) -> Admission {
        Admission {
            user,
            method,
            groups: Vec::new(),
            framed_ip: None,
            session_timeout: None,
            classes: Vec::new(),
            interim: None,
            token_subject: None,
        }
    }
}

/// The protocol a session list shows for a record's transport ("udp", "tcp", "sstp").
fn protocol_name(transport: &str) -> String {
    match transport {
        "sstp" | "ikev2" => transport.to_string(),
        openvpn => format!("openvpn-{openvpn}"),
    }
}

/// The RADIUS Acct-Terminate-Cause for why a session ended.
fn terminate_cause(reason: &CloseReason) -> TerminateCause {
    match reason {
        CloseReason::ClientExit => TerminateCause::UserRequest,
        CloseReason::AuthFailed(_) => TerminateCause::AdminReset,
        CloseReason::Local(r) if r.contains("no packet") => TerminateCause::LostCarrier,
        CloseReason::Local(r) if r.contains("time limit") => TerminateCause::SessionTimeout,
        CloseReason::Local(r) if r.contains("shutting down") => TerminateCause::NasReboot,
        CloseReason::Local(r) if r.contains("TCP connection closed") => TerminateCause::LostCarrier,
        CloseReason::Local(_) => TerminateCause::AdminReset,
        CloseReason::HandshakeTimeout | CloseReason::Tls(_) | CloseReason::Protocol(_) => TerminateCause::NasError,
    }
}
