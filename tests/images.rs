//! The image path and multimodal fusion: the test ViT (built by
//! `scripts/fetch-models.sh` with `scripts/make-test-vit.py`) against the
//! vectors Python onnxruntime gives on the real product photos, dynamic
//! batching of image queries, and a cluster whose shards fuse MiniLM text
//! vectors with ViT image vectors: image, text and combined queries, stored
//! per-modality vectors, precomputed ones, bad images, and fusion weights
//! changed across restarts without re-embedding.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use image::{ImageEncoder, Rgb, RgbImage};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::Code;
use vitrine_integration_tests::{connect, shared_data, workspace_root, Cluster, Options};
use vitrine_proto::pb::{self, search_request::Query};
use vitrine_shard::batcher::{Batcher, BatcherConfig};
use vitrine_shard::embed::{default_model_paths, Device, RuntimeConfig};
use vitrine_shard::image_embed::{default_test_model_dir, ImageEmbedder, ImageModelConfig};

const TEXT_DIM: usize = 384;
const IMAGE_DIM: usize = 192;
/// Pixels the test images may have (the default limit).
const MAX_PIXELS: u64 = 40_000_000;

fn test_vit_dir() -> PathBuf {
    let dir = default_test_model_dir(&workspace_root());
    assert!(
        dir.join("model.onnx").is_file() && dir.join("preprocess.json").is_file(),
        "the image test model is missing in {}: run `bash scripts/fetch-models.sh` (scripts/test.sh does)",
        dir.display()
    );
    dir
}

fn image_model(max_batch: usize) -> Arc<ImageEmbedder> {
    let (_, lib) = default_model_paths(&workspace_root());
    ImageEmbedder::load(&ImageModelConfig {
        model_dir: test_vit_dir(),
        onnx_file: None,
        name: None,
        runtime: RuntimeConfig { ort_library: lib, sessions: 1, intra_threads: 1, device: Device::Cpu },
        max_batch,
    })
    .expect("load the test ViT")
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
}

/// A smooth picture: a gradient between two colours in a random direction
/// with a few rectangles on it, different for every seed.
fn picture(seed: u64, w: u32, h: u32) -> RgbImage {
    let mut rng = StdRng::seed_from_u64(seed);
    let (a, b): ([u8; 3], [u8; 3]) = (rng.random(), rng.random());
    let angle: f32 = rng.random_range(0.0..std::f32::consts::TAU);
    let rects: Vec<(u32, u32, u32, u32, [u8; 3])> = (0..4)
        .map(|_| {
            let (x, y) = (rng.random_range(0..w), rng.random_range(0..h));
            (x, y, rng.random_range(w / 8..w / 2), rng.random_range(h / 8..h / 2), rng.random())
        })
        .collect();
    RgbImage::from_fn(w, h, |x, y| {
        if let Some(r) = rects.iter().find(|r| x >= r.0 && x < r.0 + r.2 && y >= r.1 && y < r.1 + r.3) {
            return Rgb(r.4);
        }
        let t = ((x as f32 / w as f32) * angle.cos() + (y as f32 / h as f32) * angle.sin()).clamp(0.0, 1.0);
        Rgb(std::array::from_fn(|c| (f32::from(a[c]) * (1.0 - t) + f32::from(b[c]) * t) as u8))
    })
}

fn png(img: &RgbImage, exif: Option<Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = image::codecs::png::PngEncoder::new(&mut out);
    if let Some(exif) = exif {
        enc.set_exif_metadata(exif).expect("exif");
    }
    enc.write_image(img.as_raw(), img.width(), img.height(), image::ExtendedColorType::Rgb8).expect("png");
    out
}

fn jpeg(img: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .write_image(img.as_raw(), img.width(), img.height(), image::ExtendedColorType::Rgb8)
        .expect("jpeg");
    out
}

