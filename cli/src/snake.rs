//! `splitinfer snake`: Snake Learning's experiment (docs/snake.md) as one resumable command, and
//! the node process it starts.
//!
//! `run` chooses the split on the validation text, starts node processes (`snake node`, this
//! same binary) and drives snake, centralized and federated-averaging training through them,
//! evaluates every adapter on the held-out text, and writes `report.md` and `curves.png`. Each
//! stage's result is a file in `--out`; a stage whose file exists is not run again.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use plotters::prelude::*;
use split_core::assets;
use split_core::calibration::Calibration;
use split_core::channel::{ChannelConfig, Preset, preset};
use split_core::model::SplitModel;
use split_core::perplexity::PplConfig;
use split_core::tokenizer::Tokenizer;
use split_core::transform::{Concealment, LinkSetup, Normalization};
use split_core::wire::WireDType;
use splitinfer_rl::link_profile::mean_ci;
use splitinfer_snake::coordinate::{self, CurvePoint, NodeClient, Run, RunCost};
use splitinfer_snake::eval::{EvalChannel, evaluate};
use splitinfer_snake::model::{AdapterSpec, EdgeStack};
use splitinfer_snake::node::{Node, NodeState};
use splitinfer_snake::train::{Shard, TrainConfig, TrainLink};
use tokio::io::AsyncBufReadExt;

use crate::ModelArgs;

#[derive(Debug, Args)]
pub struct SnakeArgs {
    #[command(subcommand)]
    command: SnakeCommand,
}

#[derive(Debug, Subcommand)]
enum SnakeCommand {
    /// The whole experiment of docs/snake.md: split choice, training of every method through
    /// node processes, evaluation and report. Resumable: each stage's file in --out is reused.
    Run(RunArgs),
    /// One node: a gRPC server (splitinfer.v1.SnakeNode) that trains the slice it is asked to on
    /// its own text. Prints `listening on http://ADDR` when ready. `run` starts these itself.
    Node(NodeArgs),
}

#[derive(Debug, Args)]
struct Shared {
    #[command(flatten)]
    model: ModelArgs,
    /// Calibration statistics for the link's standardization and mean concealment. Default:
    /// calibration/<model name>.json in this directory, for a known model.
    #[arg(long)]
    calibration: Option<PathBuf>,
    /// Tokens per training example.
    #[arg(long, default_value_t = 256)]
    window: usize,
}

#[derive(Debug, Args)]
struct NodeArgs {
    #[command(flatten)]
    shared: Shared,
    /// Address to serve on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// This node's text: Brown slices, comma-separated (editorial, hobbies, lore, ...).
    #[arg(long)]
    shards: String,
    /// The split: the node's edge layers are K..L.
    #[arg(long)]
    split: usize,
    /// Seeds the node's examples and channel draws.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    shared: Shared,
    /// Where every stage's result goes.
    #[arg(long, default_value = "docs/snake")]
    out: PathBuf,
    /// Use this split instead of choosing the most fragile one on the validation text.
    #[arg(long)]
    split: Option<usize>,
    /// Node shards, one Brown slice per node.
    #[arg(long, default_value = "editorial,hobbies,lore")]
    shards: String,
    /// Snake rounds (each visits the nodes forward, then back).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Steps per node visit, one value for all nodes or one per node (heterogeneous compute).
    #[arg(long, default_value = "20")]
    steps: String,
    /// Methods to train: snake, centralized, fedavg.
    #[arg(long, default_value = "snake,centralized,fedavg")]
    methods: String,
    /// The validation text the split is chosen on (a Brown slice: news, learned, fiction,
    /// editorial, hobbies, lore, government).
    #[arg(long, default_value = "government")]
    choose_text: String,
    /// Tokens of the validation text scored at each k.
    #[arg(long, default_value_t = 2048)]
    choose_tokens: usize,
    /// The held-out text (a Brown slice).
    #[arg(long, default_value = "news")]
    test_text: String,
    /// Tokens of the held-out text scored per evaluation.
    #[arg(long, default_value_t = 4096)]
    eval_tokens: usize,
    /// Channel seeds per noisy evaluation.
    #[arg(long, default_value_t = 3)]
    seeds: u64,
    /// Font for the figure's labels (default DejaVu Sans).
    #[arg(long)]
    font: Option<PathBuf>,
}

