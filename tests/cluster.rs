//! A real cluster (router + 2 shard processes) loaded with 2,000 real
//! products: retrieval, similar items, filters, deletes, updates and
//! recommendations through the public gRPC API.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use libtest_mimic::{Arguments, Trial};
use vitrine_integration_tests::{connect, load, products, text_query, Cluster, Options};
use vitrine_proto::filter::build;
use vitrine_proto::pb;

/// Items the mutation tests may delete or change; read-only tests filter
/// them out so that tests running in parallel cannot disturb each other.
const MUTABLE: &str = "zz-mutable";

struct Ctx {
    url: String,
    items: Vec<pb::Item>,
    mutable: Vec<pb::Item>,
    rt: tokio::runtime::Runtime,
}

impl Ctx {
    fn attrs(&self, id: &str) -> Option<&pb::Attributes> {
        self.items.iter().find(|i| i.id == id).and_then(|i| i.attributes.as_ref())
    }
}

fn not_mutable() -> pb::Filter {
    build::not(build::matches("category", &[MUTABLE]))
}

fn ids(r: &pb::SearchResponse) -> Vec<&str> {
    r.hits.iter().map(|h| h.id.as_str()).collect()
}

fn full_coverage(r: &pb::SearchResponse) -> Result<()> {
    let c = r.coverage.context("coverage missing")?;
    ensure!(c.shards_asked == 2 && c.shards_answered == 2 && !c.degraded, "coverage {c:?}");
    Ok(())
}

async fn title_search_finds_the_item_first(ctx: &Ctx) -> Result<()> {
    let mut c = connect(&ctx.url).await?;
    let sample: Vec<&pb::Item> = ctx.items.iter().step_by(ctx.items.len() / 200).take(200).collect();
    let mut misses = Vec::new();
    for it in &sample {
        let r = c.search(text_query(&it.title, 5)).await?.into_inner();
        full_coverage(&r)?;
        if r.hits.first().map(|h| h.id.as_str()) != Some(it.id.as_str()) {
            misses.push(format!("{:?} -> {:?}", it.title, r.hits.first().map(|h| &h.id)));
        }
    }
    let hit_rate = 1.0 - misses.len() as f64 / sample.len() as f64;
    eprintln!("title self-retrieval at rank 1: {:.1}% of {}", hit_rate * 100.0, sample.len());
    ensure!(hit_rate >= 0.95, "rank-1 rate {hit_rate:.3} < 0.95; misses: {misses:?}");
    Ok(())
}

async fn scores_are_sorted_and_vectors_unit_length(ctx: &Ctx) -> Result<()> {
    let mut c = connect(&ctx.url).await?;
    let r = c.search(text_query("men's black leather watch", 50)).await?.into_inner();
    ensure!(r.hits.len() == 50, "{} hits", r.hits.len());
    ensure!(r.hits.windows(2).all(|w| w[0].score >= w[1].score), "scores not descending");
    ensure!(ids(&r).iter().collect::<HashSet<_>>().len() == 50, "duplicate ids in results");
    let got = c
        .get_items(pb::GetItemsRequest { ids: vec![r.hits[0].id.clone()], with_vectors: true, ..Default::default() })
        .await?
        .into_inner();
    let v = &got.items[0].vector.as_ref().context("no vector")?.values;
    ensure!(v.len() == 384, "dimension {}", v.len());
    let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    ensure!((norm - 1.0).abs() < 1e-3, "norm {norm}");
    // Searching by the stored vector returns the item with score ~1.
    let r2 = c
        .search(pb::SearchRequest {
            query: Some(pb::search_request::Query::Vector(pb::Vector { values: v.clone() })),
            k: 1,
            ..Default::default()
        })
        .await?
        .into_inner();
    ensure!(r2.hits[0].id == r.hits[0].id && r2.hits[0].score > 0.999, "{:?}", r2.hits);
    Ok(())
}

