//! Streaming corpus builder: one source of cells (an `.h5ad` streamed from disk, a `.loom` or a
//! table in memory, a generator: any [`CellSource`]) -> Parquet token shards plus a JSON manifest.
//!
//! - One row per non-empty cell, in the input's cell order (shuffling is the training loader's
//!   job): `cell_index` (row in the input), `cell_id`, `dataset`, `section`, `species`, `assay`,
//!   `modality`, `tokens` (gene tokens, `list<int32>`, no padding), `n_tokens`, `x`, `y`
//!   (coordinates; null for dissociated cells), `sof_composition`, `sof_density`, `sof_niche`,
//!   `sof_niche_profile` (spatial targets from `sof spatial`, null when absent), then the obs
//!   columns asked for, as strings.
//! - Shard `k` holds input cells `[k * shard_cells, (k + 1) * shard_cells)`; row groups of
//!   `row_group_cells` rows. Cells stream through in blocks; memory is bounded by a few blocks
//!   and one row group per column, not by the dataset.
//! - Resumable: a shard is written to a temporary name and renamed when complete, and carries
//!   the corpus's config hash in its footer; a rerun keeps every finished shard with the same hash
//!   and never rewrites it. A shard whose footer cannot be read is reported as corrupt.
//! - Empty cells (no expressed gene the technology measures) are skipped and counted.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{Float32Builder, Float64Builder, Int32Builder, Int64Builder, ListBuilder, StringBuilder};
use arrow_array::{ArrayRef, Int32Array, ListArray, RecordBatch};
use arrow_buffer::OffsetBuffer;
use arrow_schema::{Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::schema::types::ColumnPath;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sof_io::genes::Species;
use sof_io::{CellSource, Column};

use crate::context::Modality;
use crate::tokenizer::{ColumnTokenizer, GeneMap, Scratch, TokenizedCell, Tokenizer, TokenizerConfig};
use crate::{Result, TokenizeError};

/// Fixed column names; obs columns asked for may not reuse them.
pub const FIXED_COLUMNS: [&str; 15] = [
    "cell_index",
    "cell_id",
    "dataset",
    "section",
    "species",
    "assay",
    "modality",
    "tokens",
    "n_tokens",
    "x",
    "y",
    "sof_composition",
    "sof_density",
    "sof_niche",
    "sof_niche_profile",
];

/// What to build.
#[derive(Debug, Clone)]
pub struct CorpusSpec {
    pub output: PathBuf,
    /// Dataset name stored in every row.
    pub dataset: String,
    pub technology: String,
    pub species: Species,
    pub modality: Modality,
    /// obs column naming sections (stored in `section`).
    pub section_key: Option<String>,
    /// obs columns copied as string columns (labels).
    pub keep_obs: Vec<String>,
    pub shard_cells: usize,
    pub row_group_cells: usize,
}

/// Per-shard statistics (also stored in the shard's footer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardInfo {
    pub file: String,
    pub first_cell: usize,
    pub cells_in: usize,
    pub rows: usize,
    pub empty_cells: usize,
    /// Histogram of tokens per written cell (index = token count).
    pub length_histogram: Vec<u64>,
}

/// The corpus manifest (`manifest.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CorpusManifest {
    pub format: String,
    pub config_hash: String,
    pub vocabulary_hash: String,
    pub vocabulary_size: usize,
    pub tokenizer: TokenizerConfig,
    pub dataset: String,
    pub source: String,
    pub technology: String,
    pub species: Species,
    pub modality: Modality,
    pub context_tokens: [u32; 3],
    pub cells_in: usize,
    pub cells_written: usize,
    pub empty_cells: usize,
    pub median_tokens: f64,
    pub genes_in_file: usize,
    pub genes_mapped: usize,
    pub unmapped_genes: Vec<String>,
    pub label_columns: Vec<String>,
    pub composition_columns: Option<Vec<String>>,
    /// Width of `sof_niche_profile` (the label-free niche target), when the corpus carries it.
    #[serde(default)]
    pub niche_profile_width: Option<usize>,
    pub shards: Vec<ShardInfo>,
}

