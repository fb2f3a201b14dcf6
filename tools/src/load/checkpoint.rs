//! Resuming a load: which input records are done, and the file that says so.
//!
//! Batches finish out of order (several are in flight), so "done" is a low
//! watermark: the number of input records from the start of the file whose
//! batches have *all* been answered. Everything below it is never re-read on
//! resume; batches above it that had finished are sent again, which is
//! harmless because an upsert by id is idempotent.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// The contiguous prefix of finished input records, built from ranges that
/// finish in any order. Each range carries a payload (its counts), handed
/// back once the range joins the prefix, so that counters saved with the
/// watermark describe exactly the records below it.
#[derive(Debug)]
pub struct Watermark<T> {
    low: u64,
    /// Finished ranges above `low`: start → (end, payload).
    pending: BTreeMap<u64, (u64, T)>,
}

impl<T> Watermark<T> {
    pub fn new(start: u64) -> Self {
        Self { low: start, pending: BTreeMap::new() }
    }

    /// Records `[start, end)` as finished; returns the payloads of every
    /// range that now joins the prefix, in order.
    pub fn complete(&mut self, start: u64, end: u64, payload: T) -> Vec<T> {
        self.pending.insert(start, (end, payload));
        let mut joined = Vec::new();
        while let Some((end, payload)) = self.pending.remove(&self.low) {
            self.low = end;
            joined.push(payload);
        }
        joined
    }

    /// Records below this are done.
    pub fn low(&self) -> u64 {
        self.low
    }
}

/// Which input a checkpoint belongs to: a checkpoint is only trusted for the
/// very file it was written for, because resuming record N of a changed file
/// would silently skip or repeat other records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIdentity {
    pub path: PathBuf,
    pub size: u64,
    pub mtime_ns: u128,
}

impl FileIdentity {
    pub fn of(path: &Path) -> anyhow::Result<Self> {
        let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
        let mtime_ns =
            meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
        let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        Ok(Self { path, size: meta.len(), mtime_ns })
    }
}

/// Counts of a load, saved in checkpoints and printed in summaries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub loaded: u64,
    pub skipped: u64,
    pub failed: u64,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, o: Self) {
        self.loaded += o.loaded;
        self.skipped += o.skipped;
        self.failed += o.failed;
    }
}

/// The checkpoint file's content (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Format version of this file.
    pub version: u32,
    pub input: FileIdentity,
    /// Input records (0-based count from the start of the file) that are
    /// done: resume reads from here.
    pub watermark: u64,
    /// Counts of the records below the watermark.
    pub counts: Counts,
    /// When written, ms since the Unix epoch (for people reading the file).
    pub written_ms: u64,
}

const VERSION: u32 = 1;

impl Checkpoint {
    pub fn new(input: FileIdentity, watermark: u64, counts: Counts) -> Self {
        let written_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        Self { version: VERSION, input, watermark, counts, written_ms }
    }

    /// The checkpoint at `path` if there is one, or `None`.
    pub fn read(path: &Path) -> anyhow::Result<Option<Self>> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading checkpoint {}", path.display())),
        };
        let c: Self = serde_json::from_str(&text).with_context(|| format!("parsing checkpoint {}", path.display()))?;
        if c.version != VERSION {
            bail!("checkpoint {} has version {}; this vitrine writes {VERSION}", path.display(), c.version);
        }
        Ok(Some(c))
    }

    /// Writes atomically: a temporary file in the same directory, fsynced,
    /// renamed over the old one, and the directory fsynced, so that a crash
    /// at any moment leaves either the old checkpoint or the new one.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let mut tmp = tempfile::NamedTempFile::new_in(dir)
            .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
        serde_json::to_writer_pretty(&mut tmp, self)?;
        tmp.write_all(b"\n")?;
        tmp.as_file().sync_all().context("fsync of the checkpoint")?;
        tmp.persist(path).with_context(|| format!("renaming the checkpoint to {}", path.display()))?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watermark_waits_for_the_gaps_to_fill() {
        let mut w = Watermark::new(0);
        // Batches [0,64) [64,128) [128,130) [130,200) finish as 2, 4, 1, 3.
        assert!(w.complete(64, 128, 'b').is_empty());
        assert_eq!(w.low(), 0);
        assert!(w.complete(130, 200, 'd').is_empty());
        assert_eq!(w.complete(0, 64, 'a'), vec!['a', 'b']);
        assert_eq!(w.low(), 128);
        assert_eq!(w.complete(128, 130, 'c'), vec!['c', 'd']);
        assert_eq!(w.low(), 200);
    }

    #[test]
    fn a_resumed_watermark_starts_where_the_checkpoint_left_off() {
        let mut w = Watermark::new(500);
        assert_eq!(w.complete(500, 564, ()), vec![()]);
        assert_eq!(w.low(), 564);
    }

    #[test]
    fn checkpoints_round_trip_and_replace_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.csv");
        std::fs::write(&input, "id\n1\n").unwrap();
        let path = dir.path().join("in.csv.vitrine-checkpoint");
        assert_eq!(Checkpoint::read(&path).unwrap(), None);
        let id = FileIdentity::of(&input).unwrap();
        let c = Checkpoint::new(id.clone(), 1, Counts { loaded: 1, skipped: 0, failed: 0 });
        c.write(&path).unwrap();
        Checkpoint::new(id.clone(), 2, Counts::default()).write(&path).unwrap();
        let back = Checkpoint::read(&path).unwrap().unwrap();
        assert_eq!((back.watermark, &back.input), (2, &id));
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 2, "no temporary files are left behind");
        std::fs::write(&input, "id\n1\n2\n").unwrap();
        assert_ne!(FileIdentity::of(&input).unwrap(), back.input, "a changed file is another input");
    }
}
