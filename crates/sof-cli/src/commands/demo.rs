//! `sof demo`: the main job on the built-in synthetic tissue.
//!
//! Stages: synthesize the tissue (spatial sections + a dissociated sample, ground truth for every
//! cell) -> spatial targets per section (composition, density, k-means niches, scored against
//! the true niches) -> tokenize every sample into Parquet corpora over one shared vocabulary ->
//! pretrain (masked tokens + the niche-aware objective) -> embed every sample -> probes for
//! layer, niche, density and composition beside the PCA baseline (leave-one-section-out) -> map
//! the dissociated sample onto the spatial sections -> an HTML report.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;
use sof_io::Column;

use super::inspect::SpeciesArg;
use super::synth::{self, FileSummary};
use super::{embed, map, pretrain, probe, report, spatial, tokenize};
use crate::device::DeviceArg;
use crate::util;

/// Run the whole pipeline on a built-in synthetic tissue (no data needed), or on your own
/// spatial .h5ad with --data: spatial targets, tokens, pretraining, embeddings, probes beside
/// PCA, mapping of the dissociated sample (synthetic only) and an HTML report (report/index.html).
///
/// Example: sof demo --output demo-out/
///          sof demo --data starmap_mpfc.h5ad --cell-type-key cell_type --layer-key layer
///          --section-key section --technology starmap --output demo-starmap/
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Output folder for the data, results and summary.
    #[arg(short, long, default_value = "sof-demo")]
    pub output: PathBuf,
    /// Total cells in the synthetic tissue.
    #[arg(long, default_value_t = 20_000)]
    pub cells: usize,
    /// Random seed: the same seed gives the same data and numbers.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Pretraining steps (batch 16).
    #[arg(long, default_value_t = 400)]
    pub steps: u64,
    /// Model size: tiny, small or base.
    #[arg(long, default_value = "small")]
    pub preset: String,
    /// Positions per cell for the model (the synthetic cells are short).
    #[arg(long, default_value_t = 128)]
    pub context_length: usize,
    /// Leave out the niche-aware objectives (plain masked-token pretraining).
    #[arg(long)]
    pub no_niche: bool,
    /// Pretrain on the annotation-based composition target (with density) instead of the
    /// label-free niche profile (transductive: composition reads the cell types of every cell,
    /// held-out sections included; the demo's default before the profile existed).
    #[arg(long, conflicts_with = "no_niche")]
    pub composition_objective: bool,
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceArg,
    /// Stop after the data stages (tissue, spatial targets, corpora).
    #[arg(long)]
    pub only_data: bool,
    /// Your own spatial .h5ad instead of the synthetic tissue (raw counts in X, coordinates in
    /// obsm['spatial'], the three label columns below).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// With --data: obs column of cell types (neighbourhood composition is over these).
    #[arg(long, default_value = "cell_type")]
    pub cell_type_key: String,
    /// With --data: obs column of the tissue layer / region to predict.
    #[arg(long, default_value = "layer")]
    pub layer_key: String,
    /// With --data: obs column of sections (probes hold out one section at a time).
    #[arg(long, default_value = "section")]
    pub section_key: String,
    /// With --data: its technology; a name the reference lacks gets the free context id 20.
    #[arg(long, default_value = "merfish")]
    pub technology: String,
    /// With --data: species of its gene names.
    #[arg(long, value_enum, default_value = "mouse")]
    pub species: SpeciesArg,
}

#[derive(Debug, Serialize)]
struct SpatialSummary {
    file: String,
    radius: f64,
    mean_neighbors: f64,
    /// Adjusted Rand index of the k-means niches against the true niches.
    niche_ari: f64,
}

#[derive(Debug, Serialize)]
struct CorpusSummary {
    corpus: String,
    cells: usize,
    median_tokens: f64,
}

#[derive(Debug, Serialize)]
struct Summary {
    seed: u64,
    files: Vec<FileSummary>,
    /// Ground-truth label counts per file and column.
    labels: BTreeMap<String, BTreeMap<String, BTreeMap<String, usize>>>,
    spatial: Vec<SpatialSummary>,
    corpora: Vec<CorpusSummary>,
    pretrain: Option<serde_json::Value>,
    /// task -> features -> metric -> mean
    probes: BTreeMap<String, BTreeMap<String, BTreeMap<String, f64>>>,
    /// The dissociated sample placed on the spatial sections, scored against its true layers.
    mapping: BTreeMap<String, f64>,
    report: Option<String>,
    /// Wall-clock seconds per stage.
    seconds: BTreeMap<String, f64>,
}

