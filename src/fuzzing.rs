//! Entry points for fuzzing every parser of peer input. The `cargo fuzz` targets in
//! `fuzz/` call these, and the unit tests below run them over mutated real packets on
//! every `cargo test`, so they cannot rot. Each must never panic, whatever the bytes.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use crate::proto::openvpn::acceptor::{Accepted, Acceptor};
use crate::proto::openvpn::client::Pushed;
use crate::proto::openvpn::data::{DataHeader, DataKey, classify};
use crate::proto::openvpn::key_method::{ClientKeyMethod2, PeerInfo, ServerKeyMethod2};
use crate::proto::openvpn::keys::{Key2, Role};
use crate::proto::openvpn::packet::{ControlBody, ControlHeader};
use crate::proto::openvpn::reliable::Timing;
use crate::proto::openvpn::session::{ServerSession, ServerSettings};
use crate::proto::openvpn::static_key::StaticKey;
use crate::proto::openvpn::tls_crypt::TlsCrypt;
use crate::proto::openvpn::wrap::Wrap;

/// Control-packet framing.
pub fn control_packet(data: &[u8]) {
    if let Ok(h) = ControlHeader::parse(data) {
        let _ = ControlBody::parse(h.opcode, &data[ControlHeader::LEN..]);
    }
}

/// Data-packet header, decryption, and payload classification.
pub fn data_packet(data: &[u8]) {
    static KEY: OnceLock<DataKey> = OnceLock::new();
    let key = KEY.get_or_init(|| {
        let key2 = Key2::from_ekm([7; 256]);
        DataKey::new(0, &key2.direction_keys(crate::crypto::AeadAlgorithm::Aes256Gcm, Role::Server)).expect("key")
    });
    let _ = DataHeader::parse(data);
    let mut buf = data.to_vec();
    if let Ok((_, range)) = key.open(&mut buf) {
        let _ = classify(&buf[range]);
    }
    let _ = classify(data);
}

/// tls-crypt unwrapping (the first thing done to any control packet).
pub fn tls_crypt(data: &[u8]) {
    static TC: OnceLock<TlsCrypt> = OnceLock::new();
    let tc = TC.get_or_init(|| TlsCrypt::new(&StaticKey::from_bytes([3; 256]), Role::Server));
    let mut out = Vec::new();
    let _ = tc.unwrap(data, &mut out);
}

/// OpenVPN-over-TCP framing: every packet found must fit a packet buffer, and
/// walking the stream always makes progress.
pub fn tcp_stream(data: &[u8]) {
    use crate::dataplane::buffers::BUF_SIZE;
    use crate::dataplane::tcp::{Frame, frame_at};
    let mut offset = 0;
    while let Frame::Packet { start, end } = frame_at(data, offset) {
        assert!(end - start <= BUF_SIZE && end <= data.len() && end > offset, "frame {start}..{end} at {offset}");
        offset = end;
    }
}

/// RADIUS replies: packet decoding, authenticator checks, attribute interpretation
/// (vendor attributes, MPPE key decryption, EAP reassembly).
pub fn radius_reply(data: &[u8]) {
    use crate::proto::radius::{AccessReply, Packet, auth::verify_reply, packet::decode_vendor_specific};
    const SECRET: &[u8] = b"fuzz-secret";
    const REQUEST_AUTHENTICATOR: [u8; 16] = [7; 16];
    let Ok(packet) = Packet::decode(data) else { return };
    let _ = verify_reply(data, SECRET, &REQUEST_AUTHENTICATOR, true);
    let _ = AccessReply::from_packet(&packet, SECRET, &REQUEST_AUTHENTICATOR);
    for vsa in packet.attributes(26) {
        let _ = decode_vendor_specific(vsa);
    }
}

/// Access tokens given as passwords: parsing, signature and policy checks.
pub fn access_token(data: &[u8]) {
    use crate::auth::token::{Jwks, TokenPolicy, looks_like_jwt, verify};
    static KEYS: OnceLock<Jwks> = OnceLock::new();
    let keys = KEYS.get_or_init(|| {
        // A P-256 key (RFC 7517 appendix A.1's example public key).
        Jwks::parse(
            br#"{"keys":[{"kty":"EC","crv":"P-256","kid":"1","alg":"ES256",
                "x":"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4",
                "y":"4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"}]}"#,
        )
        .expect("valid JWKS")
    });
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = looks_like_jwt(text);
    let policy = TokenPolicy::new(vec!["https://issuer.test/".into()], vec!["api://vpn".into()]);
    let _ = verify(text, keys, &policy, 1_800_000_000);
}

/// Key-method messages, peer-info and PUSH_REPLY text.
pub fn key_method(data: &[u8]) {
    let _ = ClientKeyMethod2::parse(data);
    let _ = ServerKeyMethod2::parse(data);
    let text = String::from_utf8_lossy(data);
    let _ = PeerInfo::parse(&text);
    let _ = Pushed::parse(&text);
}

