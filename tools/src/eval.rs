//! `vitrine eval`: measures recommendation quality through the real serving
//! path. Signals are fitted on a leave-one-out training split, items and
//! signals are loaded into a cluster (a fresh local one by default), and every
//! test case is replayed as a `Recommend` call over gRPC, so what is measured
//! is what a shop would get, whatever the router does inside.
//!
//! Protocols:
//! - **full ranking**: the whole catalogue competes; the server excludes the
//!   user's history (seen items) as it does in production.
//! - **sampled**: the target and 99 uniformly drawn items the user never
//!   touched, ranked via `candidate_ids` (the protocol of older papers).
//! - **cold start**: a tenth of the catalogue is held out of training, and only
//!   users whose target is one of those items are evaluated.

#[cfg(test)]
mod fake_router;
mod metrics;
mod protocol;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, Table};
use futures::stream::{self, StreamExt, TryStreamExt};
use serde::Serialize;
use serde_json::{json, Value};
use vitrine_proto::pb;

use crate::bulk;
use crate::cluster::{ClusterOptions, LocalCluster};
use crate::progress::Progress;
use crate::signals::{self, Dataset, FitSummary, Signals, TrainParams};
use crate::Client;
use protocol::{Case, Stream};

/// Cut-offs of HR@k and NDCG@k. Results must be at least this deep.
pub const CUTOFFS: [usize; 3] = [5, 10, 20];
/// Depth of the lists that coverage and diversity look at (what a shop shows).
const LIST_DEPTH: usize = 10;
/// Negatives per user in the sampled protocol, as in the papers it reproduces.
const NEGATIVES: usize = 99;
/// Share of the catalogue held out for the cold-start protocol.
const COLD_FRACTION: f64 = 0.1;
/// Items per GetItems call when fetching vectors: 256 × 384 floats is ~400 KiB.
const VECTOR_BATCH: usize = 256;

/// Where `vitrine-router` and `vitrine-shard` are and how to lay them out.
#[derive(Debug, Clone)]
pub struct LocalSpec {
    pub shards: u32,
    pub port: u16,
    pub model_dir: PathBuf,
    pub ort_lib: PathBuf,
    pub bin_dir: PathBuf,
}

/// The cluster to evaluate.
#[derive(Debug, Clone)]
pub enum Target {
    /// Start a fresh local cluster in a temporary directory.
    Local(LocalSpec),
    /// Use a running router (its signals are overwritten).
    Router(String),
}

/// Everything `vitrine eval` was asked to do.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub data: PathBuf,
    pub target: Target,
    /// Evaluate only this many users (a seeded subset).
    pub users: Option<usize>,
    pub seed: u64,
    /// Depth of the full-ranking lists.
    pub k: u32,
    /// Recommend calls in flight.
    pub concurrency: usize,
    /// Deadline of each Recommend call (sent as `grpc-timeout`).
    pub timeout: Duration,
    /// Upsert the catalogue before evaluating (off when a router has it).
    pub load_items: bool,
    pub sampled: bool,
    pub ablation: bool,
    pub cold: bool,
    pub shuffle_targets: bool,
    /// Hold out the second-to-last item instead of the last.
    pub validation: bool,
    pub train: TrainParams,
}

/// One ranking configuration: a name and the overrides sent with each call.
struct Config {
    name: &'static str,
    ranking: pb::Ranking,
}

/// Exploration and the online feedback learner are switched off in every
/// configuration: a random slot would make the numbers noisy and
/// irreproducible, and the replay's impressions (with no clicks) would
/// otherwise teach the router that every served item is ignored.
fn config(name: &'static str, ranking: pb::Ranking) -> Config {
    // Trending is pinned off too: the replay records no events, and a
    // router started with --rank-trending must not change the numbers.
    Config {
        name,
        ranking: pb::Ranking { explore_epsilon: Some(0.0), feedback: Some(0.0), trending: Some(0.0), ..ranking },
    }
}

fn full() -> Config {
    config("full", pb::Ranking::default())
}

fn popularity() -> Config {
    let zero = Some(0.0);
    config(
        "popularity",
        pb::Ranking {
            content: zero,
            behaviour: zero,
            popularity: Some(1.0),
            freshness: zero,
            feedback: zero,
            ..Default::default()
        },
    )
}

fn text_only() -> Config {
    config("text-only", pb::Ranking { behaviour: Some(0.0), popularity: Some(0.0), ..Default::default() })
}

fn behaviour_only() -> Config {
    config("behaviour-only", pb::Ranking { content: Some(0.0), ..Default::default() })
}

