//! The responder driven by a minimal initiator written here with the same codec: full
//! IKE_SA_INIT + IKE_AUTH with RSA and ECDSA certificates, CHILD SA keys compared on
//! both sides, rekeys of CHILD and IKE SAs from either side, DPD and its give-up.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::auth::{self, SigningKey};
use super::crypto::{self, EncrAlgorithm, IkeKeys, IkeSuite, PrfAlgorithm, SkCipher};
use super::message::{
    self, CERT_X509_SIGNATURE, Configuration, Delete, Header, Identification, Message, Notify, Payload, Proposal,
    Reassembly, TrafficSelector, Transform, cfg_attr, cfg_type, exchange, flags, notify, protocol, transform_type,
};
use super::proposal::{self, ChildContext};
use super::responder::{
    Authorization, ChildSa, CloseReason, Credential, Event, Grant, PeerVerifier, Responder, ResponderConfig, Transmit,
    seal_message,
};
use super::ts;
use crate::crypto::dh::{DhGroup, KeyExchange};

const SERVER: &str = "vpn.example.test";
const CLIENT: &str = "alice.example.test";

fn server_addr() -> SocketAddr {
    "192.0.2.1:500".parse().unwrap()
}
fn client_addr() -> SocketAddr {
    "198.51.100.7:500".parse().unwrap()
}

/// Accepts exactly the pinned end-entity certificates.
struct Pinned(Vec<Vec<u8>>);

impl PeerVerifier for Pinned {
    fn verify_chain(&self, chain: &[Vec<u8>]) -> Result<(), String> {
        if self.0.contains(&chain[0]) { Ok(()) } else { Err("not a pinned certificate".into()) }
    }
    fn certreq_hashes(&self) -> Vec<[u8; 20]> {
        self.0.iter().filter_map(|c| auth::spki_sha1(c)).collect()
    }
}

fn make_cert(name: &str, alg: &'static rcgen::SignatureAlgorithm) -> (Vec<u8>, Vec<u8>) {
    let key = rcgen::KeyPair::generate_for(alg).unwrap();
    let params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
    (params.self_signed(&key).unwrap().der().to_vec(), key.serialize_der())
}

struct Setup {
    responder: Responder,
    client_cert: Vec<u8>,
    client_key: SigningKey,
    server_cert: Vec<u8>,
    now: Instant,
}

fn setup(server_alg: &'static rcgen::SignatureAlgorithm, client_alg: &'static rcgen::SignatureAlgorithm) -> Setup {
    setup_with(server_alg, client_alg, |_| {})
}

fn setup_with(
    server_alg: &'static rcgen::SignatureAlgorithm,
    client_alg: &'static rcgen::SignatureAlgorithm,
    configure: impl FnOnce(&mut ResponderConfig),
) -> Setup {
    let (server_cert, server_key) = make_cert(SERVER, server_alg);
    let (client_cert, client_key) = make_cert(CLIENT, client_alg);
    let credential = Credential::new(vec![server_cert.clone()], &server_key).unwrap();
    let mut config = ResponderConfig::new(Arc::new(credential), Arc::new(Pinned(vec![client_cert.clone()])));
    configure(&mut config);
    Setup {
        responder: Responder::new(Arc::new(config)),
        client_cert,
        client_key: SigningKey::from_pkcs8(&client_key).unwrap(),
        server_cert,
        now: Instant::now(),
    }
}

fn grant() -> Grant {
    Grant {
        virtual_ipv4: Some(Ipv4Addr::new(10, 9, 0, 7)),
        dns: vec![Ipv4Addr::new(10, 1, 0, 53)],
        routes: vec!["10.1.0.0/16".parse().unwrap()],
    }
}

fn everything() -> Vec<TrafficSelector> {
    vec![ts::from_net("0.0.0.0/0".parse().unwrap())]
}

/// The initiator's view of one IKE SA.
struct Initiator {
    spi_i: [u8; 8],
    spi_r: [u8; 8],
    ni: Vec<u8>,
    nr: Vec<u8>,
    request: Vec<u8>,
    response: Vec<u8>,
    suite: IkeSuite,
    keys: Option<IkeKeys>,
    cipher: Option<SkCipher>,
    next_id: u32,
    /// Next request ID expected from the responder.
    peer_next_id: u32,
    reassembly: Reassembly,
    local: SocketAddr,
    /// Our inbound ESP SPI of the current CHILD SA.
    esp_spi: u32,
}

fn ike_proposal(encr: EncrAlgorithm, groups: &[DhGroup]) -> Proposal {
    let (id, key_length) = encr.id();
    let mut transforms = vec![
        Transform::new(transform_type::ENCR, id, key_length),
        Transform::new(transform_type::PRF, PrfAlgorithm::HmacSha256.id(), None),
    ];
    if !encr.is_aead() {
        transforms.push(Transform::new(transform_type::INTEG, 12, None));
    }
    transforms.extend(groups.iter().map(|g| Transform::new(transform_type::DH, g.id(), None)));
    Proposal { number: 1, protocol: protocol::IKE, spi: Vec::new(), transforms }
}

fn esp_proposal(spi: u32, encr: EncrAlgorithm, group: Option<DhGroup>) -> Proposal {
    let (id, key_length) = encr.id();
    let mut transforms = vec![Transform::new(transform_type::ENCR, id, key_length)];
    if let Some(g) = group {
        transforms.push(Transform::new(transform_type::DH, g.id(), None));
    }
    transforms.push(Transform::new(transform_type::ESN, 0, None));
    Proposal { number: 1, protocol: protocol::ESP, spi: spi.to_be_bytes().to_vec(), transforms }
}

fn nat_hash(spi_i: &[u8; 8], spi_r: &[u8; 8], addr: SocketAddr) -> Vec<u8> {
    let std::net::IpAddr::V4(ip) = addr.ip() else { unreachable!("IPv4 in tests") };
    let data = [&spi_i[..], spi_r, &ip.octets(), &addr.port().to_be_bytes()].concat();
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &data).as_ref().to_vec()
}

fn drain(responder: &mut Responder) -> (Vec<Transmit>, Vec<Event>) {
    let mut t = Vec::new();
    while let Some(x) = responder.poll_transmit() {
        t.push(x);
    }
    let mut e = Vec::new();
    while let Some(x) = responder.poll_event() {
        e.push(x);
    }
    (t, e)
}

impl Initiator {
    /// Builds an IKE_SA_INIT request; `fake_nat` sends a wrong NAT_DETECTION_SOURCE_IP as
    /// strongSwan with kernel-libipsec does.
    fn init_request(encr: EncrAlgorithm, groups: &[DhGroup], ke: &KeyExchange, fake_nat: bool) -> (Initiator, Vec<u8>) {
        let spi_i: [u8; 8] = [0x5a, 1, 2, 3, 4, 5, 6, 7];
        let ni = vec![0x11; 32];
        let source = if fake_nat { vec![0; 20] } else { nat_hash(&spi_i, &[0; 8], client_addr()) };
        let payloads = vec![
            Payload::Sa(vec![ike_proposal(encr, groups)]),
            Payload::Ke { group: ke.group().id(), data: ke.public_value().to_vec() },
            Payload::Nonce(ni.clone()),
            Payload::Notify(Notify::new(notify::NAT_DETECTION_SOURCE_IP, source)),
            Payload::Notify(Notify::new(
                notify::NAT_DETECTION_DESTINATION_IP,
                nat_hash(&spi_i, &[0; 8], server_addr()),
            )),
            Payload::Notify(Notify::new(notify::IKEV2_FRAGMENTATION_SUPPORTED, Vec::new())),
            Payload::Notify(Notify::new(notify::SIGNATURE_HASH_ALGORITHMS, vec![0, 2, 0, 3, 0, 4])),
            Payload::VendorId(b"test initiator".to_vec()),
        ];
        let header = Header {
            spi_i,
            spi_r: [0; 8],
            next_payload: 0,
            exchange: exchange::IKE_SA_INIT,
            flags: flags::INITIATOR,
            message_id: 0,
            length: 0,
        };
        let request = Message { header, payloads }.encode();
        let initiator = Initiator {
            spi_i,
            spi_r: [0; 8],
            ni,
            nr: Vec::new(),
            request: request.clone(),
            response: Vec::new(),
            suite: IkeSuite { encr, integ: None, prf: PrfAlgorithm::HmacSha256 },
            keys: None,
            cipher: None,
            next_id: 1,
            peer_next_id: 0,
            reassembly: Reassembly::default(),
            local: client_addr(),
            esp_spi: 0xc1c1_0001,
        };
        (initiator, request)
    }

