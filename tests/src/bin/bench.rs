//! The end-to-end benchmark: measures the figures of the performance work in one run on this
//! machine and writes them, with the machine's description and each target marked met or missed,
//! to a markdown file (`docs/benchmarks.md` by `scripts/bench.sh`).
//!
//! Everything runs for real: the model, gRPC over loopback sockets, the emulator in the path, an
//! edge-server process for memory. Ratios compare figures measured in this same run. This is not
//! a test: nothing here passes or fails; CI only builds it.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use split_core::pipeline::Monolithic;
use split_core::sampling::{Sampler, SamplingConfig};
use split_core::wire::{WireDType, WireTensor};
use splitinfer_proto::v1 as pb;
use splitinfer_tests::{Testbed, default_eval_text, default_model, greedy_request, shared_model};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

const REPEATS: usize = 3;
const HIDDEN: usize = 576;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn pct(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn met(ok: bool) -> &'static str {
    if ok { "**met**" } else { "**missed**" }
}

/// Prefill and decode tokens/s.
#[derive(Clone, Copy)]
struct Speed {
    prefill: f64,
    decode: f64,
}

fn eval_prompt(tokens: usize) -> Result<Vec<u32>> {
    let text = std::fs::read_to_string(default_eval_text())?;
    let ids = shared_model().tokenizer.encode(&text[..text.len().min(20_000)])?;
    anyhow::ensure!(ids.len() >= tokens, "the evaluation text has only {} tokens", ids.len());
    Ok(ids[..tokens].to_vec())
}

/// The model in process, unsplit: prefill of `prompt` in one step, then `n` greedy tokens.
async fn monolithic(prompt: Vec<u32>, n: usize) -> Result<Speed> {
    tokio::task::spawn_blocking(move || {
        let m = shared_model();
        let mut f = Monolithic::new(&m.model);
        let mut sampler = Sampler::new(SamplingConfig::GREEDY)?;
        let g = split_core::pipeline::generate(&mut f, &m.tokenizer, &prompt, n, &mut sampler, false, &mut |_| Ok(()))?;
        Ok(Speed {
            prefill: prompt.len() as f64 / g.prefill_time.as_secs_f64(),
            decode: (g.tokens.len() - 1) as f64 / g.decode_time.as_secs_f64(),
        })
    })
    .await?
}

/// The UE in process through `url` (emulator or edge): prefill rate up to the first token, decode
/// rate between the first and the last.
async fn networked(url: &str, prompt: Vec<u32>, k: usize, wire: WireDType, n: usize) -> Result<Speed> {
    let mut req = greedy_request("x", k, n);
    let prompt_len = prompt.len();
    req.prompt = prompt;
    req.wire = wire;
    let mut client = ue_client::connect(url, 64 << 20, Duration::from_secs(5)).await?;
    let start = Instant::now();
    let mut first = None;
    let mut last = start;
    let report = ue_client::generate(&mut client, shared_model(), req, |_| {
        let now = Instant::now();
        first.get_or_insert(now);
        last = now;
    })
    .await?;
    let first = first.context("no tokens")?;
    Ok(Speed {
        prefill: prompt_len as f64 / (first - start).as_secs_f64(),
        decode: (report.tokens.len() - 1) as f64 / (last - first).as_secs_f64(),
    })
}

async fn median_speed<F, Fut>(f: F) -> Result<Speed>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Speed>>,
{
    let mut p = Vec::new();
    let mut d = Vec::new();
    for _ in 0..REPEATS {
        let s = f().await?;
        p.push(s.prefill);
        d.push(s.decode);
    }
    Ok(Speed { prefill: median(p), decode: median(d) })
}

// ---------------------------------------------------------------------------------------------
// 2. The emulator's own latency, against an edge that answers at once.

/// An edge that runs no model: every activation gets a token back at once, echoing the air time
/// the emulator reported, so round trips measure the path alone.
struct EchoEdge;

type Reply = Result<pb::EdgeMessage, Status>;

#[tonic::async_trait]
impl pb::edge_server::Edge for EchoEdge {
    type GenerateStream = Pin<Box<dyn tokio_stream::Stream<Item = Reply> + Send>>;

