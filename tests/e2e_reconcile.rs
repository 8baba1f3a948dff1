//! The reconciliation against real PostgreSQL, Kafka and MongoDB: the load generator writes
//! the same transactions to Kafka and PostgreSQL with injected drift of every kind; the
//! report counts exactly what was injected; `--repair` makes every view and fact equal a
//! recompute from PostgreSQL (weeks and months older than the daily series included);
//! without drift it finds nothing; a PostgreSQL it cannot reach is a failed
//! run, recorded, while the service keeps running.

mod common;

use std::time::Duration;

use chrono::{DateTime, Utc};
use common::{eventually, free_port, get, metric, recompute, Scenario, Service};
use loadtest::postgres::{Drift, Injected, Writer};
use loadtest::{GenConfig, Generator, Message};
use serde_json::{json, Value};
use sqlx::Row;

/// `database` on the stack's PostgreSQL, as its owner (`scripts/stack env`'s migrate URL,
/// which creates, migrates and loads it) or as the reconciliation's read-only login.
fn pg_url(database: &str, owner: bool) -> String {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let (url, migrate) = (var("MARTSTREAM_POSTGRES__URL"), var("MARTSTREAM_POSTGRES__MIGRATE_URL"));
    let base = if owner { migrate.or(url) } else { url }
        .unwrap_or_else(|| "postgres://globalmart:globalmart123@127.0.0.1:55432/globalmart".into());
    let (server, _) = base.rsplit_once('/').expect("a database in the url");
    format!("{server}/{database}")
}

/// A fresh database on the stack's PostgreSQL: (the owner's URL, the reader's URL).
async fn fresh_pg(s: &Scenario) -> (String, String) {
    let name = s.database.to_lowercase();
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&pg_url("globalmart", true)).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.unwrap();
    (pg_url(&name, true), pg_url(&name, false))
}

/// Routes the messages: those for Kafka are returned, the rest written to PostgreSQL.
async fn split(messages: &[Message], drift: &Drift, url: &str) -> (Vec<Message>, Injected) {
    let mut pg = Writer::connect(url).await.unwrap();
    let mut injected = Injected::default();
    let mut kafka = Vec::new();
    for m in messages {
        let route = injected.route(drift, m);
        if let Some(row) = route.to_postgres {
            pg.add(row).await.unwrap();
        }
        if route.to_kafka {
            kafka.push(m.clone());
        }
    }
    pg.flush().await.unwrap();
    (kafka, injected)
}

/// Every transaction in PostgreSQL as an event (what the recompute reads).
async fn pg_events(url: &str) -> Vec<Value> {
    let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(url).await.unwrap();
    let rows = sqlx::query(
        r#"SELECT transaction_id, user_id, event_type, total_amount::text AS total,
                  (extract(epoch FROM "timestamp") * 1000000)::bigint AS us
           FROM transactions"#,
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    rows.iter()
        .map(|r| {
            let at = DateTime::<Utc>::from_timestamp_micros(r.get("us")).unwrap();
            json!({
                "transaction_id": r.get::<String, _>("transaction_id"),
                "user_id": r.get::<String, _>("user_id"),
                "event_type": r.get::<String, _>("event_type"),
                "total_amount": r.get::<String, _>("total").parse::<f64>().unwrap(),
                "timestamp": at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            })
        })
        .collect()
}

struct Running {
    _service: Service,
    base: String,
    port: u16,
    log: std::path::PathBuf,
}

/// Starts `run --clock event` and waits until it has consumed `count` messages.
async fn start_service(s: &Scenario, port: u16, count: usize) -> Running {
    let (service, log) = s.spawn_run();
    let base = format!("http://127.0.0.1:{port}");
    let caught_up = eventually(Duration::from_secs(60), || async {
        let Some((200, text)) = get(&format!("{base}/metrics")).await else { return false };
        metric(&text, "martstream_events_consumed_total") == Some(count as f64)
            && get(&format!("{base}/readyz")).await.is_some_and(|r| r.0 == 200)
    })
    .await;
    assert!(caught_up, "the service did not catch up: {}", std::fs::read_to_string(&log).unwrap_or_default());
    Running { _service: service, base, port, log }
}

/// `martstream reconcile` against the running service: (exit ok, report).
fn reconcile(s: &Scenario, r: &Running, extra: &[&str]) -> (bool, Value) {
    let service = format!("127.0.0.1:{}", r.port);
    let mut args = vec!["reconcile", "--service", service.as_str()];
    args.extend_from_slice(extra);
    let out = s.command(&args).output().unwrap();
    let report =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.success(), report)
}

