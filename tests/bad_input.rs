//! Hostile and mistaken requests get a precise status and message, never a
//! panic, and never disturb what was already acknowledged.

use std::sync::{Arc, Mutex};

use anyhow::{ensure, Result};
use libtest_mimic::{Arguments, Trial};
use tonic::Code;
use vitrine_integration_tests::{connect, load, products, text_query, Cluster, Options};
use vitrine_proto::filter::build;
use vitrine_proto::pb::{self, search_request::Query};

struct Ctx {
    url: String,
    seed: Vec<pb::Item>,
    rt: tokio::runtime::Runtime,
    cluster: Mutex<Cluster>,
}

fn expect(r: Result<impl std::fmt::Debug, tonic::Status>, code: Code, needle: &str) -> Result<()> {
    match r {
        Ok(v) => anyhow::bail!("expected {code:?} ({needle}), got success: {v:?}"),
        Err(s) => {
            ensure!(s.code() == code, "expected {code:?}, got {:?}: {}", s.code(), s.message());
            ensure!(s.message().contains(needle), "message {:?} does not mention {needle:?}", s.message());
            Ok(())
        }
    }
}

fn item(id: &str, title: &str) -> pb::Item {
    pb::Item { id: id.into(), title: title.into(), ..Default::default() }
}

fn with_vector(id: &str, values: Vec<f32>) -> pb::Item {
    pb::Item { id: id.into(), vector: Some(pb::Vector { values }), ..Default::default() }
}

fn upsert(items: Vec<pb::Item>) -> pb::UpsertItemsRequest {
    pb::UpsertItemsRequest { items, ..Default::default() }
}

async fn bad_ids(ctx: &Ctx) -> Result<()> {
    let mut c = connect(&ctx.url).await?;
    expect(c.upsert_items(upsert(vec![item("", "a title")])).await, Code::InvalidArgument, "empty")?;
    expect(c.upsert_items(upsert(vec![item(&"x".repeat(300), "a title")])).await, Code::InvalidArgument, "300 bytes")?;
    expect(c.upsert_items(upsert(vec![item("a\u{7}b", "a title")])).await, Code::InvalidArgument, "control")?;
    expect(c.upsert_items(upsert(vec![item("dup", "a"), item("dup", "b")])).await, Code::InvalidArgument, "twice")?;
    expect(
        c.upsert_items(upsert(vec![item("no-text", "")])).await,
        Code::InvalidArgument,
        "neither a vector nor a title",
    )?;
    expect(
        c.get_items(pb::GetItemsRequest { ids: vec!["".into()], with_vectors: false, ..Default::default() }).await,
        Code::InvalidArgument,
        "empty",
    )?;
    expect(
        c.delete_items(pb::DeleteItemsRequest { ids: vec!["x".repeat(257)], ..Default::default() }).await,
        Code::InvalidArgument,
        "257 bytes",
    )?;
    expect(
        c.similar_items(pb::SimilarItemsRequest { id: String::new(), k: 5, ..Default::default() }).await,
        Code::InvalidArgument,
        "empty",
    )?;
    Ok(())
}

async fn bad_vectors(ctx: &Ctx) -> Result<()> {
    let mut c = connect(&ctx.url).await?;
    let mut v = vec![0.1f32; 384];
    v[7] = f32::NAN;
    expect(c.upsert_items(upsert(vec![with_vector("nan", v.clone())])).await, Code::InvalidArgument, "non-finite")?;
    v[7] = f32::INFINITY;
    expect(c.upsert_items(upsert(vec![with_vector("inf", v)])).await, Code::InvalidArgument, "non-finite")?;
    expect(
        c.upsert_items(upsert(vec![with_vector("short", vec![1.0, 2.0, 3.0])])).await,
        Code::InvalidArgument,
        "dimension 3",
    )?;
    expect(c.upsert_items(upsert(vec![with_vector("zero", vec![0.0; 384])])).await, Code::InvalidArgument, "zero")?;
    let q = |values: Vec<f32>| pb::SearchRequest {
        query: Some(Query::Vector(pb::Vector { values })),
        k: 5,
        ..Default::default()
    };
    expect(c.search(q(vec![1.0; 10])).await, Code::InvalidArgument, "dimension 10")?;
    expect(c.search(q(vec![f32::NEG_INFINITY; 384])).await, Code::InvalidArgument, "non-finite")?;
    Ok(())
}

async fn a_bad_item_rejects_the_whole_batch(ctx: &Ctx) -> Result<()> {
    let mut c = connect(&ctx.url).await?;
    let good = item("batch-good-1", "Blue canvas tote bag");
    let bad = with_vector("batch-bad-1", vec![1.0; 5]);
    expect(c.upsert_items(upsert(vec![good.clone(), bad])).await, Code::InvalidArgument, "dimension 5")?;
    let got = c
        .get_items(pb::GetItemsRequest { ids: vec![good.id.clone()], with_vectors: false, ..Default::default() })
        .await?
        .into_inner();
    ensure!(got.items.is_empty(), "a rejected batch wrote {:?}", got.items);
    Ok(())
}

