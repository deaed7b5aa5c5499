//! End-to-end runs of the `sof` command line, in-process.

#![allow(clippy::print_stderr)] // tests say when they skip for lack of shared data

use std::path::Path;

fn sof(args: &[&str]) -> anyhow::Result<()> {
    sof_cli::run(std::iter::once("sof").chain(args.iter().copied()))
}

fn summary(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap()
}

/// The main job runs from nothing through pretraining, probes, mapping and the report, and is
/// reproducible by seed: the same data, the same model, the same metrics.
#[test]
fn demo_runs_and_is_reproducible() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    for d in [&a, &b] {
        sof(&[
            "-q",
            "demo",
            "--cells",
            "3000",
            "--seed",
            "5",
            "--steps",
            "12",
            "--preset",
            "tiny",
            "--context-length",
            "64",
            "--output",
            d.path().to_str().unwrap(),
        ])
        .unwrap();
    }
    let (sa, sb) = (summary(a.path()), summary(b.path()));
    assert_eq!(sa["labels"], sb["labels"], "same seed, same ground truth");
    assert_eq!(sa["spatial"].as_array().unwrap().len(), 2);
    for (x, y) in sa["spatial"].as_array().unwrap().iter().zip(sb["spatial"].as_array().unwrap()) {
        assert_eq!(x["niche_ari"], y["niche_ari"], "same seed, same niches");
        assert_eq!(x["radius"], y["radius"]);
        assert!(x["niche_ari"].as_f64().unwrap() > 0.1, "niches carry the true structure: {x}");
    }
    let corpora: Vec<u64> = sa["corpora"].as_array().unwrap().iter().map(|c| c["cells"].as_u64().unwrap()).collect();
    assert_eq!(corpora.iter().sum::<u64>(), 3000, "every synthetic cell is tokenized");
    assert_eq!(sa["files"].as_array().unwrap().len(), 3);
    for f in ["spatial_merfish.h5ad", "spatial_xenium.h5ad", "dissociated.h5ad"] {
        let (x, y) = (
            std::fs::read(a.path().join("data").join(f)).unwrap(),
            std::fs::read(b.path().join("data").join(f)).unwrap(),
        );
        let (ra, rb) = (
            sof_io::h5ad::read_h5ad(a.path().join("data").join(f)).unwrap(),
            sof_io::h5ad::read_h5ad(b.path().join("data").join(f)).unwrap(),
        );
        assert_eq!(ra, rb, "{f}: identical data");
        assert!(!x.is_empty() && !y.is_empty());
    }
    let layers = &sa["labels"]["spatial_merfish.h5ad"]["layer"];
    assert_eq!(layers.as_object().unwrap().len(), 6, "all six layers present: {layers}");

    // Pretraining, probes and mapping: present and identical across the two runs.
    assert_eq!(sa["pretrain"]["steps_done"], 12);
    assert!(sa["pretrain"]["final_validation_loss"].as_f64().unwrap().is_finite());
    assert_eq!(
        sa["pretrain"]["final_validation_loss"], sb["pretrain"]["final_validation_loss"],
        "same seed, same model"
    );
    assert_eq!(sa["probes"], sb["probes"], "same seed, same probe metrics");
    assert_eq!(sa["mapping"], sb["mapping"]);

    // The embedding view: every cell in one UMAP, the same for the same seed; the synthetic
    // layers separate in the picture of the niche embedding far above random mixing, and batch
    // mixing is scored for the model and for PCA alike.
    assert_eq!(sa["view"]["mixing"], sb["view"]["mixing"], "same seed, same view");
    assert_eq!(sa["view"]["cells"], 3000);
    let mix = |label: &str, rep: &str| {
        sa["view"]["mixing"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["label"] == label && m["representation"] == rep)
            .cloned()
            .unwrap_or_else(|| panic!("no purity of {label} in {rep}: {}", sa["view"]))
    };
    let f = |m: &serde_json::Value, k: &str| m[k].as_f64().unwrap();
    let layer = mix("layer", "X_sof_niche");
    // After 12 steps of the tiny model (measured: 0.48 in the embedding, 0.38 in 2-D, random 0.20).
    assert!(f(&layer, "umap_observed") > f(&layer, "expected") + 0.12, "layers separate in 2-D: {layer}");
    assert!(f(&layer, "observed") > f(&layer, "expected") + 0.2, "{layer}");
    for label in ["modality", "technology", "layer", "cell_type"] {
        for rep in ["X_sof", "PCA"] {
            let m = mix(label, rep);
            assert!(
                f(&m, "expected") > 0.0 && f(&m, "expected") < 1.0 && (0.0..=1.0).contains(&f(&m, "observed")),
                "{m}"
            );
        }
    }
    let view = sof_io::h5ad::read_h5ad(a.path().join("view.h5ad")).unwrap();
    let modality = view.obs.get("modality").unwrap().labels();
    let (xy, niche) = (&view.obsm["X_umap"], &view.obsm["X_umap_niche"]);
    assert_eq!(xy.dim(), (3000, 2));
    assert!(xy.iter().all(|v| v.is_finite()));
    for (i, m) in modality.iter().enumerate() {
        assert_eq!(niche[[i, 0]].is_finite(), m.as_deref() == Some("spatial"), "cell {i}: {m:?}");
    }
    if let Some(py) = std::env::var_os("SOF_PYTHON") {
        // scanpy opens the view as its own: categorical labels, NaN where a cell has no niche
        // embedding, sc.pl.umap draws it by technology.
        let (path, png) = (a.path().join("view.h5ad"), a.path().join("view_umap.png"));
        let code = format!(
            "import matplotlib; matplotlib.use('Agg'); import numpy as np; import scanpy as sc; \
             a = sc.read_h5ad({path:?}); assert a.shape[0] == 3000 and a.obs['technology'].dtype == 'category'; \
             assert np.isnan(a.obsm['X_umap_niche'][:, 0]).sum() == (a.obs['modality'] == 'dissociated').sum() > 0; \
             ax = sc.pl.umap(a, color='technology', show=False); ax.figure.savefig({png:?})"
        );
        let o = std::process::Command::new(py).args(["-c", &code]).output().unwrap();
        assert!(o.status.success(), "scanpy: {}", String::from_utf8_lossy(&o.stderr));
        assert!(std::fs::metadata(&png).unwrap().len() > 1000, "sc.pl.umap drew {png:?}");
    }
    for task in ["layer", "niche", "density", "composition"] {
        let per = sa["probes"][task].as_object().unwrap_or_else(|| panic!("probe {task}: {}", sa["probes"]));
        assert!(per.keys().any(|k| k.starts_with("embedding")) && per.contains_key("PCA-50"), "{task}: {per:?}");
    }
    let f1 = sa["probes"]["layer"]["PCA-50"]["macro_f1"].as_f64().unwrap();
    assert!(f1 > 0.5, "the PCA baseline recovers the synthetic layers on held-out sections: {f1}");
    assert!(sa["mapping"]["layer_accuracy"].as_f64().unwrap() >= 0.0);
    let as_reference = sa["mapping"]["layer_accuracy_as_reference"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&as_reference), "{}", sa["mapping"]);
    // The placement baseline: PCA-50 of the genes the dissociated and MERFISH samples share.
    let pca = sa["mapping"]["layer_accuracy_pca"].as_f64().unwrap();
    assert!(pca > 0.3, "expression of the shared genes places the dissociated cells: {}", sa["mapping"]);
    assert_eq!(sa["mapping"]["pca_shared_genes"].as_f64(), Some(400.0), "the MERFISH-like panel");
    // Centred on its own mean, the expression of the shared genes loses the technology's shift.
    let pca_centered = sa["mapping"]["layer_accuracy_pca_centered"].as_f64().unwrap();
    assert!(pca_centered > pca, "centring each file helps the expression baseline: {}", sa["mapping"]);
    assert!((0.0..=1.0).contains(&sa["mapping"]["layer_accuracy_centered"].as_f64().unwrap()));
    let report = a.path().join("report/index.html");
    let html = std::fs::read_to_string(&report).unwrap();
    assert!(html.contains("data:image/png;base64,") && html.contains("PCA-50"));
    for f in [
        "loss.png",
        "layer_map.png",
        "niche_map.png",
        "layer_confusion.png",
        "density.png",
        "dissociated_placement.png",
        "umap_modality.png",
        "umap_technology.png",
        "umap_layer.png",
        "umap_cell_type.png",
        "umap_niche.png",
    ] {
        assert!(a.path().join("report").join(f).exists(), "{f}");
    }
    assert!(html.contains("How mixed the embedding is"), "the purity table is in the report");
    assert!(html.contains("Tokenized as the reference"), "the report gives both placements");
    assert!(html.contains("sof map --center-each"), "and the centred one");
    browser_check(&report, 11);
}

/// Opens the report in headless Chromium: the page loads without console errors and every
/// image decodes (the page's own script counts them); a screenshot is taken. Skips with a note
/// where Chromium is missing, except in CI (SOF_REQUIRE_BROWSER=1), which installs it.
fn browser_check(page: &Path, images: usize) {
    let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].into_iter().find(|p| Path::new(p).exists());
    let Some(chromium) = chromium else {
        assert!(
            std::env::var_os("SOF_REQUIRE_BROWSER").is_none(),
            "Chromium is required (SOF_REQUIRE_BROWSER) but missing"
        );
        eprintln!("skipping the browser check: no Chromium (apt-get install chromium)");
        return;
    };
    let profile = tempfile::tempdir().unwrap();
    let shot = page.with_file_name("screenshot.png");
    let base = |extra: &[&str]| {
        let mut c = std::process::Command::new(chromium);
        c.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(format!("file://{}", page.display()));
        c.output().unwrap()
    };
    let dom = base(&["--dump-dom"]);
    let text = String::from_utf8_lossy(&dom.stdout);
    assert!(
        text.contains(&format!("data-images=\"{images}\"")),
        "not every image rendered: {}",
        &text[..text.len().min(300)]
    );
    let log = String::from_utf8_lossy(&dom.stderr);
    let console_errors: Vec<&str> =
        log.lines().filter(|l| l.contains("CONSOLE") && (l.contains("ERROR") || l.contains("Uncaught"))).collect();
    assert!(console_errors.is_empty(), "console errors: {console_errors:?}");
    let out = base(&["--window-size=1200,2400", &format!("--screenshot={}", shot.display())]);
    assert!(out.status.success());
    let png = std::fs::read(&shot).unwrap();
    assert!(png.len() > 50_000 && &png[1..4] == b"PNG", "screenshot of the report: {} bytes", png.len());
}

