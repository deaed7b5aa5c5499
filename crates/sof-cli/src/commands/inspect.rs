//! `sof inspect`: what is in a cell file, and how its genes map into a vocabulary.

use std::path::PathBuf;

use anyhow::Context;
use sof_io::genes::{AlignmentReport, GeneTables, Species, Vocabulary};
use sof_io::h5ad::H5adReader;

use crate::util;

/// Summarise a cell file: shape, annotations, counts, genes in a vocabulary.
///
/// Summarise a cell file (.h5ad or .loom): shape, storage, annotations, counts per cell; with
/// --vocab and --genes-dir, also how its genes map into a gene vocabulary.
#[derive(Debug, clap::Args)]
#[command(after_help = concat!(
    "Examples:\n",
    "  sof inspect data/starmap_mpfc.h5ad --label layer\n",
    "  sof inspect data/starmap_mpfc.h5ad --species mouse --vocab nicheformer/vocab.tsv \\\n",
    "      --genes-dir genes/",
))]
pub struct Args {
    /// The .h5ad or .loom file.
    pub input: PathBuf,
    /// obs columns whose label counts to show.
    #[arg(long, value_delimiter = ',')]
    pub label: Vec<String>,
    /// Species of the gene names, for gene alignment.
    #[arg(long, value_enum, default_value = "mouse")]
    pub species: SpeciesArg,
    /// A vocabulary TSV (index, token_id, ensembl_id) to align genes into.
    #[arg(long, requires = "genes_dir")]
    pub vocab: Option<PathBuf>,
    /// Folder with genes.tsv and mouse_human_orthologs_all.tsv.
    #[arg(long, requires = "vocab")]
    pub genes_dir: Option<PathBuf>,
    /// Write the per-gene alignment report (TSV) here.
    #[arg(long, requires = "vocab")]
    pub report: Option<PathBuf>,
    /// Replace an existing --report that is not an alignment report sof wrote.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum SpeciesArg {
    Human,
    Mouse,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let _report_writer = args.report.as_deref().map(sof_io::OutputLock::acquire).transpose()?;
    if let Some(report) = &args.report {
        util::check_replace_text(report, args.force, |text| text.starts_with(AlignmentReport::TSV_HEADER))?;
    }
    let adata = sof_io::read_cells(&args.input)?;
    let enc = match args.input.extension().and_then(|e| e.to_str()) {
        Some("loom") => "loom (genes x cells, dense)".to_owned(),
        _ => format!("{:?}", H5adReader::open(&args.input)?.x_encoding()),
    };
    let mut totals = adata.x.row_sums();
    let empty = totals.iter().filter(|&&t| t == 0.0).count();
    util::say(format!("{}", args.input.display()));
    util::say(format!(
        "  cells x genes   {} x {}  (X stored {enc}, {} non-zero)",
        adata.n_obs(),
        adata.n_vars(),
        adata.x.nnz_nonzero()
    ));
    util::say(format!("  counts per cell median {:.1}, {} empty cell(s)", util::median(&mut totals), empty));
    for (name, col) in adata.obs.columns() {
        let extra = match col {
            sof_io::Column::Categorical { categories, .. } => format!("{} categories", categories.len()),
            _ => String::new(),
        };
        util::say(format!("  obs  {name:<24} {:<12} {extra}", col.kind()));
    }
    for (k, a) in &adata.obsm {
        util::say(format!("  obsm {k:<24} {} x {}", a.nrows(), a.ncols()));
    }
    for label in &args.label {
        let col = adata.obs.get(label).with_context(|| {
            format!(
                "{}: obs has no column '{label}' (columns: {})",
                args.input.display(),
                adata.obs.column_names().collect::<Vec<_>>().join(", ")
            )
        })?;
        util::say(format!("  {label}:"));
        for (k, n) in col.value_counts() {
            util::say(format!("    {k:<30} {n}"));
        }
    }
    if let (Some(vocab), Some(genes_dir)) = (&args.vocab, &args.genes_dir) {
        let vocab = Vocabulary::load_tsv(vocab)?;
        let tables = GeneTables::load(genes_dir)?;
        let species = match args.species {
            SpeciesArg::Human => Species::Human,
            SpeciesArg::Mouse => Species::Mouse,
        };
        let report = tables.align(adata.var_names(), species, &vocab);
        util::say(format!(
            "  genes mapped    {}/{} into a vocabulary of {}",
            report.n_mapped(),
            adata.n_vars(),
            vocab.len()
        ));
        let unmapped = report.unmapped();
        if !unmapped.is_empty() {
            util::say(format!("  unmapped        {}", unmapped.join(", ")));
        }
        if let Some(path) = &args.report {
            util::write_atomic(path, &report.to_tsv(&vocab))?;
            util::say(format!("  per-gene report {}", path.display()));
        }
    }
    Ok(())
}
