//! `sof probe`: linear probes on frozen embeddings beside the expression baselines, on honest
//! splits.

use std::path::PathBuf;

use anyhow::{Context, bail};
use ndarray::{Array2, Axis};
use sof_io::h5ad::H5adReader;
use sof_pretrain::finetune::{FineTuneModel, FinetuneConfig};
use sof_tasks::mlp::MlpConfig;
use sof_tasks::probe::{self, ProbeReport, ProbeTask};
use sof_tasks::split::{Fold, FoldPlan};
use sof_tasks::{Cells, LinearHead, MlpHead, Target};

use super::embed::{self, TokenizerArgs};
use crate::device::{DeviceArg, device};
use crate::util;

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
///
/// Example: sof probe --input starmap_embedded.h5ad --label layer --split-key section
///          --head linear --head mlp --plots probe_plots/ --output probe_layer.json
#[derive(Debug, clap::Args)]
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
    #[arg(long, default_value_t = 5)]
    pub folds: usize,
    /// Seeds (spatial-block assignment and PCA); mean and spread are reported.
    #[arg(long, default_value_t = 3)]
    pub seeds: u64,
    /// Use only cells where an obs column has (`col=value`) or has not (`col!=value`) a value,
    /// e.g. `layer!=outside_VISp`; repeat for several conditions.
    #[arg(long = "where")]
    pub where_: Vec<String>,
    /// Label values to leave out (e.g. Excluded), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub drop: Vec<String>,
    /// Weight classes inversely to their frequency.
    #[arg(long)]
    pub class_balanced: bool,
    /// Heads to fit on every feature set (repeat the flag for several).
    #[arg(long, value_enum, default_values_t = [Head::Linear])]
    pub head: Vec<Head>,
    /// The labels are ordered (layers, zones): also report Spearman's rho between true and
    /// predicted class ranks. Classes are ordered by name, numerically when all are numbers, or
    /// as given by --class-order.
    #[arg(long)]
    pub ordered: bool,
    /// Class order (comma-separated), for --ordered labels whose names do not sort.
    #[arg(long, value_delimiter = ',')]
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
    /// Metrics JSON.
    #[arg(short, long)]
    pub output: PathBuf,
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

/// The cells kept (a usable target, not filtered out) and what is predicted for them.
fn task(args: &Args, reader: &H5adReader, obs: &sof_io::Frame) -> anyhow::Result<(Vec<usize>, ProbeTask)> {
    let n_all = reader.n_obs();
    let allowed = util::filter_rows(obs, &args.input, &args.where_)?;
    let col_name = args
        .label
        .clone()
        .or_else(|| args.target.clone())
        .or_else(|| args.target_obsm.clone())
        .context("pass --label, --target or --target-obsm")?;
    if let Some(key) = &args.target_obsm {
        let y = reader.obsm(key)?;
        let keep: Vec<usize> = (0..n_all).filter(|&i| allowed[i] && y.row(i).iter().all(|v| v.is_finite())).collect();
        let names = sof_io::h5ad::read_uns_strings(&args.input, &format!("{key}_columns"))
            .ok()
            .flatten()
            .filter(|n| n.len() == y.ncols())
            .unwrap_or_else(|| (0..y.ncols()).map(|c| format!("{key}[{c}]")).collect());
        let mut y = y.select(Axis(0), &keep);
        if let Some(count_col) = &args.softmax_counts {
            y = probe::softmax_of_counts(obs, &args.input, key, count_col, &keep, y)?;
        }
        let proportions = probe::are_proportions(&y);
        let description = match (proportions, args.softmax_counts.is_some()) {
            (true, true) => format!("regress {col_name} (softmax of neighbour counts, the reference's form)"),
            (true, false) => format!("regress {col_name} (proportions)"),
            _ => format!("regress {col_name}"),
        };
        let target = if proportions { Target::Proportions(y) } else { Target::Values(y) };
        return Ok((
            keep,
            ProbeTask { description, target, classes: Vec::new(), target_columns: names, ordered: false },
        ));
    }
    let col = obs.get(&col_name).with_context(|| {
        format!(
            "{}: obs has no column '{col_name}' (it has: {})",
            args.input.display(),
            obs.column_names().collect::<Vec<_>>().join(", ")
        )
    })?;
    if args.label.is_some() {
        let labels = col.labels();
        let keep: Vec<usize> =
            (0..n_all).filter(|&i| allowed[i] && labels[i].as_ref().is_some_and(|l| !args.drop.contains(l))).collect();
        let mut classes: Vec<String> = keep.iter().filter_map(|&i| labels[i].clone()).collect();
        classes.sort();
        classes.dedup();
        let classes = probe::order_classes(classes, &args.class_order, &args.input)?;
        let y = keep
            .iter()
            .map(|&i| classes.iter().position(|c| Some(c) == labels[i].as_ref()).expect("a class"))
            .collect();
        let target = Target::Classes { y, n_classes: classes.len(), class_balanced: args.class_balanced };
        let description = format!("classify {col_name}");
        return Ok((
            keep,
            ProbeTask { description, target, classes, target_columns: Vec::new(), ordered: args.ordered },
        ));
    }
    let v = col.as_f64().with_context(|| {
        format!("{}: obs '{col_name}' is {}, not numeric; use --label for labels", args.input.display(), col.kind())
    })?;
    let keep: Vec<usize> = (0..n_all).filter(|&i| allowed[i] && v[i].is_finite()).collect();
    let y = Array2::from_shape_fn((keep.len(), 1), |(i, _)| v[keep[i]]);
    let task = ProbeTask {
        description: format!("regress {col_name}"),
        target: Target::Values(y),
        classes: Vec::new(),
        target_columns: vec![col_name.clone()],
        ordered: false,
    };
    Ok((keep, task))
}

