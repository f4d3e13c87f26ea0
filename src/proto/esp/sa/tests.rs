use std::collections::HashSet;
use std::sync::Arc;

use super::*;
use crate::crypto::replay::WINDOW_SIZE;
use crate::testing::hex;

/// A published ESP packet: the SA's KEYMAT slice (key || salt), header fields, the
/// inner packet and its Next Header, and the whole packet on the wire.
struct Vector {
    algorithm: AeadAlgorithm,
    keymat: &'static str,
    spi: u32,
    seq: u32,
    iv: &'static str,
    inner: &'static str,
    next_header: u8,
    packet: &'static str,
}

/// Sealing the inner packet with the vector's IV gives the published packet, and
/// opening the published packet gives the inner packet back.
fn check(v: &Vector) {
    let key = SaKey::from_keymat(v.algorithm, &hex(v.keymat)).unwrap();
    let inner = hex(v.inner);
    let expected = hex(v.packet);
    let iv: [u8; IV_LEN] = hex(v.iv).try_into().unwrap();

    let mut buf = vec![0u8; HEADROOM + inner.len() + MAX_TAILROOM];
    buf[HEADROOM..HEADROOM + inner.len()].copy_from_slice(&inner);
    let len = key.seal_in_place(v.spi, v.seq, iv, &mut buf, inner.len(), v.next_header).unwrap();
    assert_eq!(len, sealed_len(inner.len()).unwrap());
    assert_eq!(buf[..len], expected[..], "{} sealed packet", v.algorithm);

    let mut packet = expected.clone();
    assert_eq!(EspHeader::parse(&packet), Ok(EspHeader { spi: v.spi, seq: v.seq }));
    key.decrypt_in_place(&mut packet).unwrap();
    let (payload_len, next_header) = read_trailer(&packet[HEADROOM..packet.len() - ICV_LEN]).unwrap();
    assert_eq!((&packet[HEADROOM..HEADROOM + payload_len], next_header), (&inner[..], v.next_header));

    // Through the SA API too, where the SPI is an assignable one.
    if v.spi >= 256 {
        let mut sa = InboundSa::new(v.spi, SaKey::from_keymat(v.algorithm, &hex(v.keymat)).unwrap()).unwrap();
        let mut packet = expected.clone();
        let opened = sa.open(&mut packet).unwrap();
        assert_eq!(opened, Opened { seq: v.seq, inner: HEADROOM..HEADROOM + inner.len(), next_header: v.next_header });
        assert_eq!(packet[opened.inner], inner[..]);
        assert_eq!(sa.open(&mut expected.clone()), Err(OpenError::Replay(ReplayError::Replayed)));
    }
}

/// RFC 7634 Appendix A: an ICMP echo request in ESP with ChaCha20-Poly1305. KEYMAT
/// 80..9f || a0 a1 a2 a3 (key || salt), SPI 01020304, sequence number 5, IV 10..17;
/// the padding is 01 02, Next Header 4.
#[test]
fn rfc7634_appendix_a_chacha20_poly1305() {
    check(&Vector {
        algorithm: AeadAlgorithm::ChaCha20Poly1305,
        keymat: "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f a0a1a2a3",
        spi: 0x0102_0304,
        seq: 5,
        iv: "1011121314151617",
        inner: "45000054a6f2000040 01e778c6336405c000020508005b7a3a080000553bec10000736270809
            0a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f
            3031323334353637",
        next_header: NEXT_HEADER_IPV4,
        packet: "0102030400000005 1011121314151617
            24039428b97f417e3c13753a4f05087b67c352e6a7fab1b982d466ef407ae5c6
            14ee8099d52844eb61aa95dfab4c02f72aa71e7c4c4f64c9befe2facc638e8f3
            cbec163fac469b502773f6fb94e664da9165b82829f641e0
            76aaa8266b7fb0f7b11b369907e1ad43",
    });
}

// draft-mcgrew-gcm-test-01 ("Test Cases for the use of GCM and GMAC in IPsec ESP")
// §4: the AES-GCM-16 test cases with 32-bit sequence numbers (8-byte AAD). The others
// use ESN or AES-192, which p2sgw does not offer. These packets carry Next Header 1.

