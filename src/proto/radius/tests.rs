//! The client against in-memory RADIUS servers that answer per the RFCs, on virtual time.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use super::auth::tests::{encrypt_mppe_key, recover_user_password};
use super::auth::{VerifyError, message_authenticator, packet_md5};
use super::packet::{Attribute, Code, Packet, attr, ms};
use super::*;
use crate::crypto::mschapv2;

const SECRET: &[u8] = b"testing123";

fn nas() -> NasInfo {
    NasInfo { identifier: "p2sgw-test".into(), ip_address: None }
}

fn server_config(n: u8) -> ServerConfig {
    ServerConfig {
        auth_address: SocketAddr::from(([127, 0, 0, n], 1812)),
        acct_address: SocketAddr::from(([127, 0, 0, n], 1813)),
        secret: SECRET.to_vec(),
    }
}

/// A RADIUS server as the RFCs describe one: checks the request's Message-Authenticator
/// (and an Accounting-Request's authenticator), knows users by cleartext password, runs
/// a one-time-code challenge for "otp-user" and a two-round EAP exchange, and signs its
/// replies with Message-Authenticator then Response Authenticator.
struct TestServer {
    secret: Vec<u8>,
    users: HashMap<Vec<u8>, &'static str>,
    sign_message_authenticator: bool,
    /// Every request received, decoded.
    received: Vec<Packet>,
}

impl TestServer {
    fn new() -> Self {
        let users = HashMap::from([(b"alice".to_vec(), "wonderland"), (b"User".to_vec(), "clientPass")]);
        TestServer { secret: SECRET.to_vec(), users, sign_message_authenticator: true, received: Vec::new() }
    }

    fn answer(&mut self, datagram: &[u8]) -> Vec<u8> {
        let request = Packet::decode(datagram).expect("the client sends well-formed packets");
        self.check_request_signature(datagram, &request);
        self.received.push(request.clone());
        let (code, attributes) = match request.code {
            Code::AccessRequest => self.access(&request),
            Code::AccountingRequest => (Code::AccountingResponse, vec![]),
            other => panic!("unexpected {other}"),
        };
        self.sign_reply(code, &request, attributes)
    }

    fn check_request_signature(&self, datagram: &[u8], request: &Packet) {
        assert_eq!(request.attributes[0].kind, attr::MESSAGE_AUTHENTICATOR, "Message-Authenticator first");
        let mut zeroed = datagram.to_vec();
        zeroed[22..38].fill(0);
        if request.code == Code::AccountingRequest {
            assert_eq!(packet_md5(&self.secret, datagram, &[0; 16])[..], datagram[4..20], "accounting authenticator");
            zeroed[4..20].fill(0);
        }
        assert_eq!(message_authenticator(&self.secret, &zeroed)[..], datagram[22..38], "request Message-Authenticator");
    }

    fn access(&self, request: &Packet) -> (Code, Vec<Attribute>) {
        let user = request.attribute(attr::USER_NAME).expect("User-Name").to_vec();
        let state = request.attribute(attr::STATE);
        let accept = vec![
            Attribute::ipv4(attr::FRAMED_IP_ADDRESS, Ipv4Addr::new(10, 8, 0, 50)),
            Attribute::new(attr::CLASS, "class-1"),
            Attribute::new(attr::CLASS, "class-2"),
            Attribute::integer(attr::ACCT_INTERIM_INTERVAL, 300),
        ];
        if let Some(hidden) = request.attribute(attr::USER_PASSWORD) {
            let password = recover_user_password(hidden, &self.secret, &request.authenticator);
            if user == b"otp-user" {
                return match (state, password.as_slice()) {
                    (None, b"first-factor") => (
                        Code::AccessChallenge,
                        vec![
                            Attribute::new(attr::REPLY_MESSAGE, "Enter your one-time code"),
                            Attribute::new(attr::STATE, "otp-state-1"),
                        ],
                    ),
                    (Some(b"otp-state-1"), b"123456") => (Code::AccessAccept, accept),
                    _ => (Code::AccessReject, vec![]),
                };
            }
            return match self.users.get(&user) {
                Some(known) if known.as_bytes() == password => (Code::AccessAccept, accept),
                _ => (Code::AccessReject, vec![Attribute::new(attr::REPLY_MESSAGE, "Wrong user name or password")]),
            };
        }
        if let Ok([response]) = request.vendor_attributes(ms::VENDOR_ID, ms::CHAP2_RESPONSE).as_deref() {
            return self.ms_chap_v2(request, &user, response, accept);
        }
        let eap = request.attributes(attr::EAP_MESSAGE).collect::<Vec<_>>().concat();
        match state {
            // Round 1: answer with a 600-byte EAP-Request (split over three attributes).
            None => {
                let mut attributes: Vec<Attribute> =
                    vec![1u8; 600].chunks(253).map(|c| Attribute::new(attr::EAP_MESSAGE, c)).collect();
                attributes.push(Attribute::new(attr::STATE, "eap-round-1"));
                (Code::AccessChallenge, attributes)
            }
            Some(b"eap-round-1") if eap == [2, 1, 0, 4] => {
                (Code::AccessAccept, vec![Attribute::new(attr::EAP_MESSAGE, [3, 1, 0, 4])])
            }
            _ => (Code::AccessReject, vec![Attribute::new(attr::EAP_MESSAGE, [4, 1, 0, 4])]),
        }
    }

