//! [`Frame`]: a data frame of per-cell (obs) or per-gene (var) annotations.

use std::collections::BTreeMap;

/// One annotation column. Categorical codes are `-1` where the value is missing, as in pandas.
#[derive(Debug, Clone, PartialEq)]
pub enum Column {
    Categorical { codes: Vec<i32>, categories: Vec<String>, ordered: bool },
    Str(Vec<String>),
    Float(Vec<f64>),
    Int(Vec<i64>),
    Bool(Vec<bool>),
}

impl Column {
    /// Builds a categorical column from labels; categories are sorted, as pandas does.
    pub fn categorical_from_labels<S: AsRef<str>>(labels: &[S]) -> Self {
        let mut categories: Vec<String> = labels.iter().map(|s| s.as_ref().to_owned()).collect();
        categories.sort();
        categories.dedup();
        let codes = labels
            .iter()
            .map(|s| categories.binary_search_by(|c| c.as_str().cmp(s.as_ref())).unwrap() as i32)
            .collect();
        Column::Categorical { codes, categories, ordered: false }
    }

    pub fn len(&self) -> usize {
        match self {
            Column::Categorical { codes, .. } => codes.len(),
            Column::Str(v) => v.len(),
            Column::Float(v) => v.len(),
            Column::Int(v) => v.len(),
            Column::Bool(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A short name of the column's kind, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Column::Categorical { .. } => "categorical",
            Column::Str(_) => "string",
            Column::Float(_) => "float",
            Column::Int(_) => "integer",
            Column::Bool(_) => "boolean",
        }
    }

    /// The value of row `i` as a label; `None` for a missing categorical value or a NaN float.
    pub fn label(&self, i: usize) -> Option<String> {
        match self {
            Column::Categorical { codes, categories, .. } => {
                usize::try_from(codes[i]).ok().map(|c| categories[c].clone())
            }
            Column::Str(v) => Some(v[i].clone()),
            Column::Float(v) => (!v[i].is_nan()).then(|| v[i].to_string()),
            Column::Int(v) => Some(v[i].to_string()),
            Column::Bool(v) => Some(v[i].to_string()),
        }
    }

    /// Every row as a label (see [`Column::label`]).
    pub fn labels(&self) -> Vec<Option<String>> {
        (0..self.len()).map(|i| self.label(i)).collect()
    }

    /// Numeric values, if the column is numeric (booleans as 0/1).
    pub fn as_f64(&self) -> Option<Vec<f64>> {
        match self {
            Column::Float(v) => Some(v.clone()),
            Column::Int(v) => Some(v.iter().map(|&x| x as f64).collect()),
            Column::Bool(v) => Some(v.iter().map(|&x| f64::from(u8::from(x))).collect()),
            _ => None,
        }
    }

    /// How many rows carry each label (missing values are not counted).
    pub fn value_counts(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for label in self.labels().into_iter().flatten() {
            *counts.entry(label).or_insert(0) += 1;
        }
        counts
    }

    /// Keeps only the listed rows, in the order given.
    pub fn select(&self, rows: &[usize]) -> Self {
        fn pick<T: Clone>(v: &[T], rows: &[usize]) -> Vec<T> {
            rows.iter().map(|&i| v[i].clone()).collect()
        }
        match self {
            Column::Categorical { codes, categories, ordered } => {
                Column::Categorical { codes: pick(codes, rows), categories: categories.clone(), ordered: *ordered }
            }
            Column::Str(v) => Column::Str(pick(v, rows)),
            Column::Float(v) => Column::Float(pick(v, rows)),
            Column::Int(v) => Column::Int(pick(v, rows)),
            Column::Bool(v) => Column::Bool(pick(v, rows)),
        }
    }
}

/// A data frame: a string index and named columns, in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Frame {
    pub index: Vec<String>,
    columns: Vec<(String, Column)>,
}

impl Frame {
    pub fn new(index: Vec<String>) -> Self {
        Self { index, columns: Vec::new() }
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Adds or replaces a column. Panics if its length differs from the index (a programming
    /// error: readers check lengths and report them as file errors before calling this).
    pub fn insert(&mut self, name: impl Into<String>, column: Column) {
        let name = name.into();
        assert_eq!(column.len(), self.index.len(), "column '{name}' length differs from index");
        match self.columns.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = column,
            None => self.columns.push((name, column)),
        }
    }

    pub fn get(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|(n, _)| n == name).map(|(_, c)| c)
    }

    pub fn column_names(&self) -> impl Iterator<Item = &str> {
        self.columns.iter().map(|(n, _)| n.as_str())
    }

    pub fn columns(&self) -> impl Iterator<Item = (&str, &Column)> {
        self.columns.iter().map(|(n, c)| (n.as_str(), c))
    }

    /// Keeps only the listed rows, in the order given.
    pub fn select(&self, rows: &[usize]) -> Self {
        Self {
            index: rows.iter().map(|&i| self.index[i].clone()).collect(),
            columns: self.columns.iter().map(|(n, c)| (n.clone(), c.select(rows))).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categorical_from_labels_sorts_categories() {
        let c = Column::categorical_from_labels(&["L5", "L1", "L5"]);
        assert_eq!(
            c,
            Column::Categorical { codes: vec![1, 0, 1], categories: vec!["L1".into(), "L5".into()], ordered: false }
        );
        assert_eq!(c.value_counts().get("L5"), Some(&2));
        assert_eq!(c.select(&[1]).labels(), vec![Some("L1".to_string())]);
    }

    #[test]
    fn missing_values_are_none() {
        let c = Column::Categorical { codes: vec![-1, 0], categories: vec!["a".into()], ordered: false };
        assert_eq!(c.labels(), vec![None, Some("a".to_string())]);
        assert_eq!(Column::Float(vec![f64::NAN]).label(0), None);
    }

    #[test]
    fn insert_replaces_by_name() {
        let mut f = Frame::new(vec!["c1".into(), "c2".into()]);
        f.insert("x", Column::Int(vec![1, 2]));
        f.insert("x", Column::Int(vec![3, 4]));
        assert_eq!(f.column_names().collect::<Vec<_>>(), vec!["x"]);
        assert_eq!(f.get("x"), Some(&Column::Int(vec![3, 4])));
    }
}