/// The overrides that were set, for the report.
fn ranking_json(r: &pb::Ranking) -> Value {
    let mut m = serde_json::Map::new();
    let floats = [
        ("content", r.content),
        ("behaviour", r.behaviour),
        ("popularity", r.popularity),
        ("freshness", r.freshness),
        ("diversity_lambda", r.diversity_lambda),
        ("explore_epsilon", r.explore_epsilon),
        ("feedback", r.feedback),
        ("trending", r.trending),
    ];
    for (name, v) in floats {
        if let Some(v) = v {
            m.insert(name.into(), json!(v));
        }
    }
    if let Some(s) = r.explore_slots {
        m.insert("explore_slots".into(), json!(s));
    }
    Value::Object(m)
}

/// The whole result of a run, as printed and as written with `--json-out`.
#[derive(Debug, Serialize)]
pub struct Report {
    pub dataset: DatasetInfo,
    pub parameters: Parameters,
    /// The signals fitted on the leave-one-out training split.
    pub signals: FitSummary,
    pub results: Vec<Row>,
    pub cold_start: Option<ColdInfo>,
    /// Elapsed time of each phase, in order.
    pub phases: Vec<Phase>,
    /// How to read the numbers (protocol details, ties, chance levels).
    pub notes: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct DatasetInfo {
    pub path: String,
    pub items: usize,
    pub users: usize,
    pub interactions: usize,
    /// Users with at least two items (one test case each).
    pub cases: usize,
}

#[derive(Debug, Serialize)]
pub struct Parameters {
    pub router: String,
    pub shards: Option<u32>,
    pub seed: u64,
    pub k: u32,
    pub users_requested: Option<usize>,
    pub users_evaluated: usize,
    pub concurrency: usize,
    pub timeout_ms: u128,
    pub shuffle_targets: bool,
    pub validation: bool,
    pub negatives: usize,
    pub cold_fraction: f64,
    pub train: TrainParams,
}

#[derive(Debug, Serialize)]
pub struct ColdInfo {
    pub held_out_items: usize,
    /// Evaluated users whose target is a held-out item.
    pub users: usize,
    pub signals: FitSummary,
}

#[derive(Debug, Serialize)]
pub struct Phase {
    pub name: String,
    pub seconds: f64,
}

/// One configuration under one protocol.
#[derive(Debug, Serialize)]
pub struct Row {
    pub config: String,
    /// `full-ranking`, `sampled-99` or `cold-start`.
    pub protocol: String,
    pub users: usize,
    /// The `Ranking` overrides sent.
    pub ranking: Value,
    pub metrics: Metrics,
    /// HR@10 of a random ranking under this protocol.
    pub chance_hr_at_10: f64,
    /// Cases whose target also occurs in its own history: the server excludes
    /// seen items, so these can never be hit (as in the S3-Rec protocol).
    pub targets_in_history: usize,
    /// Cases where an item ranked above the target had exactly its score,
    /// i.e. the server's tie order decided against the target.
    pub ties_above_target: usize,
    /// Responses that said some shard did not answer.
    pub degraded_responses: usize,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Metrics {
    #[serde(rename = "HR@5")]
    pub hr_5: f64,
    #[serde(rename = "HR@10")]
    pub hr_10: f64,
    #[serde(rename = "HR@20")]
    pub hr_20: f64,
    #[serde(rename = "NDCG@5")]
    pub ndcg_5: f64,
    #[serde(rename = "NDCG@10")]
    pub ndcg_10: f64,
    #[serde(rename = "NDCG@20")]
    pub ndcg_20: f64,
    #[serde(rename = "MRR")]
    pub mrr: f64,
    /// Distinct items in any top-10, over the catalogue (full ranking only).
    #[serde(rename = "coverage@10")]
    pub coverage_10: Option<f64>,
    /// Mean over users of 1 − mean pairwise cosine of the top-10 (full
    /// ranking only; users with fewer than two vectors are left out).
    #[serde(rename = "diversity@10")]
    pub diversity_10: Option<f64>,
}

/// What came back for one case.
#[derive(Debug, Clone, Default)]
struct Outcome {
    rank: Option<usize>,
    /// The first [`LIST_DEPTH`] hits that are catalogue items.
    top: Vec<u32>,
    ties_above: bool,
    degraded: bool,
}

/// Phase timings, printed as each ends.
#[derive(Default)]
struct Phases(Vec<Phase>);

impl Phases {
    fn done(&mut self, name: impl Into<String>, started: Instant) -> f64 {
        let seconds = started.elapsed().as_secs_f64();
        let name = name.into();
        eprintln!("[{name}] {seconds:.1} s");
        self.0.push(Phase { name, seconds });
        seconds
    }
}

/// Runs the evaluation and returns the report (progress goes to stderr).
pub async fn run(o: &EvalOptions) -> anyhow::Result<Report> {
    anyhow::ensure!(
        o.k as usize >= CUTOFFS[2],
        "k = {} is too shallow; HR@{} needs k >= {}",
        o.k,
        CUTOFFS[2],
        CUTOFFS[2]
    );
    o.train.validate()?;
    let mut phases = Phases::default();

    let t = Instant::now();
    let data = Dataset::load(&o.data).with_context(|| format!("loading the data set in {}", o.data.display()))?;
    let split = if o.validation {
        protocol::split(&protocol::without_last(&data.sequences))
    } else {
        protocol::split(&data.sequences)
    };
    eprintln!(
        "data: {} items, {} users, {} interactions; {} users have a test case",
        data.items.len(),
        data.users.len(),
        data.interactions(),
        split.cases.len()
    );
    anyhow::ensure!(!split.cases.is_empty(), "no user has two or more items; nothing to evaluate");
    phases.done("load data", t);

    let t = Instant::now();
    let fitted = signals::fit(data.items.len(), &split.train, &o.train);
    let summary = FitSummary::of(&fitted);
    eprintln!(
        "signals (training split): {} items with neighbours, {} neighbour pairs",
        summary.items_with_neighbours, summary.neighbour_pairs
    );
    phases.done("train", t);

    let chosen = protocol::subset(split.cases.len(), o.users, o.seed);
    let mut cases: Vec<Case> = chosen.iter().map(|&i| split.cases[i].clone()).collect();
    if o.shuffle_targets {
        protocol::shuffle_targets(&mut cases, o.seed);
        eprintln!("targets permuted across users (--shuffle-targets): no row may beat the popularity row by much");
    }
    anyhow::ensure!(!cases.is_empty(), "--users 0 selects nobody; ask for at least one user");
    eprintln!("evaluating {} of {} users", cases.len(), split.cases.len());

    let mut report = Report {
        dataset: DatasetInfo {
            path: o.data.display().to_string(),
            items: data.items.len(),
            users: data.users.len(),
            interactions: data.interactions(),
            cases: split.cases.len(),
        },
        parameters: Parameters {
            router: String::new(),
            shards: None,
            seed: o.seed,
            k: o.k,
            users_requested: o.users,
            users_evaluated: cases.len(),
            concurrency: o.concurrency,
            timeout_ms: o.timeout.as_millis(),
            shuffle_targets: o.shuffle_targets,
            validation: o.validation,
            negatives: NEGATIVES,
            cold_fraction: COLD_FRACTION,
            train: o.train.clone(),
        },
        signals: summary,
        results: Vec::new(),
        cold_start: None,
        phases: Vec::new(),
        notes: Vec::new(),
    };
    let ctx = Ctx { data: &data, opts: o, train: &split.train, fitted: &fitted, cases: &cases };

    match &o.target {
        Target::Router(addr) => {
            eprintln!(
                "note: this replaces the signals of every item at {addr} with ones fitted on the evaluation's \
                 training split; run `vitrine train --upload` afterwards to restore production signals"
            );
            report.parameters.router = addr.clone();
            let client = crate::connect(addr).await?;
            ctx.evaluate(&client, &mut report, &mut phases).await?;
        }
        Target::Local(spec) => {
            let dir = tempfile::Builder::new()
                .prefix("vitrine-eval-")
                .tempdir()
                .context("creating a temporary data directory for the cluster")?;
            let opts = ClusterOptions {
                shards: spec.shards,
                replicas: 1,
                port: spec.port,
                data_dir: dir.path().to_path_buf(),
                model_dir: spec.model_dir.clone(),
                ort_lib: spec.ort_lib.clone(),
                bin_dir: spec.bin_dir.clone(),
                metrics_port: None,
            };
            eprintln!("starting a router and {} shards in {} ...", spec.shards, dir.path().display());
            let t = Instant::now();
            let cluster = match LocalCluster::start(&opts).await {
                Ok(c) => c,
                Err(e) => return Err(keep_logs(dir, e)),
            };
            phases.done("start cluster", t);
            let addr = format!("http://{}", cluster.router_addr);
            report.parameters.router = addr.clone();
            report.parameters.shards = Some(spec.shards);
            let result = async {
                let client = crate::connect(&addr).await?;
                ctx.evaluate(&client, &mut report, &mut phases).await
            }
            .await;
            cluster.stop().await;
            if let Err(e) = result {
                return Err(keep_logs(dir, e));
            }
        }
    }
    report.phases = phases.0;
    report.notes = notes(&report, &data);
    Ok(report)
}

/// Keeps the cluster's directory after a failure so its logs can be read.
fn keep_logs(dir: tempfile::TempDir, e: anyhow::Error) -> anyhow::Error {
    let path = dir.keep();
    e.context(format!("the cluster's logs are kept in {}", path.join("logs").display()))
}

/// What one run works on.
struct Ctx<'a> {
    data: &'a Dataset,
    opts: &'a EvalOptions,
    train: &'a [Vec<u32>],
    fitted: &'a [Signals],
    cases: &'a [Case],
}

impl Ctx<'_> {
    async fn evaluate(&self, client: &Client, report: &mut Report, phases: &mut Phases) -> anyhow::Result<()> {
        let (o, data) = (self.opts, self.data);
        if o.load_items {
            let t = Instant::now();
            let items: Vec<pb::Item> = data.items.iter().map(item).collect();
            let n = items.len();
            let r = bulk::upsert_items(client, items, bulk::ITEM_BATCH, bulk::CONCURRENCY).await?;
            anyhow::ensure!(r.upserted as usize == n, "only {} of {n} items were acknowledged", r.upserted);
            eprintln!("loaded {n} items ({} embedded by the shards)", r.embedded);
            phases.done("load items", t);
        }
        let t = Instant::now();
        self.upload(client, self.fitted).await?;
        phases.done("upload signals", t);

        let t = Instant::now();
        let vectors = self.vectors(client).await?;
        phases.done("fetch vectors", t);

        let mut configs = vec![full()];
        if o.ablation {
            configs.extend([popularity(), text_only(), behaviour_only()]);
        }
        for c in &configs {
            let t = Instant::now();
            let label = format!("{} / full ranking", c.name);
            let out = self.replay(client, self.cases, &label, |case| self.full_request(case, &c.ranking)).await?;
            let seconds = phases.done(&label, t);
            report.results.push(self.row(c, "full-ranking", self.cases, &out, Some(&vectors), seconds));
        }
        if o.sampled {
            let c = full();
            let t = Instant::now();
            let label = format!("{} / sampled ({NEGATIVES} negatives)", c.name);
            let out = self.replay(client, self.cases, &label, |case| self.sampled_request(case, &c.ranking)).await?;
            let seconds = phases.done(&label, t);
            report.results.push(self.row(&c, "sampled-99", self.cases, &out, None, seconds));
        }
        if o.cold {
            self.cold_start(client, report, phases, &vectors).await?;
        }
        Ok(())
    }

