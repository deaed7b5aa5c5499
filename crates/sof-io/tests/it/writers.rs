use std::collections::BTreeMap;
use std::path::Path;

use ndarray::Array2;
use serde_json::json;
use sof_io::h5ad::{H5adEditor, H5adReader, H5adStreamWriter, UnsValue, read_h5ad, write_h5ad};
use sof_io::{AnnData, Column, CsrMatrix, Frame};

use crate::shared;

/// Runs xtask/peers/check_anndata.py with `$SOF_PYTHON` (a Python with anndata; .ci/run makes
/// one). Without it only the Rust-side checks run, and the test says so.
#[allow(clippy::print_stderr)]
fn python_check(spec: serde_json::Value, dir: &Path) {
    let Some(python) = std::env::var_os("SOF_PYTHON") else {
        eprintln!("note: SOF_PYTHON not set; skipping the Python anndata check");
        return;
    };
    let spec_path = dir.join("spec.json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../xtask/peers/check_anndata.py");
    let out = std::process::Command::new(python).arg(script).arg(&spec_path).output().unwrap();
    assert!(
        out.status.success(),
        "anndata check failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn toy() -> AnnData {
    let x = CsrMatrix::new(3, 4, vec![0, 2, 2, 5], vec![0, 3, 0, 1, 2], vec![1.0, 2.0, 3.0, 4.5, 5.0]).unwrap();
    let mut obs = Frame::new(vec!["c0".into(), "c1".into(), "c2".into()]);
    obs.insert("layer", Column::categorical_from_labels(&["L2", "L1", "L2"]));
    obs.insert("depth", Column::Float(vec![1.5, 2.5, f64::NAN]));
    obs.insert("n", Column::Int(vec![1, 2, 3]));
    obs.insert("ok", Column::Bool(vec![true, false, true]));
    obs.insert("note", Column::Str(vec!["a".into(), "é".into(), "c".into()]));
    let var = Frame::new((0..4).map(|i| format!("G{i}")).collect());
    let mut obsm = BTreeMap::new();
    obsm.insert("spatial".into(), Array2::from_shape_fn((3, 2), |(i, j)| (i * 10 + j) as f64));
    AnnData { x, obs, var, obsm }
}

/// A process started while a file was open in HDF5 inherits its descriptor, and with it HDF5's
/// file lock; our reads and writes must not need that lock (this was a rare CI failure:
/// "unable to lock file, errno = 11", when another test started Python at the wrong moment).
#[test]
fn files_locked_by_a_child_process_still_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("toy.h5ad");
    write_h5ad(&path, &toy(), &BTreeMap::new()).unwrap();
    let mut child = {
        // HDF5's default: an exclusive lock while open for writing.
        let _held = hdf5::File::open_rw(&path).unwrap();
        std::process::Command::new("sleep").arg("30").spawn().unwrap()
    };
    let read = read_h5ad(&path);
    let rewritten = write_h5ad(&path, &toy(), &BTreeMap::new());
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(read.unwrap().x, toy().x);
    rewritten.unwrap();
    assert_eq!(read_h5ad(&path).unwrap().x, toy().x);
}

#[test]
fn written_file_reads_back_identically() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("toy.h5ad");
    let mut uns = BTreeMap::new();
    uns.insert("note".into(), UnsValue::Str("synthetic".into()));
    uns.insert("radii".into(), UnsValue::Floats(vec![10.0, 20.0]));
    write_h5ad(&path, &toy(), &uns).unwrap();
    let back = read_h5ad(&path).unwrap();
    assert_eq!(back.x, toy().x);
    assert_eq!(back.obs.get("layer"), toy().obs.get("layer"));
    assert_eq!(back.obs.get("n"), toy().obs.get("n"));
    assert_eq!(back.obs.get("ok"), toy().obs.get("ok"));
    assert_eq!(back.obs.get("note"), toy().obs.get("note"));
    assert_eq!(back.obsm, toy().obsm);
    assert_eq!(back.var_names(), toy().var_names());
    // No temporary file is left beside the output.
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("toy.h5ad")]);
    python_check(
        json!({"file": path, "n_obs": 3, "n_vars": 4, "obsm": {"spatial": [3, 2, 63.0]},
               "obs": {"layer": {"L1": 1, "L2": 2}}, "obs_numeric": {"n": 6.0}, "uns": {"note": "synthetic", "radii": [10.0, 20.0]}}),
        dir.path(),
    );
}

