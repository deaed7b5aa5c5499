//! `cargo xtask eval`: the downstream benchmark of issue 7 on ../shared data, every number beside
//! the PCA and raw-expression baselines on the same folds, written to docs/RESULTS.md with
//! figures in docs/images/results/.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use sof_report::{FeatureResult, MapReport, Mapper, ProbeReport};

use crate::{EXTRA_TECHNOLOGIES, manifest_field, root, run, setup, sof_release};

/// Settings of one evaluation run.
#[derive(Debug, Clone)]
pub struct EvalArgs {
    pub checkpoint: PathBuf,
    pub output: PathBuf,
    pub shared: PathBuf,
    pub finetune_epochs: usize,
    pub seeds: u64,
    pub write_docs: bool,
    /// A second model, evaluated with the linear probe only, shown beside the first.
    pub compare: Option<PathBuf>,
}

/// One model's probe reports and held-out-section mappings.
type Outcome = (Vec<(Probe, ProbeReport)>, Vec<Mapping>);

/// One held-out-section mapping: the section, the head, whether each side was centred
/// (`--center-each`), and its report.
type Mapping = (String, String, bool, MapReport);

/// The evaluation's task list, xtask/eval.toml.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Tasks {
    probe: Vec<ProbeEntry>,
    mapping: MappingEntry,
}

/// A `[[probe]]` of xtask/eval.toml (see the comment at its top).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProbeEntry {
    task: String,
    dataset: String,
    input: String,
    args: Vec<String>,
    #[serde(default)]
    neighbours: Vec<u32>,
    #[serde(default)]
    finetune: bool,
    figures: Option<String>,
    #[serde(default = "yes")]
    in_summary: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MappingEntry {
    sections: Vec<String>,
    heads: Vec<String>,
    /// Each value runs every section and head once, with (`true`) or without `--center-each`.
    #[serde(default = "uncentred")]
    center_each: Vec<bool>,
}

fn uncentred() -> Vec<bool> {
    vec![false]
}

/// One probe: a name, the embedded file it reads, `sof probe` arguments, and whether the
/// fine-tuned model joins.
#[derive(Debug)]
struct Probe {
    task: String,
    dataset: String,
    file: PathBuf,
    args: Vec<String>,
    finetune: bool,
    /// Figures to keep (probe --plots), under this slug.
    figures: Option<String>,
    /// Counted in the summary table; false for the composition in the reference's form, shown
    /// for comparison in a table of its own.
    in_summary: bool,
}

/// xtask/eval.toml, each probe expanded over its `neighbours`, with `{seeds}` filled in and
/// inputs under `out`.
fn read_tasks(out: &Path, seeds: u64) -> Result<(Vec<Probe>, MappingEntry)> {
    let path = root().join("xtask/eval.toml");
    let tasks: Tasks = toml::from_str(&std::fs::read_to_string(&path).with_context(|| path.display().to_string())?)
        .with_context(|| format!("{}: not a valid task list", path.display()))?;
    let mut probes = Vec::new();
    for p in tasks.probe {
        if !root().join("datasets").join(format!("{}.toml", p.dataset)).exists() {
            bail!(
                "{}: probe '{}' names dataset '{}', which has no manifest in datasets/",
                path.display(),
                p.task,
                p.dataset
            );
        }
        let ks: Vec<Option<u32>> =
            if p.neighbours.is_empty() { vec![None] } else { p.neighbours.iter().map(|&k| Some(k)).collect() };
        for k in ks {
            let fill = |x: &str| {
                let x = x.replace("{seeds}", &seeds.to_string());
                k.map_or(x.clone(), |k| x.replace("{k}", &k.to_string()))
            };
            probes.push(Probe {
                task: fill(&p.task),
                dataset: p.dataset.clone(),
                file: out.join(fill(&p.input)),
                args: p.args.iter().map(|a| fill(a)).collect(),
                finetune: p.finetune,
                figures: p.figures.clone(),
                in_summary: p.in_summary,
            });
        }
    }
    Ok((probes, tasks.mapping))
}

/// A file name for a probe's cached report: its dataset and task.
fn slug(p: &Probe) -> String {
    let task: String =
        p.task.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
    format!("{}__{}", p.dataset, task.split('_').filter(|w| !w.is_empty()).collect::<Vec<_>>().join("_"))
}

