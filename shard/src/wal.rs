//! Write-ahead log: every upsert, delete and event batch is framed, checksummed
//! and (by default) fsynced before the shard acknowledges it, and replayed on
//! start-up.
//!
//! Frame: `len: u32 LE | crc32c: u32 LE | seq: u64 LE | payload[len]`, where
//! the CRC covers `seq` and the payload. A frame cut short at the end of the
//! file is a torn write from a crash and is cut off; a bad frame followed by
//! more data is corruption and stops start-up unless repair is asked for,
//! because silently skipping it would lose acknowledged writes.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use prost::Message;
use vitrine_proto::pb;

const HEADER: usize = 16;
/// Largest payload accepted on replay. A batch of 10,000 items with 384-d
/// vectors and long descriptions stays far below it; anything larger is a
/// corrupt length field, not a record.
const MAX_RECORD: usize = 256 << 20;

/// One logged operation.
#[derive(Clone, PartialEq, Message)]
pub struct WalRecord {
    #[prost(oneof = "Op", tags = "1, 2, 3, 4")]
    pub op: Option<Op>,
}

/// The operations a shard logs. Upserts carry their computed vectors so that
/// replay never re-runs the model.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Op {
    #[prost(message, tag = "1")]
    Upsert(pb::ShardUpsertRequest),
    #[prost(message, tag = "2")]
    Delete(pb::DeleteItemsRequest),
    #[prost(message, tag = "3")]
    Events(pb::RecordEventsRequest),
    #[prost(message, tag = "4")]
    Signals(pb::UpdateSignalsRequest),
}

/// When appends reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FsyncPolicy {
    /// fsync before every acknowledgement: an acknowledged write survives a
    /// power loss.
    Always,
    /// Leave flushing to the OS: acknowledged writes survive a process crash
    /// (`kill -9`) but not a power loss or kernel crash.
    Never,
}

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("WAL {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "WAL {path} is corrupt at byte {offset}: {reason}; start with --repair-wal to drop it and every later record"
    )]
    Corrupt { path: PathBuf, offset: u64, reason: String },
}

impl WalError {
    /// Whether the disk is full, which clients should see as RESOURCE_EXHAUSTED.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, WalError::Io { source, .. } if source.kind() == std::io::ErrorKind::StorageFull)
    }
}

/// An open log, positioned for appends.
pub struct Wal {
    file: File,
    path: PathBuf,
    next_seq: u64,
    fsync: FsyncPolicy,
    bytes: u64,
}

/// What replay found.
#[derive(Debug, Default)]
pub struct Replay {
    pub records: Vec<WalRecord>,
    /// Bytes of a torn final frame that were cut off.
    pub torn_bytes: u64,
    /// Bytes dropped by `--repair-wal`.
    pub repaired_bytes: u64,
}

impl Wal {
    /// Opens (or creates) the log at `path`, returning the records to replay.
    pub fn open(path: &Path, fsync: FsyncPolicy, repair: bool) -> Result<(Self, Replay), WalError> {
        let io = |source| WalError::Io { path: path.to_path_buf(), source };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).map_err(io)?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf).map_err(io)?;
        let mut replay = Replay::default();
        let mut offset = 0usize;
        let mut next_seq = 1u64;
        while offset < buf.len() {
            match parse_frame(&buf[offset..]) {
                Frame::Ok { seq, payload, len } => {
                    if seq != next_seq {
                        let reason = format!("sequence {seq} where {next_seq} was expected");
                        if !repair {
                            return Err(WalError::Corrupt { path: path.to_path_buf(), offset: offset as u64, reason });
                        }
                        replay.repaired_bytes = (buf.len() - offset) as u64;
                        break;
                    }
                    match WalRecord::decode(payload) {
                        Ok(r) => replay.records.push(r),
                        Err(e) => {
                            if !repair {
                                return Err(WalError::Corrupt {
                                    path: path.to_path_buf(),
                                    offset: offset as u64,
                                    reason: format!("checksum ok but undecodable: {e}"),
                                });
                            }
                            replay.repaired_bytes = (buf.len() - offset) as u64;
                            break;
                        }
                    }
                    next_seq += 1;
                    offset += len;
                }
                Frame::Torn => {
                    replay.torn_bytes = (buf.len() - offset) as u64;
                    break;
                }
                Frame::Bad(reason) => {
                    if !repair {
                        return Err(WalError::Corrupt { path: path.to_path_buf(), offset: offset as u64, reason });
                    }
                    replay.repaired_bytes = (buf.len() - offset) as u64;
                    break;
                }
            }
        }
        if offset < buf.len() {
            tracing::warn!(path = %path.display(), offset, torn = replay.torn_bytes, repaired = replay.repaired_bytes,
                "cutting the WAL after its last valid record");
            file.set_len(offset as u64).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        file.seek(SeekFrom::Start(offset as u64)).map_err(io)?;
        crate::metrics::get().wal_bytes.set(offset as i64);
        Ok((Self { file, path: path.to_path_buf(), next_seq, fsync, bytes: offset as u64 }, replay))
    }

    /// Appends one record; durable per the fsync policy when this returns.
    /// On failure the file is cut back to its previous length so a partial
    /// frame cannot sit in the middle of later records. Updates
    /// `vitrine_wal_bytes` and times the fsync in `vitrine_wal_fsync_seconds`.
    pub fn append(&mut self, record: &WalRecord) -> Result<u64, WalError> {
        let payload = record.encode_to_vec();
        let seq = self.next_seq;
        let mut frame = Vec::with_capacity(HEADER + payload.len());
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        frame.extend_from_slice(&checksum(seq, &payload).to_le_bytes());
        frame.extend_from_slice(&seq.to_le_bytes());
        frame.extend_from_slice(&payload);
        let io = |source| WalError::Io { path: self.path.clone(), source };
        let metrics = crate::metrics::get();
        let result = self.file.write_all(&frame).and_then(|_| match self.fsync {
            FsyncPolicy::Always => {
                let started = Instant::now();
                let synced = self.file.sync_data();
                metrics.wal_fsync_seconds.observe(started.elapsed().as_secs_f64());
                synced
            }
            FsyncPolicy::Never => Ok(()),
        });
        if let Err(e) = result {
            // Best effort: drop the partial frame so the next append starts clean.
            let _ = self.file.set_len(self.bytes).and_then(|_| self.file.seek(SeekFrom::Start(self.bytes)).map(|_| ()));
            return Err(io(e));
        }
        self.bytes += frame.len() as u64;
        self.next_seq += 1;
        metrics.wal_bytes.set(self.bytes as i64);
        Ok(seq)
    }
}

