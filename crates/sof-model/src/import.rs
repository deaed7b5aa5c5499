//! Reference-layout weights: `.safetensors` (the state_dict, with a `config.json` beside it) and
//! PyTorch Lightning `.ckpt` (a `state_dict` and its `hyper_parameters`).
//!
//! Renames: `embeddings.weight`, `positional_embedding.weight`, `classifier_head.{weight,bias}`,
//! and per layer `encoder.layers.{i}.`: `self_attn.in_proj_{weight,bias}` (q, k, v stacked) ->
//! the attention's query / key / value, `self_attn.out_proj` -> output, `linear1` / `linear2` ->
//! the feed-forward's inner / outer, `norm1` / `norm2` -> `norm_1` / `norm_2`. PyTorch stores linear
//! weights as `[out, in]`, burn as `[in, out]`: they are transposed on import. Tensors the forward
//! pass never uses (`encoder_layer.*`, `pooler_head.*`, `cls_head.*`) are accepted and ignored.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::Param;
use burn::nn::{LayerNorm, Linear};
use burn::prelude::*;
use safetensors::{Dtype, SafeTensors};

use crate::{Encoder, EncoderConfig, ModelError};

/// Prefixes of reference tensors the forward pass does not use.
const IGNORED: [&str; 3] = ["encoder_layer.", "pooler_head.", "cls_head."];

/// The reference's `config.json` keys (as a model hub stores them).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ReferenceConfig {
    pub dim_model: usize,
    pub nheads: usize,
    pub dim_feedforward: usize,
    pub nlayers: usize,
    #[serde(default)]
    pub dropout: f64,
    pub context_length: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    pub n_tokens: usize,
}

fn default_eps() -> f64 {
    1e-12
}

impl ReferenceConfig {
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            invalid(path, e.to_string(), "pass the config.json stored beside the weights, or --model-config")
        })?;
        serde_json::from_str(&text).map_err(|e| {
            invalid(
                path,
                e.to_string(),
                "the reference config needs dim_model, nheads, dim_feedforward, nlayers, context_length, n_tokens",
            )
        })
    }

    /// Our config; the embedding table's rows come from the weights themselves.
    pub fn to_encoder_config(&self, embedding_rows: usize) -> EncoderConfig {
        EncoderConfig::new(
            embedding_rows,
            self.n_tokens,
            self.context_length,
            self.dim_model,
            self.nheads,
            self.dim_feedforward,
            self.nlayers,
        )
        .with_layer_norm_eps(self.layer_norm_eps)
        .with_dropout(self.dropout)
    }
}

/// Sizes the forward pass cannot run with (they would divide by zero, fail a reshape or index
/// past the embedding table), refused where the weights are loaded.
fn check_config(path: &Path, c: &EncoderConfig) -> Result<(), ModelError> {
    let fix = "the config does not describe these weights: pass the config.json they were saved with";
    if c.n_heads == 0 || c.d_model == 0 || !c.d_model.is_multiple_of(c.n_heads) {
        return Err(invalid(
            path,
            format!("nheads {} must be at least 1 and divide dim_model {}", c.n_heads, c.d_model),
            fix,
        ));
    }
    if c.context_length == 0 || c.n_tokens == 0 {
        return Err(invalid(
            path,
            format!("context_length {} and n_tokens {} must be at least 1", c.context_length, c.n_tokens),
            fix,
        ));
    }
    if c.embedding_rows < c.n_tokens {
        return Err(invalid(
            path,
            format!(
                "the embedding table has {} rows but n_tokens is {}: token ids past the table would be looked up",
                c.embedding_rows, c.n_tokens
            ),
            fix,
        ));
    }
    Ok(())
}

fn invalid(path: &Path, problem: impl Into<String>, fix: impl Into<String>) -> ModelError {
    ModelError::Invalid { path: path.display().to_string(), problem: problem.into(), fix: fix.into() }
}

/// Named f32 tensors read from a file.
struct Weights {
    tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
}

