//! `vitrine-annbench`: Vitrine's shard index against the same vectors a peer
//! library is run on (see `benches/peers/hnswlib_bench.py` and
//! `benches/run-ann.sh`).
//!
//! `embed` turns real product titles into MiniLM vectors with the shard's own
//! embedder and writes `base.f32`, `queries.f32` (raw little-endian f32) and
//! `gt.u32` (exact top-10 by brute force) plus `meta.json`. `search` builds
//! the index with the given M / ef_construction on one thread and reports
//! build time, then recall@10 and single-thread QPS for each ef, first for
//! `hnsw_rs` itself and then for its flattened copy (`vitrine_shard::flat`),
//! whose lines also carry the time the copy took (`flatten_s`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand};
use vitrine_shard::embed::{TextEmbedder, TextModelConfig};
use vitrine_shard::flat::FlatIndex;
use vitrine_shard::index::{dot, HnswIndex, IndexParams, PointId, VectorIndex};

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Embed titles (one per line) into a benchmark directory.
    Embed {
        #[arg(long)]
        titles: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = ".cache/models/all-minilm-l6-v2")]
        model_dir: PathBuf,
        #[arg(long, default_value = ".cache/models/libonnxruntime.so.1.31.1")]
        ort_lib: PathBuf,
        /// Held-out query vectors.
        #[arg(long, default_value_t = 1000)]
        queries: usize,
    },
    /// Build and search; prints one JSON line per ef.
    Search {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 16)]
        m: usize,
        #[arg(long, default_value_t = 200)]
        ef_construction: usize,
        #[arg(long, value_delimiter = ',', default_value = "10,16,32,64,128,256")]
        ef: Vec<usize>,
        /// Search through the filtered path with an accept-all predicate
        /// (what a shard with tombstones or a filter does).
        #[arg(long)]
        filtered: bool,
    },
}

fn write_f32(path: &Path, rows: &[Vec<f32>]) -> anyhow::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for r in rows {
        for x in r {
            f.write_all(&x.to_le_bytes())?;
        }
    }
    Ok(())
}

fn read_f32(path: &Path, dim: usize) -> anyhow::Result<Vec<Vec<f32>>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let all: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    Ok(all.chunks_exact(dim).map(<[f32]>::to_vec).collect())
}

/// Runs every query once through `search` (top 10) on this thread; returns
/// recall@10 against `gt` (10 ids per query) and queries per second.
fn measure(queries: &[Vec<f32>], gt: &[u32], search: impl Fn(&[f32]) -> Vec<(PointId, f32)>) -> (f64, f64) {
    let started = Instant::now();
    let mut found = 0usize;
    for (qi, q) in queries.iter().enumerate() {
        let hits = search(q);
        let truth = &gt[qi * 10..qi * 10 + 10];
        found += hits.iter().filter(|(id, _)| truth.contains(&(*id as u32))).count();
    }
    let secs = started.elapsed().as_secs_f64();
    (found as f64 / (queries.len() * 10) as f64, queries.len() as f64 / secs)
}

