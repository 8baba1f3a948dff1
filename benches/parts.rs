//! The pure core split as a scale-out would split it (docs/DESIGN.md, "Scale-out"), in one
//! process and no I/O: the engine bench's stream (200k messages, 20k customers, 4 lanes by
//! key) applied by one engine, then by two parts (customers split by lane) plus the owner
//! of products and trends, exchanging value counts and partials at every flush (every
//! 10,000 events) — on one thread, and with each part on a thread of its own. Also what
//! one exchange carries. Prints one line per figure; medians of three.
//!
//! Run: `cargo bench --bench parts`.

use std::time::Instant;

use chrono::{DateTime, Utc};
use loadtest::{GenConfig, Generator};
use martstream::domain::partials::{Partials, SharedViews};
use martstream::domain::quintiles::RfmCounts;
use martstream::domain::warehouse::Restate;
use martstream::domain::{decode, Decoded, Engine, ViewConfig};

/// The service's allocator (see `src/main.rs`), so the figures are the service's.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const MESSAGES: usize = 200_000;
const FLUSH_EVERY: usize = 10_000;
const PARTS: usize = 2;

/// (event, lane, arrival)
type Input = (Decoded, u16, u64);

fn whole(events: &[Input], as_of: DateTime<Utc>) -> f64 {
    let started = Instant::now();
    let mut engine = Engine::new(ViewConfig::default());
    for chunk in events.chunks(FLUSH_EVERY) {
        for (e, lane, _) in chunk {
            engine.apply_on(e, *lane);
        }
        std::hint::black_box(engine.flush(as_of, false));
    }
    started.elapsed().as_secs_f64()
}

/// What the exchanges carried, summed over the run.
#[derive(Default)]
struct Carried {
    flushes: usize,
    count_changes: usize,
    product_days: usize,
    trend_days: usize,
}

/// Runs `work` on every part: in turn, or each on a thread of its own.
fn each(parts: &mut [Engine], threads: bool, work: impl Fn(usize, &mut Engine) + Sync) {
    if threads {
        std::thread::scope(|s| {
            for (i, part) in parts.iter_mut().enumerate() {
                let work = &work;
                s.spawn(move || work(i, part));
            }
        });
    } else {
        for (i, part) in parts.iter_mut().enumerate() {
            work(i, part);
        }
    }
}

fn split(events: &[Input], as_of: DateTime<Utc>, threads: bool) -> (f64, Carried) {
    let config = ViewConfig::default();
    let started = Instant::now();
    let mut parts: Vec<Engine> = (0..PARTS).map(|_| Engine::new_part(config.clone())).collect();
    let mut owner = SharedViews::new(&config);
    let mut all = RfmCounts::default();
    let mut carried = Carried::default();
    for chunk in events.chunks(FLUSH_EVERY) {
        each(&mut parts, threads, |i, part| {
            for (e, lane, arrival) in chunk.iter().filter(|(_, lane, _)| usize::from(*lane) % PARTS == i) {
                part.apply_part(e, *lane, *arrival);
            }
        });
        let mut gathered = Partials::default();
        for part in &mut parts {
            gathered.merge(part.take_partials().expect("a part"));
        }
        carried.flushes += 1;
        carried.count_changes += gathered.rfm_counts.len();
        carried.product_days += gathered.products.products.values().map(|p| p.days.len()).sum::<usize>();
        carried.trend_days += gathered.trends.days.len();
        all.apply(&gathered.rfm_counts);
        owner.apply(&gathered);
        let all = &all;
        each(&mut parts, threads, |_, part| {
            std::hint::black_box(part.flush_part_views(as_of, false, all));
            std::hint::black_box(part.flush_bulk(Restate::All));
        });
        std::hint::black_box(owner.flush(as_of, false));
    }
    (started.elapsed().as_secs_f64(), carried)
}

fn median(mut runs: Vec<f64>) -> f64 {
    runs.sort_by(f64::total_cmp);
    runs[runs.len() / 2]
}

fn main() {
    let messages: Vec<loadtest::Message> = Generator::new(GenConfig {
        seed: 1,
        events: MESSAGES,
        customers: 20_000,
        products: 1_000,
        ..GenConfig::default()
    })
    .collect();
    let lane = |key: &str| (xxhash_rust::xxh3::xxh3_64(key.as_bytes()) % 4) as u16;
    let events: Vec<Input> = messages
        .iter()
        .filter_map(|m| decode(m.payload.as_bytes(), Some(m.timestamp)).ok().map(|d| (d, lane(&m.key))))
        .enumerate()
        .map(|(i, (d, l))| (d, l, i as u64 + 1))
        .collect();
    let as_of = events.iter().map(|(d, _, _)| d.tx.timestamp).max().expect("events");
    let n = events.len() as f64;

    let one = median((0..3).map(|_| whole(&events, as_of)).collect());
    let serial = median((0..3).map(|_| split(&events, as_of, false).0).collect());
    let parallel = median((0..3).map(|_| split(&events, as_of, true).0).collect());
    let (_, carried) = split(&events, as_of, false);
    println!("parts_whole: one engine, one thread: {:.0} events/s", n / one);
    println!("parts_serial: {PARTS} parts and the owner, one thread: {:.0} events/s, {:.2}x", n / serial, one / serial);
    println!(
        "parts_parallel: {PARTS} parts on {PARTS} threads and the owner: {:.0} events/s, {:.2}x",
        n / parallel,
        one / parallel
    );
    let per = |x: usize| x as f64 / carried.flushes as f64;
    println!(
        "parts_exchange: per flush of {FLUSH_EVERY} events: {:.0} value count changes, {:.0} product-days, {:.0} trend days",
        per(carried.count_changes),
        per(carried.product_days),
        per(carried.trend_days)
    );
}
