//! `vitrine-loadgen`: closed-loop gRPC load against a running router, with
//! latency percentiles from an HDR histogram.
//!
//! Each of `--concurrency` workers sends its next request as soon as the
//! previous answer arrives, for `--duration` seconds; `--rate` caps the total
//! request rate (open-loop pacing per worker) to measure latency at a fixed
//! load rather than at saturation.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use tokio::sync::Mutex;
use tonic::transport::Endpoint;
use vitrine_proto::pb::{self, vitrine_client::VitrineClient};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Mode {
    /// Search by a random unit vector (no embedding).
    SearchVector,
    /// Search by a product-like phrase (embedded once by a shard).
    SearchText,
    /// Recommend from a random 3-item history.
    Recommend,
}

#[derive(Parser, Debug)]
#[command(about = "Load generator for a running Vitrine router")]
struct Args {
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    addr: String,
    #[arg(long, value_enum, default_value = "search-vector")]
    mode: Mode,
    /// Requests in flight.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Seconds of measurement (after one second of warm-up).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Total requests per second to offer (0 = as fast as answers come).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    #[arg(long, default_value_t = 10)]
    k: u32,
    /// Before measuring, upsert this many items (ids `lg-<n>`), with vectors
    /// from `--seed-from` or random ones.
    #[arg(long, default_value_t = 0)]
    seed_items: usize,
    /// Raw little-endian f32 vectors of the cluster's dimension to seed with
    /// (e.g. `base.f32` written by `vitrine-annbench embed`: real embeddings).
    #[arg(long)]
    seed_from: Option<std::path::PathBuf>,
    /// Raw f32 query vectors for `search-vector` (random unit vectors if unset).
    #[arg(long)]
    queries: Option<std::path::PathBuf>,
    /// Items `lg-0..N` that exist, for `recommend` histories (default: --seed-items).
    #[arg(long)]
    items: Option<usize>,
    /// `search-text`: make every query text unique (a request number is
    /// appended), so the shards' query cache never answers and every query
    /// is embedded; without it the few phrases repeat and are cached.
    #[arg(long)]
    unique_text: bool,
    /// `search-text`: query texts, one per line, sent in file order (request
    /// n sends line n), so that a file with more distinct lines than the
    /// run sends is never answered from the shards' query cache, and the
    /// same texts can be embedded bare (`vitrine-embedbench --batch 1`).
    #[arg(long)]
    texts: Option<std::path::PathBuf>,
}

fn read_vectors(path: &std::path::Path, dim: usize) -> anyhow::Result<Vec<Vec<f32>>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let all: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    anyhow::ensure!(all.len().is_multiple_of(dim), "{} does not hold {dim}-dimensional vectors", path.display());
    Ok(all.chunks_exact(dim).map(<[f32]>::to_vec).collect())
}

const PHRASES: &[&str] = &[
    "waterproof hiking boots",
    "men's black leather watch",
    "linen summer dress",
    "wireless noise cancelling headphones",
    "cast iron skillet",
    "slim fit blue jeans",
    "running shoes for women",
    "vitamin c face serum",
    "kids cotton t-shirt",
    "travel backpack with laptop sleeve",
];

