//! Runs `examples/in_memory.rs`, the whole pipeline from library calls, on a small tissue and
//! checks what it reports.

#[path = "../examples/in_memory.rs"]
mod example;

#[test]
fn the_in_memory_pipeline_runs_and_reports() {
    let work = tempfile::tempdir().unwrap();
    let r = example::run(&example::Settings { cells: 1_200, steps: 30, seed: 3 }, work.path()).unwrap();
    assert_eq!(r.pretrain.steps_done, 30);
    assert!(!r.pretrain.interrupted);
    let loss = r.pretrain.final_validation_loss.unwrap();
    assert!(loss.is_finite() && loss < r.pretrain.baselines.unigram_loss * 1.5, "{loss} vs {:?}", r.pretrain.baselines);
    // The default objective learned the label-free niche profile beside the masked tokens.
    let metrics = sof_pretrain::trainer::read_metrics(&work.path().join("run")).unwrap();
    assert!(metrics.iter().all(|m| m.profile_loss.is_some_and(f64::is_finite) && m.composition_loss.is_none()));

    // The probe: every feature set on both sections, layer scores in [0, 1]; expression and its
    // neighbourhood average know the layer far better than chance on this tissue.
    assert_eq!(r.probe.folds.len(), 2);
    let f1 = |set: &str| r.probe.result(set, "linear").unwrap_or_else(|| panic!("{set}")).mean["macro_f1"];
    let chance = 1.0 / r.probe.classes.len() as f64;
    for set in
        ["embedding (X_sof)", "niche embedding (X_sof_niche)", "PCA-50", "PCA-best", "NichePCA-best", "BANKSY-best"]
    {
        let v = f1(set);
        assert!((0.0..=1.0).contains(&v), "{set}: {v}");
    }
    assert!(f1("PCA-50") > 2.0 * chance, "PCA-50 {}", f1("PCA-50"));
    assert!(
        f1("NichePCA-best") > f1("PCA-50"),
        "neighbour averaging helps layers: {} vs {}",
        f1("NichePCA-best"),
        f1("PCA-50")
    );

    // The map: every dissociated cell placed, scored against its true layer beside the prior.
    let m = &r.map;
    assert!(m.query_cells > 100 && m.reference_cells > 500, "{m:?}");
    let ours = m.get("layer", "accuracy", sof_tasks::mapping::Mapper::Ours).unwrap();
    let prior = m.get("layer", "accuracy", sof_tasks::mapping::Mapper::Prior).unwrap();
    assert!((0.0..=1.0).contains(&ours) && (0.0..=1.0).contains(&prior), "{m:?}");
    assert!(m.scores["location_error_median_um"].is_finite(), "{m:?}");
    // The reports are what the CLI writes: they survive JSON.
    let back: sof_tasks::probe::ProbeReport = serde_json::from_str(&serde_json::to_string(&r.probe).unwrap()).unwrap();
    assert_eq!(back.results.len(), r.probe.results.len());
}
