//! Switching a shard to another model version while it serves.
//!
//! A shard holds one *generation* (a model set and the index of the vectors
//! it made) and, during a switch, a second one. The switch has three phases,
//! each run on every replica by `vitrine models switch` through the router:
//!
//! 1. **Prepare**: load the new models beside the served ones (from the
//!    `--models` file, re-read so a version can be declared without a
//!    restart) and re-embed every stored item into a second, *staged*
//!    index. Writes keep going to the served generation only; the staged
//!    one follows by comparing contents (below), so the write path carries
//!    no second model call.
//! 2. **Commit**: converge again outside the write lock, then, holding it,
//!    re-embed what the last writes changed, write a snapshot of the staged
//!    generation (tagged with the new models: on disk, that snapshot *is*
//!    the switch, see [`crate::open`]) and make it the served one. The old
//!    generation becomes *retired*: it still answers queries that were
//!    embedded with the old models before the commit, so none fails.
//! 3. **Release**: drop the other generation, which unloads its models.
//!
//! Why converge by content rather than write twice: a staged item is
//! re-embedded when the served item differs from the one it was made from
//! (the wire item, its version and its image vector), which covers writes,
//! deletes, replica catch-up and unversioned writes alike, and cannot leave
//! the staged index with an item the served one no longer has.
//!
//! Stored items keep no photos (only their image vectors), so the image
//! model cannot change in place: a prepare that names another image model is
//! refused with the reason.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::Status;
use vitrine_proto::pb;

use crate::catalog::{Catalog, Modalities, StoredItem};
use crate::models::{has_text, Models};
use crate::registry::Selection;
use crate::service::{blocking, item_text, ShardState};
use crate::store::StoreError;

/// A model set and the index of the vectors it made.
pub struct Generation {
    pub models: Models,
    pub catalog: Arc<Catalog>,
}

impl Generation {
    /// The model set's tag (`crate::registry`).
    pub fn set(&self) -> &str {
        &self.models.tags.set
    }
}

/// What the generation that is not served is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtherState {
    /// Being prepared (or prepared) to be served next.
    Staged,
    /// Served before the last commit; kept until released.
    Retired,
}

impl OtherState {
    pub fn as_str(self) -> &'static str {
        match self {
            OtherState::Staged => "staged",
            OtherState::Retired => "retired",
        }
    }
}

/// The served generation and, during a switch, the other one.
pub struct Generations {
    pub serving: Arc<Generation>,
    pub other: Option<(Arc<Generation>, OtherState)>,
}

/// Items re-embedded per model call while converging.
const CHUNK: usize = 64;
/// At commit, converging outside the write lock stops once a pass
/// re-embeds at most this many items; the rest are done under the lock.
const SMALL_PASS: u64 = CHUNK as u64;
/// Converging passes before a commit gives up (writes faster than the new
/// model can follow).
const MAX_PASSES: usize = 20;

