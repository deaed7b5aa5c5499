//! The report types sof writes as JSON: a probe's results ([`ProbeReport`], what `sof probe`
//! writes) and a mapping's scores ([`MapReport`], `sof map --report`). They live in a crate of
//! their own, with serde as the only dependency, so that tools which read results (the
//! evaluation job in xtask, notebooks through other Rust code) depend on the schema and not on
//! the numerics that produce it; `sof_tasks` re-exports them where they are made.
//!
//! ```
//! use sof_report::{Mapper, MapReport};
//!
//! let mut report = MapReport { query_cells: 10, reference_cells: 90, ..Default::default() };
//! report.insert(Mapper::Pca50, "layer", &[("accuracy", 0.75)]);
//! assert_eq!(report.get("layer", "accuracy", Mapper::Pca50), Some(0.75));
//! assert_eq!(report.get("layer", "accuracy", Mapper::Ours), None);
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One feature set with one head, over every fold and seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureResult {
    pub features: String,
    /// `linear`, `mlp`, ...
    pub head: String,
    /// metric -> per-(seed, fold) values
    #[serde(deserialize_with = "nan::map_vec")]
    pub values: BTreeMap<String, Vec<f64>>,
    #[serde(deserialize_with = "nan::map")]
    pub mean: BTreeMap<String, f64>,
    #[serde(deserialize_with = "nan::map")]
    pub sd: BTreeMap<String, f64>,
    /// Summed over folds of the first seed (classification).
    pub confusion: Option<Vec<Vec<u64>>>,
    /// Out-of-fold predictions of the first seed, per cell in `cell_index` order: class codes
    /// (-1 = never tested) or values (rows of NaN = never tested).
    pub predicted_classes: Option<Vec<i64>>,
    #[serde(deserialize_with = "nan::rows")]
    pub predicted_values: Option<Vec<Vec<f64>>>,
}

/// JSON has no NaN (serde_json writes `null`): read `null` back as NaN.
mod nan {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer};

    fn v(x: Option<f64>) -> f64 {
        x.unwrap_or(f64::NAN)
    }

    pub fn map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, f64>, D::Error> {
        let m = BTreeMap::<String, Option<f64>>::deserialize(d)?;
        Ok(m.into_iter().map(|(k, x)| (k, v(x))).collect())
    }

    pub fn map_vec<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, Vec<f64>>, D::Error> {
        let m = BTreeMap::<String, Vec<Option<f64>>>::deserialize(d)?;
        Ok(m.into_iter().map(|(k, x)| (k, x.into_iter().map(v).collect())).collect())
    }

    pub fn rows<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Vec<f64>>>, D::Error> {
        let m = Option::<Vec<Vec<Option<f64>>>>::deserialize(d)?;
        Ok(m.map(|rows| rows.into_iter().map(|r| r.into_iter().map(v).collect()).collect()))
    }
}

impl FeatureResult {
    /// Whether the features are one of the expression baselines (PCA, raw expression, the
    /// neighbourhood baselines).
    pub fn is_baseline(&self) -> bool {
        ["PCA", "raw", "NichePCA", "BANKSY"].iter().any(|b| self.features.starts_with(b))
    }
}

/// A probe's results: what `sof probe` writes as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeReport {
    pub input: String,
    pub task: String,
    pub classes: Vec<String>,
    pub cells: usize,
    /// Rows of the input the cells are (labelled, not dropped).
    pub cell_index: Vec<usize>,
    /// Truth in `cell_index` order: class codes, or values.
    pub truth_classes: Option<Vec<usize>>,
    pub truth_values: Option<Vec<Vec<f64>>>,
    /// Names of the regressed columns.
    pub target_columns: Vec<String>,
    pub folds: Vec<String>,
    pub results: Vec<FeatureResult>,
}

impl ProbeReport {
    /// The result of a feature set (by name prefix) with a head.
    pub fn result(&self, features: &str, head: &str) -> Option<&FeatureResult> {
        self.results.iter().find(|r| r.features.starts_with(features) && r.head == head)
    }

    /// Whether the task is a classification.
    pub fn is_classification(&self) -> bool {
        self.truth_classes.is_some()
    }
}

/// Which mapper a score is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapper {
    /// The model's embeddings.
    Ours,
    /// The reference's most frequent class; its mean value.
    Prior,
    /// The same mapper on PCA-50 of expression (`sof_tasks::mapping::pca_features`).
    Pca50,
}

impl Mapper {
    /// The suffix of this mapper's keys in a [`MapReport`].
    pub fn suffix(self) -> &'static str {
        match self {
            Mapper::Ours => "",
            Mapper::Prior => "_prior",
            Mapper::Pca50 => "_pca50",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mapper::Ours => "ours",
            Mapper::Prior => "prior",
            Mapper::Pca50 => "PCA-50",
        }
    }
}

/// A mapping's scores against the query's truth, what `sof map --report` writes: keys
/// `<column>_<metric><suffix>` (see [`Mapper::suffix`]), e.g. `layer_accuracy_pca50`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MapReport {
    pub query_cells: usize,
    pub reference_cells: usize,
    /// NaN (written as `null`) where a score is undefined, e.g. Spearman's rho of a constant.
    #[serde(flatten, deserialize_with = "nan::map")]
    pub scores: BTreeMap<String, f64>,
}

impl MapReport {
    /// The score `metric` of `mapper` on `column`, if recorded.
    pub fn get(&self, column: &str, metric: &str, mapper: Mapper) -> Option<f64> {
        self.scores.get(&format!("{column}_{metric}{}", mapper.suffix())).copied()
    }

    /// Records `metrics` of `mapper` on `column`.
    pub fn insert(&mut self, mapper: Mapper, column: &str, metrics: &[(&str, f64)]) {
        for (metric, v) in metrics {
            self.scores.insert(format!("{column}_{metric}{}", mapper.suffix()), *v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// JSON has no NaN: an undefined score is written as `null` and read back as NaN.
    #[test]
    fn undefined_scores_round_trip_as_nan() {
        let mut report = MapReport::default();
        report.insert(Mapper::Ours, "depth", &[("spearman", f64::NAN), ("mae", 1.5)]);
        let text = serde_json::to_string(&report).unwrap();
        assert!(text.contains("\"depth_spearman\":null"), "{text}");
        let back: MapReport = serde_json::from_str(&text).unwrap();
        assert!(back.get("depth", "spearman", Mapper::Ours).unwrap().is_nan());
        assert_eq!(back.get("depth", "mae", Mapper::Ours), Some(1.5));
    }
}
