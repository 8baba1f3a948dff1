//! The decode stage: reads the source and decodes each message on a task of its own, so
//! that with two cores decoding runs beside the single-writer engine instead of before it.
//!
//! One task and one bounded channel: the worker gets the messages in the order the consumer
//! gave them, and when it stops taking them (backpressure) the stage stops reading once the
//! channel is full. A message keeps its key and payload: a valid event may still be a
//! conflicting duplicate, which only the engine can tell, and goes to the DLQ as it came.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::message::{BorrowedMessage, Message};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::warn;

use super::InputKind;
use crate::domain::session::{decode_session, Session};
use crate::domain::{decode, Decoded, Rejection};
use crate::kafka::source::Source;

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
    /// Starts reading `source`; `kinds` is what each of its topics carries.
    pub fn spawn(source: Arc<Source>, kinds: Vec<InputKind>) -> DecodeStage {
        let (tx, output) = mpsc::channel(AHEAD);
        let task = tokio::spawn(async move {
            loop {
                match source.consumer.recv().await {
                    Ok(m) => {
                        let Some(topic) = source.topic_index(m.topic()) else {
                            warn!(topic = m.topic(), "message from an unassigned topic ignored");
                            continue;
                        };
                        let ingested = ingest(&m, topic, kinds[topic]);
                        drop(m);
                        if tx.send(ingested).await.is_err() {
                            return; // the worker is gone
                        }
                    }
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
