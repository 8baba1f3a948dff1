//! Checkpointing: aligned snapshots of the running state, written off the hot path, and the
//! restore at start.
//!
//! The protocol (Flink's aligned checkpoints, with the sink's flushes as the barriers):
//! 1. *Capture* at a flush boundary: after the worker handed its flushes to the two sink
//!    lanes (views and bulk; a [`Mark`] says how many on each), it settles its dead letters
//!    and encodes the engine with the positions it has read to. The state then is "every
//!    flush up to the mark, plus changes not flushed yet" (those stay in the engine's dirty
//!    sets, pending facts and restated dimension rows, which the snapshot keeps).
//!    Consumption goes on at once; the worker stalls only for the encode.
//! 2. *Persist* as soon as MongoDB acknowledged the mark on both lanes (each lane writes its
//!    flushes in order): the bytes go to the store on a blocking thread. No waiting for an
//!    idle sink, so snapshots keep coming while a backlog is written.
//! 3. A restored state is behind what MongoDB may hold (flushes acknowledged after the
//!    snapshot was captured); the views converge once the backlog is read again (see
//!    `pipeline`), and every write is idempotent.
//!
//! One capture waits at a time; the first of a life is due at once, later ones every
//! `snapshot.interval_ms`. At shutdown the last flush is captured too, and whichever capture
//! MongoDB acknowledged last is persisted.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::domain::{Engine, ViewConfig};
use crate::kafka::source::TopicPartition;
use crate::snapshot::format::{encode, SnapshotMeta};
use crate::snapshot::{SnapshotError, SnapshotStore};
use crate::telemetry::Metrics;

/// Flushes handed to (or acknowledged by) each sink lane. A capture taken after `views`
/// view flushes and `bulk` bulk flushes is durable once MongoDB acknowledged both.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mark {
    pub views: u64,
    pub bulk: u64,
}

impl Mark {
    /// Whether every flush `other` counts is within this one.
    pub fn covers(&self, other: &Mark) -> bool {
        self.views >= other.views && self.bulk >= other.bulk
    }
}

/// What a written snapshot cost.
#[derive(Debug, Clone)]
pub struct Written {
    pub path: PathBuf,
    pub bytes: usize,
    /// Encode (on the worker) plus the durable write.
    pub took: Duration,
    pub taken_at_ms: i64,
    /// Next offset per (topic, partition) it records.
    pub positions: Vec<(String, i32, i64)>,
}

/// A state captured at a flush boundary, waiting for MongoDB to acknowledge that flush.
struct Capture {
    /// The flushes it follows: persisted once the sink acknowledged them on both lanes.
    mark: Mark,
    bytes: Vec<u8>,
    encode: Duration,
    taken_at_ms: i64,
    positions: Vec<(String, i32, i64)>,
}

/// Captures and persists snapshots of the worker's state, one at a time.
pub struct Checkpointer {
    store: SnapshotStore,
    database: String,
    views: ViewConfig,
    /// Input topic names, by source topic index.
    topics: Vec<String>,
    every: Duration,
    /// The last capture of this life; none yet: the next flush boundary captures.
    last_at: Option<Instant>,
    /// Positions of the newest capture (or restore): nothing new, no snapshot.
    last_positions: Option<BTreeMap<TopicPartition, i64>>,
    newest_taken_at_ms: Option<i64>,
    /// Captures whose flush MongoDB has not acknowledged yet, oldest first (at most one,
    /// and the last flush's at shutdown).
    waiting: Vec<Capture>,
    in_flight: Option<JoinHandle<Result<Written, SnapshotError>>>,
    metrics: Metrics,
}

impl Checkpointer {
    pub fn new(
        store: SnapshotStore,
        (database, views): (String, ViewConfig),
        topics: Vec<String>,
        every: Duration,
        metrics: Metrics,
    ) -> Self {
        Checkpointer {
            store,
            database,
            views,
            topics,
            every,
            last_at: None,
            last_positions: None,
            newest_taken_at_ms: None,
            waiting: Vec::new(),
            in_flight: None,
            metrics,
        }
    }

