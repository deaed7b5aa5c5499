//! Streaming training sequences from one or more token corpora.
//!
//! Each corpus is checked against the model's vocabulary (hash) and tokenizer settings from its
//! manifest before any row is read. Sequences are `[species, assay, modality, genes...]`
//! truncated to the context length. Corpora are mixed by weight (each draw picks a corpus with
//! probability proportional to its weight), rows pass through a shuffle buffer, and the whole
//! order is a function of the seed. A corpus is read one shard at a time, cycling for epochs.
//!
//! Rows are split into training and validation by a hash of `(dataset, cell index)` — not by the
//! run's seed — so every run over the same corpora holds out the same cells.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use rand::Rng;
use rand_xoshiro::Xoshiro256PlusPlus;
use sof_tokenize::corpus::{CorpusManifest, ShardRow, read_shard_rows};

use crate::masking::rng;

/// Problems with training data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {problem}; {fix}")]
    Invalid { path: String, problem: String, fix: String },
    #[error(transparent)]
    Tokenize(#[from] sof_tokenize::TokenizeError),
}

fn invalid(path: &Path, problem: impl Into<String>, fix: impl Into<String>) -> DataError {
    DataError::Invalid { path: path.display().to_string(), problem: problem.into(), fix: fix.into() }
}

/// Which rows a stream yields.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Split {
    /// Every row.
    All,
    /// Rows outside the held-out fraction.
    Train(f64),
    /// The held-out fraction of rows.
    Validation(f64),
}

impl Split {
    fn keeps(self, dataset_hash: u64, cell_index: i64) -> bool {
        let held_out = |f: f64| {
            let h = splitmix64(dataset_hash ^ (cell_index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            (h >> 11) as f64 / (1u64 << 53) as f64 <= f
        };
        match self {
            Split::All => true,
            Split::Train(f) => !held_out(f),
            Split::Validation(f) => held_out(f),
        }
    }
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3))
}

/// One training sequence: `[species, assay, modality, genes...]`, truncated to the context
/// length, with the corpus it came from and that row's spatial targets, if any.
#[derive(Debug, Clone, PartialEq)]
pub struct Sequence {
    pub source: usize,
    pub tokens: Vec<i64>,
    pub composition: Option<Vec<f32>>,
    pub density: Option<f32>,
    /// The label-free niche profile (standardized), when the corpus carries it.
    pub profile: Option<Vec<f32>>,
}

struct Source {
    dir: PathBuf,
    manifest: CorpusManifest,
    weight: f64,
    shard: usize,
    rows: VecDeque<ShardRow>,
}

