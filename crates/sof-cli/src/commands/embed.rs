//! `sof embed`: cell embeddings from a model checkpoint, written into a copy of the input.

use std::path::PathBuf;
use std::time::Instant;

use sof_io::h5ad::H5adReader;
use sof_model::Pooling;
use sof_pipeline::checkpoint::TokenizerOverrides;
use sof_pipeline::embed::{EmbedSpec, embed_h5ad};
use sof_tokenize::{Modality, Mode};

use super::inspect::SpeciesArg;
use super::tokenize::{ModeArg, species};
use crate::device::{DeviceArg, device};
use crate::util;

/// Embed every cell of an .h5ad with a model into obsm['X_sof'].
///
/// Embed every cell of an .h5ad with a model and write obsm['X_sof'] (float32, cells x d_model)
/// into a copy of it. Cells are tokenized on the fly: a sof checkpoint folder supplies its
/// tokenizer settings and vocabulary (flags override them); an imported reference checkpoint
/// carries none, so pass those it was trained with.
#[derive(Debug, clap::Args)]
#[command(after_help = concat!(
    "Examples:\n",
    "  sof embed --checkpoint nicheformer.ckpt --input starmap_mpfc.h5ad \\\n",
    "      --technology merfish --species mouse --modality spatial \\\n",
    "      --vocab nicheformer/vocab.tsv --genes-dir genes/ \\\n",
    "      --tech-means nicheformer/tech_means --mode nicheformer \\\n",
    "      --output starmap_embedded.h5ad",
))]
pub struct Args {
    /// A sof checkpoint folder (its run.json supplies the tokenizer settings), a `sof pretrain`
    /// run folder (its finished model/), or reference weights: a Lightning .ckpt, or a
    /// .safetensors with config.json beside it.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The reference's config.json, when it is not beside the weights.
    #[arg(long)]
    pub model_config: Option<PathBuf>,
    /// The cells to embed (.h5ad, raw counts in X or layers['counts']).
    #[arg(short, long)]
    pub input: PathBuf,
    /// The .h5ad to write: a copy of the input with obsm['X_sof'] (and X_sof_niche).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Replace an existing output file that sof did not write (without it, such a file is
    /// refused: it may be data; files sof wrote are replaced, so reruns need no flag).
    #[arg(long)]
    pub force: bool,
    /// Where the model runs: cpu (default), or wgpu / cuda in a build with that feature.
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceArg,
    /// Cells per forward pass (more is faster and needs more memory).
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
    /// Also write obsm['X_umap']: a 2-D UMAP of obsm['X_sof'] (15 neighbours, min_dist 0.5, as
    /// scanpy's defaults), for `sc.pl.umap` and a first look at the embedding.
    #[arg(long)]
    pub umap: bool,
    /// Seed of the UMAP layout (the same seed and embedding give the same layout).
    #[arg(long, default_value_t = 0, requires = "umap")]
    pub umap_seed: u64,
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
    /// Folder with genes.tsv and mouse_human_orthologs_all.tsv, to map gene symbols.
    #[arg(long)]
    pub genes_dir: Option<PathBuf>,
    /// Folder of per-technology gene means, <technology>.tsv (default: computed from the input).
    #[arg(long)]
    pub tech_means: Option<PathBuf>,
    /// Tokenizer mode (default: the checkpoint's, else fixed).
    #[arg(long, value_enum)]
    pub mode: Option<ModeArg>,
    /// TOML with extra [technology.<name>] entries (token in 19..=29, means), as for tokenize.
    #[arg(long)]
    pub context_config: Option<PathBuf>,
    /// Tokenize over the genes this .h5ad measures only (e.g. the spatial reference the cells
    /// will be placed on with `sof map`): the others are left out of tokens and totals.
    #[arg(long)]
    pub panel_of: Option<PathBuf>,
    /// Hide the technology and modality tokens (MASK; the technology's means still normalize the
    /// counts): for a model pretrained with `masking.context_dropout`, an embedding that is not
    /// told which technology measured the cell.
    #[arg(long)]
    pub hide_context: bool,
}

impl TokenizerArgs {
    /// The library's form of these flags.
    pub fn overrides(&self) -> anyhow::Result<TokenizerOverrides> {
        Ok(TokenizerOverrides {
            technology: self.technology.clone(),
            species: self.species.map(species),
            modality: self.modality.as_deref().map(Modality::parse).transpose()?,
            vocab: self.vocab.clone(),
            genes_dir: self.genes_dir.clone(),
            tech_means: self.tech_means.clone(),
            mode: self.mode.map(Mode::from),
            context_config: self.context_config.clone(),
            panel: self.panel_of.clone(),
            hide_context: self.hide_context,
        })
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum PoolingArg {
    PadExcluded,
    Reference,
}

pub fn run(args: Args, quiet: bool) -> anyhow::Result<()> {
    let start = Instant::now();
    let spec = EmbedSpec {
        checkpoint: args.checkpoint.clone(),
        model_config: args.model_config.clone(),
        tokenizer: args.tokenizer.overrides()?,
        input: args.input.clone(),
        output: args.output.clone(),
        batch_size: args.batch_size,
        pooling: match args.pooling {
            PoolingArg::PadExcluded => Pooling::PadExcluded,
            PoolingArg::Reference => Pooling::Reference,
        },
        niche: !args.no_niche,
        niche_k: args.niche_k,
        section_key: args.section_key.clone(),
        umap: args.umap.then(|| sof_tasks::view::UmapSettings { seed: args.umap_seed, ..Default::default() }),
        device: device(args.device)?,
        force: args.force,
    };
    let n = H5adReader::open(&args.input)?.n_obs();
    let pb = util::progress(n as u64, "embed", quiet);
    let out = embed_h5ad(&spec, &mut |k| pb.inc(k as u64))?;
    pb.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    util::say(format!(
        "{n} cells embedded ({} d, {} without measured genes) in {secs:.2} s ({:.0} cells/s); obsm['X_sof']{} written to {}",
        out.d_model,
        out.empty_cells,
        n as f64 / secs,
        match out.niche_k {
            Some(k) => format!(" and obsm['X_sof_niche'] ({k} nearest neighbours)"),
            None => String::new(),
        } + if args.umap { ", obsm['X_umap']" } else { "" },
        args.output.display()
    ));
    Ok(())
}
