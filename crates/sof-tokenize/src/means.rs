//! Technology mean vectors.
//!
//! Algorithm (the paper's definition; the reference never published the code that computes it):
//! for every cell of the technology, scale its counts over vocabulary genes to 10,000
//! (`x_g = count_g / total * 10_000`); the mean of gene `g` is the average of `x_g` over the cells
//! where the gene is non-zero. A gene never detected gets NaN ("not measured by this
//! technology"). Files: TSV with header `ensembl_id  mean`, one row per vocabulary gene in
//! vocabulary order, `nan` for NaN — the layout of the reference's published vectors.

use std::path::Path;

use sof_io::genes::Vocabulary;

use crate::tokenizer::GeneMap;
use crate::{Result, TokenizeError};

/// One technology's per-gene means, in vocabulary order (NaN = gene not measured).
#[derive(Debug, Clone, PartialEq)]
pub struct TechMeans {
    pub values: Vec<f64>,
}

impl TechMeans {
    /// The first line of [`TechMeans::save_tsv`]'s table (how a table sof wrote is recognised).
    pub const TSV_HEADER: &'static str = "ensembl_id\tmean\n";

    /// Loads a mean vector, checking that its ids are the vocabulary's, in order.
    pub fn load_tsv(path: &Path, vocab: &Vocabulary) -> Result<Self> {
        let p = path.display();
        let text = std::fs::read_to_string(path).map_err(|e| sof_io::Error::Io { path: path.into(), error: e })?;
        let mut lines = text.lines();
        let header = lines.next().unwrap_or_default();
        if header.split('\t').next() != Some("ensembl_id") {
            return Err(TokenizeError::invalid(
                &p,
                format!("header is '{header}'"),
                "a mean vector TSV starts with the header 'ensembl_id<TAB>mean'",
            ));
        }
        let mut values = Vec::with_capacity(vocab.len());
        for (i, line) in lines.filter(|l| !l.is_empty()).enumerate() {
            let (id, v) = line.split_once('\t').ok_or_else(|| {
                TokenizeError::invalid(&p, format!("line {} has no tab", i + 2), "rows are 'ensembl_id<TAB>mean'")
            })?;
            if i >= vocab.len() || vocab.id(i as u32) != id {
                return Err(TokenizeError::invalid(
                    &p,
                    format!(
                        "row {} is gene '{id}', the vocabulary has '{}' there",
                        i + 1,
                        if i < vocab.len() { vocab.id(i as u32) } else { "nothing" }
                    ),
                    "vocabulary mismatch: use the mean vectors made for this vocabulary, or compute new ones with `sof tech-means`",
                ));
            }
            let x: f64 = if v.eq_ignore_ascii_case("nan") {
                f64::NAN
            } else {
                v.parse().map_err(|_| {
                    TokenizeError::invalid(
                        &p,
                        format!("row {}: '{v}' is not a number", i + 1),
                        "means are numbers or nan",
                    )
                })?
            };
            values.push(x);
        }
        if values.len() != vocab.len() {
            return Err(TokenizeError::invalid(
                &p,
                format!("has {} genes, the vocabulary {}", values.len(), vocab.len()),
                "vocabulary mismatch: the file is truncated or made for another vocabulary",
            ));
        }
        Ok(Self { values })
    }

    /// Writes the TSV atomically.
    pub fn save_tsv(&self, path: &Path, vocab: &Vocabulary) -> Result<()> {
        let mut s = String::from(Self::TSV_HEADER);
        for (i, v) in self.values.iter().enumerate() {
            let id = vocab.id(i as u32);
            if v.is_nan() { s.push_str(&format!("{id}\tnan\n")) } else { s.push_str(&format!("{id}\t{v}\n")) }
        }
        let tmp = sof_io::AtomicPath::new(path)?;
        std::fs::write(tmp.path(), s).map_err(|e| sof_io::Error::Io { path: path.into(), error: e })?;
        tmp.commit()?;
        Ok(())
    }

    /// Genes with a finite, non-negative mean (measured by the technology).
    pub fn n_measured(&self) -> usize {
        self.values.iter().filter(|v| v.is_finite() && **v >= 0.0).count()
    }
}

/// Accumulates means over cells, possibly from several files of one technology.
#[derive(Debug, Clone)]
pub struct MeansAccumulator {
    sum: Vec<f64>,
    n: Vec<u64>,
}

impl MeansAccumulator {
    pub fn new(vocab_len: usize) -> Self {
        Self { sum: vec![0.0; vocab_len], n: vec![0; vocab_len] }
    }

    /// Adds every cell of a block whose columns map into the vocabulary through `map`.
    pub fn add(&mut self, x: &sof_io::CsrMatrix, map: &GeneMap) {
        let mut row = Vec::new();
        for i in 0..x.n_rows() {
            let (c, v) = x.row(i);
            map.vocab_row(c, v, &mut row);
            let total: f64 = row.iter().map(|p| p.1).sum();
            if total <= 0.0 {
                continue;
            }
            for &(g, val) in &row {
                if val > 0.0 {
                    self.sum[g as usize] += val / total * 10_000.0;
                    self.n[g as usize] += 1;
                }
            }
        }
    }

    pub fn finish(&self) -> TechMeans {
        TechMeans {
            values: self.sum.iter().zip(&self.n).map(|(&s, &n)| if n == 0 { f64::NAN } else { s / n as f64 }).collect(),
        }
    }
}
