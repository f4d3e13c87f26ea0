use std::path::Path;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{RootCertStore, SupportedProtocolVersion};

use super::*;
use crate::pki::test_support::{GATEWAY, TempDir, config_for};
use crate::pki::{IssuedClient, KeyAlgorithm, Pki, ServerIdentity, TrustStore, load_certs, load_private_key};

const TLS12: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];
const TLS13: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The gateway's EAP-TLS configuration: its certificate, a client certificate required
/// and checked against `trust`.
fn server_config(
    trust: &TrustStore,
    pki_dir: &Path,
    versions: &[&'static SupportedProtocolVersion],
) -> Arc<rustls::ServerConfig> {
    let identity = ServerIdentity::load(&config_for(pki_dir)).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_client_cert_verifier(trust.client_verifier(true).unwrap())
        .with_single_cert(identity.chain, identity.key)
        .unwrap();
    config.send_tls13_tickets = 0;
    Arc::new(config)
}

fn peer_config(pki_dir: &Path, client: &IssuedClient) -> Arc<rustls::ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(load_certs(&pki_dir.join("ca.crt")).unwrap().swap_remove(0)).unwrap();
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(load_certs(&client.cert_path).unwrap(), load_private_key(&client.key_path).unwrap())
            .unwrap(),
    )
}

struct Conversation {
    outcome: ServerStep,
    peer: EapTlsPeer,
    /// Every Request the gateway sent.
    requests: Vec<Vec<u8>>,
    responses: Vec<Vec<u8>>,
}

/// Runs EAP-TLS from the Start until the gateway concludes.
fn converse(
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    server_fragment: usize,
    peer_fragment: usize,
) -> Conversation {
    let mut server = EapTlsServer::new(server, server_fragment).unwrap();
    let mut peer = EapTlsPeer::new(client, ServerName::try_from(GATEWAY).unwrap(), peer_fragment).unwrap();
    let mut request = server.start(0x41);
    let (mut requests, mut responses) = (Vec::new(), Vec::new());
    for _ in 0..1000 {
        requests.push(request.clone());
        let response = match peer.handle_request(&request) {
            PeerStep::Response(response) => response,
            PeerStep::Failed(reason) => panic!("the peer gave up: {reason}"),
        };
        responses.push(response.clone());
        match server.handle_response(&response) {
            ServerStep::Request(next) => request = next,
            outcome => return Conversation { outcome, peer, requests, responses },
        }
    }
    panic!("the conversation does not end");
}

struct Setup {
    _tmp: TempDir,
    dir: std::path::PathBuf,
    pki: Pki,
    alice: IssuedClient,
}

fn setup(label: &str) -> Setup {
    let tmp = TempDir::new(label);
    let dir = tmp.path().to_path_buf();
    Pki::init(&dir, GATEWAY, KeyAlgorithm::EcdsaP256).unwrap();
    let mut pki = Pki::open(&dir).unwrap();
    let alice = pki.issue("alice", 30).unwrap();
    Setup { _tmp: tmp, dir, pki, alice }
}

fn success(conversation: &Conversation) -> &EapTlsSuccess {
    match &conversation.outcome {
        ServerStep::Success(success) => success,
        other => panic!("expected success, got {other:?}"),
    }
}

#[test]
fn a_good_certificate_gives_equal_msks_in_tls_12_and_13() {
    let s = setup("eap-tls-good");
    let trust = TrustStore::load(&config_for(&s.dir)).unwrap();
    let alice_der = load_certs(&s.alice.cert_path).unwrap().swap_remove(0);
    let mut msks = Vec::new();
    for (versions, name) in [(TLS12, "TLSv1.2"), (TLS13, "TLSv1.3")] {
        let conversation = converse(server_config(&trust, &s.dir, versions), peer_config(&s.dir, &s.alice), 1400, 1400);
        let won = success(&conversation);
        assert_eq!(won.version, name);
        assert_eq!(won.msk.len(), MSK_LEN);
        assert_eq!(conversation.peer.msk().as_deref(), Some(won.msk.as_slice()), "{name}: both sides derive the MSK");
        assert_eq!(won.peer_certificate, alice_der.to_vec());
        assert!(conversation.peer.failure().is_none());
        // Start, then identifiers count up by one per Request, each answered in kind.
        assert_eq!(conversation.requests[0], vec![1, 0x42, 0, 6, 13, flag::START]);
        for (request, response) in conversation.requests.iter().zip(&conversation.responses) {
            assert_eq!(response[1], request[1]);
            assert_eq!(response[0], code::RESPONSE);
        }
        msks.push(won.msk.clone());
    }
    assert_ne!(msks[0], msks[1], "fresh keys each time");
}

