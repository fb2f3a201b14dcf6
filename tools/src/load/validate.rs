//! Checks a record before it is sent, so that one bad line costs one skipped
//! item with a reason instead of a rejected batch of 64.

use std::path::Path;

use vitrine_proto::pb;

use crate::catalog_file::Record;

/// The router's limit on id length (proto: "1 to 256 bytes of UTF-8").
pub const MAX_ID_BYTES: usize = 256;

/// What the checks remember between records: the vector dimension, fixed by
/// the first record with a vector, because a cluster has one dimension and a
/// file that mixes two is wrong in all but one of them.
#[derive(Debug, Default)]
pub struct Validator {
    dimension: Option<usize>,
}

impl Validator {
    /// The wire item for `rec`, or why it must be skipped. Image paths are
    /// relative to `base` (the catalogue's directory) and read here, so an
    /// unreadable image is a skip reason rather than a failed batch.
    pub fn check(&mut self, rec: Record, base: Option<&Path>) -> Result<pb::Item, String> {
        if rec.id.is_empty() {
            return Err("id is empty".into());
        }
        if rec.id.len() > MAX_ID_BYTES {
            return Err(format!("id is {} bytes; the limit is {MAX_ID_BYTES}", rec.id.len()));
        }
        if rec.id.chars().any(char::is_control) {
            return Err("id contains control characters".into());
        }
        if let Some(p) = rec.price {
            if !p.is_finite() {
                return Err(format!("price is {p}"));
            }
        }
        if let Some((k, v)) = rec.numbers.iter().find(|(_, v)| !v.is_finite()) {
            return Err(format!("numbers.{k} is {v}"));
        }
        if let Some(v) = &rec.vector {
            if v.is_empty() {
                return Err("vector is empty".into());
            }
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(format!("vector component {i} is {}", v[i]));
            }
            if v.iter().all(|&x| x == 0.0) {
                return Err("vector is all zeros (it has no direction to compare)".into());
            }
            match self.dimension {
                None => self.dimension = Some(v.len()),
                Some(d) if d != v.len() => {
                    return Err(format!("vector has {} components; earlier records have {d}", v.len()))
                }
                Some(_) => {}
            }
        }
        for (field, v) in [("text_vector", &rec.text_vector), ("image_vector", &rec.image_vector)] {
            if let Some(v) = v {
                if v.iter().any(|x| !x.is_finite()) || v.iter().all(|&x| x == 0.0) {
                    return Err(format!("{field} has a non-finite value or is all zeros"));
                }
            }
        }
        if rec.vector.is_some() && (rec.text_vector.is_some() || rec.image_vector.is_some()) {
            return Err("both vector and text_vector/image_vector; send one or the other".into());
        }
        let image = match &rec.image_path {
            Some(p) => {
                let path = base.map_or_else(|| Path::new(p).to_path_buf(), |b| b.join(p));
                std::fs::read(&path).map_err(|e| format!("image {}: {e}", path.display()))?
            }
            None => Vec::new(),
        };
        let precomputed = rec.vector.is_some() || rec.text_vector.is_some() || rec.image_vector.is_some();
        if !precomputed && rec.title.trim().is_empty() && rec.description.trim().is_empty() && image.is_empty() {
            return Err("nothing to embed: no title, description, image or vector".into());
        }
        Ok(pb::Item {
            id: rec.id,
            title: rec.title,
            description: rec.description,
            image,
            attributes: Some(pb::Attributes {
                category: rec.category,
                brand: rec.brand,
                price: rec.price,
                in_stock: rec.in_stock,
                tags: rec.tags,
                strings: rec.strings,
                numbers: rec.numbers,
            }),
            vector: rec.vector.map(|values| pb::Vector { values }),
            published_ms: rec.published_ms,
            text_vector: rec.text_vector.map(|values| pb::Vector { values }),
            image_vector: rec.image_vector.map(|values| pb::Vector { values }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str) -> Record {
        serde_json::from_str(&format!("{{\"id\":{id:?},\"title\":\"t\"}}")).unwrap()
    }

    #[test]
    fn ids_vectors_numbers_and_images_are_checked() {
        let mut v = Validator::default();
        assert!(v.check(rec("a"), None).is_ok());
        assert!(v.check(rec(""), None).unwrap_err().contains("empty"));
        assert!(v.check(rec(&"x".repeat(257)), None).unwrap_err().contains("257 bytes"));
        let mut r = rec("v");
        r.vector = Some(vec![1.0, f32::NAN]);
        assert!(v.check(r, None).unwrap_err().contains("component 1"));
        let mut r = rec("v");
        r.vector = Some(vec![1.0, 0.0]);
        assert!(v.check(r, None).is_ok());
        let mut r = rec("w");
        r.vector = Some(vec![1.0, 0.0, 0.0]);
        assert!(v.check(r, None).unwrap_err().contains("earlier records have 2"));
        let mut r = rec("p");
        r.price = Some(f64::INFINITY);
        assert!(v.check(r, None).is_err());
        let mut r = rec("i");
        r.image_path = Some("missing.jpg".into());
        assert!(v.check(r, Some(Path::new("/nonexistent"))).unwrap_err().contains("missing.jpg"));
        let mut r = rec("e");
        r.title.clear();
        assert!(v.check(r, None).unwrap_err().contains("nothing to embed"));
    }
}
