//! What /readyz reports: shared flags set by the pipeline and the sink.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};

#[derive(Debug)]
pub struct Health {
    state_ready: AtomicBool,
    partitions: AtomicUsize,
    mongo_ok: AtomicBool,
    /// MongoDB holds a complete flush of the state since this start (see `pipeline`).
    converged: AtomicBool,
    /// Messages not read yet, over every input partition.
    lag: AtomicI64,
    max_lag: i64,
}

impl Default for Health {
    fn default() -> Self {
        Health::new(i64::MAX)
    }
}

/// Why the service is not ready, or that it is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Readiness {
    pub ready: bool,
    pub state_restored: bool,
    pub partitions_assigned: usize,
    pub mongo_reachable: bool,
    pub views_converged: bool,
    pub lag_messages: i64,
    pub max_lag_messages: i64,
}

impl Health {
    /// Ready only while the total consumer lag is at most `max_lag` messages.
    pub fn new(max_lag: i64) -> Self {
        Health {
            state_ready: AtomicBool::new(false),
            partitions: AtomicUsize::new(0),
            mongo_ok: AtomicBool::new(false),
            converged: AtomicBool::new(true),
            lag: AtomicI64::new(0),
            max_lag,
        }
    }
    pub fn set_lag(&self, messages: i64) {
        self.lag.store(messages, Ordering::Relaxed);
    }
    pub fn set_state_ready(&self, v: bool) {
        self.state_ready.store(v, Ordering::Relaxed);
    }
    pub fn set_partitions(&self, n: usize) {
        self.partitions.store(n, Ordering::Relaxed);
    }
    pub fn set_mongo_ok(&self, v: bool) {
        self.mongo_ok.store(v, Ordering::Relaxed);
    }
    pub fn set_converged(&self, v: bool) {
        self.converged.store(v, Ordering::Relaxed);
    }
    pub fn readiness(&self) -> Readiness {
        let state_restored = self.state_ready.load(Ordering::Relaxed);
        let partitions_assigned = self.partitions.load(Ordering::Relaxed);
        let mongo_reachable = self.mongo_ok.load(Ordering::Relaxed);
        let views_converged = self.converged.load(Ordering::Relaxed);
        let lag_messages = self.lag.load(Ordering::Relaxed);
        Readiness {
            ready: state_restored
                && partitions_assigned > 0
                && mongo_reachable
                && views_converged
                && lag_messages <= self.max_lag,
            views_converged,
            state_restored,
            partitions_assigned,
            mongo_reachable,
            lag_messages,
            max_lag_messages: self.max_lag,
        }
    }
}
