//! Depth along a layered tissue's axis (e.g. cortical depth from pia to white matter), per
//! section, from ordered layer labels: the axis is the direction in which the layer rank grows
//! (least squares of rank on x and y), and depth is the position along it scaled so that the
//! section's 1st and 99th percentiles are 0 and 1. Sections are handled separately, so their
//! coordinate frames (rotations, offsets) do not matter.

use crate::{SectionedPoints, SpatialError};

/// Depth in `[0, 1]` per cell; `rank` is each cell's layer rank (NaN = unknown layer, which gets
/// a depth from its position all the same).
pub fn layer_depth(points: &SectionedPoints, rank: &[f64]) -> Result<Vec<f64>, SpatialError> {
    if rank.len() != points.len() {
        return Err(SpatialError::Length { what: "layer ranks", got: rank.len(), cells: points.len() });
    }
    let mut depth = vec![f64::NAN; points.len()];
    for s in 0..points.n_sections() as u32 {
        let cells: Vec<usize> = (0..points.len()).filter(|&i| points.sections()[i] == s).collect();
        let known: Vec<usize> = cells.iter().copied().filter(|&i| rank[i].is_finite()).collect();
        if known.len() < 3 {
            return Err(SpatialError::Other(format!(
                "section {s} has {} cells with a known layer; at least 3 are needed to find its axis",
                known.len()
            )));
        }
        // Centred least squares: [sxx sxy; sxy syy] [b; c] = [sxr; syr].
        let n = known.len() as f64;
        let mean = |f: &dyn Fn(usize) -> f64| known.iter().map(|&i| f(i)).sum::<f64>() / n;
        let xy = points.xy();
        let (mx, my, mr) = (mean(&|i| xy[i][0]), mean(&|i| xy[i][1]), mean(&|i| rank[i]));
        let (mut sxx, mut sxy, mut syy, mut sxr, mut syr) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for &i in &known {
            let (dx, dy, dr) = (xy[i][0] - mx, xy[i][1] - my, rank[i] - mr);
            sxx += dx * dx;
            sxy += dx * dy;
            syy += dy * dy;
            sxr += dx * dr;
            syr += dy * dr;
        }
        let det = sxx * syy - sxy * sxy;
        if det.abs() < 1e-12 * (sxx * syy).max(1e-300) {
            return Err(SpatialError::Other(format!("section {s}: the cells lie on a line; no axis to fit")));
        }
        let (b, c) = ((syy * sxr - sxy * syr) / det, (sxx * syr - sxy * sxr) / det);
        let t: Vec<f64> = cells.iter().map(|&i| b * xy[i][0] + c * xy[i][1]).collect();
        let mut sorted = t.clone();
        sorted.sort_by(f64::total_cmp);
        let q = |p: f64| sorted[((sorted.len() - 1) as f64 * p).round() as usize];
        let (lo, hi) = (q(0.01), q(0.99));
        for (&i, &v) in cells.iter().zip(&t) {
            depth[i] = ((v - lo) / (hi - lo).max(1e-300)).clamp(0.0, 1.0);
        }
    }
    Ok(depth)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two sections with the same layered tissue, one rotated by 90 degrees and shifted: depth
    /// follows the layers in both.
    #[test]
    fn depth_follows_the_layers_in_any_frame() {
        let mut xy = Vec::new();
        let mut section = Vec::new();
        let mut rank = Vec::new();
        let mut true_depth = Vec::new();
        for s in 0..2u32 {
            for i in 0..400 {
                let (u, v) = ((i % 20) as f64 / 19.0, (i / 20) as f64 / 19.0); // u = depth
                let (x, y) = if s == 0 { (u * 100.0, v * 50.0) } else { (1000.0 - v * 50.0, 300.0 + u * 100.0) };
                xy.push([x, y]);
                section.push(s);
                rank.push((u * 3.999).floor());
                true_depth.push(u);
            }
        }
        let p = SectionedPoints::new(xy, &section).unwrap();
        let d = layer_depth(&p, &rank).unwrap();
        let worst = d.iter().zip(&true_depth).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(worst < 0.03, "largest depth error {worst}");
    }

    #[test]
    fn too_few_labelled_cells_is_an_error() {
        let p = SectionedPoints::single_section(vec![[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]).unwrap();
        assert!(layer_depth(&p, &[0.0, f64::NAN, 1.0]).is_err());
        assert!(layer_depth(&p, &[0.0]).is_err());
    }
}
