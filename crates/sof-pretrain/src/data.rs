//! Streaming training sequences from one or more token corpora.
//!
//! Each corpus is checked against the model's vocabulary (hash) and tokenizer settings from its
//! manifest before any row is read. Sequences are `[species, assay, modality, genes...]`
//! truncated to the context length. Corpora are mixed by weight (each draw picks a corpus with
//! probability proportional to its weight), rows pass through a shuffle buffer, and the whole
//! order is a function of the seed. A corpus is read one shard at a time, cycling for epochs.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use rand::Rng;
use rand_xoshiro::Xoshiro256PlusPlus;
use sof_tokenize::context::PAD;
use sof_tokenize::corpus::{CorpusManifest, read_shard_tokens};

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

struct Source {
    dir: PathBuf,
    manifest: CorpusManifest,
    weight: f64,
    shard: usize,
    rows: VecDeque<Vec<i64>>,
}

impl Source {
    /// Refills from the next shard (cycling); false if the corpus has no rows at all.
    fn refill(&mut self) -> Result<bool, DataError> {
        for _ in 0..self.manifest.shards.len() {
            let info = &self.manifest.shards[self.shard % self.manifest.shards.len()];
            self.shard += 1;
            let ctx = self.manifest.context_tokens.map(i64::from);
            for (_, tokens) in read_shard_tokens(&self.dir.join(&info.file))? {
                self.rows.push_back(ctx.iter().copied().chain(tokens.into_iter().map(i64::from)).collect());
            }
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
    context_length: usize,
    buffer: Vec<Vec<i64>>,
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
        Ok(Self { sources, context_length, buffer: Vec::new(), buffer_size: buffer_size.max(1), rng: rng(seed) })
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

    /// The next sequence (context + genes, truncated), with the corpus it came from.
    pub fn next_sequence(&mut self) -> Result<(usize, Vec<i64>), DataError> {
        while self.buffer.len() < self.buffer_size {
            let i = self.draw_source();
            let src = &mut self.sources[i];
            if src.rows.is_empty() && !src.refill()? {
                return Err(invalid(&src.dir, "has no rows", "tokenize cells with expressed genes into it"));
            }
            let mut seq = src.rows.pop_front().expect("refilled");
            seq.truncate(self.context_length);
            seq.push(i as i64); // the source index rides along until the sequence leaves the buffer
            self.buffer.push(seq);
        }
        let k = self.rng.random_range(0..self.buffer.len());
        let mut seq = self.buffer.swap_remove(k);
        let source = seq.pop().expect("source index") as usize;
        Ok((source, seq))
    }

    /// A padded batch (`batch x length`, PAD = 1), `length` = the longest sequence in it.
    pub fn next_batch(&mut self, batch: usize) -> Result<(Vec<i64>, usize, Vec<usize>), DataError> {
        let mut seqs = Vec::with_capacity(batch);
        let mut sources = Vec::with_capacity(batch);
        for _ in 0..batch {
            let (s, q) = self.next_sequence()?;
            sources.push(s);
            seqs.push(q);
        }
        let length = seqs.iter().map(Vec::len).max().unwrap_or(0);
        let mut flat = vec![i64::from(PAD); batch * length];
        for (i, q) in seqs.iter().enumerate() {
            flat[i * length..i * length + q.len()].copy_from_slice(q);
        }
        Ok((flat, length, sources))
    }
}
