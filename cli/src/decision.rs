//! `splitinfer decision`: the decision problem of docs/decision.md. It measures the NLL of every
//! action the objective file lists, on the profile text and on the test text, into resumable
//! CSVs. Then, with the edge's measured step times, it writes the report: the expected oracle
//! against the best fixed action on held-out states.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use split_core::assets;
use split_core::calibration::Calibration;
use split_core::perplexity::PplConfig;
use split_core::wire::WireDType;
use splitinfer_rl::decision::{self, EdgeTimes, ModelShape, NllTable, Objective, Provenance, Role};
use splitinfer_rl::link_profile;

#[derive(Debug, Args)]
pub struct DecisionArgs {
    #[command(flatten)]
    pub model: crate::ModelArgs,
    /// The decision problem: actions, states, costs, constraints, texts and seeds.
    #[arg(long, default_value = "docs/decision/objective.json")]
    pub objective: PathBuf,
    /// Directory for profile-<text>.csv (resumable), edge-time.csv (from `batch_bench --csv`;
    /// scripts/decision.sh measures it), report.md and oracle.csv. Default:
    /// docs/decision/<model name>.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Tokens of each text to score per evaluation.
    #[arg(long, default_value_t = 4096)]
    pub max_tokens: usize,
    #[arg(long, default_value_t = 512)]
    pub window: usize,
    #[arg(long, default_value_t = 512)]
    pub stride: usize,
    /// Stop after this many new evaluations (0 = all); a later run goes on.
    #[arg(long, default_value_t = 0)]
    pub budget: usize,
    /// Only write the report from the CSVs there.
    #[arg(long)]
    pub report_only: bool,
    /// Then train the learners of the learners' file on the problem (resumable:
    /// learning.csv) and write learning.md and learning.png.
    #[arg(long)]
    pub learn: bool,
    /// The learners' settings, for --learn.
    #[arg(long, default_value = "docs/decision/learning.json")]
    pub learning: PathBuf,
    /// TrueType font for the figure's labels (default: DejaVu Sans from fonts-dejavu-core).
    #[arg(long, env = "SPLITINFER_FONT")]
    pub font: Option<PathBuf>,
    /// Calibration statistics (default: calibration/<model name>.json).
    #[arg(long, env = "SPLITINFER_CALIBRATION")]
    pub calibration: Option<PathBuf>,
}

fn csv_for(dir: &Path, slice: &str) -> PathBuf {
    dir.join(format!("profile-{slice}.csv"))
}

/// The short hash of the last commit that changed the objective file, or why there is none.
fn objective_commit(path: &Path) -> String {
    let out = std::process::Command::new("git").args(["log", "-1", "--format=%h", "--"]).arg(path).output();
    match out {
        Ok(o) if o.status.success() && !o.stdout.is_empty() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        _ => "unknown (not committed, or not a git checkout)".into(),
    }
}

