//! Reconciliation with the operational database (PostgreSQL), the pure part: the state's
//! figures at a cut, their comparison with the database's, and what a repair changes.
//!
//! **The cut** is a UTC date: "closed" means every event dated before its midnight. The
//! database gives per customer (purchases, net money, first and last purchase) and per day
//! (purchases, refunds, money) over the rows dated before the cut; the state gives the same
//! figures while it keeps consuming. Customers' figures in the state are all-time, so the
//! state keeps [`OpenEvents`]: the events dated on or after the *horizon* (midnight of the
//! newest event's date minus [`OPEN_DAYS`]); subtracting those dated on or after the cut
//! gives the figures at the cut, for any cut not older than the horizon. Days are closed
//! buckets of the daily trend series, so they are compared as they are.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use super::calendar::epoch_day;
use super::money::Cents;
use super::product::{ProductAttributes, ProductDay};
use super::trends::{period_date, Bucket, Granularity, Period};
use super::{EventKind, FastMap, FastSet};

/// How many dates before the newest event's date the open events cover: a cut may be at most
/// this old.
pub const OPEN_DAYS: u32 = 3;

/// Microseconds of the midnight that starts day number `day` (PostgreSQL's precision).
pub fn day_start_us(day: i32) -> i64 {
    i64::from(day) * 86_400_000_000
}

/// A customer's figures over the events dated before a cut.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerFigures {
    pub purchases: i64,
    /// Σ purchase total − Σ refund total, cents.
    pub monetary: Cents,
    /// Event times of the first and last purchase, microseconds since the epoch.
    pub first_purchase_us: Option<i64>,
    pub last_purchase_us: Option<i64>,
}

