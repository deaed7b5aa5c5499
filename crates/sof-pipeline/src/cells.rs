//! What a call reads from a file's cells besides the counts: row filters on obs, label
//! columns as codes, and coordinates with their sections.

use std::path::Path;

use sof_io::{CellSource, Column, Frame};
use sof_spatial::SectionedPoints;

use crate::error::{PipelineError, Result};

/// Rows whose obs satisfy every `col=value` / `col!=value` condition (`file` names the file in
/// errors).
pub fn filter_rows(obs: &Frame, file: &Path, conditions: &[String]) -> Result<Vec<bool>> {
    let mut ok = vec![true; obs.len()];
    for c in conditions {
        let (key, value, equal) = match (c.split_once("!="), c.split_once('=')) {
            (Some((k, v)), _) => (k, v, false),
            (None, Some((k, v))) => (k, v, true),
            _ => return Err(PipelineError::setting(format!("'{c}': a condition is col=value or col!=value"))),
        };
        let col = obs.get(key).ok_or_else(|| {
            PipelineError::input(
                file.display(),
                format!(
                    "obs has no column '{key}' (in '{c}'); columns are: {}",
                    obs.column_names().collect::<Vec<_>>().join(", ")
                ),
            )
        })?;
        let labels = col.labels();
        if !labels.iter().flatten().any(|l| l == value) {
            return Err(PipelineError::input(file.display(), format!("no cell has {key} = '{value}' (in '{c}')")));
        }
        for (o, l) in ok.iter_mut().zip(&labels) {
            *o &= (l.as_deref() == Some(value)) == equal;
        }
    }
    Ok(ok)
}

/// An obs column, or an error listing the columns there are.
pub fn obs_column<'a>(obs: &'a Frame, file: &Path, key: &str) -> Result<&'a Column> {
    obs.get(key).ok_or_else(|| {
        PipelineError::input(
            file.display(),
            format!("obs has no column '{key}'; columns are: {}", obs.column_names().collect::<Vec<_>>().join(", ")),
        )
    })
}

/// Codes and names of an obs column used as labels; missing values are an error.
pub fn label_codes(obs: &Frame, file: &Path, key: &str) -> Result<(Vec<u32>, Vec<String>)> {
    let col = obs_column(obs, file, key)?;
    let missing = |i: usize| {
        PipelineError::input(
            file.display(),
            format!("obs/{key} has a missing value at cell '{}'; fill or drop cells without a label", obs.index[i]),
        )
    };
    // Keep the file's own category order where it has one.
    if let Column::Categorical { codes, categories, .. } = col {
        if let Some(i) = codes.iter().position(|&c| c < 0) {
            return Err(missing(i));
        }
        return Ok((codes.iter().map(|&c| c as u32).collect(), categories.clone()));
    }
    let labels = col.labels();
    if let Some(i) = labels.iter().position(Option::is_none) {
        return Err(missing(i));
    }
    match Column::categorical_from_labels(&labels.into_iter().map(Option::unwrap).collect::<Vec<_>>()) {
        Column::Categorical { codes, categories, .. } => {
            Ok((codes.into_iter().map(|c| c as u32).collect(), categories))
        }
        _ => unreachable!("categorical_from_labels builds a categorical"),
    }
}

/// Coordinates and sections of a spatial source, with errors that name the file and the fix.
/// Reads only obs and obsm['spatial'] (not X).
pub fn points(reader: &dyn CellSource, obs: &Frame, section_key: Option<&str>) -> Result<SectionedPoints> {
    let name = reader.name();
    if !reader.obsm_keys().iter().any(|k| k == "spatial") {
        return Err(PipelineError::input(
            &name,
            "obsm['spatial'] is missing: these cells have no coordinates (dissociated data?), so they have no spatial neighbourhood; spatial targets need a spatial dataset",
        ));
    }
    let xy = reader.obsm("spatial")?;
    if xy.ncols() < 2 {
        return Err(PipelineError::input(
            &name,
            format!("obsm['spatial'] has {} column(s); x and y are needed", xy.ncols()),
        ));
    }
    if xy.ncols() > 2 {
        tracing::warn!(
            "{name}: obsm['spatial'] has {} columns; neighbourhoods use the first two (x, y) only, as within one z-plane",
            xy.ncols()
        );
    }
    let pts: Vec<[f64; 2]> = xy.rows().into_iter().map(|r| [r[0], r[1]]).collect();
    if let Some(i) = pts.iter().position(|p| !(p[0].is_finite() && p[1].is_finite())) {
        return Err(PipelineError::input(
            &name,
            format!(
                "obsm['spatial'] of cell '{}' is ({}, {}); drop or fix cells without a position",
                obs.index[i], pts[i][0], pts[i][1]
            ),
        ));
    }
    let sections = match section_key {
        Some(k) => label_codes(obs, Path::new(&name), k)?.0,
        None => vec![0; pts.len()],
    };
    Ok(SectionedPoints::new(pts, &sections)?)
}
