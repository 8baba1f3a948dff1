//! Surrogate keys every instance agrees on for the dimensions several partitions share
//! (products, locations): `cluster_keys` holds `{_id: "kind:natural key", key}` and a
//! counter per kind; the first instance to meet a natural key takes the next number and
//! inserts it, a racing one finds the winner's (the `_id` is unique). Customers need no
//! allocator: a customer lives in one partition, whose state numbers its customers
//! `(partition + 1) << 24 | n`.

use std::collections::HashMap;
use std::sync::Mutex;

use mongodb::bson::{doc, Document};
use mongodb::options::ReturnDocument;
use mongodb::{Collection, Database};

use super::exchange::is_duplicate_key;

pub const KEYS: &str = "cluster_keys";

/// The dimensions with allocated keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    Product,
    Location,
}

impl KeyKind {
    fn as_str(self) -> &'static str {
        match self {
            KeyKind::Product => "product",
            KeyKind::Location => "location",
        }
    }
}

/// The first customer key of a partition's state.
pub fn customer_key_base(partition: i32) -> i32 {
    (partition + 1) << 24
}

pub struct KeyAllocator {
    keys: Collection<Document>,
    known: Mutex<HashMap<(KeyKind, Box<str>), i32>>,
}

impl KeyAllocator {
    pub fn new(db: &Database) -> KeyAllocator {
        KeyAllocator { keys: db.collection(KEYS), known: Mutex::default() }
    }

    /// The key of `natural`, and whether this call allocated it (its dimension row is then
    /// this instance's to write).
    pub async fn key(&self, kind: KeyKind, natural: &str) -> Result<(i32, bool), mongodb::error::Error> {
        if let Some(&k) = self.known.lock().expect("not poisoned").get(&(kind, natural.into())) {
            return Ok((k, false));
        }
        let id = format!("{}:{natural}", kind.as_str());
        let (key, new) = match self.keys.find_one(doc! { "_id": &id }).await? {
            Some(d) => (d.get_i32("key").unwrap_or_default(), false),
            None => {
                let counter = self
                    .keys
                    .find_one_and_update(
                        doc! { "_id": format!("counter:{}", kind.as_str()) },
                        doc! { "$inc": { "next": 1 } },
                    )
                    .upsert(true)
                    .return_document(ReturnDocument::After)
                    .await?
                    .and_then(|d| d.get_i32("next").ok())
                    .unwrap_or_default();
                match self.keys.insert_one(doc! { "_id": &id, "key": counter }).await {
                    Ok(_) => (counter, true),
                    Err(e) if is_duplicate_key(&e) => {
                        let d = self.keys.find_one(doc! { "_id": &id }).await?;
                        (d.and_then(|d| d.get_i32("key").ok()).unwrap_or_default(), false)
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        self.known.lock().expect("not poisoned").insert((kind, natural.into()), key);
        Ok((key, new))
    }
}
