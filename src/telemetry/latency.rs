//! End-to-end latency: from an event's message timestamp (when the producer sent it) to the
//! moment MongoDB acknowledged the flush that carries it. Recorded in an hdrhistogram per
//! minute; the quantiles of the last one to two minutes are exported as gauges.
//!
//! While a backlog drains (a replay, a restart), this measures the backlog's age, as it
//! should: the views are that far behind the events.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use prometheus::GaugeVec;

const WINDOW: Duration = Duration::from_secs(60);
pub const QUANTILES: [(f64, &str); 4] = [(0.5, "0.5"), (0.9, "0.9"), (0.99, "0.99"), (0.999, "0.999")];

struct Windows {
    current: Histogram<u64>,
    previous: Histogram<u64>,
    started: Instant,
}

/// Latencies in milliseconds (1 ms to 30 days, 3 significant digits).
#[derive(Clone)]
pub struct Latency {
    windows: Arc<Mutex<Windows>>,
    gauge: GaugeVec,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 30 * 86_400_000, 3).expect("valid bounds")
}

impl Latency {
    pub fn new(gauge: GaugeVec) -> Self {
        // NaN until a flush carried an event (as a Prometheus summary with no observations).
        for (_, label) in QUANTILES {
            gauge.with_label_values(&[label]).set(f64::NAN);
        }
        let windows = Windows { current: histogram(), previous: histogram(), started: Instant::now() };
        Latency { windows: Arc::new(Mutex::new(windows)), gauge }
    }

    /// Records the latency of every event of a flush MongoDB just acknowledged, then exports
    /// the quantiles.
    pub fn record(&self, produced_ms: &[i64], visible_ms: i64) {
        let mut w = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if w.started.elapsed() >= WINDOW {
            w.previous = std::mem::replace(&mut w.current, histogram());
            w.started = Instant::now();
        }
        for &t in produced_ms {
            w.current.saturating_record((visible_ms - t).max(1) as u64);
        }
        let mut both = w.previous.clone();
        both.add(&w.current).expect("same bounds");
        if both.is_empty() {
            return;
        }
        for (q, label) in QUANTILES {
            self.gauge.with_label_values(&[label]).set(both.value_at_quantile(q) as f64 / 1000.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_quantiles_in_seconds() {
        let gauge = GaugeVec::new(prometheus::Opts::new("l", "l"), &["quantile"]).unwrap();
        let latency = Latency::new(gauge.clone());
        let produced: Vec<i64> = (1..=1000).collect();
        latency.record(&produced, 1001);
        // Latencies 1..=1000 ms.
        let p50 = gauge.with_label_values(&["0.5"]).get();
        let p999 = gauge.with_label_values(&["0.999"]).get();
        assert!((p50 - 0.5).abs() < 0.002, "{p50}");
        assert!((p999 - 0.999).abs() < 0.002, "{p999}");
    }
}
