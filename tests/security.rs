//! TLS and API keys through the real binaries on loopback: a router serving
//! TLS with an API key file (and a key in `VITRINE_API_KEYS`), in front of a
//! shard that serves TLS and requires client certificates (mutual TLS).
//! The certificates are made here with rcgen: a CA, a server certificate
//! for 127.0.0.1/localhost, the router's client certificate, and a second,
//! unrelated CA with a client certificate of its own.
//!
//! Who gets in with which key, key rotation by rewriting the file (no
//! restart), handshakes that must fail, and the plaintext health ports for
//! probes. Bounded in time; the reload is awaited by polling with a deadline.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use libtest_mimic::{Arguments, Trial};
use rcgen::ExtendedKeyUsagePurpose;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use vitrine_integration_tests::pki::Ca;
use vitrine_integration_tests::{bin_dir, channel, connect_with, free_port, Access, Cluster, Options};
use vitrine_proto::pb;

const DIM: usize = 4;
const READ_KEY: &str = "read-key-0123456789abcdef";
const WRITE_KEY: &str = "write-key-0123456789abcdef";
/// Given in `VITRINE_API_KEYS` rather than the file.
const ENV_KEY: &str = "env-read-key-0123456789abcdef";
/// Added to the file and removed again while the router runs.
const ROTATED_KEY: &str = "rotated-key-0123456789abcdef";
/// How often the router re-reads the key file here (the default is 5 s).
const RELOAD_MS: u64 = 200;
/// How long a rotation may take to show: many reload periods.
const ROTATION_DEADLINE: Duration = Duration::from_secs(30);

struct Ctx {
    rt: tokio::runtime::Runtime,
    cluster: Cluster,
    keys_file: PathBuf,
    /// The cluster's CA.
    ca: PathBuf,
    /// The router's client certificate towards shards.
    router_identity: (PathBuf, PathBuf),
    /// A CA that signed nothing of the cluster's, and a client certificate of its.
    other_ca: PathBuf,
    other_identity: (PathBuf, PathBuf),
    router_health: String,
    shard_health: String,
    dir: tempfile::TempDir,
}

impl Ctx {
    async fn client(&self, key: Option<&str>) -> Result<vitrine_integration_tests::SecureClient> {
        connect_with(&self.cluster.url(), &self.cluster.access.with_key(key)).await
    }

    fn shard_url(&self) -> String {
        format!("https://{}", self.cluster.shard_addrs[0])
    }
}

fn base_keys() -> String {
    format!("# test keys\nread:{READ_KEY}\nwrite:{WRITE_KEY}\n")
}

/// Replaces the key file the way Kubernetes updates a Secret: a new file
/// renamed over the old, so the router never reads half a file.
fn write_keys(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("writing keys");
    std::fs::rename(&tmp, path).expect("replacing keys");
}

fn vector() -> pb::Vector {
    pb::Vector { values: vec![1.0, 0.5, 0.25, 0.125] }
}

fn item(id: &str) -> pb::Item {
    pb::Item { id: id.into(), title: id.into(), vector: Some(vector()), ..Default::default() }
}

fn upsert(id: &str) -> pb::UpsertItemsRequest {
    pb::UpsertItemsRequest { items: vec![item(id)], ..Default::default() }
}

fn search() -> pb::SearchRequest {
    pb::SearchRequest { query: Some(pb::search_request::Query::Vector(vector())), k: 5, ..Default::default() }
}

/// The refusal a call must have met.
fn refused<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code, message: &str) -> Result<()> {
    match r {
        Ok(v) => bail!("expected {code:?} \"{message}\", got an answer: {v:?}"),
        Err(s) => {
            ensure!(s.code() == code && s.message() == message, "expected {code:?} \"{message}\", got {s:?}");
            Ok(())
        }
    }
}

async fn health(url: &str, access: &Access) -> Result<ServingStatus> {
    let mut c = HealthClient::new(channel(url, access).await?);
    let r = c.check(HealthCheckRequest { service: String::new() }).await?.into_inner();
    Ok(r.status())
}

