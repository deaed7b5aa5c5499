//! A model with the tokenizer a file's cells need: the vocabulary alignment, the technology's
//! means, and the checkpoint (ours, which records its tokenizer, or the reference's weights).

use std::path::{Path, PathBuf};

use burn::prelude::*;
use sof_io::CellSource;
use sof_io::genes::{AlignmentReport, GeneTables, Species, Vocabulary};
use sof_io::h5ad::H5adReader;
use sof_tokenize::{ContextTable, GeneMap, MeansAccumulator, Modality, Mode, TechMeans, Tokenizer, TokenizerConfig};

use crate::error::{PipelineError, Result};

/// How to tokenize cells for a checkpoint: settings that override (or, for an imported
/// reference checkpoint, supply) those it was trained with. `None` takes the checkpoint's.
#[derive(Debug, Clone, Default)]
pub struct TokenizerOverrides {
    pub technology: Option<String>,
    pub species: Option<Species>,
    pub modality: Option<Modality>,
    /// The model's vocabulary (default: the checkpoint folder's vocab.tsv).
    pub vocab: Option<PathBuf>,
    /// Symbol -> Ensembl tables, for files that name genes by symbol.
    pub genes_dir: Option<PathBuf>,
    /// A folder of `<technology>.tsv` mean vectors (default: computed from the input).
    pub tech_means: Option<PathBuf>,
    pub mode: Option<Mode>,
    /// A technology table (TOML) beside the built-in one.
    pub context_config: Option<PathBuf>,
    /// Only the genes this file measures (its var names, aligned to the vocabulary) are tokens;
    /// the others are left out of the cells' tokens and totals. For placing cells on a
    /// reference: the query then reads like the reference's cells.
    pub panel: Option<PathBuf>,
    /// Hide the assay and modality tokens (MASK), for a model pretrained with context dropout
    /// ([`sof_tokenize::Tokenizer::with_hidden_context`]).
    pub hide_context: bool,
}

/// The vocabulary (`vocab`, else the source's own genes) and how the source's genes map into it.
pub fn align(
    reader: &dyn CellSource,
    vocab: Option<&Path>,
    genes_dir: Option<&Path>,
    species: Species,
) -> Result<(Vocabulary, AlignmentReport)> {
    let genes = reader.var_names()?;
    let vocab = match vocab {
        Some(p) => Vocabulary::load_tsv(p)?,
        None => Vocabulary::new(genes.clone()).map_err(|e| PipelineError::input(reader.name(), e.to_string()))?,
    };
    let tables = match genes_dir {
        Some(d) => GeneTables::load(d)?,
        None => GeneTables::default(),
    };
    let report = tables.align(&genes, species, &vocab);
    if report.n_mapped() == 0 {
        return Err(PipelineError::input(
            reader.name(),
            format!(
                "none of its {} genes maps into the vocabulary ({} genes); {}",
                genes.len(),
                vocab.len(),
                if genes_dir.is_none() {
                    "pass --genes-dir to map gene symbols to Ensembl ids"
                } else {
                    "check --species and the vocabulary"
                }
            ),
        ));
    }
    Ok((vocab, report))
}

/// The built-in technology table, with the TOML at `path` added.
pub fn context_table(path: Option<&Path>) -> Result<ContextTable> {
    Ok(match path {
        Some(p) => ContextTable::with_config(
            &std::fs::read_to_string(p).map_err(|source| PipelineError::File { path: p.to_path_buf(), source })?,
            &p.display().to_string(),
        )?,
        None => ContextTable::default(),
    })
}

