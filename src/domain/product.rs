//! Per-product day buckets over a sliding window and the `product_performance` view
//! (SPEC §4), kept incrementally.
//!
//! Each product keeps one bucket per event date from the window's first date on (net units,
//! net revenue, purchases containing it, purchase lines) and its latest attributes. A flush
//! recomputes only the dirty products (events since the last flush, or every product with
//! buckets when the date of `as_of` moved and the window slid), re-ranks only the categories
//! in which a revenue or membership changed by walking that category's ordered set, and
//! emits the documents whose content or rank changed, plus deletions for products that
//! left the window. Buckets older than the window are dropped, so memory follows the
//! window, not the history. `as_of` is expected not to move backwards within one run (it
//! does not under the wall and event clocks, and a fixed `as_of` is constant).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::calendar::epoch_day;
use super::event::{EventKind, Transaction, UNCATEGORIZED};
use super::money::Cents;

/// The product settings of `[views.products]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProductConfig {
    /// Calendar dates in the window, ending on the date of `as_of`.
    pub window_days: u32,
    /// `is_rising_star` when revenue per day is strictly above this (currency units).
    pub rising_star_revenue_per_day: f64,
}

impl Default for ProductConfig {
    fn default() -> Self {
        ProductConfig { window_days: 30, rising_star_revenue_per_day: 1000.0 }
    }
}

/// One document of `product_performance` (money in cents).
#[derive(Debug, Clone, PartialEq)]
pub struct ProductDoc {
    pub product_id: String,
    pub product_name: Option<String>,
    pub category: String,
    pub units_sold: i64,
    pub order_count: i64,
    pub total_revenue_cents: Cents,
    pub days_sold: i64,
    pub rank_in_category: i64,
    pub is_rising_star: bool,
    pub analysis_period_days: i64,
    pub analysis_date: DateTime<Utc>,
}

impl ProductDoc {
    /// total_revenue / units_sold, null when units_sold ≤ 0.
    pub fn avg_price(&self) -> Option<f64> {
        (self.units_sold > 0).then(|| self.total_revenue_cents as f64 / self.units_sold as f64 / 100.0)
    }

    /// total_revenue / days_sold, null when days_sold is 0.
    pub fn revenue_per_day(&self) -> Option<f64> {
        super::money::per(self.total_revenue_cents, self.days_sold)
    }

    /// total_revenue / 1000 + units_sold / 10.
    pub fn performance_score(&self) -> f64 {
        self.total_revenue_cents as f64 / 100_000.0 + self.units_sold as f64 / 10.0
    }

    pub fn trend_type(&self) -> Option<&'static str> {
        self.is_rising_star.then_some("rising_star")
    }
}

/// `revenue_per_day > threshold`, decided on exact cents.
pub fn is_rising_star(revenue_cents: Cents, days_sold: i64, threshold_units: f64) -> bool {
    days_sold > 0 && revenue_cents as i128 > (threshold_units * 100.0).round() as i128 * days_sold as i128
}

/// What changed in the view: documents to write and product ids to delete.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProductChanges {
    pub upserts: Vec<ProductDoc>,
    pub deletes: Vec<String>,
}

/// When an attribute was carried: (event time, arrival number); the later wins.
type Stamp = (DateTime<Utc>, u64);

/// The latest value of an attribute and when it was carried.
type Stamped = Option<(Stamp, String)>;

/// Keeps `carried` (a value and when it was carried) if it is at least as late as the slot's;
/// whether the value changed.
fn take_latest(slot: &mut Stamped, carried: Option<(Stamp, &str)>) -> bool {
    match (carried, slot.as_mut()) {
        (Some((stamp, v)), Some((s, old))) if stamp >= *s => {
            *s = stamp;
            // The same value again (the usual case): no copy.
            if old != v {
                v.clone_into(old);
                true
            } else {
                false
            }
        }
        (Some((stamp, v)), None) => {
            *slot = Some((stamp, v.to_owned()));
            true
        }
        _ => false,
    }
}