    /// Holds a share of the items out of training, uploads signals that know
    /// nothing of them, and evaluates the users whose target is one of them.
    /// Runs last: it leaves the cold-start signals in the cluster.
    async fn cold_start(
        &self,
        client: &Client,
        report: &mut Report,
        phases: &mut Phases,
        vectors: &[Option<Vec<f32>>],
    ) -> anyhow::Result<()> {
        let (o, n) = (self.opts, self.data.items.len());
        let t = Instant::now();
        let held = protocol::hold_out_items(n, COLD_FRACTION, o.seed);
        let fitted = signals::fit(n, &protocol::without_items(self.train, &held), &o.train);
        let cases: Vec<Case> = self.cases.iter().filter(|c| held[c.target as usize]).cloned().collect();
        let held_out = held.iter().filter(|h| **h).count();
        eprintln!("cold start: {held_out} items held out of training; {} users have one as target", cases.len());
        self.upload(client, &fitted).await?;
        phases.done("cold start: train and upload signals", t);
        report.cold_start =
            Some(ColdInfo { held_out_items: held_out, users: cases.len(), signals: FitSummary::of(&fitted) });
        if cases.is_empty() {
            return Ok(());
        }
        let mut configs = vec![full()];
        if o.ablation {
            configs.extend([popularity(), text_only()]);
        }
        for c in &configs {
            let t = Instant::now();
            let label = format!("{} / cold start", c.name);
            let out = self.replay(client, &cases, &label, |case| self.full_request(case, &c.ranking)).await?;
            let seconds = phases.done(&label, t);
            report.results.push(self.row(c, "cold-start", &cases, &out, Some(vectors), seconds));
        }
        Ok(())
    }

