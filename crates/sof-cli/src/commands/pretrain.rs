//! `sof pretrain`: masked-token pretraining over token corpora, into a run folder.

use std::path::PathBuf;

use anyhow::{Context, bail};
use sof_pretrain::config::CorpusEntry;
use sof_pretrain::{PretrainConfig, Trainer};

use crate::device::{DeviceArg, device};
use crate::util;

/// Pretrain a model by masked-token prediction on token corpora (resumable).
///
/// Pretrain a model by masked-token prediction on one or more token corpora (from
/// `sof tokenize`), mixed by weight. The run folder receives config.toml (the full settings),
/// command.txt, metrics.csv, loss.png, summary.json, checkpoints/step-N/ (the newest few) and,
/// at the end, model/ (a checkpoint for `sof embed`). Ctrl-C writes a checkpoint and stops;
/// `--resume` continues exactly where the run stopped.
#[derive(Debug, clap::Args)]
#[command(after_help = concat!(
    "Examples:\n",
    "  sof pretrain --preset small --corpus corpora/starmap --corpus corpora/merfish \\\n",
    "      --steps 3000 --output runs/small\n",
    "  sof pretrain --output runs/small --resume",
))]
pub struct Args {
    /// Run settings (TOML, see docs/PRETRAINING.md); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Model size: tiny, small, base or nicheformer.
    #[arg(long)]
    pub preset: Option<String>,
    /// Corpus folders: `--corpus a b` or `--corpus a --corpus b`.
    #[arg(long = "corpus", num_args = 1..)]
    pub corpora: Vec<PathBuf>,
    /// Mixing weights, one per corpus, space- or comma-separated (default: equal).
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    pub weights: Vec<f64>,
    /// The run folder.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Optimizer steps (default: the preset's; with --resume, a new total).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Sequences per optimizer step.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Micro-batches per step (gradient accumulation).
    #[arg(long)]
    pub accumulation: Option<usize>,
    /// Peak learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Seed for initialization, masking and batch order (same seed, same machine: same model).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Positions per cell (default: the preset's).
    #[arg(long)]
    pub context_length: Option<usize>,
    /// Pre-LayerNorm layers (a new model's option; the reference is post-LN).
    #[arg(long)]
    pub norm_first: bool,
    /// Linear warmup steps of the learning rate.
    #[arg(long)]
    pub warmup_steps: Option<u64>,
    /// Start from this checkpoint (ours, or imported reference weights saved with `sof embed`'s loaders).
    #[arg(long)]
    pub init_from: Option<PathBuf>,
    /// The vocabulary TSV the corpora were tokenized with (default: the first corpus's vocab.tsv).
    #[arg(long)]
    pub vocab: Option<PathBuf>,
    /// Add the annotation-based niche objective: the neighbourhood's cell-type composition and
    /// the local density (weight 1 each). Composition learns from the cell-type labels of every
    /// cell, test sections included, so probes scored after it are transductive. The label-free
    /// niche-profile objective needs no flag: it is learned wherever a corpus carries the profile
    /// (`sof tokenize` of a spatial file; `sof spatial`).
    #[arg(long)]
    pub niche: bool,
    /// Leave out the label-free niche-profile objective.
    #[arg(long)]
    pub no_profile: bool,
    /// Add the local-density objective alone (label-free; `--niche` includes it).
    #[arg(long)]
    pub density: bool,
    /// Where the model runs: cpu (default), or wgpu / cuda in a build with that feature.
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceArg,
    /// Data-parallel replicas on the device (several GPUs: one replica each, see docs).
    #[arg(long)]
    pub replicas: Option<usize>,
    /// Continue the run in --output from its newest checkpoint (its config.toml is used).
    #[arg(long)]
    pub resume: bool,
    /// Train again in an --output that holds a finished model, replacing it.
    #[arg(long, conflicts_with = "resume")]
    pub force: bool,
}

