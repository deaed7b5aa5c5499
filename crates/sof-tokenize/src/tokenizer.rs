//! The tokenizer: per cell, on sparse rows only.

use serde::{Deserialize, Serialize};
use sof_io::genes::{AlignmentReport, Species};

use crate::context::{MASK, Modality, N_CONTEXT, N_SPECIAL, species_token};
use crate::means::TechMeans;
use crate::rank::{rank_key, sort_top_k};

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

/// How a model's training cells were tokenized, saved in every checkpoint so that new data is
/// tokenized the same way: the tokenizer settings, plus the technology, species and modality
/// where every training corpus agreed (`None` where they differed, or for imported weights).
/// Serialized flat: the settings' fields beside `technology`, `species`, `modality`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TokenizerSpec {
    #[serde(flatten)]
    pub config: TokenizerConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub technology: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub species: Option<sof_io::genes::Species>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modality: Option<crate::Modality>,
    /// Technologies the model was trained on that the built-in context table lacks (added with
    /// `--new-technology` or a context config), by name with their token: `sof embed` knows them
    /// without a context config.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub technologies: std::collections::BTreeMap<String, u32>,
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

    /// The same map with only the vocabulary genes `keep` accepts: the others are left out of
    /// the cells' tokens and totals, as if the dataset had not measured them (a query
    /// tokenized over a reference's panel).
    ///
    /// ```
    /// let map = sof_tokenize::GeneMap::new(vec![Some(0), None, Some(2), Some(3)]);
    /// let panel = map.restricted(|g| g != 2);
    /// assert_eq!((map.n_mapped(), panel.n_mapped()), (3, 2));
    /// ```
    pub fn restricted(&self, keep: impl Fn(u32) -> bool) -> Self {
        Self::new(self.to_vocab.iter().map(|g| g.filter(|&g| keep(g))).collect())
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

    /// The same tokenizer with the assay and modality tokens hidden ([`MASK`]): how a model
    /// pretrained with context dropout sees a cell it is not told the technology of (the
    /// technology's means still normalize the counts).
    ///
    /// ```
    /// use sof_tokenize::{Modality, TechMeans, Tokenizer, TokenizerConfig};
    /// let means = TechMeans { values: vec![1.0; 4] };
    /// let tok = Tokenizer::new(TokenizerConfig::default(), &means, sof_io::genes::Species::Mouse, 7, Modality::Spatial);
    /// assert_eq!(tok.context(), [6, 7, 4]);
    /// assert_eq!(tok.with_hidden_context().context(), [6, sof_tokenize::context::MASK, sof_tokenize::context::MASK]);
    /// ```
    pub fn with_hidden_context(mut self) -> Self {
        self.context[1] = MASK;
        self.context[2] = MASK;
        self
    }

    /// Gene tokens at most per cell.
    pub fn max_genes(&self) -> usize {
        self.config.context_length.saturating_sub(N_CONTEXT)
    }

    /// Ranks one cell given as mapped `(vocab index, count)` pairs (each vocabulary gene at most
    /// once).
    pub fn tokenize_mapped(&self, row: &[(u32, f64)], scratch: &mut Scratch) -> TokenizedCell {
        let total: f64 = row.iter().map(|p| p.1).sum();
        if total <= 0.0 {
            return TokenizedCell::default();
        }
        // One scale factor per cell, then a division per gene: the reference's floating-point
        // order, which decides near-ties (ties in exact arithmetic can differ in the last bit).
        let scale = self.config.target_sum / total;
        let keys = &mut scratch.keys;
        keys.clear();
        for &(g, v) in row {
            let d = self.divisor[g as usize];
            if d.is_nan() {
                continue;
            }
            let x = v * scale / d;
            if x != 0.0 {
                keys.push(rank_key(x, g));
            }
        }
        self.top_tokens(scratch)
    }

    /// The ranked tokens from `scratch.keys`.
    fn top_tokens(&self, scratch: &mut Scratch) -> TokenizedCell {
        let top = sort_top_k(&scratch.keys, self.max_genes(), &mut scratch.sorted, &mut scratch.starts);
        TokenizedCell { genes: top.iter().map(|&key| (key as u32) + N_SPECIAL).collect() }
    }

    /// Tokenizes one cell of a dataset (its CSR row) through `map`; `scratch` is reused from
    /// cell to cell. The plain path (map, then rank); [`Tokenizer::for_columns`] is the fast one
    /// for many cells of one dataset, with the same result.
    pub fn tokenize(&self, map: &GeneMap, cols: &[u32], vals: &[f32], scratch: &mut Scratch) -> TokenizedCell {
        let mut row = std::mem::take(&mut scratch.row);
        map.vocab_row(cols, vals, &mut row);
        let cell = self.tokenize_mapped(&row, scratch);
        scratch.row = row;
        cell
    }

    /// This tokenizer with `map` folded into one table over the dataset's columns (vocabulary
    /// index and divisor per column), for tokenizing many cells of that dataset.
    pub fn for_columns<'a>(&'a self, map: &'a GeneMap) -> ColumnTokenizer<'a> {
        let columns = map
            .to_vocab
            .iter()
            .map(|g| match *g {
                Some(g) => Column { divisor: self.divisor[g as usize], gene: g, mapped: true },
                None => Column { divisor: f64::NAN, gene: 0, mapped: false },
            })
            .collect();
        ColumnTokenizer { tokenizer: self, map, columns }
    }
}

