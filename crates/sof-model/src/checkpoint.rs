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

/// Loads a checkpoint folder written by [`save`].
pub fn load(dir: &Path, device: &Device) -> Result<(Encoder, EncoderConfig, RunInfo), ModelError> {
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