    fn finish_init(&mut self, ke: &KeyExchange, response: &[u8]) -> Message {
        let message = Message::parse(response).unwrap();
        self.response = response.to_vec();
        self.spi_r = message.header.spi_r;
        let mut suite = self.suite;
        for p in &message.payloads {
            match p {
                Payload::Nonce(n) => self.nr = n.clone(),
                Payload::Sa(props) => {
                    let t = &props[0].transforms;
                    let e = t.iter().find(|t| t.transform_type == transform_type::ENCR).unwrap();
                    suite.encr = EncrAlgorithm::from_id(e.id, e.key_length()).unwrap();
                    suite.integ = t
                        .iter()
                        .find(|t| t.transform_type == transform_type::INTEG)
                        .and_then(|t| crypto::IntegAlgorithm::from_id(t.id));
                }
                _ => {}
            }
        }
        let Some(Payload::Ke { data, .. }) = message.payloads.iter().find(|p| matches!(p, Payload::Ke { .. })) else {
            panic!("KE in the response")
        };
        let shared = ke.agree(data).unwrap();
        let seed = crypto::skeyseed(suite.prf, &self.ni, &self.nr, &shared);
        let keys = crypto::derive_ike_keys(suite, &seed, &self.ni, &self.nr, &self.spi_i, &self.spi_r);
        self.cipher = Some(SkCipher::new(suite, &keys, true));
        self.keys = Some(keys);
        self.suite = suite;
        message
    }

    fn header(&self, exchange: u8, message_id: u32, response: bool) -> Header {
        Header {
            spi_i: self.spi_i,
            spi_r: self.spi_r,
            next_payload: 0,
            exchange,
            flags: flags::INITIATOR | if response { flags::RESPONSE } else { 0 },
            message_id,
            length: 0,
        }
    }

    /// Seals a request (fragmented at `fragment_size` if given).
    fn request(&mut self, exchange: u8, payloads: &[Payload], fragment_size: Option<usize>) -> Vec<Vec<u8>> {
        let header = self.header(exchange, self.next_id, false);
        self.next_id += 1;
        seal_message(self.cipher.as_mut().unwrap(), header, payloads, fragment_size)
    }

    /// Opens one datagram from the responder: returns the header and inner payloads once
    /// a (possibly fragmented) message is complete.
    fn open(&mut self, datagram: &[u8]) -> Option<(Header, Vec<Payload>)> {
        let header = Header::parse(datagram).unwrap();
        assert_eq!(header.flags & flags::INITIATOR, 0, "the responder never sets the initiator flag");
        let outer = message::parse_chain(header.next_payload, &datagram[28..], 28).unwrap();
        let Some(Payload::Encrypted(e)) = outer.last() else { panic!("encrypted message expected") };
        let plain = self.cipher.as_ref().unwrap().open(datagram, e.iv_offset).unwrap();
        let (first, inner) = match e.fragment {
            None => (e.first_inner, plain),
            Some((n, t)) => self.reassembly.add(header.message_id, n, t, e.first_inner, plain).unwrap()?,
        };
        Some((header, message::parse_chain(first, &inner, 0).unwrap()))
    }

    fn open_all(&mut self, transmits: &[Transmit]) -> (Header, Vec<Payload>) {
        let mut complete = None;
        for t in transmits {
            assert_eq!(t.remote, self.local);
            if let Some(m) = self.open(&t.message) {
                complete = Some(m);
            }
        }
        complete.expect("a complete message")
    }
}

fn child_keys(
    prf: PrfAlgorithm,
    sk_d: &[u8],
    shared: Option<&[u8]>,
    ni: &[u8],
    nr: &[u8],
    encr: EncrAlgorithm,
) -> (Vec<u8>, Vec<u8>) {
    let keymat = crypto::child_keymat(prf, sk_d, shared, ni, nr, 2 * encr.keymat_len());
    let (i, r) = keymat.split_at(encr.keymat_len());
    (i.to_vec(), r.to_vec())
}

