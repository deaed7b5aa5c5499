//! Ground-truth consistency of the synthetic tissue.

#![allow(clippy::print_stderr)] // tests say when they skip for lack of shared data

use std::collections::BTreeMap;

use sof_synth::{Generator, Sample, SynthConfig};

fn small() -> Generator {
    let mut c = SynthConfig::default();
    c.cells_per_section = 20_000;
    c.dissociated_cells = 3_000;
    Generator::new(c).unwrap()
}

#[test]
fn layers_are_ordered_bands_in_space() {
    let g = small();
    for s in 0..g.config().sections {
        let b = g.generate(Sample::Section(s));
        let mut sum = vec![(0.0, 0usize); g.layer_names().len()];
        for t in &b.truth {
            sum[t.layer as usize].0 += t.y_um;
            sum[t.layer as usize].1 += 1;
        }
        let means: Vec<f64> = sum.iter().map(|(s, n)| s / *n as f64).collect();
        assert!(means.windows(2).all(|w| w[0] < w[1]), "section {s}: mean y per layer {means:?}");
        // Every cell's layer is the one its position says.
        let layout = g.layout(Sample::Section(s));
        assert!(b.truth.iter().all(|t| g.layer_at(&layout, t.x_um, t.y_um) == t.layer as usize));
    }
}

/// Composition of each zone (layer outside focal niches, focal core, focal margin) matches the
/// configured cell-type weights (total variation distance below 0.03).
#[test]
fn niche_composition_is_as_configured() {
    let g = small();
    let cfg = g.config().clone();
    let types = g.cell_type_names();
    let mut by_niche: BTreeMap<String, BTreeMap<usize, usize>> = BTreeMap::new();
    let mut by_layer: BTreeMap<usize, BTreeMap<usize, usize>> = BTreeMap::new();
    let focal_names: Vec<&String> = cfg.focal.iter().flat_map(|f| [&f.core_name, &f.margin_name]).collect();
    for s in 0..cfg.sections {
        for t in g.generate(Sample::Section(s)).truth {
            let niche = g.niche_names()[t.niche as usize].clone();
            if focal_names.contains(&&niche) {
                *by_niche.entry(niche).or_default().entry(t.cell_type as usize).or_default() += 1;
            } else {
                *by_layer.entry(t.layer as usize).or_default().entry(t.cell_type as usize).or_default() += 1;
            }
        }
    }
    let tv = |counts: &BTreeMap<usize, usize>, weights: &BTreeMap<String, f64>| {
        let n: usize = counts.values().sum();
        let wsum: f64 = weights.values().sum();
        types
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let p = *counts.get(&i).unwrap_or(&0) as f64 / n as f64;
                (p - weights.get(name).copied().unwrap_or(0.0) / wsum).abs()
            })
            .sum::<f64>()
            / 2.0
    };
    for (l, counts) in &by_layer {
        let d = tv(counts, &cfg.layers[*l].types);
        assert!(d < 0.03, "layer {}: total variation {d}", cfg.layers[*l].name);
    }
    let f = &cfg.focal[0];
    let core = &by_niche[&f.core_name];
    assert!(core.values().sum::<usize>() > 500, "the focal core holds enough cells to test");
    assert!(tv(core, &f.core_types) < 0.03);
    assert!(tv(&by_niche[&f.margin_name], &f.margin_types) < 0.05);
}

