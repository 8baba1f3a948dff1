//! Deterministic GlobalMart transaction streams (SPEC §1) from a seed: skewed customer
//! activity (a few heavy buyers, many one-off), a product catalogue over categories,
//! multi-line baskets with discounts, refunds of earlier purchases, exact resends (pretty
//! printed, so only whitespace differs), conflicting resends, malformed events of every
//! dead-letter reason, and late events.
//!
//! Each generated message carries a [`Label`] saying what martstream must do with it, and
//! the Kafka message timestamp a real producer would have given it (shortly after the event).

pub mod postgres;

// The broker and the topic of the bare measuring tools (`bare_consumer`, `cluster_bench`); a
// plain comment: a doc comment would become their --help text.
#[derive(Debug, clap::Args)]
pub struct TopicArgs {
    #[arg(long, default_value = "127.0.0.1:19092")]
    pub brokers: String,
    #[arg(long)]
    pub topic: String,
}

use chrono::{DateTime, Duration, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

/// What martstream must do with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Label {
    /// A valid event seen for the first time: applied.
    Valid,
    /// An exact resend of an earlier valid event: dropped.
    Duplicate,
    /// An earlier id with different content: dead-lettered as `conflicting_duplicate`.
    Conflicting,
    /// Dead-lettered with this reason.
    Malformed(&'static str),
}

#[derive(Debug, Clone)]
pub struct Message {
    pub key: String,
    pub payload: String,
    pub timestamp: DateTime<Utc>,
    pub label: Label,
}

#[derive(Debug, Clone)]
pub struct GenConfig {
    pub seed: u64,
    pub events: usize,
    pub customers: usize,
    pub products: usize,
    /// Event times run from `start` over `days`.
    pub start: DateTime<Utc>,
    pub days: u32,
    pub refund_rate: f64,
    pub duplicate_rate: f64,
    pub conflict_rate: f64,
    pub malformed_rate: f64,
    /// Share of events whose time is hours to days behind the stream.
    pub late_rate: f64,
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig {
            seed: 42,
            events: 10_000,
            customers: 2_000,
            products: 300,
            start: "2026-09-01T00:00:00Z".parse().unwrap(),
            days: 90,
            refund_rate: 0.05,
            duplicate_rate: 0.02,
            conflict_rate: 0.003,
            malformed_rate: 0.01,
            late_rate: 0.03,
        }
    }
}

pub const CATEGORIES: [(&str, &[&str]); 6] = [
    ("Electronics", &["Phones", "Laptops", "Audio"]),
    ("Clothing", &["Men", "Women", "Kids"]),
    ("Home", &["Kitchen", "Garden", "Decor"]),
    ("Books", &["Fiction", "Non-fiction"]),
    ("Sports", &["Outdoor", "Fitness"]),
    ("Beauty", &["Skincare", "Makeup"]),
];
const BRANDS: [&str; 6] = ["Acme", "Globex", "Initech", "Umbrella", "Stark", "Wayne"];
const PAYMENTS: [&str; 4] = ["credit_card", "debit_card", "paypal", "cash"];
const PLACES: [(&str, &str, &str); 5] = [
    ("USA", "California", "San Francisco"),
    ("USA", "New York", "New York"),
    ("UK", "England", "London"),
    ("Germany", "Bavaria", "Munich"),
    ("India", "Karnataka", "Bengaluru"),
];
/// Resends pick among this many latest valid events.
const RESEND_WINDOW: usize = 300;
/// How many purchases refunds pick from at most (about 1 KiB each): a 10M-event run kept
/// every one and ran out of memory; runs with fewer purchases are unchanged.
const REFUNDABLE: usize = 250_000;

pub const MALFORMED_REASONS: [&str; 7] = [
    "invalid_json",
    "missing_field",
    "wrong_type",
    "invalid_timestamp",
    "out_of_range",
    "unknown_event_type",
    "future_timestamp",
];

/// Cents as a JSON number of currency units (`1999` → `19.99`).
pub fn money(cents: i64) -> Value {
    json!(cents as f64 / 100.0)
}