    async fn generate(&self, request: Request<Streaming<pb::UeMessage>>) -> Result<Response<Self::GenerateStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                let kind = match m.kind {
                    Some(pb::ue_message::Kind::Open(_)) => pb::edge_message::Kind::Opened(pb::Opened { session_id: "echo".into(), ..Default::default() }),
                    Some(pb::ue_message::Kind::Activation(a)) => pb::edge_message::Kind::Token(pb::Token {
                        position: a.position,
                        uplink_delay_us: a.uplink_delay_us,
                        ..Default::default()
                    }),
                    _ => continue,
                };
                if tx.send(Ok(pb::EdgeMessage { kind: Some(kind) })).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn info(&self, _: Request<pb::InfoRequest>) -> Result<Response<pb::InfoResponse>, Status> {
        Ok(Response::new(pb::InfoResponse::default()))
    }
}

/// Round trips of `count` activations of `rows` rows through `url`, minus the emulated delays the
/// emulator reports; microseconds.
async fn round_trips(url: &str, rows: usize, count: usize) -> Result<Vec<f64>> {
    let mut client = pb::edge_client::EdgeClient::connect(url.to_string())
        .await?
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let (tx, rx) = mpsc::channel(4);
    tx.send(pb::UeMessage { kind: Some(pb::ue_message::Kind::Open(pb::Open::default())) }).await?;
    let mut inbound = client.generate(ReceiverStream::new(rx)).await?.into_inner();
    inbound.message().await?;
    let values: Vec<f32> = (0..rows * HIDDEN).map(|i| ((i % 97) as f32 - 48.0) / 10.0).collect();
    let hidden: pb::Tensor = WireTensor::from_f32(WireDType::F32, vec![1, rows, HIDDEN], &values)?.into();
    let mut out = Vec::with_capacity(count);
    for i in 0..count + 10 {
        let a = pb::Activation { position: i as u64, hidden: Some(hidden.clone()), split: Some(pb::Split { k: 1, epoch: 0 }), ..Default::default() };
        let t = Instant::now();
        tx.send(pb::UeMessage { kind: Some(pb::ue_message::Kind::Activation(a)) }).await?;
        let m = inbound.message().await?.context("stream ended")?;
        let rtt = t.elapsed().as_secs_f64() * 1e6;
        let Some(pb::edge_message::Kind::Token(tok)) = m.kind else { anyhow::bail!("expected a token") };
        // The first few warm the connection up.
        if i >= 10 {
            out.push(rtt - (tok.uplink_delay_us + tok.downlink_delay_us) as f64);
        }
    }
    Ok(out)
}

async fn start_echo() -> Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let server = tonic::transport::Server::builder()
        .add_service(pb::edge_server::EdgeServer::new(EchoEdge).max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20))
        .serve_with_incoming(splitinfer_telemetry::incoming(listener));
    tokio::spawn(server);
    Ok(url)
}

async fn start_emulator(edge: &str, impaired: bool) -> Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let mut c = channel_emulator::EmulatorConfig::new(edge.to_string());
    if impaired {
        c.channel = true;
        c.channel_args.fading_m = Some(1.0);
        c.channel_args.noise = true;
        c.channel_args.snr_db = Some(20.0);
    }
    tokio::spawn(channel_emulator::run_with_metrics(listener, None, c, std::future::pending()));
    Ok(url)
}

// ---------------------------------------------------------------------------------------------
// 3. Concurrent sessions on one edge.

struct Concurrency {
    sessions: usize,
    tokens_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

async fn concurrent(edge: &str, sessions: usize, n: usize) -> Result<Concurrency> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..sessions {
        let url = edge.to_string();
        // k = 0: the UE only embeds; the edge runs every layer.
        let req = greedy_request(["The capital of France is", "Once upon a time", "The weather today", "In the year 1900"][s % 4], 0, n);
        tasks.push(tokio::spawn(async move { splitinfer_tests::generate_via(&url, req).await }));
    }
    let mut tokens = 0usize;
    let mut latency = Vec::new();
    for t in tasks {
        let r = t.await??;
        tokens += r.tokens.len();
        latency.extend(r.tokens[1..].iter().map(|t| (t.ue_compute_us + t.network_us + t.edge_queue_us + t.edge_compute_us) as f64 / 1e3));
    }
    Ok(Concurrency { sessions, tokens_per_s: tokens as f64 / start.elapsed().as_secs_f64(), p50_ms: pct(&latency, 0.5), p99_ms: pct(&latency, 0.99) })
}