/// The attributes a line carries (name, category, subcategory, brand), stamped.
fn carried(line: &super::event::LineItem, stamp: Stamp) -> [Option<(Stamp, &str)>; 4] {
    [&line.product_name, &line.category, &line.subcategory, &line.brand].map(|a| a.as_deref().map(|v| (stamp, v)))
}

/// A product's figures on one date: what its lines of that date add to the view.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProductDay {
    /// Σ purchase quantity − Σ refund quantity.
    pub units: i64,
    /// Σ purchase line amounts − Σ refund line amounts, cents.
    pub revenue: Cents,
    /// Purchases containing the product.
    pub orders: i64,
    /// Purchase lines (a date with one counts in `days_sold`).
    pub purchase_lines: i64,
}

impl ProductDay {
    /// Adds another date's (or part's) figures.
    pub fn merge(&mut self, other: &ProductDay) {
        self.units += other.units;
        self.revenue += other.revenue;
        self.orders += other.orders;
        self.purchase_lines += other.purchase_lines;
    }
}

/// What line `i` of an event adds to its product's figures of the event's date.
fn line_figures(tx: &Transaction, i: usize) -> ProductDay {
    let line = &tx.items[i];
    match tx.kind {
        EventKind::Purchase => ProductDay {
            units: line.quantity,
            revenue: line.amount_cents(),
            // One order per purchase, however many lines name the product.
            orders: i64::from(!tx.items[..i].iter().any(|l| l.product_id == line.product_id)),
            purchase_lines: 1,
        },
        EventKind::Refund => {
            ProductDay { units: -line.quantity, revenue: -line.amount_cents(), ..ProductDay::default() }
        }
    }
}

/// What a part (the state of some input partitions) adds to the products between two
/// flushes: net figures per (product, date) and, per product, the latest attributes its
/// lines carried. Additive, so the owner of the products view applies every part's
/// ([`ProductState::apply_deltas`]) and writes what one state holding every event would
/// (scale-out, docs/DESIGN.md). `arrival` settles ties of event time; across partitions it
/// must order arrivals the same way everywhere (e.g. partition and offset).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProductDeltas {
    pub products: BTreeMap<Box<str>, ProductDelta>,
}

/// One product's share of [`ProductDeltas`].
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProductDelta {
    /// Net figures per date.
    pub days: BTreeMap<i32, ProductDay>,
    /// The latest value of each attribute (name, category, subcategory, brand) its lines
    /// carried, with when.
    pub attributes: [Stamped; 4],
}

impl ProductDelta {
    fn take_latest(&mut self, carried: [Option<(Stamp, &str)>; 4]) {
        for (slot, value) in self.attributes.iter_mut().zip(carried) {
            take_latest(slot, value);
        }
    }
}

impl ProductDeltas {
    pub fn add(&mut self, tx: &Transaction, arrival: u64) {
        let day = epoch_day(tx.date());
        for (i, line) in tx.items.iter().enumerate() {
            // Looked up by &str: the owned key is made only for a product new to this flush.
            let id = line.product_id.as_str();
            if !self.products.contains_key(id) {
                self.products.insert(id.into(), ProductDelta::default());
            }
            let p = self.products.get_mut(id).expect("just inserted");
            p.days.entry(day).or_default().merge(&line_figures(tx, i));
            p.take_latest(carried(line, (tx.timestamp, arrival)));
        }
    }

    /// Adds another part's: the owner gathers every part's before applying them at once, so
    /// that an attribute two parts disagree on changes only if its latest value does.
    pub fn merge(&mut self, other: ProductDeltas) {
        for (id, theirs) in other.products {
            let ours = self.products.entry(id).or_default();
            for (day, figures) in theirs.days {
                ours.days.entry(day).or_default().merge(&figures);
            }
            ours.take_latest(theirs.attributes.each_ref().map(|a| a.as_ref().map(|(s, v)| (*s, v.as_str()))));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.products.is_empty()
    }
}

/// A product's attributes as the operational database holds them (for a product a repair
/// brings in that no event named).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProductAttributes {
    pub name: Option<String>,
    pub category: Option<String>,
    pub subcategory: Option<String>,
    pub brand: Option<String>,
}

