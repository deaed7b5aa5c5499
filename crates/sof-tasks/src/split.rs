//! Honest train/test splits: whole groups (sections, slices, fields of view) or spatial blocks
//! held out, never random cells when sections exist.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_xoshiro::Xoshiro256PlusPlus;

/// One fold: indices of training and test cells, with a name for reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Fold {
    pub name: String,
    pub train: Vec<usize>,
    pub test: Vec<usize>,
}

/// Leave-one-group-out: one fold per distinct group (in order of first appearance).
pub fn by_group(groups: &[String]) -> Vec<Fold> {
    let mut names: Vec<&String> = Vec::new();
    for g in groups {
        if !names.contains(&g) {
            names.push(g);
        }
    }
    names
        .iter()
        .map(|name| {
            let (test, train): (Vec<usize>, Vec<usize>) = (0..groups.len()).partition(|&i| &groups[i] == *name);
            Fold { name: format!("held out {name}"), train, test }
        })
        .collect()
}

/// Spatial blocks: the bounding box is cut into `grid x grid` blocks, blocks are shuffled
/// (seeded) and dealt into `folds` folds; each fold tests on its blocks' cells.
pub fn spatial_blocks(xy: &[(f64, f64)], grid: usize, folds: usize, seed: u64) -> Vec<Fold> {
    let (mut x0, mut x1, mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in xy {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    let cell = |v: f64, lo: f64, hi: f64| (((v - lo) / (hi - lo).max(1e-12) * grid as f64) as usize).min(grid - 1);
    let block: Vec<usize> = xy.iter().map(|&(x, y)| cell(x, x0, x1) * grid + cell(y, y0, y1)).collect();
    let mut blocks: Vec<usize> = (0..grid * grid).filter(|b| block.contains(b)).collect();
    blocks.shuffle(&mut Xoshiro256PlusPlus::seed_from_u64(seed));
    (0..folds)
        .map(|f| {
            let mine: Vec<usize> = blocks.iter().enumerate().filter(|(i, _)| i % folds == f).map(|(_, &b)| b).collect();
            let (test, train): (Vec<usize>, Vec<usize>) = (0..xy.len()).partition(|&i| mine.contains(&block[i]));
            Fold { name: format!("spatial blocks {}/{folds}", f + 1), train, test }
        })
        .collect()
}

/// Shuffled k-fold over cells (seeded): only for data without sections or coordinates (e.g.
/// dissociated cells), where no grouping exists to hold out.
pub fn random_folds(n: usize, folds: usize, seed: u64) -> Vec<Fold> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut Xoshiro256PlusPlus::seed_from_u64(seed));
    let mut fold_of = vec![0usize; n];
    for (rank, &i) in order.iter().enumerate() {
        fold_of[i] = rank % folds.max(1);
    }
    (0..folds.max(1))
        .map(|f| {
            let (test, train): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| fold_of[i] == f);
            Fold { name: format!("random fold {}/{folds}", f + 1), train, test }
        })
        .collect()
}

/// How a probe's cells are split into folds.
#[derive(Debug, Clone)]
pub enum FoldPlan {
    /// Leave one group (section, slice, field of view) out: one fold per group value.
    Groups(Vec<String>),
    /// Spatial blocks: the tissue cut into `grid x grid` blocks dealt into `folds` folds.
    SpatialBlocks { xy: Vec<(f64, f64)>, grid: usize, folds: usize },
    /// Shuffled cell folds: only for data without sections or coordinates (dissociated cells).
    Random { cells: usize, folds: usize },
}

impl FoldPlan {
    /// `(seed, folds)` for seeds `0..seeds`; leave-one-group-out folds do not depend on the seed,
    /// so they come once. Fewer than two folds is an error.
    pub fn fold_sets(&self, seeds: u64) -> Result<Vec<(u64, Vec<Fold>)>, crate::TaskError> {
        let seeds = if matches!(self, FoldPlan::Groups(_)) { 1 } else { seeds.max(1) };
        (0..seeds)
            .map(|seed| {
                let folds = match self {
                    FoldPlan::Groups(g) => by_group(g),
                    FoldPlan::SpatialBlocks { xy, grid, folds } => spatial_blocks(xy, *grid, *folds, seed),
                    FoldPlan::Random { cells, folds } => random_folds(*cells, *folds, seed),
                };
                if folds.len() < 2 {
                    return Err(crate::TaskError::Invalid("only one fold: the split column has one value".into()));
                }
                Ok((seed, folds))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_folds_partition_the_cells() {
        let folds = random_folds(103, 5, 1);
        let mut seen = vec![0; 103];
        for f in &folds {
            assert!(f.test.len() == 20 || f.test.len() == 21);
            assert_eq!(f.train.len() + f.test.len(), 103);
            f.test.iter().for_each(|&i| seen[i] += 1);
        }
        assert!(seen.iter().all(|&c| c == 1));
        assert_ne!(random_folds(103, 5, 2), folds);
    }

    #[test]
    fn groups_and_blocks_partition_the_cells() {
        let g: Vec<String> = ["a", "b", "a", "c", "b"].iter().map(|s| s.to_string()).collect();
        let f = by_group(&g);
        assert_eq!(f.len(), 3);
        assert_eq!((f[0].train.clone(), f[0].test.clone()), (vec![1, 3, 4], vec![0, 2]));
        let xy: Vec<(f64, f64)> = (0..400).map(|i| ((i % 20) as f64, (i / 20) as f64)).collect();
        let folds = spatial_blocks(&xy, 4, 5, 3);
        let mut all: Vec<usize> = folds.iter().flat_map(|f| f.test.clone()).collect();
        all.sort();
        assert_eq!(all, (0..400).collect::<Vec<_>>(), "every cell tested exactly once");
        for f in &folds {
            assert!(f.test.iter().all(|t| !f.train.contains(t)));
            assert_eq!(f.test.len() + f.train.len(), 400);
        }
        assert_eq!(folds, spatial_blocks(&xy, 4, 5, 3), "seeded");
    }
}
