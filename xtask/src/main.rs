//! `cargo xtask <job>`: the project's jobs (demo, tests, benchmarks, Python interop checks).
//!
//! xtask depends on none of the project's crates: it shells out to cargo and the `sof` binary,
//! so it builds in seconds and can install what the build needs first.

// Doc comments are also the `--help` text, where `<output>` is meant literally.
#![allow(rustdoc::invalid_html_tags)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

mod eval;

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "SpatialOmics-Foundation project jobs")]
struct Cli {
    #[command(subcommand)]
    job: Job,
}

#[derive(Debug, Subcommand)]
enum Job {
    /// Install the system libraries the build needs (Debian/Ubuntu: libhdf5-dev, pkg-config).
    Setup,
    /// The README's main job: `sof demo` on the built-in synthetic tissue (release build).
    Demo {
        /// Arguments passed to `sof demo`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The README's test command: setup, a Python venv with anndata for interop checks, then
    /// `cargo test --workspace`. In CI (CI=true) missing shared data or Python fail the run, and
    /// the wgpu and cuda features are type-checked (also with SOF_CHECK_GPU_FEATURES=1).
    Test,
    /// The mutation harness (crates/sof-cli/tests/fuzz.rs): mutants of the shared .h5ad, .loom,
    /// .safetensors and .ckpt files through inspect, spatial, tokenize and embed, each in its own
    /// process with time and memory limits. Fails on any panic, abort, signal, hang, non-finite
    /// output or output left by a failed run; prints counts per mutation and command.
    Fuzz {
        #[arg(long, default_value_t = 1000)]
        iterations: usize,
        /// The first mutant's number: mutant i depends only on (seed, i), so a long pass can run
        /// in pieces (`--first 0 --iterations 2000`, then `--first 2000`, ...).
        #[arg(long, default_value_t = 0)]
        first: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Mutants in flight at once (default: all cores).
        #[arg(long)]
        jobs: Option<usize>,
        /// Write the counts and any failures as JSON here.
        #[arg(long)]
        report: Option<PathBuf>,
        /// Run the release build of `sof` (a clean release build takes ~13 min here).
        #[arg(long)]
        release: bool,
    },
    /// Benchmarks against named peers; results go to stdout (see docs/BENCHMARKS.md).
    Bench {
        #[command(subcommand)]
        what: Bench,
    },
    /// Pretrain on real data: tokenize every .h5ad dataset in datasets/ with the reference
    /// vocabulary (resumable: finished corpora are kept), then `sof pretrain` on all of them.
    /// Prints the validation loss beside the unigram baseline. Needs ../shared (or --shared-dir).
    PretrainShared {
        #[arg(long, default_value_t = 3000)]
        steps: u64,
        #[arg(long, default_value = "small")]
        preset: String,
        #[arg(long, default_value_t = 32)]
        batch_size: usize,
        /// Where corpora and the run go.
        #[arg(long, default_value = "target/sof-shared")]
        output: PathBuf,
        #[arg(long)]
        shared_dir: Option<PathBuf>,
        /// Niche-aware pretraining: spatial datasets with a cell-type column get composition
        /// and density targets (`sof spatial --mean-neighbors 20`) in their corpora, and the run
        /// adds the niche objective (corpora go to <output>/corpora-niche).
        #[arg(long)]
        niche: bool,
        /// Extra `sof pretrain` arguments (e.g. --norm-first, --lr 5e-4, --resume).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Ablation of the niche-aware objective: `sof demo` with and without it (same seed, same
    /// data, same steps), probe metrics side by side.
    Ablation {
        #[arg(long, default_value_t = 400)]
        steps: u64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value = "target/sof-ablation")]
        output: PathBuf,
    },
    /// The downstream benchmark (issue 7) on ../shared data: STARmap layer and cell type
    /// (section held out), osmFISH region and smFISH depth (spatial blocks), composition and
    /// density at 10/20/50 neighbours, intestine zones, and a held-out STARmap section mapped as
    /// dissociated cells. Embedding (linear probe, MLP) and fine-tuned model beside PCA and raw
    /// expression on the same folds; writes docs/RESULTS.md and docs/images/results/.
    Eval {
        /// The pretrained model folder (from `cargo xtask pretrain-shared`).
        #[arg(long, default_value = "target/sof-shared/run-small/model")]
        checkpoint: PathBuf,
        /// Intermediate files (reused when present).
        #[arg(long, default_value = "target/sof-eval")]
        output: PathBuf,
        #[arg(long)]
        shared_dir: Option<PathBuf>,
        /// Fine-tuning epochs per fold (0: no fine-tuning).
        #[arg(long, default_value_t = 5)]
        finetune_epochs: usize,
        /// Seeds for the spatial-block and shuffled folds.
        #[arg(long, default_value_t = 2)]
        seeds: u64,
        /// Only print the tables and keep them in the output folder; do not touch docs/.
        #[arg(long)]
        no_docs: bool,
        /// A second model folder, evaluated with the linear probe only, in its own column.
        #[arg(long)]
        compare: Option<PathBuf>,
    },
    /// Regenerate crates/sof-io/tests/it/anndata_expected.json from Python anndata.
    ExpectedH5ad {
        /// Data folder (default ../shared/data).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// Synthetic tissue generation: cells/s and peak memory of `sof synth`.
    Synth {
        #[arg(long, default_value_t = 1_000_000)]
        cells: usize,
    },
    /// Tokenization: `sof tokenize` (1 and 2 threads) against the reference approach in numpy +
    /// numba (dense chunks over the vocabulary, one thread) on the same cells, tokens compared;
    /// then peak memory of `sof tokenize` streaming `--cells` cells.
    Tokenize {
        /// Cells for the streaming memory run.
        #[arg(long, default_value_t = 2_000_000)]
        cells: usize,
        /// Spatial cells (a 400-gene panel) both tokenizers process for the speed comparison.
        #[arg(long, default_value_t = 50_000)]
        peer_cells: usize,
        /// Whole-transcriptome (dissociated) cells both tokenizers process.
        #[arg(long, default_value_t = 20_000)]
        dissociated_cells: usize,
    },
    /// Pretraining throughput: `sof pretrain` against a PyTorch peer with the same architecture,
    /// masked-token step and batch size, on the same corpora (the demo's synthetic tissue), CPU,
    /// same thread count. Training tokens/s = non-PAD tokens per second, median over logging
    /// windows after warm-up.
    Pretrain {
        #[arg(long, default_value = "small")]
        preset: String,
        #[arg(long, default_value_t = 120)]
        steps: u64,
        #[arg(long, default_value_t = 32)]
        batch_size: usize,
        /// Cells of the synthetic tissue the corpora come from.
        #[arg(long, default_value_t = 20_000)]
        cells: usize,
        /// Threads for both (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Embedding throughput of the transformer: sof (burn, CPU) against PyTorch eager running
    /// the same architecture and the same weights (the peer writes a reference-layout .ckpt
    /// that sof imports) on the same generated tokens, threads pinned equal; at the reference's
    /// context length and at a short spatial panel's. Embeddings are compared too.
    Model {
        /// Model size: `nicheformer` (12 layers, 512) or `small` (4 layers, 128).
        #[arg(long, default_value = "nicheformer")]
        preset: String,
        /// Threads for both (pinned with taskset).
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Cells at the full context length (1,500 tokens).
        #[arg(long, default_value_t = 8)]
        long_cells: usize,
        /// Cells at the short panel length (64 tokens).
        #[arg(long, default_value_t = 1024)]
        short_cells: usize,
    },
    /// The niche embedding's cost: `sof embed` of a spatial file with obsm['X_sof_niche'] (the
    /// default) against the cell embedding alone (`--no-niche`), same model (small preset), same
    /// cells, best of two runs each.
    Niche {
        /// Cells of the synthetic tissue (its MERFISH-like file, ~55%, is embedded).
        #[arg(long, default_value_t = 20_000)]
        cells: usize,
    },
    /// Radius graph + neighbourhood composition: `sof spatial` against squidpy
    /// (`spatial_neighbors(coord_type='generic', radius=r)` then adjacency x one-hot) on the same
    /// synthetic cells, with an identical-edges check.
    Spatial {
        #[arg(long, default_value_t = 1_000_000)]
        cells: usize,
        /// Radius in microns (the synthetic tissue's units).
        #[arg(long, default_value_t = 5.0)]
        radius: f64,
        #[arg(long, default_value_t = 4)]
        sections: usize,
    },
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("$ {cmd:?}");
    let status = cmd.status().with_context(|| format!("could not start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn has_hdf5() -> bool {
    Command::new("pkg-config").args(["--exists", "hdf5"]).status().is_ok_and(|s| s.success())
        || Path::new("/usr/include/hdf5/serial/hdf5.h").exists()
}

fn setup() -> Result<()> {
    if has_hdf5() && Command::new("pkg-config").arg("--version").output().is_ok() {
        return Ok(());
    }
    eprintln!("installing the HDF5 library (libhdf5-dev) and pkg-config with apt-get");
    let root_user = Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0")).unwrap_or(false);
    let sudo: &[&str] = if root_user { &[] } else { &["sudo"] };
    let apt = |args: &[&str]| {
        let mut all: Vec<&str> = sudo.to_vec();
        all.push("apt-get");
        all.extend_from_slice(args);
        let mut c = Command::new(all[0]);
        c.args(&all[1..]).env("DEBIAN_FRONTEND", "noninteractive");
        run(&mut c)
    };
    apt(&["update", "-qq"])?;
    apt(&["install", "-y", "-qq", "--no-install-recommends", "libhdf5-dev", "pkg-config"])
        .context("could not install libhdf5-dev; on other systems install HDF5 >= 1.10 and pkg-config by hand")
}

/// A venv at .venv with the Python test tools, or None where Python or PyPI is unavailable.
fn python_venv() -> Result<Option<PathBuf>> {
    let venv = root().join(".venv");
    let python = venv.join("bin/python");
    let marker = venv.join(".sof-requirements");
    let req = root().join("xtask/peers/requirements.txt");
    let wanted = std::fs::read_to_string(&req)?;
    if python.exists() && std::fs::read_to_string(&marker).is_ok_and(|m| m == wanted) {
        return Ok(Some(python));
    }
    let made = run(Command::new("python3").args(["-m", "venv"]).arg(&venv))
        .and_then(|_| run(Command::new(&python).args(["-m", "pip", "install", "-q", "-r"]).arg(&req)));
    match made {
        Ok(()) => {
            std::fs::write(&marker, wanted)?;
            Ok(Some(python))
        }
        Err(e) if !in_ci() => {
            eprintln!("note: no Python venv ({e:#}); the anndata interop checks will be skipped");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn sof_release() -> Result<PathBuf> {
    run(cargo().args(["build", "--release", "-q", "-p", "sof-cli"]))?;
    Ok(root().join("target/release/sof"))
}

fn main() -> Result<()> {
    match Cli::parse().job {
        Job::Setup => setup(),
        Job::Demo { args } => {
            setup()?;
            let sof = sof_release()?;
            run(Command::new(sof).arg("demo").args(args))
        }
        Job::Test => {
            setup()?;
            let mut c = cargo();
            c.args(["test", "--workspace"]);
            if let Some(py) = python_venv()? {
                c.env("SOF_PYTHON", py);
            }
            if in_ci() {
                c.env("SOF_REQUIRE_SHARED", "1");
                // The mutation harness's short seeded pass (~3 min on 2 cores; `cargo xtask
                // fuzz` runs the long one).
                c.env("SOF_FUZZ_ITERATIONS", "200");
            }
            run(&mut c)?;
            if in_ci() || std::env::var_os("SOF_CHECK_GPU_FEATURES").is_some() {
                // The GPU backends must at least compile (no GPU here): wgpu fully, cuda with
                // DOCS_RS=1, which skips cubecl's LLVM download and linking.
                run(cargo().args(["check", "-q", "-p", "sof-cli", "--features", "wgpu"]))?;
                run(cargo().env("DOCS_RS", "1").args(["check", "-q", "-p", "sof-cli", "--features", "cuda"]))?;
                // The training and pipeline libraries take the caller's device: they build with
                // no backend.
                run(cargo().args(["check", "-q", "-p", "sof-pretrain", "--no-default-features"]))?;
                run(cargo().args(["check", "-q", "-p", "sof-pipeline", "--no-default-features"]))?;
            }
            Ok(())
        }
        Job::Fuzz { iterations, first, seed, jobs, report, release } => {
            setup()?;
            let mut c = cargo();
            c.arg("test");
            if release {
                c.arg("--release");
            }
            // --workspace, as `cargo xtask test` builds: `-p sof-cli` alone unifies features
            // differently and rebuilds burn (~15 min on 2 cores) in a tree the tests just built.
            c.args(["--workspace", "--test", "fuzz", "--", "--nocapture"])
                .env("SOF_FUZZ_ITERATIONS", iterations.to_string())
                .env("SOF_FUZZ_FIRST", first.to_string())
                .env("SOF_FUZZ_SEED", seed.to_string())
                .env("SOF_REQUIRE_SHARED", "1");
            if let Some(j) = jobs {
                c.env("SOF_FUZZ_JOBS", j.to_string());
            }
            if let Some(r) = report {
                c.env("SOF_FUZZ_REPORT", std::path::absolute(r)?);
            }
            run(&mut c)
        }
        Job::Bench { what: Bench::Synth { cells } } => {
            setup()?;
            let sof = sof_release()?;
            let out = tempfile_dir("synth-bench")?;
            let start = Instant::now();
            let o = Command::new(&sof)
                .args([
                    "synth",
                    "-q",
                    "--sections",
                    "4",
                    "--dissociated-cells",
                    "0",
                    "--cells",
                    &cells.to_string(),
                    "--output",
                ])
                .arg(&out)
                .output()?;
            let secs = start.elapsed().as_secs_f64();
            let text = String::from_utf8_lossy(&o.stdout);
            print!("{text}");
            if !o.status.success() {
                bail!("sof synth failed: {}", String::from_utf8_lossy(&o.stderr));
            }
            println!(
                "bench synth: {cells} cells in {secs:.2} s wall = {:.0} cells/s (release, {} threads, includes writing .h5ad)",
                cells as f64 / secs,
                std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
            );
            let _ = std::fs::remove_dir_all(&out);
            Ok(())
        }
        Job::Bench { what: Bench::Pretrain { preset, steps, batch_size, cells, threads } } => {
            bench_pretrain(&preset, steps, batch_size, cells, threads)
        }
        Job::Bench { what: Bench::Model { preset, threads, long_cells, short_cells } } => {
            bench_model(&preset, threads, long_cells, short_cells)
        }
        Job::Bench { what: Bench::Spatial { cells, radius, sections } } => bench_spatial(cells, radius, sections),
        Job::Bench { what: Bench::Niche { cells } } => bench_niche(cells),
        Job::Bench { what: Bench::Tokenize { cells, peer_cells, dissociated_cells } } => {
            bench_tokenize(cells, peer_cells, dissociated_cells)
        }
        Job::PretrainShared { steps, preset, batch_size, output, shared_dir, niche, args } => {
            pretrain_shared(steps, &preset, batch_size, &root().join(output), shared_dir, niche, &args)
        }
        Job::Ablation { steps, seed, output } => ablation(steps, seed, &root().join(output)),
        Job::Eval { checkpoint, output, shared_dir, finetune_epochs, seeds, no_docs, compare } => {
            eval::eval(&eval::EvalArgs {
                checkpoint: root().join(checkpoint),
                output: root().join(output),
                shared: shared_dir.unwrap_or_else(|| root().join("../shared")),
                finetune_epochs,
                seeds,
                write_docs: !no_docs,
                compare: compare.map(|c| root().join(c)),
            })
        }
        Job::ExpectedH5ad { data_dir } => {
            let py = python_venv()?.context("needs a Python venv with anndata")?;
            let dir = data_dir.unwrap_or_else(|| root().join("../shared/data"));
            let o = Command::new(py).arg(root().join("xtask/peers/h5ad_expected.py")).arg(dir).output()?;
            if !o.status.success() {
                bail!("{}", String::from_utf8_lossy(&o.stderr));
            }
            std::fs::write(root().join("crates/sof-io/tests/it/anndata_expected.json"), o.stdout)?;
            Ok(())
        }
    }
}

/// A venv at `.venv-bench` with the peer implementations (squidpy...).
fn bench_venv() -> Result<PathBuf> {
    let venv = root().join(".venv-bench");
    let python = venv.join("bin/python");
    let req = root().join("xtask/peers/requirements-bench.txt");
    let wanted = std::fs::read_to_string(&req)?;
    let marker = venv.join(".sof-requirements");
    if !(python.exists() && std::fs::read_to_string(&marker).is_ok_and(|m| m == wanted)) {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
        run(Command::new(&python).args(["-m", "pip", "install", "-q", "-r"]).arg(&req))?;
        std::fs::write(&marker, wanted)?;
    }
    Ok(python)
}

/// The number after `key` in `text` (e.g. "in 1.234 s" with key "in").
fn number_after(text: &str, key: &str) -> Option<f64> {
    let rest = &text[text.find(key)? + key.len()..];
    rest.split_whitespace().next()?.trim_end_matches([',', ';']).parse().ok()
}

fn bench_spatial(cells: usize, radius: f64, sections: usize) -> Result<()> {
    setup()?;
    let sof = sof_release()?;
    let python = bench_venv()?;
    let dir = tempfile_dir("spatial-bench")?;
    let cfg = dir.join("tissue.toml");
    std::fs::write(&cfg, "section_tech = [\"merfish\"]\n")?;
    run(Command::new(&sof)
        .args([
            "synth",
            "-q",
            "--cells",
            &cells.to_string(),
            "--sections",
            &sections.to_string(),
            "--dissociated-cells",
            "0",
            "--config",
        ])
        .arg(&cfg)
        .arg("--output")
        .arg(&dir))?;
    let input = dir.join("spatial_merfish.h5ad");
    let ours = dir.join("ours.h5ad");
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let o = Command::new(&sof)
        .args([
            "spatial",
            "--cell-type-key",
            "cell_type",
            "--section-key",
            "section",
            "--write-graph",
            // The peer computes the graph and the composition only: no niche profile (a PCA of
            // expression and neighbour means that `sof spatial` adds by default).
            "--profile-components",
            "0",
            "--radius",
            &radius.to_string(),
            "--input",
        ])
        .arg(&input)
        .arg("--output")
        .arg(&ours)
        .output()?;
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    if !o.status.success() {
        bail!("sof spatial failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    print!("sof:     {text}");
    let our_s = number_after(&text, "targets in").context("no timing in sof output")?;
    let our_mib = number_after(&text, "peak memory").context("no memory in sof output")?;
    let p = Command::new(&python)
        .arg(root().join("xtask/peers/spatial_squidpy.py"))
        .arg(&input)
        .arg(&ours)
        .arg(radius.to_string())
        .args(["section", "cell_type"])
        .output()?;
    if !p.status.success() {
        bail!("squidpy peer failed: {}", String::from_utf8_lossy(&p.stderr));
    }
    let peer = String::from_utf8_lossy(&p.stdout).into_owned();
    print!("squidpy: {peer}");
    let peer_s = number_after(&peer, "\"compute_s\":").context("no timing from peer")?;
    let peer_mib = number_after(&peer, "\"peak_rss_mib\":").context("no memory from peer")?;
    println!(
        "bench spatial: {cells} cells, {sections} sections, radius {radius}: sof {our_s:.3} s / {our_mib:.0} MiB peak vs squidpy {peer_s:.3} s / {peer_mib:.0} MiB peak -> {:.1}x faster, {:.1}x less memory ({threads} threads; identical edges: {})",
        peer_s / our_s,
        peer_mib / our_mib,
        peer.contains("\"identical_edges\": true")
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// A 20,310-gene synthetic tissue (the reference vocabulary's size), so both tokenizers work over
/// a vocabulary as large as the reference's.
fn synth_for_tokenize(sof: &Path, dir: &Path, cells: usize, dissociated: usize) -> Result<()> {
    let cfg = dir.join("tissue.toml");
    std::fs::write(&cfg, "n_genes = 20310\nsection_tech = [\"merfish\"]\n")?;
    run(Command::new(sof)
        .args([
            "synth",
            "-q",
            "--sections",
            "2",
            "--cells",
            &cells.to_string(),
            "--dissociated-cells",
            &dissociated.to_string(),
            "--config",
        ])
        .arg(&cfg)
        .arg("--output")
        .arg(dir))
}

fn bench_tokenize(cells: usize, peer_cells: usize, dissociated_cells: usize) -> Result<()> {
    setup()?;
    let sof = sof_release()?;
    let python = bench_venv()?;
    let peer_script = root().join("xtask/peers/tokenize_peer.py");
    let dir = tempfile_dir("tokenize-bench")?;
    synth_for_tokenize(&sof, &dir, peer_cells + dissociated_cells, dissociated_cells)?;
    // The vocabulary: the synthetic tissue's 20,310 genes (the dissociated file has them all; the
    // spatial panel is a subset), so both tokenizers rank over a vocabulary as large as the
    // reference's.
    let vocab = dir.join("vocab.tsv");
    run(Command::new(&python).arg(&peer_script).arg("--write-vocab").arg(dir.join("dissociated.h5ad")).arg(&vocab))?;
    // The peer, three times (median rate): its cells/s vary run to run on a shared machine as
    // much as ours do. Every run checks that our tokens equal its tokens.
    let peer_run = |input: &Path, means: &Path, corpus: &Path, panel_only: bool| -> Result<(f64, bool, String)> {
        let mut rates = Vec::new();
        let mut identical = true;
        let mut last = String::new();
        for _ in 0..3 {
            let mut cmd = Command::new("taskset");
            cmd.args(["-c", "0"])
                .arg(&python)
                .env("NUMBA_NUM_THREADS", "1")
                .env("OMP_NUM_THREADS", "1")
                .env("OPENBLAS_NUM_THREADS", "1")
                .arg(&peer_script)
                .arg(input)
                .arg(&vocab)
                .arg(means)
                .arg("fixed")
                .arg(corpus);
            if panel_only {
                cmd.arg("--panel-only");
            }
            let p = cmd.output()?;
            if !p.status.success() {
                bail!("tokenize peer failed: {}", String::from_utf8_lossy(&p.stderr));
            }
            last = String::from_utf8_lossy(&p.stdout).into_owned();
            print!("peer{}: {last}", if panel_only { " (panel genes only)" } else { "" });
            rates.push(number_after(&last, "\"cells_per_s\":").context("no rate from peer")?);
            identical &= last.contains("\"identical\": true");
        }
        rates.sort_by(f64::total_cmp);
        Ok((rates[1], identical, last))
    };
    for (file, tech, modality) in
        [("spatial_merfish", "merfish", "spatial"), ("dissociated", "dissociated", "dissociated")]
    {
        let input = dir.join(format!("{file}.h5ad"));
        let means_dir = dir.join(format!("means-{file}"));
        std::fs::create_dir_all(&means_dir)?;
        let means = means_dir.join(format!("{tech}.tsv"));
        run(Command::new(&sof)
            .args(["-q", "tech-means", "--species", "mouse", "--input"])
            .arg(&input)
            .arg("--vocab")
            .arg(&vocab)
            .arg("--output")
            .arg(&means))?;
        // Median of five runs per thread count: one run of these cells takes a second or less.
        let mut ours = Vec::new();
        for threads in [1, 2] {
            let mut rates = Vec::new();
            for attempt in 0..5 {
                let out = dir.join(format!("corpus-{file}-{threads}"));
                if attempt > 0 {
                    std::fs::remove_dir_all(&out)?;
                }
                // One core: pinned with taskset (sof reads, tokenizes and writes on separate
                // threads); two cores: unpinned.
                let cores = if threads == 1 { "0" } else { "0-63" };
                let o = Command::new("taskset")
                    .args(["-c", cores])
                    .arg(&sof)
                    .args([
                        "-q",
                        "--threads",
                        &threads.to_string(),
                        "tokenize",
                        // Tokens only, as the peer: no label-free niche targets (a PCA of
                        // expression and neighbour means, on by default for spatial input).
                        "--no-niche-profile",
                        "--species",
                        "mouse",
                        "--technology",
                        tech,
                        "--modality",
                        modality,
                        "--input",
                    ])
                    .arg(&input)
                    .arg("--vocab")
                    .arg(&vocab)
                    .arg("--tech-means")
                    .arg(&means_dir)
                    .arg("--output")
                    .arg(&out)
                    .output()?;
                let text = String::from_utf8_lossy(&o.stdout).into_owned();
                if !o.status.success() {
                    bail!("sof tokenize failed: {}", String::from_utf8_lossy(&o.stderr));
                }
                print!("sof ({threads} core(s)): {text}");
                rates.push(
                    text.split("s (")
                        .nth(1)
                        .and_then(|r| r.split_whitespace().next())
                        .and_then(|v| v.parse::<f64>().ok())
                        .context("no rate in sof output")?,
                );
            }
            rates.sort_by(f64::total_cmp);
            ours.push(rates[2]);
        }
        let corpus = dir.join(format!("corpus-{file}-1"));
        let (peer_rate, identical, peer) = peer_run(&input, &means, &corpus, false)?;
        let peer_mib = number_after(&peer, "\"peak_rss_mib\":").unwrap_or(f64::NAN);
        println!(
            "bench tokenize {file}: sof {:.0} cells/s (1 core, end to end incl. reading and writing Parquet), {:.0} cells/s (2 cores, {:.2}x) vs peer {:.0} cells/s (the reference's approach: numpy + numba over the 20,310-gene vocabulary, 1 core, compute only; peak RSS {peer_mib:.0} MiB) -> {:.1}x; tokens identical: {identical}",
            ours[0],
            ours[1],
            ours[1] / ours[0],
            peer_rate,
            ours[0] / peer_rate,
        );
        if modality == "spatial" {
            // The reference densifies the whole vocabulary; a peer that densifies only the panel's
            // genes is faster, and is reported too so the ratio above is not read as the whole story.
            let (panel_rate, identical, _) = peer_run(&input, &means, &corpus, true)?;
            println!(
                "bench tokenize {file}: sof {:.0} cells/s (1 core) vs panel-only peer {:.0} cells/s -> {:.1}x; tokens identical: {identical}",
                ours[0],
                panel_rate,
                ours[0] / panel_rate,
            );
        }
    }
    // Streaming memory: many cells, one technology.
    let big = dir.join("big");
    std::fs::create_dir_all(&big)?;
    let cfg = big.join("tissue.toml");
    std::fs::write(&cfg, "section_tech = [\"merfish\"]\n")?;
    run(Command::new(&sof)
        .args(["synth", "-q", "--sections", "4", "--dissociated-cells", "0", "--cells", &cells.to_string(), "--config"])
        .arg(&cfg)
        .arg("--output")
        .arg(&big))?;
    for f in std::fs::read_dir(&big)? {
        let f = f?.path();
        if f.extension().is_some_and(|e| e == "h5ad") {
            let tech = if f.to_string_lossy().contains("xenium") { "xenium" } else { "merfish" };
            let o = Command::new(&sof)
                .args([
                    "-q",
                    "tokenize",
                    "--no-niche-profile",
                    "--species",
                    "mouse",
                    "--modality",
                    "spatial",
                    "--technology",
                    tech,
                    "--input",
                ])
                .arg(&f)
                .arg("--output")
                .arg(big.join(format!("corpus-{tech}")))
                .output()?;
            print!("sof streaming: {}", String::from_utf8_lossy(&o.stdout));
            if !o.status.success() {
                bail!("sof tokenize failed: {}", String::from_utf8_lossy(&o.stderr));
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn tempfile_dir(name: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("sof-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// A `key = "value"` field of a flat dataset manifest.
fn manifest_field(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"').to_owned())
    })
}

/// Technologies the reference has no token for, added with free ids (19..=29; iss has 19).
const EXTRA_TECHNOLOGIES: &str = "[technology.starmap]\ntoken = 20\nmeans = \"starmap\"\n\n\
[technology.osmfish]\ntoken = 21\nmeans = \"osmfish\"\n\n[technology.smfish]\ntoken = 22\nmeans = \"smfish\"\n";

fn pretrain_shared(
    steps: u64,
    preset: &str,
    batch_size: usize,
    out: &Path,
    shared_dir: Option<PathBuf>,
    niche: bool,
    extra: &[String],
) -> Result<()> {
    setup()?;
    let shared = shared_dir.unwrap_or_else(|| root().join("../shared"));
    let vocab = shared.join("nicheformer/vocab.tsv");
    if !vocab.exists() {
        bail!("{}: not found; pass --shared-dir <folder with data/, genes/, nicheformer/>", vocab.display());
    }
    let sof = sof_release()?;
    let corpora_dir = out.join(if niche { "corpora-niche" } else { "corpora" });
    std::fs::create_dir_all(&corpora_dir)?;
    std::fs::create_dir_all(out.join("spatial"))?;
    let ctx = out.join("technologies.toml");
    std::fs::write(&ctx, EXTRA_TECHNOLOGIES)?;
    let mut manifests: Vec<PathBuf> = std::fs::read_dir(root().join("datasets"))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    manifests.sort();
    let mut corpora = Vec::new();
    for m in manifests {
        let text = std::fs::read_to_string(&m)?;
        let (Some(name), Some(file), Some(tech), Some(species), Some(modality)) = (
            manifest_field(&text, "name"),
            manifest_field(&text, "file"),
            manifest_field(&text, "technology"),
            manifest_field(&text, "species"),
            manifest_field(&text, "modality"),
        ) else {
            bail!("{}: missing name/file/technology/species/modality", m.display())
        };
        if !file.ends_with(".h5ad") {
            continue; // the same cells in another format
        }
        let corpus = corpora_dir.join(&name);
        if !corpus.join("manifest.json").exists() {
            let mut input = shared.join("data").join(&file);
            if let (true, Some(cell_type)) = (niche, manifest_field(&text, "cell_type_column")) {
                let targets = out.join("spatial").join(&file);
                if !targets.exists() {
                    let mut c = Command::new(&sof);
                    c.args(["spatial", "-q", "--input"])
                        .arg(&input)
                        .args(["--cell-type-key", &cell_type, "--mean-neighbors", "20", "--output"])
                        .arg(&targets);
                    if let Some(section) = manifest_field(&text, "section_column") {
                        c.args(["--section-key", &section]);
                    }
                    run(&mut c)?;
                }
                input = targets;
            }
            let mut c = Command::new(&sof);
            c.args(["tokenize", "-q", "--input"])
                .arg(&input)
                .args(["--technology", &tech, "--species", &species, "--modality", &modality, "--dataset", &name])
                .arg("--vocab")
                .arg(&vocab)
                .arg("--genes-dir")
                .arg(shared.join("genes"))
                .arg("--context-config")
                .arg(&ctx)
                .arg("--output")
                .arg(&corpus);
            let means = shared.join("nicheformer/tech_means").join(format!("{tech}.tsv"));
            if means.exists() {
                c.arg("--tech-means").arg(shared.join("nicheformer/tech_means"));
            }
            if let Some(section) = manifest_field(&text, "section_column") {
                c.args(["--section-key", &section]);
            }
            run(&mut c)?;
        }
        corpora.push(corpus);
    }
    let run_dir = out.join(format!("run-{preset}{}", if niche { "-niche" } else { "" }));
    let mut c = Command::new(&sof);
    c.arg("pretrain");
    if niche && !extra.iter().any(|a| a == "--resume") {
        c.arg("--niche");
    }
    if extra.iter().any(|a| a == "--resume") {
        c.arg("--output").arg(&run_dir).args(extra);
    } else {
        c.args(["--preset", preset, "--steps", &steps.to_string(), "--batch-size", &batch_size.to_string()])
            .arg("--vocab")
            .arg(&vocab)
            .arg("--output")
            .arg(&run_dir)
            .args(extra);
        for corpus in &corpora {
            c.arg("--corpus").arg(corpus);
        }
    }
    run(&mut c)
}

/// `cargo xtask bench model`.
fn bench_model(preset: &str, threads: usize, long_cells: usize, short_cells: usize) -> Result<()> {
    let py = bench_venv()?;
    run(cargo().args(["build", "--release", "-q", "-p", "sof-model", "--example", "bench_embed"]))?;
    let ours = root().join("target/release/examples/bench_embed");
    let dir = tempfile_dir("bench-model")?;
    let ckpt = dir.join("model.ckpt");
    let size: &[&str] = match preset {
        "nicheformer" => &["--d-model", "512", "--heads", "16", "--ff", "1024", "--layers", "12"],
        "small" => &["--d-model", "128", "--heads", "4", "--ff", "256", "--layers", "4"],
        other => bail!("unknown preset '{other}': nicheformer or small"),
    };
    let cores = format!("0-{}", threads.saturating_sub(1));
    let json = |o: std::process::Output, who: &str| -> Result<serde_json::Value> {
        if !o.status.success() {
            bail!("{who} failed: {}", String::from_utf8_lossy(&o.stderr));
        }
        let text = String::from_utf8_lossy(&o.stdout);
        serde_json::from_str(text.lines().last().unwrap_or("")).with_context(|| format!("{who} printed {text}"))
    };
    println!("bench model ({preset} size, CPU, {threads} thread(s) each, pinned to cores {cores}):");
    for (length, cells, batch) in [(1500usize, long_cells, 4usize), (64, short_cells, 64)] {
        let peer = json(
            Command::new("taskset")
                .args(["-c", &cores])
                .arg(&py)
                .arg(root().join("xtask/peers/embed_torch.py"))
                .arg("--checkpoint")
                .arg(&ckpt)
                .args(size)
                .args(["--length", &length.to_string(), "--cells", &cells.to_string(), "--batch", &batch.to_string()])
                .args(["--threads", &threads.to_string()])
                .output()?,
            "PyTorch peer",
        )?;
        let sof = json(
            Command::new("taskset")
                .args(["-c", &cores])
                .arg(&ours)
                .arg(&ckpt)
                .args([length.to_string(), cells.to_string(), batch.to_string()])
                .env("RAYON_NUM_THREADS", threads.to_string())
                .output()?,
            "sof",
        )?;
        let diff = peer["first"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|r| r.as_array().cloned().unwrap_or_default())
            .zip(sof["first"].as_array().into_iter().flatten().flat_map(|r| r.as_array().cloned().unwrap_or_default()))
            .map(|(a, b)| (a.as_f64().unwrap_or(f64::NAN) - b.as_f64().unwrap_or(f64::NAN)).abs())
            .fold(0.0f64, f64::max);
        let (p, o) =
            (peer["cells_per_second"].as_f64().unwrap_or(0.0), sof["cells_per_second"].as_f64().unwrap_or(0.0));
        println!(
            "  {length:>4} tokens/cell, {cells} cells, batch {batch}: sof {o:.2} vs PyTorch {} {p:.2} cells/s -> {:.2}x; largest embedding difference {diff:.1e}",
            peer["torch"].as_str().unwrap_or("?"),
            o / p.max(1e-12)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// `cargo xtask bench pretrain`.
fn bench_pretrain(preset: &str, steps: u64, batch_size: usize, cells: usize, threads: Option<usize>) -> Result<()> {
    setup()?;
    let sof = sof_release()?;
    let python = bench_venv()?;
    let threads = threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    let dir = tempfile_dir("pretrain-bench")?;
    run(Command::new(&sof)
        .args(["-q", "demo", "--only-data", "--cells", &cells.to_string(), "--output"])
        .arg(dir.join("demo")))?;
    let corpora: Vec<PathBuf> =
        ["merfish", "xenium", "dissociated"].iter().map(|t| dir.join("demo/corpus").join(t)).collect();
    let cfg = dir.join("bench.toml");
    std::fs::write(
        &cfg,
        format!(
            "preset = \"{preset}\"\nsteps = {steps}\nbatch_size = {batch_size}\nvalidation_every = 0\n\
             validation_batches = 1\ncheckpoint_every = 1000000\nlog_every = 10\n"
        ),
    )?;
    let run_dir = dir.join("run");
    let mut c = Command::new(&sof);
    c.env("SOF_THREADS", threads.to_string())
        .env("RAYON_NUM_THREADS", threads.to_string())
        .args(["-q", "pretrain", "--config"])
        .arg(&cfg)
        .arg("--output")
        .arg(&run_dir);
    for corpus in &corpora {
        c.arg("--corpus").arg(corpus);
    }
    run(&mut c)?;
    let metrics = std::fs::read_to_string(run_dir.join("metrics.csv"))?;
    let mut ours: Vec<f64> = metrics
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f.len() >= 10 && f[8].is_empty()).then(|| f[6].parse().ok()).flatten()
        })
        .collect();
    let skip = (ours.len() / 10).max(1).min(ours.len().saturating_sub(1));
    ours.drain(..skip);
    ours.sort_by(f64::total_cmp);
    let Some(&ours_tps) = ours.get(ours.len() / 2) else { bail!("no training windows logged") };
    let model = std::fs::read_to_string(run_dir.join("model/sof_model.json"))?;
    let field = |k: &str| -> Result<String> {
        let at = model.find(&format!("\"{k}\"")).with_context(|| format!("sof_model.json has no {k}"))?;
        Ok(model[at..].split(':').nth(1).unwrap_or("").split([',', '}']).next().unwrap_or("").trim().to_owned())
    };
    let mut p = Command::new(&python);
    p.arg(root().join("xtask/peers/pretrain_torch.py"))
        .args(["--n-tokens", &field("n_tokens")?, "--context", &field("context_length")?])
        .args(["--d-model", &field("d_model")?, "--heads", &field("n_heads")?, "--ff", &field("d_ff")?])
        .args(["--layers", &field("n_layers")?, "--batch", &batch_size.to_string(), "--steps", &steps.to_string()])
        .args(["--threads", &threads.to_string()]);
    for corpus in &corpora {
        p.arg("--corpus").arg(corpus);
    }
    eprintln!("$ {p:?}");
    let o = p.output()?;
    if !o.status.success() {
        bail!("the PyTorch peer failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    let peer = String::from_utf8_lossy(&o.stdout);
    let peer_tps = number_after(&peer, "\"tokens_per_second\":").context("peer output")?;
    println!("peer: {}", peer.trim());
    println!(
        "bench pretrain ({preset}, batch {batch_size}, {steps} steps, {threads} threads, CPU): sof {ours_tps:.0} tokens/s, \
         PyTorch {peer_tps:.0} tokens/s, ratio {:.2}x",
        ours_tps / peer_tps
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// `cargo xtask bench niche`.
fn bench_niche(cells: usize) -> Result<()> {
    setup()?;
    let sof = sof_release()?;
    let dir = tempfile_dir("niche-bench")?;
    run(Command::new(&sof)
        .args(["-q", "demo", "--only-data", "--cells", &cells.to_string(), "--output"])
        .arg(dir.join("demo")))?;
    // A model to embed with: one step of the small preset (the weights do not change the cost).
    run(Command::new(&sof)
        .args(["-q", "pretrain", "--preset", "small", "--steps", "1", "--batch-size", "8", "--context-length", "128"])
        .arg("--corpus")
        .arg(dir.join("demo/corpus/merfish"))
        .arg("--vocab")
        .arg(dir.join("demo/vocab.tsv"))
        .arg("--output")
        .arg(dir.join("run")))?;
    let input = dir.join("demo/spatial_merfish_targets.h5ad");
    let n = {
        let text = std::fs::read_to_string(dir.join("demo/corpus/merfish/manifest.json"))?;
        let v: serde_json::Value = serde_json::from_str(&text)?;
        v["cells_in"].as_u64().unwrap_or(0)
    };
    let time = |extra: Option<&str>| -> Result<f64> {
        let mut best = f64::INFINITY;
        for _ in 0..2 {
            let mut c = Command::new(&sof);
            c.args(["-q", "embed", "--checkpoint"]).arg(dir.join("run/model")).arg("--input").arg(&input);
            c.args(["--technology", "merfish", "--modality", "spatial", "--section-key", "section", "--output"]);
            c.arg(dir.join("embedded.h5ad"));
            if let Some(flag) = extra {
                c.arg(flag);
            }
            let t = Instant::now();
            run(&mut c)?;
            best = best.min(t.elapsed().as_secs_f64());
        }
        Ok(best)
    };
    let cell_only = time(Some("--no-niche"))?;
    let with_niche = time(None)?;
    println!(
        "bench niche: sof embed of {n} spatial cells (small preset, CPU, {} threads, end to end incl. reading and writing .h5ad): cell embedding only {cell_only:.2} s, with X_sof_niche (20 nearest neighbours per section) {with_niche:.2} s -> {:.3}x",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        with_niche / cell_only
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// `cargo xtask ablation`: the demo with the label-free niche objective (its default), with the
/// annotation-based one instead, and with neither.
fn ablation(steps: u64, seed: u64, out: &Path) -> Result<()> {
    setup()?;
    let sof = sof_release()?;
    let mut rows: Vec<(String, String)> = Vec::new();
    for (name, extra) in
        [("label-free", None), ("label-based", Some("--composition-objective")), ("plain MLM", Some("--no-niche"))]
    {
        let dir = out.join(name.replace(' ', "_"));
        let mut c = Command::new(&sof);
        c.args(["-q", "demo", "--steps", &steps.to_string(), "--seed", &seed.to_string(), "--output"]).arg(&dir);
        if let Some(flag) = extra {
            c.arg(flag);
        }
        run(&mut c)?;
        rows.push((name.to_owned(), std::fs::read_to_string(dir.join("summary.json"))?));
    }
    println!(
        "ablation ({steps} steps, seed {seed}; embedding / niche-embedding probes on held-out sections, PCA-50 alike for all):"
    );
    for (name, summary) in &rows {
        let v: serde_json::Value = serde_json::from_str(summary)?;
        let mut line = format!("  {name:<12}");
        for (task, metric) in [("layer", "macro_f1"), ("niche", "macro_f1"), ("density", "r2"), ("composition", "r2")] {
            let per = &v["probes"][task];
            let emb = per
                .as_object()
                .and_then(|o| o.iter().find(|(k, _)| k.starts_with("embedding")))
                .and_then(|(_, m)| m[metric].as_f64())
                .unwrap_or(f64::NAN);
            let niche = per
                .as_object()
                .and_then(|o| o.iter().find(|(k, _)| k.starts_with("niche embedding")))
                .and_then(|(_, m)| m[metric].as_f64())
                .unwrap_or(f64::NAN);
            let pca = per["PCA-50"][metric].as_f64().unwrap_or(f64::NAN);
            line.push_str(&format!("  {task} {metric} {emb:.3} / niche {niche:.3} (PCA-50 {pca:.3})"));
        }
        let map = v["mapping"]["layer_accuracy"].as_f64().unwrap_or(f64::NAN);
        let val = v["pretrain"]["final_validation_loss"].as_f64().unwrap_or(f64::NAN);
        println!("{line}  mapping layer accuracy {map:.3}  validation MLM loss {val:.3}");
    }
    Ok(())
}
