//! Special and context tokens (the reference's ids 0..29) and the technology table.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sof_io::genes::Species;

use crate::{Result, TokenizeError};

pub const MASK: u32 = 0;
pub const PAD: u32 = 1;
pub const CLS: u32 = 2;
/// Number of special ids before the first gene token (gene token = vocabulary index + 30).
pub const N_SPECIAL: u32 = 30;
/// Context positions before the gene tokens: species, assay, modality.
pub const N_CONTEXT: usize = 3;

/// Token sequences padded with [`PAD`] to `length` each (at least every row's length),
/// row-major: the `batch x length` layout every model input uses.
///
/// ```
/// let rows = [vec![6i64, 7, 4, 40], vec![6, 7, 4]];
/// let flat = sof_tokenize::pad_rows(rows.iter().map(Vec::as_slice), 5);
/// assert_eq!(flat, [6, 7, 4, 40, 1, 6, 7, 4, 1, 1]);
/// ```
pub fn pad_rows<'a>(rows: impl IntoIterator<Item = &'a [i64]>, length: usize) -> Vec<i64> {
    let mut flat = Vec::new();
    for row in rows {
        assert!(row.len() <= length, "a row of {} tokens does not fit a length of {length}", row.len());
        flat.extend_from_slice(row);
        flat.resize(flat.len() + length - row.len(), i64::from(PAD));
    }
    flat
}

/// Dissociated (scRNA-seq) or spatial measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Modality {
    Dissociated,
    Spatial,
}

impl Modality {
    pub fn token(self) -> u32 {
        match self {
            Modality::Dissociated => 3,
            Modality::Spatial => 4,
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "dissociated" => Ok(Modality::Dissociated),
            "spatial" => Ok(Modality::Spatial),
            _ => Err(TokenizeError::UnknownModality(s.to_owned())),
        }
    }
}

pub fn species_token(s: Species) -> u32 {
    match s {
        Species::Human => 5,
        Species::Mouse => 6,
    }
}

pub fn parse_species(s: &str) -> Result<Species> {
    match s.to_ascii_lowercase().as_str() {
        "human" | "homo_sapiens" | "hs" => Ok(Species::Human),
        "mouse" | "mus_musculus" | "mm" => Ok(Species::Mouse),
        _ => Err(TokenizeError::UnknownSpecies(s.to_owned())),
    }
}

/// A technology: its assay token and the name of its mean vector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TechnologySpec {
    pub token: u32,
    /// Mean vector file stem (`<tech-means dir>/<means>.tsv`).
    pub means: String,
}

/// Technologies by name. The reference's assays keep their ids; `iss` (which has a reference
/// mean vector but no token) gets 19; new technologies take free ids in 19..=29 by configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextTable {
    #[serde(rename = "technology")]
    pub technologies: BTreeMap<String, TechnologySpec>,
}

impl Default for ContextTable {
    fn default() -> Self {
        let t = |token, means: &str| TechnologySpec { token, means: means.to_owned() };
        let mut m = BTreeMap::new();
        m.insert("merfish".into(), t(7, "merfish"));
        m.insert("cosmx".into(), t(8, "cosmx"));
        m.insert("xenium".into(), t(9, "xenium"));
        // Dissociated data is named by its chemistry; all of them use the `dissociated` means.
        m.insert("10x_5p_v2".into(), t(10, "dissociated"));
        m.insert("10x_3p_v3".into(), t(11, "dissociated"));
        m.insert("10x_3p_v2".into(), t(12, "dissociated"));
        m.insert("10x_5p_v1".into(), t(13, "dissociated"));
        m.insert("10x_3p_v1".into(), t(14, "dissociated"));
        m.insert("10x_3p".into(), t(15, "dissociated"));
        m.insert("10x_5p".into(), t(16, "dissociated"));
        m.insert("cite_seq".into(), t(17, "dissociated"));
        m.insert("smartseq_v4".into(), t(18, "dissociated"));
        // Shorthand for dissociated data of unknown chemistry: the most common one, 10x 3' v3.
        m.insert("dissociated".into(), t(11, "dissociated"));
        m.insert("iss".into(), t(19, "iss"));
        Self { technologies: m }
    }
}

