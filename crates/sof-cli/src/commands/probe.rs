//! `sof probe`: linear probes on frozen embeddings beside the expression baselines, on honest
//! splits.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use ndarray::{Array2, Axis};
use serde::Serialize;
use sof_io::h5ad::H5adReader;
use sof_tasks::linear::{LogisticConfig, LogisticRegression, Ridge, argmax_rows};
use sof_tasks::metrics;
use sof_tasks::mlp::{Mlp, MlpConfig, MlpTarget};
use sof_tasks::pca::{Pca, dense, log_normalize};
use sof_tasks::split::{Fold, by_group, random_folds, spatial_blocks};

use super::embed::{self, TokenizerArgs};
use crate::device::{DeviceArg, device};
use crate::util;

/// Predict a label (classification) or a numeric column (regression) from each cell's
/// embedding with a linear probe and/or a small MLP head, beside the baselines in the same
/// harness on the same folds with the same heads: PCA of log1p 10k-normalized expression
/// (fitted on the training cells; 50 components and the best of 10/20/50/100) and the raw
/// log-normalized expression. Folds hold out whole sections (--split-key) or spatial blocks
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Head {
    /// Multinomial logistic regression / ridge (softmax-linear for proportions).
    Linear,
    /// One hidden ReLU layer (128), Adam, early stopping on a tenth of the training cells.
    Mlp,
}

impl Head {
    fn name(self) -> &'static str {
        match self {
            Head::Linear => "linear",
            Head::Mlp => "MLP",
        }
    }
}

#[derive(Debug, Serialize)]
struct FeatureResult {
    features: String,
    head: Head,
    /// metric -> per-(seed, fold) values
    values: BTreeMap<String, Vec<f64>>,
    mean: BTreeMap<String, f64>,
    sd: BTreeMap<String, f64>,
    /// Summed over folds of the first seed (classification).
    confusion: Option<Vec<Vec<u64>>>,
    /// Out-of-fold predictions of the first seed, per cell in `cell_index` order: class codes
    /// (-1 = never tested) or values (rows of NaN = never tested).
    predicted_classes: Option<Vec<i64>>,
    predicted_values: Option<Vec<Vec<f64>>>,
}

#[derive(Debug, Serialize)]
struct Report {
    input: String,
    task: String,
    classes: Vec<String>,
    cells: usize,
    /// Rows of the input the cells are (labelled, not dropped).
    cell_index: Vec<usize>,
    /// Truth in `cell_index` order: class codes, or values.
    truth_classes: Option<Vec<usize>>,
    truth_values: Option<Vec<Vec<f64>>>,
    /// Names of the regressed columns.
    target_columns: Vec<String>,
    folds: Vec<String>,
    results: Vec<FeatureResult>,
}

enum Task {
    Classify { y: Vec<usize>, classes: Vec<String>, ordered: bool },
    Regress { y: Array2<f64>, names: Vec<String>, proportions: bool },
}

