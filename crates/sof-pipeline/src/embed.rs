//! Embedding an .h5ad with a checkpoint as one library call ([`embed_h5ad`]): every cell
//! tokenized on the fly and embedded (obsm['X_sof']), and for cells with coordinates the niche
//! embedding beside it (obsm['X_sof_niche']), written into a copy of the input.

use std::path::PathBuf;

use burn::prelude::*;
use ndarray::Array2;
use sof_io::h5ad::{H5adEditor, H5adReader, UnsValue};
use sof_model::Pooling;

use crate::checkpoint::{self, TokenizerOverrides};
use crate::error::{PipelineError, Result};

/// One embedding of one file.
#[derive(Debug, Clone)]
pub struct EmbedSpec {
    /// A sof checkpoint folder, or reference weights (see [`checkpoint::load`]).
    pub checkpoint: PathBuf,
    /// The reference's config.json, when it is not beside the weights.
    pub model_config: Option<PathBuf>,
    pub tokenizer: TokenizerOverrides,
    pub input: PathBuf,
    /// The copy of the input with the embeddings.
    pub output: PathBuf,
    /// Cells per forward pass.
    pub batch_size: usize,
    pub pooling: Pooling,
    /// Write obsm['X_sof_niche'] where the file has obsm['spatial'].
    pub niche: bool,
    /// Neighbours of the niche embedding (default [`sof_tasks::neighbourhood::NICHE_K`]); asking
    /// for it on a file without coordinates is an error.
    pub niche_k: Option<usize>,
    /// obs column of sections: neighbours never cross them.
    pub section_key: Option<String>,
    /// Also write obsm['X_umap'], a 2-D UMAP of obsm['X_sof'] ([`sof_tasks::view::umap`]).
    pub umap: Option<sof_tasks::view::UmapSettings>,
    pub device: Device,
    /// Replace an existing output file that sof did not write ([`sof_io::h5ad::check_replace`]).
    pub force: bool,
}

impl EmbedSpec {
    /// Embed `input` with the checkpoint folder `checkpoint` (its recorded tokenizer),
    /// PAD-excluded pooling, batches of 256 cells, the niche embedding where there are
    /// coordinates, into `output`.
    pub fn new(
        checkpoint: impl Into<PathBuf>,
        input: impl Into<PathBuf>,
        output: impl Into<PathBuf>,
        device: Device,
    ) -> Self {
        EmbedSpec {
            checkpoint: checkpoint.into(),
            model_config: None,
            tokenizer: TokenizerOverrides::default(),
            input: input.into(),
            output: output.into(),
            batch_size: 256,
            pooling: Pooling::PadExcluded,
            niche: true,
            niche_k: None,
            section_key: None,
            umap: None,
            device,
            force: false,
        }
    }
}

/// What an embedding wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbedOutcome {
    pub cells: usize,
    pub d_model: usize,
    /// Cells with no measured gene of the vocabulary (context tokens only).
    pub empty_cells: usize,
    /// The niche embedding's neighbours, when it was written.
    pub niche_k: Option<usize>,
}

