//! Linear heads on frozen features: multinomial logistic regression (the linear probe) and ridge
//! regression, on standardized features.

use ndarray::{Array1, Array2, ArrayView2, Axis};

/// Per-feature centring and scaling fitted on training rows.
#[derive(Debug, Clone)]
pub struct Standardizer {
    mean: Array1<f64>,
    scale: Array1<f64>,
}

impl Standardizer {
    pub fn fit(x: ArrayView2<f64>) -> Self {
        let mean = x.mean_axis(Axis(0)).unwrap_or_else(|| Array1::zeros(x.ncols()));
        let scale = x.std_axis(Axis(0), 0.0).mapv(|s| if s > 1e-12 { s } else { 1.0 });
        Self { mean, scale }
    }
    pub fn transform(&self, x: ArrayView2<f64>) -> Array2<f64> {
        (&x - &self.mean) / &self.scale
    }
}

/// Whitening fitted on training rows: standardize, rotate onto the principal axes of the
/// training covariance and scale each to unit variance (directions with variance below 1e-9 of
/// the largest are dropped). A linear map, so a linear probe on whitened features is still a
/// linear probe; it removes the ill-conditioning of anisotropic embeddings (most variance in a few
/// directions), which otherwise stops gradient training short of the optimum. Above
/// [`Whitener::MAX_DIM`] features it only standardizes (the eigendecomposition is cubic).
#[derive(Debug, Clone)]
pub struct Whitener {
    scaler: Standardizer,
    /// `d x k` rotation and scaling, or `None` (standardize only).
    projection: Option<Array2<f64>>,
}

impl Whitener {
    pub const MAX_DIM: usize = 768;

    pub fn fit(x: ArrayView2<f64>) -> Self {
        let scaler = Standardizer::fit(x);
        if x.ncols() > Self::MAX_DIM || x.nrows() < 2 {
            return Self { scaler, projection: None };
        }
        let xs = scaler.transform(x);
        let cov = xs.t().dot(&xs) / (xs.nrows() - 1) as f64;
        let (vals, vecs) = crate::pca::symmetric_eigen(cov);
        let top = vals.first().copied().unwrap_or(0.0).max(1e-300);
        let kept: Vec<usize> = (0..vals.len()).filter(|&i| vals[i] > 1e-9 * top).collect();
        let projection =
            Array2::from_shape_fn((x.ncols(), kept.len()), |(r, c)| vecs[[r, kept[c]]] / vals[kept[c]].sqrt());
        Self { scaler, projection: Some(projection) }
    }

    pub fn transform(&self, x: ArrayView2<f64>) -> Array2<f64> {
        let xs = self.scaler.transform(x);
        match &self.projection {
            Some(p) => xs.dot(p),
            None => xs,
        }
    }
}

/// Softmax regression with L2 penalty on whitened features, trained full-batch with Adam
/// (deterministic).
#[derive(Debug, Clone)]
pub struct LogisticRegression {
    scaler: Whitener,
    w: Array2<f64>,
    b: Array1<f64>,
}

/// Settings of [`LogisticRegression::fit`].
#[derive(Debug, Clone)]
pub struct LogisticConfig {
    pub l2: f64,
    pub epochs: usize,
    pub learning_rate: f64,
    /// Weight classes inversely to their frequency.
    pub class_balanced: bool,
}

impl Default for LogisticConfig {
    fn default() -> Self {
        Self { l2: 1e-3, epochs: 500, learning_rate: 0.05, class_balanced: false }
    }
}

pub(crate) fn softmax_rows(mut z: Array2<f64>) -> Array2<f64> {
    for mut row in z.rows_mut() {
        let m = row.fold(f64::MIN, |a, &b| a.max(b));
        row.mapv_inplace(|v| (v - m).exp());
        let s = row.sum();
        row /= s;
    }
    z
}