    fn ms_chap_v2(
        &self,
        request: &Packet,
        user: &[u8],
        response: &[u8],
        mut accept: Vec<Attribute>,
    ) -> (Code, Vec<Attribute>) {
        let challenge: [u8; 16] =
            request.vendor_attributes(ms::VENDOR_ID, ms::CHAP_CHALLENGE).unwrap()[0].try_into().unwrap();
        let ident = response[0];
        let peer_challenge: [u8; 16] = response[2..18].try_into().unwrap();
        let nt_response: [u8; 24] = response[26..50].try_into().unwrap();
        let hash = mschapv2::nt_password_hash(self.users.get(user).copied().unwrap_or(""));
        if !mschapv2::verify_nt_response(&hash, &challenge, &peer_challenge, user, &nt_response) {
            let mut error = vec![ident];
            error.extend_from_slice(b"E=691 R=0 C=00000000000000000000000000000000 V=3");
            return (Code::AccessReject, vec![Attribute::vendor(ms::VENDOR_ID, ms::CHAP_ERROR, &error)]);
        }
        let mut success = vec![ident];
        let text = mschapv2::generate_authenticator_response(&hash, &nt_response, &peer_challenge, &challenge, user);
        success.extend_from_slice(text.as_bytes());
        let keys = mschapv2::mppe_keys(&hash, &nt_response);
        let ra = &request.authenticator;
        accept.extend([
            Attribute::vendor(ms::VENDOR_ID, ms::CHAP2_SUCCESS, &success),
            Attribute::vendor(
                ms::VENDOR_ID,
                ms::MPPE_SEND_KEY,
                &encrypt_mppe_key(&keys.server_send, [0x80, 1], &self.secret, ra),
            ),
            Attribute::vendor(
                ms::VENDOR_ID,
                ms::MPPE_RECV_KEY,
                &encrypt_mppe_key(&keys.server_receive, [0x80, 2], &self.secret, ra),
            ),
        ]);
        (Code::AccessAccept, accept)
    }

    /// RFC 3579 §3.2 then RFC 2865 §3: the MAC with the request's authenticator in the
    /// header, then the Response Authenticator over the packet holding the MAC.
    fn sign_reply(&self, code: Code, request: &Packet, mut attributes: Vec<Attribute>) -> Vec<u8> {
        if self.sign_message_authenticator {
            attributes.insert(0, Attribute::new(attr::MESSAGE_AUTHENTICATOR, [0; 16]));
        }
        let reply = Packet { code, identifier: request.identifier, authenticator: request.authenticator, attributes };
        let mut bytes = reply.encode().unwrap();
        if self.sign_message_authenticator {
            let mac = message_authenticator(&self.secret, &bytes);
            bytes[22..38].copy_from_slice(&mac);
        }
        let response = packet_md5(&self.secret, &bytes, &request.authenticator);
        bytes[4..20].copy_from_slice(&response);
        bytes
    }
}

/// The client and its servers, with a virtual clock.
struct Rig {
    client: RadiusClient,
    servers: HashMap<SocketAddr, usize>,
    backends: Vec<TestServer>,
    down: HashSet<usize>,
    start: Instant,
    now: Instant,
    /// Every datagram the client sent, with when.
    sent: Vec<(Duration, SocketAddr, Vec<u8>)>,
}

impl Rig {
    fn new(server_count: u8) -> Self {
        Self::with_config(ClientConfig::new((1..=server_count).map(server_config).collect()))
    }

