//! [`CellSource`]: cells as CSR row blocks plus their gene names and annotations, whatever holds
//! them — an `.h5ad` streamed from disk ([`crate::h5ad::H5adReader`]), an in-memory [`AnnData`]
//! (so `.loom` files and text tables, through [`CellFile`]) or a generator of synthetic tissue.
//! The tokenizer's corpus builder and the downstream tools take any source.

use std::ops::Range;
use std::path::{Path, PathBuf};

use ndarray::Array2;

use crate::anndata::AnnData;
use crate::error::{Error, Result};
use crate::frame::Frame;
use crate::matrix::CsrMatrix;

/// A source of cells: shape, gene names, obs annotations, obsm arrays and X by row range.
///
/// Every method returns validated data (the invariants of [`AnnData`]); `read_rows` of
/// consecutive ranges gives the same rows as one read of their union, so consumers can stream
/// any source in blocks with bounded memory.
///
/// ```
/// use sof_io::{AnnData, CellSource, Column, CsrMatrix, Frame};
///
/// let x = CsrMatrix::from_dense(3, 2, &[1.0, 0.0, 0.0, 2.0, 3.0, 4.0]);
/// let mut obs = Frame::new(vec!["c1".into(), "c2".into(), "c3".into()]);
/// obs.insert("layer", Column::categorical_from_labels(&["L1", "L2", "L1"]));
/// let data = AnnData { x, obs, var: Frame::new(vec!["Gad1".into(), "Slc17a7".into()]), obsm: Default::default() };
///
/// // Any source streams the same way: blocks of rows, each checked.
/// fn total_counts(cells: &dyn CellSource) -> sof_io::Result<f64> {
///     let mut total = 0.0;
///     for start in (0..cells.n_obs()).step_by(2) {
///         let block = cells.read_rows(start..(start + 2).min(cells.n_obs()))?;
///         total += block.row_sums().iter().sum::<f64>();
///     }
///     Ok(total)
/// }
/// assert_eq!(total_counts(&data).unwrap(), 10.0);
/// assert_eq!(CellSource::var_names(&data).unwrap(), ["Gad1", "Slc17a7"]);
/// ```
pub trait CellSource: Sync {
    /// Names the source in messages: a file path, or what generated the cells.
    fn name(&self) -> String;
    /// Number of cells.
    fn n_obs(&self) -> usize;
    /// Number of genes (columns of X).
    fn n_vars(&self) -> usize;
    /// Gene names, one per column of X, unique.
    fn var_names(&self) -> Result<Vec<String>>;
    /// Per-cell annotations.
    fn obs(&self) -> Result<Frame>;
    /// Names of the per-cell arrays (e.g. `spatial`).
    fn obsm_keys(&self) -> Vec<String>;
    /// One per-cell array, `n_obs` rows.
    fn obsm(&self, key: &str) -> Result<Array2<f64>>;
    /// Cells `rows` of X (finite, non-negative values).
    fn read_rows(&self, rows: Range<usize>) -> Result<CsrMatrix>;
    /// A list of strings stored with the cells (AnnData's `uns`, e.g. the cell types behind the
    /// columns of `sof_composition`), if the source has one under `key`.
    fn uns_strings(&self, _key: &str) -> Result<Option<Vec<String>>> {
        Ok(None)
    }
}

/// Checks a row range against the number of cells.
fn check_range(name: &str, rows: &Range<usize>, n_obs: usize) -> Result<()> {
    if rows.start > rows.end || rows.end > n_obs {
        return Err(Error::invalid(
            Path::new(name),
            "X",
            format!("row range {rows:?} is outside 0..{n_obs}"),
            "ask for rows inside the matrix",
        ));
    }
    Ok(())
}

impl CellSource for AnnData {
    fn name(&self) -> String {
        "in-memory AnnData".to_owned()
    }

    fn n_obs(&self) -> usize {
        AnnData::n_obs(self)
    }

    fn n_vars(&self) -> usize {
        AnnData::n_vars(self)
    }

    fn var_names(&self) -> Result<Vec<String>> {
        Ok(self.var.index.clone())
    }

    fn obs(&self) -> Result<Frame> {
        Ok(self.obs.clone())
    }

    fn obsm_keys(&self) -> Vec<String> {
        self.obsm.keys().cloned().collect()
    }

    fn obsm(&self, key: &str) -> Result<Array2<f64>> {
        self.obsm.get(key).cloned().ok_or_else(|| {
            Error::missing(
                Path::new(&CellSource::name(self)),
                format!("obsm/{key}"),
                format!("available obsm arrays: [{}]", CellSource::obsm_keys(self).join(", ")),
            )
        })
    }

    fn read_rows(&self, rows: Range<usize>) -> Result<CsrMatrix> {
        check_range(&CellSource::name(self), &rows, AnnData::n_obs(self))?;
        Ok(self.x.slice_rows(rows))
    }
}

/// An in-memory dataset read from a file: the file names it in messages. What the `.loom` and
/// table readers return, as a [`CellSource`].
#[derive(Debug, Clone, PartialEq)]
pub struct CellFile {
    pub path: PathBuf,
    pub data: AnnData,
}

impl CellSource for CellFile {
    fn name(&self) -> String {
        self.path.display().to_string()
    }

    fn n_obs(&self) -> usize {
        self.data.n_obs()
    }

    fn n_vars(&self) -> usize {
        self.data.n_vars()
    }

