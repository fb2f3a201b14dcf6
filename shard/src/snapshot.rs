//! Snapshots: the shard's whole state (items with their vectors, user
//! profiles, behavioural signals) as of one WAL sequence number, so that
//! recovery replays only the log written since, and the log can be cut.
//!
//! Layout: `snapshots/snapshot-<seq>/{data.log, manifest.json}`. `data.log`
//! holds WAL-framed records (each CRC32C-checked) that rebuild the state
//! when applied in order; the manifest records the sequence number, counts,
//! the file's length and a CRC32C of the whole file. A snapshot is written
//! under `snapshot-<seq>.tmp`, fsynced, renamed into place and the parent
//! directory fsynced, so a crash at any point leaves either the complete
//! snapshot or none. Loading verifies the manifest and the checksum of the
//! whole file before a single record is applied.
//!
//! The ANN graph is not stored: recovery rebuilds it from the vectors with a
//! parallel build (measured in docs/RELIABILITY.md). Storing `hnsw_rs`'s own
//! dump would be faster to load, but that loader exits the process on a
//! corrupt file, and a graph file could not be checked against the items.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use prost::Message;
use serde::{Deserialize, Serialize};

use crate::wal::{encode_frame, scan_frames, sync_dir, Stop, WalRecord};

/// Version of the layout this code writes and reads.
const FORMAT: u32 = 1;
const DATA: &str = "data.log";
const MANIFEST: &str = "manifest.json";

/// What a snapshot holds, written last and checked first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// The state after applying WAL records 1..=seq.
    pub seq: u64,
    pub records: u64,
    pub items: u64,
    pub users: u64,
    pub items_with_signals: u64,
    pub dimension: u32,
    /// Length and CRC32C of `data.log`.
    pub bytes: u64,
    pub crc32c: u32,
    pub created_unix_ms: u64,
    /// The models whose vectors the items carry (`name@version`; empty:
    /// none, or a snapshot from before tags). After a model switch the
    /// newest snapshot is what tells start-up which set to serve.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub text_model: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image_model: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("snapshot {path} is invalid: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

impl SnapshotError {
    pub fn is_disk_full(&self) -> bool {
        matches!(self, SnapshotError::Io { source, .. } if source.kind() == std::io::ErrorKind::StorageFull)
    }
}

fn io_at(path: &Path) -> impl Fn(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io { path: path.to_path_buf(), source }
}

fn invalid(path: &Path, reason: impl Into<String>) -> SnapshotError {
    SnapshotError::Invalid { path: path.to_path_buf(), reason: reason.into() }
}

/// Counts for the manifest that the writer knows from the captured state.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    pub items: u64,
    pub users: u64,
    pub items_with_signals: u64,
    pub dimension: u32,
    pub text_model: String,
    pub image_model: String,
}

/// A complete snapshot on disk.
#[derive(Debug, Clone)]
pub struct OnDisk {
    pub seq: u64,
    pub path: PathBuf,
}

/// Complete snapshots in `dir`, newest first. Leftover `.tmp` directories
/// (a crash mid-write) are not listed.
pub fn list(dir: &Path) -> Result<Vec<OnDisk>, SnapshotError> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_at(dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_at(dir))?;
        let name = entry.file_name();
        let Some(seq) = name.to_str().and_then(|n| n.strip_prefix("snapshot-")).and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        out.push(OnDisk { seq, path: entry.path() });
    }
    out.sort_by_key(|s| std::cmp::Reverse(s.seq));
    Ok(out)
}

