//! Switching a running cluster to another text model version
//! (`vitrine models switch`, `vitrine_shard::switch`): searches,
//! recommendations and writes keep succeeding, with full coverage, while
//! every replica re-embeds the catalogue, commits and unloads the old
//! version; afterwards every item, including those written during the
//! switch, carries the new version's vector, and a restart keeps it.
//!
//! Version 2 is the same network with CLS pooling instead of mean pooling:
//! another vector space of the same dimension, which is what a new model
//! version is to the index.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tonic::Code;
use vitrine_integration_tests::{connect, load, models, products, vitrine_cli, Cluster, Options};
use vitrine_proto::pb;
use vitrine_shard::service::item_text;

const V1: &str = "all-MiniLM-L6-v2@1";
const V2: &str = "all-MiniLM-L6-v2@2";

fn registry(dir: &std::path::Path) -> std::path::PathBuf {
    let (model_dir, _) = models();
    let registry = serde_json::json!({
        "models": [
            {"name": "all-MiniLM-L6-v2", "version": "1", "kind": "text", "dir": model_dir, "pooling": "mean"},
            {"name": "all-MiniLM-L6-v2", "version": "2", "kind": "text", "dir": model_dir, "pooling": "cls"}
        ],
        "serve": {"text": V1}
    });
    let path = dir.join("models.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&registry).unwrap()).unwrap();
    path
}

fn text_search(text: &str, k: u32) -> pb::SearchRequest {
    pb::SearchRequest { query: Some(pb::search_request::Query::Text(text.into())), k, ..Default::default() }
}

/// Requests that failed (or answered without every shard) while the load ran.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failures: std::sync::Mutex<Vec<String>>,
}

impl Tally {
    fn record<T>(&self, what: &str, r: Result<T, tonic::Status>, degraded: impl FnOnce(&T) -> bool) {
        match r {
            Ok(v) if degraded(&v) => self.failures.lock().unwrap().push(format!("{what}: degraded coverage")),
            Ok(_) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(s) => self.failures.lock().unwrap().push(format!("{what}: {:?} {}", s.code(), s.message())),
        }
    }
}

fn degraded(c: &Option<pb::Coverage>) -> bool {
    c.as_ref().is_some_and(|c| c.degraded)
}