/// A sequence of packets from one peer, each given to the acceptor and to a server
/// session that already exists (no tls-crypt, so the fuzzer reaches the reliability
/// layer, TLS and key-method parsing). Packets are separated by a 2-byte length, as
/// on a TCP stream. The session's ids are those of the real packets in the tests
/// (client 78 19 bf 2e bc d1 9a 45, server ea fe bf a4 41 8a e3 1b).
pub fn server_session(data: &[u8]) {
    let settings = fuzz_settings();
    let acceptor = Acceptor::new(None);
    let now = Instant::now();
    let peer: SocketAddr = ([192, 0, 2, 1], 1194).into();
    let local = [0xea, 0xfe, 0xbf, 0xa4, 0x41, 0x8a, 0xe3, 0x1b];
    let remote = [0x78, 0x19, 0xbf, 0x2e, 0xbc, 0xd1, 0x9a, 0x45];
    let Ok(mut session) = ServerSession::new(settings.clone(), local, remote, Wrap::Plain, now) else { return };
    let mut rest = data;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        let packet = &rest[2..2 + len];
        rest = &rest[2 + len..];
        if let Ok(Accepted::Session(mut s)) = acceptor.handle(now, 1_800_000_000, peer, packet, &settings) {
            while s.poll_transmit(now).is_some() {}
        }
        let _ = session.handle_packet(now, packet);
        while session.poll_transmit(now).is_some() {}
        while session.poll_event().is_some() {}
        session.handle_timeout(now);
    }
}

fn fuzz_settings() -> Arc<ServerSettings> {
    static SETTINGS: OnceLock<Arc<ServerSettings>> = OnceLock::new();
    SETTINGS
        .get_or_init(|| {
            let cert = rcgen::generate_simple_self_signed(vec!["fuzz.test".into()]).expect("certificate");
            let key = rustls::pki_types::PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der());
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let tls = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_no_client_auth()
                .with_single_cert(vec![cert.cert.der().clone()], key.into())
                .expect("server config");
            Arc::new(ServerSettings {
                tls: Arc::new(tls),
                data_ciphers: vec![crate::crypto::AeadAlgorithm::Aes256Gcm],
                reneg_interval: None,
                handshake_window: std::time::Duration::from_secs(60),
                reliable: Timing::default(),
            })
        })
        .clone()
}

/// The SPI and KEYMAT of the inbound SA the ESP entries open packets with.
const FUZZ_ESP_SPI: u32 = 0x0000_f022;
const FUZZ_ESP_KEYMAT: [u8; 36] = [9; 36];

/// ESP packets: header parsing, the inbound SA's checks (SPI, replay window, ICV) and,
/// since a fuzzer cannot forge an ICV, the trailer/padding check on the raw bytes.
pub fn esp_packet(data: &[u8]) {
    use crate::proto::esp::{EspHeader, InboundSa, SaKey, sa::read_trailer};
    let _ = EspHeader::parse(data);
    let key = SaKey::from_keymat(crate::crypto::AeadAlgorithm::Aes256Gcm, &FUZZ_ESP_KEYMAT).expect("fuzz key");
    let mut sa = InboundSa::new(FUZZ_ESP_SPI, key).expect("fuzz SA");
    let mut packet = data.to_vec();
    if let Ok(opened) = sa.open(&mut packet) {
        assert!(opened.inner.start <= opened.inner.end && opened.inner.end <= packet.len(), "{opened:?}");
    }
    if let Ok((payload_len, _)) = read_trailer(data) {
        assert!(payload_len + 2 <= data.len());
    }
}

/// Datagrams on UDP port 4500: the NAT-keepalive / IKE / ESP classifier, then ESP opening.
pub fn esp_port_4500(data: &[u8]) {
    use crate::proto::esp::{Port4500, classify_port_4500};
    match classify_port_4500(data) {
        Ok(Port4500::Ike(message)) => assert_eq!(message.len() + 4, data.len()),
        Ok(Port4500::Esp { .. }) => esp_packet(data),
        Ok(Port4500::NatKeepalive) | Err(_) => {}
    }
}

/// The password of the fuzzing driver's only user.
const FUZZ_PASSWORD: &str = "password";

/// The fuzzing driver's MS-CHAPv2 check: a real one, so that the test client accepts it.
fn fuzz_ms_chap_v2(request: &crate::proto::ppp::MsChapV2Verify) -> crate::proto::ppp::AuthVerdict {
    use crate::crypto::mschapv2;
    use crate::proto::ppp::AuthVerdict;
    let hash = mschapv2::nt_password_hash(FUZZ_PASSWORD);
    let (user, peer, authenticator) =
        (request.user.as_bytes(), &request.peer_challenge, &request.authenticator_challenge);
    if !mschapv2::verify_nt_response(&hash, authenticator, peer, user, &request.nt_response) {
        return AuthVerdict::Failure { message: None };
    }
    AuthVerdict::Success {
        authenticator_response: mschapv2::generate_authenticator_response(
            &hash,
            &request.nt_response,
            peer,
            authenticator,
            user,
        ),
        keys: mschapv2::mppe_keys(&hash, &request.nt_response).into(),
    }
}

fn fuzz_network() -> crate::proto::ppp::NetworkConfig {
    crate::proto::ppp::NetworkConfig {
        local: [10, 0, 0, 1].into(),
        peer: [10, 0, 0, 2].into(),
        primary_dns: Some([10, 0, 0, 53].into()),
        secondary_dns: None,
    }
}

fn fuzz_cert_hashes() -> crate::proto::sstp::CertHashes {
    crate::proto::sstp::CertHashes { sha1: [1; 20], sha256: [2; 32] }
}

