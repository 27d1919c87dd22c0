//! One UE's long prompt does not starve the others, nor they it: with the real edge binary, a
//! 4,096-row prefill arrives while another UE decodes; that UE's p95 per-token latency stays
//! within 3× its solo figure, the prefill gets at least 40% of the edge's time meanwhile (its
//! share is the default 0.5), and the edge's peak memory grows by the prompt's caches, not by a
//! 4,096² attention (docs/survive.md, "One long prompt cannot starve the others").
//!
//! This machine is a VM that now and then runs the same work several times slower for tens of
//! seconds. Such a trial says nothing about the edge's scheduling, so each trial also compares the
//! edge's own compute for the other UE's step, which the scheduling does not touch, during the
//! window and alone. A trial where that moved by more than [`MACHINE_SLOWDOWN`] either way is reported and
//! measured again, on a fresh edge, up to [`TRIALS`] times; the first trial on a steady machine is
//! judged, and a miss there fails. If the machine never holds still, the test fails and says so.
//!
//! The UE and the edge share this machine's cores, so both run with the shared-machine setting
//! docs/performance.md's "Thread settings" and the compose testbed use (`CANDLE_BARRIER_POOL_SPIN_LIMIT`
//! 2000): with candle's default, each process's idle matmul workers spin on the cores the other
//! needs, which makes even the solo figure swing between 12 and 25 ms here.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use splitinfer_tests::{EdgeProcess, default_eval_text, greedy_request, shared_model};

const LONG_ROWS: usize = 4096;
const DECODE_TOKENS: usize = 150;
const SPIN_LIMIT: &str = "2000";

struct Edge(EdgeProcess);

impl Edge {
    async fn start() -> Self {
        Self(EdgeProcess::start(&[], &[("RUST_LOG", "warn"), ("CANDLE_BARRIER_POOL_SPIN_LIMIT", SPIN_LIMIT)]).await)
    }

    fn url(&self) -> String {
        self.0.url()
    }

    /// The process's peak resident memory so far (VmHWM), in MiB.
    fn peak_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.0.pid())).unwrap();
        let kb: f64 = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).unwrap().trim().trim_end_matches("kB").trim().parse().unwrap();
        kb / 1024.0
    }
}

/// Where one decode token's time went, in ms, as the UE's report splits it: its own compute, the
/// wait in the edge's queue, the edge's compute, and the rest (network and the UE's runtime).
#[derive(Clone, Copy, Default)]
struct Parts([f64; 4]);

/// Decode latencies (ms, the time between consecutive tokens after the first) of one generation,
/// each with when it ended and its parts.
async fn decode_latencies(url: &str) -> Vec<(Instant, f64, Parts)> {
    let mut req = greedy_request("The history of the old harbour town begins with the fishermen who", 2, DECODE_TOKENS);
    req.ignore_eos = true;
    let mut client = ue_client::connect(url, 64 << 20, Duration::from_secs(5)).await.unwrap();
    let mut last: Option<Instant> = None;
    let mut out = Vec::new();
    ue_client::generate(&mut client, shared_model(), req, |t| {
        let now = Instant::now();
        if let Some(l) = last {
            let ms = |us: u64| us as f64 / 1e3;
            out.push((now, (now - l).as_secs_f64() * 1e3, Parts([ms(t.ue_compute_us), ms(t.edge_queue_us), ms(t.edge_compute_us), ms(t.network_us)])));
        }
        last = Some(now);
    })
    .await
    .unwrap();
    out
}

/// The mean parts of all tokens and of the slowest tenth, for the log: where the tail comes from.
fn breakdown(tokens: &[(f64, Parts)]) -> String {
    let mean = |v: &[&(f64, Parts)]| {
        let n = v.len().max(1) as f64;
        let mut m = [0.0; 5];
        for (ms, p) in v {
            m[0] += ms / n;
            for i in 0..4 {
                m[i + 1] += p.0[i] / n;
            }
        }
        format!("{:.1} ms (UE {:.1}, edge queue {:.1}, edge compute {:.1}, network {:.1})", m[0], m[1], m[2], m[3], m[4])
    };
    let mut sorted: Vec<&(f64, Parts)> = tokens.iter().collect();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let tail = &sorted[sorted.len() * 9 / 10..];
    format!("mean {}; slowest tenth {}", mean(&sorted), mean(tail))
}