    fn var_names(&self) -> Result<Vec<String>> {
        CellSource::var_names(&self.data)
    }

    fn obs(&self) -> Result<Frame> {
        CellSource::obs(&self.data)
    }

    fn obsm_keys(&self) -> Vec<String> {
        CellSource::obsm_keys(&self.data)
    }

    // The AnnData's own errors, named by the file.
    fn obsm(&self, key: &str) -> Result<Array2<f64>> {
        CellSource::obsm(&self.data, key).map_err(|e| self.named(e))
    }

    fn read_rows(&self, rows: Range<usize>) -> Result<CsrMatrix> {
        CellSource::read_rows(&self.data, rows).map_err(|e| self.named(e))
    }
}

impl CellFile {
    /// An error about the in-memory data, naming this file instead.
    fn named(&self, e: Error) -> Error {
        match e {
            Error::MissingField { field, fix, .. } => Error::MissingField { path: self.path.clone(), field, fix },
            Error::Invalid { field, problem, fix, .. } => {
                Error::Invalid { path: self.path.clone(), field, problem, fix }
            }
            other => other,
        }
    }
}

impl CellSource for crate::h5ad::H5adReader {
    fn name(&self) -> String {
        self.path().display().to_string()
    }

    fn n_obs(&self) -> usize {
        crate::h5ad::H5adReader::n_obs(self)
    }

    fn n_vars(&self) -> usize {
        crate::h5ad::H5adReader::n_vars(self)
    }

    fn var_names(&self) -> Result<Vec<String>> {
        Ok(self.var()?.index)
    }

    fn obs(&self) -> Result<Frame> {
        crate::h5ad::H5adReader::obs(self)
    }

    fn obsm_keys(&self) -> Vec<String> {
        crate::h5ad::H5adReader::obsm_keys(self)
    }

    fn obsm(&self, key: &str) -> Result<Array2<f64>> {
        crate::h5ad::H5adReader::obsm(self, key)
    }

    fn read_rows(&self, rows: Range<usize>) -> Result<CsrMatrix> {
        crate::h5ad::H5adReader::read_rows(self, rows)
    }

    fn uns_strings(&self, key: &str) -> Result<Option<Vec<String>>> {
        crate::h5ad::read_uns_strings(self.path(), key)
    }
}

/// Which file format a path holds, by its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CellFormat {
    H5ad,
    Loom,
    /// A delimited text table (`.tsv`, `.csv`, `.txt`, optionally with coordinate and metadata
    /// tables beside it).
    Table,
}

impl CellFormat {
    /// The format of `path`, from its extension (`.h5ad`, `.loom`, `.tsv` / `.csv` / `.txt`).
    pub fn of(path: &Path) -> Result<Self> {
        match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("h5ad") => Ok(Self::H5ad),
            Some("loom") => Ok(Self::Loom),
            Some("tsv" | "csv" | "txt" | "tab") => Ok(Self::Table),
            _ => Err(Error::invalid(
                path,
                "file name",
                "has an extension sof does not read",
                "pass an .h5ad, a .loom, or a delimited expression table (.tsv, .csv, .txt)",
            )),
        }
    }
}

/// The coordinate and metadata tables that go with an expression table, and its layout.
#[derive(Debug, Clone, Default)]
pub struct TableInput {
    pub coordinates: Option<PathBuf>,
    pub metadata: Option<PathBuf>,
    pub options: crate::table::TableOptions,
}

/// Opens a cell file of any supported format: an `.h5ad` is streamed from disk; a `.loom` or a
/// text table (with `tables` beside it) is read into memory.
pub fn open_cells(path: &Path, tables: &TableInput) -> Result<Box<dyn CellSource>> {
    Ok(match CellFormat::of(path)? {
        CellFormat::H5ad => Box::new(crate::h5ad::H5adReader::open(path)?),
        CellFormat::Loom => Box::new(CellFile {
            path: path.to_path_buf(),
            data: crate::loom::read_loom(path, &crate::loom::LoomOptions::default())?,
        }),
        CellFormat::Table => Box::new(CellFile {
            path: path.to_path_buf(),
            data: crate::table::read_tables(
                path,
                tables.coordinates.as_deref(),
                tables.metadata.as_deref(),
                &tables.options,
            )?,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_memory_sources_check_their_ranges() {
        let x = CsrMatrix::from_dense(2, 1, &[1.0, 2.0]);
        let data = AnnData {
            x,
            obs: Frame::new(vec!["a".into(), "b".into()]),
            var: Frame::new(vec!["g".into()]),
            obsm: Default::default(),
        };
        let file = CellFile { path: "cells.loom".into(), data: data.clone() };
        for src in [&data as &dyn CellSource, &file] {
            assert_eq!(src.read_rows(1..2).unwrap().row(0).1, &[2.0]);
            let e = src.read_rows(1..3).unwrap_err().to_string();
            assert!(e.contains("outside 0..2"), "{e}");
            let e = src.obsm("spatial").unwrap_err().to_string();
            assert!(e.contains("obsm/spatial"), "{e}");
        }
        assert!(file.read_rows(0..9).unwrap_err().to_string().contains("cells.loom"));
        assert_eq!(CellFormat::of(Path::new("a/b.LOOM")).unwrap(), CellFormat::Loom);
        assert_eq!(CellFormat::of(Path::new("expr.csv")).unwrap(), CellFormat::Table);
        assert!(CellFormat::of(Path::new("x.zarr")).is_err());
    }
}
