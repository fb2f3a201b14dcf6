//! Dynamic batching of query embeddings, as Triton does it: one batcher per
//! model ([`BatchModel`]: the text model takes strings, the image model
//! preprocessed pixel tensors).
//!
//! Queries arrive one at a time from many clients. Running each alone
//! wastes the model: on this CPU a batch of 8 short titles costs about 2.5×
//! a single one but serves 8 (docs/PERFORMANCE.md). Each worker (one per ORT
//! session) takes the first waiting query and every other query already
//! queued; if there were others, it keeps collecting for at most
//! `max_delay` or until `max_batch`. When more are waiting than fit in one
//! batch (up to four batches' worth), it batches the oldest query with the
//! ones closest to it in size, since a batch of texts pads to its longest
//! ([`pick_batch`]). It drops queries whose deadline passed while they
//! waited and embeds the rest in one call. Queue time per query,
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

    /// What a batch pads to: inputs of similar size are batched together
    /// when more are waiting than fit in one batch. Texts: their length
    /// (a batch pads to its longest); images: all one size.
    fn size_of(_input: &Self::Input) -> usize {
        0
    }
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

    fn size_of(input: &String) -> usize {
        input.len()
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

/// How many batches' worth of waiting queries a worker looks at when it
/// groups them by size.
const LOOKAHEAD_BATCHES: usize = 4;

/// Which of the waiting inputs (sizes, oldest first) form the next batch:
/// all of them when they fit; otherwise `max_batch` inputs adjacent in size
/// order that include the oldest (so no query waits behind ever newer
/// ones), choosing, among such windows, the one with the smallest spread of
/// sizes. Returns indices into `sizes`, ascending.
fn pick_batch(sizes: &[usize], max_batch: usize) -> Vec<usize> {
    let max_batch = max_batch.max(1);
    if sizes.len() <= max_batch {
        return (0..sizes.len()).collect();
    }
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    // Ties keep arrival order, so equal sizes are served oldest first.
    order.sort_by_key(|&i| (sizes[i], i));
    let oldest = order.iter().position(|&i| i == 0).unwrap_or(0);
    let first = oldest.saturating_sub(max_batch - 1);
    let last = oldest.min(sizes.len() - max_batch);
    let start = (first..=last).min_by_key(|&s| (sizes[order[s + max_batch - 1]] - sizes[order[s]], s)).unwrap_or(first);
    let mut picked = order[start..start + max_batch].to_vec();
    picked.sort_unstable();
    picked
}

fn worker<M: BatchModel>(
    rx: &Receiver<Job<M::Input>>,
    embedder: &M,
    queued: &AtomicUsize,
    stats: &BatchStats,
    config: &BatcherConfig,
) {
    // Jobs this worker has taken from the channel but not yet batched,
    // oldest first; they still count in `queued`.
    let mut pending: Vec<Job<M::Input>> = Vec::new();
    let lookahead = config.max_batch.saturating_mul(LOOKAHEAD_BATCHES);
    loop {
        if pending.is_empty() {
            match rx.recv() {
                Ok(job) => pending.push(job),
                Err(_) => return,
            }
        }
        // Take what is already waiting. Under load, queries pile up while the
        // previous batch computes, so this alone forms full batches.
        while pending.len() < lookahead {
            match rx.try_recv() {
                Ok(job) => pending.push(job),
                Err(_) => break,
            }
        }
        // Wait for companions only when others were waiting too: a lone
        // query on an idle shard should not pay the delay for nothing.
        if pending.len() > 1 && pending.len() < config.max_batch {
            let until = Instant::now() + config.max_delay;
            while pending.len() < config.max_batch {
                match rx.recv_deadline(until) {
                    Ok(job) => pending.push(job),
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                }
            }
        }
        let sizes: Vec<usize> = pending.iter().map(|j| M::size_of(&j.input)).collect();
        let picked = pick_batch(&sizes, config.max_batch);
        let mut batch = Vec::with_capacity(picked.len());
        let mut rest = Vec::with_capacity(pending.len() - picked.len());
        for (i, job) in pending.drain(..).enumerate() {
            if picked.binary_search(&i).is_ok() {
                batch.push(job);
            } else {
                rest.push(job);
            }
        }
        pending = rest;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_group_similar_sizes_and_always_take_the_oldest() {
        assert_eq!(pick_batch(&[5, 9, 1], 4), vec![0, 1, 2], "everything fits");
        // Oldest is 10 long: it goes with the other long ones.
        let sizes = [10, 1, 11, 2, 12, 3, 13, 4];
        assert_eq!(pick_batch(&sizes, 4), vec![0, 2, 4, 6]);
        // Oldest is short: the short ones.
        let sizes = [1, 10, 2, 11, 3, 12, 4, 13];
        assert_eq!(pick_batch(&sizes, 4), vec![0, 2, 4, 6]);
        // The oldest is the longest: the window ends at it.
        assert_eq!(pick_batch(&[50, 1, 2, 3, 40, 45], 3), vec![0, 4, 5]);
        // All one size (images): arrival order.
        assert_eq!(pick_batch(&[0; 10], 4), vec![0, 1, 2, 3]);
        assert_eq!(pick_batch(&[7, 7], 0), vec![0], "a batch holds at least one");
    }

    /// A model that records the sizes of each batch and answers each input
    /// with its own size.
    struct Recorder {
        batches: parking_lot::Mutex<Vec<Vec<usize>>>,
        /// The model call waits until the test opens it.
        open: std::sync::atomic::AtomicBool,
        /// Model calls started.
        calls: AtomicUsize,
    }

    impl BatchModel for Recorder {
        type Input = String;
        const MODALITY: &'static str = "text";

        fn embed_batch(&self, inputs: &[String]) -> Result<Vec<Vec<f32>>, String> {
            self.calls.fetch_add(1, Ordering::AcqRel);
            while !self.open.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(1));
            }
            self.batches.lock().push(inputs.iter().map(String::len).collect());
            Ok(inputs.iter().map(|t| vec![t.len() as f32]).collect())
        }

        fn size_of(input: &String) -> usize {
            input.len()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queued_texts_are_batched_by_length() {
        let model =
            Arc::new(Recorder { batches: Default::default(), open: Default::default(), calls: Default::default() });
        let config = BatcherConfig { max_batch: 4, max_delay: Duration::from_millis(1), ..BatcherConfig::default() };
        let batcher = Arc::new(Batcher::start(Arc::clone(&model), config).unwrap());
        let deadline = Instant::now() + Duration::from_secs(30);
        // The model is held (closed) so that 16 texts of alternating lengths
        // queue up behind the first.
        let first = {
            let b = Arc::clone(&batcher);
            tokio::spawn(async move { b.embed("x".into(), deadline).await })
        };
        // The first text is in the model (alone) before the others arrive.
        while model.calls.load(Ordering::Acquire) == 0 {
            tokio::task::yield_now().await;
        }
        let calls: Vec<_> = (0..16)
            .map(|i| {
                let text = if i % 2 == 0 { "s".repeat(3 + i) } else { "l".repeat(100 + i) };
                let b = Arc::clone(&batcher);
                tokio::spawn(async move { (text.len(), b.embed(text, deadline).await) })
            })
            .collect();
        while batcher.queued.load(Ordering::Acquire) < 16 {
            tokio::task::yield_now().await;
        }
        model.open.store(true, Ordering::Release);
        assert_eq!(first.await.unwrap().unwrap(), vec![1.0]);
        for call in calls {
            let (len, got) = call.await.unwrap();
            assert_eq!(got.unwrap(), vec![len as f32], "each text gets its own vector");
        }
        let batches = model.batches.lock().clone();
        assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), 17);
        assert_eq!(batches[0], vec![1], "the first text ran alone");
        for b in &batches[1..] {
            let (lo, hi) = (b.iter().min().unwrap(), b.iter().max().unwrap());
            assert!(hi - lo < 50, "a batch mixed short and long texts: {batches:?}");
        }
    }
}
