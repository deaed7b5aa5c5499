//! Mapping query cells onto an embedded spatial reference as one library call
//! ([`map_h5ad`] -> [`MapOutcome`]): the reference cells with a label, the transfer of labels,
//! locations, composition, density and chosen columns, the copy of the query with the
//! predictions, and the scores against the query's own truth where it has one. `sof map`
//! parses its flags into a [`MapSpec`], calls it and prints the outcome.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;

use ndarray::{Array2, Axis};
use sof_io::Column;
use sof_io::h5ad::{H5adEditor, H5adReader, UnsValue};
use sof_tasks::mapping::{self, MapConfig, MapReport, Mapper, QueryTruth, Reference, Score};

use crate::cells::filter_rows;
use crate::error::{PipelineError, Result};

/// What predicts the labels and values of query cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapHead {
    /// Softmax-weighted mean over the most similar reference cells.
    Knn,
    /// Heads trained on the reference: logistic regression, softmax-linear, ridge.
    Linear,
    /// One-hidden-layer MLP heads trained on the reference.
    Mlp,
}

impl MapHead {
    /// The trained head, or None for the neighbour vote (`transfer` already gives it).
    fn head(self, seed: u64) -> Option<Box<dyn sof_tasks::Head>> {
        match self {
            MapHead::Knn => None,
            MapHead::Linear => Some(Box::new(sof_tasks::LinearHead::default())),
            MapHead::Mlp => {
                Some(Box::new(sof_tasks::MlpHead(sof_tasks::mlp::MlpConfig { seed, ..Default::default() })))
            }
        }
    }

    fn name(self) -> &'static str {
        match self {
            MapHead::Knn => "knn",
            MapHead::Linear => "linear",
            MapHead::Mlp => "mlp",
        }
    }
}

/// One mapping of a query file onto a reference file.
#[derive(Debug, Clone)]
pub struct MapSpec {
    /// Embedded spatial .h5ad with coordinates and the label column.
    pub reference: PathBuf,
    /// Embedded query .h5ad.
    pub query: PathBuf,
    /// Reference obs column to transfer.
    pub label: String,
    /// obsm key of the embedding, in both files.
    pub embedding: String,
    /// obsm key of the reference coordinates.
    pub spatial_key: String,
    pub config: MapConfig,
    /// `col=value` / `col!=value` conditions choosing reference cells.
    pub reference_filters: Vec<String>,
    /// Conditions choosing the query cells to map; the others get missing predictions.
    pub query_filters: Vec<String>,
    /// Numeric reference obs columns to transfer too.
    pub transfer: Vec<String>,
    /// Also map with PCA-50 of log-normalized expression over the genes both files measure.
    pub pca_baseline: bool,
    pub head: MapHead,
    /// Seed of the MLP head.
    pub seed: u64,
    /// The copy of the query with the predictions.
    pub output: PathBuf,
    /// Replace an existing output file that sof did not write ([`sof_io::h5ad::check_replace`]).
    pub force: bool,
}

impl MapSpec {
    /// Map `query` onto `reference` by `label` with obsm['X_sof'], 30 neighbours at temperature
    /// 0.05, into `output`.
    pub fn new(
        reference: impl Into<PathBuf>,
        query: impl Into<PathBuf>,
        label: &str,
        output: impl Into<PathBuf>,
    ) -> Self {
        MapSpec {
            reference: reference.into(),
            query: query.into(),
            label: label.to_owned(),
            embedding: "X_sof".into(),
            spatial_key: "spatial".into(),
            config: MapConfig::default(),
            reference_filters: Vec::new(),
            query_filters: Vec::new(),
            transfer: Vec::new(),
            pca_baseline: false,
            head: MapHead::Knn,
            seed: 0,
            output: output.into(),
            force: false,
        }
    }
}

/// What a mapping did and how it scored.
#[derive(Debug, Clone)]
pub struct MapOutcome {
    /// The scores against the query's truth (empty where it has none).
    pub report: MapReport,
    /// The same scores, one per mapper and column (ours, the prior, PCA-50).
    pub scores: Vec<Score>,
    /// The reference's classes of the label.
    pub classes: Vec<String>,
    /// Mean probability of the predicted class.
    pub mean_confidence: f64,
    /// Median and mean distance between predicted and true locations, when the query has
    /// coordinates and no query filter (meaningful only in the reference's frame).
    pub location_error: Option<(f64, f64)>,
    /// Genes the PCA-50 baseline read (those both files measure), when it ran.
    pub pca_shared_genes: Option<usize>,
}

