//! The always-on service against the real stack: views follow events as they arrive,
//! /metrics and /readyz tell the truth, SIGTERM flushes and exits cleanly; and every failure
//! at start is one line on stderr with a non-zero exit, never a panic.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{eventually, free_port, get, metric, recompute, Scenario};
use loadtest::{GenConfig, Generator, Label};

#[tokio::test(flavor = "multi_thread")]
async fn the_service_follows_the_topic_reports_health_and_stops_on_sigterm() {
    let mut s = Scenario::new("e2e_run");
    let port = free_port();
    s.extra = vec!["--set".into(), format!("service.http_listen=127.0.0.1:{port}")];
    s.create_topics();
    let messages: Vec<_> = Generator::new(GenConfig {
        seed: 3,
        events: 2000,
        customers: 300,
        malformed_rate: 0.02,
        ..GenConfig::default()
    })
    .collect();
    let (first, second) = messages.split_at(1200);
    s.produce(first).await;

    let (mut service, log) = s.spawn_run();
    let service_log =
        || std::fs::read_to_string(&log).unwrap_or_default().lines().rev().take(20).collect::<Vec<_>>().join("\n");
    let base = format!("http://127.0.0.1:{port}");

    // The view converges to the first part, then follows the second part live.
    for produced in [first.len(), messages.len()] {
        if produced == messages.len() {
            s.produce(second).await;
        }
        let sent = &messages[..produced];
        let applied = recompute::applied(sent);
        let as_of = recompute::event_clock(&applied);
        let expected = recompute::rfm(&applied, as_of, false);
        let last_error = std::sync::Mutex::new(String::new());
        let converged = eventually(Duration::from_secs(30), || async {
            let docs = s.collection("customer_rfm_analysis").await;
            let diff = recompute::rfm_diff(&docs, &expected, None);
            if let Err(e) = &diff {
                *last_error.lock().unwrap() = e.clone();
            }
            diff.is_ok()
        })
        .await;
        assert!(
            converged,
            "the view did not converge after {produced} messages: {}\nservice log (last lines first):\n{}",
            last_error.lock().unwrap(),
            service_log()
        );
    }

    let (code, body) = get(&format!("{base}/readyz")).await.expect("readyz answers");
    assert_eq!(code, 200, "{body}");
    assert_eq!(get(&format!("{base}/healthz")).await.map(|r| r.0), Some(200));
    let (code, text) = get(&format!("{base}/metrics")).await.unwrap();
    assert_eq!(code, 200);
    let count = |l: &dyn Fn(&Label) -> bool| messages.iter().filter(|m| l(&m.label)).count() as f64;
    assert_eq!(metric(&text, "martstream_events_consumed_total"), Some(messages.len() as f64), "{text}");
    assert_eq!(metric(&text, "martstream_events_duplicate_total"), Some(count(&|l| *l == Label::Duplicate)));
    let dlq_total: f64 = text
        .lines()
        .filter(|l| l.starts_with("martstream_events_dlq_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(dlq_total, count(&|l| matches!(l, Label::Malformed(_) | Label::Conflicting)));
    assert_eq!(
        metric(&text, "martstream_events_dlq_total{reason=\"invalid_json\"}"),
        Some(count(&|l| *l == Label::Malformed("invalid_json")))
    );
    assert_eq!(metric(&text, "martstream_mongo_up"), Some(1.0));
    check_exposition_format(&text);
    // Gauges the worker exports once a second (the views may converge sooner than that).
    let series = [
        "martstream_consumer_lag_messages{partition=\"0\",topic=",
        "martstream_end_to_end_latency_seconds{quantile=\"0.99\"}",
        "martstream_facts_latency_seconds{quantile=\"0.99\"}",
        "martstream_process_resident_memory_bytes",
        "martstream_snapshot_age_seconds",
    ];
    let all_exported = || async {
        let text = get(&format!("{base}/metrics")).await.map(|r| r.1).unwrap_or_default();
        series.iter().all(|series| text.lines().any(|l| l.starts_with(series)))
    };
    if !eventually(Duration::from_secs(10), all_exported).await {
        let text = get(&format!("{base}/metrics")).await.map(|r| r.1).unwrap_or_default();
        let missing: Vec<_> = series.iter().filter(|series| !text.lines().any(|l| l.starts_with(*series))).collect();
        panic!("{missing:?} missing from /metrics:\n{text}");
    }

    // The query API answers what the MongoDB views hold, once the last flush landed (the
    // collections of one flush are written one after the other).
    let api_equals_views = || async { check_query_api(&base, &s).await.is_ok() };
    if !eventually(Duration::from_secs(15), api_equals_views).await {
        panic!("the query API differs from MongoDB: {}", check_query_api(&base, &s).await.unwrap_err());
    }

    // SIGTERM: a last flush, then a clean exit.
    let pid = service.0.id() as i32;
    assert_eq!(unsafe_kill(pid, 15), 0);
    let status = tokio::task::spawn_blocking(move || {
        let status = service.0.wait();
        std::mem::forget(service);
        status
    })
    .await
    .unwrap()
    .unwrap();
    assert!(status.success(), "exit after SIGTERM: {status}\n{}", service_log());
    // Paced fetching (the local stack's config) has librdkafka report every partition's
    // end: a signal to the service, never a warning in its log.
    let full_log = std::fs::read_to_string(&log).unwrap_or_default();
    let eof_lines = full_log.lines().filter(|l| l.contains("end of partition")).count();
    assert_eq!(eof_lines, 0, "end-of-partition events logged:\n{}", service_log());
}

/// Every line of a Prometheus text exposition is a comment (# HELP / # TYPE) or
/// `name{label="value",...} number`, and every sample's family was declared.
fn check_exposition_format(text: &str) {
    let mut declared = std::collections::HashSet::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name) = (parts.next().unwrap(), parts.next().expect("a metric name"));
            assert!(kind == "HELP" || kind == "TYPE", "{line}");
            if kind == "TYPE" {
                let t = parts.next().unwrap_or_default();
                assert!(["counter", "gauge", "histogram", "summary", "untyped"].contains(&t), "{line}");
                declared.insert(name.to_owned());
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("series and value");
        assert!(value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value), "{line}");
        let name = series.split('{').next().unwrap();
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'), "{line}");
        let family = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
        assert!(declared.contains(name) || declared.contains(family), "{line}: no # TYPE");
        if let Some(labels) = series.strip_prefix(name).and_then(|l| l.strip_prefix('{')) {
            let labels = labels.strip_suffix('}').expect("closing brace");
            for pair in labels.split("\",").filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once("=\"").unwrap_or_else(|| panic!("{line}"));
                assert!(k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{line}");
                assert!(!v.trim_end_matches('"').contains('"'), "{line}");
            }
        }
        assert!(name.starts_with("martstream_"), "{line}: every metric is martstream_*");
    }
}

