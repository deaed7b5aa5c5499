//! Per-cell ranking speed on synthetic cells, without file input or output
//! (`cargo bench -p sof-tokenize`). End to end against the reference's approach (numpy + numba)
//! with .h5ad reading and Parquet writing: `cargo xtask bench tokenize`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sof_io::CsrMatrix;
use sof_io::genes::Species;
use sof_synth::{Generator, Sample, SynthConfig};
use sof_tokenize::{ColumnTokenizer, GeneMap, MeansAccumulator, Modality, Scratch, Tokenizer, TokenizerConfig};

fn tokenize_all(tok: &ColumnTokenizer<'_>, x: &CsrMatrix, scratch: &mut Scratch) -> usize {
    (0..x.n_rows())
        .map(|i| {
            let (c, v) = x.row(i);
            tok.tokenize(c, v, scratch).genes.len()
        })
        .sum()
}

fn bench(c: &mut Criterion) {
    let mut cfg = SynthConfig::default();
    cfg.n_genes = 20_310;
    cfg.cells_per_section = 2_048;
    cfg.dissociated_cells = 2_048;
    let g = Generator::new(cfg).unwrap();
    let mut group = c.benchmark_group("tokenize");
    group.sample_size(20);
    for (name, sample, modality) in [
        ("whole_transcriptome_cells_2048", Sample::Dissociated, Modality::Dissociated),
        ("merfish_panel_cells_2048", Sample::Section(0), Modality::Spatial),
    ] {
        let x = g.block(sample, 0).x;
        // The file's genes are the first vocabulary genes; the vocabulary has 20,310 as the reference's.
        let map = GeneMap::new((0..x.n_cols() as u32).map(Some).collect());
        let mut acc = MeansAccumulator::new(20_310);
        acc.add(&x, &map);
        let tok = Tokenizer::new(TokenizerConfig::default(), &acc.finish(), Species::Mouse, 7, modality);
        let columns = tok.for_columns(&map);
        let mut scratch = Scratch::default();
        group.throughput(Throughput::Elements(x.n_rows() as u64));
        group.bench_function(name, |b| b.iter(|| tokenize_all(&columns, &x, &mut scratch)));
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
