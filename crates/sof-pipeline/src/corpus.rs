//! Tokenizing any [`CellSource`] into a Parquet corpus as one library call
//! ([`tokenize_source`]): the vocabulary alignment, the technology's means, the label-free niche
//! targets of a spatial input that lacks them, and the resumable shards.

use std::path::PathBuf;
use std::time::Instant;

use sof_io::CellSource;
use sof_io::genes::Species;
use sof_tokenize::corpus::{CorpusInputs, CorpusManifest, CorpusSpec, build_corpus};
use sof_tokenize::{GeneMap, Modality, Mode, Tokenizer, TokenizerConfig, vocabulary_hash};

use crate::checkpoint::{align, context_table, load_means};
use crate::error::{PipelineError, Result};

/// Neighbours per cell on average that the density radius gives (as `sof spatial
/// --mean-neighbors 20`).
pub const DENSITY_MEAN_NEIGHBOURS: f64 = 20.0;

/// One corpus from one source.
#[derive(Debug, Clone)]
pub struct TokenizeSpec {
    /// The corpus folder (shards, manifest.json, gene_mapping.tsv, vocab.tsv without `vocab`).
    pub output: PathBuf,
    /// A technology of the context table (or one added by `context_config`).
    pub technology: String,
    pub species: Species,
    pub modality: Modality,
    /// The vocabulary TSV (default: the source's own genes).
    pub vocab: Option<PathBuf>,
    /// Symbol -> Ensembl tables.
    pub genes_dir: Option<PathBuf>,
    /// A folder of `<means>.tsv` (default: computed from the source).
    pub tech_means: Option<PathBuf>,
    pub mode: Mode,
    /// obs columns kept as label columns.
    pub keep_obs: Vec<String>,
    /// obs column of sections (stored per row; the niche targets keep sections apart).
    pub section_key: Option<String>,
    /// Compute the label-free niche targets (profile, density) of a spatial source without them.
    pub niche_targets: bool,
    /// Dataset name in every row.
    pub dataset: String,
    /// A technology table (TOML) beside the built-in one.
    pub context_config: Option<PathBuf>,
    /// `technology` is new: give it the lowest free token in 19..=29
    /// ([`sof_tokenize::ContextTable::add_new`]); the manifest records it, and so does a model
    /// pretrained on the corpus.
    pub new_technology: bool,
    /// Positions per cell, context tokens included.
    pub context_length: usize,
    pub shard_cells: usize,
    /// Write into an existing non-empty folder that holds no corpus (see [`check_corpus_folder`]).
    pub force: bool,
}

impl TokenizeSpec {
    /// A corpus of `dataset` in `output` over the source's own genes, fixed mode, 1500
    /// positions, the niche targets on.
    pub fn new(
        output: impl Into<PathBuf>,
        dataset: &str,
        technology: &str,
        species: Species,
        modality: Modality,
    ) -> Self {
        TokenizeSpec {
            output: output.into(),
            technology: technology.to_owned(),
            species,
            modality,
            vocab: None,
            genes_dir: None,
            tech_means: None,
            mode: Mode::Fixed,
            keep_obs: Vec::new(),
            section_key: None,
            niche_targets: true,
            dataset: dataset.to_owned(),
            context_config: None,
            new_technology: false,
            context_length: 1500,
            shard_cells: 65_536,
            force: false,
        }
    }
}

/// The label-free niche targets computed for a spatial source.
#[derive(Debug, Clone, PartialEq)]
pub struct NicheTargets {
    pub sections: usize,
    pub seconds: f64,
    /// What was computed, in words.
    pub computed: Vec<String>,
}

/// What a corpus came to.
#[derive(Debug, Clone)]
pub struct TokenizeOutcome {
    pub manifest: CorpusManifest,
    /// Source genes outside the vocabulary.
    pub unmapped: Vec<String>,
    /// The niche targets computed here (none where the source carried them or is not spatial).
    pub niche_targets: Option<NicheTargets>,
    /// Things the caller should tell the user (also logged).
    pub warnings: Vec<String>,
}

