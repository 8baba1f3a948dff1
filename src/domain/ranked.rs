//! An ordered set with O(log n) rank and select: the order-statistic index behind the
//! tie-aware RFM quintiles.
//!
//! Layout: the keys in sorted blocks of at most `2 * LOAD` keys, a Fenwick tree over the
//! block lengths for positions, and each block's largest key for finding a key's block.
//! Insert and remove move at most one block's keys (a few KB); rank and select are a binary
//! search plus a Fenwick descent. Iteration is over contiguous arrays. Blocks split when
//! full and disappear when empty; the Fenwick tree is rebuilt then (once per ~LOAD inserts).

const LOAD: usize = 64;

/// Serialized as its keys in order; deserializing rebuilds the blocks and the index.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(from = "Vec<K>", bound(deserialize = "K: Ord + Copy + serde::Deserialize<'de>"))]
pub struct RankedSet<K> {
    blocks: Vec<Vec<K>>,
    maxes: Vec<K>,
    fenwick: Vec<usize>,
    len: usize,
}

impl<K: Ord + Copy> Default for RankedSet<K> {
    fn default() -> Self {
        RankedSet { blocks: Vec::new(), maxes: Vec::new(), fenwick: Vec::new(), len: 0 }
    }
}

impl<K: Ord + Copy> From<Vec<K>> for RankedSet<K> {
    fn from(keys: Vec<K>) -> Self {
        Self::from_keys(keys)
    }
}

impl<K: serde::Serialize> serde::Serialize for RankedSet<K> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = serializer.serialize_seq(Some(self.len))?;
        for k in self.blocks.iter().flatten() {
            seq.serialize_element(k)?;
        }
        seq.end()
    }
}