/// Test case 2: AES-128, a DNS query; no padding needed.
#[test]
fn gcm_test_case_2_aes128() {
    check(&Vector {
        algorithm: AeadAlgorithm::Aes128Gcm,
        keymat: "feffe9928665731c6d6a8f9467308308 cafebabe",
        spi: 0x0000_a5f8,
        seq: 0x0a,
        iv: "facedbaddecaf888",
        inner: "4500003e698f000080114dccc0a80102c0a801010a980035002a2343b2d00100
            00010000000000000373697009637962 65726369747902646b0000010001",
        next_header: 1,
        packet: "0000a5f80000000a facedbaddecaf888
            deb22cd9b07c72c16e3a65beeb8df304a5a5897d33ae530f1ba76d5d114d2a5c
            3de81827c10e9a4f51330d0eec416642cfbb85a5b47e48a4ec3b9ba95d918bd1
            83b70d3aa8bc6ee4c309e9d85a41ad4a",
    });
}

/// Test case 3: AES-256, a TCP SYN; padding 01 02.
#[test]
fn gcm_test_case_3_aes256() {
    check(&Vector {
        algorithm: AeadAlgorithm::Aes256Gcm,
        keymat: "abbccddef00112233445566778899aababbccddef00112233445566778899aab 11223344",
        spi: 0x4a2c_bfe3,
        seq: 2,
        iv: "0102030405060708",
        inner: "4500003069a6400080062690c0a801029389155e0a9e008b2dc57ee000000000
            7002400020bf0000020405b401010402",
        next_header: 1,
        packet: "4a2cbfe300000002 0102030405060708
            ff425c9b724599df7a3bcd510194e00d6a78107f1b0b1cbf06efae9d65a5d763
            748a637985771d347f0545659f14e99def842d8e
            b335f4eecfdbf831824b4c4915956c96",
    });
}

/// Test case 4: AES-128 with an all-zero key, salt, IV and SPI (only testable below the
/// SA API, which refuses SPI 0); sequence number 1.
#[test]
fn gcm_test_case_4_all_zero() {
    check(&Vector {
        algorithm: AeadAlgorithm::Aes128Gcm,
        keymat: "00000000000000000000000000000000 00000000",
        spi: 0,
        seq: 1,
        iv: "0000000000000000",
        inner: "4500003c99c500008001cb7a40679318010101010800075c0200440061626364
            65666768696a6b6c6d6e6f70717273747576776162636465666768 69",
        next_header: 1,
        packet: "0000000000000001 0000000000000000
            4688daf2f973a392732909c331d56d60f694abaa414b5e7ff5fdcdfff5e9a284
            456476492719ffb64de7d9dca1e1d894bc3bd57873ed4d181d19d4d5c8c18af3
            f821d496eeb096e98ad2b69e4799c71d",
    });
}

/// Test case 12: AES-128, an empty payload (padding 01 02 only) with the last 32-bit
/// sequence number, 0xffffffff.
#[test]
fn gcm_test_case_12_last_sequence_number() {
    check(&Vector {
        algorithm: AeadAlgorithm::Aes128Gcm,
        keymat: "7d773d00c144c525ac619d18c84a3f47 d9664267",
        spi: 0x3354_67ae,
        seq: 0xffff_ffff,
        iv: "43457e9182443bc6",
        inner: "",
        next_header: 1,
        packet: "335467aeffffffff 43457e9182443bc6 437f866b cb3f699fe9b0822bac961c4504bef270",
    });
}

/// Client and gateway SAs built from one CHILD SA KEYMAT, as both ends derive them.
struct Pair {
    gateway_in: InboundSa,
    gateway_out: OutboundSa,
    client_in: InboundSa,
    client_out: OutboundSa,
}

const GATEWAY_SPI: u32 = 0xc1a0_0001;
const CLIENT_SPI: u32 = 0xc7e1_0002;

fn counting_keymat(algorithm: AeadAlgorithm) -> Vec<u8> {
    (0..2 * keymat_len(algorithm)).map(|i| i as u8).collect()
}

fn pair(algorithm: AeadAlgorithm) -> Pair {
    let keymat = counting_keymat(algorithm);
    let (gateway_in, gateway_out) = responder_sas(algorithm, &keymat, GATEWAY_SPI, CLIENT_SPI).unwrap();
    // The initiator uses the same split the other way round.
    let (i_to_r, r_to_i) = split_child_keymat(algorithm, &keymat).unwrap();
    let client_out = OutboundSa::new(GATEWAY_SPI, SaKey::from_keymat(algorithm, i_to_r).unwrap()).unwrap();
    let client_in = InboundSa::new(CLIENT_SPI, SaKey::from_keymat(algorithm, r_to_i).unwrap()).unwrap();
    Pair { gateway_in, gateway_out, client_in, client_out }
}