    /// Sends signals for every item (so stale entries are cleared).
    async fn upload(&self, client: &Client, fitted: &[Signals]) -> anyhow::Result<()> {
        let wire: Vec<pb::ItemSignals> =
            signals::records(&self.data.items, fitted).into_iter().map(bulk::signals_to_wire).collect();
        let n = wire.len() as u64;
        let stored = bulk::update_signals(client, wire, bulk::SIGNAL_BATCH, bulk::CONCURRENCY).await?;
        anyhow::ensure!(stored == n, "the router stored {stored} of {n} signal entries");
        Ok(())
    }

    /// Every item's stored vector, by item index (None where missing).
    async fn vectors(&self, client: &Client) -> anyhow::Result<Vec<Option<Vec<f32>>>> {
        let data = self.data;
        let ids: Vec<String> = data.items.iter().map(|i| i.id.clone()).collect();
        let batches: Vec<Vec<String>> = ids.chunks(VECTOR_BATCH).map(<[String]>::to_vec).collect();
        let mut progress = Progress::new("vectors", ids.len());
        let mut answers = stream::iter(batches)
            .map(|ids| {
                let mut c = client.clone();
                async move {
                    let n = ids.len();
                    let r = c
                        .get_items(pb::GetItemsRequest { ids, with_vectors: true, ..Default::default() })
                        .await
                        .context("GetItems")?;
                    anyhow::Ok((n, r.into_inner()))
                }
            })
            .buffer_unordered(bulk::CONCURRENCY);
        let mut out: Vec<Option<Vec<f32>>> = vec![None; data.items.len()];
        while let Some((n, r)) = answers.try_next().await? {
            progress.add(n);
            for it in r.items {
                if let (Some(i), Some(v)) = (data.item_index(&it.id), it.vector) {
                    out[i as usize] = Some(v.values);
                }
            }
        }
        let missing = out.iter().filter(|v| v.is_none()).count();
        if missing > 0 {
            eprintln!("warning: {missing} items have no stored vector; diversity leaves them out");
        }
        Ok(out)
    }

