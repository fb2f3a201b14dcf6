//! Multimodal fusion: how an item's text vector and image vector become the
//! one vector the index holds, and how a query by text, image or both
//! becomes a vector in the same space (docs/IMAGE-MODELS.md has the maths).
//!
//! Both per-modality vectors are unit length. With weights `w_t`, `w_i`
//! renormalised over the modalities an item has (`a = w_t / (w_t + w_i)`,
//! `b = w_i / (w_t + w_i)`; an item without an image has `a = 1`):
//!
//! - **concat** (the models have separate spaces, e.g. MiniLM + a ViT):
//!   `v = [√a · t, √b · i]`. `|v|² = a + b = 1`, and for two items with both
//!   modalities `v·v' = a · cos(t, t') + b · cos(i, i')`: the cosine the index
//!   ranks by is the weighted mean of the per-modality cosines.
//! - **sum** (one shared space, CLIP-style): `v = (a · t + b · i) / |a · t +
//!   b · i|`, of the models' common dimension.
//!
//! The shard keeps `t` and `i` next to `v`, so new weights re-fuse stored
//! items at start-up without running a model again.
//!
//! Queries are fused the same way, so a query by text is `[t_q, 0]` and one
//! by image `[0, i_q]`. Against items that all have both modalities its dot
//! product is `√a · cos(t_q, t)`: the text cosine, scaled the same for every
//! item. But an item missing the other modality has `a = 1`, and would beat
//! an item with both at equal text similarity. So under concat a query that
//! fills one modality's block ([`Fusion::query_part`]) is scored by that
//! modality's cosine alone: the index finds candidates by the fused vector,
//! the shard rescores them with the stored per-modality vectors.

/// How the modalities combine (`--fusion`, or `fusion` in a model
/// registry file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FusionMode {
    /// Weighted concatenation: for models with separate vector spaces.
    #[default]
    Concat,
    /// Weighted sum: for models trained into one space (CLIP towers).
    Sum,
}

/// One configured modality: its model's output dimension and its weight.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Modality {
    pub dim: usize,
    pub weight: f32,
}

/// The one modality a query vector fills, under concat fusion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryPart {
    Text,
    Image,
}

/// The shard's fusion settings, fixed at start-up.
#[derive(Debug, Clone, PartialEq)]
pub struct Fusion {
    mode: FusionMode,
    text: Option<Modality>,
    image: Option<Modality>,
}