/// An ICMP echo request 10.8.0.2 -> 10.8.0.1 (32 bytes).
const IPV4_PACKET: &str = "450000200001000040017cd40a0800020a0800010800f7fd00010001deadbeef";

fn seal(sa: &OutboundSa, inner: &[u8], next_header: u8) -> Vec<u8> {
    let mut buf = vec![0u8; HEADROOM + inner.len() + MAX_TAILROOM];
    buf[HEADROOM..HEADROOM + inner.len()].copy_from_slice(inner);
    let sealed = sa.seal(&mut buf, inner.len(), next_header).unwrap();
    buf.truncate(sealed.len);
    buf
}

#[test]
fn round_trips_with_every_algorithm_and_length() {
    for algorithm in AeadAlgorithm::ALL {
        let mut p = pair(algorithm);
        let mut expected_seq = 0;
        for len in (0..=70).chain([1400, 2000 - HEADROOM - MAX_TAILROOM]) {
            let inner: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            for next_header in [NEXT_HEADER_IPV4, NEXT_HEADER_IPV6, NO_NEXT_HEADER] {
                expected_seq += 1;
                let mut packet = seal(&p.client_out, &inner, next_header);
                assert_eq!(packet.len(), sealed_len(len).unwrap());
                // The ICV starts 4-byte aligned and the padding is 1, 2, 3, … (checked
                // by opening); the IV is the sequence number.
                assert_eq!((packet.len() - ICV_LEN) % 4, 0, "{algorithm} len {len}");
                assert!(packet.len() - HEADROOM - ICV_LEN - len - 2 <= 3);
                assert_eq!(EspHeader::parse(&packet), Ok(EspHeader { spi: GATEWAY_SPI, seq: expected_seq }));
                assert_eq!(packet[8..16], u64::from(expected_seq).to_be_bytes());
                let opened = p.gateway_in.open(&mut packet).unwrap();
                assert_eq!(opened.seq, expected_seq);
                assert_eq!(opened.next_header, next_header);
                assert_eq!(packet[opened.inner], inner[..], "{algorithm} len {len}");

                let mut packet = seal(&p.gateway_out, &inner, next_header);
                let opened = p.client_in.open(&mut packet).unwrap();
                assert_eq!((opened.seq, &packet[opened.inner]), (expected_seq, &inner[..]));
            }
        }
    }
}

#[test]
fn directions_use_different_keys_and_spis() {
    let mut p = pair(AeadAlgorithm::Aes256Gcm);
    let inner = hex(IPV4_PACKET);
    // The gateway's own packets carry the client's SPI: refused by SPI before any
    // decryption, and with the SPI patched they still fail authentication.
    let mut reflected = seal(&p.gateway_out, &inner, NEXT_HEADER_IPV4);
    assert_eq!(p.gateway_in.open(&mut reflected), Err(OpenError::WrongSpi { expected: GATEWAY_SPI, got: CLIENT_SPI }));
    reflected[..4].copy_from_slice(&GATEWAY_SPI.to_be_bytes());
    assert_eq!(p.gateway_in.open(&mut reflected), Err(OpenError::Authentication));
    // Failures did not move the window.
    assert_eq!(p.gateway_in.highest_seq(), 0);
    let mut packet = seal(&p.client_out, &inner, NEXT_HEADER_IPV4);
    assert_eq!(p.gateway_in.open(&mut packet).unwrap().seq, 1);
}

