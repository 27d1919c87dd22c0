//! Aggregate decode throughput of the edge's share of the model, batched against one session
//! at a time, for 1, 4 and 16 sessions (issue 8). Not a test: it prints numbers.
//!
//! ```sh
//! cargo run --release -p split-core --example batch_bench            # k = 0: all layers + head
//! cargo run --release -p split-core --example batch_bench -- --k 15 --steps 48 --parts
//! CANDLE_NUM_THREADS=1 RAYON_NUM_THREADS=1 cargo run --release -p split-core --example batch_bench
//! ```
//!
//! Each session is prefilled alone, then decodes greedily; "one by one" runs `run_layers` +
//! `head_last` per session per step (what the worker did before batching), "batched" runs
//! `run_layers_batch` + `head_last_batch` once per step for all sessions. Both include the
//! argmax. The `--steps` steps per session are timed in `--rounds` rounds that alternate between
//! the two ways, so a burst of other load on the machine hits both; the table gives the best and
//! the median round, and the CPU time per token, which such load does not stretch. `--parts`
//! also times the layers and the head separately. `--csv FILE` appends one row per session
//! count, `k,sessions,step_ms,cpu_ms_per_token`: the batched step's wall time in the median
//! round (what every session of the batch waits per token) and its CPU time per token (the
//! decision problem's edge costs, docs/decision.md).
//!
//! Thread counts: candle's quantized kernels use its own pool (`CANDLE_NUM_THREADS`), its f32
//! matmuls rayon (`RAYON_NUM_THREADS`); without the latter set, candle re-reads /proc/cpuinfo
//! for every f32 matmul (two per layer and session here) to count cores.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use candle_core::Tensor;
use split_core::model::{KvCache, SplitModel};
use split_core::tokenizer::Tokenizer;

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

struct Args {
    k: usize,
    steps: usize,
    rounds: usize,
    sessions: Vec<usize>,
    parts: bool,
    model: Option<std::path::PathBuf>,
    csv: Option<std::path::PathBuf>,
}

fn parse_args() -> Result<Args> {
    let mut a = Args { k: 0, steps: 32, rounds: 4, sessions: vec![1, 4, 16], parts: false, model: None, csv: None };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--k" => a.k = value()?.parse()?,
            "--steps" => a.steps = value()?.parse()?,
            "--rounds" => a.rounds = value()?.parse::<usize>()?.max(1),
            "--sessions" => a.sessions = value()?.split(',').map(str::parse).collect::<Result<_, _>>()?,
            "--model" => a.model = Some(value()?.into()),
            "--parts" => a.parts = true,
            "--csv" => a.csv = Some(value()?.into()),
            other => anyhow::bail!("unknown flag {other}; flags: --k K --steps N --rounds R --sessions 1,4,16 --model PATH --parts --csv FILE"),
        }
    }
    Ok(a)
}

struct Session {
    cache: KvCache,
    next: u32,
}

/// Time spent in layers and in the head (with argmax), over all timed steps, and the CPU time
/// of every thread of the process meanwhile.
#[derive(Default, Clone, Copy)]
struct Timing {
    layers: Duration,
    head: Duration,
    cpu: Duration,
}

/// On-CPU time of all the process's threads so far, from the scheduler (`/proc/self/task/*/schedstat`,
/// nanoseconds). Other load on the machine stretches wall time but not this; a spinning thread
/// pool inflates it.
fn process_cpu_time() -> Duration {
    let mut ns = 0u64;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
                ns += s.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0);
            }
        }
    }
    Duration::from_nanos(ns)
}

impl Timing {
    fn total(&self) -> Duration {
        self.layers + self.head
    }
}

fn argmax(t: &Tensor) -> Result<u32> {
    let v = t.to_vec1::<f32>()?;
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    Ok(v.iter().position(|&x| x == max).unwrap_or(0) as u32)
}

