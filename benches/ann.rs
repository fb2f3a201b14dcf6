//! `vitrine-annbench`: Vitrine's shard index against the same vectors the peer
//! libraries are run on (see `benches/peers/ann_peers.py` and
//! `benches/run-ann.sh`).
//!
//! `embed` turns real product titles into MiniLM vectors with the shard's own
//! embedder and writes `base.f32`, `queries.f32` (raw little-endian f32) and
//! `gt.u32` (exact top-10 by brute force) plus `meta.json`. Other data sets
//! (GloVe, subsets) are written in the same format by
//! `benches/peers/ann_data.py`.
//!
//! `search` builds the index with the given M / ef_construction on
//! `--build-threads` threads and reports build time and the resident memory
//! the build added, then recall@k and QPS for each search thread count and
//! ef, first for `hnsw_rs` itself and then for its flattened copy
//! (`vitrine_shard::flat`), whose lines also carry the time the copy took
//! (`flatten_s`) and its own size (`index_bytes`), then for that copy
//! walking int8 codes with exact re-scoring (`vitrine (flat int8)`). Every line is one JSON
//! object ([`Line`]); the peers print the same shape, so the summary in
//! `run-ann.sh` treats all engines alike.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::time::Instant;

use anyhow::{ensure, Context};
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
    /// Build and search; prints one JSON line per engine, thread count and ef.
    Search {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 16)]
        m: usize,
        #[arg(long, default_value_t = 200)]
        ef_construction: usize,
        #[arg(long, value_delimiter = ',', default_value = "10,16,32,64,128,256")]
        ef: Vec<usize>,
        /// Search thread counts to measure. Each thread answers its share of
        /// the queries one call at a time against the one shared index, as
        /// a shard's request handlers do.
        #[arg(long, value_delimiter = ',', default_value = "1")]
        threads: Vec<usize>,
        /// Threads inserting into the graph concurrently (`hnsw_rs` insert
        /// takes `&self`). The peers build with the same count.
        #[arg(long, default_value_t = 1)]
        build_threads: usize,
        /// Each measurement repeats whole passes over the queries until they
        /// took this long together (see `measure`).
        #[arg(long, default_value_t = 0.3)]
        min_seconds: f64,
        /// Search through the filtered path with an accept-all predicate
        /// (what a shard with tombstones or a filter does).
        #[arg(long)]
        filtered: bool,
    },
}

/// `meta.json` of a benchmark directory: `n` base and `queries` query
/// vectors of `dim` floats, and `k` ground-truth ids per query.
struct Meta {
    n: usize,
    queries: usize,
    dim: usize,
    k: usize,
}

impl Meta {
    /// Reads the four counts. The file is flat JSON written by `embed` or
    /// `benches/peers/ann_data.py`; a key lookup keeps this binary free of a
    /// JSON dependency.
    fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let field = |key: &str| -> anyhow::Result<usize> {
            text.split(&format!("\"{key}\":"))
                .nth(1)
                .and_then(|rest| rest.trim_start().split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|digits| digits.parse().ok())
                .with_context(|| format!("{} has no count \"{key}\"", path.display()))
        };
        Ok(Self { n: field("n")?, queries: field("queries")?, dim: field("dim")?, k: field("k")? })
    }
}

/// One measurement, printed as a JSON line. `benches/peers/ann_peers.py`
/// prints the same fields; `benches/peers/ann_summary.py` reads both.
struct Line<'a> {
    engine: &'a str,
    /// The benchmark directory's name, so one output file can hold several
    /// data sets.
    dataset: &'a str,
    n: usize,
    dim: usize,
    m: usize,
    ef_construction: usize,
    ef: usize,
    /// Search threads.
    threads: usize,
    build_threads: usize,
    /// recall@k (k from `meta.json`, 10 for the shipped data sets).
    recall: f64,
    qps: f64,
    build_s: f64,
    /// Only the flat copy's lines: seconds `FlatIndex::from_hnsw` took.
    flatten_s: Option<f64>,
    /// Growth of the process's resident set across the build; `None` where
    /// it is not what the engine costs (the flat copy: `from_hnsw` frees
    /// temporaries the allocator keeps, so RSS would overstate it).
    rss_bytes: Option<i64>,
    /// The engine's own account of its size, where it gives one.
    index_bytes: Option<usize>,
}

