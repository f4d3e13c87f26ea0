//! The traffic phase's arithmetic and packets: how many probes are due, how work is
//! shared between workers, and sealing probes and keepalives into data packets.

use std::collections::VecDeque;
use std::net::SocketAddrV4;
use std::time::Duration;

use crate::proto::openvpn::data::{DataError, DataKey, HEADROOM, OCC_EXIT, OCC_MAGIC, PING_MAGIC};

use super::packet::{Probe, write_probe_packet};
use super::sys::DATAGRAM_CAPACITY;

/// `index`'s share when `total` is split as evenly as possible over `parts`.
pub fn share(total: u64, parts: usize, index: usize) -> u64 {
    let parts = parts.max(1) as u64;
    let index = index as u64;
    total / parts + u64::from(index < total % parts)
}

/// Probes due at `rate_pps` after `elapsed`, minus the `sent` ones.
pub fn packets_due(rate_pps: u64, elapsed: Duration, sent: u64) -> u64 {
    let due = u128::from(rate_pps).checked_mul(elapsed.as_nanos()).map_or(u128::MAX, |n| n / 1_000_000_000);
    u64::try_from(due).unwrap_or(u64::MAX).saturating_sub(sent)
}

/// How long until the next probe is due (zero when one is due already).
pub fn until_next_due(rate_pps: u64, elapsed: Duration, sent: u64) -> Duration {
    if rate_pps == 0 {
        return Duration::ZERO;
    }
    let next_at_ns = u128::from(sent + 1) * 1_000_000_000 / u128::from(rate_pps);
    let next_at = Duration::from_nanos(u64::try_from(next_at_ns).unwrap_or(u64::MAX));
    next_at.saturating_sub(elapsed)
}

/// Flat out, the probes a worker may have unanswered at once: without a limit a sender
/// on the same machine only measures how much CPU it can take from the server. Probes
/// unanswered for [`Window::GIVE_UP_NS`] are counted as lost and free their place.
pub struct Window {
    limit: u64,
    /// (10 ms slot of the send time, probes of that slot not yet answered), oldest first.
    slots: VecDeque<(u64, u64)>,
    unanswered: u64,
}

impl Window {
    const SLOT_NS: u64 = 10_000_000;
    pub const GIVE_UP_NS: u64 = 500_000_000;

    pub fn new(limit: u64) -> Window {
        Window { limit, slots: VecDeque::new(), unanswered: 0 }
    }

    pub fn on_sent(&mut self, sent_ns: u64, count: u64) {
        let slot = sent_ns / Self::SLOT_NS;
        match self.slots.back_mut() {
            Some((s, n)) if *s == slot => *n += count,
            _ => self.slots.push_back((slot, count)),
        }
        self.unanswered += count;
    }

    pub fn on_echo(&mut self, sent_ns: u64) {
        let slot = sent_ns / Self::SLOT_NS;
        if let Some((_, n)) = self.slots.iter_mut().rev().find(|(s, _)| *s == slot)
            && *n > 0
        {
            *n -= 1;
            self.unanswered -= 1;
        }
    }

    /// How many more probes may go out now.
    pub fn allowance(&mut self, now_ns: u64) -> u64 {
        let oldest_kept = now_ns.saturating_sub(Self::GIVE_UP_NS) / Self::SLOT_NS;
        while let Some(&(slot, n)) = self.slots.front() {
            if slot >= oldest_kept {
                break;
            }
            self.unanswered -= n;
            self.slots.pop_front();
        }
        self.limit.saturating_sub(self.unanswered)
    }
}

/// One client's tunnel as the data channel sees it.
pub struct Tunnel {
    pub key: std::sync::Arc<DataKey>,
    /// Until the peer uses the new key, its packets still come under the old one.
    pub previous_key: Option<std::sync::Arc<DataKey>>,
    /// None: P_DATA_V1.
    pub peer_id: Option<u32>,
    /// Inner source address and port of this client's probes.
    pub source: SocketAddrV4,
    pub next_sequence: u64,
}

