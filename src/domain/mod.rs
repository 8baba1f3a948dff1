//! The pure core: the event model and the incremental aggregates, with no async, no clocks
//! and no I/O. Given events and an `as_of`, it produces view documents and their changes.
//!
//! - [`money`]: integer cents and the SPEC's rounding.
//! - [`event`]: a decoded, valid transaction.
//! - [`decode`]: bytes → [`event::Transaction`] or a dead-letter [`decode::Rejection`], in one
//!   pass over the JSON without a DOM (`decode::scan`), the fingerprint computed as it goes.
//! - [`interned`]: ids interned into one buffer with dense 32-bit handles (customers, keys).
//! - [`dedup`]: which `transaction_id`s were applied, within the dedup horizon.
//! - [`ranked`]: the order-statistic set behind tie-aware quintiles.
//! - [`calendar`]: day numbers, ISO weeks, months, date and time keys.
//! - [`rfm`]: per-customer RFM state and the `customer_rfm_analysis` documents.
//! - [`product`]: per-product day buckets over the sliding window, `product_performance`.
//! - [`trends`]: daily / ISO-weekly / monthly buckets, `sales_trends`.
//! - [`session`]: browsing-session summaries (`customer_sessions` topic) and their facts.
//! - [`warehouse`]: the star schema's facts and dimensions, with stable surrogate keys.
//! - [`reconcile`]: the state's figures at a cut, their comparison with PostgreSQL's, repairs.
//! - [`partials`]: scale-out: what a part (some partitions' state) sends, and the views
//!   every partition adds to, kept by one owner from every part's partials.
//! - [`quintiles`]: quintile boundaries from value → count summaries, which the owners of
//!   different partitions exchange to score against every customer (scale-out).
//! - [`engine`]: all of the above behind `apply(event)` and `flush(as_of)`.
//! - [`batch`]: a straightforward full recompute of every view, the oracle the incremental
//!   engine is tested against (and the baseline it is benchmarked against).

pub mod batch;
pub mod calendar;
pub mod decode;
pub mod dedup;
pub mod engine;
pub mod event;
pub mod interned;
pub mod money;
pub mod partials;
pub mod product;
pub mod quintiles;
pub mod ranked;
pub mod reconcile;
pub mod rfm;
pub mod session;
#[cfg(test)]
pub(crate) mod testgen;
pub mod trends;
pub mod warehouse;

pub use decode::{decode, Decoded, RejectReason, Rejection};

/// The state's hash maps and sets: foldhash (fast, seeded per process) instead of the
/// standard library's SipHash, which showed in the engine's profile.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
pub type FastIndexMap<K, V> = indexmap::IndexMap<K, V, foldhash::fast::RandomState>;
pub use engine::{Engine, Outcome, ViewChanges, ViewConfig};
pub use event::{EventKind, LineItem, Location, Transaction};
