//! martstream's side of the DuckDB and PySpark comparisons: the same JSON-lines file, read,
//! decoded, deduplicated and applied, then every view produced (a full flush), no I/O
//! besides reading the file. Twice: on one core (read, decode and apply in turn), then as
//! the service runs (`pipeline::decode_stage`): reading and decoding on a second thread,
//! in order, feeding the single-writer engine. Prints seconds and sizes for each.
//!
//! Run: `cargo bench --bench views_from_file -- FILE`.

use std::io::BufRead;
use std::sync::mpsc;
use std::time::Instant;

use martstream::domain::{decode, Decoded, Engine, ViewConfig};

/// The service's allocator (see `src/main.rs`), so the figures are the service's.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Decoded events handed over at once, and batches decoded ahead of the engine at most.
const BATCH: usize = 256;
const AHEAD: usize = 16;

/// Calls `each` with every line of the file, as bytes (as a Kafka message arrives: the
/// decoder checks its UTF-8 itself), from one reused buffer.
fn for_each_line(path: &str, mut each: impl FnMut(&[u8])) {
    let mut file = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(path).expect("the file"));
    let mut line = Vec::with_capacity(4096);
    while file.read_until(b'\n', &mut line).expect("a line") > 0 {
        each(line.strip_suffix(b"\n").unwrap_or(&line));
        line.clear();
    }
}

/// No message timestamp in a file: the future-timestamp check is off.
fn decoded(line: &[u8]) -> Option<Decoded> {
    decode(line, None).ok()
}

fn report(label: &str, started: Instant, engine: &mut Engine, lines: u64, applied: u64) {
    let as_of = engine.watermark().expect("events");
    let flushing = Instant::now();
    let views = engine.flush(as_of, true);
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{label}: {lines} lines, {applied} decoded, {} customers, {} products, {} trend periods, {} facts in {secs:.3} s (the views' flush {:.3} s)",
        views.rfm.len(),
        views.products.upserts.len(),
        views.trends.upserts.len(),
        views.facts.len(),
        flushing.elapsed().as_secs_f64()
    );
}

fn one_core(path: &str) {
    let started = Instant::now();
    let mut engine = Engine::new(ViewConfig::default());
    let (mut read, mut applied) = (0u64, 0u64);
    for_each_line(path, |line| {
        read += 1;
        if let Some(d) = decoded(line) {
            engine.apply(&d);
            applied += 1;
        }
    });
    report("views_from_file", started, &mut engine, read, applied);
}

fn decode_beside(path: &str) {
    let started = Instant::now();
    let (tx, rx) = mpsc::sync_channel::<(u64, Vec<Decoded>)>(AHEAD);
    let path = path.to_owned();
    let reader = std::thread::spawn(move || {
        let (mut read, mut batch) = (0u64, Vec::with_capacity(BATCH));
        for_each_line(&path, |line| {
            read += 1;
            batch.extend(decoded(line));
            if batch.len() == BATCH {
                tx.send((read, std::mem::replace(&mut batch, Vec::with_capacity(BATCH)))).expect("the engine");
                read = 0;
            }
        });
        tx.send((read, batch)).expect("the engine");
    });
    let mut engine = Engine::new(ViewConfig::default());
    let (mut read, mut applied) = (0u64, 0u64);
    for (n, batch) in rx {
        read += n;
        applied += batch.len() as u64;
        for d in &batch {
            engine.apply(d);
        }
    }
    reader.join().expect("the reader");
    report("views_from_file (decode on a second thread)", started, &mut engine, read, applied);
}

fn main() {
    let path = std::env::args().skip(1).find(|a| !a.starts_with('-')).expect("a JSON-lines file");
    one_core(&path);
    decode_beside(&path);
}
