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

impl Drop for AtomicPath {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
