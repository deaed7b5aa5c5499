//! Writing `.h5ad` files that Python's `anndata.read_h5ad` opens: whole datasets
//! ([`write_h5ad`]), row chunks streamed to disk ([`H5adStreamWriter`]), and results added to a
//! copy of an input file ([`H5adEditor`]). Every writer works on a temporary file beside the
//! destination and renames it into place only when complete, so a crash never leaves a
//! half-written `.h5ad` under the final name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hdf5::types::VarLenUnicode;
use hdf5::{Dataset, File, Group, H5Type};
use ndarray::Array2;

use super::hdf::{read_strings, set_encoding, set_str_array_attr, to_vlen};
use super::read::{H5adReader, open_hdf5};
use crate::anndata::{AnnData, check_values};
use crate::atomic::AtomicPath;
use crate::error::{Error, Result};
use crate::frame::{Column, Frame};
use crate::matrix::CsrMatrix;

/// A value stored under `uns`.
#[derive(Debug, Clone, PartialEq)]
pub enum UnsValue {
    Str(String),
    Strings(Vec<String>),
    Float(f64),
    Int(i64),
    Floats(Vec<f64>),
    Dict(BTreeMap<String, UnsValue>),
}

/// Writes `adata` as a new `.h5ad` at `path` (atomically), with optional `uns` entries.
pub fn write_h5ad(path: impl AsRef<Path>, adata: &AnnData, uns: &BTreeMap<String, UnsValue>) -> Result<()> {
    let path = path.as_ref();
    adata.validate(path)?;
    let tmp = AtomicPath::new(path)?;
    {
        let f = strong(true, tmp.path()).map_err(|e| Error::hdf5(path, "/", e))?;
        let h = |field: &'static str| h5(path, field);
        write_skeleton(&f).map_err(h("/"))?;
        let x = f.create_group("X").map_err(h("X"))?;
        write_csr(&x, &adata.x).map_err(h("X"))?;
        write_frame(&f, "obs", &adata.obs).map_err(h("obs"))?;
        write_frame(&f, "var", &adata.var).map_err(h("var"))?;
        let obsm = f.group("obsm").map_err(h("obsm"))?;
        for (k, a) in &adata.obsm {
            write_array2(&obsm, k, a).map_err(h("obsm"))?;
        }
        let g = f.group("uns").map_err(h("uns"))?;
        for (k, v) in uns {
            write_uns(&g, k, v).map_err(h("uns"))?;
        }
    }
    tmp.commit()
}

/// Creates (or opens read-write) a file whose close is strong: dropping the `File` closes every
/// object still open in it, so the file is complete before it is renamed into place. No HDF5
/// file lock: we write temporary files no one else writes, and a lock would outlive us in any
/// process started meanwhile (HDF5's descriptors are inherited across fork and exec), blocking
/// the next open of the finished file.
fn strong(create: bool, path: &Path) -> hdf5::Result<File> {
    let b = File::with_options()
        .with_fapl(|p| p.fclose_degree(hdf5::file::FileCloseDegree::Strong).file_locking(false))
        .clone();
    if create { b.create(path) } else { b.open_rw(path) }
}

/// Maps an HDF5 error to one naming `path` and `field`.
fn h5<'a>(path: &'a Path, field: &'static str) -> impl Fn(hdf5::Error) -> Error + 'a {
    move |e| Error::hdf5(path, field, e)
}

fn write_skeleton(f: &File) -> hdf5::Result<()> {
    set_encoding(f, "anndata", "0.1.0")?;
    for g in ["layers", "obsm", "obsp", "uns", "varm", "varp"] {
        let g = f.create_group(g)?;
        set_encoding(&g, "dict", "0.1.0")?;
    }
    Ok(())
}