pub fn run(args: SnakeArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    match args.command {
        SnakeCommand::Node(a) => rt.block_on(node(a)),
        SnakeCommand::Run(a) => rt.block_on(experiment(a)),
    }
}

struct Loaded {
    path: PathBuf,
    model: SplitModel,
    tokenizer: Tokenizer,
    sha256: String,
    link: TrainLink,
}

/// The model and the link of docs/snake.md: the bad preset with standardization and mean
/// concealment on an f32 wire.
fn load(shared: &Shared) -> Result<Loaded> {
    let path = split_core::bundle::resolve_model(shared.model.model.as_deref(), &shared.model.model_name)?;
    let model = SplitModel::load(&path)?;
    let tokenizer = Tokenizer::from_gguf_file(&path)?;
    let sha256 = assets::sha256_file(&path)?;
    let cal_path = match &shared.calibration {
        Some(p) => p.clone(),
        None => crate::default_calibration(&sha256).context("the link needs calibration statistics: pass --calibration FILE (make one with `splitinfer calibrate`)")?,
    };
    let calibration = Calibration::load(&cal_path, Some(&sha256)).with_context(|| format!("calibration {}", cal_path.display()))?;
    let setup = LinkSetup { dtype: WireDType::F32, normalization: Normalization::Standardize, concealment: Concealment::Mean };
    let link = TrainLink { channel: preset(Preset::Bad, &ChannelConfig::default()), setup, calibration: Some(calibration) };
    Ok(Loaded { path, model, tokenizer, sha256, link })
}

fn text_tokens(tokenizer: &Tokenizer, slice: &str) -> Result<Vec<u32>> {
    let (text, _) = assets::slice_text(slice, &mut |m| eprintln!("{m}"))?;
    Ok(tokenizer.encode(&text)?)
}

