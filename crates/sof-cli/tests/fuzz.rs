//! The mutation harness: the shared .h5ad, .loom, .safetensors and .ckpt files (and small
//! subsets of the larger .h5ad files), mutated at the byte level (bit flips, truncation, zeroed
//! or random ranges, a byte of a name made invalid UTF-8) and through HDF5 itself (attributes
//! replaced or deleted, datasets replaced with other shapes and dtypes, values set to NaN, inf,
//! negative or huge, objects unlinked) and, for safetensors, in the JSON header. Each mutant goes
//! through `sof inspect`, `spatial`, `tokenize` and `embed` (checkpoints through `embed`), each
//! in its own process under a time and an address-space limit.
//!
//! A run fails on a panic, an abort or any other signal, a hang, an exit status other than 0, 1
//! or 2, a failure without an error message, a non-finite number in an output written with
//! exit 0, or an output left under its final name by a failed run.
//!
//! `SOF_FUZZ_ITERATIONS` (default 60; CI runs 200 through `cargo xtask test`, the long pass is
//! `cargo xtask fuzz`), `SOF_FUZZ_SEED` (default 1), `SOF_FUZZ_JOBS` (default: all cores),
//! `SOF_FUZZ_REPORT` (write the counts there as JSON), `SOF_FUZZ_LENIENT` (count crashes inside
//! libhdf5's parse without failing), `SOF_FUZZ_KEEP` (a folder: every mutant that crashed or
//! failed a command is copied there as `<seed>-<iteration>.<ext>`, to reproduce by hand). The
//! same seed gives the same mutants.

#![allow(clippy::print_stderr)] // the harness reports its counts and its failures

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

/// What a seed file is, hence how it is mutated and which commands read it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// An .h5ad: species, technology, modality for tokenize and embed.
    H5ad {
        species: &'static str,
        modality: &'static str,
    },
    Loom,
    Safetensors,
    Ckpt,
}

#[derive(Debug)]
struct Seed {
    name: String,
    path: PathBuf,
    kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Mutation {
    BitFlips,
    Truncate,
    ZeroRange,
    RandomRange,
    InvalidUtf8,
    AttrReplace,
    AttrDelete,
    DatasetReplace,
    DatasetValues,
    Unlink,
    HeaderEdit,
}

impl Mutation {
    fn name(self) -> &'static str {
        match self {
            Self::BitFlips => "bit flips",
            Self::Truncate => "truncation",
            Self::ZeroRange => "zeroed range",
            Self::RandomRange => "random bytes",
            Self::InvalidUtf8 => "invalid UTF-8 in a name",
            Self::AttrReplace => "HDF5 attribute replaced",
            Self::AttrDelete => "HDF5 attribute deleted",
            Self::DatasetReplace => "HDF5 dataset reshaped / retyped",
            Self::DatasetValues => "HDF5 values NaN / inf / negative / huge",
            Self::Unlink => "HDF5 object unlinked",
            Self::HeaderEdit => "safetensors header field edited",
        }
    }

    fn for_kind(kind: Kind) -> &'static [Mutation] {
        use Mutation::*;
        match kind {
            Kind::H5ad { .. } | Kind::Loom => &[
                BitFlips,
                Truncate,
                ZeroRange,
                RandomRange,
                InvalidUtf8,
                AttrReplace,
                AttrDelete,
                DatasetReplace,
                DatasetValues,
                DatasetValues,
                Unlink,
            ],
            Kind::Safetensors => &[BitFlips, Truncate, ZeroRange, RandomRange, HeaderEdit, HeaderEdit],
            Kind::Ckpt => &[BitFlips, Truncate, ZeroRange, RandomRange],
        }
    }
}

/// The shared inputs every command run needs besides the mutant.
#[derive(Debug)]
struct Env {
    vocab: PathBuf,
    genes: PathBuf,
    /// A small model in the reference layout with the shared vocabulary (safetensors).
    model: PathBuf,
    /// An intact small spatial .h5ad, the input when a checkpoint is the mutant.
    cells: PathBuf,
}

