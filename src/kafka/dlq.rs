//! The dead-letter producer: a rejected message goes to the DLQ topic unchanged (same key,
//! same value), with headers naming the reason and where it came from.
//!
//! Sends are pipelined: a message is handed to librdkafka (idempotent, acks=all, which
//! batches and retries) and its delivery is checked later, so a burst of bad input does not
//! cost a broker round trip each. The pipeline settles every outstanding delivery before a
//! snapshot and at shutdown, so a position is never recorded past an unconfirmed letter;
//! a delivery that failed for good is sent again.
//!
//! Each bad message is lettered once: at start, the DLQ topics are read for the letters
//! already there ([`SentLetters`], by their `source_*` headers), and a rejection whose
//! source message has one is not sent again, whoever sent it (the live service, an earlier
//! backfill, this process before a crash). `replay --dead-letters all|new|none` chooses.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use futures::FutureExt;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use super::context::LogContext;
use super::{client_config, KafkaError};
use crate::config::KafkaConfig;
use crate::domain::Rejection;

/// Where a rejected message was read.
#[derive(Debug, Clone)]
pub struct SourcePosition<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
}

pub struct DeadLetters {
    producer: FutureProducer<LogContext>,
    /// Deliveries not confirmed yet.
    pending: VecDeque<DeliveryFuture>,
    policy: Policy,
    /// With [`Policy::New`]: the letters the DLQ held at start.
    sent: SentLetters,
}

/// Which rejections are sent to the DLQ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Policy {
    /// Every rejection, even one whose source message the DLQ already holds a letter of.
    All,
    /// Those whose source message the DLQ holds no letter of yet (each bad message once).
    New,
    /// None: rejections are counted and logged only.
    None,
}

/// Source messages (topic, partition, offset) the DLQ topics hold a letter of.
#[derive(Debug, Default)]
pub struct SentLetters {
    /// Source topic → partition → offsets.
    by_source: HashMap<String, HashMap<i32, HashSet<i64>>>,
}

impl SentLetters {
    pub fn contains(&self, topic: &str, partition: i32, offset: i64) -> bool {
        self.by_source.get(topic).and_then(|p| p.get(&partition)).is_some_and(|offsets| offsets.contains(&offset))
    }

    pub fn len(&self) -> usize {
        self.by_source.values().flat_map(HashMap::values).map(HashSet::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records the letter whose headers are `headers`; a message without the source
    /// headers (not written by martstream) is ignored. Only source offsets at or after
    /// `from` (where this reader starts on that partition) are kept: the others are never
    /// read again.
    fn record(&mut self, headers: &rdkafka::message::BorrowedHeaders, from: &BTreeMap<(String, i32), i64>) {
        let mut source = (None, None, None);
        for h in headers.iter() {
            let text = h.value.and_then(|v| std::str::from_utf8(v).ok());
            match h.key {
                "source_topic" => source.0 = text.map(str::to_owned),
                "source_partition" => source.1 = text.and_then(|t| t.parse::<i32>().ok()),
                "source_offset" => source.2 = text.and_then(|t| t.parse::<i64>().ok()),
                _ => {}
            }
        }
        if let (Some(topic), Some(partition), Some(offset)) = source {
            let key = (topic, partition);
            if from.get(&key).is_some_and(|&start| offset >= start) {
                self.by_source.entry(key.0).or_default().entry(partition).or_default().insert(offset);
            }
        }
    }

    /// Reads `dlq_topics` from their beginning to their current end. `from`: where this
    /// reader starts, per source (topic, partition); letters of other sources, or of
    /// earlier offsets, are not kept. A DLQ topic that does not exist holds nothing.
    pub fn load(
        kafka: &KafkaConfig,
        dlq_topics: &[String],
        from: &BTreeMap<(String, i32), i64>,
    ) -> Result<SentLetters, KafkaError> {
        let mut config = client_config(kafka);
        config
            .set("group.id", format!("{}-dlq-index", kafka.group_id))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false");
        let consumer: BaseConsumer<LogContext> = config.create_with_context(LogContext::default())?;
        let timeout = Duration::from_millis(kafka.connect_timeout_ms);
        let mut assignment = TopicPartitionList::new();
        let mut end = BTreeMap::new();
        for topic in dlq_topics {
            let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
            for t in metadata.topics().iter().filter(|t| t.name() == topic && t.error().is_none()) {
                for p in t.partitions() {
                    let (low, high) = consumer.fetch_watermarks(topic, p.id(), timeout)?;
                    if high > low {
                        assignment.add_partition_offset(topic, p.id(), Offset::Offset(low))?;
                        end.insert((topic.clone(), p.id()), high);
                    }
                }
            }
        }
        let mut sent = SentLetters::default();
        if end.is_empty() {
            return Ok(sent);
        }
        consumer.assign(&assignment)?;
        let mut quiet_since = Instant::now();
        while !end.is_empty() {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    quiet_since = Instant::now();
                    if let Some(h) = m.headers() {
                        sent.record(h, from);
                    }
                    let key = (m.topic().to_owned(), m.partition());
                    if end.get(&key).is_some_and(|&high| m.offset() + 1 >= high) {
                        end.remove(&key);
                    }
                }
                Some(Err(e)) => return Err(KafkaError::Client(e)),
                None if quiet_since.elapsed() > timeout => {
                    return Err(KafkaError::Invalid(format!(
                        "reading the dead-letter topics stalled for {timeout:?} before their end ({} partitions left)",
                        end.len()
                    )))
                }
                None => {}
            }
        }
        Ok(sent)
    }
}