/// Class names in order: as given, numerically when all are numbers, else by name.
fn order_classes(mut classes: Vec<String>, given: &[String], path: &std::path::Path) -> anyhow::Result<Vec<String>> {
    if !given.is_empty() {
        if let Some(c) = classes.iter().find(|c| !given.contains(c)) {
            bail!("{}: class '{c}' is missing from --class-order ({})", path.display(), given.join(","));
        }
        return Ok(given.iter().filter(|g| classes.contains(g)).cloned().collect());
    }
    if classes.iter().all(|c| c.trim().parse::<f64>().is_ok()) {
        classes
            .sort_by(|a, b| a.trim().parse::<f64>().unwrap_or(0.0).total_cmp(&b.trim().parse::<f64>().unwrap_or(0.0)));
    }
    Ok(classes)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let reader = H5adReader::open(&args.input)?;
    let obs = reader.obs()?;
    let n_all = reader.n_obs();
    let allowed = util::filter_rows(&obs, &args.input, &args.where_)?;
    let col_name = args
        .label
        .clone()
        .or_else(|| args.target.clone())
        .or_else(|| args.target_obsm.clone())
        .context("pass --label, --target or --target-obsm")?;
    // Cells kept: a label present and not dropped (or finite targets).
    let (keep, task): (Vec<usize>, Task) = if let Some(key) = &args.target_obsm {
        let y = reader.obsm(key)?;
        let keep: Vec<usize> = (0..n_all).filter(|&i| allowed[i] && y.row(i).iter().all(|v| v.is_finite())).collect();
        let names = sof_io::h5ad::read_uns_strings(&args.input, &format!("{key}_columns"))
            .ok()
            .flatten()
            .filter(|n| n.len() == y.ncols())
            .unwrap_or_else(|| (0..y.ncols()).map(|c| format!("{key}[{c}]")).collect());
        let mut y = y.select(Axis(0), &keep);
        if let Some(count_col) = &args.softmax_counts {
            y = softmax_of_counts(&obs, &args.input, key, count_col, &keep, y)?;
        }
        // Proportions: non-negative rows summing to 1 (or all zero: a cell without neighbours).
        let proportions = y.iter().all(|&v| v >= 0.0)
            && y.rows().into_iter().all(|r| {
                let s = r.sum();
                s == 0.0 || (s - 1.0).abs() < 1e-4
            });
        (keep.clone(), Task::Regress { y, names, proportions })
    } else {
        let col = obs.get(&col_name).with_context(|| {
            format!(
                "{}: obs has no column '{col_name}' (it has: {})",
                args.input.display(),
                obs.column_names().collect::<Vec<_>>().join(", ")
            )
        })?;
        if args.label.is_some() {
            let labels = col.labels();
            let keep: Vec<usize> = (0..n_all)
                .filter(|&i| allowed[i] && labels[i].as_ref().is_some_and(|l| !args.drop.contains(l)))
                .collect();
            let mut classes: Vec<String> = keep.iter().filter_map(|&i| labels[i].clone()).collect();
            classes.sort();
            classes.dedup();
            let classes = order_classes(classes, &args.class_order, &args.input)?;
            let y = keep
                .iter()
                .map(|&i| classes.iter().position(|c| Some(c) == labels[i].as_ref()).expect("a class"))
                .collect();
            (keep, Task::Classify { y, classes, ordered: args.ordered })
        } else {
            let v = col.as_f64().with_context(|| {
                format!(
                    "{}: obs '{col_name}' is {}, not numeric; use --label for labels",
                    args.input.display(),
                    col.kind()
                )
            })?;
            let keep: Vec<usize> = (0..n_all).filter(|&i| allowed[i] && v[i].is_finite()).collect();
            let y = Array2::from_shape_fn((keep.len(), 1), |(i, _)| v[keep[i]]);
            (keep, Task::Regress { y, names: vec![col_name.clone()], proportions: false })
        }
    };
    if keep.len() < 10 {
        bail!("{}: only {} cells have a usable '{col_name}'", args.input.display(), keep.len());
    }

    let emb = reader
        .obsm(&args.embedding)
        .with_context(|| format!("{}: run `sof embed` first (or pass --embedding <obsm key>)", args.input.display()))?;
    let emb = emb.select(Axis(0), &keep);
    let x = log_normalize(&reader.read_rows(0..n_all)?.select_rows(&keep));

    let fold_sets: Vec<(u64, Vec<Fold>)> = (0..args.seeds.max(1))
        .map(|seed| -> anyhow::Result<(u64, Vec<Fold>)> {
            let folds = if let Some(key) = &args.split_key {
                let g = obs.get(key).with_context(|| format!("{}: obs has no column '{key}'", args.input.display()))?;
                let labels = g.labels();
                by_group(&keep.iter().map(|&i| labels[i].clone().unwrap_or_default()).collect::<Vec<_>>())
            } else if let Some(grid) = args.spatial_blocks {
                let xy = reader.obsm("spatial").context("--spatial-blocks needs obsm['spatial']")?;
                let pts: Vec<(f64, f64)> = keep.iter().map(|&i| (xy[[i, 0]], xy[[i, 1]])).collect();
                spatial_blocks(&pts, grid, args.folds, seed)
            } else if args.random_folds {
                random_folds(keep.len(), args.folds, seed)
            } else {
                bail!(
                    "pass --split-key <obs column> or --spatial-blocks <N> (random cell splits leak neighbours; \
                     --random-folds is for dissociated data)"
                )
            };
            if folds.len() < 2 {
                bail!("only one fold: the split column has one value");
            }
            Ok((seed, folds))
        })
        .collect::<anyhow::Result<_>>()?;
    // Leave-one-group-out folds do not depend on the seed: evaluate them once.
    let fold_sets = if args.split_key.is_some() { fold_sets.into_iter().take(1).collect() } else { fold_sets };

    let mut feature_sets: Vec<String> = vec![format!("embedding ({})", args.embedding)];
    feature_sets.extend(["PCA-50".to_owned(), "PCA-best".to_owned()]);
    let raw_ok = x.n_cols() <= 3_000;
    if raw_ok {
        feature_sets.push("raw log-normalized".to_owned());
    }
    let n_classes = match &task {
        Task::Classify { classes, .. } => classes.len(),
        Task::Regress { .. } => 0,
    };
    let mut heads = args.head.clone();
    heads.dedup();
    let empty = |features: String, head: Head| FeatureResult {
        features,
        head,
        values: BTreeMap::new(),
        mean: BTreeMap::new(),
        sd: BTreeMap::new(),
        confusion: (n_classes > 0).then(|| vec![vec![0; n_classes]; n_classes]),
        predicted_classes: (n_classes > 0).then(|| vec![-1; keep.len()]),
        predicted_values: match &task {
            Task::Regress { y, .. } => Some(vec![vec![f64::NAN; y.ncols()]; keep.len()]),
            Task::Classify { .. } => None,
        },
    };
    let mut results: Vec<FeatureResult> = heads
        .iter()
        .flat_map(|&h| feature_sets.iter().map(move |f| (h, f)))
        .map(|(h, f)| empty(f.clone(), h))
        .collect();
    // Fine-tuning: the checkpoint, its tokens for the kept cells, one more result row.
    let finetune = match &args.finetune {
        Some(ckpt) => {
            let dev = device(args.device)?.autodiff();
            let loaded = embed::load(ckpt, None, &args.tokenizer, &args.input, &dev)?;
            let seqs = loaded.tokenize_all()?;
            let seqs: Vec<Vec<i64>> = keep.iter().map(|&i| seqs[i].clone()).collect();
            results.push(empty(format!("fine-tuned ({})", ckpt.display()), Head::Linear));
            Some((loaded.model, seqs, dev))
        }
        None => None,
    };
    let n_standard = heads.len() * feature_sets.len();
    let pb = util::progress(fold_sets.iter().map(|f| f.1.len() as u64).sum(), "probe", false);
    for (seed, folds) in &fold_sets {
        for fold in folds {
            if fold.train.is_empty() || fold.test.is_empty() {
                continue;
            }
            // Features per set, fitted on the training cells only.
            let mut sets: Vec<(Array2<f64>, Array2<f64>)> =
                vec![(emb.select(Axis(0), &fold.train), emb.select(Axis(0), &fold.test))];
            let sizes: Vec<Pca> = [10, 20, 50, 100]
                .iter()
                .map(|&k| Pca::fit(&x, &fold.train, k.min(x.n_cols()).min(fold.train.len()), *seed))
                .collect();
            // PCA-50 is the 50-component fit above unless the training set is smaller than that.
            let own;
            let pca50 = if sizes[2].n_components() == 50.min(x.n_cols()) {
                &sizes[2]
            } else {
                own = Pca::fit(&x, &fold.train, 50.min(x.n_cols()), *seed);
                &own
            };
            sets.push((pca50.transform(&x, &fold.train), pca50.transform(&x, &fold.test)));
            if raw_ok {
                sets.push((dense(&x, &fold.train), dense(&x, &fold.test)));
            }
            for (idx, res) in results.iter_mut().enumerate() {
                if idx >= n_standard {
                    let Some((encoder, seqs, dev)) = &finetune else { continue };
                    pb.set_message("fine-tune");
                    let scored = finetune_fold(&args, &task, fold, *seed, encoder.clone(), seqs, dev)?;
                    record(res, scored, fold, &task, *seed == fold_sets[0].0);
                    pb.set_message("probe");
                    continue;
                }
                let (head, set) = (res.head, idx % feature_sets.len());
                let ctx = Fit { task: &task, fold, class_balanced: args.class_balanced, head, seed: *seed };
                let scored = if set == 2 {
                    // PCA-best: the best test score over sizes (an optimistic baseline, on purpose).
                    let mut best: Option<Scored> = None;
                    for p in &sizes {
                        let r = ctx.evaluate(&p.transform(&x, &fold.train), &p.transform(&x, &fold.test));
                        if best.as_ref().is_none_or(|b| r.0 > b.0) {
                            best = Some(r);
                        }
                    }
                    best.expect("at least one size")
                } else {
                    let (tr, te) = &sets[if set < 2 { set } else { 2 }];
                    ctx.evaluate(tr, te)
                };
                record(res, scored, fold, &task, *seed == fold_sets[0].0);
            }
            pb.inc(1);
        }
    }
    pb.finish_and_clear();
    for r in &mut results {
        for (m, v) in &r.values {
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            let sd =
                (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len().max(2).saturating_sub(1) as f64).sqrt();
            r.mean.insert(m.clone(), mean);
            r.sd.insert(m.clone(), sd);
        }
    }
    let report = Report {
        input: args.input.display().to_string(),
        task: match &task {
            Task::Classify { .. } => format!("classify {col_name}"),
            Task::Regress { proportions: true, .. } if args.softmax_counts.is_some() => {
                format!("regress {col_name} (softmax of neighbour counts, the reference's form)")
            }
            Task::Regress { proportions: true, .. } => format!("regress {col_name} (proportions)"),
            Task::Regress { .. } => format!("regress {col_name}"),
        },
        classes: match &task {
            Task::Classify { classes, .. } => classes.clone(),
            Task::Regress { .. } => Vec::new(),
        },
        cells: keep.len(),
        cell_index: keep.clone(),
        truth_classes: match &task {
            Task::Classify { y, .. } => Some(y.clone()),
            Task::Regress { .. } => None,
        },
        truth_values: match &task {
            Task::Regress { y, .. } => Some(y.rows().into_iter().map(|r| r.to_vec()).collect()),
            Task::Classify { .. } => None,
        },
        target_columns: match &task {
            Task::Regress { names, .. } => names.clone(),
            Task::Classify { .. } => Vec::new(),
        },
        folds: fold_sets[0].1.iter().map(|f| f.name.clone()).collect(),
        results,
    };
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
        util::say(format!("  {:<24} {:<7} {}", r.features, r.head.name(), line.join(", ")));
    }
    if let Some(dir) = &args.plots {
        plots(dir, &reader, &report, &fold_sets[0].1)?;
        util::say(format!("  figures: {}", dir.display()));
    }
    util::say(format!("  metrics: {}", args.output.display()));
    Ok(())
}

