//! The first picture of an embedding across samples as one library call ([`embedding_view`]):
//! embedded .h5ad files (spatial and dissociated, any technologies) joined into one AnnData with
//! 2-D UMAPs of obsm['X_sof'], of obsm['X_sof_niche'] (the cells with coordinates) and of PCA of
//! the genes every file measures (the no-model baseline), and kNN purity of each label in each
//! representation: how mixed modalities and technologies are, how well layers and cell types
//! separate, beside the same numbers for PCA.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use ndarray::{Array2, ArrayView2};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use sof_io::h5ad::{H5adReader, UnsValue};
use sof_io::{AnnData, Column, CsrMatrix, Frame};
use sof_tasks::view::{NearestNeighbours, UmapSettings};
use sof_tokenize::Modality;

use crate::error::{PipelineError, Result};

/// One embedded file of the view.
#[derive(Debug, Clone)]
pub struct ViewInput {
    /// An .h5ad with obsm['X_sof'] (from [`crate::embed::embed_h5ad`]).
    pub path: PathBuf,
    pub technology: String,
    pub modality: Modality,
}

/// The view of some embedded files.
#[derive(Debug, Clone)]
pub struct ViewSpec {
    pub inputs: Vec<ViewInput>,
    /// The joined .h5ad (see [`embedding_view`]).
    pub output: PathBuf,
    /// obs columns to colour by and score, where a file has them (cells of a file without one
    /// are unlabelled for it); `modality` and `technology` always are.
    pub labels: Vec<String>,
    /// About this many cells at most, drawn from each file in proportion to its size (each
    /// file's share rounded up).
    pub max_cells: usize,
    pub umap: UmapSettings,
    /// Neighbours of the kNN purity.
    pub neighbours: usize,
    /// Cells queried for the kNN purity (against all cells).
    pub purity_queries: usize,
}

impl ViewSpec {
    /// At most 10,000 cells, scanpy's UMAP settings, purity over 15 neighbours of 2,000 cells.
    pub fn new(inputs: Vec<ViewInput>, output: impl Into<PathBuf>, labels: Vec<String>, seed: u64) -> Self {
        ViewSpec {
            inputs,
            output: output.into(),
            labels,
            max_cells: 10_000,
            umap: UmapSettings { seed, ..UmapSettings::default() },
            neighbours: 15,
            purity_queries: 2_000,
        }
    }
}

/// The representations of the view, with the obsm key of their UMAP.
pub const REPRESENTATIONS: [(&str, &str); 3] =
    [("X_sof", "X_umap"), ("X_sof_niche", "X_umap_niche"), ("PCA", "X_umap_pca")];

/// kNN purity of one label in one representation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mixing {
    pub label: String,
    /// `X_sof`, `X_sof_niche` or `PCA` (of the shared genes).
    pub representation: String,
    /// Labelled cells with this representation.
    pub cells: usize,
    /// Fraction of a cell's neighbours sharing its label, in the representation itself.
    pub observed: f64,
    /// The same with the labels shuffled (perfect mixing).
    pub expected: f64,
    /// `observed` in the 2-D UMAP: how faithful the picture is to it.
    pub umap_observed: f64,
}

/// What [`embedding_view`] wrote and measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ViewSummary {
    pub file: PathBuf,
    pub cells: usize,
    /// Genes every file measures (the PCA baseline's features).
    pub shared_genes: usize,
    /// PCA components of the baseline.
    pub pca_components: usize,
    /// Neighbours of the kNN purity.
    pub k: usize,
    pub mixing: Vec<Mixing>,
}

impl ViewSummary {
    pub fn get(&self, label: &str, representation: &str) -> Option<&Mixing> {
        self.mixing.iter().find(|m| m.label == label && m.representation == representation)
    }

    /// The scored labels, in the order first scored.
    pub fn labels(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for m in &self.mixing {
            if !out.contains(&m.label.as_str()) {
                out.push(&m.label);
            }
        }
        out
    }

    /// What random mixing gives for `label` over every cell scored for it (NaN if unscored).
    pub fn expected(&self, label: &str) -> f64 {
        REPRESENTATIONS.iter().find_map(|(rep, _)| self.get(label, rep)).map_or(f64::NAN, |m| m.expected)
    }
}

/// Cells read at a time.
const BLOCK: usize = 65_536;

/// One file's part of the view.
struct Part {
    x_sof: Array2<f64>,
    niche: Option<Array2<f64>>,
    counts: CsrMatrix,
    genes: Vec<String>,
    obs: Frame,
}