fn unit(rng: &mut impl Rng, dim: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
    v
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let channel = Endpoint::from_shared(args.addr.clone())?
        .connect()
        .await
        .with_context(|| format!("connecting to {}", args.addr))?;
    let mut client = VitrineClient::new(channel.clone()).max_encoding_message_size(64 << 20);
    let info = client.cluster_info(pb::ClusterInfoRequest {}).await?.into_inner();
    let dim = info.dimension as usize;
    anyhow::ensure!(dim > 0, "cluster reports no dimension");
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    if args.seed_items > 0 {
        let source = args.seed_from.as_deref().map(|p| read_vectors(p, dim)).transpose()?;
        if let Some(src) = &source {
            anyhow::ensure!(src.len() >= args.seed_items, "only {} vectors in --seed-from", src.len());
        }
        let started = Instant::now();
        for chunk in (0..args.seed_items).collect::<Vec<_>>().chunks(1000) {
            let items = chunk
                .iter()
                .map(|&i| pb::Item {
                    id: format!("lg-{i}"),
                    vector: Some(pb::Vector {
                        values: source.as_ref().map_or_else(|| unit(&mut rng, dim), |s| s[i].clone()),
                    }),
                    ..Default::default()
                })
                .collect();
            client.upsert_items(pb::UpsertItemsRequest { items, ..Default::default() }).await?;
        }
        eprintln!("seeded {} items in {:.1} s", args.seed_items, started.elapsed().as_secs_f64());
    }
    let queries = Arc::new(args.queries.as_deref().map(|p| read_vectors(p, dim)).transpose()?.unwrap_or_default());
    let texts: Arc<Vec<String>> = Arc::new(match &args.texts {
        Some(p) => std::fs::read_to_string(p)
            .with_context(|| format!("reading {}", p.display()))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect(),
        None => Vec::new(),
    });
    let known_items = args.items.unwrap_or(args.seed_items);
    let total_items = info.shards.iter().map(|s| s.items).sum::<u64>() as usize + args.seed_items;

    let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let warmup_end = Instant::now() + Duration::from_secs(1);
    let end = warmup_end + Duration::from_secs(args.duration);
    let pace = (args.rate > 0).then(|| Duration::from_secs_f64(args.concurrency as f64 / args.rate as f64));
    let sequence = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..args.concurrency {
        let mut client = VitrineClient::new(channel.clone());
        let hist = Arc::clone(&hist);
        let errors = Arc::clone(&errors);
        let mode = args.mode;
        let k = args.k;
        let seeded = known_items;
        let queries = Arc::clone(&queries);
        let (unique_text, sequence) = (args.unique_text, Arc::clone(&sequence));
        let texts = Arc::clone(&texts);
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(w as u64);
            let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
            let mut next = Instant::now();
            while Instant::now() < end {
                if let Some(p) = pace {
                    tokio::time::sleep_until(next.into()).await;
                    next += p;
                }
                let t = Instant::now();
                let ok = match mode {
                    Mode::SearchVector => client
                        .search(pb::SearchRequest {
                            query: Some(pb::search_request::Query::Vector(pb::Vector {
                                values: if queries.is_empty() {
                                    unit(&mut rng, dim)
                                } else {
                                    queries[rng.random_range(0..queries.len())].clone()
                                },
                            })),
                            k,
                            ..Default::default()
                        })
                        .await
                        .is_ok(),
                    Mode::SearchText => {
                        let phrase = PHRASES[rng.random_range(0..PHRASES.len())];
                        let q = if !texts.is_empty() {
                            let n = sequence.fetch_add(1, std::sync::atomic::Ordering::Relaxed) as usize;
                            texts[n % texts.len()].clone()
                        } else if unique_text {
                            format!("{phrase} {}", sequence.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
                        } else {
                            phrase.to_string()
                        };
                        client
                            .search(pb::SearchRequest {
                                query: Some(pb::search_request::Query::Text(q)),
                                k,
                                ..Default::default()
                            })
                            .await
                            .is_ok()
                    }
                    Mode::Recommend => {
                        let n = seeded.max(1);
                        let history = (0..3).map(|_| format!("lg-{}", rng.random_range(0..n))).collect();
                        client.recommend(pb::RecommendRequest { history, k, ..Default::default() }).await.is_ok()
                    }
                };
                if !ok {
                    errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                if t >= warmup_end {
                    local.record(t.elapsed().as_micros().max(1) as u64).ok();
                }
            }
            hist.lock().await.add(&local).ok();
        }));
    }
    for t in tasks {
        t.await?;
    }
    let sent = sequence.load(std::sync::atomic::Ordering::Relaxed) as usize;
    if !texts.is_empty() && sent > texts.len() {
        eprintln!(
            "warning: {sent} texts sent from a file of {}: repeated texts may have been answered from the query cache",
            texts.len()
        );
    }
    let h = hist.lock().await;
    let secs = args.duration as f64;
    println!(
        "mode={:?} text={} items={} concurrency={} rate={} k={} requests={} errors={} qps={:.0} p50={:.2}ms p99={:.2}ms p99.9={:.2}ms max={:.2}ms",
        args.mode,
        match args.mode {
            Mode::SearchText if !texts.is_empty() => "file",
            Mode::SearchText if args.unique_text => "numbered",
            Mode::SearchText => "phrases",
            _ => "-",
        },
        total_items,
        args.concurrency,
        if args.rate > 0 { args.rate.to_string() } else { "max".into() },
        args.k,
        h.len(),
        errors.load(std::sync::atomic::Ordering::Relaxed),
        h.len() as f64 / secs,
        h.value_at_quantile(0.50) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.value_at_quantile(0.999) as f64 / 1000.0,
        h.max() as f64 / 1000.0
    );
    Ok(())
}