/// The reference's composition target: per cell, softmax over the neighbour counts of each cell
/// type, where counts = proportions x the neighbour count in obs `count_col`. A cell without
/// neighbours gets the uniform distribution, as softmax of zeros does in the reference.
fn softmax_of_counts(
    obs: &sof_io::Frame,
    input: &std::path::Path,
    key: &str,
    count_col: &str,
    keep: &[usize],
    proportions: Array2<f64>,
) -> anyhow::Result<Array2<f64>> {
    let col = obs.get(count_col).with_context(|| {
        format!(
            "{}: obs has no column '{count_col}' for --softmax-counts (run `sof spatial`, which writes sof_density)",
            input.display()
        )
    })?;
    let counts = col.as_f64().with_context(|| {
        format!("{}: obs '{count_col}' is {}, not a numeric neighbour count", input.display(), col.kind())
    })?;
    let mut y = proportions;
    for (mut row, &i) in y.rows_mut().into_iter().zip(keep) {
        let n = counts[i];
        if !n.is_finite() || n < 0.0 {
            bail!("{}: obs '{count_col}' of cell {i} is {n}, not a neighbour count", input.display());
        }
        let s = row.sum();
        if row.iter().any(|&p| p < 0.0) || (s != 0.0 && (s - 1.0).abs() > 1e-4) {
            bail!(
                "{}: obsm '{key}' row {i} is not a proportion vector (sum {s}); --softmax-counts needs proportions",
                input.display()
            );
        }
        // Counts are integers; rounding removes the float error of proportion x count.
        row.mapv_inplace(|p| (p * n).round());
        let max = row.fold(f64::NEG_INFINITY, |m, &c| m.max(c));
        row.mapv_inplace(|c| (c - max).exp());
        let z = row.sum();
        row.mapv_inplace(|e| e / z);
    }
    Ok(y)
}

