//! `vitrine-shard`: one shard process.

use clap::Parser;
use vitrine_shard::{init_tracing, open, serve, shutdown_signal, ShardConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = ShardConfig::parse().placed()?;
    init_tracing(config.log_json);
    // Fault injection for the crash tests; does nothing unless FAILPOINTS is set.
    let _failpoints = fail::FailScenario::setup();
    if std::env::var_os("FAILPOINTS").is_some() {
        tracing::warn!("FAILPOINTS is set: fault injection is active");
    }
    let state = open(&config)?;
    serve(&config, state, shutdown_signal()).await?;
    tracing::info!("shard stopped");
    Ok(())
}
