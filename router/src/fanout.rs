//! Talking to shards: each shard is a group of replicas with one lazily
//! connected channel each. Reads go to one replica, with a hedged request
//! to the next after a delay and failover on errors ([`Shards::call`]);
//! writes go to every replica and return once the consistency level is met
//! ([`Shards::write`]), while a replica that missed one is marked *behind*,
//! avoided by reads and asked to catch up from its peers. Also the search
//! fan-out with coverage accounting.
//!
//! Every shard call goes through a replica's channel, wrapped in
//! `vitrine-telemetry`'s client layer: calls carry the client's request id
//! (`x-request-id`) and, with trace export on, the calling span as their
//! remote parent (`traceparent`). Work that runs as a task of its own
//! (writes to replicas) takes the span and the request id along.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use futures::stream::{FuturesUnordered, StreamExt};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status};
use tracing::Instrument;
use vitrine_proto::pb::{self, shard_client::ShardClient};
use vitrine_telemetry::{request_id, Propagate};

use crate::deadline::Deadline;
use crate::merge::merge_top_k;
use crate::topk::per_shard_k;

/// Write consistency: how many replicas of a shard must acknowledge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Consistency {
    One,
    Quorum,
    All,
}

impl Consistency {
    /// Acknowledgements needed out of `replicas`.
    pub fn required(self, replicas: usize) -> usize {
        match self {
            Consistency::One => 1,
            Consistency::Quorum => replicas / 2 + 1,
            Consistency::All => replicas,
        }
        .min(replicas)
        .max(1)
    }

    /// The level a request asks for, or `default` when it leaves it unset.
    pub fn from_request(level: i32, default: Consistency) -> Result<Consistency, Status> {
        match pb::Consistency::try_from(level) {
            Ok(pb::Consistency::Unspecified) => Ok(default),
            Ok(pb::Consistency::One) => Ok(Consistency::One),
            Ok(pb::Consistency::Quorum) => Ok(Consistency::Quorum),
            Ok(pb::Consistency::All) => Ok(Consistency::All),
            Err(_) => Err(Status::invalid_argument(format!("unknown write consistency {level}"))),
        }
    }

    pub fn to_wire(self) -> pb::Consistency {
        match self {
            Consistency::One => pb::Consistency::One,
            Consistency::Quorum => pb::Consistency::Quorum,
            Consistency::All => pb::Consistency::All,
        }
    }
}

/// A client of one shard replica: its channel, with request ids and trace
/// context added to every call.
pub type ShardConn = ShardClient<Propagate<Channel>>;

/// One replica of a shard as the router sees it.
pub struct Replica {
    pub shard: u32,
    pub replica: u32,
    pub address: String,
    client: ShardConn,
    /// `vitrine_shard_call_duration_seconds{shard}` of this shard.
    call_seconds: prometheus::Histogram,
    /// Missed a write this router saw fail: reads avoid it until it caught up.
    behind: AtomicBool,
    /// Writes missed so far; a catch-up clears `behind` only if none was
    /// missed while it ran.
    missed: AtomicU64,
    repairing: AtomicBool,
}

impl Replica {
    pub fn is_behind(&self) -> bool {
        self.behind.load(Ordering::Acquire)
    }

    fn label(&self) -> String {
        format!("shard {} replica {} ({})", self.shard, self.replica, self.address)
    }

    /// Records a missed write and makes sure a catch-up is on its way.
    fn missed_write(self: &Arc<Self>, repair_delay: Duration) {
        self.missed.fetch_add(1, Ordering::AcqRel);
        self.behind.store(true, Ordering::Release);
        crate::metrics::get().replica_missed_writes.inc();
        if self.repairing.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = Arc::clone(self);
        tokio::spawn(async move { this.repair(repair_delay).await });
    }

