use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{CertificateError, ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
use x509_parser::extensions::GeneralName;

use super::test_support::{GATEWAY, TempDir, config_for};
use super::*;
use crate::proto::openvpn::static_key::StaticKey;

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn read_crl(dir: &Path) -> (u64, Vec<String>) {
    let crls = load_crls(&dir.join("crl.pem")).unwrap();
    assert_eq!(crls.len(), 1);
    let (_, crl) = x509_parser::parse_x509_crl(&crls[0]).unwrap();
    let number = crl.crl_number().unwrap().to_u64_digits().first().copied().unwrap_or(0);
    let serials = crl.iter_revoked_certificates().map(|r| serial_to_hex(r.raw_serial())).collect();
    (number, serials)
}

fn first_cert(path: &Path) -> CertificateDer<'static> {
    load_certs(path).unwrap().swap_remove(0)
}

#[test]
fn thumbprint_is_sha1_and_parses_common_spellings() {
    // FIPS 180-2 appendix A.1: SHA-1("abc").
    let tp = Thumbprint::of_der(b"abc");
    assert_eq!(tp.to_string(), "A9993E364706816ABA3E25717850C26C9CD0D89D");
    for spelling in [
        "a9993e364706816aba3e25717850c26c9cd0d89d",
        "A9:99:3E:36:47:06:81:6A:BA:3E:25:71:78:50:C2:6C:9C:D0:D8:9D",
        "a9 99 3e 36 47 06 81 6a ba 3e 25 71 78 50 c2 6c 9c d0 d8 9d",
        "\u{200e}A9993E364706816ABA3E25717850C26C9CD0D89D",
    ] {
        assert_eq!(spelling.parse::<Thumbprint>(), Ok(tp), "{spelling:?}");
    }
    assert_eq!("A9993E".parse::<Thumbprint>(), Err(ThumbprintParseError::WrongLength(6)));
    assert_eq!(
        "G9993E364706816ABA3E25717850C26C9CD0D89D".parse::<Thumbprint>(),
        Err(ThumbprintParseError::NotHex('G'))
    );
}

#[test]
fn key_algorithm_names_round_trip() {
    assert_eq!(KeyAlgorithm::default(), KeyAlgorithm::EcdsaP256);
    for algorithm in KeyAlgorithm::ALL {
        assert_eq!(algorithm.to_string().parse::<KeyAlgorithm>(), Ok(algorithm));
    }
    assert_eq!("RSA-3072".parse::<KeyAlgorithm>(), Ok(KeyAlgorithm::Rsa3072));
    assert!("rsa-1024".parse::<KeyAlgorithm>().is_err());
}

#[test]
fn init_writes_a_consistent_pki() {
    let tmp = TempDir::new("pki-init");
    let dir = tmp.path().join("pki");
    let summary = Pki::init(&dir, GATEWAY, KeyAlgorithm::EcdsaP256).unwrap();
    assert_eq!(summary.server_common_name, GATEWAY);
    assert_eq!(mode_of(&dir), 0o700);
    assert_eq!(mode_of(&dir.join("clients")), 0o700);
    for secret in ["ca.key", "server.key", "tls-crypt.key"] {
        assert_eq!(mode_of(&dir.join(secret)), 0o600, "{secret}");
    }
    assert_eq!(mode_of(&dir.join("ca.crt")), 0o644);

    let ca_der = first_cert(&summary.ca_cert_path);
    assert_eq!(Thumbprint::of_der(&ca_der), summary.ca_thumbprint);
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
    assert_eq!(subject_common_name(&ca_der).unwrap(), format!("p2sgw root CA {GATEWAY}"));
    assert!(ca.basic_constraints().unwrap().unwrap().value.ca);
    let ca_usage = ca.key_usage().unwrap().unwrap().value;
    assert!(ca_usage.key_cert_sign() && ca_usage.crl_sign());

    let server_der = first_cert(&summary.server_cert_path);
    let (_, server) = x509_parser::parse_x509_certificate(&server_der).unwrap();
    assert_eq!(subject_common_name(&server_der).unwrap(), GATEWAY);
    assert_eq!(server.issuer().as_raw(), ca.subject().as_raw());
    assert!(server.extended_key_usage().unwrap().unwrap().value.server_auth);
    assert!(server.key_usage().unwrap().unwrap().value.digital_signature());
    let sans = &server.subject_alternative_name().unwrap().unwrap().value.general_names;
    assert_eq!(sans, &vec![GeneralName::DNSName(GATEWAY)]);

    let tls_crypt = std::fs::read_to_string(&summary.tls_crypt_key_path).unwrap();
    StaticKey::parse(&tls_crypt).unwrap();
    assert_eq!(load_revoked_list(&summary.revoked_list_path).unwrap(), vec![]);
    assert!(std::fs::read_to_string(&summary.revoked_list_path).unwrap().starts_with("# "));
    assert_eq!(read_crl(&dir), (1, vec![]));

    let again = Pki::init(&dir, GATEWAY, KeyAlgorithm::EcdsaP256).unwrap_err().to_string();
    assert_eq!(again, format!("PKI already initialised at {}; remove it or use another --dir", dir.display()));
}

