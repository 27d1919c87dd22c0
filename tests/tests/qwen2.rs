//! The second model family: Qwen2.5-Coder-0.5B-Instruct (qwen2 architecture: q/k/v biases,
//! NeoX-style RoPE, its own pre-tokenizer), through the same split API. Fetches ~490 MB on first
//! use.

use split_core::assets::QWEN25_CODER_05B;
use split_core::boundary::CleanWire;
use split_core::model::{Architecture, SplitModel};
use split_core::pipeline::{Forward, InProcessSplit, Monolithic};
use split_core::tokenizer::Tokenizer;
use split_core::wire::WireDType;
use splitinfer_tests::fetch_model;

fn argmax(v: &[f32]) -> u32 {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    v.iter().position(|&x| x == max).unwrap() as u32
}

fn greedy(f: &mut dyn Forward, prompt: &[u32], steps: usize) -> (Vec<u32>, Vec<Vec<f32>>) {
    let (mut ids, mut all) = (Vec::new(), Vec::new());
    let mut logits = f.forward(prompt).unwrap().to_vec1::<f32>().unwrap();
    for _ in 0..steps {
        let next = argmax(&logits);
        ids.push(next);
        all.push(logits);
        logits = f.forward(&[next]).unwrap().to_vec1::<f32>().unwrap();
    }
    (ids, all)
}

#[test]
fn qwen2_answers_and_splits_exactly() {
    let path = fetch_model(&QWEN25_CODER_05B);
    let model = SplitModel::load(&path).unwrap();
    let tok = Tokenizer::from_gguf_file(&path).unwrap();
    assert_eq!(model.config().architecture, Architecture::Qwen2);
    assert_eq!(model.n_layers(), 24);

    let text = "def add(a, b):\n    return a + b  # 12345 naïve ✓";
    assert_eq!(tok.decode(&tok.encode(text).unwrap()).unwrap(), text);

    let prompt = tok
        .encode("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
        .unwrap();
    let (ids, reference) = greedy(&mut Monolithic::new(&model), &prompt, 8);
    let answer = tok.decode(&ids).unwrap();
    assert!(answer.contains("Paris"), "answered {answer:?}");

    for k in [0, 1, 12, 23, 24] {
        let split = model.split_point(k).unwrap();
        let mut run = InProcessSplit::new(&model, split, Box::new(CleanWire { dtype: WireDType::F32 }));
        let (split_ids, logits) = greedy(&mut run, &prompt, 8);
        assert_eq!(split_ids, ids, "k={k}");
        assert!(logits == reference, "k={k}: logits differ from the unsplit run");
    }
}