impl LogisticRegression {
    pub fn fit(x: ArrayView2<f64>, y: &[usize], n_classes: usize, cfg: &LogisticConfig) -> Self {
        let n = y.len();
        let mut counts = vec![0usize; n_classes];
        for &c in y {
            counts[c] += 1;
        }
        let weight: Vec<f64> = (0..n_classes)
            .map(|c| {
                if cfg.class_balanced && counts[c] > 0 { n as f64 / (n_classes as f64 * counts[c] as f64) } else { 1.0 }
            })
            .collect();
        let row_w: Array1<f64> = y.iter().map(|&c| weight[c]).collect();
        let mut onehot = Array2::<f64>::zeros((n, n_classes));
        for (i, &c) in y.iter().enumerate() {
            onehot[[i, c]] = 1.0;
        }
        Self::fit_weighted(x, onehot.view(), row_w, cfg)
    }

    /// Soft targets: each row of `targets` is a distribution over classes (e.g. a
    /// neighbourhood's cell-type proportions; cross-entropy against it is the KL divergence up
    /// to a constant). All-zero rows are ignored.
    pub fn fit_proportions(x: ArrayView2<f64>, targets: ArrayView2<f64>, cfg: &LogisticConfig) -> Self {
        let row_w = targets.rows().into_iter().map(|r| if r.sum() > 0.0 { 1.0 } else { 0.0 }).collect();
        Self::fit_weighted(x, targets, row_w, cfg)
    }

    fn fit_weighted(x: ArrayView2<f64>, onehot: ArrayView2<f64>, row_w: Array1<f64>, cfg: &LogisticConfig) -> Self {
        let scaler = Whitener::fit(x);
        let xs = scaler.transform(x);
        let d = xs.ncols();
        let n_classes = onehot.ncols();
        let total_w = row_w.sum().max(1e-12);
        let mut w = Array2::<f64>::zeros((d, n_classes));
        let mut b = Array1::<f64>::zeros(n_classes);
        let (mut mw, mut vw) = (w.clone(), w.clone());
        let (mut mb, mut vb) = (b.clone(), b.clone());
        let (b1, b2, eps) = (0.9, 0.999, 1e-8);
        for t in 1..=cfg.epochs {
            let p = softmax_rows(xs.dot(&w) + &b);
            let mut g = p - onehot; // [n, k]

            for (mut row, &rw) in g.rows_mut().into_iter().zip(row_w.iter()) {
                row *= rw / total_w;
            }
            let gw = xs.t().dot(&g) + &(&w * cfg.l2);
            let gb = g.sum_axis(Axis(0));
            let (c1, c2) = (1.0 - f64::powi(b1, t as i32), 1.0 - f64::powi(b2, t as i32));
            mw = &mw * b1 + &gw * (1.0 - b1);
            vw = &vw * b2 + &gw.mapv(|v| v * v) * (1.0 - b2);
            mb = &mb * b1 + &gb * (1.0 - b1);
            vb = &vb * b2 + &gb.mapv(|v| v * v) * (1.0 - b2);
            w = &w - &((&mw / c1) / ((&vw / c2).mapv(f64::sqrt) + eps) * cfg.learning_rate);
            b = &b - &((&mb / c1) / ((&vb / c2).mapv(f64::sqrt) + eps) * cfg.learning_rate);
        }
        Self { scaler, w, b }
    }

    /// Class probabilities, `n x n_classes`.
    pub fn predict_proba(&self, x: ArrayView2<f64>) -> Array2<f64> {
        softmax_rows(self.scaler.transform(x).dot(&self.w) + &self.b)
    }

    pub fn predict(&self, x: ArrayView2<f64>) -> Vec<usize> {
        argmax_rows(&self.predict_proba(x))
    }
}

/// Index of each row's largest value.
pub fn argmax_rows(p: &Array2<f64>) -> Vec<usize> {
    p.rows()
        .into_iter()
        .map(|r| r.iter().enumerate().fold((0, f64::MIN), |b, (k, &v)| if v > b.1 { (k, v) } else { b }).0)
        .collect()
}

/// Ridge regression (multi-output), closed form on standardized features.
#[derive(Debug, Clone)]
pub struct Ridge {
    scaler: Standardizer,
    w: Array2<f64>,
    intercept: Array1<f64>,
}