/// A little-endian TIFF block with one Orientation entry, as cameras write.
fn exif_orientation(value: u16) -> Vec<u8> {
    let mut b = b"II*\0".to_vec();
    b.extend(8u32.to_le_bytes());
    b.extend(1u16.to_le_bytes());
    b.extend(0x0112u16.to_le_bytes());
    b.extend(3u16.to_le_bytes());
    b.extend(1u32.to_le_bytes());
    b.extend(value.to_le_bytes());
    b.extend([0, 0]);
    b.extend(0u32.to_le_bytes());
    b
}

/// A float32 `.npy` file (what numpy's `save` writes): shape and values.
fn read_npy_f32(path: &std::path::Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&bytes[..6], b"\x93NUMPY", "not an npy file");
    let (header_len, start) = match bytes[6] {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        _ => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
    };
    let header = std::str::from_utf8(&bytes[start..start + header_len]).expect("header");
    assert!(header.contains("'descr': '<f4'") && header.contains("'fortran_order': False"), "{header}");
    let shape_text = header.split("'shape': (").nth(1).and_then(|s| s.split(')').next()).expect("shape");
    let shape: Vec<usize> =
        shape_text.split(',').filter(|s| !s.trim().is_empty()).map(|s| s.trim().parse().unwrap()).collect();
    let values: Vec<f32> =
        bytes[start + header_len..].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    assert_eq!(values.len(), shape.iter().product::<usize>());
    (shape, values)
}

/// The Rust path (image crate decode and Triangle resize, ONNX Runtime via
/// `ort`) against Pillow + Python onnxruntime on the first 20 catalogue
/// photos (`tests/data/test-vit/`, written by scripts/test_vit_reference.py).
/// JPEG decoders and the two resize implementations differ by a grey level
/// here and there, so the comparison is by cosine.
#[test]
fn test_vit_matches_python_onnxruntime_on_real_photos() {
    let Some(data) = shared_data() else {
        eprintln!("../shared/data not found: skipping the parity check on real photos");
        return;
    };
    let model = image_model(8);
    let refs = workspace_root().join("tests/data/test-vit");
    let (shape, reference) = read_npy_f32(&refs.join("reference.npy"));
    assert_eq!(shape, [20, IMAGE_DIM]);
    let names = std::fs::read_to_string(refs.join("reference.ids.txt")).expect("ids");
    let names: Vec<&str> = names.lines().collect();
    assert_eq!(names.len(), 20);
    let pixels: Vec<Vec<f32>> = names
        .iter()
        .map(|n| {
            let bytes = std::fs::read(data.join("fashion-products/images").join(n)).expect("photo");
            model.pixels(&bytes, MAX_PIXELS).unwrap_or_else(|e| panic!("{n}: {e}"))
        })
        .collect();
    let refs: Vec<&[f32]> = pixels.iter().map(Vec::as_slice).collect();
    let got = model.embed(&refs).expect("embed");
    let mut worst = 1f32;
    for (i, v) in got.iter().enumerate() {
        let want = &reference[i * IMAGE_DIM..(i + 1) * IMAGE_DIM];
        worst = worst.min(dot(v, want));
    }
    eprintln!("worst cosine to the Python reference over 20 photos: {worst:.6}");
    assert!(worst >= 0.9999, "worst cosine {worst}");
    // And the photos are not one vector: their mean pairwise cosine is far
    // from 1 (0.75 over 400 photos in docs/IMAGE-MODELS.md).
    let pairs: Vec<f32> =
        (0..20).flat_map(|i| (0..i).map(move |j| (i, j))).map(|(i, j)| dot(&got[i], &got[j])).collect();
    let mean = pairs.iter().sum::<f32>() / pairs.len() as f32;
    assert!(mean < 0.95, "mean pairwise cosine {mean}");
}

