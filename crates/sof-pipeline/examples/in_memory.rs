//! The whole pipeline from library calls, no CLI: synthetic tissue -> spatial targets ->
//! tokens -> a tiny pretraining -> embeddings -> a probe against PCA and the neighbourhood
//! baselines, with the niche embedding (the cell's embedding beside its neighbours' mean) ->
//! mapping dissociated cells onto the spatial sections.
//!
//! Everything stays in memory except what the trainer is for: the token corpus it streams and
//! its run folder (checkpoints, metrics), both in a temporary folder.
//!
//! Run: `cargo run --release -p sof-pipeline --example in_memory [cells] [steps]`

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use ndarray::Array2;
use sof_io::genes::{GeneTables, Species, Vocabulary};
use sof_io::{AnnData, CellSource, Column};

use sof_pipeline::CellEncoder;
use sof_pretrain::PretrainConfig;
use sof_pretrain::config::CorpusEntry;
use sof_spatial::{Composition, RadiusGraph, SectionedPoints, radius_for_mean_neighbors};
use sof_synth::{Generator, Sample, SynthConfig};
use sof_tasks::mapping::{self, MapConfig, MapReport, Mapper, QueryTruth, Reference};
use sof_tasks::probe::{self, ProbeReport, ProbeTask};
use sof_tasks::split::FoldPlan;
use sof_tasks::{Cells, Head, LinearHead, Target};
use sof_tokenize::corpus::{CorpusInputs, CorpusSpec, build_corpus};
use sof_tokenize::{ContextTable, GeneMap, MeansAccumulator, Modality, Tokenizer, TokenizerConfig, vocabulary_hash};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// How big a run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Synthetic cells in all (five sixths in two spatial sections, the rest dissociated).
    pub cells: usize,
    /// Pretraining steps (batches of 16 cells).
    pub steps: u64,
    pub seed: u64,
}

/// What the pipeline reports.
#[derive(Debug)]
pub struct Reports {
    pub pretrain: sof_pretrain::Summary,
    /// Cortical layer of the spatial cells, leave-one-section-out, linear probe: the model's
    /// embedding beside PCA of expression and the neighbourhood baselines.
    pub probe: ProbeReport,
    /// The dissociated cells' layer, from their nearest spatial cells in embedding space,
    /// scored against the generator's truth, beside the prior.
    pub map: MapReport,
}

/// The spatial targets `sof spatial` computes: the label-free niche profile (the default
/// pretraining target: neighbour-mean expression components at several scales), each cell's
/// neighbourhood composition (cell types within the radius that gives `mean_neighbors`
/// neighbours) and density, added to `a` as obsm['sof_niche_profile'], obsm['sof_composition']
/// and obs['sof_density'].
fn add_spatial_targets(a: &mut AnnData, mean_neighbors: f64) -> Result<()> {
    let xy: Vec<[f64; 2]> = a.obsm["spatial"].rows().into_iter().map(|r| [r[0], r[1]]).collect();
    let sections = codes(a.obs.get("section").ok_or("no obs 'section'")?).0;
    let points = SectionedPoints::new(xy, &sections)?;
    let radius = radius_for_mean_neighbors(&points, mean_neighbors, 0.005)?.radius;
    let graph = RadiusGraph::build(&points, radius)?;
    let (types, names) = codes(a.obs.get("cell_type").ok_or("no obs 'cell_type'")?);
    let composition = Composition::from_graph(&graph, &types, names.len())?;
    let proportions = Array2::from_shape_vec((a.n_obs(), names.len()), composition.proportions())?;
    a.obsm.insert("sof_composition".into(), proportions.mapv(f64::from));
    a.obs.insert("sof_density", Column::Int(graph.degrees().into_iter().map(i64::from).collect()));
    let profile = sof_tasks::neighbourhood::niche_profile(
        &a.x,
        &points,
        &sof_tasks::neighbourhood::PROFILE_SCALES,
        sof_tasks::neighbourhood::PROFILE_COMPONENTS,
        0,
    )?;
    a.obsm.insert("sof_niche_profile".into(), profile.mapv(f64::from));
    Ok(())
}

/// Integer codes of a label column (missing labels get their own code) and the label names.
fn codes(c: &Column) -> (Vec<u32>, Vec<String>) {
    let labels: Vec<String> = c.labels().into_iter().map(Option::unwrap_or_default).collect();
    let mut names = labels.clone();
    names.sort();
    names.dedup();
    (labels.iter().map(|l| names.binary_search(l).expect("a name") as u32).collect(), names)
}