fn p95(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 * 0.95).ceil() as usize).saturating_sub(1).min(v.len() - 1)]
}

#[test]
fn a_4096_row_prefill_does_not_starve_another_ue() {
    // SAFETY: set before this process starts any thread that reads the environment (the runtime
    // is built below; this binary holds this one test), and read by candle when its pool starts.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", SPIN_LIMIT);
    }
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap().block_on(prefill_while_another_decodes());
}

/// `eprintln!` past the test harness's capture: each trial's figures, and why a trial was
/// measured again, show in the log of a passing run too (`cargo test` hides captured output).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

/// Trials at most; a trial in which the machine itself slowed down is measured again.
const TRIALS: usize = 3;
/// The bound on the machine's own speed change within a trial, either way: the p95 of the edge's
/// compute for the other UE's single-row decode step, during the prefill against alone. Units and steps take
/// turns on the edge's one worker, so the prefill does not run inside that step; what moves this
/// figure is the machine (in one failed run it went from 11–14 ms to 54 ms in the slowest tenth).
const MACHINE_SLOWDOWN: f64 = 2.0;

/// One measurement on a fresh edge: the other UE alone, then while the long prompt prefills.
struct Trial {
    solo: Vec<(f64, Parts)>,
    window: Vec<(f64, Parts)>,
    prefill_s: f64,
    growth_mib: f64,
    /// Of the machine's CPU time during the window, the fraction its hypervisor took (steal).
    steal: f64,
}

impl Trial {
    fn solo_p95(&self) -> f64 {
        p95(self.solo.iter().map(|t| t.0).collect())
    }

    fn contended_p95(&self) -> f64 {
        p95(self.window.iter().map(|t| t.0).collect())
    }

    /// How much slower the edge computed the same single-row step during the window than alone.
    fn machine_slowdown(&self) -> f64 {
        let compute = |v: &[(f64, Parts)]| p95(v.iter().map(|t| t.1.0[2]).collect());
        compute(&self.window) / compute(&self.solo)
    }
}

/// The cumulative (steal, total) jiffies of all CPUs, from `/proc/stat`.
fn cpu_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let fields: Vec<u64> = stat.lines().next().unwrap().split_whitespace().skip(1).map(|f| f.parse().unwrap()).collect();
    // user nice system idle iowait irq softirq steal (guest time is already inside user).
    (fields[7], fields[..8].iter().sum())
}

async fn prefill_while_another_decodes() {
    let model = shared_model();
    let text = std::fs::read_to_string(default_eval_text()).unwrap();
    let mut prompt = model.tokenizer.encode(&text).unwrap();
    assert!(prompt.len() >= LONG_ROWS, "the evaluation text has {} tokens", prompt.len());
    prompt.truncate(LONG_ROWS);
    let mut slowdowns = Vec::new();
    for attempt in 1..=TRIALS {
        let trial = measure(prompt.clone()).await;
        let slowdown = trial.machine_slowdown();
        report(attempt, &trial);
        // Either way: a machine slow while the solo figure was taken would make the bound lax.
        if (1.0 / MACHINE_SLOWDOWN..=MACHINE_SLOWDOWN).contains(&slowdown) {
            judge(&trial);
            return;
        }
        say!(
            "fairness: trial {attempt} not judged: the edge's compute for the same single-row step took {slowdown:.2}x (p95) during the window what it took alone, outside 1/{MACHINE_SLOWDOWN}..{MACHINE_SLOWDOWN}x, so the machine changed speed; measuring again"
        );
        slowdowns.push(slowdown);
    }
    panic!("the machine's speed changed in all {TRIALS} trials (edge compute p95 during/alone: {slowdowns:.2?}); fairness cannot be judged here");
}