pub fn run(args: DecisionArgs) -> Result<()> {
    let objective = Objective::load(&args.objective)?;
    let path = split_core::bundle::resolve_model(args.model.model.as_deref(), &args.model.model_name)?;
    let sha = assets::sha256_file(&path)?;
    let name = assets::MODELS.iter().find(|m| m.sha256 == sha).map_or(args.model.model_name.clone(), |m| m.name.to_string());
    if name != objective.model {
        bail!("the objective {} is for {}, not {name}", args.objective.display(), objective.model);
    }
    let dir = args.dir.clone().unwrap_or_else(|| PathBuf::from("docs/decision").join(&name));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (model, tokenizer) = crate::load(&args.model)?;
    let shape = ModelShape::of(model.config());
    for &k in &objective.actions.ks {
        if k > shape.layers {
            bail!("the objective's split {k} is outside 0..={} for {name}", shape.layers);
        }
    }
    drop(model);
    let mut labels = Vec::new();
    for (role, slice) in [(Role::Profile, &objective.texts.profile), (Role::Test, &objective.texts.test)] {
        let (text, label) = assets::slice_text(slice, &mut |m| eprintln!("decision: {m}"))?;
        let mut tokens = tokenizer.encode(&text)?;
        tokens.truncate(args.max_tokens.max(2));
        let scored = tokens.len().saturating_sub(1);
        labels.push(format!("{scored} tokens of {label}"));
        if args.report_only {
            continue;
        }
        let calibration_path = args.calibration.clone().unwrap_or_else(|| PathBuf::from("calibration").join(format!("{name}.json")));
        let calibration = Calibration::load(&calibration_path, Some(&sha))?;
        let started = Instant::now();
        eprintln!("decision: caching the clean hidden state at every boundary for {label}");
        let (model, _) = crate::load(&args.model)?;
        let mut e = splitinfer_rl::real::RealEnv::new(model, tokens, PplConfig { window: args.window, stride: args.stride }, WireDType::F32)?;
        let budget = if args.budget == 0 { usize::MAX } else { args.budget };
        let csv = csv_for(&dir, slice);
        link_profile::run(&mut e, Some(&calibration), &objective.plan(role), budget, &csv, &mut |done, total, row| match row {
            Some(r) => {
                let elapsed = started.elapsed().as_secs_f64();
                eprintln!(
                    "decision: {slice} {done}/{total} k={} {} {} seed {} nll {:.4} ({:.1}s); ~{:.0}s left",
                    r.k,
                    r.mode,
                    r.channel,
                    r.seed,
                    r.nll,
                    r.seconds,
                    elapsed / done as f64 * (total - done) as f64
                );
            }
            None if total == 0 => eprintln!("decision: every {slice} point is already in {}", csv.display()),
            None => eprintln!("decision: {total} {slice} evaluations to run"),
        })?;
    }
    let edge_csv = dir.join("edge-time.csv");
    let edge = EdgeTimes::load(&edge_csv).context("measure it with scripts/decision.sh, which runs split-core's batch_bench --csv")?;
    let rows = |slice: &str| -> Result<NllTable> {
        let csv = csv_for(&dir, slice);
        let r = link_profile::read_rows(&csv)?;
        NllTable::new(&r).with_context(|| format!("{} (run without --report-only to measure it)", csv.display()))
    };
    let (profile, test) = (rows(&objective.texts.profile)?, rows(&objective.texts.test)?);
    let primary = decision::evaluate(&objective, &shape, &edge, &profile, &test)
        .context("the profiles or the edge times miss a point the objective needs (run without --report-only, and scripts/decision.sh for the edge)")?;
    let variants = objective
        .sensitivity
        .iter()
        .map(|v| Ok((v.name.clone(), decision::evaluate(&objective.variant(v), &shape, &edge, &profile, &test)?)))
        .collect::<Result<Vec<_>>>()?;
    let provenance = Provenance {
        model_name: name.clone(),
        objective_commit: objective_commit(&args.objective),
        profile_text: labels[0].clone(),
        test_text: labels[1].clone(),
    };
    let report = decision::report(&objective, &shape, &edge, &primary, &variants, &provenance);
    std::fs::write(dir.join("report.md"), &report)?;
    std::fs::write(dir.join("oracle.csv"), decision::oracle_csv(&primary))?;
    println!("{report}");
    println!("report {} and oracle.csv written", dir.join("report.md").display());
    if args.learn {
        use splitinfer_rl::decision_learn::{self as learn, Costs, Learning};
        let learning = Learning::load(&args.learning)?;
        crate::figure::load_font(args.font.as_deref())?;
        let costs = Costs { o: &objective, m: &shape, edge: &edge };
        let rows = learn::run_curves(&costs, &profile, &primary, &learning, &dir.join("learning.csv"), &mut |m| eprintln!("decision: {m}"))?;
        let measured = link_profile::read_rows(&csv_for(&dir, &objective.texts.profile))?;
        let per_eval = measured.iter().map(|r| r.seconds).sum::<f64>() / measured.len().max(1) as f64;
        let md = learn::learning_report(&objective, &learning, &primary, &rows, per_eval, &objective_commit(&args.learning));
        std::fs::write(dir.join("learning.md"), &md)?;
        learn::learning_plot(&objective, &primary, &rows, &dir.join("learning.png"))?;
        println!("{md}");
        println!("learning report {} and learning.png written", dir.join("learning.md").display());
    }
    Ok(())
}