    fn history(&self, case: &Case) -> Vec<String> {
        // The router bounds history length; the most recent items matter most.
        let max = vitrine_proto::Limits::default().max_history;
        let h = &case.history[case.history.len().saturating_sub(max)..];
        h.iter().map(|&i| self.data.items[i as usize].id.clone()).collect()
    }

    fn full_request(&self, case: &Case, ranking: &pb::Ranking) -> pb::RecommendRequest {
        pb::RecommendRequest {
            history: self.history(case),
            k: self.opts.k,
            ranking: Some(*ranking),
            ..Default::default()
        }
    }

    /// The target and [`NEGATIVES`] items the user never touched, in a seeded
    /// random order so that no position in the request favours the target.
    fn sampled_request(&self, case: &Case, ranking: &pb::Ranking) -> pb::RecommendRequest {
        let seed = self.opts.seed;
        let mut mine: HashSet<u32> = self.data.sequences[case.user].iter().copied().collect();
        mine.insert(case.target);
        let mut rng = protocol::rng(seed, Stream::Negatives, case.user as u64);
        let mut candidates = protocol::sample_negatives(self.data.items.len(), &mine, NEGATIVES, &mut rng);
        candidates.push(case.target);
        rand::seq::SliceRandom::shuffle(
            &mut candidates[..],
            &mut protocol::rng(seed, Stream::CandidateOrder, case.user as u64),
        );
        pb::RecommendRequest {
            history: self.history(case),
            k: candidates.len() as u32,
            ranking: Some(*ranking),
            candidate_ids: candidates.iter().map(|&i| self.data.items[i as usize].id.clone()).collect(),
            ..Default::default()
        }
    }

    /// Sends one Recommend per case, `concurrency` at a time; outcomes come
    /// back in case order.
    async fn replay(
        &self,
        client: &Client,
        cases: &[Case],
        label: &str,
        request: impl Fn(&Case) -> pb::RecommendRequest,
    ) -> anyhow::Result<Vec<Outcome>> {
        let (data, timeout) = (self.data, self.opts.timeout);
        let mut progress = Progress::new(label, cases.len());
        let mut answers = stream::iter(cases.iter().enumerate())
            .map(|(i, case)| {
                let mut req = tonic::Request::new(request(case));
                req.set_timeout(timeout);
                let mut c = client.clone();
                async move {
                    let user = &data.users[case.user];
                    let r = c.recommend(req).await.with_context(|| format!("Recommend for user {user:?}"))?;
                    anyhow::Ok((i, outcome(data, case.target, &r.into_inner())))
                }
            })
            .buffer_unordered(self.opts.concurrency.max(1));
        let mut out = vec![Outcome::default(); cases.len()];
        while let Some((i, o)) = answers.try_next().await? {
            progress.add(1);
            out[i] = o;
        }
        Ok(out)
    }

    fn row(
        &self,
        c: &Config,
        protocol: &str,
        cases: &[Case],
        out: &[Outcome],
        vectors: Option<&[Option<Vec<f32>>]>,
        seconds: f64,
    ) -> Row {
        let n = self.data.items.len();
        let chance = if protocol == "sampled-99" { 10.0 / (NEGATIVES + 1) as f64 } else { 10.0 / n.max(1) as f64 };
        Row {
            config: c.name.into(),
            protocol: protocol.into(),
            users: cases.len(),
            ranking: ranking_json(&c.ranking),
            metrics: summarise(out, n, vectors),
            chance_hr_at_10: chance.min(1.0),
            targets_in_history: cases.iter().filter(|c| c.history.contains(&c.target)).count(),
            ties_above_target: out.iter().filter(|o| o.ties_above).count(),
            degraded_responses: out.iter().filter(|o| o.degraded).count(),
            seconds,
        }
    }
}

