//! The encoder: Nicheformer's forward pass (PyTorch `nn.TransformerEncoderLayer` semantics).

use burn::nn::transformer::{TransformerEncoder, TransformerEncoderInput, TransformerEncoderLayer};
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
use burn::prelude::*;

use crate::{EncoderConfig, N_CONTEXT, PAD};

/// How a cell embedding averages the last layer's outputs over gene positions (3..).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pooling {
    /// Ours (default): PAD positions are left out.
    #[default]
    PadExcluded,
    /// The reference's: PAD positions are averaged in too (a flaw for short spatial panels).
    Reference,
}

/// One encoder layer as burn's `TransformerEncoderLayer::forward` computes it (same parameters,
/// same post- or pre-LN order), but with the backend's fused scaled-dot-product attention
/// (`burn::tensor::module::attention`: tiled, online softmax on the CPU backend for long
/// sequences) instead of separate matmul / scale / mask / softmax / matmul passes that
/// materialize every attention weight. Masked keys get -inf (PyTorch's convention; burn's
/// layer uses -1e4); a cell always has unmasked context tokens, so no row is fully masked.
/// Not used when training with dropout (the fused kernel has no attention dropout); autodiff
/// backends differentiate through burn's decomposed fallback.
///
/// # Shapes
/// - x: `[batch, length, d_model]`, mask: `[batch, heads, length, length]` (true = masked)
/// - output: `[batch, length, d_model]`
fn layer_forward(layer: &TransformerEncoderLayer, x: Tensor<3>, mask: Tensor<4, Bool>) -> Tensor<3> {
    let attend = |input: Tensor<3>| -> Tensor<3> {
        let mha = &layer.mha;
        let [batch, length, d_model] = input.dims();
        let heads = |linear: &Linear, t: Tensor<3>| {
            linear.forward(t).reshape([batch, length, mha.n_heads, mha.d_k]).swap_dims(1, 2) // [batch, heads, length, d_k]
        };
        let (q, k, v) = (heads(&mha.query, input.clone()), heads(&mha.key, input.clone()), heads(&mha.value, input));
        let context = burn::tensor::module::attention(q, k, v, Some(mask.clone()), None, Default::default());
        mha.output.forward(context.swap_dims(1, 2).reshape([batch, length, d_model]))
    };
    if layer.norm_first {
        let x = x.clone() + attend(layer.norm_2.forward(x));
        x.clone() + layer.pwff.forward(layer.norm_1.forward(x))
    } else {
        let x = layer.norm_1.forward(x.clone() + attend(x));
        layer.norm_2.forward(x.clone() + layer.pwff.forward(x))
    }
}

/// Token embedding (padding row 1), learned positional embedding, encoder layers, MLM head.
/// Field names mirror the reference's state_dict, so importing weights is a table of renames.
#[derive(Module, Debug)]
pub struct Encoder {
    pub embeddings: Embedding,
    pub positional_embedding: Embedding,
    pub encoder: TransformerEncoder,
    pub classifier_head: Linear,
}

impl EncoderConfig {
    /// A randomly initialised encoder on `device`.
    pub fn init(&self, device: &Device) -> Encoder {
        Encoder {
            embeddings: EmbeddingConfig::new(self.embedding_rows, self.d_model).init(device),
            positional_embedding: EmbeddingConfig::new(self.context_length, self.d_model).init(device),
            encoder: self.transformer().init(device),
            classifier_head: LinearConfig::new(self.d_model, self.n_tokens).init(device),
        }
    }
}

impl Encoder {
    /// Last-layer outputs.
    ///
    /// # Shapes
    /// - tokens: `[batch, length]` (`length` <= the context length), PAD = 1
    /// - output: `[batch, length, d_model]`
    pub fn forward(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        let [batch, length] = tokens.dims();
        let pad = tokens.clone().equal_elem(i64::from(PAD)); // [batch, length]
        let x = self.embeddings.forward(tokens); // [batch, length, d_model]
        let pos = self.positional_embedding.weight.val().slice(s![0..length, ..]).unsqueeze::<3>(); // [1, length, d_model]
        let x = x + pos;
        if self.encoder.dropout > 0.0 && x.is_require_grad() {
            // Training with dropout: burn's layers drop attention weights, which the fused
            // kernel cannot (dropout does nothing outside training).
            return self.encoder.forward(TransformerEncoderInput::new(x).mask_pad(pad));
        }
        // PAD keys are masked for every query and head: [batch, heads, length, length], the
        // shape burn's attention documents. Materialized once here (repeat, not an expanded
        // view) so that a backend needing a contiguous mask does not copy it in every layer.
        let heads = self.encoder.n_heads;
        let mask = pad.reshape([batch, 1, 1, length]).repeat_dim(2, length).repeat_dim(1, heads);
        self.encoder.layers.iter().fold(x, |x, layer| layer_forward(layer, x, mask.clone()))
    }

    /// MLM logits at every position.
    ///
    /// # Shapes
    /// - hidden: `[batch, length, d_model]`
    /// - output: `[batch, length, n_tokens]`
    pub fn mlm_logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        self.classifier_head.forward(hidden)
    }

    /// Cell embeddings: the mean of `hidden` over gene positions (3..).
    ///
    /// # Shapes
    /// - tokens: `[batch, length]`, hidden: `[batch, length, d_model]`
    /// - output: `[batch, d_model]`
    pub fn pool(&self, tokens: Tensor<2, Int>, hidden: Tensor<3>, pooling: Pooling) -> Tensor<2> {
        let [batch, length, d] = hidden.dims();
        let genes = hidden.slice(s![.., N_CONTEXT..length, ..]); // [batch, genes, d]
        match pooling {
            Pooling::Reference => genes.mean_dim(1).reshape([batch, d]),
            Pooling::PadExcluded => {
                let keep = tokens.slice(s![.., N_CONTEXT..length]).not_equal_elem(i64::from(PAD)).float(); // [batch, genes]
                let count = keep.clone().sum_dim(1).clamp_min(1.0); // [batch, 1]
                let summed = (genes * keep.unsqueeze_dim::<3>(2)).sum_dim(1).reshape([batch, d]); // [batch, d]
                summed / count
            }
        }
    }

    /// Forward pass and pooling in one call.
    pub fn embed(&self, tokens: Tensor<2, Int>, pooling: Pooling) -> Tensor<2> {
        let hidden = self.forward(tokens.clone());
        self.pool(tokens, hidden, pooling)
    }
}
