//! The niche-aware terms of the pretraining objective: per corpus, a head on the pooled
//! embedding predicts the neighbourhood's cell-type composition (cross-entropy), its local
//! density (standardized ln, squared error) or, label-free, its niche profile (squared error),
//! each normalized by the step's count of rows that carry it.

use std::path::Path;

use burn::prelude::*;
use serde::{Deserialize, Serialize};
use sof_model::Pooling;
use sof_tokenize::corpus::{CorpusManifest, read_shard_rows};

use crate::batch::StepBatch;
use crate::config::NicheConfig;
use crate::masking::IGNORE;
use crate::objective::{ChunkPass, Term};
use crate::trainer::{PretrainModel, TrainError};

/// Per-corpus facts the loss needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct CorpusFacts {
    pub(crate) dataset: String,
    pub(crate) composition_width: Option<usize>,
    pub(crate) profile_width: Option<usize>,
    /// Mean and standard deviation of ln(density) over the corpus (standardizes the target).
    pub(crate) density_stats: Option<(f64, f64)>,
}

/// Sums over (part of) a step.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Sums {
    pub(crate) mlm: f64,
    pub(crate) correct: u64,
    pub(crate) chosen: u64,
    pub(crate) composition: f64,
    pub(crate) composition_rows: u64,
    pub(crate) density: f64,
    pub(crate) density_rows: u64,
    pub(crate) profile: f64,
    pub(crate) profile_rows: u64,
    pub(crate) tokens: u64,
}

impl Sums {
    pub(crate) fn add(&mut self, o: &Sums) {
        self.mlm += o.mlm;
        self.correct += o.correct;
        self.chosen += o.chosen;
        self.composition += o.composition;
        self.composition_rows += o.composition_rows;
        self.density += o.density;
        self.density_rows += o.density_rows;
        self.profile += o.profile;
        self.profile_rows += o.profile_rows;
        self.tokens += o.tokens;
    }
}

/// Step-wide counts that normalize every chunk's loss.
#[derive(Debug)]
pub(crate) struct Totals {
    pub(crate) chosen: u64,
    pub(crate) composition_rows: u64,
    pub(crate) density_rows: u64,
    pub(crate) profile_rows: u64,
}

impl Totals {
    pub(crate) fn of(batch: &StepBatch, facts: &[CorpusFacts], niche: &NicheConfig) -> Self {
        let chosen = batch.labels.iter().filter(|&&l| l != IGNORE).count() as u64;
        let composition_rows = if niche.composition_weight > 0.0 {
            batch.seqs.iter().filter(|s| s.composition.is_some() && facts[s.source].composition_width.is_some()).count()
                as u64
        } else {
            0
        };
        let density_rows = if niche.density_weight > 0.0 {
            batch
                .seqs
                .iter()
                .filter(|s| s.density.is_some_and(|d| d > 0.0) && facts[s.source].density_stats.is_some())
                .count() as u64
        } else {
            0
        };
        let profile_rows = if niche.profile_weight > 0.0 {
            batch
                .seqs
                .iter()
                .filter(|s| s.profile.as_ref().is_some_and(|p| Some(p.len()) == facts[s.source].profile_width))
                .count() as u64
        } else {
            0
        };
        Self { chosen, composition_rows, density_rows, profile_rows }
    }
}

/// The niche heads of [`PretrainModel`], a term of the pretraining objective.
#[derive(Debug)]
pub(crate) struct NicheHeads<'a> {
    pub(crate) facts: &'a [CorpusFacts],
    pub(crate) config: &'a NicheConfig,
}

