//! Batched decode (`run_layers_batch`, `head_last_batch`) against stepping each session alone,
//! on the real default model: the logits must agree bit for bit; and the edge's worker batching
//! concurrent sessions, against the monolithic model.

use std::time::Instant;

use candle_core::Tensor;
use edge_server::worker::{OpenParams, StepInput, Worker};
use split_core::model::{KvCache, SplitModel};
use split_core::sampling::SamplingConfig;
use split_core::wire::{CandleWire, WireDType, WireTensor};
use splitinfer_tests::{Testbed, generate_via, greedy_request, monolithic, shared_model};

const PROMPTS: &[&str] = &[
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "<|im_start|>user\nName three primary colors.<|im_end|>\n<|im_start|>assistant\n",
    "The weather today is",
    "def fibonacci(n):",
    "In 1969, the first humans",
];

/// One generation split at `k`: the UE's caches (layers `0..k`) and the edge's (`k..L`).
struct Session {
    ue: KvCache,
    edge: KvCache,
    next: u32,
    logits: Vec<Vec<f32>>,
}

impl Session {
    /// Prefills `prompt` one session at a time (prefill is never batched) and keeps its logits.
    fn start(model: &SplitModel, k: usize, prompt: &[u32]) -> Self {
        let l = model.n_layers();
        let mut s = Self { ue: KvCache::new(0..k), edge: KvCache::new(k..l), next: 0, logits: Vec::new() };
        let x = model.run_layers(&model.embed(prompt).unwrap(), &mut s.ue).unwrap();
        let h = model.run_layers(&x, &mut s.edge).unwrap();
        s.take(model.head_last(&h).unwrap());
        s
    }

    fn take(&mut self, logits: Tensor) {
        let logits = logits.to_vec1::<f32>().unwrap();
        self.next = argmax(&logits);
        self.logits.push(logits);
    }

    fn step_alone(&mut self, model: &SplitModel) {
        let x = model.run_layers(&model.embed(&[self.next]).unwrap(), &mut self.ue).unwrap();
        let h = model.run_layers(&x, &mut self.edge).unwrap();
        self.take(model.head_last(&h).unwrap());
    }
}

/// One decode step of `sessions` with the edge side batched, and the UE side too where every
/// session runs the same UE layers (a batch needs its caches to end at one layer).
fn step_batched(model: &SplitModel, sessions: &mut [&mut Session]) {
    let x: Vec<Tensor> = sessions.iter().map(|s| model.embed(&[s.next]).unwrap()).collect();
    let same_ue = sessions.windows(2).all(|w| w[0].ue.range() == w[1].ue.range());
    let mut ue: Vec<&mut KvCache> = Vec::new();
    let mut edge: Vec<&mut KvCache> = Vec::new();
    for s in sessions.iter_mut() {
        ue.push(&mut s.ue);
        edge.push(&mut s.edge);
    }
    let x = if same_ue {
        model.run_layers_batch(&x, &mut ue).unwrap()
    } else {
        x.iter().zip(ue).map(|(x, c)| model.run_layers(x, c).unwrap()).collect()
    };
    let h = model.run_layers_batch(&x, &mut edge).unwrap();
    for (s, logits) in sessions.iter_mut().zip(model.head_last_batch(&h).unwrap()) {
        s.take(logits);
    }
}

