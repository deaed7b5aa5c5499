//! `sof synth`: write a synthetic tissue with known ground truth as .h5ad files.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use sof_pipeline::demo::{FileSummary, write_tissue};
use sof_synth::SynthConfig;

use crate::util;

/// Generate a synthetic layered tissue with known labels and coordinates.
///
/// Generate a synthetic layered tissue (spatial sections + a dissociated sample) with known
/// cell type, layer, niche and coordinates for every cell, as .h5ad files.
#[derive(Debug, clap::Args)]
#[command(after_help = concat!(
    "Examples:\n",
    "  sof synth --cells 1000000 --seed 7 --output synth/",
))]
pub struct Args {
    /// Output folder (created if needed); one .h5ad per technology plus dissociated.h5ad.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Total cells (five sixths spatial, split over the sections; the rest dissociated).
    #[arg(long, default_value_t = 20_000)]
    pub cells: usize,
    /// Random seed: the same seed and config give identical files.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Spatial sections (the built-in tissue measures them alternately with merfish-like and
    /// xenium-like panels).
    #[arg(long)]
    pub sections: Option<usize>,
    /// Cells in the dissociated sample (default: one sixth of --cells).
    #[arg(long)]
    pub dissociated_cells: Option<usize>,
    /// A TOML file overriding the built-in tissue (layers, cell types, technologies...).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// Builds the config from the flags.
pub fn config_from(args: &Args) -> anyhow::Result<SynthConfig> {
    let mut cfg = match &args.config {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            toml::from_str(&text).with_context(|| format!("{}: not a valid synthetic-tissue config", p.display()))?
        }
        None => SynthConfig::default(),
    };
    cfg.seed = args.seed;
    if let Some(n) = args.sections {
        anyhow::ensure!(n > 0, "--sections must be at least 1");
        cfg.sections = n;
    }
    match args.dissociated_cells {
        Some(d) => {
            let spatial = args.cells.saturating_sub(d);
            cfg.cells_per_section = spatial / cfg.sections.max(1);
            cfg.dissociated_cells = args.cells - cfg.cells_per_section * cfg.sections;
        }
        None => cfg.set_total_cells(args.cells),
    }
    Ok(cfg)
}

/// Generates and writes the tissue, returning a summary per file.
pub fn generate(args: &Args, quiet: bool) -> anyhow::Result<Vec<FileSummary>> {
    let cfg = config_from(args)?;
    let total = cfg.cells_per_section * cfg.sections + cfg.dissociated_cells;
    let pb = util::progress(total as u64, "synthesize", quiet);
    let start = Instant::now();
    let files = write_tissue(cfg, &args.output, &mut |n| pb.inc(n))?;
    pb.finish_and_clear();
    tracing::info!(cells = total, seconds = start.elapsed().as_secs_f64(), "synthetic tissue written");
    Ok(files)
}

pub fn run(args: Args, quiet: bool) -> anyhow::Result<()> {
    let start = Instant::now();
    let files = generate(&args, quiet)?;
    for f in &files {
        util::say(format!(
            "{:<40} {:>10} cells {:>6} genes  median {:>7.0} counts/cell  ({})",
            f.path.display(),
            f.cells,
            f.genes,
            f.median_counts,
            f.technology
        ));
    }
    let peak =
        util::peak_rss_bytes().map(|b| format!(", peak memory {:.0} MiB", b as f64 / 1048576.0)).unwrap_or_default();
    util::say(format!(
        "synthesized {} cells in {:.2} s{peak}",
        files.iter().map(|f| f.cells).sum::<usize>(),
        start.elapsed().as_secs_f64()
    ));
    Ok(())
}
