//! Write-ahead log: every upsert, delete, event batch and signal update is
//! framed, checksummed and made durable (per the fsync policy) before the
//! shard acknowledges it, and replayed on start-up after the newest snapshot.
//!
//! The log is a directory of *segments*, `wal-<first seq>.log`. A snapshot
//! starts a new segment first ([`Wal::rotate`]), so once the snapshot is safe
//! the segments it covers are deleted whole ([`Wal::remove_through`]); no
//! file is ever rewritten in place.
//!
//! Frame: `len: u32 LE | crc32c: u32 LE | seq: u64 LE | payload[len]`, where
//! the CRC covers `seq` and the payload. Sequence numbers run on across
//! segments without gaps. A frame cut short at the end of the *last* segment
//! is a torn write from a crash and is cut off; any other bad frame, a gap in
//! the sequence, or a missing segment is corruption and stops start-up unless
//! repair is asked for, because skipping it would silently lose acknowledged
//! writes.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
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
    // The shard messages below extend, field for field, the public ones
    // logged before replication (DeleteItemsRequest, RecordEventsRequest,
    // UpdateSignalsRequest) with versions, so older logs still decode.
    #[prost(message, tag = "2")]
    Delete(pb::ShardDeleteRequest),
    #[prost(message, tag = "3")]
    Events(pb::ShardEventsRequest),
    #[prost(message, tag = "4")]
    Signals(pb::ShardSignalsRequest),
}

/// When appends reach the disk. docs/RELIABILITY.md states what each gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FsyncPolicy {
    /// fsync before every acknowledgement: an acknowledged write survives a
    /// power loss. One fsync per write batch.
    Always,
    /// Group commit: acknowledgements wait for a shared fsync. A flusher
    /// thread starts the next fsync as soon as the previous one ends (plus
    /// `--fsync-group-ms`, 0 by default), so writers that arrive during one
    /// flush share the next. Same guarantee as `always`; more throughput
    /// with many concurrent writers, since the log's lock is not held
    /// across the fsync.
    Group,
    /// Leave flushing to the OS: acknowledged writes survive a process crash
    /// (`kill -9`) but not a power loss or kernel crash.
    Never,
}

/// How to open the log.
#[derive(Debug, Clone, Copy)]
pub struct WalOptions {
    pub fsync: FsyncPolicy,
    /// Extra wait before each shared fsync under [`FsyncPolicy::Group`], to
    /// gather more writers per flush on disks where fsync is cheap relative
    /// to the write rate. Zero: flush as soon as there is something to flush.
    pub group_interval: Duration,
    /// Drop a corrupt record and everything after it instead of refusing.
    pub repair: bool,
}

impl WalOptions {
    pub fn new(fsync: FsyncPolicy) -> Self {
        Self { fsync, group_interval: Duration::ZERO, repair: false }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("WAL {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "WAL {path} is corrupt at byte {offset}: {reason}; start with --repair-wal to drop it and every later record"
    )]
    Corrupt { path: PathBuf, offset: u64, reason: String },
    #[error("WAL in {dir} cannot be replayed from sequence {needed}: {reason}")]
    Gap { dir: PathBuf, needed: u64, reason: String },
    #[error("WAL {path}: an earlier fsync failed ({reason}); the shard refuses writes until it is restarted")]
    Poisoned { path: PathBuf, reason: String },
}

impl WalError {
    /// Whether the disk is full, which clients should see as RESOURCE_EXHAUSTED.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, WalError::Io { source, .. } if source.kind() == std::io::ErrorKind::StorageFull)
    }
}

/// One segment file.
#[derive(Debug, Clone)]
struct Segment {
    /// Sequence number of its first record (or of the next one, when empty).
    start: u64,
    path: PathBuf,
    bytes: u64,
}

fn segment_path(dir: &Path, start: u64) -> PathBuf {
    dir.join(format!("wal-{start:020}.log"))
}

fn parse_segment_name(name: &str) -> Option<u64> {
    name.strip_prefix("wal-")?.strip_suffix(".log")?.parse().ok()
}

/// An open log, positioned for appends to its last segment.
pub struct Wal {
    dir: PathBuf,
    /// Oldest first; the last one takes appends.
    segments: Vec<Segment>,
    file: Arc<File>,
    next_seq: u64,
    options: WalOptions,
    /// The group-commit flusher, under [`FsyncPolicy::Group`].
    group: Option<Arc<GroupSync>>,
    /// Set when an fsync failed: after a failed fsync the kernel may have
    /// dropped the dirty pages, so nothing later can be promised.
    poisoned: Option<String>,
}