impl CustomerFigures {
    pub fn is_zero(&self) -> bool {
        *self == CustomerFigures::default()
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Open {
    customer: u32,
    at_us: i64,
    /// +total for a purchase, −total for a refund.
    cents: Cents,
    purchase: bool,
}

/// The applied events dated on or after the horizon (see the module doc).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct OpenEvents {
    horizon: Option<i32>,
    events: Vec<Open>,
    /// For every customer with an open purchase: the last purchase dated before the horizon.
    before: FastMap<u32, Option<i64>>,
}

/// What the open events dated on or after a cut add to one customer.
#[derive(Debug, Clone, Copy, Default)]
pub struct AfterCut {
    pub purchases: i64,
    pub cents: Cents,
    /// The first and last open purchase dated on or after the cut.
    pub first_us: Option<i64>,
    pub last_us: Option<i64>,
    /// The last open purchase dated before the cut.
    pub last_before_us: Option<i64>,
}

impl OpenEvents {
    /// The day number of the horizon: cuts must not be older. `None` before any event.
    pub fn horizon(&self) -> Option<i32> {
        self.horizon
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Records an applied event of customer index `customer`; `prior_last` is the customer's
    /// last purchase before this event (`None` when it had none).
    pub fn record(
        &mut self,
        customer: u32,
        at: DateTime<Utc>,
        kind: EventKind,
        total: Cents,
        prior_last: Option<DateTime<Utc>>,
    ) {
        let day = epoch_day(at.date_naive());
        let wanted = day - OPEN_DAYS as i32;
        if self.horizon.is_none_or(|h| wanted > h) {
            self.advance(wanted);
        }
        let horizon = self.horizon.unwrap_or(wanted);
        let at_us = at.timestamp_micros();
        let purchase = kind == EventKind::Purchase;
        if day < horizon {
            // Late: it only moves a kept "last purchase before the horizon".
            if purchase {
                if let Some(b) = self.before.get_mut(&customer) {
                    *b = (*b).max(Some(at_us));
                }
            }
            return;
        }
        if purchase && !self.before.contains_key(&customer) {
            // No open purchase yet, so every purchase so far is dated before the horizon.
            self.before.insert(customer, prior_last.map(|t| t.timestamp_micros()));
        }
        let cents = if purchase { total } else { -total };
        self.events.push(Open { customer, at_us, cents, purchase });
    }

    /// Moves the horizon forward, folding the events it passes into `before`.
    fn advance(&mut self, horizon: i32) {
        self.horizon = Some(horizon);
        let h_us = day_start_us(horizon);
        let before = &mut self.before;
        self.events.retain(|e| {
            if e.at_us >= h_us {
                return true;
            }
            if e.purchase {
                if let Some(b) = before.get_mut(&e.customer) {
                    *b = (*b).max(Some(e.at_us));
                }
            }
            false
        });
        let open: FastSet<u32> = self.events.iter().filter(|e| e.purchase).map(|e| e.customer).collect();
        before.retain(|c, _| open.contains(c));
    }

    /// The last purchase dated before the horizon of a customer with open purchases; `None`
    /// when the customer has no open purchase (all its purchases are older).
    pub fn last_before_horizon(&self, customer: u32) -> Option<Option<i64>> {
        self.before.get(&customer).copied()
    }

    /// Per customer with open events: what those events add relative to `cutoff_us`.
    pub fn after(&self, cutoff_us: i64) -> FastMap<u32, AfterCut> {
        let mut out: FastMap<u32, AfterCut> = FastMap::default();
        for e in &self.events {
            let a = out.entry(e.customer).or_default();
            if e.at_us >= cutoff_us {
                a.cents += e.cents;
                if e.purchase {
                    a.purchases += 1;
                    a.first_us = Some(a.first_us.map_or(e.at_us, |f| f.min(e.at_us)));
                    a.last_us = a.last_us.max(Some(e.at_us));
                }
            } else if e.purchase {
                a.last_before_us = a.last_before_us.max(Some(e.at_us));
            }
        }
        out
    }

    /// After a repair at `cutoff_us` of the customers in `last_before` (index → its last
    /// purchase before the cut, from the database): their open events dated before the cut
    /// are replaced by the database's figures, so they are dropped (one pass for all), and
    /// that last purchase is kept for those with an open purchase left.
    pub fn repaired(&mut self, cutoff_us: i64, last_before: &FastMap<u32, Option<i64>>) {
        self.events.retain(|e| e.at_us >= cutoff_us || !last_before.contains_key(&e.customer));
        let open: FastSet<u32> = self
            .events
            .iter()
            .filter(|e| e.purchase && last_before.contains_key(&e.customer))
            .map(|e| e.customer)
            .collect();
        for (&customer, &last) in last_before {
            if open.contains(&customer) {
                self.before.insert(customer, last);
            } else {
                self.before.remove(&customer);
            }
        }
    }
}

/// The state's figures at a cut.
#[derive(Debug, Clone, Default)]
pub struct Cut {
    pub cutoff: NaiveDate,
    /// Customers with any figure before the cut.
    pub customers: FastMap<Box<str>, CustomerFigures>,
    /// Closed days compared: `first_day..cutoff`, each with its bucket (absent: no events).
    pub first_day: i32,
    pub days: BTreeMap<i32, Bucket>,
    /// Weekly and monthly periods compared, from the first one the state keeps to the one
    /// holding the day before `first_day`: each period's part dated before `first_day`
    /// (the days from there on are compared one by one, and a day's repair moves its week
    /// and month). A granularity is absent when the state could not cut it (see
    /// [`super::trends::TrendState::periods_before`]).
    pub periods: Vec<(Granularity, Period, BTreeMap<Period, Bucket>)>,
    /// product_performance buckets compared: the dates `product_first_day..cutoff`, per
    /// (product, date) with lines.
    pub product_first_day: i32,
    pub product_days: FastMap<(Box<str>, i32), ProductDay>,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CutError {
    #[error("cutoff {cutoff} is older than the open-event horizon {horizon}: the state can only cut at most {OPEN_DAYS} days before its newest event")]
    BeforeHorizon { cutoff: NaiveDate, horizon: NaiveDate },
}

/// What kind of disagreement one customer or day shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MismatchKind {
    /// The database has more purchases than the state: events missing from the stream.
    CustomerMissingInStream,
    /// The state has purchases the database lacks.
    CustomerMissingInPostgres,
    /// Same purchases, different money.
    CustomerAmount,
    /// Same purchases and money, different first or last purchase time.
    CustomerPurchaseTime,
    /// A closed day's purchase or refund count differs.
    DayCount,
    /// Same counts, different money.
    DayRevenue,
    /// A weekly or monthly period's count differs (its part older than the days compared).
    PeriodCount,
    /// Same counts, different money.
    PeriodRevenue,
    /// A product's units, revenue, orders or lines of one date in the window differ.
    ProductDay,
    /// A purchase or refund line the database holds has no fact.
    FactMissingInStream,
    /// A fact whose line the database does not hold.
    FactMissingInPostgres,
    /// A fact whose figures differ from the database's line.
    FactDiffers,
}

impl MismatchKind {
    pub const ALL: [MismatchKind; 12] = [
        MismatchKind::CustomerMissingInStream,
        MismatchKind::CustomerMissingInPostgres,
        MismatchKind::CustomerAmount,
        MismatchKind::CustomerPurchaseTime,
        MismatchKind::DayCount,
        MismatchKind::DayRevenue,
        MismatchKind::PeriodCount,
        MismatchKind::PeriodRevenue,
        MismatchKind::ProductDay,
        MismatchKind::FactMissingInStream,
        MismatchKind::FactMissingInPostgres,
        MismatchKind::FactDiffers,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MismatchKind::CustomerMissingInStream => "customer_missing_in_stream",
            MismatchKind::CustomerMissingInPostgres => "customer_missing_in_postgres",
            MismatchKind::CustomerAmount => "customer_amount",
            MismatchKind::CustomerPurchaseTime => "customer_purchase_time",
            MismatchKind::DayCount => "day_count",
            MismatchKind::DayRevenue => "day_revenue",
            MismatchKind::PeriodCount => "period_count",
            MismatchKind::PeriodRevenue => "period_revenue",
            MismatchKind::ProductDay => "product_day",
            MismatchKind::FactMissingInStream => "fact_missing_in_stream",
            MismatchKind::FactMissingInPostgres => "fact_missing_in_postgres",
            MismatchKind::FactDiffers => "fact_differs",
        }
    }
}

pub fn classify_customer(stream: &CustomerFigures, db: &CustomerFigures) -> Option<MismatchKind> {
    use std::cmp::Ordering::*;
    match db.purchases.cmp(&stream.purchases) {
        Greater => Some(MismatchKind::CustomerMissingInStream),
        Less => Some(MismatchKind::CustomerMissingInPostgres),
        Equal if db.monetary != stream.monetary => Some(MismatchKind::CustomerAmount),
        Equal if db.first_purchase_us != stream.first_purchase_us || db.last_purchase_us != stream.last_purchase_us => {
            Some(MismatchKind::CustomerPurchaseTime)
        }
        Equal => None,
    }
}

pub fn classify_day(stream: &Bucket, db: &Bucket) -> Option<MismatchKind> {
    if stream.purchases != db.purchases || stream.refunds != db.refunds {
        Some(MismatchKind::DayCount)
    } else if stream.purchase_cents != db.purchase_cents || stream.refund_cents != db.refund_cents {
        Some(MismatchKind::DayRevenue)
    } else {
        None
    }
}

/// One disagreement, as the report shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Mismatch {
    pub kind: MismatchKind,
    /// The customer id, or the date `YYYY-MM-DD`.
    pub key: String,
    pub stream: serde_json::Value,
    pub postgres: serde_json::Value,
}

