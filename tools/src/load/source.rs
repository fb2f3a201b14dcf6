//! Catalogue readers for `vitrine load` and `vitrine embed`: JSONL, CSV/TSV,
//! Parquet and `.npy` + ids. Each yields [`Row`]s lazily, one input record at
//! a time, so that a file far larger than memory streams through.
//!
//! Every format maps onto the JSONL [`Record`]; a row that cannot be turned
//! into one (bad JSON, a price that is not a number) is yielded as an error
//! naming its line or row, so the caller can skip it and go on.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type, Int64Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

use crate::catalog_file::Record;

/// Input formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JSON object per line (demo/README.md).
    Jsonl,
    /// Comma-separated, header row, RFC 4180 quoting.
    Csv,
    /// Tab-separated, header row, no quoting (a tab never occurs in a field).
    Tsv,
    /// Apache Parquet, the same column names as CSV.
    Parquet,
    /// A float32 [n, d] NumPy matrix of precomputed vectors; needs `--ids`.
    Npy,
}

impl Format {
    /// The format a file name's extension implies.
    pub fn from_path(path: &Path) -> anyhow::Result<Self> {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
        Ok(match ext.as_str() {
            "jsonl" | "ndjson" | "json" => Self::Jsonl,
            "csv" => Self::Csv,
            "tsv" | "tab" => Self::Tsv,
            "parquet" | "pq" => Self::Parquet,
            "npy" => Self::Npy,
            _ => bail!("cannot tell the format of {} from its extension; give --format", path.display()),
        })
    }
}

/// Where a record is in its file, for messages: `line 7` (text formats,
/// 1-based, the header counts) or `row 7` (Parquet and npy, 1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Line(u64),
    Row(u64),
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::Line(n) => write!(f, "line {n}"),
            Place::Row(n) => write!(f, "row {n}"),
        }
    }
}

/// One input record: its position among the file's records (0-based; the
/// unit of checkpoints), its place for messages, and the record or why it
/// could not be read.
#[derive(Debug)]
pub struct Row {
    pub index: u64,
    pub place: Place,
    pub record: Result<Record, String>,
}

/// An opened input.
pub struct Source {
    pub format: Format,
    /// Records in the file when that is cheap to learn (Parquet and npy
    /// headers, a byte scan of text files up to [`COUNT_LIMIT`]); it may
    /// overcount text files with blank lines or quoted line breaks, so it
    /// only feeds the progress bar.
    pub total: Option<u64>,
    pub rows: Box<dyn Iterator<Item = Row> + Send>,
}

/// Text files are pre-counted (a newline scan, about 1 GB/s) only up to this
/// size: beyond it the scan would delay the first batch noticeably.
const COUNT_LIMIT: u64 = 4 << 30;

/// Opens `path` as `format` (or the format its extension implies). `ids` is
/// the id file of an `.npy` matrix.
pub fn open(path: &Path, format: Option<Format>, ids: Option<&Path>) -> anyhow::Result<Source> {
    let format = match format {
        Some(f) => f,
        None => Format::from_path(path)?,
    };
    if format != Format::Npy && ids.is_some() {
        bail!("--ids is only for .npy input");
    }
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let (total, rows): (Option<u64>, Box<dyn Iterator<Item = Row> + Send>) = match format {
        Format::Jsonl => (count_lines(path, 0), Box::new(jsonl(BufReader::new(file)))),
        Format::Csv | Format::Tsv => {
            let rows = delimited(file, format == Format::Tsv).with_context(|| format!("reading {}", path.display()))?;
            (count_lines(path, 1), Box::new(rows))
        }
        Format::Parquet => {
            let rows = ParquetRows::open(file).with_context(|| format!("reading {}", path.display()))?;
            (Some(rows.total), Box::new(rows))
        }
        Format::Npy => {
            let ids = ids.context(".npy input needs --ids FILE (one id per line, in row order)")?;
            let rows = npy(file, ids).with_context(|| format!("reading {}", path.display()))?;
            (Some(rows.rows), Box::new(rows))
        }
    };
    Ok(Source { format, total, rows })
}