async fn bad_k(ctx: &Ctx) -> Result<()> {
    let mut c = connect(&ctx.url).await?;
    expect(c.search(text_query("shoes", 0)).await, Code::InvalidArgument, "k = 0")?;
    expect(c.search(text_query("shoes", 1001)).await, Code::InvalidArgument, "k = 1001")?;
    expect(
        c.similar_items(pb::SimilarItemsRequest { id: ctx.seed[0].id.clone(), k: 0, ..Default::default() }).await,
        Code::InvalidArgument,
        "k = 0",
    )?;
    expect(
        c.recommend(pb::RecommendRequest { history: vec![ctx.seed[0].id.clone()], k: 5000, ..Default::default() })
            .await,
        Code::InvalidArgument,
        "k = 5000",
    )?;
    Ok(())
}

async fn bad_queries(ctx: &Ctx) -> Result<()> {
    let mut c = connect(&ctx.url).await?;
    expect(c.search(pb::SearchRequest { k: 5, ..Default::default() }).await, Code::InvalidArgument, "needs a query")?;
    expect(c.search(text_query("   ", 5)).await, Code::InvalidArgument, "empty")?;
    expect(c.search(text_query(&"word ".repeat(10_000), 5)).await, Code::InvalidArgument, "limit")?;
    expect(
        c.recommend(pb::RecommendRequest { k: 5, ..Default::default() }).await,
        Code::InvalidArgument,
        "needs a user_id",
    )?;
    let ev = |t: pb::EventType, user: &str| pb::RecordEventsRequest {
        events: vec![pb::Event { user_id: user.into(), item_id: "i".into(), r#type: t as i32, timestamp_ms: 0 }],
        ..Default::default()
    };
    expect(c.record_events(ev(pb::EventType::Unspecified, "u")).await, Code::InvalidArgument, "type")?;
    expect(c.record_events(ev(pb::EventType::View, "")).await, Code::InvalidArgument, "user_id")?;
    Ok(())
}

async fn bad_filters(ctx: &Ctx) -> Result<()> {
    let mut c = connect(&ctx.url).await?;
    let f = |filter: pb::Filter| pb::SearchRequest { filter: Some(filter), ..text_query("shoes", 5) };
    expect(
        c.search(f(build::matches("colour", &["red"]))).await,
        Code::InvalidArgument,
        "unknown filter field \"colour\"",
    )?;
    expect(c.search(f(build::matches("price", &["10"]))).await, Code::InvalidArgument, "number field")?;
    expect(c.search(f(build::range("category", Some(1.0), None))).await, Code::InvalidArgument, "string field")?;
    expect(c.search(f(pb::Filter { kind: None })).await, Code::InvalidArgument, "no condition")?;
    let mut deep = build::in_stock(true);
    for _ in 0..40 {
        deep = build::not(deep);
    }
    expect(c.search(f(deep)).await, Code::InvalidArgument, "deeper")?;
    let sim = pb::SimilarItemsRequest {
        id: ctx.seed[0].id.clone(),
        k: 5,
        filter: Some(build::tag("")),
        with_items: false,
        ..Default::default()
    };
    expect(c.similar_items(sim).await, Code::InvalidArgument, "empty tag")?;
    Ok(())
}

async fn bad_images(ctx: &Ctx) -> Result<()> {
    let mut c = connect(&ctx.url).await?;
    let img = |bytes: Vec<u8>| pb::SearchRequest { query: Some(Query::Image(bytes)), k: 5, ..Default::default() };
    expect(c.search(img(b"definitely not an image".to_vec())).await, Code::InvalidArgument, "not a recognised image")?;
    let mut truncated_jpeg = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10, b'J', b'F', b'I', b'F', 0];
    truncated_jpeg.extend_from_slice(&[0x42; 100]);
    expect(c.search(img(truncated_jpeg.clone())).await, Code::InvalidArgument, "Jpeg")?;
    let mut it = item("bad-image-item", "Striped linen shirt");
    it.image = truncated_jpeg;
    expect(c.upsert_items(upsert(vec![it])).await, Code::InvalidArgument, "bad-image-item")?;
    // A valid image is understood, but this cluster has no image model.
    let mut png = std::io::Cursor::new(Vec::new());
    image::RgbImage::from_pixel(16, 16, image::Rgb([120, 40, 200])).write_to(&mut png, image::ImageFormat::Png)?;
    expect(c.search(img(png.into_inner())).await, Code::FailedPrecondition, "no image model")?;
    Ok(())
}

async fn oversized_messages_are_refused(ctx: &Ctx) -> Result<()> {
    let mut c = connect(&ctx.url).await?;
    // The router accepts 16 MiB per message by default.
    let mut it = item("huge", "A huge item");
    it.image = vec![0u8; 17 << 20];
    let r = c.upsert_items(upsert(vec![it])).await;
    expect(r, Code::ResourceExhausted, "message length too large")?;
    Ok(())
}

async fn acknowledged_data_survives_all_of_the_above(ctx: &Ctx) -> Result<()> {
    let mut c = connect(&ctx.url).await?;
    let ids: Vec<String> = ctx.seed.iter().map(|i| i.id.clone()).collect();
    let got = c.get_items(pb::GetItemsRequest { ids, with_vectors: false, ..Default::default() }).await?.into_inner();
    ensure!(got.missing.is_empty(), "lost {:?}", got.missing);
    let r = c.search(text_query(&ctx.seed[0].title, 1)).await?.into_inner();
    ensure!(r.hits[0].id == ctx.seed[0].id);
    ctx.cluster.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.all_alive().map_err(anyhow::Error::msg)?;
    Ok(())
}

/// Limits lowered in the router's configuration are enforced with the
/// configured numbers in the message; a limit above the shards' own is
/// refused at start-up. A cluster of its own (vectors only, one shard).
async fn configured_limits(_ctx: &Ctx) -> anyhow::Result<()> {
    let mut opts = Options::shards(1).vectors_only(4);
    opts.router_args = ["--max-k", "5", "--max-batch", "3", "--max-history", "2"].map(String::from).to_vec();
    let cluster = tokio::task::block_in_place(|| Cluster::start(opts));
    let mut c = connect(&cluster.url()).await?;
    let item = |i: u32| pb::Item {
        id: format!("lim-{i}"),
        vector: Some(pb::Vector { values: vec![1.0, 0.0, 0.0, i as f32] }),
        ..Default::default()
    };
    let err = c
        .upsert_items(pb::UpsertItemsRequest { items: (0..4).map(item).collect(), ..Default::default() })
        .await
        .unwrap_err();
    ensure!(err.code() == Code::InvalidArgument && err.message().contains("the limit is 3 per call"), "{err:?}");
    c.upsert_items(pb::UpsertItemsRequest { items: (0..3).map(item).collect(), ..Default::default() }).await?;
    let query = |k| pb::SearchRequest {
        query: Some(pb::search_request::Query::Vector(pb::Vector { values: vec![1.0, 0.0, 0.0, 0.0] })),
        k,
        ..Default::default()
    };
    let err = c.search(query(6)).await.unwrap_err();
    ensure!(err.code() == Code::InvalidArgument && err.message().contains("k must be 1 to 5"), "{err:?}");
    ensure!(c.search(query(5)).await?.into_inner().hits.len() == 3);
    let history = ["lim-0", "lim-1", "lim-2"].map(String::from).to_vec();
    let err = c.recommend(pb::RecommendRequest { history, k: 2, ..Default::default() }).await.unwrap_err();
    ensure!(err.code() == Code::InvalidArgument && err.message().contains("has 3 items; the limit is 2"), "{err:?}");
    // Above the shards' limit: the router refuses to start.
    let out = std::process::Command::new(vitrine_integration_tests::bin_dir().join("vitrine-router"))
        .args(["--shard", "127.0.0.1:1", "--max-k", "5000"])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success() && stderr.contains("--max-k must be between 1 and 1000"), "{stderr}");
    Ok(())
}

