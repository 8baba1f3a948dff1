//! `cluster_bench`: runs N martstream instances in cluster mode over a topic that already
//! holds its events, from an empty database, and reports how long they took to read and
//! publish every partition to its end (the exchange, `cluster_partials`, says how far each
//! partition's published chunks go), then their CPU time and resident memory, and that of
//! the servers named with `--watch` over the same time.
//!
//!   cluster_bench --topic T --mongo-uri U --database D --instances 2 -- martstream --config ... run
//!
//! With `--classic-port P` it runs one instance outside cluster mode instead, done when its
//! /metrics on port P show every partition read to its end and nothing waiting for MongoDB.
//!
//! Each instance gets `MARTSTREAM_CLUSTER__INSTANCE_ID=i<n>`; they are stopped with SIGTERM
//! at the end. One line on stdout:
//! `<label>: <s> s, <events/s> events/s, cpu <s> s (<µs> µs/event), rss <MB> MB per instance; mongod cpu <s> s ...`.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use futures::TryStreamExt;
use mongodb::bson::{doc, Document};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    target: loadtest::TopicArgs,
    #[arg(long)]
    mongo_uri: String,
    #[arg(long)]
    database: String,
    #[arg(long, default_value_t = 1)]
    instances: usize,
    /// One instance outside cluster mode, its /metrics on this port.
    #[arg(long)]
    classic_port: Option<u16>,
    /// `NAME=PID` of a server whose CPU time over the run is reported too.
    #[arg(long)]
    watch: Vec<String>,
    /// Gives up after this many seconds.
    #[arg(long, default_value_t = 900)]
    timeout_s: u64,
    /// The martstream command line (program first).
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// utime + stime of a process, seconds (Linux /proc).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn rss_bytes(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb * 1024.0)
}

/// Whether a classic instance's /metrics show it read to the end, its writes acknowledged.
async fn classic_done(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else { return false };
    if stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.is_err() {
        return false;
    }
    let mut text = String::new();
    if stream.read_to_string(&mut text).await.is_err() {
        return false;
    }
    let values = |name: &str| -> Vec<f64> {
        text.lines()
            .filter(|l| l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b' ' | b'{')))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect()
    };
    let lag = values("martstream_consumer_lag_messages");
    !lag.is_empty()
        && lag.iter().all(|&l| l == 0.0)
        && values("martstream_sink_pending_flushes") == [0.0]
        && values("martstream_facts_pending") == [0.0]
        && values("martstream_events_consumed_total").first().is_some_and(|&n| n > 0.0)
}

struct Instances(Vec<Child>);

impl Drop for Instances {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.classic_port.is_some() && args.instances != 1 {
        bail!("--classic-port runs one instance");
    }
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &args.target.brokers).create()?;
    let timeout = Duration::from_secs(30);
    let metadata = consumer.fetch_metadata(Some(&args.target.topic), timeout).context("topic metadata")?;
    let Some(t) = metadata.topics().first().filter(|t| !t.partitions().is_empty()) else {
        bail!("topic {} not found", args.target.topic);
    };
    let mut ends = BTreeMap::new();
    for p in t.partitions() {
        let (_, high) = consumer.fetch_watermarks(&args.target.topic, p.id(), timeout)?;
        ends.insert(p.id(), high);
    }
    let events: i64 = ends.values().sum();
    let db = mongodb::Client::with_uri_str(&args.mongo_uri).await?.database(&args.database);
    let chunks = db.collection::<Document>("cluster_partials");

    let watched: Vec<(String, u32)> = args
        .watch
        .iter()
        .filter_map(|w| {
            let (name, pid) = w.split_once('=')?;
            Some((name.to_owned(), pid.parse().ok()?))
        })
        .collect();
    let watched_before: Vec<f64> = watched.iter().map(|(_, pid)| cpu_seconds(*pid)).collect();
    let started = Instant::now();
    let mut instances = Instances(Vec::new());
    for i in 0..args.instances {
        let child = Command::new(&args.command[0])
            .args(&args.command[1..])
            .env("MARTSTREAM_CLUSTER__INSTANCE_ID", format!("i{i}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("starting martstream")?;
        instances.0.push(child);
    }
    let mut rss_peak = vec![0.0f64; args.instances];
    loop {
        if let Some(port) = args.classic_port {
            if classic_done(port).await {
                break;
            }
            for c in instances.0.iter_mut() {
                if let Some(status) = c.try_wait()? {
                    bail!("the instance exited early: {status}");
                }
            }
            rss_peak[0] = rss_peak[0].max(rss_bytes(instances.0[0].id()));
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let published: Vec<Document> = chunks
            .aggregate([doc! { "$group": { "_id": "$p", "to": { "$max": "$to" } } }])
            .await?
            .try_collect()
            .await?;
        let at: BTreeMap<i32, i64> =
            published.iter().filter_map(|d| Some((d.get_i32("_id").ok()?, d.get_i64("to").ok()?))).collect();
        if ends.iter().all(|(p, &end)| end == 0 || at.get(p).is_some_and(|&to| to >= end)) {
            break;
        }
        for (i, c) in instances.0.iter_mut().enumerate() {
            if let Some(status) = c.try_wait()? {
                bail!("instance i{i} exited early: {status}");
            }
            rss_peak[i] = rss_peak[i].max(rss_bytes(c.id()));
        }
        if started.elapsed() > Duration::from_secs(args.timeout_s) {
            bail!("not published to the end within {} s: {at:?} of {ends:?}", args.timeout_s);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu: f64 = instances.0.iter().map(|c| cpu_seconds(c.id())).sum();
    let rss = rss_peak.iter().sum::<f64>() / args.instances as f64;
    let servers: String = watched
        .iter()
        .zip(&watched_before)
        .map(|((name, pid), before)| format!("; {name} cpu {:.2} s", cpu_seconds(*pid) - before))
        .collect();
    for c in &instances.0 {
        let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
    }
    for c in &mut instances.0 {
        let _ = c.wait();
    }
    let label = match args.classic_port {
        Some(_) => "single_instance".to_owned(),
        None => format!("cluster_instances_{}", args.instances),
    };
    println!(
        "{label}: {seconds:.2} s, {:.0} events/s, cpu {cpu:.2} s ({:.1} µs/event), rss {:.0} MB per instance{servers}",
        events as f64 / seconds,
        cpu * 1e6 / events as f64,
        rss / 1e6,
    );
    Ok(())
}