/// Local density follows the configured multipliers: cells per unit area in the tumour core
/// versus its layer, and between two layers.
#[test]
fn density_follows_configuration() {
    let g = small();
    let cfg = g.config().clone();
    let s = Sample::Section(0);
    let layout = g.layout(s);
    let b = g.generate(s);
    let (_, cx, cy) = layout.focal_centres[0];
    let r = cfg.focal[0].radius_um;
    let core = b.truth.iter().filter(|t| ((t.x_um - cx).powi(2) + (t.y_um - cy).powi(2)).sqrt() <= r).count() as f64;
    let core_density = core / (std::f64::consts::PI * r * r);
    let mean_density = b.truth.len() as f64 / (cfg.width_um * cfg.height_um);
    assert!(core_density > 2.0 * mean_density, "core {core_density} vs mean {mean_density}");
    // L1 (density 0.5) against L4 (density 1.5), far from the focal niche: ratio about 3.
    let far =
        |t: &&sof_synth::CellTruth| ((t.x_um - cx).powi(2) + (t.y_um - cy).powi(2)).sqrt() > r + cfg.focal[0].margin_um;
    let count = |l: u16| b.truth.iter().filter(far).filter(|t| t.layer == l).count() as f64;
    // Area of each layer away from the focal niche, on a 2 um grid.
    let area = |l: usize| {
        let mut a = 0usize;
        for i in 0..(cfg.width_um / 2.0) as usize {
            for j in 0..(cfg.height_um / 2.0) as usize {
                let (x, y) = (i as f64 * 2.0 + 1.0, j as f64 * 2.0 + 1.0);
                let d = ((x - cx).powi(2) + (y - cy).powi(2)).sqrt();
                a += usize::from(d > r + cfg.focal[0].margin_um && g.layer_at(&layout, x, y) == l);
            }
        }
        a as f64
    };
    let ratio = (count(2) / area(2)) / (count(0) / area(0));
    assert!((2.6..3.4).contains(&ratio), "L4/L1 density ratio {ratio}");
}

#[test]
fn deterministic_and_thread_independent() {
    let g = small();
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let a = one.install(|| g.generate(Sample::Section(1)));
    let b = g.generate(Sample::Section(1));
    assert_eq!(a.x, b.x);
    assert_eq!(a.truth, b.truth);
    let mut other = g.config().clone();
    other.seed = 1;
    let c = Generator::new(other).unwrap().generate(Sample::Section(1));
    assert_ne!(a.x, c.x, "another seed gives another tissue");
}

#[test]
fn technologies_measure_their_panels_at_their_depth() {
    let g = small();
    let cfg = g.config().clone();
    for sample in [Sample::Section(0), Sample::Section(2), Sample::Dissociated] {
        let tech = g.tech_of(sample).clone();
        let b = g.generate(sample);
        let panel = if tech.panel_size == 0 { cfg.n_genes } else { tech.panel_size };
        assert_eq!(b.x.n_cols(), panel, "{}", tech.name);
        assert_eq!(g.panel_names(&tech.name).unwrap().len(), panel);
        let totals = b.x.row_sums();
        let mean_size: f64 =
            b.truth.iter().map(|t| cfg.cell_types[t.cell_type as usize].size).sum::<f64>() / totals.len() as f64;
        let mean = totals.iter().sum::<f64>() / totals.len() as f64;
        let expected = tech.mean_counts * mean_size * (0.3f64.powi(2) / 2.0).exp();
        assert!((mean / expected - 1.0).abs() < 0.05, "{}: mean counts {mean} vs {expected}", tech.name);
        assert!(totals.iter().all(|&t| t >= 1.0), "no empty cells");
    }
}

/// Marker genes make types separable: each cell type's mean expression profile is closest to
/// its own cells (nearest-centroid accuracy on held-out cells well above chance).
#[test]
fn expression_carries_cell_type() {
    let g = small();
    let b = g.generate(Sample::Section(0));
    let (n, p) = (b.x.n_rows(), b.x.n_cols());
    let n_types = g.cell_type_names().len();
    let norm = |i: usize| {
        let (c, v) = b.x.row(i);
        let tot: f32 = v.iter().sum();
        let mut d = vec![0f32; p];
        for (&j, &x) in c.iter().zip(v) {
            d[j as usize] = (1.0 + 1e4 * x / tot).ln();
        }
        d
    };
    let mut centroid = vec![vec![0f32; p]; n_types];
    let mut count = vec![0usize; n_types];
    for i in (0..n).step_by(2) {
        let t = b.truth[i].cell_type as usize;
        for (c, x) in centroid[t].iter_mut().zip(norm(i)) {
            *c += x;
        }
        count[t] += 1;
    }
    for (c, k) in centroid.iter_mut().zip(&count) {
        c.iter_mut().for_each(|x| *x /= (*k).max(1) as f32);
    }
    let (mut right, mut total) = (0, 0);
    for i in (1..n).step_by(2) {
        let d = norm(i);
        let best = (0..n_types)
            .filter(|&t| count[t] > 0)
            .min_by(|&a, &b| {
                let da: f32 = centroid[a].iter().zip(&d).map(|(c, x)| (c - x).powi(2)).sum();
                let db: f32 = centroid[b].iter().zip(&d).map(|(c, x)| (c - x).powi(2)).sum();
                da.total_cmp(&db)
            })
            .unwrap();
        right += usize::from(best == b.truth[i].cell_type as usize);
        total += 1;
    }
    assert!(right as f64 / total as f64 > 0.9, "nearest-centroid accuracy {}", right as f64 / total as f64);
}

