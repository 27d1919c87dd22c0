//! The split model on the real default model (SmolLM2-135M-Instruct Q4_1).

use std::sync::OnceLock;

use split_core::boundary::CleanWire;
use split_core::model::SplitModel;
use split_core::pipeline::{Forward, InProcessSplit, Monolithic};
use split_core::tokenizer::Tokenizer;
use split_core::wire::WireDType;
use splitinfer_tests::default_model;

fn model() -> &'static (SplitModel, Tokenizer) {
    static M: OnceLock<(SplitModel, Tokenizer)> = OnceLock::new();
    M.get_or_init(|| {
        let path = default_model();
        (SplitModel::load(&path).unwrap(), Tokenizer::from_gguf_file(&path).unwrap())
    })
}

const LONG_PROMPT: &str = "The Fulton County Grand Jury said Friday an investigation of Atlanta's recent \
primary election produced no evidence that any irregularities took place. The jury further said in \
term-end presentments that the City Executive Committee, which had over-all charge of the election, \
deserves the praise and thanks of the City of Atlanta for the manner in which";

/// Greedy-decodes `steps` tokens after `prompt`, returning the logits seen at every step.
fn logits_trace(f: &mut dyn Forward, prompt: &[u32], steps: usize) -> Vec<Vec<f32>> {
    let mut out = Vec::new();
    let mut logits = f.forward(prompt).unwrap().to_vec1::<f32>().unwrap();
    for _ in 0..steps {
        let next = argmax(&logits);
        out.push(logits);
        logits = f.forward(&[next]).unwrap().to_vec1::<f32>().unwrap();
    }
    out.push(logits);
    out
}

fn argmax(v: &[f32]) -> u32 {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    v.iter().position(|&x| x == max).unwrap() as u32
}

#[test]
fn split_logits_equal_monolithic_bit_for_bit_at_every_k() {
    let (model, tok) = model();
    let prompt = tok.encode(LONG_PROMPT).unwrap();
    assert!(prompt.len() >= 64, "prompt has only {} tokens", prompt.len());
    let steps = 16;
    let reference = logits_trace(&mut Monolithic::new(model), &prompt, steps);
    let l = model.n_layers();
    for k in [0, 1, l / 2, l - 1, l] {
        let split = model.split_point(k).unwrap();
        let mut split_run = InProcessSplit::new(model, split, Box::new(CleanWire { dtype: WireDType::F32 }));
        let trace = logits_trace(&mut split_run, &prompt, steps);
        assert_eq!(trace.len(), steps + 1);
        for (step, (a, b)) in reference.iter().zip(&trace).enumerate() {
            assert!(a == b, "k={k}: logits differ at step {step}");
        }
    }
}

#[test]
fn a_lossy_boundary_is_detected_by_the_same_comparison() {
    // The comparison above must be able to fail: f16 on the wire changes the logits.
    let (model, tok) = model();
    let prompt = tok.encode(LONG_PROMPT).unwrap();
    let reference = logits_trace(&mut Monolithic::new(model), &prompt, 2);
    let split = model.split_point(model.n_layers() / 2).unwrap();
    let mut f16 = InProcessSplit::new(model, split, Box::new(CleanWire { dtype: WireDType::F16 }));
    let trace = logits_trace(&mut f16, &prompt, 2);
    assert_ne!(reference[0], trace[0]);
}

#[test]
fn greedy_generation_knows_the_capital_of_france() {
    let (model, tok) = model();
    let prompt = tok.encode("The capital of France is").unwrap();
    let mut f = Monolithic::new(model);
    let trace = logits_trace(&mut f, &prompt, 4);
    let ids: Vec<u32> = trace.iter().map(|l| argmax(l)).collect();
    let text = tok.decode(&ids).unwrap();
    assert!(text.trim_start().starts_with("Paris"), "continued with {text:?}");
}

#[test]
fn split_point_outside_the_model_is_refused() {
    let (model, _) = model();
    let e = model.split_point(31).unwrap_err().to_string();
    assert_eq!(e, "split point 31 is outside 0..=30");
}

#[test]
fn hidden_state_of_the_wrong_width_is_refused() {
    let (model, _) = model();
    let bad = candle_core::Tensor::zeros((1, 3, 100), candle_core::DType::F32, model.device()).unwrap();
    let mut cache = split_core::model::KvCache::new(5..30);
    let e = model.run_layers(&bad, &mut cache).unwrap_err().to_string();
    assert_eq!(e, "hidden state has shape [1, 3, 100], expected [1, seq, 576]");
    assert_eq!(cache.position(), 0, "a refused step must not advance the cache");
}

#[test]
fn token_outside_the_vocabulary_is_refused() {
    let (model, _) = model();
    let e = model.embed(&[1, 49_152]).unwrap_err().to_string();
    assert_eq!(e, "token id 49152 is outside the vocabulary of 49152 tokens");
}
