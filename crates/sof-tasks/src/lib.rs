//! Downstream tasks on cell embeddings: the pieces every benchmark needs, with no burn and no
//! file formats, composed through small traits.
//!
//! - [`Target`]: what is predicted (classes, values, proportions), one type for every head.
//! - [`Head`] / [`Predictor`]: fitted on features — [`LinearHead`] (the linear probe),
//!   [`MlpHead`], [`NeighbourHead`] (the softmax-weighted neighbour vote of mapping).
//! - [`Embedder`]: features for [`Cells`] — [`ObsmEmbedder`] (an embedding computed before),
//!   [`PcaEmbedder`], [`RawEmbedder`]; the burn encoder implements it elsewhere.
//! - [`probe`]: every feature set with every head on the same folds, plus an optional end-to-end
//!   [`probe::CellModel`] (fine-tuning), into a typed [`probe::ProbeReport`].
//! - [`neighbourhood`]: the NichePCA- and BANKSY-style baselines (expression averaged over each
//!   cell's spatial neighbours in its section, then PCA) that a spatial embedding must beat.
//! - [`split`]: leave-one-section-out, spatial-block and shuffled folds.
//! - [`linear`]: logistic regression on standardized features (L-BFGS) and ridge regression.
//! - [`mlp`]: a one-hidden-layer MLP (classes, values, proportions) with early stopping.
//! - [`pca`]: the expression baselines (log1p of 10k-normalized counts; randomized PCA fitted on
//!   the training cells).
//! - [`mapping`]: placing query (dissociated) cells on a spatial reference by embedding similarity.
//! - [`metrics`]: macro F1, accuracy, confusion, calibration error, MAE, MSE, R², Spearman.
//! - [`view`]: a 2-D UMAP of an embedding (manifolds-rs, seeded) and kNN purity of a label (how
//!   mixed technologies or modalities are).

mod embedder;
mod head;
pub mod linear;
pub mod mapping;
pub mod metrics;
pub mod mlp;
pub mod neighbourhood;
pub mod pca;
pub mod probe;
pub mod split;
mod target;
pub mod view;

pub use embedder::{Cells, Embedder, ObsmEmbedder, PcaEmbedder, RawEmbedder};
pub use head::{Head, LinearHead, MlpHead, NeighbourHead, Predictor};
pub use target::Target;

/// Problems with a task's inputs.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TaskError {
    #[error("{0}")]
    Invalid(String),
}
