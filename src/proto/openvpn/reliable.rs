//! The control channel's reliability layer (PROTOCOLS.md §1.4): message ids, in-order
//! delivery, acknowledgements, retransmission with exponential backoff and a send
//! window. One instance per key state and direction pair.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::packet::{AckList, MAX_ACKS, Opcode};

/// Packets in flight before waiting for ACKs (TLS_RELIABLE_N_SEND_BUFFERS).
const SEND_WINDOW: usize = 6;
/// Message ids accepted ahead of the next expected one (TLS_RELIABLE_N_REC_BUFFERS).
const RECV_WINDOW: u32 = 12;
/// A packet is resent at once when this many later packets have been acknowledged.
const FAST_RETRANSMIT_ACKS: u8 = 3;
/// ACKs carried by a packet that also carries a message (CONTROL_SEND_ACK_MAX); a
/// P_ACK_V1 carries up to [`MAX_ACKS`].
pub const ACKS_PER_CONTROL_PACKET: usize = 4;
/// Acknowledgements waiting to be sent. Beyond this, received packets go unacknowledged
/// (the peer resends them), so a peer replaying old ids cannot grow the list.
const MAX_PENDING_ACKS: usize = 2 * RECV_WINDOW as usize;

#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// First retransmission timeout (OpenVPN's `tls-timeout`, 2 s).
    pub initial_timeout: Duration,
    pub max_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing { initial_timeout: Duration::from_secs(2), max_timeout: Duration::from_secs(16) }
    }
}

#[derive(Debug)]
struct Outgoing {
    id: u32,
    opcode: Opcode,
    payload: Vec<u8>,
    /// None until first sent.
    resend_at: Option<Instant>,
    timeout: Duration,
    later_acks: u8,
}

/// What [`Reliable::receive`] made of an incoming message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    New,
    /// Seen before (its ACK was probably lost): acknowledged again, not delivered.
    Duplicate,
    /// Too far ahead of what has been delivered: dropped, not acknowledged.
    OutOfWindow,
}

/// A message to put on the wire now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub opcode: Opcode,
    pub message_id: u32,
    pub payload: Vec<u8>,
}

#[derive(Debug)]
pub struct Reliable {
    timing: Timing,
    next_send_id: u32,
    outgoing: VecDeque<Outgoing>,
    next_recv_id: u32,
    /// Received out of order, indexed by `id - next_recv_id`.
    reorder: VecDeque<Option<(Opcode, Vec<u8>)>>,
    /// Ids to acknowledge, oldest first, without duplicates.
    pending_acks: VecDeque<u32>,
    /// ACKs already sent, most recent first, without duplicates, at most [`MAX_ACKS`].
    /// They fill the spare ACK slots of later packets, as OpenVPN 2.6 does, so that
    /// one lost packet does not lose an ACK for good: 2.6 servers create a session
    /// only from a packet that acknowledges their stateless reset.
    recent_acks: VecDeque<u32>,
}

impl Reliable {
    /// A fresh key state: both directions start at message id 0.
    pub fn new(timing: Timing) -> Self {
        Self::starting_at(timing, 0, 0)
    }

    /// A key state whose first message each way (the resets, id 0) was already
    /// exchanged, as when a session is created from a stateless reset reply.
    pub fn after_resets(timing: Timing) -> Self {
        Self::starting_at(timing, 1, 1)
    }

    fn starting_at(timing: Timing, next_send_id: u32, next_recv_id: u32) -> Self {
        Reliable {
            timing,
            next_send_id,
            outgoing: VecDeque::new(),
            next_recv_id,
            reorder: VecDeque::new(),
            pending_acks: VecDeque::new(),
            recent_acks: VecDeque::with_capacity(MAX_ACKS + ACKS_PER_CONTROL_PACKET),
        }
    }

    /// Queues a message for reliable delivery and returns its id.
    pub fn send(&mut self, opcode: Opcode, payload: Vec<u8>) -> u32 {
        let id = self.next_send_id;
        self.next_send_id = self.next_send_id.wrapping_add(1);
        self.outgoing.push_back(Outgoing {
            id,
            opcode,
            payload,
            resend_at: None,
            timeout: self.timing.initial_timeout,
            later_acks: 0,
        });
        id
    }