    fn with_config(config: ClientConfig) -> Self {
        let mut servers = HashMap::new();
        for (index, server) in config.servers.iter().enumerate() {
            servers.insert(server.auth_address, index);
            servers.insert(server.acct_address, index);
        }
        let backends = config.servers.iter().map(|_| TestServer::new()).collect();
        let start = Instant::now();
        Rig {
            client: RadiusClient::new(config).unwrap(),
            servers,
            backends,
            down: HashSet::new(),
            start,
            now: start,
            sent: Vec::new(),
        }
    }

    fn send(&mut self, request: Request, choice: ServerChoice) -> RequestId {
        self.client.send(self.now, request, choice)
    }

    /// Datagrams the client wants sent now, without delivering them.
    fn take_transmits(&mut self) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some((to, bytes)) = self.client.poll_transmit() {
            self.sent.push((self.now - self.start, to, bytes.clone()));
            out.push((to, bytes));
        }
        out
    }

    /// Delivers what the client sends to the servers that are up, and their answers back,
    /// until the client has nothing more to send.
    fn exchange(&mut self) {
        loop {
            let transmits = self.take_transmits();
            if transmits.is_empty() {
                return;
            }
            for (to, bytes) in transmits {
                let server = self.servers[&to];
                if self.down.contains(&server) {
                    continue;
                }
                let answer = self.backends[server].answer(&bytes);
                self.client.handle_datagram(self.now, to, &answer).expect("the client takes an authentic answer");
            }
        }
    }

    /// Runs timers and exchanges until the clock reaches `until`.
    fn run_until(&mut self, until: Duration) {
        self.exchange();
        while let Some(deadline) = self.client.poll_timeout() {
            if deadline > self.start + until {
                break;
            }
            self.now = deadline;
            self.client.handle_timeout(self.now);
            self.exchange();
        }
        self.now = self.start + until;
    }

    fn events(&mut self) -> Vec<ClientEvent> {
        std::iter::from_fn(|| self.client.poll_event()).collect()
    }

    fn only_event(&mut self) -> ClientEvent {
        let mut events = self.events();
        assert_eq!(events.len(), 1, "{events:?}");
        events.remove(0)
    }
}

/// The last octet of a test server's address: server index + 1.
fn server_number(address: &SocketAddr) -> u8 {
    match address.ip() {
        std::net::IpAddr::V4(v4) => v4.octets()[3],
        std::net::IpAddr::V6(_) => unreachable!("test servers are on 127.0.0.x"),
    }
}

fn expect_reply(event: ClientEvent, expected_id: RequestId) -> (usize, Reply) {
    match event {
        ClientEvent::Reply { id, server, reply, .. } if id == expected_id => (server, reply),
        other => panic!("expected a reply to {expected_id}, got {other:?}"),
    }
}

fn expect_accept(event: ClientEvent, expected_id: RequestId) -> (usize, AcceptInfo) {
    match expect_reply(event, expected_id) {
        (server, Reply::Access(AccessReply::Accept(info))) => (server, info),
        other => panic!("expected an accept, got {other:?}"),
    }
}

fn pap(user: &str, password: &str) -> Request {
    AccessRequest::pap(user, password).build(&nas()).unwrap()
}

#[test]
fn pap_accept_and_reject() {
    let mut rig = Rig::new(1);
    let id = rig.send(pap("alice", "wonderland"), ServerChoice::Any);
    rig.exchange();
    let (server, info) = expect_accept(rig.only_event(), id);
    assert_eq!(server, 0);
    assert_eq!(info.framed_ip, Some(Ipv4Addr::new(10, 8, 0, 50)));
    assert_eq!(info.classes, vec![b"class-1".to_vec(), b"class-2".to_vec()]);
    assert_eq!(info.acct_interim_interval, Some(Duration::from_secs(300)));
    assert_eq!(rig.client.poll_timeout(), None, "nothing left to retransmit");

    let id = rig.send(pap("alice", "guess"), ServerChoice::Any);
    rig.exchange();
    let (_, reply) = expect_reply(rig.only_event(), id);
    assert_eq!(
        reply,
        Reply::Access(AccessReply::Reject {
            reply_message: Some("Wrong user name or password".into()),
            ms_chap_error: None,
            eap_message: None
        })
    );
}