/// Newlines in a text file (minus `header` lines), or `None` when the file
/// is too large to scan quickly or cannot be read.
fn count_lines(path: &Path, header: u64) -> Option<u64> {
    let size = std::fs::metadata(path).ok()?.len();
    if size > COUNT_LIMIT {
        return None;
    }
    let mut r = File::open(path).ok()?;
    let mut buf = vec![0u8; 1 << 16];
    let (mut lines, mut last) = (0u64, b'\n');
    loop {
        let n = r.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        last = buf[n - 1];
    }
    if last != b'\n' {
        lines += 1;
    }
    Some(lines.saturating_sub(header))
}

// ---------------------------------------------------------------- JSONL

/// Non-blank lines parsed as [`Record`]s.
fn jsonl(reader: impl BufRead + Send + 'static) -> impl Iterator<Item = Row> + Send {
    let mut index = 0u64;
    reader.lines().enumerate().filter_map(move |(i, line)| {
        let place = Place::Line(i as u64 + 1);
        let record = match line {
            Err(e) => Err(format!("unreadable: {e}")),
            Ok(l) if l.trim().is_empty() => return None,
            Ok(l) => serde_json::from_str::<Record>(&l).map_err(|e| e.to_string()),
        };
        index += 1;
        Some(Row { index: index - 1, place, record })
    })
}

// ---------------------------------------------------------------- CSV / TSV

/// What a CSV or Parquet column feeds.
#[derive(Debug, Clone, PartialEq)]
enum Column {
    Id,
    Title,
    Description,
    Category,
    Brand,
    Price,
    InStock,
    Tags,
    ImagePath,
    PublishedMs,
    Vector,
    Str(String),
    Num(String),
}

/// The column names the tabular formats accept (besides `str.<name>` and
/// `num.<name>`), listed in the error for an unknown one.
const COLUMNS: &str =
    "id, title, description, category, brand, price, in_stock, tags, image_path, published_ms, vector, str.<name>, num.<name>";

impl Column {
    fn parse(name: &str) -> anyhow::Result<Self> {
        let name = name.trim();
        Ok(match name {
            "id" => Self::Id,
            "title" => Self::Title,
            "description" => Self::Description,
            "category" => Self::Category,
            "brand" => Self::Brand,
            "price" => Self::Price,
            "in_stock" => Self::InStock,
            "tags" => Self::Tags,
            "image_path" => Self::ImagePath,
            "published_ms" => Self::PublishedMs,
            "vector" => Self::Vector,
            _ => match (name.strip_prefix("str."), name.strip_prefix("num.")) {
                (Some(s), _) if !s.is_empty() => Self::Str(s.to_string()),
                (_, Some(n)) if !n.is_empty() => Self::Num(n.to_string()),
                _ => bail!("unknown column {name:?}; the columns are {COLUMNS}"),
            },
        })
    }
}

/// Maps header names to columns; `id` is required and names are unique.
fn columns(names: &[String]) -> anyhow::Result<Vec<Column>> {
    let cols = names.iter().map(|n| Column::parse(n)).collect::<anyhow::Result<Vec<_>>>()?;
    if !cols.contains(&Column::Id) {
        bail!("no `id` column");
    }
    for (i, n) in names.iter().enumerate() {
        if names[..i].contains(n) {
            bail!("column {n:?} appears twice");
        }
    }
    Ok(cols)
}

/// Tags in a text cell: `|`-separated, blanks dropped.
fn split_tags(cell: &str) -> Vec<String> {
    cell.split('|').map(str::trim).filter(|t| !t.is_empty()).map(str::to_string).collect()
}

fn parse_bool(cell: &str) -> Result<bool, String> {
    match cell.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "y" | "t" => Ok(true),
        "false" | "0" | "no" | "n" | "f" => Ok(false),
        other => Err(format!("not a boolean: {other:?}")),
    }
}

fn parse_f64(cell: &str) -> Result<f64, String> {
    cell.trim().parse::<f64>().map_err(|_| format!("not a number: {cell:?}"))
}