#[test]
fn init_puts_an_ip_gateway_in_an_ip_san_and_refuses_junk_names() {
    let tmp = TempDir::new("pki-ip");
    let summary = Pki::init(tmp.path(), "192.0.2.10", KeyAlgorithm::EcdsaP256).unwrap();
    let server_der = first_cert(&summary.server_cert_path);
    let (_, server) = x509_parser::parse_x509_certificate(&server_der).unwrap();
    let sans = &server.subject_alternative_name().unwrap().unwrap().value.general_names;
    assert_eq!(sans, &vec![GeneralName::IPAddress(&[192, 0, 2, 10])]);

    let junk = TempDir::new("pki-junk");
    let err = Pki::init(junk.path(), "vpn gateway", KeyAlgorithm::EcdsaP256).unwrap_err();
    assert!(err.to_string().contains("neither an IP address nor a DNS name"), "{err}");
    assert!(!junk.path().exists(), "nothing is created for a refused name");
}

#[test]
fn open_refuses_a_directory_without_a_pki() {
    let tmp = TempDir::new("pki-none");
    let err = Pki::open(tmp.path()).unwrap_err().to_string();
    assert!(err.starts_with(&format!("no PKI at {}", tmp.path().display())), "{err}");
}

#[test]
fn concurrent_issues_keep_every_certificate() {
    let tmp = TempDir::new("pki-concurrent");
    let dir = tmp.path();
    Pki::init(dir, GATEWAY, KeyAlgorithm::EcdsaP256).unwrap();
    // Each thread opens the PKI first, as separate `p2sgw pki issue` processes would.
    let barrier = std::sync::Barrier::new(8);
    std::thread::scope(|scope| {
        for k in 0..8 {
            let barrier = &barrier;
            scope.spawn(move || {
                let mut pki = Pki::open(dir).unwrap();
                barrier.wait();
                pki.issue(&format!("user{k}"), 30).unwrap();
            });
        }
    });
    let pki = Pki::open(dir).unwrap();
    let mut names: Vec<&str> = pki.clients().iter().map(|c| c.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, (0..8).map(|k| format!("user{k}")).collect::<Vec<_>>());
    for k in 0..8 {
        pki.client_credentials(&format!("user{k}")).unwrap();
    }
}

