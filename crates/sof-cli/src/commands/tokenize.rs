//! `sof tokenize` and `sof tech-means`: cells to gene-rank tokens in Parquet shards.

use std::path::{Path, PathBuf};
use std::time::Instant;

use sof_io::genes::Species;
use sof_io::h5ad::H5adReader;
use sof_io::table::TableOptions;
use sof_io::{CellSource, TableInput};
use sof_pipeline::checkpoint::align;
use sof_pipeline::corpus::{TokenizeSpec, tokenize_source};
use sof_tokenize::{GeneMap, MeansAccumulator, Modality, Mode, TechMeans};

use super::inspect::SpeciesArg;
use crate::util;

/// Tokenize cells into Parquet shards of rank-ordered gene tokens.
///
/// Tokenize cells into Parquet shards: per cell, counts scaled to 10,000, divided by the
/// technology's gene means, expressed genes ranked (ties by vocabulary index), behind the
/// context tokens [species, assay, modality]. Streams the input; a rerun resumes.
///
/// The input is an .h5ad (streamed), a .loom, or a delimited expression table (.tsv / .csv /
/// .txt; genes in rows unless --cells-in-rows) with optional --coordinates and --metadata tables
/// keyed by cell id.
///
/// Without --vocab, the vocabulary is the file's own genes (written to <output>/vocab.tsv);
/// without --tech-means, the technology's means are computed from the input itself.
///
/// A spatial input (--modality spatial, obsm['spatial']) also gets the label-free niche targets
/// that pretraining learns by default, from its coordinates and counts alone: the niche profile
/// (what each cell's 10 / 30 / 100 nearest neighbours express) and the local density (neighbours
/// within the radius that gives 20 on average), each unless the file carries it already
/// (obsm['sof_niche_profile'], obs['sof_density'] from `sof spatial`); --no-niche-profile skips
/// both. Pass --section-key where the file holds several sections: cells of different sections
/// are never neighbours.
#[derive(Debug, clap::Args)]
#[command(after_help = concat!(
    "Examples:\n",
    "  sof tokenize --input starmap_mpfc.h5ad --technology merfish --species mouse \\\n",
    "      --modality spatial --vocab nicheformer/vocab.tsv --genes-dir genes/ \\\n",
    "      --tech-means nicheformer/tech_means --keep-obs cell_type,layer \\\n",
    "      --output corpus/starmap",
))]
pub struct Args {
    /// Input cells: .h5ad, .loom, or an expression table (.tsv, .csv, .txt).
    #[arg(short, long)]
    pub input: PathBuf,
    #[command(flatten)]
    pub tables: TableArgs,
    /// Technology (merfish, xenium, cosmx, iss, dissociated, 10x_3p_v3, ... or one added with
    /// --context-config).
    #[arg(long)]
    pub technology: String,
    /// mouse or human (the species token; genes are mapped to the vocabulary's species).
    #[arg(long, value_enum)]
    pub species: SpeciesArg,
    /// spatial or dissociated.
    #[arg(long)]
    pub modality: String,
    /// Vocabulary TSV (index, token_id, ensembl_id), e.g. the reference's vocab.tsv.
    #[arg(long)]
    pub vocab: Option<PathBuf>,
    /// Folder with genes.tsv and mouse_human_orthologs_all.tsv, to map gene symbols.
    #[arg(long)]
    pub genes_dir: Option<PathBuf>,
    /// Folder of mean vectors (<means name>.tsv), e.g. the reference's tech_means/.
    #[arg(long)]
    pub tech_means: Option<PathBuf>,
    /// `nicheformer` reproduces the reference exactly (for its published weights); `fixed`
    /// (default) skips genes the technology does not measure (NaN or negative means).
    #[arg(long, value_enum, default_value = "fixed")]
    pub mode: ModeArg,
    /// obs columns to keep as label columns.
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    pub keep_obs: Vec<String>,
    /// obs column naming sections (stored per row; the niche profile keeps sections apart).
    #[arg(long)]
    pub section_key: Option<String>,
    /// Do not compute the label-free niche targets (profile, density) for a spatial input.
    #[arg(long)]
    pub no_niche_profile: bool,
    /// Dataset name stored in every row (default: the input's file name).
    #[arg(long)]
    pub dataset: Option<String>,
    /// TOML with extra [technology.<name>] entries (token in 19..=29, means).
    #[arg(long)]
    pub context_config: Option<PathBuf>,
    /// --technology is new (no context config entry): give it the lowest free token in 19..=29.
    /// The corpus manifest records the token, and a model pretrained on the corpus remembers it
    /// (`sof embed` needs no flag for it).
    #[arg(long)]
    pub new_technology: bool,
    /// Positions per cell, context tokens included.
    #[arg(long, default_value_t = 1500)]
    pub context_length: usize,
    /// Cells per shard.
    #[arg(long, default_value_t = 65_536)]
    pub shard_cells: usize,
    /// Output folder (shards, manifest.json, gene_mapping.tsv). A folder a previous run started is
    /// resumed; a non-empty folder that holds no corpus is refused unless --force.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Write into an existing non-empty --output folder that holds no corpus of sof's.
    #[arg(long)]
    pub force: bool,
}