fn write_csr(x: &Group, m: &CsrMatrix) -> hdf5::Result<()> {
    set_encoding(x, "csr_matrix", "0.1.0")?;
    write_shape(x, m.n_rows(), m.n_cols())?;
    x.new_dataset_builder().with_data(m.data()).create("data")?;
    let idx: Vec<i32> = m.indices().iter().map(|&c| c as i32).collect();
    x.new_dataset_builder().with_data(&idx).create("indices")?;
    let ptr: Vec<i64> = m.indptr().iter().map(|&p| p as i64).collect();
    x.new_dataset_builder().with_data(&ptr).create("indptr")?;
    Ok(())
}

fn write_shape(x: &Group, rows: usize, cols: usize) -> hdf5::Result<()> {
    if x.attr("shape").is_ok() {
        x.delete_attr("shape")?;
    }
    x.new_attr::<i64>().shape(2).create("shape")?.write_raw(&[rows as i64, cols as i64])
}

fn write_strings(g: &Group, name: &str, values: &[String]) -> hdf5::Result<Dataset> {
    let v = to_vlen(values)?;
    let ds = g.new_dataset::<VarLenUnicode>().shape(v.len()).create(name)?;
    ds.write_raw(&v)?;
    set_encoding(&ds, "string-array", "0.2.0")?;
    Ok(ds)
}

fn write_numeric<T: H5Type>(g: &Group, name: &str, values: &[T]) -> hdf5::Result<()> {
    let ds = g.new_dataset_builder().with_data(values).create(name)?;
    set_encoding(&ds, "array", "0.2.0")
}

fn write_array2<T: H5Type>(g: &Group, name: &str, a: &Array2<T>) -> hdf5::Result<()> {
    unlink_if_exists(g, name)?;
    let ds = g.new_dataset_builder().with_data(a.view()).create(name)?;
    set_encoding(&ds, "array", "0.2.0")
}

fn write_column(g: &Group, name: &str, c: &Column) -> hdf5::Result<()> {
    unlink_if_exists(g, name)?;
    match c {
        Column::Categorical { codes, categories, ordered } => {
            let cg = g.create_group(name)?;
            set_encoding(&cg, "categorical", "0.2.0")?;
            cg.new_attr::<bool>().shape(()).create("ordered")?.write_scalar(ordered)?;
            write_strings(&cg, "categories", categories)?;
            cg.new_dataset_builder().with_data(codes).create("codes")?;
        }
        Column::Str(v) => {
            write_strings(g, name, v)?;
        }
        Column::Float(v) => write_numeric(g, name, v)?,
        Column::Int(v) => write_numeric(g, name, v)?,
        Column::Bool(v) => write_numeric(g, name, v)?,
    }
    Ok(())
}

fn write_frame(f: &File, name: &str, frame: &Frame) -> hdf5::Result<()> {
    let g = f.create_group(name)?;
    set_encoding(&g, "dataframe", "0.2.0")?;
    super::hdf::set_str_attr(&g, "_index", "_index")?;
    write_strings(&g, "_index", &frame.index)?;
    let names: Vec<String> = frame.column_names().map(str::to_owned).collect();
    for (n, c) in frame.columns() {
        write_column(&g, n, c)?;
    }
    write_column_order(&g, &names)
}

/// anndata writes an empty column order as an empty float64 array, and reads it back that way.
fn write_column_order(g: &Group, names: &[String]) -> hdf5::Result<()> {
    if names.is_empty() {
        if g.attr("column-order").is_ok() {
            g.delete_attr("column-order")?;
        }
        return g.new_attr::<f64>().shape(0).create("column-order").map(|_| ());
    }
    set_str_array_attr(g, "column-order", names)
}

fn unlink_if_exists(g: &Group, name: &str) -> hdf5::Result<()> {
    if g.link_exists(name) {
        g.unlink(name)?;
    }
    Ok(())
}

