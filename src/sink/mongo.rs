//! The MongoDB sink. Writes are batched `update` commands of many upsert statements
//! (`ordered: false`), each replacing a whole document by its natural `_id`: re-applying a
//! flush after a crash converges to the same documents. (`Client::bulk_write` would need
//! server 8.0; this works on 6.0 and 7.0.)

use std::time::Duration;

use chrono::{DateTime, Utc};
use mongodb::bson::{doc, Bson, Document};
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Client, Database, IndexModel};

use super::documents::{self, CUSTOMER_RFM, INDEXES, PRODUCT_PERFORMANCE, SALES_TRENDS};
use crate::config::{redact_uri, MongoConfig};
use crate::domain::ViewChanges;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("invalid MongoDB URI {uri}: {source}")]
    BadUri { uri: String, source: mongodb::error::Error },
    #[error("cannot reach MongoDB at {uri} within {timeout:?}: {reason}")]
    Unreachable { uri: String, timeout: Duration, reason: String },
    #[error("creating index {name} on {collection}: {source}")]
    Index { collection: String, name: String, source: mongodb::error::Error },
    #[error("MongoDB write to {collection} failed: {reason}")]
    Write { collection: String, reason: String },
}

/// Documents written by one flush, per collection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteStats {
    pub per_collection: Vec<(&'static str, usize)>,
}

#[derive(Clone)]
pub struct MongoSink {
    db: Database,
    batch_size: usize,
}

/// A MongoDB error in a few words: server selection failures name the underlying cause
/// instead of dumping the whole topology.
fn first_line(e: &mongodb::error::Error) -> String {
    let text = e.to_string();
    if let mongodb::error::ErrorKind::ServerSelection { .. } = *e.kind {
        for cause in ["Connection refused", "timed out", "Authentication failed", "replica set"] {
            if text.contains(cause) {
                return format!("no server available: {}", cause.to_lowercase());
            }
        }
        return "no server available".into();
    }
    text.lines().next().unwrap_or_default().chars().take(300).collect()
}

impl MongoSink {
    /// Connects and pings; an unreachable server is an error here, at start.
    pub async fn connect(config: &MongoConfig) -> Result<MongoSink, SinkError> {
        let uri = redact_uri(&config.uri);
        let timeout = Duration::from_millis(config.connect_timeout_ms);
        let mut options =
            ClientOptions::parse(&config.uri).await.map_err(|source| SinkError::BadUri { uri: uri.clone(), source })?;
        options.app_name = Some("martstream".into());
        options.server_selection_timeout = Some(timeout);
        options.connect_timeout = Some(timeout);
        let client = Client::with_options(options).map_err(|source| SinkError::BadUri { uri: uri.clone(), source })?;
        let sink = MongoSink { db: client.database(&config.database), batch_size: config.write_batch_size };
        sink.ping().await.map_err(|reason| SinkError::Unreachable { uri, timeout, reason })?;
        Ok(sink)
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    pub async fn ping(&self) -> Result<(), String> {
        self.db.run_command(doc! { "ping": 1 }).await.map(|_| ()).map_err(|e| first_line(&e))
    }

    /// Creates the batch design's indexes (idempotent).
    pub async fn prepare(&self) -> Result<(), SinkError> {
        for spec in INDEXES {
            let keys: Document = spec.keys.iter().map(|(k, dir)| (k.to_string(), Bson::Int32(*dir))).collect();
            let model = IndexModel::builder()
                .keys(keys)
                .options(IndexOptions::builder().name(spec.name.to_owned()).unique(spec.unique.then_some(true)).build())
                .build();
            self.db.collection::<Document>(spec.collection).create_index(model).await.map_err(|source| {
                SinkError::Index { collection: spec.collection.into(), name: spec.name.into(), source }
            })?;
        }
        Ok(())
    }

    /// Writes every changed document of one flush.
    pub async fn write(&self, changes: &ViewChanges, written_at: DateTime<Utc>) -> Result<WriteStats, SinkError> {
        let rfm: Vec<(Bson, Document)> = changes.rfm.iter().map(|d| documents::rfm(d, written_at)).collect();
        let products: Vec<(Bson, Document)> =
            changes.products.upserts.iter().map(|d| documents::product(d, written_at)).collect();
        let trends: Vec<(Bson, Document)> =
            changes.trends.upserts.iter().map(|d| documents::trend(d, written_at)).collect();
        let mut stats = WriteStats::default();
        stats.per_collection.push((CUSTOMER_RFM, self.upsert(CUSTOMER_RFM, rfm).await?));
        let n = self.delete(PRODUCT_PERFORMANCE, &changes.products.deletes).await?
            + self.upsert(PRODUCT_PERFORMANCE, products).await?;
        stats.per_collection.push((PRODUCT_PERFORMANCE, n));
        let n = self.delete(SALES_TRENDS, &changes.trends.deletes).await? + self.upsert(SALES_TRENDS, trends).await?;
        stats.per_collection.push((SALES_TRENDS, n));
        Ok(stats)
    }

    /// Deletes documents by `_id` (idempotent: deleting what is gone is fine).
    pub async fn delete(&self, collection: &str, ids: &[String]) -> Result<usize, SinkError> {
        let fail = |reason: String| SinkError::Write { collection: collection.into(), reason };
        for chunk in ids.chunks(self.batch_size) {
            let deletes: Vec<Document> = chunk.iter().map(|id| doc! { "q": { "_id": id }, "limit": 1 }).collect();
            let reply = self
                .db
                .run_command(doc! { "delete": collection, "deletes": deletes, "ordered": false })
                .await
                .map_err(|e| fail(first_line(&e)))?;
            if let Ok(errors) = reply.get_array("writeErrors") {
                return Err(fail(format!("{} deletes failed", errors.len())));
            }
        }
        Ok(ids.len())
    }

    /// Replaces (or inserts) each document by `_id`, in batched unordered `update` commands.
    pub async fn upsert(&self, collection: &str, docs: Vec<(Bson, Document)>) -> Result<usize, SinkError> {
        let fail = |reason: String| SinkError::Write { collection: collection.into(), reason };
        let total = docs.len();
        for chunk in docs.chunks(self.batch_size) {
            let updates: Vec<Document> = chunk
                .iter()
                .map(|(id, body)| doc! { "q": { "_id": id.clone() }, "u": body.clone(), "upsert": true })
                .collect();
            let reply = self
                .db
                .run_command(doc! { "update": collection, "updates": updates, "ordered": false })
                .await
                .map_err(|e| fail(first_line(&e)))?;
            if let Ok(errors) = reply.get_array("writeErrors") {
                let first =
                    errors.first().and_then(Bson::as_document).and_then(|d| d.get_str("errmsg").ok()).unwrap_or("?");
                return Err(fail(format!("{} of {} statements failed, first: {first}", errors.len(), chunk.len())));
            }
            if let Ok(wc) = reply.get_document("writeConcernError") {
                return Err(fail(format!("write concern: {}", wc.get_str("errmsg").unwrap_or("?"))));
            }
        }
        Ok(total)
    }
}
