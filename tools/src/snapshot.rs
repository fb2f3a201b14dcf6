//! `vitrine snapshot create|list|restore`: cluster snapshots through the
//! router, and point-in-time restore of a stopped shard's data directory
//! (`vitrine_shard::restore`). docs/RELIABILITY.md describes the procedure.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::Table;
use serde_json::json;
use vitrine_proto::pb;
use vitrine_shard::restore::{self, Source};

use crate::output;

#[derive(Subcommand, Debug)]
pub enum SnapshotCmd {
    /// Write a snapshot of every shard replica now and cut their write-ahead
    /// logs (the default); exits non-zero when any replica failed.
    Create,
    /// The snapshots every shard replica keeps, through the router; with
    /// --data-dir, those in one (possibly stopped) shard's data directory.
    List {
        /// A shard's data directory, read directly instead of asking the router.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// With --data-dir: also check each snapshot's data against its
        /// manifest (reads every snapshot whole).
        #[arg(long, requires = "data_dir")]
        verify: bool,
    },
    /// Make a snapshot the state a STOPPED shard starts from: verified, then
    /// every log segment and other snapshot is moved into
    /// `restore-aside-<ms>/` (nothing is deleted). Restore every replica of
    /// every shard with the cluster stopped, or peers hand newer writes back.
    Restore {
        /// The stopped shard's data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// A snapshot the directory keeps (see `snapshot list`).
        #[arg(long, required_unless_present = "from", conflicts_with = "from")]
        seq: Option<u64>,
        /// A snapshot directory copied from a backup (holding `data.log`
        /// and `manifest.json`).
        #[arg(long)]
        from: Option<PathBuf>,
    },
}

/// Runs a snapshot command against the router at `addr` (when it needs one).
pub async fn run(addr: &str, json: bool, cmd: SnapshotCmd) -> anyhow::Result<()> {
    match cmd {
        SnapshotCmd::Create => create(addr, json).await,
        SnapshotCmd::List { data_dir: None, .. } => list_cluster(addr, json).await,
        SnapshotCmd::List { data_dir: Some(dir), verify } => list_dir(&dir, verify, json),
        SnapshotCmd::Restore { data_dir, seq, from } => {
            let source = match (seq, from) {
                (Some(seq), None) => Source::Kept(seq),
                (None, Some(from)) => Source::Copy(from),
                // clap requires exactly one of them.
                _ => anyhow::bail!("give --seq or --from"),
            };
            let done =
                restore::restore(&data_dir, &source).with_context(|| format!("restoring {}", data_dir.display()))?;
            let m = &done.manifest;
            let aside = done.aside.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
            if json {
                let out =
                    json!({"seq": m.seq, "items": m.items, "users": m.users, "moved": done.moved, "aside": aside});
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                println!(
                    "{} will start from snapshot {} ({} items, {} users); {} log segments and snapshots moved to {}",
                    data_dir.display(),
                    m.seq,
                    m.items,
                    m.users,
                    done.moved,
                    if aside.is_empty() { "nowhere (none found)" } else { &aside }
                );
            }
            Ok(())
        }
    }
}

async fn create(addr: &str, json: bool) -> anyhow::Result<()> {
    let mut client = crate::connect(addr).await?;
    let r = client.create_snapshot(pb::CreateSnapshotRequest {}).await?.into_inner();
    if json {
        let shards: Vec<_> = r
            .shards
            .iter()
            .map(|s| {
                json!({"shard": s.shard, "replica": s.replica, "seq": s.seq, "items": s.items, "users": s.users,
                "bytes": s.bytes, "elapsed_ms": s.elapsed_ms, "error": s.error})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&json!({ "shards": shards }))?);
    } else {
        println!("{}", output::snapshot_table(&r));
    }
    let failed = failed(r.shards.iter().map(|s| (s.shard, s.replica, s.error.as_str())));
    anyhow::ensure!(failed.is_empty(), "snapshot failed on {failed}");
    Ok(())
}

/// "shard S replica R, …" for each (shard, replica, error) with an error.
fn failed<'a>(replicas: impl Iterator<Item = (u32, u32, &'a str)>) -> String {
    let failed: Vec<String> =
        replicas.filter(|(_, _, e)| !e.is_empty()).map(|(s, r, _)| format!("shard {s} replica {r}")).collect();
    failed.join(", ")
}

fn snapshot_json(s: &pb::StoredSnapshot) -> serde_json::Value {
    json!({"seq": s.seq, "created_unix_ms": s.created_unix_ms, "items": s.items, "users": s.users,
        "bytes": s.bytes, "path": s.path, "error": s.error})
}

fn table(rows: impl IntoIterator<Item = (String, pb::StoredSnapshot)>) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(["where", "seq", "created (UTC)", "items", "users", "bytes", "error"]);
    for (who, s) in rows {
        let created = chrono::DateTime::from_timestamp_millis(s.created_unix_ms as i64)
            .filter(|_| s.created_unix_ms > 0)
            .map(|d| d.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_default();
        t.add_row(vec![
            who,
            s.seq.to_string(),
            created,
            s.items.to_string(),
            s.users.to_string(),
            s.bytes.to_string(),
            s.error,
        ]);
    }
    t.to_string()
}

async fn list_cluster(addr: &str, json: bool) -> anyhow::Result<()> {
    let mut client = crate::connect(addr).await?;
    let r = client.list_snapshots(pb::ListSnapshotsRequest {}).await?.into_inner();
    if json {
        let shards: Vec<_> = r
            .shards
            .iter()
            .map(|s| {
                json!({"shard": s.shard, "replica": s.replica, "error": s.error,
                "snapshots": s.snapshots.iter().map(snapshot_json).collect::<Vec<_>>()})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&json!({ "shards": shards }))?);
    } else {
        let mut rows = Vec::new();
        for s in &r.shards {
            let who = format!("{}/{}", s.shard, s.replica);
            if !s.error.is_empty() {
                rows.push((who.clone(), pb::StoredSnapshot { error: s.error.clone(), ..Default::default() }));
            }
            rows.extend(s.snapshots.iter().map(|snap| (who.clone(), snap.clone())));
        }
        println!("{}", table(rows));
    }
    let failed = failed(r.shards.iter().map(|s| (s.shard, s.replica, s.error.as_str())));
    anyhow::ensure!(failed.is_empty(), "could not list {failed}");
    Ok(())
}

fn list_dir(dir: &std::path::Path, verify: bool, json: bool) -> anyhow::Result<()> {
    let listed = restore::list(dir, verify).with_context(|| format!("listing {}", dir.display()))?;
    let rows: Vec<pb::StoredSnapshot> = listed.iter().map(restore::Listed::to_wire).collect();
    let bad = rows.iter().filter(|r| !r.error.is_empty()).count();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"snapshots": rows.iter().map(snapshot_json).collect::<Vec<_>>()}))?
        );
    } else {
        println!("{}", table(rows.into_iter().map(|r| (dir.display().to_string(), r))));
    }
    anyhow::ensure!(bad == 0, "{bad} snapshot(s) in {} did not check out", dir.display());
    Ok(())
}
