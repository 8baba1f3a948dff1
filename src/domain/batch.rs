//! The views recomputed from scratch over a list of events, the way a batch job would (with
//! the SPEC's fixes). Written independently of the incremental code, as plainly as possible:
//! it is the oracle of the property and end-to-end tests and the baseline of the benchmarks.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Datelike, NaiveDate, Utc};

use super::event::{EventKind, Transaction, UNCATEGORIZED};
use super::product::{ProductConfig, ProductDoc};
use super::rfm::{RfmConfig, RfmDoc, Scoring};
use super::session::Session;
use super::trends::{Bucket, DailyExtras, Granularity, SessionCounts, TrendConfig, TrendDoc};

/// The sessions that count: the first arrival of each `session_id`, in arrival order.
pub fn first_sessions<'a>(sessions: impl IntoIterator<Item = &'a Session>) -> Vec<&'a Session> {
    let mut seen = HashSet::new();
    sessions.into_iter().filter(|s| seen.insert(s.session_id.as_str())).collect()
}

/// The events that count: the first arrival of each `transaction_id`, in arrival order.
pub fn first_arrivals<'a>(events: impl IntoIterator<Item = &'a Transaction>) -> Vec<&'a Transaction> {
    let mut seen = HashSet::new();
    events.into_iter().filter(|tx| seen.insert(tx.transaction_id.as_str())).collect()
}

/// `customer_rfm_analysis`, sorted by `customer_id`.
pub fn rfm(events: &[&Transaction], as_of: DateTime<Utc>, config: &RfmConfig) -> Vec<RfmDoc> {
    struct Acc {
        frequency: i64,
        monetary: i64,
        first: Option<DateTime<Utc>>,
        last: Option<DateTime<Utc>>,
    }
    let mut by_customer: HashMap<&str, Acc> = HashMap::new();
    for tx in events {
        let acc = by_customer.entry(tx.user_id.as_str()).or_insert(Acc {
            frequency: 0,
            monetary: 0,
            first: None,
            last: None,
        });
        match tx.kind {
            EventKind::Purchase => {
                acc.frequency += 1;
                acc.monetary += tx.total_cents;
                acc.first = Some(acc.first.map_or(tx.timestamp, |t| t.min(tx.timestamp)));
                acc.last = Some(acc.last.map_or(tx.timestamp, |t| t.max(tx.timestamp)));
            }
            EventKind::Refund => acc.monetary -= tx.total_cents,
        }
    }
    let as_of_date = as_of.date_naive();
    let mut rows: Vec<(&str, &Acc, i64)> = by_customer
        .iter()
        .filter(|(_, acc)| acc.frequency >= 1)
        .map(|(id, acc)| {
            let last_date = acc.last.expect("a purchase").date_naive();
            (*id, acc, (as_of_date - last_date).num_days().max(0))
        })
        .collect();
    rows.sort_by(|a, b| a.0.cmp(b.0));

    let n = rows.len();
    let sorted = |mut v: Vec<i64>| {
        v.sort_unstable();
        v
    };
    let recencies = sorted(rows.iter().map(|r| r.2).collect());
    let frequencies = sorted(rows.iter().map(|r| r.1.frequency).collect());
    let monetaries = sorted(rows.iter().map(|r| r.1.monetary).collect());
    // 1 + floor(5 * (rank() - 1) / count(*)), rank() over ascending (descending for recency).
    let smaller = |v: &[i64], x: i64| v.partition_point(|&y| y < x);
    let larger = |v: &[i64], x: i64| v.len() - v.partition_point(|&y| y <= x);
    let q = |k: usize| (1 + 5 * k / n) as u8;

    rows.iter()
        .map(|&(id, acc, recency)| {
            let scores = match config.scoring {
                Scoring::Quintile => [
                    q(larger(&recencies, recency)),
                    q(smaller(&frequencies, acc.frequency)),
                    q(smaller(&monetaries, acc.monetary)),
                ],
                Scoring::Bins => config.bin_scores(recency, acc.frequency, acc.monetary),
            };
            RfmDoc {
                customer_id: id.to_owned(),
                first_purchase_at: acc.first.expect("a purchase"),
                last_purchase_at: acc.last.expect("a purchase"),
                recency,
                frequency: acc.frequency,
                monetary_cents: acc.monetary,
                r_score: scores[0],
                f_score: scores[1],
                m_score: scores[2],
                rfm_segment: config.segment(scores).to_owned(),
                analysis_date: as_of,
            }
        })
        .collect()
}

