//! `loadtest`: generates a deterministic GlobalMart event stream and writes it to Kafka
//! (keyed by user_id, with producer-like message timestamps) or to a JSON-lines file, and
//! optionally the same transactions to PostgreSQL, with injected drift.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use clap::Parser;
use loadtest::{GenConfig, Generator, Label};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

#[derive(Debug, Parser)]
#[command(name = "loadtest", about = "Deterministic GlobalMart transaction streams for martstream")]
struct Args {
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Messages to generate (including duplicates and malformed ones).
    #[arg(long, default_value_t = 10_000)]
    events: usize,
    #[arg(long, default_value_t = 2_000)]
    customers: usize,
    #[arg(long, default_value_t = 300)]
    products: usize,
    /// First event time (default: `days` before now).
    #[arg(long, value_name = "RFC3339")]
    start: Option<DateTime<Utc>>,
    /// Days of event time the stream spans.
    #[arg(long, default_value_t = 90)]
    days: u32,
    #[arg(long, default_value_t = 0.05)]
    refund_rate: f64,
    #[arg(long, default_value_t = 0.02)]
    duplicate_rate: f64,
    #[arg(long, default_value_t = 0.01)]
    malformed_rate: f64,
    /// Write JSON lines here instead of producing to Kafka.
    #[arg(long, value_name = "FILE", conflicts_with = "brokers")]
    out: Option<std::path::PathBuf>,
    #[arg(long, default_value = "127.0.0.1:19092")]
    brokers: String,
    #[arg(long, default_value = "transactions")]
    topic: String,
    /// Messages per second (0 = as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Stamp each message with the wall clock at send time (not the generated producer time),
    /// for measuring end-to-end latency against a live stream.
    #[arg(long)]
    live: bool,
    /// Stop after this many seconds, whatever --events says.
    #[arg(long)]
    duration: Option<u64>,
    /// Also produce this many browsing-session summaries to --sessions-topic.
    #[arg(long, default_value_t = 0)]
    sessions: usize,
    #[arg(long, default_value = "customer_sessions")]
    sessions_topic: String,
    /// Also write the valid transactions to this PostgreSQL database (schema applied first).
    #[arg(long, value_name = "URL")]
    postgres: Option<String>,
    /// Write to PostgreSQL only, not to Kafka.
    #[arg(long, requires = "postgres")]
    no_kafka: bool,
    /// Drift: this many purchases (each of a different customer) go to PostgreSQL only.
    #[arg(long, default_value_t = 0, requires = "postgres")]
    drift_missing_kafka: usize,
    /// Drift: this many purchases go to Kafka only.
    #[arg(long, default_value_t = 0, requires = "postgres")]
    drift_missing_postgres: usize,
    /// Drift: this many purchases carry 1.00 more in PostgreSQL.
    #[arg(long, default_value_t = 0, requires = "postgres")]
    drift_amount: usize,
    /// Drift: this many purchases have one unit more on their first line in PostgreSQL
    /// (same amount).
    #[arg(long, default_value_t = 0, requires = "postgres")]
    drift_lines: usize,
    /// Drift only among purchases dated before this instant.
    #[arg(long, value_name = "RFC3339")]
    drift_before: Option<DateTime<Utc>>,
    /// Extra librdkafka producer properties, KEY=VALUE (repeatable).
    #[arg(long = "producer-option", value_parser = parse_kv)]
    producer_options: Vec<(String, String)>,
}

