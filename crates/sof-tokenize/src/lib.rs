//! Gene-rank tokenization of cells, as the Nicheformer reference defines it, bug-fixed by default.
//!
//! A cell becomes `[species, assay, modality, gene tokens...]`: its counts are scaled to 10,000,
//! divided by its technology's per-gene mean, and the expressed genes ranked by that value
//! (descending; ties by vocabulary index), each gene's token being its vocabulary index + 30.
//!
//! - [`context`]: special and context token ids ([`ContextTable`]: technologies, extensible by
//!   configuration into the free ids 19..=29).
//! - [`means`]: technology mean vectors: computed from data, saved and loaded as TSV.
//! - [`Tokenizer`] with [`Mode::Fixed`] (default: NaN or negative means mark genes the technology
//!   does not measure, which are skipped) or [`Mode::Nicheformer`] (the reference's exact
//!   behaviour, for published weights). docs/TOKENIZER.md says where and why they differ.
//! - [`corpus`]: streaming `.h5ad` -> Parquet shards with a manifest, parallel, resumable.
//!
//! This crate does not depend on burn.

pub mod context;
pub mod corpus;
pub mod means;
mod rank;
mod tokenizer;

pub use context::pad_rows;
pub use context::{ContextTable, Modality, TechnologySpec};
pub use means::{MeansAccumulator, TechMeans};
pub use tokenizer::{
    ColumnTokenizer, GeneMap, Mode, Scratch, TokenizedCell, Tokenizer, TokenizerConfig, TokenizerSpec,
};

/// Errors of the tokenizer and the corpus builder.
#[derive(Debug, thiserror::Error)]
pub enum TokenizeError {
    #[error(
        "unknown technology '{name}'; known: {known}. Pass --new-technology to give it a free token id (19..=29), or add a [technology.{name}] entry in a context config"
    )]
    UnknownTechnology { name: String, known: String },
    #[error("unknown species '{0}'; use human or mouse")]
    UnknownSpecies(String),
    #[error("unknown modality '{0}'; use spatial or dissociated")]
    UnknownModality(String),
    #[error("{path}: {problem}; {fix}")]
    Invalid { path: String, problem: String, fix: String },
    #[error(transparent)]
    Io(#[from] sof_io::Error),
    #[error("{path}: Parquet error: {reason}")]
    Parquet { path: String, reason: String },
}

pub type Result<T, E = TokenizeError> = std::result::Result<T, E>;

impl TokenizeError {
    pub(crate) fn invalid(path: impl std::fmt::Display, problem: impl Into<String>, fix: impl Into<String>) -> Self {
        TokenizeError::Invalid { path: path.to_string(), problem: problem.into(), fix: fix.into() }
    }
}

/// Hash identifying a vocabulary (SHA-256 of its ids joined by newlines), stored in corpus
/// manifests and checkpoints so a model can refuse a corpus tokenized with another vocabulary.
pub fn vocabulary_hash(vocab: &sof_io::genes::Vocabulary) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for id in vocab.ids() {
        h.update(id.as_bytes());
        h.update(b"\n");
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}
