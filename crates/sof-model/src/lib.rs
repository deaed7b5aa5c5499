//! The transformer encoder, in burn: Nicheformer's architecture (Tejada-Lapuerta et al., Nature
//! Methods 2025) with its exact semantics, so the reference's weights load and give the same
//! outputs, plus our options (pre-LayerNorm, PAD-excluded pooling).
//!
//! - [`EncoderConfig`] with presets `tiny`, `small`, `base`, `nicheformer`.
//! - [`Encoder`]: token + learned positional embeddings, post-LN encoder layers with PyTorch
//!   `nn.TransformerEncoderLayer` semantics (ReLU, LayerNorm eps from the config, key-padding
//!   mask on PAD), MLM head; [`Encoder::embed`] pools cells with [`Pooling`].
//! - [`import`]: reference-layout weights from `.safetensors` (names as in the reference's
//!   state_dict, `in_proj` split into q/k/v), with a clear report of missing, unexpected and
//!   mis-shaped tensors.
//!
//! Library code takes a `Device` and never names a backend; the binary chooses it.

pub mod checkpoint;
mod config;
mod encoder;
pub mod import;

pub use config::EncoderConfig;
pub use encoder::{Encoder, Pooling};

/// Token id of padding and the context positions before the gene tokens (species, assay,
/// modality): the tokenizer's, which owns every token id.
pub use sof_tokenize::context::{N_CONTEXT, PAD};

/// Errors of model construction and weight import.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {problem}; {fix}")]
    Invalid { path: String, problem: String, fix: String },
    #[error("{path}: the weights do not fit the model:\n{report}")]
    Mismatch { path: String, report: String },
}
