//! Input rules shared by router and shards.
//!
//! Every check returns an [`InvalidInput`] naming the offending field and
//! value, which becomes `INVALID_ARGUMENT` at the gRPC edge. Checks never
//! panic, whatever the bytes.

use crate::pb;

/// A precise description of why a request was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidInput(pub String);

impl InvalidInput {
    pub fn new(msg: impl Into<String>) -> Self {
        Self(msg.into())
    }
}

impl From<InvalidInput> for tonic::Status {
    fn from(e: InvalidInput) -> Self {
        tonic::Status::invalid_argument(e.0)
    }
}

/// Request limits. Each bounds the work or memory one request can demand.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest `k`. Above ~1000 a top-k is no longer a recommendation but an
    /// export, and per-shard candidate lists grow linearly with it.
    pub max_k: usize,
    /// Largest id in bytes; ids are keys in every shard's maps and WAL.
    pub max_id_bytes: usize,
    /// Largest title; the text model truncates at 256 tokens anyway.
    pub max_title_bytes: usize,
    /// Largest description.
    pub max_description_bytes: usize,
    /// Most items or events in one batch, so that one call cannot hold a
    /// shard's write lock for long.
    pub max_batch: usize,
    /// Most pixels in one image: a 1 KiB PNG can claim gigapixels, and
    /// decoding allocates width × height × 4 bytes.
    pub max_image_pixels: u64,
    /// Longest history/positive/negative list in a Recommend.
    pub max_history: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_k: 1000,
            max_id_bytes: 256,
            max_title_bytes: 4 * 1024,
            max_description_bytes: 32 * 1024,
            max_batch: 10_000,
            max_image_pixels: 40_000_000,
            max_history: 1000,
        }
    }
}

/// Checks an id: 1 to `max_id_bytes` bytes, no control characters.
pub fn id(what: &str, id: &str, limits: &Limits) -> Result<(), InvalidInput> {
    if id.is_empty() {
        return Err(InvalidInput::new(format!("{what} is empty; ids must be 1 to {} bytes", limits.max_id_bytes)));
    }
    if id.len() > limits.max_id_bytes {
        return Err(InvalidInput::new(format!(
            "{what} is {} bytes; ids must be 1 to {} bytes",
            id.len(),
            limits.max_id_bytes
        )));
    }
    if id.chars().any(char::is_control) {
        return Err(InvalidInput::new(format!("{what} {id:?} contains control characters")));
    }
    Ok(())
}

/// Checks `k` against 1..=max_k.
pub fn k(k: u32, limits: &Limits) -> Result<usize, InvalidInput> {
    let k = k as usize;
    if k == 0 || k > limits.max_k {
        return Err(InvalidInput::new(format!("k = {k} is out of range; k must be 1 to {}", limits.max_k)));
    }
    Ok(k)
}

/// Checks a vector's dimension and values, and returns it normalised to unit
/// length: the index compares by dot product, which equals cosine similarity
/// only on unit vectors.
pub fn vector(what: &str, v: &[f32], dim: usize) -> Result<Vec<f32>, InvalidInput> {
    if v.len() != dim {
        return Err(InvalidInput::new(format!(
            "{what} has dimension {}; this cluster's vectors have dimension {dim}",
            v.len()
        )));
    }
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(InvalidInput::new(format!("{what} has a non-finite value ({}) at index {i}", v[i])));
    }
    let norm = v.iter().map(|x| f64::from(*x) * f64::from(*x)).sum::<f64>().sqrt();
    if norm == 0.0 || !norm.is_finite() {
        return Err(InvalidInput::new(format!("{what} has zero (or overflowing) length and cannot be normalised")));
    }
    Ok(v.iter().map(|x| (f64::from(*x) / norm) as f32).collect())
}

/// Checks a query text: not blank, within the description limit.
pub fn query_text(text: &str, limits: &Limits) -> Result<(), InvalidInput> {
    if text.trim().is_empty() {
        return Err(InvalidInput::new("query text is empty"));
    }
    if text.len() > limits.max_description_bytes {
        return Err(InvalidInput::new(format!(
            "query text is {} bytes; the limit is {}",
            text.len(),
            limits.max_description_bytes
        )));
    }
    Ok(())
}

