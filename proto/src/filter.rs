//! The filter language: a checked form of `pb::Filter` and its evaluation.
//!
//! Fields are typed by name, so a mistyped field or a range on a string is
//! caught when the request arrives instead of silently matching nothing:
//! `category`, `brand` and `strings.<key>` are strings; `price` and
//! `numbers.<key>` are numbers; `in_stock` is a boolean; `tags` is a set.

use crate::pb;
use crate::validate::InvalidInput;

/// Filters nest at most this deep. Deeper trees are never written by hand and
/// would let a request recurse the evaluator off the stack.
pub const MAX_DEPTH: usize = 32;
/// At most this many nodes in one filter, bounding per-candidate evaluation.
pub const MAX_NODES: usize = 1024;

const KNOWN_FIELDS: &str = "category, brand, strings.<key> (strings); price, numbers.<key> (numbers); in_stock; tags";

/// A string-typed field.
#[derive(Debug, Clone, PartialEq)]
pub enum StringField {
    Category,
    Brand,
    Custom(String),
}

/// A number-typed field.
#[derive(Debug, Clone, PartialEq)]
pub enum NumberField {
    Price,
    Custom(String),
}

/// Numeric bounds; `None` is open.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Bounds {
    pub gte: Option<f64>,
    pub gt: Option<f64>,
    pub lte: Option<f64>,
    pub lt: Option<f64>,
}

impl Bounds {
    fn contains(&self, x: f64) -> bool {
        self.gte.is_none_or(|b| x >= b)
            && self.gt.is_none_or(|b| x > b)
            && self.lte.is_none_or(|b| x <= b)
            && self.lt.is_none_or(|b| x < b)
    }
}

/// A validated filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    Match { field: StringField, any_of: Vec<String> },
    Range { field: NumberField, bounds: Bounds },
    InStock(bool),
    Tag(String),
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Not(Box<Filter>),
}

fn field_kind(name: &str) -> Result<FieldKind, InvalidInput> {
    match name {
        "category" => Ok(FieldKind::String(StringField::Category)),
        "brand" => Ok(FieldKind::String(StringField::Brand)),
        "price" => Ok(FieldKind::Number(NumberField::Price)),
        "in_stock" => Ok(FieldKind::Bool),
        "tags" => Ok(FieldKind::Tags),
        _ => {
            if let Some(key) = name.strip_prefix("strings.").filter(|k| !k.is_empty()) {
                Ok(FieldKind::String(StringField::Custom(key.to_string())))
            } else if let Some(key) = name.strip_prefix("numbers.").filter(|k| !k.is_empty()) {
                Ok(FieldKind::Number(NumberField::Custom(key.to_string())))
            } else {
                Err(InvalidInput::new(format!("unknown filter field {name:?}; known fields: {KNOWN_FIELDS}")))
            }
        }
    }
}

enum FieldKind {
    String(StringField),
    Number(NumberField),
    Bool,
    Tags,
}

impl FieldKind {
    fn describe(&self) -> &'static str {
        match self {
            FieldKind::String(_) => "a string field (use match)",
            FieldKind::Number(_) => "a number field (use range)",
            FieldKind::Bool => "a boolean field (use in_stock)",
            FieldKind::Tags => "a tag set (use tag)",
        }
    }
}

impl Filter {
    /// Checks and converts a wire filter.
    pub fn from_proto(f: &pb::Filter) -> Result<Self, InvalidInput> {
        let mut nodes = 0;
        Self::convert(f, 0, &mut nodes)
    }

    /// Converts an optional wire filter; `None` when absent.
    pub fn from_optional(f: Option<&pb::Filter>) -> Result<Option<Self>, InvalidInput> {
        f.map(Self::from_proto).transpose()
    }

