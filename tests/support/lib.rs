//! Shared machinery for the multi-process tests: start real `vitrine-shard`
//! and `vitrine-router` binaries on loopback ports, kill and restart them,
//! and real product data to load.
//!
//! The binaries are the ones `cargo build --workspace --bins` put in the
//! target directory (override with `VITRINE_BIN_DIR`); the model is the one
//! `scripts/fetch-models.sh` fetched. `scripts/test.sh` does both first.
//!
//! [`scrape`] reads a process's Prometheus metrics when the cluster was
//! started [`Options::with_metrics`].

pub mod pki;
pub mod scrape;
pub use scrape::{scrape, Metrics};

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use vitrine_proto::pb::{self, vitrine_client::VitrineClient};

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("VITRINE_BIN_DIR") {
        return PathBuf::from(d);
    }
    let target =
        std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| workspace_root().join("target"));
    target.join("debug")
}

pub fn models() -> (PathBuf, PathBuf) {
    let m = workspace_root().join(".cache/models");
    let (dir, lib) = (m.join("all-minilm-l6-v2"), m.join("libonnxruntime.so.1.31.1"));
    assert!(
        dir.join("model.onnx").is_file() && lib.is_file(),
        "model files missing under {}: run `bash scripts/fetch-models.sh` (scripts/test.sh does)",
        m.display()
    );
    (dir, lib)
}

/// Runs the `vitrine` command-line tool and returns its output (echoed to
/// stderr, which the test harness shows for failing tests).
pub fn vitrine_cli(args: &[&str]) -> std::process::Output {
    let bin = bin_dir().join("vitrine");
    let out = std::process::Command::new(&bin)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}; run `cargo build --workspace --bins`", bin.display()));
    eprintln!(
        "$ vitrine {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A free loopback port (bound then released; the race is harmless here
/// because each test binary starts its processes one after another).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("no free port")
}

struct Proc {
    name: String,
    bin: PathBuf,
    args: Vec<String>,
    /// Extra environment (e.g. `FAILPOINTS`).
    env: Vec<(String, String)>,
    /// A command the binary runs under (e.g. `nsenter -t PID -m --`).
    wrapper: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    fn start(&mut self) {
        let out = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        let err = out.try_clone().expect("log file");
        let mut cmd = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        let child = cmd
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "info,hnsw_rs=warn")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("starting {} ({}): {e}; run `cargo build --workspace --bins`", self.name, self.bin.display())
            });
        self.child = Some(child);
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill").arg(format!("-{sig}")).arg(c.id().to_string()).status();
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits (bounded) for the process to end on its own.
    fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    fn exited(&mut self) -> Option<String> {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(status))) => Some(format!("{} exited ({status}):\n{}", self.name, tail(&self.log, 30))),
            _ => None,
        }
    }
}

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Options for a test cluster.
#[derive(Debug, Clone)]
pub struct Options {
    /// Shard processes: shards × replicas (see `replicas`).
    pub shards: usize,
    /// Replicas per shard (0 means 1): process `i` is shard `i / replicas`,
    /// replica `i % replicas`, and knows its group's other members as peers.
    pub replicas: usize,
    pub router_args: Vec<String>,
    pub shard_args: Vec<String>,
    /// Give every process a metrics port (`--metrics-addr` on loopback);
    /// see [`Cluster::router_metrics`] and [`Cluster::shard_metrics`].
    pub metrics: bool,
    /// Arguments for one shard only, by shard number (after `shard_args`).
    pub per_shard_args: Vec<Vec<String>>,
    /// Environment for every shard.
    pub shard_env: Vec<(String, String)>,
    /// A command every shard runs under (e.g. `nsenter -t PID -m --`).
    pub shard_wrapper: Vec<String>,
    /// Data directory root instead of a fresh temporary one (shard `i` uses
    /// `<root>/shard-<i>`).
    pub data_root: Option<PathBuf>,
    /// Environment for the router (e.g. `VITRINE_API_KEYS`).
    pub router_env: Vec<(String, String)>,
    /// How clients reach the router when it has TLS or API keys: used by
    /// [`Cluster::start`] to wait for it and by [`Cluster::url`].
    pub access: Access,
}