/// Checks that bytes are a decodable JPEG, PNG or WebP within the pixel limit.
/// Returns (width, height). Decodes fully, because a valid header can front a
/// truncated or corrupt body.
pub fn image(what: &str, bytes: &[u8], limits: &Limits) -> Result<(u32, u32), InvalidInput> {
    use image::ImageFormat;
    let format = image::guess_format(bytes)
        .map_err(|e| InvalidInput::new(format!("{what} is not a recognised image ({e}); send JPEG, PNG or WebP")))?;
    if !matches!(format, ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::WebP) {
        return Err(InvalidInput::new(format!("{what} is {format:?}; send JPEG, PNG or WebP")));
    }
    let reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let mut reader_limits = image::Limits::default();
    reader_limits.max_alloc = Some(limits.max_image_pixels.saturating_mul(4));
    let (w, h) = image::ImageReader::with_format(std::io::Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(|e| InvalidInput::new(format!("{what} has an unreadable {format:?} header: {e}")))?;
    if u64::from(w) * u64::from(h) > limits.max_image_pixels {
        return Err(InvalidInput::new(format!(
            "{what} is {w}x{h} pixels; the limit is {} pixels",
            limits.max_image_pixels
        )));
    }
    let mut reader = reader;
    reader.limits(reader_limits);
    reader.decode().map_err(|e| InvalidInput::new(format!("{what} is a corrupt {format:?} image: {e}")))?;
    Ok((w, h))
}

fn finite(what: &str, x: f64) -> Result<(), InvalidInput> {
    if x.is_finite() {
        Ok(())
    } else {
        Err(InvalidInput::new(format!("{what} is not a finite number ({x})")))
    }
}

/// Which inputs the checking side can turn into vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Embedders {
    /// A text model is configured.
    pub text: bool,
    /// An image model is configured.
    pub image: bool,
}

impl Embedders {
    /// Both, for a side that cannot know (the router leaves it to the shards).
    pub const ANY: Embedders = Embedders { text: true, image: true };
}

/// Checks one item. `dim` is the cluster's vector dimension; `can_embed` says
/// which of an item's inputs can give it a vector when it carries none.
/// Per-modality vectors are checked here for finite, non-zero values; their
/// dimensions are the models', which only the shard knows.
pub fn item(item: &pb::Item, dim: usize, can_embed: Embedders, limits: &Limits) -> Result<(), InvalidInput> {
    id("item id", &item.id, limits)?;
    let name = &item.id;
    if item.title.len() > limits.max_title_bytes {
        return Err(InvalidInput::new(format!(
            "item {name:?}: title is {} bytes; the limit is {}",
            item.title.len(),
            limits.max_title_bytes
        )));
    }
    if item.description.len() > limits.max_description_bytes {
        return Err(InvalidInput::new(format!(
            "item {name:?}: description is {} bytes; the limit is {}",
            item.description.len(),
            limits.max_description_bytes
        )));
    }
    if !item.image.is_empty() {
        image(&format!("item {name:?}: image"), &item.image, limits)?;
    }
    if item.published_ms < 0 {
        return Err(InvalidInput::new(format!(
            "item {name:?}: published_ms is {}; use milliseconds since the Unix epoch, or 0 for unknown",
            item.published_ms
        )));
    }
    if let Some(attrs) = &item.attributes {
        if let Some(p) = attrs.price {
            finite(&format!("item {name:?}: price"), p)?;
        }
        for (key, value) in &attrs.numbers {
            finite(&format!("item {name:?}: numbers.{key}"), *value)?;
        }
    }
    let modalities = [("text_vector", &item.text_vector), ("image_vector", &item.image_vector)];
    let mut has_modality_vector = false;
    for (field, v) in modalities {
        if let Some(v) = v {
            vector(&format!("item {name:?}: {field}"), &v.values, v.values.len())?;
            has_modality_vector = true;
        }
    }
    match &item.vector {
        Some(_) if has_modality_vector => Err(InvalidInput::new(format!(
            "item {name:?} has both a vector and per-modality vectors; send one or the other"
        ))),
        Some(v) => vector(&format!("item {name:?}: vector"), &v.values, dim).map(drop),
        None if has_modality_vector => Ok(()),
        None => {
            let has_text = !item.title.trim().is_empty() || !item.description.trim().is_empty();
            let has_image = !item.image.is_empty();
            if (has_text && can_embed.text) || (has_image && can_embed.image) {
                Ok(())
            } else if !has_text && !has_image {
                Err(InvalidInput::new(format!(
                    "item {name:?} has neither a vector nor a title, description or image to embed"
                )))
            } else if has_text {
                Err(InvalidInput::new(format!(
                    "item {name:?} has no vector and this cluster runs without a text model; send precomputed vectors"
                )))
            } else {
                Err(InvalidInput::new(format!(
                    "item {name:?} has only an image to embed and this cluster has no image model; send a title or \
                     a vector"
                )))
            }
        }
    }
}