/// Maps `spec.query` onto `spec.reference` and writes the query's copy with the predictions:
/// obs `sof_<label>` (+ `_confidence`), obsm `sof_<label>_probabilities` (classes in uns
/// `sof_<label>_classes`), obsm `sof_location`, obs `sof_location_spread`, obsm
/// `sof_composition_predicted`, obs `sof_density_predicted`, obs `sof_<col>_predicted`.
pub fn map_h5ad(spec: &MapSpec) -> Result<MapOutcome> {
    let cfg = spec.config.clone();
    if cfg.temperature.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) || cfg.k == 0 {
        return Err(PipelineError::setting("--temperature must be > 0 and --k at least 1"));
    }
    let _writer = sof_io::OutputLock::acquire(&spec.output)?;
    sof_io::h5ad::check_replace(&spec.output, spec.force)?;
    let (rfile, qfile) = (spec.reference.display(), spec.query.display());
    let r = H5adReader::open(&spec.reference)?;
    let q = H5adReader::open(&spec.query)?;
    let obs = r.obs()?;
    let col = obs
        .get(&spec.label)
        .ok_or_else(|| PipelineError::input(&rfile, format!("obs has no column '{}'", spec.label)))?;
    let labels = col.labels();
    let allowed = filter_rows(&obs, &spec.reference, &spec.reference_filters)?;
    let keep: Vec<usize> = (0..r.n_obs()).filter(|&i| labels[i].is_some() && allowed[i]).collect();
    if keep.is_empty() {
        return Err(PipelineError::input(
            &rfile,
            format!("no reference cell has a '{}' (after --reference-where)", spec.label),
        ));
    }
    let q_obs = q.obs()?;
    let q_rows: Vec<usize> = {
        let ok = filter_rows(&q_obs, &spec.query, &spec.query_filters)?;
        (0..q.n_obs()).filter(|&i| ok[i]).collect()
    };
    for (file, cells, filter) in [(&rfile, keep.len(), "--reference-where"), (&qfile, q_rows.len(), "--query-where")] {
        if cfg.center_each && cells < 2 {
            return Err(PipelineError::input(
                file,
                format!(
                    "--center-each needs at least 2 cells (after {filter}) and this file has {cells}: one cell minus its own mean is zero; leave the flag off"
                ),
            ));
        }
    }
    let embedding = |reader: &H5adReader, file: &dyn std::fmt::Display| {
        reader.obsm(&spec.embedding).map_err(|e| match e {
            sof_io::Error::MissingField { .. } => {
                PipelineError::input(file, format!("obsm['{}'] is missing: embed it first (sof embed)", spec.embedding))
            }
            other => other.into(),
        })
    };
    let emb_r = embedding(&r, &rfile)?.select(Axis(0), &keep);
    let emb_q = embedding(&q, &qfile)?.select(Axis(0), &q_rows);
    if emb_r.ncols() != emb_q.ncols() {
        return Err(PipelineError::setting(format!(
            "{rfile} has {}-d embeddings but {qfile} has {}-d: embed both with the same model",
            emb_r.ncols(),
            emb_q.ncols()
        )));
    }
    let xy = r.obsm(&spec.spatial_key)?.select(Axis(0), &keep);
    let kept_labels: Vec<String> = keep.iter().map(|&i| labels[i].clone().expect("kept")).collect();
    let mut reference =
        Reference::new(emb_r, &kept_labels, xy.view()).map_err(|e| PipelineError::input(&rfile, e.to_string()))?;
    // Values to transfer: composition (obsm) and density (obs), when present.
    if r.obsm_keys().contains(&"sof_composition".to_owned()) {
        reference.composition = Some(r.obsm("sof_composition")?.select(Axis(0), &keep));
    }
    reference.density = obs.get("sof_density").and_then(Column::as_f64).map(|d| keep.iter().map(|&i| d[i]).collect());
    for c in &spec.transfer {
        let v = obs
            .get(c)
            .ok_or_else(|| PipelineError::input(&rfile, format!("obs has no column '{c}' to transfer")))?
            .as_f64()
            .ok_or_else(|| {
                PipelineError::input(&rfile, format!("obs '{c}' is not numeric; --transfer takes numbers"))
            })?;
        reference.transfer.push((c.clone(), keep.iter().map(|&i| v[i]).collect()));
    }
    let classes = reference.classes.clone();
    let head = spec.head.head(spec.seed);
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
    let mut ed = H5adEditor::copy_of(&spec.query, &spec.output)?;
    let name = format!("sof_{}", spec.label);
    ed.put_obs(&name, &Column::Categorical { codes: codes_out, categories: classes.clone(), ordered: false })?;
    ed.put_obs(&format!("{name}_confidence"), &Column::Float(full(&t.confidence)))?;
    ed.put_obsm(&format!("{name}_probabilities"), &full_rows(&t.mapping.label_probabilities))?;
    ed.put_uns(&format!("{name}_classes"), &UnsValue::Strings(classes.clone()))?;
    ed.put_obsm("sof_location", &full_rows(&t.mapping.location))?;
    ed.put_obs("sof_location_spread", &Column::Float(full(&t.mapping.spread.to_vec())))?;
    if let Some(c) = &t.composition {
        ed.put_obsm("sof_composition_predicted", &full_rows(c))?;
        if let Ok(Some(cols)) = sof_io::h5ad::read_uns_strings(&spec.reference, "sof_composition_columns") {
            ed.put_uns("sof_composition_columns", &UnsValue::Strings(cols))?;
        }
    }
    if let Some(d) = &t.density {
        ed.put_obs("sof_density_predicted", &Column::Float(full(d)))?;
    }
    for (c, v) in spec.transfer.iter().zip(&t.transferred) {
        ed.put_obs(&format!("sof_{c}_predicted"), &Column::Float(full(v)))?;
    }
    let mut info = BTreeMap::new();
    info.insert("reference".to_owned(), UnsValue::Str(spec.reference.display().to_string()));
    info.insert("label".to_owned(), UnsValue::Str(spec.label.clone()));
    info.insert("k".to_owned(), UnsValue::Int(cfg.k as i64));
    info.insert("temperature".to_owned(), UnsValue::Float(cfg.temperature));
    let center = if cfg.center_each { "each" } else { "none" };
    info.insert("center".to_owned(), UnsValue::Str(center.to_owned()));
    info.insert("head".to_owned(), UnsValue::Str(spec.head.name().to_owned()));
    ed.put_uns("sof_map", &UnsValue::Dict(info))?;
    ed.commit()?;

    // Ground truth, when the query has it: ours, the prior and, with the PCA baseline, the same
    // mapper on PCA-50 of expression.
    let truth = QueryTruth {
        labels: q_obs.get(&spec.label).map(|c| {
            let l = c.labels();
            q_rows.iter().map(|&i| l[i].clone()).collect()
        }),
        values: spec
            .transfer
            .iter()
            .filter_map(|c| {
                q_obs.get(c).and_then(Column::as_f64).map(|v| (c.clone(), q_rows.iter().map(|&i| v[i]).collect()))
            })
            .collect(),
    };
    let mut report = MapReport { query_cells: q_rows.len(), reference_cells: keep.len(), ..Default::default() };
    let mut scores = mapping::score(Mapper::Ours, &reference, &spec.label, &truth, &t.predicted, &t.transferred);
    let (prior_classes, prior_values) = mapping::prior(&reference, q_rows.len());
    scores.extend(mapping::score(Mapper::Prior, &reference, &spec.label, &truth, &prior_classes, &prior_values));
    let mut pca_shared_genes = None;
    if spec.pca_baseline {
        // Over the genes both files measure (by var name, in the reference's order): a
        // dissociated query usually measures many more than a spatial panel.
        let (vr, vq) = (r.var()?.index, q.var()?.index);
        let column: HashMap<&str, u32> = vr.iter().enumerate().map(|(i, g)| (g.as_str(), i as u32)).collect();
        let q_remap: Vec<Option<u32>> = vq.iter().map(|g| column.get(g.as_str()).copied()).collect();
        let in_query: HashSet<u32> = q_remap.iter().flatten().copied().collect();
        if in_query.len() < 2 {
            return Err(PipelineError::setting(format!(
                "--pca-baseline: {rfile} and {qfile} share {} gene(s) (var names); the expression baseline needs the genes of both files to overlap",
                in_query.len()
            )));
        }
        let r_remap: Vec<Option<u32>> = (0..vr.len() as u32).map(|c| in_query.contains(&c).then_some(c)).collect();
        let (xr, xq) = (r.read_rows(0..r.n_obs())?, q.read_rows(0..q.n_obs())?);
        let (xr, xq) = (xr.remap_columns(&r_remap, vr.len()), xq.remap_columns(&q_remap, vr.len()));
        pca_shared_genes = Some(in_query.len());
        let (fr, fq) = mapping::pca_features(&xr, &keep, &xq, &q_rows, 0)?;
        let expression = Reference { embedding: fr, ..reference.clone() };
        let tp = mapping::transfer(&expression, fq.view(), &cfg, head.as_deref())?;
        scores.extend(mapping::score(Mapper::Pca50, &reference, &spec.label, &truth, &tp.predicted, &tp.transferred));
    }
    for s in &scores {
        report.insert(s.mapper, &s.column, &s.metrics);
    }
    let location_error = if q.obsm_keys().contains(&spec.spatial_key) && spec.query_filters.is_empty() {
        let true_xy = q.obsm(&spec.spatial_key)?;
        (true_xy.ncols() >= 2).then(|| mapping::location_error(t.mapping.location.view(), true_xy.view()))
    } else {
        None
    };
    Ok(MapOutcome {
        report,
        scores,
        classes,
        mean_confidence: t.confidence.iter().sum::<f64>() / t.confidence.len().max(1) as f64,
        location_error,
        pca_shared_genes,
    })
}
