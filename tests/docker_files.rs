//! No Docker engine runs here, so the compose file is checked for what can be checked: it
//! parses, every service has an image or a build, the ports are the documented ones, and
//! martstream is pointed at the compose services with configuration keys that exist.

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