fn scenario(prefix: &str, port: u16, pg: &str) -> Scenario {
    let mut s = Scenario::new(prefix);
    s.extra = vec![
        "--set".into(),
        format!("service.http_listen=127.0.0.1:{port}"),
        "--set".into(),
        format!("postgres.url={pg}"),
        "--set".into(),
        "postgres.connect_timeout_ms=2000".into(),
        "--set".into(),
        "snapshot.enabled=false".into(),
        // No daily run: every reconciliation here is on demand, which stays available.
        "--set".into(),
        "reconcile.schedule=false".into(),
    ];
    s
}

/// `views.trends.daily_days` of the drift test.
const DAILY_DAYS: i64 = 10;

fn messages(seed: u64) -> (Vec<Message>, DateTime<Utc>) {
    let start: DateTime<Utc> = "2026-09-01T00:00:00Z".parse().unwrap();
    let cfg = GenConfig { seed, events: 6000, customers: 700, days: 20, start, ..GenConfig::default() };
    (Generator::new(cfg).collect(), start)
}

#[tokio::test(flavor = "multi_thread")]
async fn injected_drift_is_counted_exactly_and_repair_makes_every_view_and_fact_equal_postgres() {
    let port = free_port();
    let mut s = scenario("e2e_recon", port, "");
    let (pg, reader) = fresh_pg(&s).await;
    s.extra[3] = format!("postgres.url={reader}");
    s.create_topics();
    let (all, start) = messages(21);
    let drift = Drift {
        missing_in_kafka: 5,
        missing_in_postgres: 4,
        amount: 3,
        lines: 2,
        before: Some(start + chrono::Duration::days(10)),
    };
    let (kafka, injected) = split(&all, &drift, &pg).await;
    let counts = |i: &Injected| (i.missing_in_kafka.len(), i.missing_in_postgres.len(), i.amount.len(), i.lines.len());
    assert_eq!(counts(&injected), (5, 4, 3, 2));
    // Daily documents for 10 dates: the drift (the first days) is older than the daily
    // series, so only the weekly and monthly documents hold it.
    s.extra.extend(["--set".into(), format!("views.trends.daily_days={DAILY_DAYS}")]);
    s.produce(&kafka).await;
    let r = start_service(&s, port, kafka.len()).await;
    // A cut reads the state as the last views flush left it (the daily series trimmed to
    // its 10 days, the product window): wait until a flush with every event is written.
    let applied = recompute::applied(&kafka);
    let as_of = recompute::event_clock(&applied);
    let stream_trends = recompute::trends_with(&applied, as_of, DAILY_DAYS);
    let flushed = || async { recompute::trends_diff(&s.collection("sales_trends").await, &stream_trends).is_ok() };
    assert!(eventually(Duration::from_secs(30), flushed).await, "the views never showed every event");

    // The cut: the 18th day, inside what the state can cut (3 days before its newest event).
    let cutoff = (start + chrono::Duration::days(18)).date_naive().to_string();
    let (ok, report) = reconcile(&s, &r, &["--cutoff", &cutoff]);
    assert!(ok, "{report:#}");
    assert_eq!(report["outcome"], "mismatches", "{report:#}");
    let m = &report["mismatches"];
    assert_eq!(m["customer_missing_in_stream"], 5, "{report:#}");
    assert_eq!(m["customer_missing_in_postgres"], 4, "{report:#}");
    assert_eq!(m["customer_amount"], 3, "{report:#}");
    assert_eq!(m["customer_purchase_time"], 0, "{report:#}");
    assert_eq!(
        (report["purchases_missing_in_stream"].as_i64(), report["purchases_missing_in_postgres"].as_i64()),
        (Some(5), Some(4))
    );
    assert!(m["period_count"].as_u64().unwrap() >= 2, "a week and a month: {report:#}");
    // The lost purchases' lines, and the lines of purchases PostgreSQL lacks.
    assert!(m["fact_missing_in_stream"].as_u64().unwrap() >= 5, "{report:#}");
    assert!(m["fact_missing_in_postgres"].as_u64().unwrap() >= 4, "{report:#}");
    assert!(m["product_day"].as_u64().unwrap() >= 1, "{report:#}");
    // The lines with one unit more: their customers' figures agree, their product days
    // and facts do not.
    assert_eq!(m["fact_differs"], 2, "{report:#}");
    let (_, text) = get(&format!("{}/metrics", r.base)).await.unwrap();
    assert_eq!(metric(&text, r#"martstream_reconciliation_mismatches{kind="customer_amount"}"#), Some(3.0));
    let reports = s.collection("reconciliation_reports").await;
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].get_str("outcome"), Ok("mismatches"));
    assert!(reports[0].get_datetime("started_at").is_ok());

    // PostgreSQL wins: every mismatch is changed, and the views become its recompute.
    let (ok, repaired) = reconcile(&s, &r, &["--cutoff", &cutoff, "--repair"]);
    assert!(ok, "{repaired:#}");
    assert_eq!(repaired["outcome"], "repaired");
    assert_eq!(repaired["changes_total"], repaired["mismatches_total"]);
    let truth = pg_events(&pg).await;
    let (rfm, trends) = (recompute::rfm(&truth, as_of, false), recompute::trends_with(&truth, as_of, DAILY_DAYS));
    // The same transactions with their lines: the stream's events PostgreSQL holds (with its
    // amounts), and those only PostgreSQL holds (it does not record where a sale happened).
    let mut lines: Vec<Value> = applied
        .into_iter()
        .filter(|e| !injected.missing_in_postgres.contains(e["transaction_id"].as_str().unwrap()))
        .collect();
    for e in &mut lines {
        let id = e["transaction_id"].as_str().unwrap().to_owned();
        if injected.amount.contains(&id) {
            let cents = recompute::cents(&e["total_amount"]) + 1_00;
            e["total_amount"] = json!(cents as f64 / 100.0);
        }
        if injected.lines.contains(&id) {
            e["items"][0]["quantity"] = json!(e["items"][0]["quantity"].as_i64().unwrap() + 1);
        }
    }
    lines.extend(recompute::applied(&all).into_iter().filter_map(|mut e| {
        injected.missing_in_kafka.contains(e["transaction_id"].as_str().unwrap()).then(|| {
            e.as_object_mut().unwrap().remove("location");
            e
        })
    }));
    assert_eq!(lines.len(), truth.len(), "the transactions with lines are PostgreSQL's");
    let products = recompute::products(&lines, as_of);
    let db = common::mongo().await.database(&s.database);
    let last_error = std::sync::Mutex::new(String::new());
    let equal = eventually(Duration::from_secs(30), || async {
        let (docs, trend_docs) = (s.collection("customer_rfm_analysis").await, s.collection("sales_trends").await);
        let product_docs = s.collection("product_performance").await;
        let mut result = recompute::rfm_diff(&docs, &rfm, None)
            .and_then(|_| recompute::trends_diff(&trend_docs, &trends))
            .and_then(|_| recompute::products_diff(&product_docs, &products, None));
        if result.is_ok() {
            result = recompute::check_star_schema(&db, &lines).await;
        }
        if let Err(e) = &result {
            *last_error.lock().unwrap() = e.clone();
        }
        result.is_ok()
    })
    .await;
    assert!(equal, "views or facts differ from the recompute from PostgreSQL: {}", last_error.lock().unwrap());
    let (_, again) = reconcile(&s, &r, &["--cutoff", &cutoff]);
    assert_eq!((again["outcome"].as_str(), again["mismatches_total"].as_u64()), (Some("ok"), Some(0)), "{again:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_drift_nothing_differs_and_an_unreachable_postgres_is_a_failed_run() {
    let port = free_port();
    let mut s = scenario("e2e_recon_clean", port, "");
    let (pg, reader) = fresh_pg(&s).await;
    s.extra[3] = format!("postgres.url={reader}");
    // Every kind of secret the configuration holds, so the end can look for each of them.
    // Kafka is a real SASL login (PLAIN over plaintext: the test broker offers PLAIN and
    // accepts any password, so the secret travels but is not checked; docs/SECURITY.md).
    let token = "tok-b81d6e2f09";
    let kafka_secret = "kpw-5c0e7a93d4";
    s.extra.extend([
        "--set".into(),
        format!("postgres.migrate_url={pg}"),
        "--set".into(),
        format!("service.api_token={token}"),
        "--set".into(),
        r#"kafka.librdkafka_options."security.protocol"="SASL_PLAINTEXT""#.into(),
        "--set".into(),
        r#"kafka.librdkafka_options."sasl.mechanism"="PLAIN""#.into(),
        "--set".into(),
        r#"kafka.librdkafka_options."sasl.username"="martstream""#.into(),
        "--set".into(),
        format!("kafka.librdkafka_options.\"sasl.password\"={kafka_secret}"),
    ]);
    s.create_topics();
    let (all, _) = messages(22);
    let (kafka, _) = split(&all, &Drift::default(), &pg).await;
    s.produce(&kafka).await;
    let r = start_service(&s, port, kafka.len()).await;
    // The default cut: the date of the newest event minus reconcile.settle_ms.
    let (ok, report) = reconcile(&s, &r, &[]);
    assert!(ok, "{report:#}");
    assert_eq!((report["outcome"].as_str(), report["mismatches_total"].as_u64()), (Some("ok"), Some(0)), "{report:#}");
    assert!(report["customers_checked"].as_u64().unwrap() > 500, "{report:#}");
    assert!(report["days_checked"].as_u64().unwrap() >= 19, "{report:#}");
    let (first_log, first_report) = (r.log.clone(), report.to_string());
    drop(r);

    // Same topic and views, PostgreSQL on a port nobody listens on.
    let port = free_port();
    let down_secret = "pgpw-3e9a1f7c";
    let down_url = format!("postgres://u:{down_secret}@127.0.0.1:{}/x", free_port());
    let mut down = scenario("e2e_recon_down", port, &down_url);
    down.extra.extend(s.extra[10..].iter().cloned());
    down.topic = s.topic.clone();
    down.dlq = s.dlq.clone();
    down.sessions = s.sessions.clone();
    down.sessions_dlq = s.sessions_dlq.clone();
    down.database = s.database.clone();
    let r = start_service(&down, port, kafka.len()).await;
    let (ok, report) = reconcile(&down, &r, &[]);
    assert!(!ok, "a failed run exits non-zero");
    assert_eq!(report["outcome"], "failed", "{report:#}");
    assert!(report["error"].as_str().unwrap().contains("PostgreSQL"), "{report:#}");
    assert_eq!(get(&format!("{}/healthz", r.base)).await.map(|x| x.0), Some(200), "the service keeps running");
    let (_, text) = get(&format!("{}/metrics", r.base)).await.unwrap();
    assert_eq!(metric(&text, r#"martstream_reconciliation_runs_total{outcome="failed"}"#), Some(1.0));
    let failed = s
        .collection("reconciliation_reports")
        .await
        .into_iter()
        .filter(|d| d.get_str("outcome") == Ok("failed"))
        .count();
    assert_eq!(failed, 1);

    // No configured secret appears anywhere the service shows something: its logs (both
    // runs), check-config, /metrics, the reconciliation reports (answered and stored).
    let mut shown = vec![
        std::fs::read_to_string(&first_log).unwrap(),
        std::fs::read_to_string(&r.log).unwrap(),
        text,
        report.to_string(),
        first_report,
    ];
    for scenario in [&s, &down] {
        let out = scenario.martstream(&["check-config"]);
        shown.push(String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr));
    }
    shown.extend(s.collection("reconciliation_reports").await.iter().map(|d| d.to_string()));
    let password = |url: &str| {
        url.split_once("://")
            .and_then(|(_, r)| r.split_once('@'))
            .and_then(|(u, _)| u.split_once(':'))
            .map(|(_, p)| p.to_owned())
    };
    let mut secrets: Vec<String> = [token, kafka_secret, down_secret].map(str::to_owned).to_vec();
    secrets.extend([&pg, &reader, &common::mongo_uri()].into_iter().filter_map(|u| password(u)));
    assert!(secrets.len() >= 5, "the stack's URLs carry passwords (scripts/stack env): {secrets:?}");
    for secret in &secrets {
        for (i, place) in shown.iter().enumerate() {
            assert!(!place.contains(secret.as_str()), "a secret appears in shown[{i}]:\n{place}");
        }
    }
}
