//! The client address pools: the default pool and the pools chosen by group.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::pool::AddressPool;

pub struct Pools {
    default: AddressPool,
    /// In priority order: the first pool whose group the client belongs to is its pool.
    by_group: Vec<(String, AddressPool)>,
}

impl Pools {
    pub fn new(default: Ipv4Net, by_group: &[(String, Ipv4Net)]) -> Pools {
        Pools {
            default: AddressPool::new(default),
            by_group: by_group.iter().map(|(g, net)| (g.clone(), AddressPool::new(*net))).collect(),
        }
    }

    /// An address for a client in `groups`: `framed` if the authentication server chose
    /// one and it is free in one of the pools, else one from the client's pool (its
    /// `preferred` earlier address when free there).
    pub fn allocate(
        &mut self,
        groups: &[String],
        framed: Option<Ipv4Addr>,
        preferred: Option<Ipv4Addr>,
    ) -> Result<Ipv4Addr, &'static str> {
        if let Some(address) = framed
            && let Some(pool) = self.pool_mut(address)
            && !pool.is_allocated(address)
        {
            return pool.allocate(Some(address)).ok_or("the address pool is exhausted");
        }
        let pool = match self.by_group.iter().position(|(g, _)| groups.contains(g)) {
            Some(i) => &mut self.by_group[i].1,
            None => &mut self.default,
        };
        pool.allocate(preferred.filter(|p| pool.contains(*p))).ok_or("the address pool is exhausted")
    }

    /// Whether `address` could be handed out (it lies in a pool and is free).
    pub fn is_free(&self, address: Ipv4Addr) -> bool {
        self.pool(address).is_some_and(|p| !p.is_allocated(address))
    }

    pub fn release(&mut self, address: Ipv4Addr) -> bool {
        self.pool_mut(address).is_some_and(|p| p.release(address))
    }

    /// The pool `address` belongs to.
    pub fn pool(&self, address: Ipv4Addr) -> Option<&AddressPool> {
        std::iter::once(&self.default).chain(self.by_group.iter().map(|(_, p)| p)).find(|p| p.contains(address))
    }

    fn pool_mut(&mut self, address: Ipv4Addr) -> Option<&mut AddressPool> {
        std::iter::once(&mut self.default).chain(self.by_group.iter_mut().map(|(_, p)| p)).find(|p| p.contains(address))
    }

    /// Marks `address` taken (a live session's, carried over a reload); false when it
    /// lies in no pool or is taken already.
    pub fn reserve(&mut self, address: Ipv4Addr) -> bool {
        self.pool_mut(address).is_some_and(|p| !p.is_allocated(address) && p.allocate(Some(address)) == Some(address))
    }

    /// The prefixes of every pool.
    pub fn networks(&self) -> Vec<Ipv4Net> {
        self.all().map(AddressPool::network).collect()
    }

    pub fn in_use(&self) -> u32 {
        self.all().map(AddressPool::in_use).sum()
    }

    pub fn capacity(&self) -> u32 {
        self.all().map(AddressPool::capacity).sum()
    }

    fn all(&self) -> impl Iterator<Item = &AddressPool> {
        std::iter::once(&self.default).chain(self.by_group.iter().map(|(_, p)| p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pools() -> Pools {
        Pools::new(
            "172.16.201.0/24".parse().unwrap(),
            &[("eng".into(), "172.16.202.0/29".parse().unwrap()), ("ops".into(), "172.16.203.0/29".parse().unwrap())],
        )
    }

    #[test]
    fn groups_choose_the_pool_in_priority_order() {
        let mut p = pools();
        assert_eq!(p.allocate(&[], None, None), Ok(Ipv4Addr::new(172, 16, 201, 2)));
        assert_eq!(p.allocate(&["ops".into(), "eng".into()], None, None), Ok(Ipv4Addr::new(172, 16, 202, 2)));
        assert_eq!(p.allocate(&["ops".into()], None, None), Ok(Ipv4Addr::new(172, 16, 203, 2)));
        assert_eq!(p.pool(Ipv4Addr::new(172, 16, 203, 2)).unwrap().gateway_address(), Ipv4Addr::new(172, 16, 203, 1));
        assert_eq!(p.in_use(), 3);
    }

    #[test]
    fn framed_address_is_honoured_when_free_and_inside_a_pool() {
        let mut p = pools();
        let framed = Ipv4Addr::new(172, 16, 201, 50);
        assert_eq!(p.allocate(&[], Some(framed), None), Ok(framed));
        assert!(!p.is_free(framed));
        // Taken: the client gets another address of its pool.
        assert_eq!(p.allocate(&[], Some(framed), None), Ok(Ipv4Addr::new(172, 16, 201, 2)));
        // Outside every pool: ignored.
        assert_eq!(p.allocate(&[], Some(Ipv4Addr::new(10, 0, 0, 1)), None), Ok(Ipv4Addr::new(172, 16, 201, 3)));
        assert!(p.release(framed));
        assert!(p.is_free(framed));
        assert!(!p.release(framed), "never freed twice");
    }

    #[test]
    fn reserve_carries_live_addresses_into_new_pools() {
        let mut p = pools();
        let live = Ipv4Addr::new(172, 16, 201, 9);
        assert!(p.reserve(live));
        assert!(!p.reserve(live), "taken already");
        assert!(!p.reserve(Ipv4Addr::new(10, 0, 0, 9)), "in no pool");
        assert_eq!(p.allocate(&[], Some(live), None), Ok(Ipv4Addr::new(172, 16, 201, 2)));
        assert_eq!(p.networks().len(), 3);
    }

    #[test]
    fn an_exhausted_group_pool_says_so() {
        let mut p = pools();
        for _ in 0..5 {
            p.allocate(&["eng".into()], None, None).unwrap();
        }
        assert_eq!(p.allocate(&["eng".into()], None, None), Err("the address pool is exhausted"));
    }
}
