//! Per-customer RFM state and the `customer_rfm_analysis` view (SPEC §3), kept incrementally.
//!
//! Applying an event is O(1): it updates the customer's frequency, monetary and purchase
//! times and marks the customer dirty. A flush brings the rank indexes up to date for the
//! dirty customers only (O(log N) each), derives the four quintile boundaries of each
//! dimension by order statistics, and emits the documents that changed: the dirty customers,
//! the customers whose value lies between an old and a new boundary (found by a range scan of
//! the rank index, never by scanning everyone), and everyone when the date of `as_of` moved
//! (every recency changed).
//!
//! Quintile boundaries: with the values sorted ascending as `a_0 ≤ … ≤ a_{N-1}` and
//! `t_s = ceil((s-1)·N/5)`, `score(v) = 1 + #{s in 2..=5 : v > a_{t_s - 1}}`, which equals
//! `1 + floor(5·L/N)` with `L` = how many values are strictly smaller. Recency ranks the
//! date of the last purchase ascending (an earlier date is a larger recency), clamped to the
//! date of `as_of` so that recency is never negative.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::calendar::epoch_day;
use super::event::{EventKind, Transaction};
use super::money::Cents;
use super::quintiles::{bound_positions, Bounds, CountDelta, Dimension, RfmCounts};
use super::ranked::RankedSet;

/// How scores are given (SPEC §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Scoring {
    /// Tie-aware quintiles over all customers: `1 + floor(5·L/N)`.
    #[default]
    Quintile,
    /// Fixed edges (the batch design's `RFM_CONFIG`).
    Bins,
}

/// Edges for `scoring = "bins"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BinEdges {
    /// Days: 5 if recency ≤ e0, 4 if ≤ e1, 3 if ≤ e2, 2 if ≤ e3, else 1.
    pub recency: [i64; 5],
    /// Purchases: score = number of edges ≤ frequency, at least 1.
    pub frequency: [i64; 5],
    /// Currency units: score = number of edges ≤ monetary, at least 1.
    pub monetary: [f64; 5],
}

impl Default for BinEdges {
    fn default() -> Self {
        BinEdges {
            recency: [1, 30, 90, 180, 365],
            frequency: [1, 5, 10, 20, 50],
            monetary: [0.0, 100.0, 500.0, 1000.0, 5000.0],
        }
    }
}

/// One segment rule: inclusive score ranges for R, F and M.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentRule {
    pub name: String,
    pub r: [u8; 2],
    pub f: [u8; 2],
    pub m: [u8; 2],
}

impl SegmentRule {
    fn matches(&self, [r, f, m]: [u8; 3]) -> bool {
        let within = |[lo, hi]: [u8; 2], x: u8| lo <= x && x <= hi;
        within(self.r, r) && within(self.f, f) && within(self.m, m)
    }
}

/// The RFM settings of `[views.rfm]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RfmConfig {
    pub scoring: Scoring,
    pub bins: BinEdges,
    /// Checked in order; the first match wins.
    pub segments: Vec<SegmentRule>,
    /// The segment when no rule matches.
    pub fallback_segment: String,
}

impl Default for RfmConfig {
    fn default() -> Self {
        let rule = |name: &str, r, f, m| SegmentRule { name: name.into(), r, f, m };
        RfmConfig {
            scoring: Scoring::Quintile,
            bins: BinEdges::default(),
            segments: vec![
                rule("Champions", [4, 5], [4, 5], [4, 5]),
                rule("Cannot Lose Them", [1, 2], [4, 5], [4, 5]),
                rule("At Risk", [1, 2], [3, 5], [3, 5]),
                rule("Loyal Customers", [3, 5], [3, 5], [3, 5]),
                rule("New Customers", [4, 5], [1, 1], [1, 1]),
                rule("Potential Loyalists", [3, 5], [1, 3], [1, 3]),
                rule("Lost", [1, 1], [1, 2], [1, 2]),
                rule("Hibernating", [1, 2], [1, 2], [1, 3]),
            ],
            fallback_segment: "Need Attention".into(),
        }
    }
}

impl RfmConfig {
    /// Every segment name, the fallback last.
    pub fn segment_names(&self) -> impl Iterator<Item = &String> {
        self.segments.iter().map(|r| &r.name).chain([&self.fallback_segment])
    }

    /// The segment of a score triple.
    pub fn segment(&self, scores: [u8; 3]) -> &str {
        self.segments
            .iter()
            .find(|rule| rule.matches(scores))
            .map_or(self.fallback_segment.as_str(), |rule| rule.name.as_str())
    }

    /// Scores under `scoring = "bins"`.
    pub fn bin_scores(&self, recency: i64, frequency: i64, monetary: Cents) -> [u8; 3] {
        let e = &self.bins;
        let r = 5 - e.recency[..4].iter().filter(|&&edge| recency > edge).count() as u8;
        let f = e.frequency.iter().filter(|&&edge| edge <= frequency).count().max(1) as u8;
        let m = e.monetary.iter().filter(|&&edge| (edge * 100.0).round() as i64 <= monetary).count().max(1) as u8;
        [r.max(1), f, m]
    }
}