impl Ridge {
    pub fn fit(x: ArrayView2<f64>, y: ArrayView2<f64>, alpha: f64) -> Self {
        let scaler = Standardizer::fit(x);
        let xs = scaler.transform(x);
        let ym = y.mean_axis(Axis(0)).unwrap_or_else(|| Array1::zeros(y.ncols()));
        let yc = &y - &ym;
        let mut a = xs.t().dot(&xs);
        for i in 0..a.nrows() {
            a[[i, i]] += alpha * xs.nrows().max(1) as f64;
        }
        let rhs = xs.t().dot(&yc);
        let w = cholesky_solve(a, rhs);
        Self { scaler, w, intercept: ym }
    }

    pub fn predict(&self, x: ArrayView2<f64>) -> Array2<f64> {
        self.scaler.transform(x).dot(&self.w) + &self.intercept
    }
}

/// Solves `A X = B` for symmetric positive definite `A`.
fn cholesky_solve(mut a: Array2<f64>, mut b: Array2<f64>) -> Array2<f64> {
    let n = a.nrows();
    for j in 0..n {
        let mut s = a[[j, j]];
        for k in 0..j {
            s -= a[[j, k]] * a[[j, k]];
        }
        let d = s.max(1e-12).sqrt();
        a[[j, j]] = d;
        for i in j + 1..n {
            let mut s = a[[i, j]];
            for k in 0..j {
                s -= a[[i, k]] * a[[j, k]];
            }
            a[[i, j]] = s / d;
        }
    }
    for c in 0..b.ncols() {
        for i in 0..n {
            let mut s = b[[i, c]];
            for k in 0..i {
                s -= a[[i, k]] * b[[k, c]];
            }
            b[[i, c]] = s / a[[i, i]];
        }
        for i in (0..n).rev() {
            let mut s = b[[i, c]];
            for k in i + 1..n {
                s -= a[[k, i]] * b[[k, c]];
            }
            b[[i, c]] = s / a[[i, i]];
        }
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logistic_regression_separates_separable_classes() {
        // Three blobs in 2-D.
        let mut x = Vec::new();
        let mut y = Vec::new();
        for i in 0..90 {
            let c = i % 3;
            let (cx, cy) = [(0.0, 0.0), (4.0, 0.0), (0.0, 4.0)][c];
            let jitter = ((i * 37 % 11) as f64 - 5.0) / 10.0;
            x.extend([cx + jitter, cy - jitter]);
            y.push(c);
        }
        let x = Array2::from_shape_vec((90, 2), x).unwrap();
        let m = LogisticRegression::fit(x.view(), &y, 3, &LogisticConfig::default());
        assert_eq!(m.predict(x.view()), y);
        let p = m.predict_proba(x.view());
        assert!(p.rows().into_iter().all(|r| (r.sum() - 1.0).abs() < 1e-9));
    }

    #[test]
    fn whitened_training_features_have_identity_covariance() {
        // Strongly anisotropic, correlated features.
        let x = Array2::from_shape_fn((200, 3), |(i, j)| {
            let t = (i as f64 * 0.37).sin();
            let u = (i as f64 * 1.3).cos();
            [100.0 * t + 0.01 * u, 100.0 * t - 0.01 * u, 0.5 * u + t][j]
        });
        let w = Whitener::fit(x.view());
        let z = w.transform(x.view());
        let cov = z.t().dot(&z) / (z.nrows() - 1) as f64;
        assert_eq!(cov.nrows(), 2, "the third direction is a combination of the first two");
        for ((r, c), v) in cov.indexed_iter() {
            assert!((v - if r == c { 1.0 } else { 0.0 }).abs() < 1e-6, "cov[{r},{c}] = {v}");
        }
    }

    #[test]
    fn ridge_recovers_a_linear_map() {
        let x = Array2::from_shape_fn((50, 3), |(i, j)| ((i * (j + 3)) % 7) as f64 + j as f64);
        let y =
            Array2::from_shape_fn(
                (50, 2),
                |(i, k)| {
                    if k == 0 { 2.0 * x[[i, 0]] - x[[i, 2]] + 1.0 } else { 0.5 * x[[i, 1]] }
                },
            );
        let m = Ridge::fit(x.view(), y.view(), 1e-9);
        let p = m.predict(x.view());
        assert!((&p - &y).iter().all(|v| v.abs() < 1e-6));
    }
}
