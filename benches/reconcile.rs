//! Reconciliation time at N customers / M transactions (issue 6's benchmark), next to the
//! bare PostgreSQL aggregate it rides on, measured in the same run.
//!
//! Loads the load generator's valid transactions (seeded, 90 days) into a fresh PostgreSQL
//! database (the URL given; the schema is applied) and applies the same events to an engine;
//! then times
//! - baseline: the per-customer `GROUP BY` over the rows before the cut, streamed to the
//!   client and counted (the least any comparison must pay), plus the per-day query;
//! - reconciliation: the state's cut (figures of every customer at the cutoff) and the
//!   comparison of every customer and day with what PostgreSQL streams.
//!
//! Run: `cargo bench --bench reconcile -- CUSTOMERS TRANSACTIONS POSTGRES_URL`. Prints one
//! line per figure (`reconcile_*: …`).

use std::time::Instant;

use chrono::{DateTime, Duration, Utc};
use loadtest::postgres::{Drift, Injected, Writer};
use loadtest::{GenConfig, Generator, Label};
use martstream::config::PostgresConfig;
use martstream::domain::calendar::epoch_day;
use martstream::domain::{decode, Engine, ViewConfig};
use martstream::reconcile::compare_cut;
use martstream::reconcile::postgres::Postgres;

/// Resident memory of this process, MiB (the service's own reading).
fn rss_mib() -> f64 {
    martstream::telemetry::resident_bytes().map_or(0.0, |b| b as f64 / 1048576.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let customers: usize = args.first().map_or(Ok(100_000), |a| a.parse())?;
    let transactions: usize = args.get(1).map_or(Ok(1_000_000), |a| a.parse())?;
    let url =
        args.get(2).cloned().ok_or_else(|| anyhow::anyhow!("usage: reconcile CUSTOMERS TRANSACTIONS POSTGRES_URL"))?;

    let start: DateTime<Utc> = "2026-08-01T00:00:00Z".parse()?;
    let cfg = GenConfig {
        seed: 7,
        events: transactions,
        customers,
        products: 2000,
        start,
        days: 90,
        duplicate_rate: 0.0,
        conflict_rate: 0.0,
        malformed_rate: 0.0,
        ..GenConfig::default()
    };
    let loading = Instant::now();
    let mut pg = Writer::connect(&url).await?;
    let mut engine = Engine::new(ViewConfig::default());
    let (drift, mut injected) = (Drift::default(), Injected::default());
    for (i, m) in Generator::new(cfg).enumerate() {
        if m.label == Label::Valid {
            if let Ok(d) = decode(m.payload.as_bytes(), Some(m.timestamp)) {
                engine.apply(&d);
            }
        }
        if let Some(row) = injected.route(&drift, &m).to_postgres {
            pg.add(row).await?;
        }
        if i % 1_000_000 == 999_999 {
            engine.flush(start, false); // keeps the facts from piling up, as the service does
            eprintln!("reconcile: loaded {} transactions ({:.0} s)", i + 1, loading.elapsed().as_secs_f64());
        }
    }
    pg.flush().await?;
    engine.flush(engine.watermark().unwrap_or(start), false);
    println!(
        "reconcile_load: {} rows in PostgreSQL, {} customers in the state, in {:.1} s",
        pg.written,
        engine.rfm().customer_count(),
        loading.elapsed().as_secs_f64()
    );
    let pool = sqlx::PgPool::connect(&url).await?;
    sqlx::query("VACUUM ANALYZE transactions").execute(&pool).await?;

    let postgres =
        Postgres::connect_lazy(&PostgresConfig { url: url.clone(), connect_timeout_ms: 10_000, ..Default::default() })?;
    let cutoff = engine.watermark().unwrap_or(start).date_naive() - Duration::days(1);
    let cutoff_day = epoch_day(cutoff);
    // Warm both once (buffer cache), then time each twice and keep the better.
    let mut bare = f64::MAX;
    let mut full = f64::MAX;
    let mut checked = (0, 0, 0);
    for round in 0..3 {
        let t = Instant::now();
        let rows = postgres.count_customer_rows(cutoff_day).await?;
        postgres.days(cutoff_day - 90, cutoff_day).await?;
        if round > 0 {
            bare = bare.min(t.elapsed().as_secs_f64());
        }
        let rss_before = rss_mib();
        let t = Instant::now();
        let mut cut = engine.cut(cutoff, 90)?;
        let cut_s = t.elapsed().as_secs_f64();
        let rss_cut = rss_mib() - rss_before;
        let tally = compare_cut(&postgres, &mut cut, 20).await?;
        if round > 0 {
            full = full.min(t.elapsed().as_secs_f64());
        }
        checked = (tally.customers_checked, tally.days_checked, tally.mismatches());
        if round == 2 {
            println!(
                "reconcile_cut: {cut_s:.2} s to take the cut, {rss_cut:.0} MiB more resident while it is held; {rows} customers from PostgreSQL"
            );
        }
    }
    println!(
        "reconcile_time: {customers} customers / {transactions} transactions: reconciliation {full:.2} s, bare PostgreSQL aggregate {bare:.2} s, ratio {:.2}x; {} customers and {} days checked, {} mismatches",
        full / bare,
        checked.0,
        checked.1,
        checked.2
    );
    Ok(())
}