#[test]
fn keymat_split_and_key_lengths() {
    assert_eq!(keymat_len(AeadAlgorithm::Aes128Gcm), 20);
    assert_eq!(keymat_len(AeadAlgorithm::Aes256Gcm), 36);
    assert_eq!(keymat_len(AeadAlgorithm::ChaCha20Poly1305), 36);
    let keymat = counting_keymat(AeadAlgorithm::Aes256Gcm);
    let (i, r) = split_child_keymat(AeadAlgorithm::Aes256Gcm, &keymat).unwrap();
    assert_eq!((i, r), (&keymat[..36], &keymat[36..]));
    // The salt is the last four bytes of each slice.
    assert_eq!(SaKey::from_keymat(AeadAlgorithm::Aes256Gcm, i).unwrap().salt, [32, 33, 34, 35]);
    assert_eq!(SaKey::from_keymat(AeadAlgorithm::Aes256Gcm, r).unwrap().salt, [68, 69, 70, 71]);

    assert_eq!(
        split_child_keymat(AeadAlgorithm::Aes128Gcm, &keymat).unwrap_err(),
        SaError::WrongKeymatLength { algorithm: AeadAlgorithm::Aes128Gcm, expected: 40, actual: 72 }
    );
    // A KEYMAT slice without its salt (the classic mistake) is refused.
    assert_eq!(
        SaKey::from_keymat(AeadAlgorithm::ChaCha20Poly1305, &[0; 32]).unwrap_err(),
        SaError::WrongKeymatLength { algorithm: AeadAlgorithm::ChaCha20Poly1305, expected: 36, actual: 32 }
    );
    assert!(SaKey::from_keymat(AeadAlgorithm::Aes128Gcm, &[]).is_err());
    assert!(responder_sas(AeadAlgorithm::Aes128Gcm, &[0; 39], GATEWAY_SPI, CLIENT_SPI).is_err());
}

#[test]
fn reserved_spis_are_refused() {
    for spi in [0, 1, 255] {
        let key = || SaKey::from_keymat(AeadAlgorithm::Aes128Gcm, &[0; 20]).unwrap();
        assert_eq!(OutboundSa::new(spi, key()).unwrap_err(), SaError::ReservedSpi(spi));
        assert_eq!(InboundSa::new(spi, key()).unwrap_err(), SaError::ReservedSpi(spi));
    }
    let key = SaKey::from_keymat(AeadAlgorithm::Aes128Gcm, &[0; 20]).unwrap();
    assert_eq!(OutboundSa::new(256, key).unwrap().spi(), 256);
}

/// Seals with an explicit sequence number (what a peer, or an attacker replaying its
/// packets, could send).
fn seal_with_seq(sa: &OutboundSa, seq: u32, inner: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; HEADROOM + inner.len() + MAX_TAILROOM];
    buf[HEADROOM..HEADROOM + inner.len()].copy_from_slice(inner);
    let sealed = sa.seal_with_seq(seq, &mut buf, inner.len(), NEXT_HEADER_IPV4).unwrap();
    buf.truncate(sealed.len);
    buf
}

#[test]
fn anti_replay_duplicates_window_edge_far_jump_and_zero() {
    let mut p = pair(AeadAlgorithm::ChaCha20Poly1305);
    let inner = hex(IPV4_PACKET);
    let mut receive = |seq: u32| p.gateway_in.open(&mut seal_with_seq(&p.client_out, seq, &inner)).map(|o| o.seq);
    const { assert!(WINDOW_SIZE >= 128) };
    let window = WINDOW_SIZE as u32;

    // Zero is never valid, even authentic.
    assert_eq!(receive(0), Err(OpenError::Replay(ReplayError::Zero)));
    assert_eq!(receive(1), Ok(1));
    assert_eq!(receive(1), Err(OpenError::Replay(ReplayError::Replayed)));

    // Reordering inside the window is fine, once.
    assert_eq!(receive(10), Ok(10));
    assert_eq!(receive(5), Ok(5));
    assert_eq!(receive(5), Err(OpenError::Replay(ReplayError::Replayed)));

    // Window edge: with 10_000 the highest, 10_000 - window + 1 is the oldest accepted.
    let top = 10_000;
    assert_eq!(receive(top), Ok(top));
    let oldest = top - window + 1;
    assert_eq!(receive(oldest - 1), Err(OpenError::Replay(ReplayError::TooOld)));
    assert_eq!(receive(oldest), Ok(oldest));
    assert_eq!(receive(oldest), Err(OpenError::Replay(ReplayError::Replayed)));
    // Moving the top by one pushes `oldest` out of the window.
    assert_eq!(receive(top + 1), Ok(top + 1));
    assert_eq!(receive(oldest), Err(OpenError::Replay(ReplayError::TooOld)));
    assert_eq!(receive(oldest + 1), Ok(oldest + 1));

    // A far jump (lost packets or a sender that skipped ahead) is accepted and leaves
    // everything before the new window behind.
    let far = 3_000_000_000;
    assert_eq!(receive(far), Ok(far));
    assert_eq!(receive(top + 2), Err(OpenError::Replay(ReplayError::TooOld)));
    assert_eq!(receive(far - 1), Ok(far - 1));
    assert_eq!(receive(u32::MAX), Ok(u32::MAX));
    assert_eq!(receive(u32::MAX), Err(OpenError::Replay(ReplayError::Replayed)));
}

