//! Behavioural signals learnt off-line from interaction sequences: the data
//! set format they are learnt from, and the co-visitation fit itself.
//!
//! A data set is a directory with two files:
//!
//! - `items.tsv`: a header naming the columns (`item_id`, `asin`, `title`;
//!   others are ignored), then one tab-separated row per item. Titles may be
//!   empty.
//! - `sequences.txt`: one line per user, `user_id item_1 … item_n`, oldest
//!   first, every item an `item_id` of `items.tsv`.
//!
//! Everything here is pure (no I/O beyond reading the two files, no network)
//! so that the leave-one-out evaluation can prove, in unit tests, that the fit
//! sees only what it is given.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Why a data set could not be read. Every parse error names the file and the
/// 1-based line, so that a bad row in a 200,000-line file can be found.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("reading {}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}:{line}: {msg}", path.display())]
    Malformed { path: PathBuf, line: usize, msg: String },
}

/// Why training parameters were rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidParams(String);

/// One row of `items.tsv`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemRecord {
    /// The id used on the wire and in `sequences.txt`.
    pub id: String,
    pub asin: String,
    pub title: String,
}

impl ItemRecord {
    /// The text the shards embed: the title, or the asin (then the id) when it
    /// is empty, so that every item gets a vector and can be recommended.
    pub fn text(&self) -> &str {
        [&self.title, &self.asin, &self.id].into_iter().find(|s| !s.trim().is_empty()).map_or("", |s| s.as_str())
    }
}

/// A data set in memory. Items are numbered densely by their row in
/// `items.tsv` (`u32` indices), so that training works on small integers and
/// ids are only looked at when talking to the router.
#[derive(Debug, Clone, Default)]
pub struct Dataset {
    pub items: Vec<ItemRecord>,
    /// User ids, parallel to `sequences`.
    pub users: Vec<String>,
    /// Each user's items as indices into `items`, in the order of the file.
    pub sequences: Vec<Vec<u32>>,
    index: HashMap<String, u32>,
}

impl Dataset {
    /// Reads `items.tsv` and `sequences.txt` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, DataError> {
        let items_path = dir.join("items.tsv");
        let items_text = read(&items_path)?;
        let items = parse_items(&items_text, &items_path)?;
        let seq_path = dir.join("sequences.txt");
        let seq_text = read(&seq_path)?;
        Self::from_parts(items, &seq_text, &seq_path)
    }

    /// Builds a data set from parsed items and the text of `sequences.txt`
    /// (`path` is only used in error messages).
    pub fn from_parts(items: Vec<ItemRecord>, sequences: &[u8], path: &Path) -> Result<Self, DataError> {
        let index: HashMap<String, u32> = items.iter().enumerate().map(|(i, it)| (it.id.clone(), i as u32)).collect();
        let (users, sequences) = parse_sequences(sequences, path, &index)?;
        Ok(Self { items, users, sequences, index })
    }

    /// The dense index of an item id.
    pub fn item_index(&self, id: &str) -> Option<u32> {
        self.index.get(id).copied()
    }

    /// Total number of interactions (sequence entries).
    pub fn interactions(&self) -> usize {
        self.sequences.iter().map(Vec::len).sum()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, DataError> {
    std::fs::read(path).map_err(|source| DataError::Read { path: path.to_path_buf(), source })
}

/// Splits a file into (1-based line number, text) pairs, rejecting invalid
/// UTF-8 with the line it is on and dropping a trailing `\r`.
fn lines<'a>(text: &'a [u8], path: &'a Path) -> impl Iterator<Item = Result<(usize, &'a str), DataError>> + 'a {
    let text = text.strip_suffix(b"\n").unwrap_or(text);
    text.split(|b| *b == b'\n').enumerate().map(move |(i, raw)| {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        std::str::from_utf8(raw).map(|s| (i + 1, s)).map_err(|e| DataError::Malformed {
            path: path.to_path_buf(),
            line: i + 1,
            msg: format!("not valid UTF-8 ({e})"),
        })
    })
}

