//! The demo's report: one self-contained HTML page (figures embedded as PNG data) plus the PNG
//! files themselves, each figure with one line saying what it shows.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use sof_io::Column;
use sof_io::h5ad::H5adReader;
use sof_pipeline::view::{REPRESENTATIONS, ViewSummary};
use sof_plot::{CategoricalMaps, ConfusionMatrix, LineChart, PALETTE, Series};
use sof_tasks::probe::{FeatureResult, ProbeReport};

use crate::util;

/// Where the demo's results are.
#[derive(Debug)]
pub struct Inputs {
    pub dir: PathBuf,
    /// The pretraining run folder (loss.png, summary.json).
    pub run_dir: PathBuf,
    /// The embedded spatial reference the probes ran on.
    pub reference: PathBuf,
    /// `<task>.json` from `sof probe`.
    pub probes_dir: PathBuf,
    /// The dissociated sample after `sof map`.
    pub mapped: Option<PathBuf>,
    /// Layer accuracy of the dissociated cells tokenized as the reference's cells.
    pub placement_as_reference: Option<f64>,
    /// Layer accuracy of the same mapper on PCA-50 of the genes both samples measure, and how
    /// many genes that is.
    pub placement_pca: Option<(f64, usize)>,
    /// Layer accuracy of ours and of that baseline with each file centred on its own mean
    /// (`sof map --center-each`).
    pub placement_centered: Option<(f64, f64)>,
    /// Every sample in one UMAP ([`sof_pipeline::view::embedding_view`]).
    pub view: Option<ViewSummary>,
    /// The opening paragraph (what the data is).
    pub intro: String,
}

struct Figure {
    file: String,
    title: String,
    caption: String,
}

fn load<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    serde_json::from_str(&std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?)
        .with_context(|| format!("{} is not the JSON expected here", path.display()))
}

fn feature<'a>(probe: &'a ProbeReport, prefix: &str) -> Option<&'a FeatureResult> {
    probe.results.iter().find(|r| r.features.starts_with(prefix))
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Text escaped for HTML content and quoted attribute values.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

/// Maps of the reference coloured by the truth and by the embedding probe's held-out
/// predictions.
fn label_maps(inputs: &Inputs, task: &str, xy: &ndarray::Array2<f64>, dir: &Path) -> anyhow::Result<Option<Figure>> {
    let path = inputs.probes_dir.join(format!("{task}.json"));
    if !path.exists() {
        return Ok(None);
    }
    let probe: ProbeReport = load(&path)?;
    let Some(emb) = feature(&probe, "embedding") else { return Ok(None) };
    let cells = &probe.cell_index;
    let (Some(truth), Some(pred)) = (&probe.truth_classes, &emb.predicted_classes) else { return Ok(None) };
    let classes = probe.classes.clone();
    let pts: Vec<(f64, f64)> = cells.iter().map(|&i| (xy[[i, 0]], xy[[i, 1]])).collect();
    let tested: Vec<usize> = (0..cells.len()).filter(|&k| pred[k] >= 0).collect();
    let file = format!("{task}_map.png");
    CategoricalMaps {
        categories: classes.clone(),
        panels: vec![
            (format!("true {task}"), pts.clone(), truth.clone()),
            (
                format!("predicted {task} (held-out sections)"),
                tested.iter().map(|&k| pts[k]).collect(),
                tested.iter().map(|&k| pred[k] as usize).collect(),
            ),
        ],
    }
    .write_png(&dir.join(&file), 520, 480)?;
    let f1 = emb.mean.get("macro_f1").copied().unwrap_or(f64::NAN);
    Ok(Some(Figure {
        file,
        title: format!("{task}: truth and prediction in space"),
        caption: format!(
            "Each dot is a cell of the reference (its sections overlaid); left its true {task}, right the linear probe's prediction from the cell's embedding when its section was held out (macro F1 {f1:.3})."
        ),
    }))
}

