//! `sof map`: place query cells (dissociated, or a section stripped of coordinates) onto an
//! embedded spatial reference.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use ndarray::{Array2, Axis};
use sof_io::Column;
use sof_io::h5ad::{H5adEditor, H5adReader, UnsValue};
use sof_tasks::mapping::{self, MapConfig, MapReport, Mapper, QueryTruth, Reference};

use crate::util;

/// Place each query cell on a spatial reference from embeddings alone: its most similar
/// reference cells (cosine, softmax-weighted) give the expected coordinates and their spread
/// and, with the default `--head knn`, the probability of each reference label and — where the
/// reference carries them (from `sof spatial`) — the predicted neighbourhood composition and
/// density; `--head linear` or `--head mlp` predicts those instead with heads trained on the
/// reference cells' embeddings. Both files need the
/// same embedding (`sof embed` with the same model). Written into a copy of the query:
/// obs `sof_<label>` (+ `_confidence`), obsm `sof_<label>_probabilities` (classes in
/// uns `sof_<label>_classes`), obsm `sof_location`, obs `sof_location_spread`,
/// obsm `sof_composition_predicted`, obs `sof_density_predicted`.
/// When the query has the label column or obsm['spatial'] (a held-out section used as ground
/// truth), the accuracy and the location error are printed.
///
/// Example: sof map --reference spatial_embedded.h5ad --query dissociated_embedded.h5ad
///          --label layer --output dissociated_mapped.h5ad
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Embedded spatial .h5ad with coordinates (obsm) and the label column.
    #[arg(long)]
    pub reference: PathBuf,
    /// Embedded query .h5ad.
    #[arg(long)]
    pub query: PathBuf,
    /// Reference obs column to transfer.
    #[arg(long)]
    pub label: String,
    #[arg(long, default_value = "X_sof")]
    pub embedding: String,
    /// obsm key of the reference coordinates.
    #[arg(long, default_value = "spatial")]
    pub spatial_key: String,
    /// Reference cells per query cell.
    #[arg(long, default_value_t = 30)]
    pub k: usize,
    /// Softmax temperature over cosine similarity.
    #[arg(long, default_value_t = 0.05)]
    pub temperature: f64,
    /// Use only reference cells where an obs column has (`col=value`) or has not (`col!=value`)
    /// a value; repeat for several conditions.
    #[arg(long = "reference-where")]
    pub reference_where: Vec<String>,
    /// Map only these query cells (same syntax); the others get missing predictions.
    #[arg(long = "query-where")]
    pub query_where: Vec<String>,
    /// Numeric reference obs columns to transfer too (softmax-weighted mean), written as obs
    /// `sof_<col>_predicted`; scored against the query's own column when it has one.
    #[arg(long)]
    pub transfer: Vec<String>,
    /// Also map with PCA-50 of log-normalized expression (fitted on the reference; both files
    /// need the same genes) and report its scores beside ours.
    #[arg(long)]
    pub pca_baseline: bool,
    /// What predicts the label, composition, density and --transfer columns: the softmax-weighted
    /// neighbours (knn), or a head trained on the reference cells (linear: whitened logistic /
    /// softmax-linear / ridge; mlp: one hidden layer). Locations always come from the neighbours.
    #[arg(long, value_enum, default_value = "knn")]
    pub head: MapHead,
    /// Seed of the MLP head.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also write the scores against the query's ground truth as JSON.
    #[arg(long)]
    pub report: Option<PathBuf>,
    #[arg(short, long)]
    pub output: PathBuf,
}

/// How labels and values are predicted for query cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MapHead {
    /// Softmax-weighted mean over the most similar reference cells.
    Knn,
    /// Heads trained on the reference: logistic regression, softmax-linear, ridge.
    Linear,
    /// One-hidden-layer MLP heads trained on the reference.
    Mlp,
}

