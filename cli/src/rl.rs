//! `splitinfer rl …`: the model-based RL pipeline (docs/design.md, Model-based RL) from the command line: the
//! profile of the real environment, and the report that trains and compares every policy.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use split_core::perplexity::PplConfig;
use split_core::wire::WireDType;
use splitinfer_rl::pipeline;
use splitinfer_rl::plots;
use splitinfer_rl::profile::{self, Sample};
use splitinfer_rl::report;
use splitinfer_rl::reward::Weights;
use splitinfer_rl::surrogate::FitConfig;
use splitinfer_rl::real::{ChannelState, RealEnv};

use super::{ModelArgs, load, read_text};

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per run
pub enum RlCommand {
    /// Perplexity over a grid of split points × channel states (fading: SNR × m; the reference
    /// erasure mode: p), repeated over channel seeds. Rows already in --out are not evaluated
    /// again: stop it any time and run the same command to resume.
    Profile(ProfileArgs),
    /// The whole experiment, written as a markdown report with PNG figures: the profile (run or
    /// resumed), the reward surrogate and its held-out error, PPO/A2C/DQN trained on it, PPO
    /// trained on the real environment under a budget of real evaluations, the baselines (fixed,
    /// threshold table, greedy on the surrogate, random) and the oracle, all scored on held-out
    /// channel traces; plus the trained policy as a file the agent loads.
    Report(ReportArgs),
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub env: EnvArgs,
    #[command(flatten)]
    pub grid: GridArgs,
    /// Directory of the report and everything it caches. Default: docs/rl/MODEL.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// The reward: `weighted` (quality, UE load, latency, switching) or `paper`, the authors'
    /// α·(PPL_clean − PPL)/PPL_clean + β·(L − k)/L.
    #[arg(long, default_value = "weighted", value_parser = ["weighted", "paper"])]
    pub reward: String,
    /// Weight of the quality term, PPL_clean/PPL.
    #[arg(long, default_value_t = 1.0)]
    pub w_quality: f64,
    /// Weight of the UE's load, (L − k)/L. Quality comes first by default: at 0.2 for load and
    /// latency, k = 1 was within 0.2% of the oracle everywhere here and the choice did not matter.
    #[arg(long, default_value_t = 0.1)]
    pub w_load: f64,
    /// Weight of the latency term, 1 − t/t_max.
    #[arg(long, default_value_t = 0.1)]
    pub w_latency: f64,
    /// Cost of moving the split.
    #[arg(long, default_value_t = 0.02)]
    pub w_switch: f64,
    /// α of --reward paper.
    #[arg(long, default_value_t = 1.0)]
    pub alpha: f64,
    /// β of --reward paper.
    #[arg(long, default_value_t = 1.0)]
    pub beta: f64,
    /// The UE's time per layer as a multiple of this machine's (the edge's).
    #[arg(long, default_value_t = 3.0)]
    pub ue_slowdown: f64,
    /// Seeds of the learners trained on the surrogate.
    #[arg(long, value_delimiter = ',', default_values_t = [0u64, 1, 2])]
    pub train_seeds: Vec<u64>,
    /// Transitions each learner trains on against the surrogate.
    #[arg(long, default_value_t = 100_000)]
    pub surrogate_steps: usize,
    /// Gradient steps of the surrogate's fit.
    #[arg(long, default_value_t = 3000)]
    pub fit_steps: usize,
    /// Real evaluations model-free PPO may spend (default: as many as the profile holds).
    #[arg(long)]
    pub mf_budget: Option<usize>,
    /// States per held-out trace (each costs L + 1 real evaluations, once).
    #[arg(long, default_value_t = 10)]
    pub heldout_per_trace: usize,
    /// The threshold table to compare against (default: deploy/thresholds.csv when it exists and
    /// the model is the default one it was written for).
    #[arg(long)]
    pub thresholds: Option<PathBuf>,
    /// Profiles of other models to draw beside this one in ppl_vs_split.png.
    #[arg(long, value_delimiter = ',')]
    pub compare: Vec<PathBuf>,
    /// TrueType font for the figures' labels (default: DejaVu Sans from fonts-dejavu-core).
    #[arg(long, env = "SPLITINFER_FONT")]
    pub font: Option<PathBuf>,
}

/// The real environment: model, evaluation text and the token budget of one evaluation.
#[derive(Debug, Args)]
pub struct EnvArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Plain-text file to score. Default: the Brown news files ca01-ca44.
    #[arg(long, env = "SPLITINFER_TEXT")]
    pub text: Option<PathBuf>,
    /// Tokens of the text scored per real evaluation (the first ones of the text).
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// Perplexity window (tokens of context per forward pass).
    #[arg(long, default_value_t = 256)]
    pub window: usize,
    #[arg(long, default_value_t = 256)]
    pub stride: usize,
    /// Element type of the hidden state on the wire.
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16", "bf16"])]
    pub wire: String,
}