    /// Asks the replica to catch up from its peers until one catch-up
    /// completes with every peer and no write was missed meanwhile.
    async fn repair(self: Arc<Self>, first_delay: Duration) {
        let mut delay = first_delay;
        loop {
            tokio::time::sleep(delay).await;
            let seen = self.missed.load(Ordering::Acquire);
            let mut client = self.client.clone();
            let mut req = Request::new(pb::CatchUpRequest {});
            req.set_timeout(CATCH_UP_TIMEOUT);
            let result = tokio::time::timeout(CATCH_UP_TIMEOUT, client.catch_up(req)).await;
            match result {
                Ok(Ok(resp)) if resp.get_ref().peer_errors.is_empty() => {
                    let r = resp.into_inner();
                    if self.missed.load(Ordering::Acquire) == seen {
                        self.behind.store(false, Ordering::Release);
                        self.repairing.store(false, Ordering::Release);
                        tracing::info!(replica = %self.label(), items = r.items, deletes = r.deletes,
                            users = r.users, signals = r.signals, "replica caught up; serving reads again");
                        // A write missed between the check and the flag reset
                        // would have found `repairing` set: check once more.
                        if self.missed.load(Ordering::Acquire) != seen && !self.repairing.swap(true, Ordering::AcqRel) {
                            self.behind.store(true, Ordering::Release);
                            delay = first_delay;
                            continue;
                        }
                        return;
                    }
                    delay = first_delay;
                    continue;
                }
                Ok(Ok(resp)) => {
                    tracing::warn!(replica = %self.label(), errors = ?resp.get_ref().peer_errors,
                        "replica catch-up reached only some peers; retrying");
                }
                Ok(Err(s)) => {
                    tracing::warn!(replica = %self.label(), error = s.message(), "replica catch-up failed; retrying")
                }
                Err(_) => tracing::warn!(replica = %self.label(), "replica catch-up timed out; retrying"),
            }
            delay = (delay * 2).min(MAX_REPAIR_DELAY);
        }
    }
}

/// Longest a catch-up call may run (a large shard's digest and fetches).
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest pause between catch-up attempts on a replica that is down.
const MAX_REPAIR_DELAY: Duration = Duration::from_secs(10);

/// The replicas of one physical shard.
pub struct ShardGroup {
    pub id: u32,
    pub replicas: Vec<Arc<Replica>>,
    /// Round-robin start for reads.
    next: AtomicUsize,
}

impl ShardGroup {
    /// Replicas in the order a read tries them: round-robin among those not
    /// behind, then those behind (better a possibly stale answer than none
    /// when nothing else is left).
    fn read_order(&self) -> Vec<Arc<Replica>> {
        let n = self.replicas.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let rotated = (0..n).map(|i| Arc::clone(&self.replicas[(start + i) % n]));
        let (mut fresh, behind): (Vec<_>, Vec<_>) = rotated.partition(|r| !r.is_behind());
        fresh.extend(behind);
        fresh
    }
}

/// All shards plus the fan-out policy.
pub struct Shards {
    groups: Vec<ShardGroup>,
    /// Fraction of shards that must answer a read; below it the read fails
    /// with UNAVAILABLE rather than returning a misleadingly partial answer.
    pub min_coverage: f64,
    /// Confidence of the per-shard k bound (see `topk`).
    pub topk_probability: f64,
    /// A read not answered after this long is also sent to the next replica
    /// (the first answer wins); zero sends only on failure.
    pub hedge_after: Duration,
    /// Level of writes that do not ask for one.
    pub write_consistency: Consistency,
    /// Pause before asking a replica that missed a write to catch up.
    pub repair_delay: Duration,
    next_embedder: AtomicUsize,
}

/// Result of a read fan-out.
#[derive(Debug)]
pub struct Gathered<T> {
    pub answers: Vec<(u32, T)>,
    pub coverage: pb::Coverage,
}

/// A write's outcome on one shard.
#[derive(Debug)]
pub struct Written<T> {
    /// The first replica's answer.
    pub answer: T,
    /// Replicas that had acknowledged when the level was met.
    pub acknowledged: u32,
}

