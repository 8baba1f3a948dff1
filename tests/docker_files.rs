//! No Docker engine runs here, so the compose file is checked for what can be checked: it
//! parses, every service has an image or a build, the ports are the documented ones, and
//! martstream is pointed at the compose services with configuration keys that exist. The
//! alert rules and every query of the Grafana dashboard go through Prometheus's own
//! `promtool` (Debian's prometheus package; `scripts/test` installs it), and every metric
//! they name is one martstream exports.

use std::collections::BTreeMap;

use serde_yaml::Value;

fn compose() -> Value {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docker/docker-compose.yml")).unwrap();
    serde_yaml::from_str(&text).expect("docker-compose.yml parses")
}

#[test]
fn every_service_has_an_image_or_a_build_and_the_documented_ports() {
    let c = compose();
    let services = c["services"].as_mapping().expect("services");
    let mut ports: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, svc) in services {
        let name = name.as_str().unwrap().to_owned();
        assert!(svc.get("image").is_some() || svc.get("build").is_some(), "{name} has neither image nor build");
        if let Some(build) = svc.get("build") {
            let dockerfile = build["dockerfile"].as_str().unwrap();
            assert!(
                std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"))).join(dockerfile).exists(),
                "{dockerfile}"
            );
        }
        for p in svc.get("ports").and_then(Value::as_sequence).into_iter().flatten() {
            ports.entry(name.clone()).or_default().push(p.as_str().unwrap().to_owned());
        }
    }
    let expect = [
        ("kafka", "9092:9092"),
        ("mongodb", "27017:27017"),
        ("mongo-express", "8082:8081"),
        ("postgres", "5432:5432"),
        ("prometheus", "9090:9090"),
        ("martstream", "9464:9464"),
    ];
    for (svc, port) in expect {
        assert!(ports.get(svc).is_some_and(|p| p.iter().any(|x| x == port)), "{svc} should publish {port}: {ports:?}");
    }
    assert!(c["services"]["kafka"]["image"].as_str().unwrap().starts_with("apache/kafka"), "Apache Kafka (KRaft)");
    assert!(c["services"]["mongodb"]["image"].as_str().unwrap().starts_with("mongo:7"));
    assert!(c["services"]["postgres"]["image"].as_str().unwrap().starts_with("postgres:15"));
}

#[test]
fn martstream_environment_uses_real_configuration_keys() {
    let c = compose();
    let env = c["services"]["martstream"]["environment"].as_mapping().unwrap();
    let pairs: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| {
            let key = k.as_str().unwrap().strip_prefix("MARTSTREAM_").unwrap().to_lowercase().replace("__", ".");
            (key, format!("{:?}", v.as_str().unwrap()))
        })
        .collect();
    let config = martstream::config::Config::load(None, &pairs).expect("compose environment is a valid configuration");
    assert_eq!(config.kafka.brokers, "kafka:29092");
    assert_eq!(config.service.http_listen, "0.0.0.0:9464");
    let prometheus = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docker/prometheus.yml")).unwrap();
    assert!(prometheus.contains("martstream:9464"));
}