#[test]
fn replays_are_refused_before_decryption_and_forgeries_do_not_move_the_window() {
    let mut p = pair(AeadAlgorithm::Aes128Gcm);
    let inner = hex(IPV4_PACKET);
    let original = seal(&p.client_out, &inner, NEXT_HEADER_IPV4);
    p.gateway_in.open(&mut original.clone()).unwrap();

    // A replay with a broken ICV is reported as a replay: the window is checked first.
    let mut broken = original.clone();
    *broken.last_mut().unwrap() ^= 1;
    assert_eq!(p.gateway_in.open(&mut broken), Err(OpenError::Replay(ReplayError::Replayed)));

    // A forged packet far ahead fails authentication and must not move the window.
    let mut forged = seal_with_seq(&p.client_out, 5_000, &inner);
    forged[20] ^= 0x40;
    assert_eq!(p.gateway_in.open(&mut forged), Err(OpenError::Authentication));
    assert_eq!(p.gateway_in.highest_seq(), 1);
    assert_eq!(p.gateway_in.open(&mut seal(&p.client_out, &inner, NEXT_HEADER_IPV4)).unwrap().seq, 2);
}

/// Builds an authentic packet whose plaintext (payload, padding, trailer) is given
/// verbatim, with the client's key (KEYMAT bytes 0..20 of the counting KEYMAT).
fn authentic_packet_with_plaintext(seq: u32, plaintext: &[u8]) -> Vec<u8> {
    let keymat = counting_keymat(AeadAlgorithm::Aes128Gcm);
    let aead = AeadKey::new(AeadAlgorithm::Aes128Gcm, &keymat[..16]).unwrap();
    let iv = u64::from(seq).to_be_bytes();
    let mut nonce = [0u8; NONCE_LEN];
    nonce[..4].copy_from_slice(&keymat[16..20]);
    nonce[4..].copy_from_slice(&iv);
    let header = [&GATEWAY_SPI.to_be_bytes()[..], &seq.to_be_bytes()].concat();
    let mut body = plaintext.to_vec();
    let tag = aead.seal_in_place_separate_tag(&nonce, &header, &mut body).unwrap();
    [&header[..], &iv, &body, &tag].concat()
}

#[test]
fn bad_padding_is_dropped_after_authentication() {
    let mut p = pair(AeadAlgorithm::Aes128Gcm);
    let inner = hex(IPV4_PACKET); // 32 bytes: 2 bytes of padding to align

    // The builder reproduces what seal makes, so only the padding differs below.
    let good = [&inner[..], &[1, 2, 2, NEXT_HEADER_IPV4]].concat();
    let mut packet = authentic_packet_with_plaintext(1, &good);
    assert_eq!(packet, seal(&p.client_out, &inner, NEXT_HEADER_IPV4));
    assert_eq!(p.gateway_in.open(&mut packet).unwrap().inner, HEADROOM..HEADROOM + 32);

    let bad_plaintexts: [&[u8]; 5] = [
        &[0, 0, 2, NEXT_HEADER_IPV4],             // zero padding
        &[2, 1, 2, NEXT_HEADER_IPV4],             // out of order
        &[1, 1, 2, NEXT_HEADER_IPV4],             // repeated
        &[1, 2, 3, 4, 5, 5, 6, NEXT_HEADER_IPV4], // last byte wrong
        &[1, 2, 40, NEXT_HEADER_IPV4],            // longer than the payload
    ];
    for (i, trailer) in bad_plaintexts.into_iter().enumerate() {
        let seq = 10 + i as u32;
        let plaintext = if i == 4 { trailer.to_vec() } else { [&inner[..], trailer].concat() };
        let mut packet = authentic_packet_with_plaintext(seq, &plaintext);
        assert_eq!(p.gateway_in.open(&mut packet), Err(OpenError::BadPadding), "case {i}");
        // It was authentic, so its sequence number counts as received.
        assert_eq!(
            p.gateway_in.open(&mut authentic_packet_with_plaintext(seq, &good)),
            Err(OpenError::Replay(ReplayError::Replayed))
        );
    }

    // Longer-than-needed but monotonic padding is accepted (RFC 4303 allows up to 255).
    let padded = [&inner[..], &(1..=6).collect::<Vec<u8>>(), &[6, NEXT_HEADER_IPV4]].concat();
    let mut packet = authentic_packet_with_plaintext(20, &padded);
    assert_eq!(p.gateway_in.open(&mut packet).unwrap().inner, HEADROOM..HEADROOM + 32);
}

