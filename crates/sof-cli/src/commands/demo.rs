//! `sof demo`: the main job on the built-in synthetic tissue.
//!
//! Today it synthesizes the tissue and summarises its ground truth; the tokenizer, model,
//! pretraining, spatial targets, probes and report stages join it as they land.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use super::synth::{self, FileSummary};
use crate::util;

/// Run the whole pipeline on a built-in synthetic tissue (no data needed).
///
/// Example: sof demo --output demo-out/
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Output folder for the data, results and summary.
    #[arg(short, long, default_value = "sof-demo")]
    pub output: PathBuf,
    /// Total cells in the synthetic tissue.
    #[arg(long, default_value_t = 20_000)]
    pub cells: usize,
    /// Random seed: the same seed gives the same data and numbers.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[derive(Debug, Serialize)]
struct Summary {
    seed: u64,
    files: Vec<FileSummary>,
    /// Ground-truth label counts per file and column.
    labels: BTreeMap<String, BTreeMap<String, BTreeMap<String, usize>>>,
}

pub fn run(args: Args, quiet: bool) -> anyhow::Result<()> {
    let start = Instant::now();
    let data_dir = args.output.join("data");
    let files = synth::generate(&synth::Args { output: data_dir, cells: args.cells, seed: args.seed, sections: None, dissociated_cells: None, config: None }, quiet)?;
    let mut labels = BTreeMap::new();
    for f in &files {
        let a = sof_io::h5ad::read_h5ad(&f.path)?;
        let mut cols = BTreeMap::new();
        for c in ["layer", "niche", "cell_type"] {
            if let Some(col) = a.obs.get(c) {
                cols.insert(c.to_owned(), col.value_counts());
            }
        }
        labels.insert(f.path.file_name().unwrap_or_default().to_string_lossy().into_owned(), cols);
    }
    let summary = Summary { seed: args.seed, files, labels };
    let path = args.output.join("summary.json");
    util::write_atomic(&path, &serde_json::to_string_pretty(&summary)?)?;

    util::say("SpatialOmics-Foundation demo: synthetic tissue with known ground truth");
    for f in &summary.files {
        util::say(format!("  {:<12} {:>8} cells x {:>5} genes, median {:>6.0} counts/cell  -> {}", f.technology, f.cells, f.genes, f.median_counts, f.path.display()));
    }
    if let Some((name, cols)) = summary.labels.iter().next() {
        for (col, counts) in cols.iter().filter(|(c, _)| *c != "cell_type") {
            let parts: Vec<String> = counts.iter().map(|(k, n)| format!("{k} {n}")).collect();
            util::say(format!("  {name} {col}: {}", parts.join(", ")));
        }
    }
    util::say(format!("  summary: {}  ({:.1} s)", path.display(), start.elapsed().as_secs_f64()));
    util::say("  next stages (tokenize, pretrain, embed, probe, map, report) arrive with their issues");
    Ok(())
}
