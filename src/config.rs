//! The one typed configuration, layered: built-in defaults → TOML file → `MARTSTREAM_*`
//! environment → command-line overrides. Every key and its default is documented in
//! `config/martstream.example.toml`; an unknown key anywhere is an error that names it.

use std::collections::BTreeMap;
use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::domain::ViewConfig;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: {0}")]
    Figment(String),
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error("config file {0} does not exist")]
    MissingFile(String),
    #[error("invalid --set key {0:?}: a dotted TOML key, quoting parts that hold dots (kafka.librdkafka_options.\"fetch.max.bytes\")")]
    BadKey(String),
}

/// One `--set key=value` as a TOML table. The key is a TOML dotted key, so a part holding
/// dots is quoted (`kafka.librdkafka_options."receive.message.max.bytes"`); the value is
/// TOML, or else taken as a bare string.
fn override_table(key: &str, value: &str) -> Result<toml::Table, ConfigError> {
    format!("{key} = {value}").parse::<toml::Table>().or_else(|_| {
        let quoted = toml::Value::String(value.to_owned());
        format!("{key} = {quoted}").parse::<toml::Table>().map_err(|_| ConfigError::BadKey(key.to_owned()))
    })
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub mongo: MongoConfig,
    pub postgres: PostgresConfig,
    pub service: ServiceConfig,
    pub snapshot: SnapshotConfig,
    pub cluster: ClusterConfig,
    pub reconcile: ReconcileConfig,
    pub views: ViewConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// The input topic.
    pub topic: String,
    /// Where malformed and conflicting events go.
    pub dlq_topic: String,
    /// Browsing-session summaries (fact_customer_sessions); empty to not read sessions.
    pub sessions_topic: String,
    pub sessions_dlq_topic: String,
    /// Consumer group, used to report committed offsets for monitoring only: martstream
    /// assigns itself every partition and keeps its own offsets.
    pub group_id: String,
    /// Partitions and replication factor used by `martstream topics create`.
    pub partitions: i32,
    pub replication_factor: i32,
    /// How long start-up waits for the broker before giving up.
    pub connect_timeout_ms: u64,
    /// Once the consumer has read to the end of its partitions, fetching stops for this
    /// long before the next fetch (0: never). For brokers that answer an empty fetch at
    /// once instead of holding it for `fetch.wait.max.ms` (noida-db, the local stack):
    /// librdkafka then fetches again at once, back to back. See [`crate::pipeline`]'s
    /// decode stage.
    pub fetch_pause_ms: u64,
    /// Any librdkafka property, passed through to every client (SASL, TLS, tuning ...).
    /// Numbers and booleans are taken as librdkafka spells them (`1048576`, `true`).
    #[serde(deserialize_with = "scalars_as_strings")]
    pub librdkafka_options: BTreeMap<String, String>,
}

/// librdkafka takes every property as a string; a file or `--set` may write a number or
/// a boolean for one, and means its text.
fn scalars_as_strings<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Text(String),
        Int(i64),
        Float(f64),
        Bool(bool),
    }
    let map = BTreeMap::<String, Scalar>::deserialize(d)?;
    Ok(map
        .into_iter()
        .map(|(k, v)| {
            let text = match v {
                Scalar::Text(s) => s,
                Scalar::Int(i) => i.to_string(),
                Scalar::Float(f) => f.to_string(),
                Scalar::Bool(b) => b.to_string(),
            };
            (k, text)
        })
        .collect())
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:19092".into(),
            topic: "transactions".into(),
            dlq_topic: "transactions.dlq".into(),
            sessions_topic: "customer_sessions".into(),
            sessions_dlq_topic: "customer_sessions.dlq".into(),
            group_id: "martstream".into(),
            partitions: 8,
            replication_factor: 1,
            connect_timeout_ms: 10_000,
            fetch_pause_ms: 0,
            librdkafka_options: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MongoConfig {
    pub uri: String,
    pub database: String,
    /// Upsert statements per `update` command.
    pub write_batch_size: usize,
    /// How long start-up waits for the server before giving up.
    pub connect_timeout_ms: u64,
}

