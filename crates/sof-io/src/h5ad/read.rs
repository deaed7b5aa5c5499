//! Reading AnnData `.h5ad` files: X dense, CSR or CSC of any numeric dtype, obs/var data frames
//! (categorical, string, numeric, boolean and nullable columns), obsm arrays, and X one row
//! range at a time for files larger than memory.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use hdf5::{Dataset, File, Group};
use ndarray::{Array2, s};

use super::hdf::{read_plain_column, read_strings, str_attr};
use crate::anndata::{AnnData, check_shapes, check_unique_genes, check_values};
use crate::error::{Error, Result};
use crate::frame::{Column, Frame};
use crate::matrix::{CsrMatrix, csc_to_csr};

/// How X is stored in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XEncoding {
    Dense,
    Csr,
    Csc,
}

#[derive(Debug)]
enum XLayout {
    Dense(Dataset),
    Sparse { data: Dataset, indices: Dataset, indptr: Vec<u64>, csc: bool },
}

/// An open `.h5ad` file. Cheap to open: only X's shape and index pointers are read up front.
#[derive(Debug)]
pub struct H5adReader {
    path: PathBuf,
    file: File,
    x: XLayout,
    n_obs: usize,
    n_vars: usize,
}

/// Opens an HDF5 file, turning every failure into an error that names the file.
pub(crate) fn open_hdf5(path: &Path) -> Result<File> {
    open_hdf5_with(path, true)
}

/// [`open_hdf5`], with or without HDF5's raw-data chunk cache. Without it, reads that span
/// uncompressed chunks go straight into the caller's buffer (one memory copy less per value);
/// compressed chunks need the cache, or a chunk read in two requests is inflated twice.
fn open_hdf5_with(path: &Path, chunk_cache: bool) -> Result<File> {
    match std::fs::metadata(path) {
        Err(e) => return Err(Error::io(path, e)),
        Ok(m) if m.is_dir() => {
            return Err(Error::Open {
                path: path.into(),
                reason: "this is a folder, not a file (pass the .h5ad or .loom file itself)".into(),
            });
        }
        Ok(m) if m.len() == 0 => {
            return Err(Error::Open { path: path.into(), reason: "the file is empty (0 bytes)".into() });
        }
        Ok(_) => {}
    }
    // Read-only opens take no HDF5 file lock. HDF5 opens files without close-on-exec, so a
    // process started meanwhile (by any thread) inherits the descriptor and with it the lock of
    // a file being written — a just-written file could then not be opened until that process
    // ended ("unable to lock file, errno = 11"). Our writers rename complete files into place,
    // so a reader never sees a half-written one under its name.
    File::with_options()
        .with_fapl(|p| {
            if !chunk_cache {
                p.chunk_cache(0, 0, 1.0);
            }
            p.file_locking(false)
        })
        .open(path)
        .map_err(|e| Error::Open { path: path.into(), reason: e.to_string() })
}

impl H5adReader {
    /// Opens `path` and reads the layout of X.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        // Cells are read once, in order, in requests spanning many chunks: no chunk cache unless
        // X is compressed.
        {
            let file = open_hdf5_with(&path, false)?;
            let (x, n_obs, n_vars) = read_x_layout(&path, &file)?;
            let compressed = match &x {
                XLayout::Dense(ds) => !ds.filters().is_empty(),
                XLayout::Sparse { data, indices, .. } => !data.filters().is_empty() || !indices.filters().is_empty(),
            };
            if !compressed {
                return Ok(Self { path, file, x, n_obs, n_vars });
            }
        }
        // Every handle on the first opening is closed here: HDF5 shares one open file between
        // its handles, with the first one's cache settings.
        let file = open_hdf5(&path)?;
        let (x, n_obs, n_vars) = read_x_layout(&path, &file)?;
        Ok(Self { path, file, x, n_obs, n_vars })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn n_obs(&self) -> usize {
        self.n_obs
    }

    pub fn n_vars(&self) -> usize {
        self.n_vars
    }

    pub fn x_encoding(&self) -> XEncoding {
        match &self.x {
            XLayout::Dense(_) => XEncoding::Dense,
            XLayout::Sparse { csc: false, .. } => XEncoding::Csr,
            XLayout::Sparse { csc: true, .. } => XEncoding::Csc,
        }
    }

    /// The per-cell annotations.
    pub fn obs(&self) -> Result<Frame> {
        let f = read_frame(&self.path, &self.file, "obs")?;
        if f.len() != self.n_obs {
            return Err(Error::invalid(
                &self.path,
                "obs",
                format!("has {} cells but X has {} rows", f.len(), self.n_obs),
                "X rows and obs must describe the same cells",
            ));
        }
        Ok(f)
    }

