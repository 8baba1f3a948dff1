//! `bare_consumer`: the baseline of martstream's benchmarks. A plain rdkafka consumer with
//! martstream's fetch settings that does nothing with the messages:
//! - default: reads every partition of a topic from the beginning to its current end and
//!   reports messages/s (what the broker and client alone can do: the replay's ceiling);
//! - `--follow SECONDS`: follows the topic and reports the delivery latency (message
//!   timestamp → received) quantiles: the floor under martstream's end-to-end latency.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    target: loadtest::TopicArgs,
    /// Follow the topic for this many seconds and report delivery latency.
    #[arg(long, value_name = "SECONDS")]
    follow: Option<u64>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.target.brokers)
        .set("group.id", "martstream-bench-bare")
        .set("enable.auto.commit", "false")
        .set("receive.message.max.bytes", "2147483647")
        .create()
        .context("creating the consumer")?;
    let timeout = Duration::from_secs(10);
    let metadata = consumer.fetch_metadata(Some(&args.target.topic), timeout).context("metadata")?;
    let partitions: Vec<i32> = metadata.topics()[0].partitions().iter().map(|p| p.id()).collect();
    let mut tpl = TopicPartitionList::new();
    let mut end: HashMap<i32, i64> = HashMap::new();
    for &p in &partitions {
        let (low, high) = consumer.fetch_watermarks(&args.target.topic, p, timeout)?;
        let start = if args.follow.is_some() { Offset::Offset(high) } else { Offset::Offset(low) };
        tpl.add_partition_offset(&args.target.topic, p, start)?;
        end.insert(p, high);
    }
    consumer.assign(&tpl)?;

    if let Some(seconds) = args.follow {
        let mut latencies = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000, 3)?;
        let deadline = Instant::now() + Duration::from_secs(seconds);
        while Instant::now() < deadline {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                if let Some(ts) = m.timestamp().to_millis() {
                    let now = chrono::Utc::now().timestamp_millis();
                    latencies.saturating_record((now - ts).max(1) as u64);
                }
            }
        }
        let q = |q: f64| latencies.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "bare_consumer follow: {} messages, delivery latency p50 {:.3} s, p99 {:.3} s, p99.9 {:.3} s",
            latencies.len(),
            q(0.5),
            q(0.99),
            q(0.999)
        );
        return Ok(());
    }

    let total: i64 = tpl.elements().iter().map(|e| end[&e.partition()] - e.offset().to_raw().unwrap_or(0)).sum();
    let started = Instant::now();
    let (mut n, mut bytes) = (0i64, 0usize);
    let mut position: HashMap<i32, i64> = HashMap::new();
    while partitions.iter().any(|p| position.get(p).copied().unwrap_or(0) < end[p]) {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                n += 1;
                bytes += m.payload().map_or(0, <[u8]>::len);
                position.insert(m.partition(), m.offset() + 1);
            }
            Some(Err(e)) => eprintln!("bare_consumer: {e}"),
            None => {}
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "bare_consumer: {n} of {total} messages ({:.1} MiB) in {secs:.2} s: {:.0} messages/s",
        bytes as f64 / 1048576.0,
        n as f64 / secs
    );
    Ok(())
}
