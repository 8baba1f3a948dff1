//! A directory of snapshot files: `snapshot-<sequence>.msnap`, the sequence growing by one
//! per snapshot. Writes are atomic (temporary file, fsync, rename, fsync of the directory),
//! so a crash leaves either the old set or the new one, never a half-written newest file.
//! The newest `keep` are kept. Reading goes newest-first and skips, with a reason, any file
//! that cannot be used, so a corrupt newest snapshot falls back to the one before.
//!
//! Another store (say, a MongoDB collection that a second instance could read) would offer
//! the same three operations: save bytes, list newest-first, read one.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::format::{decode, Snapshot, SnapshotError};

const PREFIX: &str = "snapshot-";
const SUFFIX: &str = ".msnap";

#[derive(Debug, Clone)]
pub struct SnapshotStore {
    dir: PathBuf,
    keep: usize,
}

/// What a newest-first read found: the snapshot used (if any) and those passed over.
pub type Found = (Option<(PathBuf, Snapshot)>, Vec<Skipped>);

/// A snapshot that was passed over, and why.
#[derive(Debug)]
pub struct Skipped {
    pub path: PathBuf,
    pub error: SnapshotError,
}

fn io(context: &str, path: &Path, e: std::io::Error) -> SnapshotError {
    SnapshotError::Io(format!("{context} {}: {e}", path.display()))
}

impl SnapshotStore {
    pub fn new(dir: impl Into<PathBuf>, keep: usize) -> Self {
        SnapshotStore { dir: dir.into(), keep: keep.max(1) }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Snapshot files, newest first: (sequence, path).
    pub fn list(&self) -> Result<Vec<(u64, PathBuf)>, SnapshotError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("cannot list", &self.dir, e)),
        };
        let mut found: Vec<(u64, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let seq = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?.parse().ok()?;
                Some((seq, e.path()))
            })
            .collect();
        found.sort_by_key(|(seq, _)| std::cmp::Reverse(*seq));
        Ok(found)
    }

    /// Writes a snapshot atomically and removes all but the newest `keep`. Returns its path.
    /// On failure (disk full, say) the earlier snapshots are untouched.
    pub fn save(&self, bytes: &[u8]) -> Result<PathBuf, SnapshotError> {
        fs::create_dir_all(&self.dir).map_err(|e| io("cannot create", &self.dir, e))?;
        let seq = self.list()?.first().map_or(1, |(s, _)| s + 1);
        let path = self.dir.join(format!("{PREFIX}{seq:012}{SUFFIX}"));
        let tmp = self.dir.join(format!(".{PREFIX}{seq:012}{SUFFIX}.tmp"));
        let write = || -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            fs::File::open(&self.dir)?.sync_all()
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(io("cannot write", &path, e));
        }
        for (_, old) in self.list()?.into_iter().skip(self.keep) {
            let _ = fs::remove_file(old);
        }
        Ok(path)
    }

    /// The newest snapshot that decodes and passes `usable`, with the ones passed over.
    pub fn load_newest(&self, usable: impl Fn(&Snapshot) -> Result<(), String>) -> Result<Found, SnapshotError> {
        let mut skipped = Vec::new();
        for (_, path) in self.list()? {
            let read =
                fs::read(&path).map_err(|e| io("cannot read", &path, e)).and_then(|b| decode(&b)).and_then(|s| {
                    match usable(&s) {
                        Ok(()) => Ok(s),
                        Err(why) => Err(SnapshotError::Incompatible(why)),
                    }
                });
            match read {
                Ok(snapshot) => return Ok((Some((path, snapshot)), skipped)),
                Err(error) => skipped.push(Skipped { path, error }),
            }
        }
        Ok((None, skipped))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Engine, ViewConfig};
    use crate::snapshot::format::{encode, SnapshotMeta};

    fn bytes(taken_at_ms: i64) -> Vec<u8> {
        let meta = SnapshotMeta { taken_at_ms, database: "db".into(), positions: vec![], views: ViewConfig::default() };
        encode(&meta, &Engine::new(ViewConfig::default()))
    }

    #[test]
    fn keeps_the_newest_and_falls_back_past_damage() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(dir.path().join("db"), 3);
        assert!(store.load_newest(|_| Ok(())).unwrap().0.is_none());
        for t in 1..=5 {
            store.save(&bytes(t)).unwrap();
        }
        let listed = store.list().unwrap();
        assert_eq!(listed.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![5, 4, 3]);
        assert_eq!(fs::read_dir(store.dir()).unwrap().count(), 3, "no temporary files left");

        // Newest corrupt, next one refused by the caller: the third is used.
        let newest = &listed[0].1;
        let mut damaged = fs::read(newest).unwrap();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        fs::write(newest, damaged).unwrap();
        let (found, skipped) =
            store.load_newest(|s| if s.meta.taken_at_ms == 4 { Err("other".into()) } else { Ok(()) }).unwrap();
        assert_eq!(found.unwrap().1.meta.taken_at_ms, 3);
        assert_eq!(skipped.len(), 2);
        assert_eq!(skipped[0].error, SnapshotError::Checksum);
        assert_eq!(skipped[1].error, SnapshotError::Incompatible("other".into()));

        // The next save continues the sequence past the damaged file.
        store.save(&bytes(6)).unwrap();
        assert_eq!(store.list().unwrap()[0].0, 6);
    }

    #[test]
    fn a_failed_write_keeps_the_previous_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(dir.path(), 2);
        store.save(&bytes(1)).unwrap();
        // A directory where the next temporary file would go makes the write fail.
        fs::create_dir(dir.path().join(format!(".{PREFIX}{:012}{SUFFIX}.tmp", 2))).unwrap();
        assert!(store.save(&bytes(2)).is_err());
        let (found, _) = store.load_newest(|_| Ok(())).unwrap();
        assert_eq!(found.unwrap().1.meta.taken_at_ms, 1);
    }
}