/// Every cell's position and section, for the neighbourhood baselines.
fn section_points(
    args: &Args,
    reader: &H5adReader,
    obs: &sof_io::Frame,
) -> anyhow::Result<sof_spatial::SectionedPoints> {
    let path = args.input.display();
    let xy = reader.obsm("spatial")?;
    if xy.ncols() < 2 {
        bail!("{path}: obsm['spatial'] has {} column(s); coordinates need x and y", xy.ncols());
    }
    let sections: Vec<u32> = match args.section_key.as_ref().or(args.split_key.as_ref()) {
        Some(key) => {
            let col = obs.get(key).with_context(|| format!("{path}: obs has no column '{key}' (sections)"))?;
            let labels = col.labels();
            let mut names: Vec<&Option<String>> = labels.iter().collect();
            names.sort();
            names.dedup();
            labels.iter().map(|l| names.binary_search(&l).unwrap_or(0) as u32).collect()
        }
        None => vec![0; xy.nrows()],
    };
    let pts: Vec<[f64; 2]> = xy.rows().into_iter().map(|r| [r[0], r[1]]).collect();
    sof_spatial::SectionedPoints::new(pts, &sections)
        .map_err(|e| anyhow::anyhow!("{path}: obsm['spatial']: {e} (or pass --no-neighbourhood-baselines)"))
}

