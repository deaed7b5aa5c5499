//! The training loop: data on a prefetch thread, masked-token (and optional niche) loss,
//! gradient accumulation and data-parallel replicas, AdamW with warmup + cosine, validation,
//! atomic checkpoints with resume, a clean stop on request and on a non-finite loss.
//!
//! # Exactness across layouts
//! Every optimizer step sees `batch_size` sequences. Each micro-batch (and each replica's share)
//! contributes `sum of its losses / count over the whole step`, so the summed gradients are those
//! of the step's mean loss whatever the split into micro-batches and replicas: one device, two
//! replicas and accumulation follow the same trajectory up to float rounding.
//!
//! # Determinism and resume
//! The data order is a function of the seed (see [`crate::data`]); the masking of step `s` uses
//! a generator seeded from `(seed, s)`. A checkpoint stores the parameters with their ids, the
//! optimizer state and the step; `resume` reloads them and skips the data stream past the
//! sequences already consumed, so a resumed run continues exactly as an uninterrupted one.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamWConfig, ModuleOptimizer, MultiGradientsParams};
use burn::prelude::*;
use burn::store::{BurnpackStore, ModuleSnapshot};
use serde::{Deserialize, Serialize};
use sof_model::checkpoint::RunInfo;
use sof_model::{Encoder, EncoderConfig};
use sof_tokenize::context::N_SPECIAL;
use sof_tokenize::corpus::CorpusManifest;

use crate::batch::{Chunk, StepBatch};
use crate::config::PretrainConfig;
use crate::data::{SequenceStream, Split};
use crate::init::{Renumber, SeededInit};
use crate::masking::{IGNORE, mask_batch, rng};
use crate::metrics::MetricsLog;
pub use crate::metrics::{StepMetrics, read_metrics};
use crate::niche::{CorpusFacts, NicheHeads, Sums, Totals, density_stats};
use crate::objective::{Pretraining, Term, masked_loss, share_gradients};
pub use crate::run_files::latest_checkpoint;
use crate::run_files::{append_command, complete_checkpoints, read_json, remove_partial_checkpoints, write_atomic};

/// Why training stopped early, or could not start.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{path}: {problem}; {fix}")]
    Invalid { path: String, problem: String, fix: String },
    #[error(
        "step {step}: the loss is {loss} (not finite); training stopped. The last good checkpoint is {last_checkpoint}. \
         Lower optimizer.learning_rate or raise warmup_steps, then resume from it"
    )]
    NonFinite { step: u64, loss: f64, last_checkpoint: String },
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    #[error(transparent)]
    Model(#[from] sof_model::ModelError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The run folder is being written by another run ([`sof_io::OutputLock`]).
    #[error(transparent)]
    Output(#[from] sof_io::Error),
}

pub(crate) fn invalid(path: &Path, problem: impl Into<String>, fix: impl Into<String>) -> TrainError {
    TrainError::Invalid { path: path.display().to_string(), problem: problem.into(), fix: fix.into() }
}

pub(crate) fn io(path: &Path) -> impl Fn(std::io::Error) -> TrainError + '_ {
    move |e| invalid(path, e.to_string(), "check that the run folder is writable and has space")
}

/// The encoder plus the niche-aware heads (one per corpus; empty when the objective is off).
#[derive(Module, Debug)]
pub struct PretrainModel {
    pub encoder: Encoder,
    pub composition: Vec<Linear>,
    pub density: Vec<Linear>,
    /// The label-free niche-profile heads.
    pub profile: Vec<Linear>,
}

/// Events for progress displays.
#[derive(Debug)]
pub enum Event<'a> {
    /// Before the first step: the baselines the run will be judged against.
    Started {
        first_step: u64,
        baselines: &'a Baselines,
    },
    /// After every step (`metrics` is `Some` every `log_every` steps).
    Step {
        step: u64,
        loss: f64,
        accuracy: f64,
        tokens_per_second: f64,
        metrics: Option<&'a StepMetrics>,
    },
    Checkpoint {
        step: u64,
        path: &'a Path,
    },
}

