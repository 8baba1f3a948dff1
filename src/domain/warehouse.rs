//! The star schema (SPEC §6): one fact per purchase line (`fact_sales`) or refund line
//! (`fact_returns`), and the dimensions they point at through integer surrogate keys.
//!
//! Keys are handed out in order of first appearance, starting after the largest key already
//! known; the adapters preload the keys a database already holds, so a key once given never
//! changes across restarts and replays into the same database. Facts are emitted once, at
//! the flush after their event, and written idempotently by `sale_id`; between flushes they
//! wait in memory (the pipeline stops consuming when too many wait, e.g. during an outage).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};

use super::calendar::{date_key, epoch_day, time_key};
use super::event::{EventKind, Location, Transaction};
use super::money::Cents;

/// Natural key → surrogate key, never reassigned. The natural keys are interned (one
/// buffer, 32-bit handles), the surrogate keys held by handle.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct KeyRegistry {
    ids: super::interned::Interner,
    /// The surrogate key of each handle.
    #[serde(deserialize_with = "super::interned::exact_vec")]
    keys: Vec<i32>,
    next: i32,
}

impl Default for KeyRegistry {
    fn default() -> Self {
        Self::starting_at(1)
    }
}

impl KeyRegistry {
    /// The key of `k`, and whether it was handed out just now.
    pub fn key(&mut self, k: &str) -> (i32, bool) {
        let (handle, new) = self.ids.intern(k);
        if new {
            self.keys.push(self.next);
            self.next += 1;
        }
        (self.keys[handle as usize], new)
    }

    /// An empty registry whose first key is `next`.
    pub fn starting_at(next: i32) -> Self {
        KeyRegistry { ids: Default::default(), keys: Vec::new(), next }
    }

    pub fn get(&self, k: &str) -> Option<i32> {
        self.ids.get(k).map(|h| self.keys[h as usize])
    }

    /// Takes a key already given (by an earlier run, read from the database).
    pub fn preload(&mut self, k: &str, key: i32) {
        self.next = self.next.max(key + 1);
        match self.ids.intern(k) {
            (_, true) => self.keys.push(key),
            (handle, false) => self.keys[handle as usize] = key,
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// The customers' surrogate keys, by the customer's handle in the RFM state (which interns
/// every customer id the engine sees: one copy of each id for both): 4 bytes a customer.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CustomerKeys {
    /// The key of each handle; 0 while it has none (a customer known only from a repair).
    #[serde(deserialize_with = "super::interned::exact_vec")]
    keys: Vec<i32>,
    next: i32,
}

impl Default for CustomerKeys {
    fn default() -> Self {
        Self::starting_at(1)
    }
}

impl CustomerKeys {
    /// No keys yet; the first one given is `next`.
    pub fn starting_at(next: i32) -> Self {
        CustomerKeys { keys: Vec::new(), next }
    }

    /// The key of the customer `handle`, and whether it was handed out just now.
    pub fn key(&mut self, handle: u32) -> (i32, bool) {
        if let Some(key) = self.get(handle) {
            return (key, false);
        }
        let key = self.next;
        self.next += 1;
        self.set(handle, key);
        (key, true)
    }

    pub fn get(&self, handle: u32) -> Option<i32> {
        self.keys.get(handle as usize).copied().filter(|&k| k != 0)
    }

    /// Takes a key already given (by an earlier run, read from the database).
    pub fn preload(&mut self, handle: u32, key: i32) {
        self.next = self.next.max(key + 1);
        self.set(handle, key);
    }

    fn set(&mut self, handle: u32, key: i32) {
        let i = handle as usize;
        if self.keys.len() <= i {
            self.keys.resize(i + 1, 0);
        }
        self.keys[i] = key;
    }
}

/// A location's natural key: country, region and city in one string (absent parts marked
/// apart from empty ones), so it is looked up without allocating.
pub type LocationKey = Box<str>;

/// Writes the natural key of a location into `out` (cleared first).
pub fn write_location_key(l: &Location, out: &mut String) {
    out.clear();
    out.push_str(&l.country);
    for part in [&l.region, &l.city] {
        match part {
            None => out.push_str("\u{1f}-"),
            Some(p) => {
                let _ = write!(out, "\u{1f}+{p}");
            }
        }
    }
}

pub fn location_natural_key(l: &Location) -> LocationKey {
    let mut key = String::new();
    write_location_key(l, &mut key);
    key.into()
}

/// One row of `fact_sales` or `fact_returns` (money in cents).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Fact {
    pub kind: EventKind,
    /// The line's index in its event: the fact's `sale_id` is `<transaction_id>:<line>`
    /// ([`Fact::sale_id`]), built when it is written rather than kept.
    pub line: u32,
    /// Shared by the facts of one event.
    pub transaction_id: Arc<str>,
    pub timestamp: DateTime<Utc>,
    pub date_key: i32,
    pub time_key: i32,
    pub product_key: i32,
    pub customer_key: i32,
    /// 0 when the event had no location.
    pub location_key: i32,
    pub quantity: i64,
    pub unit_price_cents: Cents,
    pub discount_cents: Cents,
    /// The line amount.
    pub total_cents: Cents,
    /// Shared by every fact with the same method ([`PaymentMethods`]).
    pub payment_method: Option<Arc<str>>,
}

impl Fact {
    /// `<transaction_id>:<line index>`: the fact's `_id` and `sale_id`.
    pub fn sale_id(&self) -> String {
        format!("{}:{}", self.transaction_id, self.line)
    }

