//! Point-in-time restore of a stopped shard's data directory, and the lock
//! that keeps a running shard and a restore (or two shards) off the same
//! directory.
//!
//! A restore makes one snapshot, kept in the directory or copied in from a
//! backup, the state the shard recovers to at its next start
//! ([`crate::store::recover`]). Nothing is deleted: every log segment and
//! every other snapshot moves into `restore-aside-<unix ms>/`, from where an
//! operator can take them back or remove them. The steps:
//!
//! 1. take the directory lock (a running shard holds it);
//! 2. verify the snapshot (manifest and CRC32C of the data) where it is;
//! 3. write the `RESTORING` marker: a shard refuses to start while it
//!    exists, so an interrupted restore cannot start from a half-moved
//!    directory;
//! 4. copy a backup in through `snapshot-<seq>.tmp` and a rename, and verify
//!    the copy;
//! 5. move the other snapshots, then the log segments, aside;
//! 6. remove the marker, fsyncing each directory changed on the way.
//!
//! Rerunning a restore after a crash at any step finishes it. Restoring one
//! replica of a replicated shard is pointless (its peers would hand the
//! newer writes back during catch-up): restore every replica of every shard
//! with the cluster stopped (docs/RELIABILITY.md).

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use vitrine_proto::pb;

use crate::snapshot::{self, Manifest, OnDisk, SnapshotError};
use crate::store::snapshot_dir;

const LOCK: &str = "LOCK";
const MARKER: &str = "RESTORING";

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("data directory {0} is in use by a running shard (or another restore); stop it first")]
    InUse(PathBuf),
    #[error("a restore of {0} was interrupted; run `vitrine snapshot restore` again to finish it")]
    Interrupted(PathBuf),
    #[error("no snapshot {seq} in {dir} (kept: {kept})")]
    NoSuchSnapshot { seq: u64, dir: PathBuf, kept: String },
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
}

fn io_at(path: &Path) -> impl Fn(std::io::Error) -> RestoreError + '_ {
    move |source| RestoreError::Io { path: path.to_path_buf(), source }
}

/// The exclusive lock on a data directory, held for the life of the value.
/// The operating system drops it when the process dies, so a crash never
/// leaves a stale lock behind.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Takes the lock, creating the directory if needed; fails at once with
    /// [`RestoreError::InUse`] when another process holds it.
    pub fn acquire(data_dir: &Path) -> Result<Self, RestoreError> {
        std::fs::create_dir_all(data_dir).map_err(io_at(data_dir))?;
        let path = data_dir.join(LOCK);
        let file = OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io_at(&path))?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: file }),
            Err(TryLockError::WouldBlock) => Err(RestoreError::InUse(data_dir.to_path_buf())),
            Err(TryLockError::Error(e)) => Err(io_at(&path)(e)),
        }
    }
}

/// Refuses to start a shard on a directory whose restore did not finish.
pub fn check_not_restoring(data_dir: &Path) -> Result<(), RestoreError> {
    if data_dir.join(MARKER).exists() {
        return Err(RestoreError::Interrupted(data_dir.to_path_buf()));
    }
    Ok(())
}

/// Which snapshot to restore.
#[derive(Debug, Clone)]
pub enum Source {
    /// One the directory keeps, by sequence number.
    Kept(u64),
    /// A copy of a snapshot directory (`snapshot-<seq>/` with `data.log` and
    /// `manifest.json`) from a backup.
    Copy(PathBuf),
}

/// What a restore did.
#[derive(Debug)]
pub struct Restored {
    pub manifest: Manifest,
    /// Where everything that was moved went (absent when nothing was).
    pub aside: Option<PathBuf>,
    /// Log segments and snapshots moved aside.
    pub moved: usize,
}

/// A kept snapshot, as listed for an operator.
#[derive(Debug)]
pub struct Listed {
    pub seq: u64,
    pub path: PathBuf,
    /// The manifest, or why it could not be read or (with `verify`) why the
    /// data does not match it.
    pub manifest: Result<Manifest, SnapshotError>,
}

impl Listed {
    /// As the `ListSnapshots` RPC reports it (`error` says why the manifest
    /// or the data did not check out).
    pub fn to_wire(&self) -> pb::StoredSnapshot {
        let path = self.path.display().to_string();
        match &self.manifest {
            Ok(m) => pb::StoredSnapshot {
                seq: m.seq,
                created_unix_ms: m.created_unix_ms,
                items: m.items,
                users: m.users,
                bytes: m.bytes,
                path,
                error: String::new(),
            },
            Err(e) => pb::StoredSnapshot { seq: self.seq, path, error: e.to_string(), ..Default::default() },
        }
    }
}

/// The snapshots a data directory keeps, newest first; `verify` also checks
/// each one's data (reads it whole).
pub fn list(data_dir: &Path, verify: bool) -> Result<Vec<Listed>, RestoreError> {
    list_in(&snapshot_dir(data_dir), verify)
}