/// `assert_eq!` / `assert!` that return the failure instead, so a check can be retried.
macro_rules! check_eq {
    ($a:expr, $b:expr $(, $($msg:tt)+)?) => {{
        let (a, b) = (&$a, &$b);
        if a != b {
            let why = String::new() $(+ &format!($($msg)+))?;
            return Err(format!("{:?} != {:?} {why}", a, b));
        }
    }};
}

macro_rules! check {
    ($cond:expr $(, $($msg:tt)+)?) => {
        if !$cond {
            let why = String::new() $(+ &format!($($msg)+))?;
            return Err(format!("{} {why}", stringify!($cond)));
        }
    };
}

/// The API against the MongoDB documents: customers, segments, top products, trends, and
/// the 400/404 answers.
async fn check_query_api(base: &str, s: &Scenario) -> Result<(), String> {
    use serde_json::Value;
    let json = |body: &str| serde_json::from_str::<Value>(body).unwrap();
    // MongoDB's documents as the API writes them: plain JSON, no _id or updated_at.
    let strip = martstream::query::to_json;
    let rfm = s.collection("customer_rfm_analysis").await;
    // A document the last flush did not rewrite keeps its older analysis_date; the API
    // answers every customer as of the last flush (the newest analysis_date stored).
    let last_flush = rfm.iter().map(|d| strip(d.clone())["analysis_date"].take()).max_by_key(|t| t.to_string());
    let last_flush = last_flush.unwrap(); // RFC 3339 in UTC with milliseconds: sorts as text
    for d in rfm.iter().step_by(37) {
        let id = d.get_str("customer_id").unwrap();
        let (code, body) = get(&format!("{base}/v1/customers/{id}")).await.unwrap();
        check_eq!(code, 200, "{body}");
        let (mut got, mut want) = (json(&body), strip(d.clone()));
        check_eq!(got["analysis_date"].take(), last_flush, "customer {id}");
        want["analysis_date"].take();
        check_eq!(got, want, "customer {id}");
    }
    let mut segments = std::collections::BTreeMap::<String, u64>::new();
    for d in &rfm {
        *segments.entry(d.get_str("rfm_segment").unwrap().to_owned()).or_default() += 1;
    }
    let (code, body) = get(&format!("{base}/v1/segments")).await.unwrap();
    check_eq!(code, 200);
    let mut got = json(&body);
    got["segments"].as_object_mut().unwrap().retain(|_, n| *n != 0);
    check_eq!(got, serde_json::json!({ "customers": rfm.len(), "segments": segments }));

    let products = s.collection("product_performance").await;
    let category = products[0].get_str("category").unwrap().to_owned();
    let mut in_category: Vec<_> = products.iter().filter(|d| d.get_str("category") == Ok(&category)).cloned().collect();
    in_category.sort_by_key(|d| {
        d.get_i32("rank_in_category").map(i64::from).unwrap_or_else(|_| d.get_i64("rank_in_category").unwrap())
    });
    let (code, body) =
        get(&format!("{base}/v1/products/top?category={}&n=3", category.replace(' ', "%20"))).await.unwrap();
    check_eq!(code, 200, "{body}");
    let want: Vec<Value> = in_category.into_iter().take(3).map(strip).collect();
    check_eq!(json(&body)["products"], Value::Array(want));

    let trends = s.collection("sales_trends").await;
    let mut monthly: Vec<_> = trends.into_iter().filter(|d| d.get_str("trend_type") == Ok("monthly")).collect();
    monthly.sort_by_key(|d| d.get_str("date").unwrap().to_owned());
    let (code, body) = get(&format!("{base}/v1/trends/monthly")).await.unwrap();
    check_eq!(code, 200);
    check_eq!(json(&body)["periods"], Value::Array(monthly.into_iter().map(strip).collect()));

    for (path, code) in [
        ("/v1/customers/NOBODY", 404),
        ("/v1/trends/hourly", 400),
        ("/v1/products/top?n=0", 400),
        ("/v1/products/top?n=x", 400),
        ("/v1/products/top?category=NoSuchCategory", 404),
    ] {
        let (got, body) = get(&format!("{base}{path}")).await.unwrap();
        check_eq!(got, code, "{path}: {body}");
        check!(json(&body)["error"].as_str().is_some_and(|e| !e.is_empty()), "{path}: {body}");
    }
    let (code, body) = get(&format!("{base}/v1/openapi.json")).await.unwrap();
    check_eq!(code, 200);
    check_eq!(json(&body)["openapi"], "3.0.3");
    Ok(())
}