/// Plays the gateway's driver for one batch of SSTP events.
fn drive_sstp_server(server: &mut crate::proto::sstp::SstpServer, now: Instant) {
    use crate::proto::ppp::{EapResult, SessionKeys};
    use crate::proto::sstp::Event;
    while let Some(event) = server.poll_event() {
        match event {
            Event::VerifyMsChapV2(request) => server.answer_ms_chap_v2(now, fuzz_ms_chap_v2(&request)),
            Event::EapFromPeer(_) => {
                server.eap_result(now, EapResult::Success { keys: SessionKeys::None, packet: None })
            }
            Event::Authenticated { .. } => server.assign_network(now, fuzz_network()),
            Event::TunnelPacket(packet) => {
                let _ = server.send_ip(&packet);
            }
            _ => {}
        }
    }
}

/// IKEv2 messages: the header and payload chain, a chain as found inside SK payloads
/// (first byte = first payload type), and SK payload opening with fixed keys for each
/// kind of cipher (AEAD and CBC + HMAC).
pub fn ike_message(data: &[u8]) {
    use crate::proto::ike::crypto::{EncrAlgorithm, IkeSuite, IntegAlgorithm, PrfAlgorithm, SkCipher, derive_ike_keys};
    use crate::proto::ike::message::{Message, Payload, parse_chain};
    let parsed = Message::parse(data);
    if let Some((&first, rest)) = data.split_first() {
        let _ = parse_chain(first, rest, 0);
    }
    let Ok(message) = parsed else { return };
    let Some(Payload::Encrypted(encrypted)) = message.payloads.last() else { return };
    for suite in [
        IkeSuite { encr: EncrAlgorithm::AesGcm16_256, integ: None, prf: PrfAlgorithm::HmacSha256 },
        IkeSuite {
            encr: EncrAlgorithm::AesCbc128,
            integ: Some(IntegAlgorithm::HmacSha256_128),
            prf: PrfAlgorithm::HmacSha256,
        },
    ] {
        let keys = derive_ike_keys(suite, &[1; 32], &[2; 32], &[3; 32], &[4; 8], &[5; 8]);
        if let Ok(inner) = SkCipher::new(suite, &keys, false).open(data, encrypted.iv_offset) {
            let _ = parse_chain(encrypted.first_inner, &inner, 0);
        }
    }
}

/// The test client, as the fuzzing driver's only user.
fn fuzz_sstp_client() -> crate::proto::sstp::client::SstpClient {
    use crate::proto::sstp::client::{SstpClient, SstpClientConfig};
    SstpClient::new(SstpClientConfig {
        host: "fuzz.test".into(),
        user: "user".into(),
        password: FUZZ_PASSWORD.into(),
        eap_tls: None,
        server_cert_hashes: fuzz_cert_hashes(),
        call_connected_early: true,
    })
}

/// A gateway SSTP connection that the test client brought up to established.
fn established_sstp_server(now: Instant) -> crate::proto::sstp::SstpServer {
    use crate::proto::sstp::{SstpServer, SstpSettings};
    let mut server = SstpServer::new(SstpSettings::new(fuzz_cert_hashes()), now);
    let mut client = fuzz_sstp_client();
    for _ in 0..20 {
        if let Some(bytes) = client.poll_transmit() {
            server.handle_input(now, &bytes);
        }
        drive_sstp_server(&mut server, now);
        if let Some(bytes) = server.poll_transmit() {
            client.handle_input(&bytes);
        }
        while client.poll_event().is_some() {}
    }
    assert!(server.is_established(), "the test client connects");
    server
}

/// The gateway's SSTP connection fed a client's byte stream (inside TLS), in chunks
/// whose sizes come from the input (a chunk size of 0xff also moves the clock 30 s),
/// with a driver that checks MS-CHAPv2 for real, accepts every EAP exchange and assigns
/// an address. An odd first byte starts from a connection the test client already
/// established (the stream then holds SSTP packets only), so that the fuzzer reaches
/// everything past the random challenge and nonce.
pub fn sstp_server_stream(data: &[u8]) {
    use crate::proto::sstp::{SstpServer, SstpSettings};
    let Some((&mode, mut rest)) = data.split_first() else { return };
    let mut now = Instant::now();
    let mut server = if mode & 1 == 1 {
        established_sstp_server(now)
    } else {
        let mut settings = SstpSettings::new(fuzz_cert_hashes());
        settings.allow_sha1 = true;
        SstpServer::new(settings, now)
    };
    while let Some((&chunk, tail)) = rest.split_first() {
        let take = usize::from(chunk).max(1).min(tail.len());
        server.handle_input(now, &tail[..take]);
        rest = &tail[take..];
        drive_sstp_server(&mut server, now);
        let _ = server.poll_transmit();
        if chunk == 0xff {
            now += std::time::Duration::from_secs(30);
            server.handle_timeout(now);
        }
    }
}

/// The test client fed a gateway's byte stream: it is used against real gateways in
/// load tests, so it must not crash either.
pub fn sstp_client_stream(data: &[u8]) {
    let mut client = fuzz_sstp_client();
    for chunk in data.chunks(97) {
        client.handle_input(chunk);
        while client.poll_event().is_some() {}
        let _ = client.poll_transmit();
    }
}