/// Sessions at different positions: prompts of different lengths, prefilled one at a time.
/// The edge's input is the embedding run through the UE's layers `0..k`, as in a real split.
fn start(model: &SplitModel, tok: &Tokenizer, k: usize, n: usize) -> Result<(Vec<Session>, Vec<KvCache>)> {
    let l = model.n_layers();
    let mut sessions = Vec::new();
    let mut ue = Vec::new();
    for i in 0..n {
        let prompt = tok.encode(&PROMPTS[i % PROMPTS.len()].repeat(1 + i / PROMPTS.len()))?;
        let mut ue_cache = KvCache::new(0..k);
        let mut cache = KvCache::new(k..l);
        let x = model.run_layers(&model.embed(&prompt)?, &mut ue_cache)?;
        let h = model.run_layers(&x, &mut cache)?;
        let next = argmax(&model.head_last(&h)?)?;
        sessions.push(Session { cache, next });
        ue.push(ue_cache);
    }
    Ok((sessions, ue))
}

/// The edge's inputs for the next step (the UE's work is not timed).
fn inputs(model: &SplitModel, sessions: &[Session], ue: &mut [KvCache]) -> Result<Vec<Tensor>> {
    sessions
        .iter()
        .zip(ue.iter_mut())
        .map(|(s, c)| Ok(model.run_layers(&model.embed(&[s.next])?, c)?))
        .collect()
}

fn one_by_one(model: &SplitModel, sessions: &mut [Session], x: &[Tensor], t: &mut Timing) -> Result<()> {
    for (s, x) in sessions.iter_mut().zip(x) {
        let t0 = Instant::now();
        let h = model.run_layers(x, &mut s.cache)?;
        let t1 = Instant::now();
        s.next = argmax(&model.head_last(&h)?)?;
        t.layers += t1 - t0;
        t.head += t1.elapsed();
    }
    Ok(())
}

fn batched(model: &SplitModel, sessions: &mut [Session], x: &[Tensor], t: &mut Timing) -> Result<()> {
    let t0 = Instant::now();
    let mut caches: Vec<&mut KvCache> = sessions.iter_mut().map(|s| &mut s.cache).collect();
    let h = model.run_layers_batch(x, &mut caches)?;
    let t1 = Instant::now();
    let logits = model.head_last_batch(&h)?;
    for (s, l) in sessions.iter_mut().zip(&logits) {
        s.next = argmax(l)?;
    }
    t.layers += t1 - t0;
    t.head += t1.elapsed();
    Ok(())
}

type StepFn = fn(&SplitModel, &mut [Session], &[Tensor], &mut Timing) -> Result<()>;

/// `n` sessions decoding one way: started once, then timed in rounds of `steps` steps.
struct Run {
    sessions: Vec<Session>,
    ue: Vec<KvCache>,
    step: StepFn,
    /// Per round.
    rounds: Vec<Timing>,
}

impl Run {
    fn new(model: &SplitModel, tok: &Tokenizer, k: usize, n: usize, step: StepFn) -> Result<Self> {
        let (sessions, ue) = start(model, tok, k, n)?;
        let mut run = Self { sessions, ue, step, rounds: Vec::new() };
        // Warm-up: the first steps allocate the thread pool's scratch and grow the caches.
        run.round(model, 2)?;
        run.rounds.clear();
        Ok(run)
    }

    fn round(&mut self, model: &SplitModel, steps: usize) -> Result<()> {
        let mut timing = Timing::default();
        for _ in 0..steps {
            let x = inputs(model, &self.sessions, &mut self.ue)?;
            let cpu = process_cpu_time();
            (self.step)(model, &mut self.sessions, &x, &mut timing)?;
            timing.cpu += process_cpu_time().saturating_sub(cpu);
        }
        self.rounds.push(timing);
        Ok(())
    }

