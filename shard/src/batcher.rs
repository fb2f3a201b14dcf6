//! Dynamic batching of query embeddings, as Triton does it: one batcher per
//! model ([`BatchModel`]: the text model takes strings, the image model
//! preprocessed pixel tensors).
//!
//! Queries arrive one at a time from many clients. Running each alone
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
use crate::image_embed::ImageEmbedder;

/// A model a [`Batcher`] feeds.
pub trait BatchModel: Send + Sync + 'static {
    /// One query's input.
    type Input: Send + 'static;
    /// The `modality` label of the batching metrics.
    const MODALITY: &'static str;
    /// One unit vector per input, in order.
    fn embed_batch(&self, inputs: &[Self::Input]) -> Result<Vec<Vec<f32>>, String>;
}

impl BatchModel for TextEmbedder {
    type Input = String;
    const MODALITY: &'static str = "text";

    /// The texts are sorted by length inside `embed`, so a batch pads
    /// little.
    fn embed_batch(&self, inputs: &[String]) -> Result<Vec<Vec<f32>>, String> {
        let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        self.embed(&refs).map_err(|e| e.to_string())
    }
}

impl BatchModel for ImageEmbedder {
    /// Pixels from [`ImageEmbedder::pixels`].
    type Input = Vec<f32>;
    const MODALITY: &'static str = "image";

    fn embed_batch(&self, inputs: &[Vec<f32>]) -> Result<Vec<Vec<f32>>, String> {
        let refs: Vec<&[f32]> = inputs.iter().map(Vec::as_slice).collect();
        self.embed(&refs).map_err(|e| e.to_string())
    }
}

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

struct Job<I> {
    input: I,
    deadline: Instant,
    enqueued: Instant,
    reply: tokio::sync::oneshot::Sender<Result<Vec<f32>, BatchError>>,
}

/// Counters for logs and tests.
#[derive(Debug, Default)]
pub struct BatchStats {
    pub batches: AtomicU64,
    pub inputs: AtomicU64,
    pub expired: AtomicU64,
    pub rejected: AtomicU64,
}

/// Handle to the batching workers of one model; dropping it stops them.
pub struct Batcher<M: BatchModel> {
    tx: Sender<Job<M::Input>>,
    queued: Arc<AtomicUsize>,
    max_queue: usize,
    pub stats: Arc<BatchStats>,
}

impl<M: BatchModel> Batcher<M> {
    pub fn start(embedder: Arc<M>, config: BatcherConfig) -> std::io::Result<Self> {
        let (tx, rx) = crossbeam_channel::unbounded::<Job<M::Input>>();
        let queued = Arc::new(AtomicUsize::new(0));
        let stats = Arc::new(BatchStats::default());
        for w in 0..config.workers.max(1) {
            let (rx, embedder, queued, stats, config) =
                (rx.clone(), Arc::clone(&embedder), Arc::clone(&queued), Arc::clone(&stats), config.clone());
            std::thread::Builder::new()
                .name(format!("embed-{}-{w}", M::MODALITY))
                .spawn(move || worker(&rx, &*embedder, &queued, &stats, &config))?;
        }
        Ok(Self { tx, queued, max_queue: config.max_queue, stats })
    }

    /// Embeds one input as part of whatever batch forms around it.
    pub async fn embed(&self, input: M::Input, deadline: Instant) -> Result<Vec<f32>, BatchError> {
        let waiting = self.queued.fetch_add(1, Ordering::AcqRel);
        if waiting >= self.max_queue {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            self.stats.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(BatchError::QueueFull(waiting));
        }
        let (reply, rx) = tokio::sync::oneshot::channel();
        let job = Job { input, deadline, enqueued: Instant::now(), reply };
        if self.tx.send(job).is_err() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(BatchError::Embed("batching workers stopped".into()));
        }
        rx.await.map_err(|_| BatchError::Embed("batching worker dropped the query".into()))?
    }
}

fn worker<M: BatchModel>(
    rx: &Receiver<Job<M::Input>>,
    embedder: &M,
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
        let queue_seconds = metrics.embed_queue_seconds.with_label_values(&[M::MODALITY]);
        let now = Instant::now();
        let (live, expired): (Vec<_>, Vec<_>) = batch.into_iter().partition(|j| j.deadline > now);
        for job in expired {
            queue_seconds.observe((now - job.enqueued).as_secs_f64());
            stats.expired.fetch_add(1, Ordering::Relaxed);
            let _ = job.reply.send(Err(BatchError::DeadlineExpired(now - job.enqueued)));
        }
        if live.is_empty() {
            continue;
        }
        let started = Instant::now();
        for job in &live {
            queue_seconds.observe((started - job.enqueued).as_secs_f64());
        }
        let (inputs, live): (Vec<M::Input>, Vec<_>) =
            live.into_iter().map(|j| (j.input, (j.enqueued, j.reply))).unzip();
        let result = embedder.embed_batch(&inputs);
        metrics.embed_compute_seconds.with_label_values(&[M::MODALITY]).observe(started.elapsed().as_secs_f64());
        metrics.embed_batch_size.with_label_values(&[M::MODALITY]).observe(live.len() as f64);
        tracing::debug!(
            modality = M::MODALITY,
            batch = live.len(),
            compute_us = started.elapsed().as_micros() as u64,
            queue_us = live.iter().map(|(enqueued, _)| (started - *enqueued).as_micros() as u64).max().unwrap_or(0),
            "embedding batch"
        );
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats.inputs.fetch_add(live.len() as u64, Ordering::Relaxed);
        match result {
            Ok(vectors) => {
                for ((_, reply), v) in live.into_iter().zip(vectors) {
                    let _ = reply.send(Ok(v));
                }
            }
            Err(e) => {
                for (_, reply) in live {
                    let _ = reply.send(Err(BatchError::Embed(e.clone())));
                }
            }
        }
    }
}
