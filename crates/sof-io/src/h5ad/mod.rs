//! AnnData `.h5ad` files (HDF5 layout of anndata >= 0.8).

mod hdf;
mod read;
mod walk;
mod write;

pub(crate) use hdf::{read_plain_column, read_strings};
pub(crate) use read::open_hdf5;
pub use read::{H5adReader, XEncoding, read_h5ad};
pub use walk::{READ_WHOLE, Walked, walk};
pub use write::{
    H5adEditor, H5adStreamWriter, UnsValue, check_replace, read_uns_f64, read_uns_strings, write_h5ad, written_by_sof,
};
