//! Helpers for end-to-end tests against the real local stack (`scripts/stack up`): fresh
//! topic and database names per test (tests run in parallel), producing, running the
//! `martstream` binary, reading MongoDB and the dead-letter topic back.
#![allow(dead_code)]

pub mod recompute;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use mongodb::bson::Document;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

pub fn brokers() -> String {
    std::env::var("MARTSTREAM_KAFKA__BROKERS").unwrap_or_else(|_| "127.0.0.1:19092".into())
}

/// The tests' MongoDB login: the stack's `martstream_test` user, which may use the fresh
/// databases each test names (`scripts/stack env`); else the service's URI.
pub fn mongo_uri() -> String {
    std::env::var("MARTSTREAM_TEST_MONGO_URI")
        .or_else(|_| std::env::var("MARTSTREAM_MONGO__URI"))
        .unwrap_or_else(|_| "mongodb://127.0.0.1:27017/?replicaSet=rs0".into())
}

/// A name no other test (or earlier run) uses.
pub fn fresh_name(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{prefix}_{}_{}_{}", std::process::id(), nanos % 1_000_000, N.fetch_add(1, Ordering::Relaxed))
}

/// One test's own topic, dead-letter topic and database.
pub struct Scenario {
    pub topic: String,
    pub dlq: String,
    pub sessions: String,
    pub sessions_dlq: String,
    pub database: String,
    pub extra: Vec<String>,
}

impl Scenario {
    pub fn new(prefix: &str) -> Scenario {
        let base = fresh_name(prefix);
        Scenario {
            topic: format!("{base}.tx"),
            dlq: format!("{base}.tx.dlq"),
            sessions: format!("{base}.sessions"),
            sessions_dlq: format!("{base}.sessions.dlq"),
            database: base.replace('.', "_"),
            extra: Vec::new(),
        }
    }

    /// The flags that point `martstream` at this scenario and the local stack.
    pub fn args(&self) -> Vec<String> {
        let mut args = vec![
            "--config".into(),
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/local-stack.toml").into(),
            "--brokers".into(),
            brokers(),
            "--mongo-uri".into(),
            mongo_uri(),
            "--topic".into(),
            self.topic.clone(),
            "--database".into(),
            self.database.clone(),
            "--set".into(),
            format!("kafka.dlq_topic={}", self.dlq),
            "--set".into(),
            format!("kafka.sessions_topic={}", self.sessions),
            "--set".into(),
            format!("kafka.sessions_dlq_topic={}", self.sessions_dlq),
            "--set".into(),
            "kafka.partitions=4".into(),
            "--set".into(),
            "service.flush_interval_ms=200".into(),
            // Snapshots go to <dir>/<database>: per test, out of the source tree.
            "--set".into(),
            format!("snapshot.dir={}", std::env::temp_dir().join("martstream-test-snapshots").display()),
        ];
        args.extend(self.extra.iter().cloned());
        args
    }

    pub fn command(&self, subcommand: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_martstream"));
        cmd.args(self.args()).args(subcommand).env("RUST_LOG", "warn").stdin(Stdio::null());
        cmd
    }

    pub fn martstream(&self, subcommand: &[&str]) -> Output {
        let out = self.command(subcommand).output().expect("running martstream");
        assert!(
            out.status.success(),
            "martstream {subcommand:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Spawns `martstream run --clock event`, logging at info to `<tmp>/<database>.log`.
    pub fn spawn_run(&self) -> (Service, PathBuf) {
        let log = std::env::temp_dir().join(format!("{}.log", self.database));
        let child = self
            .command(&["run", "--clock", "event"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        (Service(child), log)
    }

    pub fn create_topics(&self) {
        self.martstream(&["topics", "create"]);
    }

    pub async fn produce(&self, messages: &[loadtest::Message]) {
        produce(&self.topic, messages).await
    }

    pub async fn collection(&self, name: &str) -> Vec<Document> {
        read_collection(&self.database, name).await
    }
}

pub async fn produce(topic: &str, messages: &[loadtest::Message]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("linger.ms", "10")
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    // Batches in flight at once; each send is acknowledged before the test goes on.
    for chunk in messages.chunks(2000) {
        let sends = chunk.iter().map(|m| {
            producer.send(
                FutureRecord::to(topic).key(&m.key).payload(&m.payload).timestamp(m.timestamp.timestamp_millis()),
                Duration::from_secs(30),
            )
        });
        for result in futures::future::join_all(sends).await {
            result.map_err(|(e, _)| e).expect("produce");
        }
    }
}

pub async fn mongo() -> mongodb::Client {
    mongodb::Client::with_uri_str(mongo_uri()).await.expect("mongodb client")
}

pub async fn read_collection(database: &str, collection: &str) -> Vec<Document> {
    use futures::TryStreamExt;
    mongo()
        .await
        .database(database)
        .collection::<Document>(collection)
        .find(Document::new())
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap()
}

/// A dead-lettered message: its headers and unchanged key and payload.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub headers: BTreeMap<String, String>,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

/// Reads `topic` from the beginning: waits up to 30 s for `expected` messages, then 1 s
/// more to catch any beyond them.
pub fn read_topic(topic: &str, expected: usize) -> Vec<DeadLetter> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", fresh_name("reader"))
        .set("enable.auto.commit", "false")
        .set("receive.message.max.bytes", "2147483647")
        .create()
        .unwrap();
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in metadata.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut deadline = Instant::now() + Duration::from_secs(30);
    let mut out = Vec::new();
    let mut grace = false;
    while Instant::now() < deadline {
        if out.len() >= expected && !grace {
            grace = true;
            deadline = Instant::now() + Duration::from_secs(1);
        }
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_owned(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned()))
                        .collect()
                })
                .unwrap_or_default();
            out.push(DeadLetter {
                headers,
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().unwrap_or_default().to_vec(),
            });
        }
    }
    out
}

/// Polls `check` every 200 ms until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A port free now, for a server a test starts. Taken below the kernel's ephemeral range
/// (32768 and up): a port `bind(0)` hands out is ephemeral, and any outgoing connection of
/// a test running beside may take it as its local port before the server binds it (seen in
/// CI: "cannot listen on 127.0.0.1:41145: Address already in use"). Each test process
/// starts at its own offset, so parallel processes rarely try the same ports.
pub fn free_port() -> u16 {
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7_919);
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + start.wrapping_add(n.wrapping_mul(101)) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {LOW}..{}", LOW + SPAN);
}

pub fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where scripts/stack installed the servers: `MARTSTREAM_STACK_DIR`, as the script reads
/// it, or `.stack` in the checkout.
pub fn stack_dir() -> PathBuf {
    std::env::var_os("MARTSTREAM_STACK_DIR").map_or_else(|| manifest_dir().join(".stack"), PathBuf::from)
}

/// A spawned `martstream run`, killed when dropped.
pub struct Service(pub Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A tiny HTTP/1.1 GET over a TCP socket (keeps the test free of an HTTP client crate).
pub async fn get(url: &str) -> Option<(u16, String)> {
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_once('/').map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    request(host, "GET", &path, None).await
}

/// One HTTP/1.1 request to `host` (`host:port`) with an optional `Authorization` value:
/// (status, body).
pub async fn request(host: &str, method: &str, path: &str, authorization: Option<&str>) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(host).await.ok()?;
    let auth = authorization.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
    let head =
        format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Some((code, body))
}

/// The value of a metric line `name{labels} value` in Prometheus text.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}