#[test]
fn read_trailer_edge_cases() {
    assert_eq!(read_trailer(&[]), Err(OpenError::BadPadding));
    assert_eq!(read_trailer(&[4]), Err(OpenError::BadPadding));
    assert_eq!(read_trailer(&[0, 59]), Ok((0, 59)));
    assert_eq!(read_trailer(&[1, 1, 4]), Ok((0, 4)));
    assert_eq!(read_trailer(&[1, 2, 4]), Err(OpenError::BadPadding));
    assert_eq!(read_trailer(&[9, 9, 1, 2, 3, 3, 41]), Ok((2, 41)));
    assert_eq!(read_trailer(&[255, 4]), Err(OpenError::BadPadding));
    let max_padding: Vec<u8> = (1..=255).chain([255, 4]).collect();
    assert_eq!(read_trailer(&max_padding), Ok((0, 4)));
}

#[test]
fn dummy_packets_round_trip_with_next_header_59() {
    let mut p = pair(AeadAlgorithm::Aes256Gcm);
    let mut packet = seal(&p.client_out, &[], NO_NEXT_HEADER);
    assert_eq!(packet.len(), MIN_PACKET_LEN + 2);
    let opened = p.gateway_in.open(&mut packet).unwrap();
    assert_eq!((opened.inner, opened.next_header), (HEADROOM..HEADROOM, NO_NEXT_HEADER));
}

#[test]
fn refuses_any_tampered_byte() {
    let inner = hex(IPV4_PACKET);
    for algorithm in AeadAlgorithm::ALL {
        let mut p = pair(algorithm);
        let packet = seal(&p.client_out, &inner, NEXT_HEADER_IPV4);
        for i in 0..packet.len() {
            for bit in [0x01, 0x80] {
                let mut tampered = packet.clone();
                tampered[i] ^= bit;
                let result = p.gateway_in.open(&mut tampered);
                assert!(result.is_err(), "{algorithm} byte {i} bit {bit:#x}");
            }
        }
        assert_eq!(p.gateway_in.open(&mut packet.clone()).unwrap().seq, 1);
    }
}

#[test]
fn refuses_truncated_and_garbage_packets_without_panicking() {
    let mut p = pair(AeadAlgorithm::ChaCha20Poly1305);
    let packet = seal(&p.client_out, &hex(IPV4_PACKET), NEXT_HEADER_IPV4);
    for len in 0..packet.len() {
        let result = p.gateway_in.open(&mut packet[..len].to_vec());
        if len < MIN_PACKET_LEN {
            assert_eq!(result, Err(OpenError::TooShort { len }));
        } else {
            assert_eq!(result, Err(OpenError::Authentication), "len {len}");
        }
    }
    // The key-level decryption refuses short input by itself too.
    let key = SaKey::from_keymat(AeadAlgorithm::ChaCha20Poly1305, &[1; 36]).unwrap();
    for len in 0..HEADROOM + ICV_LEN {
        assert_eq!(key.decrypt_in_place(&mut vec![0; len]), Err(OpenError::TooShort { len }));
    }
    assert_eq!(key.decrypt_in_place(&mut [0; HEADROOM + ICV_LEN]), Err(OpenError::Authentication));

    let mut rng = crate::testing::XorShift(0x2545_f491_4f6c_dd1d);
    for len in 0..200 {
        let mut garbage: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if len >= 8 {
            garbage[..4].copy_from_slice(&GATEWAY_SPI.to_be_bytes());
        }
        assert!(p.gateway_in.open(&mut garbage).is_err(), "len {len}");
    }
}

