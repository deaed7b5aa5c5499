//! The main job as one library call ([`demo`] -> [`DemoSummary`]): on the built-in synthetic
//! tissue (or a spatial .h5ad of your own) spatial targets per section, corpora over one
//! vocabulary, pretraining, embeddings with their joint UMAP view, probes beside the baselines with one section held out at
//! a time, and the dissociated sample mapped onto the sections. Every stage is a call of this
//! crate; `sof demo` adds the HTML report and prints the summary.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use burn::prelude::*;
use serde::{Deserialize, Serialize};
use sof_io::Column;
use sof_io::genes::Species;
use sof_io::h5ad::H5adReader;
use sof_pretrain::config::CorpusEntry;
use sof_pretrain::{Event, PretrainConfig, Trainer};
use sof_synth::{Generator, SynthConfig};
use sof_tasks::mapping::Mapper;
use sof_tokenize::Modality;

use crate::corpus::{TokenizeSpec, tokenize_source};
use crate::embed::{EmbedSpec, embed_h5ad};
use crate::error::{PipelineError, Result};
use crate::map::{MapSpec, map_h5ad};
use crate::probe::{ProbeProgress, ProbeSpec, ProbeTarget, probe_h5ad};
use crate::spatial::{Radius, SpatialSpec, spatial_h5ad};
use crate::view::{ViewInput, ViewSpec, ViewSummary, embedding_view};

/// What a long call tells its caller while it runs.
#[derive(Debug, Clone, Copy)]
pub enum Progress<'a> {
    /// A stage starts with this many units (cells, steps or folds).
    Begin { stage: &'a str, total: u64 },
    /// Units done since the last report.
    Advance(u64),
    /// A pretraining step.
    Step { step: u64, loss: f64, accuracy: f64, tokens_per_second: f64 },
    /// The stage ended.
    End,
    /// A line for the user: a warning, or what a stage found.
    Note(&'a str),
}

/// The pretraining objective of the demo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Objective {
    /// Masked tokens + the label-free niche profile (the default).
    #[default]
    Profile,
    /// Masked tokens + the annotation-based composition target with density (transductive:
    /// composition reads the cell types of every cell, held-out sections included).
    Composition,
    /// Masked tokens only.
    Plain,
}

/// A spatial .h5ad of your own instead of the synthetic tissue.
#[derive(Debug, Clone)]
pub struct OwnData {
    /// Raw counts in X, coordinates in obsm['spatial'], the three label columns below.
    pub path: PathBuf,
    /// obs column of cell types (neighbourhood composition is over these).
    pub cell_type_key: String,
    /// obs column of the tissue layer / region to predict.
    pub layer_key: String,
    /// obs column of sections (probes hold out one section at a time).
    pub section_key: String,
    /// Its technology; a name the reference lacks gets the free context id 20.
    pub technology: String,
    pub species: Species,
}

/// Settings of the demo.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// Folder for the data, results and summary.
    pub output: PathBuf,
    /// Total cells of the synthetic tissue.
    pub cells: usize,
    /// The same seed gives the same data and numbers.
    pub seed: u64,
    /// Pretraining steps (batch 16).
    pub steps: u64,
    /// Model size: tiny, small or base.
    pub preset: String,
    /// Positions per cell for the model.
    pub context_length: usize,
    pub objective: Objective,
    /// Pretraining's context dropout ([`sof_pretrain::masking::MaskingConfig::context_dropout`]).
    pub context_dropout: f64,
    /// Where the model runs.
    pub device: Device,
    /// Stop after the data stages (tissue, spatial targets, corpora).
    pub only_data: bool,
    pub data: Option<OwnData>,
}

impl DemoConfig {
    /// The demo's defaults: 20,000 synthetic cells, seed 0, 400 steps of the small model over
    /// 128 positions, the label-free objective.
    pub fn new(output: impl Into<PathBuf>, device: Device) -> Self {
        DemoConfig {
            output: output.into(),
            cells: 20_000,
            seed: 0,
            steps: 400,
            preset: "small".into(),
            context_length: 128,
            objective: Objective::Profile,
            context_dropout: 0.0,
            device,
            only_data: false,
            data: None,
        }
    }
}

/// One input file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileSummary {
    pub path: PathBuf,
    pub technology: String,
    pub cells: usize,
    pub genes: usize,
    pub median_counts: f64,
}

