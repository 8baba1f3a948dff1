//! The input source: a consumer that assigns itself every partition of the topic and seeks
//! to offsets martstream chose (the beginning, an offset, a time), with
//! `enable.auto.commit=false`. Positions are martstream's own; commits to the group are for
//! monitoring only. Manual assignment also avoids group rebalances entirely: a killed
//! instance never holds partitions hostage.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};

use super::context::LogContext;
use super::{client_config, KafkaError};
use crate::config::KafkaConfig;

/// Where consumption starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartAt {
    Beginning,
    /// The same offset on every partition (clamped to what the partition holds).
    Offset(i64),
    /// Per-partition offsets; partitions not listed start at the beginning.
    Offsets(BTreeMap<i32, i64>),
    /// The first message with a timestamp at or after this instant.
    Timestamp(DateTime<Utc>),
    /// Where a snapshot left off, per (topic name, partition); partitions it does not know
    /// (new ones) start at the beginning.
    Resume(BTreeMap<(String, i32), i64>),
}

impl std::str::FromStr for StartAt {
    type Err = String;
    /// `N` (every partition) or `P:N,P:N,...`.
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(n) = s.parse::<i64>() {
            return if n >= 0 { Ok(StartAt::Offset(n)) } else { Err(format!("offset {n} is negative")) };
        }
        s.split(',')
            .map(|pair| {
                let (p, o) = pair.split_once(':').ok_or_else(|| format!("{pair:?} is not PARTITION:OFFSET"))?;
                let p = p.trim().parse::<i32>().map_err(|_| format!("partition {p:?} is not a number"))?;
                let o = o.trim().parse::<i64>().map_err(|_| format!("offset {o:?} is not a number"))?;
                Ok((p, o))
            })
            .collect::<Result<BTreeMap<_, _>, String>>()
            .map(StartAt::Offsets)
    }
}

/// A partition of one of the source's topics: (index into `Source::topics`, partition).
pub type TopicPartition = (usize, i32);

pub struct Source {
    pub consumer: StreamConsumer<LogContext>,
    /// The input topics, in the order of their index.
    pub topics: Vec<String>,
    pub partitions: Vec<TopicPartition>,
    timeout: Duration,
    /// `kafka.fetch_pause_ms`, when set: the consumer reports the end of each partition
    /// (`enable.partition.eof`), which the decode stage paces its fetches by.
    pub fetch_pause: Option<Duration>,
}