    /// Consumption starts at `positions`: restored from a snapshot taken at `restored_at_ms`,
    /// or from the beginning. Nothing is captured before something new was read.
    pub fn starting_at(&mut self, positions: BTreeMap<TopicPartition, i64>, restored_at_ms: Option<i64>) {
        if let Some(taken_at_ms) = restored_at_ms {
            self.newest_taken_at_ms = Some(taken_at_ms);
            self.export_positions(&self.named(&positions));
            self.metrics.snapshot_last_success.set(taken_at_ms / 1000);
        }
        self.last_positions = Some(positions);
    }

    fn named(&self, positions: &BTreeMap<TopicPartition, i64>) -> Vec<(String, i32, i64)> {
        positions.iter().map(|(&(t, p), &o)| (self.topics[t].clone(), p, o)).collect()
    }

    fn export_positions(&self, positions: &[(String, i32, i64)]) {
        for (topic, partition, offset) in positions {
            self.metrics.snapshot_positions.with_label_values(&[topic, &partition.to_string()]).set(*offset);
        }
    }

    /// Whether a capture is due at this flush boundary: none waits or is being written,
    /// the interval passed (or none was taken in this life), and something was read since.
    pub fn due(&self, positions: &BTreeMap<TopicPartition, i64>) -> bool {
        self.waiting.is_empty()
            && self.in_flight.is_none()
            && self.last_at.is_none_or(|t| t.elapsed() >= self.every)
            && self.last_positions.as_ref() != Some(positions)
    }

    /// Encodes the state now, with the flushes of `mark` handed to the sink (every dead
    /// letter before `positions` confirmed by the broker); persisted once `mark` is acknowledged.
    pub fn capture(&mut self, engine: &Engine, positions: &BTreeMap<TopicPartition, i64>, mark: Mark) {
        let started = Instant::now();
        let taken_at_ms = chrono::Utc::now().timestamp_millis();
        let meta = SnapshotMeta {
            taken_at_ms,
            database: self.database.clone(),
            positions: self.named(positions),
            views: self.views.clone(),
        };
        let bytes = encode(&meta, engine);
        let encode = started.elapsed();
        self.metrics.snapshot_capture_stall.observe(encode.as_secs_f64());
        tracing::debug!(
            views = mark.views,
            bulk = mark.bulk,
            bytes = bytes.len(),
            stall_ms = encode.as_millis() as u64,
            "state captured"
        );
        self.waiting.push(Capture { mark, bytes, encode, taken_at_ms, positions: meta.positions });
        self.last_at = Some(Instant::now());
        self.last_positions = Some(positions.clone());
    }

    /// Records a finished write; starts writing the newest capture MongoDB has caught up with
    /// (`acked` flushes acknowledged); keeps the snapshot-age gauge current.
    pub async fn poll(&mut self, acked: Mark) {
        if self.in_flight.as_ref().is_some_and(JoinHandle::is_finished) {
            self.wait_write().await;
        }
        if self.in_flight.is_none() {
            if let Some(capture) = self.take_acknowledged(acked) {
                self.in_flight = Some(self.spawn_write(capture));
            }
        }
        if let Some(t) = self.newest_taken_at_ms {
            let age = (chrono::Utc::now().timestamp_millis() - t) as f64 / 1000.0;
            self.metrics.snapshot_age.set(age.max(0.0));
        }
    }

    /// The newest waiting capture whose flush is acknowledged; older ones are dropped.
    fn take_acknowledged(&mut self, acked: Mark) -> Option<Capture> {
        let n = self.waiting.iter().rposition(|c| acked.covers(&c.mark))? + 1;
        self.waiting.drain(..n).next_back()
    }

