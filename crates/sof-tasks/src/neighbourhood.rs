//! The neighbourhood baselines a spatial embedding must beat: each cell's log-normalized
//! expression averaged over its spatial neighbours in its own section, then PCA fitted on the
//! training cells — NichePCA (Schaub et al., Bioinformatics 2025: the mean over the cell and its
//! k nearest neighbours) and BANKSY-style features (Singhal et al., Nature Genetics 2024: own and
//! neighbour-mean expression side by side, weighted by sqrt(1 - lambda) and sqrt(lambda); BANKSY
//! weights neighbours by a Gaussian kernel and adds an azimuthal gradient term, here the
//! neighbours count equally and the gradient is left out).

use ndarray::Array2;
use sof_io::CsrMatrix;
use sof_spatial::KnnGraph;

use crate::pca::Pca;
use crate::{Cells, Embedder, TaskError};

/// Appends the non-zero entries of a dense scratch row to CSR arrays (in column order) and
/// clears the row: how both builders below emit their rows.
fn push_row(row: &mut [f64], indices: &mut Vec<u32>, data: &mut Vec<f32>, indptr: &mut Vec<u64>) {
    for (c, r) in row.iter_mut().enumerate() {
        if *r != 0.0 {
            indices.push(c as u32);
            data.push(*r as f32);
            *r = 0.0;
        }
    }
    indptr.push(indices.len() as u64);
}

/// Mean of `x`'s rows over each cell's first `k` neighbours in `graph` (nearest first; fewer in
/// a smaller section; a cell without neighbours gets zeros), as CSR.
pub fn neighbour_mean(x: &CsrMatrix, graph: &KnnGraph, k: usize) -> CsrMatrix {
    let n = x.n_rows();
    let mut row = vec![0f64; x.n_cols()];
    let (mut indptr, mut indices, mut data) = (vec![0u64], Vec::new(), Vec::new());
    for i in 0..n {
        let nb = &graph.neighbors(i)[..graph.neighbors(i).len().min(k)];
        for &j in nb {
            let (c, v) = x.row(j as usize);
            for (&c, &v) in c.iter().zip(v) {
                row[c as usize] += f64::from(v);
            }
        }
        let m = nb.len().max(1) as f64;
        row.iter_mut().for_each(|r| *r /= m);
        push_row(&mut row, &mut indices, &mut data, &mut indptr);
    }
    CsrMatrix::new(n, x.n_cols(), indptr, indices, data).expect("rows built in column order")
}

/// `a * x + b * y` for two CSR matrices of the same shape, or `[a * x, b * y]` side by side.
fn combine(x: &CsrMatrix, y: &CsrMatrix, a: f64, b: f64, side_by_side: bool) -> CsrMatrix {
    let width = if side_by_side { x.n_cols() + y.n_cols() } else { x.n_cols() };
    let mut row = vec![0f64; width];
    let (mut indptr, mut indices, mut data) = (vec![0u64], Vec::new(), Vec::new());
    let offset = if side_by_side { x.n_cols() } else { 0 };
    for i in 0..x.n_rows() {
        let ((cx, vx), (cy, vy)) = (x.row(i), y.row(i));
        for (&c, &v) in cx.iter().zip(vx) {
            row[c as usize] += a * f64::from(v);
        }
        for (&c, &v) in cy.iter().zip(vy) {
            row[offset + c as usize] += b * f64::from(v);
        }
        push_row(&mut row, &mut indices, &mut data, &mut indptr);
    }
    CsrMatrix::new(x.n_rows(), width, indptr, indices, data).expect("rows built in column order")
}

/// Which neighbourhood features.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Neighbourhood {
    /// NichePCA: the mean over the cell and its `k` nearest neighbours.
    NichePca { k: usize },
    /// BANKSY-style: own expression and the mean over the `k` nearest neighbours side by side,
    /// weighted sqrt(1 - lambda) and sqrt(lambda).
    Banksy { k: usize, lambda: f64 },
}

/// PCA (`components`, fitted on the training cells) of neighbourhood-smoothed expression. Needs
/// [`Cells::neighbour_means`] for its `k`.
#[derive(Debug, Clone)]
pub struct NeighbourhoodPca {
    pub kind: Neighbourhood,
    pub components: usize,
    pub seed: u64,
    fitted: Option<(Pca, CsrMatrix)>,
}

impl NeighbourhoodPca {
    pub fn new(kind: Neighbourhood, components: usize, seed: u64) -> Self {
        Self { kind, components, seed, fitted: None }
    }

