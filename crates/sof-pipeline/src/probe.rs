//! A probe of an .h5ad file as one library call: the cells with a usable target, the folds, the
//! expression and neighbourhood baselines on the same folds, the heads and, optionally, a
//! fine-tuned encoder ([`probe_h5ad`] -> [`ProbeReport`]). `sof probe` parses its flags into a
//! [`ProbeSpec`], calls it and writes the report.

use std::path::PathBuf;

use burn::prelude::*;
use ndarray::{Array2, Axis};
use sof_io::h5ad::H5adReader;
use sof_pretrain::finetune::{FineTuneModel, FinetuneConfig};
use sof_tasks::mlp::MlpConfig;
use sof_tasks::probe::{self, ProbeReport, ProbeTask};
use sof_tasks::split::{Fold, FoldPlan};
use sof_tasks::{Cells, LinearHead, MlpHead, Target};

use crate::cells::obs_column;
use crate::checkpoint::{self, TokenizerOverrides};
use crate::error::{PipelineError, Result};

/// What a probe predicts.
#[derive(Debug, Clone)]
pub enum ProbeTarget {
    /// Classify an obs column; `drop` leaves values out, `class_order` orders the classes of an
    /// `ordered` label (layers, zones: Spearman's rho of the class ranks is reported too).
    Label { key: String, drop: Vec<String>, class_order: Vec<String>, class_balanced: bool, ordered: bool },
    /// Regress a numeric obs column.
    Obs(String),
    /// Regress an obsm matrix, all columns at once; with `softmax_counts` (a numeric obs column
    /// of neighbour counts) in the reference's softmax-of-counts form.
    Obsm { key: String, softmax_counts: Option<String> },
}

/// How cells are dealt into folds.
#[derive(Debug, Clone)]
pub enum Folds {
    /// One fold per value of this obs column (sections, slices, fields of view).
    Sections(String),
    /// The tissue cut into `grid x grid` blocks dealt into `folds` folds.
    SpatialBlocks { grid: usize, folds: usize },
    /// Shuffled cells: only for data without sections or coordinates (dissociated cells).
    Random { folds: usize },
}

/// A head fitted on each feature set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadKind {
    /// Multinomial logistic regression / ridge (softmax-linear for proportions).
    Linear,
    /// One hidden ReLU layer (128), Adam, early stopping on a tenth of the training cells.
    Mlp,
}

/// Fine-tune a checkpoint on each fold's training cells: one more feature set.
#[derive(Debug, Clone)]
pub struct FineTune {
    pub checkpoint: PathBuf,
    pub tokenizer: TokenizerOverrides,
    pub config: FinetuneConfig,
    /// An autodiff device.
    pub device: Device,
}

/// One probe of one file.
#[derive(Debug, Clone)]
pub struct ProbeSpec {
    /// An .h5ad with the embedding in obsm and raw counts in X.
    pub input: PathBuf,
    pub target: ProbeTarget,
    /// obsm key of the embedding; `<key>_niche` is scored beside it when present.
    pub embedding: String,
    /// `None` is an error: random cell folds must be asked for ([`Folds::Random`]).
    pub folds: Option<Folds>,
    /// obs column of sections for the neighbourhood baselines (default: all one section).
    pub section_key: Option<String>,
    /// NichePCA and BANKSY beside the embedding, when obsm['spatial'] exists.
    pub neighbourhood_baselines: bool,
    /// Seeds of the spatial-block assignment and PCA.
    pub seeds: u64,
    /// `col=value` / `col!=value` conditions on obs.
    pub filters: Vec<String>,
    pub heads: Vec<HeadKind>,
    pub finetune: Option<FineTune>,
}

impl ProbeSpec {
    /// A linear probe of `target` from obsm['X_sof'] with leave-one-section-out folds over
    /// `section_key`, beside every baseline, one seed.
    pub fn new(input: impl Into<PathBuf>, target: ProbeTarget, section_key: &str) -> Self {
        ProbeSpec {
            input: input.into(),
            target,
            embedding: "X_sof".into(),
            folds: Some(Folds::Sections(section_key.to_owned())),
            section_key: Some(section_key.to_owned()),
            neighbourhood_baselines: true,
            seeds: 1,
            filters: Vec::new(),
            heads: vec![HeadKind::Linear],
            finetune: None,
        }
    }
}

/// What a probe tells its caller while it runs.
#[derive(Debug, Clone, Copy)]
pub enum ProbeProgress<'a> {
    /// The folds to run, over every seed.
    Planned(u64),
    /// One fold done.
    Fold,
    /// What is being fitted now.
    Stage(&'a str),
}

/// The report and the folds it was scored on.
#[derive(Debug, Clone)]
pub struct ProbeOutcome {
    pub report: ProbeReport,
    /// `(seed, folds)`, indices into the report's cells.
    pub fold_sets: Vec<(u64, Vec<Fold>)>,
}