impl Default for MongoConfig {
    fn default() -> Self {
        MongoConfig {
            uri: "mongodb://127.0.0.1:27017/?replicaSet=rs0".into(),
            database: "globalmart_dw".into(),
            write_batch_size: 1000,
            connect_timeout_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresConfig {
    /// The reconciliation's login: it only reads (`martstream_reader` in the local stack).
    pub url: String,
    /// The schema owner's login, used by `martstream migrate` only; empty: `url`.
    pub migrate_url: String,
    /// How long a reconciliation waits for a connection before the run counts as failed.
    pub connect_timeout_ms: u64,
}

impl PostgresConfig {
    /// The configuration `martstream migrate` connects with: the owner's URL if set.
    pub fn for_migrate(&self) -> PostgresConfig {
        let url = if self.migrate_url.is_empty() { self.url.clone() } else { self.migrate_url.clone() };
        PostgresConfig { url, ..self.clone() }
    }
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            url: "postgres://globalmart:globalmart123@127.0.0.1:55432/globalmart".into(),
            migrate_url: String::new(),
            connect_timeout_ms: 10_000,
        }
    }
}

/// The nightly reconciliation against PostgreSQL (`martstream run`; on demand with
/// `martstream reconcile`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconcileConfig {
    /// Run daily at `at` in `time_zone`. Off, `martstream reconcile` (and `POST /reconcile`)
    /// still run one on demand.
    pub schedule: bool,
    /// `enabled`, the former name of `schedule`, still read (and taken as `schedule`).
    #[serde(default, rename = "enabled", skip_serializing_if = "Option::is_none")]
    pub former_enabled: Option<bool>,
    /// Local time of day, "HH:MM".
    pub at: String,
    /// IANA time zone name of `at`, e.g. "Europe/Berlin".
    pub time_zone: String,
    /// The cut: events dated before midnight UTC of the date of (newest event − settle).
    pub settle_ms: u64,
    /// Closed days compared per day, ending the day before the cut (at most the daily
    /// retention the state holds).
    pub days: u32,
    /// After a failed run, try again this much later (until the next scheduled run).
    pub retry_after_ms: u64,
    /// Mismatches shown in full in a report.
    pub samples: usize,
    /// Changes of a repair listed in a report (all are counted).
    pub max_listed_changes: usize,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        ReconcileConfig {
            schedule: true,
            former_enabled: None,
            at: "02:00".into(),
            time_zone: "UTC".into(),
            settle_ms: 3_600_000,
            days: 90,
            retry_after_ms: 900_000,
            samples: 20,
            max_listed_changes: 10_000,
        }
    }
}

impl ReconcileConfig {
    pub fn time_of_day(&self) -> Result<chrono::NaiveTime, String> {
        chrono::NaiveTime::parse_from_str(&self.at, "%H:%M")
            .map_err(|_| format!("reconcile.at {:?} is not HH:MM", self.at))
    }

    pub fn zone(&self) -> Result<chrono_tz::Tz, String> {
        self.time_zone.parse().map_err(|_| format!("reconcile.time_zone {:?} is not an IANA time zone", self.time_zone))
    }
}