    fn features(&self, cells: &Cells) -> Result<CsrMatrix, TaskError> {
        let k = match self.kind {
            Neighbourhood::NichePca { k } | Neighbourhood::Banksy { k, .. } => k,
        };
        let nm = cells.neighbour_means.get(&k).ok_or_else(|| {
            TaskError::Invalid(format!("no neighbour means for k = {k}: the cells carry no coordinates for them"))
        })?;
        Ok(match self.kind {
            // (own + k * mean of the k neighbours) / (k + 1): the mean over the cell and them.
            Neighbourhood::NichePca { k } => {
                let w = 1.0 / (k + 1) as f64;
                combine(&cells.normalized, nm, w, k as f64 * w, false)
            }
            Neighbourhood::Banksy { lambda, .. } => {
                combine(&cells.normalized, nm, (1.0 - lambda).sqrt(), lambda.sqrt(), true)
            }
        })
    }
}

impl Embedder for NeighbourhoodPca {
    fn name(&self) -> String {
        match self.kind {
            Neighbourhood::NichePca { k } => format!("NichePCA (k {k})"),
            Neighbourhood::Banksy { k, lambda } => format!("BANKSY (k {k}, lambda {lambda})"),
        }
    }

    fn fit(&mut self, cells: &Cells, train: &[usize]) -> Result<(), TaskError> {
        let x = self.features(cells)?;
        let pca = Pca::fit(&x, train, self.components.min(x.n_cols()).min(train.len()), self.seed);
        self.fitted = Some((pca, x));
        Ok(())
    }

    fn embed(&self, _: &Cells, rows: &[usize]) -> Result<Array2<f64>, TaskError> {
        let (pca, x) = self
            .fitted
            .as_ref()
            .ok_or_else(|| TaskError::Invalid("neighbourhood PCA used before it was fitted".into()))?;
        Ok(pca.transform(x, rows))
    }
}

/// Neighbours averaged into [`niche_embedding`] by default (BANKSY's neighbour count).
pub const NICHE_K: usize = 20;

/// The niche embedding, first version (no trained weights): each cell's embedding beside the
/// mean embedding of its `k` nearest neighbours in its own section, `[own, neighbour mean]`,
/// `cells x 2d` — what NichePCA and BANKSY do to expression, done to the model's embedding.
/// Only distances choose neighbours, so rotating or translating a section changes nothing, and
/// the graph never links sections. Every section needs more than `k` cells. Sections are done
/// one at a time ([`SectionedPoints::each_section`](sof_spatial::SectionedPoints::each_section)),
/// so beside the output the working memory is the largest section's.
pub fn niche_embedding(
    x: ndarray::ArrayView2<f32>,
    points: &sof_spatial::SectionedPoints,
    k: usize,
) -> Result<Array2<f32>, TaskError> {
    let n = x.nrows();
    if points.len() != n {
        return Err(TaskError::Invalid(format!("{n} embedded cells but {} positions", points.len())));
    }
    if k == 0 {
        return Err(TaskError::Invalid("the niche needs k >= 1 neighbours".into()));
    }
    let mut sizes = vec![0usize; points.n_sections()];
    points.sections().iter().for_each(|&s| sizes[s as usize] += 1);
    if let Some((s, &size)) = sizes.iter().enumerate().find(|(_, c)| **c > 0 && **c <= k) {
        return Err(TaskError::Invalid(format!(
            "section {s} has {size} cell(s), too few for {k} neighbours each (k must be below every section's size)"
        )));
    }
    let d = x.ncols();
    let mut out = Array2::<f32>::zeros((n, 2 * d));
    out.slice_mut(ndarray::s![.., 0..d]).assign(&x);
    // One section's kd-tree and neighbour lists at a time: beside the output, the working
    // memory is the largest section's (k + 1 indices per cell), not the file's.
    let mut mean = vec![0f64; d];
    for (cells, section) in points.each_section() {
        let graph = KnnGraph::build(&section, k).map_err(|e| TaskError::Invalid(e.to_string()))?;
        for (local, &cell) in cells.iter().enumerate() {
            let nb = graph.neighbors(local);
            mean.fill(0.0);
            for &j in nb {
                for (m, &v) in mean.iter_mut().zip(x.row(cells[j as usize] as usize)) {
                    *m += f64::from(v);
                }
            }
            let w = 1.0 / nb.len().max(1) as f64;
            for (o, m) in out.slice_mut(ndarray::s![cell as usize, d..]).iter_mut().zip(&mean) {
                *o = (m * w) as f32;
            }
        }
    }
    Ok(out)
}

/// Scales (nearest neighbours) of the label-free niche profile by default.
pub const PROFILE_SCALES: [usize; 3] = [10, 30, 100];
/// Expression components per scale of the niche profile by default.
pub const PROFILE_COMPONENTS: usize = 16;