/// What replay found.
#[derive(Debug, Default)]
pub struct Replay {
    /// Records after the snapshot's sequence, in order.
    pub records: Vec<WalRecord>,
    /// Sequence number of the last record in the log (0 when none).
    pub last_seq: u64,
    /// Bytes of a torn final frame that were cut off.
    pub torn_bytes: u64,
    /// Bytes dropped by `--repair-wal`.
    pub repaired_bytes: u64,
}

/// A record that is in the log; [`Appended::wait_durable`] returns once it
/// is durable per the fsync policy.
#[must_use = "a write is acknowledged only after wait_durable"]
pub struct Appended {
    pub seq: u64,
    group: Option<Arc<GroupSync>>,
}

impl Appended {
    /// Blocks until the record is on disk under group commit; returns at once
    /// under the other policies (their append already did what they promise).
    /// Call it after releasing the log's lock so other writers can join the
    /// same flush.
    pub fn wait_durable(self) -> Result<u64, WalError> {
        match self.group {
            Some(g) => g.wait(self.seq).map(|_| self.seq),
            None => Ok(self.seq),
        }
    }
}

impl Wal {
    /// Opens (or creates) the log in `dir` and returns the records after
    /// sequence `after` (the newest snapshot's), to replay on top of it.
    pub fn open(dir: &Path, after: u64, options: WalOptions) -> Result<(Self, Replay), WalError> {
        let io_dir = |source| WalError::Io { path: dir.to_path_buf(), source };
        std::fs::create_dir_all(dir).map_err(io_dir)?;
        // A single `wal.log` is the layout before segments.
        let legacy = dir.join("wal.log");
        if legacy.is_file() {
            convert_legacy(dir, &legacy, options.repair)?;
        }
        let mut segments = list_segments(dir)?;
        let mut replay = Replay::default();
        // Segments wholly at or before `after` are covered by the snapshot.
        let first_needed = segments.iter().rposition(|s| s.start <= after + 1).unwrap_or(0);
        if let Some(first) = segments.get(first_needed) {
            if first.start > after + 1 {
                return Err(WalError::Gap {
                    dir: dir.to_path_buf(),
                    needed: after + 1,
                    reason: format!("the oldest segment starts at {}; the records before it are missing", first.start),
                });
            }
        }
        let mut expected: Option<u64> = None;
        let mut keep = segments.len();
        for i in first_needed..segments.len() {
            let last = i + 1 == segments.len();
            let seg = &mut segments[i];
            if let Some(e) = expected {
                if seg.start != e {
                    let reason =
                        format!("segment starts at sequence {} but the previous one ends at {}", seg.start, e - 1);
                    if !options.repair {
                        return Err(WalError::Corrupt { path: seg.path.clone(), offset: 0, reason });
                    }
                    replay.repaired_bytes += segments[i..].iter().map(|s| s.bytes).sum::<u64>();
                    keep = i;
                    break;
                }
            }
            let scanned = scan_segment(seg, after, last, options.repair, &mut replay)?;
            expected = Some(scanned.next_seq);
            if scanned.cut_at < seg.bytes {
                tracing::warn!(path = %seg.path.display(), offset = scanned.cut_at, torn = replay.torn_bytes,
                    repaired = replay.repaired_bytes, "cutting the WAL after its last valid record");
                let f = OpenOptions::new().write(true).open(&seg.path).map_err(|source| io_at(&seg.path, source))?;
                f.set_len(scanned.cut_at).and_then(|_| f.sync_all()).map_err(|source| io_at(&seg.path, source))?;
                seg.bytes = scanned.cut_at;
                if !last {
                    // Repair: everything after the bad frame goes.
                    replay.repaired_bytes += segments[i + 1..].iter().map(|s| s.bytes).sum::<u64>();
                    keep = i + 1;
                    break;
                }
            }
        }
        for s in segments.drain(keep..) {
            std::fs::remove_file(&s.path).map_err(|source| io_at(&s.path, source))?;
        }
        let mut next_seq = expected.unwrap_or(after + 1);
        replay.last_seq = next_seq - 1;
        // After a snapshot newer than every record (or with no log at all),
        // appends continue from the snapshot in a segment of their own.
        if next_seq <= after || segments.is_empty() {
            next_seq = next_seq.max(after + 1);
            let path = segment_path(dir, next_seq);
            File::create(&path).map_err(|source| io_at(&path, source))?;
            sync_dir(dir)?;
            segments.push(Segment { start: next_seq, path, bytes: 0 });
        }
        let active = segments.last().expect("at least one segment").clone();
        let mut file =
            OpenOptions::new().write(true).open(&active.path).map_err(|source| io_at(&active.path, source))?;
        file.seek(SeekFrom::Start(active.bytes)).map_err(|source| io_at(&active.path, source))?;
        let file = Arc::new(file);
        let group = match options.fsync {
            FsyncPolicy::Group => Some(GroupSync::start(Arc::clone(&file), next_seq - 1, options.group_interval)),
            _ => None,
        };
        let wal = Self { dir: dir.to_path_buf(), segments, file, next_seq, options, group, poisoned: None };
        wal.publish_size();
        Ok((wal, replay))
    }