/// The spatial targets of one file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpatialSummary {
    pub file: String,
    pub radius: f64,
    pub mean_neighbors: f64,
    /// Adjusted Rand index of the k-means niches against the true niches (your own data: the
    /// layers).
    pub niche_ari: f64,
}

/// One corpus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CorpusSummary {
    pub corpus: String,
    pub cells: usize,
    pub median_tokens: f64,
}

/// Everything the demo measured (`summary.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DemoSummary {
    pub seed: u64,
    pub files: Vec<FileSummary>,
    /// Ground-truth label counts per file and column.
    pub labels: BTreeMap<String, BTreeMap<String, BTreeMap<String, usize>>>,
    pub spatial: Vec<SpatialSummary>,
    pub corpora: Vec<CorpusSummary>,
    pub pretrain: Option<sof_pretrain::Summary>,
    /// task -> features -> metric -> mean
    pub probes: BTreeMap<String, BTreeMap<String, BTreeMap<String, f64>>>,
    /// The dissociated sample placed on the spatial sections, scored against its true layers:
    /// `layer_accuracy` with its own context tokens, `layer_accuracy_as_reference` tokenized as
    /// the reference's cells (its panel's genes, its technology, spatial modality),
    /// `layer_accuracy_pca` the same mapper on PCA-50 of the `pca_shared_genes` both measure,
    /// `layer_accuracy_centered` / `layer_accuracy_pca_centered` both with each file centred on
    /// its own mean (`sof map --center-each`), `cells`.
    pub mapping: BTreeMap<String, f64>,
    /// Every sample in one UMAP, with the kNN purity of modality, technology and the labels.
    #[serde(default)]
    pub view: Option<ViewSummary>,
    /// The HTML report, when the caller wrote one.
    pub report: Option<String>,
    /// Wall-clock seconds per stage.
    pub seconds: BTreeMap<String, f64>,
}

/// Where the demo's results are, for a report.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoFiles {
    /// The pretraining run folder.
    pub run_dir: PathBuf,
    /// The embedded spatial sample the probes ran on.
    pub reference: PathBuf,
    /// `<task>.json` probe reports.
    pub probes_dir: PathBuf,
    /// The dissociated sample with its placement.
    pub mapped: Option<PathBuf>,
    /// Every sample joined, with its UMAPs ([`crate::view::embedding_view`]).
    pub view: PathBuf,
}

