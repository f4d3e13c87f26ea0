//! The TLS configuration of the OpenVPN control channel, rebuilt whenever the trust
//! material changes, and that of SSTP.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use crate::config::Config;
use crate::dataplane::SstpListener;
use crate::pki::{ServerIdentity, TrustStore};
use crate::proto::openvpn::reliable::Timing;
use crate::proto::openvpn::session::ServerSettings;
use crate::proto::sstp::{CertHashes, SstpSettings};

/// TLS 1.2 and 1.3 with a mandatory client certificate checked against the trusted
/// roots, CRLs and revoked thumbprints. No session tickets or resumption: OpenVPN
/// clients do a full handshake every time.
pub fn server_config(
    trust: &TrustStore,
    identity: &ServerIdentity,
    certificate_required: bool,
) -> anyhow::Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS versions")?
        .with_client_cert_verifier(trust.client_verifier(certificate_required)?)
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        .context("the server certificate and key cannot be used for TLS")?;
    cfg.send_tls13_tickets = 0;
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(cfg)
}

pub fn openvpn_settings(
    config: &Config,
    trust: &TrustStore,
    identity: &ServerIdentity,
) -> anyhow::Result<Arc<ServerSettings>> {
    let o = &config.openvpn;
    Ok(Arc::new(ServerSettings {
        tls: Arc::new(server_config(trust, identity, config.client_certificate_required())?),
        data_ciphers: o.data_ciphers.clone(),
        reneg_interval: (o.reneg_secs > 0).then(|| Duration::from_secs(o.reneg_secs.into())),
        handshake_window: Duration::from_secs(o.handshake_window_secs.into()),
        reliable: Timing::default(),
    }))
}

/// TLS and SSTP settings for the workers when `[sstp]` is enabled: the gateway's
/// certificate, no client certificate (users sign in inside PPP, with MS-CHAPv2 or
/// EAP-TLS).
pub fn sstp_listener(config: &Config, identity: &ServerIdentity) -> anyhow::Result<Option<Arc<SstpListener>>> {
    if !config.sstp.enabled {
        return Ok(None);
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS versions")?
        .with_no_client_auth()
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        .context("the server certificate and key cannot be used for TLS")?;
    tls.send_tls13_tickets = 0;
    let leaf = identity.chain.first().context("the server certificate file holds no certificate")?;
    let mut settings = SstpSettings::new(CertHashes::of_der(leaf));
    settings.allow_sha1 = config.sstp.allow_sha1_binding;
    (settings.ppp.auth, settings.ppp.fallback_auth) = super::sstp::ppp_auth(config);
    Ok(Some(Arc::new(SstpListener { tls: Arc::new(tls), settings })))
}