/// The folds the flags ask for.
fn fold_plan(args: &Args, reader: &H5adReader, obs: &sof_io::Frame, keep: &[usize]) -> anyhow::Result<FoldPlan> {
    Ok(if let Some(key) = &args.split_key {
        let g = obs.get(key).with_context(|| format!("{}: obs has no column '{key}'", args.input.display()))?;
        let labels = g.labels();
        FoldPlan::Groups(keep.iter().map(|&i| labels[i].clone().unwrap_or_default()).collect())
    } else if let Some(grid) = args.spatial_blocks {
        let xy = reader.obsm("spatial").context("--spatial-blocks needs obsm['spatial']")?;
        FoldPlan::SpatialBlocks {
            xy: keep.iter().map(|&i| (xy[[i, 0]], xy[[i, 1]])).collect(),
            grid,
            folds: args.folds,
        }
    } else if args.random_folds {
        FoldPlan::Random { cells: keep.len(), folds: args.folds }
    } else {
        bail!(
            "pass --split-key <obs column> or --spatial-blocks <N> (random cell splits leak neighbours; \
             --random-folds is for dissociated data)"
        )
    })
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let reader = H5adReader::open(&args.input)?;
    let obs = reader.obs()?;
    let (keep, task) = task(&args, &reader, &obs)?;
    if keep.len() < 10 {
        bail!("{}: only {} cells have a usable target", args.input.display(), keep.len());
    }
    let emb = reader
        .obsm(&args.embedding)
        .with_context(|| format!("{}: run `sof embed` first (or pass --embedding <obsm key>)", args.input.display()))?;
    let all = reader.read_rows(0..reader.n_obs())?;
    let n_genes = all.n_cols();
    let mut obsm: std::collections::BTreeMap<String, ndarray::Array2<f64>> =
        [(args.embedding.clone(), emb.select(Axis(0), &keep))].into();
    // The niche embedding of the same model (`sof embed` of a spatial file), scored beside it.
    let niche_key = format!("{}_niche", args.embedding);
    let niche = reader.obsm_keys().contains(&niche_key).then_some(niche_key);
    if let Some(k) = &niche {
        obsm.insert(k.clone(), reader.obsm(k)?.select(Axis(0), &keep));
    }
    let mut cells = Cells::new(all.select_rows(&keep), obsm)?;
    let spatial = !args.no_neighbourhood_baselines && reader.obsm_keys().iter().any(|k| k == "spatial");
    if spatial {
        let points = section_points(&args, &reader, &obs)?;
        cells = cells.with_neighbourhoods(&all, &points, &keep, &probe::NEIGHBOURHOOD_K)?;
    }
    let fold_sets = fold_plan(&args, &reader, &obs, &keep)?.fold_sets(args.seeds)?;
    let (embedders, sets) = probe::standard_features(&args.embedding, niche.as_deref(), n_genes, spatial);
    let mut kinds = args.head.clone();
    kinds.dedup();
    let heads = |seed: u64| -> Vec<Box<dyn sof_tasks::Head>> {
        kinds
            .iter()
            .map(|h| -> Box<dyn sof_tasks::Head> {
                match h {
                    Head::Linear => Box::new(LinearHead::default()),
                    Head::Mlp => Box::new(MlpHead(MlpConfig { seed, ..MlpConfig::default() })),
                }
            })
            .collect()
    };
    // Fine-tuning: the checkpoint and its tokens for the kept cells, one more result row.
    let (loaded, seqs) = match &args.finetune {
        Some(ckpt) => {
            let dev = device(args.device)?.autodiff();
            let loaded = embed::load(ckpt, None, &args.tokenizer, &args.input, &dev)?;
            let seqs = loaded.tokenize_all()?;
            (Some((loaded.model, dev, ckpt)), keep.iter().map(|&i| seqs[i].clone()).collect::<Vec<_>>())
        }
        None => (None, Vec::new()),
    };
    let finetune = loaded.map(|(encoder, device, ckpt)| FineTuneModel {
        name: format!("fine-tuned ({})", ckpt.display()),
        encoder,
        seqs: &seqs,
        config: FinetuneConfig {
            epochs: args.finetune_epochs,
            batch_size: args.finetune_batch_size,
            encoder_learning_rate: args.encoder_lr,
            head_learning_rate: args.head_lr,
            ..FinetuneConfig::default()
        },
        device,
    });
    let pb = util::progress(fold_sets.iter().map(|f| f.1.len() as u64).sum(), "probe", false);
    let report = probe::probe(
        &args.input.display().to_string(),
        keep.clone(),
        &cells,
        &task,
        &fold_sets,
        &embedders,
        &sets,
        &heads,
        finetune.as_ref().map(|m| m as &dyn probe::CellModel),
        &mut |what| match what {
            "fold" => pb.inc(1),
            other => pb.set_message(other.to_owned()),
        },
    )?;
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
