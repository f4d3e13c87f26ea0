//! The IPv4/UDP probe packets the load generator sends through its tunnels, and the
//! parsing of their echoes. A probe carries who sent it, a sequence number and its send
//! time, so the echo alone gives the round-trip time.

use std::net::{Ipv4Addr, SocketAddrV4};

// RFC 1071 sums (an odd last byte padded with zero), as the TUN offload code uses them.
use tun_rs::{checksum, checksum_no_fold};

const IPV4_HEADER_LEN: usize = 20;
const UDP_HEADER_LEN: usize = 8;
const PROTO_UDP: u8 = 17;
const TTL: u8 = 64;
/// Don't fragment: a probe larger than the path is an error to see, not to hide.
const FLAG_DONT_FRAGMENT: u16 = 0x4000;

/// Marks our probes among whatever else a tunnel delivers.
const PROBE_MAGIC: [u8; 4] = *b"P2LG";
/// magic (4) + client (4) + sequence (8) + send time (8).
pub const PROBE_LEN: usize = 24;
/// The smallest IP packet that holds a whole probe.
pub const MIN_PACKET_LEN: usize = IPV4_HEADER_LEN + UDP_HEADER_LEN + PROBE_LEN;
/// The largest probe packet: one standard tunnel MTU.
pub const MAX_PACKET_LEN: usize = 1500;

/// What a probe says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub client: u32,
    pub sequence: u64,
    /// Nanoseconds since the load generator's start.
    pub sent_ns: u64,
}

impl Probe {
    fn encode(&self, out: &mut [u8]) {
        out[..4].copy_from_slice(&PROBE_MAGIC);
        out[4..8].copy_from_slice(&self.client.to_be_bytes());
        out[8..16].copy_from_slice(&self.sequence.to_be_bytes());
        out[16..24].copy_from_slice(&self.sent_ns.to_be_bytes());
    }

    /// The probe at the start of a UDP payload, if it is one.
    pub fn decode(payload: &[u8]) -> Option<Probe> {
        let probe = payload.get(..PROBE_LEN)?;
        if probe[..4] != PROBE_MAGIC {
            return None;
        }
        Some(Probe {
            client: u32::from_be_bytes(probe[4..8].try_into().ok()?),
            sequence: u64::from_be_bytes(probe[8..16].try_into().ok()?),
            sent_ns: u64::from_be_bytes(probe[16..24].try_into().ok()?),
        })
    }
}

/// Writes a `len`-byte IPv4/UDP packet from `src` to `dst` carrying `probe` (zero
/// padded) into `out[..len]`, both checksums filled in. `len` must lie in
/// `MIN_PACKET_LEN..=MAX_PACKET_LEN` and `out` must hold it (the caller checks once, up front).
pub fn write_probe_packet(out: &mut [u8], src: SocketAddrV4, dst: SocketAddrV4, probe: &Probe, len: usize) {
    assert!((MIN_PACKET_LEN..=MAX_PACKET_LEN).contains(&len), "probe packet length {len} was validated");
    let packet = &mut out[..len];
    let udp_len = len - IPV4_HEADER_LEN;
    let (ip, udp) = packet.split_at_mut(IPV4_HEADER_LEN);
    ip[0] = 0x45; // version 4, 5 words of header
    ip[1] = 0;
    ip[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&(probe.sequence as u16).to_be_bytes());
    ip[6..8].copy_from_slice(&FLAG_DONT_FRAGMENT.to_be_bytes());
    ip[8] = TTL;
    ip[9] = PROTO_UDP;
    ip[10..12].fill(0);
    ip[12..16].copy_from_slice(&src.ip().octets());
    ip[16..20].copy_from_slice(&dst.ip().octets());
    let ip_checksum = !checksum(ip, 0);
    ip[10..12].copy_from_slice(&ip_checksum.to_be_bytes());

    udp[0..2].copy_from_slice(&src.port().to_be_bytes());
    udp[2..4].copy_from_slice(&dst.port().to_be_bytes());
    udp[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    udp[6..8].fill(0);
    probe.encode(&mut udp[UDP_HEADER_LEN..UDP_HEADER_LEN + PROBE_LEN]);
    udp[UDP_HEADER_LEN + PROBE_LEN..].fill(0);
    let udp_checksum = match !checksum(udp, pseudo_header_sum(*src.ip(), *dst.ip(), udp_len)) {
        // 0 means "no checksum" in UDP over IPv4; its ones-complement twin is sent instead.
        0 => 0xFFFF,
        c => c,
    };
    udp[6..8].copy_from_slice(&udp_checksum.to_be_bytes());
}

/// A UDP datagram read out of an IPv4 packet.
#[derive(Debug, PartialEq, Eq)]
pub struct UdpDatagram<'a> {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub payload: &'a [u8],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("not an IPv4 packet with a 20-byte header")]
    NotPlainIpv4,
    #[error("IPv4 total length does not match the packet")]
    BadLength,
    #[error("IPv4 header checksum is wrong")]
    BadIpChecksum,
    #[error("a fragment, not a whole datagram")]
    Fragment,
    #[error("not UDP")]
    NotUdp,
    #[error("UDP checksum is wrong")]
    BadUdpChecksum,
}

