//! `vitrine embed`: embeds a catalogue offline with the shards' text model
//! and writes the vectors as Parquet or `.npy` + ids, so that a batch
//! machine (a GPU box, a big CPU node) does the embedding once and any
//! cluster bulk-loads the result with `vitrine load` without embedding.
//!
//! The text of an item is built by the shard's own
//! [`vitrine_shard::service::item_text`], so a vector made here equals the
//! one the shard would have made for the same item.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use arrow_array::builder::{Float32Builder, ListBuilder};
use arrow_array::{ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use npyz::WriterBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use vitrine_proto::pb;
use vitrine_shard::embed::{TextEmbedder, TextModelConfig};

use crate::catalog_file::Record;
use crate::load::source::{self, Format};

/// Flags of `vitrine embed`.
#[derive(clap::Args, Debug)]
pub struct EmbedArgs {
    /// Catalogue to embed: .jsonl, .csv, .tsv or .parquet.
    pub input: PathBuf,
    /// Input format, when the extension does not say.
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Output: `.parquet` (id, vector and the item's other columns) or
    /// `.npy` (a float32 [n, d] matrix; the ids go to a `.ids` file beside it).
    #[arg(long, short)]
    pub out: PathBuf,
    /// Text model directory (the shards' model).
    #[arg(long, default_value = crate::DEFAULT_MODEL_DIR)]
    pub model_dir: PathBuf,
    /// ONNX Runtime library.
    #[arg(long, default_value = crate::DEFAULT_ORT_LIB)]
    pub ort_lib: PathBuf,
    /// Records read and embedded together; the model itself runs them in
    /// chunks of 32 sorted by length.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch: u32,
    /// Inference threads [default: all cores].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Where the model runs: cpu, cuda:N or auto (the shard's --device), so
    /// a GPU batch machine can embed for a CPU cluster.
    #[arg(long, default_value = "cpu")]
    pub device: vitrine_shard::embed::Device,
    /// Pooling of token vectors; must match the shards' --pooling.
    #[arg(long, value_enum, default_value_t = vitrine_shard::embed::Pooling::Mean)]
    pub pooling: vitrine_shard::embed::Pooling,
}

/// Output kinds, by extension.
enum Sink {
    Parquet(ParquetSink),
    Npy(NpySink),
}

/// Writes the output to a temporary file renamed into place at the end, so
/// that an interrupted job never leaves a truncated file that looks whole.
fn temporary(out: &Path) -> anyhow::Result<tempfile::NamedTempFile> {
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    tempfile::NamedTempFile::new_in(dir).with_context(|| format!("creating a temporary file in {}", dir.display()))
}

/// Rows per Parquet row group: bounded so that memory stays small on large
/// catalogues (8,192 × 384 floats ≈ 12 MB), big enough for fast scans.
const ROW_GROUP: usize = 8192;

struct ParquetSink {
    writer: ArrowWriter<File>,
    tmp: tempfile::TempPath,
    schema: SchemaRef,
}

fn schema() -> SchemaRef {
    let s = |n: &str| Field::new(n, DataType::Utf8, false);
    Arc::new(Schema::new(vec![
        s("id"),
        Field::new("vector", DataType::List(Arc::new(Field::new_list_field(DataType::Float32, true))), false),
        s("title"),
        s("description"),
        s("category"),
        s("brand"),
        Field::new("price", DataType::Float64, true),
        Field::new("in_stock", DataType::Boolean, true),
        s("tags"),
        Field::new("image_path", DataType::Utf8, true),
        Field::new("published_ms", DataType::Int64, false),
    ]))
}

impl ParquetSink {
    fn create(out: &Path) -> anyhow::Result<Self> {
        let (file, tmp) = temporary(out)?.into_parts();
        let props =
            WriterProperties::builder().set_compression(Compression::SNAPPY).set_max_row_group_size(ROW_GROUP).build();
        let schema = schema();
        let writer = ArrowWriter::try_new(file, Arc::clone(&schema), Some(props))?;
        Ok(Self { writer, tmp, schema })
    }

    fn write(&mut self, records: &[Record], vectors: &[Vec<f32>]) -> anyhow::Result<()> {
        let strs = |f: fn(&Record) -> &str| Arc::new(StringArray::from_iter_values(records.iter().map(f))) as ArrayRef;
        let mut v = ListBuilder::new(Float32Builder::new());
        for x in vectors {
            v.values().append_slice(x);
            v.append(true);
        }
        let columns: Vec<ArrayRef> = vec![
            strs(|r| &r.id),
            Arc::new(v.finish()),
            strs(|r| &r.title),
            strs(|r| &r.description),
            strs(|r| &r.category),
            strs(|r| &r.brand),
            Arc::new(Float64Array::from_iter(records.iter().map(|r| r.price))),
            Arc::new(BooleanArray::from_iter(records.iter().map(|r| r.in_stock))),
            Arc::new(StringArray::from_iter_values(records.iter().map(|r| r.tags.join("|")))),
            Arc::new(StringArray::from_iter(records.iter().map(|r| r.image_path.as_deref()))),
            Arc::new(Int64Array::from_iter_values(records.iter().map(|r| r.published_ms))),
        ];
        self.writer.write(&RecordBatch::try_new(Arc::clone(&self.schema), columns)?)?;
        Ok(())
    }

    fn finish(self, out: &Path) -> anyhow::Result<()> {
        self.writer.close()?;
        self.tmp.persist(out).with_context(|| format!("renaming to {}", out.display()))?;
        Ok(())
    }
}

/// `.npy` output. The header holds the row count, unknown until the end, so
/// vectors go to a raw temporary file first and are copied behind the header
/// once the count is known: two sequential writes, constant memory.
struct NpySink {
    raw: BufWriter<tempfile::NamedTempFile>,
    ids: BufWriter<tempfile::NamedTempFile>,
    rows: u64,
    dimension: usize,
}

/// The id file of an `.npy` output: `vectors.npy` → `vectors.ids`.
pub fn ids_path(npy: &Path) -> PathBuf {
    npy.with_extension("ids")
}

impl NpySink {
    fn create(out: &Path) -> anyhow::Result<Self> {
        Ok(Self { raw: BufWriter::new(temporary(out)?), ids: BufWriter::new(temporary(out)?), rows: 0, dimension: 0 })
    }

    fn write(&mut self, records: &[Record], vectors: &[Vec<f32>]) -> anyhow::Result<()> {
        for (r, v) in records.iter().zip(vectors) {
            if r.id.contains('\n') {
                bail!("id {:?} contains a line break, which an .ids file cannot hold; write Parquet", r.id);
            }
            self.dimension = v.len();
            for x in v {
                self.raw.write_all(&x.to_le_bytes())?;
            }
            writeln!(self.ids, "{}", r.id)?;
            self.rows += 1;
        }
        Ok(())
    }

    fn finish(self, out: &Path) -> anyhow::Result<()> {
        let raw = self.raw.into_inner().map_err(|e| e.into_error())?;
        let (out_tmp_file, out_tmp) = temporary(out)?.into_parts();
        let mut w = npyz::WriteOptions::<f32>::new()
            .default_dtype()
            .shape(&[self.rows, self.dimension as u64])
            .writer(BufWriter::new(out_tmp_file))
            .begin_nd()?;
        let mut r = BufReader::new(raw.reopen()?);
        let mut buf = [0u8; 4];
        for _ in 0..self.rows * self.dimension as u64 {
            r.read_exact(&mut buf)?;
            w.push(&f32::from_le_bytes(buf))?;
        }
        w.finish()?;
        let ids = self.ids.into_inner().map_err(|e| e.into_error())?;
        ids.as_file().sync_all()?;
        ids.persist(ids_path(out)).with_context(|| format!("writing {}", ids_path(out).display()))?;
        out_tmp.persist(out).with_context(|| format!("renaming to {}", out.display()))?;
        Ok(())
    }
}

impl Sink {
    fn create(out: &Path) -> anyhow::Result<Self> {
        match out.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("parquet" | "pq") => Ok(Self::Parquet(ParquetSink::create(out)?)),
            Some("npy") => Ok(Self::Npy(NpySink::create(out)?)),
            _ => bail!("--out must end in .parquet or .npy"),
        }
    }

    fn write(&mut self, records: &[Record], vectors: &[Vec<f32>]) -> anyhow::Result<()> {
        match self {
            Self::Parquet(s) => s.write(records, vectors),
            Self::Npy(s) => s.write(records, vectors),
        }
    }

    fn finish(self, out: &Path) -> anyhow::Result<()> {
        match self {
            Self::Parquet(s) => s.finish(out),
            Self::Npy(s) => s.finish(out),
        }
    }
}

/// The text the shard embeds for this record.
fn text_of(r: &Record) -> String {
    vitrine_shard::service::item_text(&pb::Item {
        title: r.title.clone(),
        description: r.description.clone(),
        ..Default::default()
    })
}

/// Reasons listed at the end; the rest are counted.
const SHOWN_REASONS: usize = 10;

/// Runs the job (blocking: model inference and file I/O only).
pub fn run(args: &EmbedArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let src = source::open(&args.input, args.format, None)?;
    if src.format == Format::Npy {
        bail!(".npy input already holds vectors; there is nothing to embed");
    }
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let cfg = TextModelConfig {
        intra_threads: threads,
        device: args.device,
        pooling: args.pooling,
        ..TextModelConfig::new(&args.model_dir, &args.ort_lib)
    };
    let model = TextEmbedder::load(&cfg).context("loading the text model")?;
    eprintln!(
        "embedding {} with {} ({} dimensions, {threads} threads)",
        args.input.display(),
        model.name(),
        model.dimension()
    );
    let mut sink = Sink::create(&args.out)?;
    let (mut embedded, mut skipped, mut reasons) = (0u64, 0u64, Vec::new());
    let mut pending: Vec<(Record, String)> = Vec::with_capacity(args.batch as usize);
    let mut last_report = Instant::now();
    let flush = |pending: &mut Vec<(Record, String)>, sink: &mut Sink| -> anyhow::Result<u64> {
        let texts: Vec<&str> = pending.iter().map(|(_, t)| t.as_str()).collect();
        let vectors = model.embed(&texts)?;
        let records: Vec<Record> = pending.drain(..).map(|(r, _)| r).collect();
        sink.write(&records, &vectors)?;
        Ok(records.len() as u64)
    };
    for row in src.rows {
        let problem = match row.record {
            Err(reason) => Some(reason),
            Ok(r) if r.id.is_empty() => Some("id is empty".to_string()),
            Ok(r) if r.id.len() > crate::load::validate::MAX_ID_BYTES => Some("id is longer than 256 bytes".into()),
            Ok(r) => {
                let text = text_of(&r);
                if text.is_empty() {
                    Some(format!("id {:?}: no title or description to embed", r.id))
                } else {
                    pending.push((r, text));
                    None
                }
            }
        };
        if let Some(reason) = problem {
            skipped += 1;
            if reasons.len() < SHOWN_REASONS {
                reasons.push(format!("{}: {reason}", row.place));
            }
        }
        if pending.len() >= args.batch as usize {
            embedded += flush(&mut pending, &mut sink)?;
            if last_report.elapsed().as_secs() >= 5 {
                last_report = Instant::now();
                let secs = started.elapsed().as_secs_f64();
                eprintln!(
                    "  embedded {embedded}{} ({:.0}/s)",
                    src.total.map_or(String::new(), |t| format!("/{t}")),
                    embedded as f64 / secs
                );
            }
        }
    }
    if !pending.is_empty() {
        embedded += flush(&mut pending, &mut sink)?;
    }
    sink.finish(&args.out)?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "embedded {embedded} items, skipped {skipped} in {secs:.1} s ({:.0} items/s) → {}",
        embedded as f64 / secs.max(1e-9),
        args.out.display()
    );
    for r in &reasons {
        println!("  skipped {r}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str) -> Record {
        serde_json::from_str(&format!(
            "{{\"id\":{id:?},\"title\":\"Blue shirt\",\"price\":9.5,\"tags\":[\"a\",\"b\"],\"published_ms\":7}}"
        ))
        .unwrap()
    }

    #[test]
    fn parquet_output_reads_back_as_a_catalogue() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("v.parquet");
        let mut s = Sink::create(&out).unwrap();
        s.write(&[rec("a"), rec("b")], &[vec![1.0, 2.0], vec![3.0, 4.0]]).unwrap();
        s.finish(&out).unwrap();
        let rows: Vec<_> = source::open(&out, None, None).unwrap().rows.collect();
        let b = rows[1].record.as_ref().unwrap();
        assert_eq!((b.id.as_str(), b.title.as_str(), b.price, b.published_ms), ("b", "Blue shirt", Some(9.5), 7));
        assert_eq!(b.tags, vec!["a", "b"]);
        assert_eq!(b.vector.as_deref(), Some(&[3.0f32, 4.0][..]));
        assert_eq!(b.in_stock, None);
    }

    #[test]
    fn npy_output_reads_back_with_its_ids() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("v.npy");
        let mut s = Sink::create(&out).unwrap();
        s.write(&[rec("a")], &[vec![1.0, 2.0, 3.0]]).unwrap();
        s.write(&[rec("b")], &[vec![4.0, 5.0, 6.0]]).unwrap();
        s.finish(&out).unwrap();
        let rows: Vec<_> = source::open(&out, None, Some(&ids_path(&out))).unwrap().rows.collect();
        assert_eq!(rows.len(), 2);
        let b = rows[1].record.as_ref().unwrap();
        assert_eq!((b.id.as_str(), b.vector.as_deref()), ("b", Some(&[4.0f32, 5.0, 6.0][..])));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2, "only the .npy and .ids are left");
    }

    #[test]
    fn the_text_is_the_shards() {
        let mut r = rec("a");
        r.description = "Cotton.".into();
        assert_eq!(text_of(&r), "Blue shirt. Cotton.");
    }
}
