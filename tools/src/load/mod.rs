//! `vitrine load`: bulk-loads a catalogue file through the router.
//!
//! A reader thread turns the file into batches lazily ([`source`],
//! [`validate`]); up to `--concurrency` batches are in flight at once
//! ([`deliver`]: retries, bisection); a low watermark over finished batches
//! is saved now and then so that a crash or Ctrl-C can resume
//! ([`checkpoint`]); [`meter`] shows progress. Bad records are skipped and
//! rejected items failed, each with a reason; neither stops the load.

pub mod checkpoint;
pub mod deliver;
mod meter;
pub mod source;
pub mod validate;

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use futures::StreamExt;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use vitrine_proto::pb;

use checkpoint::{Checkpoint, Counts, FileIdentity, Watermark};
use deliver::{Backoff, Policy, Upsert};
use meter::Meter;
use source::{Format, Place, Row};
use validate::Validator;

/// Exit code when some records were skipped or failed (the rest loaded).
pub const EXIT_INCOMPLETE: i32 = 2;
/// Exit code when the load was interrupted; the checkpoint says where to resume.
pub const EXIT_INTERRUPTED: i32 = 3;

/// Flags of `vitrine load`.
#[derive(clap::Args, Debug)]
pub struct LoadArgs {
    /// Catalogue file: .jsonl, .csv, .tsv, .parquet, or .npy with --ids.
    pub file: PathBuf,
    /// Input format, when the extension does not say.
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// For .npy input: the item ids, one per line, in row order.
    #[arg(long)]
    pub ids: Option<PathBuf>,
    /// Items per UpsertItems call.
    #[arg(long, default_value_t = crate::bulk::ITEM_BATCH as u32, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch: u32,
    /// UpsertItems calls in flight.
    #[arg(long, default_value_t = crate::bulk::CONCURRENCY as u32, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub concurrency: u32,
    /// Retries of a batch after a transient error (unavailable, deadline,
    /// overload), with exponential backoff; then its items fail.
    #[arg(long, default_value_t = 5)]
    pub retries: u32,
    /// Checkpoint file [default: <file>.vitrine-checkpoint].
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Write the checkpoint after this many answered batches.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..))]
    pub checkpoint_every: u64,
    /// Ignore (and replace) an existing checkpoint: load from the start.
    #[arg(long)]
    pub restart: bool,
    /// Read and validate every record, send nothing, print the summary.
    #[arg(long)]
    pub dry_run: bool,
    /// Write every skipped or failed record (id, place, reason) here as JSONL.
    #[arg(long)]
    pub errors: Option<PathBuf>,
    /// Reasons listed in the summary.
    #[arg(long, default_value_t = 10)]
    pub show_reasons: usize,
    /// Behave as if interrupted after reading this many records (tests).
    #[arg(long, hide = true)]
    pub stop_after: Option<u64>,
}

/// A record that was not loaded, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub id: String,
    /// `line 7` or `row 7`.
    pub at: String,
    /// `skipped` (never sent) or `failed` (sent and not written).
    pub status: &'static str,
    pub reason: String,
}

/// A batch as the reader thread hands it over: the input records
/// `[start, end)`, of which `items` are to be sent and `skipped` were not.
struct Batch {
    start: u64,
    end: u64,
    items: Vec<pb::Item>,
    places: Vec<Place>,
    skipped: Vec<Problem>,
}

/// What became of a batch.
struct Outcome {
    start: u64,
    end: u64,
    counts: Counts,
    problems: Vec<Problem>,
    /// Not sent because the load was stopping; its records stay above the
    /// watermark.
    abandoned: bool,
    fatal: Option<tonic::Status>,
}

/// Skipped records are handed over at least this often even when no item
/// fills a batch, so a file of bad lines does not pile up in memory.
const MAX_SKIPPED_PER_BATCH: usize = 1024;

