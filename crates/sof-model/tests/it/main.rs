//! Parity with the reference: the tiny checkpoint in the reference layout reproduces the
//! reference's hidden states, MLM logits and both poolings within 1e-4 (f32, CPU).

use std::path::{Path, PathBuf};

use burn::prelude::*;
use sof_model::import::{ReferenceConfig, load_reference, load_safetensors};
use sof_model::{EncoderConfig, ModelError, Pooling};

fn fixture_dir() -> Option<PathBuf> {
    sof_io::shared::for_tests(Path::new(env!("CARGO_MANIFEST_DIR"))).map(|s| s.join("fixtures/nicheformer_tiny"))
}

/// A minimal `.npy` reader (little-endian f4 / i8, C order), enough for the fixtures.
fn npy(path: &Path) -> (Vec<usize>, Vec<u8>, String) {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..6], b"\x93NUMPY", "{}", path.display());
    let (hlen, start) = if b[6] == 1 {
        (u16::from_le_bytes([b[8], b[9]]) as usize, 10)
    } else {
        (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12)
    };
    let header = String::from_utf8_lossy(&b[start..start + hlen]).into_owned();
    assert!(header.contains("'fortran_order': False"));
    let descr = header.split("'descr': '").nth(1).unwrap().split('\'').next().unwrap().to_owned();
    let shape_s = header.split("'shape': (").nth(1).unwrap().split(')').next().unwrap();
    let shape = shape_s.split(',').filter(|s| !s.trim().is_empty()).map(|s| s.trim().parse().unwrap()).collect();
    (shape, b[start + hlen..].to_vec(), descr)
}

fn npy_f32(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let (shape, data, descr) = npy(path);
    assert_eq!(descr, "<f4");
    (shape, data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

fn npy_i64(path: &Path) -> (Vec<usize>, Vec<i64>) {
    let (shape, data, descr) = npy(path);
    assert_eq!(descr, "<i8");
    (shape, data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect())
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let worst = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst <= 1e-4, "{what}: max abs difference {worst}");
}

fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

#[test]
fn safetensors_reproduce_the_reference_outputs() {
    let Some(dir) = fixture_dir() else { return };
    let device = Device::flex();
    let cfg = ReferenceConfig::load(&dir.join("config.json")).unwrap();
    let (enc, ours) = load_safetensors(&dir.join("model.safetensors"), &cfg, &device).unwrap();
    assert_eq!((ours.embedding_rows, ours.n_tokens, ours.n_layers, ours.n_heads), (85, 80, 2, 4));
    let (shape, ids) = npy_i64(&dir.join("input_tokens.npy"));
    let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids, [shape[0], shape[1]]), &device);
    let hidden = enc.forward(tokens.clone());
    assert_close(&to_vec(hidden.clone()), &npy_f32(&dir.join("expected_hidden.npy")).1, "hidden");
    assert_close(
        &to_vec(enc.mlm_logits(hidden.clone())),
        &npy_f32(&dir.join("expected_mlm_logits.npy")).1,
        "MLM logits",
    );
    let reference = enc.pool(tokens.clone(), hidden.clone(), Pooling::Reference);
    assert_close(
        &to_vec(reference),
        &npy_f32(&dir.join("expected_embedding_reference_mean.npy")).1,
        "reference pooling",
    );
    let excluded = enc.embed(tokens, Pooling::PadExcluded);
    assert_close(
        &to_vec(excluded),
        &npy_f32(&dir.join("expected_embedding_pad_excluded_mean.npy")).1,
        "PAD-excluded pooling",
    );
}

