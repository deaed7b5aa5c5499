//! `sof spatial`: neighbourhood composition, density and niches from coordinates.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use ndarray::Array2;
use sof_io::h5ad::{H5adEditor, H5adReader, UnsValue};
use sof_io::{CellSource, Column, Frame};
use sof_spatial::{Composition, RadiusGraph, SectionedPoints, niches, radius_for_mean_neighbors};

use crate::util;

/// Compute spatial targets per cell from obsm['spatial']: its local density (neighbour count
/// within a radius), the label-free niche profile (what its neighbourhood expresses, at several
/// scales: the default pretraining target), and, with --cell-type-key, the cell-type composition
/// of its neighbourhood and optionally niche labels (k-means on composition). Cells of different
/// sections are never neighbours.
///
/// Writes a copy of the input with obs['sof_density'], obsm['sof_niche_profile'] (cells x
/// components * scales, standardized) and uns['sof_niche_profile_scales'], uns['sof_radius'],
/// uns['sof_mean_neighbors']; with --cell-type-key also obsm['sof_composition'] (proportions,
/// cells x types; all zeros for a cell without neighbours), uns['sof_composition_columns'] and
/// obs['sof_niche'] (with --niches).
///
/// Example: sof spatial --input starmap_mpfc.h5ad --section-key section --mean-neighbors 20
///          --output starmap_spatial.h5ad
///          (add --cell-type-key cell_type --niches 6 for composition and niches)
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Spatial .h5ad with obsm['spatial'].
    #[arg(short, long)]
    pub input: PathBuf,
    /// obs column with cell types: adds the neighbourhood composition (its columns follow the
    /// categories). Labels are not needed for density and the niche profile.
    #[arg(long)]
    pub cell_type_key: Option<String>,
    /// obs column naming the section / slice / field of view (default: one section).
    #[arg(long)]
    pub section_key: Option<String>,
    /// Radius in the coordinates' units.
    #[arg(
        long,
        conflicts_with = "mean_neighbors",
        required_unless_present = "mean_neighbors",
        allow_negative_numbers = true
    )]
    pub radius: Option<f64>,
    /// Choose the radius giving this mean neighbour count (the reference uses 5/10/20/50/100).
    #[arg(long)]
    pub mean_neighbors: Option<f64>,
    /// Also cluster composition vectors into this many niches (k-means, fixed seed). Needs
    /// --cell-type-key.
    #[arg(long, requires = "cell_type_key")]
    pub niches: Option<usize>,
    /// Expression components per scale of the niche profile (0 = no profile).
    #[arg(long, default_value_t = sof_tasks::neighbourhood::PROFILE_COMPONENTS)]
    pub profile_components: usize,
    /// Neighbour counts of the niche profile's scales, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = sof_tasks::neighbourhood::PROFILE_SCALES)]
    pub profile_scales: Vec<usize>,
    /// Seed for the niche clustering.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also write obs['sof_depth']: each cell's depth (0..1 per section) along the axis in which
    /// this ordered label grows (e.g. cortical layers, pia = 0); cells without a label get a
    /// depth from their position. Needs --depth-order.
    #[arg(long, requires = "depth_order")]
    pub depth_from: Option<String>,
    /// The labels of --depth-from in order (comma-separated), e.g. L1,L2/3,L5,L6.
    #[arg(long, value_delimiter = ',')]
    pub depth_order: Vec<String>,
    /// Also write the neighbour graph as obsp['sof_connectivities'] (binary, CSR), as squidpy
    /// writes obsp['spatial_connectivities'].
    #[arg(long)]
    pub write_graph: bool,
    /// Output .h5ad (a copy of the input with the results added).
    #[arg(short, long)]
    pub output: PathBuf,
}

/// Codes and names of an obs column used as labels; missing values are an error.
pub fn label_codes(obs: &Frame, path: &Path, key: &str) -> anyhow::Result<(Vec<u32>, Vec<String>)> {
    let col = obs.get(key).with_context(|| {
        format!(
            "{}: obs has no column '{key}'; columns are: {}",
            path.display(),
            obs.column_names().collect::<Vec<_>>().join(", ")
        )
    })?;
    // Keep the file's own category order where it has one.
    if let Column::Categorical { codes, categories, .. } = col {
        if let Some(i) = codes.iter().position(|&c| c < 0) {
            bail!(
                "{}: obs/{key} has a missing value at cell '{}'; fill or drop cells without a label",
                path.display(),
                obs.index[i]
            );
        }
        return Ok((codes.iter().map(|&c| c as u32).collect(), categories.clone()));
    }
    let labels = col.labels();
    if let Some(i) = labels.iter().position(Option::is_none) {
        bail!(
            "{}: obs/{key} has a missing value at cell '{}'; fill or drop cells without a label",
            path.display(),
            obs.index[i]
        );
    }
    match Column::categorical_from_labels(&labels.into_iter().map(Option::unwrap).collect::<Vec<_>>()) {
        Column::Categorical { codes, categories, .. } => {
            Ok((codes.into_iter().map(|c| c as u32).collect(), categories))
        }
        _ => unreachable!("categorical_from_labels builds a categorical"),
    }
}

