//! Bounded fuzz targets for request decoding plus validation.
//!
//! Every request a router or a shard serves arrives as protobuf bytes from the
//! network, so `Message::decode` and the checks in `vitrine_proto::validate`
//! and `vitrine_proto::filter` are the first code that untrusted input reaches.
//! Each target below takes one request message and feeds its decoder arbitrary
//! bytes, realistic encodings, and (most often) mutations of realistic
//! encodings: the strategies build messages that mostly decode, so that the
//! validators are reached and judged rather than only the decoder. On every
//! message that decodes, the target runs the validators the servers apply to
//! it (`router/src/service.rs`, `shard/src/service.rs`) and checks that:
//!
//! - nothing panics, whatever the bytes;
//! - every rejection carries a non-empty reason (it becomes the gRPC message);
//! - each validator accepts exactly what its documented rule allows, restated
//!   here (ids, `k`, vectors, events, signals, rankings, rules, filters, items
//!   and batches; only image decoding is taken from `validate::image` itself);
//! - accepted values keep the promises the servers rely on: vectors come back
//!   finite, unit-length, of the cluster's dimension and pointing the same
//!   way; `k` is within 1..=max_k; an accepted filter evaluates, on arbitrary
//!   attributes, to what the filter language's documentation says.
//!
//! The runs are bounded: each target runs `VITRINE_FUZZ_CASES` cases (default
//! [`DEFAULT_CASES`]), from a random seed so that every run explores new
//! inputs (`PROPTEST_RNG_SEED=<n>` makes a run reproducible), then prints
//! `fuzz <target>: <N> executions, <M> decoded, <K> accepted by validation`.
//! A failing property panics with the shrunk, minimal failing input.

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use prost::Message;
use vitrine_proto::filter::{MAX_DEPTH, MAX_NODES};
use vitrine_proto::pb;
use vitrine_proto::validate::{self, MAX_NEIGHBOURS};
use vitrine_proto::{Filter, InvalidInput, Limits};

/// Cases per target when `VITRINE_FUZZ_CASES` is unset: the whole file then
/// runs in a few seconds on two cores with the dev profile, cheap enough for
/// every `cargo test`. Raise it for a longer soak.
const DEFAULT_CASES: u32 = 4096;

/// Fewer cases than this cannot support the coverage assertions at the end of
/// each target: some messages are rejected only one time in twenty, and at 256
/// cases a run of valid messages without a rejection showed up in about one
/// target run in a hundred. Smaller settings are raised to it.
const MIN_CASES: u32 = 1024;

/// The vector dimension the targets validate against; small, so that a
/// generated vector is cheap and a wrong dimension is easy to hit.
const DIM: usize = 8;

fn limits() -> &'static Limits {
    static LIMITS: OnceLock<Limits> = OnceLock::new();
    LIMITS.get_or_init(Limits::default)
}

fn cases() -> u32 {
    let cases = match std::env::var("VITRINE_FUZZ_CASES") {
        Ok(s) => s.trim().parse().unwrap_or_else(|_| panic!("VITRINE_FUZZ_CASES={s:?} is not a number of cases")),
        Err(_) => DEFAULT_CASES,
    };
    cases.max(MIN_CASES)
}

// ---------------------------------------------------------------------------
// The harness.

/// What one target has done with one kind of input.
struct Tally {
    executions: AtomicU64,
    decoded: AtomicU64,
    accepted: AtomicU64,
}

impl Tally {
    const fn new() -> Self {
        Self { executions: AtomicU64::new(0), decoded: AtomicU64::new(0), accepted: AtomicU64::new(0) }
    }

    fn load(&self) -> [u64; 3] {
        [&self.executions, &self.decoded, &self.accepted].map(|c| c.load(Ordering::Relaxed))
    }
}

/// What one target has done, per kind of input, so that the coverage
/// assertions can look at the structured inputs alone. Statics, because the
/// runner's test closure must be `Fn` and each target runs on its own thread.
struct Counters {
    raw: Tally,
    valid: Tally,
    mutated: Tally,
}

impl Counters {
    const fn new() -> Self {
        Self { raw: Tally::new(), valid: Tally::new(), mutated: Tally::new() }
    }
}

/// A byte-level change to an encoding. Each is aimed at a part of the wire
/// format: a bit flip or a significant byte changes a tag, a length prefix or
/// a value; insertions and deletions shift every later length; truncation cuts
/// a message short; a splice repeats a field or nests a copy of a submessage.
#[derive(Clone, Debug)]
enum Mutation {
    FlipBit(Index, u8),
    Set(Index, u8),
    Insert(Index, u8),
    Delete(Index, usize),
    Truncate(Index),
    Splice { from: Index, len: usize, to: Index },
}

impl Mutation {
    fn apply(&self, bytes: &mut Vec<u8>) {
        let n = bytes.len();
        match *self {
            Mutation::FlipBit(i, bit) if n > 0 => bytes[i.index(n)] ^= 1 << (bit % 8),
            Mutation::Set(i, b) if n > 0 => bytes[i.index(n)] = b,
            Mutation::Insert(i, b) => bytes.insert(i.index(n + 1), b),
            Mutation::Delete(i, len) if n > 0 => {
                let start = i.index(n);
                bytes.drain(start..(start + len).min(n));
            }
            Mutation::Truncate(i) => bytes.truncate(i.index(n + 1)),
            Mutation::Splice { from, len, to } if n > 0 => {
                let start = from.index(n);
                let chunk = bytes[start..(start + len).min(n)].to_vec();
                let at = to.index(n + 1);
                bytes.splice(at..at, chunk);
            }
            _ => {}
        }
    }
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    // Bytes that mean something on the wire: varint ends and continuations,
    // tags of fields 1-8 with each wire type the messages use, and extremes.
    let significant = prop_oneof![
        3 => prop::sample::select(vec![
            0x00u8, 0x01, 0x7f, 0x80, 0xff, 0x08, 0x0a, 0x0d, 0x10, 0x12, 0x15, 0x18, 0x1a, 0x1d, 0x20, 0x22, 0x25, 0x28,
            0x2a, 0x2d, 0x32, 0x3a, 0x40, 0x42,
        ]),
        1 => any::<u8>(),
    ];
    prop_oneof![
        3 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        2 => (any::<Index>(), significant.clone()).prop_map(|(i, b)| Mutation::Set(i, b)),
        2 => (any::<Index>(), significant).prop_map(|(i, b)| Mutation::Insert(i, b)),
        2 => (any::<Index>(), 1usize..8).prop_map(|(i, n)| Mutation::Delete(i, n)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), 1usize..64, any::<Index>()).prop_map(|(from, len, to)| Mutation::Splice { from, len, to }),
    ]
}

