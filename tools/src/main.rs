//! `vitrine`: run a local cluster, load catalogues, and query from the shell.
#![forbid(unsafe_code)]

mod catalog_file;
mod cluster;
mod demo;
mod output;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tonic::transport::{Channel, Endpoint};
use vitrine_proto::filter::build;
use vitrine_proto::pb::{self, vitrine_client::VitrineClient};

#[derive(Parser)]
#[command(name = "vitrine", version, about = "Vitrine: recommendations and search over gRPC")]
struct Cli {
    /// Router address.
    #[arg(long, global = true, env = "VITRINE_ADDR", default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

/// Filters shared by the query commands.
#[derive(clap::Args, Debug, Default)]
struct FilterArgs {
    /// Only this category (repeat for any of several).
    #[arg(long)]
    category: Vec<String>,
    /// Only this brand (repeat for any of several).
    #[arg(long)]
    brand: Vec<String>,
    /// Minimum price.
    #[arg(long)]
    min_price: Option<f64>,
    /// Maximum price.
    #[arg(long)]
    max_price: Option<f64>,
    /// Only items in stock.
    #[arg(long)]
    in_stock: bool,
    /// Only items with this tag.
    #[arg(long)]
    tag: Option<String>,
}

impl FilterArgs {
    fn to_filter(&self) -> Option<pb::Filter> {
        fn strs(v: &[String]) -> Vec<&str> {
            v.iter().map(String::as_str).collect()
        }
        let mut all = Vec::new();
        if !self.category.is_empty() {
            all.push(build::matches("category", &strs(&self.category)));
        }
        if !self.brand.is_empty() {
            all.push(build::matches("brand", &strs(&self.brand)));
        }
        if self.min_price.is_some() || self.max_price.is_some() {
            all.push(build::range("price", self.min_price, self.max_price));
        }
        if self.in_stock {
            all.push(build::in_stock(true));
        }
        if let Some(t) = &self.tag {
            all.push(build::tag(t));
        }
        (!all.is_empty()).then(|| build::and(all))
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a local cluster (router + shards as separate processes), load the
    /// demo catalogue and print example answers; stays up until Ctrl-C.
    Cluster {
        /// Number of shards.
        #[arg(long, default_value_t = 2)]
        shards: u32,
        /// Router port; shard i listens on port + 10 + i.
        #[arg(long, default_value_t = 50051)]
        port: u16,
        /// Data directory (WALs and logs).
        #[arg(long, default_value = ".cache/cluster")]
        data_dir: PathBuf,
        /// Text model directory.
        #[arg(long, default_value = ".cache/models/all-minilm-l6-v2")]
        model_dir: PathBuf,
        /// ONNX Runtime library.
        #[arg(long, default_value = ".cache/models/libonnxruntime.so.1.31.1")]
        ort_lib: PathBuf,
        /// Do not load the demo catalogue.
        #[arg(long)]
        no_demo: bool,
        /// Stop the cluster after the demo instead of staying up.
        #[arg(long)]
        exit_after_demo: bool,
    },
    /// Load items from a JSONL catalogue (see demo/README.md for the format).
    Load {
        file: PathBuf,
        /// Items per upsert batch.
        #[arg(long, default_value_t = 256)]
        batch: usize,
    },
    /// Search by text.
    Search {
        text: String,
        #[arg(short, default_value_t = 10)]
        k: u32,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Items similar to an item.
    Similar {
        id: String,
        #[arg(short, default_value_t = 10)]
        k: u32,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Recommendations for a user and/or a history.
    Recommend {
        /// User id whose recorded events to use.
        #[arg(long, default_value = "")]
        user: String,
        /// Item ids viewed, oldest first (comma-separated).
        #[arg(long, value_delimiter = ',')]
        history: Vec<String>,
        /// Liked item ids.
        #[arg(long, value_delimiter = ',')]
        positive: Vec<String>,
        /// Disliked item ids.
        #[arg(long, value_delimiter = ',')]
        negative: Vec<String>,
        #[arg(short, default_value_t = 10)]
        k: u32,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Record an event (view, click, cart, purchase).
    Event {
        #[arg(long)]
        user: String,
        #[arg(long)]
        item: String,
        #[arg(long, value_parser = ["view", "click", "cart", "purchase"], default_value = "view")]
        r#type: String,
    },
    /// Cluster topology and health.
    Info,
}

/// Connects to the router.
pub async fn connect(addr: &str) -> anyhow::Result<VitrineClient<Channel>> {
    let channel = Endpoint::from_shared(addr.to_string())
        .with_context(|| format!("bad address {addr}"))?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    Ok(VitrineClient::new(channel).max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20))
}

/// Streams items to the router in batches.
pub async fn upload(
    client: &mut VitrineClient<Channel>,
    items: Vec<pb::Item>,
    batch: usize,
) -> anyhow::Result<pb::UpsertItemsResponse> {
    let mut batches = Vec::new();
    let mut it = items.into_iter().peekable();
    while it.peek().is_some() {
        batches.push(pb::UpsertItemsRequest { items: it.by_ref().take(batch.max(1)).collect() });
    }
    let resp = client.upsert_items_stream(tokio_stream::iter(batches)).await.context("upserting")?;
    Ok(resp.into_inner())
}

fn print_hits(json: bool, r: &pb::SearchResponse) {
    if json {
        println!("{}", serde_json::to_string_pretty(&output::response_json(r)).unwrap_or_default());
    } else {
        println!("{}", output::hits_table(r));
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Cmd::Cluster { shards, port, data_dir, model_dir, ort_lib, no_demo, exit_after_demo } => {
            let bin_dir = std::env::current_exe()?.parent().context("binary has no directory")?.to_path_buf();
            let opts = cluster::ClusterOptions { shards, port, data_dir, model_dir, ort_lib, bin_dir };
            println!("starting a router and {shards} shards (logs in {}) ...", opts.data_dir.join("logs").display());
            let cluster = cluster::LocalCluster::start(&opts).await?;
            let addr = format!("http://{}", cluster.router_addr);
            let result = async {
                let mut client = connect(&addr).await?;
                if !no_demo {
                    demo::load(&mut client).await?;
                    demo::show(&mut client).await?;
                }
                anyhow::Ok(())
            }
            .await;
            if let Err(e) = result {
                cluster.stop().await;
                return Err(e);
            }
            if exit_after_demo {
                cluster.stop().await;
                return Ok(());
            }
            println!(
                "\nVitrine is up: gRPC router at {} (service vitrine.v1.Vitrine, reflection enabled).",
                cluster.router_addr
            );
            println!("Try:  target/release/vitrine search \"linen summer dress\" --max-price 80");
            println!("      target/release/vitrine recommend --history demo-0228,demo-0232");
            println!("Press Ctrl-C to stop.");
            let mut cluster = cluster;
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
                _ = hup.recv() => {}
                msg = cluster.wait_any_exit() => eprintln!("{msg}\nstopping the rest of the cluster"),
            }
            println!("stopping ...");
            cluster.stop().await;
        }
        Cmd::Load { file, batch } => {
            let items = catalog_file::read(&file)?;
            let n = items.len();
            let mut client = connect(&cli.addr).await?;
            let started = std::time::Instant::now();
            let r = upload(&mut client, items, batch).await?;
            let secs = started.elapsed().as_secs_f64();
            println!(
                "loaded {} of {n} items ({} embedded) in {secs:.1} s ({:.0} items/s)",
                r.upserted,
                r.embedded,
                r.upserted as f64 / secs
            );
        }
        Cmd::Search { text, k, filter } => {
            let mut client = connect(&cli.addr).await?;
            let r = client
                .search(pb::SearchRequest {
                    query: Some(pb::search_request::Query::Text(text)),
                    k,
                    filter: filter.to_filter(),
                    with_items: true,
                })
                .await?;
            print_hits(cli.json, r.get_ref());
        }
        Cmd::Similar { id, k, filter } => {
            let mut client = connect(&cli.addr).await?;
            let r = client
                .similar_items(pb::SimilarItemsRequest { id, k, filter: filter.to_filter(), with_items: true })
                .await?;
            print_hits(cli.json, r.get_ref());
        }
        Cmd::Recommend { user, history, positive, negative, k, filter } => {
            let mut client = connect(&cli.addr).await?;
            let r = client
                .recommend(pb::RecommendRequest {
                    user_id: user,
                    history,
                    positive,
                    negative,
                    k,
                    filter: filter.to_filter(),
                    include_seen: false,
                    with_items: true,
                })
                .await?;
            print_hits(cli.json, r.get_ref());
        }
        Cmd::Event { user, item, r#type } => {
            let t = match r#type.as_str() {
                "click" => pb::EventType::Click,
                "cart" => pb::EventType::AddToCart,
                "purchase" => pb::EventType::Purchase,
                _ => pb::EventType::View,
            };
            let mut client = connect(&cli.addr).await?;
            let r = client
                .record_events(pb::RecordEventsRequest {
                    events: vec![pb::Event { user_id: user, item_id: item, r#type: t as i32, timestamp_ms: 0 }],
                })
                .await?;
            println!("recorded {}", r.get_ref().recorded);
        }
        Cmd::Info => {
            let mut client = connect(&cli.addr).await?;
            let r = client.cluster_info(pb::ClusterInfoRequest {}).await?.into_inner();
            if cli.json {
                let shards: Vec<_> = r
                    .shards
                    .iter()
                    .map(|s| serde_json::json!({"shard": s.shard, "address": s.address, "state": s.state, "items": s.items,
                        "tombstones": s.tombstones, "users": s.users, "model": s.model, "execution_provider": s.execution_provider,
                        "virtual_shards": s.virtual_shards}))
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({"shards": shards, "virtual_shards": r.virtual_shards, "dimension": r.dimension})
                    )?
                );
            } else {
                println!("{}", output::info_table(&r));
            }
        }
    }
    Ok(())
}
