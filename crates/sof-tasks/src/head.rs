//! [`Head`]: a predictor fitted on frozen features — the linear probe, the MLP and the
//! neighbour vote — behind one fit / predict seam, so probes and mapping try every head the same
//! way.

use ndarray::{Array2, ArrayView2, Axis};

use crate::Target;
use crate::linear::{LogisticConfig, LogisticRegression, Ridge};
use crate::mapping::{MapConfig, normalize_rows, top_k_weights};
use crate::mlp::{Mlp, MlpConfig};

/// A fitted head: features in, predictions out (`cells x width` of its [`Target`]).
pub trait Predictor: Send + Sync {
    fn predict(&self, x: ArrayView2<f64>) -> Array2<f64>;
}

/// A way to fit a predictor on features (`cells x d`) and a target (one entry per row).
///
/// ```
/// use ndarray::array;
/// use sof_tasks::{Head, LinearHead, Target};
///
/// let x = array![[0.0, 0.1], [0.1, 0.0], [3.0, 3.1], [3.1, 2.9]];
/// let y = Target::Classes { y: vec![0, 0, 1, 1], n_classes: 2, class_balanced: false };
/// let fitted = LinearHead::default().fit(x.view(), &y);
/// let p = fitted.predict(array![[0.05, 0.05], [3.0, 3.0]].view());
/// assert!(p[[0, 0]] > 0.5 && p[[1, 1]] > 0.5);
/// ```
pub trait Head: Send + Sync {
    /// Short name for reports (`linear`, `mlp`, `knn`).
    fn name(&self) -> &'static str;
    fn fit(&self, x: ArrayView2<f64>, target: &Target) -> Box<dyn Predictor>;
}

/// The linear probe: multinomial logistic regression on standardized features for classes, softmax-linear
/// (cross-entropy against the target distribution) for proportions, ridge for values.
#[derive(Debug, Clone)]
pub struct LinearHead {
    pub logistic: LogisticConfig,
    /// Ridge penalty, relative to the number of training rows.
    pub ridge_alpha: f64,
}

impl Default for LinearHead {
    fn default() -> Self {
        Self { logistic: LogisticConfig::default(), ridge_alpha: 1e-3 }
    }
}

impl Predictor for LogisticRegression {
    fn predict(&self, x: ArrayView2<f64>) -> Array2<f64> {
        self.predict_proba(x)
    }
}

impl Predictor for Ridge {
    fn predict(&self, x: ArrayView2<f64>) -> Array2<f64> {
        Ridge::predict(self, x)
    }
}

impl Predictor for Mlp {
    fn predict(&self, x: ArrayView2<f64>) -> Array2<f64> {
        Mlp::predict(self, x)
    }
}

impl Head for LinearHead {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn fit(&self, x: ArrayView2<f64>, target: &Target) -> Box<dyn Predictor> {
        match target {
            Target::Classes { y, n_classes, class_balanced } => {
                let cfg = LogisticConfig { class_balanced: *class_balanced, ..self.logistic.clone() };
                Box::new(LogisticRegression::fit(x, y, *n_classes, &cfg))
            }
            Target::Proportions(p) => Box::new(LogisticRegression::fit_proportions(x, p.view(), &self.logistic)),
            Target::Values(v) => Box::new(Ridge::fit(x, v.view(), self.ridge_alpha)),
        }
    }
}

/// The MLP head (one hidden ReLU layer, early stopping): see [`crate::mlp`].
#[derive(Debug, Clone, Default)]
pub struct MlpHead(pub MlpConfig);

impl Head for MlpHead {
    fn name(&self) -> &'static str {
        "mlp"
    }

    fn fit(&self, x: ArrayView2<f64>, target: &Target) -> Box<dyn Predictor> {
        Box::new(Mlp::fit(x, target, &self.0))
    }
}

/// The neighbour vote: each query row's `k` most similar training rows (cosine), weighted by a
/// softmax over similarity / temperature, average their one-hot classes (probabilities) or
/// their values — what `sof map` does by default (without `center_each`, which is
/// [`crate::mapping::transfer`]'s and not read here).
#[derive(Debug, Clone, Default)]
pub struct NeighbourHead(pub MapConfig);

struct NeighbourVote {
    reference: Array2<f64>,
    /// One row per reference cell: one-hot classes, or values.
    targets: Array2<f64>,
    cfg: MapConfig,
}

impl Predictor for NeighbourVote {
    fn predict(&self, x: ArrayView2<f64>) -> Array2<f64> {
        let q = normalize_rows(x);
        let mut out = Array2::<f64>::zeros((q.nrows(), self.targets.ncols()));
        for (start, block) in q.axis_chunks_iter(Axis(0), 256).enumerate().map(|(b, x)| (b * 256, x)) {
            let sims = block.dot(&self.reference.t());
            for (i, row) in sims.rows().into_iter().enumerate() {
                for (j, w) in top_k_weights(row, &self.cfg) {
                    out.row_mut(start + i).scaled_add(w, &self.targets.row(j));
                }
            }
        }
        out
    }
}

impl Head for NeighbourHead {
    fn name(&self) -> &'static str {
        "knn"
    }

    fn fit(&self, x: ArrayView2<f64>, target: &Target) -> Box<dyn Predictor> {
        let targets = match target {
            Target::Classes { y, n_classes, .. } => {
                let mut onehot = Array2::<f64>::zeros((y.len(), *n_classes));
                for (i, &c) in y.iter().enumerate() {
                    onehot[[i, c]] = 1.0;
                }
                onehot
            }
            Target::Values(v) | Target::Proportions(v) => v.clone(),
        };
        Box::new(NeighbourVote { reference: normalize_rows(x), targets, cfg: self.0.clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every head predicts in the target's form: probabilities and proportions sum to 1, values
    /// come back in their own units, and the neighbour vote equals `map_cells`'s label votes.
    #[test]
    fn heads_predict_in_the_targets_form() {
        let n = 120;
        let x = Array2::from_shape_fn((n, 3), |(i, j)| {
            ((i * (j + 2)) % 13) as f64 / 13.0 + (i % 3) as f64 * (j == 0) as u8 as f64
        });
        let classes = Target::Classes { y: (0..n).map(|i| i % 3).collect(), n_classes: 3, class_balanced: true };
        let values = Target::Values(Array2::from_shape_fn((n, 1), |(i, _)| 100.0 + 10.0 * (i % 3) as f64));
        let props =
            Target::Proportions(Array2::from_shape_fn(
                (n, 2),
                |(i, k)| if (i % 3 == 0) == (k == 0) { 0.8 } else { 0.2 },
            ));
        let mlp = MlpHead(MlpConfig { max_epochs: 20, ..MlpConfig::default() });
        let knn = NeighbourHead(MapConfig { k: 5, ..MapConfig::default() });
        for head in [&LinearHead::default() as &dyn Head, &mlp, &knn] {
            for t in [&classes, &props] {
                let p = head.fit(x.view(), t).predict(x.view());
                assert_eq!(p.dim(), (n, t.width()));
                assert!(p.rows().into_iter().all(|r| (r.sum() - 1.0).abs() < 1e-9), "{}", head.name());
            }
            let v = head.fit(x.view(), &values).predict(x.view());
            assert!(v.iter().all(|&p| (90.0..130.0).contains(&p)), "{}: values in their own units", head.name());
        }
        let xy = Array2::zeros((n, 2));
        let m = crate::mapping::map_cells(x.view(), classes.classes().unwrap(), 3, xy.view(), None, x.view(), &knn.0);
        assert_eq!(knn.fit(x.view(), &classes).predict(x.view()), m.label_probabilities);
    }
}
