//! Synthetic layered tissue with known ground truth.
//!
//! Sections of cortex-like tissue (bands along y with wavy boundaries, each with its own density
//! and cell-type mix) plus focal niches (a dense tumour-like core with a mixed margin). Every cell
//! type, layer and focal niche has its own marker genes, so expression carries both identity and
//! spatial context. Each section is measured by a technology (a gene panel, a depth and per-gene
//! detection efficiencies); a dissociated sample is drawn from the same tissue and measured over
//! the whole transcriptome, keeping its true position only as ground truth.
//!
//! Deterministic from the seed: cells are generated in fixed-size blocks, each with its own
//! random stream derived from (seed, sample, block), so the output does not depend on the number
//! of threads, and blocks can be streamed to disk for any number of cells.

mod alias;
mod config;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ndarray::Array2;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal, Normal};
use rand_xoshiro::Xoshiro256PlusPlus;
use rayon::prelude::*;
use sof_io::h5ad::{H5adStreamWriter, UnsValue};
use sof_io::{AnnData, CellSource, Column, CsrMatrix, Frame};

use alias::AliasTable;
pub use config::{CellTypeSpec, FocalSpec, LayerSpec, SynthConfig, TechSpec};

/// Problems with a configuration.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("synthetic config: {0}")]
    Config(String),
    #[error(transparent)]
    Io(#[from] sof_io::Error),
}

/// Which sample a block belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sample {
    Section(usize),
    Dissociated,
}

/// Ground truth of one cell. Indices refer to the generator's name lists
/// ([`Generator::cell_type_names`], [`Generator::layer_names`], [`Generator::niche_names`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CellTruth {
    pub section: u32,
    pub cell_type: u16,
    pub layer: u16,
    pub niche: u16,
    pub x_um: f64,
    pub y_um: f64,
}

/// A block of generated cells: counts over the technology's panel and their ground truth.
#[derive(Debug, Clone)]
pub struct Block {
    pub x: CsrMatrix,
    pub truth: Vec<CellTruth>,
}

/// Where a section's layers and focal niches lie.
#[derive(Debug, Clone)]
pub struct SectionLayout {
    phase: f64,
    /// Focal niche centres: (focal spec index, x, y).
    pub focal_centres: Vec<(usize, f64, f64)>,
}

#[derive(Debug)]
struct TechTables {
    spec: TechSpec,
    /// Panel gene indices (into the whole gene list), ascending.
    panel: Vec<u32>,
    /// One expression table per (cell type, layer, focal state).
    tables: Vec<AliasTable>,
}

/// The tissue generator: programs, panels and sampling tables, built once from a config.
#[derive(Debug)]
pub struct Generator {
    cfg: SynthConfig,
    gene_names: Vec<String>,
    niche_names: Vec<String>,
    /// Layer index -> niche index.
    layer_niche: Vec<u16>,
    /// Zone (layer * n_focal_states + focal state) -> cell-type weights as an alias table.
    zone_types: Vec<AliasTable>,
    techs: Vec<TechTables>,
    /// Boundaries of the layers as fractions of the height (len = layers + 1).
    bounds: Vec<f64>,
    max_density: f64,
}

/// Cells generated per block (each block has its own random stream).
pub const BLOCK_CELLS: usize = 8_192;