    /// Whether this is the fact `sale_id` names (no allocation).
    pub fn is_sale(&self, sale_id: &str) -> bool {
        sale_id
            .strip_prefix(&*self.transaction_id)
            .and_then(|rest| rest.strip_prefix(':'))
            .is_some_and(|line| line.parse() == Ok(self.line))
    }

    /// The line index `sale_id` ends with, if it is `<transaction_id>:<line>`.
    pub fn line_of(sale_id: &str, transaction_id: &str) -> Option<u32> {
        sale_id.strip_prefix(transaction_id)?.strip_prefix(':')?.parse().ok()
    }
}

/// New or changed dimension members since the last flush. Products and customers are named
/// by natural id; their documents are completed from the product and RFM state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DimChanges {
    pub products: Vec<(i32, String)>,
    pub customers: Vec<(i32, String)>,
    pub locations: Vec<(i32, Location)>,
    pub dates: Vec<NaiveDate>,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Warehouse {
    pub products: KeyRegistry,
    pub customers: CustomerKeys,
    pub locations: KeyRegistry,
    dates: super::FastSet<i32>,
    pending_facts: Vec<Fact>,
    /// Facts a reconciliation repair removes (table, sale_id), written before
    /// `pending_facts`.
    pending_removals: Vec<(EventKind, String)>,
    pending_sessions: Vec<super::session::SessionFact>,
    changed_products: BTreeMap<i32, String>,
    new_customers: Vec<(i32, String)>,
    new_locations: Vec<(i32, Location)>,
    new_dates: Vec<NaiveDate>,
    /// dim_customer rows the view flushes changed (segment, lifetime value) since the bulk
    /// lane last took them, by customer key: the latest value of each, written once.
    /// Serialized in key order (the bytes an ordered map gives: one state, one snapshot).
    #[serde(serialize_with = "in_key_order")]
    restated_customers: super::FastMap<i32, DimCustomer>,
    /// The keys of `restated_customers` by the view-flush generation each first changed in
    /// (or was spread to): a bulk flush writes those whose wait is over
    /// ([`Restate::ChangedBy`]), oldest generation first and by key within one, so
    /// restates flow evenly instead of in bursts. Not in snapshots: rebuilt (every waiting
    /// row due at once) on the first take after a restore.
    #[serde(skip)]
    restate_queue: BTreeMap<u64, Vec<i32>>,
    #[serde(skip)]
    restate_queue_built: bool,
    /// Reused for building location keys.
    #[serde(skip)]
    scratch: String,
    #[serde(skip)]
    payment_methods: PaymentMethods,
}

/// The payment methods facts name, one shared copy of each (a handful of values, so
/// every line of every event does not carry a copy of its own).
#[derive(Debug, Clone, Default)]
struct PaymentMethods(Vec<Arc<str>>);

impl PaymentMethods {
    /// At most this many are kept; others get a copy each.
    const MOST: usize = 64;