/// A probe's result on one fold: (headline score, metrics, predicted classes, predicted values).
type Scored = (f64, Vec<(String, f64)>, Option<Vec<usize>>, Option<Array2<f64>>);

/// Adds one fold's scores to a result (predictions and confusion from the first seed only).
fn record(res: &mut FeatureResult, scored: Scored, fold: &Fold, task: &Task, first_seed: bool) {
    let (_, score_metrics, predicted, values) = scored;
    for (m, v) in score_metrics {
        res.values.entry(m).or_default().push(v);
    }
    if !first_seed {
        return;
    }
    if let (Some(conf), Some(pred), Task::Classify { y, .. }) = (res.confusion.as_mut(), &predicted, task) {
        for (&t, &p) in fold.test.iter().zip(pred) {
            conf[y[t]][p] += 1;
        }
    }
    if let (Some(out), Some(pred)) = (res.predicted_classes.as_mut(), &predicted) {
        for (&t, &p) in fold.test.iter().zip(pred) {
            out[t] = p as i64;
        }
    }
    if let (Some(out), Some(vals)) = (res.predicted_values.as_mut(), &values) {
        for (r, &t) in fold.test.iter().enumerate() {
            out[t] = vals.row(r).to_vec();
        }
    }
}

/// Fine-tunes the encoder with a linear head on the fold's training cells; scores its test cells.
fn finetune_fold(
    args: &Args,
    task: &Task,
    fold: &Fold,
    seed: u64,
    encoder: sof_model::Encoder,
    seqs: &[Vec<i64>],
    dev: &burn::prelude::Device,
) -> anyhow::Result<Scored> {
    use sof_pretrain::finetune::{FinetuneConfig, Targets, finetune};
    let targets = match task {
        Task::Classify { y, classes, .. } => {
            Targets::Classes { y: y.clone(), n_classes: classes.len(), class_balanced: args.class_balanced }
        }
        Task::Regress { y, proportions, .. } => {
            let values = y.iter().map(|&v| v as f32).collect();
            if *proportions {
                Targets::Proportions { values, width: y.ncols() }
            } else {
                Targets::Values { values, width: y.ncols() }
            }
        }
    };
    let cfg = FinetuneConfig {
        epochs: args.finetune_epochs,
        batch_size: args.finetune_batch_size,
        encoder_learning_rate: args.encoder_lr,
        head_learning_rate: args.head_lr,
        seed,
        ..FinetuneConfig::default()
    };
    let started = std::time::Instant::now();
    let model = finetune(encoder, seqs, &fold.train, &targets, &cfg, dev, &mut |step, total, loss| {
        if step % 20 == 0 || step == total {
            tracing::info!(step, total, loss, "fine-tuning");
        }
    });
    tracing::info!(fold = %fold.name, seconds = started.elapsed().as_secs_f64(), losses = ?model.epoch_losses, "fine-tuned");
    let width = match task {
        Task::Classify { classes, .. } => classes.len(),
        Task::Regress { y, .. } => y.ncols(),
    };
    let out = model.predict(seqs, &fold.test, 64);
    let out = Array2::from_shape_vec((fold.test.len(), width), out.into_iter().map(f64::from).collect())?;
    Ok(score(task, fold, out))
}

