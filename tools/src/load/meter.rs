//! Load progress: an `indicatif` bar (items/s, ETA) on a terminal, plain
//! lines otherwise, because a redrawn bar in a log file is unreadable.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// Plain lines come at most this often: enough to see a long load moving
/// without flooding a log.
const LINE_INTERVAL: Duration = Duration::from_secs(5);

/// Progress over input records (loaded, skipped or failed alike).
pub enum Meter {
    Bar(ProgressBar),
    Lines { total: Option<u64>, done: u64, start: u64, started: Instant, last: Instant },
    Silent,
}

impl Meter {
    /// A bar when stderr is a terminal, else lines. `start` records were
    /// done by an earlier run.
    pub fn new(total: Option<u64>, start: u64, quiet: bool) -> Self {
        if quiet {
            return Self::Silent;
        }
        if !std::io::stderr().is_terminal() {
            let now = Instant::now();
            return Self::Lines { total, done: start, start, started: now, last: now };
        }
        let (bar, template) = match total {
            Some(n) => (
                ProgressBar::new(n),
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} records ({per_sec}, ETA {eta}) {msg}",
            ),
            None => (ProgressBar::new_spinner(), "{spinner} [{elapsed_precise}] {pos} records ({per_sec}) {msg}"),
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style);
        }
        bar.set_position(start);
        // Rate and ETA count this run only, not the records resumed past.
        bar.reset_eta();
        bar.enable_steady_tick(Duration::from_millis(200));
        Self::Bar(bar)
    }

    /// `n` more records are done; `failed` so far goes in the message.
    pub fn add(&mut self, n: u64, failed: u64) {
        match self {
            Self::Bar(b) => {
                b.inc(n);
                if failed > 0 {
                    b.set_message(format!("{failed} failed"));
                }
            }
            Self::Lines { total, done, start, started, last } => {
                *done += n;
                if last.elapsed() >= LINE_INTERVAL {
                    *last = Instant::now();
                    let secs = started.elapsed().as_secs_f64().max(1e-9);
                    let of = total.map_or(String::new(), |t| format!("/{t}"));
                    eprintln!("  records: {done}{of} ({:.0}/s, {secs:.0} s)", (*done - *start) as f64 / secs);
                }
            }
            Self::Silent => {}
        }
    }

    pub fn finish(&self) {
        if let Self::Bar(b) = self {
            b.finish_and_clear();
        }
    }
}