    /// Processes ACKs from the peer.
    pub fn on_acks(&mut self, acks: &[u32]) {
        for &acked in acks {
            let Some(pos) = self.outgoing.iter().position(|o| o.id == acked) else {
                continue; // duplicate ACK: 2.6 re-sends recent ACKs on purpose
            };
            self.outgoing.remove(pos);
            for o in self.outgoing.iter_mut().take(SEND_WINDOW) {
                if o.resend_at.is_some() && o.id.wrapping_sub(acked) > u32::MAX / 2 {
                    // `o` was sent before `acked` and is still unacknowledged.
                    o.later_acks = o.later_acks.saturating_add(1);
                }
            }
        }
    }

    /// Processes an incoming reliable message.
    pub fn receive(&mut self, id: u32, opcode: Opcode, payload: &[u8]) -> Received {
        let offset = id.wrapping_sub(self.next_recv_id);
        if offset > u32::MAX / 2 {
            self.ack(id);
            return Received::Duplicate;
        }
        if offset >= RECV_WINDOW {
            return Received::OutOfWindow;
        }
        let offset = offset as usize;
        while self.reorder.len() <= offset {
            self.reorder.push_back(None);
        }
        self.ack(id);
        if self.reorder[offset].is_some() {
            return Received::Duplicate;
        }
        self.reorder[offset] = Some((opcode, payload.to_vec()));
        Received::New
    }

    fn ack(&mut self, id: u32) {
        if self.pending_acks.len() < MAX_PENDING_ACKS && !self.pending_acks.contains(&id) {
            self.pending_acks.push_back(id);
        }
    }

    /// The next in-order message, if it has arrived.
    pub fn deliver(&mut self) -> Option<(Opcode, Vec<u8>)> {
        match self.reorder.front() {
            Some(Some(_)) => {
                self.next_recv_id = self.next_recv_id.wrapping_add(1);
                self.reorder.pop_front().flatten()
            }
            _ => None,
        }
    }

