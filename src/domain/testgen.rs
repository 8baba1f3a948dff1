//! Random event streams for the domain's property tests: few customers and products (ties),
//! a few amounts (ties), refunds of seen and unseen purchases, exact resends, conflicting
//! resends, events out of time order, and flushes at random `as_of` instants.

use chrono::{DateTime, Duration, Utc};
use proptest::prelude::*;

use super::decode::Decoded;
use super::event::{EventKind, LineItem, Transaction};
use super::session::Session;

#[derive(Debug, Clone)]
pub enum Step {
    New { user: u8, minute: u32, total: u8, refund_of: Option<u16>, lines: Vec<(u8, u8, u8, u8)> },
    Resend(u16),
    Conflict(u16),
    Flush { hours: i16 },
    Session { user: u8, minute: u32, cart_adds: u8, purchase: bool, resend: bool },
}

/// What a step stream becomes: arrivals (with the flushes between them).
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
pub enum Arrival {
    Event(Decoded),
    Session(Decoded<Session>),
    Flush(i16),
}

pub fn base_time() -> DateTime<Utc> {
    "2026-10-30T00:00:00Z".parse().unwrap()
}

const AMOUNTS: [i64; 8] = [0, 500, 999, 1000, 2550, 10000, 12345, 500000];

pub fn steps(max_len: usize, days: u32) -> impl Strategy<Value = Vec<Step>> {
    let line = (0u8..6, 1u8..4, 0u8..8, 0u8..3);
    let new = (
        0u8..12,
        0..days * 24 * 60,
        0u8..8,
        prop::option::weighted(0.2, any::<u16>()),
        prop::collection::vec(line, 1..3),
    )
        .prop_map(|(user, minute, total, refund_of, lines)| Step::New { user, minute, total, refund_of, lines });
    let step = prop_oneof![
        8 => new,
        1 => any::<u16>().prop_map(Step::Resend),
        1 => any::<u16>().prop_map(Step::Conflict),
        1 => (-48i16..72).prop_map(|hours| Step::Flush { hours }),
        2 => (0u8..12, 0..days * 24 * 60, 0u8..3, any::<bool>(), prop::bool::weighted(0.15))
            .prop_map(|(user, minute, cart_adds, purchase, resend)| Step::Session { user, minute, cart_adds, purchase, resend }),
    ];
    prop::collection::vec(step, 0..max_len)
}

fn fingerprint(tx: &Transaction) -> u64 {
    xxhash_rust::xxh3::xxh3_64(format!("{tx:?}").as_bytes())
}

/// Turns steps into arrivals. Refund targets and resends refer to earlier new events.
pub fn arrivals(steps: &[Step]) -> Vec<Arrival> {
    let mut made: Vec<Decoded> = Vec::new();
    let mut out = Vec::new();
    for (n, step) in steps.iter().enumerate() {
        match step {
            Step::New { user, minute, total, refund_of, lines } => {
                let original = refund_of.map(|i| match made.len() {
                    0 => format!("unknown-{i}"),
                    len if i % 5 == 0 => format!("unknown-{}", i as usize % len),
                    len => made[i as usize % len].tx.transaction_id.clone(),
                });
                let tx = Transaction {
                    kind: if original.is_some() { EventKind::Refund } else { EventKind::Purchase },
                    transaction_id: format!("t{n}"),
                    original_transaction_id: original,
                    user_id: format!("u{user}"),
                    timestamp: base_time()
                        + Duration::minutes(i64::from(*minute))
                        + Duration::milliseconds(i64::from(*minute % 7)),
                    items: lines
                        .iter()
                        .map(|&(p, q, price, name)| LineItem {
                            product_id: format!("p{p}"),
                            product_name: (name > 0).then(|| format!("Product {p} v{name}")),
                            category: (name != 1).then(|| format!("cat{}", (p + name) % 3)),
                            subcategory: None,
                            brand: None,
                            quantity: i64::from(q),
                            unit_price_cents: AMOUNTS[price as usize],
                            discount_cents: if q > 1 { AMOUNTS[price as usize] / 10 } else { 0 },
                        })
                        .collect(),
                    total_cents: AMOUNTS[*total as usize],
                    payment_method: None,
                    location: None,
                };
                let d = Decoded { fingerprint: fingerprint(&tx), tx };
                made.push(d.clone());
                out.push(Arrival::Event(d));
            }
            Step::Resend(i) if !made.is_empty() => out.push(Arrival::Event(made[*i as usize % made.len()].clone())),
            Step::Conflict(i) if !made.is_empty() => {
                let mut d = made[*i as usize % made.len()].clone();
                d.tx.total_cents += 1;
                d.fingerprint = fingerprint(&d.tx);
                out.push(Arrival::Event(d));
            }
            Step::Flush { hours } => out.push(Arrival::Flush(*hours)),
            Step::Session { user, minute, cart_adds, purchase, resend } => {
                let start = base_time() + Duration::minutes(i64::from(*minute));
                // A resend repeats the previous session id (same or different content).
                let id = if *resend && n > 0 { format!("s{}", n - 1) } else { format!("s{n}") };
                let session = Session {
                    session_id: id,
                    user_id: format!("u{user}"),
                    session_start: start,
                    session_end: start + Duration::minutes(i64::from(*cart_adds) * 7 + 1),
                    page_views: 3,
                    products_viewed: 2,
                    cart_adds: i64::from(*cart_adds),
                    cart_removes: 0,
                    purchase_completed: *purchase,
                };
                let fingerprint = xxhash_rust::xxh3::xxh3_64(format!("{session:?}").as_bytes());
                out.push(Arrival::Session(Decoded { tx: session, fingerprint }));
            }
            _ => {}
        }
    }
    out
}

/// The part (of `parts`) a customer's events go to, as input partitions split customers.
pub fn part_of(user: &str, parts: usize) -> usize {
    user.bytes().map(usize::from).sum::<usize>() % parts
}

/// What a split run asks of a test: apply an event (first arrivals only: the engine's dedup
/// runs before the aggregates) to a part, or flush.
pub enum Split<'a> {
    Event { part: usize, tx: &'a Transaction, arrival: u64 },
    Flush { as_of: DateTime<Utc>, full: bool },
}

/// Drives a test of an aggregate split over `parts`: every first-seen event to the part of
/// its customer with its arrival number, a flush at each `Flush` step (`as_of` at the
/// latest event time plus its hours, never moving backwards), then one more flush and a
/// complete one.
pub fn split_run(
    arrivals: &[Arrival],
    parts: usize,
    final_hours: i16,
    mut on: impl FnMut(Split<'_>) -> Result<(), TestCaseError>,
) -> Result<(), TestCaseError> {
    let (mut seen, mut latest, mut as_of, mut arrival) =
        (std::collections::HashSet::new(), base_time(), base_time(), 0u64);
    for a in arrivals {
        match a {
            Arrival::Event(d) if seen.insert(d.tx.transaction_id.clone()) => {
                arrival += 1;
                latest = latest.max(d.tx.timestamp);
                on(Split::Event { part: part_of(&d.tx.user_id, parts), tx: &d.tx, arrival })?;
            }
            Arrival::Flush(hours) => {
                as_of = as_of.max(latest + Duration::hours(i64::from(*hours)));
                on(Split::Flush { as_of, full: false })?;
            }
            _ => {}
        }
    }
    as_of = as_of.max(latest + Duration::hours(i64::from(final_hours)));
    on(Split::Flush { as_of, full: false })?;
    on(Split::Flush { as_of, full: true })
}