/// Parses `items.tsv`. Columns are found by name in the header; `item_id` and
/// `title` are required, `asin` is optional. Ids must be valid on the wire and
/// unique; blank lines are skipped.
pub fn parse_items(text: &[u8], path: &Path) -> Result<Vec<ItemRecord>, DataError> {
    let bad = |line: usize, msg: String| DataError::Malformed { path: path.to_path_buf(), line, msg };
    let mut rows = lines(text, path);
    let (hline, header) = rows.next().transpose()?.unwrap_or((1, ""));
    if header.trim().is_empty() {
        return Err(bad(hline, "no header; expected `item_id\\tasin\\ttitle` (tab-separated)".into()));
    }
    let columns: Vec<&str> = header.split('\t').map(str::trim).collect();
    let column = |name: &str| columns.iter().position(|c| *c == name);
    let (Some(id_col), Some(title_col)) = (column("item_id"), column("title")) else {
        return Err(bad(
            hline,
            format!("header {header:?} must name the columns `item_id` and `title` (tab-separated)"),
        ));
    };
    let asin_col = column("asin");
    let limits = vitrine_proto::Limits::default();
    let mut items = Vec::new();
    let mut first_line: HashMap<String, usize> = HashMap::new();
    for row in rows {
        let (line, row) = row?;
        if row.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = row.split('\t').collect();
        // A title is the last column and may be empty; editors and exporters
        // often drop the trailing tab, so only the id column must be present.
        let id = match fields.get(id_col) {
            Some(id) => id.trim(),
            None => {
                return Err(bad(
                    line,
                    format!("{} fields; the `item_id` column is number {}", fields.len(), id_col + 1),
                ))
            }
        };
        vitrine_proto::validate::id("item_id", id, &limits).map_err(|e| bad(line, e.to_string()))?;
        if let Some(prev) = first_line.insert(id.to_string(), line) {
            return Err(bad(line, format!("item_id {id:?} is repeated (first on line {prev})")));
        }
        let field =
            |col: Option<usize>| col.and_then(|c| fields.get(c)).map_or(String::new(), |s| s.trim().to_string());
        items.push(ItemRecord { id: id.to_string(), asin: field(asin_col), title: field(Some(title_col)) });
    }
    Ok(items)
}

/// Parses `sequences.txt` into (user ids, sequences of item indices). Blank
/// lines are skipped; a user may appear once; every item must be known.
pub fn parse_sequences(
    text: &[u8],
    path: &Path,
    index: &HashMap<String, u32>,
) -> Result<(Vec<String>, Vec<Vec<u32>>), DataError> {
    let bad = |line: usize, msg: String| DataError::Malformed { path: path.to_path_buf(), line, msg };
    let mut users = Vec::new();
    let mut sequences = Vec::new();
    let mut first_line: HashMap<String, usize> = HashMap::new();
    for row in lines(text, path) {
        let (line, row) = row?;
        let mut tokens = row.split_whitespace();
        let Some(user) = tokens.next() else { continue };
        if let Some(prev) = first_line.insert(user.to_string(), line) {
            return Err(bad(line, format!("user {user:?} is repeated (first on line {prev}); one line per user")));
        }
        let seq = tokens
            .map(|t| {
                index
                    .get(t)
                    .copied()
                    .ok_or_else(|| bad(line, format!("item {t:?} of user {user:?} is not in items.tsv")))
            })
            .collect::<Result<Vec<u32>, _>>()?;
        users.push(user.to_string());
        sequences.push(seq);
    }
    Ok((users, sequences))
}

/// Parameters of the co-visitation fit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainParams {
    /// How many following items count as "picked next to" an item. Five
    /// covers a typical browsing burst without linking unrelated sessions.
    pub window: usize,
    /// Weight factor per step of distance: the item right after counts 1, the
    /// one after that `decay`, and so on.
    pub decay: f64,
    /// Share of a forward pair also credited backwards (b before a). Small,
    /// because order carries the intent ("after the shampoo, the conditioner").
    pub backward: f64,
    /// Neighbours kept per item; the router reads the lists of every recent
    /// history item per request, so they must stay short.
    pub max_neighbours: usize,
}

impl Default for TrainParams {
    fn default() -> Self {
        Self { window: 5, decay: 0.7, backward: 0.1, max_neighbours: 100 }
    }
}

impl TrainParams {
    /// Rejects parameters that would produce invalid or meaningless signals.
    pub fn validate(&self) -> Result<(), InvalidParams> {
        if self.window == 0 {
            return Err(InvalidParams("window must be at least 1".into()));
        }
        if !(self.decay > 0.0 && self.decay <= 1.0) {
            return Err(InvalidParams(format!("decay is {}; it must be in (0, 1]", self.decay)));
        }
        if !(self.backward.is_finite() && self.backward >= 0.0) {
            return Err(InvalidParams(format!("backward is {}; it must be finite and >= 0", self.backward)));
        }
        let max = vitrine_proto::validate::MAX_NEIGHBOURS;
        if self.max_neighbours > max {
            return Err(InvalidParams(format!(
                "max_neighbours is {}; the router accepts at most {max}",
                self.max_neighbours
            )));
        }
        Ok(())
    }
}

