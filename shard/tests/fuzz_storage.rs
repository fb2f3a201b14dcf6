//! Bounded fuzz targets for the shard's storage decoders: the WAL frame
//! scanner, `Wal::open` on damaged segment files, and snapshot verification
//! and loading on damaged snapshot files.
//!
//! These read bytes that a crash, a bad disk or a stray hand can leave in any
//! state, and what they decide is whether acknowledged writes survive. So
//! beyond "never panics", each target checks the promise docs/RELIABILITY.md
//! makes for damaged files:
//!
//! - `scan_frames` returns consecutive, checksum-valid frames and judges the
//!   frame it stops at as the framing rules say (torn or bad); on a real log
//!   damaged from byte `p` on, it returns exactly the records whose frames end
//!   at or before `p`, unchanged: none before the damage is lost or altered,
//!   and none that the damage touched is passed on.
//! - `Wal::open` either refuses (corrupt or gap) or replays a prefix of what
//!   was appended that keeps every record before the damage; a torn tail is
//!   cut without error; with repair it always opens (short of a gap); and
//!   the log it leaves takes appends that a later open replays.
//! - `snapshot::load` loads exactly the records written or refuses, and when
//!   it refuses it has applied nothing, even when the manifest was rewritten
//!   to match the damaged file.
//!
//! Inputs are mostly real logs (upserts with vectors, deletes, events and
//! signals, written by the real `Wal` and `snapshot::write`) damaged by byte
//! mutations (bit flips, overwrites, insertions, deletions, truncation, a
//! zeroed tail) and frame mutations (a length field rewritten, a frame
//! dropped, duplicated or swapped); the frame scanner also gets arbitrary
//! bytes and checksum-valid frames with arbitrary sequence numbers.
//!
//! The runs are bounded: the frame scanner runs `VITRINE_FUZZ_CASES` cases
//! (default [`DEFAULT_CASES`]) and the file-system targets an
//! [`FS_DIVISOR`]th of that (at least [`MIN_FS_CASES`]), from a random seed
//! (`PROPTEST_RNG_SEED=<n>` makes a run reproducible). Each prints
//! `fuzz <target>: <N> executions in <T> s` and its outcome counts, and
//! asserts that enough cases reached each outcome, so that a broken
//! generator cannot pass by checking nothing. A failing property panics with
//! the shrunk, minimal failing input.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use prost::Message;
use vitrine_proto::pb;
use vitrine_shard::snapshot::{self, SnapshotError};
use vitrine_shard::wal::{scan_frames, FrameScan, FsyncPolicy, Op, Replay, Stop, Wal, WalError, WalOptions, WalRecord};

/// Cases of the frame scanner when `VITRINE_FUZZ_CASES` is unset: it is pure
/// and runs them in about a second, cheap enough for every `cargo test`.
const DEFAULT_CASES: u32 = 4096;

/// Fewer cases than this cannot support the scanner's coverage assertions: a
/// mutation that cuts a log exactly on a frame boundary comes up in fewer
/// than two cases in a hundred. Smaller settings are raised to it.
const MIN_CASES: u32 = 1024;

/// The file-system targets create, fsync and delete real files several times
/// per case (a few milliseconds each), so they run this fraction of the cases.
const FS_DIVISOR: u32 = 8;

/// Below this the rarer outcomes those targets assert on (a gap, a forged
/// frame after valid ones) come up too few times to rule out chance.
const MIN_FS_CASES: u32 = 256;

/// The frame header: `len: u32 LE | crc32c: u32 LE | seq: u64 LE`.
const HEADER: usize = 16;

/// Largest payload the scanner accepts, restated from `wal.rs`: a larger
/// length field is corruption, not a frame still being written.
const MAX_RECORD: usize = 256 << 20;

fn cases() -> u32 {
    let cases = match std::env::var("VITRINE_FUZZ_CASES") {
        Ok(s) => s.trim().parse().unwrap_or_else(|_| panic!("VITRINE_FUZZ_CASES={s:?} is not a number of cases")),
        Err(_) => DEFAULT_CASES,
    };
    cases.max(MIN_CASES)
}

fn fs_cases() -> u32 {
    (cases() / FS_DIVISOR).max(MIN_FS_CASES)
}

// ---------------------------------------------------------------------------
// The harness.

/// Named outcome counters of one target. Shared by reference with the
/// runner's closure, which must be `Fn`.
struct Tally {
    names: &'static [&'static str],
    counts: Vec<AtomicU64>,
}

impl Tally {
    fn new(names: &'static [&'static str]) -> Self {
        Self { names, counts: names.iter().map(|_| AtomicU64::new(0)).collect() }
    }

    fn slot(&self, name: &str) -> &AtomicU64 {
        // A misspelt name would otherwise count nothing and fail a coverage
        // assertion for the wrong reason.
        let i = self.names.iter().position(|n| *n == name).unwrap_or_else(|| panic!("no counter {name:?}"));
        &self.counts[i]
    }

    fn bump(&self, name: &str) {
        self.slot(name).fetch_add(1, Ordering::Relaxed);
    }

    fn get(&self, name: &str) -> u64 {
        self.slot(name).load(Ordering::Relaxed)
    }

    fn report(&self, target: &str, started: Instant) {
        let secs = started.elapsed().as_secs_f64();
        eprintln!("fuzz {target}: {} executions in {secs:.1} s", self.get("executions"));
        let counts: Vec<String> =
            self.names.iter().filter(|n| **n != "executions").map(|n| format!("{n} {}", self.get(n))).collect();
        eprintln!("fuzz {target}: {}", counts.join(", "));
    }
}

/// Runs `cases` cases of `strategy` through `check`; panics with the minimal
/// failing input if a property fails.
fn run<S: Strategy>(
    target: &str,
    cases: u32,
    tally: &Tally,
    strategy: S,
    check: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: fmt::Debug,
{
    let started = Instant::now();
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let result = runner.run(&strategy, |case| {
        tally.bump("executions");
        check(case)
    });
    if let Err(e) = result {
        panic!("fuzz {target}: {e}");
    }
    tally.report(target, started);
    assert_eq!(tally.get("executions"), u64::from(cases), "fuzz {target}: the runner ran a different number of cases");
}

/// Asserts that at least `min` cases reached an outcome, so that a generator
/// that stopped producing them cannot pass by checking nothing.
fn reached(target: &str, tally: &Tally, name: &str, min: u64) {
    let got = tally.get(name);
    assert!(got >= min, "fuzz {target}: only {got} cases reached {name:?} (at least {min} expected)");
}

/// Prints bytes as hex, so that a failing input can be replayed exactly.
struct Hex<'a>(&'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{} bytes] ", self.0.len())?;
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

// ---------------------------------------------------------------------------
// The format, restated from docs/RELIABILITY.md rather than taken from the
// code under test, so that a change to the code is judged against the spec.

/// One frame: the CRC32C covers the sequence number and the payload.
fn frame(seq: u64, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_le_bytes();
    let mut covered = len.to_vec();
    covered.extend_from_slice(&seq.to_le_bytes());
    covered.extend_from_slice(payload);
    let mut out = len.to_vec();
    out.extend_from_slice(&crc32c::crc32c(&covered).to_le_bytes());
    out.extend_from_slice(&covered[4..]);
    out
}