impl Source {
    /// Connects and reads the topics' partitions; an unreachable broker or a missing topic
    /// is an error here, at start.
    pub fn connect(kafka: &KafkaConfig, topics: Vec<String>) -> Result<Source, KafkaError> {
        let fetch_pause = (kafka.fetch_pause_ms > 0).then(|| Duration::from_millis(kafka.fetch_pause_ms));
        let mut config = client_config(kafka);
        config
            .set("group.id", &kafka.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", if fetch_pause.is_some() { "true" } else { "false" });
        if !kafka.librdkafka_options.contains_key("statistics.interval.ms") {
            // Partition high watermarks for the lag gauges.
            config.set("statistics.interval.ms", "1000");
        }
        let context = LogContext::default();
        let consumer: StreamConsumer<LogContext> = config.create_with_context(context.clone())?;
        let timeout = Duration::from_millis(kafka.connect_timeout_ms);
        let mut partitions = Vec::new();
        for (i, topic) in topics.iter().enumerate() {
            let metadata = consumer
                .fetch_metadata(Some(topic), timeout)
                .map_err(|e| super::first_request_failed(kafka, timeout, &e))?;
            let found: Vec<TopicPartition> = metadata
                .topics()
                .iter()
                .filter(|t| t.name() == topic && t.error().is_none())
                .flat_map(|t| t.partitions().iter().map(move |p| (i, p.id())))
                .collect();
            if found.is_empty() {
                return Err(KafkaError::NoSuchTopic(topic.clone()));
            }
            partitions.extend(found);
        }
        context.mark_started();
        Ok(Source { consumer, topics, partitions, timeout, fetch_pause })
    }

    /// The index of a topic name.
    pub fn topic_index(&self, name: &str) -> Option<usize> {
        self.topics.iter().position(|t| t == name)
    }

    /// `(low, high)` watermarks of every partition: the first offset held and the offset the
    /// next message will get.
    pub fn watermarks(&self) -> Result<BTreeMap<TopicPartition, (i64, i64)>, KafkaError> {
        self.partitions
            .iter()
            .map(|&(t, p)| Ok(((t, p), self.consumer.fetch_watermarks(&self.topics[t], p, self.timeout)?)))
            .collect()
    }

    /// Resolves `start` to a concrete offset per partition (of every topic) and assigns them.
    pub fn assign(&self, start: &StartAt) -> Result<BTreeMap<TopicPartition, i64>, KafkaError> {
        let marks = self.watermarks()?;
        let offsets: BTreeMap<TopicPartition, i64> = match start {
            StartAt::Beginning => marks.iter().map(|(&tp, &(low, _))| (tp, low)).collect(),
            StartAt::Offset(n) => marks.iter().map(|(&tp, &(low, high))| (tp, (*n).clamp(low, high))).collect(),
            StartAt::Offsets(map) => marks
                .iter()
                .map(|(&tp, &(low, high))| (tp, map.get(&tp.1).map_or(low, |&o| o.clamp(low, high))))
                .collect(),
            StartAt::Resume(map) => marks
                .iter()
                .map(|(&(topic, p), &(low, high))| {
                    let saved = map.get(&(self.topics[topic].clone(), p)).copied();
                    if saved.is_some_and(|o| o < low) {
                        tracing::warn!(topic = %self.topics[topic], partition = p, low, "retention deleted events after the snapshot's position: they are missing from the state");
                    }
                    ((topic, p), saved.map_or(low, |o| o.clamp(low, high)))
                })
                .collect(),
            StartAt::Timestamp(t) => {
                let mut tpl = TopicPartitionList::new();
                for &(topic, p) in &self.partitions {
                    tpl.add_partition_offset(&self.topics[topic], p, Offset::Offset(t.timestamp_millis()))?;
                }
                let found = self.consumer.offsets_for_times(tpl, self.timeout)?;
                found
                    .elements()
                    .iter()
                    .filter_map(|e| {
                        let tp = (self.topic_index(e.topic())?, e.partition());
                        let (low, high) = marks[&tp];
                        let at = match e.offset() {
                            Offset::Offset(o) => o.clamp(low, high),
                            _ => high,
                        };
                        Some((tp, at))
                    })
                    .collect()
            }
        };
        let mut tpl = TopicPartitionList::new();
        for (&(t, p), &o) in &offsets {
            tpl.add_partition_offset(&self.topics[t], p, Offset::Offset(o))?;
        }
        self.consumer.assign(&tpl)?;
        Ok(offsets)
    }

    /// The high watermarks in librdkafka's latest statistics (no request made): partitions
    /// with none yet are left out.
    pub fn cached_high_watermarks(&self) -> BTreeMap<TopicPartition, i64> {
        self.partitions
            .iter()
            .filter_map(|&(t, p)| Some(((t, p), self.consumer.context().high_watermark(&self.topics[t], p)?)))
            .collect()
    }

    /// Reports positions to the consumer group, for lag monitoring only (best effort).
    pub fn commit_for_monitoring(&self, positions: &BTreeMap<TopicPartition, i64>) {
        let mut tpl = TopicPartitionList::new();
        for (&(t, p), &o) in positions {
            if tpl.add_partition_offset(&self.topics[t], p, Offset::Offset(o)).is_err() {
                return;
            }
        }
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
            tracing::debug!(error = %e, "monitoring commit failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_offsets() {
        assert_eq!("42".parse::<StartAt>(), Ok(StartAt::Offset(42)));
        assert_eq!("0:10, 3:7".parse::<StartAt>(), Ok(StartAt::Offsets(BTreeMap::from([(0, 10), (3, 7)]))));
        assert!("-1".parse::<StartAt>().is_err());
        assert!("x".parse::<StartAt>().is_err());
    }
}