    /// The per-gene annotations; its index holds the gene names, which must be unique.
    pub fn var(&self) -> Result<Frame> {
        let f = read_frame(&self.path, &self.file, "var")?;
        if f.len() != self.n_vars {
            return Err(Error::invalid(
                &self.path,
                "var",
                format!("has {} genes but X has {} columns", f.len(), self.n_vars),
                "X columns and var must describe the same genes",
            ));
        }
        check_unique_genes(&self.path, "var/_index", &f.index)?;
        Ok(f)
    }

    /// Names of the dense arrays in obsm.
    pub fn obsm_keys(&self) -> Vec<String> {
        let Ok(g) = self.file.group("obsm") else { return Vec::new() };
        g.member_names().unwrap_or_default().into_iter().filter(|k| g.dataset(k).is_ok()).collect()
    }

    /// One obsm array as `f64` (a 1-d array reads as one column).
    pub fn obsm(&self, key: &str) -> Result<Array2<f64>> {
        let field = format!("obsm/{key}");
        let ds = self.file.dataset(&field).map_err(|_| {
            Error::missing(&self.path, &field, format!("available obsm arrays: [{}]", self.obsm_keys().join(", ")))
        })?;
        let arr = match ds.ndim() {
            2 => ds.read_2d::<f64>(),
            1 => ds.read_1d::<f64>().map(|a| a.insert_axis(ndarray::Axis(1))),
            n => {
                return Err(Error::invalid(
                    &self.path,
                    &field,
                    format!("has {n} dimensions"),
                    "obsm arrays must be cells x k",
                ));
            }
        }
        .map_err(|e| Error::hdf5(&self.path, &field, e))?;
        if arr.nrows() != self.n_obs {
            return Err(Error::invalid(
                &self.path,
                &field,
                format!("has {} rows but there are {} cells", arr.nrows(), self.n_obs),
                "obsm arrays need one row per cell",
            ));
        }
        Ok(arr)
    }

    /// Reads cells `rows` of X, checking every value. Memory is bounded by the rows asked for
    /// (for CSC storage the file is scanned in blocks, which is slower but just as bounded).
    pub fn read_rows(&self, rows: Range<usize>) -> Result<CsrMatrix> {
        if rows.start > rows.end || rows.end > self.n_obs {
            return Err(Error::invalid(
                &self.path,
                "X",
                format!("row range {rows:?} is outside 0..{}", self.n_obs),
                "ask for rows inside the matrix",
            ));
        }
        let m = match &self.x {
            XLayout::Dense(ds) => {
                let block =
                    ds.read_slice_2d::<f32, _>(s![rows.clone(), ..]).map_err(|e| Error::hdf5(&self.path, "X", e))?;
                let block = block.as_standard_layout();
                let values = block.as_slice().expect("standard layout is contiguous");
                CsrMatrix::from_dense(rows.len(), self.n_vars, values)
            }
            XLayout::Sparse { data, indices, indptr, csc: false } => {
                let (a, b) = (indptr[rows.start] as usize, indptr[rows.end] as usize);
                let vals = read_f32_range(&self.path, data, "X/data", a..b)?;
                let cols = read_index_range(&self.path, indices, "X/indices", a..b, self.n_vars)?;
                let ptr = indptr[rows.start..=rows.end].iter().map(|p| p - a as u64).collect();
                CsrMatrix::new(rows.len(), self.n_vars, ptr, cols, vals)
                    .map_err(|e| Error::invalid(&self.path, "X", e.to_string(), REWRITE_FIX))?
            }
            XLayout::Sparse { data, indices, indptr, csc: true } => {
                self.read_csc_rows(data, indices, indptr, rows.clone())?
            }
        };
        check_values(&self.path, "X", &m, rows.start)?;
        Ok(m)
    }

    fn read_csc_rows(
        &self,
        data: &Dataset,
        indices: &Dataset,
        col_ptr: &[u64],
        rows: Range<usize>,
    ) -> Result<CsrMatrix> {
        const BLOCK: usize = 1 << 22;
        let nnz = *col_ptr.last().unwrap_or(&0) as usize;
        let (mut r_idx, mut c_ptr, mut vals) = (Vec::new(), vec![0u64], Vec::new());
        let mut col = 0usize;
        let mut start = 0usize;
        while start < nnz {
            let end = (start + BLOCK).min(nnz);
            let v = read_f32_range(&self.path, data, "X/data", start..end)?;
            let r = read_index_range(&self.path, indices, "X/indices", start..end, self.n_obs)?;
            for (k, (&ri, &vi)) in r.iter().zip(&v).enumerate() {
                let pos = (start + k) as u64;
                while col < self.n_vars && col_ptr[col + 1] <= pos {
                    c_ptr.push(r_idx.len() as u64);
                    col += 1;
                }
                if rows.contains(&(ri as usize)) {
                    r_idx.push(ri - rows.start as u32);
                    vals.push(vi);
                }
            }
            start = end;
        }
        while c_ptr.len() < self.n_vars + 1 {
            c_ptr.push(r_idx.len() as u64);
        }
        csc_to_csr(rows.len(), self.n_vars, &c_ptr, &r_idx, &vals)
            .map_err(|e| Error::invalid(&self.path, "X", e.to_string(), REWRITE_FIX))
    }