/// The running count of a comparison: what a report says, and what a repair needs.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    pub customers_checked: u64,
    /// Customers the database had rows of (counted by the caller that streams them).
    pub customers_in_postgres: u64,
    pub days_checked: u64,
    pub periods_checked: u64,
    pub product_days_checked: u64,
    pub facts_checked: u64,
    pub counts: BTreeMap<MismatchKind, u64>,
    /// Σ over customers of the database's purchases the state lacks, and the reverse.
    pub purchases_missing_in_stream: i64,
    pub purchases_missing_in_postgres: i64,
    /// The first `sample_limit` mismatches.
    pub samples: Vec<Mismatch>,
    pub sample_limit: usize,
    /// What a repair sets: the database's figures of every mismatch.
    pub fixes: Fixes,
    /// Where in `fixes.facts` each sale_id's put is.
    put_at: FastMap<String, usize>,
}

/// What a repair changes in the state (the database wins), one entry per mismatch.
#[derive(Debug, Clone, Default)]
pub struct Fixes {
    /// Each customer's figures before the cut.
    pub customers: Vec<(String, CustomerFigures)>,
    /// Each closed day's bucket.
    pub days: Vec<(i32, Bucket)>,
    /// Each weekly or monthly period's part dated before `first_day`, the first day
    /// compared (set by [`Tally::days_of`]).
    pub periods: Vec<(Granularity, Period, Bucket)>,
    pub first_day: Option<i32>,
    /// Each product's bucket of one date (zero: no line), with its attributes in the
    /// database (for a product no event named).
    pub product_days: Vec<(String, i32, ProductDay, ProductAttributes)>,
    /// Facts to add or replace (the database's line) and to remove.
    pub facts: Vec<FactFix>,
}