/// `1 + floor(5·smaller/n)`: the quintile score of a value with `smaller` values below it.
pub fn quintile(smaller: usize, n: usize) -> u8 {
    (1 + 5 * smaller / n) as u8
}

/// One document of `customer_rfm_analysis` (money in cents; the sink writes units).
#[derive(Debug, Clone, PartialEq)]
pub struct RfmDoc {
    pub customer_id: String,
    pub first_purchase_at: DateTime<Utc>,
    pub last_purchase_at: DateTime<Utc>,
    pub recency: i64,
    pub frequency: i64,
    pub monetary_cents: Cents,
    pub r_score: u8,
    pub f_score: u8,
    pub m_score: u8,
    pub rfm_segment: String,
    pub analysis_date: DateTime<Utc>,
}

impl RfmDoc {
    pub fn rfm_score(&self) -> String {
        format!("{}{}{}", self.r_score, self.f_score, self.m_score)
    }

    pub fn avg_order_value(&self) -> Option<f64> {
        super::money::per(self.monetary_cents, self.frequency)
    }
}

/// What the state holds for one customer.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Customer {
    /// Purchases applied.
    pub frequency: u32,
    /// Σ purchase total − Σ refund total, cents.
    pub monetary: Cents,
    /// Event times of the first and last purchase (meaningful when frequency ≥ 1).
    #[serde(with = "super::calendar::serde_instant")]
    pub first_purchase_at: DateTime<Utc>,
    #[serde(with = "super::calendar::serde_instant")]
    pub last_purchase_at: DateTime<Utc>,
    /// In one `u16` (the record is 40 bytes, not 48): bits 0–8, the scores in the last
    /// emitted document (R, F, M, 3 bits each; all 0 before the first); bit 9, whether the
    /// customer is in the rank indexes (quintile scoring), under the keys of its figures as
    /// of the last flush ([`Customer::keys`] unless dirty, and then the old keys are in
    /// [`RfmState::dirty`]); bit 10, dirty (changed since the last flush); bit 11, waiting
    /// in [`RfmState::rescores`] for a deferred rescore.
    marks: u16,
}

const RANKED: u16 = 1 << 9;
const DIRTY: u16 = 1 << 10;
const RESCORE: u16 = 1 << 11;
const SCORES: u16 = (1 << 9) - 1;

impl Customer {
    /// A customer with no events yet (its purchase times are set by its first purchase).
    fn new() -> Self {
        let t = DateTime::<Utc>::UNIX_EPOCH;
        Customer { frequency: 0, monetary: 0, first_purchase_at: t, last_purchase_at: t, marks: 0 }
    }

    /// Scores in the last emitted document; `[0; 3]` before the first.
    fn emitted(&self) -> [u8; 3] {
        let m = self.marks;
        [(m & 7) as u8, (m >> 3 & 7) as u8, (m >> 6 & 7) as u8]
    }

    fn set_emitted(&mut self, [r, f, m]: [u8; 3]) {
        self.marks = (self.marks & !SCORES) | u16::from(r) | u16::from(f) << 3 | u16::from(m) << 6;
    }

    fn ranked(&self) -> bool {
        self.marks & RANKED != 0
    }

    fn set_ranked(&mut self, ranked: bool) {
        self.marks = if ranked { self.marks | RANKED } else { self.marks & !RANKED };
    }

    fn dirty(&self) -> bool {
        self.marks & DIRTY != 0
    }

    /// Clears the dirty flag; whether it was set.
    fn take_dirty(&mut self) -> bool {
        let was = self.dirty();
        self.marks &= !DIRTY;
        was
    }

    /// Notes the customer (index `idx`) as changed since the last flush, with the keys it has
    /// in the rank indexes. Call before its figures change: those keys are the old figures'.
    fn mark_dirty(&mut self, idx: u32, dirty: &mut Vec<(u32, Option<RankKeys>)>) {
        if !self.dirty() {
            self.marks |= DIRTY;
            dirty.push((idx, self.ranked().then(|| self.keys())));
        }
    }

    /// Sets the rescore flag; whether it was clear.
    fn mark_rescore(&mut self) -> bool {
        let was_clear = self.marks & RESCORE == 0;
        self.marks |= RESCORE;
        was_clear
    }

    fn clear_rescore(&mut self) {
        self.marks &= !RESCORE;
    }

