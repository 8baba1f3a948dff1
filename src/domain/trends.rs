//! Daily, ISO-weekly and monthly buckets and the `sales_trends` view (SPEC §5), kept
//! incrementally.
//!
//! A bucket per period holds purchase and refund counts and money. An event marks its
//! periods dirty — for a day also the six following days, whose 7-day averages and
//! previous-day figures include it. A flush writes the dirty periods that are retained, all
//! retained periods when the date of `as_of` moved (the retention windows slid), and deletes
//! the periods that left retention. Daily buckets are kept for six days before the daily
//! retention (the oldest retained day's average needs them), weekly and monthly buckets
//! for their retention: memory follows the retained periods.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use super::calendar::{date_of, epoch_day, month_index, month_start, week_start};
use super::event::{EventKind, Transaction};
use super::money::Cents;

/// The trend settings of `[views.trends]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrendConfig {
    /// Dates of daily documents, ending on the date of `as_of`.
    pub daily_days: u32,
    /// ISO weeks of weekly documents, ending with the current one.
    pub weekly_weeks: u32,
    /// Months of monthly documents, ending with the current one.
    pub monthly_months: u32,
}

impl Default for TrendConfig {
    fn default() -> Self {
        TrendConfig { daily_days: 90, weekly_weeks: 12, monthly_months: 12 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Granularity {
    Daily,
    Weekly,
    Monthly,
}

impl Granularity {
    pub const ALL: [Granularity; 3] = [Granularity::Daily, Granularity::Weekly, Granularity::Monthly];

    pub fn as_str(self) -> &'static str {
        match self {
            Granularity::Daily => "daily",
            Granularity::Weekly => "weekly",
            Granularity::Monthly => "monthly",
        }
    }
}

/// The money and counts of one period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Bucket {
    pub purchases: i64,
    pub purchase_cents: Cents,
    pub refunds: i64,
    pub refund_cents: Cents,
}

impl Bucket {
    pub fn revenue(&self) -> Cents {
        self.purchase_cents - self.refund_cents
    }

    /// Counts one event.
    pub fn add(&mut self, tx: &Transaction) {
        match tx.kind {
            EventKind::Purchase => {
                self.purchases += 1;
                self.purchase_cents += tx.total_cents;
            }
            EventKind::Refund => {
                self.refunds += 1;
                self.refund_cents += tx.total_cents;
            }
        }
    }

    /// Adds another period's (or part's) counts.
    pub fn merge(&mut self, other: &Bucket) {
        self.purchases += other.purchases;
        self.purchase_cents += other.purchase_cents;
        self.refunds += other.refunds;
        self.refund_cents += other.refund_cents;
    }
}

/// What a part (the state of some input partitions) adds to the trends between two
/// flushes: the counts of its events per date. Additive, so the one owner of the trends
/// view applies every part's ([`TrendState::apply_deltas`]) and writes what one state
/// holding every event would (scale-out, docs/DESIGN.md).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TrendDeltas {
    pub days: BTreeMap<i32, Bucket>,
    /// Browsing sessions per date (the daily documents' cart figures).
    pub sessions: BTreeMap<i32, SessionCounts>,
}

impl TrendDeltas {
    pub fn add(&mut self, tx: &Transaction) {
        self.days.entry(epoch_day(tx.date())).or_default().add(tx);
    }

    pub fn add_session(&mut self, session: &super::session::Session) {
        self.sessions.entry(epoch_day(session.session_start.date_naive())).or_default().add(session);
    }

    /// Adds another part's.
    pub fn merge(&mut self, other: TrendDeltas) {
        for (day, counts) in other.days {
            self.days.entry(day).or_default().merge(&counts);
        }
        for (day, counts) in other.sessions {
            self.sessions.entry(day).or_default().merge(&counts);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.days.is_empty() && self.sessions.is_empty()
    }
}

/// Daily-only fields.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DailyExtras {
    /// Σ net revenue of d−6..=d, cents (divide by 7 for the average).
    pub revenue_7day_sum_cents: Cents,
    /// Σ purchases of d−6..=d.
    pub transactions_7day_sum: i64,
    /// Net revenue of d−1, when d−1 had events.
    pub prev_day_revenue_cents: Option<Cents>,
    /// Browsing sessions that started on d, those with cart adds, and those abandoned.
    pub sessions: SessionCounts,
}