impl CorpusManifest {
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("manifest.json");
        let text = std::fs::read_to_string(&path).map_err(|e| sof_io::Error::Io { path: path.clone(), error: e })?;
        serde_json::from_str(&text).map_err(|e| {
            TokenizeError::invalid(path.display(), e.to_string(), "the corpus manifest is damaged: rebuild the corpus")
        })
    }
}

const FORMAT: &str = "sof-corpus-1";

/// Everything a corpus build needs besides the spec.
#[derive(Debug)]
pub struct CorpusInputs<'a> {
    pub tokenizer: &'a Tokenizer,
    pub map: &'a GeneMap,
    pub vocabulary_hash: &'a str,
    pub vocabulary_size: usize,
    pub unmapped_genes: Vec<String>,
    /// The label-free niche profile (cells x width) when the source does not carry one in
    /// obsm['sof_niche_profile'] (`sof tokenize` computes it for spatial files).
    pub niche_profile: Option<&'a ndarray::Array2<f32>>,
    /// The local density (neighbours per cell) when the source has no obs['sof_density'].
    pub density: Option<&'a [f64]>,
}

struct Annotations {
    cell_ids: Vec<String>,
    section: Option<Vec<Option<String>>>,
    xy: Option<ndarray::Array2<f64>>,
    composition: Option<ndarray::Array2<f64>>,
    profile: Option<ndarray::Array2<f64>>,
    density: Option<Vec<f64>>,
    niche: Option<Vec<Option<String>>>,
    labels: Vec<(String, Vec<Option<String>>)>,
}

fn read_annotations(reader: &dyn CellSource, spec: &CorpusSpec) -> Result<Annotations> {
    let path = reader.name();
    let obs = reader.obs()?;
    let column = |name: &str| -> Result<&Column> {
        obs.get(name).ok_or_else(|| {
            TokenizeError::invalid(
                &path,
                format!("obs has no column '{name}'"),
                format!("columns are: {}", obs.column_names().collect::<Vec<_>>().join(", ")),
            )
        })
    };
    let mut labels = Vec::new();
    for name in &spec.keep_obs {
        if FIXED_COLUMNS.contains(&name.as_str()) {
            return Err(TokenizeError::invalid(
                &path,
                format!("obs column '{name}' clashes with a corpus column"),
                "rename it before tokenizing",
            ));
        }
        labels.push((name.clone(), column(name)?.labels()));
    }
    let section = spec.section_key.as_deref().map(|k| column(k).map(Column::labels)).transpose()?;
    let keys = reader.obsm_keys();
    let has = |k: &str| keys.iter().any(|x| x == k);
    let xy = if has("spatial") { Some(reader.obsm("spatial")?) } else { None };
    if let Some(xy) = xy.as_ref().filter(|xy| xy.ncols() < 2) {
        return Err(TokenizeError::invalid(
            &path,
            format!("obsm['spatial'] has {} column(s)", xy.ncols()),
            "coordinates need x and y columns (cells x 2)",
        ));
    }
    let composition = if has("sof_composition") { Some(reader.obsm("sof_composition")?) } else { None };
    let profile = if has("sof_niche_profile") { Some(reader.obsm("sof_niche_profile")?) } else { None };
    if let Some((i, _)) = profile.iter().flat_map(|p| p.iter().enumerate()).find(|(_, v)| !v.is_finite()) {
        let w = profile.as_ref().map_or(1, |p| p.ncols().max(1));
        return Err(TokenizeError::invalid(
            &path,
            format!("obsm['sof_niche_profile'] of cell '{}' is not finite", obs.index[i / w]),
            "recompute it with sof spatial",
        ));
    }
    let density = obs.get("sof_density").and_then(Column::as_f64);
    let niche = obs.get("sof_niche").map(Column::labels);
    Ok(Annotations { cell_ids: obs.index.clone(), section, xy, composition, profile, density, niche, labels })
}