/// Tokenizer flags of a dataset (from its manifest in datasets/), for `sof embed` / `--finetune`.
fn tokenizer_flags(a: &EvalArgs, dataset: &str, modality: Option<&str>) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(root().join("datasets").join(format!("{dataset}.toml")))?;
    let tech = manifest_field(&text, "technology").context("technology")?;
    let mut f = vec![
        "--technology".to_owned(),
        tech.clone(),
        "--species".into(),
        manifest_field(&text, "species").context("species")?,
        "--modality".into(),
        modality.map_or_else(|| manifest_field(&text, "modality").unwrap_or_default(), str::to_owned),
        "--vocab".into(),
        a.shared.join("nicheformer/vocab.tsv").display().to_string(),
        "--genes-dir".into(),
        a.shared.join("genes").display().to_string(),
        "--context-config".into(),
        a.output.join("technologies.toml").display().to_string(),
    ];
    if a.shared.join("nicheformer/tech_means").join(format!("{tech}.tsv")).exists() {
        f.push("--tech-means".into());
        f.push(a.shared.join("nicheformer/tech_means").display().to_string());
    }
    Ok(f)
}

fn sof(cmd: &Path) -> Command {
    let mut c = Command::new(cmd);
    c.arg("-q");
    c
}

pub fn eval(a: &EvalArgs) -> Result<()> {
    setup()?;
    if !a.checkpoint.join("run.json").exists() {
        bail!(
            "{}: no sof model here; train one with `cargo xtask pretrain-shared --steps 2000 --batch-size 16 -- --norm-first --lr 5e-4 --warmup-steps 300` \
             (about 40 min on 2 cores) or pass --checkpoint <model folder>",
            a.checkpoint.display()
        );
    }
    let data = a.shared.join("data");
    if !data.join("starmap_mpfc.h5ad").exists() {
        bail!("{}: the shared datasets are missing; pass --shared-dir", data.display());
    }
    let bin = sof_release()?;
    // Timed from here: building the binary is not part of the evaluation.
    let started = Instant::now();
    std::fs::create_dir_all(&a.output)?;
    std::fs::write(a.output.join("technologies.toml"), EXTRA_TECHNOLOGIES)?;
    let (reports, mapping) = evaluate_model(a, &bin, &a.checkpoint, &a.output, a.finetune_epochs, true)?;
    let compared = match &a.compare {
        Some(c) => Some(evaluate_model(a, &bin, c, &a.output.join("compare"), 0, false)?),
        None => None,
    };
    // Compute time of the results: summed over the runs that filled the cache (a rerun that
    // only rewrites text adds nothing).
    let timing = a.output.join("seconds.txt");
    let before: f64 = std::fs::read_to_string(&timing).ok().and_then(|t| t.trim().parse().ok()).unwrap_or(0.0);
    let elapsed = started.elapsed().as_secs_f64();
    let seconds = if elapsed < 60.0 { before } else { before + elapsed };
    std::fs::write(&timing, format!("{seconds:.0}"))?;
    let text = results_markdown(a, &reports, &mapping, compared.as_ref(), seconds)?;
    std::fs::write(a.output.join("RESULTS.md"), &text)?;
    println!("{text}");
    if a.write_docs {
        let images = root().join("docs/images/results");
        std::fs::create_dir_all(&images)?;
        for (p, _) in &reports {
            if let Some(slug) = &p.figures {
                // The figures RESULTS.md shows: the maps and the embedding's confusion matrix.
                for e in std::fs::read_dir(a.output.join("figures").join(slug))?.flatten() {
                    let name = e.file_name().to_string_lossy().to_string();
                    if name.starts_with("map_") || name == "confusion_embedding_linear.png" {
                        std::fs::copy(e.path(), images.join(format!("{slug}_{name}")))?;
                    }
                }
            }
        }
        std::fs::write(root().join("docs/RESULTS.md"), &text)?;
        eprintln!("wrote docs/RESULTS.md and docs/images/results/");
    }
    Ok(())
}

