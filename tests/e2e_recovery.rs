//! Recovery, end to end (SPEC §7: no event lost, none counted twice):
//! - kill -9 the service at random moments while it works through a 200k-event backlog,
//!   restarting it each time from its snapshots; then corrupt the newest snapshot and
//!   restart once more. Every view and fact must equal the recompute exactly.
//! - MongoDB and then the broker restarted under a running service (its own private servers,
//!   so the shared stack used by the other tests stays up): /readyz and the metrics say so,
//!   the service stays up, and the views end exact.

mod common;

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::{eventually, free_port, manifest_dir, recompute, Scenario};
use loadtest::{GenConfig, Generator};

/// A running `martstream run`, killed when dropped.
struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Service {
    fn start(s: &Scenario, as_of: DateTime<Utc>, log: &Path) -> Service {
        let stderr = OpenOptions::new().create(true).append(true).open(log).unwrap();
        let child = s
            .command(&["run", "--as-of", &as_of.to_rfc3339()])
            .env("RUST_LOG", "info,librdkafka=warn")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        Service(child)
    }

    fn signal(&self, signal: &str) {
        let ok = Command::new("kill").args([signal, &self.0.id().to_string()]).status().unwrap().success();
        assert!(ok, "kill {signal}");
    }

    /// SIGTERM and wait: the last flush and the last snapshot, then exit 0.
    async fn stop(mut self, log: &Path) {
        self.signal("-TERM");
        let mut child = std::mem::replace(&mut self.0, Command::new("true").spawn().unwrap());
        let status = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
        assert!(status.success(), "exit after SIGTERM: {status}\n{}", tail(log));
    }
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// A tiny HTTP GET: (status, body).
async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()))
}

/// Values of a metric's series (all label sets).
fn series(text: &str, name: &str) -> Vec<f64> {
    text.lines()
        .filter(|l| l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b' ' | b'{')))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect()
}

/// Whether every one of `partitions` input partitions reports zero lag.
async fn caught_up(port: u16, partitions: usize) -> bool {
    let Some((200, text)) = get(port, "/metrics").await else { return false };
    let lag = series(&text, "martstream_consumer_lag_messages");
    lag.len() == partitions && lag.iter().all(|&l| l == 0.0)
}

fn scenario(prefix: &str, port: u16, snapshots: &Path) -> Scenario {
    let mut s = Scenario::new(prefix);
    s.extra = [
        format!("service.http_listen=127.0.0.1:{port}"),
        format!("snapshot.dir={}", snapshots.display()),
        "snapshot.interval_ms=400".into(),
    ]
    .into_iter()
    .flat_map(|kv| ["--set".to_owned(), kv])
    .collect();
    s
}

/// A small deterministic generator of kill delays (no extra crate for one test).
struct Lcg(u64);

impl Lcg {
    fn millis(&mut self, from: u64, to: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        from + (self.0 >> 33) % (to - from)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_at_random_moments_then_a_corrupt_snapshot_leave_every_view_exact() {
    let snapshots = tempfile::tempdir().unwrap();
    let port = free_port();
    let s = scenario("e2e_crash", port, snapshots.path());
    s.create_topics();
    let config = GenConfig {
        seed: 99,
        events: 200_000,
        customers: 20_000,
        products: 400,
        malformed_rate: 0.01,
        duplicate_rate: 0.03,
        conflict_rate: 0.005,
        ..GenConfig::default()
    };
    let mut messages: Vec<_> = Generator::new(config.clone()).collect();
    let mut sessions = loadtest::sessions(&config, 20_000);
    let (later, tail_sessions) = (messages.split_off(195_000), sessions.split_off(19_000));
    s.produce(&messages).await;
    common::produce(&s.sessions, &sessions).await;
    // One as_of for every life of the service, so every document is comparable.
    let all: Vec<_> = messages.iter().chain(&later).cloned().collect();
    let as_of = recompute::event_clock(&recompute::applied(&all));

    let log = std::env::temp_dir().join(format!("{}.log", s.database));
    let seed = std::process::id() as u64;
    let mut delays = Lcg(seed);
    let mut kills = Vec::new();
    for _ in 0..10 {
        let service = Service::start(&s, as_of, &log);
        let delay = delays.millis(700, 2500);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        let consumed = match get(port, "/metrics").await {
            Some((_, text)) => series(&text, "martstream_events_consumed_total").first().copied().unwrap_or(0.0),
            None => 0.0,
        };
        service.signal("-KILL");
        drop(service);
        kills.push((delay, consumed as u64));
    }
    let restores = std::fs::read_to_string(&log).unwrap_or_default().matches("state restored from snapshot").count();
    eprintln!("seed {seed}: kill -9 after (ms, messages consumed in that life): {kills:?}; {restores} restores");
    assert!(restores >= 5, "restarts resumed from snapshots only {restores} times:\n{}", tail(&log));

    // A last life to the end of the backlog, then a clean stop.
    let service = Service::start(&s, as_of, &log);
    assert!(eventually(Duration::from_secs(180), || caught_up(port, 8)).await, "never caught up:\n{}", tail(&log));
    service.stop(&log).await;
    let db = common::mongo().await.database(&s.database);
    let check = |m: Vec<loadtest::Message>, ss: Vec<loadtest::Message>| {
        let db = db.clone();
        async move { recompute::check_every_view(&db, &m, &ss, as_of, true).await }
    };
    if let Err(e) = check(messages.clone(), sessions.clone()).await {
        panic!("after {} kill -9 (seed {seed}): {e}\n{}", kills.len(), tail(&log));
    }

    // The newest snapshot corrupted: the service says so, falls back to the one before and
    // replays from there.
    let newest = newest_snapshot(&snapshots.path().join(&s.database));
    let mut bytes = std::fs::read(&newest).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&newest, bytes).unwrap();
    s.produce(&later).await;
    common::produce(&s.sessions, &tail_sessions).await;
    let service = Service::start(&s, as_of, &log);
    assert!(eventually(Duration::from_secs(120), || caught_up(port, 8)).await, "never caught up:\n{}", tail(&log));
    service.stop(&log).await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("checksum mismatch"), "the corrupt snapshot is reported:\n{}", tail(&log));
    messages.extend(later);
    sessions.extend(tail_sessions);
    if let Err(e) = check(messages, sessions).await {
        panic!("after the fallback: {e}\n{}", tail(&log));
    }
}