/// Runs IKE_SA_INIT and IKE_AUTH to an established session; returns the initiator and
/// the responder's CHILD SA.
fn establish(s: &mut Setup, encr: EncrAlgorithm, fake_nat: bool, fragment_size: Option<usize>) -> (Initiator, ChildSa) {
    let ke = KeyExchange::generate(DhGroup::Ecp256).unwrap();
    let (mut i, request) = Initiator::init_request(encr, &[DhGroup::Ecp256, DhGroup::Curve25519], &ke, fake_nat);
    s.responder.handle_datagram(s.now, server_addr(), client_addr(), &request).unwrap();
    let (t, e) = drain(&mut s.responder);
    assert!(e.is_empty());
    assert_eq!(t.len(), 1);
    let init_response = i.finish_init(&ke, &t[0].message);
    // NAT-D hashes of the response use the real SPIr.
    let nat_src = message::find_notify(&init_response.payloads, notify::NAT_DETECTION_SOURCE_IP).unwrap();
    assert_eq!(nat_src.data, nat_hash(&i.spi_i, &i.spi_r, server_addr()));
    assert!(message::find_notify(&init_response.payloads, notify::IKEV2_FRAGMENTATION_SUPPORTED).is_some());
    let Some(Payload::CertReq { data, .. }) =
        init_response.payloads.iter().find(|p| matches!(p, Payload::CertReq { .. }))
    else {
        panic!("CERTREQ expected")
    };
    assert_eq!(data, &auth::spki_sha1(&s.client_cert).unwrap().to_vec());

    // IKE_AUTH: signed with the hash algorithms the responder announced.
    let idi = Identification { id_type: message::id_type::FQDN, data: CLIENT.as_bytes().to_vec() };
    let keys = i.keys.clone().unwrap();
    let octets = [&i.request[..], &i.nr, &i.suite.prf.prf(&keys.sk_pi, &[&idi.body()])].concat();
    let (method, auth_data) = s.client_key.sign(&octets, &[2, 3, 4]).unwrap();
    let payloads = vec![
        Payload::IdI(idi.clone()),
        Payload::Cert { encoding: CERT_X509_SIGNATURE, data: s.client_cert.clone() },
        Payload::Auth { method, data: auth_data },
        Payload::Cp(Configuration {
            cfg_type: cfg_type::REQUEST,
            attributes: vec![(cfg_attr::INTERNAL_IP4_ADDRESS, vec![]), (cfg_attr::INTERNAL_IP4_DNS, vec![])],
        }),
        Payload::Sa(vec![esp_proposal(i.esp_spi, EncrAlgorithm::AesGcm16_256, None)]),
        Payload::TsI(everything()),
        Payload::TsR(everything()),
        Payload::Notify(Notify::new(notify::INITIAL_CONTACT, Vec::new())),
    ];
    // Clients float to port 4500 for IKE_AUTH.
    i.local = "198.51.100.7:4500".parse().unwrap();
    let auth_request = i.request(exchange::IKE_AUTH, &payloads, fragment_size);
    if fragment_size.is_some() {
        assert!(auth_request.len() > 1, "the certificate makes IKE_AUTH span fragments");
    }
    let server_nat_t: SocketAddr = "192.0.2.1:4500".parse().unwrap();
    for datagram in &auth_request {
        s.responder.handle_datagram(s.now, server_nat_t, i.local, datagram).unwrap();
    }
    let (t, e) = drain(&mut s.responder);
    assert!(t.is_empty(), "the exchange is parked until the gateway decides");
    let [Event::AuthRequest { session, request }] = &e[..] else { panic!("AuthRequest expected, got {e:?}") };
    assert_eq!(request.identity, idi);
    assert!(request.wants_ipv4);
    assert!(request.initial_contact);
    assert!(request.certificate_subject.as_ref().unwrap().contains("rcgen"), "{request:?}");
    assert_eq!(request.eap_identity, None);
    // A retransmitted IKE_AUTH while parked is ignored.
    assert!(s.responder.handle_datagram(s.now, server_nat_t, i.local, &auth_request[0]).is_err());
    s.responder.authorize(s.now, *session, Authorization::Accept(grant()));
    let (t, e) = drain(&mut s.responder);
    // The reply goes back where the request came from.
    assert!(t.iter().all(|t| (t.local, t.remote) == (server_nat_t, i.local)));
    let (header, payloads) = i.open_all(&t);
    assert_eq!(header.message_id, 1);
    assert!(header.is_response());

    // Verify the responder's AUTH over its octets with its certificate.
    let idr = payloads.iter().find_map(|p| if let Payload::IdR(id) = p { Some(id.clone()) } else { None }).unwrap();
    assert_eq!(idr.data, SERVER.as_bytes());
    let cert = payloads
        .iter()
        .find_map(|p| if let Payload::Cert { data, .. } = p { Some(data.clone()) } else { None })
        .unwrap();
    assert_eq!(cert, s.server_cert);
    let (method, data) = payloads
        .iter()
        .find_map(|p| if let Payload::Auth { method, data } = p { Some((*method, data.clone())) } else { None })
        .unwrap();
    assert_eq!(method, auth::method::DIGITAL_SIGNATURE, "RFC 7427 was announced by both sides");
    let octets = [&i.response[..], &i.ni, &i.suite.prf.prf(&keys.sk_pr, &[&idr.body()])].concat();
    auth::verify_signature(&cert, method, &data, &octets).unwrap();
    // CP reply: address, DNS, split-tunnel subnet.
    let cp = payloads.iter().find_map(|p| if let Payload::Cp(c) = p { Some(c.clone()) } else { None }).unwrap();
    assert_eq!(cp.cfg_type, cfg_type::REPLY);
    assert_eq!(
        cp.attributes,
        vec![
            (cfg_attr::INTERNAL_IP4_ADDRESS, vec![10, 9, 0, 7]),
            (cfg_attr::INTERNAL_IP4_DNS, vec![10, 1, 0, 53]),
            (cfg_attr::INTERNAL_IP4_SUBNET, vec![10, 1, 0, 0, 255, 255, 0, 0]),
        ]
    );
    // Narrowed selectors.
    let tsi = payloads.iter().find_map(|p| if let Payload::TsI(t) = p { Some(t.clone()) } else { None }).unwrap();
    let tsr = payloads.iter().find_map(|p| if let Payload::TsR(t) = p { Some(t.clone()) } else { None }).unwrap();
    assert_eq!(tsi, vec![ts::host("10.9.0.7".parse().unwrap())]);
    assert_eq!(tsr, vec![ts::from_net("10.1.0.0/16".parse().unwrap())]);
    let sa = payloads.iter().find_map(|p| if let Payload::Sa(s) = p { Some(s.clone()) } else { None }).unwrap();
    let responder_spi = u32::from_be_bytes(sa[0].spi[..].try_into().unwrap());

    // Events: IKE SA, then CHILD SA with keys equal to the initiator's.
    let [Event::IkeSaEstablished { identity, .. }, Event::ChildSaEstablished(child)] = &e[..] else {
        panic!("established events expected, got {e:?}")
    };
    assert_eq!(identity, &idi);
    let (encr_i, encr_r) = child_keys(i.suite.prf, &keys.sk_d, None, &i.ni, &i.nr, EncrAlgorithm::AesGcm16_256);
    assert_eq!(child.inbound_key.0, encr_i, "the responder decrypts with the initiator's keys");
    assert_eq!(child.outbound_key.0, encr_r);
    assert_eq!(child.inbound_spi, responder_spi);
    assert_eq!(child.outbound_spi, i.esp_spi);
    assert_eq!(child.algorithm, EncrAlgorithm::AesGcm16_256);
    assert_eq!(child.virtual_ipv4, Some(Ipv4Addr::new(10, 9, 0, 7)));
    assert_eq!(child.remote, i.local);
    assert_eq!(child.udp_encapsulation, fake_nat);
    assert_eq!((child.remote_ts.clone(), child.local_ts.clone()), (tsi, tsr));

    // A retransmitted IKE_AUTH gets the cached response, byte for byte.
    s.responder.handle_datagram(s.now, server_nat_t, i.local, &auth_request[0]).unwrap();
    let (again, _) = drain(&mut s.responder);
    assert_eq!(again.iter().map(|t| &t.message).collect::<Vec<_>>(), t.iter().map(|t| &t.message).collect::<Vec<_>>());
    (i, child.clone())
}

fn nat_t() -> SocketAddr {
    "192.0.2.1:4500".parse().unwrap()
}

#[test]
fn spi_tag_names_the_responder_that_owns_an_sa() {
    let mut s = setup_with(&rcgen::PKCS_ECDSA_P256_SHA256, &rcgen::PKCS_ECDSA_P256_SHA256, |c| c.spi_tag = Some(7));
    let (mut i, child) = establish(&mut s, EncrAlgorithm::AesGcm16_256, true, None);
    assert_eq!(i.spi_r[0], 7, "our IKE SPI");
    assert_eq!(child.inbound_spi >> 24, 7, "our ESP SPI");
    // A new IKE_SA_INIT has no owner yet; everything after it names ours, also when we
    // are the one asking (our requests carry the peer's SPI as the initiator's).
    assert_eq!(Responder::our_spi(&i.request), None);
    let request = i.request(exchange::INFORMATIONAL, &[], None).remove(0);
    assert_eq!(Responder::our_spi(&request), Some(i.spi_r));
    let mut ours = request.clone();
    ours[19] &= !flags::INITIATOR;
    assert_eq!(Responder::our_spi(&ours).map(|spi| spi[..] == i.spi_i[..]), Some(true));
    assert_eq!(Responder::our_spi(&request[..20]), None);
}

#[test]
fn rsa_certificates_with_fragmentation_establish_a_child_sa() {
    let mut s = setup(&rcgen::PKCS_RSA_SHA256, &rcgen::PKCS_RSA_SHA256);
    establish(&mut s, EncrAlgorithm::AesGcm16_256, true, Some(500));
}

#[test]
fn ecdsa_certificates_with_aes_cbc_establish_a_child_sa() {
    let mut s = setup(&rcgen::PKCS_ECDSA_P256_SHA256, &rcgen::PKCS_ECDSA_P384_SHA384);
    establish(&mut s, EncrAlgorithm::AesCbc256, false, None);
}

#[test]
fn chacha20_ike_sa_with_rsa_server_and_ecdsa_client() {
    let mut s = setup(&rcgen::PKCS_RSA_SHA256, &rcgen::PKCS_ECDSA_P256_SHA256);
    establish(&mut s, EncrAlgorithm::ChaCha20Poly1305, false, None);
}