/// [`list`] for the snapshot directory itself (a running shard's).
pub fn list_in(snapshots: &Path, verify: bool) -> Result<Vec<Listed>, RestoreError> {
    let kept = snapshot::list(snapshots)?;
    Ok(kept
        .into_iter()
        .map(|s| {
            let manifest = if verify { snapshot::verify(&s) } else { snapshot::read_manifest(&s) };
            Listed { seq: s.seq, path: s.path, manifest }
        })
        .collect())
}

/// Restores `source` into the stopped shard's `data_dir`; see the module
/// documentation.
pub fn restore(data_dir: &Path, source: &Source) -> Result<Restored, RestoreError> {
    let _lock = DirLock::acquire(data_dir)?;
    let snaps = snapshot_dir(data_dir);
    let kept = snapshot::list(&snaps)?;
    let chosen = match source {
        Source::Kept(seq) => {
            kept.iter().find(|s| s.seq == *seq).cloned().ok_or_else(|| RestoreError::NoSuchSnapshot {
                seq: *seq,
                dir: snaps.clone(),
                kept: if kept.is_empty() {
                    "none".into()
                } else {
                    kept.iter().map(|s| s.seq.to_string()).collect::<Vec<_>>().join(", ")
                },
            })?
        }
        Source::Copy(path) => {
            // The manifest names the sequence number; verify checks the
            // directory's contents against it.
            let text = std::fs::read(path.join("manifest.json")).map_err(io_at(&path.join("manifest.json")))?;
            let seq = serde_json::from_slice::<Manifest>(&text).map(|m| m.seq).map_err(|e| SnapshotError::Invalid {
                path: path.clone(),
                reason: format!("unreadable manifest: {e}"),
            })?;
            OnDisk { seq, path: path.clone() }
        }
    };
    let manifest = snapshot::verify(&chosen)?;

    let marker = data_dir.join(MARKER);
    std::fs::write(&marker, format!("{}\n", manifest.seq)).map_err(io_at(&marker))?;
    sync(data_dir)?;

    let in_place = snaps.join(snapshot::dir_name(manifest.seq));
    let mut aside = Aside::default();
    if let Source::Copy(from) = source {
        std::fs::create_dir_all(&snaps).map_err(io_at(&snaps))?;
        let tmp = snaps.join(format!("{}.tmp", snapshot::dir_name(manifest.seq)));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir(&tmp).map_err(io_at(&tmp))?;
        for name in ["data.log", "manifest.json"] {
            let to = tmp.join(name);
            std::fs::copy(from.join(name), &to).map_err(io_at(&to))?;
            File::open(&to).and_then(|f| f.sync_all()).map_err(io_at(&to))?;
        }
        sync(&tmp)?;
        // A snapshot of the same sequence number already here is replaced:
        // the copy is what was asked for.
        if in_place.exists() {
            move_aside(&in_place, &aside.dir(data_dir)?.join("snapshots"))?;
            aside.moved += 1;
        }
        std::fs::rename(&tmp, &in_place).map_err(io_at(&in_place))?;
        sync(&snaps)?;
        snapshot::verify(&OnDisk { seq: manifest.seq, path: in_place.clone() })?;
    }

    for other in snapshot::list(&snaps)?.into_iter().filter(|s| s.path != in_place) {
        move_aside(&other.path, &aside.dir(data_dir)?.join("snapshots"))?;
        aside.moved += 1;
    }
    for entry in std::fs::read_dir(data_dir).map_err(io_at(data_dir))? {
        let entry = entry.map_err(io_at(data_dir))?;
        let name = entry.file_name();
        let is_log = name.to_str().is_some_and(|n| n == "wal.log" || (n.starts_with("wal-") && n.ends_with(".log")));
        if is_log {
            move_aside(&entry.path(), &aside.dir(data_dir)?)?;
            aside.moved += 1;
        }
    }
    if let Some(d) = &aside.path {
        sync(d)?;
        sync(&d.join("snapshots"))?;
    }
    sync(&snaps)?;
    std::fs::remove_file(&marker).map_err(io_at(&marker))?;
    sync(data_dir)?;
    Ok(Restored { manifest, aside: aside.path, moved: aside.moved })
}

/// `restore-aside-<unix ms>/`, created on first use.
#[derive(Default)]
struct Aside {
    path: Option<PathBuf>,
    moved: usize,
}

impl Aside {
    fn dir(&mut self, data_dir: &Path) -> Result<PathBuf, RestoreError> {
        if let Some(p) = &self.path {
            return Ok(p.clone());
        }
        let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
        let dir = data_dir.join(format!("restore-aside-{ms}"));
        std::fs::create_dir_all(dir.join("snapshots")).map_err(io_at(&dir))?;
        self.path = Some(dir.clone());
        Ok(dir)
    }
}