/// PPP frames (each preceded by a 2-byte length) given to the gateway's PPP link. The
/// first byte picks the start: bit 0 EAP instead of MS-CHAPv2, bit 1 a link the test
/// client already brought up (MS-CHAPv2, IPCP open).
pub fn ppp_frames(data: &[u8]) {
    use crate::proto::ppp::client::{ClientConfig, PppClient};
    use crate::proto::ppp::{AuthMethod, Event, PppServer, ServerConfig};
    let Some((&mode, mut rest)) = data.split_first() else { return };
    let now = Instant::now();
    let auth = if mode & 1 == 1 && mode & 2 == 0 { AuthMethod::Eap } else { AuthMethod::MsChapV2 };
    let mut server = PppServer::new(ServerConfig { auth, ..ServerConfig::default() }, now);
    let drive = |server: &mut PppServer| {
        while let Some(event) = server.poll_event() {
            match event {
                Event::VerifyMsChapV2(request) => server.answer_ms_chap_v2(now, fuzz_ms_chap_v2(&request)),
                Event::EapFromPeer(packet) => {
                    let _ = server.eap_to_peer(&packet);
                }
                Event::Authenticated { .. } => server.assign_network(now, fuzz_network()),
                _ => {}
            }
        }
    };
    if mode & 2 == 2 {
        let mut client =
            PppClient::new(ClientConfig { user: "user".into(), password: FUZZ_PASSWORD.into(), eap_tls: None });
        for _ in 0..20 {
            while let Some(frame) = client.poll_frame() {
                let _ = server.handle_frame(now, &frame);
            }
            drive(&mut server);
            while let Some(frame) = server.poll_frame() {
                let _ = client.handle_frame(&frame);
            }
        }
        assert!(server.is_ip_up(), "the test client brings the link up");
    }
    while rest.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        let _ = server.handle_frame(now, &rest[2..2 + len]);
        rest = &rest[2 + len..];
        drive(&mut server);
        while server.poll_frame().is_some() {}
    }
}

/// EAP-TLS Responses (each preceded by a 2-byte length) given to the gateway's
/// authenticator after its Start: the message parser, fragment reassembly and the TLS
/// behind them. Each Response gets the Identifier of the last Request, so that the
/// fuzzer gets past that check.
pub fn eap_tls_responses(data: &[u8]) {
    use crate::proto::eap::tls::{EapTlsServer, ServerStep, TlsMessage};
    let _ = TlsMessage::parse(data);
    let mut server = EapTlsServer::new(eap_tls_fuzz_pki().server.clone(), 64).expect("the fuzzing TLS config works");
    let mut id = server.start(0)[1];
    let mut rest = data;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        let mut packet = rest[2..2 + len].to_vec();
        rest = &rest[2 + len..];
        if let Some(packet_id) = packet.get_mut(1) {
            *packet_id = id;
        }
        match server.handle_response(&packet) {
            ServerStep::Request(request) => id = request[1],
            ServerStep::Success(_) | ServerStep::Failure(_) => break,
        }
    }
}

/// A CA, the gateway's EAP-TLS configuration (client certificates from that CA
/// required) and a client's, made once.
struct EapTlsFuzzPki {
    server: Arc<rustls::ServerConfig>,
    /// For the unit test's seed conversation.
    #[cfg(test)]
    client: Arc<rustls::ClientConfig>,
}

fn eap_tls_fuzz_pki() -> &'static EapTlsFuzzPki {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    static PKI: OnceLock<EapTlsFuzzPki> = OnceLock::new();
    PKI.get_or_init(|| {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let new_key = || rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let private = |key: &rcgen::KeyPair| PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let ca_key = new_key();
        let mut ca_params = rcgen::CertificateParams::new(Vec::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = rcgen::Issuer::new(ca_params, &ca_key);
        let signed = |name: &str, key: &rcgen::KeyPair| {
            let params = rcgen::CertificateParams::new(vec![name.to_string()]).expect("params");
            CertificateDer::from(params.signed_by(key, &issuer).expect("certificate").der().to_vec())
        };
        let server_key = new_key();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(ca.der().to_vec())).expect("CA");
        let roots = Arc::new(roots);
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .expect("verifier");
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![signed("fuzz.test", &server_key)], private(&server_key))
            .expect("server config");
        #[cfg(test)]
        let client = {
            let client_key = new_key();
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_root_certificates(roots)
                .with_client_auth_cert(vec![signed("fuzz-client", &client_key)], private(&client_key))
                .expect("client config")
        };
        EapTlsFuzzPki {
            server: Arc::new(server),
            #[cfg(test)]
            client: Arc::new(client),
        }
    })
}

/// The IKEv2 responder fed a sequence of datagrams (each preceded by a 2-byte length):
/// IKE_SA_INIT handling (proposal choice, KE, cookies, NAT detection), and messages for
/// existing and unknown SAs, with timeouts in between.
pub fn ike_responder(data: &[u8]) {
    use crate::proto::ike::responder::Responder;
    let mut responder = Responder::new(ike_settings());
    let start = Instant::now();
    let local: SocketAddr = ([192, 0, 2, 1], 500).into();
    let remote: SocketAddr = ([198, 51, 100, 7], 500).into();
    let mut rest = data;
    let mut step = 0;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        let datagram = &rest[2..2 + len];
        rest = &rest[2 + len..];
        let now = start + std::time::Duration::from_secs(step);
        step += 7;
        let _ = responder.handle_datagram(now, local, remote, datagram);
        responder.handle_timeout(now);
        while responder.poll_transmit().is_some() {}
        while responder.poll_event().is_some() {}
    }
}

