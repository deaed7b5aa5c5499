use std::path::Path;

use sof_io::manifest::{find, load_manifests};

use crate::shared;

fn manifests_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets")
}

/// Every manifest parses, its file is in the shared data folder with the recorded checksum, and
/// the label and section columns it promises exist.
#[test]
fn manifests_describe_the_shared_files() {
    let all = load_manifests(&manifests_dir()).unwrap();
    assert_eq!(all.len(), 11);
    let Some(shared) = shared() else { return };
    let data = shared.join("data");
    for m in &all {
        let path = m.verify(&data).unwrap_or_else(|e| panic!("{e}"));
        let adata = sof_io::read_cells(&path).unwrap();
        for col in m.label_columns.iter().chain(&m.section_column).chain(&m.numeric_targets) {
            assert!(adata.obs.get(col).is_some(), "{}: obs column {col} missing", m.name);
        }
        assert_eq!(adata.spatial().is_some(), m.modality == "spatial", "{}: coordinates vs modality", m.name);
    }
}

#[test]
fn unknown_names_and_bad_checksums_are_clear_errors() {
    let dir = manifests_dir();
    let all = load_manifests(&dir).unwrap();
    let e = find(&all, "visium_brain", &dir).unwrap_err().to_string();
    assert!(e.contains("no manifest is called 'visium_brain'") && e.contains("starmap_mpfc"), "{e}");
    let tmp = tempfile::tempdir().unwrap();
    let mut m = find(&all, "starmap_mpfc", &dir).unwrap().clone();
    std::fs::write(tmp.path().join(&m.file), b"not the data").unwrap();
    let e = m.verify(tmp.path()).unwrap_err().to_string();
    assert!(e.contains("sha256") && e.contains("fetch it again"), "{e}");
    m.file = "absent.h5ad".into();
    assert!(m.verify(tmp.path()).unwrap_err().to_string().contains("absent.h5ad"));
}
