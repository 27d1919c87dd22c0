//! The whole experiment (docs/design.md, Model-based RL) in one call, each costly stage cached on disk so a rerun
//! (or a stopped run) continues where it was: the profile (its CSV), the oracle's table (its
//! CSV) and model-free PPO (its JSON). Training on the surrogate takes minutes and is redone.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::algo::{self, A2cConfig, DqnConfig, PpoConfig, Trained, UpdateStats};
use crate::env::Actor;
use crate::evaluate::{self, Chooser, Fixed, Greedy, Learned, Outcome, Random, Table, ThresholdTable};
use crate::profile::{Profile, Sample};
use crate::real::{ChannelState, RealEnv};
use crate::reward::{Latency, RewardModel, Weights};
use crate::surrogate::{FitConfig, FitReport, Surrogate};
use crate::trace_env::{Layout, Real, TraceEnv};
use crate::traces::{self, SNR_RANGE};

#[derive(Debug, Clone)]
pub struct Config {
    pub out_dir: PathBuf,
    pub model: String,
    pub weights: Weights,
    /// The UE's time per layer as a multiple of the edge's.
    pub ue_slowdown: f64,
    /// Seeds of the learners on the surrogate (each trained once per seed).
    pub seeds: Vec<u64>,
    pub surrogate: FitConfig,
    /// Transitions each learner trains on against the surrogate.
    pub surrogate_steps: usize,
    /// Real evaluations model-free PPO may spend (default: as many as the profile used).
    pub mf_budget: Option<usize>,
    pub heldout_per_trace: usize,
    pub heldout_seed: u64,
    pub thresholds: Option<PathBuf>,
    /// Print progress lines.
    pub verbose: bool,
}

/// The split a policy settles on across an SNR sweep: (policy, m, [(snr_db, k)]).
pub type KSweep = (String, f64, Vec<(f64, usize)>);

