//! Placing query cells (e.g. dissociated) onto a spatial reference by embedding similarity:
//! each query cell's `k` most similar reference cells (cosine), weighted by a softmax over
//! similarity / temperature, give a distribution over reference cells — hence label
//! probabilities, expected coordinates and their spread.

use std::collections::BTreeMap;

use ndarray::{Array1, Array2, ArrayView2, Axis};

use crate::TaskError;
pub use sof_report::{MapReport, Mapper};

/// Settings of [`map_cells`].
#[derive(Debug, Clone)]
pub struct MapConfig {
    pub k: usize,
    /// Softmax temperature over cosine similarities (smaller = sharper).
    pub temperature: f64,
    /// In [`transfer`]: subtract each side's own mean (the reference's over its cells, the
    /// query's over its cells) before similarities and heads, removing a shift between
    /// technologies or batches. It assumes the query samples roughly the reference's mix of
    /// cells (a query of one cell type loses what sets it apart). Off: both keep their values.
    pub center_each: bool,
}

impl Default for MapConfig {
    fn default() -> Self {
        Self { k: 30, temperature: 0.05, center_each: false }
    }
}

/// `x` minus its column means (a copy; an empty matrix stays empty).
pub fn centered(x: ArrayView2<f64>) -> Array2<f64> {
    match x.mean_axis(Axis(0)) {
        Some(mean) => &x - &mean,
        None => x.to_owned(),
    }
}

/// Where each query cell probably sits.
#[derive(Debug, Clone)]
pub struct Mapping {
    /// `query x n_labels` probabilities (rows sum to 1).
    pub label_probabilities: Array2<f64>,
    /// `query x 2` expected coordinates.
    pub location: Array2<f64>,
    /// Root of the weighted mean squared distance to the expected location.
    pub spread: Array1<f64>,
    /// Weighted mean of any per-reference-cell targets (e.g. composition, density), `query x t`.
    pub targets: Option<Array2<f64>>,
}

pub(crate) fn normalize_rows(x: ArrayView2<f64>) -> Array2<f64> {
    let mut y = x.to_owned();
    for mut r in y.rows_mut() {
        let n = r.dot(&r).sqrt();
        if n > 0.0 {
            r /= n;
        }
    }
    y
}

/// The `k` most similar reference cells of one query cell (`sims`: its cosine similarity to
/// every reference cell) and their softmax weights over similarity / temperature, summing to 1.
pub(crate) fn top_k_weights(sims: ndarray::ArrayView1<f64>, cfg: &MapConfig) -> Vec<(usize, f64)> {
    let k = cfg.k.clamp(1, sims.len().max(1));
    let mut idx: Vec<usize> = (0..sims.len()).collect();
    if idx.is_empty() {
        return Vec::new();
    }
    idx.select_nth_unstable_by(k - 1, |&a, &b| sims[b].total_cmp(&sims[a]));
    idx.truncate(k);
    let top = idx.iter().map(|&j| sims[j]).fold(f64::MIN, f64::max);
    let w: Vec<f64> = idx.iter().map(|&j| ((sims[j] - top) / cfg.temperature).exp()).collect();
    let total: f64 = w.iter().sum();
    idx.into_iter().zip(w).map(|(j, w)| (j, w / total)).collect()
}

/// Maps `query` embeddings onto `reference` ones. `labels[i]` is reference cell i's label code
/// (< `n_labels`), `xy` its coordinates, `targets` optional per-cell values to transfer.
pub fn map_cells(
    reference: ArrayView2<f64>,
    labels: &[usize],
    n_labels: usize,
    xy: ArrayView2<f64>,
    targets: Option<ArrayView2<f64>>,
    query: ArrayView2<f64>,
    cfg: &MapConfig,
) -> Mapping {
    let r = normalize_rows(reference);
    let q = normalize_rows(query);
    let nq = q.nrows();
    let mut probs = Array2::<f64>::zeros((nq, n_labels));
    let mut loc = Array2::<f64>::zeros((nq, 2));
    let mut spread = Array1::<f64>::zeros(nq);
    let mut tg = targets.map(|t| Array2::<f64>::zeros((nq, t.ncols())));
    for (start, block) in q.axis_chunks_iter(Axis(0), 256).enumerate().map(|(b, x)| (b * 256, x)) {
        let sims = block.dot(&r.t()); // [block, n_ref]
        for (i, row) in sims.rows().into_iter().enumerate() {
            let qi = start + i;
            let weights = top_k_weights(row, cfg);
            let (mut mx, mut my) = (0.0, 0.0);
            for &(j, wj) in &weights {
                probs[[qi, labels[j]]] += wj;
                mx += wj * xy[[j, 0]];
                my += wj * xy[[j, 1]];
                if let (Some(tg), Some(t)) = (tg.as_mut(), targets) {
                    tg.row_mut(qi).scaled_add(wj, &t.row(j));
                }
            }
            let var: f64 =
                weights.iter().map(|&(j, wj)| wj * ((xy[[j, 0]] - mx).powi(2) + (xy[[j, 1]] - my).powi(2))).sum();
            loc[[qi, 0]] = mx;
            loc[[qi, 1]] = my;
            spread[qi] = var.sqrt();
        }
    }
    Mapping { label_probabilities: probs, location: loc, spread, targets: tg }
}