#[test]
fn synth_honours_sizes_and_reports_bad_flags() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().to_str().unwrap();
    sof(&["-q", "synth", "--cells", "1200", "--sections", "2", "--dissociated-cells", "200", "--output", out]).unwrap();
    // Two sections: both measured merfish-like (the built-in tissue's third section is xenium-like).
    let m = sof_io::h5ad::read_h5ad(d.path().join("spatial_merfish.h5ad")).unwrap();
    assert_eq!(m.n_obs(), 1000);
    assert_eq!(m.obs.get("section").unwrap().value_counts().into_values().collect::<Vec<_>>(), vec![500, 500]);
    assert!(!d.path().join("spatial_xenium.h5ad").exists());
    assert_eq!(sof_io::h5ad::read_h5ad(d.path().join("dissociated.h5ad")).unwrap().n_obs(), 200);
    let e = sof(&["synth", "--sections", "0", "--output", out]).unwrap_err().to_string();
    assert!(e.contains("--sections"), "{e}");
    let cfg = d.path().join("bad.toml");
    std::fs::write(&cfg, "sections = \"three\"\n").unwrap();
    let e = format!("{:#}", sof(&["synth", "--config", cfg.to_str().unwrap(), "--output", out]).unwrap_err());
    assert!(e.contains("bad.toml") && e.contains("sections"), "{e}");
}

/// `sof spatial --output` onto a file sof did not write (the user's data) is refused and leaves
/// it as it was; `--force` replaces it, and a rerun onto sof's own output needs no flag.
#[test]
fn outputs_replace_foreign_files_only_with_force() {
    let d = tempfile::tempdir().unwrap();
    let p = |s: &str| d.path().join(s).to_str().unwrap().to_owned();
    sof(&["-q", "synth", "--cells", "400", "--sections", "1", "--dissociated-cells", "0", "--output", &p("data")])
        .unwrap();
    let input = p("data/spatial_merfish.h5ad");
    // Someone's data, written without any sof_ entry in uns.
    let mut theirs = sof_io::h5ad::read_h5ad(&input).unwrap();
    theirs.obsm.clear();
    sof_io::h5ad::write_h5ad(p("theirs.h5ad"), &theirs, &Default::default()).unwrap();
    let before = std::fs::read(p("theirs.h5ad")).unwrap();
    let spatial = |extra: &[&str]| {
        let mut args = vec!["-q", "spatial", "--input", &input, "--mean-neighbors", "8", "--output"];
        let out = p("theirs.h5ad");
        args.push(&out);
        args.extend_from_slice(extra);
        sof(&args).map_err(|e| format!("{e:#}"))
    };
    let err = spatial(&[]).unwrap_err();
    assert!(err.contains("theirs.h5ad") && err.contains("--force"), "{err}");
    assert_eq!(std::fs::read(p("theirs.h5ad")).unwrap(), before, "the refused file is untouched");
    spatial(&["--force"]).unwrap();
    assert!(sof_io::h5ad::written_by_sof(p("theirs.h5ad")));
    spatial(&[]).unwrap();
}

#[test]
fn inspect_reports_missing_files_and_columns() {
    let d = tempfile::tempdir().unwrap();
    let missing = d.path().join("absent.h5ad");
    let e = format!("{:#}", sof(&["inspect", missing.to_str().unwrap()]).unwrap_err());
    assert!(e.contains("absent.h5ad"), "{e}");
    sof(&["-q", "synth", "--cells", "600", "--output", d.path().to_str().unwrap()]).unwrap();
    let f = d.path().join("spatial_merfish.h5ad");
    sof(&["inspect", f.to_str().unwrap(), "--label", "layer"]).unwrap();
    let e = format!("{:#}", sof(&["inspect", f.to_str().unwrap(), "--label", "region"]).unwrap_err());
    assert!(e.contains("no column 'region'") && e.contains("layer"), "{e}");
}

/// `sof spatial` on a synthetic tissue: composition rows sum to 1 (or 0 when isolated), density
/// is the neighbour count, the radius is recorded; bad inputs name the file and the problem.
#[test]
fn spatial_targets_and_their_errors() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_str().unwrap();
    sof(&["-q", "synth", "--cells", "3000", "--output", dir]).unwrap();
    let input = d.path().join("spatial_merfish.h5ad");
    let out = d.path().join("targets.h5ad");
    let args = |extra: &[&str]| {
        let mut v = vec![
            "-q",
            "spatial",
            "--input",
            input.to_str().unwrap(),
            "--cell-type-key",
            "cell_type",
            "--output",
            out.to_str().unwrap(),
        ];
        v.extend_from_slice(extra);
        v.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let run = |a: Vec<String>| sof_cli::run(std::iter::once("sof".to_owned()).chain(a));
    run(args(&["--section-key", "section", "--mean-neighbors", "10", "--niches", "4"])).unwrap();
    let r = sof_io::h5ad::H5adReader::open(&out).unwrap();
    let comp = r.obsm("sof_composition").unwrap();
    let a = r.read().unwrap();
    let density = a.obs.get("sof_density").unwrap().as_f64().unwrap();
    let mean = density.iter().sum::<f64>() / density.len() as f64;
    assert!((mean - 10.0).abs() < 0.1, "mean neighbours {mean}");
    for (row, &deg) in comp.rows().into_iter().zip(&density) {
        let s: f64 = row.sum();
        assert!(if deg == 0.0 { s == 0.0 } else { (s - 1.0).abs() < 1e-5 }, "row sum {s} with {deg} neighbours");
    }
    assert_eq!(comp.ncols(), 12, "one column per cell type");
    assert_eq!(a.obs.get("sof_niche").unwrap().value_counts().len(), 4);
    assert_eq!(a.x, sof_io::h5ad::read_h5ad(&input).unwrap().x, "X is unchanged");

    let err = |a: Vec<String>| format!("{:#}", run(a).unwrap_err());
    let e = err(args(&["--section-key", "slice", "--radius", "20"]));
    assert!(e.contains("no column 'slice'") && e.contains("section"), "{e}");
    let e = err(args(&["--radius", "-5"]));
    assert!(e.contains("--radius must be a number > 0"), "{e}");
    // NaN coordinates: the error names the file and the cell.
    let mut a = sof_io::h5ad::read_h5ad(&input).unwrap();
    a.obsm.get_mut("spatial").unwrap()[[5, 1]] = f64::NAN;
    let nan_file = d.path().join("nan.h5ad");
    sof_io::h5ad::write_h5ad(&nan_file, &a, &Default::default()).unwrap();
    let e = format!(
        "{:#}",
        sof(&[
            "spatial",
            "--input",
            nan_file.to_str().unwrap(),
            "--cell-type-key",
            "cell_type",
            "--radius",
            "20",
            "--output",
            out.to_str().unwrap()
        ])
        .unwrap_err()
    );
    assert!(e.contains("nan.h5ad") && e.contains(&format!("cell '{}'", a.obs_names()[5])) && e.contains("NaN"), "{e}");
    let diss = d.path().join("dissociated.h5ad");
    let e = format!(
        "{:#}",
        sof(&[
            "spatial",
            "--input",
            diss.to_str().unwrap(),
            "--cell-type-key",
            "cell_type",
            "--radius",
            "20",
            "--output",
            out.to_str().unwrap()
        ])
        .unwrap_err()
    );
    assert!(e.contains("dissociated.h5ad") && e.contains("obsm['spatial'] is missing"), "{e}");
    // The niche profile's parameters, and a profile that is not finite where tokenize reads it.
    let e = err(args(&["--radius", "20", "--profile-scales", "0"]));
    assert!(e.contains("spatial_merfish.h5ad") && e.contains("niche profile") && e.contains("scales"), "{e}");
    run(args(&["--radius", "20"])).unwrap();
    let mut t = sof_io::h5ad::read_h5ad(&out).unwrap();
    t.obsm.get_mut("sof_niche_profile").unwrap()[[3, 0]] = f64::NAN;
    let bad = d.path().join("bad_profile.h5ad");
    sof_io::h5ad::write_h5ad(&bad, &t, &Default::default()).unwrap();
    let e = format!(
        "{:#}",
        sof(&[
            "tokenize",
            "--input",
            bad.to_str().unwrap(),
            "--technology",
            "merfish",
            "--species",
            "mouse",
            "--modality",
            "spatial",
            "--output",
            d.path().join("bad_corpus").to_str().unwrap(),
        ])
        .unwrap_err()
    );
    assert!(
        e.contains("bad_profile.h5ad")
            && e.contains("sof_niche_profile")
            && e.contains(&format!("cell '{}'", t.obs_names()[3]))
            && e.contains("sof spatial"),
        "{e}"
    );
}