    /// The rank-index keys of the current figures.
    fn keys(&self) -> RankKeys {
        RankKeys {
            frequency: i64::from(self.frequency),
            monetary: self.monetary,
            last_day: i64::from(epoch_day(self.last_purchase_at.date_naive())),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct RankKeys {
    frequency: i64,
    monetary: i64,
    last_day: i64,
}

/// A key of a rank index: (value, customer handle), ordered by value, then handle, so that
/// equal values stay distinct.
trait RankKey: Ord + Copy {
    fn new(value: i64, idx: u32) -> Self;
    /// The largest key with `value` (`i64::MAX`: above every key).
    fn last_of(value: i64) -> Self;
    fn value(self) -> i64;
    fn idx(self) -> u32;
}

/// Monetary values need all 64 bits: 16 bytes a key.
impl RankKey for (i64, u32) {
    fn new(value: i64, idx: u32) -> Self {
        (value, idx)
    }
    fn last_of(value: i64) -> Self {
        (value, u32::MAX)
    }
    fn value(self) -> i64 {
        self.0
    }
    fn idx(self) -> u32 {
        self.1
    }
}

/// Value and handle in one `u64` (8 bytes a key), for values within 32 bits once `BIAS` is
/// added: purchases (`BIAS` 0) and days since the epoch (`BIAS` 2^31).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
struct Packed<const BIAS: i64>(u64);

impl<const BIAS: i64> RankKey for Packed<BIAS> {
    fn new(value: i64, idx: u32) -> Self {
        let v = u32::try_from(value + BIAS).expect("a ranked value within 32 bits");
        Packed(u64::from(v) << 32 | u64::from(idx))
    }
    fn last_of(value: i64) -> Self {
        // Boundaries are values held, or i64::MAX (none): only the top saturates.
        u32::try_from(value.saturating_add(BIAS)).map_or(Packed(u64::MAX), |v| Packed(u64::from(v) << 32 | 0xffff_ffff))
    }
    fn value(self) -> i64 {
        (self.0 >> 32) as i64 - BIAS
    }
    fn idx(self) -> u32 {
        self.0 as u32
    }
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct RankIndexes {
    frequency: RankedSet<Packed<0>>,
    monetary: RankedSet<(i64, u32)>,
    last_day: RankedSet<Packed<{ 1 << 31 }>>,
}

/// What the previous flush left: the date of its `as_of` and its boundaries (F, M, R).
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
struct FlushMark {
    #[serde(with = "super::calendar::serde_instant")]
    as_of: DateTime<Utc>,
    as_of_day: i64,
    bounds: Option<[Bounds; 3]>,
}

/// What a flush scores against.
struct FlushAt {
    as_of: DateTime<Utc>,
    as_of_day: i64,
    /// F, M, R boundaries (quintile scoring), over `n` customers.
    bounds: Option<[Bounds; 3]>,
    n: usize,
    /// A complete flush (dim_customer rows restated).
    full: bool,
}

/// Incremental RFM state over all customers.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RfmState {
    config: RfmConfig,
    /// The customers' ids; a customer's handle is its index in `customers`.
    ids: super::interned::Interner,
    #[serde(deserialize_with = "super::interned::exact_vec")]
    customers: Vec<Customer>,
    /// Customers changed since the last flush, each with the keys it had in the rank
    /// indexes before (kept here, for the few that changed, not in every customer).
    dirty: Vec<(u32, Option<RankKeys>)>,
    ranks: Option<RankIndexes>,
    last_flush: Option<FlushMark>,
    /// Customers whose document a flush removed, until the engine takes them.
    removed: Vec<String>,
    /// Deferred rescores (see [`RfmState::defer_rescores`]): customers a quintile boundary
    /// moved past, oldest first, each once (its `RESCORE` mark), not yet written.
    rescores: std::collections::VecDeque<u32>,
    /// A new date's restatement in progress: every customer from this handle on is still
    /// to be written with the new recency (those before it were).
    restating_from: Option<u32>,
    /// Documents a flush writes at most for changes that are not the customer's own (a
    /// boundary moved, the date changed); `None`: all at once.
    #[serde(skip)]
    pub(super) rescore_budget: Option<usize>,
    /// How a flush moves rank keys; tests pin each way.
    #[serde(skip)]
    pub(super) rank_moves: RankMoves,
}

/// How [`RfmState`] moves the changed customers' rank keys at a flush.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) enum RankMoves {
    /// In one merge per index when the changed customers are many (see [`BATCH_SHARE`]).
    #[default]
    Auto,
    #[cfg_attr(not(test), allow(dead_code))]
    OneByOne,
    #[cfg_attr(not(test), allow(dead_code))]
    Batched,
}

/// What an RFM flush means for the customer's dim_customer row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DimRow {
    /// Segment and lifetime value as last flushed (a mover within its segment).
    Unchanged,
    /// The segment or the lifetime value changed.
    Changed,
    /// Unchanged as far as the state knows, written again by a complete flush so that
    /// whatever MongoDB holds converges.
    Restated,
}

impl RfmState {
    pub fn new(config: RfmConfig) -> Self {
        let ranks = (config.scoring == Scoring::Quintile).then(RankIndexes::default);
        RfmState {
            config,
            ids: Default::default(),
            customers: Vec::new(),
            dirty: Vec::new(),
            ranks,
            last_flush: None,
            removed: Vec::new(),
            rescores: Default::default(),
            restating_from: None,
            rescore_budget: None,
            rank_moves: RankMoves::Auto,
        }
    }