/// What the state holds for one product.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Product {
    pub name: Stamped,
    pub category: Stamped,
    pub subcategory: Stamped,
    pub brand: Stamped,
    days: BTreeMap<i32, ProductDay>,
    dirty: bool,
    /// In the view as of the last flush: (category, revenue, rank).
    shown: Option<(String, Cents, i64)>,
}

impl Product {
    pub fn category_or_default(&self) -> &str {
        self.category.as_ref().map_or(UNCATEGORIZED, |(_, c)| c.as_str())
    }
}

/// A product's place in its category: revenue descending, then product id.
type RankKey = (Reverse<Cents>, Box<str>);

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ProductState {
    config: ProductConfig,
    products: super::FastIndexMap<Box<str>, Product>,
    dirty: Vec<u32>,
    arrivals: u64,
    /// The first date of the window at the last flush: older buckets are not kept.
    floor: Option<i32>,
    last_as_of_day: Option<i32>,
    /// Products in the view per category, ordered by revenue descending then product id.
    ranking: super::FastMap<String, BTreeSet<RankKey>>,
    /// Event lines dated before the window when they arrived.
    late_lines: u64,
    /// Products whose rank moved (others passed them) while rank-only rewrites were
    /// deferred: written with their rank at the next flush that takes them. Not in
    /// snapshots: a restore's converging flush rewrites every document.
    #[serde(skip)]
    rank_pending: BTreeSet<u32>,
}

impl ProductState {
    pub fn new(config: ProductConfig) -> Self {
        ProductState {
            config,
            products: Default::default(),
            dirty: Vec::new(),
            arrivals: 0,
            floor: None,
            last_as_of_day: None,
            ranking: Default::default(),
            late_lines: 0,
            rank_pending: BTreeSet::new(),
        }
    }

    pub fn product(&self, id: &str) -> Option<&Product> {
        self.products.get(id)
    }

    /// The dim_product row of `product_id` under `key`, with its latest attributes.
    pub fn dim_row(&self, product_id: String, key: i32) -> Option<super::warehouse::DimProduct> {
        let p = self.product(&product_id)?;
        let latest = |slot: &Option<(_, String)>| slot.as_ref().map(|(_, v)| v.clone());
        Some(super::warehouse::DimProduct {
            product_key: key,
            product_name: latest(&p.name),
            category: p.category_or_default().to_owned(),
            subcategory: latest(&p.subcategory),
            brand: latest(&p.brand),
            product_id,
        })
    }

    pub fn product_count(&self) -> usize {
        self.products.len()
    }

    /// Day buckets held over all products (memory follows the window, not the history).
    pub fn buckets_held(&self) -> usize {
        self.products.values().map(|p| p.days.len()).sum()
    }

    /// Lines that arrived dated before the window: they updated the product's attributes
    /// but no bucket.
    pub fn late_lines(&self) -> u64 {
        self.late_lines
    }

    /// The first date the window holds buckets from (`None` before the first flush).
    pub fn first_day(&self) -> Option<i32> {
        self.floor
    }

