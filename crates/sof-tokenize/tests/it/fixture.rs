use sof_io::genes::{Species, Vocabulary};
use sof_tokenize::{GeneMap, Modality, Mode, Scratch, TechMeans, Tokenizer, TokenizerConfig};

use crate::shared;

struct Fixture {
    vocab: Vocabulary,
    genes: Vec<String>,
    cells: Vec<(String, Vec<f32>)>,
}

fn load() -> Option<Fixture> {
    let shared = shared()?;
    let vocab = Vocabulary::load_tsv(shared.join("nicheformer/vocab.tsv")).unwrap();
    let text = std::fs::read_to_string(shared.join("fixtures/tokenizer/counts.tsv")).unwrap();
    let mut lines = text.lines();
    let genes: Vec<String> = lines.next().unwrap().split('\t').skip(1).map(str::to_owned).collect();
    let cells = lines
        .map(|l| {
            let mut f = l.split('\t');
            let name = f.next().unwrap().to_owned();
            (name, f.map(|v| v.parse().unwrap()).collect())
        })
        .collect();
    Some(Fixture { vocab, genes, cells })
}

fn expected(tech: &str) -> Vec<(String, Vec<u32>)> {
    let text = std::fs::read_to_string(
        shared().unwrap().join(format!("fixtures/tokenizer/expected_tokens_compat_{tech}.tsv")),
    )
    .unwrap();
    text.lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let toks: Vec<u32> =
                f.get(2).map(|s| s.split_whitespace().map(|t| t.parse().unwrap()).collect()).unwrap_or_default();
            assert_eq!(toks.len(), f[1].parse::<usize>().unwrap());
            (f[0].to_owned(), toks)
        })
        .collect()
}

fn tokenize_all(fx: &Fixture, tech: &str, mode: Mode) -> (Vec<Vec<u32>>, TechMeans) {
    let means =
        TechMeans::load_tsv(&shared().unwrap().join(format!("nicheformer/tech_means/{tech}.tsv")), &fx.vocab).unwrap();
    let cfg = TokenizerConfig { mode, ..TokenizerConfig::default() };
    let tok = Tokenizer::new(cfg, &means, Species::Human, 9, Modality::Spatial);
    let map = GeneMap::new(fx.genes.iter().map(|g| fx.vocab.get(g)).collect());
    assert_eq!(map.n_mapped(), 35, "every fixture gene is in the vocabulary");
    let mut scratch = Scratch::default();
    let out = fx
        .cells
        .iter()
        .map(|(_, counts)| {
            let cols: Vec<u32> = (0..counts.len() as u32).filter(|&j| counts[j as usize] != 0.0).collect();
            let vals: Vec<f32> = cols.iter().map(|&j| counts[j as usize]).collect();
            tok.tokenize(&map, &cols, &vals, &mut scratch).genes
        })
        .collect();
    (out, means)
}

/// The reference notebooks' tokens, exactly, for all three technologies.
#[test]
fn nicheformer_mode_reproduces_the_fixture() {
    let Some(fx) = load() else { return };
    for tech in ["xenium", "merfish", "dissociated"] {
        let (got, _) = tokenize_all(&fx, tech, Mode::Nicheformer);
        for ((name, want), got) in expected(tech).iter().zip(&got) {
            assert_eq!(got, want, "{tech}, {name}");
        }
        assert!(got[3].is_empty(), "cell 3 is empty");
    }
}

/// Fixed mode differs only where the reference is wrong: genes with a NaN or negative mean are
/// dropped; the order of every other gene is the reference's.
#[test]
fn fixed_mode_drops_only_unmeasured_genes() {
    let Some(fx) = load() else { return };
    for tech in ["xenium", "merfish", "dissociated"] {
        let (compat, means) = tokenize_all(&fx, tech, Mode::Nicheformer);
        let (fixed, _) = tokenize_all(&fx, tech, Mode::Fixed);
        let measured = |t: &u32| {
            let m = means.values[(*t - 30) as usize];
            m.is_finite() && m >= 0.0
        };
        let mut dropped = 0;
        for (c, f) in compat.iter().zip(&fixed) {
            let filtered: Vec<u32> = c.iter().copied().filter(measured).collect();
            assert_eq!(f, &filtered, "{tech}");
            dropped += c.len() - f.len();
        }
        if tech != "dissociated" {
            assert!(dropped > 0, "{tech}: the fixture has off-panel genes with counts");
        }
    }
}