/// The cells kept (a usable target, not filtered out) and what is predicted for them.
fn task(spec: &ProbeSpec, reader: &H5adReader, obs: &sof_io::Frame) -> Result<(Vec<usize>, ProbeTask)> {
    let n_all = reader.n_obs();
    let file = spec.input.display();
    let allowed = crate::cells::filter_rows(obs, &spec.input, &spec.filters)?;
    match &spec.target {
        ProbeTarget::Obsm { key, softmax_counts } => {
            let y = reader.obsm(key)?;
            let keep: Vec<usize> =
                (0..n_all).filter(|&i| allowed[i] && y.row(i).iter().all(|v| v.is_finite())).collect();
            let names = sof_io::h5ad::read_uns_strings(&spec.input, &format!("{key}_columns"))
                .ok()
                .flatten()
                .filter(|n| n.len() == y.ncols())
                .unwrap_or_else(|| (0..y.ncols()).map(|c| format!("{key}[{c}]")).collect());
            let mut y = y.select(Axis(0), &keep);
            if let Some(count_col) = softmax_counts {
                y = probe::softmax_of_counts(obs, &spec.input, key, count_col, &keep, y)?;
            }
            let proportions = probe::are_proportions(&y);
            let description = match (proportions, softmax_counts.is_some()) {
                (true, true) => format!("regress {key} (softmax of neighbour counts, the reference's form)"),
                (true, false) => format!("regress {key} (proportions)"),
                _ => format!("regress {key}"),
            };
            let target = if proportions { Target::Proportions(y) } else { Target::Values(y) };
            Ok((keep, ProbeTask { description, target, classes: Vec::new(), target_columns: names, ordered: false }))
        }
        ProbeTarget::Label { key, drop, class_order, class_balanced, ordered } => {
            let col = obs_column(obs, &spec.input, key)?;
            let labels = col.labels();
            let keep: Vec<usize> =
                (0..n_all).filter(|&i| allowed[i] && labels[i].as_ref().is_some_and(|l| !drop.contains(l))).collect();
            let mut classes: Vec<String> = keep.iter().filter_map(|&i| labels[i].clone()).collect();
            classes.sort();
            classes.dedup();
            let classes = probe::order_classes(classes, class_order, &spec.input)?;
            let y = keep
                .iter()
                .map(|&i| classes.iter().position(|c| Some(c) == labels[i].as_ref()).expect("a class"))
                .collect();
            let target = Target::Classes { y, n_classes: classes.len(), class_balanced: *class_balanced };
            let description = format!("classify {key}");
            Ok((keep, ProbeTask { description, target, classes, target_columns: Vec::new(), ordered: *ordered }))
        }
        ProbeTarget::Obs(key) => {
            let col = obs_column(obs, &spec.input, key)?;
            let v = col.as_f64().ok_or_else(|| {
                PipelineError::input(
                    &file,
                    format!("obs '{key}' is {}, not numeric; use --label for labels", col.kind()),
                )
            })?;
            let keep: Vec<usize> = (0..n_all).filter(|&i| allowed[i] && v[i].is_finite()).collect();
            let y = Array2::from_shape_fn((keep.len(), 1), |(i, _)| v[keep[i]]);
            let task = ProbeTask {
                description: format!("regress {key}"),
                target: Target::Values(y),
                classes: Vec::new(),
                target_columns: vec![key.clone()],
                ordered: false,
            };
            Ok((keep, task))
        }
    }
}

/// Every cell's position and section, for the neighbourhood baselines.
fn section_points(spec: &ProbeSpec, reader: &H5adReader, obs: &sof_io::Frame) -> Result<sof_spatial::SectionedPoints> {
    let file = spec.input.display();
    let xy = reader.obsm("spatial")?;
    if xy.ncols() < 2 {
        return Err(PipelineError::input(
            &file,
            format!("obsm['spatial'] has {} column(s); coordinates need x and y", xy.ncols()),
        ));
    }
    let sections: Vec<u32> = match &spec.section_key {
        Some(key) => {
            let col = obs
                .get(key)
                .ok_or_else(|| PipelineError::input(&file, format!("obs has no column '{key}' (sections)")))?;
            let labels = col.labels();
            let mut names: Vec<&Option<String>> = labels.iter().collect();
            names.sort();
            names.dedup();
            labels.iter().map(|l| names.binary_search(&l).unwrap_or(0) as u32).collect()
        }
        None => vec![0; xy.nrows()],
    };
    let pts: Vec<[f64; 2]> = xy.rows().into_iter().map(|r| [r[0], r[1]]).collect();
    sof_spatial::SectionedPoints::new(pts, &sections).map_err(|e| {
        PipelineError::input(&file, format!("obsm['spatial']: {e} (or pass --no-neighbourhood-baselines)"))
    })
}

