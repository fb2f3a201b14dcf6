//! `vitrine`: run a local cluster, load catalogues, and query from the shell.
#![forbid(unsafe_code)]

mod bulk;
mod catalog_file;
mod cluster;
mod demo;
mod embed;
mod eval;
mod load;
mod models;
mod output;
mod progress;
mod signals;
mod snapshot;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use vitrine_proto::filter::build;
use vitrine_proto::pb::{self, vitrine_client::VitrineClient};

#[derive(Parser)]
#[command(name = "vitrine", version, about = "Vitrine: recommendations and search over gRPC")]
struct Cli {
    /// Router address (https://... for a router with TLS; see --ca).
    #[arg(long, global = true, env = "VITRINE_ADDR", default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// API key, sent as `authorization: Bearer <key>` to a router that
    /// requires keys. Prefer the environment variable: a flag shows in `ps`.
    #[arg(long, global = true, env = "VITRINE_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// PEM CA certificate to trust for an https:// address (the cluster's
    /// CA; the system's roots are not used).
    #[arg(long, global = true, env = "VITRINE_CA")]
    ca: Option<PathBuf>,
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

/// Default text model directory of local clusters (see scripts/fetch-models.sh).
const DEFAULT_MODEL_DIR: &str = ".cache/models/all-minilm-l6-v2";
/// Default ONNX Runtime library of local clusters.
const DEFAULT_ORT_LIB: &str = ".cache/models/libonnxruntime.so.1.31.1";

/// Parameters of the co-visitation fit (`train` and `eval`).
#[derive(clap::Args, Debug)]
struct TrainFlags {
    /// How many following items count as picked next to an item.
    #[arg(long, default_value_t = signals::TrainParams::default().window)]
    window: usize,
    /// Weight factor per step of distance (the next item counts 1).
    #[arg(long, default_value_t = signals::TrainParams::default().decay)]
    decay: f64,
    /// Share of each forward pair also credited backwards.
    #[arg(long, default_value_t = signals::TrainParams::default().backward)]
    backward: f64,
    /// Neighbours kept per item.
    #[arg(long, default_value_t = signals::TrainParams::default().max_neighbours)]
    max_neighbours: usize,
}

impl TrainFlags {
    fn params(&self) -> signals::TrainParams {
        signals::TrainParams {
            window: self.window,
            decay: self.decay,
            backward: self.backward,
            max_neighbours: self.max_neighbours,
        }
    }
}

/// Flags of `vitrine train`.
#[derive(clap::Args, Debug)]
struct TrainArgs {
    /// Data set directory with items.tsv and sequences.txt.
    #[arg(long)]
    data: PathBuf,
    /// Write the signals here, one JSON object per item and line.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Send the signals to the router with UpdateSignals.
    #[arg(long)]
    upload: bool,
    #[command(flatten)]
    params: TrainFlags,
}

/// Flags of `vitrine eval`.
#[derive(clap::Args, Debug)]
struct EvalArgs {
    /// Data set directory with items.tsv and sequences.txt.
    #[arg(long)]
    data: PathBuf,
    /// Evaluate only this many users (a seeded subset); signals are still
    /// fitted on every user's training part.
    #[arg(long)]
    users: Option<usize>,
    /// Seed of every random choice (user subset, negatives, held-out items).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Shards of the local cluster.
    #[arg(long, default_value_t = 2)]
    shards: u32,
    /// Router port of the local cluster; shard i listens on port + 10 + i.
    /// Not 50051, so that it can run beside `vitrine cluster`.
    #[arg(long, default_value_t = 50151)]
    port: u16,
    /// Evaluate this running router instead of starting a local cluster.
    /// Its signals are overwritten with the evaluation's.
    #[arg(long)]
    router: Option<String>,
    /// With --router: the catalogue is already loaded; do not upsert it.
    #[arg(long, requires = "router")]
    skip_items: bool,
    /// Recommend calls in flight.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Depth of each full-ranking list (at least 20, for HR@20).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(20..=1000))]
    k: u32,
    /// Deadline of each Recommend call, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// Skip the sampled protocol (target + 99 negatives).
    #[arg(long)]
    skip_sampled: bool,
    /// Evaluate only the "full" configuration.
    #[arg(long)]
    skip_ablation: bool,
    /// Skip the cold-start protocol.
    #[arg(long)]
    skip_cold: bool,
    /// Permute targets across users (an honesty check: results must fall to chance).
    #[arg(long)]
    shuffle_targets: bool,
    /// Validation split: predict each user's second-to-last item from the
    /// items before it, never looking at the last one. Tune on this, report
    /// the default (test) split.
    #[arg(long)]
    validation: bool,
    /// Also write the full report as JSON to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,
    /// Text model directory of the local cluster.
    #[arg(long, default_value = DEFAULT_MODEL_DIR)]
    model_dir: PathBuf,
    /// ONNX Runtime library of the local cluster.
    #[arg(long, default_value = DEFAULT_ORT_LIB)]
    ort_lib: PathBuf,
    #[command(flatten)]
    params: TrainFlags,
}

impl EvalArgs {
    fn options(self) -> anyhow::Result<eval::EvalOptions> {
        let target = match self.router {
            Some(addr) => eval::Target::Router(addr),
            None => eval::Target::Local(eval::LocalSpec {
                shards: self.shards,
                port: self.port,
                model_dir: self.model_dir,
                ort_lib: self.ort_lib,
                bin_dir: bin_dir()?,
            }),
        };
        Ok(eval::EvalOptions {
            data: self.data,
            target,
            users: self.users,
            seed: self.seed,
            k: self.k,
            concurrency: self.concurrency,
            timeout: Duration::from_millis(self.timeout_ms),
            load_items: !self.skip_items,
            sampled: !self.skip_sampled,
            ablation: !self.skip_ablation,
            cold: !self.skip_cold,
            shuffle_targets: self.shuffle_targets,
            validation: self.validation,
            train: self.params.params(),
        })
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
        /// Copies of each shard (docs/RELIABILITY.md, Replication).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
        replicas: u32,
        /// Router port; shard process p listens on port + 10 + p.
        #[arg(long, default_value_t = 50051)]
        port: u16,
        /// Data directory (WALs and logs).
        #[arg(long, default_value = ".cache/cluster")]
        data_dir: PathBuf,
        /// Text model directory.
        #[arg(long, default_value = DEFAULT_MODEL_DIR)]
        model_dir: PathBuf,
        /// ONNX Runtime library.
        #[arg(long, default_value = DEFAULT_ORT_LIB)]
        ort_lib: PathBuf,
        /// Do not load the demo catalogue.
        #[arg(long)]
        no_demo: bool,
        /// Stop the cluster after the demo instead of staying up.
        #[arg(long)]
        exit_after_demo: bool,
        /// Serve Prometheus metrics: the router's on this port, shard process
        /// p's on port + 1 + p (all on 127.0.0.1, at /metrics).
        #[arg(long)]
        metrics_port: Option<u16>,
    },
    /// Bulk-load a catalogue (JSONL, CSV/TSV, Parquet, or .npy vectors with
    /// --ids): batched, concurrent, retried, resumable from a checkpoint.
    /// Exit codes: 0 all loaded, 1 error, 2 some records skipped or failed,
    /// 3 interrupted (run again to resume). See docs/OPERATIONS.md.
    Load(load::LoadArgs),
    /// Embed a catalogue offline with the shards' text model and write the
    /// vectors as Parquet or .npy + .ids, for `vitrine load` elsewhere.
    Embed(embed::EmbedArgs),
    /// Search by text, by an image file (`--image`), or by both.
    Search {
        /// The query text (optional with --image).
        #[arg(required_unless_present = "image")]
        text: Option<String>,
        /// A JPEG, PNG or WebP file to search by (needs an image model on
        /// the shards: `--image-model-dir`).
        #[arg(long)]
        image: Option<std::path::PathBuf>,
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
        /// Say why each item is here (source, history item, score terms).
        #[arg(long)]
        explain: bool,
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
        /// Say why each item is here (source, history item, score terms).
        #[arg(long)]
        explain: bool,
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
    /// Cluster status: topology, each shard's health, items, users, model
    /// and execution provider, WAL and snapshot position. Also `status`.
    #[command(alias = "status")]
    Info,
    /// Snapshots: `create` (the default) writes one on every shard replica
    /// now, `list` shows what they keep, `restore` rolls a stopped shard's
    /// data directory back to one (docs/RELIABILITY.md).
    Snapshot {
        #[command(subcommand)]
        action: Option<snapshot::SnapshotCmd>,
    },
    /// Model versions: `switch` moves every shard to another text model
    /// version while the cluster serves (load beside, re-embed, commit,
    /// release); `release` unloads the other version.
    Models {
        #[command(subcommand)]
        action: models::ModelsCmd,
    },
    /// Learn behavioural signals (co-visitation neighbours, popularity) from
    /// every user's full sequence in a data set (items.tsv + sequences.txt),
    /// and write them as JSONL and/or upload them to the router (--addr).
    Train(TrainArgs),
    /// Measure recommendation quality (leave-one-out) through gRPC: fit signals
    /// on the training split, load a cluster, replay every user's history.
    /// Prints a table (or JSON with --json).
    Eval(EvalArgs),
}

/// A router client that sends the API key, if one was given.
pub type Client = VitrineClient<InterceptedService<Channel, Credentials>>;

/// The API key and CA of the command line (`--api-key`, `--ca`), set once
/// in `main` and used by every [`connect`]: a process talks to one cluster.
static CREDENTIALS: OnceLock<(Credentials, Option<PathBuf>)> = OnceLock::new();

/// Adds `authorization: Bearer <key>` to every call when there is a key.
#[derive(Clone, Default)]
pub struct Credentials {
    bearer: Option<MetadataValue<Ascii>>,
}

impl Credentials {
    fn new(api_key: Option<&str>) -> anyhow::Result<Self> {
        let bearer = api_key
            .map(|k| {
                format!("Bearer {}", k.trim())
                    .parse()
                    .map_err(|_| anyhow::anyhow!("the API key is not printable ASCII"))
            })
            .transpose()?;
        Ok(Self { bearer })
    }
}

impl tonic::service::Interceptor for Credentials {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(b) = &self.bearer {
            request.metadata_mut().insert("authorization", b.clone());
        }
        Ok(request)
    }
}

/// Connects to the router: TLS trusting `--ca` for https:// addresses, and
/// the `--api-key` on every call.
pub async fn connect(addr: &str) -> anyhow::Result<Client> {
    let (credentials, ca) = CREDENTIALS.get().cloned().unwrap_or_default();
    let mut endpoint = Endpoint::from_shared(addr.to_string())
        .with_context(|| format!("bad address {addr}"))?
        .connect_timeout(Duration::from_secs(2));
    if addr.starts_with("https://") {
        let ca =
            ca.context("an https:// address needs --ca (or VITRINE_CA): the CA that signed the router's certificate")?;
        let pem = std::fs::read(&ca).with_context(|| format!("reading {}", ca.display()))?;
        endpoint = endpoint.tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))?;
    }
    let channel = endpoint.connect().await.with_context(|| format!("connecting to {addr}"))?;
    Ok(VitrineClient::with_interceptor(channel, credentials)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20))
}

