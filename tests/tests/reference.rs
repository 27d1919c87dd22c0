//! The unsplit model against an independent implementation: candle-transformers' own quantized
//! llama on the same GGUF.
//!
//! The two share candle's kernels but not the model code (loading, attention, masking, GQA, RoPE
//! tables, KV caches, the head), so agreement checks our model code. With `dense_prefill` off and
//! `reference_attention` on, both run the same Q4_1×Q8_1 kernels and the same attention products
//! and must agree exactly. With the defaults, our prefill uses the exact f32 dequantization of the
//! Q4_1 weights instead of a kernel that rounds the activations to 8 bits, and decode steps take our
//! own attention (its sums in another order), so the agreement is bounded instead; the last test
//! measures what our attention changes in a decode-time perplexity.

use std::fs::File;

use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use split_core::model::{LoadOptions, SplitModel};
use split_core::pipeline::{Forward, Monolithic};
use split_core::tokenizer::Tokenizer;
use splitinfer_tests::default_model;

const PROMPTS: &[&str] = &[
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "<|im_start|>user\nWhat is the boiling point of water?<|im_end|>\n<|im_start|>assistant\n",
];

fn reference_model(path: &std::path::Path) -> ModelWeights {
    let mut f = File::open(path).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut f).unwrap();
    ModelWeights::from_gguf(content, &mut f, &Device::Cpu).unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn argmax(v: &[f32]) -> u32 {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    v.iter().position(|&x| x == max).unwrap() as u32
}