    /// Defers the documents whose change is not the customer's own: when a quintile
    /// boundary crosses a tie group (every customer with two purchases, say), or the date
    /// changes (every recency), a flush would rewrite thousands of documents at once and the
    /// views of the events in it would wait for them. With a budget, each flush writes the
    /// customers' own changes, then at most `budget` of these, oldest first; the others keep
    /// the document MongoDB holds (scores consistent with the boundaries of an earlier
    /// flush) until their turn. A complete flush writes them all. `None`: all at once (a
    /// budget of 0 is taken as 1, so that what waits drains).
    pub fn defer_rescores(&mut self, budget: Option<usize>) {
        self.rescore_budget = budget.map(|b| b.max(1));
    }

    /// Documents waiting for a deferred rescore (at most: a waiting customer whose scores
    /// came back is dropped without a write).
    pub fn rescores_waiting(&self) -> usize {
        let restating = self.restating_from.map_or(0, |from| self.customers.len().saturating_sub(from as usize));
        self.rescores.len() + restating
    }

    /// Drops the rank indexes (for [`super::Engine::bytes_by_part`]: the state is dropped next).
    pub(super) fn drop_ranks(&mut self) {
        self.ranks = None;
    }

    pub fn config(&self) -> &RfmConfig {
        &self.config
    }

    /// Customers known: those with any event (including refund-only ones), and those known
    /// only from a session or a key a database holds.
    pub fn customer_count(&self) -> usize {
        self.customers.len()
    }

    pub fn customer(&self, id: &str) -> Option<&Customer> {
        self.ids.get(id).map(|h| &self.customers[h as usize])
    }

    /// The customer at `idx` (as [`RfmState::apply`] returns it), without a lookup by id.
    pub fn customer_at(&self, idx: u32) -> &Customer {
        &self.customers[idx as usize]
    }

    /// A customer's document as the views show it: as of the last flush, with the figures
    /// applied since (scored against the last flush's boundaries until the next flush).
    /// Equal to the MongoDB document whenever the customer has no unflushed event, except
    /// `analysis_date`: the last flush's `as_of` here, the `as_of` of the flush that last
    /// rewrote it there (the figures are the same at both); and, while a new date's
    /// deferred restatement has not reached the customer, `recency` (today's here). `None`
    /// for an unknown or refund-only customer, or before the first flush.
    pub fn view(&self, id: &str) -> Option<RfmDoc> {
        let mark = self.last_flush?;
        let c = self.customer(id).filter(|c| c.frequency > 0)?;
        let last_day = i64::from(epoch_day(c.last_purchase_at.date_naive()));
        let recency = (mark.as_of_day - last_day).max(0);
        let scores = match (c.dirty(), mark.bounds) {
            (false, _) if c.emitted() != [0; 3] => c.emitted(),
            (_, Some([f, m, r])) => {
                [score(last_day.min(mark.as_of_day), &r), score(i64::from(c.frequency), &f), score(c.monetary, &m)]
            }
            _ => self.config.bin_scores(recency, i64::from(c.frequency), c.monetary),
        };
        Some(document(&self.config, id, c, (recency, scores), mark.as_of))
    }

    /// Customers per segment, as of the last flush (what the view holds); every configured
    /// segment is listed, empty ones with 0.
    pub fn segment_counts(&self) -> std::collections::BTreeMap<String, u64> {
        let names = self.config.segment_names();
        let mut counts: std::collections::BTreeMap<String, u64> = names.map(|n| (n.clone(), 0)).collect();
        for segment in
            self.customers.iter().map(Customer::emitted).filter(|&e| e != [0; 3]).map(|e| self.config.segment(e))
        {
            *counts.entry(segment.to_owned()).or_insert(0) += 1;
        }
        counts
    }

    /// Applies one valid, first-seen event: O(1).
    /// Applies a transaction; returns the customer's index and its last purchase before it.
    pub fn apply(&mut self, tx: &Transaction) -> (u32, Option<DateTime<Utc>>) {
        let idx = self.intern(&tx.user_id);
        let c = &mut self.customers[idx as usize];
        c.mark_dirty(idx, &mut self.dirty);
        let prior_last = (c.frequency > 0).then_some(c.last_purchase_at);
        match tx.kind {
            EventKind::Purchase => {
                if c.frequency == 0 {
                    c.first_purchase_at = tx.timestamp;
                    c.last_purchase_at = tx.timestamp;
                } else {
                    c.first_purchase_at = c.first_purchase_at.min(tx.timestamp);
                    c.last_purchase_at = c.last_purchase_at.max(tx.timestamp);
                }
                c.frequency += 1;
                c.monetary += tx.total_cents;
            }
            EventKind::Refund => c.monetary -= tx.total_cents,
        }
        (idx, prior_last)
    }

    /// Customer index and state, in index order (the index is stable: customers are never
    /// removed).
    pub fn customers(&self) -> impl Iterator<Item = (u32, &str, &Customer)> {
        self.ids.iter().zip(&self.customers).enumerate().map(|(i, (id, c))| (i as u32, id, c))
    }

    pub fn index_of(&self, id: &str) -> Option<u32> {
        self.ids.get(id)
    }