impl Shards {
    /// Creates lazily connected channels: a shard that is down at start-up is
    /// connected when it comes up, without restarting the router. Addresses
    /// are in shard order, each shard's `replicas` together. With `tls`
    /// every shard is called over TLS (`host:port` means `https://`); a
    /// scheme that disagrees with it is refused rather than silently mixed.
    pub fn connect(
        addresses: &[String],
        replicas: usize,
        max_message_bytes: usize,
        tls: Option<&ClientTlsConfig>,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(replicas >= 1, "--replicas must be at least 1");
        anyhow::ensure!(
            !addresses.is_empty() && addresses.len().is_multiple_of(replicas),
            "{} shard addresses cannot form shards of {replicas} replicas each (list each shard's replicas together)",
            addresses.len()
        );
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut groups = Vec::with_capacity(addresses.len() / replicas);
        for (g, chunk) in addresses.chunks(replicas).enumerate() {
            let mut members = Vec::with_capacity(replicas);
            for (r, addr) in chunk.iter().enumerate() {
                let uri = if addr.contains("://") { addr.clone() } else { format!("{scheme}://{addr}") };
                match (tls.is_some(), uri.starts_with("https://")) {
                    (true, false) => {
                        anyhow::bail!("shard address {addr:?} is not https, but --tls-ca turns on TLS to shards")
                    }
                    (false, true) => {
                        anyhow::bail!("shard address {addr:?} is https: --tls-ca must name the CA to trust")
                    }
                    _ => {}
                }
                let mut endpoint = Endpoint::from_shared(uri.clone())
                    .map_err(|e| anyhow::anyhow!("shard address {addr:?}: {e}"))?
                    // Dead shards must fail fast so reads can degrade instead of waiting.
                    .connect_timeout(Duration::from_millis(250))
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(10))
                    .keep_alive_timeout(Duration::from_secs(5));
                if let Some(tls) = tls {
                    endpoint =
                        endpoint.tls_config(tls.clone()).map_err(|e| anyhow::anyhow!("TLS to shard {addr:?}: {e}"))?;
                }
                let client = ShardClient::new(Propagate::new(endpoint.connect_lazy()))
                    .max_decoding_message_size(max_message_bytes)
                    .max_encoding_message_size(max_message_bytes);
                let call_seconds = crate::metrics::get().shard_call_seconds.with_label_values(&[g.to_string()]);
                members.push(Arc::new(Replica {
                    shard: g as u32,
                    replica: r as u32,
                    address: addr.clone(),
                    client,
                    call_seconds,
                    behind: AtomicBool::new(false),
                    missed: AtomicU64::new(0),
                    repairing: AtomicBool::new(false),
                }));
            }
            groups.push(ShardGroup { id: g as u32, replicas: members, next: AtomicUsize::new(0) });
        }
        Ok(Self {
            groups,
            min_coverage: 0.5,
            topk_probability: 0.9999,
            hedge_after: Duration::from_millis(20),
            write_consistency: Consistency::Quorum,
            repair_delay: Duration::from_millis(500),
            next_embedder: AtomicUsize::new(0),
        })
    }

    /// Number of shards (not replicas).
    pub fn len(&self) -> usize {
        self.groups.len()
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Replicas per shard.
    pub fn replicas(&self) -> usize {
        self.groups.first().map_or(1, |g| g.replicas.len())
    }

    pub fn groups(&self) -> &[ShardGroup] {
        &self.groups
    }

    /// Every replica of every shard, in shard then replica order.
    pub fn all_replicas(&self) -> impl Iterator<Item = &Arc<Replica>> {
        self.groups.iter().flat_map(|g| g.replicas.iter())
    }

    /// Calls one replica within the deadline. Timeouts become
    /// DEADLINE_EXCEEDED naming the replica; transport failures UNAVAILABLE.
    /// Every call, however it ends, is timed in
    /// `vitrine_shard_call_duration_seconds`.
    pub async fn call_replica<T, Fut>(
        &self,
        replica: &Replica,
        deadline: Deadline,
        f: impl FnOnce(ShardConn, Duration) -> Fut,
    ) -> Result<T, Status>
    where
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        call_replica(replica, deadline.stage_budget(), f).await
    }

    /// Reads from one shard: the first replica in [`ShardGroup::read_order`],
    /// the next one too when the first has not answered after
    /// `hedge_after`, and the next at once when one fails with anything but
    /// a client error. The first answer wins.
    pub async fn call<T, Fut>(
        &self,
        shard: u32,
        deadline: Deadline,
        f: impl Fn(ShardConn, Duration) -> Fut,
    ) -> Result<T, Status>
    where
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let group = self.groups.get(shard as usize).ok_or_else(|| Status::internal(format!("no shard {shard}")))?;
        self.hedged(group.read_order(), deadline, &f).await
    }

    /// Tries `order` as described at [`Shards::call`].
    async fn hedged<T, Fut>(
        &self,
        order: Vec<Arc<Replica>>,
        deadline: Deadline,
        f: &impl Fn(ShardConn, Duration) -> Fut,
    ) -> Result<T, Status>
    where
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let n = order.len();
        if n == 0 {
            return Err(Status::unavailable("no replicas configured"));
        }
        let budget = deadline.stage_budget();
        let launch = |r: &Arc<Replica>| {
            let r = Arc::clone(r);
            let fut = f(r.client.clone(), budget);
            async move { timed(&r, budget, fut).await }
        };
        let mut in_flight = FuturesUnordered::new();
        in_flight.push(launch(&order[0]));
        let mut next = 1;
        let mut last: Option<Status> = None;
        let hedge_after = if self.hedge_after.is_zero() { Duration::MAX } else { self.hedge_after };
        loop {
            let hedge = tokio::time::sleep(hedge_after.min(deadline.remaining()));
            tokio::select! {
                Some(result) = in_flight.next() => match result {
                    Ok(v) => return Ok(v),
                    Err(s) if is_client_error(s.code()) => return Err(s),
                    Err(s) => {
                        last = Some(s);
                        if next < n {
                            in_flight.push(launch(&order[next]));
                            next += 1;
                        } else if in_flight.is_empty() {
                            break;
                        }
                    }
                },
                _ = hedge, if next < n => {
                    crate::metrics::get().hedged_reads.inc();
                    in_flight.push(launch(&order[next]));
                    next += 1;
                }
                else => break,
            }
        }
        Err(last.unwrap_or_else(|| Status::unavailable("no replica answered")))
    }

    /// Sends a write to every replica of `shard` and returns once `level`
    /// is met, with the first answer and the acknowledgements so far. The
    /// calls run as tasks: those still going when the level is met finish
    /// on their own, and any replica that fails the write is marked behind
    /// and asked to catch up. Fails when the level is not met once every
    /// replica has answered or run out of time, saying how many
    /// acknowledged and naming each replica's error; a client error
    /// (INVALID_ARGUMENT, ...) is returned as is, since every replica would
    /// say the same.
    pub async fn write<T, F, Fut>(
        &self,
        shard: u32,
        deadline: Deadline,
        level: Consistency,
        f: F,
    ) -> Result<Written<T>, Status>
    where
        T: Send + 'static,
        F: Fn(ShardConn, Duration) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>> + Send + 'static,
    {
        let group = self.groups.get(shard as usize).ok_or_else(|| Status::internal(format!("no shard {shard}")))?;
        let n = group.replicas.len();
        let required = level.required(n);
        let budget = deadline.stage_budget();
        let f = Arc::new(f);
        let (tx, mut rx) = tokio::sync::mpsc::channel(n);
        let repair_delay = self.repair_delay;
        for r in &group.replicas {
            let (r, f, tx) = (Arc::clone(r), Arc::clone(&f), tx.clone());
            let span = tracing::Span::current();
            tokio::spawn(request_id::carry(
                async move {
                    let result = timed(&r, budget, f(r.client.clone(), budget)).await;
                    if let Err(s) = &result {
                        if !is_client_error(s.code()) {
                            tracing::warn!(replica = %r.label(), code = ?s.code(), error = s.message(),
                                "replica missed a write; it will catch up from its peers");
                            r.missed_write(repair_delay);
                        }
                    }
                    // The receiver is gone once the level was met: fine.
                    let _ = tx.send(result).await;
                }
                .instrument(span),
            ));
        }
        drop(tx);
        let mut answer = None;
        let mut acknowledged = 0usize;
        let mut errors: Vec<Status> = Vec::new();
        while let Some(result) = rx.recv().await {
            match result {
                Ok(v) => {
                    acknowledged += 1;
                    answer.get_or_insert(v);
                }
                Err(s) => errors.push(s),
            }
            if acknowledged >= required {
                break;
            }
            // Once the level cannot be met, the remaining replicas are still
            // awaited (each is bounded by the stage budget): the error then
            // says how many replicas hold the write, which is what a client
            // needs to decide whether to retry.
        }
        match answer {
            Some(answer) if acknowledged >= required => Ok(Written { answer, acknowledged: acknowledged as u32 }),
            _ => {
                if let Some(s) = errors.iter().find(|s| is_client_error(s.code())) {
                    return Err(s.clone());
                }
                let code = if errors.iter().any(|s| s.code() == Code::ResourceExhausted) {
                    Code::ResourceExhausted
                } else {
                    Code::Unavailable
                };
                let why: Vec<&str> = errors.iter().map(|s| s.message()).collect();
                Err(Status::new(
                    code,
                    format!(
                        "{acknowledged} of {n} replicas acknowledged ({level:?} needs {required}): {}",
                        why.join("; ")
                    ),
                ))
            }
        }
    }

    /// Sends a read to every shard and keeps what arrives before the deadline.
    /// Client errors (INVALID_ARGUMENT, FAILED_PRECONDITION, NOT_FOUND) are
    /// returned as errors, since every shard would say the same; anything
    /// else counts against coverage. Shards asked and shards that answered
    /// (a client error is an answer) add to the fan-out counters.
    pub async fn gather<T, Fut>(
        &self,
        deadline: Deadline,
        f: impl Fn(ShardConn, Duration) -> Fut,
    ) -> Result<Gathered<T>, Status>
    where
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let calls = self.groups.iter().map(|g| {
            let fut = self.call(g.id, deadline, &f);
            async move { (g.id, fut.await) }
        });
        let results = join_all(calls).await;
        let asked = results.len() as u32;
        let mut answers = Vec::with_capacity(results.len());
        let mut failures = Vec::new();
        let mut client_error = None;
        for (id, r) in results {
            match r {
                Ok(v) => answers.push((id, v)),
                Err(s) if is_client_error(s.code()) => {
                    client_error.get_or_insert(s);
                }
                Err(s) => {
                    tracing::warn!(shard = id, code = ?s.code(), error = s.message(), "shard missing from fan-out");
                    failures.push(s.message().to_string());
                }
            }
        }
        let m = crate::metrics::get();
        m.fanout_asked.inc_by(u64::from(asked));
        m.fanout_answered.inc_by((asked as usize - failures.len()) as u64);
        if let Some(s) = client_error {
            return Err(s);
        }
        let answered = answers.len() as u32;
        let coverage = pb::Coverage { shards_asked: asked, shards_answered: answered, degraded: answered < asked };
        if asked > 0 && (answered == 0 || (answered as f64) < self.min_coverage * asked as f64) {
            return Err(Status::unavailable(format!(
                "only {answered} of {asked} shards answered (minimum coverage {:.0}%): {}",
                self.min_coverage * 100.0,
                failures.join("; ")
            )));
        }
        Ok(Gathered { answers, coverage })
    }

    /// Top-k over the whole cluster for a unit vector.
    pub async fn search(
        &self,
        deadline: Deadline,
        request: pb::ShardSearchRequest,
        k: usize,
    ) -> Result<(Vec<pb::ScoredItem>, pb::Coverage), Status> {
        let mut request = request;
        // Shards apply filters and exclusions themselves, so the hash
        // argument of `topk` holds for the items that remain.
        let per_shard = per_shard_k(k, self.len(), self.topk_probability).min(k);
        request.k = per_shard as u32;
        let span = tracing::info_span!("fanout.search", k, per_shard, shards = self.len());
        let gathered = self
            .gather(deadline, |mut c, budget| {
                let mut r = Request::new(request.clone());
                r.set_timeout(budget);
                async move { c.search(r).await }
            })
            .instrument(span)
            .await?;
        let lists = gathered.answers.into_iter().map(|(_, r)| r.hits).collect();
        Ok((merge_top_k(lists, k), gathered.coverage))
    }

    /// Embeds a query on one replica, so a query is embedded once per
    /// request, not once per shard. Any replica of any shard can embed:
    /// they are tried round-robin, hedged and failed over like a read.
    /// Returns the vector and the model set that made it.
    pub async fn embed(
        &self,
        deadline: Deadline,
        input: pb::embed_request::Input,
    ) -> Result<(Vec<f32>, String), Status> {
        let all: Vec<Arc<Replica>> = self.all_replicas().cloned().collect();
        let n = all.len();
        if n == 0 {
            return Err(Status::unavailable("no shards configured"));
        }
        let start = self.next_embedder.fetch_add(1, Ordering::Relaxed);
        let order: Vec<Arc<Replica>> = (0..n).map(|i| Arc::clone(&all[(start + i) % n])).collect();
        let resp = self
            .hedged(order, deadline, &|mut c: ShardConn, budget| {
                let mut r = Request::new(pb::EmbedRequest { input: Some(input.clone()) });
                r.set_timeout(budget);
                async move { c.embed(r).await }
            })
            .await
            .map_err(|s| {
                if is_client_error(s.code()) {
                    s
                } else {
                    Status::unavailable(format!("no shard could embed the query: {}", s.message()))
                }
            })?;
        let vector = resp.vector.map(|v| v.values).ok_or_else(|| Status::internal("shard returned no vector"))?;
        Ok((vector, resp.model))
    }
}