/// A batch gives the vectors single calls give, and concurrent image
/// queries through the batcher are batched and each get their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_batches_equal_single_images() {
    let model = image_model(8);
    let pixels: Vec<Vec<f32>> =
        (0..10).map(|s| model.pixels(&png(&picture(s, 200 + 10 * s as u32, 180), None), MAX_PIXELS).unwrap()).collect();
    let singles: Vec<Vec<f32>> = pixels.iter().map(|p| model.embed(&[p.as_slice()]).unwrap().remove(0)).collect();
    let refs: Vec<&[f32]> = pixels.iter().map(Vec::as_slice).collect();
    let batch = model.embed(&refs).unwrap();
    for (s, b) in singles.iter().zip(&batch) {
        assert!(max_diff(s, b) < 1e-5, "batch differs from single by {}", max_diff(s, b));
        assert!((dot(s, s) - 1.0).abs() < 1e-5);
    }
    let config = BatcherConfig { max_batch: 8, max_delay: Duration::from_millis(20), ..BatcherConfig::default() };
    let batcher = Arc::new(Batcher::start(Arc::clone(&model), config).unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    let calls: Vec<_> = pixels
        .iter()
        .cloned()
        .map(|p| {
            let b = Arc::clone(&batcher);
            tokio::spawn(async move { b.embed(p, deadline).await })
        })
        .collect();
    for (call, want) in calls.into_iter().zip(&singles) {
        let got = call.await.unwrap().unwrap();
        assert!(max_diff(&got, want) < 1e-5, "a batched query got another image's vector");
    }
    let stats = &batcher.stats;
    assert_eq!(stats.inputs.load(std::sync::atomic::Ordering::Relaxed), 10);
    assert!(stats.batches.load(std::sync::atomic::Ordering::Relaxed) < 10, "nothing was batched");
}

/// The shard arguments (by environment, so that a restart can drop them)
/// for the test ViT.
fn image_env() -> Vec<(String, String)> {
    vec![("VITRINE_SHARD_IMAGE_MODEL_DIR".into(), test_vit_dir().display().to_string())]
}

const TITLES: [&str; 10] = [
    "Red cotton scarf",
    "Men's black leather Chelsea boots",
    "Kids rain jacket with hood, yellow",
    "Women's running tights with side pocket",
    "Linen duvet cover, king size, sage",
    "Analog dive watch 200 m",
    "Striped beach towel",
    "Wool beanie, charcoal",
    "Canvas tote bag",
    "Silk tie, navy dots",
];

/// Items 0..8 have a title and a JPEG, 8..10 only a PNG, 10..12 only a title.
fn catalogue() -> Vec<pb::Item> {
    (0..12)
        .map(|i| pb::Item {
            id: format!("p{i}"),
            title: match i {
                0..8 => TITLES[i].to_string(),
                8..10 => String::new(),
                _ => TITLES[i - 2].to_string(),
            },
            image: match i {
                0..8 => jpeg(&picture(i as u64, 240, 200)),
                8..10 => png(&picture(i as u64, 200, 240), None),
                _ => Vec::new(),
            },
            attributes: Some(pb::Attributes { category: "test".into(), ..Default::default() }),
            ..Default::default()
        })
        .collect()
}

async fn get_all(
    c: &mut pb::vitrine_client::VitrineClient<tonic::transport::Channel>,
    ids: &[String],
) -> Vec<pb::Item> {
    let r = c
        .get_items(pb::GetItemsRequest { ids: ids.to_vec(), with_vectors: true, ..Default::default() })
        .await
        .expect("get items")
        .into_inner();
    assert!(r.missing.is_empty(), "missing {:?}", r.missing);
    let mut items = r.items;
    items.sort_by_key(|it| ids.iter().position(|i| *i == it.id));
    items
}

fn values(v: &Option<pb::Vector>) -> &[f32] {
    v.as_ref().map_or(&[], |v| v.values.as_slice())
}

fn search(query: Query, k: u32) -> pb::SearchRequest {
    pb::SearchRequest { query: Some(query), k, ..Default::default() }
}

