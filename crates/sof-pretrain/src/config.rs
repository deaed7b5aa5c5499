//! The pretraining configuration: one TOML file, saved beside the run (with the exact command).
//!
//! ```toml
//! preset = "small"            # tiny | small | base | nicheformer
//! steps = 3000
//! batch_size = 32             # sequences per optimizer step (all micro-batches, all devices)
//! accumulation = 1            # micro-batches per step
//! seed = 0
//!
//! [[corpora]]
//! path = "corpora/starmap"
//! weight = 1.0
//!
//! [optimizer]
//! learning_rate = 1e-3
//! warmup_steps = 200
//! min_lr_ratio = 0.1          # cosine decay ends at learning_rate * min_lr_ratio
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::masking::MaskingConfig;

/// A corpus folder and its mixing weight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CorpusEntry {
    pub path: PathBuf,
    #[serde(default = "one")]
    pub weight: f64,
}

fn one() -> f64 {
    1.0
}

/// AdamW with linear warmup and cosine decay to a floor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimizerConfig {
    pub learning_rate: f64,
    pub warmup_steps: u64,
    /// The learning rate at the last step, as a fraction of `learning_rate`.
    pub min_lr_ratio: f64,
    pub weight_decay: f64,
    pub beta_1: f32,
    pub beta_2: f32,
    pub epsilon: f32,
    /// Clip each parameter tensor's gradient to this L2 norm (burn's per-tensor clipping); 0 = off.
    pub clip_norm: f32,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self {
            learning_rate: 1e-3,
            warmup_steps: 100,
            min_lr_ratio: 0.1,
            weight_decay: 0.01,
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-8,
            clip_norm: 1.0,
        }
    }
}

impl OptimizerConfig {
    /// The learning rate of optimizer step `step` (0-based) of `total`: linear warmup from
    /// `lr / warmup` to `lr`, then cosine decay to `lr * min_lr_ratio` at the last step.
    pub fn learning_rate_at(&self, step: u64, total: u64) -> f64 {
        let decay = Decay::Cosine { floor_ratio: self.min_lr_ratio };
        warmup_then_decay(step, total, self.learning_rate, self.warmup_steps, decay)
    }
}

/// How [`warmup_then_decay`] falls after the warmup.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decay {
    /// Cosine to `peak * floor_ratio` at the last step (pretraining).
    Cosine { floor_ratio: f64 },
    /// Linear to zero after the last step (fine-tuning).
    Linear,
}

/// The learning rate of step `step` (0-based) of `total`: linear warmup from `peak / warmup` to
/// `peak` over `warmup` steps, then `decay`.
///
/// Ours, not burn's `lr_scheduler`: a pure function of the step, so a resumed run needs no
/// scheduler state in its checkpoint, where burn's schedulers are stateful iterators (and its
/// cosine rises again after `num_iters`).
pub fn warmup_then_decay(step: u64, total: u64, peak: f64, warmup: u64, decay: Decay) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    match decay {
        Decay::Cosine { floor_ratio } => {
            let span = total.saturating_sub(warmup).saturating_sub(1).max(1);
            let t = ((step - warmup) as f64 / span as f64).min(1.0);
            let floor = peak * floor_ratio;
            floor + (peak - floor) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
        }
        Decay::Linear => peak * total.saturating_sub(step) as f64 / total.saturating_sub(warmup).max(1) as f64,
    }
}

/// The niche-aware auxiliary objectives (ours), from the pooled cell embedding, for rows whose
/// corpus carries the targets:
/// - the label-free niche profile (on by default; `sof spatial` and `sof tokenize` compute it
///   from coordinates and counts only): MSE against the standardized neighbour-mean expression
///   components;
/// - the local density (label-free too, off by default: beside the profile it helped density on
///   STARmap but cost layer and placement on the demo, docs/PRETRAINING.md): MSE on the
///   standardized log neighbour count;
/// - the neighbourhood composition (off by default): cross-entropy against the cell-type
///   proportions. It reads the annotations of every cell, test sections included, so a probe
///   scored after it is transductive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NicheConfig {
    /// Weight of the composition loss (0 = off).
    pub composition_weight: f64,
    /// Weight of the density loss (0 = off).
    pub density_weight: f64,
    /// Weight of the niche-profile loss (0 = off).
    pub profile_weight: f64,
}

