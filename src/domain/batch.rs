//! The views recomputed from scratch over a list of events, the way a batch job would (with
//! the SPEC's fixes). Written independently of the incremental code, as plainly as possible:
//! it is the oracle of the property and end-to-end tests and the baseline of the benchmarks.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};

use super::event::{EventKind, Transaction};
use super::rfm::{RfmConfig, RfmDoc, Scoring};

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