impl EnvArgs {
    /// Loads the model and caches its clean boundaries (one forward pass), printing what it did.
    pub fn open(&self) -> Result<(String, RealEnv)> {
        let (_, text) = read_text(self.text.as_deref())?;
        let (model, tokenizer) = load(&self.model)?;
        let mut tokens = tokenizer.encode(&text)?;
        if tokens.len() < 2 {
            bail!("the evaluation text has {} token(s); at least 2 are needed", tokens.len());
        }
        tokens.truncate(self.max_tokens.max(2));
        let name = match &self.model.model {
            Some(p) => p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into()),
            None => self.model.model_name.clone(),
        };
        let dtype: WireDType = self.wire.parse()?;
        let started = std::time::Instant::now();
        let env = RealEnv::new(model, tokens, PplConfig { window: self.window, stride: self.stride }, dtype)?;
        eprintln!(
            "rl: {name}: {} layers, {} tokens per evaluation, clean perplexity {:.3} (boundaries cached in {:.1} s)",
            env.n_layers(),
            env.scored_tokens(),
            env.clean_ppl(),
            started.elapsed().as_secs_f64()
        );
        Ok((name, env))
    }
}

/// The grid of the profile.
#[derive(Debug, Args)]
pub struct GridArgs {
    /// Split points (default: every k in 0..=L).
    #[arg(long, value_delimiter = ',')]
    pub ks: Vec<usize>,
    /// Mean SNRs (dB) of the fading states.
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true, default_values_t = [-5.0, 0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 40.0])]
    pub snr_dbs: Vec<f64>,
    /// Nakagami m of the fading states (1 = Rayleigh).
    #[arg(long, value_delimiter = ',', default_values_t = [1.0, 3.0])]
    pub ms: Vec<f64>,
    /// Erasure probabilities of the reference mode (none: leave the mode out).
    #[arg(long, value_delimiter = ',', default_values_t = [0.01, 0.05, 0.1, 0.2, 0.3])]
    pub erasure_ps: Vec<f64>,
    /// Channel seeds per grid point.
    #[arg(long, default_value_t = 2)]
    pub seeds: u64,
}

impl GridArgs {
    pub fn states(&self) -> Result<Vec<ChannelState>> {
        if let Some(m) = self.ms.iter().find(|&&m| !(m >= 0.5 && m.is_finite())) {
            bail!("Nakagami m {m} must be at least 0.5");
        }
        if let Some(p) = self.erasure_ps.iter().find(|&&p| !(0.0..=1.0).contains(&p)) {
            bail!("erasure probability {p} is outside [0, 1]");
        }
        if let Some(s) = self.snr_dbs.iter().find(|s| !s.is_finite()) {
            bail!("SNR {s} dB is not a finite number");
        }
        let mut states: Vec<ChannelState> =
            self.ms.iter().flat_map(|&m| self.snr_dbs.iter().map(move |&snr_db| ChannelState::Fading { snr_db, m })).collect();
        states.extend(self.erasure_ps.iter().map(|&p| ChannelState::Erasure { p }));
        Ok(states)
    }

    pub fn ks(&self, n_layers: usize) -> Vec<usize> {
        if self.ks.is_empty() { (0..=n_layers).collect() } else { self.ks.clone() }
    }
}

#[derive(Debug, Args)]
pub struct ProfileArgs {
    #[command(flatten)]
    pub env: EnvArgs,
    #[command(flatten)]
    pub grid: GridArgs,
    /// The profile CSV (one row per evaluation); a summary with mean and spread per grid point is
    /// written beside it as *.summary.csv. Default: docs/rl/MODEL/profile.csv.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run(cmd: RlCommand) -> Result<()> {
    match cmd {
        RlCommand::Profile(args) => {
            args.grid.states()?;
            let (name, mut env) = args.env.open()?;
            let out = args.out.unwrap_or_else(|| PathBuf::from(format!("docs/rl/{name}/profile.csv")));
            let p = run_profile(&mut env, &args.grid, &out)?;
            println!("{} evaluations in {}; summary in {}", p.samples.len(), out.display(), summary_path(&out).display());
            Ok(())
        }
        RlCommand::Report(args) => report(args),
    }
}

pub fn summary_path(csv: &std::path::Path) -> PathBuf {
    csv.with_extension("summary.csv")
}