/// Joins the embedded files into `spec.output`: raw counts of the shared genes in X; obs
/// `sample`, `modality`, `technology` and the labels; obsm `X_sof`, `X_pca` (PCA of the
/// log-normalized shared genes), `X_umap` (of X_sof, as `sc.pl.umap` reads it), `X_umap_niche`
/// (of X_sof_niche; NaN for cells without coordinates) and `X_umap_pca`; `uns['umap']['params']`.
///
/// `progress` is told each step (read, PCA, UMAP of each representation, purity).
pub fn embedding_view(spec: &ViewSpec, progress: &mut dyn FnMut(&str)) -> Result<ViewSummary> {
    if spec.inputs.is_empty() {
        return Err(PipelineError::setting("the embedding view needs at least one embedded file"));
    }
    let _writer = sof_io::OutputLock::acquire(&spec.output)?;
    let total: usize = spec
        .inputs
        .iter()
        .map(|i| H5adReader::open(&i.path).map(|r| r.n_obs()))
        .collect::<std::result::Result<Vec<_>, _>>()?
        .iter()
        .sum();
    let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(spec.umap.seed);
    let mut parts = Vec::new();
    let mut sample_names = Vec::new();
    progress("reading the embedded files");
    for input in &spec.inputs {
        let reader = H5adReader::open(&input.path)?;
        let n = reader.n_obs();
        let take = if total > spec.max_cells { (n * spec.max_cells).div_ceil(total).min(n) } else { n };
        let mut rows = rand::seq::index::sample(&mut rng, n, take).into_vec();
        rows.sort_unstable();
        let keys = reader.obsm_keys();
        if !keys.iter().any(|k| k == "X_sof") {
            return Err(PipelineError::input(
                input.path.display(),
                "obsm['X_sof'] is missing: embed the file first (sof embed)",
            ));
        }
        let x_sof = reader.obsm("X_sof")?.select(ndarray::Axis(0), &rows);
        let niche = match keys.iter().any(|k| k == "X_sof_niche") {
            true => Some(reader.obsm("X_sof_niche")?.select(ndarray::Axis(0), &rows)),
            false => None,
        };
        // The drawn rows, read in blocks: a large file is never held whole.
        let mut counts = CsrMatrix::empty(reader.n_vars());
        for start in (0..n).step_by(BLOCK) {
            let end = (start + BLOCK).min(n);
            let (lo, hi) = (rows.partition_point(|&r| r < start), rows.partition_point(|&r| r < end));
            if lo < hi {
                let local: Vec<usize> = rows[lo..hi].iter().map(|&r| r - start).collect();
                counts.append_rows(&reader.read_rows(start..end)?.select_rows(&local));
            }
        }
        let obs = reader.obs()?.select(&rows);
        sample_names.extend(std::iter::repeat_n(
            input.path.file_stem().unwrap_or_default().to_string_lossy().into_owned(),
            rows.len(),
        ));
        parts.push(Part { x_sof, niche, counts, genes: reader.var()?.index, obs });
    }
    let d = parts[0].x_sof.ncols();
    if let Some((input, p)) = spec.inputs.iter().zip(&parts).find(|(_, p)| p.x_sof.ncols() != d) {
        return Err(PipelineError::input(
            input.path.display(),
            format!(
                "obsm['X_sof'] has {} columns but {} has {d}: embed every file with the same model",
                p.x_sof.ncols(),
                spec.inputs[0].path.display()
            ),
        ));
    }

    // Genes every file measures, in the first file's order; counts restricted to them.
    let mut shared: Vec<String> = parts[0].genes.clone();
    for p in &parts[1..] {
        let has: std::collections::HashSet<&str> = p.genes.iter().map(String::as_str).collect();
        shared.retain(|g| has.contains(g.as_str()));
    }
    if shared.len() < 2 {
        return Err(PipelineError::setting(format!(
            "the embedded files share {} gene(s): the PCA baseline of the view needs at least 2",
            shared.len()
        )));
    }
    let column: HashMap<&str, u32> = shared.iter().enumerate().map(|(i, g)| (g.as_str(), i as u32)).collect();
    let mut counts = CsrMatrix::empty(shared.len());
    for p in &parts {
        let remap: Vec<Option<u32>> = p.genes.iter().map(|g| column.get(g.as_str()).copied()).collect();
        counts.append_rows(&p.counts.remap_columns(&remap, shared.len()));
    }
    let n = counts.n_rows();
    let mut x_sof = Array2::<f64>::zeros((n, d));
    // X_sof_niche is wider than X_sof (the cell beside its neighbours' mean); files without
    // coordinates have none.
    let d_niche = parts.iter().find_map(|p| p.niche.as_ref().map(Array2::ncols)).unwrap_or(0);
    if let Some((input, _)) =
        spec.inputs.iter().zip(&parts).find(|(_, p)| p.niche.as_ref().is_some_and(|q| q.ncols() != d_niche))
    {
        return Err(PipelineError::input(
            input.path.display(),
            format!("obsm['X_sof_niche'] is not {d_niche} columns wide like the other files': embed every file alike"),
        ));
    }
    let (mut niche_rows, mut niche_parts) = (Vec::new(), Vec::new());
    let mut at = 0;
    for p in &parts {
        let m = p.x_sof.nrows();
        x_sof.slice_mut(ndarray::s![at..at + m, ..]).assign(&p.x_sof);
        if let Some(q) = &p.niche {
            niche_rows.extend(at..at + m);
            niche_parts.push(q.view());
        }
        at += m;
    }
    let niche_x = if niche_parts.is_empty() {
        Array2::zeros((0, 0))
    } else {
        ndarray::concatenate(ndarray::Axis(0), &niche_parts).expect("equal widths, checked above")
    };

    // Labels (modality, technology, then the asked obs columns) as categorical columns of the
    // joined cells: their codes score the purity, the columns go into obs.
    let mut labels: Vec<(String, Column)> = vec![
        (
            "modality".into(),
            repeat(&spec.inputs, &parts, |i| match i.modality {
                Modality::Spatial => "spatial".to_owned(),
                Modality::Dissociated => "dissociated".to_owned(),
            }),
        ),
        ("technology".into(), repeat(&spec.inputs, &parts, |i| i.technology.clone())),
    ];
    for key in &spec.labels {
        let col: Vec<Option<String>> =
            parts.iter().flat_map(|p| p.obs.get(key).map_or(vec![None; p.x_sof.nrows()], Column::labels)).collect();
        if col.iter().any(Option::is_some) {
            labels.push((key.clone(), categorical(&col)));
        }
    }

    progress("PCA of the shared genes");
    let normalized = sof_tasks::pca::log_normalize(&counts);
    let all: Vec<usize> = (0..n).collect();
    let k_pca = 50.min(shared.len() - 1).min(n.saturating_sub(1)).max(1);
    let pca = sof_tasks::pca::Pca::fit(&normalized, &all, k_pca, spec.umap.seed).transform(&normalized, &all);

    // (name, UMAP key, rows of the representation, which view cells they are: None = all)
    type Representation<'a> = (&'a str, &'a str, ArrayView2<'a, f64>, Option<&'a [usize]>);
    let reps: [Representation<'_>; 3] = [
        (REPRESENTATIONS[0].0, REPRESENTATIONS[0].1, x_sof.view(), None),
        (REPRESENTATIONS[1].0, REPRESENTATIONS[1].1, niche_x.view(), Some(&niche_rows)),
        (REPRESENTATIONS[2].0, REPRESENTATIONS[2].1, pca.view(), None),
    ];
    let mut obsm = BTreeMap::new();
    let mut mixing = Vec::new();
    for (name, umap_key, x, rows) in reps {
        if x.nrows() == 0 {
            continue;
        }
        if x.nrows() < spec.umap.neighbours + 2 || x.nrows() <= spec.neighbours {
            progress(&format!("{name}: {} cells, too few for a UMAP; skipped", x.nrows()));
            continue;
        }
        progress(&format!("UMAP of {name} ({} cells)", x.nrows()));
        let xf = x.mapv(|v| v as f32);
        let xy =
            sof_tasks::view::umap(xf.view(), &spec.umap).map_err(|e| PipelineError::setting(format!("{name}: {e}")))?;
        progress(&format!("kNN purity in {name}"));
        let seed = spec.umap.seed;
        let nn = NearestNeighbours::new(xf.view(), spec.neighbours, spec.purity_queries, seed)
            .map_err(|e| PipelineError::setting(format!("{name}: {e}")))?;
        let nn_2d = NearestNeighbours::new(xy.view(), spec.neighbours, spec.purity_queries, seed)
            .map_err(|e| PipelineError::setting(format!("{name}: {e}")))?;
        for (label, column) in &labels {
            let Column::Categorical { codes: all, .. } = column else { unreachable!("built as categorical") };
            let code = |i: usize| usize::try_from(all[i]).ok();
            let codes: Vec<Option<usize>> = match rows {
                Some(r) => r.iter().map(|&i| code(i)).collect(),
                None => (0..n).map(code).collect(),
            };
            let distinct: std::collections::BTreeSet<usize> = codes.iter().flatten().copied().collect();
            if distinct.len() < 2 {
                continue;
            }
            let (Ok(p), Ok(p2)) = (nn.purity(&codes), nn_2d.purity(&codes)) else { continue };
            mixing.push(Mixing {
                label: label.clone(),
                representation: name.to_owned(),
                cells: codes.iter().flatten().count(),
                observed: p.observed,
                expected: p.expected,
                umap_observed: p2.observed,
            });
        }
        let mut full = Array2::<f64>::from_elem((n, 2), f64::NAN);
        match rows {
            Some(r) => r.iter().enumerate().for_each(|(k, &i)| full.row_mut(i).assign(&xy.row(k).mapv(f64::from))),
            None => full.assign(&xy.mapv(f64::from)),
        }
        obsm.insert(umap_key.to_owned(), full);
    }
    obsm.insert("X_sof".to_owned(), x_sof);
    obsm.insert("X_pca".to_owned(), pca);

    let index = parts
        .iter()
        .zip(&spec.inputs)
        .flat_map(|(p, i)| {
            let stem = i.path.file_stem().unwrap_or_default().to_string_lossy().into_owned();
            p.obs.index.iter().map(move |c| format!("{stem}:{c}"))
        })
        .collect();
    let mut obs = Frame::new(index);
    obs.insert("sample", Column::categorical_from_labels(&sample_names));
    for (label, column) in labels {
        obs.insert(label, column);
    }
    let adata = AnnData { x: counts, obs, var: Frame::new(shared.clone()), obsm };
    let uns = BTreeMap::from([("umap".to_owned(), umap_uns(&spec.umap, "X_sof"))]);
    sof_io::h5ad::write_h5ad(&spec.output, &adata, &uns)?;
    Ok(ViewSummary {
        file: spec.output.clone(),
        cells: n,
        shared_genes: shared.len(),
        pca_components: k_pca,
        k: spec.neighbours,
        mixing,
    })
}

