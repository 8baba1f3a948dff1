//! `trim_topic`: deletes every record of a topic up to its current end (Kafka's
//! DeleteRecords, what retention does), keeping its offsets: a consumer that resumes at the
//! old end reads on from there. The benchmarks use it to give a service a long history in
//! its state (consumed, then snapshotted) without leaving that history in the broker.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::{Offset, TopicPartitionList};

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:19092")]
    brokers: String,
    /// Topics to trim (each partition up to its end).
    #[arg(required = true)]
    topics: Vec<String>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", &args.brokers).create().context("creating the admin client")?;
    let timeout = Duration::from_secs(30);
    let mut tpl = TopicPartitionList::new();
    for topic in &args.topics {
        let metadata =
            admin.inner().fetch_metadata(Some(topic), timeout).with_context(|| format!("metadata of {topic}"))?;
        let Some(t) = metadata.topics().first().filter(|t| !t.partitions().is_empty()) else {
            bail!("topic {topic} not found");
        };
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::End)?;
        }
    }
    let done = admin
        .delete_records(&tpl, &AdminOptions::new().operation_timeout(Some(timeout)))
        .await
        .context("DeleteRecords")?;
    for e in done.elements() {
        if let Err(err) = e.error() {
            bail!("trimming {} partition {}: {err}", e.topic(), e.partition());
        }
        println!("trimmed {} partition {}: records start at {:?}", e.topic(), e.partition(), e.offset());
    }
    Ok(())
}
