//! The always-on loop that wires the adapters around the engine:
//! Kafka message → decode (on a task of its own, [`decode_stage`]) → engine (or
//! dead-letter) → the changed documents → two sink lanes → MongoDB: the analytic views as soon as their previous flush is acknowledged, the
//! facts and dimensions as fast as MongoDB takes them (see [`sink_lanes`]).
//!
//! While a lane is busy or MongoDB is down (it retries with backoff), consumption goes on
//! and changes coalesce inside the engine's dirty sets, so memory is bounded by the state
//! (and `service.max_pending_facts`), not by the outage's length.
//!
//! Every flush handed to a lane has a sequence number; each lane acknowledges its flushes in
//! order. Snapshots are captured at flush boundaries and persisted once both lanes
//! acknowledged what was handed to them before (see [`crate::checkpoint`]).
//!
//! Convergence: whatever a start begins from (nothing, or a snapshot older than what
//! MongoDB holds), MongoDB may hold view documents the state does not know of. Once the
//! backlog present at start is read (to within `service.ready_max_lag`), one complete flush
//! rewrites every view document and removes the others; /readyz waits for it.
//!
//! Shutdown is bounded by `service.shutdown_timeout_ms`: the last flush is handed over and
//! waited for until then; the snapshot persisted is the newest whose flush MongoDB
//! acknowledged, so nothing is lost when MongoDB was too slow to take the rest.

pub(crate) mod decode_stage;
pub mod sink_lanes;
mod worker_dead_letters;
mod worker_flush;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::checkpoint::Checkpointer;
use crate::domain::{Engine, Outcome, Rejection};
use crate::health::Health;
use crate::kafka::dlq::{DeadLetters, SourcePosition};
use crate::kafka::source::{Source, TopicPartition};
use crate::query::{self, Mirror};
use crate::sink::mongo::MongoSink;
use crate::telemetry::Metrics;
use decode_stage::{DecodeStage, Event, Ingested};
use sink_lanes::SinkLanes;

/// The instant the views describe (SPEC §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsOf {
    Wall,
    Event,
    Fixed(DateTime<Utc>),
}

impl AsOf {
    /// `None` under the event clock before any event was applied.
    pub fn at(&self, engine: &Engine) -> Option<DateTime<Utc>> {
        match self {
            AsOf::Wall => Some(Utc::now()),
            AsOf::Event => engine.watermark(),
            AsOf::Fixed(t) => Some(*t),
        }
    }
}

/// Doubling delays between retries.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

/// How often the loop looks whether a sink lane is free for its next flush.
const FLUSH_POLL: Duration = Duration::from_millis(20);
/// How often gauges, consumer lag and progress are updated.
const HOUSEKEEPING: Duration = Duration::from_secs(1);

/// Dead letters handed to the producer but not confirmed, at most (then the worker waits).
const MAX_PENDING_DEAD_LETTERS: usize = 10_000;

/// The engine's lane of a partition (a topic with more than 65536 partitions would have
/// some share a lane, and so a dedup horizon).
pub(crate) fn lane(partition: i32) -> u16 {
    (partition.max(0) % 65536) as u16
}

/// When consumption stops (besides shutdown).
#[derive(Debug, Clone)]
pub enum Until {
    /// Follow the topic forever.
    Forever,
    /// Stop once every partition's position reached this offset (replay to the end).
    Offsets(BTreeMap<TopicPartition, i64>),
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub consumed: u64,
    pub applied: u64,
    pub duplicates: u64,
    pub dead_lettered: u64,
    /// Rejected, and not sent to the DLQ by the dead-letter policy (already there).
    pub rejected_not_sent: u64,
    pub documents_written: u64,
    pub as_of: Option<DateTime<Utc>>,
    pub positions: BTreeMap<TopicPartition, i64>,
    /// Time spent reading to the end, then waiting for the last writes and the snapshot.
    pub reading: Duration,
    pub draining: Duration,
    /// A replay into an empty database: the secondary index build after the load.
    pub indexing: Option<Duration>,
}

/// What an input topic carries, and where its rejects go.
#[derive(Debug, Clone)]
pub struct Input {
    pub kind: InputKind,
    pub dlq_topic: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    Transactions,
    Sessions,
}

/// One flush on its way to the sink.
pub struct Pipeline {
    pub source: Source,
    pub worker: Worker,
    /// Interactive queries from the HTTP API, answered between messages.
    pub queries: Option<mpsc::Receiver<query::Request>>,
    /// Reconciliation requests (`run` only).
    pub control: Option<mpsc::Receiver<crate::reconcile::Control>>,
}

