//! Sliding-window anti-replay for 64-bit sequence numbers (RFC 4303 §3.4.3 and
//! Appendix A, the same idea as OpenVPN's packet_id window).
//!
//! Protocol-neutral: OpenVPN data packet-ids, tls-crypt replay ids and ESP sequence
//! numbers all start at 1, so sequence number 0 is always refused.
//!
//! Use it in this order for every received packet:
//! 1. [`ReplayWindow::check`] with the sequence number read from the packet header
//!    (cheap, before spending time on decryption);
//! 2. authenticate/decrypt the packet;
//! 3. [`ReplayWindow::update`] only if that succeeded, so forged packets cannot move
//!    the window.

/// Number of 64-bit words in the bitmap. A power of two so the ring index is a mask.
const BITMAP_WORDS: usize = 16;
const BITS_PER_WORD: u64 = 64;

/// How many sequence numbers, counting down from (and including) the highest one
/// seen, are tracked. Anything older is refused as too old.
///
/// The bitmap is a ring of 64-bit blocks of sequence numbers; the block holding the
/// highest number may be only partly used, so one block is kept in reserve and the
/// window is `(BITMAP_WORDS - 1) * 64` = 960 packets. That tolerates well over the
/// reordering seen on real paths (RFC 4303 asks for at least 32, OpenVPN defaults to
/// 64, strongSwan's libipsec uses 128) for 136 bytes per window.
pub const WINDOW_SIZE: u64 = (BITMAP_WORDS as u64 - 1) * BITS_PER_WORD;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    #[error("sequence number 0 is never valid")]
    Zero,
    #[error("sequence number is older than the replay window")]
    TooOld,
    #[error("sequence number was already received (replayed packet)")]
    Replayed,
}