async fn similar_items_never_returns_the_item(ctx: &Ctx) -> Result<()> {
    let mut c = connect(&ctx.url).await?;
    for it in ctx.items.iter().step_by(40).take(50) {
        let r = c
            .similar_items(pb::SimilarItemsRequest { id: it.id.clone(), k: 10, ..Default::default() })
            .await?
            .into_inner();
        full_coverage(&r)?;
        ensure!(r.hits.len() == 10, "{} hits for {}", r.hits.len(), it.id);
        ensure!(!ids(&r).contains(&it.id.as_str()), "{} returned itself", it.id);
    }
    let err = c
        .similar_items(pb::SimilarItemsRequest { id: "no-such-item".into(), k: 3, ..Default::default() })
        .await
        .unwrap_err();
    ensure!(err.code() == tonic::Code::NotFound, "{err:?}");
    Ok(())
}

async fn get_items_round_trips(ctx: &Ctx) -> Result<()> {
    let mut c = connect(&ctx.url).await?;
    let want: Vec<&pb::Item> = ctx.items.iter().step_by(97).take(20).collect();
    let mut ids: Vec<String> = want.iter().map(|i| i.id.clone()).collect();
    ids.push("missing-id".into());
    let r = c.get_items(pb::GetItemsRequest { ids, with_vectors: false, ..Default::default() }).await?.into_inner();
    ensure!(r.missing == vec!["missing-id".to_string()], "missing {:?}", r.missing);
    for (got, sent) in r.items.iter().zip(&want) {
        ensure!(
            got.id == sent.id && got.title == sent.title && got.attributes == sent.attributes,
            "{got:?} != {sent:?}"
        );
        ensure!(got.vector.is_none() && got.image.is_empty());
    }
    Ok(())
}

/// A filter as sent, and the same condition written independently in Rust.
type Check = (pb::Filter, Box<dyn Fn(&pb::Attributes) -> bool + Send + Sync>);

fn filter_checks(ctx: &Ctx) -> Vec<Check> {
    // The most common category and a rare one (few items), from the data.
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for it in &ctx.items {
        *counts.entry(it.attributes.as_ref().map(|a| a.category.as_str()).unwrap_or("")).or_default() += 1;
    }
    let mut by_count: Vec<(&str, usize)> = counts.into_iter().collect();
    by_count.sort_by_key(|(c, n)| (std::cmp::Reverse(*n), c.to_string()));
    let common = by_count[0].0.to_string();
    let rare = by_count.iter().rev().find(|(_, n)| *n >= 2).map(|(c, _)| c.to_string()).unwrap_or_default();
    let (c1, c2) = (common.clone(), rare.clone());
    vec![
        (build::matches("category", &[&common]), Box::new(move |a: &pb::Attributes| a.category == c1)),
        (build::matches("category", &[&rare]), Box::new(move |a: &pb::Attributes| a.category == c2)),
        (
            build::range("price", Some(20.0), Some(60.0)),
            Box::new(|a: &pb::Attributes| a.price.is_some_and(|p| (20.0..=60.0).contains(&p))),
        ),
        (build::in_stock(false), Box::new(|a: &pb::Attributes| a.in_stock == Some(false))),
        (build::tag("black"), Box::new(|a: &pb::Attributes| a.tags.iter().any(|t| t == "black"))),
        (
            build::or(vec![build::tag("red"), build::range("numbers.year", Some(2016.0), None)]),
            Box::new(|a: &pb::Attributes| {
                a.tags.iter().any(|t| t == "red") || a.numbers.get("year").is_some_and(|y| *y >= 2016.0)
            }),
        ),
        (
            build::and(vec![
                build::matches("strings.gender", &["Women"]),
                build::not(build::range("price", None, Some(100.0))),
            ]),
            Box::new(|a: &pb::Attributes| {
                a.strings.get("gender").is_some_and(|g| g == "Women") && !a.price.is_some_and(|p| p <= 100.0)
            }),
        ),
    ]
}