/// Runs the load; returns the process exit code (0, [`EXIT_INCOMPLETE`] or
/// [`EXIT_INTERRUPTED`]). Errors that stop it outright are `Err`.
pub async fn run(addr: &str, json: bool, args: LoadArgs) -> anyhow::Result<i32> {
    let started = Instant::now();
    let source = source::open(&args.file, args.format, args.ids.as_deref())?;
    let identity = FileIdentity::of(&args.file)?;
    let ck_path = args.checkpoint.clone().unwrap_or_else(|| default_checkpoint(&args.file));
    let (start, prior) =
        if args.dry_run { (0, Counts::default()) } else { resume_point(&ck_path, &identity, args.restart)? };
    if start > 0 {
        eprintln!("resuming after record {start} (checkpoint {}; --restart to load from the start)", ck_path.display());
    }
    let sender = if args.dry_run { None } else { Some(crate::connect(addr).await?) };
    let mut errors = match &args.errors {
        Some(p) => Some(open_errors(p, start > 0)?),
        None => None,
    };

    let stop = Arc::new(AtomicBool::new(false));
    let signals = tokio::spawn(stop_on_signal(Arc::clone(&stop)));
    let (tx, rx) = mpsc::channel::<Batch>(args.concurrency as usize * 2);
    let base = args.file.parent().map(Path::to_path_buf);
    let total = source.total;
    let reader = {
        let stop = Arc::clone(&stop);
        let (batch, stop_after) = (args.batch as usize, args.stop_after);
        std::thread::spawn(move || read_batches(source.rows, start, base, batch, stop_after, &stop, &tx))
    };
    let mut meter = Meter::new(total, start, json);
    let policy = Policy { retries: args.retries, backoff: Backoff::default() };

    let mut outcomes = ReceiverStream::new(rx)
        .map(|b| {
            let sender = sender.clone();
            let stop = Arc::clone(&stop);
            async move { process(b, sender.as_ref(), &policy, &stop).await }
        })
        .buffer_unordered(args.concurrency as usize);

    let mut watermark = Watermark::new(start);
    let mut committed = prior;
    let mut this_run = Counts::default();
    let mut shown = Vec::new();
    let mut fatal = None;
    let mut since_checkpoint = 0u64;
    while let Some(o) = outcomes.next().await {
        if let Some(s) = o.fatal {
            stop.store(true, Ordering::SeqCst);
            fatal.get_or_insert(s);
            continue;
        }
        if o.abandoned {
            continue;
        }
        this_run += o.counts;
        meter.add(o.end - o.start, prior.failed + this_run.failed);
        for p in o.problems {
            if let Some(w) = errors.as_mut() {
                serde_json::to_writer(&mut *w, &p)?;
                w.write_all(b"\n")?;
            }
            if shown.len() < args.show_reasons {
                shown.push(p);
            }
        }
        for c in watermark.complete(o.start, o.end, o.counts) {
            committed += c;
        }
        since_checkpoint += 1;
        if !args.dry_run && since_checkpoint >= args.checkpoint_every {
            since_checkpoint = 0;
            Checkpoint::new(identity.clone(), watermark.low(), committed).write(&ck_path)?;
        }
    }
    signals.abort();
    meter.finish();
    let stopped_early = reader.join().map_err(|_| anyhow::anyhow!("the reader thread panicked"))?;
    if let Some(w) = errors.as_mut() {
        w.flush().context("writing the errors file")?;
    }
    let interrupted = stopped_early || stop.load(Ordering::SeqCst);
    if !args.dry_run {
        if interrupted {
            Checkpoint::new(identity.clone(), watermark.low(), committed).write(&ck_path)?;
        } else {
            match std::fs::remove_file(&ck_path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing {}", ck_path.display())),
            }
        }
    }

    let totals = {
        let mut t = prior;
        t += this_run;
        t
    };
    let secs = started.elapsed().as_secs_f64();
    let summary = Summary {
        input: &args.file,
        dry_run: args.dry_run,
        loaded: totals.loaded,
        skipped: totals.skipped,
        failed: totals.failed,
        resumed_after: start,
        seconds: secs,
        items_per_s: this_run.loaded as f64 / secs.max(1e-9),
        interrupted,
        checkpoint: (interrupted && !args.dry_run).then_some(ck_path.as_path()),
        reasons: &shown,
    };
    summary.print(json)?;
    if let Some(s) = fatal {
        bail!(
            "the router refused the load ({:?}: {}); fix that and run the same command again to resume from {}",
            s.code(),
            s.message(),
            ck_path.display()
        );
    }
    if interrupted {
        eprintln!(
            "interrupted: {} records done; run the same command again to resume from {} (or add --restart)",
            watermark.low(),
            ck_path.display()
        );
        return Ok(EXIT_INTERRUPTED);
    }
    Ok(if totals.skipped + totals.failed > 0 { EXIT_INCOMPLETE } else { 0 })
}

/// `<file>.vitrine-checkpoint`, beside the input.
pub fn default_checkpoint(file: &Path) -> PathBuf {
    let mut s = file.as_os_str().to_os_string();
    s.push(".vitrine-checkpoint");
    PathBuf::from(s)
}