impl Tunnel {
    /// Seals `buf[HEADROOM..HEADROOM + len]` in place; returns where the packet lies in `buf`.
    pub fn seal(&self, buf: &mut [u8], len: usize) -> Result<std::ops::Range<usize>, DataError> {
        match self.peer_id {
            Some(peer_id) => self.key.seal_v2(peer_id, buf, len).map(|end| 0..end),
            None => self.key.seal_v1(buf, len),
        }
    }

    /// The key a data packet with this first byte was sealed with.
    pub fn key_for(&self, first_byte: u8) -> Option<&DataKey> {
        let key_id = first_byte & 0x07;
        if self.key.key_id() == key_id {
            Some(&self.key)
        } else {
            self.previous_key.as_deref().filter(|k| k.key_id() == key_id)
        }
    }

    /// Builds and seals a `len`-byte probe packet to `sink` in `buf`.
    pub fn seal_probe(
        &mut self,
        buf: &mut [u8; DATAGRAM_CAPACITY],
        client: u32,
        sink: SocketAddrV4,
        len: usize,
        sent_ns: u64,
    ) -> Result<std::ops::Range<usize>, DataError> {
        let probe = Probe { client, sequence: self.next_sequence, sent_ns };
        self.next_sequence += 1;
        write_probe_packet(&mut buf[HEADROOM..], self.source, sink, &probe, len);
        self.seal(buf, len)
    }

    /// A keepalive ping, sealed in `buf`.
    pub fn seal_ping(&self, buf: &mut [u8; DATAGRAM_CAPACITY]) -> Result<std::ops::Range<usize>, DataError> {
        buf[HEADROOM..HEADROOM + PING_MAGIC.len()].copy_from_slice(&PING_MAGIC);
        self.seal(buf, PING_MAGIC.len())
    }