/// Frames for `payloads` numbered from `first_seq`, and where each lies.
fn frames(first_seq: u64, payloads: &[Vec<u8>]) -> (Vec<u8>, Vec<Range<usize>>) {
    let (mut bytes, mut spans) = (Vec::new(), Vec::new());
    for (i, p) in payloads.iter().enumerate() {
        let start = bytes.len();
        bytes.extend(frame(first_seq + i as u64, p));
        spans.push(start..bytes.len());
    }
    (bytes, spans)
}

/// Where the frames of a possibly damaged buffer lie, read from their length
/// fields alone (no checksum) as far as they fit: where frame mutations aim.
fn frame_spans(buf: &[u8]) -> Vec<Range<usize>> {
    let mut spans = Vec::new();
    let mut at = 0;
    while let Some(header) = buf.get(at..at + HEADER) {
        let len = u32::from_le_bytes(header[..4].try_into().unwrap()) as usize;
        if len > buf.len() - at - HEADER {
            break;
        }
        spans.push(at..at + HEADER + len);
        at += HEADER + len;
    }
    spans
}

/// How [`scan_frames`] must judge the frame at the start of `rest`, per the
/// framing rules: a frame that runs past the end, or the final frame with a
/// bad checksum, is torn (a crash mid-append); a length over the limit, a bad
/// checksum with data after it, or an unexpected sequence number is bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Judged {
    Valid,
    Torn,
    Bad,
}

fn judge(rest: &[u8], expected_seq: u64) -> Judged {
    let Some(header) = rest.get(..HEADER) else { return Judged::Torn };
    let len = u32::from_le_bytes(header[..4].try_into().unwrap()) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().unwrap());
    let seq = u64::from_le_bytes(header[8..].try_into().unwrap());
    if len > MAX_RECORD {
        return Judged::Bad;
    }
    let Some(payload) = rest.get(HEADER..HEADER + len) else { return Judged::Torn };
    // A bad frame followed only by zeros is a torn tail (a crash before the
    // grown file's data reached the disk).
    let zeros = rest.iter().all(|&b| b == 0);
    if frame(seq, payload)[4..8] != crc.to_le_bytes() {
        return if rest.len() == HEADER + len || zeros { Judged::Torn } else { Judged::Bad };
    }
    // The last representable sequence number has no successor: refused.
    if seq != expected_seq || seq == u64::MAX {
        return if zeros { Judged::Torn } else { Judged::Bad };
    }
    Judged::Valid
}

/// How many frames a scan must accept, and how it must judge the next, by
/// [`judge`] alone: what the `Wal::open` target expects, so that it does not
/// take the scanner under test as its own reference.
fn model_scan(buf: &[u8], first_seq: u64) -> (usize, Option<Judged>) {
    let (mut at, mut n) = (0, 0);
    while at < buf.len() {
        match judge(&buf[at..], first_seq + n as u64) {
            Judged::Valid => {
                at += HEADER + u32::from_le_bytes(buf[at..at + 4].try_into().unwrap()) as usize;
                n += 1;
            }
            other => return (n, Some(other)),
        }
    }
    (n, None)
}

/// Records compare by their encoding: vectors may hold NaN, which `==` on
/// the messages would call different from itself.
fn encoded(records: &[WalRecord]) -> Vec<Vec<u8>> {
    records.iter().map(Message::encode_to_vec).collect()
}

// ---------------------------------------------------------------------------
// Realistic records: every operation the shard logs, with vectors of any
// floats (NaN and infinities included: the log must not care).

fn arb_id() -> BoxedStrategy<String> {
    prop_oneof![6 => "[a-z0-9:-]{1,16}", 1 => "\\PC{0,8}"].boxed()
}

fn arb_vector() -> BoxedStrategy<Option<pb::Vector>> {
    prop_oneof![
        6 => prop::collection::vec(any::<f32>(), 0..24).prop_map(|values| Some(pb::Vector { values })),
        // A real model's dimension: payloads of kilobytes, lengths of two bytes.
        1 => prop::collection::vec(-1.0f32..1.0, 384).prop_map(|values| Some(pb::Vector { values })),
        1 => Just(None),
    ]
    .boxed()
}

fn arb_attributes() -> BoxedStrategy<Option<pb::Attributes>> {
    // At most one map entry: maps re-encode in hash order, and records compare
    // by their encoding.
    let one = prop::collection::vec(("[a-z]{1,6}", "[ -~]{0,8}"), 0..2);
    prop::option::of(
        ("[a-z]{0,8}", "[A-Za-z]{0,8}", prop::option::of(any::<f64>()), prop::option::of(any::<bool>()), one).prop_map(
            |(category, brand, price, in_stock, strings)| pb::Attributes {
                category,
                tags: vec![brand.clone()],
                brand,
                price,
                in_stock,
                strings: strings.into_iter().collect(),
                ..Default::default()
            },
        ),
    )
    .boxed()
}

fn arb_item() -> BoxedStrategy<pb::Item> {
    (arb_id(), "\\PC{0,24}", "[ -~]{0,48}", arb_attributes(), arb_vector(), any::<i64>())
        .prop_map(|(id, title, description, attributes, vector, published_ms)| pb::Item {
            id,
            title,
            description,
            attributes,
            vector,
            published_ms,
            ..Default::default()
        })
        .boxed()
}