/// Where to start: after the watermark of a checkpoint for this very file,
/// or at 0.
fn resume_point(path: &Path, identity: &FileIdentity, restart: bool) -> anyhow::Result<(u64, Counts)> {
    if restart {
        return Ok((0, Counts::default()));
    }
    match Checkpoint::read(path)? {
        None => Ok((0, Counts::default())),
        Some(c) if &c.input == identity => Ok((c.watermark, c.counts)),
        Some(c) => bail!(
            "checkpoint {} was written for {} ({} bytes), not this file as it is now ({} bytes); \
             add --restart to load from the start",
            path.display(),
            c.input.path.display(),
            c.input.size,
            identity.size
        ),
    }
}

fn open_errors(path: &Path, append: bool) -> anyhow::Result<BufWriter<File>> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    Ok(BufWriter::new(f))
}

/// Sets `stop` on Ctrl-C or SIGTERM, so that in-flight batches finish and
/// the checkpoint is written; a second signal exits at once.
async fn stop_on_signal(stop: Arc<AtomicBool>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else { return };
    for n in 0.. {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        if n > 0 {
            eprintln!("stopping now, without a checkpoint");
            std::process::exit(130);
        }
        eprintln!("stopping: waiting for the batches in flight, then writing the checkpoint (again to quit now)");
        stop.store(true, Ordering::SeqCst);
    }
}

/// The reader thread: rows → validated batches, from record `start` on. A
/// row that ends reading (a corrupt Parquet page) is skipped with its reason
/// like any other; the load then ends as incomplete. Returns whether it
/// stopped before the end of the input (`stop`, or `stop_after` records).
fn read_batches(
    rows: Box<dyn Iterator<Item = Row> + Send>,
    start: u64,
    base: Option<PathBuf>,
    batch_size: usize,
    stop_after: Option<u64>,
    stop: &AtomicBool,
    tx: &mpsc::Sender<Batch>,
) -> bool {
    let mut validator = Validator::default();
    let mut batch = Batch::empty(start);
    let mut ids = HashSet::new();
    let send = |b: Batch| tx.blocking_send(b).is_ok();
    for (read, row) in rows.skip(usize::try_from(start).unwrap_or(usize::MAX)).enumerate() {
        if stop.load(Ordering::SeqCst) {
            return true;
        }
        // Like Ctrl-C, except that the batches already handed over are
        // still sent: a test then knows some of the file was loaded.
        if stop_after.is_some_and(|n| read as u64 >= n) {
            return true;
        }
        let at = row.place.to_string();
        let item = match row.record {
            Err(reason) => Err((String::new(), reason)),
            Ok(rec) => {
                let id = rec.id.clone();
                validator.check(rec, base.as_deref()).map_err(|reason| (id, reason))
            }
        };
        match item {
            Err((id, reason)) => batch.skipped.push(Problem { id, at, status: "skipped", reason }),
            Ok(item) => {
                // Ids must be unique within a call; a repeat starts a new one
                // so that the later line wins (with --concurrency 1; calls in
                // flight together may land in either order).
                if !ids.insert(item.id.clone()) {
                    let next = Batch::empty(row.index);
                    if !send(std::mem::replace(&mut batch, next)) {
                        return true;
                    }
                    ids.clear();
                    ids.insert(item.id.clone());
                }
                batch.items.push(item);
                batch.places.push(row.place);
            }
        }
        batch.end = row.index + 1;
        if batch.items.len() >= batch_size || batch.skipped.len() >= MAX_SKIPPED_PER_BATCH {
            let next = Batch::empty(batch.end);
            if !send(std::mem::replace(&mut batch, next)) {
                return true;
            }
            ids.clear();
        }
    }
    if stop.load(Ordering::SeqCst) {
        return true;
    }
    batch.end > batch.start && !send(batch)
}

impl Batch {
    fn empty(start: u64) -> Self {
        Self { start, end: start, items: Vec::new(), places: Vec::new(), skipped: Vec::new() }
    }
}

