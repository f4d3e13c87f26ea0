//! The control plane's answers to the admin API: sessions, disconnects, trusted roots,
//! revocations and reload.

use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tracing::{error, info, warn};

use super::{ControlPlane, Settings, WorkerCommand, metrics, tls};
use crate::admin::{AdminCall, AdminError, AdminReply, AdminRequest, DisconnectTarget};
use crate::config::Config;
use crate::pki::{
    Pki, RevokeTarget, ServerIdentity, Thumbprint, TrustStore, list_revoked_thumbprint, load_certs, pem_certificate,
    unlist_revoked_thumbprint, write_atomically,
};

#[derive(Serialize)]
struct SessionView {
    id: u64,
    user: String,
    protocol: String,
    auth: &'static str,
    virtual_address: String,
    public_address: String,
    since: String,
    connected_secs: u64,
    cipher: &'static str,
    thumbprint: Option<String>,
    bytes_in: u64,
    bytes_out: u64,
    packets_in: u64,
    packets_out: u64,
}

#[derive(Serialize)]
struct RootView {
    thumbprint: String,
    subject: String,
    not_after: String,
    file: String,
    /// Added through the API (removable through it), or listed in the configuration.
    added_by_api: bool,
}

impl ControlPlane {
    pub(super) async fn on_admin(&mut self, call: AdminCall) {
        let answer = match call.request {
            AdminRequest::Health => Ok(AdminReply::Json(json!({
                "status": "ok",
                "sessions": self.sessions.len(),
                "workers": self.shared.inboxes.len(),
                "uptime_secs": self.started.elapsed().as_secs(),
            }))),
            AdminRequest::Sessions => Ok(AdminReply::Json(json!({ "sessions": self.session_views() }))),
            AdminRequest::Disconnect(target) => self.disconnect(target),
            AdminRequest::Roots => self.roots().map(|r| AdminReply::Json(json!({ "roots": r }))),
            AdminRequest::AddRoot(pem) => self.add_root(&pem),
            AdminRequest::RemoveRoot(thumbprint) => self.remove_root(thumbprint),
            AdminRequest::Revocations => self.revocations(),
            AdminRequest::Revoke(thumbprint) => self.revoke(thumbprint),
            AdminRequest::Unrevoke(thumbprint) => self.unrevoke(thumbprint),
            AdminRequest::Reload => self.reload().await.map(AdminReply::Json),
            AdminRequest::Metrics => Ok(AdminReply::Metrics(metrics::render(self))),
            AdminRequest::ClientPackage(name) => self.client_package(name.as_deref()),
        };
        // The caller may have gone away; nothing to do then.
        let _ = call.reply.send(answer);
    }

    fn client_package(&self, name: Option<&str>) -> Result<AdminReply, AdminError> {
        let zip = crate::package::client_package(&self.config, name)
            .map_err(|e| AdminError::bad_request(format!("{e:#}")))?;
        if let Err(e) = crate::package::record_package_settings(&self.config) {
            warn!(error = %format!("{e:#}"), "cannot record the client package's settings");
        }
        info!(user = name.unwrap_or("any"), "client package made through the admin API");
        Ok(AdminReply::Zip(zip))
    }

    fn session_views(&self) -> Vec<SessionView> {
        let mut views: Vec<SessionView> = self
            .sessions
            .iter()
            .filter(|(peer_id, _)| !self.closing.contains(peer_id))
            .map(|(&peer_id, rec)| {
                let traffic = self.shared.table.by_peer_id(peer_id).map(|s| s.stats.snapshot()).unwrap_or_default();
                SessionView {
                    id: rec.id,
                    user: rec.user.clone(),
                    protocol: super::protocol_name(rec.transport),
                    auth: rec.method,
                    virtual_address: rec.address.to_string(),
                    public_address: rec.peer.to_string(),
                    since: rfc3339(rec.since),
                    connected_secs: rec.started.elapsed().as_secs(),
                    cipher: rec
                        .cipher
                        .map_or(if rec.transport == "ikev2" { "ESP" } else { "TLS" }, |c| c.openvpn_name()),
                    thumbprint: rec.thumbprint.map(|t| t.to_string()),
                    bytes_in: traffic.rx_bytes,
                    bytes_out: traffic.tx_bytes,
                    packets_in: traffic.rx_packets,
                    packets_out: traffic.tx_packets,
                }
            })
            .collect();
        views.sort_by_key(|v| v.id);
        views
    }