fn unsafe_kill(pid: i32, signal: i32) -> i32 {
    std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .map_or(-1, |s| s.code().unwrap_or(-1))
}

/// Runs martstream and returns (exit code, stderr).
fn fails(args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_martstream"))
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn failures_at_start_are_one_line_and_a_non_zero_exit() {
    let cases: [(&[&str], &str); 10] = [
        (&["--set", "service.http_listen=0.0.0.0:9464", "run"], "service.api_token is empty"),
        (&["--set", "kafka.brokrs=x", "check-config"], "kafka.brokrs"),
        (&["--config", "/nonexistent/martstream.toml", "run"], "does not exist"),
        (&["--set", "views.rfm.scoring=deciles", "check-config"], "views.rfm.scoring"),
        (&["--brokers", "127.0.0.1:1", "--set", "kafka.connect_timeout_ms=1500", "replay"], "cannot reach Kafka"),
        (&["--brokers", "127.0.0.1:1", "--set", "kafka.connect_timeout_ms=1500", "run"], "cannot reach Kafka"),
        (
            &["--brokers", "127.0.0.1:1", "--set", "kafka.connect_timeout_ms=1500", "topics", "create"],
            "cannot reach Kafka",
        ),
        // TLS asked for where no broker answers TLS: the error names the protocol.
        (
            &[
                "--brokers",
                "127.0.0.1:1",
                "--set",
                "kafka.connect_timeout_ms=1500",
                "--set",
                r#"kafka.librdkafka_options."security.protocol"="SSL""#,
                "topics",
                "create",
            ],
            "security.protocol is SSL",
        ),
        // A SASL mechanism this build has no provider for: librdkafka's reason, once.
        (
            &[
                "--set",
                r#"kafka.librdkafka_options."security.protocol"="SASL_PLAINTEXT""#,
                "--set",
                r#"kafka.librdkafka_options."sasl.mechanism"="GSSAPI""#,
                "topics",
                "create",
            ],
            "No provider for SASL mechanism GSSAPI",
        ),
        (
            &[
                "--mongo-uri",
                "mongodb://127.0.0.1:1/",
                "--set",
                "mongo.connect_timeout_ms=1500",
                "--topic",
                "absent-topic-xyz",
                "replay",
            ],
            "does not exist",
        ),
    ];
    for (args, needle) in cases {
        let (code, stderr) = fails(args);
        assert_ne!(code, 0, "{args:?} should fail");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: one line expected: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert_eq!(stderr.matches(needle).count(), 1, "{args:?}: said once: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_mongodb_at_start_is_one_line() {
    let s = Scenario::new("e2e_nomongo");
    s.create_topics();
    let mut args = s.args();
    let i = args.iter().position(|a| a == "--mongo-uri").unwrap();
    args[i + 1] = "mongodb://127.0.0.1:1/".into();
    args.extend(["--set".into(), "mongo.connect_timeout_ms=1500".into(), "replay".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, stderr) = fails(&args);
    assert_ne!(code, 0);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("cannot reach MongoDB at mongodb://127.0.0.1:1/"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_an_api_token_v1_needs_it_and_the_probes_stay_open() {
    let mut s = Scenario::new("e2e_token");
    let port = free_port();
    let token = "tok-7f3a9c1e5b";
    s.extra = vec![
        "--set".into(),
        format!("service.http_listen=127.0.0.1:{port}"),
        "--set".into(),
        format!("service.api_token={token}"),
        "--set".into(),
        "snapshot.enabled=false".into(),
    ];
    s.create_topics();
    let (service, log) = s.spawn_run();
    let base = format!("127.0.0.1:{port}");
    let request = |path: &str, auth: Option<String>| {
        let base = base.clone();
        let path = path.to_owned();
        async move { common::request(&base, "GET", &path, auth.as_deref()).await }
    };
    assert!(
        eventually(Duration::from_secs(30), || async { request("/healthz", None).await.is_some() }).await,
        "the service never answered:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    for path in ["/v1/segments", "/v1/openapi.json", "/v1/customers/c1"] {
        for auth in
            [None, Some("Bearer wrong".to_owned()), Some(format!("Basic {token}")), Some(format!("Bearer {token}x"))]
        {
            let (code, body) = request(path, auth.clone()).await.unwrap();
            assert_eq!(code, 401, "{path} with {auth:?}: {body}");
            assert!(body.contains("bearer token"), "{body}");
        }
        let (code, _) = request(path, Some(format!("Bearer {token}"))).await.unwrap();
        assert_ne!(code, 401, "{path} with the token");
    }
    for probe in ["/metrics", "/healthz", "/readyz"] {
        let (code, _) = request(probe, None).await.unwrap();
        assert!(code == 200 || code == 503, "{probe} stays open: {code}");
    }
    // `martstream reconcile` sends the configured token: a wrong one is one line, exit != 0.
    let out = s.command(&["--set", "service.api_token=wrong", "reconcile", "--service", &base]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.trim().lines().count() == 1 && stderr.contains("401"), "{stderr}");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!text.contains(token), "the token appears in the log");
    drop(service);
}

/// The service's own MongoDB login (`scripts/stack env`): user `martstream`, readWrite on the
/// warehouse database and its shadow only.
fn service_mongo_uri() -> String {
    let uri = std::env::var("MARTSTREAM_MONGO__URI").unwrap_or_default();
    assert!(uri.contains('@'), "run under `eval \"$(scripts/stack env)\"`: the stack's MongoDB requires a login");
    uri
}

#[tokio::test(flavor = "multi_thread")]
async fn mongodb_refuses_a_wrong_password_and_writes_outside_the_warehouse() {
    let s = Scenario::new("e2e_mongo_auth");
    s.create_topics();
    let uri = service_mongo_uri();
    let (user, rest) = uri.split_once("://").unwrap().1.split_once('@').unwrap();
    let (name, password) = user.split_once(':').unwrap();
    let wrong_password = format!("{password}x");
    let wrong = uri.replacen(&format!("{name}:{password}@"), &format!("{name}:{wrong_password}@"), 1);
    assert!(wrong.ends_with(rest));
    let start = |uri: &str| {
        let mut args = s.args();
        let i = args.iter().position(|a| a == "--mongo-uri").unwrap();
        args[i + 1] = uri.to_owned();
        args.extend(["--set".into(), "mongo.connect_timeout_ms=5000".into(), "replay".into()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        fails(&args)
    };
    // A wrong password: one line naming the refusal, the password masked.
    let (code, stderr) = start(&wrong);
    assert_ne!(code, 0);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("refused the login") && stderr.contains(&format!("{name}:****@")), "{stderr}");
    assert!(!stderr.contains(&wrong_password) && !stderr.contains(password), "{stderr}");
    // The right password on a database that is not the warehouse: refused, one line.
    let (code, stderr) = start(&uri);
    assert_ne!(code, 0);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("Unauthorized (13)") && stderr.contains(&s.database), "{stderr}");
    // And directly with the driver: no write outside globalmart_dw and its shadow.
    let client = mongodb::Client::with_uri_str(&uri).await.unwrap();
    for db in [s.database.as_str(), "admin", "globalmart"] {
        let err = client.database(db).collection("x").insert_one(mongodb::bson::doc! { "a": 1 }).await.unwrap_err();
        assert!(err.to_string().contains("not authorized"), "{db}: {err}");
    }
}

/// MongoDB over TLS (the stack's mongod allows it, with its own CA): with the CA a replay
/// writes its views; without it, one line saying the certificate is not trusted.
#[tokio::test(flavor = "multi_thread")]
async fn mongodb_over_tls_with_the_stacks_ca_and_one_line_without_it() {
    let ca = std::env::var("MARTSTREAM_TEST_MONGO_TLS_CA").expect("run under `eval \"$(scripts/stack env)\"`");
    let s = Scenario::new("e2e_mongo_tls");
    s.create_topics();
    let messages: Vec<_> =
        Generator::new(GenConfig { seed: 5, events: 300, customers: 50, ..GenConfig::default() }).collect();
    s.produce(&messages).await;
    let with_uri = |uri: String| {
        let mut args = s.args();
        let i = args.iter().position(|a| a == "--mongo-uri").unwrap();
        args[i + 1] = uri;
        args.extend(["--set".into(), "mongo.connect_timeout_ms=5000".into(), "replay".into()]);
        args
    };
    let plain = common::mongo_uri();
    let args = with_uri(format!("{plain}&tls=true&tlsCAFile={ca}"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_martstream")).args(&args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!s.collection("customer_rfm_analysis").await.is_empty(), "views written over TLS");

    let args = with_uri(format!("{plain}&tls=true"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, stderr) = fails(&args);
    assert_ne!(code, 0);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("TLS handshake failed") && stderr.contains("certificate"), "{stderr}");
}

/// The two sink lanes: while MongoDB refuses every fact (a validator no row meets), the views
/// still follow the stream exactly and the facts wait, said by the metrics; once facts are
/// taken again, every view, fact and dimension ends exact.
#[tokio::test(flavor = "multi_thread")]
async fn views_stay_current_while_facts_are_refused_and_facts_catch_up_after() {
    use mongodb::bson::{doc, Document};
    let mut s = Scenario::new("e2e_lanes");
    let port = free_port();
    s.extra = vec!["--set".into(), format!("service.http_listen=127.0.0.1:{port}")];
    s.extra.extend(["--set".into(), "service.retry_max_ms=1000".into()]);
    s.create_topics();
    let base = format!("http://127.0.0.1:{port}");
    let (service, log) = s.spawn_run();
    let service_log =
        || std::fs::read_to_string(&log).unwrap_or_default().lines().rev().take(20).collect::<Vec<_>>().join("\n");
    let ready = || async { get(&format!("{base}/readyz")).await.is_some_and(|r| r.0 == 200) };
    assert!(eventually(Duration::from_secs(30), ready).await, "never ready:\n{}", service_log());

    // The service created fact_sales with the batch design's validator; keep it to restore.
    let db = common::mongo().await.database(&s.database);
    let listed = db.run_command(doc! { "listCollections": 1, "filter": { "name": "fact_sales" } }).await.unwrap();
    let info =
        listed.get_document("cursor").unwrap().get_array("firstBatch").unwrap()[0].as_document().unwrap().clone();
    let validator = info.get_document("options").unwrap().get_document("validator").unwrap().clone();
    let refuse_all = doc! { "$jsonSchema": { "required": ["a_field_no_fact_has"] } };
    db.run_command(doc! { "collMod": "fact_sales", "validator": refuse_all, "validationAction": "error" })
        .await
        .unwrap();

    let messages: Vec<_> =
        Generator::new(GenConfig { seed: 29, events: 1500, customers: 200, ..GenConfig::default() }).collect();
    s.produce(&messages).await;
    let applied = recompute::applied(&messages);
    let as_of = recompute::event_clock(&applied);
    let expected = recompute::rfm(&applied, as_of, false);
    let views_exact = || async {
        recompute::rfm_diff(&s.collection("customer_rfm_analysis").await, &expected, None).is_ok()
            && recompute::products_diff(
                &s.collection("product_performance").await,
                &recompute::products(&applied, as_of),
                None,
            )
            .is_ok()
            && recompute::trends_diff(&s.collection("sales_trends").await, &recompute::trends(&applied, as_of)).is_ok()
    };
    assert!(eventually(Duration::from_secs(30), views_exact).await, "views did not follow:\n{}", service_log());
    let facts_written = db.collection::<Document>("fact_sales").count_documents(doc! {}).await.unwrap();
    assert_eq!(facts_written, 0, "MongoDB was to refuse every fact");
    // The waiting facts and the refused bulk flushes are told (gauges export each second).
    let said = || async {
        let metrics = get(&format!("{base}/metrics")).await.map(|r| r.1).unwrap_or_default();
        metric(&metrics, "martstream_facts_pending").is_some_and(|n| n > 0.0)
            && metric(&metrics, "martstream_flushes_total{lane=\"bulk\",outcome=\"error\"}").is_some_and(|n| n > 0.0)
            && metric(&metrics, "martstream_flushes_total{lane=\"views\",outcome=\"ok\"}").is_some_and(|n| n > 0.0)
    };
    if !eventually(Duration::from_secs(10), said).await {
        panic!("metrics do not tell the facts wait:\n{}", get(&format!("{base}/metrics")).await.unwrap().1);
    }
    let (code, _) = get(&format!("{base}/readyz")).await.unwrap();
    assert_eq!(code, 503, "facts not written: the warehouse is not current");

    db.run_command(doc! { "collMod": "fact_sales", "validator": validator }).await.unwrap();
    let all_exact = || async { recompute::check_every_view(&db, &messages, &[], as_of, false).await.is_ok() };
    if !eventually(Duration::from_secs(60), all_exact).await {
        let e = recompute::check_every_view(&db, &messages, &[], as_of, false).await.unwrap_err();
        panic!("after facts were taken again: {e}\n{}", service_log());
    }
    assert!(eventually(Duration::from_secs(15), ready).await, "not ready again:\n{}", service_log());
    drop(service);
}
