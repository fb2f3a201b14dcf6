//! The shard's models as one serving unit: the text model and the image
//! model (each optional), their query batchers, the query cache and the
//! fusion that combines their vectors. The service asks it for item vectors
//! (upserts) and query vectors (Embed); recovery asks it to re-fuse stored
//! items under the current weights.

use std::sync::Arc;
use std::time::Instant;

use tonic::Status;
use vitrine_proto::{pb, validate::Embedders, Limits};

use crate::batcher::{BatchError, Batcher, BatcherConfig};
use crate::embed::TextEmbedder;
use crate::fusion::Fusion;
use crate::image_embed::ImageEmbedder;
use crate::query_cache::QueryCache;
use crate::service::blocking;

/// A model with its query batcher.
pub struct Served<M: crate::batcher::BatchModel> {
    pub model: Arc<M>,
    pub batcher: Batcher<M>,
}

impl<M: crate::batcher::BatchModel> Served<M> {
    pub fn start(model: Arc<M>, config: BatcherConfig) -> std::io::Result<Self> {
        Ok(Self { batcher: Batcher::start(Arc::clone(&model), config)?, model })
    }
}

/// The `name@version` tags of the served models (empty: none), and of the
/// set they form (`crate::registry`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tags {
    pub text: String,
    pub image: String,
    pub set: String,
}

/// Everything that turns inputs into vectors on this shard.
pub struct Models {
    pub text: Option<Served<TextEmbedder>>,
    pub image: Option<Served<ImageEmbedder>>,
    pub fusion: Fusion,
    pub tags: Tags,
    /// Recent text query embeddings (per-modality, before fusion, so that
    /// they stay right whatever the weights).
    pub query_cache: QueryCache,
}

/// A query's input.
pub enum Query {
    Text(String),
    Image(Vec<u8>),
    Both(String, Vec<u8>),
}

impl Models {
    /// What items without vectors can be embedded from.
    pub fn embedders(&self) -> Embedders {
        Embedders { text: self.text.is_some(), image: self.image.is_some() }
    }

    /// Tags a record about to be logged, snapshotted or sent to a peer
    /// with the models whose vectors it carries.
    pub fn tag(&self, req: &mut pb::ShardUpsertRequest) {
        req.text_model.clone_from(&self.tags.text);
        req.image_model.clone_from(&self.tags.image);
    }

    /// Why a record's vectors cannot be served by these models, if they
    /// cannot: a modality's vectors made by another version of its model
    /// are in another space. Untagged records (logged before tags) and a
    /// modality this shard does not serve (or did not serve then) pass.
    pub fn foreign(&self, req: &pb::ShardUpsertRequest) -> Option<String> {
        let modalities = [("text", &req.text_model, &self.tags.text), ("image", &req.image_model, &self.tags.image)];
        modalities
            .into_iter()
            .find(|(_, logged, serving)| !logged.is_empty() && !serving.is_empty() && logged != serving)
            .map(|(what, logged, serving)| {
                format!("its {what} vectors were made by {logged}, and this shard serves {serving}")
            })
    }

    /// The text model's name ("none" without one), for ClusterInfo.
    pub fn text_name(&self) -> String {
        self.text.as_ref().map_or_else(|| "none (vectors only)".to_string(), |t| t.model.name().to_string())
    }

    pub fn image_name(&self) -> String {
        self.image.as_ref().map_or_else(String::new, |i| i.model.name().to_string())
    }

    /// The execution provider of the text model (else the image model's).
    pub fn execution_provider(&self) -> &str {
        match (&self.text, &self.image) {
            (Some(t), _) => t.model.execution_provider(),
            (None, Some(i)) => i.model.execution_provider(),
            (None, None) => "none",
        }
    }