fn newest_snapshot(dir: &Path) -> PathBuf {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "msnap"))
        .collect();
    files.sort();
    files.pop().expect("a snapshot was written")
}

/// A server process of the test's own, restartable.
struct Server {
    program: PathBuf,
    args: Vec<String>,
    port: u16,
    child: Option<Child>,
}

impl Server {
    fn start(&mut self) {
        let child = Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e} (run scripts/stack up first)", self.program.display()));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "{} did not open port {}", self.program.display(), self.port);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(&mut self, signal: &str) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args([signal, &child.id().to_string()]).status();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn mongodb_and_broker_restarts_are_ridden_out() {
    let data = tempfile::tempdir().unwrap();
    let stack = manifest_dir().join(".stack/bin");
    let (kafka_port, mongo_port, port) = (free_port(), free_port(), free_port());
    std::fs::create_dir_all(data.path().join("kafka")).unwrap();
    std::fs::create_dir_all(data.path().join("mongo")).unwrap();
    let mut kafka = Server {
        program: stack.join("noida/noida_db/noida-db"),
        args: ["start", "--data-dir", &data.path().join("kafka").display().to_string(), "--host", "127.0.0.1"]
            .into_iter()
            .map(String::from)
            .chain(["--only".into(), "kafka".into(), "--kafka-port".into(), kafka_port.to_string()])
            .collect(),
        port: kafka_port,
        child: None,
    };
    let mut mongo = Server {
        program: stack.join("mongodb/fiftyone/db/bin/mongod"),
        args: vec![
            "--dbpath".into(),
            data.path().join("mongo").display().to_string(),
            "--bind_ip".into(),
            "127.0.0.1".into(),
            "--port".into(),
            mongo_port.to_string(),
            "--wiredTigerCacheSizeGB".into(),
            "0.25".into(),
        ],
        port: mongo_port,
        child: None,
    };
    kafka.start();
    mongo.start();
    let brokers = format!("127.0.0.1:{kafka_port}");
    let mongo_uri = format!("mongodb://127.0.0.1:{mongo_port}/?directConnection=true");
    std::env::set_var("MARTSTREAM_KAFKA__BROKERS", &brokers);
    std::env::set_var("MARTSTREAM_MONGO__URI", &mongo_uri);
    let mut s = scenario("e2e_outage", port, &data.path().join("snapshots"));
    s.extra.extend(["--set".into(), "service.retry_max_ms=1000".into()]);
    s.create_topics();

    let config = GenConfig { seed: 5, events: 30_000, customers: 3_000, ..GenConfig::default() };
    let messages: Vec<_> = Generator::new(config.clone()).collect();
    let sessions = loadtest::sessions(&config, 3_000);
    let as_of = recompute::event_clock(&recompute::applied(&messages));
    let log = data.path().join("service.log");
    let (first, rest) = messages.split_at(10_000);
    let (second, third) = rest.split_at(10_000);
    s.produce(first).await;
    common::produce(&s.sessions, &sessions).await;
    let service = Service::start(&s, as_of, &log);
    assert!(eventually(Duration::from_secs(60), || caught_up(port, 8)).await, "{}", tail(&log));
    let ready = || async { get(port, "/readyz").await.map(|r| r.0) == Some(200) };
    assert!(eventually(Duration::from_secs(10), ready).await);

    // MongoDB goes away: the service stays up, keeps consuming, says it is not ready.
    mongo.stop("-TERM");
    s.produce(second).await;
    let not_ready = || async { get(port, "/readyz").await.map(|r| r.0) == Some(503) };
    assert!(eventually(Duration::from_secs(20), not_ready).await, "/readyz stays 200:\n{}", tail(&log));
    let (_, text) = get(port, "/metrics").await.unwrap();
    assert_eq!(series(&text, "martstream_mongo_up"), vec![0.0], "{text}");
    assert!(eventually(Duration::from_secs(60), || caught_up(port, 8)).await, "consumption stalled during the outage");
    mongo.start();
    assert!(eventually(Duration::from_secs(30), ready).await, "/readyz never recovered:\n{}", tail(&log));

    // The broker restarts: the consumer reconnects and goes on.
    kafka.stop("-INT");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(get(port, "/healthz").await.is_some_and(|r| r.0 == 200), "the service stays up without a broker");
    kafka.start();
    s.produce(third).await;
    // The lag gauges come from statistics that may predate the restart: count messages too.
    let total = (messages.len() + sessions.len()) as f64;
    let consumed_all = || async {
        let Some((_, text)) = get(port, "/metrics").await else { return false };
        series(&text, "martstream_events_consumed_total") == vec![total] && caught_up(port, 8).await
    };
    assert!(
        eventually(Duration::from_secs(90), consumed_all).await,
        "never caught up after the broker restart:\n{}",
        tail(&log)
    );
    service.stop(&log).await;
    let db = mongodb::Client::with_uri_str(&mongo_uri).await.unwrap().database(&s.database);
    if let Err(e) = recompute::check_every_view(&db, &messages, &sessions, as_of, true).await {
        panic!("after the restarts: {e}\n{}", tail(&log));
    }
}
