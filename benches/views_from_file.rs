//! martstream's side of the DuckDB and PySpark comparisons: the same JSON-lines file, read,
//! decoded, deduplicated and applied, then every view produced (a full flush), on one core,
//! no I/O besides reading the file. Prints seconds and the number of customers.
//!
//! Run: `cargo bench --bench views_from_file -- FILE`.

use std::io::BufRead;
use std::time::Instant;

use martstream::domain::{decode, Engine, ViewConfig};

/// The service's allocator (see `src/main.rs`), so the figures are the service's.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    let path = std::env::args().skip(1).find(|a| !a.starts_with('-')).expect("a JSON-lines file");
    let started = Instant::now();
    let file = std::io::BufReader::new(std::fs::File::open(&path).expect("the file"));
    let mut engine = Engine::new(ViewConfig::default());
    let (mut lines, mut applied) = (0u64, 0u64);
    for line in file.lines() {
        let line = line.expect("a line");
        lines += 1;
        // No message timestamp in a file: the future-timestamp check is off.
        if let Ok(d) = decode(line.as_bytes(), None) {
            engine.apply(&d);
            applied += 1;
        }
    }
    let as_of = engine.watermark().expect("events");
    let views = engine.flush(as_of, true);
    let secs = started.elapsed().as_secs_f64();
    println!(
        "views_from_file: {lines} lines, {applied} decoded, {} customers, {} products, {} trend periods in {secs:.3} s",
        views.rfm.len(),
        views.products.upserts.len(),
        views.trends.upserts.len()
    );
}