/// The unigram-frequency baseline on the validation set: predicting every masked token from the
/// training corpus's token frequencies alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baselines {
    /// Cross-entropy (nats) of the unigram distribution on the validation labels.
    pub unigram_loss: f64,
    /// Accuracy of always predicting the most frequent training token.
    pub most_frequent_accuracy: f64,
    pub validation_masked_tokens: u64,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub steps_done: u64,
    pub interrupted: bool,
    pub final_validation_loss: Option<f64>,
    pub final_validation_accuracy: Option<f64>,
    pub baselines: Baselines,
    pub mean_tokens_per_second: f64,
    pub parameters: usize,
    pub model_dir: PathBuf,
}

/// Training state saved with each checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TrainState {
    step: u64,
    sequences_consumed: u64,
    elapsed_seconds: f64,
}

/// A pretraining run in a folder.
#[derive(Debug)]
pub struct Trainer {
    cfg: PretrainConfig,
    dir: PathBuf,
    devices: Vec<Device>,
    model_cfg: EncoderConfig,
    run_info: RunInfo,
    facts: Vec<CorpusFacts>,
    vocab: Option<PathBuf>,
    /// Train again where `dir` holds a finished model/, replacing it.
    replace_finished: bool,
}

/// The technologies of the corpora (and of the checkpoint the run starts from, `inherited`)
/// that the built-in context table lacks or holds under another token, by name with their
/// token, for the checkpoint to record. One token for two technologies of the run (two corpora
/// tokenized with `--new-technology` apart, say) or two tokens for one is refused: the model
/// would read the two as one, or one as two. Names are compared and recorded in lower case, as
/// the context table looks them up.
fn new_technologies(
    corpora: &[crate::config::CorpusEntry],
    manifests: &[CorpusManifest],
    inherited: std::collections::BTreeMap<String, u32>,
) -> Result<std::collections::BTreeMap<String, u32>, TrainError> {
    let is_builtin = |m: &CorpusManifest| sof_tokenize::ContextTable::is_builtin(&m.technology, m.context_tokens[1]);
    let builtin: Vec<(String, u32)> = manifests
        .iter()
        .filter(|m| is_builtin(m))
        .map(|m| (m.technology.to_ascii_lowercase(), m.context_tokens[1]))
        .collect();
    let mut named: std::collections::BTreeMap<String, u32> =
        inherited.into_iter().map(|(n, t)| (n.to_ascii_lowercase(), t)).collect();
    for (c, m) in corpora.iter().zip(manifests) {
        if is_builtin(m) {
            continue;
        }
        let (name, token) = (m.technology.to_ascii_lowercase(), m.context_tokens[1]);
        if let Some(&other) = named.get(&name)
            && other != token
        {
            return Err(invalid(
                &c.path,
                format!("technology '{}' is token {token} here and {other} in another corpus", m.technology),
                "tokenize every corpus of one technology with the same token (one context config)",
            ));
        }
        let clash = named
            .iter()
            .map(|(n, &t)| (n.as_str(), t))
            .chain(builtin.iter().map(|(n, t)| (n.as_str(), *t)))
            .find(|&(n, t)| t == token && n != name);
        if let Some((other, _)) = clash {
            return Err(invalid(
                &c.path,
                format!("technology '{}' has token {token}, which '{other}' also has", m.technology),
                format!(
                    "tokenize one of them again with a context config giving '{}' another token in 19..=29",
                    m.technology
                ),
            ));
        }
        named.insert(name, token);
    }
    Ok(named)
}

const VALIDATION_SEED: u64 = 0x005E_ED0F_0A11_DA7E;

fn step_rng_seed(seed: u64, step: u64) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ step.wrapping_add(1).wrapping_mul(0xD1B5_4A32_D192_ED03)
}