/// A text row → record. Empty cells mean "unset".
fn text_record(cols: &[Column], cells: &csv::StringRecord) -> Result<Record, String> {
    if cells.len() != cols.len() {
        return Err(format!("{} fields; the header has {}", cells.len(), cols.len()));
    }
    let mut r = empty_record();
    for (col, cell) in cols.iter().zip(cells.iter()) {
        let blank = cell.trim().is_empty();
        let named = |e: String| format!("{}: {e}", column_name(col));
        match col {
            Column::Id => r.id = cell.trim().to_string(),
            Column::Title => r.title = cell.to_string(),
            Column::Description => r.description = cell.to_string(),
            Column::Category => r.category = cell.to_string(),
            Column::Brand => r.brand = cell.to_string(),
            Column::Price if !blank => r.price = Some(parse_f64(cell).map_err(named)?),
            Column::InStock if !blank => r.in_stock = Some(parse_bool(cell).map_err(named)?),
            Column::Tags => r.tags = split_tags(cell),
            Column::ImagePath if !blank => r.image_path = Some(cell.trim().to_string()),
            Column::PublishedMs if !blank => {
                r.published_ms = cell.trim().parse().map_err(|_| named(format!("not an integer: {cell:?}")))?
            }
            Column::Vector if !blank => {
                // Space-, comma- or `|`-separated numbers, optionally in [ ].
                let inner = cell.trim().trim_start_matches('[').trim_end_matches(']');
                let v = inner
                    .split(|c: char| c == ',' || c == '|' || c.is_whitespace())
                    .filter(|s| !s.is_empty())
                    .map(|s| s.parse::<f32>().map_err(|_| named(format!("not a number: {s:?}"))))
                    .collect::<Result<Vec<f32>, String>>()?;
                r.vector = Some(v);
            }
            Column::Str(k) if !blank => {
                r.strings.insert(k.clone(), cell.to_string());
            }
            Column::Num(k) if !blank => {
                r.numbers.insert(k.clone(), parse_f64(cell).map_err(named)?);
            }
            _ => {}
        }
    }
    Ok(r)
}

fn column_name(c: &Column) -> String {
    match c {
        Column::Id => "id".into(),
        Column::Title => "title".into(),
        Column::Description => "description".into(),
        Column::Category => "category".into(),
        Column::Brand => "brand".into(),
        Column::Price => "price".into(),
        Column::InStock => "in_stock".into(),
        Column::Tags => "tags".into(),
        Column::ImagePath => "image_path".into(),
        Column::PublishedMs => "published_ms".into(),
        Column::Vector => "vector".into(),
        Column::Str(k) => format!("str.{k}"),
        Column::Num(k) => format!("num.{k}"),
    }
}

fn empty_record() -> Record {
    Record {
        id: String::new(),
        title: String::new(),
        description: String::new(),
        category: String::new(),
        brand: String::new(),
        price: None,
        in_stock: None,
        tags: Vec::new(),
        strings: HashMap::new(),
        numbers: HashMap::new(),
        vector: None,
        text_vector: None,
        image_vector: None,
        image_path: None,
        published_ms: 0,
    }
}

/// CSV or TSV rows after the header.
fn delimited(reader: impl Read + Send + 'static, tsv: bool) -> anyhow::Result<impl Iterator<Item = Row> + Send> {
    let mut r = csv::ReaderBuilder::new()
        .delimiter(if tsv { b'\t' } else { b',' })
        .quoting(!tsv)
        // Rows with the wrong number of fields are skipped by `text_record`
        // with a reason, not an error that ends the file.
        .flexible(true)
        .from_reader(reader);
    let names: Vec<String> = r.headers().context("reading the header row")?.iter().map(str::to_string).collect();
    let cols = columns(&names)?;
    let mut index = 0u64;
    Ok(r.into_records().map(move |rec| {
        let row = match rec {
            Ok(cells) => {
                let line = cells.position().map_or(0, |p| p.line());
                Row { index, place: Place::Line(line), record: text_record(&cols, &cells) }
            }
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line());
                Row { index, place: Place::Line(line), record: Err(format!("unreadable: {e}")) }
            }
        };
        index += 1;
        row
    }))
}

// ---------------------------------------------------------------- Parquet

/// Rows per Arrow batch decoded from Parquet: big enough to amortise the
/// per-batch column casts, small enough that memory stays a few MB even with
/// 1,024-dimensional vectors.
const PARQUET_BATCH: usize = 1024;

/// Parquet rows, decoded a record batch at a time.
struct ParquetRows {
    reader: ParquetRecordBatchReader,
    cols: Vec<Column>,
    batch: Option<Decoded>,
    next_row: usize,
    index: u64,
    total: u64,
    failed: bool,
}

/// One record batch with every column cast to the type its [`Column`] reads.
struct Decoded {
    columns: Vec<ArrayRef>,
    rows: usize,
}