/// Coordinates and sections of a spatial file, with errors that name the file and the fix.
/// Reads only obs and obsm['spatial'] (not X).
pub fn points(reader: &dyn CellSource, obs: &Frame, section_key: Option<&str>) -> anyhow::Result<SectionedPoints> {
    let name = reader.name();
    let path = Path::new(&name);
    if !reader.obsm_keys().iter().any(|k| k == "spatial") {
        bail!(
            "{}: obsm['spatial'] is missing: these cells have no coordinates (dissociated data?), so they have no spatial neighbourhood; spatial targets need a spatial dataset",
            path.display()
        );
    }
    let xy = reader.obsm("spatial")?;
    if xy.ncols() < 2 {
        bail!("{}: obsm['spatial'] has {} column(s); x and y are needed", path.display(), xy.ncols());
    }
    let pts: Vec<[f64; 2]> = xy.rows().into_iter().map(|r| [r[0], r[1]]).collect();
    if let Some(i) = pts.iter().position(|p| !(p[0].is_finite() && p[1].is_finite())) {
        bail!(
            "{}: obsm['spatial'] of cell '{}' is ({}, {}); drop or fix cells without a position",
            path.display(),
            obs.index[i],
            pts[i][0],
            pts[i][1]
        );
    }
    let sections = match section_key {
        Some(k) => label_codes(obs, path, k)?.0,
        None => vec![0; pts.len()],
    };
    Ok(SectionedPoints::new(pts, &sections)?)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let reader = H5adReader::open(&args.input)?;
    let obs = reader.obs()?;
    let p = points(&reader, &obs, args.section_key.as_deref())?;
    let types = args.cell_type_key.as_deref().map(|k| label_codes(&obs, &args.input, k)).transpose()?;
    let n_obs = obs.len();
    let radius = match (args.radius, args.mean_neighbors) {
        (Some(r), _) => {
            anyhow::ensure!(
                r.is_finite() && r > 0.0,
                "--radius must be a number > 0 (in the coordinates' units), got {r}"
            );
            r
        }
        (None, Some(k)) => {
            let s = radius_for_mean_neighbors(&p, k, 0.005)?;
            util::say(format!(
                "radius {:.4} gives {:.3} neighbours per cell on average (target {k})",
                s.radius, s.mean_neighbors
            ));
            s.radius
        }
        (None, None) => bail!("pass --radius or --mean-neighbors"),
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
    let profile = if args.profile_components > 0 {
        let x = reader.read_rows(0..n_obs)?;
        Some(
            sof_tasks::neighbourhood::niche_profile(&x, &p, &args.profile_scales, args.profile_components, args.seed)
                .with_context(|| format!("{}: the niche profile (--profile-*)", args.input.display()))?,
        )
    } else {
        None
    };
    let compute_s = t0.elapsed().as_secs_f64();
    let mut e = H5adEditor::copy_of(&args.input, &args.output)?;
    if let Some((props, names)) = &composition {
        e.put_obsm("sof_composition", &Array2::from_shape_vec((n_obs, names.len()), props.clone())?)?;
        e.put_uns("sof_composition_columns", &UnsValue::Strings(names.to_vec()))?;
    }
    if let Some(prof) = &profile {
        e.put_obsm("sof_niche_profile", prof)?;
        e.put_uns(
            "sof_niche_profile_scales",
            &UnsValue::Floats(args.profile_scales.iter().map(|&k| k as f64).collect()),
        )?;
    }
    e.put_obs("sof_density", &Column::Int(graph.degrees().into_iter().map(i64::from).collect()))?;
    e.put_uns("sof_radius", &UnsValue::Float(radius))?;
    e.put_uns("sof_mean_neighbors", &UnsValue::Float(graph.mean_degree()))?;
    if let (Some(k), Some((props, names))) = (args.niches, &composition) {
        let km = niches(props, names.len(), k, args.seed)?;
        let labels: Vec<String> = km.labels.iter().map(|l| format!("niche_{l}")).collect();
        e.put_obs("sof_niche", &Column::categorical_from_labels(&labels))?;
    }
    if let Some(key) = &args.depth_from {
        let col = obs.get(key).with_context(|| format!("{}: obs has no column '{key}'", args.input.display()))?;
        let labels = col.labels();
        if let Some(l) = labels.iter().flatten().find(|l| !args.depth_order.contains(l)) {
            bail!(
                "{}: obs/{key} has the value '{l}', which --depth-order ({}) does not list; list every layer in order",
                args.input.display(),
                args.depth_order.join(",")
            );
        }
        let rank: Vec<f64> = labels
            .iter()
            .map(|l| {
                l.as_ref().and_then(|l| args.depth_order.iter().position(|o| o == l)).map_or(f64::NAN, |r| r as f64)
            })
            .collect();
        let depth = sof_spatial::layer_depth(&p, &rank)
            .with_context(|| format!("{}: depth from '{key}'", args.input.display()))?;
        e.put_obs("sof_depth", &Column::Float(depth))?;
    }
    if args.write_graph {
        e.put_obsp_csr("sof_connectivities", graph.indptr(), graph.indices(), &vec![1.0; graph.n_edges()])?;
    }
    e.commit()?;
    util::say(format!(
        "{} cells in {} section(s): radius {radius}, mean {:.2} neighbours, {} isolated, targets in {compute_s:.3} s, peak memory {:.0} MiB; wrote {}",
        n_obs,
        p.n_sections(),
        graph.mean_degree(),
        graph.degrees().iter().filter(|&&d| d == 0).count(),
        util::peak_rss_bytes().unwrap_or(0) as f64 / 1048576.0,
        args.output.display()
    ));
    Ok(())
}
