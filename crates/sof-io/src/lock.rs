//! One writer per output: an advisory lock file beside each output, holding the writer's PID.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Whether process `pid` runs: `Some` where `/proc` tells (Linux), `None` elsewhere. A zombie
/// (killed, not yet reaped by its parent) has stopped: its state in `/proc/<pid>/stat`, the
/// field after the command name's closing parenthesis, is `Z` (or `X`).
pub(crate) fn process_runs(pid: u32) -> Option<bool> {
    if !Path::new("/proc/self").exists() {
        return None;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return Some(false) };
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
    Some(!matches!(state, Some('Z' | 'X')))
}

/// An advisory lock on an output file or folder: the file `.<name>.lock` beside it, holding the
/// writer's PID, created atomically (written under a temporary name, then hard-linked into place,
/// so no reader ever sees it empty) and removed when the lock is dropped. A second writer gets
/// [`Error::Locked`] naming the holder; a lock left by a process that no longer runs (killed,
/// crashed) is taken over, where `/proc` tells which processes run (Linux).
///
/// Every sof command that writes an output holds one for the whole run, so two runs into one
/// corpus folder or one pretraining folder cannot mix their files.
///
/// ```
/// let dir = tempfile::tempdir().unwrap();
/// let out = dir.path().join("embedded.h5ad");
/// let lock = sof_io::OutputLock::acquire(&out).unwrap();
/// // A second writer of the same output is refused while the first holds it...
/// assert!(matches!(sof_io::OutputLock::acquire(&out), Err(sof_io::Error::Locked { .. })));
/// drop(lock);
/// // ...and may write once it is released.
/// assert!(sof_io::OutputLock::acquire(&out).is_ok());
/// ```
#[derive(Debug)]
pub struct OutputLock {
    file: PathBuf,
}

impl OutputLock {
    /// Takes the lock on `output` (which need not exist yet; its parent folder is created).
    pub fn acquire(output: impl AsRef<Path>) -> Result<Self> {
        let output = output.as_ref();
        // An existing output by its real path (`run/.`, `run/../run` and a symlink lock one file).
        let abs = match std::fs::canonicalize(output) {
            Ok(real) => real,
            Err(_) => std::path::absolute(output).map_err(|e| Error::io(output, e))?.components().collect(),
        };
        let (Some(dir), Some(name)) = (abs.parent(), abs.file_name()) else {
            return Err(Error::io(
                output,
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "cannot write into the file-system root"),
            ));
        };
        std::fs::create_dir_all(dir).map_err(|e| Error::io(output, e))?;
        let name = name.to_string_lossy();
        let file = dir.join(format!(".{name}.lock"));
        let me = std::process::id();
        let tmp = dir.join(format!(".{name}.lock.tmp-{me}"));
        let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(output, e))?;
        f.write_all(format!("{me}\n").as_bytes()).map_err(|e| Error::io(&tmp, e))?;
        drop(f);
        let taken = (|| {
            for _ in 0..3 {
                match std::fs::hard_link(&tmp, &file) {
                    Ok(()) => return Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        let holder = std::fs::read_to_string(&file).ok().and_then(|s| s.trim().parse::<u32>().ok());
                        match holder.map(|pid| (pid, process_runs(pid))) {
                            Some((pid, Some(true) | None)) => {
                                return Err(Error::Locked { path: output.to_path_buf(), lock: file.clone(), pid });
                            }
                            // Its writer no longer runs (or the file is not ours): take it over.
                            _ => {
                                tracing::info!(lock = %file.display(), "removing the lock of a stopped run");
                                let _ = std::fs::remove_file(&file);
                            }
                        }
                    }
                    // File systems without hard links: exclusive creation (a reader may then
                    // see the file empty for an instant, and would wait for the next try).
                    Err(_) => match std::fs::OpenOptions::new().write(true).create_new(true).open(&file) {
                        Ok(mut f) => {
                            return f.write_all(format!("{me}\n").as_bytes()).map_err(|e| Error::io(&file, e));
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                        Err(e) => return Err(Error::io(&file, e)),
                    },
                }
            }
            let pid = std::fs::read_to_string(&file).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
            Err(Error::Locked { path: output.to_path_buf(), lock: file.clone(), pid })
        })();
        let _ = std::fs::remove_file(&tmp);
        taken.map(|()| Self { file })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.file
    }
}

impl Drop for OutputLock {
    fn drop(&mut self) {
        // Only our own lock (a taken-over stale lock is another run's now).
        let ours = std::fs::read_to_string(&self.file).ok().and_then(|s| s.trim().parse::<u32>().ok());
        if ours == Some(std::process::id()) {
            let _ = std::fs::remove_file(&self.file);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_holder_is_named_and_a_dead_one_is_taken_over() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("corpus");
        let lock = d.path().join(".corpus.lock");
        // PID 1 always runs.
        std::fs::write(&lock, "1\n").unwrap();
        if process_runs(1) == Some(true) {
            let e = OutputLock::acquire(&out).unwrap_err();
            let msg = e.to_string();
            assert!(matches!(e, Error::Locked { pid: 1, .. }), "{msg}");
            assert!(msg.contains("corpus") && msg.contains("pid 1") && msg.contains(".corpus.lock"), "{msg}");
            assert_eq!(std::fs::read_to_string(&lock).unwrap(), "1\n", "a live holder's lock stays");
        }
        // Above any pid_max: no such process runs, so the lock is stale.
        std::fs::write(&lock, "999999999\n").unwrap();
        if process_runs(999_999_999) == Some(false) {
            let held = OutputLock::acquire(&out).unwrap();
            assert_eq!(std::fs::read_to_string(held.path()).unwrap(), format!("{}\n", std::process::id()));
            drop(held);
            assert!(!lock.exists(), "released on drop");
        }
        // No temporaries left beside the output.
        let left: Vec<_> = std::fs::read_dir(d.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert!(left.iter().all(|n| !n.to_string_lossy().contains(".tmp-")), "{left:?}");
    }

    /// A killed child not yet reaped (a zombie) holds no lock.
    #[test]
    fn a_zombie_does_not_run() {
        if process_runs(std::process::id()).is_none() {
            return;
        }
        assert_eq!(process_runs(std::process::id()), Some(true));
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        assert_eq!(process_runs(pid), Some(true));
        child.kill().unwrap();
        // Not waited for yet: a zombie once the signal is delivered.
        let t = std::time::Instant::now();
        while process_runs(pid) == Some(true) && t.elapsed() < std::time::Duration::from_secs(10) {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(process_runs(pid), Some(false), "a zombie is not running");
        child.wait().unwrap();
        assert_eq!(process_runs(pid), Some(false));
    }

    #[test]
    fn a_path_with_dots_locks_the_folder_it_names() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("run")).unwrap();
        let a = OutputLock::acquire(d.path().join("run")).unwrap();
        assert!(OutputLock::acquire(d.path().join("run/.")).is_err());
        assert!(OutputLock::acquire(d.path().join("run/../run")).is_err());
        drop(a);
    }
}