    fn disconnect(&mut self, target: DisconnectTarget) -> Result<AdminReply, AdminError> {
        let chosen: Vec<u32> = self
            .sessions
            .iter()
            .filter(|(peer_id, rec)| {
                !self.closing.contains(peer_id)
                    && match &target {
                        DisconnectTarget::Session(id) => rec.id == *id,
                        DisconnectTarget::User(user) => rec.user == *user,
                    }
            })
            .map(|(&peer_id, _)| peer_id)
            .collect();
        if chosen.is_empty() {
            return Err(AdminError::not_found(match target {
                DisconnectTarget::Session(id) => format!("no session {id}"),
                DisconnectTarget::User(user) => format!("{user:?} has no session"),
            }));
        }
        let mut ids = Vec::new();
        for peer_id in chosen {
            let Some(rec) = self.sessions.get(&peer_id) else { continue };
            info!(user = %rec.user, peer = %rec.peer, session = rec.id, "disconnected by the administrator");
            ids.push(rec.id);
            self.close_session(peer_id, "disconnected by the administrator", "HALT,disconnected by the administrator");
        }
        Ok(AdminReply::Json(json!({ "disconnected": ids })))
    }

    /// Tells the owning worker to end a session (it reports back with `Closed`).
    pub(super) fn close_session(&mut self, peer_id: u32, reason: &str, notice: &str) {
        let Some(rec) = self.sessions.get(&peer_id) else { return };
        self.closing.insert(peer_id);
        self.shared.inboxes[rec.handle.worker].send(WorkerCommand::Close {
            peer_id,
            reason: reason.into(),
            notice: Some(notice.into()),
        });
    }

    fn roots(&self) -> Result<Vec<RootView>, AdminError> {
        let added_dir = self.config.added_roots_dir();
        let mut views = Vec::new();
        for path in self.config.trusted_root_paths() {
            let certs = load_certs(&path).map_err(|e| AdminError::internal(format!("{e:#}")))?;
            for der in certs {
                let Ok((_, cert)) = x509_parser::parse_x509_certificate(&der) else { continue };
                views.push(RootView {
                    thumbprint: Thumbprint::of_der(&der).to_string(),
                    subject: cert.subject().to_string(),
                    not_after: cert.validity().not_after.to_string(),
                    file: path.display().to_string(),
                    added_by_api: path.starts_with(&added_dir),
                });
            }
        }
        Ok(views)
    }

