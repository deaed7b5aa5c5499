//! A walk over every object of an HDF5 file (.h5ad, .loom): the groups, every dataset's type,
//! shape and filters, every attribute's value, and every dataset small enough to read whole
//! (obs and var columns, index pointers, coordinates). Of larger arrays (X of a big file) only the
//! chunk index is walked, not the data.
//!
//! libhdf5 (1.10 here) trusts a file's internal structure: some byte-corrupted files make it read
//! out of bounds (SIGSEGV) or loop forever, which no error handling can catch in-process. `sof`
//! runs this walk in a child process before it opens an input (see `sof-cli`'s preflight), so a
//! corrupt file ends in an error naming it instead of a crash. Measured with the mutation harness
//! (docs/RELIABILITY.md): every libhdf5 crash and hang seen there happened in `sof inspect` too,
//! i.e. while reading the file's structure and small datasets.

use std::path::Path;

use hdf5::types::TypeDescriptor;
use hdf5::{Container, Group, Location};

use super::hdf::read_strings;
use super::read::open_hdf5;
use crate::error::{Error, Result};

/// What [`walk`] visited.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Walked {
    pub groups: usize,
    pub datasets: usize,
    pub attributes: usize,
    /// Datasets read whole (at most [`READ_WHOLE`] elements).
    pub datasets_read: usize,
    /// What could not be read (the walk goes on past it, so every object is tried).
    pub errors: Vec<String>,
}

/// Datasets with at most this many elements are read whole.
pub const READ_WHOLE: usize = 1 << 20;
/// Groups nested deeper than this are not entered (a link cycle would otherwise never end).
const MAX_DEPTH: usize = 64;

/// For an .h5ad, reads what every command reads before the cells (X's layout, obs, var and
/// obsm), then visits every object of the HDF5 file at `path` (see the module docs). An error
/// only if the file cannot be opened; everything unreadable after that is in
/// [`Walked::errors`].
pub fn walk(path: impl AsRef<Path>) -> Result<Walked> {
    let path = path.as_ref();
    drop(open_hdf5(path)?);
    let mut walked = Walked::default();
    // What the commands read comes first, in a fresh library state: libhdf5's crashes depend on
    // what it read before, and one mutant (seed 3, #6522: a corrupt global-heap reference in
    // var's strings) crashed `sof inspect`'s read of var but not a walk that read var last.
    if path.extension().is_some_and(|e| e == "h5ad") {
        let mut note = |what: &str, e: Error| walked.errors.push(format!("{what}: {e}"));
        match super::H5adReader::open(path) {
            Ok(r) => {
                if let Err(e) = r.obs() {
                    note("obs", e);
                }
                if let Err(e) = r.var() {
                    note("var", e);
                }
                for key in r.obsm_keys() {
                    if let Err(e) = r.obsm(&key) {
                        note("obsm", e);
                    }
                }
            }
            Err(e) => note("X", e),
        }
    }
    let file = open_hdf5(path)?;
    visit_group(&file, "/", 0, &mut walked);
    Ok(walked)
}

fn visit_group(g: &Group, name: &str, depth: usize, w: &mut Walked) {
    if depth > MAX_DEPTH {
        w.errors.push(format!("{name}: groups nested over {MAX_DEPTH} deep (a link cycle?)"));
        return;
    }
    w.groups += 1;
    visit_attributes(g, name, w);
    let members = match g.member_names() {
        Ok(m) => m,
        Err(e) => {
            w.errors.push(format!("{name}: {e}"));
            return;
        }
    };
    for m in members {
        let child = format!("{}/{m}", name.trim_end_matches('/'));
        if let Ok(sub) = g.group(&m) {
            visit_group(&sub, &child, depth + 1, w);
        } else if let Ok(ds) = g.dataset(&m) {
            w.datasets += 1;
            visit_attributes(&ds, &child, w);
            let _ = ds.filters();
            let _ = ds.chunk();
            if ds.size() <= READ_WHOLE {
                match read_whole(&ds) {
                    Ok(()) => w.datasets_read += 1,
                    Err(e) => w.errors.push(format!("{child}: {e}")),
                }
            } else if ds.is_chunked() {
                // The chunk index (a B-tree), without the data.
                let _ = ds.num_chunks();
            }
        } else {
            w.errors.push(format!("{child}: neither a group nor a dataset"));
        }
    }
}

fn visit_attributes(loc: &Location, name: &str, w: &mut Walked) {
    let names = match loc.attr_names() {
        Ok(n) => n,
        Err(e) => {
            w.errors.push(format!("{name} attributes: {e}"));
            return;
        }
    };
    for a in names {
        match loc.attr(&a) {
            Ok(attr) => {
                w.attributes += 1;
                if attr.size() <= READ_WHOLE
                    && let Err(e) = read_whole(&attr)
                {
                    w.errors.push(format!("{name} attribute {a}: {e}"));
                }
            }
            Err(e) => w.errors.push(format!("{name} attribute {a}: {e}")),
        }
    }
}

/// Reads a dataset or attribute of a plain type (numbers, booleans, strings) as stored and as
/// f64; others are only typed.
fn read_whole(c: &Container) -> hdf5::Result<()> {
    match c.dtype()?.to_descriptor()? {
        TypeDescriptor::Integer(_) | TypeDescriptor::Unsigned(_) | TypeDescriptor::Float(_) => {
            c.read_raw::<f64>()?;
        }
        TypeDescriptor::Boolean => {
            c.read_raw::<bool>()?;
        }
        TypeDescriptor::VarLenUnicode
        | TypeDescriptor::VarLenAscii
        | TypeDescriptor::FixedAscii(_)
        | TypeDescriptor::FixedUnicode(_) => {
            // Strings that are not valid UTF-8 are the readers' error to report, with context.
            let _ = read_strings(c);
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small .h5ad: every group, dataset and attribute is visited, and the small ones read.
    #[test]
    fn walks_every_object_of_an_h5ad() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.h5ad");
        let x = crate::CsrMatrix::from_dense(3, 2, &[1.0, 0.0, 0.0, 2.0, 3.0, 4.0]);
        let mut obs = crate::Frame::new(vec!["c0".into(), "c1".into(), "c2".into()]);
        obs.insert("cell_type", crate::Column::categorical_from_labels(&["a", "b", "a"]));
        let var = crate::Frame::new(vec!["g0".into(), "g1".into()]);
        let adata = crate::AnnData { x, obs, var, obsm: Default::default() };
        crate::h5ad::write_h5ad(&path, &adata, &Default::default()).unwrap();
        let w = walk(&path).unwrap();
        assert!(w.errors.is_empty(), "{w:?}");
        assert!(w.groups >= 4, "{w:?}"); // /, X, obs, obs/cell_type, var
        assert!(w.datasets >= 6 && w.datasets_read == w.datasets, "{w:?}");
        assert!(w.attributes >= 6, "{w:?}");
        let folder = walk(dir.path()).unwrap_err().to_string();
        assert!(folder.contains("folder"), "{folder}");
    }
}
