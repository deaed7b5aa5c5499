//! Tokenizer tests: the reference fixture token for token, an independent dense implementation
//! on every shared dataset and on random sparse matrices, technology means, and the corpus builder.

#![allow(clippy::print_stderr)] // tests say when they skip for lack of shared data

mod corpus;
mod dense;
mod fixture;

use std::path::PathBuf;

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
