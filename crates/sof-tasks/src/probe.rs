//! Probes: every feature set (an [`Embedder`]) with every [`Head`], and optionally an
//! end-to-end [`CellModel`] (a fine-tuned encoder), fitted on the training cells of the same
//! folds and scored on the held-out ones; the typed [`ProbeReport`] is what `sof probe` writes.

use std::collections::BTreeMap;
use std::path::Path;

use ndarray::{Array2, Axis};
use sof_io::Frame;

use crate::linear::argmax_rows;
use crate::metrics;
use crate::split::Fold;
use crate::{Cells, Embedder, Head, ObsmEmbedder, PcaEmbedder, RawEmbedder, Target, TaskError};
pub use sof_report::{FeatureResult, ProbeReport};

/// A model trained on cells end to end (e.g. the encoder fine-tuned with a head), scored beside
/// the feature sets on the same folds: the fit / predict seam of [`Head`] at the level of cells.
pub trait CellModel {
    /// Name in reports.
    fn name(&self) -> String;
    /// Trains on cells `train` (indices into the probe's cells) with seed `seed`.
    fn fit(&self, train: &[usize], target: &Target, seed: u64) -> Result<Box<dyn CellPredictor + '_>, TaskError>;
}

/// A trained [`CellModel`].
pub trait CellPredictor {
    /// Predictions for cells `rows`: class probabilities, values or proportions, `rows x width`.
    fn predict(&self, rows: &[usize]) -> Result<Array2<f64>, TaskError>;
}

/// What is probed: the target of each kept cell, with names for the report.
#[derive(Debug, Clone)]
pub struct ProbeTask {
    /// E.g. `classify layer`, `regress sof_density`.
    pub description: String,
    pub target: Target,
    /// Class names (classification), in code order.
    pub classes: Vec<String>,
    /// Names of the regressed columns.
    pub target_columns: Vec<String>,
    /// Ordered classes: Spearman's rho between true and predicted class ranks is reported too.
    pub ordered: bool,
}

/// A feature set: one embedder, or the best of several on each fold's test cells (PCA-best, an
/// optimistic baseline on purpose).
#[derive(Debug, Clone)]
pub struct FeatureSet {
    pub name: String,
    /// Indices into the fold's embedders.
    pub members: Vec<usize>,
}

/// Runs a probe. `embedders(seed)` gives the fold's feature extractors (fitted per fold);
/// `sets` name them; every set is tried with every head of `heads(seed)`, then `model` (if any)
/// on the same folds. `fold_sets` are `(seed, folds)` pairs (the seed drives PCA and the MLP); predictions
/// and confusion come from the first. `progress` is told each finished fold.
#[allow(clippy::too_many_arguments)]
pub fn probe(
    input: &str,
    cell_index: Vec<usize>,
    cells: &Cells,
    task: &ProbeTask,
    fold_sets: &[(u64, Vec<Fold>)],
    embedders: &dyn Fn(u64) -> Vec<Box<dyn Embedder>>,
    sets: &[FeatureSet],
    heads: &dyn Fn(u64) -> Vec<Box<dyn Head>>,
    model: Option<&dyn CellModel>,
    progress: &mut dyn FnMut(&str),
) -> Result<ProbeReport, TaskError> {
    let n = task.target.len();
    if cells.len() != n || cell_index.len() != n {
        return Err(TaskError::Invalid(format!("{} cells, {} targets, {} indices", cells.len(), n, cell_index.len())));
    }
    let n_classes = task.classes.len();
    let empty = |features: String, head: &str| FeatureResult {
        features,
        head: head.to_owned(),
        values: BTreeMap::new(),
        mean: BTreeMap::new(),
        sd: BTreeMap::new(),
        confusion: task.target.classes().map(|_| vec![vec![0; n_classes]; n_classes]),
        predicted_classes: task.target.classes().map(|_| vec![-1; n]),
        predicted_values: task.target.values().map(|y| vec![vec![f64::NAN; y.ncols()]; n]),
    };
    let names: Vec<&'static str> = heads(0).iter().map(|h| h.name()).collect();
    let mut results: Vec<FeatureResult> =
        names.iter().flat_map(|h| sets.iter().map(move |s| (h, s))).map(|(h, s)| empty(s.name.clone(), h)).collect();
    let n_standard = results.len();
    if let Some(m) = model {
        results.push(empty(m.name(), "linear"));
    }
    let first_seed = fold_sets.first().map(|f| f.0);
    for (seed, folds) in fold_sets {
        for fold in folds {
            if fold.train.is_empty() || fold.test.is_empty() {
                continue;
            }
            let target_train = task.target.select(&fold.train);
            let heads = heads(*seed);
            // Features of every embedder, fitted on the training cells only.
            let mut features = Vec::new();
            for mut e in embedders(*seed) {
                e.fit(cells, &fold.train)?;
                features.push((e.embed(cells, &fold.train)?, e.embed(cells, &fold.test)?));
            }
            let first = Some(*seed) == first_seed;
            for (idx, res) in results.iter_mut().enumerate() {
                let scored = if idx >= n_standard {
                    let Some(m) = model else { continue };
                    progress("fine-tune");
                    let out = m.fit(&fold.train, &target_train, *seed)?.predict(&fold.test)?;
                    score(task, fold, out)
                } else {
                    let (head, set) = (&heads[idx / sets.len()], &sets[idx % sets.len()]);
                    // The best member on the test cells (one member: that one).
                    let mut best: Option<Scored> = None;
                    for &m in &set.members {
                        let (train, test) = &features[m];
                        let out = head.fit(train.view(), &target_train).predict(test.view());
                        let r = score(task, fold, out);
                        if best.as_ref().is_none_or(|b| r.0 > b.0) {
                            best = Some(r);
                        }
                    }
                    best.ok_or_else(|| TaskError::Invalid(format!("feature set '{}' has no member", set.name)))?
                };
                record(res, scored, fold, &task.target, first);
            }
            progress("fold");
        }
    }
    for r in &mut results {
        for (m, v) in &r.values {
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            let sd =
                (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len().max(2).saturating_sub(1) as f64).sqrt();
            r.mean.insert(m.clone(), mean);
            r.sd.insert(m.clone(), sd);
        }
    }
    Ok(ProbeReport {
        input: input.to_owned(),
        task: task.description.clone(),
        classes: task.classes.clone(),
        cells: n,
        cell_index,
        truth_classes: task.target.classes().map(<[usize]>::to_vec),
        truth_values: task.target.values().map(|y| y.rows().into_iter().map(|r| r.to_vec()).collect()),
        target_columns: task.target_columns.clone(),
        folds: fold_sets.first().map(|f| f.1.iter().map(|f| f.name.clone()).collect()).unwrap_or_default(),
        results,
    })
}

