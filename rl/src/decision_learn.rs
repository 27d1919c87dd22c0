//! Learners on the decision problem of [`crate::decision`], scored against its expected oracle.
//!
//! - **The environment.** A learner meets a stream of training states: the training episodes of
//!   [`crate::traces`] with a load trace, from seeds the held-out states do not use. It picks an
//!   action and is paid minus the objective. No action changes the next state, since the
//!   committed objective has no switching cost. So the return is the immediate cost (γ = 0).
//!   The stream never ends, so no step is treated as terminal.
//! - **Real evaluations.** The NLL of an action is the expensive part. A model-free learner pays
//!   one real evaluation per step: a draw from the measured profile cell of its action and
//!   state, at a random profile seed. [`Measured`] counts them.
//! - **Model-based.** A model-based learner spends a budget of real evaluations first: a random
//!   subset of the profile's measurements. It fits a [`Fitted`] model of the NLL from them, then
//!   trains PPO on the costs with that model, at no further real cost.
//! - **Bandit.** [`thompson`] is Thompson sampling per context (SNR bin × sessions), paying
//!   like model-free.
//!
//! Every learner's greedy policy is scored on the held-out states with the test text
//! ([`crate::decision::Evaluation::score`]). Nothing is selected on that score.

use std::collections::HashMap;
#[cfg(test)]
use std::path::Path;

use anyhow::{Result, ensure};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::decision::{ANALOG, Action, EdgeTimes, Evaluation, ModelShape, NllTable, Objective, Score, State, Statistics, cost};
use crate::env::{Actor, Step, VecEnv};
use crate::traces;

/// Joules to reward: a reward of −1 is 100 mJ, so a broken constraint (1 J) is −10.
const REWARD_PER_J: f64 = -10.0;

/// The observation of a state: SNR and log2 of the sessions, roughly centred and scaled.
pub fn observe(s: State) -> [f32; 2] {
    [((s.snr_db - 20.0) / 15.0) as f32, (((s.sessions as f64).log2() - 2.0) / 2.0) as f32]
}

/// Where a learner's NLL increase of an action comes from.
pub trait NllSource {
    fn dnll(&mut self, a: &Action, snr_db: f64) -> Result<f64>;
    /// Real evaluations paid so far.
    fn real_evaluations(&self) -> usize;
}

/// One real evaluation per call: the measured profile cell at a random profile seed. The count
/// starts at one, the clean reference every NLL increase is measured against.
pub struct Measured<'a> {
    o: &'a Objective,
    table: &'a NllTable,
    rng: StdRng,
    count: usize,
}

impl<'a> Measured<'a> {
    pub fn new(o: &'a Objective, table: &'a NllTable, seed: u64) -> Self {
        Self { o, table, rng: StdRng::seed_from_u64(seed), count: 1 }
    }
}

impl NllSource for Measured<'_> {
    fn dnll(&mut self, a: &Action, snr_db: f64) -> Result<f64> {
        self.count += 1;
        let seed = self.o.seeds.profile[self.rng.random_range(0..self.o.seeds.profile.len())];
        self.table.dnll(self.o, a, snr_db, &[seed])
    }

    fn real_evaluations(&self) -> usize {
        self.count
    }
}

/// A cell of the NLL model: an action at an SNR bin (`None` for digital codecs, whose clean NLL
/// does not depend on the channel).
type Cell = (Action, Option<u64>);

fn cell(o: &Objective, a: &Action, snr_db: f64) -> Option<Cell> {
    if a.codec == ANALOG { o.bin(snr_db).map(|b| (a.clone(), Some(b.to_bits()))) } else { Some((a.clone(), None)) }
}

/// The model a model-based learner fits from its budget: the mean of the sampled evaluations
/// of each cell, and for a cell with none, the nearest sampled cell of the same codec (by split,
/// then by bin), else of the nearest codec in the objective's list.
#[derive(Debug, Clone)]
pub struct Fitted {
    means: HashMap<Cell, f64>,
}