impl ContextTable {
    /// The default table extended by a TOML config of `[technology.<name>]` entries with
    /// `token` (19..=29 for new ones) and `means`. Existing names may be redefined.
    pub fn with_config(toml_text: &str, path: &str) -> Result<Self> {
        let extra: ContextTable = toml::from_str(toml_text).map_err(|e| {
            TokenizeError::invalid(path, e.to_string(), "write [technology.<name>] tables with token and means")
        })?;
        let mut table = Self::default();
        for (name, spec) in extra.technologies {
            let builtin = table.technologies.get(&name).map(|s| s.token);
            if builtin != Some(spec.token) && !(19..=29).contains(&spec.token) {
                return Err(TokenizeError::invalid(
                    path,
                    format!("technology '{name}' asks for token {}", spec.token),
                    "new technologies take a free token id in 19..=29",
                ));
            }
            table.technologies.insert(name, spec);
        }
        Ok(table)
    }

    /// Adds `name` as a new technology on the lowest token in 19..=29 that no technology holds,
    /// with means named after it (`<tech-means dir>/<name>.tsv`, or computed from the data), and
    /// returns the token. A name the table knows is refused (it already has a token), as is a
    /// table whose new-technology tokens are all taken.
    ///
    /// ```
    /// let mut table = sof_tokenize::ContextTable::default();
    /// assert_eq!(table.add_new("visium_hd").unwrap(), 20); // 19 is iss
    /// assert_eq!(table.get("visium_hd").unwrap().token, 20);
    /// assert!(table.add_new("merfish").is_err());
    /// ```
    pub fn add_new(&mut self, name: &str) -> Result<u32> {
        let name = name.to_ascii_lowercase();
        if let Some(spec) = self.technologies.get(&name) {
            return Err(TokenizeError::invalid(
                "--new-technology",
                format!("'{name}' is already a known technology (token {})", spec.token),
                "drop --new-technology to use its token",
            ));
        }
        let taken: std::collections::BTreeSet<u32> = self.technologies.values().map(|s| s.token).collect();
        let token = (19..=29).find(|t| !taken.contains(t)).ok_or_else(|| {
            TokenizeError::invalid(
                "--new-technology",
                "every new-technology token (19..=29) is taken",
                "reuse the token of a similar technology in a context config",
            )
        })?;
        self.technologies.insert(name.clone(), TechnologySpec { token, means: name });
        Ok(token)
    }

    /// The table extended by technologies a checkpoint recorded (name -> token, any case) that
    /// it lacks; their means are named after them. A recorded name the table holds under another
    /// token is an error naming `source`: the model would read the cells as another technology.
    pub fn with_recorded(mut self, recorded: &BTreeMap<String, u32>, source: &str) -> Result<Self> {
        for (name, &token) in recorded {
            let name = name.to_ascii_lowercase();
            match self.technologies.get(&name) {
                Some(spec) if spec.token != token => {
                    return Err(TokenizeError::invalid(
                        source,
                        format!(
                            "the model learned technology '{name}' as token {token}; here it is token {}",
                            spec.token
                        ),
                        format!(
                            "pass the context config the model was trained with, or give [technology.{name}] token {token}"
                        ),
                    ));
                }
                Some(_) => {}
                None => {
                    self.technologies.insert(name.clone(), TechnologySpec { token, means: name });
                }
            }
        }
        Ok(self)
    }

    /// Whether the built-in table holds `name` under `token` (a checkpoint records only the
    /// technologies for which this is false).
    pub fn is_builtin(name: &str, token: u32) -> bool {
        Self::default().get(name).is_ok_and(|s| s.token == token)
    }

    pub fn get(&self, name: &str) -> Result<&TechnologySpec> {
        self.technologies.get(&name.to_ascii_lowercase()).ok_or_else(|| TokenizeError::UnknownTechnology {
            name: name.to_owned(),
            known: self.technologies.keys().cloned().collect::<Vec<_>>().join(", "),
        })
    }
}