/// Scores a fold's test predictions: class probabilities (classification) or values.
fn score(task: &Task, fold: &Fold, out: Array2<f64>) -> Scored {
    match task {
        Task::Classify { y, classes, ordered } => {
            let yte: Vec<usize> = fold.test.iter().map(|&i| y[i]).collect();
            let pred = argmax_rows(&out);
            let f1 = metrics::macro_f1(&yte, &pred, classes.len());
            let mut m = vec![
                ("macro_f1".to_owned(), f1),
                ("accuracy".to_owned(), metrics::accuracy(&yte, &pred)),
                ("ece".to_owned(), metrics::expected_calibration_error(out.view(), &yte, 10)),
            ];
            if *ordered {
                let (t, p): (Vec<f64>, Vec<f64>) = yte.iter().zip(&pred).map(|(&t, &p)| (t as f64, p as f64)).unzip();
                m.push(("spearman".to_owned(), metrics::spearman(&t, &p)));
            }
            (f1, m, Some(pred), None)
        }
        Task::Regress { y, .. } => {
            let yte = y.select(Axis(0), &fold.test);
            let r2 = metrics::r2_columns(&yte, &out);
            let (t, p): (Vec<f64>, Vec<f64>) = (yte.iter().copied().collect(), out.iter().copied().collect());
            let mut m = vec![
                ("r2".to_owned(), r2),
                ("mae".to_owned(), metrics::mae(&t, &p)),
                ("mse".to_owned(), metrics::mse(&t, &p)),
            ];
            if y.ncols() == 1 {
                m.push(("spearman".to_owned(), metrics::spearman(&t, &p)));
            }
            (r2, m, None, Some(out))
        }
    }
}

