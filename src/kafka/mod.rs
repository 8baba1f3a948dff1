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
    /// The client's error is in the message, and not also a `source`, so a one-line error
    /// chain (`{:#}`) says it once.
    #[error("Kafka client error: {0}")]
    Client(rdkafka::error::KafkaError),
    #[error("{0}")]
    Invalid(String),
}

impl From<rdkafka::error::KafkaError> for KafkaError {
    fn from(e: rdkafka::error::KafkaError) -> Self {
        KafkaError::Client(e)
    }
}

/// The short reason of a client error: its error code when it has one.
pub fn short_reason(e: &rdkafka::error::KafkaError) -> String {
    e.rdkafka_error_code().map_or_else(|| e.to_string(), |code| code.to_string())
}

/// The start-up error when the first request to the broker failed. librdkafka serves its
/// error callbacks (where "SASL authentication failed" or "SSL handshake failed" would
/// be) only when the client is polled, which has not happened yet; the request itself just
/// times out with a transport error. So when the client was set to authenticate or to use
/// TLS, the error says so: a port that speaks another protocol, or a refused login, looks
/// exactly like a broker that is not there.
pub(crate) fn first_request_failed(
    kafka: &KafkaConfig,
    timeout: Duration,
    e: &rdkafka::error::KafkaError,
) -> KafkaError {
    let mut reason = short_reason(e);
    let protocol = kafka.librdkafka_options.get("security.protocol").map(|p| p.to_ascii_uppercase());
    if let Some(protocol) = protocol.filter(|p| p != "PLAINTEXT") {
        reason.push_str(&format!(
            "; security.protocol is {protocol}: check that the broker has a {protocol} listener at that address and that the credentials are right"
        ));
    }
    KafkaError::Unreachable { brokers: kafka.brokers.clone(), timeout, reason }
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
