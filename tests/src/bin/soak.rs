//! `soak`: many UE sessions through the real emulator, edge and agent binaries for a long time, to
//! find leaks, stuck sessions and rare errors. The emulator alternates between the bad and the
//! good preset every `--alternate-ms`, the agent (threshold policy, deploy/thresholds.csv) moves
//! the split with it, and each of `--sessions` UEs (in this process) follows the agent while it
//! loops generations of `--tokens` greedy tokens, with resume and replay on. The run reports
//! tokens, split changes, errors by kind, per-token latency, and the edge's and emulator's
//! resident memory after warm-up, half-way and at the end. It exits 1 on any error, and when the
//! edge's resident memory grew after warm-up by more than `--max-edge-growth-pct` (10% by
//! default: a leak of one session's caches per generation would pass that within minutes).
//!
//!   cargo run --release -p splitinfer-tests --bin soak -- --sessions 16 --minutes 10
//!
//! Progress goes to stderr every 30 s; the summary is printed as a markdown table on stdout.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use splitinfer_proto::v1 as pb;
use splitinfer_tests::{default_model, greedy_request, shared_model};

const PROMPTS: [&str; 4] = [
    "The history of the old harbour town begins with the fishermen who",
    "A short guide to the care of indoor plants:",
    "The committee met on Tuesday to discuss",
    "In the mountains north of the city, the snow",
];

struct Args {
    sessions: usize,
    minutes: f64,
    tokens: usize,
    alternate_ms: u64,
    max_edge_growth_pct: f64,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args { sessions: 16, minutes: 10.0, tokens: 64, alternate_ms: 5000, max_edge_growth_pct: 10.0 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--sessions" => a.sessions = value()?.parse().map_err(|e| format!("--sessions: {e}"))?,
            "--minutes" => a.minutes = value()?.parse().map_err(|e| format!("--minutes: {e}"))?,
            "--tokens" => a.tokens = value()?.parse().map_err(|e| format!("--tokens: {e}"))?,
            "--alternate-ms" => a.alternate_ms = value()?.parse().map_err(|e| format!("--alternate-ms: {e}"))?,
            "--max-edge-growth-pct" => a.max_edge_growth_pct = value()?.parse().map_err(|e| format!("--max-edge-growth-pct: {e}"))?,
            "--help" | "-h" => {
                println!("soak [--sessions N (16)] [--minutes M (10)] [--tokens per generation (64)] [--alternate-ms bad/good period (5000)] [--max-edge-growth-pct P (10)]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (see --help)")),
        }
    }
    if a.sessions == 0 || a.tokens == 0 || a.alternate_ms == 0 || a.minutes.is_nan() || a.minutes <= 0.0 || a.max_edge_growth_pct.is_nan() || a.max_edge_growth_pct <= 0.0 {
        return Err("--sessions, --tokens, --alternate-ms, --minutes and --max-edge-growth-pct must be positive".into());
    }
    Ok(a)
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sibling(name: &str) -> std::path::PathBuf {
    std::env::current_exe().unwrap().parent().unwrap().join(name)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok()).unwrap_or(f64::NAN) / 1024.0
}

#[derive(Default)]
struct Counters {
    tokens: AtomicU64,
    generations: AtomicU64,
    resumes: AtomicU64,
    replays: AtomicU64,
    migrations: AtomicU64,
    errors: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
    latencies_us: std::sync::Mutex<Vec<u64>>,
}