/// Parses an IPv4/UDP packet, verifying both checksums (a UDP checksum of 0, "none", is accepted).
pub fn parse_udp_packet(packet: &[u8]) -> Result<UdpDatagram<'_>, PacketError> {
    if packet.len() < IPV4_HEADER_LEN + UDP_HEADER_LEN || packet[0] != 0x45 {
        return Err(PacketError::NotPlainIpv4);
    }
    let (ip, udp) = packet.split_at(IPV4_HEADER_LEN);
    if usize::from(u16::from_be_bytes([ip[2], ip[3]])) != packet.len() {
        return Err(PacketError::BadLength);
    }
    if checksum(ip, 0) != 0xFFFF {
        return Err(PacketError::BadIpChecksum);
    }
    // More-fragments set or a non-zero offset.
    if u16::from_be_bytes([ip[6], ip[7]]) & 0x3FFF != 0 {
        return Err(PacketError::Fragment);
    }
    if ip[9] != PROTO_UDP {
        return Err(PacketError::NotUdp);
    }
    let src_ip = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst_ip = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    if usize::from(u16::from_be_bytes([udp[4], udp[5]])) != udp.len() {
        return Err(PacketError::BadLength);
    }
    let has_checksum = udp[6..8] != [0, 0];
    if has_checksum && checksum(udp, pseudo_header_sum(src_ip, dst_ip, udp.len())) != 0xFFFF {
        return Err(PacketError::BadUdpChecksum);
    }
    Ok(UdpDatagram {
        src: SocketAddrV4::new(src_ip, u16::from_be_bytes([udp[0], udp[1]])),
        dst: SocketAddrV4::new(dst_ip, u16::from_be_bytes([udp[2], udp[3]])),
        payload: &udp[UDP_HEADER_LEN..],
    })
}

/// RFC 768 pseudo header: source, destination, zero, protocol, UDP length.
fn pseudo_header_sum(src: Ipv4Addr, dst: Ipv4Addr, udp_len: usize) -> u64 {
    checksum_no_fold(&dst.octets(), checksum_no_fold(&src.octets(), 0)) + u64::from(PROTO_UDP) + udp_len as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::hex;

    #[test]
    fn ip_checksum_matches_the_classic_example() {
        // The IPv4 header of the worked example in Wikipedia's "Internet checksum" article
        // (also used in many RFC 1071 walkthroughs): its checksum is b861.
        let header = hex("4500 0073 0000 4000 4011 0000 c0a8 0001 c0a8 00c7");
        assert_eq!(!checksum(&header, 0), 0xb861);
        let mut with_sum = header.clone();
        with_sum[10..12].copy_from_slice(&[0xb8, 0x61]);
        assert_eq!(checksum(&with_sum, 0), 0xFFFF);
    }

    #[test]
    fn odd_length_sums_pad_the_last_byte() {
        assert_eq!(checksum(&[0x01], 0), 0x0100);
        assert_eq!(checksum(&[0xFF, 0xFF, 0x00, 0x02], 0), 0x0002);
    }

    fn sample(len: usize) -> (Vec<u8>, Probe) {
        let probe = Probe { client: 7, sequence: 0x1_0000_0003, sent_ns: 123_456_789 };
        let mut buf = vec![0xAA; 2048];
        let src = SocketAddrV4::new(Ipv4Addr::new(172, 16, 201, 2), 40000);
        let dst = SocketAddrV4::new(Ipv4Addr::new(10, 50, 0, 2), 9000);
        write_probe_packet(&mut buf, src, dst, &probe, len);
        buf.truncate(len);
        (buf, probe)
    }

    #[test]
    fn probe_packets_round_trip_with_valid_checksums() {
        for len in [MIN_PACKET_LEN, MIN_PACKET_LEN + 1, 1400, MAX_PACKET_LEN] {
            let (packet, probe) = sample(len);
            assert_eq!(packet.len(), len);
            let d = parse_udp_packet(&packet).unwrap();
            assert_eq!(d.src, "172.16.201.2:40000".parse().unwrap());
            assert_eq!(d.dst, "10.50.0.2:9000".parse().unwrap());
            assert_eq!(d.payload.len(), len - 28);
            assert_eq!(Probe::decode(d.payload), Some(probe));
        }
    }

    /// An independent check of the UDP checksum: recompute it from scratch over the
    /// pseudo header as RFC 768 lays it out.
    #[test]
    fn udp_checksum_matches_a_from_scratch_computation() {
        let (packet, _) = sample(101);
        let udp = &packet[20..];
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&packet[12..20]);
        pseudo.extend_from_slice(&[0, 17]);
        pseudo.extend_from_slice(&(udp.len() as u16).to_be_bytes());
        pseudo.extend_from_slice(udp);
        pseudo[12 + 6..12 + 8].fill(0);
        if pseudo.len() % 2 == 1 {
            pseudo.push(0);
        }
        let mut sum: u64 = pseudo.chunks(2).map(|w| u64::from(u16::from_be_bytes([w[0], w[1]]))).sum();
        while sum > 0xFFFF {
            sum = (sum & 0xFFFF) + (sum >> 16);
        }
        assert_eq!(u16::from_be_bytes([udp[6], udp[7]]), !(sum as u16));
    }

    #[test]
    fn damaged_packets_are_refused() {
        let (packet, _) = sample(200);
        let mut bad = packet.clone();
        bad[8] ^= 1; // TTL
        assert_eq!(parse_udp_packet(&bad), Err(PacketError::BadIpChecksum));
        let mut bad = packet.clone();
        bad[150] ^= 1;
        assert_eq!(parse_udp_packet(&bad), Err(PacketError::BadUdpChecksum));
        assert_eq!(parse_udp_packet(&packet[..199]), Err(PacketError::BadLength));
        assert_eq!(parse_udp_packet(&packet[..10]), Err(PacketError::NotPlainIpv4));
        let mut no_checksum = packet.clone();
        no_checksum[26..28].fill(0);
        assert!(parse_udp_packet(&no_checksum).is_ok(), "UDP checksum 0 means none");
        assert_eq!(Probe::decode(b"P2LX-----------------------"), None);
        assert_eq!(Probe::decode(b"P2LG"), None);
    }
}
