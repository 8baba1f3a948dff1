//! The snapshot file format, version 1:
//!
//! ```text
//! offset  size  field
//! 0       8     magic "MARTSNAP"
//! 8       4     format version, u32 little-endian
//! 12      4     reserved (0)
//! 16      8     body length in bytes, u64 LE
//! 24      8     xxh3-64 of the body, u64 LE
//! 32      ...   body: postcard encoding of (SnapshotMeta, Engine)
//! ```
//!
//! A file that is truncated, has another magic or version, or whose checksum does not match
//! is refused with a reason; the store then falls back to an older one. The version changes
//! whenever the body's shape does (postcard is not self-describing), and whenever the
//! meaning of what it holds does: version 5 holds the events' fingerprints as the one-pass
//! decoder computes them (`domain::decode`), which a version-4 snapshot's do not match;
//! version 6 keeps a customer's old rank keys only while it is dirty (a flag per customer
//! instead of its keys); version 7 holds ids interned (the customers' ids and every key
//! registry's natural keys as one sequence of strings, the records by handle); version 8
//! holds the RFM rescores deferred by a flush budget (the queue and the date's restatement);
//! version 9 keeps a pending fact's line index instead of its sale_id string.

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use crate::domain::{Engine, ViewConfig};

pub const MAGIC: &[u8; 8] = b"MARTSNAP";
pub const FORMAT_VERSION: u32 = 9;
const HEADER_LEN: usize = 32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    #[error("truncated ({0} bytes)")]
    Truncated(usize),
    #[error("not a martstream snapshot (bad magic)")]
    BadMagic,
    #[error("format version {found}, this build reads {FORMAT_VERSION}")]
    Version { found: u32 },
    #[error("checksum mismatch (corrupt)")]
    Checksum,
    #[error("undecodable body: {0}")]
    Decode(String),
    #[error("written for another setup: {0}")]
    Incompatible(String),
    #[error("{0}")]
    Io(String),
}

/// Where a snapshot stands: what it was taken for and up to where.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// Milliseconds since the epoch, wall clock, when it was taken.
    pub taken_at_ms: i64,
    /// The MongoDB database whose views the state describes.
    pub database: String,
    /// Next offset to read, per (topic, partition): every message before it is in the state.
    pub positions: Vec<(String, i32, i64)>,
    /// The view settings the state was built with: another setting needs a rebuild.
    pub views: ViewConfig,
}

/// A decoded snapshot.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub meta: SnapshotMeta,
    pub engine: Engine,
}

/// Encodes a snapshot: header + body.
pub fn encode(meta: &SnapshotMeta, engine: &Engine) -> Vec<u8> {
    let mut out = vec![0u8; HEADER_LEN];
    out = postcard::to_extend(&(meta, engine), out).expect("in-memory state always serializes");
    let body_len = (out.len() - HEADER_LEN) as u64;
    let checksum = xxh3_64(&out[HEADER_LEN..]);
    out[0..8].copy_from_slice(MAGIC);
    out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    out[16..24].copy_from_slice(&body_len.to_le_bytes());
    out[24..32].copy_from_slice(&checksum.to_le_bytes());
    out
}

/// Decodes and verifies a snapshot.
pub fn decode(bytes: &[u8]) -> Result<Snapshot, SnapshotError> {
    if bytes.len() < HEADER_LEN {
        return Err(SnapshotError::Truncated(bytes.len()));
    }
    if &bytes[0..8] != MAGIC {
        return Err(SnapshotError::BadMagic);
    }
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(SnapshotError::Version { found: version });
    }
    let body = &bytes[HEADER_LEN..];
    if body.len() as u64 != word(16) {
        return Err(SnapshotError::Truncated(bytes.len()));
    }
    if xxh3_64(body) != word(24) {
        return Err(SnapshotError::Checksum);
    }
    let (meta, engine) =
        postcard::from_bytes::<(SnapshotMeta, Engine)>(body).map_err(|e| SnapshotError::Decode(e.to_string()))?;
    Ok(Snapshot { meta, engine })
}

#[cfg(test)]
mod tests {
    use chrono::Duration;
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;

    use super::*;
    use crate::domain::testgen::{arrivals, base_time, steps, Arrival};
    use crate::domain::ViewConfig;

    fn meta() -> SnapshotMeta {
        SnapshotMeta {
            taken_at_ms: 1,
            database: "db".into(),
            positions: vec![("sales".into(), 0, 30), ("sales".into(), 1, 20)],
            views: ViewConfig::default(),
        }
    }

    /// Feeds arrivals to the engine and returns every flush's output.
    fn feed(engine: &mut Engine, arrivals: &[Arrival]) -> Vec<crate::domain::ViewChanges> {
        let mut out = Vec::new();
        for a in arrivals {
            match a {
                Arrival::Event(d) => {
                    engine.apply_on(d, 1);
                }
                Arrival::Session(d) => {
                    engine.apply_session(d, 2);
                }
                Arrival::Flush(hours) => {
                    let as_of = engine.watermark().unwrap_or_else(base_time) + Duration::hours((*hours).into());
                    out.push(engine.flush(as_of, false));
                }
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// Snapshotting at any point and continuing from the decoded copy gives exactly the
        /// flushes the original gives: every view, fact, dimension row, dedup verdict.
        #[test]
        fn a_restored_engine_continues_exactly(steps in steps(120, 40), cut in any::<prop::sample::Index>()) {
            let arrivals = arrivals(&steps);
            let cut = cut.index(arrivals.len() + 1);
            let mut original = Engine::new(ViewConfig::default());
            feed(&mut original, &arrivals[..cut]);
            let mut restored = decode(&encode(&meta(), &original)).unwrap();
            prop_assert_eq!(&restored.meta, &meta());
            let rest = &arrivals[cut..];
            prop_assert_eq!(feed(&mut restored.engine, rest), feed(&mut original, rest));
            let as_of = original.watermark().unwrap_or_else(base_time);
            prop_assert_eq!(restored.engine.flush(as_of, true), original.flush(as_of, true));
        }
    }

    #[test]
    fn refuses_damage_with_a_reason() {
        let mut engine = Engine::new(ViewConfig::default());
        feed(
            &mut engine,
            &arrivals(
                &steps(60, 5).new_tree(&mut proptest::test_runner::TestRunner::deterministic()).unwrap().current(),
            ),
        );
        let bytes = encode(&meta(), &engine);
        assert_eq!(decode(&bytes[..10]).unwrap_err(), SnapshotError::Truncated(10));
        assert_eq!(decode(&bytes[..bytes.len() - 1]).unwrap_err(), SnapshotError::Truncated(bytes.len() - 1));
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x40;
        assert_eq!(decode(&flipped).unwrap_err(), SnapshotError::Checksum);
        let mut other = bytes.clone();
        other[8] = 8;
        assert_eq!(decode(&other).unwrap_err(), SnapshotError::Version { found: 8 }, "the version before");
        let mut magic = bytes;
        magic[0] = b'X';
        assert_eq!(decode(&magic).unwrap_err(), SnapshotError::BadMagic);
    }
}
