//! Full fine-tuning: the pretrained encoder and a linear head on its pooled cell embedding,
//! trained together on a labelled task, the encoder with a lower learning rate than the head
//! (AdamW each; linear warmup over the first tenth of the steps, then linear decay to zero).
//!
//! Targets: classes (cross-entropy, optionally class-balanced), values (MSE on standardized
//! targets) or proportions (softmax output, cross-entropy against the target distribution).
//! Training is seeded (batch order, head initialization); the encoder starts from the weights
//! it is given.

use burn::module::{Module, ParamGroup};
use burn::nn::{Linear, LinearConfig};
use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLrScheduler;
use burn::optim::{AdamWConfig, ModuleOptimizer, MultiGradientsParams};
use burn::prelude::*;
use burn::tensor::activation::{log_softmax, softmax};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_xoshiro::Xoshiro256PlusPlus;
use sof_model::{Encoder, Pooling};
use sof_tasks::Target;
use sof_tasks::probe::{CellModel, CellPredictor};

use crate::config::{Decay, warmup_then_decay};
use crate::objective::{Objective, share_gradients};

/// Settings of [`finetune`].
#[derive(Debug, Clone)]
pub struct FinetuneConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub encoder_learning_rate: f64,
    pub head_learning_rate: f64,
    pub weight_decay: f32,
    pub seed: u64,
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        Self {
            epochs: 4,
            batch_size: 32,
            encoder_learning_rate: 5e-5,
            head_learning_rate: 1e-3,
            weight_decay: 0.01,
            seed: 0,
        }
    }
}

/// The encoder and a linear task head on its pooled cell embedding, trained together.
#[derive(Module, Debug)]
pub struct TaskModel {
    pub encoder: Encoder,
    pub head: Linear,
}

/// A fine-tuned encoder and head.
#[derive(Debug)]
pub struct FineTuned {
    pub encoder: Encoder,
    pub head: Linear,
    kind: Kind,
    /// Target standardization (values).
    mean: Vec<f32>,
    scale: Vec<f32>,
    /// Mean training loss of each epoch.
    pub epoch_losses: Vec<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Classes,
    Values,
    Proportions,
}

/// Token ids `[batch, longest]`, PAD-filled.
fn batch_tokens(seqs: &[Vec<i64>], rows: &[usize], device: &Device) -> Tensor<2, Int> {
    let len = rows.iter().map(|&i| seqs[i].len()).max().unwrap_or(4).max(4);
    let flat = sof_tokenize::pad_rows(rows.iter().map(|&i| seqs[i].as_slice()), len);
    Tensor::from_data(TensorData::new(flat, [rows.len(), len]), device)
}

/// A fine-tuning task as an [`Objective`] of a [`TaskModel`]: cross-entropy against the class
/// (class-weighted) or against the proportions, or squared error on standardized values, from
/// the head on the pooled embedding. A chunk is a list of cell indices into `seqs`.
struct TaskObjective<'a> {
    kind: Kind,
    seqs: &'a [Vec<i64>],
    /// Classes: the class of every cell; `rows`: per-cell targets, `width` each (standardized
    /// values, proportions).
    classes: Option<&'a [usize]>,
    rows: &'a [f32],
    class_weights: &'a [f32],
    width: usize,
    /// Cells in the whole step.
    step_rows: usize,
}

impl Objective<TaskModel> for TaskObjective<'_> {
    type Chunk = Vec<usize>;
    /// Loss summed over the chunk's cells, and their number.
    type Sums = (f64, usize);

    fn chunk_loss(&self, model: &TaskModel, chunk: &Vec<usize>, device: &Device) -> (Option<Tensor<1>>, (f64, usize)) {
        let (n, width) = (chunk.len(), self.width);
        if n == 0 {
            return (None, (0.0, 0));
        }
        let pooled = model.encoder.embed(batch_tokens(self.seqs, chunk, device), Pooling::PadExcluded); // [n, d]
        let out = model.head.forward(pooled); // [n, width]
        let targets = |t: Vec<f32>| Tensor::<2>::from_data(TensorData::new(t, [n, width]), device);
        let per_cell = |i: usize| self.rows[i * width..(i + 1) * width].iter().copied();
        let loss = match (self.kind, self.classes) {
            (Kind::Classes, Some(y)) => {
                let w = self.class_weights;
                let onehot = chunk.iter().flat_map(|&i| (0..width).map(move |c| if c == y[i] { w[c] } else { 0.0 }));
                (log_softmax(out, 1) * targets(onehot.collect())).sum().neg() / self.step_rows as f64
            }
            (Kind::Values, _) => {
                let t = targets(chunk.iter().flat_map(|&i| per_cell(i)).collect());
                (out - t).square().sum() / (self.step_rows * width) as f64
            }
            _ => {
                let t = targets(chunk.iter().flat_map(|&i| per_cell(i)).collect());
                (log_softmax(out, 1) * t).sum().neg() / self.step_rows as f64
            }
        };
        let sum = loss.clone().into_scalar::<f32>() as f64 * self.step_rows as f64;
        (Some(loss), (sum, n))
    }

    fn add_sums(total: &mut (f64, usize), part: &(f64, usize)) {
        total.0 += part.0;
        total.1 += part.1;
    }
}

