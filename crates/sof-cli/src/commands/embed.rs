//! `sof embed`: cell embeddings from a model checkpoint, written into a copy of the input.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use burn::prelude::*;
use ndarray::Array2;
use sof_io::h5ad::{H5adEditor, H5adReader, UnsValue};
use sof_model::Pooling;
use sof_tokenize::{ContextTable, GeneMap, Modality, Mode, Tokenizer, TokenizerConfig};

use super::inspect::SpeciesArg;
use super::tokenize::{ModeArg, align, load_means, species};
use crate::device::{DeviceArg, device};
use crate::util;

/// Embed every cell of an .h5ad with a model and write obsm['X_sof'] (float32, cells x d_model)
/// into a copy of it. Cells are tokenized on the fly: a sof checkpoint folder supplies its
/// tokenizer settings and vocabulary (flags override them); an imported reference checkpoint
/// carries none, so pass those it was trained with.
///
/// Example: sof embed --checkpoint nicheformer.ckpt --input starmap_mpfc.h5ad
///          --technology merfish --species mouse --modality spatial --vocab nicheformer/vocab.tsv
///          --genes-dir genes/ --tech-means nicheformer/tech_means --mode nicheformer
///          --output starmap_embedded.h5ad
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A sof checkpoint folder (its run.json supplies the tokenizer settings), or reference
    /// weights: a Lightning .ckpt, or a .safetensors with config.json beside it.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The reference's config.json, when it is not beside the weights.
    #[arg(long)]
    pub model_config: Option<PathBuf>,
    #[arg(short, long)]
    pub input: PathBuf,
    #[arg(short, long)]
    pub output: PathBuf,
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceArg,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// `pad-excluded` (default) or the reference's `reference` (averages PAD positions too).
    #[arg(long, value_enum, default_value = "pad-excluded")]
    pub pooling: PoolingArg,
    /// Cells with coordinates (obsm['spatial']) also get obsm['X_sof_niche'] (cells x
    /// 2 d_model): the embedding beside the mean embedding of the cell's --niche-k nearest
    /// neighbours in its section. Distances alone choose the neighbours, so it does not depend
    /// on how a section is rotated or placed. [default: 20]
    #[arg(long)]
    pub niche_k: Option<usize>,
    /// obs column naming the sections: neighbours never cross them (needed when the file holds
    /// several sections on overlapping coordinates).
    #[arg(long)]
    pub section_key: Option<String>,
    /// Do not write obsm['X_sof_niche'].
    #[arg(long)]
    pub no_niche: bool,
    #[command(flatten)]
    pub tokenizer: TokenizerArgs,
}

/// How to tokenize cells for a checkpoint: flags that override (or, for an imported reference
/// checkpoint, supply) the settings it was trained with.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TokenizerArgs {
    /// Technology (default: the checkpoint's run.json).
    #[arg(long)]
    pub technology: Option<String>,
    /// Species (default: the checkpoint's run.json).
    #[arg(long, value_enum)]
    pub species: Option<SpeciesArg>,
    /// spatial or dissociated (default: the checkpoint's run.json).
    #[arg(long)]
    pub modality: Option<String>,
    /// The model's vocabulary (default: the checkpoint folder's vocab.tsv).
    #[arg(long)]
    pub vocab: Option<PathBuf>,
    #[arg(long)]
    pub genes_dir: Option<PathBuf>,
    #[arg(long)]
    pub tech_means: Option<PathBuf>,
    /// Tokenizer mode (default: the checkpoint's, else fixed).
    #[arg(long, value_enum)]
    pub mode: Option<ModeArg>,
    #[arg(long)]
    pub context_config: Option<PathBuf>,
}

fn need<T>(flag: Option<T>, name: &str) -> anyhow::Result<T> {
    flag.with_context(|| format!("pass --{name}: the checkpoint does not record it"))
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum PoolingArg {
    PadExcluded,
    Reference,
}

/// A model with the tokenizer its cells need.
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
    pub fn tokenize_all(&self) -> anyhow::Result<Vec<Vec<i64>>> {
        let x = self.reader.read_rows(0..self.reader.n_obs())?;
        Ok(sof_pipeline::tokenize_cells(&self.tokenizer, &self.map, &x))
    }
}