fn config_hash(spec: &CorpusSpec, inputs: &CorpusInputs<'_>, source: &str, n_obs: usize) -> String {
    let t = inputs.tokenizer;
    let key = serde_json::json!({
        "format": FORMAT, "tokenizer": t.config(), "context": t.context(), "vocab": inputs.vocabulary_hash,
        "shard_cells": spec.shard_cells, "keep_obs": spec.keep_obs, "section_key": spec.section_key,
        "dataset": spec.dataset, "n_obs": n_obs,
        "source": Path::new(source).file_name().map(|f| f.to_string_lossy().into_owned()),
    });
    Sha256::digest(key.to_string().as_bytes()).iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// Builds (or resumes) a corpus from the cells of `source`. `progress` is called with the number
/// of input cells done.
pub fn build_corpus(
    source: &dyn CellSource,
    spec: &CorpusSpec,
    inputs: &CorpusInputs<'_>,
    mut progress: impl FnMut(usize),
) -> Result<CorpusManifest> {
    let reader = source;
    let n_obs = reader.n_obs();
    let src = reader.name();
    if inputs.map.n_columns() != reader.n_vars() {
        return Err(TokenizeError::invalid(
            &src,
            format!("the gene map has {} genes, the file {}", inputs.map.n_columns(), reader.n_vars()),
            "align this file's genes to the vocabulary",
        ));
    }
    if inputs.map.n_mapped() == 0 {
        return Err(TokenizeError::invalid(
            &src,
            "no gene maps into the vocabulary",
            "check --species, the vocabulary and the gene tables (sof inspect --vocab ... --genes-dir ... shows the mapping)",
        ));
    }
    if spec.shard_cells == 0 || spec.row_group_cells == 0 {
        return Err(TokenizeError::invalid(&src, "shard and row-group sizes must be positive", "pass sizes >= 1"));
    }
    std::fs::create_dir_all(&spec.output).map_err(|e| sof_io::Error::Io { path: spec.output.clone(), error: e })?;
    let mut ann = read_annotations(reader, spec)?;
    if let (None, Some(p)) = (&ann.profile, inputs.niche_profile) {
        if p.nrows() != n_obs || p.iter().any(|v| !v.is_finite()) {
            return Err(TokenizeError::invalid(
                &src,
                format!(
                    "the niche profile given has {} rows for {n_obs} cells or values that are not finite",
                    p.nrows()
                ),
                "compute it from this file's cells",
            ));
        }
        ann.profile = Some(p.mapv(f64::from));
    }
    if let (None, Some(d)) = (&ann.density, inputs.density) {
        if d.len() != n_obs {
            return Err(TokenizeError::invalid(
                &src,
                format!("the density given has {} values for {n_obs} cells", d.len()),
                "compute it from this file's cells",
            ));
        }
        ann.density = Some(d.to_vec());
    }
    let composition_columns =
        if ann.composition.is_some() { reader.uns_strings("sof_composition_columns")? } else { None };
    let hash = config_hash(spec, inputs, &src, n_obs);
    let n_shards = n_obs.div_ceil(spec.shard_cells);
    let mut shards: Vec<Option<ShardInfo>> = vec![None; n_shards];
    let mut todo = Vec::new();
    for (k, slot) in shards.iter_mut().enumerate() {
        let first = k * spec.shard_cells;
        let cells = first..(first + spec.shard_cells).min(n_obs);
        let file = shard_file(k);
        match existing_shard(&spec.output.join(&file), &hash)? {
            Some(info) => {
                tracing::info!(shard = file, "resuming: shard already complete");
                progress(cells.len());
                *slot = Some(info);
            }
            None => todo.push((k, cells)),
        }
    }
    // A three-stage pipeline over blocks of at most BLOCK_CELLS cells: one thread reads the
    // next blocks from the .h5ad while the rayon pool tokenizes one and another thread encodes
    // the previous ones into their shard's Parquet writer (bounded channels keep at most a few
    // blocks in memory). Blocks, not whole shards, so that the stages overlap even on an input
    // of one shard.
    let block_cells = spec.row_group_cells.min(BLOCK_CELLS);
    let columns = inputs.tokenizer.for_columns(inputs.map);
    let written = std::thread::scope(|scope| -> Result<Vec<(usize, ShardInfo)>> {
        let (read_tx, read_rx) = std::sync::mpsc::sync_channel::<(Block, Result<sof_io::CsrMatrix>)>(4);
        let (write_tx, write_rx) = std::sync::mpsc::sync_channel::<TokenizedBlock>(4);
        let todo = &todo;
        scope.spawn(move || {
            for (k, cells) in todo {
                let mut start = cells.start;
                while start < cells.end {
                    let end = (start + block_cells).min(cells.end);
                    let block = Block { shard: *k, cells: start..end, last: end == cells.end };
                    if read_tx.send((block, reader.read_rows(start..end).map_err(Into::into))).is_err() {
                        return;
                    }
                    start = end;
                }
            }
        });
        let ann = &ann;
        let hash = hash.as_str();
        let writer = scope.spawn(move || -> Result<Vec<(usize, ShardInfo)>> {
            let mut done = Vec::new();
            let mut open: Option<ShardWriter> = None;
            for block in write_rx {
                let shard = match &mut open {
                    Some(w) => w,
                    None => open.insert(ShardWriter::create(spec, inputs.tokenizer, ann, &block)?),
                };
                shard.append(spec, inputs.tokenizer, ann, &block)?;
                if block.block.last {
                    let w = open.take().expect("a shard is open");
                    done.push((block.block.shard, w.finish(hash)?));
                }
            }
            Ok(done)
        });
        for (block, x) in read_rx {
            let x = x?;
            let n = block.cells.len();
            if write_tx.send(tokenize_block(&columns, &x, block)).is_err() {
                break;
            }
            progress(n);
        }
        drop(write_tx);
        writer.join().expect("writer thread does not panic")
    })?;
    for (k, info) in written {
        shards[k] = Some(info);
    }
    let shards: Vec<ShardInfo> = shards.into_iter().map(|s| s.expect("every shard is done or was resumed")).collect();
    let mut hist: Vec<u64> = Vec::new();
    for s in &shards {
        if hist.len() < s.length_histogram.len() {
            hist.resize(s.length_histogram.len(), 0);
        }
        for (h, x) in hist.iter_mut().zip(&s.length_histogram) {
            *h += x;
        }
    }
    let manifest = CorpusManifest {
        format: FORMAT.into(),
        config_hash: hash,
        vocabulary_hash: inputs.vocabulary_hash.to_owned(),
        vocabulary_size: inputs.vocabulary_size,
        tokenizer: inputs.tokenizer.config().clone(),
        dataset: spec.dataset.clone(),
        source: src,
        technology: spec.technology.clone(),
        species: spec.species,
        modality: spec.modality,
        context_tokens: inputs.tokenizer.context(),
        cells_in: n_obs,
        cells_written: shards.iter().map(|s| s.rows).sum(),
        empty_cells: shards.iter().map(|s| s.empty_cells).sum(),
        median_tokens: median_of_histogram(&hist),
        genes_in_file: inputs.map.n_columns(),
        genes_mapped: inputs.map.n_mapped(),
        unmapped_genes: inputs.unmapped_genes.clone(),
        label_columns: spec.keep_obs.clone(),
        composition_columns,
        niche_profile_width: ann.profile.as_ref().map(ndarray::Array2::ncols),
        shards,
    };
    let path = spec.output.join("manifest.json");
    let tmp = sof_io::AtomicPath::new(&path)?;
    std::fs::write(tmp.path(), serde_json::to_string_pretty(&manifest).expect("manifest serializes"))
        .map_err(|e| sof_io::Error::Io { path: path.clone(), error: e })?;
    tmp.commit()?;
    Ok(manifest)
}

fn median_of_histogram(hist: &[u64]) -> f64 {
    let n: u64 = hist.iter().sum();
    if n == 0 {
        return 0.0;
    }
    let at = |rank: u64| {
        let mut acc = 0;
        for (len, &c) in hist.iter().enumerate() {
            acc += c;
            if acc > rank {
                return len as f64;
            }
        }
        0.0
    };
    if n % 2 == 1 { at(n / 2) } else { (at(n / 2 - 1) + at(n / 2)) / 2.0 }
}

/// A finished shard with this config hash, or None if absent; an unreadable one is an error.
fn existing_shard(path: &Path, hash: &str) -> Result<Option<ShardInfo>> {
    if !path.exists() {
        return Ok(None);
    }
    let corrupt = |why: String| {
        TokenizeError::invalid(
            path.display(),
            format!("corrupt shard ({why})"),
            "delete this shard file and run the same command again to rewrite it",
        )
    };
    let file = File::open(path).map_err(|e| sof_io::Error::Io { path: path.into(), error: e })?;
    let reader = SerializedFileReader::new(file).map_err(|e| corrupt(e.to_string()))?;
    let kv: BTreeMap<String, String> = reader
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .map(|v| v.iter().filter_map(|k| Some((k.key.clone(), k.value.clone()?))).collect())
        .unwrap_or_default();
    let stored = kv.get("sof.config_hash").ok_or_else(|| corrupt("no sof.config_hash in its footer".into()))?;
    if stored != hash {
        return Err(TokenizeError::invalid(
            path.display(),
            "this shard was written with other tokenizer settings or another input",
            "write the corpus to a new folder, or delete the old shards to rebuild them",
        ));
    }
    let info: ShardInfo =
        serde_json::from_str(kv.get("sof.shard").ok_or_else(|| corrupt("no sof.shard in its footer".into()))?)
            .map_err(|e| corrupt(e.to_string()))?;
    if reader.metadata().file_metadata().num_rows() as usize != info.rows {
        return Err(corrupt(format!(
            "{} rows, its footer promises {}",
            reader.metadata().file_metadata().num_rows(),
            info.rows
        )));
    }
    Ok(Some(info))
}

/// Cells read and tokenized together; a shard is written block by block. Small enough that a
/// block of whole-transcriptome cells (~2,000 values each) stays in cache between the stages.
const BLOCK_CELLS: usize = 256;

/// Shard `k`'s file name.
fn shard_file(k: usize) -> String {
    format!("shard-{k:05}.parquet")
}

/// A block of input cells `cells`, part of shard `shard`.
struct Block {
    shard: usize,
    cells: std::ops::Range<usize>,
    /// The shard's last block: its file is completed after this one.
    last: bool,
}

/// A tokenized block waiting to be written.
struct TokenizedBlock {
    block: Block,
    tokenized: Vec<TokenizedCell>,
    /// Rows of `tokenized` that are written (non-empty cells).
    keep: Vec<usize>,
}

fn tokenize_block(tok: &ColumnTokenizer<'_>, x: &sof_io::CsrMatrix, block: Block) -> TokenizedBlock {
    let tokenized: Vec<TokenizedCell> = (0..x.n_rows())
        .into_par_iter()
        .map_init(Scratch::default, |scratch, i| {
            let (c, v) = x.row(i);
            tok.tokenize(c, v, scratch)
        })
        .collect();
    let keep: Vec<usize> = (0..tokenized.len()).filter(|&i| !tokenized[i].genes.is_empty()).collect();
    TokenizedBlock { block, tokenized, keep }
}

/// One shard being written: a Parquet writer on a temporary file that becomes the shard's name
/// only when its last block is in.
struct ShardWriter {
    path: PathBuf,
    tmp: sof_io::AtomicPath,
    writer: ArrowWriter<File>,
    info: ShardInfo,
}

impl ShardWriter {
    fn create(spec: &CorpusSpec, tok: &Tokenizer, ann: &Annotations, first: &TokenizedBlock) -> Result<Self> {
        let file = shard_file(first.block.shard);
        let path = spec.output.join(&file);
        let tmp = sof_io::AtomicPath::new(&path)?;
        let out = File::create(tmp.path()).map_err(|e| sof_io::Error::Io { path: path.clone(), error: e })?;
        // No dictionary encoding: interning every value cost more time than it saved space
        // (snappy already shrinks repeated dataset / section names). Token lists (most of the
        // bytes) are delta-encoded instead, without snappy or statistics: gene ids in rank order
        // are random to snappy (it saved under 1%), but within a cell's tail of equal values they
        // ascend in small steps — shards are 3x smaller than plain, and as fast to write as plain
        // with snappy.
        let tokens = ColumnPath::from(vec!["tokens".to_owned(), "list".to_owned(), "item".to_owned()]);
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(spec.row_group_cells))
            .set_dictionary_enabled(false)
            .set_column_compression(tokens.clone(), Compression::UNCOMPRESSED)
            .set_column_encoding(tokens.clone(), Encoding::DELTA_BINARY_PACKED)
            .set_column_statistics_enabled(tokens, EnabledStatistics::None)
            .build();
        let schema = record_batch(spec, tok, ann, &[], &[], 0).schema();
        let writer = ArrowWriter::try_new(out, schema, Some(props)).map_err(|e| parquet_error(&path, e))?;
        let info = ShardInfo {
            file,
            first_cell: first.block.shard * spec.shard_cells,
            cells_in: 0,
            rows: 0,
            empty_cells: 0,
            length_histogram: vec![0; tok.max_genes() + 1],
        };
        Ok(Self { path, tmp, writer, info })
    }

    fn append(&mut self, spec: &CorpusSpec, tok: &Tokenizer, ann: &Annotations, b: &TokenizedBlock) -> Result<()> {
        debug_assert_eq!(b.block.cells.start, self.info.first_cell + self.info.cells_in, "blocks arrive in order");
        self.info.cells_in += b.tokenized.len();
        self.info.rows += b.keep.len();
        self.info.empty_cells += b.tokenized.len() - b.keep.len();
        for &i in &b.keep {
            self.info.length_histogram[b.tokenized[i].genes.len()] += 1;
        }
        if !b.keep.is_empty() {
            let batch = record_batch(spec, tok, ann, &b.tokenized, &b.keep, b.block.cells.start);
            self.writer.write(&batch).map_err(|e| parquet_error(&self.path, e))?;
        }
        Ok(())
    }

    fn finish(mut self, hash: &str) -> Result<ShardInfo> {
        let hist = &mut self.info.length_histogram;
        while hist.len() > 1 && hist.last() == Some(&0) {
            hist.pop();
        }
        if self.info.empty_cells > 0 {
            tracing::info!(shard = %self.path.display(), empty = self.info.empty_cells, "skipped empty cells (no expressed, measured gene)");
        }
        self.writer.append_key_value_metadata(KeyValue::new("sof.config_hash".to_owned(), hash.to_owned()));
        self.writer.append_key_value_metadata(KeyValue::new(
            "sof.shard".to_owned(),
            serde_json::to_string(&self.info).expect("serializes"),
        ));
        self.writer.close().map_err(|e| parquet_error(&self.path, e))?;
        self.tmp.commit()?;
        Ok(self.info)
    }
}