#[test]
fn sealing_refuses_small_buffers_without_using_a_sequence_number() {
    let p = pair(AeadAlgorithm::Aes128Gcm);
    let mut buf = vec![0u8; sealed_len(32).unwrap() - 1];
    assert_eq!(
        p.client_out.seal(&mut buf, 32, NEXT_HEADER_IPV4),
        Err(SealError::BufferTooSmall { needed: sealed_len(32).unwrap(), capacity: buf.len() })
    );
    assert_eq!(
        p.client_out.seal(&mut buf, usize::MAX, NEXT_HEADER_IPV4),
        Err(SealError::BufferTooSmall { needed: usize::MAX, capacity: buf.len() })
    );
    assert_eq!(sealed_len(usize::MAX), None);
    assert_eq!(p.client_out.seal(&mut buf, 30, NEXT_HEADER_IPV4).unwrap(), Sealed { seq: 1, len: 16 + 30 + 2 + 16 });
}

#[test]
fn rekey_threshold_and_sequence_exhaustion() {
    let keymat = counting_keymat(AeadAlgorithm::Aes256Gcm);
    let (i_to_r, _) = split_child_keymat(AeadAlgorithm::Aes256Gcm, &keymat).unwrap();
    let out = OutboundSa::new(GATEWAY_SPI, SaKey::from_keymat(AeadAlgorithm::Aes256Gcm, i_to_r).unwrap())
        .unwrap()
        .with_rekey_threshold(100);
    let (mut gateway_in, _) = responder_sas(AeadAlgorithm::Aes256Gcm, &keymat, GATEWAY_SPI, CLIENT_SPI).unwrap();
    let inner = hex(IPV4_PACKET);

    out.next_seq.store(99, Ordering::Relaxed);
    seal(&out, &inner, NEXT_HEADER_IPV4);
    assert!(!out.rekey_needed());
    let mut packet = seal(&out, &inner, NEXT_HEADER_IPV4);
    assert_eq!(EspHeader::parse(&packet).unwrap().seq, 100);
    assert!(out.rekey_needed(), "sequence number 100 was used");
    gateway_in.open(&mut packet).unwrap();

    // 2^32-1 is the last number sent; after it sealing fails instead of wrapping to 0
    // (which would also repeat the nonce).
    out.next_seq.store(u64::from(u32::MAX), Ordering::Relaxed);
    let mut packet = seal(&out, &inner, NEXT_HEADER_IPV4);
    assert_eq!(gateway_in.open(&mut packet).unwrap().seq, u32::MAX);
    let mut buf = vec![0u8; 100];
    assert_eq!(out.seal(&mut buf, 32, NEXT_HEADER_IPV4), Err(SealError::SequenceExhausted));
    assert_eq!(out.seal(&mut buf, 32, NEXT_HEADER_IPV4), Err(SealError::SequenceExhausted));

    // A batch across the limit seals what fits and refuses the rest.
    out.next_seq.store(u64::from(u32::MAX) - 1, Ordering::Relaxed);
    let mut bufs = vec![vec![0u8; 100]; 4];
    let mut jobs: Vec<SealJob> = bufs.iter_mut().map(|b| SealJob::new(b, 32, NEXT_HEADER_IPV4)).collect();
    out.seal_batch(&mut jobs);
    let outcomes: Vec<_> = jobs.iter().map(|j| j.outcome.unwrap().map(|s| s.seq)).collect();
    assert_eq!(
        outcomes,
        [Ok(u32::MAX - 1), Ok(u32::MAX), Err(SealError::SequenceExhausted), Err(SealError::SequenceExhausted)]
    );
    assert!(out.rekey_needed());
}

