//! Training data: two synthetic corpora mixed by weight, seeded, checked against the vocabulary.

use std::path::PathBuf;

use sof_io::genes::{Species, Vocabulary};
use sof_pretrain::data::{SequenceStream, Split};
use sof_synth::{Generator, SynthConfig};
use sof_tokenize::corpus::{CorpusInputs, CorpusSpec, build_corpus};
use sof_tokenize::{ContextTable, GeneMap, MeansAccumulator, Modality, Tokenizer, TokenizerConfig, vocabulary_hash};

/// Tokenizes the synthetic merfish and xenium files into two corpora; returns them and the
/// vocabulary hash.
pub(crate) fn corpora(dir: &std::path::Path) -> (Vec<PathBuf>, String) {
    let mut cfg = SynthConfig::default();
    cfg.cells_per_section = 1_500;
    cfg.dissociated_cells = 0;
    let g = Generator::new(cfg).unwrap();
    let files = g.write_all(dir, |_, _| {}).unwrap();
    let vocab = Vocabulary::new(g.gene_names().to_vec()).unwrap();
    let hash = vocabulary_hash(&vocab);
    let table = ContextTable::default();
    let mut out = Vec::new();
    for (file, tech) in files.iter().zip(["merfish", "xenium"]) {
        let a = sof_io::h5ad::read_h5ad(file).unwrap();
        let map = GeneMap::new(a.var_names().iter().map(|n| vocab.get(n)).collect());
        let mut acc = MeansAccumulator::new(vocab.len());
        acc.add(&a.x, &map);
        let tok = Tokenizer::new(
            TokenizerConfig::default(),
            &acc.finish(),
            Species::Mouse,
            table.get(tech).unwrap().token,
            Modality::Spatial,
        );
        let corpus = dir.join(format!("corpus_{tech}"));
        let spec = CorpusSpec {
            output: corpus.clone(),
            dataset: tech.into(),
            technology: tech.into(),
            species: Species::Mouse,
            modality: Modality::Spatial,
            section_key: None,
            keep_obs: vec![],
            shard_cells: 700,
            row_group_cells: 256,
        };
        let inputs = CorpusInputs {
            tokenizer: &tok,
            map: &map,
            vocabulary_hash: &hash,
            vocabulary_size: vocab.len(),
            unmapped_genes: vec![],
            niche_profile: None,
            density: None,
        };
        build_corpus(&a, &spec, &inputs, |_| {}).unwrap();
        out.push(corpus);
    }
    (out, hash)
}

#[test]
fn weighted_seeded_stream() {
    let d = tempfile::tempdir().unwrap();
    let (c, hash) = corpora(d.path());
    let sources = vec![(c[0].clone(), 3.0), (c[1].clone(), 1.0)];
    let mut s = SequenceStream::open(&sources, &hash, 64, 256, 1, Split::All).unwrap();
    let mut from_first = 0;
    let n = 4_000;
    for _ in 0..n {
        let q = s.next_sequence().unwrap();
        let (src, seq) = (q.source, q.tokens);
        assert!(seq.len() <= 64 && seq.len() > 3);
        assert_eq!(&seq[..3], if src == 0 { &[6, 7, 4] } else { &[6, 9, 4] }, "context tokens of its corpus");
        from_first += usize::from(src == 0);
    }
    let share = from_first as f64 / n as f64;
    assert!((share - 0.75).abs() < 0.03, "mixing share {share}");

    let take = |seed| {
        let mut s = SequenceStream::open(&sources, &hash, 64, 256, seed, Split::All).unwrap();
        (0..200).map(|_| s.next_sequence().unwrap().tokens).collect::<Vec<_>>()
    };
    assert_eq!(take(5), take(5), "the same seed gives the same order");
    assert_ne!(take(5), take(6));

    let (batch, length, _) = s.next_batch(8).unwrap();
    assert_eq!(batch.len(), 8 * length);
    assert!(length <= 64);
    assert!(
        batch.chunks(length).all(|row| row.iter().skip_while(|&&t| t != 1).all(|&t| t == 1)),
        "PAD only at the end"
    );

    let e = SequenceStream::open(&sources, "another-vocabulary", 64, 256, 1, Split::All).unwrap_err().to_string();
    assert!(e.contains("another vocabulary") && e.contains("corpus_merfish"), "{e}");
    let e = SequenceStream::open(&[(c[0].clone(), 0.0)], &hash, 64, 256, 1, Split::All).unwrap_err().to_string();
    assert!(e.contains("weight"), "{e}");
}

/// A few dozen AdamW steps of the tiny model on a synthetic corpus lower the masked-token loss:
/// the objective, the masking and the data stream fit together and learn.
#[test]
fn masked_token_training_lowers_the_loss() {
    use burn::optim::{AdamWConfig, GradientsParams};
    use burn::prelude::*;
    use sof_pretrain::masking::{MaskingConfig, mask_batch, rng};
    use sof_pretrain::objective::mlm_loss;

    let d = tempfile::tempdir().unwrap();
    let (c, hash) = corpora(d.path());
    let mut stream = SequenceStream::open(&[(c[0].clone(), 1.0)], &hash, 48, 512, 3, Split::All).unwrap();
    let device = Device::flex().autodiff();
    let mut cfg = sof_model::EncoderConfig::tiny(2_030);
    cfg.context_length = 48;
    let mut model = cfg.init(&device);
    let mut optim = AdamWConfig::new().with_weight_decay(0.01).init();
    let mut masking_rng = rng(9);
    let mut losses = Vec::new();
    for _ in 0..60 {
        let (mut tokens, length, _) = stream.next_batch(16).unwrap();
        let labels = mask_batch(&mut tokens, length, cfg.n_tokens, &MaskingConfig::default(), &mut masking_rng);
        let Some(out) = mlm_loss(&model, &tokens, &labels, length, &device) else { continue };
        losses.push(out.loss.clone().into_scalar::<f32>());
        let grads = GradientsParams::from_grads(out.loss.backward(), &model);
        model = optim.step(3e-3, model, grads);
    }
    let first: f32 = losses[..10].iter().sum::<f32>() / 10.0;
    let last: f32 = losses[losses.len() - 10..].iter().sum::<f32>() / 10.0;
    assert!(first > 7.0, "starts near ln(2030) = 7.6: {first}");
    assert!(last < first - 1.0, "loss falls: {first} -> {last}");
}

mod train;
