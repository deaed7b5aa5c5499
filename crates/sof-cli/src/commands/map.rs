//! `sof map`: place query cells (dissociated, or a section stripped of coordinates) onto an
//! embedded spatial reference.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use ndarray::{Array2, Axis};
use sof_io::Column;
use sof_io::h5ad::{H5adEditor, H5adReader, UnsValue};
use sof_tasks::mapping::{MapConfig, map_cells, predict_with_head};

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
    let mut classes: Vec<String> = keep.iter().filter_map(|&i| labels[i].clone()).collect();
    classes.sort();
    classes.dedup();
    let codes: Vec<usize> =
        keep.iter().map(|&i| classes.binary_search(labels[i].as_ref().expect("kept")).expect("a class")).collect();
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
    let xy = xy.slice(ndarray::s![.., 0..2]).to_owned();
    // Targets to transfer: composition (obsm) and density (obs), when present.
    let composition =
        r.obsm_keys().contains(&"sof_composition".to_owned()).then(|| r.obsm("sof_composition")).transpose()?;
    let density = obs.get("sof_density").and_then(Column::as_f64);
    let transfer: Vec<Vec<f64>> = args
        .transfer
        .iter()
        .map(|c| {
            obs.get(c)
                .with_context(|| format!("{}: obs has no column '{c}' to transfer", args.reference.display()))?
                .as_f64()
                .with_context(|| {
                    format!("{}: obs '{c}' is not numeric; --transfer takes numbers", args.reference.display())
                })
        })
        .collect::<anyhow::Result<_>>()?;
    let mut targets: Vec<Vec<f64>> = vec![Vec::new(); keep.len()];
    let n_comp = composition.as_ref().map_or(0, |c| c.ncols());
    for (k, &i) in keep.iter().enumerate() {
        if let Some(c) = &composition {
            targets[k].extend(c.row(i).iter());
        }
        if let Some(d) = &density {
            targets[k].push(d[i]);
        }
        targets[k].extend(transfer.iter().map(|t| t[i]));
    }
    let width = targets.first().map_or(0, Vec::len);
    let targets = (width > 0)
        .then(|| Array2::from_shape_vec((keep.len(), width), targets.into_iter().flatten().collect()))
        .transpose()?;

    let cfg = MapConfig { k: args.k, temperature: args.temperature };
    let mut m = map_cells(
        emb_r.view(),
        &codes,
        classes.len(),
        xy.view(),
        targets.as_ref().map(|t| t.view()),
        emb_q.view(),
        &cfg,
    );
    let head = args.head.head(args.seed);
    predict_with_head(
        head.as_deref(),
        emb_r.view(),
        &codes,
        classes.len(),
        targets.as_ref().map(|t| t.view()),
        n_comp,
        emb_q.view(),
        &mut m,
    );
    let pred = sof_tasks::linear::argmax_rows(&m.label_probabilities);
    let confidence: Vec<f64> = pred.iter().enumerate().map(|(i, &c)| m.label_probabilities[[i, c]]).collect();

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
    for (&i, &c) in q_rows.iter().zip(&pred) {
        codes_out[i] = c as i32;
    }
    let mut ed = H5adEditor::copy_of(&args.query, &args.output)?;
    let name = format!("sof_{}", args.label);
    ed.put_obs(&name, &Column::Categorical { codes: codes_out, categories: classes.clone(), ordered: false })?;
    ed.put_obs(&format!("{name}_confidence"), &Column::Float(full(&confidence)))?;
    ed.put_obsm(&format!("{name}_probabilities"), &full_rows(&m.label_probabilities))?;
    ed.put_uns(&format!("{name}_classes"), &UnsValue::Strings(classes.clone()))?;
    ed.put_obsm("sof_location", &full_rows(&m.location))?;
    ed.put_obs("sof_location_spread", &Column::Float(full(&m.spread.to_vec())))?;
    let n_extra = usize::from(density.is_some()) + transfer.len();
    if let Some(t) = &m.targets {
        if n_comp > 0 {
            ed.put_obsm("sof_composition_predicted", &full_rows(&t.slice(ndarray::s![.., 0..n_comp]).to_owned()))?;
            if let Ok(Some(cols)) = sof_io::h5ad::read_uns_strings(&args.reference, "sof_composition_columns") {
                ed.put_uns("sof_composition_columns", &UnsValue::Strings(cols))?;
            }
        }
        if density.is_some() {
            ed.put_obs("sof_density_predicted", &Column::Float(full(&t.column(width - n_extra).to_vec())))?;
        }
        for (j, c) in args.transfer.iter().enumerate() {
            ed.put_obs(
                &format!("sof_{c}_predicted"),
                &Column::Float(full(&t.column(width - transfer.len() + j).to_vec())),
            )?;
        }
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
        emb_q.nrows(),
        keep.len(),
        classes.len(),
        args.label,
        confidence.iter().sum::<f64>() / confidence.len().max(1) as f64,
        args.output.display()
    ));
    // Ground truth, when the query has it: ours, the prior (the reference's most frequent class;
    // its mean value) and, with --pca-baseline, the same mapper on PCA-50 of expression.
    let mut report = BTreeMap::<String, f64>::new();
    report.insert("query_cells".into(), q_rows.len() as f64);
    report.insert("reference_cells".into(), keep.len() as f64);
    let truth = Truth { args: &args, q_obs: &q_obs, q_rows: &q_rows, classes: &classes };
    let transfer_cols = |t: &Option<Array2<f64>>| -> Vec<Vec<f64>> {
        t.as_ref().map_or_else(Vec::new, |t| {
            (0..transfer.len()).map(|j| t.column(width - transfer.len() + j).to_vec()).collect()
        })
    };
    truth.score(&pred, &transfer_cols(&m.targets), "", &mut report);
    let mut counts = vec![0usize; classes.len()];
    codes.iter().for_each(|&c| counts[c] += 1);
    let majority = (0..classes.len()).max_by_key(|&c| counts[c]).unwrap_or(0);
    let means: Vec<Vec<f64>> = transfer
        .iter()
        .map(|t| {
            let v: Vec<f64> = keep.iter().map(|&i| t[i]).filter(|v| v.is_finite()).collect();
            vec![v.iter().sum::<f64>() / v.len().max(1) as f64; q_rows.len()]
        })
        .collect();
    truth.score(&vec![majority; q_rows.len()], &means, "_prior", &mut report);
    if args.pca_baseline {
        let (xr, xq) = (r.read_rows(0..r.n_obs())?, q.read_rows(0..q.n_obs())?);
        let (vr, vq) = (r.var()?.index, q.var()?.index);
        if vr != vq {
            bail!(
                "--pca-baseline: {} and {} have different genes (var names); the expression baseline needs the same panel",
                args.reference.display(),
                args.query.display()
            );
        }
        let (xr, xq) = (sof_tasks::pca::log_normalize(&xr), sof_tasks::pca::log_normalize(&xq));
        let pca = sof_tasks::pca::Pca::fit(&xr, &keep, 50.min(xr.n_cols()).min(keep.len()), 0);
        let (fr, fq) = (pca.transform(&xr, &keep), pca.transform(&xq, &q_rows));
        let mut mp =
            map_cells(fr.view(), &codes, classes.len(), xy.view(), targets.as_ref().map(|t| t.view()), fq.view(), &cfg);
        predict_with_head(
            head.as_deref(),
            fr.view(),
            &codes,
            classes.len(),
            targets.as_ref().map(|t| t.view()),
            n_comp,
            fq.view(),
            &mut mp,
        );
        truth.score(
            &sof_tasks::linear::argmax_rows(&mp.label_probabilities),
            &transfer_cols(&mp.targets),
            "_pca50",
            &mut report,
        );
    }
    if let Some(path) = &args.report {
        util::write_atomic(path, &serde_json::to_string_pretty(&report)?)?;
    }
    if q.obsm_keys().contains(&args.spatial_key) && args.query_where.is_empty() {
        let true_xy = q.obsm(&args.spatial_key)?;
        let err: Vec<f64> = q_rows
            .iter()
            .enumerate()
            .map(|(k, &i)| {
                ((true_xy[[i, 0]] - m.location[[k, 0]]).powi(2) + (true_xy[[i, 1]] - m.location[[k, 1]]).powi(2)).sqrt()
            })
            .collect();
        let mut sorted = err.clone();
        util::say(format!(
            "  against the query's own obsm['{}'] (meaningful only in the reference's coordinate frame): median location error {:.1}, mean {:.1}",
            args.spatial_key,
            util::median(&mut sorted),
            err.iter().sum::<f64>() / err.len().max(1) as f64
        ));
    }
    Ok(())
}