/// Fine-tunes `encoder` (moved onto `device`, which must track gradients, e.g.
/// `Device::flex().autodiff()`) with a new head on the cells `train` of `seqs` (token ids with
/// the context tokens first, as `sof embed` builds them); `target` is indexed like `seqs`.
/// `on_step(step, total, loss)` reports progress.
///
/// Each step is one batch, trained through the same [`Objective`] seam and [`share_gradients`]
/// as pretraining, with one AdamW whose learning rate is lower for the encoder than for the head
/// (two parameter groups); both follow a linear warmup over the first tenth of the steps, then a
/// linear decay to zero.
pub fn finetune(
    encoder: Encoder,
    seqs: &[Vec<i64>],
    train: &[usize],
    target: &Target,
    cfg: &FinetuneConfig,
    device: &Device,
    on_step: &mut dyn FnMut(usize, usize, f64),
) -> FineTuned {
    let width = target.width();
    // Values and proportions as f32 rows, row-major.
    let flat = |y: &ndarray::Array2<f64>| -> Vec<f32> { y.iter().map(|&v| v as f32).collect() };
    let d = encoder.embeddings.weight.dims()[1];
    let encoder = encoder.fork(device);
    // The head's initial weights from the seed (burn's generator is process-wide).
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(cfg.seed ^ 0xF1AE);
    let bound = (1.0 / d as f64).sqrt();
    let w: Vec<f32> = (0..d * width).map(|_| rand::Rng::random_range(&mut rng, -bound..bound) as f32).collect();
    let mut head = LinearConfig::new(d, width).init(device);
    head.weight = burn::module::Param::from_tensor(Tensor::<2>::from_data(TensorData::new(w, [d, width]), device));
    head.bias = Some(burn::module::Param::from_tensor(Tensor::<1>::zeros([width], device)));

    // Per-cell targets (standardized values), weights.
    let (kind, rows, mean, scale, class_w): (Kind, Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) = match target {
        Target::Classes { y, n_classes, class_balanced } => {
            let mut counts = vec![0usize; *n_classes];
            train.iter().for_each(|&i| counts[y[i]] += 1);
            let w = counts
                .iter()
                .map(|&c| if *class_balanced && c > 0 { train.len() as f32 / (*n_classes * c) as f32 } else { 1.0 })
                .collect();
            (Kind::Classes, Vec::new(), Vec::new(), Vec::new(), w)
        }
        Target::Values(y) => {
            let (values, width) = (&flat(y), &width);
            let (mut mean, mut scale) = (vec![0f32; *width], vec![0f32; *width]);
            for c in 0..*width {
                let col: Vec<f64> = train.iter().map(|&i| f64::from(values[i * width + c])).collect();
                let m = col.iter().sum::<f64>() / col.len().max(1) as f64;
                let v = col.iter().map(|x| (x - m).powi(2)).sum::<f64>() / col.len().max(1) as f64;
                mean[c] = m as f32;
                scale[c] = if v.sqrt() > 1e-12 { v.sqrt() as f32 } else { 1.0 };
            }
            let rows = values.chunks(*width).flat_map(|r| r.iter().enumerate().map(|(c, v)| (v - mean[c]) / scale[c]));
            (Kind::Values, rows.collect(), mean, scale, Vec::new())
        }
        Target::Proportions(y) => (Kind::Proportions, flat(y), Vec::new(), Vec::new(), Vec::new()),
    };
    let train: Vec<usize> = match kind {
        Kind::Proportions => {
            train.iter().copied().filter(|&i| rows[i * width..(i + 1) * width].iter().sum::<f32>() > 0.0).collect()
        }
        _ => train.to_vec(),
    };
    let classes = match target {
        Target::Classes { y, .. } => Some(y.as_slice()),
        _ => None,
    };
    let head_group = ParamGroup::ids_from_module(head.clone());
    let mut model = TaskModel { encoder, head };
    let mut optimizer: ModuleOptimizer = AdamWConfig::new()
        .with_weight_decay(cfg.weight_decay)
        .with_grad_clipping(Some(burn::optim::grad_clipping::GradientClippingConfig::Norm(1.0)))
        .init();
    let batch = cfg.batch_size.max(1);
    let per_epoch = train.len().div_ceil(batch);
    let total = per_epoch * cfg.epochs;
    let warmup = (total / 10).max(1);
    let mut order = train.clone();
    let mut step = 0;
    let mut epoch_losses = Vec::new();
    for _ in 0..cfg.epochs {
        order.shuffle(&mut rng);
        let (mut sum, mut seen) = (0.0, 0usize);
        for chunk in order.chunks(batch) {
            let objective = TaskObjective {
                kind,
                seqs,
                classes,
                rows: &rows,
                class_weights: &class_w,
                width,
                step_rows: chunk.len(),
            };
            let mut grads = MultiGradientsParams::default();
            for (g, (s, n), dev) in share_gradients(&model, &objective, &[(device.clone(), vec![chunk.to_vec()])]) {
                sum += s;
                seen += n;
                grads.grads.push((g, dev));
            }
            let lr_at = |peak: f64| warmup_then_decay(step as u64, total as u64, peak, warmup as u64, Decay::Linear);
            let lr = ModuleLrScheduler::new(lr_at(cfg.encoder_learning_rate))
                .with_group(head_group.clone(), lr_at(cfg.head_learning_rate))
                .step();
            model = optimizer.step_multi(lr, model, grads);
            step += 1;
            on_step(step, total, sum / seen.max(1) as f64);
        }
        epoch_losses.push(sum / train.len().max(1) as f64);
    }
    FineTuned { encoder: model.encoder, head: model.head, kind, mean, scale, epoch_losses }
}

