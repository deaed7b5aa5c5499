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
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer, MultiGradientsParams};
use burn::prelude::*;
use burn::store::{BurnpackStore, ModuleSnapshot};
use serde::{Deserialize, Serialize};
use sof_model::checkpoint::RunInfo;
use sof_model::{Encoder, EncoderConfig, Pooling};
use sof_tokenize::context::{N_SPECIAL, PAD};
use sof_tokenize::corpus::{CorpusManifest, read_shard_rows};

use crate::config::PretrainConfig;
use crate::data::{Sequence, SequenceStream, Split, pad};
use crate::masking::{IGNORE, mask_batch, rng};
use crate::objective::masked_loss;

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
}

fn invalid(path: &Path, problem: impl Into<String>, fix: impl Into<String>) -> TrainError {
    TrainError::Invalid { path: path.display().to_string(), problem: problem.into(), fix: fix.into() }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> TrainError + '_ {
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

/// Per-corpus facts the loss needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CorpusFacts {
    dataset: String,
    composition_width: Option<usize>,
    profile_width: Option<usize>,
    /// Mean and standard deviation of ln(density) over the corpus (standardizes the target).
    density_stats: Option<(f64, f64)>,
}

/// One step's data, prepared on the prefetch thread.
struct StepBatch {
    seqs: Vec<Sequence>,
    tokens: Vec<i64>,
    labels: Vec<i64>,
    length: usize,
}

/// Sums over (part of) a step.
#[derive(Debug, Clone, Copy, Default)]
struct Sums {
    mlm: f64,
    correct: u64,
    chosen: u64,
    composition: f64,
    composition_rows: u64,
    density: f64,
    density_rows: u64,
    profile: f64,
    profile_rows: u64,
    tokens: u64,
}

impl Sums {
    fn add(&mut self, o: &Sums) {
        self.mlm += o.mlm;
        self.correct += o.correct;
        self.chosen += o.chosen;
        self.composition += o.composition;
        self.composition_rows += o.composition_rows;
        self.density += o.density;
        self.density_rows += o.density_rows;
        self.profile += o.profile;
        self.profile_rows += o.profile_rows;
        self.tokens += o.tokens;
    }
}

