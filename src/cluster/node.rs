//! One instance of a cluster (docs/DESIGN.md, "Scale-out"; `cluster.enabled`): it holds
//! the leases of some input partitions and, for each, a part of the state
//! ([`Engine::new_part`]: its customers, dedup and facts) restored from the partition's
//! snapshot in MongoDB; it reads those partitions only (manual assignment, seeking to each
//! partition's position).
//!
//! Every flush interval:
//! 1. each part publishes what it added since its last publication ([`Exchange`]);
//! 2. the instance reads every partition's new chunks: the global value counts of the RFM
//!    quintiles, and the shared products and trends;
//! 3. each part writes its customers' RFM documents, scored against the global counts, its
//!    facts and dimension rows;
//! 4. the holder of the lowest partition writes product_performance, sales_trends and
//!    dim_product;
//! 5. a part whose snapshot is due saves it (its writes acknowledged, its dead letters
//!    confirmed): the partition's position, at the end of its last published chunk.
//!
//! Leases are renewed every quarter TTL; the assignment policy says which to take or hand
//! back. A taken partition writes facts and new keys only until it has read as far as the
//! partition ended when it was taken; then one flush writes all its customers (against the
//! counts of now), as a classic start converges after its backlog; a lost one (another instance took it after it expired) is dropped without a
//! snapshot; one handed back is flushed and snapshotted first. An instance that could not
//! renew for half a TTL stops publishing and writing until it can.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::assignment::moves;
use super::exchange::{Chunk, Exchange, Published};
use super::keys::{customer_key_base, KeyAllocator, KeyKind};
use super::leases::{key, Leases};
use super::part_snapshots::PartSnapshots;
use crate::domain::partials::SharedViews;
use crate::domain::quintiles::RfmCounts;
use crate::domain::warehouse::{write_location_key, CustomerKeys, DimDocs, Restate};
use crate::domain::{Engine, Location, Outcome, Rejection, Transaction, ViewChanges, ViewConfig};
use crate::health::Health;
use crate::kafka::dlq::{DeadLetters, SourcePosition};
use crate::kafka::source::Source;
use crate::pipeline::decode_stage::{DecodeStage, Event, Ingested};
use crate::pipeline::{lane, AsOf, Backoff, InputKind};
use crate::query::{self, Mirror, Query};
use crate::sink::mongo::MongoSink;
use crate::snapshot::format::{self, SnapshotMeta};
use crate::telemetry::Metrics;

/// What a node needs besides its adapters.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    pub topic: String,
    pub dlq_topic: String,
    pub database: String,
    pub views: ViewConfig,
    pub as_of: AsOf,
    pub flush_every: Duration,
    pub snapshot_every: Duration,
    pub lease_ttl: Duration,
    pub backoff: Backoff,
    pub shutdown_timeout: Duration,
}

/// The adapters a node drives.
pub struct NodeParts {
    pub source: Arc<Source>,
    pub sink: MongoSink,
    pub leases: Leases,
    pub dlq: DeadLetters,
    pub metrics: Metrics,
    pub health: Arc<Health>,
    /// Queries from the HTTP API.
    pub queries: Option<mpsc::Receiver<query::Request>>,
}

/// The state of one held partition.
struct Held {
    engine: Engine,
    epoch: i64,
    /// Next offset to read.
    position: i64,
    /// Where its published chunks end.
    published_to: i64,
    /// Ends of chunks published (by a former holder) beyond the snapshot it restored: its
    /// publications end there too, so that they are those chunks again.
    ends: VecDeque<i64>,
    /// The next view flush writes every customer of the part.
    full: bool,
    /// Where the partition ended when it was taken: until the part has read that far its
    /// view flushes wait (facts and new keys are written), then one flush writes every
    /// customer of it, as a classic start converges after its backlog.
    backlog_end: i64,
    snapshot_position: i64,
    snapshot_taken: Instant,
}

impl Held {
    /// Its changes may be published now: something new, and no published end before it.
    fn publishable(&self) -> bool {
        self.position > self.published_to && self.ends.front().is_none_or(|&end| self.position == end)
    }
}

