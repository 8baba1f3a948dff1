//! The dead-letter producer: a rejected message goes to the DLQ topic unchanged (same key,
//! same value), with headers naming the reason and where it came from.

use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

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
}

impl DeadLetters {
    pub fn new(kafka: &KafkaConfig) -> Result<Self, KafkaError> {
        let mut config = client_config(kafka);
        config.set("enable.idempotence", "true").set("acks", "all").set("linger.ms", "5");
        // Created after the source confirmed the broker: its problems are warnings at once.
        let context = LogContext::default();
        context.mark_started();
        Ok(DeadLetters { producer: config.create_with_context(context)? })
    }

    /// Sends one rejected message to `dlq_topic` and waits for the broker's acknowledgement.
    pub async fn send(
        &self,
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
        self.producer.send(record, Duration::from_secs(30)).await.map(|_| ()).map_err(|(e, _)| KafkaError::Client(e))
    }
}
