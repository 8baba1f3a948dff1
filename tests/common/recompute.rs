//! An independent recompute of the views from the generated JSON, written from SPEC.md
//! alone (it shares no code with martstream's domain): the expected side of the end-to-end
//! tests.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, NaiveDate, Utc};
use loadtest::{Label, Message};
use mongodb::bson::{Bson, Document};
use serde_json::Value;

/// Money as the SPEC wants it: nearest cent, half away from zero. The generator writes at
/// most two decimals, so rounding the scaled double is exact here.
pub fn cents(v: &Value) -> i64 {
    (v.as_f64().unwrap() * 100.0).round() as i64
}

/// The applied events: first arrivals of valid messages, as parsed JSON.
pub fn applied(messages: &[Message]) -> Vec<Value> {
    let mut seen = HashSet::new();
    messages
        .iter()
        .filter(|m| m.label == Label::Valid)
        .map(|m| serde_json::from_str::<Value>(&m.payload).unwrap())
        .filter(|v| seen.insert(v["transaction_id"].as_str().unwrap().to_owned()))
        .collect()
}

pub fn time(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v["timestamp"].as_str().unwrap()).unwrap().with_timezone(&Utc)
}

/// `as_of` under the event clock: the largest applied event time.
pub fn event_clock(events: &[Value]) -> DateTime<Utc> {
    events.iter().map(time).max().unwrap()
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExpectedRfm {
    pub first: DateTime<Utc>,
    pub last: DateTime<Utc>,
    pub recency: i64,
    pub frequency: i64,
    pub monetary_cents: i64,
    pub scores: [i64; 3],
    pub segment: &'static str,
}

/// A segment rule: name and inclusive R, F, M score ranges.
type Rule = (&'static str, [i64; 2], [i64; 2], [i64; 2]);

/// SPEC §3 segment table, in its order.
const SEGMENTS: [Rule; 8] = [
    ("Champions", [4, 5], [4, 5], [4, 5]),
    ("Cannot Lose Them", [1, 2], [4, 5], [4, 5]),
    ("At Risk", [1, 2], [3, 5], [3, 5]),
    ("Loyal Customers", [3, 5], [3, 5], [3, 5]),
    ("New Customers", [4, 5], [1, 1], [1, 1]),
    ("Potential Loyalists", [3, 5], [1, 3], [1, 3]),
    ("Lost", [1, 1], [1, 2], [1, 2]),
    ("Hibernating", [1, 2], [1, 2], [1, 3]),
];

fn segment(s: [i64; 3]) -> &'static str {
    let within = |r: [i64; 2], x: i64| r[0] <= x && x <= r[1];
    SEGMENTS
        .iter()
        .find(|(_, r, f, m)| within(*r, s[0]) && within(*f, s[1]) && within(*m, s[2]))
        .map_or("Need Attention", |s| s.0)
}

/// `customer_rfm_analysis` with quintile scoring (`bins = false`) or the batch edges.
pub fn rfm(events: &[Value], as_of: DateTime<Utc>, bins: bool) -> BTreeMap<String, ExpectedRfm> {
    struct Acc {
        purchases: Vec<DateTime<Utc>>,
        money: i64,
    }
    let mut acc: BTreeMap<String, Acc> = BTreeMap::new();
    for e in events {
        let a = acc.entry(e["user_id"].as_str().unwrap().to_owned()).or_insert(Acc { purchases: vec![], money: 0 });
        if e["event_type"] == "refund" {
            a.money -= cents(&e["total_amount"]);
        } else {
            a.purchases.push(time(e));
            a.money += cents(&e["total_amount"]);
        }
    }
    let day = |t: DateTime<Utc>| -> NaiveDate { t.date_naive() };
    // (customer, first purchase, last purchase, recency, frequency, monetary cents)
    type Row = (String, DateTime<Utc>, DateTime<Utc>, i64, i64, i64);
    let rows: Vec<Row> = acc
        .into_iter()
        .filter(|(_, a)| !a.purchases.is_empty())
        .map(|(id, a)| {
            let first = *a.purchases.iter().min().unwrap();
            let last = *a.purchases.iter().max().unwrap();
            let recency = (day(as_of) - day(last)).num_days().max(0);
            (id, first, last, recency, a.purchases.len() as i64, a.money)
        })
        .collect();
    let n = rows.len() as i64;
    // SQL: 1 + floor(5 * (rank() over (order by x) - 1) / count(*) over ())
    let quintile = |values: Vec<i64>, x: i64, descending: bool| -> i64 {
        let before = values.iter().filter(|&&v| if descending { v > x } else { v < x }).count() as i64;
        1 + 5 * before / n
    };
    let col = |i: usize| -> Vec<i64> { rows.iter().map(|r| [r.3, r.4, r.5][i]).collect() };
    let (recencies, frequencies, monetaries) = (col(0), col(1), col(2));
    rows.iter()
        .map(|(id, first, last, recency, frequency, money)| {
            let scores = if bins {
                let count = |edges: [i64; 5], x: i64| edges.iter().filter(|&&e| e <= x).count().max(1) as i64;
                let r = match *recency {
                    r if r <= 1 => 5,
                    r if r <= 30 => 4,
                    r if r <= 90 => 3,
                    r if r <= 180 => 2,
                    _ => 1,
                };
                [r, count([1, 5, 10, 20, 50], *frequency), count([0, 10_000, 50_000, 100_000, 500_000], *money)]
            } else {
                [
                    quintile(recencies.clone(), *recency, true),
                    quintile(frequencies.clone(), *frequency, false),
                    quintile(monetaries.clone(), *money, false),
                ]
            };
            let expected = ExpectedRfm {
                first: *first,
                last: *last,
                recency: *recency,
                frequency: *frequency,
                monetary_cents: *money,
                scores,
                segment: segment(scores),
            };
            (id.clone(), expected)
        })
        .collect()
}

fn int(doc: &Document, key: &str) -> i64 {
    match doc.get(key) {
        Some(Bson::Int32(x)) => i64::from(*x),
        Some(Bson::Int64(x)) => *x,
        other => panic!("{key} is not an integer: {other:?} in {doc}"),
    }
}

fn millis(doc: &Document, key: &str) -> i64 {
    doc.get_datetime(key).unwrap_or_else(|_| panic!("{key} is not a date in {doc}")).timestamp_millis()
}

/// Compares the MongoDB documents with the expectation, field by field; `as_of` also checks
/// `analysis_date` (the always-on service only rewrites documents whose content changed, so
/// there it is the as_of of each document's last write).
pub fn rfm_diff(
    docs: &[Document],
    expected: &BTreeMap<String, ExpectedRfm>,
    as_of: Option<DateTime<Utc>>,
) -> Result<(), String> {
    macro_rules! ensure {
        ($cond:expr, $($msg:tt)+) => {
            if $cond {
            } else {
                return Err(format!($($msg)+));
            }
        };
    }
    let mut got: BTreeMap<String, &Document> = BTreeMap::new();
    for d in docs {
        got.insert(d.get_str("customer_id").map_err(|e| e.to_string())?.to_owned(), d);
    }
    ensure!(got.len() == docs.len(), "more than one document for a customer");
    let missing: Vec<_> = expected.keys().filter(|k| !got.contains_key(*k)).take(5).collect();
    let extra: Vec<_> = got.keys().filter(|k| !expected.contains_key(*k)).take(5).collect();
    ensure!(missing.is_empty() && extra.is_empty(), "missing {missing:?}, unexpected {extra:?}");
    for (id, e) in expected {
        let d = got[id];
        let ctx = format!("customer {id}: {d}");
        ensure!(d.get_str("_id") == Ok(id.as_str()), "_id, {ctx}");
        ensure!(millis(d, "first_purchase_at") == e.first.timestamp_millis(), "first_purchase_at, {ctx}");
        ensure!(millis(d, "last_purchase_at") == e.last.timestamp_millis(), "last_purchase_at, {ctx}");
        ensure!(int(d, "recency") == e.recency, "recency {} expected, {ctx}", e.recency);
        ensure!(int(d, "frequency") == e.frequency, "frequency {} expected, {ctx}", e.frequency);
        ensure!(
            d.get_f64("monetary") == Ok(e.monetary_cents as f64 / 100.0),
            "monetary {} expected, {ctx}",
            e.monetary_cents
        );
        let aov = d.get_f64("avg_order_value").map_err(|e| format!("avg_order_value: {e}, {ctx}"))?;
        let want = e.monetary_cents as f64 / 100.0 / e.frequency as f64;
        ensure!((aov - want).abs() <= 1e-9 * want.abs().max(1.0), "avg_order_value {aov} != {want}, {ctx}");
        let scores = [int(d, "r_score"), int(d, "f_score"), int(d, "m_score")];
        ensure!(scores == e.scores, "scores {:?} expected, {ctx}", e.scores);
        ensure!(
            d.get_str("rfm_score") == Ok(format!("{}{}{}", e.scores[0], e.scores[1], e.scores[2]).as_str()),
            "rfm_score, {ctx}"
        );
        ensure!(d.get_str("rfm_segment") == Ok(e.segment), "rfm_segment {} expected, {ctx}", e.segment);
        if let Some(t) = as_of {
            ensure!(millis(d, "analysis_date") == t.timestamp_millis(), "analysis_date {t} expected, {ctx}");
        }
        ensure!(d.get_datetime("updated_at").is_ok(), "updated_at, {ctx}");
    }
    Ok(())
}

pub fn assert_rfm_equal(docs: &[Document], expected: &BTreeMap<String, ExpectedRfm>, as_of: DateTime<Utc>) {
    if let Err(e) = rfm_diff(docs, expected, Some(as_of)) {
        panic!("customer_rfm_analysis differs from the recompute: {e}");
    }
}

/// The amount of one line: quantity × unit_price − discount, cents.
fn line_cents(item: &Value) -> i64 {
    item["quantity"].as_i64().unwrap() * cents(&item["unit_price"])
        - item.get("discount").filter(|d| !d.is_null()).map_or(0, cents)
}

fn approx(got: Option<f64>, want: Option<f64>) -> bool {
    match (got, want) {
        (None, None) => true,
        (Some(a), Some(b)) => (a - b).abs() <= 1e-9 * b.abs().max(1.0),
        _ => false,
    }
}

fn opt_f64(doc: &Document, key: &str) -> Option<f64> {
    match doc.get(key) {
        Some(Bson::Double(x)) => Some(*x),
        Some(Bson::Null) | None => None,
        other => panic!("{key} is not a double or null: {other:?}"),
    }
}

/// One expected `product_performance` document: (name, category, units, orders, revenue
/// cents, days_sold, rank).
pub type ExpectedProduct = (String, String, i64, i64, i64, i64, i64);

/// `product_performance` per SPEC §4 (window 30 days, rising star above 1000/day), keyed by
/// product_id.
pub fn products(events: &[Value], as_of: DateTime<Utc>) -> BTreeMap<String, ExpectedProduct> {
    let last = as_of.date_naive();
    let first = last - chrono::Duration::days(29);
    #[derive(Default)]
    struct Acc {
        name: Option<(DateTime<Utc>, usize, String)>,
        category: Option<(DateTime<Utc>, usize, String)>,
        seen: bool,
        units: i64,
        revenue: i64,
        orders: HashSet<String>,
        days: HashSet<NaiveDate>,
    }
    let mut acc: BTreeMap<String, Acc> = BTreeMap::new();
    for (n, e) in events.iter().enumerate() {
        let t = time(e);
        let refund = e["event_type"] == "refund";
        for item in e["items"].as_array().unwrap() {
            let a = acc.entry(item["product_id"].as_str().unwrap().to_owned()).or_default();
            for (slot, key) in [(&mut a.name, "product_name"), (&mut a.category, "category")] {
                if let Some(v) = item.get(key).and_then(Value::as_str) {
                    if slot.as_ref().is_none_or(|(st, sn, _)| (t, n) >= (*st, *sn)) {
                        *slot = Some((t, n, v.to_owned()));
                    }
                }
            }
            let d = t.date_naive();
            if d < first || d > last {
                continue;
            }
            a.seen = true;
            let (q, amount) = (item["quantity"].as_i64().unwrap(), line_cents(item));
            if refund {
                a.units -= q;
                a.revenue -= amount;
            } else {
                a.units += q;
                a.revenue += amount;
                a.orders.insert(e["transaction_id"].as_str().unwrap().to_owned());
                a.days.insert(d);
            }
        }
    }
    let mut rows: Vec<(String, String, String, i64, i64, i64, i64)> = acc // (id, name, category, units, orders, revenue, days)
        .into_iter()
        .filter(|(_, a)| a.seen)
        .map(|(id, a)| {
            let category = a.category.map_or("Uncategorized".to_owned(), |c| c.2);
            (
                id,
                a.name.map(|n| n.2).unwrap_or_default(),
                category,
                a.units,
                a.orders.len() as i64,
                a.revenue,
                a.days.len() as i64,
            )
        })
        .collect();
    rows.sort_by(|x, y| (&x.2, std::cmp::Reverse(x.5), &x.0).cmp(&(&y.2, std::cmp::Reverse(y.5), &y.0)));
    let mut out = BTreeMap::new();
    let mut rank = 0;
    let mut prev_category = String::new();
    for (id, name, category, units, orders, revenue, days) in rows {
        rank = if category == prev_category { rank + 1 } else { 1 };
        prev_category = category.clone();
        out.insert(id, (name, category, units, orders, revenue, days, rank));
    }
    out
}

pub fn products_diff(
    docs: &[Document],
    expected: &BTreeMap<String, ExpectedProduct>,
    as_of: Option<DateTime<Utc>>,
) -> Result<(), String> {
    let got: BTreeMap<String, &Document> =
        docs.iter().map(|d| (d.get_str("product_id").unwrap().to_owned(), d)).collect();
    if got.len() != expected.len() || !got.keys().eq(expected.keys()) {
        return Err(format!("{} documents for {} expected products", got.len(), expected.len()));
    }
    for (id, (name, category, units, orders, revenue, days, rank)) in expected {
        let d = got[id];
        let ctx = format!("product {id}: {d}");
        let fields_ok = d.get_str("_id") == Ok(id.as_str())
            && d.get_str("product_name") == Ok(name.as_str())
            && d.get_str("category") == Ok(category.as_str())
            && int(d, "units_sold") == *units
            && int(d, "order_count") == *orders
            && d.get_f64("total_revenue") == Ok(*revenue as f64 / 100.0)
            && int(d, "days_sold") == *days
            && int(d, "rank_in_category") == *rank
            && int(d, "analysis_period_days") == 30;
        if !fields_ok {
            return Err(format!("fields differ from (units {units}, orders {orders}, revenue {revenue}, days {days}, rank {rank}); {ctx}"));
        }
        let revenue_units = *revenue as f64 / 100.0;
        let per_day = (*days > 0).then(|| revenue_units / *days as f64);
        let rising = per_day.is_some_and(|r| r > 1000.0);
        let derived_ok = approx(opt_f64(d, "avg_price"), (*units > 0).then(|| revenue_units / *units as f64))
            && approx(opt_f64(d, "revenue_per_day"), per_day)
            && approx(d.get_f64("performance_score").ok(), Some(revenue_units / 1000.0 + *units as f64 / 10.0))
            && d.get_bool("is_rising_star") == Ok(rising)
            && (if rising {
                d.get_str("trend_type") == Ok("rising_star")
            } else {
                d.get("trend_type") == Some(&Bson::Null)
            });
        if !derived_ok {
            return Err(format!("derived fields differ; {ctx}"));
        }
        if let Some(t) = as_of {
            if millis(d, "analysis_date") != t.timestamp_millis() {
                return Err(format!("analysis_date; {ctx}"));
            }
        }
    }
    Ok(())
}

/// One expected `sales_trends` document: (purchases, purchase cents, refunds, refund cents)
/// and, for daily ones, (7-day revenue sum, 7-day purchases, previous day revenue).
pub type ExpectedTrend = ((i64, i64, i64, i64), Option<(i64, i64, Option<i64>)>);

/// `sales_trends` per SPEC §5 (90 days, 12 ISO weeks, 12 months), keyed by `type:date`.
pub fn trends(events: &[Value], as_of: DateTime<Utc>) -> BTreeMap<String, ExpectedTrend> {
    trends_with(events, as_of, 90)
}

/// `sales_trends` with `daily_days` dates of daily documents (`views.trends.daily_days`).
pub fn trends_with(events: &[Value], as_of: DateTime<Utc>, daily_days: i64) -> BTreeMap<String, ExpectedTrend> {
    use chrono::Datelike;
    let mut buckets: BTreeMap<(&str, NaiveDate), (i64, i64, i64, i64)> = BTreeMap::new();
    for e in events {
        let d = time(e).date_naive();
        let monday = d - chrono::Duration::days(d.weekday().num_days_from_monday() as i64);
        let month = NaiveDate::from_ymd_opt(d.year(), d.month(), 1).unwrap();
        for key in [("daily", d), ("weekly", monday), ("monthly", month)] {
            let b = buckets.entry(key).or_default();
            if e["event_type"] == "refund" {
                b.2 += 1;
                b.3 += cents(&e["total_amount"]);
            } else {
                b.0 += 1;
                b.1 += cents(&e["total_amount"]);
            }
        }
    }
    let today = as_of.date_naive();
    let monday = today - chrono::Duration::days(today.weekday().num_days_from_monday() as i64);
    let month = NaiveDate::from_ymd_opt(today.year(), today.month(), 1).unwrap();
    let months_back = |n: i32| {
        let m = today.year() * 12 + today.month0() as i32 - n;
        NaiveDate::from_ymd_opt(m.div_euclid(12), m.rem_euclid(12) as u32 + 1, 1).unwrap()
    };
    let net = |d: NaiveDate| buckets.get(&("daily", d)).map(|b| b.1 - b.3);
    let mut out = BTreeMap::new();
    for (&(kind, d), &b) in &buckets {
        let retained = match kind {
            "daily" => d <= today && d > today - chrono::Duration::days(daily_days),
            "weekly" => d <= monday && d > monday - chrono::Duration::weeks(12),
            _ => d <= month && d >= months_back(11),
        };
        if !retained {
            continue;
        }
        let daily = (kind == "daily").then(|| {
            let days: Vec<NaiveDate> = (0..7).map(|k| d - chrono::Duration::days(k)).collect();
            let revenue: i64 = days.iter().map(|&x| net(x).unwrap_or(0)).sum();
            let count: i64 = days.iter().map(|&x| buckets.get(&("daily", x)).map_or(0, |b| b.0)).sum();
            (revenue, count, net(d - chrono::Duration::days(1)))
        });
        out.insert(format!("{kind}:{d}"), (b, daily));
    }
    out
}

pub fn trends_diff(docs: &[Document], expected: &BTreeMap<String, ExpectedTrend>) -> Result<(), String> {
    use chrono::Datelike;
    let got: BTreeMap<String, &Document> = docs.iter().map(|d| (d.get_str("_id").unwrap().to_owned(), d)).collect();
    if !got.keys().eq(expected.keys()) {
        let missing: Vec<_> = expected.keys().filter(|k| !got.contains_key(*k)).take(3).collect();
        let extra: Vec<_> = got.keys().filter(|k| !expected.contains_key(*k)).take(3).collect();
        return Err(format!("documents differ: missing {missing:?}, unexpected {extra:?}"));
    }
    for (id, ((purchases, bought, refunds, refunded), daily)) in expected {
        let d = got[id];
        let (kind, date) = id.split_once(':').unwrap();
        let ctx = format!("{id}: {d}");
        let net = (bought - refunded) as f64 / 100.0;
        let mut ok = d.get_str("trend_type") == Ok(kind)
            && d.get_str("date") == Ok(date)
            && int(d, "transaction_count") == *purchases
            && d.get_f64("total_revenue") == Ok(net)
            && approx(
                opt_f64(d, "avg_transaction_value"),
                (*purchases > 0).then(|| *bought as f64 / 100.0 / *purchases as f64),
            )
            && int(d, "refund_count") == *refunds
            && d.get_f64("refund_amount") == Ok(*refunded as f64 / 100.0);
        let day: NaiveDate = date.parse().unwrap();
        ok &= match kind {
            "weekly" => {
                int(d, "year") == day.iso_week().year() as i64 && int(d, "week") == day.iso_week().week() as i64
            }
            "monthly" => int(d, "year") == day.year() as i64 && int(d, "month") == day.month() as i64,
            _ => true,
        };
        if let Some((revenue7, count7, prev)) = daily {
            let prev_units = prev.map(|p| p as f64 / 100.0);
            let growth = prev.filter(|p| *p != 0).map(|p| ((bought - refunded) - p) as f64 / p as f64 * 100.0);
            ok &= approx(opt_f64(d, "revenue_7day_ma"), Some(*revenue7 as f64 / 100.0 / 7.0))
                && approx(opt_f64(d, "transactions_7day_ma"), Some(*count7 as f64 / 7.0))
                && approx(opt_f64(d, "prev_day_revenue"), prev_units)
                && approx(opt_f64(d, "revenue_growth_pct"), growth);
        }
        if !ok {
            return Err(format!("fields differ from {:?}; {ctx}", expected[id]));
        }
    }
    Ok(())
}

/// Every document of a collection.
pub async fn read_all(db: &mongodb::Database, name: &str) -> Vec<Document> {
    use futures::TryStreamExt;
    db.collection::<Document>(name).find(Document::new()).await.unwrap().try_collect().await.unwrap()
}

/// Checks the star schema against the applied events: one fact per line with the line's
/// figures, keys that resolve to the right dimension rows, dim_customer in step with
/// customer_rfm_analysis, dim_date covering every fact date, and 1440 dim_time rows.
pub async fn check_star_schema(db: &mongodb::Database, events: &[Value]) -> Result<(), String> {
    let all = |name: &'static str| read_all(db, name);
    let by = |docs: &[Document], key: &str| -> BTreeMap<i64, Document> {
        docs.iter().map(|d| (int(d, key), d.clone())).collect()
    };
    let products = by(&all("dim_product").await, "product_key");
    let customers = by(&all("dim_customer").await, "customer_key");
    let locations = by(&all("dim_location").await, "location_key");
    let dates: HashSet<i64> = all("dim_date").await.iter().map(|d| int(d, "date_key")).collect();
    let sales: BTreeMap<String, Document> =
        all("fact_sales").await.into_iter().map(|d| (d.get_str("sale_id").unwrap().to_owned(), d)).collect();
    let returns: BTreeMap<String, Document> =
        all("fact_returns").await.into_iter().map(|d| (d.get_str("sale_id").unwrap().to_owned(), d)).collect();
    if all("dim_time").await.len() != 1440 {
        return Err("dim_time must have 1440 rows".into());
    }
    let mut lines = (0, 0);
    for e in events {
        let refund = e["event_type"] == "refund";
        let t = time(e);
        for (i, item) in e["items"].as_array().unwrap().iter().enumerate() {
            let sale_id = format!("{}:{i}", e["transaction_id"].as_str().unwrap());
            let table = if refund { &returns } else { &sales };
            let f = table.get(&sale_id).ok_or_else(|| format!("fact {sale_id} missing"))?;
            if refund {
                lines.1 += 1
            } else {
                lines.0 += 1
            }
            let ctx = format!("fact {f}");
            let date_key = t.format("%Y%m%d").to_string().parse::<i64>().unwrap();
            let time_key = t.format("%H%M").to_string().parse::<i64>().unwrap();
            let discount = item.get("discount").filter(|d| !d.is_null()).map_or(0, cents);
            let ok = int(f, "date_key") == date_key
                && int(f, "time_key") == time_key
                && int(f, "quantity") == item["quantity"].as_i64().unwrap()
                && f.get_f64("unit_price") == Ok(cents(&item["unit_price"]) as f64 / 100.0)
                && f.get_f64("discount_amount") == Ok(discount as f64 / 100.0)
                && f.get_f64("total_amount") == Ok(line_cents(item) as f64 / 100.0)
                && f.get_str("transaction_id")
                    == e["transaction_id"].as_str().ok_or(mongodb::bson::document::ValueAccessError::NotPresent)
                && match e.get("payment_method").and_then(Value::as_str) {
                    Some(p) => f.get_str("payment_method") == Ok(p),
                    None => f.get("payment_method") == Some(&Bson::Null),
                };
            if !ok {
                return Err(format!("figures differ from line {item}; {ctx}"));
            }
            let product =
                products.get(&int(f, "product_key")).ok_or_else(|| format!("product_key unresolved; {ctx}"))?;
            let customer =
                customers.get(&int(f, "customer_key")).ok_or_else(|| format!("customer_key unresolved; {ctx}"))?;
            if product.get_str("product_id")
                != item["product_id"].as_str().ok_or(mongodb::bson::document::ValueAccessError::NotPresent)
                || customer.get_str("customer_id")
                    != e["user_id"].as_str().ok_or(mongodb::bson::document::ValueAccessError::NotPresent)
            {
                return Err(format!("keys point at the wrong rows; {ctx}"));
            }
            match (e.get("location"), int(f, "location_key")) {
                (None, 0) => {}
                (Some(l), key) if key > 0 => {
                    let row = locations.get(&key).ok_or_else(|| format!("location_key unresolved; {ctx}"))?;
                    if row.get_str("country")
                        != l["country"].as_str().ok_or(mongodb::bson::document::ValueAccessError::NotPresent)
                    {
                        return Err(format!("location_key points at the wrong row; {ctx}"));
                    }
                }
                _ => return Err(format!("location_key; {ctx}")),
            }
            if !dates.contains(&date_key) {
                return Err(format!("dim_date lacks {date_key}"));
            }
        }
    }
    if (sales.len(), returns.len()) != lines {
        return Err(format!("{} sales and {} returns facts for {lines:?} lines", sales.len(), returns.len()));
    }
    // dim_customer carries the current segment and lifetime value of customer_rfm_analysis.
    let rfm = read_all(db, "customer_rfm_analysis").await;
    let by_id: BTreeMap<&str, &Document> = customers.values().map(|d| (d.get_str("customer_id").unwrap(), d)).collect();
    for r in &rfm {
        let c = by_id.get(r.get_str("customer_id").unwrap()).ok_or("customer without dim_customer row")?;
        if c.get_str("customer_segment") != r.get_str("rfm_segment")
            || c.get_f64("lifetime_value") != r.get_f64("monetary")
        {
            return Err(format!("dim_customer {c} out of step with {r}"));
        }
    }
    Ok(())
}

/// Sessions per start date: (sessions, with cart adds, abandoned), from first arrivals of
/// valid session messages.
pub fn session_counts(messages: &[Message]) -> BTreeMap<String, (i64, i64, i64)> {
    let mut seen = HashSet::new();
    let mut out: BTreeMap<String, (i64, i64, i64)> = BTreeMap::new();
    for m in messages.iter().filter(|m| m.label == Label::Valid) {
        let v: Value = serde_json::from_str(&m.payload).unwrap();
        if !seen.insert(v["session_id"].as_str().unwrap().to_owned()) {
            continue;
        }
        let day = DateTime::parse_from_rfc3339(v["session_start"].as_str().unwrap())
            .unwrap()
            .with_timezone(&Utc)
            .date_naive();
        let c = out.entry(format!("daily:{day}")).or_default();
        let carts = v["cart_adds"].as_i64().unwrap() > 0;
        c.0 += 1;
        c.1 += i64::from(carts);
        c.2 += i64::from(carts && !v["purchase_completed"].as_bool().unwrap());
    }
    out
}

/// Checks `fact_customer_sessions` and the session fields of daily `sales_trends`.
pub async fn check_sessions(db: &mongodb::Database, messages: &[Message]) -> Result<(), String> {
    let facts = read_all(db, "fact_customer_sessions").await;
    let customers: BTreeMap<i64, String> = read_all(db, "dim_customer")
        .await
        .iter()
        .map(|d| (int(d, "customer_key"), d.get_str("customer_id").unwrap().to_owned()))
        .collect();
    let by_id: BTreeMap<&str, &Document> = facts.iter().map(|d| (d.get_str("session_id").unwrap(), d)).collect();
    let mut expected = 0;
    let mut seen = HashSet::new();
    for m in messages.iter().filter(|m| m.label == Label::Valid) {
        let v: Value = serde_json::from_str(&m.payload).unwrap();
        let id = v["session_id"].as_str().unwrap();
        if !seen.insert(id.to_owned()) {
            continue;
        }
        expected += 1;
        let f = by_id.get(id).ok_or_else(|| format!("session {id} missing"))?;
        let start = DateTime::parse_from_rfc3339(v["session_start"].as_str().unwrap()).unwrap().with_timezone(&Utc);
        let end = DateTime::parse_from_rfc3339(v["session_end"].as_str().unwrap()).unwrap().with_timezone(&Utc);
        let carts = v["cart_adds"].as_i64().unwrap();
        let bought = v["purchase_completed"].as_bool().unwrap();
        let ok = customers.get(&int(f, "customer_key")).map(String::as_str) == v["user_id"].as_str()
            && int(f, "date_key") == start.format("%Y%m%d").to_string().parse::<i64>().unwrap()
            && millis(f, "session_start_time") == start.timestamp_millis()
            && millis(f, "session_end_time") == end.timestamp_millis()
            && approx(f.get_f64("duration_minutes").ok(), Some((end - start).num_milliseconds() as f64 / 60_000.0))
            && int(f, "page_views") == v["page_views"].as_i64().unwrap()
            && int(f, "products_viewed") == v["products_viewed"].as_i64().unwrap()
            && int(f, "cart_adds") == carts
            && int(f, "cart_removes") == v["cart_removes"].as_i64().unwrap()
            && f.get_bool("purchase_completed") == Ok(bought)
            && f.get_bool("cart_abandoned") == Ok(carts > 0 && !bought);
        if !ok {
            return Err(format!("session fact {f} differs from {v}"));
        }
    }
    if facts.len() != expected {
        return Err(format!("{} session facts for {expected} sessions", facts.len()));
    }
    let counts = session_counts(messages);
    let trends = read_all(db, "sales_trends").await;
    for d in trends.iter().filter(|d| d.get_str("trend_type") == Ok("daily")) {
        let (n, carts, abandoned) = counts.get(d.get_str("_id").unwrap()).copied().unwrap_or_default();
        let rate = (carts > 0).then(|| abandoned as f64 / carts as f64);
        if int(d, "sessions") != n || !approx(opt_f64(d, "cart_abandonment_rate"), rate) {
            return Err(format!("daily sessions ({n}, {carts}, {abandoned}) expected: {d}"));
        }
    }
    Ok(())
}

/// Every view and fact of `db` against the recompute of `messages` (transactions) and
/// `sessions` as of `as_of`; `dated`: also check each view document's analysis_date.
pub async fn check_every_view(
    db: &mongodb::Database,
    messages: &[Message],
    sessions: &[Message],
    as_of: DateTime<Utc>,
    dated: bool,
) -> Result<(), String> {
    let applied = applied(messages);
    let at = dated.then_some(as_of);
    rfm_diff(&read_all(db, "customer_rfm_analysis").await, &rfm(&applied, as_of, false), at)
        .map_err(|e| format!("customer_rfm_analysis: {e}"))?;
    products_diff(&read_all(db, "product_performance").await, &products(&applied, as_of), at)
        .map_err(|e| format!("product_performance: {e}"))?;
    trends_diff(&read_all(db, "sales_trends").await, &trends(&applied, as_of))
        .map_err(|e| format!("sales_trends: {e}"))?;
    check_star_schema(db, &applied).await.map_err(|e| format!("star schema: {e}"))?;
    check_sessions(db, sessions).await.map_err(|e| format!("sessions: {e}"))
}