/// One fit: the task, the fold, the head.
struct Fit<'a> {
    task: &'a Task,
    fold: &'a Fold,
    class_balanced: bool,
    head: Head,
    seed: u64,
}

impl Fit<'_> {
    /// Fits the head on `train`, scores `test`.
    fn evaluate(&self, train: &Array2<f64>, test: &Array2<f64>) -> Scored {
        let fold = self.fold;
        let mlp = MlpConfig { seed: self.seed, ..MlpConfig::default() };
        let linear = LogisticConfig { class_balanced: self.class_balanced, ..LogisticConfig::default() };
        let out = match self.task {
            Task::Classify { y, classes, .. } => {
                let ytr: Vec<usize> = fold.train.iter().map(|&i| y[i]).collect();
                match self.head {
                    Head::Linear => {
                        LogisticRegression::fit(train.view(), &ytr, classes.len(), &linear).predict_proba(test.view())
                    }
                    Head::Mlp => {
                        let t = MlpTarget::Classes {
                            y: &ytr,
                            n_classes: classes.len(),
                            class_balanced: self.class_balanced,
                        };
                        Mlp::fit(train.view(), t, &mlp).predict(test.view())
                    }
                }
            }
            Task::Regress { y, proportions, .. } => {
                let ytr = y.select(Axis(0), &fold.train);
                match (self.head, proportions) {
                    (Head::Linear, false) => Ridge::fit(train.view(), ytr.view(), 1e-3).predict(test.view()),
                    (Head::Linear, true) => LogisticRegression::fit_proportions(train.view(), ytr.view(), &linear)
                        .predict_proba(test.view()),
                    (Head::Mlp, false) => {
                        Mlp::fit(train.view(), MlpTarget::Values(ytr.view()), &mlp).predict(test.view())
                    }
                    (Head::Mlp, true) => {
                        Mlp::fit(train.view(), MlpTarget::Proportions(ytr.view()), &mlp).predict(test.view())
                    }
                }
            }
        };
        score(self.task, fold, out)
    }
}