fn arb_record() -> BoxedStrategy<WalRecord> {
    let event = (arb_id(), arb_id(), 0i32..6, any::<i64>())
        .prop_map(|(user_id, item_id, r#type, timestamp_ms)| pb::Event { user_id, item_id, r#type, timestamp_ms });
    let neighbour = (arb_id(), any::<f32>()).prop_map(|(id, weight)| pb::Neighbour { id, weight });
    let signals = (arb_id(), prop::collection::vec(neighbour, 0..4), any::<f32>())
        .prop_map(|(id, neighbours, popularity)| pb::ItemSignals { id, neighbours, popularity });
    let versions = || prop::collection::vec(any::<u64>(), 0..5);
    let op = prop_oneof![
        3 => (prop::collection::vec(arb_item(), 1..4), versions())
            .prop_map(|(items, versions)| Op::Upsert(pb::ShardUpsertRequest { items, versions, ..Default::default() })),
        2 => (prop::collection::vec(arb_id(), 0..5), versions())
            .prop_map(|(ids, versions)| Op::Delete(pb::ShardDeleteRequest { ids, versions })),
        2 => (prop::collection::vec(event, 1..5), versions())
            .prop_map(|(events, versions)| Op::Events(pb::ShardEventsRequest { events, versions })),
        2 => (prop::collection::vec(signals, 1..4), versions())
            .prop_map(|(signals, versions)| Op::Signals(pb::ShardSignalsRequest { signals, versions })),
    ];
    // Every record the shard logs has an operation, so its payload is never
    // empty. (An empty payload at sequence 2^32 - 1 would defeat the
    // checksum: see `a_length_change_into_zeros_goes_unseen`. Empty payloads
    // at other numbers come from the scanner's `Frames` input.)
    op.prop_map(|op| WalRecord { op: Some(op) }).boxed()
}

/// Where a log's sequence numbers start: the first log, one after a snapshot,
/// across the 32-bit boundary of the header's two words, and near the top.
fn arb_first_seq() -> BoxedStrategy<u64> {
    prop_oneof![
        2 => Just(1u64),
        2 => 2u64..100_000,
        1 => (1u64 << 32) - 4..(1u64 << 32) + 4,
        // The top 64 stay free: a log of a few records must not run past u64::MAX.
        1 => u64::MAX - (1 << 40)..u64::MAX - 64,
    ]
    .boxed()
}

// ---------------------------------------------------------------------------
// Damage.

/// A change to the bytes of a log or a snapshot file. Byte mutations are
/// what a bad disk or a partial write leaves; frame mutations (aimed with
/// [`frame_spans`]) are what a bug in a writer or a misplaced copy leaves:
/// checksum-valid frames in the wrong place.
#[derive(Clone, Debug)]
enum Mutation {
    FlipBit(Index, u8),
    Set(Index, u8),
    Insert(Index, Vec<u8>),
    Delete(Index, usize),
    Truncate(Index),
    /// Zeroes everything from a point on: blocks the file system allocated
    /// but never wrote.
    ZeroFrom(Index),
    /// Rewrites one frame's length field.
    SetLen(Index, Len),
    Drop(Index),
    /// Inserts a copy of a frame at a frame boundary.
    Duplicate {
        frame: Index,
        to: Index,
    },
    Swap(Index, Index),
}

#[derive(Clone, Copy, Debug)]
enum Len {
    Zero,
    Shorter,
    Longer,
    OverMax,
    Any(u32),
}

impl Mutation {
    fn apply(&self, b: &mut Vec<u8>) {
        let n = b.len();
        let spans = frame_spans(b);
        match self {
            Mutation::FlipBit(i, bit) if n > 0 => b[i.index(n)] ^= 1 << (bit % 8),
            Mutation::Set(i, v) if n > 0 => b[i.index(n)] = *v,
            Mutation::Insert(i, bytes) => {
                let at = i.index(n + 1);
                b.splice(at..at, bytes.iter().copied());
            }
            Mutation::Delete(i, len) if n > 0 => {
                let start = i.index(n);
                b.drain(start..(start + len).min(n));
            }
            Mutation::Truncate(i) => b.truncate(i.index(n + 1)),
            Mutation::ZeroFrom(i) if n > 0 => b[i.index(n)..].fill(0),
            Mutation::SetLen(i, len) if !spans.is_empty() => {
                let span = &spans[i.index(spans.len())];
                let old = (span.len() - HEADER) as u32;
                let new = match *len {
                    Len::Zero => 0,
                    Len::Shorter => old.saturating_sub(1),
                    Len::Longer => old + 1,
                    Len::OverMax => MAX_RECORD as u32 + 1,
                    Len::Any(v) => v,
                };
                b[span.start..span.start + 4].copy_from_slice(&new.to_le_bytes());
            }
            Mutation::Drop(i) if !spans.is_empty() => {
                b.drain(spans[i.index(spans.len())].clone());
            }
            Mutation::Duplicate { frame, to } if !spans.is_empty() => {
                let copy = b[spans[frame.index(spans.len())].clone()].to_vec();
                let k = to.index(spans.len() + 1);
                let at = spans.get(k).map_or(spans[spans.len() - 1].end, |s| s.start);
                b.splice(at..at, copy);
            }
            Mutation::Swap(i, j) if spans.len() >= 2 => {
                let (i, j) = (i.index(spans.len()), j.index(spans.len()));
                let (first, second) = (&spans[i.min(j)], &spans[i.max(j)]);
                if first != second {
                    let mut out = b[..first.start].to_vec();
                    out.extend_from_slice(&b[second.clone()]);
                    out.extend_from_slice(&b[first.end..second.start]);
                    out.extend_from_slice(&b[first.clone()]);
                    out.extend_from_slice(&b[second.end..]);
                    *b = out;
                }
            }
            _ => {}
        }
    }
}

fn arb_mutation() -> BoxedStrategy<Mutation> {
    let len = prop_oneof![
        1 => Just(Len::Zero),
        2 => Just(Len::Shorter),
        2 => Just(Len::Longer),
        1 => Just(Len::OverMax),
        1 => any::<u32>().prop_map(Len::Any),
    ];
    let inserted = prop_oneof![
        3 => prop::collection::vec(any::<u8>(), 1..8),
        // A header's worth: enough to look like the start of a frame.
        1 => prop::collection::vec(any::<u8>(), HEADER..HEADER + 4),
    ];
    prop_oneof![
        3 => (any::<Index>(), any::<u8>()).prop_map(|(i, bit)| Mutation::FlipBit(i, bit)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, v)| Mutation::Set(i, v)),
        2 => (any::<Index>(), inserted).prop_map(|(i, bytes)| Mutation::Insert(i, bytes)),
        2 => (any::<Index>(), 1usize..24).prop_map(|(i, n)| Mutation::Delete(i, n)),
        2 => any::<Index>().prop_map(Mutation::Truncate),
        1 => any::<Index>().prop_map(Mutation::ZeroFrom),
        2 => (any::<Index>(), len).prop_map(|(i, len)| Mutation::SetLen(i, len)),
        1 => any::<Index>().prop_map(Mutation::Drop),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(frame, to)| Mutation::Duplicate { frame, to }),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(i, j)| Mutation::Swap(i, j)),
    ]
    .boxed()
}

/// Mostly one mutation, whose effect the properties can pin down; sometimes
/// a few.
fn arb_mutations() -> BoxedStrategy<Vec<Mutation>> {
    prop_oneof![
        4 => prop::collection::vec(arb_mutation(), 1..2),
        1 => prop::collection::vec(arb_mutation(), 2..5),
    ]
    .boxed()
}

fn mutated(bytes: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    for m in mutations {
        m.apply(&mut b);
    }
    b
}

/// Length of the common prefix: where the damage starts.
fn damage_at(original: &[u8], damaged: &[u8]) -> usize {
    original.iter().zip(damaged).position(|(a, b)| a != b).unwrap_or(original.len().min(damaged.len()))
}

/// Frames of `spans` that end at or before byte `p`: the ones damage from
/// `p` on leaves whole.
fn whole_before(spans: &[Range<usize>], p: usize) -> usize {
    spans.iter().take_while(|s| s.end <= p).count()
}

// ---------------------------------------------------------------------------
// Target 1: the frame scanner.

#[derive(Clone, Debug)]
enum ScanInput {
    /// Arbitrary bytes: the scanner's error paths.
    Raw { first_seq: u64, bytes: Vec<u8> },
    /// Checksum-valid frames of arbitrary payloads, each numbered in sequence
    /// or, sometimes, not: the sequence check on its own.
    Frames { first_seq: u64, frames: Vec<(Option<u64>, Vec<u8>)> },
    /// A real log, intact when `mutations` is empty.
    Log { first_seq: u64, records: Vec<WalRecord>, mutations: Vec<Mutation> },
}

