//! The decode stage: reads the source and decodes each message on a task of its own, so
//! that with two cores decoding runs beside the single-writer engine instead of before it.
//!
//! One task and one bounded channel: the worker gets the messages in the order the consumer
//! gave them, and when it stops taking them (backpressure) the stage stops reading once the
//! channel is full. A message keeps its key and payload: a valid event may still be a
//! conflicting duplicate, which only the engine can tell, and goes to the DLQ as it came.
//!
//! **Paced fetching** (`kafka.fetch_pause_ms`, classic mode). Apache Kafka holds an empty
//! fetch until data arrives (`fetch.wait.max.ms`); a broker that answers it at once (noida-db,
//! the local stack) makes librdkafka fetch back to back once the consumer is at the end of
//! its partitions: measured here, ~0.5 core in the consumer and ~0.35 in the broker while
//! nothing arrives, and most of it goes on under load too (the fetches between messages
//! come back empty). librdkafka has no setting that backs off after an empty fetch, so the
//! stage does: when everything fetched has been read and the last thing the consumer
//! reported was the end of a partition, it pauses the partitions for the pause, then
//! resumes them and seeks each to the next offset it has not read (the seek wakes the
//! fetcher at once; a resume alone waits for librdkafka's next wake-up, up to a second).
//! Nothing is lost or read twice: a pause drops what librdkafka fetched and had not
//! handed over, the seek fetches it again from exactly the next offset, and a message
//! before that offset (one fetched before the seek) is skipped. A backlog is read at full
//! speed: the end of a partition is only reported once it is reached.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::warn;

use super::InputKind;
use crate::domain::session::{decode_session, Session};
use crate::domain::{decode, Decoded, Rejection};
use crate::kafka::source::{Source, TopicPartition};

/// Messages decoded ahead of the worker, at most.
const AHEAD: usize = 1024;

/// A decoded event of one of the input kinds.
pub(crate) enum Event {
    Transaction(Decoded),
    Session(Decoded<Session>),
}

/// One message, decoded, with what the worker needs to track and dead-letter it.
pub(crate) struct Ingested {
    /// Index into the source's topics.
    pub topic: usize,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub key: Option<Box<[u8]>>,
    pub payload: Option<Box<[u8]>>,
    pub event: Result<Event, Rejection>,
}

/// The running stage: its output, and the task (aborted when this is dropped).
pub(crate) struct DecodeStage {
    pub output: mpsc::Receiver<Ingested>,
    task: JoinHandle<()>,
}

impl Drop for DecodeStage {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DecodeStage {
    /// Starts reading `source`; `kinds` is what each of its topics carries. `pacing`: the
    /// next offset of every assigned partition, to pause fetching at the end of them by
    /// `source.fetch_pause` (classic mode; None where partitions move, as in cluster mode).
    pub fn spawn(
        source: Arc<Source>,
        kinds: Vec<InputKind>,
        pacing: Option<BTreeMap<TopicPartition, i64>>,
    ) -> DecodeStage {
        let (tx, output) = mpsc::channel(AHEAD);
        let mut pacing = source.fetch_pause.zip(pacing).map(|(pause, next)| Pacing { pause, next });
        let task = tokio::spawn(async move {
            // The consumer reported the end of a partition after its last message.
            let mut at_end = false;
            loop {
                let received = match pacing.as_mut() {
                    Some(pacing) => match source.consumer.recv().now_or_never() {
                        Some(received) => received,
                        None => {
                            if std::mem::take(&mut at_end) {
                                pacing.rest(&source).await;
                            }
                            source.consumer.recv().await
                        }
                    },
                    None => source.consumer.recv().await,
                };
                match received {
                    Ok(m) => {
                        let Some(topic) = source.topic_index(m.topic()) else {
                            warn!(topic = m.topic(), "message from an unassigned topic ignored");
                            continue;
                        };
                        if pacing.as_mut().is_some_and(|p| !p.admit((topic, m.partition()), m.offset())) {
                            continue;
                        }
                        at_end = false;
                        let ingested = ingest(&m, topic, kinds[topic]);
                        drop(m);
                        if tx.send(ingested).await.is_err() {
                            return; // the worker is gone
                        }
                    }
                    Err(KafkaError::PartitionEOF(_)) => at_end = true,
                    Err(e) => {
                        warn!(error = %e, "consumer error; librdkafka retries");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
        DecodeStage { output, task }
    }
}

/// Paced fetching (see the module's doc): the next offset to read of every partition.
struct Pacing {
    pause: Duration,
    next: BTreeMap<TopicPartition, i64>,
}

impl Pacing {
    /// Whether a message is the next one of its partition (or later); one before it was
    /// fetched before a seek and has been handed over already.
    fn admit(&mut self, tp: TopicPartition, offset: i64) -> bool {
        let next = self.next.entry(tp).or_insert(offset);
        if offset < *next {
            return false;
        }
        *next = offset + 1;
        true
    }

    /// No fetching for the pause, then every partition fetched again from its next offset.
    async fn rest(&self, source: &Source) {
        let mut partitions = TopicPartitionList::new();
        for &(t, p) in self.next.keys() {
            partitions.add_partition(&source.topics[t], p);
        }
        if let Err(e) = source.consumer.pause(&partitions) {
            warn!(error = %e, "pausing the partitions failed; fetching on");
            return;
        }
        tokio::time::sleep(self.pause).await;
        if let Err(e) = source.consumer.resume(&partitions) {
            warn!(error = %e, "resuming the partitions failed");
        }
        for (&(t, p), &offset) in &self.next {
            if let Err(e) = source.consumer.seek(&source.topics[t], p, Offset::Offset(offset), Duration::ZERO) {
                warn!(topic = %source.topics[t], partition = p, error = %e, "seek after a fetch pause failed; librdkafka resumes from its own position");
            }
        }
    }
}

fn ingest(m: &BorrowedMessage<'_>, topic: usize, kind: InputKind) -> Ingested {
    let timestamp_ms = m.timestamp().to_millis();
    tracing::trace!(topic, partition = m.partition(), offset = m.offset(), timestamp = ?m.timestamp(), "message");
    let at = timestamp_ms.and_then(chrono::DateTime::from_timestamp_millis);
    let payload = m.payload().unwrap_or_default();
    let event = match kind {
        InputKind::Transactions => decode(payload, at).map(Event::Transaction),
        InputKind::Sessions => decode_session(payload, at).map(Event::Session),
    };
    Ingested {
        topic,
        partition: m.partition(),
        offset: m.offset(),
        timestamp_ms,
        key: m.key().map(Box::from),
        payload: m.payload().map(Box::from),
        event,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacing_skips_what_was_handed_over_before_a_seek() {
        let mut pacing = Pacing { pause: Duration::from_millis(20), next: BTreeMap::from([((0, 0), 10)]) };
        assert!(!pacing.admit((0, 0), 9), "before the start position");
        assert!(pacing.admit((0, 0), 10));
        assert!(pacing.admit((0, 0), 11));
        assert!(!pacing.admit((0, 0), 11), "fetched again after a seek");
        assert!(pacing.admit((0, 0), 14), "a gap (compaction, transactions' markers) moves on");
        assert!(pacing.admit((0, 3), 5), "a partition without a start position starts where it is");
        assert_eq!(pacing.next, BTreeMap::from([((0, 0), 15), ((0, 3), 6)]));
    }
}