/// A point of a learning curve: the held-out score of the greedy policy at that moment.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CurvePoint {
    pub env_steps: usize,
    pub real_evaluations: usize,
    pub seconds: f64,
    pub train_reward: f32,
    /// Mean held-out reward / the oracle's.
    pub score: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Learner {
    pub algorithm: String,
    pub seed: u64,
    pub outcome: Outcome,
    pub score: f64,
    pub curve: Vec<CurvePoint>,
    /// Real evaluations behind this policy (for the surrogate learners: the profile's).
    pub real_evaluations: usize,
    /// Wall time: real evaluations + surrogate fit + training.
    pub seconds: f64,
    pub train_seconds: f64,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ModelFree {
    pub budget: usize,
    /// The reward it was trained and scored with: another reward means another run.
    pub reward: String,
    pub outcome_ks: Vec<Vec<usize>>,
    pub curve: Vec<CurvePoint>,
    pub real_evaluations: usize,
    pub seconds: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Results {
    pub model: String,
    pub n_layers: usize,
    pub clean_ppl: f64,
    pub tokens_per_evaluation: usize,
    pub reward: RewardModel,
    pub reward_formula: String,
    pub profile_evaluations: usize,
    pub profile_seconds: f64,
    pub surrogate_fit: FitReport,
    pub surrogate_heldout_states: Vec<String>,
    pub oracle_evaluations: usize,
    pub oracle_seconds: f64,
    pub traces: Vec<(String, Vec<(f64, f64)>)>,
    pub oracle: Outcome,
    pub scale: Scale,
    pub baselines: Vec<Outcome>,
    pub learners: Vec<Learner>,
    pub model_free: Learner,
    /// Model-free PPO's first curve point at or above the model-based PPO's mean score.
    pub model_free_reached: Option<CurvePoint>,
    /// Chosen k over an SNR sweep, per (policy, m): `(snr_db, k)`.
    pub k_vs_snr: Vec<KSweep>,
    pub policy_file: PathBuf,
    pub policy_agrees: (usize, usize),
}

fn say(cfg: &Config, msg: impl AsRef<str>) {
    if cfg.verbose {
        eprintln!("rl: {}", msg.as_ref());
    }
}

/// Channel states held out from the surrogate's training: for each m, the profiled SNRs at about
/// a quarter and three quarters of the range (a bad and a good channel), never the ends.
fn heldout_states(samples: &[Sample]) -> Vec<ChannelState> {
    let mut ms: Vec<f64> = samples.iter().filter_map(|s| if let ChannelState::Fading { m, .. } = s.state { Some(m) } else { None }).collect();
    ms.sort_by(f64::total_cmp);
    ms.dedup();
    let mut out = Vec::new();
    for m in ms {
        let mut snrs: Vec<f64> = samples
            .iter()
            .filter_map(|s| match s.state {
                ChannelState::Fading { snr_db, m: mm } if mm == m => Some(snr_db),
                _ => None,
            })
            .collect();
        snrs.sort_by(f64::total_cmp);
        snrs.dedup();
        if snrs.len() >= 5 {
            let n = snrs.len() - 1;
            for i in [n / 4, (3 * n).div_ceil(4)] {
                out.push(ChannelState::Fading { snr_db: snrs[i.clamp(1, n - 1)], m });
            }
        } else if snrs.len() >= 3 {
            out.push(ChannelState::Fading { snr_db: snrs[snrs.len() / 2], m });
        }
    }
    out
}

/// How a policy's mean reward compares with the oracle's: `(R − floor) / (R_oracle − floor)`.
/// The weighted reward is positive by construction, so the floor is 0 and the score is the plain
/// ratio; the paper's reward goes far below 0 in bad channels, where a ratio means nothing, so
/// there the floor is the uniformly random split (0 = random, 1 = oracle).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Scale {
    pub oracle: f64,
    pub floor: f64,
}

impl Scale {
    pub fn of(&self, o: &Outcome) -> f64 {
        (o.mean_reward - self.floor) / (self.oracle - self.floor)
    }
}

/// The split a policy settles on at `state`: choose with its own previous choice in force until
/// the choice repeats.
fn steady_k(policy: &mut dyn Chooser, state: &ChannelState) -> Result<usize> {
    let mut k = policy.choose(state, None)?;
    for _ in 0..4 {
        let next = policy.choose(state, Some(k))?;
        if next == k {
            break;
        }
        k = next;
    }
    Ok(k)
}

pub fn run(env: &mut RealEnv, profile: &Profile, cfg: &Config) -> Result<Results> {
    std::fs::create_dir_all(&cfg.out_dir).with_context(|| format!("cannot create {}", cfg.out_dir.display()))?;
    let n = env.n_layers();
    let fading: Vec<Sample> = profile.samples.iter().filter(|s| s.state.mode() == "fading").cloned().collect();
    ensure!(!fading.is_empty(), "the profile has no fading states to train on; run `splitinfer rl profile` with --snr-dbs and --ms");
    let profile_seconds: f64 = fading.iter().map(|s| s.seconds).sum();
    let clean = profile.clean_ppl;

    // The surrogate: its error on held-out channel states, then refitted on everything.
    let held = heldout_states(&fading);
    let (train, test): (Vec<Sample>, Vec<Sample>) = fading.iter().cloned().partition(|s| !held.contains(&s.state));
    say(cfg, format!("surrogate: {} samples to fit, {} held out ({})", train.len(), test.len(), held.iter().map(|s| s.to_string()).collect::<Vec<_>>().join("; ")));
    let (_, fit) = Surrogate::fit(&cfg.model, n, clean, &train, &test, &cfg.surrogate)?;
    say(cfg, format!("surrogate: held-out RMSE of ln(PPL/PPL_clean) {:.3}, median relative PPL error {:.1}%", fit.heldout_rmse, 100.0 * fit.heldout_median_rel_err));
    let (surrogate, full_fit) = Surrogate::fit(&cfg.model, n, clean, &fading, &[], &cfg.surrogate)?;
    surrogate.save(&cfg.out_dir.join("surrogate.safetensors"))?;

    // The reward, with latency from this machine's per-layer time, measured once and kept so a
    // rerun trains on the same reward.
    let latency_file = cfg.out_dir.join("edge-layer-ms.txt");
    let edge_layer_ms = match std::fs::read_to_string(&latency_file).ok().and_then(|t| t.trim().parse::<f64>().ok()) {
        Some(ms) if ms > 0.0 => ms,
        _ => {
            let ms = env.layer_decode_ms(32)?;
            std::fs::write(&latency_file, format!("{ms}\n")).with_context(|| format!("cannot write {}", latency_file.display()))?;
            ms
        }
    };
    let latency = Latency {
        edge_layer_ms,
        ue_layer_ms: edge_layer_ms * cfg.ue_slowdown,
        hidden_bytes: env.hidden_bytes() as f64,
        bandwidth_hz: 20e6,
        fixed_rate_bps: 100e6,
        propagation_ms: 1.0,
    };
    let reward = RewardModel::new(cfg.weights, n, clean, latency, SNR_RANGE.0);
    say(cfg, format!("reward: {} (edge {:.3} ms/layer, UE {:.3})", cfg.weights.describe(), latency.edge_layer_ms, latency.ue_layer_ms));

    // The oracle's table on the held-out traces.
    let traces = traces::heldout(cfg.heldout_per_trace, cfg.heldout_seed);
    let started = Instant::now();
    let mut last = 0;
    let table = evaluate::oracle_table(env, &traces, &cfg.out_dir.join("oracle.csv"), &mut |done, total| {
        if cfg.verbose && (done == total || started.elapsed().as_secs() >= last + 30) {
            last = started.elapsed().as_secs();
            eprintln!("rl: oracle table {done}/{total}");
        }
    })?;
    let oracle = evaluate::oracle(&table, &reward);
    say(cfg, format!("oracle: mean reward {:.4} ({} real evaluations)", oracle.mean_reward, table.evaluations));

    // Baselines; the random one also sets the paper reward's floor.
    let random = evaluate::evaluate(&table, &reward, &mut Random(StdRng::seed_from_u64(cfg.heldout_seed), n))?;
    let scale = Scale { oracle: oracle.mean_reward, floor: if matches!(cfg.weights, Weights::Paper { .. }) { random.mean_reward } else { 0.0 } };
    let best_fixed = best_fixed_on_profile(&reward, &fading);
    say(cfg, format!("random: {:.1}% of the oracle", 100.0 * scale.of(&random)));
    let mut baselines = vec![random];
    let mut choosers: Vec<Box<dyn Chooser + '_>> = vec![
        Box::new(Fixed(0)),
        Box::new(Greedy { surrogate: &surrogate, reward }),
    ];
    if best_fixed != 0 {
        choosers.insert(1, Box::new(Fixed(best_fixed)));
    }
    if let Some(t) = &cfg.thresholds {
        choosers.push(Box::new(ThresholdTable::new(t, 1.0)));
    }
    for c in &mut choosers {
        let o = evaluate::evaluate(&table, &reward, c.as_mut())?;
        say(cfg, format!("{}: {:.1}% of the oracle", o.name, 100.0 * scale.of(&o)));
        baselines.push(o);
    }
    drop(choosers);

    // Learners on the surrogate.
    let layout = Layout::fading(n);
    let mut learners = Vec::new();
    let mut mb_ppo: Option<Trained> = None;
    for algorithm in ["ppo", "a2c", "dqn"] {
        for &seed in &cfg.seeds {
            let mut tenv = TraceEnv::new(&surrogate, reward, 16, 16, seed);
            let mut curve = Vec::new();
            let mut on_update = |s: &UpdateStats, actor: &dyn Actor| -> Result<bool> {
                if s.update % 5 == 1 || s.env_steps >= cfg.surrogate_steps {
                    let o = evaluate::evaluate(&table, &reward, &mut Learned { name: String::new(), actor, layout: layout.clone() })?;
                    curve.push(CurvePoint { env_steps: s.env_steps, real_evaluations: 0, seconds: s.seconds, train_reward: s.mean_reward, score: scale.of(&o) });
                }
                Ok(true)
            };
            let trained = match algorithm {
                "ppo" => algo::ppo::train(&mut tenv, &PpoConfig { seed, total_steps: cfg.surrogate_steps, rollout_len: 32, ..Default::default() }, &mut on_update)?,
                "a2c" => algo::a2c::train(&mut tenv, &A2cConfig { seed, total_steps: cfg.surrogate_steps, ..Default::default() }, &mut on_update)?,
                // The channel does not depend on the split, only the switching cost ties steps
                // together: a short horizon is enough and steadies the Q targets.
                _ => algo::dqn::train(&mut tenv, &DqnConfig { seed, total_steps: cfg.surrogate_steps, gamma: 0.9, ..Default::default() }, &mut on_update)?,
            };
            let train_seconds = trained.curve.last().map_or(0.0, |c| c.seconds);
            let name = format!("MB-{}", algorithm.to_uppercase());
            let outcome = evaluate::evaluate(&table, &reward, &mut Learned { name: name.clone(), actor: &trained, layout: layout.clone() })?;
            let sc = scale.of(&outcome);
            say(cfg, format!("{name} seed {seed}: {:.1}% of the oracle after {:.1} s of training", 100.0 * sc, train_seconds));
            learners.push(Learner {
                algorithm: name,
                seed,
                outcome,
                score: sc,
                curve,
                real_evaluations: fading.len(),
                seconds: profile_seconds + full_fit.seconds + train_seconds,
                train_seconds,
            });
            if algorithm == "ppo" && mb_ppo.is_none() {
                mb_ppo = Some(trained);
            }
        }
    }
    let mb_ppo = mb_ppo.context("no seeds to train with")?;
    let mb_score = learners.iter().filter(|l| l.algorithm == "MB-PPO").map(|l| l.score).sum::<f64>() / cfg.seeds.len() as f64;

    // Model-free PPO on the real environment, under a budget of real evaluations.
    let budget = cfg.mf_budget.unwrap_or(fading.len());
    let mf = model_free(env, &table, &reward, &scale, &layout, budget, cfg)?;
    let mf_outcome = evaluate::outcome("MF-PPO (real env)".into(), &table, &reward, mf.outcome_ks.clone());
    let mf_score = scale.of(&mf_outcome);
    let model_free_reached = mf.curve.iter().find(|c| c.score >= mb_score).cloned();
    let model_free = Learner {
        algorithm: "MF-PPO".into(),
        seed: 0,
        outcome: mf_outcome,
        score: mf_score,
        curve: mf.curve.clone(),
        real_evaluations: mf.real_evaluations,
        seconds: mf.seconds,
        train_seconds: mf.seconds,
    };

    // Chosen k against SNR.
    let mut k_vs_snr = Vec::new();
    for m in [1.0, 3.0] {
        let sweep: Vec<f64> = (-5..=40).map(f64::from).collect();
        let mut greedy = Greedy { surrogate: &surrogate, reward };
        let mut ppo = Learned { name: "MB-PPO".into(), actor: &mb_ppo, layout: layout.clone() };
        for (name, policy) in [("greedy on surrogate", &mut greedy as &mut dyn Chooser), ("MB-PPO", &mut ppo)] {
            let ks = sweep.iter().map(|&snr| Ok((snr, steady_k(policy, &ChannelState::Fading { snr_db: snr, m })?))).collect::<Result<Vec<_>>>()?;
            k_vs_snr.push((name.to_string(), m, ks));
        }
    }

    // The deployable policy, checked against the agent's own reading of it.
    let policy_file = cfg.out_dir.join("policy-mb-ppo.safetensors");
    let agrees = export_policy(&mb_ppo, &layout, &cfg.model, n, &reward, &policy_file, &table)?;
    say(cfg, format!("policy file {}: the agent's forward pass agrees on {}/{} held-out states", policy_file.display(), agrees.0, agrees.1));

    Ok(Results {
        model: cfg.model.clone(),
        n_layers: n,
        clean_ppl: clean,
        tokens_per_evaluation: env.scored_tokens(),
        reward,
        reward_formula: cfg.weights.describe(),
        profile_evaluations: fading.len(),
        profile_seconds,
        surrogate_fit: fit,
        surrogate_heldout_states: held.iter().map(|s| s.to_string()).collect(),
        oracle_evaluations: table.evaluations,
        oracle_seconds: table.seconds,
        traces: table
            .traces
            .iter()
            .map(|t| (t.name.clone(), t.states.iter().map(|s| if let ChannelState::Fading { snr_db, m } = *s { (snr_db, m) } else { (f64::NAN, f64::NAN) }).collect()))
            .collect(),
        oracle,
        scale,
        baselines,
        learners,
        model_free,
        model_free_reached,
        k_vs_snr,
        policy_file,
        policy_agrees: agrees,
    })
}

