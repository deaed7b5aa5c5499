//! `sof demo`: the main job on the built-in synthetic tissue — `sof_pipeline::demo::demo` with
//! progress bars, then the HTML report and the printed summary.
//!
//! Stages (all library calls): synthesize the tissue (spatial sections + a dissociated sample,
//! ground truth for every cell) -> spatial targets per section (composition, density, niche
//! profile, k-means niches scored against the true niches) -> tokenize every sample into Parquet
//! corpora over one shared vocabulary -> pretrain (masked tokens + the label-free niche profile)
//! -> embed every sample -> one UMAP of them all with kNN purity of modality, technology and
//! labels -> probes for layer, niche, density and composition beside the
//! baselines (leave-one-section-out) -> map the dissociated sample onto the spatial sections, with
//! its own context tokens and tokenized as the reference's cells.

use std::path::PathBuf;
use std::time::Instant;

use sof_pipeline::demo::{DemoConfig, Objective, OwnData, Progress, demo};

use super::inspect::SpeciesArg;
use super::report;
use super::tokenize::species;
use crate::device::{DeviceArg, device};
use crate::util;

/// Run the whole pipeline, synthetic tissue or your .h5ad, into an HTML report.
///
/// Run the whole pipeline on a built-in synthetic tissue (no data needed), or on your own
/// spatial .h5ad with --data: spatial targets, tokens, pretraining, embeddings, every cell in one
/// UMAP with how mixed technologies and modalities are (view.h5ad), probes beside PCA, mapping of
/// the dissociated sample (synthetic only) and an HTML report (report/index.html).
#[derive(Debug, clap::Args)]
#[command(after_help = concat!(
    "Examples:\n",
    "  sof demo --output demo-out/\n",
    "  sof demo --data starmap_mpfc.h5ad --cell-type-key cell_type --layer-key layer \\\n",
    "      --section-key section --technology starmap --output demo-starmap/",
))]
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
    /// Hide each cell's technology and modality tokens in this fraction of pretraining steps
    /// (each independently), so the model also learns cells it is not told the technology of.
    #[arg(long, default_value_t = 0.0)]
    pub context_dropout: f64,
    /// Where the model runs: cpu (default), or wgpu / cuda in a build with that feature.
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