impl Fitted {
    /// Fits from `budget` real evaluations: the clean reference (every NLL increase needs it),
    /// then `budget − 1` drawn without replacement from every measurement of an action the
    /// profile holds (each analog cell at each profile seed, each digital cell once).
    pub fn fit(o: &Objective, table: &NllTable, budget: usize, rng: &mut StdRng) -> Result<Self> {
        let bins: Vec<f64> = o.states.snr_bins_db.clone();
        let mut pool: Vec<(Cell, f64)> = Vec::new();
        for a in o.actions() {
            if a.codec == ANALOG {
                for &b in &bins {
                    for &seed in &o.seeds.profile {
                        pool.push(((a.clone(), Some(b.to_bits())), table.dnll(o, &a, b, &[seed])?));
                    }
                }
            } else {
                pool.push(((a.clone(), None), table.dnll(o, &a, f64::INFINITY, &[])?));
            }
        }
        ensure!(budget >= 2 && budget <= pool.len() + 1, "a budget of {budget} evaluations is outside 2..={} (the clean reference and at least one action)", pool.len() + 1);
        pool.shuffle(rng);
        let mut sums: HashMap<Cell, (f64, usize)> = HashMap::new();
        for (c, v) in pool.into_iter().take(budget - 1) {
            let e = sums.entry(c).or_default();
            *e = (e.0 + v, e.1 + 1);
        }
        let sampled: Vec<(Cell, f64)> = sums.into_iter().map(|(c, (s, n))| (c, s / n as f64)).collect();
        let codec_rank = |c: &str| o.actions.codecs.iter().position(|x| x == c).unwrap_or(usize::MAX);
        let k_rank = |k: usize| o.actions.ks.iter().position(|&x| x == k).unwrap_or(usize::MAX);
        let bin_rank = |b: Option<u64>| b.map_or(0, |b| bins.iter().position(|x| x.to_bits() == b).unwrap_or(0));
        let mut means = HashMap::new();
        for a in o.actions() {
            let targets: Vec<Option<u64>> = if a.codec == ANALOG { bins.iter().map(|b| Some(b.to_bits())).collect() } else { vec![None] };
            for b in targets {
                let distance = |(c, _): &&(Cell, f64)| {
                    let codec = codec_rank(&c.0.codec).abs_diff(codec_rank(&a.codec));
                    (codec, k_rank(c.0.k).abs_diff(k_rank(a.k)) + bin_rank(c.1).abs_diff(bin_rank(b)))
                };
                let nearest = sampled.iter().min_by_key(distance).expect("the budget is at least one evaluation");
                means.insert((a.clone(), b), nearest.1);
            }
        }
        Ok(Self { means })
    }
}

/// A fitted model answers for free.
pub struct FromModel<'a> {
    pub o: &'a Objective,
    pub model: &'a Fitted,
}

impl NllSource for FromModel<'_> {
    fn dnll(&mut self, a: &Action, snr_db: f64) -> Result<f64> {
        Ok(match cell(self.o, a, snr_db) {
            Some(c) => self.model.means[&c],
            None => f64::INFINITY,
        })
    }

    fn real_evaluations(&self) -> usize {
        0
    }
}

/// The costs of the objective around a source of NLL.
pub struct Costs<'a> {
    pub o: &'a Objective,
    pub m: &'a ModelShape,
    pub edge: &'a EdgeTimes,
}

impl Costs<'_> {
    fn reward(&self, s: State, a: &Action, dnll: f64) -> Result<f32> {
        Ok((cost(self.o, self.m, self.edge, s, a, dnll)?.total_j * REWARD_PER_J) as f32)
    }
}

/// An endless stream of training states per environment.
struct Stream {
    channel_rng: StdRng,
    load_rng: StdRng,
    queue: Vec<State>,
}

impl Stream {
    fn next(&mut self, o: &Objective) -> State {
        if self.queue.is_empty() {
            let channel = traces::training_episode(&mut self.channel_rng, o.states.states_per_trace);
            self.queue = crate::decision::with_load(o, &channel, &mut self.load_rng);
            self.queue.reverse();
        }
        self.queue.pop().expect("an episode has states")
    }
}

/// The learners' environment: `n_envs` streams of training states, paid by `source`.
pub struct DecisionEnv<'a, S: NllSource> {
    costs: Costs<'a>,
    source: S,
    actions: Vec<Action>,
    streams: Vec<Stream>,
    current: Vec<State>,
}

impl<'a, S: NllSource> DecisionEnv<'a, S> {
    pub fn new(costs: Costs<'a>, source: S, n_envs: usize, seed: u64) -> Self {
        let o = costs.o;
        let mut streams: Vec<Stream> = (0..n_envs as u64)
            .map(|i| Stream {
                channel_rng: StdRng::seed_from_u64(crate::decision::TRAINING_SALT ^ seed.wrapping_mul(1_000_003).wrapping_add(i)),
                load_rng: StdRng::seed_from_u64(o.states.load_seed ^ crate::decision::TRAINING_SALT ^ seed.wrapping_mul(7_919).wrapping_add(i)),
                queue: Vec::new(),
            })
            .collect();
        let current = streams.iter_mut().map(|s| s.next(o)).collect();
        Self { actions: o.actions(), costs, source, streams, current }
    }

