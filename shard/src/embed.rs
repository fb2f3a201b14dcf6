//! Text embedding with a BERT-family ONNX model (all-MiniLM-L6-v2 by default)
//! through ONNX Runtime, loaded at run time from a library path (`ort`'s
//! `load-dynamic`), so nothing is downloaded at build time.
//!
//! Vectors are pooled over the attention mask (mean by default, which is how
//! sentence-transformers produces this model's sentence embeddings; or the
//! first, `[CLS]`, token) and L2-normalised: the index compares unit
//! vectors by dot product.
//!
//! Sessions run on the execution provider [`Device`] names: the CPU, a CUDA
//! GPU, or CUDA when the runtime library offers it and the CPU otherwise.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use ort::ep::{ExecutionProvider, ExecutionProviderDispatch, CUDA};
use ort::session::Session;
use ort::value::Tensor;
use parking_lot::Mutex;
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams, TruncationStrategy};

/// Why the embedder could not load or run.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("cannot load the ONNX Runtime library {path}: {reason}")]
    Library { path: PathBuf, reason: String },
    #[error("cannot load model {path}: {reason}")]
    Model { path: PathBuf, reason: String },
    #[error("cannot load tokenizer {path}: {reason}")]
    Tokenizer { path: PathBuf, reason: String },
    #[error("tokenisation failed: {0}")]
    Tokenize(String),
    #[error("inference failed: {0}")]
    Inference(String),
    #[error("device {device}: {reason}")]
    Device { device: Device, reason: String },
}

/// Where inference runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// ONNX Runtime's CPU provider.
    #[default]
    Cpu,
    /// CUDA when the runtime library has the CUDA provider and it registers;
    /// otherwise the CPU, with a warning (tried in that order at load).
    Auto,
    /// CUDA on this GPU, or refuse to start: a GPU deployment silently
    /// running on the CPU would be slower by an order of magnitude.
    Cuda(u32),
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Auto => f.write_str("auto"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl std::str::FromStr for Device {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "auto" => Ok(Device::Auto),
            "cuda" => Ok(Device::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| format!("{s:?} is not a device; use cpu, auto, cuda or cuda:N")),
        }
    }
}

/// How token vectors become one text vector (`--pooling`, or `pooling` in
/// a model registry file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// Mean over the tokens the attention mask keeps (sentence-transformers).
    #[default]
    Mean,
    /// The first token's vector (`[CLS]`), as BERT classification heads use.
    Cls,
}

/// Where the text model lives and how to run it.
#[derive(Debug, Clone)]
pub struct TextModelConfig {
    /// Directory holding `model.onnx` and `tokenizer.json`.
    pub model_dir: PathBuf,
    /// Another ONNX file than `model_dir/model.onnx`.
    pub onnx_file: Option<PathBuf>,
    /// The ONNX Runtime shared library (e.g. `libonnxruntime.so.1.31.1`).
    pub ort_library: PathBuf,
    /// Name reported in ClusterInfo and tagged on query embeddings.
    pub name: String,
    /// ORT sessions; each serves one batch at a time (`run` needs `&mut`).
    pub sessions: usize,
    /// Intra-op threads per session.
    pub intra_threads: usize,
    /// Longest input in tokens. MiniLM was trained on 256-token inputs and
    /// its quality degrades past that, while cost grows with length.
    pub max_tokens: usize,
    /// Texts per inference call. Beyond ~32 short titles throughput on CPU
    /// stops improving (FIELD-NOTES §2) while latency keeps growing.
    pub max_batch: usize,
    /// Where inference runs.
    pub device: Device,
    pub pooling: Pooling,
}

impl TextModelConfig {
    /// Defaults for a model directory and library.
    pub fn new(model_dir: impl Into<PathBuf>, ort_library: impl Into<PathBuf>) -> Self {
        Self {
            model_dir: model_dir.into(),
            onnx_file: None,
            ort_library: ort_library.into(),
            name: "all-MiniLM-L6-v2".into(),
            sessions: 1,
            intra_threads: 1,
            max_tokens: 256,
            max_batch: 32,
            device: Device::Cpu,
            pooling: Pooling::Mean,
        }
    }
}

/// One way to build the sessions: the execution providers to register
/// (failing to register is an error) and the provider's name as reported in
/// ClusterInfo and metrics.
type Candidate = (Vec<ExecutionProviderDispatch>, String);