/// One call to one replica within `budget`, timed; errors name the replica.
async fn timed<T, Fut>(replica: &Replica, budget: Duration, fut: Fut) -> Result<T, Status>
where
    Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
{
    let started = Instant::now();
    let result = tokio::time::timeout(budget, fut).await;
    replica.call_seconds.observe(started.elapsed().as_secs_f64());
    match result {
        Ok(Ok(resp)) => Ok(resp.into_inner()),
        Ok(Err(status)) => Err(annotate(status, replica)),
        Err(_) => Err(Status::deadline_exceeded(format!(
            "{} did not answer within {} ms",
            replica.label(),
            budget.as_millis()
        ))),
    }
}

async fn call_replica<T, Fut>(
    replica: &Replica,
    budget: Duration,
    f: impl FnOnce(ShardConn, Duration) -> Fut,
) -> Result<T, Status>
where
    Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
{
    let fut = f(replica.client.clone(), budget);
    timed(replica, budget, fut).await
}

fn is_client_error(code: Code) -> bool {
    matches!(code, Code::InvalidArgument | Code::FailedPrecondition | Code::NotFound | Code::OutOfRange)
}

fn annotate(status: Status, replica: &Replica) -> Status {
    if is_client_error(status.code()) {
        return status;
    }
    let code = match status.code() {
        // A refused or reset connection surfaces as UNKNOWN/CANCELLED; to the
        // client it means the same thing: this shard is not there now.
        Code::Unknown | Code::Cancelled => Code::Unavailable,
        c => c,
    };
    Status::new(code, format!("{}: {}", replica.label(), status.message()))
}