/// Where a case's bytes come from.
#[derive(Clone, Debug)]
enum Input<M> {
    /// Arbitrary bytes: mostly undecodable, they exercise the decoder's error paths.
    Raw(Vec<u8>),
    /// A realistic message's encoding, which must decode.
    Valid(M),
    /// A realistic message's encoding, then mutated.
    Mutated(M, Vec<Mutation>),
}

/// One fuzz case: the bytes to decode, and attribute sets on which any filter
/// the message carries is evaluated once accepted.
#[derive(Clone)]
struct Case<M> {
    input: Input<M>,
    attrs: Vec<pb::Attributes>,
}

impl<M: Message> Case<M> {
    fn bytes(&self) -> Vec<u8> {
        match &self.input {
            Input::Raw(b) => b.clone(),
            Input::Valid(m) => m.encode_to_vec(),
            Input::Mutated(m, mutations) => {
                let mut b = m.encode_to_vec();
                for mutation in mutations {
                    mutation.apply(&mut b);
                }
                b
            }
        }
    }
}

/// Prints the bytes as hex, so that a failing input can be replayed with
/// `Message::decode` exactly.
struct Hex<'a>(&'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{} bytes] ", self.0.len())?;
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl<M: Message + fmt::Debug> fmt::Debug for Case<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.input {
            Input::Raw(b) => write!(f, "raw bytes {}", Hex(b))?,
            Input::Valid(m) => write!(f, "valid encoding of {m:?}: {}", Hex(&self.bytes()))?,
            Input::Mutated(m, mutations) => {
                write!(f, "encoding of {m:?} mutated by {mutations:?}: {}", Hex(&self.bytes()))?
            }
        }
        write!(f, "; filters evaluated on {:?}", self.attrs)
    }
}

/// Judges a decoded message the way the servers would: runs their
/// validators, asserts the properties, and says whether all of them accepted.
type Check<M> = fn(&M, &[pb::Attributes]) -> Result<bool, TestCaseError>;

/// Runs one target: `cases()` cases drawn from `messages` (raw, valid and
/// mutated), each decoded as `M` and, when it decodes, judged by `check`.
fn fuzz<M>(name: &str, counters: &'static Counters, messages: BoxedStrategy<M>, check: Check<M>)
where
    M: Message + Default + Clone + fmt::Debug + 'static,
{
    run(name, counters, messages, check, true);
}

/// The body of [`fuzz`]. `can_reject` is false for messages that no validator
/// can reject (empty requests), which drops the assertions that some are.
fn run<M>(name: &str, counters: &'static Counters, messages: BoxedStrategy<M>, check: Check<M>, can_reject: bool)
where
    M: Message + Default + Clone + fmt::Debug + 'static,
{
    let cases = cases();
    // Mostly one mutation, which leaves more messages decodable.
    let mutations = prop_oneof![
        3 => prop::collection::vec(arb_mutation(), 1..2),
        1 => prop::collection::vec(arb_mutation(), 2..6),
    ];
    let input = prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..128).prop_map(Input::Raw),
        1 => messages.clone().prop_map(Input::Valid),
        3 => (messages, mutations).prop_map(|(m, ms)| Input::Mutated(m, ms)),
    ];
    let strategy =
        (input, prop::collection::vec(arb_attributes(), 0..4)).prop_map(|(input, attrs)| Case { input, attrs });
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let result = runner.run(&strategy, |case| {
        let tally = match case.input {
            Input::Raw(_) => &counters.raw,
            Input::Valid(_) => &counters.valid,
            Input::Mutated(..) => &counters.mutated,
        };
        tally.executions.fetch_add(1, Ordering::Relaxed);
        let bytes = case.bytes();
        let decoded = match M::decode(bytes.as_slice()) {
            Ok(m) => m,
            Err(e) => {
                prop_assert!(!matches!(case.input, Input::Valid(_)), "a valid encoding failed to decode: {e}");
                return Ok(());
            }
        };
        tally.decoded.fetch_add(1, Ordering::Relaxed);
        if let Input::Valid(original) = &case.input {
            prop_assert_eq!(decoded.encoded_len(), original.encoded_len(), "decoding changed the message");
        }
        if check(&decoded, &case.attrs)? {
            tally.accepted.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("fuzz {name}: {e}");
    }
    let [raw, valid, mutated] = [&counters.raw, &counters.valid, &counters.mutated].map(Tally::load);
    let [executions, decoded, accepted] = [0, 1, 2].map(|i| raw[i] + valid[i] + mutated[i]);
    eprintln!("fuzz {name}: {executions} executions, {decoded} decoded, {accepted} accepted by validation");
    eprintln!(
        "fuzz {name}: by input: raw {raw:?}, valid {valid:?}, mutated {mutated:?} (executions, decoded, accepted)"
    );
    assert_eq!(executions, u64::from(cases), "fuzz {name}: the runner ran a different number of cases");
    // A strategy that stopped producing realistic messages, or mutations that
    // never left a decodable message, would make every property above hold
    // vacuously; these catch that. Runs measure at least a third of valid
    // messages accepted and a fifth of mutated ones decoded, so the bounds
    // below leave room for chance even at MIN_CASES.
    assert!(
        valid[2] * 8 >= valid[0],
        "fuzz {name}: only {} of {} valid messages passed validation",
        valid[2],
        valid[0]
    );
    assert!(
        mutated[1] * 10 >= mutated[0],
        "fuzz {name}: only {} of {} mutated messages decoded",
        mutated[1],
        mutated[0]
    );
    assert!(mutated[2] > 0, "fuzz {name}: no mutated message passed validation");
    if can_reject {
        assert!(valid[2] < valid[0], "fuzz {name}: validation rejected none of {} valid messages", valid[0]);
        assert!(mutated[2] < mutated[1], "fuzz {name}: validation rejected no mutated message");
    }
}

// ---------------------------------------------------------------------------
// Validators, each checked against its documented rule.

/// Runs a validator; a rejection must say why, since its message is all a
/// caller gets back in the INVALID_ARGUMENT status.
fn judged<T>(what: &str, result: Result<T, InvalidInput>) -> Result<Option<T>, TestCaseError> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(e) => {
            prop_assert!(!e.0.trim().is_empty(), "{} was rejected with an empty message", what);
            let status = tonic::Status::from(e.clone());
            prop_assert_eq!(status.code(), tonic::Code::InvalidArgument);
            prop_assert_eq!(status.message(), e.0.as_str());
            Ok(None)
        }
    }
}

fn id_is_valid(id: &str) -> bool {
    !id.is_empty() && id.len() <= limits().max_id_bytes && !id.chars().any(char::is_control)
}