/// Confusion matrices (embedding, each head) and, with coordinates, true vs predicted maps of
/// the first fold's test cells.
fn plots(dir: &std::path::Path, reader: &H5adReader, report: &Report, first: &[Fold]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let Some(truth) = &report.truth_classes else { return Ok(()) };
    let label = report.task.trim_start_matches("classify ");
    for r in report.results.iter().filter(|r| r.features.starts_with("embedding") || r.features == "PCA-50") {
        if let Some(counts) = &r.confusion {
            let slug = if r.features == "PCA-50" { "pca50" } else { "embedding" };
            sof_plot::ConfusionMatrix {
                title: format!("{label}: {} · {} head (held-out folds)", r.features, r.head.name()),
                classes: report.classes.clone(),
                counts: counts.clone(),
            }
            .write_png(&dir.join(format!("confusion_{slug}_{}.png", r.head.name().to_lowercase())), 720)?;
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
                r.head.name()
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

#[cfg(test)]
mod tests {
    use ndarray::array;
    use sof_io::{Column, Frame};

    use super::softmax_of_counts;

    fn obs(counts: Vec<f64>) -> Frame {
        let mut f = Frame::new((0..counts.len()).map(|i| i.to_string()).collect());
        f.insert("n", Column::Float(counts));
        f.insert("name", Column::Str(vec!["a".into(); 3]));
        f
    }

    #[test]
    fn softmax_of_counts_is_the_reference_target() {
        let p = array![[0.5, 0.5, 0.0], [0.0, 0.0, 0.0], [0.25, 0.75, 0.0]];
        let path = std::path::Path::new("x.h5ad");
        // Cell 1 is skipped by `keep`; rows follow the kept cells.
        let y = softmax_of_counts(&obs(vec![4.0, 0.0, 4.0]), path, "c", "n", &[0, 1, 2], p.clone()).unwrap();
        let e2 = 2f64.exp();
        let z = 2.0 * e2 + 1.0;
        for (got, want) in y.row(0).iter().zip([e2 / z, e2 / z, 1.0 / z]) {
            assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        }
        // No neighbours: softmax of zeros is uniform.
        assert!(y.row(1).iter().all(|&v| (v - 1.0 / 3.0).abs() < 1e-12));
        // Counts 1 and 3: nearly all weight on the majority type.
        let (a, b) = (1f64.exp(), 3f64.exp());
        assert!((y[[2, 1]] - b / (a + b + 1.0)).abs() < 1e-12);

        let e = softmax_of_counts(&obs(vec![4.0; 3]), path, "c", "missing", &[0, 1, 2], p.clone()).unwrap_err();
        assert!(e.to_string().contains("no column 'missing'"), "{e}");
        let e = softmax_of_counts(&obs(vec![4.0; 3]), path, "c", "name", &[0, 1, 2], p.clone()).unwrap_err();
        assert!(e.to_string().contains("not a numeric"), "{e}");
        let e = softmax_of_counts(&obs(vec![4.0, f64::NAN, 1.0]), path, "c", "n", &[0, 1, 2], p.clone()).unwrap_err();
        assert!(e.to_string().contains("cell 1"), "{e}");
        let bad = array![[2.0, 0.5, 0.0], [0.0, 0.0, 0.0], [0.25, 0.75, 0.0]];
        let e = softmax_of_counts(&obs(vec![4.0; 3]), path, "c", "n", &[0, 1, 2], bad).unwrap_err();
        assert!(e.to_string().contains("not a proportion vector"), "{e}");
    }
}
