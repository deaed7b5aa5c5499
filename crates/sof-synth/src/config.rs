//! The generator's configuration: tissue layout, cell types, gene programs and technologies.
//! Serializable (TOML/JSON) so a run can be repeated exactly; [`SynthConfig::default`] is the
//! embedded default tissue the demo uses.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A band of tissue along the y axis (a cortical layer, white matter...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerSpec {
    pub name: String,
    /// Share of the section height (shares are normalised).
    pub thickness: f64,
    /// Relative cell density.
    pub density: f64,
    /// The niche label of cells in this band outside any focal niche.
    pub niche: String,
    /// Cell-type weights in this band (normalised).
    pub types: BTreeMap<String, f64>,
}

/// Focal niches: round patches (e.g. a dense tumour-like core with a mixed margin around it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FocalSpec {
    pub core_name: String,
    pub margin_name: String,
    pub radius_um: f64,
    pub margin_um: f64,
    pub per_section: usize,
    pub core_density: f64,
    pub margin_density: f64,
    pub core_types: BTreeMap<String, f64>,
    pub margin_types: BTreeMap<String, f64>,
}

/// A cell type with its own expression program.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellTypeSpec {
    pub name: String,
    /// Relative RNA content (scales counts per cell).
    pub size: f64,
}

/// A measurement technology: a gene panel, a depth and a per-gene detection efficiency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TechSpec {
    pub name: String,
    /// `spatial` or `dissociated`.
    pub modality: String,
    /// Genes measured; 0 = every gene (whole transcriptome).
    pub panel_size: usize,
    /// Mean counts per cell of size 1.
    pub mean_counts: f64,
    /// Lowest per-gene detection efficiency (each gene draws uniformly from this to 1).
    pub min_efficiency: f64,
}

/// Everything the generator needs. Deterministic: the same config gives the same cells.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SynthConfig {
    pub seed: u64,
    /// Spatial sections; section `s` is measured with `technologies[section_tech[s % len]]`.
    pub sections: usize,
    pub section_tech: Vec<String>,
    pub cells_per_section: usize,
    pub width_um: f64,
    pub height_um: f64,
    /// Amplitude of the waviness of layer boundaries, in microns.
    pub boundary_wave_um: f64,
    pub n_genes: usize,
    /// Marker genes per cell type, layer and focal niche.
    pub markers_per_type: usize,
    pub markers_per_layer: usize,
    pub markers_per_niche: usize,
    /// Log fold changes of those markers.
    pub type_lfc: f64,
    pub layer_lfc: f64,
    pub niche_lfc: f64,
    pub cell_types: Vec<CellTypeSpec>,
    pub layers: Vec<LayerSpec>,
    pub focal: Vec<FocalSpec>,
    pub technologies: Vec<TechSpec>,
    /// Dissociated cells (drawn from the same tissue, coordinates kept only as ground truth).
    pub dissociated_cells: usize,
    pub dissociated_tech: String,
}

