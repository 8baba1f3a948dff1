//! The nightly reconciliation against PostgreSQL, the operational system of record.
//!
//! A run: ask the pipeline's worker for the state's figures at the cut (see
//! [`crate::domain::reconcile`]; the worker keeps consuming afterwards), stream PostgreSQL's
//! per-customer figures over the same cut and compare them one by one, then compare the
//! closed days, the weekly and monthly periods (their part before the cut, of any age the
//! views keep), each product's day buckets in the product window, and the facts of every
//! customer whose figures differ, line by line (`transaction_items` against `fact_sales` and
//! `fact_returns`, once the worker says every fact it had is written). With `repair`, the
//! database's figures of every mismatch go to the worker (PostgreSQL wins; the next flushes
//! rewrite the views and add, replace or remove the facts). Every run, failed or not, leaves
//! a document in `reconciliation_reports`, gauges and a log line.
//!
//! - [`postgres`]: the database's queries and the schema's migrations.
//! - [`schedule`]: daily at `reconcile.at` in `reconcile.time_zone`, retried after a failure.

pub mod postgres;
pub mod schedule;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, Utc};
use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, Mutex};
use tracing::{info, warn};

use crate::config::ReconcileConfig;
use crate::domain::calendar::{date_key, date_of, epoch_day, month_index};
use crate::domain::reconcile::{Cut, Fixes, MismatchKind, RepairChange, Tally};
use crate::domain::trends::{period_start_day, Granularity};
use crate::health::Health;
use crate::telemetry::Metrics;
use postgres::Postgres;

pub const REPORTS: &str = "reconciliation_reports";

/// What the reconciliation asks of the pipeline's worker, the state's one owner.
pub enum Control {
    /// The state's figures at `cutoff` (default: the date of newest event − `settle`).
    Cut { cutoff: Option<NaiveDate>, settle: chrono::Duration, days: u32, reply: oneshot::Sender<Result<Cut, String>> },
    /// Set these figures at `cutoff` (the database wins).
    Repair { cutoff: NaiveDate, fixes: Box<Fixes>, reply: oneshot::Sender<Result<Vec<RepairChange>, String>> },
    /// Answer once MongoDB acknowledged every fact the state had when asked.
    FactsWritten { reply: oneshot::Sender<()> },
}

/// How long a run waits for the facts the state holds to be written before comparing them.
const FACTS_WRITTEN_TIMEOUT: Duration = Duration::from_secs(120);

pub fn channel() -> (mpsc::Sender<Control>, mpsc::Receiver<Control>) {
    mpsc::channel(4)
}

/// How a run was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    Schedule,
    Manual,
}

/// What a run is asked to do.
#[derive(Debug, Clone)]
pub struct RunRequest {
    pub cutoff: Option<NaiveDate>,
    pub repair: bool,
    pub trigger: Trigger,
}

/// A run's outcome: the document written to `reconciliation_reports`, also the answer of
/// `POST /v1/reconcile`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub duration_seconds: f64,
    pub trigger: Trigger,
    pub repair: bool,
    /// `ok` (no mismatch), `mismatches`, `repaired`, or `failed`.
    pub outcome: &'static str,
    pub error: Option<String>,
    /// Events dated before this date's midnight (UTC) were compared.
    pub cutoff: Option<NaiveDate>,
    /// Closed days compared: `days_from` ..= the day before the cutoff.
    pub days_from: Option<NaiveDate>,
    pub customers_checked: u64,
    pub customers_in_stream: u64,
    pub customers_in_postgres: u64,
    pub days_checked: u64,
    /// Weekly and monthly periods, product day buckets and fact lines compared.
    pub periods_checked: u64,
    pub product_days_checked: u64,
    pub facts_checked: u64,
    /// Every kind, zeros included.
    pub mismatches: std::collections::BTreeMap<&'static str, u64>,
    pub mismatches_total: u64,
    pub purchases_missing_in_stream: i64,
    pub purchases_missing_in_postgres: i64,
    pub samples: Vec<crate::domain::reconcile::Mismatch>,
    pub changes_total: u64,
    pub changes: Vec<RepairChange>,
}

/// Compares a cut with PostgreSQL: streams its per-customer rows against the cut's
/// customers (taking them out of `cut`), then the closed days.
pub async fn compare_cut(pg: &Postgres, cut: &mut Cut, samples: usize) -> Result<Tally, postgres::PgError> {
    let cutoff_day = epoch_day(cut.cutoff);
    let mut tally = Tally::new(samples);
    {
        let rows = pg.customers(cutoff_day);
        futures::pin_mut!(rows);
        while let Some((id, db)) = rows.try_next().await? {
            tally.customers_in_postgres += 1;
            let stream = cut.customers.remove(id.as_str());
            tally.customer(&id, stream.as_ref(), Some(&db));
        }
    }
    // What is left: customers the database has no row of before the cut.
    for (id, stream) in cut.customers.drain() {
        tally.customer(&id, Some(&stream), None);
    }
    let db_days = pg.days(cut.first_day, cutoff_day).await?.into_iter().collect();
    tally.days_of(cut, &db_days);
    for (g, first, stream) in &cut.periods {
        let key = |day: i32| if *g == Granularity::Monthly { month_index(date_of(day)) } else { day };
        let from = period_start_day(*g, *first);
        let db = pg.periods(*g, from, cut.first_day).await?.into_iter().map(|(day, b)| (key(day), b)).collect();
        tally.periods_of(*g, stream, &db);
    }
    let db_products = pg
        .product_days(cut.product_first_day, cutoff_day)
        .await?
        .into_iter()
        .map(|(id, day, figures, attributes)| ((id, day), (figures, attributes)))
        .collect();
    tally.product_days_of(&mut cut.product_days, db_products);
    Ok(tally)
}

