//! `sof spatial`: neighbourhood composition, density and niches from coordinates.

use std::path::PathBuf;

use anyhow::bail;
use sof_pipeline::spatial::{Radius, SpatialSpec, spatial_h5ad};

use crate::util;

/// Compute spatial targets per cell: density, niche profile, composition.
///
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
#[derive(Debug, clap::Args)]
#[command(after_help = concat!(
    "Examples:\n",
    "  sof spatial --input starmap_mpfc.h5ad --section-key section --mean-neighbors 20 \\\n",
    "      --output starmap_spatial.h5ad\n",
    "  # add --cell-type-key cell_type --niches 6 for composition and niches",
))]
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
    #[arg(long, value_delimiter = ',', num_args = 1.., default_values_t = sof_tasks::neighbourhood::PROFILE_SCALES)]
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
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    pub depth_order: Vec<String>,
    /// Also write the neighbour graph as obsp['sof_connectivities'] (binary, CSR), as squidpy
    /// writes obsp['spatial_connectivities'].
    #[arg(long)]
    pub write_graph: bool,
    /// Output .h5ad (a copy of the input with the results added).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Replace an existing output file that sof did not write (without it, such a file is
    /// refused: it may be data; files sof wrote are replaced, so reruns need no flag).
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let radius = match (args.radius, args.mean_neighbors) {
        (Some(r), _) => Radius::Fixed(r),
        (None, Some(k)) => Radius::MeanNeighbours(k),
        (None, None) => bail!("pass --radius or --mean-neighbors"),
    };
    let spec = SpatialSpec {
        input: args.input.clone(),
        output: args.output.clone(),
        cell_type_key: args.cell_type_key.clone(),
        section_key: args.section_key.clone(),
        radius,
        niches: args.niches,
        profile_components: args.profile_components,
        profile_scales: args.profile_scales.clone(),
        seed: args.seed,
        depth: args.depth_from.clone().map(|key| (key, args.depth_order.clone())),
        write_graph: args.write_graph,
        force: args.force,
    };
    let out = spatial_h5ad(&spec)?;
    if let (Radius::MeanNeighbours(k), Some(m)) = (radius, out.searched_mean_neighbours) {
        util::say(format!("radius {:.4} gives {m:.3} neighbours per cell on average (target {k})", out.radius));
    }
    util::say(format!(
        "{} cells in {} section(s): radius {}, mean {:.2} neighbours, {} isolated, targets in {:.3} s, peak memory {:.0} MiB; wrote {}",
        out.cells,
        out.sections,
        out.radius,
        out.mean_neighbours,
        out.isolated,
        out.compute_seconds,
        util::peak_rss_bytes().unwrap_or(0) as f64 / 1048576.0,
        args.output.display()
    ));
    Ok(())
}