    /// The next message due for (re)transmission at `now`, within the send window.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        let max_timeout = self.timing.max_timeout;
        let o = self.outgoing.iter_mut().take(SEND_WINDOW).find(|o| match o.resend_at {
            None => true,
            Some(t) => t <= now || o.later_acks >= FAST_RETRANSMIT_ACKS,
        })?;
        if o.resend_at.is_some() {
            o.timeout = (o.timeout * 2).min(max_timeout);
        }
        o.resend_at = Some(now + o.timeout);
        o.later_acks = 0;
        Some(Transmit { opcode: o.opcode, message_id: o.id, payload: o.payload.clone() })
    }

    /// The ACKs for one packet, at most `max` (capped at [`MAX_ACKS`]): pending ones
    /// first, oldest first, which then count as sent; the remaining slots repeat the
    /// most recently sent ACKs.
    pub fn take_acks(&mut self, max: usize) -> AckList {
        let max = max.min(MAX_ACKS);
        let fresh = self.pending_acks.len().min(max);
        // Pushed to the front newest first, so they end up in their original order.
        for id in self.pending_acks.drain(..fresh).rev() {
            self.recent_acks.retain(|&r| r != id);
            self.recent_acks.push_front(id);
        }
        self.recent_acks.truncate(MAX_ACKS);
        let mut list = AckList::default();
        for &id in self.recent_acks.iter().take(max) {
            list.push(id);
        }
        list
    }

    /// Some received packet has not been acknowledged yet.
    pub fn has_pending_acks(&self) -> bool {
        !self.pending_acks.is_empty()
    }

    /// When a retransmission is next due.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.outgoing.iter().take(SEND_WINDOW).filter_map(|o| o.resend_at).min()
    }

    /// Everything sent has been acknowledged.
    pub fn all_acked(&self) -> bool {
        self.outgoing.is_empty()
    }

    /// Messages queued or in flight.
    pub fn unacked(&self) -> usize {
        self.outgoing.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> Instant {
        Instant::now()
    }

    #[test]
    fn window_limits_packets_in_flight() {
        let now = t0();
        let mut r = Reliable::new(Timing::default());
        for i in 0..10u8 {
            r.send(Opcode::ControlV1, vec![i]);
        }
        let sent: Vec<u32> = std::iter::from_fn(|| r.poll_transmit(now)).map(|t| t.message_id).collect();
        assert_eq!(sent, (0..6).collect::<Vec<_>>());
        r.on_acks(&[0, 1]);
        let more: Vec<u32> = std::iter::from_fn(|| r.poll_transmit(now)).map(|t| t.message_id).collect();
        assert_eq!(more, vec![6, 7]);
    }

    #[test]
    fn retransmits_with_backoff() {
        let now = t0();
        let mut r = Reliable::new(Timing::default());
        r.send(Opcode::ControlV1, b"x".to_vec());
        assert!(r.poll_transmit(now).is_some());
        assert!(r.poll_transmit(now + Duration::from_millis(1999)).is_none());
        assert_eq!(r.next_timeout(), Some(now + Duration::from_secs(2)));
        let t = now + Duration::from_secs(2);
        assert_eq!(r.poll_transmit(t).unwrap().message_id, 0);
        assert_eq!(r.next_timeout(), Some(t + Duration::from_secs(4)), "timeout doubled");
        r.on_acks(&[0]);
        assert!(r.all_acked());
        assert_eq!(r.next_timeout(), None);
    }

    #[test]
    fn fast_retransmit_after_three_later_acks() {
        let now = t0();
        let mut r = Reliable::new(Timing::default());
        for i in 0..4u8 {
            r.send(Opcode::ControlV1, vec![i]);
        }
        while r.poll_transmit(now).is_some() {}
        r.on_acks(&[1, 2, 3]);
        assert_eq!(r.poll_transmit(now).unwrap().message_id, 0);
    }

    #[test]
    fn reorders_dedups_and_acks() {
        let mut r = Reliable::new(Timing::default());
        assert_eq!(r.receive(2, Opcode::ControlV1, b"c"), Received::New);
        assert_eq!(r.receive(0, Opcode::ControlV1, b"a"), Received::New);
        assert_eq!(r.deliver().unwrap().1, b"a");
        assert!(r.deliver().is_none(), "1 is missing");
        assert_eq!(r.receive(1, Opcode::ControlV1, b"b"), Received::New);
        assert_eq!(r.receive(1, Opcode::ControlV1, b"b"), Received::Duplicate);
        assert_eq!(r.deliver().unwrap().1, b"b");
        assert_eq!(r.deliver().unwrap().1, b"c");
        assert_eq!(r.receive(0, Opcode::ControlV1, b"a"), Received::Duplicate, "old ids are re-acked");
        assert_eq!(r.receive(3 + RECV_WINDOW, Opcode::ControlV1, b"z"), Received::OutOfWindow);
        assert_eq!(r.take_acks(MAX_ACKS).as_slice(), &[2, 0, 1]);
        assert!(!r.has_pending_acks());
    }

    #[test]
    fn acks_are_capped_per_packet() {
        let mut r = Reliable::new(Timing::default());
        for id in 0..11 {
            r.receive(id, Opcode::ControlV1, b"");
        }
        assert_eq!(r.take_acks(MAX_ACKS).as_slice(), &[0, 1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(r.take_acks(MAX_ACKS).as_slice(), &[8, 9, 10, 0, 1, 2, 3, 4], "new ones first, then repeats");
        assert!(!r.has_pending_acks());
        assert_eq!(r.take_acks(ACKS_PER_CONTROL_PACKET).as_slice(), &[8, 9, 10, 0]);
    }

    #[test]
    fn sent_acks_are_repeated_on_later_packets() {
        let mut r = Reliable::new(Timing::default());
        assert!(r.take_acks(MAX_ACKS).is_empty(), "nothing received, nothing to ack");
        r.receive(0, Opcode::HardResetServerV2, b"");
        assert_eq!(r.take_acks(ACKS_PER_CONTROL_PACKET).as_slice(), &[0]);
        assert!(!r.has_pending_acks(), "a repeat is no reason for a P_ACK_V1");
        // The packet with that ACK may be lost: the next ones repeat it.
        assert_eq!(r.take_acks(ACKS_PER_CONTROL_PACKET).as_slice(), &[0]);
        assert_eq!(r.take_acks(MAX_ACKS).as_slice(), &[0]);
        r.deliver();
        r.receive(1, Opcode::ControlV1, b"x");
        assert_eq!(r.take_acks(ACKS_PER_CONTROL_PACKET).as_slice(), &[1, 0], "most recent first");
    }

    #[test]
    fn fresh_acks_go_before_repeats() {
        let mut r = Reliable::new(Timing::default());
        for id in 0..6 {
            r.receive(id, Opcode::ControlV1, b"");
        }
        assert_eq!(r.take_acks(ACKS_PER_CONTROL_PACKET).as_slice(), &[0, 1, 2, 3]);
        assert!(r.has_pending_acks());
        assert_eq!(r.take_acks(ACKS_PER_CONTROL_PACKET).as_slice(), &[4, 5, 0, 1]);
        assert!(!r.has_pending_acks());
    }

    #[test]
    fn an_id_appears_once_per_packet() {
        let mut r = Reliable::new(Timing::default());
        r.receive(0, Opcode::ControlV1, b"a");
        r.receive(1, Opcode::ControlV1, b"b");
        assert_eq!(r.take_acks(MAX_ACKS).as_slice(), &[0, 1]);
        // The peer resends 0 (our ACK was lost): acknowledged again, moved to the front.
        assert_eq!(r.receive(0, Opcode::ControlV1, b"a"), Received::Duplicate);
        assert_eq!(r.take_acks(MAX_ACKS).as_slice(), &[0, 1]);
        assert_eq!(r.receive(1, Opcode::ControlV1, b"b"), Received::Duplicate);
        assert_eq!(r.take_acks(MAX_ACKS).as_slice(), &[1, 0]);
    }

    #[test]
    fn repeated_acks_are_bounded() {
        let mut r = Reliable::new(Timing::default());
        for id in 0..20u32 {
            r.receive(id, Opcode::ControlV1, b"");
            r.deliver();
            let acks = r.take_acks(MAX_ACKS);
            let expect: Vec<u32> = (id.saturating_sub(7)..=id).rev().collect();
            assert_eq!(acks.as_slice(), expect, "the {} most recent, newest first", MAX_ACKS);
        }
        assert_eq!(r.recent_acks.len(), MAX_ACKS);
        assert_eq!(r.take_acks(ACKS_PER_CONTROL_PACKET).as_slice(), &[19, 18, 17, 16]);
        assert_eq!(r.take_acks(100).as_slice().len(), MAX_ACKS, "never more than an ACK record holds");
    }

    #[test]
    fn replayed_old_ids_cannot_grow_the_pending_acks() {
        let mut r = Reliable::after_resets(Timing::default());
        for id in 0..10_000u32 {
            r.receive(id.wrapping_sub(5_000), Opcode::ControlV1, b"");
        }
        assert_eq!(r.pending_acks.len(), MAX_PENDING_ACKS);
    }

    /// Two endpoints over a channel that drops, duplicates and reorders packets:
    /// everything arrives once, in order.
    #[test]
    fn survives_loss_duplication_and_reordering() {
        let mut rng = crate::testing::XorShift(0x2545_f491_4f6c_dd1d);
        let mut next = move || rng.next();
        let timing = Timing { initial_timeout: Duration::from_millis(100), max_timeout: Duration::from_millis(400) };
        let mut a = Reliable::new(timing);
        let mut b = Reliable::new(timing);
        let messages: Vec<Vec<u8>> = (0..200u32).map(|i| i.to_be_bytes().to_vec()).collect();
        for m in &messages {
            a.send(Opcode::ControlV1, m.clone());
        }
        let mut got = Vec::new();
        let mut now = Instant::now();
        let mut in_flight: Vec<(u32, Vec<u8>)> = Vec::new();
        for _ in 0..20_000 {
            while let Some(t) = a.poll_transmit(now) {
                if next() % 100 >= 30 {
                    in_flight.push((t.message_id, t.payload.clone()));
                }
                if next() % 100 < 10 {
                    in_flight.push((t.message_id, t.payload));
                }
            }
            // Deliver a random one of the packets in flight (reordering).
            if !in_flight.is_empty() {
                let i = (next() as usize) % in_flight.len();
                let (id, p) = in_flight.swap_remove(i);
                b.receive(id, Opcode::ControlV1, &p);
                while let Some((_, p)) = b.deliver() {
                    got.push(p);
                }
            }
            let acks = b.take_acks(ACKS_PER_CONTROL_PACKET);
            if next() % 100 >= 30 {
                a.on_acks(acks.as_slice());
            }
            if a.all_acked() && got.len() == messages.len() {
                break;
            }
            now += Duration::from_millis(10);
        }
        assert_eq!(got, messages);
        assert!(a.all_acked());
    }
}