fn main() {
    let mut args = Arguments::from_args();
    // One thread keeps the listed order, so the survival check really runs
    // after every hostile request (the whole file takes well under a second).
    args.test_threads = Some(1);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let cluster = Cluster::start(Options::shards(2));
    let seed = products(50);
    let url = cluster.url();
    rt.block_on(async {
        let mut c = connect(&url).await.expect("connect");
        assert_eq!(load(&mut c, &seed).await.upserted, 50);
    });
    let ctx = Arc::new(Ctx { url, seed, rt, cluster: Mutex::new(cluster) });
    macro_rules! trial {
        ($name:ident) => {{
            let ctx = Arc::clone(&ctx);
            Trial::test(stringify!($name), move || ctx.rt.block_on($name(&ctx)).map_err(|e| format!("{e:#}").into()))
        }};
    }
    let mut trials = vec![
        trial!(bad_ids),
        trial!(bad_vectors),
        trial!(a_bad_item_rejects_the_whole_batch),
        trial!(bad_k),
        trial!(bad_queries),
        trial!(bad_filters),
        trial!(bad_images),
        trial!(oversized_messages_are_refused),
        trial!(configured_limits),
    ];
    // Runs last (see test_threads above).
    trials.push(trial!(acknowledged_data_survives_all_of_the_above));
    let conclusion = libtest_mimic::run(&args, trials);
    drop(ctx);
    conclusion.exit();
}