fn mix(mut x: u64) -> u64 {
    // splitmix64 finaliser
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn stream(seed: u64, a: u64, b: u64) -> Xoshiro256PlusPlus {
    Xoshiro256PlusPlus::seed_from_u64(mix(mix(mix(seed) ^ a) ^ b))
}

impl Generator {
    /// Checks the config and builds the gene programs, panels and sampling tables.
    pub fn new(cfg: SynthConfig) -> Result<Self, SynthError> {
        let err = |m: String| Err(SynthError::Config(m));
        if cfg.layers.is_empty() || cfg.cell_types.is_empty() || cfg.technologies.is_empty() {
            return err("needs at least one layer, cell type and technology".into());
        }
        if cfg.sections > 0 && cfg.section_tech.is_empty() {
            return err("section_tech must name a technology for the sections".into());
        }
        if !(cfg.width_um > 0.0 && cfg.height_um > 0.0) {
            return err("width_um and height_um must be positive".into());
        }
        let type_index = |name: &str| cfg.cell_types.iter().position(|t| t.name == name);
        let n_types = cfg.cell_types.len();
        let markers = cfg.markers_per_type * n_types
            + cfg.markers_per_layer * cfg.layers.len()
            + cfg.markers_per_niche * cfg.focal.len();
        if cfg.n_genes < markers.max(1) {
            return err(format!("n_genes = {} is fewer than the {markers} marker genes", cfg.n_genes));
        }
        for t in &cfg.technologies {
            if t.panel_size > cfg.n_genes || t.mean_counts <= 0.0 || !(0.0..=1.0).contains(&t.min_efficiency) {
                return err(format!(
                    "technology '{}': panel_size <= n_genes, mean_counts > 0 and min_efficiency in 0..1 are required",
                    t.name
                ));
            }
        }
        for name in cfg.section_tech.iter().chain([&cfg.dissociated_tech]) {
            if !cfg.technologies.iter().any(|t| &t.name == name) {
                return err(format!(
                    "unknown technology '{name}' (configured: {:?})",
                    cfg.technologies.iter().map(|t| &t.name).collect::<Vec<_>>()
                ));
            }
        }

        // Zones and their type weights.
        let n_focal_states = 1 + 2 * cfg.focal.len();
        let weights_of = |map: &BTreeMap<String, f64>, what: &str| -> Result<Vec<f64>, SynthError> {
            let mut w = vec![0.0; n_types];
            for (name, v) in map {
                let i = type_index(name)
                    .ok_or_else(|| SynthError::Config(format!("{what}: unknown cell type '{name}'")))?;
                if !(*v >= 0.0 && v.is_finite()) {
                    return Err(SynthError::Config(format!("{what}: weight of '{name}' must be >= 0")));
                }
                w[i] = *v;
            }
            if w.iter().sum::<f64>() <= 0.0 {
                return Err(SynthError::Config(format!("{what}: cell-type weights are all zero")));
            }
            Ok(w)
        };
        let mut zone_types = Vec::new();
        for l in &cfg.layers {
            zone_types.push(AliasTable::new(&weights_of(&l.types, &format!("layer '{}'", l.name))?));
            for f in &cfg.focal {
                zone_types.push(AliasTable::new(&weights_of(&f.core_types, &f.core_name)?));
                zone_types.push(AliasTable::new(&weights_of(&f.margin_types, &f.margin_name)?));
            }
        }
        let mut niche_names: Vec<String> = Vec::new();
        let mut layer_niche = Vec::new();
        for l in &cfg.layers {
            let i = niche_names.iter().position(|n| *n == l.niche).unwrap_or_else(|| {
                niche_names.push(l.niche.clone());
                niche_names.len() - 1
            });
            layer_niche.push(i as u16);
        }
        for f in &cfg.focal {
            niche_names.push(f.core_name.clone());
            niche_names.push(f.margin_name.clone());
        }

        // Gene programs.
        let mut rng = stream(cfg.seed, 0x5052_4f47, 0);
        let n = cfg.n_genes;
        let base_dist = Normal::new(0.0, 1.2).expect("valid normal");
        let noise = Normal::new(0.0, 0.2).expect("valid normal");
        let base: Vec<f64> = (0..n).map(|_| base_dist.sample(&mut rng)).collect();
        let mut genes: Vec<usize> = (0..n).collect();
        shuffle(&mut genes, &mut rng);
        let mut next = 0;
        let mut take = |k: usize| {
            let v = genes[next..next + k].to_vec();
            next += k;
            v
        };
        let type_eff: Vec<Vec<f64>> = (0..n_types)
            .map(|_| {
                let mut e: Vec<f64> = (0..n).map(|_| noise.sample(&mut rng)).collect();
                for g in take(cfg.markers_per_type) {
                    e[g] += cfg.type_lfc;
                }
                e
            })
            .collect();
        let layer_markers: Vec<Vec<usize>> = cfg.layers.iter().map(|_| take(cfg.markers_per_layer)).collect();
        let niche_markers: Vec<Vec<usize>> = cfg.focal.iter().map(|_| take(cfg.markers_per_niche)).collect();
        let marker_genes: Vec<usize> = genes[..next].to_vec();

        let mut techs = Vec::new();
        for spec in &cfg.technologies {
            let mut trng = stream(
                cfg.seed,
                0x5445_4348,
                mix(spec.name.bytes().fold(0u64, |h, b| h.wrapping_mul(31) ^ u64::from(b))),
            );
            let panel: Vec<u32> = if spec.panel_size == 0 || spec.panel_size >= n {
                (0..n as u32).collect()
            } else {
                // Real panels favour markers: half the panel from markers, the rest at random.
                let mut m = marker_genes.clone();
                shuffle(&mut m, &mut trng);
                m.truncate(spec.panel_size / 2);
                let mut rest: Vec<usize> = (0..n).filter(|g| !m.contains(g)).collect();
                shuffle(&mut rest, &mut trng);
                m.extend(rest.into_iter().take(spec.panel_size - m.len()));
                let mut p: Vec<u32> = m.into_iter().map(|g| g as u32).collect();
                p.sort_unstable();
                p
            };
            let eff: Vec<f64> = panel.iter().map(|_| trng.random_range(spec.min_efficiency..=1.0)).collect();
            let mut tables = Vec::new();
            for te in &type_eff {
                for lm in &layer_markers {
                    for state in 0..n_focal_states {
                        let mut logit: Vec<f64> = (0..n).map(|g| base[g] + te[g]).collect();
                        for &g in lm {
                            logit[g] += cfg.layer_lfc;
                        }
                        if state > 0 {
                            let (f, core) = ((state - 1) / 2, (state - 1) % 2 == 0);
                            for &g in &niche_markers[f] {
                                logit[g] += if core { cfg.niche_lfc } else { cfg.niche_lfc / 2.0 };
                            }
                        }
                        let w: Vec<f64> = panel.iter().zip(&eff).map(|(&g, e)| logit[g as usize].exp() * e).collect();
                        tables.push(AliasTable::new(&w));
                    }
                }
            }
            techs.push(TechTables { spec: spec.clone(), panel, tables });
        }

        let total: f64 = cfg.layers.iter().map(|l| l.thickness.max(0.0)).sum();
        if total <= 0.0 {
            return err("layer thicknesses must add up to more than 0".into());
        }
        let mut bounds = vec![0.0];
        for l in &cfg.layers {
            bounds.push(bounds.last().unwrap() + l.thickness.max(0.0) / total);
        }
        let focal_max = cfg.focal.iter().map(|f| f.core_density.max(f.margin_density)).fold(1.0, f64::max);
        let max_density = cfg.layers.iter().map(|l| l.density).fold(0.0, f64::max) * focal_max;
        if max_density <= 0.0 {
            return err("densities must be positive".into());
        }
        let gene_names = (0..n).map(|g| format!("SG{g:05}")).collect();
        Ok(Self { cfg, gene_names, niche_names, layer_niche, zone_types, techs, bounds, max_density })
    }

    pub fn config(&self) -> &SynthConfig {
        &self.cfg
    }

    pub fn gene_names(&self) -> &[String] {
        &self.gene_names
    }

    pub fn cell_type_names(&self) -> Vec<String> {
        self.cfg.cell_types.iter().map(|t| t.name.clone()).collect()
    }

    pub fn layer_names(&self) -> Vec<String> {
        self.cfg.layers.iter().map(|l| l.name.clone()).collect()
    }

    pub fn niche_names(&self) -> &[String] {
        &self.niche_names
    }

    /// Names of the genes a technology measures, in output column order.
    pub fn panel_names(&self, tech: &str) -> Option<Vec<String>> {
        let t = self.techs.iter().find(|t| t.spec.name == tech)?;
        Some(t.panel.iter().map(|&g| self.gene_names[g as usize].clone()).collect())
    }

    /// The technology that measures a sample.
    pub fn tech_of(&self, sample: Sample) -> &TechSpec {
        let name = match sample {
            Sample::Section(s) => &self.cfg.section_tech[s % self.cfg.section_tech.len()],
            Sample::Dissociated => &self.cfg.dissociated_tech,
        };
        &self.techs.iter().find(|t| &t.spec.name == name).expect("checked in new").spec
    }

    fn tech_tables(&self, sample: Sample) -> &TechTables {
        let name = &self.tech_of(sample).name;
        self.techs.iter().find(|t| &t.spec.name == name).expect("checked in new")
    }

    fn sample_id(&self, sample: Sample) -> u64 {
        match sample {
            Sample::Section(s) => s as u64,
            Sample::Dissociated => u64::MAX,
        }
    }

    /// The layout of a sample (the dissociated sample has a tissue of its own).
    pub fn layout(&self, sample: Sample) -> SectionLayout {
        let mut rng = stream(self.cfg.seed, 0x4c41_594f, self.sample_id(sample));
        let phase = rng.random_range(0.0..std::f64::consts::TAU);
        let (w, h) = (self.cfg.width_um, self.cfg.height_um);
        let mut focal_centres = Vec::new();
        for (i, f) in self.cfg.focal.iter().enumerate() {
            let pad = (f.radius_um + f.margin_um).min(w / 2.0 - 1e-9).max(0.0);
            for _ in 0..f.per_section {
                let x = rng.random_range(pad..=(w - pad));
                let y = rng.random_range(0.2 * h..=0.8 * h);
                focal_centres.push((i, x, y));
            }
        }
        SectionLayout { phase, focal_centres }
    }

    /// Layer index at a position (boundaries wave along x).
    pub fn layer_at(&self, layout: &SectionLayout, x: f64, y: f64) -> usize {
        let wave =
            self.cfg.boundary_wave_um * (std::f64::consts::TAU * 2.0 * x / self.cfg.width_um + layout.phase).sin();
        let t = ((y - wave) / self.cfg.height_um).clamp(0.0, 1.0 - 1e-12);
        self.bounds.partition_point(|&b| b <= t).saturating_sub(1).min(self.cfg.layers.len() - 1)
    }

    /// Focal state at a position: 0 = none, 1 + 2k = core of focal spec k, 2 + 2k = its margin.
    fn focal_state(&self, layout: &SectionLayout, x: f64, y: f64) -> usize {
        let mut best = 0;
        for &(i, cx, cy) in &layout.focal_centres {
            let f = &self.cfg.focal[i];
            let d = ((x - cx).powi(2) + (y - cy).powi(2)).sqrt();
            if d <= f.radius_um {
                return 1 + 2 * i;
            }
            if d <= f.radius_um + f.margin_um && best == 0 {
                best = 2 + 2 * i;
            }
        }
        best
    }

    fn density(&self, layer: usize, state: usize) -> f64 {
        let d = self.cfg.layers[layer].density;
        match state {
            0 => d,
            s if s % 2 == 1 => d * self.cfg.focal[(s - 1) / 2].core_density,
            s => d * self.cfg.focal[(s - 2) / 2].margin_density,
        }
    }

    /// Number of cells in a sample.
    pub fn n_cells(&self, sample: Sample) -> usize {
        match sample {
            Sample::Section(_) => self.cfg.cells_per_section,
            Sample::Dissociated => self.cfg.dissociated_cells,
        }
    }

    /// Generates block `b` of a sample (cells `b * BLOCK_CELLS ..`).
    pub fn block(&self, sample: Sample, b: usize) -> Block {
        let n_total = self.n_cells(sample);
        let n = BLOCK_CELLS.min(n_total.saturating_sub(b * BLOCK_CELLS));
        let layout = self.layout(sample);
        let tech = self.tech_tables(sample);
        let mut rng = stream(self.cfg.seed, 0x424c_4f43 ^ self.sample_id(sample), b as u64);
        let n_states = 1 + 2 * self.cfg.focal.len();
        let depth = LogNormal::new(0.0, 0.3).expect("valid lognormal");
        let section = match sample {
            Sample::Section(s) => s as u32,
            Sample::Dissociated => u32::MAX,
        };
        let mut truth = Vec::with_capacity(n);
        let mut indptr = Vec::with_capacity(n + 1);
        let mut indices = Vec::new();
        let mut data = Vec::new();
        let mut counts = vec![0u32; tech.panel.len()];
        indptr.push(0u64);
        for _ in 0..n {
            let (x, y, layer, state) = loop {
                let x = rng.random_range(0.0..self.cfg.width_um);
                let y = rng.random_range(0.0..self.cfg.height_um);
                let layer = self.layer_at(&layout, x, y);
                let state = self.focal_state(&layout, x, y);
                if rng.random::<f64>() * self.max_density < self.density(layer, state) {
                    break (x, y, layer, state);
                }
            };
            let t = self.zone_types[layer * n_states + state].sample(&mut rng) as usize;
            let niche = if state == 0 {
                self.layer_niche[layer]
            } else {
                (self.niche_names.len() - 2 * self.cfg.focal.len() + state - 1) as u16
            };
            truth.push(CellTruth { section, cell_type: t as u16, layer: layer as u16, niche, x_um: x, y_um: y });
            let mean = tech.spec.mean_counts * self.cfg.cell_types[t].size * depth.sample(&mut rng);
            let total = (mean.round() as usize).max(1);
            let table = &tech.tables[(t * self.cfg.layers.len() + layer) * n_states + state];
            // Count draws per gene in a dense scratch row (cheaper than sorting the draws),
            // then emit the non-zero genes in column order and reset the row.
            for _ in 0..total {
                counts[table.sample(&mut rng) as usize] += 1;
            }
            for (g, c) in counts.iter_mut().enumerate() {
                if *c > 0 {
                    indices.push(g as u32);
                    data.push(*c as f32);
                    *c = 0;
                }
            }
            indptr.push(indices.len() as u64);
        }
        let x = CsrMatrix::new(n, tech.panel.len(), indptr, indices, data).expect("generator builds valid CSR");
        Block { x, truth }
    }

    /// Generates a whole sample (blocks in parallel, concatenated in order).
    pub fn generate(&self, sample: Sample) -> Block {
        let n_blocks = self.n_cells(sample).div_ceil(BLOCK_CELLS);
        let blocks: Vec<Block> = (0..n_blocks).into_par_iter().map(|b| self.block(sample, b)).collect();
        let mut out = Block { x: CsrMatrix::empty(self.tech_tables(sample).panel.len()), truth: Vec::new() };
        for b in blocks {
            out.x.append_rows(&b.x);
            out.truth.extend(b.truth);
        }
        out
    }

    /// The samples measured by each output: one spatial file per spatial technology (its sections
    /// in order) and the dissociated sample.
    pub fn outputs(&self) -> Vec<(String, Vec<Sample>)> {
        let mut out: Vec<(String, Vec<Sample>)> = Vec::new();
        for s in 0..self.cfg.sections {
            let tech = self.tech_of(Sample::Section(s)).name.clone();
            let name = format!("spatial_{tech}");
            match out.iter_mut().find(|(n, _)| *n == name) {
                Some((_, v)) => v.push(Sample::Section(s)),
                None => out.push((name, vec![Sample::Section(s)])),
            }
        }
        if self.cfg.dissociated_cells > 0 {
            out.push(("dissociated".into(), vec![Sample::Dissociated]));
        }
        out
    }

    /// One output as an in-memory AnnData.
    pub fn anndata(&self, samples: &[Sample]) -> AnnData {
        let tech = self.tech_tables(samples[0]);
        let mut x = CsrMatrix::empty(tech.panel.len());
        let mut truth = Vec::new();
        for &s in samples {
            let b = self.generate(s);
            x.append_rows(&b.x);
            truth.extend(b.truth);
        }
        let (obs, obsm) = self.annotations(&truth, &tech.spec);
        AnnData { x, obs, var: Frame::new(self.panel_names(&tech.spec.name).unwrap()), obsm }
    }

    /// One output (samples of one technology, e.g. from [`Generator::outputs`]) as a
    /// [`CellSource`] that generates blocks of cells when their rows are read: the same cells
    /// as [`Generator::anndata`] and [`Generator::write_all`], for any number of cells, with
    /// memory bounded by the blocks asked for (and the ground truth once obs is read).
    pub fn cells(&self, name: &str, samples: &[Sample]) -> SynthCells<'_> {
        SynthCells {
            generator: self,
            name: name.to_owned(),
            samples: samples.to_vec(),
            truth: std::sync::OnceLock::new(),
        }
    }

    /// obs columns and obsm['spatial'] for cells with this ground truth.
    pub fn annotations(&self, truth: &[CellTruth], tech: &TechSpec) -> (Frame, BTreeMap<String, Array2<f64>>) {
        let spatial = tech.modality == "spatial";
        let mut per_section = BTreeMap::<u32, usize>::new();
        let index = truth
            .iter()
            .map(|t| {
                let k = per_section.entry(t.section).or_insert(0);
                *k += 1;
                if t.section == u32::MAX { format!("d_{}", *k - 1) } else { format!("s{}_{}", t.section, *k - 1) }
            })
            .collect();
        let mut obs = Frame::new(index);
        let cat =
            |codes: Vec<i32>, categories: Vec<String>, ordered| Column::Categorical { codes, categories, ordered };
        obs.insert(
            "cell_type",
            cat(truth.iter().map(|t| i32::from(t.cell_type)).collect(), self.cell_type_names(), false),
        );
        obs.insert("layer", cat(truth.iter().map(|t| i32::from(t.layer)).collect(), self.layer_names(), true));
        obs.insert("niche", cat(truth.iter().map(|t| i32::from(t.niche)).collect(), self.niche_names.clone(), false));
        let sections: Vec<String> = truth
            .iter()
            .map(|t| if t.section == u32::MAX { "dissociated".to_owned() } else { format!("section_{}", t.section) })
            .collect();
        obs.insert("section", Column::categorical_from_labels(&sections));
        obs.insert("technology", Column::categorical_from_labels(&vec![tech.name.clone(); truth.len()]));
        let mut obsm = BTreeMap::new();
        let xy = Array2::from_shape_fn((truth.len(), 2), |(i, j)| if j == 0 { truth[i].x_um } else { truth[i].y_um });
        if spatial {
            obsm.insert("spatial".into(), xy);
        } else {
            obs.insert("true_x_um", Column::Float(truth.iter().map(|t| t.x_um).collect()));
            obs.insert("true_y_um", Column::Float(truth.iter().map(|t| t.y_um).collect()));
        }
        (obs, obsm)
    }

    /// Writes every output as `<dir>/<name>.h5ad`, streaming blocks so memory stays bounded by
    /// a few blocks plus the per-cell ground truth. `on_block` sees every block once it is
    /// written, with the index of the output it belongs to (for progress and statistics).
    pub fn write_all(&self, dir: &Path, mut on_block: impl FnMut(usize, &Block)) -> Result<Vec<PathBuf>, SynthError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| SynthError::Io(sof_io::Error::Io { path: dir.to_path_buf(), error: e }))?;
        let batch = rayon::current_num_threads().max(1) * 2;
        let mut paths = Vec::new();
        for (out_index, (name, samples)) in self.outputs().into_iter().enumerate() {
            let path = dir.join(format!("{name}.h5ad"));
            let tech = self.tech_tables(samples[0]).spec.clone();
            let mut w = H5adStreamWriter::create(&path, Frame::new(self.panel_names(&tech.name).unwrap()))?;
            let mut truth = Vec::new();
            for &s in &samples {
                let n_blocks = self.n_cells(s).div_ceil(BLOCK_CELLS);
                for start in (0..n_blocks).step_by(batch) {
                    let blocks: Vec<Block> =
                        (start..(start + batch).min(n_blocks)).into_par_iter().map(|b| self.block(s, b)).collect();
                    for b in blocks {
                        w.append(&b.x)?;
                        on_block(out_index, &b);
                        truth.extend(b.truth);
                    }
                }
            }
            let (obs, obsm) = self.annotations(&truth, &tech);
            let mut uns = BTreeMap::new();
            uns.insert(
                "sof_synth_config".into(),
                UnsValue::Str(serde_json::to_string(&self.cfg).expect("config serializes")),
            );
            uns.insert("technology".into(), UnsValue::Str(tech.name.clone()));
            uns.insert("modality".into(), UnsValue::Str(tech.modality.clone()));
            uns.insert("coordinate_units".into(), UnsValue::Str("um".into()));
            w.finish(&obs, &obsm, &uns)?;
            paths.push(path);
        }
        Ok(paths)
    }
}