#[test]
fn invalid_ke_cookie_and_no_proposal() {
    let mut s = setup(&rcgen::PKCS_ECDSA_P256_SHA256, &rcgen::PKCS_ECDSA_P256_SHA256);
    // KE for P-256 but only P-384 offered: the responder asks for group 20.
    let ke = KeyExchange::generate(DhGroup::Ecp256).unwrap();
    let (_, request) = Initiator::init_request(EncrAlgorithm::AesGcm16_128, &[DhGroup::Ecp384], &ke, false);
    s.responder.handle_datagram(s.now, server_addr(), client_addr(), &request).unwrap();
    let (t, _) = drain(&mut s.responder);
    let reply = Message::parse(&t[0].message).unwrap();
    assert_eq!(reply.payloads, vec![Payload::Notify(Notify::new(notify::INVALID_KE_PAYLOAD, vec![0, 20]))]);
    assert_eq!(reply.header.spi_r, [0; 8]);
    assert_eq!(s.responder.session_count(), 0, "no state for a refused IKE_SA_INIT");
    // Modp1024 (group 2) is not configured by default.
    let ke2 = KeyExchange::generate(DhGroup::Modp1024).unwrap();
    let (_, request) = Initiator::init_request(EncrAlgorithm::AesCbc128, &[DhGroup::Modp1024], &ke2, false);
    assert!(s.responder.handle_datagram(s.now, server_addr(), client_addr(), &request).is_err());
    let (t, _) = drain(&mut s.responder);
    assert_eq!(
        Message::parse(&t[0].message).unwrap().payloads,
        vec![Payload::Notify(Notify::new(notify::NO_PROPOSAL_CHOSEN, vec![]))]
    );

    // Cookies once half-open SAs reach the threshold (0 here: always).
    let (server_cert, server_key) = make_cert(SERVER, &rcgen::PKCS_ECDSA_P256_SHA256);
    let mut config = ResponderConfig::new(
        Arc::new(Credential::new(vec![server_cert], &server_key).unwrap()),
        Arc::new(Pinned(Vec::new())),
    );
    config.cookie_threshold = 0;
    let mut responder = Responder::new(Arc::new(config));
    let (_, request) = Initiator::init_request(EncrAlgorithm::AesGcm16_128, &[DhGroup::Ecp256], &ke, false);
    responder.handle_datagram(s.now, server_addr(), client_addr(), &request).unwrap();
    let (t, _) = drain(&mut responder);
    let reply = Message::parse(&t[0].message).unwrap();
    let [Payload::Notify(cookie)] = &reply.payloads[..] else { panic!("COOKIE expected") };
    assert_eq!(cookie.notify_type, notify::COOKIE);
    assert_eq!(responder.session_count(), 0);
    // The retry carries the cookie first and is answered in full.
    let mut retry = Message::parse(&request).unwrap();
    retry.payloads.insert(0, Payload::Notify(cookie.clone()));
    responder.handle_datagram(s.now, server_addr(), client_addr(), &retry.encode()).unwrap();
    let (t, _) = drain(&mut responder);
    assert!(Message::parse(&t[0].message).unwrap().payloads.iter().any(|p| matches!(p, Payload::Ke { .. })));
    assert_eq!(responder.session_count(), 1);
    // A cookie made before one rotation still counts; before two, it does not.
    let cookie_for_spi = |responder: &mut Responder, spi: u8| {
        let mut m = Message::parse(&request).unwrap();
        m.header.spi_i = [spi; 8];
        responder.handle_datagram(s.now, server_addr(), client_addr(), &m.encode()).unwrap();
        let (t, _) = drain(responder);
        let [Payload::Notify(cookie)] = &Message::parse(&t[0].message).unwrap().payloads[..] else { panic!() };
        m.payloads.insert(0, Payload::Notify(cookie.clone()));
        m.encode()
    };
    let (retry_a, retry_b) = (cookie_for_spi(&mut responder, 8), cookie_for_spi(&mut responder, 7));
    responder.rotate_cookie_secret();
    responder.handle_datagram(s.now, server_addr(), client_addr(), &retry_a).unwrap();
    assert_eq!(responder.session_count(), 2, "one rotation ago: accepted");
    responder.rotate_cookie_secret();
    responder.handle_datagram(s.now, server_addr(), client_addr(), &retry_b).unwrap();
    assert_eq!(responder.session_count(), 2, "two rotations ago: refused");
    drain(&mut responder);
    // A wrong cookie gets a fresh COOKIE, not an SA.
    let mut forged = Message::parse(&request).unwrap();
    forged.header.spi_i = [9; 8];
    forged.payloads.insert(0, Payload::Notify(Notify::new(notify::COOKIE, vec![1; 16])));
    responder.handle_datagram(s.now, server_addr(), client_addr(), &forged.encode()).unwrap();
    assert_eq!(responder.session_count(), 2);
}

#[test]
fn unknown_certificate_is_refused_and_reported() {
    let mut s = setup(&rcgen::PKCS_ECDSA_P256_SHA256, &rcgen::PKCS_ECDSA_P256_SHA256);
    // An initiator with another certificate for the same name.
    let (other_cert, other_key) = make_cert(CLIENT, &rcgen::PKCS_ECDSA_P256_SHA256);
    s.client_cert = other_cert;
    s.client_key = SigningKey::from_pkcs8(&other_key).unwrap();
    let ke = KeyExchange::generate(DhGroup::Ecp256).unwrap();
    let (mut i, request) = Initiator::init_request(EncrAlgorithm::AesGcm16_256, &[DhGroup::Ecp256], &ke, false);
    s.responder.handle_datagram(s.now, server_addr(), client_addr(), &request).unwrap();
    let (t, _) = drain(&mut s.responder);
    i.finish_init(&ke, &t[0].message);
    let idi = Identification { id_type: message::id_type::FQDN, data: CLIENT.as_bytes().to_vec() };
    let payloads = vec![
        Payload::IdI(idi),
        Payload::Cert { encoding: CERT_X509_SIGNATURE, data: s.client_cert.clone() },
        Payload::Auth { method: 9, data: vec![0; 64] },
        Payload::Sa(vec![esp_proposal(1000, EncrAlgorithm::AesGcm16_256, None)]),
        Payload::TsI(everything()),
        Payload::TsR(everything()),
    ];
    for d in i.request(exchange::IKE_AUTH, &payloads, None) {
        assert!(s.responder.handle_datagram(s.now, server_addr(), client_addr(), &d).is_err());
    }
    let (t, e) = drain(&mut s.responder);
    let (_, reply) = i.open_all(&t);
    assert_eq!(reply, vec![Payload::Notify(Notify::new(notify::AUTHENTICATION_FAILED, vec![]))]);
    // The driver never heard of this session (no AuthRequest), so no SessionClosed: only
    // the refusal, for its log.
    let [Event::AuthenticationFailed { remote, reason }] = &e[..] else { panic!("{e:?}") };
    assert_eq!(*remote, client_addr());
    assert!(reason.starts_with("certificate of alice.example.test refused"), "{reason}");
    assert_eq!(s.responder.session_count(), 0);
}

#[test]
fn gateway_refusal_closes_the_session() {
    let mut s = setup(&rcgen::PKCS_ECDSA_P256_SHA256, &rcgen::PKCS_ECDSA_P256_SHA256);
    let ke = KeyExchange::generate(DhGroup::Ecp256).unwrap();
    let (mut i, request) = Initiator::init_request(EncrAlgorithm::AesGcm16_256, &[DhGroup::Ecp256], &ke, false);
    s.responder.handle_datagram(s.now, server_addr(), client_addr(), &request).unwrap();
    let (t, _) = drain(&mut s.responder);
    i.finish_init(&ke, &t[0].message);
    let idi = Identification { id_type: message::id_type::FQDN, data: CLIENT.as_bytes().to_vec() };
    let keys = i.keys.clone().unwrap();
    let octets = [&i.request[..], &i.nr, &i.suite.prf.prf(&keys.sk_pi, &[&idi.body()])].concat();
    let (method, data) = s.client_key.sign(&octets, &[]).unwrap();
    assert_eq!(method, auth::method::ECDSA_SHA256_P256, "raw r||s without RFC 7427");
    let payloads = vec![
        Payload::IdI(idi),
        Payload::Cert { encoding: CERT_X509_SIGNATURE, data: s.client_cert.clone() },
        Payload::Auth { method, data },
        Payload::Sa(vec![esp_proposal(1000, EncrAlgorithm::AesGcm16_256, None)]),
        Payload::TsI(everything()),
        Payload::TsR(everything()),
    ];
    for d in i.request(exchange::IKE_AUTH, &payloads, None) {
        s.responder.handle_datagram(s.now, server_addr(), client_addr(), &d).unwrap();
    }
    let (_, e) = drain(&mut s.responder);
    let [Event::AuthRequest { session, request }] = &e[..] else { panic!("{e:?}") };
    assert!(!request.wants_ipv4);
    s.responder.authorize(s.now, *session, Authorization::Reject);
    let (t, e) = drain(&mut s.responder);
    assert_eq!(i.open_all(&t).1, vec![Payload::Notify(Notify::new(notify::AUTHENTICATION_FAILED, vec![]))]);
    assert!(matches!(&e[..], [Event::SessionClosed { reason: CloseReason::AuthenticationFailed(_), .. }]), "{e:?}");
}