#[test]
fn written_files_hold_the_ground_truth() {
    let mut c = SynthConfig::default();
    c.cells_per_section = 9_000; // more than one block per section
    c.dissociated_cells = 500;
    let g = Generator::new(c).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut written = 0;
    let paths = g.write_all(dir.path(), |_, b| written += b.truth.len()).unwrap();
    assert_eq!(written, 3 * 9_000 + 500);
    let names: Vec<String> = paths.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names, vec!["spatial_merfish.h5ad", "spatial_xenium.h5ad", "dissociated.h5ad"]);
    let merfish = sof_io::h5ad::read_h5ad(&paths[0]).unwrap();
    assert_eq!(
        merfish,
        g.anndata(&[Sample::Section(0), Sample::Section(1)]),
        "streamed file equals the in-memory dataset"
    );
    assert_eq!(merfish.obs.get("section").unwrap().value_counts().len(), 2);
    let diss = sof_io::h5ad::read_h5ad(&paths[2]).unwrap();
    assert!(diss.spatial().is_none(), "dissociated cells carry no coordinates");
    assert!(diss.obs.get("true_x_um").is_some(), "but keep their true position as ground truth");
    assert_eq!(diss.n_vars(), 2_000);
}

#[test]
fn bad_configs_are_refused_with_reasons() {
    let mut c = SynthConfig::default();
    c.section_tech = vec!["visium".into()];
    assert!(Generator::new(c).unwrap_err().to_string().contains("unknown technology 'visium'"));
    let mut c = SynthConfig::default();
    c.layers[0].types.insert("Neuron".into(), 1.0);
    assert!(Generator::new(c).unwrap_err().to_string().contains("unknown cell type 'Neuron'"));
    let mut c = SynthConfig::default();
    c.n_genes = 10;
    assert!(Generator::new(c).unwrap_err().to_string().contains("fewer than"));
}

/// The generator as a cell source streams the same cells as its in-memory AnnData, whatever the
/// row blocks asked for (they cross generator blocks and sections).
#[test]
fn synthetic_cell_source_equals_the_anndata() {
    use sof_io::CellSource;
    let mut c = SynthConfig::default();
    c.cells_per_section = 9_000; // two generator blocks per section
    c.dissociated_cells = 0;
    let g = Generator::new(c).unwrap();
    let (name, samples) = g.outputs().into_iter().next().unwrap();
    let whole = g.anndata(&samples);
    let cells = g.cells(&name, &samples);
    assert_eq!(CellSource::n_obs(&cells), whole.n_obs());
    assert_eq!(cells.var_names().unwrap(), whole.var_names());
    assert_eq!(cells.obs().unwrap(), whole.obs);
    assert_eq!(cells.obsm("spatial").unwrap(), whole.obsm["spatial"]);
    let mut streamed = sof_io::CsrMatrix::empty(whole.n_vars());
    let n = whole.n_obs();
    let mut start = 0;
    while start < n {
        let end = (start + 5_001).min(n);
        streamed.append_rows(&cells.read_rows(start..end).unwrap());
        start = end;
    }
    assert_eq!(streamed, whole.x);
    assert!(cells.read_rows(0..n + 1).unwrap_err().to_string().contains("outside"));
}