/// Browsing sessions of one day (from `customer_sessions`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SessionCounts {
    pub sessions: i64,
    pub with_cart: i64,
    pub abandoned: i64,
}

impl SessionCounts {
    /// Counts one session.
    pub fn add(&mut self, session: &super::session::Session) {
        self.sessions += 1;
        self.with_cart += i64::from(session.cart_adds > 0);
        self.abandoned += i64::from(session.cart_abandoned());
    }

    pub fn merge(&mut self, other: &SessionCounts) {
        self.sessions += other.sessions;
        self.with_cart += other.with_cart;
        self.abandoned += other.abandoned;
    }

    /// Abandoned carts over sessions that added to the cart; null when none did.
    pub fn cart_abandonment_rate(&self) -> Option<f64> {
        (self.with_cart > 0).then(|| self.abandoned as f64 / self.with_cart as f64)
    }
}

impl DailyExtras {
    pub fn revenue_7day_ma(&self) -> f64 {
        self.revenue_7day_sum_cents as f64 / 7.0 / 100.0
    }

    pub fn transactions_7day_ma(&self) -> f64 {
        self.transactions_7day_sum as f64 / 7.0
    }
}

/// One document of `sales_trends`.
#[derive(Debug, Clone, PartialEq)]
pub struct TrendDoc {
    pub granularity: Granularity,
    /// The day, the Monday of the ISO week, or the first of the month.
    pub date: NaiveDate,
    pub bucket: Bucket,
    pub daily: Option<DailyExtras>,
    pub analysis_date: DateTime<Utc>,
}

impl TrendDoc {
    /// The natural id: `daily:2026-11-24`.
    pub fn id(&self) -> String {
        format!("{}:{}", self.granularity.as_str(), self.date)
    }

    pub fn avg_transaction_value(&self) -> Option<f64> {
        super::money::per(self.bucket.purchase_cents, self.bucket.purchases)
    }

    /// revenue growth over the previous day, %; null when there is no previous day or it is 0.
    pub fn revenue_growth_pct(&self) -> Option<f64> {
        let prev = self.daily?.prev_day_revenue_cents?;
        (prev != 0).then(|| (self.bucket.revenue() - prev) as f64 / prev as f64 * 100.0)
    }

    /// ISO (year, week) for weekly documents, (year, month) for monthly ones.
    pub fn year_and_number(&self) -> Option<(i32, u32)> {
        match self.granularity {
            Granularity::Daily => None,
            Granularity::Weekly => Some((self.date.iso_week().year(), self.date.iso_week().week())),
            Granularity::Monthly => Some((self.date.year(), self.date.month())),
        }
    }
}

/// What changed in the view.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrendChanges {
    pub upserts: Vec<TrendDoc>,
    /// Ids (`daily:2026-08-01`) of documents that left retention.
    pub deletes: Vec<String>,
}

