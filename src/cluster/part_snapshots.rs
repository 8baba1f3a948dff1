//! Per-partition snapshots in MongoDB, so that a partition restores on whichever instance
//! takes it: `cluster_snapshots` holds one head per partition `{_id: p, epoch, position,
//! file, chunks}`, `cluster_snapshot_chunks` the bytes in pieces below MongoDB's document
//! limit. The head moves only under an epoch at least its own: a former holder (a lower
//! epoch) is refused, its pieces left for the next save to remove.

use futures::TryStreamExt;
use mongodb::bson::{doc, spec::BinarySubtype, Binary, Document};
use mongodb::options::ReturnDocument;
use mongodb::{Collection, Database};

use super::exchange::is_duplicate_key;

pub const HEADS: &str = "cluster_snapshots";
pub const PIECES: &str = "cluster_snapshot_chunks";
const PIECE: usize = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum PartSnapshotError {
    #[error("partition snapshots: {0}")]
    Mongo(#[from] mongodb::error::Error),
    #[error("partition {0}: a newer holder saved its snapshot (this instance's epoch is stale)")]
    Fenced(i32),
}

#[derive(Clone)]
pub struct PartSnapshots {
    heads: Collection<Document>,
    pieces: Collection<Document>,
}

impl PartSnapshots {
    pub fn new(db: &Database) -> PartSnapshots {
        PartSnapshots { heads: db.collection(HEADS), pieces: db.collection(PIECES) }
    }

    /// Saves `bytes` as partition `p`'s snapshot at `position`, under lease `epoch`.
    pub async fn save(&self, p: i32, epoch: i64, position: i64, bytes: &[u8]) -> Result<(), PartSnapshotError> {
        let file = format!("{p}/{epoch}/{position}");
        let pieces: Vec<Document> = bytes
            .chunks(PIECE)
            .enumerate()
            .map(|(i, piece)| {
                doc! {
                    "_id": format!("{file}/{i}"), "file": &file, "i": i as i64,
                    "data": Binary { subtype: BinarySubtype::Generic, bytes: piece.to_vec() },
                }
            })
            .collect();
        let n = pieces.len() as i64;
        self.pieces.delete_many(doc! { "file": &file }).await?; // a save of the same position before
        if !pieces.is_empty() {
            self.pieces.insert_many(pieces).await?;
        }
        let before = self
            .heads
            .find_one_and_update(
                doc! { "_id": p, "epoch": { "$lte": epoch } },
                doc! { "$set": { "epoch": epoch, "position": position, "file": &file, "pieces": n } },
            )
            .upsert(true)
            .return_document(ReturnDocument::Before)
            .await;
        match before {
            Ok(before) => {
                if let Some(old) = before.and_then(|b| b.get_str("file").ok().map(str::to_owned)).filter(|f| *f != file)
                {
                    self.pieces.delete_many(doc! { "file": old }).await?;
                }
                Ok(())
            }
            Err(e) if is_duplicate_key(&e) => {
                self.pieces.delete_many(doc! { "file": &file }).await?;
                Err(PartSnapshotError::Fenced(p))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Partition `p`'s newest snapshot: (position, bytes).
    pub async fn load(&self, p: i32) -> Result<Option<(i64, Vec<u8>)>, PartSnapshotError> {
        let Some(head) = self.heads.find_one(doc! { "_id": p }).await? else {
            return Ok(None);
        };
        let file = head.get_str("file").unwrap_or_default();
        let pieces: Vec<Document> =
            self.pieces.find(doc! { "file": file }).sort(doc! { "i": 1 }).await?.try_collect().await?;
        if pieces.len() as i64 != head.get_i64("pieces").unwrap_or(-1) {
            return Ok(None);
        }
        let mut bytes = Vec::new();
        for piece in &pieces {
            bytes.extend_from_slice(
                piece
                    .get_binary_generic("data")
                    .map_err(|e| mongodb::error::Error::custom(format!("snapshot piece of {file}: {e}")))?,
            );
        }
        Ok(Some((head.get_i64("position").unwrap_or(0), bytes)))
    }
}
