//! Quintile boundaries from value → count summaries: what the owners of different input
//! partitions exchange so that each ranks its own customers against all customers
//! (scale-out, docs/DESIGN.md "Scale-out"), without ever sending a customer.
//!
//! An RFM state that holds only some customers reports, at each flush, how the counts of
//! its values changed ([`super::rfm::RfmState::publish_counts`]); the sum of every part's
//! changes is [`RfmCounts`], from which every part derives the same boundaries and scores
//! its own customers with them ([`super::rfm::RfmState::flush_with`]). The scores are those
//! of one state holding every customer (proven by the property test below).
//!
//! With the values sorted ascending as `a_0 ≤ … ≤ a_{N-1}` and `t_s = ceil((s-1)·N/5)`,
//! the boundary of score `s` (2..=5) is `a_{t_s - 1}`: a value scores
//! `1 + #{s : value > a_{t_s - 1}}` = `1 + floor(5·L/N)`, `L` the values strictly smaller.

use std::collections::BTreeMap;

/// Quintile boundaries of one dimension: `[b_2, b_3, b_4, b_5]`; a value scores
/// `1 + #{b : value > b}` (`i64::MAX`: no value is above it).
pub type Bounds = [i64; 4];

/// For `n` values: each boundary's slot in `Bounds` and its position in ascending order
/// (none for the boundaries below the first value).
pub(super) fn bound_positions(n: usize) -> impl Iterator<Item = (usize, usize)> {
    (2..=5usize).enumerate().filter_map(move |(i, s)| ((s - 1) * n).div_ceil(5).checked_sub(1).map(|p| (i, p)))
}

/// The RFM dimension a count belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub enum Dimension {
    Frequency,
    Monetary,
    /// The day of the last purchase (days since the epoch); recency ranks it reversed.
    LastDay,
}

/// One change of a summary: `delta` more (or fewer) customers hold `value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CountDelta {
    pub dimension: Dimension,
    pub value: i64,
    pub delta: i64,
}

/// How many customers hold each value of one dimension.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ValueCounts {
    counts: BTreeMap<i64, u64>,
    total: u64,
}

impl ValueCounts {
    /// `delta` more customers hold `value`. A count never goes below zero: the changes of a
    /// part remove only what it added.
    pub fn add(&mut self, value: i64, delta: i64) {
        let count = self.counts.entry(value).or_insert(0);
        *count = count.checked_add_signed(delta).expect("a value count below zero: changes applied out of order");
        if *count == 0 {
            self.counts.remove(&value);
        }
        self.total = self.total.checked_add_signed(delta).expect("the total count below zero");
    }

    /// Customers counted.
    pub fn len(&self) -> u64 {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Distinct values held (the summary's size).
    pub fn distinct(&self) -> usize {
        self.counts.len()
    }

    /// The quintile boundaries: one ascending walk over the distinct values.
    pub fn bounds(&self) -> Bounds {
        let mut bounds = [i64::MAX; 4];
        let mut wanted = bound_positions(self.total as usize).peekable();
        let mut below = 0u64; // values before the current one
        for (&value, &count) in &self.counts {
            below += count;
            while let Some(&(slot, position)) = wanted.peek() {
                if (position as u64) >= below {
                    break;
                }
                bounds[slot] = value;
                wanted.next();
            }
        }
        bounds
    }
}

/// The three summaries of every customer with at least one purchase.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RfmCounts {
    pub frequency: ValueCounts,
    pub monetary: ValueCounts,
    pub last_day: ValueCounts,
}

impl RfmCounts {
    pub fn apply(&mut self, deltas: &[CountDelta]) {
        for d in deltas {
            let counts = match d.dimension {
                Dimension::Frequency => &mut self.frequency,
                Dimension::Monetary => &mut self.monetary,
                Dimension::LastDay => &mut self.last_day,
            };
            counts.add(d.value, d.delta);
        }
    }

    /// Customers with at least one purchase (N).
    pub fn customers(&self) -> u64 {
        self.frequency.len()
    }

    /// Boundaries of F, M and R, R's clamped to the day of `as_of` (recency is never
    /// negative, so every later last purchase counts as that day).
    pub fn bounds(&self, as_of_day: i64) -> [Bounds; 3] {
        [self.frequency.bounds(), self.monetary.bounds(), self.last_day.bounds().map(|b| b.min(as_of_day))]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(values: &[i64]) -> ValueCounts {
        let mut c = ValueCounts::default();
        for &v in values {
            c.add(v, 1);
        }
        c
    }

    /// The boundaries straight from the definition, over the sorted values.
    fn by_definition(values: &[i64]) -> Bounds {
        let mut sorted = values.to_vec();
        sorted.sort_unstable();
        let mut b = [i64::MAX; 4];
        for (slot, position) in bound_positions(sorted.len()) {
            b[slot] = sorted[position];
        }
        b
    }

    #[test]
    fn scores_follow_the_spec_formula() {
        let values = [5, 1, 1, 3, 3, 3, 9, 9, 2, 7, 7];
        let b = counts(&values).bounds();
        for &v in &values {
            let smaller = values.iter().filter(|&&w| w < v).count();
            let score = 1 + b.iter().filter(|&&x| v > x).count() as u8;
            assert_eq!(score, super::super::rfm::quintile(smaller, values.len()), "value {v}");
        }
    }

    #[test]
    fn empty_and_single() {
        assert_eq!(ValueCounts::default().bounds(), [i64::MAX; 4]);
        assert_eq!(counts(&[4]).bounds(), by_definition(&[4]));
    }

    proptest::proptest! {
        #[test]
        fn bounds_equal_the_definition_after_adds_and_removes(
            values in proptest::collection::vec(-5i64..12, 0..60),
            removed in proptest::collection::vec(proptest::prelude::any::<proptest::sample::Index>(), 0..20),
        ) {
            let mut c = counts(&values);
            let mut kept = values.clone();
            for r in removed {
                if kept.is_empty() {
                    break;
                }
                let v = kept.swap_remove(r.index(kept.len()));
                c.add(v, -1);
            }
            proptest::prop_assert_eq!(c.bounds(), by_definition(&kept));
            proptest::prop_assert_eq!(c.len() as usize, kept.len());
        }
    }
}