impl FineTuned {
    /// Predictions for the cells `rows` of `seqs`: class probabilities, values or proportions,
    /// `width` per cell, row-major.
    pub fn predict(&self, seqs: &[Vec<i64>], rows: &[usize], batch_size: usize) -> Vec<f32> {
        let encoder = self.encoder.valid();
        let head = self.head.valid();
        let device = encoder.embeddings.weight.device();
        // Sorted by length so short cells are not padded to long ones.
        let mut order: Vec<usize> = (0..rows.len()).collect();
        order.sort_by_key(|&k| seqs[rows[k]].len());
        let width = self.head.weight.dims()[1];
        let mut out = vec![0f32; rows.len() * width];
        for chunk in order.chunks(batch_size.max(1)) {
            let cells: Vec<usize> = chunk.iter().map(|&k| rows[k]).collect();
            let z = head.forward(encoder.embed(batch_tokens(seqs, &cells, &device), Pooling::PadExcluded));
            let z = match self.kind {
                Kind::Values => z,
                _ => softmax(z, 1),
            };
            let v = z.into_data().try_to_vec::<f32>().expect("f32 output");
            for (&k, r) in chunk.iter().zip(v.chunks_exact(width)) {
                for (c, &x) in r.iter().enumerate() {
                    out[k * width + c] = if self.kind == Kind::Values { x * self.scale[c] + self.mean[c] } else { x };
                }
            }
        }
        out
    }
}

/// Fine-tuning as a [`CellModel`] for probes: on each fold, the encoder (a fresh copy) and a new
/// head are trained on the fold's training cells and predict its test cells.
#[derive(Debug)]
pub struct FineTuneModel<'a> {
    pub name: String,
    pub encoder: Encoder,
    /// Token ids of the probe's cells (context tokens first), indexed like its cells.
    pub seqs: &'a [Vec<i64>],
    /// Settings; the seed comes from the probe.
    pub config: FinetuneConfig,
    /// An autodiff device.
    pub device: Device,
}

struct FineTunedCells<'a> {
    model: FineTuned,
    seqs: &'a [Vec<i64>],
    width: usize,
}

impl CellModel for FineTuneModel<'_> {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn fit(
        &self,
        train: &[usize],
        target: &Target,
        seed: u64,
    ) -> Result<Box<dyn CellPredictor + '_>, sof_tasks::TaskError> {
        // `target` holds the training cells in `train` order: train on those sequences.
        let seqs: Vec<Vec<i64>> = train.iter().map(|&i| self.seqs[i].clone()).collect();
        let rows: Vec<usize> = (0..train.len()).collect();
        let cfg = FinetuneConfig { seed, ..self.config.clone() };
        let started = std::time::Instant::now();
        let model =
            finetune(self.encoder.clone(), &seqs, &rows, target, &cfg, &self.device, &mut |step, total, loss| {
                if step % 20 == 0 || step == total {
                    tracing::info!(step, total, loss, "fine-tuning");
                }
            });
        tracing::info!(seconds = started.elapsed().as_secs_f64(), losses = ?model.epoch_losses, "fine-tuned");
        Ok(Box::new(FineTunedCells { model, seqs: self.seqs, width: target.width() }))
    }
}

