//! The models a shard serves, declared in one file (`--models FILE`) or by
//! the single-model flags (`--model-dir`, `--pooling`, `--image-model-dir`,
//! ...), and the *model set* tag that names them.
//!
//! Every vector a shard logs is tagged with the versions of the models that
//! made it (`ShardUpsertRequest.text_model` / `image_model`), and so is every
//! query vector (`EmbedResponse.model` → `ShardSearchRequest.model`). Vectors
//! of two versions of a model live in two different spaces even at one
//! dimension, so a shard refuses to start over vectors another version made,
//! and refuses queries another version embedded, instead of answering with
//! nonsense: docs/OPERATIONS.md (Models).
//!
//! The file is JSON (the chart renders it from values, and serde_json is
//! already a dependency):
//!
//! ```json
//! {
//!   "models": [
//!     {"name": "all-MiniLM-L6-v2", "version": "1", "kind": "text",
//!      "dir": "/opt/vitrine/models/all-minilm-l6-v2", "pooling": "mean", "max_tokens": 256, "dimension": 384},
//!     {"name": "vit-base", "version": "3", "kind": "image", "dir": "/models/vit-base", "dimension": 768}
//!   ],
//!   "serve": {"text": "all-MiniLM-L6-v2@1", "image": "vit-base@3",
//!             "fusion": "concat", "text_weight": 1, "image_weight": 1}
//! }
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::embed::Pooling;
use crate::fusion::FusionMode;

/// What a model turns into vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// BERT family: `model.onnx` + `tokenizer.json`.
    Text,
    /// ViT family: `model.onnx` + `preprocess.json`.
    Image,
}

/// One declared model version.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub name: String,
    pub version: String,
    pub kind: Kind,
    /// Directory of `model.onnx` and `tokenizer.json` or `preprocess.json`
    /// (relative paths are relative to the registry file).
    pub dir: PathBuf,
    /// The ONNX file, relative to `dir` (default `model.onnx`).
    #[serde(default)]
    pub onnx: Option<PathBuf>,
    /// Text models: token vectors to one vector (default `mean`).
    #[serde(default)]
    pub pooling: Option<Pooling>,
    /// Text models: longest input in tokens (default 256).
    #[serde(default)]
    pub max_tokens: Option<usize>,
    /// Output dimension; checked against the model at load when given.
    #[serde(default)]
    pub dimension: Option<usize>,
    /// L2-normalise outputs. Must be true (or absent): the index compares
    /// unit vectors.
    #[serde(default)]
    pub normalize: Option<bool>,
}

impl ModelSpec {
    /// `name@version`, the model's tag.
    pub fn tag(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }

    pub fn onnx_path(&self) -> PathBuf {
        self.dir.join(self.onnx.as_deref().unwrap_or(Path::new("model.onnx")))
    }
}

/// Which declared models to serve, and how to fuse them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Serve {
    /// `name@version` of a text model, or absent: vectors only / image only.
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub fusion: Option<FusionMode>,
    #[serde(default)]
    pub text_weight: Option<f32>,
    #[serde(default)]
    pub image_weight: Option<f32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    models: Vec<ModelSpec>,
    serve: Serve,
}

/// Why the registry is unusable; start-up stops with it.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot read the model registry {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("model registry {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// The resolved models to serve.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    pub text: Option<ModelSpec>,
    pub image: Option<ModelSpec>,
    pub fusion: FusionMode,
    pub text_weight: f32,
    pub image_weight: f32,
}

impl Selection {
    /// Reads a registry file and resolves its `serve` section.
    pub fn from_file(path: &Path) -> Result<Self, RegistryError> {
        Self::from_file_serving(path, None, None)
    }

    /// The file's models with `text`/`image` (`name@version`, when given)
    /// served instead of what its `serve` names: a model switch loads the
    /// version it switches to, and start-up serves the set the newest
    /// snapshot was made with. Fusion and weights still come from `serve`.
    pub fn from_file_serving(path: &Path, text: Option<&str>, image: Option<&str>) -> Result<Self, RegistryError> {
        let read_err = |reason: String| RegistryError::Read { path: path.to_path_buf(), reason };
        let bytes = std::fs::read(path).map_err(|e| read_err(e.to_string()))?;
        let mut file: File = serde_json::from_slice(&bytes).map_err(|e| read_err(e.to_string()))?;
        if let Some(t) = text {
            file.serve.text = Some(t.to_string());
        }
        if let Some(i) = image {
            file.serve.image = Some(i.to_string());
        }
        let base = path.parent().unwrap_or(Path::new("."));
        Self::resolve(file, base).map_err(|reason| RegistryError::Invalid { path: path.to_path_buf(), reason })
    }

