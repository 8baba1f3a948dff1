//! The engine: dedup, watermark and every incremental view behind one `apply` / `flush` pair.
//!
//! Pure and deterministic: the same events in the same order and the same `as_of` give the
//! same documents, whatever the flush cadence.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::decode::Decoded;
use super::dedup::{epoch_day, Arrival, DedupIndex, Seen};
use super::event::EventKind;
use super::rfm::{RfmConfig, RfmDoc, RfmState};

/// The view settings of `[views]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ViewConfig {
    /// How long (in days of event time) a `transaction_id` is remembered for dedup.
    pub dedup_horizon_days: u32,
    pub rfm: RfmConfig,
}

impl Default for ViewConfig {
    fn default() -> Self {
        ViewConfig { dedup_horizon_days: 35, rfm: RfmConfig::default() }
    }
}

/// What applying one decoded event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Applied; `orphan_refund` when it is a refund whose purchase was never seen.
    Applied { orphan_refund: bool },
    /// Already applied with the same content: dropped.
    Duplicate,
    /// Already applied with different content: goes to the DLQ.
    Conflicting,
}

/// The documents a flush produced, per view.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ViewChanges {
    pub rfm: Vec<RfmDoc>,
}

impl ViewChanges {
    pub fn is_empty(&self) -> bool {
        self.rfm.is_empty()
    }
}

#[derive(Debug, Clone)]
pub struct Engine {
    dedup: DedupIndex,
    rfm: RfmState,
    watermark: Option<DateTime<Utc>>,
}

impl Engine {
    pub fn new(config: ViewConfig) -> Self {
        Engine { dedup: DedupIndex::new(config.dedup_horizon_days), rfm: RfmState::new(config.rfm), watermark: None }
    }

    /// The largest event time among applied events: `as_of` under `clock = "event"`.
    pub fn watermark(&self) -> Option<DateTime<Utc>> {
        self.watermark
    }

    pub fn rfm(&self) -> &RfmState {
        &self.rfm
    }

    pub fn dedup_len(&self) -> usize {
        self.dedup.len()
    }

    /// Applies an event from a single input lane.
    pub fn apply(&mut self, event: &Decoded) -> Outcome {
        self.apply_on(event, 0)
    }

    /// Applies an event that arrived on `lane` (its Kafka partition): lanes keep their own
    /// dedup horizon, so the result does not depend on how lanes interleave.
    pub fn apply_on(&mut self, event: &Decoded, lane: u16) -> Outcome {
        let tx = &event.tx;
        match self.dedup.check(&tx.transaction_id, event.fingerprint) {
            Arrival::Duplicate => return Outcome::Duplicate,
            Arrival::Conflicting => return Outcome::Conflicting,
            Arrival::New => {}
        }
        let orphan_refund = tx.kind == EventKind::Refund
            && tx
                .original_transaction_id
                .as_deref()
                .and_then(|id| self.dedup.get(id))
                .is_none_or(|seen| seen.kind != EventKind::Purchase);
        let day = epoch_day(tx.date());
        self.dedup.record(&tx.transaction_id, Seen { fingerprint: event.fingerprint, day, lane, kind: tx.kind });
        self.rfm.apply(tx);
        self.watermark = Some(self.watermark.map_or(tx.timestamp, |w| w.max(tx.timestamp)));
        Outcome::Applied { orphan_refund }
    }

