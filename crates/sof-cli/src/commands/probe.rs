//! `sof probe`: linear probes on frozen embeddings beside the expression baselines, on honest
//! splits.

use std::path::PathBuf;

use anyhow::{Context, bail};
use sof_io::h5ad::H5adReader;
use sof_pipeline::probe::{FineTune, Folds, HeadKind, ProbeOutcome, ProbeProgress, ProbeSpec, ProbeTarget, probe_h5ad};
use sof_pretrain::finetune::FinetuneConfig;
use sof_tasks::probe::ProbeReport;
use sof_tasks::split::Fold;

use super::embed::TokenizerArgs;
use crate::device::{DeviceArg, device};
use crate::util;

/// Score an embedding on a label or value beside PCA, NichePCA and BANKSY.
///
/// Predict a label (classification) or a numeric column (regression) from each cell's
/// embedding with a linear probe and/or a small MLP head, beside the baselines in the same
/// harness on the same folds with the same heads: PCA of log1p 10k-normalized expression
/// (fitted on the training cells; 50 components and the best of 10/20/50/100) and the raw
/// log-normalized expression; and, when the file has obsm['spatial'], the neighbourhood
/// baselines a spatial embedding must beat: NichePCA (log-normalized expression averaged over
/// each cell and its k nearest neighbours in its section, then PCA-50 fitted on the training
/// cells; best of k = 10 / 20 / 50) and BANKSY-style (own and neighbour-mean expression side by
/// side, weighted sqrt(1 - lambda) and sqrt(lambda), k = 20, then PCA-50; best of lambda = 0.2 /
/// 0.5 / 0.8). Folds hold out whole sections (--split-key) or spatial blocks
/// (--spatial-blocks), never random cells when sections or coordinates exist (--random-folds is
/// for dissociated data). Proportion targets (rows summing to 1, e.g. sof_composition) get a
/// softmax output trained with cross-entropy (KL).
#[derive(Debug, clap::Args)]
#[command(after_help = concat!(
    "Examples:\n",
    "  sof probe --input starmap_embedded.h5ad --label layer --split-key section \\\n",
    "      --head linear --head mlp --plots probe_plots/ --output probe_layer.json",
))]
pub struct Args {
    /// An .h5ad with an embedding in obsm (from `sof embed`) and raw counts in X.
    #[arg(short, long)]
    pub input: PathBuf,
    /// obs column to classify.
    #[arg(long, conflicts_with = "target")]
    pub label: Option<String>,
    /// Numeric obs column to regress (R², MAE, Spearman).
    #[arg(long, conflicts_with = "target_obsm")]
    pub target: Option<String>,
    /// obsm key to regress, all columns at once (e.g. sof_composition: MAE, R² per column).
    #[arg(long)]
    pub target_obsm: Option<String>,
    /// The reference's composition target instead of proportions: softmax over the neighbour
    /// counts (proportions from --target-obsm times the neighbour count in this numeric obs
    /// column, e.g. sof_density), regressed and scored in that form (MAE, MSE, R²), for
    /// comparison with Nicheformer's numbers.
    #[arg(long, requires = "target_obsm", value_name = "COUNT_COLUMN")]
    pub softmax_counts: Option<String>,
    /// obsm key of the embedding.
    #[arg(long, default_value = "X_sof")]
    pub embedding: String,
    /// obs column of sections / slices / fields of view: one fold per held-out value.
    #[arg(long)]
    pub split_key: Option<String>,
    /// obs column of sections for the neighbourhood baselines (neighbours never cross sections;
    /// default: --split-key, else all cells are one section).
    #[arg(long)]
    pub section_key: Option<String>,
    /// Leave out the neighbourhood baselines (NichePCA, BANKSY) even though obsm['spatial']
    /// exists.
    #[arg(long)]
    pub no_neighbourhood_baselines: bool,
    /// Spatial-block folds instead: the tissue cut into N x N blocks dealt into --folds folds.
    #[arg(long, conflicts_with = "split_key")]
    pub spatial_blocks: Option<usize>,
    /// Shuffled cell folds: only for data without sections or coordinates (dissociated cells).
    #[arg(long, conflicts_with_all = ["split_key", "spatial_blocks"])]
    pub random_folds: bool,
    /// Number of folds (spatial blocks and random folds; sections give one fold each).
    #[arg(long, default_value_t = 5)]
    pub folds: usize,
    /// Seeds (spatial-block assignment and PCA); mean and spread are reported.
    #[arg(long, default_value_t = 3)]
    pub seeds: u64,
    /// Use only cells where an obs column has (`col=value`) or has not (`col!=value`) a value,
    /// e.g. `layer!=outside_VISp`; repeat for several conditions.
    #[arg(long = "where", num_args = 1..)]
    pub where_: Vec<String>,
    /// Label values to leave out (e.g. Excluded), space- or comma-separated.
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    pub drop: Vec<String>,
    /// Weight classes inversely to their frequency.
    #[arg(long)]
    pub class_balanced: bool,
    /// Heads to fit on every feature set: `--head linear mlp` (or repeat the flag).
    #[arg(long, value_enum, num_args = 1.., default_values_t = [Head::Linear])]
    pub head: Vec<Head>,
    /// The labels are ordered (layers, zones): also report Spearman's rho between true and
    /// predicted class ranks. Classes are ordered by name, numerically when all are numbers, or
    /// as given by --class-order.
    #[arg(long)]
    pub ordered: bool,
    /// Class order (comma-separated), for --ordered labels whose names do not sort.
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    pub class_order: Vec<String>,
    /// Folder for figures: the confusion matrix of each head on the embedding (PNG) and, when
    /// obsm['spatial'] exists, maps of true and predicted labels of the first held-out fold.
    #[arg(long)]
    pub plots: Option<PathBuf>,
    /// Also fine-tune this sof checkpoint (the whole encoder plus a linear head, the encoder
    /// at a lower learning rate) on each fold's training cells and score its test cells: the
    /// feature set "fine-tuned" beside the others. Tokenizer flags as for `sof embed`.
    #[arg(long)]
    pub finetune: Option<PathBuf>,
    #[command(flatten)]
    pub tokenizer: TokenizerArgs,
    /// Fine-tuning epochs over each fold's training cells.
    #[arg(long, default_value_t = 4)]
    pub finetune_epochs: usize,
    /// Cells per fine-tuning step.
    #[arg(long, default_value_t = 32)]
    pub finetune_batch_size: usize,
    /// Peak learning rate of the encoder while fine-tuning.
    #[arg(long, default_value_t = 5e-5)]
    pub encoder_lr: f64,
    /// Peak learning rate of the fine-tuning head.
    #[arg(long, default_value_t = 1e-3)]
    pub head_lr: f64,
    /// Where fine-tuning runs.
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceArg,
    /// Metrics JSON (an existing file that is not a probe report of sof's is refused unless --force).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Replace an existing --output that is not a probe report sof wrote.
    #[arg(long)]
    pub force: bool,
}