impl Trainer {
    /// Prepares a run in `dir` on `devices` (one per data-parallel replica; repeat a device to run
    /// several replicas on it). Checks the corpora against each other and the starting
    /// checkpoint, if any. Training needs gradients: each device gets autodiff if it has not
    /// (`Device::autodiff` is idempotent), so a caller's plain device works too.
    pub fn new(cfg: PretrainConfig, dir: &Path, devices: Vec<Device>) -> Result<Self, TrainError> {
        cfg.validate(&dir.join("config.toml").display().to_string())?;
        let devices: Vec<Device> = devices.into_iter().map(Device::autodiff).collect();
        if devices.len() != cfg.replicas {
            return Err(invalid(
                dir,
                format!("{} devices for {} replicas", devices.len(), cfg.replicas),
                "pass one device per replica",
            ));
        }
        let manifests = cfg
            .corpora
            .iter()
            .map(|c| CorpusManifest::load(&c.path).map_err(crate::data::DataError::from))
            .collect::<Result<Vec<_>, _>>()?;
        let first = &manifests[0];
        let n_tokens = first.vocabulary_size + N_SPECIAL as usize;
        let mut inherited = std::collections::BTreeMap::new();
        let (model_cfg, vocabulary_hash) = match &cfg.init_from {
            Some(ckpt) => {
                let (_, mcfg, run) = sof_model::checkpoint::load(ckpt, &devices[0])?;
                inherited = run.tokenizer.technologies;
                (mcfg, run.vocabulary_hash)
            }
            None => {
                let mut m = EncoderConfig::preset(&cfg.preset, n_tokens).ok_or_else(|| {
                    invalid(
                        dir,
                        format!("unknown preset '{}'", cfg.preset),
                        "use one of tiny, small, base, nicheformer",
                    )
                })?;
                if let Some(l) = cfg.context_length {
                    m.context_length = l;
                }
                m.norm_first = cfg.norm_first;
                (m, first.vocabulary_hash.clone())
            }
        };
        if model_cfg.n_tokens != n_tokens {
            return Err(invalid(
                &cfg.corpora[0].path,
                format!(
                    "vocabulary of {} genes, the model has {} token classes",
                    first.vocabulary_size, model_cfg.n_tokens
                ),
                "tokenize with the model's vocabulary",
            ));
        }
        let facts = cfg
            .corpora
            .iter()
            .zip(&manifests)
            .map(|(c, m)| {
                Ok(CorpusFacts {
                    dataset: m.dataset.clone(),
                    composition_width: m.composition_columns.as_ref().map(Vec::len),
                    profile_width: m.niche_profile_width.filter(|&w| w > 0),
                    density_stats: if cfg.niche.density_weight > 0.0 { density_stats(&c.path, m)? } else { None },
                })
            })
            .collect::<Result<Vec<_>, TrainError>>()?;
        // What `sof embed` needs to tokenize new data like the training data: the tokenizer
        // settings, plus technology / species / modality where every corpus agrees.
        fn agreed<T: PartialEq + Clone>(all: &[CorpusManifest], f: impl Fn(&CorpusManifest) -> T) -> Option<T> {
            let v = f(&all[0]);
            all.iter().all(|m| f(m) == v).then_some(v)
        }
        let tokenizer = sof_tokenize::TokenizerSpec {
            config: first.tokenizer.clone(),
            technology: agreed(&manifests, |m| m.technology.clone()),
            species: agreed(&manifests, |m| m.species),
            modality: agreed(&manifests, |m| m.modality),
            technologies: new_technologies(&cfg.corpora, &manifests, inherited)?,
        };
        let vocab = cfg.vocab.clone().or_else(|| {
            let p = cfg.corpora[0].path.join("vocab.tsv");
            p.exists().then_some(p)
        });
        if let Some(v) = &vocab {
            let loaded = sof_io::genes::Vocabulary::load_tsv(v)
                .map_err(|e| invalid(v, e.to_string(), "pass the vocabulary TSV the corpora were tokenized with"))?;
            if sof_tokenize::vocabulary_hash(&loaded) != vocabulary_hash {
                return Err(invalid(
                    v,
                    "is not the vocabulary the corpora (and model) use",
                    "pass the vocabulary TSV the corpora were tokenized with",
                ));
            }
        }
        let run_info = RunInfo { tokenizer, vocabulary_hash, step: None };
        Ok(Self { cfg, dir: dir.to_path_buf(), devices, model_cfg, run_info, facts, vocab, replace_finished: false })
    }

