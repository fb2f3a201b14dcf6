//! Dead and frozen shards: reads degrade with honest coverage instead of
//! failing, fall to UNAVAILABLE below the minimum coverage, writes to a dead
//! shard are refused (never silently dropped), and a restarted shard comes
//! back with everything it acknowledged (WAL replay).

use std::time::Duration;

use tonic::{Code, Request};
use vitrine_integration_tests::{connect, load, products, text_query, Cluster, Options};
use vitrine_proto::pb;
use vitrine_router::topology::Topology;

fn coverage(r: &pb::SearchResponse) -> (u32, u32, bool) {
    let c = r.coverage.unwrap_or_default();
    (c.shards_asked, c.shards_answered, c.degraded)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_and_slow_shards_degrade_reads_and_recover() {
    let mut cluster = Cluster::start(Options::shards(3));
    let mut c = connect(&cluster.url()).await.unwrap();
    let items = products(600);
    assert_eq!(load(&mut c, &items).await.upserted, 600);
    let topo = Topology::uniform(256, 3).unwrap();
    let topo = &topo;
    let on = |shard: u32| items.iter().filter(move |i| topo.shard_of(&i.id) == shard);
    let events: Vec<pb::Event> = (0..30)
        .map(|u| pb::Event {
            user_id: format!("user-{u}"),
            item_id: items[u].id.clone(),
            r#type: pb::EventType::Click as i32,
            timestamp_ms: 0,
        })
        .collect();
    assert_eq!(
        c.record_events(pb::RecordEventsRequest { events, ..Default::default() }).await.unwrap().into_inner().recorded,
        30
    );

    let r = c.search(text_query("black leather shoes", 10)).await.unwrap().into_inner();
    assert_eq!(coverage(&r), (3, 3, false));

    // Deletes and updates on the shard about to die must survive its restart.
    let deleted: Vec<String> = on(2).take(5).map(|i| i.id.clone()).collect();
    assert_eq!(
        c.delete_items(pb::DeleteItemsRequest { ids: deleted.clone(), ..Default::default() })
            .await
            .unwrap()
            .into_inner()
            .deleted,
        5
    );
    let mut renamed = on(2).nth(5).unwrap().clone();
    renamed.title = format!("{} (renamed before the crash)", renamed.title);
    c.upsert_items(pb::UpsertItemsRequest { items: vec![renamed.clone()], ..Default::default() }).await.unwrap();

    // One shard dies: reads still answer, from the other two, marked degraded.
    cluster.kill_shard(2);
    let r = c.search(text_query("black leather shoes", 10)).await.expect("degraded read, not an error").into_inner();
    assert_eq!(coverage(&r), (3, 2, true));
    assert_eq!(r.hits.len(), 10);
    assert!(r.hits.iter().all(|h| h.shard != 2));
    let anchor = on(0).next().unwrap();
    let r = c
        .similar_items(pb::SimilarItemsRequest { id: anchor.id.clone(), k: 5, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(coverage(&r), (3, 2, true));
    let r = c
        .recommend(pb::RecommendRequest { history: vec![anchor.id.clone()], k: 5, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(r.coverage.unwrap().degraded);
    let info = c.cluster_info(pb::ClusterInfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.shards[2].state, pb::ShardState::Unreachable as i32);
    assert!(info.coverage.unwrap().degraded);

    // Writes owned by the dead shard are refused with a reason, not dropped.
    let mut orphan = on(2).nth(6).unwrap().clone();
    orphan.title.push_str(" (updated)");
    let err =
        c.upsert_items(pb::UpsertItemsRequest { items: vec![orphan.clone()], ..Default::default() }).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("not acknowledged"), "{}", err.message());
    let err = c
        .get_items(pb::GetItemsRequest { ids: vec![orphan.id.clone()], with_vectors: false, ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    // A write to a live shard is acknowledged meanwhile.
    let mut fresh = on(0).nth(1).unwrap().clone();
    fresh.id = format!("{}-while-degraded", fresh.id);
    let owner = topo.shard_of(&fresh.id);
    if owner != 2 {
        c.upsert_items(pb::UpsertItemsRequest { items: vec![fresh.clone()], ..Default::default() }).await.unwrap();
    }

    // Two of three dead: below the 50% minimum coverage the read fails.
    cluster.kill_shard(1);
    let err = c.search(text_query("black leather shoes", 10)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("1 of 3 shards answered"), "{}", err.message());

    // Both come back with everything they acknowledged.
    cluster.restart_shard(1);
    cluster.restart_shard(2);
    cluster.wait_serving(3);
    let r = c.search(text_query("black leather shoes", 10)).await.unwrap().into_inner();
    assert_eq!(coverage(&r), (3, 3, false));
    let ids: Vec<String> = items.iter().map(|i| i.id.clone()).collect();
    let got =
        c.get_items(pb::GetItemsRequest { ids, with_vectors: false, ..Default::default() }).await.unwrap().into_inner();
    assert_eq!(got.missing, deleted, "exactly the deleted items are missing after restart");
    assert_eq!(got.items.len(), 595);
    let title = got.items.iter().find(|i| i.id == renamed.id).map(|i| i.title.clone());
    assert_eq!(title.as_deref(), Some(renamed.title.as_str()), "the update survives the restart");
    let info = c.cluster_info(pb::ClusterInfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.shards.iter().map(|s| s.users).sum::<u64>(), 30, "user profiles survive restarts");
    if owner != 2 {
        let got = c
            .get_items(pb::GetItemsRequest { ids: vec![fresh.id.clone()], with_vectors: false, ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.items.len(), 1);
    }
    // The refused write was not applied.
    let got = c
        .get_items(pb::GetItemsRequest { ids: vec![orphan.id.clone()], with_vectors: false, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(!got.items[0].title.ends_with("(updated)"));

    // A frozen shard (accepts, never answers): the client's deadline is
    // propagated and the answer arrives on time, degraded.
    // Three text searches, so that the frozen shard is first in the router's
    // embedding rotation at least once (the hedged request must cover it).
    cluster.freeze_shard(0);
    for _ in 0..3 {
        let mut req = Request::new(text_query("black leather shoes", 10));
        req.set_timeout(Duration::from_millis(400));
        let r = c.search(req).await.expect("partial answer within the deadline").into_inner();
        assert_eq!(coverage(&r), (3, 2, true));
        assert!(r.hits.iter().all(|h| h.shard != 0));
    }
    cluster.thaw_shard(0);
    let r = c.search(text_query("black leather shoes", 10)).await.unwrap().into_inner();
    assert_eq!(coverage(&r), (3, 3, false));
    cluster.all_alive().unwrap();
}