/// A tokenizer for one technology over `vocab`, with the technology's means computed from
/// the cells themselves (`sof tokenize` without --tech-means does the same).
fn tokenizer(a: &AnnData, vocab: &Vocabulary, technology: &str, modality: Modality) -> Result<(Tokenizer, GeneMap)> {
    let report = GeneTables::default().align(a.var_names(), Species::Mouse, vocab);
    let map = GeneMap::from_report(&report);
    let mut means = MeansAccumulator::new(vocab.len());
    means.add(&a.x, &map);
    let tech = ContextTable::default().get(technology)?.clone();
    let config = TokenizerConfig { context_length: 256, ..TokenizerConfig::default() };
    Ok((Tokenizer::new(config, &means.finish(), Species::Mouse, tech.token, modality), map))
}

pub fn run(settings: &Settings, work: &Path) -> Result<Reports> {
    // 1. Synthetic tissue: two MERFISH-like sections and a dissociated sample of the same tissue.
    let mut cfg =
        SynthConfig { seed: settings.seed, sections: 2, section_tech: vec!["merfish".into()], ..Default::default() };
    cfg.set_total_cells(settings.cells);
    let generator = Generator::new(cfg)?;
    let mut spatial = generator.anndata(&[Sample::Section(0), Sample::Section(1)]);
    let dissociated = generator.anndata(&[Sample::Dissociated]);

    // 2. Spatial targets from coordinates and cell types.
    add_spatial_targets(&mut spatial, 20.0)?;

    // 3. Tokens: one vocabulary (the dissociated sample measures every gene), a corpus each.
    let vocab = Vocabulary::new(dissociated.var_names().to_vec())?;
    let vocab_path = work.join("vocab.tsv");
    std::fs::write(&vocab_path, vocab.to_tsv())?;
    let hash = vocabulary_hash(&vocab);
    let mut corpora = Vec::new();
    let mut encoders = Vec::new();
    for (name, data, technology, modality) in [
        ("spatial", &spatial, "merfish", Modality::Spatial),
        ("dissociated", &dissociated, "10x_3p", Modality::Dissociated),
    ] {
        let (tok, map) = tokenizer(data, &vocab, technology, modality)?;
        let spec = CorpusSpec {
            output: work.join("corpus").join(name),
            dataset: format!("example_{name}"),
            technology: technology.into(),
            species: Species::Mouse,
            modality,
            section_key: data.obs.get("section").map(|_| "section".into()),
            keep_obs: Vec::new(),
            shard_cells: 65_536,
            row_group_cells: 8_192,
        };
        let inputs = CorpusInputs {
            tokenizer: &tok,
            map: &map,
            vocabulary_hash: &hash,
            vocabulary_size: vocab.len(),
            unmapped_genes: Vec::new(),
            niche_profile: None,
            density: None,
        };
        build_corpus(data as &dyn CellSource, &spec, &inputs, |_| {})?;
        corpora.push(CorpusEntry { path: spec.output.clone(), weight: 1.0 });
        encoders.push((tok, map));
    }

    // 4. A tiny pretraining with the default objectives (masked tokens and the label-free niche
    //    profile; the label-based composition objective stays off), on the CPU.
    let device = burn::tensor::Device::flex();
    let mut pcfg = PretrainConfig {
        preset: "tiny".into(),
        context_length: Some(256),
        vocab: Some(vocab_path),
        corpora,
        steps: settings.steps,
        batch_size: 16,
        seed: settings.seed,
        shuffle_buffer: 512,
        validation_every: 0,
        validation_batches: 2,
        checkpoint_every: settings.steps,
        log_every: settings.steps,
        ..PretrainConfig::default()
    };
    pcfg.optimizer.learning_rate = 2e-3;
    pcfg.optimizer.warmup_steps = settings.steps / 10;
    let run_dir = work.join("run");
    let trainer = sof_pretrain::Trainer::new(pcfg, &run_dir, vec![device.clone()])?;
    let pretrain = trainer.run(false, "examples/in_memory.rs", &AtomicBool::new(false), &mut |_| {})?;

    // 5. Embeddings of both samples with the trained model and each sample's tokenizer.
    let (model, config, _) = sof_model::checkpoint::load(&pretrain.model_dir, &device)?;
    let embed = |data: &AnnData, (tok, map): (Tokenizer, GeneMap)| -> Result<Array2<f64>> {
        let encoder = CellEncoder::new(model.clone(), config.clone(), tok, map, device.clone());
        Ok(encoder.embed_counts(&data.x, &mut |_| {})?.mapv(f64::from))
    };
    let mut encoders = encoders.into_iter();
    let spatial_emb = embed(&spatial, encoders.next().expect("spatial"))?;
    let dissociated_emb = embed(&dissociated, encoders.next().expect("dissociated"))?;

    // 6. Probe the layer of the spatial cells: leave one section out, the embedding against
    //    PCA of expression and NichePCA / BANKSY (expression averaged over spatial neighbours).
    let (layers, layer_names) = codes(spatial.obs.get("layer").ok_or("no obs 'layer'")?);
    let n = spatial.n_obs();
    let rows: Vec<usize> = (0..n).collect();
    let xy: Vec<[f64; 2]> = spatial.obsm["spatial"].rows().into_iter().map(|r| [r[0], r[1]]).collect();
    let sections = codes(spatial.obs.get("section").ok_or("no obs 'section'")?);
    let points = SectionedPoints::new(xy, &sections.0)?;
    // The niche embedding: each cell's embedding beside its nearest neighbours' mean.
    let niche = sof_tasks::neighbourhood::niche_embedding(
        spatial_emb.mapv(|v| v as f32).view(),
        &points,
        sof_tasks::neighbourhood::NICHE_K,
    )?;
    let obsm =
        BTreeMap::from([("X_sof".to_owned(), spatial_emb.clone()), ("X_sof_niche".to_owned(), niche.mapv(f64::from))]);
    let cells = Cells::new(spatial.x.clone(), obsm)?.with_neighbourhoods(
        &spatial.x,
        &points,
        &rows,
        &probe::NEIGHBOURHOOD_K,
    )?;
    let task = ProbeTask {
        description: "classify layer".into(),
        target: Target::Classes {
            y: layers.iter().map(|&c| c as usize).collect(),
            n_classes: layer_names.len(),
            class_balanced: false,
        },
        classes: layer_names,
        target_columns: Vec::new(),
        ordered: true,
    };
    let groups: Vec<String> = sections.0.iter().map(|&s| sections.1[s as usize].clone()).collect();
    let folds = FoldPlan::Groups(groups).fold_sets(1)?;
    let (embedders, sets) = probe::standard_features("X_sof", Some("X_sof_niche"), spatial.n_vars(), true);
    let heads = |_: u64| -> Vec<Box<dyn Head>> { vec![Box::new(LinearHead::default())] };
    let probe =
        probe::probe("synthetic spatial", rows, &cells, &task, &folds, &embedders, &sets, &heads, None, &mut |_| {})?;

    // 7. Map the dissociated cells onto the spatial sections; score against their true layer.
    let labels: Vec<String> =
        spatial.obs.get("layer").ok_or("no obs 'layer'")?.labels().into_iter().map(Option::unwrap_or_default).collect();
    let mut reference = Reference::new(spatial_emb, &labels, spatial.obsm["spatial"].view())?;
    reference.composition = Some(spatial.obsm["sof_composition"].clone());
    reference.density = spatial.obs.get("sof_density").and_then(Column::as_f64);
    let placed = mapping::transfer(&reference, dissociated_emb.view(), &MapConfig::default(), None)?;
    let truth = QueryTruth { labels: dissociated.obs.get("layer").map(Column::labels), values: BTreeMap::new() };
    let mut map =
        MapReport { query_cells: dissociated.n_obs(), reference_cells: reference.len(), ..Default::default() };
    let (prior, _) = mapping::prior(&reference, dissociated.n_obs());
    for s in mapping::score(Mapper::Ours, &reference, "layer", &truth, &placed.predicted, &[])
        .into_iter()
        .chain(mapping::score(Mapper::Prior, &reference, "layer", &truth, &prior, &[]))
    {
        map.insert(s.mapper, &s.column, &s.metrics);
    }
    // The generator keeps the dissociated cells' true positions: how far off the placement is.
    if let (Some(x), Some(y)) = (
        dissociated.obs.get("true_x_um").and_then(Column::as_f64),
        dissociated.obs.get("true_y_um").and_then(Column::as_f64),
    ) {
        let truth = Array2::from_shape_fn((x.len(), 2), |(i, c)| if c == 0 { x[i] } else { y[i] });
        let (median, _) = mapping::location_error(placed.mapping.location.view(), truth.view());
        map.scores.insert("location_error_median_um".into(), median);
    }
    Ok(Reports { pretrain, probe, map })
}

#[allow(dead_code, clippy::print_stdout)]
fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let cells = args.next().map(|a| a.parse()).transpose()?.unwrap_or(3_000);
    let steps = args.next().map(|a| a.parse()).transpose()?.unwrap_or(200);
    let work = tempfile::tempdir()?;
    let r = run(&Settings { cells, steps, seed: 0 }, work.path())?;
    println!(
        "pretraining: {} steps, validation loss {:.3} (unigram baseline {:.3})",
        r.pretrain.steps_done,
        r.pretrain.final_validation_loss.unwrap_or(f64::NAN),
        r.pretrain.baselines.unigram_loss
    );
    println!("probe ({}, {} cells, leave one section out, linear head, macro F1):", r.probe.task, r.probe.cells);
    for res in &r.probe.results {
        println!("  {:<22} {:.3}", res.features, res.mean.get("macro_f1").copied().unwrap_or(f64::NAN));
    }
    println!("map (dissociated cells onto the sections): {}", serde_json::to_string_pretty(&r.map)?);
    Ok(())
}