/// Pretraining with default settings reads no annotation: `sof spatial` without a cell-type
/// column writes the label-free niche profile (and density), `sof tokenize` carries them, `sof
/// pretrain` learns the profile by default, and the same tissue with every label column dropped
/// gives bit-identical weights.
#[test]
fn default_pretraining_reads_no_label() {
    let d = tempfile::tempdir().unwrap();
    let p = |s: &str| d.path().join(s).to_str().unwrap().to_owned();
    let tokenize = |input: &str, modality: &str, out: &str| {
        sof(&[
            "-q",
            "tokenize",
            "--input",
            input,
            "--technology",
            "merfish",
            "--species",
            "mouse",
            "--modality",
            modality,
            "--section-key",
            "section",
            "--dataset",
            "tissue",
            "--output",
            out,
        ])
    };
    // A tiny run of 4 steps; returns its logged metrics.
    let pretrain = |corpus: &str, out: &str, extra: &[&str]| {
        let mut a = vec!["-q", "pretrain", "--preset", "tiny", "--corpus", corpus, "--context-length", "32"];
        a.extend_from_slice(&["--steps", "4", "--batch-size", "8", "--output", out]);
        a.extend_from_slice(extra);
        sof(&a).unwrap();
        sof_pretrain::trainer::read_metrics(Path::new(out)).unwrap()
    };
    sof(&["-q", "synth", "--cells", "2000", "--seed", "3", "--output", &p("data")]).unwrap();
    // A copy with only the section left in obs (cell type, layer and niche dropped).
    let mut a = sof_io::h5ad::read_h5ad(p("data/spatial_merfish.h5ad")).unwrap();
    for label in ["cell_type", "layer", "niche"] {
        assert!(a.obs.get(label).is_some(), "the synthetic tissue has {label}");
    }
    let mut obs = sof_io::Frame::new(a.obs.index.clone());
    obs.insert("section", a.obs.get("section").unwrap().clone());
    a.obs = obs;
    std::fs::create_dir_all(p("unlabelled")).unwrap();
    sof_io::h5ad::write_h5ad(p("unlabelled/tissue.h5ad"), &a, &Default::default()).unwrap();
    std::fs::create_dir_all(p("labelled")).unwrap();
    std::fs::copy(p("data/spatial_merfish.h5ad"), p("labelled/tissue.h5ad")).unwrap();
    let mut weights = Vec::new();
    for run in ["labelled", "unlabelled"] {
        let f = |s: &str| p(&format!("{run}/{s}"));
        sof(&[
            "-q",
            "spatial",
            "--input",
            &f("tissue.h5ad"),
            "--section-key",
            "section",
            "--mean-neighbors",
            "20",
            "--output",
            &f("targets.h5ad"),
        ])
        .unwrap();
        let t = sof_io::h5ad::H5adReader::open(f("targets.h5ad")).unwrap();
        let profile = t.obsm("sof_niche_profile").unwrap();
        assert_eq!(profile.ncols(), 16 * 3, "16 components at 3 scales");
        assert!(!t.obsm_keys().iter().any(|k| k == "sof_composition"), "no cell types asked for, no composition");
        tokenize(&f("targets.h5ad"), "spatial", &f("corpus")).unwrap();
        let m = sof_tokenize::corpus::CorpusManifest::load(Path::new(&f("corpus"))).unwrap();
        assert_eq!(m.niche_profile_width, Some(48));
        let rows = pretrain(&f("corpus"), &f("run"), &[]);
        assert!(rows.iter().all(|r| r.profile_loss.is_some_and(f64::is_finite)), "the profile loss is logged");
        assert!(rows.iter().all(|r| r.composition_loss.is_none()), "no label-based objective by default");
        weights.push(std::fs::read(f("run/model/model.safetensors")).unwrap());
    }
    assert!(weights[0] == weights[1], "dropping every label column changes no weight");

    // The profile objective moves the weights: without it the same run ends elsewhere.
    pretrain(&p("labelled/corpus"), &p("plain"), &["--no-profile"]);
    let plain = std::fs::read(p("plain/model/model.safetensors")).unwrap();
    assert!(plain != weights[0]);
    // A finished run is not replaced by accident, even with its checkpoints gone; --force
    // trains again. An empty checkpoints/ (a start that failed) blocks nothing.
    std::fs::remove_dir_all(p("plain/checkpoints")).unwrap();
    let again = [
        "-q",
        "pretrain",
        "--preset",
        "tiny",
        "--corpus",
        &p("labelled/corpus"),
        "--context-length",
        "32",
        "--steps",
        "4",
        "--batch-size",
        "8",
        "--no-profile",
        "--output",
        &p("plain"),
    ];
    let e = sof(&again).unwrap_err().to_string();
    assert!(e.contains("plain") && e.contains("finished model") && e.contains("--force"), "{e}");
    pretrain(&p("labelled/corpus"), &p("plain"), &["--no-profile", "--force"]);
    assert!(std::fs::read(p("plain/model/model.safetensors")).unwrap() == plain, "the same run again");
    std::fs::create_dir_all(p("fresh/checkpoints")).unwrap();
    pretrain(&p("labelled/corpus"), &p("fresh"), &["--no-profile"]);
    assert!(std::fs::read(p("fresh/model/model.safetensors")).unwrap() == plain);
    // The label-free density objective is there to opt into.
    let rows = pretrain(&p("unlabelled/corpus"), &p("density"), &["--density"]);
    assert!(rows.iter().all(|r| r.density_loss.is_some() && r.profile_loss.is_some() && r.composition_loss.is_none()));

    // No `sof spatial` step: tokenizing the spatial file itself computes the same profile and
    // density.
    tokenize(&p("unlabelled/tissue.h5ad"), "spatial", &p("direct")).unwrap();
    let shard = |c: &str| sof_tokenize::corpus::read_shard_rows(&d.path().join(c).join("shard-00000.parquet")).unwrap();
    let (direct, via_targets) = (shard("direct"), shard("unlabelled/corpus"));
    assert_eq!(direct.len(), via_targets.len());
    for (a, b) in direct.iter().zip(&via_targets) {
        let (pa, pb) = (a.profile.as_ref().unwrap(), b.profile.as_ref().unwrap());
        assert!(pa.iter().zip(pb).all(|(x, y)| (x - y).abs() < 1e-5), "cell {}", a.cell_index);
        assert!(a.density.is_some() && a.density == b.density, "cell {}", a.cell_index);
    }
    // A dissociated corpus has no neighbourhood, hence no profile.
    tokenize(&p("unlabelled/tissue.h5ad"), "dissociated", &p("dissociated")).unwrap();
    assert!(shard("dissociated").iter().all(|r| r.profile.is_none() && r.density.is_none()));
}

/// `sof tokenize` on the synthetic tissue: a manifest that adds up, spatial targets carried into
/// the shards when present, a rerun that resumes, and clear errors for bad flags.
#[test]
fn tokenize_writes_a_resumable_corpus() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_str().unwrap();
    sof(&["-q", "synth", "--cells", "2400", "--output", dir]).unwrap();
    let input = d.path().join("spatial_merfish.h5ad");
    let with_targets = d.path().join("targets.h5ad");
    sof(&[
        "-q",
        "spatial",
        "--input",
        input.to_str().unwrap(),
        "--cell-type-key",
        "cell_type",
        "--section-key",
        "section",
        "--radius",
        "40",
        "--niches",
        "3",
        "--output",
        with_targets.to_str().unwrap(),
    ])
    .unwrap();
    let out = d.path().join("corpus");
    let args = [
        "-q",
        "tokenize",
        "--input",
        with_targets.to_str().unwrap(),
        "--technology",
        "merfish",
        "--species",
        "mouse",
        "--modality",
        "spatial",
        "--keep-obs",
        "layer,cell_type",
        "--section-key",
        "section",
        "--shard-cells",
        "500",
        "--output",
        out.to_str().unwrap(),
    ];
    sof(&args).unwrap();
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    // 2,400 cells: 2,000 spatial over 3 sections, two of them merfish-like.
    assert_eq!(m["cells_in"], 1332);
    assert_eq!(m["cells_written"].as_u64().unwrap() + m["empty_cells"].as_u64().unwrap(), 1332);
    assert_eq!(m["shards"].as_array().unwrap().len(), 3);
    assert_eq!(m["context_tokens"], serde_json::json!([6, 7, 4]));
    assert_eq!(m["composition_columns"].as_array().unwrap().len(), 12);
    assert!(out.join("vocab.tsv").exists() && out.join("gene_mapping.tsv").exists());
    let rows = sof_tokenize::corpus::read_shard_tokens(&out.join("shard-00001.parquet")).unwrap();
    assert_eq!(rows.first().unwrap().0, 500, "shard 1 starts at cell 500");
    let before = std::fs::read(out.join("shard-00001.parquet")).unwrap();
    std::fs::remove_file(out.join("shard-00002.parquet")).unwrap();
    sof(&args).unwrap();
    assert_eq!(std::fs::read(out.join("shard-00001.parquet")).unwrap(), before);
    assert!(out.join("shard-00002.parquet").exists(), "the missing shard is rewritten");

    // Bad flags: each error names the problem (and the fix).
    let fresh = d.path().join("corpus_bad_flags");
    let tokenize_err = |technology: &str, modality: &str, extra: &[&str]| {
        let mut a = vec!["tokenize", "--input", input.to_str().unwrap(), "--technology", technology];
        a.extend_from_slice(&["--species", "mouse", "--modality", modality, "--output", fresh.to_str().unwrap()]);
        a.extend_from_slice(extra);
        format!("{:#}", sof(&a).unwrap_err())
    };
    let e = tokenize_err("visium", "spatial", &[]);
    assert!(e.contains("unknown technology 'visium'"), "{e}");
    let e = tokenize_err("merfish", "bulk", &[]);
    assert!(e.contains("unknown modality 'bulk'"), "{e}");
    let e = tokenize_err("merfish", "spatial", &["--tech-means", dir]);
    assert!(e.contains("no mean vector 'merfish.tsv'") && e.contains("sof tech-means"), "{e}");
    // A folder holding other files and no corpus (here the synthetic data) is refused.
    let e = format!(
        "{:#}",
        sof(&[
            "tokenize",
            "--input",
            input.to_str().unwrap(),
            "--technology",
            "merfish",
            "--species",
            "mouse",
            "--modality",
            "spatial",
            "--output",
            dir
        ])
        .unwrap_err()
    );
    assert!(e.contains("no corpus of sof's") && e.contains("--force"), "{e}");
}

