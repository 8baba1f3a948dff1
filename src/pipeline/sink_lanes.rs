//! The two sink lanes, by urgency (SPEC §7 holds across both):
//! - **views**: customer_rfm_analysis, product_performance and sales_trends. Written first
//!   and often: the next view flush is built as soon as the previous one is acknowledged
//!   (and `service.flush_interval_ms` passed), never behind a backlog of facts.
//! - **bulk**: facts, sessions and dimension rows (dimensions before facts, so a fact's keys
//!   always resolve), as fast as MongoDB takes them; the lag is bounded by
//!   `service.max_pending_facts` (consumption pauses) and shown by
//!   `martstream_facts_latency_seconds` and `martstream_facts_pending`.
//!
//! Each lane is a task that writes its batches in order, retrying with backoff until MongoDB
//! takes them, and acknowledges them; the worker builds a lane's next batch only once the
//! previous one is acknowledged, so what waits coalesces in the engine, not in a queue.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::Backoff;
use crate::checkpoint::Mark;
use crate::domain::ViewChanges;
use crate::health::Health;
use crate::sink::mongo::MongoSink;
use crate::telemetry::{Latency, Metrics};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaneKind {
    Views,
    Bulk,
}

impl LaneKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LaneKind::Views => "views",
            LaneKind::Bulk => "bulk",
        }
    }
}

struct Batch {
    /// 1, 2, …: the lane acknowledges its batches in this order.
    seq: u64,
    changes: ViewChanges,
    /// Message timestamps (ms) of the events it carries, for the end-to-end latency.
    produced_ms: Vec<i64>,
}

/// What a lane's task reports to the worker.
#[derive(Default)]
struct Acks {
    /// Batches MongoDB acknowledged (written in order, so: up to this seq).
    acked: AtomicU64,
    documents: AtomicU64,
}

/// Whether each lane's last write (or idle ping) succeeded: MongoDB counts as up, for
/// /readyz and `martstream_mongo_up`, only when both did. Both start up: the service
/// pinged MongoDB before it started the lanes.
struct Up([AtomicBool; 2]);

impl Default for Up {
    fn default() -> Self {
        Up([AtomicBool::new(true), AtomicBool::new(true)])
    }
}

struct Task {
    tx: mpsc::Sender<Batch>,
    handle: JoinHandle<()>,
}

/// The worker's side of one lane.
pub struct SinkLane {
    kind: LaneKind,
    /// Batches handed to the lane (the seq of the newest), and acknowledged by MongoDB.
    sent: u64,
    acked: u64,
    /// Message timestamps of the events applied since this lane's last batch.
    produced_ms: Vec<i64>,
    last_sent: Option<Instant>,
    /// Fact rows (sales, returns, sessions) in the batch in flight; 0 once acknowledged.
    rows_in_flight: usize,
    acks: Arc<Acks>,
    task: Option<Task>,
}

impl SinkLane {
    fn new(kind: LaneKind) -> Self {
        SinkLane {
            kind,
            sent: 0,
            acked: 0,
            produced_ms: Vec::new(),
            last_sent: None,
            rows_in_flight: 0,
            acks: Arc::default(),
            task: None,
        }
    }

    /// Nothing in flight: the next batch may be built (at least `every` after the last).
    pub fn ready(&self, every: Duration) -> bool {
        self.task.is_some() && self.sent == self.acked && self.last_sent.is_none_or(|t| t.elapsed() >= every)
    }

    /// Hands `changes` (and the latency samples gathered since the last batch) to the lane.
    /// Call only when [`SinkLane::ready`]; an empty batch is not sent.
    pub fn send(&mut self, changes: ViewChanges) {
        if changes.is_empty() {
            return;
        }
        let Some(task) = &self.task else { return };
        let rows = changes.facts.len() + changes.sessions.len();
        let batch = Batch { seq: self.sent + 1, changes, produced_ms: std::mem::take(&mut self.produced_ms) };
        // Nothing is in flight, so the channel has room; the task only stops at shutdown.
        if task.tx.try_send(batch).is_ok() {
            self.sent += 1;
            self.last_sent = Some(Instant::now());
            self.rows_in_flight = rows;
        }
    }