fn argmax(v: &[f32]) -> u32 {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    v.iter().position(|&x| x == max).unwrap() as u32
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// Runs `prompts` twice, session `i` split at `ks[i % ks.len()]`, once stepping each session
/// alone and once in batches whose membership changes every step (`in_batch(session, step)`), and
/// compares every step's logits.
fn check_batched_equals_alone(ks: &[usize], prompts: &[Vec<u32>], steps: usize, in_batch: impl Fn(usize, usize) -> bool) {
    let model = &shared_model().model;
    let start = |(i, p): (usize, &Vec<u32>)| Session::start(model, ks[i % ks.len()], p);
    let mut alone: Vec<Session> = prompts.iter().enumerate().map(start).collect();
    let mut batched: Vec<Session> = prompts.iter().enumerate().map(start).collect();
    let k = ks;
    let mut largest = 0;
    for step in 0..steps {
        for (i, s) in alone.iter_mut().enumerate() {
            if in_batch(i, step) {
                s.step_alone(model);
            }
        }
        let mut members: Vec<&mut Session> =
            batched.iter_mut().enumerate().filter(|(i, _)| in_batch(*i, step)).map(|(_, s)| s).collect();
        largest = largest.max(members.len());
        step_batched(model, &mut members);
    }
    assert!(largest > 1, "k={k:?}: no step batched more than one session");
    for (i, (a, b)) in alone.iter().zip(&batched).enumerate() {
        assert_eq!(a.logits.len(), b.logits.len(), "k={k:?} session {i}: step count");
        assert!(a.logits.len() > steps / 2, "k={k:?} session {i} took only {} steps", a.logits.len());
        for (step, (x, y)) in a.logits.iter().zip(&b.logits).enumerate() {
            assert!(same_bits(x, y), "k={k:?} session {i}: batched logits differ from stepping alone at step {step}");
        }
        assert_eq!((a.ue.position(), a.edge.position()), (b.ue.position(), b.edge.position()), "k={k:?} session {i}");
    }
}

fn prompts(n: usize) -> Vec<Vec<u32>> {
    let tok = &shared_model().tokenizer;
    (0..n)
        .map(|i| {
            // Repeat some prompts so that the sessions sit at many different positions.
            let text = PROMPTS[i % PROMPTS.len()].repeat(1 + i / PROMPTS.len());
            tok.encode(&text).unwrap()
        })
        .collect()
}

#[test]
fn batched_decode_equals_one_by_one_at_every_kind_of_split() {
    let l = shared_model().model.n_layers();
    let prompts = prompts(PROMPTS.len());
    // k = 0 gives the UE no layers and the edge all of them, k = L the reverse. Sessions sit out
    // some steps (never more than one in a row), so batch sizes and positions keep changing.
    for k in [0, 1, l / 2, l] {
        check_batched_equals_alone(&[k], &prompts, 18, |i, step| (i + step) % 4 != 0);
    }
}

#[test]
fn sessions_at_different_splits_share_a_pass_and_each_gets_its_own_bits() {
    // The edge's layers k..L of a session at k are a suffix of those of a session split lower:
    // each joins the pass at its own layer. k = L runs no edge layer and passes through.
    let l = shared_model().model.n_layers();
    let prompts = prompts(10);
    check_batched_equals_alone(&[0, 1, 7, l / 2, l - 1, l], &prompts, 14, |i, step| (i + step) % 5 != 0);
}

#[test]
fn a_batch_larger_than_the_kernel_row_tile_stays_exact() {
    // candle's quantized matmul works on tiles of 16 rows; rows in the second tile must not differ.
    let prompts = prompts(20);
    check_batched_equals_alone(&[9], &prompts, 16, |i, step| step >= i % 3);
}

#[test]
fn a_batch_of_caches_ending_at_different_layers_is_refused() {
    let model = &shared_model().model;
    let x = model.embed(&[1]).unwrap();
    let mut a = KvCache::new(0..15);
    let mut b = KvCache::new(0..30);
    let e = model.run_layers_batch(&[x.clone(), x.clone()], &mut [&mut a, &mut b]).unwrap_err().to_string();
    assert_eq!(
        e,
        "invalid argument: a batched step needs every cache to end at the same layer: session 0 runs layers 0..15 but session 1 runs 0..30"
    );
    assert_eq!((a.position(), b.position()), (0, 0), "a refused batch must not advance any cache");

    let two_rows = model.embed(&[1, 2]).unwrap();
    let mut c = KvCache::new(0..30);
    let e = model.run_layers_batch(&[x.clone(), two_rows], &mut [&mut b, &mut c]).unwrap_err().to_string();
    assert_eq!(e, "invalid argument: a batched step takes one row per session, session 1 has 2");
    let e = model.run_layers_batch(&[x], &mut [&mut b, &mut c]).unwrap_err().to_string();
    assert_eq!(e, "invalid argument: a batched step needs one cache per activation, got 1 activations and 2 caches");
    assert_eq!((b.position(), c.position()), (0, 0));
}

/// One greedy session driven straight through the worker, its UE (layers `0..k`) in the task:
/// the tokens with their log-probabilities, and the batch size of each decode step.
async fn worker_session(worker: Worker, prompt: &str, k: usize, new_tokens: usize) -> (Vec<(u32, f32)>, Vec<usize>) {
    let model = shared_model();
    let prompt = model.tokenizer.encode(prompt).unwrap();
    let opened = worker
        .open(OpenParams {
            split: model.model.split_point(k).unwrap(),
            epoch: split_core::split::Epoch::ZERO,
            sampling: SamplingConfig::GREEDY,
            max_new_tokens: new_tokens,
            ignore_eos: false,
            prompt_tokens: prompt.len(),
            client: "batching test".into(),
            resume: None,
            resume_secret: String::new(),
            link: Default::default(),
            calibration_sha256: String::new(),
            scoring: false,
        })
        .await
        .unwrap();
    let mut ue = KvCache::new(0..k);
    let (mut tokens, mut batches) = (Vec::new(), Vec::new());
    let mut input = prompt;
    while tokens.len() < new_tokens {
        let position = ue.position();
        let x = model.model.run_layers(&model.model.embed(&input).unwrap(), &mut ue).unwrap();
        let step = StepInput {
            session: opened.id.clone(),
            position,
            split: split_core::split::Split::new(k, 0),
            hidden: WireTensor::from_tensor(&x, WireDType::F32).unwrap(),
            erased: Vec::new(),
            enqueued: Instant::now(),
        };
        let t = worker.step(step).await.unwrap().expect("the whole prompt went in one step");
        if !tokens.is_empty() {
            batches.push(t.batch);
        }
        tokens.push((t.id, t.logprob));
        if t.eos {
            break;
        }
        input = vec![t.id];
    }
    worker.close(opened.id);
    (tokens, batches)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_batches_concurrent_sessions_and_each_gets_its_monolithic_tokens() {
    let worker = Worker::spawn(shared_model(), 16).unwrap();
    let k = 10;
    let n = 12;
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let worker = worker.clone();
            let prompt = PROMPTS[i % PROMPTS.len()].repeat(1 + i / PROMPTS.len());
            tokio::spawn(async move { (worker_session(worker, &prompt, k, n).await, prompt) })
        })
        .collect();
    let mut largest = 0;
    for task in tasks {
        let ((tokens, batches), prompt) = task.await.unwrap();
        assert_eq!(tokens, monolithic(&greedy_request(&prompt, 0, n)), "{prompt:?}");
        largest = largest.max(batches.into_iter().max().unwrap_or(0));
    }
    // Eight sessions step in lockstep, each waiting for its token; while the worker computes a
    // pass the others' steps queue up, so passes of several sessions must have happened.
    assert!(largest >= 2, "no decode step shared a pass (largest batch {largest})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sessions_at_one_split_through_the_edge_match_the_monolithic_model() {
    let bed = Testbed::start().await;
    let k = 15;
    let prompts: Vec<String> = (0..6).map(|i| PROMPTS[i].to_string()).collect();
    let tasks: Vec<_> = prompts
        .iter()
        .map(|p| {
            let url = bed.emulator_url.clone();
            let req = greedy_request(p, k, 12);
            tokio::spawn(async move { generate_via(&url, req).await.unwrap() })
        })
        .collect();
    for (task, prompt) in tasks.into_iter().zip(&prompts) {
        let report = task.await.unwrap();
        let got: Vec<(u32, f32)> = report.tokens.iter().map(|t| (t.id, t.logprob)).collect();
        assert_eq!(got, monolithic(&greedy_request(prompt, 0, 12)), "{prompt:?}");
    }
    bed.shutdown().await;
}