impl ParquetRows {
    fn open(file: File) -> anyhow::Result<Self> {
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)?.with_batch_size(PARQUET_BATCH);
        let total = u64::try_from(builder.metadata().file_metadata().num_rows()).unwrap_or(0);
        let names: Vec<String> = builder.schema().fields().iter().map(|f| f.name().clone()).collect();
        let cols = columns(&names)?;
        let reader = builder.build()?;
        Ok(Self { reader, cols, batch: None, next_row: 0, index: 0, total, failed: false })
    }

    /// Casts each column to the one type [`Self::record`] reads, so that any
    /// string flavour (Utf8, LargeUtf8, Utf8View), integer or float width
    /// and list flavour is accepted.
    fn decode(&self, batch: &RecordBatch) -> Result<Decoded, String> {
        let mut columns = Vec::with_capacity(self.cols.len());
        for (col, array) in self.cols.iter().zip(batch.columns()) {
            let target = match col {
                Column::Price | Column::Num(_) => DataType::Float64,
                Column::InStock => DataType::Boolean,
                Column::PublishedMs => DataType::Int64,
                Column::Vector => DataType::List(Arc::new(Field::new_list_field(DataType::Float32, true))),
                Column::Tags if matches!(array.data_type(), DataType::List(_) | DataType::LargeList(_)) => {
                    DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true)))
                }
                _ => DataType::Utf8,
            };
            let cast = arrow_cast::cast(array, &target).map_err(|e| {
                format!("column {}: cannot read {} as {target}: {e}", column_name(col), array.data_type())
            })?;
            columns.push(cast);
        }
        Ok(Decoded { columns, rows: batch.num_rows() })
    }

    fn record(&self, d: &Decoded, row: usize) -> Result<Record, String> {
        let mut r = empty_record();
        for (col, array) in self.cols.iter().zip(&d.columns) {
            if array.is_null(row) {
                continue;
            }
            let text = || array.as_string::<i32>().value(row).to_string();
            match col {
                Column::Id => r.id = text().trim().to_string(),
                Column::Title => r.title = text(),
                Column::Description => r.description = text(),
                Column::Category => r.category = text(),
                Column::Brand => r.brand = text(),
                Column::Price => r.price = Some(array.as_primitive::<Float64Type>().value(row)),
                Column::InStock => r.in_stock = Some(array.as_boolean().value(row)),
                Column::Tags => {
                    r.tags = match array.data_type() {
                        DataType::List(_) => {
                            let list = array.as_list::<i32>().value(row);
                            let s = list.as_string::<i32>();
                            (0..s.len()).filter(|&i| !s.is_null(i)).map(|i| s.value(i).to_string()).collect()
                        }
                        _ => split_tags(&text()),
                    }
                }
                Column::ImagePath => r.image_path = Some(text()),
                Column::PublishedMs => r.published_ms = array.as_primitive::<Int64Type>().value(row),
                Column::Vector => {
                    let list = array.as_list::<i32>().value(row);
                    let v = list.as_primitive::<Float32Type>();
                    if v.null_count() > 0 {
                        return Err("vector: has null components".into());
                    }
                    r.vector = Some(v.values().to_vec());
                }
                Column::Str(k) => {
                    r.strings.insert(k.clone(), text());
                }
                Column::Num(k) => {
                    r.numbers.insert(k.clone(), array.as_primitive::<Float64Type>().value(row));
                }
            }
        }
        Ok(r)
    }
}

impl Iterator for ParquetRows {
    type Item = Row;

    fn next(&mut self) -> Option<Row> {
        loop {
            if self.failed {
                return None;
            }
            if let Some(d) = &self.batch {
                if self.next_row < d.rows {
                    let record = self.record(d, self.next_row);
                    self.next_row += 1;
                    self.index += 1;
                    return Some(Row { index: self.index - 1, place: Place::Row(self.index), record });
                }
            }
            self.next_row = 0;
            self.batch = match self.reader.next()? {
                Ok(b) => match self.decode(&b) {
                    Ok(d) => Some(d),
                    Err(e) => return Some(self.fatal(e)),
                },
                Err(e) => return Some(self.fatal(format!("unreadable: {e}"))),
            };
        }
    }
}

impl ParquetRows {
    /// A corrupt or mistyped column chunk ends the file: its rows cannot be
    /// told apart, so the error is reported once, on the next row.
    fn fatal(&mut self, reason: String) -> Row {
        self.failed = true;
        Row { index: self.index, place: Place::Row(self.index + 1), record: Err(format!("{reason} (reading stopped)")) }
    }
}

