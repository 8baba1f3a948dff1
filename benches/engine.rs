//! Engine throughput on one core, no I/O (criterion): decoded events → state, and JSON
//! payloads → decode → state, each next to a baseline measured in the same run:
//! - `baseline_count_sum`: the least any per-customer aggregation must do (a hash map of
//!   count and sum per user_id over the same decoded events);
//! - `baseline_json_parse`: serde_json parsing the same payloads into a `Value`; `decode`
//!   (decode and validate, the fingerprint included) is measured against it.
//!
//! The stream is the load generator's (200k messages, 20k customers, 1–4 line baskets,
//! refunds, duplicates, malformed), so the engine also dedups, keeps products, trends and the
//! star schema. As in the service, a flush comes every 10,000 events (about a second at 10k
//! events/s) and ends each pass; its as_of is fixed (the stream's last event time), as the
//! wall clock's date is within a day: the stream packs 90 days of event time into 200k
//! events, and a new as_of date rescores every customer. Run: `cargo bench --bench engine`;
//! `scripts/bench` turns the estimates into events/s.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use loadtest::{GenConfig, Generator};
use martstream::domain::{decode, Decoded, Engine, ViewConfig};

/// The service's allocator (see `src/main.rs`), so the figures are the service's.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const MESSAGES: usize = 200_000;

fn stream() -> Vec<loadtest::Message> {
    Generator::new(GenConfig { seed: 1, events: MESSAGES, customers: 20_000, products: 1_000, ..GenConfig::default() })
        .collect()
}

const FLUSH_EVERY: usize = 10_000;

fn flush(engine: &mut Engine, as_of: DateTime<Utc>) {
    criterion::black_box(engine.flush(as_of, false));
}

fn run_engine(events: &[(Decoded, u16)], as_of: DateTime<Utc>) -> Engine {
    let mut engine = Engine::new(ViewConfig::default());
    for chunk in events.chunks(FLUSH_EVERY) {
        for (e, lane) in chunk {
            engine.apply_on(e, *lane);
        }
        flush(&mut engine, as_of);
    }
    engine
}

fn benches(c: &mut Criterion) {
    let messages = stream();
    let lane = |key: &str| (xxhash_rust::xxh3::xxh3_64(key.as_bytes()) % 4) as u16;
    let decoded: Vec<(Decoded, u16)> = messages
        .iter()
        .filter_map(|m| decode(m.payload.as_bytes(), Some(m.timestamp)).ok().map(|d| (d, lane(&m.key))))
        .collect();
    let as_of = decoded.iter().map(|(d, _)| d.tx.timestamp).max().expect("events");

    let mut g = c.benchmark_group("engine");
    g.sample_size(10);
    g.throughput(Throughput::Elements(decoded.len() as u64));
    g.bench_function("baseline_count_sum", |b| {
        b.iter(|| {
            let mut per_user: HashMap<&str, (u32, i64)> = HashMap::new();
            for (d, _) in &decoded {
                let e = per_user.entry(d.tx.user_id.as_str()).or_default();
                e.0 += 1;
                e.1 += d.tx.total_cents;
            }
            per_user
        })
    });
    g.bench_function("apply", |b| b.iter_batched(|| (), |()| run_engine(&decoded, as_of), BatchSize::PerIteration));

    g.throughput(Throughput::Elements(messages.len() as u64));
    g.bench_function("baseline_json_parse", |b| {
        b.iter(|| {
            messages
                .iter()
                .filter_map(|m| serde_json::from_slice::<serde_json::Value>(m.payload.as_bytes()).ok())
                .count()
        })
    });
    g.bench_function("decode", |b| {
        b.iter(|| messages.iter().filter_map(|m| decode(m.payload.as_bytes(), Some(m.timestamp)).ok()).count())
    });
    g.bench_function("decode_apply", |b| {
        b.iter(|| {
            let mut engine = Engine::new(ViewConfig::default());
            for chunk in messages.chunks(FLUSH_EVERY) {
                for m in chunk {
                    if let Ok(d) = decode(m.payload.as_bytes(), Some(m.timestamp)) {
                        engine.apply_on(&d, lane(&m.key));
                    }
                }
                flush(&mut engine, as_of);
            }
            engine
        })
    });
    g.finish();
}

criterion_group!(engine, benches);
criterion_main!(engine);
