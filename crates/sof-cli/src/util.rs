//! Logging, progress bars and small output helpers shared by the commands.

use std::path::Path;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tracing_subscriber::EnvFilter;

/// Installs the log subscriber: `RUST_LOG` wins, else `-v`/`-q` pick the level.
pub fn init_logging(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, _) => "debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    // A second call (tests run several commands in one process) keeps the first subscriber.
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).try_init();
}

/// A progress bar over `total` items (hidden when quiet or not on a terminal).
pub fn progress(total: u64, what: &str, quiet: bool) -> ProgressBar {
    let pb = ProgressBar::new(total);
    if quiet {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    pb.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:30}] {human_pos}/{human_len} ({per_sec}, eta {eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_owned());
    pb
}

/// Peak resident memory of this process in bytes (Linux), for summaries and benchmarks.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Refuses to replace an existing file at `output` that sof did not write, unless `force`: a
/// text output (JSON report, TSV) given the path of the user's own data by mistake. `ours` tells
/// from the file's text whether sof wrote it (it parses as the report, or starts with sof's
/// header); those are replaced without asking, so a rerun needs no flag.
pub fn check_replace_text(output: &Path, force: bool, ours: impl Fn(&str) -> bool) -> anyhow::Result<()> {
    // A file too large for a report of ours, or not text, is someone else's.
    let text_is_ours = |p: &Path| {
        let small = std::fs::metadata(p).is_ok_and(|m| m.len() < 1 << 30);
        small && std::fs::read_to_string(p).ok().as_deref().is_some_and(&ours)
    };
    Ok(sof_io::atomic::check_replace_with(output, force, "a file sof wrote", text_is_ours)?)
}

/// Writes `text` to `path` atomically.
pub fn write_atomic(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = sof_io::AtomicPath::new(path)?;
    std::fs::write(tmp.path(), text)?;
    tmp.commit()?;
    Ok(())
}

/// Median of a slice (0 for an empty one).
pub fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() { 0.0 } else { sof_tasks::metrics::median(values) }
}

/// Prints a line of the final summary on stdout (the one thing commands print there).
/// A reader that closed the pipe (`sof inspect x.h5ad | head -1`) ends the process quietly
/// with success, as Unix tools do.
pub fn say(line: impl AsRef<str>) {
    use std::io::Write;
    if let Err(e) = writeln!(std::io::stdout().lock(), "{}", line.as_ref()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        tracing::error!("writing to stdout: {e}");
    }
}

/// A flag that Ctrl-C sets (long jobs stop cleanly at their next checkpoint).
pub fn stop_on_ctrl_c() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    static STOP: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
    STOP.get_or_init(|| {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        // One handler per process (tests run commands in-process, so this runs once).
        if ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)).is_err() {
            tracing::debug!("Ctrl-C handler already installed");
        }
        stop
    })
    .clone()
}

/// The progress style of pretraining: steps, eta, and loss / accuracy / speed in the prefix.
pub fn steps_style(pb: &ProgressBar) {
    pb.set_style(
        ProgressStyle::with_template("{msg:>8} [{bar:30}] {pos}/{len} steps, eta {eta} | loss {prefix}")
            .expect("valid template")
            .progress_chars("=> "),
    );
}

/// Runs a pretraining with a progress bar (loss, accuracy, tokens/s); Ctrl-C writes a
/// checkpoint and stops (`Summary::interrupted`).
pub fn train(
    trainer: &sof_pretrain::Trainer,
    steps: u64,
    resume: bool,
    quiet: bool,
) -> anyhow::Result<sof_pretrain::Summary> {
    let stop = stop_on_ctrl_c();
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let pb = progress(steps, "pretrain", quiet);
    steps_style(&pb);
    let summary = trainer.run(resume, &command, &stop, &mut |e| match e {
        sof_pretrain::Event::Started { first_step, .. } => pb.set_position(first_step),
        sof_pretrain::Event::Step { step, loss, accuracy, tokens_per_second, .. } => {
            pb.set_position(step);
            pb.set_prefix(format!("{loss:.3}, acc {:.1}%, {tokens_per_second:.0} tok/s", accuracy * 100.0));
        }
        sof_pretrain::Event::Checkpoint { step, path } => tracing::info!(step, path = %path.display(), "checkpoint"),
    })?;
    pb.finish_and_clear();
    Ok(summary)
}
