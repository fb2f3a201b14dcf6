//! `vitrine-recoverybench`: how long a shard takes to come back with N items,
//! by replaying its write-ahead log and by loading a snapshot, and how long
//! the snapshot takes to write. Builds the data directory itself, so it
//! needs nothing else. Vectors are drawn around `--clusters` centres, like
//! text embeddings of a catalogue (uniform random vectors in 384
//! dimensions are the worst case for an HNSW build and unlike real data).
//!
//! Then it measures acknowledged writes per second under each fsync policy
//! with `--writers` threads appending 20-item upserts for `--seconds`.
//!
//! `cargo run --release -p vitrine-benches --bin vitrine-recoverybench -- --items 100000`

use std::time::Instant;

use clap::Parser;
use rand::{Rng, SeedableRng};
use vitrine_proto::pb;
use vitrine_shard::wal::{FsyncPolicy, Op, Wal, WalOptions, WalRecord};
use vitrine_shard::ShardConfig;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 100_000)]
    items: usize,
    #[arg(long, default_value_t = 384)]
    dimension: usize,
    /// Items per logged upsert (a bulk load's batch size).
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Centres the vectors are drawn around; 0: uniform random vectors.
    #[arg(long, default_value_t = 1000)]
    clusters: usize,
    /// Spread around a centre, relative to the centre's length.
    #[arg(long, default_value_t = 0.6)]
    spread: f32,
    /// Concurrent writers in the fsync-policy comparison.
    #[arg(long, default_value_t = 8)]
    writers: usize,
    /// Seconds per policy in that comparison.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
}

fn unit(mut v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
    v
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let random = |rng: &mut rand::rngs::StdRng| -> Vec<f32> {
        unit((0..args.dimension).map(|_| rng.random_range(-1.0f32..1.0)).collect())
    };
    let centres: Vec<Vec<f32>> = (0..args.clusters).map(|_| random(&mut rng)).collect();
    let written = Instant::now();
    {
        let (mut wal, _) = Wal::open(dir.path(), 0, WalOptions::new(FsyncPolicy::Never))?;
        for start in (0..args.items).step_by(args.batch) {
            let items = (start..(start + args.batch).min(args.items))
                .map(|i| {
                    let v = match centres.len() {
                        0 => random(&mut rng),
                        n => {
                            let c = &centres[rng.random_range(0..n)];
                            let noise = random(&mut rng);
                            unit(c.iter().zip(&noise).map(|(a, b)| a + args.spread * b).collect())
                        }
                    };
                    pb::Item {
                        id: format!("item-{i}"),
                        title: format!("product number {i}"),
                        vector: Some(pb::Vector { values: v }),
                        ..Default::default()
                    }
                })
                .collect();
            let record = WalRecord { op: Some(Op::Upsert(pb::ShardUpsertRequest { items, ..Default::default() })) };
            wal.append(&record)?.wait_durable()?;
        }
        wal.sync()?;
    }
    eprintln!("wrote {} items to the WAL in {:.1} s", args.items, written.elapsed().as_secs_f64());
    let config = ShardConfig::parse_from([
        "vitrine-shard",
        "--no-model",
        "--dimension",
        &args.dimension.to_string(),
        "--snapshot-wal-bytes",
        "0",
        "--data-dir",
        &dir.path().display().to_string(),
    ]);
    let t = Instant::now();
    let state = vitrine_shard::open(&config)?;
    let replay_s = t.elapsed().as_secs_f64();
    assert_eq!(state.catalog().len(), args.items);
    let t = Instant::now();
    let snap = state.snapshot()?;
    let snapshot_s = t.elapsed().as_secs_f64();
    drop(state);
    let t = Instant::now();
    let state = vitrine_shard::open(&config)?;
    let load_s = t.elapsed().as_secs_f64();
    assert_eq!(state.catalog().len(), args.items);
    let wal_bytes: u64 = std::fs::read_dir(dir.path())?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("wal-"))
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum();
    println!(
        "items {} dim {}: start-up by WAL replay {replay_s:.2} s; snapshot write {snapshot_s:.2} s \
         ({} MB); start-up from the snapshot {load_s:.2} s ({:.1}x faster); WAL left {wal_bytes} bytes",
        args.items,
        args.dimension,
        snap.manifest.bytes / 1_000_000,
        replay_s / load_s
    );
    let record = {
        let items = (0..20)
            .map(|i| pb::Item {
                id: format!("w-{i}"),
                title: "an item".into(),
                vector: Some(pb::Vector { values: random(&mut rng) }),
                ..Default::default()
            })
            .collect();
        WalRecord { op: Some(Op::Upsert(pb::ShardUpsertRequest { items, ..Default::default() })) }
    };
    for fsync in [FsyncPolicy::Always, FsyncPolicy::Group, FsyncPolicy::Never] {
        let dir = tempfile::tempdir()?;
        let (wal, _) = Wal::open(dir.path(), 0, WalOptions::new(fsync))?;
        let wal = parking_lot::Mutex::new(wal);
        let until = Instant::now() + std::time::Duration::from_secs_f64(args.seconds);
        let acked = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..args.writers {
                s.spawn(|| {
                    while Instant::now() < until {
                        // As the shard does: append under the lock, wait for durability outside it.
                        let appended = wal.lock().append(&record).expect("append");
                        appended.wait_durable().expect("durable");
                        acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                });
            }
        });
        let n = acked.into_inner();
        println!(
            "fsync {fsync:?}: {:.0} acknowledged writes/s ({} writers, 20 items each)",
            n as f64 / args.seconds,
            args.writers
        );
    }
    Ok(())
}