    fn spawn_write(&self, capture: Capture) -> JoinHandle<Result<Written, SnapshotError>> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let path = store.save(&capture.bytes)?;
            let took = capture.encode + started.elapsed();
            let Capture { bytes, taken_at_ms, positions, .. } = capture;
            Ok(Written { path, bytes: bytes.len(), took, taken_at_ms, positions })
        })
    }

    async fn wait_write(&mut self) {
        if let Some(handle) = self.in_flight.take() {
            let result = handle.await.unwrap_or_else(|e| Err(SnapshotError::Io(format!("snapshot task failed: {e}"))));
            self.record(result);
        }
    }

    fn record(&mut self, result: Result<Written, SnapshotError>) {
        match result {
            Ok(w) => {
                self.metrics.snapshots.with_label_values(&["ok"]).inc();
                self.metrics.snapshot_duration.set(w.took.as_secs_f64());
                self.metrics.snapshot_size.set(w.bytes as i64);
                self.metrics.snapshot_last_success.set(w.taken_at_ms / 1000);
                self.newest_taken_at_ms = Some(w.taken_at_ms);
                self.export_positions(&w.positions);
                info!(path = %w.path.display(), bytes = w.bytes, took_ms = w.took.as_millis() as u64, "snapshot written");
            }
            Err(e) => {
                self.metrics.snapshots.with_label_values(&["error"]).inc();
                // Not recorded as taken: the next interval tries again.
                self.last_positions = None;
                warn!(error = %e, "snapshot failed; the previous snapshots are kept, retrying at the next interval");
            }
        }
    }

    /// At shutdown, once the sink stopped (`acked` flushes acknowledged, every one or as many
    /// as MongoDB took within the timeout): waits for a write in progress, then persists the
    /// newest capture MongoDB caught up with. Returns the mark of the capture not persisted
    /// because its flushes were not acknowledged, if any.
    pub async fn finish(&mut self, acked: Mark) -> Option<Mark> {
        self.wait_write().await;
        if let Some(capture) = self.take_acknowledged(acked) {
            let result = self.spawn_write(capture).await;
            let result = result.unwrap_or_else(|e| Err(SnapshotError::Io(format!("snapshot task failed: {e}"))));
            self.record(result);
        }
        self.waiting.last().map(|c| c.mark)
    }

    /// Whether this state is already captured (nothing read since the newest capture).
    pub fn has(&self, positions: &BTreeMap<TopicPartition, i64>) -> bool {
        self.last_positions.as_ref() == Some(positions)
    }
}

/// A state restored at start.
pub struct Restored {
    pub engine: Engine,
    /// Where to resume, per (topic name, partition).
    pub positions: BTreeMap<(String, i32), i64>,
    pub taken_at_ms: i64,
    pub path: PathBuf,
}

/// Reads the newest usable snapshot for this database, view settings and input topics,
/// saying why any newer one was passed over. `None`: start from the beginning.
pub fn restore(
    store: &SnapshotStore,
    database: &str,
    views: &ViewConfig,
    topics: &[String],
    metrics: &Metrics,
) -> Result<Option<Restored>, SnapshotError> {
    let started = Instant::now();
    let (found, skipped) = store.load_newest(|s| {
        if s.meta.database != database {
            return Err(format!("database {:?}, not {database:?}", s.meta.database));
        }
        if &s.meta.views != views {
            return Err("the [views] settings changed since it was taken".into());
        }
        if let Some((t, _, _)) = s.meta.positions.iter().find(|(t, _, _)| !topics.contains(t)) {
            return Err(format!("it covers topic {t:?}, which is no longer an input"));
        }
        Ok(())
    })?;
    for s in &skipped {
        warn!(path = %s.path.display(), reason = %s.error, "snapshot not usable; trying an older one");
    }
    let Some((path, snapshot)) = found else {
        if !skipped.is_empty() {
            warn!(dir = %store.dir().display(), "no usable snapshot: rebuilding the state from the beginning of the topics");
        }
        return Ok(None);
    };
    let took = started.elapsed();
    metrics.restore_duration.set(took.as_secs_f64());
    info!(
        path = %path.display(),
        customers = snapshot.engine.rfm().customer_count(),
        taken_at = %chrono::DateTime::from_timestamp_millis(snapshot.meta.taken_at_ms).unwrap_or_default().to_rfc3339(),
        took_ms = took.as_millis() as u64,
        "state restored from snapshot"
    );
    Ok(Some(Restored {
        positions: snapshot.meta.positions.into_iter().map(|(t, p, o)| ((t, p), o)).collect(),
        engine: snapshot.engine,
        taken_at_ms: snapshot.meta.taken_at_ms,
        path,
    }))
}