/// Runs the demo into `config.output`; `stop` set (e.g. by Ctrl-C) ends pretraining at a
/// checkpoint and the demo with an error. `files` is `None` with `only_data`.
pub fn demo(
    config: &DemoConfig,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<(DemoSummary, Option<DemoFiles>)> {
    let _writer = sof_io::OutputLock::acquire(&config.output)?;
    let start = Instant::now();
    let mut seconds = BTreeMap::new();
    let prepared = match &config.data {
        Some(data) => prepare_data(config, data, progress)?,
        None => prepare_synthetic(config, progress)?,
    };
    seconds.insert("data".to_owned(), start.elapsed().as_secs_f64());
    let mut summary = DemoSummary {
        seed: config.seed,
        files: prepared.files.clone(),
        labels: prepared.labels.clone(),
        spatial: prepared.spatial.clone(),
        corpora: prepared.corpora.clone(),
        pretrain: None,
        probes: BTreeMap::new(),
        mapping: BTreeMap::new(),
        view: None,
        report: None,
        seconds: BTreeMap::new(),
    };
    if config.only_data {
        summary.seconds = seconds;
        return Ok((summary, None));
    }
    let t = Instant::now();
    // Pretrain on every corpus (the run folder is rebuilt: the demo's outputs are its own).
    let run_dir = config.output.join("model_run");
    if run_dir.exists() {
        std::fs::remove_dir_all(&run_dir).map_err(|source| PipelineError::File { path: run_dir.clone(), source })?;
    }
    let pretrained = pretrain(config, &prepared, &run_dir, stop, progress)?;
    summary.pretrain = Some(pretrained);
    seconds.insert("pretrain".to_owned(), t.elapsed().as_secs_f64());

    // Embed every sample with the model.
    let t = Instant::now();
    let embedded_dir = config.output.join("embedded");
    create_dir(&embedded_dir)?;
    let embed = |input: &Path,
                 tech: &str,
                 modality: Modality,
                 panel: Option<&Path>,
                 out: &Path,
                 progress: &mut dyn FnMut(Progress<'_>)|
     -> Result<()> {
        let mut spec = EmbedSpec::new(run_dir.join("model"), input, out, config.device.clone());
        // The niche embedding where there are coordinates (a dissociated file has none).
        let reader = H5adReader::open(input)?;
        let has_xy = reader.obsm_keys().iter().any(|k| k == "spatial");
        spec.section_key = has_xy.then(|| prepared.section_key.clone());
        spec.niche = has_xy;
        spec.tokenizer.technology = Some(tech.to_owned());
        spec.tokenizer.species = Some(prepared.species);
        spec.tokenizer.modality = Some(modality);
        spec.tokenizer.vocab = Some(prepared.vocab_path.clone());
        spec.tokenizer.context_config = prepared.context_config.clone();
        spec.tokenizer.panel = panel.map(Path::to_path_buf);
        progress(Progress::Begin { stage: "embed", total: reader.n_obs() as u64 });
        drop(reader);
        embed_h5ad(&spec, &mut |k| progress(Progress::Advance(k as u64)))?;
        progress(Progress::End);
        Ok(())
    };
    let mut embedded = Vec::new();
    for (input, tech, modality) in &prepared.inputs {
        let out = embedded_dir.join(input.file_name().unwrap_or_default());
        embed(input, tech, *modality, None, &out, progress)?;
        embedded.push((out, *modality));
    }
    // The dissociated sample once more, tokenized as the reference's cells: over the genes of
    // its panel, behind its technology and modality tokens.
    let reference_input = prepared.inputs.iter().find(|i| i.2 == Modality::Spatial);
    let mut as_reference = None;
    if let (Some((panel, tech, _)), Some((input, _, _))) =
        (reference_input, prepared.inputs.iter().find(|i| i.2 == Modality::Dissociated))
    {
        let out = embedded_dir.join(format!("dissociated_as_{tech}.h5ad"));
        embed(input, tech, Modality::Spatial, Some(panel), &out, progress)?;
        as_reference = Some(out);
    }
    seconds.insert("embed".to_owned(), t.elapsed().as_secs_f64());

    // The first picture: every sample in one UMAP, and how mixed its batches are.
    let t = Instant::now();
    let view_path = config.output.join("view.h5ad");
    let inputs = embedded
        .iter()
        .zip(&prepared.inputs)
        .map(|((path, modality), (_, technology, _))| ViewInput {
            path: path.clone(),
            technology: technology.clone(),
            modality: *modality,
        })
        .collect();
    let spec = ViewSpec::new(inputs, &view_path, prepared.view_labels.clone(), config.seed);
    progress(Progress::Begin { stage: "embedding view", total: 8 });
    summary.view = Some(embedding_view(&spec, &mut |_| progress(Progress::Advance(1)))?);
    progress(Progress::End);
    seconds.insert("view".to_owned(), t.elapsed().as_secs_f64());

    // Probes on the spatial sample: leave one section out.
    let t = Instant::now();
    let reference = embedded
        .iter()
        .find(|e| e.1 == Modality::Spatial)
        .map(|e| e.0.clone())
        .ok_or_else(|| PipelineError::setting("the demo needs a spatial sample"))?;
    let probes_dir = config.output.join("probes");
    create_dir(&probes_dir)?;
    let mut tasks: Vec<(String, ProbeTarget)> = prepared
        .label_tasks
        .iter()
        .map(|(name, col)| {
            let target = ProbeTarget::Label {
                key: col.clone(),
                drop: Vec::new(),
                class_order: Vec::new(),
                class_balanced: false,
                ordered: false,
            };
            (name.clone(), target)
        })
        .collect();
    tasks.push(("density".into(), ProbeTarget::Obs("sof_density".into())));
    tasks.push(("composition".into(), ProbeTarget::Obsm { key: "sof_composition".into(), softmax_counts: None }));
    for (name, target) in tasks {
        let spec = ProbeSpec::new(&reference, target, &prepared.section_key);
        let stage = format!("probe {name}");
        let report = probe_h5ad(&spec, &mut |p| match p {
            ProbeProgress::Planned(n) => progress(Progress::Begin { stage: &stage, total: n }),
            ProbeProgress::Fold => progress(Progress::Advance(1)),
            ProbeProgress::Stage(_) => {}
        })?
        .report;
        progress(Progress::End);
        let json = serde_json::to_string_pretty(&report).expect("a probe report serializes");
        crate::write_atomic(&probes_dir.join(format!("{name}.json")), &json)?;
        let per = report.results.into_iter().map(|r| (r.features, r.mean)).collect();
        summary.probes.insert(name, per);
    }
    seconds.insert("probes".to_owned(), t.elapsed().as_secs_f64());

    // Place the dissociated sample on the spatial sections.
    let t = Instant::now();
    let mapped = config.output.join("dissociated_mapped.h5ad");
    let query = embedded.iter().find(|e| e.1 == Modality::Dissociated).map(|e| e.0.clone());
    if let Some(query) = &query {
        // With the baseline: the same mapper on PCA-50 of the genes both samples measure.
        let spec = MapSpec { pca_baseline: true, ..MapSpec::new(&reference, query, "layer", &mapped) };
        let out = map_h5ad(&spec)?;
        if let Some(score) = out.scores.iter().find(|s| s.mapper == Mapper::Ours && s.column == "layer") {
            summary.mapping.insert("layer_accuracy".to_owned(), score.metrics[0].1);
            summary.mapping.insert("cells".to_owned(), score.cells as f64);
        }
        if let Some(score) = out.scores.iter().find(|s| s.mapper == Mapper::Pca50 && s.column == "layer") {
            summary.mapping.insert("layer_accuracy_pca".to_owned(), score.metrics[0].1);
        }
        if let Some(n) = out.pca_shared_genes {
            summary.mapping.insert("pca_shared_genes".to_owned(), n as f64);
        }
        // Each file centred on its own mean: the technology's shift goes, for both mappers.
        let mut spec = MapSpec {
            pca_baseline: true,
            ..MapSpec::new(&reference, query, "layer", config.output.join("dissociated_mapped_centered.h5ad"))
        };
        spec.config.center_each = true;
        let out = map_h5ad(&spec)?;
        for (mapper, key) in [(Mapper::Ours, "layer_accuracy_centered"), (Mapper::Pca50, "layer_accuracy_pca_centered")]
        {
            if let Some(score) = out.scores.iter().find(|s| s.mapper == mapper && s.column == "layer") {
                summary.mapping.insert(key.to_owned(), score.metrics[0].1);
            }
        }
        if let Some(query) = &as_reference {
            let out_path = config.output.join("dissociated_mapped_as_reference.h5ad");
            let out = map_h5ad(&MapSpec::new(&reference, query, "layer", &out_path))?;
            if let Some(score) = out.scores.iter().find(|s| s.mapper == Mapper::Ours && s.column == "layer") {
                summary.mapping.insert("layer_accuracy_as_reference".to_owned(), score.metrics[0].1);
            }
        }
        seconds.insert("map".to_owned(), t.elapsed().as_secs_f64());
    }
    summary.seconds = seconds;
    let files = DemoFiles { run_dir, reference, probes_dir, mapped: query.map(|_| mapped), view: view_path };
    Ok((summary, Some(files)))
}

fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| PipelineError::File { path: dir.to_path_buf(), source })
}

