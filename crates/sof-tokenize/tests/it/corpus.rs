use parquet::file::reader::{FileReader, SerializedFileReader};
use sof_io::genes::{GeneTables, Species, Vocabulary};
use sof_tokenize::corpus::{CorpusInputs, CorpusManifest, CorpusSpec, build_corpus, read_shard_tokens};
use sof_tokenize::{GeneMap, Modality, Scratch, TechMeans, Tokenizer, TokenizerConfig, vocabulary_hash};

use crate::shared;

struct Setup {
    vocab: Vocabulary,
    map: GeneMap,
    tok: Tokenizer,
    unmapped: Vec<String>,
}

fn setup(file: &str, species: Species, tech: &str, token: u32, modality: Modality) -> Option<Setup> {
    let shared = shared()?;
    let vocab = Vocabulary::load_tsv(shared.join("nicheformer/vocab.tsv")).unwrap();
    let tables = GeneTables::load(shared.join("genes")).unwrap();
    let r = sof_io::h5ad::H5adReader::open(shared.join("data").join(file)).unwrap();
    let report = tables.align(&r.var().unwrap().index, species, &vocab);
    let means = TechMeans::load_tsv(&shared.join(format!("nicheformer/tech_means/{tech}.tsv")), &vocab).unwrap();
    let tok = Tokenizer::new(TokenizerConfig::default(), &means, species, token, modality);
    Some(Setup {
        map: GeneMap::from_report(&report),
        unmapped: report.unmapped().iter().map(|s| s.to_string()).collect(),
        vocab,
        tok,
    })
}

fn spec(
    file: &str,
    out: &std::path::Path,
    species: Species,
    modality: Modality,
    section: Option<&str>,
    keep: &[&str],
) -> CorpusSpec {
    CorpusSpec {
        output: out.to_path_buf(),
        dataset: file.trim_end_matches(".h5ad").to_owned(),
        technology: "t".into(),
        species,
        modality,
        section_key: section.map(str::to_owned),
        keep_obs: keep.iter().map(|s| s.to_string()).collect(),
        shard_cells: 1000,
        row_group_cells: 256,
    }
}

/// Shards hold every non-empty cell once, in input order, with the tokens the tokenizer gives;
/// the manifest adds up; empty cells are counted and skipped.
#[test]
fn corpus_rows_match_direct_tokenization() {
    let Some(s) = setup("cosmx_human_lung.h5ad", Species::Human, "cosmx", 8, Modality::Spatial) else { return };
    let dir = tempfile::tempdir().unwrap();
    let sp =
        spec("cosmx_human_lung.h5ad", dir.path(), Species::Human, Modality::Spatial, Some("fov"), &["fov", "Area"]);
    let inputs = CorpusInputs {
        tokenizer: &s.tok,
        map: &s.map,
        vocabulary_hash: &vocabulary_hash(&s.vocab),
        vocabulary_size: s.vocab.len(),
        unmapped_genes: s.unmapped.clone(),
        niche_profile: None,
        density: None,
    };
    let input = shared().unwrap().join("data/cosmx_human_lung.h5ad");
    let reader = sof_io::h5ad::H5adReader::open(&input).unwrap();
    let mut done = 0;
    let m = build_corpus(&reader, &sp, &inputs, |n| done += n).unwrap();
    assert_eq!(done, 9233);
    assert_eq!(m.shards.len(), 10);
    assert_eq!(m.cells_in, 9233);
    assert!(m.empty_cells > 0, "the CosMx file has empty cells");
    assert_eq!(m.cells_written + m.empty_cells, 9233);
    assert_eq!(m.context_tokens, [5, 8, 4]);
    assert_eq!(CorpusManifest::load(dir.path()).unwrap(), m);
    let x = sof_io::h5ad::read_h5ad(&input).unwrap().x;
    let mut scratch = Scratch::default();
    let mut all = Vec::new();
    for (k, sh) in m.shards.iter().enumerate() {
        // Each shard is written block by block; its statistics and row groups still describe
        // exactly its own cells.
        let rows = read_shard_tokens(&dir.path().join(&sh.file)).unwrap();
        assert_eq!((sh.first_cell, sh.cells_in), (k * 1000, 1000.min(9233 - k * 1000)), "shard {k}");
        assert_eq!(sh.rows, rows.len());
        assert_eq!(sh.rows + sh.empty_cells, sh.cells_in);
        assert_eq!(sh.length_histogram.iter().sum::<u64>() as usize, sh.rows);
        assert!(rows.iter().all(|r| (r.0 as usize) >= sh.first_cell && (r.0 as usize) < sh.first_cell + sh.cells_in));
        let file = std::fs::File::open(dir.path().join(&sh.file)).unwrap();
        let meta = SerializedFileReader::new(file).unwrap();
        let groups: Vec<i64> = meta.metadata().row_groups().iter().map(|g| g.num_rows()).collect();
        assert!(groups.iter().all(|&n| n <= 256), "row groups of at most row_group_cells rows: {groups:?}");
        assert_eq!(groups.iter().sum::<i64>() as usize, sh.rows);
        all.extend(rows);
    }
    assert_eq!(all.len(), m.cells_written);
    assert!(all.windows(2).all(|w| w[0].0 < w[1].0), "input order");
    for (idx, toks) in &all {
        let (c, v) = x.row(*idx as usize);
        assert_eq!(toks, &s.tok.tokenize(&s.map, c, v, &mut scratch).genes, "cell {idx}");
    }
    let lens: Vec<usize> = all.iter().map(|r| r.1.len()).collect();
    let mut sorted = lens.clone();
    sorted.sort_unstable();
    let n = sorted.len();
    let median = if n % 2 == 1 { sorted[n / 2] as f64 } else { (sorted[n / 2 - 1] + sorted[n / 2]) as f64 / 2.0 };
    assert_eq!(m.median_tokens, median);
}