/// Embeds every cell of `spec.input` and writes the copy; `progress` is told the cells done.
pub fn embed_h5ad(spec: &EmbedSpec, progress: &mut dyn FnMut(usize)) -> Result<EmbedOutcome> {
    if spec.batch_size == 0 {
        return Err(PipelineError::setting("--batch-size must be at least 1"));
    }
    let _writer = sof_io::OutputLock::acquire(&spec.output)?;
    sof_io::h5ad::check_replace(&spec.output, spec.force)?;
    let loaded =
        checkpoint::load(&spec.checkpoint, spec.model_config.as_deref(), &spec.tokenizer, &spec.input, &spec.device)?;
    let (technology, mode) = (loaded.technology.clone(), loaded.mode);
    let (mut encoder, reader) = loaded.into_encoder(spec.device.clone());
    encoder.pooling = spec.pooling;
    encoder.batch_size = spec.batch_size;
    let (n, d_model) = (reader.n_obs(), encoder.config.d_model);
    let mut out = Array2::<f32>::zeros((n, d_model));
    let mut empty = 0;
    // Cells are read in blocks; the encoder sorts each block by length and embeds it in batches
    // of similar length.
    let block = (spec.batch_size * 16).max(4_096);
    for s in (0..n).step_by(block) {
        let e = (s + block).min(n);
        let x = reader.read_rows(s..e)?;
        let seqs = encoder.tokenize(&x);
        empty += seqs.iter().filter(|q| q.len() == 3).count();
        let emb = encoder.embed_tokens(&seqs, progress)?;
        out.slice_mut(ndarray::s![s..e, ..]).assign(&emb);
    }
    let has_xy = reader.obsm_keys().iter().any(|k| k == "spatial");
    if spec.niche && !has_xy && (spec.niche_k.is_some() || spec.section_key.is_some()) {
        return Err(PipelineError::input(
            spec.input.display(),
            "--niche-k / --section-key ask for the niche embedding, but obsm['spatial'] is missing: these cells have no coordinates (dissociated data?); drop those flags",
        ));
    }
    let niche_k = spec.niche_k.unwrap_or(sof_tasks::neighbourhood::NICHE_K);
    let niche = if spec.niche && has_xy { Some(niche_embedding(spec, niche_k, &reader, &out)?) } else { None };
    let umap = match &spec.umap {
        Some(settings) => Some(
            sof_tasks::view::umap(out.view(), settings)
                .map_err(|e| PipelineError::input(spec.input.display(), format!("obsm['X_umap']: {e}")))?,
        ),
        None => None,
    };
    let mut ed = H5adEditor::copy_of(&spec.input, &spec.output)?;
    ed.put_obsm("X_sof", &out)?;
    if let (Some(xy), Some(settings)) = (&umap, &spec.umap) {
        ed.put_obsm("X_umap", xy)?;
        ed.put_uns("umap", &crate::view::umap_uns(settings, "X_sof"))?;
    }
    if let Some(niche) = &niche {
        ed.put_obsm("X_sof_niche", niche)?;
    }
    let mut info = std::collections::BTreeMap::new();
    info.insert("checkpoint".to_owned(), UnsValue::Str(spec.checkpoint.display().to_string()));
    info.insert("pooling".to_owned(), UnsValue::Str(format!("{:?}", spec.pooling)));
    info.insert("technology".to_owned(), UnsValue::Str(technology));
    info.insert("mode".to_owned(), UnsValue::Str(format!("{mode:?}")));
    // "hidden": the assay and modality tokens were MASK (`--hide-context`).
    let context = if spec.tokenizer.hide_context { "hidden" } else { "given" };
    info.insert("context".to_owned(), UnsValue::Str(context.to_owned()));
    if niche.is_some() {
        info.insert("niche_k".to_owned(), UnsValue::Int(niche_k as i64));
        if let Some(key) = &spec.section_key {
            info.insert("section_key".to_owned(), UnsValue::Str(key.clone()));
        }
    }
    ed.put_uns("sof_embedding", &UnsValue::Dict(info))?;
    ed.commit()?;
    Ok(EmbedOutcome { cells: n, d_model, empty_cells: empty, niche_k: niche.is_some().then_some(niche_k) })
}

/// obsm['X_sof_niche'] of a spatial file ([`sof_tasks::neighbourhood::niche_embedding`]), with
/// errors naming the file, the field and the fix.
fn niche_embedding(spec: &EmbedSpec, k: usize, reader: &H5adReader, x: &Array2<f32>) -> Result<Array2<f32>> {
    let path = spec.input.display();
    let obs = reader.obs()?;
    if spec.section_key.is_none() && obs.get("section").is_some() {
        tracing::warn!(
            "{path}: obs has a 'section' column but no --section-key was given: neighbours may cross sections"
        );
    }
    let points = crate::cells::points(reader, &obs, spec.section_key.as_deref())
        .map_err(|e| e.with_hint(" (or pass --no-niche)"))?;
    let mut sizes = vec![0usize; points.n_sections()];
    points.sections().iter().for_each(|&s| sizes[s as usize] += 1);
    if let Some(s) = sizes.iter().position(|&c| c > 0 && c <= k) {
        let i = points.sections().iter().position(|&x| x as usize == s).expect("a cell of the section");
        let name = match &spec.section_key {
            Some(key) => {
                format!("section '{}' of obs['{key}']", obs.get(key).and_then(|c| c.label(i)).unwrap_or_default())
            }
            None => "the file (one section: no --section-key)".to_owned(),
        };
        return Err(PipelineError::input(
            &path,
            format!(
                "{name} has {} cell(s), too few for --niche-k {k} neighbours each; lower --niche-k, or pass --no-niche",
                sizes[s]
            ),
        ));
    }
    sof_tasks::neighbourhood::niche_embedding(x.view(), &points, k)
        .map_err(|e| PipelineError::input(&path, e.to_string()))
}
