//! Reading delimited text tables: an expression table plus optional coordinate and metadata
//! tables keyed by cell id (as the osmFISH originals and many supplementary tables are shipped).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use ndarray::Array2;

use crate::anndata::AnnData;
use crate::error::{Error, Result};
use crate::frame::{Column, Frame};
use crate::matrix::CsrMatrix;

/// How the tables are laid out.
#[derive(Debug, Clone)]
pub struct TableOptions {
    /// Field separator (tab by default).
    pub delimiter: char,
    /// `true` when the expression table has one row per gene and one column per cell.
    pub genes_in_rows: bool,
    /// Names of the x and y columns of the coordinate table.
    pub coordinate_columns: (String, String),
}

impl Default for TableOptions {
    fn default() -> Self {
        Self { delimiter: '\t', genes_in_rows: true, coordinate_columns: ("X".into(), "Y".into()) }
    }
}

/// A parsed table: column names (without the row-name column) and rows keyed by their first field.
struct Table {
    columns: Vec<String>,
    row_names: Vec<String>,
    rows: Vec<Vec<String>>,
}

fn read_table(path: &Path, delim: char) -> Result<Table> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<String> = match lines.next() {
        Some(h) => h.split(delim).map(|s| s.trim().to_owned()).collect(),
        None => return Err(Error::invalid(path, "header", "the table is empty", "pass a table with a header line")),
    };
    let mut row_names = Vec::new();
    let mut rows = Vec::new();
    let mut columns = None;
    for (ln, line) in lines.enumerate() {
        let fields: Vec<&str> = line.split(delim).collect();
        // R's write.table omits the corner cell: then the header is one field short.
        let cols = columns.get_or_insert_with(|| {
            if fields.len() == header.len() + 1 { header.clone() } else { header[1..].to_vec() }
        });
        if fields.len() != cols.len() + 1 {
            return Err(Error::invalid(
                path,
                format!("line {}", ln + 2),
                format!("has {} fields, expected {}", fields.len(), cols.len() + 1),
                "every row needs a name and one value per column: check the delimiter and for truncation",
            ));
        }
        row_names.push(fields[0].trim().to_owned());
        rows.push(fields[1..].iter().map(|s| s.trim().to_owned()).collect());
    }
    let columns = columns.unwrap_or_else(|| header.get(1..).unwrap_or_default().to_vec());
    Ok(Table { columns, row_names, rows })
}

/// Reads an expression table, with optional coordinate and metadata tables keyed by cell id.
/// Cells are taken in the expression table's order; every one must appear in the other tables.
pub fn read_tables(
    expression: impl AsRef<Path>,
    coordinates: Option<&Path>,
    metadata: Option<&Path>,
    opts: &TableOptions,
) -> Result<AnnData> {
    let path = expression.as_ref();
    let t = read_table(path, opts.delimiter)?;
    let (cells, genes) = if opts.genes_in_rows {
        (t.columns.clone(), t.row_names.clone())
    } else {
        (t.row_names.clone(), t.columns.clone())
    };
    let (n_cells, n_genes) = (cells.len(), genes.len());
    let mut dense = vec![0f32; n_cells * n_genes];
    for (r, row) in t.rows.iter().enumerate() {
        for (c, v) in row.iter().enumerate() {
            let x: f32 = v.parse().map_err(|_| {
                Error::invalid(
                    path,
                    format!("row '{}', column '{}'", t.row_names[r], t.columns[c]),
                    format!("'{v}' is not a number"),
                    "expression tables hold numbers only (besides the header and row names)",
                )
            })?;
            let (cell, gene) = if opts.genes_in_rows { (c, r) } else { (r, c) };
            dense[cell * n_genes + gene] = x;
        }
    }
    let x = CsrMatrix::from_dense(n_cells, n_genes, &dense);
    let mut obs = Frame::new(cells);
    let mut obsm = BTreeMap::new();

    if let Some(cp) = coordinates {
        let ct = read_table(cp, opts.delimiter)?;
        let col = |name: &str| {
            ct.columns.iter().position(|c| c == name).ok_or_else(|| {
                Error::missing(
                    cp,
                    name,
                    format!("coordinate columns are [{}]; pass the right names", ct.columns.join(", ")),
                )
            })
        };
        let (xi, yi) = (col(&opts.coordinate_columns.0)?, col(&opts.coordinate_columns.1)?);
        let rows = lookup(cp, &ct, &obs.index)?;
        let mut xy = Array2::<f64>::zeros((obs.len(), 2));
        for (i, &r) in rows.iter().enumerate() {
            for (k, ci) in [xi, yi].into_iter().enumerate() {
                let v = &ct.rows[r][ci];
                xy[[i, k]] = v.parse().map_err(|_| {
                    Error::invalid(
                        cp,
                        format!("row '{}', column '{}'", ct.row_names[r], ct.columns[ci]),
                        format!("'{v}' is not a number"),
                        "coordinates must be numbers",
                    )
                })?;
            }
        }
        obsm.insert("spatial".to_owned(), xy);
    }

    if let Some(mp) = metadata {
        let mt = read_table(mp, opts.delimiter)?;
        let rows = lookup(mp, &mt, &obs.index)?;
        for (ci, name) in mt.columns.iter().enumerate() {
            let values: Vec<&str> = rows.iter().map(|&r| mt.rows[r][ci].as_str()).collect();
            obs.insert(name.clone(), infer_column(&values));
        }
    }

    let adata = AnnData { x, obs, var: Frame::new(genes), obsm };
    adata.validate(path)?;
    Ok(adata)
}

/// Row of `table` for each cell id, or an error naming the first cell that is missing.
fn lookup(path: &Path, table: &Table, cells: &[String]) -> Result<Vec<usize>> {
    let by_name: HashMap<&str, usize> = table.row_names.iter().enumerate().map(|(i, n)| (n.as_str(), i)).collect();
    cells
        .iter()
        .map(|c| {
            by_name.get(c.as_str()).copied().ok_or_else(|| {
                Error::invalid(
                    path,
                    "row names",
                    format!("has no row for cell '{c}'"),
                    "every cell of the expression table needs a row here",
                )
            })
        })
        .collect()
}

/// Integers, then floats, else a categorical column.
fn infer_column(values: &[&str]) -> Column {
    if let Ok(v) = values.iter().map(|s| s.parse::<i64>()).collect::<Result<Vec<_>, _>>() {
        return Column::Int(v);
    }
    if let Ok(v) = values.iter().map(|s| s.parse::<f64>()).collect::<Result<Vec<_>, _>>() {
        return Column::Float(v);
    }
    Column::categorical_from_labels(values)
}