fn checksum(seq: u64, payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&seq.to_le_bytes()), payload)
}

enum Frame<'a> {
    Ok { seq: u64, payload: &'a [u8], len: usize },
    Torn,
    Bad(String),
}

fn parse_frame(buf: &[u8]) -> Frame<'_> {
    if buf.len() < HEADER {
        return Frame::Torn;
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let seq = u64::from_le_bytes([buf[8], buf[9], buf[10], buf[11], buf[12], buf[13], buf[14], buf[15]]);
    if len > MAX_RECORD {
        return Frame::Bad(format!("record length {len} exceeds {MAX_RECORD}"));
    }
    if buf.len() < HEADER + len {
        return Frame::Torn;
    }
    let payload = &buf[HEADER..HEADER + len];
    if checksum(seq, payload) != crc {
        // A bad checksum on the very last frame is a torn write; anywhere
        // else acknowledged records follow it, so it is corruption.
        return if buf.len() == HEADER + len { Frame::Torn } else { Frame::Bad("checksum mismatch".into()) };
    }
    Frame::Ok { seq, payload, len: HEADER + len }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: u32) -> WalRecord {
        WalRecord { op: Some(Op::Delete(pb::DeleteItemsRequest { ids: vec![format!("item-{i}")] })) }
    }

    fn write(path: &Path, n: u32) {
        let (mut wal, replay) = Wal::open(path, FsyncPolicy::Always, false).unwrap();
        assert!(replay.records.is_empty());
        for i in 0..n {
            wal.append(&rec(i)).unwrap();
        }
    }

    #[test]
    fn records_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("wal.log");
        write(&p, 10);
        let (mut wal, replay) = Wal::open(&p, FsyncPolicy::Always, false).unwrap();
        assert_eq!(replay.records, (0..10).map(rec).collect::<Vec<_>>());
        wal.append(&rec(10)).unwrap();
        let (_, replay) = Wal::open(&p, FsyncPolicy::Always, false).unwrap();
        assert_eq!(replay.records.len(), 11);
    }

    #[test]
    fn appends_are_measured() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("wal.log");
        let fsyncs = || crate::metrics::get().wal_fsync_seconds.get_sample_count();
        let before = fsyncs();
        let (mut wal, _) = Wal::open(&p, FsyncPolicy::Always, false).unwrap();
        for i in 0..3 {
            wal.append(&rec(i)).unwrap();
        }
        // Other tests append in parallel, so at least ours were counted.
        assert!(fsyncs() >= before + 3);
        let (mut wal, _) = Wal::open(&p, FsyncPolicy::Never, false).unwrap();
        wal.append(&rec(3)).unwrap();
        assert_eq!(wal.bytes, std::fs::metadata(&p).unwrap().len());
    }

    #[test]
    fn a_torn_tail_is_cut_and_appends_continue() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("wal.log");
        write(&p, 5);
        let full = std::fs::metadata(&p).unwrap().len();
        for cut in [1u64, 7, 17] {
            let f = OpenOptions::new().write(true).open(&p).unwrap();
            f.set_len(full - cut).unwrap();
            let (mut wal, replay) = Wal::open(&p, FsyncPolicy::Always, false).unwrap();
            assert_eq!(replay.records.len(), 4, "cut {cut}");
            assert!(replay.torn_bytes > 0);
            wal.append(&rec(4)).unwrap();
            drop(wal);
            let (_, replay) = Wal::open(&p, FsyncPolicy::Always, false).unwrap();
            assert_eq!(replay.records, (0..5).map(rec).collect::<Vec<_>>());
        }
    }

    #[test]
    fn corruption_in_the_middle_stops_unless_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("wal.log");
        write(&p, 5);
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[HEADER + 3] ^= 0xff; // inside the first payload
        std::fs::write(&p, &bytes).unwrap();
        let err = Wal::open(&p, FsyncPolicy::Always, false).err().expect("must refuse");
        assert!(matches!(err, WalError::Corrupt { offset: 0, .. }), "{err}");
        let (_, replay) = Wal::open(&p, FsyncPolicy::Always, true).unwrap();
        assert!(replay.records.is_empty());
        assert!(replay.repaired_bytes > 0);
    }
}