/// Writes a snapshot of the state after record `seq` from `records` (which
/// must rebuild that state when applied in order). Returns its manifest.
pub fn write(
    dir: &Path,
    seq: u64,
    counts: Counts,
    records: impl Iterator<Item = WalRecord>,
) -> Result<(OnDisk, Manifest), SnapshotError> {
    std::fs::create_dir_all(dir).map_err(io_at(dir))?;
    let final_path = dir.join(dir_name(seq));
    let tmp = dir.join(format!("{}.tmp", dir_name(seq)));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io_at(&tmp))?;
    }
    std::fs::create_dir(&tmp).map_err(io_at(&tmp))?;
    let result = write_into(&tmp, seq, counts, records).and_then(|manifest| {
        fail::fail_point!("snapshot::before_rename", |_| std::process::abort());
        if final_path.exists() {
            // Same sequence number as an existing snapshot: same state.
            std::fs::remove_dir_all(&final_path).map_err(io_at(&final_path))?;
        }
        std::fs::rename(&tmp, &final_path).map_err(io_at(&final_path))?;
        sync_dir(dir).map_err(|e| invalid(dir, e.to_string()))?;
        Ok(manifest)
    });
    match result {
        Ok(manifest) => Ok((OnDisk { seq, path: final_path }, manifest)),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

fn write_into(
    tmp: &Path,
    seq: u64,
    counts: Counts,
    records: impl Iterator<Item = WalRecord>,
) -> Result<Manifest, SnapshotError> {
    let data_path = tmp.join(DATA);
    let file = File::create(&data_path).map_err(io_at(&data_path))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let (mut n, mut bytes, mut crc) = (0u64, 0u64, 0u32);
    for record in records {
        n += 1;
        let frame = encode_frame(n, &record.encode_to_vec());
        out.write_all(&frame).map_err(io_at(&data_path))?;
        crc = crc32c::crc32c_append(crc, &frame);
        bytes += frame.len() as u64;
        if n == 1 {
            fail::fail_point!("snapshot::mid_data", |_| std::process::abort());
        }
    }
    let file = out.into_inner().map_err(|e| io_at(&data_path)(e.into_error()))?;
    file.sync_all().map_err(io_at(&data_path))?;
    let manifest = Manifest {
        format: FORMAT,
        seq,
        records: n,
        items: counts.items,
        users: counts.users,
        items_with_signals: counts.items_with_signals,
        dimension: counts.dimension,
        bytes,
        crc32c: crc,
        created_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        text_model: counts.text_model,
        image_model: counts.image_model,
    };
    let manifest_path = tmp.join(MANIFEST);
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| invalid(&manifest_path, e.to_string()))?;
    let mut f = File::create(&manifest_path).map_err(io_at(&manifest_path))?;
    f.write_all(&json).and_then(|_| f.sync_all()).map_err(io_at(&manifest_path))?;
    sync_dir(tmp).map_err(|e| invalid(tmp, e.to_string()))?;
    Ok(manifest)
}

/// Reads a snapshot's manifest: it parses and names this format and the
/// directory's sequence number. Cheap (listing); [`verify`] also checks the
/// data.
pub fn read_manifest(snapshot: &OnDisk) -> Result<Manifest, SnapshotError> {
    let manifest_path = snapshot.path.join(MANIFEST);
    let text = std::fs::read(&manifest_path).map_err(io_at(&manifest_path))?;
    let manifest: Manifest =
        serde_json::from_slice(&text).map_err(|e| invalid(&manifest_path, format!("unreadable manifest: {e}")))?;
    if manifest.format != FORMAT {
        return Err(invalid(&manifest_path, format!("format {} (this build reads {FORMAT})", manifest.format)));
    }
    if manifest.seq != snapshot.seq {
        return Err(invalid(&manifest_path, format!("says sequence {}, directory {}", manifest.seq, snapshot.seq)));
    }
    Ok(manifest)
}

/// The name of the directory holding snapshot `seq`.
pub fn dir_name(seq: u64) -> String {
    format!("snapshot-{seq:020}")
}

/// Checks a snapshot without loading it: the manifest parses, names this
/// format and sequence number, and the data file has its length and CRC32C.
pub fn verify(snapshot: &OnDisk) -> Result<Manifest, SnapshotError> {
    let manifest = read_manifest(snapshot)?;
    let data_path = snapshot.path.join(DATA);
    let mut reader = BufReader::with_capacity(1 << 20, File::open(&data_path).map_err(io_at(&data_path))?);
    let (mut crc, mut bytes) = (0u32, 0u64);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf).map_err(io_at(&data_path))?;
        if n == 0 {
            break;
        }
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        bytes += n as u64;
    }
    if bytes != manifest.bytes || crc != manifest.crc32c {
        return Err(invalid(
            &data_path,
            format!(
                "{bytes} bytes with CRC32C {crc:08x}; the manifest says {} bytes with {:08x}",
                manifest.bytes, manifest.crc32c
            ),
        ));
    }
    Ok(manifest)
}

