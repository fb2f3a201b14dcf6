//! The shard's data directory: the WAL segments (`wal-*.log`) and the
//! snapshots (`snapshots/`), and the two procedures that tie them together.
//!
//! - **Recovery** picks the newest snapshot that verifies and whose sequence
//!   number the log reaches back to, and replays the log after it. A snapshot
//!   that fails verification is moved aside (`quarantine-*`), never loaded and
//!   never counted as one of the snapshots to keep; the previous snapshot
//!   plus the longer log then give the same state, because the log is only
//!   cut up to the *oldest* snapshot kept.
//! - **Snapshotting** rotates the log and captures the state under the write
//!   lock (a few milliseconds: it clones `Arc`s and events), writes the
//!   snapshot outside it, then drops older snapshots and the log segments the
//!   oldest remaining one covers.
//!
//! docs/RELIABILITY.md states what this guarantees and how it is tested.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use vitrine_proto::pb;

use crate::snapshot::{self, Counts, Manifest, OnDisk, SnapshotError};
use crate::wal::{Op, Replay, Wal, WalError, WalOptions, WalRecord};

/// When snapshots are taken and how many are kept.
#[derive(Debug, Clone)]
pub struct SnapshotPolicy {
    /// Take one in the background once the log written since the last one
    /// exceeds this many bytes; 0 turns automatic snapshots off.
    pub after_wal_bytes: u64,
    /// Snapshots kept (at least 1). With 2, a snapshot damaged on disk
    /// still leaves a way back without loss.
    pub keep: usize,
}

impl Default for SnapshotPolicy {
    fn default() -> Self {
        Self { after_wal_bytes: 256 << 20, keep: 2 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("a snapshot is already being written")]
    Busy,
    #[error("cannot recover {dir} without losing acknowledged writes: {reasons}")]
    Unrecoverable { dir: PathBuf, reasons: String },
}

impl StoreError {
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::Wal(e) => e.is_disk_full(),
            StoreError::Snapshot(e) => e.is_disk_full(),
            _ => false,
        }
    }
}

/// What recovery found on disk.
pub struct Recovered {
    pub wal: Wal,
    /// The snapshot to load before replaying `replay`.
    pub snapshot: Option<OnDisk>,
    pub replay: Replay,
    /// Snapshots that failed verification and were moved aside.
    pub quarantined: Vec<String>,
}

/// Where snapshots live inside a data directory.
pub fn snapshot_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("snapshots")
}

/// Chooses the snapshot and opens the log after it; see the module docs.
pub fn recover(data_dir: &Path, options: WalOptions) -> Result<Recovered, StoreError> {
    let snaps = snapshot_dir(data_dir);
    let mut reasons = Vec::new();
    let mut quarantined = Vec::new();
    for candidate in snapshot::list(&snaps)? {
        match snapshot::verify(&candidate) {
            Ok(manifest) => match Wal::open(data_dir, manifest.seq, options) {
                Ok((wal, replay)) => {
                    return Ok(Recovered { wal, snapshot: Some(candidate), replay, quarantined });
                }
                Err(e @ WalError::Gap { .. }) => reasons.push(format!("snapshot {}: {e}", manifest.seq)),
                Err(e) => return Err(e.into()),
            },
            Err(e) => {
                tracing::error!(snapshot = %candidate.path.display(), error = %e,
                    "snapshot failed verification; moving it aside and trying an older one");
                let aside = snaps.join(format!("quarantine-{:020}", candidate.seq));
                let _ = std::fs::remove_dir_all(&aside);
                std::fs::rename(&candidate.path, &aside)
                    .map_err(|source| SnapshotError::Io { path: candidate.path.clone(), source })?;
                quarantined.push(e.to_string());
                reasons.push(e.to_string());
            }
        }
    }
    match Wal::open(data_dir, 0, options) {
        Ok((wal, replay)) => Ok(Recovered { wal, snapshot: None, replay, quarantined }),
        Err(e @ WalError::Gap { .. }) => {
            reasons.push(e.to_string());
            Err(StoreError::Unrecoverable { dir: data_dir.to_path_buf(), reasons: reasons.join("; ") })
        }
        Err(e) => Err(e.into()),
    }
}

