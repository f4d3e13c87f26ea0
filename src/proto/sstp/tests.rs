//! The SSTP client and server cores talking to each other in memory, with the test
//! playing the driver (MS-CHAPv2 checked against a local NT hash, addresses from a
//! fixed plan).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use super::client::{SstpClient, SstpClientConfig, SstpClientEvent};
use super::packet::{self, MessageType, Packet, attribute, status};
use super::*;
use crate::crypto::mschapv2;
use crate::proto::ppp::packet::{code, control_frame, protocol};
use crate::proto::ppp::{AuthVerdict, MsChapV2Verify, NetworkConfig};

const USER: &str = "CONTOSO\\alice";
const PASSWORD: &str = "correct horse";

fn cert_hashes() -> CertHashes {
    CertHashes::of_der(b"not really a certificate, but hashed the same way")
}

fn network() -> NetworkConfig {
    NetworkConfig {
        local: Ipv4Addr::new(10, 8, 0, 1),
        peer: Ipv4Addr::new(10, 8, 0, 7),
        primary_dns: Some(Ipv4Addr::new(10, 0, 0, 53)),
        secondary_dns: Some(Ipv4Addr::new(10, 0, 1, 53)),
    }
}

/// What the gateway's driver does with a local user list of NT hashes.
fn verdict(request: &MsChapV2Verify) -> AuthVerdict {
    let hash = mschapv2::nt_password_hash(PASSWORD);
    let user = request.user.as_bytes();
    if request.user != USER
        || !mschapv2::verify_nt_response(
            &hash,
            &request.authenticator_challenge,
            &request.peer_challenge,
            user,
            &request.nt_response,
        )
    {
        return AuthVerdict::Failure { message: None };
    }
    AuthVerdict::Success {
        authenticator_response: mschapv2::generate_authenticator_response(
            &hash,
            &request.nt_response,
            &request.peer_challenge,
            &request.authenticator_challenge,
            user,
        ),
        keys: mschapv2::mppe_keys(&hash, &request.nt_response).into(),
    }
}

struct Link {
    now: Instant,
    server: SstpServer,
    client: SstpClient,
    /// Answer MS-CHAPv2 at once; otherwise the request waits in `pending_verify`.
    answer_auth: bool,
    /// Deliver the client's bytes to the server one at a time.
    byte_by_byte: bool,
    pending_verify: Option<MsChapV2Verify>,
    /// Every batch of bytes moved, `true` for client to server.
    trace: Vec<(bool, Vec<u8>)>,
    server_events: Vec<Event>,
    client_events: Vec<SstpClientEvent>,
}

impl Link {
    fn new(password: &str, call_connected_early: bool, client_cert_hashes: CertHashes) -> Self {
        let now = Instant::now();
        let client = SstpClient::new(SstpClientConfig {
            host: "sstp.test".into(),
            user: USER.into(),
            password: password.into(),
            eap_tls: None,
            server_cert_hashes: client_cert_hashes,
            call_connected_early,
        });
        Link {
            now,
            server: SstpServer::new(SstpSettings::new(cert_hashes()), now),
            client,
            answer_auth: true,
            byte_by_byte: false,
            pending_verify: None,
            trace: Vec::new(),
            server_events: Vec::new(),
            client_events: Vec::new(),
        }
    }

    fn connected() -> Self {
        let mut link = Link::new(PASSWORD, true, cert_hashes());
        link.run();
        assert!(link.server.is_established(), "events: {:?}", link.server_events);
        link
    }

    /// Moves bytes both ways and plays the driver until nothing moves.
    fn run(&mut self) {
        for _ in 0..100 {
            let mut moved = false;
            if let Some(bytes) = self.client.poll_transmit() {
                self.trace.push((true, bytes.clone()));
                if self.byte_by_byte {
                    for byte in bytes {
                        self.server.handle_input(self.now, &[byte]);
                    }
                } else {
                    self.server.handle_input(self.now, &bytes);
                }
                moved = true;
            }
            if let Some(bytes) = self.server.poll_transmit() {
                self.trace.push((false, bytes.clone()));
                self.client.handle_input(&bytes);
                moved = true;
            }
            while let Some(event) = self.server.poll_event() {
                moved = true;
                match event {
                    Event::VerifyMsChapV2(request) if self.answer_auth => {
                        self.server.answer_ms_chap_v2(self.now, verdict(&request))
                    }
                    Event::VerifyMsChapV2(request) => self.pending_verify = Some(request),
                    Event::Authenticated { .. } => self.server.assign_network(self.now, network()),
                    other => self.server_events.push(other),
                }
            }
            while let Some(event) = self.client.poll_event() {
                moved = true;
                self.client_events.push(event);
            }
            if !moved {
                return;
            }
        }
        panic!("the exchange never settles");
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.server.handle_timeout(self.now);
    }

