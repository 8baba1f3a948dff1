//! The dead-letter producer: a rejected message goes to the DLQ topic unchanged (same key,
//! same value), with headers naming the reason and where it came from.
//!
//! Sends are pipelined: a message is handed to librdkafka (idempotent, acks=all, which
//! batches and retries) and its delivery is checked later, so a burst of bad input does not
//! cost a broker round trip each. The pipeline settles every outstanding delivery before a
//! snapshot and at shutdown, so a position is never recorded past an unconfirmed letter;
//! a delivery that failed for good is sent again.

use std::collections::VecDeque;

use futures::FutureExt;
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};

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
}

/// A letter whose delivery failed for good (after librdkafka's own retries).
pub struct Undelivered {
    pub error: rdkafka::error::KafkaError,
    pub message: OwnedMessage,
}

impl DeadLetters {
    pub fn new(kafka: &KafkaConfig) -> Result<Self, KafkaError> {
        let mut config = client_config(kafka);
        config.set("enable.idempotence", "true").set("acks", "all").set("linger.ms", "5");
        // Created after the source confirmed the broker: its problems are warnings at once.
        let context = LogContext::default();
        context.mark_started();
        Ok(DeadLetters { producer: config.create_with_context(context)?, pending: VecDeque::new() })
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
