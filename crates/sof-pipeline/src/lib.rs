//! The downstream pipeline as library calls, for Rust programs and behind the `sof` CLI:
//!
//! - [`CellEncoder`], a burn encoder with the tokenizer its cells need, embeds cells from their
//!   counts and is a [`sof_tasks::Embedder`], so probes and mapping take the model like any
//!   other feature set.
//! - [`checkpoint`]: a checkpoint (ours, or the reference's weights) with the tokenizer for a
//!   file's cells: vocabulary alignment, technology means, the recorded tokenizer settings.
//! - [`probe`]: [`probe::probe_h5ad`], the probe of an embedded .h5ad beside the expression and
//!   neighbourhood baselines on the same folds -> [`sof_tasks::probe::ProbeReport`].
//! - [`map`]: [`map::map_h5ad`], query cells placed on an embedded spatial reference ->
//!   [`map::MapOutcome`].
//! - [`view`]: [`view::embedding_view`], embedded files joined into one AnnData with UMAPs of
//!   the embeddings and of PCA, and kNN purity of modality, technology and labels ->
//!   [`view::ViewSummary`].
//! - [`cells`]: obs row filters, label codes, coordinates with sections.
//!
//! Every call returns a [`PipelineError`] that names the file (or setting) and the fix.
//!
//! `examples/in_memory.rs` runs the whole pipeline from library calls (no CLI): synthetic
//! tissue, spatial targets, tokens, a tiny pretraining, embeddings, a probe against PCA and the
//! mapping of dissociated cells; `tests/in_memory.rs` runs it.

pub mod cells;
pub mod checkpoint;
pub mod corpus;
pub mod demo;
pub mod embed;
mod error;
pub mod map;
pub mod probe;
pub mod spatial;
pub mod view;

pub use error::{PipelineError, Result};

/// Writes `text` to `path` through a temporary file renamed into place: a reader never sees a
/// half-written file.
pub fn write_atomic(path: &std::path::Path, text: &str) -> Result<()> {
    let tmp = sof_io::AtomicPath::new(path)?;
    std::fs::write(tmp.path(), text).map_err(|source| PipelineError::File { path: path.to_path_buf(), source })?;
    tmp.commit()?;
    Ok(())
}

use burn::prelude::*;
use ndarray::Array2;
use sof_io::CsrMatrix;
use sof_model::{Encoder, EncoderConfig, Pooling};
use sof_tasks::{Cells, Embedder, TaskError};
use sof_tokenize::{GeneMap, Scratch, Tokenizer};

/// A model with its tokenizer: counts in (columns in the data set's gene order, mapped into the
/// model's vocabulary by `map`), embeddings out.
///
/// ```
/// use sof_io::CsrMatrix;
/// use sof_model::{EncoderConfig, Pooling};
/// use sof_pipeline::CellEncoder;
/// use sof_tokenize::{GeneMap, Modality, TechMeans, Tokenizer, TokenizerConfig};
/// use sof_io::genes::Species;
///
/// // A 4-gene vocabulary and a tiny random model over it (30 special tokens + 4 genes).
/// let device = burn::tensor::Device::flex();
/// let config = EncoderConfig { context_length: 8, ..EncoderConfig::tiny(34) };
/// let model = config.init(&device);
/// let means = TechMeans { values: vec![1.0; 4] };
/// let tokenizer = Tokenizer::new(TokenizerConfig { context_length: 8, ..Default::default() }, &means, Species::Mouse, 7, Modality::Spatial);
/// let map = GeneMap::new(vec![Some(0), Some(1), Some(2), Some(3)]);
/// let d = config.d_model;
/// let encoder = CellEncoder::new(model, config, tokenizer, map, device);
/// let counts = CsrMatrix::from_dense(2, 4, &[5.0, 0.0, 1.0, 2.0, 0.0, 3.0, 0.0, 1.0]);
/// let x = encoder.embed_counts(&counts, &mut |_| {}).unwrap();
/// assert_eq!(x.dim(), (2, d));
/// ```
#[allow(missing_debug_implementations)]
pub struct CellEncoder {
    pub model: Encoder,
    pub config: EncoderConfig,
    pub tokenizer: Tokenizer,
    pub map: GeneMap,
    pub device: Device,
    pub pooling: Pooling,
    /// Cells per forward pass.
    pub batch_size: usize,
}