fn codes(col: Option<&Column>) -> Vec<u32> {
    match col {
        Some(Column::Categorical { codes, .. }) => codes.iter().map(|&c| c as u32).collect(),
        _ => Vec::new(),
    }
}

pub fn run(args: Args, quiet: bool) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut timings = BTreeMap::new();
    let data_dir = args.output.join("data");
    let prepared = match &args.data {
        Some(data) => prepare_data(&args, data, quiet)?,
        None => prepare_synthetic(&args, &data_dir, quiet)?,
    };
    let Prepared {
        files,
        labels,
        spatial: spatial_out,
        inputs: embed_inputs,
        vocab_path,
        corpora,
        context_config,
        species,
        section_key,
        label_tasks,
    } = prepared;
    timings.insert("data".to_owned(), start.elapsed().as_secs_f64());
    let (mut pretrain_summary, mut probes, mut mapping, mut report_path) =
        (None, BTreeMap::new(), BTreeMap::new(), None);
    if !args.only_data {
        let t = Instant::now();
        // Pretrain on every corpus (the run folder is rebuilt: the demo's outputs are its own).
        let run_dir = args.output.join("model_run");
        if run_dir.exists() {
            std::fs::remove_dir_all(&run_dir)?;
        }
        let corpus_dirs: Vec<PathBuf> = corpora.iter().map(|c| PathBuf::from(&c.corpus)).collect();
        pretrain::run(
            pretrain::Args {
                config: None,
                preset: Some(args.preset.clone()),
                corpora: corpus_dirs,
                weights: Vec::new(),
                output: run_dir.clone(),
                steps: Some(args.steps),
                batch_size: Some(16),
                accumulation: None,
                lr: Some(2e-3),
                seed: Some(args.seed),
                context_length: Some(args.context_length),
                init_from: None,
                norm_first: false,
                warmup_steps: None,
                vocab: Some(vocab_path.clone()),
                niche: args.composition_objective,
                no_profile: args.no_niche || args.composition_objective,
                density: false,
                device: args.device,
                replicas: None,
                resume: false,
            },
            quiet,
        )?;
        pretrain_summary =
            Some(serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(run_dir.join("summary.json"))?)?);
        timings.insert("pretrain".to_owned(), t.elapsed().as_secs_f64());
        let t = Instant::now();

        // Embed every sample with the model.
        let embedded_dir = args.output.join("embedded");
        std::fs::create_dir_all(&embedded_dir)?;
        let mut embedded = Vec::new();
        for (input, tech, modality) in &embed_inputs {
            let out = embedded_dir.join(input.file_name().unwrap_or_default());
            embed::run(
                embed::Args {
                    checkpoint: run_dir.join("model"),
                    model_config: None,
                    input: input.clone(),
                    output: out.clone(),
                    device: args.device,
                    batch_size: 256,
                    pooling: embed::PoolingArg::PadExcluded,
                    niche_k: None,
                    section_key: (*modality == "spatial").then(|| section_key.clone()),
                    no_niche: false,
                    tokenizer: embed::TokenizerArgs {
                        technology: Some(tech.clone()),
                        species: Some(species),
                        modality: Some((*modality).to_owned()),
                        vocab: Some(vocab_path.clone()),
                        genes_dir: None,
                        tech_means: None,
                        mode: None,
                        context_config: context_config.clone(),
                    },
                },
                quiet,
            )?;
            embedded.push((out, tech.clone(), *modality));
        }

        timings.insert("embed".to_owned(), t.elapsed().as_secs_f64());
        let t = Instant::now();
        // Probes on the spatial sample with two sections: leave one section out.
        let reference = embedded.iter().find(|e| e.2 == "spatial").map(|e| e.0.clone()).context("no spatial sample")?;
        let probes_dir = args.output.join("probes");
        std::fs::create_dir_all(&probes_dir)?;
        // (probe name, --label, --target, --target-obsm)
        type ProbeTask = (String, Option<String>, Option<String>, Option<String>);
        let mut tasks: Vec<ProbeTask> =
            label_tasks.iter().map(|(name, col)| (name.clone(), Some(col.clone()), None, None)).collect();
        tasks.push(("density".into(), None, Some("sof_density".into()), None));
        tasks.push(("composition".into(), None, None, Some("sof_composition".into())));
        for (name, label, target, target_obsm) in tasks {
            let out = probes_dir.join(format!("{name}.json"));
            probe::run(probe::Args {
                input: reference.clone(),
                label,
                target,
                target_obsm,
                softmax_counts: None,
                embedding: "X_sof".into(),
                split_key: Some(section_key.clone()),
                section_key: None,
                no_neighbourhood_baselines: false,
                spatial_blocks: None,
                random_folds: false,
                folds: 5,
                seeds: 1,
                drop: Vec::new(),
                where_: Vec::new(),
                class_balanced: false,
                head: vec![probe::Head::Linear],
                ordered: false,
                class_order: Vec::new(),
                plots: None,
                finetune: None,
                tokenizer: embed::TokenizerArgs::default(),
                finetune_epochs: 0,
                finetune_batch_size: 32,
                encoder_lr: 0.0,
                head_lr: 0.0,
                device: args.device,
                output: out.clone(),
            })?;
            let report: sof_tasks::probe::ProbeReport = serde_json::from_str(&std::fs::read_to_string(&out)?)?;
            let per = report.results.into_iter().map(|r| (r.features, r.mean)).collect();
            probes.insert(name, per);
        }

        timings.insert("probes".to_owned(), t.elapsed().as_secs_f64());
        let t = Instant::now();
        // Place the dissociated sample on the spatial sections.
        let mapped = args.output.join("dissociated_mapped.h5ad");
        if let Some(query) = embedded.iter().find(|e| e.2 == "dissociated").map(|e| e.0.clone()) {
            map::run(map::Args {
                reference: reference.clone(),
                query,
                label: "layer".into(),
                embedding: "X_sof".into(),
                spatial_key: "spatial".into(),
                k: 30,
                temperature: 0.05,
                reference_where: Vec::new(),
                query_where: Vec::new(),
                transfer: Vec::new(),
                pca_baseline: false,
                head: map::MapHead::Knn,
                seed: 0,
                report: None,
                output: mapped.clone(),
            })?;
            let m = sof_io::h5ad::H5adReader::open(&mapped)?;
            let obs = m.obs()?;
            if let (Some(t), Some(p)) = (obs.get("layer"), obs.get("sof_layer")) {
                let (t, p) = (t.labels(), p.labels());
                let pairs: Vec<(String, String)> = t.into_iter().zip(p).filter_map(|(a, b)| Some((a?, b?))).collect();
                let hits = pairs.iter().filter(|(a, b)| a == b).count();
                mapping.insert("layer_accuracy".to_owned(), hits as f64 / pairs.len().max(1) as f64);
                mapping.insert("cells".to_owned(), pairs.len() as f64);
            }
        }

        // The report.
        report_path = Some(report::write(&report::Inputs {
            dir: args.output.join("report"),
            run_dir: run_dir.clone(),
            reference: reference.clone(),
            probes_dir: probes_dir.clone(),
            mapped: mapped.exists().then(|| mapped.clone()),
            intro: match &args.data {
                Some(d) => format!(
                    "{}: the model was pretrained on this file alone, then frozen; probes read {}, {}, density and neighbourhood composition from its cell embeddings with one section held out at a time, beside PCA of the expression on the same folds.",
                    d.display(),
                    args.layer_key,
                    args.cell_type_key
                ),
                None => "A synthetic layered tissue with known ground truth: two MERFISH-like sections, one Xenium-like section and a dissociated sample. The model was pretrained on all of them, then frozen; probes read layer, niche, density and neighbourhood composition from its cell embeddings on held-out sections, beside PCA of the expression on the same folds.".into(),
            },
        })?);
        timings.insert("map and report".to_owned(), t.elapsed().as_secs_f64());
    }

    let summary = Summary {
        seed: args.seed,
        files,
        labels,
        spatial: spatial_out,
        corpora,
        pretrain: pretrain_summary,
        probes,
        mapping,
        report: report_path.map(|p| p.display().to_string()),
        seconds: timings,
    };
    let path = args.output.join("summary.json");
    util::write_atomic(&path, &serde_json::to_string_pretty(&summary)?)?;

    util::say("");
    util::say(match &args.data {
        Some(d) => format!("SpatialOmics-Foundation demo on {}", d.display()),
        None => "SpatialOmics-Foundation demo: synthetic tissue with known ground truth".to_owned(),
    });
    let (units, truth) = if args.data.is_some() { ("coordinate units", "layers") } else { ("um", "true niches") };
    for f in &summary.files {
        util::say(format!(
            "  {:<12} {:>8} cells x {:>5} genes, median {:>6.0} counts/cell  -> {}",
            f.technology,
            f.cells,
            f.genes,
            f.median_counts,
            f.path.display()
        ));
    }
    for sp in &summary.spatial {
        util::say(format!(
            "  spatial targets: radius {:.1} {units} ({:.1} neighbours/cell); k-means niches vs {truth}: ARI {:.3}  -> {}",
            sp.radius, sp.mean_neighbors, sp.niche_ari, sp.file
        ));
    }
    for c in &summary.corpora {
        util::say(format!(
            "  corpus: {:>8} cells, median {:>5} tokens/cell  -> {}",
            c.cells, c.median_tokens, c.corpus
        ));
    }
    util::say(format!("  summary: {}  ({:.1} s)", path.display(), start.elapsed().as_secs_f64()));
    if let Some(p) = &summary.pretrain {
        util::say(format!(
            "  pretraining: validation loss {:.3} vs unigram {:.3}; accuracy {:.1}% vs most frequent token {:.1}%",
            p["final_validation_loss"].as_f64().unwrap_or(f64::NAN),
            p["baselines"]["unigram_loss"].as_f64().unwrap_or(f64::NAN),
            100.0 * p["final_validation_accuracy"].as_f64().unwrap_or(f64::NAN),
            100.0 * p["baselines"]["most_frequent_accuracy"].as_f64().unwrap_or(f64::NAN),
        ));
    }
    for (task, per) in &summary.probes {
        let metric = if per.values().any(|m| m.contains_key("macro_f1")) { "macro_f1" } else { "r2" };
        let get = |f: &str| per.iter().find(|(k, _)| k.starts_with(f)).and_then(|(_, m)| m.get(metric)).copied();
        util::say(format!(
            "  probe {task:<12} {metric}: embedding {:.3} | niche embedding {:.3} | PCA-50 {:.3} | PCA-best {:.3} | NichePCA {:.3} | BANKSY {:.3}",
            get("embedding").unwrap_or(f64::NAN),
            get("niche").unwrap_or(f64::NAN),
            get("PCA-50").unwrap_or(f64::NAN),
            get("PCA-best").unwrap_or(f64::NAN),
            get("NichePCA").unwrap_or(f64::NAN),
            get("BANKSY").unwrap_or(f64::NAN)
        ));
    }
    if let Some(a) = summary.mapping.get("layer_accuracy") {
        util::say(format!(
            "  dissociated cells placed on the sections: layer accuracy {a:.3} against their true layers"
        ));
    }
    if let Some(r) = &summary.report {
        util::say(format!("  report: {r}"));
    }
    Ok(())
}