async fn node(args: NodeArgs) -> Result<()> {
    let l = load(&args.shared)?;
    let shards = args.shards.split(',').map(|s| Ok(Shard { name: s.to_string(), tokens: text_tokens(&l.tokenizer, s)? })).collect::<Result<Vec<_>>>()?;
    let stack = EdgeStack::load(&l.path, l.model.config(), args.split, AdapterSpec::default(), args.shared.window)?;
    let cfg = TrainConfig { window: args.shared.window, ..TrainConfig::default() };
    let state = NodeState::new(l.model, stack, l.sha256, shards, l.link, cfg, args.seed);
    let listener = tokio::net::TcpListener::bind(&args.listen).await.with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    println!("listening on http://{addr}");
    tonic::transport::Server::builder()
        .add_service(Node::new(state).server())
        .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

/// Starts a node process (killed when its `Child` is dropped) and connects to it.
async fn spawn_node(shared: &Shared, shards: &str, split: usize, seed: u64) -> Result<(tokio::process::Child, NodeClient)> {
    let exe = std::env::current_exe()?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(["snake", "node", "--shards", shards, "--split", &split.to_string(), "--seed", &seed.to_string()]);
    cmd.args(["--window", &shared.window.to_string(), "--model-name", &shared.model.model_name]);
    if let Some(m) = &shared.model.model {
        cmd.arg("--model").arg(m);
    }
    if let Some(c) = &shared.calibration {
        cmd.arg("--calibration").arg(c);
    }
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).kill_on_drop(true).spawn()?;
    let stdout = child.stdout.take().context("node stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = lines.next_line().await?.with_context(|| format!("node ({shards}) exited before it listened"))?;
    let addr = line.strip_prefix("listening on ").with_context(|| format!("node said {line:?}"))?.to_string();
    let client = NodeClient::connect(&addr).await?;
    eprintln!("snake: node {shards} (seed {seed}) at {addr}");
    Ok((child, client))
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct MethodFile {
    cost: RunCost,
    curve: Vec<CurvePoint>,
}

fn parse_steps(s: &str, n: usize) -> Result<Vec<u32>> {
    let v: Vec<u32> = s.split(',').map(|x| x.trim().parse::<u32>().with_context(|| format!("--steps {s:?}"))).collect::<Result<_>>()?;
    match v.len() {
        1 => Ok(vec![v[0]; n]),
        m if m == n => Ok(v),
        m => bail!("--steps has {m} values for {n} nodes"),
    }
}

async fn experiment(args: RunArgs) -> Result<()> {
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    let l = load(&args.shared)?;
    let n_layers = l.model.n_layers();
    let shards: Vec<String> = args.shards.split(',').map(str::to_string).collect();
    let n = shards.len();
    anyhow::ensure!(n >= 1 && n < n_layers, "need between 1 and {} node shards", n_layers - 1);
    let steps = parse_steps(&args.steps, n)?;
    let ppl = PplConfig { window: 512, stride: 256 };

    // 1. The split: the most fragile k on the validation text, with no fine-tuning.
    let k = match args.split {
        Some(k) => k,
        None => choose_split(&args, &l, n, ppl)?,
    };
    anyhow::ensure!(k + n <= n_layers, "split {k} leaves {} edge layers for {n} nodes", n_layers - k);
    check_settings(&args, &l.sha256, k)?;
    let edge = k..n_layers;
    let slices = coordinate::slices(edge.clone(), n);
    let total: u32 = coordinate::serpentine(&slices, &steps, args.rounds).iter().map(|t| t.steps).sum();
    eprintln!("snake: split k = {k}; slices {slices:?}; {total} steps per method");

    // 2. Training, each method through its own node processes.
    let methods: Vec<String> = args.methods.split(',').map(str::to_string).collect();
    for m in &methods {
        let adapter_path = args.out.join(format!("{m}.safetensors"));
        let meta_path = args.out.join(format!("{m}.json"));
        if adapter_path.is_file() && meta_path.is_file() {
            eprintln!("snake: {m} already trained ({})", adapter_path.display());
            continue;
        }
        let mut progress = |s: &str| eprintln!("{s}");
        let run: Run = match m.as_str() {
            "snake" | "fedavg" => {
                let (mut children, mut clients) = (Vec::new(), Vec::new());
                for (i, s) in shards.iter().enumerate() {
                    let (child, client) = spawn_node(&args.shared, s, k, i as u64).await?;
                    children.push(child);
                    clients.push(client);
                }
                let r = if m == "snake" {
                    coordinate::run_snake(&mut clients, &coordinate::serpentine(&slices, &steps, args.rounds), &mut progress).await?
                } else {
                    // Every node trains every layer with its own budget per round; the rounds make
                    // up at least as many steps as snake's.
                    let per_round: u32 = steps.iter().sum();
                    let rounds = (total as usize).div_ceil(per_round as usize);
                    coordinate::run_fedavg(&mut clients, edge.clone(), &steps, rounds, &mut progress).await?
                };
                drop(children);
                r
            }
            "centralized" => {
                let (_child, mut client) = spawn_node(&args.shared, &args.shards, k, 0).await?;
                coordinate::run_central(&mut client, edge.clone(), total, steps[0], &mut progress).await?
            }
            other => bail!("unknown method {other:?}; expected snake, centralized or fedavg"),
        };
        std::fs::write(&adapter_path, &run.adapter)?;
        std::fs::write(&meta_path, serde_json::to_string_pretty(&MethodFile { cost: run.cost, curve: run.curve })?)?;
        eprintln!("snake: {m} done, {}", adapter_path.display());
    }

    // 3. Evaluation on the held-out text.
    let test = text_tokens(&l.tokenizer, &args.test_text)?;
    let test = &test[..args.eval_tokens.min(test.len())];
    let eval_path = args.out.join("eval.csv");
    let mut rows = read_eval(&eval_path)?;
    let all: Vec<String> = std::iter::once("none".to_string()).chain(methods.iter().cloned()).collect();
    for m in &all {
        let mut model: Option<SplitModel> = None;
        for ch in EvalChannel::ALL {
            let seeds = if ch.is_random() { args.seeds } else { 1 };
            for seed in 0..seeds {
                let key = (m.clone(), ch.name().to_string(), seed);
                if rows.contains_key(&key) {
                    continue;
                }
                if model.is_none() {
                    let mut fresh = SplitModel::load(&l.path)?;
                    if m != "none" {
                        let a = split_core::adapter::Adapter::load(&args.out.join(format!("{m}.safetensors")), &l.sha256)?;
                        fresh.apply_adapter(&a, k)?;
                    }
                    model = Some(fresh);
                }
                let r = evaluate(model.as_ref().expect("loaded above"), test, k, ppl, &l.link, ch, seed)?;
                eprintln!("snake: eval {m} {} seed {seed}: ppl {:.3} ({:.0} s)", ch.name(), r.ppl, r.seconds);
                append_eval(&eval_path, &key, r.ppl)?;
                rows.insert(key, r.ppl);
            }
        }
    }

    // 4. The report.
    crate::figure::load_font(args.font.as_deref())?;
    let mut files = BTreeMap::new();
    for m in &methods {
        let f: MethodFile = serde_json::from_str(&std::fs::read_to_string(args.out.join(format!("{m}.json")))?)?;
        files.insert(m.clone(), f);
    }
    draw_curves(&files, &args.out.join("curves.png"))?;
    let report = report(&args, k, &slices, total, &rows, &all, &files)?;
    std::fs::write(args.out.join("report.md"), &report)?;
    println!("{report}");
    Ok(())
}

/// The settings every file in `--out` depends on, kept in `settings.json`: a later run with
/// other settings would mix results, so it is refused.
fn check_settings(args: &RunArgs, model_sha256: &str, k: usize) -> Result<()> {
    let settings = serde_json::json!({
        "model_sha256": model_sha256,
        "split": k,
        "shards": args.shards,
        "rounds": args.rounds,
        "steps": args.steps,
        "window": args.shared.window,
        "choose_text": args.choose_text,
        "choose_tokens": args.choose_tokens,
        "test_text": args.test_text,
        "eval_tokens": args.eval_tokens,
    });
    let path = args.out.join("settings.json");
    if path.is_file() {
        let had: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?).with_context(|| format!("{} is not JSON", path.display()))?;
        if had != settings {
            bail!(
                "{} holds results made with other settings ({had}); these are {settings}. Use another --out, or remove it to start again",
                args.out.display()
            );
        }
        return Ok(());
    }
    std::fs::write(&path, serde_json::to_string_pretty(&settings)?)?;
    Ok(())
}

type EvalKey = (String, String, u64);

fn read_eval(path: &Path) -> Result<BTreeMap<EvalKey, f64>> {
    let mut rows = BTreeMap::new();
    if !path.is_file() {
        return Ok(rows);
    }
    for (i, line) in std::fs::read_to_string(path)?.lines().enumerate().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let bad = || anyhow::anyhow!("{} line {}: {line:?} is not method,channel,seed,ppl", path.display(), i + 1);
        if f.len() != 4 {
            return Err(bad());
        }
        rows.insert((f[0].to_string(), f[1].to_string(), f[2].parse().map_err(|_| bad())?), f[3].parse().map_err(|_| bad())?);
    }
    Ok(rows)
}

