//! A step's rows as the loop feeds them to the model: the step's padded batch, and chunks of it
//! grouped by length.

use crate::data::{Sequence, pad};

/// One step's data, prepared on the prefetch thread.
pub(crate) struct StepBatch {
    pub(crate) seqs: Vec<Sequence>,
    pub(crate) tokens: Vec<i64>,
    pub(crate) labels: Vec<i64>,
    pub(crate) length: usize,
}

/// Rows of a step, trimmed to their own longest sequence.
#[derive(Debug)]
pub(crate) struct Chunk {
    pub(crate) seqs: Vec<Sequence>,
    pub(crate) tokens: Vec<i64>,
    pub(crate) labels: Vec<i64>,
    pub(crate) length: usize,
}

impl Chunk {
    pub(crate) fn new(batch: &StepBatch, rows: &[usize]) -> Self {
        let seqs: Vec<Sequence> = rows.iter().map(|&r| batch.seqs[r].clone()).collect();
        let (_, length) = pad(&seqs);
        let mut tokens = Vec::with_capacity(rows.len() * length);
        let mut labels = Vec::with_capacity(rows.len() * length);
        for &r in rows {
            let at = r * batch.length;
            tokens.extend_from_slice(&batch.tokens[at..at + length]);
            labels.extend_from_slice(&batch.labels[at..at + length]);
        }
        Self { seqs, tokens, labels, length }
    }

    /// Rows `first..first + rows`, grouped by length class (powers of two) so that short spatial
    /// panels are not padded to the longest dissociated cell of the batch: each group is its own
    /// forward pass, and the summed gradients are unchanged (each part's loss is normalized by
    /// the step's totals).
    pub(crate) fn buckets(batch: &StepBatch, first: usize, rows: usize) -> Vec<Chunk> {
        let class = |r: usize| batch.seqs[r].tokens.len().max(1).next_power_of_two();
        let mut order: Vec<usize> = (first..first + rows).collect();
        order.sort_by_key(|&r| (class(r), r));
        order.chunk_by(|&a, &b| class(a) == class(b)).map(|group| Chunk::new(batch, group)).collect()
    }
}