/// A head fitted on frozen features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Head {
    /// Multinomial logistic regression / ridge (softmax-linear for proportions).
    Linear,
    /// One hidden ReLU layer (128), Adam, early stopping on a tenth of the training cells.
    Mlp,
}

/// How a head is shown in the summary.
fn display(head: &str) -> &str {
    if head == "mlp" { "MLP" } else { head }
}

/// The library's form of the flags.
fn spec(args: &Args) -> anyhow::Result<ProbeSpec> {
    let target = match (&args.label, &args.target, &args.target_obsm) {
        (_, _, Some(key)) => ProbeTarget::Obsm { key: key.clone(), softmax_counts: args.softmax_counts.clone() },
        (Some(key), _, None) => ProbeTarget::Label {
            key: key.clone(),
            drop: args.drop.clone(),
            class_order: args.class_order.clone(),
            class_balanced: args.class_balanced,
            ordered: args.ordered,
        },
        (None, Some(key), None) => ProbeTarget::Obs(key.clone()),
        (None, None, None) => bail!("pass --label, --target or --target-obsm"),
    };
    let folds = match (&args.split_key, args.spatial_blocks, args.random_folds) {
        (Some(key), _, _) => Some(Folds::Sections(key.clone())),
        (None, Some(grid), _) => Some(Folds::SpatialBlocks { grid, folds: args.folds }),
        (None, None, true) => Some(Folds::Random { folds: args.folds }),
        (None, None, false) => None,
    };
    let finetune = match &args.finetune {
        Some(ckpt) => Some(FineTune {
            checkpoint: ckpt.clone(),
            tokenizer: args.tokenizer.overrides()?,
            config: FinetuneConfig {
                epochs: args.finetune_epochs,
                batch_size: args.finetune_batch_size,
                encoder_learning_rate: args.encoder_lr,
                head_learning_rate: args.head_lr,
                ..FinetuneConfig::default()
            },
            device: device(args.device)?.autodiff(),
        }),
        None => None,
    };
    Ok(ProbeSpec {
        input: args.input.clone(),
        target,
        embedding: args.embedding.clone(),
        folds,
        section_key: args.section_key.clone().or_else(|| args.split_key.clone()),
        neighbourhood_baselines: !args.no_neighbourhood_baselines,
        seeds: args.seeds,
        filters: args.where_.clone(),
        heads: args
            .head
            .iter()
            .map(|h| match h {
                Head::Linear => HeadKind::Linear,
                Head::Mlp => HeadKind::Mlp,
            })
            .collect(),
        finetune,
    })
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let spec = spec(&args)?;
    let _writer = sof_io::OutputLock::acquire(&args.output)?;
    util::check_replace_text(&args.output, args.force, |text| serde_json::from_str::<ProbeReport>(text).is_ok())?;
    let pb = util::progress(0, "probe", false);
    let ProbeOutcome { report, fold_sets } = probe_h5ad(&spec, &mut |p| match p {
        ProbeProgress::Planned(n) => pb.set_length(n),
        ProbeProgress::Fold => pb.inc(1),
        ProbeProgress::Stage(what) => pb.set_message(what.to_owned()),
    })?;
    pb.finish_and_clear();
    util::write_atomic(&args.output, &serde_json::to_string_pretty(&report)?)?;
    util::say(format!(
        "{} on {} cells, {} folds x {} seed(s):",
        report.task,
        report.cells,
        report.folds.len(),
        fold_sets.len()
    ));
    for r in &report.results {
        let line: Vec<String> =
            r.mean.iter().map(|(m, v)| format!("{m} {v:.3} ± {:.3}", r.sd.get(m).copied().unwrap_or(0.0))).collect();
        util::say(format!("  {:<29} {:<7} {}", r.features, display(&r.head), line.join(", ")));
    }
    if let Some(dir) = &args.plots {
        let reader = H5adReader::open(&args.input)?;
        plots(dir, &reader, &report, &fold_sets[0].1)?;
        util::say(format!("  figures: {}", dir.display()));
    }
    util::say(format!("  metrics: {}", args.output.display()));
    Ok(())
}

