//! Checkpointing: when to take a snapshot of the running state, writing it off the hot
//! path, and restoring the newest usable one at start.
//!
//! A snapshot is only taken while the sink has written every flush handed to it, so the
//! state it records is "what MongoDB holds, plus changes not flushed yet" (those are in the
//! engine's dirty sets and pending facts, which the snapshot keeps). After a restore, the
//! first flush is complete (every view document rewritten, stale ones removed): flushes
//! written after the snapshot may have left documents the restored state does not know of.

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

/// What a written snapshot cost.
#[derive(Debug, Clone)]
pub struct Written {
    pub path: PathBuf,
    pub bytes: usize,
    pub took: Duration,
    pub taken_at_ms: i64,
}

/// Takes snapshots of the worker's state at an interval, one at a time.
pub struct Checkpointer {
    store: SnapshotStore,
    database: String,
    views: ViewConfig,
    /// Input topic names, by source topic index.
    topics: Vec<String>,
    every: Duration,
    last_at: Instant,
    /// Positions of the newest snapshot (taken or restored): nothing new, no snapshot.
    last_positions: Option<BTreeMap<TopicPartition, i64>>,
    newest_taken_at_ms: Option<i64>,
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
            last_at: Instant::now(),
            last_positions: None,
            newest_taken_at_ms: None,
            in_flight: None,
            metrics,
        }
    }

    /// The state was restored from a snapshot taken then.
    pub fn restored(&mut self, taken_at_ms: i64) {
        self.newest_taken_at_ms = Some(taken_at_ms);
        self.metrics.snapshot_last_success.set(taken_at_ms / 1000);
    }

    /// Whether a snapshot is due: the interval passed, something was consumed since the last
    /// one, and none is being written.
    pub fn due(&self, positions: &BTreeMap<TopicPartition, i64>) -> bool {
        self.in_flight.is_none()
            && self.last_at.elapsed() >= self.every
            && self.last_positions.as_ref() != Some(positions)
    }

    /// Encodes the state now (it must be consistent with MongoDB: the sink idle) and writes
    /// it durably on a blocking thread.
    fn spawn_write(
        &self,
        engine: &Engine,
        positions: &BTreeMap<TopicPartition, i64>,
    ) -> JoinHandle<Result<Written, SnapshotError>> {
        let started = Instant::now();
        let taken_at_ms = chrono::Utc::now().timestamp_millis();
        let meta = SnapshotMeta {
            taken_at_ms,
            database: self.database.clone(),
            positions: positions.iter().map(|(&(t, p), &o)| (self.topics[t].clone(), p, o)).collect(),
            views: self.views.clone(),
        };
        let bytes = encode(&meta, engine);
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let path = store.save(&bytes)?;
            Ok(Written { path, bytes: bytes.len(), took: started.elapsed(), taken_at_ms })
        })
    }

    /// Starts a snapshot; the consumer goes on while it is written.
    pub fn start(&mut self, engine: &Engine, positions: &BTreeMap<TopicPartition, i64>) {
        self.in_flight = Some(self.spawn_write(engine, positions));
        self.last_at = Instant::now();
        self.last_positions = Some(positions.clone());
    }

    /// Records a finished background write, if any; keeps the snapshot-age gauge current.
    pub async fn poll(&mut self) {
        if self.in_flight.as_ref().is_some_and(JoinHandle::is_finished) {
            let handle = self.in_flight.take().expect("checked");
            let result = handle.await.unwrap_or_else(|e| Err(SnapshotError::Io(format!("snapshot task failed: {e}"))));
            self.record(result);
        }
        if let Some(t) = self.newest_taken_at_ms {
            let age = (chrono::Utc::now().timestamp_millis() - t) as f64 / 1000.0;
            self.metrics.snapshot_age.set(age.max(0.0));
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

    /// At shutdown, after the last flush reached MongoDB: waits for a write in progress,
    /// then writes a final snapshot unless nothing changed since the newest.
    pub async fn finish(&mut self, engine: &Engine, positions: &BTreeMap<TopicPartition, i64>) {
        if let Some(handle) = self.in_flight.take() {
            let result = handle.await.unwrap_or_else(|e| Err(SnapshotError::Io(format!("snapshot task failed: {e}"))));
            self.record(result);
        }
        if self.last_positions.as_ref() == Some(positions) {
            return;
        }
        let result = self.spawn_write(engine, positions).await;
        let result = result.unwrap_or_else(|e| Err(SnapshotError::Io(format!("snapshot task failed: {e}"))));
        self.record(result);
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