/// Embeds the datasets with `checkpoint`, runs every probe (MLP head and fine-tuning optional)
/// and the held-out-section mapping; results under `out` (reused when present).
fn evaluate_model(
    a: &EvalArgs,
    bin: &Path,
    checkpoint: &Path,
    out: &Path,
    finetune_epochs: usize,
    mlp: bool,
) -> Result<Outcome> {
    if !checkpoint.join("run.json").exists() {
        bail!(
            "{}: no sof model here; train one with `cargo xtask pretrain-shared` or pass --checkpoint <model folder>",
            checkpoint.display()
        );
    }
    std::fs::create_dir_all(out.join("probes"))?;
    let data = a.shared.join("data");
    let ckpt = checkpoint.display().to_string();
    let bin = bin.to_path_buf();

    // 1. Embeddings (and, on the spatial sets, targets at three radii; depth on STARmap).
    let embed = |dataset: &str, input: &Path, output: &Path, modality: Option<&str>| -> Result<()> {
        if output.exists() {
            return Ok(());
        }
        let mut c = sof(&bin);
        c.args(["embed", "--checkpoint", &ckpt, "--input"]).arg(input).arg("--output").arg(output);
        c.args(tokenizer_flags(a, dataset, modality)?);
        if modality == Some("dissociated") {
            // Read as dissociated cells: no neighbourhood.
            c.arg("--no-niche");
        } else if dataset == "starmap_mpfc" {
            // Three sections on overlapping pixel coordinates: the niche embedding's neighbours
            // must not cross them.
            c.args(["--section-key", "section"]);
        }
        run(&mut c)
    };
    let spatial = |input: &Path, output: &Path, extra: &[&str]| -> Result<()> {
        if output.exists() {
            return Ok(());
        }
        run(sof(&bin).args(["spatial", "--input"]).arg(input).arg("--output").arg(output).args(extra))
    };
    for d in ["starmap_mpfc", "osmfish_sscortex", "smfish_visp", "intestine_zonation_dissociated"] {
        embed(d, &data.join(format!("{d}.h5ad")), &out.join(format!("{d}_emb.h5ad")), None)?;
    }
    for k in ["10", "20", "50"] {
        spatial(
            &out.join("starmap_mpfc_emb.h5ad"),
            &out.join(format!("starmap_mpfc_r{k}.h5ad")),
            &[
                "--cell-type-key",
                "cell_type",
                "--section-key",
                "section",
                "--mean-neighbors",
                k,
                "--depth-from",
                "layer",
                "--depth-order",
                "L1,L2/3,L5,L6",
            ],
        )?;
        spatial(
            &out.join("osmfish_sscortex_emb.h5ad"),
            &out.join(format!("osmfish_sscortex_r{k}.h5ad")),
            &["--cell-type-key", "ClusterName", "--mean-neighbors", k],
        )?;
    }
    // STARmap once more, every cell as dissociated (modality token), for the held-out mapping.
    embed(
        "starmap_mpfc",
        &out.join("starmap_mpfc_r20.h5ad"),
        &out.join("starmap_mpfc_dissociated.h5ad"),
        Some("dissociated"),
    )?;

    // 2. Probes (xtask/eval.toml).
    let heads: &[&str] = if mlp { &["--head", "linear", "--head", "mlp"] } else { &["--head", "linear"] };
    let (probes, mapping_tasks) = read_tasks(out, a.seeds)?;
    let mut reports = Vec::new();
    for p in probes {
        let json = out.join("probes").join(format!("{}.json", slug(&p)));
        if !json.exists() {
            let mut c = sof(&bin);
            c.args(["probe", "--input"]).arg(&p.file).args(&p.args).args(heads).arg("--output").arg(&json);
            if let Some(slug) = &p.figures {
                c.arg("--plots").arg(out.join("figures").join(slug));
            }
            if p.finetune && finetune_epochs > 0 {
                c.args(["--finetune", &ckpt, "--finetune-epochs", &finetune_epochs.to_string()]);
                c.args(["--encoder-lr", "3e-4", "--head-lr", "3e-3"]);
                c.args(tokenizer_flags(a, &p.dataset, None)?);
            }
            run(&mut c)?;
        }
        let v: ProbeReport = serde_json::from_str(&std::fs::read_to_string(&json)?)
            .with_context(|| format!("{}: not a probe report; delete it to rerun the probe", json.display()))?;
        reports.push((p, v));
    }

    // 3. A STARmap section held out, its coordinates unused, embedded as dissociated cells and
    //    mapped onto the other two sections; every rotation.
    let mut mapping = Vec::new();
    // Centring innermost, so the table's rows with and without it sit side by side.
    for head in &mapping_tasks.heads {
        for section in &mapping_tasks.sections {
            for &center in &mapping_tasks.center_each {
                let mut tag = if head == "knn" { section.to_owned() } else { format!("{section}_{head}") };
                if center {
                    tag.push_str("_centered");
                }
                let json = out.join(format!("map_{tag}.json"));
                if !json.exists() {
                    let mut c = sof(&bin);
                    c.args(["map", "--reference"])
                        .arg(out.join("starmap_mpfc_r20.h5ad"))
                        .arg("--query")
                        .arg(out.join("starmap_mpfc_dissociated.h5ad"))
                        .args(["--label", "layer", "--transfer", "sof_depth", "--pca-baseline", "--head", head])
                        .arg(format!("--reference-where=section!={section}"))
                        .arg(format!("--query-where=section={section}"))
                        .arg("--report")
                        .arg(&json)
                        .arg("--output")
                        .arg(out.join(format!("map_{tag}.h5ad")));
                    if center {
                        c.arg("--center-each");
                    }
                    run(&mut c)?;
                }
                let report: MapReport = serde_json::from_str(&std::fs::read_to_string(&json)?)
                    .with_context(|| format!("{}: not a map report; delete it to rerun the mapping", json.display()))?;
                mapping.push((section.clone(), head.clone(), center, report));
            }
        }
    }

    Ok((reports, mapping))
}