/// Pretraining on every corpus with the demo's settings.
fn pretrain(
    config: &DemoConfig,
    prepared: &Prepared,
    run_dir: &Path,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<sof_pretrain::Summary> {
    let mut cfg = PretrainConfig {
        corpora: prepared.corpora.iter().map(|c| CorpusEntry { path: PathBuf::from(&c.corpus), weight: 1.0 }).collect(),
        preset: config.preset.clone(),
        vocab: Some(prepared.vocab_path.clone()),
        context_length: Some(config.context_length),
        batch_size: 16,
        seed: config.seed,
        steps: config.steps,
        ..PretrainConfig::default()
    };
    cfg.optimizer.learning_rate = 2e-3;
    cfg.masking.context_dropout = config.context_dropout;
    match config.objective {
        Objective::Profile => {}
        Objective::Composition => {
            cfg.niche.composition_weight = 1.0;
            cfg.niche.density_weight = 1.0;
            cfg.niche.profile_weight = 0.0;
        }
        Objective::Plain => cfg.niche.profile_weight = 0.0,
    }
    let trainer = Trainer::new(cfg.clone(), run_dir, vec![config.device.clone().autodiff(); cfg.replicas])?;
    progress(Progress::Begin { stage: "pretrain", total: cfg.steps });
    let summary = trainer.run(false, "sof demo", stop, &mut |e| match e {
        Event::Step { step, loss, accuracy, tokens_per_second, .. } => {
            progress(Progress::Step { step, loss, accuracy, tokens_per_second });
        }
        Event::Started { .. } => {}
        Event::Checkpoint { step, path } => tracing::info!(step, path = %path.display(), "checkpoint"),
    })?;
    progress(Progress::End);
    if summary.interrupted {
        return Err(PipelineError::setting(format!(
            "interrupted at step {} of {}: rerun the demo",
            summary.steps_done, cfg.steps
        )));
    }
    Ok(summary)
}

/// What the data stages hand to the model stages.
#[derive(Debug, Clone)]
struct Prepared {
    files: Vec<FileSummary>,
    labels: BTreeMap<String, BTreeMap<String, BTreeMap<String, usize>>>,
    spatial: Vec<SpatialSummary>,
    /// (file, technology, modality) to embed
    inputs: Vec<(PathBuf, String, Modality)>,
    vocab_path: PathBuf,
    corpora: Vec<CorpusSummary>,
    context_config: Option<PathBuf>,
    species: Species,
    section_key: String,
    /// (probe name, obs column) of the label probes
    label_tasks: Vec<(String, String)>,
    /// obs columns the embedding view is coloured by
    view_labels: Vec<String>,
}

/// Median of a slice (0 for an empty one, not NaN: a file summary of no cells).
fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() { 0.0 } else { sof_tasks::metrics::median(values) }
}

