//! Cost per call of the packet codecs on the gateway's paths: OpenVPN control and data
//! headers, IKEv2 header and payload chain, the ESP header and port-4500 demultiplexing,
//! SSTP packets and PPP frames. Every input is built with the codec's own encoder (or
//! laid out by hand where there is none) and decoded once, with its fields checked,
//! before anything is timed.
//!
//!   cargo bench --bench codec

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use p2sgw::crypto::AeadAlgorithm;
use p2sgw::proto::esp::{self, EspHeader, NEXT_HEADER_IPV4, OutboundSa, Port4500, SaKey, classify_port_4500};
use p2sgw::proto::ike::message::{
    self as ike, Header, Message, Notify, Payload, Proposal, Transform, exchange, flags, notify, parse_chain,
    transform_type,
};
use p2sgw::proto::openvpn::data::{DataHeader, DataKey, DataOpcode, HEADROOM};
use p2sgw::proto::openvpn::keys::{Key2, Role};
use p2sgw::proto::openvpn::packet::{AckList, ControlBody, ControlHeader, Opcode};
use p2sgw::proto::ppp::packet::{
    ControlPacket, Frame, code, lcp_option, parse_options, protocol, push_frame, push_option,
};
use p2sgw::proto::sstp::packet::{self as sstp, MessageType, Packet, attribute};

const SESSION_ID: [u8; 8] = [1, 2, 3, 4, 5, 6, 7, 8];
const REMOTE_SESSION_ID: [u8; 8] = [9, 8, 7, 6, 5, 4, 3, 2];

fn openvpn(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec/openvpn");
    group.throughput(Throughput::Elements(1));

    // P_CONTROL_V1 acknowledging one packet and carrying a 100-byte TLS record, as during
    // a handshake (no tls-crypt: the envelope is timed with its cipher elsewhere).
    let header = ControlHeader { opcode: Opcode::ControlV1, key_id: 0, session_id: SESSION_ID };
    let mut acks = AckList::default();
    acks.push(41);
    let tls_record = [0x17u8; 100];
    let body =
        ControlBody { acks, remote_session_id: Some(REMOTE_SESSION_ID), message_id: Some(42), payload: &tls_record };
    let mut packet = header.to_bytes().to_vec();
    body.encode(&mut packet);
    assert_eq!(ControlHeader::parse(&packet), Ok(header));
    assert_eq!(ControlBody::parse(Opcode::ControlV1, &packet[ControlHeader::LEN..]), Ok(body.clone()));

    group.bench_function("control_header_parse", |b| b.iter(|| ControlHeader::parse(black_box(&packet))));
    group.bench_function("control_body_parse", |b| {
        b.iter(|| ControlBody::parse(Opcode::ControlV1, black_box(&packet[ControlHeader::LEN..])))
    });
    let mut out = Vec::with_capacity(packet.len());
    group.bench_function("control_packet_encode", |b| {
        b.iter(|| {
            out.clear();
            out.extend_from_slice(&black_box(&header).to_bytes());
            black_box(&body).encode(&mut out);
            black_box(out.len())
        })
    });

    // A sealed 1400-byte P_DATA_V2 packet.
    let key2 = Key2::from_ekm(std::array::from_fn(|i| i as u8));
    let key = DataKey::new(1, &key2.direction_keys(AeadAlgorithm::Aes256Gcm, Role::Client)).expect("client key");
    let mut data = vec![0x45u8; HEADROOM + 1400];
    let n = key.seal_v2(7, &mut data, 1400).expect("seal");
    let data = &data[..n];
    let parsed = DataHeader::parse(data).expect("data header");
    assert_eq!((parsed.opcode, parsed.key_id, parsed.peer_id, parsed.packet_id), (DataOpcode::V2, 1, Some(7), 1));
    group.bench_function("data_header_parse", |b| b.iter(|| DataHeader::parse(black_box(data))));
    group.finish();
}

