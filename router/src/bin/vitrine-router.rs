//! `vitrine-router`: the public entry point of a Vitrine cluster.

use clap::Parser;
use vitrine_router::{build, serve, RouterConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = RouterConfig::parse();
    let t = &config.telemetry;
    let telemetry = vitrine_telemetry::init("vitrine-router", t.log_json, t.otlp())?;
    let router = build(&config)?;
    serve(&config, router, shutdown_signal()).await?;
    tracing::info!("router stopped");
    // Sends the spans still queued (an error exit drops the guard, which does the same).
    telemetry.shutdown();
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
    }
}