/// Loads a checkpoint (sof folder, or reference weights) and the tokenizer for `input`,
/// checking that the vocabulary is the model's.
pub fn load(
    checkpoint: &std::path::Path,
    model_config: Option<&std::path::Path>,
    tok: &TokenizerArgs,
    input: &std::path::Path,
    dev: &Device,
) -> anyhow::Result<Loaded> {
    let (model, cfg, recorded, vocab_path) = if checkpoint.is_dir() {
        let (m, c, run) = sof_model::checkpoint::load(checkpoint, dev)?;
        let vocab = tok.vocab.clone().unwrap_or_else(|| checkpoint.join("vocab.tsv"));
        (m, c, Some((run.tokenizer, run.vocabulary_hash)), vocab)
    } else {
        let (m, c) = sof_model::import::load_reference(checkpoint, model_config, dev)?;
        (m, c, None, need(tok.vocab.clone(), "vocab")?)
    };
    let rec = recorded.as_ref().map(|r| &r.0);
    let technology = need(tok.technology.clone().or_else(|| rec.and_then(|t| t.technology.clone())), "technology")?;
    let species = match (tok.species, rec.and_then(|t| t.species)) {
        (Some(s), _) => species(s),
        (None, Some(s)) => s,
        (None, None) => need(None, "species")?,
    };
    let modality = match (&tok.modality, rec.and_then(|t| t.modality)) {
        (Some(m), _) => Modality::parse(m)?,
        (None, Some(m)) => m,
        (None, None) => need(None, "modality")?,
    };
    let mode = match (tok.mode, rec.map(|t| t.config.mode)) {
        (Some(ModeArg::Nicheformer), _) | (None, Some(Mode::Nicheformer)) => Mode::Nicheformer,
        _ => Mode::Fixed,
    };
    let reader = H5adReader::open(input)?;
    let (vocab, report) = align(&reader, Some(&vocab_path), tok.genes_dir.as_deref(), species)?;
    if let Some((_, hash)) = &recorded {
        let ours = sof_tokenize::vocabulary_hash(&vocab);
        if &ours != hash {
            bail!(
                "{}: this vocabulary is not the one the checkpoint {} was trained with (hash {ours} vs {hash})",
                vocab_path.display(),
                checkpoint.display()
            );
        }
    }
    if vocab.len() + 30 != cfg.n_tokens {
        bail!(
            "{}: the vocabulary has {} genes but the model {} has {} gene tokens; pass the vocabulary the model was trained with",
            vocab_path.display(),
            vocab.len(),
            checkpoint.display(),
            cfg.n_tokens.saturating_sub(30)
        );
    }
    let map = GeneMap::from_report(&report);
    let table = match &tok.context_config {
        Some(p) => ContextTable::with_config(&std::fs::read_to_string(p)?, &p.display().to_string())?,
        None => ContextTable::default(),
    };
    let tech = table.get(&technology)?.clone();
    let means = load_means(tok.tech_means.as_deref(), &tech.means, &reader, &vocab, &map)?;
    let tcfg = TokenizerConfig { mode, context_length: cfg.context_length, ..TokenizerConfig::default() };
    let tokenizer = Tokenizer::new(tcfg, &means, species, tech.token, modality);
    Ok(Loaded { model, config: cfg, reader, tokenizer, map, technology, mode })
}

