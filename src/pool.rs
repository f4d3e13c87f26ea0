//! The client address pool: one IPv4 prefix. Its first host address is the gateway's own
//! tunnel address; clients get the others, never the network or broadcast address.
//!
//! Allocation is a two-level bitmap: one bit per client address, and one bit per 64-address
//! word saying the word is full. Finding the lowest free address skips full words 4096
//! addresses at a time from a cursor below which everything is taken, so it is O(1)
//! amortized and a /16 (65 533 clients) costs 8 KiB.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// Network, gateway and broadcast addresses are never handed to clients.
const RESERVED_ADDRESSES: u64 = 3;

#[derive(Debug, Clone)]
pub struct AddressPool {
    network: Ipv4Net,
    /// The address of client index 0: the network address + 2.
    first_client: u32,
    capacity: u32,
    in_use: u32,
    /// Bit `i % 64` of word `i / 64` is set while client index `i` is held. Bits past
    /// `capacity` in the last word are set too, so they are never handed out.
    held: Vec<u64>,
    /// Bit `w % 64` of word `w / 64` is set while `held[w]` is all ones (padding bits too).
    full_words: Vec<u64>,
    /// Every word of `full_words` before this index is all ones.
    first_not_full: usize,
}

impl AddressPool {
    /// A pool over `net` with nothing allocated. Host bits of `net` are ignored.
    ///
    /// # Panics
    /// If `net` is longer than /30, which leaves no client address (a validated
    /// configuration has a /29 or larger pool).
    pub fn new(net: Ipv4Net) -> AddressPool {
        assert!(net.prefix_len() <= 30, "an address pool needs a /30 or larger prefix, got {net}");
        let network = net.trunc();
        let capacity = Self::client_capacity(network);
        let held_words = capacity.div_ceil(64) as usize;
        let mut held = vec![0u64; held_words];
        if let Some(last) = held.last_mut() {
            *last = padding_bits(capacity as usize);
        }
        let mut full_words = vec![0u64; held_words.div_ceil(64)];
        if let Some(last) = full_words.last_mut() {
            *last = padding_bits(held_words);
        }
        AddressPool {
            network,
            first_client: u32::from(network.network()) + 2,
            capacity,
            in_use: 0,
            held,
            full_words,
            first_not_full: 0,
        }
    }

    /// How many client addresses a pool over `net` has: all but network, gateway and broadcast.
    pub fn client_capacity(net: Ipv4Net) -> u32 {
        let size = 1u64 << (32 - u32::from(net.prefix_len()));
        u32::try_from(size.saturating_sub(RESERVED_ADDRESSES)).expect("a /0 has fewer than 2^32 - 3 clients")
    }

    /// The prefix this pool covers (host bits cleared).
    pub fn network(&self) -> Ipv4Net {
        self.network
    }

    /// The gateway's own tunnel address: the first host address.
    pub fn gateway_address(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network.network()) + 1)
    }

    /// Hands out `preferred` if it is a free client address of this pool, else the lowest
    /// free one; `None` when the pool is exhausted.
    pub fn allocate(&mut self, preferred: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
        let index = match preferred.and_then(|address| self.index_of(address)) {
            Some(index) if !self.is_held(index) => index,
            _ => self.lowest_free()?,
        };
        self.hold(index);
        Some(Ipv4Addr::from(self.first_client + index as u32))
    }

    /// Returns `address` to the pool. False, and nothing changes, if it was not allocated.
    pub fn release(&mut self, address: Ipv4Addr) -> bool {
        let Some(index) = self.index_of(address) else { return false };
        if !self.is_held(index) {
            return false;
        }
        let word = index / 64;
        self.held[word] &= !(1u64 << (index % 64));
        self.full_words[word / 64] &= !(1u64 << (word % 64));
        self.first_not_full = self.first_not_full.min(word / 64);
        self.in_use -= 1;
        true
    }

    /// Whether `address` is currently allocated to a client.
    pub fn is_allocated(&self, address: Ipv4Addr) -> bool {
        self.index_of(address).is_some_and(|index| self.is_held(index))
    }

    /// Whether `address` is one of the client addresses of this pool (the gateway, network
    /// and broadcast addresses are not).
    pub fn contains(&self, address: Ipv4Addr) -> bool {
        self.index_of(address).is_some()
    }

    /// Addresses currently allocated.
    pub fn in_use(&self) -> u32 {
        self.in_use
    }

    /// Client addresses in the pool, allocated or not.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    fn index_of(&self, address: Ipv4Addr) -> Option<usize> {
        let offset = u32::from(address).checked_sub(self.first_client)?;
        (offset < self.capacity).then_some(offset as usize)
    }

    fn is_held(&self, index: usize) -> bool {
        self.held[index / 64] & (1u64 << (index % 64)) != 0
    }

    fn hold(&mut self, index: usize) {
        let word = index / 64;
        self.held[word] |= 1u64 << (index % 64);
        if self.held[word] == u64::MAX {
            self.full_words[word / 64] |= 1u64 << (word % 64);
        }
        self.in_use += 1;
    }

    fn lowest_free(&mut self) -> Option<usize> {
        while let Some(&summary) = self.full_words.get(self.first_not_full) {
            if summary != u64::MAX {
                let word = self.first_not_full * 64 + summary.trailing_ones() as usize;
                return Some(word * 64 + self.held[word].trailing_ones() as usize);
            }
            self.first_not_full += 1;
        }
        None
    }
}