/// Streams items to the router in batches.
pub async fn upload(
    client: &mut Client,
    items: Vec<pb::Item>,
    batch: usize,
) -> anyhow::Result<pb::UpsertItemsResponse> {
    let mut batches = Vec::new();
    let mut it = items.into_iter().peekable();
    while it.peek().is_some() {
        batches.push(pb::UpsertItemsRequest { items: it.by_ref().take(batch.max(1)).collect(), ..Default::default() });
    }
    let resp = client.upsert_items_stream(tokio_stream::iter(batches)).await.context("upserting")?;
    Ok(resp.into_inner())
}

/// Where `vitrine-router` and `vitrine-shard` are: next to this binary.
fn bin_dir() -> anyhow::Result<PathBuf> {
    Ok(std::env::current_exe()?.parent().context("binary has no directory")?.to_path_buf())
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
    let _ = CREDENTIALS.set((Credentials::new(cli.api_key.as_deref())?, cli.ca.clone()));
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Cmd::Cluster {
            shards,
            replicas,
            port,
            data_dir,
            model_dir,
            ort_lib,
            no_demo,
            exit_after_demo,
            metrics_port,
        } => {
            let bin_dir = bin_dir()?;
            let opts =
                cluster::ClusterOptions { shards, replicas, port, data_dir, model_dir, ort_lib, bin_dir, metrics_port };
            println!(
                "starting a router and {shards} shards x {replicas} replicas (logs in {}) ...",
                opts.data_dir.join("logs").display()
            );
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
            if let Some(p) = metrics_port {
                println!("Metrics: http://127.0.0.1:{p}/metrics (router), ports {}.. (shards).", p as u32 + 1);
            }
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
        Cmd::Load(args) => {
            let code = load::run(&cli.addr, cli.json, args).await?;
            if code != 0 {
                std::process::exit(code);
            }
        }
        Cmd::Embed(args) => tokio::task::spawn_blocking(move || embed::run(&args)).await??,
        Cmd::Search { text, image, k, filter } => {
            use pb::search_request::Query;
            let image = match &image {
                Some(p) => Some(std::fs::read(p).with_context(|| format!("reading {}", p.display()))?),
                None => None,
            };
            let query = match (text, image) {
                (Some(text), Some(image)) => Query::Multimodal(pb::MultimodalQuery { text, image }),
                (Some(text), None) => Query::Text(text),
                (None, Some(image)) => Query::Image(image),
                (None, None) => anyhow::bail!("search needs a text, --image, or both"),
            };
            let mut client = connect(&cli.addr).await?;
            let r = client
                .search(pb::SearchRequest { query: Some(query), k, filter: filter.to_filter(), with_items: true })
                .await?;
            print_hits(cli.json, r.get_ref());
        }
        Cmd::Similar { id, k, filter, explain } => {
            let mut client = connect(&cli.addr).await?;
            let r = client
                .similar_items(pb::SimilarItemsRequest {
                    id,
                    k,
                    filter: filter.to_filter(),
                    with_items: true,
                    explain,
                    ..Default::default()
                })
                .await?;
            print_hits(cli.json, r.get_ref());
        }
        Cmd::Recommend { user, history, positive, negative, k, filter, explain } => {
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
                    explain,
                    ..Default::default()
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
                    ..Default::default()
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
                        "model_set": s.model_set, "image_model": s.image_model, "fusion": s.fusion,
                        "virtual_shards": s.virtual_shards, "wal_last_seq": s.wal_last_seq,
                        "snapshot_seq": s.snapshot_seq, "wal_bytes": s.wal_bytes}))
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
        Cmd::Snapshot { action } => {
            snapshot::run(&cli.addr, cli.json, action.unwrap_or(snapshot::SnapshotCmd::Create)).await?
        }
        Cmd::Models { action } => models::run(&cli.addr, cli.json, action).await?,
        Cmd::Train(args) => train(&cli.addr, &args).await?,
        Cmd::Eval(args) => {
            let json_out = args.json_out.clone();
            let report = eval::run(&args.options()?).await?;
            if let Some(path) = &json_out {
                eval::write_json(&report, path)?;
            }
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{}", eval::table(&report));
            }
        }
    }
    Ok(())
}

