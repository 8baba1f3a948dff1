//! Partition leases and instance heartbeats in MongoDB, which every instance reaches: the
//! membership of a cluster of martstream instances (see `docs/DESIGN.md`, "Scale-out",
//! for why not the broker's consumer group).
//!
//! `cluster_leases`: one document per input partition, `{_id: "topic/partition", owner,
//! epoch, expires_at, taken}` (`taken`: whether the last attempt to acquire it did).
//! Taking a free or expired lease bumps its epoch: the fencing token a holder's writes
//! carry, so that a paused or partitioned former holder is refused.
//! `cluster_members`: `{_id: instance, expires_at}`. Every time is MongoDB's own clock
//! (`$$NOW`), so instances' clocks never need to agree.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use mongodb::bson::{doc, Document};
use mongodb::error::Error;
use mongodb::options::ReturnDocument;
use mongodb::{Collection, Database};

pub const LEASES: &str = "cluster_leases";
pub const MEMBERS: &str = "cluster_members";

/// One instance's handle on the lease table.
#[derive(Clone)]
pub struct Leases {
    leases: Collection<Document>,
    members: Collection<Document>,
    me: String,
    ttl_ms: i64,
}

/// A lease's key: the input topic and partition.
pub fn key(topic: &str, partition: i32) -> String {
    format!("{topic}/{partition}")
}

/// Every document of `collection` that `filter` matches.
async fn read(collection: &Collection<Document>, filter: Document) -> Result<Vec<Document>, Error> {
    use futures::TryStreamExt;
    collection.find(filter).await?.try_collect().await
}

fn expires() -> Document {
    doc! { "$add": ["$$NOW", "$$ttl"] }
}

impl Leases {
    /// `me`: this instance's id (stable across its restarts, like `group.instance.id`);
    /// a lease or membership not renewed within `ttl` is free for others.
    pub fn new(db: &Database, me: impl Into<String>, ttl: Duration) -> Leases {
        Leases {
            leases: db.collection(LEASES),
            members: db.collection(MEMBERS),
            me: me.into(),
            ttl_ms: ttl.as_millis() as i64,
        }
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    /// Announces (or keeps) this instance as a live member.
    pub async fn heartbeat(&self) -> Result<(), Error> {
        self.members
            .update_one(doc! { "_id": &self.me }, vec![doc! { "$set": { "expires_at": expires() } }])
            .let_vars(doc! { "ttl": self.ttl_ms })
            .upsert(true)
            .await?;
        Ok(())
    }

    /// Leaves the cluster at once (a clean stop), releasing nothing: call
    /// [`Leases::release`] for each lease first.
    pub async fn leave(&self) -> Result<(), Error> {
        self.members.delete_one(doc! { "_id": &self.me }).await?;
        Ok(())
    }

    /// The live members.
    pub async fn members(&self) -> Result<BTreeSet<String>, Error> {
        let live = read(&self.members, doc! { "$expr": { "$gt": ["$expires_at", "$$NOW"] } }).await?;
        Ok(live.iter().map(|d| d.get_str("_id").unwrap_or_default().to_owned()).collect())
    }

    /// Takes the lease if nobody holds it or its holder let it expire; the new epoch when
    /// taken, `None` when it is held (by another instance, or already by this one: see
    /// [`Leases::renew`]). Two instances racing for a lease nobody ever held both upsert
    /// the same `_id`; MongoDB retries the loser's upsert as an update, which finds it held.
    pub async fn acquire(&self, key: &str) -> Result<Option<i64>, Error> {
        // One atomic update of the one document (an upsert's filter cannot compare with
        // `$$NOW`, so the update decides): `taken` when free or expired.
        let after = self
            .leases
            .find_one_and_update(
                doc! { "_id": key },
                vec![
                    doc! { "$set": { "taken": { "$or": [
                        { "$eq": [{ "$ifNull": ["$owner", null] }, null] },
                        { "$lte": [{ "$ifNull": ["$expires_at", null] }, "$$NOW"] },
                    ] } } },
                    doc! { "$set": {
                        "owner": { "$cond": ["$taken", &self.me, "$owner"] },
                        "epoch": { "$cond": ["$taken", { "$add": [{ "$ifNull": ["$epoch", 0_i64] }, 1_i64] }, "$epoch"] },
                        "expires_at": { "$cond": ["$taken", expires(), "$expires_at"] },
                    } },
                ],
            )
            .let_vars(doc! { "ttl": self.ttl_ms })
            .upsert(true)
            .return_document(ReturnDocument::After)
            .await?;
        Ok(after.filter(|d| d.get_bool("taken").unwrap_or(false)).and_then(|d| d.get_i64("epoch").ok()))
    }

    /// Extends every lease this instance holds; returns them (key → epoch). A lease it
    /// believed it held and is missing here was taken by another instance after expiring:
    /// its state must be dropped without a snapshot.
    pub async fn renew(&self) -> Result<BTreeMap<String, i64>, Error> {
        self.leases
            .update_many(doc! { "owner": &self.me }, vec![doc! { "$set": { "expires_at": expires() } }])
            .let_vars(doc! { "ttl": self.ttl_ms })
            .await?;
        self.held().await
    }

    /// The leases this instance holds (key → epoch), without extending them.
    pub async fn held(&self) -> Result<BTreeMap<String, i64>, Error> {
        let mine = self.leases_where(doc! { "owner": &self.me }).await?;
        Ok(mine.into_iter().map(|(key, (_, epoch))| (key, epoch)).collect())
    }

    /// The live holder of every lease (expired ones left out): key → (owner, epoch).
    pub async fn holders(&self) -> Result<BTreeMap<String, (String, i64)>, Error> {
        self.leases_where(doc! { "owner": { "$ne": null }, "$expr": { "$gt": ["$expires_at", "$$NOW"] } }).await
    }

    /// The leases `filter` matches: key → (owner, epoch).
    async fn leases_where(&self, filter: Document) -> Result<BTreeMap<String, (String, i64)>, Error> {
        let found = read(&self.leases, filter).await?;
        Ok(found
            .iter()
            .map(|d| {
                let field = |name| d.get_str(name).unwrap_or_default().to_owned();
                (field("_id"), (field("owner"), d.get_i64("epoch").unwrap_or_default()))
            })
            .collect())
    }

    /// Hands a lease back (after its last flush and snapshot): free for others at once.
    /// `false` when this instance no longer held it at `epoch`.
    pub async fn release(&self, key: &str, epoch: i64) -> Result<bool, Error> {
        let r = self
            .leases
            .update_one(doc! { "_id": key, "owner": &self.me, "epoch": epoch }, doc! { "$set": { "owner": null } })
            .await?;
        Ok(r.matched_count == 1)
    }

    /// The fence: whether this instance still holds `key` at `epoch` (and the lease has not
    /// expired). A write on behalf of a partition checks it first (or carries the epoch in
    /// its own filter).
    pub async fn holds(&self, key: &str, epoch: i64) -> Result<bool, Error> {
        let found = self
            .leases
            .find_one(doc! {
                "_id": key, "owner": &self.me, "epoch": epoch,
                "$expr": { "$gt": ["$expires_at", "$$NOW"] },
            })
            .await?;
        Ok(found.is_some())
    }
}