/// The initiator rekeys the CHILD SA with PFS, deletes the old one, rekeys the IKE SA,
/// checks liveness on the new IKE SA and deletes the old one.
#[test]
fn initiator_rekeys_child_and_ike_sa() {
    let mut s = setup(&rcgen::PKCS_ECDSA_P256_SHA256, &rcgen::PKCS_ECDSA_P256_SHA256);
    let (mut i, child) = establish(&mut s, EncrAlgorithm::AesGcm16_128, true, None);
    let session = child.session;

    // CHILD rekey with PFS (curve25519).
    let ke = KeyExchange::generate(DhGroup::Curve25519).unwrap();
    let new_spi = 0xc1c1_0002;
    let ni = vec![0x22; 32];
    let payloads = vec![
        Payload::Notify(Notify {
            protocol: protocol::ESP,
            spi: i.esp_spi.to_be_bytes().to_vec(),
            notify_type: notify::REKEY_SA,
            data: vec![],
        }),
        Payload::Sa(vec![esp_proposal(new_spi, EncrAlgorithm::ChaCha20Poly1305, Some(DhGroup::Curve25519))]),
        Payload::Nonce(ni.clone()),
        Payload::Ke { group: 31, data: ke.public_value().to_vec() },
        Payload::TsI(everything()),
        Payload::TsR(everything()),
    ];
    for d in i.request(exchange::CREATE_CHILD_SA, &payloads, None) {
        s.responder.handle_datagram(s.now, nat_t(), i.local, &d).unwrap();
    }
    let (t, e) = drain(&mut s.responder);
    let (_, reply) = i.open_all(&t);
    let nr = reply.iter().find_map(|p| if let Payload::Nonce(n) = p { Some(n.clone()) } else { None }).unwrap();
    let Some(Payload::Ke { data: ker, .. }) = reply.iter().find(|p| matches!(p, Payload::Ke { .. })) else { panic!() };
    let shared = ke.agree(ker).unwrap();
    let keys = i.keys.clone().unwrap();
    let (encr_i, encr_r) =
        child_keys(i.suite.prf, &keys.sk_d, Some(&shared), &ni, &nr, EncrAlgorithm::ChaCha20Poly1305);
    let [Event::ChildSaRekeyed { old_inbound_spi, new }] = &e[..] else { panic!("{e:?}") };
    assert_eq!(*old_inbound_spi, child.inbound_spi);
    assert_eq!((&new.inbound_key.0, &new.outbound_key.0), (&encr_i, &encr_r));
    assert_eq!(new.outbound_spi, new_spi);
    assert_eq!(new.algorithm, EncrAlgorithm::ChaCha20Poly1305);
    assert_eq!(new.remote_ts, child.remote_ts, "a rekey keeps the selectors");

    // Delete the old CHILD SA: the responder deletes its half too.
    let delete = Delete { protocol: protocol::ESP, spi_size: 4, spis: vec![i.esp_spi.to_be_bytes().to_vec()] };
    for d in i.request(exchange::INFORMATIONAL, &[Payload::Delete(delete)], None) {
        s.responder.handle_datagram(s.now, nat_t(), i.local, &d).unwrap();
    }
    let (t, e) = drain(&mut s.responder);
    let (_, reply) = i.open_all(&t);
    assert_eq!(
        reply,
        vec![Payload::Delete(Delete {
            protocol: protocol::ESP,
            spi_size: 4,
            spis: vec![child.inbound_spi.to_be_bytes().to_vec()]
        })]
    );
    assert_eq!(
        e,
        vec![Event::ChildSaDeleted { session, inbound_spi: child.inbound_spi, outbound_spi: child.outbound_spi }]
    );

    // IKE SA rekey.
    let ke = KeyExchange::generate(DhGroup::Ecp256).unwrap();
    let new_spi_i = [0x77; 8];
    let ni = vec![0x33; 32];
    let mut proposal = ike_proposal(i.suite.encr, &[DhGroup::Ecp256]);
    proposal.spi = new_spi_i.to_vec();
    let payloads = vec![
        Payload::Sa(vec![proposal]),
        Payload::Nonce(ni.clone()),
        Payload::Ke { group: 19, data: ke.public_value().to_vec() },
    ];
    for d in i.request(exchange::CREATE_CHILD_SA, &payloads, None) {
        s.responder.handle_datagram(s.now, nat_t(), i.local, &d).unwrap();
    }
    let (t, e) = drain(&mut s.responder);
    assert_eq!(e, vec![Event::IkeSaRekeyed { session }]);
    let (_, reply) = i.open_all(&t);
    let sa = reply.iter().find_map(|p| if let Payload::Sa(s) = p { Some(s.clone()) } else { None }).unwrap();
    let new_spi_r: [u8; 8] = sa[0].spi[..].try_into().unwrap();
    let nr = reply.iter().find_map(|p| if let Payload::Nonce(n) = p { Some(n.clone()) } else { None }).unwrap();
    let Some(Payload::Ke { data: ker, .. }) = reply.iter().find(|p| matches!(p, Payload::Ke { .. })) else { panic!() };
    let shared = ke.agree(ker).unwrap();
    let seed = crypto::rekey_skeyseed(i.suite.prf, &keys.sk_d, &shared, &ni, &nr);
    let new_keys = crypto::derive_ike_keys(i.suite, &seed, &ni, &nr, &new_spi_i, &new_spi_r);
    let mut new_sa = Initiator {
        spi_i: new_spi_i,
        spi_r: new_spi_r,
        cipher: Some(SkCipher::new(i.suite, &new_keys, true)),
        keys: Some(new_keys),
        next_id: 0,
        reassembly: Reassembly::default(),
        ..i.clone_shallow()
    };
    // Liveness on the new SA (message ID 0).
    for d in new_sa.request(exchange::INFORMATIONAL, &[], None) {
        s.responder.handle_datagram(s.now, nat_t(), i.local, &d).unwrap();
    }
    let (t, _) = drain(&mut s.responder);
    let (header, reply) = new_sa.open_all(&t);
    assert_eq!((header.message_id, reply.len()), (0, 0));
    // Delete the old IKE SA: answered on the old SA, the session lives on.
    let delete = Delete { protocol: protocol::IKE, spi_size: 0, spis: vec![] };
    for d in i.request(exchange::INFORMATIONAL, &[Payload::Delete(delete)], None) {
        s.responder.handle_datagram(s.now, nat_t(), i.local, &d).unwrap();
    }
    let (t, e) = drain(&mut s.responder);
    assert!(e.is_empty(), "{e:?}");
    assert!(i.open_all(&t).1.is_empty());
    assert_eq!(s.responder.session_count(), 1);
    // The old SPI is gone.
    let stale = i.request(exchange::INFORMATIONAL, &[], None);
    assert!(s.responder.handle_datagram(s.now, nat_t(), i.local, &stale[0]).is_err());
}

impl Initiator {
    /// A copy of the addressing and exchange data, for building the rekeyed SA.
    fn clone_shallow(&self) -> Initiator {
        Initiator {
            spi_i: self.spi_i,
            spi_r: self.spi_r,
            ni: self.ni.clone(),
            nr: self.nr.clone(),
            request: self.request.clone(),
            response: self.response.clone(),
            suite: self.suite,
            keys: None,
            cipher: None,
            next_id: self.next_id,
            peer_next_id: self.peer_next_id,
            reassembly: Reassembly::default(),
            local: self.local,
            esp_spi: self.esp_spi,
        }
    }