    /// Reads the whole dataset and checks its invariants.
    pub fn read(&self) -> Result<AnnData> {
        let obs = self.obs()?;
        let var = self.var()?;
        let x = self.read_rows(0..self.n_obs)?;
        let mut obsm = BTreeMap::new();
        for key in self.obsm_keys() {
            obsm.insert(key.clone(), self.obsm(&key)?);
        }
        check_shapes(&self.path, &x, &obs, &var)?;
        Ok(AnnData { x, obs, var, obsm })
    }
}

/// Reads a whole `.h5ad` file.
pub fn read_h5ad(path: impl AsRef<Path>) -> Result<AnnData> {
    H5adReader::open(path)?.read()
}

const REWRITE_FIX: &str = "the sparse matrix is inconsistent: re-save it with anndata (adata.write_h5ad)";

fn read_x_layout(path: &Path, file: &File) -> Result<(XLayout, usize, usize)> {
    if let Ok(ds) = file.dataset("X") {
        let shape = ds.shape();
        if shape.len() != 2 {
            return Err(Error::invalid(
                path,
                "X",
                format!("is a {}-d array", shape.len()),
                "X must be a cells x genes matrix",
            ));
        }
        return Ok((XLayout::Dense(ds), shape[0], shape[1]));
    }
    let g = file
        .group("X")
        .map_err(|_| Error::missing(path, "X", "an .h5ad needs an expression matrix X; was it written by anndata?"))?;
    let enc = str_attr(&g, "encoding-type")
        .or_else(|| str_attr(&g, "h5sparse_format").map(|f| format!("{f}_matrix")))
        .unwrap_or_default();
    let csc = match enc.as_str() {
        "csr_matrix" => false,
        "csc_matrix" => true,
        other => {
            return Err(Error::invalid(
                path,
                "X",
                format!("unsupported encoding-type '{other}'"),
                "store X as a dense array, csr_matrix or csc_matrix",
            ));
        }
    };
    let shape: Vec<i64> = g
        .attr("shape")
        .and_then(|a| a.read_raw::<i64>())
        .map_err(|_| Error::missing(path, "X/shape (attribute)", REWRITE_FIX))?;
    if shape.len() != 2 || shape.iter().any(|&d| d < 0) {
        return Err(Error::invalid(path, "X/shape", format!("is {shape:?}"), REWRITE_FIX));
    }
    let (n_obs, n_vars) = (shape[0] as usize, shape[1] as usize);
    let ds = |name: &str| g.dataset(name).map_err(|_| Error::missing(path, format!("X/{name}"), REWRITE_FIX));
    let (data, indices, indptr_ds) = (ds("data")?, ds("indices")?, ds("indptr")?);
    let indptr: Vec<i64> = indptr_ds.read_raw().map_err(|e| Error::hdf5(path, "X/indptr", e))?;
    let major = if csc { n_vars } else { n_obs };
    if indptr.len() != major + 1 {
        return Err(Error::invalid(
            path,
            "X/indptr",
            format!("has {} entries, expected {}", indptr.len(), major + 1),
            REWRITE_FIX,
        ));
    }
    if indptr[0] != 0 || indptr.windows(2).any(|w| w[1] < w[0]) {
        return Err(Error::invalid(path, "X/indptr", "is not non-decreasing from 0", REWRITE_FIX));
    }
    let nnz = *indptr.last().unwrap_or(&0) as usize;
    for (name, d) in [("X/data", &data), ("X/indices", &indices)] {
        if d.size() != nnz {
            return Err(Error::invalid(
                path,
                name,
                format!("has {} entries but X/indptr ends at {nnz}", d.size()),
                REWRITE_FIX,
            ));
        }
    }
    let indptr = indptr.into_iter().map(|p| p as u64).collect();
    Ok((XLayout::Sparse { data, indices, indptr, csc }, n_obs, n_vars))
}

fn read_f32_range(path: &Path, ds: &Dataset, field: &str, r: Range<usize>) -> Result<Vec<f32>> {
    if r.is_empty() {
        return Ok(Vec::new());
    }
    Ok(ds.read_slice_1d::<f32, _>(r).map_err(|e| Error::hdf5(path, field, e))?.into_raw_vec_and_offset().0)
}

