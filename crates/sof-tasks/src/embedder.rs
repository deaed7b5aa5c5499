//! [`Embedder`]: features for cells — an embedding already computed (obsm), PCA of expression,
//! raw expression; the burn encoder implements it outside this crate. Probes fit every
//! embedder on the training cells of a fold and compare them with the same heads.

use std::collections::BTreeMap;

use ndarray::{Array2, Axis};
use sof_io::CsrMatrix;

use crate::TaskError;
use crate::pca::{Pca, dense, log_normalize};

/// The cells a task runs on: raw counts, their log1p 10k normalization (computed once), the
/// per-cell arrays (embeddings, coordinates) by obsm key and, for spatial data, the mean
/// normalized expression of each cell's `k` nearest neighbours in its section, by `k` (for the
/// neighbourhood baselines; see [`crate::neighbourhood`]).
#[derive(Debug, Clone)]
pub struct Cells {
    pub counts: CsrMatrix,
    pub normalized: CsrMatrix,
    pub obsm: BTreeMap<String, Array2<f64>>,
    pub neighbour_means: BTreeMap<usize, CsrMatrix>,
}

impl Cells {
    /// Cells from raw counts and per-cell arrays (every array needs one row per cell).
    pub fn new(counts: CsrMatrix, obsm: BTreeMap<String, Array2<f64>>) -> Result<Self, TaskError> {
        if let Some((key, a)) = obsm.iter().find(|(_, a)| a.nrows() != counts.n_rows()) {
            return Err(TaskError::Invalid(format!(
                "obsm '{key}' has {} rows for {} cells",
                a.nrows(),
                counts.n_rows()
            )));
        }
        Ok(Self { normalized: log_normalize(&counts), counts, obsm, neighbour_means: BTreeMap::new() })
    }

    /// Adds the neighbour means for each `k` of `ks`. `counts` and `points` cover every cell of
    /// the data set (neighbours need not be among the task's cells); `rows` are the task's cells
    /// among them, in this object's order.
    pub fn with_neighbourhoods(
        mut self,
        counts: &CsrMatrix,
        points: &sof_spatial::SectionedPoints,
        rows: &[usize],
        ks: &[usize],
    ) -> Result<Self, TaskError> {
        if rows.len() != self.len() || counts.n_rows() != points.len() {
            return Err(TaskError::Invalid(format!(
                "{} task cells, {} rows; {} cells with {} positions",
                self.len(),
                rows.len(),
                counts.n_rows(),
                points.len()
            )));
        }
        let Some(&k_max) = ks.iter().max() else { return Ok(self) };
        let graph = sof_spatial::KnnGraph::build(points, k_max).map_err(|e| TaskError::Invalid(e.to_string()))?;
        let normalized = log_normalize(counts);
        for &k in ks {
            let m = crate::neighbourhood::neighbour_mean(&normalized, &graph, k);
            self.neighbour_means.insert(k, m.select_rows(rows));
        }
        Ok(self)
    }

    pub fn len(&self) -> usize {
        self.counts.n_rows()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Features for cells: fitted on training cells (a no-op where nothing is fitted), then asked
/// for any rows.
///
/// ```
/// use std::collections::BTreeMap;
/// use sof_io::CsrMatrix;
/// use sof_tasks::{Cells, Embedder, PcaEmbedder};
///
/// let counts = CsrMatrix::from_dense(4, 3, &[5.0, 0.0, 1.0, 4.0, 1.0, 0.0, 0.0, 6.0, 1.0, 1.0, 5.0, 0.0]);
/// let cells = Cells::new(counts, BTreeMap::new()).unwrap();
/// let mut pca = PcaEmbedder::new(2, 0);
/// pca.fit(&cells, &[0, 1, 2]).unwrap(); // training cells only
/// let features = pca.embed(&cells, &[3]).unwrap(); // a held-out cell
/// assert_eq!(features.dim(), (1, 2));
/// ```
pub trait Embedder: Send + Sync {
    /// The feature set's name in reports.
    fn name(&self) -> String;
    /// Fits on cells `train` (indices into `cells`).
    fn fit(&mut self, cells: &Cells, train: &[usize]) -> Result<(), TaskError>;
    /// Features of cells `rows`, `rows.len() x d`.
    fn embed(&self, cells: &Cells, rows: &[usize]) -> Result<Array2<f64>, TaskError>;
}

/// An embedding computed before (e.g. obsm['X_sof'] from `sof embed`): nothing to fit.
#[derive(Debug, Clone)]
pub struct ObsmEmbedder {
    pub key: String,
}

impl Embedder for ObsmEmbedder {
    fn name(&self) -> String {
        format!("embedding ({})", self.key)
    }

    fn fit(&mut self, _: &Cells, _: &[usize]) -> Result<(), TaskError> {
        Ok(())
    }

    fn embed(&self, cells: &Cells, rows: &[usize]) -> Result<Array2<f64>, TaskError> {
        let a = cells.obsm.get(&self.key).ok_or_else(|| {
            TaskError::Invalid(format!(
                "no obsm '{}' (have: {})",
                self.key,
                cells.obsm.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })?;
        Ok(a.select(Axis(0), rows))
    }
}

/// PCA of log-normalized expression with `k` components (fewer when there are fewer genes or
/// training cells), fitted on the training cells; seeded.
#[derive(Debug, Clone)]
pub struct PcaEmbedder {
    pub k: usize,
    pub seed: u64,
    fitted: Option<Pca>,
}

impl PcaEmbedder {
    pub fn new(k: usize, seed: u64) -> Self {
        Self { k, seed, fitted: None }
    }
}

impl Embedder for PcaEmbedder {
    fn name(&self) -> String {
        format!("PCA-{}", self.k)
    }

    fn fit(&mut self, cells: &Cells, train: &[usize]) -> Result<(), TaskError> {
        let x = &cells.normalized;
        self.fitted = Some(Pca::fit(x, train, self.k.min(x.n_cols()).min(train.len()), self.seed));
        Ok(())
    }

    fn embed(&self, cells: &Cells, rows: &[usize]) -> Result<Array2<f64>, TaskError> {
        let pca = self.fitted.as_ref().ok_or_else(|| TaskError::Invalid("PCA used before it was fitted".into()))?;
        Ok(pca.transform(&cells.normalized, rows))
    }
}

/// The log-normalized expression itself (dense; for panels of a few thousand genes at most).
#[derive(Debug, Clone, Default)]
pub struct RawEmbedder;

impl RawEmbedder {
    /// Above this many genes the raw baseline is left out (dense features get too wide).
    pub const MAX_GENES: usize = 3_000;
}

impl Embedder for RawEmbedder {
    fn name(&self) -> String {
        "raw log-normalized".into()
    }

    fn fit(&mut self, _: &Cells, _: &[usize]) -> Result<(), TaskError> {
        Ok(())
    }

    fn embed(&self, cells: &Cells, rows: &[usize]) -> Result<Array2<f64>, TaskError> {
        Ok(dense(&cells.normalized, rows))
    }
}