    /// Lets [`Trainer::run`] train again in a folder that holds a finished model/, replacing it
    /// (`sof pretrain --force`); without it such a folder is refused.
    pub fn replace_finished(mut self, yes: bool) -> Self {
        self.replace_finished = yes;
        self
    }

    /// The model's configuration.
    pub fn model_config(&self) -> &EncoderConfig {
        &self.model_cfg
    }

    fn init_model(&self, device: &Device) -> Result<PretrainModel, TrainError> {
        let encoder = match &self.cfg.init_from {
            Some(ckpt) => sof_model::checkpoint::load(ckpt, device)?.0,
            None => {
                let mut reinit = SeededInit::new(self.cfg.seed ^ 0x1A17);
                self.model_cfg.init(device).map(&mut reinit)
            }
        };
        let d = self.model_cfg.d_model;
        let (mut composition, mut density, mut profile) = (Vec::new(), Vec::new(), Vec::new());
        let n = &self.cfg.niche;
        // Composition and density heads side by side (one seeded sequence), where a corpus
        // carries either target.
        let composition_carried =
            n.composition_weight > 0.0 && self.facts.iter().any(|f| f.composition_width.is_some());
        let density_carried = n.density_weight > 0.0 && self.facts.iter().any(|f| f.density_stats.is_some());
        if composition_carried || density_carried {
            let mut reinit = SeededInit::new(self.cfg.seed ^ 0x41C4E);
            for f in &self.facts {
                composition.push(LinearConfig::new(d, f.composition_width.unwrap_or(1)).init(device).map(&mut reinit));
                density.push(LinearConfig::new(d, 1).init(device).map(&mut reinit));
            }
        }
        // Profile heads only where a corpus carries the profile: runs on corpora without one
        // keep the parameters (and ids) they had before the profile existed.
        if n.profile_weight > 0.0 && self.facts.iter().any(|f| f.profile_width.is_some()) {
            let mut reinit = SeededInit::new(self.cfg.seed ^ 0x9F0F11E);
            for f in &self.facts {
                profile.push(LinearConfig::new(d, f.profile_width.unwrap_or(1)).init(device).map(&mut reinit));
            }
        }
        // Deterministic parameter ids: burn sums gradients from several micro-batches in an
        // order that depends on the ids, and fresh ids are random.
        Ok(PretrainModel { encoder, composition, density, profile }.map(&mut Renumber { next: 1 }))
    }

    fn optimizer(&self) -> ModuleOptimizer {
        let o = &self.cfg.optimizer;
        let mut c = AdamWConfig::new()
            .with_beta_1(o.beta_1)
            .with_beta_2(o.beta_2)
            .with_epsilon(o.epsilon)
            .with_weight_decay(o.weight_decay as f32);
        if o.clip_norm > 0.0 {
            c = c.with_grad_clipping(Some(burn::optim::grad_clipping::GradientClippingConfig::Norm(o.clip_norm)));
        }
        c.init()
    }

    fn stream(&self, seed: u64, split: Split) -> Result<SequenceStream, TrainError> {
        let corpora: Vec<(PathBuf, f64)> = self.cfg.corpora.iter().map(|c| (c.path.clone(), c.weight)).collect();
        Ok(SequenceStream::open(
            &corpora,
            &self.run_info.vocabulary_hash,
            self.model_cfg.context_length,
            self.cfg.shuffle_buffer,
            seed,
            split,
        )?)
    }

    fn checkpoints_dir(&self) -> PathBuf {
        self.dir.join("checkpoints")
    }