impl Fixes {
    pub fn is_empty(&self) -> bool {
        self.customers.is_empty()
            && self.days.is_empty()
            && self.periods.is_empty()
            && self.product_days.is_empty()
            && self.facts.is_empty()
    }
}

/// One line of a purchase or refund: as the database holds it, or as a fact holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FactLine {
    pub kind: EventKind,
    /// `<transaction_id>:<line index>`.
    pub sale_id: String,
    pub transaction_id: String,
    pub customer_id: String,
    pub product_id: String,
    /// Milliseconds since the epoch (a fact's precision).
    pub at_ms: i64,
    pub quantity: i64,
    pub unit_price_cents: Cents,
    pub discount_cents: Cents,
    pub payment_method: Option<String>,
}

impl FactLine {
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": self.kind.as_str(),
            "transaction_id": self.transaction_id,
            "customer_id": self.customer_id,
            "product_id": self.product_id,
            "timestamp": instant_json(Some(self.at_ms * 1000)),
            "quantity": self.quantity,
            "unit_price": super::money::to_units(self.unit_price_cents),
            "discount_amount": super::money::to_units(self.discount_cents),
            "payment_method": self.payment_method,
        })
    }
}

/// A fact a repair adds, replaces or removes.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // a repair's few fixes, short-lived: not worth a box each
pub enum FactFix {
    /// Write this line as a fact (in the table of its kind), after removing the fact of the
    /// same sale_id from the table `replaces` names. `location_key` is the replaced fact's
    /// (the database does not record where a sale happened; 0 for a new one).
    Put { line: FactLine, location_key: i32, replaces: Option<EventKind>, attributes: ProductAttributes },
    /// Remove the fact `sale_id` from the table of `kind`.
    Remove { kind: EventKind, sale_id: String },
}

impl Tally {
    pub fn new(sample_limit: usize) -> Self {
        Tally { sample_limit, ..Tally::default() }
    }

    pub fn mismatches(&self) -> u64 {
        self.counts.values().sum()
    }

    fn count(&mut self, kind: MismatchKind, key: String, stream: serde_json::Value, db: serde_json::Value) {
        *self.counts.entry(kind).or_default() += 1;
        if self.samples.len() < self.sample_limit {
            self.samples.push(Mismatch { kind, key, stream, postgres: db });
        }
    }

    /// Compares one customer; an absent side counts as all zeros.
    pub fn customer(&mut self, id: &str, stream: Option<&CustomerFigures>, db: Option<&CustomerFigures>) {
        let (s, d) = (stream.copied().unwrap_or_default(), db.copied().unwrap_or_default());
        self.customers_checked += 1;
        let Some(kind) = classify_customer(&s, &d) else {
            return;
        };
        let diff = d.purchases - s.purchases;
        self.purchases_missing_in_stream += diff.max(0);
        self.purchases_missing_in_postgres += (-diff).max(0);
        self.count(kind, id.to_owned(), customer_json(&s), customer_json(&d));
        self.fixes.customers.push((id.to_owned(), d));
    }

    /// Compares one closed day; an absent side counts as no events.
    pub fn day(&mut self, day: i32, stream: Option<&Bucket>, db: Option<&Bucket>) {
        let (s, d) = (stream.copied().unwrap_or_default(), db.copied().unwrap_or_default());
        self.days_checked += 1;
        let Some(kind) = classify_day(&s, &d) else {
            return;
        };
        let date = super::calendar::date_of(day).to_string();
        self.count(kind, date, day_json(&s), day_json(&d));
        self.fixes.days.push((day, d));
    }

