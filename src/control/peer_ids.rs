//! Peer-ids, handed out by worker. The steering program of the OpenVPN sockets sends a
//! P_DATA_V2 packet to worker `peer_id % workers` (dataplane/reuseport.rs), so a session
//! gets a peer-id of its owner's residue while one is free. When all of those are taken
//! (more sessions on one worker than its share of the table), it gets any free one: its
//! data then reaches another worker, which hands it to the owner. The space stays
//! `0..capacity` and every id in it can be used, as before.

pub struct PeerIds {
    /// Free ids by residue modulo the worker count, each list descending (`pop` gives
    /// the lowest).
    free: Vec<Vec<u32>>,
}

impl PeerIds {
    pub fn new(capacity: u32, workers: usize) -> PeerIds {
        let workers = workers.max(1);
        let mut free = vec![Vec::new(); workers];
        for id in (0..capacity).rev() {
            free[id as usize % workers].push(id);
        }
        PeerIds { free }
    }

    /// A free peer-id for a session owned by `worker`: the lowest of its residue, or
    /// when none is left, the lowest of the residue with the most free ids.
    pub fn take(&mut self, worker: usize) -> Option<u32> {
        let workers = self.free.len();
        if let Some(id) = self.free[worker % workers].pop() {
            return Some(id);
        }
        self.free.iter_mut().max_by_key(|ids| ids.len())?.pop()
    }

    pub fn give_back(&mut self, id: u32) {
        let workers = self.free.len();
        self.free[id as usize % workers].push(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_worker_gets_ids_of_its_residue_lowest_first() {
        let mut ids = PeerIds::new(10, 3);
        assert_eq!(ids.take(0), Some(0));
        assert_eq!(ids.take(1), Some(1));
        assert_eq!(ids.take(1), Some(4));
        assert_eq!(ids.take(2), Some(2));
        assert_eq!(ids.take(0), Some(3));
        ids.give_back(1);
        assert_eq!(ids.take(1), Some(1), "a freed id is used again");
        assert_eq!(ids.take(7), Some(7), "a worker index past the count wraps (7 % 3 = 1)");
    }

    #[test]
    fn every_id_is_handed_out_even_when_one_worker_holds_most_sessions() {
        let mut ids = PeerIds::new(10, 4);
        let taken: Vec<u32> = (0..10).map(|_| ids.take(2).expect("a free id")).collect();
        assert_eq!(&taken[..2], &[2, 6], "its own residue first");
        let mut sorted = taken.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>(), "then any other: the capacity stays 10");
        assert_eq!(ids.take(0), None);
        ids.give_back(9);
        assert_eq!(ids.take(3), Some(9));
    }
}
