//! `sof demo`: the main job on the built-in synthetic tissue.
//!
//! Stages today: synthesize the tissue (spatial sections + a dissociated sample, ground truth for
//! every cell) -> spatial targets per section (composition, density, k-means niches, scored
//! against the true niches) -> tokenize every sample into Parquet corpora over one shared
//! vocabulary. The model, pretraining, probes, mapping and report stages join as they land.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;
use sof_io::Column;

use super::inspect::SpeciesArg;
use super::synth::{self, FileSummary};
use super::{spatial, tokenize};
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
struct SpatialSummary {
    file: String,
    radius: f64,
    mean_neighbors: f64,
    /// Adjusted Rand index of the k-means niches against the true niches.
    niche_ari: f64,
}

#[derive(Debug, Serialize)]
struct CorpusSummary {
    corpus: String,
    cells: usize,
    median_tokens: f64,
}

#[derive(Debug, Serialize)]
struct Summary {
    seed: u64,
    files: Vec<FileSummary>,
    /// Ground-truth label counts per file and column.
    labels: BTreeMap<String, BTreeMap<String, BTreeMap<String, usize>>>,
    spatial: Vec<SpatialSummary>,
    corpora: Vec<CorpusSummary>,
}

/// Adjusted Rand index between two labelings (Hubert & Arabie).
pub fn adjusted_rand_index(a: &[u32], b: &[u32]) -> f64 {
    let n = a.len() as f64;
    let mut table: BTreeMap<(u32, u32), f64> = BTreeMap::new();
    let (mut ra, mut rb): (BTreeMap<u32, f64>, BTreeMap<u32, f64>) = (BTreeMap::new(), BTreeMap::new());
    for (&x, &y) in a.iter().zip(b) {
        *table.entry((x, y)).or_default() += 1.0;
        *ra.entry(x).or_default() += 1.0;
        *rb.entry(y).or_default() += 1.0;
    }
    let c2 = |x: f64| x * (x - 1.0) / 2.0;
    let index: f64 = table.values().map(|&v| c2(v)).sum();
    let (sa, sb): (f64, f64) = (ra.values().map(|&v| c2(v)).sum(), rb.values().map(|&v| c2(v)).sum());
    let expected = sa * sb / c2(n);
    let max = (sa + sb) / 2.0;
    if (max - expected).abs() < f64::EPSILON { 1.0 } else { (index - expected) / (max - expected) }
}

fn codes(col: Option<&Column>) -> Vec<u32> {
    match col {
        Some(Column::Categorical { codes, .. }) => codes.iter().map(|&c| c as u32).collect(),
        _ => Vec::new(),
    }
}

