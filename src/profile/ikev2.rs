//! What every IKEv2 client profile says (strongSwan, Apple, Windows): the gateway, how the
//! user signs in, which networks go through the tunnel, and the algorithms to offer.

use std::net::Ipv4Addr;

use anyhow::{Context as _, Result, bail};
use ipnet::Ipv4Net;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

use crate::config::Config;
use crate::crypto::dh::DhGroup;
use crate::pki::{KeyAlgorithm, Pki, load_certs};
use crate::proto::ike::crypto::{EncrAlgorithm, PrfAlgorithm};

/// The IKE SA the profiles ask for: AES-256-GCM with PRF-HMAC-SHA-256, all of which the
/// gateway's default algorithms accept (see the test against `proposal::Algorithms`).
pub const IKE_ENCRYPTION: EncrAlgorithm = EncrAlgorithm::AesGcm16_256;
pub const IKE_PRF: PrfAlgorithm = PrfAlgorithm::HmacSha256;
/// DH groups, the client's first choice first. Apple and Windows profiles take one: the first.
pub const IKE_DH_GROUPS: [DhGroup; 3] = [DhGroup::Ecp384, DhGroup::Modp2048, DhGroup::Curve25519];
/// ESP ciphers (AEAD only: the gateway's data plane has no CBC+HMAC).
pub const ESP_ENCRYPTION: [EncrAlgorithm; 3] =
    [EncrAlgorithm::AesGcm16_256, EncrAlgorithm::AesGcm16_128, EncrAlgorithm::ChaCha20Poly1305];

/// How the profile's holder signs in over IKEv2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignIn {
    /// With a client certificate: the holder's own, or (in a profile for any user) one the
    /// user installs beside the profile.
    Certificate(Option<CertificateAndKey>),
    /// EAP-MSCHAPv2 with a username and password, checked by RADIUS; the username is the
    /// profile's client name when it has one.
    Password,
}

/// A client's certificate and key, in PEM (as issued) and DER.
#[derive(Clone, PartialEq, Eq)]
pub struct CertificateAndKey {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: Vec<u8>,
    /// PKCS#8.
    pub key_der: Vec<u8>,
    pub key_algorithm: KeyAlgorithm,
}

impl std::fmt::Debug for CertificateAndKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAndKey").field("key_algorithm", &self.key_algorithm).finish_non_exhaustive()
    }
}

/// The settings an IKEv2 client profile is made from.
#[derive(Debug, Clone)]
pub struct Ikev2Profile {
    /// The address clients connect to, and the identity they expect of the gateway (its
    /// certificate names it: `p2sgw pki init` puts it in the subjectAltName).
    pub gateway: String,
    /// The profile's holder; `None` for a profile any user completes.
    pub client_name: Option<String>,
    pub sign_in: SignIn,
    /// Networks reached through the tunnel: `[network] routes`, or 0.0.0.0/0 with
    /// `full_tunnel` (and when there are no routes: the gateway narrows it to what it grants).
    pub remote_networks: Vec<Ipv4Net>,
    pub full_tunnel: bool,
    pub dpd_secs: u32,
    /// The root CA of the gateway's certificate.
    pub root: CertificateDer<'static>,
    /// The common name of the CA that issued the gateway's certificate.
    pub server_issuer_common_name: Option<String>,
}