pub fn run(args: Args, quiet: bool) -> anyhow::Result<()> {
    let start = Instant::now();
    let dev = device(args.device)?;
    anyhow::ensure!(args.batch_size > 0, "--batch-size must be at least 1");
    let loaded = load(&args.checkpoint, args.model_config.as_deref(), &args.tokenizer, &args.input, &dev)?;
    let (model, cfg, reader, tokenizer, map) =
        (loaded.model, loaded.config, loaded.reader, loaded.tokenizer, loaded.map);
    let (technology, mode) = (loaded.technology, loaded.mode);
    let pooling = match args.pooling {
        PoolingArg::PadExcluded => Pooling::PadExcluded,
        PoolingArg::Reference => Pooling::Reference,
    };
    let n = reader.n_obs();
    let mut out = Array2::<f32>::zeros((n, cfg.d_model));
    let pb = util::progress(n as u64, "embed", quiet);
    let d_model = cfg.d_model;
    let mut encoder = sof_pipeline::CellEncoder::new(model, cfg, tokenizer, map, dev);
    encoder.pooling = pooling;
    encoder.batch_size = args.batch_size;
    let mut empty = 0;
    // Cells are read in blocks; the encoder sorts each block by length and embeds it in batches
    // of similar length.
    let block = (args.batch_size * 16).max(4_096);
    for s in (0..n).step_by(block) {
        let e = (s + block).min(n);
        let x = reader.read_rows(s..e)?;
        let seqs = encoder.tokenize(&x);
        empty += seqs.iter().filter(|q| q.len() == 3).count();
        let emb = encoder.embed_tokens(&seqs, &mut |k| pb.inc(k as u64))?;
        out.slice_mut(ndarray::s![s..e, ..]).assign(&emb);
    }
    pb.finish_and_clear();
    let has_xy = reader.obsm_keys().iter().any(|k| k == "spatial");
    if !args.no_niche && !has_xy && (args.niche_k.is_some() || args.section_key.is_some()) {
        bail!(
            "{}: --niche-k / --section-key ask for the niche embedding, but obsm['spatial'] is missing: these cells have no coordinates (dissociated data?); drop those flags",
            args.input.display()
        );
    }
    let niche_k = args.niche_k.unwrap_or(sof_tasks::neighbourhood::NICHE_K);
    let niche = if !args.no_niche && has_xy { Some(niche_embedding(&args, niche_k, &reader, &out)?) } else { None };
    let mut ed = H5adEditor::copy_of(&args.input, &args.output)?;
    ed.put_obsm("X_sof", &out)?;
    if let Some(niche) = &niche {
        ed.put_obsm("X_sof_niche", niche)?;
    }
    let mut info = std::collections::BTreeMap::new();
    info.insert("checkpoint".to_owned(), UnsValue::Str(args.checkpoint.display().to_string()));
    info.insert("pooling".to_owned(), UnsValue::Str(format!("{pooling:?}")));
    info.insert("technology".to_owned(), UnsValue::Str(technology.clone()));
    info.insert("mode".to_owned(), UnsValue::Str(format!("{mode:?}")));
    if niche.is_some() {
        info.insert("niche_k".to_owned(), UnsValue::Int(niche_k as i64));
        if let Some(key) = &args.section_key {
            info.insert("section_key".to_owned(), UnsValue::Str(key.clone()));
        }
    }
    ed.put_uns("sof_embedding", &UnsValue::Dict(info))?;
    ed.commit()?;
    let secs = start.elapsed().as_secs_f64();
    util::say(format!(
        "{n} cells embedded ({} d, {empty} without measured genes) in {secs:.2} s ({:.0} cells/s); obsm['X_sof']{} written to {}",
        d_model,
        n as f64 / secs,
        if niche.is_some() {
            format!(" and obsm['X_sof_niche'] ({niche_k} nearest neighbours)")
        } else {
            String::new()
        },
        args.output.display()
    ));
    Ok(())
}

/// obsm['X_sof_niche'] of a spatial file ([`sof_tasks::neighbourhood::niche_embedding`]), with
/// errors naming the file, the field and the fix.
fn niche_embedding(args: &Args, k: usize, reader: &H5adReader, x: &Array2<f32>) -> anyhow::Result<Array2<f32>> {
    let path = args.input.display();
    let obs = reader.obs()?;
    if args.section_key.is_none() && obs.get("section").is_some() {
        tracing::warn!(
            "{path}: obs has a 'section' column but no --section-key was given: neighbours may cross sections"
        );
    }
    let points = super::spatial::points(reader, &obs, args.section_key.as_deref())
        .map_err(|e| anyhow::anyhow!("{e:#} (or pass --no-niche)"))?;
    let mut sizes = vec![0usize; points.n_sections()];
    points.sections().iter().for_each(|&s| sizes[s as usize] += 1);
    if let Some(s) = sizes.iter().position(|&c| c > 0 && c <= k) {
        let i = points.sections().iter().position(|&x| x as usize == s).expect("a cell of the section");
        let name = match &args.section_key {
            Some(key) => {
                format!("section '{}' of obs['{key}']", obs.get(key).and_then(|c| c.label(i)).unwrap_or_default())
            }
            None => "the file (one section: no --section-key)".to_owned(),
        };
        bail!(
            "{path}: {name} has {} cell(s), too few for --niche-k {k} neighbours each; lower --niche-k, or pass --no-niche",
            sizes[s],
        );
    }
    sof_tasks::neighbourhood::niche_embedding(x.view(), &points, k).map_err(|e| anyhow::anyhow!("{path}: {e}"))
}