/// Every error in a chain, for asserting on the cause of a failed handshake.
fn chain(e: &anyhow::Error) -> String {
    format!("{e:#}")
}

/// Asserts that a health check failed at the connection, not with an answer
/// from the server: for `cause` (a rustls error or alert) or a connection
/// closed under it. With TLS 1.3 a client may send its request before the
/// server's verdict on its certificate, and then see the close (canceled,
/// broken pipe) rather than the alert; which one it sees is a race.
fn failed_for(result: Result<ServingStatus>, cause: &str) -> Result<()> {
    match result {
        Ok(s) => bail!("expected a failure ({cause}), got {s:?}"),
        Err(e) => {
            let text = chain(&e);
            ensure!(text.contains(cause) || text.contains("transport error"), "expected {cause}, got: {text}");
            Ok(())
        }
    }
}

async fn a_call_without_a_key_is_unauthenticated(ctx: &Ctx) -> Result<()> {
    let mut c = ctx.client(None).await?;
    let missing = "missing or malformed authorization: Bearer <key>";
    refused(c.cluster_info(pb::ClusterInfoRequest {}).await, Code::Unauthenticated, missing)?;
    refused(c.search(search()).await, Code::Unauthenticated, missing)?;
    refused(c.upsert_items(upsert("no-key")).await, Code::Unauthenticated, missing)?;
    // A key in another scheme is no bearer key.
    let mut request = tonic::Request::new(pb::ClusterInfoRequest {});
    request.metadata_mut().insert("authorization", format!("Basic {READ_KEY}").parse()?);
    refused(c.cluster_info(request).await, Code::Unauthenticated, missing)
}

async fn an_unknown_key_is_unauthenticated(ctx: &Ctx) -> Result<()> {
    let mut c = ctx.client(Some("not-a-key-0123456789abcdef")).await?;
    refused(c.search(search()).await, Code::Unauthenticated, "unknown API key")?;
    refused(c.upsert_items(upsert("unknown-key")).await, Code::Unauthenticated, "unknown API key")
}

async fn a_read_key_reads_through_mutual_tls_to_the_shard(ctx: &Ctx) -> Result<()> {
    for key in [READ_KEY, ENV_KEY] {
        let mut c = ctx.client(Some(key)).await?;
        let r = c.search(search()).await.context("search with a read key")?.into_inner();
        let coverage = r.coverage.context("no coverage")?;
        ensure!(coverage.shards_answered == 1 && !coverage.degraded, "the shard did not answer: {coverage:?}");
        ensure!(r.hits.iter().any(|h| h.id == "seed"), "seed item missing: {:?}", r.hits);
        let got = c
            .get_items(pb::GetItemsRequest { ids: vec!["seed".into()], with_vectors: false, ..Default::default() })
            .await?;
        ensure!(got.into_inner().items.len() == 1);
        c.cluster_info(pb::ClusterInfoRequest {}).await.context("ClusterInfo with a read key")?;
    }
    Ok(())
}

async fn a_read_key_cannot_write(ctx: &Ctx) -> Result<()> {
    let mut c = ctx.client(Some(READ_KEY)).await?;
    let denied = |method: &str| format!("this key has scope read; {method} needs write");
    refused(c.upsert_items(upsert("read-key")).await, Code::PermissionDenied, &denied("UpsertItems"))?;
    let stream = tokio_stream::iter(vec![upsert("read-key-stream")]);
    refused(c.upsert_items_stream(stream).await, Code::PermissionDenied, &denied("UpsertItemsStream"))?;
    let delete = pb::DeleteItemsRequest { ids: vec!["seed".into()], ..Default::default() };
    refused(c.delete_items(delete).await, Code::PermissionDenied, &denied("DeleteItems"))?;
    refused(
        c.create_snapshot(pb::CreateSnapshotRequest::default()).await,
        Code::PermissionDenied,
        &denied("CreateSnapshot"),
    )?;
    let switch = pb::SwitchModelsRequest { phase: pb::ModelSwitchPhase::Release as i32, ..Default::default() };
    refused(c.switch_models(switch).await, Code::PermissionDenied, &denied("SwitchModels"))?;
    // Nothing was written or deleted.
    let got = c.get_items(pb::GetItemsRequest {
        ids: vec!["seed".into(), "read-key".into()],
        with_vectors: false,
        ..Default::default()
    });
    let ids: Vec<String> = got.await?.into_inner().items.into_iter().map(|i| i.id).collect();
    ensure!(ids == ["seed"], "items after refused writes: {ids:?}");
    Ok(())
}

