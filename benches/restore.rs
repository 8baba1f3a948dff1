//! Snapshot size and restore time at 100k / 1M / 5M customers (issue 5's benchmark).
//!
//! For each size: build the state in memory by applying purchases (1.2 per customer, 1–3
//! lines, 1,000 products, 90 days), flush it, then time
//! - `snapshot`: encode + atomic write with fsync (what the service does every interval);
//! - the worker's stall to capture one: the service encodes on the worker at a flush
//!   boundary and writes off it (issue 13), so the stall is the encode alone; cloning the
//!   engine (the alternative: encode on another thread) is timed beside it (each the median
//!   of three);
//! - `restore`: read the newest snapshot, verify its checksum, decode it into an engine;
//! - baselines from the same run: reading the file's bytes alone (the I/O floor), and
//!   rebuilding the same state by re-applying the already-decoded events (what a start
//!   without snapshots costs at the very least: no Kafka, no JSON).
//!
//! Also the engine's memory, per customer: resident memory grown by building the state and
//! by restoring it, each read after the allocator returned its free pages to the system
//! (jemalloc's purge; without it the figure is mostly the build's freed facts, which the
//! service's allocator returns within seconds too); and after the sizes a table of the
//! restored state's heap bytes per customer by part (jemalloc's allocated bytes, read as
//! each part is dropped).
//!
//! Run: `cargo bench --bench restore [-- 100000 1000000 5000000]`. Prints a Markdown table.

use std::time::Instant;

use chrono::{DateTime, Duration, Utc};
use martstream::domain::{Decoded, Engine, EventKind, LineItem, Location, Transaction, ViewConfig};
use martstream::snapshot::format::{encode, SnapshotMeta};
use martstream::snapshot::SnapshotStore;

/// The service's allocator (see `src/main.rs`), so the figures are the service's.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn events(customers: usize) -> Vec<Decoded> {
    let start: DateTime<Utc> = "2026-08-01T00:00:00Z".parse().unwrap();
    let n = customers + customers / 5;
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    (0..n)
        .map(|i| {
            let customer = if i < customers { i } else { (next() as usize) % customers };
            let lines = 1 + (next() % 3) as usize;
            let items: Vec<LineItem> = (0..lines)
                .map(|l| {
                    let p = (next() % 1000) as usize;
                    LineItem {
                        product_id: format!("P{p:05}"),
                        product_name: Some(format!("Item {p}")),
                        category: Some(format!("Category {}", p % 12)),
                        subcategory: None,
                        brand: None,
                        quantity: 1 + l as i64,
                        unit_price_cents: 199 + (p as i64) * 7,
                        discount_cents: 0,
                    }
                })
                .collect();
            let total = items.iter().map(|l| l.quantity * l.unit_price_cents).sum();
            let tx = Transaction {
                kind: EventKind::Purchase,
                transaction_id: format!("T{i:09}"),
                original_transaction_id: None,
                user_id: format!("C{customer:08}"),
                timestamp: start + Duration::seconds((i as i64 * 90 * 86_400) / n as i64),
                items,
                total_cents: total,
                payment_method: Some("card".into()),
                location: Some(Location { country: "Germany".into(), region: None, city: None, timezone: None }),
            };
            Decoded { fingerprint: i as u64, tx }
        })
        .collect()
}

fn build(events: &[Decoded]) -> Engine {
    let mut engine = Engine::new(ViewConfig::default());
    for e in events {
        engine.apply(e);
    }
    let as_of = engine.watermark().unwrap();
    engine.flush(as_of, true);
    engine
}

fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