/// A snapshot just written.
#[derive(Debug, Clone)]
pub struct Written {
    pub manifest: Manifest,
    pub path: PathBuf,
    pub elapsed_ms: u64,
    /// Log segments deleted because the kept snapshots cover them.
    pub segments_removed: usize,
}

/// Snapshot bookkeeping of a running shard.
pub struct Snapshots {
    dir: PathBuf,
    policy: SnapshotPolicy,
    running: AtomicBool,
    /// Sequence number of the newest snapshot (0: none).
    last_seq: AtomicU64,
}

impl Snapshots {
    pub fn new(data_dir: &Path, policy: SnapshotPolicy, last_seq: u64) -> Self {
        Self {
            dir: snapshot_dir(data_dir),
            policy,
            running: AtomicBool::new(false),
            last_seq: AtomicU64::new(last_seq),
        }
    }

    /// Where the snapshots are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Sequence number the newest snapshot covers (0: none).
    pub fn last_seq(&self) -> u64 {
        self.last_seq.load(Ordering::Acquire)
    }

    /// Whether the log has grown enough since the last snapshot.
    pub fn due(&self, wal: &Wal) -> bool {
        self.policy.after_wal_bytes > 0
            && !self.running.load(Ordering::Acquire)
            && wal.bytes_after(self.last_seq.load(Ordering::Acquire)) >= self.policy.after_wal_bytes
    }

    /// Captures the state under the log's lock and writes it; see the module
    /// docs. `capture` runs with the lock held and must only clone state.
    pub fn take(
        &self,
        wal: &parking_lot::Mutex<Wal>,
        capture: impl FnOnce() -> Captured,
    ) -> Result<Written, StoreError> {
        self.running_one(|| {
            let started = Instant::now();
            let (seq, state) = {
                let mut wal = wal.lock();
                let seq = wal.rotate()?;
                (seq, capture())
            };
            let (manifest, path) = self.write(seq, state)?;
            self.prune(wal, seq, manifest, path, started)
        })
    }

    /// Like [`Snapshots::take`], but written whole while the caller holds the
    /// log's lock, so that no write lands between the captured state and
    /// what the caller does next under the same lock. A model switch commits
    /// this way: its snapshot, tagged with the new models, must be on disk
    /// before a write tagged with them is logged. Older snapshots and log
    /// segments are pruned once the caller lets go ([`Snapshots::prune_after`]).
    pub fn take_locked(&self, wal: &mut Wal, capture: impl FnOnce() -> Captured) -> Result<Written, StoreError> {
        self.running_one(|| {
            let started = Instant::now();
            let seq = wal.rotate()?;
            let (manifest, path) = self.write(seq, capture())?;
            Ok(Written { manifest, path, elapsed_ms: started.elapsed().as_millis() as u64, segments_removed: 0 })
        })
    }

    /// Drops what the snapshots kept no longer need after [`Snapshots::take_locked`].
    pub fn prune_after(&self, wal: &parking_lot::Mutex<Wal>) -> Result<usize, StoreError> {
        let seq = self.last_seq();
        let oldest_kept = snapshot::prune(&self.dir, self.policy.keep)?.unwrap_or(seq);
        Ok(wal.lock().remove_through(oldest_kept)?)
    }

    /// Runs one snapshot at a time (BUSY otherwise), with its metrics and logs.
    fn running_one(&self, f: impl FnOnce() -> Result<Written, StoreError>) -> Result<Written, StoreError> {
        if self.running.swap(true, Ordering::AcqRel) {
            return Err(StoreError::Busy);
        }
        let result = f();
        self.running.store(false, Ordering::Release);
        let metrics = crate::metrics::get();
        match &result {
            Ok(w) => {
                metrics.snapshots.with_label_values(&["ok"]).inc();
                metrics.snapshot_seconds.observe(w.elapsed_ms as f64 / 1000.0);
                tracing::info!(
                    seq = w.manifest.seq,
                    items = w.manifest.items,
                    users = w.manifest.users,
                    bytes = w.manifest.bytes,
                    elapsed_ms = w.elapsed_ms,
                    segments_removed = w.segments_removed,
                    "snapshot written"
                );
            }
            Err(e) => {
                metrics.snapshots.with_label_values(&["error"]).inc();
                tracing::error!(error = %e, "snapshot failed; the log keeps everything");
            }
        }
        result
    }

