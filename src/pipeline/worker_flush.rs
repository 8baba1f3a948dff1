//! The worker's flushing: what each sink lane is handed and when (the views at most every
//! flush interval, the bulk lane as soon as it is free, dim_customer restates as they fall
//! due), what the lanes acknowledged (convergence, snapshots to persist), and snapshot
//! captures at flush boundaries.

use std::time::{Duration, Instant};

use tracing::info;

use super::{Convergence, Worker};
use crate::domain::warehouse::Restate;
use crate::domain::ViewChanges;

impl Worker {
    /// Notes what MongoDB acknowledged: the converging flush, snapshots to persist.
    pub(super) async fn acknowledged(&mut self) {
        self.lanes.refresh();
        let acked = self.lanes.acked();
        if let Convergence::Sent(seq) = self.convergence {
            if acked.views >= seq {
                self.convergence = Convergence::Done;
                self.health.set_converged(true);
                self.metrics.views_converged.set(1);
                info!("views converged: MongoDB holds a complete flush of the state");
            }
        }
        if !self.facts_written_waiters.is_empty() {
            let (done, waiting) =
                std::mem::take(&mut self.facts_written_waiters).into_iter().partition(|(seq, _)| acked.bulk >= *seq);
            self.facts_written_waiters = waiting;
            for (_, reply) in done {
                let _ = reply.send(());
            }
        }
        if let Some(checkpoints) = self.checkpoints.as_mut() {
            checkpoints.poll(acked).await;
        }
    }

    /// A snapshot capture at this flush boundary, if one is due.
    pub(super) async fn capture_if_due(&mut self) {
        if !self.checkpoints.as_ref().is_some_and(|c| c.due(&self.positions)) {
            return;
        }
        // No position past a dead letter the broker has not confirmed.
        self.settle_dead_letters().await;
        let checkpoints = self.checkpoints.as_mut().expect("checked above");
        checkpoints.capture(&self.engine, &self.positions, self.lanes.sent());
    }

    /// The view changes to hand to the views lane now, if any. None while a backlog is read
    /// before converging: every view document is written by the complete flush that ends
    /// the catch-up, so writing intermediate ones would only slow it down (the bulk lane
    /// goes on writing facts and new keys meanwhile).
    pub(super) fn view_changes(&mut self, converge: bool) -> Option<ViewChanges> {
        if matches!(self.convergence, Convergence::Pending { .. }) && !converge {
            return None;
        }
        match self.cadence.as_of.at(&self.engine) {
            Some(as_of) => {
                self.summary.as_of = Some(as_of);
                let ranks = self.ranks_flushed.is_none_or(|t| t.elapsed() >= self.cadence.rank_every);
                if ranks {
                    self.ranks_flushed = Some(Instant::now());
                }
                // Deferred rescores yield to the bulk lane: while facts pile up (an eighth of
                // the point where consumption pauses), a flush writes one rescore at most.
                let yielding = self.engine.warehouse().pending_facts() >= self.cadence.max_pending_facts / 8;
                self.engine.defer_rescores(self.cadence.rescores_per_flush.map(|b| if yielding { 1 } else { b }));
                let changes = self.engine.flush_views_ranks(as_of, converge, ranks);
                self.view_flushes.push_back((Instant::now(), self.engine.views_generation()));
                Some(changes)
            }
            // No transaction applied under the event clock: the views are empty in the state,
            // so converging only removes what MongoDB holds (there is no as_of to flush at).
            None if converge => Some(ViewChanges { complete: true, ..ViewChanges::default() }),
            None => None,
        }
    }

    /// The bulk lane's next changes: with them, the dim_customer rows whose first change is
    /// `dimension_interval_ms` old (each with its latest value), or every waiting row with
    /// `force_restate`. Rows so become due as evenly as they changed, never in bursts.
    pub(super) fn bulk_changes(&mut self, force_restate: bool) -> ViewChanges {
        if force_restate {
            return self.engine.flush_bulk(Restate::All);
        }
        while let Some(&(built, generation)) = self.view_flushes.front() {
            if built.elapsed() < self.cadence.dimension_every {
                break;
            }
            self.restate_through = generation;
            self.view_flushes.pop_front();
        }
        self.engine.flush_bulk(Restate::ChangedBy(self.restate_through))
    }

    /// Hands each lane that is free its changes (the views at most every flush interval),
    /// then captures a snapshot at that boundary if one is due.
    pub(super) async fn try_flush(&mut self) {
        let converge = self.convergence.due(&self.positions);
        let every = if converge { Duration::ZERO } else { self.cadence.flush_every };
        if self.lanes.views.ready(every) {
            if let Some(changes) = self.view_changes(converge) {
                self.mirror.apply(&changes);
                self.lanes.views.send(changes);
                if converge {
                    let seq = self.lanes.sent().views;
                    info!(batch = seq, "backlog read: converging the views (a complete flush; stale documents go)");
                    self.convergence = Convergence::Sent(seq);
                }
            }
        }
        if self.lanes.bulk.ready(Duration::ZERO) {
            let changes = self.bulk_changes(false);
            self.lanes.bulk.send(changes);
        }
        self.capture_if_due().await;
    }
}