/// Replaces the neighbour vote's label probabilities and targets in `m` with those of a head
/// trained on the reference cells (`None` keeps the vote). `targets` columns: composition
/// (`n_comp`, proportions) then single values (density, transferred columns), each fitted on the
/// reference rows where it is finite. Locations always stay the neighbours'.
#[allow(clippy::too_many_arguments)]
pub fn predict_with_head(
    head: Option<&dyn crate::Head>,
    ref_x: ArrayView2<f64>,
    codes: &[usize],
    n_classes: usize,
    targets: Option<ArrayView2<f64>>,
    n_comp: usize,
    query_x: ArrayView2<f64>,
    m: &mut Mapping,
) {
    use crate::Target;
    let Some(head) = head else { return };
    let classes = Target::Classes { y: codes.to_vec(), n_classes, class_balanced: false };
    m.label_probabilities = head.fit(ref_x, &classes).predict(query_x);
    let (Some(t), Some(out)) = (targets, m.targets.as_mut()) else { return };
    if n_comp > 0 {
        let comp = Target::Proportions(t.slice(ndarray::s![.., 0..n_comp]).to_owned());
        out.slice_mut(ndarray::s![.., 0..n_comp]).assign(&head.fit(ref_x, &comp).predict(query_x));
    }
    for j in n_comp..t.ncols() {
        let rows: Vec<usize> = (0..t.nrows()).filter(|&i| t[[i, j]].is_finite()).collect();
        if rows.len() < 2 {
            continue;
        }
        let x = ref_x.select(Axis(0), &rows);
        let y = Target::Values(t.slice(ndarray::s![.., j..j + 1]).select(Axis(0), &rows));
        out.column_mut(j).assign(&head.fit(x.view(), &y).predict(query_x).column(0));
    }
}

/// The reference side of [`transfer`]: the reference cells' embeddings, label codes (into
/// `classes`), coordinates and the per-cell values to carry over to the query.
#[derive(Debug, Clone)]
pub struct Reference {
    pub embedding: Array2<f64>,
    pub labels: Vec<usize>,
    pub classes: Vec<String>,
    /// `cells x 2`.
    pub xy: Array2<f64>,
    /// Neighbourhood composition (`cells x cell types`, proportions), from `sof spatial`.
    pub composition: Option<Array2<f64>>,
    /// Local density (neighbour count).
    pub density: Option<Vec<f64>>,
    /// Numeric columns to transfer, by name (may hold NaN where unknown).
    pub transfer: Vec<(String, Vec<f64>)>,
}