/// Panel titles of the view's representations.
fn representation_title(name: &str, view: &ViewSummary) -> String {
    match name {
        "X_sof" => "X_sof (every cell)".into(),
        "X_sof_niche" => "X_sof_niche (cells with coordinates)".into(),
        _ => format!("PCA of the {} shared genes", view.shared_genes),
    }
}

/// What to look for in the view coloured by `label`.
fn view_caption(label: &str, view: &ViewSummary) -> String {
    let numbers: Vec<String> = REPRESENTATIONS
        .iter()
        .filter_map(|(rep, _)| view.get(label, rep).map(|m| format!("{rep} {:.2}", m.observed)))
        .collect();
    let random = view.expected(label);
    let purity = format!(
        "kNN purity (the share of a cell's {} nearest neighbours, in the full embedding, with its own {label}): {}; random mixing gives {random:.2}.",
        view.k,
        numbers.join(", ")
    );
    let look = match label {
        "modality" => "Do spatial and dissociated cells share one space? Colours mixed within each cluster mean like cells sit together whatever the modality, with no integration step; islands of one colour mean the embedding tells modalities apart.".to_owned(),
        "technology" => "Do technologies mix? Within each cluster the colours should mix; islands of one technology are a batch effect. The niche embedding averages each cell with neighbours of its own section, so of one technology: the average keeps what a technology adds to every cell and smooths away the differences between cells, so technologies separate more there.".to_owned(),
        _ => format!("Cells of one {label} should sit together (purity well above random); the niche embedding averages each cell with its spatial neighbours, so tissue {label}s stand out more there."),
    };
    format!("{look} Each dot is a cell; axes have no units. {purity}")
}

/// The view's figures (one PNG per colouring) and the purity table.
fn embedding_view(view: &ViewSummary, dir: &Path) -> anyhow::Result<(Vec<Figure>, String)> {
    let reader = H5adReader::open(&view.file)?;
    let obs = reader.obs()?;
    let keys = reader.obsm_keys();
    let mut layouts = Vec::new();
    for (rep, key) in REPRESENTATIONS {
        if keys.iter().any(|k| k == key) {
            layouts.push((rep, unit_square(&reader.obsm(key)?)));
        }
    }
    // A seeded draw order, so that no colour is painted over all the others.
    let n = reader.n_obs();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17));
    let labels = view.labels();
    let mut figures = Vec::new();
    for label in &labels {
        let Some(Column::Categorical { codes, categories, .. }) = obs.get(label) else { continue };
        let panels = layouts
            .iter()
            .map(|(rep, xy)| {
                let cells: Vec<usize> =
                    order.iter().copied().filter(|&i| codes[i] >= 0 && xy[[i, 0]].is_finite()).collect();
                (
                    representation_title(rep, view),
                    cells.iter().map(|&i| (xy[[i, 0]], xy[[i, 1]])).collect(),
                    cells.iter().map(|&i| codes[i] as usize).collect(),
                )
            })
            .collect();
        let file = format!("umap_{}.png", label.replace(|c: char| !c.is_ascii_alphanumeric(), "_"));
        CategoricalMaps { categories: categories.clone(), panels }.write_png(&dir.join(&file), 400, 420)?;
        figures.push(Figure {
            file,
            title: format!("The embedding by {label} (UMAP)"),
            caption: view_caption(label, view),
        });
    }
    let mut table = format!(
        "<h2>How mixed the embedding is</h2><p>kNN purity: the share of a cell's {} nearest neighbours (in the full representation, over {} cells) that share its label. Near the random value a label is mixed (what one wants of modality and technology); near 1 it separates (what one wants of layers and cell types).</p>\
         <table><tr><th>label</th><th>random</th><th>X_sof</th><th>X_sof_niche</th><th>PCA of shared genes</th></tr>",
        view.k, view.cells
    );
    for label in &labels {
        let cell = |rep: &str| view.get(label, rep).map_or("–".to_owned(), |m| format!("{:.3}", m.observed));
        let random = view.expected(label);
        let _ = write!(
            table,
            "<tr><td>{}</td><td>{random:.3}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(label),
            cell("X_sof"),
            cell("X_sof_niche"),
            cell("PCA")
        );
    }
    table.push_str("</table>");
    Ok((figures, table))
}