/// The properties every scan keeps, whatever the bytes: the valid prefix is
/// made of consecutive frames from `first_seq`, each exactly as the format
/// encodes its sequence number and payload (so its checksum holds), `End`
/// means the whole buffer, and the frame it stopped at is judged as the
/// framing rules say.
fn check_scan(buf: &[u8], first_seq: u64) -> Result<FrameScan<'_>, TestCaseError> {
    let scan = scan_frames(buf, first_seq);
    prop_assert!(scan.good <= buf.len(), "good {} of {} bytes", scan.good, buf.len());
    let mut at = 0;
    for (i, (seq, payload)) in scan.records.iter().enumerate() {
        prop_assert_eq!(*seq, first_seq + i as u64, "record {} of the valid prefix", i);
        let expected = frame(*seq, payload);
        prop_assert!(
            buf.get(at..at + expected.len()) == Some(expected.as_slice()),
            "record {} (seq {}) at byte {} is not the frame of its payload: {}",
            i,
            seq,
            at,
            Hex(buf)
        );
        at += expected.len();
    }
    prop_assert_eq!(at, scan.good, "the valid prefix is not the returned frames");
    prop_assert_eq!(scan.stop == Stop::End, scan.good == buf.len(), "stop {:?} at {} of {}", scan.stop, at, buf.len());
    if scan.stop != Stop::End {
        let judged = judge(&buf[scan.good..], first_seq + scan.records.len() as u64);
        let reported = match &scan.stop {
            Stop::Torn => Judged::Torn,
            Stop::Bad(reason) => {
                prop_assert!(!reason.trim().is_empty(), "a bad frame without a reason");
                Judged::Bad
            }
            Stop::End => unreachable!(),
        };
        prop_assert_eq!(reported, judged, "the frame at byte {} of {}", scan.good, Hex(buf));
    }
    Ok(scan)
}

#[test]
fn scan_frames_on_damaged_logs() {
    let tally = Tally::new(&[
        "executions",
        "raw",
        "frames",
        "intact logs",
        "damaged logs",
        "damage undone",
        "damage stopped bad",
        "damage stopped torn",
        "damage cut at a frame boundary",
        "records kept before damage",
    ]);
    let input = prop_oneof![
        1 => (arb_first_seq(), prop::collection::vec(any::<u8>(), 0..96))
            .prop_map(|(first_seq, bytes)| ScanInput::Raw { first_seq, bytes }),
        1 => (
            arb_first_seq(),
            prop::collection::vec(
                (prop::option::weighted(0.15, any::<u64>()), prop::collection::vec(any::<u8>(), 0..40)),
                0..6,
            ),
        )
            .prop_map(|(first_seq, frames)| ScanInput::Frames { first_seq, frames }),
        1 => (arb_first_seq(), prop::collection::vec(arb_record(), 1..8))
            .prop_map(|(first_seq, records)| ScanInput::Log { first_seq, records, mutations: Vec::new() }),
        5 => (arb_first_seq(), prop::collection::vec(arb_record(), 1..8), arb_mutations())
            .prop_map(|(first_seq, records, mutations)| ScanInput::Log { first_seq, records, mutations }),
    ];
    run("scan_frames", cases(), &tally, input, |input| {
        match input {
            ScanInput::Raw { first_seq, bytes } => {
                tally.bump("raw");
                check_scan(&bytes, first_seq)?;
            }
            ScanInput::Frames { first_seq, frames } => {
                tally.bump("frames");
                let mut buf = Vec::new();
                for (i, (seq, payload)) in frames.iter().enumerate() {
                    buf.extend(frame(seq.unwrap_or(first_seq.wrapping_add(i as u64)), payload));
                }
                let scan = check_scan(&buf, first_seq)?;
                let in_sequence = frames
                    .iter()
                    .enumerate()
                    .take_while(|(i, (seq, _))| seq.is_none_or(|s| s == first_seq + *i as u64));
                prop_assert_eq!(scan.records.len(), in_sequence.count(), "frames in sequence: {}", Hex(&buf));
            }
            ScanInput::Log { first_seq, records, mutations } => {
                let payloads = encoded(&records);
                let (original, spans) = frames(first_seq, &payloads);
                let buf = mutated(&original, &mutations);
                let scan = check_scan(&buf, first_seq)?;
                if mutations.is_empty() {
                    tally.bump("intact logs");
                    prop_assert_eq!(&scan.stop, &Stop::End);
                    prop_assert_eq!(scan.records.len(), records.len());
                } else if buf == original {
                    tally.bump("damage undone");
                } else {
                    tally.bump("damaged logs");
                }
                // The key property: exactly the frames wholly before the
                // damage come back, unchanged; nothing the damage touched.
                let p = damage_at(&original, &buf);
                let kept = whole_before(&spans, p);
                prop_assert_eq!(
                    scan.records.len(),
                    kept,
                    "damage from byte {} of {} (frames {:?}) gave {} records and stop {:?}: {}",
                    p,
                    original.len(),
                    spans,
                    scan.records.len(),
                    scan.stop,
                    Hex(&buf)
                );
                for (i, (_, payload)) in scan.records.iter().enumerate() {
                    prop_assert_eq!(*payload, payloads[i].as_slice(), "record {} was altered", i);
                    let decoded = WalRecord::decode(*payload).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    prop_assert_eq!(decoded.encode_to_vec(), payloads[i].clone(), "record {} decodes differently", i);
                }
                if scan.stop == Stop::End {
                    prop_assert_eq!(&buf[..], &original[..scan.good], "a clean stop on bytes that are not the log");
                }
                // A crash mid-append leaves a prefix of the log: torn unless
                // it ends on a frame boundary.
                if buf.len() < original.len() && p == buf.len() {
                    let on_boundary = p == 0 || spans.iter().any(|s| s.end == p);
                    let expected = if on_boundary { Stop::End } else { Stop::Torn };
                    prop_assert_eq!(&scan.stop, &expected, "the log cut at byte {}", p);
                    if on_boundary {
                        tally.bump("damage cut at a frame boundary");
                    }
                }
                if buf != original {
                    match scan.stop {
                        Stop::Bad(_) => tally.bump("damage stopped bad"),
                        Stop::Torn => tally.bump("damage stopped torn"),
                        Stop::End => {}
                    }
                    if kept > 0 {
                        tally.bump("records kept before damage");
                    }
                }
            }
        }
        Ok(())
    });
    let target = "scan_frames";
    let n = u64::from(cases());
    reached(target, &tally, "raw", n / 20);
    reached(target, &tally, "frames", n / 20);
    reached(target, &tally, "intact logs", n / 20);
    reached(target, &tally, "damaged logs", n / 3);
    reached(target, &tally, "damage stopped bad", n / 10);
    reached(target, &tally, "damage stopped torn", n / 20);
    reached(target, &tally, "damage cut at a frame boundary", 3);
    reached(target, &tally, "records kept before damage", n / 5);
}

