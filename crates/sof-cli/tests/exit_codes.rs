//! The `sof` binary's exit status as a shell sees it: a reader that closes the pipe ends it
//! quietly with success, Ctrl-C during pretraining writes a checkpoint and exits with 130, an
//! output path holding someone else's file is refused with 1 unless --force, and a command line
//! that does not parse exits with 2 and one `error:`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn sof() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sof"))
}

fn ok(c: &mut Command) {
    let o = c.output().unwrap();
    assert!(o.status.success(), "{c:?}: {}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn a_closed_pipe_ends_quietly() {
    let d = tempfile::tempdir().unwrap();
    let mut child = sof()
        .args(["-q", "synth", "--cells", "600", "--output"])
        .arg(d.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The reader goes away before the summary lines are written (`sof ... | head -0`).
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "exit {:?}: {err}", o.status.code());
    assert!(!err.contains("panicked"), "{err}");
    assert!(d.path().join("spatial_merfish.h5ad").exists(), "the work itself is done");
}

#[test]
fn ctrl_c_checkpoints_and_exits_130() {
    let d = tempfile::tempdir().unwrap();
    let p = |s: &str| d.path().join(s);
    ok(sof().args(["-q", "synth", "--cells", "1500", "--output"]).arg(p("data")));
    ok(sof()
        .args(["-q", "tokenize", "--input"])
        .arg(p("data/spatial_merfish.h5ad"))
        .args(["--technology", "merfish", "--species", "mouse", "--modality", "spatial", "--no-niche-profile"])
        .arg("--output")
        .arg(p("corpus")));
    let run = p("run");
    let mut child = sof()
        .args(["-q", "pretrain", "--preset", "tiny", "--context-length", "32", "--batch-size", "4"])
        .args(["--steps", "1000000", "--corpus"])
        .arg(p("corpus"))
        .arg("--output")
        .arg(&run)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupt once training is under way (its first metrics row is written at step 10).
    let start = Instant::now();
    while !has_rows(&run.join("metrics.csv")) {
        assert!(start.elapsed() < Duration::from_secs(120), "pretraining did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    ok(Command::new("kill").args(["-INT", &child.id().to_string()]));
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(
        std::fs::read_dir(run.join("checkpoints")).unwrap().flatten().any(|e| e.path().join("state.json").exists()),
        "a checkpoint is written before the exit"
    );
    let lock = run.parent().unwrap().join(format!(".{}.lock", run.file_name().unwrap().to_str().unwrap()));
    assert!(!lock.exists(), "the run folder's writer lock is released on Ctrl-C");
}

fn has_rows(path: &Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|t| t.lines().count() > 1)
}

#[test]
fn outputs_that_may_be_data_need_force() {
    let d = tempfile::tempdir().unwrap();
    let p = |s: &str| d.path().join(s);
    let data = "my own results\n";
    let refused = |c: &mut Command, named: &Path, kept: &Path| {
        let o = c.output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{c:?}: {err}");
        assert!(err.contains(&named.display().to_string()) && err.contains("--force"), "{err}");
        assert_eq!(std::fs::read_to_string(kept).unwrap(), data, "{} is left as it was", kept.display());
    };
    // The output is checked before any input is opened (the input here does not exist).
    let missing = p("missing.h5ad");
    for (file, args) in [
        ("probe.json", vec!["probe", "--label", "layer", "--output"]),
        ("means.tsv", vec!["tech-means", "--species", "mouse", "--output"]),
    ] {
        std::fs::write(p(file), data).unwrap();
        refused(sof().arg("-q").args(&args).arg(p(file)).arg("--input").arg(&missing), &p(file), &p(file));
    }
    std::fs::write(p("report.tsv"), data).unwrap();
    refused(
        sof()
            .args(["-q", "inspect"])
            .arg(&missing)
            .arg("--vocab")
            .arg(p("v.tsv"))
            .arg("--genes-dir")
            .arg(d.path())
            .arg("--report")
            .arg(p("report.tsv")),
        &p("report.tsv"),
        &p("report.tsv"),
    );

    ok(sof().args(["-q", "synth", "--cells", "600", "--output"]).arg(p("data")));
    // A tech-means table sof wrote is replaced on a rerun without asking.
    for _ in 0..2 {
        ok(sof()
            .args(["-q", "tech-means", "--species", "mouse", "--input"])
            .arg(p("data/spatial_merfish.h5ad"))
            .arg("--output")
            .arg(p("own_means.tsv")));
    }
    // A corpus folder holding someone else's files (its vocab.tsv would be replaced).
    std::fs::create_dir(p("mine")).unwrap();
    std::fs::write(p("mine/vocab.tsv"), data).unwrap();
    let tokenize = |force: bool| {
        let mut c = sof();
        c.args(["-q", "tokenize", "--input"]).arg(p("data/spatial_merfish.h5ad"));
        c.args(["--technology", "merfish", "--species", "mouse", "--modality", "spatial", "--no-niche-profile"]);
        c.arg("--output").arg(p("mine"));
        if force {
            c.arg("--force");
        }
        c
    };
    refused(&mut tokenize(false), &p("mine"), &p("mine/vocab.tsv"));
    ok(&mut tokenize(true));
    assert!(p("mine/manifest.json").exists());
    // Now it holds a corpus of sof's: a rerun needs no flag.
    ok(&mut tokenize(false));
}

#[test]
fn usage_errors_exit_2_with_one_error_prefix() {
    for args in [&["embed", "--no-such-flag"][..], &["pretrain", "--steps"], &["probe"]] {
        let o = sof().args(args).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.matches("error:").count(), 1, "{args:?}: one error line, not 'error: error:': {err}");
        assert!(err.contains("Usage:") || err.contains("--help"), "{args:?}: says how to get help: {err}");
    }
}
