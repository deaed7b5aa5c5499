//! `sof embed`: cell embeddings from a model checkpoint, written into a copy of the input.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use burn::prelude::*;
use ndarray::Array2;
use sof_io::h5ad::{H5adEditor, H5adReader, UnsValue};
use sof_model::Pooling;
use sof_tokenize::{ContextTable, GeneMap, MeansAccumulator, Modality, Mode, TechMeans, Tokenizer, TokenizerConfig};

use super::inspect::SpeciesArg;
use super::tokenize::{ModeArg, align, species};
use crate::device::{DeviceArg, device};
use crate::util;

/// Embed every cell of an .h5ad with a model and write obsm['X_sof'] (float32, cells x d_model)
/// into a copy of it. Cells are tokenized on the fly with the tokenizer flags (an imported
/// reference checkpoint carries no tokenizer settings: pass those it was trained with).
///
/// Example: sof embed --checkpoint nicheformer.ckpt --input starmap_mpfc.h5ad
///          --technology merfish --species mouse --modality spatial --vocab nicheformer/vocab.tsv
///          --genes-dir genes/ --tech-means nicheformer/tech_means --mode nicheformer
///          --output starmap_embedded.h5ad
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Reference weights: a Lightning .ckpt, or a .safetensors with config.json beside it.
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
    #[arg(long)]
    pub technology: String,
    #[arg(long, value_enum)]
    pub species: SpeciesArg,
    #[arg(long)]
    pub modality: String,
    /// The model's vocabulary (its gene count must match the checkpoint).
    #[arg(long)]
    pub vocab: PathBuf,
    #[arg(long)]
    pub genes_dir: Option<PathBuf>,
    #[arg(long)]
    pub tech_means: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "fixed")]
    pub mode: ModeArg,
    #[arg(long)]
    pub context_config: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum PoolingArg {
    PadExcluded,
    Reference,
}

pub fn run(args: Args, quiet: bool) -> anyhow::Result<()> {
    let start = Instant::now();
    let dev = device(args.device)?;
    anyhow::ensure!(args.batch_size > 0, "--batch-size must be at least 1");
    let (model, cfg) = sof_model::import::load_reference(&args.checkpoint, args.model_config.as_deref(), &dev)?;
    let reader = H5adReader::open(&args.input)?;
    let species = species(args.species);
    let (vocab, report) = align(&reader, Some(&args.vocab), args.genes_dir.as_deref(), species)?;
    if vocab.len() + 30 != cfg.n_tokens {
        bail!(
            "{}: the vocabulary has {} genes but the model {} has {} gene tokens; pass the vocabulary the model was trained with",
            args.vocab.display(),
            vocab.len(),
            args.checkpoint.display(),
            cfg.n_tokens - 30
        );
    }
    let map = GeneMap::from_report(&report);
    let table = match &args.context_config {
        Some(p) => ContextTable::with_config(&std::fs::read_to_string(p)?, &p.display().to_string())?,
        None => ContextTable::default(),
    };
    let tech = table.get(&args.technology)?.clone();
    let means = match &args.tech_means {
        Some(dir) => TechMeans::load_tsv(&dir.join(format!("{}.tsv", tech.means)), &vocab)?,
        None => {
            let mut acc = MeansAccumulator::new(vocab.len());
            for s in (0..reader.n_obs()).step_by(65_536) {
                acc.add(&reader.read_rows(s..(s + 65_536).min(reader.n_obs()))?, &map);
            }
            acc.finish()
        }
    };
    let mode = match args.mode {
        ModeArg::Fixed => Mode::Fixed,
        ModeArg::Nicheformer => Mode::Nicheformer,
    };
    let tcfg = TokenizerConfig { mode, context_length: cfg.context_length, ..TokenizerConfig::default() };
    let tokenizer = Tokenizer::new(tcfg, &means, species, tech.token, Modality::parse(&args.modality)?);
    let pooling = match args.pooling {
        PoolingArg::PadExcluded => Pooling::PadExcluded,
        PoolingArg::Reference => Pooling::Reference,
    };
    let n = reader.n_obs();
    let mut out = Array2::<f32>::zeros((n, cfg.d_model));
    let pb = util::progress(n as u64, "embed", quiet);
    let (mut row, mut scratch) = (Vec::new(), Vec::new());
    let mut empty = 0;
    for s in (0..n).step_by(args.batch_size) {
        let e = (s + args.batch_size).min(n);
        let x = reader.read_rows(s..e)?;
        let seqs: Vec<Vec<i64>> = (0..x.n_rows())
            .map(|i| {
                let (c, v) = x.row(i);
                let cell = tokenizer.tokenize(&map, c, v, &mut row, &mut scratch);
                tokenizer.context().iter().chain(&cell.genes).map(|&t| i64::from(t)).collect()
            })
            .collect();
        empty += seqs.iter().filter(|q| q.len() == 3).count();
        // The reference pools over every position up to the context length, so it needs the
        // full padding; PAD-excluded pooling only needs the batch's longest cell.
        let len = match pooling {
            Pooling::Reference => cfg.context_length,
            Pooling::PadExcluded => seqs.iter().map(Vec::len).max().unwrap_or(3).max(4),
        };
        let mut flat = vec![sof_model::PAD; seqs.len() * len];
        for (i, q) in seqs.iter().enumerate() {
            flat[i * len..i * len + q.len()].copy_from_slice(q);
        }
        let tokens = Tensor::<2, Int>::from_data(TensorData::new(flat, [seqs.len(), len]), &dev);
        let emb = model.embed(tokens, pooling).into_data().try_to_vec::<f32>().context("reading embeddings back")?;
        for (i, r) in emb.chunks_exact(cfg.d_model).enumerate() {
            out.row_mut(s + i).assign(&ndarray::ArrayView1::from(r));
        }
        pb.inc((e - s) as u64);
    }
    pb.finish_and_clear();
    let mut ed = H5adEditor::copy_of(&args.input, &args.output)?;
    ed.put_obsm("X_sof", &out)?;
    let mut info = std::collections::BTreeMap::new();
    info.insert("checkpoint".to_owned(), UnsValue::Str(args.checkpoint.display().to_string()));
    info.insert("pooling".to_owned(), UnsValue::Str(format!("{pooling:?}")));
    info.insert("technology".to_owned(), UnsValue::Str(args.technology.clone()));
    info.insert("mode".to_owned(), UnsValue::Str(format!("{mode:?}")));
    ed.put_uns("sof_embedding", &UnsValue::Dict(info))?;
    ed.commit()?;
    let secs = start.elapsed().as_secs_f64();
    util::say(format!(
        "{n} cells embedded ({} d, {empty} without measured genes) in {secs:.2} s ({:.0} cells/s); obsm['X_sof'] written to {}",
        cfg.d_model,
        n as f64 / secs,
        args.output.display()
    ));
    Ok(())
}