    fn convert(f: &pb::Filter, depth: usize, nodes: &mut usize) -> Result<Self, InvalidInput> {
        use pb::filter::Kind;
        if depth >= MAX_DEPTH {
            return Err(InvalidInput::new(format!("filter nests deeper than {MAX_DEPTH} levels")));
        }
        *nodes += 1;
        if *nodes > MAX_NODES {
            return Err(InvalidInput::new(format!("filter has more than {MAX_NODES} nodes")));
        }
        let Some(kind) = &f.kind else {
            return Err(InvalidInput::new(
                "filter node has no condition set (match, range, in_stock, tag, and, or, not)",
            ));
        };
        Ok(match kind {
            Kind::Match(m) => match field_kind(&m.field)? {
                FieldKind::String(field) => {
                    if m.any_of.is_empty() {
                        return Err(InvalidInput::new(format!("match on {:?} lists no values", m.field)));
                    }
                    Filter::Match { field, any_of: m.any_of.clone() }
                }
                other => {
                    return Err(InvalidInput::new(format!(
                        "match on {:?}: it is {}, not a string field",
                        m.field,
                        other.describe()
                    )))
                }
            },
            Kind::Range(r) => match field_kind(&r.field)? {
                FieldKind::Number(field) => {
                    let bounds = Bounds { gte: r.gte, gt: r.gt, lte: r.lte, lt: r.lt };
                    for b in [bounds.gte, bounds.gt, bounds.lte, bounds.lt].into_iter().flatten() {
                        if b.is_nan() {
                            return Err(InvalidInput::new(format!("range on {:?} has a NaN bound", r.field)));
                        }
                    }
                    Filter::Range { field, bounds }
                }
                other => {
                    return Err(InvalidInput::new(format!(
                        "range on {:?}: it is {}, not a number field",
                        r.field,
                        other.describe()
                    )))
                }
            },
            Kind::InStock(b) => Filter::InStock(*b),
            Kind::Tag(t) => {
                if t.is_empty() {
                    return Err(InvalidInput::new("tag filter has an empty tag"));
                }
                Filter::Tag(t.clone())
            }
            Kind::And(list) => {
                Filter::And(list.filters.iter().map(|f| Self::convert(f, depth + 1, nodes)).collect::<Result<_, _>>()?)
            }
            Kind::Or(list) => {
                Filter::Or(list.filters.iter().map(|f| Self::convert(f, depth + 1, nodes)).collect::<Result<_, _>>()?)
            }
            Kind::Not(inner) => Filter::Not(Box::new(Self::convert(inner, depth + 1, nodes)?)),
        })
    }

    /// Whether an item with these attributes satisfies the filter. Items
    /// without attributes are evaluated as if every field were unset.
    pub fn matches(&self, attrs: Option<&pb::Attributes>) -> bool {
        static EMPTY: std::sync::OnceLock<pb::Attributes> = std::sync::OnceLock::new();
        let a = attrs.unwrap_or_else(|| EMPTY.get_or_init(pb::Attributes::default));
        self.eval(a)
    }

    fn eval(&self, a: &pb::Attributes) -> bool {
        match self {
            Filter::Match { field, any_of } => {
                let value = match field {
                    StringField::Category => Some(a.category.as_str()),
                    StringField::Brand => Some(a.brand.as_str()),
                    StringField::Custom(k) => a.strings.get(k).map(String::as_str),
                };
                value.is_some_and(|v| any_of.iter().any(|x| x == v))
            }
            Filter::Range { field, bounds } => {
                let value = match field {
                    NumberField::Price => a.price,
                    NumberField::Custom(k) => a.numbers.get(k).copied(),
                };
                value.is_some_and(|v| bounds.contains(v))
            }
            // Unset means in stock: catalogues usually flag only exceptions.
            Filter::InStock(want) => a.in_stock.unwrap_or(true) == *want,
            Filter::Tag(t) => a.tags.iter().any(|x| x == t),
            Filter::And(fs) => fs.iter().all(|f| f.eval(a)),
            Filter::Or(fs) => fs.iter().any(|f| f.eval(a)),
            Filter::Not(f) => !f.eval(a),
        }
    }
}

/// Helpers to build wire filters, for clients and tests.
pub mod build {
    use crate::pb::{self, filter::Kind};

