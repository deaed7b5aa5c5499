use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use sof_io::CsrMatrix;
use sof_io::genes::{GeneTables, Species, Vocabulary};
use sof_tokenize::{GeneMap, MeansAccumulator, Modality, Mode, Scratch, TechMeans, Tokenizer, TokenizerConfig};

use crate::shared;

/// The straightforward implementation: densify the cell over the whole vocabulary, scale,
/// divide, argsort. Independent of the tokenizer's sparse code path.
fn dense_tokens(counts: &[f32], map: &[Option<u32>], means: &[f64], cfg: &TokenizerConfig) -> Vec<u32> {
    let mut v = vec![0f64; means.len()];
    for (j, &c) in counts.iter().enumerate() {
        if let Some(g) = map[j] {
            v[g as usize] += f64::from(c);
        }
    }
    let total: f64 = v.iter().sum();
    if total == 0.0 {
        return Vec::new();
    }
    let mut ranked = Vec::new();
    for g in 0..means.len() {
        let mut m = means[g];
        if cfg.mode == Mode::Fixed && (m.is_nan() || m < 0.0) {
            continue;
        }
        if m.is_nan() {
            m = 0.0;
        }
        if cfg.round_means {
            m = (m + 0.5).floor();
        }
        if m == 0.0 {
            m = 1.0;
        }
        let x = v[g] * (cfg.target_sum / total) / m;
        if x != 0.0 {
            ranked.push((x, g as u32));
        }
    }
    ranked.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap().then(a.1.cmp(&b.1)));
    ranked.into_iter().take(cfg.context_length - 3).map(|(_, g)| g + 30).collect()
}

fn dense_row(x: &CsrMatrix, i: usize) -> Vec<f32> {
    let mut d = vec![0f32; x.n_cols()];
    let (c, v) = x.row(i);
    for (&j, &val) in c.iter().zip(v) {
        d[j as usize] = val;
    }
    d
}

fn check_matrix(x: &CsrMatrix, map: &[Option<u32>], means: &TechMeans, cfg: &TokenizerConfig, what: &str) -> usize {
    let tok = Tokenizer::new(cfg.clone(), means, Species::Mouse, 7, Modality::Spatial);
    let gm = GeneMap::new(map.to_vec());
    let columns = tok.for_columns(&gm);
    let mut scratch = Scratch::default();
    let mut tokens = 0;
    for i in 0..x.n_rows() {
        let (c, v) = x.row(i);
        let got = tok.tokenize(&gm, c, v, &mut scratch).genes;
        let want = dense_tokens(&dense_row(x, i), map, &means.values, cfg);
        assert_eq!(got, want, "{what}: cell {i}");
        // The corpus builder's path (one table over the columns) gives the same tokens.
        assert_eq!(columns.tokenize(c, v, &mut scratch).genes, want, "{what}: cell {i}, column path");
        tokens += got.len();
    }
    tokens
}

