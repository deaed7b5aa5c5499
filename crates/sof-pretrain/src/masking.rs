//! Masked-token corruption exactly as the reference: each eligible token is chosen with
//! probability 15% (Bernoulli); a chosen token becomes MASK with probability 80%, a random gene
//! token with 10%, and stays unchanged with 10%. The loss is computed on chosen positions only.
//!
//! Eligible: non-PAD gene tokens. Context tokens (the first 3 positions: species, assay,
//! modality) are never chosen by default — predicting them is not the task, and the model sees
//! them intact; `mask_context = true` chooses them too.
//!
//! Context dropout (ours, off by default): with probability `context_dropout` each sequence's
//! assay token, and independently its modality token, is hidden (MASK) for that step without
//! becoming a target, so the model also learns cells it is not told the technology of and can
//! embed any cell with the context hidden ([`sof_tokenize::Tokenizer::with_hidden_context`]).

use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::{Deserialize, Serialize};
use sof_tokenize::context::{MASK, N_CONTEXT, N_SPECIAL, PAD};

/// Label of a position that carries no loss (PyTorch's `ignore_index`).
pub const IGNORE: i64 = -100;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MaskingConfig {
    pub probability: f64,
    pub mask_fraction: f64,
    pub random_fraction: f64,
    pub mask_context: bool,
    /// Probability that a sequence's assay token, and independently its modality token, is
    /// hidden (MASK, no loss) for a step. 0 = the reference's behaviour.
    pub context_dropout: f64,
}

impl Default for MaskingConfig {
    fn default() -> Self {
        Self { probability: 0.15, mask_fraction: 0.8, random_fraction: 0.1, mask_context: false, context_dropout: 0.0 }
    }
}

/// Corrupts a batch of sequences (`batch x length`, row-major) in place and returns the labels
/// (the original token at chosen positions, [`IGNORE`] elsewhere). Random replacement tokens are
/// drawn uniformly from the gene tokens `30..n_tokens`. Deterministic for a given `rng` state.
pub fn mask_batch(
    tokens: &mut [i64],
    length: usize,
    n_tokens: usize,
    cfg: &MaskingConfig,
    rng: &mut Xoshiro256PlusPlus,
) -> Vec<i64> {
    let mut labels = vec![IGNORE; tokens.len()];
    for (k, (t, label)) in tokens.iter_mut().zip(labels.iter_mut()).enumerate() {
        let pos = k % length.max(1);
        // The draw only happens with dropout on, so runs without it keep the reference's stream.
        if (pos == 1 || pos == 2)
            && cfg.context_dropout > 0.0
            && *t != i64::from(PAD)
            && rng.random::<f64>() < cfg.context_dropout
        {
            *t = i64::from(MASK);
            continue;
        }
        let eligible = *t != i64::from(PAD) && (cfg.mask_context || pos >= N_CONTEXT);
        if !eligible || rng.random::<f64>() >= cfg.probability {
            continue;
        }
        *label = *t;
        let u = rng.random::<f64>();
        if u < cfg.mask_fraction {
            *t = i64::from(MASK);
        } else if u < cfg.mask_fraction + cfg.random_fraction {
            *t = rng.random_range(i64::from(N_SPECIAL)..n_tokens as i64);
        }
    }
    labels
}