/// Resolves `device` against the loaded runtime library into the ways to
/// try, in order: `auto` tries CUDA and then the CPU, so a GPU build on a
/// host whose CUDA libraries fail to load still starts, on the CPU.
fn providers(device: Device, library: &Path) -> Result<Vec<Candidate>, EmbedError> {
    let cuda_available = || {
        <CUDA as ExecutionProvider>::is_available()
            .map_err(|e| EmbedError::Device { device, reason: format!("cannot list execution providers: {e}") })
    };
    let cpu = || (Vec::new(), "cpu".to_string());
    match device {
        Device::Cpu => Ok(vec![cpu()]),
        Device::Cuda(n) => {
            if !cuda_available()? {
                return Err(EmbedError::Device {
                    device,
                    reason: format!(
                        "the ONNX Runtime library {} has no CUDA execution provider (a GPU build such as the \
                         onnxruntime-gpu wheel has); use --device cpu or auto",
                        library.display()
                    ),
                });
            }
            let id = i32::try_from(n)
                .map_err(|_| EmbedError::Device { device, reason: "the GPU number is out of range".into() })?;
            Ok(vec![(vec![CUDA::default().with_device_id(id).build().error_on_failure()], format!("cuda:{n}"))])
        }
        Device::Auto => {
            if cuda_available()? {
                Ok(vec![(vec![CUDA::default().build().error_on_failure()], "cuda:0".into()), cpu()])
            } else {
                tracing::warn!(library = %library.display(),
                    "--device auto: this ONNX Runtime library has no CUDA execution provider; running on the CPU");
                Ok(vec![cpu()])
            }
        }
    }
}

/// ONNX Runtime allows one environment per process, bound to the library it
/// was loaded from; every model shares it.
static ENVIRONMENT: parking_lot::Mutex<Option<(PathBuf, ort::environment::Environment)>> =
    parking_lot::Mutex::new(None);

fn environment(library: &Path) -> Result<ort::environment::Environment, String> {
    let mut slot = ENVIRONMENT.lock();
    if let Some((loaded, env)) = slot.as_ref() {
        if loaded != library {
            return Err(format!("ONNX Runtime was already loaded from {} in this process", loaded.display()));
        }
        return Ok(env.clone());
    }
    let env =
        ort::init_from(library).map_err(|e| e.to_string())?.with_name("vitrine").build().map_err(|e| e.to_string())?;
    *slot = Some((library.to_path_buf(), env.clone()));
    Ok(env)
}

/// How to run a model: shared by the text and the image model.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// The ONNX Runtime shared library (e.g. `libonnxruntime.so.1.31.1`).
    pub ort_library: PathBuf,
    /// ORT sessions; each serves one batch at a time (`run` needs `&mut`).
    pub sessions: usize,
    /// Intra-op threads per session.
    pub intra_threads: usize,
    /// Where inference runs.
    pub device: Device,
}

/// ORT sessions of one model, used round-robin. `Session::run` needs
/// exclusive access, so each session serves one batch at a time and several
/// sessions let batches run side by side.
pub struct SessionPool {
    sessions: Vec<Mutex<Session>>,
    next: AtomicUsize,
    /// The execution provider the sessions run on (`cpu`, `cuda:0`).
    provider: String,
}

