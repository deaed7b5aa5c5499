//! Model configuration and presets.

use burn::nn::transformer::TransformerEncoderConfig;
use burn::prelude::*;

/// Sizes and options of the encoder. Saved as JSON beside every checkpoint.
#[derive(Config, Debug, PartialEq)]
pub struct EncoderConfig {
    /// Rows of the token embedding table (the reference has 5 more than `n_tokens`).
    pub embedding_rows: usize,
    /// Classes of the MLM head: genes + 30 special ids.
    pub n_tokens: usize,
    /// Positions (learned positional embedding rows).
    pub context_length: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub d_ff: usize,
    pub n_layers: usize,
    #[config(default = 1e-12)]
    pub layer_norm_eps: f64,
    #[config(default = 0.0)]
    pub dropout: f64,
    /// Pre-LayerNorm layers (ours, for new models); the reference is post-LN.
    #[config(default = false)]
    pub norm_first: bool,
}

impl EncoderConfig {
    /// The reference model: 12 layers, 512 wide, 16 heads, FFN 1,024, context 1,500,
    /// 20,310 genes + 30 special ids.
    pub fn nicheformer() -> Self {
        Self::new(20_345, 20_340, 1_500, 512, 16, 1_024, 12)
    }

    /// For tests: the fixture's size.
    pub fn tiny(n_tokens: usize) -> Self {
        Self::new(n_tokens + 5, n_tokens, 64, 32, 4, 64, 2)
    }

    /// CPU pretraining in minutes.
    pub fn small(n_tokens: usize) -> Self {
        Self::new(n_tokens + 5, n_tokens, 512, 128, 4, 256, 4)
    }

    /// A mid size.
    pub fn base(n_tokens: usize) -> Self {
        Self::new(n_tokens + 5, n_tokens, 1_500, 256, 8, 512, 6)
    }

    /// A preset by name (`tiny`, `small`, `base`, `nicheformer`).
    pub fn preset(name: &str, n_tokens: usize) -> Option<Self> {
        Some(match name {
            "tiny" => Self::tiny(n_tokens),
            "small" => Self::small(n_tokens),
            "base" => Self::base(n_tokens),
            "nicheformer" => Self::nicheformer(),
            _ => return None,
        })
    }

    pub(crate) fn transformer(&self) -> TransformerEncoderConfig {
        TransformerEncoderConfig::new(self.d_model, self.d_ff, self.n_heads, self.n_layers)
            .with_dropout(self.dropout)
            .with_norm_first(self.norm_first)
            .with_layer_norm_eps(self.layer_norm_eps)
            .with_activation(burn::nn::activation::ActivationConfig::Relu)
    }

    /// Parameters of the forward pass (the reference also stores unused heads).
    pub fn n_parameters(&self) -> usize {
        let d = self.d_model;
        let layer = 4 * d * d + 4 * d + 2 * d * self.d_ff + self.d_ff + d + 4 * d;
        self.embedding_rows * d + self.context_length * d + self.n_layers * layer + d * self.n_tokens + self.n_tokens
    }
}