impl Default for NicheConfig {
    fn default() -> Self {
        Self { composition_weight: 0.0, density_weight: 0.0, profile_weight: 1.0 }
    }
}

impl NicheConfig {
    pub fn enabled(&self) -> bool {
        self.composition_weight > 0.0 || self.density_weight > 0.0 || self.profile_weight > 0.0
    }
}

/// Everything a pretraining run needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PretrainConfig {
    /// Model preset (`tiny`, `small`, `base`, `nicheformer`); sizes follow the corpora's vocabulary.
    pub preset: String,
    /// Start from this checkpoint (ours or imported reference weights) instead of random weights.
    pub init_from: Option<PathBuf>,
    /// Override the preset's context length (positions).
    pub context_length: Option<usize>,
    /// Pre-LayerNorm encoder layers (ours, for new models; the reference is post-LN). Pre-LN
    /// trains more stably and its mean-pooled embeddings collapse less.
    pub norm_first: bool,
    /// The vocabulary TSV the corpora were tokenized with, copied beside every saved model so
    /// `sof embed` can tokenize new data (default: the first corpus's `vocab.tsv`, if any).
    pub vocab: Option<PathBuf>,
    pub corpora: Vec<CorpusEntry>,
    pub steps: u64,
    pub batch_size: usize,
    pub accumulation: usize,
    /// Data-parallel replicas; each computes the gradients of its share of every micro-batch.
    pub replicas: usize,
    pub seed: u64,
    pub shuffle_buffer: usize,
    /// Fraction of each corpus's cells held out for validation.
    pub validation_fraction: f64,
    /// Validate every this many steps (0 = only at the end).
    pub validation_every: u64,
    /// Batches in the (fixed) validation set.
    pub validation_batches: usize,
    pub checkpoint_every: u64,
    /// Checkpoints kept (the oldest are deleted).
    pub keep_checkpoints: usize,
    /// Log a metrics row every this many steps.
    pub log_every: u64,
    pub masking: MaskingConfig,
    pub optimizer: OptimizerConfig,
    pub niche: NicheConfig,
}

impl Default for PretrainConfig {
    fn default() -> Self {
        Self {
            preset: "small".into(),
            init_from: None,
            context_length: None,
            norm_first: false,
            vocab: None,
            corpora: Vec::new(),
            steps: 1_000,
            batch_size: 32,
            accumulation: 1,
            replicas: 1,
            seed: 0,
            shuffle_buffer: 4_096,
            validation_fraction: 0.02,
            validation_every: 250,
            validation_batches: 8,
            checkpoint_every: 250,
            keep_checkpoints: 3,
            log_every: 10,
            masking: MaskingConfig::default(),
            optimizer: OptimizerConfig::default(),
            niche: NicheConfig::default(),
        }
    }
}

/// A configuration problem, naming the file (or flag) and the field.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: {problem}; {fix}")]
pub struct ConfigError {
    pub source_name: String,
    pub problem: String,
    pub fix: String,
}