    /// Sets a customer's figures outright (a reconciliation repair), creating it if new;
    /// returns its index. With no purchase left, its document is removed at the next flush.
    pub fn set_figures(
        &mut self,
        id: &str,
        frequency: u32,
        monetary: Cents,
        purchases: Option<(DateTime<Utc>, DateTime<Utc>)>,
    ) -> u32 {
        let idx = self.intern(id);
        let c = &mut self.customers[idx as usize];
        c.mark_dirty(idx, &mut self.dirty);
        c.frequency = frequency;
        c.monetary = monetary;
        if let Some((first, last)) = purchases {
            c.first_purchase_at = first;
            c.last_purchase_at = last;
        }
        idx
    }

    /// The handle of customer `id`: a new customer, with no event yet, if unknown. Every
    /// customer id the engine sees is interned here (also those of sessions and of keys a
    /// database already holds), so the star schema keys customers by this handle too.
    pub fn intern(&mut self, id: &str) -> u32 {
        let (idx, new) = self.ids.intern(id);
        if new {
            self.customers.push(Customer::new());
        }
        idx
    }

    /// Customers whose document was removed since the last call (a repair took their last
    /// purchase away).
    pub fn take_removed(&mut self) -> Vec<String> {
        std::mem::take(&mut self.removed)
    }

    /// The documents that changed since the last flush, as of `as_of`; with `full`, every
    /// document. Afterwards nothing is dirty. Each is paired with what becomes of the
    /// customer's dim_customer row (segment, lifetime value): a customer whose scores moved
    /// only because the boundaries did, within the same segment, keeps its row, and with
    /// the customer's handle.
    pub fn flush(&mut self, as_of: DateTime<Utc>, full: bool) -> Vec<(RfmDoc, DimRow, u32)> {
        self.flush_ranked(as_of, full, None)
    }

    /// A state holding some of the customers (an input partition's): the changes of its
    /// value counts since the last call, for [`RfmCounts`] of every customer. The rank
    /// indexes are brought up to date with them.
    pub fn publish_counts(&mut self) -> Vec<CountDelta> {
        let mut deltas = Vec::new();
        let dirty = std::mem::take(&mut self.dirty);
        self.sync_ranks(&dirty, Some(&mut deltas));
        // Netted per value: a customer going from 3 purchases to 4 and another from 2 to 3
        // leave one change at 2 and one at 4.
        deltas.sort_unstable_by_key(|d| (d.dimension, d.value));
        deltas.dedup_by(|later, kept| {
            let same = (later.dimension, later.value) == (kept.dimension, kept.value);
            if same {
                kept.delta += later.delta;
            }
            same
        });
        deltas.retain(|d| d.delta != 0);
        // Still dirty (the flush writes them), now with the keys the indexes hold.
        self.dirty = dirty
            .into_iter()
            .map(|(idx, _)| {
                let c = &self.customers[idx as usize];
                (idx, c.ranked().then(|| c.keys()))
            })
            .collect();
        deltas
    }

    /// [`RfmState::flush`] of a state holding some of the customers, scored against `all`:
    /// the counts of every customer, this state's published changes included. A state that
    /// flushes this way must flush this way every time.
    pub fn flush_with(&mut self, as_of: DateTime<Utc>, full: bool, all: &RfmCounts) -> Vec<(RfmDoc, DimRow, u32)> {
        self.flush_ranked(as_of, full, Some(all))
    }

    fn flush_ranked(
        &mut self,
        as_of: DateTime<Utc>,
        full: bool,
        all: Option<&RfmCounts>,
    ) -> Vec<(RfmDoc, DimRow, u32)> {
        let as_of_day = i64::from(epoch_day(as_of.date_naive()));
        let dirty = std::mem::take(&mut self.dirty);
        self.sync_ranks(&dirty, None);
        let (bounds, n) = match (&self.ranks, all) {
            (None, _) => (None, 0),
            (Some(r), None) => (Some(r.bounds(as_of_day)), r.frequency.len()),
            (Some(_), Some(all)) => (Some(all.bounds(as_of_day)), all.customers() as usize),
        };
        let at = FlushAt { as_of, as_of_day, bounds, n, full };
        let budget = self.rescore_budget.filter(|_| !full);
        let new_day = self.last_flush.is_some_and(|m| m.as_of_day != as_of_day);

        let mut docs = Vec::new();
        if full || self.last_flush.is_none() {
            // Every document.
            for idx in std::mem::take(&mut self.rescores) {
                self.customers[idx as usize].clear_rescore();
            }
            self.restating_from = None;
            for idx in 0..self.customers.len() as u32 {
                docs.extend(self.emit(idx, true, &at));
            }
        } else {
            let mut own: Vec<u32> = dirty.iter().map(|d| d.0).collect();
            own.sort_unstable();
            let mut movers = Vec::new();
            if new_day {
                // Every recency changed: a restatement sweeps every customer in turn (all of
                // them in this flush when there is no budget).
                self.restating_from = Some(0);
            } else if let (Some(ranks), Some(old), Some(new)) =
                (&self.ranks, self.last_flush.and_then(|m| m.bounds), bounds)
            {
                ranks.movers(&old, &new, as_of_day, &mut movers);
            }
            for &idx in &own {
                docs.extend(self.emit(idx, false, &at));
            }
            for idx in movers {
                if own.binary_search(&idx).is_err() && self.customers[idx as usize].mark_rescore() {
                    self.rescores.push_back(idx);
                }
            }
            // Without a budget, everything waiting goes now (also what an earlier flush
            // with a budget left, e.g. before the last flush at shutdown).
            let limit = docs.len().saturating_add(budget.unwrap_or(usize::MAX));
            self.drain_rescores(limit, &own, &at, &mut docs);
        }
        self.last_flush = Some(FlushMark { as_of, as_of_day, bounds });
        docs
    }