/// How a run flushes and retries.
#[derive(Debug, Clone, Copy)]
pub struct Cadence {
    pub as_of: AsOf,
    /// The views lane: at least this long between two view flushes.
    pub flush_every: Duration,
    /// dim_customer rows that follow RFM changes are written at most this often (coalesced,
    /// the latest value wins); a new customer's row goes at once.
    pub dimension_every: Duration,
    /// product_performance rank-only rewrites are written at most this often.
    pub rank_every: Duration,
    /// customer_rfm_analysis rewrites that are not the customer's own change (a boundary
    /// moved, the date changed), at most this many per view flush; `None`: all at once.
    pub rescores_per_flush: Option<usize>,
    pub backoff: Backoff,
    /// Consumption pauses while more facts than this wait for MongoDB.
    pub max_pending_facts: usize,
    /// Messages per second at most (a gentle backfill); `None`: as fast as it goes.
    pub max_rate: Option<u32>,
    /// After a shutdown signal, how long the last flush and snapshot may take.
    pub shutdown_timeout: Duration,
}

/// Whether MongoDB's views have been brought in line with the state since this start.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Convergence {
    /// A complete flush is due once every partition's position is within `slack` messages
    /// (in all) of where the topic ended at start.
    Pending { backlog_end: BTreeMap<TopicPartition, i64>, slack: i64 },
    /// The complete flush went to the views lane as this batch.
    Sent(u64),
    /// MongoDB acknowledged it (or nothing to converge: `replay` ends with a complete flush).
    Done,
}

impl Convergence {
    fn due(&self, positions: &BTreeMap<TopicPartition, i64>) -> bool {
        match self {
            Convergence::Pending { backlog_end, slack } => {
                let behind: i64 =
                    backlog_end.iter().map(|(tp, &end)| (end - positions.get(tp).copied().unwrap_or(0)).max(0)).sum();
                behind <= *slack
            }
            _ => false,
        }
    }
}

/// Everything the loop mutates, apart from the consumer that lends out messages.
pub struct Worker {
    engine: Engine,
    dlq: DeadLetters,
    metrics: Metrics,
    health: Arc<Health>,
    cadence: Cadence,
    /// Per source topic index.
    inputs: Vec<Input>,
    /// Next offset to read, per partition.
    positions: BTreeMap<TopicPartition, i64>,
    summary: Summary,
    /// Late-event counts already exported, per view.
    late_exported: [u64; 2],
    /// Snapshots (`run`); none for `replay`.
    checkpoints: Option<Checkpointer>,
    convergence: Convergence,
    lanes: SinkLanes,
    /// When each recent view flush (generation) was built, oldest first: a dim_customer
    /// row is restated `dimension_interval_ms` after the view flush it first changed in.
    view_flushes: std::collections::VecDeque<(Instant, u64)>,
    /// The newest generation whose rows are due.
    restate_through: u64,
    /// The last flushed windowed views, for queries.
    mirror: Mirror,
    /// When the segment gauges were last recounted (a scan of every customer).
    segments_counted: Option<Instant>,
    /// When the last view flush that wrote rank-only changes was built.
    ranks_flushed: Option<Instant>,
    /// Reconciliations waiting for the bulk lane to acknowledge a batch (its seq).
    facts_written_waiters: Vec<(u64, tokio::sync::oneshot::Sender<()>)>,
}

impl Worker {
    pub fn new(
        engine: Engine,
        dlq: DeadLetters,
        (metrics, health): (Metrics, Arc<Health>),
        cadence: Cadence,
        (inputs, positions): (Vec<Input>, BTreeMap<TopicPartition, i64>),
    ) -> Self {
        let mut engine = engine;
        // A complete flush's restates fall due over about one more dimension interval.
        let flushes_per_interval = cadence.dimension_every.as_millis() / cadence.flush_every.as_millis().max(1);
        engine.spread_restates_over(flushes_per_interval as u64);
        Worker {
            engine,
            dlq,
            metrics,
            health,
            cadence,
            inputs,
            positions,
            summary: Summary::default(),
            late_exported: [0; 2],
            checkpoints: None,
            convergence: Convergence::Done,
            lanes: SinkLanes::default(),
            view_flushes: std::collections::VecDeque::new(),
            restate_through: 0,
            mirror: Mirror::default(),
            segments_counted: None,
            ranks_flushed: None,
            facts_written_waiters: Vec::new(),
        }
    }

    /// Takes snapshots with `checkpoints`.
    pub fn with_checkpoints(mut self, checkpoints: Checkpointer) -> Self {
        self.checkpoints = Some(checkpoints);
        self
    }

