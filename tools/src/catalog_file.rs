//! Catalogue files: one JSON object per line, flat attributes, the format of
//! `demo/catalog.jsonl`. [`Record`] is also what the CSV, Parquet and npy
//! readers of `vitrine load` produce (`load/source.rs`).

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use serde::Deserialize;
use vitrine_proto::pb;

/// One line of a catalogue file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub id: String,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub category: String,
    #[serde(default)]
    pub brand: String,
    pub price: Option<f64>,
    pub in_stock: Option<bool>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub strings: HashMap<String, String>,
    #[serde(default)]
    pub numbers: HashMap<String, f64>,
    /// Precomputed vector; skips embedding.
    pub vector: Option<Vec<f32>>,
    /// Precomputed text-model vector, fused by the shard with the image's
    /// (not together with `vector`).
    #[serde(default)]
    pub text_vector: Option<Vec<f32>>,
    /// Precomputed image-model vector.
    #[serde(default)]
    pub image_vector: Option<Vec<f32>>,
    /// Image file, relative to the catalogue file.
    pub image_path: Option<String>,
    /// When the product went on sale, milliseconds since the Unix epoch; 0
    /// (the default) means unknown.
    #[serde(default)]
    pub published_ms: i64,
}

impl Record {
    pub fn into_item(self, base: Option<&Path>) -> anyhow::Result<pb::Item> {
        let image = match (&self.image_path, base) {
            (Some(p), Some(base)) => {
                std::fs::read(base.join(p)).with_context(|| format!("item {}: reading image {p}", self.id))?
            }
            (Some(p), None) => std::fs::read(p).with_context(|| format!("item {}: reading image {p}", self.id))?,
            (None, _) => Vec::new(),
        };
        Ok(pb::Item {
            id: self.id,
            title: self.title,
            description: self.description,
            image,
            attributes: Some(pb::Attributes {
                category: self.category,
                brand: self.brand,
                price: self.price,
                in_stock: self.in_stock,
                tags: self.tags,
                strings: self.strings,
                numbers: self.numbers,
            }),
            vector: self.vector.map(|values| pb::Vector { values }),
            published_ms: self.published_ms,
            text_vector: self.text_vector.map(|values| pb::Vector { values }),
            image_vector: self.image_vector.map(|values| pb::Vector { values }),
        })
    }
}

/// Parses catalogue text; errors name the line.
pub fn parse(text: &str, base: Option<&Path>) -> anyhow::Result<Vec<pb::Item>> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            let rec: Record = serde_json::from_str(line).with_context(|| format!("line {}", i + 1))?;
            rec.into_item(base).with_context(|| format!("line {}", i + 1))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_demo_catalogue_parses() {
        let items = parse(crate::demo::CATALOG, None).unwrap();
        assert!(items.len() >= 200);
        let mut ids: Vec<&str> = items.iter().map(|i| i.id.as_str()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), items.len(), "ids are unique");
        assert!(items.iter().all(|i| !i.title.is_empty()));
    }

    #[test]
    fn errors_name_the_line() {
        let err = parse("{\"id\":\"a\"}\n{\"id\": 3}\n", None).unwrap_err();
        assert!(format!("{err:#}").contains("line 2"), "{err:#}");
        assert!(parse("{\"id\":\"a\",\"colour\":\"red\"}", None).is_err(), "unknown fields are errors");
    }
}