impl Weights {
    /// The `state_dict` of a PyTorch (Lightning) checkpoint.
    fn read_ckpt(path: &Path) -> Result<Self, ModelError> {
        let reader = pytorch_reader::PytorchReader::with_top_level_key(path, "state_dict").map_err(|e| {
            invalid(
                path,
                format!("not a readable PyTorch checkpoint ({e})"),
                "pass a Lightning .ckpt with a state_dict, or a .safetensors file",
            )
        })?;
        let mut tensors = BTreeMap::new();
        for (name, t) in reader.into_tensors() {
            if t.dtype() != pytorch_reader::DType::F32 {
                return Err(invalid(
                    path,
                    format!("tensor {name} is {:?}", t.dtype()),
                    "export the weights as float32",
                ));
            }
            let shape = t.shape().to_vec();
            let bytes = t
                .read()
                .map_err(|e| invalid(path, e.to_string(), "the checkpoint is truncated or corrupt: fetch it again"))?;
            tensors.insert(
                name,
                (shape, bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()),
            );
        }
        Ok(Self { tensors })
    }

    fn read_safetensors(path: &Path) -> Result<Self, ModelError> {
        let bytes = std::fs::read(path).map_err(|e| invalid(path, e.to_string(), "check the path"))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| {
            invalid(path, format!("not a safetensors file ({e})"), "the file is truncated or in another format")
        })?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            if view.dtype() != Dtype::F32 {
                return Err(invalid(
                    path,
                    format!("tensor {name} is {:?}", view.dtype()),
                    "export the weights as float32",
                ));
            }
            let data = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            tensors.insert(name, (view.shape().to_vec(), data));
        }
        Ok(Self { tensors })
    }
}

/// Collects what does not fit, then reports it all at once.
struct Loader<'a> {
    weights: &'a Weights,
    used: Vec<String>,
    problems: Vec<String>,
    device: Device,
}

impl Loader<'_> {
    fn take<const D: usize>(&mut self, name: &str, shape: [usize; D]) -> Option<Tensor<D>> {
        let Some((s, data)) = self.weights.tensors.get(name) else {
            self.problems.push(format!("missing: {name} {shape:?}"));
            return None;
        };
        self.used.push(name.to_owned());
        if s.as_slice() != shape.as_slice() {
            self.problems.push(format!("mis-shaped: {name} is {s:?}, the model needs {shape:?}"));
            return None;
        }
        Some(Tensor::from_data(TensorData::new(data.clone(), shape), &self.device))
    }

    /// PyTorch `[out, in]` weight rows `rows` -> burn `[in, out]`.
    fn linear(&mut self, target: &mut Linear, weight: &str, bias: &str, d_in: usize, d_out: usize) {
        if let Some(w) = self.take(weight, [d_out, d_in]) {
            target.weight = Param::from_tensor(w.transpose());
        }
        if let Some(b) = self.take(bias, [d_out]) {
            target.bias = Some(Param::from_tensor(b));
        }
    }

    fn norm(&mut self, target: &mut LayerNorm, prefix: &str, d: usize) {
        if let Some(g) = self.take(&format!("{prefix}.weight"), [d]) {
            target.gamma = Param::from_tensor(g);
        }
        if let Some(b) = self.take(&format!("{prefix}.bias"), [d]) {
            target.beta = Some(Param::from_tensor(b));
        }
    }
}

/// Loads reference-layout weights from `.safetensors`; the heads count comes from `config`
/// (shapes do not reveal it). Missing, unexpected and mis-shaped tensors are all listed.
pub fn load_safetensors(
    path: &Path,
    config: &ReferenceConfig,
    device: &Device,
) -> Result<(Encoder, EncoderConfig), ModelError> {
    build(path, &Weights::read_safetensors(path)?, config, device)
}

/// Loads a PyTorch Lightning `.ckpt`: weights from its `state_dict`, sizes from its
/// `hyper_parameters` unless `config` overrides them.
pub fn load_ckpt(
    path: &Path,
    config: Option<&ReferenceConfig>,
    device: &Device,
) -> Result<(Encoder, EncoderConfig), ModelError> {
    let weights = Weights::read_ckpt(path)?;
    let config = match config {
        Some(c) => c.clone(),
        None => pytorch_reader::PytorchReader::load_config(path, Some("hyper_parameters")).map_err(|e| {
            invalid(
                path,
                format!("its hyper_parameters do not describe the model ({e})"),
                "pass the model's config.json with --model-config",
            )
        })?,
    };
    build(path, &weights, &config, device)
}

