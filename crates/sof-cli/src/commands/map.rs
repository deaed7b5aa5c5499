//! `sof map`: place query cells (dissociated, or a section stripped of coordinates) onto an
//! embedded spatial reference.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use ndarray::{Array2, Axis};
use sof_io::Column;
use sof_io::h5ad::{H5adEditor, H5adReader, UnsValue};
use sof_tasks::mapping::{MapConfig, map_cells};

use crate::util;

/// Place each query cell on a spatial reference from embeddings alone: its most similar
/// reference cells (cosine, softmax-weighted) give the probability of each reference label,
/// the expected coordinates and their spread, and — where the reference carries them (from
/// `sof spatial`) — the predicted neighbourhood composition and density. Both files need the
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
    #[arg(short, long)]
    pub output: PathBuf,
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
    let keep: Vec<usize> = (0..r.n_obs()).filter(|&i| labels[i].is_some()).collect();
    let mut classes: Vec<String> = keep.iter().filter_map(|&i| labels[i].clone()).collect();
    classes.sort();
    classes.dedup();
    let codes: Vec<usize> =
        keep.iter().map(|&i| classes.binary_search(labels[i].as_ref().expect("kept")).expect("a class")).collect();
    let emb_r = r
        .obsm(&args.embedding)
        .with_context(|| format!("{}: embed it first (sof embed)", args.reference.display()))?
        .select(Axis(0), &keep);
    let emb_q =
        q.obsm(&args.embedding).with_context(|| format!("{}: embed it first (sof embed)", args.query.display()))?;
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
    let mut targets: Vec<Vec<f64>> = vec![Vec::new(); keep.len()];
    let n_comp = composition.as_ref().map_or(0, |c| c.ncols());
    for (k, &i) in keep.iter().enumerate() {
        if let Some(c) = &composition {
            targets[k].extend(c.row(i).iter());
        }
        if let Some(d) = &density {
            targets[k].push(d[i]);
        }
    }
    let width = targets.first().map_or(0, Vec::len);
    let targets = (width > 0)
        .then(|| Array2::from_shape_vec((keep.len(), width), targets.into_iter().flatten().collect()))
        .transpose()?;

    let cfg = MapConfig { k: args.k, temperature: args.temperature };
    let m = map_cells(
        emb_r.view(),
        &codes,
        classes.len(),
        xy.view(),
        targets.as_ref().map(|t| t.view()),
        emb_q.view(),
        &cfg,
    );
    let pred = sof_tasks::linear::argmax_rows(&m.label_probabilities);
    let confidence: Vec<f64> = pred.iter().enumerate().map(|(i, &c)| m.label_probabilities[[i, c]]).collect();

    let mut ed = H5adEditor::copy_of(&args.query, &args.output)?;
    let name = format!("sof_{}", args.label);
    ed.put_obs(
        &name,
        &Column::Categorical {
            codes: pred.iter().map(|&c| c as i32).collect(),
            categories: classes.clone(),
            ordered: false,
        },
    )?;
    ed.put_obs(&format!("{name}_confidence"), &Column::Float(confidence.clone()))?;
    ed.put_obsm(&format!("{name}_probabilities"), &m.label_probabilities)?;
    ed.put_uns(&format!("{name}_classes"), &UnsValue::Strings(classes.clone()))?;
    ed.put_obsm("sof_location", &m.location)?;
    ed.put_obs("sof_location_spread", &Column::Float(m.spread.to_vec()))?;
    if let Some(t) = &m.targets {
        if n_comp > 0 {
            ed.put_obsm("sof_composition_predicted", &t.slice(ndarray::s![.., 0..n_comp]).to_owned())?;
            if let Ok(Some(cols)) = sof_io::h5ad::read_uns_strings(&args.reference, "sof_composition_columns") {
                ed.put_uns("sof_composition_columns", &UnsValue::Strings(cols))?;
            }
        }
        if density.is_some() {
            ed.put_obs("sof_density_predicted", &Column::Float(t.column(width - 1).to_vec()))?;
        }
    }
    let mut info = BTreeMap::new();
    info.insert("reference".to_owned(), UnsValue::Str(args.reference.display().to_string()));
    info.insert("label".to_owned(), UnsValue::Str(args.label.clone()));
    info.insert("k".to_owned(), UnsValue::Int(args.k as i64));
    info.insert("temperature".to_owned(), UnsValue::Float(args.temperature));
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
    // Ground truth, when the query has it.
    if let Some(truth) = q.obs()?.get(&args.label) {
        let t = truth.labels();
        let scored: Vec<(usize, usize)> = t
            .iter()
            .zip(&pred)
            .filter_map(|(l, &p)| l.as_ref().and_then(|l| classes.binary_search(l).ok()).map(|c| (c, p)))
            .collect();
        if !scored.is_empty() {
            let (tt, pp): (Vec<usize>, Vec<usize>) = scored.into_iter().unzip();
            util::say(format!(
                "  against the query's own '{}': accuracy {:.3}, macro F1 {:.3} ({} cells)",
                args.label,
                sof_tasks::metrics::accuracy(&tt, &pp),
                sof_tasks::metrics::macro_f1(&tt, &pp, classes.len()),
                tt.len()
            ));
        }
    }
    if q.obsm_keys().contains(&args.spatial_key) {
        let true_xy = q.obsm(&args.spatial_key)?;
        let err: Vec<f64> = (0..true_xy.nrows())
            .map(|i| {
                ((true_xy[[i, 0]] - m.location[[i, 0]]).powi(2) + (true_xy[[i, 1]] - m.location[[i, 1]]).powi(2)).sqrt()
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
