//! Dynamic batching of query embeddings, as Triton does it.
//!
//! Queries arrive one text at a time from many clients. Running each alone
//! wastes the model: on this CPU a batch of 8 short titles costs about 2.5×
//! a single one but serves 8 (docs/PERFORMANCE.md). Each worker (one per ORT
//! session) takes the first waiting query and every other query already
//! queued; if there were others, it keeps collecting for at most
//! `max_delay` or until `max_batch`. It drops queries whose deadline passed
//! while they waited and embeds the rest in one call. Queue time per query,
//! compute time and size per batch go to `crate::metrics`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::embed::TextEmbedder;

/// Batching limits.
#[derive(Debug, Clone)]
pub struct BatcherConfig {
    /// Most texts per model call.
    pub max_batch: usize,
    /// Longest a batch waits for more queries once several are waiting.
    /// 2 ms is small next to the ~15 ms a batch of 8 takes. A lone query on
    /// an idle shard does not wait at all.
    pub max_delay: Duration,
    /// Most queries waiting; beyond it callers get RESOURCE_EXHAUSTED at
    /// once instead of a growing queue that answers after their deadline.
    pub max_queue: usize,
    /// Worker threads (each batch runs on one ORT session).
    pub workers: usize,
}

impl Default for BatcherConfig {
    fn default() -> Self {
        Self { max_batch: 16, max_delay: Duration::from_millis(2), max_queue: 1024, workers: 1 }
    }
}

/// Why a query was not embedded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BatchError {
    #[error("embedding queue is full ({0} queries waiting)")]
    QueueFull(usize),
    #[error("deadline passed while the query waited {0:?} for the model")]
    DeadlineExpired(Duration),
    #[error("embedding failed: {0}")]
    Embed(String),
}

struct Job {
    text: String,
    deadline: Instant,
    enqueued: Instant,
    reply: tokio::sync::oneshot::Sender<Result<Vec<f32>, BatchError>>,
}

/// Counters for logs and tests.
#[derive(Debug, Default)]
pub struct BatchStats {
    pub batches: AtomicU64,
    pub texts: AtomicU64,
    pub expired: AtomicU64,
    pub rejected: AtomicU64,
}

/// Handle to the batching workers; dropping it stops them.
pub struct Batcher {
    tx: Sender<Job>,
    queued: Arc<AtomicUsize>,
    max_queue: usize,
    pub stats: Arc<BatchStats>,
}

impl Batcher {
    pub fn start(embedder: Arc<TextEmbedder>, config: BatcherConfig) -> std::io::Result<Self> {
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        let queued = Arc::new(AtomicUsize::new(0));
        let stats = Arc::new(BatchStats::default());
        for w in 0..config.workers.max(1) {
            let (rx, embedder, queued, stats, config) =
                (rx.clone(), Arc::clone(&embedder), Arc::clone(&queued), Arc::clone(&stats), config.clone());
            std::thread::Builder::new()
                .name(format!("embed-batcher-{w}"))
                .spawn(move || worker(&rx, &embedder, &queued, &stats, &config))?;
        }
        Ok(Self { tx, queued, max_queue: config.max_queue, stats })
    }

    /// Embeds one text as part of whatever batch forms around it.
    pub async fn embed(&self, text: String, deadline: Instant) -> Result<Vec<f32>, BatchError> {
        let waiting = self.queued.fetch_add(1, Ordering::AcqRel);
        if waiting >= self.max_queue {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            self.stats.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(BatchError::QueueFull(waiting));
        }
        let (reply, rx) = tokio::sync::oneshot::channel();
        let job = Job { text, deadline, enqueued: Instant::now(), reply };
        if self.tx.send(job).is_err() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(BatchError::Embed("batching workers stopped".into()));
        }
        rx.await.map_err(|_| BatchError::Embed("batching worker dropped the query".into()))?
    }
}

fn worker(
    rx: &Receiver<Job>,
    embedder: &TextEmbedder,
    queued: &AtomicUsize,
    stats: &BatchStats,
    config: &BatcherConfig,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        // Take what is already waiting. Under load, queries pile up while the
        // previous batch computes, so this alone forms full batches.
        while batch.len() < config.max_batch {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        // Wait for companions only when others were waiting too: a lone
        // query on an idle shard should not pay the delay for nothing.
        if batch.len() > 1 {
            let until = Instant::now() + config.max_delay;
            while batch.len() < config.max_batch {
                match rx.recv_deadline(until) {
                    Ok(job) => batch.push(job),
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                }
            }
        }
        queued.fetch_sub(batch.len(), Ordering::AcqRel);
        let metrics = crate::metrics::get();
        let now = Instant::now();
        let (live, expired): (Vec<Job>, Vec<Job>) = batch.into_iter().partition(|j| j.deadline > now);
        for job in expired {
            metrics.embed_queue_seconds.observe((now - job.enqueued).as_secs_f64());
            stats.expired.fetch_add(1, Ordering::Relaxed);
            let _ = job.reply.send(Err(BatchError::DeadlineExpired(now - job.enqueued)));
        }
        if live.is_empty() {
            continue;
        }
        let texts: Vec<&str> = live.iter().map(|j| j.text.as_str()).collect();
        let started = Instant::now();
        for job in &live {
            metrics.embed_queue_seconds.observe((started - job.enqueued).as_secs_f64());
        }
        let result = embedder.embed(&texts);
        metrics.embed_compute_seconds.observe(started.elapsed().as_secs_f64());
        metrics.embed_batch_size.observe(live.len() as f64);
        tracing::debug!(
            batch = live.len(),
            compute_us = started.elapsed().as_micros() as u64,
            queue_us = live.iter().map(|j| (started - j.enqueued).as_micros() as u64).max().unwrap_or(0),
            "embedding batch"
        );
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats.texts.fetch_add(live.len() as u64, Ordering::Relaxed);
        match result {
            Ok(vectors) => {
                for (job, v) in live.into_iter().zip(vectors) {
                    let _ = job.reply.send(Ok(v));
                }
            }
            Err(e) => {
                for job in live {
                    let _ = job.reply.send(Err(BatchError::Embed(e.to_string())));
                }
            }
        }
    }
}