fn check_id(what: &str, id: &str) -> Result<bool, TestCaseError> {
    let ok = judged(what, validate::id(what, id, limits()))?.is_some();
    prop_assert_eq!(
        ok,
        id_is_valid(id),
        "{} {:?}: 1 to {} bytes, no control characters",
        what,
        id,
        limits().max_id_bytes
    );
    Ok(ok)
}

fn check_ids(what: &str, ids: &[String]) -> Result<bool, TestCaseError> {
    let ok = judged(what, validate::ids(what, ids, limits()))?.is_some();
    if ids.iter().any(String::is_empty) {
        prop_assert!(!ok, "{} list with an empty id was accepted", what);
    }
    let expected = ids.len() <= limits().max_batch && ids.iter().all(|id| id_is_valid(id));
    prop_assert_eq!(ok, expected, "{} list of {} ids", what, ids.len());
    Ok(ok)
}

fn check_k(k: u32) -> Result<bool, TestCaseError> {
    match judged("k", validate::k(k, limits()))? {
        Some(n) => {
            prop_assert!(n >= 1 && n <= limits().max_k, "k = {} accepted as {}", k, n);
            prop_assert_eq!(n as u64, u64::from(k));
            Ok(true)
        }
        None => {
            prop_assert!(k == 0 || k as usize > limits().max_k, "k = {} rejected", k);
            Ok(false)
        }
    }
}

fn check_vector(what: &str, v: &[f32]) -> Result<bool, TestCaseError> {
    let acceptable = v.len() == DIM && v.iter().all(|x| x.is_finite()) && v.iter().any(|&x| x != 0.0);
    match judged(what, validate::vector(what, v, DIM))? {
        Some(out) => {
            prop_assert!(acceptable, "{} {:?} was accepted", what, v);
            prop_assert_eq!(out.len(), DIM);
            prop_assert!(out.iter().all(|x| x.is_finite()), "{:?} normalised to {:?}", v, out);
            let norm = out.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt();
            prop_assert!((norm - 1.0).abs() < 1e-4, "{:?} normalised to {:?}, of length {}", v, out, norm);
            // Same direction: the cosine between input and output is 1.
            let in_norm = v.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt();
            let dot = v.iter().zip(&out).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum::<f64>();
            prop_assert!((dot / in_norm / norm - 1.0).abs() < 1e-4, "{:?} normalised to {:?}", v, out);
            Ok(true)
        }
        None => {
            prop_assert!(!acceptable, "{} {:?} was rejected", what, v);
            Ok(false)
        }
    }
}

/// Small real images of each accepted format, with their sizes.
fn image_pool() -> &'static [(Vec<u8>, (u32, u32))] {
    type Pool = Vec<(Vec<u8>, (u32, u32))>;
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let mut pool = Vec::new();
        for (w, h) in [(1, 1), (5, 3), (16, 16)] {
            let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 16) as u8, (y * 16) as u8, 99]));
            for format in [image::ImageFormat::Png, image::ImageFormat::Jpeg, image::ImageFormat::WebP] {
                let mut buf = std::io::Cursor::new(Vec::new());
                img.write_to(&mut buf, format).unwrap();
                pool.push((buf.into_inner(), (w, h)));
            }
        }
        pool
    })
}

fn check_image(what: &str, bytes: &[u8]) -> Result<bool, TestCaseError> {
    let known = image_pool().iter().find(|(b, _)| b == bytes).map(|(_, size)| *size);
    match judged(what, validate::image(what, bytes, limits()))? {
        Some((w, h)) => {
            prop_assert!(w > 0 && h > 0, "{} accepted as {}x{}", what, w, h);
            prop_assert!(u64::from(w) * u64::from(h) <= limits().max_image_pixels, "{} accepted at {}x{}", what, w, h);
            if let Some(size) = known {
                prop_assert_eq!((w, h), size);
            }
            Ok(true)
        }
        None => {
            prop_assert!(known.is_none(), "a valid {:?} image was rejected", known);
            Ok(false)
        }
    }
}