    fn observations(&self) -> Vec<f32> {
        self.current.iter().flat_map(|s| observe(*s)).collect()
    }
}

impl<S: NllSource> VecEnv for DecisionEnv<'_, S> {
    fn n_envs(&self) -> usize {
        self.streams.len()
    }

    fn obs_dim(&self) -> usize {
        2
    }

    fn n_actions(&self) -> usize {
        self.actions.len()
    }

    fn reset(&mut self) -> Result<Vec<f32>> {
        Ok(self.observations())
    }

    fn step(&mut self, actions: &[usize]) -> Result<Step> {
        ensure!(actions.len() == self.streams.len(), "{} actions for {} environments", actions.len(), self.streams.len());
        let mut reward = Vec::with_capacity(actions.len());
        for (i, &a) in actions.iter().enumerate() {
            let action = self.actions.get(a).ok_or_else(|| anyhow::anyhow!("action {a} is outside 0..{}", self.actions.len()))?;
            let s = self.current[i];
            let dnll = self.source.dnll(action, s.snr_db)?;
            reward.push(self.costs.reward(s, action, dnll)?);
            self.current[i] = self.streams[i].next(self.costs.o);
        }
        Ok(Step { obs: self.observations(), reward, done: vec![false; actions.len()] })
    }

    fn real_evaluations(&self) -> usize {
        self.source.real_evaluations()
    }
}

/// The contexts of the bandit: the SNR bin (or below the lowest) × the session count.
fn context(o: &Objective, s: State) -> (usize, usize) {
    let bin = o.states.snr_bins_db.iter().filter(|&&b| b <= s.snr_db).count();
    let n = o.states.edge_sessions.iter().position(|&n| n == s.sessions).unwrap_or(0);
    (bin, n)
}

/// Called at a checkpoint with the real evaluations so far and the greedy policy (state → action).
pub type Checkpoint<'a> = dyn FnMut(usize, &dyn Fn(State) -> usize) -> Result<()> + 'a;

/// Thompson sampling per context over every action, on the training stream, paid by `source`:
/// each action's mean reward has the Gaussian posterior N(mean, s²/n), with `s` the pooled spread
/// of the context's rewards around their actions' means; an untried action goes first. Calls
/// `checkpoint(real evaluations, greedy policy)` at each of `checkpoints` (ascending, in steps);
/// the greedy policy takes, per context, the action with the best mean reward.
pub fn thompson(
    costs: Costs<'_>,
    source: &mut dyn NllSource,
    seed: u64,
    checkpoints: &[usize],
    checkpoint: &mut Checkpoint<'_>,
) -> Result<()> {
    use rand_distr::{Distribution, StandardNormal};
    let o = costs.o;
    let actions = o.actions();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut stream = Stream {
        channel_rng: StdRng::seed_from_u64(crate::decision::TRAINING_SALT ^ seed.wrapping_mul(1_000_003)),
        load_rng: StdRng::seed_from_u64(o.states.load_seed ^ crate::decision::TRAINING_SALT ^ seed.wrapping_mul(7_919)),
        queue: Vec::new(),
    };
    // Per context and action: sum, sum of squares, count.
    type Arms = Vec<(f64, f64, usize)>;
    let mut stats: HashMap<(usize, usize), Arms> = HashMap::new();
    let greedy = |stats: &HashMap<(usize, usize), Arms>, s: State| -> usize {
        stats.get(&context(o, s)).map_or(0, |arms| {
            let mean = |i: usize| if arms[i].2 == 0 { f64::NEG_INFINITY } else { arms[i].0 / arms[i].2 as f64 };
            (0..arms.len()).max_by(|&a, &b| mean(a).total_cmp(&mean(b)).then(b.cmp(&a))).unwrap_or(0)
        })
    };
    let mut next = 0;
    let last = checkpoints.last().copied().unwrap_or(0);
    for t in 1..=last {
        let s = stream.next(o);
        let arms = stats.entry(context(o, s)).or_insert_with(|| vec![(0.0, 0.0, 0); actions.len()]);
        let pick = match arms.iter().position(|a| a.2 == 0) {
            Some(untried) => untried,
            None => {
                let (ss, dof) = arms.iter().fold((0.0, 0usize), |(ss, dof), &(sum, sq, n)| (ss + (sq - sum * sum / n as f64).max(0.0), dof + n - 1));
                let spread = (ss / dof.max(1) as f64).sqrt().max(1e-3);
                let draw = |i: usize, rng: &mut StdRng| {
                    let z: f64 = StandardNormal.sample(rng);
                    arms[i].0 / arms[i].2 as f64 + spread / (arms[i].2 as f64).sqrt() * z
                };
                let draws: Vec<f64> = (0..actions.len()).map(|i| draw(i, &mut rng)).collect();
                crate::evaluate::argmax(draws.into_iter())
            }
        };
        let r = f64::from(costs.reward(s, &actions[pick], source.dnll(&actions[pick], s.snr_db)?)?);
        let arm = &mut arms[pick];
        *arm = (arm.0 + r, arm.1 + r * r, arm.2 + 1);
        while next < checkpoints.len() && checkpoints[next] == t {
            checkpoint(source.real_evaluations(), &|s| greedy(&stats, s))?;
            next += 1;
        }
    }
    Ok(())
}

