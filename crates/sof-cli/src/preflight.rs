//! Inputs that libhdf5 cannot survive: before a command opens an HDF5 input (.h5ad, .loom), `sof`
//! walks the file's structure in a child process (`sof __walk FILE`, [`sof_io::h5ad::walk`]).
//! libhdf5 trusts a file's internal structure, and some byte-corrupted files make it read out of
//! bounds (SIGSEGV) or loop forever, which no error handling inside this process could catch. When
//! the child dies by a signal or runs past the time limit, the command stops with an error naming
//! the file; when the walk ends with an ordinary error (or succeeds), the command goes on and its
//! own reader reports the problem with full context.
//!
//! Cost: one process start and a read of the file's structure and small datasets (debug build,
//! 2026-12-04: 0.02 s for STARmap's 0.6 MB and the 7.5 MB intestine file, 0.18 s for the 6.4 MB
//! Xenium subset). `SOF_PREFLIGHT=0` turns it off; `SOF_PREFLIGHT_TIMEOUT`
//! (seconds, default 30) bounds the walk.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::bail;

const DEFAULT_TIMEOUT_S: u64 = 30;
/// SIGKILL's number (POSIX fixes it at 9; libc is a dependency only on Linux/glibc).
const SIGKILL: i32 = 9;

/// Whether `path` is an HDF5 file sof would open with libhdf5: by extension, or by the HDF5
/// signature at the start.
fn is_hdf5(path: &Path) -> bool {
    let by_name = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| ["h5ad", "loom", "h5", "hdf5"].contains(&e.to_ascii_lowercase().as_str()));
    by_name || {
        use std::io::Read;
        let mut magic = [0u8; 8];
        std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && &magic == b"\x89HDF\r\n\x1a\n"
    }
}

/// Walks each HDF5 file among `paths` in a child process (see the module docs).
pub fn check(paths: &[&Path]) -> anyhow::Result<()> {
    if std::env::var("SOF_PREFLIGHT").is_ok_and(|v| v == "0") {
        return Ok(());
    }
    let timeout =
        std::env::var("SOF_PREFLIGHT_TIMEOUT").ok().and_then(|v| v.parse::<u64>().ok()).unwrap_or(DEFAULT_TIMEOUT_S);
    // Only the `sof` binary has the `__walk` command (tests run the commands in-process).
    let Some(exe) = std::env::current_exe().ok().filter(|e| e.file_stem().is_some_and(|s| s == "sof")) else {
        tracing::debug!("not running as the sof binary: HDF5 preflight skipped");
        return Ok(());
    };
    for path in paths.iter().filter(|p| p.is_file() && is_hdf5(p)) {
        let mut child = match Command::new(&exe)
            .arg("__walk")
            .arg(path)
            .env("SOF_PREFLIGHT", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("could not start the HDF5 preflight for {}: {e}", path.display());
                continue;
            }
        };
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break Some(status);
            }
            if started.elapsed() > Duration::from_secs(timeout) {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        tracing::debug!(file = %path.display(), seconds = started.elapsed().as_secs_f64(), "HDF5 preflight");
        match status {
            None => bail!(
                "{}: reading this file's HDF5 structure did not finish in {timeout} s: the file is most likely corrupt \
                 (libhdf5 loops forever on some damaged files). Restore or re-export it (e.g. anndata's write_h5ad); \
                 if it is only very large on a slow disk, set SOF_PREFLIGHT_TIMEOUT to more seconds",
                path.display()
            ),
            Some(status) => {
                use std::os::unix::process::ExitStatusExt;
                if let Some(signal) = status.signal() {
                    bail!("{}", signal_message(path, signal));
                }
            }
        }
    }
    Ok(())
}

/// What a walk that died by `signal` means for the user. SIGKILL comes from outside (the
/// kernel's out-of-memory killer, a memory limit, a `kill -9`), not from a fault inside libhdf5,
/// so it does not blame the file.
fn signal_message(path: &Path, signal: i32) -> String {
    if signal == SIGKILL {
        format!(
            "{}: the process reading this file's HDF5 structure was killed (signal 9), most likely for running \
             out of memory (the kernel's OOM killer or a memory limit). Free memory or raise the limit and rerun; \
             SOF_PREFLIGHT=0 skips this check",
            path.display()
        )
    } else {
        format!(
            "{}: the HDF5 library crashed (signal {signal}) reading this file's structure: the file is corrupt. \
             Restore or re-export it (e.g. anndata's write_h5ad); `h5dump -H` shows where it breaks",
            path.display()
        )
    }
}

/// `sof __walk FILE` (hidden): the child side of [`check`].
#[derive(Debug, clap::Args)]
pub struct WalkArgs {
    pub input: std::path::PathBuf,
}

pub fn walk(args: WalkArgs) -> anyhow::Result<()> {
    let w = sof_io::h5ad::walk(&args.input)?;
    tracing::info!(groups = w.groups, datasets = w.datasets, attributes = w.attributes, errors = ?w.errors, "walked");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_killed_walk_is_not_blamed_on_the_file() {
        let path = Path::new("cells.h5ad");
        let killed = signal_message(path, SIGKILL);
        assert!(killed.starts_with("cells.h5ad: "), "{killed}");
        assert!(killed.contains("killed (signal 9)") && killed.contains("out of memory"), "{killed}");
        assert!(!killed.contains("corrupt"), "{killed}");
        let crashed = signal_message(path, 11);
        assert!(crashed.contains("crashed (signal 11)") && crashed.contains("corrupt"), "{crashed}");
    }
}
