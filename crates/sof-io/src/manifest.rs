//! Dataset manifests (`datasets/*.toml`): what a known dataset is, where it comes from and its
//! checksum, so jobs refer to data by name plus a local data folder, never by a fixed path.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// One known dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetManifest {
    pub name: String,
    /// Path relative to the data folder.
    pub file: String,
    pub study: String,
    pub citation: String,
    pub technology: String,
    pub species: String,
    /// `spatial` or `dissociated`.
    pub modality: String,
    /// obs columns with labels for downstream tasks.
    pub label_columns: Vec<String>,
    /// obs column naming the section / slice / field of view, if the dataset has several.
    #[serde(default)]
    pub section_column: Option<String>,
    /// obs column of cell types for neighbourhood composition (`sof spatial --cell-type-key`).
    #[serde(default)]
    pub cell_type_column: Option<String>,
    /// A label value marking cells to drop from evaluation (e.g. `Excluded`).
    #[serde(default)]
    pub exclude_label: Option<String>,
    /// Numeric obs columns usable as regression targets.
    #[serde(default)]
    pub numeric_targets: Vec<String>,
    pub coordinate_units: String,
    /// Where to get the file.
    pub source: String,
    /// SHA-256 of the file, lowercase hex.
    pub sha256: String,
}

impl DatasetManifest {
    /// Where the file is inside `data_dir`.
    pub fn path_in(&self, data_dir: &Path) -> PathBuf {
        data_dir.join(&self.file)
    }

    /// Checks that the file exists in `data_dir` and has the recorded checksum.
    pub fn verify(&self, data_dir: &Path) -> Result<PathBuf> {
        let path = self.path_in(data_dir);
        let got = sha256_file(&path)?;
        if got != self.sha256 {
            return Err(Error::invalid(
                &path,
                "sha256",
                format!("is {got}, the manifest of '{}' records {}", self.name, self.sha256),
                format!("the file is corrupt or another version: fetch it again from {}", self.source),
            ));
        }
        Ok(path)
    }
}

/// SHA-256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Reads every `*.toml` manifest in `dir`, sorted by name.
pub fn load_manifests(dir: &Path) -> Result<Vec<DatasetManifest>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let m: DatasetManifest = toml::from_str(&text).map_err(|e| {
            Error::invalid(&path, "manifest", e.to_string(), "see datasets/README.md for the manifest fields")
        })?;
        out.push(m);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The manifest called `name`, or an error listing the known names.
pub fn find<'a>(manifests: &'a [DatasetManifest], name: &str, dir: &Path) -> Result<&'a DatasetManifest> {
    manifests.iter().find(|m| m.name == name).ok_or_else(|| {
        Error::invalid(
            dir,
            "dataset name",
            format!("no manifest is called '{name}'"),
            format!("known datasets: {}", manifests.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", ")),
        )
    })
}
