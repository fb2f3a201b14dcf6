//! `vitrine-embedbench`: the shard's text-embedding path (tokenizer, ONNX
//! Runtime session, pooling) on real titles, for comparison with Python
//! onnxruntime on the same model, threads and inputs
//! (`benches/peers/onnxruntime_embed.py`, driven by `benches/run-embed.sh`).

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use vitrine_shard::embed::{TextEmbedder, TextModelConfig};

#[derive(Parser)]
struct Args {
    /// Titles, one per line.
    #[arg(long)]
    titles: PathBuf,
    /// How many titles to embed per batch size.
    #[arg(long, default_value_t = 2000)]
    n: usize,
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    batch: Vec<usize>,
    /// Intra-op threads of the ONNX Runtime session.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    #[arg(long, default_value = ".cache/models/all-minilm-l6-v2")]
    model_dir: PathBuf,
    #[arg(long, default_value = ".cache/models/libonnxruntime.so.1.31.1")]
    ort_lib: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let text = std::fs::read_to_string(&a.titles)?;
    let titles: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).take(a.n).collect();
    let cfg =
        TextModelConfig { intra_threads: a.threads, max_batch: 1024, ..TextModelConfig::new(&a.model_dir, &a.ort_lib) };
    let e = TextEmbedder::load(&cfg)?;
    e.embed(&titles[..titles.len().min(64)])?; // warm-up
    for &bs in &a.batch {
        let mut lat = Vec::new();
        let started = Instant::now();
        for chunk in titles.chunks(bs) {
            let t = Instant::now();
            e.embed(chunk)?;
            lat.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        let secs = started.elapsed().as_secs_f64();
        lat.sort_by(f64::total_cmp);
        println!(
            "{{\"engine\": \"vitrine (Rust, ort)\", \"batch\": {bs}, \"threads\": {}, \"n\": {}, \"per_s\": {:.1}, \"batch_p50_ms\": {:.2}}}",
            a.threads,
            titles.len(),
            titles.len() as f64 / secs,
            lat[lat.len() / 2]
        );
    }
    Ok(())
}