/// Verifies a snapshot, then hands its records to `apply` in order.
pub fn load(snapshot: &OnDisk, mut apply: impl FnMut(WalRecord)) -> Result<Manifest, SnapshotError> {
    let manifest = verify(snapshot)?;
    let data_path = snapshot.path.join(DATA);
    let data = std::fs::read(&data_path).map_err(io_at(&data_path))?;
    let scan = scan_frames(&data, 1);
    if scan.stop != Stop::End || scan.records.len() as u64 != manifest.records {
        return Err(invalid(&data_path, format!("{} valid records of {}", scan.records.len(), manifest.records)));
    }
    // Decode everything before applying anything, so a bad record cannot
    // leave the caller half-loaded.
    let mut records = Vec::with_capacity(scan.records.len());
    for (seq, payload) in scan.records {
        records.push(WalRecord::decode(payload).map_err(|e| invalid(&data_path, format!("record {seq}: {e}")))?);
    }
    drop(data);
    records.into_iter().for_each(&mut apply);
    Ok(manifest)
}

/// Deletes all but the newest `keep` snapshots and any leftover `.tmp`
/// directory. Returns the sequence number of the oldest snapshot kept.
pub fn prune(dir: &Path, keep: usize) -> Result<Option<u64>, SnapshotError> {
    let all = list(dir)?;
    for old in all.iter().skip(keep.max(1)) {
        std::fs::remove_dir_all(&old.path).map_err(io_at(&old.path))?;
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_name().to_str().is_some_and(|n| n.ends_with(".tmp")) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    sync_dir(dir).map_err(|e| invalid(dir, e.to_string()))?;
    Ok(all.get(..keep.max(1).min(all.len())).and_then(|kept| kept.last()).map(|s| s.seq))
}

/// Rewrites bytes of a snapshot's data file in place (tests of corruption).
#[cfg(test)]
pub(crate) fn damage(snapshot: &OnDisk, at: u64) {
    use std::io::{Seek, SeekFrom};
    let mut f = std::fs::OpenOptions::new().read(true).write(true).open(snapshot.path.join(DATA)).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    let mut b = [0u8];
    f.read_exact(&mut b).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&[b[0] ^ 0x55]).unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::Op;
    use vitrine_proto::pb;

    fn rec(i: u32) -> WalRecord {
        WalRecord { op: Some(Op::Delete(pb::ShardDeleteRequest { ids: vec![format!("item-{i}")], versions: vec![] })) }
    }

    #[test]
    fn written_snapshots_load_back_and_prune() {
        let dir = tempfile::tempdir().unwrap();
        for seq in [5u64, 9, 12] {
            let (on_disk, m) = write(dir.path(), seq, Counts::default(), (0..seq as u32).map(rec)).unwrap();
            assert_eq!(m.records, seq);
            let mut got = Vec::new();
            assert_eq!(load(&on_disk, |r| got.push(r)).unwrap(), m);
            assert_eq!(got, (0..seq as u32).map(rec).collect::<Vec<_>>());
        }
        std::fs::create_dir(dir.path().join("snapshot-00000000000000000013.tmp")).unwrap();
        assert_eq!(list(dir.path()).unwrap().iter().map(|s| s.seq).collect::<Vec<_>>(), [12, 9, 5]);
        assert_eq!(prune(dir.path(), 2).unwrap(), Some(9));
        assert_eq!(list(dir.path()).unwrap().iter().map(|s| s.seq).collect::<Vec<_>>(), [12, 9]);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2, "the .tmp leftover is gone");
    }

    #[test]
    fn any_damaged_byte_or_manifest_is_refused_before_loading() {
        let dir = tempfile::tempdir().unwrap();
        let (on_disk, m) = write(dir.path(), 3, Counts::default(), (0..3).map(rec)).unwrap();
        for at in [0, 5, 17, m.bytes - 1] {
            damage(&on_disk, at);
            let mut applied = 0;
            let err = load(&on_disk, |_| applied += 1).expect_err("damaged");
            assert!(matches!(err, SnapshotError::Invalid { .. }), "{err}");
            assert_eq!(applied, 0);
            damage(&on_disk, at); // undo (xor)
            assert!(verify(&on_disk).is_ok());
        }
        let manifest = on_disk.path.join(MANIFEST);
        let text = std::fs::read_to_string(&manifest).unwrap();
        std::fs::write(&manifest, &text[..text.len() / 2]).unwrap();
        assert!(verify(&on_disk).unwrap_err().to_string().contains("unreadable manifest"));
        std::fs::remove_file(&manifest).unwrap();
        assert!(matches!(verify(&on_disk), Err(SnapshotError::Io { .. })));
    }
}