/// The learners' settings (`docs/decision/learning.json`), fixed before any learning result.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Learning {
    pub version: u32,
    pub about: String,
    pub seeds: Vec<u64>,
    /// Real evaluations a model-based learner fits its model from.
    pub model_based_budgets: Vec<usize>,
    /// PPO steps on the fitted model (free).
    pub model_based_steps: usize,
    /// Real evaluations at which the model-free learners' greedy policies are scored; the last is
    /// their whole budget.
    pub model_free_checkpoints: Vec<usize>,
    pub ppo: PpoSettings,
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PpoSettings {
    pub n_envs: usize,
    pub rollout_len: usize,
    pub epochs: usize,
    pub minibatch: usize,
    pub lr: f64,
    pub gamma: f32,
    pub gae_lambda: f32,
    pub clip: f32,
    pub value_coef: f32,
    pub entropy_coef: f32,
    pub hidden: Vec<usize>,
}

impl Learning {
    pub fn load(path: &std::path::Path) -> Result<Self> {
        use anyhow::Context;
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read the learners' settings {}", path.display()))?;
        let l: Self = serde_json::from_str(&text).with_context(|| format!("{} is not valid", path.display()))?;
        ensure!(l.version == 1, "{}: version {} is not 1", path.display(), l.version);
        ensure!(!l.seeds.is_empty() && !l.model_based_budgets.is_empty(), "{}: seeds and budgets must not be empty", path.display());
        ensure!(
            !l.model_free_checkpoints.is_empty() && l.model_free_checkpoints.windows(2).all(|w| w[0] < w[1]),
            "{}: model_free_checkpoints must be increasing",
            path.display()
        );
        ensure!(l.ppo.n_envs > 0, "{}: ppo.n_envs must be positive", path.display());
        Ok(l)
    }

    fn ppo(&self, seed: u64, total_steps: usize) -> crate::algo::ppo::PpoConfig {
        let p = &self.ppo;
        crate::algo::ppo::PpoConfig {
            seed,
            total_steps,
            rollout_len: p.rollout_len,
            epochs: p.epochs,
            minibatch: p.minibatch,
            lr: p.lr,
            gamma: p.gamma,
            gae_lambda: p.gae_lambda,
            clip: p.clip,
            value_coef: p.value_coef,
            entropy_coef: p.entropy_coef,
            hidden: p.hidden.clone(),
            max_grad_norm: Some(0.5),
        }
    }
}

/// One point of a learning curve: a learner seed's greedy policy after `evaluations` real
/// evaluations, as its action in every held-out state.
#[derive(Debug, Clone, PartialEq)]
pub struct CurveRow {
    pub learner: String,
    pub seed: u64,
    pub evaluations: usize,
    /// Wall time of the learner's own computation up to this point.
    pub seconds: f64,
    pub picks: Vec<usize>,
}

pub const CURVE_HEADER: &str = "learner,seed,evaluations,seconds,picks";

pub const MODEL_BASED: &str = "MB-PPO";
pub const MODEL_FREE: &str = "PPO";
pub const BANDIT: &str = "Thompson";

pub fn read_curve(path: &std::path::Path) -> Result<Vec<CurveRow>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut lines = text.lines();
    ensure!(lines.next().is_none_or(|h| h == CURVE_HEADER), "{} does not start with {CURVE_HEADER:?}", path.display());
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            let bad = || anyhow::anyhow!("{} has a malformed row {line:?}", path.display());
            ensure!(f.len() == 5, bad());
            Ok(CurveRow {
                learner: f[0].to_string(),
                seed: f[1].parse().map_err(|_| bad())?,
                evaluations: f[2].parse().map_err(|_| bad())?,
                seconds: f[3].parse().map_err(|_| bad())?,
                picks: f[4].split(';').map(|p| p.parse().map_err(|_| bad())).collect::<Result<_>>()?,
            })
        })
        .collect()
}

