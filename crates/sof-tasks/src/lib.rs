//! Downstream tasks on cell embeddings (issue 7, in progress): the pieces every benchmark needs,
//! with no burn and no file formats.
//!
//! - [`split`]: leave-one-section-out and spatial-block folds.
//! - [`linear`]: the linear probe (multinomial logistic regression on whitened features) and
//!   ridge regression.
//! - [`mlp`]: a one-hidden-layer MLP head (classes, values, proportions) with early stopping.
//! - [`pca`]: the expression baselines (log1p of 10k-normalized counts; randomized PCA fitted on
//!   the training cells).
//! - [`mapping`]: placing query (dissociated) cells on a spatial reference by embedding similarity.
//! - [`metrics`]: macro F1, accuracy, confusion, calibration error, MAE, MSE, R², Spearman.

pub mod linear;
pub mod mapping;
pub mod metrics;
pub mod mlp;
pub mod pca;
pub mod split;