/// The query's own labels and values, to score predictions against.
struct Truth<'a> {
    args: &'a Args,
    q_obs: &'a sof_io::Frame,
    q_rows: &'a [usize],
    classes: &'a [String],
}

impl Truth<'_> {
    /// Scores predicted classes (per mapped query row) and transferred values (per --transfer
    /// column, per mapped row); keys get `suffix`.
    fn score(&self, pred: &[usize], values: &[Vec<f64>], suffix: &str, report: &mut BTreeMap<String, f64>) {
        let label = &self.args.label;
        let what = match suffix {
            "" => "ours",
            "_prior" => "prior",
            _ => "PCA-50",
        };
        if let Some(truth) = self.q_obs.get(label) {
            let t = truth.labels();
            let (tt, pp): (Vec<usize>, Vec<usize>) = self
                .q_rows
                .iter()
                .zip(pred)
                .filter_map(|(&i, &p)| t[i].as_ref().and_then(|l| self.classes.binary_search(l).ok()).map(|c| (c, p)))
                .unzip();
            if !tt.is_empty() {
                let acc = sof_tasks::metrics::accuracy(&tt, &pp);
                let f1 = sof_tasks::metrics::macro_f1(&tt, &pp, self.classes.len());
                report.insert(format!("{label}_accuracy{suffix}"), acc);
                report.insert(format!("{label}_macro_f1{suffix}"), f1);
                util::say(format!(
                    "  {what:>7}: against the query's own '{label}': accuracy {acc:.3}, macro F1 {f1:.3} ({} cells)",
                    tt.len()
                ));
            }
        }
        for (c, col) in self.args.transfer.iter().zip(values) {
            let Some(truth) = self.q_obs.get(c).and_then(Column::as_f64) else { continue };
            let (tt, pp): (Vec<f64>, Vec<f64>) = self
                .q_rows
                .iter()
                .zip(col)
                .filter(|(i, p)| truth[**i].is_finite() && p.is_finite())
                .map(|(&i, &p)| (truth[i], p))
                .unzip();
            if tt.is_empty() {
                continue;
            }
            let (mae, rho) = (sof_tasks::metrics::mae(&tt, &pp), sof_tasks::metrics::spearman(&tt, &pp));
            report.insert(format!("{c}_mae{suffix}"), mae);
            report.insert(format!("{c}_spearman{suffix}"), rho);
            util::say(format!(
                "  {what:>7}: against the query's own '{c}': mean absolute error {mae:.4}, Spearman {rho:.3} ({} cells)",
                tt.len()
            ));
        }
    }
}
