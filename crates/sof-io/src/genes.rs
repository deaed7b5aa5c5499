//! Gene vocabularies and the alignment of a dataset's gene names into one.
//!
//! The alignment rule (the one ../shared/genes/README.md documents for the Nicheformer vocabulary,
//! here implemented and tested) tries, for each gene, in this order:
//!
//! 1. an Ensembl id given directly (version suffix dropped) that is in the vocabulary;
//! 2. mouse symbol -> ENSMUSG, if that ENSMUSG is itself in the vocabulary (`direct_ENSMUSG_in_vocab`);
//! 3. its Ensembl one-to-one human ortholog (`ensembl_one2one`);
//! 4. the uppercased symbol as a human symbol (`uppercase_human_symbol`);
//! 5. a one-to-many / many-to-many Ensembl ortholog with exactly one candidate in the vocabulary;
//! 6. an HCOP pair with exactly one candidate in the vocabulary;
//! 7. an HGNC previous symbol, then an alias (each only when it names one vocabulary gene).
//!
//! Human symbols take steps 4 and 7. A gene that no step maps is reported as unmapped, and a
//! step that finds several candidates reports them: nothing is dropped silently.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// An ordered list of gene ids; a gene's position is its vocabulary index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vocabulary {
    ids: Vec<String>,
    index: HashMap<String, u32>,
}

impl Vocabulary {
    /// Builds a vocabulary from ids in order; duplicates are an error.
    pub fn new(ids: Vec<String>) -> std::result::Result<Self, String> {
        let mut index = HashMap::with_capacity(ids.len());
        for (i, id) in ids.iter().enumerate() {
            if index.insert(id.clone(), i as u32).is_some() {
                return Err(format!("gene id '{id}' appears twice"));
            }
        }
        Ok(Self { ids, index })
    }

    /// Loads the reference layout: a TSV with header `index  token_id  ensembl_id`.
    pub fn load_tsv(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap_or_default().split('\t').collect();
        let col = header.iter().position(|h| *h == "ensembl_id").ok_or_else(|| {
            Error::missing(path, "ensembl_id (column)", "a vocabulary TSV needs columns index, token_id, ensembl_id")
        })?;
        let idx_col = header.iter().position(|h| *h == "index");
        let mut ids = Vec::new();
        for (n, line) in lines.enumerate().filter(|(_, l)| !l.is_empty()) {
            let fields: Vec<&str> = line.split('\t').collect();
            let id = fields.get(col).ok_or_else(|| {
                Error::invalid(
                    path,
                    format!("line {}", n + 2),
                    "is missing the ensembl_id field",
                    "check for truncation",
                )
            })?;
            if let Some(i) = idx_col
                && fields.get(i).and_then(|s| s.parse::<usize>().ok()) != Some(ids.len())
            {
                return Err(Error::invalid(
                    path,
                    format!("line {}", n + 2),
                    "index is not the row number",
                    "the vocabulary must be listed in index order, from 0",
                ));
            }
            ids.push((*id).to_owned());
        }
        if ids.is_empty() {
            return Err(Error::invalid(
                path,
                "rows",
                "the vocabulary is empty",
                "pass a vocabulary with at least one gene",
            ));
        }
        Self::new(ids).map_err(|p| Error::invalid(path, "ensembl_id", p, "vocabulary ids must be unique"))
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn get(&self, id: &str) -> Option<u32> {
        self.index.get(id).copied()
    }

    pub fn id(&self, index: u32) -> &str {
        &self.ids[index as usize]
    }

    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    /// The reference TSV layout (`index  token_id  ensembl_id`, token id = index + 30), which
    /// [`Vocabulary::load_tsv`] reads back.
    pub fn to_tsv(&self) -> String {
        let mut s = String::from("index\ttoken_id\tensembl_id\n");
        for (i, id) in self.ids.iter().enumerate() {
            s.push_str(&format!("{i}\t{}\t{id}\n", i + 30));
        }
        s
    }
}

/// Species of a dataset's gene names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Species {
    Human,
    Mouse,
}

/// How one gene was mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MapMethod {
    /// The name is a vocabulary id (Ensembl id, version dropped) or an exact vocabulary entry.
    DirectId,
    DirectEnsmusgInVocab,
    EnsemblOne2one,
    UppercaseHumanSymbol,
    HumanSymbol,
    EnsemblOne2manySingleInVocab,
    HcopSingleInVocab,
    PreviousSymbol,
    AliasSymbol,
    /// Several vocabulary genes matched at the first step that matched at all.
    Ambiguous,
    Unmapped,
}

impl MapMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            MapMethod::DirectId => "direct_id",
            MapMethod::DirectEnsmusgInVocab => "direct_ENSMUSG_in_vocab",
            MapMethod::EnsemblOne2one => "ensembl_one2one",
            MapMethod::UppercaseHumanSymbol => "uppercase_human_symbol",
            MapMethod::HumanSymbol => "symbol",
            MapMethod::EnsemblOne2manySingleInVocab => "ensembl_one2many/many2many_single_in_vocab",
            MapMethod::HcopSingleInVocab => "hcop_single_in_vocab",
            MapMethod::PreviousSymbol => "previous_symbol",
            MapMethod::AliasSymbol => "alias_symbol",
            MapMethod::Ambiguous => "ambiguous",
            MapMethod::Unmapped => "unmapped",
        }
    }
}

