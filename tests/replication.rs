//! Replication: one shard with three replicas on loopback. Reads keep
//! succeeding while a replica is killed (hedging and failover), writes meet
//! `quorum` with one replica down and fail at `all`, and the replica that
//! was down catches up from its peers before it serves reads again: with
//! the other two killed, it alone answers every acknowledged write.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vitrine_integration_tests::{connect, Cluster, Options};
use vitrine_proto::pb;

const DIM: usize = 8;

fn item(i: usize) -> pb::Item {
    let mut v: Vec<f32> = (0..DIM).map(|d| (((i * 31 + d * 7) % 17) as f32) - 8.0).collect();
    v[i % DIM] += 20.0;
    pb::Item {
        id: format!("item-{i}"),
        title: format!("item {i}"),
        vector: Some(pb::Vector { values: v }),
        ..Default::default()
    }
}

fn upsert(items: Vec<pb::Item>, level: pb::Consistency) -> pb::UpsertItemsRequest {
    pb::UpsertItemsRequest { items, consistency: level as i32 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_survive_a_kill_and_catch_up() {
    let mut opts = Options::shards(3).vectors_only(DIM);
    opts.replicas = 3;
    let mut cluster = Cluster::start(opts);
    let url = cluster.url();
    let mut c = connect(&url).await.unwrap();

    let r = c.upsert_items(upsert((0..60).map(item).collect(), pb::Consistency::Quorum)).await.unwrap().into_inner();
    let rep = r.replication.expect("replication report");
    assert_eq!((rep.replicas, rep.required), (3, 2));
    assert!(rep.acknowledged >= 2, "{rep:?}");
    assert_eq!(rep.consistency, pb::Consistency::Quorum as i32);

    // Readers run while replica 2 is killed.
    let stop = Arc::new(AtomicBool::new(false));
    let (reads, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let readers: Vec<_> = (0..3)
        .map(|t| {
            let (stop, reads, errors, url) = (stop.clone(), reads.clone(), errors.clone(), url.clone());
            tokio::spawn(async move {
                let mut c = connect(&url).await.unwrap();
                // Items 0..10 are deleted mid-run; readers stay clear of them.
                let mut i = t;
                while !stop.load(Ordering::Acquire) {
                    i = 10 + (i + 7) % 50;
                    let got = c
                        .get_items(pb::GetItemsRequest {
                            ids: vec![format!("item-{i}")],
                            with_vectors: false,
                            ..Default::default()
                        })
                        .await;
                    let search = c
                        .search(pb::SearchRequest {
                            query: Some(pb::search_request::Query::Vector(item(i).vector.unwrap())),
                            k: 3,
                            ..Default::default()
                        })
                        .await;
                    match (got, search) {
                        (Ok(g), Ok(s)) if g.get_ref().items.len() == 1 && !s.get_ref().hits.is_empty() => {}
                        other => {
                            eprintln!("read failed: {other:?}");
                            // Bounded: a dead router must not spin the test.
                            if errors.fetch_add(1, Ordering::Relaxed) > 20 {
                                break;
                            }
                        }
                    }
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.kill_shard(2);

    // With one replica down: quorum and one succeed, all does not.
    let r = c.upsert_items(upsert((60..90).map(item).collect(), pb::Consistency::Quorum)).await.unwrap().into_inner();
    assert_eq!(r.replication.unwrap().acknowledged, 2);
    let r = c.upsert_items(upsert((90..100).map(item).collect(), pb::Consistency::One)).await.unwrap().into_inner();
    assert!(r.replication.unwrap().acknowledged >= 1);
    let err = c.upsert_items(upsert(vec![item(100)], pb::Consistency::All)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(err.message().contains("2 of 3 replicas acknowledged"), "{}", err.message());
    let deleted: Vec<String> = (0..10).map(|i| format!("item-{i}")).collect();
    let d = c
        .delete_items(pb::DeleteItemsRequest { ids: deleted.clone(), consistency: pb::Consistency::Quorum as i32 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.deleted, 10);
    // Writes acknowledged at `one` reach the live replicas in the
    // background; let them land before the others are killed below.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Release);
    for r in readers {
        r.await.unwrap();
    }
    let (reads, errors) = (reads.load(Ordering::Relaxed), errors.load(Ordering::Relaxed));
    eprintln!("{reads} reads while a replica was killed, {errors} errors");
    assert!(reads > 20, "{reads}");
    assert_eq!(errors, 0, "reads failed while one of three replicas was down; router log:\n{}", cluster.router_log());

    // Replica 2 comes back, catches up, then serves alone.
    cluster.restart_shard(2);
    let started = Instant::now();
    loop {
        let info = c.cluster_info(pb::ClusterInfoRequest {}).await.unwrap().into_inner();
        let me = info.shards.iter().find(|s| s.replica == 2).expect("replica 2 listed");
        if me.state == pb::ShardState::Serving as i32 {
            // item-100 failed at `all` but reached two replicas: not rolled back.
            assert_eq!(me.items, 91, "caught up: 101 written, 10 deleted");
            assert_eq!(me.deleted_ids, 10);
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "replica 2 never caught up: {me:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cluster.kill_shard(0);
    cluster.kill_shard(1);
    let ids: Vec<String> = (0..=100).map(|i| format!("item-{i}")).collect();
    let got =
        c.get_items(pb::GetItemsRequest { ids, with_vectors: false, ..Default::default() }).await.unwrap().into_inner();
    let mut missing = got.missing.clone();
    missing.sort();
    let mut want = deleted.clone();
    want.sort();
    assert_eq!(missing, want, "only the deleted items are missing on the replica that was down");
    assert_eq!(got.items.len(), 91);
}