pub struct Node {
    settings: NodeSettings,
    source: Arc<Source>,
    sink: MongoSink,
    leases: Leases,
    exchange: Exchange,
    snapshots: PartSnapshots,
    keys: KeyAllocator,
    dlq: DeadLetters,
    metrics: Metrics,
    health: Arc<Health>,
    /// Every partition of the topic, ascending.
    partitions: Vec<i32>,
    held: BTreeMap<i32, Held>,
    /// The value counts of every partition's customers (from every chunk read).
    counts: RfmCounts,
    /// Products and trends from every chunk read; written by the holder of the lowest
    /// partition.
    shared: SharedViews,
    /// Where each partition's applied chunks end.
    applied: BTreeMap<i32, i64>,
    watermark_ms: Option<i64>,
    /// Products whose dim_product row waits for the owner's flush.
    changed_products: BTreeSet<String>,
    /// Whether this instance wrote the shared views at its last flush.
    owner: bool,
    /// Location rows this instance allocated keys for, to write.
    new_locations: Vec<(i32, Location)>,
    /// When the last successful renewal started.
    renewed: Option<Instant>,
    scratch: String,
    queries: Option<mpsc::Receiver<query::Request>>,
    /// The shared views as of the last flush, for queries (every instance keeps them).
    mirror: Mirror,
}

/// Retries `op` with doubling delays until it succeeds.
async fn retrying<T, E: std::fmt::Display, F: Future<Output = Result<T, E>>>(
    what: &str,
    backoff: Backoff,
    health: &Health,
    mut op: impl FnMut() -> F,
) -> T {
    let mut delay = backoff.initial;
    loop {
        match op().await {
            Ok(v) => {
                health.set_mongo_ok(true);
                return v;
            }
            Err(e) => {
                health.set_mongo_ok(false);
                warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "{what} failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(backoff.max);
            }
        }
    }
}

impl Node {
    pub fn new(settings: NodeSettings, parts: NodeParts) -> Node {
        let NodeParts { source, sink, leases, dlq, metrics, health, queries } = parts;
        let db = sink.database().clone();
        let mut partitions: Vec<i32> = source.partitions.iter().map(|&(_, p)| p).collect();
        partitions.sort_unstable();
        Node {
            shared: SharedViews::new(&settings.views),
            settings,
            source,
            sink,
            leases,
            exchange: Exchange::new(&db),
            snapshots: PartSnapshots::new(&db),
            keys: KeyAllocator::new(&db),
            dlq,
            metrics,
            health,
            partitions,
            held: BTreeMap::new(),
            counts: RfmCounts::default(),
            applied: BTreeMap::new(),
            watermark_ms: None,
            changed_products: BTreeSet::new(),
            owner: false,
            new_locations: Vec::new(),
            renewed: None,
            scratch: String::new(),
            queries,
            mirror: Mirror::default(),
        }
    }