/// Loads reference weights by extension: `.ckpt`, or `.safetensors` with `config.json` beside
/// it (or `model_config`, which wins for both).
pub fn load_reference(
    path: &Path,
    model_config: Option<&Path>,
    device: &Device,
) -> Result<(Encoder, EncoderConfig), ModelError> {
    let explicit = model_config.map(ReferenceConfig::load).transpose()?;
    match path.extension().and_then(|e| e.to_str()) {
        Some("ckpt") | Some("pt") | Some("pth") => load_ckpt(path, explicit.as_ref(), device),
        Some("safetensors") => {
            let config = match explicit {
                Some(c) => c,
                None => ReferenceConfig::load(&path.with_file_name("config.json"))?,
            };
            load_safetensors(path, &config, device)
        }
        _ => Err(invalid(path, "unknown weight format", "pass a .safetensors or a .ckpt file")),
    }
}

fn build(
    path: &Path,
    weights: &Weights,
    config: &ReferenceConfig,
    device: &Device,
) -> Result<(Encoder, EncoderConfig), ModelError> {
    let rows = weights.tensors.get("embeddings.weight").map(|t| t.0[0]).ok_or_else(|| ModelError::Mismatch {
        path: path.display().to_string(),
        report: "missing: embeddings.weight (is this a Nicheformer checkpoint?)".into(),
    })?;
    let cfg = config.to_encoder_config(rows);
    check_config(path, &cfg)?;
    if let Some(name) = weights.tensors.iter().find(|(_, (_, v))| v.iter().any(|x| !x.is_finite())).map(|(n, _)| n) {
        return Err(invalid(
            path,
            format!("tensor {name} holds NaN or infinite values, so every embedding would be NaN"),
            "the training diverged before this was saved: use an earlier checkpoint",
        ));
    }
    let mut enc = cfg.init(device);
    let (d, ff) = (cfg.d_model, cfg.d_ff);
    let mut l = Loader { weights, used: Vec::new(), problems: Vec::new(), device: device.clone() };
    if let Some(t) = l.take("embeddings.weight", [cfg.embedding_rows, d]) {
        enc.embeddings.weight = Param::from_tensor(t);
    }
    if let Some(t) = l.take("positional_embedding.weight", [cfg.context_length, d]) {
        enc.positional_embedding.weight = Param::from_tensor(t);
    }
    l.linear(&mut enc.classifier_head, "classifier_head.weight", "classifier_head.bias", d, cfg.n_tokens);
    for (i, layer) in enc.encoder.layers.iter_mut().enumerate() {
        let p = format!("encoder.layers.{i}");
        let w = l.take(&format!("{p}.self_attn.in_proj_weight"), [3 * d, d]);
        let b = l.take(&format!("{p}.self_attn.in_proj_bias"), [3 * d]);
        if let (Some(w), Some(b)) = (w, b) {
            for (k, target) in [&mut layer.mha.query, &mut layer.mha.key, &mut layer.mha.value].into_iter().enumerate()
            {
                target.weight = Param::from_tensor(w.clone().slice(s![k * d..(k + 1) * d, ..]).transpose());
                target.bias = Some(Param::from_tensor(b.clone().slice(s![k * d..(k + 1) * d])));
            }
        }
        l.linear(
            &mut layer.mha.output,
            &format!("{p}.self_attn.out_proj.weight"),
            &format!("{p}.self_attn.out_proj.bias"),
            d,
            d,
        );
        l.linear(&mut layer.pwff.linear_inner, &format!("{p}.linear1.weight"), &format!("{p}.linear1.bias"), d, ff);
        l.linear(&mut layer.pwff.linear_outer, &format!("{p}.linear2.weight"), &format!("{p}.linear2.bias"), ff, d);
        l.norm(&mut layer.norm_1, &format!("{p}.norm1"), d);
        l.norm(&mut layer.norm_2, &format!("{p}.norm2"), d);
    }
    let mut problems = l.problems;
    for name in weights.tensors.keys() {
        if !l.used.contains(name) && !IGNORED.iter().any(|p| name.starts_with(p)) {
            problems.push(format!("unexpected: {name} {:?}", weights.tensors[name].0));
        }
    }
    if !problems.is_empty() {
        return Err(ModelError::Mismatch { path: path.display().to_string(), report: problems.join("\n") });
    }
    Ok((enc, cfg))
}

