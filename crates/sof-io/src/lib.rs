//! Cells in, results out: the data layer of SpatialOmics-Foundation.
//!
//! - [`CsrMatrix`], [`Frame`] and [`AnnData`]: cells x genes counts (CSR, `f32`) with obs/var
//!   annotations and obsm arrays such as `spatial`.
//! - [`h5ad`]: AnnData `.h5ad` reading (dense, CSR, CSC X; streamed by row range) and writing
//!   (new files, streamed files, results added to a copy of the input).
//! - [`loom`] and [`table`]: the `.loom` format and delimited text tables.
//! - [`CellSource`]: cells by row block from any of these (and from a generator), what the
//!   tokenizer and the downstream tools consume; [`open_cells`] opens a file of any format.
//! - [`genes`]: a gene vocabulary and the alignment of a dataset's gene names into it.
//!
//! Every reader validates what it returns and reports problems as [`Error`]s that name the
//! file, the field and the fix.

mod anndata;
pub mod atomic;
mod error;
mod frame;
pub mod genes;
pub mod h5ad;
mod lock;
pub mod loom;
pub mod manifest;
mod matrix;
pub mod shared;
mod source;
pub mod table;

pub use anndata::AnnData;
pub use atomic::AtomicPath;
pub use error::{Error, Result};
pub use frame::{Column, Frame};
pub use lock::OutputLock;
pub use matrix::{CsrError, CsrMatrix};
pub use source::{CellFile, CellFormat, CellSource, TableInput, open_cells};

/// Reads any supported cell file by extension: `.h5ad` or `.loom` (with default loom names).
pub fn read_cells(path: impl AsRef<std::path::Path>) -> Result<AnnData> {
    let path = path.as_ref();
    match path.extension().and_then(|e| e.to_str()) {
        Some("loom") => loom::read_loom(path, &loom::LoomOptions::default()),
        _ => h5ad::read_h5ad(path),
    }
}