impl MapHead {
    /// The trained head, or None for the neighbour vote (`map_cells` already gives it).
    fn head(self, seed: u64) -> Option<Box<dyn sof_tasks::Head>> {
        match self {
            MapHead::Knn => None,
            MapHead::Linear => Some(Box::new(sof_tasks::LinearHead::default())),
            MapHead::Mlp => {
                Some(Box::new(sof_tasks::MlpHead(sof_tasks::mlp::MlpConfig { seed, ..Default::default() })))
            }
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.temperature.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) || args.k == 0 {
        bail!("--temperature must be > 0 and --k at least 1");
    }
    let r = H5adReader::open(&args.reference)?;
    let q = H5adReader::open(&args.query)?;
    let obs = r.obs()?;
    let col = obs
        .get(&args.label)
        .with_context(|| format!("{}: obs has no column '{}'", args.reference.display(), args.label))?;
    let labels = col.labels();
    let allowed = util::filter_rows(&obs, &args.reference, &args.reference_where)?;
    let keep: Vec<usize> = (0..r.n_obs()).filter(|&i| labels[i].is_some() && allowed[i]).collect();
    if keep.is_empty() {
        bail!("{}: no reference cell has a '{}' (after --reference-where)", args.reference.display(), args.label);
    }
    let q_obs = q.obs()?;
    let q_rows: Vec<usize> = {
        let ok = util::filter_rows(&q_obs, &args.query, &args.query_where)?;
        (0..q.n_obs()).filter(|&i| ok[i]).collect()
    };
    let emb_r = r
        .obsm(&args.embedding)
        .with_context(|| format!("{}: embed it first (sof embed)", args.reference.display()))?
        .select(Axis(0), &keep);
    let emb_q = q
        .obsm(&args.embedding)
        .with_context(|| format!("{}: embed it first (sof embed)", args.query.display()))?
        .select(Axis(0), &q_rows);
    if emb_r.ncols() != emb_q.ncols() {
        bail!(
            "{} has {}-d embeddings but {} has {}-d: embed both with the same model",
            args.reference.display(),
            emb_r.ncols(),
            args.query.display(),
            emb_q.ncols()
        );
    }
    let xy = r.obsm(&args.spatial_key)?.select(Axis(0), &keep);
    let kept_labels: Vec<String> = keep.iter().map(|&i| labels[i].clone().expect("kept")).collect();
    let mut reference = Reference::new(emb_r, &kept_labels, xy.view())
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.reference.display()))?;
    // Values to transfer: composition (obsm) and density (obs), when present.
    if r.obsm_keys().contains(&"sof_composition".to_owned()) {
        reference.composition = Some(r.obsm("sof_composition")?.select(Axis(0), &keep));
    }
    reference.density = obs.get("sof_density").and_then(Column::as_f64).map(|d| keep.iter().map(|&i| d[i]).collect());
    for c in &args.transfer {
        let v = obs
            .get(c)
            .with_context(|| format!("{}: obs has no column '{c}' to transfer", args.reference.display()))?
            .as_f64()
            .with_context(|| {
                format!("{}: obs '{c}' is not numeric; --transfer takes numbers", args.reference.display())
            })?;
        reference.transfer.push((c.clone(), keep.iter().map(|&i| v[i]).collect()));
    }
    let classes = reference.classes.clone();
    let cfg = MapConfig { k: args.k, temperature: args.temperature };
    let head = args.head.head(args.seed);
    let t = mapping::transfer(&reference, emb_q.view(), &cfg, head.as_deref())?;

    // Results for the mapped query rows, missing for the others.
    let n_q = q.n_obs();
    let full = |v: &[f64]| -> Vec<f64> {
        let mut out = vec![f64::NAN; n_q];
        for (&i, &x) in q_rows.iter().zip(v) {
            out[i] = x;
        }
        out
    };
    let full_rows = |m: &Array2<f64>| -> Array2<f64> {
        let mut out = Array2::from_elem((n_q, m.ncols()), f64::NAN);
        for (k, &i) in q_rows.iter().enumerate() {
            out.row_mut(i).assign(&m.row(k));
        }
        out
    };
    let mut codes_out = vec![-1i32; n_q];
    for (&i, &c) in q_rows.iter().zip(&t.predicted) {
        codes_out[i] = c as i32;
    }
    let mut ed = H5adEditor::copy_of(&args.query, &args.output)?;
    let name = format!("sof_{}", args.label);
    ed.put_obs(&name, &Column::Categorical { codes: codes_out, categories: classes.clone(), ordered: false })?;
    ed.put_obs(&format!("{name}_confidence"), &Column::Float(full(&t.confidence)))?;
    ed.put_obsm(&format!("{name}_probabilities"), &full_rows(&t.mapping.label_probabilities))?;
    ed.put_uns(&format!("{name}_classes"), &UnsValue::Strings(classes.clone()))?;
    ed.put_obsm("sof_location", &full_rows(&t.mapping.location))?;
    ed.put_obs("sof_location_spread", &Column::Float(full(&t.mapping.spread.to_vec())))?;
    if let Some(c) = &t.composition {
        ed.put_obsm("sof_composition_predicted", &full_rows(c))?;
        if let Ok(Some(cols)) = sof_io::h5ad::read_uns_strings(&args.reference, "sof_composition_columns") {
            ed.put_uns("sof_composition_columns", &UnsValue::Strings(cols))?;
        }
    }
    if let Some(d) = &t.density {
        ed.put_obs("sof_density_predicted", &Column::Float(full(d)))?;
    }
    for (c, v) in args.transfer.iter().zip(&t.transferred) {
        ed.put_obs(&format!("sof_{c}_predicted"), &Column::Float(full(v)))?;
    }
    let mut info = BTreeMap::new();
    info.insert("reference".to_owned(), UnsValue::Str(args.reference.display().to_string()));
    info.insert("label".to_owned(), UnsValue::Str(args.label.clone()));
    info.insert("k".to_owned(), UnsValue::Int(args.k as i64));
    info.insert("temperature".to_owned(), UnsValue::Float(args.temperature));
    info.insert("head".to_owned(), UnsValue::Str(format!("{:?}", args.head).to_lowercase()));
    ed.put_uns("sof_map", &UnsValue::Dict(info))?;
    ed.commit()?;

    util::say(format!(
        "{} query cells mapped onto {} reference cells ({} classes of '{}'); mean confidence {:.3}; written to {}",
        q_rows.len(),
        keep.len(),
        classes.len(),
        args.label,
        t.confidence.iter().sum::<f64>() / t.confidence.len().max(1) as f64,
        args.output.display()
    ));
    // Ground truth, when the query has it: ours, the prior and, with --pca-baseline, the same
    // mapper on PCA-50 of expression.
    let truth = QueryTruth {
        labels: q_obs.get(&args.label).map(|c| {
            let l = c.labels();
            q_rows.iter().map(|&i| l[i].clone()).collect()
        }),
        values: args
            .transfer
            .iter()
            .filter_map(|c| {
                q_obs.get(c).and_then(Column::as_f64).map(|v| (c.clone(), q_rows.iter().map(|&i| v[i]).collect()))
            })
            .collect(),
    };
    let mut report = MapReport { query_cells: q_rows.len(), reference_cells: keep.len(), ..Default::default() };
    let mut scores = mapping::score(Mapper::Ours, &reference, &args.label, &truth, &t.predicted, &t.transferred);
    let (prior_classes, prior_values) = mapping::prior(&reference, q_rows.len());
    scores.extend(mapping::score(Mapper::Prior, &reference, &args.label, &truth, &prior_classes, &prior_values));
    if args.pca_baseline {
        let (vr, vq) = (r.var()?.index, q.var()?.index);
        if vr != vq {
            bail!(
                "--pca-baseline: {} and {} have different genes (var names); the expression baseline needs the same panel",
                args.reference.display(),
                args.query.display()
            );
        }
        let (xr, xq) = (r.read_rows(0..r.n_obs())?, q.read_rows(0..q.n_obs())?);
        let (fr, fq) = mapping::pca_features(&xr, &keep, &xq, &q_rows, 0)?;
        let expression = Reference { embedding: fr, ..reference.clone() };
        let tp = mapping::transfer(&expression, fq.view(), &cfg, head.as_deref())?;
        scores.extend(mapping::score(Mapper::Pca50, &reference, &args.label, &truth, &tp.predicted, &tp.transferred));
    }
    for s in &scores {
        report.insert(s);
        let (what, (m1, v1), (m2, v2)) = (s.mapper.name(), s.metrics[0], s.metrics[1]);
        let m = |m: &str| {
            match m {
                "mae" => "mean absolute error",
                "macro_f1" => "macro F1",
                other => other,
            }
            .to_owned()
        };
        let prec = if m1 == "mae" { 4 } else { 3 };
        util::say(format!(
            "  {what:>7}: against the query's own '{}': {} {v1:.prec$}, {} {v2:.3} ({} cells)",
            s.column,
            m(m1),
            if m2 == "spearman" { "Spearman".to_owned() } else { m(m2) },
            s.cells
        ));
    }
    if let Some(path) = &args.report {
        util::write_atomic(path, &serde_json::to_string_pretty(&report)?)?;
    }
    if q.obsm_keys().contains(&args.spatial_key) && args.query_where.is_empty() {
        let true_xy = q.obsm(&args.spatial_key)?;
        if true_xy.ncols() >= 2 {
            let (median, mean) = mapping::location_error(t.mapping.location.view(), true_xy.view());
            util::say(format!(
                "  against the query's own obsm['{}'] (meaningful only in the reference's coordinate frame): median location error {median:.1}, mean {mean:.1}",
                args.spatial_key
            ));
        }
    }
    Ok(())
}
