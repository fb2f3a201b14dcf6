//! `vitrine-shard`: one shard process.

use clap::Parser;
use vitrine_shard::{init_tracing, open, serve, shutdown_signal, ShardConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = ShardConfig::parse();
    init_tracing(config.log_json);
    let state = open(&config)?;
    serve(&config, state, shutdown_signal()).await?;
    tracing::info!("shard stopped");
    Ok(())
}