    /// Appends one record. When this returns the record is in the file (and
    /// on disk under `always`); under `group`, [`Appended::wait_durable`]
    /// waits for the shared flush. On failure the file is cut back to its
    /// previous length so a partial frame cannot sit in the middle of later
    /// records. Updates `vitrine_wal_bytes` and times fsyncs in
    /// `vitrine_wal_fsync_seconds`.
    pub fn append(&mut self, record: &WalRecord) -> Result<Appended, WalError> {
        let active = self.active_path().to_path_buf();
        if let Some(reason) = self.poisoned.clone().or_else(|| self.group.as_ref().and_then(|g| g.failure())) {
            return Err(WalError::Poisoned { path: active, reason });
        }
        fail::fail_point!("wal::append", |_| Err(WalError::Io {
            path: active.clone(),
            source: std::io::Error::new(std::io::ErrorKind::StorageFull, "failpoint wal::append"),
        }));
        let seq = self.next_seq;
        let frame = encode_frame(seq, &record.encode_to_vec());
        let before = self.segments.last().map_or(0, |s| s.bytes);
        let metrics = crate::metrics::get();
        let mut file: &File = &self.file;
        let result = file.write_all(&frame).and_then(|_| match self.options.fsync {
            FsyncPolicy::Always => {
                let started = Instant::now();
                let synced = file.sync_data();
                metrics.wal_fsync_seconds.observe(started.elapsed().as_secs_f64());
                synced
            }
            FsyncPolicy::Group | FsyncPolicy::Never => Ok(()),
        });
        if let Err(e) = result {
            // Best effort: drop the partial frame so the next append starts clean.
            if file.set_len(before).and_then(|_| file.seek(SeekFrom::Start(before)).map(|_| ())).is_err() {
                self.poisoned = Some(format!("could not cut back a failed append: {e}"));
            } else if self.options.fsync == FsyncPolicy::Always && e.kind() != std::io::ErrorKind::StorageFull {
                // The write went in but the fsync failed: the page cache may
                // have dropped earlier dirty pages too (the "fsyncgate" rule).
                tracing::error!(error = %e, "WAL fsync failed; the shard refuses writes until it is restarted");
                self.poisoned = Some(e.to_string());
            }
            return Err(WalError::Io { path: active, source: e });
        }
        if let Some(seg) = self.segments.last_mut() {
            seg.bytes += frame.len() as u64;
        }
        self.next_seq += 1;
        if let Some(g) = &self.group {
            g.written(seq);
        }
        self.publish_size();
        Ok(Appended { seq, group: self.group.clone() })
    }

    /// Makes everything appended so far durable (graceful shutdown).
    pub fn sync(&self) -> Result<(), WalError> {
        self.file.sync_data().map_err(|source| io_at(self.active_path(), source))
    }

    /// Sequence number of the last appended record (0 when none).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Bytes in all segments.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// Bytes in the segments that start after record `seq` (the log written
    /// since the snapshot at `seq`).
    pub fn bytes_after(&self, seq: u64) -> u64 {
        self.segments.iter().filter(|s| s.start > seq).map(|s| s.bytes).sum()
    }

    /// Closes the active segment (synced) and starts a new one, so that the
    /// records up to the returned sequence number can later be dropped whole.
    /// Keeps the active segment when it holds no record.
    pub fn rotate(&mut self) -> Result<u64, WalError> {
        let last = self.last_seq();
        if self.segments.last().is_some_and(|s| s.bytes == 0) {
            return Ok(last);
        }
        self.sync()?;
        let path = segment_path(&self.dir, self.next_seq);
        let file =
            OpenOptions::new().write(true).create_new(true).open(&path).map_err(|source| io_at(&path, source))?;
        sync_dir(&self.dir)?;
        self.file = Arc::new(file);
        if let Some(g) = &self.group {
            g.switch_file(Arc::clone(&self.file));
        }
        self.segments.push(Segment { start: self.next_seq, path, bytes: 0 });
        Ok(last)
    }