/// How a test client reaches a server with TLS or API keys; the default is
/// plaintext without a key.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// PEM CA to trust; the address becomes `https://`.
    pub ca: Option<PathBuf>,
    /// PEM certificate and key to present (mutual TLS).
    pub identity: Option<(PathBuf, PathBuf)>,
    /// Sent as `authorization: Bearer <key>`.
    pub api_key: Option<String>,
}

impl Access {
    /// This access with another key (or none).
    pub fn with_key(&self, key: Option<&str>) -> Self {
        Self { api_key: key.map(str::to_string), ..self.clone() }
    }
}

/// Adds `authorization: Bearer <key>` to every call when there is a key.
#[derive(Clone)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

/// A router client that sends its [`Access`]'s key.
pub type SecureClient = VitrineClient<InterceptedService<Channel, Bearer>>;

impl Options {
    pub fn shards(n: usize) -> Self {
        Self {
            shards: n,
            replicas: 0,
            router_args: Vec::new(),
            shard_args: Vec::new(),
            metrics: false,
            per_shard_args: Vec::new(),
            shard_env: Vec::new(),
            shard_wrapper: Vec::new(),
            data_root: None,
            router_env: Vec::new(),
            access: Access::default(),
        }
    }

    /// Shards without a text model, taking `dimension`-long vectors: fast
    /// restarts for the crash tests.
    pub fn vectors_only(mut self, dimension: usize) -> Self {
        self.shard_args.extend(["--no-model".to_string(), "--dimension".to_string(), dimension.to_string()]);
        self
    }

    /// These options with a metrics port for every process.
    pub fn with_metrics(mut self) -> Self {
        self.metrics = true;
        self
    }
}

/// A router and shards running as child processes; killed on drop.
pub struct Cluster {
    shards: Vec<Proc>,
    router: Proc,
    pub router_addr: String,
    /// The shards' gRPC addresses, in shard order.
    pub shard_addrs: Vec<String>,
    /// The router's metrics address, when started with metrics.
    pub router_metrics: Option<String>,
    /// The shards' metrics addresses, in shard order (empty without metrics).
    pub shard_metrics: Vec<String>,
    /// How clients reach the router (from [`Options::access`]).
    pub access: Access,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts the processes (and waits until every shard answers).
    pub fn start(opts: Options) -> Self {
        let mut dir = tempfile::tempdir().expect("tempdir");
        // Debugging aid: keep the logs and data of a failing run.
        if std::env::var_os("VITRINE_TEST_KEEP").is_some() {
            dir.disable_cleanup(true);
            eprintln!("keeping {}", dir.path().display());
        }
        let (model_dir, ort) = models();
        let bins = bin_dir();
        let mut shards = Vec::new();
        let mut addrs = Vec::new();
        let mut shard_metrics = Vec::new();
        let metrics_arg = |list: &mut Vec<String>, args: &mut Vec<String>| {
            let addr = format!("127.0.0.1:{}", free_port());
            args.extend(["--metrics-addr".to_string(), addr.clone()]);
            list.push(addr);
        };
        let replicas = opts.replicas.max(1);
        let planned: Vec<String> = (0..opts.shards).map(|_| format!("127.0.0.1:{}", free_port())).collect();
        for i in 0..opts.shards {
            let addr = planned[i].clone();
            let group = i / replicas;
            let mut args = vec![
                "--listen".into(),
                addr.clone(),
                "--shard-id".into(),
                group.to_string(),
                "--replica".into(),
                (i % replicas).to_string(),
                "--data-dir".into(),
                opts.data_root.as_deref().unwrap_or(dir.path()).join(format!("shard-{i}")).display().to_string(),
                "--model-dir".into(),
                model_dir.display().to_string(),
                "--ort-lib".into(),
                ort.display().to_string(),
            ];
            for peer in (group * replicas..(group + 1) * replicas).filter(|&j| j != i) {
                args.extend(["--peer".to_string(), planned[peer].clone()]);
            }
            if opts.metrics {
                metrics_arg(&mut shard_metrics, &mut args);
            }
            args.extend(opts.shard_args.iter().cloned());
            args.extend(opts.per_shard_args.get(i).into_iter().flatten().cloned());
            let mut p = Proc {
                name: format!("shard {i}"),
                bin: bins.join("vitrine-shard"),
                args,
                env: opts.shard_env.clone(),
                wrapper: opts.shard_wrapper.clone(),
                log: dir.path().join(format!("shard-{i}.log")),
                child: None,
            };
            p.start();
            shards.push(p);
            addrs.push(addr);
        }
        let router_addr = format!("127.0.0.1:{}", free_port());
        let mut args = vec!["--listen".to_string(), router_addr.clone(), "--replicas".into(), replicas.to_string()];
        for a in &addrs {
            args.push("--shard".into());
            args.push(a.clone());
        }
        let mut router_metrics = Vec::new();
        if opts.metrics {
            metrics_arg(&mut router_metrics, &mut args);
        }
        args.extend(opts.router_args.iter().cloned());
        let mut router = Proc {
            name: "router".into(),
            bin: bins.join("vitrine-router"),
            args,
            env: opts.router_env.clone(),
            wrapper: Vec::new(),
            log: dir.path().join("router.log"),
            child: None,
        };
        router.start();
        let mut c = Self {
            shards,
            router,
            router_addr,
            shard_addrs: addrs,
            router_metrics: router_metrics.pop(),
            shard_metrics,
            access: opts.access.clone(),
            _dir: dir,
        };
        c.wait_serving(opts.shards as u32);
        c
    }