/// The other UE's solo figure, then its tokens while a `prompt.len()`-row prompt at k = 0 (the
/// edge runs all 30 layers on it) prefills, on a fresh edge.
async fn measure(prompt: Vec<u32>) -> Trial {
    let edge = Edge::start().await;
    let url = edge.url();
    // Warm up, then the solo figure.
    decode_latencies(&url).await;
    let mut solo = Vec::new();
    for _ in 0..2 {
        solo.extend(decode_latencies(&url).await.into_iter().map(|(_, ms, parts)| (ms, parts)));
    }
    let mut long = greedy_request("", 0, 1);
    long.prompt = prompt;
    let peak_before = edge.peak_mib();
    let done = Arc::new(AtomicBool::new(false));
    let (u, d) = (url.clone(), done.clone());
    let prefill = tokio::spawn(async move {
        let started = Instant::now();
        let jiffies = cpu_jiffies();
        let report = splitinfer_tests::generate_via(&u, long).await.unwrap();
        d.store(true, Ordering::SeqCst);
        (started, Instant::now(), jiffies, cpu_jiffies(), report.tokens.len())
    });
    // Decode throughout the prefill, in generations of DECODE_TOKENS.
    let mut during = Vec::new();
    while !done.load(Ordering::SeqCst) {
        during.extend(decode_latencies(&url).await);
    }
    let (started, ended, (steal0, total0), (steal1, total1), tokens) = prefill.await.unwrap();
    assert_eq!(tokens, 1);
    let window = during.iter().filter(|(t, ..)| *t > started && *t <= ended).map(|&(_, ms, parts)| (ms, parts)).collect();
    Trial {
        solo,
        window,
        prefill_s: (ended - started).as_secs_f64(),
        growth_mib: edge.peak_mib() - peak_before,
        steal: (steal1 - steal0) as f64 / (total1 - total0).max(1) as f64,
    }
}

fn report(attempt: usize, t: &Trial) {
    say!(
        "fairness: trial {attempt}: solo p95 {:.1} ms over {} tokens; during the {LONG_ROWS}-row prefill ({:.1} s) p95 {:.1} ms over {} tokens ({:.2}x); edge compute p95 during/alone {:.2}x; steal {:.1}% of CPU time; edge peak memory +{:.0} MiB",
        t.solo_p95(),
        t.solo.len(),
        t.prefill_s,
        t.contended_p95(),
        t.window.len(),
        t.contended_p95() / t.solo_p95(),
        t.machine_slowdown(),
        t.steal * 100.0,
        t.growth_mib
    );
    say!("fairness: solo {}", breakdown(&t.solo));
    say!("fairness: during the prefill {}", breakdown(&t.window));
}

fn judge(t: &Trial) {
    let (solo_p95, contended_p95, window, prefill_s) = (t.solo_p95(), t.contended_p95(), &t.window, t.prefill_s);
    assert!(window.len() >= 50, "too few tokens decoded during the prefill to judge: {}", window.len());
    assert!(contended_p95 <= 3.0 * solo_p95, "p95 {contended_p95:.1} ms during the prefill against {solo_p95:.1} ms solo");
    // Nor is the prompt starved: whatever of the window the edge did not spend on this UE's steps
    // went to the prefill (or stood idle), and its share (0.5) keeps that at about half or more.
    let decode_busy_s: f64 = window.iter().map(|(_, p)| p.0[2]).sum::<f64>() / 1e3;
    let prefill_got = 1.0 - decode_busy_s / prefill_s;
    say!("fairness: the other UE's steps took {decode_busy_s:.1} s of the edge's {prefill_s:.1} s; the prefill got {:.0}%", prefill_got * 100.0);
    assert!(prefill_got >= 0.4, "the prefill got {:.0}% of the edge's time while the other UE decoded", prefill_got * 100.0);
    // Its caches are 4,096 rows x 30 layers x 2 x 3 heads x 64 x 4 B = 188 MB; a whole-prompt
    // attention would add 9 heads x 4,096^2 x 4 B = 600 MB per score matrix on top.
    assert!(t.growth_mib < 700.0, "the edge's peak memory grew by {:.0} MiB for one prompt", t.growth_mib);
}