fn append_eval(path: &Path, key: &EvalKey, ppl: f64) -> Result<()> {
    use std::io::Write;
    let new = !path.is_file();
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    if new {
        writeln!(f, "method,channel,seed,ppl")?;
    }
    writeln!(f, "{},{},{},{ppl:.6}", key.0, key.1, key.2)?;
    Ok(())
}

/// The most fragile split with no fine-tuning, on the validation text (docs/snake.md): every k
/// in 0..L, cached in split.csv; the choice is capped at L − nodes.
fn choose_split(args: &RunArgs, l: &Loaded, nodes: usize, ppl: PplConfig) -> Result<usize> {
    let path = args.out.join("split.csv");
    let mut done: BTreeMap<usize, f64> = BTreeMap::new();
    if path.is_file() {
        for line in std::fs::read_to_string(&path)?.lines().skip(1) {
            if let Some((k, p)) = line.split_once(',') {
                done.insert(k.parse()?, p.parse()?);
            }
        }
    }
    let tokens = text_tokens(&l.tokenizer, &args.choose_text)?;
    let tokens = &tokens[..args.choose_tokens.min(tokens.len())];
    let n_layers = l.model.n_layers();
    for k in 0..n_layers {
        if done.contains_key(&k) {
            continue;
        }
        let r = evaluate(&l.model, tokens, k, ppl, &l.link, EvalChannel::Bad, 0)?;
        eprintln!("snake: choosing the split: k = {k}: ppl {:.3} on {} under the bad preset ({:.0} s)", r.ppl, args.choose_text, r.seconds);
        use std::io::Write;
        let new = !path.is_file();
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
        if new {
            writeln!(f, "k,ppl")?;
        }
        writeln!(f, "{k},{:.6}", r.ppl)?;
        done.insert(k, r.ppl);
    }
    let argmax = |range: std::ops::Range<usize>| range.max_by(|a, b| done[a].total_cmp(&done[b])).expect("a non-empty range");
    let (capped, uncapped) = (argmax(0..n_layers - nodes + 1), argmax(0..n_layers));
    eprintln!("snake: most fragile split k = {capped} (ppl {:.2}); over every k with an edge layer, k = {uncapped} ({:.2})", done[&capped], done[&uncapped]);
    Ok(capped)
}