/// Greedy-decodes with both models, asserting identical tokens; returns the worst relative logit
/// difference (max |a − b| over the reference's max |logit|) at prefill and at decode steps.
fn compare(ours: &SplitModel, tok: &Tokenizer, path: &std::path::Path, prompt: &str, steps: usize) -> (f32, f32) {
    let ids = tok.encode(prompt).unwrap();
    let mut reference = reference_model(path);
    let mut mono = Monolithic::new(ours);
    let rel = |want: &[f32], got: &[f32]| max_abs_diff(want, got) / want.iter().fold(0f32, |m, x| m.max(x.abs()));

    let input = Tensor::new(ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let mut want = reference.forward(&input, 0).unwrap().squeeze(0).unwrap().to_vec1::<f32>().unwrap();
    let mut got = mono.forward(&ids).unwrap().to_vec1::<f32>().unwrap();
    let prefill = rel(&want, &got);
    let mut decode = 0f32;
    let mut tokens = Vec::new();
    for step in 0..steps {
        let (a, b) = (argmax(&want), argmax(&got));
        tokens.push(a);
        assert_eq!(a, b, "{prompt:?}: greedy tokens diverge at step {step} after {tokens:?}");
        let x = Tensor::new(&[a], &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        want = reference.forward(&x, ids.len() + step).unwrap().squeeze(0).unwrap().to_vec1::<f32>().unwrap();
        got = mono.forward(&[b]).unwrap().to_vec1::<f32>().unwrap();
        decode = decode.max(rel(&want, &got));
    }
    eprintln!("{prompt:?} -> {:?}", tok.decode(&tokens).unwrap());
    (prefill, decode)
}

#[test]
fn quantized_path_agrees_with_candle_transformers_quantized_llama() {
    let path = default_model();
    let ours = SplitModel::load_with(&path, LoadOptions { dense_prefill: false, reference_attention: true }).unwrap();
    let tok = Tokenizer::from_gguf_file(&path).unwrap();
    let (mut worst_prefill, mut worst_decode) = (0f32, 0f32);
    // A long prompt too: past 256 cached positions gemm switches kernels for decode's q·kᵀ, and
    // the bits must stay candle's there as well.
    let long = "The river rose in the night and the town woke to water in its streets. ".repeat(20);
    for prompt in PROMPTS.iter().copied().chain([long.as_str()]) {
        let (p, d) = compare(&ours, &tok, &path, prompt, 32);
        worst_prefill = worst_prefill.max(p);
        worst_decode = worst_decode.max(d);
    }
    eprintln!("worst relative logit difference: prefill {worst_prefill:.2e}, decode {worst_decode:.2e}");
    // Same weights, same kernels, same matmul shapes (see `repeat_kv` in split-core): the only
    // tolerance that holds in general for the Q4_1 path is none, because its 8-bit activation
    // rounding turns any one-ulp difference into a percent-level one (model/layer.rs). So the
    // two must agree exactly, at prefill and at every decode step.
    assert_eq!(worst_prefill, 0.0, "prefill logits differ by {worst_prefill:.2e} of their range");
    assert_eq!(worst_decode, 0.0, "decode logits differ by {worst_decode:.2e} of their range");
}

#[test]
fn dense_prefill_stays_within_activation_rounding_of_the_quantized_kernel() {
    let path = default_model();
    let ours = SplitModel::load(&path).unwrap();
    let tok = Tokenizer::from_gguf_file(&path).unwrap();
    // The reference's Q4_1 kernel rounds activations to 8 bits per block of 32 (relative error up
    // to 1/254 per element); through 30 layers that moves logits by about 1% of their range. 5%
    // bounds it while a modelling error (tens of percent) still fails. A near-tie can flip a later
    // greedy token, so tokens are compared only for a prompt with a clear answer.
    let (prefill, decode) = compare(&ours, &tok, &path, PROMPTS[0], 4);
    eprintln!("dense prefill vs quantized reference: prefill {prefill:.2e}, decode {decode:.2e}");
    assert!(prefill < 0.05 && decode < 0.05, "{prefill} {decode}");
}

#[test]
fn our_decode_attention_stays_within_activation_rounding_of_the_reference() {
    let path = default_model();
    let ours = SplitModel::load_with(&path, LoadOptions { dense_prefill: false, reference_attention: false }).unwrap();
    let tok = Tokenizer::from_gguf_file(&path).unwrap();
    // Prefill does not take the decode attention: it stays exact. Decode steps differ only by
    // the order of f32 sums, which the 8-bit activation rounding of the Q4_1 kernel can grow to
    // about 1% of the logits' range (see the dense prefill test above for the same bound).
    let long = "The river rose in the night and the town woke to water in its streets. ".repeat(20);
    let (mut worst_prefill, mut worst_decode) = (0f32, 0f32);
    for prompt in [PROMPTS[0], long.as_str()] {
        let (p, d) = compare(&ours, &tok, &path, prompt, 4);
        worst_prefill = worst_prefill.max(p);
        worst_decode = worst_decode.max(d);
    }
    eprintln!("our decode attention vs the reference: prefill {worst_prefill:.2e}, decode {worst_decode:.2e}");
    assert_eq!(worst_prefill, 0.0, "prefill logits differ by {worst_prefill:.2e} of their range");
    assert!(worst_decode < 0.05, "decode logits differ by {worst_decode:.2e} of their range");
}

/// Perplexity of `tokens` scored one decode step at a time (each token a one-row forward on the
/// cache of all before it), so every score goes through the decode attention.
fn decode_perplexity(model: &SplitModel, tokens: &[u32]) -> f64 {
    let mut mono = Monolithic::new(model);
    let mut nll = 0f64;
    for (i, pair) in tokens.windows(2).enumerate() {
        let logits = mono.forward(&pair[..1]).unwrap().to_vec1::<f32>().unwrap();
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let log_sum = logits.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln() + max;
        nll += log_sum - logits[pair[1] as usize] as f64;
        if (i + 1) % 128 == 0 {
            eprintln!("decode perplexity: {} of {} tokens", i + 1, tokens.len() - 1);
        }
    }
    (nll / (tokens.len() - 1) as f64).exp()
}

#[test]
fn our_decode_attention_leaves_decode_time_perplexity_on_news_within_a_tenth_of_a_percent() {
    // The bound for every speed change (#18): perplexity within 0.1%. The usual
    // perplexity runs on prefill windows, which this change does not touch; here every one of
    // the first 512 news tokens is scored by a decode step, with each attention.
    let path = default_model();
    let news = std::fs::read_to_string(splitinfer_tests::default_eval_text()).unwrap();
    let tok = Tokenizer::from_gguf_file(&path).unwrap();
    let tokens: Vec<u32> = tok.encode(&news).unwrap().into_iter().take(512).collect();
    let fast = decode_perplexity(&SplitModel::load(&path).unwrap(), &tokens);
    let reference = decode_perplexity(&SplitModel::load_with(&path, LoadOptions { dense_prefill: true, reference_attention: true }).unwrap(), &tokens);
    let change = (fast - reference) / reference;
    eprintln!("decode-time perplexity of the first 512 news tokens: ours {fast:.4}, reference attention {reference:.4} ({:+.4}%)", change * 100.0);
    assert!(change.abs() < 1e-3, "ours {fast} vs reference {reference}: {:+.4}%", change * 100.0);
}