/// An IKE_SA_INIT request as a client sends it: SA (one proposal), KE (P-256), nonce,
/// NAT detection and capability notifies.
fn ike_sa_init() -> Message {
    let proposal = Proposal {
        number: 1,
        protocol: ike::protocol::IKE,
        spi: Vec::new(),
        transforms: vec![
            Transform::new(transform_type::ENCR, 20, Some(256)), // AES-GCM-16
            Transform::new(transform_type::PRF, 5, None),        // HMAC-SHA2-256
            Transform::new(transform_type::DH, 19, None),        // ECP-256
        ],
    };
    let header = Header {
        spi_i: [0x5a, 1, 2, 3, 4, 5, 6, 7],
        spi_r: [0; 8],
        next_payload: 0,
        exchange: exchange::IKE_SA_INIT,
        flags: flags::INITIATOR,
        message_id: 0,
        length: 0,
    };
    let payloads = vec![
        Payload::Sa(vec![proposal]),
        Payload::Ke { group: 19, data: vec![0x04; 64] },
        Payload::Nonce(vec![0x11; 32]),
        Payload::Notify(Notify::new(notify::NAT_DETECTION_SOURCE_IP, vec![0x22; 20])),
        Payload::Notify(Notify::new(notify::NAT_DETECTION_DESTINATION_IP, vec![0x33; 20])),
        Payload::Notify(Notify::new(notify::IKEV2_FRAGMENTATION_SUPPORTED, Vec::new())),
        Payload::Notify(Notify::new(notify::SIGNATURE_HASH_ALGORITHMS, vec![0, 2, 0, 3, 0, 4])),
    ];
    Message { header, payloads }
}

fn ikev2(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec/ike");
    group.throughput(Throughput::Elements(1));
    let message = ike_sa_init();
    let bytes = message.encode();
    let parsed = Message::parse(&bytes).expect("IKE_SA_INIT parses");
    assert_eq!(parsed.header.length as usize, bytes.len());
    assert_eq!(parsed.payloads, message.payloads);

    group.bench_function("header_parse", |b| b.iter(|| Header::parse(black_box(&bytes))));
    group.bench_function("sa_init_parse", |b| b.iter(|| Message::parse(black_box(&bytes))));
    let chain = &bytes[ike::HEADER_LEN..];
    group.bench_function("sa_init_payload_chain_parse", |b| {
        b.iter(|| parse_chain(parsed.header.next_payload, black_box(chain), ike::HEADER_LEN))
    });
    group.bench_function("sa_init_encode", |b| b.iter(|| black_box(&message).encode()));
    group.finish();
}

fn esp_and_port_4500(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec/esp");
    group.throughput(Throughput::Elements(1));
    let algorithm = AeadAlgorithm::Aes256Gcm;
    let keymat: Vec<u8> = (0..esp::keymat_len(algorithm) as u8).collect();
    let sa = OutboundSa::new(0xc1a0_0001, SaKey::from_keymat(algorithm, &keymat).expect("SA key")).expect("SA");
    let mut packet = vec![0x45u8; esp::HEADROOM + 1400 + esp::MAX_TAILROOM];
    let sealed = sa.seal(&mut packet, 1400, NEXT_HEADER_IPV4).expect("seal");
    let packet = &packet[..sealed.len];
    assert_eq!(EspHeader::parse(packet), Ok(EspHeader { spi: 0xc1a0_0001, seq: 1 }));
    assert_eq!(classify_port_4500(packet), Ok(Port4500::Esp { spi: 0xc1a0_0001 }));
    let ike_datagram = esp::with_non_esp_marker(&ike_sa_init().encode());
    assert!(matches!(classify_port_4500(&ike_datagram), Ok(Port4500::Ike(m)) if m.len() + 4 == ike_datagram.len()));

    group.bench_function("esp_header_parse", |b| b.iter(|| EspHeader::parse(black_box(packet))));
    group.bench_function("port_4500_classify_esp", |b| b.iter(|| classify_port_4500(black_box(packet))));
    group.bench_function("port_4500_classify_ike", |b| b.iter(|| classify_port_4500(black_box(&ike_datagram))));
    group.finish();
}

