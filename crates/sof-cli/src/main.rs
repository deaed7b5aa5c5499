//! The `sof` binary: parses the command line and reports errors.

fn main() -> std::process::ExitCode {
    keep_freed_memory();
    match sof_cli::run(std::env::args_os()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let interrupted = e.downcast_ref::<sof_cli::Interrupted>().is_some();
            let usage = e.downcast_ref::<sof_cli::UsageError>().is_some();
            #[allow(clippy::print_stderr)]
            {
                if interrupted || usage {
                    eprintln!("{e}");
                } else {
                    eprintln!("error: {e:#}");
                }
            }
            // 130 = 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C; 2 for a
            // command line that did not parse.
            if interrupted {
                std::process::ExitCode::from(130)
            } else if usage {
                std::process::ExitCode::from(2)
            } else {
                std::process::ExitCode::FAILURE
            }
        }
    }
}

/// Streaming commands allocate and free the same large buffers block after block (HDF5 reads,
/// Parquet pages). glibc's defaults hand blocks over 128 KiB to the kernel as fresh mappings and
/// trim freed memory back, so every block page-faulted its buffers in anew (a fifth of
/// `sof tokenize`'s time on whole-transcriptome cells). Keeping allocations up to 32 MiB in the
/// heap and freed memory in the process makes them reusable; peak memory is unchanged, the
/// resident size simply does not shrink after a peak.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn keep_freed_memory() {
    // SAFETY: mallopt only sets allocator parameters (two integers, no pointers); it is called
    // before any other thread exists. A refused setting returns 0 and changes nothing.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}
