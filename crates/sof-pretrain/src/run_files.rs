//! The run folder's small files: complete checkpoints, JSON state, atomic writes, command.txt.

use std::path::{Path, PathBuf};

use crate::trainer::{TrainError, invalid, io};

pub(crate) fn complete_checkpoints(root: &Path) -> Vec<(u64, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(root) else { return Vec::new() };
    entries
        .filter_map(|e| {
            let e = e.ok()?;
            let step = e.file_name().to_str()?.strip_prefix("step-")?.parse().ok()?;
            e.path().join("state.json").exists().then(|| (step, e.path()))
        })
        .collect()
}

/// Removes the partial checkpoints (`.step-N.tmp-PID/`) under `root`: while a run holds the
/// folder's lock, any there were left by a run that was killed while writing one.
pub(crate) fn remove_partial_checkpoints(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else { return };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with(".step-") && name.contains(".tmp-") {
            tracing::info!(path = %e.path().display(), "removing the partial checkpoint of a stopped run");
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The newest complete checkpoint under `root` (`step-NNNNNNNN` folders with a `state.json`).
pub fn latest_checkpoint(root: &Path) -> Option<(u64, PathBuf)> {
    complete_checkpoints(root).into_iter().max()
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|e| invalid(path, e.to_string(), "use an earlier checkpoint"))?;
    serde_json::from_str(&text).map_err(|e| invalid(path, e.to_string(), "the checkpoint is damaged"))
}

/// Temporary file beside `path`, renamed into place (the project's `AtomicPath`).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    let failed = |e: sof_io::Error| invalid(path, e.to_string(), "check that the run folder is writable and has space");
    let tmp = sof_io::AtomicPath::new(path).map_err(failed)?;
    std::fs::write(tmp.path(), bytes).map_err(io(path))?;
    tmp.commit().map_err(failed)
}

pub(crate) fn append_command(dir: &Path, command: &str) -> Result<(), TrainError> {
    use std::io::Write;
    let path = dir.join("command.txt");
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(io(&path))?;
    writeln!(f, "{command}").map_err(io(&path))
}
