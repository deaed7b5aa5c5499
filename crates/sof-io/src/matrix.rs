//! [`CsrMatrix`]: cells x genes counts in compressed sparse row form, `f32` values.

use std::ops::Range;

/// A cells x genes matrix in CSR form.
///
/// Invariants (checked by [`CsrMatrix::new`]): `indptr.len() == n_rows + 1`, `indptr` starts at 0,
/// never decreases and ends at `indices.len() == data.len()`; every column index is `< n_cols`.
/// Column indices within a row are not required to be sorted. A column that appears twice in a
/// row is one entry holding the sum of the values (scipy's `sum_duplicates`, what `X[i, j]` reads
/// there): [`CsrMatrix::new`] merges them, so every reader and the tokenizer see one value per
/// gene.
#[derive(Debug, Clone, PartialEq)]
pub struct CsrMatrix {
    n_rows: usize,
    n_cols: usize,
    indptr: Vec<u64>,
    indices: Vec<u32>,
    data: Vec<f32>,
}

/// What is wrong with the parts handed to [`CsrMatrix::new`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CsrError {
    #[error("indptr has {got} entries, expected n_rows + 1 = {expected}")]
    IndptrLength { got: usize, expected: usize },
    #[error("indptr must start at 0 and never decrease (first problem at row {row})")]
    IndptrOrder { row: usize },
    #[error("indptr ends at {end} but there are {indices} column indices and {data} values")]
    Lengths { end: u64, indices: usize, data: usize },
    #[error("column index {col} in row {row} is out of range for {n_cols} genes")]
    ColumnRange { row: usize, col: u32, n_cols: usize },
}

impl CsrMatrix {
    /// Builds a matrix from its CSR parts, checking every invariant.
    pub fn new(
        n_rows: usize,
        n_cols: usize,
        indptr: Vec<u64>,
        indices: Vec<u32>,
        data: Vec<f32>,
    ) -> Result<Self, CsrError> {
        if indptr.len() != n_rows + 1 {
            return Err(CsrError::IndptrLength { got: indptr.len(), expected: n_rows + 1 });
        }
        if indptr[0] != 0 {
            return Err(CsrError::IndptrOrder { row: 0 });
        }
        if let Some(row) = indptr.windows(2).position(|w| w[1] < w[0]) {
            return Err(CsrError::IndptrOrder { row });
        }
        let end = indptr[n_rows];
        if end as usize != indices.len() || indices.len() != data.len() {
            return Err(CsrError::Lengths { end, indices: indices.len(), data: data.len() });
        }
        if let Some(pos) = first_where(&indices, |&c| c as usize >= n_cols) {
            let row = indptr.partition_point(|&p| p as usize <= pos) - 1;
            return Err(CsrError::ColumnRange { row, col: indices[pos], n_cols });
        }
        let mut m = Self { n_rows, n_cols, indptr, indices, data };
        m.sum_duplicates();
        Ok(m)
    }