fn main() -> anyhow::Result<()> {
    match Args::parse().cmd {
        Cmd::Embed { titles, out, model_dir, ort_lib, queries } => {
            let text = std::fs::read_to_string(&titles)?;
            let mut seen = std::collections::HashSet::new();
            let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty() && seen.insert(*l)).collect();
            let e =
                TextEmbedder::load(&TextModelConfig { intra_threads: 2, ..TextModelConfig::new(model_dir, ort_lib) })?;
            let started = Instant::now();
            let mut vectors = Vec::with_capacity(lines.len());
            for chunk in lines.chunks(512) {
                vectors.extend(e.embed(chunk)?);
            }
            eprintln!("embedded {} titles in {:.1} s", lines.len(), started.elapsed().as_secs_f64());
            // Deterministic split: every k-th title is a query.
            let stride = (vectors.len() / queries.max(1)).max(2);
            let (mut base, mut qs) = (Vec::new(), Vec::new());
            for (i, v) in vectors.into_iter().enumerate() {
                if i % stride == 0 && qs.len() < queries {
                    qs.push(v);
                } else {
                    base.push(v);
                }
            }
            let dim = e.dimension();
            let gt: Vec<Vec<u32>> = qs
                .iter()
                .map(|q| {
                    let mut s: Vec<(f32, u32)> = base.iter().enumerate().map(|(i, b)| (dot(q, b), i as u32)).collect();
                    s.select_nth_unstable_by(10, |a, b| b.0.total_cmp(&a.0));
                    let mut top: Vec<(f32, u32)> = s[..10].to_vec();
                    top.sort_by(|a, b| b.0.total_cmp(&a.0));
                    top.into_iter().map(|(_, i)| i).collect()
                })
                .collect();
            std::fs::create_dir_all(&out)?;
            write_f32(&out.join("base.f32"), &base)?;
            write_f32(&out.join("queries.f32"), &qs)?;
            let mut f = std::fs::File::create(out.join("gt.u32"))?;
            for row in &gt {
                for i in row {
                    f.write_all(&i.to_le_bytes())?;
                }
            }
            std::fs::write(
                out.join("meta.json"),
                format!("{{\"n\": {}, \"queries\": {}, \"dim\": {dim}, \"k\": 10}}\n", base.len(), qs.len()),
            )?;
            eprintln!("wrote {} base and {} query vectors to {}", base.len(), qs.len(), out.display());
        }
        Cmd::Search { dir, m, ef_construction, ef, filtered } => {
            let meta = std::fs::read_to_string(dir.join("meta.json"))?;
            let dim: usize = meta
                .split("\"dim\":")
                .nth(1)
                .and_then(|s| s.split(|c: char| !c.is_ascii_digit() && c != ' ').next())
                .and_then(|s| s.trim().parse().ok())
                .context("meta.json has no dim")?;
            let base = read_f32(&dir.join("base.f32"), dim)?;
            let queries = read_f32(&dir.join("queries.f32"), dim)?;
            let gt: Vec<u32> = std::fs::read(dir.join("gt.u32"))?
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            let index = HnswIndex::new(&IndexParams { m, ef_construction, ef_search: 64, expected_points: base.len() });
            let started = Instant::now();
            for (i, v) in base.iter().enumerate() {
                index.insert(i, v);
            }
            let build_s = started.elapsed().as_secs_f64();
            let accept_all = |_: PointId| true;
            let accept: Option<&dyn Fn(PointId) -> bool> = if filtered { Some(&accept_all) } else { None };
            let path = if filtered { ", filtered path" } else { "" };
            for &ef in &ef {
                let (recall, qps) = measure(&queries, &gt, |q| index.search(q, 10, ef, accept));
                println!(
                    "{{\"engine\": \"vitrine (hnsw_rs{path})\", \"n\": {}, \"m\": {m}, \"ef_construction\": {ef_construction}, \"ef\": {ef}, \"recall\": {recall:.4}, \"qps\": {qps:.0}, \"build_s\": {build_s:.2}}}",
                    base.len(),
                );
            }
            let started = Instant::now();
            let flat = FlatIndex::from_hnsw(&index)?;
            let flatten_s = started.elapsed().as_secs_f64();
            for &ef in &ef {
                let (recall, qps) = measure(&queries, &gt, |q| flat.search(q, 10, ef, accept));
                println!(
                    "{{\"engine\": \"vitrine (flat{path})\", \"n\": {}, \"m\": {m}, \"ef_construction\": {ef_construction}, \"ef\": {ef}, \"recall\": {recall:.4}, \"qps\": {qps:.0}, \"build_s\": {build_s:.2}, \"flatten_s\": {flatten_s:.3}}}",
                    base.len(),
                );
            }
        }
    }
    Ok(())
}