/// Each axis of a layout scaled to [0, 1] (UMAP axes have no units; panels share one frame).
fn unit_square(xy: &ndarray::Array2<f64>) -> ndarray::Array2<f64> {
    let mut out = xy.clone();
    for mut col in out.columns_mut() {
        let (lo, hi) =
            col.iter().filter(|v| v.is_finite()).fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
        let span = if hi > lo { hi - lo } else { 1.0 };
        col.mapv_inplace(|v| (v - lo) / span);
    }
    out
}

/// Writes the report into `inputs.dir`; returns the HTML path.
pub fn write(inputs: &Inputs) -> anyhow::Result<PathBuf> {
    let dir = &inputs.dir;
    let _writer = sof_io::OutputLock::acquire(dir)?;
    std::fs::create_dir_all(dir)?;
    let reader = H5adReader::open(&inputs.reference)?;
    let xy = reader.obsm("spatial")?;
    let mut figures = Vec::new();

    // 1. Loss curve.
    let loss = inputs.run_dir.join("loss.png");
    if loss.exists() {
        std::fs::copy(&loss, dir.join("loss.png"))?;
        figures.push(Figure {
            file: "loss.png".into(),
            title: "Pretraining".into(),
            caption: "Masked-token cross-entropy during pretraining (training and held-out cells) against the unigram-frequency baseline; lower is better.".into(),
        });
    }
    // 2. The embedding itself: every sample in one UMAP, one picture per colouring.
    let mut mixing_table = String::new();
    if let Some(view) = &inputs.view {
        let (figs, table) = embedding_view(view, dir)?;
        figures.extend(figs);
        mixing_table = table;
    }
    // 3-4. Layer and niche maps.
    for task in ["layer", "niche", "cell_type"] {
        figures.extend(label_maps(inputs, task, &xy, dir)?);
    }
    // 4. Layer confusion matrix.
    if let Ok(probe) = load::<ProbeReport>(&inputs.probes_dir.join("layer.json"))
        && let Some(emb) = feature(&probe, "embedding")
        && let Some(counts) = emb.confusion.clone()
    {
        let classes = probe.classes.clone();
        ConfusionMatrix { title: "layer: truth (rows) vs embedding probe".into(), classes, counts }
            .write_png(&dir.join("layer_confusion.png"), 420)?;
        figures.push(Figure {
            file: "layer_confusion.png".into(),
            title: "Layer confusion".into(),
            caption: "Cells per true layer (rows) and predicted layer (columns) on held-out sections; mistakes between neighbouring layers sit next to the diagonal.".into(),
        });
    }
    // 5. Density: predicted vs true.
    if let Ok(probe) = load::<ProbeReport>(&inputs.probes_dir.join("density.json"))
        && let Some(emb) = feature(&probe, "embedding")
        && let (Some(truth), Some(pred)) = (&probe.truth_values, &emb.predicted_values)
    {
        let pts: Vec<(f64, f64)> =
            truth.iter().zip(pred.iter()).filter(|(_, p)| p[0].is_finite()).map(|(t, p)| (t[0], p[0])).collect();
        let (lo, hi) = pts.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
        LineChart {
            title: "Local density: predicted vs true".into(),
            x_label: "true neighbours within the radius".into(),
            y_label: "predicted from the embedding".into(),
            series: vec![
                Series::points("cells (held-out sections)", pts, PALETTE[0]),
                Series::line("y = x", vec![(lo, lo), (hi, hi)], sof_plot::GREY).dashed(),
            ],
        }
        .write_png(&dir.join("density.png"), 620, 520)?;
        let r2 = emb.mean.get("r2").copied().unwrap_or(f64::NAN);
        figures.push(Figure {
            file: "density.png".into(),
            title: "Density".into(),
            caption: format!("Each dot is a cell: its true neighbour count within the radius against the ridge probe's prediction from its embedding on a held-out section (R² {r2:.3}); on the dashed line the prediction is exact."),
        });
    }
    // 6. Dissociated cells placed on the sections.
    let mut mapping_note = String::new();
    if let Some(mapped) = &inputs.mapped {
        let m = H5adReader::open(mapped)?;
        let obs = m.obs()?;
        if let (Some(t), Some(p)) = (obs.get("layer"), obs.get("sof_layer")) {
            let classes: Vec<String> =
                p.value_counts().keys().cloned().chain(t.value_counts().keys().cloned()).collect();
            let mut classes = classes;
            classes.sort();
            classes.dedup();
            let idx = |s: &str| classes.binary_search_by(|c| c.as_str().cmp(s)).ok();
            let mut counts = vec![vec![0u64; classes.len()]; classes.len()];
            let (t, p) = (t.labels(), p.labels());
            let (mut hits, mut n) = (0, 0);
            for (a, b) in t.iter().zip(&p) {
                if let (Some(a), Some(b)) = (a.as_deref().and_then(idx), b.as_deref().and_then(idx)) {
                    counts[a][b] += 1;
                    hits += usize::from(a == b);
                    n += 1;
                }
            }
            ConfusionMatrix { title: "dissociated cells: true layer (rows) vs placed layer".into(), classes, counts }
                .write_png(&dir.join("dissociated_placement.png"), 420)?;
            let acc = hits as f64 / n.max(1) as f64;
            let _ = write!(mapping_note, "{n} dissociated cells placed with layer accuracy {acc:.3}.");
            if let Some(a) = inputs.placement_as_reference {
                let _ = write!(
                    mapping_note,
                    " Tokenized as the reference's cells (over its panel's genes, behind its technology and the spatial modality token) the same cells are placed with layer accuracy {a:.3}."
                );
            }
            if let Some((a, genes)) = inputs.placement_pca {
                let _ = write!(
                    mapping_note,
                    " The baseline, the same mapper on PCA-50 of the {genes} genes both samples measure: {a:.3}."
                );
            }
            if let Some((a, pca)) = inputs.placement_centered {
                let _ = write!(
                    mapping_note,
                    " With each file centred on its own mean first (<code>sof map --center-each</code>, which removes a shift the technology puts on every cell): ours {a:.3}, the baseline {pca:.3}."
                );
            }
            figures.push(Figure {
                file: "dissociated_placement.png".into(),
                title: "Placing dissociated cells".into(),
                caption: format!("Dissociated cells (no coordinates) placed on the spatial sections by embedding similarity: their true layer (rows, known in the synthetic tissue) against the layer of the place they were mapped to (accuracy {acc:.3})."),
            });
        }
    }

    // Tables: every probe beside its baselines, and composition error per cell type.
    let mut table = String::from(
        "<table><tr><th>task</th><th>metric</th><th>embedding</th><th>niche embedding</th><th>PCA-50</th><th>PCA-best</th><th>raw expression</th>\
         <th>NichePCA-best</th><th>BANKSY-best</th></tr>",
    );
    let mut composition_rows = String::new();
    for task in ["layer", "niche", "cell_type", "density", "composition"] {
        let Ok(probe) = load::<ProbeReport>(&inputs.probes_dir.join(format!("{task}.json"))) else { continue };
        let metric = if probe.is_classification() { "macro_f1" } else { "r2" };
        let cell = |prefix: &str| {
            feature(&probe, prefix)
                .and_then(|r| r.mean.get(metric).copied())
                .map_or("–".to_owned(), |v| format!("{v:.3}"))
        };
        let _ = write!(
            table,
            "<tr><td>{task}</td><td>{metric}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            cell("embedding"),
            cell("niche"),
            cell("PCA-50"),
            cell("PCA-best"),
            cell("raw"),
            cell("NichePCA"),
            cell("BANKSY")
        );
        if task == "composition" {
            let names = probe.target_columns.clone();
            let truth = probe.truth_values.clone().unwrap_or_default();
            let mae = |prefix: &str| -> Vec<f64> {
                let Some(r) = feature(&probe, prefix) else { return Vec::new() };
                let pred = r.predicted_values.clone().unwrap_or_default();
                (0..names.len())
                    .map(|c| {
                        let e: Vec<f64> = truth
                            .iter()
                            .zip(&pred)
                            .filter(|(_, p)| p[c].is_finite())
                            .map(|(t, p)| (t[c] - p[c]).abs())
                            .collect();
                        e.iter().sum::<f64>() / e.len().max(1) as f64
                    })
                    .collect()
            };
            let (a, b) = (mae("embedding"), mae("PCA-50"));
            for (i, name) in names.iter().enumerate() {
                let _ = write!(
                    composition_rows,
                    "<tr><td>{}</td><td>{:.4}</td><td>{:.4}</td></tr>",
                    escape(name),
                    a.get(i).copied().unwrap_or(f64::NAN),
                    b.get(i).copied().unwrap_or(f64::NAN)
                );
            }
        }
    }
    table.push_str("</table>");

    let pretrain = load::<sof_pretrain::Summary>(&inputs.run_dir.join("summary.json")).ok();
    let mut html = String::from(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>SpatialOmics-Foundation demo report</title>\
         <style>body{font-family:sans-serif;max-width:1150px;margin:2em auto;color:#222}figure{margin:2em 0}\
         img{max-width:100%;border:1px solid #ddd}figcaption{color:#444;margin-top:.4em}\
         table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}\
         td:first-child,th:first-child{text-align:left}</style></head><body>",
    );
    let _ = write!(html, "<h1>SpatialOmics-Foundation demo</h1><p>{}</p>", escape(&inputs.intro));
    if let Some(p) = &pretrain {
        let _ = write!(
            html,
            "<p>Pretraining: {} steps, {} parameters; held-out masked-token loss {:.3} nats (unigram baseline {:.3}), accuracy {:.1}% (most frequent token {:.1}%).</p>",
            p.steps_done,
            p.parameters,
            p.final_validation_loss.unwrap_or(f64::NAN),
            p.baselines.unigram_loss,
            100.0 * p.final_validation_accuracy.unwrap_or(f64::NAN),
            100.0 * p.baselines.most_frequent_accuracy
        );
    }
    html.push_str("<h2>Probes beside the baselines (held-out sections)</h2>");
    html.push_str(&table);
    html.push_str(&mixing_table);
    if !mapping_note.is_empty() {
        let _ = write!(html, "<p>{}</p>", escape(&mapping_note));
    }
    for f in &figures {
        let bytes = std::fs::read(dir.join(&f.file))?;
        let _ = write!(
            html,
            "<figure><h2>{}</h2><img alt=\"{}\" src=\"data:image/png;base64,{}\"><figcaption>{}</figcaption></figure>",
            escape(&f.title),
            escape(&f.title),
            base64(&bytes),
            escape(&f.caption)
        );
    }
    if !composition_rows.is_empty() {
        let _ = write!(
            html,
            "<h2>Composition error by cell type</h2><p>Mean absolute error of the predicted neighbourhood proportion of each cell type (held-out sections).</p><table><tr><th>cell type</th><th>embedding</th><th>PCA-50</th></tr>{composition_rows}</table>"
        );
    }
    html.push_str(
        "<script>window.addEventListener('load',function(){var i=Array.from(document.images);\
         var ok=i.every(function(x){return x.complete&&x.naturalWidth>0});\
         document.body.setAttribute('data-images',ok?String(i.length):'broken');});</script></body></html>",
    );
    let path = dir.join("index.html");
    util::write_atomic(&path, &html)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_the_standard() {
        assert_eq!(super::base64(b""), "");
        assert_eq!(super::base64(b"f"), "Zg==");
        assert_eq!(super::base64(b"fo"), "Zm8=");
        assert_eq!(super::base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn escape_covers_attribute_quotes() {
        assert_eq!(super::escape(r#"a<b>&"c" 'd'"#), "a&lt;b&gt;&amp;&quot;c&quot; &#39;d&#39;");
    }
}