// ---------------------------------------------------------------------------
// Target 2: `Wal::open` on damaged segment files.

#[derive(Clone, Debug)]
enum WalDamage {
    /// Byte and frame mutations of one segment file.
    Bytes { segment: Index, mutations: Vec<Mutation> },
    /// A crash mid-append: the file cut inside the last frame of the last
    /// segment (or of the older one, when the last holds no frame).
    Torn(Index),
    /// A segment file deleted.
    Remove(Index),
    /// The file renamed to claim another start: a copy gone wrong.
    Rename(Index, Rename),
}

#[derive(Clone, Copy, Debug)]
enum Rename {
    Down,
    Up,
    Far,
}

#[derive(Clone, Debug)]
struct WalCase {
    records: Vec<WalRecord>,
    /// Rotate after this many records (1..=all): two segments.
    split: Option<Index>,
    /// Open after a snapshot that covers the first of two segments.
    after_first: bool,
    damage: WalDamage,
    /// Open with `repair` at once, instead of only after a refusal.
    repair_first: bool,
    /// Appended after the damaged log is opened.
    extra: WalRecord,
}

/// One segment as written: its start and bytes, and where its frames lie.
#[derive(Debug)]
struct Written {
    start: u64,
    path: PathBuf,
    bytes: Vec<u8>,
    spans: Vec<Range<usize>>,
}

fn segment_path(dir: &Path, start: u64) -> PathBuf {
    dir.join(format!("wal-{start:020}.log"))
}

fn segments_in(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?;
            let start = name.strip_prefix("wal-")?.strip_suffix(".log")?.parse().ok()?;
            Some((start, p))
        })
        .collect();
    out.sort();
    out
}

/// What an open of the damaged log must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Must {
    Open,
    Corrupt,
    Gap,
    /// Open, or refuse with either error.
    Either,
}

#[derive(Debug)]
struct Expected {
    /// Without repair, and with it.
    plain: Must,
    repaired: Must,
    /// An open may lose the records from the damage on, never one before:
    /// its last sequence number is at least this.
    at_least: u64,
    /// The last sequence number when the damage determines it.
    exactly: Option<u64>,
    /// Bytes of a torn final frame that the open must cut off.
    torn_bytes: Option<u64>,
}

fn wal_options(repair: bool) -> WalOptions {
    // Durability is not under test here, and fsyncs would dominate the run.
    WalOptions { repair, ..WalOptions::new(FsyncPolicy::Never) }
}

/// Writes the case's records with the real `Wal`, checks that the files
/// hold exactly the frames the format describes, and returns them.
fn write_log(dir: &Path, case: &WalCase) -> Result<Vec<Written>, TestCaseError> {
    let (mut wal, replay) = Wal::open(dir, 0, wal_options(false)).expect("a new log opens");
    prop_assert!(replay.records.is_empty());
    let n = case.records.len();
    let split = case.split.map(|i| i.index(n) + 1);
    for (i, r) in case.records.iter().enumerate() {
        if split == Some(i) {
            prop_assert_eq!(wal.rotate().expect("rotate"), i as u64);
        }
        prop_assert_eq!(wal.append(r).expect("append").wait_durable().expect("durable"), i as u64 + 1);
    }
    if split == Some(n) {
        wal.rotate().expect("rotate");
    }
    drop(wal);
    // Records per segment, as index ranges.
    let bounds: Vec<Range<usize>> = match split {
        None => std::iter::once(0..n).collect(),
        Some(s) => vec![0..s, s..n],
    };
    let on_disk = segments_in(dir);
    prop_assert_eq!(on_disk.len(), bounds.len(), "segments {:?}", on_disk);
    let payloads = encoded(&case.records);
    let mut out = Vec::new();
    for ((start, path), range) in on_disk.into_iter().zip(bounds) {
        prop_assert_eq!(start, range.start as u64 + 1, "segment {}", path.display());
        let bytes = std::fs::read(&path).unwrap();
        let (expected, spans) = frames(start, &payloads[range]);
        prop_assert!(bytes == expected, "{} is not the frames of its records: {}", path.display(), Hex(&bytes));
        out.push(Written { start, path, bytes, spans });
    }
    Ok(out)
}

/// Damages the written log and says what opening it must do.
fn damage_log(dir: &Path, segs: &[Written], after: u64, damage: &WalDamage, tally: &Tally) -> Expected {
    let total = segs.last().map_or(0, |s| s.start - 1 + s.spans.len() as u64);
    let last = segs.len() - 1;
    // A segment is needed unless the snapshot covers all of its records.
    let needed = |s: usize| segs.get(s + 1).is_none_or(|next| next.start - 1 > after);
    let before = |s: usize| segs[s].start - 1;
    let intact =
        Expected { plain: Must::Open, repaired: Must::Open, at_least: total, exactly: Some(total), torn_bytes: None };
    match damage {
        WalDamage::Bytes { segment, mutations } => {
            let s = segment.index(segs.len());
            let bytes = mutated(&segs[s].bytes, mutations);
            if bytes == segs[s].bytes {
                return intact;
            }
            std::fs::write(&segs[s].path, &bytes).unwrap();
            tally.bump("bytes damaged");
            if !needed(s) {
                return intact;
            }
            let kept = before(s) + whole_before(&segs[s].spans, damage_at(&segs[s].bytes, &bytes)) as u64;
            // Only the last segment may end in a torn frame; a bad frame, or
            // an older segment that ends early or late, is corruption.
            let plain = match model_scan(&bytes, segs[s].start).1 {
                None | Some(Judged::Torn) if s == last => Must::Open,
                _ => Must::Corrupt,
            };
            Expected { plain, repaired: Must::Open, at_least: kept, exactly: Some(kept), torn_bytes: None }
        }
        WalDamage::Torn(cut) => {
            let Some(s) = segs.iter().rposition(|w| !w.spans.is_empty()) else { return intact };
            let frame = segs[s].spans.last().unwrap().clone();
            let at = frame.start + cut.index(frame.len());
            let f = std::fs::OpenOptions::new().write(true).open(&segs[s].path).unwrap();
            f.set_len(at as u64).unwrap();
            tally.bump("torn");
            if !needed(s) {
                return intact;
            }
            let kept = total - 1;
            if s == last {
                let torn_bytes = Some((at - frame.start) as u64);
                Expected { plain: Must::Open, repaired: Must::Open, at_least: kept, exactly: Some(kept), torn_bytes }
            } else {
                // An older segment cut short (the last one is empty).
                Expected {
                    plain: Must::Corrupt,
                    repaired: Must::Open,
                    at_least: kept,
                    exactly: Some(kept),
                    torn_bytes: None,
                }
            }
        }
        WalDamage::Remove(i) => {
            let s = i.index(segs.len());
            std::fs::remove_file(&segs[s].path).unwrap();
            tally.bump("segment removed");
            if !needed(s) {
                return intact;
            }
            if s < last {
                // The oldest needed segment is gone: the log no longer
                // reaches back to the snapshot, and repair cannot help.
                Expected { plain: Must::Gap, repaired: Must::Gap, at_least: 0, exactly: None, torn_bytes: None }
            } else {
                // A missing last segment looks like a log that ended earlier.
                let kept = before(s);
                Expected {
                    plain: Must::Open,
                    repaired: Must::Open,
                    at_least: kept,
                    exactly: Some(kept),
                    torn_bytes: None,
                }
            }
        }
        WalDamage::Rename(i, how) => {
            let s = i.index(segs.len());
            let start = segs[s].start;
            let new = match how {
                // Not to 0: `Wal::open` underflows on a segment that claims to
                // start there (see `a_segment_named_zero_opens`).
                Rename::Down => (start - 1).max(1),
                Rename::Up => start + 1,
                Rename::Far => start + 1000,
            };
            let to = segment_path(dir, new);
            if to.exists() {
                return intact;
            }
            std::fs::rename(&segs[s].path, &to).unwrap();
            tally.bump("segment renamed");
            let at_least = if needed(s) { before(s) } else { after };
            Expected { plain: Must::Either, repaired: Must::Either, at_least, exactly: None, torn_bytes: None }
        }
    }
}