#[test]
fn ms_chap_v2_accept_carries_success_and_mppe_keys() {
    // RFC 2759 §9.2 inputs: the peer side computed with our own MS-CHAPv2 code.
    let authenticator_challenge =
        [0x5B, 0x5D, 0x7C, 0x7D, 0x7B, 0x3F, 0x2F, 0x3E, 0x3C, 0x2C, 0x60, 0x21, 0x32, 0x26, 0x26, 0x28];
    let peer_challenge =
        [0x21, 0x40, 0x23, 0x24, 0x25, 0x5E, 0x26, 0x2A, 0x28, 0x29, 0x5F, 0x2B, 0x3A, 0x33, 0x7C, 0x7E];
    let hash = mschapv2::nt_password_hash("clientPass");
    let nt_response = mschapv2::generate_nt_response(&authenticator_challenge, &peer_challenge, b"User", &hash);
    let response = MsChap2Response { ident: 0x17, peer_challenge, nt_response };
    let request = AccessRequest::ms_chap_v2("User", authenticator_challenge, response).build(&nas()).unwrap();

    let mut rig = Rig::new(1);
    let id = rig.send(request, ServerChoice::Any);
    rig.exchange();
    let (_, info) = expect_accept(rig.only_event(), id);
    assert_eq!(
        info.ms_chap2_success,
        Some(MsChapMessage { ident: 0x17, text: "S=407A5589115FD0D6209F510FE9C04566932CDA56".into() })
    );
    let keys = mschapv2::mppe_keys(&hash, &nt_response);
    assert_eq!(info.mppe_send_key.as_deref(), Some(&keys.server_send[..]));
    assert_eq!(info.mppe_recv_key.as_deref(), Some(&keys.server_receive[..]));

    // A wrong password: the reject carries MS-CHAP-Error with the same ident.
    let wrong = mschapv2::generate_nt_response(&authenticator_challenge, &peer_challenge, b"User", &[0; 16]);
    let response = MsChap2Response { ident: 0x18, peer_challenge, nt_response: wrong };
    let request = AccessRequest::ms_chap_v2("User", authenticator_challenge, response).build(&nas()).unwrap();
    let id = rig.send(request, ServerChoice::Any);
    rig.exchange();
    match expect_reply(rig.only_event(), id).1 {
        Reply::Access(AccessReply::Reject { ms_chap_error: Some(error), .. }) => {
            assert_eq!(error.ident, 0x18);
            assert!(error.text.starts_with("E=691 R=0 C="), "{}", error.text);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn one_time_code_challenge_is_answered_on_the_same_server() {
    let mut rig = Rig::new(2);
    let id = rig.send(pap("otp-user", "first-factor"), ServerChoice::Any);
    rig.exchange();
    let (server, reply) = expect_reply(rig.only_event(), id);
    let Reply::Access(AccessReply::Challenge { state: Some(state), reply_message, eap_message: None }) = reply else {
        panic!("{reply:?}");
    };
    assert_eq!(reply_message.as_deref(), Some("Enter your one-time code"));

    let mut answer = AccessRequest::pap("otp-user", "123456");
    answer.state = Some(state.clone());
    let id = rig.send(answer.build(&nas()).unwrap(), ServerChoice::Pinned(server));
    rig.exchange();
    expect_accept(rig.only_event(), id);
    let last = rig.backends[server].received.last().unwrap();
    assert_eq!(last.attribute(attr::STATE), Some(&state[..]), "State echoed byte for byte");
}

#[test]
fn eap_conversation_reassembles_and_pins() {
    let mut rig = Rig::new(2);
    let id = rig
        .send(AccessRequest::eap("bob", [2, 0, 0, 8, 1, b'b', b'o', b'b']).build(&nas()).unwrap(), ServerChoice::Any);
    rig.exchange();
    let (server, reply) = expect_reply(rig.only_event(), id);
    let Reply::Access(AccessReply::Challenge { state: Some(state), eap_message: Some(eap), .. }) = reply else {
        panic!("{reply:?}");
    };
    assert_eq!(eap, vec![1u8; 600], "three EAP-Message attributes reassembled");

    let mut next = AccessRequest::eap("bob", [2, 1, 0, 4]);
    next.state = Some(state);
    let id = rig.send(next.build(&nas()).unwrap(), ServerChoice::Pinned(server));
    rig.exchange();
    let (_, info) = expect_accept(rig.only_event(), id);
    assert_eq!(info.eap_message, Some(vec![3, 1, 0, 4]));
}

#[test]
fn accounting_request_gets_its_response() {
    let mut rig = Rig::new(1);
    let mut start = AccountingRequest::new(AcctStatusType::Start, "session-1");
    start.user_name = Some(b"alice".to_vec());
    start.classes = vec![b"class-1".to_vec()];
    let id = rig.send(start.build(&nas()).unwrap(), ServerChoice::Any);
    rig.exchange();
    assert_eq!(expect_reply(rig.only_event(), id).1, Reply::AccountingResponse);
    let (_, to, _) = &rig.sent[0];
    assert_eq!(to.port(), 1813, "accounting goes to the accounting port");
}

#[test]
fn retransmissions_repeat_the_same_bytes_with_backoff() {
    let mut rig = Rig::new(1);
    rig.down.insert(0);
    let id = rig.send(pap("alice", "wonderland"), ServerChoice::Any);
    rig.run_until(Duration::from_secs(7));
    // 15 s budget split 1:2:4 — sent at 0, 15/7 s and 45/7 s.
    let times: Vec<Duration> = rig.sent.iter().map(|(t, _, _)| *t).collect();
    assert_eq!(times, [Duration::ZERO, Duration::from_secs(15) / 7, Duration::from_secs(45) / 7]);
    assert!(rig.sent.iter().all(|(_, _, bytes)| *bytes == rig.sent[0].2), "same identifier, authenticator, bytes");
    assert!(rig.events().is_empty());
    // The server comes back and answers the third transmission.
    rig.down.clear();
    let (to, bytes) = (rig.sent[2].1, rig.sent[2].2.clone());
    let answer = rig.backends[0].answer(&bytes);
    rig.client.handle_datagram(rig.now, to, &answer).unwrap();
    expect_accept(rig.only_event(), id);
    assert_eq!(rig.client.poll_timeout(), None);
}

#[test]
fn failover_to_the_second_server_and_stickiness() {
    let mut config = ClientConfig::new(vec![server_config(1), server_config(2)]);
    config.dead_time = Duration::from_secs(100);
    let mut rig = Rig::with_config(config);
    rig.down.insert(0);
    let id = rig.send(pap("alice", "wonderland"), ServerChoice::Any);
    rig.run_until(Duration::from_secs(20));
    let (server, _) = expect_accept(rig.only_event(), id);
    assert_eq!(server, 1);
    let destinations: Vec<u8> = rig.sent.iter().map(|(_, to, _)| server_number(to)).collect();
    assert_eq!(destinations, [1, 1, 1, 2]);
    assert_eq!(rig.sent[3].0, Duration::from_secs(15), "failover after the whole first budget");
    assert_ne!(rig.sent[3].2[1..20], rig.sent[0].2[1..20], "a new packet (authenticator) for the new server");

    // The next request goes straight to the server that answered, even after server 0
    // is back and its dead time has passed.
    rig.down.clear();
    rig.run_until(Duration::from_secs(200));
    let before = rig.sent.len();
    let id = rig.send(pap("alice", "wonderland"), ServerChoice::Any);
    rig.exchange();
    assert_eq!(expect_accept(rig.only_event(), id).0, 1);
    assert_eq!(rig.sent.len(), before + 1);

    // Server 1 dies: failover back to server 0, which is tried again.
    rig.down.insert(1);
    let id = rig.send(pap("alice", "wonderland"), ServerChoice::Any);
    rig.run_until(Duration::from_secs(230));
    assert_eq!(expect_accept(rig.only_event(), id).0, 0);
}

#[test]
fn a_recently_failed_server_is_tried_last() {
    let mut rig = Rig::new(3);
    rig.down.insert(1);
    rig.send(pap("alice", "wonderland"), ServerChoice::Pinned(1));
    rig.run_until(Duration::from_secs(16));
    assert!(matches!(rig.only_event(), ClientEvent::Failed { .. }));
    // Server 1 is back but marked dead for a minute; 0 and 2 go down. The order is 0, 2,
    // then 1, not 0, 1, 2.
    rig.down = HashSet::from([0, 2]);
    let before = rig.sent.len();
    let id = rig.send(pap("alice", "wonderland"), ServerChoice::Any);
    rig.run_until(Duration::from_secs(60));
    assert_eq!(expect_accept(rig.only_event(), id).0, 1);
    let order: Vec<u8> = rig.sent[before..].iter().map(|(_, to, _)| server_number(to)).collect();
    assert_eq!(order, [1, 1, 1, 3, 3, 3, 2]);
}

#[test]
fn give_up_lists_every_server_tried() {
    let mut rig = Rig::new(2);
    rig.down = HashSet::from([0, 1]);
    let id = rig.send(pap("alice", "wonderland"), ServerChoice::Any);
    rig.run_until(Duration::from_secs(29));
    assert!(rig.events().is_empty());
    rig.run_until(Duration::from_secs(31));
    let ClientEvent::Failed { id: failed, reason } = rig.only_event() else { panic!() };
    assert_eq!(failed, id);
    let FailureReason::NoAnswer { attempts } = &reason else { panic!("{reason:?}") };
    assert_eq!(
        attempts.iter().map(|a| (a.address, a.tries)).collect::<Vec<_>>(),
        [(server_config(1).auth_address, 3), (server_config(2).auth_address, 3)]
    );
    assert_eq!(reason.to_string(), "no answer from RADIUS servers 127.0.0.1:1812 (3 tries), 127.0.0.2:1812 (3 tries)");
    assert_eq!(rig.client.poll_timeout(), None);
}

#[test]
fn pinned_requests_do_not_fail_over() {
    let mut rig = Rig::new(2);
    rig.down.insert(1);
    let id = rig.send(pap("alice", "wonderland"), ServerChoice::Pinned(1));
    rig.run_until(Duration::from_secs(60));
    let ClientEvent::Failed { reason: FailureReason::NoAnswer { attempts }, .. } = rig.only_event() else { panic!() };
    assert_eq!(attempts.len(), 1);
    assert!(rig.sent.iter().all(|(_, to, _)| *to == server_config(2).auth_address));

    let id2 = rig.send(pap("alice", "wonderland"), ServerChoice::Pinned(5));
    assert_ne!(id, id2);
    assert_eq!(
        rig.only_event(),
        ClientEvent::Failed { id: id2, reason: FailureReason::NoSuchServer { index: 5, configured: 2 } }
    );
}

#[test]
fn late_reply_from_the_first_server_after_failover_is_ignored() {
    let mut rig = Rig::new(2);
    let id = rig.send(pap("alice", "wonderland"), ServerChoice::Any);
    // Server 0 gets every transmission but its answers are held back.
    let mut held = Vec::new();
    for _ in 0..3 {
        for (to, bytes) in rig.take_transmits() {
            held.push((to, rig.backends[0].answer(&bytes)));
        }
        rig.now = rig.client.poll_timeout().unwrap();
        rig.client.handle_timeout(rig.now);
    }
    // Now failed over: the request went to server 1, not answered yet.
    let moved = rig.take_transmits();
    assert_eq!(moved.len(), 1);
    assert_eq!(moved[0].0, server_config(2).auth_address);
    for (from, answer) in &held {
        let dropped = rig.client.handle_datagram(rig.now, *from, answer);
        assert!(matches!(dropped, Err(DropReason::NotPending { .. })), "{dropped:?}");
    }
    assert!(rig.events().is_empty());
    let answer = rig.backends[1].answer(&moved[0].1);
    rig.client.handle_datagram(rig.now, moved[0].0, &answer).unwrap();
    assert_eq!(expect_accept(rig.only_event(), id).0, 1);
    // And a duplicate of the accepted reply is dropped too.
    assert!(matches!(rig.client.handle_datagram(rig.now, moved[0].0, &answer), Err(DropReason::NotPending { .. })));
}

#[test]
fn identifier_exhaustion_queues_requests() {
    let mut rig = Rig::new(1);
    let ids: Vec<RequestId> = (0..300).map(|_| rig.send(pap("alice", "wonderland"), ServerChoice::Any)).collect();
    let first = rig.take_transmits();
    assert_eq!(first.len(), 256, "one destination has 256 identifiers");
    let identifiers: HashSet<u8> = first.iter().map(|(_, bytes)| bytes[1]).collect();
    assert_eq!(identifiers.len(), 256);
    // Answering one frees its identifier for the first queued request.
    let answer = rig.backends[0].answer(&first[0].1);
    rig.client.handle_datagram(rig.now, first[0].0, &answer).unwrap();
    let next = rig.take_transmits();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].1[1], first[0].1[1], "the freed identifier");
    // Answer everything in flight, and what follows.
    for (to, bytes) in first.into_iter().skip(1).chain(next) {
        let answer = rig.backends[0].answer(&bytes);
        rig.client.handle_datagram(rig.now, to, &answer).unwrap();
    }
    rig.exchange();
    let accepted: HashSet<RequestId> = rig
        .events()
        .into_iter()
        .map(|event| match event {
            ClientEvent::Reply { id, reply: Reply::Access(AccessReply::Accept(_)), .. } => id,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(accepted, ids.into_iter().collect());
    // Accounting uses its own destination, so its identifiers are not exhausted.
    let acct = AccountingRequest::new(AcctStatusType::AccountingOn, "boot").build(&nas()).unwrap();
    rig.send(acct, ServerChoice::Any);
    assert_eq!(rig.take_transmits().len(), 1);
}

#[test]
fn queued_requests_move_on_when_their_server_fails() {
    let mut rig = Rig::new(2);
    rig.down.insert(0);
    for _ in 0..300 {
        rig.send(pap("alice", "wonderland"), ServerChoice::Any);
    }
    rig.run_until(Duration::from_secs(16));
    let events = rig.events();
    assert_eq!(events.len(), 300);
    assert!(events.iter().all(|e| matches!(e, ClientEvent::Reply { server: 1, .. })));
    // The 44 that waited in line never went to server 0 (they waited for server 1's
    // identifiers instead, all taken at first by the 256 failing over).
    let to_server_0 = rig.sent.iter().filter(|(_, to, _)| *to == server_config(1).auth_address).count();
    assert_eq!(to_server_0, 256 * 3);
}

#[test]
fn unauthentic_replies_are_dropped_with_the_reason() {
    let mut rig = Rig::new(1);
    rig.backends[0].secret = b"not-the-secret".to_vec();
    // The server cannot check our MAC with its wrong secret: answer without its assertions.
    let id = rig.send(pap("alice", "wonderland"), ServerChoice::Any);
    let (to, bytes) = rig.take_transmits().remove(0);
    let request = Packet::decode(&bytes).unwrap();
    let forged = rig.backends[0].sign_reply(Code::AccessAccept, &request, vec![]);
    assert_eq!(
        rig.client.handle_datagram(rig.now, to, &forged),
        Err(DropReason::Unauthentic { from: to, error: VerifyError::BadResponseAuthenticator })
    );
    // Correct secret but no Message-Authenticator.
    rig.backends[0].secret = SECRET.to_vec();
    rig.backends[0].sign_message_authenticator = false;
    let unsigned = rig.backends[0].sign_reply(Code::AccessAccept, &request, vec![]);
    assert_eq!(
        rig.client.handle_datagram(rig.now, to, &unsigned),
        Err(DropReason::Unauthentic { from: to, error: VerifyError::MissingMessageAuthenticator })
    );
    // A wrong Message-Authenticator under a valid Response Authenticator.
    rig.backends[0].sign_message_authenticator = true;
    let mut bad_mac = rig.backends[0].sign_reply(Code::AccessAccept, &request, vec![]);
    bad_mac[25] ^= 0x80;
    let response = packet_md5(SECRET, &bad_mac, &request.authenticator);
    bad_mac[4..20].copy_from_slice(&response);
    assert_eq!(
        rig.client.handle_datagram(rig.now, to, &bad_mac),
        Err(DropReason::Unauthentic { from: to, error: VerifyError::BadMessageAuthenticator })
    );
    // From the wrong address or port, or the wrong kind of reply.
    let good = rig.backends[0].sign_reply(Code::AccessAccept, &request, vec![]);
    let elsewhere = SocketAddr::from(([127, 0, 0, 1], 1814));
    assert_eq!(
        rig.client.handle_datagram(rig.now, elsewhere, &good),
        Err(DropReason::NotPending { from: elsewhere, identifier: request.identifier })
    );
    let wrong_code = rig.backends[0].sign_reply(Code::AccountingResponse, &request, vec![]);
    assert!(matches!(
        rig.client.handle_datagram(rig.now, to, &wrong_code),
        Err(DropReason::UnexpectedCode { code: Code::AccountingResponse, .. })
    ));
    assert!(matches!(rig.client.handle_datagram(rig.now, to, &good[..19]), Err(DropReason::Malformed(_))));
    assert!(rig.events().is_empty());
    // The genuine reply still gets through after all that.
    rig.client.handle_datagram(rig.now, to, &good).unwrap();
    expect_accept(rig.only_event(), id);
}

#[test]
fn a_wrong_secret_shows_in_the_failure() {
    let mut rig = Rig::new(1);
    let id = rig.send(pap("alice", "wonderland"), ServerChoice::Any);
    let mut now = rig.now;
    loop {
        for (to, bytes) in rig.take_transmits() {
            let request = Packet::decode(&bytes).unwrap();
            let mut server = TestServer::new();
            server.secret = b"other".to_vec();
            let reply = server.sign_reply(Code::AccessAccept, &request, vec![]);
            assert!(rig.client.handle_datagram(now, to, &reply).is_err());
        }
        let Some(next) = rig.client.poll_timeout() else { break };
        now = next;
        rig.client.handle_timeout(now);
    }
    let ClientEvent::Failed { id: failed, reason } = rig.only_event() else { panic!() };
    assert_eq!(failed, id);
    assert!(
        reason.to_string().contains("(3 tries; its replies were refused: wrong Response Authenticator"),
        "{reason}"
    );
}

#[test]
fn message_authenticator_can_be_optional_except_with_eap() {
    let mut config = ClientConfig::new(vec![server_config(1)]);
    config.require_message_authenticator = false;
    let mut rig = Rig::with_config(config);
    rig.backends[0].sign_message_authenticator = false;
    let id = rig.send(pap("alice", "wonderland"), ServerChoice::Any);
    rig.exchange();
    expect_accept(rig.only_event(), id);

    rig.send(AccessRequest::eap("bob", [2, 0, 0, 4]).build(&nas()).unwrap(), ServerChoice::Any);
    let (to, bytes) = rig.take_transmits().remove(0);
    let answer = rig.backends[0].answer(&bytes);
    assert!(matches!(
        rig.client.handle_datagram(rig.now, to, &answer),
        Err(DropReason::Unauthentic { error: VerifyError::MissingMessageAuthenticator, .. })
    ));
}

#[test]
fn cancelled_requests_stay_silent() {
    let mut rig = Rig::new(1);
    let id = rig.send(pap("alice", "wonderland"), ServerChoice::Any);
    let (to, bytes) = rig.take_transmits().remove(0);
    rig.client.cancel(rig.now, id);
    assert_eq!(rig.client.poll_timeout(), None);
    let answer = rig.backends[0].answer(&bytes);
    assert!(matches!(rig.client.handle_datagram(rig.now, to, &answer), Err(DropReason::NotPending { .. })));
    rig.run_until(Duration::from_secs(60));
    assert!(rig.events().is_empty());
}

#[test]
fn acct_delay_time_grows_on_failover_only() {
    let mut rig = Rig::new(2);
    rig.down.insert(0);
    let mut stop = AccountingRequest::new(AcctStatusType::Stop, "s");
    stop.delay = Duration::from_secs(1);
    let id = rig.send(stop.build(&nas()).unwrap(), ServerChoice::Any);
    rig.run_until(Duration::from_secs(20));
    assert_eq!(expect_reply(rig.only_event(), id), (1, Reply::AccountingResponse));
    let delays: Vec<u32> = rig
        .sent
        .iter()
        .map(|(_, _, bytes)| {
            let value = Packet::decode(bytes).unwrap().attribute(attr::ACCT_DELAY_TIME).unwrap().to_vec();
            u32::from_be_bytes(value.try_into().unwrap())
        })
        .collect();
    assert_eq!(delays, [1, 1, 1, 16]);
}

#[test]
fn configuration_is_checked() {
    assert!(matches!(RadiusClient::new(ClientConfig::new(vec![])), Err(ConfigError::NoServers)));
    let mut config = ClientConfig::new(vec![server_config(1)]);
    config.tries_per_server = 0;
    assert!(matches!(RadiusClient::new(config.clone()), Err(ConfigError::BadTries(0))));
    config.tries_per_server = 3;
    config.timeout = Duration::ZERO;
    assert!(matches!(RadiusClient::new(config.clone()), Err(ConfigError::BadTimeout(_))));
    config.timeout = Duration::from_secs(5);
    assert!(!format!("{config:?}").contains("testing123"), "secrets stay out of logs");
    config.servers[0].secret.clear();
    assert_eq!(
        RadiusClient::new(config).err().map(|e| e.to_string()),
        Some("RADIUS server 127.0.0.1:1812 has an empty shared secret".into())
    );
}

#[test]
fn mutated_replies_never_panic_or_pass() {
    let mut rng = crate::testing::XorShift(0xfeed_5eed);
    let mut rig = Rig::new(1);
    let authenticator_challenge = [7; 16];
    let hash = mschapv2::nt_password_hash("clientPass");
    let nt_response = mschapv2::generate_nt_response(&authenticator_challenge, &[9; 16], b"User", &hash);
    let response = MsChap2Response { ident: 1, peer_challenge: [9; 16], nt_response };
    let request = AccessRequest::ms_chap_v2("User", authenticator_challenge, response).build(&nas()).unwrap();
    rig.send(request, ServerChoice::Any);
    let (to, bytes) = rig.take_transmits().remove(0);
    let good = rig.backends[0].answer(&bytes);
    for _ in 0..5_000 {
        let mut mutated = good.clone();
        for _ in 0..1 + rng.below(3) {
            let i = rng.below(mutated.len() as u64) as usize;
            mutated[i] ^= 1 << rng.below(8);
        }
        mutated.truncate(rng.below(mutated.len() as u64) as usize + 1);
        if mutated != good {
            assert!(rig.client.handle_datagram(rig.now, to, &mutated).is_err());
        }
    }
    rig.client.handle_datagram(rig.now, to, &good).unwrap();
    assert_eq!(rig.events().len(), 1);
}