fn moving_mean(xs: &[f64], w: usize) -> Vec<f64> {
    (0..xs.len()).map(|i| {
        let lo = i.saturating_sub(w - 1);
        xs[lo..=i].iter().sum::<f64>() / (i + 1 - lo) as f64
    }).collect()
}

/// Training loss against step for each method, channel examples and clean ones apart
/// (moving mean over 20 of each).
fn draw_curves(files: &BTreeMap<String, MethodFile>, out: &Path) -> Result<()> {
    let root = BitMapBackend::new(out, (1000, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, 2));
    for (panel, channel) in panels.iter().zip([true, false]) {
        let series: Vec<(String, Vec<(f64, f64)>)> = files
            .iter()
            .map(|(m, f)| {
                let pts: Vec<&CurvePoint> = f.curve.iter().filter(|p| p.channel == channel).collect();
                let smooth = moving_mean(&pts.iter().map(|p| p.loss).collect::<Vec<_>>(), 20);
                (m.clone(), pts.iter().zip(smooth).map(|(p, y)| (p.step as f64, y)).collect())
            })
            .collect();
        let xmax = series.iter().flat_map(|(_, s)| s.iter().map(|p| p.0)).fold(1.0, f64::max);
        let ys = series.iter().flat_map(|(_, s)| s.iter().map(|p| p.1));
        let (ymin, ymax) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| (a.min(y), b.max(y)));
        let (ymin, ymax) = if ymin.is_finite() { (ymin - 0.1, ymax + 0.1) } else { (0.0, 1.0) };
        let title = if channel { "examples over the bad channel" } else { "clean examples" };
        let mut chart = ChartBuilder::on(panel).caption(title, ("sans-serif", 18)).margin(10).x_label_area_size(35).y_label_area_size(50).build_cartesian_2d(0.0..xmax, ymin..ymax)?;
        chart.configure_mesh().x_desc("step").y_desc("training loss (moving mean of 20)").draw()?;
        for (i, (m, pts)) in series.into_iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart.draw_series(LineSeries::new(pts, color.stroke_width(2)))?.label(m).legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2)));
        }
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    }
    root.present()?;
    Ok(())
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