fn sstp_and_ppp(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec/sstp_ppp");
    group.throughput(Throughput::Elements(1));

    // An SSTP data packet carrying an uncompressed PPP frame with a 1400-byte IPv4 packet.
    let ip_packet = vec![0x45u8; 1400];
    let mut frame = Vec::new();
    push_frame(&mut frame, protocol::IPV4, &ip_packet);
    let mut stream = Vec::new();
    assert!(sstp::push_data(&mut stream, &frame));
    assert_eq!(sstp::packet_len(&stream), Ok(Some(stream.len())));
    assert_eq!(Packet::parse(&stream), Ok(Packet::Data(&frame)));
    assert_eq!(Frame::parse(&frame), Ok(Frame { protocol: protocol::IPV4, information: &ip_packet }));

    group.bench_function("sstp_data_parse", |b| {
        b.iter(|| {
            let len = sstp::packet_len(black_box(&stream)).ok().flatten().unwrap_or(0);
            Packet::parse(&stream[..len])
        })
    });
    group.bench_function("ppp_frame_parse", |b| b.iter(|| Frame::parse(black_box(&frame))));
    let mut out = Vec::with_capacity(stream.len());
    group.bench_function("sstp_ppp_data_encode", |b| {
        b.iter(|| {
            out.clear();
            sstp::push_data_header(&mut out, frame.len());
            push_frame(&mut out, protocol::IPV4, black_box(&ip_packet));
            black_box(out.len())
        })
    });

    // SSTP Call Connect Request (MS-SSTP 2.2.9): one ENCAPSULATED_PROTOCOL_ID attribute.
    let ppp_id = sstp::ENCAPSULATED_PROTOCOL_PPP.to_be_bytes();
    let request = sstp::control(MessageType::CallConnectRequest, &[(attribute::ENCAPSULATED_PROTOCOL_ID, &ppp_id)]);
    let Ok(Packet::Control(parsed)) = Packet::parse(&request) else { panic!("Call Connect Request does not parse") };
    assert_eq!(parsed.message_type, MessageType::CallConnectRequest);
    assert_eq!(parsed.attribute(attribute::ENCAPSULATED_PROTOCOL_ID), Some(&ppp_id[..]));
    group.bench_function("sstp_control_parse", |b| b.iter(|| Packet::parse(black_box(&request))));

    // LCP Configure-Request with MRU, authentication protocol (MS-CHAPv2) and magic number.
    let mut options = Vec::new();
    push_option(&mut options, lcp_option::MRU, &1400u16.to_be_bytes());
    push_option(&mut options, lcp_option::AUTH_PROTOCOL, &[0xc2, 0x23, 0x81]);
    push_option(&mut options, lcp_option::MAGIC_NUMBER, &0x1234_5678u32.to_be_bytes());
    let lcp = ControlPacket::encode(code::CONFIGURE_REQUEST, 1, &options);
    let packet = ControlPacket::parse(&lcp).expect("LCP parses");
    assert_eq!((packet.code, packet.id, packet.data), (code::CONFIGURE_REQUEST, 1, &options[..]));
    let parsed = parse_options(packet.data).expect("options parse");
    assert_eq!(parsed.iter().map(|o| o.kind).collect::<Vec<_>>(), [1, 3, 5]);
    assert_eq!(parsed[0].as_u16(), Some(1400));
    group.bench_function("lcp_configure_request_parse", |b| {
        b.iter(|| ControlPacket::parse(black_box(&lcp)).map(|p| parse_options(p.data).map(|o| o.len())))
    });
    group.finish();
}

criterion_group!(benches, openvpn, ikev2, esp_and_port_4500, sstp_and_ppp);
criterion_main!(benches);
