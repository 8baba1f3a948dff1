//! The MongoDB sink. View and dimension documents are written by batched `update`
//! commands of upsert statements (`ordered: false`), each replacing a whole document by its
//! natural `_id`; facts, which never change once written, by batched `insert`s whose
//! duplicate-key errors are ignored. Either way re-applying a flush after a crash converges
//! to the same documents. Collections are written concurrently (facts after dimensions), a
//! few batches in flight each. (`Client::bulk_write` would need server 8.0; this works on
//! 6.0 and 7.0.)

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::{FutureExt, TryStreamExt};
use mongodb::bson::{doc, rawdoc, Bson, Document, RawArrayBuf, RawDocumentBuf};
use mongodb::error::ErrorKind;
use mongodb::options::{ClientOptions, IndexOptions, ValidationLevel};
use mongodb::{Client, Database, IndexModel};
use tokio::sync::Notify;

use super::documents::{
    self, CUSTOMER_RFM, DIM_CUSTOMER, DIM_DATE, DIM_LOCATION, DIM_PRODUCT, DIM_TIME, FACT_CUSTOMER_SESSIONS,
    FACT_RETURNS, FACT_SALES, INDEXES, PRODUCT_PERFORMANCE, SALES_TRENDS,
};
use crate::config::{redact_uri, MongoConfig};
use crate::domain::reconcile::FactLine;
use crate::domain::Engine;
use crate::domain::ViewChanges;
use crate::domain::{EventKind, Location};

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("invalid MongoDB URI {uri}: {source}")]
    BadUri { uri: String, source: mongodb::error::Error },
    #[error("cannot reach MongoDB at {uri} within {timeout:?}: {reason}")]
    Unreachable { uri: String, timeout: Duration, reason: String },
    #[error("MongoDB at {uri} refused the login: {reason}")]
    Login { uri: String, reason: String },
    #[error("creating index {name} on {collection}: {source}")]
    Index { collection: String, name: String, source: mongodb::error::Error },
    #[error("preparing {collection}: {reason}")]
    Prepare { collection: String, reason: String },
    #[error("reading {collection}: {reason}")]
    Read { collection: String, reason: String },
    #[error("MongoDB write to {collection} failed: {reason}")]
    Write { collection: String, reason: String },
}

/// Documents written by one flush, per collection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteStats {
    pub per_collection: Vec<(&'static str, usize)>,
    /// A complete flush: documents removed per view because the state does not hold them.
    pub stale_removed: Vec<(&'static str, u64)>,
}

/// Batches of one collection sent at once: several writers per collection, which the
/// server works on in parallel (the journal commit of `j: true` is shared by them).
const BATCHES_IN_FLIGHT: usize = 4;

/// Connections the pool may open unless the URI says (`maxPoolSize`): every batch in
/// flight at once holds one. The views lane writes 3 collections and the bulk lane up to 4
/// (dimensions) at a time, [`BATCHES_IN_FLIGHT`] each; the rest serve the readiness
/// ping, the query cache's reads and a reconciliation's. The driver's default of 10 would
/// queue the lanes' batches behind each other in the pool.
const POOL_SIZE: u32 = (BATCHES_IN_FLIGHT as u32) * (3 + 4) + 4;

#[derive(Clone)]
pub struct MongoSink {
    db: Database,
    batch_size: usize,
    views_first: Arc<ViewsFirst>,
    /// This handle's batches wait while a view flush is being written (the bulk lane's).
    yields_to_views: bool,
}

/// Every write waits for a majority of the replica set, journaled (MongoDB's own default for
/// a replica set since 5.0, made explicit so a server or driver default cannot weaken it):
/// a snapshot records a flush only once MongoDB acknowledged it (SPEC §7), so an
/// acknowledged write must survive a mongod crash or a failover, or the restored state
/// would claim documents MongoDB lost. On a replica set of one it costs a journal commit
/// per batch, shared by the batches in flight.
fn write_concern() -> RawDocumentBuf {
    rawdoc! { "w": "majority", "j": true }
}

/// A write command's reply: any write error (with `duplicates_ok`, except an insert's
/// duplicate key: the document is already there) or a write-concern error is a failure.
fn reply_ok(reply: &Document, duplicates_ok: bool) -> Result<(), String> {
    if let Ok(errors) = reply.get_array("writeErrors") {
        let already_there =
            |e: &Bson| duplicates_ok && e.as_document().and_then(|d| d.get_i32("code").ok()) == Some(11000);
        let failed: Vec<&Bson> = errors.iter().filter(|e| !already_there(e)).collect();
        if let Some(first) = failed.first() {
            let first = first.as_document().and_then(|d| d.get_str("errmsg").ok()).unwrap_or("?");
            return Err(format!("{} statements failed, first: {first}", failed.len()));
        }
    }
    if let Ok(wc) = reply.get_document("writeConcernError") {
        return Err(format!("write concern: {}", wc.get_str("errmsg").unwrap_or("?")));
    }
    Ok(())
}

/// The longest a bulk batch waits for a view flush to finish before it is sent anyway, so
/// that facts keep moving while the views lane is busy.
const MAX_YIELD: Duration = Duration::from_millis(250);

/// The views lane goes first: on two cores MongoDB writes a view flush faster when the bulk
/// lane's batches do not compete with it. Counts view flushes being written; the bulk lane
/// sends its next batch when none is (or after [`MAX_YIELD`]).
#[derive(Default)]
struct ViewsFirst {
    writing: AtomicUsize,
    done: Notify,
}

/// A view flush being written; dropped when it is done (or failed, or was cancelled).
struct ViewFlushWriting<'a>(&'a ViewsFirst);