#[test]
fn every_server_authenticates_with_secrets_from_the_environment_and_least_privilege() {
    let c = compose();
    let mongod: Vec<&str> =
        c["services"]["mongodb"]["command"].as_sequence().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(mongod.contains(&"--auth") && mongod.contains(&"--keyFile"), "mongod runs with access control: {mongod:?}");
    let env = &c["services"]["martstream"]["environment"];
    let mongo = env["MARTSTREAM_MONGO__URI"].as_str().unwrap();
    assert!(
        mongo.starts_with("mongodb://martstream:${MARTSTREAM_MONGO_PASSWORD:?"),
        "the service logs in as martstream: {mongo}"
    );
    let pg = env["MARTSTREAM_POSTGRES__URL"].as_str().unwrap();
    assert!(pg.starts_with("postgres://martstream_reader:${"), "the reconciliation reads as martstream_reader: {pg}");
    assert!(env["MARTSTREAM_POSTGRES__MIGRATE_URL"]
        .as_str()
        .unwrap()
        .starts_with("postgres://globalmart:${POSTGRES_PASSWORD:?"));
    let ui = c["services"]["mongo-express"]["environment"]["ME_CONFIG_MONGODB_URL"].as_str().unwrap();
    assert!(ui.starts_with("mongodb://mongo_express:${"), "Mongo Express logs in as its own read-only user: {ui}");
    // No password is written in the file: every one is `${NAME:?…}`, which compose refuses
    // to start without.
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docker/docker-compose.yml")).unwrap();
    for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
        if let Some((_, after)) = line.split_once("PASSWORD: ") {
            assert!(after.starts_with("${") && after.contains(":?"), "{line}");
        }
        if let Some(at) = line.find('@').filter(|_| line.contains("://")) {
            assert!(line[..at].ends_with('}'), "a URL's password comes from the environment: {line}");
        }
    }
    let init = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docker/mongo-init.js")).unwrap();
    let service_user = init.split(r#"user: "martstream","#).nth(1).and_then(|rest| rest.split("});").next()).unwrap();
    let roles: Vec<&str> = service_user.lines().map(str::trim).filter(|l| l.starts_with("{ role:")).collect();
    assert_eq!(
        roles,
        [r#"{ role: "readWrite", db: "globalmart_dw" },"#, r#"{ role: "readWrite", db: "globalmart_dw_shadow" },"#],
        "martstream may write its warehouse and its shadow, nothing else"
    );
    let pg_init = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docker/postgres-init.sh")).unwrap();
    assert!(pg_init.contains("CREATE ROLE martstream_reader LOGIN PASSWORD :'pw'"));
}

fn promtool_check_rules(path: &std::path::Path) {
    let out = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(path)
        .output()
        .expect("promtool (Debian package prometheus; scripts/test installs it)");
    assert!(
        out.status.success(),
        "promtool check rules {}:\n{}{}",
        path.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The metric names a PromQL expression mentions that martstream would have to export.
fn martstream_metrics(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("martstream_") {
        let name: String = rest[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        rest = &rest[i + name.len()..];
        names.push(name);
    }
    names
}

/// Every metric family, including the labelled ones that only appear once they have a
/// series (given one here).
fn exported() -> String {
    let m = martstream::telemetry::Metrics::new();
    m.consumer_lag.with_label_values(&["transactions", "0"]).set(0);
    m.segment_customers.with_label_values(&["Champions"]).set(0);
    m.documents_written.with_label_values(&["fact_sales"]).inc_by(0);
    m.late_events.with_label_values(&["sales_trends"]).inc_by(0);
    m.reconciliation_runs.with_label_values(&["failed"]).inc_by(0);
    m.reconciliation_mismatches.with_label_values(&["day_count"]).set(0);
    m.render()
}

fn assert_exported(names: &[String], exported: &str, context: &str) {
    for name in names {
        let family = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
        assert!(
            exported.contains(&format!("# TYPE {family} ")),
            "{context} uses {name}, which martstream does not export"
        );
    }
}

#[test]
fn alert_rules_pass_promtool_and_name_real_metrics() {
    let path = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/docker/alerts.yml"));
    promtool_check_rules(path);
    let rules: Value = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let exported = exported();
    let mut alerts = 0;
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let name = rule["alert"].as_str().unwrap();
            assert_exported(&martstream_metrics(rule["expr"].as_str().unwrap()), &exported, name);
            alerts += 1;
        }
    }
    assert!(alerts >= 5, "lag, DLQ rate, snapshot age, not ready, ...");
    let prometheus = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docker/prometheus.yml")).unwrap();
    assert!(prometheus.contains("alerts.yml"), "prometheus.yml loads the rules");
}

#[test]
fn dashboard_queries_are_valid_promql_over_real_metrics() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docker/grafana/martstream-dashboard.json"))
            .unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "martstream");
    let exported = exported();
    // Each panel query becomes a recording rule, so promtool parses it as PromQL.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    let mut titles = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap();
        titles.push(title.to_lowercase());
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            assert_exported(&martstream_metrics(expr), &exported, title);
            let record = format!("dashboard:panel_{}_{}", panel["id"], target["refId"].as_str().unwrap());
            rules.push_str(&format!(
                "      - record: {record}\n        expr: {}\n",
                serde_json::to_string(expr).unwrap()
            ));
        }
    }
    for wanted in ["throughput", "lag", "latency", "dead letters", "segment"] {
        assert!(titles.iter().any(|t| t.contains(wanted)), "a panel about {wanted}: {titles:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dashboard-rules.yml");
    std::fs::write(&path, rules).unwrap();
    promtool_check_rules(&path);
}