/// Judges one open of the damaged log against what it must do; returns the
/// log when it opened.
fn check_open(
    result: Result<(Wal, Replay), WalError>,
    repair: bool,
    expected: &Expected,
    case: &WalCase,
    after: u64,
    tally: &Tally,
) -> Result<Option<(Wal, Replay)>, TestCaseError> {
    let must = if repair { expected.repaired } else { expected.plain };
    match result {
        Ok((wal, replay)) => {
            prop_assert!(matches!(must, Must::Open | Must::Either), "opened (repair: {}), expected {:?}", repair, must);
            let last = replay.last_seq;
            prop_assert!(last <= case.records.len() as u64, "last_seq {} of {} records", last, case.records.len());
            // A log cut back behind the snapshot reports an older last_seq;
            // the snapshot still holds those records.
            prop_assert!(
                last.max(after) >= expected.at_least,
                "records before the damage were lost: last_seq {}",
                last
            );
            if let Some(exactly) = expected.exactly {
                prop_assert_eq!(last, exactly, "last_seq");
            }
            // Exactly the records after the snapshot, as appended: a prefix.
            let appended = encoded(&case.records);
            let replayed = encoded(&replay.records);
            let want = appended.get(after as usize..last.max(after) as usize);
            prop_assert!(want == Some(replayed.as_slice()), "replayed {} records, not a prefix", replayed.len());
            if let Some(torn) = expected.torn_bytes {
                prop_assert_eq!(replay.torn_bytes, torn, "torn bytes");
            }
            if !repair {
                prop_assert_eq!(replay.repaired_bytes, 0, "bytes dropped without repair");
            }
            if last < case.records.len() as u64 {
                tally.bump(if repair { "opened by repair, records lost" } else { "opened plain, records lost" });
                if last > after {
                    tally.bump("opened with records before the damage");
                }
            }
            Ok(Some((wal, replay)))
        }
        Err(e) => {
            let kind = match &e {
                WalError::Corrupt { .. } => Must::Corrupt,
                WalError::Gap { .. } => Must::Gap,
                other => return Err(TestCaseError::fail(format!("open failed with {other} (repair: {repair})"))),
            };
            prop_assert!(must == kind || must == Must::Either, "{} (repair: {}), expected {:?}", e, repair, must);
            if kind == Must::Corrupt {
                prop_assert!(!repair, "repair refused: {}", e);
                prop_assert!(e.to_string().contains("--repair-wal"), "no way out named: {}", e);
                tally.bump("refused as corrupt");
            } else {
                tally.bump("refused as gap");
            }
            Ok(None)
        }
    }
}

/// A log opened after damage takes appends, and a later open without repair
/// replays what it kept plus the new record.
fn append_and_reopen(dir: &Path, opened: (Wal, Replay), case: &WalCase, after: u64) -> Result<(), TestCaseError> {
    let (mut wal, replay) = opened;
    let next = replay.last_seq.max(after) + 1;
    let seq = wal.append(&case.extra).expect("append after open").wait_durable().expect("durable");
    prop_assert_eq!(seq, next, "the sequence goes on after the log and the snapshot");
    drop(wal);
    let (_, again) = Wal::open(dir, after, wal_options(false))
        .map_err(|e| TestCaseError::fail(format!("reopen after an append: {e}")))?;
    let mut want = encoded(&replay.records);
    want.push(case.extra.encode_to_vec());
    prop_assert_eq!(encoded(&again.records), want, "reopened");
    prop_assert_eq!(again.last_seq, seq);
    Ok(())
}

#[test]
fn wal_open_on_damaged_segments() {
    let tally = Tally::new(&[
        "executions",
        "two segments",
        "after a snapshot",
        "bytes damaged",
        "torn",
        "segment removed",
        "segment renamed",
        "refused as corrupt",
        "refused as gap",
        "opened plain, records lost",
        "opened by repair, records lost",
        "opened with records before the damage",
    ]);
    let damage = prop_oneof![
        6 => (any::<Index>(), arb_mutations()).prop_map(|(segment, mutations)| WalDamage::Bytes { segment, mutations }),
        3 => any::<Index>().prop_map(WalDamage::Torn),
        1 => any::<Index>().prop_map(WalDamage::Remove),
        1 => (any::<Index>(), prop::sample::select(vec![Rename::Down, Rename::Up, Rename::Far]))
            .prop_map(|(i, how)| WalDamage::Rename(i, how)),
    ];
    let case = (
        prop::collection::vec(arb_record(), 1..7),
        prop::option::of(any::<Index>()),
        any::<bool>(),
        damage,
        prop::bool::weighted(0.3),
        arb_record(),
    )
        .prop_map(|(records, split, after_first, damage, repair_first, extra)| WalCase {
            records,
            split,
            after_first,
            damage,
            repair_first,
            extra,
        });
    run("wal_open", fs_cases(), &tally, case, |case| {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        let segs = write_log(dir, &case)?;
        if segs.len() == 2 {
            tally.bump("two segments");
        }
        let after = if case.after_first && segs.len() == 2 { segs[1].start - 1 } else { 0 };
        if after > 0 {
            tally.bump("after a snapshot");
        }
        let expected = damage_log(dir, &segs, after, &case.damage, &tally);
        let mut opened = check_open(
            Wal::open(dir, after, wal_options(case.repair_first)),
            case.repair_first,
            &expected,
            &case,
            after,
            &tally,
        )?;
        if opened.is_none() && !case.repair_first {
            opened = check_open(Wal::open(dir, after, wal_options(true)), true, &expected, &case, after, &tally)?;
        }
        if let Some(opened) = opened {
            append_and_reopen(dir, opened, &case, after)?;
        }
        Ok(())
    });
    let target = "wal_open";
    let n = u64::from(fs_cases());
    reached(target, &tally, "two segments", n / 5);
    reached(target, &tally, "after a snapshot", n / 10);
    reached(target, &tally, "bytes damaged", n / 4);
    reached(target, &tally, "torn", n / 10);
    reached(target, &tally, "refused as corrupt", n / 10);
    reached(target, &tally, "refused as gap", 1);
    reached(target, &tally, "opened plain, records lost", n / 10);
    reached(target, &tally, "opened by repair, records lost", n / 20);
    reached(target, &tally, "opened with records before the damage", n / 10);
}