    /// Runs until `shutdown`; then publishes, flushes and snapshots what it holds and hands
    /// its leases back.
    pub async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        self.exchange.prepare().await?;
        // Partitions move between instances here: no paced fetching (it seeks to offsets it tracks).
        let mut decoded = DecodeStage::spawn(self.source.clone(), vec![InputKind::Transactions], None);
        let mut lease_tick = tokio::time::interval(self.settings.lease_ttl / 4);
        lease_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut queries = self.queries.take().unwrap_or_else(|| query::channel().1);
        let mut flush_tick = tokio::time::interval(self.settings.flush_every);
        flush_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.health.set_state_ready(true);
        info!(instance = self.leases.me(), partitions = self.partitions.len(), "joining the cluster");
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = lease_tick.tick() => {
                    if let Err(e) = self.maintain_leases().await {
                        warn!(error = %e, "lease round failed; trying again at the next");
                    }
                }
                Some((q, reply)) = queries.recv() => self.answer(q, reply),
                _ = flush_tick.tick() => self.flush().await,
                Some(m) = decoded.output.recv() => self.handle(m).await,
            }
        }
        drop(decoded);
        let timeout = self.settings.shutdown_timeout;
        let last = async {
            self.flush().await;
            for p in self.held.keys().copied().collect::<Vec<_>>() {
                self.hand_back(p, false).await;
            }
            let _ = self.leases.leave().await;
        };
        if tokio::time::timeout(timeout, last).await.is_err() {
            warn!("shutdown timeout: leases left to expire; their partitions resume from their last snapshots");
        }
        Ok(())
    }

    /// One lease round: heartbeat, renewal (dropping what was lost), then the policy's
    /// moves.
    async fn maintain_leases(&mut self) -> Result<(), mongodb::error::Error> {
        let started = Instant::now();
        self.leases.heartbeat().await?;
        let mine = self.leases.renew().await?;
        self.renewed = Some(started);
        let topic = self.settings.topic.clone();
        let mut changed = false;
        let lost: Vec<i32> =
            self.held.iter().filter(|(p, h)| mine.get(&key(&topic, **p)) != Some(&h.epoch)).map(|(p, _)| *p).collect();
        for p in lost {
            warn!(partition = p, "lease lost (taken by another instance): the partition's state is dropped");
            self.held.remove(&p);
            changed = true;
        }
        let holders: BTreeMap<i32, String> = self
            .leases
            .holders()
            .await?
            .into_iter()
            .filter_map(|(k, (owner, _))| {
                let (t, p) = k.rsplit_once('/')?;
                (t == topic).then(|| Some((p.parse().ok()?, owner))).flatten()
            })
            .collect();
        let members = self.leases.members().await?;
        let mv = moves(&self.partitions, &holders, &members, self.leases.me());
        for p in mv.release {
            self.hand_back(p, true).await;
            changed = true;
        }
        for p in mv.acquire {
            if let Some(epoch) = self.leases.acquire(&key(&topic, p)).await? {
                self.take(p, epoch).await;
                changed = true;
            }
        }
        if changed {
            self.assign();
        }
        self.update_lag();
        Ok(())
    }

    /// Whether this instance may still act for its leases: renewed within half a TTL.
    fn fenced(&self) -> bool {
        self.renewed.is_none_or(|t| t.elapsed() > self.settings.lease_ttl / 2)
    }

    /// Takes partition `p` at lease `epoch`: its snapshot (or nothing), and the ends of the
    /// chunks published beyond it.
    async fn take(&mut self, p: i32, epoch: i64) {
        let backoff = self.settings.backoff;
        let snapshots = self.snapshots.clone();
        let found = retrying("reading a partition snapshot", backoff, &self.health, || snapshots.load(p)).await;
        let mut restored = None;
        if let Some((position, bytes)) = found {
            match format::decode(&bytes) {
                Ok(s) if s.meta.views == self.settings.views => restored = Some((s.engine.into_part(), position)),
                Ok(_) => warn!(partition = p, "the partition's snapshot has other view settings: rebuilding it"),
                Err(e) => warn!(partition = p, error = %e, "the partition's snapshot is unusable: rebuilding it"),
            }
        }
        let (low, high) = tokio::task::block_in_place(|| {
            self.source.consumer.fetch_watermarks(&self.settings.topic, p, Duration::from_secs(10))
        })
        .unwrap_or((0, 0));
        let (engine, position) = match restored {
            Some(r) => r,
            None => {
                let mut engine = Engine::new_part(self.settings.views.clone());
                engine.warehouse_mut().customers = CustomerKeys::starting_at(customer_key_base(p));
                (engine, low)
            }
        };
        let exchange = self.exchange.clone();
        let ends: VecDeque<i64> =
            retrying("reading the exchange", backoff, &self.health, || exchange.published_ends(p, position))
                .await
                .into();
        info!(partition = p, epoch, position, published_beyond = ends.len(), "partition taken");
        self.held.insert(
            p,
            Held {
                engine,
                epoch,
                position,
                published_to: position,
                ends,
                full: true,
                backlog_end: high,
                snapshot_position: position,
                snapshot_taken: Instant::now(),
            },
        );
    }

    /// Hands partition `p` back: its last changes published and written and a snapshot
    /// saved when it is at a chunk's end (`flush` first: at shutdown the caller did), then
    /// the lease released.
    async fn hand_back(&mut self, p: i32, flush: bool) {
        if flush {
            self.flush().await;
        }
        let Some(h) = self.held.get(&p) else { return };
        if h.position == h.published_to && !self.fenced() {
            self.save_snapshot(p).await;
        }
        let epoch = self.held[&p].epoch;
        match self.leases.release(&key(&self.settings.topic, p), epoch).await {
            Ok(_) => info!(partition = p, "partition handed back"),
            Err(e) => warn!(partition = p, error = %e, "releasing the lease failed; it expires instead"),
        }
        self.held.remove(&p);
    }

    /// A query: products and trends from the shared views (every instance has them); a
    /// customer from the part holding it, else from MongoDB (its holder wrote it there);
    /// segment counts from MongoDB (they span every instance's customers).
    fn answer(&self, q: Query, reply: oneshot::Sender<query::Answer>) {
        if let Some(a) = self.mirror.answer_shared(&q) {
            let _ = reply.send(a);
            return;
        }
        let db = self.sink.database().clone();
        match q {
            Query::Customer(id) => match self.held.values().find_map(|h| query::customer(&h.engine, &id)) {
                Some(a) => {
                    let _ = reply.send(Some(a));
                }
                None => {
                    tokio::spawn(async move {
                        let _ = reply.send(query::customer_in(&db, &id).await);
                    });
                }
            },
            _ => {
                let names = self.settings.views.rfm.segment_names().cloned().collect();
                tokio::spawn(async move {
                    let _ = reply.send(query::segments_in(&db, names).await);
                });
            }
        }
    }

    /// Reads the held partitions from their positions.
    fn assign(&self) {
        let mut tpl = TopicPartitionList::new();
        for (&p, h) in &self.held {
            if let Err(e) = tpl.add_partition_offset(&self.settings.topic, p, Offset::Offset(h.position)) {
                warn!(partition = p, error = %e, "cannot assign");
            }
        }
        if let Err(e) = self.source.consumer.assign(&tpl) {
            warn!(error = %e, "assigning the held partitions failed");
        }
        self.metrics.partitions_assigned.set(self.held.len() as i64);
        self.health.set_partitions(self.held.len());
        info!(partitions = ?self.held.keys().collect::<Vec<_>>(), "reading");
    }

    fn update_lag(&self) {
        let mut total = 0;
        for ((_, p), high) in self.source.cached_high_watermarks() {
            if let Some(h) = self.held.get(&p) {
                let lag = (high - h.position).max(0);
                total += lag;
                self.metrics.consumer_lag.with_label_values(&[&self.settings.topic, &p.to_string()]).set(lag);
            }
        }
        self.health.set_lag(total);
    }

    /// One message of a held partition.
    async fn handle(&mut self, m: Ingested) {
        let p = m.partition;
        let Some(h) = self.held.get(&p) else { return }; // no longer held
        if m.offset < h.position {
            return; // read again after a new assignment
        }
        if h.ends.front().is_some_and(|&end| h.position >= end) {
            self.publish(p).await; // a former holder's chunk ends here
        }
        self.metrics.events_consumed.inc();
        let rejection = match m.event {
            Err(rejection) => Some(rejection),
            Ok(Event::Session(_)) => None, // no sessions topic in cluster mode
            Ok(Event::Transaction(event)) => {
                self.resolve_keys(p, &event.tx).await;
                let arrival = ((p as u64) << 40) | m.offset as u64;
                let h = self.held.get_mut(&p).expect("held");
                match h.engine.apply_part(&event, lane(p), arrival) {
                    Outcome::Applied { orphan_refund } => {
                        if orphan_refund {
                            self.metrics.refunds_unmatched.inc();
                        }
                        self.metrics.events_applied.with_label_values(&[event.tx.kind.as_str()]).inc();
                        None
                    }
                    Outcome::Duplicate => {
                        self.metrics.events_duplicate.inc();
                        None
                    }
                    Outcome::Conflicting => Some(Rejection::conflicting(&event.tx.transaction_id)),
                }
            }
        };
        if let Some(rejection) = rejection {
            let from = SourcePosition {
                topic: &self.settings.topic,
                partition: p,
                offset: m.offset,
                timestamp_ms: m.timestamp_ms,
            };
            if self.dlq.wanted(&from) {
                while let Err(e) = self.dlq.enqueue(
                    &self.settings.dlq_topic,
                    m.key.as_deref(),
                    m.payload.as_deref(),
                    &rejection,
                    &from,
                ) {
                    warn!(error = %e, "dead-letter producer refused the message; waiting for outstanding deliveries");
                    self.dlq.settle().await;
                }
                self.metrics.events_dlq.with_label_values(&[rejection.reason.as_str()]).inc();
            }
        }
        if let Some(h) = self.held.get_mut(&p) {
            h.position = m.offset + 1;
        }
    }

    /// The key every instance uses for `natural`, retried until MongoDB answers; `true` when
    /// this call allocated it.
    async fn allocated(&self, kind: KeyKind, natural: &str) -> (i32, bool) {
        let what = match kind {
            KeyKind::Product => "allocating a product key",
            KeyKind::Location => "allocating a location key",
        };
        let keys = &self.keys;
        retrying(what, self.settings.backoff, &self.health, || keys.key(kind, natural)).await
    }

    /// Gives the part of `p` the keys every instance uses for the transaction's products and
    /// location.
    async fn resolve_keys(&mut self, p: i32, tx: &Transaction) {
        for line in &tx.items {
            let id = line.product_id.as_str();
            if self.held[&p].engine.warehouse().products.get(id).is_some() {
                continue;
            }
            let (k, _) = self.allocated(KeyKind::Product, id).await;
            self.held.get_mut(&p).expect("held").engine.warehouse_mut().products.preload(id, k);
        }
        if let Some(l) = &tx.location {
            write_location_key(l, &mut self.scratch);
            if self.held[&p].engine.warehouse().locations.get(self.scratch.as_str()).is_none() {
                let natural = self.scratch.clone();
                let (k, new) = self.allocated(KeyKind::Location, &natural).await;
                self.held.get_mut(&p).expect("held").engine.warehouse_mut().locations.preload(&natural, k);
                if new {
                    self.new_locations.push((k, l.clone()));
                }
            }
        }
    }

    /// Publishes what partition `p` added since its last publication.
    async fn publish(&mut self, p: i32) {
        let Some(h) = self.held.get_mut(&p) else { return };
        if h.position == h.published_to {
            return;
        }
        let chunk = Chunk {
            partition: p,
            from: h.published_to,
            to: h.position,
            watermark_ms: h.engine.watermark().map(|w| w.timestamp_millis()),
            partials: h.engine.take_partials().expect("a part"),
        };
        let epoch = h.epoch;
        let exchange = self.exchange.clone();
        let published = retrying("publishing to the exchange", self.settings.backoff, &self.health, || {
            exchange.publish(&chunk, epoch)
        })
        .await;
        if let Published::AlreadyThere { to } = published {
            if to != chunk.to {
                // Another instance published for this partition after this one took it (it
                // had not noticed its lease expire): the readers follow its chunks, so this
                // part starts again from the snapshot, to the ends published.
                warn!(
                    partition = p,
                    from = chunk.from,
                    to,
                    ours = chunk.to,
                    "another instance published for this partition: restoring it again"
                );
                self.held.remove(&p);
                self.take(p, epoch).await;
                self.assign();
                return;
            }
        }
        let h = self.held.get_mut(&p).expect("held");
        h.published_to = chunk.to;
        while h.ends.front().is_some_and(|&end| end <= chunk.to) {
            h.ends.pop_front();
        }
    }

    fn as_of(&self) -> Option<DateTime<Utc>> {
        match self.settings.as_of {
            AsOf::Wall => Some(Utc::now()),
            AsOf::Fixed(t) => Some(t),
            AsOf::Event => self.watermark_ms.and_then(DateTime::from_timestamp_millis),
        }
    }

    /// Publishes, reads every partition's chunks, writes, snapshots (see the module doc).
    async fn flush(&mut self) {
        if self.fenced() {
            return;
        }
        let backoff = self.settings.backoff;
        let ready: Vec<i32> = self.held.iter().filter(|(_, h)| h.publishable()).map(|(p, _)| *p).collect();
        for p in ready {
            self.publish(p).await;
        }
        let exchange = self.exchange.clone();
        let (applied, partitions) = (&self.applied, &self.partitions);
        let chunks =
            retrying("reading the exchange", backoff, &self.health, || exchange.pull(applied, partitions)).await;
        for c in &chunks {
            self.applied.insert(c.partition, c.to);
            self.counts.apply(&c.partials.rfm_counts);
            self.changed_products.extend(self.shared.apply(&c.partials));
            self.watermark_ms = self.watermark_ms.max(c.watermark_ms);
        }
        let Some(as_of) = self.as_of() else { return };
        // Every part's documents in one write per lane (the other partitions' documents
        // stay: never `complete`).
        let mut views = ViewChanges::default();
        let mut bulk = ViewChanges {
            dims: DimDocs { locations: std::mem::take(&mut self.new_locations), ..DimDocs::default() },
            ..ViewChanges::default()
        };
        for h in self.held.values_mut() {
            if h.position != h.published_to {
                continue; // on its way to a published end: its customers' counts are not all sent
            }
            if h.position < h.backlog_end {
                bulk.absorb(h.engine.flush_bulk(Restate::None)); // catching up: facts and new keys
                continue;
            }
            views.absorb(h.engine.flush_part_views(as_of, h.full, &self.counts));
            bulk.absorb(h.engine.flush_bulk(Restate::All));
            h.full = false;
        }
        // Every instance flushes the shared views (for its queries); the holder of the
        // lowest partition writes them, all of them when it just became that holder.
        let owner = self.held.contains_key(&self.partitions[0]);
        let (products, trends) = self.shared.flush(as_of, owner && !self.owner);
        let shared = ViewChanges { products, trends, ..ViewChanges::default() };
        self.mirror.apply(&shared);
        if owner {
            (views.products, views.trends) = (shared.products, shared.trends);
            let mut rows = Vec::new();
            for id in std::mem::take(&mut self.changed_products) {
                let (k, _) = self.allocated(KeyKind::Product, &id).await;
                rows.extend(self.shared.dim_product(id, k));
            }
            bulk.dims.products = rows;
        }
        self.owner = owner;
        self.health.set_converged(self.held.values().all(|h| !h.full));
        if !views.is_empty() {
            self.write(&views, true).await;
        }
        if !bulk.is_empty() {
            self.write(&bulk, false).await;
        }
        let due: Vec<i32> = self
            .held
            .iter()
            .filter(|(_, h)| {
                h.position == h.published_to
                    && h.position != h.snapshot_position
                    && h.snapshot_taken.elapsed() >= self.settings.snapshot_every
            })
            .map(|(p, _)| *p)
            .collect();
        for p in due {
            self.save_snapshot(p).await;
        }
    }

    async fn write(&self, changes: &ViewChanges, views: bool) {
        let sink = &self.sink;
        let stats = retrying("writing to MongoDB", self.settings.backoff, &self.health, || async move {
            if views {
                sink.write_views(changes, Utc::now()).await
            } else {
                sink.write_bulk(changes).await
            }
        })
        .await;
        for (collection, n) in stats.per_collection {
            self.metrics.documents_written.with_label_values(&[collection]).inc_by(n as u64);
        }
    }

    /// Saves partition `p`'s snapshot (at the end of its last published chunk, everything
    /// before written and its dead letters confirmed).
    async fn save_snapshot(&mut self, p: i32) {
        for u in self.dlq.settle().await {
            warn!(error = %u.error, "dead letter not delivered; the next holder reads it again");
        }
        let h = self.held.get_mut(&p).expect("held");
        let meta = SnapshotMeta {
            taken_at_ms: Utc::now().timestamp_millis(),
            database: self.settings.database.clone(),
            positions: vec![(self.settings.topic.clone(), p, h.position)],
            views: self.settings.views.clone(),
        };
        let bytes = format::encode(&meta, &h.engine);
        let (epoch, position) = (h.epoch, h.position);
        match self.snapshots.save(p, epoch, position, &bytes).await {
            Ok(()) => {
                h.snapshot_position = position;
                h.snapshot_taken = Instant::now();
                self.metrics.snapshots.with_label_values(&["ok"]).inc();
            }
            Err(e) => {
                warn!(partition = p, error = %e, "partition snapshot not saved");
                self.metrics.snapshots.with_label_values(&["error"]).inc();
            }
        }
    }
}
