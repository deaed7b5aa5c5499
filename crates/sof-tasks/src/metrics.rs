//! Metrics: classification (accuracy, macro F1, confusion, expected calibration error) and
//! regression (MAE, MSE, R², Spearman's rho), clustering agreement (adjusted Rand index).
//! Conventions follow scikit-learn / scipy.

use ndarray::{Array2, ArrayView2};

/// Fraction of equal labels.
pub fn accuracy(truth: &[usize], predicted: &[usize]) -> f64 {
    if truth.is_empty() {
        return f64::NAN;
    }
    truth.iter().zip(predicted).filter(|(a, b)| a == b).count() as f64 / truth.len() as f64
}

/// `n x n` counts, rows = truth, columns = prediction.
pub fn confusion(truth: &[usize], predicted: &[usize], n_classes: usize) -> Vec<Vec<u64>> {
    let mut m = vec![vec![0u64; n_classes]; n_classes];
    for (&t, &p) in truth.iter().zip(predicted) {
        m[t][p] += 1;
    }
    m
}

/// Unweighted mean of per-class F1 over the classes present in the truth or the predictions
/// (scikit-learn's `f1_score(average="macro")`; a class with no true and no predicted cell is
/// left out, one predicted but absent from the truth counts as F1 = 0).
pub fn macro_f1(truth: &[usize], predicted: &[usize], n_classes: usize) -> f64 {
    let m = confusion(truth, predicted, n_classes);
    let mut f1s = Vec::new();
    for c in 0..n_classes {
        let tp = m[c][c] as f64;
        let actual: u64 = m[c].iter().sum();
        let called: u64 = m.iter().map(|r| r[c]).sum();
        if actual == 0 && called == 0 {
            continue;
        }
        let denom = actual as f64 + called as f64;
        f1s.push(if denom > 0.0 { 2.0 * tp / denom } else { 0.0 });
    }
    if f1s.is_empty() { f64::NAN } else { f1s.iter().sum::<f64>() / f1s.len() as f64 }
}

/// Expected calibration error with `bins` equal-width confidence bins (top-class confidence).
pub fn expected_calibration_error(probabilities: ArrayView2<f64>, truth: &[usize], bins: usize) -> f64 {
    let n = truth.len();
    let mut count = vec![0usize; bins];
    let mut conf = vec![0.0; bins];
    let mut hits = vec![0.0; bins];
    for (i, &t) in truth.iter().enumerate() {
        let row = probabilities.row(i);
        let (best, p) = row.iter().enumerate().fold((0, f64::MIN), |b, (k, &v)| if v > b.1 { (k, v) } else { b });
        let b = ((p * bins as f64) as usize).min(bins - 1);
        count[b] += 1;
        conf[b] += p;
        hits[b] += f64::from(u8::from(best == t));
    }
    (0..bins).filter(|&b| count[b] > 0).map(|b| (hits[b] - conf[b]).abs() / n as f64).sum()
}

/// Mean absolute error over all entries.
pub fn mae(truth: &[f64], predicted: &[f64]) -> f64 {
    truth.iter().zip(predicted).map(|(a, b)| (a - b).abs()).sum::<f64>() / truth.len().max(1) as f64
}

/// Mean squared error over all entries.
pub fn mse(truth: &[f64], predicted: &[f64]) -> f64 {
    truth.iter().zip(predicted).map(|(a, b)| (a - b) * (a - b)).sum::<f64>() / truth.len().max(1) as f64
}

/// Coefficient of determination `1 - SS_res / SS_tot` (can be negative).
pub fn r2(truth: &[f64], predicted: &[f64]) -> f64 {
    let mean = truth.iter().sum::<f64>() / truth.len().max(1) as f64;
    let ss_tot: f64 = truth.iter().map(|t| (t - mean) * (t - mean)).sum();
    let ss_res: f64 = truth.iter().zip(predicted).map(|(t, p)| (t - p) * (t - p)).sum();
    if ss_tot == 0.0 { f64::NAN } else { 1.0 - ss_res / ss_tot }
}

/// Mean of per-column R² (scikit-learn's `multioutput="uniform_average"`), skipping constant columns.
pub fn r2_columns(truth: &Array2<f64>, predicted: &Array2<f64>) -> f64 {
    let vals: Vec<f64> = (0..truth.ncols())
        .map(|c| r2(&truth.column(c).to_vec(), &predicted.column(c).to_vec()))
        .filter(|v| v.is_finite())
        .collect();
    if vals.is_empty() { f64::NAN } else { vals.iter().sum::<f64>() / vals.len() as f64 }
}