    /// The router's URL: `https://` when [`Options::access`] has a CA.
    pub fn url(&self) -> String {
        let scheme = if self.access.ca.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.router_addr)
    }

    /// Blocks until ClusterInfo reports `n` serving shards (bounded).
    pub fn wait_serving(&mut self, n: u32) {
        let started = Instant::now();
        loop {
            for p in self.shards.iter_mut().chain(std::iter::once(&mut self.router)) {
                if let Some(msg) = p.exited() {
                    panic!("{msg}");
                }
            }
            let url = self.url();
            // On a thread of its own, so callers may be inside a runtime.
            let answered = std::thread::scope(|s| {
                s.spawn(|| {
                    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
                    rt.block_on(async {
                        let mut c = connect_with(&url, &self.access).await.ok()?;
                        let info = c.cluster_info(pb::ClusterInfoRequest {}).await.ok()?;
                        info.into_inner().coverage.map(|c| c.shards_answered)
                    })
                })
                .join()
                .ok()
                .flatten()
            });
            if answered == Some(n) {
                return;
            }
            assert!(started.elapsed() < Duration::from_secs(120), "cluster not serving {n} shards after 120 s");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `kill -9` a shard.
    pub fn kill_shard(&mut self, i: usize) {
        self.shards[i].kill();
    }

    /// Freezes a shard (SIGSTOP): it accepts connections but never answers,
    /// the worst kind of slow.
    pub fn freeze_shard(&mut self, i: usize) {
        self.shards[i].signal("STOP");
    }

    pub fn thaw_shard(&mut self, i: usize) {
        self.shards[i].signal("CONT");
    }

    /// Starts a killed shard again with the same data directory.
    pub fn restart_shard(&mut self, i: usize) {
        self.shards[i].start();
    }

    /// Replaces a (stopped) shard's extra environment for its next start.
    pub fn set_shard_env(&mut self, i: usize, env: Vec<(String, String)>) {
        self.shards[i].env = env;
    }

    /// Adds arguments to a (stopped) shard's command line for its next start.
    pub fn add_shard_args(&mut self, i: usize, args: &[&str]) {
        self.shards[i].args.extend(args.iter().map(|a| a.to_string()));
    }

    /// Sends SIGTERM and waits (bounded) for the shard to exit.
    pub fn terminate_shard(&mut self, i: usize, limit: Duration) -> Option<std::process::ExitStatus> {
        self.shards[i].signal("TERM");
        self.shards[i].wait_exit(limit)
    }

    /// Waits (bounded) for a shard to exit on its own (a crash, a refused start).
    pub fn wait_shard_exit(&mut self, i: usize, limit: Duration) -> Option<std::process::ExitStatus> {
        self.shards[i].wait_exit(limit)
    }

    /// The OS process id of a running shard.
    pub fn shard_pid(&self, i: usize) -> Option<u32> {
        self.shards[i].child.as_ref().map(|c| c.id())
    }

    /// Everything a shard logged, across restarts (a start-up error comes
    /// before the backtrace that follows it, so a tail could miss it).
    pub fn shard_log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.shards[i].log).unwrap_or_default()
    }

    /// A shard's data directory.
    pub fn shard_data_dir(&self, i: usize) -> PathBuf {
        let args = &self.shards[i].args;
        let at = args.iter().position(|a| a == "--data-dir").expect("--data-dir is always passed");
        PathBuf::from(&args[at + 1])
    }

    /// Whether every process is still running (no panics, no crashes).
    pub fn all_alive(&mut self) -> Result<(), String> {
        for p in self.shards.iter_mut().chain(std::iter::once(&mut self.router)) {
            if let Some(msg) = p.exited() {
                return Err(msg);
            }
        }
        Ok(())
    }

    pub fn router_log(&self) -> String {
        tail(&self.router.log, 50)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in &self.shards {
            p.signal("CONT");
        }
        for p in self.shards.iter_mut().chain(std::iter::once(&mut self.router)) {
            p.kill();
        }
    }
}

