//! Progress of long phases as plain lines on stderr: they survive being piped
//! to a log file, where a redrawn bar would leave control characters.

use std::time::{Duration, Instant};

/// At most one line per interval, plus the final one: enough to see that a
/// 20-minute replay is moving without flooding a log.
const INTERVAL: Duration = Duration::from_secs(5);

/// Counts done units of a known total and reports rate and share done.
pub struct Progress {
    label: String,
    total: usize,
    done: usize,
    started: Instant,
    last: Instant,
}

impl Progress {
    pub fn new(label: impl Into<String>, total: usize) -> Self {
        let now = Instant::now();
        Self { label: label.into(), total, done: 0, started: now, last: now }
    }

    /// Adds `n` done units; prints when the interval has passed or all are done.
    pub fn add(&mut self, n: usize) {
        self.done += n;
        if self.done >= self.total || self.last.elapsed() >= INTERVAL {
            self.last = Instant::now();
            let secs = self.started.elapsed().as_secs_f64();
            let pct = if self.total == 0 { 100.0 } else { 100.0 * self.done as f64 / self.total as f64 };
            eprintln!(
                "  {}: {}/{} ({pct:.0}%, {:.0}/s, {secs:.1} s)",
                self.label,
                self.done,
                self.total,
                self.done as f64 / secs.max(1e-9)
            );
        }
    }
}