impl PretrainConfig {
    /// Reads a TOML file (values are checked by [`PretrainConfig::validate`], which the trainer
    /// calls once flags have been folded in).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let err = |problem: String, fix: &str| ConfigError {
            source_name: path.display().to_string(),
            problem,
            fix: fix.into(),
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string(), "check the path"))?;
        toml::from_str(&text).map_err(|e| err(e.to_string(), "fix the TOML (see docs/PRETRAINING.md)"))
    }

    /// The TOML text (saved in the run folder).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("the config serializes")
    }

    /// Checks values that would fail later or silently misbehave.
    pub fn validate(&self, source_name: &str) -> Result<(), ConfigError> {
        let err =
            |problem: String, fix: &str| Err(ConfigError { source_name: source_name.into(), problem, fix: fix.into() });
        if self.corpora.is_empty() {
            return err("no corpora".into(), "add [[corpora]] entries or pass --corpus <dir>");
        }
        if self.steps == 0 {
            return err("steps = 0".into(), "train for at least one step");
        }
        if self.batch_size == 0 || self.accumulation == 0 || self.replicas == 0 {
            return err(
                format!(
                    "batch_size {}, accumulation {}, replicas {}",
                    self.batch_size, self.accumulation, self.replicas
                ),
                "all must be at least 1",
            );
        }
        if !self.batch_size.is_multiple_of(self.accumulation * self.replicas) {
            return err(
                format!(
                    "batch_size {} is not a multiple of accumulation x replicas = {}",
                    self.batch_size,
                    self.accumulation * self.replicas
                ),
                "choose a batch size every micro-batch and device gets an equal share of",
            );
        }
        if let Some(l) = self.context_length
            && l <= 3
        {
            // The three context tokens fill the cell: nothing is left to mask, the loss is 0.
            return err(
                format!("context_length = {l} leaves no position for genes after the 3 context tokens"),
                "use a context length of at least 4 (the presets use 1500)",
            );
        }
        let o = &self.optimizer;
        if !(o.learning_rate > 0.0 && o.learning_rate.is_finite() && (0.0..=1.0).contains(&o.min_lr_ratio)) {
            return err(
                format!("optimizer.learning_rate {} / min_lr_ratio {}", o.learning_rate, o.min_lr_ratio),
                "use a positive learning rate and a floor ratio in 0..=1",
            );
        }
        if !(0.0..0.5).contains(&self.validation_fraction) {
            return err(format!("validation_fraction {}", self.validation_fraction), "use a fraction in 0..0.5");
        }
        let m = &self.masking;
        if !(0.0 < m.probability && m.probability < 1.0) || m.mask_fraction + m.random_fraction > 1.0 {
            return err(format!("masking {m:?}"), "use 0 < probability < 1 and mask + random fractions <= 1");
        }
        if !(0.0..=1.0).contains(&m.context_dropout) {
            return err(format!("masking.context_dropout = {}", m.context_dropout), "use a probability in 0..=1");
        }
        if self.niche.composition_weight < 0.0 || self.niche.density_weight < 0.0 || self.niche.profile_weight < 0.0 {
            return err(format!("niche {:?}", self.niche), "weights must be >= 0");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_to_the_floor() {
        let o = OptimizerConfig { learning_rate: 1.0, warmup_steps: 10, min_lr_ratio: 0.1, ..Default::default() };
        assert!((o.learning_rate_at(0, 110) - 0.1).abs() < 1e-12);
        assert!((o.learning_rate_at(4, 110) - 0.5).abs() < 1e-12);
        assert!((o.learning_rate_at(10, 110) - 1.0).abs() < 1e-12, "peak right after warmup");
        assert!((o.learning_rate_at(109, 110) - 0.1).abs() < 1e-12, "floor at the last step");
        let mid = o.learning_rate_at(10 + 99 / 2, 110);
        assert!((mid - 0.55).abs() < 0.01, "half way down the cosine: {mid}");
        let lrs: Vec<f64> = (10..110).map(|s| o.learning_rate_at(s, 110)).collect();
        assert!(lrs.windows(2).all(|w| w[1] <= w[0]), "monotone decay");
        assert!((o.learning_rate_at(500, 110) - 0.1).abs() < 1e-12, "past the end: the floor");
    }

    #[test]
    fn toml_round_trip_and_clear_errors() {
        let text = "preset = \"tiny\"\nsteps = 5\nbatch_size = 8\naccumulation = 2\n\
                    [[corpora]]\npath = \"c1\"\n[optimizer]\nlearning_rate = 0.01\n";
        let cfg: PretrainConfig = toml::from_str(text).unwrap();
        cfg.validate("x.toml").unwrap();
        assert_eq!(cfg.corpora[0].weight, 1.0);
        assert_eq!(cfg.optimizer.warmup_steps, 100, "unset fields keep their defaults");
        let back: PretrainConfig = toml::from_str(&cfg.to_toml()).unwrap();
        assert_eq!(back, cfg);

        let mut bad = cfg.clone();
        bad.batch_size = 7;
        let e = bad.validate("x.toml").unwrap_err().to_string();
        assert!(e.starts_with("x.toml:") && e.contains("batch_size 7"), "{e}");
        let short = PretrainConfig { context_length: Some(2), ..cfg.clone() };
        let e = short.validate("x.toml").unwrap_err().to_string();
        assert!(e.contains("context_length = 2") && e.contains("at least 4"), "{e}");
        PretrainConfig { context_length: Some(4), ..cfg.clone() }.validate("x.toml").unwrap();
        let e = toml::from_str::<PretrainConfig>("stepz = 3").unwrap_err().to_string();
        assert!(e.contains("stepz"), "unknown fields are refused: {e}");
    }
}
