//! Profiles for the targets table: `scripts/profile.sh` runs the harness (and llama.cpp) under
//! `perf record`, with sampling switched on only for one phase of each generation (the prefill,
//! or the decode after the first token), and writes what perf counted to `summary.tsv`. This module
//! is both sides of that: the gate the harness opens and closes through perf's control FIFO, and
//! the reader that turns the summary into CPU milliseconds per token by function group.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, Result};

/// perf's sampling frequency in `scripts/profile.sh` (`-F`): one sample is 1/FREQ s of one core.
const FREQ: f64 = 1999.0;

/// Where a generation is; `mark` opens the gate at the start of the profiled phase and closes it at
/// its end.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    Start,
    FirstToken,
    End,
}

struct Gate {
    prefill: bool,
    ctl: File,
    ack: BufReader<File>,
    opened: Option<Instant>,
    wall_ms: f64,
    tokens: usize,
}

static GATE: Mutex<Option<Gate>> = Mutex::new(None);

/// Opens perf's control FIFOs named by `PERF_CTL_FIFO`/`PERF_ACK_FIFO`; `BENCH_PROFILE_PHASE` is
/// `decode` (default) or `prefill`. Without them, `mark` does nothing.
pub fn init() -> Result<()> {
    let (Some(ctl), Some(ack)) = (std::env::var_os("PERF_CTL_FIFO"), std::env::var_os("PERF_ACK_FIFO")) else {
        return Ok(());
    };
    let prefill = match std::env::var("BENCH_PROFILE_PHASE").as_deref() {
        Ok("prefill") => true,
        Ok("decode") | Err(_) => false,
        Ok(other) => anyhow::bail!("BENCH_PROFILE_PHASE is `prefill` or `decode`, not {other:?}"),
    };
    let ctl = File::options().write(true).open(&ctl).context("opening perf's control FIFO")?;
    let ack = BufReader::new(File::open(&ack).context("opening perf's ack FIFO")?);
    *GATE.lock().unwrap() = Some(Gate { prefill, ctl, ack, opened: None, wall_ms: 0.0, tokens: 0 });
    Ok(())
}

/// Which phase the gate profiles (for counting tokens): true for prefill.
pub fn profiling_prefill() -> bool {
    GATE.lock().unwrap().as_ref().is_some_and(|g| g.prefill)
}

pub fn mark(m: Mark) {
    let mut guard = GATE.lock().unwrap();
    let Some(g) = guard.as_mut() else { return };
    let (open, close) = if g.prefill { (Mark::Start, Mark::FirstToken) } else { (Mark::FirstToken, Mark::End) };
    let command = if m == open && g.opened.is_none() {
        "enable"
    } else if m == close && g.opened.is_some() {
        "disable"
    } else {
        return;
    };
    // perf answers every command on the ack FIFO; waiting for it keeps the phase's edges exact.
    let ok = writeln!(g.ctl, "{command}").is_ok() && g.ctl.flush().is_ok() && g.ack.read_line(&mut String::new()).is_ok();
    if !ok {
        eprintln!("bench: perf's control FIFO failed; the profile is incomplete");
    }
    match g.opened.take() {
        Some(t) => g.wall_ms += t.elapsed().as_secs_f64() * 1e3,
        None => g.opened = Some(Instant::now()),
    }
}

/// A token arrived: counted when the gate is open (call before `mark(Mark::FirstToken)`).
pub fn tick() {
    if let Some(g) = GATE.lock().unwrap().as_mut() {
        g.tokens += usize::from(g.opened.is_some());
    }
}

/// Tokens counted by `tick` while the gate was open.
pub fn tokens() -> usize {
    GATE.lock().unwrap().as_ref().map_or(0, |g| g.tokens)
}

/// Wall time the gate was open, ms.
pub fn wall_ms() -> f64 {
    GATE.lock().unwrap().as_ref().map_or(0.0, |g| g.wall_ms)
}

