//! The engine: dedup, watermark and every incremental view behind one `apply` / `flush` pair.
//!
//! Pure and deterministic: the same events in the same order and the same `as_of` give the
//! same documents, whatever the flush cadence.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use super::calendar::epoch_day;
use super::decode::Decoded;
use super::dedup::{Arrival, DedupIndex, Seen};
use super::event::EventKind;
use super::partials::Partials;
use super::product::{ProductChanges, ProductConfig, ProductState};
use super::quintiles::RfmCounts;
use super::reconcile::{
    customer_json, day_json, day_start_us, period_key, product_day_json, AfterCut, CustomerFigures, Cut, CutError,
    FactFix, Fixes, OpenEvents, RepairChange,
};
use super::rfm::{Customer, DimRow, RfmConfig, RfmDoc, RfmState};
use super::session::{Session, SessionFact};
use super::trends::{Granularity, TrendChanges, TrendConfig, TrendState};
use super::warehouse::{DimCustomer, DimDocs, Fact, Restate, Warehouse};
use super::FastMap;

/// The view settings of `[views]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ViewConfig {
    /// How long (in days of event time) a `transaction_id` is remembered for dedup.
    pub dedup_horizon_days: u32,
    pub rfm: RfmConfig,
    pub products: ProductConfig,
    pub trends: TrendConfig,
}

impl Default for ViewConfig {
    fn default() -> Self {
        ViewConfig {
            dedup_horizon_days: 35,
            rfm: RfmConfig::default(),
            products: ProductConfig::default(),
            trends: TrendConfig::default(),
        }
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
    /// Customers whose `customer_rfm_analysis` document goes away (a repair took their
    /// last purchase).
    pub rfm_deletes: Vec<String>,
    pub products: ProductChanges,
    pub trends: TrendChanges,
    /// New facts (both tables) and dimension rows to upsert.
    pub facts: Vec<Fact>,
    /// Facts a repair removes, (table, sale_id): written before `facts`.
    pub fact_removals: Vec<(EventKind, String)>,
    pub sessions: Vec<SessionFact>,
    pub dims: DimDocs,
    /// A full flush: the upserts of `products` and `trends` are those views' whole content,
    /// so a sink removes any other document there (left by a run the state does not know of,
    /// e.g. flushes written after the snapshot a restart restored).
    pub complete: bool,
}

impl ViewChanges {
    /// Adds the customers' documents, facts and dimension rows of `other` (the parts of a
    /// scale-out instance write theirs together); products, trends and `complete` stay.
    pub fn absorb(&mut self, other: ViewChanges) {
        self.rfm.extend(other.rfm);
        self.rfm_deletes.extend(other.rfm_deletes);
        self.facts.extend(other.facts);
        self.fact_removals.extend(other.fact_removals);
        self.sessions.extend(other.sessions);
        self.dims.products.extend(other.dims.products);
        self.dims.customers.extend(other.dims.customers);
        self.dims.locations.extend(other.dims.locations);
        self.dims.dates.extend(other.dims.dates);
    }