/// A period's key: a day number for days and weeks (the Monday), a month index for months.
pub type Period = i32;

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Series {
    buckets: BTreeMap<Period, Bucket>,
    dirty: BTreeSet<Period>,
    shown: BTreeSet<Period>,
    /// Buckets before this period are not kept.
    floor: Option<Period>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TrendState {
    config: TrendConfig,
    series: [Series; 3],
    sessions: BTreeMap<Period, SessionCounts>,
    last_as_of_day: Option<i32>,
    late_events: u64,
    /// The day the latest events fell on, with its day, week and month: all three held and
    /// marked dirty since the last flush. Events come mostly in day order, so the next one
    /// usually only adds to those buckets (not found again, not marked again).
    #[serde(skip)]
    marked: Option<(i32, [Period; 3])>,
}

impl TrendState {
    pub fn new(config: TrendConfig) -> Self {
        TrendState {
            config,
            series: Default::default(),
            sessions: BTreeMap::new(),
            last_as_of_day: None,
            late_events: 0,
            marked: None,
        }
    }

    /// Buckets held over all granularities (memory follows the retention, not the history).
    pub fn buckets_held(&self) -> usize {
        self.series.iter().map(|s| s.buckets.len()).sum::<usize>() + self.sessions.len()
    }

    /// Events dated before every retention when they arrived.
    pub fn late_events(&self) -> u64 {
        self.late_events
    }

    pub fn apply(&mut self, tx: &Transaction) {
        let mut counts = Bucket::default();
        counts.add(tx);
        self.apply_day(epoch_day(tx.date()), &counts);
    }

    /// Applies every part's counts since the last flush (the owner of the view).
    pub fn apply_deltas(&mut self, deltas: &TrendDeltas) {
        for (&day, counts) in &deltas.days {
            self.apply_day(day, counts);
        }
        for (&day, counts) in &deltas.sessions {
            self.apply_sessions(day, counts);
        }
    }

    /// Adds the counts of events dated `day` to its day, week and month.
    fn apply_day(&mut self, day: i32, counts: &Bucket) {
        if let Some((marked, periods)) = self.marked {
            if marked == day {
                for (s, period) in self.series.iter_mut().zip(periods) {
                    s.buckets.entry(period).or_default().merge(counts);
                }
                return;
            }
        }
        let mut kept = [false; 3];
        let periods = Granularity::ALL.map(|g| period_of(g, day));
        for g in Granularity::ALL {
            let period = periods[g as usize];
            let s = &mut self.series[g as usize];
            if s.floor.is_some_and(|f| period < f) {
                continue;
            }
            kept[g as usize] = true;
            s.buckets.entry(period).or_default().merge(counts);
            s.dirty.insert(period);
            if g == Granularity::Daily {
                s.dirty.extend(period + 1..=period + 6);
            }
        }
        if kept == [true; 3] {
            self.marked = Some((day, periods));
        } else if kept == [false; 3] {
            self.late_events += (counts.purchases + counts.refunds) as u64;
        }
    }

    /// The oldest day the daily series still holds (`None` before the first flush: all).
    pub fn first_daily_day(&self) -> Option<i32> {
        self.series[Granularity::Daily as usize].floor
    }

    /// The daily buckets of `days` that hold events.
    pub fn daily_buckets(&self, days: std::ops::Range<i32>) -> impl Iterator<Item = (i32, Bucket)> + '_ {
        self.series[Granularity::Daily as usize].buckets.range(days).map(|(d, b)| (*d, *b))
    }

    /// Sets a day's bucket outright (a reconciliation repair) and moves its week and month
    /// by the difference. Returns the old bucket, or `None` when the day is older than the
    /// daily series or already equal.
    pub fn set_day(&mut self, day: i32, bucket: Bucket) -> Option<Bucket> {
        let daily = &self.series[Granularity::Daily as usize];
        if daily.floor.is_some_and(|f| day < f) {
            return None;
        }
        let old = daily.buckets.get(&day).copied().unwrap_or_default();
        if old == bucket {
            return None;
        }
        for g in Granularity::ALL {
            let period = period_of(g, day);
            let s = &mut self.series[g as usize];
            if s.floor.is_some_and(|f| period < f) {
                continue;
            }
            let b = s.buckets.entry(period).or_default();
            *b = plus(*b, minus(bucket, old));
            if *b == Bucket::default() {
                s.buckets.remove(&period);
            }
            s.dirty.insert(period);
            if g == Granularity::Daily {
                s.dirty.extend(period + 1..=period + 6);
            }
        }
        Some(old)
    }

    /// The weekly or monthly buckets of the periods that start before `day`, each without
    /// its days from `day` on: what the state says of the events dated before `day`, per
    /// period (a reconciliation compares the days from there on one by one). The first
    /// period is the granularity's oldest kept one. `None` before the first flush, or when
    /// the daily series does not reach back to `day` (the later days could not be taken out).
    pub fn periods_before(&self, g: Granularity, day: i32) -> Option<(Period, BTreeMap<Period, Bucket>)> {
        let first = self.series[g as usize].floor?;
        let daily = &self.series[Granularity::Daily as usize];
        if daily.floor.is_none_or(|f| f > day) {
            return None;
        }
        let mut out = BTreeMap::new();
        for (&p, &b) in self.series[g as usize].buckets.range(first..) {
            if period_start_day(g, p) >= day {
                break;
            }
            let before = minus(b, self.days_from(g, p, day));
            if before != Bucket::default() {
                out.insert(p, before);
            }
        }
        Some((first, out))
    }

    /// Σ of the daily buckets of period `p` dated on or after `day`.
    fn days_from(&self, g: Granularity, p: Period, day: i32) -> Bucket {
        let from = period_start_day(g, p).max(day);
        let to = period_start_day(g, p + if g == Granularity::Weekly { 7 } else { 1 });
        if from >= to {
            return Bucket::default();
        }
        let daily = &self.series[Granularity::Daily as usize].buckets;
        daily.range(from..to).fold(Bucket::default(), |acc, (_, b)| plus(acc, *b))
    }

    /// Sets the part of a weekly or monthly period dated before `day` outright (a
    /// reconciliation repair); its days from `day` on keep counting as the daily series has
    /// them. Returns the old part, or `None` when the period is not kept or already equal.
    pub fn set_period_before(&mut self, g: Granularity, p: Period, day: i32, before: Bucket) -> Option<Bucket> {
        let after = self.days_from(g, p, day);
        let s = &mut self.series[g as usize];
        if g == Granularity::Daily || s.floor.is_none_or(|f| p < f) {
            return None;
        }
        let now = s.buckets.get(&p).copied().unwrap_or_default();
        let wanted = plus(before, after);
        if now == wanted {
            return None;
        }
        if wanted == Bucket::default() {
            s.buckets.remove(&p);
        } else {
            s.buckets.insert(p, wanted);
        }
        s.dirty.insert(p);
        Some(minus(now, after))
    }

    /// Counts a browsing session on the day it started (shown on that day's document).
    pub fn apply_session(&mut self, session: &super::session::Session) {
        let mut counts = SessionCounts::default();
        counts.add(session);
        self.apply_sessions(epoch_day(session.session_start.date_naive()), &counts);
    }

    /// Adds the counts of sessions started on `day`.
    fn apply_sessions(&mut self, day: i32, counts: &SessionCounts) {
        let s = &mut self.series[Granularity::Daily as usize];
        if s.floor.is_some_and(|f| day < f) {
            self.late_events += counts.sessions as u64;
            return;
        }
        self.sessions.entry(day).or_default().merge(counts);
        s.dirty.insert(day);
    }

    pub fn flush(&mut self, as_of: DateTime<Utc>, full: bool) -> TrendChanges {
        let today = epoch_day(as_of.date_naive());
        let slid = full || self.last_as_of_day != Some(today);
        self.last_as_of_day = Some(today);
        let mut out = TrendChanges::default();
        for g in Granularity::ALL {
            let (first, last) = self.retained(g, today);
            let s = &mut self.series[g as usize];
            let keep_from = if g == Granularity::Daily { first - 6 } else { first };
            s.buckets = s.buckets.split_off(&keep_from);
            if g == Granularity::Daily {
                self.sessions = self.sessions.split_off(&keep_from);
            }
            s.floor = Some(keep_from);
            self.marked = None;
            let dirty = std::mem::take(&mut s.dirty);
            let periods: Vec<Period> = if slid {
                s.buckets.range(first..=last).map(|(p, _)| *p).collect()
            } else {
                dirty.range(first..=last).copied().filter(|p| s.buckets.contains_key(p)).collect()
            };
            for p in periods {
                out.upserts.push(doc(g, p, &s.buckets, &self.sessions, as_of));
                s.shown.insert(p);
            }
            // Out of retention, or emptied by a repair.
            let gone: Vec<Period> =
                s.shown.iter().copied().filter(|p| *p < first || *p > last || !s.buckets.contains_key(p)).collect();
            for p in gone {
                s.shown.remove(&p);
                out.deletes.push(format!("{}:{}", g.as_str(), period_date(g, p)));
            }
        }
        out
    }

    /// The first and last retained period of a granularity.
    fn retained(&self, g: Granularity, today: i32) -> (Period, Period) {
        let c = &self.config;
        match g {
            Granularity::Daily => (today - c.daily_days.max(1) as i32 + 1, today),
            Granularity::Weekly => {
                let this = week_start(today);
                (this - 7 * (c.weekly_weeks.max(1) as i32 - 1), this)
            }
            Granularity::Monthly => {
                let this = month_index(date_of(today));
                (this - c.monthly_months.max(1) as i32 + 1, this)
            }
        }
    }
}