/// Confusion matrices (embedding, each head) and, with coordinates, true vs predicted maps of
/// the first fold's test cells.
fn plots(dir: &std::path::Path, reader: &H5adReader, report: &ProbeReport, first: &[Fold]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let Some(truth) = &report.truth_classes else { return Ok(()) };
    let label = report.task.trim_start_matches("classify ");
    for r in report.results.iter().filter(|r| r.features.starts_with("embedding") || r.features == "PCA-50") {
        if let Some(counts) = &r.confusion {
            let slug = if r.features == "PCA-50" { "pca50" } else { "embedding" };
            sof_plot::ConfusionMatrix {
                title: format!("{label}: {} · {} head (held-out folds)", r.features, display(&r.head)),
                classes: report.classes.clone(),
                counts: counts.clone(),
            }
            .write_png(&dir.join(format!("confusion_{slug}_{}.png", r.head)), 720)?;
        }
    }
    let Ok(xy) = reader.obsm("spatial") else { return Ok(()) };
    let Some(fold) = first.first() else { return Ok(()) };
    let pts: Vec<(f64, f64)> = fold
        .test
        .iter()
        .map(|&k| {
            let i = report.cell_index[k];
            (xy[[i, 0]], xy[[i, 1]])
        })
        .collect();
    let mut panels = vec![(format!("true {label}"), pts.clone(), fold.test.iter().map(|&k| truth[k]).collect())];
    for r in report.results.iter().filter(|r| r.head == report.results[0].head) {
        if r.features == "PCA-best" {
            continue;
        }
        let pred = r.predicted_classes.as_ref().expect("classification");
        panels.push((
            format!(
                "{} ({})",
                if r.features.starts_with("fine-tuned") { "fine-tuned encoder" } else { &r.features },
                display(&r.head)
            ),
            pts.clone(),
            fold.test.iter().map(|&k| pred[k].max(0) as usize).collect(),
        ));
    }
    sof_plot::CategoricalMaps { categories: report.classes.clone(), panels }.write_png(
        &dir.join(format!("map_{}.png", label.replace(['/', ' '], "_"))),
        420,
        460,
    )?;
    Ok(())
}
