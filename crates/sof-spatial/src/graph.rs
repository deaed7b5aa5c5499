//! Radius and k-nearest-neighbour graphs, one kd-tree per section.

use std::num::NonZero;

use kiddo::{ImmutableKdTree, SquaredEuclidean};
use rayon::prelude::*;

use crate::{SectionedPoints, SpatialError, check_radius};

/// One immutable kd-tree per section; items are positions inside the section.
pub(crate) struct Trees {
    trees: Vec<ImmutableKdTree<f64, 2>>,
}

impl Trees {
    pub(crate) fn build(points: &SectionedPoints) -> Self {
        let trees = points
            .groups()
            .par_iter()
            .map(|g| {
                let xy: Vec<[f64; 2]> = g.iter().map(|&i| points.xy()[i as usize]).collect();
                ImmutableKdTree::new_from_slice(&xy).expect("finite coordinates build a tree")
            })
            .collect();
        Self { trees }
    }

    /// Global indices of the cells within `radius` of cell `i` (itself excluded), ascending.
    pub(crate) fn within(&self, points: &SectionedPoints, i: usize, r2: f64, out: &mut Vec<u32>) {
        out.clear();
        let s = points.sections()[i] as usize;
        let group = &points.groups()[s];
        let me = points.local(i);
        let hits = self.trees[s].query(&points.xy()[i]).within::<SquaredEuclidean<f64>>(r2).unsorted().execute();
        out.extend(hits.into_iter().filter(|h| h.item != me).map(|h| group[h.item as usize]));
        out.sort_unstable();
    }

    /// Number of cells within `radius` of cell `i` (itself excluded).
    pub(crate) fn count_within(&self, points: &SectionedPoints, i: usize, r2: f64) -> usize {
        let s = points.sections()[i] as usize;
        self.trees[s].query(&points.xy()[i]).within::<SquaredEuclidean<f64>>(r2).unsorted().execute().len() - 1
    }
}

/// Binary adjacency within a radius (inclusive), no self loops, never across sections.
/// CSR: the neighbours of cell `i` are `indices[indptr[i]..indptr[i + 1]]`, ascending.
#[derive(Debug, Clone, PartialEq)]
pub struct RadiusGraph {
    radius: f64,
    indptr: Vec<u64>,
    indices: Vec<u32>,
}

impl RadiusGraph {
    /// Builds the graph; parallel over sections (trees) and over query cells.
    pub fn build(points: &SectionedPoints, radius: f64) -> Result<Self, SpatialError> {
        check_radius(radius)?;
        let trees = Trees::build(points);
        Ok(Self::from_trees(points, &trees, radius))
    }

    pub(crate) fn from_trees(points: &SectionedPoints, trees: &Trees, radius: f64) -> Self {
        let r2 = radius * radius;
        const CHUNK: usize = 4_096;
        let chunks: Vec<(Vec<u32>, Vec<u32>)> = (0..points.len())
            .into_par_iter()
            .step_by(CHUNK)
            .map(|start| {
                let end = (start + CHUNK).min(points.len());
                let mut deg = Vec::with_capacity(end - start);
                let mut idx = Vec::new();
                let mut buf = Vec::new();
                for i in start..end {
                    trees.within(points, i, r2, &mut buf);
                    deg.push(buf.len() as u32);
                    idx.extend_from_slice(&buf);
                }
                (deg, idx)
            })
            .collect();
        let mut indptr = Vec::with_capacity(points.len() + 1);
        indptr.push(0u64);
        let mut indices = Vec::with_capacity(chunks.iter().map(|c| c.1.len()).sum());
        for (deg, idx) in chunks {
            for d in deg {
                indptr.push(indptr.last().unwrap() + u64::from(d));
            }
            indices.extend(idx);
        }
        Self { radius, indptr, indices }
    }

    pub fn radius(&self) -> f64 {
        self.radius
    }

    pub fn n_cells(&self) -> usize {
        self.indptr.len() - 1
    }

    /// Directed edges (each undirected pair counts twice).
    pub fn n_edges(&self) -> usize {
        self.indices.len()
    }

    pub fn neighbors(&self, i: usize) -> &[u32] {
        &self.indices[self.indptr[i] as usize..self.indptr[i + 1] as usize]
    }

    pub fn indptr(&self) -> &[u64] {
        &self.indptr
    }

    pub fn indices(&self) -> &[u32] {
        &self.indices
    }

    /// Neighbour count per cell: the density target.
    pub fn degrees(&self) -> Vec<u32> {
        self.indptr.windows(2).map(|w| (w[1] - w[0]) as u32).collect()
    }

    pub fn mean_degree(&self) -> f64 {
        if self.n_cells() == 0 { 0.0 } else { self.n_edges() as f64 / self.n_cells() as f64 }
    }
}

/// The `k` nearest other cells of each cell in its own section (fewer when the section is
/// smaller), nearest first.
#[derive(Debug, Clone, PartialEq)]
pub struct KnnGraph {
    k: usize,
    indptr: Vec<u64>,
    indices: Vec<u32>,
}

impl KnnGraph {
    pub fn build(points: &SectionedPoints, k: usize) -> Result<Self, SpatialError> {
        let kk = NonZero::new(k + 1).ok_or(SpatialError::BadK)?;
        if k == 0 {
            return Err(SpatialError::BadK);
        }
        let trees = Trees::build(points);
        let rows: Vec<Vec<u32>> = (0..points.len())
            .into_par_iter()
            .map(|i| {
                let s = points.sections()[i] as usize;
                let group = &points.groups()[s];
                let me = points.local(i);
                trees.trees[s]
                    .query(&points.xy()[i])
                    .nearest_n::<SquaredEuclidean<f64>>(kk)
                    .execute()
                    .into_iter()
                    .filter(|h| h.item != me)
                    .take(k)
                    .map(|h| group[h.item as usize])
                    .collect()
            })
            .collect();
        let mut indptr = vec![0u64];
        let mut indices = Vec::with_capacity(points.len() * k);
        for r in rows {
            indices.extend(r);
            indptr.push(indices.len() as u64);
        }
        Ok(Self { k, indptr, indices })
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn neighbors(&self, i: usize) -> &[u32] {
        &self.indices[self.indptr[i] as usize..self.indptr[i + 1] as usize]
    }
}
