//! Pretraining: masked-token training over Parquet corpora, resumable, data-parallel, with an
//! optional niche-aware objective.
//!
//! - [`config`]: the TOML run configuration and the learning-rate schedule.
//! - [`data`]: weighted, seeded streaming of sequences (with their spatial targets) from corpora,
//!   checked against the model's vocabulary; a hash split holds out validation cells.
//! - [`finetune`]: full fine-tuning of an encoder with a task head (lower encoder learning rate).
//! - [`masking`]: the reference's masked-token corruption (15% / 80-10-10).
//! - [`objective`]: the MLM loss, with the vocabulary head only at masked positions.
//! - [`trainer`]: the loop (prefetch thread, accumulation, replicas, AdamW, validation,
//!   checkpoints, resume, clean stop).

pub mod config;
pub mod data;
pub mod finetune;
pub mod masking;
pub mod objective;
pub mod trainer;

pub use config::PretrainConfig;
pub use trainer::{Event, Summary, Trainer};
