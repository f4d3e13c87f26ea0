//! Helpers for unit tests: deterministic pseudo-random numbers (xorshift64, Marsaglia
//! 2003) for lossy networks, mutated packets and model tests that must fail the same way
//! every run; and bytes written as hex, the way published test vectors are.

/// The bytes of a hex string; whitespace is ignored (vectors are copied in groups).
pub fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("a hex test vector")).collect()
}

pub struct XorShift(pub u64);

impl XorShift {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