pub fn period_of(g: Granularity, day: i32) -> Period {
    match g {
        Granularity::Daily => day,
        Granularity::Weekly => week_start(day),
        Granularity::Monthly => month_index(date_of(day)),
    }
}

/// The day number a period starts on.
pub fn period_start_day(g: Granularity, p: Period) -> i32 {
    match g {
        Granularity::Daily | Granularity::Weekly => p,
        Granularity::Monthly => epoch_day(month_start(p)),
    }
}

fn plus(a: Bucket, b: Bucket) -> Bucket {
    Bucket {
        purchases: a.purchases + b.purchases,
        purchase_cents: a.purchase_cents + b.purchase_cents,
        refunds: a.refunds + b.refunds,
        refund_cents: a.refund_cents + b.refund_cents,
    }
}

fn minus(a: Bucket, b: Bucket) -> Bucket {
    Bucket {
        purchases: a.purchases - b.purchases,
        purchase_cents: a.purchase_cents - b.purchase_cents,
        refunds: a.refunds - b.refunds,
        refund_cents: a.refund_cents - b.refund_cents,
    }
}

pub fn period_date(g: Granularity, p: Period) -> NaiveDate {
    match g {
        Granularity::Daily | Granularity::Weekly => date_of(p),
        Granularity::Monthly => month_start(p),
    }
}