fn parquet_error(path: &Path, e: parquet::errors::ParquetError) -> TokenizeError {
    TokenizeError::Parquet { path: path.display().to_string(), reason: e.to_string() }
}

fn record_batch(
    spec: &CorpusSpec,
    tok: &Tokenizer,
    ann: &Annotations,
    cells: &[TokenizedCell],
    rows: &[usize],
    offset: usize,
) -> RecordBatch {
    let n = rows.len();
    let global = |i: usize| offset + i;
    let mut cell_index = Int64Builder::with_capacity(n);
    let mut cell_id = StringBuilder::new();
    let mut dataset = StringBuilder::new();
    let mut section = StringBuilder::new();
    let (mut species, mut assay, mut modality, mut n_tokens) =
        (Int32Builder::new(), Int32Builder::new(), Int32Builder::new(), Int32Builder::new());
    // The token lists, copied once into one values buffer (a third of the bytes written).
    let item = Arc::new(Field::new("item", arrow_schema::DataType::Int32, false));
    let tokens = {
        let lengths = rows.iter().map(|&i| cells[i].genes.len());
        let offsets = OffsetBuffer::<i32>::from_lengths(lengths);
        let mut values = Vec::with_capacity(offsets.last() as usize);
        for &i in rows {
            values.extend(cells[i].genes.iter().map(|&t| t as i32));
        }
        ListArray::new(item, offsets, Arc::new(Int32Array::from(values)), None)
    };
    let (mut xs, mut ys) = (Float64Builder::new(), Float64Builder::new());
    let mut comp =
        ListBuilder::new(Float32Builder::new()).with_field(Field::new("item", arrow_schema::DataType::Float32, false));
    let mut profile =
        ListBuilder::new(Float32Builder::new()).with_field(Field::new("item", arrow_schema::DataType::Float32, false));
    let mut density = Float32Builder::new();
    let mut niche = StringBuilder::new();
    let mut labels: Vec<StringBuilder> = ann.labels.iter().map(|_| StringBuilder::new()).collect();
    let [sp, asy, md] = tok.context();
    for &i in rows {
        let g = global(i);
        cell_index.append_value(g as i64);
        cell_id.append_value(&ann.cell_ids[g]);
        dataset.append_value(&spec.dataset);
        section.append_option(ann.section.as_ref().and_then(|s| s[g].as_deref()));
        species.append_value(sp as i32);
        assay.append_value(asy as i32);
        modality.append_value(md as i32);
        n_tokens.append_value(cells[i].genes.len() as i32);
        match &ann.xy {
            Some(xy) => {
                xs.append_value(xy[[g, 0]]);
                ys.append_value(xy[[g, 1]]);
            }
            None => {
                xs.append_null();
                ys.append_null();
            }
        }
        match &ann.composition {
            Some(c) => {
                comp.values().append_slice(&c.row(g).iter().map(|&v| v as f32).collect::<Vec<_>>());
                comp.append(true);
            }
            None => comp.append(false),
        }
        match &ann.profile {
            Some(p) => {
                profile.values().append_slice(&p.row(g).iter().map(|&v| v as f32).collect::<Vec<_>>());
                profile.append(true);
            }
            None => profile.append(false),
        }
        density.append_option(ann.density.as_ref().map(|d| d[g] as f32));
        niche.append_option(ann.niche.as_ref().and_then(|v| v[g].as_deref()));
        for (b, (_, vals)) in labels.iter_mut().zip(&ann.labels) {
            b.append_option(vals[g].as_deref());
        }
    }
    let mut columns: Vec<(&str, ArrayRef)> = vec![
        ("cell_index", Arc::new(cell_index.finish())),
        ("cell_id", Arc::new(cell_id.finish())),
        ("dataset", Arc::new(dataset.finish())),
        ("section", Arc::new(section.finish())),
        ("species", Arc::new(species.finish())),
        ("assay", Arc::new(assay.finish())),
        ("modality", Arc::new(modality.finish())),
        ("tokens", Arc::new(tokens)),
        ("n_tokens", Arc::new(n_tokens.finish())),
        ("x", Arc::new(xs.finish())),
        ("y", Arc::new(ys.finish())),
        ("sof_composition", Arc::new(comp.finish())),
        ("sof_density", Arc::new(density.finish())),
        ("sof_niche", Arc::new(niche.finish())),
        ("sof_niche_profile", Arc::new(profile.finish())),
    ];
    for (b, (name, _)) in labels.iter_mut().zip(&ann.labels) {
        columns.push((name.as_str(), Arc::new(b.finish())));
    }
    let fields: Vec<Field> = columns
        .iter()
        .map(|(name, a)| {
            Field::new(
                *name,
                a.data_type().clone(),
                !matches!(
                    *name,
                    "cell_index" | "cell_id" | "dataset" | "species" | "assay" | "modality" | "tokens" | "n_tokens"
                ),
            )
        })
        .collect();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns.into_iter().map(|c| c.1).collect())
        .expect("columns match the schema")
}

