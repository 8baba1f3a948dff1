//! Recovery, end to end (SPEC §7: no event lost, none counted twice):
//! - kill -9 the service every 3–6 s while it works through a 500k-event backlog,
//!   restarting it each time from its snapshots: the newest snapshot's positions grow at
//!   every restart (aligned checkpoints make progress while the sink is behind); then
//!   corrupt the newest snapshot and restart once more. Every view and fact must equal the
//!   recompute exactly.
//! - `run` from no snapshot over a database holding an older run's views (and documents no
//!   run of this topic wrote): the views converge, with no extra documents.
//! - SIGTERM during a catch-up while MongoDB is slowed (a server-side fail point): exit 0
//!   within `service.shutdown_timeout_ms`, then a restart that ends exact.
//! - MongoDB and then the broker restarted under a running service (its own private servers,
//!   so the shared stack used by the other tests stays up): /readyz and the metrics say so,
//!   the service stays up, and the views end exact.

mod common;

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::{eventually, free_port, recompute, stack_dir, Scenario};
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

/// Whether every one of `partitions` input partitions reports zero lag in `metrics`.
fn lag_zero(metrics: &str, partitions: usize) -> bool {
    let lag = series(metrics, "martstream_consumer_lag_messages");
    lag.len() == partitions && lag.iter().all(|&l| l == 0.0)
}

/// Whether the service read every one of `partitions` input partitions to its end.
async fn read_to_end(port: u16, partitions: usize) -> bool {
    matches!(get(port, "/metrics").await, Some((200, text)) if lag_zero(&text, partitions))
}