/// `sof tokenize` reads the same osmFISH cells from the .h5ad, the original .loom and the
/// original text tables (expression genes x cells, coordinates, metadata) into the same tokens,
/// cell for cell, with the same coordinates and labels carried into the corpus.
#[test]
fn tokenize_reads_loom_and_tables_like_h5ad() {
    let Some(shared) = sof_io::shared::for_tests(Path::new(env!("CARGO_MANIFEST_DIR"))) else { return };
    let d = tempfile::tempdir().unwrap();
    let h5ad = shared.join("data/osmfish_sscortex.h5ad");
    let orig = shared.join("data/osmfish_sscortex_original");
    let (vocab, genes) = (shared.join("nicheformer/vocab.tsv"), shared.join("genes"));
    // One mean vector for all three (the tables hold a subset of the cells).
    let means = d.path().join("means");
    std::fs::create_dir_all(&means).unwrap();
    let m = means.join("merfish.tsv");
    let (v, g) = (vocab.to_str().unwrap(), genes.to_str().unwrap());
    sof(&[
        "-q",
        "tech-means",
        "--input",
        h5ad.to_str().unwrap(),
        "--species",
        "mouse",
        "--vocab",
        v,
        "--genes-dir",
        g,
        "--output",
        m.to_str().unwrap(),
    ])
    .unwrap();
    let tokenize = |input: &Path, name: &str, extra: &[&str]| -> Vec<(i64, Vec<u32>)> {
        let out = d.path().join(name);
        let mut args = vec!["-q", "tokenize", "--input", input.to_str().unwrap(), "--technology", "merfish"];
        args.extend(["--species", "mouse", "--modality", "spatial", "--vocab", v, "--genes-dir", g]);
        args.extend([
            "--tech-means",
            means.to_str().unwrap(),
            "--keep-obs",
            "Region",
            "--output",
            out.to_str().unwrap(),
        ]);
        args.extend_from_slice(extra);
        sof(&args).unwrap();
        let manifest = sof_tokenize::corpus::CorpusManifest::load(&out).unwrap();
        manifest
            .shards
            .iter()
            .flat_map(|s| sof_tokenize::corpus::read_shard_tokens(&out.join(&s.file)).unwrap())
            .collect()
    };
    let from_h5ad = tokenize(&h5ad, "h5ad", &[]);
    assert!(from_h5ad.len() > 5_000 && from_h5ad.iter().all(|(_, t)| !t.is_empty()));
    let loom = orig.join("osmFISH_SScortex_mouse_all_cells.loom");
    assert_eq!(tokenize(&loom, "loom", &[]), from_h5ad, "the .loom holds the same cells in the same order");

    let expression = orig.join("osmFISH_prep_expression.txt");
    let coordinates = orig.join("osmFISH_prep_cell_coordinates.txt");
    let metadata = orig.join("osmFISH_prep_cell_metadata.txt");
    let extra = ["--coordinates", coordinates.to_str().unwrap(), "--metadata", metadata.to_str().unwrap()];
    let from_tables = tokenize(&expression, "tables", &extra);
    // The tables hold 5,328 of the cells, in their own order: match them by cell id.
    let table_cells =
        sof_io::table::read_tables(&expression, None, None, &sof_io::table::TableOptions::default()).unwrap();
    let h = sof_io::h5ad::read_h5ad(&h5ad).unwrap();
    let row_of: std::collections::HashMap<&str, i64> =
        h.obs_names().iter().enumerate().map(|(i, n)| (n.as_str(), i as i64)).collect();
    let by_row: std::collections::HashMap<i64, &Vec<u32>> = from_h5ad.iter().map(|(i, t)| (*i, t)).collect();
    assert!(from_tables.len() > 5_000);
    for (i, tokens) in &from_tables {
        let name = &table_cells.obs_names()[*i as usize];
        assert_eq!(Some(tokens), by_row.get(&row_of[name.as_str()]).copied(), "cell {name}");
    }
    // Labels reach the corpus from the metadata table (--keep-obs Region needs them).
    let manifest = sof_tokenize::corpus::CorpusManifest::load(&d.path().join("tables")).unwrap();
    assert_eq!(manifest.label_columns, ["Region"]);
    assert_eq!(manifest.cells_written, from_tables.len());
    let e = format!(
        "{:#}",
        sof(&[
            "tokenize",
            "--input",
            d.path().join("x.zarr").to_str().unwrap(),
            "--technology",
            "merfish",
            "--species",
            "mouse",
            "--modality",
            "spatial",
            "--output",
            d.path().to_str().unwrap()
        ])
        .unwrap_err()
    );
    assert!(e.contains("x.zarr") && e.contains(".loom"), "{e}");
}

/// Symbols that cannot be matched without gene tables: a clear error that says what to pass.
#[test]
fn tokenize_without_mappable_genes_says_what_to_pass() {
    let Some(shared) = sof_io::shared::for_tests(Path::new(env!("CARGO_MANIFEST_DIR"))) else { return };
    let d = tempfile::tempdir().unwrap();
    let input = shared.join("data/starmap_mpfc.h5ad");
    let vocab = shared.join("nicheformer/vocab.tsv");
    let args = [
        "tokenize",
        "--input",
        input.to_str().unwrap(),
        "--technology",
        "merfish",
        "--species",
        "mouse",
        "--modality",
        "spatial",
        "--vocab",
        vocab.to_str().unwrap(),
        "--output",
        d.path().to_str().unwrap(),
    ];
    let e = format!("{:#}", sof(&args).unwrap_err());
    assert!(e.contains("starmap_mpfc.h5ad") && e.contains("none of its 166 genes") && e.contains("--genes-dir"), "{e}");
}

