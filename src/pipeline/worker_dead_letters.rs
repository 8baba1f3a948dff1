//! The worker's dead letters: handed to the DLQ producer pipelined, confirmed before a
//! snapshot records a position past them, sent again (with backoff) until the broker takes
//! them.

use std::time::Duration;

use tracing::{info, warn};

use super::{Worker, MAX_PENDING_DEAD_LETTERS};
use crate::domain::Rejection;
use crate::kafka::dlq::{SourcePosition, Undelivered};

impl Worker {
    /// Hands a message to the DLQ producer (pipelined: the delivery is confirmed later, and
    /// always before a snapshot records a position past it).
    pub(super) async fn dead_letter(
        &mut self,
        dlq_topic: &str,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        rejection: &Rejection,
        from: &SourcePosition<'_>,
    ) {
        while let Err(e) = self.dlq.enqueue(dlq_topic, key, payload, rejection, from) {
            warn!(error = %e, "dead-letter producer refused the message; waiting for outstanding deliveries");
            self.settle_dead_letters().await;
            tokio::time::sleep(self.cadence.backoff.initial).await;
        }
        if self.dlq.pending() >= MAX_PENDING_DEAD_LETTERS {
            self.settle_dead_letters().await;
        }
        self.summary.dead_lettered += 1;
        self.metrics.events_dlq.with_label_values(&[rejection.reason.as_str()]).inc();
        info!(
            reason = rejection.reason.as_str(),
            detail = %rejection.detail,
            partition = from.partition,
            offset = from.offset,
            "event dead-lettered"
        );
    }

    /// Waits until the broker confirmed every dead letter handed to the producer, sending
    /// any that failed for good again (with backoff) until it takes them.
    pub(super) async fn settle_dead_letters(&mut self) {
        let mut delay = self.cadence.backoff.initial;
        loop {
            let failed = self.dlq.settle().await;
            if failed.is_empty() {
                return;
            }
            self.resend_dead_letters(&failed, delay).await;
            delay = (delay * 2).min(self.cadence.backoff.max);
        }
    }

    pub(super) async fn resend_dead_letters(&mut self, failed: &[Undelivered], delay: Duration) {
        for u in failed {
            warn!(error = %u.error, retry_in_ms = delay.as_millis() as u64, "dead letter not delivered; sending it again");
        }
        tokio::time::sleep(delay).await;
        for u in failed {
            while let Err(e) = self.dlq.resend(u) {
                warn!(error = %e, "dead-letter producer refused a resend; retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }

    /// Confirms finished deliveries without waiting; failed ones are sent again.
    pub(super) async fn reap_dead_letters(&mut self) {
        let failed = self.dlq.reap();
        if !failed.is_empty() {
            self.resend_dead_letters(&failed, self.cadence.backoff.initial).await;
        }
    }
}