pub fn run(args: Args, quiet: bool) -> anyhow::Result<()> {
    let start = Instant::now();
    let data_dir = args.output.join("data");
    let files = synth::generate(
        &synth::Args {
            output: data_dir.clone(),
            cells: args.cells,
            seed: args.seed,
            sections: None,
            dissociated_cells: None,
            config: None,
        },
        quiet,
    )?;
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

    // Spatial targets per spatial file, niches scored against the truth.
    let mut spatial_out = Vec::new();
    let mut inputs = Vec::new();
    for f in &files {
        if f.technology == "dissociated" {
            inputs.push((f.path.clone(), f.technology.clone(), "dissociated"));
            continue;
        }
        let out =
            args.output.join(format!("{}_targets.h5ad", f.path.file_stem().unwrap_or_default().to_string_lossy()));
        let n_true = sof_io::h5ad::H5adReader::open(&f.path)?.obs()?.get("niche").map_or(6, |c| c.value_counts().len());
        spatial::run(spatial::Args {
            input: f.path.clone(),
            cell_type_key: "cell_type".into(),
            section_key: Some("section".into()),
            radius: None,
            mean_neighbors: Some(20.0),
            niches: Some(n_true),
            seed: args.seed,
            write_graph: false,
            output: out.clone(),
        })?;
        let a = sof_io::h5ad::H5adReader::open(&out)?;
        let obs = a.obs()?;
        let ari = adjusted_rand_index(&codes(obs.get("niche")), &codes(obs.get("sof_niche")));
        let dens = obs.get("sof_density").and_then(Column::as_f64).unwrap_or_default();
        spatial_out.push(SpatialSummary {
            file: out.display().to_string(),
            radius: read_uns_f64(&out, "sof_radius")?,
            mean_neighbors: dens.iter().sum::<f64>() / dens.len().max(1) as f64,
            niche_ari: ari,
        });
        inputs.push((out, f.technology.clone(), "spatial"));
    }

    // One vocabulary for every sample: the dissociated sample measures every gene.
    let vocab_path = args.output.join("vocab.tsv");
    let all_genes = sof_io::h5ad::H5adReader::open(
        files.iter().find(|f| f.technology == "dissociated").map_or(&files[0].path, |f| &f.path),
    )?
    .var()?
    .index;
    let vocab = sof_io::genes::Vocabulary::new(all_genes).map_err(|e| anyhow::anyhow!("synthetic genes: {e}"))?;
    util::write_atomic(&vocab_path, &vocab.to_tsv())?;
    let mut corpora = Vec::new();
    for (input, tech, modality) in inputs {
        let out = args.output.join("corpus").join(&tech);
        tokenize::run(
            tokenize::Args {
                input,
                technology: tech.clone(),
                species: SpeciesArg::Mouse,
                modality: modality.into(),
                vocab: Some(vocab_path.clone()),
                genes_dir: None,
                tech_means: None,
                mode: tokenize::ModeArg::Fixed,
                keep_obs: vec!["cell_type".into(), "layer".into(), "niche".into()],
                section_key: Some("section".into()),
                dataset: Some(format!("synthetic_{tech}")),
                context_config: None,
                context_length: 1500,
                shard_cells: 65_536,
                output: out.clone(),
            },
            quiet,
        )?;
        let m = sof_tokenize::corpus::CorpusManifest::load(&out)?;
        corpora.push(CorpusSummary {
            corpus: out.display().to_string(),
            cells: m.cells_written,
            median_tokens: m.median_tokens,
        });
    }

    let summary = Summary { seed: args.seed, files, labels, spatial: spatial_out, corpora };
    let path = args.output.join("summary.json");
    util::write_atomic(&path, &serde_json::to_string_pretty(&summary)?)?;

    util::say("");
    util::say("SpatialOmics-Foundation demo: synthetic tissue with known ground truth");
    for f in &summary.files {
        util::say(format!(
            "  {:<12} {:>8} cells x {:>5} genes, median {:>6.0} counts/cell  -> {}",
            f.technology,
            f.cells,
            f.genes,
            f.median_counts,
            f.path.display()
        ));
    }
    for sp in &summary.spatial {
        util::say(format!(
            "  spatial targets: radius {:.1} um ({:.1} neighbours/cell); k-means niches vs true niches: ARI {:.3}  -> {}",
            sp.radius, sp.mean_neighbors, sp.niche_ari, sp.file
        ));
    }
    for c in &summary.corpora {
        util::say(format!(
            "  corpus: {:>8} cells, median {:>5} tokens/cell  -> {}",
            c.cells, c.median_tokens, c.corpus
        ));
    }
    util::say(format!("  summary: {}  ({:.1} s)", path.display(), start.elapsed().as_secs_f64()));
    util::say("  next stages (pretrain, embed, probe, map, report) arrive with their issues");
    Ok(())
}

fn read_uns_f64(path: &std::path::Path, key: &str) -> anyhow::Result<f64> {
    sof_io::h5ad::read_uns_f64(path, key)?.ok_or_else(|| anyhow::anyhow!("{}: uns/{key} is missing", path.display()))
}

#[cfg(test)]
mod tests {
    use super::adjusted_rand_index;

    #[test]
    fn ari_of_identical_and_permuted_labelings_is_one() {
        let a = [0, 0, 1, 1, 2, 2];
        assert!((adjusted_rand_index(&a, &a) - 1.0).abs() < 1e-12);
        assert!((adjusted_rand_index(&a, &[5, 5, 3, 3, 9, 9]) - 1.0).abs() < 1e-12);
        // A labeling that puts everything together carries no information.
        assert!(adjusted_rand_index(&a, &[0; 6]).abs() < 1e-12);
    }
}