/// scanpy's record of a UMAP (`sc.tl.umap` writes uns['umap']['params']).
pub(crate) fn umap_uns(settings: &UmapSettings, use_rep: &str) -> UnsValue {
    let params = BTreeMap::from([
        ("n_neighbors".to_owned(), UnsValue::Int(settings.neighbours as i64)),
        ("min_dist".to_owned(), UnsValue::Float(f64::from(settings.min_dist))),
        ("random_state".to_owned(), UnsValue::Int(settings.seed as i64)),
        ("use_rep".to_owned(), UnsValue::Str(use_rep.to_owned())),
    ]);
    UnsValue::Dict(BTreeMap::from([("params".to_owned(), UnsValue::Dict(params))]))
}

/// One value per cell of each file, as a categorical column.
fn repeat(inputs: &[ViewInput], parts: &[Part], f: impl Fn(&ViewInput) -> String) -> Column {
    let values: Vec<String> =
        inputs.iter().zip(parts).flat_map(|(i, p)| std::iter::repeat_n(f(i), p.x_sof.nrows())).collect();
    Column::categorical_from_labels(&values)
}

/// A categorical column with missing values as code -1 (pandas' NaN).
fn categorical(values: &[Option<String>]) -> Column {
    let mut categories: Vec<String> = values.iter().flatten().cloned().collect();
    categories.sort();
    categories.dedup();
    let codes = values
        .iter()
        .map(|v| v.as_ref().map_or(-1, |s| categories.binary_search(s).expect("a listed name") as i32))
        .collect();
    Column::Categorical { codes, categories, ordered: false }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file of `n` cells over `genes`, two groups (`group` in obs), with X_sof of `width`
    /// columns that follows the group, and X_sof_niche where `spatial`.
    fn file(dir: &std::path::Path, name: &str, n: usize, genes: &[&str], width: usize, spatial: bool) -> PathBuf {
        let g = genes.len();
        let group = |i: usize| i % 2;
        let values: Vec<f32> = (0..n * g).map(|k| ((k / g) % 2 * 3 + k % g % 3) as f32 + 1.0).collect();
        let mut obs = Frame::new((0..n).map(|i| format!("c{i}")).collect());
        let names: Vec<String> = (0..n).map(|i| format!("g{}", group(i))).collect();
        obs.insert("group", Column::categorical_from_labels(&names));
        let emb =
            |w: usize| Array2::from_shape_fn((n, w), |(i, j)| (group(i) * 5) as f64 + ((i * 7 + j) % 5) as f64 * 0.1);
        let mut obsm = BTreeMap::from([("X_sof".to_owned(), emb(width))]);
        if spatial {
            obsm.insert("X_sof_niche".to_owned(), emb(2 * width));
        }
        let adata = AnnData {
            x: CsrMatrix::from_dense(n, g, &values),
            obs,
            var: Frame::new(genes.iter().map(|s| s.to_string()).collect()),
            obsm,
        };
        let path = dir.join(name);
        sof_io::h5ad::write_h5ad(&path, &adata, &BTreeMap::new()).unwrap();
        path
    }

    fn input(path: PathBuf, technology: &str, modality: Modality) -> ViewInput {
        ViewInput { path, technology: technology.into(), modality }
    }

    /// Two files joined over their shared genes, at most `max_cells` of them; each UMAP where
    /// its representation exists; a label that separates the embedding scores near 1, and the
    /// same seed gives the same view.
    #[test]
    fn joins_files_and_scores_labels() {
        let d = tempfile::tempdir().unwrap();
        let a = file(d.path(), "a.h5ad", 60, &["A", "B", "C", "D"], 4, true);
        let b = file(d.path(), "b.h5ad", 40, &["D", "B", "E", "A"], 4, false);
        let out = d.path().join("view.h5ad");
        let mut spec = ViewSpec::new(
            vec![input(a, "merfish", Modality::Spatial), input(b, "dissociated", Modality::Dissociated)],
            &out,
            vec!["group".into(), "absent".into()],
            1,
        );
        spec.max_cells = 50;
        let s = embedding_view(&spec, &mut |_| {}).unwrap();
        assert_eq!((s.cells, s.shared_genes), (50, 3), "30 + 20 cells over A, B, D");
        let v = sof_io::h5ad::read_h5ad(&out).unwrap();
        assert_eq!(v.var.index, ["A", "B", "D"]);
        assert_eq!(v.obsm["X_umap"].dim(), (50, 2));
        let modality = v.obs.get("modality").unwrap().labels();
        for (i, m) in modality.iter().enumerate() {
            assert_eq!(v.obsm["X_umap_niche"][[i, 0]].is_finite(), m.as_deref() == Some("spatial"));
        }
        let group = s.get("group", "X_sof").unwrap();
        assert!(group.observed > 0.95 && group.expected < 0.55, "{group:?}");
        assert!(s.get("absent", "X_sof").is_none() && s.get("modality", "X_sof_niche").is_none());
        assert_eq!(s.get("modality", "PCA").unwrap().cells, 50);
        // Counts of the shared genes kept: a.h5ad's gene D is its fourth column.
        let (cols, vals) = v.x.row(0);
        assert_eq!(cols.len(), 3);
        assert!(vals.iter().all(|&x| x >= 1.0));
        let again = embedding_view(&spec, &mut |_| {}).unwrap();
        assert_eq!(again.mixing, s.mixing, "seeded");
    }

    /// Files embedded by different models, or not embedded, are refused naming the file.
    #[test]
    fn refuses_mismatched_or_missing_embeddings() {
        let d = tempfile::tempdir().unwrap();
        let a = file(d.path(), "a.h5ad", 30, &["A", "B"], 4, true);
        let b = file(d.path(), "b.h5ad", 30, &["A", "B"], 6, false);
        let out = d.path().join("view.h5ad");
        let spec = ViewSpec::new(
            vec![input(a.clone(), "x", Modality::Spatial), input(b, "y", Modality::Dissociated)],
            &out,
            Vec::new(),
            0,
        );
        let e = embedding_view(&spec, &mut |_| {}).unwrap_err().to_string();
        assert!(e.contains("b.h5ad") && e.contains("same model"), "{e}");
        let mut plain = sof_io::h5ad::read_h5ad(&a).unwrap();
        plain.obsm.clear();
        let c = d.path().join("c.h5ad");
        sof_io::h5ad::write_h5ad(&c, &plain, &BTreeMap::new()).unwrap();
        let spec = ViewSpec::new(vec![input(c, "x", Modality::Spatial)], &out, Vec::new(), 0);
        let e = embedding_view(&spec, &mut |_| {}).unwrap_err().to_string();
        assert!(e.contains("c.h5ad") && e.contains("X_sof") && e.contains("sof embed"), "{e}");
        assert!(!out.exists(), "nothing written");
    }
}
