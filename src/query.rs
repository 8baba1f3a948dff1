//! Interactive queries, served from the running state (like Kafka Streams' interactive
//! queries): fresher than MongoDB, which gets the same documents a moment later.
//!
//! The engine has one owner, the pipeline's worker; HTTP handlers send it a [`Query`] over a
//! channel and get the answer back, so the hot path takes no lock. Customers and segments
//! come from the RFM state; products and trends from a mirror of the last flushed documents
//! (small: the windowed views), so every answer is what the views hold after the last flush.

use std::collections::{BTreeMap, HashMap};

use chrono::SecondsFormat;
use mongodb::bson::{Bson, Document, RawDocumentBuf};
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, oneshot};

use crate::domain::product::ProductDoc;
use crate::domain::trends::{Granularity, TrendDoc};
use crate::domain::{Engine, ViewChanges};
use crate::sink::documents;

/// A question to the running state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    Customer(String),
    Segments,
    TopProducts { category: Option<String>, n: usize },
    Trends(Granularity),
}

/// `None`: not found.
pub type Answer = Option<Value>;

pub type Request = (Query, oneshot::Sender<Answer>);

/// The HTTP side's end: sends queries to the worker.
#[derive(Clone)]
pub struct QueryClient(mpsc::Sender<Request>);

impl QueryClient {
    /// The answer, or `Err` when the service is stopping.
    pub async fn ask(&self, q: Query) -> Result<Answer, ()> {
        let (tx, rx) = oneshot::channel();
        self.0.send((q, tx)).await.map_err(|_| ())?;
        rx.await.map_err(|_| ())
    }
}

pub fn channel() -> (QueryClient, mpsc::Receiver<Request>) {
    let (tx, rx) = mpsc::channel(64);
    (QueryClient(tx), rx)
}

/// The last flushed documents of the windowed views.
#[derive(Debug, Default)]
pub struct Mirror {
    products: HashMap<String, ProductDoc>,
    trends: BTreeMap<String, TrendDoc>,
}

impl Mirror {
    /// Applies a flush's changes, as the sink applies them to MongoDB.
    pub fn apply(&mut self, c: &ViewChanges) {
        if c.complete {
            self.products.clear();
            self.trends.clear();
        }
        for id in &c.products.deletes {
            self.products.remove(id);
        }
        for d in &c.products.upserts {
            self.products.insert(d.product_id.clone(), d.clone());
        }
        for id in &c.trends.deletes {
            self.trends.remove(id);
        }
        for d in &c.trends.upserts {
            self.trends.insert(d.id(), d.clone());
        }
    }

    /// Answers a query from the engine and the mirror.
    pub fn answer(&self, engine: &Engine, q: &Query) -> Answer {
        match q {
            Query::Customer(id) => customer(engine, id),
            Query::Segments => {
                let counts = engine.rfm().segment_counts();
                let total: u64 = counts.values().sum();
                Some(json!({ "customers": total, "segments": counts }))
            }
            shared => self.answer_shared(shared).flatten(),
        }
    }

    /// Answers a query about products or trends from the mirror; `None` for the others.
    pub fn answer_shared(&self, q: &Query) -> Option<Answer> {
        Some(match q {
            Query::Customer(_) | Query::Segments => return None,
            Query::TopProducts { category, n } => {
                let mut docs: Vec<&ProductDoc> =
                    self.products.values().filter(|d| category.as_ref().is_none_or(|c| &d.category == c)).collect();
                if docs.is_empty() && category.is_some() {
                    return None;
                }
                // Within a category by rank; across categories by revenue, then id.
                docs.sort_by(|a, b| {
                    if category.is_some() {
                        a.rank_in_category.cmp(&b.rank_in_category)
                    } else {
                        b.total_revenue_cents.cmp(&a.total_revenue_cents).then_with(|| a.product_id.cmp(&b.product_id))
                    }
                });
                let items: Vec<Value> =
                    docs.into_iter().take(*n).map(|d| view_json(documents::product(d, d.analysis_date).1)).collect();
                Some(json!({ "category": category, "products": items }))
            }
            Query::Trends(g) => {
                let items: Vec<Value> = self
                    .trends
                    .values()
                    .filter(|d| d.granularity == *g)
                    .map(|d| view_json(documents::trend(d, d.analysis_date).1))
                    .collect();
                Some(json!({ "trend_type": g.as_str(), "periods": items }))
            }
        })
    }
}

/// A customer's customer_rfm_analysis document as of the engine's last flush.
pub fn customer(engine: &Engine, id: &str) -> Answer {
    engine.rfm().view(id).map(|d| view_json(documents::rfm(&d, d.analysis_date).1))
}

/// Customers per segment from MongoDB's customer_rfm_analysis (every configured segment
/// listed, empty ones with 0): the answer of an instance that holds only some customers.
pub async fn segments_in(db: &mongodb::Database, names: Vec<String>) -> Answer {
    use futures::TryStreamExt;
    let pipeline = [mongodb::bson::doc! { "$group": { "_id": "$rfm_segment", "n": { "$sum": 1_i64 } } }];
    let groups: Vec<Document> =
        db.collection::<Document>(documents::CUSTOMER_RFM).aggregate(pipeline).await.ok()?.try_collect().await.ok()?;
    let mut counts: BTreeMap<String, u64> = names.into_iter().map(|n| (n, 0)).collect();
    for g in groups {
        if let Ok(name) = g.get_str("_id") {
            counts.insert(name.to_owned(), g.get_i64("n").unwrap_or(0) as u64);
        }
    }
    let total: u64 = counts.values().sum();
    Some(json!({ "customers": total, "segments": counts }))
}

/// A customer's customer_rfm_analysis document as MongoDB holds it.
pub async fn customer_in(db: &mongodb::Database, id: &str) -> Answer {
    let found = db.collection::<Document>(documents::CUSTOMER_RFM).find_one(mongodb::bson::doc! { "_id": id }).await;
    found.ok().flatten().map(to_json)
}

/// A view document as the sink builds it, as plain JSON (see [`to_json`]).
fn view_json(raw: RawDocumentBuf) -> Value {
    // The sink's own encoding of a document: always well-formed BSON.
    to_json(raw.to_document().unwrap_or_default())
}

/// A view document as plain JSON: dates as RFC 3339 strings; `_id` and `updated_at` (a
/// MongoDB write's own stamp) left out.
pub fn to_json(doc: Document) -> Value {
    let mut out = Map::new();
    for (k, v) in doc {
        if k == "_id" || k == "updated_at" {
            continue;
        }
        out.insert(k, bson_to_json(v));
    }
    Value::Object(out)
}

fn bson_to_json(v: Bson) -> Value {
    match v {
        Bson::DateTime(t) => chrono::DateTime::from_timestamp_millis(t.timestamp_millis())
            .map_or(Value::Null, |t| Value::String(t.to_rfc3339_opts(SecondsFormat::Millis, true))),
        Bson::Document(d) => to_json(d),
        Bson::Array(a) => Value::Array(a.into_iter().map(bson_to_json).collect()),
        other => other.into_relaxed_extjson(),
    }
}
