//! `vitrine-embedbench`: the shard's embedding paths on real inputs, for
//! comparison with Python onnxruntime on the same model, threads and inputs
//! (`benches/peers/onnxruntime_embed.py` and `onnxruntime_image.py`, driven
//! by `benches/run-embed.sh`).
//!
//! - text, offline: the tokenizer, one ONNX Runtime session and pooling,
//!   called with batches of 1, 8, 32 titles;
//! - text, served (`--served N`): N concurrent clients each sending one title
//!   at a time through the shard's dynamic batcher, as queries arrive, with
//!   per-request p50/p99;
//! - images (`--images DIR`): decode + EXIF + resize + crop + normalise per
//!   image, apart from the model's time per batch.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use vitrine_shard::batcher::{Batcher, BatcherConfig};
use vitrine_shard::embed::{Device, RuntimeConfig, TextEmbedder, TextModelConfig};
use vitrine_shard::image_embed::{ImageEmbedder, ImageModelConfig};

#[derive(Parser)]
struct Args {
    /// Titles, one per line.
    #[arg(long)]
    titles: Option<PathBuf>,
    /// How many titles (or images) to embed per batch size.
    #[arg(long, default_value_t = 2000)]
    n: usize,
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    batch: Vec<usize>,
    /// Intra-op threads of the ONNX Runtime session.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Also serve the titles to this many concurrent single-title clients
    /// through the dynamic batcher.
    #[arg(long)]
    served: Option<usize>,
    /// The batcher's largest batch in the served run.
    #[arg(long, default_value_t = 32)]
    served_max_batch: usize,
    #[arg(long, default_value = ".cache/models/all-minilm-l6-v2")]
    model_dir: PathBuf,
    /// Benchmark the image model on the JPEG/PNG/WebP files of this
    /// directory instead of the text model.
    #[arg(long)]
    images: Option<PathBuf>,
    #[arg(long, default_value = ".cache/models/test-vit")]
    image_model_dir: PathBuf,
    #[arg(long, default_value = ".cache/models/libonnxruntime.so.1.31.1")]
    ort_lib: PathBuf,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// Runs `embed` on consecutive chunks of `bs` inputs: inputs per second over
/// the whole pass, and the median and 99th-percentile time of one chunk in ms.
fn timed_batches<T, E: std::error::Error + Send + Sync + 'static>(
    inputs: &[T],
    bs: usize,
    mut embed: impl FnMut(&[T]) -> Result<(), E>,
) -> anyhow::Result<(f64, f64, f64)> {
    let mut lat = Vec::new();
    let started = Instant::now();
    for chunk in inputs.chunks(bs.max(1)) {
        let t = Instant::now();
        embed(chunk)?;
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    Ok((inputs.len() as f64 / secs, percentile(&lat, 0.5), percentile(&lat, 0.99)))
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    match (&a.images, &a.titles) {
        (Some(dir), _) => images(&a, dir),
        (None, Some(titles)) => text(&a, titles),
        (None, None) => anyhow::bail!("give --titles FILE or --images DIR"),
    }
}

fn text(a: &Args, titles: &PathBuf) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(titles)?;
    let titles: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).take(a.n).collect();
    let cfg =
        TextModelConfig { intra_threads: a.threads, max_batch: 1024, ..TextModelConfig::new(&a.model_dir, &a.ort_lib) };
    let e = TextEmbedder::load(&cfg)?;
    e.embed(&titles[..titles.len().min(64)])?; // warm-up
    for &bs in &a.batch {
        let (per_s, p50, p99) = timed_batches(&titles, bs, |chunk| e.embed(chunk).map(drop))?;
        println!(
            "{{\"engine\": \"vitrine (Rust, ort)\", \"batch\": {bs}, \"threads\": {}, \"n\": {}, \"per_s\": {per_s:.1}, \"batch_p50_ms\": {p50:.2}, \"batch_p99_ms\": {p99:.2}}}",
            a.threads,
            titles.len(),
        );
    }
    if let Some(clients) = a.served {
        served(a, e, &titles, clients)?;
    }
    Ok(())
}