// ---------------------------------------------------------------------------------------------

/// One profiled run: the tokens its phase produced, the wall time sampled, and perf's samples by
/// thread name and by function.
#[derive(Default)]
pub struct Run {
    pub tokens: f64,
    pub wall_ms: f64,
    pub by_comm: Vec<(String, f64)>,
    pub by_sym: Vec<(String, f64)>,
}

impl Run {
    /// CPU milliseconds per token for `samples`.
    pub fn ms(&self, samples: f64) -> f64 {
        samples / FREQ * 1e3 / self.tokens
    }

    pub fn cpu_ms(&self) -> f64 {
        self.ms(self.by_comm.iter().map(|(_, n)| n).sum())
    }

    pub fn wall_ms_per_token(&self) -> f64 {
        self.wall_ms / self.tokens
    }

    /// CPU ms per token by function group, in `GROUPS` order.
    pub fn groups(&self) -> Vec<f64> {
        let mut out = vec![0.0; GROUPS.len()];
        for (sym, n) in &self.by_sym {
            out[group_of(sym)] += self.ms(*n);
        }
        out
    }
}

/// Function groups, matched in order on perf's symbol line (`[.] user` or `[k] kernel`); the
/// last catches the rest. Patterns name functions, not modules: candle's kernels all live under
/// `candle_core::quantized`.
pub const GROUPS: &[(&str, &[&str])] = &[
    ("kernel (syscalls, scheduler, loopback TCP)", &["[k] "]),
    // Our packed kernels inline into `packed::rows_by_four` and `by_groups` (the profiled model,
    // SmolLM2, has no Q5_0 weights); the head's into `q8_0::matmul_rows`.
    ("Q4_1 projections", &["PackedQ4_1", "packed::rows_by_four", "packed::by_groups", "BlockQ4_1", "q4_1_q8_1", "gemv_q4_1", "gemm_q4_1"]),
    ("Q8_0 LM head", &["BlockQ8_0 as", "q8_0_q8_0", "q8_0::matmul_rows"]),
    ("activation quantization (f32 → Q8)", &["from_float", "quantize_row", "quantize_mat", "packed::quantize"]),
    ("attention (ours: model::attention, prefill's f32 gemm; softmax; llama.cpp: f16 KV)", &["model::attention", "gemm_f32", "gemm_common", "expf", "softmax", "soft_max", "flash_attn", "vec_dot_f16", "ggml_vec_dot_f32", "fp16_to_fp32", "fp32_to_fp16"]),
    ("thread pools: spin-wait and hand-off (candle's worker loop, barriers)", &["__rust_begin_short_backtrace", "BarrierGuard", "BarrierPool", "call_trampoline", "lock_contended", "ggml_barrier", "ggml_graph_compute_thread", "gomp_", "GOMP_", "sched_yield", "rayon_core", "crossbeam"]),
    ("runtime and gRPC (tokio, h2, hyper, tonic, prost)", &["tokio", "h2::", "hyper", "tonic", "prost", "mio::", "bytes::"]),
    ("memory (malloc, free, memcpy)", &["malloc", "free", "calloc", "memcpy", "memmove", "memset", "realloc"]),
    ("everything else (candle's per-op work, norms, sampling, Python)", &[]),
];

/// The index of the thread pools' group in [`GROUPS`].
fn spin_group() -> usize {
    GROUPS.iter().position(|(name, _)| name.starts_with("thread pools")).unwrap_or(0)
}

fn group_of(sym: &str) -> usize {
    GROUPS.iter().position(|(_, pats)| pats.iter().any(|p| sym.contains(p))).unwrap_or(GROUPS.len() - 1)
}

/// `summary.tsv` of `scripts/profile.sh`, by (phase, run).
pub struct Profile {
    pub runs: BTreeMap<(String, String), Run>,
    pub source: String,
}