#[test]
fn tls_13_ends_with_the_commitment_message() {
    let s = setup("eap-tls-commit");
    let trust = TrustStore::load(&config_for(&s.dir)).unwrap();
    let conversation = converse(server_config(&trust, &s.dir, TLS13), peer_config(&s.dir, &s.alice), 1400, 1400);
    success(&conversation);
    // The last Request is one TLS application data record (type 23), unfragmented; the
    // peer acknowledges it with an empty Response.
    let last = TlsMessage::parse(conversation.requests.last().unwrap()).unwrap();
    assert_eq!((last.flags, last.data[0]), (0, 23));
    let ack = TlsMessage::parse(conversation.responses.last().unwrap()).unwrap();
    assert_eq!((ack.flags, ack.data), (0, &[][..]));
}

#[test]
fn tiny_fragments_both_ways() {
    let s = setup("eap-tls-fragments");
    let trust = TrustStore::load(&config_for(&s.dir)).unwrap();
    for versions in [TLS12, TLS13] {
        let conversation = converse(server_config(&trust, &s.dir, versions), peer_config(&s.dir, &s.alice), 37, 11);
        let won = success(&conversation);
        assert_eq!(conversation.peer.msk().as_deref(), Some(won.msk.as_slice()));
        assert!(conversation.requests.len() > 20, "the gateway's flight went out in many fragments");
        // Every fragmented message starts with L and its total length, has M on all but
        // its last fragment, and each fragment is at most the limit.
        for (packets, limit) in [(&conversation.requests, 37), (&conversation.responses, 11)] {
            let mut in_message = false;
            for packet in packets {
                let message = TlsMessage::parse(packet).unwrap();
                assert!(message.data.len() <= limit);
                if message.has_more() && !in_message {
                    assert!(message.tls_length.is_some_and(|l| l as usize > limit), "L on the first fragment");
                }
                if in_message {
                    assert_eq!(message.tls_length, None);
                }
                in_message = message.has_more() || (in_message && message.data.is_empty());
            }
        }
    }
}

#[test]
fn an_unknown_ca_is_refused() {
    let s = setup("eap-tls-unknown");
    let other = TempDir::new("eap-tls-unknown-other");
    Pki::init(other.path(), "other.example.net", KeyAlgorithm::EcdsaP256).unwrap();
    let stranger = Pki::open(other.path()).unwrap().issue("mallory", 30).unwrap();
    let trust = TrustStore::load(&config_for(&s.dir)).unwrap();
    for versions in [TLS12, TLS13] {
        let conversation =
            converse(server_config(&trust, &s.dir, versions), peer_config(&s.dir, &stranger), 1400, 1400);
        match &conversation.outcome {
            ServerStep::Failure(reason) => assert!(reason.contains("UnknownIssuer"), "{reason}"),
            other => panic!("expected a failure, got {other:?}"),
        }
        // The gateway's alert reached the peer.
        assert!(conversation.peer.failure().is_some_and(|f| f.contains("alert")), "{:?}", conversation.peer.failure());
        assert_eq!(conversation.peer.msk(), None);
    }
}

#[test]
fn a_revoked_thumbprint_is_refused() {
    let mut s = setup("eap-tls-revoked");
    let bob = s.pki.issue("bob", 30).unwrap();
    let mut config = config_for(&s.dir);
    config.pki.revoked_thumbprints = vec![bob.thumbprint.to_string()];
    let trust = TrustStore::load(&config).unwrap();
    let conversation = converse(server_config(&trust, &s.dir, TLS13), peer_config(&s.dir, &bob), 1400, 1400);
    match &conversation.outcome {
        ServerStep::Failure(reason) => assert!(reason.contains("Revoked"), "{reason}"),
        other => panic!("expected a failure, got {other:?}"),
    }
    // Alice, not listed, still gets in with the same trust.
    let conversation = converse(server_config(&trust, &s.dir, TLS13), peer_config(&s.dir, &s.alice), 1400, 1400);
    success(&conversation);
}

