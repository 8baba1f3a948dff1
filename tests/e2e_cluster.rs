//! Scale-out, end to end (issue 16): instances share an 8-partition topic through leases
//! in MongoDB while events arrive. Two start, a third joins, one is killed -9 mid-load, one
//! stops with SIGTERM and the killed one comes back. In the end each partition is held by
//! exactly one live instance, and every view and fact equals the recompute of every event
//! (no doubles, no gaps).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::{recompute, Scenario};
use loadtest::{GenConfig, Generator};
use mongodb::bson::{doc, Document};

/// One `martstream run` of the cluster, killed when dropped.
struct Instance {
    id: &'static str,
    child: Child,
    log: PathBuf,
    port: u16,
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Instance {
    fn start(s: &Scenario, id: &'static str, as_of: DateTime<Utc>) -> Instance {
        Instance::start_with(s, id, as_of, &[("MARTSTREAM_SNAPSHOT__INTERVAL_MS", "1000")])
    }

    /// Its HTTP API on a port of its own (`port`), besides `env`.
    fn start_with(s: &Scenario, id: &'static str, as_of: DateTime<Utc>, env: &[(&str, &str)]) -> Instance {
        let port = common::free_port();
        let log = std::env::temp_dir().join(format!("{}-{id}.log", s.database));
        let stderr = OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let mut cmd = s.command(&["run", "--as-of", &as_of.to_rfc3339()]);
        // (A `--set` after the subcommand would replace those before it.)
        cmd.env("MARTSTREAM_CLUSTER__INSTANCE_ID", id)
            .env("RUST_LOG", "info,librdkafka=warn")
            .stdout(Stdio::null())
            .stderr(stderr)
            .env("MARTSTREAM_SERVICE__HTTP_LISTEN", format!("127.0.0.1:{port}"))
            .envs(env.iter().copied());
        let child = cmd.spawn().unwrap();
        Instance { id, child, log, port }
    }

    fn kill(mut self, signal: &str) -> Child {
        let ok = Command::new("kill").args([signal, &self.child.id().to_string()]).status().unwrap().success();
        assert!(ok, "kill {signal}");
        std::mem::replace(&mut self.child, Command::new("true").spawn().unwrap())
    }

    /// SIGTERM and wait: the last flush and snapshots, the leases handed back, exit 0.
    async fn stop(self) {
        let log = self.log.clone();
        let mut child = self.kill("-TERM");
        let status = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
        assert!(status.success(), "exit after SIGTERM: {status}\n{}", tail(&log));
    }
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    format!("--- {}\n{}", log.display(), lines[lines.len().saturating_sub(25)..].join("\n"))
}

fn tails(instances: &[&Instance]) -> String {
    instances.iter().map(|i| tail(&i.log)).collect::<Vec<_>>().join("\n")
}

/// The live holder of each lease of `topic`.
async fn holders(db: &mongodb::Database, topic: &str) -> BTreeMap<i32, String> {
    use futures::TryStreamExt;
    let leases: Vec<Document> = db
        .collection::<Document>("cluster_leases")
        .find(doc! { "owner": { "$ne": null }, "$expr": { "$gt": ["$expires_at", "$$NOW"] } })
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    leases
        .iter()
        .filter_map(|d| {
            let (t, p) = d.get_str("_id").ok()?.rsplit_once('/')?;
            (t == topic).then(|| (p.parse().unwrap(), d.get_str("owner").unwrap().to_owned()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn three_instances_share_eight_partitions_through_a_kill_and_end_exact() {
    let began = Instant::now();
    let phase = |what: &str| eprintln!("[{:6.1} s] {what}", began.elapsed().as_secs_f64());
    let mut s = Scenario::new("e2e_cluster");
    s.extra = ["kafka.partitions=8", "kafka.sessions_topic=", "cluster.enabled=true", "cluster.lease_ttl_ms=3000"]
        .into_iter()
        .flat_map(|kv| ["--set".to_owned(), kv.to_owned()])
        .collect();
    s.create_topics();
    let config = GenConfig {
        seed: 16,
        events: 40_000,
        customers: 3_000,
        products: 150,
        malformed_rate: 0.01,
        duplicate_rate: 0.03,
        conflict_rate: 0.005,
        ..GenConfig::default()
    };
    let messages: Vec<_> = Generator::new(config).collect();
    let as_of = recompute::event_clock(&recompute::applied(&messages));
    let batches: Vec<&[loadtest::Message]> = messages.chunks(messages.len() / 4 + 1).collect();
    let db = common::mongo().await.database(&s.database);

    let a = Instance::start(&s, "a", as_of);
    // b's first life takes no snapshot on its own (only when it hands a partition back):
    // whoever takes its partitions after the kill replays them from the beginning, to the
    // very chunk ends b published.
    let b = Instance::start_with(&s, "b", as_of, &[("MARTSTREAM_SNAPSHOT__INTERVAL_MS", "3600000")]);
    s.produce(batches[0]).await;
    phase("a and b started, batch 1 produced");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let c = Instance::start(&s, "c", as_of);
    tokio::time::sleep(Duration::from_secs(3)).await;
    s.produce(&batches[1][..batches[1].len() / 2]).await;
    // Mid-load: b dies without a word; its partitions wait for its leases to expire.
    tokio::time::sleep(Duration::from_millis(600)).await;
    drop(b.kill("-KILL"));
    phase("c joined; b killed -9 mid-batch 2");
    s.produce(&batches[1][batches[1].len() / 2..]).await;
    s.produce(batches[2]).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    a.stop().await;
    phase("batch 3 produced; a stopped (SIGTERM)");
    let b = Instance::start(&s, "b", as_of);
    s.produce(batches[3]).await;
    phase("b back; batch 4 produced");
    let live = [&b, &c];

    // Every partition held by exactly one live instance (a lease has one owner by
    // construction; the live ones hold all eight, a and the killed b's first life none).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let h = holders(&db, &s.topic).await;
        let owners: BTreeSet<&str> = h.values().map(String::as_str).collect();
        if h.len() == 8 && owners.iter().all(|o| live.iter().any(|i| i.id == *o)) && owners.len() == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "partitions not shared by the live instances: {h:?}\n{}", tails(&live));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    phase("8 partitions held by b and c");

    let check = || recompute::check_every_view(&db, &messages, &[], as_of, true);
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut last = Err(String::new());
    while Instant::now() < deadline {
        last = check().await;
        if last.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    if let Err(e) = last {
        panic!("the views never equalled the recompute: {e}\n{}", tails(&live));
    }
    phase("every view and fact equals the recompute");

    // The query API of either instance: a customer from the part holding it or from
    // MongoDB, segment counts over every customer, products and trends from the shared
    // views; both instances answer alike, and as MongoDB's documents say.
    let rfm = recompute::read_all(&db, "customer_rfm_analysis").await;
    let ask = |port: u16, path: String| async move {
        let (code, body) = common::get(&format!("http://127.0.0.1:{port}{path}")).await.expect("an answer");
        assert_eq!(code, 200, "{path}: {body}");
        serde_json::from_str::<serde_json::Value>(&body).unwrap()
    };
    for d in rfm.iter().step_by(rfm.len() / 20 + 1) {
        let id = d.get_str("customer_id").unwrap();
        let want = martstream::query::to_json(d.clone());
        for i in live {
            assert_eq!(ask(i.port, format!("/v1/customers/{id}")).await, want, "customer {id} from {}", i.id);
        }
    }
    let mut segments: BTreeMap<String, u64> = BTreeMap::new();
    for d in &rfm {
        *segments.entry(d.get_str("rfm_segment").unwrap().to_owned()).or_default() += 1;
    }
    for path in ["/v1/segments", "/v1/products/top?n=10", "/v1/trends/monthly"] {
        // Each instance's shared views follow the chunks it has read: alike within a flush.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (from_b, from_c) = (ask(b.port, path.to_owned()).await, ask(c.port, path.to_owned()).await);
            if from_b == from_c {
                break;
            }
            assert!(Instant::now() < deadline, "{path}: {from_b} vs {from_c}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let counted = ask(c.port, "/v1/segments".to_owned()).await;
    for (segment, n) in &segments {
        assert_eq!(counted["segments"][segment], *n, "{segment}: {counted}");
    }
    phase("queries answer alike on both instances");
    let (b, c) = (b, c);
    b.stop().await;
    c.stop().await;
    if let Err(e) = check().await {
        panic!("after the last stops: {e}");
    }
    assert!(holders(&db, &s.topic).await.is_empty(), "a clean stop hands every lease back");
    db.drop().await.unwrap();
}