    fn get(&mut self, method: Option<&str>) -> Option<Arc<str>> {
        let method = method?;
        if let Some(m) = self.0.iter().find(|m| ***m == *method) {
            return Some(m.clone());
        }
        let m: Arc<str> = Arc::from(method);
        if self.0.len() < Self::MOST {
            self.0.push(m.clone());
        }
        Some(m)
    }
}

/// Which of the dim_customer rows waiting to be restated a bulk flush writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restate {
    /// None (new customers' rows are always written, before their facts).
    None,
    /// Those that first changed in view flush generation `n` or earlier.
    ChangedBy(u64),
    All,
}

/// A map serialized as an ordered one would be: its entries in key order.
fn in_key_order<S: serde::Serializer, K: Ord + serde::Serialize, V: serde::Serialize>(
    map: &super::FastMap<K, V>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let mut entries: Vec<_> = map.iter().collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    serializer.collect_map(entries)
}

impl Warehouse {
    /// Facts waiting for the next flush.
    pub fn pending_facts(&self) -> usize {
        self.pending_facts.len() + self.pending_sessions.len() + self.pending_removals.len()
    }

    /// A browsing session of the customer `customer` (its RFM handle) becomes a
    /// `fact_customer_sessions` row.
    pub fn apply_session(&mut self, session: &super::session::Session, customer: u32) {
        let (customer_key, new) = self.customers.key(customer);
        if new {
            self.new_customers.push((customer_key, session.user_id.clone()));
        }
        let date = session.session_start.date_naive();
        if self.dates.insert(epoch_day(date)) {
            self.new_dates.push(date);
        }
        self.pending_sessions.push(super::session::SessionFact {
            session: session.clone(),
            customer_key,
            date_key: date_key(date),
        });
    }

    /// Session rows waiting for the next flush.
    pub fn take_sessions(&mut self) -> Vec<super::session::SessionFact> {
        std::mem::take(&mut self.pending_sessions)
    }

    /// Marks a product's dimension row for rewriting (its attributes changed).
    pub fn product_changed(&mut self, product_id: &str) {
        if let Some(key) = self.products.get(product_id) {
            self.changed_products.insert(key, product_id.to_owned());
        }
    }

    /// The facts of a transaction of the customer `customer` (its RFM handle).
    pub fn apply(&mut self, tx: &Transaction, customer: u32) {
        let (customer_key, new) = self.customers.key(customer);
        if new {
            self.new_customers.push((customer_key, tx.user_id.clone()));
        }
        let location_key = match &tx.location {
            None => 0,
            Some(l) => {
                write_location_key(l, &mut self.scratch);
                let (key, new) = self.locations.key(self.scratch.as_str());
                if new {
                    self.new_locations.push((key, l.clone()));
                }
                key
            }
        };
        let date = tx.date();
        if self.dates.insert(epoch_day(date)) {
            self.new_dates.push(date);
        }
        let transaction_id: Arc<str> = Arc::from(tx.transaction_id.as_str());
        let payment_method = self.payment_methods.get(tx.payment_method.as_deref());
        let (date_key, time_key) = (date_key(date), time_key(tx.timestamp));
        for (i, line) in tx.items.iter().enumerate() {
            let (product_key, new) = self.products.key(line.product_id.as_str());
            if new {
                self.changed_products.insert(product_key, line.product_id.clone());
            }
            self.pending_facts.push(Fact {
                kind: tx.kind,
                line: i as u32,
                transaction_id: transaction_id.clone(),
                timestamp: tx.timestamp,
                date_key,
                time_key,
                product_key,
                customer_key,
                location_key,
                quantity: line.quantity,
                unit_price_cents: line.unit_price_cents,
                discount_cents: line.discount_cents,
                total_cents: line.amount_cents(),
                payment_method: payment_method.clone(),
            });
        }
    }