/// `sof embed` runs on every shared .h5ad with a small model in the reference layout over the
/// reference vocabulary, writing obsm['X_sof'] (cells x d_model, finite) that Python anndata reads.
#[test]
fn embed_runs_on_every_shared_dataset() {
    use burn::prelude::*;
    let Some(shared) = sof_io::shared::for_tests(Path::new(env!("CARGO_MANIFEST_DIR"))) else { return };
    let d = tempfile::tempdir().unwrap();
    let cfg = sof_model::EncoderConfig::new(20_345, 20_340, 64, 16, 2, 32, 1);
    let model = cfg.init(&Device::flex());
    sof_model::import::export_reference(&model, &cfg, d.path()).unwrap();
    let ckpt = d.path().join("model.safetensors");
    let manifests =
        sof_io::manifest::load_manifests(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../datasets")).unwrap();
    let table = sof_tokenize::ContextTable::default();
    let (vocab, genes) = (shared.join("nicheformer/vocab.tsv"), shared.join("genes"));
    for m in manifests.iter().filter(|m| m.file.ends_with(".h5ad")) {
        let input = shared.join("data").join(&m.file);
        let out = d.path().join(format!("{}_emb.h5ad", m.name));
        let tech = if table.get(&m.technology).is_ok() { m.technology.as_str() } else { "merfish" };
        let args = [
            "-q",
            "embed",
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--technology",
            tech,
            "--species",
            &m.species,
            "--modality",
            &m.modality,
            "--vocab",
            vocab.to_str().unwrap(),
            "--genes-dir",
            genes.to_str().unwrap(),
            "--batch-size",
            "256",
        ];
        sof(&args).unwrap_or_else(|e| panic!("{}: {e:#}", m.name));
        let r = sof_io::h5ad::H5adReader::open(&out).unwrap();
        let emb = r.obsm("X_sof").unwrap();
        assert_eq!(emb.dim(), (r.n_obs(), 16), "{}", m.name);
        assert!(emb.iter().all(|v| v.is_finite()), "{}: finite embeddings", m.name);
        if let Some(py) = std::env::var_os("SOF_PYTHON") {
            let code = format!(
                "import anndata; a = anndata.read_h5ad({:?}); assert a.obsm['X_sof'].shape == ({}, 16); assert a.obsm['X_sof'].dtype == 'float32'",
                out,
                r.n_obs()
            );
            let o = std::process::Command::new(py).args(["-c", &code]).output().unwrap();
            assert!(o.status.success(), "{}: {}", m.name, String::from_utf8_lossy(&o.stderr));
        }
    }
}

/// A sof checkpoint folder brings its own tokenizer settings and vocabulary: `sof embed` needs
/// no tokenizer flags, and refuses a vocabulary the model was not trained with.
#[test]
fn embed_from_a_checkpoint_folder() {
    use burn::prelude::*;
    let d = tempfile::tempdir().unwrap();
    let genes: Vec<String> = (0..50).map(|g| format!("G{g}")).collect();
    let (n, p) = (40, genes.len());
    let dense: Vec<f32> = (0..n * p).map(|k| ((k * 7919) % 13) as f32 * f32::from(u8::from(k % 3 == 0))).collect();
    let adata = sof_io::AnnData {
        x: sof_io::CsrMatrix::from_dense(n, p, &dense),
        obs: sof_io::Frame::new((0..n).map(|i| format!("c{i}")).collect()),
        var: sof_io::Frame::new(genes.clone()),
        obsm: Default::default(),
    };
    let input = d.path().join("toy.h5ad");
    sof_io::h5ad::write_h5ad(&input, &adata, &Default::default()).unwrap();
    let ckpt = d.path().join("ckpt");
    let cfg = sof_model::EncoderConfig::tiny(80);
    let vocab = sof_io::genes::Vocabulary::new(genes.clone()).unwrap();
    let run = sof_model::checkpoint::RunInfo {
        tokenizer: sof_tokenize::TokenizerSpec {
            technology: Some("merfish".into()),
            species: Some(sof_io::genes::Species::Mouse),
            modality: Some(sof_tokenize::Modality::Spatial),
            ..Default::default()
        },
        vocabulary_hash: sof_tokenize::vocabulary_hash(&vocab),
        step: None,
    };
    sof_model::checkpoint::save(&ckpt, &cfg.init(&Device::flex()), &cfg, &run).unwrap();
    let tsv = |ids: &[String]| {
        let mut s = String::from("index\ttoken_id\tensembl_id\n");
        for (i, g) in ids.iter().enumerate() {
            s.push_str(&format!("{i}\t{}\t{g}\n", i + 30));
        }
        s
    };
    std::fs::write(ckpt.join("vocab.tsv"), tsv(&genes)).unwrap();
    let out = d.path().join("out.h5ad");
    sof(&[
        "-q",
        "embed",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ])
    .unwrap();
    let emb = sof_io::h5ad::H5adReader::open(&out).unwrap().obsm("X_sof").unwrap();
    assert_eq!(emb.dim(), (40, 32));
    let mut other = genes.clone();
    other.reverse();
    let wrong = d.path().join("wrong_vocab.tsv");
    std::fs::write(&wrong, tsv(&other)).unwrap();
    let e = format!(
        "{:#}",
        sof(&[
            "embed",
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--vocab",
            wrong.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--output",
            out.to_str().unwrap()
        ])
        .unwrap_err()
    );
    assert!(e.contains("not the one the checkpoint") && e.contains("wrong_vocab.tsv"), "{e}");

    // Cells without coordinates: no niche embedding, and asking for one is an error.
    assert!(!sof_io::h5ad::H5adReader::open(&out).unwrap().obsm_keys().contains(&"X_sof_niche".to_owned()));
    let embed = |input: &Path, extra: &[&str]| {
        let mut a = vec!["-q", "embed", "--checkpoint", ckpt.to_str().unwrap(), "--input", input.to_str().unwrap()];
        a.extend(extra);
        a.extend(["--output", out.to_str().unwrap()]);
        sof(&a).map_err(|e| format!("{e:#}"))
    };
    let e = embed(&input, &["--niche-k", "5"]).unwrap_err();
    assert!(e.contains("obsm['spatial'] is missing") && e.contains("toy.h5ad"), "{e}");
    // Two sections on overlapping coordinates: obsm['X_sof_niche'] = [own, mean of the k
    // nearest in the section], unchanged when a section is rotated and shifted.
    let mut spatial = adata.clone();
    let xy = |rotate: bool| {
        let (c, s) = (30f64.to_radians().cos(), 30f64.to_radians().sin());
        ndarray::Array2::from_shape_fn((n, 2), |(i, k)| {
            // Scattered positions without ties in distance.
            let u = |a: f64| ((i as f64 * a).sin() * 43_758.545).fract() * 100.0;
            let (x, y) = (u(12.9898), u(78.233));
            match (rotate && i % 2 == 1, k) {
                (false, 0) => x,
                (false, _) => y,
                (true, 0) => c * x - s * y + 300.0,
                (true, _) => s * x + c * y - 70.0,
            }
        })
    };
    spatial.obsm.insert("spatial".into(), xy(false));
    let sections: Vec<String> = (0..n).map(|i| format!("s{}", i % 2)).collect();
    spatial.obs.insert("section", sof_io::Column::categorical_from_labels(&sections));
    let sp = d.path().join("spatial.h5ad");
    sof_io::h5ad::write_h5ad(&sp, &spatial, &Default::default()).unwrap();
    embed(&sp, &["--section-key", "section", "--niche-k", "4"]).unwrap();
    let r = sof_io::h5ad::H5adReader::open(&out).unwrap();
    let (own, niche) = (r.obsm("X_sof").unwrap(), r.obsm("X_sof_niche").unwrap());
    assert_eq!(niche.dim(), (40, 64));
    assert!(niche.slice(ndarray::s![.., 0..32]).iter().zip(own.iter()).all(|(a, b)| (a - b).abs() < 1e-6));
    spatial.obsm.insert("spatial".into(), xy(true));
    let rotated = d.path().join("rotated.h5ad");
    sof_io::h5ad::write_h5ad(&rotated, &spatial, &Default::default()).unwrap();
    embed(&rotated, &["--section-key", "section", "--niche-k", "4"]).unwrap();
    let niche2 = sof_io::h5ad::H5adReader::open(&out).unwrap().obsm("X_sof_niche").unwrap();
    assert!(niche.iter().zip(niche2.iter()).all(|(a, b)| (a - b).abs() < 1e-5), "rotation and shift change nothing");
    // k as large as a section, NaN coordinates, a missing section column: errors naming the field.
    let e = embed(&sp, &["--section-key", "section", "--niche-k", "20"]).unwrap_err();
    assert!(e.contains("section 's0' of obs['section']") && e.contains("--niche-k 20"), "{e}");
    let e = embed(&sp, &["--section-key", "slide"]).unwrap_err();
    assert!(e.contains("slide"), "{e}");
    spatial.obsm.get_mut("spatial").unwrap()[[3, 1]] = f64::NAN;
    let nan = d.path().join("nan.h5ad");
    sof_io::h5ad::write_h5ad(&nan, &spatial, &Default::default()).unwrap();
    let e = embed(&nan, &["--section-key", "section"]).unwrap_err();
    assert!(e.contains("obsm['spatial']") && e.contains("c3") && e.contains("--no-niche"), "{e}");
    embed(&nan, &["--no-niche"]).unwrap();
}

/// The demo's corpora pretrain a tiny model with the niche-aware objective; the run folder has
/// its config, metrics, curve and model, and `sof embed` uses that model directly. A second
/// start without --resume is refused; --resume on a finished run changes nothing.
#[test]
fn pretrain_on_demo_corpora_then_embed() {
    let d = tempfile::tempdir().unwrap();
    let p = |s: &str| d.path().join(s).to_str().unwrap().to_owned();
    sof(&["-q", "demo", "--cells", "1500", "--seed", "2", "--output", &p("demo")]).unwrap();
    let run = p("run");
    let args = [
        "-q",
        "pretrain",
        "--preset",
        "tiny",
        "--corpus",
        &p("demo/corpus/merfish"),
        &p("demo/corpus/dissociated"),
        "--weights",
        "2",
        "1",
        "--context-length",
        "64",
        "--steps",
        "6",
        "--batch-size",
        "8",
        "--niche",
        "--vocab",
        &p("demo/vocab.tsv"),
        "--output",
        &run,
    ];
    sof(&args).unwrap();
    for f in
        ["config.toml", "command.txt", "metrics.csv", "loss.png", "summary.json", "model/run.json", "model/vocab.tsv"]
    {
        assert!(d.path().join("run").join(f).exists(), "{f}");
    }
    let rows = sof_pretrain::trainer::read_metrics(Path::new(&run)).unwrap();
    assert_eq!(rows.last().unwrap().step, 6);
    assert!(rows.iter().any(|r| r.composition_loss.is_some() && r.density_loss.is_some()), "niche losses logged");
    let cfg = std::fs::read_to_string(d.path().join("run/config.toml")).unwrap();
    assert!(cfg.contains("composition_weight = 1.0") && cfg.contains("weight = 2.0"), "{cfg}");

    let e = format!("{:#}", sof(&args).unwrap_err());
    assert!(e.contains("--resume"), "{e}");
    sof(&["-q", "pretrain", "--output", &run, "--resume"]).unwrap();
    assert_eq!(sof_pretrain::trainer::read_metrics(Path::new(&run)).unwrap(), rows);

    let out = p("embedded.h5ad");
    sof(&[
        "-q",
        "embed",
        "--checkpoint",
        &p("run/model"),
        "--input",
        &p("demo/spatial_merfish_targets.h5ad"),
        "--technology",
        "merfish",
        "--modality",
        "spatial",
        "--section-key",
        "section",
        "--umap",
        "--umap-seed",
        "4",
        "--output",
        &out,
    ])
    .unwrap();
    let emb = sof_io::h5ad::H5adReader::open(&out).unwrap().obsm("X_sof").unwrap();
    assert_eq!(emb.dim().1, 32);
    umap_view_checks(&out, &emb);
    let niche = sof_io::h5ad::H5adReader::open(&out).unwrap().obsm("X_sof_niche").unwrap();
    assert_eq!(niche.dim(), (emb.nrows(), 64), "a spatial file gets the niche embedding by default");
    assert!(emb.iter().all(|v| v.is_finite()));

    // Probes on the embedding beside the expression baselines, leave-one-section-out.
    sof(&[
        "-q",
        "probe",
        "--input",
        &out,
        "--label",
        "layer",
        "--split-key",
        "section",
        "--seeds",
        "1",
        "--output",
        &p("probe.json"),
    ])
    .unwrap();
    let probe: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p("probe.json")).unwrap()).unwrap();
    let results = probe["results"].as_array().unwrap();
    let names: Vec<&str> = results.iter().map(|r| r["features"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "embedding (X_sof)",
            "niche embedding (X_sof_niche)",
            "PCA-50",
            "PCA-best",
            "raw log-normalized",
            "NichePCA-best",
            "BANKSY-best"
        ],
        "the file has coordinates and a niche embedding: the neighbourhood baselines and it join"
    );
    assert_eq!(probe["classes"].as_array().unwrap().len(), 6);
    let pca_f1 = results[2]["mean"]["macro_f1"].as_f64().unwrap();
    assert!(pca_f1 > 0.4, "layers are recoverable from expression on held-out sections: {pca_f1}");
    for r in results {
        let f1 = r["mean"]["macro_f1"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&f1), "{r}");
        let conf: u64 = r["confusion"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| row.as_array().unwrap())
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(conf, probe["cells"].as_u64().unwrap(), "every cell tested once");
    }
    // The dissociated sample, embedded with the same model, placed onto the spatial sections.
    sof(&[
        "-q",
        "embed",
        "--checkpoint",
        &run,
        "--input",
        &p("demo/data/dissociated.h5ad"),
        "--technology",
        "dissociated",
        "--modality",
        "dissociated",
        "--output",
        &p("dissociated_embedded.h5ad"),
    ])
    .unwrap();
    sof(&[
        "-q",
        "map",
        "--reference",
        &out,
        "--query",
        &p("dissociated_embedded.h5ad"),
        "--label",
        "layer",
        "--pca-baseline",
        "--report",
        &p("placed.json"),
        "--output",
        &p("mapped.h5ad"),
    ])
    .unwrap();
    // The baseline reads the genes both files measure (the dissociated sample has many more).
    let placed: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p("placed.json")).unwrap()).unwrap();
    assert!(
        placed["layer_accuracy_pca50"].as_f64().unwrap() > placed["layer_accuracy_prior"].as_f64().unwrap(),
        "expression of the shared genes places dissociated cells better than the prior: {placed}"
    );
    // Tokenized over the reference's panel: the same embedding as the file cut to those genes.
    let merfish_genes: std::collections::HashSet<String> =
        sof_io::h5ad::H5adReader::open(p("demo/data/spatial_merfish.h5ad"))
            .unwrap()
            .var()
            .unwrap()
            .index
            .into_iter()
            .collect();
    let full = sof_io::h5ad::read_h5ad(p("demo/data/dissociated.h5ad")).unwrap();
    // The dissociated file with only the genes `keep` accepts.
    let subset = |keep: &dyn Fn(&str) -> bool| {
        let mut kept = Vec::new();
        let remap: Vec<Option<u32>> = full
            .var
            .index
            .iter()
            .map(|g| {
                keep(g).then(|| {
                    kept.push(g.clone());
                    kept.len() as u32 - 1
                })
            })
            .collect();
        assert!(kept.len() < full.n_vars() && !kept.is_empty());
        sof_io::AnnData {
            x: full.x.remap_columns(&remap, kept.len()),
            var: sof_io::Frame::new(kept),
            obs: full.obs.clone(),
            obsm: full.obsm.clone(),
        }
    };
    let cut = subset(&|g| merfish_genes.contains(g));
    sof_io::h5ad::write_h5ad(p("dissociated_cut.h5ad"), &cut, &Default::default()).unwrap();
    let embed_dissociated = |input: &str, output: &str, extra: &[&str]| {
        let mut args = vec![
            "-q",
            "embed",
            "--checkpoint",
            &run,
            "--input",
            input,
            "--technology",
            "dissociated",
            "--modality",
            "dissociated",
            "--output",
            output,
        ];
        args.extend_from_slice(extra);
        sof(&args).unwrap();
        sof_io::h5ad::H5adReader::open(output).unwrap().obsm("X_sof").unwrap()
    };
    let panel = embed_dissociated(
        &p("demo/data/dissociated.h5ad"),
        &p("dissociated_panel.h5ad"),
        &["--panel-of", &p("demo/data/spatial_merfish.h5ad")],
    );
    let cut = embed_dissociated(&p("dissociated_cut.h5ad"), &p("dissociated_cut_embedded.h5ad"), &[]);
    let own = sof_io::h5ad::H5adReader::open(p("dissociated_embedded.h5ad")).unwrap().obsm("X_sof").unwrap();
    let diff = |a: &ndarray::Array2<f64>, b: &ndarray::Array2<f64>| (a - b).iter().fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(diff(&panel, &cut) < 1e-5, "--panel-of = the file cut to the panel: {}", diff(&panel, &cut));
    assert!(diff(&panel, &own) > 1e-3, "the panel changes the tokens");
    // A panel file that shares no gene with the query: a clear error naming both files.
    let outside_file = subset(&|g| !merfish_genes.contains(g));
    sof_io::h5ad::write_h5ad(p("outside_panel.h5ad"), &outside_file, &Default::default()).unwrap();
    let e = format!(
        "{:#}",
        sof(&[
            "-q",
            "embed",
            "--checkpoint",
            &run,
            "--input",
            &p("dissociated_cut.h5ad"),
            "--technology",
            "dissociated",
            "--modality",
            "dissociated",
            "--panel-of",
            &p("outside_panel.h5ad"),
            "--output",
            &p("never.h5ad"),
        ])
        .unwrap_err()
    );
    assert!(
        e.contains("dissociated_cut.h5ad") && e.contains("outside_panel.h5ad") && e.contains("none of its genes"),
        "{e}"
    );
    assert!(!std::path::Path::new(&p("never.h5ad")).exists(), "no output after the error");
    // With the context hidden the model reads MASK for technology and modality, and says so.
    let hidden =
        embed_dissociated(&p("demo/data/dissociated.h5ad"), &p("dissociated_hidden.h5ad"), &["--hide-context"]);
    assert!(diff(&hidden, &own) > 1e-3, "hiding the context changes the embedding");
    let uns = sof_io::h5ad::read_uns_strings(p("dissociated_hidden.h5ad"), "sof_embedding/context").unwrap();
    assert_eq!(uns, Some(vec!["hidden".to_owned()]));
    let mapped = sof_io::h5ad::H5adReader::open(p("mapped.h5ad")).unwrap();
    let n = mapped.n_obs();
    let probs = mapped.obsm("sof_layer_probabilities").unwrap();
    assert_eq!(probs.dim(), (n, 6));
    assert!(probs.rows().into_iter().all(|r| (r.sum() - 1.0).abs() < 1e-6));
    assert_eq!(mapped.obsm("sof_location").unwrap().dim(), (n, 2));
    let obs = mapped.obs().unwrap();
    assert!(obs.get("sof_layer").is_some() && obs.get("sof_location_spread").is_some());
    assert!(obs.get("sof_density_predicted").is_some(), "density transferred from the reference's sof spatial output");
    assert!(mapped.obsm("sof_composition_predicted").is_ok());

    let e =
        format!("{:#}", sof(&["probe", "--input", &out, "--label", "layer", "--output", &p("x.json")]).unwrap_err());
    assert!(e.contains("--split-key"), "{e}");

    // The MLP head and full fine-tuning in the same harness, with figures.
    sof(&[
        "-q",
        "probe",
        "--input",
        &out,
        "--label",
        "layer",
        "--split-key",
        "section",
        "--head",
        "linear",
        "--head",
        "mlp",
        "--ordered",
        "--finetune",
        &p("run/model"),
        "--finetune-epochs",
        "1",
        "--technology",
        "merfish",
        "--modality",
        "spatial",
        "--plots",
        &p("plots"),
        "--output",
        &p("probe_ft.json"),
    ])
    .unwrap();
    let probe: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p("probe_ft.json")).unwrap()).unwrap();
    let rows: Vec<(String, String)> = probe["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["features"].as_str().unwrap().to_owned(), r["head"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(
        rows.len(),
        15,
        "7 feature sets (niche embedding and neighbourhood baselines included) x 2 heads + fine-tuned: {rows:?}"
    );
    assert_eq!(rows[7], ("embedding (X_sof)".to_owned(), "mlp".to_owned()));
    assert!(rows[14].0.starts_with("fine-tuned") && rows[14].1 == "linear", "{rows:?}");
    for r in probe["results"].as_array().unwrap() {
        for m in ["macro_f1", "accuracy", "spearman"] {
            let v = r["mean"][m].as_f64().unwrap_or(f64::NAN);
            assert!((-1.0..=1.0).contains(&v), "{m} of {}: {v}", r["features"]);
        }
        let tested = r["predicted_classes"].as_array().unwrap().iter().filter(|c| c.as_i64().unwrap() >= 0).count();
        assert_eq!(tested as u64, probe["cells"].as_u64().unwrap(), "every cell tested once");
    }
    for f in ["confusion_embedding_linear.png", "confusion_embedding_mlp.png", "map_layer.png"] {
        assert!(d.path().join("plots").join(f).metadata().unwrap().len() > 1000, "{f}");
    }

    // One section held out and mapped onto the others, with a value transferred, the PCA
    // baseline and the prior beside it.
    let sections = sof_io::h5ad::H5adReader::open(&out).unwrap().obs().unwrap().get("section").unwrap().labels();
    let first = sections[0].clone().unwrap();
    // `sof map` of the held-out section with a head (knn or linear), its report and output.
    let map_held_out = |head: &str, report: &str, output: &str| {
        sof(&[
            "-q",
            "map",
            "--reference",
            &out,
            "--query",
            &out,
            "--label",
            "layer",
            "--head",
            head,
            "--reference-where",
            &format!("section!={first}"),
            "--query-where",
            &format!("section={first}"),
            "--transfer",
            "sof_density",
            "--pca-baseline",
            "--report",
            &p(report),
            "--output",
            &p(output),
        ])
        .unwrap()
    };
    map_held_out("knn", "map.json", "held_out.h5ad");
    let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p("map.json")).unwrap()).unwrap();
    let held_out = sections.iter().filter(|s| s.as_deref() == Some(first.as_str())).count();
    assert_eq!(m["query_cells"].as_f64().unwrap() as usize, held_out);
    assert_eq!(m["reference_cells"].as_f64().unwrap() as usize, sections.len() - held_out);
    for k in
        ["layer_accuracy", "layer_accuracy_pca50", "layer_accuracy_prior", "sof_density_mae", "sof_density_mae_pca50"]
    {
        assert!(m[k].as_f64().is_some_and(f64::is_finite), "{k}: {m}");
    }
    let pca_acc = m["layer_accuracy_pca50"].as_f64().unwrap();
    assert!(
        pca_acc > m["layer_accuracy_prior"].as_f64().unwrap(),
        "expression places cells better than the prior: {m}"
    );
    let mapped = sof_io::h5ad::H5adReader::open(p("held_out.h5ad")).unwrap();
    let pred = mapped.obs().unwrap().get("sof_layer").unwrap().labels();
    for (s, p) in sections.iter().zip(&pred) {
        assert_eq!(s.as_deref() == Some(first.as_str()), p.is_some(), "only the held-out section is mapped");
    }
    // The same with heads trained on the reference cells instead of neighbours: its own
    // predictions (valid probabilities, density in the reference's units), locations unchanged.
    map_held_out("linear", "map_linear.json", "held_out_linear.h5ad");
    let ml: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p("map_linear.json")).unwrap()).unwrap();
    assert!(
        ml["layer_accuracy_pca50"].as_f64().unwrap() > ml["layer_accuracy_prior"].as_f64().unwrap(),
        "a linear head on expression places cells better than the prior: {ml}"
    );
    let linear = sof_io::h5ad::H5adReader::open(p("held_out_linear.h5ad")).unwrap();
    let rows: Vec<usize> = (0..sections.len()).filter(|&i| sections[i].as_deref() == Some(first.as_str())).collect();
    let (pk, pl) = (mapped.obsm("sof_layer_probabilities").unwrap(), linear.obsm("sof_layer_probabilities").unwrap());
    assert!(rows.iter().all(|&i| (pl.row(i).sum() - 1.0).abs() < 1e-6), "probabilities sum to 1");
    assert!(
        rows.iter().any(|&i| (&pk.row(i) - &pl.row(i)).iter().any(|d| d.abs() > 1e-6)),
        "the head predicts on its own"
    );
    let (lk, ll) = (mapped.obsm("sof_location").unwrap(), linear.obsm("sof_location").unwrap());
    assert!(rows.iter().all(|&i| (lk[[i, 0]] - ll[[i, 0]]).abs() < 1e-9), "locations still come from neighbours");
    let dens = linear.obs().unwrap().get("sof_density_predicted").and_then(sof_io::Column::as_f64).unwrap();
    let mean = rows.iter().map(|&i| dens[i]).sum::<f64>() / rows.len() as f64;
    assert!(mean > 1.0 && mean < 100.0, "density predicted in neighbour counts: {mean}");
    let e = format!(
        "{:#}",
        sof(&[
            "map",
            "--reference",
            &out,
            "--query",
            &out,
            "--label",
            "layer",
            "--query-where",
            "section=nowhere",
            "--output",
            &p("x.h5ad")
        ])
        .unwrap_err()
    );
    assert!(e.contains("nowhere"), "{e}");

    let e = format!("{:#}", sof(&["pretrain", "--corpus", &p("nowhere"), "--output", &p("run2")]).unwrap_err());
    assert!(e.contains("nowhere"), "{e}");

    // A run folder without its finished model (stopped, or still going) names what to use.
    std::fs::rename(p("run/model"), p("model-moved")).unwrap();
    let e = format!(
        "{:#}",
        sof(&["embed", "--checkpoint", &run, "--input", &p("demo/data/dissociated.h5ad"), "--output", &p("y.h5ad")])
            .unwrap_err()
    );
    assert!(e.contains(&format!("{run}/model")) && e.contains("checkpoints/step-") && e.contains("--resume"), "{e}");
}