/// The item as loaded: its title (or asin, or id when both are empty) is the
/// text the shards embed.
fn item(it: &signals::ItemRecord) -> pb::Item {
    let max = vitrine_proto::Limits::default().max_title_bytes;
    let mut title = it.text().to_string();
    if title.len() > max {
        let mut end = max;
        while !title.is_char_boundary(end) {
            end -= 1;
        }
        title.truncate(end);
    }
    pb::Item { id: it.id.clone(), title, ..Default::default() }
}

/// Reads the rank of the target, the top of the list and score ties.
fn outcome(data: &Dataset, target: u32, r: &pb::SearchResponse) -> Outcome {
    let target_id = &data.items[target as usize].id;
    let ids: Vec<&str> = r.hits.iter().map(|h| h.id.as_str()).collect();
    let rank = metrics::rank_of(&ids, &target_id.as_str());
    let ties_above = rank.is_some_and(|rank| {
        let score = r.hits[rank - 1].score;
        r.hits[..rank - 1].iter().any(|h| h.score == score)
    });
    Outcome {
        rank,
        top: r.hits.iter().take(LIST_DEPTH).filter_map(|h| data.item_index(&h.id)).collect(),
        ties_above,
        degraded: r.coverage.is_some_and(|c| c.degraded),
    }
}

fn summarise(out: &[Outcome], catalogue: usize, vectors: Option<&[Option<Vec<f32>>]>) -> Metrics {
    let ranks: Vec<Option<usize>> = out.iter().map(|o| o.rank).collect();
    let [a, b, c] = CUTOFFS;
    let diversity = vectors.and_then(|v| {
        let lookup = |i: u32| v.get(i as usize).and_then(|x| x.as_deref());
        let per_list: Vec<f64> = out.iter().filter_map(|o| metrics::list_diversity(&o.top, lookup)).collect();
        (!per_list.is_empty()).then(|| metrics::mean(per_list))
    });
    Metrics {
        hr_5: metrics::hit_rate(&ranks, a),
        hr_10: metrics::hit_rate(&ranks, b),
        hr_20: metrics::hit_rate(&ranks, c),
        ndcg_5: metrics::ndcg(&ranks, a),
        ndcg_10: metrics::ndcg(&ranks, b),
        ndcg_20: metrics::ndcg(&ranks, c),
        mrr: metrics::mrr(&ranks),
        coverage_10: vectors.map(|_| metrics::coverage(out.iter().map(|o| o.top.as_slice()), catalogue)),
        diversity_10: diversity,
    }
}

fn notes(r: &Report, data: &Dataset) -> Vec<String> {
    let p = &r.parameters;
    let mut notes = vec![
        format!(
            "leave-one-out: each user's last item is the target; signals were fitted on the items before it only \
             ({} users, {} items)",
            data.users.len(),
            data.items.len()
        ),
        format!(
            "full ranking: all {} items compete, the server excludes the user's history; a target that also occurs \
             in its own history can never be hit (counted as targets_in_history); chance HR@10 = 10/{} = {:.5}",
            data.items.len(),
            data.items.len(),
            10.0 / data.items.len().max(1) as f64
        ),
        "every configuration sends explore_epsilon = 0 and feedback = 0 (no exploration, no online learning from \
         the replay); \"full\" leaves all other weights at the router's defaults"
            .to_string(),
    ];
    if r.results.iter().any(|x| x.protocol == "sampled-99") {
        notes.push(format!(
            "sampled: the target plus {NEGATIVES} items drawn uniformly (seed {}) from those the user never \
             interacted with, sent as candidate_ids in a seeded random order with k = {}; score ties are broken by \
             the server's deterministic order (by id), not for or against the target (ties_above_target counts the \
             cases where a tie went against it); chance HR@10 = 0.1",
            p.seed,
            NEGATIVES + 1
        ));
    }
    if let Some(c) = &r.cold_start {
        notes.push(format!(
            "cold start: {} items ({:.0}%, seed {}) were removed from every training sequence and have no signals; \
             {} evaluated users have one of them as target",
            c.held_out_items,
            COLD_FRACTION * 100.0,
            p.seed,
            c.users
        ));
    }
    if p.validation {
        notes.push(
            "validation split (--validation): each user's last item was dropped entirely; the target is the \
             second-to-last item and signals were fitted on the items before it"
                .into(),
        );
    }
    if p.shuffle_targets {
        notes.push(
            "targets were permuted across users (--shuffle-targets): nothing may beat a user-independent ranker. \
             Uniform chance is the chance_hr_at_10 above, but permuted targets keep their popularity-skewed \
             distribution, so compare every row with the \"popularity\" row of the same run, not only with chance"
                .into(),
        );
    }
    let degraded: usize = r.results.iter().map(|x| x.degraded_responses).sum();
    if degraded > 0 {
        notes.push(format!(
            "WARNING: {degraded} responses were degraded (a shard did not answer); those lists may miss items"
        ));
    }
    notes
}