/// Synthetic cells as a [`CellSource`] (see [`Generator::cells`]).
#[derive(Debug)]
pub struct SynthCells<'a> {
    generator: &'a Generator,
    name: String,
    samples: Vec<Sample>,
    truth: std::sync::OnceLock<Vec<CellTruth>>,
}

impl SynthCells<'_> {
    /// (sample, block) pairs covering cells `rows`, with each block's first cell.
    fn blocks(&self, rows: &std::ops::Range<usize>) -> Vec<(Sample, usize, usize)> {
        let mut out = Vec::new();
        let mut first = 0;
        for &s in &self.samples {
            let n = self.generator.n_cells(s);
            for b in 0..n.div_ceil(BLOCK_CELLS) {
                let start = first + b * BLOCK_CELLS;
                let end = first + ((b + 1) * BLOCK_CELLS).min(n);
                if start < rows.end && end > rows.start {
                    out.push((s, b, start));
                }
            }
            first += n;
        }
        out
    }

    fn truth(&self) -> &[CellTruth] {
        self.truth.get_or_init(|| {
            let all = self.blocks(&(0..CellSource::n_obs(self)));
            let blocks: Vec<Block> = all.par_iter().map(|&(s, b, _)| self.generator.block(s, b)).collect();
            blocks.into_iter().flat_map(|b| b.truth).collect()
        })
    }

    fn annotations(&self) -> (Frame, BTreeMap<String, Array2<f64>>) {
        let tech = &self.generator.tech_tables(self.samples[0]).spec;
        self.generator.annotations(self.truth(), tech)
    }
}