/// The bits of a 64-bit word at and above `used % 64`, i.e. the unused tail of the last word
/// of a bitmap of `used` bits (none when `used` is a multiple of 64).
fn padding_bits(used: usize) -> u64 {
    match used % 64 {
        0 => 0,
        tail => u64::MAX << tail,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashSet};

    use super::*;

    fn pool(cidr: &str) -> AddressPool {
        AddressPool::new(cidr.parse().expect("test prefix parses"))
    }

    fn addr(text: &str) -> Ipv4Addr {
        text.parse().expect("test address parses")
    }

    #[test]
    fn slash_29_has_exactly_five_clients_from_2_to_6() {
        let mut pool = pool("10.0.0.0/29");
        assert_eq!(pool.gateway_address(), addr("10.0.0.1"));
        assert_eq!(pool.capacity(), 5);
        let handed: Vec<Ipv4Addr> = std::iter::from_fn(|| pool.allocate(None)).collect();
        let expected: Vec<Ipv4Addr> = (2..=6).map(|i| Ipv4Addr::new(10, 0, 0, i)).collect();
        assert_eq!(handed, expected);
        assert_eq!(pool.in_use(), 5);
        for reserved in ["10.0.0.0", "10.0.0.1", "10.0.0.7"] {
            assert!(!pool.contains(addr(reserved)), "{reserved} must never be handed out");
        }
    }

    #[test]
    fn capacities() {
        assert_eq!(pool("10.0.0.0/30").capacity(), 1);
        assert_eq!(pool("10.0.0.0/24").capacity(), 253);
        assert_eq!(pool("10.0.0.0/16").capacity(), 65_533);
        assert_eq!(AddressPool::client_capacity("10.0.0.0/8".parse().unwrap()), 16_777_213);
        assert_eq!(AddressPool::client_capacity("0.0.0.0/0".parse().unwrap()), u32::MAX - 2);
        assert_eq!(AddressPool::client_capacity("10.0.0.0/31".parse().unwrap()), 0);
    }

    #[test]
    fn host_bits_of_the_prefix_are_ignored() {
        let mut pool = pool("192.168.7.77/24");
        assert_eq!(pool.network().to_string(), "192.168.7.0/24");
        assert_eq!(pool.gateway_address(), addr("192.168.7.1"));
        assert_eq!(pool.allocate(None), Some(addr("192.168.7.2")));
    }

    #[test]
    fn exhaustion_then_reuse_after_release() {
        let mut pool = pool("10.9.0.0/28");
        let all: Vec<Ipv4Addr> = std::iter::from_fn(|| pool.allocate(None)).collect();
        assert_eq!(all.len(), 13);
        assert_eq!(pool.allocate(None), None);
        assert_eq!(pool.allocate(Some(addr("10.9.0.5"))), None, "a held preferred address is not handed twice");
        assert!(pool.release(addr("10.9.0.9")));
        assert_eq!(pool.in_use(), 12);
        assert_eq!(pool.allocate(Some(addr("10.9.0.3"))), Some(addr("10.9.0.9")));
        assert_eq!(pool.allocate(None), None);
    }

    #[test]
    fn lowest_free_address_is_handed_out_first() {
        let mut pool = pool("10.0.0.0/24");
        for _ in 0..10 {
            pool.allocate(None);
        }
        assert!(pool.release(addr("10.0.0.8")));
        assert!(pool.release(addr("10.0.0.4")));
        assert_eq!(pool.allocate(None), Some(addr("10.0.0.4")));
        assert_eq!(pool.allocate(None), Some(addr("10.0.0.8")));
        assert_eq!(pool.allocate(None), Some(addr("10.0.0.12")));
    }

    #[test]
    fn preferred_address_is_granted_when_free_and_inside() {
        let mut pool = pool("10.0.0.0/24");
        assert_eq!(pool.allocate(Some(addr("10.0.0.200"))), Some(addr("10.0.0.200")));
        assert!(pool.is_allocated(addr("10.0.0.200")));
        // Taken, the gateway, broadcast, or outside: the lowest free address instead.
        for refused in ["10.0.0.200", "10.0.0.1", "10.0.0.255", "10.0.0.0", "10.0.1.5"] {
            let got = pool.allocate(Some(addr(refused))).expect("pool has room");
            assert_ne!(got, addr(refused));
        }
        let held: Vec<bool> = (2..=6).map(|i| pool.is_allocated(Ipv4Addr::new(10, 0, 0, i))).collect();
        assert_eq!(held, vec![true; 5]);
        assert!(!pool.is_allocated(addr("10.0.0.7")));
    }

    #[test]
    fn release_refuses_what_it_did_not_hand_out() {
        let mut pool = pool("10.0.0.0/24");
        let a = pool.allocate(None).expect("pool has room");
        assert!(!pool.release(addr("10.0.0.50")), "never allocated");
        assert!(!pool.release(pool.gateway_address()), "the gateway address");
        assert!(!pool.release(addr("172.16.0.2")), "outside the pool");
        assert!(pool.release(a));
        assert!(!pool.release(a), "double free");
        assert_eq!(pool.in_use(), 0);
    }

    #[test]
    fn slash_16_fills_completely_and_reuses_the_released_address() {
        let mut pool = pool("10.20.0.0/16");
        let mut seen = HashSet::new();
        while let Some(a) = pool.allocate(None) {
            assert!(seen.insert(a), "{a} handed out twice");
        }
        assert_eq!(seen.len(), 65_533);
        assert_eq!(pool.in_use(), 65_533);
        assert!(!seen.contains(&addr("10.20.0.1")) && !seen.contains(&addr("10.20.255.255")));
        assert!(pool.release(addr("10.20.200.17")));
        assert_eq!(pool.allocate(None), Some(addr("10.20.200.17")));
        assert_eq!(pool.allocate(None), None);
    }

    use crate::testing::XorShift;

    /// Random allocations and releases against a model (a HashSet of held addresses, with a
    /// sorted set of free ones to name the lowest); the pool must agree at every step: the
    /// preferred address when free, else the lowest free one, never an address twice, and
    /// release true exactly for held addresses. Each pool fills up, runs dry and drains;
    /// the /19 spans two summary words.
    #[test]
    fn random_operations_match_a_set_model() {
        let cases = [
            ("10.1.0.0/26", 0x9e37_79b9_7f4a_7c15_u64, 20_000),
            ("10.2.0.0/23", 0xd1b5_4a32_d192_ed03, 20_000),
            ("10.3.0.0/19", 7, 50_000),
        ];
        for (cidr, seed, steps) in cases {
            let mut pool = pool(cidr);
            let net: Ipv4Net = cidr.parse().unwrap();
            let (first, last) = (u32::from(net.network()) + 2, u32::from(net.broadcast()) - 1);
            let mut held: HashSet<u32> = HashSet::new();
            let mut held_list: Vec<u32> = Vec::new(); // the same addresses, to pick one at random
            let mut free: BTreeSet<u32> = (first..=last).collect();
            let mut rng = XorShift(seed);
            // From a little below the pool to a little above it, to exercise refusals.
            let random_address =
                |rng: &mut XorShift| Ipv4Addr::from(first - 4 + rng.below(u64::from(last - first) + 8) as u32);
            let mut exhausted = false;
            for step in 0..steps {
                let allocate_percent = if step < steps / 2 { 85 } else { 30 };
                if rng.below(100) < allocate_percent {
                    let preferred = (rng.below(2) == 0).then(|| random_address(&mut rng));
                    let expected = match preferred.map(u32::from) {
                        Some(p) if free.contains(&p) => Some(p),
                        _ => free.first().copied(),
                    };
                    let got = pool.allocate(preferred).map(u32::from);
                    assert_eq!(got, expected, "{cidr} step {step}: allocate({preferred:?})");
                    match got {
                        Some(a) => {
                            assert!(held.insert(a) && free.remove(&a));
                            held_list.push(a);
                        }
                        None => exhausted = true,
                    }
                } else {
                    let address = if rng.below(4) == 0 || held_list.is_empty() {
                        u32::from(random_address(&mut rng))
                    } else {
                        held_list[rng.below(held_list.len() as u64) as usize]
                    };
                    let expected = held.remove(&address);
                    if expected {
                        free.insert(address);
                        let position = held_list.iter().position(|&a| a == address).expect("lists agree");
                        held_list.swap_remove(position);
                    }
                    let released = pool.release(Ipv4Addr::from(address));
                    assert_eq!(released, expected, "{cidr} step {step}: release({address})");
                }
                assert_eq!(pool.in_use() as usize, held.len());
            }
            assert!(exhausted, "{cidr}: the pool never ran dry");
            assert!(held.len() < pool.capacity() as usize / 4, "{cidr}: the pool never drained");
        }
    }
}