    pub fn matches(field: &str, values: &[&str]) -> pb::Filter {
        pb::Filter {
            kind: Some(Kind::Match(pb::Match {
                field: field.to_string(),
                any_of: values.iter().map(|s| s.to_string()).collect(),
            })),
        }
    }
    pub fn range(field: &str, gte: Option<f64>, lte: Option<f64>) -> pb::Filter {
        pb::Filter { kind: Some(Kind::Range(pb::Range { field: field.to_string(), gte, lte, ..Default::default() })) }
    }
    pub fn in_stock(v: bool) -> pb::Filter {
        pb::Filter { kind: Some(Kind::InStock(v)) }
    }
    pub fn tag(t: &str) -> pb::Filter {
        pb::Filter { kind: Some(Kind::Tag(t.to_string())) }
    }
    pub fn and(fs: Vec<pb::Filter>) -> pb::Filter {
        pb::Filter { kind: Some(Kind::And(pb::FilterList { filters: fs })) }
    }
    pub fn or(fs: Vec<pb::Filter>) -> pb::Filter {
        pb::Filter { kind: Some(Kind::Or(pb::FilterList { filters: fs })) }
    }
    pub fn not(f: pb::Filter) -> pb::Filter {
        pb::Filter { kind: Some(Kind::Not(Box::new(f))) }
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;
    use proptest::prelude::*;

    fn attrs(category: &str, price: Option<f64>, in_stock: Option<bool>, tags: &[&str]) -> pb::Attributes {
        pb::Attributes {
            category: category.into(),
            price,
            in_stock,
            tags: tags.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn unknown_fields_and_wrong_types_are_rejected() {
        let e = Filter::from_proto(&matches("colour", &["red"])).unwrap_err();
        assert!(e.0.contains("unknown filter field \"colour\""), "{e}");
        let e = Filter::from_proto(&matches("price", &["10"])).unwrap_err();
        assert!(e.0.contains("number field"), "{e}");
        let e = Filter::from_proto(&range("brand", Some(1.0), None)).unwrap_err();
        assert!(e.0.contains("string field"), "{e}");
        assert!(Filter::from_proto(&pb::Filter { kind: None }).is_err());
        assert!(Filter::from_proto(&matches("strings.", &["x"])).is_err());
        assert!(Filter::from_proto(&range("price", Some(f64::NAN), None)).is_err());
    }

    #[test]
    fn deep_filters_are_rejected() {
        let mut f = in_stock(true);
        for _ in 0..MAX_DEPTH + 1 {
            f = not(f);
        }
        assert!(Filter::from_proto(&f).unwrap_err().0.contains("deeper"));
    }

    #[test]
    fn evaluation_follows_the_documented_semantics() {
        let shoe = attrs("shoes", Some(50.0), None, &["red", "sale"]);
        let f = |w: pb::Filter| Filter::from_proto(&w).unwrap();
        assert!(f(matches("category", &["bags", "shoes"])).matches(Some(&shoe)));
        assert!(!f(matches("brand", &["x"])).matches(Some(&shoe)));
        assert!(f(range("price", Some(50.0), Some(50.0))).matches(Some(&shoe)));
        assert!(!f(range("numbers.weight", Some(0.0), None)).matches(Some(&shoe)));
        assert!(f(in_stock(true)).matches(Some(&shoe)), "unset in_stock counts as in stock");
        assert!(f(tag("sale")).matches(Some(&shoe)));
        assert!(f(and(vec![])).matches(Some(&shoe)));
        assert!(!f(or(vec![])).matches(Some(&shoe)));
        assert!(f(not(tag("blue"))).matches(Some(&shoe)));
        assert!(!f(range("price", Some(0.0), None)).matches(None), "no price never matches a range");
    }

    fn arb_attrs() -> impl Strategy<Value = pb::Attributes> {
        (
            prop::sample::select(vec!["a", "b", "c"]),
            prop::option::of(0.0f64..100.0),
            prop::option::of(any::<bool>()),
            prop::collection::vec(prop::sample::select(vec!["x", "y", "z"]), 0..3),
        )
            .prop_map(|(c, p, s, t)| attrs(c, p, s, &t))
    }

    fn arb_leaf() -> impl Strategy<Value = pb::Filter> {
        prop_oneof![
            prop::collection::vec(prop::sample::select(vec!["a", "b", "c"]), 1..3)
                .prop_map(|v| matches("category", &v)),
            (0.0f64..100.0, 0.0f64..100.0).prop_map(|(a, b)| range("price", Some(a.min(b)), Some(a.max(b)))),
            any::<bool>().prop_map(in_stock),
            prop::sample::select(vec!["x", "y", "z"]).prop_map(tag),
        ]
    }

    fn arb_filter() -> impl Strategy<Value = pb::Filter> {
        arb_leaf().prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(and),
                prop::collection::vec(inner.clone(), 0..4).prop_map(or),
                inner.prop_map(not),
            ]
        })
    }

    proptest! {
        /// De Morgan holds for the evaluator: NOT(a AND b) == (NOT a) OR (NOT b).
        #[test]
        fn de_morgan(a in arb_filter(), b in arb_filter(), x in arb_attrs()) {
            let lhs = Filter::from_proto(&not(and(vec![a.clone(), b.clone()]))).unwrap();
            let rhs = Filter::from_proto(&or(vec![not(a), not(b)])).unwrap();
            prop_assert_eq!(lhs.matches(Some(&x)), rhs.matches(Some(&x)));
        }

        /// A filter and its negation partition every item.
        #[test]
        fn negation_partitions(f in arb_filter(), x in arb_attrs()) {
            let pos = Filter::from_proto(&f).unwrap();
            let neg = Filter::from_proto(&not(f)).unwrap();
            prop_assert_ne!(pos.matches(Some(&x)), neg.matches(Some(&x)));
        }
    }
}
