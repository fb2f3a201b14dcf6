//! `vitrine models switch|release`: moving every shard to another model
//! version while the cluster serves (`vitrine_shard::switch` has the
//! mechanism; docs/IMAGE-MODELS.md the procedure).

use std::time::Duration;

use clap::Subcommand;
use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::Table;
use serde_json::json;
use vitrine_proto::pb;

/// The longest a phase may take per call; the router caps deadlines there.
/// A prepare cut short keeps its progress and resumes when run again.
const PHASE_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Subcommand, Debug)]
pub enum ModelsCmd {
    /// Switch every shard to another text model version: load it beside the
    /// served one and re-embed the catalogue (prepare), make it the served
    /// one on every replica (commit), wait for queries embedded with the old
    /// version to finish (--drain-ms), then unload the old one (release).
    /// The shards' --models file must declare the new version. Searches and
    /// writes keep working throughout. Safe to run again after a failure.
    Switch {
        /// The text model to serve, `name@version` as declared in the
        /// shards' --models file.
        #[arg(long)]
        text_model: String,
        /// The image model, `name@version` (default: the one served; it
        /// cannot change in place).
        #[arg(long, default_value = "")]
        image_model: String,
        /// How long to keep the old models after the commit, for queries
        /// already embedded with them (at least the router's read timeout).
        #[arg(long, default_value_t = 2000)]
        drain_ms: u64,
        /// Leave the old models loaded after the commit (release later with
        /// `vitrine models release`).
        #[arg(long)]
        keep_old: bool,
    },
    /// Unload the models a shard holds beside the served ones: the old
    /// version after a switch, or a prepared one to abandon a switch.
    Release {
        /// Only release this text model (`name@version`); default: whichever.
        #[arg(long, default_value = "")]
        text_model: String,
    },
}

/// Each phase's answer, and whether to print JSON (at the end) instead of
/// a table per phase.
struct Phases {
    json: bool,
    done: Vec<(&'static str, pb::SwitchModelsResponse)>,
}

/// Runs a models command against the router at `addr`.
pub async fn run(addr: &str, json: bool, cmd: ModelsCmd) -> anyhow::Result<()> {
    let mut client = crate::connect(addr).await?;
    let mut phases = Phases { json, done: Vec::new() };
    let result = match cmd {
        ModelsCmd::Switch { text_model, image_model, drain_ms, keep_old } => {
            switch(&mut client, &mut phases, &text_model, &image_model, drain_ms, keep_old).await
        }
        ModelsCmd::Release { text_model } => {
            phase(&mut client, &mut phases, pb::ModelSwitchPhase::Release, &text_model, "").await.map(|_| ())
        }
    };
    if json {
        let out: Vec<_> = phases
            .done
            .iter()
            .map(|(name, r): &(&str, pb::SwitchModelsResponse)| {
                let shards: Vec<_> = r
                    .shards
                    .iter()
                    .map(|s| {
                        json!({"shard": s.shard, "replica": s.replica, "serving": s.serving, "other": s.other,
                        "other_state": s.other_state, "items": s.items, "reembedded": s.reembedded,
                        "elapsed_ms": s.elapsed_ms, "error": s.error})
                    })
                    .collect();
                json!({"phase": name, "shards": shards})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&json!({ "phases": out }))?);
    }
    result
}

async fn switch(
    client: &mut crate::Client,
    phases: &mut Phases,
    text: &str,
    image: &str,
    drain_ms: u64,
    keep_old: bool,
) -> anyhow::Result<()> {
    use pb::ModelSwitchPhase::{Commit, Prepare, Release};
    phase(client, phases, Prepare, text, image).await.map_err(|e| {
        e.context(format!(
            "prepare failed; the served models are unchanged. Run the same command again to resume, or \
             `vitrine models release --text-model {text}` to abandon the switch"
        ))
    })?;
    phase(client, phases, Commit, text, image).await.map_err(|e| {
        e.context(
            "commit failed on some replicas; every replica still answers queries of either version. Run the same \
             command again (commit is idempotent)",
        )
    })?;
    if keep_old {
        return Ok(());
    }
    tokio::time::sleep(Duration::from_millis(drain_ms)).await;
    phase(client, phases, Release, "", "").await.map(|_| ())
}

/// One phase on every replica; prints its table (unless --json) and fails
/// when any replica did.
async fn phase(
    client: &mut crate::Client,
    phases: &mut Phases,
    phase: pb::ModelSwitchPhase,
    text: &str,
    image: &str,
) -> anyhow::Result<()> {
    let name = match phase {
        pb::ModelSwitchPhase::Prepare => "prepare",
        pb::ModelSwitchPhase::Commit => "commit",
        _ => "release",
    };
    let mut req = tonic::Request::new(pb::SwitchModelsRequest {
        phase: phase as i32,
        text_model: text.to_string(),
        image_model: image.to_string(),
    });
    req.set_timeout(PHASE_TIMEOUT);
    let r = client.switch_models(req).await?.into_inner();
    if !phases.json {
        println!("{name}:\n{}", table(&r));
    }
    let failed: Vec<String> = r
        .shards
        .iter()
        .filter(|s| !s.error.is_empty())
        .map(|s| format!("shard {} replica {}: {}", s.shard, s.replica, s.error))
        .collect();
    phases.done.push((name, r));
    anyhow::ensure!(failed.is_empty(), "{name} failed on {}", failed.join("; "));
    Ok(())
}

fn table(r: &pb::SwitchModelsResponse) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(["shard", "replica", "serving", "other", "items", "re-embedded", "ms", "error"]);
    for s in &r.shards {
        let other = if s.other.is_empty() { String::new() } else { format!("{} ({})", s.other, s.other_state) };
        t.add_row(vec![
            s.shard.to_string(),
            s.replica.to_string(),
            s.serving.clone(),
            other,
            s.items.to_string(),
            s.reembedded.to_string(),
            s.elapsed_ms.to_string(),
            s.error.clone(),
        ]);
    }
    t.to_string()
}