/// Tokenizes `reader` into `spec.output`; `progress` is told the cells done. A rerun resumes.
pub fn tokenize_source(
    reader: &dyn CellSource,
    spec: &TokenizeSpec,
    progress: &mut dyn FnMut(usize),
) -> Result<TokenizeOutcome> {
    // One writer per corpus folder: two runs would mix their shards.
    let _writer = sof_io::OutputLock::acquire(&spec.output)?;
    let mut table = context_table(spec.context_config.as_deref())?;
    if spec.new_technology {
        let token = table.add_new(&spec.technology)?;
        tracing::info!("new technology '{}': context token {token}", spec.technology);
    }
    let tech = table.get(&spec.technology)?.clone();
    let (vocab, report) = align(reader, spec.vocab.as_deref(), spec.genes_dir.as_deref(), spec.species)?;
    let map = GeneMap::from_report(&report);
    check_corpus_folder(&spec.output, spec.force)?;
    std::fs::create_dir_all(&spec.output)
        .map_err(|source| PipelineError::File { path: spec.output.clone(), source })?;
    write(&spec.output.join("gene_mapping.tsv"), &report.to_tsv(&vocab))?;
    if spec.vocab.is_none() {
        write(&spec.output.join("vocab.tsv"), &vocab.to_tsv())?;
    }
    let means = load_means(spec.tech_means.as_deref(), &tech.means, reader, &vocab, &map)?;
    if spec.context_length <= 3 {
        return Err(PipelineError::setting("--context-length must leave room for genes after the 3 context tokens"));
    }
    let config = TokenizerConfig { mode: spec.mode, context_length: spec.context_length, ..TokenizerConfig::default() };
    let tokenizer = Tokenizer::new(config, &means, spec.species, tech.token, spec.modality);
    let corpus = CorpusSpec {
        output: spec.output.clone(),
        dataset: spec.dataset.clone(),
        technology: spec.technology.to_ascii_lowercase(),
        species: spec.species,
        modality: spec.modality,
        section_key: spec.section_key.clone(),
        keep_obs: spec.keep_obs.clone(),
        shard_cells: spec.shard_cells,
        row_group_cells: 8_192.min(spec.shard_cells),
    };
    let unmapped: Vec<String> = report.unmapped().iter().map(|s| s.to_string()).collect();
    let mut warnings = Vec::new();
    let targets = label_free_targets(spec, reader, &mut warnings)?;
    let inputs = CorpusInputs {
        tokenizer: &tokenizer,
        map: &map,
        vocabulary_hash: &vocabulary_hash(&vocab),
        vocabulary_size: vocab.len(),
        unmapped_genes: unmapped.clone(),
        niche_profile: targets.profile.as_ref(),
        density: targets.density.as_deref(),
    };
    let manifest = build_corpus(reader, &corpus, &inputs, progress)?;
    Ok(TokenizeOutcome { manifest, unmapped, niche_targets: targets.note, warnings })
}

/// Refuses a corpus folder that is a file, or a non-empty folder holding no corpus (no
/// `manifest.json`, `gene_mapping.tsv` or `shard-*.parquet`: most likely the user's own data given
/// as `--output`, whose `vocab.tsv` or `gene_mapping.tsv` the corpus would replace), unless
/// `force`. A folder a run of sof started (finished or interrupted) is reused, so a rerun resumes.
pub fn check_corpus_folder(dir: &std::path::Path, force: bool) -> Result<()> {
    let fix = "choose another --output (a new or empty folder), or pass --force to write into it";
    if dir.exists() && !dir.is_dir() {
        return Err(PipelineError::input(dir.display(), format!("the corpus folder is a file, not a folder: {fix}")));
    }
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
    let mut names: Vec<String> = entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    let ours = |n: &String| {
        n == "manifest.json" || n == "gene_mapping.tsv" || (n.starts_with("shard-") && n.ends_with(".parquet"))
    };
    if force || names.is_empty() || names.iter().any(ours) {
        return Ok(());
    }
    names.sort_unstable();
    let shown: Vec<&str> = names.iter().map(String::as_str).take(3).collect();
    Err(PipelineError::input(
        dir.display(),
        format!(
            "the corpus folder already holds {} file(s) ({}{}) and no corpus of sof's (no manifest.json, \
             gene_mapping.tsv or shard-*.parquet), so it may be your data: {fix}",
            names.len(),
            shown.join(", "),
            if names.len() > 3 { ", ..." } else { "" }
        ),
    ))
}

fn write(path: &std::path::Path, text: &str) -> Result<()> {
    crate::write_atomic(path, text)
}

/// The label-free targets computed for a spatial source, where it lacks them.
struct LabelFree {
    /// When obsm['sof_niche_profile'] is absent.
    profile: Option<ndarray::Array2<f32>>,
    /// When obs['sof_density'] is absent.
    density: Option<Vec<f64>>,
    note: Option<NicheTargets>,
}