/// Runs reconciliations, one at a time.
pub struct Reconciler {
    pg: Postgres,
    db: mongodb::Database,
    reports: mongodb::Collection<Document>,
    control: mpsc::Sender<Control>,
    metrics: Metrics,
    health: Arc<Health>,
    config: ReconcileConfig,
    running: Mutex<()>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("a reconciliation is already running")]
    Busy,
}

impl Reconciler {
    pub fn new(
        pg: Postgres,
        db: &mongodb::Database,
        control: mpsc::Sender<Control>,
        (metrics, health): (Metrics, Arc<Health>),
        config: ReconcileConfig,
    ) -> Self {
        for kind in MismatchKind::ALL {
            metrics.reconciliation_mismatches.with_label_values(&[kind.as_str()]).set(0);
        }
        Reconciler {
            pg,
            db: db.clone(),
            reports: db.collection(REPORTS),
            control,
            metrics,
            health,
            config,
            running: Mutex::new(()),
        }
    }

    pub fn config(&self) -> &ReconcileConfig {
        &self.config
    }

    /// One run, recorded whatever its outcome; `Err` only when another run is going on.
    pub async fn run(&self, req: RunRequest) -> Result<Report, RunError> {
        let Ok(_guard) = self.running.try_lock() else {
            return Err(RunError::Busy);
        };
        let started_at = Utc::now();
        let clock = Instant::now();
        let mut report = Report {
            started_at,
            finished_at: started_at,
            duration_seconds: 0.0,
            trigger: req.trigger,
            repair: req.repair,
            outcome: "failed",
            error: None,
            cutoff: req.cutoff,
            days_from: None,
            customers_checked: 0,
            customers_in_stream: 0,
            customers_in_postgres: 0,
            days_checked: 0,
            periods_checked: 0,
            product_days_checked: 0,
            facts_checked: 0,
            mismatches: MismatchKind::ALL.iter().map(|k| (k.as_str(), 0)).collect(),
            mismatches_total: 0,
            purchases_missing_in_stream: 0,
            purchases_missing_in_postgres: 0,
            samples: Vec::new(),
            changes_total: 0,
            changes: Vec::new(),
        };
        if let Err(e) = self.compare(&req, &mut report).await {
            report.outcome = "failed";
            report.error = Some(e);
        }
        report.finished_at = Utc::now();
        report.duration_seconds = clock.elapsed().as_secs_f64();
        self.record(&report).await;
        Ok(report)
    }

    async fn compare(&self, req: &RunRequest, report: &mut Report) -> Result<(), String> {
        let readiness = self.health.readiness();
        if !readiness.ready {
            return Err(format!(
                "the service is not ready ({readiness:?}): the state is not current enough to compare"
            ));
        }
        let settle = chrono::Duration::milliseconds(self.config.settle_ms as i64);
        let (tx, rx) = oneshot::channel();
        let ask = Control::Cut { cutoff: req.cutoff, settle, days: self.config.days, reply: tx };
        self.control.send(ask).await.map_err(|_| "the pipeline is stopping".to_owned())?;
        let mut cut = rx.await.map_err(|_| "the pipeline is stopping".to_owned())??;
        report.cutoff = Some(cut.cutoff);
        report.days_from = Some(date_of(cut.first_day));
        report.customers_in_stream = cut.customers.len() as u64;

        let mut tally = compare_cut(&self.pg, &mut cut, self.config.samples).await.map_err(|e| e.to_string())?;
        self.compare_facts(&mut tally, cut.cutoff).await?;
        report.customers_in_postgres = tally.customers_in_postgres;
        report.customers_checked = tally.customers_checked;
        report.days_checked = tally.days_checked;
        report.periods_checked = tally.periods_checked;
        report.product_days_checked = tally.product_days_checked;
        report.facts_checked = tally.facts_checked;
        for (kind, n) in &tally.counts {
            report.mismatches.insert(kind.as_str(), *n);
        }
        report.mismatches_total = tally.mismatches();
        report.purchases_missing_in_stream = tally.purchases_missing_in_stream;
        report.purchases_missing_in_postgres = tally.purchases_missing_in_postgres;
        report.outcome = if report.mismatches_total == 0 { "ok" } else { "mismatches" };
        report.samples = std::mem::take(&mut tally.samples);

        if req.repair && report.mismatches_total > 0 {
            let (tx, rx) = oneshot::channel();
            let ask =
                Control::Repair { cutoff: cut.cutoff, fixes: Box::new(std::mem::take(&mut tally.fixes)), reply: tx };
            self.control.send(ask).await.map_err(|_| "the pipeline is stopping".to_owned())?;
            let mut changes = rx.await.map_err(|_| "the pipeline is stopping".to_owned())??;
            report.changes_total = changes.len() as u64;
            changes.truncate(self.config.max_listed_changes);
            report.changes = changes;
            report.outcome = "repaired";
        }
        Ok(())
    }