// ---------------------------------------------------------------- npy

/// Rows of an `.npy` matrix paired with the lines of an id file.
struct NpyRows {
    data: npyz::NpyReader<f32, BufReader<File>>,
    ids: std::io::Lines<BufReader<File>>,
    ids_path: PathBuf,
    dimension: usize,
    rows: u64,
    index: u64,
}

fn npy(file: File, ids_path: &Path) -> anyhow::Result<NpyRows> {
    let npy = npyz::NpyFile::new(BufReader::new(file))?;
    let shape = npy.shape().to_vec();
    if shape.len() != 2 {
        bail!("the matrix has shape {shape:?}; expected [rows, dimension]");
    }
    if npy.order() != npyz::Order::C {
        bail!("the matrix is in Fortran order; save it in C order (numpy.ascontiguousarray)");
    }
    let data = npy.data::<f32>().map_err(|e| anyhow::anyhow!("the matrix must be float32: {e}"))?;
    let ids_lines = count_lines(ids_path, 0).with_context(|| format!("reading {}", ids_path.display()))?;
    if ids_lines != shape[0] {
        bail!("{} has {ids_lines} lines but the matrix has {} rows", ids_path.display(), shape[0]);
    }
    let ids = BufReader::new(File::open(ids_path).with_context(|| format!("opening {}", ids_path.display()))?).lines();
    Ok(NpyRows {
        data,
        ids,
        ids_path: ids_path.to_path_buf(),
        dimension: usize::try_from(shape[1])?,
        rows: shape[0],
        index: 0,
    })
}

impl Iterator for NpyRows {
    type Item = Row;