    /// Every product's buckets of the dates in `days`.
    pub fn days_in(&self, days: std::ops::Range<i32>) -> impl Iterator<Item = (&str, i32, ProductDay)> + '_ {
        let range = days.clone();
        self.products.iter().flat_map(move |(id, p)| p.days.range(range.clone()).map(move |(d, b)| (&**id, *d, *b)))
    }

    /// Sets a product's figures of one date outright (a reconciliation repair; a zero bucket
    /// means no line that date). A product no event named yet takes `attributes`, stamped
    /// as older than any event of that date. Returns the old bucket, or `None` when the date
    /// is older than the window or the bucket is already equal.
    pub fn set_day(
        &mut self,
        id: &str,
        day: i32,
        figures: ProductDay,
        attributes: &ProductAttributes,
    ) -> Option<ProductDay> {
        if self.floor.is_some_and(|f| day < f) {
            return None;
        }
        if figures == ProductDay::default() && self.products.get(id).is_none() {
            return None;
        }
        let idx = self.ensure(id, attributes, day);
        let p = &mut self.products[idx];
        let old = p.days.get(&day).copied().unwrap_or_default();
        if old == figures {
            return None;
        }
        if figures == ProductDay::default() {
            p.days.remove(&day);
        } else {
            p.days.insert(day, figures);
        }
        if !p.dirty {
            p.dirty = true;
            self.dirty.push(idx as u32);
        }
        Some(old)
    }

    /// The index of product `id`, added with `attributes` when no event named it (stamped
    /// as older than any event of date `day`, so the next event's attributes win).
    pub fn ensure(&mut self, id: &str, attributes: &ProductAttributes, day: i32) -> usize {
        if let Some(idx) = self.products.get_index_of(id) {
            return idx;
        }
        let stamp = (super::calendar::day_start(day), 0);
        let stamped = |v: &Option<String>| v.clone().map(|v| (stamp, v));
        let p = Product {
            name: stamped(&attributes.name),
            category: stamped(&attributes.category),
            subcategory: stamped(&attributes.subcategory),
            brand: stamped(&attributes.brand),
            ..Product::default()
        };
        self.products.insert_full(id.into(), p).0
    }

    /// Applies an event's lines; returns the products whose attributes (name, category,
    /// subcategory, brand) changed.
    pub fn apply<'t>(&mut self, tx: &'t Transaction) -> Vec<&'t str> {
        let mut renamed = Vec::new();
        self.arrivals += 1;
        let stamp = (tx.timestamp, self.arrivals);
        let day = epoch_day(tx.date());
        for (i, line) in tx.items.iter().enumerate() {
            if self.apply_line(&line.product_id, carried(line, stamp), day, &line_figures(tx, i)) {
                renamed.push(line.product_id.as_str());
            }
        }
        renamed
    }

    /// Applies the figures and attributes of every part since the last flush, gathered into
    /// one ([`ProductDeltas::merge`]; the owner of the view); returns the products whose
    /// attributes changed.
    pub fn apply_deltas(&mut self, deltas: &ProductDeltas) -> Vec<String> {
        let mut renamed = Vec::new();
        for (id, p) in &deltas.products {
            let carried = p.attributes.each_ref().map(|a| a.as_ref().map(|(s, v)| (*s, v.as_str())));
            if self.apply_line(id, carried, i32::MIN, &ProductDay::default()) {
                renamed.push(id.to_string());
            }
            for (&day, figures) in &p.days {
                self.apply_line(id, [None; 4], day, figures);
            }
        }
        renamed
    }

    /// One line's (or a part's) attributes, stamped, and its figures of date `day` (none
    /// when `day` is `i32::MIN`); whether an attribute changed.
    fn apply_line(&mut self, id: &str, carried: [Option<(Stamp, &str)>; 4], day: i32, figures: &ProductDay) -> bool {
        let [name, category, subcategory, brand] = carried;
        let idx = match self.products.get_index_of(id) {
            Some(idx) => idx,
            None => self.products.insert_full(id.into(), Product::default()).0,
        };
        let p = &mut self.products[idx];
        let mut changed = take_latest(&mut p.name, name);
        changed |= take_latest(&mut p.category, category);
        let described = take_latest(&mut p.subcategory, subcategory);
        let renamed = changed | take_latest(&mut p.brand, brand) | described;
        if day != i32::MIN {
            if self.floor.is_none_or(|f| day >= f) {
                p.days.entry(day).or_default().merge(figures);
                changed = true;
            } else {
                self.late_lines += 1;
            }
        }
        if changed && !p.dirty {
            p.dirty = true;
            self.dirty.push(idx as u32);
        }
        renamed
    }

    /// Documents that changed since the last flush, as of `as_of`; with `full`, every
    /// document of the view.
    pub fn flush(&mut self, as_of: DateTime<Utc>, full: bool) -> ProductChanges {
        self.flush_ranks(as_of, full, true)
    }

    /// Products waiting for a rank-only rewrite.
    pub fn ranks_pending(&self) -> usize {
        self.rank_pending.len()
    }

    /// As [`ProductState::flush`]; without `ranks`, documents whose only change is their
    /// rank (another product passed them) wait for a flush with `ranks` (or `full`), which
    /// writes each once with its rank then. A document written for its own change always
    /// carries its current rank.
    pub fn flush_ranks(&mut self, as_of: DateTime<Utc>, full: bool, ranks: bool) -> ProductChanges {
        let ranks = ranks || full;
        let window = self.config.window_days.max(1) as i32;
        let last = epoch_day(as_of.date_naive());
        let first = last - window + 1;
        let mut candidates = std::mem::take(&mut self.dirty);
        if self.last_as_of_day != Some(last) || full {
            // The window slid: drop old buckets; every product with buckets may have changed.
            for (i, p) in self.products.values_mut().enumerate() {
                p.days = p.days.split_off(&first);
                if !p.days.is_empty() || p.shown.is_some() {
                    candidates.push(i as u32);
                }
            }
            candidates.sort_unstable();
            candidates.dedup();
            self.floor = Some(first);
            self.last_as_of_day = Some(last);
        }

        // Recompute the candidates and move them in the category rankings.
        let mut computed: Vec<(u32, Option<ProductDoc>)> = Vec::with_capacity(candidates.len());
        let mut touched_categories: BTreeSet<String> = BTreeSet::new();
        for idx in candidates {
            let (id, p) = self.products.get_index_mut(idx as usize).expect("product index");
            p.dirty = false;
            let doc = summarize(id, p, first, last, &self.config, as_of);
            let now = doc.as_ref().map(|d| (d.category.clone(), d.total_revenue_cents));
            let before = p.shown.as_ref().map(|(c, r, _)| (c.clone(), *r));
            if now != before {
                if let Some((c, r)) = &before {
                    self.ranking.get_mut(c).map(|set| set.remove(&(Reverse(*r), id.clone())));
                    touched_categories.insert(c.clone());
                }
                if let Some((c, r)) = &now {
                    self.ranking.entry(c.clone()).or_default().insert((Reverse(*r), id.clone()));
                    touched_categories.insert(c.clone());
                }
            }
            computed.push((idx, doc));
        }

        // The deferred rank-only rewrites are due: their categories are walked too.
        if ranks {
            for idx in std::mem::take(&mut self.rank_pending) {
                let shown = self.products.get_index(idx as usize).and_then(|(_, p)| p.shown.as_ref());
                touched_categories.extend(shown.map(|s| s.0.clone()));
            }
        }
        // New ranks, only in the categories where a revenue or a membership changed.
        let mut new_rank: HashMap<&str, i64> = HashMap::new();
        for c in &touched_categories {
            for (i, (_, id)) in self.ranking.get(c).into_iter().flatten().enumerate() {
                new_rank.insert(id, i as i64 + 1);
            }
        }

        let mut out = ProductChanges::default();
        let mut written: std::collections::HashSet<u32> = std::collections::HashSet::new();
        for (idx, doc) in computed {
            let (id, p) = self.products.get_index_mut(idx as usize).expect("product index");
            written.insert(idx);
            match doc {
                Some(mut doc) => {
                    doc.rank_in_category = new_rank.get(&**id).copied().or(p.shown.as_ref().map(|s| s.2)).unwrap_or(1);
                    p.shown = Some((doc.category.clone(), doc.total_revenue_cents, doc.rank_in_category));
                    out.upserts.push(doc);
                }
                None => {
                    if p.shown.take().is_some() {
                        out.deletes.push(id.to_string());
                    }
                }
            }
        }
        // Documents whose only change is their rank; on a full flush, every document.
        let mut rank_only: BTreeMap<usize, i64> = BTreeMap::new();
        for (id, rank) in &new_rank {
            if let Some((idx, _, p)) = self.products.get_full(*id) {
                if !written.contains(&(idx as u32)) && p.shown.as_ref().is_some_and(|s| s.2 != *rank) {
                    if ranks {
                        rank_only.insert(idx, *rank);
                    } else {
                        self.rank_pending.insert(idx as u32);
                    }
                }
            }
        }
        if full {
            for (idx, p) in self.products.values().enumerate() {
                if let (false, Some(shown)) = (written.contains(&(idx as u32)), &p.shown) {
                    rank_only.entry(idx).or_insert(shown.2);
                }
            }
        }
        for (idx, rank) in rank_only {
            let (id, p) = self.products.get_index_mut(idx).expect("product index");
            if let Some(mut doc) = summarize(id, p, first, last, &self.config, as_of) {
                doc.rank_in_category = rank;
                p.shown = Some((doc.category.clone(), doc.total_revenue_cents, rank));
                out.upserts.push(doc);
            }
        }
        out
    }
}