/// Checks a batch of items: size and unique ids, then each item.
pub fn items(items: &[pb::Item], dim: usize, can_embed: Embedders, limits: &Limits) -> Result<(), InvalidInput> {
    if items.len() > limits.max_batch {
        return Err(InvalidInput::new(format!(
            "batch has {} items; the limit is {} per call (use UpsertItemsStream for bulk loads)",
            items.len(),
            limits.max_batch
        )));
    }
    let mut seen = std::collections::HashSet::with_capacity(items.len());
    for it in items {
        item(it, dim, can_embed, limits)?;
        if !seen.insert(it.id.as_str()) {
            return Err(InvalidInput::new(format!("item id {:?} appears twice in one batch", it.id)));
        }
    }
    Ok(())
}

/// Checks an event.
pub fn event(e: &pb::Event, limits: &Limits) -> Result<(), InvalidInput> {
    id("event user_id", &e.user_id, limits)?;
    id("event item_id", &e.item_id, limits)?;
    match pb::EventType::try_from(e.r#type) {
        Ok(pb::EventType::Unspecified) | Err(_) => Err(InvalidInput::new(format!(
            "event for user {:?} has type {}; use VIEW, CLICK, ADD_TO_CART or PURCHASE",
            e.user_id, e.r#type
        ))),
        Ok(_) if e.timestamp_ms < 0 => {
            Err(InvalidInput::new(format!("event for user {:?} has a negative timestamp", e.user_id)))
        }
        Ok(_) => Ok(()),
    }
}

/// Checks the number of entries (events, signals) in one write call.
pub fn batch_len(what: &str, n: usize, limits: &Limits) -> Result<(), InvalidInput> {
    if n > limits.max_batch {
        return Err(InvalidInput::new(format!("{n} {what}; the limit is {} per call", limits.max_batch)));
    }
    Ok(())
}

/// Checks a list of ids (delete, get).
pub fn ids(what: &str, ids: &[String], limits: &Limits) -> Result<(), InvalidInput> {
    if ids.len() > limits.max_batch {
        return Err(InvalidInput::new(format!("{} {what}; the limit is {}", ids.len(), limits.max_batch)));
    }
    for i in ids {
        id(what, i, limits)?;
    }
    Ok(())
}

/// Most neighbours stored per item: the router reads the lists of every
/// recent history item on each Recommend, so they must stay short.
pub const MAX_NEIGHBOURS: usize = 1000;

/// Checks one item's behavioural signals: ids, at most [`MAX_NEIGHBOURS`]
/// neighbours with finite non-negative weights, popularity in [0, 1].
pub fn signals(s: &pb::ItemSignals, limits: &Limits) -> Result<(), InvalidInput> {
    id("signals item id", &s.id, limits)?;
    if s.neighbours.len() > MAX_NEIGHBOURS {
        return Err(InvalidInput::new(format!(
            "item {:?} has {} neighbours; the limit is {MAX_NEIGHBOURS}",
            s.id,
            s.neighbours.len()
        )));
    }
    for n in &s.neighbours {
        id("neighbour id", &n.id, limits)?;
        if !n.weight.is_finite() || n.weight < 0.0 {
            return Err(InvalidInput::new(format!(
                "neighbour {:?} of item {:?} has weight {}; weights must be finite and >= 0",
                n.id, s.id, n.weight
            )));
        }
    }
    if !(0.0..=1.0).contains(&s.popularity) {
        return Err(InvalidInput::new(format!(
            "item {:?} has popularity {}; it must be in [0, 1]",
            s.id, s.popularity
        )));
    }
    Ok(())
}

/// Checks per-request ranking overrides: finite weights, a diversity λ and an
/// exploration probability in [0, 1].
pub fn ranking(r: &pb::Ranking) -> Result<(), InvalidInput> {
    let weights = [
        ("content", r.content),
        ("behaviour", r.behaviour),
        ("popularity", r.popularity),
        ("freshness", r.freshness),
        ("feedback", r.feedback),
        ("trending", r.trending),
    ];
    for (name, w) in weights {
        if let Some(w) = w {
            if !w.is_finite() {
                return Err(InvalidInput::new(format!("ranking.{name} is {w}; weights must be finite")));
            }
        }
    }
    for (name, p) in [("diversity_lambda", r.diversity_lambda), ("explore_epsilon", r.explore_epsilon)] {
        if let Some(p) = p {
            if !(0.0..=1.0).contains(&p) {
                return Err(InvalidInput::new(format!("ranking.{name} is {p}; it must be in [0, 1]")));
            }
        }
    }
    Ok(())
}

