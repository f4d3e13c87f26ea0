//! The PPP server driven frame by frame: exact encodings, the RFC 2759 vectors through
//! the CHAP path, IPCP address and DNS negotiation, EAP relaying, LCP housekeeping.

use super::*;
use crate::crypto::mschapv2;
use crate::proto::sstp::binding::server_hlak;
use crate::testing::hex;

const LCP: u16 = protocol::LCP;

fn frames(server: &mut PppServer) -> Vec<Vec<u8>> {
    std::iter::from_fn(|| server.poll_frame()).collect()
}

fn events(server: &mut PppServer) -> Vec<Event> {
    std::iter::from_fn(|| server.poll_event()).collect()
}

fn options(list: &[(u8, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (kind, value) in list {
        push_option(&mut out, *kind, value);
    }
    out
}

/// A server with LCP open (the peer's request acked, ours acked); returns the frames
/// sent after LCP opened (the authentication start).
fn lcp_opened(config: ServerConfig, now: Instant) -> (PppServer, Vec<Vec<u8>>) {
    let mut server = PppServer::new(config, now);
    let request = frames(&mut server).remove(0);
    let ours = ControlPacket::parse(&request[4..]).unwrap();
    let peer_request = options(&[(lcp_option::MAGIC_NUMBER, &[1, 2, 3, 4])]);
    server.handle_frame(now, &control_frame(LCP, code::CONFIGURE_REQUEST, 1, &peer_request)).unwrap();
    server.handle_frame(now, &control_frame(LCP, code::CONFIGURE_ACK, ours.id, ours.data)).unwrap();
    let sent = frames(&mut server);
    assert_eq!(sent[0], control_frame(LCP, code::CONFIGURE_ACK, 1, &peer_request));
    (server, sent[1..].to_vec())
}

#[test]
fn lcp_configure_request_encoding() {
    let now = Instant::now();
    let mut server = PppServer::new(ServerConfig::default(), now);
    let request = server.poll_frame().unwrap();
    // FF 03, LCP, Configure-Request id 1 length 19: MRU 1500, Auth-Protocol CHAP/MS-CHAPv2,
    // Magic-Number (PROTOCOLS.md §2.7).
    assert_eq!(&request[..19], &hex("ff03c021010100130104 05dc 0305c22381 0506".replace(' ', "").as_str())[..]);
    assert_eq!(request.len(), 4 + 19);
    let eap = PppServer::new(ServerConfig { auth: AuthMethod::Eap, ..ServerConfig::default() }, now).poll_frame();
    assert_eq!(&eap.unwrap()[4..17], &hex("01010012010405dc0304c2270506")[..13]);
}

#[test]
fn windows_style_lcp_options_are_rejected_then_acked() {
    let now = Instant::now();
    let mut server = PppServer::new(ServerConfig::default(), now);
    let ours = frames(&mut server).remove(0);
    let mru = 4091u16.to_be_bytes();
    let full = options(&[
        (lcp_option::MRU, &mru),
        (lcp_option::MAGIC_NUMBER, &[0x11, 0x22, 0x33, 0x44]),
        (lcp_option::CALLBACK, &[6]),
        (lcp_option::ENDPOINT_DISCRIMINATOR, &[1, 2, 3]),
    ]);
    server.handle_frame(now, &control_frame(LCP, code::CONFIGURE_REQUEST, 7, &full)).unwrap();
    let rejected = options(&[(lcp_option::CALLBACK, &[6]), (lcp_option::ENDPOINT_DISCRIMINATOR, &[1, 2, 3])]);
    assert_eq!(frames(&mut server), [control_frame(LCP, code::CONFIGURE_REJECT, 7, &rejected)]);
    let trimmed = options(&[(lcp_option::MRU, &mru), (lcp_option::MAGIC_NUMBER, &[0x11, 0x22, 0x33, 0x44])]);
    server.handle_frame(now, &control_frame(LCP, code::CONFIGURE_REQUEST, 8, &trimmed)).unwrap();
    assert_eq!(frames(&mut server), [control_frame(LCP, code::CONFIGURE_ACK, 8, &trimmed)]);
    assert_eq!(server.peer_mru(), 4091);
    // A magic number equal to ours is naked (looped-back link).
    let own_magic = &ours[ours.len() - 4..];
    let looped = options(&[(lcp_option::MAGIC_NUMBER, own_magic)]);
    let mut fresh = PppServer::new(ServerConfig::default(), now);
    let fresh_request = frames(&mut fresh).remove(0);
    let looped_magic = options(&[(lcp_option::MAGIC_NUMBER, &fresh_request[fresh_request.len() - 4..])]);
    fresh.handle_frame(now, &control_frame(LCP, code::CONFIGURE_REQUEST, 1, &looped_magic)).unwrap();
    assert_eq!(ControlPacket::parse(&frames(&mut fresh)[0][4..]).unwrap().code, code::CONFIGURE_NAK);
    // A stale or mismatched Configure-Ack is dropped.
    let ours_packet = ControlPacket::parse(&ours[4..]).unwrap();
    assert_eq!(
        server.handle_frame(now, &control_frame(LCP, code::CONFIGURE_ACK, ours_packet.id, &looped)),
        Err(DropReason::StaleReply { protocol: "LCP", id: ours_packet.id })
    );
    // Then the right one opens LCP and the MS-CHAPv2 Challenge goes out.
    server.handle_frame(now, &control_frame(LCP, code::CONFIGURE_ACK, ours_packet.id, ours_packet.data)).unwrap();
    let challenge = frames(&mut server).remove(0);
    assert_eq!(&challenge[..4], &[0xff, 0x03, 0xc2, 0x23]);
    let packet = ControlPacket::parse(&challenge[4..]).unwrap();
    assert_eq!((packet.code, packet.data.len(), packet.data[0]), (chap::CHALLENGE, 1 + 16 + 5, 16));
    assert_eq!(&packet.data[17..], b"p2sgw");
}

#[test]
fn rfc2759_vectors_through_the_chap_path() {
    let now = Instant::now();
    let (mut server, _) = lcp_opened(ServerConfig::default(), now);
    // RFC 2759 §9.2: the authenticator challenge is this link's.
    let authenticator_challenge: [u8; 16] = hex("5B5D7C7D7B3F2F3E3C2C602132262628").try_into().unwrap();
    server.auth = Auth::ChallengeSent { id: 0x2a, challenge: authenticator_challenge };
    let peer_challenge = hex("21402324255E262A28295F2B3A337C7E");
    let nt_response = hex("82309ECD8D708B5EA08FAA3981CD83544233114A3D85D6DF");
    let mut value = vec![49];
    value.extend_from_slice(&peer_challenge);
    value.extend_from_slice(&[0; 8]);
    value.extend_from_slice(&nt_response);
    value.push(0);
    value.extend_from_slice(b"User");
    let response = control_frame(protocol::CHAP, chap::RESPONSE, 0x2a, &value);
    server.handle_frame(now, &response).unwrap();
    let [Event::VerifyMsChapV2(request)] = &events(&mut server)[..] else { panic!("one verification request") };
    assert_eq!(
        *request,
        MsChapV2Verify {
            user: "User".into(),
            ident: 0x2a,
            authenticator_challenge,
            peer_challenge: peer_challenge.clone().try_into().unwrap(),
            nt_response: nt_response.clone().try_into().unwrap(),
        }
    );
    // A repeated Response while the verdict is pending is dropped.
    assert_eq!(server.handle_frame(now, &response), Err(DropReason::StaleReply { protocol: "CHAP", id: 0x2a }));

    // The driver checks it against the local NT hash of "clientPass".
    let hash = mschapv2::nt_password_hash("clientPass");
    assert!(mschapv2::verify_nt_response(
        &hash,
        &authenticator_challenge,
        &request.peer_challenge,
        b"User",
        &request.nt_response
    ));
    let authenticator_response = mschapv2::generate_authenticator_response(
        &hash,
        &request.nt_response,
        &request.peer_challenge,
        &authenticator_challenge,
        b"User",
    );
    let keys = mschapv2::mppe_keys(&hash, &request.nt_response).into();
    server.answer_ms_chap_v2(now, AuthVerdict::Success { authenticator_response, keys });
    let success = control_frame(
        protocol::CHAP,
        chap::SUCCESS,
        0x2a,
        b"S=407A5589115FD0D6209F510FE9C04566932CDA56 M=Access granted",
    );
    assert_eq!(frames(&mut server), std::slice::from_ref(&success));
    let [Event::Authenticated { user, keys }] = &events(&mut server)[..] else { panic!("authenticated") };
    assert_eq!(user, "User");
    // PROTOCOLS.md §2.5 derived vector: the server HLAK of this exchange (RFC 3079 keys).
    assert_eq!(server_hlak(keys).to_vec(), hex("d5f0e9521e3ea9589645e86051c822268b7cdc149b993a1ba118cb153f56dccb"));
    // A repeated Response gets the same Success again (RFC 2759 §5).
    server.handle_frame(now, &response).unwrap();
    assert_eq!(frames(&mut server), [success]);
}

#[test]
fn ms_chap_v2_failure_terminates_the_link() {
    let now = Instant::now();
    let (mut server, sent) = lcp_opened(ServerConfig::default(), now);
    let challenge = ControlPacket::parse(&sent[0][4..]).unwrap();
    let mut value = vec![49];
    value.extend_from_slice(&[0; 49]);
    value.extend_from_slice(b"bob");
    server.handle_frame(now, &control_frame(protocol::CHAP, chap::RESPONSE, challenge.id, &value)).unwrap();
    let _ = events(&mut server);
    server.answer_ms_chap_v2(now, AuthVerdict::Failure { message: None });
    let sent = frames(&mut server);
    let failure = ControlPacket::parse(&sent[0][4..]).unwrap();
    assert_eq!((failure.code, failure.id), (chap::FAILURE, challenge.id));
    let text = std::str::from_utf8(failure.data).unwrap();
    assert!(text.starts_with("E=691 R=0 C=") && text.ends_with(" V=3 M=Authentication failed"), "{text}");
    assert_eq!(&sent[1][..5], &[0xff, 0x03, 0xc0, 0x21, code::TERMINATE_REQUEST]);
    server.handle_timeout(now + TERMINATE_WAIT);
    assert!(matches!(&events(&mut server)[..], [Event::Closed(CloseReason::AuthFailed(_))]));
    assert!(server.is_closed());
    // A bad Value-Size is a typed drop, not a panic.
    let (mut other, sent) = lcp_opened(ServerConfig::default(), now);
    let id = ControlPacket::parse(&sent[0][4..]).unwrap().id;
    assert_eq!(
        other.handle_frame(now, &control_frame(protocol::CHAP, chap::RESPONSE, id, &[16, 1, 2])),
        Err(DropReason::BadChapResponse)
    );
}

/// A server past MS-CHAPv2 (answered by the driver), with nothing left to send.
fn authenticated(now: Instant) -> PppServer {
    let (mut server, sent) = lcp_opened(ServerConfig::default(), now);
    let id = ControlPacket::parse(&sent[0][4..]).unwrap().id;
    let mut value = vec![49];
    value.extend_from_slice(&[0; 49]);
    value.extend_from_slice(b"bob");
    server.handle_frame(now, &control_frame(protocol::CHAP, chap::RESPONSE, id, &value)).unwrap();
    let _ = events(&mut server);
    server.answer_ms_chap_v2(
        now,
        AuthVerdict::Success { authenticator_response: format!("S={}", "0".repeat(40)), keys: SessionKeys::None },
    );
    let _ = frames(&mut server);
    let _ = events(&mut server);
    server
}

#[test]
fn ipcp_gives_the_assigned_address_and_dns() {
    let now = Instant::now();
    let mut server = authenticated(now);
    let zero = [0u8; 4];
    let windows_request = options(&[
        (ipcp_option::IP_ADDRESS, &zero),
        (ipcp_option::PRIMARY_DNS, &zero),
        (ipcp_option::PRIMARY_NBNS, &zero),
        (ipcp_option::SECONDARY_DNS, &zero),
        (ipcp_option::SECONDARY_NBNS, &zero),
    ]);
    // Before the address is assigned the request is held, not answered.
    let request = control_frame(protocol::IPCP, code::CONFIGURE_REQUEST, 1, &windows_request);
    assert_eq!(server.handle_frame(now, &request), Ok(()));
    let ack = control_frame(protocol::IPCP, code::CONFIGURE_ACK, 1, &[]);
    assert_eq!(server.handle_frame(now, &ack), Err(DropReason::NetworkNotReady));
    assert!(frames(&mut server).is_empty());
    let network = NetworkConfig {
        local: Ipv4Addr::new(10, 8, 0, 1),
        peer: Ipv4Addr::new(10, 8, 0, 2),
        primary_dns: Some(Ipv4Addr::new(1, 1, 1, 1)),
        secondary_dns: Some(Ipv4Addr::new(8, 8, 8, 8)),
    };
    server.assign_network(now, network);
    let sent = frames(&mut server);
    // Our Configure-Request: IP-Address 10.8.0.1 (RFC 1332 §3.3), then the held
    // request's answer: NBNS rejected.
    assert_eq!(sent[0], hex("ff038021010100 0a03060a080001".replace(' ', "").as_str()));
    let nbns = options(&[(ipcp_option::PRIMARY_NBNS, &zero), (ipcp_option::SECONDARY_NBNS, &zero)]);
    assert_eq!(sent[1], control_frame(protocol::IPCP, code::CONFIGURE_REJECT, 1, &nbns));
    let without_nbns = options(&[
        (ipcp_option::IP_ADDRESS, &zero),
        (ipcp_option::PRIMARY_DNS, &zero),
        (ipcp_option::SECONDARY_DNS, &zero),
    ]);
    server.handle_frame(now, &control_frame(protocol::IPCP, code::CONFIGURE_REQUEST, 2, &without_nbns)).unwrap();
    let suggested = options(&[
        (ipcp_option::IP_ADDRESS, &[10, 8, 0, 2]),
        (ipcp_option::PRIMARY_DNS, &[1, 1, 1, 1]),
        (ipcp_option::SECONDARY_DNS, &[8, 8, 8, 8]),
    ]);
    assert_eq!(frames(&mut server), [control_frame(protocol::IPCP, code::CONFIGURE_NAK, 2, &suggested)]);
    server.handle_frame(now, &control_frame(protocol::IPCP, code::CONFIGURE_REQUEST, 3, &suggested)).unwrap();
    assert_eq!(frames(&mut server), [control_frame(protocol::IPCP, code::CONFIGURE_ACK, 3, &suggested)]);
    assert!(!server.is_ip_up());
    let ours = ControlPacket::parse(&sent[0][4..]).unwrap();
    server.handle_frame(now, &control_frame(protocol::IPCP, code::CONFIGURE_ACK, ours.id, ours.data)).unwrap();
    assert!(matches!(&events(&mut server)[..], [Event::IpUp { peer }] if *peer == network.peer));
    assert_eq!(server.poll_timeout(), None, "no establishment deadline once up");
    // IPv4 both ways.
    server.handle_frame(now, &frame(protocol::IPV4, &[0x45, 1, 2, 3])).unwrap();
    assert!(matches!(&events(&mut server)[..], [Event::TunnelPacket(p)] if *p == [0x45, 1, 2, 3]));
    assert_eq!(server.send_ip(&[0x45, 9]), Some(vec![0xff, 0x03, 0x00, 0x21, 0x45, 9]));
    // Without DNS servers configured, the DNS options are rejected.
    let mut no_dns = authenticated(now);
    no_dns.assign_network(now, NetworkConfig { primary_dns: None, secondary_dns: None, ..network });
    let _ = frames(&mut no_dns);
    no_dns.handle_frame(now, &control_frame(protocol::IPCP, code::CONFIGURE_REQUEST, 4, &without_nbns)).unwrap();
    let dns = options(&[(ipcp_option::PRIMARY_DNS, &zero), (ipcp_option::SECONDARY_DNS, &zero)]);
    assert_eq!(frames(&mut no_dns), [control_frame(protocol::IPCP, code::CONFIGURE_REJECT, 4, &dns)]);
}

#[test]
fn eap_is_relayed_both_ways() {
    let now = Instant::now();
    let (mut server, sent) = lcp_opened(ServerConfig { auth: AuthMethod::Eap, ..ServerConfig::default() }, now);
    let identity_request = ControlPacket::parse(&sent[0][4..]).unwrap();
    assert_eq!(&sent[0][..4], &[0xff, 0x03, 0xc2, 0x27]);
    assert_eq!((identity_request.code, identity_request.data), (eap::REQUEST, &[eap::TYPE_IDENTITY][..]));
    let identity = ControlPacket::encode(eap::RESPONSE, identity_request.id, b"\x01alice@example.test");
    server.handle_frame(now, &frame(protocol::EAP, &identity)).unwrap();
    assert!(matches!(&events(&mut server)[..], [Event::EapFromPeer(p)] if *p == identity));
    // RADIUS answers with an EAP-TLS Start (RFC 5216 §3.1): relayed as is.
    let start = ControlPacket::encode(eap::REQUEST, 9, &[13, 0x20]);
    server.eap_to_peer(&start).unwrap();
    assert_eq!(frames(&mut server), [frame(protocol::EAP, &start)]);
    assert_eq!(server.eap_to_peer(&start), Err(DropReason::Unexpected { protocol: "EAP", code: eap::REQUEST }));
    let stale = ControlPacket::encode(eap::RESPONSE, 8, &[13, 0]);
    assert_eq!(
        server.handle_frame(now, &frame(protocol::EAP, &stale)),
        Err(DropReason::StaleReply { protocol: "EAP", id: 8 })
    );
    let answer = ControlPacket::encode(eap::RESPONSE, 9, &[13, 0]);
    server.handle_frame(now, &frame(protocol::EAP, &answer)).unwrap();
    assert!(matches!(&events(&mut server)[..], [Event::EapFromPeer(p)] if *p == answer));
    let msk: Vec<u8> = (0..64).collect();
    let keys = SessionKeys::Mppe { send: msk[32..].to_vec(), recv: msk[..32].to_vec() };
    server.eap_result(now, EapResult::Success { keys: keys.clone(), packet: None });
    assert_eq!(frames(&mut server), [frame(protocol::EAP, &[eap::SUCCESS, 9, 0, 4])]);
    let [Event::Authenticated { user, keys: granted }] = &events(&mut server)[..] else { panic!("authenticated") };
    assert_eq!((user.as_str(), granted), ("alice@example.test", &keys));
    assert_eq!(server_hlak(granted)[..], msk[..32]);
}

#[test]
fn lcp_echo_code_reject_and_peer_terminate() {
    let now = Instant::now();
    let (mut server, _) = lcp_opened(ServerConfig::default(), now);
    let magic = server.magic.to_be_bytes();
    server.handle_frame(now, &control_frame(LCP, code::ECHO_REQUEST, 5, &[1, 2, 3, 4, 0xaa])).unwrap();
    let mut reply = magic.to_vec();
    reply.push(0xaa);
    assert_eq!(frames(&mut server), [control_frame(LCP, code::ECHO_REPLY, 5, &reply)]);
    // Identification (Windows sends it) is ignored; an unknown code is Code-Rejected.
    server.handle_frame(now, &control_frame(LCP, code::IDENTIFICATION, 6, b"\0\0\0\0MSRASV5.20")).unwrap();
    assert!(frames(&mut server).is_empty());
    let unknown = ControlPacket::encode(99, 3, &[1]);
    server.handle_frame(now, &frame(LCP, &unknown)).unwrap();
    let reject = frames(&mut server).remove(0);
    assert_eq!((reject[4], &reject[8..]), (code::CODE_REJECT, &unknown[..]));
    server.handle_frame(now, &control_frame(LCP, code::TERMINATE_REQUEST, 4, &[])).unwrap();
    assert_eq!(frames(&mut server), [control_frame(LCP, code::TERMINATE_ACK, 4, &[])]);
    assert!(matches!(&events(&mut server)[..], [Event::Closed(CloseReason::PeerTerminated)]));
    assert_eq!(server.handle_frame(now, &control_frame(LCP, code::ECHO_REQUEST, 5, &[0; 4])), Err(DropReason::Closed));
}

#[test]
fn a_client_refusing_the_auth_protocol_is_let_go() {
    let now = Instant::now();
    let mut server = PppServer::new(ServerConfig::default(), now);
    let ours = ControlPacket::parse(&frames(&mut server)[0][4..]).unwrap().id;
    let wants_pap = options(&[(lcp_option::AUTH_PROTOCOL, &protocol::PAP.to_be_bytes())]);
    server.handle_frame(now, &control_frame(LCP, code::CONFIGURE_NAK, ours, &wants_pap)).unwrap();
    assert_eq!(frames(&mut server)[0][4], code::TERMINATE_REQUEST);
    server.handle_frame(now, &control_frame(LCP, code::TERMINATE_ACK, 0x81, &[])).unwrap();
    let [Event::Closed(CloseReason::Negotiation(why))] = &events(&mut server)[..] else { panic!("closed") };
    assert_eq!(why, "the client will not authenticate with MS-CHAPv2");
}

#[test]
fn negotiation_has_a_deadline() {
    let now = Instant::now();
    let mut server = PppServer::new(ServerConfig::default(), now);
    let _ = frames(&mut server);
    let deadline = now + ServerConfig::default().establish_timeout;
    assert_eq!(server.poll_timeout(), Some(deadline));
    server.handle_timeout(deadline);
    assert_eq!(frames(&mut server)[0][4], code::TERMINATE_REQUEST);
    server.handle_timeout(deadline + TERMINATE_WAIT);
    assert!(matches!(&events(&mut server)[..], [Event::Closed(CloseReason::EstablishTimeout)]));
    assert_eq!(server.poll_timeout(), None);
}

#[test]
fn a_nak_of_the_auth_protocol_switches_to_the_fallback_once() {
    let now = Instant::now();
    let config =
        ServerConfig { auth: AuthMethod::Eap, fallback_auth: Some(AuthMethod::MsChapV2), ..Default::default() };
    let mut server = PppServer::new(config, now);
    let first = frames(&mut server).remove(0);
    let ours = ControlPacket::parse(&first[4..]).unwrap();
    // A client set up for MS-CHAPv2 Naks EAP and names what it wants.
    let wants_chap = options(&[(lcp_option::AUTH_PROTOCOL, &[0xc2, 0x23, CHAP_MS_CHAP_V2])]);
    server.handle_frame(now, &control_frame(LCP, code::CONFIGURE_NAK, ours.id, &wants_chap)).unwrap();
    let second = frames(&mut server).remove(0);
    let ours = ControlPacket::parse(&second[4..]).unwrap();
    let offered = parse_options(ours.data).unwrap();
    let auth = offered.iter().find(|o| o.kind == lcp_option::AUTH_PROTOCOL).unwrap();
    assert_eq!(auth.value, [0xc2, 0x23, CHAP_MS_CHAP_V2]);
    // Open LCP: the Challenge follows, and CHAP is what the link now speaks.
    let peer_request = options(&[(lcp_option::MAGIC_NUMBER, &[1, 2, 3, 4])]);
    server.handle_frame(now, &control_frame(LCP, code::CONFIGURE_REQUEST, 1, &peer_request)).unwrap();
    server.handle_frame(now, &control_frame(LCP, code::CONFIGURE_ACK, ours.id, ours.data)).unwrap();
    let sent = frames(&mut server);
    assert_eq!(&sent.last().unwrap()[2..4], &protocol::CHAP.to_be_bytes());

    // Refusing the fallback too ends the link.
    let config =
        ServerConfig { auth: AuthMethod::Eap, fallback_auth: Some(AuthMethod::MsChapV2), ..Default::default() };
    let mut server = PppServer::new(config, now);
    for _ in 0..2 {
        let request = frames(&mut server).remove(0);
        let ours = ControlPacket::parse(&request[4..]).unwrap();
        let pap = options(&[(lcp_option::AUTH_PROTOCOL, &[0xc0, 0x23])]);
        server.handle_frame(now, &control_frame(LCP, code::CONFIGURE_NAK, ours.id, &pap)).unwrap();
    }
    assert!(events(&mut server).is_empty(), "closed once the Terminate-Request is answered");
    let terminate = frames(&mut server);
    let request = ControlPacket::parse(&terminate[0][4..]).unwrap();
    assert_eq!(request.code, code::TERMINATE_REQUEST);
    server.handle_frame(now, &control_frame(LCP, code::TERMINATE_ACK, request.id, &[])).unwrap();
    assert!(matches!(
        &events(&mut server)[..],
        [Event::Closed(CloseReason::Negotiation(why))] if why.contains("will not authenticate with MS-CHAPv2")
    ));
}

#[test]
fn eap_tls_between_the_test_client_and_the_gateway_gives_both_one_hlak() {
    use std::sync::Arc;

    use super::super::client::{ClientConfig, ClientEvent, EapTlsConfig, PppClient};
    use crate::pki::test_support::{GATEWAY, TempDir, config_for};
    use crate::pki::{KeyAlgorithm, Pki, ServerIdentity, TrustStore, load_certs, load_private_key};
    use crate::proto::eap::tls::{EapTlsServer, OVERHEAD, ServerStep};

    let tmp = TempDir::new("ppp-eap-tls");
    Pki::init(tmp.path(), GATEWAY, KeyAlgorithm::EcdsaP256).unwrap();
    let alice = Pki::open(tmp.path()).unwrap().issue("alice", 30).unwrap();
    let config = config_for(tmp.path());
    let trust = TrustStore::load(&config).unwrap();
    // What the workers use: OpenVPN's TLS configuration, client certificate required.
    let gateway_tls =
        Arc::new(crate::control::tls::server_config(&trust, &ServerIdentity::load(&config).unwrap(), true).unwrap());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(load_certs(&tmp.path().join("ca.crt")).unwrap().swap_remove(0)).unwrap();
    let client_tls =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(load_certs(&alice.cert_path).unwrap(), load_private_key(&alice.key_path).unwrap())
            .unwrap();
    let eap_tls = EapTlsConfig {
        tls: Arc::new(client_tls),
        server_name: rustls::pki_types::ServerName::try_from(GATEWAY).unwrap(),
    };

    let now = Instant::now();
    let config =
        ServerConfig { auth: AuthMethod::Eap, fallback_auth: Some(AuthMethod::MsChapV2), ..Default::default() };
    let mut server = PppServer::new(config, now);
    let mut client =
        PppClient::new(ClientConfig { user: "alice".into(), password: String::new(), eap_tls: Some(eap_tls) });
    let mut authenticator: Option<EapTlsServer> = None;
    let mut server_keys = None;
    for _ in 0..100 {
        while let Some(frame) = client.poll_frame() {
            server.handle_frame(now, &frame).unwrap();
        }
        while let Some(event) = server.poll_event() {
            match event {
                Event::EapFromPeer(packet) => {
                    let step = match &mut authenticator {
                        None => {
                            let mut eap = EapTlsServer::new(gateway_tls.clone(), 1500 - OVERHEAD).unwrap();
                            let start = eap.start(packet[1]);
                            authenticator = Some(eap);
                            ServerStep::Request(start)
                        }
                        Some(eap) => eap.handle_response(&packet),
                    };
                    match step {
                        ServerStep::Request(request) => server.eap_to_peer(&request).unwrap(),
                        ServerStep::Success(success) => {
                            let keys = SessionKeys::Msk(success.msk);
                            server.eap_result(now, EapResult::Success { keys, packet: None });
                        }
                        ServerStep::Failure(reason) => panic!("EAP-TLS failed: {reason}"),
                    }
                }
                Event::Authenticated { user, keys } => {
                    assert_eq!(user, "alice", "the EAP Identity");
                    server_keys = Some(keys);
                    server.assign_network(
                        now,
                        NetworkConfig {
                            local: Ipv4Addr::new(10, 8, 0, 1),
                            peer: Ipv4Addr::new(10, 8, 0, 2),
                            primary_dns: None,
                            secondary_dns: None,
                        },
                    );
                }
                _ => {}
            }
        }
        while let Some(frame) = server.poll_frame() {
            client.handle_frame(&frame).unwrap();
        }
        if server.is_ip_up() {
            break;
        }
    }
    assert!(server.is_ip_up(), "IPCP came up after EAP-TLS");
    let events: Vec<ClientEvent> = std::iter::from_fn(|| client.poll_event()).collect();
    assert_eq!(events[0], ClientEvent::Authenticated);
    assert!(matches!(events[1], ClientEvent::IpUp { address, .. } if address == Ipv4Addr::new(10, 8, 0, 2)));
    let server_hlak = server_hlak(&server_keys.expect("the server authenticated"));
    assert_eq!(client.hlak(), Some(server_hlak), "the crypto binding key agrees");
    assert_ne!(server_hlak, [0; 32]);
}