/// The Lightning `.ckpt` holds the same weights: same outputs, sizes from its hyper_parameters.
#[test]
fn ckpt_and_safetensors_agree() {
    let Some(dir) = fixture_dir() else { return };
    let device = Device::flex();
    let (a, ca) = load_reference(&dir.join("model.ckpt"), None, &device).unwrap();
    let (b, cb) = load_reference(&dir.join("model.safetensors"), None, &device).unwrap();
    assert_eq!(ca, cb);
    let (shape, ids) = npy_i64(&dir.join("input_tokens.npy"));
    let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids, [shape[0], shape[1]]), &device);
    let ha = a.forward(tokens.clone());
    assert_close(&to_vec(ha.clone()), &npy_f32(&dir.join("expected_hidden.npy")).1, "hidden (.ckpt)");
    assert_close(&to_vec(a.mlm_logits(ha)), &npy_f32(&dir.join("expected_mlm_logits.npy")).1, "MLM logits (.ckpt)");
    assert_close(
        &to_vec(a.embed(tokens.clone(), Pooling::Reference)),
        &to_vec(b.embed(tokens.clone(), Pooling::Reference)),
        "pooled",
    );
    assert_close(
        &to_vec(a.embed(tokens, Pooling::PadExcluded)),
        &npy_f32(&dir.join("expected_embedding_pad_excluded_mean.npy")).1,
        "PAD-excluded (.ckpt)",
    );
    let e = load_reference(&dir.join("README.md"), None, &device).unwrap_err().to_string();
    assert!(e.contains("unknown weight format"), "{e}");
}

#[test]
fn mismatched_weights_are_listed() {
    let Some(dir) = fixture_dir() else { return };
    let device = Device::flex();
    let mut cfg = ReferenceConfig::load(&dir.join("config.json")).unwrap();
    cfg.nlayers = 3;
    cfg.dim_feedforward = 48;
    let e = load_safetensors(&dir.join("model.safetensors"), &cfg, &device).unwrap_err().to_string();
    assert!(e.contains("missing: encoder.layers.2.self_attn.in_proj_weight"), "{e}");
    assert!(e.contains("mis-shaped: encoder.layers.0.linear1.weight is [64, 32], the model needs [48, 32]"), "{e}");
    let tmp = std::env::temp_dir().join(format!("sof-model-bad-{}.safetensors", std::process::id()));
    std::fs::write(&tmp, b"not safetensors").unwrap();
    let e = load_safetensors(&tmp, &cfg, &device).unwrap_err();
    assert!(matches!(e, ModelError::Invalid { .. }) && e.to_string().contains("not a safetensors file"), "{e}");
    let _ = std::fs::remove_file(tmp);
}

/// The `nicheformer` preset has the reference's parameter count (about 47M with unused heads
/// left out: the paper's 49.3M counts them).
#[test]
fn nicheformer_preset_size() {
    let cfg = EncoderConfig::nicheformer();
    let n = cfg.n_parameters();
    assert!((45_000_000..48_000_000).contains(&n), "{n} parameters");
    let device = Device::flex();
    let tiny = EncoderConfig::tiny(80).init(&device);
    assert_eq!(tiny.num_params(), EncoderConfig::tiny(80).n_parameters(), "counted parameters equal the module's");
}

/// Export to the reference layout and load again: the same outputs, so our models can be used
/// where the reference's are.
#[test]
fn export_round_trips() {
    let Some(dir) = fixture_dir() else { return };
    let device = Device::flex();
    let (a, cfg) = load_reference(&dir.join("model.ckpt"), None, &device).unwrap();
    let out = std::env::temp_dir().join(format!("sof-model-export-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    sof_model::import::export_reference(&a, &cfg, &out).unwrap();
    let (b, cfg_b) = load_reference(&out.join("model.safetensors"), None, &device).unwrap();
    assert_eq!(cfg, cfg_b);
    let (shape, ids) = npy_i64(&dir.join("input_tokens.npy"));
    let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids, [shape[0], shape[1]]), &device);
    assert_close(
        &to_vec(b.forward(tokens.clone())),
        &npy_f32(&dir.join("expected_hidden.npy")).1,
        "hidden after export",
    );
    // A random model exports and reloads identically too.
    let fresh = EncoderConfig::tiny(80).with_norm_first(false).init(&device);
    sof_model::import::export_reference(&fresh, &EncoderConfig::tiny(80), &out).unwrap();
    let (c, _) = load_reference(&out.join("model.safetensors"), None, &device).unwrap();
    assert_close(&to_vec(c.forward(tokens.clone())), &to_vec(fresh.forward(tokens)), "random model after export");
    let _ = std::fs::remove_dir_all(out);
}