    /// `run`: once the topic is read up to where it ended at start (to within `slack`
    /// messages), one complete flush makes MongoDB's views those of the state.
    pub fn converge_after(mut self, backlog_end: BTreeMap<TopicPartition, i64>, slack: i64) -> Self {
        self.convergence = Convergence::Pending { backlog_end, slack };
        self.health.set_converged(false);
        self.metrics.views_converged.set(0);
        self
    }

    /// Too many facts wait for MongoDB: stop reading until the sink catches up.
    fn backlogged(&self) -> bool {
        self.engine.warehouse().pending_facts() >= self.cadence.max_pending_facts
    }

    /// One decoded message; `topics` names the source's topics by index.
    async fn handle(&mut self, m: Ingested, topics: &[String]) {
        self.metrics.events_consumed.inc();
        self.summary.consumed += 1;
        let lane = lane(m.partition);
        let (outcome, id) = match m.event {
            Err(rejection) => (Err(rejection), String::new()),
            Ok(Event::Transaction(event)) => {
                let outcome = self.engine.apply_on(&event, lane);
                if outcome == (Outcome::Applied { orphan_refund: true }) {
                    self.metrics.refunds_unmatched.inc();
                }
                if matches!(outcome, Outcome::Applied { .. }) {
                    self.metrics.events_applied.with_label_values(&[event.tx.kind.as_str()]).inc();
                }
                (Ok(outcome), event.tx.transaction_id)
            }
            Ok(Event::Session(event)) => {
                let outcome = self.engine.apply_session(&event, lane);
                if matches!(outcome, Outcome::Applied { .. }) {
                    self.metrics.events_applied.with_label_values(&["session"]).inc();
                }
                (Ok(outcome), event.tx.session_id)
            }
        };
        let message_ts = m.timestamp_ms;
        let rejection = match outcome {
            Err(rejection) => Some(rejection),
            Ok(Outcome::Applied { .. }) => {
                self.summary.applied += 1;
                if let Some(t) = message_ts {
                    self.lanes.record_produced(t);
                }
                None
            }
            Ok(Outcome::Duplicate) => {
                self.summary.duplicates += 1;
                self.metrics.events_duplicate.inc();
                None
            }
            Ok(Outcome::Conflicting) => Some(Rejection::conflicting(&id)),
        };
        if let Some(rejection) = rejection {
            let from = SourcePosition {
                topic: &topics[m.topic],
                partition: m.partition,
                offset: m.offset,
                timestamp_ms: message_ts,
            };
            if self.dlq.wanted(&from) {
                let dlq_topic = self.inputs[m.topic].dlq_topic.clone();
                self.dead_letter(&dlq_topic, m.key.as_deref(), m.payload.as_deref(), &rejection, &from).await;
            } else {
                self.summary.rejected_not_sent += 1;
                self.metrics.dead_letters_not_sent.with_label_values(&[rejection.reason.as_str()]).inc();
                debug!(
                    reason = rejection.reason.as_str(),
                    partition = from.partition,
                    offset = from.offset,
                    "rejected; not dead-lettered again (the DLQ holds it, or --dead-letters none)"
                );
            }
        }
        self.positions.insert((m.topic, m.partition), m.offset + 1);
    }

    fn update_gauges(&mut self) {
        self.metrics.sink_pending_flushes.set(self.lanes.pending() as i64);
        let pending = self.engine.warehouse().pending_facts() + self.lanes.bulk.rows_in_flight();
        self.metrics.facts_pending.set(pending as i64);
        let late = [self.engine.products().late_lines(), self.engine.trends().late_events()];
        for (i, view) in ["product_performance", "sales_trends"].into_iter().enumerate() {
            self.metrics.late_events.with_label_values(&[view]).inc_by(late[i] - self.late_exported[i]);
        }
        self.late_exported = late;
        self.metrics.customers.set(self.engine.rfm().customer_count() as i64);
        self.metrics.rescores_waiting.set(self.engine.rfm().rescores_waiting() as i64);
        self.metrics.products.set(self.engine.products().product_count() as i64);
        if self.segments_counted.is_none_or(|t| t.elapsed() >= Duration::from_secs(15)) {
            self.segments_counted = Some(Instant::now());
            for (segment, n) in self.engine.rfm().segment_counts() {
                self.metrics.segment_customers.with_label_values(&[&segment]).set(n as i64);
            }
        }
        self.metrics.dedup_entries.set(self.engine.dedup_len() as i64);
        if let Some(w) = self.engine.watermark() {
            self.metrics.event_time_watermark.set(w.timestamp());
            let lag_ms = (Utc::now() - w).num_milliseconds();
            self.metrics.event_time_lag.set(lag_ms as f64 / 1000.0);
        }
    }