/// Sends a batch (unless dry-running or stopping) and tallies the result.
async fn process<S: Upsert>(b: Batch, sender: Option<&S>, policy: &Policy, stop: &AtomicBool) -> Outcome {
    let mut o = Outcome {
        start: b.start,
        end: b.end,
        counts: Counts { skipped: b.skipped.len() as u64, ..Counts::default() },
        problems: b.skipped,
        abandoned: false,
        fatal: None,
    };
    let Some(sender) = sender else {
        o.counts.loaded = b.items.len() as u64;
        return o;
    };
    if stop.load(Ordering::SeqCst) {
        o.abandoned = true;
        return o;
    }
    let places: Vec<(String, Place)> = b.items.iter().map(|i| i.id.clone()).zip(b.places).collect();
    match deliver::deliver(sender, b.items, policy).await {
        Ok(d) => {
            o.counts.loaded = d.loaded;
            o.counts.failed = d.failed.len() as u64;
            for (id, reason) in d.failed {
                let at = places.iter().find(|(i, _)| *i == id).map_or(String::new(), |(_, p)| p.to_string());
                o.problems.push(Problem { id, at, status: "failed", reason });
            }
        }
        Err(s) => {
            o.abandoned = true;
            o.fatal = Some(s);
        }
    }
    o
}

/// The end-of-load report.
#[derive(Serialize)]
struct Summary<'a> {
    input: &'a Path,
    dry_run: bool,
    loaded: u64,
    skipped: u64,
    failed: u64,
    /// Input records done by earlier runs (0 without a checkpoint).
    resumed_after: u64,
    seconds: f64,
    /// Items written per second by this run.
    items_per_s: f64,
    interrupted: bool,
    checkpoint: Option<&'a Path>,
    reasons: &'a [Problem],
}

impl Summary<'_> {
    fn print(&self, json: bool) -> anyhow::Result<()> {
        if json {
            println!("{}", serde_json::to_string_pretty(self)?);
            return Ok(());
        }
        let verb = if self.dry_run { "valid (dry run, nothing sent)" } else { "loaded" };
        let resumed = if self.resumed_after > 0 {
            format!(", resumed after record {}", self.resumed_after)
        } else {
            String::new()
        };
        println!(
            "{verb} {}, skipped {}, failed {} in {:.1} s ({:.0} items/s{resumed})",
            self.loaded, self.skipped, self.failed, self.seconds, self.items_per_s
        );
        for p in self.reasons {
            let id = if p.id.is_empty() { String::new() } else { format!(" id {:?}", p.id) };
            println!("  {} {}{id}: {}", p.status, p.at, p.reason);
        }
        let more = (self.skipped + self.failed).saturating_sub(self.reasons.len() as u64);
        if more > 0 && !self.reasons.is_empty() {
            println!("  ... and {more} more (--errors FILE lists them all)");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(text: &str) -> Box<dyn Iterator<Item = Row> + Send> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.jsonl");
        std::fs::write(&p, text).unwrap();
        let rows: Vec<Row> = source::open(&p, None, None).unwrap().rows.collect();
        Box::new(rows.into_iter())
    }

    fn batches(text: &str, start: u64, size: usize) -> Vec<Batch> {
        let (tx, mut rx) = mpsc::channel(100);
        let stop = AtomicBool::new(false);
        assert!(!read_batches(rows(text), start, None, size, None, &stop, &tx));
        drop(tx);
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    }

    #[test]
    fn batches_cover_every_record_including_skipped_ones() {
        let text = "{\"id\":\"a\",\"title\":\"A\"}\n{\"id\":\"\"}\n{\"id\":\"b\",\"title\":\"B\"}\n\
                    {\"id\":\"c\",\"title\":\"C\"}\nnot json\n";
        let b = batches(text, 0, 2);
        let ranges: Vec<(u64, u64, usize, usize)> =
            b.iter().map(|b| (b.start, b.end, b.items.len(), b.skipped.len())).collect();
        assert_eq!(ranges, vec![(0, 3, 2, 1), (3, 5, 1, 1)]);
        assert_eq!(b[0].skipped[0].at, "line 2");
        // Resuming after record 3 reads only the rest.
        let b = batches(text, 3, 2);
        assert_eq!((b[0].start, b[0].end, b[0].items[0].id.as_str()), (3, 5, "c"));
    }

    #[test]
    fn a_repeated_id_starts_a_new_batch() {
        let text = "{\"id\":\"a\",\"title\":\"1\"}\n{\"id\":\"a\",\"title\":\"2\"}\n";
        let b = batches(text, 0, 10);
        assert_eq!(b.len(), 2);
        assert_eq!((b[0].start, b[0].end, b[1].start, b[1].end), (0, 1, 1, 2));
        assert_eq!(b[1].items[0].title, "2");
    }

    #[test]
    fn the_default_checkpoint_sits_beside_the_input() {
        assert_eq!(default_checkpoint(Path::new("/d/cat.csv")), PathBuf::from("/d/cat.csv.vitrine-checkpoint"));
    }
}
