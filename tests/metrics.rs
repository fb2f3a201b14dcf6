//! Prometheus metrics of a real cluster (router + 2 shards, each with
//! `--metrics-addr` on loopback): real gRPC calls move the counters by
//! exactly what they did, with the right status codes, and the shard gauges
//! report what was stored. Codes are labelled as grpc-go names them
//! (`OK`, `InvalidArgument`, `NotFound`, ...). No timing assertions.

use std::collections::BTreeMap;

use vitrine_integration_tests::{connect, products, scrape, text_query, Cluster, Metrics, Options};
use vitrine_proto::pb::{self, shard_client::ShardClient};
use vitrine_router::topology::Topology;

const PUBLIC: &str = "vitrine.v1.Vitrine";
const SHARD: &str = "vitrine.v1.Shard";

/// Scrapes of the router and of every shard, taken together.
struct Snapshot {
    router: Metrics,
    shards: Vec<Metrics>,
}

impl Snapshot {
    fn take(cluster: &Cluster) -> Self {
        Self {
            router: scrape(cluster.router_metrics.as_deref().expect("router metrics")),
            shards: cluster.shard_metrics.iter().map(|a| scrape(a)).collect(),
        }
    }

    /// A router series.
    fn router(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.router.sum(name, labels)
    }

    /// A shard series, summed over the shards.
    fn shards(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.shards.iter().map(|m| m.sum(name, labels)).sum()
    }
}

/// Calls of `rpc` of `service` with `code` in a scrape.
fn calls(m: &Metrics, service: &str, rpc: &str, code: &str) -> f64 {
    m.sum("vitrine_requests_total", &[("service", service), ("rpc", rpc), ("code", code)])
}