#[test]
fn issue_revoke_round_trip() {
    let tmp = TempDir::new("pki-issue");
    let dir = tmp.path();
    Pki::init(dir, GATEWAY, KeyAlgorithm::EcdsaP256).unwrap();
    let mut pki = Pki::open(dir).unwrap();
    assert_eq!(pki.key_algorithm(), KeyAlgorithm::EcdsaP256);

    let alice = pki.issue("alice", 365).unwrap();
    assert_eq!(mode_of(&alice.key_path), 0o600);
    let alice_der = first_cert(&alice.cert_path);
    assert_eq!(Thumbprint::of_der(&alice_der), alice.thumbprint);
    let (_, cert) = x509_parser::parse_x509_certificate(&alice_der).unwrap();
    assert_eq!(subject_common_name(&alice_der).unwrap(), "alice");
    assert_eq!(cert.raw_serial().len(), 16);
    assert_eq!(serial_to_hex(cert.raw_serial()), alice.serial_hex);
    assert!(cert.extended_key_usage().unwrap().unwrap().value.client_auth);
    assert!(cert.key_usage().unwrap().unwrap().value.digital_signature());
    assert!(!cert.is_ca());
    assert_eq!(cert.validity().not_after.to_datetime(), alice.not_after);

    let duplicate = pki.issue("alice", 365).unwrap_err().to_string();
    assert!(duplicate.contains("already exists") && duplicate.contains(&alice.thumbprint.to_string()), "{duplicate}");
    let too_long = pki.issue("bob", 3651).unwrap_err().to_string();
    assert!(too_long.contains("outlive the CA"), "{too_long}");

    // The index survives a reopen.
    let mut pki = Pki::open(dir).unwrap();
    assert_eq!(pki.clients().len(), 1);
    assert_eq!(pki.clients()[0].thumbprint, alice.thumbprint);

    let revoked = pki.revoke(RevokeTarget::Name("alice".into())).unwrap();
    assert_eq!(
        revoked,
        RevokedClient {
            thumbprint: alice.thumbprint,
            name: Some("alice".into()),
            serial_hex: Some(alice.serial_hex.clone()),
            already: false
        }
    );
    assert_eq!(load_revoked_list(&dir.join("revoked.txt")).unwrap(), vec![alice.thumbprint]);
    assert!(
        std::fs::read_to_string(dir.join("revoked.txt"))
            .unwrap()
            .contains(&format!("{}  # alice, revoked ", alice.thumbprint))
    );
    assert_eq!(read_crl(dir), (2, vec![alice.serial_hex.clone()]));
    assert!(pki.client_credentials("alice").unwrap_err().to_string().contains("was revoked"));

    // Idempotent, by name or by thumbprint.
    assert!(pki.revoke(RevokeTarget::Name("alice".into())).unwrap().already);
    assert!(pki.revoke(RevokeTarget::Thumbprint(alice.thumbprint)).unwrap().already);
    assert_eq!(load_revoked_list(&dir.join("revoked.txt")).unwrap().len(), 1);
    assert_eq!(read_crl(dir).0, 2);

    // A revoked name can be issued again; its old serial stays on the CRL.
    let alice2 = pki.issue("alice", 30).unwrap();
    assert_ne!(alice2.thumbprint, alice.thumbprint);
    assert_eq!(pki.client_credentials("alice").unwrap().record.thumbprint, alice2.thumbprint);
    let again = pki.revoke(RevokeTarget::Thumbprint(alice2.thumbprint)).unwrap();
    assert_eq!(again.name.as_deref(), Some("alice"));
    assert!(!again.already);
    assert_eq!(read_crl(dir), (3, vec![alice.serial_hex.clone(), alice2.serial_hex.clone()]));

    // A certificate from elsewhere goes onto the thumbprint list only.
    let foreign: Thumbprint = "00112233445566778899AABBCCDDEEFF00112233".parse().unwrap();
    let outside = pki.revoke(RevokeTarget::Thumbprint(foreign)).unwrap();
    assert_eq!(outside, RevokedClient { thumbprint: foreign, name: None, serial_hex: None, already: false });
    assert_eq!(
        load_revoked_list(&dir.join("revoked.txt")).unwrap(),
        vec![alice.thumbprint, alice2.thumbprint, foreign]
    );
    assert_eq!(read_crl(dir).0, 3);
    assert!(pki.revoke(RevokeTarget::Thumbprint(foreign)).unwrap().already);

    let unknown = pki.revoke(RevokeTarget::Name("mallory".into())).unwrap_err().to_string();
    assert!(unknown.contains("no client certificate named \"mallory\""), "{unknown}");
}

#[test]
fn client_names_are_restricted() {
    let tmp = TempDir::new("pki-names");
    Pki::init(tmp.path(), GATEWAY, KeyAlgorithm::EcdsaP256).unwrap();
    let mut pki = Pki::open(tmp.path()).unwrap();
    for bad in ["", "../etc", "a/b", "with space", ".hidden", "-flag", "é", &"x".repeat(65)] {
        let err = pki.issue(bad, 10).unwrap_err().to_string();
        assert!(err.starts_with("invalid client name"), "{bad:?}: {err}");
    }
    pki.issue("Jane.Doe_2@example-corp.com", 10).unwrap();
    pki.issue(&"x".repeat(64), 10).unwrap();
}

#[test]
fn load_helpers_report_where_the_problem_is() {
    let tmp = TempDir::new("pki-load");
    std::fs::create_dir_all(tmp.path()).unwrap();
    let list = tmp.path().join("revoked.txt");
    assert_eq!(load_revoked_list(&list).unwrap(), vec![], "a missing list is empty");
    std::fs::write(&list, "# comment\n\nA9993E364706816ABA3E25717850C26C9CD0D89D # abc\nnot-a-thumbprint\n").unwrap();
    let err = load_revoked_list(&list).unwrap_err().to_string();
    assert!(err.starts_with(&format!("{}:4: \"not-a-thumbprint\"", list.display())), "{err}");

    let empty = tmp.path().join("empty.pem");
    std::fs::write(&empty, "nothing here\n").unwrap();
    assert!(load_certs(&empty).unwrap_err().to_string().contains("no \"BEGIN CERTIFICATE\" block"));
    assert!(load_private_key(&empty).unwrap_err().to_string().contains("no unencrypted private key"));
    let missing = load_certs(&tmp.path().join("missing.pem")).unwrap_err().to_string();
    assert!(missing.contains("missing.pem"), "{missing}");
}

