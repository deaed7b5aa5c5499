//! [`Target`]: what a head, a probe or a fine-tuned model learns to predict, one type for all.

use ndarray::{Array2, Axis};

/// A per-cell target: classes, real values, or distributions (proportions).
///
/// Predictions for a target are `cells x width` matrices: class probabilities (rows sum to 1),
/// values in the target's own units, or proportions (rows sum to 1).
///
/// ```
/// use ndarray::array;
/// use sof_tasks::Target;
///
/// let layers = Target::Classes { y: vec![0, 2, 1, 2], n_classes: 3, class_balanced: false };
/// assert_eq!(layers.width(), 3);
/// assert_eq!(layers.select(&[1, 3]).len(), 2);
/// let density = Target::Values(array![[3.0], [5.0]]);
/// assert_eq!((density.width(), density.len()), (1, 2));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// A class code `0..n_classes` per cell; `class_balanced` weights classes inversely to their
    /// frequency when fitting.
    Classes { y: Vec<usize>, n_classes: usize, class_balanced: bool },
    /// `cells x k` real values (fitted by squared error).
    Values(Array2<f64>),
    /// `cells x k` distributions: non-negative rows summing to 1 (all-zero rows, such as a cell
    /// without neighbours, are ignored when fitting). Fitted by cross-entropy.
    Proportions(Array2<f64>),
}

impl Target {
    /// Cells.
    pub fn len(&self) -> usize {
        match self {
            Target::Classes { y, .. } => y.len(),
            Target::Values(v) | Target::Proportions(v) => v.nrows(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Columns of a prediction: classes, or target columns.
    pub fn width(&self) -> usize {
        match self {
            Target::Classes { n_classes, .. } => *n_classes,
            Target::Values(v) | Target::Proportions(v) => v.ncols(),
        }
    }

    /// The target of cells `rows`, in that order.
    pub fn select(&self, rows: &[usize]) -> Self {
        match self {
            Target::Classes { y, n_classes, class_balanced } => Target::Classes {
                y: rows.iter().map(|&i| y[i]).collect(),
                n_classes: *n_classes,
                class_balanced: *class_balanced,
            },
            Target::Values(v) => Target::Values(v.select(Axis(0), rows)),
            Target::Proportions(v) => Target::Proportions(v.select(Axis(0), rows)),
        }
    }

    /// The class codes, for a classification target.
    pub fn classes(&self) -> Option<&[usize]> {
        match self {
            Target::Classes { y, .. } => Some(y),
            _ => None,
        }
    }

    /// The values or proportions, for a regression target.
    pub fn values(&self) -> Option<&Array2<f64>> {
        match self {
            Target::Values(v) | Target::Proportions(v) => Some(v),
            Target::Classes { .. } => None,
        }
    }
}
