//! End-to-end runs of the `sof` command line, in-process.

use std::path::Path;

fn sof(args: &[&str]) -> anyhow::Result<()> {
    sof_cli::run(std::iter::once("sof").chain(args.iter().copied()))
}

fn summary(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap()
}

/// The main job runs from nothing, writes its data and summary, and is reproducible by seed.
#[test]
fn demo_runs_and_is_reproducible() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    for d in [&a, &b] {
        sof(&["-q", "demo", "--cells", "3000", "--seed", "5", "--output", d.path().to_str().unwrap()]).unwrap();
    }
    let (sa, sb) = (summary(a.path()), summary(b.path()));
    assert_eq!(sa["labels"], sb["labels"], "same seed, same ground truth");
    assert_eq!(sa["files"].as_array().unwrap().len(), 3);
    for f in ["spatial_merfish.h5ad", "spatial_xenium.h5ad", "dissociated.h5ad"] {
        let (x, y) = (std::fs::read(a.path().join("data").join(f)).unwrap(), std::fs::read(b.path().join("data").join(f)).unwrap());
        let (ra, rb) = (sof_io::h5ad::read_h5ad(a.path().join("data").join(f)).unwrap(), sof_io::h5ad::read_h5ad(b.path().join("data").join(f)).unwrap());
        assert_eq!(ra, rb, "{f}: identical data");
        assert!(!x.is_empty() && !y.is_empty());
    }
    let layers = &sa["labels"]["spatial_merfish.h5ad"]["layer"];
    assert_eq!(layers.as_object().unwrap().len(), 6, "all six layers present: {layers}");
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