/// Our names and shapes are the reference's: exporting the fixture model gives exactly the
/// fixture file's tensors (less the ones the forward pass never uses), and the `nicheformer`
/// preset's table has the reference's sizes.
#[test]
fn parameter_table_matches_the_reference_names() {
    let Some(dir) = fixture_dir() else { return };
    let device = Device::flex();
    let table = |path: &Path| -> Vec<(String, Vec<usize>)> {
        let bytes = std::fs::read(path).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut v: Vec<(String, Vec<usize>)> = st
            .tensors()
            .into_iter()
            .filter(|(n, _)| !["encoder_layer.", "pooler_head.", "cls_head."].iter().any(|p| n.starts_with(p)))
            .map(|(n, t)| (n, t.shape().to_vec()))
            .collect();
        v.sort();
        v
    };
    let (enc, cfg) = load_reference(&dir.join("model.safetensors"), None, &device).unwrap();
    let out = std::env::temp_dir().join(format!("sof-model-table-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    sof_model::import::export_reference(&enc, &cfg, &out).unwrap();
    assert_eq!(table(&out.join("model.safetensors")), table(&dir.join("model.safetensors")));
    let _ = std::fs::remove_dir_all(out);
    let n = EncoderConfig::nicheformer();
    assert_eq!(
        (n.embedding_rows, n.n_tokens, n.context_length, n.d_model, n.n_heads, n.d_ff, n.n_layers),
        (20_345, 20_340, 1_500, 512, 16, 1_024, 12)
    );
    assert_eq!(n.layer_norm_eps, 1e-12);
}

/// Our checkpoint folder: saved and loaded back with the same outputs and run info, a pre-LN
/// model keeps its layer order, and an interrupted save (no run.json) is refused.
#[test]
fn checkpoints_round_trip() {
    use sof_model::checkpoint::{RunInfo, load, save};
    let device = Device::flex();
    let dir = std::env::temp_dir().join(format!("sof-model-ckpt-{}", std::process::id()));
    let tokens = Tensor::<2, Int>::from_data(TensorData::new(vec![6i64, 7, 4, 40, 52, 33, 1, 1], [1, 8]), &device);
    for norm_first in [false, true] {
        let cfg = EncoderConfig::tiny(80).with_norm_first(norm_first);
        let enc = cfg.init(&device);
        let run = RunInfo {
            tokenizer: sof_tokenize::TokenizerSpec {
                config: sof_tokenize::TokenizerConfig { context_length: 64, ..Default::default() },
                technology: Some("merfish".into()),
                ..Default::default()
            },
            vocabulary_hash: "abc".into(),
            step: Some(7),
        };
        save(&dir, &enc, &cfg, &run).unwrap();
        let (back, cfg_back, run_back) = load(&dir, &device).unwrap();
        assert_eq!(cfg_back, cfg);
        assert_eq!(run_back, run);
        assert_close(&to_vec(back.forward(tokens.clone())), &to_vec(enc.forward(tokens.clone())), "reloaded outputs");
    }
    std::fs::remove_file(dir.join("run.json")).unwrap();
    let e = load(&dir, &device).unwrap_err().to_string();
    assert!(e.contains("no run.json") && e.contains("earlier checkpoint"), "{e}");
    let _ = std::fs::remove_dir_all(dir);
}

/// A `sof pretrain` run folder passed as the checkpoint loads its finished `model/`; without one
/// the error names the newest step checkpoint and `--resume`; an unrelated folder is still an
/// incomplete checkpoint.
#[test]
fn a_run_folder_loads_its_model_or_names_it() {
    use sof_model::checkpoint::{RunInfo, load, save};
    let device = Device::flex();
    let run_dir = std::env::temp_dir().join(format!("sof-model-run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&run_dir);
    let cfg = EncoderConfig::tiny(80);
    let enc = cfg.init(&device);
    let run = RunInfo { tokenizer: Default::default(), vocabulary_hash: "abc".into(), step: Some(3) };
    let step = run_dir.join("checkpoints").join("step-00000003").join("model");
    save(&step, &enc, &cfg, &run).unwrap();
    let e = load(&run_dir, &device).unwrap_err().to_string();
    assert!(e.contains("without a finished model/") && e.contains("step-00000003") && e.contains("--resume"), "{e}");
    let (_, _, back) = load(&step, &device).unwrap();
    assert_eq!(back.step, Some(3));
    save(&run_dir.join("model"), &enc, &cfg, &RunInfo { step: Some(9), ..run }).unwrap();
    let (_, cfg_back, back) = load(&run_dir, &device).unwrap();
    assert_eq!((cfg_back, back.step), (cfg, Some(9)), "the run folder's finished model, not a step");
    let empty = run_dir.join("checkpoints");
    let e = load(&empty, &device).unwrap_err().to_string();
    assert!(e.contains("no run.json") && e.contains("<output>/model"), "{e}");
    let _ = std::fs::remove_dir_all(run_dir);
}

/// Configs the forward pass cannot run with, and non-finite weights, are refused on load with
/// the file and the fix (not a divide-by-zero panic, not all-NaN embeddings).
#[test]
fn impossible_configs_and_nan_weights_are_refused() {
    let device = Device::flex();
    let dir = std::env::temp_dir().join(format!("sof-model-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fresh = EncoderConfig::tiny(80).with_norm_first(false).init(&device);
    sof_model::import::export_reference(&fresh, &EncoderConfig::tiny(80), &dir).unwrap();
    let weights = dir.join("model.safetensors");
    let good = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let with = |key: &str, value: usize| {
        let mut v: serde_json::Value = serde_json::from_str(&good).unwrap();
        v[key] = value.into();
        std::fs::write(dir.join("config.json"), v.to_string()).unwrap();
        load_reference(&weights, None, &device).map(|_| ()).unwrap_err().to_string()
    };
    let e = with("nheads", 0);
    assert!(e.contains("config.json") || e.contains("model.safetensors"), "{e}");
    assert!(e.contains("nheads 0") && e.contains("pass the config.json"), "{e}");
    assert!(with("nheads", 3).contains("divide dim_model 32"));
    assert!(with("n_tokens", 200).contains("embedding table has 85 rows"));
    std::fs::write(dir.join("config.json"), &good).unwrap();
    load_reference(&weights, None, &device).unwrap();
    // A NaN in one tensor: the file is refused, naming the tensor.
    let bytes = std::fs::read(&weights).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> =
        st.tensors().into_iter().map(|(n, t)| (n, t.shape().to_vec(), t.data().to_vec())).collect();
    let (name, _, data) = tensors.iter_mut().find(|t| t.0 == "embeddings.weight").unwrap();
    data[..4].copy_from_slice(&f32::NAN.to_le_bytes());
    let name = name.clone();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, shape, d)| {
            (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), d).unwrap())
        })
        .collect();
    safetensors::serialize_to_file(views, None, &weights).unwrap();
    let e = load_reference(&weights, None, &device).map(|_| ()).unwrap_err().to_string();
    assert!(e.contains(&name) && e.contains("NaN") && e.contains("earlier checkpoint"), "{e}");
    let _ = std::fs::remove_dir_all(dir);
}

/// A .ckpt whose pickle asks for `posix.system('touch <marker>')` under `state_dict` (what a
/// malicious checkpoint does to `torch.load` without `weights_only`) is refused with the file
/// named, and nothing runs: the reader is a pickle interpreter in Rust that builds tensors and
/// plain values only, never a Python callable.
#[test]
fn a_pickle_that_calls_code_is_refused_and_nothing_runs() {
    use std::io::Write;
    let dir = tempfile_dir("sof-model-evil");
    let marker = dir.join("pwned");
    let command = format!("touch {}", marker.display());
    // Protocol 2: {'state_dict': posix.system(command)}
    let mut pkl = vec![0x80, 0x02, b'}'];
    let string = |s: &str, out: &mut Vec<u8>| {
        out.push(b'X');
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    };
    string("state_dict", &mut pkl);
    pkl.extend_from_slice(b"cposix\nsystem\n");
    string(&command, &mut pkl);
    pkl.extend_from_slice(&[0x85, b'R', b's', b'.']);
    let ckpt = dir.join("evil.ckpt");
    let mut z = zip::ZipWriter::new(std::fs::File::create(&ckpt).unwrap());
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    z.start_file("archive/data.pkl", opts).unwrap();
    z.write_all(&pkl).unwrap();
    z.start_file("archive/version", opts).unwrap();
    z.write_all(b"3\n").unwrap();
    z.finish().unwrap();
    let e = sof_model::import::load_ckpt(&ckpt, None, &Device::flex()).map(|_| ()).unwrap_err().to_string();
    assert!(e.contains("evil.ckpt"), "{e}");
    assert!(!marker.exists(), "the pickle's command ran");
    let _ = std::fs::remove_dir_all(dir);
}

fn tempfile_dir(prefix: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