/// The command line that reproduces this run.
fn reproduce(a: &EvalArgs) -> String {
    let rel = |p: &Path| p.strip_prefix(root()).unwrap_or(p).display().to_string();
    let mut c = format!(
        "cargo xtask eval --checkpoint {} --finetune-epochs {} --seeds {}",
        rel(&a.checkpoint),
        a.finetune_epochs,
        a.seeds
    );
    if let Some(x) = &a.compare {
        c.push_str(&format!(" --compare {}", rel(x)));
    }
    c
}

/// `mean ± sd` of a metric of one result row (none where undefined: NaN, JSON's `null`).
fn cell(r: &FeatureResult, metric: &str) -> Option<(f64, f64)> {
    let finite = |m: &std::collections::BTreeMap<String, f64>| m.get(metric).copied().filter(|v| !v.is_nan());
    Some((finite(&r.mean)?, finite(&r.sd).unwrap_or(0.0)))
}

fn fmt(v: Option<(f64, f64)>) -> String {
    v.map_or_else(|| "–".to_owned(), |(m, s)| format!("{m:.3} ± {s:.3}"))
}

fn row_name(r: &FeatureResult) -> String {
    let f = r.features.as_str();
    let f = if f.starts_with("fine-tuned") { "fine-tuned encoder" } else { f };
    let head = match r.head.as_str() {
        "mlp" => "MLP",
        _ => "linear",
    };
    format!("{f} · {head}")
}