#[test]
fn multimodal_cluster_serves_image_text_and_combined_queries() {
    let mut opts = Options::shards(2);
    opts.shard_env = image_env();
    let cluster = Cluster::start(opts);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let mut c = connect(&cluster.url()).await.expect("connect");
        let info = c.cluster_info(pb::ClusterInfoRequest {}).await.unwrap().into_inner();
        for s in &info.shards {
            assert_eq!(s.dimension as usize, TEXT_DIM + IMAGE_DIM, "{s:?}");
            assert_eq!(s.image_model, "test-vit", "{s:?}");
            assert_eq!(s.fusion, "concat text=0.500 image=0.500");
            assert_eq!(s.model_set, "all-MiniLM-L6-v2@1 + test-vit@1");
        }

        let items = catalogue();
        let ids: Vec<String> = items.iter().map(|it| it.id.clone()).collect();
        let r = c.upsert_items(pb::UpsertItemsRequest { items: items.clone(), ..Default::default() }).await;
        let r = r.expect("upsert").into_inner();
        assert_eq!((r.upserted, r.embedded), (12, 12));

        // Stored vectors: the fused one is [√½·t, √½·i], renormalised to the
        // modality an item has when it lacks the other.
        let stored = get_all(&mut c, &ids).await;
        let half = 0.5f32.sqrt();
        for (i, it) in stored.iter().enumerate() {
            let (v, t, im) = (values(&it.vector), values(&it.text_vector), values(&it.image_vector));
            assert_eq!(v.len(), TEXT_DIM + IMAGE_DIM, "{}", it.id);
            assert!((dot(v, v) - 1.0).abs() < 1e-5, "{}: fused vector is not unit length", it.id);
            let (want_t, want_i): (Vec<f32>, Vec<f32>) = match i {
                0..8 => (t.iter().map(|x| half * x).collect(), im.iter().map(|x| half * x).collect()),
                8..10 => (vec![0.0; TEXT_DIM], im.to_vec()),
                _ => (t.to_vec(), vec![0.0; IMAGE_DIM]),
            };
            assert_eq!(
                (t.is_empty(), im.is_empty()),
                ((8..10).contains(&i), i >= 10),
                "{}: per-modality vectors",
                it.id
            );
            assert!(max_diff(&v[..TEXT_DIM], &want_t) < 1e-5, "{}: text part", it.id);
            assert!(max_diff(&v[TEXT_DIM..], &want_i) < 1e-5, "{}: image part", it.id);
            assert!(it.image.is_empty(), "image bytes are never returned");
        }

        // By image: each item's own picture finds it first, scored by the
        // image cosine alone (1), whether or not the item has a title.
        for (i, it) in items.iter().enumerate().take(10) {
            let hits =
                c.search(search(Query::Image(it.image.clone()), 3)).await.expect("image search").into_inner().hits;
            assert_eq!(hits[0].id, it.id, "image query {i}: {hits:?}");
            assert!((hits[0].score - 1.0).abs() < 1e-4, "image query {i}: score {}", hits[0].score);
            assert!(hits[1].score < hits[0].score - 0.01, "image query {i}: a different picture ties: {hits:?}");
            assert!(hits.iter().all(|h| !["p10", "p11"].contains(&h.id.as_str()) || h.score == 0.0), "{hits:?}");
        }
        // Text and image together: cosine 1 with the item made of both.
        for it in items.iter().take(8) {
            let q = Query::Multimodal(pb::MultimodalQuery { text: it.title.clone(), image: it.image.clone() });
            let hits = c.search(search(q, 2)).await.expect("multimodal search").into_inner().hits;
            assert_eq!(hits[0].id, it.id);
            assert!((hits[0].score - 1.0).abs() < 1e-4, "{}: score {}", it.id, hits[0].score);
        }
        // Text alone still finds the titled items.
        let hits = c.search(search(Query::Text("Silk tie, navy dots".into()), 1)).await.unwrap().into_inner().hits;
        assert_eq!(hits[0].id, "p11", "{hits:?}");
        assert!((hits[0].score - 1.0).abs() < 1e-4, "scored by the text cosine");

        // EXIF: the picture of p8 stored turned a quarter (orientation 6:
        // "rotate 90° clockwise to display") is p8 once oriented.
        let display = picture(8, 200, 240);
        let stored_sideways = image::imageops::rotate270(&display);
        let tagged = png(&stored_sideways, Some(exif_orientation(6)));
        let hits = c.search(search(Query::Image(tagged), 1)).await.unwrap().into_inner().hits;
        assert_eq!(hits[0].id, "p8");
        assert!((hits[0].score - 1.0).abs() < 1e-4, "oriented picture: score {}", hits[0].score);
        let untagged = png(&stored_sideways, None);
        let hits = c.search(search(Query::Image(untagged), 1)).await.unwrap().into_inner().hits;
        assert!(hits[0].score < 0.999, "without its tag the sideways picture is another picture: {hits:?}");

        // Precomputed per-modality vectors are fused like embedded ones.
        let p0 = &stored[0];
        let copy = pb::Item {
            id: "copy-of-p0".into(),
            text_vector: p0.text_vector.clone(),
            image_vector: p0.image_vector.clone(),
            ..Default::default()
        };
        let r = c.upsert_items(pb::UpsertItemsRequest { items: vec![copy], ..Default::default() }).await.unwrap();
        assert_eq!(r.into_inner().embedded, 0, "nothing to embed");
        let got = get_all(&mut c, &["copy-of-p0".to_string()]).await;
        assert!(max_diff(values(&got[0].vector), values(&p0.vector)) < 1e-6);

        // Bad input: a precise status, and nothing of the batch is stored.
        let bad = |id: &str, f: &dyn Fn(&mut pb::Item)| {
            let mut it = pb::Item { id: id.into(), title: "Bad".into(), ..Default::default() };
            f(&mut it);
            pb::UpsertItemsRequest { items: vec![items[0].clone(), it], ..Default::default() }
        };
        // (A truncated JPEG decodes, grey below the cut, as in browsers; a
        // PNG's compressed stream cannot end early.)
        let mut truncated = png(&picture(99, 240, 200), None);
        truncated.truncate(truncated.len() / 2);
        let cases: Vec<(pb::UpsertItemsRequest, &str)> = vec![
            (bad("b1", &|it| it.image = truncated.clone()), "\"b1\": image is a corrupt"),
            (bad("b2", &|it| it.text_vector = Some(pb::Vector { values: vec![1.0; 10] })), "text model gives 384"),
            (
                bad("b3", &|it| {
                    it.vector = Some(pb::Vector { values: vec![1.0; TEXT_DIM + IMAGE_DIM] });
                    it.image_vector = Some(pb::Vector { values: vec![1.0; IMAGE_DIM] });
                }),
                "both a vector and per-modality vectors",
            ),
            (bad("b4", &|it| it.image_vector = Some(pb::Vector { values: vec![f32::NAN; IMAGE_DIM] })), "non-finite"),
        ];
        for (req, want) in cases {
            let id = req.items[1].id.clone();
            let err = c.upsert_items(req).await.expect_err("bad item refused");
            assert_eq!(err.code(), Code::InvalidArgument, "{id}: {err:?}");
            assert!(err.message().contains(want), "{id}: {:?} lacks {want:?}", err.message());
            let r = c
                .get_items(pb::GetItemsRequest { ids: vec![id.clone()], with_vectors: false, ..Default::default() })
                .await
                .unwrap();
            assert_eq!(r.into_inner().missing, vec![id]);
        }
        for (query, want) in [
            (Query::Image(b"GIF89a not really".to_vec()), "send JPEG, PNG or WebP"),
            (Query::Image(truncated.clone()), "corrupt"),
            (Query::Multimodal(pb::MultimodalQuery { text: "scarf".into(), image: Vec::new() }), "no image"),
            (
                Query::Multimodal(pb::MultimodalQuery { text: " ".into(), image: items[0].image.clone() }),
                "text is empty",
            ),
        ] {
            let err = c.search(search(query, 1)).await.expect_err("bad query refused");
            assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
            assert!(err.message().contains(want), "{:?} lacks {want:?}", err.message());
        }
        let info = c.cluster_info(pb::ClusterInfoRequest {}).await.unwrap().into_inner();
        assert_eq!(info.shards.iter().map(|s| s.items).sum::<u64>(), 13, "12 items and the copy");
    });
}