/// The tables that go with an expression-table input.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TableArgs {
    /// With a table input: a table of cell coordinates (cell id, then columns named by
    /// --coordinate-columns), copied into obsm['spatial'].
    #[arg(long)]
    pub coordinates: Option<PathBuf>,
    /// With a table input: a table of per-cell annotations keyed by cell id (becomes obs).
    #[arg(long)]
    pub metadata: Option<PathBuf>,
    /// With a table input: the x and y column names of --coordinates.
    #[arg(long, value_delimiter = ',', num_args = 2, default_values = ["X", "Y"])]
    pub coordinate_columns: Vec<String>,
    /// With a table input: the expression table has one row per cell (default: one row per gene).
    #[arg(long)]
    pub cells_in_rows: bool,
    /// With a table input: the field separator (default: ',' for .csv, else tab).
    #[arg(long)]
    pub delimiter: Option<char>,
}

impl TableArgs {
    /// Opens `input` (any supported format) with these table settings.
    pub fn open(&self, input: &Path) -> anyhow::Result<Box<dyn CellSource>> {
        let csv = input.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv"));
        let options = TableOptions {
            delimiter: self.delimiter.unwrap_or(if csv { ',' } else { '\t' }),
            genes_in_rows: !self.cells_in_rows,
            coordinate_columns: match self.coordinate_columns.as_slice() {
                [x, y] => (x.clone(), y.clone()),
                _ => ("X".into(), "Y".into()),
            },
        };
        let tables = TableInput { coordinates: self.coordinates.clone(), metadata: self.metadata.clone(), options };
        Ok(sof_io::open_cells(input, &tables)?)
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ModeArg {
    Fixed,
    Nicheformer,
}

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Self {
        match m {
            ModeArg::Fixed => Mode::Fixed,
            ModeArg::Nicheformer => Mode::Nicheformer,
        }
    }
}

pub fn species(s: SpeciesArg) -> Species {
    match s {
        SpeciesArg::Human => Species::Human,
        SpeciesArg::Mouse => Species::Mouse,
    }
}

pub fn run(args: Args, quiet: bool) -> anyhow::Result<()> {
    let start = Instant::now();
    let reader = args.tables.open(&args.input)?;
    let reader = reader.as_ref();
    let spec = TokenizeSpec {
        output: args.output.clone(),
        technology: args.technology.clone(),
        species: species(args.species),
        modality: Modality::parse(&args.modality)?,
        vocab: args.vocab.clone(),
        genes_dir: args.genes_dir.clone(),
        tech_means: args.tech_means.clone(),
        mode: args.mode.into(),
        keep_obs: args.keep_obs.clone(),
        section_key: args.section_key.clone(),
        niche_targets: !args.no_niche_profile,
        dataset: args
            .dataset
            .clone()
            .unwrap_or_else(|| args.input.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()),
        context_config: args.context_config.clone(),
        new_technology: args.new_technology,
        context_length: args.context_length,
        shard_cells: args.shard_cells,
        force: args.force,
    };
    let pb = util::progress(reader.n_obs() as u64, "tokenize", quiet);
    let out = tokenize_source(reader, &spec, &mut |n| pb.inc(n as u64))?;
    pb.finish_and_clear();
    for w in &out.warnings {
        util::say(format!("warning: {w}"));
    }
    if let Some(t) = &out.niche_targets {
        util::say(format!(
            "label-free niche targets for {} section(s) in {:.2} s: {}",
            t.sections,
            t.seconds,
            t.computed.join("; ")
        ));
    }
    let (m, unmapped) = (&out.manifest, &out.unmapped);
    if args.new_technology {
        util::say(format!("new technology '{}': context token {}", m.technology, m.context_tokens[1]));
    }
    let secs = start.elapsed().as_secs_f64();
    util::say(format!(
        "{}: {} cells -> {} tokenized ({} empty, skipped), median {} tokens per cell, {} shard(s) in {}",
        args.input.display(),
        m.cells_in,
        m.cells_written,
        m.empty_cells,
        m.median_tokens,
        m.shards.len(),
        args.output.display()
    ));
    util::say(format!(
        "genes: {}/{} mapped{}; {:.2} s ({:.0} cells/s), peak memory {:.0} MiB",
        m.genes_mapped,
        m.genes_in_file,
        if unmapped.is_empty() { String::new() } else { format!(" (unmapped: {})", abbreviate(unmapped, 12)) },
        secs,
        m.cells_in as f64 / secs,
        util::peak_rss_bytes().unwrap_or(0) as f64 / 1048576.0
    ));
    Ok(())
}

fn abbreviate(names: &[String], k: usize) -> String {
    if names.len() <= k { names.join(", ") } else { format!("{}, ... {} more", names[..k].join(", "), names.len() - k) }
}

/// Compute a technology's gene means from one or more files (for --tech-means).
///
/// Compute a technology's mean vector from one or more files: per gene, the mean of
/// 10k-normalized expression over the cells where it is non-zero (NaN if never detected).
#[derive(Debug, clap::Args)]
#[command(after_help = concat!(
    "Examples:\n",
    "  sof tech-means --input a.h5ad --input b.h5ad --species mouse \\\n",
    "      --vocab nicheformer/vocab.tsv --genes-dir genes/ --output tech_means/starmap.tsv",
))]
pub struct MeansArgs {
    /// Input .h5ad files, all of one technology.
    #[arg(short, long, required = true, num_args = 1..)]
    pub input: Vec<PathBuf>,
    /// mouse or human (the species token; genes are mapped to the vocabulary's species).
    #[arg(long, value_enum)]
    pub species: SpeciesArg,
    /// Vocabulary TSV (default: the first file's genes).
    #[arg(long)]
    pub vocab: Option<PathBuf>,
    /// Folder with genes.tsv and mouse_human_orthologs_all.tsv, to map gene symbols.
    #[arg(long)]
    pub genes_dir: Option<PathBuf>,
    /// Output TSV (ensembl_id, mean).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Replace an existing --output that is not a means table sof wrote.
    #[arg(long)]
    pub force: bool,
}

