//! The masked-token objective: cross-entropy on the chosen positions only, with the vocabulary
//! head applied only there (the head is the largest matrix of a small model: 20,340 x d).

use burn::nn::loss::CrossEntropyLossConfig;
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

/// One chunk's forward pass, shared by every term of the loss.
#[derive(Debug)]
pub(crate) struct ChunkPass<'a> {
    pub(crate) chunk: &'a crate::batch::Chunk,
    /// `[rows, length]` token ids (masked).
    pub(crate) tokens: Tensor<2, Int>,
    /// `[rows, length, d_model]`, the last layer's outputs.
    pub(crate) hidden: Tensor<3>,
    pub(crate) device: &'a Device,
}

/// A term of the pretraining loss over a chunk of a step's rows: it adds `sum over the chunk /
/// count over the whole step` (times its weight) through `add`, so the summed gradients are those
/// of the step's mean loss however the step is split, and records its sums for the metrics.
pub(crate) trait Objective {
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

impl Objective for MaskedTokens {
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
