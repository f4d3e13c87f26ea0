//! The control plane: everything off the packet path. It decides authentication,
//! hands out tunnel addresses and peer-ids, keeps the session registry, and watches
//! the trust material (roots, CRLs, revoked thumbprints) so that a revocation takes
//! effect at once, cutting live sessions of a revoked certificate within a second.
//!
//! It runs on a tokio runtime apart from the workers and talks to them only by
//! message, so nothing here can stall a packet.

pub mod tls;

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use tokio::sync::mpsc::UnboundedReceiver;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::dataplane::counters::{DropReason, WorkerCounters, total_drops};
use crate::dataplane::{ControlEvent, LocalHandle, Settings, Shared, WorkerCommand};
use crate::pki::{ClientIdentity, ServerIdentity, SourceStamp, Thumbprint, TrustStore, client_identity};
use crate::pool::AddressPool;
use crate::proto::openvpn::push::PushConfig;
use crate::proto::openvpn::session::{AuthDecision, AuthGrant, AuthRequest, CloseReason};

/// How often the trust sources are checked for changes.
const TRUST_POLL: Duration = Duration::from_secs(1);

/// One connected client, as the control plane knows it.
struct SessionRecord {
    handle: LocalHandle,
    peer: SocketAddr,
    transport: &'static str,
    identity: ClientIdentity,
    cert: Vec<u8>,
    address: Ipv4Addr,
    since: SystemTime,
}

pub struct ControlPlane {
    config: Config,
    shared: Arc<Shared>,
    server_identity: ServerIdentity,
    trust: TrustStore,
    trust_stamp: SourceStamp,
    pool: AddressPool,
    free_peer_ids: Vec<u32>,
    sessions: HashMap<u32, SessionRecord>,
    by_thumbprint: HashMap<Thumbprint, u32>,
    /// Peer-ids of sessions told to close, freed when their worker confirms.
    closing: HashSet<u32>,
    /// Which session holds each address (a reconnect inherits its predecessor's).
    address_owner: HashMap<Ipv4Addr, u32>,
    /// The address each certificate last had, offered again when free.
    last_address: HashMap<Thumbprint, Ipv4Addr>,
}

impl ControlPlane {
    pub fn new(config: Config, shared: Arc<Shared>, server_identity: ServerIdentity, trust: TrustStore) -> Self {
        let pool = AddressPool::new(config.network.pool);
        let capacity = shared.table.capacity() as u32;
        ControlPlane {
            trust_stamp: TrustStore::stamp(&config),
            free_peer_ids: (0..capacity).rev().collect(),
            pool,
            config,
            shared,
            server_identity,
            trust,
            sessions: HashMap::new(),
            by_thumbprint: HashMap::new(),
            closing: HashSet::new(),
            address_owner: HashMap::new(),
            last_address: HashMap::new(),
        }
    }