/// The folds the spec asks for.
fn fold_plan(spec: &ProbeSpec, reader: &H5adReader, obs: &sof_io::Frame, keep: &[usize]) -> Result<FoldPlan> {
    Ok(match &spec.folds {
        Some(Folds::Sections(key)) => {
            let g = obs
                .get(key)
                .ok_or_else(|| PipelineError::input(spec.input.display(), format!("obs has no column '{key}'")))?;
            let labels = g.labels();
            FoldPlan::Groups(keep.iter().map(|&i| labels[i].clone().unwrap_or_default()).collect())
        }
        Some(Folds::SpatialBlocks { grid, folds }) => {
            let xy = reader
                .obsm("spatial")
                .map_err(|e| PipelineError::setting(format!("spatial blocks need obsm['spatial']: {e}")))?;
            FoldPlan::SpatialBlocks {
                xy: keep.iter().map(|&i| (xy[[i, 0]], xy[[i, 1]])).collect(),
                grid: *grid,
                folds: *folds,
            }
        }
        Some(Folds::Random { folds }) => FoldPlan::Random { cells: keep.len(), folds: *folds },
        None => {
            return Err(PipelineError::setting(
                "pass --split-key <obs column> or --spatial-blocks <N> (random cell splits leak neighbours; \
                 --random-folds is for dissociated data)",
            ));
        }
    })
}

/// Probes `spec.input`: the embedding (and `<embedding>_niche` when present) beside PCA of the
/// expression, raw expression where the panel is small, and the neighbourhood baselines, every
/// feature set with every head on the same folds.
pub fn probe_h5ad(spec: &ProbeSpec, progress: &mut dyn FnMut(ProbeProgress<'_>)) -> Result<ProbeOutcome> {
    let reader = H5adReader::open(&spec.input)?;
    let file = spec.input.display();
    let obs = reader.obs()?;
    let (keep, task) = task(spec, &reader, &obs)?;
    if keep.len() < 10 {
        return Err(PipelineError::input(&file, format!("only {} cells have a usable target", keep.len())));
    }
    let emb = reader.obsm(&spec.embedding).map_err(|e| match e {
        sof_io::Error::MissingField { .. } => PipelineError::input(
            &file,
            format!("obsm['{}'] is missing: run `sof embed` first (or pass --embedding <obsm key>)", spec.embedding),
        ),
        other => other.into(),
    })?;
    let all = reader.read_rows(0..reader.n_obs())?;
    let n_genes = all.n_cols();
    let mut obsm: std::collections::BTreeMap<String, Array2<f64>> =
        [(spec.embedding.clone(), emb.select(Axis(0), &keep))].into();
    // The niche embedding of the same model (`sof embed` of a spatial file), scored beside it.
    let niche_key = format!("{}_niche", spec.embedding);
    let niche = reader.obsm_keys().contains(&niche_key).then_some(niche_key);
    if let Some(k) = &niche {
        obsm.insert(k.clone(), reader.obsm(k)?.select(Axis(0), &keep));
    }
    let mut cells = Cells::new(all.select_rows(&keep), obsm)?;
    let spatial = spec.neighbourhood_baselines && reader.obsm_keys().iter().any(|k| k == "spatial");
    if spatial {
        let points = section_points(spec, &reader, &obs)?;
        cells = cells.with_neighbourhoods(&all, &points, &keep, &probe::NEIGHBOURHOOD_K)?;
    }
    let fold_sets = fold_plan(spec, &reader, &obs, &keep)?.fold_sets(spec.seeds)?;
    let (embedders, sets) = probe::standard_features(&spec.embedding, niche.as_deref(), n_genes, spatial);
    let mut kinds = spec.heads.clone();
    kinds.dedup();
    let heads = |seed: u64| -> Vec<Box<dyn sof_tasks::Head>> {
        kinds
            .iter()
            .map(|h| -> Box<dyn sof_tasks::Head> {
                match h {
                    HeadKind::Linear => Box::new(LinearHead::default()),
                    HeadKind::Mlp => Box::new(MlpHead(MlpConfig { seed, ..MlpConfig::default() })),
                }
            })
            .collect()
    };
    // Fine-tuning: the checkpoint and its tokens for the kept cells, one more result row.
    let (loaded, seqs) = match &spec.finetune {
        Some(ft) => {
            let loaded = checkpoint::load(&ft.checkpoint, None, &ft.tokenizer, &spec.input, &ft.device)?;
            let seqs = loaded.tokenize_all()?;
            (Some((loaded.model, ft)), keep.iter().map(|&i| seqs[i].clone()).collect::<Vec<_>>())
        }
        None => (None, Vec::new()),
    };
    let finetune = loaded.map(|(encoder, ft)| FineTuneModel {
        name: format!("fine-tuned ({})", ft.checkpoint.display()),
        encoder,
        seqs: &seqs,
        config: ft.config.clone(),
        device: ft.device.clone(),
    });
    progress(ProbeProgress::Planned(fold_sets.iter().map(|f| f.1.len() as u64).sum()));
    let report = probe::probe(
        &spec.input.display().to_string(),
        keep,
        &cells,
        &task,
        &fold_sets,
        &embedders,
        &sets,
        &heads,
        finetune.as_ref().map(|m| m as &dyn probe::CellModel),
        &mut |what| match what {
            "fold" => progress(ProbeProgress::Fold),
            other => progress(ProbeProgress::Stage(other)),
        },
    )?;
    Ok(ProbeOutcome { report, fold_sets })
}