impl<K: Ord + Copy> RankedSet<K> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds the set from keys in any order (duplicates are kept once).
    pub fn from_keys(mut keys: Vec<K>) -> Self {
        keys.sort_unstable();
        keys.dedup();
        Self::from_sorted(&keys)
    }

    /// Builds the set from keys sorted and without duplicates.
    fn from_sorted(keys: &[K]) -> Self {
        let mut set =
            RankedSet { blocks: keys.chunks(LOAD).map(<[K]>::to_vec).collect(), len: keys.len(), ..Self::default() };
        set.rebuild_index();
        set
    }

    /// Removes every key of `removes`, then inserts every key of `inserts`, in one merge of
    /// the whole set: O(n + m log m) for m keys, where m single moves would cost m block
    /// shifts. The better choice when m is a good share of n (a catch-up's flush touches
    /// most customers).
    pub fn apply_batch(&mut self, mut removes: Vec<K>, mut inserts: Vec<K>) {
        removes.sort_unstable();
        inserts.sort_unstable();
        inserts.dedup();
        let mut keys = Vec::with_capacity(self.len + inserts.len());
        let mut removes = removes.into_iter().peekable();
        let mut inserts = inserts.into_iter().peekable();
        for k in self.iter() {
            while removes.next_if(|r| *r < k).is_some() {}
            let removed = removes.next_if_eq(&k).is_some();
            // An insert equal to a key kept is that key; one equal to a key removed is put
            // back before the next key kept.
            while let Some(i) = inserts.next_if(|i| *i < k || (*i == k && !removed)) {
                if i != k {
                    keys.push(i);
                }
            }
            if !removed {
                keys.push(k);
            }
        }
        keys.extend(inserts);
        *self = Self::from_sorted(&keys);
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The block that holds `key` if it is present, or where it belongs.
    fn block_of(&self, key: &K) -> usize {
        self.maxes.partition_point(|m| m < key).min(self.blocks.len() - 1)
    }

    /// Adds `key`; false when it was already present.
    pub fn insert(&mut self, key: K) -> bool {
        if self.blocks.is_empty() {
            self.blocks.push(vec![key]);
            self.len = 1;
            self.rebuild_index();
            return true;
        }
        let b = self.block_of(&key);
        let block = &mut self.blocks[b];
        let Err(pos) = block.binary_search(&key) else {
            return false;
        };
        block.insert(pos, key);
        self.len += 1;
        if pos + 1 == block.len() {
            self.maxes[b] = key;
        }
        if block.len() > 2 * LOAD {
            let tail = block.split_off(LOAD);
            self.blocks.insert(b + 1, tail);
            self.rebuild_index();
        } else {
            self.fenwick_add(b, 1, true);
        }
        true
    }

    /// Removes `key`; false when it was not present.
    pub fn remove(&mut self, key: &K) -> bool {
        if self.blocks.is_empty() {
            return false;
        }
        let b = self.block_of(key);
        let block = &mut self.blocks[b];
        let Ok(pos) = block.binary_search(key) else {
            return false;
        };
        block.remove(pos);
        self.len -= 1;
        if block.is_empty() {
            self.blocks.remove(b);
            self.rebuild_index();
        } else {
            self.maxes[b] = *block.last().expect("non-empty block");
            self.fenwick_add(b, 1, false);
        }
        true
    }

    /// `remove(old)` then `insert(new)`; when both belong to the same block, only the keys
    /// between them move (one rotation instead of two shifts of the block's tail).
    pub fn replace(&mut self, old: &K, new: K) {
        if !self.blocks.is_empty() {
            let b = self.block_of(old);
            if b == self.block_of(&new) {
                let block = &mut self.blocks[b];
                if let (Ok(from), Err(to)) = (block.binary_search(old), block.binary_search(&new)) {
                    if to > from {
                        block[from..to].rotate_left(1);
                        block[to - 1] = new;
                    } else {
                        block[to..=from].rotate_right(1);
                        block[to] = new;
                    }
                    self.maxes[b] = *block.last().expect("non-empty block");
                    return;
                }
            }
        }
        self.remove(old);
        self.insert(new);
    }

    /// How many keys are strictly smaller than `key`.
    pub fn rank(&self, key: &K) -> usize {
        let b = self.maxes.partition_point(|m| m < key);
        if b == self.blocks.len() {
            return self.len;
        }
        self.prefix(b) + self.blocks[b].partition_point(|k| k < key)
    }

    /// The key at sorted position `index` (0-based).
    pub fn select(&self, index: usize) -> Option<K> {
        if index >= self.len {
            return None;
        }
        // Fenwick descent: the last block whose prefix count is <= index.
        let mut pos = 0;
        let mut rest = index;
        let mut step = self.fenwick.len().next_power_of_two();
        while step > 0 {
            let next = pos + step;
            if next <= self.fenwick.len() && self.fenwick[next - 1] <= rest {
                rest -= self.fenwick[next - 1];
                pos = next;
            }
            step /= 2;
        }
        Some(self.blocks[pos][rest])
    }

    /// The keys `k` with `low < k <= high`, ascending.
    pub fn range_after(&self, low: K, high: K) -> impl Iterator<Item = K> + '_ {
        let start = self.maxes.partition_point(|m| *m <= low);
        self.blocks[start.min(self.blocks.len())..]
            .iter()
            .flat_map(|block| block.iter().copied())
            .skip_while(move |k| *k <= low)
            .take_while(move |k| *k <= high)
    }

    pub fn iter(&self) -> impl Iterator<Item = K> + '_ {
        self.blocks.iter().flat_map(|block| block.iter().copied())
    }

    fn prefix(&self, block: usize) -> usize {
        let mut i = block;
        let mut sum = 0;
        while i > 0 {
            sum += self.fenwick[i - 1];
            i &= i - 1;
        }
        sum
    }

    fn fenwick_add(&mut self, block: usize, delta: usize, grow: bool) {
        let mut i = block + 1;
        while i <= self.fenwick.len() {
            if grow {
                self.fenwick[i - 1] += delta;
            } else {
                self.fenwick[i - 1] -= delta;
            }
            i += i & i.wrapping_neg();
        }
    }

    fn rebuild_index(&mut self) {
        self.maxes = self.blocks.iter().map(|b| *b.last().expect("blocks are never empty")).collect();
        self.fenwick = self.blocks.iter().map(Vec::len).collect();
        for i in 1..=self.fenwick.len() {
            let parent = i + (i & i.wrapping_neg());
            if parent <= self.fenwick.len() {
                self.fenwick[parent - 1] += self.fenwick[i - 1];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(i32),
        Remove(i32),
        Replace(i32, i32),
        Batch(Vec<i32>, Vec<i32>),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..3000i32).prop_map(Op::Insert),
            (0..3000i32).prop_map(Op::Remove),
            (0..3000i32, -60..60i32).prop_map(|(k, d)| Op::Replace(k, k + d)),
            (0..3000i32, 0..3000i32).prop_map(|(a, b)| Op::Replace(a, b)),
            (proptest::collection::vec(0..3000i32, 0..400), proptest::collection::vec(0..3000i32, 0..400))
                .prop_map(|(r, i)| Op::Batch(r, i)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn behaves_like_a_sorted_set(ops in proptest::collection::vec(op(), 0..6000), probes in proptest::collection::vec(-5..3005i32, 20)) {
            let mut set = RankedSet::new();
            let mut model = BTreeSet::new();
            for op in ops {
                match op {
                    Op::Insert(k) => prop_assert_eq!(set.insert(k), model.insert(k)),
                    Op::Remove(k) => prop_assert_eq!(set.remove(&k), model.remove(&k)),
                    Op::Replace(old, new) => {
                        set.replace(&old, new);
                        model.remove(&old);
                        model.insert(new);
                    }
                    Op::Batch(removes, inserts) => {
                        for r in &removes {
                            model.remove(r);
                        }
                        model.extend(inserts.iter().copied());
                        set.apply_batch(removes, inserts);
                        prop_assert_eq!(set.len(), model.len());
                    }
                }
            }
            prop_assert_eq!(set.len(), model.len());
            let sorted: Vec<i32> = model.iter().copied().collect();
            prop_assert_eq!(set.iter().collect::<Vec<_>>(), sorted.clone());
            for (i, k) in sorted.iter().enumerate().step_by(37) {
                prop_assert_eq!(set.select(i), Some(*k));
            }
            prop_assert_eq!(set.select(sorted.len()), None);
            for p in probes {
                prop_assert_eq!(set.rank(&p), model.range(..p).count());
                let hi = p + 40;
                let want: Vec<i32> = model.range(p + 1..=hi).copied().collect();
                prop_assert_eq!(set.range_after(p, hi).collect::<Vec<_>>(), want);
            }
            let rebuilt = RankedSet::from_keys(sorted.iter().rev().copied().collect());
            prop_assert_eq!(rebuilt.iter().collect::<Vec<_>>(), sorted);
        }
    }

    #[test]
    fn empty_set_answers() {
        let set: RankedSet<u8> = RankedSet::new();
        assert_eq!(set.rank(&3), 0);
        assert_eq!(set.select(0), None);
        assert_eq!(set.range_after(0, 9).count(), 0);
    }
}