/// Average ranks (1-based), ties sharing their mean rank.
fn ranks(x: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut r = vec![0.0; x.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && x[order[j + 1]] == x[order[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for k in i..=j {
            r[order[k]] = avg;
        }
        i = j + 1;
    }
    r
}

fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma) * (x - ma)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb) * (y - mb)).sum();
    if va == 0.0 || vb == 0.0 { f64::NAN } else { cov / (va * vb).sqrt() }
}

/// Spearman's rank correlation (Pearson of average ranks, as scipy).
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    pearson(&ranks(a), &ranks(b))
}

/// Median (NaN for no values; the mean of the middle two for an even count); sorts `values`.
pub fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let m = values.len() / 2;
    if values.len() % 2 == 1 { values[m] } else { (values[m - 1] + values[m]) / 2.0 }
}

/// Adjusted Rand index between two labelings (Hubert & Arabie).
pub fn adjusted_rand_index(a: &[u32], b: &[u32]) -> f64 {
    let n = a.len() as f64;
    let mut table: std::collections::BTreeMap<(u32, u32), f64> = Default::default();
    let (mut ra, mut rb): (std::collections::BTreeMap<u32, f64>, std::collections::BTreeMap<u32, f64>) =
        Default::default();
    for (&x, &y) in a.iter().zip(b) {
        *table.entry((x, y)).or_default() += 1.0;
        *ra.entry(x).or_default() += 1.0;
        *rb.entry(y).or_default() += 1.0;
    }
    let c2 = |x: f64| x * (x - 1.0) / 2.0;
    let index: f64 = table.values().map(|&v| c2(v)).sum();
    let (sa, sb): (f64, f64) = (ra.values().map(|&v| c2(v)).sum(), rb.values().map(|&v| c2(v)).sum());
    let expected = sa * sb / c2(n);
    let max = (sa + sb) / 2.0;
    if (max - expected).abs() < f64::EPSILON { 1.0 } else { (index - expected) / (max - expected) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_metrics_match_scikit_learn() {
        // sklearn: f1_score([0,0,1,1,2,2],[0,1,1,1,2,0], average="macro") = 0.6555...
        let (t, p) = ([0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 0]);
        assert!((macro_f1(&t, &p, 3) - 0.655_555_555_555_555_6).abs() < 1e-12);
        assert!((accuracy(&t, &p) - 4.0 / 6.0).abs() < 1e-12);
        assert_eq!(confusion(&t, &p, 3), vec![vec![1, 1, 0], vec![0, 2, 0], vec![1, 0, 1]]);
        // A class neither true nor predicted is left out; one predicted but never true scores 0.
        assert!((macro_f1(&[0, 0], &[0, 0], 4) - 1.0).abs() < 1e-12);
        assert!((macro_f1(&[0, 0], &[0, 3], 4) - (2.0 / 3.0 + 0.0) / 2.0).abs() < 1e-12);
    }

    #[test]
    fn regression_metrics() {
        let t = [1.0, 2.0, 3.0, 4.0];
        assert!((r2(&t, &t) - 1.0).abs() < 1e-12);
        assert!(r2(&t, &[2.5; 4]).abs() < 1e-12, "the mean predicts R2 = 0");
        assert!((mae(&t, &[2.0, 2.0, 2.0, 2.0]) - 1.0).abs() < 1e-12);
        assert!((mse(&t, &[2.0, 2.0, 2.0, 2.0]) - 1.5).abs() < 1e-12);
        // scipy.stats.spearmanr([1,2,2,3],[1,3,2,4]) = 0.9486832980505138
        assert!((spearman(&[1.0, 2.0, 2.0, 3.0], &[1.0, 3.0, 2.0, 4.0]) - 0.948_683_298_050_513_8).abs() < 1e-12);
        assert!((spearman(&t, &[10.0, 20.0, 30.0, 1e6]) - 1.0).abs() < 1e-12, "monotone = 1");
    }

    #[test]
    fn calibration_error() {
        let p = ndarray::array![[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]];
        // Bin 0.9: confidence 0.9, accuracy 1/2; bin 0.6: confidence 0.6, accuracy 1/2.
        let e = expected_calibration_error(p.view(), &[0, 1, 0, 1], 10);
        assert!((e - (0.4 * 0.5 + 0.1 * 0.5)).abs() < 1e-12, "{e}");
    }

    #[test]
    fn ari_of_identical_and_permuted_labelings_is_one() {
        let a = [0, 0, 1, 1, 2, 2];
        assert!((adjusted_rand_index(&a, &a) - 1.0).abs() < 1e-12);
        assert!((adjusted_rand_index(&a, &[5, 5, 3, 3, 9, 9]) - 1.0).abs() < 1e-12);
        // A labeling that puts everything together carries no information.
        assert!(adjusted_rand_index(&a, &[0; 6]).abs() < 1e-12);
    }
}