/// What the loop reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    pub step: u64,
    pub learning_rate: f64,
    /// Mean masked-token cross-entropy over the logging window (nats).
    pub loss: f64,
    /// Masked-token accuracy over the window.
    pub accuracy: f64,
    pub composition_loss: Option<f64>,
    pub density_loss: Option<f64>,
    /// Mean squared error per profile dimension (the label-free niche target).
    pub profile_loss: Option<f64>,
    /// Non-PAD tokens processed per second over the window.
    pub tokens_per_second: f64,
    pub elapsed_seconds: f64,
    pub validation_loss: Option<f64>,
    pub validation_accuracy: Option<f64>,
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
        let (model_cfg, vocabulary_hash) = match &cfg.init_from {
            Some(ckpt) => {
                let (_, mcfg, run) = sof_model::checkpoint::load(ckpt, &devices[0])?;
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
        Ok(Self { cfg, dir: dir.to_path_buf(), devices, model_cfg, run_info, facts, vocab })
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

    fn aux_loss(&self, s: &Sums) -> f64 {
        let n = &self.cfg.niche;
        let mut aux = 0.0;
        if s.composition_rows > 0 {
            aux += n.composition_weight * s.composition / s.composition_rows as f64;
        }
        if s.density_rows > 0 {
            aux += n.density_weight * s.density / s.density_rows as f64;
        }
        if s.profile_rows > 0 {
            aux += n.profile_weight * s.profile / s.profile_rows as f64;
        }
        aux
    }

    /// The gradients of one step's mean loss, from every micro-batch and replica.
    fn step_gradients(&self, model: &PretrainModel, batch: &StepBatch) -> (MultiGradientsParams, Sums) {
        let cfg = &self.cfg;
        let totals = Totals::of(batch, &self.facts, &cfg.niche);
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
            let share_gradients = |replica: PretrainModel, chunks: &[Chunk], dev: &Device| {
                chunks
                    .iter()
                    .map(|chunk| {
                        let (g, s) = self.chunk_gradients(replica.clone(), chunk, &totals, dev);
                        (g, s, dev.clone())
                    })
                    .collect::<Vec<_>>()
            };
            let results: Vec<(GradientsParams, Sums, Device)> = if shares.len() == 1 {
                let (dev, chunks) = &shares[0];
                share_gradients(model.clone(), chunks, dev)
            } else {
                std::thread::scope(|scope| {
                    let handles: Vec<_> = shares
                        .iter()
                        .map(|(dev, chunks)| {
                            let replica = model.clone().fork(dev);
                            let work = &share_gradients;
                            scope.spawn(move || work(replica, chunks, dev))
                        })
                        .collect();
                    handles.into_iter().flat_map(|h| h.join().expect("replica thread")).collect()
                })
            };
            for (g, s, dev) in results {
                sums.add(&s);
                multi.grads.push((g, dev));
            }
        }
        (multi, sums)
    }

    /// Forward and backward of one chunk; its loss is `sum / step total` for each term.
    fn chunk_gradients(
        &self,
        model: PretrainModel,
        chunk: &Chunk,
        totals: &Totals,
        device: &Device,
    ) -> (GradientsParams, Sums) {
        let (loss, sums) = self.chunk_loss(&model, chunk, totals, device);
        let grads = match loss {
            Some(loss) => GradientsParams::from_grads(loss.backward(), &model),
            None => GradientsParams::new(),
        };
        (grads, sums)
    }

    fn chunk_loss(
        &self,
        model: &PretrainModel,
        chunk: &Chunk,
        totals: &Totals,
        device: &Device,
    ) -> (Option<Tensor<1>>, Sums) {
        let mut sums =
            Sums { tokens: chunk.tokens.iter().filter(|&&t| t != i64::from(PAD)).count() as u64, ..Default::default() };
        if chunk.length == 0 {
            return (None, sums);
        }
        let b = chunk.seqs.len();
        let tokens = Tensor::<2, Int>::from_data(TensorData::new(chunk.tokens.clone(), [b, chunk.length]), device);
        let hidden = model.encoder.forward(tokens.clone());
        let mut loss: Option<Tensor<1>> = None;
        let mut add = |t: Tensor<1>| {
            loss = Some(match loss.take() {
                Some(l) => l + t,
                None => t,
            })
        };
        if let Some(out) = masked_loss(&model.encoder, hidden.clone(), &chunk.labels, device) {
            let n = out.targets.dims()[0] as u64;
            sums.chosen = n;
            sums.correct = out.predicted.equal(out.targets).int().sum().into_scalar::<i64>() as u64;
            sums.mlm = out.loss.clone().into_scalar::<f32>() as f64 * n as f64;
            add(out.loss * (n as f64 / totals.chosen.max(1) as f64));
        }
        let niche = &self.cfg.niche;
        if !(model.composition.is_empty() && model.profile.is_empty()) {
            let pooled = model.encoder.pool(tokens, hidden, Pooling::PadExcluded); // [b, d]
            for (c, fact) in self.facts.iter().enumerate() {
                let rows: Vec<usize> = (0..b).filter(|&i| chunk.seqs[i].source == c).collect();
                if niche.composition_weight > 0.0 && fact.composition_width.is_some() {
                    let (idx, target): (Vec<i64>, Vec<f32>) = rows
                        .iter()
                        .filter_map(|&i| chunk.seqs[i].composition.as_ref().map(|t| (i as i64, t)))
                        .fold((Vec::new(), Vec::new()), |(mut idx, mut tg), (i, t)| {
                            idx.push(i);
                            tg.extend(t);
                            (idx, tg)
                        });
                    if !idx.is_empty() {
                        let (n, k) = (idx.len(), target.len() / idx.len());
                        let x =
                            pooled.clone().select(0, Tensor::<1, Int>::from_data(TensorData::new(idx, [n]), device));
                        let logp = burn::tensor::activation::log_softmax(model.composition[c].forward(x), 1); // [n, k]
                        let t = Tensor::<2>::from_data(TensorData::new(target, [n, k]), device);
                        let sum = (logp * t).sum().neg(); // cross-entropy against the proportions
                        sums.composition += sum.clone().into_scalar::<f32>() as f64;
                        sums.composition_rows += n as u64;
                        add(sum * (niche.composition_weight / totals.composition_rows.max(1) as f64));
                    }
                }
                if let (Some(head), Some(width)) = (model.profile.get(c), fact.profile_width) {
                    let (idx, target): (Vec<i64>, Vec<f32>) = rows
                        .iter()
                        .filter_map(|&i| {
                            chunk.seqs[i].profile.as_ref().filter(|t| t.len() == width).map(|t| (i as i64, t))
                        })
                        .fold((Vec::new(), Vec::new()), |(mut idx, mut tg), (i, t)| {
                            idx.push(i);
                            tg.extend(t);
                            (idx, tg)
                        });
                    if !idx.is_empty() {
                        let n = idx.len();
                        let x =
                            pooled.clone().select(0, Tensor::<1, Int>::from_data(TensorData::new(idx, [n]), device));
                        let t = Tensor::<2>::from_data(TensorData::new(target, [n, width]), device);
                        // Squared error averaged over the profile's dimensions, summed over rows.
                        let sum = (head.forward(x) - t).square().sum() / width as f64;
                        sums.profile += sum.clone().into_scalar::<f32>() as f64;
                        sums.profile_rows += n as u64;
                        add(sum * (niche.profile_weight / totals.profile_rows.max(1) as f64));
                    }
                }
                if let (true, Some((mean, sd))) = (niche.density_weight > 0.0, fact.density_stats) {
                    let (idx, target): (Vec<i64>, Vec<f32>) = rows
                        .iter()
                        .filter_map(|&i| {
                            chunk.seqs[i]
                                .density
                                .filter(|d| *d > 0.0)
                                .map(|d| (i as i64, ((f64::from(d).ln() - mean) / sd) as f32))
                        })
                        .unzip();
                    if !idx.is_empty() {
                        let n = idx.len();
                        let x =
                            pooled.clone().select(0, Tensor::<1, Int>::from_data(TensorData::new(idx, [n]), device));
                        let pred = model.density[c].forward(x).reshape([n]);
                        let t = Tensor::<1>::from_data(TensorData::new(target, [n]), device);
                        let sum = (pred - t).square().sum();
                        sums.density += sum.clone().into_scalar::<f32>() as f64;
                        sums.density_rows += n as u64;
                        add(sum * (niche.density_weight / totals.density_rows.max(1) as f64));
                    }
                }
            }
        }
        (loss, sums)
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

/// Re-draws every randomly initialised parameter from a generator seeded by the run's seed,
/// with burn's default initializers (embeddings N(0, 1); linear weights `[in, out]` and their
/// biases U(-1/sqrt(in), 1/sqrt(in)); constant tensors such as LayerNorm gains and zero biases
/// stay): the initial weights then depend on the seed alone, not on the backend's
/// process-wide generator that every model in the process shares.
struct SeededInit {
    rng: rand_xoshiro::Xoshiro256PlusPlus,
    fan_in: usize,
}

impl SeededInit {
    fn new(seed: u64) -> Self {
        Self { rng: rng(seed), fan_in: 1 }
    }
}

impl burn::module::ModuleMapper for SeededInit {
    fn map_float<const D: usize>(&mut self, param: burn::module::Param<Tensor<D>>) -> burn::module::Param<Tensor<D>> {
        use rand::Rng;
        use rand_distr::{Distribution, StandardNormal};
        param.map(|t| {
            let values: Vec<f32> = t.clone().into_data().try_to_vec::<f32>().unwrap_or_default();
            let n = values.len().max(1) as f64;
            let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
            let var = values.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n;
            let dims = t.dims();
            if D == 2 {
                self.fan_in = dims[0].max(1);
            }
            // Constant initialisations (LayerNorm gains 1, offsets 0, zero biases) stay; a
            // one-element random bias has no spread but is not one of them.
            let constant =
                values.windows(2).all(|w| w[0] == w[1]) && values.first().is_some_and(|&v| v == 0.0 || v == 1.0);
            if constant {
                return t;
            }
            let fresh: Vec<f32> = if D == 2 && var > 0.5 {
                (0..values.len()).map(|_| Distribution::<f64>::sample(&StandardNormal, &mut self.rng) as f32).collect()
            } else {
                let a = 1.0 / (self.fan_in as f64).sqrt();
                (0..values.len()).map(|_| self.rng.random_range(-a..a) as f32).collect()
            };
            let require = t.is_require_grad();
            let out = Tensor::<D>::from_data(TensorData::new(fresh, dims), &t.device());
            if require { out.require_grad() } else { out }
        })
    }
}

/// Gives parameters the ids 1, 2, 3... in module order.
struct Renumber {
    next: u64,
}

impl burn::module::ModuleMapper for Renumber {
    fn map_float<const D: usize>(&mut self, param: burn::module::Param<Tensor<D>>) -> burn::module::Param<Tensor<D>> {
        let (_, tensor, mapper) = param.consume();
        self.next += 1;
        burn::module::Param::from_mapped_value(burn::module::ParamId::from(self.next - 1), tensor, mapper)
    }
}

/// Step-wide counts that normalize every chunk's loss.
#[derive(Debug)]
struct Totals {
    chosen: u64,
    composition_rows: u64,
    density_rows: u64,
    profile_rows: u64,
}

impl Totals {
    fn of(batch: &StepBatch, facts: &[CorpusFacts], niche: &crate::config::NicheConfig) -> Self {
        let chosen = batch.labels.iter().filter(|&&l| l != IGNORE).count() as u64;
        let composition_rows = if niche.composition_weight > 0.0 {
            batch.seqs.iter().filter(|s| s.composition.is_some() && facts[s.source].composition_width.is_some()).count()
                as u64
        } else {
            0
        };
        let density_rows = if niche.density_weight > 0.0 {
            batch
                .seqs
                .iter()
                .filter(|s| s.density.is_some_and(|d| d > 0.0) && facts[s.source].density_stats.is_some())
                .count() as u64
        } else {
            0
        };
        let profile_rows = if niche.profile_weight > 0.0 {
            batch
                .seqs
                .iter()
                .filter(|s| s.profile.as_ref().is_some_and(|p| Some(p.len()) == facts[s.source].profile_width))
                .count() as u64
        } else {
            0
        };
        Self { chosen, composition_rows, density_rows, profile_rows }
    }
}

/// Rows of a step, trimmed to their own longest sequence.
struct Chunk {
    seqs: Vec<Sequence>,
    tokens: Vec<i64>,
    labels: Vec<i64>,
    length: usize,
}

impl Chunk {
    fn new(batch: &StepBatch, rows: &[usize]) -> Self {
        let seqs: Vec<Sequence> = rows.iter().map(|&r| batch.seqs[r].clone()).collect();
        let (_, length) = pad(&seqs);
        let mut tokens = Vec::with_capacity(rows.len() * length);
        let mut labels = Vec::with_capacity(rows.len() * length);
        for &r in rows {
            let at = r * batch.length;
            tokens.extend_from_slice(&batch.tokens[at..at + length]);
            labels.extend_from_slice(&batch.labels[at..at + length]);
        }
        Self { seqs, tokens, labels, length }
    }

    /// Rows `first..first + rows`, grouped by length class (powers of two) so that short spatial
    /// panels are not padded to the longest dissociated cell of the batch: each group is its own
    /// forward pass, and the summed gradients are unchanged (each part's loss is normalized by
    /// the step's totals).
    fn buckets(batch: &StepBatch, first: usize, rows: usize) -> Vec<Chunk> {
        let class = |r: usize| batch.seqs[r].tokens.len().max(1).next_power_of_two();
        let mut order: Vec<usize> = (first..first + rows).collect();
        order.sort_by_key(|&r| (class(r), r));
        order.chunk_by(|&a, &b| class(a) == class(b)).map(|group| Chunk::new(batch, group)).collect()
    }
}

fn density_stats(dir: &Path, m: &CorpusManifest) -> Result<Option<(f64, f64)>, TrainError> {
    let (mut n, mut sum, mut sq) = (0f64, 0f64, 0f64);
    for s in &m.shards {
        for r in read_shard_rows(&dir.join(&s.file)).map_err(crate::data::DataError::from)? {
            if let Some(d) = r.density.filter(|d| *d > 0.0) {
                let l = f64::from(d).ln();
                n += 1.0;
                sum += l;
                sq += l * l;
            }
        }
    }
    if n < 2.0 {
        return Ok(None);
    }
    let mean = sum / n;
    Ok(Some((mean, (sq / n - mean * mean).max(0.0).sqrt().max(1e-6))))
}

fn complete_checkpoints(root: &Path) -> Vec<(u64, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(root) else { return Vec::new() };
    entries
        .filter_map(|e| {
            let e = e.ok()?;
            let step = e.file_name().to_str()?.strip_prefix("step-")?.parse().ok()?;
            e.path().join("state.json").exists().then(|| (step, e.path()))
        })
        .collect()
}

/// The newest complete checkpoint under `root` (`step-NNNNNNNN` folders with a `state.json`).
pub fn latest_checkpoint(root: &Path) -> Option<(u64, PathBuf)> {
    complete_checkpoints(root).into_iter().max()
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|e| invalid(path, e.to_string(), "use an earlier checkpoint"))?;
    serde_json::from_str(&text).map_err(|e| invalid(path, e.to_string(), "the checkpoint is damaged"))
}

/// Temporary file beside `path`, renamed into place (the project's `AtomicPath`).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    let failed = |e: sof_io::Error| invalid(path, e.to_string(), "check that the run folder is writable and has space");
    let tmp = sof_io::AtomicPath::new(path).map_err(failed)?;
    std::fs::write(tmp.path(), bytes).map_err(io(path))?;
    tmp.commit().map_err(failed)
}