struct Purchase {
    value: Value,
    lines: Vec<(String, i64, i64)>, // product_id, quantity, line amount (cents)
}

pub struct Generator {
    cfg: GenConfig,
    rng: ChaCha8Rng,
    made: usize,
    /// Purchases that refunds may pick: all of them up to `REFUNDABLE`, then a ring of that
    /// many (memory stays bounded on long runs; shorter runs are unchanged).
    purchases: Vec<Purchase>,
    purchases_made: usize,
    /// The last `RESEND_WINDOW` valid events (what resends pick), and how many there were.
    valid: std::collections::VecDeque<Value>,
    valid_made: usize,
    prices: Vec<i64>,
    malformed_next: usize,
}

impl Generator {
    pub fn new(cfg: GenConfig) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let prices = (0..cfg.products).map(|_| rng.gen_range(199..99_999)).collect();
        Generator {
            cfg,
            rng,
            made: 0,
            purchases: Vec::new(),
            purchases_made: 0,
            valid: Default::default(),
            valid_made: 0,
            prices,
            malformed_next: 0,
        }
    }

    /// Index in `0..n`, skewed towards 0: a few hot customers and products.
    fn skewed(&mut self, n: usize) -> usize {
        let u: f64 = self.rng.gen();
        ((u.powf(2.5) * n as f64) as usize).min(n - 1)
    }

    fn product(&mut self) -> (String, Value) {
        let i = self.skewed(self.cfg.products);
        let (category, subs) = CATEGORIES[i % CATEGORIES.len()];
        let id = format!("P{i:05}");
        let item = json!({
            "product_id": id,
            "product_name": format!("{category} item {i}"),
            "category": category,
            "subcategory": subs[i % subs.len()],
            "brand": BRANDS[i % BRANDS.len()],
        });
        (id, item)
    }

    fn event_time(&mut self) -> DateTime<Utc> {
        let span_ms = i64::from(self.cfg.days) * 86_400_000;
        let progress = self.made as f64 / self.cfg.events.max(1) as f64;
        let mut t =
            self.cfg.start + Duration::milliseconds((progress * span_ms as f64) as i64 + self.rng.gen_range(0..60_000));
        if self.rng.gen_bool(self.cfg.late_rate) {
            t -= Duration::minutes(self.rng.gen_range(60..4 * 24 * 60));
        }
        t
    }

    fn purchase(&mut self, t: DateTime<Utc>) -> Purchase {
        let user = format!("C{:06}", self.skewed(self.cfg.customers));
        let n_lines = 1 + self.skewed(4);
        let mut items = Vec::new();
        let mut lines = Vec::new();
        let mut total = 0;
        for _ in 0..n_lines {
            let (id, mut item) = self.product();
            if lines.iter().any(|(p, _, _)| *p == id) {
                continue;
            }
            let price = self.prices[id[1..].parse::<usize>().unwrap()];
            let qty = 1 + self.skewed(3) as i64;
            let discount = if self.rng.gen_bool(0.2) { qty * price * self.rng.gen_range(5..20) / 100 } else { 0 };
            item["quantity"] = json!(qty);
            item["unit_price"] = money(price);
            if discount > 0 {
                item["discount"] = money(discount);
            }
            let amount = qty * price - discount;
            total += amount;
            lines.push((id, qty, amount));
            items.push(item);
        }
        let (country, region, city) = PLACES[self.rng.gen_range(0..PLACES.len())];
        let mut value = json!({
            "event_type": "purchase",
            "transaction_id": format!("T{:08}-{}", self.made, self.cfg.seed),
            "user_id": user,
            "timestamp": t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "items": items,
            "total_amount": money(total),
            "payment_method": PAYMENTS[self.rng.gen_range(0..PAYMENTS.len())],
        });
        if self.rng.gen_bool(0.8) {
            value["location"] = json!({"country": country, "region": region, "city": city});
        }
        Purchase { value, lines }
    }

    fn refund(&mut self, t: DateTime<Utc>) -> Option<Value> {
        if self.purchases.is_empty() {
            return None;
        }
        let p = &self.purchases[self.rng.gen_range(0..self.purchases.len())];
        let line = self.rng.gen_range(0..p.lines.len());
        let (product_id, qty, amount) = p.lines[line].clone();
        let mut item = p.value["items"][line].clone();
        item["quantity"] = json!(qty);
        let original_ts: DateTime<Utc> = p.value["timestamp"].as_str()?.parse().ok()?;
        let ts = original_ts.max(t - Duration::hours(1)) + Duration::hours(1);
        debug_assert_eq!(item["product_id"], json!(product_id));
        Some(json!({
            "event_type": "refund",
            "transaction_id": format!("R{:08}-{}", self.made, self.cfg.seed),
            "original_transaction_id": p.value["transaction_id"],
            "user_id": p.value["user_id"],
            "timestamp": ts.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "items": [item],
            "total_amount": money(amount),
        }))
    }

    /// A malformed event at time `t`, sent at `sent`.
    fn malformed(&mut self, t: DateTime<Utc>, sent: DateTime<Utc>) -> (String, &'static str) {
        let reason = MALFORMED_REASONS[self.malformed_next % MALFORMED_REASONS.len()];
        self.malformed_next += 1;
        let mut v = self.purchase(t).value;
        v["transaction_id"] = json!(format!("X{:08}-{}", self.made, self.cfg.seed));
        match reason {
            "invalid_json" => return (format!("{{\"transaction_id\": \"X{}\", oops", self.made), reason),
            "missing_field" => drop(v.as_object_mut().unwrap().remove("user_id")),
            "wrong_type" => v["items"][0]["quantity"] = json!("2"),
            "invalid_timestamp" => v["timestamp"] = json!("2026-13-45 25:00:00"),
            "out_of_range" => v["items"][0]["quantity"] = json!(0),
            "unknown_event_type" => v["event_type"] = json!("exchange"),
            "future_timestamp" => {
                // Past the send time (a late event's own time may be days behind it).
                v["timestamp"] = json!((sent + Duration::days(3)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            }
            _ => unreachable!(),
        }
        (v.to_string(), reason)
    }

    /// One of the last few hundred valid events: producers resend soon after a send, well
    /// within martstream's dedup horizon.
    fn recent_valid(&mut self) -> Value {
        let n = self.valid_made;
        let i = self.rng.gen_range(n.saturating_sub(RESEND_WINDOW)..n);
        self.valid[i - (n - self.valid.len())].clone()
    }

    fn remember_valid(&mut self, v: Value) {
        if self.valid.len() == RESEND_WINDOW {
            self.valid.pop_front();
        }
        self.valid.push_back(v);
        self.valid_made += 1;
    }

    fn remember_purchase(&mut self, p: Purchase) {
        if self.purchases.len() < REFUNDABLE {
            self.purchases.push(p);
        } else {
            self.purchases[self.purchases_made % REFUNDABLE] = p;
        }
        self.purchases_made += 1;
    }

    fn message(&mut self, value: &Value, pretty: bool, t: DateTime<Utc>, label: Label) -> Message {
        let payload = if pretty { serde_json::to_string_pretty(value).unwrap() } else { value.to_string() };
        let key = value["user_id"].as_str().unwrap_or("unknown").to_owned();
        Message { key, payload, timestamp: t, label }
    }
}

impl Iterator for Generator {
    type Item = Message;

    fn next(&mut self) -> Option<Message> {
        if self.made >= self.cfg.events {
            return None;
        }
        let t = self.event_time();
        // What a producer stamps: shortly after the event (late events are sent late).
        let sent = t.max(
            self.cfg.start
                + Duration::milliseconds(
                    (self.made as f64 / self.cfg.events as f64 * f64::from(self.cfg.days) * 86_400_000.0) as i64,
                ),
        ) + Duration::seconds(self.rng.gen_range(0..30));
        let roll: f64 = self.rng.gen();
        let c = self.cfg.clone();
        let message = if roll < c.malformed_rate {
            let (payload, reason) = self.malformed(t, sent);
            Message {
                key: format!("C{:06}", self.made % c.customers),
                payload,
                timestamp: sent,
                label: Label::Malformed(reason),
            }
        } else if roll < c.malformed_rate + c.duplicate_rate && !self.valid.is_empty() {
            let v = self.recent_valid();
            self.message(&v, true, sent, Label::Duplicate)
        } else if roll < c.malformed_rate + c.duplicate_rate + c.conflict_rate && !self.valid.is_empty() {
            let mut v = self.recent_valid();
            let total = (v["total_amount"].as_f64().unwrap() * 100.0).round() as i64;
            v["total_amount"] = money(total + 100);
            self.message(&v, false, sent, Label::Conflicting)
        } else if roll < c.malformed_rate + c.duplicate_rate + c.conflict_rate + c.refund_rate {
            match self.refund(t) {
                Some(v) => {
                    let ts: DateTime<Utc> = v["timestamp"].as_str().unwrap().parse().unwrap();
                    self.remember_valid(v.clone());
                    self.message(&v, false, sent.max(ts), Label::Valid)
                }
                None => return self.next(),
            }
        } else {
            let p = self.purchase(t);
            let v = p.value.clone();
            self.remember_purchase(p);
            self.remember_valid(v.clone());
            self.message(&v, false, sent, Label::Valid)
        };
        self.made += 1;
        Some(message)
    }
}

/// Browsing-session summaries for the `customer_sessions` topic, over the same customers
/// and time span: some with cart adds and no purchase (abandoned), a few exact resends and
/// a few malformed ones.
pub fn sessions(cfg: &GenConfig, count: usize) -> Vec<Message> {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5e55_1045);
    let mut out: Vec<Message> = Vec::with_capacity(count);
    for i in 0..count {
        let start = cfg.start
            + Duration::milliseconds((i as f64 / count.max(1) as f64 * f64::from(cfg.days) * 86_400_000.0) as i64)
            + Duration::seconds(rng.gen_range(0..3600));
        let sent = start + Duration::hours(2);
        let roll: f64 = rng.gen();
        if roll < 0.03 && !out.is_empty() {
            let prev = out.iter().rev().find(|m| m.label == Label::Valid).cloned();
            if let Some(mut m) = prev {
                m.label = Label::Duplicate;
                m.timestamp = sent;
                out.push(m);
                continue;
            }
        }
        let user = format!("C{:06}", ((rng.gen::<f64>().powf(2.5)) * cfg.customers as f64) as usize);
        let cart_adds = if rng.gen_bool(0.6) { rng.gen_range(1..5) } else { 0 };
        let mut v = json!({
            "session_id": format!("S{i:08}-{}", cfg.seed),
            "user_id": user,
            "session_start": start.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "session_end": (start + Duration::seconds(rng.gen_range(30..3600))).to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "page_views": rng.gen_range(1..40),
            "products_viewed": rng.gen_range(0..15),
            "cart_adds": cart_adds,
            "cart_removes": if cart_adds > 1 { 1 } else { 0 },
            "purchase_completed": cart_adds > 0 && rng.gen_bool(0.4),
        });
        let label = if roll > 0.98 {
            v["page_views"] = json!("many");
            Label::Malformed("wrong_type")
        } else {
            Label::Valid
        };
        out.push(Message { key: user, payload: v.to_string(), timestamp: sent, label });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream() {
        let cfg = GenConfig { events: 500, ..GenConfig::default() };
        let a: Vec<String> = Generator::new(cfg.clone()).map(|m| m.payload).collect();
        let b: Vec<String> = Generator::new(cfg).map(|m| m.payload).collect();
        assert_eq!(a.len(), 500);
        assert_eq!(a, b);
    }

    #[test]
    fn every_kind_of_message_appears() {
        let cfg = GenConfig { events: 5000, malformed_rate: 0.05, ..GenConfig::default() };
        let labels: Vec<Label> = Generator::new(cfg).map(|m| m.label).collect();
        for reason in MALFORMED_REASONS {
            assert!(labels.contains(&Label::Malformed(reason)), "{reason}");
        }
        assert!(labels.contains(&Label::Duplicate));
        assert!(labels.contains(&Label::Conflicting));
    }
}