fn read_index_range(path: &Path, ds: &Dataset, field: &str, r: Range<usize>, bound: usize) -> Result<Vec<u32>> {
    if r.is_empty() {
        return Ok(Vec::new());
    }
    let out_of_range = |k: usize, v: i64| {
        Error::invalid(path, field, format!("entry {} is {v}, outside 0..{bound}", r.start + k), REWRITE_FIX)
    };
    // anndata stores indices as int32 unless a matrix has more than 2^31 entries: read those as
    // they are (HDF5 converting each to 64 bits cost more than the rest of the read) and check
    // them in place. A uint32 file value above i32::MAX arrives clamped and fails the check.
    let narrow = ds.dtype().map(|t| t.size() <= 4).unwrap_or(false);
    if narrow {
        let raw = ds.read_slice_1d::<i32, _>(r.clone()).map_err(|e| Error::hdf5(path, field, e))?;
        let raw = raw.into_raw_vec_and_offset().0;
        if let Some(k) = crate::matrix::first_where(&raw, |&v| v < 0 || v as usize >= bound) {
            return Err(out_of_range(k, i64::from(raw[k])));
        }
        return Ok(bytemuck::cast_vec(raw));
    }
    let raw = ds.read_slice_1d::<i64, _>(r.clone()).map_err(|e| Error::hdf5(path, field, e))?;
    let raw = raw.into_raw_vec_and_offset().0;
    if let Some(k) = crate::matrix::first_where(&raw, |&v| v < 0 || v as usize >= bound) {
        return Err(out_of_range(k, raw[k]));
    }
    Ok(raw.iter().map(|&v| v as u32).collect())
}

/// Reads an anndata data frame group (`obs` or `var`).
pub(crate) fn read_frame(path: &Path, file: &File, name: &str) -> Result<Frame> {
    let g = file.group(name).map_err(|_| {
        Error::missing(path, name, "an .h5ad needs obs and var data frames; was it written by anndata?")
    })?;
    let index_key = str_attr(&g, "_index").unwrap_or_else(|| "_index".to_owned());
    let index_field = format!("{name}/{index_key}");
    let index_ds = g
        .dataset(&index_key)
        .map_err(|_| Error::missing(path, &index_field, "the data frame has no index; re-save with anndata"))?;
    let index = read_strings(&index_ds).map_err(|e| Error::hdf5(path, &index_field, e))?;
    let mut frame = Frame::new(index);
    let order = g
        .attr("column-order")
        .ok()
        .map(|a| read_strings(&a))
        .transpose()
        .map_err(|e| Error::hdf5(path, format!("{name}/column-order"), e))?
        .unwrap_or_default();
    for col in order {
        let field = format!("{name}/{col}");
        let column = if let Ok(sub) = g.group(&col) {
            match read_group_column(&sub) {
                Ok(Some(c)) => c,
                Ok(None) => {
                    tracing::warn!(file = %path.display(), field, "skipping column with an unsupported encoding");
                    continue;
                }
                Err(e) => return Err(Error::hdf5(path, &field, e)),
            }
        } else {
            let ds = g.dataset(&col).map_err(|_| {
                Error::missing(path, &field, "it is listed in column-order but absent; re-save with anndata")
            })?;
            if ds.ndim() != 1 {
                tracing::warn!(file = %path.display(), field, "skipping a column that is not 1-d");
                continue;
            }
            read_plain_column(&ds).map_err(|e| Error::hdf5(path, &field, e))?
        };
        if column.len() != frame.len() {
            return Err(Error::invalid(
                path,
                &field,
                format!("has {} values but the index has {}", column.len(), frame.len()),
                "every column needs one value per row",
            ));
        }
        frame.insert(col, column);
    }
    Ok(frame)
}

fn read_group_column(g: &Group) -> hdf5::Result<Option<Column>> {
    let enc = str_attr(g, "encoding-type").unwrap_or_default();
    Ok(Some(match enc.as_str() {
        "categorical" => {
            let codes: Vec<i64> = g.dataset("codes")?.read_raw()?;
            let cats = g.dataset("categories")?;
            let categories = read_strings(&cats)?;
            if let Some(bad) = codes.iter().find(|&&c| c < -1 || c >= categories.len() as i64) {
                return Err(format!("categorical code {bad} has no category").into());
            }
            let ordered = g.attr("ordered").and_then(|a| a.read_scalar::<bool>()).unwrap_or(false);
            Column::Categorical { codes: codes.into_iter().map(|c| c as i32).collect(), categories, ordered }
        }
        "nullable-integer" | "nullable-boolean" => {
            let values: Vec<f64> = g.dataset("values")?.read_raw()?;
            let mask: Vec<bool> = g.dataset("mask")?.read_raw()?;
            Column::Float(values.iter().zip(&mask).map(|(&v, &m)| if m { f64::NAN } else { v }).collect())
        }
        _ => return Ok(None),
    }))
}