    /// Runs until SIGINT or SIGTERM.
    pub async fn run(mut self, mut events: UnboundedReceiver<ControlEvent>) -> anyhow::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut sigterm = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
        let mut sigint = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
        let mut sighup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
        let mut sigusr2 = signal(SignalKind::user_defined2()).context("cannot watch SIGUSR2")?;
        let mut poll = tokio::time::interval(TRUST_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                Some(event) = events.recv() => self.on_event(event),
                _ = poll.tick() => self.check_trust(false),
                _ = sighup.recv() => {
                    info!("SIGHUP: reloading trusted roots, CRLs and revocations");
                    self.check_trust(true);
                }
                _ = sigusr2.recv() => self.log_statistics(),
                _ = sigterm.recv() => { info!("SIGTERM: shutting down"); self.log_statistics(); return Ok(()); }
                _ = sigint.recv() => { info!("SIGINT: shutting down"); self.log_statistics(); return Ok(()); }
            }
        }
    }

    fn on_event(&mut self, event: ControlEvent) {
        match event {
            ControlEvent::Authenticate { handle, peer, transport, request } => {
                let decision = self.authenticate(handle, peer, transport, &request);
                self.shared.inboxes[handle.worker].send(WorkerCommand::AuthResult { handle, decision });
            }
            ControlEvent::Closed { handle, peer, peer_id, address, reason, .. } => {
                self.closed(handle, peer, peer_id, address, reason)
            }
        }
    }

    fn authenticate(
        &mut self,
        handle: LocalHandle,
        peer: SocketAddr,
        transport: &'static str,
        request: &AuthRequest,
    ) -> AuthDecision {
        if request.renegotiation {
            return match self.sessions.iter().find(|(_, rec)| rec.handle == handle) {
                Some((&peer_id, rec)) => {
                    AuthDecision::Accept(AuthGrant { push: self.push_config(rec.address), peer_id })
                }
                None => AuthDecision::Reject { reason: "session unknown to the gateway".into() },
            };
        }
        let reject = |reason: &str| {
            warn!(%peer, transport, reason, "authentication refused");
            AuthDecision::Reject { reason: reason.to_string() }
        };
        let Some(cert) = &request.client_cert else { return reject("a client certificate is required") };
        let identity = match client_identity(cert) {
            Ok(i) => i,
            Err(_) => return reject("the client certificate cannot be read"),
        };
        if let Some(why) = self.trust.is_revoked(cert) {
            warn!(%peer, user = %identity.common_name, thumbprint = %identity.thumbprint, %why, "revoked certificate refused");
            return AuthDecision::Reject { reason: "certificate revoked".into() };
        }
        let Some(peer_id) = self.free_peer_ids.pop() else {
            return reject("the gateway has no free session slot");
        };
        // The same certificate connecting again replaces its old session and keeps
        // its address.
        let previous = self.by_thumbprint.get(&identity.thumbprint).copied();
        let address = match previous.and_then(|old| self.sessions.get(&old)) {
            Some(rec) => rec.address,
            None => match self.pool.allocate(self.last_address.get(&identity.thumbprint).copied()) {
                Some(a) => a,
                None => {
                    self.free_peer_ids.push(peer_id);
                    return reject("the address pool is exhausted");
                }
            },
        };
        if let Some((old, rec)) = previous.and_then(|old| self.sessions.remove(&old).map(|rec| (old, rec))) {
            info!(user = %identity.common_name, old_peer = %rec.peer, new_peer = %peer, "reconnect replaces the previous session");
            self.closing.insert(old);
            self.shared.inboxes[rec.handle.worker].send(WorkerCommand::Close {
                peer_id: old,
                reason: "replaced by a new connection with the same certificate".into(),
                notice: None,
            });
        }
        self.address_owner.insert(address, peer_id);
        self.last_address.insert(identity.thumbprint, address);
        self.by_thumbprint.insert(identity.thumbprint, peer_id);
        info!(
            user = %identity.common_name,
            thumbprint = %identity.thumbprint,
            %peer,
            transport,
            %address,
            cipher = %request.cipher,
            client = request.peer_info.version.as_deref().unwrap_or("unknown"),
            platform = request.peer_info.platform.as_deref().unwrap_or("unknown"),
            "client connected"
        );
        self.sessions.insert(
            peer_id,
            SessionRecord { handle, peer, transport, identity, cert: cert.to_vec(), address, since: SystemTime::now() },
        );
        AuthDecision::Accept(AuthGrant { push: self.push_config(address), peer_id })
    }

    fn closed(
        &mut self,
        handle: LocalHandle,
        peer: SocketAddr,
        peer_id: Option<u32>,
        address: Option<Ipv4Addr>,
        reason: CloseReason,
    ) {
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
            if self.by_thumbprint.get(&rec.identity.thumbprint) == Some(&peer_id) {
                self.by_thumbprint.remove(&rec.identity.thumbprint);
            }
            let secs = rec.since.elapsed().map_or(0, |d| d.as_secs());
            info!(user = %rec.identity.common_name, peer = %rec.peer, transport = rec.transport, address = %rec.address, connected_secs = secs, %reason, "client disconnected");
        }
        if let Some(address) = address
            && self.address_owner.get(&address) == Some(&peer_id)
        {
            self.address_owner.remove(&address);
            self.pool.release(address);
        }
        self.free_peer_ids.push(peer_id);
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
            pool_in_use = self.pool.in_use(),
            pool_capacity = self.pool.capacity(),
            to_tun = sum(|w| w.to_tun.load(Ordering::Relaxed)),
            from_tun = sum(|w| w.from_tun.load(Ordering::Relaxed)),
            handoffs = sum(|w| w.handoffs.load(Ordering::Relaxed)),
            mean_batch = format!("{mean_batch:.1}"),
            drops = if drops.is_empty() { "none".to_string() } else { drops.join(" ") },
            "statistics"
        );
    }

    fn push_config(&self, address: Ipv4Addr) -> PushConfig {
        let n = &self.config.network;
        let o = &self.config.openvpn;
        PushConfig {
            address,
            netmask: n.pool.netmask(),
            route_gateway: self.pool.gateway_address(),
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
    /// sessions whose certificates are now revoked.
    fn check_trust(&mut self, force: bool) {
        let stamp = TrustStore::stamp(&self.config);
        if !force && stamp == self.trust_stamp {
            return;
        }
        self.trust_stamp = stamp;
        let trust = match TrustStore::load(&self.config) {
            Ok(t) => t,
            Err(e) => {
                error!(error = %format!("{e:#}"), "trust material changed but cannot be loaded; keeping the previous one");
                return;
            }
        };
        match tls::openvpn_settings(&self.config, &trust, &self.server_identity) {
            Ok(openvpn) => {
                let current = self.shared.settings.load();
                self.shared.settings.store(Arc::new(Settings {
                    openvpn,
                    ping_interval: current.ping_interval,
                    ping_timeout: current.ping_timeout,
                }));
            }
            Err(e) => {
                error!(error = %format!("{e:#}"), "cannot build the TLS configuration; keeping the previous one");
                return;
            }
        }
        info!(roots = trust.root_count(), revoked = trust.revoked_count(), "trust material reloaded");
        self.trust = trust;
        let revoked: Vec<u32> = self
            .sessions
            .iter()
            .filter(|(id, rec)| !self.closing.contains(id) && self.trust.is_revoked(&rec.cert).is_some())
            .map(|(&id, _)| id)
            .collect();
        for peer_id in revoked {
            let Some(rec) = self.sessions.get(&peer_id) else { continue };
            warn!(user = %rec.identity.common_name, thumbprint = %rec.identity.thumbprint, peer = %rec.peer, "certificate revoked: cutting its session");
            self.closing.insert(peer_id);
            self.shared.inboxes[rec.handle.worker].send(WorkerCommand::Close {
                peer_id,
                reason: "certificate revoked".into(),
                notice: Some("AUTH_FAILED,certificate revoked".into()),
            });
        }
    }
}