    fn server_closed(&self) -> Option<&CloseReason> {
        self.server_events.iter().find_map(|e| match e {
            Event::Closed(reason) => Some(reason),
            _ => None,
        })
    }

    fn client_closed(&self) -> Option<&str> {
        self.client_events.iter().find_map(|e| match e {
            SstpClientEvent::Closed(reason) => Some(reason.as_str()),
            _ => None,
        })
    }
}

/// An ICMP echo request with valid checksums (so that tshark finds nothing to flag).
fn ip_packet(from: Ipv4Addr, to: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1];
    icmp.extend_from_slice(payload);
    let checksum = internet_checksum(&[&icmp]);
    icmp[2..4].copy_from_slice(&checksum.to_be_bytes());
    let total = u16::try_from(20 + icmp.len()).unwrap();
    let mut packet = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0];
    packet[2..4].copy_from_slice(&total.to_be_bytes());
    packet.extend_from_slice(&from.octets());
    packet.extend_from_slice(&to.octets());
    let checksum = internet_checksum(&[&packet]);
    packet[10..12].copy_from_slice(&checksum.to_be_bytes());
    packet.extend_from_slice(&icmp);
    packet
}

#[test]
fn full_connect_with_ms_chap_v2_and_ip_both_ways() {
    let mut link = Link::connected();
    let established = link.server_events.iter().find_map(|e| match e {
        Event::Established { user, address } => Some((user.clone(), *address)),
        _ => None,
    });
    assert_eq!(established, Some((USER.to_string(), network().peer)));
    assert!(matches!(link.server_events.first(), Some(Event::Accepted { correlation_id: Some(_) })));
    let up = link.client_events.iter().find(|e| matches!(e, SstpClientEvent::IpUp { .. }));
    assert_eq!(
        up,
        Some(&SstpClientEvent::IpUp {
            address: network().peer,
            primary_dns: network().primary_dns,
            secondary_dns: network().secondary_dns,
        })
    );

    let upstream = ip_packet(network().peer, Ipv4Addr::new(10, 1, 0, 5), b"ping");
    assert!(link.client.send_ip(&upstream));
    let downstream = ip_packet(Ipv4Addr::new(10, 1, 0, 5), network().peer, &[0xab; 1400]);
    link.server.send_ip(&downstream).unwrap();
    link.run();
    assert!(link.server_events.iter().any(|e| matches!(e, Event::TunnelPacket(p) if *p == upstream)));
    assert!(link.client_events.iter().any(|e| matches!(e, SstpClientEvent::TunnelPacket(p) if *p == downstream)));
    assert_eq!(link.server.send_ip(&[0; 4092]), Err(SendError::TooLong(4092)));
    assert!(!link.server_events.iter().any(|e| matches!(e, Event::Dropped(_))), "{:?}", link.server_events);
}

#[test]
fn call_connected_after_the_chap_success_also_binds() {
    let mut link = Link::new(PASSWORD, false, cert_hashes());
    link.run();
    assert!(link.server.is_established(), "{:?}", link.server_events);
}

#[test]
fn call_connected_before_the_verdict_is_queued_then_verified() {
    let mut link = Link::new(PASSWORD, true, cert_hashes());
    link.answer_auth = false;
    link.run();
    assert!(link.client.call_connected_sent(), "the client bound before the verdict, as Windows does");
    assert!(link.server_closed().is_none() && !link.server.is_established());
    let request = link.pending_verify.take().expect("the server asked for a verdict");
    link.server.answer_ms_chap_v2(link.now, verdict(&request));
    link.run();
    assert!(link.server.is_established(), "{:?}", link.server_events);
}

#[test]
fn wrong_password_is_refused() {
    let mut link = Link::new("wrong horse", true, cert_hashes());
    link.run();
    link.advance(Duration::from_secs(3));
    link.run();
    assert!(!link.server.is_established());
    assert!(
        matches!(link.server_closed(), Some(CloseReason::Ppp(crate::proto::ppp::CloseReason::AuthFailed(_)))),
        "{:?}",
        link.server_events
    );
    let client_reason = link.client_closed().expect("the client was told");
    assert!(client_reason.contains("E=691"), "{client_reason}");
    assert!(link.server.is_closed() && link.client.is_closed());
}