    /// The newest complete checkpoint of the run, if any.
    pub fn latest_checkpoint(&self) -> Option<(u64, PathBuf)> {
        latest_checkpoint(&self.checkpoints_dir())
    }

    /// Trains until `cfg.steps`, or until `stop` is set (then a checkpoint is written and the
    /// summary says `interrupted`). With `resume`, continues from the newest checkpoint.
    /// `command` is recorded in the run folder.
    pub fn run(
        &self,
        resume: bool,
        command: &str,
        stop: &AtomicBool,
        on_event: &mut dyn FnMut(Event<'_>),
    ) -> Result<Summary, TrainError> {
        let cfg = &self.cfg;
        let dir = &self.dir;
        // One writer per run folder: two runs would interleave metrics.csv and checkpoints.
        let _writer = sof_io::OutputLock::acquire(dir)?;
        remove_partial_checkpoints(&self.checkpoints_dir());
        // Only complete checkpoints count: a start that failed leaves an empty checkpoints/ that
        // must block neither a rerun nor --resume's message.
        if !resume && self.latest_checkpoint().is_some() {
            return Err(invalid(
                dir,
                "this run folder already has checkpoints",
                "pass --resume to continue it, or choose a new --output",
            ));
        }
        if !resume && !self.replace_finished && dir.join("model").join("run.json").exists() {
            return Err(invalid(
                dir,
                "this run folder holds a finished model (model/)",
                "choose a new --output, or pass --force to train again and replace it",
            ));
        }
        std::fs::create_dir_all(self.checkpoints_dir()).map_err(io(dir))?;
        let device = self.devices[0].clone();
        let mut model = self.init_model(&device)?;
        let mut optim = self.optimizer();
        let (mut step, mut elapsed_before) = (0u64, 0.0f64);
        if resume {
            let Some((s, ckpt)) = self.latest_checkpoint() else {
                return Err(invalid(
                    &self.checkpoints_dir(),
                    "no complete checkpoint to resume from",
                    "start the run without --resume",
                ));
            };
            let state: TrainState = read_json(&ckpt.join("state.json"))?;
            let mut store = BurnpackStore::from_file(ckpt.join("train_model.bpk"));
            model
                .load_from(&mut store)
                .map_err(|e| invalid(&ckpt.join("train_model.bpk"), e.to_string(), "use an earlier checkpoint"))?;
            optim = optim
                .load(ckpt.join("optimizer.bpk"))
                .map_err(|e| invalid(&ckpt.join("optimizer.bpk"), e.to_string(), "use an earlier checkpoint"))?;
            (step, elapsed_before) = (s, state.elapsed_seconds);
            tracing::info!(step, checkpoint = %ckpt.display(), "resuming");
        } else {
            write_atomic(&dir.join("config.toml"), cfg.to_toml().as_bytes())?;
        }
        append_command(dir, command)?;
        if step >= cfg.steps
            && let Ok(done) = read_json::<Summary>(&dir.join("summary.json"))
            && done.steps_done == step
            && !done.interrupted
        {
            tracing::info!(step, "the run is already complete");
            return Ok(done);
        }

        let validation = self.validation_set()?;
        let baselines = self.baselines(&validation)?;
        on_event(Event::Started { first_step: step, baselines: &baselines });
        let mut metrics = MetricsLog::open(dir, step)?;

        // Training data on a prefetch thread.
        let (tx, rx) = mpsc::sync_channel::<Result<StepBatch, TrainError>>(2);
        let mut stream = self.stream(cfg.seed, Split::Train(cfg.validation_fraction))?;
        let (batch_size, seed, first_step, total) = (cfg.batch_size, cfg.seed, step, cfg.steps);
        let (n_tokens, masking) = (self.model_cfg.n_tokens, cfg.masking.clone());
        let producer = std::thread::spawn(move || {
            if let Err(e) = stream.skip(first_step * batch_size as u64) {
                let _ = tx.send(Err(e.into()));
                return;
            }
            for s in first_step..total {
                let batch = stream.next_batch(batch_size).map(|(mut tokens, length, seqs)| {
                    let labels = mask_batch(&mut tokens, length, n_tokens, &masking, &mut rng(step_rng_seed(seed, s)));
                    StepBatch { seqs, tokens, labels, length }
                });
                if tx.send(batch.map_err(TrainError::from)).is_err() {
                    return;
                }
            }
        });

        let start = Instant::now();
        let mut window = Sums::default();
        let mut window_start = Instant::now();
        let mut total_tokens = 0u64;
        let mut last_checkpoint = self.latest_checkpoint().map(|c| c.1.display().to_string());
        let mut last_validation: Option<(f64, f64)> = None;
        let mut interrupted = false;
        while step < cfg.steps {
            if stop.load(Ordering::SeqCst) {
                interrupted = true;
                break;
            }
            let batch = rx.recv().map_err(|_| invalid(dir, "the data thread stopped", "see the log above"))??;
            let lr = cfg.optimizer.learning_rate_at(step, cfg.steps);
            let (grads, sums) = self.step_gradients(&model, &batch);
            let loss = sums.mlm / sums.chosen.max(1) as f64;
            let aux = self.aux_loss(&sums);
            if !(loss + aux).is_finite() {
                drop(rx);
                let _ = producer.join();
                return Err(TrainError::NonFinite {
                    step: step + 1,
                    loss: loss + aux,
                    last_checkpoint: last_checkpoint.unwrap_or_else(|| "(none yet)".into()),
                });
            }
            model = optim.step_multi(lr, model, grads);
            step += 1;
            window.add(&sums);
            total_tokens += sums.tokens;
            let secs = window_start.elapsed().as_secs_f64().max(1e-9);
            let tps = window.tokens as f64 / secs;
            let validate = step == cfg.steps || (cfg.validation_every > 0 && step % cfg.validation_every == 0);
            if validate && let Some(v) = &validation {
                last_validation = Some(self.validate(&model, v));
            }
            let log = step % cfg.log_every.max(1) == 0 || step == cfg.steps || validate;
            let row = log.then(|| StepMetrics {
                step,
                learning_rate: lr,
                loss: window.mlm / window.chosen.max(1) as f64,
                accuracy: window.correct as f64 / window.chosen.max(1) as f64,
                composition_loss: (window.composition_rows > 0)
                    .then(|| window.composition / window.composition_rows as f64),
                density_loss: (window.density_rows > 0).then(|| window.density / window.density_rows as f64),
                profile_loss: (window.profile_rows > 0).then(|| window.profile / window.profile_rows as f64),
                tokens_per_second: tps,
                elapsed_seconds: elapsed_before + start.elapsed().as_secs_f64(),
                validation_loss: if validate { last_validation.map(|v| v.0) } else { None },
                validation_accuracy: if validate { last_validation.map(|v| v.1) } else { None },
            });
            on_event(Event::Step {
                step,
                loss,
                accuracy: sums.correct as f64 / sums.chosen.max(1) as f64,
                tokens_per_second: tps,
                metrics: row.as_ref(),
            });
            if let Some(row) = &row {
                metrics.append(row)?;
                window = Sums::default();
                window_start = Instant::now();
            }
            if step % cfg.checkpoint_every.max(1) == 0 && step < cfg.steps {
                let path =
                    self.save_checkpoint(&model, &optim, step, elapsed_before + start.elapsed().as_secs_f64())?;
                on_event(Event::Checkpoint { step, path: &path });
                last_checkpoint = Some(path.display().to_string());
            }
        }
        drop(rx);
        let _ = producer.join();
        let elapsed = elapsed_before + start.elapsed().as_secs_f64();
        let at = self.checkpoints_dir().join(format!("step-{step:08}"));
        if step > first_step && !at.exists() {
            let path = self.save_checkpoint(&model, &optim, step, elapsed)?;
            on_event(Event::Checkpoint { step, path: &path });
        }
        let model_dir = dir.join("model");
        if !interrupted {
            self.save_model(&model_dir, &model.encoder, step)?;
        }
        metrics.plot(dir, &baselines);
        let summary = Summary {
            steps_done: step,
            interrupted,
            final_validation_loss: last_validation.map(|v| v.0),
            final_validation_accuracy: last_validation.map(|v| v.1),
            baselines,
            mean_tokens_per_second: total_tokens as f64 / start.elapsed().as_secs_f64().max(1e-9),
            parameters: model.encoder.num_params(),
            model_dir,
        };
        write_atomic(&dir.join("summary.json"), &serde_json::to_vec_pretty(&summary).expect("serializes"))?;
        Ok(summary)
    }

    /// The niche heads' weighted mean loss over `s` (beside the masked-token loss).
    fn aux_loss(&self, s: &Sums) -> f64 {
        self.niche_heads().weighted_mean(s)
    }

    fn niche_heads(&self) -> NicheHeads<'_> {
        NicheHeads { facts: &self.facts, config: &self.cfg.niche }
    }

