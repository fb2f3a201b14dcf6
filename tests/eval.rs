//! `vitrine eval` end to end: it starts its own cluster, fits signals on the
//! training split, loads the catalogue with real title embeddings and replays
//! users through the gRPC `Recommend` API.
//!
//! On a generated data set with a hidden "what comes next" structure, the
//! full configuration must beat popularity by far, and a run with shuffled
//! targets must fall to chance. With `../shared/data/amazon-beauty` present,
//! a seeded subset of real users must clearly beat popularity too.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use vitrine_integration_tests::{bin_dir, free_port, models, shared_data};

/// Runs `vitrine eval` and returns its JSON report.
fn eval(data: &Path, extra: &[&str]) -> Value {
    let (model_dir, ort) = models();
    let out = tempfile::NamedTempFile::new().expect("temp file");
    let mut last_err = String::new();
    // The local cluster needs port, port + 10 and port + 11; retry on a clash.
    for _ in 0..3 {
        let port = free_port().to_string();
        let mut cmd = Command::new(bin_dir().join("vitrine"));
        cmd.args(["eval", "--data"])
            .arg(data)
            .args(["--port", &port, "--model-dir"])
            .arg(&model_dir)
            .arg("--ort-lib")
            .arg(&ort)
            .arg("--json-out")
            .arg(out.path())
            .args(extra);
        let o = cmd.output().expect("running vitrine eval");
        if o.status.success() {
            let text = std::fs::read_to_string(out.path()).expect("reading the report");
            return serde_json::from_str(&text).expect("report is JSON");
        }
        last_err = String::from_utf8_lossy(&o.stderr).to_string();
        if !last_err.contains("in use") {
            break;
        }
    }
    panic!("vitrine eval failed:\n{last_err}");
}

fn metric(report: &Value, config: &str, protocol: &str, name: &str) -> f64 {
    report["results"]
        .as_array()
        .expect("results")
        .iter()
        .find(|r| r["config"] == config && r["protocol"] == protocol)
        .and_then(|r| r["metrics"][name].as_f64())
        .unwrap_or_else(|| panic!("no {name} for {config}/{protocol} in {report}"))
}

/// 400 products in 40 lines of 10; each shopper walks a hidden successor
/// chain through the catalogue (next item with probability 0.8, otherwise a
/// random one), so "what was picked next" is learnable and popularity is not.
fn generate(dir: &Path) {
    let mut rng = StdRng::seed_from_u64(11);
    let kinds = ["serum", "shampoo", "lipstick", "mascara", "sunscreen", "toner", "cleanser", "perfume"];
    let brands = ["Aurelle", "Marisol", "Quillwave", "Northpeak", "Emberstone"];
    let n = 400;
    let mut items = String::from("item_id\tasin\ttitle\n");
    for i in 1..=n {
        let kind = kinds[(i / 10) % kinds.len()];
        let brand = brands[(i / 10) % brands.len()];
        writeln!(items, "{i}\tA{i:05}\t{brand} {kind} no. {} for line {}", i % 10, i / 10).unwrap();
    }
    // A fixed random permutation as the successor relation.
    let mut order: Vec<usize> = (1..=n).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.random_range(0..=i));
    }
    let mut next = vec![0usize; n + 1];
    for w in order.windows(2) {
        next[w[0]] = w[1];
    }
    next[order[n - 1]] = order[0];
    let mut seqs = String::new();
    for u in 1..=1500 {
        let len = rng.random_range(5..12);
        let mut cur = rng.random_range(1..=n);
        let mut s = vec![cur];
        while s.len() < len {
            cur = if rng.random::<f64>() < 0.8 { next[cur] } else { rng.random_range(1..=n) };
            if !s.contains(&cur) {
                s.push(cur);
            }
        }
        let line: Vec<String> = s.iter().map(|x| x.to_string()).collect();
        writeln!(seqs, "{u} {}", line.join(" ")).unwrap();
    }
    std::fs::write(dir.join("items.tsv"), items).unwrap();
    std::fs::write(dir.join("sequences.txt"), seqs).unwrap();
}

#[test]
fn eval_learns_structure_and_shuffled_targets_fall_to_chance() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path());
    let report = eval(dir.path(), &["--users", "400", "--skip-cold"]);
    let full = metric(&report, "full", "full-ranking", "HR@10");
    let popular = metric(&report, "popularity", "full-ranking", "HR@10");
    let behaviour = metric(&report, "behaviour-only", "full-ranking", "HR@10");
    let sampled = metric(&report, "full", "sampled-99", "HR@10");
    eprintln!(
        "generated: full {full:.3}, behaviour-only {behaviour:.3}, popularity {popular:.3}, sampled {sampled:.3}"
    );
    assert!(full > 0.5, "the successor structure should be found: HR@10 {full}");
    assert!(full > 5.0 * popular.max(0.01), "full {full} vs popularity {popular}");
    assert!(sampled > 0.5, "sampled protocol: HR@10 {sampled}");

    // Shuffled targets: chance is 10/400 = 0.025; popularity is flat here.
    let shuffled =
        eval(dir.path(), &["--users", "400", "--skip-cold", "--skip-sampled", "--skip-ablation", "--shuffle-targets"]);
    let s = metric(&shuffled, "full", "full-ranking", "HR@10");
    eprintln!("shuffled targets: HR@10 {s:.3}");
    assert!(s < 0.08, "shuffled targets must fall to chance (0.025), got {s}");
}

#[test]
fn eval_on_real_beauty_users_beats_popularity() {
    let Some(data) = shared_data().map(|d| d.join("amazon-beauty")).filter(|d| d.join("sequences.txt").is_file())
    else {
        eprintln!("../shared/data/amazon-beauty not found: skipped");
        return;
    };
    let report = eval(&data, &["--users", "2000", "--skip-sampled"]);
    let full = metric(&report, "full", "full-ranking", "HR@10");
    let popular = metric(&report, "popularity", "full-ranking", "HR@10");
    let cold_text = metric(&report, "text-only", "cold-start", "HR@10");
    let cold_pop = metric(&report, "popularity", "cold-start", "HR@10");
    eprintln!("beauty (2000 users): full {full:.4}, popularity {popular:.4}; cold text {cold_text:.4} vs popularity {cold_pop:.4}");
    assert!(full > 3.0 * popular, "full {full} vs popularity {popular}");
    assert!(cold_text > cold_pop, "content must carry cold items: {cold_text} vs {cold_pop}");
}

#[test]
fn train_writes_signals_for_every_item() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path());
    let out = dir.path().join("signals.jsonl");
    let o = Command::new(bin_dir().join("vitrine"))
        .args(["train", "--data"])
        .arg(dir.path())
        .arg("--out")
        .arg(&out)
        .output()
        .expect("running vitrine train");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(&out).unwrap();
    let records: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    assert_eq!(records.len(), 400, "one record per item, so re-training clears stale signals");
    let with_neighbours = records.iter().filter(|r| r["neighbours"].as_array().is_some_and(|n| !n.is_empty())).count();
    assert!(with_neighbours > 390, "{with_neighbours} of 400 items have neighbours");
    for r in &records {
        let p = r["popularity"].as_f64().expect("popularity");
        assert!((0.0..=1.0).contains(&p), "{r}");
    }
    // Shards and the router rely on lists being strongest first.
    let first = &records[0]["neighbours"];
    let weights: Vec<f64> = first.as_array().unwrap().iter().map(|n| n["weight"].as_f64().unwrap()).collect();
    assert!(weights.windows(2).all(|w| w[0] >= w[1]), "neighbours strongest first: {weights:?}");
}