    /// Writes deferred rescores, then the date's restatement, until `docs` holds `limit`
    /// documents. `own`: the customers this flush already wrote, sorted.
    fn drain_rescores(&mut self, limit: usize, own: &[u32], at: &FlushAt, docs: &mut Vec<(RfmDoc, DimRow, u32)>) {
        while docs.len() < limit {
            let Some(idx) = self.rescores.pop_front() else { break };
            self.customers[idx as usize].clear_rescore();
            // The restatement has yet to reach it, and will write it as it is then.
            if self.restating_from.is_some_and(|from| idx >= from) {
                continue;
            }
            docs.extend(self.emit(idx, false, at));
        }
        while let Some(from) = self.restating_from.filter(|_| docs.len() < limit) {
            if from as usize >= self.customers.len() {
                self.restating_from = None;
                break;
            }
            self.restating_from = Some(from + 1);
            if own.binary_search(&from).is_err() {
                docs.extend(self.emit(from, true, at));
            }
        }
    }

    /// Customer `idx`'s document if it is to be written: with `force`, or when it is dirty
    /// or its scores differ from those last emitted. A customer whose last purchase went
    /// (a repair) is noted in `removed` instead.
    fn emit(&mut self, idx: u32, force: bool, at: &FlushAt) -> Option<(RfmDoc, DimRow, u32)> {
        let (id, c) = (self.ids.resolve(idx), &mut self.customers[idx as usize]);
        let was_dirty = c.take_dirty();
        let emitted = c.emitted();
        if c.frequency == 0 {
            if emitted != [0; 3] {
                c.set_emitted([0; 3]);
                self.removed.push(id.to_string());
            }
            return None;
        }
        let last_day = i64::from(epoch_day(c.last_purchase_at.date_naive()));
        let recency = (at.as_of_day - last_day).max(0);
        let scores = match &at.bounds {
            Some([f, m, r]) if at.n > 0 => {
                [score(last_day.min(at.as_of_day), r), score(i64::from(c.frequency), f), score(c.monetary, m)]
            }
            _ => self.config.bin_scores(recency, i64::from(c.frequency), c.monetary),
        };
        if !(force || was_dirty || scores != emitted) {
            return None;
        }
        // The lifetime value only changes with the customer's own events (dirty).
        let dim = if was_dirty || emitted == [0; 3] || self.config.segment(emitted) != self.config.segment(scores) {
            DimRow::Changed
        } else if at.full {
            DimRow::Restated
        } else {
            DimRow::Unchanged
        };
        c.set_emitted(scores);
        Some((document(&self.config, id, c, (recency, scores), at.as_of), dim, idx))
    }

    /// Moves the dirty customers' keys in the rank indexes to their current values (and
    /// records the value count changes in `deltas`, when given).
    fn sync_ranks(&mut self, dirty: &[(u32, Option<RankKeys>)], mut deltas: Option<&mut Vec<CountDelta>>) {
        let Some(ranks) = self.ranks.as_mut() else {
            return;
        };
        // Many changed customers (a catch-up, a replay): one merge per index instead.
        let batched = match self.rank_moves {
            RankMoves::Auto => dirty.len() * BATCH_SHARE >= ranks.frequency.len(),
            RankMoves::OneByOne => false,
            RankMoves::Batched => true,
        };
        let mut batch = batched.then(RankBatch::default);
        for &(idx, old) in dirty {
            let c = &mut self.customers[idx as usize];
            let now = (c.frequency > 0).then(|| c.keys());
            c.set_ranked(now.is_some());
            if old == now {
                continue;
            }
            match batch.as_mut() {
                Some(batch) => {
                    batch.frequency.add(old.map(|k| k.frequency), now.map(|k| k.frequency), idx);
                    batch.monetary.add(old.map(|k| k.monetary), now.map(|k| k.monetary), idx);
                    batch.last_day.add(old.map(|k| k.last_day), now.map(|k| k.last_day), idx);
                }
                None => {
                    move_key(&mut ranks.frequency, old.map(|k| k.frequency), now.map(|k| k.frequency), idx);
                    move_key(&mut ranks.monetary, old.map(|k| k.monetary), now.map(|k| k.monetary), idx);
                    move_key(&mut ranks.last_day, old.map(|k| k.last_day), now.map(|k| k.last_day), idx);
                }
            }
            if let Some(deltas) = deltas.as_deref_mut() {
                for (keys, delta) in [(old, -1), (now, 1)] {
                    if let Some(k) = keys {
                        deltas.extend([
                            CountDelta { dimension: Dimension::Frequency, value: k.frequency, delta },
                            CountDelta { dimension: Dimension::Monetary, value: k.monetary, delta },
                            CountDelta { dimension: Dimension::LastDay, value: k.last_day, delta },
                        ]);
                    }
                }
            }
        }
        if let Some(batch) = batch {
            batch.apply(ranks);
        }
    }
}

/// A flush whose changed customers are at least 1/`BATCH_SHARE` of those ranked moves their
/// keys with [`RankedSet::apply_batch`] (a merge of every key); below that, a live flush's
/// few changes move one by one (a block shift each) rather than rewrite a million keys.
const BATCH_SHARE: usize = 16;

/// The keys a flush moves, gathered per rank index for [`RankedSet::apply_batch`].
#[derive(Default)]
struct RankBatch {
    frequency: Moves<Packed<0>>,
    monetary: Moves<(i64, u32)>,
    last_day: Moves<Packed<{ 1 << 31 }>>,
}

impl RankBatch {
    fn apply(self, ranks: &mut RankIndexes) {
        self.frequency.apply(&mut ranks.frequency);
        self.monetary.apply(&mut ranks.monetary);
        self.last_day.apply(&mut ranks.last_day);
    }
}

/// Keys to remove from one rank index, and keys to insert.
struct Moves<K> {
    removes: Vec<K>,
    inserts: Vec<K>,
}

impl<K> Default for Moves<K> {
    fn default() -> Self {
        Moves { removes: Vec::new(), inserts: Vec::new() }
    }
}

impl<K: RankKey> Moves<K> {
    /// [`move_key`], deferred.
    fn add(&mut self, old: Option<i64>, now: Option<i64>, idx: u32) {
        self.removes.extend(old.map(|v| K::new(v, idx)));
        self.inserts.extend(now.map(|v| K::new(v, idx)));
    }