/// On every shared .h5ad, in both modes, the tokens equal the dense implementation's.
#[test]
fn shared_datasets_equal_the_dense_implementation() {
    let Some(shared) = shared() else { return };
    let vocab = Vocabulary::load_tsv(shared.join("nicheformer/vocab.tsv")).unwrap();
    let tables = GeneTables::load(shared.join("genes")).unwrap();
    let manifests =
        sof_io::manifest::load_manifests(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets"))
            .unwrap();
    let mut files = 0;
    for m in manifests.iter().filter(|m| m.file.ends_with(".h5ad")) {
        let a = sof_io::h5ad::read_h5ad(shared.join("data").join(&m.file)).unwrap();
        let species = if m.species == "human" { Species::Human } else { Species::Mouse };
        let map = tables.align(a.var_names(), species, &vocab).indices();
        let n = a.n_obs().min(600);
        let x = a.x.slice_rows(0..n);
        let means = match m.technology.as_str() {
            t @ ("merfish" | "xenium" | "cosmx" | "dissociated") => {
                TechMeans::load_tsv(&shared.join(format!("nicheformer/tech_means/{t}.tsv")), &vocab).unwrap()
            }
            _ => {
                let mut acc = MeansAccumulator::new(vocab.len());
                acc.add(&a.x, &GeneMap::new(map.clone()));
                acc.finish()
            }
        };
        for mode in [Mode::Fixed, Mode::Nicheformer] {
            let cfg = TokenizerConfig { mode, ..TokenizerConfig::default() };
            let t = check_matrix(&x, &map, &means, &cfg, &format!("{} {mode:?}", m.name));
            assert!(t > 0, "{}: some tokens", m.name);
        }
        files += 1;
    }
    assert_eq!(files, 10);
}

/// Random sparse matrices: ties, collisions, unmapped genes, NaN / negative / zero / fractional
/// means, truncation, both modes, with and without rounding.
#[test]
fn random_sparse_matrices_equal_the_dense_implementation() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(11);
    let special = [f64::NAN, -1.7, -0.4, 0.0, 0.3, 0.5, 1.5, 2.5, 7.0];
    for case in 0..400 {
        let (n, p, v) = (rng.random_range(1..15), rng.random_range(1..40), rng.random_range(1..60));
        let mut dense = vec![0f32; n * p];
        for x in dense.iter_mut() {
            if rng.random::<f64>() < 0.4 {
                *x = if rng.random::<f64>() < 0.8 {
                    rng.random_range(1..6) as f32
                } else {
                    rng.random::<f32>() * 3.0 + 0.01
                };
            }
        }
        let x = CsrMatrix::from_dense(n, p, &dense);
        let map: Vec<Option<u32>> =
            (0..p).map(|_| (rng.random::<f64>() < 0.85).then(|| rng.random_range(0..v) as u32)).collect();
        let means = TechMeans {
            values: (0..v)
                .map(|_| {
                    if rng.random::<f64>() < 0.5 {
                        special[rng.random_range(0..special.len())]
                    } else {
                        rng.random::<f64>() * 10.0
                    }
                })
                .collect(),
        };
        let cfg = TokenizerConfig {
            mode: if case % 2 == 0 { Mode::Fixed } else { Mode::Nicheformer },
            context_length: rng.random_range(4..25),
            round_means: case % 3 != 0,
            ..TokenizerConfig::default()
        };
        check_matrix(&x, &map, &means, &cfg, &format!("case {case}"));
    }
}

/// Means from data equal the definition computed densely; files round-trip; a mean vector for
/// another vocabulary is refused.
#[test]
fn technology_means() {
    let Some(shared) = shared() else { return };
    let vocab = Vocabulary::load_tsv(shared.join("nicheformer/vocab.tsv")).unwrap();
    let tables = GeneTables::load(shared.join("genes")).unwrap();
    let a = sof_io::h5ad::read_h5ad(shared.join("data/starmap_mpfc.h5ad")).unwrap();
    let map = tables.align(a.var_names(), Species::Mouse, &vocab).indices();
    let mut acc = MeansAccumulator::new(vocab.len());
    // Two blocks, as when several files of one technology are combined.
    acc.add(&a.x.slice_rows(0..1000), &GeneMap::new(map.clone()));
    acc.add(&a.x.slice_rows(1000..a.n_obs()), &GeneMap::new(map.clone()));
    let means = acc.finish();
    let mut sum = vec![0f64; vocab.len()];
    let mut cnt = vec![0u64; vocab.len()];
    for i in 0..a.n_obs() {
        let d = dense_row(&a.x, i);
        let total: f64 = d.iter().zip(&map).filter(|(_, m)| m.is_some()).map(|(&c, _)| f64::from(c)).sum();
        for (j, &c) in d.iter().enumerate() {
            if let (Some(g), true) = (map[j], c > 0.0) {
                sum[g as usize] += f64::from(c) / total * 1e4;
                cnt[g as usize] += 1;
            }
        }
    }
    for g in 0..vocab.len() {
        let want = if cnt[g] == 0 { f64::NAN } else { sum[g] / cnt[g] as f64 };
        let got = means.values[g];
        assert!(
            (want.is_nan() && got.is_nan()) || (got - want).abs() <= 1e-9 * want.abs().max(1.0),
            "gene {g}: {got} vs {want}"
        );
    }
    assert_eq!(means.n_measured(), 160, "the 160 mapped STARmap genes are measured");
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("starmap.tsv");
    means.save_tsv(&p, &vocab).unwrap();
    let back = TechMeans::load_tsv(&p, &vocab).unwrap();
    assert!(back.values.iter().zip(&means.values).all(|(a, b)| (a.is_nan() && b.is_nan()) || a == b));
    let other = Vocabulary::new(vec!["ENSG00000000005".into(), "ENSG00000000003".into()]).unwrap();
    let e = TechMeans::load_tsv(&p, &other).unwrap_err().to_string();
    assert!(e.contains("vocabulary mismatch") && e.contains("starmap.tsv"), "{e}");
}