    fn update_lag(&self, source: &Source) {
        let mut total = 0;
        for ((t, p), high) in source.cached_high_watermarks() {
            let position = self.positions.get(&(t, p)).copied().unwrap_or(0);
            let lag = (high - position).max(0);
            total += lag;
            self.metrics.consumer_lag.with_label_values(&[&source.topics[t], &p.to_string()]).set(lag);
        }
        self.health.set_lag(total);
    }

    /// A reconciliation's request: the figures at a cut, or a repair.
    fn control(&mut self, c: crate::reconcile::Control) {
        use crate::reconcile::Control;
        match c {
            Control::Cut { cutoff, settle, days, reply } => {
                let cutoff = cutoff.or_else(|| self.engine.watermark().map(|w| (w - settle).date_naive()));
                let cut = match cutoff {
                    None => Err("no event applied yet: nothing to compare".to_owned()),
                    Some(c) => self.engine.cut(c, days).map_err(|e| e.to_string()),
                };
                let _ = reply.send(cut);
            }
            Control::Repair { cutoff, fixes, reply } => {
                let changes = self.engine.repair(cutoff, &fixes).map_err(|e| e.to_string());
                let _ = reply.send(changes);
            }
            Control::FactsWritten { reply } => {
                // The facts waiting in the state go with the next bulk batch.
                let waiting = u64::from(self.engine.warehouse().pending_facts() > 0);
                self.facts_written_waiters.push((self.lanes.sent().bulk + waiting, reply));
            }
        }
    }

    fn caught_up(&self, until: &Until) -> bool {
        match until {
            Until::Forever => false,
            Until::Offsets(end) => end.iter().all(|(tp, &e)| self.positions.get(tp).copied().unwrap_or(0) >= e),
        }
    }
}

impl Pipeline {
    /// Consumes until `until` or `shutdown`, then writes a last flush (every document when
    /// `final_full`) and waits until MongoDB has it: to the end when the topic was read to
    /// `until`, at most `shutdown_timeout` after a shutdown signal.
    pub async fn run(self, sink: MongoSink, until: Until, final_full: bool, shutdown: CancellationToken) -> Summary {
        let Pipeline { source, mut worker, queries, control } = self;
        let source = Arc::new(source);
        let kinds = worker.inputs.iter().map(|i| i.kind).collect();
        let mut decoded = DecodeStage::spawn(source.clone(), kinds, Some(worker.positions.clone()));
        let mut queries = queries.unwrap_or_else(|| query::channel().1);
        let mut control = control.unwrap_or_else(|| crate::reconcile::channel().1);
        worker.lanes.start(sink, (worker.metrics.clone(), worker.health.clone()), worker.cadence.backoff);
        // Flushes are tried often (a lane is free as soon as MongoDB acknowledged its last
        // batch); gauges, lag and progress once a second.
        let mut flush_tick = tokio::time::interval(FLUSH_POLL.min(worker.cadence.flush_every));
        flush_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut tick = tokio::time::interval(HOUSEKEEPING);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_progress = (Instant::now(), 0);
        let started = Instant::now();
        let progress = Progress::new(&until, &worker.positions);

        while !worker.caught_up(&until) {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some((q, reply)) = queries.recv() => {
                    let _ = reply.send(worker.mirror.answer(&worker.engine, &q));
                }
                Some(c) = control.recv() => worker.control(c),
                _ = flush_tick.tick() => {
                    worker.acknowledged().await;
                    worker.try_flush().await;
                }
                _ = tick.tick() => {
                    worker.reap_dead_letters().await;
                    worker.update_gauges();
                    worker.update_lag(&source);
                    source.commit_for_monitoring(&worker.positions);
                    progress.show(worker.summary.consumed);
                    if last_progress.0.elapsed() >= Duration::from_secs(5) && last_progress.1 != worker.summary.consumed {
                        last_progress = (Instant::now(), worker.summary.consumed);
                        progress.log(&worker.summary, started.elapsed());
                    }
                }
                Some(m) = decoded.output.recv(), if !worker.backlogged() => {
                    worker.handle(m, &source.topics).await;
                    if let Some(rate) = worker.cadence.max_rate {
                        // Ahead of the allowed pace: wait it out (in steps of at least 10 ms).
                        let ahead = worker.summary.consumed as f64 / f64::from(rate) - started.elapsed().as_secs_f64();
                        if ahead > 0.01 {
                            tokio::time::sleep(Duration::from_secs_f64(ahead)).await;
                        }
                    }
                }
            }
        }

