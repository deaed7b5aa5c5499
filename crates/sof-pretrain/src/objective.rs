//! The training objectives and the step they share.
//!
//! [`Objective`] is the seam every training loss goes through: pretraining (masked tokens plus
//! the niche heads, [`crate::trainer`]) and each fine-tuning task ([`crate::finetune`]) are
//! objectives, and [`share_gradients`] turns one of them into a step's gradients, split into
//! chunks and spread over data-parallel replicas, for both loops.
//!
//! The masked-token loss is cross-entropy on the chosen positions only, with the vocabulary head
//! applied only there (the head is the largest matrix of a small model: 20,340 x d).

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::GradientsParams;
use burn::prelude::*;
use sof_model::Encoder;

use crate::masking::IGNORE;

/// Loss and masked-token accuracy inputs for one batch.
#[derive(Debug)]
pub struct MlmOutput {
    /// Mean cross-entropy over chosen positions.
    pub loss: Tensor<1>,
    /// Predicted token at each chosen position, and the truth.
    pub predicted: Tensor<1, Int>,
    pub targets: Tensor<1, Int>,
}

/// `tokens` (already corrupted) and `labels` are `batch x length`, row-major, from
/// [`crate::masking::mask_batch`]. Returns `None` when no position was chosen.
pub fn mlm_loss(model: &Encoder, tokens: &[i64], labels: &[i64], length: usize, device: &Device) -> Option<MlmOutput> {
    let batch = tokens.len() / length;
    let tokens = Tensor::<2, Int>::from_data(TensorData::new(tokens.to_vec(), [batch, length]), device);
    masked_loss(model, model.forward(tokens), labels, device)
}

/// The loss from the last layer's outputs (so callers can pool the same pass for other heads).
///
/// # Shapes
/// - hidden: `[batch, length, d_model]` -> selected `[chosen, d_model]` -> logits `[chosen, n_tokens]`
pub fn masked_loss(model: &Encoder, hidden: Tensor<3>, labels: &[i64], device: &Device) -> Option<MlmOutput> {
    let chosen: Vec<i64> = labels.iter().enumerate().filter(|(_, l)| **l != IGNORE).map(|(k, _)| k as i64).collect();
    if chosen.is_empty() {
        return None;
    }
    let targets: Vec<i64> = labels.iter().copied().filter(|&l| l != IGNORE).collect();
    let n = chosen.len();
    let [batch, length, d] = hidden.dims();
    let flat = hidden.reshape([batch * length, d]); // [batch * length, d]
    let idx = Tensor::<1, Int>::from_data(TensorData::new(chosen, [n]), device);
    let logits = model.classifier_head.forward(flat.select(0, idx)); // [chosen, n_tokens]
    let targets = Tensor::<1, Int>::from_data(TensorData::new(targets, [n]), device);
    let loss = CrossEntropyLossConfig::new().init(device).forward(logits.clone(), targets.clone());
    Some(MlmOutput { loss, predicted: logits.argmax(1).reshape([n]), targets })
}

/// A training loss, computed over the chunks of an optimizer step.
///
/// A step's rows are split into chunks (one forward pass each: length groups, micro-batches,
/// replicas). Each chunk contributes its share of the step's mean loss, `sum over its rows /
/// count over the whole step` for every term, so the summed gradients of the chunks are those of
/// the step's mean loss however the step is split. `Sums` are what the objective counts over a
/// chunk (loss sums, rows, hits), added up over a step for the metrics.
///
/// # Example
/// A least-squares objective for a linear layer, one step's gradients from two chunks:
/// ```
/// use burn::nn::{Linear, LinearConfig};
/// use burn::prelude::*;
/// use sof_pretrain::objective::{Objective, share_gradients};
///
/// /// Rows `(x, y)`; the step has `step_rows` of them in all.
/// struct LeastSquares { step_rows: usize }
///
/// impl Objective<Linear> for LeastSquares {
///     type Chunk = Vec<([f32; 2], f32)>;
///     type Sums = (f64, usize);
///     fn chunk_loss(&self, model: &Linear, chunk: &Self::Chunk, device: &Device) -> (Option<Tensor<1>>, Self::Sums) {
///         let n = chunk.len();
///         let x: Vec<f32> = chunk.iter().flat_map(|(x, _)| *x).collect();
///         let y: Vec<f32> = chunk.iter().map(|(_, y)| *y).collect();
///         let x = Tensor::<2>::from_data(TensorData::new(x, [n, 2]), device);
///         let y = Tensor::<2>::from_data(TensorData::new(y, [n, 1]), device);
///         let sum = (model.forward(x) - y).square().sum();
///         let value = sum.clone().into_scalar::<f32>() as f64;
///         (Some(sum / self.step_rows as f64), (value, n))
///     }
///     fn add_sums(total: &mut Self::Sums, part: &Self::Sums) {
///         total.0 += part.0;
///         total.1 += part.1;
///     }
/// }
///
/// let device = Device::flex().autodiff();
/// let model: Linear = LinearConfig::new(2, 1).init(&device);
/// let chunks = vec![vec![([1.0, 0.0], 1.0)], vec![([0.0, 1.0], 2.0), ([1.0, 1.0], 3.0)]];
/// let parts = share_gradients(&model, &LeastSquares { step_rows: 3 }, &[(device.clone(), chunks)]);
/// assert_eq!(parts.len(), 2); // one set of gradients per chunk
/// let mut sums = (0.0, 0);
/// parts.iter().for_each(|(_, s, _)| LeastSquares::add_sums(&mut sums, s));
/// assert_eq!(sums.1, 3);
/// ```
pub trait Objective<M: Module>: Sync {
    /// The rows of a step that one forward pass sees.
    type Chunk: Sync;
    /// What the objective counts over a chunk.
    type Sums: Default + Send;