/// The demo's "your own data" path on a real file: STARmap mPFC with its layers, cell types and
/// sections; the report renders in the browser.
#[test]
fn demo_on_real_data() {
    let Some(shared) = sof_io::shared::for_tests(Path::new(env!("CARGO_MANIFEST_DIR"))) else { return };
    let d = tempfile::tempdir().unwrap();
    let data = shared.join("data/starmap_mpfc.h5ad");
    sof(&[
        "-q",
        "demo",
        "--data",
        data.to_str().unwrap(),
        "--cell-type-key",
        "cell_type",
        "--layer-key",
        "layer",
        "--section-key",
        "section",
        "--technology",
        "starmap",
        "--steps",
        "8",
        "--preset",
        "tiny",
        "--context-length",
        "64",
        "--output",
        d.path().to_str().unwrap(),
    ])
    .unwrap();
    let s = summary(d.path());
    for task in ["layer", "cell_type", "density", "composition"] {
        assert!(s["probes"][task]["PCA-50"].is_object(), "{task}: {}", s["probes"]);
    }
    let pca = s["probes"]["layer"]["PCA-50"]["macro_f1"].as_f64().unwrap();
    assert!(pca > 0.5, "PCA reads STARmap layers on held-out sections: {pca}");
    assert!(s["mapping"].as_object().unwrap().is_empty(), "no dissociated sample, no mapping");
    assert!(d.path().join("technologies.toml").exists(), "starmap got a free context id");
    let view = &s["view"]["mixing"];
    assert!(
        view.as_array().unwrap().iter().all(|m| m["label"] != "modality" && m["label"] != "technology"),
        "one file: nothing to mix: {view}"
    );
    browser_check(&d.path().join("report/index.html"), 7);

    let e = format!(
        "{:#}",
        sof(&["demo", "--data", data.to_str().unwrap(), "--layer-key", "nope", "--output", d.path().to_str().unwrap()])
            .unwrap_err()
    );
    assert!(e.contains("nope") && e.contains("--layer-key"), "{e}");
}

