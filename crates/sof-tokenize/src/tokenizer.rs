//! The tokenizer: per cell, on sparse rows only.

use serde::{Deserialize, Serialize};
use sof_io::genes::{AlignmentReport, Species};

use crate::context::{Modality, N_CONTEXT, N_SPECIAL, species_token};
use crate::means::TechMeans;

/// How mean vectors are interpreted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Ours: a NaN or negative mean marks a gene the technology does not measure; such genes are
    /// never tokens. Everything else as in `Nicheformer`.
    #[default]
    Fixed,
    /// The reference notebooks exactly: NaN -> 0, round half up to an integer, 0 -> 1; negative
    /// means stay (their genes sort last); off-panel genes that carry counts become tokens.
    Nicheformer,
}

/// Settings saved beside every corpus and model, so data is always tokenized the same way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TokenizerConfig {
    pub mode: Mode,
    /// Positions per cell including the 3 context tokens (the reference: 1,500).
    pub context_length: usize,
    /// Counts per cell after scaling (the reference: 10,000).
    pub target_sum: f64,
    /// Round means half up to integers before dividing (the reference's notebooks do).
    pub round_means: bool,
}

impl Default for TokenizerConfig {
    fn default() -> Self {
        Self { mode: Mode::Fixed, context_length: 1_500, target_sum: 10_000.0, round_means: true }
    }
}

/// Maps a dataset's gene columns into vocabulary indices (from a gene alignment).
#[derive(Debug, Clone)]
pub struct GeneMap {
    to_vocab: Vec<Option<u32>>,
    collisions: bool,
}

impl GeneMap {
    pub fn from_report(report: &AlignmentReport) -> Self {
        let to_vocab = report.indices();
        let collisions = !report.collisions().is_empty();
        Self { to_vocab, collisions }
    }

    pub fn new(to_vocab: Vec<Option<u32>>) -> Self {
        let mut seen: Vec<u32> = to_vocab.iter().flatten().copied().collect();
        seen.sort_unstable();
        let n = seen.len();
        seen.dedup();
        Self { collisions: seen.len() != n, to_vocab }
    }

    pub fn n_mapped(&self) -> usize {
        self.to_vocab.iter().flatten().count()
    }

    pub fn n_columns(&self) -> usize {
        self.to_vocab.len()
    }

    /// One cell's mapped entries as `(vocab index, value)`; genes that map onto the same
    /// vocabulary gene are summed. Unmapped genes are left out.
    pub fn vocab_row(&self, cols: &[u32], vals: &[f32], out: &mut Vec<(u32, f64)>) {
        out.clear();
        for (&c, &v) in cols.iter().zip(vals) {
            if v != 0.0
                && let Some(g) = self.to_vocab[c as usize]
            {
                out.push((g, f64::from(v)));
            }
        }
        if self.collisions {
            out.sort_unstable_by_key(|p| p.0);
            out.dedup_by(|b, a| {
                if a.0 == b.0 {
                    a.1 += b.1;
                    true
                } else {
                    false
                }
            });
        }
    }
}

/// A tokenized cell: gene tokens only (the context tokens are per dataset).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TokenizedCell {
    pub genes: Vec<u32>,
}

/// Tokenizes cells of one technology.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    config: TokenizerConfig,
    /// Divisor per vocabulary gene; NaN = the gene is never a token (fixed mode).
    divisor: Vec<f64>,
    context: [u32; N_CONTEXT],
}

impl Tokenizer {
    pub fn new(
        config: TokenizerConfig,
        means: &TechMeans,
        species: Species,
        assay_token: u32,
        modality: Modality,
    ) -> Self {
        let divisor = means
            .values
            .iter()
            .map(|&m| {
                let m = match config.mode {
                    Mode::Nicheformer if m.is_nan() => 0.0,
                    Mode::Fixed if m.is_nan() || m < 0.0 => return f64::NAN,
                    _ => m,
                };
                let m = if config.round_means { (m + 0.5).floor() } else { m };
                if m == 0.0 { 1.0 } else { m }
            })
            .collect();
        Self { config, divisor, context: [species_token(species), assay_token, modality.token()] }
    }

    pub fn config(&self) -> &TokenizerConfig {
        &self.config
    }

    /// `[species, assay, modality]`.
    pub fn context(&self) -> [u32; N_CONTEXT] {
        self.context
    }

    /// Gene tokens at most per cell.
    pub fn max_genes(&self) -> usize {
        self.config.context_length.saturating_sub(N_CONTEXT)
    }

    /// Ranks one cell given as mapped `(vocab index, count)` pairs; `scratch` is reused.
    pub fn tokenize_mapped(&self, row: &[(u32, f64)], scratch: &mut Vec<u128>) -> TokenizedCell {
        let total: f64 = row.iter().map(|p| p.1).sum();
        scratch.clear();
        if total <= 0.0 {
            return TokenizedCell::default();
        }
        // One scale factor per cell, then a division per gene: the reference's floating-point
        // order, which decides near-ties (ties in exact arithmetic can differ in the last bit).
        let scale = self.config.target_sum / total;
        for &(g, v) in row {
            let d = self.divisor[g as usize];
            if d.is_nan() {
                continue;
            }
            let x = v * scale / d;
            if x != 0.0 {
                // Sort key: descending value, then ascending vocabulary index, as one integer.
                scratch.push((u128::from(!order_bits(x)) << 32) | u128::from(g));
            }
        }
        let k = self.max_genes();
        if scratch.len() > k && k > 0 {
            scratch.select_nth_unstable(k - 1);
            scratch.truncate(k);
        }
        scratch.sort_unstable();
        scratch.truncate(k);
        TokenizedCell { genes: scratch.iter().map(|&key| (key as u32) + N_SPECIAL).collect() }
    }

    /// Tokenizes one cell of a dataset (its CSR row) through `map`.
    pub fn tokenize(
        &self,
        map: &GeneMap,
        cols: &[u32],
        vals: &[f32],
        row: &mut Vec<(u32, f64)>,
        scratch: &mut Vec<u128>,
    ) -> TokenizedCell {
        map.vocab_row(cols, vals, row);
        self.tokenize_mapped(row, scratch)
    }
}

/// Maps an `f64` to a `u64` whose unsigned order is the float's total order (`f64::total_cmp`).
fn order_bits(x: f64) -> u64 {
    let b = x.to_bits();
    if b >> 63 == 1 { !b } else { b | (1 << 63) }
}

#[cfg(test)]
mod tests {
    use super::order_bits;

    #[test]
    fn order_bits_preserve_float_order() {
        let xs = [-1e300, -2.5, -1e-300, -0.0, 0.0, 1e-300, 0.5, 1.0, 61.728395061728385, 61.72839506172839, 1e300];
        for w in xs.windows(2) {
            assert!(order_bits(w[0]) < order_bits(w[1]), "{} < {}", w[0], w[1]);
        }
    }
}