    /// Answers a CREATE_CHILD_SA rekey request from the responder, with PFS or without;
    /// returns our new inbound SPI, the nonces, the PFS secret and the response datagrams.
    fn answer_child_rekey(&mut self, datagram: &[u8], rekeyed_spi: u32, pfs: bool) -> ChildRekeyAnswer {
        let (header, payloads) = self.open(datagram).unwrap();
        assert!(!header.is_response());
        assert_eq!(header.exchange, exchange::CREATE_CHILD_SA);
        assert_eq!(header.message_id, self.peer_next_id);
        self.peer_next_id += 1;
        let rekey = message::find_notify(&payloads, notify::REKEY_SA).unwrap();
        assert_eq!(rekey.spi, rekeyed_spi.to_be_bytes(), "REKEY_SA names the SA by the sender's inbound SPI");
        let sa = payloads.iter().find_map(|p| if let Payload::Sa(s) = p { Some(s.clone()) } else { None }).unwrap();
        let ni = payloads.iter().find_map(|p| if let Payload::Nonce(n) = p { Some(n.clone()) } else { None }).unwrap();
        let (group, kei) =
            find(&payloads, |p| if let Payload::Ke { group, data } = p { Some((*group, data.clone())) } else { None });
        let ke_group = pfs.then_some(group);
        let choice =
            proposal::choose_esp(&sa, &proposal::Algorithms::default(), ChildContext::CreateChildSa { ke_group })
                .unwrap();
        assert_eq!(choice.number, if pfs { 1 } else { 2 }, "PFS offered first, then without");
        let our_spi = 0xc1c1_0042;
        let nr = vec![0x44; 32];
        let mut reply = vec![Payload::Sa(vec![choice.reply(our_spi)]), Payload::Nonce(nr.clone())];
        let mut shared = None;
        if pfs {
            let ke = KeyExchange::generate(DhGroup::from_id(group).unwrap()).unwrap();
            shared = Some(ke.agree(&kei).unwrap());
            reply.push(Payload::Ke { group, data: ke.public_value().to_vec() });
        }
        reply.push(payloads.iter().find(|p| matches!(p, Payload::TsI(_))).unwrap().clone());
        reply.push(payloads.iter().find(|p| matches!(p, Payload::TsR(_))).unwrap().clone());
        let header = self.header(exchange::CREATE_CHILD_SA, header.message_id, true);
        let datagrams = seal_message(self.cipher.as_mut().unwrap(), header, &reply, None);
        ChildRekeyAnswer { our_spi, ni, nr, shared, datagrams }
    }
}

struct ChildRekeyAnswer {
    our_spi: u32,
    ni: Vec<u8>,
    nr: Vec<u8>,
    shared: Option<Vec<u8>>,
    datagrams: Vec<Vec<u8>>,
}

#[test]
fn responder_rekeys_a_child_sa_with_and_without_pfs() {
    for pfs in [false, true] {
        responder_rekeys_a_child_sa(pfs);
    }
}

fn responder_rekeys_a_child_sa(pfs: bool) {
    let mut s = setup(&rcgen::PKCS_ECDSA_P256_SHA256, &rcgen::PKCS_ECDSA_P256_SHA256);
    let (mut i, child) = establish(&mut s, EncrAlgorithm::AesGcm16_256, false, None);
    assert!(s.responder.rekey_child(s.now, child.session, child.inbound_spi));
    assert!(!s.responder.rekey_child(s.now, child.session, child.inbound_spi), "one request at a time");
    let (t, _) = drain(&mut s.responder);
    // The peer rekeying the same CHILD SA meanwhile is told to retry later.
    let collision = [
        Payload::Notify(Notify {
            protocol: protocol::ESP,
            spi: i.esp_spi.to_be_bytes().to_vec(),
            notify_type: notify::REKEY_SA,
            data: vec![],
        }),
        Payload::Sa(vec![esp_proposal(0xc1c1_0077, EncrAlgorithm::AesGcm16_256, None)]),
        Payload::Nonce(vec![0x55; 32]),
        Payload::TsI(everything()),
        Payload::TsR(everything()),
    ];
    for d in i.request(exchange::CREATE_CHILD_SA, &collision, None) {
        assert!(s.responder.handle_datagram(s.now, nat_t(), i.local, &d).is_err());
    }
    let (refusal, e) = drain(&mut s.responder);
    assert!(e.is_empty());
    assert_eq!(i.open_all(&refusal).1, vec![Payload::Notify(Notify::new(notify::TEMPORARY_FAILURE, vec![]))]);
    let ChildRekeyAnswer { our_spi, ni, nr, shared, datagrams } =
        i.answer_child_rekey(&t[0].message, child.inbound_spi, pfs);
    for d in datagrams {
        s.responder.handle_datagram(s.now, nat_t(), i.local, &d).unwrap();
    }
    let (t, e) = drain(&mut s.responder);
    let keys = i.keys.clone().unwrap();
    let (encr_i, encr_r) =
        child_keys(i.suite.prf, &keys.sk_d, shared.as_deref(), &ni, &nr, EncrAlgorithm::AesGcm16_256);
    let [Event::ChildSaRekeyed { old_inbound_spi, new }, Event::ChildSaDeleted { inbound_spi, .. }] = &e[..] else {
        panic!("{e:?}")
    };
    assert_eq!((*old_inbound_spi, *inbound_spi), (child.inbound_spi, child.inbound_spi));
    // The responder initiated this exchange: it sends with the "i" keys.
    assert_eq!((&new.outbound_key.0, &new.inbound_key.0), (&encr_i, &encr_r));
    assert_eq!(new.outbound_spi, our_spi);
    // Then it deletes the old SA.
    let (header, payloads) = i.open(&t[0].message).unwrap();
    assert_eq!(header.exchange, exchange::INFORMATIONAL);
    assert_eq!(
        payloads,
        vec![Payload::Delete(Delete {
            protocol: protocol::ESP,
            spi_size: 4,
            spis: vec![child.inbound_spi.to_be_bytes().to_vec()]
        })]
    );
}

#[test]
fn dpd_retransmits_then_gives_up_and_frees_the_session() {
    let mut s = setup(&rcgen::PKCS_ECDSA_P256_SHA256, &rcgen::PKCS_ECDSA_P256_SHA256);
    let (mut i, child) = establish(&mut s, EncrAlgorithm::AesGcm16_256, false, None);
    let timing = super::responder::Timing::default();
    // ESP activity postpones DPD: the timer fires as first planned, sends nothing and
    // moves to an interval after the activity.
    s.responder.note_activity(child.session, s.now + Duration::from_secs(10));
    let planned = s.responder.poll_timeout().unwrap();
    assert_eq!(planned, s.now + timing.dpd_interval);
    s.responder.handle_timeout(planned);
    assert!(drain(&mut s.responder).0.is_empty());
    assert_eq!(s.responder.poll_timeout(), Some(s.now + Duration::from_secs(10) + timing.dpd_interval));
    let mut now = s.responder.poll_timeout().unwrap();
    s.responder.handle_timeout(now);
    let (t, _) = drain(&mut s.responder);
    let (header, payloads) = i.open(&t[0].message).unwrap();
    assert_eq!((header.exchange, header.message_id, payloads.len()), (exchange::INFORMATIONAL, 0, 0));
    // Answering it keeps the session; the next DPD comes an interval later.
    let header = i.header(exchange::INFORMATIONAL, 0, true);
    let answer = seal_message(i.cipher.as_mut().unwrap(), header, &[], None);
    s.responder.handle_datagram(now, nat_t(), i.local, &answer[0]).unwrap();
    assert_eq!(s.responder.poll_timeout(), Some(now + timing.dpd_interval));
    // Now the peer goes silent: retransmissions with growing intervals, then give-up.
    now += timing.dpd_interval;
    s.responder.handle_timeout(now);
    let (first, _) = drain(&mut s.responder);
    assert_eq!(first.len(), 1);
    let mut intervals = Vec::new();
    loop {
        let next = s.responder.poll_timeout().unwrap();
        intervals.push(next - now);
        now = next;
        s.responder.handle_timeout(now);
        let (t, e) = drain(&mut s.responder);
        if !e.is_empty() {
            assert_eq!(
                e,
                vec![
                    Event::ChildSaDeleted {
                        session: child.session,
                        inbound_spi: child.inbound_spi,
                        outbound_spi: child.outbound_spi
                    },
                    Event::SessionClosed { session: child.session, reason: CloseReason::PeerUnresponsive },
                ]
            );
            break;
        }
        assert_eq!(t[0].message, first[0].message, "a retransmission is the same datagram");
    }
    assert_eq!(intervals, [4, 8, 16, 32, 64].map(Duration::from_secs));
    assert_eq!(s.responder.session_count(), 0);
    assert_eq!(s.responder.poll_timeout(), None);
}