/// A rerun keeps finished shards untouched and rewrites a missing one identically; a damaged
/// shard and a change of settings are clear errors.
#[test]
fn corpus_resumes_and_refuses_bad_shards() {
    let Some(s) = setup("starmap_mpfc.h5ad", Species::Mouse, "merfish", 7, Modality::Spatial) else { return };
    let dir = tempfile::tempdir().unwrap();
    let sp = spec(
        "starmap_mpfc.h5ad",
        dir.path(),
        Species::Mouse,
        Modality::Spatial,
        Some("section"),
        &["layer", "cell_type"],
    );
    let inputs = CorpusInputs {
        tokenizer: &s.tok,
        map: &s.map,
        vocabulary_hash: &vocabulary_hash(&s.vocab),
        vocabulary_size: s.vocab.len(),
        unmapped_genes: s.unmapped.clone(),
        niche_profile: None,
        density: None,
    };
    let reader = sof_io::h5ad::H5adReader::open(shared().unwrap().join("data/starmap_mpfc.h5ad")).unwrap();
    let first = build_corpus(&reader, &sp, &inputs, |_| {}).unwrap();
    assert_eq!(first.shards.len(), 4);
    let shard = |k: usize| dir.path().join(format!("shard-{k:05}.parquet"));
    let before: Vec<Vec<u8>> = (0..4).map(|k| std::fs::read(shard(k)).unwrap()).collect();
    let mtime0 = std::fs::metadata(shard(0)).unwrap().modified().unwrap();
    std::fs::remove_file(shard(2)).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let again = build_corpus(&reader, &sp, &inputs, |_| {}).unwrap();
    assert_eq!(again, first);
    assert_eq!(std::fs::metadata(shard(0)).unwrap().modified().unwrap(), mtime0, "finished shards are never rewritten");
    for k in 0..4 {
        assert_eq!(std::fs::read(shard(k)).unwrap(), before[k], "shard {k} is identical");
    }
    // No temporary files remain.
    assert!(std::fs::read_dir(dir.path()).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().starts_with('.')));

    let bytes = std::fs::read(shard(1)).unwrap();
    std::fs::write(shard(1), &bytes[..bytes.len() / 2]).unwrap();
    let e = build_corpus(&reader, &sp, &inputs, |_| {}).unwrap_err().to_string();
    assert!(e.contains("shard-00001.parquet") && e.contains("corrupt shard") && e.contains("delete"), "{e}");
    std::fs::write(shard(1), &bytes).unwrap();

    let mut other = sp.clone();
    other.keep_obs = vec!["layer".into()];
    let e = build_corpus(&reader, &other, &inputs, |_| {}).unwrap_err().to_string();
    assert!(e.contains("other tokenizer settings"), "{e}");

    let mut clash = sp.clone();
    clash.keep_obs = vec!["x".into()];
    let e = build_corpus(&reader, &clash, &inputs, |_| {}).unwrap_err().to_string();
    assert!(e.contains("clashes"), "{e}");
}