#[test]
fn batches_match_single_packets() {
    for algorithm in AeadAlgorithm::ALL {
        let mut p = pair(algorithm);
        let inners: Vec<Vec<u8>> = (0..8).map(|i| vec![0x45 + i as u8; 20 + 37 * i]).collect();
        let mut bufs: Vec<Vec<u8>> = inners
            .iter()
            .map(|inner| {
                let mut buf = vec![0u8; HEADROOM + inner.len() + MAX_TAILROOM];
                buf[HEADROOM..HEADROOM + inner.len()].copy_from_slice(inner);
                buf
            })
            .collect();
        // One job with a buffer too small: refused, and it takes no sequence number.
        let mut small = vec![0u8; 20];
        let mut jobs: Vec<SealJob> =
            bufs.iter_mut().zip(&inners).map(|(buf, inner)| SealJob::new(buf, inner.len(), NEXT_HEADER_IPV4)).collect();
        jobs.insert(3, SealJob::new(&mut small, 10, NEXT_HEADER_IPV4));
        p.client_out.seal_batch(&mut jobs);
        assert_eq!(jobs[3].outcome, Some(Err(SealError::BufferTooSmall { needed: 44, capacity: 20 })));
        let sealed: Vec<Sealed> = jobs.iter().filter_map(|j| j.outcome.unwrap().ok()).collect();
        assert_eq!(sealed.iter().map(|s| s.seq).collect::<Vec<_>>(), (1..=8).collect::<Vec<u32>>());
        drop(jobs);

        // A single seal continues the sequence.
        assert_eq!(EspHeader::parse(&seal(&p.client_out, &inners[0], NEXT_HEADER_IPV4)).unwrap().seq, 9);

        // Open the batch, with the first packet repeated at the end.
        let mut packets: Vec<Vec<u8>> = bufs.iter().zip(&sealed).map(|(b, s)| b[..s.len].to_vec()).collect();
        packets.push(packets[0].clone());
        let mut jobs: Vec<OpenJob> = packets.iter_mut().map(|p| OpenJob::new(p)).collect();
        p.gateway_in.open_batch(&mut jobs);
        let outcomes: Vec<_> = jobs.iter().map(|j| j.outcome.clone().unwrap()).collect();
        drop(jobs);
        for (i, outcome) in outcomes.iter().take(8).enumerate() {
            let opened = outcome.as_ref().unwrap();
            assert_eq!(opened.seq, i as u32 + 1);
            assert_eq!(packets[i][opened.inner.clone()], inners[i][..], "{algorithm} packet {i}");
        }
        assert_eq!(outcomes[8], Err(OpenError::Replay(ReplayError::Replayed)));
    }
}

#[test]
fn concurrent_sealers_never_share_a_sequence_number() {
    const THREADS: usize = 4;
    const PER_THREAD: usize = 300;
    let mut p = pair(AeadAlgorithm::Aes128Gcm);
    let out = Arc::new(p.client_out);
    let inner = hex(IPV4_PACKET);
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let out = Arc::clone(&out);
            let inner = inner.clone();
            std::thread::spawn(move || {
                let mut packets = Vec::new();
                for _ in 0..PER_THREAD / 3 {
                    if t % 2 == 0 {
                        packets.push(seal(&out, &inner, NEXT_HEADER_IPV4));
                        packets.push(seal(&out, &inner, NEXT_HEADER_IPV4));
                        packets.push(seal(&out, &inner, NEXT_HEADER_IPV4));
                    } else {
                        let mut bufs = vec![vec![0u8; 100]; 3];
                        let mut jobs: Vec<SealJob> =
                            bufs.iter_mut().map(|b| SealJob::new(b, inner.len(), NEXT_HEADER_IPV4)).collect();
                        out.seal_batch(&mut jobs);
                        let lens: Vec<usize> = jobs.iter().map(|j| j.outcome.unwrap().unwrap().len).collect();
                        packets.extend(bufs.iter().zip(lens).map(|(b, len)| b[..len].to_vec()));
                    }
                }
                packets
            })
        })
        .collect();
    // Opened in sequence order: the threads' packets interleave arbitrarily, and one
    // thread's may run far ahead of another's, beyond the replay window.
    let mut packets: Vec<Vec<u8>> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    packets.sort_by_key(|packet| EspHeader::parse(packet).unwrap().seq);
    let mut seen = HashSet::new();
    for mut packet in packets {
        let opened = p.gateway_in.open(&mut packet).unwrap();
        assert!(seen.insert(opened.seq), "sequence number {} used twice", opened.seq);
    }
    assert_eq!(seen, (1..=(THREADS * PER_THREAD) as u32).collect());
}

#[test]
fn sas_can_move_between_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<OutboundSa>();
    assert_send_sync::<InboundSa>();
}

#[test]
fn debug_output_shows_no_key_material() {
    let p = pair(AeadAlgorithm::Aes256Gcm);
    let text = format!("{:?} {:?}", p.gateway_in, p.gateway_out);
    assert!(text.contains("0xc1a00001") && text.contains("0xc7e10002"), "{text}");
    // The salts of the counting KEYMAT are 20 21 22 23 and 44 45 46 47.
    assert!(!text.contains("salt") && !text.contains("[32, 33"), "{text}");
}
