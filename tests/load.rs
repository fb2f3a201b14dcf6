//! `vitrine load` and `vitrine embed` against a real cluster (router + 2
//! shards): CSV with bad rows, an interrupted load resumed from its
//! checkpoint, Parquet, an embed → .npy → load round trip, and a dry run.
//! Products are real ones from ../shared/data when it is present.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;

use arrow_array::builder::{ListBuilder, StringBuilder};
use arrow_array::{ArrayRef, Float64Array, RecordBatch, StringArray};
use vitrine_integration_tests::{connect, models, products, vitrine_cli, Cluster, Options};
use vitrine_proto::pb;

fn summary(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).expect("a JSON summary on stdout")
}

/// A CSV field, quoted (RFC 4180) because titles contain commas and quotes.
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn write_csv(path: &Path, items: &[pb::Item], bad_rows: bool) {
    let mut text = String::from("id,title,category,brand,price,in_stock,tags,str.gender,num.year\n");
    for (i, it) in items.iter().enumerate() {
        let a = it.attributes.clone().unwrap_or_default();
        text.push_str(&format!(
            "{},{},{},{},{},{},{},{},{}\n",
            it.id,
            quote(&it.title),
            quote(&a.category),
            quote(&a.brand),
            a.price.map_or(String::new(), |p| p.to_string()),
            a.in_stock.map_or(String::new(), |s| s.to_string()),
            quote(&a.tags.join("|")),
            quote(a.strings.get("gender").map_or("", String::as_str)),
            a.numbers.get("year").map_or(String::new(), |y| y.to_string()),
        ));
        if bad_rows && i == 10 {
            text.push_str("bad-price,Some title,shirts,X,twelve,true,,,\n");
        }
        if bad_rows && i == 20 {
            text.push_str(",No id,shirts,X,1,true,,,\n");
        }
    }
    std::fs::write(path, text).expect("writing the CSV");
}

fn write_parquet(path: &Path, items: &[pb::Item]) {
    let attrs: Vec<pb::Attributes> = items.iter().map(|i| i.attributes.clone().unwrap_or_default()).collect();
    let mut tags = ListBuilder::new(StringBuilder::new());
    for a in &attrs {
        for t in &a.tags {
            tags.values().append_value(t);
        }
        tags.append(true);
    }
    let batch = RecordBatch::try_from_iter(vec![
        ("id", Arc::new(StringArray::from_iter_values(items.iter().map(|i| i.id.as_str()))) as ArrayRef),
        ("title", Arc::new(StringArray::from_iter_values(items.iter().map(|i| i.title.as_str()))) as ArrayRef),
        ("category", Arc::new(StringArray::from_iter_values(attrs.iter().map(|a| a.category.as_str()))) as ArrayRef),
        ("price", Arc::new(Float64Array::from_iter(attrs.iter().map(|a| a.price))) as ArrayRef),
        ("tags", Arc::new(tags.finish()) as ArrayRef),
    ])
    .expect("a record batch");
    let file = std::fs::File::create(path).expect("creating the Parquet file");
    let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).expect("a Parquet writer");
    w.write(&batch).expect("writing Parquet");
    w.close().expect("closing Parquet");
}

async fn get(url: &str, ids: Vec<String>) -> pb::GetItemsResponse {
    let mut c = connect(url).await.expect("connect");
    let mut all = pb::GetItemsResponse::default();
    for chunk in ids.chunks(200) {
        let r = c
            .get_items(pb::GetItemsRequest { ids: chunk.to_vec(), with_vectors: true, ..Default::default() })
            .await
            .expect("GetItems")
            .into_inner();
        all.items.extend(r.items);
        all.missing.extend(r.missing);
    }
    all
}