#[test]
fn crls_load_from_pem_or_der() {
    let tmp = TempDir::new("pki-crl");
    Pki::init(tmp.path(), GATEWAY, KeyAlgorithm::EcdsaP256).unwrap();
    let pem = load_crls(&tmp.path().join("crl.pem")).unwrap();
    let der_path = tmp.path().join("crl.der");
    std::fs::write(&der_path, &pem[0]).unwrap();
    assert_eq!(load_crls(&der_path).unwrap(), pem);
}

#[test]
fn trust_store_tracks_revocations() {
    let tmp = TempDir::new("pki-trust");
    let dir = tmp.path();
    Pki::init(dir, GATEWAY, KeyAlgorithm::EcdsaP256).unwrap();
    let mut pki = Pki::open(dir).unwrap();
    let alice = pki.issue("alice", 30).unwrap();
    let bob = pki.issue("bob", 30).unwrap();
    let mut config = config_for(dir);
    let alice_der = first_cert(&alice.cert_path);
    let bob_der = first_cert(&bob.cert_path);

    let stamp = TrustStore::stamp(&config);
    let store = TrustStore::load(&config).unwrap();
    assert_eq!((store.root_count(), store.revoked_count()), (1, 0));
    assert_eq!(store.is_revoked(&bob_der), None);
    assert_eq!(TrustStore::stamp(&config), stamp, "nothing changed");

    pki.revoke(RevokeTarget::Name("bob".into())).unwrap();
    assert_ne!(TrustStore::stamp(&config), stamp);
    let store = TrustStore::load(&config).unwrap();
    assert_eq!(store.is_revoked(&bob_der), Some(RevocationReason::ThumbprintListed));
    assert_eq!(store.is_revoked(&alice_der), None);

    // Without the thumbprint list, the CRL still catches bob.
    std::fs::remove_file(config.revoked_list_path()).unwrap();
    let store = TrustStore::load(&config).unwrap();
    assert_eq!(store.is_revoked(&bob_der), Some(RevocationReason::ListedInCrl));

    config.pki.revoked_thumbprints = vec![alice.thumbprint.to_string().to_lowercase()];
    let store = TrustStore::load(&config).unwrap();
    assert_eq!(store.is_revoked(&alice_der), Some(RevocationReason::ThumbprintListed));

    config.pki.revoked_thumbprints = vec!["12:34".into()];
    let err = TrustStore::load(&config).unwrap_err().to_string();
    assert!(err.starts_with("[pki] revoked_thumbprints: \"12:34\""), "{err}");
}

#[test]
fn trust_store_checks_its_sources() {
    let tmp = TempDir::new("pki-sources");
    let dir = tmp.path();
    Pki::init(dir, GATEWAY, KeyAlgorithm::EcdsaP256).unwrap();
    let mut config = config_for(dir);

    // Only an explicitly listed CRL must exist.
    std::fs::remove_file(dir.join("crl.pem")).unwrap();
    TrustStore::load(&config).unwrap();
    config.pki.crl_files = vec![dir.join("other.crl")];
    assert!(TrustStore::load(&config).unwrap_err().to_string().contains("other.crl"));
    config.pki.crl_files.clear();

    config.pki.trusted_roots = vec![dir.join("server.crt")];
    let err = TrustStore::load(&config).unwrap_err().to_string();
    assert!(err.contains("is not a CA certificate"), "{err}");

    let bundle = dir.join("bundle.pem");
    std::fs::write(&bundle, std::fs::read_to_string(dir.join("ca.crt")).unwrap().repeat(21)).unwrap();
    config.pki.trusted_roots = vec![bundle];
    let err = TrustStore::load(&config).unwrap_err().to_string();
    assert!(err.starts_with("more than 20 trusted root certificates"), "{err}");

    // A CRL that claims to come from our root but is signed by another key.
    let other = TempDir::new("pki-sources-other");
    Pki::init(other.path(), GATEWAY, KeyAlgorithm::EcdsaP256).unwrap();
    config.pki.trusted_roots.clear();
    config.pki.crl_files = vec![other.path().join("crl.pem")];
    let err = format!("{:#}", TrustStore::load(&config).unwrap_err());
    assert!(err.contains("signature does not verify"), "{err}");
}

