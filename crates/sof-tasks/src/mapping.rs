//! Placing query cells (e.g. dissociated) onto a spatial reference by embedding similarity:
//! each query cell's `k` most similar reference cells (cosine), weighted by a softmax over
//! similarity / temperature, give a distribution over reference cells — hence label
//! probabilities, expected coordinates and their spread.

use ndarray::{Array1, Array2, ArrayView2, Axis};

/// Settings of [`map_cells`].
#[derive(Debug, Clone)]
pub struct MapConfig {
    pub k: usize,
    /// Softmax temperature over cosine similarities (smaller = sharper).
    pub temperature: f64,
}

impl Default for MapConfig {
    fn default() -> Self {
        Self { k: 30, temperature: 0.05 }
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
}