fn append(path: &std::path::Path, rows: &[CurveRow]) -> Result<()> {
    use std::io::Write;
    let new = !path.exists();
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    if new {
        writeln!(f, "{CURVE_HEADER}")?;
    }
    for r in rows {
        let picks: Vec<String> = r.picks.iter().map(usize::to_string).collect();
        writeln!(f, "{},{},{},{:.2},{}", r.learner, r.seed, r.evaluations, r.seconds, picks.join(";"))?;
    }
    f.flush()?;
    Ok(())
}

fn picks_of(e: &Evaluation, actor: &dyn Actor) -> Result<Vec<usize>> {
    let obs: Vec<f32> = e.states.iter().flat_map(|(_, s)| observe(*s)).collect();
    actor.act(&obs)
}

/// Runs every learner × seed (× budget) of `l` not yet in `csv`, appending each run's rows when
/// it completes, so an interrupted run goes on with the next learner. Returns every row.
pub fn run_curves(
    costs: &Costs<'_>,
    profile: &NllTable,
    e: &Evaluation,
    l: &Learning,
    csv: &std::path::Path,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<CurveRow>> {
    let mut rows = read_curve(csv)?;
    let have = |rows: &[CurveRow], learner: &str, seed: u64, evaluations: Option<usize>| {
        rows.iter().any(|r| r.learner == learner && r.seed == seed && evaluations.is_none_or(|v| r.evaluations == v))
    };
    let o = costs.o;
    let last = *l.model_free_checkpoints.last().expect("checked on load");
    for &seed in &l.seeds {
        for &budget in &l.model_based_budgets {
            if have(&rows, MODEL_BASED, seed, Some(budget)) {
                continue;
            }
            let started = std::time::Instant::now();
            let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(0x9e37_79b9).wrapping_add(budget as u64));
            let model = Fitted::fit(o, profile, budget, &mut rng)?;
            let mut env = DecisionEnv::new(Costs { ..*costs }, FromModel { o, model: &model }, l.ppo.n_envs, seed);
            let trained = crate::algo::ppo::train(&mut env, &l.ppo(seed, l.model_based_steps), &mut |_, _| Ok(true))?;
            let row = CurveRow { learner: MODEL_BASED.into(), seed, evaluations: budget, seconds: started.elapsed().as_secs_f64(), picks: picks_of(e, &trained)? };
            progress(&format!("{MODEL_BASED} seed {seed}, {budget} evaluations: {:.1}% of the oracle ({:.0}s)", 100.0 * e.score_many(std::slice::from_ref(&row.picks), &o.statistics).point, row.seconds));
            append(csv, std::slice::from_ref(&row))?;
            rows.push(row);
        }
        if !have(&rows, MODEL_FREE, seed, None) {
            let started = std::time::Instant::now();
            let mut env = DecisionEnv::new(Costs { ..*costs }, Measured::new(o, profile, seed ^ 0x5eed), l.ppo.n_envs, seed);
            let mut out = Vec::new();
            let mut next = 0;
            crate::algo::ppo::train(&mut env, &l.ppo(seed, last), &mut |stats, actor| {
                if next < l.model_free_checkpoints.len() && stats.real_evaluations >= l.model_free_checkpoints[next] {
                    while next < l.model_free_checkpoints.len() && stats.real_evaluations >= l.model_free_checkpoints[next] {
                        next += 1;
                    }
                    out.push(CurveRow { learner: MODEL_FREE.into(), seed, evaluations: stats.real_evaluations, seconds: started.elapsed().as_secs_f64(), picks: picks_of(e, actor)? });
                }
                Ok(true)
            })?;
            if let Some(r) = out.last() {
                progress(&format!("{MODEL_FREE} seed {seed}: {:.1}% of the oracle after {} evaluations ({:.0}s)", 100.0 * e.score_many(std::slice::from_ref(&r.picks), &o.statistics).point, r.evaluations, r.seconds));
            }
            append(csv, &out)?;
            rows.extend(out);
        }
        if !have(&rows, BANDIT, seed, None) {
            let started = std::time::Instant::now();
            let mut source = Measured::new(o, profile, seed ^ 0xba4d);
            let mut out = Vec::new();
            thompson(Costs { ..*costs }, &mut source, seed, &l.model_free_checkpoints, &mut |evaluations, policy| {
                let picks = e.states.iter().map(|(_, s)| policy(*s)).collect();
                out.push(CurveRow { learner: BANDIT.into(), seed, evaluations, seconds: started.elapsed().as_secs_f64(), picks });
                Ok(())
            })?;
            if let Some(r) = out.last() {
                progress(&format!("{BANDIT} seed {seed}: {:.1}% of the oracle after {} evaluations ({:.0}s)", 100.0 * e.score_many(std::slice::from_ref(&r.picks), &o.statistics).point, r.evaluations, r.seconds));
            }
            append(csv, &out)?;
            rows.extend(out);
        }
    }
    Ok(rows)
}