#[test]
fn server_identity_checks_the_key() {
    let tmp = TempDir::new("pki-server");
    let dir = tmp.path();
    Pki::init(dir, GATEWAY, KeyAlgorithm::EcdsaP256).unwrap();
    let mut config = config_for(dir);
    let identity = ServerIdentity::load(&config).unwrap();
    assert_eq!(identity.common_name, GATEWAY);
    assert_eq!(identity.chain.len(), 1);

    config.pki.server_key = Some(dir.join("ca.key"));
    let err = ServerIdentity::load(&config).unwrap_err().to_string();
    assert!(err.contains("does not belong to the certificate") && err.contains("ca.key"), "{err}");
}

#[test]
fn client_identity_describes_the_certificate() {
    let tmp = TempDir::new("pki-identity");
    Pki::init(tmp.path(), GATEWAY, KeyAlgorithm::EcdsaP256).unwrap();
    let issued = Pki::open(tmp.path()).unwrap().issue("carol@example.com", 10).unwrap();
    let identity = client_identity(&first_cert(&issued.cert_path)).unwrap();
    assert_eq!(identity.common_name, "carol@example.com");
    assert_eq!(identity.thumbprint, issued.thumbprint);
    assert_eq!(identity.serial_hex, issued.serial_hex);
    assert_eq!(identity.issuer, format!("CN=p2sgw root CA {GATEWAY}"));
    assert_eq!(identity.not_after, issued.not_after);
    assert!(client_identity(b"junk").is_err());
}

/// Runs a TLS handshake in memory between a client using the given certificate and a
/// server verifying with `store`. Returns the first error either side reports.
fn handshake(
    store: &TrustStore,
    config: &crate::config::Config,
    client: &IssuedClient,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<(), rustls::Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let server_identity = ServerIdentity::load(config).unwrap();
    let server_config = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .unwrap()
        .with_client_cert_verifier(store.client_verifier(true).unwrap())
        .with_single_cert(server_identity.chain, server_identity.key)
        .unwrap();
    let mut server_roots = RootCertStore::empty();
    server_roots.add(first_cert(&config.pki_dir().join("ca.crt"))).unwrap();
    let client_config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(server_roots)
        .with_client_auth_cert(load_certs(&client.cert_path).unwrap(), load_private_key(&client.key_path).unwrap())
        .unwrap();
    let mut client_conn =
        ClientConnection::new(Arc::new(client_config), ServerName::try_from(GATEWAY).unwrap()).unwrap();
    let mut server_conn = ServerConnection::new(Arc::new(server_config)).unwrap();

    for _ in 0..10 {
        let mut to_server = Vec::new();
        while client_conn.wants_write() {
            client_conn.write_tls(&mut to_server).unwrap();
        }
        let mut input = to_server.as_slice();
        while !input.is_empty() {
            server_conn.read_tls(&mut input).unwrap();
            server_conn.process_new_packets()?;
        }
        let mut to_client = Vec::new();
        while server_conn.wants_write() {
            server_conn.write_tls(&mut to_client).unwrap();
        }
        let mut input = to_client.as_slice();
        while !input.is_empty() {
            client_conn.read_tls(&mut input).unwrap();
            client_conn.process_new_packets()?;
        }
        if !client_conn.is_handshaking() && !server_conn.is_handshaking() && !client_conn.wants_write() {
            return Ok(());
        }
    }
    panic!("handshake did not finish");
}

const TLS13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
const TLS12: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];