impl Drop for ViewFlushWriting<'_> {
    fn drop(&mut self) {
        self.0.writing.fetch_sub(1, Ordering::AcqRel);
        self.0.done.notify_waiters();
    }
}

impl ViewsFirst {
    fn begin(&self) -> ViewFlushWriting<'_> {
        self.writing.fetch_add(1, Ordering::AcqRel);
        ViewFlushWriting(self)
    }

    async fn wait(&self) {
        let idle = async {
            loop {
                let finished = self.done.notified(); // registered before the check
                if self.writing.load(Ordering::Acquire) == 0 {
                    return;
                }
                finished.await;
            }
        };
        let _ = tokio::time::timeout(MAX_YIELD, idle).await;
    }
}

/// A MongoDB error in a few words: server selection failures name the underlying cause
/// instead of dumping the whole topology.
fn first_line(e: &mongodb::error::Error) -> String {
    let text = e.to_string();
    if let mongodb::error::ErrorKind::ServerSelection { .. } = *e.kind {
        if let Some(at) = text.find("certificate") {
            // rustls' words, e.g. "invalid peer certificate: UnknownIssuer".
            let from = text[..at].rfind([':', '(', '"', ',']).map_or(0, |i| i + 1);
            let cause: String =
                text[from..].split(['"', ')', ',']).next().unwrap_or_default().trim().chars().take(120).collect();
            return format!(
                "TLS handshake failed ({cause}): is tlsCAFile the CA that signed the server's certificate?"
            );
        }
        for cause in ["Connection refused", "timed out", "Authentication failed", "replica set"] {
            if text.contains(cause) {
                return format!("no server available: {}", cause.to_lowercase());
            }
        }
        return "no server available".into();
    }
    match &*e.kind {
        // The server's own words, without the command it echoes back (which can be long).
        ErrorKind::Command(c) => {
            let message = c.message.split(" {").next().unwrap_or_default().trim_end();
            return format!("{} ({}): {message}", c.code_name, c.code);
        }
        ErrorKind::Authentication { message, .. } => return message.chars().take(300).collect(),
        _ => {}
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
        // No minPoolSize: the pool's background fill would meet a refused login first and
        // report it as a cleared pool instead of the login error the operator needs.
        options.max_pool_size.get_or_insert(POOL_SIZE);
        let client = Client::with_options(options).map_err(|source| SinkError::BadUri { uri: uri.clone(), source })?;
        let sink = MongoSink {
            db: client.database(&config.database),
            batch_size: config.write_batch_size,
            views_first: Arc::default(),
            yields_to_views: false,
        };
        match sink.ping_server().await {
            Ok(_) => Ok(sink),
            Err(e) if matches!(*e.kind, ErrorKind::Authentication { .. }) => {
                Err(SinkError::Login { uri, reason: first_line(&e) })
            }
            Err(e) => Err(SinkError::Unreachable { uri, timeout, reason: first_line(&e) }),
        }
    }

    /// The same sink for the bulk lane: each of its batches waits (a bounded time) while a
    /// view flush is being written.
    pub fn yielding_to_views(&self) -> MongoSink {
        MongoSink { yields_to_views: true, ..self.clone() }
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    pub async fn ping(&self) -> Result<(), String> {
        self.ping_server().await.map(|_| ()).map_err(|e| first_line(&e))
    }

    async fn ping_server(&self) -> mongodb::error::Result<Document> {
        self.db.run_command(doc! { "ping": 1 }).await
    }

    /// Creates the batch design's validator, indexes and `dim_time` (idempotent).
    pub async fn prepare(&self) -> Result<(), SinkError> {
        self.prepare_collections().await?;
        self.create_indexes().await
    }

    /// Whether no fact or view collection holds a document yet (dimensions copied for a
    /// backfill do not count): a replay into it can load first and index afterwards.
    pub async fn is_empty(&self) -> Result<bool, SinkError> {
        for collection in
            [FACT_SALES, FACT_RETURNS, FACT_CUSTOMER_SESSIONS, CUSTOMER_RFM, PRODUCT_PERFORMANCE, SALES_TRENDS]
        {
            let one = self
                .db
                .collection::<Document>(collection)
                .find_one(doc! {})
                .await
                .map_err(|e| SinkError::Read { collection: collection.into(), reason: first_line(&e) })?;
            if one.is_some() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The fact collections with the batch design's validator, and `dim_time` (idempotent).
    /// As mongorestore does, collection options come first and secondary indexes after the
    /// data: see [`MongoSink::create_indexes`].
    pub async fn prepare_collections(&self) -> Result<(), SinkError> {
        // Twice at most: another instance starting at the same time may create it between
        // the look and the create (NamespaceExists); then its options are looked at again.
        for collection in [FACT_SALES, FACT_RETURNS, FACT_SALES, FACT_RETURNS] {
            let fail =
                |e: mongodb::error::Error| SinkError::Prepare { collection: collection.into(), reason: first_line(&e) };
            let existing = self.db.list_collections().filter(doc! { "name": collection }).await.map_err(fail)?;
            let existing: Vec<_> = existing.try_collect().await.map_err(fail)?;
            let validator = documents::fact_validator();
            let command = match existing.first() {
                None => Some(doc! { "create": collection, "validator": validator, "validationLevel": "strict" }),
                // collMod needs more than readWrite: only when the validator is not already ours.
                Some(spec)
                    if spec.options.validator.as_ref() == Some(&validator)
                        && matches!(spec.options.validation_level, Some(ValidationLevel::Strict) | None) =>
                {
                    None
                }
                Some(_) => Some(doc! { "collMod": collection, "validator": validator, "validationLevel": "strict" }),
            };
            if let Some(command) = command {
                match self.db.run_command(command).await {
                    Err(e) if matches!(&*e.kind, mongodb::error::ErrorKind::Command(c) if c.code == 48) => {}
                    other => {
                        other.map_err(fail)?;
                    }
                }
            }
        }
        self.upsert(DIM_TIME, documents::dim_time()).await?;
        Ok(())
    }

    /// The batch design's secondary indexes (idempotent: an existing one is left as is).
    pub async fn create_indexes(&self) -> Result<(), SinkError> {
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

    /// The views lane: customer_rfm_analysis, product_performance and sales_trends,
    /// concurrently; after a complete flush, their documents the flush did not write go.
    pub async fn write_views<'a>(
        &'a self,
        changes: &'a ViewChanges,
        written_at: DateTime<Utc>,
    ) -> Result<WriteStats, SinkError> {
        let rfm: Vec<documents::Raw> = changes.rfm.iter().map(|d| documents::rfm(d, written_at)).collect();
        let products: Vec<documents::Raw> =
            changes.products.upserts.iter().map(|d| documents::product(d, written_at)).collect();
        let trends: Vec<documents::Raw> =
            changes.trends.upserts.iter().map(|d| documents::trend(d, written_at)).collect();
        let complete = changes.complete;
        let _first = self.views_first.begin();
        let view = |name: &'static str, deletes: &'a [String], upserts: Vec<documents::Raw>| async move {
            let n = self.delete(name, deletes).await? + self.upsert(name, upserts).await?;
            let stale = if complete { self.delete_stale(name, written_at).await? } else { 0 };
            Ok::<_, SinkError>(((name, n), (name, stale)))
        };
        let views = futures::future::try_join_all([
            view(CUSTOMER_RFM, &changes.rfm_deletes, rfm).boxed(),
            view(PRODUCT_PERFORMANCE, &changes.products.deletes, products).boxed(),
            view(SALES_TRENDS, &changes.trends.deletes, trends).boxed(),
        ])
        .await?;
        let mut stats = WriteStats::default();
        for (written, stale) in views {
            stats.per_collection.push(written);
            if complete {
                stats.stale_removed.push(stale);
            }
        }
        Ok(stats)
    }

    /// The bulk lane: the dimension rows, then the facts (so that a fact's keys always
    /// resolve); the collections of each step concurrently.
    pub async fn write_bulk(&self, changes: &ViewChanges) -> Result<WriteStats, SinkError> {
        let mut per_collection = self.write_dims(changes).await?;
        if !changes.fact_removals.is_empty() {
            // A repair's removals first: a fact it replaces is inserted again below.
            for (kind, table) in [(EventKind::Purchase, FACT_SALES), (EventKind::Refund, FACT_RETURNS)] {
                let ids: Vec<String> =
                    changes.fact_removals.iter().filter(|(k, _)| *k == kind).map(|(_, id)| id.clone()).collect();
                if !ids.is_empty() {
                    per_collection.push((table, self.delete(table, &ids).await?));
                }
            }
        }
        per_collection.extend(self.write_facts(changes).await?);
        Ok(WriteStats { per_collection, ..WriteStats::default() })
    }

    async fn write_dims(&self, changes: &ViewChanges) -> Result<Vec<(&'static str, usize)>, SinkError> {
        let dims = |name: &'static str, docs: Vec<documents::Raw>| async move {
            Ok::<_, SinkError>((name, self.upsert(name, docs).await?))
        };
        let d = &changes.dims;
        futures::future::try_join_all([
            dims(DIM_PRODUCT, d.products.iter().map(documents::dim_product).collect()).boxed(),
            dims(DIM_CUSTOMER, d.customers.iter().map(documents::dim_customer).collect()).boxed(),
            dims(DIM_LOCATION, d.locations.iter().map(|(k, l)| documents::dim_location(*k, l)).collect()).boxed(),
            dims(DIM_DATE, d.dates.iter().map(|x| documents::dim_date(*x)).collect()).boxed(),
        ])
        .await
    }

    async fn write_facts(&self, changes: &ViewChanges) -> Result<Vec<(&'static str, usize)>, SinkError> {
        let (sales, returns): (Vec<_>, Vec<_>) = changes.facts.iter().partition(|f| f.kind == EventKind::Purchase);
        futures::future::try_join_all([
            self.insert_facts(FACT_SALES, sales.into_iter().map(documents::fact).collect()).boxed(),
            self.insert_facts(FACT_RETURNS, returns.into_iter().map(documents::fact).collect()).boxed(),
            self.insert_facts(FACT_CUSTOMER_SESSIONS, changes.sessions.iter().map(documents::session).collect())
                .boxed(),
        ])
        .await
    }

    /// Gives the engine the surrogate keys this database already holds, so that keys never
    /// change across restarts and replays into it.
    pub async fn preload_keys(&self, engine: &mut Engine) -> Result<usize, SinkError> {
        let fail = |collection: &'static str| {
            move |e: mongodb::error::Error| SinkError::Read { collection: collection.into(), reason: first_line(&e) }
        };
        let mut n = 0;
        let mut rows = self.db.collection::<Document>(DIM_PRODUCT).find(doc! {}).await.map_err(fail(DIM_PRODUCT))?;
        while let Some(d) = rows.try_next().await.map_err(fail(DIM_PRODUCT))? {
            if let (Ok(id), Ok(key)) = (d.get_str("product_id"), d.get_i32("product_key")) {
                engine.warehouse_mut().products.preload(id, key);
                n += 1;
            }
        }
        let mut rows = self.db.collection::<Document>(DIM_CUSTOMER).find(doc! {}).await.map_err(fail(DIM_CUSTOMER))?;
        while let Some(d) = rows.try_next().await.map_err(fail(DIM_CUSTOMER))? {
            if let (Ok(id), Ok(key)) = (d.get_str("customer_id"), d.get_i32("customer_key")) {
                engine.preload_customer_key(id, key);
                n += 1;
            }
        }
        let mut rows = self.db.collection::<Document>(DIM_LOCATION).find(doc! {}).await.map_err(fail(DIM_LOCATION))?;
        while let Some(d) = rows.try_next().await.map_err(fail(DIM_LOCATION))? {
            if let (Ok(country), Ok(key)) = (d.get_str("country"), d.get_i32("location_key")) {
                let location = Location {
                    country: country.to_owned(),
                    region: d.get_str("region").ok().map(str::to_owned),
                    city: d.get_str("city").ok().map(str::to_owned),
                    timezone: None,
                };
                engine
                    .warehouse_mut()
                    .locations
                    .preload(&crate::domain::warehouse::location_natural_key(&location), key);
                n += 1;
            }
        }
        Ok(n)
    }

    /// After a complete flush of a view: everything the state holds was just written with
    /// the stamp `written_at`, so any other document there is stale. Returns how many went.
    async fn delete_stale(&self, collection: &'static str, written_at: DateTime<Utc>) -> Result<u64, SinkError> {
        let fail =
            |e: mongodb::error::Error| SinkError::Write { collection: collection.into(), reason: first_line(&e) };
        let stale = rawdoc! { "q": { "updated_at": { "$ne": documents::date(written_at) } }, "limit": 0 };
        let reply = self
            .db
            .run_raw_command(
                rawdoc! { "delete": collection, "deletes": [stale], "ordered": false, "writeConcern": write_concern() },
            )
            .await
            .map_err(fail)?;
        reply_ok(&reply, false).map_err(|reason| SinkError::Write { collection: collection.into(), reason })?;
        Ok(reply.get_i32("n").map(|n| n as u64).or_else(|_| reply.get_i64("n").map(|n| n as u64)).unwrap_or(0))
    }

    /// Deletes documents by `_id` (idempotent: deleting what is gone is fine).
    pub async fn delete(&self, collection: &str, ids: &[String]) -> Result<usize, SinkError> {
        let statements = ids.iter().map(|id| rawdoc! { "q": { "_id": id.as_str() }, "limit": 1 }).collect();
        self.write_command(collection, "delete", "deletes", statements).await
    }

    /// Copies the dimension collections of `live` into this (shadow) database, so a backfill
    /// keeps the live surrogate keys and its facts resolve after a swap.
    pub async fn copy_dimensions_from(&self, live: &str) -> Result<usize, SinkError> {
        let shadow = self.db.name().to_owned();
        let source = self.db.client().database(live);
        let existing = source
            .list_collection_names()
            .await
            .map_err(|e| SinkError::Read { collection: format!("{live}.*"), reason: first_line(&e) })?;
        let mut copied = 0;
        for collection in [DIM_PRODUCT, DIM_CUSTOMER, DIM_LOCATION, DIM_DATE] {
            if !existing.iter().any(|c| c == collection) {
                continue;
            }
            let out = doc! { "$out": { "db": &shadow, "coll": collection } };
            source.collection::<Document>(collection).aggregate([out]).await.map_err(|e| SinkError::Write {
                collection: format!("{shadow}.{collection}"),
                reason: format!("copying from {live}: {}", first_line(&e)),
            })?;
            copied += 1;
        }
        Ok(copied)
    }

    /// Promotes this (shadow) database's collections into `live`, each by one
    /// `renameCollection` with `dropTarget`: readers of a live collection see either the old
    /// one or the complete new one, never a half-built state. Returns the collections moved.
    pub async fn promote_into(&self, live: &str) -> Result<Vec<String>, SinkError> {
        let shadow = self.db.name().to_owned();
        let existing = self
            .db
            .list_collection_names()
            .await
            .map_err(|e| SinkError::Write { collection: shadow.clone(), reason: first_line(&e) })?;
        let admin = self.db.client().database("admin");
        let mut moved = Vec::new();
        for collection in documents::ALL_COLLECTIONS.iter().filter(|c| existing.iter().any(|e| e == *c)) {
            let command = doc! {
                "renameCollection": format!("{shadow}.{collection}"),
                "to": format!("{live}.{collection}"),
                "dropTarget": true,
            };
            admin.run_command(command).await.map_err(|e| SinkError::Write {
                collection: format!("{live}.{collection}"),
                reason: format!("renameCollection from {shadow}: {}", first_line(&e)),
            })?;
            moved.push((*collection).to_owned());
        }
        Ok(moved)
    }

    /// Replaces (or inserts) each document by `_id`.
    pub async fn upsert(&self, collection: &str, docs: Vec<documents::Raw>) -> Result<usize, SinkError> {
        let statements =
            docs.into_iter().map(|(id, body)| rawdoc! { "q": { "_id": id }, "u": body, "upsert": true }).collect();
        self.write_command(collection, "update", "updates", statements).await
    }

    /// Inserts facts (documents with an `_id`). A fact never changes once written, so one
    /// already there (an earlier try of this flush, or a replay into the same database) is
    /// fine: its duplicate-key error is ignored. Cheaper for the server than an upsert.
    async fn insert_facts(
        &self,
        collection: &'static str,
        docs: Vec<documents::Raw>,
    ) -> Result<(&'static str, usize), SinkError> {
        let statements = docs.into_iter().map(|(_, body)| body).collect(); // bodies carry their _id
        Ok((collection, self.write_command(collection, "insert", "documents", statements).await?))
    }

    /// Runs a write command (`update`/`delete`/`insert`) over the statements in unordered
    /// batches of `write_batch_size`, a few batches in flight at once; any write error
    /// (except an insert's duplicate key) or write-concern error fails the whole call.
    async fn write_command(
        &self,
        collection: &str,
        command: &str,
        list: &str,
        statements: Vec<RawDocumentBuf>,
    ) -> Result<usize, SinkError> {
        use futures::StreamExt;
        let fail = |reason: String| SinkError::Write { collection: collection.into(), reason };
        let n = statements.len();
        let mut statements = statements.into_iter().peekable();
        let chunks = std::iter::from_fn(|| {
            statements.peek()?;
            let mut chunk = RawArrayBuf::new();
            statements.by_ref().take(self.batch_size).for_each(|s| chunk.push(s));
            Some(chunk)
        });
        let batch = |chunk: RawArrayBuf| {
            let command =
                rawdoc! { command: collection, list: chunk, "ordered": false, "writeConcern": write_concern() };
            async move {
                if self.yields_to_views {
                    self.views_first.wait().await;
                }
                let reply = self.db.run_raw_command(command).await.map_err(|e| fail(first_line(&e)))?;
                reply_ok(&reply, list == "documents").map_err(fail)
            }
        };
        futures::stream::iter(chunks.map(batch)).buffer_unordered(BATCHES_IN_FLIGHT).try_collect::<()>().await?;
        Ok(n)
    }
}

/// The facts (both tables) of `customers` dated before `before_date_key`, as lines, each
/// with its location key: what a reconciliation compares with the database's lines.
pub async fn stored_facts(
    db: &Database,
    customers: &[String],
    before_date_key: i32,
) -> Result<Vec<(FactLine, i32)>, SinkError> {
    let mut ids: std::collections::HashMap<i32, String> = std::collections::HashMap::new();
    for chunk in customers.chunks(10_000) {
        let filter = doc! { "customer_id": { "$in": chunk } };
        for d in find_all(db, DIM_CUSTOMER, filter).await? {
            if let (Ok(id), Ok(key)) = (d.get_str("customer_id"), d.get_i32("customer_key")) {
                ids.insert(key, id.to_owned());
            }
        }
    }
    let keys: Vec<i32> = ids.keys().copied().collect();
    let mut facts = Vec::new();
    for (kind, table) in [(EventKind::Purchase, FACT_SALES), (EventKind::Refund, FACT_RETURNS)] {
        for chunk in keys.chunks(10_000) {
            let filter = doc! { "customer_key": { "$in": chunk }, "date_key": { "$lt": before_date_key } };
            for d in find_all(db, table, filter).await? {
                facts.push((kind, d));
            }
        }
    }
    let mut products: std::collections::HashMap<i32, String> = std::collections::HashMap::new();
    let wanted: Vec<i32> = facts
        .iter()
        .filter_map(|(_, d)| d.get_i32("product_key").ok())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    for chunk in wanted.chunks(10_000) {
        let filter = doc! { "product_key": { "$in": chunk } };
        for d in find_all(db, DIM_PRODUCT, filter).await? {
            if let (Ok(id), Ok(key)) = (d.get_str("product_id"), d.get_i32("product_key")) {
                products.insert(key, id.to_owned());
            }
        }
    }
    let cents = |d: &Document, k: &str| d.get_f64(k).map_or(0, |x| (x * 100.0).round() as i64);
    let text = |d: &Document, k: &str| d.get_str(k).map(str::to_owned).unwrap_or_default();
    Ok(facts
        .into_iter()
        .map(|(kind, d)| {
            let key = |k: &str| d.get_i32(k).unwrap_or(0);
            let line = FactLine {
                kind,
                sale_id: text(&d, "sale_id"),
                transaction_id: text(&d, "transaction_id"),
                customer_id: ids.get(&key("customer_key")).cloned().unwrap_or_default(),
                product_id: products.get(&key("product_key")).cloned().unwrap_or_default(),
                at_ms: d.get_datetime("timestamp").map_or(0, |t| t.timestamp_millis()),
                quantity: d.get_i32("quantity").map_or(0, i64::from),
                unit_price_cents: cents(&d, "unit_price"),
                discount_cents: cents(&d, "discount_amount"),
                payment_method: d.get_str("payment_method").ok().map(str::to_owned),
            };
            (line, key("location_key"))
        })
        .collect())
}

/// The customers with a fact (either table) of one of these products on that day number.
pub async fn customers_with_facts(db: &Database, product_days: &[(String, i32)]) -> Result<Vec<String>, SinkError> {
    if product_days.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<&str> = product_days.iter().map(|(id, _)| id.as_str()).collect();
    let mut keys: std::collections::HashMap<String, i32> = std::collections::HashMap::new();
    for d in find_all(db, DIM_PRODUCT, doc! { "product_id": { "$in": ids } }).await? {
        if let (Ok(id), Ok(key)) = (d.get_str("product_id"), d.get_i32("product_key")) {
            keys.insert(id.to_owned(), key);
        }
    }
    let wanted: Vec<Document> = product_days
        .iter()
        .filter_map(|(id, day)| {
            let date = crate::domain::calendar::date_key(crate::domain::calendar::date_of(*day));
            keys.get(id).map(|key| doc! { "product_key": key, "date_key": date })
        })
        .collect();
    let mut customer_keys = std::collections::BTreeSet::new();
    for table in [FACT_SALES, FACT_RETURNS] {
        for chunk in wanted.chunks(1_000) {
            for d in find_all(db, table, doc! { "$or": chunk }).await? {
                customer_keys.extend(d.get_i32("customer_key").ok());
            }
        }
    }
    let customer_keys: Vec<i32> = customer_keys.into_iter().collect();
    let mut customers = Vec::new();
    for chunk in customer_keys.chunks(10_000) {
        let filter = doc! { "customer_key": { "$in": chunk } };
        for d in find_all(db, DIM_CUSTOMER, filter).await? {
            customers.extend(d.get_str("customer_id").ok().map(str::to_owned));
        }
    }
    Ok(customers)
}

/// Every document of `collection` that `filter` matches.
async fn find_all(db: &Database, collection: &'static str, filter: Document) -> Result<Vec<Document>, SinkError> {
    let fail = |e: mongodb::error::Error| SinkError::Read { collection: collection.into(), reason: first_line(&e) };
    db.collection::<Document>(collection).find(filter).await.map_err(fail)?.try_collect().await.map_err(fail)
}