/// One corpus row as training reads it back.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardRow {
    /// Row of the cell in the input file.
    pub cell_index: i64,
    /// Gene tokens (no context, no padding).
    pub tokens: Vec<u32>,
    /// Neighbourhood composition (proportions), when the corpus carries spatial targets.
    pub composition: Option<Vec<f32>>,
    /// Local density, when the corpus carries spatial targets.
    pub density: Option<f32>,
    /// The label-free niche profile, when the corpus carries it.
    pub profile: Option<Vec<f32>>,
}

/// Reads a shard's rows back: `(cell_index, tokens)` pairs, for tests and tools.
pub fn read_shard_tokens(path: &Path) -> Result<Vec<(i64, Vec<u32>)>> {
    Ok(read_shard_rows(path)?.into_iter().map(|r| (r.cell_index, r.tokens)).collect())
}

/// Reads a shard's rows back with their spatial targets (null or absent columns give `None`).
pub fn read_shard_rows(path: &Path) -> Result<Vec<ShardRow>> {
    use arrow_array::Array;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float32Type, Int32Type, Int64Type};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let pq = |e: parquet::errors::ParquetError| TokenizeError::Parquet {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let file = File::open(path).map_err(|e| sof_io::Error::Io { path: path.into(), error: e })?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file).map_err(pq)?.build().map_err(pq)?;
    let mut out = Vec::new();
    for batch in reader {
        let batch =
            batch.map_err(|e| TokenizeError::Parquet { path: path.display().to_string(), reason: e.to_string() })?;
        let bad = |what: &str| {
            TokenizeError::invalid(
                path.display(),
                format!("{what} has an unexpected type"),
                "this is not a sof corpus shard",
            )
        };
        let column = |name: &str| {
            batch.column_by_name(name).cloned().ok_or_else(|| {
                TokenizeError::invalid(
                    path.display(),
                    format!("has no '{name}' column"),
                    "this is not a sof corpus shard",
                )
            })
        };
        let (idx, toks) = (column("cell_index")?, column("tokens")?);
        let idx = idx.as_primitive_opt::<Int64Type>().ok_or_else(|| bad("cell_index"))?;
        let toks = toks.as_list_opt::<i32>().ok_or_else(|| bad("tokens"))?;
        let comp = match batch.column_by_name("sof_composition") {
            Some(c) => Some(c.as_list_opt::<i32>().ok_or_else(|| bad("sof_composition"))?.clone()),
            None => None,
        };
        let prof = match batch.column_by_name("sof_niche_profile") {
            Some(c) => Some(c.as_list_opt::<i32>().ok_or_else(|| bad("sof_niche_profile"))?.clone()),
            None => None,
        };
        let density = match batch.column_by_name("sof_density") {
            Some(c) => Some(c.as_primitive_opt::<Float32Type>().ok_or_else(|| bad("sof_density"))?.clone()),
            None => None,
        };
        for r in 0..batch.num_rows() {
            let t = toks.value(r);
            let composition = match &comp {
                Some(c) if c.is_valid(r) => {
                    let v = c.value(r);
                    Some(v.as_primitive_opt::<Float32Type>().ok_or_else(|| bad("sof_composition"))?.values().to_vec())
                }
                _ => None,
            };
            let profile = match &prof {
                Some(c) if c.is_valid(r) => {
                    let v = c.value(r);
                    Some(v.as_primitive_opt::<Float32Type>().ok_or_else(|| bad("sof_niche_profile"))?.values().to_vec())
                }
                _ => None,
            };
            out.push(ShardRow {
                cell_index: idx.value(r),
                profile,
                tokens: t.as_primitive::<Int32Type>().values().iter().map(|&v| v as u32).collect(),
                composition,
                density: density.as_ref().filter(|d| d.is_valid(r)).map(|d| d.value(r)),
            });
        }
    }
    Ok(out)
}