/// The report: the split choice, perplexity per method and channel with 95% t intervals over
/// the channel seeds, the targets met or missed, and each method's cost.
fn report(args: &RunArgs, k: usize, slices: &[std::ops::Range<usize>], total: u32, rows: &BTreeMap<EvalKey, f64>, methods: &[String], files: &BTreeMap<String, MethodFile>) -> Result<String> {
    let mut r = String::new();
    let get = |m: &str, ch: EvalChannel| -> Vec<f64> { rows.iter().filter(|((mm, c, _), _)| mm == m && c == ch.name()).map(|(_, &p)| p).collect() };
    let fmt = |xs: &[f64]| match xs.len() {
        0 => "—".to_string(),
        1 => format!("{:.2}", xs[0]),
        _ => {
            let (mean, _, half) = mean_ci(xs);
            format!("{mean:.2} ± {half:.2}")
        }
    };
    let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len().max(1) as f64;
    writeln!(r, "# Snake Learning report
")?;
    writeln!(r, "Generated by `splitinfer snake run --out {}` (docs/snake.md fixes every setting below).
", args.out.display())?;
    writeln!(r, "- Split k = {k}{}; node slices {slices:?}; {total} optimizer steps per method.", if args.split.is_some() { " (given with --split)" } else { " (the most fragile on the validation text, split.csv)" })?;
    writeln!(r, "- Held-out text: {} (first {} tokens, windows of 512, stride 256); channel seeds 0 to {}; ± is the 95% t interval over the seeds.\n", args.test_text, args.eval_tokens, args.seeds.saturating_sub(1))?;
    writeln!(r, "## Perplexity

| method | clean | bad preset | vehicular trace |
|---|---|---|---|")?;
    for m in methods {
        writeln!(r, "| {m} | {} | {} | {} |", fmt(&get(m, EvalChannel::Clean)), fmt(&get(m, EvalChannel::Bad)), fmt(&get(m, EvalChannel::Vehicular)))?;
    }
    let none_bad = mean(&get("none", EvalChannel::Bad));
    let none_clean = mean(&get("none", EvalChannel::Clean));
    let gain = |m: &str| (none_bad - mean(&get(m, EvalChannel::Bad))) / none_bad;
    writeln!(r, "
## Targets
")?;
    if files.contains_key("snake") {
        let (g, c) = (gain("snake"), mean(&get("snake", EvalChannel::Clean)) / none_clean - 1.0);
        writeln!(r, "- Robustness gained under the bad preset: {:.1}% (target ≥ 30%): **{}**.", 100.0 * g, if g >= 0.30 { "met" } else { "missed" })?;
        writeln!(r, "- Clean perplexity change: {:+.2}% (target ≤ +2%): **{}**.", 100.0 * c, if c <= 0.02 { "met" } else { "missed" })?;
        if files.contains_key("centralized") {
            let gc = gain("centralized");
            writeln!(r, "- Snake's gain against centralized's ({:.1}%): {:.2}× (target ≥ 0.9×): **{}**.", 100.0 * gc, g / gc, if g >= 0.9 * gc { "met" } else { "missed" })?;
        }
    }
    for m in methods.iter().filter(|m| *m != "none") {
        writeln!(r, "- {m}: gain under the bad preset {:.1}%, clean change {:+.2}%.", 100.0 * gain(m), 100.0 * (mean(&get(m, EvalChannel::Clean)) / none_clean - 1.0))?;
    }
    // Training on Brown text also adapts the model to the corpus, which lowers the clean figure
    // too; the channel's own penalty is the ratio of the noisy figure to the clean one.
    writeln!(r, "\n## The channel's penalty (noisy perplexity / clean, same method)\n\n| method | bad preset | vehicular trace |\n|---|---|---|")?;
    for m in methods {
        let clean = mean(&get(m, EvalChannel::Clean));
        writeln!(r, "| {m} | {:.2}× | {:.2}× |", mean(&get(m, EvalChannel::Bad)) / clean, mean(&get(m, EvalChannel::Vehicular)) / clean)?;
    }
    writeln!(r, "
## Cost (measured)

| method | rounds | bytes between processes | per round | trainable state per node (MiB) | peak RSS per node (MiB) | steps | wall (s) |
|---|---|---|---|---|---|---|---|")?;
    for (m, f) in files {
        let c = &f.cost;
        let list = |v: &[u64]| v.iter().map(|&b| format!("{:.2}", mib(b))).collect::<Vec<_>>().join(", ");
        writeln!(r, "| {m} | {} | {} | {:.0} | {} | {} | {} | {:.0} |", c.rounds, c.bytes_total, c.bytes_per_round, list(&c.trainable_state_bytes), list(&c.peak_rss_bytes), c.steps, c.wall_s)?;
    }
    writeln!(r, "
![training curves](curves.png)")?;
    Ok(r)
}