/// `product_performance`, sorted by `product_id`.
pub fn products(events: &[&Transaction], as_of: DateTime<Utc>, config: &ProductConfig) -> Vec<ProductDoc> {
    #[derive(Default)]
    struct Acc {
        name: Option<((DateTime<Utc>, usize), String)>,
        category: Option<((DateTime<Utc>, usize), String)>,
        any_line: bool,
        units: i64,
        revenue: i64,
        orders: HashSet<String>,
        sold_on: HashSet<NaiveDate>,
    }
    let last = as_of.date_naive();
    let first = last - chrono::Duration::days(i64::from(config.window_days) - 1);
    let mut by_product: BTreeMap<&str, Acc> = BTreeMap::new();
    for (arrival, tx) in events.iter().enumerate() {
        let stamp = (tx.timestamp, arrival);
        let date = tx.date();
        for line in &tx.items {
            let acc = by_product.entry(line.product_id.as_str()).or_default();
            // Latest by event time, ties to the later arrival, among lines carrying it.
            for (slot, value) in [(&mut acc.name, &line.product_name), (&mut acc.category, &line.category)] {
                if let Some(v) = value {
                    if slot.as_ref().is_none_or(|(s, _)| stamp >= *s) {
                        *slot = Some((stamp, v.clone()));
                    }
                }
            }
            if date < first || date > last {
                continue;
            }
            acc.any_line = true;
            if tx.kind == EventKind::Purchase {
                acc.units += line.quantity;
                acc.revenue += line.amount_cents();
                acc.orders.insert(tx.transaction_id.clone());
                acc.sold_on.insert(date);
            } else {
                acc.units -= line.quantity;
                acc.revenue -= line.amount_cents();
            }
        }
    }
    let mut docs: Vec<ProductDoc> = by_product
        .into_iter()
        .filter(|(_, a)| a.any_line)
        .map(|(id, a)| {
            let days_sold = a.sold_on.len() as i64;
            ProductDoc {
                product_id: id.to_owned(),
                product_name: a.name.map(|(_, n)| n),
                category: a.category.map_or_else(|| UNCATEGORIZED.to_owned(), |(_, c)| c),
                units_sold: a.units,
                order_count: a.orders.len() as i64,
                total_revenue_cents: a.revenue,
                days_sold,
                rank_in_category: 0,
                is_rising_star: days_sold > 0
                    && a.revenue as f64 / days_sold as f64 > config.rising_star_revenue_per_day * 100.0,
                analysis_period_days: i64::from(config.window_days),
                analysis_date: as_of,
            }
        })
        .collect();
    // rank_in_category: 1 = highest revenue in the category; ties by product_id.
    let mut order: Vec<usize> = (0..docs.len()).collect();
    order.sort_by(|&a, &b| {
        let (x, y) = (&docs[a], &docs[b]);
        (&x.category, Reverse(x.total_revenue_cents), &x.product_id).cmp(&(
            &y.category,
            Reverse(y.total_revenue_cents),
            &y.product_id,
        ))
    });
    let mut rank = 0;
    for (i, &idx) in order.iter().enumerate() {
        rank = if i > 0 && docs[order[i - 1]].category == docs[idx].category { rank + 1 } else { 1 };
        docs[idx].rank_in_category = rank;
    }
    docs
}

/// `sales_trends`, sorted by granularity then date. `sessions`: the first arrival of each
/// browsing session.
pub fn trends(
    events: &[&Transaction],
    sessions: &[&Session],
    as_of: DateTime<Utc>,
    config: &TrendConfig,
) -> Vec<TrendDoc> {
    let mut by_day: BTreeMap<NaiveDate, SessionCounts> = BTreeMap::new();
    for s in sessions {
        let c = by_day.entry(s.session_start.date_naive()).or_default();
        c.sessions += 1;
        if s.cart_adds > 0 {
            c.with_cart += 1;
            if !s.purchase_completed {
                c.abandoned += 1;
            }
        }
    }
    let mut days: BTreeMap<NaiveDate, Bucket> = BTreeMap::new();
    let mut weeks: BTreeMap<NaiveDate, Bucket> = BTreeMap::new();
    let mut months: BTreeMap<NaiveDate, Bucket> = BTreeMap::new();
    for tx in events {
        let date = tx.date();
        let monday = date - chrono::Duration::days(i64::from(date.weekday().num_days_from_monday()));
        let first_of_month = date.with_day(1).expect("day 1");
        for (map, key) in [(&mut days, date), (&mut weeks, monday), (&mut months, first_of_month)] {
            let b = map.entry(key).or_default();
            if tx.kind == EventKind::Purchase {
                b.purchases += 1;
                b.purchase_cents += tx.total_cents;
            } else {
                b.refunds += 1;
                b.refund_cents += tx.total_cents;
            }
        }
    }
    let today = as_of.date_naive();
    let this_monday = today - chrono::Duration::days(i64::from(today.weekday().num_days_from_monday()));
    let this_month = today.with_day(1).expect("day 1");
    let first_day = today - chrono::Duration::days(i64::from(config.daily_days) - 1);
    let first_week = this_monday - chrono::Duration::weeks(i64::from(config.weekly_weeks) - 1);
    let first_month = (0..config.monthly_months - 1)
        .fold(this_month, |m, _| (m - chrono::Duration::days(1)).with_day(1).expect("day 1"));
    let revenue = |d: NaiveDate| days.get(&d).map_or(0, Bucket::revenue);
    let mut docs = Vec::new();
    for (&d, &b) in days.range(first_day..=today) {
        let week: Vec<NaiveDate> = (0..7).map(|k| d - chrono::Duration::days(k)).collect();
        docs.push(TrendDoc {
            granularity: Granularity::Daily,
            date: d,
            bucket: b,
            daily: Some(DailyExtras {
                revenue_7day_sum_cents: week.iter().map(|&x| revenue(x)).sum(),
                transactions_7day_sum: week.iter().map(|x| days.get(x).map_or(0, |b| b.purchases)).sum(),
                prev_day_revenue_cents: days.get(&(d - chrono::Duration::days(1))).map(Bucket::revenue),
                sessions: by_day.get(&d).copied().unwrap_or_default(),
            }),
            analysis_date: as_of,
        });
    }
    for (g, map, first, last) in [
        (Granularity::Weekly, &weeks, first_week, this_monday),
        (Granularity::Monthly, &months, first_month, this_month),
    ] {
        for (&d, &b) in map.range(first..=last) {
            docs.push(TrendDoc { granularity: g, date: d, bucket: b, daily: None, analysis_date: as_of });
        }
    }
    docs
}