impl CellSource for SynthCells<'_> {
    fn name(&self) -> String {
        format!("synthetic {} (seed {})", self.name, self.generator.cfg.seed)
    }

    fn n_obs(&self) -> usize {
        self.samples.iter().map(|&s| self.generator.n_cells(s)).sum()
    }

    fn n_vars(&self) -> usize {
        self.generator.tech_tables(self.samples[0]).panel.len()
    }

    fn var_names(&self) -> sof_io::Result<Vec<String>> {
        let tech = &self.generator.tech_tables(self.samples[0]).spec.name;
        Ok(self.generator.panel_names(tech).unwrap_or_default())
    }

    fn obs(&self) -> sof_io::Result<Frame> {
        Ok(self.annotations().0)
    }

    fn obsm_keys(&self) -> Vec<String> {
        let spatial = self.generator.tech_tables(self.samples[0]).spec.modality == "spatial";
        if spatial { vec!["spatial".to_owned()] } else { Vec::new() }
    }

    fn obsm(&self, key: &str) -> sof_io::Result<Array2<f64>> {
        let mut obsm = self.annotations().1;
        obsm.remove(key).ok_or_else(|| sof_io::Error::MissingField {
            path: PathBuf::from(self.name()),
            field: format!("obsm/{key}"),
            fix: format!("available obsm arrays: [{}]", self.obsm_keys().join(", ")),
        })
    }

    fn read_rows(&self, rows: std::ops::Range<usize>) -> sof_io::Result<CsrMatrix> {
        let n = CellSource::n_obs(self);
        if rows.start > rows.end || rows.end > n {
            return Err(sof_io::Error::Invalid {
                path: PathBuf::from(self.name()),
                field: "X".into(),
                problem: format!("row range {rows:?} is outside 0..{n}"),
                fix: "ask for rows inside the matrix".into(),
            });
        }
        let parts = self.blocks(&rows);
        let blocks: Vec<(Block, usize)> =
            parts.par_iter().map(|&(s, b, start)| (self.generator.block(s, b), start)).collect();
        let mut out = CsrMatrix::empty(CellSource::n_vars(self));
        for (b, start) in blocks {
            let lo = rows.start.max(start) - start;
            let hi = rows.end.min(start + b.x.n_rows()) - start;
            out.append_rows(&b.x.slice_rows(lo..hi));
        }
        Ok(out)
    }
}

fn shuffle<T, R: Rng>(v: &mut [T], rng: &mut R) {
    for i in (1..v.len()).rev() {
        let j = rng.random_range(0..=i);
        v.swap(i, j);
    }
}
