//! The training loop: resume is exact, replicas and accumulation follow the single-device
//! trajectory, a non-finite loss stops with the last good checkpoint kept.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use burn::prelude::*;
use sof_model::checkpoint::{RunInfo, save};
use sof_pretrain::config::CorpusEntry;
use sof_pretrain::trainer::{Event, read_metrics};
use sof_pretrain::{PretrainConfig, Trainer};
use sof_tokenize::corpus::CorpusManifest;

use crate::corpora;

/// A tiny model saved as a checkpoint, so every run in a test starts from the same weights.
fn initial_checkpoint(dir: &Path, corpus: &Path) -> PathBuf {
    let m = CorpusManifest::load(corpus).unwrap();
    let mut cfg = sof_model::EncoderConfig::tiny(m.vocabulary_size + 30);
    cfg.context_length = 48;
    let device = Device::flex();
    let enc = cfg.init(&device);
    let out = dir.join("init");
    let run = RunInfo {
        tokenizer: sof_tokenize::TokenizerSpec { config: m.tokenizer.clone(), ..Default::default() },
        vocabulary_hash: m.vocabulary_hash.clone(),
        step: None,
    };
    save(&out, &enc, &cfg, &run).unwrap();
    out
}

fn config(corpora: &[PathBuf], init: &Path) -> PretrainConfig {
    let mut cfg = PretrainConfig::default();
    cfg.preset = "tiny".into();
    cfg.init_from = Some(init.to_path_buf());
    cfg.corpora = corpora.iter().map(|p| CorpusEntry { path: p.clone(), weight: 1.0 }).collect();
    cfg.steps = 10;
    cfg.batch_size = 8;
    cfg.shuffle_buffer = 64;
    cfg.validation_batches = 2;
    cfg.validation_every = 5;
    cfg.validation_fraction = 0.1;
    cfg.checkpoint_every = 3;
    cfg.keep_checkpoints = 2;
    cfg.log_every = 1;
    cfg.optimizer.learning_rate = 3e-3;
    cfg.optimizer.warmup_steps = 2;
    cfg
}

