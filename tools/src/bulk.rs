//! Bulk writes to the router with a bounded number of requests in flight:
//! items (`UpsertItems`) and behavioural signals (`UpdateSignals`).

use std::future::Future;

use anyhow::Context;
use futures::stream::{self, StreamExt, TryStreamExt};
use vitrine_proto::pb;

use crate::progress::Progress;
use crate::signals::SignalsRecord;
use crate::Client;

/// Items per UpsertItems call: each batch is embedded by the shards before it
/// is acknowledged, so small batches keep every call well inside the write
/// deadline and spread the work over the shards.
pub const ITEM_BATCH: usize = 64;
/// Signal entries per UpdateSignals call: with 100 neighbours each, 500
/// entries are under 1 MiB, far from the 16 MiB message limit.
pub const SIGNAL_BATCH: usize = 500;
/// Calls in flight: enough to keep two shards busy while one batch is being
/// logged, few enough not to starve searches running at the same time.
pub const CONCURRENCY: usize = 4;

/// Converts a signals record to the wire message.
pub fn signals_to_wire(r: SignalsRecord) -> pb::ItemSignals {
    pb::ItemSignals {
        id: r.id,
        neighbours: r.neighbours.into_iter().map(|n| pb::Neighbour { id: n.id, weight: n.weight }).collect(),
        popularity: r.popularity,
    }
}

/// Sends `all` in batches of `batch` with at most `concurrency` calls in
/// flight; returns each call's answer. Stops at the first error (every write
/// here is idempotent, so re-running the command is the retry).
async fn in_batches<T, R, F, Fut>(
    all: Vec<T>,
    batch: usize,
    concurrency: usize,
    label: &str,
    send: F,
) -> anyhow::Result<Vec<R>>
where
    F: Fn(Vec<T>) -> Fut,
    Fut: Future<Output = anyhow::Result<R>>,
{
    let mut progress = Progress::new(label, all.len());
    let mut batches = Vec::new();
    let mut it = all.into_iter().peekable();
    while it.peek().is_some() {
        batches.push(it.by_ref().take(batch.max(1)).collect::<Vec<T>>());
    }
    let mut answers = stream::iter(batches)
        .map(|b| {
            let n = b.len();
            let call = send(b);
            async move { call.await.map(|r| (n, r)) }
        })
        .buffer_unordered(concurrency.max(1));
    let mut out = Vec::new();
    while let Some((n, r)) = answers.try_next().await? {
        progress.add(n);
        out.push(r);
    }
    Ok(out)
}

/// Upserts items; returns the summed response.
pub async fn upsert_items(
    client: &Client,
    items: Vec<pb::Item>,
    batch: usize,
    concurrency: usize,
) -> anyhow::Result<pb::UpsertItemsResponse> {
    let answers = in_batches(items, batch, concurrency, "items", |items| {
        let mut c = client.clone();
        async move {
            let first = items.first().map(|i| i.id.clone()).unwrap_or_default();
            let r = c
                .upsert_items(pb::UpsertItemsRequest { items, ..Default::default() })
                .await
                .with_context(|| format!("UpsertItems (batch starting at item {first:?})"))?;
            Ok(r.into_inner())
        }
    })
    .await?;
    Ok(answers.into_iter().fold(pb::UpsertItemsResponse::default(), |a, r| pb::UpsertItemsResponse {
        upserted: a.upserted + r.upserted,
        embedded: a.embedded + r.embedded,
        ..Default::default()
    }))
}

/// Replaces the signals of the listed items; returns how many entries the
/// router stored.
pub async fn update_signals(
    client: &Client,
    signals: Vec<pb::ItemSignals>,
    batch: usize,
    concurrency: usize,
) -> anyhow::Result<u64> {
    let answers = in_batches(signals, batch, concurrency, "signals", |signals| {
        let mut c = client.clone();
        async move {
            let first = signals.first().map(|s| s.id.clone()).unwrap_or_default();
            let r =
                c.update_signals(pb::UpdateSignalsRequest { signals, ..Default::default() }).await.map_err(|s| {
                    let hint = if s.code() == tonic::Code::Unimplemented {
                        " (this router predates UpdateSignals; rebuild it)"
                    } else {
                        ""
                    };
                    anyhow::Error::new(s).context(format!("UpdateSignals (batch starting at item {first:?}){hint}"))
                })?;
            Ok(u64::from(r.into_inner().updated))
        }
    })
    .await?;
    Ok(answers.into_iter().sum())
}