    /// The last batch at shutdown: waits (until `deadline`) for the previous one to be
    /// acknowledged, then hands it over. False if it could not be.
    async fn send_last(&mut self, changes: ViewChanges, deadline: Option<tokio::time::Instant>) -> bool {
        if changes.is_empty() {
            return true;
        }
        let Some(task) = &self.task else { return false };
        let batch = Batch { seq: self.sent + 1, changes, produced_ms: std::mem::take(&mut self.produced_ms) };
        match super::within(deadline, task.tx.send(batch)).await {
            Some(Ok(())) => {
                self.sent += 1;
                true
            }
            Some(Err(_)) => {
                warn!(lane = self.kind.as_str(), "sink lane stopped before the last flush");
                false
            }
            None => {
                warn!(lane = self.kind.as_str(), "shutdown timeout: the last flush was not handed to MongoDB");
                false
            }
        }
    }

    fn refresh(&mut self) {
        self.acked = self.acks.acked.load(Ordering::Acquire);
        if self.acked == self.sent {
            self.rows_in_flight = 0;
        }
    }

    /// Fact rows handed to this lane and not acknowledged by MongoDB yet.
    pub fn rows_in_flight(&self) -> usize {
        self.rows_in_flight
    }
}

/// Both lanes.
pub struct SinkLanes {
    pub views: SinkLane,
    pub bulk: SinkLane,
}

impl Default for SinkLanes {
    fn default() -> Self {
        SinkLanes { views: SinkLane::new(LaneKind::Views), bulk: SinkLane::new(LaneKind::Bulk) }
    }
}

impl SinkLanes {
    /// Starts a writing task per lane on `sink`.
    pub fn start(&mut self, sink: MongoSink, (metrics, health): (Metrics, Arc<Health>), backoff: Backoff) {
        let up = Arc::new(Up::default());
        for lane in [&mut self.views, &mut self.bulk] {
            // A lane writes one batch at a time and the worker waits for its acknowledgement,
            // so one slot is all the channel needs.
            let (tx, rx) = mpsc::channel::<Batch>(1);
            let writer = Writer {
                kind: lane.kind,
                sink: if lane.kind == LaneKind::Bulk { sink.yielding_to_views() } else { sink.clone() },
                acks: lane.acks.clone(),
                metrics: metrics.clone(),
                health: health.clone(),
                up: up.clone(),
                backoff,
            };
            lane.task = Some(Task { tx, handle: tokio::spawn(writer.run(rx)) });
        }
    }

    /// Takes in what the lanes acknowledged.
    pub fn refresh(&mut self) {
        self.views.refresh();
        self.bulk.refresh();
    }

    /// An event applied now, produced at `t` (ms): both lanes carry it.
    pub fn record_produced(&mut self, t: i64) {
        self.views.produced_ms.push(t);
        self.bulk.produced_ms.push(t);
    }

    pub fn sent(&self) -> Mark {
        Mark { views: self.views.sent, bulk: self.bulk.sent }
    }

    pub fn acked(&self) -> Mark {
        Mark { views: self.views.acked, bulk: self.bulk.acked }
    }

    /// Flushes handed over and not acknowledged yet, both lanes.
    pub fn pending(&self) -> u64 {
        let (s, a) = (self.sent(), self.acked());
        s.views.saturating_sub(a.views) + s.bulk.saturating_sub(a.bulk)
    }

    /// Documents MongoDB acknowledged, both lanes.
    pub fn documents(&self) -> u64 {
        self.views.acks.documents.load(Ordering::Acquire) + self.bulk.acks.documents.load(Ordering::Acquire)
    }

    /// The last flush of each lane, handed over until `deadline`. False if either was not.
    pub async fn send_last(
        &mut self,
        (views, bulk): (ViewChanges, ViewChanges),
        deadline: Option<tokio::time::Instant>,
    ) -> bool {
        let (a, b) = tokio::join!(self.views.send_last(views, deadline), self.bulk.send_last(bulk, deadline));
        a && b
    }