/// Learnt signals of one item, by item index.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Signals {
    /// (item index, weight), strongest first.
    pub neighbours: Vec<(u32, f32)>,
    /// Popularity prior in [0, 1].
    pub popularity: f32,
}

/// Fits co-visitation neighbours and popularity on `train`, for items
/// `0..n_items`. The result has one entry per item, empty for items the
/// sequences never mention, so that uploading it clears stale signals.
///
/// For each position i and distance d in 1..=window, the pair (s[i], s[i+d])
/// gets `decay^(d-1)` forwards and `backward × decay^(d-1)` backwards;
/// self-pairs are skipped. An item's neighbour weights are T[a][b] /
/// sqrt(Σ_b T[a][b]): the square root damps hubs without flattening the
/// ranking inside one list. Ties are broken by item index (row order of
/// `items.tsv`), so the output is a pure function of the input.
///
/// Indices at or above `n_items` are ignored (the data set loader never
/// produces them).
pub fn fit(n_items: usize, train: &[Vec<u32>], p: &TrainParams) -> Vec<Signals> {
    let mut pairs: Vec<HashMap<u32, f64>> = vec![HashMap::new(); n_items];
    let mut counts = vec![0u64; n_items];
    let known = |i: u32| (i as usize) < n_items;
    for seq in train {
        for (i, &a) in seq.iter().enumerate() {
            if !known(a) {
                continue;
            }
            counts[a as usize] += 1;
            let mut w = 1.0;
            for &b in seq.iter().skip(i + 1).take(p.window) {
                if a != b && known(b) {
                    *pairs[a as usize].entry(b).or_default() += w;
                    *pairs[b as usize].entry(a).or_default() += p.backward * w;
                }
                w *= p.decay;
            }
        }
    }
    let max_count = counts.iter().copied().max().unwrap_or(0);
    pairs
        .into_iter()
        .zip(&counts)
        .map(|(row, &count)| {
            // Sum in a fixed order: HashMap order differs between maps, and
            // floating-point sums depend on order.
            let mut row: Vec<(u32, f64)> = row.into_iter().filter(|(_, w)| *w > 0.0).collect();
            row.sort_unstable_by_key(|(b, _)| *b);
            let norm = row.iter().map(|(_, w)| w).sum::<f64>().sqrt();
            row.sort_by(|x, y| y.1.total_cmp(&x.1).then(x.0.cmp(&y.0)));
            row.truncate(p.max_neighbours);
            let neighbours = row.into_iter().map(|(b, w)| (b, (w / norm) as f32)).collect();
            let popularity =
                if max_count == 0 { 0.0 } else { ((1.0 + count as f64).ln() / (1.0 + max_count as f64).ln()) as f32 };
            Signals { neighbours, popularity }
        })
        .collect()
}

/// Counts for the summary line of `vitrine train`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FitSummary {
    pub items: usize,
    pub items_with_neighbours: usize,
    pub neighbour_pairs: usize,
    pub items_with_popularity: usize,
}

impl FitSummary {
    pub fn of(signals: &[Signals]) -> Self {
        Self {
            items: signals.len(),
            items_with_neighbours: signals.iter().filter(|s| !s.neighbours.is_empty()).count(),
            neighbour_pairs: signals.iter().map(|s| s.neighbours.len()).sum(),
            items_with_popularity: signals.iter().filter(|s| s.popularity > 0.0).count(),
        }
    }
}

/// One item's signals with ids, as written to a JSONL file (one object per
/// line) and sent in `UpdateSignals`. Field names follow the proto's
/// `ItemSignals` so the file reads like the wire message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignalsRecord {
    pub id: String,
    pub neighbours: Vec<NeighbourRecord>,
    pub popularity: f32,
}

/// One neighbour of a [`SignalsRecord`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NeighbourRecord {
    pub id: String,
    pub weight: f32,
}