fn write_uns(g: &Group, name: &str, v: &UnsValue) -> hdf5::Result<()> {
    unlink_if_exists(g, name)?;
    match v {
        UnsValue::Str(s) => {
            let ds = g.new_dataset::<VarLenUnicode>().shape(()).create(name)?;
            ds.write_scalar(&s.parse::<VarLenUnicode>().map_err(|e| format!("{e}"))?)?;
            set_encoding(&ds, "string", "0.2.0")?;
        }
        UnsValue::Strings(s) => {
            write_strings(g, name, s)?;
        }
        UnsValue::Float(x) => scalar(g, name, x)?,
        UnsValue::Int(x) => scalar(g, name, x)?,
        UnsValue::Floats(x) => write_numeric(g, name, x)?,
        UnsValue::Dict(map) => {
            let sub = g.create_group(name)?;
            set_encoding(&sub, "dict", "0.1.0")?;
            for (k, v) in map {
                write_uns(&sub, k, v)?;
            }
        }
    }
    Ok(())
}

fn scalar<T: H5Type>(g: &Group, name: &str, x: &T) -> hdf5::Result<()> {
    let ds = g.new_dataset::<T>().shape(()).create(name)?;
    ds.write_scalar(x)?;
    set_encoding(&ds, "numeric-scalar", "0.2.0")
}

/// Whether `path` is an `.h5ad` that sof wrote: its `uns` has an entry in sof's `sof_`
/// namespace (every sof output that copies its input adds one: `sof_embedding`, `sof_radius`,
/// `sof_map`).
pub fn written_by_sof(path: impl AsRef<Path>) -> bool {
    let Ok(f) = open_hdf5(path.as_ref()) else { return false };
    f.group("uns").and_then(|g| g.member_names()).is_ok_and(|names| names.iter().any(|n| n.starts_with("sof_")))
}

/// Refuses to replace an existing file at `output` that sof did not write (the user's own data
/// given as `--output` by mistake), unless `force`. Files sof wrote are replaced, so a rerun
/// gives the same result without asking.
pub fn check_replace(output: impl AsRef<Path>, force: bool) -> Result<()> {
    crate::atomic::check_replace_with(output.as_ref(), force, "an .h5ad sof wrote (its uns has no sof_* entry)", |p| {
        written_by_sof(p)
    })
}

/// Adds results to a copy of an existing `.h5ad`, leaving everything else byte-for-byte as
/// anndata wrote it. Nothing appears at the output path until [`H5adEditor::commit`].
#[derive(Debug)]
pub struct H5adEditor {
    path: PathBuf,
    file: File,
    n_obs: usize,
    tmp: AtomicPath,
}

impl H5adEditor {
    /// Copies `input` to a temporary file beside `output` and opens it for writing.
    pub fn copy_of(input: impl AsRef<Path>, output: impl AsRef<Path>) -> Result<Self> {
        let (input, output) = (input.as_ref(), output.as_ref());
        let n_obs = H5adReader::open(input)?.n_obs();
        let tmp = AtomicPath::new(output)?;
        // The input was just read, so a failure here is the output's (read-only folder, full disk).
        std::fs::copy(input, tmp.path()).map_err(|e| Error::io(output, e))?;
        let file = strong(false, tmp.path()).map_err(|e| Error::hdf5(output, "/", e))?;
        Ok(Self { path: output.to_path_buf(), file, n_obs, tmp })
    }

    fn group(&self, name: &str) -> Result<Group> {
        if let Ok(g) = self.file.group(name) {
            return Ok(g);
        }
        let g = self.file.create_group(name).map_err(|e| Error::hdf5(&self.path, name, e))?;
        set_encoding(&g, "dict", "0.1.0").map_err(|e| Error::hdf5(&self.path, name, e))?;
        Ok(g)
    }

    fn check_rows(&self, field: &str, rows: usize) -> Result<()> {
        if rows != self.n_obs {
            return Err(Error::invalid(
                &self.path,
                field,
                format!("has {rows} rows but the file has {} cells", self.n_obs),
                "results need one row per cell, in the file's cell order",
            ));
        }
        Ok(())
    }

    /// Sets `obsm[key]` (replacing any existing array).
    pub fn put_obsm<T: H5Type>(&mut self, key: &str, a: &Array2<T>) -> Result<()> {
        let field = format!("obsm/{key}");
        self.check_rows(&field, a.nrows())?;
        write_array2(&self.group("obsm")?, key, a).map_err(|e| Error::hdf5(&self.path, &field, e))
    }