fn settings(args: &Args) -> anyhow::Result<PretrainConfig> {
    let mut cfg = if args.resume {
        let path = args.output.join("config.toml");
        if args.config.is_some() || !args.corpora.is_empty() || args.preset.is_some() {
            tracing::warn!("--resume uses {}; --config, --corpus and --preset are ignored", path.display());
        }
        PretrainConfig::load(&path).with_context(|| format!("resuming the run in {}", args.output.display()))?
    } else {
        match &args.config {
            Some(p) => PretrainConfig::load(p)?,
            None => PretrainConfig::default(),
        }
    };
    if !args.resume {
        if !args.corpora.is_empty() {
            if !args.weights.is_empty() && args.weights.len() != args.corpora.len() {
                bail!("--weights has {} values for {} --corpus folders", args.weights.len(), args.corpora.len());
            }
            cfg.corpora = args
                .corpora
                .iter()
                .enumerate()
                .map(|(i, p)| CorpusEntry { path: p.clone(), weight: args.weights.get(i).copied().unwrap_or(1.0) })
                .collect();
        }
        if let Some(p) = &args.preset {
            cfg.preset = p.clone();
        }
        if args.init_from.is_some() {
            cfg.init_from = args.init_from.clone();
        }
        if args.vocab.is_some() {
            cfg.vocab = args.vocab.clone();
        }
        if args.context_length.is_some() {
            cfg.context_length = args.context_length;
        }
        if let Some(v) = args.batch_size {
            cfg.batch_size = v;
        }
        if let Some(v) = args.accumulation {
            cfg.accumulation = v;
        }
        if let Some(v) = args.lr {
            cfg.optimizer.learning_rate = v;
        }
        if args.norm_first {
            cfg.norm_first = true;
        }
        if let Some(v) = args.warmup_steps {
            cfg.optimizer.warmup_steps = v;
        }
        if let Some(v) = args.seed {
            cfg.seed = v;
        }
        if let Some(v) = args.replicas {
            cfg.replicas = v;
        }
        if args.niche {
            cfg.niche.composition_weight = 1.0;
        }
        if args.niche || args.density {
            cfg.niche.density_weight = 1.0;
        }
        if args.no_profile {
            cfg.niche.profile_weight = 0.0;
        }
    }
    if let Some(v) = args.steps {
        if args.resume && v != cfg.steps {
            tracing::warn!("--steps {v} changes the learning-rate schedule of a run planned for {} steps", cfg.steps);
        }
        cfg.steps = v;
    }
    Ok(cfg)
}

pub fn run(args: Args, quiet: bool) -> anyhow::Result<()> {
    let cfg = settings(&args)?;
    let dev = device(args.device)?.autodiff();
    let devices = vec![dev; cfg.replicas];
    // Trainer::run refuses a folder with checkpoints (without --resume) or a finished model
    // (without --force), and a folder another run is writing.
    let trainer = Trainer::new(cfg.clone(), &args.output, devices)?.replace_finished(args.force);
    let mcfg = trainer.model_config();
    tracing::info!(
        preset = %cfg.preset,
        parameters = mcfg.n_parameters(),
        d_model = mcfg.d_model,
        layers = mcfg.n_layers,
        "model"
    );

    let summary = util::train(&trainer, cfg.steps, args.resume, quiet)?;
    if summary.interrupted {
        return Err(crate::Interrupted(format!(
            "stopped at step {} of {}; checkpoint written. Continue with: sof pretrain --output {} --resume",
            summary.steps_done,
            cfg.steps,
            args.output.display()
        ))
        .into());
    }
    let b = &summary.baselines;
    util::say(format!(
        "pretrained {} steps ({} parameters) at {:.0} tokens/s; model in {}",
        summary.steps_done,
        summary.parameters,
        summary.mean_tokens_per_second,
        summary.model_dir.display()
    ));
    match (summary.final_validation_loss, summary.final_validation_accuracy) {
        (Some(l), Some(a)) => util::say(format!(
            "validation: masked-token loss {l:.3} nats (unigram baseline {:.3}), accuracy {:.1}% (most frequent token {:.1}%), {} masked tokens",
            b.unigram_loss,
            a * 100.0,
            b.most_frequent_accuracy * 100.0,
            b.validation_masked_tokens
        )),
        _ => util::say("validation: none (no held-out cells; raise validation_fraction)"),
    }
    util::say(format!(
        "metrics: {}, curve: {}",
        args.output.join("metrics.csv").display(),
        args.output.join("loss.png").display()
    ));
    Ok(())
}