        drop(decoded); // stops reading: what it decoded ahead was not applied, nor counted in the positions
        worker.summary.reading = started.elapsed();
        // After a signal the rest is bounded; at the end of a replay it takes what it takes.
        let deadline = shutdown.is_cancelled().then(|| tokio::time::Instant::now() + worker.cadence.shutdown_timeout);
        // The sink stops waiting a little before the deadline: the snapshot needs its write.
        let sink_deadline = deadline.map(|d| d - worker.cadence.shutdown_timeout / 5);
        let settled = within(sink_deadline, worker.settle_dead_letters()).await.is_some();
        if !settled {
            warn!("shutdown timeout: dead letters not confirmed by the broker; no snapshot of the last state");
        }
        // The last flush of each lane: waits for room, then for the lanes to drain.
        // (A replay that applied nothing leaves the database as it was.)
        let applied_any = worker.cadence.as_of.at(&worker.engine).is_some();
        let converge = (final_full && applied_any) || worker.convergence.due(&worker.positions);
        {
            worker.ranks_flushed = None; // the last flush writes every deferred rank
            worker.cadence.rescores_per_flush = None; // and every deferred rescore
            let views = worker.view_changes(converge).unwrap_or_default();
            worker.mirror.apply(&views);
            let bulk = worker.bulk_changes(true);
            let handed = worker.lanes.send_last((views, bulk), sink_deadline).await;
            // The state without the changes of a flush that never reached the sink must not
            // be persisted: they are in neither MongoDB nor the dirty sets.
            if settled && handed {
                if let Some(c) = worker.checkpoints.as_mut().filter(|c| !c.has(&worker.positions)) {
                    c.capture(&worker.engine, &worker.positions, worker.lanes.sent());
                }
            }
        }
        progress.finish(worker.summary.consumed);
        let acked = worker.lanes.close(sink_deadline).await;
        worker.summary.documents_written = worker.lanes.documents();
        if let Some(checkpoints) = worker.checkpoints.as_mut() {
            checkpoints.finish(acked).await;
        }
        worker.update_gauges();
        source.commit_for_monitoring(&worker.positions);
        worker.summary.positions = worker.positions.clone();
        worker.summary.draining = started.elapsed() - worker.summary.reading;
        worker.summary
    }
}

/// `future`, or `None` if `deadline` passes first (no deadline: it runs to completion).
async fn within<F: std::future::IntoFuture>(deadline: Option<tokio::time::Instant>, future: F) -> Option<F::Output> {
    match deadline {
        None => Some(future.await),
        Some(d) => tokio::time::timeout_at(d, future).await.ok(),
    }
}

/// How far a replay is: a bar with ETA on a terminal, progress lines in the log otherwise.
struct Progress {
    total: Option<u64>,
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    fn new(until: &Until, start: &BTreeMap<TopicPartition, i64>) -> Self {
        let total = match until {
            Until::Forever => None,
            Until::Offsets(end) => {
                Some(end.iter().map(|(tp, e)| (e - start.get(tp).copied().unwrap_or(0)).max(0) as u64).sum())
            }
        };
        let bar = total.filter(|_| std::io::IsTerminal::is_terminal(&std::io::stderr())).map(|n| {
            let bar = indicatif::ProgressBar::new(n);
            let style = indicatif::ProgressStyle::with_template(
                "{spinner} replay [{elapsed_precise}] {wide_bar} {pos}/{len} messages, {per_sec}, ETA {eta}",
            )
            .expect("valid template");
            bar.set_style(style);
            bar
        });
        Progress { total, bar }
    }

    fn show(&self, consumed: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(consumed);
        }
    }

    fn log(&self, s: &Summary, elapsed: Duration) {
        if self.bar.is_some() {
            return;
        }
        match self.total {
            Some(total) if total > 0 => {
                let rate = s.consumed as f64 / elapsed.as_secs_f64().max(0.001);
                let eta_s = (total.saturating_sub(s.consumed) as f64 / rate.max(1.0)).round() as u64;
                let percent = (100.0 * s.consumed as f64 / total as f64).min(100.0);
                info!(
                    consumed = s.consumed,
                    total,
                    percent = format!("{percent:.1}"),
                    per_second = rate.round() as u64,
                    eta_s,
                    applied = s.applied,
                    dead_lettered = s.dead_lettered,
                    "replay progress"
                );
            }
            _ => info!(consumed = s.consumed, applied = s.applied, dead_lettered = s.dead_lettered, "progress"),
        }
    }

    fn finish(&self, consumed: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(consumed);
            bar.finish();
        }
    }
}