impl Reference {
    /// A reference from each cell's embedding row, label and coordinates (the first two
    /// columns of `xy`); classes are the labels' distinct values, sorted.
    pub fn new(embedding: Array2<f64>, labels: &[String], xy: ArrayView2<f64>) -> Result<Self, TaskError> {
        let n = embedding.nrows();
        if labels.len() != n || xy.nrows() != n {
            return Err(TaskError::Invalid(format!(
                "the reference has {n} embedded cells, {} labels and {} positions",
                labels.len(),
                xy.nrows()
            )));
        }
        if n == 0 {
            return Err(TaskError::Invalid("the reference has no labelled cell".into()));
        }
        if xy.ncols() < 2 {
            return Err(TaskError::Invalid(format!(
                "the reference coordinates have {} column(s); mapping needs x and y",
                xy.ncols()
            )));
        }
        let mut classes = labels.to_vec();
        classes.sort();
        classes.dedup();
        let labels = labels.iter().map(|l| classes.binary_search(l).expect("a class")).collect();
        Ok(Self {
            embedding,
            labels,
            classes,
            xy: xy.slice(ndarray::s![.., 0..2]).to_owned(),
            composition: None,
            density: None,
            transfer: Vec::new(),
        })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Every per-cell value to transfer as one matrix: composition, density, then the transfer
    /// columns (None when there is none).
    fn targets(&self) -> Result<Option<Array2<f64>>, TaskError> {
        let n = self.len();
        let mut cols: Vec<ndarray::Array1<f64>> = Vec::new();
        if let Some(c) = &self.composition {
            if c.nrows() != n {
                return Err(TaskError::Invalid(format!("composition has {} rows for {n} cells", c.nrows())));
            }
            cols.extend(c.columns().into_iter().map(|c| c.to_owned()));
        }
        let singles =
            self.density.iter().map(|d| ("density", d)).chain(self.transfer.iter().map(|(c, v)| (c.as_str(), v)));
        for (name, v) in singles {
            if v.len() != n {
                return Err(TaskError::Invalid(format!("'{name}' has {} values for {n} cells", v.len())));
            }
            cols.push(ndarray::Array1::from(v.clone()));
        }
        if cols.is_empty() {
            return Ok(None);
        }
        let views: Vec<_> = cols.iter().map(|c| c.view().insert_axis(Axis(1))).collect();
        Ok(Some(ndarray::concatenate(Axis(1), &views).expect("same rows")))
    }
}

/// Query cells placed on a [`Reference`] by [`transfer`].
#[derive(Debug, Clone)]
pub struct Transferred {
    /// Label probabilities (classes of the reference), expected location and its spread.
    pub mapping: Mapping,
    /// The most probable class per query cell, and its probability.
    pub predicted: Vec<usize>,
    pub confidence: Vec<f64>,
    pub composition: Option<Array2<f64>>,
    pub density: Option<Vec<f64>>,
    /// Per reference transfer column, in its order.
    pub transferred: Vec<Vec<f64>>,
}

/// Maps `query` embeddings onto `reference`: locations from the softmax-weighted neighbours,
/// labels and values from them too, or from `head` trained on the reference cells.
pub fn transfer(
    reference: &Reference,
    query: ArrayView2<f64>,
    cfg: &MapConfig,
    head: Option<&dyn crate::Head>,
) -> Result<Transferred, TaskError> {
    if cfg.temperature.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) || cfg.k == 0 {
        return Err(TaskError::Invalid("the temperature must be > 0 and k at least 1".into()));
    }
    if reference.embedding.ncols() != query.ncols() {
        return Err(TaskError::Invalid(format!(
            "the reference has {}-d embeddings but the query {}-d: embed both with the same model",
            reference.embedding.ncols(),
            query.ncols()
        )));
    }
    if cfg.center_each && (reference.embedding.nrows() < 2 || query.nrows() < 2) {
        return Err(TaskError::Invalid(format!(
            "centring each side needs at least 2 cells on each (reference {}, query {}): one cell minus its own mean is zero",
            reference.embedding.nrows(),
            query.nrows()
        )));
    }
    let targets = reference.targets()?;
    let n_classes = reference.classes.len();
    let (centered_reference, centered_query);
    let (ref_x, query) = if cfg.center_each {
        centered_reference = centered(reference.embedding.view());
        centered_query = centered(query);
        (centered_reference.view(), centered_query.view())
    } else {
        (reference.embedding.view(), query)
    };
    let mut m = map_cells(
        ref_x,
        &reference.labels,
        n_classes,
        reference.xy.view(),
        targets.as_ref().map(|t| t.view()),
        query,
        cfg,
    );
    let n_comp = reference.composition.as_ref().map_or(0, |c| c.ncols());
    predict_with_head(
        head,
        ref_x,
        &reference.labels,
        n_classes,
        targets.as_ref().map(|t| t.view()),
        n_comp,
        query,
        &mut m,
    );
    let predicted = crate::linear::argmax_rows(&m.label_probabilities);
    let confidence = predicted.iter().enumerate().map(|(i, &c)| m.label_probabilities[[i, c]]).collect();
    let (mut composition, mut density, mut transferred) = (None, None, Vec::new());
    if let Some(t) = m.targets.take() {
        let mut j = n_comp;
        if n_comp > 0 {
            composition = Some(t.slice(ndarray::s![.., 0..n_comp]).to_owned());
        }
        if reference.density.is_some() {
            density = Some(t.column(j).to_vec());
            j += 1;
        }
        transferred = (j..t.ncols()).map(|c| t.column(c).to_vec()).collect();
    }
    Ok(Transferred { mapping: m, predicted, confidence, composition, density, transferred })
}