#[test]
fn metrics_follow_real_calls() {
    let mut cluster = Cluster::start(Options::shards(2).with_metrics());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut c = rt.block_on(connect(&cluster.url())).expect("connect");

    // Every family is there from the first scrape, before any traffic.
    let s0 = Snapshot::take(&cluster);
    for name in [
        "vitrine_requests_total",
        "vitrine_request_duration_seconds",
        "vitrine_fanout_shards_asked",
        "vitrine_fanout_shards_answered",
        "vitrine_shard_call_duration_seconds",
        "vitrine_explore_slots_total",
        "vitrine_served_slots_total",
    ] {
        assert!(s0.router.has(name), "router lacks {name}:\n{}", s0.router.text);
    }
    for (i, m) in s0.shards.iter().enumerate() {
        for name in [
            "vitrine_requests_total",
            "vitrine_request_duration_seconds",
            "vitrine_embed_queue_seconds",
            "vitrine_embed_compute_seconds",
            "vitrine_embed_batch_size",
            "vitrine_embed_requests_total",
            "vitrine_query_cache_total",
            "vitrine_index_items",
            "vitrine_index_tombstones",
            "vitrine_index_flat_points",
            "vitrine_index_delta_points",
            "vitrine_wal_bytes",
            "vitrine_wal_fsync_seconds",
        ] {
            assert!(m.has(name), "shard {i} lacks {name}:\n{}", m.text);
        }
        assert_eq!(m.sum("vitrine_index_items", &[]), 0.0);
    }
    // Only the Vitrine and Shard services are measured, never health checks.
    assert_eq!(s0.router.label_values("vitrine_requests_total", "service"), [PUBLIC]);
    assert_eq!(s0.shards[0].label_values("vitrine_requests_total", "service"), [SHARD]);
    // The readiness probe's ClusterInfo calls are counted, OK.
    assert!(calls(&s0.router, PUBLIC, "ClusterInfo", "OK") >= 1.0);

    // An upsert: one public call, one shard call per owning shard, and the
    // shards embed, log (one fsync per batch) and index every item.
    let items = products(40);
    let topology = Topology::uniform(256, 2).unwrap();
    let mut per_shard = BTreeMap::<u32, usize>::new();
    for it in &items {
        *per_shard.entry(topology.shard_of(&it.id)).or_default() += 1;
    }
    let r = rt
        .block_on(c.upsert_items(pb::UpsertItemsRequest { items: items.clone(), ..Default::default() }))
        .expect("upsert")
        .into_inner();
    assert_eq!((r.upserted, r.embedded), (40, 40));
    let s1 = Snapshot::take(&cluster);
    let d = |name: &str, labels: &[(&str, &str)]| s1.router(name, labels) - s0.router(name, labels);
    assert_eq!(d("vitrine_requests_total", &[("rpc", "UpsertItems"), ("code", "OK")]), 1.0);
    assert_eq!(d("vitrine_requests_total", &[("rpc", "UpsertItems")]), 1.0, "no other code");
    assert_eq!(d("vitrine_request_duration_seconds_count", &[("rpc", "UpsertItems")]), 1.0);
    assert_eq!(d("vitrine_shard_call_duration_seconds_count", &[]), per_shard.len() as f64);
    assert_eq!(d("vitrine_fanout_shards_asked", &[]), 0.0, "a write is not a fan-out read");
    let ds = |name: &str, labels: &[(&str, &str)]| s1.shards(name, labels) - s0.shards(name, labels);
    assert_eq!(ds("vitrine_requests_total", &[("rpc", "Upsert"), ("code", "OK")]), per_shard.len() as f64);
    assert_eq!(ds("vitrine_embed_requests_total", &[("provider", "cpu")]), 40.0);
    assert_eq!(s1.shards("vitrine_index_items", &[]), 40.0, "index items = items upserted");
    for (shard, n) in &per_shard {
        let (before, after) = (&s0.shards[*shard as usize], &s1.shards[*shard as usize]);
        assert_eq!(after.sum("vitrine_index_items", &[]), *n as f64, "shard {shard}");
        assert_eq!(after.sum("vitrine_index_tombstones", &[]), 0.0, "shard {shard}");
        // Every indexed point is in the flat copy or waits for the next one.
        let (flat, delta) = (after.sum("vitrine_index_flat_points", &[]), after.sum("vitrine_index_delta_points", &[]));
        assert_eq!(flat + delta, *n as f64, "shard {shard}: flat copy {flat} + waiting {delta}");
        assert!(after.sum("vitrine_wal_bytes", &[]) > before.sum("vitrine_wal_bytes", &[]), "shard {shard}");
        let fsyncs = |m: &Metrics| m.sum("vitrine_wal_fsync_seconds_count", &[]);
        assert_eq!(fsyncs(after) - fsyncs(before), 1.0, "shard {shard}: one logged batch, one fsync");
    }

    // An invalid search is refused at the router: InvalidArgument, and no
    // shard is called.
    let err = rt.block_on(c.search(text_query("linen dress", 0))).unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    // A missing item: NotFound.
    let err = rt
        .block_on(c.similar_items(pb::SimilarItemsRequest { id: "no-such-item".into(), k: 3, ..Default::default() }))
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    // A message over the router's 16 MiB limit is refused by tonic before
    // any handler runs, as OUT_OF_RANGE that `router::status` corrects: the
    // metric has the code the client got.
    let mut big = items[0].clone();
    big.image = vec![0u8; 17 << 20];
    let err =
        rt.block_on(c.upsert_items(pb::UpsertItemsRequest { items: vec![big], ..Default::default() })).unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    let s2 = Snapshot::take(&cluster);
    let d = |name: &str, labels: &[(&str, &str)]| s2.router(name, labels) - s1.router(name, labels);
    assert_eq!(d("vitrine_requests_total", &[("rpc", "Search"), ("code", "InvalidArgument")]), 1.0);
    assert_eq!(d("vitrine_requests_total", &[("rpc", "Search")]), 1.0);
    assert_eq!(d("vitrine_requests_total", &[("rpc", "SimilarItems"), ("code", "NotFound")]), 1.0);
    assert_eq!(d("vitrine_requests_total", &[("rpc", "UpsertItems"), ("code", "ResourceExhausted")]), 1.0);
    assert_eq!(d("vitrine_requests_total", &[("rpc", "UpsertItems"), ("code", "OutOfRange")]), 0.0);
    assert_eq!(d("vitrine_request_duration_seconds_count", &[("rpc", "Search")]), 1.0);
    assert_eq!(
        s2.shards("vitrine_requests_total", &[("rpc", "Search")]),
        s1.shards("vitrine_requests_total", &[("rpc", "Search")])
    );

    // The same code on a shard: a Search with k = 0 sent to it directly.
    let err = rt
        .block_on(async {
            let mut shard = ShardClient::connect(format!("http://{}", cluster.shard_addrs[0])).await?;
            let req = pb::ShardSearchRequest {
                vector: Some(pb::Vector { values: vec![1.0; 384] }),
                k: 0,
                ..Default::default()
            };
            anyhow::Ok(shard.search(req).await)
        })
        .expect("connect to shard 0")
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let s3 = Snapshot::take(&cluster);
    assert_eq!(
        calls(&s3.shards[0], SHARD, "Search", "InvalidArgument")
            - calls(&s2.shards[0], SHARD, "Search", "InvalidArgument"),
        1.0,
        "{}",
        s3.shards[0].text
    );

    // A text search: embedded on a shard, then a fan-out read both shards answer.
    let r = rt.block_on(c.search(text_query(&items[0].title, 5))).expect("search").into_inner();
    assert_eq!(r.hits.len(), 5);
    let s4 = Snapshot::take(&cluster);
    let d = |name: &str, labels: &[(&str, &str)]| s4.router(name, labels) - s3.router(name, labels);
    assert_eq!(d("vitrine_requests_total", &[("rpc", "Search"), ("code", "OK")]), 1.0);
    assert_eq!(d("vitrine_fanout_shards_asked", &[]), 2.0);
    assert_eq!(d("vitrine_fanout_shards_answered", &[]), 2.0);
    let ds = |name: &str, labels: &[(&str, &str)]| s4.shards(name, labels) - s3.shards(name, labels);
    assert_eq!(ds("vitrine_requests_total", &[("rpc", "Search"), ("code", "OK")]), 2.0, "one search per shard");
    // A slow embedding may be hedged on the second shard, so at least one.
    assert!(ds("vitrine_requests_total", &[("rpc", "Embed"), ("code", "OK")]) >= 1.0);
    assert!(ds("vitrine_embed_queue_seconds_count", &[]) >= 1.0);
    assert!(ds("vitrine_embed_compute_seconds_count", &[]) >= 1.0);
    assert!(ds("vitrine_embed_batch_size_count", &[]) >= 1.0);
    assert!(ds("vitrine_embed_requests_total", &[("provider", "cpu")]) >= 1.0);

    // The same query again, four times: the shards' query caches answer.
    // Each shard embeds a text at most once (the first search cached it on
    // at least one), so at most one more miss, and only misses run the model.
    let ids = |r: &pb::SearchResponse| r.hits.iter().map(|h| h.id.clone()).collect::<Vec<_>>();
    for _ in 0..4 {
        let again = rt.block_on(c.search(text_query(&items[0].title, 5))).expect("search").into_inner();
        assert_eq!(ids(&again), ids(&r), "a cached query vector gives the same answer");
    }
    let s4b = Snapshot::take(&cluster);
    let dc = |name: &str, labels: &[(&str, &str)]| s4b.shards(name, labels) - s4.shards(name, labels);
    let (hits, misses) =
        (dc("vitrine_query_cache_total", &[("result", "hit")]), dc("vitrine_query_cache_total", &[("result", "miss")]));
    // One lookup per Embed call (a hedged call the router cancels early may
    // end before its lookup).
    let embeds = dc("vitrine_requests_total", &[("rpc", "Embed")]);
    assert!(hits + misses >= 4.0 && hits + misses <= embeds, "{hits} + {misses} lookups, {embeds} Embed calls");
    assert!(hits >= 3.0 && misses <= 1.0, "{hits} hits, {misses} misses");
    assert_eq!(dc("vitrine_embed_requests_total", &[("provider", "cpu")]), misses, "only misses run the model");
    let s4 = s4b;

    // A recommendation: one fan-out (the index search on the user vector)
    // and k served slots; none explored with the default ε = 0.
    let history = vec![items[0].id.clone(), items[1].id.clone()];
    let r = rt
        .block_on(c.recommend(pb::RecommendRequest { history: history.clone(), k: 5, ..Default::default() }))
        .expect("recommend")
        .into_inner();
    assert_eq!(r.hits.len(), 5);
    let s5 = Snapshot::take(&cluster);
    let d = |name: &str, labels: &[(&str, &str)]| s5.router(name, labels) - s4.router(name, labels);
    assert_eq!(d("vitrine_requests_total", &[("rpc", "Recommend"), ("code", "OK")]), 1.0);
    assert_eq!(d("vitrine_fanout_shards_asked", &[]), 2.0);
    assert_eq!(d("vitrine_fanout_shards_answered", &[]), 2.0);
    assert_eq!(d("vitrine_served_slots_total", &[]), 5.0);
    assert_eq!(d("vitrine_explore_slots_total", &[]), 0.0);

    // With ε = 1 on the last 3 slots, the explored counter moves by exactly
    // the slots that `explain` marks as explored.
    let ranking = pb::Ranking { explore_epsilon: Some(1.0), explore_slots: Some(3), ..Default::default() };
    let r = rt
        .block_on(c.recommend(pb::RecommendRequest {
            history,
            k: 5,
            explain: true,
            ranking: Some(ranking),
            ..Default::default()
        }))
        .expect("recommend with exploration")
        .into_inner();
    let explored = r.hits.iter().filter(|h| h.explanation.as_ref().is_some_and(|e| e.source == "explore")).count();
    let s6 = Snapshot::take(&cluster);
    let d = |name: &str, labels: &[(&str, &str)]| s6.router(name, labels) - s5.router(name, labels);
    assert_eq!(d("vitrine_served_slots_total", &[]), r.hits.len() as f64);
    assert_eq!(d("vitrine_explore_slots_total", &[]), explored as f64);

    // Every call counted is also timed, whatever its code.
    for rpc in s6.router.label_values("vitrine_requests_total", "rpc") {
        let count = s6.router("vitrine_requests_total", &[("rpc", &rpc)]);
        assert_eq!(s6.router("vitrine_request_duration_seconds_count", &[("rpc", &rpc)]), count, "{rpc}");
    }
    cluster.all_alive().expect("no process died");
}