fn results_markdown(
    a: &EvalArgs,
    reports: &[(Probe, ProbeReport)],
    mapping: &[Mapping],
    compared: Option<&Outcome>,
    seconds: f64,
) -> Result<String> {
    let mut t = String::new();
    let command = std::fs::read_to_string(a.checkpoint.parent().unwrap_or(Path::new(".")).join("command.txt"))
        .unwrap_or_else(|_| "(not recorded)".into());
    writeln!(t, "# Results: downstream tasks on real data\n")?;
    writeln!(
        t,
        "Written by `cargo xtask eval` (computed in {:.0} min on 2 CPU cores, summed over the runs that filled its cache); every number below comes from it. \
         Model: `{}`, pretrained with\n\n```\n{}```\n",
        seconds / 60.0,
        a.checkpoint.strip_prefix(root()).unwrap_or(&a.checkpoint).display(),
        command.lines().last().unwrap_or("").replace(&root().display().to_string(), ".") + "\n"
    )?;
    writeln!(
        t,
        "Folds: STARmap holds out one section at a time (train on two, test on the third, all three rotations); \
         osmFISH and smFISH hold out spatial blocks (4 x 4 grid dealt into 4 folds, {} seed(s)); the dissociated \
         intestine cells, which have no sections or coordinates, use 5 shuffled folds ({} seed(s)). Every feature set \
         gets the same folds and the same heads: the linear probe (logistic regression on standardized features, \
         fitted by L-BFGS; ridge for values; softmax-linear for proportions) and a one-hidden-layer MLP. Baselines: PCA of log1p \
         10k-normalized expression fitted on the training cells (50 components, and the best of 10/20/50/100 on the \
         test folds — optimistic on purpose), the raw log-normalized expression and, on the spatial datasets, the \
         neighbourhood baselines: NichePCA (expression averaged over each cell and its k nearest neighbours in its \
         section, then PCA-50; best of k = 10/20/50) and BANKSY-style (own and 20-neighbour mean expression side by \
         side, weighted sqrt(1 - lambda) / sqrt(lambda), then PCA-50; best of lambda = 0.2/0.5/0.8), both picked on \
         the test folds too (docs/SPATIAL.md). Fine-tuned: the whole encoder \
         plus a linear head, {} epochs per fold (encoder learning rate 3e-4, head 3e-3). Values are mean ± sd over \
         folds (and seeds).\n",
        a.seeds, a.seeds, a.finetune_epochs
    )?;

    if !command.contains("--niche") && command != "(not recorded)" {
        writeln!(
            t,
            "**Labels:** this model was pretrained without any obs label: its niche targets are the label-free \
             neighbourhood expression profile `sof tokenize` computes from coordinates and expression (the default \
             objective, docs/PRETRAINING.md). It did see the cells of every dataset unlabelled, test sections and \
             blocks included (self-supervised, as a foundation model is used). The niche embedding \
             (`X_sof_niche`) is the cell embedding beside its mean over the 20 nearest neighbours in the same \
             section (`sof embed` of a spatial file), scored on the same folds as every baseline.\n"
        )?;
    }
    if command.contains("--niche") {
        writeln!(
            t,
            "**Read with care:** this model was pretrained with the niche-aware objective, whose composition targets \
             come from the cell-type annotations of the spatial datasets (STARmap `cell_type`, osmFISH \
             `ClusterName`, smFISH `cluster`, MERFISH preoptic `Cell_class`) — of *every* cell, test sections and \
             blocks included. Pretraining never saw a cell's own label, layer, region or depth, but it did see its \
             neighbours' cell types: a transductive use of annotation that a model pretrained elsewhere would not \
             have. The cell-type task on STARmap is the most exposed. A second model that used no labels at all is \
             in the last column where given.\n"
        )?;
    }
    // Summary: best baseline vs ours.
    writeln!(t, "## Summary\n")?;
    let extra = compared.map(|_| " linear probe (second model) |").unwrap_or_default();
    writeln!(
        t,
        "| dataset | task | metric | best baseline | linear probe (emb.) | MLP (emb.) | linear probe (niche emb.) | MLP (niche emb.) | fine-tuned | ours best vs baseline best (+ = ours better) |{extra}"
    )?;
    writeln!(t, "|---|---|---|---|---|---|---|---|---|---|{}", if compared.is_some() { "---|" } else { "" })?;
    // The issue-16 goal on STARmap layer: (ours best - best baseline).
    let mut starmap_layer = None;
    let (mut wins, mut total, mut probe_vs_pca) = (0, 0, (0, 0));
    let (mut won, mut lost): (Vec<String>, Vec<String>) = (Vec::new(), Vec::new());
    for (k, (p, v)) in reports.iter().enumerate() {
        if !p.in_summary {
            continue;
        }
        let regress = v.task.starts_with("regress");
        // Composition: mean absolute error over cells and types (R² averaged over dozens of
        // types is dominated by rare ones); lower is better there, higher everywhere else.
        let (metric, label, sign) = match (regress, p.task.starts_with("composition")) {
            (_, true) => ("mae", "MAE ↓", -1.0),
            (true, false) => ("r2", "R²", 1.0),
            (false, false) => ("macro_f1", "macro F1", 1.0),
        };
        let results = &v.results;
        let best = |pred: &dyn Fn(&FeatureResult) -> bool| {
            results
                .iter()
                .filter(|r| pred(r))
                .filter_map(|r| cell(r, metric).map(|c| (c, row_name(r))))
                .max_by(|x, y| (sign * x.0.0).total_cmp(&(sign * y.0.0)))
        };
        // The expression baselines, the neighbourhood ones (NichePCA, BANKSY) included: "best
        // baseline" is the best of all of them.
        let base = best(&FeatureResult::is_baseline);
        let find = |feat: &str, head: &str| v.result(feat, head).and_then(|r| cell(r, metric));
        let lin = find("embedding", "linear");
        let mlp = find("embedding", "mlp");
        let niche_lin = find("niche embedding", "linear");
        let niche_mlp = find("niche embedding", "mlp");
        let ft = find("fine-tuned", "linear");
        let ours = sign
            * [lin, mlp, niche_lin, niche_mlp, ft]
                .into_iter()
                .flatten()
                .map(|c| sign * c.0)
                .fold(f64::NEG_INFINITY, f64::max);
        let pca50 = find("PCA-50", "linear");
        if let (Some(l), Some(p50)) = (lin, pca50) {
            probe_vs_pca.1 += 1;
            if sign * l.0 >= sign * p50.0 {
                probe_vs_pca.0 += 1;
            }
        }
        // Positive = ours better, in the metric's own units.
        let diff = base.as_ref().map(|b| sign * (ours - b.0.0));
        total += 1;
        if p.dataset == "starmap_mpfc" && p.task == "layer" {
            starmap_layer = diff;
        }
        let name = format!("{} {}", p.dataset, p.task);
        if diff.is_some_and(|d| d > 0.0) {
            wins += 1;
            won.push(name);
        } else {
            lost.push(name);
        }
        let second = compared
            .and_then(|c| c.0.get(k))
            .and_then(|(_, v)| v.results.iter().find(|r| r.features.starts_with("embedding")))
            .and_then(|r| cell(r, metric));
        let second = match (compared, second) {
            (Some(_), Some(c)) => format!(" {:.3} |", c.0),
            (Some(_), None) => " – |".to_owned(),
            _ => String::new(),
        };
        writeln!(
            t,
            "| {} | {} | {} | {} ({}) | {} | {} | {} | {} | {} | {} |{second}",
            p.dataset,
            p.task,
            label,
            base.as_ref().map_or("–".into(), |b| format!("{:.3}", b.0.0)),
            base.as_ref().map_or("".into(), |b| b.1.clone()),
            lin.map_or("–".into(), |c| format!("{:.3}", c.0)),
            mlp.map_or("–".into(), |c| format!("{:.3}", c.0)),
            niche_lin.map_or("–".into(), |c| format!("{:.3}", c.0)),
            niche_mlp.map_or("–".into(), |c| format!("{:.3}", c.0)),
            ft.map_or("not run".into(), |c| format!("{:.3}", c.0)),
            diff.map_or("–".into(), |d| if metric == "mae" { format!("{d:+.4}") } else { format!("{d:+.3}") })
        )?;
    }
    writeln!(
        t,
        "\nOurs (best of the linear probe and MLP on either embedding, and fine-tuned) beats the best baseline on **{wins} of {total}** tasks; the \
         linear probe on the embedding matches or beats the linear probe on PCA-50 on **{} of {}**. The goals \
         (fine-tuned beats the best baseline on most tasks; the linear probe at least matches PCA-50) are **{}**.\n",
        probe_vs_pca.0,
        probe_vs_pca.1,
        if 2 * wins > total && 2 * probe_vs_pca.0 >= probe_vs_pca.1 { "met" } else { "not met" }
    )?;
    if let Some(d) = starmap_layer {
        writeln!(
            t,
            "On STARmap layer, ours best minus the best baseline (NichePCA and BANKSY included) is **{d:+.3}** \
             macro F1; the goal (>= +0.03) is **{}**.\n",
            if d >= 0.03 { "met" } else { "not met" }
        )?;
    }
    writeln!(t, "- Ours ahead: {}.", if won.is_empty() { "none".to_owned() } else { won.join("; ") })?;
    writeln!(t, "- The best baseline ahead: {}.\n", if lost.is_empty() { "none".to_owned() } else { lost.join("; ") })?;
    let reference_form: Vec<&(Probe, ProbeReport)> = reports.iter().filter(|(p, _)| !p.in_summary).collect();
    if !reference_form.is_empty() {
        writeln!(
            t,
            "Composition in the reference's form (not counted above): the target is the softmax over each cell's \
             neighbour counts per cell type, as Nicheformer trains and scores it, instead of the proportions; the same \
             heads are fitted to it on the same folds. Softmax of counts puts nearly all weight on the most frequent \
             neighbour type, so these numbers are not comparable with the proportion MAEs above.\n"
        )?;
        writeln!(t, "| dataset | neighbours | metric | best baseline | linear probe (emb.) | MLP (emb.) |")?;
        writeln!(t, "|---|---|---|---|---|---|")?;
        for (p, v) in reference_form {
            let results = &v.results;
            for metric in ["mae", "mse"] {
                let base = results
                    .iter()
                    .filter(|r| r.is_baseline())
                    .filter_map(|r| cell(r, metric).map(|c| (c.0, row_name(r))))
                    .min_by(|x, y| x.0.total_cmp(&y.0));
                let find = |head: &str| {
                    v.result("embedding", head)
                        .and_then(|r| cell(r, metric))
                        .map_or("–".into(), |c| format!("{:.4}", c.0))
                };
                writeln!(
                    t,
                    "| {} | 20 | {} ↓ | {} | {} | {} |",
                    p.dataset,
                    metric.to_uppercase(),
                    base.map_or("–".into(), |b| format!("{:.4} ({})", b.0, b.1)),
                    find("linear"),
                    find("mlp")
                )?;
            }
        }
        writeln!(t)?;
    }

    if reports.iter().any(|(p, _)| p.dataset == "intestine_zonation_dissociated") {
        writeln!(
            t,
            "**The intestine zone row measures nothing, for any method.** In \
             `intestine_zonation_dissociated.h5ad` the zone labels do not line up with the expression rows beside \
             them: the zones follow the stored t-SNE coordinates closely (Spearman -0.85 with the second axis), but \
             neither the zones nor the t-SNE follow the expression — the leading five principal components of \
             log-normalized expression correlate with the t-SNE axes at |rho| <= 0.11 and with the zone at <= 0.06, \
             and the villus-tip and crypt landmark genes the zones were inferred from (Apoa4, Ada, Nt5e, Slc28a2, \
             Reg1, Reg3g, Olfm4, Lgr5, Mki67) at |rho| <= 0.06. In the source study both were computed from this \
             expression, so rows and labels were most likely paired in different orders when the file was \
             packaged. Check: `python xtask/peers/intestine_alignment.py ../shared/data/intestine_zonation_dissociated.h5ad`. \
             Until the file is repackaged, near-chance scores there are expected and say nothing about the model.\n"
        )?;
    }
    if let Some(c) = &a.compare {
        let command =
            std::fs::read_to_string(c.parent().unwrap_or(Path::new(".")).join("command.txt")).unwrap_or_default();
        writeln!(
            t,
            "Second model (last column; linear probe only): `{}`, pretrained with\n\n```\n{}\n```\n",
            c.strip_prefix(root()).unwrap_or(c).display(),
            command.lines().last().unwrap_or("").replace(&root().display().to_string(), ".")
        )?;
    }
    // Mapping.
    writeln!(t, "## Dissociated → spatial: a held-out STARmap section\n")?;
    writeln!(
        t,
        "Each STARmap section in turn is held out, embedded with the *dissociated* modality token, its coordinates \
         not used, and mapped onto the other two sections (embedded as spatial), two ways: softmax-weighted cosine \
         neighbours (`sof map --head knn`, k = 30), and heads trained on the reference cells (`--head linear`: \
         standardized logistic regression for the layer, ridge for depth). Depth is each cell's position along the \
         cortical axis of its own section, 0 at the pia-side edge and 1 at the white-matter edge (`sof spatial \
         --depth-from layer`), so sections in different coordinate frames are comparable. Centred = yes: each side's \
         features minus their own mean before the mapper (`--center-each`; PCA-50 too). Beside it: the same \
         mapper on PCA-50 of expression, and the prior (the reference's most frequent layer; its mean depth).\n"
    )?;
    writeln!(
        t,
        "| held-out section | mapper | centred | cells | layer accuracy (ours) | (PCA-50) | (prior) | depth MAE (ours) | (PCA-50) | (prior) | depth Spearman (ours) | (PCA-50) |"
    )?;
    writeln!(t, "|---|---|---|---|---|---|---|---|---|---|---|---|")?;
    for (section, head, center, m) in mapping {
        let g = |column: &str, metric: &str, mapper: Mapper| {
            m.get(column, metric, mapper).filter(|v| !v.is_nan()).map_or("–".into(), |v| format!("{v:.3}"))
        };
        let head = if head == "knn" { "neighbours" } else { "linear head" };
        writeln!(
            t,
            "| {section} | {head} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            if *center { "yes" } else { "no" },
            m.query_cells,
            g("layer", "accuracy", Mapper::Ours),
            g("layer", "accuracy", Mapper::Pca50),
            g("layer", "accuracy", Mapper::Prior),
            g("sof_depth", "mae", Mapper::Ours),
            g("sof_depth", "mae", Mapper::Pca50),
            g("sof_depth", "mae", Mapper::Prior),
            g("sof_depth", "spearman", Mapper::Ours),
            g("sof_depth", "spearman", Mapper::Pca50),
        )?;
    }

    // Full tables.
    writeln!(t, "\n## Every number\n")?;
    for (p, v) in reports {
        let results = &v.results;
        let mut metrics: Vec<String> = results.iter().flat_map(|r| r.mean.keys().cloned()).collect();
        metrics.sort();
        metrics.dedup();
        writeln!(t, "### {} — {} ({} cells, {} folds)\n", p.dataset, p.task, v.cells, v.folds.len())?;
        writeln!(t, "| features · head | {} |", metrics.join(" | "))?;
        writeln!(t, "|---|{}", "---|".repeat(metrics.len()))?;
        for r in results {
            let cells: Vec<String> = metrics.iter().map(|m| fmt(cell(r, m))).collect();
            writeln!(t, "| {} | {} |", row_name(r), cells.join(" | "))?;
        }
        if let Some(slug) = &p.figures {
            writeln!(
                t,
                "\n![{} {}: true vs predicted, first held-out fold](images/results/{slug}_map_{}.png)",
                p.dataset,
                p.task,
                v.task.trim_start_matches("classify ").replace(['/', ' '], "_")
            )?;
            writeln!(
                t,
                "\n![confusion, embedding, linear probe](images/results/{slug}_confusion_embedding_linear.png)"
            )?;
        }
        writeln!(t)?;
    }
    writeln!(
        t,
        "Data: STARmap mPFC (Wang et al., Science 2018; layers from Li & Zhou, Genome Biology 2022), osmFISH \
         somatosensory cortex (Codeluppi et al., Nature Methods 2018), Allen/SpaceTx smFISH VISp, intestinal \
         enterocyte zonation (Moor et al., Cell 2018). Reproduce: `{}` (needs ../shared and the model(s) above, made \
         with the commands shown; intermediate files in {}, reused when present — delete the folder to start over).",
        reproduce(a),
        a.output.strip_prefix(root()).unwrap_or(&a.output).display()
    )?;
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The task list parses, every probe names a manifest, `{k}` and `{seeds}` are filled in, and
    /// no two probes share a cache file.
    #[test]
    fn the_task_list_expands_to_distinct_probes() {
        let (probes, mapping) = read_tasks(Path::new("/out"), 3).unwrap();
        assert_eq!(probes.len(), 5 + 4 * 3 + 2);
        assert!(probes.iter().all(|p| !p.task.contains('{') && p.args.iter().all(|a| !a.contains('{'))));
        assert!(probes.iter().any(|p| p.file == Path::new("/out/osmfish_sscortex_r50.h5ad")));
        assert!(
            probes.iter().filter(|p| p.args.contains(&"--seeds".to_owned())).all(|p| p.args.contains(&"3".to_owned()))
        );
        let mut slugs: Vec<String> = probes.iter().map(slug).collect();
        slugs.sort();
        slugs.dedup();
        assert_eq!(slugs.len(), probes.len(), "{slugs:?}");
        assert_eq!(probes.iter().filter(|p| !p.in_summary).count(), 2);
        assert_eq!(mapping.sections.len() * mapping.heads.len() * mapping.center_each.len(), 12);
    }

    fn result(features: &str, head: &str, metric: &str, mean: f64) -> FeatureResult {
        FeatureResult {
            features: features.into(),
            head: head.into(),
            values: [(metric.to_owned(), vec![mean])].into(),
            mean: [(metric.to_owned(), mean)].into(),
            sd: [(metric.to_owned(), 0.01)].into(),
            confusion: None,
            predicted_classes: None,
            predicted_values: None,
        }
    }

    /// The summary reads the typed reports: the best baseline (NichePCA here, not PCA-50), ours
    /// as the best of our rows, the win counted; an undefined (NaN) score prints as a dash.
    #[test]
    fn the_summary_compares_ours_with_the_best_baseline() {
        let probe = Probe {
            task: "layer".into(),
            dataset: "starmap_mpfc".into(),
            file: PathBuf::from("x.h5ad"),
            args: Vec::new(),
            finetune: false,
            figures: None,
            in_summary: true,
        };
        let report = ProbeReport {
            input: "x.h5ad".into(),
            task: "classify layer".into(),
            classes: vec!["L1".into(), "L2/3".into()],
            cells: 100,
            cell_index: (0..100).collect(),
            truth_classes: Some(vec![0; 100]),
            truth_values: None,
            target_columns: Vec::new(),
            folds: vec!["BZ5".into(), "BZ9".into(), "BZ14".into()],
            results: vec![
                result("PCA-50", "linear", "macro_f1", 0.70),
                result("NichePCA (k=20)", "linear", "macro_f1", 0.88),
                result("embedding", "linear", "macro_f1", 0.90),
                result("embedding", "mlp", "macro_f1", f64::NAN),
                result("niche embedding (X_sof_niche)", "linear", "macro_f1", 0.93),
            ],
        };
        let mut map = MapReport { query_cells: 40, reference_cells: 60, ..Default::default() };
        map.insert(Mapper::Ours, "layer", &[("accuracy", 0.75)]);
        map.insert(Mapper::Pca50, "layer", &[("accuracy", 0.70)]);
        let a = EvalArgs {
            checkpoint: PathBuf::from("/nonexistent/model"),
            output: PathBuf::from("/nonexistent/out"),
            shared: PathBuf::from("/nonexistent/shared"),
            finetune_epochs: 0,
            seeds: 1,
            write_docs: false,
            compare: None,
        };
        let text =
            results_markdown(&a, &[(probe, report)], &[("BZ5".into(), "knn".into(), true, map)], None, 0.0).unwrap();
        let row = text.lines().find(|l| l.starts_with("| starmap_mpfc | layer |")).unwrap();
        assert!(row.contains("0.880 (NichePCA (k=20) · linear)"), "{row}");
        assert!(row.contains("| 0.900 | – | 0.930 | – | not run | +0.050 |"), "{row}");
        assert!(text.contains("is **+0.050** macro F1; the goal (>= +0.03) is **met**"), "{text}");
        assert!(text.contains("beats the best baseline on **1 of 1**"), "{text}");
        assert!(text.contains("| BZ5 | neighbours | yes | 40 | 0.750 | 0.700 | – |"), "{text}");
        assert!(text.contains("### starmap_mpfc — layer (100 cells, 3 folds)"), "{text}");
    }
}