fn run(cfg: &PretrainConfig, dir: &Path, resume: bool, stop_after: Option<u64>) -> sof_pretrain::Summary {
    let stop = AtomicBool::new(false);
    let trainer = Trainer::new(cfg.clone(), dir, vec![Device::flex().autodiff(); cfg.replicas]).unwrap();
    trainer
        .run(resume, "test", &stop, &mut |e| {
            if let (Event::Step { step, .. }, Some(at)) = (&e, stop_after)
                && *step == at
            {
                stop.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        })
        .unwrap()
}

fn losses(dir: &Path) -> Vec<(u64, f64)> {
    read_metrics(dir).unwrap().iter().map(|r| (r.step, r.loss)).collect()
}

/// Interrupted at step 5 (checkpoint written on stop), resumed to step 10: the final weights
/// are bit-for-bit those of an uninterrupted run with the same seed, and so are the losses.
#[test]
fn resume_reaches_the_same_parameters() {
    let d = tempfile::tempdir().unwrap();
    let (c, _) = corpora(d.path());
    let init = initial_checkpoint(d.path(), &c[0]);
    let cfg = config(&c, &init);

    let whole = d.path().join("whole");
    let s = run(&cfg, &whole, false, None);
    assert_eq!((s.steps_done, s.interrupted), (10, false));

    let parts = d.path().join("parts");
    let s = run(&cfg, &parts, false, Some(5));
    assert_eq!((s.steps_done, s.interrupted), (5, true));
    assert!(parts.join("checkpoints/step-00000005/state.json").exists(), "a checkpoint on stop");
    assert!(!parts.join("model").exists(), "no final model from an interrupted run");
    // What a run killed while writing a checkpoint leaves: removed by the next run of the folder.
    let partial = parts.join("checkpoints/.step-00000006.tmp-999999999");
    std::fs::create_dir_all(partial.join("model")).unwrap();
    std::fs::write(partial.join("train_model.bpk"), b"half").unwrap();
    let s = run(&cfg, &parts, true, None);
    assert!(!partial.exists(), "a killed run's partial checkpoint is removed");
    assert_eq!((s.steps_done, s.interrupted), (10, false));

    let a = std::fs::read(whole.join("model/model.safetensors")).unwrap();
    let b = std::fs::read(parts.join("model/model.safetensors")).unwrap();
    assert!(a == b, "resumed weights differ from the uninterrupted run's");
    assert_eq!(losses(&whole), losses(&parts), "same loss at every step");

    // Checkpoints: every 3 steps plus the stop and the end; only the newest 2 kept.
    let kept: Vec<String> = std::fs::read_dir(parts.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut kept = kept;
    kept.sort();
    assert_eq!(kept, ["step-00000009", "step-00000010"]);
    assert!(whole.join("loss.png").exists() && whole.join("config.toml").exists());
    assert_eq!(std::fs::read_to_string(parts.join("command.txt")).unwrap(), "test\ntest\n");
    let rows = read_metrics(&whole).unwrap();
    assert!(rows.iter().any(|r| r.step == 5 && r.validation_loss.is_some()));
    assert!(rows.iter().all(|r| r.tokens_per_second > 0.0));
}

/// The same global batch split over two replicas, or over two accumulated micro-batches,
/// follows the single-device loss trajectory.
#[test]
fn replicas_and_accumulation_match_one_device() {
    let d = tempfile::tempdir().unwrap();
    let (c, _) = corpora(d.path());
    let init = initial_checkpoint(d.path(), &c[0]);
    let mut cfg = config(&c, &init);
    cfg.steps = 6;
    cfg.checkpoint_every = 100;
    let one = d.path().join("one");
    run(&cfg, &one, false, None);
    let mut two = cfg.clone();
    two.replicas = 2;
    run(&two, &d.path().join("two"), false, None);
    let mut acc = cfg.clone();
    acc.accumulation = 2;
    run(&acc, &d.path().join("acc"), false, None);
    let base = losses(&one);
    assert_eq!(base.len(), 6);
    for other in ["two", "acc"] {
        let l = losses(&d.path().join(other));
        assert_eq!(l.len(), base.len());
        for ((s, a), (_, b)) in base.iter().zip(&l) {
            assert!((a - b).abs() < 1e-3 * a.abs(), "{other}, step {s}: {a} vs {b}");
        }
    }
    assert!(base[0].1 != base[5].1, "the model trained");
}

/// A learning rate that blows the weights up: training stops with a clear message naming the
/// step and the last good checkpoint, which stays loadable.
#[test]
fn non_finite_loss_stops_and_keeps_the_checkpoint() {
    let d = tempfile::tempdir().unwrap();
    let (c, _) = corpora(d.path());
    let init = initial_checkpoint(d.path(), &c[0]);
    let mut cfg = config(&c, &init);
    cfg.steps = 40;
    cfg.checkpoint_every = 1;
    cfg.optimizer.warmup_steps = 0;
    cfg.optimizer.clip_norm = 0.0;
    cfg.optimizer.learning_rate = 1e30;
    let dir = d.path().join("nan");
    let trainer = Trainer::new(cfg, &dir, vec![Device::flex().autodiff()]).unwrap();
    let e = trainer.run(false, "test", &AtomicBool::new(false), &mut |_| {}).unwrap_err().to_string();
    assert!(e.contains("not finite") && e.contains("learning_rate"), "{e}");
    let (step, last) = trainer.latest_checkpoint().expect("a checkpoint before the blow-up");
    assert!(e.contains(&last.display().to_string()), "{e}");
    sof_model::checkpoint::load(&last.join("model"), &Device::flex()).unwrap();
    assert!(step >= 1);
}

/// Random initial weights depend on the seed alone (not on the backend's shared generator,
/// which other models in the process draw from too).
#[test]
fn initial_weights_follow_the_seed() {
    let d = tempfile::tempdir().unwrap();
    let (c, _) = corpora(d.path());
    let init = initial_checkpoint(d.path(), &c[0]);
    let mut cfg = config(&c, &init);
    cfg.init_from = None;
    cfg.context_length = Some(48);
    cfg.steps = 1;
    let weights = |cfg: &PretrainConfig, name: &str| {
        // Draw from the shared generator in between, as a concurrent test would.
        let _ = sof_model::EncoderConfig::tiny(100).init(&Device::flex());
        let dir = d.path().join(name);
        run(cfg, &dir, false, None);
        std::fs::read(dir.join("model/model.safetensors")).unwrap()
    };
    let a = weights(&cfg, "a");
    let b = weights(&cfg, "b");
    assert!(a == b, "same seed, same weights");
    cfg.seed = 1;
    assert!(weights(&cfg, "c") != a, "another seed, other weights");
}