// ---------------------------------------------------------------------------
// Target 3: snapshot verification and loading on damaged files.

/// Manifest fields that `verify` and `load` check against the directory and
/// the data file; the others only inform.
const CHECKED: &[&str] = &["format", "seq", "records", "bytes", "crc32c"];
const INFORMATIONAL: &[&str] = &["items", "users", "items_with_signals", "dimension", "created_unix_ms"];
const U32_FIELDS: &[&str] = &["format", "dimension", "crc32c"];

#[derive(Clone, Debug)]
enum SnapDamage {
    None,
    /// The data file damaged; with `reseal` the manifest is rewritten to its
    /// new length and CRC, so only the frame checks stand in the way.
    Data {
        mutations: Vec<Mutation>,
        reseal: bool,
    },
    /// One frame's payload replaced by bytes that do not decode, under a
    /// valid checksum.
    Forge {
        frame: Index,
        payload: Vec<u8>,
        reseal: bool,
    },
    ManifestBytes(Vec<Mutation>),
    ManifestField {
        field: Index,
        change: Change,
    },
    /// A field no version wrote: ignored.
    ManifestExtra,
    Missing {
        data: bool,
    },
}

#[derive(Clone, Copy, Debug)]
enum Change {
    Plus1,
    Minus1,
    Zero,
    Max,
    Text,
    Null,
    Remove,
}

#[derive(Clone, Debug)]
struct SnapCase {
    records: Vec<WalRecord>,
    seq: u64,
    damage: SnapDamage,
}

/// What the damage leaves for `verify` and `load`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SnapMust {
    Load,
    /// `verify` passes but `load` must refuse: only the frames give it away.
    RefuseLoad,
    Refuse,
    Missing,
    Either,
}

fn manifest_path(snap: &snapshot::OnDisk) -> PathBuf {
    snap.path.join("manifest.json")
}

fn data_path(snap: &snapshot::OnDisk) -> PathBuf {
    snap.path.join("data.log")
}