/// A letter whose delivery failed for good (after librdkafka's own retries).
pub struct Undelivered {
    pub error: rdkafka::error::KafkaError,
    pub message: OwnedMessage,
}

impl DeadLetters {
    /// A producer that sends by `policy`; with [`Policy::New`], `sent` are the letters the
    /// DLQ already holds.
    pub fn new(kafka: &KafkaConfig, policy: Policy, sent: SentLetters) -> Result<Self, KafkaError> {
        let mut config = client_config(kafka);
        config.set("enable.idempotence", "true").set("acks", "all").set("linger.ms", "5");
        // Created after the source confirmed the broker: its problems are warnings at once.
        let context = LogContext::default();
        context.mark_started();
        Ok(DeadLetters { producer: config.create_with_context(context)?, pending: VecDeque::new(), policy, sent })
    }

    /// Whether a rejection of the message at `from` is to be sent, by the policy.
    pub fn wanted(&self, from: &SourcePosition<'_>) -> bool {
        match self.policy {
            Policy::All => true,
            Policy::New => !self.sent.contains(from.topic, from.partition, from.offset),
            Policy::None => false,
        }
    }

    /// Deliveries not confirmed yet.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Collects the deliveries already confirmed or failed, without waiting.
    pub fn reap(&mut self) -> Vec<Undelivered> {
        let mut failed = Vec::new();
        let mut still = VecDeque::with_capacity(self.pending.len());
        for mut f in self.pending.drain(..) {
            match (&mut f).now_or_never() {
                None => still.push_back(f),
                Some(Ok(Ok(_))) => {}
                Some(Ok(Err((error, message)))) => failed.push(Undelivered { error, message }),
                Some(Err(_cancelled)) => {}
            }
        }
        self.pending = still;
        failed
    }

    /// Waits for every outstanding delivery; returns those that failed.
    pub async fn settle(&mut self) -> Vec<Undelivered> {
        let mut failed = Vec::new();
        while let Some(f) = self.pending.pop_front() {
            if let Ok(Err((error, message))) = f.await {
                failed.push(Undelivered { error, message });
            }
        }
        failed
    }

    /// Hands a failed letter to the producer again, unchanged.
    pub fn resend(&mut self, u: &Undelivered) -> Result<(), KafkaError> {
        let m = &u.message;
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(m.topic());
        if let Some(h) = m.headers() {
            record = record.headers(h.clone());
        }
        if let Some(k) = m.key() {
            record = record.key(k);
        }
        if let Some(p) = m.payload() {
            record = record.payload(p);
        }
        let delivery = self.producer.send_result(record).map_err(|(e, _)| KafkaError::Client(e))?;
        self.pending.push_back(delivery);
        Ok(())
    }

    /// Hands one rejected message for `dlq_topic` to the producer; its delivery is checked by
    /// [`reap`](Self::reap) / [`settle`](Self::settle). Fails when the producer's queue is
    /// full (settle, then try again).
    pub fn enqueue(
        &mut self,
        dlq_topic: &str,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        rejection: &Rejection,
        from: &SourcePosition<'_>,
    ) -> Result<(), KafkaError> {
        let partition = from.partition.to_string();
        let offset = from.offset.to_string();
        let timestamp = from.timestamp_ms.map(|t| t.to_string());
        let mut headers = OwnedHeaders::new()
            .insert(Header { key: "reason", value: Some(rejection.reason.as_str()) })
            .insert(Header { key: "detail", value: Some(rejection.detail.as_str()) })
            .insert(Header { key: "source_topic", value: Some(from.topic) })
            .insert(Header { key: "source_partition", value: Some(partition.as_str()) })
            .insert(Header { key: "source_offset", value: Some(offset.as_str()) });
        if let Some(ts) = &timestamp {
            headers = headers.insert(Header { key: "source_timestamp", value: Some(ts.as_str()) });
        }
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(dlq_topic).headers(headers);
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(p) = payload {
            record = record.payload(p);
        }
        let delivery = self.producer.send_result(record).map_err(|(e, _)| KafkaError::Client(e))?;
        self.pending.push_back(delivery);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sent_letters_are_found_by_source_and_only_from_the_readers_start() {
        let headers = |topic: &str, partition: &str, offset: &str| {
            OwnedHeaders::new()
                .insert(Header { key: "reason", value: Some("invalid_json") })
                .insert(Header { key: "source_topic", value: Some(topic) })
                .insert(Header { key: "source_partition", value: Some(partition) })
                .insert(Header { key: "source_offset", value: Some(offset) })
        };
        let from = BTreeMap::from([(("sales".to_owned(), 0), 10), (("sales".to_owned(), 1), 0)]);
        let mut sent = SentLetters::default();
        for (t, p, o) in
            [("sales", "0", "12"), ("sales", "0", "3"), ("sales", "1", "7"), ("other", "0", "12"), ("sales", "x", "1")]
        {
            sent.record(headers(t, p, o).as_borrowed(), &from);
        }
        sent.record(OwnedHeaders::new().insert(Header { key: "reason", value: Some("x") }).as_borrowed(), &from);
        assert!(sent.contains("sales", 0, 12) && sent.contains("sales", 1, 7));
        assert!(!sent.contains("sales", 0, 3), "before where this reader starts");
        assert!(!sent.contains("other", 0, 12) && !sent.contains("sales", 1, 12));
        assert_eq!(sent.len(), 2);
    }
}