    /// Merges repeated column indices within each row into their first position, summing the
    /// values; a matrix without duplicates is left untouched. A row in ascending column order
    /// (canonical CSR, what anndata and sof write) has none by construction, which a sequential
    /// scan shows; only other rows are checked with a per-column stamp (one random access per
    /// stored value: `CsrMatrix::new` of 20,000 sorted rows x 2,100 values took 95 ms with the
    /// stamp on every row, 69 ms with the scan).
    fn sum_duplicates(&mut self) {
        let unsorted: Vec<usize> =
            (0..self.n_rows).filter(|&i| !self.indices[self.row_range(i)].windows(2).all(|w| w[0] < w[1])).collect();
        if unsorted.is_empty() {
            return;
        }
        let mut stamp = vec![u64::MAX; self.n_cols];
        let mut duplicated = false;
        'rows: for &i in &unsorted {
            for k in self.row_range(i) {
                let c = self.indices[k] as usize;
                if stamp[c] == i as u64 {
                    duplicated = true;
                    break 'rows;
                }
                stamp[c] = i as u64;
            }
        }
        if !duplicated {
            return;
        }
        let mut at = vec![0usize; self.n_cols];
        stamp.fill(u64::MAX);
        let (mut indptr, mut indices, mut data) = (vec![0u64], Vec::new(), Vec::new());
        for i in 0..self.n_rows {
            for k in self.row_range(i) {
                let c = self.indices[k] as usize;
                if stamp[c] == i as u64 {
                    data[at[c]] += self.data[k];
                } else {
                    stamp[c] = i as u64;
                    at[c] = indices.len();
                    indices.push(self.indices[k]);
                    data.push(self.data[k]);
                }
            }
            indptr.push(indices.len() as u64);
        }
        (self.indptr, self.indices, self.data) = (indptr, indices, data);
    }

    /// An empty matrix with `n_cols` genes and no cells.
    pub fn empty(n_cols: usize) -> Self {
        Self { n_rows: 0, n_cols, indptr: vec![0], indices: Vec::new(), data: Vec::new() }
    }

    /// Builds a CSR matrix from a dense row-major slice, keeping non-zero entries.
    pub fn from_dense(n_rows: usize, n_cols: usize, values: &[f32]) -> Self {
        assert_eq!(values.len(), n_rows * n_cols, "dense buffer does not match its shape");
        let mut indptr = Vec::with_capacity(n_rows + 1);
        let mut indices = Vec::new();
        let mut data = Vec::new();
        indptr.push(0);
        for row in values.chunks_exact(n_cols.max(1)).take(n_rows) {
            for (j, &v) in row.iter().enumerate() {
                if v != 0.0 {
                    indices.push(j as u32);
                    data.push(v);
                }
            }
            indptr.push(indices.len() as u64);
        }
        if n_cols == 0 {
            indptr.resize(n_rows + 1, 0);
        }
        Self { n_rows, n_cols, indptr, indices, data }
    }

    /// Number of cells.
    pub fn n_rows(&self) -> usize {
        self.n_rows
    }

    /// Number of genes.
    pub fn n_cols(&self) -> usize {
        self.n_cols
    }

    /// Number of stored entries (explicit zeros included, if the source stored any).
    pub fn nnz(&self) -> usize {
        self.data.len()
    }

    /// Number of stored entries that are not zero.
    pub fn nnz_nonzero(&self) -> usize {
        self.data.iter().filter(|&&v| v != 0.0).count()
    }

    pub fn indptr(&self) -> &[u64] {
        &self.indptr
    }

    pub fn indices(&self) -> &[u32] {
        &self.indices
    }

    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// Column indices and values of one cell.
    pub fn row(&self, i: usize) -> (&[u32], &[f32]) {
        let r = self.row_range(i);
        (&self.indices[r.clone()], &self.data[r])
    }

    fn row_range(&self, i: usize) -> Range<usize> {
        self.indptr[i] as usize..self.indptr[i + 1] as usize
    }

    /// Total counts per cell, summed in `f64`.
    pub fn row_sums(&self) -> Vec<f64> {
        (0..self.n_rows).map(|i| self.row(i).1.iter().map(|&v| f64::from(v)).sum()).collect()
    }

    /// Copies rows `range` into a new matrix.
    pub fn slice_rows(&self, range: Range<usize>) -> Self {
        let (a, b) = (self.indptr[range.start], self.indptr[range.end]);
        Self {
            n_rows: range.len(),
            n_cols: self.n_cols,
            indptr: self.indptr[range.start..=range.end].iter().map(|p| p - a).collect(),
            indices: self.indices[a as usize..b as usize].to_vec(),
            data: self.data[a as usize..b as usize].to_vec(),
        }
    }

    /// Appends the rows of `other` (same number of genes) below these.
    pub fn append_rows(&mut self, other: &CsrMatrix) {
        assert_eq!(self.n_cols, other.n_cols, "appending rows with a different gene count");
        let base = *self.indptr.last().expect("indptr is never empty");
        self.indptr.extend(other.indptr[1..].iter().map(|p| p + base));
        self.indices.extend_from_slice(&other.indices);
        self.data.extend_from_slice(&other.data);
        self.n_rows += other.n_rows;
    }

    /// The columns `remap` keeps (`remap[old] = Some(new)`), renumbered into `width` columns:
    /// e.g. two files' counts over the genes they share.
    ///
    /// ```
    /// let x = sof_io::CsrMatrix::from_dense(1, 3, &[1.0, 2.0, 3.0]);
    /// let y = x.remap_columns(&[None, Some(1), Some(0)], 2);
    /// assert_eq!(y.to_dense(), [3.0, 2.0]);
    /// ```
    pub fn remap_columns(&self, remap: &[Option<u32>], width: usize) -> Self {
        assert_eq!(remap.len(), self.n_cols, "one entry of remap per column");
        let (mut indptr, mut indices, mut data) = (vec![0u64], Vec::new(), Vec::new());
        let mut row: Vec<(u32, f32)> = Vec::new();
        for i in 0..self.n_rows {
            let (c, v) = self.row(i);
            row.clear();
            row.extend(c.iter().zip(v).filter_map(|(&c, &v)| remap[c as usize].map(|j| (j, v))));
            row.sort_unstable_by_key(|e| e.0);
            indices.extend(row.iter().map(|e| e.0));
            data.extend(row.iter().map(|e| e.1));
            indptr.push(indices.len() as u64);
        }
        CsrMatrix::new(self.n_rows, width, indptr, indices, data).expect("remap targets lie below width")
    }

    /// Keeps only the listed rows, in the order given.
    pub fn select_rows(&self, rows: &[usize]) -> Self {
        let mut indptr = Vec::with_capacity(rows.len() + 1);
        let mut indices = Vec::new();
        let mut data = Vec::new();
        indptr.push(0);
        for &i in rows {
            let (c, v) = self.row(i);
            indices.extend_from_slice(c);
            data.extend_from_slice(v);
            indptr.push(indices.len() as u64);
        }
        Self { n_rows: rows.len(), n_cols: self.n_cols, indptr, indices, data }
    }

    /// Sorts the column indices within every row (values follow), as scipy's `sort_indices`.
    pub fn sort_indices(&mut self) {
        for i in 0..self.n_rows {
            let r = self.row_range(i);
            if self.indices[r.clone()].is_sorted() {
                continue;
            }
            let mut pairs: Vec<(u32, f32)> = r.clone().map(|k| (self.indices[k], self.data[k])).collect();
            pairs.sort_unstable_by_key(|p| p.0);
            for (k, (c, v)) in r.zip(pairs) {
                self.indices[k] = c;
                self.data[k] = v;
            }
        }
    }

    /// Dense row-major copy. For tests and small matrices only.
    pub fn to_dense(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.n_rows * self.n_cols];
        for i in 0..self.n_rows {
            let (c, v) = self.row(i);
            for (&j, &x) in c.iter().zip(v) {
                out[i * self.n_cols + j as usize] += x;
            }
        }
        out
    }

    /// First entry that is NaN, infinite or negative, as `(row, col, value)`.
    pub fn first_invalid_value(&self) -> Option<(usize, u32, f32)> {
        let pos = first_where(&self.data, |v| !(*v >= 0.0 && *v < f32::INFINITY))?;
        let row = self.indptr.partition_point(|&p| p as usize <= pos) - 1;
        Some((row, self.indices[pos], self.data[pos]))
    }

    /// Consumes the matrix into `(n_rows, n_cols, indptr, indices, data)`.
    pub fn into_parts(self) -> (usize, usize, Vec<u64>, Vec<u32>, Vec<f32>) {
        (self.n_rows, self.n_cols, self.indptr, self.indices, self.data)
    }
}

