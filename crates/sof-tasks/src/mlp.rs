//! A small MLP head on frozen features: one hidden ReLU layer, trained with mini-batch Adam and
//! early stopping on a held-out tenth of the training rows (seeded, so deterministic).
//!
//! Features are standardized, not whitened: with whitened inputs (unit variance on every
//! principal axis of the training cells, the noise axes included) a STARmap layer MLP on
//! `X_sof_niche` scored macro F1 0.49 against 0.91 standardized (scikit-learn's MLP, one section
//! held out, measured 2026-12-01) — it fits what tells the training sections apart.
//!
//! Three targets: classes (softmax cross-entropy, optionally class-balanced), values (MSE on
//! standardized targets) and proportions (softmax output, cross-entropy against the target
//! distribution — the KL divergence up to a constant — so predictions are proportions).

use ndarray::{Array1, Array2, ArrayView2, Axis};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_distr::{Distribution, Normal};
use rand_xoshiro::Xoshiro256PlusPlus;

use crate::Target;
use crate::linear::{Standardizer, softmax_rows};

/// Settings of [`Mlp::fit`].
#[derive(Debug, Clone)]
pub struct MlpConfig {
    pub hidden: usize,
    pub max_epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    /// Decoupled weight decay (AdamW) on the weight matrices.
    pub weight_decay: f64,
    /// Epochs without improvement of the held-out loss before stopping.
    pub patience: usize,
    pub seed: u64,
}

