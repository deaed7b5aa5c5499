//! Generation speed of the synthetic tissue, without file output (`cargo bench -p sof-synth`).
//! End-to-end numbers with .h5ad writing and peak memory: `cargo xtask bench synth`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sof_synth::{BLOCK_CELLS, Generator, Sample, SynthConfig};

fn bench(c: &mut Criterion) {
    let mut cfg = SynthConfig::default();
    cfg.cells_per_section = 100_000;
    cfg.dissociated_cells = BLOCK_CELLS;
    let g = Generator::new(cfg).unwrap();
    let mut group = c.benchmark_group("synth");
    group.sample_size(10);
    group.throughput(Throughput::Elements(BLOCK_CELLS as u64));
    group.bench_function("block_merfish_8192_cells", |b| b.iter(|| g.block(Sample::Section(0), 0)));
    group.bench_function("block_dissociated_8192_cells", |b| b.iter(|| g.block(Sample::Dissociated, 0)));
    group.throughput(Throughput::Elements(100_000));
    group.bench_function("section_100k_cells_parallel", |b| b.iter(|| g.generate(Sample::Section(0))));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