/// `sof map` on bad input: a missing label column or a file without embeddings is named, with
/// the fix; embeddings of different widths are refused.
#[test]
fn map_reports_bad_input() {
    let d = tempfile::tempdir().unwrap();
    let write_genes = |name: &str, width: usize, with_emb: bool, genes: [&str; 2]| {
        let n = 12;
        let mut obsm = std::collections::BTreeMap::new();
        if with_emb {
            obsm.insert("X_sof".to_owned(), ndarray::Array2::from_shape_fn((n, width), |(i, j)| (i * j) as f64 + 1.0));
        }
        obsm.insert("spatial".to_owned(), ndarray::Array2::from_shape_fn((n, 2), |(i, j)| (i + j) as f64));
        let mut obs = sof_io::Frame::new((0..n).map(|i| format!("c{i}")).collect());
        obs.insert(
            "layer",
            sof_io::Column::categorical_from_labels(&(0..n).map(|i| format!("L{}", i % 3)).collect::<Vec<_>>()),
        );
        let a = sof_io::AnnData {
            x: sof_io::CsrMatrix::from_dense(n, 2, &vec![1.0; n * 2]),
            obs,
            var: sof_io::Frame::new(genes.iter().map(|g| g.to_string()).collect()),
            obsm,
        };
        let p = d.path().join(name);
        sof_io::h5ad::write_h5ad(&p, &a, &Default::default()).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let write = |name: &str, width: usize, with_emb: bool| write_genes(name, width, with_emb, ["G0", "G1"]);
    let (r, q, bare, wide) = (
        write("ref.h5ad", 4, true),
        write("q.h5ad", 4, true),
        write("bare.h5ad", 4, false),
        write("wide.h5ad", 6, true),
    );
    let out = d.path().join("out.h5ad").to_str().unwrap().to_owned();
    let map = |reference: &str, query: &str, label: &str| {
        format!(
            "{:#}",
            sof(&["map", "--reference", reference, "--query", query, "--label", label, "--output", &out]).unwrap_err()
        )
    };
    let e = map(&r, &q, "region");
    assert!(e.contains("ref.h5ad") && e.contains("region"), "{e}");
    let e = map(&r, &bare, "layer");
    assert!(e.contains("bare.h5ad") && e.contains("sof embed"), "{e}");
    let e = map(&r, &wide, "layer");
    assert!(e.contains("same model"), "{e}");
    // The PCA baseline needs genes the two files share.
    let other = write_genes("other.h5ad", 4, true, ["H0", "H1"]);
    let e = format!(
        "{:#}",
        sof(&["map", "--reference", &r, "--query", &other, "--label", "layer", "--pca-baseline", "--output", &out])
            .unwrap_err()
    );
    assert!(e.contains("other.h5ad") && e.contains("share 0 gene"), "{e}");
    // Centring each file needs cells to centre: a one-cell query is refused, naming it.
    let single = d.path().join("one.h5ad");
    let cells = sof_io::h5ad::read_h5ad(&q).unwrap().select_obs(&[0]);
    sof_io::h5ad::write_h5ad(&single, &cells, &Default::default()).unwrap();
    let single = single.to_str().unwrap();
    let e = format!(
        "{:#}",
        sof(&["map", "--reference", &r, "--query", single, "--label", "layer", "--center-each", "--output", &out])
            .unwrap_err()
    );
    assert!(e.contains("one.h5ad") && e.contains("--center-each") && e.contains("at least 2"), "{e}");
    sof(&["-q", "map", "--reference", &r, "--query", &q, "--label", "layer", "--output", &out]).unwrap();
    sof(&["-q", "map", "--reference", &r, "--query", &q, "--label", "layer", "--center-each", "--output", &out])
        .unwrap();
    let center = sof_io::h5ad::read_uns_strings(&out, "sof_map/center").unwrap();
    assert_eq!(center, Some(vec!["each".to_owned()]), "the map records that it centred");
}

/// One writer per output: every command that writes refuses an output whose lock is held by a
/// process that runs (PID 1 always does), naming the holder, and leaves the holder's lock alone.
#[test]
fn a_second_writer_of_any_output_is_refused() {
    if !Path::new("/proc/1").exists() {
        eprintln!("skipped: no /proc to tell which processes run");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let p = |s: &str| d.path().join(s).to_str().unwrap().to_owned();
    sof(&["-q", "synth", "--cells", "600", "--sections", "1", "--dissociated-cells", "0", "--output", &p("data")])
        .unwrap();
    let input = p("data/spatial_merfish.h5ad");
    let tokenize = |out: &str| {
        sof(&[
            "-q",
            "tokenize",
            "--input",
            &input,
            "--technology",
            "merfish",
            "--species",
            "mouse",
            "--modality",
            "spatial",
            "--output",
            out,
        ])
    };
    tokenize(&p("corpus")).unwrap();
    let held = |output: &str, run: &dyn Fn() -> anyhow::Result<()>| {
        let out = Path::new(output);
        let lock = out.parent().unwrap().join(format!(".{}.lock", out.file_name().unwrap().to_str().unwrap()));
        // Another writer holds it (this process: a kernel lock of another open file conflicts
        // just as another process's does).
        let holder = sof_io::OutputLock::acquire(out).unwrap();
        let me = std::process::id();
        let e = format!("{:#}", run().expect_err(output));
        assert!(e.contains(&format!("another sof run (pid {me})")) && e.contains(output), "{output}: {e}");
        assert_eq!(std::fs::read_to_string(&lock).unwrap(), format!("{me}\n"), "{output}: the holder's lock stays");
        drop(holder);
        assert!(!lock.exists(), "{output}: released by its holder");
    };
    held(&p("corpus2"), &|| tokenize(&p("corpus2")));
    assert!(!Path::new(&p("corpus2")).join("manifest.json").exists(), "nothing written while refused");
    let sp = p("targets.h5ad");
    held(&sp, &|| sof(&["-q", "spatial", "--input", &input, "--radius", "40", "--output", &sp]));
    let run = p("run");
    let pretrain = || {
        sof(&[
            "-q",
            "pretrain",
            "--preset",
            "tiny",
            "--corpus",
            &p("corpus"),
            "--context-length",
            "32",
            "--steps",
            "2",
            "--batch-size",
            "8",
            "--output",
            &run,
        ])
    };
    held(&run, &pretrain);
    assert!(!Path::new(&run).join("checkpoints").exists() && !Path::new(&run).join("metrics.csv").exists());
    pretrain().unwrap();
    let emb = p("embedded.h5ad");
    let model = format!("{run}/model");
    held(&emb, &|| sof(&["-q", "embed", "--input", &input, "--checkpoint", &model, "--output", &emb]));
    sof(&["-q", "embed", "--input", &input, "--checkpoint", &model, "--output", &emb]).unwrap();
    let probe = p("probe.json");
    held(&probe, &|| sof(&["-q", "probe", "--input", &emb, "--label", "layer", "--output", &probe]));
    let mapped = p("mapped.h5ad");
    held(&mapped, &|| {
        sof(&["-q", "map", "--reference", &emb, "--query", &emb, "--label", "layer", "--output", &mapped])
    });
    let demo = p("demo");
    held(&demo, &|| sof(&["-q", "demo", "--cells", "600", "--steps", "2", "--preset", "tiny", "--output", &demo]));
    let synth = p("synth");
    held(&synth, &|| sof(&["-q", "synth", "--cells", "300", "--output", &synth]));
    let means = p("means.tsv");
    held(&means, &|| sof(&["-q", "tech-means", "--input", &input, "--species", "mouse", "--output", &means]));
}

/// `sof tokenize --new-technology` gives an unknown technology a free context token with one
/// flag; the manifest and the pretrained model record it, so `sof embed` (given the run folder)
/// needs neither the flag nor a context config. Two corpora that took the same token for two
/// technologies are refused by `sof pretrain`.
#[test]
fn a_new_technology_needs_one_flag() {
    let d = tempfile::tempdir().unwrap();
    let p = |s: &str| d.path().join(s).to_str().unwrap().to_owned();
    sof(&["-q", "synth", "--cells", "600", "--output", &p("")]).unwrap();
    let input = p("dissociated.h5ad");
    let tokenize = |tech: &str, out: &str, extra: &[&str]| {
        let mut a = vec![
            "-q",
            "tokenize",
            "--input",
            &input,
            "--technology",
            tech,
            "--species",
            "mouse",
            "--modality",
            "dissociated",
            "--context-length",
            "64",
            "--output",
            out,
        ];
        a.extend_from_slice(extra);
        sof(&a)
    };
    let e = format!("{:#}", tokenize("visium_hd", &p("c0"), &[]).unwrap_err());
    assert!(e.contains("visium_hd") && e.contains("--new-technology"), "{e}");
    tokenize("visium_hd", &p("c1"), &["--new-technology"]).unwrap();
    let m = sof_tokenize::corpus::CorpusManifest::load(Path::new(&p("c1"))).unwrap();
    assert_eq!((m.technology.as_str(), m.context_tokens[1]), ("visium_hd", 20));
    let e = format!("{:#}", tokenize("merfish", &p("c2"), &["--new-technology"]).unwrap_err());
    assert!(e.contains("already a known technology") && e.contains("drop --new-technology"), "{e}");
    tokenize("slideseq", &p("c3"), &["--new-technology", "--vocab", &p("c1/vocab.tsv")]).unwrap();
    assert_eq!(sof_tokenize::corpus::CorpusManifest::load(Path::new(&p("c3"))).unwrap().context_tokens[1], 20);

    let pretrain = |corpora: &[&str], out: &str| {
        let mut a = vec![
            "-q",
            "pretrain",
            "--preset",
            "tiny",
            "--context-length",
            "64",
            "--steps",
            "2",
            "--batch-size",
            "4",
            "--corpus",
        ];
        a.extend_from_slice(corpora);
        a.extend_from_slice(&["--output", out]);
        sof(&a)
    };
    let both = [p("c1"), p("c3")];
    let e = format!("{:#}", pretrain(&[&both[0], &both[1]], &p("run_both")).unwrap_err());
    assert!(e.contains("token 20") && e.contains("visium_hd") && e.contains("slideseq"), "{e}");
    pretrain(&[&both[0]], &p("run")).unwrap();
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p("run/model/run.json")).unwrap()).unwrap();
    assert_eq!(run["tokenizer"]["technologies"]["visium_hd"], 20, "{run}");
    sof(&["-q", "embed", "--checkpoint", &p("run"), "--input", &p("dissociated.h5ad"), "--output", &p("e.h5ad")])
        .unwrap();
    let emb = sof_io::h5ad::H5adReader::open(p("e.h5ad")).unwrap().obsm("X_sof").unwrap();
    assert_eq!(emb.nrows(), sof_io::h5ad::H5adReader::open(&input).unwrap().n_obs());
    assert!(emb.iter().all(|v| v.is_finite()));
}