/// A progress bar on stderr that counts evaluations and shows the last one.
pub fn bar(total: usize, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(total as u64);
    pb.set_style(
        ProgressStyle::with_template(&format!("{what} [{{elapsed_precise}}] {{bar:30}} {{pos}}/{{len}} eta {{eta}} {{msg}}"))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb
}

/// Runs (or resumes) the grid into `out` and writes its summary.
pub fn run_profile(env: &mut RealEnv, grid: &GridArgs, out: &std::path::Path) -> Result<profile::Profile> {
    let ks = grid.ks(env.n_layers());
    let states = grid.states()?;
    let seeds: Vec<u64> = (0..grid.seeds.max(1)).collect();
    let pb = bar(0, "profile");
    // Without a terminal (a log file, CI) the bar is hidden: a line every 30 s instead.
    let tty = std::io::stderr().is_terminal();
    let started = std::time::Instant::now();
    let mut last_line = 0;
    let profile = profile::run_grid(env, &ks, &states, &seeds, out, &mut |done, total, s: Option<&Sample>| {
        pb.set_length(total as u64);
        pb.set_position(done as u64);
        if let Some(s) = s {
            pb.set_message(format!("k {} at {}: ppl {:.1}", s.k, s.state, s.ppl));
        }
        let secs = started.elapsed().as_secs();
        if !tty && (done == total || secs >= last_line + 30) {
            last_line = secs;
            eprintln!("rl: profile {done}/{total} evaluations ({secs} s)");
        }
    })?;
    pb.finish_and_clear();
    std::fs::write(summary_path(out), profile::summary_csv(&profile::summarize(&profile.samples)))?;
    Ok(profile)
}

fn report(args: ReportArgs) -> Result<()> {
    args.grid.states()?;
    super::figure::load_font(args.font.as_deref())?;
    let weights = match args.reward.as_str() {
        "paper" => Weights::Paper { alpha: args.alpha, beta: args.beta },
        _ => Weights::Weighted { quality: args.w_quality, load: args.w_load, latency: args.w_latency, switch: args.w_switch },
    };
    if args.train_seeds.is_empty() {
        bail!("--train-seeds needs at least one seed");
    }
    let mut compared = Vec::new();
    for p in &args.compare {
        let prof = profile::read(p)?;
        if prof.samples.is_empty() {
            bail!("--compare {}: no profile there (run `splitinfer rl profile` for that model first)", p.display());
        }
        let name = p.parent().and_then(|d| d.file_name()).map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| p.display().to_string());
        compared.push((name, prof.clean_ppl, profile::summarize(&prof.samples)));
    }
    let (name, mut env) = args.env.open()?;
    let out_dir = args.out_dir.clone().unwrap_or_else(|| PathBuf::from(format!("docs/rl/{name}")));
    let thresholds = args.thresholds.clone().or_else(|| {
        let t = PathBuf::from("deploy/thresholds.csv");
        (name == "smollm2-135m" && t.is_file()).then_some(t)
    });
    let csv = out_dir.join("profile.csv");
    let prof = run_profile(&mut env, &args.grid, &csv)?;
    let cfg = pipeline::Config {
        out_dir: out_dir.clone(),
        model: name.clone(),
        weights,
        ue_slowdown: args.ue_slowdown,
        seeds: args.train_seeds.clone(),
        surrogate: FitConfig { steps: args.fit_steps, ..Default::default() },
        surrogate_steps: args.surrogate_steps,
        mf_budget: args.mf_budget,
        heldout_per_trace: args.heldout_per_trace,
        heldout_seed: 0,
        thresholds,
        verbose: true,
    };
    let results = pipeline::run(&mut env, &prof, &cfg)?;
    let mut models = vec![(name.clone(), prof.clean_ppl, profile::summarize(&prof.samples))];
    let compared_names: Vec<String> = compared.iter().map(|c| c.0.clone()).collect();
    models.extend(compared);
    plots::ppl_vs_split(&models, &out_dir.join("ppl_vs_split.png"))?;
    plots::training(&results, &out_dir.join("training.png"))?;
    plots::k_vs_snr(&results, &out_dir.join("k_vs_snr.png"))?;
    std::fs::write(out_dir.join("results.json"), serde_json::to_string_pretty(&results)?)?;
    let command = std::iter::once("splitinfer".to_string())
        .chain(std::env::args().skip(1).map(|a| if a.contains(' ') { format!("'{a}'") } else { a }))
        .collect::<Vec<_>>()
        .join(" ");
    std::fs::write(out_dir.join("report.md"), report::markdown(&results, &command, &compared_names))?;
    println!("report: {}", out_dir.join("report.md").display());
    Ok(())
}