fn drift(args: &Args) -> loadtest::postgres::Drift {
    loadtest::postgres::Drift {
        missing_in_kafka: args.drift_missing_kafka,
        missing_in_postgres: args.drift_missing_postgres,
        amount: args.drift_amount,
        lines: args.drift_lines,
        before: args.drift_before,
    }
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("loadtest: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<()> {
    let cfg = GenConfig {
        seed: args.seed,
        events: args.events,
        customers: args.customers.max(1),
        products: args.products.max(1),
        start: args.start.unwrap_or_else(|| Utc::now() - chrono::Duration::days(i64::from(args.days))),
        days: args.days,
        refund_rate: args.refund_rate,
        duplicate_rate: args.duplicate_rate,
        malformed_rate: args.malformed_rate,
        ..GenConfig::default()
    };
    let started = Instant::now();
    let deadline = args.duration.map(|s| started + Duration::from_secs(s));
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut sent = 0u64;
    let pace = |sent: u64| {
        if args.rate > 0 {
            let due = started + Duration::from_secs_f64(sent as f64 / args.rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
    };
    let label = |l: &Label| match l {
        Label::Valid => "valid".to_owned(),
        Label::Duplicate => "duplicate".to_owned(),
        Label::Conflicting => "conflicting_duplicate".to_owned(),
        Label::Malformed(r) => (*r).to_owned(),
    };

    if let Some(path) = &args.out {
        let mut out = std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        );
        for m in Generator::new(cfg) {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            pace(sent);
            writeln!(out, "{}", m.payload.replace('\n', " "))?;
            *counts.entry(label(&m.label)).or_default() += 1;
            sent += 1;
        }
        out.flush()?;
    } else if args.no_kafka {
        let rt = tokio::runtime::Runtime::new()?;
        let url = args.postgres.clone().unwrap_or_default();
        let mut pg = rt.block_on(loadtest::postgres::Writer::connect(&url))?;
        let drift = drift(&args);
        let mut injected = loadtest::postgres::Injected::default();
        for m in Generator::new(cfg) {
            if let Some(row) = injected.route(&drift, &m).to_postgres {
                rt.block_on(pg.add(row))?;
            }
            *counts.entry(label(&m.label)).or_default() += 1;
            sent += 1;
        }
        rt.block_on(pg.flush())?;
        eprintln!("loadtest: {} rows in PostgreSQL; {}", pg.written, injected.summary());
    } else {
        let rt = tokio::runtime::Runtime::new()?;
        let mut pg = match &args.postgres {
            Some(url) => Some(rt.block_on(loadtest::postgres::Writer::connect(url))?),
            None => None,
        };
        let drift = drift(&args);
        let mut injected = loadtest::postgres::Injected::default();
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &args.brokers)
            .set("linger.ms", "20")
            .set("enable.idempotence", "true")
            .set("queue.buffering.max.messages", "200000");
        for (k, v) in &args.producer_options {
            config.set(k, v);
        }
        let producer: ThreadedProducer<DefaultProducerContext> = config.create().context("creating the producer")?;
        // Ask for all topics (asking for one may auto-create it, with a retention that would
        // delete historical event times) and refuse a topic that does not exist.
        let metadata = producer
            .client()
            .fetch_metadata(None, Duration::from_secs(10))
            .with_context(|| format!("cannot reach Kafka at {}", args.brokers))?;
        let sessions = loadtest::sessions(&cfg, args.sessions);
        for topic in std::iter::once(&args.topic).chain((args.sessions > 0).then_some(&args.sessions_topic)) {
            if !metadata.topics().iter().any(|t| t.name() == topic && !t.partitions().is_empty()) {
                bail!("topic {topic:?} does not exist (create it with `martstream topics create`)");
            }
        }
        for m in &sessions {
            let record = BaseRecord::to(&args.sessions_topic)
                .key(&m.key)
                .payload(&m.payload)
                .timestamp(m.timestamp.timestamp_millis());
            producer.send(record).map_err(|(e, _)| anyhow::anyhow!("producing a session: {e}"))?;
            *counts.entry(format!("sessions_{}", label(&m.label))).or_default() += 1;
        }
        for m in Generator::new(cfg) {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            pace(sent);
            if let Some(pg) = pg.as_mut() {
                let route = injected.route(&drift, &m);
                if let Some(row) = route.to_postgres {
                    rt.block_on(pg.add(row))?;
                }
                if !route.to_kafka {
                    continue;
                }
            }
            let stamp = if args.live { Utc::now() } else { m.timestamp };
            let mut record =
                BaseRecord::to(&args.topic).key(&m.key).payload(&m.payload).timestamp(stamp.timestamp_millis());
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err((e, _)) => bail!("producing: {e}"),
                }
            }
            *counts.entry(label(&m.label)).or_default() += 1;
            sent += 1;
        }
        producer.flush(Duration::from_secs(60)).context("flushing the producer")?;
        if let Some(pg) = pg.as_mut() {
            rt.block_on(pg.flush())?;
            eprintln!("loadtest: {} rows in PostgreSQL; {}", pg.written, injected.summary());
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let detail: Vec<String> = counts.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!(
        "loadtest: wrote {sent} messages in {secs:.1}s ({:.0}/s): {}",
        sent as f64 / secs.max(1e-9),
        detail.join(" ")
    );
    Ok(())
}