impl Term for NicheHeads<'_> {
    fn add_terms(
        &self,
        model: &PretrainModel,
        pass: &ChunkPass<'_>,
        totals: &Totals,
        sums: &mut Sums,
        add: &mut dyn FnMut(Tensor<1>),
    ) {
        let b = pass.chunk.seqs.len();
        let niche = self.config;
        if !(model.composition.is_empty() && model.profile.is_empty()) {
            let pooled = model.encoder.pool(pass.tokens.clone(), pass.hidden.clone(), Pooling::PadExcluded); // [b, d]
            for (c, fact) in self.facts.iter().enumerate() {
                let rows: Vec<usize> = (0..b).filter(|&i| pass.chunk.seqs[i].source == c).collect();
                if niche.composition_weight > 0.0 && fact.composition_width.is_some() {
                    let (idx, target): (Vec<i64>, Vec<f32>) = rows
                        .iter()
                        .filter_map(|&i| pass.chunk.seqs[i].composition.as_ref().map(|t| (i as i64, t)))
                        .fold((Vec::new(), Vec::new()), |(mut idx, mut tg), (i, t)| {
                            idx.push(i);
                            tg.extend(t);
                            (idx, tg)
                        });
                    if !idx.is_empty() {
                        let (n, k) = (idx.len(), target.len() / idx.len());
                        let x = pooled
                            .clone()
                            .select(0, Tensor::<1, Int>::from_data(TensorData::new(idx, [n]), pass.device));
                        let logp = burn::tensor::activation::log_softmax(model.composition[c].forward(x), 1); // [n, k]
                        let t = Tensor::<2>::from_data(TensorData::new(target, [n, k]), pass.device);
                        let sum = (logp * t).sum().neg(); // cross-entropy against the proportions
                        sums.composition += sum.clone().into_scalar::<f32>() as f64;
                        sums.composition_rows += n as u64;
                        add(sum * (niche.composition_weight / totals.composition_rows.max(1) as f64));
                    }
                }
                if let (Some(head), Some(width)) = (model.profile.get(c), fact.profile_width) {
                    let (idx, target): (Vec<i64>, Vec<f32>) = rows
                        .iter()
                        .filter_map(|&i| {
                            pass.chunk.seqs[i].profile.as_ref().filter(|t| t.len() == width).map(|t| (i as i64, t))
                        })
                        .fold((Vec::new(), Vec::new()), |(mut idx, mut tg), (i, t)| {
                            idx.push(i);
                            tg.extend(t);
                            (idx, tg)
                        });
                    if !idx.is_empty() {
                        let n = idx.len();
                        let x = pooled
                            .clone()
                            .select(0, Tensor::<1, Int>::from_data(TensorData::new(idx, [n]), pass.device));
                        let t = Tensor::<2>::from_data(TensorData::new(target, [n, width]), pass.device);
                        // Squared error averaged over the profile's dimensions, summed over rows.
                        let sum = (head.forward(x) - t).square().sum() / width as f64;
                        sums.profile += sum.clone().into_scalar::<f32>() as f64;
                        sums.profile_rows += n as u64;
                        add(sum * (niche.profile_weight / totals.profile_rows.max(1) as f64));
                    }
                }
                if let (true, Some((mean, sd))) = (niche.density_weight > 0.0, fact.density_stats) {
                    let (idx, target): (Vec<i64>, Vec<f32>) = rows
                        .iter()
                        .filter_map(|&i| {
                            pass.chunk.seqs[i]
                                .density
                                .filter(|d| *d > 0.0)
                                .map(|d| (i as i64, ((f64::from(d).ln() - mean) / sd) as f32))
                        })
                        .unzip();
                    if !idx.is_empty() {
                        let n = idx.len();
                        let x = pooled
                            .clone()
                            .select(0, Tensor::<1, Int>::from_data(TensorData::new(idx, [n]), pass.device));
                        let pred = model.density[c].forward(x).reshape([n]);
                        let t = Tensor::<1>::from_data(TensorData::new(target, [n]), pass.device);
                        let sum = (pred - t).square().sum();
                        sums.density += sum.clone().into_scalar::<f32>() as f64;
                        sums.density_rows += n as u64;
                        add(sum * (niche.density_weight / totals.density_rows.max(1) as f64));
                    }
                }
            }
        }
    }

    fn weighted_mean(&self, s: &Sums) -> f64 {
        let n = self.config;
        let mut aux = 0.0;
        if s.composition_rows > 0 {
            aux += n.composition_weight * s.composition / s.composition_rows as f64;
        }
        if s.density_rows > 0 {
            aux += n.density_weight * s.density / s.density_rows as f64;
        }
        if s.profile_rows > 0 {
            aux += n.profile_weight * s.profile / s.profile_rows as f64;
        }
        aux
    }
}

pub(crate) fn density_stats(dir: &Path, m: &CorpusManifest) -> Result<Option<(f64, f64)>, TrainError> {
    let (mut n, mut sum, mut sq) = (0f64, 0f64, 0f64);
    for s in &m.shards {
        for r in read_shard_rows(&dir.join(&s.file)).map_err(crate::data::DataError::from)? {
            if let Some(d) = r.density.filter(|d| *d > 0.0) {
                let l = f64::from(d).ln();
                n += 1.0;
                sum += l;
                sq += l * l;
            }
        }
    }
    if n < 2.0 {
        return Ok(None);
    }
    let mean = sum / n;
    Ok(Some((mean, (sq / n - mean * mean).max(0.0).sqrt().max(1e-6))))
}