/// [`read_to_end`], and MongoDB acknowledged every flush (a SIGTERM then exits at once,
/// whatever its timeout).
async fn caught_up(port: u16, partitions: usize) -> bool {
    let Some((200, text)) = get(port, "/metrics").await else { return false };
    lag_zero(&text, partitions)
        && series(&text, "martstream_sink_pending_flushes") == vec![0.0]
        && series(&text, "martstream_facts_pending") == vec![0.0]
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

/// The sum of the next offsets the newest readable snapshot records (0: none yet).
fn snapshot_progress(dir: &Path) -> i64 {
    let store = martstream::snapshot::SnapshotStore::new(dir, 100);
    match store.load_newest(|_| Ok(())) {
        Ok((Some((_, snapshot)), _)) => snapshot.meta.positions.iter().map(|(_, _, o)| o).sum(),
        _ => 0,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_every_few_seconds_makes_progress_and_a_corrupt_snapshot_leaves_every_view_exact() {
    let snapshots = tempfile::tempdir().unwrap();
    let port = free_port();
    let began = Instant::now();
    let phase = |what: &str| eprintln!("[{:6.1} s] {what}", began.elapsed().as_secs_f64());
    let mut s = scenario("e2e_crash", port, snapshots.path());
    s.create_topics();
    let config = GenConfig {
        seed: 99,
        events: 505_000,
        customers: 20_000,
        products: 400,
        malformed_rate: 0.01,
        duplicate_rate: 0.03,
        conflict_rate: 0.005,
        ..GenConfig::default()
    };
    let mut messages: Vec<_> = Generator::new(config.clone()).collect();
    let mut sessions = loadtest::sessions(&config, 20_000);
    let (later, tail_sessions) = (messages.split_off(500_000), sessions.split_off(19_000));
    s.produce(&messages).await;
    common::produce(&s.sessions, &sessions).await;
    phase("produced");
    // One as_of for every life of the service, so every document is comparable.
    let all: Vec<_> = messages.iter().chain(&later).cloned().collect();
    let as_of = recompute::event_clock(&recompute::applied(&all));

    let log = std::env::temp_dir().join(format!("{}.log", s.database));
    let dir = snapshots.path().join(&s.database);
    let seed = std::process::id() as u64;
    let mut delays = Lcg(seed);
    let mut lives = Vec::new();
    let mut progress = 0;
    // Small flushes while crashing: a life of 3 s spends ~2 s before its first message (the
    // test broker answers the first fetch with the whole rest of the topic), so the flush
    // its first capture follows must be acknowledged within about a second.
    s.extra.extend(["--set".into(), "service.max_pending_facts=2000".into()]);
    // The test broker answers a consumer's first fetch with the whole rest of the topic and
    // keeps sending it after a kill, so a life may read nothing for seconds. Every life must
    // leave the snapshot where it was or further; every life that read for at least 1.5 s
    // must move it forward (a capture, its flush acknowledged, the write).
    let mut grew = 0;
    for life in 0..8 {
        let service = Service::start(&s, as_of, &log);
        let delay = Duration::from_millis(delays.millis(3000, 6000));
        let born = Instant::now();
        let mut reading_since = None;
        while born.elapsed() < delay {
            if reading_since.is_none() && consumed(port).await > 0.0 {
                reading_since = Some(Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        service.signal("-KILL");
        drop(service);
        let read_for = reading_since.map_or(Duration::ZERO, |t| t.elapsed());
        let now = snapshot_progress(&dir);
        lives.push((delay.as_millis(), read_for.as_millis(), now));
        eprintln!("seed {seed}: life {life} killed after {delay:?}, reading for {read_for:?}; newest snapshot at {now} messages");
        assert!(now >= progress, "life {life}: the newest snapshot went back from {progress} to {now}");
        if read_for >= Duration::from_millis(1500) {
            assert!(
                now > progress,
                "life {life} read for {read_for:?} (killed after {delay:?}) and left no newer snapshot: {progress} -> {now} messages\n{}",
                tail(&log)
            );
        }
        grew += usize::from(now > progress);
        progress = now;
    }
    eprintln!("seed {seed}: (kill after ms, read for ms, snapshot position) per life: {lives:?}");
    assert!(grew >= 5, "the snapshot moved forward in only {grew} of 8 lives: {lives:?}\n{}", tail(&log));
    s.extra.truncate(s.extra.len() - 2);
    phase("8 lives killed");

    // A last life to the end of the backlog, then a clean stop.
    let service = Service::start(&s, as_of, &log);
    assert!(eventually(Duration::from_secs(400), || caught_up(port, 8)).await, "never caught up:\n{}", tail(&log));
    assert!(eventually(Duration::from_secs(60), || ready(port)).await, "never ready:\n{}", tail(&log));
    service.stop(&log).await;
    phase("caught up and stopped");
    let db = common::mongo().await.database(&s.database);
    let check = |m: Vec<loadtest::Message>, ss: Vec<loadtest::Message>| {
        let db = db.clone();
        async move { recompute::check_every_view(&db, &m, &ss, as_of, true).await }
    };
    if let Err(e) = check(messages.clone(), sessions.clone()).await {
        panic!("after {} kill -9 (seed {seed}): {e}\n{}", lives.len(), tail(&log));
    }
    phase("checked");

    // The newest snapshot corrupted: the service says so, falls back to the one before and
    // replays from there.
    let newest = newest_snapshot(&dir);
    let mut bytes = std::fs::read(&newest).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&newest, bytes).unwrap();
    s.produce(&later).await;
    common::produce(&s.sessions, &tail_sessions).await;
    let service = Service::start(&s, as_of, &log);
    assert!(eventually(Duration::from_secs(120), || caught_up(port, 8)).await, "never caught up:\n{}", tail(&log));
    assert!(eventually(Duration::from_secs(60), || ready(port)).await, "never ready:\n{}", tail(&log));
    service.stop(&log).await;
    phase("fallback caught up and stopped");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("checksum mismatch"), "the corrupt snapshot is reported:\n{}", tail(&log));
    messages.extend(later);
    sessions.extend(tail_sessions);
    if let Err(e) = check(messages, sessions).await {
        panic!("after the fallback: {e}\n{}", tail(&log));
    }
}

async fn consumed(port: u16) -> f64 {
    let Some((_, text)) = get(port, "/metrics").await else { return 0.0 };
    series(&text, "martstream_events_consumed_total").first().copied().unwrap_or(0.0)
}

async fn ready(port: u16) -> bool {
    get(port, "/readyz").await.map(|r| r.0) == Some(200)
}

#[tokio::test(flavor = "multi_thread")]
async fn run_without_a_snapshot_over_an_older_runs_views_removes_what_the_state_does_not_hold() {
    let snapshots = tempfile::tempdir().unwrap();
    let port = free_port();
    let s = scenario("e2e_rebuild", port, snapshots.path());
    s.create_topics();
    let config = GenConfig { seed: 31, events: 40_000, customers: 4_000, products: 300, ..GenConfig::default() };
    let messages: Vec<_> = Generator::new(config.clone()).collect();
    let sessions = loadtest::sessions(&config, 2_000);
    let (first, second) = messages.split_at(20_000);
    let as_of = recompute::event_clock(&recompute::applied(&messages));

    // An older run: the first half replayed as of its own newest event (other windows and
    // other analysis dates), plus documents no run of this topic wrote.
    s.produce(first).await;
    common::produce(&s.sessions, &sessions).await;
    s.martstream(&["replay"]);
    let db = common::mongo().await.database(&s.database);
    let stamp = mongodb::bson::DateTime::now();
    use mongodb::bson::{doc, Document};
    for (collection, id) in [
        ("customer_rfm_analysis", "ghost-customer"),
        ("product_performance", "ghost-product"),
        ("sales_trends", "daily:2001-01-01"),
    ] {
        let ghost = doc! { "_id": id, "customer_id": id, "product_id": id, "updated_at": stamp };
        db.collection::<Document>(collection).insert_one(ghost).await.unwrap();
    }
    let mut before = 0;
    for c in ["customer_rfm_analysis", "product_performance", "sales_trends"] {
        before += s.collection(c).await.len();
    }

    // `run` with an empty snapshot directory, to the end of the whole topic.
    s.produce(second).await;
    let log = std::env::temp_dir().join(format!("{}.log", s.database));
    let service = Service::start(&s, as_of, &log);
    assert!(eventually(Duration::from_secs(120), || caught_up(port, 8)).await, "never caught up:\n{}", tail(&log));
    assert!(eventually(Duration::from_secs(60), || ready(port)).await, "never ready (converged):\n{}", tail(&log));
    let (_, text) = get(port, "/metrics").await.unwrap();
    let removed: f64 = series(&text, "martstream_stale_documents_removed_total").iter().sum();
    assert_eq!(series(&text, "martstream_views_converged"), vec![1.0], "{text}");
    service.stop(&log).await;
    assert!(removed >= 3.0, "removed {removed} stale documents of {before}:\n{}", tail(&log));
    if let Err(e) = recompute::check_every_view(&db, &messages, &sessions, as_of, true).await {
        panic!("after the rebuild: {e}\n{}", tail(&log));
    }
    eprintln!("{before} view documents from the older run; {removed} removed as stale");
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

/// A private standalone mongod of the test's own (from the stack's binaries) on `port`.
fn private_mongod(data: &Path, port: u16, extra: &[&str]) -> Server {
    std::fs::create_dir_all(data).unwrap();
    let mut args: Vec<String> = vec![
        "--dbpath".into(),
        data.display().to_string(),
        "--bind_ip".into(),
        "127.0.0.1".into(),
        "--port".into(),
        port.to_string(),
        "--wiredTigerCacheSizeGB".into(),
        "0.25".into(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    Server { program: stack_dir().join("bin/mongodb/fiftyone/db/bin/mongod"), args, port, child: None }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_while_mongodb_is_slow_exits_0_within_the_timeout_and_loses_nothing() {
    use mongodb::bson::doc;
    let data = tempfile::tempdir().unwrap();
    let (mongo_port, port) = (free_port(), free_port());
    // A fail point slows every write of the service (by its appName) server-side.
    let mut mongo = private_mongod(&data.path().join("mongo"), mongo_port, &["--setParameter", "enableTestCommands=1"]);
    mongo.start();
    let mongo_uri = format!("mongodb://127.0.0.1:{mongo_port}/?directConnection=true");
    std::env::set_var("MARTSTREAM_TEST_MONGO_URI", &mongo_uri);
    let timeout_ms = 4000;
    let mut s = scenario("e2e_sigterm", port, &data.path().join("snapshots"));
    s.extra.extend(["--set".into(), format!("service.shutdown_timeout_ms={timeout_ms}")]);
    s.extra.extend(["--set".into(), "service.max_pending_facts=5000".into()]);
    s.create_topics();
    let config = GenConfig { seed: 17, events: 120_000, customers: 8_000, products: 300, ..GenConfig::default() };
    let messages: Vec<_> = Generator::new(config.clone()).collect();
    let sessions = loadtest::sessions(&config, 4_000);
    let as_of = recompute::event_clock(&recompute::applied(&messages));
    s.produce(&messages).await;
    common::produce(&s.sessions, &sessions).await;

    let log = data.path().join("service.log");
    let service = Service::start(&s, as_of, &log);
    assert!(eventually(Duration::from_secs(60), || async { consumed(port).await > 10_000.0 }).await, "{}", tail(&log));
    let admin = mongodb::Client::with_uri_str(&mongo_uri).await.unwrap().database("admin");
    let slow = doc! {
        "configureFailPoint": "failCommand",
        "mode": "alwaysOn",
        "data": { "failCommands": ["insert", "update", "delete"], "blockConnection": true, "blockTimeMS": 3000, "appName": "martstream" },
    };
    admin.run_command(slow).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(consumed(port).await < (messages.len() + sessions.len()) as f64, "caught up before the signal");
    let signalled = Instant::now();
    service.stop(&log).await;
    let took = signalled.elapsed();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        took <= Duration::from_millis(timeout_ms + 2000),
        "exit after SIGTERM took {took:?} (timeout {timeout_ms} ms):\n{}",
        tail(&log)
    );
    assert!(text.contains("shutdown timeout"), "MongoDB was slow enough to hit the timeout:\n{}", tail(&log));
    eprintln!("SIGTERM to exit 0: {took:?}");

    // MongoDB at full speed again: a restart resumes from the snapshot and ends exact.
    admin.run_command(doc! { "configureFailPoint": "failCommand", "mode": "off" }).await.unwrap();
    let service = Service::start(&s, as_of, &log);
    assert!(eventually(Duration::from_secs(180), || caught_up(port, 8)).await, "never caught up:\n{}", tail(&log));
    assert!(eventually(Duration::from_secs(60), || ready(port)).await, "never ready:\n{}", tail(&log));
    service.stop(&log).await;
    let db = mongodb::Client::with_uri_str(&mongo_uri).await.unwrap().database(&s.database);
    if let Err(e) = recompute::check_every_view(&db, &messages, &sessions, as_of, true).await {
        panic!("after the timed-out shutdown and a restart: {e}\n{}", tail(&log));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn mongodb_and_broker_restarts_are_ridden_out() {
    let data = tempfile::tempdir().unwrap();
    let stack = stack_dir().join("bin");
    let (kafka_port, mongo_port, port) = (free_port(), free_port(), free_port());
    std::fs::create_dir_all(data.path().join("kafka")).unwrap();
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
    let mut mongo = private_mongod(&data.path().join("mongo"), mongo_port, &[]);
    kafka.start();
    mongo.start();
    let brokers = format!("127.0.0.1:{kafka_port}");
    let mongo_uri = format!("mongodb://127.0.0.1:{mongo_port}/?directConnection=true");
    std::env::set_var("MARTSTREAM_KAFKA__BROKERS", &brokers);
    std::env::set_var("MARTSTREAM_TEST_MONGO_URI", &mongo_uri);
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
    assert!(
        eventually(Duration::from_secs(60), || read_to_end(port, 8)).await,
        "consumption stalled during the outage"
    );
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
