//! Neighbourhood targets: cell-type composition (counts, proportions) and density.

use rayon::prelude::*;

use crate::graph::Trees;
use crate::{RadiusGraph, SectionedPoints, SpatialError};

/// Counts of each label among every cell's neighbours (row-major, cells x labels).
#[derive(Debug, Clone, PartialEq)]
pub struct Composition {
    n_labels: usize,
    counts: Vec<u32>,
}

impl Composition {
    /// `labels[i] < n_labels` for every cell; the graph's neighbours are counted by label
    /// (the reference's `A @ onehot`).
    pub fn from_graph(graph: &RadiusGraph, labels: &[u32], n_labels: usize) -> Result<Self, SpatialError> {
        let n = graph.n_cells();
        if labels.len() != n {
            return Err(SpatialError::Length { what: "labels", got: labels.len(), cells: n });
        }
        if let Some(cell) = labels.iter().position(|&l| l as usize >= n_labels) {
            return Err(SpatialError::LabelRange { cell, label: labels[cell], n: n_labels as u32 });
        }
        let mut counts = vec![0u32; n * n_labels];
        counts.par_chunks_mut(n_labels.max(1)).enumerate().for_each(|(i, row)| {
            for &j in graph.neighbors(i) {
                row[labels[j as usize] as usize] += 1;
            }
        });
        Ok(Self { n_labels, counts })
    }

    pub fn n_labels(&self) -> usize {
        self.n_labels
    }

    pub fn n_cells(&self) -> usize {
        self.counts.len() / self.n_labels.max(1)
    }

    pub fn counts(&self) -> &[u32] {
        &self.counts
    }

    pub fn row(&self, i: usize) -> &[u32] {
        &self.counts[i * self.n_labels..(i + 1) * self.n_labels]
    }

    /// Proportions per cell (rows sum to 1; a cell with no neighbours gets all zeros).
    pub fn proportions(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.counts.len()];
        out.par_chunks_mut(self.n_labels.max(1)).enumerate().for_each(|(i, row)| {
            let c = self.row(i);
            let total: u32 = c.iter().sum();
            if total > 0 {
                for (o, &x) in row.iter_mut().zip(c) {
                    *o = x as f32 / total as f32;
                }
            }
        });
        out
    }
}

/// Targets at one radius.
#[derive(Debug, Clone, PartialEq)]
pub struct RadiusTargets {
    pub radius: f64,
    pub composition: Composition,
    /// Neighbour count per cell.
    pub density: Vec<u32>,
}

/// Composition and density at several radii, sharing one set of kd-trees.
pub fn targets(
    points: &SectionedPoints,
    labels: &[u32],
    n_labels: usize,
    radii: &[f64],
) -> Result<Vec<RadiusTargets>, SpatialError> {
    for &r in radii {
        crate::check_radius(r)?;
    }
    let trees = Trees::build(points);
    radii
        .iter()
        .map(|&radius| {
            let g = RadiusGraph::from_trees(points, &trees, radius);
            Ok(RadiusTargets {
                radius,
                composition: Composition::from_graph(&g, labels, n_labels)?,
                density: g.degrees(),
            })
        })
        .collect()
}