#[test]
fn peer_delete_and_half_open_expiry() {
    let mut s = setup(&rcgen::PKCS_ECDSA_P256_SHA256, &rcgen::PKCS_ECDSA_P256_SHA256);
    let (mut i, child) = establish(&mut s, EncrAlgorithm::AesGcm16_256, false, None);
    let delete = Delete { protocol: protocol::IKE, spi_size: 0, spis: vec![] };
    for d in i.request(exchange::INFORMATIONAL, &[Payload::Delete(delete)], None) {
        s.responder.handle_datagram(s.now, nat_t(), i.local, &d).unwrap();
    }
    let (t, e) = drain(&mut s.responder);
    assert!(i.open_all(&t).1.is_empty());
    assert_eq!(
        e,
        vec![
            Event::ChildSaDeleted {
                session: child.session,
                inbound_spi: child.inbound_spi,
                outbound_spi: child.outbound_spi
            },
            Event::SessionClosed { session: child.session, reason: CloseReason::PeerDeleted },
        ]
    );
    // A half-open SA disappears silently after its timeout.
    let ke = KeyExchange::generate(DhGroup::Ecp256).unwrap();
    let (_, request) = Initiator::init_request(EncrAlgorithm::AesGcm16_256, &[DhGroup::Ecp256], &ke, false);
    s.responder.handle_datagram(s.now, server_addr(), client_addr(), &request).unwrap();
    // A retransmitted IKE_SA_INIT gets the same response.
    s.responder.handle_datagram(s.now, server_addr(), client_addr(), &request).unwrap();
    let (t, _) = drain(&mut s.responder);
    assert_eq!(t[0].message, t[1].message);
    let deadline = s.responder.poll_timeout().unwrap();
    s.responder.handle_timeout(deadline);
    assert_eq!(s.responder.session_count(), 0);
    assert!(drain(&mut s.responder).1.is_empty());
}

fn find<T>(payloads: &[Payload], f: impl Fn(&Payload) -> Option<T>) -> T {
    payloads.iter().find_map(f).expect("payload present")
}

/// Windows-style EAP: IDi is an address, EAP-Identity first, the authenticator's messages
/// relayed through the driver, both final AUTH payloads keyed with the MSK.
#[test]
fn eap_authentication_relays_messages_and_uses_the_msk() {
    let mut s = setup_with(&rcgen::PKCS_RSA_SHA256, &rcgen::PKCS_ECDSA_P256_SHA256, |c| c.eap = true);
    let ke = KeyExchange::generate(DhGroup::Ecp256).unwrap();
    let (mut i, request) = Initiator::init_request(EncrAlgorithm::AesCbc256, &[DhGroup::Ecp256], &ke, false);
    s.responder.handle_datagram(s.now, server_addr(), client_addr(), &request).unwrap();
    let (t, _) = drain(&mut s.responder);
    i.finish_init(&ke, &t[0].message);
    let keys = i.keys.clone().unwrap();
    let idi = auth::ip_identity("192.168.1.20".parse().unwrap());
    let first = vec![
        Payload::IdI(idi.clone()),
        Payload::Cp(Configuration {
            cfg_type: cfg_type::REQUEST,
            attributes: vec![(cfg_attr::INTERNAL_IP4_ADDRESS, vec![])],
        }),
        Payload::Sa(vec![esp_proposal(i.esp_spi, EncrAlgorithm::AesGcm16_128, None)]),
        Payload::TsI(everything()),
        Payload::TsR(everything()),
    ];
    let exchange_with = |s: &mut Setup, i: &mut Initiator, payloads: &[Payload]| {
        for d in i.request(exchange::IKE_AUTH, payloads, None) {
            s.responder.handle_datagram(s.now, server_addr(), client_addr(), &d).unwrap();
        }
        drain(&mut s.responder)
    };
    let (t, e) = exchange_with(&mut s, &mut i, &first);
    assert!(e.is_empty());
    let (_, reply) = i.open_all(&t);
    // Our certificate AUTH, then EAP Request/Identity.
    let idr = find(&reply, |p| if let Payload::IdR(id) = p { Some(id.clone()) } else { None });
    let (method, data) =
        find(&reply, |p| if let Payload::Auth { method, data } = p { Some((*method, data.clone())) } else { None });
    let octets = [&i.response[..], &i.ni, &i.suite.prf.prf(&keys.sk_pr, &[&idr.body()])].concat();
    auth::verify_signature(&s.server_cert, method, &data, &octets).unwrap();
    assert_eq!(find(&reply, |p| if let Payload::Eap(e) = p { Some(e.clone()) } else { None }), vec![1, 1, 0, 5, 1]);

    // Response/Identity: relayed to the driver with the identity.
    let identity_response = b"\x02\x01\x00\x0a\x01alice".to_vec();
    let (t, e) = exchange_with(&mut s, &mut i, &[Payload::Eap(identity_response.clone())]);
    assert!(t.is_empty(), "parked until the authenticator answers");
    let [Event::EapMessage { session, identity, message, remote }] = &e[..] else { panic!("{e:?}") };
    assert_eq!(*remote, client_addr());
    assert_eq!((identity.as_str(), message), ("alice", &identity_response));
    let session = *session;
    // A method round (bytes stand for an MS-CHAPv2 challenge and response).
    let challenge = vec![1, 2, 0, 6, 26, 1];
    s.responder.eap_reply(s.now, session, super::responder::EapReply::Request(challenge.clone()));
    let (t, _) = drain(&mut s.responder);
    assert_eq!(i.open_all(&t).1, vec![Payload::Eap(challenge)]);
    let (_, e) = exchange_with(&mut s, &mut i, &[Payload::Eap(vec![2, 2, 0, 6, 26, 2])]);
    assert!(matches!(&e[..], [Event::EapMessage { message, .. }] if message == &vec![2, 2, 0, 6, 26, 2]));
    let msk: Vec<u8> = (0..64).collect();
    s.responder.eap_reply(
        s.now,
        session,
        super::responder::EapReply::Success { message: vec![3, 2, 0, 4], msk: msk.clone() },
    );
    let (t, _) = drain(&mut s.responder);
    assert_eq!(i.open_all(&t).1, vec![Payload::Eap(vec![3, 2, 0, 4])]);

    // The final AUTH pair, keyed with the MSK.
    let octets = [&i.request[..], &i.nr, &i.suite.prf.prf(&keys.sk_pi, &[&idi.body()])].concat();
    let mic = auth::shared_key_mic(i.suite.prf, &msk, &octets);
    let (t, e) = exchange_with(&mut s, &mut i, &[Payload::Auth { method: auth::method::SHARED_KEY_MIC, data: mic }]);
    assert!(t.is_empty());
    let [Event::AuthRequest { request, .. }] = &e[..] else { panic!("{e:?}") };
    assert_eq!((request.eap_identity.as_deref(), &request.certificate_subject), (Some("alice"), &None));
    assert_eq!(request.identity, idi);
    s.responder.authorize(s.now, session, Authorization::Accept(grant()));
    let (t, e) = drain(&mut s.responder);
    let (_, reply) = i.open_all(&t);
    let (method, data) =
        find(&reply, |p| if let Payload::Auth { method, data } = p { Some((*method, data.clone())) } else { None });
    let octets = [&i.response[..], &i.ni, &i.suite.prf.prf(&keys.sk_pr, &[&idr.body()])].concat();
    assert_eq!((method, data), (auth::method::SHARED_KEY_MIC, auth::shared_key_mic(i.suite.prf, &msk, &octets)));
    assert!(!reply.iter().any(|p| matches!(p, Payload::Cert { .. } | Payload::IdR(_))), "sent in the first response");
    let [Event::IkeSaEstablished { .. }, Event::ChildSaEstablished(child)] = &e[..] else { panic!("{e:?}") };
    let (encr_i, _) = child_keys(i.suite.prf, &keys.sk_d, None, &i.ni, &i.nr, EncrAlgorithm::AesGcm16_128);
    assert_eq!(child.inbound_key.0, encr_i);
    assert_eq!(child.virtual_ipv4, Some(Ipv4Addr::new(10, 9, 0, 7)));
}