/// Fusion weights are a start-up setting: restarting with new ones re-fuses
/// the stored per-modality vectors, without running a model; dropping the
/// image model leaves the text vectors; adding it back restores the fusion.
#[test]
fn fusion_weights_change_across_restarts_without_re_embedding() {
    let mut opts = Options::shards(1).with_metrics();
    opts.shard_env = image_env();
    let mut cluster = Cluster::start(opts);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    // Only items with a title: an image-only item has no vector without the
    // image model (the shard would refuse to start, naming it).
    let items: Vec<pb::Item> = catalogue().into_iter().filter(|it| !it.title.is_empty()).collect();
    let ids: Vec<String> = items.iter().map(|it| it.id.clone()).collect();
    let before = rt.block_on(async {
        let mut c = connect(&cluster.url()).await.unwrap();
        c.upsert_items(pb::UpsertItemsRequest { items: items.clone(), ..Default::default() }).await.unwrap();
        get_all(&mut c, &ids).await
    });
    let embedded = |cluster: &Cluster| {
        let m = vitrine_integration_tests::scrape::scrape(&cluster.shard_metrics[0]);
        m.sum("vitrine_embed_requests_total", &[])
    };
    let restart = |cluster: &mut Cluster, rt: &tokio::runtime::Runtime| {
        cluster.kill_shard(0);
        cluster.restart_shard(0);
        cluster.wait_serving(1);
        rt.block_on(async {
            let mut c = connect(&cluster.url()).await.unwrap();
            get_all(&mut c, &ids).await
        })
    };

    // Text 3, image 1: [√¾·t, √¼·i] from the same stored t and i.
    cluster.add_shard_args(0, &["--text-weight", "3"]);
    let reweighted = restart(&mut cluster, &rt);
    assert_eq!(embedded(&cluster), 0.0, "re-fusing ran no model");
    for (b, a) in before.iter().zip(&reweighted) {
        assert_eq!((&b.text_vector, &b.image_vector), (&a.text_vector, &a.image_vector), "{}", b.id);
        let (t, im, v) = (values(&a.text_vector), values(&a.image_vector), values(&a.vector));
        let want: Vec<f32> = match im.is_empty() {
            false => t.iter().map(|x| 0.75f32.sqrt() * x).chain(im.iter().map(|x| 0.5 * x)).collect(),
            true => t.iter().copied().chain(std::iter::repeat_n(0.0, IMAGE_DIM)).collect(),
        };
        assert!(max_diff(v, &want) < 1e-5, "{}", a.id);
    }

    // Without the image model: the text vectors alone, 384-dimensional.
    cluster.set_shard_env(0, Vec::new());
    let text_only = restart(&mut cluster, &rt);
    for (b, a) in before.iter().zip(&text_only) {
        assert!(max_diff(values(&a.vector), values(&b.text_vector)) < 1e-6, "{}", a.id);
    }
    let hits = rt.block_on(async {
        let mut c = connect(&cluster.url()).await.unwrap();
        c.search(search(Query::Text(TITLES[3].into()), 1)).await.unwrap().into_inner().hits
    });
    assert_eq!(hits[0].id, "p3");

    // And back: the image vectors were kept all along.
    cluster.set_shard_env(0, image_env());
    let back = restart(&mut cluster, &rt);
    assert_eq!(embedded(&cluster), 0.0);
    for ((b, r), a) in before.iter().zip(&reweighted).zip(&back) {
        assert_eq!(values(&a.image_vector), values(&b.image_vector), "{}", a.id);
        assert!(max_diff(values(&a.vector), values(&r.vector)) < 1e-6, "{}", a.id);
    }
}