/// PCA-50 of log-normalized expression fitted on the reference cells `reference_rows`, for
/// mapping with expression instead of embeddings (both matrices need the same genes):
/// `(reference features, query features)`.
pub fn pca_features(
    reference: &sof_io::CsrMatrix,
    reference_rows: &[usize],
    query: &sof_io::CsrMatrix,
    query_rows: &[usize],
    seed: u64,
) -> Result<(Array2<f64>, Array2<f64>), TaskError> {
    if reference.n_cols() != query.n_cols() {
        return Err(TaskError::Invalid(format!(
            "the reference has {} genes and the query {}: the expression baseline needs the same panel",
            reference.n_cols(),
            query.n_cols()
        )));
    }
    let (xr, xq) = (crate::pca::log_normalize(reference), crate::pca::log_normalize(query));
    let pca = crate::pca::Pca::fit(&xr, reference_rows, 50.min(xr.n_cols()).min(reference_rows.len()), seed);
    Ok((pca.transform(&xr, reference_rows), pca.transform(&xq, query_rows)))
}

/// The query's own labels and values (a held-out section used as ground truth), per query cell.
#[derive(Debug, Clone, Default)]
pub struct QueryTruth {
    /// The query's value of the reference's label column.
    pub labels: Option<Vec<Option<String>>>,
    /// The query's own values of transferred columns, by column name.
    pub values: BTreeMap<String, Vec<f64>>,
}

/// One score of one mapper against the query's truth.
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    pub mapper: Mapper,
    /// The label column or the transferred column.
    pub column: String,
    /// `(metric, value)`: accuracy and macro F1 for labels, MAE and Spearman for values.
    pub metrics: Vec<(&'static str, f64)>,
    /// Query cells with a truth (and, for values, a finite prediction).
    pub cells: usize,
}

/// Scores a mapper's predictions (`predicted` classes and `transferred` columns, per query
/// cell) against `truth`; `label` names the reference label column, `transfer_names` the
/// transferred columns.
pub fn score(
    mapper: Mapper,
    reference: &Reference,
    label: &str,
    truth: &QueryTruth,
    predicted: &[usize],
    transferred: &[Vec<f64>],
) -> Vec<Score> {
    let mut out = Vec::new();
    if let Some(t) = &truth.labels {
        let (tt, pp): (Vec<usize>, Vec<usize>) = t
            .iter()
            .zip(predicted)
            .filter_map(|(l, &p)| l.as_ref().and_then(|l| reference.classes.binary_search(l).ok()).map(|c| (c, p)))
            .unzip();
        if !tt.is_empty() {
            let n = reference.classes.len();
            out.push(Score {
                mapper,
                column: label.to_owned(),
                metrics: vec![
                    ("accuracy", crate::metrics::accuracy(&tt, &pp)),
                    ("macro_f1", crate::metrics::macro_f1(&tt, &pp, n)),
                ],
                cells: tt.len(),
            });
        }
    }
    for ((name, _), col) in reference.transfer.iter().zip(transferred) {
        let Some(t) = truth.values.get(name) else { continue };
        let (tt, pp): (Vec<f64>, Vec<f64>) =
            t.iter().zip(col).filter(|(t, p)| t.is_finite() && p.is_finite()).map(|(&t, &p)| (t, p)).unzip();
        if tt.is_empty() {
            continue;
        }
        out.push(Score {
            mapper,
            column: name.clone(),
            metrics: vec![("mae", crate::metrics::mae(&tt, &pp)), ("spearman", crate::metrics::spearman(&tt, &pp))],
            cells: tt.len(),
        });
    }
    out
}

/// The prior mapper's predictions for `n` query cells: the reference's most frequent class,
/// and each transfer column's mean over its finite values.
pub fn prior(reference: &Reference, n: usize) -> (Vec<usize>, Vec<Vec<f64>>) {
    let mut counts = vec![0usize; reference.classes.len()];
    reference.labels.iter().for_each(|&c| counts[c] += 1);
    let majority = (0..counts.len()).max_by_key(|&c| counts[c]).unwrap_or(0);
    let means = reference
        .transfer
        .iter()
        .map(|(_, t)| {
            let v: Vec<f64> = t.iter().copied().filter(|v| v.is_finite()).collect();
            vec![v.iter().sum::<f64>() / v.len().max(1) as f64; n]
        })
        .collect();
    (vec![majority; n], means)
}