#[test]
fn eap_failure_closes_the_session() {
    let mut s = setup_with(&rcgen::PKCS_ECDSA_P256_SHA256, &rcgen::PKCS_ECDSA_P256_SHA256, |c| c.eap = true);
    let ke = KeyExchange::generate(DhGroup::Curve25519).unwrap();
    let (mut i, request) = Initiator::init_request(EncrAlgorithm::AesGcm16_256, &[DhGroup::Curve25519], &ke, false);
    s.responder.handle_datagram(s.now, server_addr(), client_addr(), &request).unwrap();
    let (t, _) = drain(&mut s.responder);
    i.finish_init(&ke, &t[0].message);
    let first = [
        Payload::IdI(Identification { id_type: message::id_type::RFC822_ADDR, data: b"bob@example.test".to_vec() }),
        Payload::Sa(vec![esp_proposal(i.esp_spi, EncrAlgorithm::AesGcm16_256, None)]),
        Payload::TsI(everything()),
        Payload::TsR(everything()),
    ];
    for d in i.request(exchange::IKE_AUTH, &first, None) {
        s.responder.handle_datagram(s.now, server_addr(), client_addr(), &d).unwrap();
    }
    drain(&mut s.responder);
    for d in i.request(exchange::IKE_AUTH, &[Payload::Eap(b"\x02\x01\x00\x08\x01bob".to_vec())], None) {
        s.responder.handle_datagram(s.now, server_addr(), client_addr(), &d).unwrap();
    }
    let (_, e) = drain(&mut s.responder);
    let [Event::EapMessage { session, .. }] = &e[..] else { panic!("{e:?}") };
    s.responder.eap_reply(s.now, *session, super::responder::EapReply::Failure { message: vec![4, 1, 0, 4] });
    let (t, e) = drain(&mut s.responder);
    assert_eq!(i.open_all(&t).1, vec![Payload::Eap(vec![4, 1, 0, 4])]);
    assert!(matches!(&e[..], [Event::SessionClosed { reason: CloseReason::AuthenticationFailed(_), .. }]), "{e:?}");
    assert_eq!(s.responder.session_count(), 0);
}

/// The gateway rekeys the IKE SA itself (lifetime): it becomes the original initiator of
/// the new SA, then deletes the old one; the session and its CHILD SA live on.
#[test]
fn responder_rekeys_the_ike_sa() {
    let mut s = setup(&rcgen::PKCS_ECDSA_P256_SHA256, &rcgen::PKCS_ECDSA_P256_SHA256);
    let (mut i, child) = establish(&mut s, EncrAlgorithm::AesGcm16_256, false, None);
    assert!(s.responder.rekey_ike(s.now, child.session));
    assert!(!s.responder.rekey_ike(s.now, child.session), "one at a time");
    let (t, _) = drain(&mut s.responder);
    let (header, payloads) = i.open(&t[0].message).unwrap();
    assert_eq!((header.exchange, header.message_id, header.is_response()), (exchange::CREATE_CHILD_SA, 0, false));
    let sa = find(&payloads, |p| if let Payload::Sa(s) = p { Some(s.clone()) } else { None });
    let gateway_spi: [u8; 8] = sa[0].spi[..].try_into().unwrap();
    let ni = find(&payloads, |p| if let Payload::Nonce(n) = p { Some(n.clone()) } else { None });
    let (group, gateway_ke) =
        find(&payloads, |p| if let Payload::Ke { group, data } = p { Some((*group, data.clone())) } else { None });
    assert_eq!(group, 19, "the same group as the IKE SA");
    let IkeChoiceFor { suite, reply } = choose_for_test(&sa, group);
    // Answer as the responder of this exchange.
    let ke = KeyExchange::generate(DhGroup::Ecp256).unwrap();
    let our_spi = [0x99; 8];
    let nr = vec![0x66; 32];
    let mut reply = reply;
    reply.spi = our_spi.to_vec();
    let answer = vec![
        Payload::Sa(vec![reply]),
        Payload::Nonce(nr.clone()),
        Payload::Ke { group: 19, data: ke.public_value().to_vec() },
    ];
    let h = Header { flags: flags::INITIATOR | flags::RESPONSE, ..i.header(exchange::CREATE_CHILD_SA, 0, true) };
    for d in seal_message(i.cipher.as_mut().unwrap(), h, &answer, None) {
        s.responder.handle_datagram(s.now, nat_t(), i.local, &d).unwrap();
    }
    let (t, e) = drain(&mut s.responder);
    assert_eq!(e, vec![Event::IkeSaRekeyed { session: child.session }]);
    // Then the gateway deletes the old IKE SA, on the old SA.
    let (header, payloads) = i.open(&t[0].message).unwrap();
    assert_eq!((header.exchange, header.message_id), (exchange::INFORMATIONAL, 1));
    assert_eq!(payloads, vec![Payload::Delete(Delete { protocol: protocol::IKE, spi_size: 0, spis: vec![] })]);
    let h = Header { flags: flags::INITIATOR | flags::RESPONSE, ..i.header(exchange::INFORMATIONAL, 1, true) };
    for d in seal_message(i.cipher.as_mut().unwrap(), h, &[], None) {
        s.responder.handle_datagram(s.now, nat_t(), i.local, &d).unwrap();
    }
    assert!(drain(&mut s.responder).1.is_empty(), "the session survives its old SA");

    // The new SA: the gateway is its original initiator (SPIi = its SPI).
    let keys = i.keys.clone().unwrap();
    let shared = ke.agree(&gateway_ke).unwrap();
    let seed = crypto::rekey_skeyseed(i.suite.prf, &keys.sk_d, &shared, &ni, &nr);
    let new_keys = crypto::derive_ike_keys(suite, &seed, &ni, &nr, &gateway_spi, &our_spi);
    let mut cipher = SkCipher::new(suite, &new_keys, false);
    let h = Header {
        spi_i: gateway_spi,
        spi_r: our_spi,
        next_payload: 0,
        exchange: exchange::INFORMATIONAL,
        flags: 0,
        message_id: 0,
        length: 0,
    };
    for d in seal_message(&mut cipher, h, &[], None) {
        s.responder.handle_datagram(s.now, nat_t(), i.local, &d).unwrap();
    }
    let (t, _) = drain(&mut s.responder);
    let response = Header::parse(&t[0].message).unwrap();
    assert_eq!(response.flags, flags::INITIATOR | flags::RESPONSE);
    assert_eq!((response.spi_i, response.spi_r), (gateway_spi, our_spi));
    assert_eq!(cipher.open(&t[0].message, 32).unwrap(), Vec::<u8>::new());
    // The old SA is gone.
    let stale = i.request(exchange::INFORMATIONAL, &[], None);
    assert_eq!(
        s.responder.handle_datagram(s.now, nat_t(), i.local, &stale[0]),
        Err(super::responder::Dropped::UnknownSpi)
    );
}

struct IkeChoiceFor {
    suite: IkeSuite,
    reply: Proposal,
}

fn choose_for_test(proposals: &[Proposal], group: u16) -> IkeChoiceFor {
    match proposal::choose_ike(proposals, &proposal::Algorithms::default(), group, None) {
        proposal::IkeChoice::Chosen { suite, proposal, .. } => IkeChoiceFor { suite, reply: proposal },
        other => panic!("{other:?}"),
    }
}