/// Resident memory of this process, MiB (the service's own reading).
/// The median of three timings of `f`, in seconds.
fn median3(mut f: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..3)
        .map(|_| {
            let t = Instant::now();
            f();
            secs(t)
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[1]
}

fn rss_mib() -> f64 {
    martstream::telemetry::resident_bytes().map_or(0.0, |b| b as f64 / 1048576.0)
}

/// Resident memory, MiB, once jemalloc has returned every free page of every arena.
fn purged_rss_mib() -> f64 {
    // SAFETY: `arena.<MALLCTL_ARENAS_ALL>.purge` takes no arguments; the name is NUL-terminated.
    let rc = unsafe {
        tikv_jemalloc_sys::mallctl(
            c"arena.4096.purge".as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
    assert_eq!(rc, 0, "jemalloc purge");
    rss_mib()
}

fn main() {
    let sizes: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() { vec![100_000, 1_000_000, 5_000_000] } else { sizes };
    let dir = tempfile::tempdir().unwrap();
    println!("| customers | events | snapshot size | snapshot bytes/customer | snapshot (encode+fsync) | capture stall (encode) | clone instead | read bytes (floor) | restore (read+verify+decode) | rebuild by re-applying events | restore speed-up | resident after build B/customer | resident after restore B/customer |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut parts = Vec::new();
    for customers in sizes {
        let events = events(customers);
        let rss_before = purged_rss_mib();
        let t = Instant::now();
        let engine = build(&events);
        let rebuild = secs(t);
        let built_rss = (purged_rss_mib() - rss_before).max(0.0) * 1048576.0;
        let store = SnapshotStore::new(dir.path().join(customers.to_string()), 2);
        let meta = SnapshotMeta {
            taken_at_ms: 0,
            database: "bench".into(),
            positions: vec![("transactions".into(), 0, events.len() as i64)],
            views: ViewConfig::default(),
        };
        let t = Instant::now();
        let bytes = encode(&meta, &engine);
        let path = store.save(&bytes).unwrap();
        let snapshot = secs(t);
        let size = bytes.len();
        drop(bytes);
        // The stalls are short and the machine noisy: the median of three of each.
        let stall = median3(|| drop(encode(&meta, &engine)));
        let clone = median3(|| drop(engine.clone()));
        drop(engine);
        let t = Instant::now();
        let raw = std::fs::read(&path).unwrap();
        let read = secs(t);
        drop(raw);
        let rss_before = purged_rss_mib();
        let t = Instant::now();
        let (found, skipped) = store.load_newest(|_| Ok(())).unwrap();
        let restore = secs(t);
        assert!(skipped.is_empty());
        let restored = found.unwrap().1.engine;
        let restored_rss = (purged_rss_mib() - rss_before).max(0.0) * 1048576.0;
        assert_eq!(restored.rfm().customer_count(), customers);
        parts.push((customers, restored.bytes_by_part(allocated)));
        println!(
            "| {customers} | {} | {:.1} MiB | {:.0} | {snapshot:.2} s | {stall:.3} s | {clone:.3} s | {read:.3} s | {restore:.2} s | {rebuild:.2} s | {:.1}× | {:.0} | {:.0} |",
            events.len(),
            size as f64 / 1048576.0,
            size as f64 / customers as f64,
            rebuild / restore,
            built_rss / customers as f64,
            restored_rss / customers as f64
        );
        eprintln!("({customers} customers: peak RSS so far {:.0} MiB)", rss_mib());
    }
    // Where the memory goes: the restored state (no allocator leftovers of the build), each
    // part's heap bytes per customer.
    println!();
    println!("Heap bytes per customer by part of the restored state (jemalloc's allocated bytes, read as each part is dropped):");
    println!();
    let sizes: Vec<String> = parts.iter().map(|(c, _)| format!("{c} customers")).collect();
    println!("| part | {} |", sizes.join(" | "));
    println!("|---|{}", "---:|".repeat(parts.len()));
    let Some((_, first)) = parts.first() else { return };
    let per = |(c, p): &(usize, Vec<(&str, usize)>), i: usize| p[i].1 as f64 / *c as f64;
    for (i, (name, _)) in first.iter().enumerate() {
        let cells: Vec<String> = parts.iter().map(|x| format!("{:.0}", per(x, i))).collect();
        println!("| {name} | {} |", cells.join(" | "));
    }
    let totals: Vec<String> =
        parts.iter().map(|(c, p)| format!("{:.0}", p.iter().map(|x| x.1).sum::<usize>() as f64 / *c as f64)).collect();
    println!("| **all** | {} |", totals.join(" | "));
}

/// jemalloc's count of live heap bytes, current.
fn allocated() -> usize {
    tikv_jemalloc_ctl::epoch::advance().unwrap();
    tikv_jemalloc_ctl::stats::allocated::read().unwrap()
}
