//! Pretraining: masked-token training over Parquet corpora, resumable, data-parallel, with an
//! optional niche-aware objective.
//!
//! - [`config`]: the TOML run configuration and the learning-rate schedule (one for pretraining
//!   and fine-tuning).
//! - [`data`]: weighted, seeded streaming of sequences (with their spatial targets) from corpora,
//!   checked against the model's vocabulary; a hash split holds out validation cells.
//! - [`finetune`]: full fine-tuning of an encoder with a task head (lower encoder learning rate).
//! - [`masking`]: the reference's masked-token corruption (15% / 80-10-10).
//! - [`objective`]: the [`Objective`] trait every training loss implements (pretraining: the MLM
//!   loss, with the vocabulary head only at masked positions, then the niche heads in `niche`;
//!   each fine-tuning task) and [`share_gradients`], the gradient step both loops share.
//! - [`trainer`]: the loop (prefetch thread, accumulation, replicas, AdamW, validation,
//!   checkpoints, resume, clean stop); beside it, private: `niche` (the niche heads),
//!   `batch` (a step's rows and their length-grouped chunks), `init` (seeded initialisation),
//!   `metrics` (`metrics.csv`, `loss.png`; [`trainer::read_metrics`]), `run_files` (complete
//!   checkpoints, JSON state, atomic writes, command.txt).

mod batch;
pub mod config;
pub mod data;
pub mod finetune;
mod init;
pub mod masking;
mod metrics;
mod niche;
pub mod objective;
mod run_files;
pub mod trainer;

pub use config::PretrainConfig;
pub use objective::{Objective, share_gradients};
pub use trainer::{Event, Summary, Trainer};
