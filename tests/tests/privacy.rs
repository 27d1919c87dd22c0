//! The privacy table's attacks on the real model: at k = 0 the boundary state is the input
//! embedding, so both attacks must name (almost) every token; deeper, the nearest embedding
//! stops working and the probe, fitted on other text, must still beat it.

use std::path::PathBuf;

use split_core::calibration::Calibration;
use split_core::privacy;
use splitinfer_tests::shared_model;

#[test]
fn both_attacks_recover_the_input_at_k0_and_the_probe_beats_the_nearest_embedding_deeper() {
    let model = shared_model();
    let calibration_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../calibration/smollm2-135m.json");
    let calibration = Calibration::load(&calibration_path, Some(&model.sha256)).unwrap();
    // As `splitinfer privacy` does, on less: fitted on the calibration text, scored on news.
    let (fit_text, _) = split_core::assets::calibration_text(&mut |_| {}).unwrap();
    let mut fit = model.tokenizer.encode(&fit_text).unwrap();
    fit.truncate(2048);
    let news = std::fs::read_to_string(splitinfer_tests::default_eval_text()).unwrap();
    let mut scored = model.tokenizer.encode(&news).unwrap();
    scored.truncate(256);
    let probes = privacy::fit_probes(&model.model, &calibration, &fit, 512, &mut |_, _| {}).unwrap();
    assert_eq!(probes.len(), model.model.n_layers() + 1);
    let unit = privacy::unit_embeddings(&model.model).unwrap();
    let hits = privacy::attack_window(&model.model, &calibration, &probes, &unit, &scored).unwrap();
    let n = scored.len();
    eprintln!("{n} tokens; (nearest, probe) hits per k: {hits:?}");
    assert!(hits[0].0 * 100 >= n * 99, "nearest embedding at k = 0: {} of {n}", hits[0].0);
    assert!(hits[0].1 * 100 >= n * 90, "probe at k = 0: {} of {n}", hits[0].1);
    let deep: usize = hits[10..].iter().map(|h| h.0).sum();
    let probe_deep: usize = hits[10..].iter().map(|h| h.1).sum();
    assert!(probe_deep > deep, "the probe ({probe_deep}) should beat the nearest embedding ({deep}) at k ≥ 10");
}

#[test]
fn a_calibration_of_another_width_is_refused() {
    let model = shared_model();
    let calibration_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../calibration/smollm2-135m.json");
    let mut calibration = Calibration::load(&calibration_path, Some(&model.sha256)).unwrap();
    calibration.boundaries.pop();
    let err = privacy::fit_probes(&model.model, &calibration, &[1, 2, 3], 64, &mut |_, _| {}).unwrap_err();
    assert!(err.to_string().contains("boundaries"), "{err}");
}