async fn every_filtered_result_satisfies_its_filter(ctx: &Ctx) -> Result<()> {
    let mut c = connect(&ctx.url).await?;
    let queries = ["blue denim jeans", "running shoes", "leather handbag", "cotton t-shirt", "analog watch"];
    for (i, (filter, check)) in filter_checks(ctx).into_iter().enumerate() {
        let matching = ctx.items.iter().filter(|it| it.attributes.as_ref().is_some_and(&check)).count();
        for q in queries {
            let req = pb::SearchRequest {
                query: Some(pb::search_request::Query::Text(q.into())),
                k: 50,
                filter: Some(build::and(vec![filter.clone(), not_mutable()])),
                with_items: true,
            };
            let r = c.search(req).await?.into_inner();
            full_coverage(&r)?;
            for h in &r.hits {
                let a = h.item.as_ref().and_then(|it| it.attributes.as_ref()).context("item missing")?;
                ensure!(check(a), "filter #{i}: {} violates it: {a:?}", h.id);
                ensure!(ctx.attrs(&h.id) == Some(a), "returned attributes differ from the loaded ones");
            }
            // Every matching item can be found: a selective filter is not cut short.
            ensure!(
                r.hits.len() == matching.min(50),
                "filter #{i} {q:?}: {} hits, {matching} items match",
                r.hits.len()
            );
        }
    }
    Ok(())
}

async fn deleted_items_vanish_from_every_result(ctx: &Ctx) -> Result<()> {
    let mut c = connect(&ctx.url).await?;
    let doomed: Vec<&pb::Item> = ctx.mutable.iter().take(20).collect();
    let doomed_ids: Vec<String> = doomed.iter().map(|i| i.id.clone()).collect();
    let vectors = c
        .get_items(pb::GetItemsRequest { ids: doomed_ids.clone(), with_vectors: true, ..Default::default() })
        .await?
        .into_inner();
    ensure!(vectors.items.len() == 20, "not all doomed items were stored");
    let r =
        c.delete_items(pb::DeleteItemsRequest { ids: doomed_ids.clone(), ..Default::default() }).await?.into_inner();
    ensure!(r.deleted == 20, "deleted {}", r.deleted);
    let again =
        c.delete_items(pb::DeleteItemsRequest { ids: doomed_ids.clone(), ..Default::default() }).await?.into_inner();
    ensure!(again.deleted == 0, "second delete reported {}", again.deleted);
    let gone: HashSet<&str> = doomed_ids.iter().map(String::as_str).collect();
    for (it, stored) in doomed.iter().zip(&vectors.items) {
        let by_text = c.search(text_query(&it.title, 20)).await?.into_inner();
        ensure!(!ids(&by_text).iter().any(|id| gone.contains(id)), "deleted item in text results");
        let v = stored.vector.clone().context("vector")?;
        let by_vec = c
            .search(pb::SearchRequest {
                query: Some(pb::search_request::Query::Vector(v)),
                k: 20,
                ..Default::default()
            })
            .await?
            .into_inner();
        ensure!(!ids(&by_vec).iter().any(|id| gone.contains(id)), "deleted item in vector results");
        if let Some(neighbour) = by_vec.hits.first() {
            let sim = c
                .similar_items(pb::SimilarItemsRequest { id: neighbour.id.clone(), k: 20, ..Default::default() })
                .await?
                .into_inner();
            ensure!(!ids(&sim).iter().any(|id| gone.contains(id)), "deleted item in similar items");
        }
        let rec = c
            .recommend(pb::RecommendRequest {
                history: vec![it.id.clone(), ctx.items[3].id.clone()],
                k: 20,
                ..Default::default()
            })
            .await?
            .into_inner();
        ensure!(!ids(&rec).iter().any(|id| gone.contains(id)), "deleted item recommended");
    }
    let get = c
        .get_items(pb::GetItemsRequest { ids: doomed_ids.clone(), with_vectors: false, ..Default::default() })
        .await?
        .into_inner();
    ensure!(get.items.is_empty() && get.missing.len() == 20, "deleted items still readable");
    let err = c
        .similar_items(pb::SimilarItemsRequest { id: doomed_ids[0].clone(), k: 3, ..Default::default() })
        .await
        .unwrap_err();
    ensure!(err.code() == tonic::Code::NotFound, "{err:?}");
    Ok(())
}

