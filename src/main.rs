use std::process::ExitCode;

use clap::Parser;

/// jemalloc instead of glibc's malloc: the engine allocates many small, short-lived strings
/// and documents, and glibc's free lists (consolidation, unlinking) and page faults were
/// over a quarter of its profile. With jemalloc `apply` runs ~1.5× as fast and holds less
/// memory per customer (docs/BENCHMARKS.md, steps 1 and 4); mimalloc was as fast but held
/// 1.8× jemalloc's resident memory per customer.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = martstream::cli::Cli::parse();
    match martstream::cli::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("martstream: error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