/// Median and mean distance between predicted and true locations (`n x 2` each).
pub fn location_error(predicted: ArrayView2<f64>, truth: ArrayView2<f64>) -> (f64, f64) {
    let mut err: Vec<f64> = predicted
        .rows()
        .into_iter()
        .zip(truth.rows())
        .map(|(p, t)| ((t[0] - p[0]).powi(2) + (t[1] - p[1]).powi(2)).sqrt())
        .filter(|e| e.is_finite())
        .collect();
    let mean = err.iter().sum::<f64>() / err.len() as f64; // NaN when empty, like the median
    (crate::metrics::median(&mut err), mean)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference cells in 4 layers along y whose embedding encodes the layer (plus noise): query
    /// cells with a layer's embedding land in that layer, at its depth, with small spread.
    #[test]
    fn query_cells_land_in_their_layer() {
        let n = 400;
        let layer = |i: usize| i % 4;
        let emb = |l: usize, jitter: f64| {
            let mut v = vec![0.1 * jitter; 8];
            v[l] = 1.0;
            v[4 + (l + 1) % 4] = 0.3;
            v
        };
        let reference = Array2::from_shape_vec(
            (n, 8),
            (0..n).flat_map(|i| emb(layer(i), ((i * 7919) % 13) as f64 / 13.0)).collect(),
        )
        .unwrap();
        let labels: Vec<usize> = (0..n).map(layer).collect();
        let xy = Array2::from_shape_fn((n, 2), |(i, c)| {
            if c == 0 { (i % 37) as f64 } else { 100.0 * layer(i) as f64 + (i % 5) as f64 }
        });
        let dens = Array2::from_shape_fn((n, 1), |(i, _)| layer(i) as f64);
        let query = Array2::from_shape_vec((4, 8), (0..4).flat_map(|l| emb(l, 0.5)).collect()).unwrap();
        let m =
            map_cells(reference.view(), &labels, 4, xy.view(), Some(dens.view()), query.view(), &MapConfig::default());
        for l in 0..4 {
            assert!(m.label_probabilities[[l, l]] > 0.95, "layer {l}: {:?}", m.label_probabilities.row(l));
            assert!((m.label_probabilities.row(l).sum() - 1.0).abs() < 1e-9);
            assert!((m.location[[l, 1]] - (100.0 * l as f64 + 2.0)).abs() < 5.0, "depth {}", m.location[[l, 1]]);
            assert!(m.spread[l] < 20.0, "spread {}", m.spread[l]);
            assert!((m.targets.as_ref().unwrap()[[l, 0]] - l as f64).abs() < 0.1);
        }
    }

    /// 200 reference cells in 4 layers (cell i in layer i % 4) whose embedding is mostly their
    /// layer's one-hot: (embedding, labels, coordinates with depth 100 * layer in column 1 and
    /// `xy_cols` columns in all).
    fn four_layers(xy_cols: usize) -> (Array2<f64>, Vec<String>, Array2<f64>) {
        let n = 200;
        let emb =
            Array2::from_shape_fn((n, 4), |(i, j)| if j == i % 4 { 1.0 } else { 0.05 * ((i * 31 + j) % 7) as f64 });
        let labels = (0..n).map(|i| format!("L{}", i % 4)).collect();
        let xy =
            Array2::from_shape_fn((n, xy_cols), |(i, c)| if c == 1 { 100.0 * (i % 4) as f64 } else { (i % 9) as f64 });
        (emb, labels, xy)
    }

    /// A query embedded with a constant shift (another technology's offset) lands in the wrong
    /// layers by cosine; with `center_each` each side loses its own mean and every cell is placed
    /// as without the shift, by the neighbour vote and by a trained head alike.
    #[test]
    fn centering_each_side_removes_a_shift() {
        let layer = |i: usize| i % 4;
        let (emb, labels, xy) = four_layers(2);
        let reference = Reference::new(emb.clone(), &labels, xy.view()).unwrap();
        let rows: Vec<usize> = (0..40).collect();
        let shift = ndarray::arr1(&[3.0, 3.0, -2.0, 0.5]);
        let query = &emb.select(Axis(0), &rows) + &shift;
        let truth: Vec<usize> = rows.iter().map(|&i| layer(i)).collect();
        let accuracy = |p: &[usize]| p.iter().zip(&truth).filter(|(a, b)| a == b).count() as f64 / truth.len() as f64;
        let plain = transfer(&reference, query.view(), &MapConfig::default(), None).unwrap();
        assert!(accuracy(&plain.predicted) < 0.6, "the shift misleads cosine: {}", accuracy(&plain.predicted));
        let each = MapConfig { center_each: true, ..MapConfig::default() };
        let t = transfer(&reference, query.view(), &each, None).unwrap();
        assert_eq!(t.predicted, truth);
        let head = crate::head::LinearHead::default();
        let h = transfer(&reference, query.view(), &each, Some(&head)).unwrap();
        assert_eq!(h.predicted, truth, "the head is trained and applied on centred embeddings too");
        let c = centered(query.view());
        assert!(c.mean_axis(Axis(0)).unwrap().iter().all(|m| m.abs() < 1e-12));
        assert_eq!(centered(Array2::<f64>::zeros((0, 3)).view()).dim(), (0, 3));
        // One query cell would be centred to zero and placed at random: refused.
        let one = transfer(&reference, query.slice(ndarray::s![0..1, ..]), &each, None).unwrap_err();
        assert!(one.to_string().contains("at least 2"), "{one}");
    }

    /// The library mapping end to end: a reference of 4 layers with density and a transferred
    /// depth; the query's truth scores ours above the prior, and the report's keys are the
    /// flat `<column>_<metric><suffix>` ones.
    #[test]
    fn transfer_scores_against_the_query_truth() {
        let n = 200;
        let layer = |i: usize| i % 4;
        let (emb, labels, xy) = four_layers(3);
        let mut reference = Reference::new(emb.clone(), &labels, xy.view()).unwrap();
        assert_eq!(reference.xy.ncols(), 2);
        reference.density = Some((0..n).map(|i| layer(i) as f64).collect());
        reference.transfer.push(("depth".into(), (0..n).map(|i| layer(i) as f64 * 10.0).collect()));
        let rows: Vec<usize> = (0..40).collect();
        let query = emb.select(Axis(0), &rows);
        let t = transfer(&reference, query.view(), &MapConfig::default(), None).unwrap();
        assert_eq!(t.predicted, rows.iter().map(|&i| layer(i)).collect::<Vec<_>>());
        let d = t.density.as_ref().unwrap();
        assert!(rows.iter().all(|&i| (d[i] - layer(i) as f64).abs() < 0.1), "{d:?}");
        let truth = QueryTruth {
            labels: Some(rows.iter().map(|&i| Some(labels[i].clone())).collect()),
            values: [("depth".to_owned(), rows.iter().map(|&i| layer(i) as f64 * 10.0).collect())].into(),
        };
        let mut report = MapReport { query_cells: 40, reference_cells: n, ..Default::default() };
        let (pc, pv) = prior(&reference, rows.len());
        for s in score(Mapper::Ours, &reference, "layer", &truth, &t.predicted, &t.transferred).iter().chain(&score(
            Mapper::Prior,
            &reference,
            "layer",
            &truth,
            &pc,
            &pv,
        )) {
            report.insert(s.mapper, &s.column, &s.metrics);
        }
        assert_eq!(report.get("layer", "accuracy", Mapper::Ours), Some(1.0));
        assert!(report.get("layer", "accuracy", Mapper::Prior).unwrap() < 0.3);
        assert!(report.get("depth", "mae", Mapper::Ours).unwrap() < 0.5);
        assert!(report.get("depth", "mae", Mapper::Prior).unwrap() > 5.0);
        let json = serde_json::to_value(&report).unwrap();
        assert!(json["layer_accuracy_prior"].is_number() && json["query_cells"] == 40, "{json}");
        let back: MapReport = serde_json::from_value(json).unwrap();
        assert_eq!(back.scores.keys().collect::<Vec<_>>(), report.scores.keys().collect::<Vec<_>>());
        assert!(back.get("depth", "spearman", Mapper::Prior).unwrap().is_nan(), "a constant has no rank correlation");
        assert_eq!(back.get("depth", "mae", Mapper::Ours), report.get("depth", "mae", Mapper::Ours));
        // Mismatched inputs are errors, not panics.
        assert!(transfer(&reference, Array2::zeros((2, 3)).view(), &MapConfig::default(), None).is_err());
        assert!(Reference::new(emb, &labels[..5], xy.view()).is_err());
        let (median, mean) = location_error(t.mapping.location.view(), xy.select(Axis(0), &rows).view());
        assert!(median < 10.0 && mean < 10.0, "{median} {mean}");
    }
}
