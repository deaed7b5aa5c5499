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

/// The command line did not parse (an unknown flag, a missing value): clap's message, which
/// already starts with `error:` and ends with a usage line. `sof` prints it as it is and exits
/// with 2, as clap-based and POSIX tools do for usage errors.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.trim_end())
    }
}

impl std::error::Error for UsageError {}

/// Parses `args` (program name first) and runs the command.
pub fn run<I, T>(args: I) -> anyhow::Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli =
        Cli::try_parse_from(args).map_err(|e| if e.use_stderr() { UsageError(e.to_string()) } else { e.exit() })?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// `sof --help` lists each command with a one-line summary, and every flag of every command
    /// says what it is for: a flag without text in `sof <command> --help` is a papercut.
    #[test]
    fn help_is_one_line_per_command_and_every_flag_has_text() {
        let mut cli = Cli::command();
        cli.build();
        let mut missing = Vec::new();
        for sub in cli.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
            let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
            assert!(!about.is_empty() && !about.contains('\n'), "{}: about {about:?}", sub.get_name());
            assert!(about.chars().count() <= 86, "{}: the summary is {} chars: {about}", sub.get_name(), about.len());
            for arg in sub.get_arguments().filter(|a| !a.is_hide_set()) {
                if arg.get_help().is_none_or(|h| h.to_string().trim().is_empty()) {
                    missing.push(format!("{} --{}", sub.get_name(), arg.get_id()));
                }
            }
        }
        assert!(missing.is_empty(), "flags without help text: {missing:?}");
        // Each command ends its help with examples laid out as typed: one command per line,
        // continued with `\` (clap rewraps doc-comment paragraphs, so they live in after_help).
        for sub in cli.get_subcommands_mut().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
            let name = sub.get_name().to_owned();
            let help = sub.render_long_help().to_string();
            let examples = help.split_once("Examples:\n").map(|e| e.1).unwrap_or_else(|| panic!("{name}: {help}"));
            let first = examples.lines().next().unwrap_or_default();
            assert!(first.starts_with(&format!("  sof {name} ")), "{name}: {first:?}");
            for line in examples.lines() {
                assert!(line.chars().count() <= 100, "{name}: {line:?}");
                assert!(
                    line.starts_with("  sof ") || line.starts_with("      --") || line.starts_with("  # "),
                    "{name}: {line:?}"
                );
            }
        }
        let top = cli.render_help().to_string();
        assert!(top.lines().count() <= 40, "sof --help is {} lines:\n{top}", top.lines().count());
        assert!(top.contains("Embed every cell of an .h5ad"), "{top}");
    }

    fn parse(args: &[&str]) -> Command {
        Cli::try_parse_from(std::iter::once("sof").chain(args.iter().copied())).unwrap().command
    }

    /// A flag that takes several values takes them after one flag, repeated, or comma-separated
    /// where it says so, and every form gives the same list.
    #[test]
    fn multi_value_flags_take_every_form() {
        let pretrain = |args: &[&str]| match parse(args) {
            Command::Pretrain(a) => (a.corpora, a.weights),
            c => panic!("{c:?}"),
        };
        let spaced = pretrain(&["pretrain", "-o", "r", "--corpus", "a", "b", "--weights", "1", "2", "--steps", "5"]);
        let repeated = pretrain(&["pretrain", "-o", "r", "--corpus", "a", "--corpus", "b", "--weights", "1,2"]);
        assert_eq!(spaced, repeated);
        assert_eq!(spaced.0, [std::path::PathBuf::from("a"), "b".into()]);
        assert_eq!(spaced.1, [1.0, 2.0]);
        let probe = |args: &[&str]| match parse(args) {
            Command::Probe(a) => (a.where_, a.drop, a.head),
            c => panic!("{c:?}"),
        };
        let base = ["probe", "-i", "x.h5ad", "--label", "layer", "-o", "p.json"];
        let spaced =
            probe(&[&base[..], &["--where", "a=1", "b!=2", "--drop", "X", "Y", "--head", "linear", "mlp"]].concat());
        let repeated = probe(
            &[&base[..], &["--where", "a=1", "--where", "b!=2", "--drop", "X,Y", "--head", "linear", "--head", "mlp"]]
                .concat(),
        );
        assert_eq!(format!("{spaced:?}"), format!("{repeated:?}"));
        assert_eq!(spaced.0, ["a=1", "b!=2"]);
        assert_eq!(spaced.1, ["X", "Y"]);
        assert_eq!(spaced.2.len(), 2);
    }
}