    pub fn is_empty(&self) -> bool {
        !self.complete
            && self.facts.is_empty()
            && self.fact_removals.is_empty()
            && self.sessions.is_empty()
            && self.dims.is_empty()
            && self.rfm.is_empty()
            && self.rfm_deletes.is_empty()
            && self.products.upserts.is_empty()
            && self.products.deletes.is_empty()
            && self.trends.upserts.is_empty()
            && self.trends.deletes.is_empty()
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Engine {
    dedup: DedupIndex,
    session_dedup: DedupIndex,
    rfm: RfmState,
    products: ProductState,
    trends: TrendState,
    warehouse: Warehouse,
    watermark: Option<DateTime<Utc>>,
    /// The events a reconciliation cut may still need (see [`super::reconcile`]).
    open: OpenEvents,
    /// View flushes so far (this run): dim_customer rows are restated by the generation
    /// they first changed in (see [`Restate::ChangedBy`]).
    #[serde(skip)]
    views_generation: u64,
    /// Over how many view flushes a complete flush's restated dim_customer rows are spread
    /// (see [`Engine::spread_restates_over`]); 0 or 1: all in the flush's own generation.
    #[serde(skip)]
    restate_spread: u64,
    /// A part of a scale-out (see [`Engine::new_part`]): what its events add to products
    /// and trends waits here for [`Engine::take_partials`]. Not in snapshots yet (nothing
    /// restores a part until the scale-out is wired into `run`).
    #[serde(skip)]
    part: Option<Box<Part>>,
}

/// A part's partials not sent yet, and its arrivals (for attribute ties).
#[derive(Debug, Clone, Default)]
struct Part {
    pending: Partials,
    arrivals: u64,
}

impl Engine {
    pub fn new(config: ViewConfig) -> Self {
        Engine {
            dedup: DedupIndex::new(config.dedup_horizon_days),
            session_dedup: DedupIndex::new(config.dedup_horizon_days),
            rfm: RfmState::new(config.rfm),
            products: ProductState::new(config.products),
            trends: TrendState::new(config.trends),
            warehouse: Warehouse::default(),
            watermark: None,
            open: OpenEvents::default(),
            views_generation: 0,
            restate_spread: 1,
            part: None,
        }
    }

    /// An engine holding some of the input partitions (scale-out): it keeps their
    /// customers, dedup and facts; products and trends it only sums for the owner of those
    /// views ([`Engine::take_partials`], [`super::partials::SharedViews`]), and it scores
    /// its customers against the value counts of every part ([`Engine::flush_part_views`]).
    pub fn new_part(config: ViewConfig) -> Self {
        Engine { part: Some(Box::default()), ..Engine::new(config) }
    }

    /// A part restored from its snapshot (taken right after the part sent its partials, so
    /// none wait: snapshots do not carry them).
    pub fn into_part(self) -> Self {
        Engine { part: Some(Box::default()), ..self }
    }

    /// A part's changes since the last call: its value counts, its products' and trends'
    /// figures. `None` for an engine holding everything.
    pub fn take_partials(&mut self) -> Option<Partials> {
        let part = self.part.as_deref_mut()?;
        let mut partials = std::mem::take(&mut part.pending);
        partials.rfm_counts = self.rfm.publish_counts();
        Some(partials)
    }

    /// A part's view flush: its customers' RFM documents scored against `all`, the counts
    /// of every part (this part's [`Engine::take_partials`] included); no products or trends.
    pub fn flush_part_views(&mut self, as_of: DateTime<Utc>, full: bool, all: &RfmCounts) -> ViewChanges {
        self.flush_views_against(as_of, full, true, Some(all))
    }

    /// A complete flush (the convergence after a restart, a repair) writes every customer's
    /// dim_customer row again, although the state knows of no change in most of them.
    /// Those rows are spread over the next `generations` view flushes, so that they fall
    /// due `dimension_interval_ms` later a few at a time instead of as one burst of a row
    /// per customer. A row that really changed keeps its own flush's generation.
    pub fn spread_restates_over(&mut self, generations: u64) {
        self.restate_spread = generations.max(1);
    }

    /// At most `budget` customer_rfm_analysis documents per view flush for changes that are
    /// not the customer's own (see [`RfmState::defer_rescores`]); `None`: all at once.
    pub fn defer_rescores(&mut self, budget: Option<usize>) {
        self.rfm.defer_rescores(budget);
    }

    /// Heap bytes each part of the state holds, for memory reports: the parts are dropped one
    /// at a time and `allocated` (the allocator's count of live bytes) is read after each.
    pub fn bytes_by_part(self, allocated: impl Fn() -> usize) -> Vec<(&'static str, usize)> {
        let Engine { dedup, session_dedup, mut rfm, products, trends, warehouse, open, .. } = self;
        let mut out = Vec::new();
        let mut before = allocated();
        let mut freed = |part: &'static str| {
            let now = allocated();
            out.push((part, before.saturating_sub(now)));
            before = now;
        };
        rfm.drop_ranks();
        freed("RFM rank indexes (F, M, R)");
        drop(rfm);
        freed("RFM customers (id, figures, emitted scores)");
        drop((dedup, session_dedup));
        freed("dedup (transaction ids within the horizon)");
        drop(warehouse);
        freed("star schema keys (customers, products, locations, dates)");
        drop(products);
        freed("product window");
        drop(trends);
        freed("trends");
        drop(open);
        freed("open events (reconciliation)");
        out
    }

    /// The largest event time among applied events: `as_of` under `clock = "event"`.
    pub fn watermark(&self) -> Option<DateTime<Utc>> {
        self.watermark
    }

    pub fn rfm(&self) -> &RfmState {
        &self.rfm
    }

    pub fn products(&self) -> &ProductState {
        &self.products
    }

    pub fn trends(&self) -> &TrendState {
        &self.trends
    }

    pub fn warehouse(&self) -> &Warehouse {
        &self.warehouse
    }

    /// For preloading the surrogate keys a database already holds, before any event.
    pub fn warehouse_mut(&mut self) -> &mut Warehouse {
        &mut self.warehouse
    }

    /// Takes the key a database already gives customer `id`, before any event.
    pub fn preload_customer_key(&mut self, id: &str, key: i32) {
        let customer = self.rfm.intern(id);
        self.warehouse.customers.preload(customer, key);
    }

    /// The star schema's key of customer `id`, if it has one.
    pub fn customer_key(&self, id: &str) -> Option<i32> {
        self.rfm.index_of(id).and_then(|h| self.warehouse.customers.get(h))
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
        self.apply_at(event, lane, None)
    }

    /// A part's [`Engine::apply_on`], with the event's place in the order every part agrees
    /// on for ties of event time between product attributes (e.g. partition and offset).
    pub fn apply_part(&mut self, event: &Decoded, lane: u16, arrival: u64) -> Outcome {
        self.apply_at(event, lane, Some(arrival))
    }

    fn apply_at(&mut self, event: &Decoded, lane: u16, arrival: Option<u64>) -> Outcome {
        let tx = &event.tx;
        // Looked up before admitting: admitting can sweep the original out of the horizon.
        let orphan_refund = tx.kind == EventKind::Refund
            && tx
                .original_transaction_id
                .as_deref()
                .and_then(|id| self.dedup.get(id))
                .is_none_or(|seen| seen.kind != EventKind::Purchase);
        let seen = Seen { fingerprint: event.fingerprint, day: epoch_day(tx.date()), lane, kind: tx.kind };
        if let Some(repeat) = repeated(self.dedup.admit(&tx.transaction_id, seen)) {
            return repeat;
        }
        let (customer, prior_last) = self.rfm.apply(tx);
        self.open.record(customer, tx.timestamp, tx.kind, tx.total_cents, prior_last);
        self.warehouse.apply(tx, customer);
        // A customer with refunds only has no RFM document whose flush would restate their
        // dim_customer row (segment null, lifetime value = Σ refunds): restate it here.
        let c = self.rfm.customer_at(customer);
        if c.frequency == 0 {
            if let Some(customer_key) = self.warehouse.customers.get(customer) {
                self.warehouse.restate_customer(customer_key, &tx.user_id, None, c.monetary, self.views_generation + 1);
            }
        }
        match self.part.as_deref_mut() {
            None => {
                for product_id in self.products.apply(tx) {
                    self.warehouse.product_changed(product_id);
                }
                self.trends.apply(tx);
            }
            Some(part) => {
                part.arrivals += 1;
                part.pending.products.add(tx, arrival.unwrap_or(part.arrivals));
                part.pending.trends.add(tx);
            }
        }
        self.watermark = Some(self.watermark.map_or(tx.timestamp, |w| w.max(tx.timestamp)));
        Outcome::Applied { orphan_refund }
    }

    /// Applies a browsing session that arrived on `lane` of the sessions topic; sessions
    /// are deduplicated by `session_id` like transactions by `transaction_id`.
    pub fn apply_session(&mut self, event: &Decoded<Session>, lane: u16) -> Outcome {
        let session = &event.tx;
        let day = epoch_day(session.session_start.date_naive());
        let seen = Seen { fingerprint: event.fingerprint, day, lane, kind: EventKind::Purchase };
        if let Some(repeat) = repeated(self.session_dedup.admit(&session.session_id, seen)) {
            return repeat;
        }
        let customer = self.rfm.intern(&session.user_id);
        self.warehouse.apply_session(session, customer);
        match self.part.as_deref_mut() {
            None => self.trends.apply_session(session),
            Some(part) => part.pending.trends.add_session(session),
        }
        Outcome::Applied { orphan_refund: false }
    }

    /// Changed documents as of `as_of` (every document with `full`): both lanes at once.
    pub fn flush(&mut self, as_of: DateTime<Utc>, full: bool) -> ViewChanges {
        let views = self.flush_views(as_of, full);
        let bulk = self.flush_bulk(Restate::All);
        ViewChanges {
            facts: bulk.facts,
            fact_removals: bulk.fact_removals,
            sessions: bulk.sessions,
            dims: bulk.dims,
            ..views
        }
    }

    /// The views lane: the analytic views' changed documents as of `as_of` (every document
    /// with `full`). The dim_customer rows that follow their RFM changes wait in the
    /// warehouse for [`Engine::flush_bulk`], coalesced.
    pub fn flush_views(&mut self, as_of: DateTime<Utc>, full: bool) -> ViewChanges {
        self.flush_views_ranks(as_of, full, true)
    }

    /// As [`Engine::flush_views`]; without `ranks`, product_performance documents whose only
    /// change is their rank wait for a flush with `ranks` (see
    /// [`ProductState::flush_ranks`]): the caller decides how often ripples are written.
    pub fn flush_views_ranks(&mut self, as_of: DateTime<Utc>, full: bool, ranks: bool) -> ViewChanges {
        self.flush_views_against(as_of, full, ranks, None)
    }

    fn flush_views_against(
        &mut self,
        as_of: DateTime<Utc>,
        full: bool,
        ranks: bool,
        all: Option<&RfmCounts>,
    ) -> ViewChanges {
        self.views_generation += 1;
        let rfm = match all {
            Some(all) => self.rfm.flush_with(as_of, full, all),
            None => self.rfm.flush(as_of, full),
        };
        let (products, trends) = match self.part {
            Some(_) => Default::default(),
            None => (self.products.flush_ranks(as_of, full, ranks), self.trends.flush(as_of, full)),
        };
        let spread = self.restate_spread.max(1);
        let mut converging = 0;
        for (d, dim, handle) in &rfm {
            let generation = match dim {
                DimRow::Unchanged => continue,
                DimRow::Changed => self.views_generation,
                DimRow::Restated => {
                    converging += 1;
                    self.views_generation + converging % spread
                }
            };
            if let Some(customer_key) = self.warehouse.customers.get(*handle) {
                let segment = Some(d.rfm_segment.as_str());
                self.warehouse.restate_customer(customer_key, &d.customer_id, segment, d.monetary_cents, generation);
            }
        }
        let rfm_deletes = self.rfm.take_removed();
        // A repair took their last purchase: no segment any more.
        for id in &rfm_deletes {
            if let Some(customer_key) = self.customer_key(id) {
                let lifetime = self.rfm.customer(id).map_or(0, |c| c.monetary);
                self.warehouse.restate_customer(customer_key, id, None, lifetime, self.views_generation);
            }
        }
        let rfm = rfm.into_iter().map(|(d, ..)| d).collect();
        ViewChanges { rfm, rfm_deletes, products, trends, complete: full, ..ViewChanges::default() }
    }

    /// The bulk lane: new facts and sessions, and the dimension rows of new keys (so that
    /// facts always resolve; a new customer's row carries its segment when a view flush
    /// gave it one). Also the dim_customer rows view flushes changed that `restate` asks
    /// for, once each with its latest value; the others keep coalescing. The views keep
    /// their own changes in their dirty sets for [`Engine::flush_views`].
    pub fn flush_bulk(&mut self, restate: Restate) -> ViewChanges {
        let (facts, changed) = self.warehouse.flush();
        let fact_removals = self.warehouse.take_removals();
        let sessions = self.warehouse.take_sessions();
        let dims = self.dim_docs(changed, restate);
        ViewChanges { facts, fact_removals, sessions, dims, ..ViewChanges::default() }
    }

    /// View flushes so far in this run (the generation of the latest).
    pub fn views_generation(&self) -> u64 {
        self.views_generation
    }

    /// dim_customer rows waiting for a restating bulk flush.
    pub fn restated_customers(&self) -> usize {
        self.warehouse.restated_customers()
    }

    /// The state's figures at `cutoff` (see [`super::reconcile`]): every customer with a
    /// figure before it, and the closed days `cutoff − days .. cutoff` the daily series holds.
    pub fn cut(&self, cutoff: NaiveDate, days: u32) -> Result<Cut, CutError> {
        let cutoff_day = epoch_day(cutoff);
        self.check_cut(cutoff)?;
        let cutoff_us = day_start_us(cutoff_day);
        let after = self.open.after(cutoff_us);
        let mut customers = FastMap::default();
        customers.reserve(self.rfm.customer_count());
        for (idx, id, c) in self.rfm.customers() {
            let f = self.figures_at(idx, c, after.get(&idx).copied().unwrap_or_default(), cutoff_us);
            if !f.is_zero() {
                customers.insert(id.into(), f);
            }
        }
        let first_day = (cutoff_day - days as i32).max(self.trends.first_daily_day().unwrap_or(i32::MIN));
        let periods = [Granularity::Weekly, Granularity::Monthly]
            .into_iter()
            .filter_map(|g| self.trends.periods_before(g, first_day).map(|(first, buckets)| (g, first, buckets)))
            .collect();
        let product_first_day =
            (cutoff_day - days as i32).max(self.products.first_day().unwrap_or(cutoff_day)).min(cutoff_day);
        let product_days =
            self.products.days_in(product_first_day..cutoff_day).map(|(id, day, b)| ((id.into(), day), b)).collect();
        let days = self.trends.daily_buckets(first_day..cutoff_day).collect();
        Ok(Cut { cutoff, customers, first_day, days, periods, product_first_day, product_days })
    }

    fn check_cut(&self, cutoff: NaiveDate) -> Result<(), CutError> {
        match self.open.horizon() {
            Some(h) if epoch_day(cutoff) < h => {
                Err(CutError::BeforeHorizon { cutoff, horizon: super::calendar::date_of(h) })
            }
            _ => Ok(()),
        }
    }

    /// One customer's figures before the cut, from its all-time state minus its open events
    /// dated on or after the cut.
    fn figures_at(&self, idx: u32, c: &Customer, after: AfterCut, cutoff_us: i64) -> CustomerFigures {
        let purchases = i64::from(c.frequency) - after.purchases;
        let last = match self.open.last_before_horizon(idx) {
            Some(before) => before.max(after.last_before_us),
            None => (c.frequency > 0).then(|| c.last_purchase_at.timestamp_micros()),
        };
        let first = (c.frequency > 0).then(|| c.first_purchase_at.timestamp_micros()).filter(|&f| f < cutoff_us);
        CustomerFigures {
            purchases,
            monetary: c.monetary - after.cents,
            first_purchase_us: first.filter(|_| purchases > 0),
            last_purchase_us: last.filter(|_| purchases > 0),
        }
    }

    /// Makes the state agree with the database at `cutoff` (the database wins): each
    /// customer's figures before the cut become the given ones (its events after the cut
    /// stay), each day's bucket, each period's part before the cut and each product's bucket
    /// of a date the given one; facts are added, replaced or removed (written by the next
    /// bulk flush). Returns every change made.
    pub fn repair(&mut self, cutoff: NaiveDate, fixes: &Fixes) -> Result<Vec<RepairChange>, CutError> {
        self.check_cut(cutoff)?;
        let (customers, days) = (&fixes.customers, &fixes.days);
        let cutoff_day = epoch_day(cutoff);
        let cutoff_us = day_start_us(cutoff_day);
        // What each customer's open events after the cut add: unchanged by the repairs.
        let after = self.open.after(cutoff_us);
        let mut changes = Vec::new();
        let mut last_before = FastMap::default();
        for (id, db) in customers {
            let (now, after) = match self.rfm.index_of(id) {
                Some(idx) => {
                    let after = after.get(&idx).copied().unwrap_or_default();
                    let c = self.rfm.customer(id).expect("indexed customer");
                    (self.figures_at(idx, c, after, cutoff_us), after)
                }
                None => (CustomerFigures::default(), AfterCut::default()),
            };
            let at = |us: Option<i64>| us.and_then(DateTime::from_timestamp_micros);
            let first = db.first_purchase_us.into_iter().chain(after.first_us).min();
            let last = db.last_purchase_us.into_iter().chain(after.last_us).max();
            let purchases = (db.purchases + after.purchases).max(0) as u32;
            let idx = self.rfm.set_figures(id, purchases, db.monetary + after.cents, at(first).zip(at(last)));
            last_before.insert(idx, db.last_purchase_us);
            changes.push(RepairChange {
                scope: "customer",
                key: id.clone(),
                before: customer_json(&now),
                after: customer_json(db),
            });
        }
        self.open.repaired(cutoff_us, &last_before);
        for &(day, bucket) in days {
            if let Some(old) = self.trends.set_day(day, bucket) {
                changes.push(RepairChange {
                    scope: "day",
                    key: super::calendar::date_of(day).to_string(),
                    before: day_json(&old),
                    after: day_json(&bucket),
                });
            }
        }
        // The periods' parts older than the days compared (the days moved their own weeks
        // and months).
        let first_day = fixes.first_day.unwrap_or(cutoff_day);
        for &(g, p, before) in &fixes.periods {
            if let Some(old) = self.trends.set_period_before(g, p, first_day, before) {
                let (before, after) = (day_json(&old), day_json(&before));
                changes.push(RepairChange { scope: "period", key: period_key(g, p), before, after });
            }
        }
        for (id, day, figures, attributes) in &fixes.product_days {
            if let Some(old) = self.products.set_day(id, *day, *figures, attributes) {
                changes.push(RepairChange {
                    scope: "product_day",
                    key: format!("{id}@{}", super::calendar::date_of(*day)),
                    before: product_day_json(&old),
                    after: product_day_json(figures),
                });
            }
        }
        for fix in &fixes.facts {
            let change = match fix {
                FactFix::Put { line, location_key, replaces, attributes } => {
                    let day = epoch_day(DateTime::from_timestamp_millis(line.at_ms).unwrap_or_default().date_naive());
                    self.products.ensure(&line.product_id, attributes, day);
                    let customer = self.rfm.intern(&line.customer_id);
                    self.warehouse.put_fact(line, customer, *location_key, *replaces);
                    let before =
                        replaces.map_or(serde_json::Value::Null, |k| serde_json::json!({ "kind": k.as_str() }));
                    RepairChange { scope: "fact", key: line.sale_id.clone(), before, after: line.json() }
                }
                FactFix::Remove { kind, sale_id } => {
                    self.warehouse.remove_fact(*kind, sale_id);
                    let before = serde_json::json!({ "kind": kind.as_str() });
                    RepairChange { scope: "fact", key: sale_id.clone(), before, after: serde_json::Value::Null }
                }
            };
            changes.push(change);
        }
        Ok(changes)
    }

    /// Completes the dimension rows: products from their latest attributes; customers whose
    /// RFM document changed (segment, lifetime value) or who are new.
    fn dim_docs(&mut self, changed: super::warehouse::DimChanges, restate: Restate) -> DimDocs {
        let products = changed.products.into_iter().filter_map(|(key, id)| self.products.dim_row(id, key)).collect();
        let mut customers = self.warehouse.take_restated(restate, &changed.customers);
        let written: std::collections::HashSet<i32> = customers.iter().map(|c| c.customer_key).collect();
        for (key, id) in changed.customers {
            if written.contains(&key) {
                continue;
            }
            let c = self.rfm.customer(&id);
            customers.push(DimCustomer {
                customer_key: key,
                customer_segment: None,
                lifetime_value_cents: c.map_or(0, |c| c.monetary),
                customer_id: id,
            });
        }
        DimDocs { products, customers, locations: changed.locations, dates: changed.dates }
    }
}

/// The outcome of a repeated id; `None` for a new one.
fn repeated(arrival: Arrival) -> Option<Outcome> {
    match arrival {
        Arrival::New => None,
        Arrival::Duplicate => Some(Outcome::Duplicate),
        Arrival::Conflicting => Some(Outcome::Conflicting),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::Duration;
    use proptest::prelude::*;

    use super::*;
    use crate::domain::batch;
    use crate::domain::product::{ProductAttributes, ProductDay, ProductDoc};
    use crate::domain::reconcile::{day_start_us, CustomerFigures, Cut, FactLine, Tally};
    use crate::domain::rfm::Scoring;
    use crate::domain::session::Session;
    use crate::domain::testgen::{arrivals, base_time, part_of, steps, Arrival};
    use crate::domain::trends::TrendDoc;
    use crate::domain::trends::{period_of, Bucket};
    use crate::domain::warehouse::{DimCustomer, DimProduct, Fact};
    use crate::domain::{EventKind, Transaction};

    /// The views as MongoDB would hold them after the sink applied every flush.
    #[derive(Debug, Default, Clone, PartialEq)]
    struct Views {
        rfm: BTreeMap<String, RfmDoc>,
        products: BTreeMap<String, ProductDoc>,
        trends: BTreeMap<String, TrendDoc>,
        facts: BTreeMap<String, Fact>,
        dim_products: BTreeMap<i32, DimProduct>,
        dim_customers: BTreeMap<i32, DimCustomer>,
    }

    impl Views {
        fn apply(&mut self, c: ViewChanges) {
            for d in c.rfm {
                self.rfm.insert(d.customer_id.clone(), d);
            }
            for id in c.rfm_deletes {
                self.rfm.remove(&id);
            }
            for id in c.products.deletes {
                assert!(self.products.remove(&id).is_some(), "deleting {id}, never written");
            }
            for d in c.products.upserts {
                self.products.insert(d.product_id.clone(), d);
            }
            for id in c.trends.deletes {
                assert!(self.trends.remove(&id).is_some(), "deleting {id}, never written");
            }
            for d in c.trends.upserts {
                self.trends.insert(d.id(), d);
            }
            for (_, sale_id) in c.fact_removals {
                self.facts.remove(&sale_id);
            }
            for f in c.facts {
                assert!(self.facts.insert(f.sale_id(), f).is_none(), "a fact emitted twice");
            }
            for p in c.dims.products {
                self.dim_products.insert(p.product_key, p);
            }
            for d in c.dims.customers {
                self.dim_customers.insert(d.customer_key, d);
            }
        }

        /// The same documents with every analysis_date set to `t`.
        fn dated(&self, t: DateTime<Utc>) -> Views {
            let mut v = self.clone();
            v.rfm.values_mut().for_each(|d| d.analysis_date = t);
            v.products.values_mut().for_each(|d| d.analysis_date = t);
            v.trends.values_mut().for_each(|d| d.analysis_date = t);
            v
        }
    }

    /// Runs the arrivals through the engine, flushing where the stream says (at as_of =
    /// watermark + hours; never backwards when `monotone`), and returns the views built
    /// from the incremental flushes, the accepted events and the last as_of. Checks on the
    /// way that the incremental views equal a full flush (analysis_date aside).
    fn run(
        config: &ViewConfig,
        arrivals: &[Arrival],
        final_hours: i16,
        monotone: bool,
    ) -> (Views, Vec<Transaction>, Vec<Session>, DateTime<Utc>) {
        let mut engine = Engine::new(config.clone());
        // Both ways of moving rank keys, and the choice between them, across the cases.
        engine.rfm.rank_moves = [
            crate::domain::rfm::RankMoves::Auto,
            crate::domain::rfm::RankMoves::OneByOne,
            crate::domain::rfm::RankMoves::Batched,
        ][arrivals.len() % 3];
        let mut views = Views::default();
        let mut accepted = Vec::new();
        let mut sessions = Vec::new();
        let mut last_as_of: Option<DateTime<Utc>> = None;
        let mut as_of = |engine: &Engine, hours: i16| {
            let t = engine.watermark().unwrap_or_else(base_time) + Duration::hours(hours.into());
            let t = if monotone { last_as_of.map_or(t, |l| l.max(t)) } else { t };
            last_as_of = Some(t);
            t
        };
        for arrival in arrivals {
            match arrival {
                Arrival::Event(d) => match engine.apply(d) {
                    Outcome::Conflicting => {}
                    _ => accepted.push(d.tx.clone()),
                },
                Arrival::Session(d) => match engine.apply_session(d, 0) {
                    Outcome::Conflicting => {}
                    _ => sessions.push(d.tx.clone()),
                },
                Arrival::Flush(hours) => views.apply(engine.flush(as_of(&engine, *hours), false)),
            }
        }
        let last = as_of(&engine, final_hours);
        views.apply(engine.flush(last, false));
        let mut full = Views::default();
        full.apply(engine.flush(last, true));
        // Facts and dimension rows accumulate over every flush, later rows winning.
        full.facts = std::mem::take(&mut views.facts);
        let mut products = std::mem::take(&mut views.dim_products);
        products.append(&mut full.dim_products);
        full.dim_products = products;
        let mut customers = std::mem::take(&mut views.dim_customers);
        customers.append(&mut full.dim_customers);
        full.dim_customers = customers;
        let incremental = views.dated(last);
        assert_eq!(incremental.rfm, full.rfm, "customer_rfm_analysis: incremental != full flush");
        if monotone {
            assert_eq!(incremental.products, full.products, "product_performance: incremental != full flush");
            assert_eq!(incremental.trends, full.trends, "sales_trends: incremental != full flush");
        }
        (full, accepted, sessions, last)
    }

    fn config(scoring: Scoring) -> ViewConfig {
        // The oracle remembers every id; the engine only within the dedup horizon.
        let mut config = ViewConfig { dedup_horizon_days: 1000, ..ViewConfig::default() };
        config.rfm.scoring = scoring;
        config
    }

    fn check(scoring: Scoring, arrivals: &[Arrival], final_hours: i16) -> Result<(), TestCaseError> {
        let config = config(scoring);
        let (views, accepted, _, as_of) = run(&config, arrivals, final_hours, false);
        let expected = batch::rfm(&batch::first_arrivals(&accepted), as_of, &config.rfm);
        let got: Vec<RfmDoc> = views.rfm.into_values().collect();
        prop_assert_eq!(got, expected);
        Ok(())
    }

    /// With a rescore budget: every flush writes the customers' own changes and at most
    /// `budget` documents besides; a snapshot round trip keeps what waits; flushing on
    /// without events (or one flush without a budget, `last_unbudgeted`) drains it, and the
    /// views then equal the batch recompute.
    fn check_deferred(
        arrivals: &[Arrival],
        final_hours: i16,
        budget: usize,
        last_unbudgeted: bool,
    ) -> Result<(), TestCaseError> {
        let config = config(Scoring::Quintile);
        let mut engine = Engine::new(config.clone());
        engine.defer_rescores(Some(budget));
        let mut views = Views::default();
        let mut accepted = Vec::new();
        let mut touched = std::collections::BTreeSet::new();
        let at =
            |engine: &Engine, hours: i16| engine.watermark().unwrap_or_else(base_time) + Duration::hours(hours.into());
        let mut flush = |engine: &mut Engine, t, touched: &mut std::collections::BTreeSet<String>| {
            let changes = engine.flush(t, false);
            let written = changes.rfm.len() + changes.rfm_deletes.len();
            let allowed = std::mem::take(touched).len() + budget;
            let unbudgeted = engine.rfm.rescore_budget.is_none();
            views.apply(changes);
            prop_assert!(unbudgeted || written <= allowed, "{written} documents written, {allowed} allowed");
            Ok(())
        };
        for arrival in arrivals {
            match arrival {
                Arrival::Event(d) => {
                    if !matches!(engine.apply(d), Outcome::Conflicting) {
                        touched.insert(d.tx.user_id.clone());
                        accepted.push(d.tx.clone());
                    }
                }
                Arrival::Session(_) => {}
                Arrival::Flush(hours) => {
                    let t = at(&engine, *hours);
                    flush(&mut engine, t, &mut touched)?
                }
            }
        }
        let bytes = postcard::to_allocvec(&engine).expect("encodes");
        let mut engine: Engine = postcard::from_bytes(&bytes).expect("decodes");
        prop_assert_eq!(
            engine.rfm().rescores_waiting(),
            postcard::from_bytes::<Engine>(&bytes).unwrap().rfm().rescores_waiting()
        );
        engine.defer_rescores(Some(budget));
        let last = at(&engine, final_hours);
        if last_unbudgeted {
            // As the service's last flush: everything waiting goes at once.
            engine.defer_rescores(None);
            flush(&mut engine, last, &mut touched)?;
        }
        flush(&mut engine, last, &mut touched)?;
        for _ in 0..10_000 {
            if engine.rfm().rescores_waiting() == 0 {
                break;
            }
            flush(&mut engine, last, &mut touched)?;
        }
        prop_assert_eq!(engine.rfm().rescores_waiting(), 0);
        let expected = batch::rfm(&batch::first_arrivals(&accepted), last, &config.rfm);
        let got: Vec<RfmDoc> = views.dated(last).rfm.into_values().collect();
        prop_assert_eq!(got, expected);
        Ok(())
    }

    fn recount(events: &[&Transaction], cutoff_us: i64) -> BTreeMap<String, CustomerFigures> {
        let mut out: BTreeMap<String, CustomerFigures> = BTreeMap::new();
        for e in events.iter().filter(|e| e.timestamp.timestamp_micros() < cutoff_us) {
            let f = out.entry(e.user_id.clone()).or_default();
            let at = e.timestamp.timestamp_micros();
            match e.kind {
                EventKind::Purchase => {
                    f.purchases += 1;
                    f.monetary += e.total_cents;
                    f.first_purchase_us = Some(f.first_purchase_us.map_or(at, |x| x.min(at)));
                    f.last_purchase_us = f.last_purchase_us.max(Some(at));
                }
                EventKind::Refund => f.monetary -= e.total_cents,
            }
        }
        out.retain(|_, f| !f.is_zero());
        out
    }

    fn cut_customers(cut: &Cut) -> BTreeMap<String, CustomerFigures> {
        cut.customers.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    fn check_cut(arrivals: &[Arrival], back: u32, bump: i64) -> Result<(), TestCaseError> {
        let config = config(Scoring::Quintile);
        let (_, accepted, _, _) = run(&config, arrivals, 0, true);
        let events = batch::first_arrivals(&accepted);
        let mut engine = Engine::new(config.clone());
        for a in arrivals {
            if let Arrival::Event(d) = a {
                engine.apply(d);
            }
        }
        let Some(w) = engine.watermark() else { return Ok(()) };
        let cutoff = w.date_naive() - Duration::days(i64::from(back));
        let cutoff_us = day_start_us(epoch_day(cutoff));
        let cut = engine.cut(cutoff, 400).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let want = recount(&events, cutoff_us);
        prop_assert_eq!(cut_customers(&cut), want.clone());
        let before: Vec<&Transaction> =
            events.iter().filter(|e| e.timestamp.timestamp_micros() < cutoff_us).copied().collect();
        let days = bucket_of(&before, Some);
        prop_assert_eq!(&cut.days, &days);

        // The database says otherwise for every other customer and every day: after the
        // repair, the cut shows the database's figures and the events after it still count.
        let fixes: Vec<(String, CustomerFigures)> = want
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 2 == 0)
            .map(|(_, (id, f))| {
                // A purchase more (dated just before the cut when the stream had none).
                let t = f.first_purchase_us.or(Some(cutoff_us - 1));
                let last = f.last_purchase_us.or(t);
                (
                    id.clone(),
                    CustomerFigures {
                        purchases: f.purchases + bump,
                        monetary: f.monetary + 100 * bump,
                        first_purchase_us: t,
                        last_purchase_us: last,
                    },
                )
            })
            .chain(std::iter::once((
                "newcomer".to_owned(),
                CustomerFigures {
                    purchases: 1,
                    monetary: 5,
                    first_purchase_us: Some(cutoff_us - 1),
                    last_purchase_us: Some(cutoff_us - 1),
                },
            )))
            .collect();
        let day_fixes: Vec<(i32, Bucket)> =
            days.iter().map(|(d, b)| (*d, Bucket { purchases: b.purchases + bump, ..*b })).collect();
        let all_time_before = recount(&events, i64::MAX);
        let all = Fixes { customers: fixes.clone(), days: day_fixes.clone(), ..Fixes::default() };
        engine.repair(cutoff, &all).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut expected = want.clone();
        for (id, f) in &fixes {
            expected.insert(id.clone(), *f);
        }
        let again = engine.cut(cutoff, 400).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(cut_customers(&again), expected.clone());
        prop_assert_eq!(again.days, day_fixes.iter().copied().collect::<BTreeMap<_, _>>());
        // All-time figures: the database's before the cut plus the stream's after it.
        for (id, f) in &fixes {
            let c = engine.rfm().customer(id).expect("repaired customer");
            let after = all_time_before.get(id).map_or(0, |a| a.purchases) - want.get(id).map_or(0, |w| w.purchases);
            prop_assert_eq!(i64::from(c.frequency), f.purchases + after);
        }
        Ok(())
    }

    /// The database's version of the stream before the cut: every 5th event missing, every
    /// 7th a cent more, every 4th purchase with a line's quantity one more, every 6th also
    /// under a new id (every 12th of a new customer).
    fn drifted(stream: &[&Transaction], cutoff_us: i64) -> Vec<Transaction> {
        let mut db = Vec::new();
        for (i, e) in stream.iter().filter(|e| e.timestamp.timestamp_micros() < cutoff_us).enumerate() {
            if i % 5 == 1 {
                continue;
            }
            let mut e = (*e).clone();
            if i % 7 == 2 {
                e.total_cents += 1;
            }
            // (Only purchases: a purchase and its refund changed alike would leave every
            // figure the reconciliation compares as it was.)
            if i % 4 == 3 && e.kind == EventKind::Purchase && !e.items.is_empty() {
                e.items[0].quantity += 1;
            }
            if i % 6 == 0 {
                let mut extra = e.clone();
                extra.transaction_id = format!("db-{i}");
                // With money of its own: an extra refund of 0.00 leaves its customer's
                // figures as they were (and a new customer's all zeros, as if absent), so
                // only its product day could show it, and a line change elsewhere on that
                // day can cancel it there (DESIGN "Reconciliation": the limit).
                extra.total_cents = extra.total_cents.max(1);
                if i % 12 == 0 {
                    extra.user_id = format!("db-customer-{i}");
                }
                db.push(extra);
            }
            db.push(e);
        }
        db
    }

    fn bucket_of(events: &[&Transaction], period: impl Fn(i32) -> Option<i32>) -> BTreeMap<i32, Bucket> {
        let mut out: BTreeMap<i32, Bucket> = BTreeMap::new();
        for e in events {
            let Some(p) = period(epoch_day(e.date())) else { continue };
            out.entry(p).or_default().add(e);
        }
        out
    }

    fn line_of(e: &Transaction, i: usize) -> FactLine {
        let line = &e.items[i];
        FactLine {
            kind: e.kind,
            sale_id: format!("{}:{i}", e.transaction_id),
            transaction_id: e.transaction_id.clone(),
            customer_id: e.user_id.clone(),
            product_id: line.product_id.clone(),
            at_ms: e.timestamp.timestamp_millis(),
            quantity: line.quantity,
            unit_price_cents: line.unit_price_cents,
            discount_cents: line.discount_cents,
            payment_method: e.payment_method.clone(),
        }
    }

    /// A repair from a database that disagrees in every way (missing and extra events,
    /// amounts, lines, new customers) makes every view and fact equal a batch recompute of
    /// the database's events before the cut plus the stream's after it. Compared as the
    /// adapter does: customers, days, weeks and months (older than the daily series too),
    /// product buckets, and the facts of the customers that differ.
    fn check_repair(arrivals: &[Arrival], back: u32) -> Result<(), TestCaseError> {
        let mut config = config(Scoring::Quintile);
        config.trends.daily_days = 3;
        let mut engine = Engine::new(config.clone());
        let mut accepted = Vec::new();
        for a in arrivals {
            if let Arrival::Event(d) = a {
                if engine.apply(d) != Outcome::Conflicting {
                    accepted.push(d.tx.clone());
                }
            }
        }
        let Some(as_of) = engine.watermark() else { return Ok(()) };
        let mut views = Views::default();
        views.apply(engine.flush(as_of, false));
        let cutoff = as_of.date_naive() - Duration::days(i64::from(back));
        let cutoff_us = day_start_us(epoch_day(cutoff));
        let stream = batch::first_arrivals(&accepted);
        let db = drifted(&stream, cutoff_us);
        let db_refs: Vec<&Transaction> = db.iter().collect();

        let mut cut = engine.cut(cutoff, 400).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut tally = Tally::new(0);
        let mut theirs = std::mem::take(&mut cut.customers);
        for (id, f) in recount(&db_refs, cutoff_us) {
            tally.customer(&id, theirs.remove(id.as_str()).as_ref(), Some(&f));
        }
        for (id, f) in theirs {
            tally.customer(&id, Some(&f), None);
        }
        tally.days_of(&cut, &bucket_of(&db_refs, Some));
        for (g, first, buckets) in &cut.periods {
            let from = crate::domain::trends::period_start_day(*g, *first);
            let db_periods =
                bucket_of(&db_refs, |day| (from..cut.first_day).contains(&day).then(|| period_of(*g, day)));
            tally.periods_of(*g, buckets, &db_periods);
        }
        let mut db_products: BTreeMap<(String, i32), (ProductDay, ProductAttributes)> = BTreeMap::new();
        for e in db_refs.iter().filter(|e| epoch_day(e.date()) >= cut.product_first_day) {
            for (i, line) in e.items.iter().enumerate() {
                let (b, _) = db_products.entry((line.product_id.clone(), epoch_day(e.date()))).or_default();
                b.units += e.sign() * line.quantity;
                b.revenue += e.sign() * line.amount_cents();
                if e.kind == EventKind::Purchase {
                    b.purchase_lines += 1;
                    b.orders += i64::from(!e.items[..i].iter().any(|l| l.product_id == line.product_id));
                }
            }
        }
        tally.product_days_of(&mut cut.product_days, db_products);
        // The facts, in the rounds the adapter runs: the customers that differ and those on
        // a product day that differs, then those on the product days of facts that differ.
        let stored_all: Vec<(FactLine, i32)> = views
            .facts
            .values()
            .filter(|f| f.timestamp.timestamp_micros() < cutoff_us)
            .map(|f| {
                let line = FactLine {
                    kind: f.kind,
                    sale_id: f.sale_id(),
                    transaction_id: f.transaction_id.to_string(),
                    customer_id: views.dim_customers[&f.customer_key].customer_id.clone(),
                    product_id: views.dim_products[&f.product_key].product_id.clone(),
                    at_ms: f.timestamp.timestamp_millis(),
                    quantity: f.quantity,
                    unit_price_cents: f.unit_price_cents,
                    discount_cents: f.discount_cents,
                    payment_method: f.payment_method.as_deref().map(str::to_owned),
                };
                (line, f.location_key)
            })
            .collect();
        let day_of = |at_ms: i64| epoch_day(DateTime::from_timestamp_millis(at_ms).unwrap_or_default().date_naive());
        let mut product_days: Vec<(String, i32)> = tally.mismatched_product_days();
        let mut seen_days: std::collections::HashSet<(String, i32)> = product_days.iter().cloned().collect();
        let mut compared: std::collections::HashSet<String> = std::collections::HashSet::new();
        let mut customers = tally.mismatched_customers(std::iter::empty());
        for _ in 0..4 {
            let on_days = |customer: &str, product: &str, day: i32| {
                product_days.iter().any(|(p, d)| p == product && *d == day).then(|| customer.to_owned())
            };
            for e in &db_refs {
                customers.extend(e.items.iter().find_map(|l| on_days(&e.user_id, &l.product_id, epoch_day(e.date()))));
            }
            for (f, _) in &stored_all {
                customers.extend(on_days(&f.customer_id, &f.product_id, day_of(f.at_ms)));
            }
            customers.retain(|c| !compared.contains(c));
            customers.sort_unstable();
            customers.dedup();
            if customers.is_empty() {
                break;
            }
            let these: std::collections::HashSet<String> = customers.drain(..).collect();
            let db_lines = db_refs
                .iter()
                .filter(|e| these.contains(&e.user_id))
                .flat_map(|e| (0..e.items.len()).map(|i| (line_of(e, i), ProductAttributes::default())))
                .collect();
            let stored = stored_all.iter().filter(|(l, _)| these.contains(&l.customer_id)).cloned().collect();
            compared.extend(these);
            product_days = tally.facts(db_lines, stored).into_iter().filter(|d| seen_days.insert(d.clone())).collect();
            if product_days.is_empty() {
                break;
            }
        }
        let changes = engine.repair(cutoff, &tally.fixes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(changes.len() as u64, tally.mismatches(), "one change per mismatch");
        views.apply(engine.flush(as_of, false));

        // The truth: the database before the cut, the stream after it. Product attributes
        // stay the stream's (a repair does not rename products; the database's added lines
        // repeat names the stream carried).
        let mut truth: Vec<Transaction> = db;
        truth.extend(stream.iter().filter(|e| e.timestamp.timestamp_micros() >= cutoff_us).map(|e| (*e).clone()));
        let truth_refs: Vec<&Transaction> = truth.iter().collect();
        let named: BTreeMap<String, ProductDoc> =
            batch::products(&stream, as_of, &config.products).into_iter().map(|d| (d.product_id.clone(), d)).collect();
        let mut renamed = truth.clone();
        for line in renamed.iter_mut().flat_map(|e| e.items.iter_mut()) {
            if let Some(d) = named.get(&line.product_id) {
                line.product_name = d.product_name.clone();
                line.category = (d.category != crate::domain::event::UNCATEGORIZED).then(|| d.category.clone());
            }
        }
        let renamed_refs: Vec<&Transaction> = renamed.iter().collect();
        prop_assert_eq!(views.rfm.values().cloned().collect::<Vec<_>>(), batch::rfm(&truth_refs, as_of, &config.rfm));
        prop_assert_eq!(
            views.products.values().cloned().collect::<Vec<_>>(),
            batch::products(&renamed_refs, as_of, &config.products)
        );
        let mut want = batch::trends(&truth_refs, &[], as_of, &config.trends);
        want.sort_by_key(TrendDoc::id);
        prop_assert_eq!(views.trends.values().cloned().collect::<Vec<_>>(), want);
        check_star_schema(&views.facts, &views.dim_products, &views.dim_customers, &truth_refs, &views.rfm)
    }

    fn check_all(arrivals: &[Arrival], final_hours: i16, config: &ViewConfig) -> Result<(), TestCaseError> {
        let (views, accepted, sessions, as_of) = run(config, arrivals, final_hours, true);
        let events = batch::first_arrivals(&accepted);
        let sessions = batch::first_sessions(&sessions);
        prop_assert_eq!(views.rfm.values().cloned().collect::<Vec<_>>(), batch::rfm(&events, as_of, &config.rfm));
        prop_assert_eq!(
            views.products.into_values().collect::<Vec<_>>(),
            batch::products(&events, as_of, &config.products)
        );
        let mut want = batch::trends(&events, &sessions, as_of, &config.trends);
        want.sort_by_key(TrendDoc::id);
        prop_assert_eq!(views.trends.values().cloned().collect::<Vec<_>>(), want);
        check_star_schema(&views.facts, &views.dim_products, &views.dim_customers, &events, &views.rfm)
    }

    /// Every line of every applied event is one fact; keys agree with the dimensions; each
    /// customer's dimension row carries its current segment and lifetime value.
    fn check_star_schema(
        facts: &BTreeMap<String, Fact>,
        products: &BTreeMap<i32, DimProduct>,
        customers: &BTreeMap<i32, DimCustomer>,
        events: &[&Transaction],
        rfm: &BTreeMap<String, RfmDoc>,
    ) -> Result<(), TestCaseError> {
        let lines: usize = events.iter().map(|e| e.items.len()).sum();
        prop_assert_eq!(facts.len(), lines);
        for e in events {
            for (i, line) in e.items.iter().enumerate() {
                let f = &facts[&format!("{}:{i}", e.transaction_id)];
                prop_assert_eq!(f.kind, e.kind);
                prop_assert_eq!(f.total_cents, line.amount_cents(), "fact {:?}", f);
                prop_assert_eq!(&products[&f.product_key].product_id, &line.product_id);
                prop_assert_eq!(&customers[&f.customer_key].customer_id, &e.user_id);
            }
        }
        let ids: std::collections::HashSet<&String> = products.values().map(|p| &p.product_id).collect();
        prop_assert_eq!(ids.len(), products.len(), "one key per product");
        for c in customers.values() {
            let doc = rfm.get(&c.customer_id);
            prop_assert_eq!(c.customer_segment.as_ref(), doc.map(|d| &d.rfm_segment));
            if let Some(d) = doc {
                prop_assert_eq!(c.lifetime_value_cents, d.monetary_cents);
            }
        }
        Ok(())
    }

    /// Events split over parts by customer (as input partitions split them over instances):
    /// at every flush, the parts' RFM documents (scored against every part's value counts),
    /// the owner's products and trends (from every part's partials) and the parts' facts are
    /// the views and facts of one engine applying every event. Products: the same content,
    /// and no document one engine does not write (see `ProductDeltas::merge`); facts: the
    /// same rows but for the surrogate keys, which each part hands out itself.
    fn check_parts(arrivals: &[Arrival], parts: usize, final_hours: i16) -> Result<(), TestCaseError> {
        use crate::domain::partials::SharedViews;
        use crate::domain::quintiles::RfmCounts;
        let mut config = config(Scoring::Quintile);
        config.products.window_days = 3;
        config.trends = TrendConfig { daily_days: 4, weekly_weeks: 2, monthly_months: 2 };
        let mut one = Engine::new(config.clone());
        let mut split: Vec<Engine> = (0..parts).map(|_| Engine::new_part(config.clone())).collect();
        let mut owner = SharedViews::new(&config);
        let mut all = RfmCounts::default();
        let part_of = |user: &str| part_of(user, parts);
        let (mut by_one, mut by_parts) = (Views::default(), Views::default());
        let (mut latest, mut as_of, mut arrival) = (base_time(), base_time(), 0u64);
        let mut session_parts: BTreeMap<String, usize> = BTreeMap::new();
        let unkeyed = |facts: &BTreeMap<String, Fact>| -> Vec<Fact> {
            facts.values().map(|f| Fact { product_key: 0, customer_key: 0, location_key: 0, ..f.clone() }).collect()
        };
        let mut flush = |one: &mut Engine, split: &mut [Engine], at: DateTime<Utc>, full: bool| {
            let mut c = one.flush(at, full);
            let one_products: Vec<String> = c.products.upserts.iter().map(|d| d.product_id.clone()).collect();
            for d in &mut c.products.upserts {
                d.analysis_date = DateTime::<Utc>::MIN_UTC;
            }
            by_one.apply(c);
            let mut gathered = Partials::default();
            for part in split.iter_mut() {
                gathered.merge(part.take_partials().expect("a part"));
            }
            all.apply(&gathered.rfm_counts);
            owner.apply(&gathered);
            for part in split.iter_mut() {
                let views = part.flush_part_views(at, full, &all);
                let bulk = part.flush_bulk(Restate::All);
                by_parts.apply(ViewChanges { facts: bulk.facts, fact_removals: bulk.fact_removals, ..views });
            }
            let (mut products, trends) = owner.flush(at, full);
            for d in &mut products.upserts {
                prop_assert!(
                    one_products.contains(&d.product_id),
                    "the owner wrote {} and one engine did not",
                    d.product_id
                );
                d.analysis_date = DateTime::<Utc>::MIN_UTC;
            }
            by_parts.apply(ViewChanges { products, trends, ..ViewChanges::default() });
            prop_assert_eq!(&by_one.rfm, &by_parts.rfm, "RFM as of {}", at);
            prop_assert_eq!(&by_one.products, &by_parts.products, "products as of {}", at);
            prop_assert_eq!(&by_one.trends, &by_parts.trends, "trends as of {}", at);
            prop_assert_eq!(unkeyed(&by_one.facts), unkeyed(&by_parts.facts), "facts as of {}", at);
            Ok(())
        };
        for a in arrivals {
            match a {
                Arrival::Event(d) => {
                    let outcome = one.apply(d);
                    if matches!(outcome, Outcome::Applied { .. }) {
                        arrival += 1;
                        latest = latest.max(d.tx.timestamp);
                    }
                    // The same outcome, but whether a refund's purchase is known: the generator
                    // refunds other customers' purchases too, which live in other parts.
                    let plain = |o: Outcome| match o {
                        Outcome::Applied { .. } => Outcome::Applied { orphan_refund: false },
                        o => o,
                    };
                    prop_assert_eq!(plain(split[part_of(&d.tx.user_id)].apply_part(d, 0, arrival)), plain(outcome));
                }
                Arrival::Session(s) => {
                    // A session id goes where it first went: the generator resends an id
                    // with another customer's content, which the broker would have keyed
                    // (and partitioned) by the first.
                    let part = *session_parts.entry(s.tx.session_id.clone()).or_insert_with(|| part_of(&s.tx.user_id));
                    let outcome = one.apply_session(s, 0);
                    prop_assert_eq!(split[part].apply_session(s, 0), outcome);
                }
                Arrival::Flush(hours) => {
                    // The views' as_of never moves backwards within a run.
                    as_of = as_of.max(latest + Duration::hours(i64::from(*hours)));
                    flush(&mut one, &mut split, as_of, false)?;
                }
            }
        }
        as_of = as_of.max(latest + Duration::hours(i64::from(final_hours)));
        flush(&mut one, &mut split, as_of, false)?;
        flush(&mut one, &mut split, as_of, true)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn rfm_quintiles_equal_a_batch_recompute(steps in steps(120, 10), final_hours in -48i16..72) {
            check(Scoring::Quintile, &arrivals(&steps), final_hours)?;
        }

        #[test]
        fn deferred_rescores_drain_to_a_batch_recompute(steps in steps(120, 10), final_hours in -48i16..72, budget in 1usize..6, last_unbudgeted: bool) {
            check_deferred(&arrivals(&steps), final_hours, budget, last_unbudgeted)?;
        }

        #[test]
        fn parts_and_an_owner_write_the_views_of_one_engine(steps in steps(150, 40), parts in 1usize..5, final_hours in 0i16..72) {
            check_parts(&arrivals(&steps), parts, final_hours)?;
        }

        #[test]
        fn rfm_bins_equal_a_batch_recompute(steps in steps(80, 400), final_hours in -48i16..72) {
            check(Scoring::Bins, &arrivals(&steps), final_hours)?;
        }

        /// Every view, over spans that cross windows, ISO weeks, months and a year end.
        #[test]
        fn all_views_equal_a_batch_recompute(steps in steps(150, 150), final_hours in 0i16..72) {
            check_all(&arrivals(&steps), final_hours, &config(Scoring::Quintile))?;
        }

        /// The state's figures at any cut its open events cover equal a recount of the
        /// applied events dated before it; a repair sets exactly the figures it is given.
        #[test]
        fn cut_figures_equal_a_recount_and_repairs_set_them(steps in steps(150, 10), back in 0u32..4, bump in 1i64..3) {
            check_cut(&arrivals(&steps), back, bump)?;
        }

        /// A repair from a database that disagrees in every way makes every view and fact
        /// equal a recompute of the database before the cut and the stream after it.
        #[test]
        fn repairs_make_every_view_and_fact_equal_the_database_before_the_cut(steps in steps(150, 10), back in 0u32..4) {
            check_repair(&arrivals(&steps), back)?;
        }

        /// A catch-up that writes only facts and new keys, then one complete flush, leaves
        /// MongoDB as a catch-up that flushed every view at every step would (the complete
        /// flush's sweep removes what either left behind): same views, same facts, the same
        /// last dimension rows.
        #[test]
        fn facts_only_flushes_then_a_complete_one_equal_incremental_flushes(steps in steps(150, 40), final_hours in 0i16..72) {
            let mut config = config(Scoring::Quintile);
            config.products.window_days = 3;
            config.trends = TrendConfig { daily_days: 4, weekly_weeks: 2, monthly_months: 2 };
            let arrivals = arrivals(&steps);
            let (mut every, mut deferred) = (Engine::new(config.clone()), Engine::new(config));
            let (mut written, mut loaded) = (Views::default(), Views::default());
            // as_of never goes back in the service (wall, event and fixed clocks alike).
            let mut latest = base_time();
            let mut as_of = |engine: &Engine, hours: i16| {
                latest = latest.max(engine.watermark().unwrap_or_else(base_time) + Duration::hours(hours.into()));
                latest
            };
            for arrival in &arrivals {
                match arrival {
                    Arrival::Event(d) => {
                        prop_assert_eq!(every.apply(d), deferred.apply(d));
                    }
                    Arrival::Session(d) => {
                        prop_assert_eq!(every.apply_session(d, 0), deferred.apply_session(d, 0));
                    }
                    Arrival::Flush(hours) => {
                        let as_of = as_of(&every, *hours);
                        written.apply(every.flush(as_of, false));
                        loaded.apply(deferred.flush_bulk(Restate::None));
                    }
                }
            }
            let last = as_of(&every, final_hours);
            // The complete flush replaces each view's content in MongoDB (its deletes are
            // of documents the sweep removes anyway).
            let complete = |engine: &mut Engine| {
                let mut c = engine.flush(last, true);
                c.products.deletes.clear();
                c.trends.deletes.clear();
                c.rfm_deletes.clear();
                let mut v = Views::default();
                v.apply(c);
                v
            };
            let (mut a, mut b) = (complete(&mut every), complete(&mut deferred));
            prop_assert_eq!(&a.rfm, &b.rfm);
            prop_assert_eq!(&a.products, &b.products);
            prop_assert_eq!(&a.trends, &b.trends);
            written.dim_products.append(&mut a.dim_products);
            written.dim_customers.append(&mut a.dim_customers);
            loaded.dim_products.append(&mut b.dim_products);
            loaded.dim_customers.append(&mut b.dim_customers);
            prop_assert_eq!(&written.facts, &loaded.facts);
            prop_assert_eq!(&written.dim_products, &loaded.dim_products);
            prop_assert_eq!(&written.dim_customers, &loaded.dim_customers);
        }

        /// The two lanes flushed independently, at any interleaving (the views alone, the
        /// bulk lane restating dim_customer or not), leave MongoDB as flushing both at once
        /// does once a last flush of both has run; and every fact the bulk lane emits has
        /// its dimension rows written by then; product ranks deferred by some view flushes
        /// are written by a later one.
        #[test]
        fn lanes_flushed_apart_equal_flushing_both_together(steps in steps(150, 40), final_hours in 0i16..72) {
            let config = config(Scoring::Quintile);
            let arrivals = arrivals(&steps);
            let (mut together, mut apart) = (Engine::new(config.clone()), Engine::new(config));
            let (mut a, mut b) = (Views::default(), Views::default());
            let mut latest = base_time();
            let mut as_of = |engine: &Engine, hours: i16| {
                latest = latest.max(engine.watermark().unwrap_or_else(base_time) + Duration::hours(hours.into()));
                latest
            };
            let mut lane = 0u32;
            for arrival in &arrivals {
                match arrival {
                    Arrival::Event(d) => {
                        prop_assert_eq!(together.apply(d), apart.apply(d));
                    }
                    Arrival::Session(d) => {
                        prop_assert_eq!(together.apply_session(d, 0), apart.apply_session(d, 0));
                    }
                    Arrival::Flush(hours) => {
                        let as_of = as_of(&together, *hours);
                        a.apply(together.flush(as_of, false));
                        lane += 1;
                        match lane % 5 {
                            // Rank-only product rewrites deferred to a later views flush.
                            0 => b.apply(apart.flush_views_ranks(as_of, false, false)),
                            1 => b.apply(apart.flush_bulk(Restate::None)),
                            2 => b.apply(apart.flush_bulk(Restate::All)),
                            3 => {
                                let older = apart.views_generation().saturating_sub(1);
                                b.apply(apart.flush_bulk(Restate::ChangedBy(older)));
                            }
                            _ => {
                                b.apply(apart.flush_bulk(Restate::None));
                                b.apply(apart.flush_views(as_of, false));
                            }
                        }
                        for f in b.facts.values() {
                            prop_assert!(b.dim_customers.contains_key(&f.customer_key), "fact before its customer row");
                            prop_assert!(b.dim_products.contains_key(&f.product_key), "fact before its product row");
                        }
                    }
                }
            }
            let last = as_of(&together, final_hours);
            a.apply(together.flush(last, false));
            b.apply(apart.flush_views(last, false));
            b.apply(apart.flush_bulk(Restate::All));
            prop_assert_eq!(apart.restated_customers(), 0);
            // A document either lane left unchanged keeps the analysis_date it was written at.
            prop_assert_eq!(a.dated(last), b.dated(last));
        }

        /// Product rank-only rewrites deferred by any flushes and written by a later one
        /// leave every view equal to a batch recompute.
        #[test]
        fn deferred_ranks_equal_a_batch_recompute(steps in steps(150, 10), final_hours in 0i16..72) {
            let config = config(Scoring::Quintile);
            let mut engine = Engine::new(config.clone());
            let mut views = Views::default();
            let mut accepted = Vec::new();
            let mut latest = base_time();
            for arrival in &arrivals(&steps) {
                match arrival {
                    Arrival::Event(d) => {
                        if engine.apply(d) != Outcome::Conflicting {
                            accepted.push(d.tx.clone());
                        }
                    }
                    Arrival::Session(_) => {}
                    Arrival::Flush(hours) => {
                        let t = engine.watermark().unwrap_or_else(base_time) + Duration::hours((*hours).into());
                        latest = latest.max(t);
                        views.apply(engine.flush_views_ranks(latest, false, hours % 3 == 0));
                    }
                }
            }
            let t = engine.watermark().unwrap_or_else(base_time) + Duration::hours(final_hours.into());
            let last = latest.max(t);
            views.apply(engine.flush_views(last, false));
            let events = batch::first_arrivals(&accepted);
            let views = views.dated(last);
            prop_assert_eq!(views.rfm.into_values().collect::<Vec<_>>(), batch::rfm(&events, last, &config.rfm));
            let products = batch::products(&events, last, &config.products);
            prop_assert_eq!(views.products.into_values().collect::<Vec<_>>(), products);
        }

        /// Small windows and retentions, so that sliding and eviction happen constantly.
        #[test]
        fn short_windows_equal_a_batch_recompute(steps in steps(150, 40), final_hours in 0i16..72) {
            let mut config = config(Scoring::Quintile);
            config.products.window_days = 3;
            config.products.rising_star_revenue_per_day = 50.0;
            config.trends = TrendConfig { daily_days: 4, weekly_weeks: 2, monthly_months: 2 };
            check_all(&arrivals(&steps), final_hours, &config)?;
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
                _ => unreachable!(),
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
mod memory_tests {
    use super::*;
    use crate::domain::testgen::{arrivals, Arrival, Step};

    /// Two years of daily events, flushed daily: the product and trend state hold only
    /// their windows (30 days of product buckets, 96 + 12 + 12 trend buckets, sessions).
    #[test]
    fn state_follows_the_windows_not_the_history() {
        let steps: Vec<Step> = (0..730u32)
            .flat_map(|day| {
                let minute = day * 24 * 60 + 600;
                [
                    Step::New {
                        user: (day % 7) as u8,
                        minute,
                        total: 3,
                        refund_of: None,
                        lines: vec![((day % 5) as u8, 1, 2, 0)],
                    },
                    Step::Session { user: 1, minute, cart_adds: 1, purchase: false, resend: false },
                    Step::Flush { hours: 0 },
                ]
            })
            .collect();
        let mut engine = Engine::new(ViewConfig::default());
        let mut peak = (0, 0);
        for a in arrivals(&steps) {
            match a {
                Arrival::Event(d) => drop(engine.apply(&d)),
                Arrival::Session(d) => drop(engine.apply_session(&d, 0)),
                Arrival::Flush(_) => {
                    let as_of = engine.watermark().unwrap();
                    engine.flush(as_of, false);
                    peak = (peak.0.max(engine.products().buckets_held()), peak.1.max(engine.trends().buckets_held()));
                }
            }
        }
        assert!(peak.0 <= 31, "product buckets held: {}", peak.0);
        assert!(peak.1 <= 97 + 13 + 13 + 97, "trend buckets held: {}", peak.1);
        assert!(engine.dedup_len() <= 2 * 36, "dedup entries: {}", engine.dedup_len());
    }

    /// A complete flush writes every customer's dim_customer row again; those it did not
    /// change fall due over the next view flushes, a few at a time, and one that changed
    /// keeps its own flush's generation. None is lost.
    #[test]
    fn a_complete_flush_spreads_its_restates_over_later_flushes() {
        let purchase =
            |user: u8, minute: u32| Step::New { user, minute, total: 3, refund_of: None, lines: vec![(0, 1, 2, 0)] };
        let mut steps: Vec<Step> = (0..40u8).map(|u| purchase(u, u32::from(u))).collect();
        steps.push(Step::Flush { hours: 0 });
        steps.push(purchase(7, 100));
        let mut engine = Engine::new(ViewConfig::default());
        engine.spread_restates_over(4);
        let take = |engine: &mut Engine, restate| {
            let mut ids: Vec<String> =
                engine.flush_bulk(restate).dims.customers.into_iter().map(|c| c.customer_id).collect();
            ids.sort();
            ids
        };
        for a in arrivals(&steps) {
            match a {
                Arrival::Event(d) => drop(engine.apply(&d)),
                Arrival::Session(d) => drop(engine.apply_session(&d, 0)),
                Arrival::Flush(_) => {
                    engine.flush_views(engine.watermark().unwrap(), false);
                    take(&mut engine, Restate::All);
                }
            }
        }
        engine.flush_views(engine.watermark().unwrap(), true);
        let generation = engine.views_generation();
        let mut taken = take(&mut engine, Restate::ChangedBy(generation));
        assert!(taken.len() <= 40 / 4 + 1, "due at once: {}", taken.len());
        assert!(taken.iter().any(|id| id == "u7"), "the customer who bought again goes first: {taken:?}");
        for later in 1..4 {
            let next = take(&mut engine, Restate::ChangedBy(generation + later));
            assert!((1..=40 / 4 + 1).contains(&next.len()), "generation +{later}: {}", next.len());
            taken.extend(next);
        }
        taken.sort();
        taken.dedup();
        assert_eq!(taken.len(), 40);
        assert_eq!(engine.restated_customers(), 0);
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
                _ => unreachable!(),
            })
            .collect();
        let mut engine = Engine::new(ViewConfig::default());
        assert_eq!(engine.apply_on(&events[0], 0), Outcome::Applied { orphan_refund: false });
        // Lane 1 jumps 90 days ahead; lane 0 is still at day 10.
        assert_eq!(engine.apply_on(&events[1], 1), Outcome::Applied { orphan_refund: false });
        assert_eq!(engine.apply_on(&events[0], 0), Outcome::Duplicate, "lane 0's own horizon still holds its id");
    }
}