    fn write(&self, seq: u64, state: Captured) -> Result<(Manifest, PathBuf), StoreError> {
        let counts = Counts {
            items: state.items.len() as u64,
            users: state.users,
            items_with_signals: state.signals.len() as u64,
            dimension: state.dimension as u32,
            text_model: state.text_model.clone(),
            image_model: state.image_model.clone(),
        };
        let (on_disk, manifest) = snapshot::write(&self.dir, seq, counts, state.into_records())?;
        self.last_seq.store(seq, Ordering::Release);
        Ok((manifest, on_disk.path))
    }

    fn prune(
        &self,
        wal: &parking_lot::Mutex<Wal>,
        seq: u64,
        manifest: Manifest,
        path: PathBuf,
        started: Instant,
    ) -> Result<Written, StoreError> {
        fail::fail_point!("snapshot::before_prune", |_| std::process::abort());
        let oldest_kept = snapshot::prune(&self.dir, self.policy.keep)?.unwrap_or(seq);
        let segments_removed = wal.lock().remove_through(oldest_kept)?;
        Ok(Written { manifest, path, elapsed_ms: started.elapsed().as_millis() as u64, segments_removed })
    }
}

/// The state as captured for a snapshot.
pub struct Captured {
    pub items: Vec<std::sync::Arc<crate::catalog::StoredItem>>,
    /// Remembered deletes (id, version): without them a replica restored
    /// from this snapshot could take an older copy back from a peer.
    pub deleted: Vec<(String, u64)>,
    pub events: Vec<crate::profiles::StoredEvent>,
    pub users: u64,
    /// Signal entries with their versions, cleared ones included.
    pub signals: Vec<(pb::ItemSignals, u64)>,
    pub dimension: usize,
    /// The models whose vectors the items carry (`crate::registry`).
    pub text_model: String,
    pub image_model: String,
}

/// Items per upsert record in a snapshot (about 2 MB at 384 dimensions).
const ITEMS_PER_RECORD: usize = 1000;
const EVENTS_PER_RECORD: usize = 10_000;
const SIGNALS_PER_RECORD: usize = 1000;
const DELETES_PER_RECORD: usize = 10_000;

impl Captured {
    /// Records that rebuild the state when applied to an empty shard,
    /// encoded lazily so a large catalogue is never copied whole.
    fn into_records(self) -> impl Iterator<Item = WalRecord> {
        let Captured { items, deleted, events, signals, text_model, image_model, .. } = self;
        let items = chunked(items, ITEMS_PER_RECORD).map(move |chunk| {
            let versions = chunk.iter().map(|it| it.version).collect();
            let items = chunk.iter().map(|it| it.to_wire(true)).collect();
            let (text_model, image_model) = (text_model.clone(), image_model.clone());
            WalRecord { op: Some(Op::Upsert(pb::ShardUpsertRequest { items, versions, text_model, image_model })) }
        });
        let deleted = chunked(deleted, DELETES_PER_RECORD).map(|chunk| {
            let (ids, versions) = chunk.into_iter().unzip();
            WalRecord { op: Some(Op::Delete(pb::ShardDeleteRequest { ids, versions })) }
        });
        let events = chunked(events, EVENTS_PER_RECORD).map(|chunk| {
            let (versions, events) = chunk.into_iter().map(|e| (e.version, e.event)).unzip();
            WalRecord { op: Some(Op::Events(pb::ShardEventsRequest { events, versions })) }
        });
        let signals = chunked(signals, SIGNALS_PER_RECORD).map(|chunk| {
            let (signals, versions) = chunk.into_iter().unzip();
            WalRecord { op: Some(Op::Signals(pb::ShardSignalsRequest { signals, versions })) }
        });
        items.chain(deleted).chain(events).chain(signals)
    }
}

fn chunked<T>(v: Vec<T>, n: usize) -> impl Iterator<Item = Vec<T>> {
    let mut it = v.into_iter().peekable();
    std::iter::from_fn(move || {
        it.peek()?;
        Some(it.by_ref().take(n).collect())
    })
}

