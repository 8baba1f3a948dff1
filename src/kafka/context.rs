//! The librdkafka client context of every martstream client: librdkafka's own logs and
//! errors go through `tracing`. Until start-up has confirmed the broker they are debug
//! lines (the start-up error says it in one line); afterwards warnings, with an identical
//! message repeated within 30 s suppressed, so an outage is visible without flooding.
//! It also keeps the partitions' high watermarks from librdkafka's statistics (for lag).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::Statistics;

const REPEAT_WINDOW: Duration = Duration::from_secs(30);

#[derive(Clone, Default)]
pub struct LogContext {
    started: Arc<AtomicBool>,
    last: Arc<Mutex<Option<(String, Instant)>>>,
    high_watermarks: Arc<Mutex<HashMap<(String, i32), i64>>>,
}

impl LogContext {
    /// From now on librdkafka's problems are warnings.
    pub fn mark_started(&self) {
        self.started.store(true, Ordering::Relaxed);
    }

    /// The high watermark of a partition in the latest statistics.
    pub fn high_watermark(&self, topic: &str, partition: i32) -> Option<i64> {
        let marks = self.high_watermarks.lock().unwrap_or_else(|e| e.into_inner());
        marks.get(&(topic.to_owned(), partition)).copied().filter(|&h| h >= 0)
    }

    fn report(&self, serious: bool, message: String) {
        if !self.started.load(Ordering::Relaxed) || !serious {
            tracing::debug!(target: "librdkafka", "{message}");
            return;
        }
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((previous, at)) = last.as_ref() {
            if *previous == message && at.elapsed() < REPEAT_WINDOW {
                return;
            }
        }
        tracing::warn!(target: "librdkafka", "{message}");
        *last = Some((message, Instant::now()));
    }
}

impl ClientContext for LogContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        let serious = (level as i32) <= (RDKafkaLogLevel::Warning as i32);
        self.report(serious, format!("{fac}: {log_message}"));
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // The end of a partition (`enable.partition.eof`, paced fetching) is not a problem:
        // rust-rdkafka reports it here as well as to the consumer, once per partition and fetch.
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF) {
            return;
        }
        self.report(true, format!("{error}: {reason}"));
    }

    fn stats(&self, statistics: Statistics) {
        let mut marks = self.high_watermarks.lock().unwrap_or_else(|e| e.into_inner());
        for (name, topic) in statistics.topics {
            for (&p, partition) in &topic.partitions {
                if p >= 0 {
                    marks.insert((name.clone(), p), partition.hi_offset);
                }
            }
        }
    }
}

impl ConsumerContext for LogContext {}
