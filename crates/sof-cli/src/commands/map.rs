//! `sof map`: place query cells (dissociated, or a section stripped of coordinates) onto an
//! embedded spatial reference.

use std::path::PathBuf;

use sof_pipeline::map::{MapSpec, map_h5ad};
use sof_tasks::mapping::MapConfig;

use crate::util;

/// Place query (e.g. dissociated) cells on a spatial reference by embedding.
///
/// Place each query cell on a spatial reference from embeddings alone: its most similar
/// reference cells (cosine, softmax-weighted) give the expected coordinates and their spread
/// and, with the default `--head knn`, the probability of each reference label and — where the
/// reference carries them (from `sof spatial`) — the predicted neighbourhood composition and
/// density; `--head linear` or `--head mlp` predicts those instead with heads trained on the
/// reference cells' embeddings. Both files need the
/// same embedding (`sof embed` with the same model). Written into a copy of the query:
/// obs `sof_<label>` (+ `_confidence`), obsm `sof_<label>_probabilities` (classes in
/// uns `sof_<label>_classes`), obsm `sof_location`, obs `sof_location_spread`,
/// obsm `sof_composition_predicted`, obs `sof_density_predicted`.
/// When the query has the label column or obsm['spatial'] (a held-out section used as ground
/// truth), the accuracy and the location error are printed.
#[derive(Debug, clap::Args)]
#[command(after_help = concat!(
    "Examples:\n",
    "  sof map --reference spatial_embedded.h5ad --query dissociated_embedded.h5ad \\\n",
    "      --label layer --output dissociated_mapped.h5ad",
))]
pub struct Args {
    /// Embedded spatial .h5ad with coordinates (obsm) and the label column.
    #[arg(long)]
    pub reference: PathBuf,
    /// Embedded query .h5ad.
    #[arg(long)]
    pub query: PathBuf,
    /// Reference obs column to transfer.
    #[arg(long)]
    pub label: String,
    /// The obsm key of the embedding in both files.
    #[arg(long, default_value = "X_sof")]
    pub embedding: String,
    /// obsm key of the reference coordinates.
    #[arg(long, default_value = "spatial")]
    pub spatial_key: String,
    /// Reference cells per query cell.
    #[arg(long, default_value_t = 30)]
    pub k: usize,
    /// Softmax temperature over cosine similarity.
    #[arg(long, default_value_t = 0.05)]
    pub temperature: f64,
    /// Subtract each file's own mean embedding (the reference's over its chosen cells, the
    /// query's over the mapped cells) before similarity and heads, for --pca-baseline too:
    /// removes a shift between technologies (demo, dissociated onto MERFISH: layer accuracy
    /// 0.411 -> 0.657, PCA-50 0.768 -> 0.863; within one technology, STARmap held-out
    /// sections, it costs 0.004-0.011). It assumes the query samples roughly the reference's
    /// mix of cells; leave it off for a query of one cell type or region.
    #[arg(long)]
    pub center_each: bool,
    /// Use only reference cells where an obs column has (`col=value`) or has not (`col!=value`)
    /// a value; repeat for several conditions.
    #[arg(long = "reference-where", num_args = 1..)]
    pub reference_where: Vec<String>,
    /// Map only these query cells (same syntax); the others get missing predictions.
    #[arg(long = "query-where", num_args = 1..)]
    pub query_where: Vec<String>,
    /// Numeric reference obs columns to transfer too (softmax-weighted mean), written as obs
    /// `sof_<col>_predicted`; scored against the query's own column when it has one.
    #[arg(long, num_args = 1..)]
    pub transfer: Vec<String>,
    /// Also map with PCA-50 of log-normalized expression over the genes both files measure (by
    /// var name; fitted on the reference) and report its scores beside ours.
    #[arg(long)]
    pub pca_baseline: bool,
    /// What predicts the label, composition, density and --transfer columns: the softmax-weighted
    /// neighbours (knn), or a head trained on the reference cells (linear: standardized logistic /
    /// softmax-linear / ridge; mlp: one hidden layer). Locations always come from the neighbours.
    #[arg(long, value_enum, default_value = "knn")]
    pub head: MapHead,
    /// Seed of the MLP head.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also write the scores against the query's ground truth as JSON.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// The .h5ad to write: a copy of the query with the predictions.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Replace an existing output file that sof did not write (without it, such a file is
    /// refused: it may be data; files sof wrote are replaced, so reruns need no flag).
    #[arg(long)]
    pub force: bool,
}

/// How labels and values are predicted for query cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MapHead {
    /// Softmax-weighted mean over the most similar reference cells.
    Knn,
    /// Heads trained on the reference: logistic regression, softmax-linear, ridge.
    Linear,
    /// One-hidden-layer MLP heads trained on the reference.
    Mlp,
}

impl From<MapHead> for sof_pipeline::map::MapHead {
    fn from(h: MapHead) -> Self {
        match h {
            MapHead::Knn => Self::Knn,
            MapHead::Linear => Self::Linear,
            MapHead::Mlp => Self::Mlp,
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let _report_writer = args.report.as_deref().map(sof_io::OutputLock::acquire).transpose()?;
    let spec = MapSpec {
        reference: args.reference.clone(),
        query: args.query.clone(),
        label: args.label.clone(),
        embedding: args.embedding.clone(),
        spatial_key: args.spatial_key.clone(),
        config: MapConfig { k: args.k, temperature: args.temperature, center_each: args.center_each },
        reference_filters: args.reference_where.clone(),
        query_filters: args.query_where.clone(),
        transfer: args.transfer.clone(),
        pca_baseline: args.pca_baseline,
        head: args.head.into(),
        seed: args.seed,
        output: args.output.clone(),
        force: args.force,
    };
    let out = map_h5ad(&spec)?;
    util::say(format!(
        "{} query cells mapped onto {} reference cells ({} classes of '{}'); mean confidence {:.3}; written to {}",
        out.report.query_cells,
        out.report.reference_cells,
        out.classes.len(),
        args.label,
        out.mean_confidence,
        args.output.display()
    ));
    for s in &out.scores {
        let (what, (m1, v1), (m2, v2)) = (s.mapper.name(), s.metrics[0], s.metrics[1]);
        let m = |m: &str| {
            match m {
                "mae" => "mean absolute error",
                "macro_f1" => "macro F1",
                other => other,
            }
            .to_owned()
        };
        let prec = if m1 == "mae" { 4 } else { 3 };
        util::say(format!(
            "  {what:>7}: against the query's own '{}': {} {v1:.prec$}, {} {v2:.3} ({} cells)",
            s.column,
            m(m1),
            if m2 == "spearman" { "Spearman".to_owned() } else { m(m2) },
            s.cells
        ));
    }
    if let Some(n) = out.pca_shared_genes {
        util::say(format!("  (PCA-50 read the {n} genes both files measure)"));
    }
    if let Some(path) = &args.report {
        util::write_atomic(path, &serde_json::to_string_pretty(&out.report)?)?;
    }
    if let Some((median, mean)) = out.location_error {
        util::say(format!(
            "  against the query's own obsm['{}'] (meaningful only in the reference's coordinate frame): median location error {median:.1}, mean {mean:.1}",
            args.spatial_key
        ));
    }
    Ok(())
}