/// The first position where `bad` holds, like `iter().position(bad)`, but as fast as a scan
/// without an early exit: chunks are checked whole (that vectorizes), and only the chunk that
/// fails is searched. For checks that run on every value read.
pub(crate) fn first_where<T>(xs: &[T], bad: impl Fn(&T) -> bool) -> Option<usize> {
    const CHUNK: usize = 256;
    let chunk = xs.chunks(CHUNK).position(|c| c.iter().fold(false, |any, x| any | bad(x)))?;
    xs[chunk * CHUNK..].iter().position(bad).map(|p| chunk * CHUNK + p)
}

/// Converts CSC parts (`indptr` over columns, `indices` are rows) into a CSR matrix.
pub(crate) fn csc_to_csr(
    n_rows: usize,
    n_cols: usize,
    col_ptr: &[u64],
    row_idx: &[u32],
    values: &[f32],
) -> Result<CsrMatrix, CsrError> {
    // The same invariants, checked on the transposed view.
    let check = CsrMatrix::new(n_cols, n_rows, col_ptr.to_vec(), row_idx.to_vec(), Vec::new());
    match check {
        Err(CsrError::Lengths { end, indices, .. }) if indices == values.len() => {
            if end as usize != indices {
                return Err(CsrError::Lengths { end, indices, data: values.len() });
            }
        }
        Err(CsrError::ColumnRange { row, col, .. }) => {
            return Err(CsrError::ColumnRange { row: col as usize, col: row as u32, n_cols });
        }
        Err(e) => return Err(e),
        Ok(_) => {}
    }
    let mut counts = vec![0u64; n_rows + 1];
    for &r in row_idx {
        counts[r as usize + 1] += 1;
    }
    for i in 0..n_rows {
        counts[i + 1] += counts[i];
    }
    let indptr = counts.clone();
    let mut next = counts;
    let mut indices = vec![0u32; row_idx.len()];
    let mut data = vec![0f32; row_idx.len()];
    for j in 0..n_cols {
        for k in col_ptr[j] as usize..col_ptr[j + 1] as usize {
            let r = row_idx[k] as usize;
            let dst = next[r] as usize;
            indices[dst] = j as u32;
            data[dst] = values[k];
            next[r] += 1;
        }
    }
    CsrMatrix::new(n_rows, n_cols, indptr, indices, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> CsrMatrix {
        // [[1, 0, 2], [0, 0, 0], [0, 3, 0]]
        CsrMatrix::new(3, 3, vec![0, 2, 2, 3], vec![0, 2, 1], vec![1.0, 2.0, 3.0]).unwrap()
    }

    #[test]
    fn dense_round_trip() {
        let m = small();
        let d = m.to_dense();
        assert_eq!(d, vec![1.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 3.0, 0.0]);
        assert_eq!(CsrMatrix::from_dense(3, 3, &d), m);
        assert_eq!(m.row_sums(), vec![3.0, 0.0, 3.0]);
    }

    #[test]
    fn repeated_columns_are_summed() {
        // Row 0 holds column 2 twice (1 + 4), row 1 column 0 three times; row 2 is clean.
        let m =
            CsrMatrix::new(3, 3, vec![0, 3, 6, 7], vec![2, 0, 2, 0, 0, 0, 1], vec![1.0, 2.0, 4.0, 1.0, 1.0, 1.0, 5.0])
                .unwrap();
        assert_eq!(m.to_dense(), vec![2.0, 0.0, 5.0, 3.0, 0.0, 0.0, 0.0, 5.0, 0.0]);
        assert_eq!(m.indptr(), &[0, 2, 3, 4]);
        assert_eq!(m.row(0), (&[2u32, 0][..], &[5.0f32, 2.0][..]), "first positions kept, values summed");
        assert_eq!(small().indices(), &[0, 2, 1], "no duplicates: untouched");
    }

    #[test]
    fn slicing_and_appending_agree() {
        let m = small();
        let mut top = m.slice_rows(0..1);
        top.append_rows(&m.slice_rows(1..3));
        assert_eq!(top, m);
        let picked = m.select_rows(&[2, 0]);
        assert_eq!(picked.to_dense(), vec![0.0, 3.0, 0.0, 1.0, 0.0, 2.0]);
    }

    #[test]
    fn finds_the_first_invalid_value_anywhere() {
        // One row of 1,000 values; the check scans in chunks, so try both sides of their edges.
        let clean = || CsrMatrix::new(1, 1000, vec![0, 1000], (0..1000).collect(), vec![1.5; 1000]).unwrap();
        let mut m = clean();
        m.data[7] = -0.0;
        assert_eq!(m.first_invalid_value(), None, "-0.0 is a zero");
        for (at, bad) in [(0, f32::NAN), (255, -1.0), (256, f32::INFINITY), (999, f32::NEG_INFINITY)] {
            let mut m = clean();
            m.data[at] = bad;
            m.data[(at + 1).max(500)..].fill(-2.0);
            let (row, col, v) = m.first_invalid_value().expect("an invalid value is found");
            assert_eq!((row, col), (0, at as u32));
            assert_eq!(v.to_bits(), bad.to_bits());
        }
    }

    #[test]
    fn rejects_broken_parts() {
        let e = CsrMatrix::new(2, 2, vec![0, 1], vec![0], vec![1.0]).unwrap_err();
        assert_eq!(e, CsrError::IndptrLength { got: 2, expected: 3 });
        let e = CsrMatrix::new(2, 2, vec![0, 2, 1], vec![0, 1], vec![1.0, 1.0]).unwrap_err();
        assert_eq!(e, CsrError::IndptrOrder { row: 1 });
        let e = CsrMatrix::new(1, 2, vec![0, 1], vec![5], vec![1.0]).unwrap_err();
        assert_eq!(e, CsrError::ColumnRange { row: 0, col: 5, n_cols: 2 });
        let e = CsrMatrix::new(1, 2, vec![0, 2], vec![0, 1], vec![1.0]).unwrap_err();
        assert!(matches!(e, CsrError::Lengths { .. }));
    }

    #[test]
    fn csc_converts_to_the_same_matrix() {
        // Columns of the small matrix: col0 = [1@r0], col1 = [3@r2], col2 = [2@r0].
        let m = csc_to_csr(3, 3, &[0, 1, 2, 3], &[0, 2, 0], &[1.0, 3.0, 2.0]).unwrap();
        assert_eq!(m, small());
    }

    #[test]
    fn finds_invalid_values() {
        let m = CsrMatrix::new(2, 2, vec![0, 1, 2], vec![0, 1], vec![1.0, -2.0]).unwrap();
        assert_eq!(m.first_invalid_value(), Some((1, 1, -2.0)));
        assert_eq!(small().first_invalid_value(), None);
    }

    #[test]
    fn sorts_indices_within_rows() {
        let mut m = CsrMatrix::new(1, 3, vec![0, 2], vec![2, 0], vec![5.0, 7.0]).unwrap();
        let dense = m.to_dense();
        m.sort_indices();
        assert_eq!(m.indices(), &[0, 2]);
        assert_eq!(m.to_dense(), dense);
    }
}