    /// Closes both lanes and waits (until `deadline`) for them to write what they hold; a
    /// lane still writing then is stopped. Returns what MongoDB acknowledged.
    pub async fn close(&mut self, deadline: Option<tokio::time::Instant>) -> Mark {
        for lane in [&mut self.views, &mut self.bulk] {
            let Some(Task { tx, mut handle }) = lane.task.take() else { continue };
            drop(tx);
            if super::within(deadline, &mut handle).await.is_none() {
                handle.abort();
                lane.refresh();
                warn!(
                    lane = lane.kind.as_str(),
                    acknowledged = lane.acks.acked.load(Ordering::Acquire),
                    handed = lane.sent,
                    "shutdown timeout: stopped waiting for MongoDB; the snapshot covers the acknowledged flushes, the rest is read again at the next start"
                );
            }
        }
        self.refresh();
        self.acked()
    }
}

/// One lane's task.
struct Writer {
    kind: LaneKind,
    sink: MongoSink,
    acks: Arc<Acks>,
    metrics: Metrics,
    health: Arc<Health>,
    up: Arc<Up>,
    backoff: Backoff,
}

impl Writer {
    fn set_up(&self, up: bool) {
        self.up.0[self.kind as usize].store(up, Ordering::Relaxed);
        let both = self.up.0.iter().all(|u| u.load(Ordering::Relaxed));
        self.health.set_mongo_ok(both);
        self.metrics.mongo_up.set(i64::from(both));
    }

    fn latency(&self) -> &Latency {
        match self.kind {
            LaneKind::Views => &self.metrics.latency,
            LaneKind::Bulk => &self.metrics.facts_latency,
        }
    }

    /// Writes each batch, retrying with backoff until MongoDB takes it, and acknowledges
    /// them in order; pings while idle so readiness follows MongoDB's health.
    async fn run(self, mut rx: mpsc::Receiver<Batch>) {
        let lane = self.kind.as_str();
        let mut ping = tokio::time::interval(Duration::from_secs(2));
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                batch = rx.recv() => {
                    let Some(batch) = batch else { break };
                    let mut delay = self.backoff.initial;
                    loop {
                        let started = Instant::now();
                        let written = match self.kind {
                            LaneKind::Views => self.sink.write_views(&batch.changes, Utc::now()).await,
                            LaneKind::Bulk => self.sink.write_bulk(&batch.changes).await,
                        };
                        match written {
                            Ok(stats) => {
                                debug!(
                                    lane,
                                    seconds = started.elapsed().as_secs_f64(),
                                    events = batch.produced_ms.len(),
                                    documents = ?stats.per_collection,
                                    "flush written"
                                );
                                self.metrics.flush_duration.with_label_values(&[lane]).observe(started.elapsed().as_secs_f64());
                                self.metrics.flushes.with_label_values(&[lane, "ok"]).inc();
                                for (collection, n) in stats.per_collection {
                                    self.metrics.documents_written.with_label_values(&[collection]).inc_by(n as u64);
                                    self.acks.documents.fetch_add(n as u64, Ordering::Release);
                                }
                                if batch.changes.complete {
                                    let removed: u64 = stats.stale_removed.iter().map(|(_, n)| n).sum();
                                    for (collection, n) in &stats.stale_removed {
                                        self.metrics.stale_documents_removed.with_label_values(&[collection]).inc_by(*n);
                                    }
                                    info!(removed, per_collection = ?stats.stale_removed, "complete flush written; stale view documents removed");
                                }
                                self.set_up(true);
                                self.latency().record(&batch.produced_ms, Utc::now().timestamp_millis());
                                self.acks.acked.store(batch.seq, Ordering::Release);
                                break;
                            }
                            Err(e) => {
                                self.metrics.flushes.with_label_values(&[lane, "error"]).inc();
                                self.set_up(false);
                                warn!(lane, error = %e, retry_in_ms = delay.as_millis() as u64, "flush to MongoDB failed; retrying");
                                tokio::time::sleep(delay).await;
                                delay = (delay * 2).min(self.backoff.max);
                            }
                        }
                    }
                }
                _ = ping.tick() => self.set_up(self.sink.ping().await.is_ok()),
            }
        }
    }
}
