//! What /readyz reports: shared flags set by the pipeline and the sink.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

#[derive(Debug, Default)]
pub struct Health {
    state_ready: AtomicBool,
    partitions: AtomicUsize,
    mongo_ok: AtomicBool,
}

/// Why the service is not ready, or that it is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Readiness {
    pub ready: bool,
    pub state_restored: bool,
    pub partitions_assigned: usize,
    pub mongo_reachable: bool,
}

impl Health {
    pub fn set_state_ready(&self, v: bool) {
        self.state_ready.store(v, Ordering::Relaxed);
    }
    pub fn set_partitions(&self, n: usize) {
        self.partitions.store(n, Ordering::Relaxed);
    }
    pub fn set_mongo_ok(&self, v: bool) {
        self.mongo_ok.store(v, Ordering::Relaxed);
    }
    pub fn readiness(&self) -> Readiness {
        let state_restored = self.state_ready.load(Ordering::Relaxed);
        let partitions_assigned = self.partitions.load(Ordering::Relaxed);
        let mongo_reachable = self.mongo_ok.load(Ordering::Relaxed);
        Readiness {
            ready: state_restored && partitions_assigned > 0 && mongo_reachable,
            state_restored,
            partitions_assigned,
            mongo_reachable,
        }
    }
}
