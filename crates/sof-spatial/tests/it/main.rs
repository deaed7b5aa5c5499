//! Graphs and targets equal brute force on the shared datasets; radius selection hits its
//! target; niches recover the synthetic tissue's ground truth.

use sof_io::AnnData;
use sof_spatial::{
    Composition, KnnGraph, RadiusGraph, SectionedPoints, SpatialError, niches, radius_for_mean_neighbors, targets,
};

/// The shared data folder, or `None` (with a note) where it is absent; CI requires it.
fn shared() -> Option<std::path::PathBuf> {
    sof_io::shared::for_tests(std::path::Path::new(env!("CARGO_MANIFEST_DIR")))
}

/// Points of a file, sectioned by `section_key` when given; labels from `label_key` as codes.
fn load(file: &str, section_key: Option<&str>, label_key: &str) -> Option<(SectionedPoints, Vec<u32>, usize)> {
    let a: AnnData = sof_io::h5ad::read_h5ad(shared()?.join("data").join(file)).unwrap();
    let xy: Vec<[f64; 2]> = a.spatial().unwrap().rows().into_iter().map(|r| [r[0], r[1]]).collect();
    let section: Vec<u32> = match section_key {
        Some(k) => match a.obs.get(k).unwrap() {
            sof_io::Column::Categorical { codes, .. } => codes.iter().map(|&c| c as u32).collect(),
            other => panic!("{k} is {}", other.kind()),
        },
        None => vec![0; xy.len()],
    };
    let (labels, n) = match a.obs.get(label_key).unwrap() {
        sof_io::Column::Categorical { codes, categories, .. } => {
            (codes.iter().map(|&c| c as u32).collect(), categories.len())
        }
        other => panic!("{label_key} is {}", other.kind()),
    };
    Some((SectionedPoints::new(xy, &section).unwrap(), labels, n))
}

fn brute_neighbors(p: &SectionedPoints, i: usize, r: f64) -> Vec<u32> {
    let [x, y] = p.xy()[i];
    (0..p.len())
        .filter(|&j| j != i && p.sections()[j] == p.sections()[i])
        .filter(|&j| {
            let [a, b] = p.xy()[j];
            (x - a) * (x - a) + (y - b) * (y - b) <= r * r
        })
        .map(|j| j as u32)
        .collect()
}

fn check_against_brute_force(p: &SectionedPoints, labels: &[u32], n_labels: usize, radii: &[f64]) {
    let all = targets(p, labels, n_labels, radii).unwrap();
    for t in &all {
        let g = RadiusGraph::build(p, t.radius).unwrap();
        let mut edges = 0;
        for i in 0..p.len() {
            let want = brute_neighbors(p, i, t.radius);
            assert_eq!(g.neighbors(i), &want[..], "cell {i}, radius {}", t.radius);
            assert_eq!(t.density[i] as usize, want.len());
            let mut counts = vec![0u32; n_labels];
            for &j in &want {
                counts[labels[j as usize] as usize] += 1;
            }
            assert_eq!(t.composition.row(i), &counts[..], "composition of cell {i}");
            edges += want.len();
        }
        assert_eq!(g.n_edges(), edges);
        assert!(edges > 0, "radius {} gives some edges", t.radius);
    }
}

#[test]
fn starmap_per_section_equals_brute_force() {
    let Some((p, labels, n)) = load("starmap_mpfc.h5ad", Some("section"), "cell_type") else { return };
    assert_eq!(p.n_sections(), 3);
    check_against_brute_force(&p, &labels, n, &[150.0, 400.0, 800.0, 1500.0]);
    // Sections overlap in pixel space, so a graph that ignored sections would differ.
    let pooled = SectionedPoints::single_section(p.xy().to_vec()).unwrap();
    assert_ne!(RadiusGraph::build(&pooled, 800.0).unwrap().n_edges(), RadiusGraph::build(&p, 800.0).unwrap().n_edges());
}

#[test]
fn osmfish_equals_brute_force() {
    let Some((p, labels, n)) = load("osmfish_sscortex.h5ad", None, "Region") else { return };
    check_against_brute_force(&p, &labels, n, &[400.0, 800.0, 1500.0]);
}

