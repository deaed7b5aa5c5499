//! The spatial targets of an .h5ad as one library call ([`spatial_h5ad`]): local density,
//! the label-free niche profile, and with cell types the neighbourhood composition and k-means
//! niches, written into a copy of the input.

use std::path::PathBuf;

use ndarray::Array2;
use sof_io::Column;
use sof_io::h5ad::{H5adEditor, H5adReader, UnsValue};
use sof_spatial::{Composition, RadiusGraph, niches, radius_for_mean_neighbors};

use crate::cells::{label_codes, points};
use crate::error::{PipelineError, Result};

/// The neighbourhood radius.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Radius {
    /// In the coordinates' units.
    Fixed(f64),
    /// The radius that gives this many neighbours per cell on average.
    MeanNeighbours(f64),
}

/// The spatial targets of one file.
#[derive(Debug, Clone)]
pub struct SpatialSpec {
    /// A spatial .h5ad with obsm['spatial'].
    pub input: PathBuf,
    /// The copy of the input with the targets.
    pub output: PathBuf,
    /// obs column of cell types: adds the neighbourhood composition.
    pub cell_type_key: Option<String>,
    /// obs column of sections: cells of different sections are never neighbours.
    pub section_key: Option<String>,
    pub radius: Radius,
    /// Cluster the composition into this many niches (needs `cell_type_key`).
    pub niches: Option<usize>,
    /// Expression components per scale of the niche profile (0: no profile).
    pub profile_components: usize,
    /// Neighbour counts of the niche profile's scales.
    pub profile_scales: Vec<usize>,
    /// Seed of the niche clustering and the profile's PCA.
    pub seed: u64,
    /// obs['sof_depth'] from an ordered label: the column and its values in order.
    pub depth: Option<(String, Vec<String>)>,
    /// Also write the neighbour graph as obsp['sof_connectivities'].
    pub write_graph: bool,
    /// Replace an existing output file that sof did not write ([`sof_io::h5ad::check_replace`]).
    pub force: bool,
}

impl SpatialSpec {
    /// Density and the niche profile of `input` at the radius that gives 20 neighbours on
    /// average, one section, no labels, into `output`.
    pub fn new(input: impl Into<PathBuf>, output: impl Into<PathBuf>) -> Self {
        SpatialSpec {
            input: input.into(),
            output: output.into(),
            cell_type_key: None,
            section_key: None,
            radius: Radius::MeanNeighbours(20.0),
            niches: None,
            profile_components: sof_tasks::neighbourhood::PROFILE_COMPONENTS,
            profile_scales: sof_tasks::neighbourhood::PROFILE_SCALES.to_vec(),
            seed: 0,
            depth: None,
            write_graph: false,
            force: false,
        }
    }
}

/// What the targets came to.
#[derive(Debug, Clone, PartialEq)]
pub struct SpatialOutcome {
    pub cells: usize,
    pub sections: usize,
    pub radius: f64,
    /// With [`Radius::MeanNeighbours`]: the mean the radius search reached.
    pub searched_mean_neighbours: Option<f64>,
    /// Neighbours per cell on average at `radius`.
    pub mean_neighbours: f64,
    /// Cells without a neighbour.
    pub isolated: usize,
    /// Seconds computing the graph and targets.
    pub compute_seconds: f64,
}