/// Which instant the views describe (SPEC §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Clock {
    /// Now, UTC.
    Wall,
    /// The largest event time applied so far.
    Event,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    /// `as_of` for `martstream run` (`replay` defaults to `event`).
    pub clock: Clock,
    /// Views lane (customer_rfm_analysis, product_performance, sales_trends): the least
    /// time between two view flushes. A flush starts as soon as the previous one is
    /// acknowledged and this much time has passed, so views trail the stream by about this
    /// plus one flush.
    pub flush_interval_ms: u64,
    /// The bulk lane (fact_sales, fact_returns, sessions, dim_*) writes as fast as MongoDB
    /// takes it, each flush as soon as the previous one is acknowledged. dim_customer's
    /// segment and lifetime value follow customer_rfm_analysis: a changed row is rewritten
    /// this long after its first change, with its latest value (a new customer's row carries
    /// its segment at once), so a busy stream rewrites a dimension row at most once per
    /// interval, and evenly: rows fall due as they changed, not all at once.
    pub dimension_interval_ms: u64,
    /// product_performance documents whose only change is their `rank_in_category` (another
    /// product passed them) are written at most this often, each once with its rank then; a
    /// product's own change is written at the next view flush with its current rank.
    pub rank_interval_ms: u64,
    /// customer_rfm_analysis documents a view flush writes at most for changes that are not
    /// the customer's own: a quintile boundary that moves across a tie group rescores the
    /// whole group, and a new date changes every recency. The rest wait for the next
    /// flushes, oldest first (`martstream_rfm_rescores_waiting`), so that the views of new
    /// events do not queue behind them. 0: all in the flush that moved them.
    pub rescores_per_flush: usize,
    /// Address of /metrics, /healthz and /readyz; empty to serve none.
    pub http_listen: String,
    /// When set, every `/v1` request needs `Authorization: Bearer <token>` (401 otherwise);
    /// /metrics, /healthz and /readyz stay open. A secret: masked wherever shown.
    pub api_token: String,
    /// Serve `/v1` on a non-loopback `http_listen` without `api_token` (refused otherwise).
    pub allow_unauthenticated: bool,
    /// First and longest wait between retries of a failed MongoDB write or DLQ send.
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    /// Consumption pauses while more facts than this wait for MongoDB (bounds memory during
    /// an outage; the views themselves coalesce and need no bound). It also bounds one
    /// flush, and so how long a snapshot waits for its flush's acknowledgement.
    pub max_pending_facts: usize,
    /// /readyz answers 503 while more messages than this wait to be read (over all input
    /// partitions): the views are too far behind to be called current.
    pub ready_max_lag: i64,
    /// After SIGTERM/SIGINT, how long the last flush and snapshot may take before the
    /// process exits 0 anyway (what MongoDB did not acknowledge is read again at the next
    /// start). Orchestrators kill after a grace period: keep this below it.
    pub shutdown_timeout_ms: u64,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            clock: Clock::Wall,
            flush_interval_ms: 200,
            dimension_interval_ms: 30000,
            rank_interval_ms: 5000,
            rescores_per_flush: 2000,
            http_listen: "127.0.0.1:9464".into(),
            api_token: String::new(),
            allow_unauthenticated: false,
            retry_initial_ms: 200,
            retry_max_ms: 10_000,
            max_pending_facts: 20_000,
            ready_max_lag: 100_000,
            shutdown_timeout_ms: 25_000,
        }
    }
}

/// Checkpointed snapshots of the state (`martstream run` only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotConfig {
    /// Restore from and write snapshots; off: every start rebuilds from the topic's beginning.
    pub enabled: bool,
    /// Snapshots go to `<dir>/<mongo.database>/`.
    pub dir: String,
    /// How often a snapshot is taken (when anything changed), besides one at shutdown.
    pub interval_ms: u64,
    /// How many snapshots are kept (older ones are fallbacks when the newest is unreadable).
    pub keep: usize,
}

/// Several instances sharing the input partitions (docs/DEPLOYMENT.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Share the partitions with the other instances on the same database (leases in
    /// MongoDB); off: this instance reads every partition.
    pub enabled: bool,
    /// This instance's id, stable across its restarts; empty: the host name.
    pub instance_id: String,
    /// A lease not renewed within this is taken by another instance (how long a killed
    /// instance's partitions wait).
    pub lease_ttl_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig { enabled: false, instance_id: String::new(), lease_ttl_ms: 10_000 }
    }
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        SnapshotConfig { enabled: true, dir: "var/snapshots".into(), interval_ms: 60_000, keep: 3 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter, e.g. `info` or `martstream=debug,rdkafka=warn`.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: "info".into(), format: LogFormat::Text }
    }
}