/// Vectors carry the versions of the models that made them: a shard refuses
/// to start over vectors another version made, and refuses a query vector
/// another model set embedded. A registry file declares the models.
#[test]
fn model_versions_are_tagged_and_checked() {
    let mut cluster = Cluster::start(Options::shards(1));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    // Titles only: this shard has no image model.
    let items: Vec<pb::Item> = catalogue()
        .into_iter()
        .filter(|it| !it.title.is_empty())
        .map(|it| pb::Item { image: Vec::new(), ..it })
        .collect();
    rt.block_on(async {
        let mut c = connect(&cluster.url()).await.unwrap();
        c.upsert_items(pb::UpsertItemsRequest { items: items.clone(), ..Default::default() }).await.unwrap();
        let info = c.cluster_info(pb::ClusterInfoRequest {}).await.unwrap().into_inner();
        assert_eq!(info.shards[0].model_set, "all-MiniLM-L6-v2@1");
        // A query embedded by another model set is refused, not compared.
        let mut shard =
            pb::shard_client::ShardClient::connect(format!("http://{}", cluster.shard_addrs[0])).await.unwrap();
        let embedded = shard
            .embed(pb::EmbedRequest { input: Some(pb::embed_request::Input::Text("wool beanie".into())) })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(embedded.model, "all-MiniLM-L6-v2@1");
        let req = |model: &str| pb::ShardSearchRequest {
            vector: embedded.vector.clone(),
            k: 3,
            model: model.into(),
            ..Default::default()
        };
        let hits = shard.search(req("all-MiniLM-L6-v2@1")).await.expect("same set").into_inner().hits;
        assert_eq!(hits[0].id, "p7", "{hits:?}");
        let err = shard.search(req("all-MiniLM-L6-v2@2")).await.expect_err("another set");
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert!(err.message().contains("embedded with all-MiniLM-L6-v2@2"), "{}", err.message());
    });

    // Version 2 of the text model over version 1's vectors: refused, naming both.
    cluster.kill_shard(0);
    cluster.add_shard_args(0, &["--model-version", "2"]);
    cluster.restart_shard(0);
    let status = cluster.wait_shard_exit(0, Duration::from_secs(60)).expect("the shard stops");
    assert!(!status.success());
    let log = cluster.shard_log(0);
    assert!(
        log.contains("text vectors were made by all-MiniLM-L6-v2@1, and this shard serves all-MiniLM-L6-v2@2"),
        "{log}"
    );

    // A registry declaring both versions and serving version 1 (it takes
    // precedence over the flags) serves the stored vectors again.
    let dir = tempfile::tempdir().unwrap();
    let (model_dir, _) = default_model_paths(&workspace_root());
    let registry = serde_json::json!({
        "models": [
            {"name": "all-MiniLM-L6-v2", "version": "1", "kind": "text", "dir": model_dir, "dimension": 384},
            {"name": "all-MiniLM-L6-v2", "version": "2", "kind": "text", "dir": model_dir, "pooling": "cls"},
            {"name": "test-vit", "version": "1", "kind": "image", "dir": test_vit_dir(), "dimension": 192}
        ],
        "serve": {"text": "all-MiniLM-L6-v2@1"}
    });
    let path = dir.path().join("models.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&registry).unwrap()).unwrap();
    cluster.add_shard_args(0, &["--models", path.to_str().unwrap()]);
    cluster.restart_shard(0);
    cluster.wait_serving(1);
    rt.block_on(async {
        let mut c = connect(&cluster.url()).await.unwrap();
        let info = c.cluster_info(pb::ClusterInfoRequest {}).await.unwrap().into_inner();
        assert_eq!(info.shards[0].model_set, "all-MiniLM-L6-v2@1");
        assert_eq!(info.shards[0].items, items.len() as u64);
        let hits = c.search(search(Query::Text("Wool beanie, charcoal".into()), 1)).await.unwrap().into_inner().hits;
        assert_eq!(hits[0].id, "p7");
    });
}
