//! The text model through the shard's embedder: real vectors that behave.

use vitrine_integration_tests::workspace_root;
use vitrine_shard::embed::{default_model_paths, Device, EmbedError, Pooling, TextEmbedder, TextModelConfig};

fn embedder() -> std::sync::Arc<TextEmbedder> {
    let (dir, lib) = default_model_paths(&workspace_root());
    TextEmbedder::load(&TextModelConfig::new(dir, lib)).expect("run scripts/fetch-models.sh first")
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn paraphrases_score_higher_than_unrelated_titles() {
    let e = embedder();
    assert_eq!(e.dimension(), 384);
    let pairs = [
        ("Nike Men Black Running Shoes", "Black running sneakers for men by Nike", "Titan Women Gold Analog Watch"),
        ("Women Blue Denim Jeans Slim Fit", "Slim-fit blue jeans for women", "Stainless steel chef's knife 8 inch"),
        (
            "Cast Iron Skillet 10 inch Pre-Seasoned",
            "Pre-seasoned 10\" cast-iron frying pan",
            "Kids pink cotton t-shirt",
        ),
        (
            "Wireless Noise Cancelling Headphones",
            "Bluetooth over-ear headphones with active noise cancellation",
            "Leather hiking boots waterproof",
        ),
        (
            "Vitamin C Brightening Face Serum",
            "Facial serum with vitamin C for brighter skin",
            "Men's wool winter coat charcoal",
        ),
    ];
    for (a, para, other) in pairs {
        let v = e.embed(&[a, para, other]).unwrap();
        let (p, u) = (dot(&v[0], &v[1]), dot(&v[0], &v[2]));
        assert!(p > u + 0.2, "{a:?}: paraphrase {p:.3} vs unrelated {u:.3}");
    }
}

#[test]
fn vectors_are_unit_length_deterministic_and_independent_of_batch_padding() {
    let e = embedder();
    let short = "Red cotton scarf";
    let long = "A very long product description about an insulated waterproof winter parka with a detachable hood, \
                many pockets, recycled down filling and reflective trims for visibility on dark evenings";
    let alone = e.embed(&[short]).unwrap().remove(0);
    let batched = e.embed(&[long, short, long]).unwrap();
    let norm: f32 = alone.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
    // Padding to the longest text of a batch must not change a short text's vector.
    let diff = alone.iter().zip(&batched[1]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(diff < 1e-4, "max difference {diff}");
    assert_eq!(e.embed(&[short]).unwrap()[0], alone, "same text, same vector");
}

#[test]
fn a_missing_library_or_model_is_an_error_not_a_panic() {
    let (dir, lib) = default_model_paths(&workspace_root());
    let err = TextEmbedder::load(&TextModelConfig::new(&dir, "/nonexistent/libonnxruntime.so")).unwrap_err();
    assert!(err.to_string().contains("ONNX Runtime library"), "{err}");
    let err = TextEmbedder::load(&TextModelConfig::new("/nonexistent-model-dir", &lib)).unwrap_err();
    assert!(err.to_string().contains("model.onnx"), "{err}");
}

/// The device is resolved against the runtime library: the CPU build has no
/// CUDA provider, so `cuda:0` is refused with the reason, and `auto` runs on
/// the CPU and says so.
#[test]
fn devices_resolve_against_the_runtime_library() {
    let (dir, lib) = default_model_paths(&workspace_root());
    let cfg = |device| TextModelConfig { device, ..TextModelConfig::new(&dir, &lib) };
    let err = TextEmbedder::load(&cfg(Device::Cuda(0))).unwrap_err();
    assert!(matches!(err, EmbedError::Device { device: Device::Cuda(0), .. }), "{err}");
    assert!(err.to_string().contains("no CUDA execution provider"), "{err}");
    for device in [Device::Auto, Device::Cpu] {
        let e = TextEmbedder::load(&cfg(device)).expect("CPU fallback");
        assert_eq!(e.execution_provider(), "cpu", "{device}");
    }
}

/// A shard process asked for a GPU the runtime cannot use stops at start-up
/// with the reason, before it binds its port.
#[test]
fn a_shard_without_cuda_refuses_cuda_devices() {
    let (dir, lib) = default_model_paths(&workspace_root());
    let data = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(vitrine_integration_tests::bin_dir().join("vitrine-shard"))
        .args(["--listen", "127.0.0.1:0", "--device", "cuda:0"])
        .arg("--model-dir")
        .arg(&dir)
        .arg("--ort-lib")
        .arg(&lib)
        .arg("--data-dir")
        .arg(data.path())
        .output()
        .expect("run vitrine-shard (cargo build --workspace --bins)");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("device cuda:0") && stderr.contains("no CUDA execution provider"), "{stderr}");
}

/// CLS pooling takes the first token: a different vector from the mean,
/// still unit length, and independent of the padding a batch adds.
#[test]
fn cls_pooling_takes_the_first_token() {
    let (dir, lib) = default_model_paths(&workspace_root());
    let cls =
        TextEmbedder::load(&TextModelConfig { pooling: Pooling::Cls, ..TextModelConfig::new(&dir, &lib) }).unwrap();
    let mean = embedder();
    let title = "Men's black leather Chelsea boots";
    let (c, m) = (&cls.embed(&[title]).unwrap()[0], &mean.embed(&[title]).unwrap()[0]);
    let norm = c.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
    let cos: f32 = c.iter().zip(m).map(|(a, b)| a * b).sum();
    assert!(cos < 0.999, "CLS and mean pooling gave the same vector (cosine {cos})");
    let batched = cls.embed(&[title, "A much longer title that makes the batch pad the short one a lot"]).unwrap();
    let diff = c.iter().zip(&batched[0]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(diff < 1e-4, "padding changed the CLS vector by {diff}");
}

mod batching {
    use std::time::{Duration, Instant};

    use vitrine_shard::batcher::{BatchError, Batcher, BatcherConfig};

    const TITLES: [&str; 12] = [
        "Red cotton scarf",
        "Men's black leather Chelsea boots",
        "Stainless steel insulated water bottle 750 ml",
        "Kids rain jacket with hood, yellow",
        "Wireless ergonomic mouse",
        "Organic green tea, 100 bags",
        "Women's running tights with side pocket",
        "Cast iron grill pan",
        "Noise cancelling earbuds",
        "Linen duvet cover, king size, sage",
        "Analog dive watch 200 m",
        "Bamboo cutting board set",
    ];

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_queries_are_batched_and_get_their_own_vectors() {
        let e = super::embedder();
        let direct = e.embed(&TITLES).unwrap();
        let config = BatcherConfig { max_batch: 8, max_delay: Duration::from_millis(20), ..BatcherConfig::default() };
        let b = std::sync::Arc::new(Batcher::start(e, config).unwrap());
        let deadline = Instant::now() + Duration::from_secs(30);
        // Spawn all first (collect), then wait: the queries must be in flight together.
        let calls: Vec<_> = TITLES
            .iter()
            .map(|t| {
                let b = std::sync::Arc::clone(&b);
                tokio::spawn(async move { b.embed(t.to_string(), deadline).await })
            })
            .collect();
        let got: Vec<Vec<f32>> = futures_join(calls.into_iter()).await;
        for (i, (g, d)) in got.iter().zip(&direct).enumerate() {
            let diff = g.iter().zip(d).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(diff < 1e-4, "{}: a batched query got another text's vector (diff {diff})", TITLES[i]);
        }
        let batches = b.stats.batches.load(std::sync::atomic::Ordering::Relaxed);
        let texts = b.stats.inputs.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(texts, 12);
        assert!(batches < 12, "12 concurrent queries ran as {batches} batches: nothing was batched");
    }

    async fn futures_join<I>(handles: I) -> Vec<Vec<f32>>
    where
        I: Iterator<Item = tokio::task::JoinHandle<Result<Vec<f32>, BatchError>>>,
    {
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.unwrap().unwrap());
        }
        out
    }

    #[tokio::test]
    async fn full_queues_and_expired_deadlines_are_refused() {
        let e = super::embedder();
        let b = Batcher::start(e.clone(), BatcherConfig { max_queue: 0, ..BatcherConfig::default() }).unwrap();
        let r = b.embed("red scarf".into(), Instant::now() + Duration::from_secs(5)).await;
        assert!(matches!(r, Err(BatchError::QueueFull(_))), "{r:?}");
        let b = Batcher::start(e, BatcherConfig::default()).unwrap();
        let r = b.embed("red scarf".into(), Instant::now()).await;
        assert!(matches!(r, Err(BatchError::DeadlineExpired(_))), "{r:?}");
        assert_eq!(b.stats.expired.load(std::sync::atomic::Ordering::Relaxed), 1);
    }
}
