//! Scale-out (docs/DESIGN.md): what the state of some input partitions (a *part*, see
//! [`super::Engine::new_part`]) sends the others between two flushes, and the views that
//! span every partition, kept by one owner from every part's partials.
//!
//! A part keeps its customers (RFM figures and rank index, dedup, facts) and scores them
//! against the value counts of every customer; what products and trends its events add it
//! only sums, for the owner. Together, parts and owner write the views one engine holding
//! every event writes (the engine's property test `parts_and_an_owner_write_the_views_of_one_engine`).

use chrono::{DateTime, Utc};

use super::product::{ProductChanges, ProductDeltas, ProductState};
use super::quintiles::CountDelta;
use super::trends::{TrendChanges, TrendDeltas, TrendState};
use super::ViewConfig;

/// A part's changes since it last sent them.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Partials {
    /// How the counts of its customers' R, F and M values changed (for the quintiles).
    pub rfm_counts: Vec<CountDelta>,
    pub products: ProductDeltas,
    pub trends: TrendDeltas,
}

impl Partials {
    /// Adds another part's (the owner gathers every part's before applying them).
    pub fn merge(&mut self, other: Partials) {
        self.rfm_counts.extend(other.rfm_counts);
        self.products.merge(other.products);
        self.trends.merge(other.trends);
    }
}

/// The views every partition adds to: product_performance and sales_trends, from every
/// part's partials.
#[derive(Debug, Clone)]
pub struct SharedViews {
    products: ProductState,
    trends: TrendState,
}

impl SharedViews {
    pub fn new(config: &ViewConfig) -> Self {
        SharedViews {
            products: ProductState::new(config.products.clone()),
            trends: TrendState::new(config.trends.clone()),
        }
    }

    /// Applies the gathered partials of every part; returns the products whose attributes
    /// changed (their dim_product rows).
    pub fn apply(&mut self, gathered: &Partials) -> Vec<String> {
        self.trends.apply_deltas(&gathered.trends);
        self.products.apply_deltas(&gathered.products)
    }

    /// The dim_product row of `product_id` under `key`, with its latest attributes.
    pub fn dim_product(&self, product_id: String, key: i32) -> Option<super::warehouse::DimProduct> {
        self.products.dim_row(product_id, key)
    }

    /// The documents that changed as of `as_of` (every document with `full`).
    pub fn flush(&mut self, as_of: DateTime<Utc>, full: bool) -> (ProductChanges, TrendChanges) {
        (self.products.flush(as_of, full), self.trends.flush(as_of, full))
    }
}