pub async fn connect(url: &str) -> anyhow::Result<VitrineClient<Channel>> {
    let ch = Endpoint::from_shared(url.to_string())?.connect_timeout(Duration::from_secs(2)).connect().await?;
    Ok(VitrineClient::new(ch).max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20))
}

/// A channel to `url` (any gRPC server: router or shard), over TLS when
/// `access` has a CA, presenting its identity when it has one.
pub async fn channel(url: &str, access: &Access) -> anyhow::Result<Channel> {
    let mut endpoint = Endpoint::from_shared(url.to_string())?.connect_timeout(Duration::from_secs(2));
    if let Some(ca) = &access.ca {
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(std::fs::read(ca)?));
        if let Some((cert, key)) = &access.identity {
            tls = tls.identity(Identity::from_pem(std::fs::read(cert)?, std::fs::read(key)?));
        }
        endpoint = endpoint.tls_config(tls)?;
    }
    Ok(endpoint.connect().await?)
}

/// A router client with `access`'s TLS and key.
pub async fn connect_with(url: &str, access: &Access) -> anyhow::Result<SecureClient> {
    let bearer = match &access.api_key {
        Some(k) => Some(format!("Bearer {k}").parse().map_err(|_| anyhow::anyhow!("API key is not ASCII"))?),
        None => None,
    };
    Ok(VitrineClient::with_interceptor(channel(url, access).await?, Bearer(bearer))
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20))
}