#[test]
fn a_nak_or_garbage_ends_the_conversation() {
    let s = setup("eap-tls-nak");
    let trust = TrustStore::load(&config_for(&s.dir)).unwrap();
    let config = server_config(&trust, &s.dir, TLS13);
    let mut server = EapTlsServer::new(config.clone(), 1400).unwrap();
    let start = server.start(7);
    // Legacy Nak asking for EAP-MSCHAPv2 (26).
    let nak = encode(code::RESPONSE, start[1], &[method::NAK, 26]);
    assert!(matches!(server.handle_response(&nak), ServerStep::Failure(r) if r.contains("another EAP method")));
    let mut server = EapTlsServer::new(config.clone(), 1400).unwrap();
    let start = server.start(7);
    let wrong_id = TlsMessage { code: code::RESPONSE, id: start[1] ^ 1, flags: 0, tls_length: None, data: &[] };
    assert!(matches!(server.handle_response(&wrong_id.encode()), ServerStep::Failure(_)));
    assert!(matches!(server.handle_response(&[2, 8, 0, 6, 13, 0]), ServerStep::Failure(r) if r.contains("over")));
    let mut server = EapTlsServer::new(config, 1400).unwrap();
    let start = server.start(7);
    let junk = TlsMessage { code: code::RESPONSE, id: start[1], flags: 0, tls_length: None, data: b"not TLS" };
    // The gateway's alert goes out first; the acknowledgement of it ends in failure.
    let ServerStep::Request(alert) = server.handle_response(&junk.encode()) else { panic!("expected the alert") };
    let alert = TlsMessage::parse(&alert).unwrap();
    assert_eq!(alert.data[0], 21, "a TLS alert record");
    let ack = TlsMessage { code: code::RESPONSE, id: alert.id, flags: 0, tls_length: None, data: &[] };
    assert!(
        matches!(server.handle_response(&ack.encode()), ServerStep::Failure(r) if r.contains("TLS handshake failed"))
    );
}

#[test]
fn parser_round_trips_and_refuses_bad_packets() {
    let message =
        TlsMessage { code: code::REQUEST, id: 9, flags: flag::MORE_FRAGMENTS, tls_length: Some(300), data: b"abc" };
    let bytes = message.encode();
    assert_eq!(bytes, [1, 9, 0, 13, 13, 0xc0, 0, 0, 1, 44, b'a', b'b', b'c']);
    assert_eq!(TlsMessage::parse(&bytes), Ok(message));
    // Padding beyond Length is ignored.
    let mut padded = bytes.clone();
    padded.extend_from_slice(&[0; 5]);
    assert_eq!(TlsMessage::parse(&padded), Ok(message));
    assert_eq!(TlsMessage::parse(&bytes[..4]), Err(EapTlsError::TooShort));
    assert_eq!(TlsMessage::parse(&[2, 1, 0, 5, 13]), Err(EapTlsError::TooShort));
    assert_eq!(TlsMessage::parse(&[2, 1, 0, 7, 13, 0x80, 0]), Err(EapTlsError::TooShort));
    assert_eq!(TlsMessage::parse(&[2, 1, 0, 9, 13, 0]), Err(EapTlsError::BadLength { declared: 9, available: 6 }));
    assert_eq!(TlsMessage::parse(&[3, 1, 0, 4, 0]), Err(EapTlsError::UnexpectedCode(3)));
    assert_eq!(TlsMessage::parse(&[2, 1, 0, 6, 25, 0]), Err(EapTlsError::OtherMethod(25)));

    let mut fragments = Fragments::new(100);
    let too_long = TlsMessage { tls_length: Some(MAX_MESSAGE as u32 + 1), ..message };
    assert_eq!(fragments.receive(&too_long), Err(EapTlsError::MessageTooLong(MAX_MESSAGE + 1)));
    let mut fragments = Fragments::new(100);
    let announced = TlsMessage { tls_length: Some(4), ..message };
    assert_eq!(fragments.receive(&announced), Ok(None));
    let last = TlsMessage { flags: 0, tls_length: None, ..message };
    assert_eq!(fragments.receive(&last), Err(EapTlsError::FragmentOverrun(4)));
    let mut fragments = Fragments::new(100);
    let announced = TlsMessage { tls_length: Some(7), ..message };
    assert_eq!(fragments.receive(&announced), Ok(None));
    assert_eq!(fragments.receive(&last), Err(EapTlsError::LengthMismatch { announced: 7, received: 6 }));
    let mut fragments = Fragments::new(100);
    let empty_more = TlsMessage { data: &[], tls_length: None, ..message };
    assert_eq!(fragments.receive(&empty_more), Err(EapTlsError::EmptyFragment));
}

#[test]
fn the_certificate_parses_as_der() {
    // What the control plane reads from the outcome: a certificate it can name.
    let s = setup("eap-tls-der");
    let trust = TrustStore::load(&config_for(&s.dir)).unwrap();
    let conversation = converse(server_config(&trust, &s.dir, TLS12), peer_config(&s.dir, &s.alice), 1400, 1400);
    let der = CertificateDer::from(success(&conversation).peer_certificate.clone());
    assert_eq!(crate::pki::client_identity(&der).unwrap().common_name, "alice");
}