    fn apply(self, set: &mut RankedSet<K>) {
        set.apply_batch(self.removes, self.inserts);
    }
}

/// Moves customer `idx`'s key in one rank index from its old value to its new one (either
/// may be absent: not ranked before, or not any more).
fn move_key<K: RankKey>(set: &mut RankedSet<K>, old: Option<i64>, now: Option<i64>, idx: u32) {
    match (old, now) {
        (Some(old), Some(now)) => set.replace(&K::new(old, idx), K::new(now, idx)),
        (Some(old), None) => {
            set.remove(&K::new(old, idx));
        }
        (None, Some(now)) => {
            set.insert(K::new(now, idx));
        }
        (None, None) => {}
    }
}

/// A customer's view document with these recency and scores.
fn document(
    config: &RfmConfig,
    id: &str,
    c: &Customer,
    (recency, scores): (i64, [u8; 3]),
    as_of: DateTime<Utc>,
) -> RfmDoc {
    RfmDoc {
        customer_id: id.to_owned(),
        first_purchase_at: c.first_purchase_at,
        last_purchase_at: c.last_purchase_at,
        recency,
        frequency: i64::from(c.frequency),
        monetary_cents: c.monetary,
        r_score: scores[0],
        f_score: scores[1],
        m_score: scores[2],
        rfm_segment: config.segment(scores).to_owned(),
        analysis_date: as_of,
    }
}

fn score(value: i64, bounds: &Bounds) -> u8 {
    1 + bounds.iter().filter(|&&b| value > b).count() as u8
}

impl RankIndexes {
    /// Boundaries of F, M and R (R clamped to the date of `as_of`).
    fn bounds(&self, as_of_day: i64) -> [Bounds; 3] {
        let r = bounds_of(&self.last_day).map(|b| b.min(as_of_day));
        [bounds_of(&self.frequency), bounds_of(&self.monetary), r]
    }