/// The single split with the best mean reward over the profile's states, from the profile's own
/// (real) mean perplexities: what a careful engineer would fix the split to.
fn best_fixed_on_profile(reward: &RewardModel, fading: &[Sample]) -> usize {
    let cells = crate::profile::summarize(fading);
    let mut ks: Vec<usize> = cells.iter().map(|c| c.k).collect();
    ks.sort_unstable();
    ks.dedup();
    let n_states = cells.iter().filter(|c| c.k == ks[0]).count();
    let total = |k: usize| -> f64 {
        let mine: Vec<&crate::profile::Cell> = cells.iter().filter(|c| c.k == k).collect();
        // A split missing at some state of the grid cannot be compared fairly.
        if mine.len() < n_states {
            return f64::NEG_INFINITY;
        }
        mine.iter().map(|c| reward.reward(k, Some(k), &c.state, c.mean)).sum()
    };
    ks[evaluate::argmax(ks.iter().map(|&k| total(k)))]
}

fn model_free(env: &mut RealEnv, table: &Table, reward: &RewardModel, scale: &Scale, layout: &Layout, budget: usize, cfg: &Config) -> Result<ModelFree> {
    let cache = cfg.out_dir.join("model-free-ppo.json");
    if let Ok(text) = std::fs::read_to_string(&cache) {
        let mf: ModelFree = serde_json::from_str(&text).with_context(|| format!("{} is not a model-free result; delete it to rerun", cache.display()))?;
        if mf.budget == budget && mf.reward == reward.weights.describe() {
            say(cfg, format!("model-free PPO: reusing {}", cache.display()));
            return Ok(mf);
        }
    }
    say(cfg, format!("model-free PPO on the real environment: {budget} real evaluations"));
    let before = (env.evaluations(), env.seconds());
    let started = Instant::now();
    let mut tenv = TraceEnv::new(Real { env, next_seed: 2_000_000 }, *reward, 4, 16, 0);
    let mut curve = Vec::new();
    let mut last_ks = Vec::new();
    // Short rollouts (32 evaluations per update), so the budget buys many updates.
    let rollout_len = (budget / 4).clamp(1, 8);
    let ppo = PpoConfig { seed: 0, total_steps: budget, rollout_len, minibatch: 16, epochs: 4, ..Default::default() };
    algo::ppo::train(&mut tenv, &ppo, &mut |s: &UpdateStats, actor: &dyn Actor| {
        let o = evaluate::evaluate(table, reward, &mut Learned { name: String::new(), actor, layout: layout.clone() })?;
        let evals = s.real_evaluations - before.0;
        curve.push(CurvePoint { env_steps: s.env_steps, real_evaluations: evals, seconds: started.elapsed().as_secs_f64(), train_reward: s.mean_reward, score: scale.of(&o) });
        if cfg.verbose {
            eprintln!("rl: model-free PPO: {evals}/{budget} real evaluations, {:.1}% of the oracle", 100.0 * scale.of(&o));
        }
        last_ks = o.ks;
        Ok(evals < budget)
    })?;
    let real_evaluations = tenv.quality.env.evaluations() - before.0;
    let mf = ModelFree { budget, reward: reward.weights.describe(), outcome_ks: last_ks, curve, real_evaluations, seconds: started.elapsed().as_secs_f64() };
    std::fs::write(&cache, serde_json::to_string_pretty(&mf)?).with_context(|| format!("cannot write {}", cache.display()))?;
    Ok(mf)
}