/// Means from `<dir>/<name>.tsv`, or computed from the source when no folder is given.
pub fn load_means(
    dir: Option<&Path>,
    name: &str,
    reader: &dyn CellSource,
    vocab: &Vocabulary,
    map: &GeneMap,
) -> Result<TechMeans> {
    if let Some(dir) = dir {
        let path = dir.join(format!("{name}.tsv"));
        if !path.exists() {
            let have: Vec<String> = std::fs::read_dir(dir)
                .map(|r| r.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            return Err(PipelineError::input(
                dir.display(),
                format!(
                    "no mean vector '{name}.tsv' (the folder has: {}); compute one with `sof tech-means`",
                    have.join(", ")
                ),
            ));
        }
        return Ok(TechMeans::load_tsv(&path, vocab)?);
    }
    tracing::info!("no tech means given: computing the technology's means from the input");
    let mut acc = MeansAccumulator::new(vocab.len());
    for start in (0..reader.n_obs()).step_by(65_536) {
        acc.add(&reader.read_rows(start..(start + 65_536).min(reader.n_obs()))?, map);
    }
    Ok(acc.finish())
}

/// A model with the tokenizer its cells need, and the file those cells are in.
#[allow(missing_debug_implementations)]
pub struct Loaded {
    pub model: sof_model::Encoder,
    pub config: sof_model::EncoderConfig,
    pub reader: H5adReader,
    pub tokenizer: Tokenizer,
    pub map: GeneMap,
    pub technology: String,
    pub mode: Mode,
}

impl Loaded {
    /// Token ids of every cell (context tokens first), as the model reads them.
    pub fn tokenize_all(&self) -> Result<Vec<Vec<i64>>> {
        let x = self.reader.read_rows(0..self.reader.n_obs())?;
        Ok(crate::tokenize_cells(&self.tokenizer, &self.map, &x))
    }

    /// The model and its tokenizer as a [`crate::CellEncoder`] (PAD-excluded pooling).
    pub fn into_encoder(self, device: Device) -> (crate::CellEncoder, H5adReader) {
        (crate::CellEncoder::new(self.model, self.config, self.tokenizer, self.map, device), self.reader)
    }
}

/// `map` with only the vocabulary genes the .h5ad at `panel` measures.
fn restrict_to_panel(
    map: GeneMap,
    panel: &Path,
    vocab: &Path,
    genes_dir: Option<&Path>,
    species: Species,
    input: &Path,
) -> Result<GeneMap> {
    let (_, report) = align(&H5adReader::open(panel)?, Some(vocab), genes_dir, species)?;
    let measured: std::collections::HashSet<u32> = report.indices().into_iter().flatten().collect();
    let restricted = map.restricted(|g| measured.contains(&g));
    if restricted.n_mapped() == 0 {
        return Err(PipelineError::input(
            input.display(),
            format!("none of its genes is measured by the panel file {}", panel.display()),
        ));
    }
    tracing::info!(
        "tokenizing over the panel of {}: {} of {} genes kept",
        panel.display(),
        restricted.n_mapped(),
        map.n_mapped()
    );
    Ok(restricted)
}

fn need<T>(value: Option<T>, name: &str) -> Result<T> {
    value.ok_or_else(|| PipelineError::setting(format!("pass --{name}: the checkpoint does not record it")))
}

/// Loads a checkpoint (a sof folder, or reference weights: a Lightning .ckpt, or .safetensors
/// with config.json beside it or at `model_config`) and the tokenizer for the cells of `input`,
/// checking that the vocabulary is the model's.
pub fn load(
    checkpoint: &Path,
    model_config: Option<&Path>,
    tok: &TokenizerOverrides,
    input: &Path,
    dev: &Device,
) -> Result<Loaded> {
    let (model, cfg, recorded, vocab_path) = if checkpoint.is_dir() {
        let folder = sof_model::checkpoint::resolve(checkpoint)?;
        if folder != checkpoint {
            tracing::info!("loading the finished model of run folder {}: {}", checkpoint.display(), folder.display());
        }
        let (m, c, run) = sof_model::checkpoint::load(&folder, dev)?;
        let vocab = tok.vocab.clone().unwrap_or_else(|| folder.join("vocab.tsv"));
        (m, c, Some((run.tokenizer, run.vocabulary_hash)), vocab)
    } else {
        let (m, c) = sof_model::import::load_reference(checkpoint, model_config, dev)?;
        (m, c, None, need(tok.vocab.clone(), "vocab")?)
    };
    let rec = recorded.as_ref().map(|r| &r.0);
    let technology = need(tok.technology.clone().or_else(|| rec.and_then(|t| t.technology.clone())), "technology")?;
    let species = need(tok.species.or_else(|| rec.and_then(|t| t.species)), "species")?;
    let modality = need(tok.modality.or_else(|| rec.and_then(|t| t.modality)), "modality")?;
    let mode = match (tok.mode, rec.map(|t| t.config.mode)) {
        (Some(Mode::Nicheformer), _) | (None, Some(Mode::Nicheformer)) => Mode::Nicheformer,
        _ => Mode::Fixed,
    };
    let reader = H5adReader::open(input)?;
    let (vocab, report) = align(&reader, Some(&vocab_path), tok.genes_dir.as_deref(), species)?;
    if let Some((_, hash)) = &recorded {
        let ours = sof_tokenize::vocabulary_hash(&vocab);
        if &ours != hash {
            return Err(PipelineError::input(
                vocab_path.display(),
                format!(
                    "this vocabulary is not the one the checkpoint {} was trained with (hash {ours} vs {hash})",
                    checkpoint.display()
                ),
            ));
        }
    }
    if vocab.len() + 30 != cfg.n_tokens {
        return Err(PipelineError::input(
            vocab_path.display(),
            format!(
                "the vocabulary has {} genes but the model {} has {} gene tokens; pass the vocabulary the model was trained with",
                vocab.len(),
                checkpoint.display(),
                cfg.n_tokens.saturating_sub(30)
            ),
        ));
    }
    let mut map = GeneMap::from_report(&report);
    if let Some(panel) = &tok.panel {
        map = restrict_to_panel(map, panel, &vocab_path, tok.genes_dir.as_deref(), species, input)?;
    }
    let mut table = context_table(tok.context_config.as_deref())?;
    if let Some(t) = rec {
        table = table.with_recorded(&t.technologies, &checkpoint.display().to_string())?;
    }
    let tech = table.get(&technology)?.clone();
    let means = load_means(tok.tech_means.as_deref(), &tech.means, &reader, &vocab, &map)?;
    let tcfg = TokenizerConfig { mode, context_length: cfg.context_length, ..TokenizerConfig::default() };
    let mut tokenizer = Tokenizer::new(tcfg, &means, species, tech.token, modality);
    if tok.hide_context {
        tokenizer = tokenizer.with_hidden_context();
    }
    Ok(Loaded { model, config: cfg, reader, tokenizer, map, technology, mode })
}
