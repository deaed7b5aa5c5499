//! The first picture of a new embedding: a 2-D UMAP of it (manifolds-rs: the standard
//! fuzzy-graph UMAP with spectral initialisation, seeded), and a number for how mixed its
//! batches are (kNN purity of a label: technology, modality, layer).

use ndarray::{Array2, ArrayView2};
use rand::SeedableRng;
use rand::seq::index::sample;

use crate::TaskError;

/// UMAP settings; the defaults are scanpy's (`sc.pp.neighbors` 15 neighbours, `sc.tl.umap`
/// min_dist 0.5, spread 1).
#[derive(Debug, Clone, PartialEq)]
pub struct UmapSettings {
    pub neighbours: usize,
    pub min_dist: f32,
    pub seed: u64,
}

impl Default for UmapSettings {
    fn default() -> Self {
        UmapSettings { neighbours: 15, min_dist: 0.5, seed: 0 }
    }
}

/// A 2-D UMAP of the rows of `x` (cells x features), cells x 2. The same `x` and seed give the
/// same coordinates (the optimiser is manifolds-rs's sequential SGD with a seeded sampler).
///
/// ```
/// let x = ndarray::Array2::from_shape_fn((60, 4), |(i, j)| ((i % 3) * 10 + j) as f32 + (i as f32 * 0.37).sin());
/// let settings = sof_tasks::view::UmapSettings::default();
/// let xy = sof_tasks::view::umap(x.view(), &settings).unwrap();
/// assert_eq!(xy.dim(), (60, 2));
/// assert_eq!(xy, sof_tasks::view::umap(x.view(), &settings).unwrap(), "seeded");
/// ```
pub fn umap(x: ArrayView2<f32>, settings: &UmapSettings) -> Result<Array2<f32>, TaskError> {
    let (n, d) = x.dim();
    if n < settings.neighbours + 2 {
        return Err(TaskError::Invalid(format!(
            "UMAP needs more cells than its {} neighbours + 1; there are {n}",
            settings.neighbours
        )));
    }
    if d == 0 || x.iter().any(|v| !v.is_finite()) {
        return Err(TaskError::Invalid("UMAP needs finite features in at least one column".into()));
    }
    let x = x.as_standard_layout(); // a copy only when the view is not row-major already
    let data = x.as_slice().expect("standard layout is contiguous");
    let mut params = manifolds_rs::UmapParams::<f32>::new_default_2d(Some(settings.min_dist), None);
    params.k = settings.neighbours;
    params.optimiser = OPTIMISER.into();
    let seed = usize::try_from(settings.seed).unwrap_or(usize::MAX);
    let coords = manifolds_rs::umap((data, n, d), None, &params, seed, 0)
        .map_err(|e| TaskError::Invalid(format!("UMAP failed: {e}")))?;
    Ok(Array2::from_shape_fn((n, 2), |(i, j)| coords[j][i]))
}

/// manifolds-rs's optimiser we use: sequential SGD gives the same layout for the same seed.
const OPTIMISER: &str = "sgd";

/// How often a cell's nearest neighbours share its label.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Purity {
    /// Mean over the query cells of the fraction of their k nearest neighbours (Euclidean,
    /// the cell itself excluded) with the same label.
    pub observed: f64,
    /// The same under perfect mixing (labels shuffled): sum over labels of n_c (n_c - 1) /
    /// (n (n - 1)).
    pub expected: f64,
    pub k: usize,
}

/// kNN purity of `labels` in the embedding `x` (cells x features). Close to `expected`: the
/// labels are mixed (what one wants of technologies and modalities); close to 1: they separate
/// (what one wants of layers and cell types). At most `max_queries` cells (drawn with `seed`)
/// are queried against all cells, so the cost is bounded on large files.
///
/// ```
/// let x = ndarray::array![[0.0f32], [0.1], [0.2], [5.0], [5.1], [5.2]];
/// let p = sof_tasks::view::knn_purity(x.view(), &[0, 0, 0, 1, 1, 1], 2, 100, 0).unwrap();
/// assert_eq!(p.observed, 1.0);
/// assert!((p.expected - 0.4).abs() < 1e-12); // 2 * 3 * 2 / (6 * 5)
/// ```
pub fn knn_purity(
    x: ArrayView2<f32>,
    labels: &[usize],
    k: usize,
    max_queries: usize,
    seed: u64,
) -> Result<Purity, TaskError> {
    let labels: Vec<Option<usize>> = labels.iter().map(|&l| Some(l)).collect();
    NearestNeighbours::new(x, k, max_queries, seed)?.purity(&labels)
}