/// Generates the synthetic tissue of `cfg` into `dir` (one .h5ad per sample), a summary per
/// file; `progress` is told the cells written.
pub fn write_tissue(cfg: SynthConfig, dir: &Path, progress: &mut dyn FnMut(u64)) -> Result<Vec<FileSummary>> {
    let _writer = sof_io::OutputLock::acquire(dir)?;
    let generator = Generator::new(cfg)?;
    let mut totals: Vec<Vec<f64>> = Vec::new();
    let paths = generator.write_all(dir, |i, block| {
        progress(block.truth.len() as u64);
        totals.resize_with(totals.len().max(i + 1), Vec::new);
        totals[i].extend(block.x.row_sums());
    })?;
    let mut out = Vec::new();
    for ((path, (_, samples)), mut t) in paths.into_iter().zip(generator.outputs()).zip(totals) {
        let tech = generator.tech_of(samples[0]);
        let genes = generator.panel_names(&tech.name).map_or(0, |p| p.len());
        out.push(FileSummary {
            technology: tech.name.clone(),
            cells: t.len(),
            genes,
            median_counts: median(&mut t),
            path,
        });
    }
    Ok(out)
}

/// Codes of a categorical column (empty for any other).
fn codes(col: Option<&Column>) -> Vec<u32> {
    match col {
        Some(Column::Categorical { codes, .. }) => codes.iter().map(|&c| c as u32).collect(),
        _ => Vec::new(),
    }
}

/// Codes of any label column (categorical or strings), missing values as one more code.
fn label_codes(col: Option<&Column>) -> Vec<u32> {
    let Some(col) = col else { return Vec::new() };
    let labels = col.labels();
    let mut names: Vec<&Option<String>> = labels.iter().collect();
    names.sort();
    names.dedup();
    labels.iter().map(|l| names.binary_search(&l).unwrap_or(0) as u32).collect()
}

fn read_uns_f64(path: &Path, key: &str) -> Result<f64> {
    sof_io::h5ad::read_uns_f64(path, key)?
        .ok_or_else(|| PipelineError::input(path.display(), format!("uns/{key} is missing")))
}