/// Attaches item ids to fitted signals (one record per item, in item order).
pub fn records(items: &[ItemRecord], signals: &[Signals]) -> Vec<SignalsRecord> {
    let id = |i: u32| items.get(i as usize).map(|it| it.id.clone());
    items
        .iter()
        .zip(signals)
        .map(|(it, s)| SignalsRecord {
            id: it.id.clone(),
            neighbours: s
                .neighbours
                .iter()
                .filter_map(|&(b, weight)| id(b).map(|id| NeighbourRecord { id, weight }))
                .collect(),
            popularity: s.popularity,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path() -> PathBuf {
        PathBuf::from("data/items.tsv")
    }

    fn items(ids: &[&str]) -> Vec<ItemRecord> {
        ids.iter().map(|id| ItemRecord { id: (*id).into(), asin: format!("A{id}"), title: format!("t{id}") }).collect()
    }

    #[test]
    fn items_parse_by_header_with_empty_titles_and_extra_columns() {
        let text = b"item_id\tasin\ttitle\textra\n1\tB01\tLip balm\tx\n2\tB02\t\n3\tB03\n\n4\tB04\tSoap, 2 pack\r\n";
        let items = parse_items(text, &path()).unwrap();
        assert_eq!(items.len(), 4);
        assert_eq!(items[0], ItemRecord { id: "1".into(), asin: "B01".into(), title: "Lip balm".into() });
        assert_eq!(items[1].title, "");
        assert_eq!(items[1].text(), "B02", "an empty title falls back to the asin");
        assert_eq!(items[2].title, "", "a dropped trailing tab is an empty title");
        assert_eq!(items[3].title, "Soap, 2 pack", "CRLF is stripped");
        // Columns are found by name, not position.
        let swapped = parse_items(b"title\titem_id\nHand cream\t9\n", &path()).unwrap();
        assert_eq!(swapped[0], ItemRecord { id: "9".into(), asin: String::new(), title: "Hand cream".into() });
    }

    #[test]
    fn item_errors_name_file_and_line() {
        let msg = |text: &[u8]| parse_items(text, &path()).unwrap_err().to_string();
        assert!(msg(b"").contains("items.tsv:1: no header"), "{}", msg(b""));
        assert!(msg(b"id\tname\n").contains("items.tsv:1: header"));
        let dup = msg(b"item_id\tasin\ttitle\n1\ta\tx\n2\tb\ty\n1\tc\tz\n");
        assert!(dup.contains("items.tsv:4:") && dup.contains("first on line 2"), "{dup}");
        let empty_id = msg(b"item_id\tasin\ttitle\n\tB01\tx\n");
        assert!(empty_id.contains("items.tsv:2:") && empty_id.contains("empty"), "{empty_id}");
        let utf8 = msg(b"item_id\tasin\ttitle\n1\tB01\t\xff\n");
        assert!(utf8.contains("items.tsv:2: not valid UTF-8"), "{utf8}");
    }

    #[test]
    fn sequences_keep_order_and_errors_name_the_line() {
        let items = items(&["10", "20", "30"]);
        let seq_path = PathBuf::from("d/sequences.txt");
        let ds = Dataset::from_parts(items.clone(), b"u1 30 10 20 10\n\nu2 20\nu3\n", &seq_path).unwrap();
        assert_eq!(ds.users, ["u1", "u2", "u3"]);
        assert_eq!(ds.sequences, vec![vec![2, 0, 1, 0], vec![1], vec![]]);
        assert_eq!(ds.interactions(), 5);
        assert_eq!(ds.item_index("20"), Some(1));
        let err = Dataset::from_parts(items.clone(), b"u1 10\nu2 10 99\n", &seq_path).unwrap_err().to_string();
        assert!(err.contains("sequences.txt:2:") && err.contains("\"99\""), "{err}");
        let err = Dataset::from_parts(items, b"u1 10\nu1 20\n", &seq_path).unwrap_err().to_string();
        assert!(err.contains("sequences.txt:2:") && err.contains("first on line 1"), "{err}");
    }

    #[test]
    fn the_shipped_data_set_loads_when_present() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/amazon-beauty");
        if !dir.exists() {
            eprintln!("skipping: {} is absent", dir.display());
            return;
        }
        let ds = Dataset::load(&dir).unwrap();
        assert_eq!(ds.items.len(), 12_101);
        assert_eq!(ds.users.len(), 22_363);
        assert_eq!(ds.interactions(), 198_502);
        assert!(ds.items.iter().all(|it| !it.text().is_empty()));
    }

    fn close(a: f32, b: f64) -> bool {
        (f64::from(a) - b).abs() < 1e-6
    }

    #[test]
    fn weights_match_a_hand_computed_example() {
        // Items 0..4; item 3 never occurs. Defaults: window 5, decay 0.7,
        // backward 0.1.
        //   [0, 1, 2]: 0→1 (d=1, w=1), 0→2 (d=2, w=0.7), 1→2 (d=1, w=1)
        //   [1, 0]:    1→0 (w=1)
        //   [2, 2]:    self-pair, skipped
        // T[0] = {1: 1 + 0.1·1 (from 1→0), 2: 0.7}       sum 1.8
        // T[1] = {0: 0.1 (from 0→1) + 1, 2: 1}           sum 2.1
        // T[2] = {0: 0.1·0.7, 1: 0.1·1}                  sum 0.17
        let s = fit(4, &[vec![0, 1, 2], vec![1, 0], vec![2, 2]], &TrainParams::default());
        assert_eq!(s.len(), 4);
        let ids = |i: usize| s[i].neighbours.iter().map(|n| n.0).collect::<Vec<_>>();
        assert_eq!(ids(0), [1, 2]);
        assert!(close(s[0].neighbours[0].1, 1.1 / 1.8f64.sqrt()));
        assert!(close(s[0].neighbours[1].1, 0.7 / 1.8f64.sqrt()));
        assert_eq!(ids(1), [0, 2]);
        assert!(close(s[1].neighbours[0].1, 1.1 / 2.1f64.sqrt()));
        assert!(close(s[1].neighbours[1].1, 1.0 / 2.1f64.sqrt()));
        assert_eq!(ids(2), [1, 0]);
        assert!(close(s[2].neighbours[0].1, 0.1 / 0.17f64.sqrt()));
        assert!(close(s[2].neighbours[1].1, 0.07 / 0.17f64.sqrt()));
        assert!(s[3].neighbours.is_empty());
        // Occurrences 2, 2, 3, 0: ln(1+c)/ln(1+3).
        assert!(close(s[0].popularity, 3f64.ln() / 4f64.ln()));
        assert!(close(s[1].popularity, 3f64.ln() / 4f64.ln()));
        assert!(close(s[2].popularity, 1.0));
        assert_eq!(s[3].popularity, 0.0);
    }

    #[test]
    fn window_cap_and_ties_are_respected() {
        let one = TrainParams { window: 1, ..TrainParams::default() };
        let s = fit(3, &[vec![0, 1, 2]], &one);
        assert_eq!(s[0].neighbours.iter().map(|n| n.0).collect::<Vec<_>>(), [1], "0→2 is at distance 2");
        // T[0] = {1: 1, 2: 1}: a tie, broken by index; the cap keeps the first.
        let capped = TrainParams { max_neighbours: 1, ..TrainParams::default() };
        let s = fit(3, &[vec![0, 2], vec![0, 1]], &capped);
        assert_eq!(s[0].neighbours.len(), 1);
        assert_eq!(s[0].neighbours[0].0, 1);
        assert!(close(s[0].neighbours[0].1, 1.0 / 2f64.sqrt()), "normalised over all pairs, not only the kept ones");
        assert_eq!(fit(2, &[], &TrainParams::default()), vec![Signals::default(); 2]);
    }

    #[test]
    fn params_are_checked() {
        assert!(TrainParams::default().validate().is_ok());
        assert!(TrainParams { window: 0, ..Default::default() }.validate().is_err());
        assert!(TrainParams { decay: 0.0, ..Default::default() }.validate().is_err());
        assert!(TrainParams { decay: f64::NAN, ..Default::default() }.validate().is_err());
        assert!(TrainParams { backward: -0.1, ..Default::default() }.validate().is_err());
        assert!(TrainParams { max_neighbours: 100_000, ..Default::default() }.validate().is_err());
    }

    #[test]
    fn records_carry_ids_and_round_trip_as_json() {
        let items = items(&["a", "b"]);
        let s = fit(2, &[vec![0, 1]], &TrainParams::default());
        let r = records(&items, &s);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].neighbours, vec![NeighbourRecord { id: "b".into(), weight: 1.0 }]);
        let line = serde_json::to_string(&r[1]).unwrap();
        assert!(line.starts_with("{\"id\":\"b\",\"neighbours\":[{\"id\":\"a\""), "{line}");
        assert_eq!(serde_json::from_str::<SignalsRecord>(&line).unwrap(), r[1]);
        assert_eq!(
            FitSummary::of(&s),
            FitSummary { items: 2, items_with_neighbours: 2, neighbour_pairs: 2, items_with_popularity: 2 }
        );
    }
}