#[test]
fn knn_equals_brute_force() {
    let Some((p, _, _)) = load("starmap_mpfc.h5ad", Some("section"), "cell_type") else { return };
    let g = KnnGraph::build(&p, 6).unwrap();
    for i in (0..p.len()).step_by(7) {
        let [x, y] = p.xy()[i];
        let mut cand: Vec<(f64, u32)> = (0..p.len())
            .filter(|&j| j != i && p.sections()[j] == p.sections()[i])
            .map(|j| {
                let [a, b] = p.xy()[j];
                ((x - a).powi(2) + (y - b).powi(2), j as u32)
            })
            .collect();
        cand.sort_by(|a, b| a.0.total_cmp(&b.0));
        let want: Vec<f64> = cand[..6].iter().map(|c| c.0).collect();
        let got: Vec<f64> = g
            .neighbors(i)
            .iter()
            .map(|&j| {
                let [a, b] = p.xy()[j as usize];
                (x - a).powi(2) + (y - b).powi(2)
            })
            .collect();
        assert_eq!(got, want, "cell {i}: distances of the 6 nearest");
    }
}

/// The reference's 5/10/20/50/100 scheme: the radius found gives the target mean neighbour
/// count within 2% on every shared spatial dataset.
#[test]
fn radius_selection_hits_targets() {
    for (file, section) in [
        ("starmap_mpfc.h5ad", Some("section")),
        ("osmfish_sscortex.h5ad", None),
        ("smfish_visp.h5ad", None),
        ("merfish_preoptic.h5ad", None),
        ("merfish_mop_unlabeled.h5ad", Some("slice")),
        ("cosmx_human_lung.h5ad", Some("fov")),
        ("xenium_mousebrain_subset.h5ad", None),
    ] {
        let Some(shared) = shared() else { return };
        let a = sof_io::h5ad::read_h5ad(shared.join("data").join(file)).unwrap();
        let xy: Vec<[f64; 2]> = a.spatial().unwrap().rows().into_iter().map(|r| [r[0], r[1]]).collect();
        let sec: Vec<u32> = match section {
            Some(k) => a
                .obs
                .get(k)
                .unwrap()
                .labels()
                .iter()
                .map(|l| l.as_ref().unwrap().bytes().fold(0u32, |h, b| h.wrapping_mul(31) ^ u32::from(b)))
                .collect(),
            None => vec![0; xy.len()],
        };
        let p = SectionedPoints::new(xy, &sec).unwrap();
        for target in [5.0, 10.0, 20.0, 50.0, 100.0] {
            let s = radius_for_mean_neighbors(&p, target, 0.01).unwrap();
            assert!(
                (s.mean_neighbors - target).abs() <= 0.02 * target,
                "{file}: target {target}, got {} at r = {}",
                s.mean_neighbors,
                s.radius
            );
            let g = RadiusGraph::build(&p, s.radius).unwrap();
            assert!((g.mean_degree() - s.mean_neighbors).abs() < 1e-9, "reported mean is the graph's");
        }
    }
}

#[test]
fn proportions_and_isolated_cells() {
    let xy = vec![[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [10.0, 10.0]];
    let p = SectionedPoints::single_section(xy).unwrap();
    let g = RadiusGraph::build(&p, 1.0).unwrap();
    assert_eq!(g.degrees(), vec![2, 1, 1, 0]);
    let c = Composition::from_graph(&g, &[0, 1, 1, 0], 2).unwrap();
    assert_eq!(c.row(0), &[0, 2]);
    assert_eq!(c.proportions(), vec![0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0], "no neighbours: all zeros");
}

/// each_section splits the cells by section (global indices ascending, in section order) with
/// their own positions, and a graph of one section equals that section's part of the whole
/// graph.
#[test]
fn each_section_is_its_part_of_the_whole() {
    let xy: Vec<[f64; 2]> = (0..30).map(|i| [((i * 7) % 13) as f64, ((i * 5) % 11) as f64 * 0.9]).collect();
    let sec: Vec<u32> = (0..30).map(|i| [9, 2, 2, 5][i % 4]).collect();
    let p = SectionedPoints::new(xy.clone(), &sec).unwrap();
    let whole = KnnGraph::build(&p, 3).unwrap();
    let parts: Vec<(Vec<u32>, SectionedPoints)> = p.each_section().map(|(c, s)| (c.to_vec(), s)).collect();
    assert_eq!(parts.len(), 3);
    let mut seen: Vec<u32> = parts.iter().flat_map(|(c, _)| c.clone()).collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..30).collect::<Vec<u32>>(), "every cell once");
    for (cells, one) in &parts {
        assert!(cells.windows(2).all(|w| w[0] < w[1]) && one.n_sections() == 1);
        assert!(cells.iter().all(|&c| p.sections()[c as usize] == p.sections()[cells[0] as usize]));
        assert!(cells.iter().enumerate().all(|(j, &c)| one.xy()[j] == xy[c as usize]));
        let g = KnnGraph::build(one, 3).unwrap();
        for (j, &c) in cells.iter().enumerate() {
            let mapped: Vec<u32> = g.neighbors(j).iter().map(|&l| cells[l as usize]).collect();
            assert_eq!(mapped, whole.neighbors(c as usize), "cell {c}");
        }
    }
    // Section order is ascending id order (2, 5, 9), as sections() numbers them.
    assert_eq!(parts[0].0[0], 1);
    assert_eq!(parts[1].0[0], 3);
    assert_eq!(parts[2].0[0], 0);
}