    /// Compares the part of a weekly or monthly period dated before the days compared.
    pub fn period(&mut self, g: Granularity, p: Period, stream: Option<&Bucket>, db: Option<&Bucket>) {
        let (s, d) = (stream.copied().unwrap_or_default(), db.copied().unwrap_or_default());
        self.periods_checked += 1;
        let Some(kind) = classify_day(&s, &d) else {
            return;
        };
        let kind = if kind == MismatchKind::DayCount { MismatchKind::PeriodCount } else { MismatchKind::PeriodRevenue };
        self.count(kind, period_key(g, p), day_json(&s), day_json(&d));
        self.fixes.periods.push((g, p, d));
    }

    /// Compares the closed days of a cut with the database's.
    pub fn days_of(&mut self, cut: &Cut, db: &BTreeMap<i32, Bucket>) {
        self.fixes.first_day = Some(cut.first_day);
        for day in cut.first_day..epoch_day(cut.cutoff) {
            self.day(day, cut.days.get(&day), db.get(&day));
        }
    }

    /// Compares a cut's periods of one granularity with the database's (same keys).
    pub fn periods_of(&mut self, g: Granularity, stream: &BTreeMap<Period, Bucket>, db: &BTreeMap<Period, Bucket>) {
        let periods: std::collections::BTreeSet<Period> = stream.keys().chain(db.keys()).copied().collect();
        for p in periods {
            self.period(g, p, stream.get(&p), db.get(&p));
        }
    }

    /// Compares a cut's product buckets (taken out of it) with the database's.
    pub fn product_days_of(
        &mut self,
        stream: &mut FastMap<(Box<str>, i32), ProductDay>,
        mut db: BTreeMap<(String, i32), (ProductDay, ProductAttributes)>,
    ) {
        let mut stream: Vec<_> = stream.drain().collect();
        stream.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for ((id, day), figures) in stream {
            let theirs = db.remove(&(id.to_string(), day));
            self.product_day(&id, day, Some(&figures), theirs.as_ref());
        }
        for ((id, day), theirs) in db {
            self.product_day(&id, day, None, Some(&theirs));
        }
    }

    /// Compares a product's bucket of one date in the window.
    pub fn product_day(
        &mut self,
        id: &str,
        day: i32,
        stream: Option<&ProductDay>,
        db: Option<&(ProductDay, ProductAttributes)>,
    ) {
        let s = stream.copied().unwrap_or_default();
        let (d, attributes) = db.cloned().unwrap_or_default();
        self.product_days_checked += 1;
        if s == d {
            return;
        }
        let key = format!("{id}@{}", super::calendar::date_of(day));
        self.count(MismatchKind::ProductDay, key, product_day_json(&s), product_day_json(&d));
        self.fixes.product_days.push((id.to_owned(), day, d, attributes));
    }