fn check_event(e: &pb::Event) -> Result<bool, TestCaseError> {
    let ok = judged("event", validate::event(e, limits()))?.is_some();
    let expected =
        id_is_valid(&e.user_id) && id_is_valid(&e.item_id) && (1..=4).contains(&e.r#type) && e.timestamp_ms >= 0;
    prop_assert_eq!(ok, expected, "{:?}", e);
    Ok(ok)
}

fn check_batch_len(what: &str, n: usize) -> Result<bool, TestCaseError> {
    let ok = judged(what, validate::batch_len(what, n, limits()))?.is_some();
    prop_assert_eq!(ok, n <= limits().max_batch, "batch of {} {}", n, what);
    Ok(ok)
}

fn check_signals(s: &pb::ItemSignals) -> Result<bool, TestCaseError> {
    let ok = judged("signals", validate::signals(s, limits()))?.is_some();
    let expected = id_is_valid(&s.id)
        && s.neighbours.len() <= MAX_NEIGHBOURS
        && s.neighbours.iter().all(|n| id_is_valid(&n.id) && n.weight.is_finite() && n.weight >= 0.0)
        && (0.0..=1.0).contains(&s.popularity);
    prop_assert_eq!(ok, expected, "signals of {:?}: popularity {}", s.id, s.popularity);
    Ok(ok)
}

fn check_ranking(r: Option<&pb::Ranking>) -> Result<bool, TestCaseError> {
    let Some(r) = r else { return Ok(true) };
    let ok = judged("ranking", validate::ranking(r))?.is_some();
    let weights = [r.content, r.behaviour, r.popularity, r.freshness, r.feedback, r.trending];
    let probabilities = [r.diversity_lambda, r.explore_epsilon];
    let expected = weights.iter().flatten().all(|w| w.is_finite())
        && probabilities.iter().flatten().all(|p| (0.0..=1.0).contains(p));
    prop_assert_eq!(ok, expected, "{:?}", r);
    Ok(ok)
}

/// The router's `compile_rules`: each rule is checked, then its filter compiled.
fn check_rules(rules: &[pb::Rule], attrs: &[pb::Attributes]) -> Result<bool, TestCaseError> {
    let mut all = true;
    for (i, rule) in rules.iter().enumerate() {
        let ok = judged("rule", validate::rule(rule, i))?.is_some();
        prop_assert_eq!(ok, rule.boost.is_finite() && rule.when.is_some(), "{:?}", rule);
        let filter_ok = check_filter(rule.when.as_ref(), attrs)?;
        all &= ok && filter_ok;
    }
    Ok(all)
}

fn check_item(it: &pb::Item, can_embed_text: bool) -> Result<bool, TestCaseError> {
    let l = limits();
    let can = validate::Embedders { text: can_embed_text, image: false };
    let ok = judged("item", validate::item(it, DIM, can, l))?.is_some();
    let id_ok = check_id("item id", &it.id)?;
    let image_ok = it.image.is_empty() || check_image("item image", &it.image)?;
    let numbers_ok = it
        .attributes
        .as_ref()
        .is_none_or(|a| a.price.is_none_or(f64::is_finite) && a.numbers.values().all(|x| x.is_finite()));
    let has_text = !it.title.trim().is_empty() || !it.description.trim().is_empty();
    let mut modalities_ok = true;
    for v in [&it.text_vector, &it.image_vector].into_iter().flatten() {
        let finite_nonzero = v.values.iter().all(|x| x.is_finite())
            && v.values.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt().is_normal();
        modalities_ok &= finite_nonzero;
    }
    let has_modality = it.text_vector.is_some() || it.image_vector.is_some();
    let vector_ok = modalities_ok
        && match &it.vector {
            Some(_) if has_modality => false,
            Some(v) => check_vector("item vector", &v.values)?,
            None => has_modality || (has_text && can_embed_text),
        };
    let expected = id_ok
        && it.title.len() <= l.max_title_bytes
        && it.description.len() <= l.max_description_bytes
        && image_ok
        && it.published_ms >= 0
        && numbers_ok
        && vector_ok;
    prop_assert_eq!(ok, expected, "item {:?} (can embed text: {})", it.id, can_embed_text);
    Ok(ok)
}

fn check_items(items: &[pb::Item], can_embed_text: bool) -> Result<bool, TestCaseError> {
    let can = validate::Embedders { text: can_embed_text, image: false };
    let ok = judged("items", validate::items(items, DIM, can, limits()))?.is_some();
    let mut expected = items.len() <= limits().max_batch;
    if expected {
        let mut seen = HashSet::new();
        for it in items {
            let item_ok = check_item(it, can_embed_text)?;
            expected &= item_ok && seen.insert(it.id.as_str());
        }
    }
    prop_assert_eq!(ok, expected, "batch of {} items (can embed text: {})", items.len(), can_embed_text);
    Ok(ok)
}

// ---------------------------------------------------------------------------
// Filters, against a restatement of the filter language's documentation.

enum FieldType {
    String,
    Number,
    /// `in_stock`, `tags` and unknown names: neither match nor range accepts them.
    Other,
}

fn field_type(name: &str) -> FieldType {
    match name {
        "category" | "brand" => FieldType::String,
        "price" => FieldType::Number,
        _ if name.len() > "strings.".len() && name.starts_with("strings.") => FieldType::String,
        _ if name.len() > "numbers.".len() && name.starts_with("numbers.") => FieldType::Number,
        _ => FieldType::Other,
    }
}

/// Whether the filter language accepts `f`: every node is a well-typed
/// condition, at most [`MAX_NODES`] nodes, nested fewer than [`MAX_DEPTH`] levels.
fn filter_is_valid(f: &pb::Filter) -> bool {
    fn walk(f: &pb::Filter, depth: usize, nodes: &mut usize, max_depth: &mut usize) -> bool {
        use pb::filter::Kind;
        *nodes += 1;
        *max_depth = (*max_depth).max(depth);
        match &f.kind {
            None => false,
            Some(Kind::Match(m)) => matches!(field_type(&m.field), FieldType::String) && !m.any_of.is_empty(),
            Some(Kind::Range(r)) => {
                matches!(field_type(&r.field), FieldType::Number)
                    && [r.gte, r.gt, r.lte, r.lt].iter().flatten().all(|b| !b.is_nan())
            }
            Some(Kind::InStock(_)) => true,
            Some(Kind::Tag(t)) => !t.is_empty(),
            Some(Kind::And(list) | Kind::Or(list)) => {
                // Visit every child (no short-circuit) so the counts are whole.
                let mut ok = true;
                for c in &list.filters {
                    ok &= walk(c, depth + 1, nodes, max_depth);
                }
                ok
            }
            Some(Kind::Not(inner)) => walk(inner, depth + 1, nodes, max_depth),
        }
    }
    let (mut nodes, mut max_depth) = (0, 0);
    let ok = walk(f, 0, &mut nodes, &mut max_depth);
    ok && nodes <= MAX_NODES && max_depth < MAX_DEPTH
}

/// Evaluates a valid wire filter as documented in vitrine.proto: a string
/// field equals one of the values, a number lies within every given bound (an
/// unset number never does), unset `in_stock` counts as in stock, AND of none
/// holds and OR of none does not.
fn filter_holds(f: &pb::Filter, a: &pb::Attributes) -> bool {
    use pb::filter::Kind;
    match f.kind.as_ref().expect("a valid filter has a condition in every node") {
        Kind::Match(m) => {
            let value = match m.field.as_str() {
                "category" => Some(&a.category),
                "brand" => Some(&a.brand),
                custom => a.strings.get(custom.strip_prefix("strings.").expect("a valid string field")),
            };
            value.is_some_and(|v| m.any_of.contains(v))
        }
        Kind::Range(r) => {
            let value = match r.field.as_str() {
                "price" => a.price,
                custom => a.numbers.get(custom.strip_prefix("numbers.").expect("a valid number field")).copied(),
            };
            value.is_some_and(|x| {
                let above = r.gte.is_none_or(|b| x >= b) && r.gt.is_none_or(|b| x > b);
                let below = r.lte.is_none_or(|b| x <= b) && r.lt.is_none_or(|b| x < b);
                above && below
            })
        }
        Kind::InStock(want) => a.in_stock.unwrap_or(true) == *want,
        Kind::Tag(t) => a.tags.contains(t),
        Kind::And(list) => list.filters.iter().all(|c| filter_holds(c, a)),
        Kind::Or(list) => list.filters.iter().any(|c| filter_holds(c, a)),
        Kind::Not(inner) => !filter_holds(inner, a),
    }
}

/// What every server does with a request's filter: `Filter::from_optional`.
/// An accepted filter must then evaluate, on each attribute set and on an
/// item without attributes, as documented.
fn check_filter(f: Option<&pb::Filter>, attrs: &[pb::Attributes]) -> Result<bool, TestCaseError> {
    let compiled = judged("filter", Filter::from_optional(f))?;
    let Some(f) = f else {
        prop_assert!(matches!(compiled, Some(None)), "an absent filter compiled to {:?}", compiled);
        return Ok(true);
    };
    prop_assert_eq!(compiled.is_some(), filter_is_valid(f), "filter {:?}", f);
    let Some(Some(compiled)) = compiled else { return Ok(false) };
    let empty = pb::Attributes::default();
    prop_assert_eq!(compiled.matches(None), filter_holds(f, &empty), "on an item without attributes");
    for a in attrs {
        prop_assert_eq!(compiled.matches(Some(a)), filter_holds(f, a), "on {:?}", a);
    }
    Ok(true)
}

// ---------------------------------------------------------------------------
// Strategies for realistic messages. Each mostly produces what a real client
// sends, so that most encodings pass validation, and sometimes one kind of
// mistake or a boundary value, so that each rejection path is reached too.

fn arb_id() -> BoxedStrategy<String> {
    prop_oneof![
        40 => "[a-z0-9][a-z0-9_:.-]{0,23}",
        8 => "\\PC{1,24}",
        1 => Just(String::new()),
        // Around the 256-byte limit, in ASCII and in multi-byte characters
        // (10 bytes per 4 characters), so the limit is checked in bytes.
        1 => (254usize..=258).prop_map(|n| "x".repeat(n)),
        1 => (100usize..=106).prop_map(|n| "é日🙂x".chars().cycle().take(n).collect()),
        1 => "[a-z]{0,4}[\\x00-\\x1f\\x7f\\u{85}][a-z]{0,4}",
    ]
    .boxed()
}

fn arb_ids(max: usize) -> BoxedStrategy<Vec<String>> {
    prop_oneof![
        30 => prop::collection::vec(arb_id(), 0..5),
        // Around the batch limit: cheap ids, since only the count matters.
        1 => (max - 1..=max + 1).prop_map(|n| (0..n).map(|i| format!("id-{i}")).collect()),
    ]
    .boxed()
}

fn arb_k() -> BoxedStrategy<u32> {
    prop_oneof![
        40 => 1u32..=100,
        1 => Just(0u32),
        1 => prop::sample::select(vec![999u32, 1000, 1001, u32::MAX]),
        1 => any::<u32>(),
    ]
    .boxed()
}

fn arb_f32() -> BoxedStrategy<f32> {
    prop_oneof![
        30 => -10.0f32..10.0,
        1 => prop::sample::select(vec![
            0.0f32,
            -0.0,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            f32::MIN,
            f32::MIN_POSITIVE,
            1e-45,
            3e38,
        ]),
        1 => any::<f32>(),
    ]
    .boxed()
}

/// Prices, numeric attributes and range bounds. Half come from a few shared
/// values, so that a bound often equals the value it is compared with and
/// inclusive and exclusive bounds give different answers.
fn arb_f64() -> BoxedStrategy<f64> {
    prop_oneof![
        10 => prop::sample::select(vec![-1.0f64, 0.0, 9.99, 10.0, 50.0, 100.0]),
        10 => -100.0f64..1000.0,
        1 => prop::sample::select(vec![0.0f64, -0.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY, f64::MAX, 1e-310]),
    ]
    .boxed()
}

/// A probability: mostly within [0, 1], often exactly on or just past an end.
fn arb_unit() -> BoxedStrategy<f32> {
    prop_oneof![
        16 => 0.0f32..=1.0,
        4 => prop::sample::select(vec![0.0f32, -0.0, 1.0, 1.000_000_1, -1e-45]),
        1 => arb_f32(),
    ]
    .boxed()
}

fn arb_vector() -> BoxedStrategy<pb::Vector> {
    prop_oneof![
        12 => prop::collection::vec(arb_f32(), DIM),
        1 => prop::collection::vec(arb_f32(), 0..=DIM + 2),
        1 => Just(vec![0.0f32; DIM]),
        // Huge and tiny magnitudes, whose squares overflow or underflow f32.
        1 => prop::collection::vec(prop::sample::select(vec![f32::MAX, -f32::MAX, 1e-45, -1e-45, 0.0]), DIM),
    ]
    .prop_map(|values| pb::Vector { values })
    .boxed()
}

const VALUES: &[&str] = &["", "shoes", "bags", "red", "XL", "日本", "Größe"];
const TAGS: &[&str] = &["sale", "new", "red", "🙂"];
const STRING_KEYS: &[&str] = &["color", "size", "größe", ""];
const NUMBER_KEYS: &[&str] = &["weight", "rating", ""];

fn arb_attributes() -> BoxedStrategy<pb::Attributes> {
    let values = || prop::sample::select(VALUES).prop_map(String::from);
    (
        values(),
        values(),
        prop::option::weighted(0.7, arb_f64()),
        prop::option::of(any::<bool>()),
        prop::collection::vec(prop::sample::select(TAGS).prop_map(String::from), 0..3),
        prop::collection::hash_map(prop::sample::select(STRING_KEYS).prop_map(String::from), values(), 0..3),
        prop::collection::hash_map(prop::sample::select(NUMBER_KEYS).prop_map(String::from), arb_f64(), 0..3),
    )
        .prop_map(|(category, brand, price, in_stock, tags, strings, numbers)| pb::Attributes {
            category,
            brand,
            price,
            in_stock,
            tags,
            strings,
            numbers,
        })
        .boxed()
}

fn arb_filter_leaf() -> BoxedStrategy<pb::Filter> {
    use pb::filter::Kind;
    let field = |good: &'static [&'static str]| {
        prop_oneof![
            24 => prop::sample::select(good),
            1 => prop::sample::select(&["in_stock", "tags", "colour", "", "strings.", "numbers.", "Price"][..]),
        ]
        .prop_map(String::from)
    };
    let bound = || prop::option::weighted(0.4, arb_f64());
    let string_fields = &["category", "brand", "strings.color", "strings.größe", "strings.size"][..];
    let number_fields = &["price", "numbers.weight", "numbers.rating", "numbers.missing"][..];
    prop_oneof![
        4 => (
            field(string_fields),
            prop_oneof![
                12 => prop::collection::vec(prop::sample::select(VALUES).prop_map(String::from), 1..4),
                1 => Just(Vec::new()),
            ],
        )
            .prop_map(|(field, any_of)| Kind::Match(pb::Match { field, any_of })),
        4 => (field(number_fields), bound(), bound(), bound(), bound())
            .prop_map(|(field, gte, gt, lte, lt)| Kind::Range(pb::Range { field, gte, gt, lte, lt })),
        2 => any::<bool>().prop_map(Kind::InStock),
        2 => prop::sample::select(TAGS).prop_map(|t| Kind::Tag(t.to_string())),
        1 => Just(Kind::Tag(String::new())),
    ]
    .prop_map(|kind| pb::Filter { kind: Some(kind) })
    .boxed()
}