async fn stored_items(url: &str) -> u64 {
    let mut c = connect(url).await.expect("connect");
    let info = c.cluster_info(pb::ClusterInfoRequest {}).await.expect("ClusterInfo").into_inner();
    info.shards.iter().map(|s| s.items).sum()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

#[test]
fn bulk_load_resume_parquet_embed_and_dry_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = |n: &str| -> PathBuf { dir.path().join(n) };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let all = products(1100);
    let (csv_items, rest) = all.split_at(600);
    let (pq_items, emb_items) = rest.split_at(400);

    // A dry run needs no cluster: the address is a closed port.
    write_csv(&d("cat.csv"), csv_items, true);
    let out = vitrine_cli(&["--addr", "http://127.0.0.1:1", "--json", "load", s(&d("cat.csv")), "--dry-run"]);
    assert_eq!(out.status.code(), Some(2), "skipped rows make the exit code 2");
    let j = summary(&out);
    assert_eq!((j["loaded"].as_u64(), j["skipped"].as_u64(), j["failed"].as_u64()), (Some(600), Some(2), Some(0)));
    let reasons = j["reasons"].to_string();
    assert!(reasons.contains("line 13") && reasons.contains("price"), "{reasons}");
    assert!(reasons.contains("id is empty"), "{reasons}");
    assert!(!d("cat.csv.vitrine-checkpoint").exists(), "a dry run writes no checkpoint");

    let cluster = Cluster::start(Options::shards(2));
    let url = cluster.url();

    // Interrupted after 250 records, then resumed.
    // The errors file is appended to on resume: the bad rows, read before
    // the interruption, stay listed.
    let (csv_file, errors_file) = (d("cat.csv"), d("errors.jsonl"));
    let csv_load = |extra: &[&str]| {
        let mut args = vec!["--addr", &url, "--json", "load", s(&csv_file), "--batch", "50"];
        args.extend_from_slice(&["--errors", s(&errors_file)]);
        args.extend_from_slice(extra);
        vitrine_cli(&args)
    };
    let out = csv_load(&["--stop-after", "250"]);
    assert_eq!(out.status.code(), Some(3), "an interrupted load exits 3");
    let ck: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d("cat.csv.vitrine-checkpoint")).expect("a checkpoint"))
            .expect("checkpoint JSON");
    let mark = ck["watermark"].as_u64().expect("watermark");
    assert!(mark > 0 && mark <= 250, "watermark {mark}");
    let out = csv_load(&[]);
    assert_eq!(out.status.code(), Some(2), "two rows were skipped");
    let j = summary(&out);
    assert_eq!(j["resumed_after"].as_u64(), Some(mark));
    assert_eq!((j["loaded"].as_u64(), j["skipped"].as_u64(), j["failed"].as_u64()), (Some(600), Some(2), Some(0)));
    assert!(!d("cat.csv.vitrine-checkpoint").exists(), "the checkpoint is removed when the load completes");
    let errors = std::fs::read_to_string(d("errors.jsonl")).expect("errors file");
    assert!(errors.contains("\"skipped\"") && errors.contains("line 13"), "{errors}");

    // Parquet: text embedded by the shards, tags as a list column.
    write_parquet(&d("cat.parquet"), pq_items);
    let out = vitrine_cli(&["--addr", &url, "--json", "load", s(&d("cat.parquet"))]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(summary(&out)["loaded"].as_u64(), Some(400));

    // Embed offline → .npy + .ids → load: the vectors equal the ones the
    // shards computed for the same titles (loaded above under other ids).
    let twins: Vec<pb::Item> =
        csv_items[..emb_items.len()].iter().map(|i| pb::Item { id: format!("emb-{}", i.id), ..i.clone() }).collect();
    write_csv(&d("twins.csv"), &twins, false);
    let (model_dir, ort_lib) = models();
    let out = vitrine_cli(&[
        "embed",
        s(&d("twins.csv")),
        "--out",
        s(&d("twins.npy")),
        "--threads",
        "2",
        "--model-dir",
        s(&model_dir),
        "--ort-lib",
        s(&ort_lib),
    ]);
    assert!(out.status.success(), "embed failed");
    let out = vitrine_cli(&["--addr", &url, "--json", "load", s(&d("twins.npy")), "--ids", s(&d("twins.ids"))]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(summary(&out)["loaded"].as_u64(), Some(twins.len() as u64));

    rt.block_on(async {
        let ids: Vec<String> =
            all[..1000].iter().map(|i| i.id.clone()).chain(twins.iter().map(|t| t.id.clone())).collect();
        let got = get(&url, ids.clone()).await;
        assert!(got.missing.is_empty(), "missing: {:?}", got.missing);
        assert_eq!(got.items.len(), ids.len());
        let expected = ids.len() as u64;
        assert_eq!(stored_items(&url).await, expected, "every item is stored exactly once");
        let by_id: std::collections::HashMap<&str, &pb::Item> = got.items.iter().map(|i| (i.id.as_str(), i)).collect();
        let first = by_id[csv_items[0].id.as_str()];
        assert_eq!(first.title, csv_items[0].title, "CSV quoting round-trips");
        assert_eq!(
            first.attributes.as_ref().and_then(|a| a.price),
            csv_items[0].attributes.as_ref().and_then(|a| a.price)
        );
        let pq = by_id[pq_items[0].id.as_str()];
        assert_eq!(pq.attributes.as_ref().map(|a| &a.tags), pq_items[0].attributes.as_ref().map(|a| &a.tags));
        for t in &twins {
            let original = t.id.trim_start_matches("emb-");
            let a = &by_id[t.id.as_str()].vector.as_ref().expect("vector").values;
            let b = &by_id[original].vector.as_ref().expect("vector").values;
            let cos: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
            assert!(cos > 0.9999, "{}: cosine {cos} between the offline and the shard's vector", t.id);
        }
    });
    drop(cluster);
}
