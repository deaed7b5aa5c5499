//! `sof`: the SpatialOmics-Foundation command line.

mod commands;
mod util;

use clap::{Parser, Subcommand};

/// SpatialOmics-Foundation: one model for dissociated and spatial single-cell data.
///
/// Start with `sof demo`, which runs on a built-in synthetic tissue and needs no data.
#[derive(Debug, Parser)]
#[command(name = "sof", version, propagate_version = true, max_term_width = 100)]
struct Cli {
    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Only errors and the final summary.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Worker threads (default: all cores).
    #[arg(long, global = true, env = "SOF_THREADS")]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Demo(commands::demo::Args),
    Synth(commands::synth::Args),
    Inspect(commands::inspect::Args),
    Datasets(commands::datasets::Args),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    util::init_logging(cli.verbose, cli.quiet);
    if let Some(n) = cli.threads {
        if let Err(e) = rayon::ThreadPoolBuilder::new().num_threads(n).build_global() {
            tracing::warn!("could not set {n} threads: {e}");
        }
    }
    let result = match cli.command {
        Command::Demo(a) => commands::demo::run(a, cli.quiet),
        Command::Synth(a) => commands::synth::run(a, cli.quiet),
        Command::Inspect(a) => commands::inspect::run(a),
        Command::Datasets(a) => commands::datasets::run(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("error: {e:#}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}