#[derive(Debug, Default)]
struct Counts {
    /// (mutation, command) -> [ok, clean error, crash inside libhdf5's parse, failure]
    by: BTreeMap<(Mutation, &'static str), [usize; 4]>,
    failures: Vec<String>,
    hdf5_crashes: Vec<String>,
}

fn main_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn mutated_inputs_never_panic_hang_or_write_nonsense() {
    let Some(shared) = sof_io::shared::for_tests(main_dir()) else { return };
    let iterations: usize = env_or("SOF_FUZZ_ITERATIONS", 60);
    // Mutant i depends only on (seed, i): a long pass can run in pieces (--first 0, 2000, ...)
    // that together make the same mutants as one run.
    let first: usize = env_or("SOF_FUZZ_FIRST", 0);
    let seed: u64 = env_or("SOF_FUZZ_SEED", 1);
    let jobs: usize = env_or("SOF_FUZZ_JOBS", std::thread::available_parallelism().map_or(2, |n| n.get()));
    let work = tempfile::tempdir().unwrap();
    let (env, seeds) = prepare(&shared, work.path());
    let counts = Mutex::new(Counts::default());
    let next = AtomicUsize::new(first);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= first + iterations {
                        break;
                    }
                    let dir = work.path().join(format!("it-{i}"));
                    std::fs::create_dir_all(&dir).unwrap();
                    let (file, outcome) = iteration(&env, &seeds, seed, i, &dir);
                    let _ = std::fs::remove_dir_all(&dir);
                    let mut c = counts.lock().unwrap();
                    for (m, cmd, verdict) in outcome {
                        let slot = &mut c.by.entry((m, cmd)).or_default();
                        match verdict {
                            Verdict::Ok => slot[0] += 1,
                            Verdict::Error => slot[1] += 1,
                            Verdict::Hdf5Crash(why) => {
                                slot[2] += 1;
                                let line = format!("iteration {i} (seed {seed}), {file}, {}: {cmd}: {why}", m.name());
                                c.hdf5_crashes.push(line);
                            }
                            Verdict::Crash(why) | Verdict::Failure(why) => {
                                slot[3] += 1;
                                c.failures
                                    .push(format!("iteration {i} (seed {seed}), {file}, {}: {cmd}: {why}", m.name()));
                            }
                        }
                    }
                }
            });
        }
    });
    let c = counts.into_inner().unwrap();
    let runs: usize = c.by.values().map(|v| v.iter().sum::<usize>()).sum();
    eprintln!(
        "fuzz: {iterations} mutants (from #{first}), {runs} command runs in {:.0} s (seed {seed}, {jobs} jobs)",
        start.elapsed().as_secs_f64()
    );
    eprintln!("{:42} {:9} {:>6} {:>6} {:>6} {:>6}", "mutation", "command", "ok", "error", "hdf5", "FAIL");
    for ((m, cmd), [ok, err, h5, fail]) in &c.by {
        eprintln!("{:42} {:9} {ok:>6} {err:>6} {h5:>6} {fail:>6}", m.name(), cmd);
    }
    for h in &c.hdf5_crashes {
        eprintln!("libhdf5: {h}");
    }
    if let Some(path) = std::env::var_os("SOF_FUZZ_REPORT") {
        let rows: Vec<serde_json::Value> = c
            .by
            .iter()
            .map(|((m, cmd), [ok, err, h5, fail])| {
                serde_json::json!({"mutation": m.name(), "command": cmd, "ok": ok, "error": err, "hdf5_crash": h5, "failure": fail})
            })
            .collect();
        let report = serde_json::json!({
            "iterations": iterations, "first": first, "seed": seed, "runs": runs,
            "seconds": start.elapsed().as_secs_f64(), "counts": rows, "failures": c.failures,
            "hdf5_crashes": c.hdf5_crashes,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&report).unwrap()).unwrap();
    }
    assert!(c.failures.is_empty(), "{} failing run(s):\n{}", c.failures.len(), c.failures.join("\n"));
    assert!(
        c.hdf5_crashes.is_empty() || std::env::var_os("SOF_FUZZ_LENIENT").is_some(),
        "{} crash(es) or hang(s) inside libhdf5's parse that the HDF5 preflight did not turn into an error \
         (SOF_FUZZ_LENIENT=1 counts them without failing):\n{}",
        c.hdf5_crashes.len(),
        c.hdf5_crashes.join("\n")
    );
    assert!(runs >= iterations, "every mutant ran at least one command");
}