/// The label-free targets of a spatial source that does not carry them: its niche profile and
/// local density. Nothing for dissociated input, input without coordinates, or with the
/// targets off.
fn label_free_targets(spec: &TokenizeSpec, reader: &dyn CellSource, warnings: &mut Vec<String>) -> Result<LabelFree> {
    let keys = reader.obsm_keys();
    let has = |k: &str| keys.iter().any(|x| x == k);
    let none = LabelFree { profile: None, density: None, note: None };
    if !spec.niche_targets || spec.modality != Modality::Spatial || !has("spatial") {
        return Ok(none);
    }
    let obs = reader.obs()?;
    let (want_profile, want_density) = (!has("sof_niche_profile"), obs.get("sof_density").is_none());
    if !(want_profile || want_density) {
        return Ok(none);
    }
    if spec.section_key.is_none()
        && let Some(col) =
            ["section", "slice", "fov", "sample", "library_id"].into_iter().find(|c| obs.get(c).is_some())
    {
        let msg = format!(
            "{}: no --section-key, so every cell is one section for the niche targets, but obs has a '{col}' column: if it names sections whose coordinates overlap, neighbours will cross them; pass --section-key {col}",
            reader.name()
        );
        tracing::warn!("{msg}");
        warnings.push(msg);
    }
    let t = Instant::now();
    let points = crate::cells::points(reader, &obs, spec.section_key.as_deref())
        .map_err(|e| e.with_hint(" (the niche targets need positions; or pass --no-niche-profile)"))?;
    let density = if want_density {
        let radius = sof_spatial::radius_for_mean_neighbors(&points, DENSITY_MEAN_NEIGHBOURS, 0.005)?.radius;
        let graph = sof_spatial::RadiusGraph::build(&points, radius)?;
        Some(graph.degrees().into_iter().map(f64::from).collect())
    } else {
        None
    };
    let profile = if want_profile {
        // Every cell at once: a neighbourhood can span the whole file.
        let x = reader.read_rows(0..reader.n_obs())?;
        let (scales, components) =
            (sof_tasks::neighbourhood::PROFILE_SCALES, sof_tasks::neighbourhood::PROFILE_COMPONENTS);
        Some(
            sof_tasks::neighbourhood::niche_profile(&x, &points, &scales, components, 0)
                .map_err(|e| PipelineError::input(reader.name(), format!("the niche profile: {e}")))?,
        )
    } else {
        None
    };
    let computed: Vec<String> = [
        profile.as_ref().map(|_| {
            format!(
                "niche profile ({} expression components x the {:?} nearest neighbours)",
                sof_tasks::neighbourhood::PROFILE_COMPONENTS,
                sof_tasks::neighbourhood::PROFILE_SCALES
            )
        }),
        density.as_ref().map(|_| {
            format!("local density (neighbours within the radius that gives {DENSITY_MEAN_NEIGHBOURS} on average)")
        }),
    ]
    .into_iter()
    .flatten()
    .collect();
    let note = NicheTargets { sections: points.n_sections(), seconds: t.elapsed().as_secs_f64(), computed };
    Ok(LabelFree { profile, density, note: Some(note) })
}

#[cfg(test)]
mod tests {
    use super::check_corpus_folder;

    #[test]
    fn a_folder_of_someone_elses_files_is_not_a_corpus_folder() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("corpus");
        check_corpus_folder(&out, false).expect("a folder that does not exist yet");
        std::fs::create_dir(&out).unwrap();
        check_corpus_folder(&out, false).expect("an empty folder");

        std::fs::write(out.join("vocab.tsv"), "my own genes\n").unwrap();
        let err = check_corpus_folder(&out, false).unwrap_err().to_string();
        assert!(err.starts_with(&out.display().to_string()), "{err}");
        assert!(err.contains("vocab.tsv") && err.contains("--force"), "{err}");
        check_corpus_folder(&out, true).expect("--force");

        // What an interrupted run leaves (no manifest yet) is resumed, not refused.
        std::fs::write(out.join("gene_mapping.tsv"), "").unwrap();
        check_corpus_folder(&out, false).expect("a corpus sof started");
        let shards = dir.path().join("shards");
        std::fs::create_dir(&shards).unwrap();
        std::fs::write(shards.join("shard-00000.parquet"), "").unwrap();
        check_corpus_folder(&shards, false).expect("a corpus with shards");

        let file = dir.path().join("cells.h5ad");
        std::fs::write(&file, "").unwrap();
        for force in [false, true] {
            let err = check_corpus_folder(&file, force).unwrap_err().to_string();
            assert!(err.contains("is a file, not a folder"), "{err}");
        }
    }
}