/// Receive-side replay state for one key/SA. No allocation; `check` is O(1) and
/// `update` is O(1) amortized (a jump clears at most `BITMAP_WORDS` words).
#[derive(Debug, Clone)]
pub struct ReplayWindow {
    /// Highest sequence number accepted so far; 0 before the first packet.
    highest: u64,
    /// Bit `seq % 64` of word `(seq / 64) % BITMAP_WORDS` is set once `seq` was accepted.
    /// Only blocks within the window are meaningful; older ones are cleared on reuse.
    bitmap: [u64; BITMAP_WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplayWindow {
    pub const fn new() -> Self {
        ReplayWindow { highest: 0, bitmap: [0; BITMAP_WORDS] }
    }

    /// The highest sequence number accepted so far (0 if none).
    pub fn highest(&self) -> u64 {
        self.highest
    }

    /// Would a packet with this sequence number be acceptable? Does not change state.
    pub fn check(&self, seq: u64) -> Result<(), ReplayError> {
        if seq == 0 {
            return Err(ReplayError::Zero);
        }
        if seq > self.highest {
            return Ok(());
        }
        if self.highest - seq >= WINDOW_SIZE {
            return Err(ReplayError::TooOld);
        }
        let (word, mask) = Self::position(seq);
        if self.bitmap[word] & mask != 0 {
            return Err(ReplayError::Replayed);
        }
        Ok(())
    }

    /// Records `seq` as received. Call only after the packet authenticated. Numbers
    /// that are 0 or have fallen out of the window meanwhile (another packet moved it
    /// on between `check` and `update`) are ignored.
    pub fn update(&mut self, seq: u64) {
        if seq == 0 {
            return;
        }
        if seq > self.highest {
            self.advance_to(seq);
        } else if self.highest - seq >= WINDOW_SIZE {
            return;
        }
        let (word, mask) = Self::position(seq);
        self.bitmap[word] |= mask;
    }

    /// Moves the top of the window to `seq`, clearing the blocks that now enter it
    /// (they still hold bits of sequence numbers one ring turn older).
    fn advance_to(&mut self, seq: u64) {
        let old_block = self.highest / BITS_PER_WORD;
        let new_block = seq / BITS_PER_WORD;
        let blocks_entering = new_block - old_block;
        if blocks_entering >= BITMAP_WORDS as u64 {
            self.bitmap = [0; BITMAP_WORDS];
        } else {
            for block in old_block + 1..=new_block {
                self.bitmap[Self::word_index(block)] = 0;
            }
        }
        self.highest = seq;
    }

    fn word_index(block: u64) -> usize {
        // The mask keeps the value below BITMAP_WORDS, so the cast cannot truncate.
        (block & (BITMAP_WORDS as u64 - 1)) as usize
    }

    fn position(seq: u64) -> (usize, u64) {
        (Self::word_index(seq / BITS_PER_WORD), 1u64 << (seq % BITS_PER_WORD))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// check + update, as a receiver does for an authentic packet.
    fn receive(w: &mut ReplayWindow, seq: u64) -> Result<(), ReplayError> {
        w.check(seq)?;
        w.update(seq);
        Ok(())
    }

    #[test]
    fn window_is_at_least_256_packets() {
        const { assert!(WINDOW_SIZE >= 256) };
        assert!(BITMAP_WORDS.is_power_of_two());
    }

    #[test]
    fn zero_is_always_refused() {
        let mut w = ReplayWindow::new();
        assert_eq!(w.check(0), Err(ReplayError::Zero));
        w.update(0);
        assert_eq!(w.highest(), 0);
        receive(&mut w, 5).unwrap();
        assert_eq!(w.check(0), Err(ReplayError::Zero));
    }

    #[test]
    fn in_order_sequence_and_duplicates() {
        let mut w = ReplayWindow::new();
        for seq in 1..=1000 {
            assert_eq!(receive(&mut w, seq), Ok(()), "seq {seq}");
            assert_eq!(w.check(seq), Err(ReplayError::Replayed), "dup {seq}");
        }
        assert_eq!(w.highest(), 1000);
        assert_eq!(w.check(999), Err(ReplayError::Replayed));
        assert_eq!(w.check(1001), Ok(()));
    }

    #[test]
    fn check_alone_does_not_change_state() {
        let mut w = ReplayWindow::new();
        receive(&mut w, 10).unwrap();
        assert_eq!(w.check(11), Ok(()));
        assert_eq!(w.check(11), Ok(()));
        assert_eq!(w.highest(), 10);
        assert_eq!(w.check(9), Ok(()));
    }

    #[test]
    fn reordered_packets_inside_the_window_are_accepted_once() {
        let mut w = ReplayWindow::new();
        receive(&mut w, 100).unwrap();
        for seq in (1..100).rev() {
            assert_eq!(receive(&mut w, seq), Ok(()), "seq {seq}");
        }
        for seq in 1..=100 {
            assert_eq!(w.check(seq), Err(ReplayError::Replayed), "seq {seq}");
        }
        assert_eq!(w.highest(), 100);
    }

    #[test]
    fn window_edge() {
        let mut w = ReplayWindow::new();
        let top = 10_000;
        receive(&mut w, top).unwrap();
        // The oldest acceptable number is top - WINDOW_SIZE + 1; one below is too old.
        let oldest = top - WINDOW_SIZE + 1;
        assert_eq!(w.check(oldest - 1), Err(ReplayError::TooOld));
        assert_eq!(receive(&mut w, oldest), Ok(()));
        assert_eq!(w.check(oldest), Err(ReplayError::Replayed));
        // Moving the top by one pushes `oldest` out of the window.
        receive(&mut w, top + 1).unwrap();
        assert_eq!(w.check(oldest), Err(ReplayError::TooOld));
        assert_eq!(w.check(oldest + 1), Ok(()));
    }

    #[test]
    fn stale_bits_do_not_survive_a_ring_turn() {
        // Fill every bit of the ring, then move up one block at a time. Each step reuses
        // a word that is full of bits from one ring turn earlier; numbers just received
        // around the new top must not be reported as replays.
        let mut w = ReplayWindow::new();
        for seq in 1..=(BITMAP_WORDS as u64 * 64) {
            receive(&mut w, seq).unwrap();
        }
        let top = w.highest();
        for block in 1..=(BITMAP_WORDS as u64 * 2) {
            let seq = top + block * 64;
            assert_eq!(receive(&mut w, seq), Ok(()));
            assert_eq!(w.check(seq - 1), Ok(()), "just below {seq}");
            assert_eq!(w.check(seq - 63), Ok(()));
        }
    }

    #[test]
    fn big_jumps_clear_everything_and_keep_the_latest() {
        let mut w = ReplayWindow::new();
        for seq in 1..=300 {
            receive(&mut w, seq).unwrap();
        }
        let far = 1u64 << 40;
        receive(&mut w, far).unwrap();
        assert_eq!(w.check(300), Err(ReplayError::TooOld));
        assert_eq!(w.check(far), Err(ReplayError::Replayed));
        for back in 1..WINDOW_SIZE {
            assert_eq!(w.check(far - back), Ok(()), "back {back}");
        }
        assert_eq!(w.check(far - WINDOW_SIZE), Err(ReplayError::TooOld));
    }

    #[test]
    fn word_boundaries() {
        let mut w = ReplayWindow::new();
        for seq in [63, 64, 65, 127, 128, 129] {
            receive(&mut w, seq).unwrap();
        }
        for seq in [63, 64, 65, 127, 128, 129] {
            assert_eq!(w.check(seq), Err(ReplayError::Replayed), "seq {seq}");
        }
        for seq in [1, 62, 66, 126, 130] {
            assert_eq!(w.check(seq), Ok(()), "seq {seq}");
        }
    }

    #[test]
    fn update_of_a_number_that_fell_out_meanwhile_is_ignored() {
        let mut w = ReplayWindow::new();
        receive(&mut w, 5).unwrap();
        // Two packets pass `check`; the later one is authenticated first and moves the
        // window far ahead; the earlier one's update must not corrupt the bitmap.
        assert_eq!(w.check(6), Ok(()));
        receive(&mut w, 5 + 10 * WINDOW_SIZE).unwrap();
        w.update(6);
        assert_eq!(w.highest(), 5 + 10 * WINDOW_SIZE);
        let (word, mask) = ReplayWindow::position(6);
        assert_eq!(w.bitmap[word] & mask, 0);
    }

    #[test]
    fn near_the_top_of_the_u64_range() {
        let mut w = ReplayWindow::new();
        receive(&mut w, u64::MAX - 1).unwrap();
        receive(&mut w, u64::MAX).unwrap();
        assert_eq!(w.check(u64::MAX), Err(ReplayError::Replayed));
        assert_eq!(w.check(u64::MAX - 2), Ok(()));
        assert_eq!(w.check(u64::MAX - WINDOW_SIZE), Err(ReplayError::TooOld));
    }
}