/// `clients` tasks, each sending its share of the titles one at a time
/// (the next when the previous is answered) through a [`Batcher`] with the
/// shard's default delay: the queries arrive as a served shard sees them.
fn served(a: &Args, e: Arc<TextEmbedder>, titles: &[&str], clients: usize) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let config = BatcherConfig {
        max_batch: a.served_max_batch,
        max_delay: Duration::from_millis(2),
        max_queue: 4096,
        workers: 1,
    };
    let batcher = Arc::new(Batcher::start(e, config)?);
    let titles: Vec<String> = titles.iter().map(|t| t.to_string()).collect();
    let (secs, mut lat) = rt.block_on(async {
        let started = Instant::now();
        let tasks: Vec<_> = (0..clients)
            .map(|c| {
                let batcher = Arc::clone(&batcher);
                let mine: Vec<String> = titles.iter().skip(c).step_by(clients).cloned().collect();
                tokio::spawn(async move {
                    let mut lat = Vec::with_capacity(mine.len());
                    for t in mine {
                        let sent = Instant::now();
                        batcher.embed(t, sent + Duration::from_secs(60)).await.expect("served embedding");
                        lat.push(sent.elapsed().as_secs_f64() * 1000.0);
                    }
                    lat
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("client task"));
        }
        (started.elapsed().as_secs_f64(), all)
    });
    lat.sort_by(f64::total_cmp);
    let stats = &batcher.stats;
    let batches = stats.batches.load(std::sync::atomic::Ordering::Relaxed).max(1);
    println!(
        "{{\"engine\": \"vitrine served (batcher)\", \"clients\": {clients}, \"max_batch\": {}, \"threads\": {}, \"n\": {}, \"per_s\": {:.1}, \"p50_ms\": {:.2}, \"p99_ms\": {:.2}, \"mean_batch\": {:.1}}}",
        a.served_max_batch,
        a.threads,
        lat.len(),
        lat.len() as f64 / secs,
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        stats.inputs.load(std::sync::atomic::Ordering::Relaxed) as f64 / batches as f64
    );
    Ok(())
}

fn images(a: &Args, dir: &PathBuf) -> anyhow::Result<()> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| ["jpg", "jpeg", "png", "webp"].contains(&x.to_str().unwrap_or(""))))
        .collect();
    paths.sort();
    paths.truncate(a.n);
    anyhow::ensure!(!paths.is_empty(), "no images in {}", dir.display());
    let cfg = ImageModelConfig {
        model_dir: a.image_model_dir.clone(),
        onnx_file: None,
        name: None,
        runtime: RuntimeConfig {
            ort_library: a.ort_lib.clone(),
            sessions: 1,
            intra_threads: a.threads,
            device: Device::Cpu,
        },
        max_batch: 1024,
    };
    let model = ImageEmbedder::load(&cfg)?;
    let files: Vec<Vec<u8>> = paths.iter().map(std::fs::read).collect::<Result<_, _>>()?;
    let started = Instant::now();
    let pixels: Vec<Vec<f32>> =
        files.iter().map(|b| model.pixels(b, 40_000_000)).collect::<Result<_, _>>().map_err(anyhow::Error::msg)?;
    let pre_ms = started.elapsed().as_secs_f64() * 1000.0 / files.len() as f64;
    println!(
        "{{\"engine\": \"vitrine (Rust, image crate)\", \"stage\": \"preprocess\", \"n\": {}, \"ms_per_image\": {pre_ms:.3}}}",
        files.len()
    );
    let refs: Vec<&[f32]> = pixels.iter().map(Vec::as_slice).collect();
    model.embed(&refs[..refs.len().min(8)])?; // warm-up
    for &bs in &a.batch {
        let (per_s, p50, _) = timed_batches(&refs, bs, |chunk| model.embed(chunk).map(drop))?;
        println!(
            "{{\"engine\": \"vitrine (Rust, ort)\", \"stage\": \"model\", \"batch\": {bs}, \"threads\": {}, \"n\": {}, \"per_s\": {per_s:.1}, \"batch_p50_ms\": {p50:.2}}}",
            a.threads,
            refs.len(),
        );
    }
    Ok(())
}