fn move_aside(path: &Path, into: &Path) -> Result<(), RestoreError> {
    std::fs::create_dir_all(into).map_err(io_at(into))?;
    let name = path.file_name().ok_or_else(|| io_at(path)(std::io::ErrorKind::InvalidInput.into()))?;
    let to = into.join(name);
    std::fs::rename(path, &to).map_err(io_at(&to))
}

fn sync(dir: &Path) -> Result<(), RestoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_at(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{recover, SnapshotPolicy, Snapshots};
    use crate::wal::{FsyncPolicy, WalOptions};

    use crate::store::fixtures::{rec, small_state as state};

    fn options() -> WalOptions {
        WalOptions::new(FsyncPolicy::Always)
    }

    /// A data directory with snapshots at 4 and 8 and records up to 10.
    fn populated() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let r = recover(dir.path(), options()).unwrap();
        let wal = parking_lot::Mutex::new(r.wal);
        let snaps = Snapshots::new(dir.path(), SnapshotPolicy { after_wal_bytes: 1, keep: 2 }, 0);
        for round in 0..2u32 {
            for i in 0..4 {
                wal.lock().append(&rec(round * 10 + i)).unwrap().wait_durable().unwrap();
            }
            snaps.take(&wal, state).unwrap();
        }
        for i in 0..2 {
            wal.lock().append(&rec(90 + i)).unwrap().wait_durable().unwrap();
        }
        dir
    }

    fn seqs(dir: &Path) -> Vec<u64> {
        list(dir, true).unwrap().into_iter().map(|l| l.seq).collect()
    }

    #[test]
    fn a_kept_snapshot_becomes_the_recovery_point_and_nothing_is_deleted() {
        let dir = populated();
        assert_eq!(seqs(dir.path()), [8, 4]);
        let done = restore(dir.path(), &Source::Kept(4)).unwrap();
        assert_eq!(done.manifest.seq, 4);
        assert_eq!(seqs(dir.path()), [4]);
        let aside = done.aside.expect("moved things aside");
        assert!(snapshot::list(&aside.join("snapshots")).unwrap().iter().any(|s| s.seq == 8));
        let logs = std::fs::read_dir(&aside)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("wal-"));
        assert_eq!(logs.count() + 1, done.moved, "every segment and the other snapshot were moved");
        assert!(!dir.path().join(MARKER).exists());
        // The shard recovers to exactly the snapshot and writes on from it.
        let mut r = recover(dir.path(), options()).unwrap();
        assert_eq!(r.snapshot.map(|s| s.seq), Some(4));
        assert!(r.replay.records.is_empty());
        assert_eq!(r.wal.append(&rec(7)).unwrap().wait_durable().unwrap(), 5);
    }

    #[test]
    fn a_backup_copy_restores_into_an_empty_directory() {
        let dir = populated();
        let backup = tempfile::tempdir().unwrap();
        let src = snapshot::list(&snapshot_dir(dir.path())).unwrap().remove(0);
        let copy = backup.path().join("snapshot-8");
        std::fs::create_dir(&copy).unwrap();
        for f in ["data.log", "manifest.json"] {
            std::fs::copy(src.path.join(f), copy.join(f)).unwrap();
        }
        let fresh = tempfile::tempdir().unwrap();
        let done = restore(fresh.path(), &Source::Copy(copy.clone())).unwrap();
        assert_eq!((done.manifest.seq, done.moved), (8, 0));
        let r = recover(fresh.path(), options()).unwrap();
        assert_eq!(r.snapshot.map(|s| s.seq), Some(8));

        // A damaged copy is refused before anything moves.
        snapshot::damage(&OnDisk { seq: 8, path: copy.clone() }, 3);
        let err = restore(dir.path(), &Source::Copy(copy)).unwrap_err();
        assert!(matches!(err, RestoreError::Snapshot(SnapshotError::Invalid { .. })), "{err}");
        assert_eq!(seqs(dir.path()), [8, 4], "nothing moved");
        assert!(!dir.path().join(MARKER).exists());
    }

    #[test]
    fn mistakes_are_refused_with_reasons() {
        let dir = populated();
        let err = restore(dir.path(), &Source::Kept(5)).unwrap_err();
        assert!(err.to_string().contains("no snapshot 5") && err.to_string().contains("8, 4"), "{err}");
        // A running shard holds the lock.
        let held = DirLock::acquire(dir.path()).unwrap();
        assert!(matches!(restore(dir.path(), &Source::Kept(4)), Err(RestoreError::InUse(_))));
        assert!(matches!(DirLock::acquire(dir.path()), Err(RestoreError::InUse(_))));
        drop(held);
        // An interrupted restore blocks start-up until it is run again.
        std::fs::write(dir.path().join(MARKER), "4\n").unwrap();
        assert!(matches!(check_not_restoring(dir.path()), Err(RestoreError::Interrupted(_))));
        restore(dir.path(), &Source::Kept(4)).unwrap();
        check_not_restoring(dir.path()).unwrap();
    }
}
