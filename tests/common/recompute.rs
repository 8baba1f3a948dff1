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