/// The `k` nearest neighbours (Euclidean, the cell itself excluded) of at most `max_queries`
/// cells drawn with `seed`, searched among all cells: computed once, then scored against as
/// many labels as wanted ([`NearestNeighbours::purity`]). Brute force, queries x cells x
/// features: 2,000 queries of 10,000 cells in 256 dimensions take about a second.
#[derive(Debug, Clone)]
pub struct NearestNeighbours {
    k: usize,
    n: usize,
    queries: Vec<usize>,
    /// `queries.len() x k`, nearest first is not promised.
    neighbours: Vec<usize>,
}

impl NearestNeighbours {
    pub fn new(x: ArrayView2<f32>, k: usize, max_queries: usize, seed: u64) -> Result<Self, TaskError> {
        let n = x.nrows();
        if k == 0 || n <= k {
            return Err(TaskError::Invalid(format!("kNN purity with k = {k} needs more than k cells; there are {n}")));
        }
        if x.iter().any(|v| !v.is_finite()) {
            return Err(TaskError::Invalid("kNN purity needs finite features".into()));
        }
        let queries: Vec<usize> = if n > max_queries.max(1) {
            let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(seed);
            let mut q = sample(&mut rng, n, max_queries.max(1)).into_vec();
            q.sort_unstable();
            q
        } else {
            (0..n).collect()
        };
        let mut dist = vec![(0.0f32, 0usize); n - 1];
        let mut neighbours = Vec::with_capacity(queries.len() * k);
        for &i in &queries {
            let xi = x.row(i);
            for (m, j) in (0..n).filter(|&j| j != i).enumerate() {
                let d: f32 = xi.iter().zip(x.row(j)).map(|(a, b)| (a - b) * (a - b)).sum();
                dist[m] = (d, j);
            }
            // Ties by index, so the neighbours do not depend on the sort.
            dist.select_nth_unstable_by(k - 1, |a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            neighbours.extend(dist[..k].iter().map(|&(_, j)| j));
        }
        Ok(NearestNeighbours { k, n, queries, neighbours })
    }

    pub fn k(&self) -> usize {
        self.k
    }

    /// How often a queried cell's neighbours share its label; cells without a label (`None`)
    /// are not scored and count as a different label among neighbours. `expected` is what
    /// labels shuffled over the cells give: sum over labels of n_c (n_c - 1) / (n_labelled
    /// (n - 1)).
    pub fn purity(&self, labels: &[Option<usize>]) -> Result<Purity, TaskError> {
        if labels.len() != self.n {
            return Err(TaskError::Invalid(format!("{} labels for {} cells", labels.len(), self.n)));
        }
        let mut counts = std::collections::HashMap::<usize, f64>::new();
        for l in labels.iter().flatten() {
            *counts.entry(*l).or_default() += 1.0;
        }
        let labelled: f64 = counts.values().sum();
        if labelled == 0.0 {
            return Err(TaskError::Invalid("kNN purity of a label no cell has".into()));
        }
        let expected = counts.values().map(|c| c * (c - 1.0)).sum::<f64>() / (labelled * (self.n as f64 - 1.0));
        let (mut same, mut scored) = (0usize, 0usize);
        for (q, &i) in self.queries.iter().enumerate() {
            let Some(li) = labels[i] else { continue };
            scored += 1;
            same += self.neighbours[q * self.k..(q + 1) * self.k].iter().filter(|&&j| labels[j] == Some(li)).count();
        }
        if scored == 0 {
            return Err(TaskError::Invalid("kNN purity: no queried cell has the label".into()));
        }
        Ok(Purity { observed: same as f64 / (scored * self.k) as f64, expected, k: self.k })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_distr::{Distribution, Normal};

    /// Six Gaussian clusters in 20 dimensions, 40 cells each.
    fn clusters(seed: u64) -> (Array2<f32>, Vec<usize>) {
        let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(seed);
        let noise = Normal::new(0.0f32, 1.0).unwrap();
        let labels: Vec<usize> = (0..240).map(|i| i % 6).collect();
        let x = Array2::from_shape_fn((240, 20), |(i, j)| {
            let centre = if j % 6 == labels[i] { 6.0 } else { 0.0 };
            centre + noise.sample(&mut rng)
        });
        (x, labels)
    }

    /// The 2-D layout keeps clusters apart (kNN purity far above chance, as in the input), is
    /// the same for the same seed and moves with another.
    #[test]
    fn umap_keeps_clusters_apart_and_is_seeded() {
        let (x, labels) = clusters(1);
        let input = knn_purity(x.view(), &labels, 10, 1000, 0).unwrap();
        assert!(input.observed > 0.95, "{input:?}");
        let settings = UmapSettings { seed: 3, ..Default::default() };
        let xy = umap(x.view(), &settings).unwrap();
        assert_eq!(xy.dim(), (240, 2));
        assert!(xy.iter().all(|v| v.is_finite()));
        let p = knn_purity(xy.view(), &labels, 10, 1000, 0).unwrap();
        assert!((p.expected - 39.0 / 239.0).abs() < 1e-12, "{p:?}");
        assert!(p.observed > 0.9, "clusters stay apart in 2-D: {p:?}");
        assert_eq!(xy, umap(x.view(), &settings).unwrap(), "same seed, same layout");
        assert_ne!(xy, umap(x.view(), &UmapSettings { seed: 4, ..settings.clone() }).unwrap());
    }

    /// Labels that do not follow the embedding give the purity random mixing gives; bad input is
    /// an error, not a panic.
    #[test]
    fn purity_of_mixed_labels_is_the_expected_one_and_bad_input_is_refused() {
        let (x, labels) = clusters(2);
        let mixed: Vec<usize> = (0..240).map(|i| (i / 6) % 2).collect();
        let p = knn_purity(x.view(), &mixed, 10, 1000, 0).unwrap();
        assert!((p.observed - p.expected).abs() < 0.08, "{p:?}");
        // Unlabelled cells are not scored and are never "the same" among neighbours: here half of
        // each even cluster is unlabelled, so its labelled cells see half their neighbours agree.
        let nn = NearestNeighbours::new(x.view(), 10, 1000, 0).unwrap();
        let partial: Vec<Option<usize>> = labels.iter().enumerate().map(|(i, &l)| (i % 4 != 0).then_some(l)).collect();
        let p = nn.purity(&partial).unwrap();
        assert!((p.observed - (120.0 + 60.0 * 0.5) / 180.0).abs() < 0.05, "{p:?}");
        assert!((p.expected - (3.0 * 40.0 * 39.0 + 3.0 * 20.0 * 19.0) / (180.0 * 239.0)).abs() < 1e-12, "{p:?}");
        assert!(nn.purity(&[None; 240]).is_err());
        assert!(nn.purity(&partial[..100]).is_err());
        let sampled = knn_purity(x.view(), &labels, 10, 50, 9).unwrap();
        assert!(sampled.observed > 0.95 && sampled.k == 10, "{sampled:?}");
        assert!(knn_purity(x.view(), &labels[..10], 10, 100, 0).is_err());
        assert!(knn_purity(x.view(), &labels, 0, 100, 0).is_err());
        assert!(umap(x.slice(ndarray::s![..10, ..]), &UmapSettings::default()).is_err());
        let mut bad = x.clone();
        bad[[3, 3]] = f32::NAN;
        let e = umap(bad.view(), &UmapSettings::default()).unwrap_err().to_string();
        assert!(e.contains("finite"), "{e}");
    }
}
