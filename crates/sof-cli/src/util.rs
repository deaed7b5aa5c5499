//! Logging, progress bars and small output helpers shared by the commands.

use anyhow::Context;
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
#[allow(clippy::print_stdout)]
pub fn say(line: impl AsRef<str>) {
    println!("{}", line.as_ref());
}

/// Rows whose obs satisfy every `col=value` / `col!=value` condition.
pub fn filter_rows(obs: &sof_io::Frame, path: &std::path::Path, conditions: &[String]) -> anyhow::Result<Vec<bool>> {
    let mut ok = vec![true; obs.len()];
    for c in conditions {
        let (key, value, equal) = match (c.split_once("!="), c.split_once('=')) {
            (Some((k, v)), _) => (k, v, false),
            (None, Some((k, v))) => (k, v, true),
            _ => anyhow::bail!("'{c}': a condition is col=value or col!=value"),
        };
        let col = obs.get(key).with_context(|| {
            format!(
                "{}: obs has no column '{key}' (in '{c}'); columns are: {}",
                path.display(),
                obs.column_names().collect::<Vec<_>>().join(", ")
            )
        })?;
        let labels = col.labels();
        if !labels.iter().flatten().any(|l| l == value) {
            anyhow::bail!("{}: no cell has {key} = '{value}' (in '{c}')", path.display());
        }
        for (o, l) in ok.iter_mut().zip(&labels) {
            *o &= (l.as_deref() == Some(value)) == equal;
        }
    }
    Ok(ok)
}