pub fn run_means(args: MeansArgs) -> anyhow::Result<()> {
    let _writer = sof_io::OutputLock::acquire(&args.output)?;
    util::check_replace_text(&args.output, args.force, |text| text.starts_with(TechMeans::TSV_HEADER))?;
    let species = species(args.species);
    let first = H5adReader::open(&args.input[0])?;
    let (vocab, _) = align(&first, args.vocab.as_deref(), args.genes_dir.as_deref(), species)?;
    let mut acc = MeansAccumulator::new(vocab.len());
    let mut cells = 0;
    for path in &args.input {
        let reader = H5adReader::open(path)?;
        let (_, report) = align(&reader, args.vocab.as_deref(), args.genes_dir.as_deref(), species)?;
        let map = GeneMap::from_report(&report);
        for start in (0..reader.n_obs()).step_by(65_536) {
            acc.add(&reader.read_rows(start..(start + 65_536).min(reader.n_obs()))?, &map);
        }
        cells += reader.n_obs();
    }
    let means = acc.finish();
    means.save_tsv(&args.output, &vocab)?;
    util::say(format!(
        "{} cells from {} file(s): {} genes measured; wrote {}",
        cells,
        args.input.len(),
        means.n_measured(),
        args.output.display()
    ));
    Ok(())
}