fn append_command(dir: &Path, command: &str) -> Result<(), TrainError> {
    use std::io::Write;
    let path = dir.join("command.txt");
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(io(&path))?;
    writeln!(f, "{command}").map_err(io(&path))
}

/// `metrics.csv`: one row per logged step; on resume, rows past the checkpoint are dropped.
struct MetricsLog {
    path: PathBuf,
    rows: Vec<StepMetrics>,
}

const HEADER: &str = "step,learning_rate,loss,accuracy,composition_loss,density_loss,tokens_per_second,elapsed_seconds,validation_loss,validation_accuracy,profile_loss";

impl MetricsLog {
    fn open(dir: &Path, resume_step: u64) -> Result<Self, TrainError> {
        let path = dir.join("metrics.csv");
        let mut rows = Vec::new();
        if resume_step > 0
            && let Ok(text) = std::fs::read_to_string(&path)
        {
            rows = text.lines().skip(1).filter_map(parse_row).filter(|r| r.step <= resume_step).collect();
        }
        let log = Self { path, rows };
        log.write()?;
        Ok(log)
    }

    fn append(&mut self, row: &StepMetrics) -> Result<(), TrainError> {
        use std::io::Write;
        self.rows.push(row.clone());
        let mut f = std::fs::OpenOptions::new().append(true).open(&self.path).map_err(io(&self.path))?;
        writeln!(f, "{}", format_row(row)).map_err(io(&self.path))
    }

