//! sof-io integration tests: readers against Python anndata's numbers, writers round-trip,
//! every bad-input case, and gene alignment on the shared datasets.

#![allow(clippy::print_stderr)] // tests say when they skip for lack of shared data

mod bad_input;
mod genes;
mod manifests;
mod readers;
mod writers;

use std::path::PathBuf;

/// The shared data folder, or `None` (with a note) where it is absent, as on a user's machine.
/// CI sets `SOF_REQUIRE_SHARED=1`, which turns a missing folder into a failure.
pub fn shared() -> Option<PathBuf> {
    let found = sof_io::shared::shared_dir_from(std::path::Path::new(env!("CARGO_MANIFEST_DIR")));
    if found.is_none() {
        assert!(
            std::env::var_os("SOF_REQUIRE_SHARED").is_none(),
            "SOF_REQUIRE_SHARED is set but no shared/ folder was found"
        );
        eprintln!("note: shared/ data folder not found; skipping a test that needs it");
    }
    found
}