async fn a_write_key_writes_and_reads(ctx: &Ctx) -> Result<()> {
    let mut c = ctx.client(Some(WRITE_KEY)).await?;
    let r = c.upsert_items(upsert("written")).await.context("upsert with a write key")?.into_inner();
    ensure!(r.upserted == 1, "{r:?}");
    let got = c
        .get_items(pb::GetItemsRequest { ids: vec!["written".into()], with_vectors: false, ..Default::default() })
        .await?;
    ensure!(got.into_inner().items.len() == 1, "the written item is not there");
    Ok(())
}

async fn health_needs_no_key(ctx: &Ctx) -> Result<()> {
    let status = health(&ctx.cluster.url(), &ctx.cluster.access.with_key(None)).await?;
    ensure!(status == ServingStatus::Serving, "{status:?}");
    Ok(())
}

/// Polls `call` until it gives `want` (bounded by [`ROTATION_DEADLINE`]).
async fn until<F, Fut>(what: &str, want: Option<Code>, mut call: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), tonic::Status>>,
{
    let started = Instant::now();
    loop {
        let got = call().await.err().map(|s| s.code());
        if got == want {
            return Ok(());
        }
        ensure!(started.elapsed() < ROTATION_DEADLINE, "{what}: still {got:?} after {ROTATION_DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(RELOAD_MS / 2)).await;
    }
}

async fn keys_rotate_by_file_change_without_restart(ctx: &Ctx) -> Result<()> {
    let mut rotated = ctx.client(Some(ROTATED_KEY)).await?;
    refused(rotated.search(search()).await, Code::Unauthenticated, "unknown API key")?;

    write_keys(&ctx.keys_file, &format!("{}write:{ROTATED_KEY}\n", base_keys()));
    let mut c = rotated.clone();
    until("the added key", None, || {
        let mut c = c.clone();
        async move { c.upsert_items(upsert("rotated")).await.map(drop) }
    })
    .await?;

    write_keys(&ctx.keys_file, &base_keys());
    until("the removed key", Some(Code::Unauthenticated), || {
        let mut c = c.clone();
        async move { c.search(search()).await.map(drop) }
    })
    .await?;
    refused(c.search(search()).await, Code::Unauthenticated, "unknown API key")?;

    // A malformed file leaves the keys in force as they were.
    write_keys(&ctx.keys_file, &format!("{}write:short\n", base_keys()));
    tokio::time::sleep(Duration::from_millis(RELOAD_MS * 5)).await;
    c = ctx.client(Some(READ_KEY)).await?;
    c.search(search()).await.context("the read key after a malformed file")?;
    write_keys(&ctx.keys_file, &base_keys());
    // The router kept running throughout.
    let mut w = ctx.client(Some(WRITE_KEY)).await?;
    w.cluster_info(pb::ClusterInfoRequest {}).await.context("router after the rotation")?;
    Ok(())
}

async fn a_client_trusting_another_ca_fails_the_handshake(ctx: &Ctx) -> Result<()> {
    let other = Access { ca: Some(ctx.other_ca.clone()), identity: None, api_key: Some(READ_KEY.into()) };
    let outcome = async {
        let mut c = connect_with(&ctx.cluster.url(), &other).await?;
        c.cluster_info(pb::ClusterInfoRequest {}).await?;
        anyhow::Ok(())
    }
    .await;
    let Err(e) = outcome else { bail!("a client trusting another CA got an answer") };
    ensure!(chain(&e).contains("invalid peer certificate: UnknownIssuer"), "not a certificate failure: {}", chain(&e));
    let shard = health(&ctx.shard_url(), &Access { identity: Some(ctx.router_identity.clone()), ..other }).await;
    failed_for(shard, "invalid peer certificate: UnknownIssuer")
}

async fn plaintext_to_a_tls_port_fails(ctx: &Ctx) -> Result<()> {
    let plain = Access { api_key: Some(READ_KEY.into()), ..Access::default() };
    let outcome = async {
        let mut c = connect_with(&format!("http://{}", ctx.cluster.router_addr), &plain).await?;
        c.cluster_info(pb::ClusterInfoRequest {}).await?;
        anyhow::Ok(())
    }
    .await;
    ensure!(outcome.is_err(), "the router's TLS port answered plaintext");
    let shard = health(&format!("http://{}", ctx.cluster.shard_addrs[0]), &plain).await;
    ensure!(shard.is_err(), "the shard's TLS port answered plaintext: {shard:?}");
    Ok(())
}

async fn the_shard_requires_a_client_certificate(ctx: &Ctx) -> Result<()> {
    let with = |identity: Option<(PathBuf, PathBuf)>| Access { ca: Some(ctx.ca.clone()), identity, api_key: None };
    let status = health(&ctx.shard_url(), &with(Some(ctx.router_identity.clone()))).await;
    ensure!(matches!(status, Ok(ServingStatus::Serving)), "with the router's certificate: {status:?}");
    // The shard's alerts, as rustls names them.
    failed_for(health(&ctx.shard_url(), &with(None)).await, "CertificateRequired")?;
    failed_for(health(&ctx.shard_url(), &with(Some(ctx.other_identity.clone()))).await, "UnknownCA")
}

async fn probes_get_plaintext_health_ports_and_nothing_else(ctx: &Ctx) -> Result<()> {
    for url in [&ctx.router_health, &ctx.shard_health] {
        let status = health(url, &Access::default()).await.with_context(|| format!("health at {url}"))?;
        ensure!(status == ServingStatus::Serving, "{url}: {status:?}");
    }
    let access = Access { api_key: Some(WRITE_KEY.into()), ..Access::default() };
    let mut c = connect_with(&ctx.router_health, &access).await?;
    let r = c.cluster_info(pb::ClusterInfoRequest {}).await;
    ensure!(r.as_ref().is_err_and(|s| s.code() == Code::Unimplemented), "the health port served the API: {r:?}");
    Ok(())
}

async fn a_malformed_key_file_stops_the_router_without_quoting_it(ctx: &Ctx) -> Result<()> {
    let bad = ctx.dir.path().join("bad-keys");
    let secret = "admin:looks-like-a-secret-0123456789";
    std::fs::write(&bad, format!("read:{READ_KEY}\n{secret}\n"))?;
    let mut router = Command::new(bin_dir().join("vitrine-router"))
        .args(["--listen", &format!("127.0.0.1:{}", free_port()), "--shard", "127.0.0.1:1"])
        .arg("--api-keys-file")
        .arg(&bad)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = router.try_wait()? {
            break status;
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = router.kill();
            bail!("the router started with a malformed key file");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let out = router.wait_with_output()?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    ensure!(!status.success(), "exit {status}: {text}");
    ensure!(text.contains("line 2") && text.contains("scope"), "the error does not say where: {text}");
    ensure!(!text.contains("looks-like-a-secret") && !text.contains(READ_KEY), "the error quotes a key: {text}");
    Ok(())
}

fn main() {
    let args = Arguments::from_args();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let ca = Ca::new(d, "cluster-ca");
    let (server_cert, server_key) = ca.issue(d, "server", ExtendedKeyUsagePurpose::ServerAuth);
    let router_identity = ca.issue(d, "router-client", ExtendedKeyUsagePurpose::ClientAuth);
    let other_ca = Ca::new(d, "other-ca");
    let other_identity = other_ca.issue(d, "other-client", ExtendedKeyUsagePurpose::ClientAuth);
    let keys_file = d.join("api-keys");
    write_keys(&keys_file, &base_keys());
    let path = |p: &Path| p.display().to_string();

    let (router_health, shard_health) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let mut opts = Options::shards(1).vectors_only(DIM);
    opts.shard_args.extend([
        "--tls-cert".into(),
        path(&server_cert),
        "--tls-key".into(),
        path(&server_key),
        "--tls-ca".into(),
        path(&ca.pem),
        "--tls-client-auth".into(),
        "--health-listen".into(),
        shard_health.clone(),
    ]);
    opts.router_args.extend([
        "--tls-cert".into(),
        path(&server_cert),
        "--tls-key".into(),
        path(&server_key),
        "--tls-ca".into(),
        path(&ca.pem),
        "--shard-tls-cert".into(),
        path(&router_identity.0),
        "--shard-tls-key".into(),
        path(&router_identity.1),
        "--api-keys-file".into(),
        path(&keys_file),
        "--api-keys-reload-ms".into(),
        RELOAD_MS.to_string(),
        "--health-listen".into(),
        router_health.clone(),
    ]);
    opts.router_env.push(("VITRINE_API_KEYS".into(), format!("read:{ENV_KEY}")));
    opts.access = Access { ca: Some(ca.pem.clone()), identity: None, api_key: Some(READ_KEY.into()) };
    let cluster = Cluster::start(opts);
    let ctx = Ctx {
        rt,
        cluster,
        keys_file,
        ca: ca.pem.clone(),
        router_identity,
        other_ca: other_ca.pem.clone(),
        other_identity,
        router_health: format!("http://{router_health}"),
        shard_health: format!("http://{shard_health}"),
        dir,
    };
    ctx.rt.block_on(async {
        let mut c = ctx.client(Some(WRITE_KEY)).await.expect("connect");
        c.upsert_items(upsert("seed")).await.expect("seeding");
    });
    let ctx = Arc::new(ctx);
    macro_rules! trial {
        ($name:ident) => {{
            let ctx = Arc::clone(&ctx);
            Trial::test(stringify!($name), move || {
                let bounded = async { tokio::time::timeout(Duration::from_secs(90), $name(&ctx)).await };
                match ctx.rt.block_on(bounded) {
                    Ok(result) => result.map_err(|e| format!("{e:#}").into()),
                    Err(_) => Err("did not finish within 90 s".into()),
                }
            })
        }};
    }
    let trials = vec![
        trial!(a_call_without_a_key_is_unauthenticated),
        trial!(an_unknown_key_is_unauthenticated),
        trial!(a_read_key_reads_through_mutual_tls_to_the_shard),
        trial!(a_read_key_cannot_write),
        trial!(a_write_key_writes_and_reads),
        trial!(health_needs_no_key),
        trial!(keys_rotate_by_file_change_without_restart),
        trial!(a_client_trusting_another_ca_fails_the_handshake),
        trial!(plaintext_to_a_tls_port_fails),
        trial!(the_shard_requires_a_client_certificate),
        trial!(probes_get_plaintext_health_ports_and_nothing_else),
        trial!(a_malformed_key_file_stops_the_router_without_quoting_it),
    ];
    let conclusion = libtest_mimic::run(&args, trials);
    // No key reached the logs, whatever was refused or rotated above.
    let logs = format!("{}\n{}", ctx.cluster.router_log(), ctx.cluster.shard_log(0));
    for key in [READ_KEY, WRITE_KEY, ENV_KEY, ROTATED_KEY] {
        assert!(!logs.contains(key), "a log line holds an API key:\n{logs}");
    }
    drop(ctx);
    conclusion.exit();
}