impl Config {
    /// Loads the layers. `file`: an explicit TOML file (must exist). `overrides`: dotted
    /// `key=value` pairs from the command line, values parsed as TOML (strings may be bare).
    pub fn load(file: Option<&Path>, overrides: &[(String, String)]) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::MissingFile(path.display().to_string()));
            }
            figment = figment.merge(Toml::file(path));
        }
        // MARTSTREAM_<SECTION>__<KEY>; variables without `__` (such as the stack script's
        // MARTSTREAM_STACK_DIR) are not configuration and are left alone.
        figment = figment.merge(Env::prefixed("MARTSTREAM_").filter(|k| k.as_str().contains("__")).split("__"));
        for (key, value) in overrides {
            figment = figment.merge(Serialized::globals(override_table(key, value)?));
        }
        let mut config: Config = figment.extract().map_err(|e| ConfigError::Figment(one_line(&e)))?;
        if let Some(on) = config.reconcile.former_enabled.take() {
            config.reconcile.schedule = on;
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks again after a command changed the configuration (e.g. `replay --into`).
    pub fn validate_again(&self) -> Result<(), ConfigError> {
        self.validate()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |msg: String| Err(ConfigError::Invalid(msg));
        if let Err(e) = self.reconcile.time_of_day().and(self.reconcile.zone().map(|_| ())) {
            return bad(e);
        }
        if self.reconcile.days == 0 {
            return bad("reconcile.days must be at least 1".into());
        }
        if self.kafka.brokers.trim().is_empty() {
            return bad("kafka.brokers is empty".into());
        }
        let k = &self.kafka;
        let mut names = vec![("kafka.topic", &k.topic), ("kafka.dlq_topic", &k.dlq_topic)];
        if !k.sessions_topic.is_empty() {
            names.extend([
                ("kafka.sessions_topic", &k.sessions_topic),
                ("kafka.sessions_dlq_topic", &k.sessions_dlq_topic),
            ]);
        }
        let mut distinct: Vec<&String> = names.iter().map(|(_, n)| *n).collect();
        distinct.sort();
        distinct.dedup();
        if distinct.len() != names.len() {
            return bad("kafka topics (topic, dlq_topic, sessions_topic, sessions_dlq_topic) must all differ".into());
        }
        for (key, name) in names {
            if name.is_empty()
                || name.len() > 249
                || !name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            {
                return bad(format!("{key} {name:?} is not a valid topic name"));
            }
        }
        if self.cluster.enabled {
            if !self.kafka.sessions_topic.is_empty() {
                return bad("cluster.enabled reads no sessions topic yet: set kafka.sessions_topic = \"\"".into());
            }
            if self.cluster.lease_ttl_ms < 1000 {
                return bad("cluster.lease_ttl_ms must be at least 1000".into());
            }
        }
        if self.kafka.partitions < 1 || self.kafka.replication_factor < 1 {
            return bad("kafka.partitions and kafka.replication_factor must be at least 1".into());
        }
        if self.mongo.database.is_empty() || self.mongo.database.contains(['/', '\\', '.', ' ', '"', '$']) {
            return bad(format!("mongo.database {:?} is not a valid database name", self.mongo.database));
        }
        if !(1..=100_000).contains(&self.mongo.write_batch_size) {
            return bad("mongo.write_batch_size must be between 1 and 100000".into());
        }
        if self.service.flush_interval_ms == 0
            || self.service.dimension_interval_ms == 0
            || self.service.rank_interval_ms == 0
            || self.service.retry_initial_ms == 0
            || self.service.shutdown_timeout_ms == 0
        {
            return bad(
                "service.flush_interval_ms, service.dimension_interval_ms, service.rank_interval_ms, service.retry_initial_ms and service.shutdown_timeout_ms must be positive"
                    .into(),
            );
        }
        if self.service.retry_max_ms < self.service.retry_initial_ms {
            return bad("service.retry_max_ms must be at least service.retry_initial_ms".into());
        }
        let listen = &self.service.http_listen;
        if !listen.is_empty()
            && !is_loopback(listen)
            && self.service.api_token.is_empty()
            && !self.service.allow_unauthenticated
        {
            return bad(format!(
                "service.http_listen {listen:?} is reachable from other hosts and service.api_token is empty: set a token \
                 (MARTSTREAM_SERVICE__API_TOKEN) or service.allow_unauthenticated = true"
            ));
        }
        if self.snapshot.enabled && (self.snapshot.dir.is_empty() || self.snapshot.interval_ms == 0) {
            return bad("snapshot.dir must be set and snapshot.interval_ms positive".into());
        }
        if !(1..=100).contains(&self.snapshot.keep) {
            return bad("snapshot.keep must be between 1 and 100".into());
        }
        let rfm = &self.views.rfm;
        for rule in &rfm.segments {
            for (axis, [lo, hi]) in [("r", rule.r), ("f", rule.f), ("m", rule.m)] {
                if !(1 <= lo && lo <= hi && hi <= 5) {
                    return bad(format!(
                        "views.rfm.segments {:?}: {axis} = [{lo}, {hi}] is not a range within 1..5",
                        rule.name
                    ));
                }
            }
        }
        let ascending = |v: &[f64]| v.windows(2).all(|w| w[0] <= w[1]);
        let as_f64 = |v: &[i64; 5]| v.map(|x| x as f64);
        if !ascending(&as_f64(&rfm.bins.recency))
            || !ascending(&as_f64(&rfm.bins.frequency))
            || !ascending(&rfm.bins.monetary)
        {
            return bad("views.rfm.bins edges must be ascending".into());
        }
        if self.views.dedup_horizon_days == 0 {
            return bad("views.dedup_horizon_days must be at least 1".into());
        }
        Ok(())
    }

    /// The configuration as TOML with secrets masked (for `check-config` and logs).
    pub fn redacted_toml(&self) -> String {
        let mut shown = self.clone();
        shown.mongo.uri = redact_uri(&shown.mongo.uri);
        shown.postgres.url = redact_uri(&shown.postgres.url);
        shown.postgres.migrate_url = redact_uri(&shown.postgres.migrate_url);
        if !shown.service.api_token.is_empty() {
            shown.service.api_token = "****".into();
        }
        for (key, value) in shown.kafka.librdkafka_options.iter_mut() {
            if is_secret_key(key) {
                *value = "****".into();
            }
        }
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render: {e}"))
    }
}