    /// Changed documents as of `as_of` (every document with `full`).
    pub fn flush(&mut self, as_of: DateTime<Utc>, full: bool) -> ViewChanges {
        ViewChanges { rfm: self.rfm.flush(as_of, full) }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::Duration;
    use proptest::prelude::*;

    use super::*;
    use crate::domain::batch;
    use crate::domain::rfm::Scoring;
    use crate::domain::testgen::{arrivals, base_time, steps, Arrival};
    use crate::domain::Transaction;

    /// Runs the arrivals through the engine, upserting every flushed document into a map as
    /// the MongoDB sink would, and returns the map, the accepted events and the last as_of.
    fn run(
        config: &ViewConfig,
        arrivals: &[Arrival],
        final_hours: i16,
    ) -> (BTreeMap<String, RfmDoc>, Vec<Transaction>, DateTime<Utc>) {
        let mut engine = Engine::new(config.clone());
        let mut view = BTreeMap::new();
        let mut accepted = Vec::new();
        let as_of =
            |engine: &Engine, hours: i16| engine.watermark().unwrap_or_else(base_time) + Duration::hours(hours.into());
        let mut upsert = |changes: ViewChanges| {
            for doc in changes.rfm {
                view.insert(doc.customer_id.clone(), doc);
            }
        };
        for arrival in arrivals {
            match arrival {
                Arrival::Event(d) => match engine.apply(d) {
                    Outcome::Conflicting => {}
                    _ => accepted.push(d.tx.clone()),
                },
                Arrival::Flush(hours) => upsert(engine.flush(as_of(&engine, *hours), false)),
            }
        }
        let last = as_of(&engine, final_hours);
        upsert(engine.flush(last, false));
        // A full flush rewrites everything with the final as_of.
        let full: BTreeMap<_, _> =
            engine.flush(last, true).rfm.into_iter().map(|d| (d.customer_id.clone(), d)).collect();
        assert_eq!(full.len(), view.len());
        for (id, doc) in &full {
            let mut incremental = view[id].clone();
            incremental.analysis_date = doc.analysis_date;
            assert_eq!(&incremental, doc, "incremental and full flush disagree for {id}");
        }
        (full, accepted, last)
    }

    fn check(scoring: Scoring, arrivals: &[Arrival], final_hours: i16) -> Result<(), TestCaseError> {
        // The oracle remembers every id; the engine only within the dedup horizon.
        let mut config = ViewConfig { dedup_horizon_days: 1000, ..ViewConfig::default() };
        config.rfm.scoring = scoring;
        let (view, accepted, as_of) = run(&config, arrivals, final_hours);
        let expected = batch::rfm(&batch::first_arrivals(&accepted), as_of, &config.rfm);
        let got: Vec<RfmDoc> = view.into_values().collect();
        prop_assert_eq!(got, expected);
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn rfm_quintiles_equal_a_batch_recompute(steps in steps(120, 10), final_hours in -48i16..72) {
            check(Scoring::Quintile, &arrivals(&steps), final_hours)?;
        }

        #[test]
        fn rfm_bins_equal_a_batch_recompute(steps in steps(80, 400), final_hours in -48i16..72) {
            check(Scoring::Bins, &arrivals(&steps), final_hours)?;
        }
    }

    #[test]
    fn duplicates_conflicts_and_orphan_refunds_are_told_apart() {
        let steps = [
            crate::domain::testgen::Step::New {
                user: 1,
                minute: 0,
                total: 2,
                refund_of: None,
                lines: vec![(0, 1, 1, 0)],
            },
            crate::domain::testgen::Step::Resend(0),
            crate::domain::testgen::Step::Conflict(0),
            crate::domain::testgen::Step::New {
                user: 1,
                minute: 5,
                total: 1,
                refund_of: Some(1),
                lines: vec![(0, 1, 1, 0)],
            },
            crate::domain::testgen::Step::New {
                user: 2,
                minute: 5,
                total: 1,
                refund_of: Some(0),
                lines: vec![(0, 1, 1, 0)],
            },
        ];
        let mut engine = Engine::new(ViewConfig::default());
        let outcomes: Vec<Outcome> = arrivals(&steps)
            .iter()
            .map(|a| match a {
                Arrival::Event(d) => engine.apply(d),
                Arrival::Flush(_) => unreachable!(),
            })
            .collect();
        assert_eq!(
            outcomes,
            [
                Outcome::Applied { orphan_refund: false },
                Outcome::Duplicate,
                Outcome::Conflicting,
                Outcome::Applied { orphan_refund: false },
                Outcome::Applied { orphan_refund: true },
            ]
        );
        let u1 = engine.rfm().customer("u1").unwrap();
        assert_eq!((u1.frequency, u1.monetary), (1, 999 - 500));
    }
}

#[cfg(test)]
mod lane_tests {
    use super::*;
    use crate::domain::testgen::{arrivals, Arrival, Step};

    /// A lane (partition) that races ahead must not evict the dedup memory of a lane that
    /// lags: whether a resend is caught must not depend on how partitions interleave.
    #[test]
    fn the_dedup_horizon_is_per_lane() {
        let new = |user, day: u32| Step::New {
            user,
            minute: day * 24 * 60,
            total: 2,
            refund_of: None,
            lines: vec![(0, 1, 1, 0)],
        };
        let events: Vec<Decoded> = arrivals(&[new(1, 10), new(2, 100)])
            .into_iter()
            .map(|a| match a {
                Arrival::Event(d) => d,
                Arrival::Flush(_) => unreachable!(),
            })
            .collect();
        let mut engine = Engine::new(ViewConfig::default());
        assert_eq!(engine.apply_on(&events[0], 0), Outcome::Applied { orphan_refund: false });
        // Lane 1 jumps 90 days ahead; lane 0 is still at day 10.
        assert_eq!(engine.apply_on(&events[1], 1), Outcome::Applied { orphan_refund: false });
        assert_eq!(engine.apply_on(&events[0], 0), Outcome::Duplicate, "lane 0's own horizon still holds its id");
    }
}