/// The product's document over the dates `first..=last`, or `None` when it has no line in
/// the window. `rank_in_category` is filled in by the caller.
fn summarize(
    id: &str,
    p: &Product,
    first: i32,
    last: i32,
    config: &ProductConfig,
    as_of: DateTime<Utc>,
) -> Option<ProductDoc> {
    let mut any = false;
    let mut total = ProductDay::default();
    let mut days_sold = 0;
    for (_, b) in p.days.range(first..=last) {
        any = true;
        total.units += b.units;
        total.revenue += b.revenue;
        total.orders += b.orders;
        if b.purchase_lines > 0 {
            days_sold += 1;
        }
    }
    any.then(|| ProductDoc {
        product_id: id.to_owned(),
        product_name: p.name.as_ref().map(|(_, n)| n.clone()),
        category: p.category_or_default().to_owned(),
        units_sold: total.units,
        order_count: total.orders,
        total_revenue_cents: total.revenue,
        days_sold,
        rank_in_category: 0,
        is_rising_star: is_rising_star(total.revenue, days_sold, config.rising_star_revenue_per_day),
        analysis_period_days: i64::from(config.window_days),
        analysis_date: as_of,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::domain::testgen::{arrivals, split_run, steps, Split};

    /// Writes the changes into `view`; returns the ids written. `analysis_date` is left out
    /// of the content: one state rewrites a product whose attribute changed and changed back
    /// between two flushes with the same content, which the owner (seeing only the latest
    /// value) rightly does not.
    fn write(view: &mut BTreeMap<String, ProductDoc>, changes: ProductChanges) -> BTreeSet<String> {
        let mut written: BTreeSet<String> = changes.deletes.iter().cloned().collect();
        for id in changes.deletes {
            view.remove(&id);
        }
        for mut doc in changes.upserts {
            written.insert(doc.product_id.clone());
            doc.analysis_date = DateTime::<Utc>::MIN_UTC;
            view.insert(doc.product_id.clone(), doc);
        }
        written
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// Events split over parts (as input partitions split them over instances), each
        /// part summing its events' figures and latest attributes between flushes, one owner
        /// gathering every part's: at every flush the view the owner writes equals the one a
        /// state applying every event writes, and the owner writes no document it does not.
        #[test]
        fn parts_summed_by_one_owner_write_what_one_state_writes(steps in steps(150, 40), parts in 1usize..5, final_hours in 0i16..72) {
            let config = ProductConfig { window_days: 3, ..ProductConfig::default() };
            let (mut one, mut owner) = (ProductState::new(config.clone()), ProductState::new(config));
            let mut deltas = vec![ProductDeltas::default(); parts];
            let (mut by_one, mut by_owner) = (BTreeMap::new(), BTreeMap::new());
            split_run(&arrivals(&steps), parts, final_hours, |step| {
                match step {
                    Split::Event { part, tx, arrival } => {
                        one.apply(tx);
                        deltas[part].add(tx, arrival);
                    }
                    Split::Flush { as_of, full } => {
                        let by_one_now = write(&mut by_one, one.flush(as_of, full));
                        let mut gathered = ProductDeltas::default();
                        for d in deltas.iter_mut() {
                            gathered.merge(std::mem::take(d));
                        }
                        owner.apply_deltas(&gathered);
                        let by_owner_now = write(&mut by_owner, owner.flush(as_of, full));
                        prop_assert_eq!(&by_one, &by_owner, "as of {}", as_of);
                        prop_assert!(by_owner_now.is_subset(&by_one_now), "the owner wrote more: {:?} vs {:?}", by_owner_now, by_one_now);
                    }
                }
                Ok(())
            })?;
        }
    }
}