    fn write(&self) -> Result<(), TrainError> {
        let mut text = format!("{HEADER}\n");
        for r in &self.rows {
            text.push_str(&format_row(r));
            text.push('\n');
        }
        write_atomic(&self.path, text.as_bytes())
    }

    /// `loss.png`: training and validation loss against the unigram baseline.
    fn plot(&self, dir: &Path, baselines: &Baselines) {
        let train: Vec<(f64, f64)> = self.rows.iter().map(|r| (r.step as f64, r.loss)).collect();
        let val: Vec<(f64, f64)> =
            self.rows.iter().filter_map(|r| r.validation_loss.map(|v| (r.step as f64, v))).collect();
        let last = train.last().map_or(1.0, |p| p.0);
        let mut series = vec![
            sof_plot::Series::line("training loss", train, sof_plot::PALETTE[0]),
            sof_plot::Series::line("validation loss", val, sof_plot::PALETTE[1]).with_markers(),
        ];
        if baselines.validation_masked_tokens > 0 {
            series.push(
                sof_plot::Series::line(
                    "unigram baseline",
                    vec![(0.0, baselines.unigram_loss), (last, baselines.unigram_loss)],
                    sof_plot::GREY,
                )
                .dashed(),
            );
        }
        let chart = sof_plot::LineChart {
            title: "Masked-token loss".into(),
            x_label: "step".into(),
            y_label: "cross-entropy (nats)".into(),
            series,
        };
        if let Err(e) = chart.write_png(&dir.join("loss.png"), 900, 540) {
            tracing::warn!("loss.png not written: {e}");
        }
    }
}