fn edit_manifest(snap: &snapshot::OnDisk, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let path = manifest_path(snap);
    let mut json: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(json.as_object_mut().unwrap());
    std::fs::write(&path, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
}

/// Rewrites the manifest's length and CRC to match the data file as it is now.
fn reseal(snap: &snapshot::OnDisk) {
    let data = std::fs::read(data_path(snap)).unwrap();
    edit_manifest(snap, |m| {
        m.insert("bytes".into(), data.len().into());
        m.insert("crc32c".into(), crc32c::crc32c(&data).into());
    });
}

fn damage_snapshot(snap: &snapshot::OnDisk, damage: &SnapDamage, tally: &Tally) -> Result<SnapMust, TestCaseError> {
    let data = std::fs::read(data_path(snap)).unwrap();
    Ok(match damage {
        SnapDamage::None => SnapMust::Load,
        SnapDamage::Data { mutations, reseal: resealed } => {
            let bytes = mutated(&data, mutations);
            if bytes == data {
                return Ok(SnapMust::Load);
            }
            tally.bump("data damaged");
            std::fs::write(data_path(snap), &bytes).unwrap();
            if *resealed {
                reseal(snap);
                SnapMust::RefuseLoad
            } else {
                SnapMust::Refuse
            }
        }
        SnapDamage::Forge { frame: i, payload, reseal: resealed } => {
            prop_assert!(WalRecord::decode(payload.as_slice()).is_err(), "forged payload {} decodes", Hex(payload));
            let spans = frame_spans(&data);
            if spans.is_empty() {
                return Ok(SnapMust::Load);
            }
            let k = i.index(spans.len());
            let seq = u64::from_le_bytes(data[spans[k].start + 8..spans[k].start + 16].try_into().unwrap());
            let mut bytes = data[..spans[k].start].to_vec();
            bytes.extend(frame(seq, payload));
            bytes.extend_from_slice(&data[spans[k].end..]);
            std::fs::write(data_path(snap), &bytes).unwrap();
            tally.bump("frame forged");
            if *resealed {
                reseal(snap);
                if k > 0 {
                    tally.bump("forged after valid records");
                }
                SnapMust::RefuseLoad
            } else {
                SnapMust::Refuse
            }
        }
        SnapDamage::ManifestBytes(mutations) => {
            let text = std::fs::read(manifest_path(snap)).unwrap();
            let bytes = mutated(&text, mutations);
            if bytes == text {
                return Ok(SnapMust::Load);
            }
            tally.bump("manifest bytes damaged");
            std::fs::write(manifest_path(snap), &bytes).unwrap();
            SnapMust::Either
        }
        SnapDamage::ManifestField { field, change } => {
            let all: Vec<&str> = CHECKED.iter().chain(INFORMATIONAL).copied().collect();
            let name = all[field.index(all.len())];
            let mut changed = false;
            let mut fits = true;
            edit_manifest(snap, |m| {
                let old = m[name].as_u64().unwrap();
                let new = match change {
                    Change::Plus1 => Some(serde_json::Value::from(old.wrapping_add(1))),
                    Change::Minus1 if old == 0 => Some(serde_json::Value::from(-1)),
                    Change::Minus1 => Some(serde_json::Value::from(old - 1)),
                    Change::Zero => Some(0.into()),
                    Change::Max => Some(u64::MAX.into()),
                    Change::Text => Some("7".into()),
                    Change::Null => Some(serde_json::Value::Null),
                    Change::Remove => None,
                };
                fits = new
                    .as_ref()
                    .and_then(|v| v.as_u64())
                    .is_some_and(|v| v <= if U32_FIELDS.contains(&name) { u64::from(u32::MAX) } else { u64::MAX });
                changed = new.as_ref() != Some(&m[name]);
                match new {
                    Some(v) => m.insert(name.to_string(), v),
                    None => m.remove(name),
                };
            });
            if !changed {
                return Ok(SnapMust::Load);
            }
            tally.bump("manifest field changed");
            if fits && !CHECKED.contains(&name) {
                tally.bump("informational field changed");
                SnapMust::Load
            } else {
                SnapMust::Refuse
            }
        }
        SnapDamage::ManifestExtra => {
            edit_manifest(snap, |m| {
                m.insert("written_by".into(), "a later version".into());
            });
            SnapMust::Load
        }
        SnapDamage::Missing { data } => {
            let path = if *data { data_path(snap) } else { manifest_path(snap) };
            std::fs::remove_file(path).unwrap();
            SnapMust::Missing
        }
    })
}

#[test]
fn snapshot_load_on_damaged_files() {
    let tally = Tally::new(&[
        "executions",
        "loaded",
        "data damaged",
        "frame forged",
        "forged after valid records",
        "manifest bytes damaged",
        "manifest field changed",
        "informational field changed",
        "refused by verify",
        "refused by load after verify passed",
    ]);
    // Payloads that cannot decode as a record: a wire type that does not
    // exist, and the length of the upsert field cut off.
    let undecodable = prop::sample::select(vec![vec![0x07u8], vec![0x0a, 0xff], vec![0x0a, 0x05, 0x01]]);
    let damage = prop_oneof![
        1 => Just(SnapDamage::None),
        5 => (arb_mutations(), any::<bool>()).prop_map(|(mutations, reseal)| SnapDamage::Data { mutations, reseal }),
        2 => (any::<Index>(), undecodable, prop::bool::weighted(0.8))
            .prop_map(|(frame, payload, reseal)| SnapDamage::Forge { frame, payload, reseal }),
        2 => arb_mutations().prop_map(SnapDamage::ManifestBytes),
        5 => (
            any::<Index>(),
            prop::sample::select(vec![
                Change::Plus1,
                Change::Plus1,
                Change::Zero,
                Change::Plus1,
                Change::Minus1,
                Change::Zero,
                Change::Max,
                Change::Text,
                Change::Null,
                Change::Remove
            ])
        )
            .prop_map(|(field, change)| SnapDamage::ManifestField { field, change }),
        1 => Just(SnapDamage::ManifestExtra),
        1 => any::<bool>().prop_map(|data| SnapDamage::Missing { data }),
    ];
    let seq = prop_oneof![3 => 0u64..1000, 1 => any::<u64>()];
    let case = (prop::collection::vec(arb_record(), 0..7), seq, damage).prop_map(|(records, seq, damage)| SnapCase {
        records,
        seq,
        damage,
    });
    run("snapshot_load", fs_cases(), &tally, case, |case| {
        let dir = tempfile::tempdir().unwrap();
        let counts =
            snapshot::Counts { items: 3, users: 2, items_with_signals: 1, dimension: 24, ..Default::default() };
        let (snap, written) =
            snapshot::write(dir.path(), case.seq, counts, case.records.clone().into_iter()).expect("write");
        let listed: Vec<u64> = snapshot::list(dir.path()).unwrap().iter().map(|s| s.seq).collect();
        prop_assert_eq!(listed, vec![case.seq]);
        let must = damage_snapshot(&snap, &case.damage, &tally)?;
        let verified = snapshot::verify(&snap);
        let mut applied = Vec::new();
        let loaded = snapshot::load(&snap, |r| applied.push(r));
        match (&verified, &loaded) {
            (Ok(v), Ok(l)) => prop_assert_eq!(v, l, "verify and load read different manifests"),
            (Err(e), Ok(_)) => return Err(TestCaseError::fail(format!("load passed what verify refused: {e}"))),
            _ => {}
        }
        match loaded {
            Ok(manifest) => {
                tally.bump("loaded");
                prop_assert!(matches!(must, SnapMust::Load | SnapMust::Either), "loaded, expected {:?}", must);
                prop_assert_eq!(encoded(&applied), encoded(&case.records), "loaded records");
                let core = |m: &snapshot::Manifest| (m.format, m.seq, m.records, m.bytes, m.crc32c);
                prop_assert_eq!(core(&manifest), core(&written));
                if matches!(case.damage, SnapDamage::None) {
                    prop_assert_eq!(manifest, written);
                }
            }
            Err(e) => {
                prop_assert!(applied.is_empty(), "{} records applied before refusing: {}", applied.len(), e);
                prop_assert!(!e.to_string().is_empty());
                match must {
                    SnapMust::Load => return Err(TestCaseError::fail(format!("refused an intact snapshot: {e}"))),
                    SnapMust::Missing => prop_assert!(matches!(e, SnapshotError::Io { .. }), "{}", e),
                    _ => prop_assert!(matches!(e, SnapshotError::Invalid { .. }), "damage reported as {}", e),
                }
                if must == SnapMust::RefuseLoad {
                    prop_assert!(verified.is_ok(), "resealed manifest refused: {:?}", verified.err());
                }
                if verified.is_ok() {
                    tally.bump("refused by load after verify passed");
                } else {
                    tally.bump("refused by verify");
                }
            }
        }
        Ok(())
    });
    let target = "snapshot_load";
    let n = u64::from(fs_cases());
    reached(target, &tally, "loaded", n / 10);
    reached(target, &tally, "data damaged", n / 10);
    reached(target, &tally, "forged after valid records", 3);
    reached(target, &tally, "manifest bytes damaged", n / 20);
    reached(target, &tally, "informational field changed", 3);
    reached(target, &tally, "refused by verify", n / 4);
    reached(target, &tally, "refused by load after verify passed", n / 10);
}

// ---------------------------------------------------------------------------
// Findings: minimal inputs the targets above found, kept as regression tests
// after wal.rs was fixed.

/// A segment whose name says it starts at sequence 0 (no version writes one,
/// but a copy or a hand can) once made `Wal::open` underflow `next_seq - 1`.
/// It is now refused as corrupt, with or without repair.
#[test]
fn a_segment_named_zero_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(segment_path(dir.path(), 0), b"").unwrap();
    assert!(matches!(Wal::open(dir.path(), 0, wal_options(false)), Err(WalError::Corrupt { .. })));

    let dir = tempfile::tempdir().unwrap();
    let record = WalRecord { op: Some(Op::Delete(pb::ShardDeleteRequest { ids: vec!["a".into()], versions: vec![] })) };
    let (mut wal, _) = Wal::open(dir.path(), 0, wal_options(false)).unwrap();
    wal.append(&record).unwrap().wait_durable().unwrap();
    drop(wal);
    std::fs::rename(segment_path(dir.path(), 1), segment_path(dir.path(), 0)).unwrap();
    assert!(matches!(Wal::open(dir.path(), 0, wal_options(false)), Err(WalError::Corrupt { .. })));
    assert!(matches!(Wal::open(dir.path(), 0, wal_options(true)), Err(WalError::Corrupt { .. })));
}

/// A valid frame numbered u64::MAX once overflowed the scanner's next
/// expected sequence number; it is now refused as bad.
#[test]
fn a_frame_numbered_u64_max_is_refused() {
    let buf = frame(u64::MAX, b"");
    let scan = scan_frames(&buf, u64::MAX);
    assert!(scan.records.is_empty() && matches!(scan.stop, Stop::Bad(_)), "{scan:?}");
}

/// The checksum once left out the length: CRC32C starts from all ones, so
/// the frame numbered 2^32 - 1 (LE `ff ff ff ff 00 00 00 00`) with an empty
/// payload had the same checksum as the same frame with zero bytes as
/// payload, and a length damaged from 0 to 1 in front of a zero byte passed
/// as a record never written. The length is now covered.
#[test]
fn a_length_change_into_zeros_is_caught() {
    let seq = u64::from(u32::MAX);
    let mut buf = frame(seq, b"");
    buf.extend(frame(seq + 1, b""));
    buf[0] = 1; // the first frame's length: 0 -> 1
    let scan = scan_frames(&buf, seq);
    assert!(scan.records.is_empty(), "a damaged frame passed as {:?}, stop {:?}", scan.records, scan.stop);
}
