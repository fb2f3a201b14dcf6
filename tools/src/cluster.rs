//! A local cluster: a router and N shards as separate processes on loopback,
//! supervised by the `vitrine cluster` command.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::process::{Child, Command};
use vitrine_proto::pb;

/// How to lay out the local cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub shards: u32,
    /// Copies of each shard: shard process p holds replica p % replicas of
    /// shard p / replicas, with the other replicas of its shard as peers.
    pub replicas: u32,
    /// Router port; shard process p listens on port + 10 + p.
    pub port: u16,
    pub data_dir: PathBuf,
    pub model_dir: PathBuf,
    pub ort_lib: PathBuf,
    /// Where `vitrine-shard` and `vitrine-router` are (default: next to this binary).
    pub bin_dir: PathBuf,
    /// Prometheus metrics: the router on this port, shard process p on port + 1 + p.
    pub metrics_port: Option<u16>,
}

impl ClusterOptions {
    /// Shard processes: every replica of every shard.
    fn processes(&self) -> u32 {
        self.shards * self.replicas.max(1)
    }

    /// The metrics port of shard `i`, or of the router for `None`.
    fn metrics_port(&self, shard: Option<u32>) -> Option<u16> {
        self.metrics_port.map(|p| (p as u32 + shard.map_or(0, |i| 1 + i)) as u16)
    }
}

/// Running child processes. Dropping it kills them.
pub struct LocalCluster {
    children: Vec<(String, Child, PathBuf)>,
    pub router_addr: String,
}

fn spawn(bin: &Path, args: &[String], log: &Path) -> anyhow::Result<Child> {
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {} (build it with `cargo build --release`)", bin.display()))
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl LocalCluster {
    pub async fn start(o: &ClusterOptions) -> anyhow::Result<Self> {
        // A cluster already running on these ports would answer our readiness
        // probe while our own processes die on bind: refuse up front.
        let n = o.processes();
        let grpc_ports = std::iter::once(o.port).chain((0..n).map(|i| (o.port as u32 + 10 + i) as u16));
        let metrics_ports = std::iter::once(None).chain((0..n).map(Some)).filter_map(|s| o.metrics_port(s));
        for port in grpc_ports.chain(metrics_ports) {
            std::net::TcpListener::bind(("127.0.0.1", port)).with_context(|| {
                format!("port {port} is in use (another cluster running?); choose another with --port")
            })?;
        }
        let logs = o.data_dir.join("logs");
        std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
        let mut children = Vec::new();
        let mut shard_addrs = Vec::new();
        let r = o.replicas.max(1);
        let addr_of = |p: u32| format!("127.0.0.1:{}", o.port as u32 + 10 + p);
        for i in 0..n {
            let addr = addr_of(i);
            let log = logs.join(format!("shard-{i}.log"));
            let mut args = vec![
                "--listen".into(),
                addr.clone(),
                "--shard-id".into(),
                (i / r).to_string(),
                "--replica".into(),
                (i % r).to_string(),
                "--data-dir".into(),
                o.data_dir.join(format!("shard-{i}")).display().to_string(),
                "--model-dir".into(),
                o.model_dir.display().to_string(),
                "--ort-lib".into(),
                o.ort_lib.display().to_string(),
            ];
            let group = (i / r) * r;
            for peer in (group..group + r).filter(|&p| p != i) {
                args.extend(["--peer".into(), addr_of(peer)]);
            }
            if let Some(port) = o.metrics_port(Some(i)) {
                args.extend(["--metrics-addr".into(), format!("127.0.0.1:{port}")]);
            }
            children.push((format!("shard {i}"), spawn(&o.bin_dir.join("vitrine-shard"), &args, &log)?, log));
            shard_addrs.push(addr);
        }
        let router_addr = format!("127.0.0.1:{}", o.port);
        let log = logs.join("router.log");
        let mut args = vec!["--listen".to_string(), router_addr.clone(), "--replicas".into(), r.to_string()];
        for a in &shard_addrs {
            args.push("--shard".into());
            args.push(a.clone());
        }
        if let Some(port) = o.metrics_port(None) {
            args.extend(["--metrics-addr".into(), format!("127.0.0.1:{port}")]);
        }
        children.push(("router".into(), spawn(&o.bin_dir.join("vitrine-router"), &args, &log)?, log));
        let mut cluster = Self { children, router_addr };
        cluster.wait_ready(n, Duration::from_secs(180)).await?;
        Ok(cluster)
    }

    async fn wait_ready(&mut self, shards: u32, limit: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            for (name, child, log) in &mut self.children {
                if let Some(status) = child.try_wait()? {
                    bail!("{name} exited during start-up ({status}); last log lines:\n{}", tail(log, 20));
                }
            }
            if let Ok(mut c) = crate::connect(&format!("http://{}", self.router_addr)).await {
                if let Ok(info) = c.cluster_info(pb::ClusterInfoRequest {}).await {
                    if info.get_ref().coverage.is_some_and(|c| c.shards_answered == shards) {
                        return Ok(());
                    }
                }
            }
            if started.elapsed() > limit {
                bail!("cluster not ready after {} s; logs are in the data directory", limit.as_secs());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until a process exits on its own; returns its name and status.
    pub async fn wait_any_exit(&mut self) -> String {
        loop {
            for (name, child, log) in &mut self.children {
                if let Ok(Some(status)) = child.try_wait() {
                    return format!("{name} exited ({status}); last log lines:\n{}", tail(log, 10));
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Asks every process to stop (SIGTERM), then kills stragglers.
    pub async fn stop(mut self) {
        for (_, child, _) in &self.children {
            if let Some(pid) = child.id() {
                let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
            }
        }
        for (name, child, _) in &mut self.children {
            if tokio::time::timeout(Duration::from_secs(10), child.wait()).await.is_err() {
                eprintln!("{name} did not stop in 10 s; killing it");
                let _ = child.kill().await;
            }
        }
    }
}