// ---------------------------------------------------------------------------------------------
// 4. Edge memory per session, on a real edge-server process.

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS")?;
    Ok(line.split_whitespace().nth(1).context("VmRSS")?.parse()?)
}

fn sibling_binary(name: &str) -> PathBuf {
    std::env::current_exe().unwrap().parent().unwrap().join(name)
}

/// Opens `sessions` sessions at k = 0 with `context` prompt rows each and keeps them open;
/// returns the senders that keep them alive.
async fn open_sessions(url: &str, sessions: usize, context: usize) -> Result<Vec<(mpsc::Sender<pb::UeMessage>, Streaming<pb::EdgeMessage>)>> {
    let model = shared_model();
    let mut kept = Vec::new();
    let values: Vec<f32> = (0..context * HIDDEN).map(|i| ((i % 89) as f32 - 44.0) / 50.0).collect();
    for _ in 0..sessions {
        let mut client = pb::edge_client::EdgeClient::connect(url.to_string())
            .await?
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        let (tx, rx) = mpsc::channel(4);
        let open = pb::Open {
            model_sha256: model.sha256.clone(),
            split: Some(pb::Split { k: 0, epoch: 0 }),
            max_new_tokens: 1,
            prompt_tokens: context as u32,
            ..Default::default()
        };
        tx.send(pb::UeMessage { kind: Some(pb::ue_message::Kind::Open(open)) }).await?;
        let mut inbound = client.generate(ReceiverStream::new(rx)).await?.into_inner();
        inbound.message().await?;
        let hidden = WireTensor::from_f32(WireDType::F32, vec![1, context, HIDDEN], &values)?;
        let a = pb::Activation { position: 0, split: Some(pb::Split { k: 0, epoch: 0 }), hidden: Some(hidden.into()), ..Default::default() };
        tx.send(pb::UeMessage { kind: Some(pb::ue_message::Kind::Activation(a)) }).await?;
        inbound.message().await?.context("no token after the prefill")?;
        kept.push((tx, inbound));
    }
    Ok(kept)
}

struct Memory {
    context: usize,
    sessions: usize,
    per_session_mib: f64,
    kv_mib: f64,
}

async fn edge_memory() -> Result<(u64, Vec<Memory>)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut child = tokio::process::Command::new(sibling_binary("edge-server"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--model", default_model().to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("start edge-server (build it: cargo build --release -p edge-server)")?;
    let pid = child.id().context("edge pid")?;
    let url = format!("http://127.0.0.1:{port}");
    for _ in 0..300 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle = rss_kib(pid)?;
    let cfg = shared_model().model.config().clone();
    let mut out = Vec::new();
    let mut kept = Vec::new();
    for (context, sessions) in [(512usize, 4usize), (2048, 2)] {
        let before = rss_kib(pid)?;
        kept.extend(open_sessions(&url, sessions, context).await?);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let after = rss_kib(pid)?;
        // f32 keys and values of every layer.
        let kv = (cfg.n_layers * context * 2 * cfg.n_kv_heads * cfg.head_dim * 4) as f64 / (1 << 20) as f64;
        out.push(Memory { context, sessions, per_session_mib: (after.saturating_sub(before)) as f64 / 1024.0 / sessions as f64, kv_mib: kv });
    }
    drop(kept);
    child.kill().await?;
    Ok((idle, out))
}

// ---------------------------------------------------------------------------------------------
// 5. The agent: policy evaluation and reaction to a channel change.

/// Microseconds per decision of `policy` over `obs`, each decision with the previous one in force.
fn decision_us(policy: &mut dyn agent::policy::Policy, obs: &[agent::observation::Observation]) -> f64 {
    let mut k = None;
    let t = Instant::now();
    let rounds = 20;
    for _ in 0..rounds {
        for o in obs {
            k = Some(policy.decide(o, k).k);
        }
    }
    t.elapsed().as_secs_f64() * 1e6 / (rounds * obs.len()) as f64
}

fn policy_eval_us() -> Result<f64> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/thresholds.csv");
    let table = agent::policy::threshold::Table::load(&path)?;
    let obs: Vec<_> = (0..1000).map(|i| agent::observation::Observation::with((i % 30) as f64, (i % 7) as f64 / 100.0)).collect();
    Ok(decision_us(&mut agent::policy::Threshold::new(table, 1.0), &obs))
}