    /// Compares the facts of some customers with the database's lines of the same customers
    /// (both dated before the cut), by `sale_id`: `stored` with the location key each has.
    ///
    /// Returns the (product, day) buckets of the lines that differ: there the product
    /// figures may have hidden other differences (a lost line and an extra one alike), so
    /// the caller compares the facts of every customer with a line there too.
    pub fn facts(
        &mut self,
        db: Vec<(FactLine, ProductAttributes)>,
        stored: Vec<(FactLine, i32)>,
    ) -> Vec<(String, i32)> {
        let mut touched = Vec::new();
        let mut touch = |line: &FactLine| {
            let day = DateTime::from_timestamp_millis(line.at_ms).map_or(0, |t| epoch_day(t.date_naive()));
            touched.push((line.product_id.clone(), day));
        };
        let mut stored: FastMap<String, (FactLine, i32)> =
            stored.into_iter().map(|(f, location)| (f.sale_id.clone(), (f, location))).collect();
        for (line, attributes) in db {
            self.facts_checked += 1;
            match stored.remove(&line.sale_id) {
                Some((fact, _)) if fact == line => {}
                Some((fact, location_key)) => {
                    touch(&fact);
                    touch(&line);
                    self.count(MismatchKind::FactDiffers, line.sale_id.clone(), fact.json(), line.json());
                    let replaces = Some(fact.kind);
                    self.put_at.insert(line.sale_id.clone(), self.fixes.facts.len());
                    self.fixes.facts.push(FactFix::Put { line, location_key, replaces, attributes });
                }
                None => {
                    touch(&line);
                    let key = line.sale_id.clone();
                    self.count(MismatchKind::FactMissingInStream, key, serde_json::Value::Null, line.json());
                    self.put_at.insert(line.sale_id.clone(), self.fixes.facts.len());
                    self.fixes.facts.push(FactFix::Put { line, location_key: 0, replaces: None, attributes });
                }
            }
        }
        let mut extra: Vec<FactLine> = stored.into_values().map(|(f, _)| f).collect();
        extra.sort_by(|a, b| a.sale_id.cmp(&b.sale_id));
        for fact in extra {
            touch(&fact);
            // The database's line was put by an earlier call, under another customer: it
            // replaces this fact (a later removal would undo the put).
            if let Some(FactFix::Put { replaces, .. }) =
                self.put_at.get(&fact.sale_id).and_then(|&i| self.fixes.facts.get_mut(i))
            {
                *replaces = Some(fact.kind);
                continue;
            }
            self.facts_checked += 1;
            self.count(MismatchKind::FactMissingInPostgres, fact.sale_id.clone(), fact.json(), serde_json::Value::Null);
            self.fixes.facts.push(FactFix::Remove { kind: fact.kind, sale_id: fact.sale_id });
        }
        touched.sort_unstable();
        touched.dedup();
        touched
    }

    /// The customers whose figures differ (with those of `also`, deduplicated): the ones
    /// whose facts are compared.
    pub fn mismatched_customers(&self, also: impl IntoIterator<Item = String>) -> Vec<String> {
        let mut ids: Vec<String> = self.fixes.customers.iter().map(|(id, _)| id.clone()).chain(also).collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// The (product, day) buckets that differ: a line changed there, perhaps without any
    /// customer's figures changing, so the customers with lines there have their facts
    /// compared too.
    pub fn mismatched_product_days(&self) -> Vec<(String, i32)> {
        self.fixes.product_days.iter().map(|(id, day, _, _)| (id.clone(), *day)).collect()
    }
}

fn instant_json(us: Option<i64>) -> serde_json::Value {
    us.and_then(DateTime::from_timestamp_micros)
        .map_or(serde_json::Value::Null, |t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true).into())
}

pub fn customer_json(f: &CustomerFigures) -> serde_json::Value {
    serde_json::json!({
        "frequency": f.purchases,
        "monetary": super::money::to_units(f.monetary),
        "first_purchase_at": instant_json(f.first_purchase_us),
        "last_purchase_at": instant_json(f.last_purchase_us),
    })
}

/// `weekly:2026-08-31`, as `sales_trends` names the document.
pub fn period_key(g: Granularity, p: Period) -> String {
    format!("{}:{}", g.as_str(), period_date(g, p))
}

pub fn product_day_json(d: &ProductDay) -> serde_json::Value {
    serde_json::json!({
        "units_sold": d.units,
        "total_revenue": super::money::to_units(d.revenue),
        "order_count": d.orders,
        "purchase_lines": d.purchase_lines,
    })
}

pub fn day_json(b: &Bucket) -> serde_json::Value {
    serde_json::json!({
        "transaction_count": b.purchases,
        "total_revenue": super::money::to_units(b.revenue()),
        "refund_count": b.refunds,
        "refund_amount": super::money::to_units(b.refund_cents),
    })
}