    /// A repair's fact: the database's line, written as a fact with this state's keys (new
    /// ones for a customer or product no event named); `replaces`, the table of the fact of
    /// the same sale_id it replaces, which is removed first.
    pub fn put_fact(
        &mut self,
        line: &super::reconcile::FactLine,
        customer: u32,
        location_key: i32,
        replaces: Option<EventKind>,
    ) {
        // A repair puts the database's lines, whose sale_id is always `<transaction_id>:<line>`.
        let Some(fact_line) = Fact::line_of(&line.sale_id, &line.transaction_id) else {
            debug_assert!(false, "sale_id {} is not {}:<line>", line.sale_id, line.transaction_id);
            return;
        };
        if let Some(kind) = replaces {
            self.remove_fact(kind, &line.sale_id);
        }
        let (customer_key, new) = self.customers.key(customer);
        if new {
            self.new_customers.push((customer_key, line.customer_id.clone()));
        }
        let (product_key, new) = self.products.key(line.product_id.as_str());
        if new {
            self.changed_products.insert(product_key, line.product_id.clone());
        }
        let timestamp = DateTime::from_timestamp_millis(line.at_ms).unwrap_or_default();
        let date = timestamp.date_naive();
        if self.dates.insert(epoch_day(date)) {
            self.new_dates.push(date);
        }
        self.pending_facts.push(Fact {
            kind: line.kind,
            line: fact_line,
            transaction_id: Arc::from(line.transaction_id.as_str()),
            timestamp,
            date_key: date_key(date),
            time_key: time_key(timestamp),
            product_key,
            customer_key,
            location_key,
            quantity: line.quantity,
            unit_price_cents: line.unit_price_cents,
            discount_cents: line.discount_cents,
            total_cents: line.quantity * line.unit_price_cents - line.discount_cents,
            payment_method: self.payment_methods.get(line.payment_method.as_deref()),
        });
    }

    /// A repair removes the fact `sale_id` from the table of `kind`.
    pub fn remove_fact(&mut self, kind: EventKind, sale_id: &str) {
        self.pending_facts.retain(|f| !(f.kind == kind && f.is_sale(sale_id)));
        self.pending_removals.push((kind, sale_id.to_owned()));
    }

    /// Notes a customer's current dim_customer row (`customer_key`, the customer's id,
    /// segment and lifetime value), changed by view flush `generation`; an earlier one not
    /// yet taken is updated in place (and keeps its place in the queue).
    pub fn restate_customer(
        &mut self,
        customer_key: i32,
        customer_id: &str,
        segment: Option<&str>,
        lifetime_value_cents: Cents,
        generation: u64,
    ) {
        use std::collections::hash_map::Entry;
        match self.restated_customers.entry(customer_key) {
            Entry::Occupied(mut e) => {
                let row = e.get_mut();
                row.lifetime_value_cents = lifetime_value_cents;
                match (&mut row.customer_segment, segment) {
                    (Some(old), Some(new)) if old == new => {}
                    (Some(old), Some(new)) => new.clone_into(old),
                    (old, new) => *old = new.map(str::to_owned),
                }
            }
            Entry::Vacant(e) => {
                e.insert(DimCustomer {
                    customer_key,
                    customer_id: customer_id.to_owned(),
                    customer_segment: segment.map(str::to_owned),
                    lifetime_value_cents,
                });
                self.restate_queue.entry(generation).or_default().push(customer_key);
            }
        }
    }