/// One decision of the learned policy `splitinfer rl report` trained (docs/rl/smollm2-135m), as
/// the agent makes it: features, normalisation, the network's forward pass, the reason string.
fn learned_eval_us() -> Result<f64> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/rl/smollm2-135m/policy-mb-ppo.safetensors");
    let obs: Vec<_> = (0..1000).map(|i| agent::observation::Observation::with((i % 45) as f64 - 5.0, 0.0)).collect();
    Ok(decision_us(&mut agent::policy::learned::Learned::load(&path)?, &obs))
}

/// The reward surrogate on candle: all L + 1 splits at one state (what greedy-on-surrogate asks
/// per decision), and one step of 16 training environments.
fn surrogate_us() -> Result<(f64, f64)> {
    use splitinfer_rl::real::ChannelState;
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/rl/smollm2-135m/surrogate.safetensors");
    let s = splitinfer_rl::surrogate::Surrogate::load(&path)?;
    let time = |points: &[(usize, ChannelState)]| -> Result<f64> {
        let rounds = 500;
        let t = Instant::now();
        for _ in 0..rounds {
            s.predict_ppl(points)?;
        }
        Ok(t.elapsed().as_secs_f64() * 1e6 / rounds as f64)
    };
    let state = ChannelState::Fading { snr_db: 7.0, m: 1.0 };
    let all: Vec<_> = (0..=30).map(|k| (k, state)).collect();
    let batch: Vec<_> = (0..16).map(|i| (i, ChannelState::Fading { snr_db: i as f64 * 2.0, m: 1.5 })).collect();
    Ok((time(&all)?, time(&batch)?))
}

/// Time from `SetChannel` returning to a follower holding the new decision, stats every 100 ms.
async fn agent_reaction() -> Result<Vec<f64>> {
    let echo = start_echo().await?;
    let emulator = start_emulator(&echo, false).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let agent_url = format!("http://{}", listener.local_addr()?);
    let mut config = agent::AgentConfig::for_tests(emulator.clone());
    config.policy = agent::config::PolicyKind::Threshold;
    config.k = None;
    config.thresholds = Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/thresholds.csv"));
    config.min_dwell_ms = 0;
    config.confirm = 1;
    config.stats_period_ms = 100;
    tokio::spawn(agent::run(listener, config, std::future::pending()));
    let stop = tokio_util::sync::CancellationToken::new();
    let follower = agent::Follower::spawn(agent_url, "bench".into(), pb::Role::Ue, stop.clone());
    let mut rx = follower.decisions();
    tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|d| d.is_some())).await??;
    let mut api = pb::emulator_client::EmulatorClient::connect(emulator).await?;
    let mut out = Vec::new();
    for i in 0..10 {
        let preset = if i % 2 == 0 { "bad" } else { "good" };
        let want = if i % 2 == 0 { 27 } else { 1 };
        api.set_channel(pb::SetChannelRequest { preset: preset.into(), ..Default::default() }).await?;
        let t = Instant::now();
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|d| d.as_ref().and_then(|d| d.split).is_some_and(|s| s.k == want))).await??;
        out.push(t.elapsed().as_secs_f64() * 1e3);
    }
    stop.cancel();
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// 6. Raw model speed against llama.cpp on the same GGUF and threads.