impl Default for MlpConfig {
    fn default() -> Self {
        Self {
            hidden: 128,
            max_epochs: 80,
            batch_size: 128,
            learning_rate: 1e-3,
            weight_decay: 1e-4,
            patience: 8,
            seed: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Output {
    Classes,
    Values,
    Proportions,
}

/// A fitted head.
#[derive(Debug, Clone)]
pub struct Mlp {
    scaler: Standardizer,
    w1: Array2<f64>,
    b1: Array1<f64>,
    w2: Array2<f64>,
    b2: Array1<f64>,
    output: Output,
    /// Target standardization (values).
    y_mean: Array1<f64>,
    y_scale: Array1<f64>,
    /// Epochs trained before early stopping picked the best.
    pub epochs: usize,
}

struct Adam {
    m: Vec<Array2<f64>>,
    v: Vec<Array2<f64>>,
    t: i32,
}

impl Mlp {
    pub fn fit(x: ArrayView2<f64>, target: &Target, cfg: &MlpConfig) -> Self {
        let scaler = Standardizer::fit(x);
        let xs = scaler.transform(x);
        let (n, d) = xs.dim();
        // Targets as an `n x k` matrix plus a weight per row.
        let (output, y, row_w, y_mean, y_scale) = match target {
            Target::Classes { y, n_classes, class_balanced } => {
                let (n_classes, class_balanced) = (*n_classes, *class_balanced);
                let mut counts = vec![0usize; n_classes];
                for &c in y {
                    counts[c] += 1;
                }
                let w: Vec<f64> = counts
                    .iter()
                    .map(|&c| if class_balanced && c > 0 { n as f64 / (n_classes * c) as f64 } else { 1.0 })
                    .collect();
                let mut onehot = Array2::<f64>::zeros((n, n_classes));
                for (i, &c) in y.iter().enumerate() {
                    onehot[[i, c]] = 1.0;
                }
                let k = n_classes;
                (Output::Classes, onehot, y.iter().map(|&c| w[c]).collect(), Array1::zeros(k), Array1::ones(k))
            }
            Target::Values(y) => {
                let mean = y.mean_axis(Axis(0)).unwrap_or_else(|| Array1::zeros(y.ncols()));
                let scale = y.std_axis(Axis(0), 0.0).mapv(|s| if s > 1e-12 { s } else { 1.0 });
                let ys = (y - &mean) / &scale;
                (Output::Values, ys, Array1::ones(n), mean, scale)
            }
            Target::Proportions(y) => {
                let w = y.rows().into_iter().map(|r| if r.sum() > 0.0 { 1.0 } else { 0.0 }).collect();
                let k = y.ncols();
                (Output::Proportions, y.to_owned(), w, Array1::zeros(k), Array1::ones(k))
            }
        };
        let k = y.ncols();
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(cfg.seed);
        // He initialization for the ReLU layer, Glorot for the output.
        let he = Normal::new(0.0, (2.0 / d.max(1) as f64).sqrt()).expect("finite");
        let glorot = Normal::new(0.0, (2.0 / (cfg.hidden + k) as f64).sqrt()).expect("finite");
        let mut params = vec![
            Array2::from_shape_fn((d, cfg.hidden), |_| he.sample(&mut rng)),
            Array2::zeros((1, cfg.hidden)),
            Array2::from_shape_fn((cfg.hidden, k), |_| glorot.sample(&mut rng)),
            Array2::zeros((1, k)),
        ];
        // A tenth of the rows (at least one, if there are ten) decides when to stop.
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut rng);
        let n_val = if n >= 10 { (n / 10).max(1) } else { 0 };
        let (val, train) = order.split_at(n_val);
        let mut train = train.to_vec();
        let mut adam = Adam { m: params.iter().map(|p| p.clone() * 0.0).collect(), v: Vec::new(), t: 0 };
        adam.v = adam.m.clone();
        let mut best = (f64::INFINITY, params.clone(), 0);
        let mut since_best = 0;
        let output_kind = output;
        for epoch in 1..=cfg.max_epochs {
            train.shuffle(&mut rng);
            for batch in train.chunks(cfg.batch_size.max(1)) {
                let xb = xs.select(Axis(0), batch);
                let yb = y.select(Axis(0), batch);
                let wb: Array1<f64> = batch.iter().map(|&i| row_w[i]).collect();
                let grads = gradients(&params, &xb, &yb, &wb, output_kind);
                adam_step(&mut params, &grads, &mut adam, cfg);
            }
            if val.is_empty() {
                best = (0.0, params.clone(), epoch);
                continue;
            }
            let xv = xs.select(Axis(0), val);
            let yv = y.select(Axis(0), val);
            let wv: Array1<f64> = val.iter().map(|&i| row_w[i]).collect();
            let loss = loss(&params, &xv, &yv, &wv, output_kind);
            if loss < best.0 - 1e-6 {
                best = (loss, params.clone(), epoch);
                since_best = 0;
            } else {
                since_best += 1;
                if since_best >= cfg.patience {
                    break;
                }
            }
        }
        let (_, p, epochs) = best;
        let [w1, b1, w2, b2]: [Array2<f64>; 4] = p.try_into().expect("four tensors");
        Self { scaler, w1, b1: b1.row(0).to_owned(), w2, b2: b2.row(0).to_owned(), output, y_mean, y_scale, epochs }
    }

    /// Class probabilities (classes), values (values) or proportions (proportions), `n x k`.
    pub fn predict(&self, x: ArrayView2<f64>) -> Array2<f64> {
        let xs = self.scaler.transform(x);
        let h = (xs.dot(&self.w1) + &self.b1).mapv(|v| v.max(0.0));
        let z = h.dot(&self.w2) + &self.b2;
        match self.output {
            Output::Classes | Output::Proportions => softmax_rows(z),
            Output::Values => z * &self.y_scale + &self.y_mean,
        }
    }
}

/// Forward pass: hidden activations and output (probabilities or values).
fn forward(p: &[Array2<f64>], x: &Array2<f64>, output: Output) -> (Array2<f64>, Array2<f64>) {
    let h = (x.dot(&p[0]) + p[1].row(0)).mapv(|v| v.max(0.0));
    let z = h.dot(&p[2]) + p[3].row(0);
    let out = if output == Output::Values { z } else { softmax_rows(z) };
    (h, out)
}

/// Weighted mean loss.
fn loss(p: &[Array2<f64>], x: &Array2<f64>, y: &Array2<f64>, w: &Array1<f64>, output: Output) -> f64 {
    let (_, out) = forward(p, x, output);
    let total_w = w.sum().max(1e-12);
    let per_row: Vec<f64> = out
        .rows()
        .into_iter()
        .zip(y.rows())
        .map(|(o, t)| match output {
            Output::Values => o.iter().zip(t).map(|(a, b)| (a - b).powi(2)).sum::<f64>() / o.len() as f64,
            _ => -o.iter().zip(t).map(|(a, b)| b * a.max(1e-300).ln()).sum::<f64>(),
        })
        .collect();
    per_row.iter().zip(w).map(|(l, w)| l * w).sum::<f64>() / total_w
}

/// Gradients of the weighted mean loss for `[w1, b1, w2, b2]`.
///
/// By hand, not through burn's autodiff: sof-tasks has no tensor backend (the probe harness and
/// its baselines build and run without burn), and one ReLU layer's backward pass is these few
/// lines, checked against finite differences of [`loss`] for all three outputs
/// (`gradients_match_finite_differences`).
fn gradients(p: &[Array2<f64>], x: &Array2<f64>, y: &Array2<f64>, w: &Array1<f64>, output: Output) -> Vec<Array2<f64>> {
    let (h, out) = forward(p, x, output);
    let total_w = w.sum().max(1e-12);
    // dL/dz: softmax + cross-entropy gives (p - y); MSE gives 2 (z - y) / k.
    let mut dz = &out - y;
    if output == Output::Values {
        dz *= 2.0 / y.ncols() as f64;
    }
    for (mut row, &rw) in dz.rows_mut().into_iter().zip(w) {
        row *= rw / total_w;
    }
    let gw2 = h.t().dot(&dz);
    let gb2 = dz.sum_axis(Axis(0)).insert_axis(Axis(0));
    let mut dh = dz.dot(&p[2].t());
    dh.zip_mut_with(&h, |g, &a| {
        if a <= 0.0 {
            *g = 0.0;
        }
    });
    let gw1 = x.t().dot(&dh);
    let gb1 = dh.sum_axis(Axis(0)).insert_axis(Axis(0));
    vec![gw1, gb1, gw2, gb2]
}

fn adam_step(p: &mut [Array2<f64>], g: &[Array2<f64>], s: &mut Adam, cfg: &MlpConfig) {
    let (b1, b2, eps) = (0.9, 0.999, 1e-8);
    s.t += 1;
    let (c1, c2) = (1.0 - f64::powi(b1, s.t), 1.0 - f64::powi(b2, s.t));
    for (i, (param, grad)) in p.iter_mut().zip(g).enumerate() {
        s.m[i] = &s.m[i] * b1 + grad * (1.0 - b1);
        s.v[i] = &s.v[i] * b2 + &grad.mapv(|v| v * v) * (1.0 - b2);
        if i % 2 == 0 {
            param.mapv_inplace(|v| v * (1.0 - cfg.learning_rate * cfg.weight_decay));
        }
        let step = (&s.m[i] / c1) / ((&s.v[i] / c2).mapv(f64::sqrt) + eps) * cfg.learning_rate;
        *param -= &step;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linear::argmax_rows;

    /// Two classes on concentric rings: no linear probe separates them, an MLP does.
    #[test]
    fn mlp_learns_a_nonlinear_boundary() {
        let n = 400;
        let x = Array2::from_shape_fn((n, 2), |(i, j)| {
            let r = if i % 2 == 0 { 1.0 } else { 3.0 };
            let a = i as f64 * 0.7;
            if j == 0 { r * a.cos() } else { r * a.sin() }
        });
        let y: Vec<usize> = (0..n).map(|i| i % 2).collect();
        let cfg = MlpConfig { max_epochs: 300, patience: 300, learning_rate: 1e-2, ..MlpConfig::default() };
        let m = Mlp::fit(x.view(), &Target::Classes { y: y.clone(), n_classes: 2, class_balanced: false }, &cfg);
        let acc = crate::metrics::accuracy(&y, &argmax_rows(&m.predict(x.view())));
        assert!(acc > 0.97, "accuracy {acc}");
        let lin = crate::linear::LogisticRegression::fit(x.view(), &y, 2, &Default::default());
        assert!(crate::metrics::accuracy(&y, &lin.predict(x.view())) < 0.75);
    }

    #[test]
    fn regression_and_proportions() {
        let n = 300;
        let x = Array2::from_shape_fn((n, 3), |(i, j)| ((i * (j + 5)) % 17) as f64 / 17.0);
        let yv = Array2::from_shape_fn((n, 1), |(i, _)| (3.0 * x[[i, 0]]).sin() + x[[i, 1]] * 2.0);
        let cfg = MlpConfig { max_epochs: 400, patience: 50, learning_rate: 3e-3, ..MlpConfig::default() };
        let m = Mlp::fit(x.view(), &Target::Values(yv.clone()), &cfg);
        let p = m.predict(x.view());
        let r2 = crate::metrics::r2_columns(&yv, &p);
        assert!(r2 > 0.95, "r2 {r2}");
        // Proportions: a softmax of a linear function of x; predictions are distributions.
        let yp = softmax_rows(Array2::from_shape_fn((n, 3), |(i, k)| 3.0 * x[[i, k]]));
        let m = Mlp::fit(x.view(), &Target::Proportions(yp.clone()), &cfg);
        let p = m.predict(x.view());
        assert!(p.rows().into_iter().all(|r| (r.sum() - 1.0).abs() < 1e-9 && r.iter().all(|&v| v >= 0.0)));
        let mae = crate::metrics::mae(yp.as_slice().unwrap(), p.as_slice().unwrap());
        assert!(mae < 0.02, "mae {mae}");
    }

    #[test]
    fn same_seed_same_model() {
        let x = Array2::from_shape_fn((60, 4), |(i, j)| ((i * 7 + j * 3) % 11) as f64);
        let y: Vec<usize> = (0..60).map(|i| (i * 7 % 11) % 3).collect();
        let t = Target::Classes { y, n_classes: 3, class_balanced: true };
        let a = Mlp::fit(x.view(), &t, &MlpConfig::default()).predict(x.view());
        let b = Mlp::fit(x.view(), &t, &MlpConfig::default()).predict(x.view());
        assert_eq!(a, b);
    }

    /// The hand-written backward pass equals the derivative of the loss, for every output kind:
    /// central differences agree with every gradient entry to 1e-6 (relative to the largest).
    #[test]
    fn gradients_match_finite_differences() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
        let normal = Normal::<f64>::new(0.0, 1.0).unwrap();
        let (n, d, hidden, k) = (12, 4, 5, 3);
        let x = Array2::from_shape_fn((n, d), |_| normal.sample(&mut rng));
        let w = Array1::from_shape_fn(n, |i| 0.5 + (i % 3) as f64 * 0.25);
        let params = vec![
            Array2::from_shape_fn((d, hidden), |_| normal.sample(&mut rng)),
            Array2::from_shape_fn((1, hidden), |_| normal.sample(&mut rng) * 0.1),
            Array2::from_shape_fn((hidden, k), |_| normal.sample(&mut rng)),
            Array2::from_shape_fn((1, k), |_| normal.sample(&mut rng) * 0.1),
        ];
        let onehot = Array2::from_shape_fn((n, k), |(i, c)| f64::from(u8::from(i % k == c)));
        let values = Array2::from_shape_fn((n, k), |_| normal.sample(&mut rng));
        let mut proportions = Array2::from_shape_fn((n, k), |_| normal.sample(&mut rng).abs());
        for mut r in proportions.rows_mut() {
            let s = r.sum();
            r /= s;
        }
        for (output, y) in [(Output::Classes, onehot), (Output::Values, values), (Output::Proportions, proportions)] {
            let g = gradients(&params, &x, &y, &w, output);
            let largest = g.iter().flat_map(|t| t.iter()).fold(0.0f64, |m, v| m.max(v.abs()));
            let h = 1e-6;
            for (t, grad) in g.iter().enumerate() {
                for idx in 0..grad.len() {
                    let (r, c) = (idx / grad.ncols(), idx % grad.ncols());
                    let mut plus = params.clone();
                    plus[t][[r, c]] += h;
                    let mut minus = params.clone();
                    minus[t][[r, c]] -= h;
                    let numeric = (loss(&plus, &x, &y, &w, output) - loss(&minus, &x, &y, &w, output)) / (2.0 * h);
                    let err = (numeric - grad[[r, c]]).abs() / largest;
                    assert!(err < 1e-6, "{output:?} tensor {t} [{r}, {c}]: {numeric} vs {}", grad[[r, c]]);
                }
            }
        }
    }
}
