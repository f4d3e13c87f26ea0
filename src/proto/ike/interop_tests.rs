//! The responder against the real strongSwan 5.9.8 client (charon-systemd + swanctl), in a
//! network namespace this test creates (loopback only). Ignored by default: it needs root
//! and the Debian packages charon-systemd, strongswan-swanctl. Run with
//! `cargo test --lib strongswan -- --ignored --nocapture`.
//!
//! A small UDP driver stands in for the gateway's: it strips and adds the non-ESP marker
//! on port 4500 and answers AuthRequest with a fixed grant. The CHILD SA keys are checked
//! against what charon installed in the kernel (`ip xfrm state`).

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

use super::auth;
use super::message::hex_string;
use super::responder::{
    Authorization, ChildSa, CloseReason, Credential, EapReply, Event, Grant, PeerVerifier, Responder, ResponderConfig,
    Timing,
};
use crate::crypto::mschapv2;

const CHARON: &str = "/usr/sbin/charon-systemd";

struct Pki {
    ca_pem: String,
    ca_der: Vec<u8>,
    server_chain: Vec<Vec<u8>>,
    server_key: Vec<u8>,
    client_pem: String,
    client_key_pem: String,
    client_der: Vec<u8>,
}

fn pki(server_alg: &'static rcgen::SignatureAlgorithm) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "p2sgw interop CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, &ca_key);
    let leaf = |name: &str, alg: &'static rcgen::SignatureAlgorithm| {
        let key = KeyPair::generate_for(alg).unwrap();
        let mut p = CertificateParams::new(vec![name.to_string()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        (p.signed_by(&key, &issuer).unwrap(), key)
    };
    let (server, server_key) = leaf("vpn.example.test", server_alg);
    let (client, client_key) = leaf("alice.example.test", &rcgen::PKCS_ECDSA_P256_SHA256);
    Pki {
        ca_pem: ca_cert.pem(),
        ca_der: ca_cert.der().to_vec(),
        server_chain: vec![server.der().to_vec()],
        server_key: server_key.serialize_der(),
        client_pem: client.pem(),
        client_key_pem: client_key.serialize_pem(),
        client_der: client.der().to_vec(),
    }
}

/// Accepts the one client certificate; asks for certificates of the CA (strongSwan
/// sends its certificate only when asked).
struct Pinned {
    client: Vec<u8>,
    ca: Vec<u8>,
}

impl PeerVerifier for Pinned {
    fn verify_chain(&self, chain: &[Vec<u8>]) -> Result<(), String> {
        if chain[0] == self.client { Ok(()) } else { Err("unknown client".into()) }
    }
    fn certreq_hashes(&self) -> Vec<[u8; 20]> {
        auth::spki_sha1(&self.ca).into_iter().collect()
    }
}

struct Charon {
    dir: PathBuf,
    process: Child,
}

impl Drop for Charon {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

impl Charon {
    fn start(dir: &Path, pki: &Pki, scenario: &Scenario) -> Charon {
        let swanctl = dir.join("swanctl");
        for sub in ["x509", "x509ca", "private"] {
            std::fs::create_dir_all(swanctl.join(sub)).unwrap();
        }
        std::fs::write(swanctl.join("x509ca/ca.pem"), &pki.ca_pem).unwrap();
        std::fs::write(swanctl.join("x509/client.pem"), &pki.client_pem).unwrap();
        std::fs::write(swanctl.join("private/client.pem"), &pki.client_key_pem).unwrap();
        let local = if scenario.eap {
            "auth = eap-mschapv2\n eap_id = alice"
        } else {
            "auth = pubkey\n certs = client.pem\n id = alice.example.test"
        };
        std::fs::write(
            swanctl.join("swanctl.conf"),
            format!(
                "connections {{ gw {{ version = 2\n remote_addrs = 127.0.0.1\n proposals = {}\n vips = 0.0.0.0\n
                 local {{ {local} }}\n
                 remote {{ auth = pubkey\n id = vpn.example.test }}\n
                 dpd_delay = 1s\n
                 children {{ net {{ remote_ts = 10.1.0.0/16\n esp_proposals = {} }} }} }} }}\n
                 secrets {{ eap-alice {{ id = alice\n secret = {EAP_PASSWORD} }} }}\n",
                scenario.proposals, scenario.esp
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("strongswan.conf"),
            format!(
                // Only these plugins: kernel-libipsec does ESP in userspace like the
                // target clients, and without `resolve` charon leaves /etc/resolv.conf alone.
                "charon-systemd {{ port = 5500\n port_nat_t = 5501\n
                 signature_authentication = {}\n fragment_size = {}\n
                 load = random nonce aes sha1 sha2 hmac kdf pem pkcs1 pkcs8 x509 revocation constraints \
                        pubkey openssl gcm curve25519 chapoly eap-identity eap-mschapv2 kernel-libipsec kernel-netlink \
                        socket-default vici\n
                 journal {{ default = -1 }}\n
                 filelog {{ log {{ path = {}\n flush_line = yes\n default = 1\n ike = 2\n net = 2\n cfg = 2\n
                                   chd = 4\n enc = 1 }} }}\n
                 plugins {{ vici {{ socket = unix://{}/vici }} }} }}\n",
                if scenario.rfc7427 { "yes" } else { "no" },
                if scenario.small_fragments { 500 } else { 1280 },
                dir.join("charon.log").display(),
                dir.display()
            ),
        )
        .unwrap();
        let process = Command::new(CHARON)
            .env("STRONGSWAN_CONF", dir.join("strongswan.conf"))
            .stdout(std::fs::File::create(dir.join("charon.out")).unwrap())
            .stderr(std::fs::File::create(dir.join("charon.err")).unwrap())
            .spawn()
            .unwrap();
        let charon = Charon { dir: dir.to_path_buf(), process };
        let vici = dir.join("vici");
        let started = Instant::now();
        while !vici.exists() {
            assert!(started.elapsed() < Duration::from_secs(10), "charon did not start: {}", charon.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = charon.swanctl(&["--load-all", "--file", swanctl.join("swanctl.conf").to_str().unwrap()]);
        assert!(
            out.status.success(),
            "swanctl --load-all: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            charon.log()
        );
        charon
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("swanctl");
        c.args(args)
            .arg("--uri")
            .arg(format!("unix://{}/vici", self.dir.display()))
            .env("SWANCTL_DIR", self.dir.join("swanctl"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    fn swanctl(&self, args: &[&str]) -> std::process::Output {
        self.command(args).output().unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("charon.log")).unwrap_or_default()
    }
}

/// The test's stand-in for the gateway's socket loop.
struct Driver {
    responder: Responder,
    authenticator: MsChapV2,
    ike: UdpSocket,
    nat_t: UdpSocket,
    events: Vec<Event>,
}

impl Driver {
    fn new(config: ResponderConfig) -> Driver {
        let ike = UdpSocket::bind("127.0.0.1:500").unwrap();
        let nat_t = UdpSocket::bind("127.0.0.1:4500").unwrap();
        for s in [&ike, &nat_t] {
            s.set_nonblocking(true).unwrap();
        }
        Driver {
            responder: Responder::new(Arc::new(config)),
            authenticator: MsChapV2::default(),
            ike,
            nat_t,
            events: Vec::new(),
        }
    }

    /// Runs until `done` holds for the events so far; false if `limit` passed first.
    fn pump(&mut self, limit: Duration, mut done: impl FnMut(&[Event]) -> bool) -> bool {
        let started = Instant::now();
        let mut buf = [0u8; 65536];
        while !done(&self.events) {
            if started.elapsed() > limit {
                return false;
            }
            let now = Instant::now();
            let mut idle = true;
            for socket in [&self.ike, &self.nat_t] {
                if let Ok((n, remote)) = socket.recv_from(&mut buf) {
                    idle = false;
                    let local = socket.local_addr().unwrap();
                    let data = &buf[..n];
                    let ike = if local.port() == 4500 {
                        match data.strip_prefix(&[0, 0, 0, 0]) {
                            Some(ike) => ike,
                            None => continue, // ESP or a NAT keepalive
                        }
                    } else {
                        data
                    };
                    let _ = self.responder.handle_datagram(now, local, remote, ike);
                }
            }
            if self.responder.poll_timeout().is_some_and(|t| t <= now) {
                self.responder.handle_timeout(now);
            }
            while let Some(t) = self.responder.poll_transmit() {
                self.send(t.local, t.remote, &t.message);
            }
            while let Some(event) = self.responder.poll_event() {
                if let Event::EapMessage { session, identity, message, .. } = &event {
                    let reply = self.authenticator.answer(identity, message);
                    self.responder.eap_reply(now, *session, reply);
                    while let Some(t) = self.responder.poll_transmit() {
                        self.send(t.local, t.remote, &t.message);
                    }
                }
                if let Event::AuthRequest { session, .. } = &event {
                    let grant = Grant {
                        virtual_ipv4: Some("10.9.0.7".parse().unwrap()),
                        dns: vec!["10.1.0.53".parse().unwrap()],
                        routes: vec!["10.1.0.0/16".parse().unwrap()],
                    };
                    self.responder.authorize(now, *session, Authorization::Accept(grant));
                    while let Some(t) = self.responder.poll_transmit() {
                        self.send(t.local, t.remote, &t.message);
                    }
                }
                self.events.push(event);
            }
            if idle {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        true
    }

    /// Like `expect`, when charon is gone.
    fn expect_quietly(&mut self, what: &str, done: impl FnMut(&[Event]) -> bool) {
        let met = self.pump(Duration::from_secs(30), done);
        assert!(met, "timed out waiting for {what}; events {:?}", self.events);
    }

    /// Like `pump`, but the condition must be met.
    fn expect(&mut self, charon: &Charon, what: &str, done: impl FnMut(&[Event]) -> bool) {
        let started = Instant::now();
        let met = self.pump(Duration::from_secs(30), done);
        assert!(met, "timed out waiting for {what}; events {:?}\n{}", self.events, charon.log());
        eprintln!("{what}: {:?}", started.elapsed());
    }

    /// Starts one of our exchanges (a rekey): the responder refuses while another of its
    /// requests is in flight (its own DPD may be), so pump until it takes it.
    fn start(&mut self, charon: &Charon, what: &str, mut start: impl FnMut(&mut Responder) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !start(&mut self.responder) {
            assert!(Instant::now() < deadline, "the responder never took {what}\n{}", charon.log());
            self.pump(Duration::from_millis(50), |_| false);
        }
    }

    fn send(&self, local: SocketAddr, remote: SocketAddr, message: &[u8]) {
        if local.port() == 4500 {
            let framed = [&[0u8, 0, 0, 0][..], message].concat();
            self.nat_t.send_to(&framed, remote).unwrap();
        } else {
            self.ike.send_to(message, remote).unwrap();
        }
    }
}

/// The CHILD SA keys charon derived, in order, as (initiator, responder) hex pairs: its
/// log prints them at `chd = 4` as hex dumps ("encryption initiator key => 36 bytes").
fn charon_child_keys(log: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = log.lines().collect();
    let mut keys = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(rest) = line.split("key => ").nth(1).filter(|_| line.contains("encryption ")) else { continue };
        let Some(len) = rest.split_whitespace().next().and_then(|n| n.parse::<usize>().ok()) else { continue };
        let mut hex = String::new();
        for dump in &lines[i + 1..] {
            if hex.len() >= 2 * len {
                break;
            }
            let Some((_, bytes)) = dump.split_once(": ") else { break };
            for byte in bytes.split_whitespace().take((2 * len - hex.len()) / 2).take(16) {
                hex.push_str(&byte.to_ascii_lowercase());
            }
        }
        keys.push((line.contains("initiator"), hex));
    }
    keys.chunks_exact(2)
        .filter_map(|pair| match pair {
            [(true, i), (false, r)] => Some((i.clone(), r.clone())),
            _ => None,
        })
        .collect()
}

fn enter_namespace() {
    // SAFETY: unshare only changes this thread's namespace; the test thread owns it.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "unshare(CLONE_NEWNET) needs root");
    assert!(Command::new("ip").args(["link", "set", "lo", "up"]).status().unwrap().success());
}

const EAP_PASSWORD: &str = "correct-horse";

/// A minimal EAP-MSCHAPv2 authenticator (RFC 2759 over EAP type 26, PROTOCOLS.md §3.7),
/// standing in for RADIUS.
#[derive(Default)]
struct MsChapV2 {
    challenge: [u8; 16],
    msk: Vec<u8>,
}

impl MsChapV2 {
    fn answer(&mut self, identity: &str, message: &[u8]) -> EapReply {
        let id = message[1].wrapping_add(1);
        let request = |id: u8, data: &[u8]| {
            let len = (4 + data.len()) as u16;
            [&[1, id][..], &len.to_be_bytes(), data].concat()
        };
        // Type-Data: OpCode(1) MS-CHAPv2-ID(1) MS-Length(2) ...
        let ms = |opcode: u8, body: &[u8]| {
            let ms_len = (4 + body.len()) as u16;
            [&[26, opcode, 7][..], &ms_len.to_be_bytes(), body].concat()
        };
        match (message[4], message.get(5)) {
            (1, _) => {
                self.challenge = [0x42; 16];
                let body = [&[16][..], &self.challenge, b"p2sgw"].concat();
                EapReply::Request(request(id, &ms(1, &body)))
            }
            (26, Some(2)) => {
                let value = &message[10..];
                let peer_challenge: [u8; 16] = value[..16].try_into().unwrap();
                let nt_response: [u8; 24] = value[24..48].try_into().unwrap();
                let name = &value[49..];
                assert_eq!(name, identity.as_bytes());
                let hash = mschapv2::nt_password_hash(EAP_PASSWORD);
                assert!(mschapv2::verify_nt_response(&hash, &self.challenge, &peer_challenge, name, &nt_response));
                let keys = mschapv2::mppe_keys(&hash, &nt_response);
                // RADIUS MSK: MS-MPPE-Recv-Key || MS-MPPE-Send-Key, zero-padded to 64.
                self.msk = [&keys.server_receive[..], &keys.server_send, &[0; 32]].concat();
                let text = mschapv2::generate_authenticator_response(
                    &hash,
                    &nt_response,
                    &peer_challenge,
                    &self.challenge,
                    name,
                );
                EapReply::Request(request(id, &ms(3, format!("{text} M=welcome").as_bytes())))
            }
            (26, Some(3)) => EapReply::Success { message: vec![3, message[1], 0, 4], msk: self.msk.clone() },
            other => panic!("unexpected EAP message {other:?}"),
        }
    }
}

/// One client configuration.
struct Scenario {
    server_alg: &'static rcgen::SignatureAlgorithm,
    proposals: &'static str,
    esp: &'static str,
    /// The client announces RFC 7427 (strongSwan's default); without it the gateway signs
    /// with method 1 (RSA, SHA-1) or 9–11 (ECDSA).
    rfc7427: bool,
    /// The client authenticates with EAP-MSCHAPv2 instead of a certificate.
    eap: bool,
    /// Also run the rekeys from both sides.
    rekeys: bool,
    /// How charon reports verifying our AUTH.
    server_auth: &'static str,
    /// Both sides fragment IKE messages above 500 bytes (RFC 7383).
    small_fragments: bool,
    /// The client vanishes instead of disconnecting: our DPD must give up (fast timers).
    client_dies: bool,
    /// The gateway also accepts stock Windows' IKE algorithms (group 2, SHA-1).
    legacy: bool,
}

fn run(scenario: Scenario) {
    let name = format!("p2sgw-ike-interop-{}-{}", std::process::id(), scenario.proposals);
    let dir = std::env::temp_dir().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let pki = pki(scenario.server_alg);
    let credential = Credential::new(pki.server_chain.clone(), &pki.server_key).unwrap();
    let verifier = Pinned { client: pki.client_der.clone(), ca: pki.ca_der.clone() };
    let mut config = ResponderConfig::new(Arc::new(credential), Arc::new(verifier));
    config.eap = scenario.eap;
    if scenario.legacy {
        config.algorithms = config.algorithms.with_legacy_windows();
    }
    if scenario.small_fragments {
        config.fragment_size = 500;
    }
    if scenario.client_dies {
        config.timing = Timing {
            retransmit_timeout: Duration::from_millis(250),
            retransmit_tries: 3,
            dpd_interval: Duration::from_secs(2),
            half_open_timeout: Duration::from_secs(5),
        };
    }
    let mut driver = Driver::new(config);
    let charon = Charon::start(&dir, &pki, &scenario);
    let is_rekeyed = |e: &Event| matches!(e, Event::ChildSaRekeyed { .. });
    // Our CHILD SA keys as charon's (initiator, responder) pair.
    let keys = |c: &ChildSa, charon_initiated: bool| {
        let (inbound, outbound) = (hex_string(&c.inbound_key.0), hex_string(&c.outbound_key.0));
        if charon_initiated { (inbound, outbound) } else { (outbound, inbound) }
    };

    // Establish.
    let mut initiate = charon.command(&["--initiate", "--child", "net", "--timeout", "20"]).spawn().unwrap();
    driver.expect(&charon, "a CHILD SA", |e| e.iter().any(|e| matches!(e, Event::ChildSaEstablished(_))));
    assert!(initiate.wait().unwrap().success(), "swanctl --initiate failed:\n{}", charon.log());
    let Some(Event::ChildSaEstablished(child)) =
        driver.events.iter().find(|e| matches!(e, Event::ChildSaEstablished(_))).cloned()
    else {
        unreachable!("waited for it")
    };
    assert!(charon_child_keys(&charon.log()).contains(&keys(&child, true)), "{}", charon.log());
    assert!(child.udp_encapsulation, "kernel-libipsec fakes a NAT");
    if scenario.small_fragments {
        let log = charon.log();
        assert!(log.contains("received fragment #") && log.contains("reassembled fragmented IKE message"), "{log}");
        assert!(log.contains("splitting IKE message"), "charon fragmented too:\n{log}");
    }
    let verified = format!("authentication of 'vpn.example.test' with {} successful", scenario.server_auth);
    assert!(charon.log().contains(&verified), "{verified}:\n{}", charon.log());
    if scenario.eap {
        let request = driver.events.iter().find_map(|e| match e {
            Event::AuthRequest { request, .. } => Some(request.clone()),
            _ => None,
        });
        assert_eq!(request.and_then(|r| r.eap_identity), Some("alice".to_string()));
    }
    let session = child.session;

    if scenario.rekeys {
        // The client rekeys the CHILD SA (then deletes the old one), then the IKE SA.
        driver.events.clear();
        assert!(charon.swanctl(&["--rekey", "--child", "net"]).status.success());
        driver.expect(&charon, "the client's CHILD rekey", |e| {
            e.iter().any(is_rekeyed) && e.iter().any(|e| matches!(e, Event::ChildSaDeleted { .. }))
        });
        let Some(Event::ChildSaRekeyed { new, .. }) = driver.events.iter().find(|e| is_rekeyed(e)).cloned() else {
            unreachable!("waited for it")
        };
        assert!(charon_child_keys(&charon.log()).contains(&keys(&new, true)), "{}", charon.log());
        driver.events.clear();
        assert!(charon.swanctl(&["--rekey", "--ike", "gw"]).status.success());
        driver.expect(&charon, "the client's IKE rekey", |e| e.iter().any(|e| matches!(e, Event::IkeSaRekeyed { .. })));
        // Let the client delete the old IKE SA.
        driver.pump(Duration::from_secs(2), |_| false);

        // The gateway rekeys the CHILD SA, then the IKE SA.
        driver.events.clear();
        driver.start(&charon, "our CHILD rekey", |r| r.rekey_child(Instant::now(), session, new.inbound_spi));
        driver.expect(&charon, "our CHILD rekey", |e| e.iter().any(is_rekeyed));
        let Some(Event::ChildSaRekeyed { new, .. }) = driver.events.iter().find(|e| is_rekeyed(e)).cloned() else {
            unreachable!("waited for it")
        };
        driver.pump(Duration::from_secs(2), |_| false);
        assert!(charon_child_keys(&charon.log()).contains(&keys(&new, false)), "{}", charon.log());
        driver.start(&charon, "our IKE rekey", |r| r.rekey_ike(Instant::now(), session));
        driver.expect(&charon, "our IKE rekey", |e| e.iter().any(|e| matches!(e, Event::IkeSaRekeyed { .. })));
        driver.pump(Duration::from_secs(2), |_| false);
        let sas = String::from_utf8_lossy(&charon.swanctl(&["--list-sas"]).stdout).into_owned();
        assert_eq!(sas.matches("ESTABLISHED").count(), 1, "the old IKE SA is gone: {sas}\n{}", charon.log());
        assert!(sas.contains("INSTALLED"), "{sas}");
    }

    // The client checks we are alive (dpd_delay = 1s): answered, no retransmissions.
    driver.pump(Duration::from_millis(2500), |_| false);
    let log = charon.log();
    let dpd = log.lines().any(|l| l.contains("generating INFORMATIONAL request") && l.ends_with("[ ]"));
    assert!(dpd, "no DPD from the client:\n{log}");

    if scenario.client_dies {
        drop(charon);
        driver.events.clear();
        driver.expect_quietly("our DPD to give up", |e| {
            e.iter().any(|e| matches!(e, Event::SessionClosed { reason: CloseReason::PeerUnresponsive, .. }))
        });
        assert!(driver.events.iter().any(|e| matches!(e, Event::ChildSaDeleted { .. })));
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }

    // The client disconnects.
    driver.events.clear();
    let mut terminate = charon.command(&["--terminate", "--ike", "gw", "--timeout", "10"]).spawn().unwrap();
    driver.expect(&charon, "the session to close", |e| {
        e.iter().any(|e| matches!(e, Event::SessionClosed { reason: CloseReason::PeerDeleted, .. }))
    });
    assert!(terminate.wait().unwrap().success(), "swanctl --terminate failed:\n{}", charon.log());
    let log = charon.log();
    assert!(!log.contains("retransmit"), "charon had to retransmit:\n{log}");
    drop(charon);
    let _ = std::fs::remove_dir_all(&dir);
}

fn in_namespace(scenario: Scenario) {
    if !Path::new(CHARON).exists() {
        eprintln!("{CHARON} not installed");
        return;
    }
    let test = std::thread::spawn(move || {
        enter_namespace();
        run(scenario);
    });
    if let Err(panic) = test.join() {
        std::panic::resume_unwind(panic);
    }
}

/// Certificates both ways (ECDSA, RFC 7427), AES-GCM, then every rekey from both sides.
#[test]
#[ignore = "needs root and strongSwan (charon-systemd, swanctl, kernel-libipsec)"]
fn strongswan_ecdsa_certificates_and_rekeys() {
    in_namespace(Scenario {
        server_alg: &rcgen::PKCS_ECDSA_P256_SHA256,
        proposals: "aes256gcm16-prfsha256-ecp384",
        esp: "aes256gcm16",
        rfc7427: true,
        eap: false,
        rekeys: true,
        server_auth: "ECDSA_WITH_SHA256_DER",
        small_fragments: false,
        client_dies: false,
        legacy: false,
    });
}

/// An RSA server without RFC 7427 on the client: our AUTH is method 1 (RSA with SHA-1),
/// the client's method 9 (raw ECDSA r||s); AES-CBC with HMAC-SHA2 for IKE, Curve25519,
/// ChaCha20-Poly1305 ESP; IKE_AUTH fragmented both ways; then the client dies and our
/// DPD gives up.
#[test]
#[ignore = "needs root and strongSwan (charon-systemd, swanctl, kernel-libipsec)"]
fn strongswan_rsa_method_1_and_cbc() {
    in_namespace(Scenario {
        server_alg: &rcgen::PKCS_RSA_SHA256,
        proposals: "aes128-sha256-prfsha256-x25519",
        esp: "chacha20poly1305",
        rfc7427: false,
        eap: false,
        rekeys: false,
        server_auth: "RSA signature",
        small_fragments: true,
        client_dies: true,
        legacy: false,
    });
}

/// EAP-MSCHAPv2 through the driver, AUTH from the MSK, RSA server certificate; AES-CBC
/// with HMAC-SHA2-512 and MODP 2048 for IKE.
#[test]
#[ignore = "needs root and strongSwan (charon-systemd, swanctl, kernel-libipsec)"]
fn strongswan_eap_mschapv2() {
    in_namespace(Scenario {
        server_alg: &rcgen::PKCS_RSA_SHA256,
        proposals: "aes256-sha512-modp2048",
        esp: "aes128gcm16",
        rfc7427: true,
        eap: true,
        rekeys: false,
        server_auth: "RSA_EMSA_PKCS1_SHA2_256",
        small_fragments: false,
        client_dies: false,
        legacy: false,
    });
}

/// What stock Windows negotiates: AES-CBC, SHA-1, DH group 2, EAP-MSCHAPv2, RSA method 1
/// (no RFC 7427). ESP stays AEAD (Windows needs an IPsec policy for that).
#[test]
#[ignore = "needs root and strongSwan (charon-systemd, swanctl, kernel-libipsec)"]
fn strongswan_windows_like_legacy_algorithms() {
    in_namespace(Scenario {
        server_alg: &rcgen::PKCS_RSA_SHA256,
        proposals: "aes256-sha1-modp1024",
        esp: "aes256gcm16",
        rfc7427: false,
        eap: true,
        rekeys: false,
        server_auth: "RSA signature",
        small_fragments: false,
        client_dies: false,
        legacy: true,
    });
}
