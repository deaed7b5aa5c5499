//! `sof datasets`: the known datasets (from datasets/*.toml) and whether they are present here.

use std::path::PathBuf;

use crate::util;

/// List the known datasets, where they are expected, and check the local copies.
#[derive(Debug, clap::Args)]
#[command(after_help = concat!(
    "Examples:\n",
    "  sof datasets --data-dir ../shared/data --verify",
))]
pub struct Args {
    /// Folder of dataset manifests.
    #[arg(long, default_value = "datasets")]
    pub manifests: PathBuf,
    /// Local data folder (default: ../shared/data or $SOF_SHARED_DIR/data, where it exists).
    #[arg(long, env = "SOF_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Check each present file's SHA-256 against its manifest.
    #[arg(long)]
    pub verify: bool,
}

/// The data folder: the flag, else the shared folder's data/ where it exists.
pub fn data_dir(flag: Option<PathBuf>) -> Option<PathBuf> {
    flag.or_else(|| sof_io::shared::shared_dir().map(|s| s.join("data")))
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let manifests = sof_io::manifest::load_manifests(&args.manifests)?;
    let dir = data_dir(args.data_dir);
    util::say(format!(
        "data folder: {}",
        dir.as_ref().map(|d| d.display().to_string()).unwrap_or_else(|| "none (pass --data-dir)".into())
    ));
    let mut failed = 0;
    for m in &manifests {
        let state = match &dir {
            None => "-".to_owned(),
            Some(d) if !m.path_in(d).exists() => "absent".to_owned(),
            Some(d) if args.verify => match m.verify(d) {
                Ok(_) => "ok (sha256 verified)".to_owned(),
                Err(e) => {
                    failed += 1;
                    format!("BAD: {e}")
                }
            },
            Some(_) => "present".to_owned(),
        };
        util::say(format!("  {:<32} {:<12} {:<7} {:<12} {}", m.name, m.technology, m.species, m.modality, state));
    }
    anyhow::ensure!(failed == 0, "{failed} dataset(s) failed verification");
    Ok(())
}