impl SessionPool {
    /// Loads the library (once per process) and `model_path` into
    /// `runtime.sessions` sessions on the provider `runtime.device` resolves
    /// to. Every failure is an error naming the file, never a panic.
    pub fn load(runtime: &RuntimeConfig, model_path: &Path) -> Result<Self, EmbedError> {
        let lib_err = |reason: String| EmbedError::Library { path: runtime.ort_library.clone(), reason };
        if !runtime.ort_library.is_file() {
            return Err(lib_err("file not found (run scripts/fetch-models.sh)".into()));
        }
        let env = environment(&runtime.ort_library).map_err(lib_err)?;
        let model_err = |reason: String| EmbedError::Model { path: model_path.to_path_buf(), reason };
        if !model_path.is_file() {
            return Err(model_err("file not found (run scripts/fetch-models.sh)".into()));
        }
        let build = |eps: &[ExecutionProviderDispatch]| -> Result<Vec<Mutex<Session>>, EmbedError> {
            let mut sessions = Vec::with_capacity(runtime.sessions.max(1));
            for _ in 0..runtime.sessions.max(1) {
                let session = Session::builder(&env)
                    .and_then(|b| Ok(b.with_execution_providers(eps)?))
                    .and_then(|b| Ok(b.with_intra_threads(runtime.intra_threads.max(1))?))
                    // Spinning threads would steal the cores HNSW searches need.
                    .and_then(|b| Ok(b.with_intra_op_spinning(false)?))
                    .and_then(|b| Ok(b.with_inter_op_spinning(false)?))
                    .and_then(|mut b| b.commit_from_file(model_path))
                    .map_err(|e| model_err(e.to_string()))?;
                sessions.push(Mutex::new(session));
            }
            Ok(sessions)
        };
        let mut candidates = providers(runtime.device, &runtime.ort_library)?.into_iter().peekable();
        loop {
            let Some((eps, provider)) = candidates.next() else {
                return Err(model_err("no execution provider to run on".into()));
            };
            match build(&eps) {
                Ok(sessions) => return Ok(Self { sessions, next: AtomicUsize::new(0), provider }),
                Err(e) if candidates.peek().is_some() => {
                    tracing::warn!(provider = %provider, error = %e,
                        "--device auto: the execution provider did not register; trying the next");
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Runs `f` on the next session, waiting if a batch is running on it.
    pub fn with<R>(&self, f: impl FnOnce(&mut Session) -> R) -> R {
        let slot = self.next.fetch_add(1, Ordering::Relaxed) % self.sessions.len();
        f(&mut self.sessions[slot].lock())
    }

    /// The execution provider in use (`cpu`, `cuda:N`).
    pub fn provider(&self) -> &str {
        &self.provider
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }
}

/// A loaded text model with a pool of ORT sessions.
pub struct TextEmbedder {
    tokenizer: Tokenizer,
    pool: SessionPool,
    dimension: usize,
    name: String,
    takes_token_type_ids: bool,
    max_batch: usize,
    pooling: Pooling,
    /// `vitrine_embed_requests_total{provider, modality="text"}`.
    requests: prometheus::IntCounter,
}

impl std::fmt::Debug for TextEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextEmbedder").field("name", &self.name).field("dimension", &self.dimension).finish()
    }
}

impl TextEmbedder {
    /// Loads the library, the model and the tokenizer, and runs one probe
    /// inference to learn the output dimension. Every failure is an error
    /// naming the file, never a panic.
    pub fn load(cfg: &TextModelConfig) -> Result<Arc<Self>, EmbedError> {
        let runtime = RuntimeConfig {
            ort_library: cfg.ort_library.clone(),
            sessions: cfg.sessions,
            intra_threads: cfg.intra_threads,
            device: cfg.device,
        };
        let model_path = cfg.onnx_file.clone().unwrap_or_else(|| cfg.model_dir.join("model.onnx"));
        let model_err = |reason: String| EmbedError::Model { path: model_path.clone(), reason };
        let pool = SessionPool::load(&runtime, &model_path)?;
        let takes_token_type_ids = pool.with(|s| s.inputs().iter().any(|i| i.name() == "token_type_ids"));

        let tok_path = cfg.model_dir.join("tokenizer.json");
        let tok_err = |reason: String| EmbedError::Tokenizer { path: tok_path.clone(), reason };
        let mut tokenizer = Tokenizer::from_file(&tok_path).map_err(|e| tok_err(e.to_string()))?;
        // The shipped tokenizer.json pads every input to 128 tokens; padding to
        // the longest input of the batch is ~16x faster on short titles.
        tokenizer.with_padding(Some(PaddingParams { strategy: PaddingStrategy::BatchLongest, ..Default::default() }));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: cfg.max_tokens,
                strategy: TruncationStrategy::LongestFirst,
                ..Default::default()
            }))
            .map_err(|e| tok_err(e.to_string()))?;