impl Source {
    /// Refills from the next shard (cycling); false if the corpus has no rows at all.
    fn refill(&mut self, split: Split) -> Result<bool, DataError> {
        let dataset = name_hash(&self.manifest.dataset);
        for _ in 0..self.manifest.shards.len() {
            let info = &self.manifest.shards[self.shard % self.manifest.shards.len()];
            self.shard += 1;
            let rows = read_shard_rows(&self.dir.join(&info.file))?;
            self.rows.extend(rows.into_iter().filter(|r| split.keeps(dataset, r.cell_index)));
            if !self.rows.is_empty() {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// An endless, seeded stream of sequences from weighted corpora.
pub struct SequenceStream {
    sources: Vec<Source>,
    split: Split,
    context_length: usize,
    buffer: Vec<Sequence>,
    buffer_size: usize,
    rng: Xoshiro256PlusPlus,
}

impl std::fmt::Debug for SequenceStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SequenceStream")
            .field("corpora", &self.sources.iter().map(|s| &s.dir).collect::<Vec<_>>())
            .finish()
    }
}

impl SequenceStream {
    /// Opens `(corpus folder, weight)` pairs, refusing corpora made with another vocabulary or
    /// tokenizer mode than `vocabulary_hash` / `mode`.
    pub fn open(
        corpora: &[(PathBuf, f64)],
        vocabulary_hash: &str,
        context_length: usize,
        buffer_size: usize,
        seed: u64,
        split: Split,
    ) -> Result<Self, DataError> {
        let mut sources = Vec::new();
        let mut first_mode = None;
        for (dir, weight) in corpora {
            let manifest = CorpusManifest::load(dir)?;
            if manifest.vocabulary_hash != vocabulary_hash {
                return Err(invalid(
                    dir,
                    "was tokenized with another vocabulary than the model's",
                    "tokenize it again with the model's vocabulary (--vocab)",
                ));
            }
            let mode = manifest.tokenizer.mode;
            if *first_mode.get_or_insert(mode) != mode {
                return Err(invalid(
                    dir,
                    format!("was tokenized in {mode:?} mode, another corpus in {:?}", first_mode.unwrap()),
                    "tokenize every corpus of one model in the same mode",
                ));
            }
            if !(*weight > 0.0 && weight.is_finite()) {
                return Err(invalid(dir, format!("weight {weight}"), "weights must be positive numbers"));
            }
            sources.push(Source { dir: dir.clone(), manifest, weight: *weight, shard: 0, rows: VecDeque::new() });
        }
        if sources.is_empty() {
            return Err(invalid(Path::new("."), "no corpus given", "pass at least one corpus folder"));
        }
        Ok(Self { sources, split, context_length, buffer: Vec::new(), buffer_size: buffer_size.max(1), rng: rng(seed) })
    }

    fn draw_source(&mut self) -> usize {
        let total: f64 = self.sources.iter().map(|s| s.weight).sum();
        let mut u = self.rng.random::<f64>() * total;
        for (i, s) in self.sources.iter().enumerate() {
            u -= s.weight;
            if u < 0.0 {
                return i;
            }
        }
        self.sources.len() - 1
    }

    /// The corpora's manifests, in the order given.
    pub fn manifests(&self) -> impl Iterator<Item = &CorpusManifest> {
        self.sources.iter().map(|s| &s.manifest)
    }

    /// The next sequence (context + genes, truncated), with the corpus it came from.
    pub fn next_sequence(&mut self) -> Result<Sequence, DataError> {
        while self.buffer.len() < self.buffer_size {
            let i = self.draw_source();
            let split = self.split;
            let src = &mut self.sources[i];
            if src.rows.is_empty() && !src.refill(split)? {
                let problem = match split {
                    Split::Validation(_) => "has no held-out rows",
                    _ => "has no rows",
                };
                return Err(invalid(&src.dir, problem, "tokenize more cells with expressed genes into it"));
            }
            let row = src.rows.pop_front().expect("refilled");
            let mut tokens: Vec<i64> = src.manifest.context_tokens.iter().map(|&t| i64::from(t)).collect();
            tokens.extend(row.tokens.iter().map(|&t| i64::from(t)));
            tokens.truncate(self.context_length);
            self.buffer.push(Sequence {
                source: i,
                tokens,
                composition: row.composition,
                density: row.density,
                profile: row.profile,
            });
        }
        let k = self.rng.random_range(0..self.buffer.len());
        Ok(self.buffer.swap_remove(k))
    }

    /// Draws and drops `n` sequences: the stream is then where a run that consumed them is
    /// (how `--resume` restores the data order exactly).
    pub fn skip(&mut self, n: u64) -> Result<(), DataError> {
        for _ in 0..n {
            self.next_sequence()?;
        }
        Ok(())
    }

    /// A padded batch (`batch x length`, PAD = 1), `length` = the longest sequence in it.
    pub fn next_batch(&mut self, batch: usize) -> Result<(Vec<i64>, usize, Vec<Sequence>), DataError> {
        let seqs = (0..batch).map(|_| self.next_sequence()).collect::<Result<Vec<_>, _>>()?;
        let (flat, length) = pad(&seqs);
        Ok((flat, length, seqs))
    }
}

/// Pads sequences to the longest (`batch x length`, row-major, PAD = 1).
pub fn pad(seqs: &[Sequence]) -> (Vec<i64>, usize) {
    let length = seqs.iter().map(|s| s.tokens.len()).max().unwrap_or(0);
    (sof_tokenize::pad_rows(seqs.iter().map(|s| s.tokens.as_slice()), length), length)
}