/// A seeded generator for masking (one per data-loader worker and epoch, for reproducible runs).
pub fn rng(seed: u64) -> Xoshiro256PlusPlus {
    Xoshiro256PlusPlus::seed_from_u64(seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a large batch the statistics are the reference's: 15% chosen; of those 80% MASK,
    /// 10% random, 10% unchanged; PAD and context never chosen.
    #[test]
    fn masking_statistics() {
        let (batch, length, n_tokens) = (512, 400, 20_340);
        let mut tokens = Vec::with_capacity(batch * length);
        for b in 0..batch {
            let real = 100 + (b * 37) % 300; // varying lengths, PAD after
            for p in 0..length {
                tokens.push(match p {
                    0 => 6,
                    1 => 7,
                    2 => 4,
                    _ if p < real => 30 + ((b * 131 + p * 17) % (n_tokens - 30)) as i64,
                    _ => 1,
                });
            }
        }
        let original = tokens.clone();
        let labels = mask_batch(&mut tokens, length, n_tokens, &MaskingConfig::default(), &mut rng(3));
        let eligible = original.iter().enumerate().filter(|(k, t)| **t != 1 && k % length >= 3).count();
        let chosen: Vec<usize> = (0..labels.len()).filter(|&k| labels[k] != IGNORE).collect();
        let frac = chosen.len() as f64 / eligible as f64;
        assert!((frac - 0.15).abs() < 0.005, "chosen {frac}");
        let masked = chosen.iter().filter(|&&k| tokens[k] == 0).count() as f64 / chosen.len() as f64;
        let same = chosen.iter().filter(|&&k| tokens[k] == original[k]).count() as f64 / chosen.len() as f64;
        let random = 1.0 - masked - same;
        assert!((masked - 0.8).abs() < 0.01, "MASK {masked}");
        assert!((random - 0.1).abs() < 0.01, "random {random}");
        // "unchanged" includes random draws that hit the original token (about 1 in 20,000).
        assert!((same - 0.1).abs() < 0.01, "unchanged {same}");
        assert!(chosen.iter().all(|&k| labels[k] == original[k] && original[k] != 1 && k % length >= 3));
        assert!(tokens.iter().zip(&original).all(|(t, o)| *o != 1 || *t == 1), "PAD stays PAD");
        assert!(
            chosen
                .iter()
                .filter(|&&k| tokens[k] != 0 && tokens[k] != original[k])
                .all(|&k| (30..n_tokens as i64).contains(&tokens[k]))
        );
        let mut again = original.clone();
        assert_eq!(
            mask_batch(&mut again, length, n_tokens, &MaskingConfig::default(), &mut rng(3)),
            labels,
            "deterministic"
        );
        assert_eq!(again, tokens);
    }

    /// Context dropout hides the assay and modality tokens of about `p` of the sequences each,
    /// never the species, never as a target; the genes are masked as without it.
    #[test]
    fn context_dropout_hides_assay_and_modality() {
        let (batch, length, n_tokens) = (2_000, 40, 500);
        let original: Vec<i64> = (0..batch * length)
            .map(|k| match k % length {
                0 => 6,
                1 => 7,
                2 => 4,
                p => 30 + (p as i64 * 13) % 470,
            })
            .collect();
        let cfg = MaskingConfig { context_dropout: 0.3, ..MaskingConfig::default() };
        let mut tokens = original.clone();
        let labels = mask_batch(&mut tokens, length, n_tokens, &cfg, &mut rng(5));
        let hidden = |pos: usize| (0..batch).filter(|b| tokens[b * length + pos] == 0).count() as f64 / batch as f64;
        assert_eq!(hidden(0), 0.0, "species is never hidden");
        for pos in [1, 2] {
            assert!((hidden(pos) - 0.3).abs() < 0.03, "position {pos}: {}", hidden(pos));
            assert!((0..batch).all(|b| labels[b * length + pos] == IGNORE), "context is not a target");
            assert!((0..batch).all(|b| [0, original[b * length + pos]].contains(&tokens[b * length + pos])));
        }
        let both = (0..batch).filter(|b| tokens[b * length + 1] == 0 && tokens[b * length + 2] == 0).count();
        assert!((both as f64 / batch as f64 - 0.09).abs() < 0.03, "independent: {both}");
        let genes = batch * (length - 3);
        let chosen = labels.iter().filter(|&&l| l != IGNORE).count() as f64 / genes as f64;
        assert!((chosen - 0.15).abs() < 0.01, "genes chosen {chosen}");
        let all = MaskingConfig { context_dropout: 1.0, ..MaskingConfig::default() };
        let mut tokens = original.clone();
        mask_batch(&mut tokens, length, n_tokens, &all, &mut rng(5));
        assert!((0..batch).all(|b| tokens[b * length + 1] == 0 && tokens[b * length + 2] == 0));
    }
}