/// The mapping of one input gene.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GeneMapping {
    pub input: String,
    /// Vocabulary index, when mapped.
    pub index: Option<u32>,
    pub method: MapMethod,
    /// Vocabulary ids that competed when the mapping is ambiguous.
    pub candidates: Vec<String>,
}

/// How every gene of a dataset mapped, in the dataset's gene order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlignmentReport {
    pub genes: Vec<GeneMapping>,
}

impl AlignmentReport {
    /// The first line of [`AlignmentReport::to_tsv`] (how a report sof wrote is recognised).
    pub const TSV_HEADER: &'static str = "gene\tvocab_id\tmethod\tcandidates\n";

    pub fn n_mapped(&self) -> usize {
        self.genes.iter().filter(|g| g.index.is_some()).count()
    }

    /// Names of the genes that did not map (ambiguous ones included).
    pub fn unmapped(&self) -> Vec<&str> {
        self.genes.iter().filter(|g| g.index.is_none()).map(|g| g.input.as_str()).collect()
    }

    /// Vocabulary index per input gene (`None` = unmapped), for building a column remap.
    pub fn indices(&self) -> Vec<Option<u32>> {
        self.genes.iter().map(|g| g.index).collect()
    }

    /// Input genes that map onto a vocabulary gene another input gene also maps onto.
    pub fn collisions(&self) -> Vec<(u32, Vec<&str>)> {
        let mut by_index: HashMap<u32, Vec<&str>> = HashMap::new();
        for g in &self.genes {
            if let Some(i) = g.index {
                by_index.entry(i).or_default().push(&g.input);
            }
        }
        let mut out: Vec<_> = by_index.into_iter().filter(|(_, v)| v.len() > 1).collect();
        out.sort();
        out
    }

    /// A TSV with one line per gene: input, vocabulary id, method, candidates.
    pub fn to_tsv(&self, vocab: &Vocabulary) -> String {
        let mut s = String::from(Self::TSV_HEADER);
        for g in &self.genes {
            let id = g.index.map(|i| vocab.id(i)).unwrap_or("");
            let _ = writeln!(s, "{}\t{}\t{}\t{}", g.input, id, g.method.as_str(), g.candidates.join(","));
        }
        s
    }
}

/// Symbol, Ensembl and ortholog tables (the ../shared/genes layout), indexed for alignment.
#[derive(Debug, Default)]
pub struct GeneTables {
    mouse_symbol: HashMap<String, Vec<String>>,
    mouse_one2one: HashMap<String, String>,
    human_primary: HashMap<String, Vec<String>>,
    human_previous: HashMap<String, Vec<String>>,
    human_alias: HashMap<String, Vec<String>>,
    /// (mouse ENSMUSG or symbol) -> human ENSG for Ensembl one2many/many2many pairs.
    orth_many: HashMap<String, Vec<String>>,
    orth_hcop: HashMap<String, Vec<String>>,
}

const PRIMARY_TAGS: [&str; 4] = ["ensembl100_gtf", "ensembl_biomart", "geneformer", "ncbi_gene"];