/// Mutants that crashed libhdf5 (SIGSEGV inside its parse of a byte-corrupted file) before `sof`
/// walked HDF5 inputs in a child process first (the preflight, crates/sof-cli/src/preflight.rs):
/// every command on them now ends in a clean error. (The mutants that made libhdf5 loop forever
/// are left to the long pass: each costs the preflight's 30 s time limit per command.)
#[test]
fn known_libhdf5_crashers_end_in_a_clean_error() {
    let Some(shared) = sof_io::shared::for_tests(main_dir()) else { return };
    let work = tempfile::tempdir().unwrap();
    let (env, seeds) = prepare(&shared, work.path());
    // (3, 6522) crashed past the preflight until the walk read what the commands read first.
    for (seed, i) in [(1, 170), (2, 12), (2, 54), (2, 210), (2, 450), (3, 6522)] {
        let dir = work.path().join(format!("crasher-{seed}-{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let (file, outcome) = iteration(&env, &seeds, seed, i, &dir);
        assert!(!outcome.is_empty());
        for (m, cmd, verdict) in outcome {
            assert!(
                matches!(verdict, Verdict::Error),
                "iteration {i} (seed {seed}), {file}, {}: {cmd}: {verdict:?}",
                m.name()
            );
        }
        // The same file as an existing --output: sof opens it to see whether it wrote it (it is
        // walked first too, though opening it and listing uns does not reach the objects that
        // crashed libhdf5 in these), refuses it cleanly and leaves it as it was.
        let mutant = dir.join("mutant.h5ad");
        if mutant.exists() {
            let before = std::fs::read(&mutant).unwrap();
            let args: Vec<String> =
                ["spatial", "--input", &env.cells.display().to_string(), "--mean-neighbors", "10", "--output"]
                    .into_iter()
                    .map(String::from)
                    .chain([mutant.display().to_string()])
                    .collect();
            let verdict = run(&args, None);
            assert!(matches!(verdict, Verdict::Error), "iteration {i} (seed {seed}) as --output: {verdict:?}");
            assert_eq!(std::fs::read(&mutant).unwrap(), before, "a refused output is left as it was");
        }
    }
}

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The seeds: small shared files as they are (anndata's own layout), subsets of the larger
/// spatial ones (sof's writer), the loom, the reference fixture's checkpoints and a small
/// reference-layout model over the shared vocabulary.
fn prepare(shared: &Path, dir: &Path) -> (Env, Vec<Seed>) {
    use burn::prelude::*;
    let data = shared.join("data");
    let mut seeds = Vec::new();
    let mouse_spatial = Kind::H5ad { species: "mouse", modality: "spatial" };
    for (file, kind) in [
        ("zeisel_brain_dissociated_a.h5ad", Kind::H5ad { species: "mouse", modality: "dissociated" }),
        ("starmap_mpfc.h5ad", mouse_spatial),
    ] {
        seeds.push(Seed { name: file.into(), path: data.join(file), kind });
    }
    for (file, cells, kind) in [
        ("starmap_mpfc.h5ad", 150, mouse_spatial),
        ("merfish_preoptic.h5ad", 150, mouse_spatial),
        ("cosmx_human_lung.h5ad", 150, Kind::H5ad { species: "human", modality: "spatial" }),
        ("xenium_mousebrain_subset.h5ad", 150, mouse_spatial),
    ] {
        let a = sof_io::h5ad::read_h5ad(data.join(file)).unwrap();
        let rows: Vec<usize> = (0..cells.min(a.n_obs())).collect();
        let out = dir.join(format!("small_{file}"));
        sof_io::h5ad::write_h5ad(&out, &a.select_obs(&rows), &BTreeMap::new()).unwrap();
        seeds.push(Seed { name: format!("{file} (first {cells} cells)"), path: out, kind });
    }
    seeds.push(Seed {
        name: "osmFISH .loom".into(),
        path: data.join("osmfish_sscortex_original/osmFISH_SScortex_mouse_all_cells.loom"),
        kind: Kind::Loom,
    });
    let fixture = shared.join("fixtures/nicheformer_tiny");
    seeds.push(Seed { name: "reference fixture .ckpt".into(), path: fixture.join("model.ckpt"), kind: Kind::Ckpt });
    seeds.push(Seed {
        name: "reference fixture .safetensors".into(),
        path: fixture.join("model.safetensors"),
        kind: Kind::Safetensors,
    });
    let cfg = sof_model::EncoderConfig::new(20_345, 20_340, 32, 16, 2, 32, 1);
    let model_dir = dir.join("model");
    std::fs::create_dir_all(&model_dir).unwrap();
    sof_model::import::export_reference(&cfg.init(&Device::flex()), &cfg, &model_dir).unwrap();
    let model = model_dir.join("model.safetensors");
    seeds.push(Seed { name: "small model .safetensors".into(), path: model.clone(), kind: Kind::Safetensors });
    let env = Env {
        vocab: shared.join("nicheformer/vocab.tsv"),
        genes: shared.join("genes"),
        model,
        cells: dir.join("small_starmap_mpfc.h5ad"),
    };
    (env, seeds)
}

#[derive(Debug)]
enum Verdict {
    Ok,
    Error,
    /// A signal or a hang (classified by [`iteration`]).
    Crash(String),
    /// A signal or a hang while libhdf5 parses a byte-corrupted file (see [`iteration`]).
    Hdf5Crash(String),
    Failure(String),
}

/// One mutant: a seed and a mutation drawn from `(seed, i)`, then every command that reads it.
fn iteration(
    env: &Env,
    seeds: &[Seed],
    seed: u64,
    i: usize,
    dir: &Path,
) -> (String, Vec<(Mutation, &'static str, Verdict)>) {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i as u64);
    let s = &seeds[i % seeds.len()];
    let kinds = Mutation::for_kind(s.kind);
    let m = kinds[rng.random_range(0..kinds.len())];
    let ext = s.path.extension().and_then(|e| e.to_str()).unwrap_or("bin");
    let mutant = dir.join(format!("mutant.{ext}"));
    std::fs::copy(&s.path, &mutant).unwrap();
    let mut perms = std::fs::metadata(&mutant).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)] // our own temporary copy
    perms.set_readonly(false);
    std::fs::set_permissions(&mutant, perms).unwrap();
    mutate(&mutant, m, &mut rng);
    let mut out = Vec::new();
    // libhdf5 (C) parses an HDF5 file's raw bytes and is not hardened against corrupted
    // metadata: on such files it can crash or loop before sof sees any data, which `sof` guards
    // against by walking every HDF5 input in a child process first (preflight.rs). Runs that
    // still crash there are counted apart ("hdf5": they fail the harness unless
    // SOF_FUZZ_LENIENT=1), and the mutant's other commands, which would hit the same parse, are
    // skipped.
    let raw_hdf5 = matches!(s.kind, Kind::H5ad { .. } | Kind::Loom)
        && matches!(
            m,
            Mutation::BitFlips
                | Mutation::Truncate
                | Mutation::ZeroRange
                | Mutation::RandomRange
                | Mutation::InvalidUtf8
        );
    let keep = |v: &Verdict| {
        if let (Verdict::Crash(_) | Verdict::Failure(_), Some(to)) = (v, std::env::var_os("SOF_FUZZ_KEEP")) {
            let to = Path::new(&to);
            std::fs::create_dir_all(to).unwrap();
            std::fs::copy(&mutant, to.join(format!("{seed}-{i}.{ext}"))).unwrap();
        }
    };
    for (cmd, args, output) in commands(env, s.kind, &mutant, dir) {
        let verdict = run(&args, output.as_deref());
        keep(&verdict);
        match verdict {
            Verdict::Crash(why) if raw_hdf5 => {
                out.push((m, cmd, Verdict::Hdf5Crash(why)));
                break;
            }
            Verdict::Crash(why) => out.push((m, cmd, Verdict::Failure(why))),
            v => out.push((m, cmd, v)),
        }
    }
    (s.name.clone(), out)
}

/// The commands that read a mutant of `kind`, with their output (checked after the run).
fn commands(env: &Env, kind: Kind, mutant: &Path, dir: &Path) -> Vec<(&'static str, Vec<String>, Option<PathBuf>)> {
    let p = |x: &Path| x.display().to_string();
    let m = p(mutant);
    let tokenize = |species: &str, modality: &str| {
        let out = dir.join("corpus");
        let args = vec![
            "tokenize".into(),
            "--input".into(),
            m.clone(),
            "--technology".into(),
            "merfish".into(),
            "--species".into(),
            species.into(),
            "--modality".into(),
            modality.into(),
            "--vocab".into(),
            p(&env.vocab),
            "--genes-dir".into(),
            p(&env.genes),
            "--output".into(),
            p(&out),
        ];
        ("tokenize", args, Some(out.join("manifest.json")))
    };
    let embed = |input: &str, checkpoint: &str, species: &str, modality: &str| {
        let out = dir.join("embedded.h5ad");
        let args = vec![
            "embed".into(),
            "--checkpoint".into(),
            checkpoint.into(),
            "--input".into(),
            input.into(),
            "--technology".into(),
            "merfish".into(),
            "--species".into(),
            species.into(),
            "--modality".into(),
            modality.into(),
            "--vocab".into(),
            p(&env.vocab),
            "--genes-dir".into(),
            p(&env.genes),
            "--output".into(),
            p(&out),
        ];
        ("embed", args, Some(out))
    };
    match kind {
        Kind::H5ad { species, modality } => {
            let spatial_out = dir.join("spatial.h5ad");
            vec![
                ("inspect", vec!["inspect".into(), m.clone()], None),
                (
                    "spatial",
                    vec![
                        "spatial".into(),
                        "--input".into(),
                        m.clone(),
                        "--mean-neighbors".into(),
                        "10".into(),
                        "--output".into(),
                        p(&spatial_out),
                    ],
                    Some(spatial_out),
                ),
                tokenize(species, modality),
                embed(&m, &p(&env.model), species, modality),
            ]
        }
        Kind::Loom => vec![("inspect", vec!["inspect".into(), m.clone()], None), tokenize("mouse", "spatial")],
        Kind::Safetensors | Kind::Ckpt => vec![embed(&p(&env.cells), &m, "mouse", "spatial")],
    }
}

/// Per run: 60 s (a debug build embeds a few hundred cells in well under 10) and 6 GiB of
/// address space.
const TIME_LIMIT: Duration = Duration::from_secs(60);
const ADDRESS_SPACE: &str = "--as=6442450944";

fn run(args: &[String], output: Option<&Path>) -> Verdict {
    let sof = env!("CARGO_BIN_EXE_sof");
    let mut c = if Path::new("/usr/bin/prlimit").exists() {
        let mut c = Command::new("/usr/bin/prlimit");
        c.args([ADDRESS_SPACE, "--"]).arg(sof);
        c
    } else {
        Command::new(sof)
    };
    c.arg("-q").args(args).env("SOF_THREADS", "1").env_remove("RUST_LOG");
    c.stdout(Stdio::null()).stderr(Stdio::piped()).stdin(Stdio::null());
    let mut child = match c.spawn() {
        Ok(ch) => ch,
        Err(e) => return Verdict::Failure(format!("could not start: {e}")),
    };
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if start.elapsed() > TIME_LIMIT => {
                let _ = child.kill();
                let _ = child.wait();
                return Verdict::Crash(format!("hung (killed after {} s)", TIME_LIMIT.as_secs()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Verdict::Failure(format!("wait failed: {e}")),
        }
    };
    let err = reader.join().unwrap_or_default();
    let tail = || err.lines().rev().take(6).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join(" | ");
    if err.contains("panicked") {
        return Verdict::Failure(format!("panicked: {}", tail()));
    }
    match status.code() {
        None => Verdict::Crash(format!("killed by a signal ({status}): {}", tail())),
        Some(0) => match output.map(check_output).transpose() {
            Ok(_) => Verdict::Ok,
            Err(why) => Verdict::Failure(format!("exit 0 but {why}")),
        },
        Some(1 | 2) => {
            if err.trim().is_empty() {
                Verdict::Failure("failed without a message".into())
            } else if let Some(o) = output.filter(|o| o.exists()) {
                Verdict::Failure(format!("failed but left {} under its final name: {}", o.display(), tail()))
            } else {
                Verdict::Error
            }
        }
        Some(code) => Verdict::Failure(format!("exit status {code}: {}", tail())),
    }
}

/// An output written with exit 0 exists and holds only finite numbers where it has numbers.
fn check_output(path: &Path) -> Result<(), String> {
    if !path.exists() {
        return Err(format!("{} was not written", path.display()));
    }
    if path.extension().is_some_and(|e| e == "h5ad") {
        let r = sof_io::h5ad::H5adReader::open(path).map_err(|e| format!("its output does not open: {e}"))?;
        // Only what sof wrote: the input's own arrays are copied through untouched.
        for key in r.obsm_keys().into_iter().filter(|k| k.starts_with("X_sof") || k.starts_with("sof_")) {
            let m = r.obsm(&key).map_err(|e| format!("obsm['{key}'] does not read: {e}"))?;
            if let Some(v) = m.iter().find(|v| !v.is_finite()) {
                return Err(format!("obsm['{key}'] holds {v}"));
            }
        }
    }
    Ok(())
}

fn mutate(path: &Path, m: Mutation, rng: &mut Xoshiro256PlusPlus) {
    match m {
        Mutation::BitFlips
        | Mutation::Truncate
        | Mutation::ZeroRange
        | Mutation::RandomRange
        | Mutation::InvalidUtf8 => {
            let mut b = std::fs::read(path).unwrap();
            bytes(&mut b, m, rng);
            std::fs::write(path, b).unwrap();
        }
        Mutation::HeaderEdit => {
            let b = std::fs::read(path).unwrap();
            std::fs::write(path, safetensors_header(&b, rng)).unwrap();
        }
        _ => {
            // A structural edit that HDF5 refuses (a read-only object, say) leaves the copy as
            // it was: the run is then a check that valid input still works.
            let _ = hdf5_edit(path, m, rng);
        }
    }
}

fn bytes(b: &mut Vec<u8>, m: Mutation, rng: &mut Xoshiro256PlusPlus) {
    if b.is_empty() {
        return;
    }
    let n = b.len();
    match m {
        Mutation::BitFlips => {
            for _ in 0..rng.random_range(1..=8) {
                let k = rng.random_range(0..n);
                b[k] ^= 1 << rng.random_range(0..8);
            }
        }
        Mutation::Truncate => b.truncate(rng.random_range(0..n)),
        Mutation::ZeroRange | Mutation::RandomRange => {
            let len = rng.random_range(1..=4096.min(n));
            let at = rng.random_range(0..=n - len);
            for v in &mut b[at..at + len] {
                *v = if m == Mutation::ZeroRange { 0 } else { rng.random() };
            }
        }
        Mutation::InvalidUtf8 => {
            // A byte inside a run of at least four letters (a gene, column or category name)
            // becomes one that is never valid UTF-8.
            let runs: Vec<usize> = (0..n.saturating_sub(4))
                .filter(|&k| b[k..k + 4].iter().all(u8::is_ascii_alphabetic))
                .step_by(7)
                .collect();
            if !runs.is_empty() {
                let k = runs[rng.random_range(0..runs.len())] + rng.random_range(0..4);
                b[k] = [0xFF, 0xC3, 0x80, 0xFE][rng.random_range(0..4)];
            }
        }
        _ => unreachable!("not a byte mutation"),
    }
}

/// Every object path below `/` (groups and datasets).
fn objects(f: &hdf5::File) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec!["/".to_owned()];
    while let Some(g) = todo.pop() {
        let Ok(group) = f.group(&g) else { continue };
        for name in group.member_names().unwrap_or_default() {
            let path = if g == "/" { format!("/{name}") } else { format!("{g}/{name}") };
            if f.group(&path).is_ok() {
                todo.push(path.clone());
            }
            out.push(path);
        }
    }
    out.sort();
    out
}

/// `op` on the group or dataset at `path` (both carry attributes).
fn at<R>(f: &hdf5::File, path: &str, op: impl Fn(&hdf5::Location) -> hdf5::Result<R>) -> hdf5::Result<R> {
    match f.group(path) {
        Ok(g) => op(&g),
        Err(_) => {
            let d = f.dataset(path)?;
            op(&d)
        }
    }
}

fn hdf5_edit(path: &Path, m: Mutation, rng: &mut Xoshiro256PlusPlus) -> hdf5::Result<()> {
    use hdf5::types::VarLenUnicode;
    let f = hdf5::File::open_rw(path)?;
    let mut all = objects(&f);
    all.insert(0, "/".into());
    let pick = |rng: &mut Xoshiro256PlusPlus, v: &[String]| v[rng.random_range(0..v.len())].clone();
    match m {
        Mutation::AttrReplace | Mutation::AttrDelete => {
            let with_attrs: Vec<(String, String)> = all
                .iter()
                .filter_map(|p| at(&f, p, |l| l.attr_names()).ok().map(|names| (p.clone(), names)))
                .flat_map(|(p, names)| names.into_iter().map(move |a| (p.clone(), a)))
                .collect();
            if with_attrs.is_empty() {
                return Ok(());
            }
            let (obj, attr) = &with_attrs[rng.random_range(0..with_attrs.len())];
            let choice = rng.random_range(0..6);
            let which = rng.random_range(0..4);
            at(&f, obj, |loc| replace_attr(loc, attr, (m == Mutation::AttrReplace).then_some((choice, which))))?;
        }
        Mutation::DatasetReplace | Mutation::DatasetValues => {
            let datasets: Vec<String> = all.iter().filter(|p| f.dataset(p).is_ok()).cloned().collect();
            if datasets.is_empty() {
                return Ok(());
            }
            let name = pick(rng, &datasets);
            let ds = f.dataset(&name)?;
            let shape = ds.shape();
            let len: usize = shape.iter().product();
            if m == Mutation::DatasetValues {
                let numeric = matches!(
                    ds.dtype()?.to_descriptor()?,
                    hdf5::types::TypeDescriptor::Integer(_)
                        | hdf5::types::TypeDescriptor::Unsigned(_)
                        | hdf5::types::TypeDescriptor::Float(_)
                );
                if !numeric || len == 0 {
                    return Ok(());
                }
                let bad = [f64::NAN, f64::INFINITY, -1.0, -7.5, 1e30, 4.0e9, 0.5][rng.random_range(0..7)];
                let is_float = matches!(ds.dtype()?.to_descriptor()?, hdf5::types::TypeDescriptor::Float(_));
                let hits = rng.random_range(1..=len.min(16));
                if is_float {
                    let mut v = ds.read_raw::<f64>()?;
                    for _ in 0..hits {
                        let k = rng.random_range(0..len);
                        v[k] = bad;
                    }
                    ds.write_raw(&v)?;
                } else {
                    let mut v = ds.read_raw::<i64>()?;
                    let bad = if bad.is_finite() { bad as i64 } else { i64::MAX };
                    for _ in 0..hits {
                        let k = rng.random_range(0..len);
                        v[k] = bad;
                    }
                    ds.write_raw(&v)?;
                }
            } else {
                drop(ds);
                let (parent, leaf) = name.rsplit_once('/').expect("absolute");
                let g = f.group(if parent.is_empty() { "/" } else { parent })?;
                g.unlink(leaf)?;
                let n0 = shape.first().copied().unwrap_or(1);
                let n = [0, 1, n0.saturating_sub(1), n0 + 1, n0 * 2 + 3][rng.random_range(0..5)];
                match rng.random_range(0..5) {
                    0 => {
                        let v: Vec<f32> = (0..n).map(|k| k as f32 * 0.5).collect();
                        g.new_dataset::<f32>().shape(n).create(leaf)?.write_raw(&v)?
                    }
                    1 => {
                        let v: Vec<i64> = (0..n).map(|k| k as i64 * 3 - 1).collect();
                        g.new_dataset::<i64>().shape(n).create(leaf)?.write_raw(&v)?
                    }
                    2 => {
                        let v: Vec<VarLenUnicode> = (0..n).map(|k| format!("x{}", k % 3).parse().unwrap()).collect();
                        g.new_dataset::<VarLenUnicode>().shape(n).create(leaf)?.write_raw(&v)?
                    }
                    3 => {
                        let v: Vec<f64> = (0..n * 3).map(|k| k as f64).collect();
                        g.new_dataset::<f64>().shape((n, 3)).create(leaf)?.write_raw(&v)?
                    }
                    _ => g.new_dataset::<u8>().shape(n).create(leaf)?.write_raw(&vec![1u8; n])?,
                }
            }
        }
        Mutation::Unlink => {
            if all.len() < 2 {
                return Ok(());
            }
            let name = pick(rng, &all[1..]);
            let (parent, leaf) = name.rsplit_once('/').expect("absolute");
            f.group(if parent.is_empty() { "/" } else { parent })?.unlink(leaf)?;
        }
        _ => unreachable!("not an HDF5 mutation"),
    }
    Ok(())
}

/// Deletes `attr`, then (with `new`) writes a different value of another type or shape.
fn replace_attr(loc: &hdf5::Location, attr: &str, new: Option<(u32, usize)>) -> hdf5::Result<()> {
    use hdf5::types::VarLenUnicode;
    loc.delete_attr(attr)?;
    let Some((choice, which)) = new else { return Ok(()) };
    match choice {
        0 => loc.new_attr::<VarLenUnicode>().create(attr)?.write_scalar(&"bogus".parse::<VarLenUnicode>().unwrap()),
        1 => {
            let v = [[-1i64, 3], [0, 0], [i64::MAX, 2], [1 << 40, 1 << 40]][which];
            loc.new_attr::<i64>().shape(2).create(attr)?.write_raw(&v)
        }
        2 => loc.new_attr::<f64>().create(attr)?.write_scalar(&f64::NAN),
        3 => loc.new_attr::<i64>().shape(3).create(attr)?.write_raw(&[7i64, 7, 7]),
        4 => {
            let v: Vec<VarLenUnicode> = ["a", "a", ""].iter().map(|s| s.parse().unwrap()).collect();
            loc.new_attr::<VarLenUnicode>().shape(3).create(attr)?.write_raw(&v)
        }
        _ => loc.new_attr::<u8>().create(attr)?.write_scalar(&255u8),
    }
}

/// A safetensors file with one header field edited: a tensor's dtype, shape or offsets, the
/// header length, or a tensor dropped.
fn safetensors_header(b: &[u8], rng: &mut Xoshiro256PlusPlus) -> Vec<u8> {
    let n = b.len().min(8);
    let len = u64::from_le_bytes(b[..n].try_into().unwrap_or([0; 8])) as usize;
    let Some(text) = b.get(8..8 + len) else { return b.to_vec() };
    let Ok(serde_json::Value::Object(mut header)) = serde_json::from_slice::<serde_json::Value>(text) else {
        return b.to_vec();
    };
    let names: Vec<String> = header.keys().filter(|k| *k != "__metadata__").cloned().collect();
    if names.is_empty() {
        return b.to_vec();
    }
    let name = &names[rng.random_range(0..names.len())];
    let body = &b[8 + len..];
    let mut bad_len: Option<u64> = None;
    match rng.random_range(0..6) {
        0 => {
            header[name]["dtype"] = serde_json::json!(["F16", "I64", "BOOL", "U8", "F64", "Q4"][rng.random_range(0..6)])
        }
        1 => {
            let shape = [
                serde_json::json!([]),
                serde_json::json!([0]),
                serde_json::json!([3, 5, 7]),
                serde_json::json!([1usize << 40, 2]),
            ];
            header[name]["shape"] = shape[rng.random_range(0..4)].clone()
        }
        2 => {
            let off = [
                serde_json::json!([0, 4]),
                serde_json::json!([8, 4]),
                serde_json::json!([0, 1u64 << 40]),
                serde_json::json!([body.len(), body.len() + 64]),
            ];
            header[name]["data_offsets"] = off[rng.random_range(0..4)].clone()
        }
        3 => {
            header.remove(name);
        }
        4 => bad_len = Some([0, 1, len as u64 + 1, u64::MAX][rng.random_range(0..4)]),
        _ => header[name] = serde_json::json!("not a tensor"),
    }
    let text = serde_json::to_vec(&serde_json::Value::Object(header)).unwrap();
    let mut out = bad_len.unwrap_or(text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    out.extend_from_slice(body);
    out
}