impl CellEncoder {
    /// PAD-excluded mean pooling, batches of 256 cells.
    pub fn new(model: Encoder, config: EncoderConfig, tokenizer: Tokenizer, map: GeneMap, device: Device) -> Self {
        Self { model, config, tokenizer, map, device, pooling: Pooling::PadExcluded, batch_size: 256 }
    }

    /// Token ids of each cell of `counts` (context tokens first), as the model reads them.
    pub fn tokenize(&self, counts: &CsrMatrix) -> Vec<Vec<i64>> {
        tokenize_cells(&self.tokenizer, &self.map, counts)
    }

    /// Embeddings of every cell of `counts`, `cells x d_model`. Cells are sorted by length and
    /// embedded in batches of similar length, so short spatial panels are not padded to the
    /// longest cell. `progress` is told the cells done after each batch.
    pub fn embed_counts(&self, counts: &CsrMatrix, progress: &mut dyn FnMut(usize)) -> Result<Array2<f32>, TaskError> {
        if counts.n_cols() != self.map.n_columns() {
            return Err(TaskError::Invalid(format!(
                "{} gene columns, but the gene map was made for {}: align these cells' genes to the model's vocabulary",
                counts.n_cols(),
                self.map.n_columns()
            )));
        }
        self.embed_tokens(&self.tokenize(counts), progress)
    }

    /// Embeddings of tokenized cells ([`CellEncoder::tokenize`]), `cells x d_model`.
    pub fn embed_tokens(&self, seqs: &[Vec<i64>], progress: &mut dyn FnMut(usize)) -> Result<Array2<f32>, TaskError> {
        if self.batch_size == 0 {
            return Err(TaskError::Invalid("the batch size must be at least 1".into()));
        }
        let d = self.config.d_model;
        let mut out = Array2::<f32>::zeros((seqs.len(), d));
        let mut order: Vec<usize> = (0..seqs.len()).collect();
        order.sort_by_key(|&i| (seqs[i].len(), i));
        for batch in order.chunks(self.batch_size) {
            // The reference pools over every position up to the context length, so it needs the
            // full padding; PAD-excluded pooling only needs the batch's longest cell.
            let len = match self.pooling {
                Pooling::Reference => self.config.context_length,
                Pooling::PadExcluded => batch.iter().map(|&i| seqs[i].len()).max().unwrap_or(3).max(4),
            };
            let flat = sof_tokenize::pad_rows(batch.iter().map(|&i| seqs[i].as_slice()), len);
            let tokens = Tensor::<2, Int>::from_data(TensorData::new(flat, [batch.len(), len]), &self.device);
            let emb = self
                .model
                .embed(tokens, self.pooling)
                .into_data()
                .try_to_vec::<f32>()
                .map_err(|e| TaskError::Invalid(format!("reading embeddings back: {e:?}")))?;
            for (&i, r) in batch.iter().zip(emb.chunks_exact(d)) {
                out.row_mut(i).assign(&ndarray::ArrayView1::from(r));
            }
            progress(batch.len());
        }
        Ok(out)
    }
}

/// Token ids of each cell of `counts` (context tokens first, then its genes by rank), as a
/// model reads them; `map` maps the columns of `counts` into the tokenizer's vocabulary.
pub fn tokenize_cells(tokenizer: &Tokenizer, map: &GeneMap, counts: &CsrMatrix) -> Vec<Vec<i64>> {
    let mut scratch = Scratch::default();
    let columns = tokenizer.for_columns(map);
    (0..counts.n_rows())
        .map(|i| {
            let (c, v) = counts.row(i);
            let cell = columns.tokenize(c, v, &mut scratch);
            tokenizer.context().iter().chain(&cell.genes).map(|&t| i64::from(t)).collect()
        })
        .collect()
}

impl Embedder for CellEncoder {
    fn name(&self) -> String {
        "embedding (model)".into()
    }

    /// Nothing to fit: the model is trained already.
    fn fit(&mut self, _: &Cells, _: &[usize]) -> Result<(), TaskError> {
        Ok(())
    }

    fn embed(&self, cells: &Cells, rows: &[usize]) -> Result<Array2<f64>, TaskError> {
        let x = self.embed_counts(&cells.counts.select_rows(rows), &mut |_| {})?;
        Ok(x.mapv(f64::from))
    }
}
