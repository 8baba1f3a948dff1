//! `bare_sink`: the sink-limit baseline of martstream's benchmarks. Copies the documents a
//! martstream run wrote (database `--from`) into a fresh database with a plain driver client
//! and nothing else: unordered `insert` batches of 1,000, four in flight per collection,
//! every collection at once (as martstream's sink sends them), the server's default write
//! concern. Two ways, each timed:
//! - `indexed`: the collections created first with `--from`'s options (the validator) and
//!   indexes, then the documents inserted: what the service's live writes pay per document;
//! - `then-index`: the documents inserted into bare collections, then the same indexes
//!   built and the validator set: the least a bulk load of these documents costs.
//!
//! Prints `bare_sink <mode>: N documents in T s: R documents/s (insert I s, index X s)`.

use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use futures::{StreamExt, TryStreamExt};
use mongodb::bson::{doc, Document, RawDocumentBuf};
use mongodb::{Client, Database};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Indexed,
    ThenIndex,
}

#[derive(Debug, Parser)]
struct Args {
    #[arg(long)]
    uri: String,
    /// The database a martstream run wrote.
    #[arg(long)]
    from: String,
    /// The fresh database to write (dropped first).
    #[arg(long)]
    into: String,
    #[arg(long, value_enum)]
    mode: Mode,
}

struct Collection {
    name: String,
    options: Document,
    indexes: Vec<Document>,
    docs: Vec<RawDocumentBuf>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let client = Client::with_uri_str(&args.uri).await.context("connecting to MongoDB")?;
    let from = client.database(&args.from);
    let into = client.database(&args.into);
    into.drop().await.context("dropping the target database")?;
    let collections = read_all(&from).await?;
    let total: usize = collections.iter().map(|c| c.docs.len()).sum();

    let started = Instant::now();
    if args.mode == Mode::Indexed {
        create(&into, &collections, true).await?;
        index(&into, &collections).await?;
    } else {
        create(&into, &collections, false).await?;
    }
    futures::future::try_join_all(collections.iter().map(|c| insert(&into, c))).await?;
    let inserted = started.elapsed();
    if args.mode == Mode::ThenIndex {
        index(&into, &collections).await?;
        for c in collections.iter().filter(|c| c.options.contains_key("validator")) {
            let mut command = doc! { "collMod": &c.name };
            command.extend(c.options.clone());
            into.run_command(command).await.with_context(|| format!("setting the validator of {}", c.name))?;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "bare_sink {}: {total} documents in {secs:.2} s: {:.0} documents/s (insert {:.2} s, index {:.2} s)",
        if args.mode == Mode::Indexed { "indexed" } else { "then-index" },
        total as f64 / secs,
        inserted.as_secs_f64(),
        secs - inserted.as_secs_f64(),
    );
    Ok(())
}

async fn read_all(db: &Database) -> Result<Vec<Collection>> {
    let mut out = Vec::new();
    let specs: Vec<_> = db.list_collections().await?.try_collect().await?;
    for spec in specs.into_iter().filter(|s| !s.name.starts_with("system.")) {
        let mut options = Document::new();
        if let Some(v) = &spec.options.validator {
            options.insert("validator", v.clone());
            options.insert("validationLevel", "strict");
        }
        let c = db.collection::<RawDocumentBuf>(&spec.name);
        let indexes = db
            .run_command(doc! { "listIndexes": &spec.name })
            .await?
            .get_document("cursor")?
            .get_array("firstBatch")?
            .iter()
            .filter_map(|i| i.as_document().cloned())
            .filter(|i| i.get_str("name") != Ok("_id_"))
            .map(|mut i| {
                i.remove("v");
                i
            })
            .collect();
        let docs: Vec<RawDocumentBuf> = c.find(doc! {}).await?.try_collect().await?;
        out.push(Collection { name: spec.name, options, indexes, docs });
    }
    Ok(out)
}

async fn create(db: &Database, collections: &[Collection], with_options: bool) -> Result<()> {
    for c in collections {
        let mut command = doc! { "create": &c.name };
        if with_options {
            command.extend(c.options.clone());
        }
        db.run_command(command).await.with_context(|| format!("creating {}", c.name))?;
    }
    Ok(())
}

async fn index(db: &Database, collections: &[Collection]) -> Result<()> {
    for c in collections.iter().filter(|c| !c.indexes.is_empty()) {
        db.run_command(doc! { "createIndexes": &c.name, "indexes": c.indexes.clone() })
            .await
            .with_context(|| format!("indexing {}", c.name))?;
    }
    Ok(())
}

async fn insert(db: &Database, c: &Collection) -> Result<()> {
    let coll = db.collection::<RawDocumentBuf>(&c.name);
    futures::stream::iter(c.docs.chunks(1000))
        .map(|chunk| {
            let coll = coll.clone();
            async move { coll.insert_many(chunk).ordered(false).await.map(|_| ()) }
        })
        .buffer_unordered(4)
        .try_collect::<()>()
        .await
        .with_context(|| format!("inserting into {}", c.name))
}