    /// The chunk's share of the step's mean loss (`None` when no term has a row in it), and its
    /// sums.
    fn chunk_loss(&self, model: &M, chunk: &Self::Chunk, device: &Device) -> (Option<Tensor<1>>, Self::Sums);

    /// Adds `part` into `total`.
    fn add_sums(total: &mut Self::Sums, part: &Self::Sums);
}

/// The gradients of one round of a step, one entry per chunk, in order: every `(device, chunks)`
/// share is a data-parallel replica on its own thread, with a copy of `model` forked onto its
/// device (a single share runs on the calling thread, on `model` itself). Feed the gradients of
/// every round of the step, as [`burn::optim::MultiGradientsParams`], to one optimizer step.
pub fn share_gradients<M, O>(
    model: &M,
    objective: &O,
    shares: &[(Device, Vec<O::Chunk>)],
) -> Vec<(GradientsParams, O::Sums, Device)>
where
    M: Module,
    O: Objective<M>,
    O::Chunk: Sync,
{
    let run = |replica: M, chunks: &[O::Chunk], device: &Device| {
        chunks
            .iter()
            .map(|chunk| {
                let (loss, sums) = objective.chunk_loss(&replica, chunk, device);
                let grads = match loss {
                    Some(loss) => GradientsParams::from_grads(loss.backward(), &replica),
                    None => GradientsParams::new(),
                };
                (grads, sums, device.clone())
            })
            .collect::<Vec<_>>()
    };
    if let [(device, chunks)] = shares {
        return run(model.clone(), chunks, device);
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = shares
            .iter()
            .map(|(device, chunks)| {
                let replica = model.clone().fork(device);
                let run = &run;
                scope.spawn(move || run(replica, chunks, device))
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("replica thread")).collect()
    })
}

/// One chunk's forward pass, shared by every term of the pretraining loss.
#[derive(Debug)]
pub(crate) struct ChunkPass<'a> {
    pub(crate) chunk: &'a crate::batch::Chunk,
    /// `[rows, length]` token ids (masked).
    pub(crate) tokens: Tensor<2, Int>,
    /// `[rows, length, d_model]`, the last layer's outputs.
    pub(crate) hidden: Tensor<3>,
    pub(crate) device: &'a Device,
}

/// A term of the pretraining loss over a chunk: it adds `sum over the chunk / count over the
/// whole step` (times its weight) through `add`, and records its sums for the metrics.
pub(crate) trait Term {
    fn add_terms(
        &self,
        model: &crate::trainer::PretrainModel,
        pass: &ChunkPass<'_>,
        totals: &crate::niche::Totals,
        sums: &mut crate::niche::Sums,
        add: &mut dyn FnMut(Tensor<1>),
    );

    /// The weighted mean loss of this term over `sums` (0 when it has none), for the metrics.
    fn weighted_mean(&self, _sums: &crate::niche::Sums) -> f64 {
        0.0
    }
}

/// Masked-token prediction: cross-entropy at the chosen positions.
#[derive(Debug)]
pub(crate) struct MaskedTokens;

impl Term for MaskedTokens {
    fn add_terms(
        &self,
        model: &crate::trainer::PretrainModel,
        pass: &ChunkPass<'_>,
        totals: &crate::niche::Totals,
        sums: &mut crate::niche::Sums,
        add: &mut dyn FnMut(Tensor<1>),
    ) {
        if let Some(out) = masked_loss(&model.encoder, pass.hidden.clone(), &pass.chunk.labels, pass.device) {
            let n = out.targets.dims()[0] as u64;
            sums.chosen = n;
            sums.correct = out.predicted.equal(out.targets).int().sum().into_scalar::<i64>() as u64;
            sums.mlm = out.loss.clone().into_scalar::<f32>() as f64 * n as f64;
            add(out.loss * (n as f64 / totals.chosen.max(1) as f64));
        }
    }
}

/// The pretraining objective of one step: masked tokens, then the niche heads, over the step's
/// `totals`.
#[derive(Debug)]
pub(crate) struct Pretraining<'a> {
    pub(crate) niche: crate::niche::NicheHeads<'a>,
    pub(crate) totals: crate::niche::Totals,
}

impl Objective<crate::trainer::PretrainModel> for Pretraining<'_> {
    type Chunk = crate::batch::Chunk;
    type Sums = crate::niche::Sums;

    fn chunk_loss(
        &self,
        model: &crate::trainer::PretrainModel,
        chunk: &crate::batch::Chunk,
        device: &Device,
    ) -> (Option<Tensor<1>>, crate::niche::Sums) {
        let pad = i64::from(sof_tokenize::context::PAD);
        let mut sums = crate::niche::Sums {
            tokens: chunk.tokens.iter().filter(|&&t| t != pad).count() as u64,
            ..Default::default()
        };
        if chunk.length == 0 {
            return (None, sums);
        }
        let b = chunk.seqs.len();
        let tokens = Tensor::<2, Int>::from_data(TensorData::new(chunk.tokens.clone(), [b, chunk.length]), device);
        let hidden = model.encoder.forward(tokens.clone());
        let pass = ChunkPass { chunk, tokens, hidden, device };
        let mut loss: Option<Tensor<1>> = None;
        let mut add = |t: Tensor<1>| {
            loss = Some(match loss.take() {
                Some(l) => l + t,
                None => t,
            })
        };
        // The terms in a fixed order (the summed loss, hence the run, is bit-reproducible).
        for term in [&MaskedTokens as &dyn Term, &self.niche] {
            term.add_terms(model, &pass, &self.totals, &mut sums, &mut add);
        }
        (loss, sums)
    }

    fn add_sums(total: &mut crate::niche::Sums, part: &crate::niche::Sums) {
        total.add(part);
    }
}