/// A learner's curve: per evaluation count (in the order met), the score pooled over the seeds
/// that reached it, and how many seeds did.
pub fn curve(e: &Evaluation, rows: &[CurveRow], learner: &str, st: &Statistics) -> Vec<(usize, Score, usize)> {
    let mut counts: Vec<usize> = rows.iter().filter(|r| r.learner == learner).map(|r| r.evaluations).collect();
    counts.sort_unstable();
    counts.dedup();
    counts
        .into_iter()
        .map(|c| {
            let policies: Vec<Vec<usize>> = rows.iter().filter(|r| r.learner == learner && r.evaluations == c).map(|r| r.picks.clone()).collect();
            (c, e.score_many(&policies, st), policies.len())
        })
        .collect()
}

/// The first evaluation count at which a curve's pooled score reaches `target`, if any.
pub fn reaches(curve: &[(usize, Score, usize)], target: f64) -> Option<usize> {
    curve.iter().find(|c| c.1.point >= target).map(|c| c.0)
}

/// The learning report (`docs/decision/<model>/learning.md`): each learner's score against the
/// real evaluations it used, and the evaluations to reach 90% and 95% of the expected oracle.
/// `seconds_per_evaluation` is the profile's measured mean time of one real evaluation.
pub fn learning_report(o: &Objective, l: &Learning, e: &Evaluation, rows: &[CurveRow], seconds_per_evaluation: f64, settings_commit: &str) -> String {
    use std::fmt::Write;
    let st = &o.statistics;
    let mut s = String::new();
    let _ = writeln!(s, "# Learning the decision, {}\n", o.model);
    let _ = writeln!(
        s,
        "Generated by `scripts/decision.sh --learn`. The learners' settings, [learning.json](../learning.json), were fixed in commit `{settings_commit}` before any learning result; the objective is the primary one of [report.md](report.md). Scores are the expected oracle's test cost over the policy's, on the held-out states and the test text, pooled over the learner seeds with a {}% bootstrap over seeds × states × test seeds. Nothing is selected on them: every learner's last policy is its result.\n",
        (st.confidence * 100.0).round()
    );
    let _ = writeln!(
        s,
        "Learner seeds {:?}. MB-PPO fits its NLL model from {:?} real evaluations (random subsets of the profile) and then trains PPO for {} steps on it. Model-free PPO and Thompson sampling pay one real evaluation per step, up to {}.\n",
        l.seeds,
        l.model_based_budgets,
        l.model_based_steps,
        l.model_free_checkpoints.last().copied().unwrap_or(0)
    );
    let _ = writeln!(s, "![learning curves](learning.png)\n");
    let _ = writeln!(s, "| learner | real evaluations | seeds | score | interval | learner's own wall time (s, mean) |");
    let _ = writeln!(s, "|---|---:|---:|---:|---|---:|");
    let mut reached = Vec::new();
    for learner in [MODEL_BASED, MODEL_FREE, BANDIT] {
        let c = curve(e, rows, learner, st);
        for (evals, score, seeds) in &c {
            let secs: Vec<f64> = rows.iter().filter(|r| r.learner == learner && r.evaluations == *evals).map(|r| r.seconds).collect();
            let _ = writeln!(
                s,
                "| {learner} | {evals} | {seeds} | {:.1}% | {:.1}–{:.1}% | {:.1} |",
                100.0 * score.point,
                100.0 * score.low,
                100.0 * score.high,
                secs.iter().sum::<f64>() / secs.len().max(1) as f64
            );
        }
        let most = c.last().map_or(0, |c| c.0);
        reached.push((learner, reaches(&c, 0.9), reaches(&c, 0.95), most));
    }
    let _ = writeln!(s, "\n## Real evaluations to reach 90% and 95% of the expected oracle\n");
    let _ = writeln!(s, "One real evaluation took {seconds_per_evaluation:.1} s here on average (the profile's measured times); the time column multiplies by that.\n");
    let _ = writeln!(s, "| learner | to 90% | to 95% | at the profile's time per evaluation |");
    let _ = writeln!(s, "|---|---:|---:|---:|");
    let fmt = |r: Option<usize>, most: usize| r.map_or(format!("not within {most}"), |v| v.to_string());
    for (learner, r90, r95, most) in &reached {
        let hours = r90.map_or("-".to_string(), |v| format!("{:.2} h to 90%", v as f64 * seconds_per_evaluation / 3600.0));
        let _ = writeln!(s, "| {learner} | {} | {} | {hours} |", fmt(*r90, *most), fmt(*r95, *most));
    }
    let mb = reached.iter().find(|r| r.0 == MODEL_BASED);
    let mf = reached.iter().find(|r| r.0 == MODEL_FREE);
    if let (Some(mb), Some(mf)) = (mb, mf) {
        let _ = writeln!(s, "\n## The issue's conditions\n");
        let best_mb = curve(e, rows, MODEL_BASED, st).last().map(|c| c.1);
        if let Some(b) = best_mb {
            let _ = writeln!(s, "- MB-PPO at its largest budget: {:.1}% ({:.1}–{:.1}%); the condition is ≥ 95%: {}.", 100.0 * b.point, 100.0 * b.low, 100.0 * b.high, if b.point >= 0.95 { "**met**" } else { "**not met**" });
        }
        let verdict = match (mb.1, mf.1) {
            (Some(m), Some(f)) => format!("MB-PPO reaches 90% after {m} real evaluations, model-free PPO after {f}: a ratio of {:.3}; the condition is ≤ 0.10: {}.", m as f64 / f as f64, if m * 10 <= f { "**met**" } else { "**not met**" }),
            (Some(m), None) => format!("MB-PPO reaches 90% after {m} real evaluations; model-free PPO does not within {}: {}.", mf.3, if mf.3 >= 10 * m { "**met** (model-free fails within 10× MB's budget)" } else { "not decided (the model-free budget is under 10× MB's)" }),
            (None, _) => "MB-PPO does not reach 90%: **not met**.".to_string(),
        };
        let _ = writeln!(s, "- {verdict}");
        let fixed = e.score(&|_| e.fixed, st);
        let _ = writeln!(
            s,
            "- For scale: the best fixed action, `{}` (chosen on the training states), scores {:.1}% ({:.1}–{:.1}%) on the same states, so a learner that only finds it already passes 90%. Thompson sampling reaches 90% after {}.",
            e.actions[e.fixed],
            100.0 * fixed.point,
            100.0 * fixed.low,
            100.0 * fixed.high,
            reached.iter().find(|r| r.0 == BANDIT).map_or("-".to_string(), |r| fmt(r.1, r.3) + " real evaluations")
        );
    }
    s
}