fn arb_filter() -> BoxedStrategy<pb::Filter> {
    use pb::filter::Kind;
    let list = |filters| pb::FilterList { filters };
    let node = |kind| pb::Filter { kind: Some(kind) };
    let tree = arb_filter_leaf().prop_recursive(4, 24, 4, move |inner| {
        prop_oneof![
            8 => prop::collection::vec(inner.clone(), 0..4).prop_map(move |fs| node(Kind::And(list(fs)))),
            8 => prop::collection::vec(inner.clone(), 0..4).prop_map(move |fs| node(Kind::Or(list(fs)))),
            8 => inner.prop_map(move |f| node(Kind::Not(Box::new(f)))),
            // A node with no condition set, which only a broken client sends.
            1 => Just(pb::Filter { kind: None }),
        ]
    });
    prop_oneof![
        24 => tree,
        1 => Just(pb::Filter { kind: None }),
        // Around the depth limit: a leaf under `n` NOTs sits at depth `n`.
        1 => (MAX_DEPTH - 2..=MAX_DEPTH + 1, arb_filter_leaf()).prop_map(|(n, leaf)| {
            (0..n).fold(leaf, |f, _| pb::Filter { kind: Some(Kind::Not(Box::new(f))) })
        }),
        // Around the node limit: an AND of `n - 1` leaves has `n` nodes.
        1 => (MAX_NODES - 1..=MAX_NODES + 1, arb_filter_leaf()).prop_map(move |(n, leaf)| {
            pb::Filter { kind: Some(Kind::And(list(vec![leaf; n - 1]))) }
        }),
    ]
    .boxed()
}

