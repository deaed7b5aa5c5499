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

    /// Ranks one cell given as mapped `(vocab index, count)` pairs (each vocabulary gene at most
    /// once).
    pub fn tokenize_mapped(&self, row: &[(u32, f64)], scratch: &mut Scratch) -> TokenizedCell {
        self.rank(row.iter().copied(), scratch)
    }

    /// Tokenizes one cell of a dataset (its CSR row) through `map`; `scratch` is reused from
    /// cell to cell.
    pub fn tokenize(&self, map: &GeneMap, cols: &[u32], vals: &[f32], scratch: &mut Scratch) -> TokenizedCell {
        if map.collisions {
            // Several columns map onto one vocabulary gene: sum them first.
            let mut row = std::mem::take(&mut scratch.row);
            map.vocab_row(cols, vals, &mut row);
            let cell = self.tokenize_mapped(&row, scratch);
            scratch.row = row;
            return cell;
        }
        // Straight from the CSR row, in its order: the same entries `vocab_row` would list.
        let entries = cols
            .iter()
            .zip(vals)
            .filter(|&(_, &v)| v != 0.0)
            .filter_map(|(&c, &v)| Some((map.to_vocab[c as usize]?, f64::from(v))));
        self.rank(entries, scratch)
    }

    fn rank(&self, entries: impl Iterator<Item = (u32, f64)> + Clone, scratch: &mut Scratch) -> TokenizedCell {
        let total: f64 = entries.clone().map(|p| p.1).sum();
        if total <= 0.0 {
            return TokenizedCell::default();
        }
        // One scale factor per cell, then a division per gene: the reference's floating-point
        // order, which decides near-ties (ties in exact arithmetic can differ in the last bit).
        let scale = self.config.target_sum / total;
        let keys = &mut scratch.keys;
        keys.clear();
        for (g, v) in entries {
            let d = self.divisor[g as usize];
            if d.is_nan() {
                continue;
            }
            let x = v * scale / d;
            if x != 0.0 {
                // Sort key: descending value, then ascending vocabulary index, as one integer.
                keys.push((u128::from(!order_bits(x)) << 32) | u128::from(g));
            }
        }
        let top = sort_top_k(&scratch.keys, self.max_genes(), &mut scratch.sorted, &mut scratch.starts);
        TokenizedCell { genes: top.iter().map(|&key| (key as u32) + N_SPECIAL).collect() }
    }
}

/// Buffers [`Tokenizer::tokenize`] reuses from cell to cell (one per thread).
#[derive(Debug, Default)]
pub struct Scratch {
    row: Vec<(u32, f64)>,
    keys: Vec<u128>,
    sorted: Vec<u128>,
    starts: Vec<u32>,
}

/// The `k` smallest of `keys`, ascending (all of them when there are fewer), in `out`.
///
/// A cell's keys are spread out by their high 64 bits (the value's order bits; the low 32 bits
/// are the vocabulary index): one stable counting pass distributes them over about one bucket per
/// key, by the leading bits of their offset from the smallest, and only the buckets that reach
/// the first `k` are then sorted — most hold one or a few keys (equal values keep the input's
/// order, usually already by vocabulary index, so sorting them is one pass). Several times faster
/// than a comparison sort of 2,000 expressed genes; the result is the same (tested against
/// `sort_unstable`).
fn sort_top_k<'a>(keys: &[u128], k: usize, out: &'a mut Vec<u128>, starts: &mut Vec<u32>) -> &'a [u128] {
    const SMALL: usize = 64;
    let n = keys.len();
    out.clear();
    if n <= SMALL {
        out.extend_from_slice(keys);
        out.sort_unstable();
        out.truncate(k);
        return out;
    }
    let high = |key: u128| (key >> 32) as u64;
    let (lo, hi) = keys.iter().fold((u64::MAX, 0), |(lo, hi), &key| (lo.min(high(key)), hi.max(high(key))));
    let bits = n.next_power_of_two().trailing_zeros().min(16);
    let span = 64 - (hi - lo).leading_zeros();
    let shift = span.saturating_sub(bits);
    let bucket = |key: u128| ((high(key) - lo) >> shift) as usize;
    // Counting sort: starts[b] = first slot of bucket b; scattering advances it to the bucket's end.
    starts.clear();
    starts.resize((1 << bits) + 1, 0);
    for &key in keys {
        starts[bucket(key) + 1] += 1;
    }
    for b in 1..starts.len() {
        starts[b] += starts[b - 1];
    }
    out.resize(n, 0);
    for &key in keys {
        let slot = &mut starts[bucket(key)];
        out[*slot as usize] = key;
        *slot += 1;
    }
    // Now starts[b] is the end of bucket b (= the start of bucket b + 1).
    let mut a = 0;
    for &b in starts.iter() {
        let b = b as usize;
        if a >= k {
            break;
        }
        if b - a > 1 {
            out[a..b].sort_unstable();
        }
        a = b;
    }
    out.truncate(k);
    out
}

/// Maps an `f64` to a `u64` whose unsigned order is the float's total order (`f64::total_cmp`).
fn order_bits(x: f64) -> u64 {
    let b = x.to_bits();
    if b >> 63 == 1 { !b } else { b | (1 << 63) }
}

#[cfg(test)]
mod tests {
    use super::{order_bits, sort_top_k};

    #[test]
    fn sort_top_k_equals_a_full_sort() {
        // Keys as the tokenizer builds them: inverted value order bits above the gene index.
        // Values with many exact ties (small counts over a few divisors), a wide range, one
        // extreme outlier that squeezes everything else into few buckets, and negative values.
        let mut state = 0x9e3779b97f4a7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for case in 0..400 {
            let n = (next() % 3000) as usize;
            let k = [1, 10, 100, 1497, 5000][case % 5];
            let mut keys: Vec<u128> = (0..n)
                .map(|g| {
                    let x = match case % 4 {
                        0 => (1 + next() % 4) as f64 * 31.0 / (1 + next() % 7) as f64,
                        1 => (next() % 1_000_000) as f64 / 7.0 + 1e-3,
                        2 if g == 0 => 1e300,
                        2 => (1 + next() % 50) as f64 / 3.0,
                        _ => (next() % 2001) as f64 - 1000.5,
                    };
                    (u128::from(!order_bits(x)) << 32) | g as u128
                })
                .collect();
            if case % 8 == 3 {
                keys.reverse();
            }
            let mut expected = keys.clone();
            expected.sort_unstable();
            expected.truncate(k);
            let (mut out, mut starts) = (Vec::new(), Vec::new());
            assert_eq!(sort_top_k(&keys, k, &mut out, &mut starts), expected, "case {case}: {n} keys, top {k}");
        }
    }

    #[test]
    fn order_bits_preserve_float_order() {
        let xs = [-1e300, -2.5, -1e-300, -0.0, 0.0, 1e-300, 0.5, 1.0, 61.728395061728385, 61.72839506172839, 1e300];
        for w in xs.windows(2) {
            assert!(order_bits(w[0]) < order_bits(w[1]), "{} < {}", w[0], w[1]);
        }
    }
}