    /// Deletes the segments whose records are all at or before `seq` (which
    /// a verified snapshot holds). The active segment always stays.
    pub fn remove_through(&mut self, seq: u64) -> Result<usize, WalError> {
        let mut removed = 0;
        while self.segments.len() > 1 && self.segments[1].start <= seq + 1 {
            let s = self.segments.remove(0);
            std::fs::remove_file(&s.path).map_err(|source| io_at(&s.path, source))?;
            removed += 1;
        }
        if removed > 0 {
            sync_dir(&self.dir)?;
            self.publish_size();
        }
        Ok(removed)
    }

    fn active_path(&self) -> &Path {
        self.segments.last().map_or(self.dir.as_path(), |s| s.path.as_path())
    }

    fn publish_size(&self) {
        crate::metrics::get().wal_bytes.set(self.bytes() as i64);
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        if let Some(g) = &self.group {
            g.stop();
        }
    }
}

fn io_at(path: &Path, source: std::io::Error) -> WalError {
    WalError::Io { path: path.to_path_buf(), source }
}

/// fsyncs a directory so that files created, renamed or removed in it stay
/// so after a power loss.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|source| io_at(dir, source))
}

fn list_segments(dir: &Path) -> Result<Vec<Segment>, WalError> {
    let mut segments = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|source| io_at(dir, source))? {
        let entry = entry.map_err(|source| io_at(dir, source))?;
        let Some(start) = entry.file_name().to_str().and_then(parse_segment_name) else { continue };
        if start == 0 {
            // Sequence numbers start at 1; no version writes this name.
            let reason = "a segment named for sequence 0, which no record can have".to_string();
            return Err(WalError::Corrupt { path: entry.path(), offset: 0, reason });
        }
        let bytes = entry.metadata().map_err(|source| io_at(&entry.path(), source))?.len();
        segments.push(Segment { start, path: entry.path(), bytes });
    }
    segments.sort_by_key(|s| s.start);
    Ok(segments)
}

/// Where scanning a segment stopped.
struct Scanned {
    /// Sequence number after the last good record.
    next_seq: u64,
    /// Length of the good prefix (the segment's length when all of it is good).
    cut_at: u64,
}

/// Reads one segment's records, pushing those after `after` to `replay`.
fn scan_segment(seg: &Segment, after: u64, last: bool, repair: bool, replay: &mut Replay) -> Result<Scanned, WalError> {
    let mut buf = Vec::with_capacity(seg.bytes as usize);
    File::open(&seg.path).and_then(|mut f| f.read_to_end(&mut buf)).map_err(|source| io_at(&seg.path, source))?;
    let scan = scan_frames(&buf, seg.start);
    let bad =
        |offset: usize, reason: String| WalError::Corrupt { path: seg.path.clone(), offset: offset as u64, reason };
    for (seq, payload) in &scan.records {
        match WalRecord::decode(*payload) {
            Ok(r) if *seq > after => replay.records.push(r),
            Ok(_) => {}
            Err(e) => return Err(bad(0, format!("record {seq} has a valid checksum but does not decode: {e}"))),
        }
    }
    let next_seq = seg.start + scan.records.len() as u64;
    match scan.stop {
        Stop::End => {}
        Stop::Torn if last => replay.torn_bytes += (buf.len() - scan.good) as u64,
        Stop::Torn | Stop::Bad(_) if repair => replay.repaired_bytes += (buf.len() - scan.good) as u64,
        Stop::Torn => return Err(bad(scan.good, "cut short, and later segments follow it".into())),
        Stop::Bad(reason) => return Err(bad(scan.good, reason)),
    }
    Ok(Scanned { next_seq, cut_at: scan.good as u64 })
}

/// Why [`scan_frames`] stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// At the end of the buffer, every frame valid.
    End,
    /// At a frame that runs past the end of the buffer, the final frame
    /// with a bad checksum, or a tail of zeros: what a crash mid-append
    /// leaves.
    Torn,
    /// At an invalid frame with more data after it.
    Bad(String),
}

/// Frames read from a buffer: the valid prefix and why reading stopped.
#[derive(Debug)]
pub struct FrameScan<'a> {
    /// (sequence number, payload) of each valid frame, in order.
    pub records: Vec<(u64, &'a [u8])>,
    /// Length of the valid prefix.
    pub good: usize,
    pub stop: Stop,
}

/// How a frame's checksum is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The single `wal.log` before segments: CRC32C over sequence number and
    /// payload. Read once to convert it; never written.
    Legacy,
    /// CRC32C over length, sequence number and payload: a damaged length
    /// field cannot pass as a shorter record.
    Current,
}

