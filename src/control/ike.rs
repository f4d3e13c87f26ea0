//! IKEv2 on the control plane: the responders' certificate checks (against the same
//! trust material as OpenVPN, swapped on reload), the decision on an authenticated
//! client (address from the pools, DNS, split-tunnel routes), and the relay of EAP
//! between a client and the RADIUS servers. EAP-MSCHAPv2 through RADIUS counts as the
//! `radius` method of `[auth] require`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use ipnet::{IpNet, Ipv4Net};
use rustls::pki_types::PrivateKeyDer;
use tracing::warn;

use super::auth::Refusal;
use super::{Admission, ClientInfo, ControlPlane};
use crate::config::Config;
use crate::dataplane::{LocalHandle, WorkerCommand};
use crate::pki::{ServerIdentity, TrustStore, client_identity};
use crate::proto::ike::{self, Algorithms, Authorization, Credential, EapReply, Grant, PeerVerifier, ResponderConfig};
use crate::proto::radius::{AccessReply, AccessRequest};

/// The trust material the responders check client certificates against; the control
/// plane replaces it when the roots, CRLs or revocations change.
pub struct SharedTrust(ArcSwap<TrustStore>);

impl SharedTrust {
    pub fn new(trust: TrustStore) -> SharedTrust {
        SharedTrust(ArcSwap::from_pointee(trust))
    }

    pub fn replace(&self, trust: TrustStore) {
        self.0.store(Arc::new(trust));
    }
}

impl PeerVerifier for SharedTrust {
    fn verify_chain(&self, chain: &[Vec<u8>]) -> Result<(), String> {
        self.0.load().verify_client_chain(chain, SystemTime::now()).map_err(|e| format!("{e:#}"))
    }

    fn certreq_hashes(&self) -> Vec<[u8; 20]> {
        self.0.load().root_certificates().iter().filter_map(|root| ike::auth::spki_sha1(root)).collect()
    }
}

/// The gateway's IKE identity: its server certificate chain and key.
pub fn credential(identity: &ServerIdentity) -> anyhow::Result<Arc<Credential>> {
    let PrivateKeyDer::Pkcs8(key) = &identity.key else {
        anyhow::bail!("IKEv2 needs the server key in PKCS#8 form (\"BEGIN PRIVATE KEY\")");
    };
    let chain = identity.chain.iter().map(|c| c.to_vec()).collect();
    Ok(Arc::new(
        Credential::new(chain, key.secret_pkcs8_der()).context("the server certificate cannot be used for IKEv2")?,
    ))
}

/// One worker's responder settings; `spi_tag` is the worker's index.
pub fn responder_config(
    config: &Config,
    credential: Arc<Credential>,
    trust: Arc<SharedTrust>,
    spi_tag: u8,
) -> ResponderConfig {
    let mut responder = ResponderConfig::new(credential, trust);
    if config.ikev2.legacy_windows {
        responder.algorithms = Algorithms::default().with_legacy_windows();
    }
    responder.timing.dpd_interval = Duration::from_secs(config.ikev2.dpd_secs.into());
    // Short liveness intervals also get quicker retransmissions, so that a dead client
    // is given up in proportion (5 tries with doubling waits: about 2 min by default).
    responder.timing.retransmit_timeout = responder.timing.retransmit_timeout.min(responder.timing.dpd_interval / 4);
    responder.eap = eap_allowed(config);
    responder.spi_tag = Some(spi_tag);
    responder
}

/// EAP (MSCHAPv2, checked by RADIUS) is offered when passwords alone admit a client.
fn eap_allowed(config: &Config) -> bool {
    config.auth.require.iter().any(|r| r.radius && !r.certificate && !r.token)
}

/// What RADIUS answered an EAP message, back on the control plane's loop.
pub struct EapOutcome {
    handle: LocalHandle,
    peer: SocketAddr,
    identity: String,
    reply: Result<AccessReply, String>,
}

/// A client's EAP conversation with RADIUS: the State to echo, then its admission.
#[derive(Default)]
pub struct EapConversation {
    state: Option<Vec<u8>>,
    admission: Option<Admission>,
    started: Option<Instant>,
}

/// EAP-Failure with identifier 0, when RADIUS sent none.
const EAP_FAILURE: [u8; 4] = [4, 0, 0, 4];

impl ControlPlane {
    /// An IKEv2 client passed authentication (certificate or EAP): admit it or not.
    pub(super) fn authorize_ike(&mut self, handle: LocalHandle, peer: SocketAddr, request: ike::AuthRequest) {
        let asked = self.ike_eap.get(&handle).and_then(|c| c.started).unwrap_or_else(Instant::now);
        let decided = self.decide_ike(handle, &request);
        self.metrics.auth_decided(asked.elapsed(), None);
        let (decision, peer_id) = match decided {
            Ok((admission, certificate)) => {
                let client = ClientInfo { cipher: None, version: None, platform: Some("IKEv2") };
                match self.admit(handle, peer, "ikev2", certificate, &client, admission) {
                    Ok((peer_id, address)) => (Authorization::Accept(self.ike_grant(address)), Some(peer_id)),
                    Err(_) => (Authorization::Reject, None), // logged by admit
                }
            }
            Err(refusal) => {
                *self.refusals.entry(refusal.kind).or_default() += 1;
                warn!(%peer, transport = "ikev2", user = %request.identity.display(), reason = %refusal.reason, kind = refusal.kind, "authentication refused");
                (Authorization::Reject, None)
            }
        };
        self.ike_eap.remove(&handle);
        self.shared.inboxes[handle.worker].send(WorkerCommand::IkeAuthorization { handle, decision, peer_id });
    }

