//! The command line: `run`, `replay`, `reconcile`, `migrate`, `topics create`, `check-config`. Parses arguments,
//! loads the configuration and starts the adapters; every failure at start is one line on
//! stderr and a non-zero exit.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::checkpoint::{self, Checkpointer};
use crate::config::{redact_uri, Clock, Config};
use crate::domain::Engine;
use crate::health::Health;
use crate::kafka::dlq::{DeadLetters, Policy as DeadLetterPolicy, SentLetters};
use crate::kafka::source::{Source, StartAt};
use crate::kafka::topics::{self, Created};
use crate::pipeline::{AsOf, Backoff, Cadence, Input, InputKind, Pipeline, Summary, Until, Worker};
use crate::sink::mongo::MongoSink;
use crate::snapshot::SnapshotStore;
use crate::telemetry::{self, Metrics};

#[derive(Debug, Parser)]
#[command(name = "martstream", version, about = "GlobalMart's sales stream as an always-current analytics warehouse")]
pub struct Cli {
    /// TOML configuration file (every key: config/martstream.example.toml).
    #[arg(long, short, global = true, env = "MARTSTREAM_CONFIG")]
    pub config: Option<PathBuf>,
    /// Override kafka.brokers.
    #[arg(long, global = true)]
    pub brokers: Option<String>,
    /// Override kafka.topic.
    #[arg(long, global = true)]
    pub topic: Option<String>,
    /// Override mongo.uri.
    #[arg(long, global = true)]
    pub mongo_uri: Option<String>,
    /// Override mongo.database.
    #[arg(long, global = true)]
    pub database: Option<String>,
    /// Override log.level.
    #[arg(long, global = true)]
    pub log_level: Option<String>,
    /// Override any key: --set views.rfm.scoring=bins (repeatable).
    #[arg(long = "set", global = true, value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub set: Vec<(String, String)>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Always-on: consume the topic, keep the state, flush changed views to MongoDB.
    Run(ClockArgs),
    /// Read from an offset or a time to the current end of the topic, write the views, exit.
    Replay(ReplayArgs),
    /// Topic administration.
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
    /// Reconcile the running service's state against PostgreSQL now (asks `run` at
    /// service.http_listen), print the report; also written to reconciliation_reports.
    Reconcile(ReconcileArgs),
    /// Apply the operational schema (migrations/) to postgres.url.
    Migrate,
    /// Validate the configuration and print it (secrets masked).
    CheckConfig,
}

#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// PostgreSQL wins: set the mismatched customers' and days' state from its rows and
    /// rewrite their views.
    #[arg(long)]
    pub repair: bool,
    /// Compare the events dated before this date (UTC midnight). Default: the date of the
    /// newest event minus reconcile.settle_ms.
    #[arg(long, value_name = "YYYY-MM-DD")]
    pub cutoff: Option<chrono::NaiveDate>,
    /// The running service's address (default: service.http_listen).
    #[arg(long, value_name = "HOST:PORT")]
    pub service: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// Create the input and dead-letter topics (topics/topics.toml) if they do not exist.
    Create,
}