/// Computes the targets of `spec.input` and writes the copy: obs['sof_density'],
/// obsm['sof_niche_profile'] (+ uns['sof_niche_profile_scales']), uns['sof_radius'],
/// uns['sof_mean_neighbors']; with cell types obsm['sof_composition'] (+ its columns) and
/// obs['sof_niche']; obs['sof_depth'] and obsp['sof_connectivities'] when asked.
pub fn spatial_h5ad(spec: &SpatialSpec) -> Result<SpatialOutcome> {
    let _writer = sof_io::OutputLock::acquire(&spec.output)?;
    sof_io::h5ad::check_replace(&spec.output, spec.force)?;
    let file = spec.input.display();
    let reader = H5adReader::open(&spec.input)?;
    let obs = reader.obs()?;
    let p = points(&reader, &obs, spec.section_key.as_deref())?;
    let types = spec.cell_type_key.as_deref().map(|k| label_codes(&obs, &spec.input, k)).transpose()?;
    let n_obs = obs.len();
    let (radius, searched) = match spec.radius {
        Radius::Fixed(r) => {
            if !(r.is_finite() && r > 0.0) {
                return Err(PipelineError::setting(format!(
                    "--radius must be a number > 0 (in the coordinates' units), got {r}"
                )));
            }
            (r, None)
        }
        Radius::MeanNeighbours(k) => {
            let s = radius_for_mean_neighbors(&p, k, 0.005)?;
            (s.radius, Some(s.mean_neighbors))
        }
    };
    let t0 = std::time::Instant::now();
    let graph = RadiusGraph::build(&p, radius)?;
    let composition = match &types {
        Some((labels, names)) => Some((Composition::from_graph(&graph, labels, names.len())?.proportions(), names)),
        None => None,
    };
    tracing::info!(
        seconds = t0.elapsed().as_secs_f64(),
        edges = graph.n_edges(),
        "radius graph and composition computed"
    );
    // The label-free niche profile reads the expression (X), the rest only coordinates.
    let profile = if spec.profile_components > 0 {
        let x = reader.read_rows(0..n_obs)?;
        Some(
            sof_tasks::neighbourhood::niche_profile(&x, &p, &spec.profile_scales, spec.profile_components, spec.seed)
                .map_err(|e| PipelineError::input(&file, format!("the niche profile (--profile-*): {e}")))?,
        )
    } else {
        None
    };
    let compute_seconds = t0.elapsed().as_secs_f64();
    let mut e = H5adEditor::copy_of(&spec.input, &spec.output)?;
    if let Some((props, names)) = &composition {
        let m = Array2::from_shape_vec((n_obs, names.len()), props.clone()).expect("cells x types proportions");
        e.put_obsm("sof_composition", &m)?;
        e.put_uns("sof_composition_columns", &UnsValue::Strings(names.to_vec()))?;
    }
    if let Some(prof) = &profile {
        e.put_obsm("sof_niche_profile", prof)?;
        e.put_uns(
            "sof_niche_profile_scales",
            &UnsValue::Floats(spec.profile_scales.iter().map(|&k| k as f64).collect()),
        )?;
    }
    e.put_obs("sof_density", &Column::Int(graph.degrees().into_iter().map(i64::from).collect()))?;
    e.put_uns("sof_radius", &UnsValue::Float(radius))?;
    e.put_uns("sof_mean_neighbors", &UnsValue::Float(graph.mean_degree()))?;
    if let (Some(k), Some((props, names))) = (spec.niches, &composition) {
        let km = niches(props, names.len(), k, spec.seed)?;
        let labels: Vec<String> = km.labels.iter().map(|l| format!("niche_{l}")).collect();
        e.put_obs("sof_niche", &Column::categorical_from_labels(&labels))?;
    }
    if let Some((key, order)) = &spec.depth {
        let col = obs.get(key).ok_or_else(|| PipelineError::input(&file, format!("obs has no column '{key}'")))?;
        let labels = col.labels();
        if let Some(l) = labels.iter().flatten().find(|l| !order.contains(l)) {
            return Err(PipelineError::input(
                &file,
                format!(
                    "obs/{key} has the value '{l}', which --depth-order ({}) does not list; list every layer in order",
                    order.join(",")
                ),
            ));
        }
        let rank: Vec<f64> = labels
            .iter()
            .map(|l| l.as_ref().and_then(|l| order.iter().position(|o| o == l)).map_or(f64::NAN, |r| r as f64))
            .collect();
        let depth = sof_spatial::layer_depth(&p, &rank)
            .map_err(|e| PipelineError::input(&file, format!("depth from '{key}': {e}")))?;
        e.put_obs("sof_depth", &Column::Float(depth))?;
    }
    if spec.write_graph {
        e.put_obsp_csr("sof_connectivities", graph.indptr(), graph.indices(), &vec![1.0; graph.n_edges()])?;
    }
    e.commit()?;
    Ok(SpatialOutcome {
        cells: n_obs,
        sections: p.n_sections(),
        radius,
        searched_mean_neighbours: searched,
        mean_neighbours: graph.mean_degree(),
        isolated: graph.degrees().iter().filter(|&&d| d == 0).count(),
        compute_seconds,
    })
}
