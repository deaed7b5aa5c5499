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

/// An advisory lock on an output file or folder: the file `.<name>.lock` beside it, locked with
/// the kernel's `flock` (released by the kernel when its process ends, however it ends) and
/// holding the writer's PID for the message a second writer gets: [`Error::Locked`] naming the
/// holder. A lock file left by a process that no longer runs (killed, crashed) holds no kernel
/// lock and is taken over, even where its PID now belongs to another process; two runs taking
/// over one stale lock at once cannot both win (before this, each could remove the other's
/// fresh lock). The file is removed when the lock is dropped, before the kernel lock is
/// released; a waiter that opened it meanwhile sees that the path no longer names the file it
/// locked and tries again. On a file system without `flock`, the PID alone decides: a lock whose
/// process runs is held.
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
    /// The open lock file: its kernel lock lasts as long as this handle.
    handle: std::fs::File,
}

/// The PID a lock file names (none while its writer has not written it yet).
fn holder(file: &Path) -> Option<u32> {
    std::fs::read_to_string(file).ok().and_then(|s| s.trim().parse().ok())
}

/// Whether `path` still names the open file `f` (a releasing holder unlinks the path first).
fn names(path: &Path, f: &std::fs::File) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (std::fs::metadata(path), f.metadata()) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = f;
        path.exists()
    }
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
        let file = dir.join(format!(".{}.lock", name.to_string_lossy()));
        let me = std::process::id();
        let locked = |pid: u32| Error::Locked { path: output.to_path_buf(), lock: file.clone(), pid };
        // A few tries: each lost one means another writer released the lock in between.
        for _ in 0..16 {
            let mut f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&file)
                .map_err(|e| Error::io(&file, e))?;
            match f.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => {
                    // Held. Its PID is written just after the lock is taken (until then the
                    // file is empty or names the stopped run it took over): wait for it briefly.
                    let mut pid = holder(&file);
                    for _ in 0..20 {
                        if pid.is_some_and(|p| process_runs(p) != Some(false)) {
                            break;
                        }
                        std::thread::sleep(std::time::Duration::from_millis(10));
                        pid = holder(&file);
                    }
                    return Err(locked(pid.unwrap_or(0)));
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    // No flock here (some network and FUSE file systems): the PID decides.
                    tracing::debug!(lock = %file.display(), error = %e, "no kernel lock; using the PID alone");
                    if let Some(pid) = holder(&file).filter(|&p| p != me)
                        && process_runs(pid) != Some(false)
                    {
                        return Err(locked(pid));
                    }
                }
            }
            if !names(&file, &f) {
                continue; // its holder removed it while we waited: lock the next one
            }
            if holder(&file).is_some_and(|p| p != me) {
                tracing::info!(lock = %file.display(), "taking over the lock of a stopped run");
            }
            use std::io::Seek;
            f.set_len(0).map_err(|e| Error::io(&file, e))?;
            f.seek(std::io::SeekFrom::Start(0)).map_err(|e| Error::io(&file, e))?;
            f.write_all(format!("{me}\n").as_bytes()).map_err(|e| Error::io(&file, e))?;
            return Ok(Self { file, handle: f });
        }
        Err(locked(holder(&file).unwrap_or(0)))
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.file
    }
}

impl Drop for OutputLock {
    fn drop(&mut self) {
        // The path first, while the kernel lock is held (so nobody else holds this file), then
        // the lock itself when the handle closes.
        if names(&self.file, &self.handle) {
            let _ = std::fs::remove_file(&self.file);
        }
        let _ = self.handle.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With `SOF_TEST_HOLD_LOCK=<output>`, this test is the other process of
    /// [`a_killed_holders_lock_is_taken_over`]: it takes the lock and waits to be killed.
    #[test]
    fn hold_a_lock_for_another_test() {
        let Some(out) = std::env::var_os("SOF_TEST_HOLD_LOCK") else { return };
        let _held = OutputLock::acquire(&out).unwrap();
        std::thread::sleep(std::time::Duration::from_secs(60));
    }

    #[test]
    fn a_killed_holders_lock_is_taken_over() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("corpus");
        let lock = d.path().join(".corpus.lock");
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "lock::tests::hold_a_lock_for_another_test", "--nocapture", "--test-threads", "1"])
            .env("SOF_TEST_HOLD_LOCK", &out)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        let t = std::time::Instant::now();
        while holder(&lock) != Some(pid) {
            assert!(t.elapsed() < std::time::Duration::from_secs(30), "the other process did not take the lock");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // Held by a live process: refused, the holder named, its lock left alone.
        let e = OutputLock::acquire(&out).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, Error::Locked { pid: p, .. } if p == pid), "{msg}");
        assert!(msg.contains("corpus") && msg.contains(&format!("pid {pid}")) && msg.contains(".corpus.lock"), "{msg}");
        assert_eq!(holder(&lock), Some(pid), "a live holder's lock stays");
        // Killed (no chance to clean up): its lock file stays, and is taken over.
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(holder(&lock), Some(pid), "a killed writer leaves its lock file");
        let held = OutputLock::acquire(&out).unwrap();
        assert_eq!(std::fs::read_to_string(held.path()).unwrap(), format!("{}\n", std::process::id()));
        drop(held);
        assert!(!lock.exists(), "released on drop");
    }

    /// A lock file naming a process that runs but holds no lock (its PID reused, or a file
    /// written by hand) is stale: taken over, not a refusal forever.
    #[test]
    fn a_lock_file_without_a_kernel_lock_is_stale() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("run");
        let lock = d.path().join(".run.lock");
        // PID 1 always runs.
        std::fs::write(&lock, "1\n").unwrap();
        let held = OutputLock::acquire(&out).unwrap();
        assert_eq!(holder(&lock), Some(std::process::id()));
        drop(held);
        assert!(!lock.exists());
    }

    /// Many writers taking over one stale lock at once: exactly one wins, the others are
    /// refused naming it.
    #[test]
    fn one_of_many_racing_writers_wins() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("embedded.h5ad");
        std::fs::write(d.path().join(".embedded.h5ad.lock"), "999999999\n").unwrap();
        let start = std::sync::Barrier::new(8);
        let results: Vec<Result<OutputLock>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        start.wait();
                        OutputLock::acquire(&out)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "{results:?}");
        for r in &results {
            if let Err(e) = r {
                assert!(matches!(e, Error::Locked { pid, .. } if *pid == std::process::id()), "{e}");
            }
        }
        drop(results);
        // No temporaries left beside the output, and the lock is gone with its holder.
        let left: Vec<_> = std::fs::read_dir(d.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert!(left.is_empty(), "{left:?}");
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