fn llama_cpp(threads: usize) -> Option<serde_json::Value> {
    let cache = split_core::assets::cache_dir();
    let python = cache.join("llamacpp-venv/bin/python");
    if !python.is_file() {
        return None;
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/bench_llamacpp.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .args(["--threads", &threads.to_string(), "--model", default_model().to_str()?])
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!("bench: llama.cpp run failed: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    serde_json::from_slice(out.stdout.rsplit(|&b| b == b'\n').find(|l| !l.is_empty())?).ok()
}

// ---------------------------------------------------------------------------------------------

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).unwrap_or("?").trim().to_string();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<u64>().ok()))
        .map_or("?".into(), |kib| format!("{:.0} GiB", kib as f64 / 1024.0 / 1024.0));
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let rustc = std::process::Command::new("rustc").arg("-V").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default();
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "unset (all cores)".into());
    format!(
        "- CPU: {cpu}, {cores} cores; memory {mem}\n- build: release, `-C target-cpu=x86-64-v3` (.cargo/config.toml), {rustc}, commit {commit}\n- candle matmul threads: RAYON_NUM_THREADS {threads}; tokio: default runtime\n- load average at start: {}\n",
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    )
}

#[tokio::main]
async fn main() -> Result<()> {
    splitinfer_telemetry::init(false);
    let out_path = std::env::args().nth(1).map(PathBuf::from).unwrap_or_else(|| PathBuf::from("docs/benchmarks.md"));
    let started = Instant::now();
    let mut md = String::new();
    writeln!(md, "# Benchmarks\n\nGenerated by `scripts/bench.sh` on {} UTC; takes a few minutes. Every ratio compares figures measured in this same run.\n", chrono_now())?;
    writeln!(md, "## Machine\n\n{}", machine())?;
    let mut targets: Vec<String> = Vec::new();

    // 1. In process vs networked.
    eprintln!("bench: 1/6 monolithic vs networked split");
    let prompt = eval_prompt(256)?;
    let n = 64;
    let mono = median_speed(|| monolithic(prompt.clone(), n)).await?;
    let bed = Testbed::start().await;
    writeln!(md, "## 1. In-process monolithic vs networked split\n")?;
    writeln!(md, "UE → emulator (pass-through) → edge over loopback gRPC, all in this process; prefill of a {}-token prompt, then {n} greedy tokens; median of {REPEATS}.\n", prompt.len())?;
    writeln!(md, "| run | prefill tok/s | × monolithic | decode tok/s | × monolithic |\n|---|---|---|---|---|")?;
    writeln!(md, "| monolithic, in process | {:.1} | 1.00 | {:.1} | 1.00 |", mono.prefill, mono.decode)?;
    let mut worst = (f64::INFINITY, f64::INFINITY);
    for wire in [WireDType::F32, WireDType::F16] {
        for k in [1usize, 15, 29] {
            let url = bed.emulator_url.clone();
            let s = median_speed(|| networked(&url, prompt.clone(), k, wire, n)).await?;
            let (rp, rd) = (s.prefill / mono.prefill, s.decode / mono.decode);
            worst = (worst.0.min(rp), worst.1.min(rd));
            writeln!(md, "| split k={k}, {wire} wire | {:.1} | {rp:.2} | {:.1} | {rd:.2} |", s.prefill, s.decode)?;
        }
    }
    bed.shutdown().await;
    let gap_ms = (1.0 / (worst.1 * mono.decode) - 1.0 / mono.decode) * 1e3;
    targets.push(format!("| networked prefill ≥ 0.9× monolithic | worst {:.2}× | {} | |", worst.0, met(worst.0 >= 0.9)));

    // 2. The emulator's own latency.
    eprintln!("bench: 2/6 emulator latency");
    let echo = start_echo().await?;
    writeln!(md, "\n## 2. The emulator's added latency per message\n")?;
    writeln!(md, "Round trips to an edge that answers at once (no model), direct and through the emulator; the emulated air time the emulator reports is subtracted, so what remains is its own work (decode, channel models, re-encode, one more gRPC hop). Decode-sized: 1 × 576 f32 (2.3 kB), 500 messages; prefill-sized: 512 × 576 f32 (1.2 MB), 50 messages.\n")?;
    writeln!(md, "| message | channel | direct p50 µs | via emulator p50 µs | added p50 µs | direct p99 µs | via emulator p99 µs | added p99 µs |\n|---|---|---|---|---|---|---|---|")?;
    let mut decode_added_p50 = f64::NAN;
    for impaired in [false, true] {
        let emu = start_emulator(&echo, impaired).await?;
        for (what, rows, count) in [("decode", 1usize, 500usize), ("prefill", 512, 50)] {
            let direct = round_trips(&echo, rows, count).await?;
            let via = round_trips(&emu, rows, count).await?;
            let (d50, v50, d99, v99) = (pct(&direct, 0.5), pct(&via, 0.5), pct(&direct, 0.99), pct(&via, 0.99));
            if what == "decode" && !impaired {
                decode_added_p50 = v50 - d50;
            }
            writeln!(
                md,
                "| {what} | {} | {d50:.0} | {v50:.0} | {:.0} | {d99:.0} | {v99:.0} | {:.0} |",
                if impaired { "Rayleigh fading + noise at 20 dB" } else { "clean" },
                v50 - d50,
                v99 - d99
            )?;
        }
    }
    targets.insert(
        0,
        format!(
            "| networked decode ≥ 0.95× monolithic | worst {:.2}× | {} | {} |",
            worst.1,
            met(worst.1 >= 0.95),
            if worst.1 >= 0.95 {
                String::new()
            } else {
                format!("{gap_ms:.1} ms more per token in the worst run; the emulator adds {decode_added_p50:.0} µs of it (section 2); the rest (two gRPC hops, UE and edge on separate threads sharing 2 cores, per-step hand-offs) is not profiled yet")
            }
        ),
    );
    targets.push(format!("| emulator pass-through p50 ≤ 100 µs per decode message | {decode_added_p50:.0} µs | {} | |", met(decode_added_p50 <= 100.0)));

    // 3. Concurrency.
    eprintln!("bench: 3/6 concurrent sessions");
    let bed = Testbed::start().await;
    writeln!(md, "\n## 3. One edge, many UEs\n")?;
    writeln!(md, "UEs in this process straight to the edge at k = 0 (the edge runs all 30 layers), 32 greedy tokens each; tokens/s over all sessions, per-token latency over every decode token.\n")?;
    writeln!(md, "| sessions | aggregate tok/s | × one session | p50 ms/token | p99 ms/token |\n|---|---|---|---|---|")?;
    let mut single = f64::NAN;
    let mut sixteen = f64::NAN;
    for sessions in [1usize, 4, 16] {
        let c = concurrent(&bed.edge_url, sessions, 32).await?;
        if sessions == 1 {
            single = c.tokens_per_s;
        }
        if sessions == 16 {
            sixteen = c.tokens_per_s;
        }
        writeln!(md, "| {} | {:.1} | {:.2} | {:.1} | {:.1} |", c.sessions, c.tokens_per_s, c.tokens_per_s / single, c.p50_ms, c.p99_ms)?;
    }
    bed.shutdown().await;
    targets.push(format!(
        "| 16 sessions ≥ 2× one session's decode throughput | {:.2}× | {} | the UEs run in this process on the same 2 cores; the edge alone does 3.5× (split-core/examples/batch_bench.rs) |",
        sixteen / single,
        met(sixteen / single >= 2.0)
    ));

    // 4. Memory.
    eprintln!("bench: 4/6 edge memory");
    let (idle, mem) = edge_memory().await?;
    writeln!(md, "\n## 4. Edge memory per session\n")?;
    writeln!(md, "A real `edge-server` process (idle: {:.0} MiB resident, the model with its dense prefill copies); sessions at k = 0 opened with a prefill of the given context and kept open; resident memory grown per session (`VmRSS`), against the size of the f32 KV cache itself.\n", idle as f64 / 1024.0)?;
    writeln!(md, "| context tokens | sessions | resident MiB per session | KV cache MiB per session |\n|---|---|---|---|")?;
    for m in &mem {
        writeln!(md, "| {} | {} | {:.1} | {:.1} |", m.context, m.sessions, m.per_session_mib, m.kv_mib)?;
    }

    // 5. Agent.
    eprintln!("bench: 5/6 agent");
    let eval = policy_eval_us()?;
    let reaction = agent_reaction().await?;
    writeln!(md, "\n## 5. Agent\n")?;
    writeln!(md, "| what | figure |\n|---|---|")?;
    writeln!(md, "| threshold policy, one decision (deploy/thresholds.csv) | {eval:.2} µs |")?;
    writeln!(
        md,
        "| channel switch → decision at a subscriber (stats every 100 ms, confirm 1, no dwell), 10 switches | p50 {:.0} ms, max {:.0} ms |",
        pct(&reaction, 0.5),
        pct(&reaction, 1.0)
    )?;
    let learned = learned_eval_us()?;
    let (sur_all, sur_batch) = surrogate_us()?;
    writeln!(md, "| learned policy, one decision (docs/rl/smollm2-135m/policy-mb-ppo.safetensors, 3→64→64→31 in plain Rust) | {learned:.2} µs |")?;
    writeln!(md, "| reward surrogate (3→128→128→1 on candle): all 31 splits at one state | {sur_all:.0} µs |")?;
    writeln!(md, "| reward surrogate: one step of 16 training environments | {sur_batch:.0} µs |")?;

    // 6. Raw model speed vs llama.cpp.
    eprintln!("bench: 6/6 raw model speed and llama.cpp");
    let long = eval_prompt(512)?;
    let ours = median_speed(|| monolithic(long.clone(), 64)).await?;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    writeln!(md, "\n## 6. Raw model speed: ours vs llama.cpp\n")?;
    writeln!(md, "Same GGUF (SmolLM2-135M-Instruct Q4_1), {threads} threads; prefill of 512 tokens in one batch, 64 greedy decode tokens; median of {REPEATS}.\n")?;
    writeln!(md, "| engine | prefill tok/s | decode tok/s |\n|---|---|---|")?;
    writeln!(md, "| splitinfer (candle 0.11, in process) | {:.1} | {:.1} |", ours.prefill, ours.decode)?;
    match llama_cpp(threads) {
        Some(v) => {
            let (p, d) = (v["prefill_tok_s"].as_f64().unwrap_or(f64::NAN), v["decode_tok_s"].as_f64().unwrap_or(f64::NAN));
            writeln!(md, "| llama.cpp (llama-cpp-python {}) | {p:.1} | {d:.1} |", v["llama_cpp_python"].as_str().unwrap_or("?"))?;
            targets.push(format!(
                "| raw decode at least as fast as llama.cpp | {:.2}× | {} | {} |",
                ours.decode / d,
                met(ours.decode >= d),
                if ours.decode >= d {
                    ""
                } else {
                    "candle's Q4_1 CPU kernel is ~75% of a decode step (per-part timing in split-core/examples/batch_bench.rs) at ~6 GMAC/s; llama.cpp's AVX2/VNNI Q4_1 dot product is far faster. Our packed Q4_1 kernel (bit-identical, used for batches) could serve single rows too: not done yet"
                }
            ));
        }
        None => {
            writeln!(md, "| llama.cpp | not installed here (`scripts/install-llamacpp.sh`) | |")?;
            targets.push("| raw decode at least as fast as llama.cpp | not measured: llama.cpp not installed | — | |".into());
        }
    }

    writeln!(md, "\n## Targets\n\n| target | measured | | what limits it |\n|---|---|---|---|")?;
    for t in &targets {
        writeln!(md, "{t}")?;
    }
    writeln!(md, "\nThe whole run took {:.0} s.", started.elapsed().as_secs_f64())?;
    if let Some(dir) = out_path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out_path, &md)?;
    eprintln!("bench: wrote {}", out_path.display());
    print!("{md}");
    Ok(())
}

/// The current UTC time as `YYYY-MM-DD HH:MM`.
fn chrono_now() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}", rem / 3600, rem % 3600 / 60)
}