/// What the data stages hand to the model stages.
struct Prepared {
    files: Vec<FileSummary>,
    labels: BTreeMap<String, BTreeMap<String, BTreeMap<String, usize>>>,
    spatial: Vec<SpatialSummary>,
    /// (file, technology, modality) to embed
    inputs: Vec<(PathBuf, String, &'static str)>,
    vocab_path: PathBuf,
    corpora: Vec<CorpusSummary>,
    context_config: Option<PathBuf>,
    species: SpeciesArg,
    section_key: String,
    /// (probe name, obs column) of the label probes
    label_tasks: Vec<(String, String)>,
}

/// The synthetic tissue: generate, spatial targets (niches scored against the truth), corpora.
fn prepare_synthetic(args: &Args, data_dir: &std::path::Path, quiet: bool) -> anyhow::Result<Prepared> {
    let data_dir = data_dir.to_path_buf();
    let files = synth::generate(
        &synth::Args {
            output: data_dir.clone(),
            cells: args.cells,
            seed: args.seed,
            sections: None,
            dissociated_cells: None,
            config: None,
        },
        quiet,
    )?;
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
            inputs.push((f.path.clone(), f.technology.clone(), "dissociated"));
            continue;
        }
        let out =
            args.output.join(format!("{}_targets.h5ad", f.path.file_stem().unwrap_or_default().to_string_lossy()));
        let n_true = sof_io::h5ad::H5adReader::open(&f.path)?.obs()?.get("niche").map_or(6, |c| c.value_counts().len());
        spatial::run(spatial::Args {
            input: f.path.clone(),
            cell_type_key: Some("cell_type".into()),
            section_key: Some("section".into()),
            radius: None,
            mean_neighbors: Some(20.0),
            niches: Some(n_true),
            profile_components: sof_tasks::neighbourhood::PROFILE_COMPONENTS,
            profile_scales: sof_tasks::neighbourhood::PROFILE_SCALES.to_vec(),
            seed: args.seed,
            write_graph: false,
            depth_from: None,
            depth_order: Vec::new(),
            output: out.clone(),
        })?;
        let a = sof_io::h5ad::H5adReader::open(&out)?;
        let obs = a.obs()?;
        let ari = sof_tasks::metrics::adjusted_rand_index(&codes(obs.get("niche")), &codes(obs.get("sof_niche")));
        let dens = obs.get("sof_density").and_then(Column::as_f64).unwrap_or_default();
        spatial_out.push(SpatialSummary {
            file: out.display().to_string(),
            radius: read_uns_f64(&out, "sof_radius")?,
            mean_neighbors: dens.iter().sum::<f64>() / dens.len().max(1) as f64,
            niche_ari: ari,
        });
        inputs.push((out, f.technology.clone(), "spatial"));
    }

    // One vocabulary for every sample: the dissociated sample measures every gene.
    let vocab_path = args.output.join("vocab.tsv");
    let all_genes = sof_io::h5ad::H5adReader::open(
        files.iter().find(|f| f.technology == "dissociated").map_or(&files[0].path, |f| &f.path),
    )?
    .var()?
    .index;
    let vocab = sof_io::genes::Vocabulary::new(all_genes).map_err(|e| anyhow::anyhow!("synthetic genes: {e}"))?;
    util::write_atomic(&vocab_path, &vocab.to_tsv())?;
    let mut corpora = Vec::new();
    let all_inputs = inputs.clone();
    for (input, tech, modality) in inputs {
        let out = args.output.join("corpus").join(&tech);
        tokenize::run(
            tokenize::Args {
                input,
                tables: Default::default(),
                technology: tech.clone(),
                species: SpeciesArg::Mouse,
                modality: modality.into(),
                vocab: Some(vocab_path.clone()),
                genes_dir: None,
                tech_means: None,
                mode: tokenize::ModeArg::Fixed,
                keep_obs: vec!["cell_type".into(), "layer".into(), "niche".into()],
                section_key: Some("section".into()),
                no_niche_profile: false,
                dataset: Some(format!("synthetic_{tech}")),
                context_config: None,
                context_length: 1500,
                shard_cells: 65_536,
                output: out.clone(),
            },
            quiet,
        )?;
        let m = sof_tokenize::corpus::CorpusManifest::load(&out)?;
        corpora.push(CorpusSummary {
            corpus: out.display().to_string(),
            cells: m.cells_written,
            median_tokens: m.median_tokens,
        });
    }

    Ok(Prepared {
        files,
        labels,
        spatial: spatial_out,
        inputs: all_inputs,
        vocab_path,
        corpora,
        context_config: None,
        species: SpeciesArg::Mouse,
        section_key: "section".into(),
        label_tasks: vec![("layer".into(), "layer".into()), ("niche".into(), "niche".into())],
    })
}