    #[allow(clippy::type_complexity)]
    fn decide_ike(
        &mut self,
        handle: LocalHandle,
        request: &ike::AuthRequest,
    ) -> Result<(Admission, Option<(Vec<u8>, crate::pki::ClientIdentity)>), Refusal> {
        if !request.wants_ipv4 {
            return Err(Refusal::new("no_address_request", "the client did not ask for a tunnel address"));
        }
        if let Some(leaf) = &request.certificate {
            if !self.config.auth.require.iter().any(|r| r.certificate && !r.radius && !r.token) {
                return Err(Refusal::new("method_not_allowed", "a certificate alone is not accepted here"));
            }
            let identity = client_identity(leaf)
                .map_err(|_| Refusal::new("bad_certificate", "the client certificate cannot be read"))?;
            if let Some(why) = self.trust.is_revoked(leaf) {
                warn!(user = %identity.common_name, thumbprint = %identity.thumbprint, %why, "revoked certificate refused");
                return Err(Refusal::new("revoked", "certificate revoked"));
            }
            let admission = Admission::plain(identity.common_name.clone(), "certificate");
            return Ok((admission, Some((leaf.clone(), identity))));
        }
        match self.ike_eap.get_mut(&handle).and_then(|c| c.admission.take()) {
            Some(admission) => Ok((admission, None)),
            None => Err(Refusal::new("method_not_allowed", "neither a certificate nor EAP admitted the client")),
        }
    }

    /// Address, DNS servers and the networks behind the gateway (all of IPv4 with
    /// `full_tunnel`), which narrow the client's traffic selectors.
    fn ike_grant(&self, address: std::net::Ipv4Addr) -> Grant {
        let network = &self.config.network;
        let routes: Vec<IpNet> = if network.full_tunnel {
            vec![IpNet::V4(Ipv4Net::default())]
        } else {
            network.routes.iter().copied().map(IpNet::V4).collect()
        };
        let dns = network
            .dns_servers
            .iter()
            .filter_map(|a| match a {
                IpAddr::V4(v4) => Some(*v4),
                IpAddr::V6(_) => None,
            })
            .collect();
        Grant { virtual_ipv4: Some(address), dns, routes }
    }

    /// An EAP message from a client: relayed to RADIUS by a task.
    pub(super) fn relay_ike_eap(&mut self, handle: LocalHandle, peer: SocketAddr, identity: String, message: Vec<u8>) {
        let Some(radius) = self.radius.clone().filter(|_| eap_allowed(&self.config)) else {
            warn!(%peer, transport = "ikev2", user = %identity, "EAP refused: passwords alone are not accepted here");
            let reply = EapReply::Failure { message: EAP_FAILURE.to_vec() };
            self.shared.inboxes[handle.worker].send(WorkerCommand::IkeEapReply { handle, reply });
            return;
        };
        let conversation = self.ike_eap.entry(handle).or_default();
        conversation.started.get_or_insert_with(Instant::now);
        let mut access = AccessRequest::eap(identity.clone(), message);
        access.state = conversation.state.take();
        access.calling_station_id = Some(peer.to_string());
        let results = self.ike_eap_outcomes.clone();
        tokio::spawn(async move {
            let reply = radius.access(access).await;
            let _ = results.send(EapOutcome { handle, peer, identity, reply });
        });
    }

    /// RADIUS answered: the next EAP request, or success with the MSK, or failure.
    pub(super) fn finish_ike_eap(&mut self, outcome: EapOutcome) {
        let EapOutcome { handle, peer, identity, reply } = outcome;
        let reply = match reply {
            Ok(AccessReply::Challenge { state, eap_message: Some(message), .. }) => {
                self.ike_eap.entry(handle).or_default().state = state;
                EapReply::Request(message)
            }
            Ok(AccessReply::Accept(mut info)) => {
                let message = info.eap_message.take().unwrap_or_else(|| vec![3, 0, 0, 4]);
                // The MSK of EAP-MSCHAPv2 as RADIUS delivers it (RFC 3748 §7.10).
                let msk = match (info.mppe_recv_key.take(), info.mppe_send_key.take()) {
                    (Some(recv), Some(send)) => [recv, send].concat(),
                    _ => Vec::new(),
                };
                self.ike_eap.entry(handle).or_default().admission = Some(Admission::from_radius(identity, info));
                EapReply::Success { message, msk }
            }
            Ok(AccessReply::Reject { eap_message, reply_message, .. }) => {
                *self.refusals.entry("radius_reject").or_default() += 1;
                let reason = reply_message.unwrap_or_else(|| "the RADIUS server refused the EAP sign-in".into());
                warn!(%peer, transport = "ikev2", user = %identity, %reason, "authentication refused");
                self.ike_eap.remove(&handle);
                EapReply::Failure { message: eap_message.unwrap_or_else(|| EAP_FAILURE.to_vec()) }
            }
            Ok(AccessReply::Challenge { .. }) => {
                warn!(%peer, transport = "ikev2", user = %identity, "RADIUS sent a challenge without an EAP message");
                self.ike_eap.remove(&handle);
                EapReply::Failure { message: EAP_FAILURE.to_vec() }
            }
            Err(e) => {
                *self.refusals.entry("radius_unreachable").or_default() += 1;
                warn!(%peer, transport = "ikev2", user = %identity, error = %e, "no authentication server answered");
                self.ike_eap.remove(&handle);
                EapReply::Failure { message: EAP_FAILURE.to_vec() }
            }
        };
        self.shared.inboxes[handle.worker].send(WorkerCommand::IkeEapReply { handle, reply });
    }
}
