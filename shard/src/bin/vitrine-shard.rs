//! `vitrine-shard`: one shard process.

use clap::Parser;
use vitrine_shard::{open, serve, shutdown_signal, ShardConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = ShardConfig::parse().placed()?;
    let t = &config.telemetry;
    // Spans from every replica of every shard meet in one trace; these
    // attributes tell them apart.
    let otlp = t.otlp().map(|o| {
        o.attribute("vitrine.shard", i64::from(config.shard_id)).attribute("vitrine.replica", i64::from(config.replica))
    });
    let telemetry = vitrine_telemetry::init("vitrine-shard", t.log_json, otlp)?;
    // Fault injection for the crash tests; does nothing unless FAILPOINTS is set.
    let _failpoints = fail::FailScenario::setup();
    if std::env::var_os("FAILPOINTS").is_some() {
        tracing::warn!("FAILPOINTS is set: fault injection is active");
    }
    let state = open(&config)?;
    serve(&config, state, shutdown_signal()).await?;
    tracing::info!("shard stopped");
    // Sends the spans still queued (an error exit drops the guard, which does the same).
    telemetry.shutdown();
    Ok(())
}