    /// The facts of the customers whose figures differ, and of those with a line or a fact
    /// on a product day that differs, against the database's lines, once every fact the
    /// state holds is written (a fact still on its way would look missing). Where facts
    /// differ, their product days may have hidden other differences (a lost line and an
    /// extra one alike), so the customers with lines there are compared next, for a few
    /// rounds.
    async fn compare_facts(&self, tally: &mut Tally, cutoff: NaiveDate) -> Result<(), String> {
        const ROUNDS: usize = 4;
        let mut product_days = tally.mismatched_product_days();
        if tally.fixes.customers.is_empty() && product_days.is_empty() {
            return Ok(());
        }
        let stopping = || "the pipeline is stopping".to_owned();
        let (tx, rx) = oneshot::channel();
        self.control.send(Control::FactsWritten { reply: tx }).await.map_err(|_| stopping())?;
        match tokio::time::timeout(FACTS_WRITTEN_TIMEOUT, rx).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(stopping()),
            Err(_) => {
                return Err(format!(
                    "the facts were not all written within {} s (is MongoDB slow or down?): cannot compare them",
                    FACTS_WRITTEN_TIMEOUT.as_secs()
                ))
            }
        }
        let cutoff_day = epoch_day(cutoff);
        let mut seen_days: std::collections::BTreeSet<(String, i32)> = product_days.iter().cloned().collect();
        let mut compared: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
        let mut customers = tally.mismatched_customers(std::iter::empty());
        for _ in 0..ROUNDS {
            customers.extend(self.pg.customers_with_lines(&product_days).await.map_err(|e| e.to_string())?);
            let facts = crate::sink::mongo::customers_with_facts(&self.db, &product_days).await;
            customers.extend(facts.map_err(|e| e.to_string())?);
            customers.retain(|c| !compared.contains(c));
            customers.sort_unstable();
            customers.dedup();
            if customers.is_empty() {
                break;
            }
            let db = self.pg.fact_lines(&customers, cutoff_day).await.map_err(|e| e.to_string())?;
            let stored = crate::sink::mongo::stored_facts(&self.db, &customers, date_key(cutoff))
                .await
                .map_err(|e| e.to_string())?;
            compared.extend(customers.drain(..));
            product_days = tally.facts(db, stored).into_iter().filter(|d| seen_days.insert(d.clone())).collect();
            if product_days.is_empty() {
                break;
            }
        }
        Ok(())
    }

    /// The report document, gauges and a log line.
    async fn record(&self, report: &Report) {
        let m = &self.metrics;
        m.reconciliation_runs.with_label_values(&[report.outcome]).inc();
        m.reconciliation_duration.set(report.duration_seconds);
        if report.outcome == "failed" {
            warn!(error = report.error.as_deref().unwrap_or("?"), "reconciliation failed");
        } else {
            m.reconciliation_last_success.set(report.finished_at.timestamp());
            for (kind, n) in &report.mismatches {
                m.reconciliation_mismatches.with_label_values(&[kind]).set(*n as i64);
            }
            info!(
                cutoff = %report.cutoff.map(|d| d.to_string()).unwrap_or_default(),
                customers = report.customers_checked,
                days = report.days_checked,
                periods = report.periods_checked,
                product_days = report.product_days_checked,
                facts = report.facts_checked,
                mismatches = report.mismatches_total,
                missing_in_stream = report.purchases_missing_in_stream,
                missing_in_postgres = report.purchases_missing_in_postgres,
                changes = report.changes_total,
                seconds = format!("{:.2}", report.duration_seconds),
                outcome = report.outcome,
                "reconciliation"
            );
        }
        let document = match mongodb::bson::to_bson(report) {
            Ok(Bson::Document(mut d)) => {
                // Instants as BSON dates, like every other collection.
                for key in ["started_at", "finished_at"] {
                    if let Some(Bson::String(s)) = d.get(key) {
                        if let Ok(t) = DateTime::parse_from_rfc3339(s) {
                            d.insert(key, mongodb::bson::DateTime::from_millis(t.timestamp_millis()));
                        }
                    }
                }
                d
            }
            other => doc! { "error": format!("cannot encode the report: {other:?}") },
        };
        // A report is small; one attempt per retry of the write, then the log line stands.
        for attempt in 0..3 {
            match self.reports.insert_one(document.clone()).await {
                Ok(_) => return,
                Err(e) => {
                    warn!(error = %e, attempt, "cannot write the reconciliation report");
                    tokio::time::sleep(Duration::from_secs(1 << attempt)).await;
                }
            }
        }
    }
}