impl Line<'_> {
    fn print(&self) {
        /// A JSON string; the names here are ours, so escaping quotes and
        /// backslashes is enough.
        fn string(s: &str) -> String {
            format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
        }
        fn or_null<T: std::fmt::Display>(v: Option<T>) -> String {
            v.map_or_else(|| "null".to_owned(), |v| v.to_string())
        }
        let flatten = self.flatten_s.map(|s| format!(", \"flatten_s\": {s:.3}")).unwrap_or_default();
        println!(
            "{{\"engine\": {}, \"dataset\": {}, \"n\": {}, \"dim\": {}, \"m\": {}, \"ef_construction\": {}, \"ef\": {}, \
             \"threads\": {}, \"build_threads\": {}, \"recall\": {:.4}, \"qps\": {:.0}, \"build_s\": {:.2}{flatten}, \
             \"rss_bytes\": {}, \"index_bytes\": {}}}",
            string(self.engine),
            string(self.dataset),
            self.n,
            self.dim,
            self.m,
            self.ef_construction,
            self.ef,
            self.threads,
            self.build_threads,
            self.recall,
            self.qps,
            self.build_s,
            or_null(self.rss_bytes),
            or_null(self.index_bytes),
        );
    }
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
    ensure!(dim > 0 && bytes.len() % (4 * dim) == 0, "{}: not a whole number of {dim}-d f32 rows", path.display());
    let all: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    Ok(all.chunks_exact(dim).map(<[f32]>::to_vec).collect())
}

/// Resident set size of this process, from `/proc/self/status` (in kB there,
/// so no page-size lookup is needed); `None` off Linux.
fn rss_bytes() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Inserts every base vector (id = row) from `threads` threads, each taking
/// every `threads`-th row, so the graph is built with the parallelism the
/// peers are given.
fn build(index: &HnswIndex, base: &[Vec<f32>], threads: usize) {
    let threads = threads.max(1);
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                for i in (t..base.len()).step_by(threads) {
                    index.insert(i, &base[i]);
                }
            });
        }
    });
}

/// Measures `search` (top `k`) over all queries split across `threads`
/// threads; returns recall@k against `gt` (`k` ids per query) and queries
/// per second. Whole passes over the queries repeat until they have run for
/// `min_secs` together, so that a pass of a few milliseconds (small data,
/// small ef) is not decided by one scheduler hiccup; recall is that of the
/// first pass.
fn measure(
    queries: &[Vec<f32>],
    gt: &[u32],
    k: usize,
    threads: usize,
    min_secs: f64,
    search: impl Fn(&[f32]) -> Vec<(PointId, f32)> + Sync,
) -> (f64, f64) {
    let (found, mut secs) = pass(queries, gt, k, threads, &search);
    let mut passes = 1usize;
    while secs < min_secs {
        secs += pass(queries, gt, k, threads, &search).1;
        passes += 1;
    }
    (found as f64 / (queries.len() * k).max(1) as f64, (passes * queries.len()) as f64 / secs)
}

/// Runs every query once, query `i` on thread `i % threads`; returns the
/// ground-truth ids found and the seconds from the first thread's start to
/// the last one's end. Each thread first runs one untimed search, so
/// per-thread setup (the flat index's visited set) is not timed, then waits
/// until all are ready. The threads read the clock themselves: with more
/// threads than cores a coordinating thread may not run again until they
/// are done, and a pass lasts less than a scheduler time slice.
fn pass(
    queries: &[Vec<f32>],
    gt: &[u32],
    k: usize,
    threads: usize,
    search: &(impl Fn(&[f32]) -> Vec<(PointId, f32)> + Sync),
) -> (usize, f64) {
    let threads = threads.clamp(1, queries.len().max(1));
    let ready = Barrier::new(threads);
    let ready = &ready;
    let spans: Vec<(usize, Instant, Instant)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    if let Some(q) = queries.get(t) {
                        std::hint::black_box(search(q));
                    }
                    ready.wait();
                    let started = Instant::now();
                    let mut found = 0usize;
                    for qi in (t..queries.len()).step_by(threads) {
                        let truth = &gt[qi * k..qi * k + k];
                        found += search(&queries[qi]).iter().filter(|(id, _)| truth.contains(&(*id as u32))).count();
                    }
                    (found, started, Instant::now())
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
    });
    let found = spans.iter().map(|s| s.0).sum();
    let secs = match (spans.iter().map(|s| s.1).min(), spans.iter().map(|s| s.2).max()) {
        (Some(first), Some(last)) => last.duration_since(first).as_secs_f64(),
        _ => 0.0,
    };
    (found, secs)
}

