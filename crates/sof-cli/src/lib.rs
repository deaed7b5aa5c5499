//! `sof`: the SpatialOmics-Foundation command line (the logic lives in the `sof_cli` library so
//! end-to-end tests can run it in-process).

// Doc comments here are also the `--help` text, where `<output>` and `<name>` are meant
// literally (rustdoc would read them as HTML tags).
#![allow(rustdoc::invalid_html_tags)]

pub mod commands;
mod device;
mod preflight;
mod util;

use clap::{Parser, Subcommand};

/// SpatialOmics-Foundation: one model for dissociated and spatial single-cell data.
///
/// Start with `sof demo`, which runs on a built-in synthetic tissue and needs no data.
#[derive(Debug, Parser)]
#[command(name = "sof", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
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
    Tokenize(commands::tokenize::Args),
    Embed(commands::embed::Args),
    Pretrain(commands::pretrain::Args),
    Probe(Box<commands::probe::Args>),
    Map(commands::map::Args),
    TechMeans(commands::tokenize::MeansArgs),
    Spatial(commands::spatial::Args),
    Datasets(commands::datasets::Args),
    /// Walks an HDF5 file's structure (the child side of the preflight of HDF5 inputs).
    #[command(name = "__walk", hide = true)]
    Walk(preflight::WalkArgs),
}

impl Command {
    /// The HDF5 files the command opens, walked in a child process first ([`preflight`]): its
    /// cell files, and an existing `.h5ad` output it opens to see whether sof wrote it (not with
    /// `--force`, which replaces the output without opening it).
    fn cell_inputs(&self) -> Vec<&std::path::Path> {
        fn output(path: &std::path::Path, force: bool) -> Option<&std::path::Path> {
            (!force).then_some(path)
        }
        match self {
            Command::Inspect(a) => vec![&a.input],
            Command::Tokenize(a) => vec![&a.input],
            Command::Embed(a) => [Some(a.input.as_path()), output(&a.output, a.force)].into_iter().flatten().collect(),
            Command::Probe(a) => vec![&a.input],
            Command::Map(a) => [Some(a.reference.as_path()), Some(a.query.as_path()), output(&a.output, a.force)]
                .into_iter()
                .flatten()
                .collect(),
            Command::TechMeans(a) => a.input.iter().map(|p| p.as_path()).collect(),
            Command::Spatial(a) => {
                [Some(a.input.as_path()), output(&a.output, a.force)].into_iter().flatten().collect()
            }
            _ => Vec::new(),
        }
    }
}

/// A job stopped on request (Ctrl-C) after saving its work; `sof` exits with 130, as a shell
/// expects of an interrupted command, so `sof pretrain ... && sof embed ...` stops too.
#[derive(Debug)]
pub struct Interrupted(pub String);

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Interrupted {}

/// Parses `args` (program name first) and runs the command.
pub fn run<I, T>(args: I) -> anyhow::Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = Cli::try_parse_from(args).map_err(|e| if e.use_stderr() { anyhow::anyhow!("{e}") } else { e.exit() })?;
    util::init_logging(cli.verbose, cli.quiet);
    if let Some(n) = cli.threads
        && let Err(e) = rayon::ThreadPoolBuilder::new().num_threads(n).build_global()
    {
        tracing::warn!("could not set {n} threads: {e}");
    }
    preflight::check(&cli.command.cell_inputs())?;
    match cli.command {
        Command::Demo(a) => commands::demo::run(a, cli.quiet),
        Command::Synth(a) => commands::synth::run(a, cli.quiet),
        Command::Inspect(a) => commands::inspect::run(a),
        Command::Tokenize(a) => commands::tokenize::run(a, cli.quiet),
        Command::Embed(a) => commands::embed::run(a, cli.quiet),
        Command::Pretrain(a) => commands::pretrain::run(a, cli.quiet),
        Command::Probe(a) => commands::probe::run(*a),
        Command::Map(a) => commands::map::run(a),
        Command::TechMeans(a) => commands::tokenize::run_means(a),
        Command::Spatial(a) => commands::spatial::run(a),
        Command::Datasets(a) => commands::datasets::run(a),
        Command::Walk(a) => preflight::walk(a),
    }
}