/// Why a fusion setting or a per-modality vector is unusable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FusionError {
    #[error("the {0} weight must be a positive finite number, got {1}")]
    Weight(&'static str, f32),
    #[error("--fusion sum needs models of one dimension; the text model gives {text}, the image model {image}")]
    SumDimensions { text: usize, image: usize },
    #[error("{what} has dimension {got}; this shard's {modality} model gives {want}")]
    Dimension { what: String, modality: &'static str, got: usize, want: usize },
    #[error("{what}: this shard has no {modality} model")]
    NoModel { what: String, modality: &'static str },
}

impl Fusion {
    /// Fusion of the configured models (`None`: no such model).
    pub fn new(mode: FusionMode, text: Option<Modality>, image: Option<Modality>) -> Result<Self, FusionError> {
        for (name, m) in [("text", text), ("image", image)] {
            if let Some(m) = m {
                if !(m.weight.is_finite() && m.weight > 0.0) {
                    return Err(FusionError::Weight(name, m.weight));
                }
            }
        }
        if let (FusionMode::Sum, Some(t), Some(i)) = (mode, text, image) {
            if t.dim != i.dim {
                return Err(FusionError::SumDimensions { text: t.dim, image: i.dim });
            }
        }
        Ok(Self { mode, text, image })
    }

    /// No model at all: items must carry their vectors.
    pub fn none() -> Self {
        Self { mode: FusionMode::Concat, text: None, image: None }
    }

    /// Dimension of fused vectors; `None` without any model.
    pub fn dimension(&self) -> Option<usize> {
        match (self.text, self.image) {
            (Some(t), Some(i)) if self.mode == FusionMode::Concat => Some(t.dim + i.dim),
            (Some(t), _) => Some(t.dim),
            (None, Some(i)) => Some(i.dim),
            (None, None) => None,
        }
    }

    /// Both models are configured: per-modality vectors differ from fused ones.
    pub fn is_multimodal(&self) -> bool {
        self.text.is_some() && self.image.is_some()
    }

    pub fn text(&self) -> Option<Modality> {
        self.text
    }

    pub fn image(&self) -> Option<Modality> {
        self.image
    }

    /// For ClusterInfo: `text only`, `image only`, `concat text=0.6 image=0.4`.
    pub fn describe(&self) -> String {
        match (self.text, self.image) {
            (Some(t), Some(i)) => {
                let s = t.weight + i.weight;
                let mode = match self.mode {
                    FusionMode::Concat => "concat",
                    FusionMode::Sum => "sum",
                };
                format!("{mode} text={:.3} image={:.3}", t.weight / s, i.weight / s)
            }
            (Some(_), None) => "text only".into(),
            (None, Some(_)) => "image only".into(),
            (None, None) => "none (vectors only)".into(),
        }
    }

    /// Checks a per-modality vector against its model's dimension and
    /// returns it at unit length.
    pub fn check(&self, what: &str, modality: &'static str, v: &[f32]) -> Result<Vec<f32>, FusionError> {
        let m = match modality {
            "text" => self.text,
            _ => self.image,
        }
        .ok_or_else(|| FusionError::NoModel { what: what.to_string(), modality })?;
        if v.len() != m.dim {
            return Err(FusionError::Dimension { what: what.to_string(), modality, got: v.len(), want: m.dim });
        }
        let mut v = v.to_vec();
        crate::embed::normalize(&mut v);
        Ok(v)
    }

    /// The modality a query vector fills alone, if it fills one under
    /// concat fusion of two models (the other block all zeros).
    pub fn query_part(&self, q: &[f32]) -> Option<QueryPart> {
        let (Some(t), Some(i), FusionMode::Concat) = (self.text, self.image, self.mode) else {
            return None;
        };
        if q.len() != t.dim + i.dim {
            return None;
        }
        let (tq, iq) = q.split_at(t.dim);
        match (tq.iter().all(|x| *x == 0.0), iq.iter().all(|x| *x == 0.0)) {
            (true, false) => Some(QueryPart::Image),
            (false, true) => Some(QueryPart::Text),
            _ => None,
        }
    }

    /// The score of an item for a query that fills `part` alone: the cosine
    /// between the query's block and the item's vector of that modality,
    /// or the plain dot product with the fused vector when the item has no
    /// per-modality vectors (it was upserted with a precomputed `vector`).
    pub fn part_score(&self, part: QueryPart, q: &[f32], item_part: Option<&[f32]>, fused: &[f32]) -> f32 {
        let text_dim = self.text.map_or(0, |t| t.dim);
        let block = match part {
            QueryPart::Text => &q[..text_dim.min(q.len())],
            QueryPart::Image => &q[text_dim.min(q.len())..],
        };
        match item_part {
            Some(v) if v.len() == block.len() => dot(block, v),
            _ => dot(q, fused),
        }
    }

    /// The fused unit vector of the given per-modality unit vectors; `None`
    /// when none is given (or only one this shard has no model for).
    pub fn fuse(&self, text: Option<&[f32]>, image: Option<&[f32]>) -> Option<Vec<f32>> {
        let t = self.text.zip(text);
        let i = self.image.zip(image);
        let total = t.map_or(0.0, |(m, _)| m.weight) + i.map_or(0.0, |(m, _)| m.weight);
        let mut out = match (self.text, self.image, self.mode) {
            (Some(tm), Some(im), FusionMode::Concat) => {
                let mut out = vec![0f32; tm.dim + im.dim];
                if let Some((m, v)) = t {
                    scale_into(&mut out[..tm.dim], v, (m.weight / total).sqrt());
                }
                if let Some((m, v)) = i {
                    scale_into(&mut out[tm.dim..], v, (m.weight / total).sqrt());
                }
                out
            }
            (Some(tm), Some(_), FusionMode::Sum) => {
                let mut out = vec![0f32; tm.dim];
                for (m, v) in t.into_iter().chain(i) {
                    let w = m.weight / total;
                    out.iter_mut().zip(v).for_each(|(o, x)| *o += w * x);
                }
                out
            }
            (Some(_), None, _) => t?.1.to_vec(),
            (None, Some(_), _) => i?.1.to_vec(),
            (None, None, _) => return None,
        };
        if total == 0.0 {
            return None;
        }
        crate::embed::normalize(&mut out);
        Some(out)
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn scale_into(out: &mut [f32], v: &[f32], by: f32) {
    out.iter_mut().zip(v).for_each(|(o, x)| *o = by * x);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::normalize;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    fn unit(rng: &mut impl Rng, dim: usize) -> Vec<f32> {
        let mut v: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect();
        normalize(&mut v);
        v
    }

    fn dot(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    fn both(mode: FusionMode, wt: f32, wi: f32, dt: usize, di: usize) -> Fusion {
        Fusion::new(mode, Some(Modality { dim: dt, weight: wt }), Some(Modality { dim: di, weight: wi }))
            .expect("valid fusion")
    }

    #[test]
    fn concat_scores_are_the_weighted_mean_of_per_modality_cosines() {
        let mut rng = StdRng::seed_from_u64(5);
        let f = both(FusionMode::Concat, 3.0, 1.0, 8, 5);
        assert_eq!(f.dimension(), Some(13));
        for _ in 0..50 {
            let (t1, i1, t2, i2) = (unit(&mut rng, 8), unit(&mut rng, 5), unit(&mut rng, 8), unit(&mut rng, 5));
            let a = f.fuse(Some(&t1), Some(&i1)).expect("fused");
            let b = f.fuse(Some(&t2), Some(&i2)).expect("fused");
            assert!((dot(&a, &a) - 1.0).abs() < 1e-5, "unit length");
            let want = 0.75 * dot(&t1, &t2) + 0.25 * dot(&i1, &i2);
            assert!((dot(&a, &b) - want).abs() < 1e-5, "{} vs {want}", dot(&a, &b));
        }
    }

    #[test]
    fn a_missing_modality_renormalises_the_weights() {
        let mut rng = StdRng::seed_from_u64(6);
        let f = both(FusionMode::Concat, 3.0, 1.0, 8, 5);
        let (t, i) = (unit(&mut rng, 8), unit(&mut rng, 5));
        let text_only = f.fuse(Some(&t), None).expect("text only");
        assert_eq!(&text_only[..8], &t[..], "all the weight on the text");
        assert!(text_only[8..].iter().all(|x| *x == 0.0));
        let image_only = f.fuse(None, Some(&i)).expect("image only");
        assert!(image_only[..8].iter().all(|x| *x == 0.0));
        assert!(image_only[8..].iter().zip(&i).all(|(a, b)| (a - b).abs() < 1e-6));
        assert_eq!(f.fuse(None, None), None);
        // A text query against a multimodal item: √a · cos(t, t').
        let item = f.fuse(Some(&t), Some(&i)).expect("fused");
        assert!((dot(&text_only, &item) - 0.75f32.sqrt()).abs() < 1e-5);
    }

    #[test]
    fn single_modality_queries_are_scored_by_that_modality() {
        let mut rng = StdRng::seed_from_u64(8);
        let f = both(FusionMode::Concat, 1.0, 1.0, 8, 5);
        let (t, i, tq, iq) = (unit(&mut rng, 8), unit(&mut rng, 5), unit(&mut rng, 8), unit(&mut rng, 5));
        let text_q = f.fuse(Some(&tq), None).expect("text query");
        let image_q = f.fuse(None, Some(&iq)).expect("image query");
        let both_q = f.fuse(Some(&tq), Some(&iq)).expect("both");
        assert_eq!(f.query_part(&text_q), Some(QueryPart::Text));
        assert_eq!(f.query_part(&image_q), Some(QueryPart::Image));
        assert_eq!(f.query_part(&both_q), None);
        assert_eq!(f.query_part(&text_q[..12]), None, "wrong length");
        let item = f.fuse(Some(&t), Some(&i)).expect("item");
        let image_only = f.fuse(None, Some(&i)).expect("image-only item");
        // The fused dot product favours the image-only item by √2 ...
        assert!((dot(&image_q, &image_only) - 2f32.sqrt() * dot(&image_q, &item)).abs() < 1e-5);
        // ... the modality's cosine does not.
        let s1 = f.part_score(QueryPart::Image, &image_q, Some(&i), &item);
        let s2 = f.part_score(QueryPart::Image, &image_q, Some(&i), &image_only);
        assert!((s1 - dot(&iq, &i)).abs() < 1e-6 && (s1 - s2).abs() < 1e-6);
        assert!((f.part_score(QueryPart::Text, &text_q, Some(&t), &item) - dot(&tq, &t)).abs() < 1e-6);
        // Without per-modality vectors: the fused dot product.
        assert_eq!(f.part_score(QueryPart::Text, &text_q, None, &item), dot(&text_q, &item));
        let text_only = Fusion::new(FusionMode::Concat, Some(Modality { dim: 8, weight: 1.0 }), None).unwrap();
        assert_eq!(text_only.query_part(&tq), None, "one model: nothing to rescore");
    }

    #[test]
    fn sum_is_the_normalised_weighted_sum() {
        let mut rng = StdRng::seed_from_u64(7);
        let f = both(FusionMode::Sum, 1.0, 1.0, 6, 6);
        assert_eq!(f.dimension(), Some(6));
        let (t, i) = (unit(&mut rng, 6), unit(&mut rng, 6));
        let v = f.fuse(Some(&t), Some(&i)).expect("fused");
        let mut want: Vec<f32> = t.iter().zip(&i).map(|(a, b)| a + b).collect();
        normalize(&mut want);
        assert!(v.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-6));
        assert_eq!(f.fuse(Some(&t), None).expect("text"), t);
        assert_eq!(
            Fusion::new(
                FusionMode::Sum,
                Some(Modality { dim: 4, weight: 1.0 }),
                Some(Modality { dim: 5, weight: 1.0 })
            ),
            Err(FusionError::SumDimensions { text: 4, image: 5 })
        );
    }

    #[test]
    fn single_models_and_settings() {
        let text = Fusion::new(FusionMode::Concat, Some(Modality { dim: 3, weight: 1.0 }), None).expect("text");
        assert_eq!((text.dimension(), text.describe().as_str()), (Some(3), "text only"));
        assert_eq!(text.fuse(Some(&[0.0, 1.0, 0.0]), Some(&[1.0])), Some(vec![0.0, 1.0, 0.0]), "image ignored");
        assert_eq!(text.fuse(None, Some(&[1.0])), None);
        assert_eq!(Fusion::none().dimension(), None);
        for w in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            let bad = Fusion::new(FusionMode::Concat, Some(Modality { dim: 3, weight: w }), None);
            assert!(matches!(bad, Err(FusionError::Weight("text", _))), "{w}");
        }
        let f = both(FusionMode::Concat, 0.6, 0.4, 4, 2);
        assert_eq!(f.describe(), "concat text=0.600 image=0.400");
        assert_eq!(f.check("v", "image", &[3.0, 4.0]), Ok(vec![0.6, 0.8]));
        assert!(matches!(f.check("v", "text", &[1.0]), Err(FusionError::Dimension { want: 4, got: 1, .. })));
        assert!(matches!(text.check("v", "image", &[1.0]), Err(FusionError::NoModel { .. })));
    }
}