    /// Stores a root CA in the PKI directory; it is trusted as soon as it loads.
    fn add_root(&mut self, pem: &str) -> Result<AdminReply, AdminError> {
        let ders: Vec<_> = rustls::pki_types::pem::PemObject::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<rustls::pki_types::CertificateDer<'static>>, _>>()
            .map_err(|e| AdminError::bad_request(format!("the body is not PEM certificates: {e}")))?;
        let [der] = ders.as_slice() else {
            return Err(AdminError::bad_request(format!(
                "send one root certificate per request (the body holds {})",
                ders.len()
            )));
        };
        let thumbprint = Thumbprint::of_der(der);
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| AdminError::bad_request(format!("the certificate cannot be read: {e}")))?;
        if !cert.is_ca() {
            return Err(AdminError::bad_request(format!(
                "\"{}\" is not a CA certificate (no basicConstraints CA:TRUE)",
                cert.subject()
            )));
        }
        let subject = cert.subject().to_string();
        if self.roots()?.iter().any(|r| r.thumbprint == thumbprint.to_string()) {
            return Err(AdminError::conflict(format!("root {thumbprint} is already trusted")));
        }
        let dir = self.config.added_roots_dir();
        let path = dir.join(format!("{thumbprint}.pem"));
        let text = pem_certificate(der);
        std::fs::create_dir_all(&dir)
            .and_then(|()| write_atomically(&path, text.as_bytes(), 0o644).map_err(std::io::Error::other))
            .map_err(|e| AdminError::internal(format!("cannot write {}: {e}", path.display())))?;
        if let Err(e) = self.apply_trust() {
            let _ = std::fs::remove_file(&path);
            let _ = self.apply_trust();
            return Err(AdminError::bad_request(e));
        }
        info!(%thumbprint, %subject, "trusted root added through the admin API");
        Ok(AdminReply::Json(json!({ "added": thumbprint.to_string(), "subject": subject })))
    }

    fn remove_root(&mut self, thumbprint: Thumbprint) -> Result<AdminReply, AdminError> {
        let roots = self.roots()?;
        let Some(root) = roots.iter().find(|r| r.thumbprint == thumbprint.to_string()) else {
            return Err(AdminError::not_found(format!("no trusted root has thumbprint {thumbprint}")));
        };
        if !root.added_by_api {
            return Err(AdminError::conflict(format!(
                "root {thumbprint} comes from {} (the configuration); edit [pki] trusted_roots and reload",
                root.file
            )));
        }
        std::fs::remove_file(&root.file)
            .map_err(|e| AdminError::internal(format!("cannot remove {}: {e}", root.file)))?;
        self.apply_trust().map_err(AdminError::internal)?;
        info!(%thumbprint, subject = %root.subject, "trusted root removed through the admin API");
        Ok(AdminReply::Json(json!({ "removed": thumbprint.to_string() })))
    }

    fn revocations(&self) -> Result<AdminReply, AdminError> {
        let listed = crate::pki::load_revoked_list(&self.config.revoked_list_path())
            .map_err(|e| AdminError::internal(format!("{e:#}")))?;
        let mut thumbprints: Vec<String> = self.config.pki.revoked_thumbprints.clone();
        thumbprints.extend(listed.iter().map(Thumbprint::to_string));
        Ok(AdminReply::Json(json!({
            "thumbprints": thumbprints,
            "file": self.config.revoked_list_path().display().to_string(),
            "crl_files": self.config.crl_paths().iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        })))
    }

    /// Revokes by thumbprint: through the gateway's own PKI when it has one (its CRL
    /// then lists the serial too), else on the revoked list. Live sessions are cut now.
    fn revoke(&mut self, thumbprint: Thumbprint) -> Result<AdminReply, AdminError> {
        let own_pki = self.config.pki_dir().join("ca.key").exists().then(|| Pki::open(&self.config.pki_dir()));
        let (newly, name) = match own_pki {
            Some(Ok(mut pki)) => {
                let r = pki
                    .revoke(RevokeTarget::Thumbprint(thumbprint))
                    .map_err(|e| AdminError::internal(format!("{e:#}")))?;
                (!r.already, r.name)
            }
            Some(Err(e)) => return Err(AdminError::internal(format!("{e:#}"))),
            None => {
                let added = list_revoked_thumbprint(
                    &self.config.revoked_list_path(),
                    thumbprint,
                    "revoked through the admin API",
                )
                .map_err(|e| AdminError::internal(format!("{e:#}")))?;
                (added, None)
            }
        };
        let before = self.closing.len();
        self.apply_trust().map_err(AdminError::internal)?;
        let cut = self.closing.len().saturating_sub(before);
        info!(%thumbprint, name = name.as_deref().unwrap_or(""), sessions_cut = cut, "revoked through the admin API");
        Ok(AdminReply::Json(json!({
            "thumbprint": thumbprint.to_string(),
            "name": name,
            "already_revoked": !newly,
            "sessions_cut": cut,
        })))
    }

    fn unrevoke(&mut self, thumbprint: Thumbprint) -> Result<AdminReply, AdminError> {
        if self.config.pki.revoked_thumbprints.iter().any(|t| t.parse::<Thumbprint>().is_ok_and(|t| t == thumbprint)) {
            return Err(AdminError::conflict(format!(
                "{thumbprint} is listed in [pki] revoked_thumbprints; edit the configuration and reload"
            )));
        }
        let removed = unlist_revoked_thumbprint(&self.config.revoked_list_path(), thumbprint)
            .map_err(|e| AdminError::internal(format!("{e:#}")))?;
        if !removed {
            return Err(AdminError::not_found(format!("{thumbprint} is not on the revoked list")));
        }
        self.apply_trust().map_err(AdminError::internal)?;
        info!(%thumbprint, "taken off the revoked list through the admin API");
        let still_in_crl = self.issued_and_revoked_in_own_pki(thumbprint);
        Ok(AdminReply::Json(json!({
            "thumbprint": thumbprint.to_string(),
            "still_revoked_by_crl": still_in_crl,
        })))
    }

    fn issued_and_revoked_in_own_pki(&self, thumbprint: Thumbprint) -> bool {
        Pki::open(&self.config.pki_dir())
            .map(|pki| pki.clients().iter().any(|c| c.thumbprint == thumbprint && c.is_revoked()))
            .unwrap_or(false)
    }

    /// Reloads the trust material now and cuts sessions it revokes.
    fn apply_trust(&mut self) -> Result<(), String> {
        self.check_trust(true)
    }

    /// Reads the configuration file again and applies what can change while running;
    /// sessions that the new configuration still allows keep flowing. A configuration
    /// that does not load or validate is refused and the running one stays.
    pub(super) async fn reload(&mut self) -> Result<serde_json::Value, AdminError> {
        let Some(path) = self.config_path.clone() else {
            self.apply_trust().map_err(AdminError::internal)?;
            return Ok(
                json!({ "applied": ["trust"], "restart_needed": [], "note": "embedded defaults: trust material reloaded" }),
            );
        };
        let refuse = |reason: String| {
            error!(reason = %reason, "reload refused; the running configuration stays");
            AdminError::bad_request(reason)
        };
        let new = Config::load(&path).map_err(|e| refuse(e.to_string()))?;
        new.check_files().map_err(|e| refuse(e.to_string()))?;
        let restart_needed = restart_needed(&self.config, &new);
        let trust = TrustStore::load(&new).map_err(|e| refuse(format!("{e:#}")))?;
        let identity = if new.pki == self.config.pki {
            None
        } else {
            Some(ServerIdentity::load(&new).map_err(|e| refuse(format!("{e:#}")))?)
        };
        let openvpn = tls::openvpn_settings(&new, &trust, identity.as_ref().unwrap_or(&self.server_identity))
            .map_err(|e| refuse(format!("{e:#}")))?;
        let sstp = tls::sstp_listener(&new, identity.as_ref().unwrap_or(&self.server_identity))
            .map_err(|e| refuse(format!("{e:#}")))?;
        let local_users = super::sstp::LocalUsers::load(&new).map_err(|e| refuse(format!("{e:#}")))?;
        let radius = if new.radius == self.config.radius {
            self.radius.clone()
        } else if new.radius.servers.is_empty() {
            None
        } else {
            Some(super::RadiusService::start(&new.radius).await.map_err(|e| refuse(format!("{e:#}")))?)
        };
        let tokens = if new.token == self.config.token && new.auth == self.config.auth {
            self.tokens.clone()
        } else if new.auth.uses(|r| r.token) {
            let tokens = super::TokenService::new(&new.token).map_err(|e| refuse(format!("{e:#}")))?;
            super::spawn_key_refresh(&tokens);
            Some(tokens)
        } else {
            None
        };
        let pools_changed =
            new.network.pool != self.config.network.pool || new.network.group_pools != self.config.network.group_pools;
        if pools_changed {
            self.rebuild_pools(&new).map_err(refuse)?;
        }
        let applied = changed_sections(&self.config, &new);
        if let Some(warning) = crate::package::stale_package_warning(&new) {
            warn!("{warning}");
        }
        // From here on nothing can fail: switch everything at once.
        self.shared.settings.store(Arc::new(Settings {
            openvpn,
            ping_interval: std::time::Duration::from_secs(new.openvpn.keepalive_interval_secs.into()),
            ping_timeout: std::time::Duration::from_secs(new.openvpn.keepalive_timeout_secs.into()),
            sstp,
        }));
        self.local_users = local_users;
        if let Some(identity) = identity {
            self.server_identity = identity;
        }
        self.trust = trust;
        self.trust_stamp = TrustStore::stamp(&new);
        self.radius = radius;
        self.tokens = tokens;
        self.config = new;
        let cut = self.cut_sessions_no_longer_allowed();
        info!(applied = ?applied, restart_needed = ?restart_needed, sessions_cut = cut, "configuration reloaded");
        Ok(json!({ "applied": applied, "restart_needed": restart_needed, "sessions_cut": cut }))
    }

    /// Cuts sessions the current configuration would refuse: revoked certificates, an
    /// authentication method no longer allowed, a cipher no longer offered, SSTP turned off.
    fn cut_sessions_no_longer_allowed(&mut self) -> usize {
        let before = self.closing.len();
        // The new material loaded a moment ago; a failure now is logged and changes nothing.
        let _ = self.check_trust(true);
        let auth = &self.config.auth;
        let ciphers = &self.config.openvpn.data_ciphers;
        let refused: Vec<(u32, &'static str)> = self
            .sessions
            .iter()
            .filter(|(id, _)| !self.closing.contains(id))
            .filter_map(|(&id, rec)| {
                let method_allowed = auth.require.iter().any(|r| match rec.method {
                    "certificate" => r.certificate && !r.radius && !r.token,
                    "radius" => r.radius,
                    // SSTP users of the local list: MS-CHAPv2 counts as radius.
                    "local" => r.radius && !r.certificate && !r.token,
                    "token" => r.token,
                    _ => false,
                });
                if !method_allowed || (rec.transport == "sstp" && !self.config.sstp.enabled) {
                    Some((id, "AUTH_FAILED,this sign-in method is no longer accepted"))
                } else if rec.cipher.is_some_and(|c| !ciphers.contains(&c)) {
                    Some((id, "RESTART"))
                } else {
                    None
                }
            })
            .collect();
        for (peer_id, notice) in refused {
            if let Some(rec) = self.sessions.get(&peer_id) {
                warn!(user = %rec.user, peer = %rec.peer, notice, "session no longer allowed after the reload");
            }
            self.close_session(peer_id, "no longer allowed by the configuration", notice);
        }
        self.closing.len().saturating_sub(before)
    }
}

