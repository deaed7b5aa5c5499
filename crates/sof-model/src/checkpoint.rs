//! Our checkpoints: one folder per checkpoint holding
//! - `model.safetensors` + `config.json`: the weights in the reference layout (so the folder also
//!   loads wherever reference weights do),
//! - `sof_model.json`: our [`EncoderConfig`] (including options the reference lacks, e.g. pre-LN),
//! - `run.json`: what the model was trained with — the tokenizer spec (settings, technology,
//!   species, modality: [`TokenizerSpec`]) and the vocabulary hash — so data is tokenized the
//!   same way at inference.
//!
//! Every file is written under a temporary name and renamed; `run.json` is written last, so a
//! folder without it is an interrupted save and is refused on load.

use std::path::Path;

use burn::prelude::*;
use serde::{Deserialize, Serialize};
use sof_tokenize::TokenizerSpec;

use crate::import::{ReferenceConfig, export_reference, load_safetensors};
use crate::{Encoder, EncoderConfig, ModelError};

/// What a checkpoint records besides the weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    /// How the training cells were tokenized.
    pub tokenizer: TokenizerSpec,
    /// SHA-256 of the vocabulary the model was trained with.
    pub vocabulary_hash: String,
    /// Training step of this checkpoint, if any.
    #[serde(default)]
    pub step: Option<u64>,
}

fn invalid(path: &Path, problem: impl Into<String>, fix: impl Into<String>) -> ModelError {
    ModelError::Invalid { path: path.display().to_string(), problem: problem.into(), fix: fix.into() }
}

fn write_atomic(dir: &Path, name: &str, content: &[u8]) -> Result<(), ModelError> {
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    std::fs::write(&tmp, content)
        .and_then(|_| std::fs::rename(&tmp, dir.join(name)))
        .map_err(|e| invalid(dir, e.to_string(), "check that the folder is writable and has space"))
}

/// Saves a checkpoint folder (created if needed).
pub fn save(dir: &Path, enc: &Encoder, cfg: &EncoderConfig, run: &RunInfo) -> Result<(), ModelError> {
    std::fs::create_dir_all(dir).map_err(|e| invalid(dir, e.to_string(), "check the path"))?;
    let _ = std::fs::remove_file(dir.join("run.json"));
    export_reference(enc, cfg, dir)?;
    write_atomic(dir, "sof_model.json", cfg.to_string().as_bytes())?;
    write_atomic(dir, "run.json", &serde_json::to_vec_pretty(run).expect("run info serializes"))
}

/// The checkpoint folder that `dir` names: `dir` itself when it holds `run.json`, else a
/// `sof pretrain` run folder's finished `model/`. A run folder without a finished model (stopped
/// or still running) is refused with its newest step checkpoint named; any other folder without
/// `run.json` is refused as an incomplete checkpoint.
///
/// ```
/// use sof_model::checkpoint::resolve;
/// let run = std::env::temp_dir().join(format!("sof-resolve-doc-{}", std::process::id()));
/// std::fs::create_dir_all(run.join("checkpoints/step-00000100/model")).unwrap();
/// std::fs::write(run.join("checkpoints/step-00000100/model/run.json"), "{}").unwrap();
/// let e = resolve(&run).unwrap_err().to_string();
/// assert!(e.contains("step-00000100") && e.contains("--resume"), "{e}");
/// std::fs::create_dir_all(run.join("model")).unwrap();
/// std::fs::write(run.join("model/run.json"), "{}").unwrap();
/// assert_eq!(resolve(&run).unwrap(), run.join("model"));
/// # std::fs::remove_dir_all(&run).unwrap();
/// ```
pub fn resolve(dir: &Path) -> Result<std::path::PathBuf, ModelError> {
    if dir.join("run.json").is_file() {
        return Ok(dir.to_path_buf());
    }
    let model = dir.join("model");
    if model.join("run.json").is_file() {
        return Ok(model);
    }
    let newest = std::fs::read_dir(dir.join("checkpoints"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("step-") && e.path().join("model/run.json").is_file())
        .map(|e| e.path().join("model"))
        .max();
    let run_folder = newest.is_some() || (dir.join("config.toml").is_file() && dir.join("metrics.csv").is_file());
    if run_folder {
        let earlier =
            newest.map(|p| format!("use its newest step checkpoint ({}) or ", p.display())).unwrap_or_default();
        return Err(invalid(
            dir,
            format!("a pretraining run folder without a finished model/ ({} is missing)", model.display()),
            format!("{earlier}finish the run with `sof pretrain --resume` (same --output)"),
        ));
    }
    Err(invalid(
        dir,
        "no run.json",
        "this is not a complete sof checkpoint (an interrupted save leaves none; a `sof pretrain` run folder \
         holds its model in <output>/model): use an earlier checkpoint",
    ))
}

/// Loads a checkpoint folder written by [`save`], or the finished model of a `sof pretrain` run
/// folder ([`resolve`]).
pub fn load(dir: &Path, device: &Device) -> Result<(Encoder, EncoderConfig, RunInfo), ModelError> {
    let dir = &resolve(dir)?;
    let read = |name: &str| std::fs::read_to_string(dir.join(name));
    let run_text = read("run.json").map_err(|_| {
        invalid(
            dir,
            "no run.json",
            "this is not a complete sof checkpoint (an interrupted save leaves none): use an earlier checkpoint",
        )
    })?;
    let run: RunInfo = serde_json::from_str(&run_text)
        .map_err(|e| invalid(&dir.join("run.json"), e.to_string(), "the checkpoint is damaged"))?;
    let ours: EncoderConfig = serde_json::from_str(
        &read("sof_model.json")
            .map_err(|e| invalid(dir, format!("sof_model.json: {e}"), "the checkpoint is incomplete"))?,
    )
    .map_err(|e| invalid(&dir.join("sof_model.json"), e.to_string(), "the checkpoint is damaged"))?;
    let reference = ReferenceConfig::load(&dir.join("config.json"))?;
    let (mut enc, loaded) = load_safetensors(&dir.join("model.safetensors"), &reference, device)?;
    if ours.norm_first != loaded.norm_first {
        for layer in enc.encoder.layers.iter_mut() {
            layer.norm_first = ours.norm_first;
        }
    }
    let cfg = loaded.with_norm_first(ours.norm_first).with_dropout(ours.dropout);
    if cfg != ours {
        return Err(invalid(
            dir,
            format!("sof_model.json says {ours:?} but the weights are {cfg:?}"),
            "the checkpoint's files do not belong together",
        ));
    }
    Ok((enc, cfg, run))
}