/// The learning curves as a figure: pooled score against log10 of the real evaluations (the
/// intervals are in the report's table).
pub fn learning_plot(o: &Objective, e: &Evaluation, rows: &[CurveRow], out: &std::path::Path) -> Result<()> {
    use crate::plots::{Panel, Series, draw};
    let st = &o.statistics;
    let mut series = Vec::new();
    for learner in [MODEL_BASED, MODEL_FREE, BANDIT] {
        let c = curve(e, rows, learner, st);
        let x = |v: usize| (v.max(1) as f64).log10();
        series.push(Series { markers: true, ..Series::line(learner, c.iter().map(|p| (x(p.0), 100.0 * p.1.point)).collect()) });
    }
    let panel = Panel { title: format!("{}: score against real evaluations (pooled over seeds)", o.model), x_desc: "log10 real evaluations", y_desc: "% of the expected oracle", log_y: false, series };
    draw(out, &[panel], 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::fixtures::{committed, edge, edge_fn, rows, shape};
    use crate::decision::{Role, evaluate};

    #[test]
    fn a_full_budget_model_is_the_profile_mean_and_a_small_one_fills_from_neighbours() {
        let o = committed();
        let profile = NllTable::new(&rows(&o, Role::Profile, 0.04)).unwrap();
        let pool = o.actions().iter().map(|a| if a.codec == ANALOG { o.states.snr_bins_db.len() * o.seeds.profile.len() } else { 1 }).sum::<usize>();
        let full = Fitted::fit(&o, &profile, pool + 1, &mut StdRng::seed_from_u64(1)).unwrap();
        let mut model = FromModel { o: &o, model: &full };
        for a in o.actions() {
            for snr in [5.0, 10.0, 24.0, 33.0, 45.0] {
                let want = profile.dnll(&o, &a, snr, &o.seeds.profile).unwrap();
                let got = model.dnll(&a, snr).unwrap();
                assert!(got == want || (got - want).abs() < 1e-12, "{a} at {snr} dB: {got} against {want}");
            }
        }
        assert_eq!(model.real_evaluations(), 0);
        let one = Fitted::fit(&o, &profile, 2, &mut StdRng::seed_from_u64(2)).unwrap();
        let values: std::collections::HashSet<u64> = one.means.values().map(|v| v.to_bits()).collect();
        assert_eq!(values.len(), 1, "one evaluation answers for every cell");
        assert_eq!(one.means.len(), full.means.len());
        assert!(Fitted::fit(&o, &profile, pool + 2, &mut StdRng::seed_from_u64(3)).is_err());
        assert!(Fitted::fit(&o, &profile, 1, &mut StdRng::seed_from_u64(3)).is_err());
    }

    #[test]
    fn the_environment_pays_minus_the_cost_counts_evaluations_and_never_ends() {
        let o = committed();
        let (m, e) = (shape(), edge(&o, 0.2));
        let profile = NllTable::new(&rows(&o, Role::Profile, 0.04)).unwrap();
        let mut env = DecisionEnv::new(Costs { o: &o, m: &m, edge: &e }, Measured::new(&o, &profile, 9), 4, 0);
        assert_eq!((env.n_envs(), env.obs_dim(), env.n_actions()), (4, 2, o.actions().len()));
        let actions = o.actions();
        for t in 0..100 {
            let before = env.current.clone();
            let picks: Vec<usize> = (0..4).map(|i| (t + i) % actions.len()).collect();
            let step = env.step(&picks).unwrap();
            assert!(step.done.iter().all(|d| !d));
            for (i, &p) in picks.iter().enumerate() {
                let a = &actions[p];
                // Digital NLL is one measurement; the analog draw is one of the profile seeds.
                let possible: Vec<f32> = o.seeds.profile.iter().map(|&seed| {
                    let d = profile.dnll(&o, a, before[i].snr_db, &[seed]).unwrap();
                    (cost(&o, &m, &e, before[i], a, d).unwrap().total_j * REWARD_PER_J) as f32
                }).collect();
                assert!(possible.contains(&step.reward[i]), "{a}: {} not in {possible:?}", step.reward[i]);
            }
        }
        assert_eq!(env.real_evaluations(), 1 + 400);
        assert!(env.step(&[0, 1, 2]).is_err() && env.step(&[0, 1, 2, 99]).is_err());
    }

    /// The learners beat the best fixed action on a synthetic problem whose oracle mixes actions:
    /// an edge whose layers cost more than the UE's once it is shared (k = 0 alone, k = L under
    /// load), and the analog link only in good channels.
    #[test]
    fn thompson_and_model_based_ppo_learn_a_synthetic_decision() {
        let o = committed();
        let (m, e) = (shape(), edge_fn(&o, &|k, n| 0.5 + (30 - k) as f64 * 0.05 * (n as f64).powf(1.5)));
        let (profile, test) = (NllTable::new(&rows(&o, Role::Profile, 0.04)).unwrap(), NllTable::new(&rows(&o, Role::Test, 0.04)).unwrap());
        let ev = evaluate(&o, &m, &e, &profile, &test).unwrap();
        let fixed = ev.score(&|_| ev.fixed, &o.statistics).point;
        assert!(fixed < 0.95, "the synthetic problem is not degenerate: best fixed {fixed}");
        let mut source = Measured::new(&o, &profile, 4);
        let mut last = None;
        thompson(Costs { o: &o, m: &m, edge: &e }, &mut source, 1, &[20_000], &mut |n, policy| {
            last = Some((n, ev.states.iter().map(|(_, s)| policy(*s)).collect::<Vec<_>>()));
            Ok(())
        })
        .unwrap();
        let (n, picks) = last.expect("one checkpoint");
        assert_eq!(n, 1 + 20_000);
        let ts = ev.score_many(&[picks], &o.statistics).point;
        assert!(ts > fixed && ts > 0.95, "Thompson {ts}, best fixed {fixed}");

        let model = Fitted::fit(&o, &profile, 93, &mut StdRng::seed_from_u64(5)).unwrap();
        let mut env = DecisionEnv::new(Costs { o: &o, m: &m, edge: &e }, FromModel { o: &o, model: &model }, 8, 3);
        let l = Learning::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/decision/learning.json")).unwrap();
        let trained = crate::algo::ppo::train(&mut env, &l.ppo(3, 30_000), &mut |_, _| Ok(true)).unwrap();
        assert_eq!(env.real_evaluations(), 0);
        let mb = ev.score_many(&[picks_of(&ev, &trained).unwrap()], &o.statistics).point;
        eprintln!("best fixed {fixed:.4}, Thompson {ts:.4}, MB-PPO {mb:.4}");
        assert!(mb > fixed && mb > 0.9, "MB-PPO {mb}, best fixed {fixed}");
    }
}