/// Reads consecutive frames whose sequence numbers start at `first_seq`.
/// Pure and total (never panics, whatever the bytes): the fuzz tests call it
/// directly, and snapshots use the same framing.
pub fn scan_frames(buf: &[u8], first_seq: u64) -> FrameScan<'_> {
    scan_frames_as(buf, first_seq, Format::Current)
}

/// [`scan_frames`] for either checksum format.
pub fn scan_frames_as(buf: &[u8], first_seq: u64, format: Format) -> FrameScan<'_> {
    let mut records = Vec::new();
    let mut offset = 0usize;
    let mut expected = first_seq;
    let stop = loop {
        if offset == buf.len() {
            break Stop::End;
        }
        match parse_frame(&buf[offset..], format) {
            Frame::Ok { seq, payload, len } => {
                if seq != expected {
                    break Stop::Bad(format!("sequence {seq} where {expected} was expected"));
                }
                let Some(next) = expected.checked_add(1) else {
                    break Stop::Bad(format!("sequence {seq} is the last representable one"));
                };
                records.push((seq, payload));
                expected = next;
                offset += len;
            }
            Frame::Torn => break Stop::Torn,
            // A crash after the file grew but before its data reached the
            // disk leaves zeros; that data was never acknowledged (it was
            // not yet fsynced), so the zeros are a torn tail, not damage.
            Frame::Bad(_) if buf[offset..].iter().all(|&b| b == 0) => break Stop::Torn,
            Frame::Bad(reason) => break Stop::Bad(reason),
        }
    };
    FrameScan { records, good: offset, stop }
}

/// One frame as bytes.
pub(crate) fn encode_frame(seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(HEADER + payload.len());
    let len = payload.len() as u32;
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(&checksum(Format::Current, len, seq, payload).to_le_bytes());
    frame.extend_from_slice(&seq.to_le_bytes());
    frame.extend_from_slice(payload);
    frame
}

fn checksum(format: Format, len: u32, seq: u64, payload: &[u8]) -> u32 {
    let head = match format {
        Format::Legacy => crc32c::crc32c(&seq.to_le_bytes()),
        Format::Current => crc32c::crc32c_append(crc32c::crc32c(&len.to_le_bytes()), &seq.to_le_bytes()),
    };
    crc32c::crc32c_append(head, payload)
}

enum Frame<'a> {
    Ok { seq: u64, payload: &'a [u8], len: usize },
    Torn,
    Bad(String),
}

fn parse_frame(buf: &[u8], format: Format) -> Frame<'_> {
    let Some(header) = buf.get(..HEADER) else { return Frame::Torn };
    let word = |at: usize| u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]]);
    let len = word(0);
    let crc = word(4);
    let seq = u64::from(word(8)) | (u64::from(word(12)) << 32);
    if len as usize > MAX_RECORD {
        return Frame::Bad(format!("record length {len} exceeds {MAX_RECORD}"));
    }
    let end = HEADER + len as usize;
    let Some(payload) = buf.get(HEADER..end) else { return Frame::Torn };
    if checksum(format, len, seq, payload) != crc {
        // A bad checksum on the very last frame is a torn write; anywhere
        // else acknowledged records follow it, so it is corruption.
        return if buf.len() == end { Frame::Torn } else { Frame::Bad("checksum mismatch".into()) };
    }
    Frame::Ok { seq, payload, len: end }
}

/// Rewrites the single-file log of earlier versions (`wal.log`, legacy
/// checksums, first record 1) as the first segment in the current format.
/// Crash-safe: the segment appears by rename, and `wal.log` is removed only
/// after it; a leftover `wal.log` beside a first segment is that case.
fn convert_legacy(dir: &Path, legacy: &Path, repair: bool) -> Result<(), WalError> {
    let first = segment_path(dir, 1);
    if !first.exists() {
        let bytes = std::fs::read(legacy).map_err(|source| io_at(legacy, source))?;
        let scan = scan_frames_as(&bytes, 1, Format::Legacy);
        if let Stop::Bad(reason) = &scan.stop {
            if !repair {
                let offset = scan.good as u64;
                return Err(WalError::Corrupt { path: legacy.to_path_buf(), offset, reason: reason.clone() });
            }
        }
        let tmp = dir.join("wal-conversion.tmp");
        let mut out = Vec::with_capacity(bytes.len());
        for (seq, payload) in &scan.records {
            out.extend(encode_frame(*seq, payload));
        }
        let mut f = File::create(&tmp).map_err(|source| io_at(&tmp, source))?;
        f.write_all(&out).and_then(|_| f.sync_all()).map_err(|source| io_at(&tmp, source))?;
        std::fs::rename(&tmp, &first).map_err(|source| io_at(&first, source))?;
        sync_dir(dir)?;
        tracing::info!(
            records = scan.records.len(),
            dropped_bytes = bytes.len() - scan.good,
            "converted the single-file WAL to the segmented format"
        );
    }
    std::fs::remove_file(legacy).map_err(|source| io_at(legacy, source))?;
    sync_dir(dir)
}