/// The report as tables for people.
pub fn table(r: &Report) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header([
        "config", "protocol", "users", "HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20", "MRR", "cov@10",
        "div@10", "s",
    ]);
    let num = |x: f64| Cell::new(format!("{x:.4}")).set_alignment(CellAlignment::Right);
    let opt =
        |x: Option<f64>| Cell::new(x.map_or("-".into(), |x| format!("{x:.4}"))).set_alignment(CellAlignment::Right);
    for row in &r.results {
        let m = &row.metrics;
        t.add_row(vec![
            Cell::new(&row.config),
            Cell::new(&row.protocol),
            Cell::new(row.users).set_alignment(CellAlignment::Right),
            num(m.hr_5),
            num(m.hr_10),
            num(m.hr_20),
            num(m.ndcg_5),
            num(m.ndcg_10),
            num(m.ndcg_20),
            num(m.mrr),
            opt(m.coverage_10),
            opt(m.diversity_10),
            Cell::new(format!("{:.1}", row.seconds)).set_alignment(CellAlignment::Right),
        ]);
    }
    let mut phases = Table::new();
    phases.load_preset(UTF8_FULL_CONDENSED);
    phases.set_header(["phase", "s"]);
    for p in &r.phases {
        phases.add_row(vec![
            Cell::new(&p.name),
            Cell::new(format!("{:.1}", p.seconds)).set_alignment(CellAlignment::Right),
        ]);
    }
    let notes: String = r.notes.iter().map(|n| format!("\n- {n}")).collect();
    format!("{t}\n{phases}\nnotes:{notes}")
}