/// The predicate as `VectorIndex::search` takes it: the measuring threads
/// need it `Sync`, the index does not.
fn unsync(accept: Option<&(dyn Fn(PointId) -> bool + Sync)>) -> Option<&dyn Fn(PointId) -> bool> {
    accept.map(|f| f as &dyn Fn(PointId) -> bool)
}

fn main() -> anyhow::Result<()> {
    match Args::parse().cmd {
        Cmd::Embed { titles, out, model_dir, ort_lib, queries } => {
            let text = std::fs::read_to_string(&titles).with_context(|| format!("reading {}", titles.display()))?;
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
        Cmd::Search { dir, m, ef_construction, ef, threads, build_threads, min_seconds, filtered } => {
            let meta = Meta::read(&dir.join("meta.json"))?;
            let (dim, k) = (meta.dim, meta.k);
            let base = read_f32(&dir.join("base.f32"), dim)?;
            let queries = read_f32(&dir.join("queries.f32"), dim)?;
            let gt: Vec<u32> = std::fs::read(dir.join("gt.u32"))
                .with_context(|| format!("reading {}", dir.join("gt.u32").display()))?
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            ensure!(base.len() == meta.n, "meta.json says {} base vectors, base.f32 has {}", meta.n, base.len());
            ensure!(queries.len() == meta.queries, "meta.json says {} queries, found {}", meta.queries, queries.len());
            ensure!(gt.len() == queries.len() * k, "gt.u32 has {} ids, expected {} × {k}", gt.len(), queries.len());
            let dataset =
                dir.file_name().map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into_owned());
            let build_threads = build_threads.max(1);

            let rss_before = rss_bytes();
            let index = HnswIndex::new(&IndexParams { m, ef_construction, ef_search: 64, expected_points: base.len() });
            let started = Instant::now();
            build(&index, &base, build_threads);
            let build_s = started.elapsed().as_secs_f64();
            let rss_grown = rss_before.zip(rss_bytes()).map(|(before, after)| after - before);

            let accept_all = |_: PointId| true;
            let accept: Option<&(dyn Fn(PointId) -> bool + Sync)> = if filtered { Some(&accept_all) } else { None };
            let path = if filtered { ", filtered path" } else { "" };
            let line = |engine, threads, ef, (recall, qps)| Line {
                engine,
                dataset: &dataset,
                n: base.len(),
                dim,
                m,
                ef_construction,
                ef,
                threads,
                build_threads,
                recall,
                qps,
                build_s,
                flatten_s: None,
                rss_bytes: None,
                index_bytes: None,
            };

            let engine = format!("vitrine (hnsw_rs{path})");
            for &t in &threads {
                for &ef in &ef {
                    let measured =
                        measure(&queries, &gt, k, t, min_seconds, |q| index.search(q, k, ef, unsync(accept)));
                    Line { rss_bytes: rss_grown, ..line(&engine, t, ef, measured) }.print();
                }
            }

            let started = Instant::now();
            let flat = FlatIndex::from_hnsw(&index)?;
            let flatten_s = Some(started.elapsed().as_secs_f64());
            let index_bytes = Some(flat.memory_bytes());
            let engine = format!("vitrine (flat{path})");
            for &t in &threads {
                for &ef in &ef {
                    let measured = measure(&queries, &gt, k, t, min_seconds, |q| flat.search(q, k, ef, unsync(accept)));
                    Line { flatten_s, index_bytes, ..line(&engine, t, ef, measured) }.print();
                }
            }

            // The same copy walking int8 codes, results re-scored in f32.
            let mut q8 = flat;
            let started = Instant::now();
            q8.quantize();
            let flatten_s = flatten_s.map(|f| f + started.elapsed().as_secs_f64());
            let index_bytes = Some(q8.memory_bytes());
            let engine = format!("vitrine (flat int8{path})");
            for &t in &threads {
                for &ef in &ef {
                    let measured = measure(&queries, &gt, k, t, min_seconds, |q| q8.search(q, k, ef, unsync(accept)));
                    Line { flatten_s, index_bytes, ..line(&engine, t, ef, measured) }.print();
                }
            }
        }
    }
    Ok(())
}