fn arb_ranking() -> BoxedStrategy<pb::Ranking> {
    let weight = || prop::option::weighted(0.5, prop_oneof![20 => -2.0f32..2.0, 1 => arb_f32()]);
    let probability = || prop::option::weighted(0.5, arb_unit());
    (
        weight(),
        weight(),
        weight(),
        weight(),
        probability(),
        probability(),
        prop::option::of(0u32..20),
        weight(),
        weight(),
    )
        .prop_map(
            |(
                content,
                behaviour,
                popularity,
                freshness,
                diversity_lambda,
                explore_epsilon,
                explore_slots,
                feedback,
                trending,
            )| {
                pb::Ranking {
                    content,
                    behaviour,
                    popularity,
                    freshness,
                    diversity_lambda,
                    explore_epsilon,
                    explore_slots,
                    feedback,
                    trending,
                }
            },
        )
        .boxed()
}

fn arb_rules() -> BoxedStrategy<Vec<pb::Rule>> {
    let rule = (prop::option::weighted(0.95, arb_filter()), prop_oneof![20 => -5.0f32..5.0, 1 => arb_f32()])
        .prop_map(|(when, boost)| pb::Rule { when, boost });
    prop::collection::vec(rule, 0..3).boxed()
}

/// A tiny real image, a damaged one, or something that only looks like one.
fn arb_image() -> BoxedStrategy<Vec<u8>> {
    let pool = || prop::sample::select(image_pool().iter().map(|(b, _)| b.clone()).collect::<Vec<_>>());
    prop_oneof![
        6 => pool(),
        1 => (pool(), any::<Index>()).prop_map(|(mut b, i)| {
            b.truncate(i.index(b.len()));
            b
        }),
        1 => prop::collection::vec(any::<u8>(), 0..64),
        1 => Just(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;".to_vec()),
        // A valid PNG header claiming many pixels, with no pixel data.
        1 => prop::sample::select(vec![(1u32, 1u32), (6000, 6000), (7000, 7000), (100_000, 100_000), (u32::MAX, 1)])
            .prop_map(|(w, h)| png_header(w, h)),
    ]
    .boxed()
}

/// A PNG signature and an IHDR chunk (8-bit RGB) with a correct CRC, so that
/// decoders reach the dimension checks.
fn png_header(width: u32, height: u32) -> Vec<u8> {
    let mut chunk = b"IHDR".to_vec();
    chunk.extend_from_slice(&width.to_be_bytes());
    chunk.extend_from_slice(&height.to_be_bytes());
    chunk.extend_from_slice(&[8, 2, 0, 0, 0]);
    let crc = crc32(&chunk);
    let mut png = vec![0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];
    png.extend_from_slice(&13u32.to_be_bytes());
    png.extend_from_slice(&chunk);
    png.extend_from_slice(&crc.to_be_bytes());
    png
}

/// CRC-32 (IEEE), as PNG chunks use; bitwise, since it runs on a few bytes.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fn arb_text(max_bytes: usize) -> BoxedStrategy<String> {
    prop_oneof![
        12 => "[A-Za-z0-9 ,.'-]{0,40}",
        3 => "\\PC{0,20}",
        1 => Just(String::new()),
        1 => Just(" \t\n".to_string()),
        1 => (max_bytes..=max_bytes + 1).prop_map(|n| "t".repeat(n)),
    ]
    .boxed()
}

fn arb_item() -> BoxedStrategy<pb::Item> {
    let l = limits();
    (
        arb_id(),
        arb_text(l.max_title_bytes),
        arb_text(l.max_description_bytes),
        prop_oneof![10 => Just(Vec::new()), 1 => arb_image()],
        prop::option::weighted(0.7, arb_attributes()),
        prop::option::weighted(0.8, arb_vector()),
        prop_oneof![4 => Just(0i64), 4 => 1_500_000_000_000i64..1_800_000_000_000, 1 => any::<i64>()],
        prop::option::weighted(0.1, arb_vector()),
        prop::option::weighted(0.1, arb_vector()),
    )
        .prop_map(|(id, title, description, image, attributes, vector, published_ms, text_vector, image_vector)| {
            pb::Item { id, title, description, image, attributes, vector, published_ms, text_vector, image_vector }
        })
        .boxed()
}

fn arb_items() -> BoxedStrategy<Vec<pb::Item>> {
    let max = limits().max_batch;
    prop_oneof![
        40 => prop::collection::vec(arb_item(), 0..4),
        // Two items with the same id.
        2 => arb_item().prop_map(|it| vec![it.clone(), it]),
        // Around the batch limit: cheap, distinct, valid items.
        1 => (max..=max + 1).prop_map(|n| {
            let vector = Some(pb::Vector { values: vec![1.0; DIM] });
            (0..n).map(|i| pb::Item { id: format!("id-{i}"), vector: vector.clone(), ..Default::default() }).collect()
        }),
    ]
    .boxed()
}