/// The group-commit flusher: one thread that fsyncs the active segment
/// whenever it holds unsynced records (after `interval`, when set), and
/// wakes the writers waiting for them. Writers arriving during an fsync
/// are covered by the next one.
struct GroupSync {
    state: Mutex<GroupState>,
    changed: Condvar,
    interval: Duration,
}

struct GroupState {
    file: Arc<File>,
    written: u64,
    synced: u64,
    failed: Option<String>,
    stopped: bool,
}

impl GroupSync {
    fn start(file: Arc<File>, synced: u64, interval: Duration) -> Arc<Self> {
        let this = Arc::new(Self {
            state: Mutex::new(GroupState { file, written: synced, synced, failed: None, stopped: false }),
            changed: Condvar::new(),
            interval,
        });
        let worker = Arc::clone(&this);
        // Without the thread nothing would ever be acknowledged; failing to
        // start one is as fatal as a failed fsync.
        if let Err(e) = std::thread::Builder::new().name("wal-group-commit".into()).spawn(move || worker.run()) {
            this.state.lock().failed = Some(format!("cannot start the group-commit thread: {e}"));
        }
        this
    }

    fn run(&self) {
        let metrics = crate::metrics::get();
        loop {
            let mut s = self.state.lock();
            while s.written == s.synced && !s.stopped && s.failed.is_none() {
                self.changed.wait(&mut s);
            }
            if s.stopped || s.failed.is_some() {
                return;
            }
            drop(s);
            if !self.interval.is_zero() {
                // Let the writers of the next `interval` join this flush.
                std::thread::sleep(self.interval);
            }
            let (file, target) = {
                let s = self.state.lock();
                (Arc::clone(&s.file), s.written)
            };
            let started = Instant::now();
            let result = file.sync_data();
            metrics.wal_fsync_seconds.observe(started.elapsed().as_secs_f64());
            let mut s = self.state.lock();
            match result {
                Ok(()) => s.synced = s.synced.max(target),
                Err(e) => {
                    tracing::error!(error = %e, "WAL fsync failed; the shard refuses writes until it is restarted");
                    s.failed = Some(e.to_string());
                }
            }
            self.changed.notify_all();
        }
    }

    fn written(&self, seq: u64) {
        self.state.lock().written = seq;
        self.changed.notify_all();
    }

    /// The previous file was synced by the caller ([`Wal::rotate`]).
    fn switch_file(&self, file: Arc<File>) {
        self.state.lock().file = file;
    }

    fn wait(&self, seq: u64) -> Result<(), WalError> {
        let mut s = self.state.lock();
        loop {
            if s.synced >= seq {
                return Ok(());
            }
            if let Some(reason) = &s.failed {
                return Err(WalError::Poisoned { path: PathBuf::from("(active segment)"), reason: reason.clone() });
            }
            if s.stopped {
                return Err(WalError::Poisoned {
                    path: PathBuf::from("(active segment)"),
                    reason: "log closed".into(),
                });
            }
            self.changed.wait(&mut s);
        }
    }

    fn failure(&self) -> Option<String> {
        self.state.lock().failed.clone()
    }

    fn stop(&self) {
        self.state.lock().stopped = true;
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: u32) -> WalRecord {
        WalRecord { op: Some(Op::Delete(pb::ShardDeleteRequest { ids: vec![format!("item-{i}")], versions: vec![] })) }
    }

    fn opts() -> WalOptions {
        WalOptions::new(FsyncPolicy::Always)
    }

    fn write(dir: &Path, n: u32) {
        let (mut wal, replay) = Wal::open(dir, 0, opts()).unwrap();
        assert!(replay.records.is_empty());
        for i in 0..n {
            wal.append(&rec(i)).unwrap().wait_durable().unwrap();
        }
    }

    fn only_segment(dir: &Path) -> PathBuf {
        let segs = list_segments(dir).unwrap();
        assert_eq!(segs.len(), 1);
        segs[0].path.clone()
    }

