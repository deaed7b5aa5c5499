use sof_io::genes::{GeneTables, MapMethod, Species, Vocabulary};
use sof_io::h5ad::read_h5ad;

use crate::shared;

#[test]
fn osmfish_and_starmap_map_into_the_reference_vocabulary() {
    let Some(shared) = shared() else { return };
    let vocab = Vocabulary::load_tsv(shared.join("nicheformer/vocab.tsv")).unwrap();
    assert_eq!(vocab.len(), 20_310);
    let tables = GeneTables::load(shared.join("genes")).unwrap();

    let osm = read_h5ad(shared.join("data/osmfish_sscortex.h5ad")).unwrap();
    let r = tables.align(osm.var_names(), Species::Mouse, &vocab);
    assert_eq!(r.n_mapped(), 33, "unmapped: {:?}", r.unmapped());

    let star = read_h5ad(shared.join("data/starmap_mpfc.h5ad")).unwrap();
    let r = tables.align(star.var_names(), Species::Mouse, &vocab);
    assert!(r.n_mapped() >= 160, "mapped {} of 166", r.n_mapped());
    let unmapped = r.unmapped();
    assert_eq!(unmapped.len(), 166 - r.n_mapped());
    assert!(unmapped.contains(&"Obox3"), "unmapped genes are reported by name: {unmapped:?}");
    let tsv = r.to_tsv(&vocab);
    assert!(tsv.lines().any(|l| l.starts_with("Obox3\t\tambiguous\t")), "{tsv}");
    assert!(tsv.lines().any(|l| l == "eRNA1\t\tunmapped\t"), "{tsv}");
}

/// Our implementation of the documented rule agrees with the precomputed mouse map shipped in
/// shared/genes (same vocabulary id for every symbol the map resolves).
#[test]
fn mouse_rule_agrees_with_the_precomputed_map() {
    let Some(shared) = shared() else { return };
    let vocab = Vocabulary::load_tsv(shared.join("nicheformer/vocab.tsv")).unwrap();
    let tables = GeneTables::load(shared.join("genes")).unwrap();
    let text = std::fs::read_to_string(shared.join("genes/mouse_symbol_to_nicheformer_vocab.tsv")).unwrap();
    let rows: Vec<(String, String)> = text
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f[0].to_owned(), f[1].to_owned())
        })
        .collect();
    let names: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
    let report = tables.align(&names, Species::Mouse, &vocab);
    let mut disagree = Vec::new();
    for ((sym, want), got) in rows.iter().zip(&report.genes) {
        let got_id = got.index.map(|i| vocab.id(i).to_owned()).unwrap_or_default();
        if &got_id != want {
            disagree.push(format!("{sym}: {got_id} ({}) vs {want}", got.method.as_str()));
        }
    }
    let mapped = rows.iter().filter(|r| !r.1.is_empty()).count();
    assert!(mapped > 20_000);
    assert!(
        disagree.len() * 1000 <= mapped,
        "{} of {} disagree, e.g. {:?}",
        disagree.len(),
        mapped,
        &disagree[..disagree.len().min(10)]
    );
}

#[test]
fn ensembl_ids_and_human_symbols() {
    let Some(shared) = shared() else { return };
    let vocab = Vocabulary::load_tsv(shared.join("nicheformer/vocab.tsv")).unwrap();
    let tables = GeneTables::load(shared.join("genes")).unwrap();
    let names: Vec<String> = ["ENSG00000000003.14", "TSPAN6", "NOT_A_GENE"].iter().map(|s| s.to_string()).collect();
    let r = tables.align(&names, Species::Human, &vocab);
    assert_eq!(r.genes[0].index, Some(0));
    assert_eq!(r.genes[0].method, MapMethod::DirectId);
    assert_eq!(r.genes[1].index, Some(0));
    assert_eq!(r.genes[2].method, MapMethod::Unmapped);
    assert_eq!(r.unmapped(), vec!["NOT_A_GENE"]);
    assert_eq!(r.collisions(), vec![(0, vec!["ENSG00000000003.14", "TSPAN6"])]);
}

#[test]
fn bad_vocabulary_files() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("v.tsv");
    let v = Vocabulary::new(vec!["A".into(), "B".into()]).unwrap();
    std::fs::write(&p, v.to_tsv()).unwrap();
    assert_eq!(Vocabulary::load_tsv(&p).unwrap(), v, "to_tsv round-trips");
    std::fs::write(&p, "index\ttoken_id\tgene\n0\t30\tA\n").unwrap();
    let e = Vocabulary::load_tsv(&p).unwrap_err().to_string();
    assert!(e.contains("ensembl_id") && e.contains(&p.display().to_string()), "{e}");
    std::fs::write(&p, "index\ttoken_id\tensembl_id\n0\t30\tA\n1\t31\tA\n").unwrap();
    let e = Vocabulary::load_tsv(&p).unwrap_err().to_string();
    assert!(e.contains("appears twice"), "{e}");
}