/// A [`Tokenizer`] bound to one dataset's columns ([`Tokenizer::for_columns`]).
#[derive(Debug)]
pub struct ColumnTokenizer<'a> {
    tokenizer: &'a Tokenizer,
    map: &'a GeneMap,
    columns: Vec<Column>,
}

#[derive(Debug, Clone, Copy)]
struct Column {
    /// NaN: never a token (unmapped, or not measured by the technology in fixed mode).
    divisor: f64,
    gene: u32,
    /// Counts toward the cell's total (mapped into the vocabulary).
    mapped: bool,
}

impl ColumnTokenizer<'_> {
    /// Tokenizes one cell (its CSR row); equal to [`Tokenizer::tokenize`] with the same map.
    pub fn tokenize(&self, cols: &[u32], vals: &[f32], scratch: &mut Scratch) -> TokenizedCell {
        let tok = self.tokenizer;
        if self.map.collisions {
            // Several columns map onto one vocabulary gene: they are summed first.
            return tok.tokenize(self.map, cols, vals, scratch);
        }
        // The entries `vocab_row` would list, straight from the row: the same total (summed in
        // the same order) and the same keys.
        let columns = &self.columns;
        let total = row_total(columns, cols, vals);
        if total <= 0.0 {
            return TokenizedCell::default();
        }
        let scale = tok.config.target_sum / total;
        let keys = &mut scratch.keys;
        keys.clear();
        for (&c, &v) in cols.iter().zip(vals) {
            let col = columns[c as usize];
            let x = f64::from(v) * scale / col.divisor;
            // Skips zeros and NaN (unmapped or unmeasured genes).
            if x.abs() > 0.0 {
                keys.push(rank_key(x, col.gene));
            }
        }
        tok.top_tokens(scratch)
    }
}

/// The sum of a row's mapped values, added one by one in row order (as `vocab_row` lists them).
fn row_total(columns: &[Column], cols: &[u32], vals: &[f32]) -> f64 {
    let mut total = 0.0;
    for (&c, &v) in cols.iter().zip(vals) {
        if columns[c as usize].mapped {
            total += f64::from(v);
        }
    }
    total
}

/// Buffers [`Tokenizer::tokenize`] reuses from cell to cell (one per thread).
#[derive(Debug, Default)]
pub struct Scratch {
    row: Vec<(u32, f64)>,
    keys: Vec<u128>,
    sorted: Vec<u128>,
    starts: Vec<u32>,
}