fn arb_event() -> BoxedStrategy<pb::Event> {
    (
        arb_id(),
        arb_id(),
        prop_oneof![12 => 1i32..=4, 1 => Just(0i32), 1 => any::<i32>()],
        prop_oneof![4 => Just(0i64), 8 => 1_500_000_000_000i64..1_800_000_000_000, 1 => any::<i64>()],
    )
        .prop_map(|(user_id, item_id, r#type, timestamp_ms)| pb::Event { user_id, item_id, r#type, timestamp_ms })
        .boxed()
}

fn arb_signals() -> BoxedStrategy<pb::ItemSignals> {
    let weight = prop_oneof![20 => 0.0f32..10.0, 2 => prop::sample::select(vec![0.0f32, -0.0, -1e-45]), 1 => arb_f32()];
    let neighbour = (arb_id(), weight).prop_map(|(id, weight)| pb::Neighbour { id, weight });
    let neighbours = prop_oneof![
        30 => prop::collection::vec(neighbour, 0..4),
        1 => (MAX_NEIGHBOURS..=MAX_NEIGHBOURS + 1)
            .prop_map(|n| (0..n).map(|i| pb::Neighbour { id: format!("n{i}"), weight: 1.0 }).collect()),
    ];
    (arb_id(), neighbours, arb_unit())
        .prop_map(|(id, neighbours, popularity)| pb::ItemSignals { id, neighbours, popularity })
        .boxed()
}

// ---------------------------------------------------------------------------
// The targets: one per request message, judged as its servers judge it.

/// `Vitrine.UpsertItems` and `UpsertItemsStream`: the router checks the batch
/// (text embedding is the shard's to refuse, so it assumes a text model).
#[test]
fn upsert_items() {
    static COUNTERS: Counters = Counters::new();
    let messages = arb_items().prop_map(|items| pb::UpsertItemsRequest { items, ..Default::default() }).boxed();
    fuzz("upsert_items", &COUNTERS, messages, |req, _| check_items(&req.items, true));
}

/// `Shard.Upsert`: the shard checks the batch with and without a text model,
/// then re-normalises every vector before storing it.
#[test]
fn shard_upsert() {
    static COUNTERS: Counters = Counters::new();
    let messages = arb_items().prop_map(|items| pb::ShardUpsertRequest { items, ..Default::default() }).boxed();
    fuzz("shard_upsert", &COUNTERS, messages, |req, _| {
        let with_model = check_items(&req.items, true)?;
        let without_model = check_items(&req.items, false)?;
        prop_assert!(with_model || !without_model, "a batch passed without a text model but not with one");
        Ok(with_model)
    });
}

/// `Vitrine.DeleteItems` and `Shard.Delete`.
#[test]
fn delete_items() {
    static COUNTERS: Counters = Counters::new();
    let messages =
        arb_ids(limits().max_batch).prop_map(|ids| pb::DeleteItemsRequest { ids, ..Default::default() }).boxed();
    fuzz("delete_items", &COUNTERS, messages, |req, _| check_ids("item id", &req.ids));
}

/// `Vitrine.GetItems` and `Shard.Get`.
#[test]
fn get_items() {
    static COUNTERS: Counters = Counters::new();
    let messages = (arb_ids(limits().max_batch), any::<bool>())
        .prop_map(|(ids, with_vectors)| pb::GetItemsRequest { ids, with_vectors, ..Default::default() })
        .boxed();
    fuzz("get_items", &COUNTERS, messages, |req, _| check_ids("item id", &req.ids));
}

/// `Shard.Lookup`: both id lists are checked, items first.
#[test]
fn lookup() {
    static COUNTERS: Counters = Counters::new();
    let messages = (arb_ids(limits().max_batch), arb_ids(limits().max_batch))
        .prop_map(|(ids, signal_ids)| pb::ShardLookupRequest { ids, signal_ids, ..Default::default() })
        .boxed();
    fuzz("lookup", &COUNTERS, messages, |req, _| {
        Ok(check_ids("item id", &req.ids)? && check_ids("signal id", &req.signal_ids)?)
    });
}

/// `Vitrine.Search`: `k`, the filter, then the query (an image is validated,
/// a vector normalised; text is the embedder's to judge).
#[test]
fn search() {
    use pb::search_request::Query;
    static COUNTERS: Counters = Counters::new();
    let query = prop_oneof![
        2 => arb_text(limits().max_description_bytes).prop_map(Query::Text),
        1 => arb_image().prop_map(Query::Image),
        4 => arb_vector().prop_map(Query::Vector),
        1 => (arb_text(limits().max_description_bytes), arb_image())
            .prop_map(|(text, image)| Query::Multimodal(pb::MultimodalQuery { text, image })),
    ];
    let messages =
        (prop::option::weighted(0.95, query), arb_k(), prop::option::weighted(0.7, arb_filter()), any::<bool>())
            .prop_map(|(query, k, filter, with_items)| pb::SearchRequest { query, k, filter, with_items })
            .boxed();
    fuzz("search", &COUNTERS, messages, |req, attrs| {
        let k_ok = check_k(req.k)?;
        let filter_ok = check_filter(req.filter.as_ref(), attrs)?;
        let query_ok = match &req.query {
            Some(Query::Text(_)) | None => true,
            Some(Query::Image(bytes)) => check_image("query image", bytes)?,
            Some(Query::Multimodal(q)) => check_image("query image", &q.image)?,
            Some(Query::Vector(v)) => check_vector("query vector", &v.values)?,
        };
        Ok(k_ok && filter_ok && query_ok)
    });
}

/// `Vitrine.SimilarItems`: id, `k`, filter, ranking overrides and rules.
#[test]
fn similar_items() {
    static COUNTERS: Counters = Counters::new();
    let messages = (
        arb_id(),
        arb_k(),
        prop::option::weighted(0.7, arb_filter()),
        prop::option::weighted(0.5, arb_ranking()),
        arb_rules(),
        any::<(bool, bool)>(),
    )
        .prop_map(|(id, k, filter, ranking, rules, (with_items, explain))| pb::SimilarItemsRequest {
            id,
            k,
            filter,
            with_items,
            ranking,
            explain,
            rules,
        })
        .boxed();
    fuzz("similar_items", &COUNTERS, messages, |req, attrs| {
        let id_ok = check_id("item id", &req.id)?;
        let k_ok = check_k(req.k)?;
        let filter_ok = check_filter(req.filter.as_ref(), attrs)?;
        let ranking_ok = check_ranking(req.ranking.as_ref())?;
        let rules_ok = check_rules(&req.rules, attrs)?;
        Ok(id_ok && k_ok && filter_ok && ranking_ok && rules_ok)
    });
}

/// `Vitrine.Recommend`: `k`, filter, ranking, rules, the user id when given,
/// and each id list (at most `max_history` long).
#[test]
fn recommend() {
    static COUNTERS: Counters = Counters::new();
    let max = limits().max_history;
    let messages = (
        (prop_oneof![1 => Just(String::new()), 3 => arb_id()], arb_ids(max), arb_ids(max), arb_ids(max)),
        (arb_k(), prop::option::weighted(0.7, arb_filter()), prop::option::weighted(0.5, arb_ranking()), arb_rules()),
        (prop_oneof![6 => Just(Vec::new()), 1 => arb_ids(max)], any::<(bool, bool, bool)>()),
    )
        .prop_map(
            |(
                (user_id, history, positive, negative),
                (k, filter, ranking, rules),
                (candidate_ids, (include_seen, with_items, explain)),
            )| pb::RecommendRequest {
                user_id,
                history,
                positive,
                negative,
                k,
                filter,
                include_seen,
                with_items,
                ranking,
                explain,
                rules,
                candidate_ids,
            },
        )
        .boxed();
    fuzz("recommend", &COUNTERS, messages, |req, attrs| {
        let mut ok = check_k(req.k)?;
        ok &= check_filter(req.filter.as_ref(), attrs)?;
        ok &= check_ranking(req.ranking.as_ref())?;
        ok &= check_rules(&req.rules, attrs)?;
        if !req.user_id.is_empty() {
            ok &= check_id("user id", &req.user_id)?;
        }
        for list in [&req.history, &req.positive, &req.negative, &req.candidate_ids] {
            // The router bounds each list by max_history before checking its ids.
            ok &= list.len() <= limits().max_history && check_ids("item id", list)?;
        }
        Ok(ok)
    });
}

/// `Vitrine.RecordEvents` and `Shard.AppendEvents`.
#[test]
fn record_events() {
    static COUNTERS: Counters = Counters::new();
    let max = limits().max_batch;
    let events = prop_oneof![
        30 => prop::collection::vec(arb_event(), 0..5),
        1 => (max..=max + 1, arb_event()).prop_map(|(n, e)| vec![e; n]),
    ];
    let messages = events.prop_map(|events| pb::RecordEventsRequest { events, ..Default::default() }).boxed();
    fuzz("record_events", &COUNTERS, messages, |req, _| {
        let mut ok = check_batch_len("events", req.events.len())?;
        for e in &req.events {
            ok &= check_event(e)?;
        }
        Ok(ok)
    });
}

/// `Vitrine.UpdateSignals` and `Shard.UpdateSignals`.
#[test]
fn update_signals() {
    static COUNTERS: Counters = Counters::new();
    let messages = prop::collection::vec(arb_signals(), 0..4)
        .prop_map(|signals| pb::UpdateSignalsRequest { signals, ..Default::default() })
        .boxed();
    fuzz("update_signals", &COUNTERS, messages, |req, _| {
        let mut ok = check_batch_len("signal entries", req.signals.len())?;
        for s in &req.signals {
            ok &= check_signals(s)?;
        }
        Ok(ok)
    });
}

/// `Shard.Search`: the query vector when given, `k`, the filter, and the
/// excluded and candidate ids.
#[test]
fn shard_search() {
    use pb::shard_search_request::Source;
    static COUNTERS: Counters = Counters::new();
    let max = limits().max_batch;
    let source = prop_oneof![
        any::<bool>().prop_map(Source::Popular),
        arb_ids(max).prop_map(|ids| Source::Candidates(pb::CandidateIds { ids })),
    ];
    let messages = (
        prop::option::weighted(0.85, arb_vector()),
        arb_k(),
        prop::option::weighted(0.7, arb_filter()),
        prop_oneof![3 => Just(Vec::new()), 1 => arb_ids(max)],
        any::<(bool, bool)>(),
        prop::option::weighted(0.3, source),
    )
        .prop_map(|(vector, k, filter, exclude_ids, (with_items, with_vectors), source)| pb::ShardSearchRequest {
            vector,
            k,
            filter,
            exclude_ids,
            with_items,
            with_vectors,
            source,
            // The model tag is the shard's to compare, not validation's.
            model: String::new(),
        })
        .boxed();
    fuzz("shard_search", &COUNTERS, messages, |req, attrs| {
        let mut ok = match &req.vector {
            Some(v) => check_vector("query vector", &v.values)?,
            None => true,
        };
        ok &= check_k(req.k)?;
        ok &= check_filter(req.filter.as_ref(), attrs)?;
        ok &= check_ids("exclude id", &req.exclude_ids)?;
        if let Some(Source::Candidates(c)) = &req.source {
            ok &= check_ids("candidate id", &c.ids)?;
        }
        Ok(ok)
    });
}

/// `Shard.Embed`: an image input is validated (text is the model's to judge).
#[test]
fn embed() {
    use pb::embed_request::Input as EmbedInput;
    static COUNTERS: Counters = Counters::new();
    let input = prop_oneof![
        1 => arb_text(limits().max_description_bytes).prop_map(EmbedInput::Text),
        3 => arb_image().prop_map(EmbedInput::Image),
        1 => (arb_text(limits().max_description_bytes), arb_image())
            .prop_map(|(text, image)| EmbedInput::Multimodal(pb::MultimodalQuery { text, image })),
    ];
    let messages = prop::option::weighted(0.95, input).prop_map(|input| pb::EmbedRequest { input }).boxed();
    fuzz("embed", &COUNTERS, messages, |req, _| match &req.input {
        Some(EmbedInput::Image(bytes)) => check_image("query image", bytes),
        Some(EmbedInput::Multimodal(q)) => check_image("query image", &q.image),
        Some(EmbedInput::Text(_)) | None => Ok(true),
    });
}

/// `Shard.GetProfile`.
#[test]
fn get_profile() {
    static COUNTERS: Counters = Counters::new();
    let messages = arb_id().prop_map(|user_id| pb::GetProfileRequest { user_id }).boxed();
    fuzz("get_profile", &COUNTERS, messages, |req, _| check_id("user id", &req.user_id));
}

/// A request with no fields: nothing to validate, but its decoder still
/// meets every byte a client sends, and must skip the fields it does not know.
fn fuzz_empty<M>(name: &str, counters: &'static Counters)
where
    M: Message + Default + Clone + fmt::Debug + 'static,
{
    let check = |req: &M, _: &[pb::Attributes]| {
        prop_assert_eq!(req.encoded_len(), 0, "unknown fields were kept");
        Ok(true)
    };
    run(name, counters, Just(M::default()).boxed(), check, false);
}

/// `Vitrine.ClusterInfo` and `Shard.Info`.
#[test]
fn cluster_info() {
    static COUNTERS: Counters = Counters::new();
    fuzz_empty::<pb::ClusterInfoRequest>("cluster_info", &COUNTERS);
}

/// `Vitrine.CreateSnapshot` and `Shard.Snapshot`.
#[test]
fn create_snapshot() {
    static COUNTERS: Counters = Counters::new();
    fuzz_empty::<pb::CreateSnapshotRequest>("create_snapshot", &COUNTERS);
}