fn opt(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.6}")).unwrap_or_default()
}

fn format_row(r: &StepMetrics) -> String {
    format!(
        "{},{:.6e},{:.6},{:.6},{},{},{:.1},{:.2},{},{},{}",
        r.step,
        r.learning_rate,
        r.loss,
        r.accuracy,
        opt(r.composition_loss),
        opt(r.density_loss),
        r.tokens_per_second,
        r.elapsed_seconds,
        opt(r.validation_loss),
        opt(r.validation_accuracy),
        opt(r.profile_loss)
    )
}

fn parse_row(line: &str) -> Option<StepMetrics> {
    let f: Vec<&str> = line.split(',').collect();
    // Ten columns before the profile loss existed, eleven since.
    if f.len() != 10 && f.len() != 11 {
        return None;
    }
    let o = |s: &str| if s.is_empty() { None } else { s.parse().ok() };
    Some(StepMetrics {
        step: f[0].parse().ok()?,
        learning_rate: f[1].parse().ok()?,
        loss: f[2].parse().ok()?,
        accuracy: f[3].parse().ok()?,
        composition_loss: o(f[4]),
        density_loss: o(f[5]),
        tokens_per_second: f[6].parse().ok()?,
        elapsed_seconds: f[7].parse().ok()?,
        validation_loss: o(f[8]),
        validation_accuracy: o(f[9]),
        profile_loss: f.get(10).and_then(|s| o(s)),
    })
}

/// Reads a run's `metrics.csv`.
pub fn read_metrics(dir: &Path) -> Result<Vec<StepMetrics>, TrainError> {
    let path = dir.join("metrics.csv");
    let text = std::fs::read_to_string(&path).map_err(|e| invalid(&path, e.to_string(), "is this a run folder?"))?;
    Ok(text.lines().skip(1).filter_map(parse_row).collect())
}