    /// Gives every item without a `vector` its fused vector: per-modality
    /// vectors the caller sent are checked against the models' dimensions,
    /// the rest embedded (texts in one call, images decoded on the blocking
    /// pool and embedded in one call). Under multimodal fusion the
    /// per-modality vectors stay on the item for the log; otherwise the
    /// fused vector is the only one. Returns how many items a model ran for.
    pub async fn embed_items(&self, items: &mut [pb::Item], limits: &Limits) -> Result<u32, Status> {
        let need: Vec<usize> = (0..items.len()).filter(|&i| items[i].vector.is_none()).collect();
        if need.is_empty() {
            return Ok(0);
        }
        let mut texts: Vec<Option<Vec<f32>>> = vec![None; items.len()];
        let mut images: Vec<Option<Vec<f32>>> = vec![None; items.len()];
        let (mut text_jobs, mut image_jobs) = (Vec::new(), Vec::new());
        for &i in &need {
            let it = &mut items[i];
            let name = it.id.clone();
            let check = |field: &str, modality: &'static str, v: &pb::Vector| {
                self.fusion
                    .check(&format!("item {name:?}: {field}"), modality, &v.values)
                    .map_err(|e| Status::invalid_argument(e.to_string()))
            };
            match it.text_vector.take() {
                Some(v) => texts[i] = Some(check("text_vector", "text", &v)?),
                None if self.text.is_some() && has_text(it) => text_jobs.push(i),
                None => {}
            }
            match it.image_vector.take() {
                Some(v) => images[i] = Some(check("image_vector", "image", &v)?),
                None if self.image.is_some() && !it.image.is_empty() => image_jobs.push(i),
                None => {}
            }
        }
        let ran: std::collections::HashSet<usize> = text_jobs.iter().chain(&image_jobs).copied().collect();
        if let (Some(text), false) = (&self.text, text_jobs.is_empty()) {
            let inputs: Vec<String> = text_jobs.iter().map(|&i| crate::service::item_text(&items[i])).collect();
            let model = Arc::clone(&text.model);
            let vectors = blocking(move || {
                let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
                model.embed(&refs)
            })
            .await?
            .map_err(|e| Status::internal(format!("text embedding failed: {e}")))?;
            for (&i, v) in text_jobs.iter().zip(vectors) {
                texts[i] = Some(v);
            }
        }
        if let (Some(image), false) = (&self.image, image_jobs.is_empty()) {
            let inputs: Vec<(String, Vec<u8>)> =
                image_jobs.iter().map(|&i| (items[i].id.clone(), std::mem::take(&mut items[i].image))).collect();
            let model = Arc::clone(&image.model);
            let max_pixels = limits.max_image_pixels;
            let vectors = blocking(move || -> Result<Vec<Vec<f32>>, Status> {
                let mut pixels = Vec::with_capacity(inputs.len());
                for (id, bytes) in &inputs {
                    let px = model
                        .pixels(bytes, max_pixels)
                        .map_err(|e| Status::invalid_argument(format!("item {id:?}: image {e}")))?;
                    pixels.push(px);
                }
                let refs: Vec<&[f32]> = pixels.iter().map(Vec::as_slice).collect();
                model.embed(&refs).map_err(|e| Status::internal(format!("image embedding failed: {e}")))
            })
            .await??;
            for (&i, v) in image_jobs.iter().zip(vectors) {
                images[i] = Some(v);
            }
        }
        for &i in &need {
            let it = &mut items[i];
            let fused = self.fusion.fuse(texts[i].as_deref(), images[i].as_deref()).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "item {:?} has nothing this shard can embed (its models: {})",
                    it.id, self.tags.set
                ))
            })?;
            it.vector = Some(pb::Vector { values: fused });
            if self.fusion.is_multimodal() {
                it.text_vector = texts[i].take().map(|values| pb::Vector { values });
                it.image_vector = images[i].take().map(|values| pb::Vector { values });
            }
        }
        Ok(ran.len() as u32)
    }

    /// Re-fuses a logged item under the current fusion settings, from the
    /// per-modality vectors it carries: weights can change across restarts
    /// without re-embedding. An item logged by a text-only shard (no
    /// per-modality vectors, a vector of the text model's dimension) takes
    /// that vector as its text vector once an image model is added.
    pub fn refuse(&self, item: &mut pb::Item) {
        if item.text_vector.is_none() && item.image_vector.is_none() {
            match (self.fusion.text(), &item.vector) {
                (Some(t), Some(v)) if self.fusion.is_multimodal() && v.values.len() == t.dim => {
                    item.text_vector = item.vector.take();
                }
                _ => return,
            }
        }
        fn usable(v: &Option<pb::Vector>, m: Option<crate::fusion::Modality>) -> Option<&[f32]> {
            v.as_ref().filter(|v| m.is_some_and(|m| m.dim == v.values.len())).map(|v| v.values.as_slice())
        }
        let text = usable(&item.text_vector, self.fusion.text());
        let image = usable(&item.image_vector, self.fusion.image());
        if let Some(fused) = self.fusion.fuse(text, image) {
            item.vector = Some(pb::Vector { values: fused });
        }
    }

    /// A query's vector: text through the query cache and the text
    /// batcher, an image decoded on the blocking pool and through the image
    /// batcher, both at once for both; then fused. Returns the vector and
    /// the tag of the model set whose space it is in.
    pub async fn embed_query(
        &self,
        query: Query,
        deadline: Instant,
        limits: &Limits,
    ) -> Result<(Vec<f32>, String), Status> {
        let (text, image) = match query {
            Query::Text(t) => (Some(self.text_query(t, deadline).await?), None),
            Query::Image(b) => (None, Some(self.image_query(b, deadline, limits).await?)),
            Query::Both(t, b) => {
                let (t, i) = tokio::join!(self.text_query(t, deadline), self.image_query(b, deadline, limits));
                (Some(t?), Some(i?))
            }
        };
        let fused = self
            .fusion
            .fuse(text.as_deref().map(Vec::as_slice), image.as_deref())
            .ok_or_else(|| Status::internal("fusion produced no vector"))?;
        Ok((fused, self.tags.set.clone()))
    }

    async fn text_query(&self, text: String, deadline: Instant) -> Result<Arc<Vec<f32>>, Status> {
        let served = self
            .text
            .as_ref()
            .ok_or_else(|| Status::failed_precondition("this shard runs without a text model; search by vector"))?;
        if let Some(v) = self.query_cache.get(&text) {
            return Ok(v);
        }
        let v = Arc::new(served.batcher.embed(text.clone(), deadline).await.map_err(batch_status)?);
        self.query_cache.put(text, Arc::clone(&v));
        Ok(v)
    }

    async fn image_query(&self, bytes: Vec<u8>, deadline: Instant, limits: &Limits) -> Result<Vec<f32>, Status> {
        let served = self.image.as_ref().ok_or_else(|| {
            Status::failed_precondition("this cluster has no image model configured; search by text or vector")
        })?;
        let model = Arc::clone(&served.model);
        let max_pixels = limits.max_image_pixels;
        let pixels = blocking(move || model.pixels(&bytes, max_pixels))
            .await?
            .map_err(|e| Status::invalid_argument(format!("query image {e}")))?;
        served.batcher.embed(pixels, deadline).await.map_err(batch_status)
    }
}

/// Whether an item has text for the text model (title or description).
pub(crate) fn has_text(item: &pb::Item) -> bool {
    !item.title.trim().is_empty() || !item.description.trim().is_empty()
}

fn batch_status(e: BatchError) -> Status {
    match e {
        BatchError::QueueFull(_) => Status::resource_exhausted(e.to_string()),
        BatchError::DeadlineExpired(_) => Status::deadline_exceeded(e.to_string()),
        BatchError::Embed(_) => Status::internal(e.to_string()),
    }
}