#[test]
fn handshake_accepts_good_clients_and_refuses_revoked_or_foreign_ones() {
    let tmp = TempDir::new("pki-handshake");
    let dir = tmp.path();
    Pki::init(dir, GATEWAY, KeyAlgorithm::EcdsaP256).unwrap();
    let mut pki = Pki::open(dir).unwrap();
    let alice = pki.issue("alice", 30).unwrap();
    let bob = pki.issue("bob", 30).unwrap();
    let config = config_for(dir);

    let store = TrustStore::load(&config).unwrap();
    handshake(&store, &config, &alice, TLS13).unwrap();
    handshake(&store, &config, &alice, TLS12).unwrap();
    handshake(&store, &config, &bob, TLS13).unwrap();

    pki.revoke(RevokeTarget::Name("bob".into())).unwrap();
    let store = TrustStore::load(&config).unwrap();
    let revoked = rustls::Error::InvalidCertificate(CertificateError::Revoked);
    assert_eq!(handshake(&store, &config, &bob, TLS13), Err(revoked.clone()));
    handshake(&store, &config, &alice, TLS13).unwrap();

    // The CRL alone (checked by webpki) refuses bob too.
    std::fs::remove_file(config.revoked_list_path()).unwrap();
    let store = TrustStore::load(&config).unwrap();
    assert_eq!(handshake(&store, &config, &bob, TLS12), Err(revoked));

    let other = TempDir::new("pki-handshake-other");
    Pki::init(other.path(), "other.example.net", KeyAlgorithm::EcdsaP256).unwrap();
    let stranger = Pki::open(other.path()).unwrap().issue("alice", 30).unwrap();
    assert_eq!(
        handshake(&store, &config, &stranger, TLS13),
        Err(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer))
    );

    // Another CA with the very same name as ours: found by name, refused by signature.
    let impostor = TempDir::new("pki-handshake-impostor");
    Pki::init(impostor.path(), GATEWAY, KeyAlgorithm::EcdsaP256).unwrap();
    let impostor_alice = Pki::open(impostor.path()).unwrap().issue("alice", 30).unwrap();
    assert_eq!(
        handshake(&store, &config, &impostor_alice, TLS13),
        Err(rustls::Error::InvalidCertificate(CertificateError::BadSignature))
    );
}

#[test]
fn chains_outside_tls_get_the_same_verdicts() {
    let tmp = TempDir::new("pki-chain");
    let dir = tmp.path();
    Pki::init(dir, GATEWAY, KeyAlgorithm::EcdsaP256).unwrap();
    let mut pki = Pki::open(dir).unwrap();
    let alice = pki.issue("alice", 30).unwrap();
    let bob = pki.issue("bob", 30).unwrap();
    let config = config_for(dir);
    let der = |issued: &IssuedClient| vec![first_cert(&issued.cert_path).to_vec()];
    let now = std::time::SystemTime::now();

    let store = TrustStore::load(&config).unwrap();
    assert_eq!(store.root_certificates().len(), 1);
    store.verify_client_chain(&der(&alice), now).unwrap();
    pki.revoke(RevokeTarget::Name("bob".into())).unwrap();
    let store = TrustStore::load(&config).unwrap();
    let error = store.verify_client_chain(&der(&bob), now).unwrap_err().to_string();
    assert!(error.contains("Revoked"), "{error}");
    let expired = now + std::time::Duration::from_secs(40 * 86_400);
    let error = store.verify_client_chain(&der(&alice), expired).unwrap_err().to_string();
    assert!(error.contains("expired"), "{error}");
    let other = TempDir::new("pki-chain-other");
    Pki::init(other.path(), "other.example.net", KeyAlgorithm::EcdsaP256).unwrap();
    let stranger = Pki::open(other.path()).unwrap().issue("alice", 30).unwrap();
    assert!(store.verify_client_chain(&der(&stranger), now).unwrap_err().to_string().contains("UnknownIssuer"));
    assert!(store.verify_client_chain(&[], now).is_err());
}

#[test]
fn rsa_2048_pki_works() {
    let tmp = TempDir::new("pki-rsa");
    let dir = tmp.path();
    let summary = Pki::init(dir, GATEWAY, KeyAlgorithm::Rsa2048).unwrap();
    assert_eq!(summary.key_algorithm, KeyAlgorithm::Rsa2048);
    let server_der = first_cert(&summary.server_cert_path);
    let (_, server) = x509_parser::parse_x509_certificate(&server_der).unwrap();
    assert!(server.key_usage().unwrap().unwrap().value.key_encipherment());

    let mut pki = Pki::open(dir).unwrap();
    assert_eq!(pki.key_algorithm(), KeyAlgorithm::Rsa2048);
    let client = pki.issue("rsa-user", 30).unwrap();
    let client_der = first_cert(&client.cert_path);
    let (_, cert) = x509_parser::parse_x509_certificate(&client_der).unwrap();
    assert_eq!(cert.public_key().parsed().unwrap().key_size(), 2048);
    let config = config_for(dir);
    handshake(&TrustStore::load(&config).unwrap(), &config, &client, TLS13).unwrap();
}