/// Your own spatial file: spatial targets, its own genes as the vocabulary, one corpus.
fn prepare_data(args: &Args, data: &std::path::Path, quiet: bool) -> anyhow::Result<Prepared> {
    let reader = sof_io::h5ad::H5adReader::open(data)?;
    let obs = reader.obs()?;
    for key in [&args.cell_type_key, &args.layer_key, &args.section_key] {
        if obs.get(key).is_none() {
            anyhow::bail!(
                "{}: obs has no column '{key}' (it has: {}); pass --cell-type-key, --layer-key and --section-key",
                data.display(),
                obs.column_names().collect::<Vec<_>>().join(", ")
            );
        }
    }
    std::fs::create_dir_all(&args.output)?;
    let x = reader.read_rows(0..reader.n_obs())?;
    let mut totals = x.row_sums();
    let files = vec![FileSummary {
        path: data.to_path_buf(),
        technology: args.technology.clone(),
        cells: reader.n_obs(),
        genes: x.n_cols(),
        median_counts: util::median(&mut totals),
    }];
    let mut cols = BTreeMap::new();
    for c in [&args.layer_key, &args.cell_type_key] {
        cols.insert(c.clone(), obs.get(c).map(Column::value_counts).unwrap_or_default());
    }
    let mut labels = BTreeMap::new();
    labels.insert(data.file_name().unwrap_or_default().to_string_lossy().into_owned(), cols);

    let stem = data.file_stem().unwrap_or_default().to_string_lossy().into_owned();
    let targets = args.output.join(format!("{stem}_targets.h5ad"));
    spatial::run(spatial::Args {
        input: data.to_path_buf(),
        cell_type_key: Some(args.cell_type_key.clone()),
        section_key: Some(args.section_key.clone()),
        radius: None,
        mean_neighbors: Some(20.0),
        niches: Some(6),
        profile_components: sof_tasks::neighbourhood::PROFILE_COMPONENTS,
        profile_scales: sof_tasks::neighbourhood::PROFILE_SCALES.to_vec(),
        seed: args.seed,
        write_graph: false,
        depth_from: None,
        depth_order: Vec::new(),
        output: targets.clone(),
    })?;
    let t = sof_io::h5ad::H5adReader::open(&targets)?;
    let tobs = t.obs()?;
    let dens = tobs.get("sof_density").and_then(Column::as_f64).unwrap_or_default();
    // No true niches in real data: the ARI here compares the k-means niches with the layers.
    let spatial_out = vec![SpatialSummary {
        file: targets.display().to_string(),
        radius: read_uns_f64(&targets, "sof_radius")?,
        mean_neighbors: dens.iter().sum::<f64>() / dens.len().max(1) as f64,
        niche_ari: sof_tasks::metrics::adjusted_rand_index(
            &label_codes(tobs.get(&args.layer_key)),
            &codes(tobs.get("sof_niche")),
        ),
    }];

    let vocab_path = args.output.join("vocab.tsv");
    let vocab =
        sof_io::genes::Vocabulary::new(reader.var()?.index).map_err(|e| anyhow::anyhow!("{}: {e}", data.display()))?;
    util::write_atomic(&vocab_path, &vocab.to_tsv())?;
    let context_config = if sof_tokenize::ContextTable::default().get(&args.technology).is_ok() {
        None
    } else {
        let p = args.output.join("technologies.toml");
        util::write_atomic(
            &p,
            &format!("[technology.{}]\ntoken = 20\nmeans = \"{}\"\n", args.technology, args.technology),
        )?;
        Some(p)
    };
    let corpus = args.output.join("corpus").join(&stem);
    tokenize::run(
        tokenize::Args {
            input: targets.clone(),
            tables: Default::default(),
            technology: args.technology.clone(),
            species: args.species,
            modality: "spatial".into(),
            vocab: Some(vocab_path.clone()),
            genes_dir: None,
            tech_means: None,
            mode: tokenize::ModeArg::Fixed,
            keep_obs: vec![args.cell_type_key.clone(), args.layer_key.clone()],
            section_key: Some(args.section_key.clone()),
            no_niche_profile: false,
            dataset: Some(stem.clone()),
            context_config: context_config.clone(),
            context_length: 1500,
            shard_cells: 65_536,
            output: corpus.clone(),
        },
        quiet,
    )?;
    let m = sof_tokenize::corpus::CorpusManifest::load(&corpus)?;
    Ok(Prepared {
        files,
        labels,
        spatial: spatial_out,
        inputs: vec![(targets, args.technology.clone(), "spatial")],
        vocab_path,
        corpora: vec![CorpusSummary {
            corpus: corpus.display().to_string(),
            cells: m.cells_written,
            median_tokens: m.median_tokens,
        }],
        context_config,
        species: args.species,
        section_key: args.section_key.clone(),
        label_tasks: vec![("layer".into(), args.layer_key.clone()), ("cell_type".into(), args.cell_type_key.clone())],
    })
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

fn read_uns_f64(path: &std::path::Path, key: &str) -> anyhow::Result<f64> {
    sof_io::h5ad::read_uns_f64(path, key)?.ok_or_else(|| anyhow::anyhow!("{}: uns/{key} is missing", path.display()))
}