impl GeneTables {
    /// Loads `genes.tsv` and `mouse_human_orthologs_all.tsv` from `dir`.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let mut t = GeneTables::default();
        let genes = dir.join("genes.tsv");
        for_each_row(&genes, &["species", "symbol", "ensembl_id", "human_ortholog_ensembl_id", "source"], |f| {
            let (species, symbol, ens, orth, source) = (f[0], f[1], f[2], f[3], f[4]);
            if ens.is_empty() {
                return;
            }
            match species {
                "mouse" => {
                    push(&mut t.mouse_symbol, symbol, ens);
                    if !orth.is_empty() {
                        t.mouse_one2one.insert(ens.to_owned(), orth.to_owned());
                    }
                }
                "human" => {
                    if PRIMARY_TAGS.iter().any(|p| source.contains(p)) {
                        push(&mut t.human_primary, symbol, ens);
                    } else if source.contains("previous") {
                        push(&mut t.human_previous, symbol, ens);
                    } else {
                        push(&mut t.human_alias, symbol, ens);
                    }
                }
                _ => {}
            }
        })?;
        let orth = dir.join("mouse_human_orthologs_all.tsv");
        for_each_row(
            &orth,
            &["mouse_ensembl", "mouse_symbol", "human_ensembl", "human_symbol", "homology_type"],
            |f| {
                let (mouse_ens, mouse_sym, human_ens, kind) = (f[0], f[1], f[2], f[4]);
                if human_ens.is_empty() {
                    return;
                }
                let table = if kind.starts_with("hcop") {
                    &mut t.orth_hcop
                } else if kind.contains("one2many") || kind.contains("many2many") {
                    &mut t.orth_many
                } else {
                    return;
                };
                for key in [mouse_ens, mouse_sym] {
                    if !key.is_empty() && key != "-" {
                        push(table, key, human_ens);
                    }
                }
            },
        )?;
        Ok(t)
    }

    /// Maps every name into `vocab`, following the rule in this module's documentation.
    pub fn align(&self, names: &[String], species: Species, vocab: &Vocabulary) -> AlignmentReport {
        AlignmentReport { genes: names.iter().map(|n| self.map_one(n, species, vocab)).collect() }
    }

    fn map_one(&self, name: &str, species: Species, vocab: &Vocabulary) -> GeneMapping {
        let done =
            |index: Option<u32>, method, candidates| GeneMapping { input: name.to_owned(), index, method, candidates };
        let stripped = strip_version(name);
        if let Some(i) = vocab.get(name).or_else(|| vocab.get(stripped)) {
            return done(Some(i), MapMethod::DirectId, vec![]);
        }
        let upper = name.to_uppercase();
        let mut steps: Vec<(MapMethod, Vec<&str>)> = Vec::new();
        if species == Species::Mouse {
            let ensmusg: Vec<&str> = if stripped.starts_with("ENSMUSG") {
                vec![stripped]
            } else {
                self.mouse_symbol.get(name).map(|v| v.iter().map(String::as_str).collect()).unwrap_or_default()
            };
            steps.push((MapMethod::DirectEnsmusgInVocab, ensmusg.clone()));
            steps.push((
                MapMethod::EnsemblOne2one,
                ensmusg.iter().filter_map(|e| self.mouse_one2one.get(*e).map(String::as_str)).collect(),
            ));
            steps.push((MapMethod::UppercaseHumanSymbol, lookup(&self.human_primary, &upper)));
            let keys: Vec<&str> = ensmusg.iter().copied().chain([name]).collect();
            steps.push((
                MapMethod::EnsemblOne2manySingleInVocab,
                keys.iter().flat_map(|k| lookup(&self.orth_many, k)).collect(),
            ));
            steps.push((MapMethod::HcopSingleInVocab, keys.iter().flat_map(|k| lookup(&self.orth_hcop, k)).collect()));
        } else {
            steps.push((MapMethod::HumanSymbol, lookup(&self.human_primary, name)));
            if upper != name {
                steps.push((MapMethod::HumanSymbol, lookup(&self.human_primary, &upper)));
            }
        }
        steps.push((MapMethod::PreviousSymbol, lookup(&self.human_previous, &upper)));
        steps.push((MapMethod::AliasSymbol, lookup(&self.human_alias, &upper)));
        // A step maps only when it names exactly one vocabulary gene; an ambiguous step falls
        // through to the next, and is reported only if no later step maps.
        let mut ambiguous: Option<Vec<String>> = None;
        for (method, candidates) in steps {
            let hits: BTreeSet<u32> = candidates.iter().filter_map(|c| vocab.get(c)).collect();
            match hits.len() {
                0 => {}
                1 => return done(hits.first().copied(), method, vec![]),
                _ => {
                    ambiguous.get_or_insert_with(|| hits.iter().map(|&i| vocab.id(i).to_owned()).collect());
                }
            }
        }
        match ambiguous {
            Some(ids) => done(None, MapMethod::Ambiguous, ids),
            None => done(None, MapMethod::Unmapped, vec![]),
        }
    }
}

fn strip_version(name: &str) -> &str {
    match name.split_once('.') {
        Some((base, v)) if base.starts_with("ENS") && v.chars().all(|c| c.is_ascii_digit()) => base,
        _ => name,
    }
}

fn lookup<'a>(map: &'a HashMap<String, Vec<String>>, key: &str) -> Vec<&'a str> {
    map.get(key).map(|v| v.iter().map(String::as_str).collect()).unwrap_or_default()
}

fn push(map: &mut HashMap<String, Vec<String>>, key: &str, value: &str) {
    let v = map.entry(key.to_owned()).or_default();
    if !v.iter().any(|x| x == value) {
        v.push(value.to_owned());
    }
}

/// Calls `f` with the named fields of every data row of a TSV, checking the header first.
fn for_each_row(path: &Path, wanted: &[&str], mut f: impl FnMut(&[&str])) -> Result<()> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split('\t').collect();
    let cols: Vec<usize> = wanted
        .iter()
        .map(|w| {
            header.iter().position(|h| h == w).ok_or_else(|| {
                Error::missing(path, format!("{w} (column)"), format!("expected the columns [{}]", wanted.join(", ")))
            })
        })
        .collect::<Result<_>>()?;
    let mut buf = Vec::with_capacity(wanted.len());
    for line in lines {
        let fields: Vec<&str> = line.split('\t').collect();
        buf.clear();
        buf.extend(cols.iter().map(|&c| fields.get(c).copied().unwrap_or("")));
        f(&buf);
    }
    Ok(())
}
