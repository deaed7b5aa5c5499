//! Reading `.loom` files (loompy's HDF5 layout): `/matrix` is genes x cells, gene names in
//! `/row_attrs`, cell annotations in `/col_attrs`.

use std::collections::BTreeMap;
use std::path::Path;

use ndarray::{Array2, s};

use crate::anndata::AnnData;
use crate::error::{Error, Result};
use crate::frame::Frame;
use crate::h5ad::{open_hdf5, read_plain_column, read_strings};
use crate::matrix::CsrMatrix;

/// Which loom attributes hold gene names, cell ids and coordinates.
#[derive(Debug, Clone)]
pub struct LoomOptions {
    /// Row attribute with gene names (loompy's convention: `Gene`).
    pub gene_attr: String,
    /// Column attribute with cell ids (loompy's convention: `CellID`).
    pub cell_id_attr: String,
    /// Column attributes with x and y coordinates, copied into `obsm['spatial']` when present.
    pub coordinate_attrs: Option<(String, String)>,
    /// Cells read per block while transposing the matrix.
    pub block_cells: usize,
}

impl Default for LoomOptions {
    fn default() -> Self {
        Self {
            gene_attr: "Gene".into(),
            cell_id_attr: "CellID".into(),
            coordinate_attrs: Some(("X".into(), "Y".into())),
            block_cells: 65_536,
        }
    }
}

/// Reads a `.loom` file into cells x genes form. Every column attribute becomes an obs column.
pub fn read_loom(path: impl AsRef<Path>, opts: &LoomOptions) -> Result<AnnData> {
    let path = path.as_ref();
    let f = open_hdf5(path)?;
    let m = f
        .dataset("matrix")
        .map_err(|_| Error::missing(path, "matrix", "a .loom file stores its genes x cells counts in /matrix"))?;
    let shape = m.shape();
    if shape.len() != 2 {
        return Err(Error::invalid(path, "matrix", format!("is {}-d", shape.len()), "it must be genes x cells"));
    }
    let (n_genes, n_cells) = (shape[0], shape[1]);

    let gene_field = format!("row_attrs/{}", opts.gene_attr);
    let genes_ds = f
        .dataset(&gene_field)
        .map_err(|_| Error::missing(path, &gene_field, "pass the row attribute that holds gene names"))?;
    let genes = read_strings(&genes_ds).map_err(|e| Error::hdf5(path, &gene_field, e))?;
    if genes.len() != n_genes {
        return Err(Error::invalid(
            path,
            &gene_field,
            format!("has {} names for {n_genes} matrix rows", genes.len()),
            "the file is inconsistent: re-export it",
        ));
    }

    let col_attrs =
        f.group("col_attrs").map_err(|_| Error::missing(path, "col_attrs", "re-export the file with loompy"))?;
    let id_field = format!("col_attrs/{}", opts.cell_id_attr);
    let ids_ds = col_attrs
        .dataset(&opts.cell_id_attr)
        .map_err(|_| Error::missing(path, &id_field, "pass the column attribute that holds cell ids"))?;
    let ids = read_strings(&ids_ds).map_err(|e| Error::hdf5(path, &id_field, e))?;
    let mut obs = Frame::new(ids);
    if obs.len() != n_cells {
        return Err(Error::invalid(
            path,
            &id_field,
            format!("has {} ids for {n_cells} cells", obs.len()),
            "re-export the file",
        ));
    }
    let mut names = col_attrs.member_names().map_err(|e| Error::hdf5(path, "col_attrs", e))?;
    names.sort();
    for name in names {
        let field = format!("col_attrs/{name}");
        let Ok(ds) = col_attrs.dataset(&name) else { continue };
        if name == opts.cell_id_attr || ds.ndim() != 1 {
            continue;
        }
        let col = read_plain_column(&ds).map_err(|e| Error::hdf5(path, &field, e))?;
        if col.len() != n_cells {
            return Err(Error::invalid(
                path,
                &field,
                format!("has {} values for {n_cells} cells", col.len()),
                "re-export the file",
            ));
        }
        obs.insert(name, col);
    }

    let mut x = CsrMatrix::empty(n_genes);
    let mut start = 0;
    while start < n_cells {
        let end = (start + opts.block_cells.max(1)).min(n_cells);
        let block = m.read_slice_2d::<f32, _>(s![.., start..end]).map_err(|e| Error::hdf5(path, "matrix", e))?;
        let cells = block.t().as_standard_layout().into_owned();
        let values = cells.as_slice().expect("standard layout is contiguous");
        x.append_rows(&CsrMatrix::from_dense(end - start, n_genes, values));
        start = end;
    }

    let mut obsm = BTreeMap::new();
    if let Some((xa, ya)) = &opts.coordinate_attrs
        && let (Some(xs), Some(ys)) = (obs.get(xa).and_then(|c| c.as_f64()), obs.get(ya).and_then(|c| c.as_f64()))
    {
        let mut xy = Array2::<f64>::zeros((n_cells, 2));
        for i in 0..n_cells {
            xy[[i, 0]] = xs[i];
            xy[[i, 1]] = ys[i];
        }
        obsm.insert("spatial".to_owned(), xy);
    }
    let adata = AnnData { x, obs, var: Frame::new(genes), obsm };
    adata.validate(path)?;
    Ok(adata)
}
