//! Which partitions an instance should hold: a pure policy every instance runs on the same
//! view of the lease table, so that together they converge on each partition held by
//! exactly one live instance, with shares as even as they can be, moving as few partitions
//! as possible (sticky: an instance keeps what it holds up to its share).

use std::collections::{BTreeMap, BTreeSet};

/// What one instance should do now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Moves {
    /// Free partitions (unheld, or their lease expired) to try to take, in order.
    pub acquire: Vec<i32>,
    /// Partitions to hand back (flush, snapshot, release) for an instance short of its share.
    pub release: Vec<i32>,
}

/// The share of each live member: `partitions / members`, the first `partitions % members`
/// members (in id order) one more.
pub fn shares(partitions: usize, members: &BTreeSet<String>) -> BTreeMap<&str, usize> {
    let n = members.len().max(1);
    members.iter().enumerate().map(|(i, m)| (m.as_str(), partitions / n + usize::from(i < partitions % n))).collect()
}

/// `holders`: the live holder of each partition (expired leases left out); `members`: the
/// live instances, `me` among them.
///
/// An instance above its share releases its highest partitions, but only while some member
/// is below its share (nothing moves for the sake of moving). One below its share takes
/// free partitions, lowest first.
pub fn moves(partitions: &[i32], holders: &BTreeMap<i32, String>, members: &BTreeSet<String>, me: &str) -> Moves {
    let shares = shares(partitions.len(), members);
    let Some(&share) = shares.get(me) else {
        return Moves::default(); // not a member (yet): hold nothing new
    };
    let mut held: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (&p, owner) in holders {
        held.entry(owner.as_str()).or_default().push(p);
    }
    // In ascending order: `holders` is.
    let mine = held.get(me).map_or(&[][..], Vec::as_slice);
    let free: Vec<i32> = partitions.iter().copied().filter(|p| !holders.contains_key(p)).collect();
    let starving = shares.iter().any(|(m, &s)| held.get(m).map_or(0, Vec::len) < s);
    let release = if mine.len() > share && starving { mine[share..].to_vec() } else { Vec::new() };
    let acquire = free.into_iter().take(share.saturating_sub(mine.len())).collect();
    Moves { acquire, release }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    /// Runs the policy for every member in turn (each sees the table as the previous left
    /// it) until nothing moves; returns the holders.
    fn settle(
        partitions: &[i32],
        mut holders: BTreeMap<i32, String>,
        live: &BTreeSet<String>,
    ) -> BTreeMap<i32, String> {
        for _round in 0..10 {
            let mut moved = false;
            for m in live {
                let mv = moves(partitions, &holders, live, m);
                for p in &mv.release {
                    holders.remove(p);
                    moved = true;
                }
                for p in mv.acquire {
                    holders.insert(p, m.clone());
                    moved = true;
                }
            }
            if !moved {
                return holders;
            }
        }
        panic!("the policy did not settle: {holders:?}");
    }

    #[test]
    fn shares_are_even_and_sum_to_the_partitions() {
        let three = members(&["a", "b", "c"]);
        let s = shares(8, &three);
        assert_eq!(s.values().copied().collect::<Vec<_>>(), vec![3, 3, 2]);
    }

    proptest::proptest! {
        /// Whatever the table holds (stale holders included), every partition ends with
        /// exactly one live holder and every member with its share; a member that leaves
        /// moves only its own partitions.
        #[test]
        fn converges_to_fair_shares_and_moves_only_what_it_must(
            n in 1usize..17,
            live in proptest::collection::btree_set("[a-e]", 1..5),
            start in proptest::collection::vec(proptest::option::of("[a-f]"), 16),
        ) {
            let partitions: Vec<i32> = (0..n as i32).collect();
            let holders: BTreeMap<i32, String> = partitions
                .iter()
                .zip(&start)
                .filter_map(|(&p, h)| h.clone().filter(|h| live.contains(h)).map(|h| (p, h)))
                .collect();
            let settled = settle(&partitions, holders, &live);
            proptest::prop_assert_eq!(settled.len(), n);
            let want = shares(n, &live);
            for (m, s) in &want {
                proptest::prop_assert_eq!(settled.values().filter(|h| h == m).count(), *s);
            }
            // One member leaves (its leases expire): only its partitions change hands.
            if live.len() > 1 {
                let gone = live.iter().next().unwrap().clone();
                let rest: BTreeSet<String> = live.iter().filter(|m| **m != gone).cloned().collect();
                let without: BTreeMap<i32, String> = settled.iter().filter(|(_, h)| **h != gone).map(|(p, h)| (*p, h.clone())).collect();
                let after = settle(&partitions, without.clone(), &rest);
                proptest::prop_assert_eq!(after.len(), n);
                for (p, h) in &without {
                    proptest::prop_assert_eq!(&after[p], h, "partition {} moved although its holder stayed", p);
                }
            }
        }
    }
}