async fn updates_replace_text_and_vector(ctx: &Ctx) -> Result<()> {
    let mut c = connect(&ctx.url).await?;
    let mut it = ctx.mutable[30].clone();
    it.title = "Zephyr ultralight carbon fibre trekking poles with cork grips".into();
    c.upsert_items(pb::UpsertItemsRequest { items: vec![it.clone()], ..Default::default() }).await?;
    let r = c
        .search(pb::SearchRequest { with_items: true, ..text_query("carbon fibre trekking poles", 3) })
        .await?
        .into_inner();
    ensure!(
        r.hits.first().map(|h| h.id.as_str()) == Some(it.id.as_str()),
        "updated item not found by its new title: {:?}",
        ids(&r)
    );
    ensure!(r.hits[0].item.as_ref().map(|i| i.title.as_str()) == Some(it.title.as_str()));
    ensure!(ids(&r).iter().filter(|id| **id == it.id).count() == 1, "the old version is still served");
    let info = c.cluster_info(pb::ClusterInfoRequest {}).await?.into_inner();
    ensure!(info.shards.iter().map(|s| s.tombstones).sum::<u64>() >= 1, "an update leaves a tombstone");
    Ok(())
}

fn category_of<'a>(ctx: &'a Ctx, id: &str) -> &'a str {
    ctx.attrs(id).map(|a| a.category.as_str()).unwrap_or("")
}

async fn recommendations_follow_history_and_exclude_seen(ctx: &Ctx) -> Result<()> {
    let mut c = connect(&ctx.url).await?;
    let watches: Vec<&pb::Item> = ctx.items.iter().filter(|i| category_of(ctx, &i.id) == "Watches").take(3).collect();
    let pick: Vec<&pb::Item> = if watches.len() == 3 { watches } else { ctx.items.iter().take(3).collect() };
    let cat = category_of(ctx, &pick[0].id).to_string();
    let history: Vec<String> = pick.iter().map(|i| i.id.clone()).collect();

    // Anonymous session with an explicit history.
    let r =
        c.recommend(pb::RecommendRequest { history: history.clone(), k: 10, ..Default::default() }).await?.into_inner();
    full_coverage(&r)?;
    ensure!(r.hits.len() == 10);
    ensure!(!ids(&r).iter().any(|id| history.contains(&id.to_string())), "seen items recommended");
    let same = ids(&r).iter().filter(|id| category_of(ctx, id) == cat).count();
    ensure!(same >= 6, "only {same}/10 recommendations share the history's category {cat:?}");

    // The same through recorded events of a user.
    let user = "it-user-1";
    let events = history
        .iter()
        .enumerate()
        .map(|(i, id)| pb::Event {
            user_id: user.into(),
            item_id: id.clone(),
            r#type: pb::EventType::Purchase as i32,
            timestamp_ms: 1_700_000_000_000 + i as i64,
        })
        .collect();
    let rec = c.record_events(pb::RecordEventsRequest { events, ..Default::default() }).await?.into_inner();
    ensure!(rec.recorded == 3);
    let r = c.recommend(pb::RecommendRequest { user_id: user.into(), k: 10, ..Default::default() }).await?.into_inner();
    ensure!(r.hits.len() == 10 && !ids(&r).iter().any(|id| history.contains(&id.to_string())));
    let r = c
        .recommend(pb::RecommendRequest { user_id: user.into(), k: 10, include_seen: true, ..Default::default() })
        .await?
        .into_inner();
    ensure!(ids(&r).iter().any(|id| history.contains(&id.to_string())), "include_seen must allow seen items");

    // Positive and negative examples are never returned.
    let other = ctx.items.iter().find(|i| category_of(ctx, &i.id) != cat).context("a second category")?;
    let r = c
        .recommend(pb::RecommendRequest {
            positive: vec![history[0].clone()],
            negative: vec![other.id.clone()],
            k: 10,
            ..Default::default()
        })
        .await?
        .into_inner();
    ensure!(!ids(&r).contains(&history[0].as_str()) && !ids(&r).contains(&other.id.as_str()));

    // A user nobody has seen gets an empty answer, not an error.
    let r = c
        .recommend(pb::RecommendRequest { user_id: "never-seen".into(), k: 5, ..Default::default() })
        .await?
        .into_inner();
    ensure!(r.hits.is_empty());
    Ok(())
}