/// What the store's and the restore's tests build on.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    /// A one-id delete: the cheapest record.
    pub(crate) fn rec(i: u32) -> WalRecord {
        WalRecord { op: Some(Op::Delete(pb::ShardDeleteRequest { ids: vec![format!("item-{i}")], versions: vec![] })) }
    }

    /// A small state; the data file must have bytes to damage.
    pub(crate) fn small_state() -> Captured {
        let event = pb::Event { user_id: "u".into(), item_id: "i".into(), r#type: 1, timestamp_ms: 1 };
        let events = vec![crate::profiles::StoredEvent { version: 1, event }];
        Captured {
            items: Vec::new(),
            deleted: Vec::new(),
            events,
            users: 1,
            signals: Vec::new(),
            dimension: 4,
            text_model: String::new(),
            image_model: String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::FsyncPolicy;

    use super::fixtures::{rec, small_state as empty};

    #[test]
    fn chunks_cover_everything_once() {
        let got: Vec<Vec<u32>> = chunked((0..7).collect(), 3).collect();
        assert_eq!(got, vec![vec![0, 1, 2], vec![3, 4, 5], vec![6]]);
        assert_eq!(chunked(Vec::<u32>::new(), 3).count(), 0);
    }

    #[test]
    fn recovery_falls_back_past_a_damaged_snapshot_without_loss() {
        let dir = tempfile::tempdir().unwrap();
        let options = WalOptions::new(FsyncPolicy::Always);
        let r = recover(dir.path(), options).unwrap();
        assert!(r.snapshot.is_none());
        let wal = parking_lot::Mutex::new(r.wal);
        let snaps = Snapshots::new(dir.path(), SnapshotPolicy { after_wal_bytes: 1, keep: 2 }, 0);
        let mut taken = Vec::new();
        for round in 0..3u32 {
            for i in 0..4 {
                wal.lock().append(&rec(round * 10 + i)).unwrap().wait_durable().unwrap();
            }
            assert!(snaps.due(&wal.lock()));
            taken.push(snaps.take(&wal, empty).unwrap());
        }
        assert_eq!(taken.iter().map(|w| w.manifest.seq).collect::<Vec<_>>(), [4, 8, 12]);
        wal.lock().append(&rec(99)).unwrap().wait_durable().unwrap();
        drop(wal);

        // Intact: the newest snapshot and the one record after it.
        let r = recover(dir.path(), options).unwrap();
        assert_eq!(r.snapshot.as_ref().map(|s| s.seq), Some(12));
        assert_eq!(r.replay.records, vec![rec(99)]);
        drop(r);

        // The newest damaged: moved aside, the older one plus a longer log.
        let newest = snapshot::list(&snapshot_dir(dir.path())).unwrap().remove(0);
        snapshot::damage(&newest, 3);
        let r = recover(dir.path(), options).unwrap();
        assert_eq!(r.snapshot.as_ref().map(|s| s.seq), Some(8));
        assert_eq!(r.replay.records, vec![rec(20), rec(21), rec(22), rec(23), rec(99)]);
        assert_eq!(r.quarantined.len(), 1);
        drop(r);

        // Both damaged: the log no longer reaches back, so start-up refuses.
        let older = snapshot::list(&snapshot_dir(dir.path())).unwrap().remove(0);
        snapshot::damage(&older, 3);
        let err = recover(dir.path(), options).err().expect("unrecoverable");
        assert!(matches!(err, StoreError::Unrecoverable { .. }), "{err}");
    }

    #[test]
    fn a_second_snapshot_at_once_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let r = recover(dir.path(), WalOptions::new(FsyncPolicy::Never)).unwrap();
        let wal = parking_lot::Mutex::new(r.wal);
        let snaps = Snapshots::new(dir.path(), SnapshotPolicy::default(), 0);
        snaps.running.store(true, Ordering::Release);
        assert!(matches!(snaps.take(&wal, empty), Err(StoreError::Busy)));
        snaps.running.store(false, Ordering::Release);
        assert_eq!(snaps.take(&wal, empty).unwrap().manifest.seq, 0);
    }
}