impl CellPredictor for FineTunedCells<'_> {
    fn predict(&self, rows: &[usize]) -> Result<ndarray::Array2<f64>, sof_tasks::TaskError> {
        let out = self.model.predict(self.seqs, rows, 64);
        ndarray::Array2::from_shape_vec((rows.len(), self.width), out.into_iter().map(f64::from).collect())
            .map_err(|e| sof_tasks::TaskError::Invalid(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sof_model::EncoderConfig;

    /// Two classes told apart only by which gene token comes first: fine-tuning a random tiny
    /// encoder learns them; the loss falls and the held-out cells are classified.
    #[test]
    fn finetuning_learns_a_token_level_rule() {
        let device = Device::flex().autodiff();
        let cfg = EncoderConfig::tiny(200);
        let encoder = cfg.init(&device).map(&mut crate::init::SeededInit::new(7));
        let n = 160;
        let seqs: Vec<Vec<i64>> = (0..n)
            .map(|i| {
                let first = if i % 2 == 0 { 40 } else { 41 };
                let mut s = vec![5, 10, 15, first];
                s.extend((0..(3 + i % 5)).map(|k| 50 + ((i * 7 + k * 3) % 20) as i64));
                s
            })
            .collect();
        let y: Vec<usize> = (0..n).map(|i| i % 2).collect();
        let train: Vec<usize> = (0..120).collect();
        let test: Vec<usize> = (120..n).collect();
        let targets = Target::Classes { y: y.clone(), n_classes: 2, class_balanced: false };
        let fcfg =
            FinetuneConfig { epochs: 15, encoder_learning_rate: 2e-3, head_learning_rate: 1e-2, ..Default::default() };
        let mut steps = 0;
        let ft = finetune(encoder, &seqs, &train, &targets, &fcfg, &device, &mut |s, _, _| steps = s);
        assert_eq!(steps, 15 * 120usize.div_ceil(32));
        let losses = &ft.epoch_losses;
        assert!(losses.last().unwrap() < &(losses[0] * 0.5), "losses {losses:?}");
        let p = ft.predict(&seqs, &test, 16);
        let correct = test.iter().enumerate().filter(|&(k, &i)| (p[k * 2 + 1] > p[k * 2]) == (y[i] == 1)).count();
        assert!(correct as f64 / test.len() as f64 > 0.9, "{correct}/{}", test.len());
        assert!(p.chunks(2).all(|r| ((r[0] + r[1]) - 1.0).abs() < 1e-5));
    }

    #[test]
    fn values_are_predicted_in_their_own_units() {
        let device = Device::flex().autodiff();
        let encoder = EncoderConfig::tiny(200).init(&device).map(&mut crate::init::SeededInit::new(8));
        let n = 96;
        let seqs: Vec<Vec<i64>> = (0..n).map(|i| vec![5, 10, 15, 40 + (i % 4) as i64, 60]).collect();
        let values: Vec<f32> = (0..n).map(|i| 1000.0 + 100.0 * (i % 4) as f32).collect();
        let targets = Target::Values(ndarray::Array2::from_shape_fn((n, 1), |(i, _)| f64::from(values[i])));
        let train: Vec<usize> = (0..n).collect();
        let fcfg =
            FinetuneConfig { epochs: 15, encoder_learning_rate: 1e-3, head_learning_rate: 1e-2, ..Default::default() };
        let ft = finetune(encoder, &seqs, &train, &targets, &fcfg, &device, &mut |_, _, _| {});
        let p = ft.predict(&seqs, &train, 32);
        let mae = p.iter().zip(&values).map(|(a, b)| (a - b).abs()).sum::<f32>() / n as f32;
        assert!(mae < 30.0, "mean absolute error {mae} (targets 1000..1300)");
    }

    /// The encoder and the head are one model with two learning-rate groups: an encoder rate of
    /// zero leaves every encoder weight as it was while the head learns.
    #[test]
    fn the_encoder_and_head_learning_rates_are_separate_groups() {
        let device = Device::flex().autodiff();
        let encoder = EncoderConfig::tiny(200).init(&device).map(&mut crate::init::SeededInit::new(9));
        let before = encoder.embeddings.weight.val().into_data().try_to_vec::<f32>().unwrap();
        let n = 64;
        let seqs: Vec<Vec<i64>> = (0..n).map(|i| vec![5, 10, 15, 40 + (i % 2) as i64, 60]).collect();
        let targets = Target::Classes { y: (0..n).map(|i| i % 2).collect(), n_classes: 2, class_balanced: false };
        let fcfg =
            FinetuneConfig { epochs: 3, encoder_learning_rate: 0.0, head_learning_rate: 1e-2, ..Default::default() };
        let train: Vec<usize> = (0..n).collect();
        let ft = finetune(encoder, &seqs, &train, &targets, &fcfg, &device, &mut |_, _, _| {});
        let after = ft.encoder.embeddings.weight.val().into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(before, after, "the encoder moved with a learning rate of 0");
        let losses = &ft.epoch_losses;
        assert!(losses[2] < losses[0], "the head did not learn: {losses:?}");
    }
}