/// One change a repair made, for the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RepairChange {
    /// `customer`, `day`, `period`, `product_day` or `fact`.
    pub scope: &'static str,
    pub key: String,
    pub before: serde_json::Value,
    pub after: serde_json::Value,
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(day: u32, hour: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, day, hour, 0, 0).unwrap()
    }

    #[test]
    fn open_events_keep_what_a_cut_needs() {
        let mut o = OpenEvents::default();
        // Customer 0: purchases on the 1st and 10th, a refund on the 10th.
        o.record(0, at(1, 9), EventKind::Purchase, 500, None);
        o.record(0, at(10, 9), EventKind::Purchase, 700, Some(at(1, 9)));
        o.record(0, at(10, 10), EventKind::Refund, 200, Some(at(10, 9)));
        // Horizon: the 10th minus 3 days = the 7th; the 1st was folded away.
        assert_eq!(o.horizon(), Some(epoch_day(at(7, 0).date_naive())));
        assert_eq!(o.len(), 2);
        assert_eq!(o.last_before_horizon(0), Some(Some(at(1, 9).timestamp_micros())));
        let cut = day_start_us(epoch_day(at(10, 0).date_naive()));
        let a = o.after(cut)[&0];
        assert_eq!((a.purchases, a.cents), (1, 500));
        assert_eq!(a.last_before_us, None);
        // A late purchase before the horizon moves the kept "last before".
        o.record(0, at(2, 9), EventKind::Purchase, 100, Some(at(10, 9)));
        assert_eq!(o.last_before_horizon(0), Some(Some(at(2, 9).timestamp_micros())));
    }

    fn line(sale: &str, customer: &str, quantity: i64) -> FactLine {
        FactLine {
            kind: EventKind::Purchase,
            sale_id: sale.into(),
            transaction_id: sale.split(':').next().unwrap().into(),
            customer_id: customer.into(),
            product_id: "p".into(),
            at_ms: at(2, 9).timestamp_millis(),
            quantity,
            unit_price_cents: 100,
            discount_cents: 0,
            payment_method: None,
        }
    }

    #[test]
    fn facts_are_put_replaced_and_removed_once_each() {
        let mut t = Tally::new(10);
        let none = ProductAttributes::default;
        let day = epoch_day(at(2, 0).date_naive());
        // a: the database has one unit more; b: only the database; c: only the stream.
        let db = vec![(line("a:0", "x", 2), none()), (line("b:0", "x", 1), none())];
        let stored = vec![(line("a:0", "x", 1), 7), (line("c:0", "x", 1), 8)];
        assert_eq!(t.facts(db, stored), vec![("p".to_owned(), day)]);
        let kinds = [MismatchKind::FactDiffers, MismatchKind::FactMissingInStream, MismatchKind::FactMissingInPostgres];
        assert!(kinds.iter().all(|k| t.counts[k] == 1), "{:?}", t.counts);
        assert!(matches!(&t.fixes.facts[0], FactFix::Put { location_key: 7, replaces: Some(_), .. }));
        // d moved customers: put under y first, found in the stream under z later. The put
        // replaces it instead of a removal undoing the put.
        t.facts(vec![(line("d:0", "y", 1), none())], vec![]);
        t.facts(vec![], vec![(line("d:0", "z", 1), 3)]);
        let d: Vec<&FactFix> = t
            .fixes
            .facts
            .iter()
            .filter(|f| {
                matches!(f, FactFix::Put { line, .. } if line.sale_id == "d:0")
                    || matches!(f, FactFix::Remove { sale_id, .. } if sale_id == "d:0")
            })
            .collect();
        assert!(matches!(d.as_slice(), [FactFix::Put { replaces: Some(EventKind::Purchase), .. }]), "{d:?}");
    }

    #[test]
    fn classification_order() {
        let s = CustomerFigures { purchases: 2, monetary: 100, first_purchase_us: Some(1), last_purchase_us: Some(5) };
        assert_eq!(classify_customer(&s, &s), None);
        let more = CustomerFigures { purchases: 3, ..s };
        assert_eq!(classify_customer(&s, &more), Some(MismatchKind::CustomerMissingInStream));
        assert_eq!(classify_customer(&more, &s), Some(MismatchKind::CustomerMissingInPostgres));
        let money = CustomerFigures { monetary: 99, ..s };
        assert_eq!(classify_customer(&s, &money), Some(MismatchKind::CustomerAmount));
        let late = CustomerFigures { last_purchase_us: Some(6), ..s };
        assert_eq!(classify_customer(&s, &late), Some(MismatchKind::CustomerPurchaseTime));
        let mut t = Tally::new(1);
        t.customer("a", Some(&s), Some(&more));
        t.customer("b", None, Some(&s));
        t.customer("c", Some(&s), Some(&s));
        assert_eq!(t.counts[&MismatchKind::CustomerMissingInStream], 2);
        assert_eq!((t.purchases_missing_in_stream, t.customers_checked, t.samples.len()), (3, 3, 1));
    }
}
