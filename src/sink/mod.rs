//! Sinks of the view documents. MongoDB is the only one: [`mongo::MongoSink`] writes
//! absolute documents keyed by natural ids, so every write is idempotent.

pub mod documents;
pub mod mongo;