/// Checks business rules: a boost must be finite (the filter is checked by
/// the caller, which compiles it).
pub fn rule(r: &pb::Rule, index: usize) -> Result<(), InvalidInput> {
    if !r.boost.is_finite() {
        return Err(InvalidInput::new(format!("rules[{index}].boost is {}; it must be finite", r.boost)));
    }
    if r.when.is_none() {
        return Err(InvalidInput::new(format!("rules[{index}] has no `when` filter")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_bounded() {
        let l = Limits::default();
        assert!(id("id", "", &l).is_err());
        assert!(id("id", &"x".repeat(257), &l).is_err());
        assert!(id("id", &"x".repeat(256), &l).is_ok());
        assert!(id("id", "a\u{0}b", &l).is_err());
    }

    #[test]
    fn vectors_are_checked_and_normalised() {
        assert!(vector("v", &[1.0, 2.0], 3).is_err());
        assert!(vector("v", &[1.0, f32::NAN, 0.0], 3).is_err());
        assert!(vector("v", &[1.0, f32::INFINITY, 0.0], 3).is_err());
        assert!(vector("v", &[0.0, 0.0, 0.0], 3).is_err());
        let v = vector("v", &[3.0, 4.0, 0.0], 3).unwrap();
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
    }

    #[test]
    fn signals_rankings_and_rules_are_checked() {
        let l = Limits::default();
        let nb = |w: f32| pb::Neighbour { id: "b".into(), weight: w };
        let sig = |w: f32, p: f32| pb::ItemSignals { id: "a".into(), neighbours: vec![nb(w)], popularity: p };
        assert!(signals(&sig(0.5, 0.5), &l).is_ok());
        assert!(signals(&sig(-1.0, 0.5), &l).is_err());
        assert!(signals(&sig(f32::NAN, 0.5), &l).is_err());
        assert!(signals(&sig(0.5, 1.5), &l).is_err());
        let many = pb::ItemSignals { id: "a".into(), neighbours: vec![nb(1.0); MAX_NEIGHBOURS + 1], popularity: 0.0 };
        assert!(signals(&many, &l).is_err());
        assert!(ranking(&pb::Ranking { content: Some(2.0), ..Default::default() }).is_ok());
        assert!(ranking(&pb::Ranking { content: Some(f32::INFINITY), ..Default::default() }).is_err());
        assert!(ranking(&pb::Ranking { trending: Some(f32::NAN), ..Default::default() }).is_err());
        assert!(ranking(&pb::Ranking { explore_epsilon: Some(1.1), ..Default::default() }).is_err());
        assert!(ranking(&pb::Ranking { diversity_lambda: Some(-0.1), ..Default::default() }).is_err());
        assert!(rule(&pb::Rule { when: None, boost: 1.0 }, 0).is_err());
        let when = Some(pb::Filter::default());
        assert!(rule(&pb::Rule { when: when.clone(), boost: f32::NAN }, 0).is_err());
        assert!(rule(&pb::Rule { when, boost: -1.0 }, 0).is_ok());
    }

    #[test]
    fn k_is_bounded() {
        let l = Limits::default();
        assert!(k(0, &l).is_err());
        assert!(k(1001, &l).is_err());
        assert_eq!(k(10, &l).unwrap(), 10);
    }

    #[test]
    fn corrupt_images_are_rejected() {
        let l = Limits::default();
        assert!(image("img", b"not an image at all", &l).is_err());
        // A PNG signature followed by garbage.
        let mut png = vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
        png.extend_from_slice(&[0u8; 64]);
        assert!(image("img", &png, &l).is_err());
    }

    #[test]
    fn a_real_png_is_accepted_and_pixel_limit_enforced() {
        let img = image::RgbImage::from_pixel(8, 8, image::Rgb([200, 10, 10]));
        let mut buf = std::io::Cursor::new(Vec::new());
        img.write_to(&mut buf, image::ImageFormat::Png).unwrap();
        let bytes = buf.into_inner();
        assert_eq!(image("img", &bytes, &Limits::default()).unwrap(), (8, 8));
        let tight = Limits { max_image_pixels: 63, ..Limits::default() };
        assert!(image("img", &bytes, &tight).unwrap_err().0.contains("pixels"));
    }

    #[test]
    fn duplicate_ids_in_a_batch_are_rejected() {
        let it = pb::Item { id: "a".into(), title: "t".into(), ..Default::default() };
        let err = items(&[it.clone(), it], 3, Embedders::ANY, &Limits::default()).unwrap_err();
        assert!(err.0.contains("twice"));
    }
}