    /// Whether the file declares `tag` (`name@version`).
    pub fn declares(path: &Path, tag: &str) -> bool {
        std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice::<File>(&b).ok())
            .is_some_and(|f| f.models.iter().any(|m| m.tag() == tag))
    }

    fn resolve(mut file: File, base: &Path) -> Result<Self, String> {
        let mut seen = std::collections::HashSet::new();
        for m in &mut file.models {
            if m.name.is_empty() || m.version.is_empty() || m.name.contains(['@', ' ']) || m.version.contains(' ') {
                return Err(format!(
                    "model {:?} version {:?}: name and version must be non-empty, without spaces (and no @ in the name)",
                    m.name, m.version
                ));
            }
            if !seen.insert(m.tag()) {
                return Err(format!("{} is declared twice", m.tag()));
            }
            if m.normalize == Some(false) {
                return Err(format!("{}: normalize must be true; the index compares unit vectors", m.tag()));
            }
            if m.kind == Kind::Image && (m.pooling.is_some() || m.max_tokens.is_some()) {
                return Err(format!(
                    "{}: pooling and max_tokens are text settings; an image model's are in its preprocess.json",
                    m.tag()
                ));
            }
            if m.dir.is_relative() {
                m.dir = base.join(&m.dir);
            }
        }
        let pick = |tag: &Option<String>, kind: Kind| -> Result<Option<ModelSpec>, String> {
            let Some(tag) = tag else { return Ok(None) };
            let m = file
                .models
                .iter()
                .find(|m| m.tag() == *tag)
                .ok_or_else(|| format!("{tag} is not declared (declare it under models)"))?;
            if m.kind != kind {
                return Err(format!("serve names {tag} as the {kind:?} model, but it is declared as {:?}", m.kind));
            }
            Ok(Some(m.clone()))
        };
        let serve = &file.serve;
        Ok(Self {
            text: pick(&serve.text, Kind::Text)?,
            image: pick(&serve.image, Kind::Image)?,
            fusion: serve.fusion.unwrap_or_default(),
            text_weight: serve.text_weight.unwrap_or(1.0),
            image_weight: serve.image_weight.unwrap_or(1.0),
        })
    }

    /// The selection the single-model flags describe.
    pub fn from_flags(config: &crate::config::ShardConfig) -> Self {
        let text = (!config.no_model).then(|| ModelSpec {
            name: config.model_name.clone(),
            version: config.model_version.clone(),
            kind: Kind::Text,
            dir: config.model_dir.clone(),
            onnx: None,
            pooling: Some(config.pooling),
            max_tokens: None,
            dimension: None,
            normalize: None,
        });
        let image = config.image_model_dir.as_ref().map(|dir| ModelSpec {
            name: dir.file_name().map_or_else(|| "image-model".into(), |n| n.to_string_lossy().into_owned()),
            version: config.image_model_version.clone(),
            kind: Kind::Image,
            dir: dir.clone(),
            onnx: None,
            pooling: None,
            max_tokens: None,
            dimension: None,
            normalize: None,
        });
        Self { text, image, fusion: config.fusion, text_weight: config.text_weight, image_weight: config.image_weight }
    }

    /// The model set tag: `text@v + image@v`, `text@v`, `image@v` or
    /// `none` (vectors only).
    pub fn tag(&self) -> String {
        match (&self.text, &self.image) {
            (Some(t), Some(i)) => format!("{} + {}", t.tag(), i.tag()),
            (Some(t), None) => t.tag(),
            (None, Some(i)) => i.tag(),
            (None, None) => "none".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: serde_json::Value) -> Result<Selection, String> {
        let file: File = serde_json::from_value(json).map_err(|e| e.to_string())?;
        Selection::resolve(file, Path::new("/etc/vitrine"))
    }

    fn text(version: &str) -> serde_json::Value {
        serde_json::json!({"name": "minilm", "version": version, "kind": "text", "dir": "minilm", "pooling": "cls"})
    }

    #[test]
    fn serve_picks_declared_versions() {
        let vit =
            serde_json::json!({"name": "vit", "version": "3", "kind": "image", "dir": "/m/vit", "dimension": 192});
        let s = parse(serde_json::json!({
            "models": [text("1"), text("2"), vit],
            "serve": {"text": "minilm@2", "image": "vit@3", "fusion": "sum", "image_weight": 0.5}
        }))
        .expect("valid");
        let t = s.text.as_ref().expect("text");
        assert_eq!((t.version.as_str(), t.dir.as_path()), ("2", Path::new("/etc/vitrine/minilm")));
        assert_eq!(t.pooling, Some(Pooling::Cls));
        assert_eq!(t.onnx_path(), Path::new("/etc/vitrine/minilm/model.onnx"));
        assert_eq!(s.image.as_ref().map(|i| i.dir.as_path()), Some(Path::new("/m/vit")));
        assert_eq!((s.fusion, s.text_weight, s.image_weight), (FusionMode::Sum, 1.0, 0.5));
        assert_eq!(s.tag(), "minilm@2 + vit@3");
        let only_text = parse(serde_json::json!({"models": [text("1")], "serve": {"text": "minilm@1"}})).unwrap();
        assert_eq!((only_text.tag(), only_text.image), ("minilm@1".to_string(), None));
    }

    #[test]
    fn mistakes_are_named() {
        let err = |v: serde_json::Value| parse(v).expect_err("refused");
        assert!(err(serde_json::json!({"models": [text("1")], "serve": {"text": "minilm@2"}})).contains("not declared"));
        assert!(err(serde_json::json!({"models": [text("1"), text("1")], "serve": {}})).contains("declared twice"));
        assert!(
            err(serde_json::json!({"models": [text("1")], "serve": {"image": "minilm@1"}})).contains("as the Image")
        );
        let mut bad = text("1");
        bad["normalize"] = false.into();
        assert!(err(serde_json::json!({"models": [bad], "serve": {}})).contains("normalize"));
        let mut typo = text("1");
        typo["pooling_mode"] = "mean".into();
        assert!(err(serde_json::json!({"models": [typo], "serve": {}})).contains("unknown field"));
        let image_pooling =
            serde_json::json!({"name": "v", "version": "1", "kind": "image", "dir": "d", "pooling": "cls"});
        assert!(err(serde_json::json!({"models": [image_pooling], "serve": {}})).contains("preprocess.json"));
        let at = serde_json::json!({"name": "a@b", "version": "1", "kind": "text", "dir": "d"});
        assert!(err(serde_json::json!({"models": [at], "serve": {}})).contains("no @"));
    }
}