    #[test]
    fn records_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 10);
        let (mut wal, replay) = Wal::open(dir.path(), 0, opts()).unwrap();
        assert_eq!(replay.records, (0..10).map(rec).collect::<Vec<_>>());
        assert_eq!(replay.last_seq, 10);
        wal.append(&rec(10)).unwrap().wait_durable().unwrap();
        let (_, replay) = Wal::open(dir.path(), 0, opts()).unwrap();
        assert_eq!(replay.records.len(), 11);
    }

    #[test]
    fn the_single_file_layout_is_converted() {
        let dir = tempfile::tempdir().unwrap();
        // A log as earlier versions wrote it: legacy checksums, torn tail.
        let mut legacy = Vec::new();
        for i in 0..3u32 {
            let payload = rec(i).encode_to_vec();
            let (len, seq) = (payload.len() as u32, u64::from(i) + 1);
            legacy.extend_from_slice(&len.to_le_bytes());
            legacy.extend_from_slice(&checksum(Format::Legacy, len, seq, &payload).to_le_bytes());
            legacy.extend_from_slice(&seq.to_le_bytes());
            legacy.extend_from_slice(&payload);
        }
        legacy.extend_from_slice(&[7, 0, 0]);
        std::fs::write(dir.path().join("wal.log"), &legacy).unwrap();
        assert!(scan_frames(&legacy, 1).records.is_empty(), "the current format rejects legacy checksums");
        let (mut wal, replay) = Wal::open(dir.path(), 0, opts()).unwrap();
        assert_eq!(replay.records, (0..3).map(rec).collect::<Vec<_>>());
        assert!(!dir.path().join("wal.log").exists());
        wal.append(&rec(3)).unwrap().wait_durable().unwrap();
        drop(wal);
        let (_, replay) = Wal::open(dir.path(), 0, opts()).unwrap();
        assert_eq!(replay.records, (0..4).map(rec).collect::<Vec<_>>());
    }

    #[test]
    fn odd_sequence_numbers_are_refused_not_panicked_on() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(segment_path(dir.path(), 0), b"").unwrap();
        assert!(matches!(Wal::open(dir.path(), 0, opts()), Err(WalError::Corrupt { .. })));
        let frame = encode_frame(u64::MAX, b"x");
        assert!(matches!(scan_frames(&frame, u64::MAX).stop, Stop::Bad(_)));
        // The length is covered by the checksum: a shortened length with the
        // bytes after it must not pass as a record.
        let mut frame = encode_frame(5, &rec(1).encode_to_vec());
        frame[0] = frame[0].wrapping_sub(1);
        assert!(scan_frames(&frame, 5).records.is_empty());
        // Zeros after the last record are a torn tail, whatever their length.
        let mut log = encode_frame(1, &rec(1).encode_to_vec());
        log.extend([0u8; 100]);
        let scan = scan_frames(&log, 1);
        assert_eq!((scan.records.len(), scan.stop), (1, Stop::Torn));
    }

    #[test]
    fn every_policy_replays_what_it_acknowledged() {
        for fsync in [FsyncPolicy::Always, FsyncPolicy::Group, FsyncPolicy::Never] {
            let dir = tempfile::tempdir().unwrap();
            let options = WalOptions { fsync, group_interval: Duration::from_millis(1), repair: false };
            let (wal, _) = Wal::open(dir.path(), 0, options).unwrap();
            let wal = Arc::new(Mutex::new(wal));
            // Concurrent writers share group flushes; each waits outside the lock.
            std::thread::scope(|s| {
                for t in 0..4u32 {
                    let wal = Arc::clone(&wal);
                    s.spawn(move || {
                        for i in 0..25 {
                            let appended = wal.lock().append(&rec(t * 100 + i)).unwrap();
                            appended.wait_durable().unwrap();
                        }
                    });
                }
            });
            drop(wal);
            let (_, replay) = Wal::open(dir.path(), 0, options).unwrap();
            assert_eq!(replay.records.len(), 100, "{fsync:?}");
        }
    }

    #[test]
    fn appends_are_measured() {
        let dir = tempfile::tempdir().unwrap();
        let fsyncs = || crate::metrics::get().wal_fsync_seconds.get_sample_count();
        let before = fsyncs();
        let (mut wal, _) = Wal::open(dir.path(), 0, opts()).unwrap();
        for i in 0..3 {
            wal.append(&rec(i)).unwrap().wait_durable().unwrap();
        }
        // Other tests append in parallel, so at least ours were counted.
        assert!(fsyncs() >= before + 3);
        drop(wal);
        let (mut wal, _) = Wal::open(dir.path(), 0, WalOptions::new(FsyncPolicy::Never)).unwrap();
        wal.append(&rec(3)).unwrap().wait_durable().unwrap();
        assert_eq!(wal.bytes(), std::fs::metadata(only_segment(dir.path())).unwrap().len());
    }

    #[test]
    fn a_torn_tail_is_cut_and_appends_continue() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 5);
        let p = only_segment(dir.path());
        let full = std::fs::metadata(&p).unwrap().len();
        for cut in [1u64, 7, 17] {
            let f = OpenOptions::new().write(true).open(&p).unwrap();
            f.set_len(full - cut).unwrap();
            let (mut wal, replay) = Wal::open(dir.path(), 0, opts()).unwrap();
            assert_eq!(replay.records.len(), 4, "cut {cut}");
            assert!(replay.torn_bytes > 0);
            wal.append(&rec(4)).unwrap().wait_durable().unwrap();
            drop(wal);
            let (_, replay) = Wal::open(dir.path(), 0, opts()).unwrap();
            assert_eq!(replay.records, (0..5).map(rec).collect::<Vec<_>>());
        }
    }

    #[test]
    fn corruption_in_the_middle_stops_unless_repaired() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 5);
        let p = only_segment(dir.path());
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[HEADER + 3] ^= 0xff; // inside the first payload
        std::fs::write(&p, &bytes).unwrap();
        let err = Wal::open(dir.path(), 0, opts()).err().expect("must refuse");
        assert!(matches!(err, WalError::Corrupt { offset: 0, .. }), "{err}");
        assert!(err.to_string().contains("--repair-wal"), "{err}");
        let (_, replay) = Wal::open(dir.path(), 0, WalOptions { repair: true, ..opts() }).unwrap();
        assert!(replay.records.is_empty());
        assert!(replay.repaired_bytes > 0);
    }

    #[test]
    fn rotation_and_removal_keep_the_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), 0, opts()).unwrap();
        for i in 0..3 {
            wal.append(&rec(i)).unwrap().wait_durable().unwrap();
        }
        assert_eq!(wal.rotate().unwrap(), 3);
        assert_eq!(wal.rotate().unwrap(), 3, "an empty segment is not rotated again");
        for i in 3..5 {
            wal.append(&rec(i)).unwrap().wait_durable().unwrap();
        }
        drop(wal);
        // A snapshot at 3 replays 4 and 5 only.
        let (mut wal, replay) = Wal::open(dir.path(), 3, opts()).unwrap();
        assert_eq!(replay.records, vec![rec(3), rec(4)]);
        assert_eq!(wal.remove_through(3).unwrap(), 1);
        assert_eq!(list_segments(dir.path()).unwrap().len(), 1);
        drop(wal);
        // Without the snapshot the log can no longer start from the beginning.
        let err = Wal::open(dir.path(), 0, opts()).err().expect("gap");
        assert!(matches!(err, WalError::Gap { needed: 1, .. }), "{err}");
        // A snapshot newer than the log: appends continue after it.
        let (mut wal, replay) = Wal::open(dir.path(), 9, opts()).unwrap();
        assert!(replay.records.is_empty());
        assert_eq!(wal.append(&rec(9)).unwrap().seq, 10);
    }

    #[test]
    fn a_damaged_older_segment_is_corruption_even_at_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), 0, opts()).unwrap();
        wal.append(&rec(0)).unwrap().wait_durable().unwrap();
        wal.append(&rec(1)).unwrap().wait_durable().unwrap();
        wal.rotate().unwrap();
        wal.append(&rec(2)).unwrap().wait_durable().unwrap();
        drop(wal);
        let first = segment_path(dir.path(), 1);
        let len = std::fs::metadata(&first).unwrap().len();
        OpenOptions::new().write(true).open(&first).unwrap().set_len(len - 3).unwrap();
        let err = Wal::open(dir.path(), 0, opts()).err().expect("must refuse");
        assert!(err.to_string().contains("later segments follow"), "{err}");
        let (_, replay) = Wal::open(dir.path(), 0, WalOptions { repair: true, ..opts() }).unwrap();
        assert_eq!(replay.records, vec![rec(0)]);
        assert!(!segment_path(dir.path(), 3).exists(), "the later segment went with the repair");
    }

    #[test]
    fn frames_scan_without_panicking_on_any_prefix() {
        let mut buf = Vec::new();
        for i in 0..4 {
            buf.extend(encode_frame(i + 1, &rec(i as u32).encode_to_vec()));
        }
        for n in 0..=buf.len() {
            let scan = scan_frames(&buf[..n], 1);
            assert!(scan.good <= n);
            assert_eq!(scan.stop == Stop::End, scan.good == n);
        }
        assert_eq!(scan_frames(&buf, 1).records.len(), 4);
        assert!(matches!(scan_frames(&buf, 2).stop, Stop::Bad(_)), "sequence numbers are checked");
    }
}