/// The label-free niche target: what each cell's neighbourhood expresses, from coordinates and
/// counts only (no annotation). PCA (`components`, fitted on every cell) of the log1p
/// 10k-normalized expression, averaged over the cell's `k` nearest neighbours in its own section
/// for each `k` in `scales` (the cell itself left out; a smaller section gives fewer), each column
/// standardized over the cells: `cells x (components * scales)`. At one scale this is NichePCA
/// without the cell's own term, so a model that predicts it from the cell's own tokens learns the
/// niche the cell sits in. Only distances choose neighbours: rotating or shifting a section
/// changes nothing.
pub fn niche_profile(
    counts: &CsrMatrix,
    points: &sof_spatial::SectionedPoints,
    scales: &[usize],
    components: usize,
    seed: u64,
) -> Result<Array2<f32>, TaskError> {
    let n = counts.n_rows();
    if points.len() != n {
        return Err(TaskError::Invalid(format!("{n} cells but {} positions", points.len())));
    }
    if scales.is_empty() || scales.contains(&0) || components == 0 {
        return Err(TaskError::Invalid(format!(
            "the niche profile needs scales >= 1 and components >= 1 (got scales {scales:?}, {components} components)"
        )));
    }
    if n < 2 {
        return Err(TaskError::Invalid(format!("{n} cell(s): a niche profile needs neighbours")));
    }
    let x = crate::pca::log_normalize(counts);
    let all: Vec<usize> = (0..n).collect();
    let pca = Pca::fit(&x, &all, components.min(x.n_cols()).min(n), seed);
    let pcs = pca.transform(&x, &all); // [n, p]
    let p = pcs.ncols();
    let k_max = *scales.iter().max().expect("non-empty");
    let graph = KnnGraph::build(points, k_max).map_err(|e| TaskError::Invalid(e.to_string()))?;
    let mut out = Array2::<f32>::zeros((n, p * scales.len()));
    for (s, &k) in scales.iter().enumerate() {
        let mut block = Array2::<f64>::zeros((n, p));
        for i in 0..n {
            let nb = &graph.neighbors(i)[..graph.neighbors(i).len().min(k)];
            let mut row = block.row_mut(i);
            for &j in nb {
                row += &pcs.row(j as usize);
            }
            row /= nb.len().max(1) as f64;
        }
        for (c, col) in block.columns().into_iter().enumerate() {
            let mean = col.mean().unwrap_or(0.0);
            let sd = col.std(0.0);
            let scale = if sd > 1e-12 { 1.0 / sd } else { 0.0 };
            for (i, v) in col.iter().enumerate() {
                out[[i, s * p + c]] = ((v - mean) * scale) as f32;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use sof_spatial::SectionedPoints;

    use super::*;

    #[test]
    fn neighbour_means_stay_in_their_section() {
        // Two sections on the same coordinates: neighbours never cross.
        let xy: Vec<[f64; 2]> = (0..6).map(|i| [(i % 3) as f64, 0.0]).collect();
        let points = SectionedPoints::new(xy, &[0, 0, 0, 1, 1, 1]).unwrap();
        let graph = KnnGraph::build(&points, 2).unwrap();
        let x = CsrMatrix::from_dense(6, 2, &[1.0, 0.0, 3.0, 0.0, 5.0, 0.0, 0.0, 2.0, 0.0, 4.0, 0.0, 6.0]);
        let m = neighbour_mean(&x, &graph, 2);
        let d = m.to_dense();
        // Cell 1 (middle of section 0): mean of cells 0 and 2 = 3 in gene 0, nothing in gene 1.
        assert_eq!(&d[2..4], &[3.0, 0.0]);
        // Cell 4 (middle of section 1): mean of cells 3 and 5.
        assert_eq!(&d[8..10], &[0.0, 4.0]);
        // First neighbour only: the nearest one.
        let m1 = neighbour_mean(&x, &graph, 1).to_dense();
        assert!(m1[0] == 3.0 && m1[1] == 0.0, "{m1:?}");
        // NichePCA smoothing includes the cell itself; BANKSY puts both side by side.
        let s = combine(&x, &m, 1.0 / 3.0, 2.0 / 3.0, false).to_dense();
        assert!((s[2] - 3.0).abs() < 1e-6, "(3 + 2 * 3) / 3");
        let b = combine(&x, &m, 0.5, 2.0, true);
        assert_eq!(b.n_cols(), 4);
        assert_eq!(&b.to_dense()[4..8], &[1.5, 0.0, 6.0, 0.0]);
    }

    /// The niche profile: one block of standardized neighbour-mean PCs per scale; the cell's own
    /// expression is not in it; sections never mix; rotating a section changes nothing.
    #[test]
    fn niche_profile_reads_only_the_neighbours() {
        // Two sections side by side on a line; genes 0/1 mark the left/right half of each.
        let n = 40;
        let xy: Vec<[f64; 2]> = (0..n).map(|i| [(i % 20) as f64, 0.0]).collect();
        let sections: Vec<u32> = (0..n).map(|i| (i / 20) as u32).collect();
        let dense: Vec<f32> =
            (0..n).flat_map(|i| if i % 20 < 10 { [5.0, 1.0, 1.0] } else { [1.0, 5.0, 1.0] }).collect();
        let counts = CsrMatrix::from_dense(n, 3, &dense);
        let points = SectionedPoints::new(xy.clone(), &sections).unwrap();
        let prof = niche_profile(&counts, &points, &[2, 6], 2, 0).unwrap();
        assert_eq!(prof.dim(), (n, 4));
        for c in 0..4 {
            let col = prof.column(c);
            let (m, sd) = (col.mean().unwrap(), col.std(0.0));
            assert!(m.abs() < 1e-4 && (sd < 1e-6 || (sd - 1.0).abs() < 1e-3), "column {c}: mean {m}, sd {sd}");
        }
        // Deep inside a half, the first component's neighbour mean has the sign of that half,
        // the same in both sections (they are copies).
        assert!(prof[[2, 0]] * prof[[17, 0]] < 0.0);
        assert!((prof[[2, 0]] - prof[[22, 0]]).abs() < 1e-4 && (prof[[17, 1]] - prof[[37, 1]]).abs() < 1e-4);
        // Section 1 rotated and shifted: the same profile.
        let (c, s) = (1.1f64.cos(), 1.1f64.sin());
        let moved: Vec<[f64; 2]> = xy
            .iter()
            .zip(&sections)
            .map(|(p, &sec)| if sec == 1 { [c * p[0] - s * p[1] + 90.0, s * p[0] + c * p[1] - 7.0] } else { *p })
            .collect();
        let prof2 = niche_profile(&counts, &SectionedPoints::new(moved, &sections).unwrap(), &[2, 6], 2, 0).unwrap();
        assert!(prof.iter().zip(&prof2).all(|(a, b)| (a - b).abs() < 1e-4));
        assert!(niche_profile(&counts, &points, &[], 2, 0).is_err());
        assert!(niche_profile(&counts, &points, &[3], 0, 0).is_err());
    }

    /// The niche embedding is [own, mean of the k nearest in the section]; rotating and shifting
    /// a section leaves it unchanged; sections never mix; too-small sections are errors.
    #[test]
    fn niche_embedding_is_invariant_and_stays_in_its_section() {
        let n = 60;
        let xy: Vec<[f64; 2]> = (0..n).map(|i| [((i * 37) % 61) as f64 * 1.3, ((i * 17) % 29) as f64 * 0.7]).collect();
        let sections: Vec<u32> = (0..n).map(|i| (i % 2) as u32).collect();
        let x = Array2::from_shape_fn((n, 3), |(i, j)| ((i * 7 + j * 3) % 11) as f32 - 5.0);
        let points = SectionedPoints::new(xy.clone(), &sections).unwrap();
        let e = niche_embedding(x.view(), &points, 5).unwrap();
        assert_eq!(e.dim(), (n, 6));
        assert_eq!(e.slice(ndarray::s![.., 0..3]), x);
        let graph = KnnGraph::build(&points, 5).unwrap();
        for i in 0..n {
            assert!(graph.neighbors(i).iter().all(|&j| sections[j as usize] == sections[i]));
            let m: f32 = graph.neighbors(i).iter().map(|&j| x[[j as usize, 1]]).sum::<f32>() / 5.0;
            assert!((e[[i, 4]] - m).abs() < 1e-5);
        }
        // Section 1 rotated by 40 degrees and shifted; section 0 left alone.
        let (c, s) = (40f64.to_radians().cos(), 40f64.to_radians().sin());
        let moved: Vec<[f64; 2]> = xy
            .iter()
            .zip(&sections)
            .map(|(p, &sec)| if sec == 1 { [c * p[0] - s * p[1] + 500.0, s * p[0] + c * p[1] - 42.0] } else { *p })
            .collect();
        let e2 = niche_embedding(x.view(), &SectionedPoints::new(moved, &sections).unwrap(), 5).unwrap();
        assert!(e.iter().zip(&e2).all(|(a, b)| (a - b).abs() < 1e-5), "rotation and translation change nothing");
        // Too few cells in a section for k, and mismatched inputs: errors.
        let e = niche_embedding(x.view(), &points, 30).unwrap_err().to_string();
        assert!(e.contains("30 cell(s)") && e.contains("section"), "{e}");
        assert!(niche_embedding(x.slice(ndarray::s![0..10, ..]), &points, 3).is_err());
        assert!(niche_embedding(x.view(), &points, 0).is_err());
    }
}