fn ike_settings() -> Arc<crate::proto::ike::responder::ResponderConfig> {
    use crate::proto::ike::responder::{Credential, PeerVerifier, ResponderConfig};
    struct RefuseAll;
    impl PeerVerifier for RefuseAll {
        fn verify_chain(&self, _: &[Vec<u8>]) -> Result<(), String> {
            Err("fuzzing".into())
        }
        fn certreq_hashes(&self) -> Vec<[u8; 20]> {
            vec![[7; 20]]
        }
    }
    static SETTINGS: OnceLock<Arc<ResponderConfig>> = OnceLock::new();
    SETTINGS
        .get_or_init(|| {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
            let cert = rcgen::CertificateParams::new(vec!["fuzz.test".into()])
                .expect("params")
                .self_signed(&key)
                .expect("certificate");
            let credential = Credential::new(vec![cert.der().to_vec()], &key.serialize_der()).expect("credential");
            let mut config = ResponderConfig::new(Arc::new(credential), Arc::new(RefuseAll));
            config.algorithms.dh_groups.push(crate::crypto::dh::DhGroup::Modp1024);
            config.cookie_threshold = 2;
            config.eap = true;
            Arc::new(config)
        })
        .clone()
}

/// The config file parser (not peer input, but operator input that must never crash).
pub fn config_text(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::config::Config::from_toml_str(text, std::path::Path::new("fuzz.toml"));
    }
}

/// What the load generator reads back from a server under test: the echoed probe packets
/// inside the tunnel, and (operator input) a client profile.
pub fn loadgen_input(data: &[u8]) {
    if let Ok(datagram) = crate::loadgen::packet::parse_udp_packet(data) {
        let _ = crate::loadgen::packet::Probe::decode(datagram.payload);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::loadgen::profile::Profile::parse(text);
    }
}

/// The data plane's split of a UDP GRO receive into datagrams: the first two bytes give
/// an arbitrary segment size (0: a receive without the UDP_GRO message), the rest is the
/// receive; every byte must land in exactly one pool buffer, in order, or be counted.
pub fn udp_gro_split(data: &[u8]) {
    use crate::dataplane::{buffers::BufferPool, gro};
    let Some((size, received)) = data.split_first_chunk::<2>() else { return };
    let segment = Some(usize::from(u16::from_be_bytes(*size))).filter(|&s| s > 0);
    let mut bufs = BufferPool::new(8);
    let mut out = Vec::new();
    let split = gro::split_into(received, segment, &mut bufs, &mut out);
    let cut: Vec<std::ops::Range<usize>> = gro::datagrams(received.len(), segment).collect();
    assert_eq!(split.datagrams + split.too_long + split.no_buffer, cut.len());
    assert_eq!(cut.iter().map(|r| r.len()).sum::<usize>(), received.len());
    let mut copied = out.iter();
    for range in cut.into_iter().filter(|r| r.len() <= crate::dataplane::buffers::BUF_SIZE) {
        let Some(&(b, len)) = copied.next() else { break };
        assert_eq!(&bufs.get(b)[..len], &received[range]);
    }
}

