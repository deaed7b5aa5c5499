//! [`AnnData`]: the in-memory form of one dataset, mirroring the AnnData layout.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use ndarray::Array2;

use crate::error::{Error, Result};
use crate::frame::Frame;
use crate::matrix::CsrMatrix;

/// Cells x genes counts with their annotations.
///
/// Invariants (checked by [`AnnData::validate`], which every reader calls): `x` has
/// `obs.len()` rows and `var.len()` columns, every `obsm` array has `obs.len()` rows, gene names are
/// unique, and every value in `x` is finite and non-negative.
#[derive(Debug, Clone, PartialEq)]
pub struct AnnData {
    pub x: CsrMatrix,
    pub obs: Frame,
    pub var: Frame,
    pub obsm: BTreeMap<String, Array2<f64>>,
}

impl AnnData {
    pub fn n_obs(&self) -> usize {
        self.x.n_rows()
    }

    pub fn n_vars(&self) -> usize {
        self.x.n_cols()
    }

    /// Gene names (the var index).
    pub fn var_names(&self) -> &[String] {
        &self.var.index
    }

    /// Cell names (the obs index).
    pub fn obs_names(&self) -> &[String] {
        &self.obs.index
    }

    /// The `obsm['spatial']` coordinates, if present.
    pub fn spatial(&self) -> Option<&Array2<f64>> {
        self.obsm.get("spatial")
    }

    /// Checks the invariants; `path` names the source in messages.
    pub fn validate(&self, path: &Path) -> Result<()> {
        check_shapes(path, &self.x, &self.obs, &self.var)?;
        for (key, arr) in &self.obsm {
            if arr.nrows() != self.n_obs() {
                return Err(Error::invalid(
                    path,
                    format!("obsm/{key}"),
                    format!("has {} rows but there are {} cells", arr.nrows(), self.n_obs()),
                    "write obsm arrays with one row per cell",
                ));
            }
        }
        check_unique_genes(path, "var index", &self.var.index)?;
        check_values(path, "X", &self.x, 0)
    }

    /// Keeps only the listed cells, in the order given.
    pub fn select_obs(&self, rows: &[usize]) -> Self {
        Self {
            x: self.x.select_rows(rows),
            obs: self.obs.select(rows),
            var: self.var.clone(),
            obsm: self.obsm.iter().map(|(k, a)| (k.clone(), a.select(ndarray::Axis(0), rows))).collect(),
        }
    }
}

pub(crate) fn check_shapes(path: &Path, x: &CsrMatrix, obs: &Frame, var: &Frame) -> Result<()> {
    if x.n_rows() != obs.len() {
        return Err(Error::invalid(
            path,
            "X",
            format!("has {} rows but obs has {} cells", x.n_rows(), obs.len()),
            "X rows and obs must describe the same cells",
        ));
    }
    if x.n_cols() != var.len() {
        return Err(Error::invalid(
            path,
            "X",
            format!("has {} columns but var has {} genes", x.n_cols(), var.len()),
            "X columns and var must describe the same genes",
        ));
    }
    Ok(())
}

/// Rejects duplicate gene names, naming the first duplicate and both of its positions.
pub(crate) fn check_unique_genes(path: &Path, field: &str, names: &[String]) -> Result<()> {
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(names.len());
    for (i, n) in names.iter().enumerate() {
        if let Some(first) = seen.insert(n.as_str(), i) {
            let dups = names.len() - {
                let mut all: Vec<&String> = names.iter().collect();
                all.sort();
                all.dedup();
                all.len()
            };
            return Err(Error::invalid(
                path,
                field,
                format!("duplicate gene name '{n}' at positions {first} and {i} ({dups} duplicate(s) in all)"),
                "make gene names unique (e.g. anndata's var_names_make_unique()) or sum the duplicated genes",
            ));
        }
    }
    Ok(())
}

/// Rejects NaN, infinite and negative values; `row_offset` places a streamed chunk in the file.
pub(crate) fn check_values(path: &Path, field: &str, x: &CsrMatrix, row_offset: usize) -> Result<()> {
    if let Some((row, col, v)) = x.first_invalid_value() {
        let what = if v.is_nan() {
            "NaN"
        } else if v.is_infinite() {
            "infinite"
        } else {
            "negative"
        };
        return Err(Error::invalid(
            path,
            field,
            format!("{what} value {v} at cell {}, gene {col}", row + row_offset),
            "expression must be raw (or normalised) non-negative counts: replace NaN with 0 and do not pass log-transformed or scaled data",
        ));
    }
    Ok(())
}
