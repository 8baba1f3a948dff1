//! Checkpointed snapshots: the whole engine state plus the next offset of every partition it
//! covers, so a restart resumes in seconds, exactly where the state left off.
//!
//! - [`format`]: the versioned binary format (header, checksum, postcard body). Pure.
//! - [`store`]: a directory of snapshot files, written atomically, newest kept, read
//!   newest-first with fallback past unreadable ones.
//!
//! Consistency: a snapshot is only taken while MongoDB holds every flush handed to the sink
//! (see `pipeline`), so the state it records is "MongoDB as of then, plus the changes not yet
//! flushed". After a restore, the first flush rewrites every view document in full (and
//! removes view documents that are no longer in a view), because flushes written after the
//! snapshot may have left documents the restored state does not know about.

pub mod format;
pub mod store;

pub use format::{Snapshot, SnapshotError, SnapshotMeta};
pub use store::SnapshotStore;