fn doc(
    g: Granularity,
    p: Period,
    buckets: &BTreeMap<Period, Bucket>,
    sessions: &BTreeMap<Period, SessionCounts>,
    as_of: DateTime<Utc>,
) -> TrendDoc {
    let daily = (g == Granularity::Daily).then(|| {
        let week = buckets.range(p - 6..=p).map(|(_, b)| b);
        let (revenue, transactions) = week.fold((0, 0), |(r, t), b| (r + b.revenue(), t + b.purchases));
        DailyExtras {
            revenue_7day_sum_cents: revenue,
            transactions_7day_sum: transactions,
            prev_day_revenue_cents: buckets.get(&(p - 1)).map(Bucket::revenue),
            sessions: sessions.get(&p).copied().unwrap_or_default(),
        }
    });
    TrendDoc { granularity: g, date: period_date(g, p), bucket: buckets[&p], daily, analysis_date: as_of }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::domain::testgen::{arrivals, split_run, steps, Split};

    fn write(view: &mut BTreeMap<String, TrendDoc>, changes: TrendChanges) {
        for id in changes.deletes {
            view.remove(&id);
        }
        for doc in changes.upserts {
            view.insert(doc.id(), doc);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// Events split over parts, each part counting its events per date between flushes,
        /// one owner applying every part's counts: at every flush the owner writes exactly
        /// what one state applying every event writes (retention sliding included).
        #[test]
        fn parts_summed_by_one_owner_write_what_one_state_writes(steps in steps(150, 150), parts in 1usize..5, final_hours in 0i16..72) {
            let config = TrendConfig { daily_days: 4, weekly_weeks: 2, monthly_months: 2 };
            let (mut one, mut owner) = (TrendState::new(config.clone()), TrendState::new(config));
            let mut deltas = vec![TrendDeltas::default(); parts];
            let (mut by_one, mut by_owner) = (BTreeMap::new(), BTreeMap::new());
            split_run(&arrivals(&steps), parts, final_hours, |step| {
                match step {
                    Split::Event { part, tx, .. } => {
                        one.apply(tx);
                        deltas[part].add(tx);
                    }
                    Split::Flush { as_of, full } => {
                        write(&mut by_one, one.flush(as_of, full));
                        let mut gathered = TrendDeltas::default();
                        for d in deltas.iter_mut() {
                            gathered.merge(std::mem::take(d));
                        }
                        owner.apply_deltas(&gathered);
                        write(&mut by_owner, owner.flush(as_of, full));
                        prop_assert_eq!(&by_one, &by_owner, "as of {}", as_of);
                        prop_assert_eq!(one.late_events(), owner.late_events());
                    }
                }
                Ok(())
            })?;
        }
    }
}
