//! Niche labels for datasets without author niches: k-means on neighbourhood composition
//! vectors, k-means++ initialisation from a fixed seed, Lloyd iterations until no cell moves.

use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use rayon::prelude::*;

use crate::SpatialError;

/// A fitted k-means model.
#[derive(Debug, Clone, PartialEq)]
pub struct KMeans {
    /// k x dim, row-major.
    pub centroids: Vec<f32>,
    pub labels: Vec<u32>,
    pub iterations: usize,
}

fn dist2(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Clusters the rows of `data` (n x dim, row-major) into `k` groups; deterministic for a seed.
pub fn niches(data: &[f32], dim: usize, k: usize, seed: u64) -> Result<KMeans, SpatialError> {
    if dim == 0 || !data.len().is_multiple_of(dim) {
        return Err(SpatialError::Other(format!(
            "composition data of {} values is not a multiple of {dim} columns",
            data.len()
        )));
    }
    let n = data.len() / dim;
    if k == 0 || k > n {
        return Err(SpatialError::Other(format!(
            "number of niches must be between 1 and the number of cells ({n}), got {k}"
        )));
    }
    let row = |i: usize| &data[i * dim..(i + 1) * dim];
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    // k-means++ seeding.
    let mut centroids = Vec::with_capacity(k * dim);
    centroids.extend_from_slice(row(rng.random_range(0..n)));
    let mut d2: Vec<f32> = (0..n).into_par_iter().map(|i| dist2(row(i), &centroids[..dim])).collect();
    for c in 1..k {
        let total: f64 = d2.iter().map(|&x| f64::from(x)).sum();
        let pick = if total > 0.0 {
            let mut t = rng.random::<f64>() * total;
            let mut chosen = n - 1;
            for (i, &x) in d2.iter().enumerate() {
                t -= f64::from(x);
                if t <= 0.0 {
                    chosen = i;
                    break;
                }
            }
            chosen
        } else {
            rng.random_range(0..n)
        };
        centroids.extend_from_slice(row(pick));
        let new = &centroids[c * dim..(c + 1) * dim];
        d2.par_iter_mut().enumerate().for_each(|(i, d)| *d = d.min(dist2(row(i), new)));
    }
    let mut labels = vec![u32::MAX; n];
    let mut iterations = 0;
    loop {
        iterations += 1;
        let assign: Vec<u32> = (0..n)
            .into_par_iter()
            .map(|i| {
                (0..k)
                    .min_by(|&a, &b| {
                        dist2(row(i), &centroids[a * dim..(a + 1) * dim])
                            .total_cmp(&dist2(row(i), &centroids[b * dim..(b + 1) * dim]))
                    })
                    .unwrap() as u32
            })
            .collect();
        let changed = assign != labels;
        labels = assign;
        if !changed || iterations >= 300 {
            break;
        }
        let mut sums = vec![0f64; k * dim];
        let mut counts = vec![0usize; k];
        for i in 0..n {
            let c = labels[i] as usize;
            counts[c] += 1;
            for (s, &x) in sums[c * dim..(c + 1) * dim].iter_mut().zip(row(i)) {
                *s += f64::from(x);
            }
        }
        for c in 0..k {
            if counts[c] > 0 {
                for j in 0..dim {
                    centroids[c * dim + j] = (sums[c * dim + j] / counts[c] as f64) as f32;
                }
            }
        }
    }
    Ok(KMeans { centroids, labels, iterations })
}