    /// Sets `obs[name]` (replacing any existing column) and records it in the column order.
    pub fn put_obs(&mut self, name: &str, c: &Column) -> Result<()> {
        let field = format!("obs/{name}");
        self.check_rows(&field, c.len())?;
        let h = |e| Error::hdf5(&self.path, &field, e);
        let obs = self.file.group("obs").map_err(h)?;
        write_column(&obs, name, c).map_err(h)?;
        let mut order = match obs.attr("column-order") {
            Ok(a) => read_strings(&a).map_err(h)?,
            Err(_) => Vec::new(),
        };
        if !order.iter().any(|n| n == name) {
            order.push(name.to_owned());
        }
        write_column_order(&obs, &order).map_err(h)
    }

    /// Sets `obsp[key]`, a cells x cells sparse matrix in CSR form (e.g. a neighbour graph).
    pub fn put_obsp_csr(&mut self, key: &str, indptr: &[u64], indices: &[u32], data: &[f32]) -> Result<()> {
        let field = format!("obsp/{key}");
        self.check_rows(&field, indptr.len().saturating_sub(1))?;
        let g = self.group("obsp")?;
        let h = |e| Error::hdf5(&self.path, &field, e);
        unlink_if_exists(&g, key).map_err(h)?;
        let m = CsrMatrix::new(self.n_obs, self.n_obs, indptr.to_vec(), indices.to_vec(), data.to_vec())
            .map_err(|e| Error::invalid(&self.path, &field, e.to_string(), "pass a valid cells x cells CSR matrix"))?;
        let x = g.create_group(key).map_err(h)?;
        write_csr(&x, &m).map_err(h)
    }

    /// Sets `uns[key]`.
    pub fn put_uns(&mut self, key: &str, v: &UnsValue) -> Result<()> {
        write_uns(&self.group("uns")?, key, v).map_err(|e| Error::hdf5(&self.path, format!("uns/{key}"), e))
    }

    /// Closes the file and moves it to the output path.
    pub fn commit(self) -> Result<()> {
        let Self { file, tmp, .. } = self;
        drop(file);
        tmp.commit()
    }
}

/// Writes an `.h5ad` one block of cells at a time, so memory stays bounded by the block size
/// plus the per-cell annotations handed to [`H5adStreamWriter::finish`].
#[derive(Debug)]
pub struct H5adStreamWriter {
    path: PathBuf,
    file: File,
    data: Dataset,
    indices: Dataset,
    indptr: Dataset,
    n_rows: usize,
    nnz: usize,
    var: Frame,
    tmp: AtomicPath,
}

const CHUNK: usize = 1 << 16;

