//! The exchange between partitions (docs/DESIGN.md, "Scale-out"): each input partition's
//! holder publishes, at each flush, what its events added since its last publication (a
//! [`Chunk`]: value count changes for the RFM quintiles, product and trend partials), and
//! every instance reads every partition's chunks in order to keep the global counts and the
//! shared views (products, trends).
//!
//! `cluster_partials`: one document per chunk, `{_id: "p/from", p, from, to, epoch,
//! watermark_ms, partials}`, the chunks of a partition contiguous (`from` of one is `to` of
//! the one before). A chunk is what the partition's events in `[from, to)` add to a state
//! snapshotted at `from`, so a new holder replaying from its snapshot computes the same
//! chunks again: it ends its flushes at the `to`s already published (see
//! [`Exchange::published_ends`]) and its inserts of them find them there. A reader applies
//! a chunk once, when its `from` is where the partition's applied chunks end.

use std::collections::BTreeMap;

use futures::TryStreamExt;
use mongodb::bson::{doc, spec::BinarySubtype, Binary, Document};
use mongodb::error::{Error, ErrorKind, WriteFailure};
use mongodb::options::IndexOptions;
use mongodb::{Collection, Database, IndexModel};

use crate::domain::partials::Partials;

pub const PARTIALS: &str = "cluster_partials";

/// What one partition's events in `[from, to)` added.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    pub partition: i32,
    pub from: i64,
    pub to: i64,
    /// The largest event time the partition applied (the event clock's `as_of` is the
    /// largest over every partition).
    pub watermark_ms: Option<i64>,
    pub partials: Partials,
}

/// Whether a publication wrote the chunk or found one starting there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    Written,
    /// A chunk from the same offset was there, ending at `to`: a replay's, the same chunk
    /// when `to` is this one's; otherwise another instance published for the partition
    /// (a former holder that had not stopped yet), and its chain is the one readers follow.
    AlreadyThere {
        to: i64,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("cluster exchange ({PARTIALS}): {0}")]
    Mongo(#[from] Error),
    #[error("cluster exchange ({PARTIALS}): undecodable chunk {id}: {reason}")]
    Decode { id: String, reason: String },
}

#[derive(Clone)]
pub struct Exchange {
    chunks: Collection<Document>,
}

pub fn is_duplicate_key(e: &Error) -> bool {
    matches!(&*e.kind, ErrorKind::Write(WriteFailure::WriteError(w)) if w.code == 11000)
        || matches!(&*e.kind, ErrorKind::Command(c) if c.code == 11000)
}

impl Exchange {
    pub fn new(db: &Database) -> Exchange {
        Exchange { chunks: db.collection(PARTIALS) }
    }

    pub async fn prepare(&self) -> Result<(), ExchangeError> {
        let index = IndexModel::builder()
            .keys(doc! { "p": 1, "from": 1 })
            .options(IndexOptions::builder().name("p_from".to_owned()).build())
            .build();
        self.chunks.create_index(index).await?;
        Ok(())
    }

    /// Publishes a chunk under the partition's lease `epoch`.
    pub async fn publish(&self, chunk: &Chunk, epoch: i64) -> Result<Published, ExchangeError> {
        let bytes = postcard::to_allocvec(&chunk.partials).expect("partials always serialize");
        let document = doc! {
            "_id": format!("{}/{}", chunk.partition, chunk.from),
            "p": chunk.partition,
            "from": chunk.from,
            "to": chunk.to,
            "epoch": epoch,
            "watermark_ms": chunk.watermark_ms,
            "partials": Binary { subtype: BinarySubtype::Generic, bytes },
        };
        let id = format!("{}/{}", chunk.partition, chunk.from);
        match self.chunks.insert_one(document).await {
            Ok(_) => Ok(Published::Written),
            Err(e) if is_duplicate_key(&e) => {
                let there = self.chunks.find_one(doc! { "_id": id }).projection(doc! { "to": 1 }).await?;
                Ok(Published::AlreadyThere { to: there.and_then(|d| d.get_i64("to").ok()).unwrap_or(-1) })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The ends of the chunks of `partition` published from `from` on, in order: a holder
    /// that restored the partition at `from` ends its flushes there, so that it computes
    /// the very chunks the readers already applied.
    pub async fn published_ends(&self, partition: i32, from: i64) -> Result<Vec<i64>, ExchangeError> {
        let found: Vec<Document> = self
            .chunks
            .find(doc! { "p": partition, "from": { "$gte": from } })
            .projection(doc! { "from": 1, "to": 1 })
            .sort(doc! { "from": 1 })
            .await?
            .try_collect()
            .await?;
        let mut ends = Vec::new();
        let mut at = from;
        for d in found {
            if d.get_i64("from").unwrap_or(-1) != at {
                break;
            }
            at = d.get_i64("to").unwrap_or(at);
            ends.push(at);
        }
        Ok(ends)
    }

    /// The chunks that follow `applied` (partition → where its applied chunks end; a
    /// partition missing from it starts at 0), in order per partition.
    pub async fn pull(&self, applied: &BTreeMap<i32, i64>, partitions: &[i32]) -> Result<Vec<Chunk>, ExchangeError> {
        let mut applied = applied.clone();
        let wanted: Vec<Document> = partitions
            .iter()
            .map(|p| doc! { "p": p, "from": { "$gte": applied.get(p).copied().unwrap_or(0) } })
            .collect();
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let found: Vec<Document> =
            self.chunks.find(doc! { "$or": wanted }).sort(doc! { "p": 1, "from": 1 }).await?.try_collect().await?;
        let mut out = Vec::new();
        for d in found {
            let (p, from, to) =
                (d.get_i32("p").unwrap_or(-1), d.get_i64("from").unwrap_or(-1), d.get_i64("to").unwrap_or(-1));
            let at = applied.entry(p).or_insert(0);
            if from != *at {
                continue; // a gap (its chunk is not visible yet) or one already applied
            }
            let id = d.get_str("_id").unwrap_or_default().to_owned();
            let bytes = d
                .get_binary_generic("partials")
                .map_err(|e| ExchangeError::Decode { id: id.clone(), reason: e.to_string() })?;
            let partials =
                postcard::from_bytes(bytes).map_err(|e| ExchangeError::Decode { id, reason: e.to_string() })?;
            *at = to;
            out.push(Chunk { partition: p, from, to, watermark_ms: d.get_i64("watermark_ms").ok(), partials });
        }
        Ok(out)
    }
}
