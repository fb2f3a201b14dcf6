//! Printing results as a table for people or JSON for scripts.

use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, Table};
use serde_json::{json, Value};
use vitrine_proto::pb;

pub fn item_json(it: &pb::Item) -> Value {
    let a = it.attributes.clone().unwrap_or_default();
    json!({
        "id": it.id, "title": it.title, "description": it.description,
        "category": a.category, "brand": a.brand, "price": a.price, "in_stock": a.in_stock,
        "tags": a.tags, "strings": a.strings, "numbers": a.numbers,
    })
}

pub fn response_json(r: &pb::SearchResponse) -> Value {
    let c = r.coverage.unwrap_or_default();
    json!({
        "hits": r.hits.iter().map(|h| json!({
            "id": h.id, "score": h.score, "shard": h.shard,
            "item": h.item.as_ref().map(item_json),
            "propensity": h.propensity,
            "explanation": h.explanation.as_ref().map(|e| json!({
                "source": e.source, "because_of": e.because_of, "content": e.content, "behaviour": e.behaviour,
                "popularity": e.popularity, "freshness": e.freshness, "rules": e.rules, "feedback": e.feedback,
                "trending": e.trending,
            })),
        })).collect::<Vec<_>>(),
        "coverage": {"shards_asked": c.shards_asked, "shards_answered": c.shards_answered, "degraded": c.degraded},
    })
}

/// A table of hits with product names, plus a coverage line.
pub fn hits_table(r: &pb::SearchResponse) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    let explained = r.hits.iter().any(|h| h.explanation.is_some());
    let mut header = vec!["#", "score", "id", "title", "category", "price"];
    if explained {
        header.extend(["why", "because of"]);
    }
    t.set_header(header);
    for (i, h) in r.hits.iter().enumerate() {
        let a = h.item.as_ref().and_then(|it| it.attributes.clone()).unwrap_or_default();
        let title = h.item.as_ref().map(|it| it.title.as_str()).unwrap_or("");
        let mut row = vec![
            Cell::new(i + 1).set_alignment(CellAlignment::Right),
            Cell::new(format!("{:.3}", h.score)).set_alignment(CellAlignment::Right),
            Cell::new(&h.id),
            Cell::new(truncate(title, 64)),
            Cell::new(a.category),
            Cell::new(a.price.map(|p| format!("{p:.2}")).unwrap_or_default()).set_alignment(CellAlignment::Right),
        ];
        if let Some(e) = h.explanation.as_ref() {
            row.push(Cell::new(format!(
                "{} (content {:.2}, behaviour {:.2}, popularity {:.2}, trending {:.2}, rules {:.2}, feedback {:.2})",
                e.source, e.content, e.behaviour, e.popularity, e.trending, e.rules, e.feedback
            )));
            row.push(Cell::new(&e.because_of));
        }
        t.add_row(row);
    }
    let c = r.coverage.unwrap_or_default();
    format!(
        "{t}\ncoverage: {}/{} shards{}",
        c.shards_answered,
        c.shards_asked,
        if c.degraded { " (DEGRADED: results may be incomplete)" } else { "" }
    )
}

pub fn info_table(r: &pb::ClusterInfoResponse) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header([
        "shard",
        "replica",
        "address",
        "state",
        "items",
        "deleted ids",
        "tombstones",
        "users",
        "vshards",
        "models",
        "provider",
        "wal seq",
        "snapshot seq",
        "wal bytes",
    ]);
    for s in &r.shards {
        let state = pb::ShardState::try_from(s.state)
            .map(|s| s.as_str_name().trim_start_matches("SHARD_STATE_").to_string())
            .unwrap_or_default();
        t.add_row(vec![
            s.shard.to_string(),
            s.replica.to_string(),
            s.address.clone(),
            state,
            s.items.to_string(),
            s.deleted_ids.to_string(),
            s.tombstones.to_string(),
            s.users.to_string(),
            s.virtual_shards.to_string(),
            // The set with versions; shards from before sets existed have
            // only the text model's name.
            match (s.model_set.is_empty(), s.other_model_set.is_empty()) {
                (true, _) => s.model.clone(),
                (false, true) => s.model_set.clone(),
                // During a model switch: the other set and what it is for.
                (false, false) => format!("{} (+ {} {})", s.model_set, s.other_model_set, s.other_model_state),
            },
            s.execution_provider.clone(),
            s.wal_last_seq.to_string(),
            s.snapshot_seq.to_string(),
            s.wal_bytes.to_string(),
        ]);
    }
    let fusion = r.shards.iter().map(|s| s.fusion.as_str()).find(|f| !f.is_empty()).unwrap_or("text only");
    format!("{t}\n{} virtual shards, dimension {}, fusion: {fusion}", r.virtual_shards, r.dimension)
}

/// The result of `vitrine snapshot`.
pub fn snapshot_table(r: &pb::CreateSnapshotResponse) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(["shard", "replica", "seq", "items", "users", "bytes", "ms", "error"]);
    for s in &r.shards {
        t.add_row(vec![
            s.shard.to_string(),
            s.replica.to_string(),
            s.seq.to_string(),
            s.items.to_string(),
            s.users.to_string(),
            s.bytes.to_string(),
            s.elapsed_ms.to_string(),
            s.error.clone(),
        ]);
    }
    t.to_string()
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n - 1).collect::<String>())
    }
}