async fn cluster_info_counts_everything(ctx: &Ctx) -> Result<()> {
    let mut c = connect(&ctx.url).await?;
    let info = c.cluster_info(pb::ClusterInfoRequest {}).await?.into_inner();
    ensure!(info.shards.len() == 2 && info.dimension == 384 && info.virtual_shards == 256);
    ensure!(info.shards.iter().all(|s| s.state == pb::ShardState::Serving as i32 && s.model == "all-MiniLM-L6-v2"));
    ensure!(info.shards.iter().map(|s| s.virtual_shards).sum::<u32>() == 256);
    // Both shards hold a fair share (hash placement), and nothing is lost.
    let total: u64 = info.shards.iter().map(|s| s.items).sum();
    let loaded = (ctx.items.len() + ctx.mutable.len()) as u64;
    ensure!(total <= loaded && total + 20 >= loaded, "{total} items stored of {loaded} loaded");
    ensure!(info.shards.iter().all(|s| s.items as f64 > 0.35 * total as f64), "unbalanced: {:?}", info.shards);
    Ok(())
}

fn main() {
    let args = Arguments::from_args();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let cluster = Cluster::start(Options::shards(2));
    let items = products(2000);
    let mutable: Vec<pb::Item> = products(2100)
        .into_iter()
        .skip(2000)
        .map(|mut it| {
            it.attributes.get_or_insert_with(Default::default).category = MUTABLE.into();
            it
        })
        .collect();
    let url = cluster.url();
    rt.block_on(async {
        let mut c = connect(&url).await.expect("connect");
        let started = std::time::Instant::now();
        let r = load(&mut c, &items).await;
        assert_eq!(r.upserted as usize, items.len());
        assert_eq!(r.embedded as usize, items.len());
        load(&mut c, &mutable).await;
        eprintln!("loaded {} items in {:.1} s", items.len() + mutable.len(), started.elapsed().as_secs_f64());
    });
    let ctx = Arc::new(Ctx { url, items, mutable, rt });
    macro_rules! trial {
        ($name:ident) => {{
            let ctx = Arc::clone(&ctx);
            Trial::test(stringify!($name), move || ctx.rt.block_on($name(&ctx)).map_err(|e| format!("{e:#}").into()))
        }};
    }
    let trials = vec![
        trial!(title_search_finds_the_item_first),
        trial!(scores_are_sorted_and_vectors_unit_length),
        trial!(similar_items_never_returns_the_item),
        trial!(get_items_round_trips),
        trial!(every_filtered_result_satisfies_its_filter),
        trial!(deleted_items_vanish_from_every_result),
        trial!(updates_replace_text_and_vector),
        trial!(recommendations_follow_history_and_exclude_seen),
        trial!(cluster_info_counts_everything),
    ];
    let conclusion = libtest_mimic::run(&args, trials);
    drop(cluster);
    conclusion.exit();
}