impl Ikev2Profile {
    /// The profile for `client_name` (or any user), whose server certificate chains to `root`.
    ///
    /// A named client signs in with its certificate when it was issued one and a
    /// certificate alone admits it, else with a password when a password alone does.
    /// A profile for any user asks for a password when that admits, else for a
    /// certificate the user adds.
    pub fn new(config: &Config, client_name: Option<&str>, root: CertificateDer<'static>) -> Result<Ikev2Profile> {
        let certificate_admits = config.auth.require.iter().any(|r| r.certificate && !r.needs_password());
        let password_admits = config.auth.require.iter().any(|r| r.radius && !r.certificate && !r.token);
        if !certificate_admits && !password_admits {
            bail!(
                "IKEv2 clients sign in with a certificate or a RADIUS password alone, and [auth] require admits neither"
            );
        }
        if let Some(name) = client_name
            && name.chars().any(char::is_control)
        {
            bail!("the client name {name:?} has control characters, which no IKEv2 profile can hold");
        }
        let sign_in = match client_name {
            Some(name) if certificate_admits => {
                let pki = Pki::open(&config.pki_dir())?;
                match pki.client_credentials(name) {
                    Ok(credentials) => SignIn::Certificate(Some(client_identity(&pki, &credentials, name)?)),
                    Err(_) if password_admits => SignIn::Password,
                    Err(e) => return Err(e),
                }
            }
            Some(_) => SignIn::Password,
            None if password_admits => SignIn::Password,
            None => SignIn::Certificate(None),
        };
        let network = &config.network;
        let whole_internet = network.full_tunnel || network.routes.is_empty();
        let everything = Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0).expect("0 is a valid prefix length");
        let remote_networks = if whole_internet { vec![everything] } else { network.routes.clone() };
        let server_cert_path = config.server_cert_path();
        let server_leaf = load_certs(&server_cert_path)?.swap_remove(0);
        Ok(Ikev2Profile {
            gateway: config.gateway_name(),
            client_name: client_name.map(str::to_string),
            sign_in,
            remote_networks,
            full_tunnel: network.full_tunnel,
            dpd_secs: config.ikev2.dpd_secs,
            root,
            server_issuer_common_name: issuer_common_name(&server_leaf),
        })
    }

    /// The holder's certificate and key, when the profile carries them.
    pub fn identity(&self) -> Option<&CertificateAndKey> {
        match &self.sign_in {
            SignIn::Certificate(identity) => identity.as_ref(),
            SignIn::Password => None,
        }
    }
}

fn client_identity(pki: &Pki, credentials: &crate::pki::ClientCredentials, name: &str) -> Result<CertificateAndKey> {
    let (cert_pem, key_pem) = super::client_certificate(credentials, name)?;
    let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .with_context(|| format!("{}", credentials.cert_path.display()))?
        .to_vec();
    let key_der = rustls::pki_types::PrivatePkcs8KeyDer::from_pem_slice(key_pem.as_bytes())
        .with_context(|| format!("{}: not a PKCS#8 private key", credentials.key_path.display()))?
        .secret_pkcs8_der()
        .to_vec();
    Ok(CertificateAndKey { cert_pem, key_pem, cert_der, key_der, key_algorithm: pki.key_algorithm() })
}

fn issuer_common_name(cert_der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let common_name = cert.issuer().iter_common_name().next()?.as_str().ok()?.to_string();
    Some(common_name)
}