#[test]
fn streamed_file_equals_whole_file() {
    let dir = tempfile::tempdir().unwrap();
    let a = toy();
    let path = dir.path().join("streamed.h5ad");
    let mut w = H5adStreamWriter::create(&path, a.var.clone()).unwrap();
    w.append(&a.x.slice_rows(0..1)).unwrap();
    w.append(&a.x.slice_rows(1..1)).unwrap();
    w.append(&a.x.slice_rows(1..3)).unwrap();
    assert!(!path.exists(), "nothing is visible before finish");
    w.finish(&a.obs, &a.obsm, &BTreeMap::new()).unwrap();
    let back = read_h5ad(&path).unwrap();
    assert_eq!(back.x, a.x);
    assert_eq!(back.obsm, a.obsm);
}

/// Results added to a copy of a real file: the input is untouched, X and the old annotations are
/// unchanged, the new fields are there (and Python anndata agrees).
#[test]
fn editor_adds_results_to_a_copy() {
    let Some(shared) = shared() else { return };
    let input = shared.join("data/starmap_mpfc.h5ad");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("with_results.h5ad");
    let before = read_h5ad(&input).unwrap();
    let n = before.n_obs();
    let emb = Array2::from_shape_fn((n, 8), |(i, j)| ((i * 8 + j) % 13) as f32 / 13.0);
    let pred: Vec<String> = (0..n).map(|i| if i % 3 == 0 { "L1".to_owned() } else { "L5".to_owned() }).collect();
    let mut e = H5adEditor::copy_of(&input, &out).unwrap();
    e.put_obsm("X_sof", &emb).unwrap();
    e.put_obs("sof_layer", &Column::categorical_from_labels(&pred)).unwrap();
    e.put_obs("sof_density", &Column::Float((0..n).map(|i| i as f64).collect())).unwrap();
    e.put_uns("sof_radius", &UnsValue::Float(42.0)).unwrap();
    // Wrong row counts are refused, naming the field.
    let err = e.put_obsm("bad", &Array2::<f32>::zeros((n - 1, 2))).unwrap_err().to_string();
    assert!(err.contains("obsm/bad") && err.contains("rows"), "{err}");
    e.commit().unwrap();

    let after = read_h5ad(&out).unwrap();
    assert_eq!(after.x, before.x);
    assert_eq!(after.obs.get("layer"), before.obs.get("layer"));
    assert_eq!(after.obs.get("sof_layer").unwrap().value_counts().get("L1"), Some(&n.div_ceil(3)));
    let back = H5adReader::open(&out).unwrap().obsm("X_sof").unwrap();
    assert!(back.iter().zip(emb.iter()).all(|(a, &b)| (a - f64::from(b)).abs() < 1e-7));
    assert_eq!(read_h5ad(&input).unwrap(), before, "the input file is untouched");
    let emb_sum: f64 = emb.iter().map(|&v| f64::from(v)).sum();
    let l1 = n.div_ceil(3);
    python_check(
        json!({"file": out, "original": input, "n_obs": n, "n_vars": 166,
               "obsm": {"X_sof": [n, 8, emb_sum]}, "obs": {"sof_layer": {"L1": l1, "L5": n - l1}},
               "obs_numeric": {"sof_density": (n * (n - 1) / 2) as f64}, "uns": {"sof_radius": 42.0}}),
        dir.path(),
    );
}

/// An output path holding a file sof did not write (no uns['sof_*']) is refused without
/// `force`, naming the file and the flag; one sof wrote is replaced (reruns need no flag).
#[test]
fn only_files_sof_wrote_are_replaced_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data.h5ad");
    write_h5ad(&data, &toy(), &BTreeMap::new()).unwrap();
    assert!(!sof_io::h5ad::written_by_sof(&data));
    let err = sof_io::h5ad::check_replace(&data, false).unwrap_err().to_string();
    assert!(err.contains(&data.display().to_string()) && err.contains("--force"), "{err}");
    sof_io::h5ad::check_replace(&data, true).unwrap();
    sof_io::h5ad::check_replace(dir.path().join("new.h5ad"), false).unwrap();

    let ours = dir.path().join("ours.h5ad");
    let mut e = H5adEditor::copy_of(&data, &ours).unwrap();
    e.put_uns("sof_radius", &UnsValue::Float(1.0)).unwrap();
    e.commit().unwrap();
    assert!(sof_io::h5ad::written_by_sof(&ours));
    sof_io::h5ad::check_replace(&ours, false).unwrap();
    // Not HDF5 at all: not ours either.
    let text = dir.path().join("notes.h5ad");
    std::fs::write(&text, "my notes").unwrap();
    assert!(sof_io::h5ad::check_replace(&text, false).is_err());
    // A folder is named as one, with or without --force.
    for force in [false, true] {
        let err = sof_io::h5ad::check_replace(dir.path(), force).unwrap_err().to_string();
        assert!(err.contains("is a folder"), "{err}");
    }
}