    /// The gradients of one step's mean loss, from every micro-batch and replica.
    fn step_gradients(&self, model: &PretrainModel, batch: &StepBatch) -> (MultiGradientsParams, Sums) {
        let cfg = &self.cfg;
        let objective = Pretraining { niche: self.niche_heads(), totals: Totals::of(batch, &self.facts, &cfg.niche) };
        let parts = cfg.accumulation * cfg.replicas;
        let rows = batch.seqs.len() / parts;
        let mut multi = MultiGradientsParams::default();
        let mut sums = Sums::default();
        for a in 0..cfg.accumulation {
            let shares: Vec<(Device, Vec<Chunk>)> = (0..cfg.replicas)
                .map(|r| {
                    let first = (a * cfg.replicas + r) * rows;
                    (self.devices[r].clone(), Chunk::buckets(batch, first, rows))
                })
                .collect();
            for (g, s, dev) in share_gradients(model, &objective, &shares) {
                sums.add(&s);
                multi.grads.push((g, dev));
            }
        }
        (multi, sums)
    }

    /// A fixed validation set: held-out rows, masked with a fixed generator.
    fn validation_set(&self) -> Result<Option<Vec<StepBatch>>, TrainError> {
        if self.cfg.validation_fraction <= 0.0 || self.cfg.validation_batches == 0 {
            return Ok(None);
        }
        let mut stream = self.stream(VALIDATION_SEED, Split::Validation(self.cfg.validation_fraction))?;
        let mut out = Vec::new();
        for b in 0..self.cfg.validation_batches {
            let (mut tokens, length, seqs) = match stream.next_batch(self.cfg.batch_size) {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("no validation set: {e}");
                    return Ok(None);
                }
            };
            let labels = mask_batch(
                &mut tokens,
                length,
                self.model_cfg.n_tokens,
                &self.cfg.masking,
                &mut rng(step_rng_seed(VALIDATION_SEED, b as u64)),
            );
            out.push(StepBatch { seqs, tokens, labels, length });
        }
        Ok(Some(out))
    }

    /// Mean masked-token loss and accuracy on the validation set (no gradients).
    fn validate(&self, model: &PretrainModel, set: &[StepBatch]) -> (f64, f64) {
        let encoder = model.encoder.valid();
        let device = &self.devices[0];
        let (mut sum, mut correct, mut n) = (0.0, 0u64, 0u64);
        for c in set.iter().flat_map(|b| Chunk::buckets(b, 0, b.seqs.len())) {
            let rows = c.seqs.len();
            let tokens = Tensor::<2, Int>::from_data(TensorData::new(c.tokens, [rows, c.length]), device);
            if let Some(out) = masked_loss(&encoder, encoder.forward(tokens), &c.labels, device) {
                let k = out.targets.dims()[0] as u64;
                sum += out.loss.into_scalar::<f32>() as f64 * k as f64;
                correct += out.predicted.equal(out.targets).int().sum().into_scalar::<i64>() as u64;
                n += k;
            }
        }
        (sum / n.max(1) as f64, correct as f64 / n.max(1) as f64)
    }

    /// Unigram baseline: token frequencies from training rows, scored on the validation labels.
    fn baselines(&self, validation: &Option<Vec<StepBatch>>) -> Result<Baselines, TrainError> {
        let n_tokens = self.model_cfg.n_tokens;
        let mut counts = vec![1.0f64; n_tokens]; // add-one smoothing
        let mut stream = self.stream(self.cfg.seed ^ 0xBA5E, Split::Train(self.cfg.validation_fraction))?;
        for _ in 0..20_000 {
            let q = stream.next_sequence()?;
            for &t in &q.tokens[sof_model::N_CONTEXT.min(q.tokens.len())..] {
                counts[t as usize] += 1.0;
            }
        }
        for c in counts.iter_mut().take(N_SPECIAL as usize) {
            *c = 0.0; // special tokens are never targets
        }
        let total: f64 = counts.iter().sum();
        let best = (0..n_tokens).max_by(|&a, &b| counts[a].total_cmp(&counts[b])).unwrap_or(0);
        let (mut loss, mut hits, mut n) = (0.0, 0u64, 0u64);
        for b in validation.iter().flatten() {
            for &l in b.labels.iter().filter(|&&l| l != IGNORE) {
                loss -= (counts[l as usize].max(1.0) / total).ln();
                hits += u64::from(l as usize == best);
                n += 1;
            }
        }
        Ok(Baselines {
            unigram_loss: loss / n.max(1) as f64,
            most_frequent_accuracy: hits as f64 / n.max(1) as f64,
            validation_masked_tokens: n,
        })
    }

    /// A sof checkpoint folder (loadable by `sof embed`), with the vocabulary beside it.
    fn save_model(&self, dir: &Path, encoder: &Encoder, step: u64) -> Result<(), TrainError> {
        if let Some(v) = &self.vocab {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
            let text = std::fs::read(v).map_err(io(v))?;
            write_atomic(&dir.join("vocab.tsv"), &text)?;
        }
        let run = RunInfo { step: Some(step), ..self.run_info.clone() };
        Ok(sof_model::checkpoint::save(dir, encoder, &self.model_cfg, &run)?)
    }

    fn save_checkpoint(
        &self,
        model: &PretrainModel,
        optim: &ModuleOptimizer,
        step: u64,
        elapsed_seconds: f64,
    ) -> Result<PathBuf, TrainError> {
        let root = self.checkpoints_dir();
        let name = format!("step-{step:08}");
        let tmp = root.join(format!(".{name}.tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        self.save_model(&tmp.join("model"), &model.encoder, step)?;
        let mut store = BurnpackStore::from_file(tmp.join("train_model.bpk")).overwrite(true);
        model.save_into(&mut store).map_err(|e| invalid(&tmp, e.to_string(), "check the disk"))?;
        optim.save(tmp.join("optimizer.bpk")).map_err(|e| invalid(&tmp, e.to_string(), "check the disk"))?;
        let state = TrainState { step, sequences_consumed: step * self.cfg.batch_size as u64, elapsed_seconds };
        write_atomic(&tmp.join("state.json"), &serde_json::to_vec_pretty(&state).expect("serializes"))?;
        let dest = root.join(&name);
        let _ = std::fs::remove_dir_all(&dest);
        std::fs::rename(&tmp, &dest).map_err(io(&dest))?;
        // Keep the newest `keep_checkpoints`.
        let mut all = complete_checkpoints(&root);
        all.sort();
        let keep = self.cfg.keep_checkpoints.max(1);
        if all.len() > keep {
            for (_, old) in &all[..all.len() - keep] {
                let _ = std::fs::remove_dir_all(old);
            }
        }
        Ok(dest)
    }
}