    /// The round with the least total time (the least disturbed by other work on the machine)
    /// and the median round.
    fn best_and_median(&self) -> (Timing, Timing) {
        let mut r = self.rounds.clone();
        r.sort_by_key(Timing::total);
        (r[0], r[r.len() / 2])
    }
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let path = match &args.model {
        Some(p) => p.clone(),
        None => split_core::assets::ensure_model(&split_core::assets::SMOLLM2_135M, &mut |m| eprintln!("fetch: {m}"))?,
    };
    let model = SplitModel::load(&path)?;
    let tok = Tokenizer::from_gguf_file(&path)?;
    let l = model.n_layers();
    anyhow::ensure!(args.k <= l, "--k {} is outside 0..={l}", args.k);
    let threads = std::env::var("CANDLE_NUM_THREADS").or_else(|_| std::env::var("RAYON_NUM_THREADS")).unwrap_or_else(|_| "all".into());
    println!(
        "model {}; edge runs layers {}..{l} + head; {} timed steps per session; candle threads: {threads} of {} cores",
        path.display(),
        args.k,
        args.steps,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let steps = args.steps.div_ceil(args.rounds);
    let tps = |n: usize, t: Timing| (n * steps) as f64 / t.total().as_secs_f64();
    let mut rows = Vec::new();
    for &n in &args.sessions {
        // The two ways alternate round by round, so a burst of other load hits both alike.
        let mut alone = Run::new(&model, &tok, args.k, n, one_by_one)?;
        let mut batch = Run::new(&model, &tok, args.k, n, batched)?;
        for _ in 0..args.rounds {
            alone.round(&model, steps)?;
            batch.round(&model, steps)?;
        }
        rows.push((n, alone.best_and_median(), batch.best_and_median()));
    }
    let single = rows.iter().find(|r| r.0 == 1).map(|r| (tps(1, r.1.0), tps(1, r.1.1)));
    println!("{} rounds of {steps} steps per session per way; best round (median round)", args.rounds);
    println!();
    println!("| sessions | one by one tok/s | batched tok/s | batched / one by one | batched / 1 session alone |");
    println!("|---:|---:|---:|---:|---:|");
    for (n, (a_best, a_med), (b_best, b_med)) in &rows {
        let (a, am, b, bm) = (tps(*n, *a_best), tps(*n, *a_med), tps(*n, *b_best), tps(*n, *b_med));
        let vs_single = single.map_or("-".to_string(), |(s, sm)| format!("{:.2}x ({:.2}x)", b / s, bm / sm));
        println!("| {n} | {a:.1} ({am:.1}) | {b:.1} ({bm:.1}) | {:.2}x ({:.2}x) | {vs_single} |", b / a, bm / am);
    }
    println!();
    println!("CPU time per token (ms, all threads, median round): not stretched by other load on the machine");
    println!("| sessions | one by one | batched | one by one / batched |");
    println!("|---:|---:|---:|---:|");
    for (n, (_, a), (_, b)) in &rows {
        let per = |d: Duration| d.as_secs_f64() * 1e3 / (n * steps) as f64;
        println!("| {n} | {:.2} | {:.2} | {:.2}x |", per(a.cpu), per(b.cpu), a.cpu.as_secs_f64() / b.cpu.as_secs_f64());
    }
    if let Some(csv) = &args.csv {
        use std::io::Write;
        let new = !csv.exists();
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(csv).with_context(|| format!("cannot write {}", csv.display()))?;
        if new {
            writeln!(f, "k,sessions,step_ms,cpu_ms_per_token")?;
        }
        for (n, _, (_, b)) in &rows {
            writeln!(f, "{},{n},{:.4},{:.4}", args.k, b.total().as_secs_f64() * 1e3 / steps as f64, b.cpu.as_secs_f64() * 1e3 / (n * steps) as f64)?;
        }
    }
    if args.parts {
        println!();
        println!("per token (ms) in the best round: layers and head (with argmax)");
        println!("| sessions | layers one by one | head one by one | layers batched | head batched |");
        println!("|---:|---:|---:|---:|---:|");
        for (n, (a, _), (b, _)) in rows {
            let per = |d: Duration| d.as_secs_f64() * 1e3 / (n * steps) as f64;
            println!("| {n} | {:.2} | {:.2} | {:.2} | {:.2} |", per(a.layers), per(a.head), per(b.layers), per(b.head));
        }
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!();
    println!("load average at the end: {}", load.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
    Ok(())
}