fn percentile(v: &mut [u64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_unstable();
    v[((v.len() as f64 * p).ceil() as usize).saturating_sub(1).min(v.len() - 1)] as f64 / 1e3
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("soak: {e}");
            std::process::exit(2);
        }
    };
    let (edge_port, emu_port, agent_port) = (free_port(), free_port(), free_port());
    let edge = Proc(
        Command::new(sibling("edge-server"))
            .args(["--listen", &format!("127.0.0.1:{edge_port}"), "--model", &default_model().display().to_string()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start edge-server (cargo build --release first)"),
    );
    let emu = Proc(
        Command::new(sibling("channel-emulator"))
            .args(["--listen", &format!("127.0.0.1:{emu_port}"), "--edge", &format!("http://127.0.0.1:{edge_port}")])
            .args(["--alternate-ms", &args.alternate_ms.to_string()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start channel-emulator"),
    );
    let thresholds = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/thresholds.csv");
    let _agent = Proc(
        Command::new(sibling("agent"))
            .args(["--listen", &format!("127.0.0.1:{agent_port}"), "--emulator", &format!("http://127.0.0.1:{emu_port}")])
            .args(["--policy", "threshold", "--thresholds", thresholds, "--n-layers", "30", "--stats-period-ms", "200", "--min-dwell-ms", "500"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start agent"),
    );
    let agent_url = format!("http://127.0.0.1:{agent_port}");
    let url = format!("http://127.0.0.1:{emu_port}");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(mut c) = pb::edge_client::EdgeClient::connect(url.clone()).await
            && c.info(pb::InfoRequest {}).await.is_ok()
        {
            break;
        }
        assert!(Instant::now() < deadline, "the edge and emulator never came up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = shared_model();
    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let n_layers = shared_model().model.n_layers();
    let mut tasks = Vec::new();
    for i in 0..args.sessions {
        let (url, counters, stop, tokens, agent_url) = (url.clone(), counters.clone(), stop.clone(), args.tokens, agent_url.clone());
        tasks.push(tokio::spawn(async move {
            let endpoints = ue_client::Endpoints { urls: vec![url], tls: Default::default(), max_message_bytes: 64 << 20, connect_timeout: Duration::from_secs(5) };
            let recovery = ue_client::Recovery::new(Duration::from_secs(30), Duration::from_secs(60));
            // Where each UE starts before the agent's first decision reaches it.
            let k = 1 + (i * 7) % (n_layers - 1);
            let follower = agent::Follower::spawn(agent_url, format!("soak-{i}"), pb::Role::Ue, tokio_util::sync::CancellationToken::new());
            while !stop.load(Ordering::Relaxed) {
                let mut req = greedy_request(PROMPTS[i % PROMPTS.len()], k, tokens);
                req.ignore_eos = true;
                req.client = format!("soak-{i}");
                let mut last = Instant::now();
                let mut lat = Vec::with_capacity(tokens);
                let r = ue_client::generate_resilient(&endpoints, recovery, shared_model(), req, &follower, |_| {
                    let now = Instant::now();
                    lat.push((now - last).as_micros() as u64);
                    last = now;
                })
                .await;
                match r {
                    Ok(report) => {
                        counters.tokens.fetch_add(report.tokens.len() as u64, Ordering::Relaxed);
                        counters.generations.fetch_add(1, Ordering::Relaxed);
                        counters.resumes.fetch_add(report.resumes as u64, Ordering::Relaxed);
                        counters.replays.fetch_add(report.replays as u64, Ordering::Relaxed);
                        counters.migrations.fetch_add(report.migrations.len() as u64, Ordering::Relaxed);
                        // The first "latency" is the prefill; keep decode steps only.
                        counters.latencies_us.lock().unwrap().extend(lat.into_iter().skip(1));
                    }
                    Err(e) => {
                        let key = e.code().map(|c| format!("{c:?}")).unwrap_or_else(|| "ue".into());
                        eprintln!("soak: session {i}: {e}");
                        *counters.errors.lock().unwrap().entry(key).or_default() += 1;
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        }));
    }
    // Warm-up: the first minute's tail, then the reference memory.
    let started = Instant::now();
    let warm = Duration::from_secs_f64((args.minutes * 60.0 * 0.1).min(60.0));
    tokio::time::sleep(warm).await;
    let (edge_start, emu_start) = (rss_mib(edge.0.id()), rss_mib(emu.0.id()));
    let tokens_at_warm = counters.tokens.load(Ordering::Relaxed);
    let total = Duration::from_secs_f64(args.minutes * 60.0);
    let mut next_report = Instant::now() + Duration::from_secs(30);
    let half_way = warm + (total.saturating_sub(warm)) / 2;
    let mut edge_mid = None;
    while started.elapsed() < total {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if edge_mid.is_none() && started.elapsed() >= half_way {
            edge_mid = Some(rss_mib(edge.0.id()));
        }
        if Instant::now() >= next_report {
            next_report += Duration::from_secs(30);
            eprintln!(
                "soak: {:>4.0} s: {} tokens, {} generations, errors {:?}, edge {:.0} MiB, emulator {:.0} MiB",
                started.elapsed().as_secs_f64(),
                counters.tokens.load(Ordering::Relaxed),
                counters.generations.load(Ordering::Relaxed),
                counters.errors.lock().unwrap(),
                rss_mib(edge.0.id()),
                rss_mib(emu.0.id())
            );
        }
    }
    let (edge_end, emu_end) = (rss_mib(edge.0.id()), rss_mib(emu.0.id()));
    let measured_s = (started.elapsed() - warm).as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let tokens = counters.tokens.load(Ordering::Relaxed);
    let mut lat = std::mem::take(&mut *counters.latencies_us.lock().unwrap());
    let errors = counters.errors.lock().unwrap().clone();
    let error_count: u64 = errors.values().sum();
    println!("| figure | value |\n|---|---|");
    println!(
        "| sessions at once | {} ({} tokens per generation; the channel alternates bad/good every {} ms; the agent's threshold policy moves the split) |",
        args.sessions, args.tokens, args.alternate_ms
    );
    println!("| duration | {:.1} min (memory reference taken after {:.0} s of warm-up) |", started.elapsed().as_secs_f64() / 60.0, warm.as_secs_f64());
    println!("| tokens | {tokens} ({:.1} tok/s after warm-up) |", (tokens - tokens_at_warm) as f64 / measured_s);
    println!("| generations completed | {} |", counters.generations.load(Ordering::Relaxed));
    println!("| errors | {error_count} {errors:?} |");
    println!("| split changes (live migrations) | {} |", counters.migrations.load(Ordering::Relaxed));
    println!("| resumes / replays | {} / {} |", counters.resumes.load(Ordering::Relaxed), counters.replays.load(Ordering::Relaxed));
    println!("| per-token latency p50 / p99 | {:.1} / {:.1} ms |", percentile(&mut lat, 0.5), percentile(&mut lat, 0.99));
    let edge_mid = edge_mid.unwrap_or(f64::NAN);
    let growth_pct = (edge_end - edge_start) / edge_start * 100.0;
    let within = growth_pct <= args.max_edge_growth_pct;
    println!(
        "| edge resident memory, after warm-up → half-way → end | {edge_start:.0} → {edge_mid:.0} → {edge_end:.0} MiB ({growth_pct:+.1}%; bound {:.0}%: {}) |",
        args.max_edge_growth_pct,
        if within { "within" } else { "EXCEEDED" }
    );
    println!("| emulator resident memory, after warm-up → end | {emu_start:.0} → {emu_end:.0} MiB |");
    if error_count > 0 || !within {
        std::process::exit(1);
    }
}