impl Profile {
    /// Lines: `run\tPHASE\tRUN\tTOKENS\tWALL_MS` and `samples\tPHASE\tRUN\tcomm|sym\tN\tKEY`.
    pub fn load(dir: &Path) -> Result<Profile> {
        let path = dir.join("summary.tsv");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let mut runs: BTreeMap<(String, String), Run> = BTreeMap::new();
        for line in text.lines() {
            let f: Vec<&str> = line.splitn(6, '\t').collect();
            match f.as_slice() {
                // A run recorded in several rounds has a line of each per round: they add up.
                ["run", phase, run, tokens, wall] => {
                    let r = runs.entry((phase.to_string(), run.to_string())).or_default();
                    r.tokens += tokens.parse::<f64>()?;
                    r.wall_ms += wall.parse::<f64>()?;
                }
                ["samples", phase, run, kind, n, key] => {
                    let r = runs.entry((phase.to_string(), run.to_string())).or_default();
                    let list = if *kind == "comm" { &mut r.by_comm } else { &mut r.by_sym };
                    // Threads that ended (perf names them by id) count under one name.
                    let key = if key.starts_with(':') { "(ended threads)" } else { key };
                    let n: f64 = n.parse()?;
                    match list.iter_mut().find(|(k, _)| k == key) {
                        Some(e) => e.1 += n,
                        None => list.push((key.to_string(), n)),
                    }
                }
                _ => anyhow::bail!("{}: unexpected line {line:?}", path.display()),
            }
        }
        anyhow::ensure!(runs.values().all(|r| r.tokens > 0.0), "{}: a run with no tokens", path.display());
        for r in runs.values_mut() {
            r.by_comm.sort_by(|a, b| b.1.total_cmp(&a.1));
            r.by_sym.sort_by(|a, b| b.1.total_cmp(&a.1));
        }
        Ok(Profile { runs, source: std::fs::read_to_string(dir.join("about.txt")).unwrap_or_default().trim().to_string() })
    }

    pub fn get(&self, phase: &str, run: &str) -> Option<&Run> {
        self.runs.get(&(phase.to_string(), run.to_string()))
    }