    fn next(&mut self) -> Option<Row> {
        if self.index >= self.rows {
            return None;
        }
        self.index += 1;
        let place = Place::Row(self.index);
        let index = self.index - 1;
        let id = match self.ids.next() {
            Some(Ok(id)) => id.trim().to_string(),
            _ => {
                self.index = self.rows;
                return Some(Row { index, place, record: Err(format!("{} ended early", self.ids_path.display())) });
            }
        };
        let mut v = Vec::with_capacity(self.dimension);
        for x in self.data.by_ref().take(self.dimension) {
            match x {
                Ok(x) => v.push(x),
                Err(e) => {
                    self.index = self.rows;
                    return Some(Row {
                        index,
                        place,
                        record: Err(format!("unreadable matrix: {e} (reading stopped)")),
                    });
                }
            }
        }
        if v.len() != self.dimension {
            self.index = self.rows;
            return Some(Row { index, place, record: Err("the matrix ended early (reading stopped)".into()) });
        }
        let mut r = empty_record();
        r.id = id;
        r.vector = Some(v);
        Some(Row { index, place, record: Ok(r) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use npyz::WriterBuilder;
    use std::io::Write;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn read_all(path: &Path, ids: Option<&Path>) -> Vec<Row> {
        open(path, None, ids).unwrap().rows.collect()
    }

    #[test]
    fn jsonl_skips_blank_lines_and_names_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "c.jsonl", "{\"id\":\"a\",\"title\":\"A\"}\n\n{\"id\": 3}\n{\"id\":\"c\"}\n");
        let rows = read_all(&p, None);
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].record.as_ref().unwrap().title, "A");
        assert_eq!((rows[1].index, rows[1].place), (1, Place::Line(3)));
        assert!(rows[1].record.is_err());
        assert_eq!(rows[2].record.as_ref().unwrap().id, "c");
    }

    #[test]
    fn csv_maps_columns_and_skips_malformed_rows() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "c.csv",
            "id,title,price,in_stock,tags,str.colour,num.year,published_ms\n\
             a,\"Red, wool\",12.5,yes,x|y,red,2011,5\n\
             b,Blue,abc,,,,,\n\
             c,Short\n\
             d,Green,,false,,,,\n",
        );
        let rows = read_all(&p, None);
        assert_eq!(rows.len(), 4);
        let a = rows[0].record.as_ref().unwrap();
        assert_eq!(a.title, "Red, wool");
        assert_eq!(a.price, Some(12.5));
        assert_eq!(a.in_stock, Some(true));
        assert_eq!(a.tags, vec!["x", "y"]);
        assert_eq!(a.strings["colour"], "red");
        assert_eq!(a.numbers["year"], 2011.0);
        assert_eq!(a.published_ms, 5);
        let b = rows[1].record.as_ref().unwrap_err();
        assert!(b.contains("price"), "{b}");
        assert_eq!(rows[1].place, Place::Line(3));
        assert!(rows[2].record.as_ref().unwrap_err().contains("fields"));
        let d = rows[3].record.as_ref().unwrap();
        assert_eq!((d.price, d.in_stock), (None, Some(false)));
    }

    #[test]
    fn tsv_does_not_treat_quotes_specially_and_unknown_columns_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "c.tsv", "id\ttitle\n1\t12\" vinyl \"record\n");
        let rows = read_all(&p, None);
        assert_eq!(rows[0].record.as_ref().unwrap().title, "12\" vinyl \"record");
        let bad = write(dir.path(), "bad.csv", "id,colour\n1,red\n");
        let err = open(&bad, None, None).err().unwrap();
        assert!(format!("{err:#}").contains("unknown column \"colour\""), "{err:#}");
        let no_id = write(dir.path(), "noid.csv", "title\nx\n");
        assert!(open(&no_id, None, None).is_err());
    }

    #[test]
    fn parquet_reads_strings_numbers_tags_and_vectors() {
        use arrow_array::builder::{Float32Builder, ListBuilder};
        use arrow_array::{Float64Array, Int32Array, StringArray};
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.parquet");
        let mut vectors = ListBuilder::new(Float32Builder::new());
        vectors.values().append_slice(&[1.0, 2.0]);
        vectors.append(true);
        vectors.append(false);
        vectors.values().append_value(3.0);
        vectors.values().append_null();
        vectors.append(true);
        let batch = RecordBatch::try_from_iter(vec![
            ("id", Arc::new(StringArray::from(vec!["a", "b", "c"])) as ArrayRef),
            ("title", Arc::new(StringArray::from(vec![Some("A"), None, Some("C")])) as ArrayRef),
            ("price", Arc::new(Float64Array::from(vec![Some(1.5), None, Some(2.0)])) as ArrayRef),
            ("num.year", Arc::new(Int32Array::from(vec![2011, 2012, 2013])) as ArrayRef),
            ("tags", Arc::new(StringArray::from(vec!["x|y", "", "z"])) as ArrayRef),
            ("vector", Arc::new(vectors.finish()) as ArrayRef),
        ])
        .unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(File::create(&p).unwrap(), batch.schema(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let src = open(&p, None, None).unwrap();
        assert_eq!(src.total, Some(3));
        let rows: Vec<Row> = src.rows.collect();
        let a = rows[0].record.as_ref().unwrap();
        assert_eq!((a.id.as_str(), a.title.as_str(), a.price), ("a", "A", Some(1.5)));
        assert_eq!(a.numbers["year"], 2011.0);
        assert_eq!(a.tags, vec!["x", "y"]);
        assert_eq!(a.vector.as_deref(), Some(&[1.0f32, 2.0][..]));
        let b = rows[1].record.as_ref().unwrap();
        assert_eq!((b.title.as_str(), b.price, b.vector.is_none()), ("", None, true));
        assert!(rows[2].record.as_ref().unwrap_err().contains("null"));
        assert_eq!(rows[2].place, Place::Row(3));
    }

    #[test]
    fn npy_pairs_rows_with_ids() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v.npy");
        let mut w = npyz::WriteOptions::<f32>::new()
            .default_dtype()
            .shape(&[2, 3])
            .writer(std::io::BufWriter::new(File::create(&p).unwrap()))
            .begin_nd()
            .unwrap();
        w.extend([1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        w.finish().unwrap();
        let ids = write(dir.path(), "v.ids", "a\nb\n");
        let rows = read_all(&p, Some(&ids));
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].record.as_ref().unwrap().id, "b");
        assert_eq!(rows[1].record.as_ref().unwrap().vector.as_deref(), Some(&[4.0f32, 5.0, 6.0][..]));
        let short = write(dir.path(), "short.ids", "a\n");
        assert!(format!("{:#}", open(&p, None, Some(&short)).err().unwrap()).contains("1 lines"));
        assert!(open(&p, None, None).is_err(), "ids are required");
        let mut f = File::create(dir.path().join("x.txt")).unwrap();
        f.write_all(b"x").unwrap();
        assert!(Format::from_path(&dir.path().join("x.txt")).is_err());
    }
}