#[test]
fn bad_inputs_are_errors() {
    let e = SectionedPoints::single_section(vec![[0.0, 0.0], [f64::NAN, 1.0]]).unwrap_err();
    assert!(matches!(e, SpatialError::NonFinite { cell: 1, .. }), "{e}");
    assert!(e.to_string().contains("cell 1 has a non-finite coordinate"));
    let p = SectionedPoints::single_section(vec![[0.0, 0.0], [1.0, 1.0]]).unwrap();
    assert_eq!(RadiusGraph::build(&p, -1.0).unwrap_err(), SpatialError::BadRadius(-1.0));
    assert!(matches!(RadiusGraph::build(&p, f64::NAN).unwrap_err(), SpatialError::BadRadius(_)));
    assert_eq!(
        Composition::from_graph(&RadiusGraph::build(&p, 2.0).unwrap(), &[0, 5], 2).unwrap_err(),
        SpatialError::LabelRange { cell: 1, label: 5, n: 2 }
    );
    assert!(matches!(radius_for_mean_neighbors(&p, 5.0, 0.01).unwrap_err(), SpatialError::BadTarget(_)));
    assert!(matches!(SectionedPoints::new(vec![[0.0, 0.0]], &[0, 1]).unwrap_err(), SpatialError::Length { .. }));
}

/// On the synthetic tissue, k-means on neighbourhood composition recovers the focal niche:
/// most tumour-core cells share one cluster that few other cells join.
#[test]
fn niches_recover_the_synthetic_tumour_core() {
    use sof_synth::{Generator, Sample, SynthConfig};
    let mut cfg = SynthConfig::default();
    cfg.cells_per_section = 6_000;
    let g = Generator::new(cfg).unwrap();
    let b = g.generate(Sample::Section(0));
    let xy: Vec<[f64; 2]> = b.truth.iter().map(|t| [t.x_um, t.y_um]).collect();
    let p = SectionedPoints::single_section(xy).unwrap();
    let labels: Vec<u32> = b.truth.iter().map(|t| u32::from(t.cell_type)).collect();
    let n_types = g.cell_type_names().len();
    let r = radius_for_mean_neighbors(&p, 20.0, 0.01).unwrap();
    let comp = Composition::from_graph(&RadiusGraph::build(&p, r.radius).unwrap(), &labels, n_types).unwrap();
    let km = niches(&comp.proportions(), n_types, 6, 42).unwrap();
    assert_eq!(km, niches(&comp.proportions(), n_types, 6, 42).unwrap(), "deterministic for a seed");
    let core = g.niche_names().iter().position(|n| n == "tumor_core").unwrap() as u16;
    let core_cells: Vec<usize> = (0..b.truth.len()).filter(|&i| b.truth[i].niche == core).collect();
    let mut votes = vec![0usize; 6];
    for &i in &core_cells {
        votes[km.labels[i] as usize] += 1;
    }
    let (best, &hits) = votes.iter().enumerate().max_by_key(|v| v.1).unwrap();
    assert!(hits as f64 > 0.8 * core_cells.len() as f64, "core cells split: {votes:?}");
    let members = km.labels.iter().filter(|&&l| l as usize == best).count();
    assert!((hits as f64) > 0.6 * members as f64, "the core cluster is mostly core cells: {hits} of {members}");
}