#[test]
fn unknown_context_values_are_errors() {
    let t = sof_tokenize::ContextTable::default();
    let e = t.get("visium_hd").unwrap_err().to_string();
    assert!(e.contains("unknown technology 'visium_hd'") && e.contains("merfish") && e.contains("19..=29"), "{e}");
    assert_eq!(t.get("Xenium").unwrap().token, 9);
    assert!(sof_tokenize::context::parse_species("zebrafish").unwrap_err().to_string().contains("human or mouse"));
    assert!(Modality::parse("bulk").is_err());
    let extended = sof_tokenize::ContextTable::with_config(
        "[technology.stereoseq]\ntoken = 21\nmeans = \"stereoseq\"\n",
        "ctx.toml",
    )
    .unwrap();
    assert_eq!(extended.get("stereoseq").unwrap().token, 21);
    let e = sof_tokenize::ContextTable::with_config("[technology.stereoseq]\ntoken = 3\nmeans = \"x\"\n", "ctx.toml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("19..=29") && e.contains("ctx.toml"), "{e}");
    let e = t.get("visium_hd").unwrap_err().to_string();
    assert!(e.contains("--new-technology"), "the one-flag way is named: {e}");
}

/// `--new-technology`: the lowest token in 19..=29 that no technology holds (config entries
/// included), a known name refused, a full table refused; a checkpoint's recorded technologies
/// extend a table and must agree with it.
#[test]
fn new_technologies_take_the_lowest_free_token() {
    use sof_tokenize::ContextTable;
    let mut t = ContextTable::default();
    assert_eq!(t.add_new("Visium_HD").unwrap(), 20, "19 is iss");
    assert_eq!(t.get("visium_hd").unwrap().means, "visium_hd");
    assert_eq!(t.add_new("slideseq").unwrap(), 21);
    let e = t.add_new("merfish").unwrap_err().to_string();
    assert!(e.contains("already a known technology (token 7)") && e.contains("drop --new-technology"), "{e}");
    let mut c = ContextTable::with_config("[technology.stereoseq]\ntoken = 20\nmeans = \"s\"\n", "ctx.toml").unwrap();
    assert_eq!(c.add_new("visium_hd").unwrap(), 21, "the config's 20 is taken");
    for i in 0..8 {
        c.add_new(&format!("t{i}")).unwrap();
    }
    let e = c.add_new("one_too_many").unwrap_err().to_string();
    assert!(e.contains("19..=29") && e.contains("taken"), "{e}");

    let recorded = std::collections::BTreeMap::from([("visium_hd".to_owned(), 23)]);
    let table = ContextTable::default().with_recorded(&recorded, "run/model").unwrap();
    assert_eq!(table.get("visium_hd").unwrap().token, 23, "the model's token, not the next free one");
    let mixed = std::collections::BTreeMap::from([("Visium_HD".to_owned(), 23)]);
    let table = ContextTable::default().with_recorded(&mixed, "run/model").unwrap();
    assert_eq!(table.get("Visium_HD").unwrap().token, 23, "a recorded name of any case is found");
    let clash = ContextTable::with_config("[technology.visium_hd]\ntoken = 20\nmeans = \"v\"\n", "ctx.toml").unwrap();
    let e = clash.with_recorded(&recorded, "run/model").unwrap_err().to_string();
    assert!(e.contains("run/model") && e.contains("token 23") && e.contains("token 20"), "{e}");
    assert!(ContextTable::is_builtin("dissociated", 11) && !ContextTable::is_builtin("visium_hd", 20));
    assert!(!ContextTable::is_builtin("merfish", 20), "a builtin name on another token is recorded");
}
