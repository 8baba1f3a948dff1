//! `martstream topics create`: the topic definitions of `topics/topics.toml` (compiled in),
//! applied idempotently with the admin API. Names come from the configuration.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::types::RDKafkaErrorCode;
use serde::Deserialize;

use super::context::LogContext;
use super::{client_config, KafkaError};
use crate::config::KafkaConfig;

/// The shipped definitions.
pub const TOPICS_TOML: &str = include_str!("../../topics/topics.toml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Definitions {
    topic: Vec<TopicDefinition>,
}

/// One topic: its role (which config key names it) and its settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicDefinition {
    /// `transactions` (kafka.topic) or `dlq` (kafka.dlq_topic).
    pub role: String,
    #[serde(default)]
    pub description: String,
    /// Topic-level configs, e.g. `retention.ms = "-1"`.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

/// The definitions with their configured names.
pub fn definitions(kafka: &KafkaConfig) -> Result<Vec<(String, TopicDefinition)>, KafkaError> {
    let defs: Definitions =
        toml::from_str(TOPICS_TOML).map_err(|e| KafkaError::Invalid(format!("topics.toml: {e}")))?;
    let mut out = Vec::new();
    for d in defs.topic {
        let name = match d.role.as_str() {
            "transactions" => kafka.topic.clone(),
            "dlq" => kafka.dlq_topic.clone(),
            "sessions" => kafka.sessions_topic.clone(),
            "sessions_dlq" => {
                kafka.sessions_topic.is_empty().then(String::new).unwrap_or(kafka.sessions_dlq_topic.clone())
            }
            other => return Err(KafkaError::Invalid(format!("topics.toml: unknown role {other:?}"))),
        };
        if !name.is_empty() {
            out.push((name, d));
        }
    }
    Ok(out)
}

/// What happened to each topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    Created(String),
    Existed(String),
}

/// Creates every defined topic that does not exist yet.
pub async fn create_all(kafka: &KafkaConfig) -> Result<Vec<Created>, KafkaError> {
    let defs = definitions(kafka)?;
    let context = LogContext::default();
    let admin: AdminClient<LogContext> = client_config(kafka).create_with_context(context.clone())?;
    let timeout = Duration::from_millis(kafka.connect_timeout_ms);
    // Fail fast, with one line, when the broker is not there.
    admin.inner().fetch_metadata(None, timeout).map_err(|e| super::first_request_failed(kafka, timeout, &e))?;
    context.mark_started();
    let new_topics: Vec<NewTopic<'_>> = defs
        .iter()
        .map(|(name, def)| {
            let mut t = NewTopic::new(name, kafka.partitions, TopicReplication::Fixed(kafka.replication_factor));
            for (k, v) in &def.config {
                t = t.set(k, v);
            }
            t
        })
        .collect();
    let results = admin.create_topics(&new_topics, &AdminOptions::new().operation_timeout(Some(timeout))).await?;
    results
        .into_iter()
        .map(|r| match r {
            Ok(name) => Ok(Created::Created(name)),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => Ok(Created::Existed(name)),
            Err((name, code)) => Err(KafkaError::Invalid(format!("creating topic {name}: {code}"))),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_definitions_keep_history_forever() {
        let defs = definitions(&KafkaConfig::default()).unwrap();
        let names: Vec<&str> = defs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["transactions", "transactions.dlq", "customer_sessions", "customer_sessions.dlq"]);
        for (_, def) in defs {
            assert_eq!(def.config["retention.ms"], "-1", "replays need the whole history");
        }
    }
}