/// Whether a listen address (`host:port`) accepts connections from this host only.
fn is_loopback(listen: &str) -> bool {
    let host = listen.rsplit_once(':').map_or(listen, |(h, _)| h).trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Whether a librdkafka property holds a secret.
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k.contains("password") || k.contains("secret") || k.ends_with(".key.pem") || k.contains("jaas")
}

/// `scheme://user:pass@host/...` → `scheme://user:****@host/...`.
pub fn redact_uri(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return uri.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}://{user}:****@{host}{tail}")
        }
        None => uri.to_owned(),
    }
}

/// figment's message on one line: `<key>: <problem> (<where it came from>)`.
fn one_line(e: &figment::Error) -> String {
    e.clone()
        .into_iter()
        .map(|e| {
            let key = e
                .path
                .iter()
                .filter(|p| p.as_str() != "global" && p.as_str() != "default")
                .cloned()
                .collect::<Vec<_>>()
                .join(".");
            let origin = match e.metadata.as_ref() {
                Some(m) => match &m.source {
                    Some(figment::Source::File(path)) => format!(" (in {})", path.display()),
                    _ if m.name.contains("environment") => " (from a MARTSTREAM_* environment variable)".to_owned(),
                    _ if m.name.contains("Serialized") || m.name.contains("Value") => {
                        " (from the command line)".to_owned()
                    }
                    _ => String::new(),
                },
                None => String::new(),
            };
            let kind = e.kind.to_string().replace('`', "");
            if key.is_empty() {
                format!("{kind}{origin}")
            } else {
                format!("{key}: {kind}{origin}")
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn toml_file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn the_example_file_is_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/martstream.example.toml");
        let from_file: Config = Figment::new().merge(Toml::file(&path)).extract().unwrap();
        assert_eq!(from_file, Config::default());
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let f = toml_file("[kafka]\nbrokrs = \"x:1\"\n");
        let err = Config::load(Some(f.path()), &[]).unwrap_err().to_string();
        assert!(err.contains("brokrs"), "{err}");
        assert!(!err.contains('\n'));
        let f = toml_file("[kafak]\n");
        assert!(Config::load(Some(f.path()), &[]).unwrap_err().to_string().contains("kafak"));
    }

    #[test]
    fn file_then_overrides_win_in_order() {
        let f = toml_file(
            "[kafka]\ntopic = \"from-file\"\n[kafka.librdkafka_options]\n\"security.protocol\" = \"SASL_SSL\"\n",
        );
        let c = Config::load(
            Some(f.path()),
            &[("mongo.database".into(), "shadow".into()), ("service.flush_interval_ms".into(), "250".into())],
        )
        .unwrap();
        assert_eq!(c.kafka.topic, "from-file");
        assert_eq!(c.kafka.librdkafka_options["security.protocol"], "SASL_SSL");
        assert_eq!(c.mongo.database, "shadow");
        assert_eq!(c.service.flush_interval_ms, 250);
    }

    #[test]
    fn a_non_loopback_listener_needs_a_token_or_an_explicit_opt_out() {
        let load = |pairs: &[(&str, &str)]| {
            let pairs: Vec<(String, String)> = pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
            Config::load(None, &pairs)
        };
        for open in ["127.0.0.1:9464", "localhost:1", "[::1]:9464", ""] {
            assert!(load(&[("service.http_listen", open)]).is_ok(), "{open}");
        }
        let err = load(&[("service.http_listen", "0.0.0.0:9464")]).unwrap_err().to_string();
        assert!(err.contains("service.api_token is empty") && !err.contains('\n'), "{err}");
        assert!(load(&[("service.http_listen", "0.0.0.0:9464"), ("service.api_token", "s3cret")]).is_ok());
        assert!(load(&[("service.http_listen", "[::]:9464"), ("service.allow_unauthenticated", "true")]).is_ok());
        let c = load(&[("service.api_token", "s3cret-token")]).unwrap();
        assert!(!c.redacted_toml().contains("s3cret-token"));
    }

    #[test]
    fn reconcile_schedule_is_read_under_its_former_name_too() {
        let c = Config::load(None, &[("reconcile.schedule".into(), "false".into())]).unwrap();
        assert!(!c.reconcile.schedule);
        let f = toml_file("[reconcile]\nenabled = false\n");
        let c = Config::load(Some(f.path()), &[]).unwrap();
        assert!(!c.reconcile.schedule && c.reconcile.former_enabled.is_none());
        assert!(Config::load(None, &[]).unwrap().reconcile.schedule);
    }

    #[test]
    fn set_reaches_librdkafka_properties_through_quoted_keys() {
        let c = Config::load(
            None,
            &[
                ("kafka.librdkafka_options.\"receive.message.max.bytes\"".into(), "2000000".into()),
                ("kafka.librdkafka_options.'client.rack'".into(), "rack-a".into()),
                ("kafka.group_id".into(), "group = with spaces".into()),
            ],
        )
        .unwrap();
        assert_eq!(c.kafka.librdkafka_options["receive.message.max.bytes"], "2000000");
        assert_eq!(c.kafka.librdkafka_options["client.rack"], "rack-a");
        assert_eq!(c.kafka.group_id, "group = with spaces");
        let err = Config::load(None, &[("kafka.\"unclosed".into(), "1".into())]).unwrap_err().to_string();
        assert!(err.contains("invalid --set key") && !err.contains('\n'), "{err}");
    }

    #[test]
    fn invalid_values_are_explained() {
        let f = toml_file("[[views.rfm.segments]]\nname = \"X\"\nr = [0, 5]\nf = [1, 5]\nm = [1, 5]\n");
        let err = Config::load(Some(f.path()), &[]).unwrap_err().to_string();
        assert!(err.contains("\"X\""), "{err}");
        assert!(Config::load(Some(Path::new("/nonexistent.toml")), &[]).is_err());
        let err = Config::load(None, &[("kafka.dlq_topic".into(), "transactions".into())]).unwrap_err();
        assert!(err.to_string().contains("dlq_topic"));
    }

    #[test]
    fn secrets_are_masked() {
        assert_eq!(redact_uri("mongodb://gm:s3cret@h:27017/?x=1"), "mongodb://gm:****@h:27017/?x=1");
        assert_eq!(redact_uri("mongodb://h:27017/"), "mongodb://h:27017/");
        let mut c = Config::default();
        c.postgres.url = "postgres://u:pw@h/db".into();
        c.kafka.librdkafka_options.insert("sasl.password".into(), "pw".into());
        let shown = c.redacted_toml();
        assert!(!shown.contains("pw\"") && !shown.contains(":pw@"), "{shown}");
    }
}
