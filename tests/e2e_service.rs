//! The always-on service against the real stack: views follow events as they arrive,
//! /metrics and /readyz tell the truth, SIGTERM flushes and exits cleanly; and every failure
//! at start is one line on stderr with a non-zero exit, never a panic.

mod common;

use std::process::{Child, Stdio};
use std::time::Duration;

use common::{eventually, free_port, recompute, Scenario};
use loadtest::{GenConfig, Generator, Label};

struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A tiny HTTP/1.1 GET over a TCP socket (keeps the test free of an HTTP client crate).
async fn get(url: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_once('/').map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    let mut stream = tokio::net::TcpStream::connect(host).await.ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Some((code, body))
}

/// The value of a metric line `name{labels} value` in Prometheus text.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

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

    let log = std::env::temp_dir().join(format!("{}.log", s.database));
    let child = s
        .command(&["run", "--clock", "event"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let service_log =
        || std::fs::read_to_string(&log).unwrap_or_default().lines().rev().take(20).collect::<Vec<_>>().join("\n");
    let mut service = Service(child);
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
    let cases: [(&[&str], &str); 7] = [
        (&["--set", "kafka.brokrs=x", "check-config"], "kafka.brokrs"),
        (&["--config", "/nonexistent/martstream.toml", "run"], "does not exist"),
        (&["--set", "views.rfm.scoring=deciles", "check-config"], "views.rfm.scoring"),
        (&["--brokers", "127.0.0.1:1", "--set", "kafka.connect_timeout_ms=1500", "replay"], "cannot reach Kafka"),
        (&["--brokers", "127.0.0.1:1", "--set", "kafka.connect_timeout_ms=1500", "run"], "cannot reach Kafka"),
        (
            &["--brokers", "127.0.0.1:1", "--set", "kafka.connect_timeout_ms=1500", "topics", "create"],
            "cannot reach Kafka",
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
