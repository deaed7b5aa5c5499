//! sof-io integration tests: readers against Python anndata's numbers, writers round-trip,
//! every bad-input case, and gene alignment on the shared datasets.

mod bad_input;
mod genes;
mod manifests;
mod readers;
mod writers;

/// The shared data folder, or `None` (with a note) where it is absent; CI requires it.
pub fn shared() -> Option<std::path::PathBuf> {
    sof_io::shared::for_tests(std::path::Path::new(env!("CARGO_MANIFEST_DIR")))
}