/// Writes an encoder in the reference layout: `model.safetensors` (the reference's state_dict
/// names and PyTorch shapes) and `config.json` (the reference's keys) into `dir`, atomically
/// per file. The inverse of [`load_reference`], so our models can be used where the reference's are.
pub fn export_reference(enc: &Encoder, cfg: &EncoderConfig, dir: &Path) -> Result<(), ModelError> {
    let io = |e: std::io::Error| invalid(dir, e.to_string(), "check that the folder exists and is writable");
    let vec = |t: Tensor<2>| t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap_or_default();
    let vec1 = |t: Tensor<1>| t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap_or_default();
    let mut named: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let linear = |named: &mut Vec<(String, Vec<usize>, Vec<f32>)>, l: &Linear, name: &str| {
        let w = l.weight.val().transpose(); // [out, in]
        let [o, i] = w.dims();
        named.push((format!("{name}.weight"), vec![o, i], vec(w)));
        if let Some(b) = &l.bias {
            named.push((format!("{name}.bias"), vec![o], vec1(b.val())));
        }
    };
    let d = cfg.d_model;
    named.push(("embeddings.weight".into(), vec![cfg.embedding_rows, d], vec(enc.embeddings.weight.val())));
    named.push((
        "positional_embedding.weight".into(),
        vec![cfg.context_length, d],
        vec(enc.positional_embedding.weight.val()),
    ));
    linear(&mut named, &enc.classifier_head, "classifier_head");
    for (i, layer) in enc.encoder.layers.iter().enumerate() {
        let p = format!("encoder.layers.{i}");
        let (mut w, mut b) = (Vec::new(), Vec::new());
        for l in [&layer.mha.query, &layer.mha.key, &layer.mha.value] {
            w.extend(vec(l.weight.val().transpose()));
            b.extend(l.bias.as_ref().map(|x| vec1(x.val())).unwrap_or_else(|| vec![0.0; d]));
        }
        named.push((format!("{p}.self_attn.in_proj_weight"), vec![3 * d, d], w));
        named.push((format!("{p}.self_attn.in_proj_bias"), vec![3 * d], b));
        linear(&mut named, &layer.mha.output, &format!("{p}.self_attn.out_proj"));
        linear(&mut named, &layer.pwff.linear_inner, &format!("{p}.linear1"));
        linear(&mut named, &layer.pwff.linear_outer, &format!("{p}.linear2"));
        for (norm, n) in [(&layer.norm_1, "norm1"), (&layer.norm_2, "norm2")] {
            named.push((format!("{p}.{n}.weight"), vec![d], vec1(norm.gamma.val())));
            named.push((
                format!("{p}.{n}.bias"),
                vec![d],
                norm.beta.as_ref().map(|x| vec1(x.val())).unwrap_or_else(|| vec![0.0; d]),
            ));
        }
    }
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> =
        named.into_iter().map(|(n, s, v)| (n, s, v.iter().flat_map(|x| x.to_le_bytes()).collect())).collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(n, s, b)| {
            (n.clone(), safetensors::tensor::TensorView::new(Dtype::F32, s.clone(), b).expect("sizes match"))
        })
        .collect();
    let data = safetensors::serialize(views, None).map_err(|e| invalid(dir, e.to_string(), "report this as a bug"))?;
    let config = serde_json::json!({
        "dim_model": cfg.d_model, "nheads": cfg.n_heads, "dim_feedforward": cfg.d_ff, "nlayers": cfg.n_layers,
        "dropout": cfg.dropout, "n_genes": cfg.n_tokens - 30, "aux_tokens": 30, "context_length": cfg.context_length,
        "layer_norm_eps": cfg.layer_norm_eps, "n_tokens": cfg.n_tokens,
    });
    for (name, content) in
        [("model.safetensors", data), ("config.json", serde_json::to_vec_pretty(&config).expect("json"))]
    {
        let dest = dir.join(name);
        let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        std::fs::write(&tmp, content).map_err(io)?;
        std::fs::rename(&tmp, &dest).map_err(io)?;
    }
    Ok(())
}