/// Tokenizes one file into `corpus` and summarizes it.
fn corpus(input: &Path, spec: &TokenizeSpec, progress: &mut dyn FnMut(Progress<'_>)) -> Result<CorpusSummary> {
    let reader = H5adReader::open(input)?;
    progress(Progress::Begin { stage: "tokenize", total: reader.n_obs() as u64 });
    let out = tokenize_source(&reader, spec, &mut |n| progress(Progress::Advance(n as u64)))?;
    progress(Progress::End);
    for w in &out.warnings {
        progress(Progress::Note(&format!("warning: {w}")));
    }
    Ok(CorpusSummary {
        corpus: spec.output.display().to_string(),
        cells: out.manifest.cells_written,
        median_tokens: out.manifest.median_tokens,
    })
}

/// The synthetic tissue: generate, spatial targets (niches scored against the truth), corpora.
fn prepare_synthetic(config: &DemoConfig, progress: &mut dyn FnMut(Progress<'_>)) -> Result<Prepared> {
    let data_dir = config.output.join("data");
    let mut cfg = SynthConfig { seed: config.seed, ..SynthConfig::default() };
    cfg.set_total_cells(config.cells);
    let total = cfg.cells_per_section * cfg.sections + cfg.dissociated_cells;
    progress(Progress::Begin { stage: "synthesize", total: total as u64 });
    let files = write_tissue(cfg, &data_dir, &mut |n| progress(Progress::Advance(n)))?;
    progress(Progress::End);
    let mut labels = BTreeMap::new();
    for f in &files {
        let a = sof_io::h5ad::read_h5ad(&f.path)?;
        let mut cols = BTreeMap::new();
        for c in ["layer", "niche", "cell_type"] {
            if let Some(col) = a.obs.get(c) {
                cols.insert(c.to_owned(), col.value_counts());
            }
        }
        labels.insert(f.path.file_name().unwrap_or_default().to_string_lossy().into_owned(), cols);
    }

    // Spatial targets per spatial file, niches scored against the truth.
    let mut spatial_out = Vec::new();
    let mut inputs = Vec::new();
    for f in &files {
        if f.technology == "dissociated" {
            inputs.push((f.path.clone(), f.technology.clone(), Modality::Dissociated));
            continue;
        }
        let out =
            config.output.join(format!("{}_targets.h5ad", f.path.file_stem().unwrap_or_default().to_string_lossy()));
        let n_true = H5adReader::open(&f.path)?.obs()?.get("niche").map_or(6, |c| c.value_counts().len());
        let spec = SpatialSpec {
            cell_type_key: Some("cell_type".into()),
            section_key: Some("section".into()),
            radius: Radius::MeanNeighbours(20.0),
            niches: Some(n_true),
            seed: config.seed,
            ..SpatialSpec::new(&f.path, &out)
        };
        spatial_h5ad(&spec)?;
        let obs = H5adReader::open(&out)?.obs()?;
        let ari = sof_tasks::metrics::adjusted_rand_index(&codes(obs.get("niche")), &codes(obs.get("sof_niche")));
        let dens = obs.get("sof_density").and_then(Column::as_f64).unwrap_or_default();
        spatial_out.push(SpatialSummary {
            file: out.display().to_string(),
            radius: read_uns_f64(&out, "sof_radius")?,
            mean_neighbors: dens.iter().sum::<f64>() / dens.len().max(1) as f64,
            niche_ari: ari,
        });
        inputs.push((out, f.technology.clone(), Modality::Spatial));
    }

    // One vocabulary for every sample: the dissociated sample measures every gene.
    let vocab_path = config.output.join("vocab.tsv");
    let all_genes =
        H5adReader::open(files.iter().find(|f| f.technology == "dissociated").map_or(&files[0].path, |f| &f.path))?
            .var()?
            .index;
    let vocab = sof_io::genes::Vocabulary::new(all_genes)
        .map_err(|e| PipelineError::setting(format!("synthetic genes: {e}")))?;
    crate::write_atomic(&vocab_path, &vocab.to_tsv())?;
    let mut corpora = Vec::new();
    for (input, tech, modality) in &inputs {
        let spec = TokenizeSpec {
            vocab: Some(vocab_path.clone()),
            keep_obs: vec!["cell_type".into(), "layer".into(), "niche".into()],
            section_key: Some("section".into()),
            ..TokenizeSpec::new(
                config.output.join("corpus").join(tech),
                &format!("synthetic_{tech}"),
                tech,
                Species::Mouse,
                *modality,
            )
        };
        corpora.push(corpus(input, &spec, progress)?);
    }

    Ok(Prepared {
        files,
        labels,
        spatial: spatial_out,
        inputs,
        vocab_path,
        corpora,
        context_config: None,
        species: Species::Mouse,
        section_key: "section".into(),
        label_tasks: vec![("layer".into(), "layer".into()), ("niche".into(), "niche".into())],
        view_labels: vec!["layer".into(), "cell_type".into(), "niche".into()],
    })
}

/// Your own spatial file: spatial targets, its own genes as the vocabulary, one corpus.
fn prepare_data(config: &DemoConfig, data: &OwnData, progress: &mut dyn FnMut(Progress<'_>)) -> Result<Prepared> {
    let path = &data.path;
    let reader = H5adReader::open(path)?;
    let obs = reader.obs()?;
    for key in [&data.cell_type_key, &data.layer_key, &data.section_key] {
        if obs.get(key).is_none() {
            return Err(PipelineError::input(
                path.display(),
                format!(
                    "obs has no column '{key}' (it has: {}); pass --cell-type-key, --layer-key and --section-key",
                    obs.column_names().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
    }
    create_dir(&config.output)?;
    let x = reader.read_rows(0..reader.n_obs())?;
    let mut totals = x.row_sums();
    let files = vec![FileSummary {
        path: path.clone(),
        technology: data.technology.clone(),
        cells: reader.n_obs(),
        genes: x.n_cols(),
        median_counts: median(&mut totals),
    }];
    let mut cols = BTreeMap::new();
    for c in [&data.layer_key, &data.cell_type_key] {
        cols.insert(c.clone(), obs.get(c).map(Column::value_counts).unwrap_or_default());
    }
    let mut labels = BTreeMap::new();
    labels.insert(path.file_name().unwrap_or_default().to_string_lossy().into_owned(), cols);

    let stem = path.file_stem().unwrap_or_default().to_string_lossy().into_owned();
    let targets = config.output.join(format!("{stem}_targets.h5ad"));
    let spec = SpatialSpec {
        cell_type_key: Some(data.cell_type_key.clone()),
        section_key: Some(data.section_key.clone()),
        radius: Radius::MeanNeighbours(20.0),
        niches: Some(6),
        seed: config.seed,
        ..SpatialSpec::new(path, &targets)
    };
    spatial_h5ad(&spec)?;
    let tobs = H5adReader::open(&targets)?.obs()?;
    let dens = tobs.get("sof_density").and_then(Column::as_f64).unwrap_or_default();
    // No true niches in real data: the ARI here compares the k-means niches with the layers.
    let spatial_out = vec![SpatialSummary {
        file: targets.display().to_string(),
        radius: read_uns_f64(&targets, "sof_radius")?,
        mean_neighbors: dens.iter().sum::<f64>() / dens.len().max(1) as f64,
        niche_ari: sof_tasks::metrics::adjusted_rand_index(
            &label_codes(tobs.get(&data.layer_key)),
            &codes(tobs.get("sof_niche")),
        ),
    }];

    let vocab_path = config.output.join("vocab.tsv");
    let vocab = sof_io::genes::Vocabulary::new(reader.var()?.index)
        .map_err(|e| PipelineError::input(path.display(), e.to_string()))?;
    crate::write_atomic(&vocab_path, &vocab.to_tsv())?;
    let context_config = if sof_tokenize::ContextTable::default().get(&data.technology).is_ok() {
        None
    } else {
        let p = config.output.join("technologies.toml");
        crate::write_atomic(
            &p,
            &format!("[technology.{}]\ntoken = 20\nmeans = \"{}\"\n", data.technology, data.technology),
        )?;
        Some(p)
    };
    let spec = TokenizeSpec {
        vocab: Some(vocab_path.clone()),
        keep_obs: vec![data.cell_type_key.clone(), data.layer_key.clone()],
        section_key: Some(data.section_key.clone()),
        context_config: context_config.clone(),
        ..TokenizeSpec::new(
            config.output.join("corpus").join(&stem),
            &stem,
            &data.technology,
            data.species,
            Modality::Spatial,
        )
    };
    let corpora = vec![corpus(&targets, &spec, progress)?];
    Ok(Prepared {
        files,
        labels,
        spatial: spatial_out,
        inputs: vec![(targets, data.technology.clone(), Modality::Spatial)],
        vocab_path,
        corpora,
        context_config,
        species: data.species,
        section_key: data.section_key.clone(),
        label_tasks: vec![("layer".into(), data.layer_key.clone()), ("cell_type".into(), data.cell_type_key.clone())],
        view_labels: vec![data.layer_key.clone(), data.cell_type_key.clone()],
    })
}