        let mut embedder = Self {
            tokenizer,
            requests: crate::metrics::get().embed_requests.with_label_values(&[pool.provider(), "text"]),
            pool,
            dimension: 0,
            name: cfg.name.clone(),
            takes_token_type_ids,
            max_batch: cfg.max_batch.max(1),
            pooling: cfg.pooling,
        };
        let probe = embedder.embed_chunk(&["probe"]).map_err(|e| model_err(format!("probe inference failed: {e}")))?;
        embedder.dimension = probe[0].len();
        tracing::info!(model = %embedder.name, dimension = embedder.dimension, sessions = embedder.pool.len(),
            intra_threads = cfg.intra_threads, provider = %embedder.pool.provider(), pooling = ?embedder.pooling,
            "text model loaded");
        Ok(Arc::new(embedder))
    }

    /// Output dimension.
    pub fn dimension(&self) -> usize {
        self.dimension
    }

    /// Model name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The execution provider in use (`cpu`, `cuda:N`).
    pub fn execution_provider(&self) -> &str {
        self.pool.provider()
    }

    /// Embeds texts; returns one unit vector per text, in order. Texts are
    /// sorted by length before batching so that a batch pads little.
    /// Each text counts in `vitrine_embed_requests_total`.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        self.requests.inc_by(texts.len() as u64);
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| texts[i].len());
        let mut out: Vec<Vec<f32>> = vec![Vec::new(); texts.len()];
        for chunk in order.chunks(self.max_batch) {
            let batch: Vec<&str> = chunk.iter().map(|&i| texts[i]).collect();
            for (&i, v) in chunk.iter().zip(self.embed_chunk(&batch)?) {
                out[i] = v;
            }
        }
        Ok(out)
    }

    fn embed_chunk(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let encodings =
            self.tokenizer.encode_batch(texts.to_vec(), true).map_err(|e| EmbedError::Tokenize(e.to_string()))?;
        let batch = encodings.len();
        let seq = encodings.iter().map(|e| e.get_ids().len()).max().unwrap_or(0).max(1);
        let mut ids = Vec::with_capacity(batch * seq);
        let mut mask = Vec::with_capacity(batch * seq);
        let mut types = Vec::with_capacity(batch * seq);
        for e in &encodings {
            let n = e.get_ids().len();
            ids.extend(e.get_ids().iter().map(|&x| i64::from(x)));
            mask.extend(e.get_attention_mask().iter().map(|&x| i64::from(x)));
            types.extend(e.get_type_ids().iter().map(|&x| i64::from(x)));
            // BatchLongest already pads, but be exact if a tokenizer did not.
            for _ in n..seq {
                ids.push(0);
                mask.push(0);
                types.push(0);
            }
        }
        let shape = vec![batch as i64, seq as i64];
        let inf = |e: ort::Error| EmbedError::Inference(e.to_string());
        let t_ids = Tensor::from_array((shape.clone(), ids)).map_err(inf)?;
        let t_mask = Tensor::from_array((shape.clone(), mask.clone())).map_err(inf)?;
        let t_types =
            if self.takes_token_type_ids { Some(Tensor::from_array((shape, types)).map_err(inf)?) } else { None };
        self.pool.with(|session| {
            let outputs = match t_types {
                Some(t_types) => session
                    .run(ort::inputs!["input_ids" => t_ids, "attention_mask" => t_mask, "token_type_ids" => t_types]),
                None => session.run(ort::inputs!["input_ids" => t_ids, "attention_mask" => t_mask]),
            }
            .map_err(inf)?;
            let (out_shape, hidden) = outputs[0].try_extract_tensor::<f32>().map_err(inf)?;
            self.pool_tokens(out_shape, hidden, &mask, batch, seq)
        })
    }

    /// One unit vector per text from the model's `[batch, seq, dim]` output.
    fn pool_tokens(
        &self,
        out_shape: &ort::value::Shape,
        hidden: &[f32],
        mask: &[i64],
        batch: usize,
        seq: usize,
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
        if out_shape.len() != 3 || out_shape[0] as usize != batch || out_shape[1] as usize != seq {
            return Err(EmbedError::Inference(format!(
                "model output has shape {out_shape:?}; expected [batch={batch}, seq={seq}, dim]"
            )));
        }
        let dim = out_shape[2] as usize;
        Ok((0..batch)
            .map(|b| {
                let tokens = &hidden[b * seq * dim..(b + 1) * seq * dim];
                let mut v = match self.pooling {
                    Pooling::Mean => mean_pool(tokens, &mask[b * seq..(b + 1) * seq], dim),
                    Pooling::Cls => tokens[..dim].to_vec(),
                };
                normalize(&mut v);
                v
            })
            .collect())
    }
}

/// Mean over the tokens the attention mask keeps (not normalised).
pub fn mean_pool(hidden: &[f32], mask: &[i64], dim: usize) -> Vec<f32> {
    let mut v = vec![0f32; dim];
    let mut n = 0f32;
    for (t, &m) in mask.iter().enumerate() {
        if m != 0 {
            n += 1.0;
            for (acc, x) in v.iter_mut().zip(&hidden[t * dim..(t + 1) * dim]) {
                *acc += x;
            }
        }
    }
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
    v
}

/// Scales a vector to unit length (leaves a zero vector alone).
pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

/// Where the fetched model files are by default, relative to a repository root.
pub fn default_model_paths(root: &Path) -> (PathBuf, PathBuf) {
    let models = root.join(".cache/models");
    (models.join("all-minilm-l6-v2"), models.join("libonnxruntime.so.1.31.1"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_pool_ignores_masked_tokens() {
        // Two tokens of dim 2; the second is padding.
        let mut v = mean_pool(&[3.0, 4.0, 100.0, 100.0], &[1, 0], 2);
        assert_eq!(v, [3.0, 4.0]);
        normalize(&mut v);
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
        assert_eq!(mean_pool(&[1.0, 3.0, 3.0, 5.0], &[1, 1], 2), [2.0, 4.0]);
    }

    #[test]
    fn devices_parse_and_print() {
        for (text, device) in [("cpu", Device::Cpu), ("auto", Device::Auto), ("cuda:3", Device::Cuda(3))] {
            assert_eq!(text.parse::<Device>(), Ok(device));
            assert_eq!(device.to_string(), text);
        }
        assert_eq!("cuda".parse::<Device>(), Ok(Device::Cuda(0)));
        for bad in ["gpu", "cuda:", "cuda:-1", "cuda:x", "CPU", ""] {
            assert!(bad.parse::<Device>().is_err(), "{bad}");
        }
    }
}