#[test]
fn model_version_switch_under_load_fails_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let path = registry(dir.path());
    // Two shards with two replicas each; reads get a generous deadline so
    // that re-embedding on two cores does not turn slowness into errors.
    let mut opts = Options::shards(4);
    opts.replicas = 2;
    opts.shard_args = vec!["--models".into(), path.display().to_string()];
    opts.router_args = vec!["--read-timeout-ms".into(), "20000".into()];
    let mut cluster = Cluster::start(opts);
    let url = cluster.url();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();

    let all = products(260);
    let (base, extra) = all.split_at(200);
    let probe = base[7].clone();
    let before = rt.block_on(async {
        let mut c = connect(&url).await.unwrap();
        load(&mut c, base).await;
        let info = c.cluster_info(pb::ClusterInfoRequest {}).await.unwrap().into_inner();
        assert!(info.shards.iter().all(|s| s.model_set == V1), "{info:?}");
        let got = c
            .get_items(pb::GetItemsRequest { ids: vec![probe.id.clone()], with_vectors: true, ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.model, V1);
        got.items[0].vector.clone().unwrap().values
    });

    // Refusals first: an undeclared version, and another image model.
    let out = vitrine_cli(&["--addr", &url, "models", "switch", "--text-model", "all-MiniLM-L6-v2@3"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("all-MiniLM-L6-v2@3 is not declared"), "{err}");
    let out = vitrine_cli(&["--addr", &url, "models", "switch", "--text-model", V2, "--image-model", "vit@2"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("image model cannot change in place"));

    // Load: text searches, recommendations and writes until the switch ends.
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let written: Arc<std::sync::Mutex<Vec<pb::Item>>> = Arc::default();
    let deleted: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let loaders = {
        let mut tasks = Vec::new();
        for worker in 0..2 {
            let (stop, tally, url, titles) = (
                Arc::clone(&stop),
                Arc::clone(&tally),
                url.clone(),
                base.iter().map(|p| p.title.clone()).collect::<Vec<_>>(),
            );
            tasks.push(rt.spawn(async move {
                let mut c = connect(&url).await.unwrap();
                let mut i = worker;
                while !stop.load(Ordering::Relaxed) {
                    let r = c.search(text_search(&titles[i % titles.len()], 5)).await.map(|r| r.into_inner());
                    tally.record("search", r, |r| degraded(&r.coverage));
                    i += 2;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }));
        }
        {
            let (stop, tally, url, ids) = (
                Arc::clone(&stop),
                Arc::clone(&tally),
                url.clone(),
                base.iter().map(|p| p.id.clone()).collect::<Vec<_>>(),
            );
            tasks.push(rt.spawn(async move {
                let mut c = connect(&url).await.unwrap();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let history = (0..3).map(|j| ids[(i * 7 + j * 31) % 150].clone()).collect();
                    let req = pb::RecommendRequest { history, k: 5, ..Default::default() };
                    let r = c.recommend(req).await.map(|r| r.into_inner());
                    tally.record("recommend", r, |r| degraded(&r.coverage));
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }));
        }
        {
            // New items, updated titles and deletes, one write at a time.
            let (stop, tally, url, extra, base) =
                (Arc::clone(&stop), Arc::clone(&tally), url.clone(), extra.to_vec(), base.to_vec());
            let (written, deleted) = (Arc::clone(&written), Arc::clone(&deleted));
            tasks.push(rt.spawn(async move {
                let mut c = connect(&url).await.unwrap();
                let (mut i, mut fresh) = (0, 0);
                while !stop.load(Ordering::Relaxed) {
                    // Two new items, then an update of an existing title.
                    let item = if i % 3 != 2 {
                        fresh += 1;
                        extra.get(fresh - 1).cloned()
                    } else {
                        let mut it = base[150 + (i / 3) % 40].clone();
                        it.title = format!("{} (new season {i})", it.title);
                        Some(it)
                    };
                    if let Some(item) = item {
                        let r = c
                            .upsert_items(pb::UpsertItemsRequest { items: vec![item.clone()], ..Default::default() })
                            .await
                            .map(|r| r.into_inner());
                        let ok = r.is_ok();
                        tally.record("upsert", r, |_| false);
                        if ok {
                            let mut w = written.lock().unwrap();
                            w.retain(|w: &pb::Item| w.id != item.id);
                            w.push(item);
                        }
                    }
                    if i % 10 == 9 && i / 10 < 8 {
                        let id = base[190 + i / 10].id.clone();
                        let r = c
                            .delete_items(pb::DeleteItemsRequest { ids: vec![id.clone()], ..Default::default() })
                            .await
                            .map(|r| r.into_inner());
                        let ok = r.is_ok();
                        tally.record("delete", r, |_| false);
                        if ok {
                            deleted.lock().unwrap().push(id);
                        }
                    }
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }));
        }
        tasks
    };

    let ok_before_switch = tally.ok.load(Ordering::Relaxed);
    let out = rt
        .block_on(rt.spawn_blocking({
            let url = url.clone();
            move || {
                vitrine_cli(&["--addr", &url, "--json", "models", "switch", "--text-model", V2, "--drain-ms", "1500"])
            }
        }))
        .unwrap();
    let ok_during_switch = tally.ok.load(Ordering::Relaxed) - ok_before_switch;
    stop.store(true, Ordering::Relaxed);
    for t in loaders {
        rt.block_on(t).unwrap();
    }
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let failures = tally.failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "{} requests failed during the switch: {failures:#?}", failures.len());
    assert!(ok_during_switch > 0, "no request ran during the switch");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let phases: Vec<&str> = report["phases"].as_array().unwrap().iter().map(|p| p["phase"].as_str().unwrap()).collect();
    assert_eq!(phases, ["prepare", "commit", "release"]);
    let prepared = &report["phases"][0]["shards"];
    assert_eq!(prepared.as_array().unwrap().len(), 4, "every replica prepared: {prepared}");
    for s in prepared.as_array().unwrap() {
        assert!(s["reembedded"].as_u64().unwrap() >= 90, "each replica re-embeds its half: {s}");
        assert_eq!(s["other"], V2);
    }

    let written = written.lock().unwrap().clone();
    let deleted: HashSet<String> = deleted.lock().unwrap().iter().cloned().collect();
    let written_ids: HashSet<&str> = written.iter().map(|w| w.id.as_str()).collect();
    eprintln!("{ok_during_switch} requests during the switch; {} writes, {} deletes", written.len(), deleted.len());
    assert!(!written.is_empty());
    let check = |cluster_url: String| {
        let (written, deleted, base) = (written.clone(), deleted.clone(), base.to_vec());
        let written_ids: HashSet<String> = written_ids.iter().map(|s| s.to_string()).collect();
        rt.block_on(async move {
            let mut c = connect(&cluster_url).await.unwrap();
            let info = c.cluster_info(pb::ClusterInfoRequest {}).await.unwrap().into_inner();
            for s in &info.shards {
                assert_eq!((s.model_set.as_str(), s.other_model_set.as_str()), (V2, ""), "{s:?}");
            }
            // Each group's replicas agree, and the groups hold every item.
            let mut per_group: BTreeMap<u32, HashSet<u64>> = BTreeMap::new();
            for s in &info.shards {
                per_group.entry(s.shard).or_default().insert(s.items);
            }
            assert!(per_group.values().all(|v| v.len() == 1), "replicas disagree: {per_group:?}");
            let total: u64 = per_group.values().map(|v| v.iter().next().copied().unwrap_or(0)).sum();
            let expected: HashSet<&str> = base
                .iter()
                .map(|p| p.id.as_str())
                .chain(written.iter().map(|w| w.id.as_str()))
                .filter(|id| !deleted.contains(*id))
                .collect();
            assert_eq!(total, expected.len() as u64);
            // Every item written during the switch, and a sample of the
            // others, is found by its own text at cosine 1 under version 2:
            // its stored vector is version 2's embedding of that text.
            let sample = written.iter().cloned().chain(
                base.iter().step_by(17).filter(|p| !deleted.contains(&p.id) && !written_ids.contains(&p.id)).cloned(),
            );
            for item in sample {
                let hits = c.search(text_search(&item_text(&item), 1)).await.unwrap().into_inner().hits;
                assert_eq!(hits[0].id, item.id, "{hits:?}");
                assert!(hits[0].score > 0.9999, "{} scores {}", item.id, hits[0].score);
            }
            let ids: Vec<String> = deleted.iter().cloned().collect();
            let got = c.get_items(pb::GetItemsRequest { ids: ids.clone(), ..Default::default() }).await.unwrap();
            assert_eq!(got.into_inner().missing.len(), ids.len(), "deleted items stay deleted");
        });
    };
    check(url.clone());
    let after = rt.block_on(async {
        let mut c = connect(&url).await.unwrap();
        let got = c
            .get_items(pb::GetItemsRequest { ids: vec![probe.id.clone()], with_vectors: true, ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.model, V2);
        got.items[0].vector.clone().unwrap().values
    });
    let cos: f32 = before.iter().zip(&after).map(|(a, b)| a * b).sum();
    assert!(cos < 0.99, "the stored vector did not change space (cosine {cos})");

    // The old version is unloaded: a query embedded with it is refused.
    rt.block_on(async {
        let mut shard =
            pb::shard_client::ShardClient::connect(format!("http://{}", cluster.shard_addrs[0])).await.unwrap();
        let req = pb::ShardSearchRequest {
            vector: Some(pb::Vector { values: before.clone() }),
            k: 1,
            model: V1.into(),
            ..Default::default()
        };
        let err = shard.search(req).await.expect_err("released");
        assert_eq!(err.code(), Code::FailedPrecondition);
    });

    // A restart serves version 2 although the registry's `serve` still
    // names version 1: the commit's snapshot decides.
    cluster.kill_shard(1);
    cluster.restart_shard(1);
    cluster.wait_serving(4);
    assert!(cluster.shard_log(1).contains("serving the model set of the newest snapshot"));
    check(url.clone());
}