    /// The restated dim_customer rows `restate` asks for, and those of `keys` (new
    /// customers, whose row must exist before their facts).
    pub fn take_restated(&mut self, restate: Restate, keys: &[(i32, String)]) -> Vec<DimCustomer> {
        if !self.restate_queue_built {
            // After a restore: the rows waiting are due (generation 0).
            self.restate_queue = BTreeMap::from([(0, self.restated_customers.keys().copied().collect())]);
            self.restate_queue_built = true;
        }
        let mut rows = Vec::new();
        match restate {
            Restate::All => {
                self.restate_queue.clear();
                // Taken, not drained: the table goes too (a restore's converging flush can
                // restate every customer once, and a drained table keeps its size).
                rows = std::mem::take(&mut self.restated_customers).into_values().collect();
                rows.sort_unstable_by_key(|row| row.customer_key);
                return rows;
            }
            Restate::ChangedBy(generation) => {
                while let Some(mut entry) = self.restate_queue.first_entry() {
                    if *entry.key() > generation {
                        break;
                    }
                    let keys = entry.get_mut();
                    keys.sort_unstable();
                    rows.extend(keys.iter().filter_map(|key| self.restated_customers.remove(key)));
                    entry.remove();
                }
            }
            Restate::None => {}
        }
        // A key taken here leaves its queue entry behind; taking it later finds nothing
        // (or the key's newer row, written a little early).
        rows.extend(keys.iter().filter_map(|(key, _)| self.restated_customers.remove(key)));
        // A hash table does not shrink as rows leave: after a burst (every customer restated
        // by a restore's converging flush), give the room back once it is mostly empty.
        let waiting = &mut self.restated_customers;
        if waiting.capacity() > 4096 && waiting.len() < waiting.capacity() / 8 {
            waiting.shrink_to(waiting.len() * 2);
        }
        rows
    }

    /// dim_customer rows waiting for the bulk lane.
    pub fn restated_customers(&self) -> usize {
        self.restated_customers.len()
    }

    /// The facts a repair removes since the last flush (written before the new facts).
    pub fn take_removals(&mut self) -> Vec<(EventKind, String)> {
        std::mem::take(&mut self.pending_removals)
    }

    /// The facts and the new or changed dimension members since the last flush.
    pub fn flush(&mut self) -> (Vec<Fact>, DimChanges) {
        let dims = DimChanges {
            products: std::mem::take(&mut self.changed_products).into_iter().collect(),
            customers: std::mem::take(&mut self.new_customers),
            locations: std::mem::take(&mut self.new_locations),
            dates: std::mem::take(&mut self.new_dates),
        };
        (std::mem::take(&mut self.pending_facts), dims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fact_names_its_sale_by_transaction_and_line() {
        let f = Fact {
            kind: EventKind::Purchase,
            line: 2,
            transaction_id: "tx:9".into(),
            timestamp: DateTime::default(),
            date_key: 0,
            time_key: 0,
            product_key: 1,
            customer_key: 1,
            location_key: 0,
            quantity: 1,
            unit_price_cents: 100,
            discount_cents: 0,
            total_cents: 100,
            payment_method: None,
        };
        assert_eq!(f.sale_id(), "tx:9:2");
        assert!(f.is_sale("tx:9:2"));
        assert!(!f.is_sale("tx:9:20") && !f.is_sale("tx:9") && !f.is_sale("tx:2") && !f.is_sale("tx:9:02x"));
        assert_eq!(Fact::line_of("tx:9:2", "tx:9"), Some(2));
        assert_eq!(Fact::line_of("tx:9:2", "tx"), None, "the id is the whole transaction id");
    }

    #[test]
    fn keys_are_stable_and_continue_after_preloaded_ones() {
        let mut r = KeyRegistry::default();
        r.preload("old", 7);
        assert_eq!(r.key("old"), (7, false));
        assert_eq!(r.key("new"), (8, true));
        assert_eq!(r.key("new"), (8, false));
        assert_eq!(r.len(), 2);
    }
}

/// A `dim_product` row.
#[derive(Debug, Clone, PartialEq)]
pub struct DimProduct {
    pub product_key: i32,
    pub product_id: String,
    pub product_name: Option<String>,
    pub category: String,
    pub subcategory: Option<String>,
    pub brand: Option<String>,
}

/// A `dim_customer` row: the current segment (none before the first purchase) and
/// lifetime value (= RFM monetary).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DimCustomer {
    pub customer_key: i32,
    pub customer_id: String,
    pub customer_segment: Option<String>,
    pub lifetime_value_cents: Cents,
}

/// Dimension rows to upsert.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DimDocs {
    pub products: Vec<DimProduct>,
    pub customers: Vec<DimCustomer>,
    pub locations: Vec<(i32, Location)>,
    pub dates: Vec<NaiveDate>,
}

impl DimDocs {
    pub fn is_empty(&self) -> bool {
        self.products.is_empty() && self.customers.is_empty() && self.locations.is_empty() && self.dates.is_empty()
    }
}
