//! Radius graph and composition on synthetic cells (`cargo bench -p sof-spatial`).
//! The comparison with squidpy on one million cells is `cargo xtask bench spatial`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sof_spatial::{Composition, RadiusGraph, SectionedPoints, radius_for_mean_neighbors};
use sof_synth::{Generator, Sample, SynthConfig};

fn bench(c: &mut Criterion) {
    let mut cfg = SynthConfig::default();
    cfg.cells_per_section = 100_000;
    let g = Generator::new(cfg).unwrap();
    let b = g.generate(Sample::Section(0));
    let xy: Vec<[f64; 2]> = b.truth.iter().map(|t| [t.x_um, t.y_um]).collect();
    let labels: Vec<u32> = b.truth.iter().map(|t| u32::from(t.cell_type)).collect();
    let p = SectionedPoints::single_section(xy).unwrap();
    let r = radius_for_mean_neighbors(&p, 20.0, 0.01).unwrap().radius;
    let mut group = c.benchmark_group("spatial");
    group.sample_size(10);
    group.throughput(Throughput::Elements(p.len() as u64));
    group
        .bench_function("radius_graph_100k_cells_20_neighbours", |bch| bch.iter(|| RadiusGraph::build(&p, r).unwrap()));
    let graph = RadiusGraph::build(&p, r).unwrap();
    group.bench_function("composition_100k_cells_12_types", |bch| {
        bch.iter(|| Composition::from_graph(&graph, &labels, 12).unwrap())
    });
    group.bench_function("radius_search_100k_cells", |bch| {
        bch.iter(|| radius_for_mean_neighbors(&p, 20.0, 0.01).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
