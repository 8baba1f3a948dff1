//! Kafka adapters: the input source, the dead-letter producer and topic administration.
//! Every client gets `bootstrap.servers` and the configured `librdkafka_options`.

pub mod context;
pub mod dlq;
pub mod source;
pub mod topics;

use std::time::Duration;

use rdkafka::config::ClientConfig;

use crate::config::KafkaConfig;

#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("cannot reach Kafka at {brokers} within {timeout:?} ({reason})")]
    Unreachable { brokers: String, timeout: Duration, reason: String },
    #[error("topic {0:?} does not exist (create it with `martstream topics create`)")]
    NoSuchTopic(String),
    #[error("Kafka client error: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
    #[error("{0}")]
    Invalid(String),
}

/// The short reason of a client error: its error code when it has one.
pub fn short_reason(e: &rdkafka::error::KafkaError) -> String {
    e.rdkafka_error_code().map_or_else(|| e.to_string(), |code| code.to_string())
}

/// The base configuration of every client.
pub fn client_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kafka.brokers);
    c.set("client.id", "martstream");
    for (key, value) in &kafka.librdkafka_options {
        c.set(key, value);
    }
    c
}
