//! Talking to shards: one lazily connected channel per shard, calls bounded by
//! the request deadline, and the search fan-out with coverage accounting.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::future::join_all;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status};
use tracing::Instrument;
use vitrine_proto::pb::{self, shard_client::ShardClient};

use crate::deadline::Deadline;
use crate::merge::merge_top_k;
use crate::topk::per_shard_k;

/// One physical shard as the router sees it.
#[derive(Clone)]
pub struct ShardHandle {
    pub id: u32,
    pub address: String,
    client: ShardClient<Channel>,
    /// `vitrine_shard_call_duration_seconds{shard}` of this shard.
    call_seconds: prometheus::Histogram,
}

/// All shards plus the fan-out policy.
pub struct Shards {
    shards: Vec<ShardHandle>,
    /// Fraction of shards that must answer a read; below it the read fails
    /// with UNAVAILABLE rather than returning a misleadingly partial answer.
    pub min_coverage: f64,
    /// Confidence of the per-shard k bound (see `topk`).
    pub topk_probability: f64,
    next_embedder: AtomicUsize,
}

/// Result of a read fan-out.
#[derive(Debug)]
pub struct Gathered<T> {
    pub answers: Vec<(u32, T)>,
    pub coverage: pb::Coverage,
}

impl Shards {
    /// Creates lazily connected channels: a shard that is down at start-up is
    /// connected when it comes up, without restarting the router. With `tls`
    /// every shard is called over TLS (`host:port` means `https://`); a
    /// scheme that disagrees with it is refused rather than silently mixed.
    pub fn connect(
        addresses: &[String],
        max_message_bytes: usize,
        tls: Option<&ClientTlsConfig>,
    ) -> anyhow::Result<Self> {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut shards = Vec::with_capacity(addresses.len());
        for (i, addr) in addresses.iter().enumerate() {
            let uri = if addr.contains("://") { addr.clone() } else { format!("{scheme}://{addr}") };
            match (tls.is_some(), uri.starts_with("https://")) {
                (true, false) => {
                    anyhow::bail!("shard address {addr:?} is not https, but --tls-ca turns on TLS to shards")
                }
                (false, true) => anyhow::bail!("shard address {addr:?} is https: --tls-ca must name the CA to trust"),
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
            let client = ShardClient::new(endpoint.connect_lazy())
                .max_decoding_message_size(max_message_bytes)
                .max_encoding_message_size(max_message_bytes);
            let call_seconds = crate::metrics::get().shard_call_seconds.with_label_values(&[i.to_string()]);
            shards.push(ShardHandle { id: i as u32, address: addr.clone(), client, call_seconds });
        }
        Ok(Self { shards, min_coverage: 0.5, topk_probability: 0.9999, next_embedder: AtomicUsize::new(0) })
    }

    pub fn len(&self) -> usize {
        self.shards.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }

    pub fn get(&self, id: u32) -> Option<&ShardHandle> {
        self.shards.get(id as usize)
    }

    pub fn all(&self) -> &[ShardHandle] {
        &self.shards
    }

    /// Calls one shard within the deadline. Timeouts become DEADLINE_EXCEEDED
    /// naming the shard; transport failures UNAVAILABLE. Every call, however
    /// it ends, is timed in `vitrine_shard_call_duration_seconds`.
    pub async fn call<T, Fut>(
        &self,
        shard: u32,
        deadline: Deadline,
        f: impl FnOnce(ShardClient<Channel>, Duration) -> Fut,
    ) -> Result<T, Status>
    where
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let handle = self.get(shard).ok_or_else(|| Status::internal(format!("no shard {shard}")))?;
        let budget = deadline.stage_budget();
        let fut = f(handle.client.clone(), budget);
        let started = Instant::now();
        let result = tokio::time::timeout(budget, fut).await;
        handle.call_seconds.observe(started.elapsed().as_secs_f64());
        match result {
            Ok(Ok(resp)) => Ok(resp.into_inner()),
            Ok(Err(status)) => Err(annotate(status, handle)),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "shard {} ({}) did not answer within {} ms",
                handle.id,
                handle.address,
                budget.as_millis()
            ))),
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
        f: impl Fn(ShardClient<Channel>, Duration) -> Fut,
    ) -> Result<Gathered<T>, Status>
    where
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let calls = self.shards.iter().map(|h| {
            let fut = self.call(h.id, deadline, &f);
            async move { (h.id, fut.await) }
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

    /// Embeds a query on one shard, so a query is embedded once per request,
    /// not once per shard. Shards are tried round-robin; if the first has not
    /// answered after a quarter of the budget (at most 100 ms), the next one
    /// is asked too (a hedged request) and the first answer wins, so one
    /// frozen shard cannot eat the whole deadline before the fan-out starts.
    pub async fn embed(&self, deadline: Deadline, input: pb::embed_request::Input) -> Result<Vec<f32>, Status> {
        use futures::stream::{FuturesUnordered, StreamExt};
        let n = self.len();
        if n == 0 {
            return Err(Status::unavailable("no shards configured"));
        }
        let start = self.next_embedder.fetch_add(1, Ordering::Relaxed);
        let order: Vec<u32> = (0..n).map(|i| ((start + i) % n) as u32).collect();
        let hedge_after = (deadline.remaining() / 4).min(Duration::from_millis(100));
        let launch = |shard: u32| {
            let req = pb::EmbedRequest { input: Some(input.clone()) };
            self.call(shard, deadline, move |mut c, budget| {
                let mut r = Request::new(req);
                r.set_timeout(budget);
                async move { c.embed(r).await }
            })
        };
        let mut in_flight = FuturesUnordered::new();
        in_flight.push(launch(order[0]));
        let mut next = 1;
        let mut last: Option<Status> = None;
        loop {
            let hedge = tokio::time::sleep(hedge_after);
            tokio::select! {
                Some(result) = in_flight.next() => match result {
                    Ok(resp) => {
                        return resp.vector.map(|v| v.values).ok_or_else(|| Status::internal("shard returned no vector"))
                    }
                    Err(s) if is_client_error(s.code()) => return Err(s),
                    Err(s) => {
                        last = Some(s);
                        if next < n {
                            in_flight.push(launch(order[next]));
                            next += 1;
                        } else if in_flight.is_empty() {
                            break;
                        }
                    }
                },
                _ = hedge, if next < n => {
                    in_flight.push(launch(order[next]));
                    next += 1;
                }
                else => break,
            }
        }
        let why = last.map_or_else(|| "no answer".to_string(), |s| s.message().to_string());
        Err(Status::unavailable(format!("no shard could embed the query: {why}")))
    }
}

fn is_client_error(code: Code) -> bool {
    matches!(code, Code::InvalidArgument | Code::FailedPrecondition | Code::NotFound | Code::OutOfRange)
}

fn annotate(status: Status, handle: &ShardHandle) -> Status {
    if is_client_error(status.code()) {
        return status;
    }
    let code = match status.code() {
        // A refused or reset connection surfaces as UNKNOWN/CANCELLED; to the
        // client it means the same thing: this shard is not there now.
        Code::Unknown | Code::Cancelled => Code::Unavailable,
        c => c,
    };
    Status::new(code, format!("shard {} ({}): {}", handle.id, handle.address, status.message()))
}
