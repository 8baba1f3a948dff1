//! Every Prometheus metric martstream exports, defined once. Names follow
//! `martstream_<thing>_<unit>[_total]`; labels are bounded (reason, event type, collection,
//! outcome, sink lane), never a customer or product id.

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use super::Latency;
use crate::domain::RejectReason;

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub events_consumed: IntCounter,
    pub events_applied: IntCounterVec,
    pub events_duplicate: IntCounter,
    pub events_dlq: IntCounterVec,
    pub dead_letters_not_sent: IntCounterVec,
    pub refunds_unmatched: IntCounter,
    pub late_events: IntCounterVec,
    pub documents_written: IntCounterVec,
    pub flushes: IntCounterVec,
    pub flush_duration: HistogramVec,
    pub mongo_up: IntGauge,
    pub partitions_assigned: IntGauge,
    pub ready: IntGauge,
    pub customers: IntGauge,
    pub rescores_waiting: IntGauge,
    pub dedup_entries: IntGauge,
    pub event_time_watermark: IntGauge,
    pub consumer_lag: IntGaugeVec,
    pub event_time_lag: Gauge,
    pub snapshots: IntCounterVec,
    pub snapshot_duration: Gauge,
    pub snapshot_size: IntGauge,
    pub snapshot_last_success: IntGauge,
    pub snapshot_age: Gauge,
    pub snapshot_capture_stall: Histogram,
    pub snapshot_positions: IntGaugeVec,
    pub views_converged: IntGauge,
    pub sink_pending_flushes: IntGauge,
    pub facts_pending: IntGauge,
    pub stale_documents_removed: IntCounterVec,
    pub restore_duration: Gauge,
    pub latency: Latency,
    pub facts_latency: Latency,
    pub products: IntGauge,
    pub segment_customers: IntGaugeVec,
    pub reconciliation_runs: IntCounterVec,
    pub reconciliation_duration: Gauge,
    pub reconciliation_last_success: IntGauge,
    pub reconciliation_mismatches: IntGaugeVec,
    resident_memory: IntGauge,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: T) -> T {
            r.register(Box::new(m.clone())).expect("metric names are unique");
            m
        }
        let counter = |name: &str, help: &str| reg(&registry, IntCounter::new(name, help).unwrap());
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            reg(&registry, IntCounterVec::new(Opts::new(name, help), labels).unwrap())
        };
        let gauge = |name: &str, help: &str| reg(&registry, IntGauge::new(name, help).unwrap());
        let float_gauge = |name: &str, help: &str| reg(&registry, Gauge::new(name, help).unwrap());

        let m = Metrics {
            events_consumed: counter("martstream_events_consumed_total", "Messages read from the input topic."),
            events_applied: counter_vec(
                "martstream_events_applied_total",
                "Valid first-seen events applied to the state.",
                &["event_type"],
            ),
            events_duplicate: counter(
                "martstream_events_duplicate_total",
                "Exact resends of an applied transaction_id, dropped.",
            ),
            events_dlq: counter_vec(
                "martstream_events_dlq_total",
                "Messages sent to the dead-letter topic, by reason.",
                &["reason"],
            ),
            dead_letters_not_sent: counter_vec(
                "martstream_dead_letters_not_sent_total",
                "Rejected messages not sent to the dead-letter topic again: it already held their letter (or --dead-letters none), by reason.",
                &["reason"],
            ),
            refunds_unmatched: counter(
                "martstream_refunds_unmatched_total",
                "Refunds applied whose original purchase was never seen.",
            ),
            late_events: counter_vec(
                "martstream_late_events_total",
                "Events (product lines) dated before a view's window or retention when they arrived: they updated the state that still covers them, not that view.",
                &["view"],
            ),
            documents_written: counter_vec(
                "martstream_documents_written_total",
                "View documents upserted into MongoDB.",
                &["collection"],
            ),
            flushes: counter_vec(
                "martstream_flushes_total",
                "Flushes of changed documents to MongoDB, by sink lane (views: the analytic views; bulk: facts and dimensions) and outcome.",
                &["lane", "outcome"],
            ),
            flush_duration: reg(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "martstream_flush_duration_seconds",
                        "Time to write one flush to MongoDB, by sink lane (views, bulk).",
                    )
                    .buckets(prometheus::exponential_buckets(0.001, 2.0, 16).unwrap()),
                    &["lane"],
                )
                .unwrap(),
            ),
            mongo_up: gauge("martstream_mongo_up", "1 when the last MongoDB write succeeded."),
            partitions_assigned: gauge("martstream_partitions_assigned", "Input partitions this instance consumes."),
            ready: gauge("martstream_ready", "1 when /readyz answers ready."),
            customers: gauge("martstream_customers", "Customers held in the state."),
            rescores_waiting: gauge(
                "martstream_rfm_rescores_waiting",
                "customer_rfm_analysis documents whose scores moved with a quintile boundary (or whose recency moved with the date), waiting for their turn under service.rescores_per_flush.",
            ),
            dedup_entries: gauge("martstream_dedup_entries", "transaction_ids remembered for dedup."),
            event_time_watermark: gauge(
                "martstream_event_time_watermark_seconds",
                "Largest event time applied, Unix seconds.",
            ),
            consumer_lag: reg(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "martstream_consumer_lag_messages",
                        "Messages in a partition not read yet: high watermark minus position.",
                    ),
                    &["topic", "partition"],
                )
                .unwrap(),
            ),
            event_time_lag: float_gauge(
                "martstream_event_time_lag_seconds",
                "Wall clock minus the largest event time applied: how far behind the events the state is.",
            ),
            reconciliation_runs: counter_vec(
                "martstream_reconciliation_runs_total",
                "Reconciliations against PostgreSQL, by outcome (ok, mismatches, repaired, failed).",
                &["outcome"],
            ),
            reconciliation_duration: float_gauge(
                "martstream_reconciliation_duration_seconds",
                "How long the last reconciliation took.",
            ),
            reconciliation_last_success: gauge(
                "martstream_reconciliation_last_success_timestamp_seconds",
                "When the last reconciliation that completed (with or without mismatches) finished, Unix seconds; 0 before the first.",
            ),
            reconciliation_mismatches: reg(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "martstream_reconciliation_mismatches",
                        "Customers or days that disagreed with PostgreSQL in the last completed reconciliation, by kind.",
                    ),
                    &["kind"],
                )
                .unwrap(),
            ),
            snapshots: counter_vec(
                "martstream_snapshots_total",
                "Snapshots of the state written, by outcome (error: e.g. disk full; the previous ones are kept).",
                &["outcome"],
            ),
            snapshot_duration: float_gauge(
                "martstream_snapshot_duration_seconds",
                "Time the last snapshot took to encode and write durably.",
            ),
            snapshot_size: gauge("martstream_snapshot_size_bytes", "Size of the last snapshot written."),
            snapshot_last_success: gauge(
                "martstream_snapshot_last_success_timestamp_seconds",
                "When the last snapshot was written (or restored from), Unix seconds.",
            ),
            snapshot_age: float_gauge(
                "martstream_snapshot_age_seconds",
                "Seconds since the newest snapshot was taken: how much a crash would replay.",
            ),
            snapshot_capture_stall: reg(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "martstream_snapshot_capture_stall_seconds",
                        "Time the worker stops consuming to capture a snapshot (the encode at a flush boundary).",
                    )
                    .buckets(prometheus::exponential_buckets(0.0005, 2.0, 14).unwrap()),
                )
                .unwrap(),
            ),
            snapshot_positions: reg(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "martstream_snapshot_position_messages",
                        "Next offset per input partition recorded by the newest snapshot written (or restored from).",
                    ),
                    &["topic", "partition"],
                )
                .unwrap(),
            ),
            views_converged: gauge(
                "martstream_views_converged",
                "1 once MongoDB holds a complete flush of the state since this start (stale documents removed); until then /readyz is 503.",
            ),
            sink_pending_flushes: gauge(
                "martstream_sink_pending_flushes",
                "Flushes handed to the MongoDB sink and not acknowledged yet (0: MongoDB holds everything flushed).",
            ),
            facts_pending: gauge(
                "martstream_facts_pending",
                "Fact rows (sales, returns, sessions) applied and not acknowledged by MongoDB yet: waiting in the state or in the bulk lane's flush in flight. Consumption pauses while service.max_pending_facts wait in the state.",
            ),
            stale_documents_removed: counter_vec(
                "martstream_stale_documents_removed_total",
                "View documents MongoDB held that the state does not (an earlier run's), removed when the views converge.",
                &["collection"],
            ),
            restore_duration: float_gauge(
                "martstream_restore_duration_seconds",
                "Time the start-up restore from a snapshot took (0 when none was used).",
            ),
            latency: Latency::new(reg(
                &registry,
                GaugeVec::new(
                    Opts::new(
                        "martstream_end_to_end_latency_seconds",
                        "Event produced (message timestamp) to the analytic views (customer_rfm_analysis, product_performance, sales_trends) written in MongoDB, quantiles over the last 1-2 minutes (hdrhistogram).",
                    ),
                    &["quantile"],
                )
                .unwrap(),
            )),
            facts_latency: Latency::new(reg(
                &registry,
                GaugeVec::new(
                    Opts::new(
                        "martstream_facts_latency_seconds",
                        "Event produced (message timestamp) to its fact rows (fact_sales, fact_returns, fact_customer_sessions) written in MongoDB by the bulk lane, quantiles over the last 1-2 minutes.",
                    ),
                    &["quantile"],
                )
                .unwrap(),
            )),
            products: gauge("martstream_products", "Products in the product_performance window."),
            segment_customers: reg(
                &registry,
                IntGaugeVec::new(
                    Opts::new("martstream_segment_customers", "Customers per RFM segment, as of the last flush."),
                    &["segment"],
                )
                .unwrap(),
            ),
            resident_memory: gauge("martstream_process_resident_memory_bytes", "Resident memory of the process."),
            registry,
        };
        for outcome in ["ok", "error"] {
            m.snapshots.with_label_values(&[outcome]);
            for lane in ["views", "bulk"] {
                m.flushes.with_label_values(&[lane, outcome]);
            }
        }
        for lane in ["views", "bulk"] {
            m.flush_duration.with_label_values(&[lane]);
        }
        // Expose every reason from the start, so a rate() over them works before the first one.
        for reason in RejectReason::ALL {
            m.events_dlq.with_label_values(&[reason.as_str()]);
            m.dead_letters_not_sent.with_label_values(&[reason.as_str()]);
        }
        for kind in ["purchase", "refund", "session"] {
            m.events_applied.with_label_values(&[kind]);
        }
        m
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        if let Some(bytes) = resident_bytes() {
            self.resident_memory.set(bytes);
        }
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("text encoding");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Resident set size of this process, from /proc (Linux); `None` elsewhere.
pub fn resident_bytes() -> Option<i64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: i64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_follows_the_naming_rule_and_lanes_are_exposed_from_the_start() {
        let text = Metrics::new().render();
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let name = line.split_whitespace().nth(2).unwrap();
            assert!(name.starts_with("martstream_"), "{name}");
        }
        for lane in ["views", "bulk"] {
            assert!(
                text.contains(&format!("martstream_flushes_total{{lane=\"{lane}\",outcome=\"error\"}} 0")),
                "{text}"
            );
            assert!(text.contains(&format!("martstream_flush_duration_seconds_count{{lane=\"{lane}\"}} 0")), "{text}");
        }
    }
}