/// Runs one phase on this replica.
pub async fn run(state: &Arc<ShardState>, req: pb::SwitchModelsRequest) -> Result<pb::ShardModelSwitch, Status> {
    let started = Instant::now();
    // One phase at a time on a replica.
    let _one = state.switching.lock().await;
    let phase = pb::ModelSwitchPhase::try_from(req.phase).unwrap_or(pb::ModelSwitchPhase::Unspecified);
    let reembedded = match phase {
        pb::ModelSwitchPhase::Prepare => prepare(state, &req).await?,
        pb::ModelSwitchPhase::Commit => commit(state, &req).await?,
        pb::ModelSwitchPhase::Release => {
            release(state, &req)?;
            0
        }
        pb::ModelSwitchPhase::Unspecified => {
            return Err(Status::invalid_argument("SwitchModels needs a phase: prepare, commit or release"))
        }
    };
    let mut report = report(state);
    report.reembedded = reembedded;
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// This replica's generations as a SwitchModels answer.
pub fn report(state: &ShardState) -> pb::ShardModelSwitch {
    let g = state.generations.read();
    let (other, other_state) =
        g.other.as_ref().map_or((String::new(), String::new()), |(o, s)| (o.set().to_string(), s.as_str().to_string()));
    // Items in the switched-to index: the staged one while preparing.
    let target = match &g.other {
        Some((o, OtherState::Staged)) => o,
        _ => &g.serving,
    };
    pb::ShardModelSwitch {
        shard: state.shard_id,
        replica: state.replica,
        serving: g.serving.set().to_string(),
        other,
        other_state,
        items: target.catalog.len() as u64,
        ..Default::default()
    }
}

/// The requested (text, image) tags: the image defaults to the served one,
/// and may not differ from it.
fn target(serving: &Generation, req: &pb::SwitchModelsRequest) -> Result<(String, String), Status> {
    if req.text_model.is_empty() {
        return Err(Status::invalid_argument("name the text model to switch to, as name@version"));
    }
    let current_image = &serving.models.tags.image;
    let image = if req.image_model.is_empty() { current_image.clone() } else { req.image_model.clone() };
    if &image != current_image {
        return Err(Status::failed_precondition(format!(
            "the image model cannot change in place (serving {}, asked for {image}): stored items keep their image \
             vectors, not their photos; upsert the photos again to a cluster serving the new image model",
            if current_image.is_empty() { "none" } else { current_image }
        )));
    }
    Ok((req.text_model.clone(), image))
}

fn matches(g: &Generation, (text, image): &(String, String)) -> bool {
    &g.models.tags.text == text && &g.models.tags.image == image
}

async fn prepare(state: &Arc<ShardState>, req: &pb::SwitchModelsRequest) -> Result<u64, Status> {
    let serving = state.serving();
    let want = target(&serving, req)?;
    if matches(&serving, &want) {
        return Err(Status::failed_precondition(format!("this shard already serves {}", serving.set())));
    }
    let staged = match state.generations.read().other.clone() {
        Some((g, OtherState::Staged)) if matches(&g, &want) => Some(g),
        Some((g, s)) => {
            return Err(Status::failed_precondition(format!(
                "{} is still loaded ({}); release it before preparing another switch",
                g.set(),
                s.as_str()
            )))
        }
        None => None,
    };
    let staged = match staged {
        // Resume: converge what is already there.
        Some(g) => g,
        None => {
            let Some(path) = state.config.models.clone() else {
                return Err(Status::failed_precondition(
                    "model switches need a model registry: start the shards with --models FILE declaring both versions",
                ));
            };
            let unembeddable = serving.catalog.export().iter().filter(|it| !can_reembed(it)).count();
            if unembeddable > 0 {
                return Err(Status::failed_precondition(format!(
                    "{unembeddable} stored items have neither text nor an image vector (their vectors were sent by \
                     the client), so no model can re-embed them"
                )));
            }
            let config = state.config.clone();
            let (text, image) = want.clone();
            let g = blocking(move || -> anyhow::Result<Generation> {
                let image = (!image.is_empty()).then_some(image.as_str());
                let selection = Selection::from_file_serving(&path, Some(&text), image)?;
                let models = crate::load_models(&config, &selection)?;
                let dimension = models.fusion.dimension().unwrap_or(0);
                let catalog = Arc::new(crate::new_catalog(&config, dimension));
                Ok(Generation { models, catalog })
            })
            .await?
            .map_err(|e| Status::failed_precondition(format!("cannot load {}: {e:#}", want.0)))?;
            let g = Arc::new(g);
            tracing::info!(staged = g.set(), serving = serving.set(), "model switch: new models loaded beside");
            state.generations.write().other = Some((Arc::clone(&g), OtherState::Staged));
            g
        }
    };
    let mut total = 0;
    for _ in 0..MAX_PASSES {
        let (s, g) = (Arc::clone(state), Arc::clone(&staged));
        let n = blocking(move || converge(&s.serving(), &g)).await??;
        total += n;
        if n == 0 {
            break;
        }
    }
    tracing::info!(staged = staged.set(), items = staged.catalog.len(), reembedded = total, "model switch prepared");
    Ok(total)
}

async fn commit(state: &Arc<ShardState>, req: &pb::SwitchModelsRequest) -> Result<u64, Status> {
    let serving = state.serving();
    let want = target(&serving, req)?;
    if matches(&serving, &want) {
        return Ok(0); // committed already: idempotent
    }
    let staged = match state.generations.read().other.clone() {
        Some((g, OtherState::Staged)) if matches(&g, &want) => g,
        _ => {
            return Err(Status::failed_precondition(format!(
                "nothing is prepared for {}; run the prepare phase first",
                want.0
            )))
        }
    };
    let mut total = 0;
    for _ in 0..MAX_PASSES {
        let (s, g) = (Arc::clone(state), Arc::clone(&staged));
        let n = blocking(move || converge(&s.serving(), &g)).await??;
        total += n;
        if n <= SMALL_PASS {
            break;
        }
    }
    let mut busy_since = None;
    loop {
        let (s, g) = (Arc::clone(state), Arc::clone(&staged));
        match blocking(move || swap(&s, &g)).await? {
            Ok(n) => {
                total += n;
                break;
            }
            // A background snapshot is being written: wait for it.
            Err(SwapError::Snapshot(StoreError::Busy))
                if busy_since.get_or_insert_with(Instant::now).elapsed() < Duration::from_secs(60) =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    if let Err(e) = state.snapshots.prune_after(&state.wal) {
        tracing::warn!(error = %e, "model switch: pruning old snapshots failed; the next snapshot retries");
    }
    tracing::info!(serving = staged.set(), retired = serving.set(), reembedded = total, "model switch committed");
    Ok(total)
}

#[derive(Debug, thiserror::Error)]
enum SwapError {
    #[error(transparent)]
    Snapshot(#[from] StoreError),
    #[error(transparent)]
    Embed(#[from] Status),
}

impl From<SwapError> for Status {
    fn from(e: SwapError) -> Self {
        match e {
            SwapError::Snapshot(e) => Status::internal(format!("model switch not committed: snapshot failed: {e}")),
            SwapError::Embed(s) => s,
        }
    }
}

/// Under the write lock: the last convergence, the tagged snapshot, the swap.
fn swap(state: &ShardState, staged: &Arc<Generation>) -> Result<u64, SwapError> {
    let mut wal = state.wal.lock();
    let serving = state.serving();
    let n = converge(&serving, staged)?;
    state.snapshots.take_locked(&mut wal, || state.capture(staged))?;
    let mut g = state.generations.write();
    g.serving = Arc::clone(staged);
    g.other = Some((serving, OtherState::Retired));
    Ok(n)
}

fn release(state: &ShardState, req: &pb::SwitchModelsRequest) -> Result<(), Status> {
    let mut g = state.generations.write();
    match &g.other {
        None => Ok(()),
        Some((o, _)) if req.text_model.is_empty() || o.models.tags.text == req.text_model => {
            tracing::info!(released = o.set(), serving = g.serving.set(), "model switch: other models released");
            g.other = None;
            Ok(())
        }
        Some((o, s)) => Err(Status::failed_precondition(format!(
            "this shard holds {} ({}), not {}; nothing released",
            o.set(),
            s.as_str(),
            req.text_model
        ))),
    }
}

/// Whether a model can make this item's vector again.
fn can_reembed(item: &StoredItem) -> bool {
    has_text(&item.item) || item.modalities.image.is_some()
}

/// Brings `staged` up to `serving`: re-embeds every served item that differs
/// from the one its staged copy was made from, and applies deletes. Returns
/// how many items it embedded.
fn converge(serving: &Generation, staged: &Generation) -> Result<u64, Status> {
    let mut todo = Vec::new();
    for it in serving.catalog.export() {
        let fresh = staged
            .catalog
            .get(it.id())
            .is_some_and(|s| s.version == it.version && s.item == it.item && s.modalities.image == it.modalities.image);
        if !fresh {
            todo.push(it);
        }
    }
    // Ids the served index no longer has, and remembered deletes.
    let (live, _) = staged.catalog.digest();
    let gone: Vec<(String, u64)> = live
        .into_iter()
        .filter(|(id, _)| serving.catalog.get(id).is_none())
        .map(|(id, _)| {
            let v = serving.catalog.version_of(&id).unwrap_or(0);
            (id, v)
        })
        .chain(serving.catalog.export_deleted().into_iter().filter(|(id, v)| staged.catalog.version_of(id) != Some(*v)))
        .collect();
    if !gone.is_empty() {
        let (ids, versions): (Vec<String>, Vec<u64>) = gone.into_iter().unzip();
        staged.catalog.delete_versioned(&ids, &versions);
    }
    let mut embedded = 0;
    for chunk in todo.chunks(CHUNK) {
        let items = reembed(&staged.models, chunk)?;
        embedded += items.len() as u64;
        // Versions only grow here (staged copies come from served items),
        // and unversioned writes always apply.
        staged.catalog.upsert(items);
    }
    Ok(embedded)
}

/// The items' vectors under `models`: text embedded again, the stored image
/// vector kept (the image model does not change in place), then fused.
fn reembed(models: &Models, items: &[Arc<StoredItem>]) -> Result<Vec<StoredItem>, Status> {
    let with_text: Vec<usize> = (0..items.len()).filter(|&i| has_text(&items[i].item)).collect();
    let mut texts: Vec<Option<Vec<f32>>> = vec![None; items.len()];
    if let (Some(text), false) = (&models.text, with_text.is_empty()) {
        let inputs: Vec<String> = with_text.iter().map(|&i| item_text(&items[i].item)).collect();
        let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let vectors = text.model.embed(&refs).map_err(|e| Status::internal(format!("re-embedding failed: {e}")))?;
        for (&i, v) in with_text.iter().zip(vectors) {
            texts[i] = Some(v);
        }
    }
    let image_dim = models.fusion.image().map(|m| m.dim);
    let mut out = Vec::with_capacity(items.len());
    for (it, text) in items.iter().zip(texts) {
        let image = it.modalities.image.as_ref().filter(|v| Some(v.values.len()) == image_dim);
        let Some(vector) = models.fusion.fuse(text.as_deref(), image.map(|v| v.values.as_slice())) else {
            return Err(Status::failed_precondition(format!(
                "item {:?} has nothing {} can embed",
                it.id(),
                models.tags.set
            )));
        };
        let modalities = if models.fusion.is_multimodal() {
            Modalities { text: text.map(|values| pb::Vector { values }), image: image.cloned() }
        } else {
            Modalities::default()
        };
        out.push(StoredItem { item: it.item.clone(), vector, modalities, version: it.version });
    }
    Ok(out)
}
