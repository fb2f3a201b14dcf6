//! The demo the README's first command shows: load the shipped catalogue and
//! print a text search, a filtered search, similar items and a
//! recommendation, with product names.

use std::time::Instant;

use anyhow::Context;
use vitrine_proto::filter::build;
use vitrine_proto::pb;

use crate::output::{hits_table, info_table};
use crate::Client;

/// Fictional products written for the demo (see demo/README.md), embedded in
/// the binary so the demo needs no data files.
pub const CATALOG: &str = include_str!("../../demo/catalog.jsonl");

pub async fn load(client: &mut Client) -> anyhow::Result<()> {
    let items = crate::catalog_file::parse(CATALOG, None)?;
    let started = Instant::now();
    let n = items.len();
    let resp = crate::upload(client, items, 64).await?;
    println!(
        "loaded {} demo products ({} embedded by the shards) in {:.1} s\n",
        resp.upserted,
        resp.embedded,
        started.elapsed().as_secs_f64()
    );
    anyhow::ensure!(resp.upserted as usize == n, "only {} of {n} items were acknowledged", resp.upserted);
    Ok(())
}

fn title(s: &str) {
    println!("\n== {s}");
}

pub async fn show(client: &mut Client) -> anyhow::Result<()> {
    let info = client.cluster_info(pb::ClusterInfoRequest {}).await?.into_inner();
    title("cluster");
    println!("{}", info_table(&info));

    let query = "waterproof boots for hiking in the rain";
    title(&format!("Search: \"{query}\""));
    let r = client
        .search(pb::SearchRequest {
            query: Some(pb::search_request::Query::Text(query.into())),
            k: 5,
            with_items: true,
            ..Default::default()
        })
        .await?;
    println!("{}", hits_table(r.get_ref()));

    let query = "wireless headphones";
    title(&format!("Search: \"{query}\", price <= 150 and in stock"));
    let filter = build::and(vec![build::range("price", None, Some(150.0)), build::in_stock(true)]);
    let r = client
        .search(pb::SearchRequest {
            query: Some(pb::search_request::Query::Text(query.into())),
            k: 5,
            filter: Some(filter),
            with_items: true,
        })
        .await?;
    println!("{}", hits_table(r.get_ref()));

    let anchor = "demo-0203";
    let a = client
        .get_items(pb::GetItemsRequest { ids: vec![anchor.into()], with_vectors: false, ..Default::default() })
        .await?
        .into_inner();
    let name = a.items.first().map(|i| i.title.clone()).context("demo item missing")?;
    title(&format!("SimilarItems to {anchor} \"{name}\""));
    let r = client
        .similar_items(pb::SimilarItemsRequest { id: anchor.into(), k: 5, with_items: true, ..Default::default() })
        .await?;
    println!("{}", hits_table(r.get_ref()));

    let user = "demo-shopper";
    let history = [
        ("demo-0025", pb::EventType::View),
        ("demo-0028", pb::EventType::View),
        ("demo-0159", pb::EventType::AddToCart),
    ];
    let events = history
        .iter()
        .map(|(id, t)| pb::Event { user_id: user.into(), item_id: (*id).into(), r#type: *t as i32, timestamp_ms: 0 })
        .collect();
    client.record_events(pb::RecordEventsRequest { events, ..Default::default() }).await?;
    let names = client
        .get_items(pb::GetItemsRequest {
            ids: history.iter().map(|(id, _)| (*id).to_string()).collect(),
            with_vectors: false,
            ..Default::default()
        })
        .await?
        .into_inner();
    title(&format!("Recommend for user \"{user}\" who looked at:"));
    for it in &names.items {
        println!("   - {} {}", it.id, it.title);
    }
    let r = client
        .recommend(pb::RecommendRequest { user_id: user.into(), k: 5, with_items: true, ..Default::default() })
        .await?;
    println!("{}", hits_table(r.get_ref()));
    Ok(())
}