/// What a multishot UDP receive leaves in a ring buffer (header, sender's address,
/// control messages, datagram), as the data plane parses it: a datagram it accepts lies
/// exactly where a pool buffer's payload starts.
pub fn udp_multishot_receive(data: &[u8]) {
    use crate::dataplane::{buffers::RECV_PREFIX, recv_ring};
    if let Some(received) = recv_ring::parse(data) {
        assert_eq!(received.data.as_ptr(), data[RECV_PREFIX..].as_ptr());
        assert!(received.data.len() <= data.len() - RECV_PREFIX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic stand-in for a fuzzer: flips, truncates and extends real
    /// packets many times.
    fn mutations(seeds: &[&[u8]], rounds: usize, mut f: impl FnMut(&[u8])) {
        let mut rng = crate::testing::XorShift(0x9e37_79b9_7f4a_7c15);
        let mut next = move || rng.next();
        for seed in seeds {
            f(seed);
            for _ in 0..rounds {
                let mut m = seed.to_vec();
                match next() % 4 {
                    0 if !m.is_empty() => {
                        let i = (next() as usize) % m.len();
                        m[i] ^= 1 << (next() % 8);
                    }
                    1 => m.truncate((next() as usize) % (m.len() + 1)),
                    2 => m.extend((0..next() % 64).map(|_| next() as u8)),
                    _ => {
                        let i = (next() as usize) % (m.len() + 1);
                        m.insert(i, next() as u8);
                    }
                }
                f(&m);
            }
        }
    }

    // Real packets (OpenVPN 2.6 tests/unit_tests/openvpn/test_pkt.c).
    const CLIENT_RESET: &[u8] = &[0x38, 0x68, 0x91, 0x92, 0x3f, 0xa3, 0x10, 0x34, 0x37, 0x00, 0x00, 0x00, 0x00, 0x00];
    const CLIENT_CONTROL: &[u8] = &[
        0x20, 0x78, 0x19, 0xbf, 0x2e, 0xbc, 0xd1, 0x9a, 0x45, 0x01, 0x00, 0x00, 0x00, 0x00, 0xea, 0xfe, 0xbf, 0xa4,
        0x41, 0x8a, 0xe3, 0x1b, 0x00, 0x00, 0x00, 0x01, 0x16, 0x03, 0x01,
    ];

    #[test]
    fn parsers_survive_mutated_packets() {
        mutations(&[CLIENT_RESET, CLIENT_CONTROL, &[0x48, 0, 0, 1, 0, 0, 0, 1, 0xaa, 0xbb]], 3000, |d| {
            control_packet(d);
            data_packet(d);
            tls_crypt(d);
            tcp_stream(d);
        });
        let km2 = ClientKeyMethod2 {
            pre_master: [1; 48],
            random1: [2; 32],
            random2: [3; 32],
            options: "V4,tls-client".into(),
            username: "u".into(),
            password: "p".into(),
            peer_info: "IV_PROTO=990\nIV_CIPHERS=AES-256-GCM\n".into(),
        }
        .encode();
        mutations(
            &[&km2, b"PUSH_REPLY,ifconfig 10.0.0.2 255.255.255.0,peer-id 3,cipher AES-256-GCM"],
            3000,
            key_method,
        );
        mutations(&[b"[network]\npool = \"10.0.0.0/24\"\nroutes = [\"10.1.0.0/16\"]\n"], 2000, config_text);
        // An Access-Accept with a Framed-IP-Address, a Class and a Microsoft VSA.
        let accept: &[u8] = &[
            2, 1, 0, 41, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 8, 6, 172, 16, 201, 9, 25, 4, b'c',
            b'l', 26, 11, 0, 0, 1, 55, 65, 5, 0x6a, 0xd1, 0xbd,
        ];
        assert!(crate::proto::radius::Packet::decode(accept).is_ok(), "the seed is a valid packet");
        mutations(&[accept], 3000, radius_reply);
        let token = b"eyJhbGciOiJFUzI1NiIsImtpZCI6IjEifQ.eyJpc3MiOiJodHRwczovL2lzc3Vlci50ZXN0LyIsImF1ZCI6ImFwaTovL3ZwbiIsImV4cCI6MTkwMDAwMDAwMH0.c2lnbmF0dXJl";
        mutations(&[token], 3000, access_token);
    }

    /// A real IKE_SA_INIT request (built with the codec) and an encrypted message.
    fn ike_seeds() -> (Vec<u8>, Vec<u8>) {
        use crate::crypto::dh::{DhGroup, KeyExchange};
        use crate::proto::ike::message::{Header, Message, Notify, Payload, Proposal, Transform, notify};
        let ke = KeyExchange::generate(DhGroup::Ecp256).expect("key");
        let header = Header {
            spi_i: [1; 8],
            spi_r: [0; 8],
            next_payload: 0,
            exchange: 34,
            flags: 0x08,
            message_id: 0,
            length: 0,
        };
        let init = Message {
            header,
            payloads: vec![
                Payload::Sa(vec![Proposal {
                    number: 1,
                    protocol: 1,
                    spi: vec![],
                    transforms: vec![
                        Transform::new(1, 20, Some(256)),
                        Transform::new(2, 5, None),
                        Transform::new(4, 19, None),
                    ],
                }]),
                Payload::Ke { group: 19, data: ke.public_value().to_vec() },
                Payload::Nonce(vec![9; 32]),
                Payload::Notify(Notify::new(notify::NAT_DETECTION_SOURCE_IP, vec![0; 20])),
                Payload::Notify(Notify::new(notify::IKEV2_FRAGMENTATION_SUPPORTED, vec![])),
            ],
        }
        .encode();
        use crate::proto::ike::crypto::{EncrAlgorithm, IkeSuite, PrfAlgorithm, SkCipher, derive_ike_keys};
        let suite = IkeSuite { encr: EncrAlgorithm::AesGcm16_256, integ: None, prf: PrfAlgorithm::HmacSha256 };
        let keys = derive_ike_keys(suite, &[1; 32], &[2; 32], &[3; 32], &[4; 8], &[5; 8]);
        let (first, inner) = crate::proto::ike::message::encode_chain(&[Payload::Nonce(vec![1; 16])]);
        let auth = Header { spi_r: [2; 8], exchange: 35, message_id: 1, ..header };
        let sealed = SkCipher::new(suite, &keys, true).seal(auth, first, None, &inner).expect("seal");
        (init, sealed)
    }

    #[test]
    fn ike_parsers_survive_mutated_messages() {
        let (init, sealed) = ike_seeds();
        mutations(&[&init, &sealed], 3000, ike_message);
        let mut stream = Vec::new();
        for p in [&init, &init, &sealed] {
            stream.extend_from_slice(&(p.len() as u16).to_be_bytes());
            stream.extend_from_slice(p);
        }
        mutations(&[&stream], 500, ike_responder);
    }

    #[test]
    fn esp_parsers_survive_mutated_packets() {
        use crate::proto::esp::{HEADROOM, MAX_TAILROOM, NEXT_HEADER_IPV4, OutboundSa, SaKey, with_non_esp_marker};
        // A real packet under the fuzz SA's key (it opens), a keepalive and an IKE header.
        let key = SaKey::from_keymat(crate::crypto::AeadAlgorithm::Aes256Gcm, &FUZZ_ESP_KEYMAT).unwrap();
        let sender = OutboundSa::new(FUZZ_ESP_SPI, key).unwrap();
        let inner = [0x45u8; 40];
        let mut esp = vec![0u8; HEADROOM + inner.len() + MAX_TAILROOM];
        esp[HEADROOM..HEADROOM + inner.len()].copy_from_slice(&inner);
        let sealed = sender.seal(&mut esp, inner.len(), NEXT_HEADER_IPV4).unwrap();
        esp.truncate(sealed.len);
        let key = SaKey::from_keymat(crate::crypto::AeadAlgorithm::Aes256Gcm, &FUZZ_ESP_KEYMAT).unwrap();
        let mut receiver = crate::proto::esp::InboundSa::new(FUZZ_ESP_SPI, key).unwrap();
        assert!(receiver.open(&mut esp.clone()).is_ok(), "the ESP seed opens under the fuzz SA");
        let ike = with_non_esp_marker(&[0x11; 28]);
        mutations(&[&esp, &[0xff], &ike], 3000, |d| {
            esp_packet(d);
            esp_port_4500(d);
        });
    }

    #[test]
    fn server_session_survives_mutated_exchanges() {
        let mut stream = Vec::new();
        for p in [CLIENT_RESET, CLIENT_CONTROL] {
            stream.extend_from_slice(&(p.len() as u16).to_be_bytes());
            stream.extend_from_slice(p);
        }
        mutations(&[&stream], 2000, server_session);
        // A well-framed packet one byte longer than a buffer (it once crashed a worker).
        let oversized: Vec<u8> = [0x08, 0x01].into_iter().chain(std::iter::repeat_n(0x20, 0x0801)).collect();
        mutations(&[&stream, &oversized], 2000, tcp_stream);
    }

    /// Real SSTP and PPP traffic from the cores' own encoders.
    fn sstp_seeds() -> (Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>) {
        use crate::proto::ppp::packet::{code, control_frame, frame, protocol};
        use crate::proto::sstp::binding::{CertHashes, HashProtocol, call_connected};
        use crate::proto::sstp::http;
        use crate::proto::sstp::packet::{MessageType, attribute, control, push_data};
        let lcp_request = [1, 4, 0x0f, 0xfb, 5, 6, 1, 2, 3, 4, 13, 3, 6];
        let mut chap_response = vec![49];
        chap_response.extend_from_slice(&[7; 49]);
        chap_response.extend_from_slice(b"user");
        let ppp = [
            control_frame(protocol::LCP, code::CONFIGURE_REQUEST, 1, &lcp_request),
            control_frame(
                protocol::LCP,
                code::CONFIGURE_ACK,
                1,
                &[1, 4, 5, 0xdc, 3, 5, 0xc2, 0x23, 0x81, 5, 6, 0, 0, 0, 1],
            ),
            control_frame(protocol::CHAP, 2, 0, &chap_response),
            control_frame(protocol::IPCP, code::CONFIGURE_REQUEST, 1, &[3, 6, 0, 0, 0, 0, 129, 6, 0, 0, 0, 0]),
            control_frame(protocol::IPV6CP, code::CONFIGURE_REQUEST, 1, &[1, 10, 0, 0, 0, 0, 0, 0, 0, 1]),
            control_frame(protocol::LCP, code::ECHO_REQUEST, 9, &[0, 0, 0, 1]),
            frame(protocol::IPV4, &[0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 2, 10, 0, 0, 1]),
            control_frame(protocol::LCP, code::TERMINATE_REQUEST, 2, &[]),
        ];
        let mut stream = http::client_request("fuzz.test", "1");
        stream.extend_from_slice(&control(
            MessageType::CallConnectRequest,
            &[(attribute::ENCAPSULATED_PROTOCOL_ID, &[0, 1])],
        ));
        for f in &ppp[..3] {
            push_data(&mut stream, f);
        }
        let hashes = CertHashes { sha1: [1; 20], sha256: [2; 32] };
        stream.extend_from_slice(&call_connected(HashProtocol::Sha256, &[0; 32], &hashes, &[0; 32]));
        let mut after_handshake = Vec::new();
        for f in &ppp[3..] {
            push_data(&mut after_handshake, f);
        }
        after_handshake.extend_from_slice(&control(MessageType::EchoRequest, &[]));
        after_handshake.extend_from_slice(&control(MessageType::CallDisconnect, &[]));
        stream.extend_from_slice(&after_handshake);
        // The server format: a mode byte, then chunks each led by its length.
        let chunked = |mode: u8, stream: &[u8]| {
            let mut out = vec![mode];
            for chunk in stream.chunks(200) {
                out.push(chunk.len() as u8);
                out.extend_from_slice(chunk);
            }
            out
        };
        let mut frames = vec![0];
        for f in &ppp {
            frames.extend_from_slice(&(f.len() as u16).to_be_bytes());
            frames.extend_from_slice(f);
        }
        let mut gateway = http::ok_response();
        let mut binding_request = vec![0, 0, 0, 3];
        binding_request.extend_from_slice(&[5; 32]);
        gateway.extend_from_slice(&control(
            MessageType::CallConnectAck,
            &[(attribute::CRYPTO_BINDING_REQ, &binding_request)],
        ));
        push_data(
            &mut gateway,
            &control_frame(protocol::LCP, code::CONFIGURE_REQUEST, 1, &[1, 4, 5, 0xdc, 3, 5, 0xc2, 0x23, 0x81]),
        );
        let mut challenge = vec![16];
        challenge.extend_from_slice(&[3; 16]);
        challenge.extend_from_slice(b"gw");
        push_data(&mut gateway, &control_frame(protocol::CHAP, 1, 4, &challenge));
        push_data(
            &mut gateway,
            &control_frame(protocol::CHAP, 3, 4, b"S=0000000000000000000000000000000000000000 M=ok"),
        );
        push_data(&mut gateway, &control_frame(protocol::IPCP, code::CONFIGURE_NAK, 1, &[3, 6, 10, 0, 0, 2]));
        gateway.extend_from_slice(&control(MessageType::EchoRequest, &[]));
        gateway.extend_from_slice(&control(MessageType::CallDisconnect, &[]));
        (chunked(0, &stream), chunked(1, &after_handshake), frames, gateway)
    }

    #[test]
    fn eap_tls_survives_mutated_responses() {
        use crate::proto::eap::tls::{EapTlsPeer, EapTlsServer, PeerStep, ServerStep};
        // A real conversation's Responses, length-prefixed as the target takes them.
        let pki = eap_tls_fuzz_pki();
        let mut server = EapTlsServer::new(pki.server.clone(), 64).unwrap();
        let name = rustls::pki_types::ServerName::try_from("fuzz.test").unwrap();
        let mut peer = EapTlsPeer::new(pki.client.clone(), name, 200).unwrap();
        let mut request = server.start(0);
        let mut seed = Vec::new();
        loop {
            let PeerStep::Response(response) = peer.handle_request(&request) else { panic!("the peer failed") };
            seed.extend_from_slice(&(response.len() as u16).to_be_bytes());
            seed.extend_from_slice(&response);
            match server.handle_response(&response) {
                ServerStep::Request(next) => request = next,
                ServerStep::Success(_) => break,
                ServerStep::Failure(reason) => panic!("the seed conversation failed: {reason}"),
            }
        }
        mutations(&[&seed], 300, eap_tls_responses);
    }

    #[test]
    fn sstp_and_ppp_survive_mutated_streams() {
        let (server_stream, established, frames, gateway_stream) = sstp_seeds();
        mutations(&[&server_stream], 1000, sstp_server_stream);
        mutations(&[&established], 300, sstp_server_stream);
        let mut eap_frames = frames.clone();
        eap_frames[0] = 1;
        let mut up_frames = frames.clone();
        up_frames[0] = 2;
        mutations(&[&frames, &eap_frames], 2000, ppp_frames);
        mutations(&[&up_frames], 300, ppp_frames);
        mutations(&[&gateway_stream], 2000, sstp_client_stream);
    }

    #[test]
    fn loadgen_survives_mutated_echoes_and_profiles() {
        use crate::loadgen::packet::{Probe, write_probe_packet};
        let mut echo = [0u8; 200];
        let probe = Probe { client: 7, sequence: 42, sent_ns: 1_000 };
        let (src, dst) = ("172.16.0.2:40000".parse().unwrap(), "10.50.0.2:9000".parse().unwrap());
        write_probe_packet(&mut echo, src, dst, &probe, 200);
        let profile = b"client\nremote 192.0.2.1 1194 udp\n<ca>\n-----BEGIN CERTIFICATE-----\n</ca>\n";
        mutations(&[&echo, profile], 3000, loadgen_input);
    }

    #[test]
    fn udp_multishot_receive_survives_mutated_buffers() {
        use crate::dataplane::recv_ring::{CONTROL_LEN, NAME_LEN};
        /// A ring buffer as the kernel fills it: io_uring_recvmsg_out (namelen, controllen,
        /// payloadlen, flags), a sockaddr_in, the control messages, the datagram.
        fn filled(control: &[u8], payload: &[u8]) -> Vec<u8> {
            let mut b = Vec::new();
            for field in [16u32, control.len() as u32, payload.len() as u32, 0] {
                b.extend(field.to_ne_bytes());
            }
            let mut name = [0u8; NAME_LEN];
            name[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
            name[2..4].copy_from_slice(&1194u16.to_be_bytes());
            name[4..8].copy_from_slice(&[192, 0, 2, 9]);
            b.extend(name);
            let mut field = [0u8; CONTROL_LEN];
            field[..control.len()].copy_from_slice(control);
            b.extend(field);
            b.extend(payload);
            b
        }
        /// A control message: cmsghdr (length, level, type), then its data, padded to 8.
        fn cmsg(level: i32, ty: i32, data: &[u8]) -> Vec<u8> {
            let mut c = (16 + data.len() as u64).to_ne_bytes().to_vec();
            c.extend(level.to_ne_bytes());
            c.extend(ty.to_ne_bytes());
            c.extend(data);
            c.resize(c.len().next_multiple_of(8), 0);
            c
        }
        let pktinfo = cmsg(libc::IPPROTO_IP, libc::IP_PKTINFO, &[2, 0, 0, 0, 192, 0, 2, 1, 192, 0, 2, 1]);
        let gro = cmsg(libc::SOL_UDP, libc::UDP_GRO, &1300i32.to_ne_bytes());
        let plain = filled(&pktinfo, &[0x48; 200]);
        let coalesced = filled(&[&pktinfo[..], &gro[..]].concat(), &[0x48; 2600]);
        let received = crate::dataplane::recv_ring::parse(&coalesced).expect("a well-formed buffer parses");
        assert_eq!(received.peer, Some(SocketAddr::from(([192, 0, 2, 9], 1194))));
        assert_eq!(received.local, Some(std::net::IpAddr::from([192, 0, 2, 1])));
        assert_eq!((received.segment, received.data.len()), (Some(1300), 2600));
        mutations(&[&plain, &coalesced, &filled(&[], &[])], 2000, udp_multishot_receive);
    }

    #[test]
    fn udp_gro_split_survives_mutated_receives() {
        // A receive of three 1000-byte datagrams and a 400-byte one, with its segment size.
        let mut receive = 1000u16.to_be_bytes().to_vec();
        receive.extend((0..3400).map(|i| (i / 1000) as u8));
        let lone = [&[0u8, 0][..], &[0x48; 120][..]].concat();
        mutations(&[&receive, &lone, &[0, 1, 7, 7, 7]], 2000, udp_gro_split);
    }
}