/// `vitrine train`: fits on every user's whole sequence (production signals).
async fn train(addr: &str, args: &TrainArgs) -> anyhow::Result<()> {
    use std::io::Write;
    anyhow::ensure!(args.out.is_some() || args.upload, "nothing to do: give --out FILE and/or --upload");
    let params = args.params.params();
    params.validate()?;
    let started = std::time::Instant::now();
    let ds = signals::Dataset::load(&args.data)?;
    let fitted = signals::fit(ds.items.len(), &ds.sequences, &params);
    let summary = signals::FitSummary::of(&fitted);
    let records = signals::records(&ds.items, &fitted);
    println!(
        "trained on {} users, {} interactions: {} items, {} with neighbours, {} neighbour pairs, {} with popularity \
         ({:.1} s)",
        ds.users.len(),
        ds.interactions(),
        summary.items,
        summary.items_with_neighbours,
        summary.neighbour_pairs,
        summary.items_with_popularity,
        started.elapsed().as_secs_f64()
    );
    if let Some(path) = &args.out {
        let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut w = std::io::BufWriter::new(file);
        for r in &records {
            serde_json::to_writer(&mut w, r)?;
            w.write_all(b"\n")?;
        }
        w.flush().with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {} signal entries to {}", records.len(), path.display());
    }
    if args.upload {
        let client = connect(addr).await?;
        let started = std::time::Instant::now();
        let n = records.len();
        let wire = records.into_iter().map(bulk::signals_to_wire).collect();
        let stored = bulk::update_signals(&client, wire, bulk::SIGNAL_BATCH, bulk::CONCURRENCY).await?;
        anyhow::ensure!(stored as usize == n, "the router stored {stored} of {n} signal entries");
        println!("uploaded {stored} signal entries to {addr} in {:.1} s", started.elapsed().as_secs_f64());
    }
    Ok(())
}