/// Sections whose values differ.
fn changed_sections(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut check = |name, differs: bool| {
        if differs {
            changed.push(name);
        }
    };
    check("network", old.network != new.network);
    check("pki", old.pki != new.pki);
    check("openvpn", old.openvpn != new.openvpn);
    check("auth", old.auth != new.auth);
    check("radius", old.radius != new.radius);
    check("token", old.token != new.token);
    check("sstp", old.sstp != new.sstp);
    changed
}

/// Keys whose new values take effect only after a restart.
fn restart_needed(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut keys = Vec::new();
    let mut check = |key, differs: bool| {
        if differs {
            keys.push(key);
        }
    };
    check("gateway.state_dir", old.gateway.state_dir != new.gateway.state_dir);
    check("listen.udp", old.listen.udp != new.listen.udp);
    check("listen.tcp", old.listen.tcp != new.listen.tcp);
    check("dataplane.workers", old.dataplane.workers != new.dataplane.workers);
    check("dataplane.tun_name", old.dataplane.tun_name != new.dataplane.tun_name);
    check("dataplane.offload", old.dataplane.offload != new.dataplane.offload);
    check("dataplane.steering", old.dataplane.steering != new.dataplane.steering);
    check("openvpn.tls_crypt", old.openvpn.tls_crypt != new.openvpn.tls_crypt);
    check("openvpn.tun_mtu", old.openvpn.tun_mtu != new.openvpn.tun_mtu);
    check("pki.tls_crypt_key", old.tls_crypt_key_path() != new.tls_crypt_key_path());
    check("admin", old.admin != new.admin);
    // The responders' settings and sockets are made at start.
    check("ikev2", old.ikev2 != new.ikev2);
    keys
}

fn rfc3339(t: SystemTime) -> String {
    OffsetDateTime::from(t).format(&Rfc3339).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reload_names_the_data_plane_keys_that_need_a_restart_and_only_those() {
        let old = Config::default();
        let mut new = old.clone();
        new.dataplane.offload = !old.dataplane.offload;
        new.dataplane.steering = !old.dataplane.steering;
        new.dataplane.workers = old.dataplane.workers + 1;
        new.network.dns_servers = vec!["10.50.0.53".parse().unwrap()];
        assert_eq!(restart_needed(&old, &new), ["dataplane.workers", "dataplane.offload", "dataplane.steering"]);
        assert!(restart_needed(&old, &old).is_empty());
    }
}