#[test]
fn a_different_certificate_fails_the_crypto_binding() {
    // What a TLS-intercepting proxy looks like: the client saw another certificate.
    let mut link = Link::new(PASSWORD, true, CertHashes::of_der(b"the proxy's certificate"));
    link.run();
    assert!(!link.server.is_established());
    assert!(link.client.is_closed(), "the client got CALL_ABORT");
    link.advance(Duration::from_secs(3));
    assert_eq!(
        link.server.poll_event().map(|e| format!("{e:?}")),
        Some(format!("{:?}", Event::Closed(CloseReason::CryptoBinding(binding::BindingError::CertHashMismatch))))
    );
}

#[test]
fn silent_client_gets_an_echo_then_is_aborted() {
    let mut link = Link::connected();
    link.advance(Duration::from_secs(60));
    let echo = link.server.poll_transmit().expect("an ECHO_REQUEST");
    assert_eq!(echo, packet::control(MessageType::EchoRequest, &[]));
    // The client answers: the connection lives on.
    link.client.handle_input(&echo);
    link.run();
    link.advance(Duration::from_secs(61));
    assert!(link.server_closed().is_none() && !link.server.is_closed());
    // Now it stays silent: another echo, then an abort 60 s later, then the close.
    let _ = link.server.poll_transmit();
    link.advance(Duration::from_secs(60));
    let abort = link.server.poll_transmit().expect("a CALL_ABORT");
    assert!(matches!(Packet::parse(&abort), Ok(Packet::Control(m)) if m.message_type == MessageType::CallAbort));
    link.advance(Duration::from_secs(3));
    link.run();
    assert_eq!(link.server_closed(), Some(&CloseReason::HelloTimeout));
}

#[test]
fn stalled_connections_time_out() {
    let now = Instant::now();
    let mut server = SstpServer::new(SstpSettings::new(cert_hashes()), now);
    // Half a request head, then nothing.
    server.handle_input(now, b"SSTP_DUPLEX_POST /sra_");
    assert_eq!(server.poll_timeout(), Some(now + Duration::from_secs(60)));
    server.handle_timeout(now + Duration::from_secs(60));
    assert!(matches!(server.poll_event(), Some(Event::Closed(CloseReason::NegotiationTimeout))));
    assert_eq!(server.poll_timeout(), None);
}

#[test]
fn client_disconnect_is_acked() {
    let mut link = Link::connected();
    link.client.disconnect();
    link.run();
    assert_eq!(link.client_closed(), Some("disconnected"));
    link.advance(Duration::from_secs(1));
    assert_eq!(link.server.poll_event().map(|e| format!("{e:?}")), Some("Closed(PeerDisconnected)".to_string()));
}

#[test]
fn gateway_disconnect_ends_ppp_then_sstp() {
    let mut link = Link::connected();
    link.server.disconnect(link.now, "revoked by the administrator");
    link.run();
    assert!(link.server.is_closed());
    assert_eq!(link.server_closed(), Some(&CloseReason::Local("revoked by the administrator".into())));
    assert_eq!(link.client_closed(), Some("the gateway ended the PPP link"));
}

#[test]
fn other_encapsulated_protocols_are_refused() {
    let now = Instant::now();
    let mut server = SstpServer::new(SstpSettings::new(cert_hashes()), now);
    server.handle_input(now, &http::client_request("gw", "1"));
    let _ = server.poll_transmit();
    let request = packet::control(MessageType::CallConnectRequest, &[(attribute::ENCAPSULATED_PROTOCOL_ID, &[0, 2])]);
    server.handle_input(now, &request);
    let nak = server.poll_transmit().unwrap();
    let Ok(Packet::Control(message)) = Packet::parse(&nak) else { panic!("control") };
    assert_eq!(message.message_type, MessageType::CallConnectNak);
    let info = message.attribute(attribute::STATUS_INFO).unwrap();
    assert_eq!(info, packet::status_info(attribute::ENCAPSULATED_PROTOCOL_ID, status::VALUE_NOT_SUPPORTED, &[0, 2]));
    for _ in 0..3 {
        server.handle_input(now, &request);
    }
    let abort = server.poll_transmit().unwrap();
    let last = &abort[abort.len() - 20..];
    assert!(matches!(Packet::parse(last), Ok(Packet::Control(m)) if m.message_type == MessageType::CallAbort));
    server.handle_timeout(now + Duration::from_secs(3));
    let events: Vec<_> = std::iter::from_fn(|| server.poll_event()).collect();
    assert!(matches!(events.last(), Some(Event::Closed(CloseReason::ProtocolNotSupported))), "{events:?}");
}