/// A PKI with a client "alice" and a configuration with IKEv2 on, for the profiles' tests.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    pub(crate) use crate::pki::test_support::{GATEWAY, TempDir};

    pub(crate) fn setup(label: &str) -> (TempDir, Config) {
        let tmp = TempDir::new(label);
        Pki::init(tmp.path(), GATEWAY, KeyAlgorithm::EcdsaP256).unwrap();
        Pki::open(tmp.path()).unwrap().issue("alice", 30).unwrap();
        let mut config = crate::pki::test_support::config_for(tmp.path());
        config.gateway.state_dir = tmp.path().to_path_buf();
        config.ikev2.enabled = true;
        config.network.routes = vec!["10.1.0.0/16".parse().unwrap(), "192.168.7.0/24".parse().unwrap()];
        config.network.dns_servers = vec!["10.1.0.4".parse().unwrap()];
        config.network.dns_search = vec!["corp.example".into()];
        (tmp, config)
    }

    pub(crate) fn root(config: &Config) -> CertificateDer<'static> {
        load_certs(&config.pki_dir().join("ca.crt")).unwrap().swap_remove(0)
    }

    pub(crate) fn profile(config: &Config, name: Option<&str>) -> Ikev2Profile {
        Ikev2Profile::new(config, name, root(config)).unwrap()
    }

    pub(crate) fn password_only(config: &mut Config) {
        config.auth.require = vec!["radius".parse().unwrap()];
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;
    use crate::proto::ike::proposal::Algorithms;

    #[test]
    fn sign_in_follows_the_admitted_methods_and_the_clients_credentials() {
        let (tmp, mut config) = setup("ikev2-sign-in");
        let alice = profile(&config, Some("alice"));
        let identity = alice.identity().expect("alice signs in with her certificate");
        let issued = Pki::open(tmp.path()).unwrap().client_credentials("alice").unwrap();
        assert_eq!(identity.cert_der, load_certs(&issued.cert_path).unwrap()[0].as_ref());
        assert_eq!(identity.key_algorithm, KeyAlgorithm::EcdsaP256);
        assert_eq!(profile(&config, None).sign_in, SignIn::Certificate(None));
        let err = Ikev2Profile::new(&config, Some("bob"), root(&config)).unwrap_err().to_string();
        assert!(err.contains("no client certificate named \"bob\""), "{err}");

        // Either method admits: a user without a certificate signs in with a password.
        config.auth.require = vec!["certificate".parse().unwrap(), "radius".parse().unwrap()];
        assert_eq!(profile(&config, Some("bob")).sign_in, SignIn::Password);
        assert!(profile(&config, Some("alice")).identity().is_some());
        assert_eq!(profile(&config, None).sign_in, SignIn::Password);

        password_only(&mut config);
        assert_eq!(profile(&config, Some("alice")).sign_in, SignIn::Password);

        let err = Ikev2Profile::new(&config, Some("eve\n}"), root(&config)).unwrap_err().to_string();
        assert!(err.contains("control characters"), "{err}");

        config.auth.require = vec!["certificate+radius".parse().unwrap()];
        let err = Ikev2Profile::new(&config, None, root(&config)).unwrap_err().to_string();
        assert!(err.contains("admits neither"), "{err}");
    }

    #[test]
    fn remote_networks_are_the_routes_or_everything() {
        let (_tmp, mut config) = setup("ikev2-networks");
        let routes = profile(&config, None).remote_networks;
        assert_eq!(routes, config.network.routes);
        config.network.full_tunnel = true;
        let full = profile(&config, None);
        assert!(full.full_tunnel);
        assert_eq!(full.remote_networks, ["0.0.0.0/0".parse::<Ipv4Net>().unwrap()]);
        config.network.full_tunnel = false;
        config.network.routes.clear();
        let no_routes = profile(&config, None);
        assert!(!no_routes.full_tunnel);
        assert_eq!(no_routes.remote_networks, ["0.0.0.0/0".parse::<Ipv4Net>().unwrap()]);
    }

    #[test]
    fn the_server_certificates_issuer_is_named() {
        let (_tmp, config) = setup("ikev2-issuer");
        let issuer = profile(&config, None).server_issuer_common_name.unwrap();
        let ca = x509_parser::parse_x509_certificate(&root(&config)).unwrap().1.subject().to_string();
        assert!(ca.contains(&issuer), "{issuer} in {ca}");
    }

    /// The profiles offer only what the gateway accepts without `legacy_windows`.
    #[test]
    fn offered_algorithms_are_accepted_by_the_gateway() {
        let gateway = Algorithms::default();
        assert!(gateway.ike_encryption.contains(&IKE_ENCRYPTION));
        assert!(gateway.prf.contains(&IKE_PRF));
        for group in IKE_DH_GROUPS {
            assert!(gateway.dh_groups.contains(&group), "{group:?}");
        }
        for cipher in ESP_ENCRYPTION {
            assert!(gateway.esp_encryption.contains(&cipher), "{cipher:?}");
        }
    }
}
