//! `vitrine-router`: the public entry point of a Vitrine cluster.

use clap::Parser;
use vitrine_router::{build, serve, RouterConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = RouterConfig::parse();
    init_tracing(config.log_json);
    let router = build(&config)?;
    serve(&config, router, shutdown_signal()).await?;
    tracing::info!("router stopped");
    Ok(())
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
    }
}