#[test]
fn ipv6cp_and_ccp_get_an_lcp_protocol_reject() {
    let mut link = Link::connected();
    for rejected in [protocol::IPV6CP, protocol::CCP] {
        let mut data = Vec::new();
        packet::push_data(
            &mut data,
            &control_frame(rejected, code::CONFIGURE_REQUEST, 1, &[1, 10, 0, 0, 0, 0, 0, 0, 0, 1]),
        );
        link.server.handle_input(link.now, &data);
        let reply = link.server.poll_transmit().unwrap();
        let Ok(Packet::Data(frame)) = Packet::parse(&reply) else { panic!("a data packet") };
        assert_eq!(&frame[..5], &[0xff, 0x03, 0xc0, 0x21, code::PROTOCOL_REJECT]);
        assert_eq!(&frame[8..10], &rejected.to_be_bytes());
    }
    assert!(link.server.is_established());
}

#[test]
fn malformed_input_is_dropped_with_a_reason() {
    let now = Instant::now();
    let mut server = SstpServer::new(SstpSettings::new(cert_hashes()), now);
    server.handle_input(now, &http::client_request("gw", "1"));
    // A data packet before the call is accepted.
    server.handle_input(now, &[0x10, 0x00, 0x00, 0x08, 0xff, 0x03, 0x00, 0x21]);
    // An unknown message type, then a well-formed CALL_CONNECT_REQUEST.
    server.handle_input(now, &[0x10, 0x01, 0x00, 0x08, 0x00, 0x63, 0x00, 0x00]);
    server.handle_input(
        now,
        &packet::control(MessageType::CallConnectRequest, &[(attribute::ENCAPSULATED_PROTOCOL_ID, &[0, 1])]),
    );
    // A PPP frame with a broken protocol field, and an IPv4 packet before IPCP.
    let mut data = Vec::new();
    packet::push_data(&mut data, &[0xff, 0x03, 0xc0, 0x20]);
    packet::push_data(&mut data, &[0xff, 0x03, 0x00, 0x21, 0x45]);
    server.handle_input(now, &data);
    let drops: Vec<String> = std::iter::from_fn(|| server.poll_event())
        .filter_map(|e| match e {
            Event::Dropped(reason) => Some(reason.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(
        drops,
        [
            "data packet before CALL_CONNECT_ACK",
            "malformed SSTP control message: control message type 99 is unknown",
            "PPP: PPP protocol field 0xc020 is not a valid protocol number",
            "PPP: IPv4 frame before LCP is open",
        ]
    );
    // A broken header loses the stream: abort.
    server.handle_input(now, &[0x20, 0x00, 0x00, 0x08]);
    server.handle_timeout(now + Duration::from_secs(3));
    assert!(matches!(
        server.poll_event(),
        Some(Event::Closed(CloseReason::Framing(packet::PacketError::BadVersion(0x20))))
    ));
}

#[test]
fn bad_http_gets_an_error_status_and_closes() {
    let now = Instant::now();
    let mut server = SstpServer::new(SstpSettings::new(cert_hashes()), now);
    server.handle_input(now, b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n");
    assert!(server.poll_transmit().unwrap().starts_with(b"HTTP/1.1 405 "));
    assert!(matches!(server.poll_event(), Some(Event::Closed(CloseReason::Http(http::HttpError::WrongMethod(_))))));
    assert!(server.is_closed());
}

#[test]
fn write_transmit_writes_what_poll_transmit_would_return() {
    let now = Instant::now();
    let mut server = SstpServer::new(SstpSettings::new(cert_hashes()), now);
    server.handle_input(now, b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n");
    let mut written = Vec::new();
    server.write_transmit(&mut written).unwrap();
    assert!(written.starts_with(b"HTTP/1.1 405 "), "{:?}", String::from_utf8_lossy(&written));
    assert_eq!(server.pending_output(), 0, "consumed");
    assert!(server.poll_transmit().is_none());
    let before = written.len();
    server.write_transmit(&mut written).unwrap();
    assert_eq!(written.len(), before, "nothing more written");
}

#[test]
fn byte_by_byte_delivery_connects_too() {
    let mut link = Link::new(PASSWORD, true, cert_hashes());
    link.byte_by_byte = true;
    link.run();
    assert!(link.server.is_established(), "{:?}", link.server_events);
}

/// A pcap file (microsecond timestamps) of `packets` with the given link type.
fn pcap(link_type: u32, packets: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for field in [0xa1b2_c3d4u32.to_le_bytes(), [2, 0, 4, 0], [0; 4], [0; 4], 65535u32.to_le_bytes()] {
        out.extend_from_slice(&field);
    }
    out.extend_from_slice(&link_type.to_le_bytes());
    for (i, packet) in packets.iter().enumerate() {
        let len = u32::try_from(packet.len()).unwrap();
        for field in [1_800_000_000u32, u32::try_from(i).unwrap() * 1000, len, len] {
            out.extend_from_slice(&field.to_le_bytes());
        }
        out.extend_from_slice(packet);
    }
    out
}

fn internet_checksum(chunks: &[&[u8]]) -> u16 {
    let mut sum = 0u32;
    for chunk in chunks {
        for pair in chunk.chunks(2) {
            sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Ethernet + IPv4 + TCP frames carrying the traced stream on port 80 (no TLS, so
/// Wireshark's HTTP dissector sees SSTP_DUPLEX_POST and hands the rest to SSTP), with a
/// TCP handshake first.
fn tcp_frames(trace: &[(bool, Vec<u8>)]) -> Vec<Vec<u8>> {
    let client = ([192, 0, 2, 10], 50000u16);
    let server = ([192, 0, 2, 1], 80u16);
    let mut seq = [1000u32, 5000u32]; // client, server
    let mut frames = Vec::new();
    let mut segment = |from_client: bool, flags: u8, payload: &[u8], seq: &mut [u32; 2]| {
        let (src, dst) = if from_client { (client, server) } else { (server, client) };
        let (mine, theirs) = if from_client { (0, 1) } else { (1, 0) };
        let mut tcp = Vec::new();
        tcp.extend_from_slice(&src.1.to_be_bytes());
        tcp.extend_from_slice(&dst.1.to_be_bytes());
        tcp.extend_from_slice(&seq[mine].to_be_bytes());
        tcp.extend_from_slice(&if flags & 0x10 != 0 { seq[theirs] } else { 0 }.to_be_bytes());
        tcp.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
        tcp.extend_from_slice(payload);
        let tcp_len = u16::try_from(tcp.len()).unwrap();
        let pseudo = [&src.0[..], &dst.0[..], &[0, 6], &tcp_len.to_be_bytes()].concat();
        let checksum = internet_checksum(&[&pseudo, &tcp]);
        tcp[16..18].copy_from_slice(&checksum.to_be_bytes());
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 6, 0, 0];
        ip[2..4].copy_from_slice(&(20 + tcp_len).to_be_bytes());
        ip.extend_from_slice(&src.0);
        ip.extend_from_slice(&dst.0);
        let checksum = internet_checksum(&[&ip]);
        ip[10..12].copy_from_slice(&checksum.to_be_bytes());
        let mut frame = vec![2, 0, 0, 0, 0, u8::from(!from_client), 2, 0, 0, 0, 0, u8::from(from_client), 0x08, 0x00];
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&tcp);
        seq[mine] = seq[mine].wrapping_add(u32::try_from(payload.len()).unwrap() + u32::from(flags & 0x02 != 0));
        frames.push(frame);
    };
    segment(true, 0x02, &[], &mut seq);
    segment(false, 0x12, &[], &mut seq);
    segment(true, 0x10, &[], &mut seq);
    for (from_client, bytes) in trace {
        for piece in bytes.chunks(1400) {
            segment(*from_client, 0x18, piece, &mut seq);
        }
    }
    frames
}

/// The PPP frames inside the traced SSTP streams, in order.
fn ppp_frames(trace: &[(bool, Vec<u8>)]) -> Vec<Vec<u8>> {
    let mut streams = [Vec::new(), Vec::new()];
    let mut frames = Vec::new();
    for (from_client, bytes) in trace {
        let stream = &mut streams[usize::from(*from_client)];
        stream.extend_from_slice(bytes);
        let is_http = stream.starts_with(b"SSTP_DUPLEX_POST") || stream.starts_with(b"HTTP/1.1");
        if let Some(end) = stream.windows(4).position(|w| w == b"\r\n\r\n").filter(|_| is_http) {
            stream.drain(..end + 4);
        }
        while let Ok(Some(length)) = packet::packet_len(stream) {
            if length > stream.len() {
                break;
            }
            if let Ok(Packet::Data(frame)) = Packet::parse(&stream[..length]) {
                frames.push(frame.to_vec());
            }
            stream.drain(..length);
        }
    }
    frames
}

/// Decodes `file` with tshark and returns every line that reports a malformed packet or
/// an expert warning or error, and the protocols seen.
fn tshark_problems(file: &std::path::Path) -> Option<(Vec<String>, String)> {
    let run = |args: &[&str]| {
        std::process::Command::new("tshark").arg("-r").arg(file).args(args).output().ok().filter(|o| o.status.success())
    };
    let problems = run(&["-Y", "_ws.malformed || _ws.expert.severity >= \"warning\"", "-V"])?;
    let protocols = run(&["-T", "fields", "-e", "frame.protocols"])?;
    let problems = String::from_utf8_lossy(&problems.stdout).lines().map(str::to_string).collect();
    Some((problems, String::from_utf8_lossy(&protocols.stdout).into_owned()))
}

#[test]
fn tshark_decodes_sstp_and_ppp_without_complaint() {
    let mut link = Link::connected();
    assert!(link.client.send_ip(&ip_packet(network().peer, Ipv4Addr::new(10, 1, 0, 5), b"ping")));
    link.server.send_ip(&ip_packet(Ipv4Addr::new(10, 1, 0, 5), network().peer, b"pong")).unwrap();
    link.client.send_echo_request();
    link.run();
    link.client.disconnect();
    link.run();
    let dir = std::env::temp_dir().join(format!("p2sgw-sstp-pcap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ppp_file = dir.join("ppp.pcap");
    let tcp_file = dir.join("sstp.pcap");
    // DLT_PPP (9): the frames with their FF 03 address and control bytes.
    std::fs::write(&ppp_file, pcap(9, &ppp_frames(&link.trace))).unwrap();
    std::fs::write(&tcp_file, pcap(1, &tcp_frames(&link.trace))).unwrap();
    let results = [tshark_problems(&ppp_file), tshark_problems(&tcp_file)];
    let _ = std::fs::remove_dir_all(&dir);
    let [Some((ppp_problems, ppp_protocols)), Some((tcp_problems, tcp_protocols))] = results else {
        panic!("tshark did not run (tests/run installs it)");
    };
    assert!(ppp_problems.is_empty(), "{}", ppp_problems.join("\n"));
    assert!(tcp_problems.is_empty(), "{}", tcp_problems.join("\n"));
    for protocol in ["ppp:lcp", "ppp:chap", "ppp:ipcp", "ppp:ip"] {
        assert!(ppp_protocols.contains(protocol), "{protocol} missing from\n{ppp_protocols}");
    }
    for protocol in ["http", "sstp", "sstp:ppp:lcp", "sstp:ppp:chap", "sstp:ppp:ipcp"] {
        assert!(tcp_protocols.contains(protocol), "{protocol} missing from\n{tcp_protocols}");
    }
}

#[test]
fn the_data_path_delivers_packets_in_place() {
    let mut link = Link::connected();
    let first = ip_packet(network().peer, Ipv4Addr::new(10, 1, 0, 5), b"one");
    let second = ip_packet(network().peer, Ipv4Addr::new(10, 1, 0, 5), b"two");
    assert!(link.client.send_ip(&first) && link.client.send_ip(&second));
    let bytes = link.client.poll_transmit().unwrap();
    let mut delivered = Vec::new();
    // Split mid-packet: the first call delivers one packet and keeps the rest.
    let (head, tail) = bytes.split_at(bytes.len() - 5);
    link.server.handle_input_with(link.now, head, Some(&mut |packet: &[u8]| delivered.push(packet.to_vec())));
    assert_eq!(delivered, std::slice::from_ref(&first));
    link.server.handle_input_with(link.now, tail, Some(&mut |packet: &[u8]| delivered.push(packet.to_vec())));
    assert_eq!(delivered, [first, second]);
    assert!(link.server.poll_event().is_none(), "no events on the data path");
    assert_eq!(link.server.peer_mru(), Some(4091));
}