/// obsm['X_umap'] of `sof embed --umap`: cells x 2, finite, keeping part of what X_sof knows of
/// the layers (kNN purity above what mixed labels give: 0.25 vs 0.20 with this 6-step model,
/// whose X_sof gives 0.32; about 6 standard errors of chance), and drawn by scanpy's
/// `sc.pl.umap` where `$SOF_PYTHON` has scanpy. (That UMAP keeps well-separated groups apart is
/// tested on clusters in sof-tasks.)
fn umap_view_checks(path: &str, emb: &ndarray::Array2<f64>) {
    use sof_tasks::view::knn_purity;
    let r = sof_io::h5ad::H5adReader::open(path).unwrap();
    let xy = r.obsm("X_umap").unwrap();
    assert_eq!(xy.dim(), (emb.nrows(), 2));
    assert!(xy.iter().all(|v| v.is_finite()));
    let obs = r.obs().unwrap();
    let layer = obs.get("layer").unwrap().labels();
    let names: std::collections::BTreeSet<&Option<String>> = layer.iter().collect();
    let codes: Vec<usize> = layer.iter().map(|l| names.iter().position(|n| *n == l).unwrap()).collect();
    let in_2d = knn_purity(xy.mapv(|v| v as f32).view(), &codes, 15, 2000, 0).unwrap();
    let in_emb = knn_purity(emb.mapv(|v| v as f32).view(), &codes, 15, 2000, 0).unwrap();
    eprintln!("layer kNN purity: X_umap {in_2d:?}, X_sof {in_emb:?}");
    assert!(in_emb.observed > in_emb.expected + 0.06, "X_sof knows the layers: {in_emb:?}");
    assert!(in_2d.observed > in_2d.expected + 0.03, "the 2-D view keeps layers apart: {in_2d:?} (X_sof: {in_emb:?})");
    if let Some(py) = std::env::var_os("SOF_PYTHON") {
        let png = Path::new(path).with_extension("umap.png");
        let code = format!(
            "import matplotlib; matplotlib.use('Agg'); import scanpy as sc; a = sc.read_h5ad({path:?}); \
             assert a.obsm['X_umap'].shape == ({}, 2); ax = sc.pl.umap(a, color='layer', show=False); \
             ax.figure.savefig({png:?})",
            emb.nrows()
        );
        let o = std::process::Command::new(py).args(["-c", &code]).output().unwrap();
        assert!(o.status.success(), "scanpy: {}", String::from_utf8_lossy(&o.stderr));
        assert!(std::fs::metadata(&png).unwrap().len() > 1000, "sc.pl.umap drew {png:?}");
    }
}
