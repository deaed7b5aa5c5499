//! Tokenizer tests: the reference fixture token for token, an independent dense implementation
//! on every shared dataset and on random sparse matrices, technology means, and the corpus builder.

mod corpus;
mod dense;
mod fixture;

/// The shared data folder, or `None` (with a note) where it is absent; CI requires it.
pub fn shared() -> Option<std::path::PathBuf> {
    sof_io::shared::for_tests(std::path::Path::new(env!("CARGO_MANIFEST_DIR")))
}