    /// "where the difference is": the groups of `b` minus those of `a`, largest change first, as
    /// `group +x.xx ms`, those over 0.05 ms only.
    pub fn difference(a: &Run, b: &Run, top: usize) -> String {
        let (ga, gb) = (a.groups(), b.groups());
        let mut d: Vec<(usize, f64)> = ga.iter().zip(&gb).map(|(x, y)| y - x).enumerate().collect();
        d.sort_by(|x, y| y.1.abs().total_cmp(&x.1.abs()));
        d.iter()
            .filter(|(_, v)| v.abs() >= 0.05)
            .take(top)
            .map(|&(i, v)| format!("{} {v:+.2} ms", GROUPS[i].0))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The split run of a profile (the one that is neither `mono` nor `llama.cpp`).
fn split_name(p: &Profile, phase: &str) -> Option<String> {
    p.runs.keys().find(|(ph, r)| ph == phase && r != "mono" && r != "llama.cpp" && !r.starts_with("sessions:")).map(|(_, r)| r.clone())
}

/// The "what limits it" text for a missed target, from the profile: `decode` or `prefill` (the
/// split against the monolithic model), or `raw` (the monolithic model against llama.cpp).
pub fn note(what: &str, profile: &Option<Profile>) -> String {
    let Some(p) = profile else {
        return "not profiled: scripts/profile.sh did not run (it needs perf; scripts/bench.sh runs it when perf can record)".into();
    };
    let phase = if what == "prefill" { "prefill" } else { "decode" };
    if what == "sessions" {
        let (Some(one), Some(many)) = (p.get("decode", "sessions:1"), p.get("decode", "sessions:16")) else {
            return "the profile has no runs of 1 and 16 sessions".into();
        };
        let usage = |r: &Run| format!("{:.2} ms wall and {:.2} ms CPU per token ({:.2} cores busy)", r.wall_ms_per_token(), r.cpu_ms(), r.cpu_ms() / r.wall_ms_per_token());
        return format!(
            "perf of whole runs (section 8, `sessions:1` and `sessions:16`): 16 sessions take {} against {} for one; per token the CPU changes by function group: {}; by thread: {}",
            usage(many),
            usage(one),
            Profile::difference(one, many, 5),
            many.by_comm.iter().take(4).map(|(c, n)| format!("{c} {:.2} ms", many.ms(*n))).collect::<Vec<_>>().join(", ")
        );
    }
    let (a_name, b_name) = match what {
        "raw" => ("mono".to_string(), "llama.cpp".to_string()),
        _ => match split_name(p, phase) {
            Some(s) => ("mono".to_string(), s),
            None => return "the profile has no split run".into(),
        },
    };
    let usage = |r: &Run| format!("{:.2} ms wall, {:.2} ms CPU ({:.2} cores busy)", r.wall_ms_per_token(), r.cpu_ms(), r.cpu_ms() / r.wall_ms_per_token());
    let (Some(a), Some(b)) = (p.get(phase, &a_name), p.get(phase, &b_name)) else {
        return match p.get(phase, &a_name) {
            // Ours alone where llama.cpp was not profiled (it is, through its Python binding).
            Some(a) if what == "raw" => {
                let mut groups: Vec<(usize, f64)> = a.groups().into_iter().enumerate().collect();
                groups.sort_by(|x, y| y.1.total_cmp(&x.1));
                format!(
                    "llama.cpp's decode was not profiled (scripts/profile.sh profiles it through its Python binding: scripts/install-llamacpp.sh --python-only). Ours at context 256..512 (section 8): {} per token, the most in {}; one thread spin-waits {:.2} ms per token while the other runs what is not shared out (norms, RoPE, the small ops between the projections, candle's per-op work, sampling)",
                    usage(a),
                    groups.iter().take(4).map(|&(g, ms)| format!("{} {ms:.2} ms", GROUPS[g].0)).collect::<Vec<_>>().join(", "),
                    a.groups()[spin_group()]
                )
            }
            _ => format!("the profile has no {phase} run of {a_name} and {b_name}"),
        };
    };
    if what == "raw" {
        // Ours (a) against llama.cpp (b): where ours takes more CPU.
        let spin = |r: &Run| r.groups()[spin_group()];
        format!(
            "perf of the decode at context 256..512 (section 8): ours {} per token, llama.cpp {}; ours minus llama.cpp by function group: {}. Outside spin-waiting ours does {:.2} ms of CPU work per token against llama.cpp's {:.2}, but one of our two threads spin-waits {:.2} ms per token while the other runs what is not shared out: norms, RoPE, the small ops between the projections and candle's per-op work (our decode attention shares its heads over both threads). llama.cpp splits every op over both threads",
            usage(a),
            usage(b),
            Profile::difference(b, a, 4),
            a.cpu_ms() - spin(a),
            b.cpu_ms() - spin(b),
            spin(a)
        )
    } else {
        let changes = Profile::difference(a, b, 4);
        let changes = if changes.is_empty() {
            format!(
                "no function group changes by 0.05 ms or more, so the wall time grows because fewer cores are busy ({:.2} against {:.2}): the UE's layers and the edge's run one after the other",
                b.cpu_ms() / b.wall_ms_per_token(),
                a.cpu_ms() / a.wall_ms_per_token()
            )
        } else {
            format!("the split's CPU per token changes by function group: {changes}")
        };
        format!("perf of the {phase} (section 8, split {b_name}): {} per token against {} monolithic; {changes}", usage(b), usage(a))
    }
}

/// Section 8 of docs/benchmarks.md: CPU ms per token by function group and by thread, and the
/// heaviest functions, for every profiled run.
pub fn section(p: &Profile) -> String {
    use std::fmt::Write as _;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "\n## 8. Where the time goes (perf)\n\n`{}`. perf samples each core at 1999 Hz only while the harness (or scripts/bench_llamacpp.py: llama.cpp through its Python binding) has the phase open: the prefill of a 256-token prompt, or the 255 decode steps after it; `sessions:N` is section 3's run of N concurrent UEs at k = 0 (32 tokens each), sampled whole, prefills included. The runs take turns (rounds of 2 generations of each), so a drift in the machine's speed reaches all of them alike. Figures are CPU milliseconds per token (samples ÷ 1999 Hz ÷ tokens), so on 2 cores they can add up to twice the wall time; \"cores busy\" is CPU over wall time. Groups match function names (profile.rs, `GROUPS`); spinning thread pools count as busy.\n",
        p.source
    );
    for phase in ["decode", "prefill"] {
        let mut runs: Vec<(&String, &Run)> = p.runs.iter().filter(|((ph, _), _)| ph == phase).map(|((_, r), run)| (r, run)).collect();
        runs.sort_by_key(|(r, _)| match r.as_str() {
            "mono" => 0,
            "llama.cpp" => 2,
            r if r.starts_with("sessions:") => 3,
            _ => 1,
        });
        if runs.is_empty() {
            continue;
        }
        let _ = writeln!(md, "### {phase}\n");
        let _ = writeln!(md, "| CPU ms per token | {} |\n|---|{}", runs.iter().map(|(r, _)| r.as_str()).collect::<Vec<_>>().join(" | "), "---|".repeat(runs.len()));
        let groups: Vec<Vec<f64>> = runs.iter().map(|(_, r)| r.groups()).collect();
        for (i, (name, _)) in GROUPS.iter().enumerate() {
            let _ = writeln!(md, "| {name} | {} |", groups.iter().map(|g| format!("{:.3}", g[i])).collect::<Vec<_>>().join(" | "));
        }
        let row = |label: &str, f: &dyn Fn(&Run) -> String| format!("| {label} | {} |", runs.iter().map(|(_, r)| f(r)).collect::<Vec<_>>().join(" | "));
        let _ = writeln!(md, "{}", row("**all CPU**", &|r| format!("**{:.3}**", r.cpu_ms())));
        let _ = writeln!(md, "{}", row("wall time", &|r| format!("{:.3}", r.wall_ms_per_token())));
        let _ = writeln!(md, "{}", row("cores busy", &|r| format!("{:.2}", r.cpu_ms() / r.wall_ms_per_token())));
        let _ = writeln!(md, "{}", row("tokens profiled", &|r| format!("{:.0}", r.tokens)));
        let _ = writeln!(md, "\nBy thread (CPU ms per token; tokio's threads are `tokio-runtime-w`, candle's matmul worker `candle-bp-*`, gemm's rayon pool unnamed or `rayon-*`):\n");
        for (name, r) in &runs {
            let threads: Vec<String> = r.by_comm.iter().take(5).map(|(c, n)| format!("{c} {:.2}", r.ms(*n))).collect();
            let _ = writeln!(md, "- {name}: {}", threads.join(", "));
        }
        let _ = writeln!(md, "\nHeaviest functions (CPU ms per token):\n");
        for (name, r) in &runs {
            let syms: Vec<String> = r.by_sym.iter().take(6).map(|(s, n)| format!("`{}` {:.2}", short_symbol(s), r.ms(*n))).collect();
            let _ = writeln!(md, "- {name}: {}", syms.join(", "));
        }
        md.push('\n');
    }
    md
}

/// A symbol without perf's `[.] ` and with generic arguments and long paths cut, for a table.
fn short_symbol(s: &str) -> String {
    let s = s.trim_start_matches("[.] ").trim_start_matches("[k] ");
    let s = s.replace('|', "/").replace('`', "'");
    if s.chars().count() > 90 { format!("{}…", s.chars().take(90).collect::<String>()) } else { s }
}