/// Writes the report as pretty JSON.
pub fn write_json(r: &Report, path: &Path) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(r)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_configuration_switches_exploration_and_trending_off() {
        for c in [full(), popularity(), text_only(), behaviour_only()] {
            assert_eq!(c.ranking.explore_epsilon, Some(0.0), "{}", c.name);
            assert_eq!(c.ranking.trending, Some(0.0), "{}", c.name);
        }
        assert_eq!(
            full().ranking,
            pb::Ranking { explore_epsilon: Some(0.0), feedback: Some(0.0), trending: Some(0.0), ..Default::default() }
        );
        assert_eq!(
            ranking_json(&text_only().ranking),
            json!({"behaviour": 0.0, "popularity": 0.0, "explore_epsilon": 0.0, "feedback": 0.0, "trending": 0.0})
        );
    }

    #[test]
    fn outcomes_read_rank_top_and_ties() {
        let items: Vec<signals::ItemRecord> = ["a", "b", "c", "d"]
            .iter()
            .map(|id| signals::ItemRecord { id: (*id).into(), asin: String::new(), title: String::new() })
            .collect();
        let data = Dataset::from_parts(items, b"u a b c\n", Path::new("s")).unwrap();
        let hit = |id: &str, score: f32| pb::ScoredItem { id: id.into(), score, ..Default::default() };
        let r = pb::SearchResponse {
            hits: vec![hit("b", 0.9), hit("zz", 0.5), hit("c", 0.5)],
            coverage: Some(pb::Coverage { shards_asked: 2, shards_answered: 1, degraded: true }),
        };
        let o = outcome(&data, 2, &r);
        assert_eq!(o.rank, Some(3));
        assert_eq!(o.top, [1, 2], "unknown ids are not catalogue items");
        assert!(o.ties_above && o.degraded);
        let o = outcome(&data, 0, &r);
        assert_eq!((o.rank, o.ties_above), (None, false));
    }

    /// 50 items on a ring; user u walks s, s+1, s+2, s+3 (s = u mod 50), so
    /// the co-visitation signals predict every target exactly.
    fn ring_data_set() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let mut items = String::from("item_id\tasin\ttitle\n");
        for i in 0..50 {
            let title = if i == 7 { String::new() } else { format!("product {i}") };
            items.push_str(&format!("i{i}\tA{i}\t{title}\n"));
        }
        let mut seqs = String::new();
        for u in 0..200 {
            let s = u % 50;
            let walk: Vec<String> = (0..4).map(|d| format!("i{}", (s + d) % 50)).collect();
            seqs.push_str(&format!("u{u} {}\n", walk.join(" ")));
        }
        seqs.push_str("lonely i3\n");
        std::fs::write(dir.path().join("items.tsv"), items).unwrap();
        std::fs::write(dir.path().join("sequences.txt"), seqs).unwrap();
        dir
    }

    fn options(data: &Path, addr: std::net::SocketAddr) -> EvalOptions {
        EvalOptions {
            data: data.to_path_buf(),
            target: Target::Router(format!("http://{addr}")),
            users: None,
            seed: 42,
            k: 20,
            concurrency: 4,
            timeout: Duration::from_secs(10),
            load_items: true,
            sampled: true,
            ablation: true,
            cold: true,
            shuffle_targets: false,
            validation: false,
            train: TrainParams::default(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_driver_replays_every_protocol_against_a_router() {
        let data = ring_data_set();
        let fake = fake_router::FakeRouter::default();
        let addr = fake.serve().await;
        let r = run(&options(data.path(), addr)).await.unwrap();

        assert_eq!((r.dataset.items, r.dataset.users, r.dataset.cases), (50, 201, 200));
        let rows: Vec<(&str, &str)> = r.results.iter().map(|x| (x.config.as_str(), x.protocol.as_str())).collect();
        let cold = r.cold_start.as_ref().unwrap();
        assert_eq!(cold.held_out_items, 5);
        assert!(cold.users > 0);
        assert_eq!(
            rows,
            [
                ("full", "full-ranking"),
                ("popularity", "full-ranking"),
                ("text-only", "full-ranking"),
                ("behaviour-only", "full-ranking"),
                ("full", "sampled-99"),
                ("full", "cold-start"),
                ("popularity", "cold-start"),
                ("text-only", "cold-start"),
            ]
        );
        let full = &r.results[0];
        assert_eq!(full.users, 200);
        assert_eq!(full.metrics.hr_5, 1.0, "the ring is predictable from the training split");
        assert_eq!(full.metrics.mrr, 1.0);
        assert!(full.metrics.coverage_10.is_some_and(|c| c > 0.9));
        assert!(full.metrics.diversity_10.is_some());
        assert!(r.results[1].metrics.hr_10 < 0.5, "popularity alone cannot follow the ring");
        let sampled = &r.results[4];
        assert_eq!(sampled.metrics.hr_5, 1.0);
        assert_eq!((sampled.metrics.coverage_10, sampled.metrics.diversity_10), (None, None));
        assert_eq!(r.results[5].users, cold.users);

        let s = fake.state.lock().unwrap();
        assert_eq!(s.items.len(), 50);
        assert_eq!(s.items["i7"], "A7", "an empty title is replaced by the asin");
        assert_eq!(s.signals.len(), 50, "every item's signals are sent");
        let cleared = s.signals.values().filter(|x| x.neighbours.is_empty() && x.popularity == 0.0).count();
        assert_eq!(cleared, 5, "held-out items end with empty signals");
        let calls: usize = r.results.iter().map(|x| x.users).sum();
        assert_eq!(s.recommends, calls);
        drop(s);
        assert!(table(&r).contains("behaviour-only"));
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["results"][0]["metrics"]["HR@10"], 1.0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shuffled_targets_fall_towards_chance_and_subsets_are_honoured() {
        let data = ring_data_set();
        let fake = fake_router::FakeRouter::default();
        let addr = fake.serve().await;
        let mut o = options(data.path(), addr);
        (o.users, o.shuffle_targets, o.sampled, o.ablation, o.cold) = (Some(60), true, false, false, false);
        let r = run(&o).await.unwrap();
        assert_eq!(r.parameters.users_evaluated, 60);
        assert_eq!(r.results.len(), 1);
        assert_eq!(r.results[0].users, 60);
        assert!(r.results[0].metrics.hr_10 < 0.5, "{:?}", r.results[0].metrics);
        assert!(r.notes.iter().any(|n| n.contains("permuted")));
    }

    #[test]
    fn long_titles_are_cut_at_a_character_boundary() {
        let long = "é".repeat(5000);
        let it = signals::ItemRecord { id: "x".into(), asin: String::new(), title: long };
        let item = item(&it);
        assert!(item.title.len() <= vitrine_proto::Limits::default().max_title_bytes);
        assert!(item.title.chars().all(|c| c == 'é'));
        let bare = signals::ItemRecord { id: "x".into(), asin: String::new(), title: String::new() };
        assert_eq!(super::item(&bare).title, "x");
    }
}