pub fn run(args: Args, quiet: bool) -> anyhow::Result<()> {
    let start = Instant::now();
    let config = DemoConfig {
        output: args.output.clone(),
        cells: args.cells,
        seed: args.seed,
        steps: args.steps,
        preset: args.preset.clone(),
        context_length: args.context_length,
        objective: if args.no_niche {
            Objective::Plain
        } else if args.composition_objective {
            Objective::Composition
        } else {
            Objective::Profile
        },
        context_dropout: args.context_dropout,
        device: device(args.device)?,
        only_data: args.only_data,
        data: args.data.as_ref().map(|path| OwnData {
            path: path.clone(),
            cell_type_key: args.cell_type_key.clone(),
            layer_key: args.layer_key.clone(),
            section_key: args.section_key.clone(),
            technology: args.technology.clone(),
            species: species(args.species),
        }),
    };
    let stop = util::stop_on_ctrl_c();
    let mut bar: Option<indicatif::ProgressBar> = None;
    let (mut summary, files) = demo(&config, &stop, &mut |p| match p {
        Progress::Begin { stage, total } => {
            let pb = util::progress(total, stage, quiet);
            if stage == "pretrain" {
                util::steps_style(&pb);
            }
            bar = Some(pb);
        }
        Progress::Advance(n) => bar.iter().for_each(|b| b.inc(n)),
        Progress::Step { step, loss, accuracy, tokens_per_second } => bar.iter().for_each(|b| {
            b.set_position(step);
            b.set_prefix(format!("{loss:.3}, acc {:.1}%, {tokens_per_second:.0} tok/s", accuracy * 100.0));
        }),
        Progress::End => {
            if let Some(b) = bar.take() {
                b.finish_and_clear();
            }
        }
        Progress::Note(line) => util::say(line),
    })
    .map_err(|e| {
        if stop.load(std::sync::atomic::Ordering::SeqCst) {
            anyhow::Error::new(crate::Interrupted(format!("{e}")))
        } else {
            e.into()
        }
    })?;
    if let Some(files) = files {
        let t = Instant::now();
        let report = report::write(&report::Inputs {
            dir: args.output.join("report"),
            run_dir: files.run_dir,
            reference: files.reference,
            probes_dir: files.probes_dir,
            mapped: files.mapped,
            view: summary.view.clone(),
            placement_as_reference: summary.mapping.get("layer_accuracy_as_reference").copied(),
            placement_pca: summary
                .mapping
                .get("layer_accuracy_pca")
                .zip(summary.mapping.get("pca_shared_genes"))
                .map(|(&a, &n)| (a, n as usize)),
            placement_centered: summary
                .mapping
                .get("layer_accuracy_centered")
                .copied()
                .zip(summary.mapping.get("layer_accuracy_pca_centered").copied()),
            intro: match &args.data {
                Some(d) => format!(
                    "{}: the model was pretrained on this file alone, then frozen; probes read {}, {}, density and neighbourhood composition from its cell embeddings with one section held out at a time, beside PCA of the expression on the same folds.",
                    d.display(),
                    args.layer_key,
                    args.cell_type_key
                ),
                None => "A synthetic layered tissue with known ground truth: two MERFISH-like sections, one Xenium-like section and a dissociated sample. The model was pretrained on all of them, then frozen; probes read layer, niche, density and neighbourhood composition from its cell embeddings on held-out sections, beside PCA of the expression on the same folds.".into(),
            },
        })?;
        summary.report = Some(report.display().to_string());
        summary.seconds.insert("report".to_owned(), t.elapsed().as_secs_f64());
    }
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
            p.final_validation_loss.unwrap_or(f64::NAN),
            p.baselines.unigram_loss,
            100.0 * p.final_validation_accuracy.unwrap_or(f64::NAN),
            100.0 * p.baselines.most_frequent_accuracy,
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
    if let Some(view) = &summary.view {
        util::say(format!(
            "  embedding view: {} cells in one UMAP -> {}; kNN purity ({} neighbours; mixed = near random):",
            view.cells,
            view.file.display(),
            view.k
        ));
        for label in view.labels() {
            let random = view.expected(label);
            let show = |rep: &str| view.get(label, rep).map_or("   -  ".to_owned(), |m| format!("{:.3}", m.observed));
            util::say(format!(
                "    {label:<12} random {random:.3} | X_sof {} | X_sof_niche {} | PCA of shared genes {}",
                show("X_sof"),
                show("X_sof_niche"),
                show("PCA")
            ));
        }
    }
    if let Some(a) = summary.mapping.get("layer_accuracy") {
        util::say(format!(
            "  dissociated cells placed on the sections: layer accuracy {a:.3} against their true layers"
        ));
        if let Some(b) = summary.mapping.get("layer_accuracy_as_reference") {
            util::say(format!(
                "  the same cells tokenized as the reference's (its panel's genes, technology, spatial modality): layer accuracy {b:.3}"
            ));
        }
        if let (Some(p), Some(n)) = (summary.mapping.get("layer_accuracy_pca"), summary.mapping.get("pca_shared_genes"))
        {
            util::say(format!(
                "  baseline: the same mapper on PCA-50 of the {n} genes both measure: layer accuracy {p:.3}"
            ));
        }
        if let (Some(a), Some(p)) =
            (summary.mapping.get("layer_accuracy_centered"), summary.mapping.get("layer_accuracy_pca_centered"))
        {
            util::say(format!(
                "  each file centred on its own mean (sof map --center-each): layer accuracy {a:.3}, PCA-50 {p:.3}"
            ));
        }
    }
    if let Some(r) = &summary.report {
        util::say(format!("  report: {r}"));
    }
    Ok(())
}
