//! Atomic file output: write to a temporary name beside the destination, rename when complete.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A temporary path beside `dest`; [`AtomicPath::commit`] renames it onto `dest`, and dropping it
/// uncommitted removes the temporary file, so readers only ever see complete outputs.
#[derive(Debug)]
pub struct AtomicPath {
    dest: PathBuf,
    tmp: PathBuf,
    committed: bool,
}

/// Removes temporary outputs `<prefix><pid>` in `dir` left by processes that no longer run (a
/// killed job's half-written shard or .h5ad copy). Only where `/proc` tells which processes are
/// alive (Linux); elsewhere nothing is removed.
fn remove_stale(dir: &Path, prefix: &str) {
    if crate::lock::process_runs(std::process::id()).is_none() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let file = e.file_name();
        let Some(pid) = file.to_str().and_then(|f| f.strip_prefix(prefix)).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && crate::lock::process_runs(pid) == Some(false) {
            tracing::info!(path = %e.path().display(), "removing the temporary output of a stopped run");
            let _ = if e.path().is_dir() { std::fs::remove_dir_all(e.path()) } else { std::fs::remove_file(e.path()) };
        }
    }
}

impl AtomicPath {
    pub fn new(dest: impl AsRef<Path>) -> Result<Self> {
        let dest = dest.as_ref().to_path_buf();
        let dir = match dest.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dir.is_dir() {
            return Err(Error::io(
                &dest,
                std::io::Error::new(std::io::ErrorKind::NotFound, "the output directory does not exist"),
            ));
        }
        let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        remove_stale(&dir, &format!(".{name}.tmp-"));
        Ok(Self { dest, tmp, committed: false })
    }

    /// Where to write.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Moves the finished file onto the destination.
    pub fn commit(mut self) -> Result<()> {
        std::fs::rename(&self.tmp, &self.dest).map_err(|e| Error::io(&self.dest, e))?;
        self.committed = true;
        Ok(())
    }
}

/// Refuses to replace an existing file at `output` that sof did not write (the user's own data
/// given as the output by mistake), unless `force`. `ours` tells from the existing file whether
/// sof wrote it, and `how` says in the error what it looked for; files sof wrote are replaced
/// without asking, so a rerun needs no flag. A folder at `output` is refused even with `force`.
///
/// ```
/// let dir = tempfile::tempdir().unwrap();
/// let out = dir.path().join("report.json");
/// sof_io::atomic::check_replace_with(&out, false, "a sof report", |_| false).unwrap(); // nothing there
/// std::fs::write(&out, "someone's notes").unwrap();
/// let err = sof_io::atomic::check_replace_with(&out, false, "a sof report", |_| false).unwrap_err();
/// assert!(err.to_string().contains("--force"));
/// sof_io::atomic::check_replace_with(&out, true, "a sof report", |_| false).unwrap();
/// ```
pub fn check_replace_with(output: &Path, force: bool, how: &str, ours: impl FnOnce(&Path) -> bool) -> Result<()> {
    if output.is_dir() {
        return Err(Error::invalid(
            output,
            "(the output path)",
            "is a folder, not a file",
            "pass a file name as the output",
        ));
    }
    if force || !output.exists() || ours(output) {
        return Ok(());
    }
    Err(Error::invalid(
        output,
        "(the output path)",
        format!("already exists and is not {how}, so it may be data"),
        "choose another output path, or pass --force to replace it",
    ))
}

impl Drop for AtomicPath {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporaries_of_dead_processes_are_removed() {
        let d = tempfile::tempdir().unwrap();
        // Above any pid_max: no such process runs.
        let stale = d.path().join(".out.h5ad.tmp-999999999");
        let stale_dir = d.path().join(".out.h5ad.tmp-999999998");
        let other = d.path().join(".other.h5ad.tmp-999999999");
        let live = d.path().join(format!(".out.h5ad.tmp-{}", std::process::id()));
        std::fs::write(&stale, b"half").unwrap();
        std::fs::create_dir(&stale_dir).unwrap();
        std::fs::write(&other, b"half").unwrap();
        let a = AtomicPath::new(d.path().join("out.h5ad")).unwrap();
        std::fs::write(a.path(), b"whole").unwrap();
        assert_eq!(a.path(), live);
        if Path::new("/proc/self").exists() {
            assert!(!stale.exists() && !stale_dir.exists(), "a dead run's temporaries go");
        }
        assert!(other.exists(), "another output's temporaries stay");
        a.commit().unwrap();
        assert_eq!(std::fs::read(d.path().join("out.h5ad")).unwrap(), b"whole");
    }
}