/// Writes the agent's policy file and checks the agent's plain forward pass picks the same split
/// as the trained network on every held-out state; returns (agreeing, total).
fn export_policy(trained: &Trained, layout: &Layout, model: &str, n: usize, reward: &RewardModel, path: &Path, table: &Table) -> Result<(usize, usize)> {
    use agent::policy::learned::{FORMAT, Layer, PolicyFile, PolicyMeta};
    let layers = trained
        .net
        .export()?
        .into_iter()
        .map(|d| Layer { inputs: d.inputs, outputs: d.outputs, weight: d.weight, bias: d.bias })
        .collect();
    let file = PolicyFile {
        meta: PolicyMeta {
            format: FORMAT.into(),
            algorithm: "mb-ppo".into(),
            model: model.into(),
            n_layers: n as u32,
            features: layout.features.clone(),
            lower: layout.lower.clone(),
            upper: layout.upper.clone(),
            mean: layout.mean(),
            std: layout.std(),
            activation: match trained.net.activation() {
                crate::nets::Activation::Tanh => "tanh".into(),
                crate::nets::Activation::Relu => "relu".into(),
            },
            description: format!("PPO trained on the reward surrogate; reward {}", reward.weights.describe()),
        },
        layers,
    };
    file.save(path)?;
    let back = PolicyFile::load(path)?;
    let (mut agree, mut total) = (0, 0);
    for trace in &table.traces {
        for (t, state) in trace.states.iter().enumerate() {
            let prev = (t > 0).then_some(t % (n + 1));
            let raw = layout.raw(state, prev);
            total += 1;
            agree += usize::from(back.choose(&raw) as usize == trained.act(&layout.normalize(&raw))?[0]);
        }
    }
    Ok((agree, total))
}