fn w(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

impl Default for SynthConfig {
    fn default() -> Self {
        let ty = |name: &str, size: f64| CellTypeSpec { name: name.into(), size };
        let layer = |name: &str, thickness, density, niche: &str, types| LayerSpec {
            name: name.into(),
            thickness,
            density,
            niche: niche.into(),
            types,
        };
        Self {
            seed: 0,
            sections: 3,
            section_tech: vec!["merfish".into(), "merfish".into(), "xenium".into()],
            cells_per_section: 3_000,
            width_um: 1_200.0,
            height_um: 1_000.0,
            boundary_wave_um: 25.0,
            n_genes: 2_000,
            markers_per_type: 20,
            markers_per_layer: 12,
            markers_per_niche: 12,
            type_lfc: 2.5,
            layer_lfc: 1.5,
            niche_lfc: 2.0,
            cell_types: vec![
                ty("Ex_L23", 1.2),
                ty("Ex_L4", 1.1),
                ty("Ex_L5", 1.4),
                ty("Ex_L6", 1.2),
                ty("Inh_Pvalb", 1.0),
                ty("Inh_Sst", 1.0),
                ty("Astro", 0.8),
                ty("Oligo", 0.7),
                ty("Microglia", 0.6),
                ty("Endo", 0.6),
                ty("Tumor", 1.3),
                ty("Immune", 0.5),
            ],
            layers: vec![
                layer(
                    "L1",
                    0.10,
                    0.5,
                    "superficial",
                    w(&[("Astro", 0.35), ("Inh_Pvalb", 0.15), ("Inh_Sst", 0.15), ("Microglia", 0.15), ("Endo", 0.2)]),
                ),
                layer(
                    "L2/3",
                    0.22,
                    1.2,
                    "superficial",
                    w(&[
                        ("Ex_L23", 0.6),
                        ("Inh_Pvalb", 0.1),
                        ("Inh_Sst", 0.08),
                        ("Astro", 0.1),
                        ("Oligo", 0.04),
                        ("Microglia", 0.04),
                        ("Endo", 0.04),
                    ]),
                ),
                layer(
                    "L4",
                    0.15,
                    1.5,
                    "middle",
                    w(&[
                        ("Ex_L4", 0.65),
                        ("Inh_Pvalb", 0.12),
                        ("Inh_Sst", 0.05),
                        ("Astro", 0.08),
                        ("Oligo", 0.04),
                        ("Microglia", 0.03),
                        ("Endo", 0.03),
                    ]),
                ),
                layer(
                    "L5",
                    0.20,
                    1.0,
                    "deep",
                    w(&[
                        ("Ex_L5", 0.55),
                        ("Inh_Pvalb", 0.08),
                        ("Inh_Sst", 0.12),
                        ("Astro", 0.1),
                        ("Oligo", 0.08),
                        ("Microglia", 0.04),
                        ("Endo", 0.03),
                    ]),
                ),
                layer(
                    "L6",
                    0.18,
                    1.1,
                    "deep",
                    w(&[
                        ("Ex_L6", 0.55),
                        ("Inh_Pvalb", 0.05),
                        ("Inh_Sst", 0.08),
                        ("Astro", 0.08),
                        ("Oligo", 0.18),
                        ("Microglia", 0.03),
                        ("Endo", 0.03),
                    ]),
                ),
                layer(
                    "WM",
                    0.15,
                    0.8,
                    "white_matter",
                    w(&[("Oligo", 0.7), ("Astro", 0.15), ("Microglia", 0.1), ("Endo", 0.05)]),
                ),
            ],
            focal: vec![FocalSpec {
                core_name: "tumor_core".into(),
                margin_name: "tumor_margin".into(),
                radius_um: 110.0,
                margin_um: 60.0,
                per_section: 1,
                core_density: 3.0,
                margin_density: 1.5,
                core_types: w(&[("Tumor", 0.85), ("Immune", 0.1), ("Endo", 0.05)]),
                margin_types: w(&[("Tumor", 0.3), ("Immune", 0.4), ("Microglia", 0.15), ("Astro", 0.15)]),
            }],
            technologies: vec![
                TechSpec {
                    name: "merfish".into(),
                    modality: "spatial".into(),
                    panel_size: 400,
                    mean_counts: 220.0,
                    min_efficiency: 0.5,
                },
                TechSpec {
                    name: "xenium".into(),
                    modality: "spatial".into(),
                    panel_size: 300,
                    mean_counts: 150.0,
                    min_efficiency: 0.4,
                },
                TechSpec {
                    name: "dissociated".into(),
                    modality: "dissociated".into(),
                    panel_size: 0,
                    mean_counts: 2_500.0,
                    min_efficiency: 0.3,
                },
            ],
            dissociated_cells: 1_500,
            dissociated_tech: "dissociated".into(),
        }
    }
}

impl SynthConfig {
    /// The default tissue with about `total_cells` cells in all, split between the spatial
    /// sections (five sixths) and the dissociated sample.
    pub fn with_total_cells(total_cells: usize) -> Self {
        let mut c = Self::default();
        c.set_total_cells(total_cells);
        c
    }

    /// Splits `total_cells` between sections and the dissociated sample (5:1).
    pub fn set_total_cells(&mut self, total_cells: usize) {
        let spatial = total_cells * 5 / 6;
        self.cells_per_section = spatial / self.sections.max(1);
        self.dissociated_cells = total_cells - self.cells_per_section * self.sections;
    }
}
