//! Choosing the radius that gives a target mean neighbour count (the reference's scheme of
//! 5 / 10 / 20 / 50 / 100 neighbours per dataset).

use rayon::prelude::*;

use crate::graph::Trees;
use crate::{SectionedPoints, SpatialError};

/// The outcome of a radius search.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RadiusSearch {
    pub radius: f64,
    /// Mean neighbour count at that radius (exact, over every cell).
    pub mean_neighbors: f64,
    pub target: f64,
    pub iterations: usize,
}

/// Mean neighbour count at `radius`, over every cell.
pub fn mean_neighbors(points: &SectionedPoints, radius: f64) -> Result<f64, SpatialError> {
    crate::check_radius(radius)?;
    let trees = Trees::build(points);
    Ok(mean_with(points, &trees, radius))
}

fn mean_with(points: &SectionedPoints, trees: &Trees, radius: f64) -> f64 {
    let r2 = radius * radius;
    let total: usize = (0..points.len()).into_par_iter().map(|i| trees.count_within(points, i, r2)).sum();
    total as f64 / points.len().max(1) as f64
}

/// Bisection on the radius until the mean neighbour count is within `rel_tol` of `target`
/// (or the interval cannot shrink further: the count is a step function of the radius, and the
/// closest achievable radius is returned then).
pub fn radius_for_mean_neighbors(
    points: &SectionedPoints,
    target: f64,
    rel_tol: f64,
) -> Result<RadiusSearch, SpatialError> {
    let largest = points.groups().iter().map(Vec::len).max().unwrap_or(0);
    if !(target > 0.0 && target.is_finite() && target < largest.saturating_sub(1) as f64) {
        return Err(SpatialError::BadTarget(target));
    }
    let trees = Trees::build(points);
    // Start from the radius a uniform density would need, then bracket.
    let (mut lo, mut hi) = (0.0f64, initial_guess(points, target));
    let mut iterations = 0;
    let mut best = (f64::INFINITY, hi, 0.0);
    let consider = |r: f64, m: f64, best: &mut (f64, f64, f64)| {
        let err = (m - target).abs();
        if err < best.0 {
            *best = (err, r, m);
        }
    };
    loop {
        let m = mean_with(points, &trees, hi);
        iterations += 1;
        consider(hi, m, &mut best);
        if m >= target || iterations > 60 {
            break;
        }
        lo = hi;
        hi *= 2.0;
    }
    while best.0 > rel_tol * target && iterations < 100 && hi - lo > hi * 1e-12 {
        let mid = 0.5 * (lo + hi);
        let m = mean_with(points, &trees, mid);
        iterations += 1;
        consider(mid, m, &mut best);
        if m < target { lo = mid } else { hi = mid }
    }
    tracing::debug!(target, radius = best.1, mean = best.2, iterations, "radius search");
    Ok(RadiusSearch { radius: best.1, mean_neighbors: best.2, target, iterations })
}

fn initial_guess(points: &SectionedPoints, target: f64) -> f64 {
    // Area of each section's bounding box, summed; density = cells / area.
    let mut area = 0.0;
    for g in points.groups() {
        let (mut x0, mut y0, mut x1, mut y1) = (f64::MAX, f64::MAX, f64::MIN, f64::MIN);
        for &i in g {
            let [x, y] = points.xy()[i as usize];
            x0 = x0.min(x);
            y0 = y0.min(y);
            x1 = x1.max(x);
            y1 = y1.max(y);
        }
        area += ((x1 - x0) * (y1 - y0)).max(0.0);
    }
    let density = points.len() as f64 / area.max(f64::MIN_POSITIVE);
    (target / (std::f64::consts::PI * density)).sqrt().max(1e-9)
}