/// Where the shared data sets are (`../shared/data` from the repository).
pub fn shared_data() -> Option<PathBuf> {
    let p = std::env::var("VITRINE_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace_root().join("../shared/data"));
    p.is_dir().then_some(p)
}

/// `n` products with distinct titles: real ones from the fashion catalogue
/// when `../shared/data` is present, generated ones otherwise. Attributes
/// the catalogue lacks (price, stock) are derived from the id so that every
/// run sees the same values.
pub fn products(n: usize) -> Vec<pb::Item> {
    match shared_data().map(|d| d.join("fashion-products/catalog-text-full.tsv")).filter(|p| p.is_file()) {
        Some(path) => fashion(&path, n),
        None => {
            eprintln!("../shared/data not found: using generated products");
            generated(n)
        }
    }
}

fn derived(id: u64) -> (f64, bool) {
    let price = 5.0 + ((id.wrapping_mul(2654435761) >> 7) % 19_500) as f64 / 100.0;
    (price, !id.is_multiple_of(7))
}

fn fashion(path: &Path, n: usize) -> Vec<pb::Item> {
    let text = std::fs::read_to_string(path).expect("reading the fashion catalogue");
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() < 10 || f[1].trim().is_empty() || !seen.insert(f[1].trim().to_lowercase()) {
            continue;
        }
        let id: u64 = f[0].parse().unwrap_or(out.len() as u64);
        let (price, in_stock) = derived(id);
        let mut strings = std::collections::HashMap::new();
        strings.insert("gender".to_string(), f[2].to_string());
        strings.insert("usage".to_string(), f[9].to_string());
        let mut numbers = std::collections::HashMap::new();
        if let Ok(y) = f[8].parse::<f64>() {
            numbers.insert("year".to_string(), y);
        }
        out.push(pb::Item {
            id: format!("fp-{}", f[0]),
            title: f[1].trim().to_string(),
            attributes: Some(pb::Attributes {
                category: f[5].to_string(),
                brand: f[1].split_whitespace().next().unwrap_or("").to_string(),
                price: Some(price),
                in_stock: Some(in_stock),
                tags: [f[6], f[7], f[3]].iter().filter(|t| !t.is_empty()).map(|t| t.to_lowercase()).collect(),
                strings,
                numbers,
            }),
            ..Default::default()
        });
        if out.len() == n {
            break;
        }
    }
    out
}

fn generated(n: usize) -> Vec<pb::Item> {
    let brands =
        ["Northpeak", "Aurelle", "Stridewell", "Emberstone", "Quillwave", "Trailhound", "Marisol", "Indigo Forge"];
    let kinds = [
        ("running shoe", "shoes"),
        ("hiking boot", "shoes"),
        ("denim jacket", "jackets"),
        ("wool sweater", "sweaters"),
        ("leather backpack", "bags"),
        ("analog watch", "watches"),
        ("cotton t-shirt", "tshirts"),
        ("linen dress", "dresses"),
        ("cast iron skillet", "kitchen"),
        ("desk lamp", "home"),
    ];
    let colours = ["black", "navy", "olive", "red", "white", "grey", "tan", "pink", "teal", "mustard"];
    let fits =
        ["slim", "relaxed", "classic", "lightweight", "insulated", "waterproof", "vintage", "sport", "travel", "kids"];
    let mut out = Vec::with_capacity(n);
    'outer: for (bi, b) in brands.iter().enumerate() {
        for (ki, (k, cat)) in kinds.iter().enumerate() {
            for (ci, c) in colours.iter().enumerate() {
                for (fi, f) in fits.iter().enumerate() {
                    let id = (((bi * 10 + ki) * 10 + ci) * 10 + fi) as u64;
                    let (price, in_stock) = derived(id);
                    out.push(pb::Item {
                        id: format!("gen-{id}"),
                        title: format!("{b} {f} {c} {k}"),
                        attributes: Some(pb::Attributes {
                            category: cat.to_string(),
                            brand: b.to_string(),
                            price: Some(price),
                            in_stock: Some(in_stock),
                            tags: vec![c.to_string(), f.to_string()],
                            ..Default::default()
                        }),
                        ..Default::default()
                    });
                    if out.len() == n {
                        break 'outer;
                    }
                }
            }
        }
    }
    out
}

/// Upserts items in batches through the router.
pub async fn load(client: &mut VitrineClient<Channel>, items: &[pb::Item]) -> pb::UpsertItemsResponse {
    let mut total = pb::UpsertItemsResponse::default();
    for chunk in items.chunks(250) {
        let r = client
            .upsert_items(pb::UpsertItemsRequest { items: chunk.to_vec(), ..Default::default() })
            .await
            .expect("upsert")
            .into_inner();
        total.upserted += r.upserted;
        total.embedded += r.embedded;
    }
    total
}

pub fn text_query(text: &str, k: u32) -> pb::SearchRequest {
    pb::SearchRequest { query: Some(pb::search_request::Query::Text(text.into())), k, ..Default::default() }
}
