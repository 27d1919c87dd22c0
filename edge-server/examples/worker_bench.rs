//! Aggregate decode throughput of the edge's model worker with 1, 4 and 16 concurrent sessions,
//! batching (the default) against one job per round (`Worker::spawn_with_batch(.., 1)`, the
//! edge before batching). Not a test: it prints numbers. The model-level counterpart, with a
//! per-part breakdown, is `cargo run --release -p split-core --example batch_bench`.
//!
//! ```sh
//! cargo run --release -p edge-server --example worker_bench                 # k = 0, 32 tokens
//! cargo run --release -p edge-server --example worker_bench -- --k 15 --steps 48
//! ```
//!
//! Each session is a task that opens, prefills its prompt and then decodes greedily, sending a
//! step, awaiting its token and sending the next, as the gRPC service does; its UE (layers
//! `0..k`) runs in the task. The clock starts when every session has its first token.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use edge_server::worker::{OpenParams, StepInput, Worker};
use split_core::bundle::LoadedModel;
use split_core::model::KvCache;
use split_core::sampling::SamplingConfig;
use split_core::wire::{CandleWire, WireDType, WireTensor};

const PROMPTS: &[&str] = &[
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "<|im_start|>user\nName three primary colors.<|im_end|>\n<|im_start|>assistant\n",
    "The weather today is",
    "def fibonacci(n):",
    "In 1969, the first humans",
    "My favourite recipe for bread starts with",
    "The three laws of thermodynamics are",
];

/// Per session: decode time after the barrier, and the batch size of every decode step.
async fn session(
    worker: Worker,
    model: Arc<LoadedModel>,
    i: usize,
    k: usize,
    steps: usize,
    start: Arc<tokio::sync::Barrier>,
) -> Result<(Instant, Vec<usize>)> {
    let prompt = model.tokenizer.encode(&PROMPTS[i % PROMPTS.len()].repeat(1 + i / PROMPTS.len()))?;
    let opened = worker
        .open(OpenParams {
            split: model.model.split_point(k)?,
            epoch: split_core::split::Epoch::ZERO,
            sampling: SamplingConfig::GREEDY,
            max_new_tokens: steps + 1,
            ignore_eos: false,
            prompt_tokens: prompt.len(),
            client: "worker_bench".into(),
            resume: None,
            resume_secret: String::new(),
            link: Default::default(),
            calibration_sha256: String::new(),
            scoring: false,
        })
        .await?;
    let mut ue = KvCache::new(0..k);
    let mut input = prompt;
    let mut batches = Vec::new();
    for step in 0..=steps {
        if step == 1 {
            start.wait().await;
        }
        let position = ue.position();
        let x = model.model.run_layers(&model.model.embed(&input)?, &mut ue)?;
        let t = worker
            .step(StepInput {
                session: opened.id.clone(),
                position,
                split: split_core::split::Split::new(k, 0),
                hidden: WireTensor::from_tensor(&x, WireDType::F32)?,
                erased: Vec::new(),
                enqueued: Instant::now(),
            })
            .await?
            .context("the whole prompt goes in one step")?;
        if step > 0 {
            batches.push(t.batch);
        }
        // Keep decoding past an end-of-sequence token: the bench wants `steps` steps.
        input = vec![t.id];
    }
    worker.close(opened.id);
    Ok((Instant::now(), batches))
}

/// Tokens per second over all sessions, and the mean batch size of their decode steps.
async fn run(model: &Arc<LoadedModel>, n: usize, k: usize, steps: usize, max_batch: usize) -> Result<(f64, f64)> {
    let worker = Worker::spawn_with_batch(model.clone(), n, max_batch)?;
    let start = Arc::new(tokio::sync::Barrier::new(n + 1));
    let tasks: Vec<_> = (0..n)
        .map(|i| tokio::spawn(session(worker.clone(), model.clone(), i, k, steps, start.clone())))
        .collect();
    start.wait().await;
    let t0 = Instant::now();
    let mut end = t0;
    let mut batches = Vec::new();
    for t in tasks {
        let (done, b) = t.await??;
        end = end.max(done);
        batches.extend(b);
    }
    let elapsed: Duration = end - t0;
    let mean_batch = batches.iter().sum::<usize>() as f64 / batches.len().max(1) as f64;
    Ok(((n * steps) as f64 / elapsed.as_secs_f64(), mean_batch))
}

fn main() -> Result<()> {
    let (mut k, mut steps) = (0usize, 32usize);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--k" => k = args.next().context("--k needs a value")?.parse()?,
            "--steps" => steps = args.next().context("--steps needs a value")?.parse()?,
            other => anyhow::bail!("unknown flag {other}; flags: --k K --steps N"),
        }
    }
    let path = split_core::assets::ensure_model(&split_core::assets::SMOLLM2_135M, &mut |m| eprintln!("fetch: {m}"))?;
    let model = Arc::new(LoadedModel::load(&path)?);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    println!("edge worker, layers {k}..{} + head, {steps} decode steps per session", model.model.n_layers());
    println!();
    println!("| sessions | one job per round tok/s | batched tok/s (mean batch) | batched / one job per round | batched / 1 session |");
    println!("|---:|---:|---:|---:|---:|");
    let mut single = None;
    for n in [1, 4, 16] {
        let (alone, _) = rt.block_on(run(&model, n, k, steps, 1))?;
        let (batched, mean) = rt.block_on(run(&model, n, k, steps, edge_server::worker::MAX_DRAIN))?;
        let base = *single.get_or_insert(alone);
        println!("| {n} | {alone:.1} | {batched:.1} ({mean:.1}) | {:.2}x | {:.2}x |", batched / alone, batched / base);
    }
    Ok(())
}