impl H5adStreamWriter {
    /// Starts a new file whose genes are `var`.
    pub fn create(path: impl AsRef<Path>, var: Frame) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        crate::anndata::check_unique_genes(&path, "var index", &var.index)?;
        let tmp = AtomicPath::new(&path)?;
        let h = |e| Error::hdf5(&path, "X", e);
        let file = strong(true, tmp.path()).map_err(h)?;
        write_skeleton(&file).map_err(h)?;
        let x = file.create_group("X").map_err(h)?;
        set_encoding(&x, "csr_matrix", "0.1.0").map_err(h)?;
        let data = x.new_dataset::<f32>().chunk(CHUNK).shape(0..).create("data").map_err(h)?;
        let indices = x.new_dataset::<i32>().chunk(CHUNK).shape(0..).create("indices").map_err(h)?;
        let indptr = x.new_dataset::<i64>().chunk(CHUNK).shape(1..).create("indptr").map_err(h)?;
        indptr.write_slice(&[0i64], 0..1).map_err(h)?;
        Ok(Self { path, file, data, indices, indptr, n_rows: 0, nnz: 0, var, tmp })
    }

    /// Appends a block of cells (same genes, same order as `var`).
    pub fn append(&mut self, block: &CsrMatrix) -> Result<()> {
        if block.n_cols() != self.var.len() {
            return Err(Error::invalid(
                &self.path,
                "X",
                format!("block has {} genes, the file has {}", block.n_cols(), self.var.len()),
                "append blocks over the same genes",
            ));
        }
        check_values(&self.path, "X", block, self.n_rows)?;
        let h = |e| Error::hdf5(&self.path, "X", e);
        let (a, b) = (self.nnz, self.nnz + block.nnz());
        self.data.resize(b).map_err(h)?;
        self.indices.resize(b).map_err(h)?;
        self.data.write_slice(block.data(), a..b).map_err(h)?;
        let idx: Vec<i32> = block.indices().iter().map(|&c| c as i32).collect();
        self.indices.write_slice(&idx, a..b).map_err(h)?;
        let ptr: Vec<i64> = block.indptr()[1..].iter().map(|&p| (p as usize + a) as i64).collect();
        let (r0, r1) = (self.n_rows + 1, self.n_rows + 1 + block.n_rows());
        self.indptr.resize(r1).map_err(h)?;
        self.indptr.write_slice(&ptr, r0..r1).map_err(h)?;
        self.n_rows += block.n_rows();
        self.nnz = b;
        Ok(())
    }

    /// Number of cells written so far.
    pub fn n_rows(&self) -> usize {
        self.n_rows
    }

    /// Writes the annotations and moves the file into place.
    pub fn finish(
        self,
        obs: &Frame,
        obsm: &BTreeMap<String, Array2<f64>>,
        uns: &BTreeMap<String, UnsValue>,
    ) -> Result<()> {
        let path = self.path.clone();
        if obs.len() != self.n_rows {
            return Err(Error::invalid(
                &path,
                "obs",
                format!("has {} cells but {} rows were written", obs.len(), self.n_rows),
                "pass one obs row per written cell",
            ));
        }
        let h = |field: &'static str| h5(&path, field);
        let x = self.file.group("X").map_err(h("X"))?;
        write_shape(&x, self.n_rows, self.var.len()).map_err(h("X"))?;
        write_frame(&self.file, "obs", obs).map_err(h("obs"))?;
        write_frame(&self.file, "var", &self.var).map_err(h("var"))?;
        let g_obsm = self.file.group("obsm").map_err(h("obsm"))?;
        for (k, a) in obsm {
            if a.nrows() != self.n_rows {
                return Err(Error::invalid(&path, format!("obsm/{k}"), "row count differs from X", "one row per cell"));
            }
            write_array2(&g_obsm, k, a).map_err(h("obsm"))?;
        }
        let g_uns = self.file.group("uns").map_err(h("uns"))?;
        for (k, v) in uns {
            write_uns(&g_uns, k, v).map_err(h("uns"))?;
        }
        // Every handle closed before the file moves into place (a reader may open it at once).
        let Self { file, data, indices, indptr, tmp, .. } = self;
        drop((data, indices, indptr, x, g_obsm, g_uns, file));
        tmp.commit()
    }
}

/// Reads the uns string array `key` of a file (e.g. composition column names); `None` if absent.
pub fn read_uns_strings(path: impl AsRef<Path>, key: &str) -> Result<Option<Vec<String>>> {
    let path = path.as_ref();
    let f = open_hdf5(path)?;
    let Ok(ds) = f.dataset(&format!("uns/{key}")) else { return Ok(None) };
    Ok(Some(read_strings(&ds).map_err(|e| Error::hdf5(path, format!("uns/{key}"), e))?))
}

/// Reads the uns numeric scalar `key` of a file (e.g. the radius `sof spatial` chose).
pub fn read_uns_f64(path: impl AsRef<Path>, key: &str) -> Result<Option<f64>> {
    let path = path.as_ref();
    let f = open_hdf5(path)?;
    let Ok(ds) = f.dataset(&format!("uns/{key}")) else { return Ok(None) };
    Ok(Some(ds.read_scalar::<f64>().map_err(|e| Error::hdf5(path, format!("uns/{key}"), e))?))
}