/// A prediction's score on one fold: (headline score, metrics, predicted classes, predicted
/// values).
type Scored = (f64, Vec<(String, f64)>, Option<Vec<usize>>, Option<Array2<f64>>);

/// Adds one fold's scores to a result (predictions and confusion from the first seed only).
fn record(res: &mut FeatureResult, scored: Scored, fold: &Fold, target: &Target, first_seed: bool) {
    let (_, score_metrics, predicted, values) = scored;
    for (m, v) in score_metrics {
        res.values.entry(m).or_default().push(v);
    }
    if !first_seed {
        return;
    }
    if let (Some(conf), Some(pred), Some(y)) = (res.confusion.as_mut(), &predicted, target.classes()) {
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

/// Scores a fold's test predictions: class probabilities (classification; macro F1 is the
/// headline) or values (R²).
fn score(task: &ProbeTask, fold: &Fold, out: Array2<f64>) -> Scored {
    match &task.target {
        Target::Classes { y, n_classes, .. } => {
            let yte: Vec<usize> = fold.test.iter().map(|&i| y[i]).collect();
            let pred = argmax_rows(&out);
            let f1 = metrics::macro_f1(&yte, &pred, *n_classes);
            let mut m = vec![
                ("macro_f1".to_owned(), f1),
                ("accuracy".to_owned(), metrics::accuracy(&yte, &pred)),
                ("ece".to_owned(), metrics::expected_calibration_error(out.view(), &yte, 10)),
            ];
            if task.ordered {
                let (t, p): (Vec<f64>, Vec<f64>) = yte.iter().zip(&pred).map(|(&t, &p)| (t as f64, p as f64)).unzip();
                m.push(("spearman".to_owned(), metrics::spearman(&t, &p)));
            }
            (f1, m, Some(pred), None)
        }
        Target::Values(y) | Target::Proportions(y) => {
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

/// Neighbour counts of the NichePCA grid.
pub const NICHE_PCA_K: [usize; 3] = [10, 20, 50];
/// Neighbour count and weights of the BANKSY-style grid.
pub const BANKSY_K: usize = 20;
pub const BANKSY_LAMBDA: [f64; 3] = [0.2, 0.5, 0.8];
/// The neighbour means the neighbourhood baselines need ([`Cells::with_neighbourhoods`]).
pub const NEIGHBOURHOOD_K: [usize; 3] = NICHE_PCA_K;

/// The feature sets every probe compares: the embedding in obsm `key`, PCA-50, PCA-best (the
/// best of 10 / 20 / 50 / 100 components on each fold's test cells), for panels of at most
/// [`RawEmbedder::MAX_GENES`] genes the raw log-normalized expression, and with `spatial` (the
/// cells carry neighbour means) the neighbourhood baselines, each the best of a small grid on
/// the test cells, optimistic on purpose like PCA-best: NichePCA-best (50 components, k in
/// [`NICHE_PCA_K`]) and BANKSY-best (50 components, k = [`BANKSY_K`], lambda in
/// [`BANKSY_LAMBDA`]). `niche_key` adds a second embedding, the niche embedding of the same
/// model (obsm `X_sof_niche` from `sof embed`), first after `key`'s. Returns the embedders of a
/// fold (PCA seeded by the fold's seed) and the sets over them.
pub fn standard_features(
    key: &str,
    niche_key: Option<&str>,
    n_genes: usize,
    spatial: bool,
) -> (impl Fn(u64) -> Vec<Box<dyn Embedder>> + use<>, Vec<FeatureSet>) {
    use crate::neighbourhood::{Neighbourhood, NeighbourhoodPca};
    let raw = n_genes <= RawEmbedder::MAX_GENES;
    let owned_key = key.to_owned();
    let owned_niche = niche_key.map(str::to_owned);
    let embedders = move |seed: u64| -> Vec<Box<dyn Embedder>> {
        let mut e: Vec<Box<dyn Embedder>> = vec![Box::new(ObsmEmbedder { key: owned_key.clone() })];
        e.extend([10, 20, 50, 100].map(|k| Box::new(PcaEmbedder::new(k, seed)) as Box<dyn Embedder>));
        if raw {
            e.push(Box::new(RawEmbedder));
        }
        if spatial {
            for k in NICHE_PCA_K {
                e.push(Box::new(NeighbourhoodPca::new(Neighbourhood::NichePca { k }, 50, seed)));
            }
            for lambda in BANKSY_LAMBDA {
                e.push(Box::new(NeighbourhoodPca::new(Neighbourhood::Banksy { k: BANKSY_K, lambda }, 50, seed)));
            }
        }
        if let Some(k) = &owned_niche {
            e.push(Box::new(ObsmEmbedder { key: k.clone() }));
        }
        e
    };
    let mut sets = vec![
        FeatureSet { name: format!("embedding ({key})"), members: vec![0] },
        FeatureSet { name: "PCA-50".into(), members: vec![3] },
        FeatureSet { name: "PCA-best".into(), members: vec![1, 2, 3, 4] },
    ];
    let mut next = 5;
    if raw {
        sets.push(FeatureSet { name: "raw log-normalized".into(), members: vec![5] });
        next += 1;
    }
    if spatial {
        let banksy = next + NICHE_PCA_K.len();
        sets.push(FeatureSet { name: "NichePCA-best".into(), members: (next..banksy).collect() });
        sets.push(FeatureSet { name: "BANKSY-best".into(), members: (banksy..banksy + BANKSY_LAMBDA.len()).collect() });
        next = banksy + BANKSY_LAMBDA.len();
    }
    if let Some(k) = niche_key {
        // Right after the cell embedding in reports.
        sets.insert(1, FeatureSet { name: format!("niche embedding ({k})"), members: vec![next] });
    }
    (embedders, sets)
}

/// Class names in order: as given, numerically when all are numbers, else by name.
pub fn order_classes(mut classes: Vec<String>, given: &[String], path: &Path) -> Result<Vec<String>, TaskError> {
    if !given.is_empty() {
        if let Some(c) = classes.iter().find(|c| !given.contains(c)) {
            return Err(TaskError::Invalid(format!(
                "{}: class '{c}' is missing from the class order ({})",
                path.display(),
                given.join(",")
            )));
        }
        return Ok(given.iter().filter(|g| classes.contains(g)).cloned().collect());
    }
    if classes.iter().all(|c| c.trim().parse::<f64>().is_ok()) {
        classes
            .sort_by(|a, b| a.trim().parse::<f64>().unwrap_or(0.0).total_cmp(&b.trim().parse::<f64>().unwrap_or(0.0)));
    }
    Ok(classes)
}

/// Whether rows are proportions: non-negative, each summing to 1 (or all zero: a cell without
/// neighbours).
pub fn are_proportions(y: &Array2<f64>) -> bool {
    y.iter().all(|&v| v >= 0.0)
        && y.rows().into_iter().all(|r| {
            let s = r.sum();
            s == 0.0 || (s - 1.0).abs() < 1e-4
        })
}

/// The reference's composition target: per cell, softmax over the neighbour counts of each cell
/// type, where counts = proportions x the neighbour count in obs `count_col`. A cell without
/// neighbours gets the uniform distribution, as softmax of zeros does in the reference.
pub fn softmax_of_counts(
    obs: &Frame,
    input: &Path,
    key: &str,
    count_col: &str,
    keep: &[usize],
    proportions: Array2<f64>,
) -> Result<Array2<f64>, TaskError> {
    let bad = |m: String| TaskError::Invalid(format!("{}: {m}", input.display()));
    let col = obs.get(count_col).ok_or_else(|| {
        bad(format!(
            "obs has no column '{count_col}' for --softmax-counts (run `sof spatial`, which writes sof_density)"
        ))
    })?;
    let counts = col
        .as_f64()
        .ok_or_else(|| bad(format!("obs '{count_col}' is {}, not a numeric neighbour count", col.kind())))?;
    let mut y = proportions;
    for (mut row, &i) in y.rows_mut().into_iter().zip(keep) {
        let n = counts[i];
        if !n.is_finite() || n < 0.0 {
            return Err(bad(format!("obs '{count_col}' of cell {i} is {n}, not a neighbour count")));
        }
        let s = row.sum();
        if row.iter().any(|&p| p < 0.0) || (s != 0.0 && (s - 1.0).abs() > 1e-4) {
            return Err(bad(format!(
                "obsm '{key}' row {i} is not a proportion vector (sum {s}); --softmax-counts needs proportions"
            )));
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

#[cfg(test)]
mod tests {
    use ndarray::array;
    use sof_io::{Column, Frame};

    use super::*;
    use crate::split::by_group;
    use crate::{LinearHead, ObsmEmbedder, PcaEmbedder};

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

    /// An embedding that carries the label beats PCA of expression that does not; every cell is
    /// tested once per seed; the report round-trips through JSON.
    #[test]
    fn the_probe_scores_every_feature_set_on_the_same_folds() {
        let n = 200;
        let y: Vec<usize> = (0..n).map(|i| i % 2).collect();
        let counts = sof_io::CsrMatrix::from_dense(
            n,
            4,
            &(0..n * 4).map(|k| ((k * 7919) % 11) as f32 + 1.0).collect::<Vec<_>>(),
        );
        let emb =
            Array2::from_shape_fn((n, 2), |(i, j)| if j == 0 { y[i] as f64 + 0.01 * (i % 7) as f64 } else { 0.5 });
        let cells = Cells::new(counts, [("X_sof".to_owned(), emb)].into()).unwrap();
        let task = ProbeTask {
            description: "classify label".into(),
            target: Target::Classes { y: y.clone(), n_classes: 2, class_balanced: false },
            classes: vec!["a".into(), "b".into()],
            target_columns: vec![],
            ordered: false,
        };
        let groups: Vec<String> = (0..n).map(|i| format!("s{}", i / 50)).collect();
        let folds = vec![(0, by_group(&groups))];
        let embedders = |seed| -> Vec<Box<dyn Embedder>> {
            vec![Box::new(ObsmEmbedder { key: "X_sof".into() }), Box::new(PcaEmbedder::new(2, seed))]
        };
        let sets = [
            FeatureSet { name: "embedding (X_sof)".into(), members: vec![0] },
            FeatureSet { name: "PCA-2".into(), members: vec![1] },
        ];
        let heads = |_| -> Vec<Box<dyn Head>> { vec![Box::new(LinearHead::default())] };
        let mut folds_done = 0;
        let r = probe("toy", (0..n).collect(), &cells, &task, &folds, &embedders, &sets, &heads, None, &mut |what| {
            folds_done += usize::from(what == "fold")
        })
        .unwrap();
        assert_eq!(folds_done, 4);
        let emb = r.result("embedding", "linear").unwrap();
        assert!(emb.mean["macro_f1"] > 0.99, "{:?}", emb.mean);
        assert!(r.result("PCA", "linear").unwrap().mean["macro_f1"] < 0.8);
        assert!(emb.predicted_classes.as_ref().unwrap().iter().all(|&p| p >= 0), "every cell tested");
        assert_eq!(emb.confusion.as_ref().unwrap().iter().flatten().sum::<u64>(), n as u64);
        let back: ProbeReport = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back.results.len(), r.results.len());
        assert_eq!(back.cell_index, r.cell_index);
    }
}