    /// The OCC explicit-exit-notify message (the client is leaving), sealed in `buf`.
    pub fn seal_exit(&self, buf: &mut [u8; DATAGRAM_CAPACITY]) -> Result<std::ops::Range<usize>, DataError> {
        buf[HEADROOM..HEADROOM + OCC_MAGIC.len()].copy_from_slice(&OCC_MAGIC);
        buf[HEADROOM + OCC_MAGIC.len()] = OCC_EXIT;
        self.seal(buf, OCC_MAGIC.len() + 1)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::sync::Arc;

    use super::*;
    use crate::crypto::AeadAlgorithm;
    use crate::loadgen::packet::parse_udp_packet;
    use crate::proto::openvpn::data::{Payload, classify};
    use crate::proto::openvpn::keys::{Key2, Role};

    #[test]
    fn shares_add_up_and_differ_by_at_most_one() {
        for (total, parts) in [(10, 3), (2, 4), (0, 2), (1000, 1), (7, 7)] {
            let shares: Vec<u64> = (0..parts).map(|i| share(total, parts, i)).collect();
            assert_eq!(shares.iter().sum::<u64>(), total, "{total} over {parts}");
            assert!(shares.iter().max().unwrap() - shares.iter().min().unwrap() <= 1);
        }
        assert_eq!(share(10, 3, 0), 4);
        assert_eq!(share(5, 0, 0), 5, "no parts means one");
    }

    #[test]
    fn pacing_follows_the_rate() {
        assert_eq!(packets_due(1000, Duration::from_millis(10), 0), 10);
        assert_eq!(packets_due(1000, Duration::from_millis(10), 4), 6);
        assert_eq!(packets_due(1000, Duration::from_millis(10), 12), 0, "ahead of schedule");
        assert_eq!(packets_due(3, Duration::from_millis(999), 0), 2);
        assert_eq!(packets_due(u64::MAX, Duration::from_secs(u64::MAX), 0), u64::MAX);
        assert_eq!(until_next_due(1000, Duration::from_millis(10), 10), Duration::from_millis(1));
        assert_eq!(until_next_due(1000, Duration::from_millis(10), 5), Duration::ZERO);
        assert_eq!(until_next_due(4, Duration::ZERO, 0), Duration::from_millis(250));
    }

    #[test]
    fn window_frees_places_for_echoes_and_for_probes_given_up() {
        const MS: u64 = 1_000_000;
        let mut w = Window::new(10);
        assert_eq!(w.allowance(0), 10);
        w.on_sent(MS, 6);
        w.on_sent(25 * MS, 4);
        assert_eq!(w.allowance(30 * MS), 0);
        w.on_echo(MS);
        w.on_echo(25 * MS);
        assert_eq!(w.allowance(30 * MS), 2);
        // An echo of a slot already fully answered (a duplicate) frees nothing.
        for _ in 0..5 {
            w.on_echo(26 * MS);
        }
        assert_eq!(w.allowance(30 * MS), 5, "the second slot is all answered; the extra echoes free nothing");
        // The 5 unanswered of the first slot are given up half a second later.
        assert_eq!(w.allowance(MS + Window::GIVE_UP_NS + 10 * MS), 10);
    }

    fn tunnel_pair(peer_id: Option<u32>) -> (Tunnel, DataKey) {
        let key2 = Key2::from_ekm(std::array::from_fn(|i| i as u8));
        let client = DataKey::new(0, &key2.direction_keys(AeadAlgorithm::Aes256Gcm, Role::Client)).unwrap();
        let server = DataKey::new(0, &key2.direction_keys(AeadAlgorithm::Aes256Gcm, Role::Server)).unwrap();
        let source = SocketAddrV4::new(Ipv4Addr::new(172, 16, 201, 9), 10_009);
        (Tunnel { key: Arc::new(client), previous_key: None, peer_id, source, next_sequence: 1 }, server)
    }

    /// The server's keys open what a tunnel seals: probes (V2 and V1), pings and the exit notice.
    #[test]
    fn sealed_packets_open_with_the_servers_key() {
        let sink = SocketAddrV4::new(Ipv4Addr::new(10, 50, 0, 2), 9000);
        for peer_id in [Some(5), None] {
            let (mut tunnel, server) = tunnel_pair(peer_id);
            let mut buf = [0u8; DATAGRAM_CAPACITY];
            let range = tunnel.seal_probe(&mut buf, 9, sink, 300, 777).unwrap();
            let packet = &mut buf[range];
            assert_eq!(packet[0] >> 3, if peer_id.is_some() { 9 } else { 6 });
            let (_, inner) = server.open(packet).unwrap();
            let d = parse_udp_packet(&packet[inner]).unwrap();
            assert_eq!((d.src, d.dst), (tunnel.source, sink));
            assert_eq!(Probe::decode(d.payload), Some(Probe { client: 9, sequence: 1, sent_ns: 777 }));
            assert_eq!(tunnel.next_sequence, 2);

            let range = tunnel.seal_ping(&mut buf).unwrap();
            let (_, inner) = server.open(&mut buf[range.clone()]).unwrap();
            assert_eq!(classify(&buf[range][inner]), Payload::Ping);
            let range = tunnel.seal_exit(&mut buf).unwrap();
            let (_, inner) = server.open(&mut buf[range.clone()]).unwrap();
            assert_eq!(classify(&buf[range][inner]), Payload::OccExit);
        }
    }

    #[test]
    fn packets_are_opened_with_the_key_of_their_key_id() {
        let (mut tunnel, _) = tunnel_pair(Some(1));
        let key2 = Key2::from_ekm([7; 256]);
        let new = DataKey::new(1, &key2.direction_keys(AeadAlgorithm::Aes256Gcm, Role::Client)).unwrap();
        tunnel.previous_key = Some(std::mem::replace(&mut tunnel.key, Arc::new(new)));
        assert_eq!(tunnel.key_for(0x48 | 1).map(DataKey::key_id), Some(1));
        assert_eq!(tunnel.key_for(0x48).map(DataKey::key_id), Some(0));
        assert!(tunnel.key_for(0x48 | 2).is_none());
    }
}
