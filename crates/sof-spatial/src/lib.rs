//! Spatial graphs and targets from cell coordinates, per tissue section.
//!
//! - [`SectionedPoints`]: 2-d coordinates (in the data's units) with a section per cell; cells of
//!   different sections are never neighbours.
//! - [`RadiusGraph`]: binary adjacency within a radius, no self loops (the reference's
//!   definition), CSR with sorted neighbours; [`KnnGraph`]: k nearest neighbours per cell.
//!   One kd-tree per section (kiddo, squared-Euclidean with r squared), parallel over queries.
//! - [`radius_for_mean_neighbors`]: the radius giving a target mean neighbour count (bisection).
//! - [`Composition`] and [`RadiusGraph::degrees`]: neighbourhood cell-type composition (counts and
//!   proportions) and density (neighbour count); [`targets`] computes them for several radii.
//! - [`layer_depth`]: depth along a layered tissue's axis (0..1 per section) from ordered layers.
//! - [`niches`]: niche labels by k-means on composition vectors (k-means++ with a fixed seed).

mod depth;
mod graph;
mod niche;
mod radius;
mod targets;

pub use depth::layer_depth;
pub use graph::{KnnGraph, RadiusGraph};
pub use niche::{KMeans, niches};
pub use radius::{RadiusSearch, mean_neighbors, radius_for_mean_neighbors};
pub use targets::{Composition, RadiusTargets, targets};

/// Problems with spatial inputs.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpatialError {
    #[error("cell {cell} has a non-finite coordinate ({x}, {y}); drop or fix cells without a position")]
    NonFinite { cell: usize, x: f64, y: f64 },
    #[error("radius must be a finite number > 0, got {0}")]
    BadRadius(f64),
    #[error("{what} has {got} entries for {cells} cells")]
    Length { what: &'static str, got: usize, cells: usize },
    #[error("label {label} of cell {cell} is not below the number of labels ({n})")]
    LabelRange { cell: usize, label: u32, n: u32 },
    #[error("target mean neighbour count must be > 0 and below the largest section's size - 1, got {0}")]
    BadTarget(f64),
    #[error("k must be at least 1")]
    BadK,
    #[error("{0}")]
    Other(String),
}

/// Cells with 2-d coordinates, grouped by section.
#[derive(Debug, Clone)]
pub struct SectionedPoints {
    xy: Vec<[f64; 2]>,
    /// Cells of each section, as global indices, ascending.
    groups: Vec<Vec<u32>>,
    /// Position of each cell inside its section's group.
    local: Vec<u32>,
    section: Vec<u32>,
}

impl SectionedPoints {
    /// `section[i]` is any id (e.g. a categorical code); cells sharing it form one section.
    pub fn new(xy: Vec<[f64; 2]>, section: &[u32]) -> Result<Self, SpatialError> {
        if section.len() != xy.len() {
            return Err(SpatialError::Length { what: "section ids", got: section.len(), cells: xy.len() });
        }
        if let Some(cell) = xy.iter().position(|p| !(p[0].is_finite() && p[1].is_finite())) {
            return Err(SpatialError::NonFinite { cell, x: xy[cell][0], y: xy[cell][1] });
        }
        let mut ids: Vec<u32> = section.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let mut groups = vec![Vec::new(); ids.len()];
        let mut local = vec![0u32; xy.len()];
        let mut dense = vec![0u32; xy.len()];
        for (i, s) in section.iter().enumerate() {
            let g = ids.binary_search(s).expect("id is present");
            local[i] = groups[g].len() as u32;
            groups[g].push(i as u32);
            dense[i] = g as u32;
        }
        Ok(Self { xy, groups, local, section: dense })
    }

    /// All cells in one section.
    pub fn single_section(xy: Vec<[f64; 2]>) -> Result<Self, SpatialError> {
        let n = xy.len();
        Self::new(xy, &vec![0; n])
    }

    pub fn len(&self) -> usize {
        self.xy.len()
    }

    pub fn is_empty(&self) -> bool {
        self.xy.is_empty()
    }

    pub fn xy(&self) -> &[[f64; 2]] {
        &self.xy
    }

    pub fn n_sections(&self) -> usize {
        self.groups.len()
    }

    /// Section (0-based, in ascending id order) of each cell.
    pub fn sections(&self) -> &[u32] {
        &self.section
    }

    /// Each section on its own, in section order: its cells (global indices, ascending) and
    /// their positions as a one-section set (cell `j` of the set is `cells[j]`), built one at a
    /// time, so per-section work holds one section's structures at once.
    pub fn each_section(&self) -> impl Iterator<Item = (&[u32], SectionedPoints)> + '_ {
        self.groups.iter().map(|g| {
            let n = g.len() as u32;
            let xy = g.iter().map(|&i| self.xy[i as usize]).collect();
            let one = SectionedPoints {
                xy,
                groups: vec![(0..n).collect()],
                local: (0..n).collect(),
                section: vec![0; n as usize],
            };
            (g.as_slice(), one)
        })
    }

    pub(crate) fn groups(&self) -> &[Vec<u32>] {
        &self.groups
    }

    pub(crate) fn local(&self, cell: usize) -> u32 {
        self.local[cell]
    }
}

pub(crate) fn check_radius(r: f64) -> Result<(), SpatialError> {
    if r.is_finite() && r > 0.0 { Ok(()) } else { Err(SpatialError::BadRadius(r)) }
}