    /// Adds the customers whose score changed because a boundary moved (same `as_of` date).
    fn movers(&self, old: &[Bounds; 3], new: &[Bounds; 3], as_of_day: i64, out: &mut Vec<u32>) {
        movers_of(&self.frequency, (&old[0], &new[0]), None, out);
        movers_of(&self.monetary, (&old[1], &new[1]), None, out);
        movers_of(&self.last_day, (&old[2], &new[2]), Some(as_of_day), out);
    }
}

/// The quintile boundaries of one rank index.
fn bounds_of<K: RankKey>(set: &RankedSet<K>) -> Bounds {
    let mut b = [i64::MAX; 4];
    for (slot, position) in bound_positions(set.len()) {
        b[slot] = set.select(position).map_or(i64::MAX, K::value);
    }
    b
}

/// The customers of one rank index whose value lies between an old and a new boundary;
/// `clamp`, the as_of date a boundary is clamped to (recency).
fn movers_of<K: RankKey>(set: &RankedSet<K>, (old, new): (&Bounds, &Bounds), clamp: Option<i64>, out: &mut Vec<u32>) {
    for (&o, &n) in old.iter().zip(new) {
        if o == n {
            continue;
        }
        let low = o.min(n);
        // A clamped boundary at the as_of date stands for every later date too.
        let high = if clamp.is_some_and(|day| o.max(n) >= day) { i64::MAX } else { o.max(n) };
        out.extend(set.range_after(K::last_of(low), K::last_of(high)).map(K::idx));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::domain::testgen::{arrivals, split_run, steps, Arrival, Split};

    #[test]
    fn quintile_formula_matches_the_spec_sql() {
        // 1 + floor(5 * (rank - 1) / count)
        assert_eq!(quintile(0, 10), 1);
        assert_eq!(quintile(1, 10), 1);
        assert_eq!(quintile(2, 10), 2);
        assert_eq!(quintile(9, 10), 5);
        assert_eq!(quintile(0, 1), 1);
    }

    #[test]
    fn a_customer_record_is_40_bytes_and_keeps_its_marks_apart() {
        assert_eq!(std::mem::size_of::<Customer>(), 40);
        let mut c = Customer::new();
        c.set_emitted([5, 1, 4]);
        c.set_ranked(true);
        c.mark_dirty(7, &mut Vec::new());
        assert_eq!((c.emitted(), c.ranked(), c.dirty()), ([5, 1, 4], true, true));
        c.set_emitted([0; 3]);
        assert!(c.take_dirty());
        c.set_ranked(false);
        assert_eq!((c.emitted(), c.ranked(), c.dirty()), ([0; 3], false, false));
    }

    #[test]
    fn packed_rank_keys_order_as_value_then_handle() {
        type Day = Packed<{ 1 << 31 }>;
        let keys = [Day::new(-3, 9), Day::new(-3, 10), Day::new(0, 0), Day::new(20_000, 1)];
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        assert_eq!((keys[0].value(), keys[0].idx()), (-3, 9));
        assert!(Day::last_of(-3) < keys[2] && Day::last_of(-3) > keys[1]);
        assert_eq!(Day::last_of(i64::MAX), Packed(u64::MAX));
    }

    #[test]
    fn bins_follow_the_batch_edges() {
        let c = RfmConfig::default();
        assert_eq!(c.bin_scores(0, 1, 0), [5, 1, 1]);
        assert_eq!(c.bin_scores(1, 5, 10000), [5, 2, 2]);
        assert_eq!(c.bin_scores(2, 50, 500000), [4, 5, 5]);
        assert_eq!(c.bin_scores(181, 4, -100), [1, 1, 1]);
        assert_eq!(c.bin_scores(400, 4, 99), [1, 1, 1]);
        assert_eq!(c.bin_scores(90, 10, 99999), [3, 3, 3]);
    }

    #[test]
    fn segment_order_makes_every_segment_reachable() {
        let c = RfmConfig::default();
        assert_eq!(c.segment([5, 5, 5]), "Champions");
        assert_eq!(c.segment([2, 4, 5]), "Cannot Lose Them");
        assert_eq!(c.segment([1, 3, 3]), "At Risk");
        assert_eq!(c.segment([3, 4, 3]), "Loyal Customers");
        assert_eq!(c.segment([5, 1, 1]), "New Customers");
        assert_eq!(c.segment([3, 1, 2]), "Potential Loyalists");
        assert_eq!(c.segment([1, 1, 2]), "Lost");
        assert_eq!(c.segment([2, 2, 3]), "Hibernating");
        assert_eq!(c.segment([3, 5, 1]), "Need Attention");
    }

    /// Customers split over parts (as input partitions split them over instances), each
    /// part scoring its own against the summed value counts of all: at every flush the
    /// parts together write exactly the documents one state holding everyone writes.
    fn parts_write_what_one_state_writes(
        arrivals: &[Arrival],
        parts: usize,
        final_hours: i16,
    ) -> Result<(), TestCaseError> {
        let config = RfmConfig::default();
        let mut one = RfmState::new(config.clone());
        let mut split: Vec<RfmState> = (0..parts).map(|_| RfmState::new(config.clone())).collect();
        let mut all = RfmCounts::default();
        let (mut written_one, mut written_split) = (BTreeMap::new(), BTreeMap::new());
        split_run(arrivals, parts, final_hours, |step| {
            match step {
                Split::Event { part, tx, .. } => {
                    one.apply(tx);
                    split[part].apply(tx);
                }
                Split::Flush { as_of, full } => {
                    for (doc, ..) in one.flush(as_of, full) {
                        written_one.insert(doc.customer_id.clone(), doc);
                    }
                    for id in one.take_removed() {
                        written_one.remove(&id);
                    }
                    for part in split.iter_mut() {
                        all.apply(&part.publish_counts());
                    }
                    for part in split.iter_mut() {
                        for (doc, ..) in part.flush_with(as_of, full, &all) {
                            written_split.insert(doc.customer_id.clone(), doc);
                        }
                        for id in part.take_removed() {
                            written_split.remove(&id);
                        }
                    }
                    prop_assert_eq!(&written_one, &written_split, "as of {}", as_of);
                }
            }
            Ok(())
        })
    }

    proptest::proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn customers_split_over_parts_score_as_one_state(steps in steps(150, 12), parts in 1usize..5, final_hours in -48i16..72) {
            parts_write_what_one_state_writes(&arrivals(&steps), parts, final_hours)?;
        }
    }
}