#[derive(Debug, Args)]
pub struct ClockArgs {
    /// wall (now, UTC) or event (largest applied event time). Default: service.clock for
    /// `run`, event for `replay`.
    #[arg(long, value_enum)]
    pub clock: Option<Clock>,
    /// A fixed as_of instant (RFC 3339); overrides the clock.
    #[arg(long, value_name = "RFC3339")]
    pub as_of: Option<DateTime<Utc>>,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Start at this offset on every partition, or PARTITION:OFFSET,... (default: beginning).
    #[arg(long, value_name = "OFFSET", conflicts_with = "from_timestamp")]
    pub from_offset: Option<StartAt>,
    /// Start at the first message at or after this instant (RFC 3339).
    #[arg(long, value_name = "RFC3339")]
    pub from_timestamp: Option<DateTime<Utc>>,
    #[command(flatten)]
    pub clock: ClockArgs,
    /// Backfill into this database (a shadow) instead of mongo.database, with its own
    /// consumer group; the live views are not touched.
    #[arg(long, value_name = "DATABASE")]
    pub into: Option<String>,
    /// After the backfill, promote the shadow's collections into mongo.database, each
    /// atomically (renameCollection with dropTarget).
    #[arg(long, requires = "into")]
    pub swap: bool,
    /// Read at most this many messages per second (spares the broker and MongoDB).
    #[arg(long, value_name = "MESSAGES_PER_SECOND", value_parser = clap::value_parser!(u32).range(1..))]
    pub rate: Option<u32>,
    /// Which rejections go to the dead-letter topics: `new` sends only those whose source
    /// message the DLQ holds no letter of yet (the live service or an earlier run sent the
    /// others), `all` every one again, `none` nothing (counted and logged only).
    #[arg(long, value_enum, default_value = "new")]
    pub dead_letters: DeadLetterPolicy,
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

impl Cli {
    fn load_config(&self) -> Result<Config> {
        let mut overrides = Vec::new();
        let mut flag = |key: &str, v: &Option<String>| {
            if let Some(v) = v {
                overrides.push((key.to_owned(), format!("{v:?}")));
            }
        };
        flag("kafka.brokers", &self.brokers);
        flag("kafka.topic", &self.topic);
        flag("mongo.uri", &self.mongo_uri);
        flag("mongo.database", &self.database);
        flag("log.level", &self.log_level);
        overrides.extend(self.set.iter().cloned());
        Ok(Config::load(self.config.as_deref(), &overrides)?)
    }
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> Result<()> {
    let config = cli.load_config()?;
    telemetry::init_logging(&config.log);
    match &cli.command {
        Command::CheckConfig => {
            print!("{}", config.redacted_toml());
            Ok(())
        }
        Command::Topics { command: TopicsCommand::Create } => {
            for created in topics::create_all(&config.kafka).await? {
                match created {
                    Created::Created(name) => println!("created {name}"),
                    Created::Existed(name) => println!("exists  {name}"),
                }
            }
            Ok(())
        }
        Command::Migrate => {
            let owner = config.postgres.for_migrate();
            let pg = crate::reconcile::postgres::Postgres::connect_lazy(&owner)?;
            pg.migrate().await?;
            println!("schema up to date in {}", redact_uri(&owner.url));
            Ok(())
        }
        Command::Reconcile(args) => reconcile_now(&config, args).await,
        Command::Run(clock) => {
            let as_of = as_of_policy(clock, config.service.clock);
            if config.cluster.enabled {
                return run_in_cluster(&config, as_of).await;
            }
            let plan = Plan {
                start: StartAt::Beginning,
                as_of,
                service: true,
                rate: None,
                dims_from: None,
                dead_letters: DeadLetterPolicy::New,
            };
            let summary = consume(&config, plan).await?;
            info!(consumed = summary.consumed, "stopped");
            Ok(())
        }
        Command::Replay(args) => {
            let start = match (&args.from_offset, args.from_timestamp) {
                (Some(o), _) => o.clone(),
                (None, Some(t)) => StartAt::Timestamp(t),
                (None, None) => StartAt::Beginning,
            };
            let as_of = as_of_policy(&args.clock, Clock::Event);
            let live = config.mongo.database.clone();
            let mut config = config;
            if let Some(into) = &args.into {
                if *into == live {
                    anyhow::bail!("--into {into:?} is the live database; replay without --into writes there");
                }
                config.mongo.database = into.clone();
                config.kafka.group_id = format!("{}-backfill-{into}", config.kafka.group_id);
                config.validate_again()?;
            }
            // Dimensions (and so surrogate keys) start from the live ones, so a swapped-in
            // backfill keeps the live numbering.
            let dims_from = args.into.as_ref().map(|_| live.clone());
            let plan =
                Plan { start, as_of, service: false, rate: args.rate, dims_from, dead_letters: args.dead_letters };
            let s = consume(&config, plan).await?;
            println!(
                "replayed {} messages: {} applied, {} duplicates, {} dead-lettered ({} already in the DLQ or --dead-letters none, not sent); wrote {} documents; as_of {}; read in {:.1} s, then {:.1} s for the last writes{}",
                s.consumed,
                s.applied,
                s.duplicates,
                s.dead_lettered,
                s.rejected_not_sent,
                s.documents_written,
                s.as_of.map_or("-".into(), |t| t.to_rfc3339()),
                s.reading.as_secs_f64(),
                s.draining.as_secs_f64(),
                s.indexing.map_or(String::new(), |t| format!(
                    ", then {:.1} s building the secondary indexes (loaded into an empty database first)",
                    t.as_secs_f64()
                ))
            );
            if args.swap {
                let shadow = MongoSink::connect(&config.mongo).await?;
                let moved = shadow.promote_into(&live).await?;
                println!(
                    "swapped {} collections from {} into {live}: {}",
                    moved.len(),
                    config.mongo.database,
                    moved.join(", ")
                );
            }
            Ok(())
        }
    }
}

/// `martstream reconcile`: asks the running service, prints a summary and the report.
async fn reconcile_now(config: &Config, args: &ReconcileArgs) -> Result<()> {
    let addr = args.service.clone().unwrap_or_else(|| config.service.http_listen.clone());
    anyhow::ensure!(!addr.is_empty(), "service.http_listen is empty: pass --service HOST:PORT of the running service");
    let mut url = format!("http://{addr}/v1/reconcile?repair={}", args.repair);
    if let Some(c) = args.cutoff {
        url.push_str(&format!("&cutoff={c}"));
    }
    let token = config.service.api_token.clone();
    let answer = tokio::task::spawn_blocking(move || {
        let mut request = ureq::post(&url).timeout(Duration::from_secs(3600));
        if !token.is_empty() {
            request = request.set("Authorization", &format!("Bearer {token}"));
        }
        match request.call() {
            Ok(r) => r.into_json::<serde_json::Value>().map_err(anyhow::Error::from),
            Err(ureq::Error::Status(code, r)) => {
                let body: serde_json::Value = r.into_json().unwrap_or_default();
                Err(anyhow::anyhow!("the service answered {code}: {}", body["error"].as_str().unwrap_or("?")))
            }
            Err(e) => Err(anyhow::anyhow!("cannot reach the service at {addr} (is `martstream run` up?): {e}")),
        }
    })
    .await??;
    println!("{}", serde_json::to_string_pretty(&answer)?);
    let outcome = answer["outcome"].as_str().unwrap_or("?");
    eprintln!(
        "reconciliation {outcome}: cutoff {}, {} customers and {} days checked, {} mismatches, {} changes",
        answer["cutoff"].as_str().unwrap_or("-"),
        answer["customers_checked"],
        answer["days_checked"],
        answer["mismatches_total"],
        answer["changes_total"],
    );
    anyhow::ensure!(outcome != "failed", "reconciliation failed: {}", answer["error"].as_str().unwrap_or("?"));
    Ok(())
}

fn as_of_policy(args: &ClockArgs, default: Clock) -> AsOf {
    match (args.as_of, args.clock.unwrap_or(default)) {
        (Some(t), _) => AsOf::Fixed(t),
        (None, Clock::Wall) => AsOf::Wall,
        (None, Clock::Event) => AsOf::Event,
    }
}

/// How a consumption runs.
struct Plan {
    start: StartAt,
    as_of: AsOf,
    /// `run`: follow forever, serve HTTP, snapshots. Otherwise `replay`: to the end.
    service: bool,
    rate: Option<u32>,
    /// A backfill: copy this (live) database's dimensions into the one written, first.
    dims_from: Option<String>,
    /// Which rejections are sent to the DLQ (`run`: each bad message once).
    dead_letters: DeadLetterPolicy,
}

/// Starts every adapter, then consumes: to the end of the topic (`replay`) or until a signal.
async fn consume(config: &Config, plan: Plan) -> Result<Summary> {
    let Plan { start, as_of, service, rate, dims_from, dead_letters } = plan;
    let (to_end, serve_http) = (!service, service);
    let metrics = Metrics::new();
    let health = Arc::new(Health::new(config.service.ready_max_lag));
    let shutdown = CancellationToken::new();
    install_signal_handlers(shutdown.clone());

    let k = &config.kafka;
    let mut topics = vec![k.topic.clone()];
    let mut inputs = vec![Input { kind: InputKind::Transactions, dlq_topic: k.dlq_topic.clone() }];
    if !k.sessions_topic.is_empty() {
        topics.push(k.sessions_topic.clone());
        inputs.push(Input { kind: InputKind::Sessions, dlq_topic: k.sessions_dlq_topic.clone() });
    }
    let source = Source::connect(k, topics)?;
    let sink = MongoSink::connect(&config.mongo).await?;
    if let Some(live) = &dims_from {
        let n = sink.copy_dimensions_from(live).await?;
        info!(from = %live, into = %config.mongo.database, collections = n, "dimensions copied for the backfill");
    }
    // A replay into an empty database loads first and builds the secondary indexes after
    // (each document then costs one index entry, not five to seven), as mongorestore does.
    let bulk_load = !service && sink.is_empty().await?;
    if bulk_load {
        sink.prepare_collections().await?;
        info!(database = %config.mongo.database, "phase 1/2: loading into an empty database; secondary indexes are built afterwards");
    } else {
        sink.prepare().await?;
    }
    health.set_mongo_ok(true);
    let mut control = None;
    let mut reconciler = None;
    // Reconciliation on demand is always there in the service; the daily run only when
    // scheduled.
    if service {
        let (tx, rx) = crate::reconcile::channel();
        control = Some(rx);
        let pg = crate::reconcile::postgres::Postgres::connect_lazy(&config.postgres)?;
        let r = Arc::new(crate::reconcile::Reconciler::new(
            pg,
            sink.database(),
            tx,
            (metrics.clone(), health.clone()),
            config.reconcile.clone(),
        ));
        if config.reconcile.schedule {
            tokio::spawn(crate::reconcile::schedule::run(r.clone(), shutdown.child_token()));
        }
        reconciler = Some(r);
    }
    let queries = match serve_http {
        true => serve_api(config, (&metrics, &health), reconciler, &shutdown).await?,
        false => None,
    };

    // `run` resumes from the newest usable snapshot; `replay` always rebuilds.
    let mut start = start;
    let mut engine = Engine::new(config.views.clone());
    let mut checkpoints = None;
    if serve_http && config.snapshot.enabled {
        let store =
            SnapshotStore::new(Path::new(&config.snapshot.dir).join(&config.mongo.database), config.snapshot.keep);
        let restored = checkpoint::restore(&store, &config.mongo.database, &config.views, &source.topics, &metrics)
            .with_context(|| format!("reading snapshots in {}", store.dir().display()))?;
        if restored.is_none() {
            info!(dir = %store.dir().display(), "no snapshot: building the state from the beginning of the topics");
        }
        let c = Checkpointer::new(
            store,
            (config.mongo.database.clone(), config.views.clone()),
            source.topics.clone(),
            Duration::from_millis(config.snapshot.interval_ms),
            metrics.clone(),
        );
        let mut restored_at = None;
        if let Some(r) = restored {
            engine = r.engine;
            restored_at = Some(r.taken_at_ms);
            start = StartAt::Resume(r.positions);
        }
        checkpoints = Some((c, restored_at));
    }
    let end: std::collections::BTreeMap<_, _> =
        source.watermarks()?.into_iter().map(|(tp, (_, high))| (tp, high)).collect();
    let positions = source.assign(&start).context("assigning partitions")?;
    let dlq = dead_letter_producer(config, dead_letters, &source.topics, &positions)?;
    health.set_partitions(positions.len());
    metrics.partitions_assigned.set(positions.len() as i64);
    health.set_state_ready(true);
    info!(
        topics = ?source.topics,
        partitions = positions.len(),
        mongo = %redact_uri(&config.mongo.uri),
        database = %config.mongo.database,
        ?as_of,
        "consuming"
    );

    let cadence = Cadence {
        as_of,
        flush_every: Duration::from_millis(config.service.flush_interval_ms),
        dimension_every: Duration::from_millis(config.service.dimension_interval_ms),
        rank_every: Duration::from_millis(config.service.rank_interval_ms),
        rescores_per_flush: (config.service.rescores_per_flush > 0).then_some(config.service.rescores_per_flush),
        backoff: Backoff {
            initial: Duration::from_millis(config.service.retry_initial_ms),
            max: Duration::from_millis(config.service.retry_max_ms),
        },
        max_pending_facts: config.service.max_pending_facts,
        max_rate: rate,
        shutdown_timeout: Duration::from_millis(config.service.shutdown_timeout_ms),
    };
    let keys = sink.preload_keys(&mut engine).await?;
    info!(keys, "surrogate keys loaded from the warehouse");
    let mut worker = Worker::new(engine, dlq, (metrics, health), cadence, (inputs, positions.clone()));
    if let Some((mut c, restored_at)) = checkpoints {
        c.starting_at(positions, restored_at);
        worker = worker.with_checkpoints(c);
    }
    // Whatever this start began from, MongoDB may hold documents the state does not: once
    // the backlog is read, one complete flush (until then only facts and new keys are
    // written). `replay` reads to the end and ends with that flush.
    let slack = if service { config.service.ready_max_lag } else { 0 };
    worker = worker.converge_after(end.clone(), slack);
    let until = if to_end { Until::Offsets(end) } else { Until::Forever };
    let mut summary = Pipeline { source, worker, queries, control }.run(sink.clone(), until, to_end, shutdown).await;
    if bulk_load {
        // Also after an interrupted replay: whatever starts next on this database would
        // build them anyway.
        let t = std::time::Instant::now();
        info!(indexes = crate::sink::documents::INDEXES.len(), "phase 2/2: building the secondary indexes");
        sink.create_indexes().await?;
        summary.indexing = Some(t.elapsed());
    }
    Ok(summary)
}

/// The DLQ producer; with [`DeadLetterPolicy::New`], after reading which source messages
/// from `positions` on the DLQ topics already hold a letter of.
fn dead_letter_producer(
    config: &Config,
    policy: DeadLetterPolicy,
    topics: &[String],
    positions: &std::collections::BTreeMap<(usize, i32), i64>,
) -> Result<DeadLetters> {
    let k = &config.kafka;
    let mut sent = SentLetters::default();
    if policy == DeadLetterPolicy::New {
        let t = std::time::Instant::now();
        let from = positions.iter().map(|(&(t, p), &o)| ((topics[t].clone(), p), o)).collect();
        let dlq_topics: Vec<String> =
            [&k.dlq_topic, &k.sessions_dlq_topic].into_iter().filter(|t| !t.is_empty()).cloned().collect();
        sent = tokio::task::block_in_place(|| SentLetters::load(k, &dlq_topics, &from))
            .context("reading the dead-letter topics for the letters already sent")?;
        info!(letters = sent.len(), seconds = t.elapsed().as_secs_f64(), "dead letters already sent, not sent again");
    }
    Ok(DeadLetters::new(k, policy, sent)?)
}

/// Serves /metrics, /healthz, /readyz and the query API on `service.http_listen` (none when
/// it is empty); the queries arrive on the receiver returned.
async fn serve_api(
    config: &Config,
    (metrics, health): (&Metrics, &Arc<Health>),
    reconciler: Option<Arc<crate::reconcile::Reconciler>>,
    shutdown: &CancellationToken,
) -> Result<Option<tokio::sync::mpsc::Receiver<crate::query::Request>>> {
    if config.service.http_listen.is_empty() {
        return Ok(None);
    }
    let (client, rx) = crate::query::channel();
    let (addr, _) = crate::http::serve(
        &config.service.http_listen,
        (metrics.clone(), health.clone()),
        (client, reconciler),
        &config.service.api_token,
        shutdown.child_token(),
    )
    .await?;
    info!(%addr, "serving /metrics, /healthz, /readyz and the query API under /v1");
    Ok(Some(rx))
}

/// `run` with `cluster.enabled`: this instance holds the partitions its leases give it
/// (see [`crate::cluster::node`]).
async fn run_in_cluster(config: &Config, as_of: AsOf) -> Result<()> {
    use crate::cluster::leases::Leases;
    use crate::cluster::node::{Node, NodeParts, NodeSettings};
    let metrics = Metrics::new();
    let health = Arc::new(Health::new(config.service.ready_max_lag));
    let shutdown = CancellationToken::new();
    install_signal_handlers(shutdown.clone());
    let k = &config.kafka;
    let source = Source::connect(k, vec![k.topic.clone()])?;
    let sink = MongoSink::connect(&config.mongo).await?;
    sink.prepare().await?;
    health.set_mongo_ok(true);
    let queries = serve_api(config, (&metrics, &health), None, &shutdown).await?;
    let instance = match config.cluster.instance_id.as_str() {
        "" => std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| format!("martstream-{}", std::process::id())),
        id => id.to_owned(),
    };
    let from_start = source.partitions.iter().map(|&tp| (tp, 0)).collect();
    let dlq = dead_letter_producer(config, DeadLetterPolicy::New, &source.topics, &from_start)?;
    let lease_ttl = Duration::from_millis(config.cluster.lease_ttl_ms);
    let leases = Leases::new(sink.database(), instance, lease_ttl);
    let settings = NodeSettings {
        topic: k.topic.clone(),
        dlq_topic: k.dlq_topic.clone(),
        database: config.mongo.database.clone(),
        views: config.views.clone(),
        as_of,
        flush_every: Duration::from_millis(config.service.flush_interval_ms),
        snapshot_every: Duration::from_millis(config.snapshot.interval_ms),
        lease_ttl,
        backoff: Backoff {
            initial: Duration::from_millis(config.service.retry_initial_ms),
            max: Duration::from_millis(config.service.retry_max_ms),
        },
        shutdown_timeout: Duration::from_millis(config.service.shutdown_timeout_ms),
    };
    let parts = NodeParts { source: Arc::new(source), sink, leases, dlq, metrics, health, queries };
    Node::new(settings, parts).run(shutdown).await?;
    info!("stopped");
    Ok(())
}

/// First SIGTERM/SIGINT: graceful (flush, then exit). Second: exit at once. The signal
/// streams are created once: a fresh `ctrl_c()` future can fire again on a signal that
/// was already handled.
fn install_signal_handlers(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::warn!("cannot install signal handlers");
        return;
    };
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        info!("shutting down: flushing views (signal again to exit at once)");
        shutdown.cancel();
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        eprintln!("martstream: second signal, exiting at once");
        std::process::exit(130);
    });
}
