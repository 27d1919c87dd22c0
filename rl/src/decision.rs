//! The decision problem of `docs/decision.md`: what an action (split `k`, codec) costs in a
//! state (uplink SNR, sessions on the edge), and how the expected oracle and the best fixed
//! action compare on held-out states, scored on a text and channel seeds that chose nothing.
//!
//! Everything the problem depends on is in the [`Objective`] file, committed before any result.
//! The measured inputs are the NLL profile of each text ([`crate::link_profile`] rows, from
//! [`Objective::plan`]) and the edge's batched step times ([`EdgeTimes`], from
//! `split-core`'s `batch_bench --csv`).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use split_core::wire::WireDType;

use crate::link_profile::{Block, Row};
use crate::real::ChannelState;
use crate::traces;

/// The decision problem's file (`docs/decision/objective.json`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Objective {
    pub version: u32,
    pub model: String,
    pub about: String,
    pub actions: Actions,
    pub states: States,
    pub texts: Texts,
    pub seeds: Seeds,
    pub ue: Ue,
    pub radio: Radio,
    pub edge: EdgePower,
    pub objective: Weights,
    pub statistics: Statistics,
    pub sensitivity: Vec<Variant>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Actions {
    pub ks: Vec<usize>,
    /// `rx` (the analog link with the receiver) or a digital codec (`int4`, `int8`, `f16`, ...).
    pub codecs: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct States {
    /// Rayleigh mean SNRs the analog link is profiled at; a state uses the highest bin at or
    /// below its SNR.
    pub snr_bins_db: Vec<f64>,
    /// Sessions the edge serves at once (the edge times are measured at these).
    pub edge_sessions: Vec<usize>,
    pub states_per_trace: usize,
    pub trace_seed: u64,
    /// The load holds for this many decisions, then is drawn again.
    pub load_dwell_decisions: usize,
    pub load_seed: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Texts {
    /// Brown slice the profile (and any selection) uses.
    pub profile: String,
    /// Brown slice the scoring uses, never seen by a selection.
    pub test: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seeds {
    pub profile: Vec<u64>,
    pub test: Vec<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ue {
    pub class: String,
    /// Seconds per parameter read per token.
    pub seconds_per_param: f64,
    pub compute_watts: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Radio {
    /// The uplink band, shared equally by the edge's sessions.
    pub bandwidth_hz: f64,
    pub watts_per_mbps: f64,
    pub watts_base: f64,
    /// Rayleigh outage threshold of the analog link.
    pub analog_outage_db: f64,
    pub analog_retransmissions: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgePower {
    pub watts: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Weights {
    pub edge_weight: f64,
    pub tpot_deadline_s: f64,
    pub nll_budget_nats: f64,
    pub violation_penalty_j: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Statistics {
    pub bootstrap_resamples: usize,
    pub bootstrap_seed: u64,
    pub confidence: f64,
}

/// Another objective reported beside the primary one: the primary with these values replaced.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    pub name: String,
    pub edge_weight: Option<f64>,
    pub tpot_deadline_s: Option<f64>,
    pub nll_budget_nats: Option<f64>,
    pub bandwidth_hz: Option<f64>,
}

/// Which text (and seeds) a profile is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Profile,
    Test,
}

/// The analog codec's name; every other codec is a digital wire dtype.
pub const ANALOG: &str = "rx";

/// Seeds a run of consecutive seeds must be, for [`Block`].
fn consecutive(seeds: &[u64]) -> Option<(u64, u64)> {
    let first = *seeds.first()?;
    seeds.iter().enumerate().all(|(i, &s)| s == first + i as u64).then_some((first, seeds.len() as u64))
}

impl Objective {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read the objective {}", path.display()))?;
        let o: Self = serde_json::from_str(&text).with_context(|| format!("objective {} is not valid", path.display()))?;
        o.check().with_context(|| format!("objective {}", path.display()))?;
        Ok(o)
    }

    fn check(&self) -> Result<()> {
        ensure!(self.version == 1, "version {} is not 1", self.version);
        ensure!(!self.actions.ks.is_empty() && !self.actions.codecs.is_empty(), "actions.ks and actions.codecs must not be empty");
        for c in &self.actions.codecs {
            if c != ANALOG {
                let d: WireDType = c.parse().with_context(|| format!("codec {c:?} is neither {ANALOG} nor a wire dtype"))?;
                ensure!(!d.is_value() || d == WireDType::F16 || d == WireDType::BF16, "codec {c:?}: f32 is not a digital codec here");
            }
        }
        let bins = &self.states.snr_bins_db;
        ensure!(!bins.is_empty() && bins.windows(2).all(|w| w[0] < w[1]), "states.snr_bins_db must be non-empty and increasing");
        ensure!(!self.states.edge_sessions.is_empty() && self.states.edge_sessions.iter().all(|&n| n > 0), "states.edge_sessions must be positive");
        ensure!(self.states.states_per_trace > 0 && self.states.load_dwell_decisions > 0, "states_per_trace and load_dwell_decisions must be positive");
        ensure!(consecutive(&self.seeds.profile).is_some() && consecutive(&self.seeds.test).is_some(), "seeds.profile and seeds.test must each be consecutive, e.g. [0, 1, 2]");
        ensure!(
            self.seeds.profile.iter().all(|s| !self.seeds.test.contains(s)),
            "seeds.test must be independent of seeds.profile (no seed in both)"
        );
        ensure!(self.texts.profile != self.texts.test, "texts.test must differ from texts.profile");
        ensure!(self.statistics.bootstrap_resamples > 0 && (0.0..1.0).contains(&self.statistics.confidence), "statistics are out of range");
        for v in &self.sensitivity {
            self.variant(v).check_weights().with_context(|| format!("sensitivity {:?}", v.name))?;
        }
        self.check_weights()
    }

    fn check_weights(&self) -> Result<()> {
        let w = &self.objective;
        ensure!(w.edge_weight >= 0.0 && w.tpot_deadline_s > 0.0 && w.nll_budget_nats > 0.0 && w.violation_penalty_j > 0.0, "objective weights and bounds must be positive");
        ensure!(self.radio.bandwidth_hz > 0.0 && self.ue.seconds_per_param > 0.0 && self.ue.compute_watts >= 0.0 && self.edge.watts >= 0.0, "rates and powers must be positive");
        Ok(())
    }

    /// The primary objective with `v`'s values in place.
    pub fn variant(&self, v: &Variant) -> Self {
        let mut o = self.clone();
        o.objective.edge_weight = v.edge_weight.unwrap_or(o.objective.edge_weight);
        o.objective.tpot_deadline_s = v.tpot_deadline_s.unwrap_or(o.objective.tpot_deadline_s);
        o.objective.nll_budget_nats = v.nll_budget_nats.unwrap_or(o.objective.nll_budget_nats);
        o.radio.bandwidth_hz = v.bandwidth_hz.unwrap_or(o.radio.bandwidth_hz);
        o
    }

    /// Every action, `k` major.
    pub fn actions(&self) -> Vec<Action> {
        self.actions.ks.iter().flat_map(|&k| self.actions.codecs.iter().map(move |c| Action { k, codec: c.clone() })).collect()
    }

    /// The evaluations one text needs: the analog link at every bin, each digital codec clean
    /// (HARQ delivers it), and the clean f32 reference.
    pub fn plan(&self, role: Role) -> Vec<Block> {
        let seeds = match role {
            Role::Profile => &self.seeds.profile,
            Role::Test => &self.seeds.test,
        };
        let (first_seed, n) = consecutive(seeds).expect("checked on load");
        let ks = self.actions.ks.clone();
        let digital: Vec<String> = self.actions.codecs.iter().filter(|c| *c != ANALOG).cloned().collect();
        let mut plan = vec![Block { modes: vec!["raw".into()], channels: vec!["clean".into()], ks: vec![0], seeds: 1, first_seed }];
        if !digital.is_empty() {
            plan.push(Block { modes: digital, channels: vec!["clean".into()], ks: ks.clone(), seeds: 1, first_seed });
        }
        if self.actions.codecs.iter().any(|c| c == ANALOG) {
            let channels = self.states.snr_bins_db.iter().map(|b| format!("rayleigh:{b}")).collect();
            plan.push(Block { modes: vec![ANALOG.into()], channels, ks, seeds: n, first_seed });
        }
        plan
    }

    /// The highest SNR bin at or below `snr_db`, if any.
    pub fn bin(&self, snr_db: f64) -> Option<f64> {
        self.states.snr_bins_db.iter().copied().rfind(|&b| b <= snr_db)
    }
}

/// One action: a split and a codec.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Action {
    pub k: usize,
    pub codec: String,
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "k={} {}", self.k, self.codec)
    }
}

/// One decision's state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct State {
    pub snr_db: f64,
    pub sessions: usize,
}

/// The model's shape as the costs see it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelShape {
    pub hidden: usize,
    pub layers: usize,
    /// Weights one layer reads per token (the matmuls; norms are negligible).
    pub layer_params: u64,
}

impl ModelShape {
    pub fn of(c: &split_core::model::ModelConfig) -> Self {
        let (h, q, kv) = (c.hidden_size as u64, (c.n_heads * c.head_dim) as u64, (c.n_kv_heads * c.head_dim) as u64);
        Self { hidden: c.hidden_size, layers: c.n_layers, layer_params: 2 * h * q + 2 * h * kv + 3 * h * c.ffn_size as u64 }
    }
}

/// The edge's batched step time, measured: seconds for `N` sessions with the edge running
/// layers `k..L` and the head.
#[derive(Debug, Clone, Default)]
pub struct EdgeTimes {
    step_s: BTreeMap<(usize, usize), Vec<f64>>,
}

impl EdgeTimes {
    /// From `batch_bench --csv` rows (`k,sessions,step_ms,cpu_ms_per_token`); repeated
    /// measurements of a cell are averaged.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read the edge times {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("edge times {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self> {
        let mut lines = text.lines();
        ensure!(lines.next().is_some_and(|h| h.starts_with("k,sessions,step_ms")), "the header is not k,sessions,step_ms,...");
        let mut e = Self::default();
        for line in lines.filter(|l| !l.trim().is_empty()) {
            let f: Vec<&str> = line.split(',').collect();
            let parsed = (f.len() >= 3).then(|| Some((f[0].parse().ok()?, f[1].parse().ok()?, f[2].parse::<f64>().ok()?))).flatten();
            let Some((k, n, ms)) = parsed else { bail!("malformed row {line:?}") };
            e.step_s.entry((k, n)).or_default().push(ms / 1e3);
        }
        Ok(e)
    }

    pub fn step_s(&self, k: usize, sessions: usize) -> Result<f64> {
        let v = self.step_s.get(&(k, sessions)).with_context(|| format!("no edge time measured for k = {k}, {sessions} sessions"))?;
        Ok(v.iter().sum::<f64>() / v.len() as f64)
    }
}

/// What one action costs in one state, per output token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cost {
    pub ue_j: f64,
    pub edge_j: f64,
    pub air_s: f64,
    pub tpot_s: f64,
    pub dnll: f64,
    pub violations: u32,
    /// The objective: `ue_j + w·edge_j` plus the penalty per broken constraint.
    pub total_j: f64,
}

/// The cost of `a` in `s`, given the action's NLL increase over the clean model there.
pub fn cost(o: &Objective, m: &ModelShape, edge: &EdgeTimes, s: State, a: &Action, dnll: f64) -> Result<Cost> {
    ensure!(a.k <= m.layers, "split {} is outside 0..={}", a.k, m.layers);
    let n = s.sessions as f64;
    let band = o.radio.bandwidth_hz / n;
    let gamma = 10f64.powf(s.snr_db / 10.0);
    let (air_s, radio_w) = if a.codec == ANALOG {
        // d real values in d/2 complex channel uses; a block in outage is sent again.
        let uses = m.hidden.div_ceil(2) as f64;
        let p_out = 1.0 - (-(10f64.powf(o.radio.analog_outage_db / 10.0)) / gamma).exp();
        let sends: f64 = (0..=o.radio.analog_retransmissions).map(|i| p_out.powi(i as i32)).sum();
        (uses / band * sends, o.radio.watts_base)
    } else {
        let dtype: WireDType = a.codec.parse().with_context(|| format!("codec {:?}", a.codec))?;
        let bits = 8.0 * dtype.tensor_bytes(&[1, m.hidden]).context("tensor size overflows")? as f64;
        let rate = band * (1.0 + gamma).log2();
        (bits / rate, o.radio.watts_base + o.radio.watts_per_mbps * rate / 1e6)
    };
    let ue_s = a.k as f64 * m.layer_params as f64 * o.ue.seconds_per_param;
    let step_s = edge.step_s(a.k, s.sessions)?;
    let ue_j = ue_s * o.ue.compute_watts + air_s * radio_w;
    let edge_j = o.edge.watts * step_s / n;
    let tpot_s = ue_s + air_s + step_s;
    let violations = u32::from(tpot_s > o.objective.tpot_deadline_s) + u32::from(dnll > o.objective.nll_budget_nats);
    let total_j = ue_j + o.objective.edge_weight * edge_j + o.objective.violation_penalty_j * f64::from(violations);
    Ok(Cost { ue_j, edge_j, air_s, tpot_s, dnll, violations, total_j })
}

/// A text's measured NLLs: the clean reference and every cell of [`Objective::plan`].
#[derive(Debug, Clone)]
pub struct NllTable {
    pub clean: f64,
    /// (k, mode, channel) → seed → NLL.
    cells: HashMap<(usize, String, String), BTreeMap<u64, f64>>,
}

impl NllTable {
    pub fn new(rows: &[Row]) -> Result<Self> {
        let mut cells: HashMap<(usize, String, String), BTreeMap<u64, f64>> = HashMap::new();
        for r in rows {
            cells.entry((r.k, r.mode.clone(), r.channel.clone())).or_default().insert(r.seed, r.nll);
        }
        let clean = cells
            .get(&(0, "raw".into(), "clean".into()))
            .and_then(|c| c.values().next().copied())
            .context("the profile has no clean f32 row (k 0, raw, clean)")?;
        Ok(Self { clean, cells })
    }

    /// The NLL increase of `a` at `snr_db`: at the given seed, or the mean over `seeds`. The
    /// analog link below the lowest bin is taken as breaking any budget (+∞).
    pub fn dnll(&self, o: &Objective, a: &Action, snr_db: f64, seeds: &[u64]) -> Result<f64> {
        let channel = if a.codec == ANALOG {
            match o.bin(snr_db) {
                Some(b) => format!("rayleigh:{b}"),
                None => return Ok(f64::INFINITY),
            }
        } else {
            "clean".to_string()
        };
        let cell = self.cells.get(&(a.k, a.codec.clone(), channel.clone())).with_context(|| format!("the profile has no {a} at {channel}"))?;
        let nll: Vec<f64> = if a.codec == ANALOG {
            ensure!(!seeds.is_empty(), "no seeds to average {a} at {channel} over");
            seeds.iter().map(|s| cell.get(s).copied().with_context(|| format!("the profile has no {a} at {channel}, seed {s}"))).collect::<Result<_>>()?
        } else {
            // HARQ delivers the digital link: its one clean measurement, whatever the seed.
            vec![*cell.values().next().expect("a cell has a row")]
        };
        Ok(nll.iter().sum::<f64>() / nll.len() as f64 - self.clean)
    }
}

/// Mixed into the trace and load seeds for the training states, so they never repeat the test's.
pub(crate) const TRAINING_SALT: u64 = 0x7a1_0001;

/// A sequence of states: the SNRs of a channel trace, with a load drawn every
/// `load_dwell_decisions` decisions.
pub(crate) fn with_load(o: &Objective, channel: &[ChannelState], rng: &mut StdRng) -> Vec<State> {
    let levels = &o.states.edge_sessions;
    let mut sessions = levels[0];
    channel
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if i % o.states.load_dwell_decisions == 0 {
                sessions = levels[rng.random_range(0..levels.len())];
            }
            let snr_db = match *c {
                ChannelState::Fading { snr_db, .. } => snr_db,
                ChannelState::Erasure { .. } => unreachable!("traces are fading"),
            };
            State { snr_db, sessions }
        })
        .collect()
}

/// The held-out states: the evaluation's held-out traces ([`traces::heldout`]), each with a load
/// trace. Named by trace.
pub fn test_states(o: &Objective) -> Vec<(String, Vec<State>)> {
    let mut rng = StdRng::seed_from_u64(o.states.load_seed);
    traces::heldout(o.states.states_per_trace, o.states.trace_seed).into_iter().map(|t| (t.name, with_load(o, &t.states, &mut rng))).collect()
}

/// Training states, for any selection: ten training episodes ([`traces::training_episode`]) from
/// seeds the held-out states do not use, each with a load trace.
pub fn training_states(o: &Objective) -> Vec<State> {
    let mut channel_rng = StdRng::seed_from_u64(o.states.trace_seed ^ TRAINING_SALT);
    let mut load_rng = StdRng::seed_from_u64(o.states.load_seed ^ TRAINING_SALT);
    (0..10).flat_map(|_| with_load(o, &traces::training_episode(&mut channel_rng, o.states.states_per_trace), &mut load_rng)).collect()
}

/// Every action's cost in every held-out state: expected on the profile (what a selection may
/// use), and per test seed on the test text (what scoring uses).
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub actions: Vec<Action>,
    /// (trace name, state), in trace order.
    pub states: Vec<(String, State)>,
    /// `[state][action]`, NLL the mean over the profile seeds.
    pub expected: Vec<Vec<Cost>>,
    /// `[state][action][test seed]`: the objective on the test text.
    pub test: Vec<Vec<Vec<f64>>>,
    /// Per state, the action with the least expected cost.
    pub oracle: Vec<usize>,
    /// The action with the least expected cost summed over the training states.
    pub fixed: usize,
}

pub fn evaluate(o: &Objective, m: &ModelShape, edge: &EdgeTimes, profile: &NllTable, test: &NllTable) -> Result<Evaluation> {
    let actions = o.actions();
    let expected_at = |s: State| -> Result<Vec<Cost>> {
        actions.iter().map(|a| cost(o, m, edge, s, a, profile.dnll(o, a, s.snr_db, &o.seeds.profile)?)).collect()
    };
    let argmin = |v: &[f64]| v.iter().enumerate().min_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i).expect("actions are not empty");
    let mut totals = vec![0.0; actions.len()];
    for s in training_states(o) {
        for (t, c) in totals.iter_mut().zip(expected_at(s)?) {
            *t += c.total_j;
        }
    }
    let fixed = argmin(&totals);
    let states: Vec<(String, State)> = test_states(o).into_iter().flat_map(|(name, v)| v.into_iter().map(move |s| (name.clone(), s))).collect();
    let mut expected = Vec::new();
    let mut scored = Vec::new();
    for (_, s) in &states {
        expected.push(expected_at(*s)?);
        let per_action = actions
            .iter()
            .map(|a| o.seeds.test.iter().map(|&seed| Ok(cost(o, m, edge, *s, a, test.dnll(o, a, s.snr_db, &[seed])?)?.total_j)).collect::<Result<Vec<f64>>>())
            .collect::<Result<Vec<_>>>()?;
        scored.push(per_action);
    }
    let oracle = expected.iter().map(|c| argmin(&c.iter().map(|c| c.total_j).collect::<Vec<_>>())).collect();
    Ok(Evaluation { actions, states, expected, test: scored, oracle, fixed })
}

/// A score with its bootstrap interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    pub point: f64,
    pub low: f64,
    pub high: f64,
}

impl Evaluation {
    /// The expected oracle's total test cost over the policy's (1 = as good as the oracle),
    /// with the percentile bootstrap over states × test seeds: each resample draws the states
    /// with replacement and one test seed for each, the same for both policies.
    pub fn score(&self, policy: &dyn Fn(usize) -> usize, st: &Statistics) -> Score {
        self.score_many(&[(0..self.states.len()).map(policy).collect()], st)
    }

    /// [`Self::score`] pooled over several policies (one per learner seed; each gives an action
    /// per held-out state): the resamples draw learner seed, state and test seed together.
    pub fn score_many(&self, policies: &[Vec<usize>], st: &Statistics) -> Score {
        let n = self.states.len();
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let (mut num, mut den) = (0.0, 0.0);
        for p in policies {
            for (i, &a) in p.iter().enumerate() {
                num += mean(&self.test[i][self.oracle[i]]);
                den += mean(&self.test[i][a]);
            }
        }
        let point = num / den;
        let mut rng = StdRng::seed_from_u64(st.bootstrap_seed);
        let seeds = self.test.first().map_or(1, |s| s[0].len());
        let mut draws: Vec<f64> = (0..st.bootstrap_resamples)
            .map(|_| {
                let (mut num, mut den) = (0.0, 0.0);
                for _ in 0..n * policies.len() {
                    let (p, i, j) = (rng.random_range(0..policies.len()), rng.random_range(0..n), rng.random_range(0..seeds));
                    num += self.test[i][self.oracle[i]][j];
                    den += self.test[i][policies[p][i]][j];
                }
                num / den
            })
            .collect();
        draws.sort_by(f64::total_cmp);
        let q = |p: f64| draws[((p * draws.len() as f64) as usize).min(draws.len() - 1)];
        let tail = (1.0 - st.confidence) / 2.0;
        Score { point, low: q(tail), high: q(1.0 - tail) }
    }

    /// How often the oracle takes each action, most used first: (action, share of states).
    pub fn oracle_usage(&self) -> Vec<(usize, f64)> {
        let mut count: BTreeMap<usize, usize> = BTreeMap::new();
        for &a in &self.oracle {
            *count.entry(a).or_default() += 1;
        }
        let mut v: Vec<(usize, f64)> = count.into_iter().map(|(a, c)| (a, c as f64 / self.oracle.len() as f64)).collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        v
    }

    /// Held-out states in which every action breaks a constraint (in expectation).
    pub fn infeasible_states(&self) -> usize {
        self.expected.iter().filter(|c| c.iter().all(|c| c.violations > 0)).count()
    }
}

/// What the report says about where its inputs came from.
#[derive(Debug, Clone)]
pub struct Provenance {
    pub model_name: String,
    /// The commit that fixed the objective file.
    pub objective_commit: String,
    /// "4088 scored tokens of brown ca01-ca44 (news)", per role.
    pub profile_text: String,
    pub test_text: String,
}

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

/// One objective's headline: the best fixed action's score and the oracle's action mix.
struct Headline {
    fixed: Action,
    score: Score,
    /// Actions the oracle takes in at least 10% of the held-out states.
    common: usize,
    distinct: usize,
    infeasible: usize,
}

fn headline(o: &Objective, e: &Evaluation) -> Headline {
    let usage = e.oracle_usage();
    Headline {
        fixed: e.actions[e.fixed].clone(),
        score: e.score(&|_| e.fixed, &o.statistics),
        common: usage.iter().filter(|u| u.1 >= 0.1).count(),
        distinct: usage.len(),
        infeasible: e.infeasible_states(),
    }
}

/// The report of the decision problem (`docs/decision/<model>/report.md`): the primary
/// objective's verdict on the two conditions, its oracle's actions, the cost of every
/// action, and the sensitivity objectives beside it.
pub fn report(o: &Objective, m: &ModelShape, edge: &EdgeTimes, primary: &Evaluation, variants: &[(String, Evaluation)], p: &Provenance) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let h = headline(o, primary);
    let _ = writeln!(s, "# The decision problem, {}\n", p.model_name);
    let _ = writeln!(
        s,
        "Generated by `scripts/decision.sh` from [the objective](../objective.json), fixed in commit `{}` before any result here; the definitions are in [decision.md](../../decision.md).\n",
        p.objective_commit
    );
    let _ = writeln!(s, "- Profile (selection): {}, channel seeds {:?}.", p.profile_text, o.seeds.profile);
    let _ = writeln!(s, "- Test (scoring): {}, channel seeds {:?}.", p.test_text, o.seeds.test);
    let _ = writeln!(
        s,
        "- Held-out states: {} ({} traces of {}: {}), load drawn from {:?} sessions every {} decisions.",
        primary.states.len(),
        primary.states.len() / o.states.states_per_trace.max(1),
        o.states.states_per_trace,
        {
            let mut names: Vec<&str> = primary.states.iter().map(|(n, _)| n.as_str()).collect();
            names.dedup();
            names.join(", ")
        },
        o.states.edge_sessions,
        o.states.load_dwell_decisions
    );
    let ue_layer_ms = m.layer_params as f64 * o.ue.seconds_per_param * 1e3;
    if let (Ok(t0), Ok(tl)) = (edge.step_s(0, 1), edge.step_s(m.layers, 1)) {
        let here = (t0 - tl) / m.layers as f64 * 1e3;
        let _ = writeln!(
            s,
            "- UE `{}`: {:.3} ms and {:.2} mJ per layer per token; this machine's edge takes {:.3} ms per layer for one session, so the UE is {:.1}× slower than this CPU.",
            o.ue.class,
            ue_layer_ms,
            ue_layer_ms * o.ue.compute_watts,
            here,
            ue_layer_ms / here
        );
    }
    let _ = writeln!(s, "\nEdge step time (ms, measured here, batched, median round):\n");
    let _ = writeln!(s, "| k | {} |", o.states.edge_sessions.iter().map(|n| format!("{n} sessions")).collect::<Vec<_>>().join(" | "));
    let _ = writeln!(s, "|---:|{}", "---:|".repeat(o.states.edge_sessions.len()));
    for &k in &o.actions.ks {
        let cells: Vec<String> = o.states.edge_sessions.iter().map(|&n| edge.step_s(k, n).map_or("-".into(), |t| format!("{:.2}", t * 1e3))).collect();
        let _ = writeln!(s, "| {k} | {} |", cells.join(" | "));
    }

    let met = |b: bool| if b { "**met**" } else { "**not met**" };
    let _ = writeln!(s, "\n## Verdict, primary objective\n");
    let _ = writeln!(
        s,
        "- The best fixed action, chosen on the training states with the profile, is `{}`. On the held-out states it scores **{}** of the expected oracle ({}% interval {}–{}). The condition is a score of at most 90% with an interval that excludes 90%: {}.",
        h.fixed,
        pct(h.score.point),
        (o.statistics.confidence * 100.0).round(),
        pct(h.score.low),
        pct(h.score.high),
        met(h.score.high < 0.9)
    );
    let _ = writeln!(
        s,
        "- The oracle takes {} distinct actions; {} of them in at least 10% of the decisions. The condition is at least 3: {}.",
        h.distinct,
        h.common,
        met(h.common >= 3)
    );
    let _ = writeln!(s, "- Held-out states where every action breaks a constraint: {} of {}.", h.infeasible, primary.states.len());
    let _ = writeln!(s, "\nThe oracle's actions on the held-out states:\n\n| action | share |\n|---|---:|");
    for (a, share) in primary.oracle_usage() {
        let _ = writeln!(s, "| `{}` | {} |", primary.actions[a], pct(share));
    }

    let _ = writeln!(s, "\n## What each action costs\n");
    let _ = writeln!(s, "Means over the held-out states, NLL from the profile (the costs a selection sees). Energies per output token.\n");
    let _ = writeln!(s, "| action | UE mJ | edge mJ | air ms | TPOT ms | ΔNLL | breaks a constraint | objective mJ |");
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|");
    let n = primary.states.len() as f64;
    for (i, a) in primary.actions.iter().enumerate() {
        let col = |f: &dyn Fn(&Cost) -> f64| primary.expected.iter().map(|c| f(&c[i])).sum::<f64>() / n;
        let finite_dnll: Vec<f64> = primary.expected.iter().map(|c| c[i].dnll).filter(|d| d.is_finite()).collect();
        let dnll = if finite_dnll.is_empty() { "-".into() } else { format!("{:.3}", finite_dnll.iter().sum::<f64>() / finite_dnll.len() as f64) };
        let _ = writeln!(
            s,
            "| `{a}` | {:.2} | {:.2} | {:.2} | {:.1} | {dnll} | {} | {:.1} |",
            col(&|c| c.ue_j * 1e3),
            col(&|c| c.edge_j * 1e3),
            col(&|c| c.air_s * 1e3),
            col(&|c| c.tpot_s * 1e3),
            pct(col(&|c| f64::from(c.violations > 0))),
            col(&|c| c.total_j * 1e3)
        );
    }

    let _ = writeln!(s, "\n## Sensitivity\n");
    let _ = writeln!(s, "Fixed in the same commit as the primary objective; none replaces it.\n");
    let _ = writeln!(s, "| objective | best fixed | score of the oracle | interval | oracle actions (≥ 10%) | infeasible states |");
    let _ = writeln!(s, "|---|---|---:|---|---:|---:|");
    for (name, e) in std::iter::once(("primary".to_string(), primary)).chain(variants.iter().map(|(n, e)| (n.clone(), e))) {
        let h = headline(o, e);
        let _ = writeln!(
            s,
            "| {name} | `{}` | {} | {}–{} | {} ({}) | {} |",
            h.fixed,
            pct(h.score.point),
            pct(h.score.low),
            pct(h.score.high),
            h.distinct,
            h.common,
            h.infeasible
        );
    }
    s
}

/// The held-out states with the oracle's and the best fixed action's expected costs, one row per
/// state (`docs/decision/<model>/oracle.csv`).
pub fn oracle_csv(e: &Evaluation) -> String {
    let mut s = String::from("trace,step,snr_db,sessions,oracle,oracle_mj,fixed,fixed_mj\n");
    let mut step = 0;
    for (i, (name, st)) in e.states.iter().enumerate() {
        if i > 0 && e.states[i - 1].0 != *name {
            step = 0;
        }
        let (o, f) = (&e.expected[i][e.oracle[i]], &e.expected[i][e.fixed]);
        s.push_str(&format!("{name},{step},{:.2},{},{},{:.4},{},{:.4}\n", st.snr_db, st.sessions, e.actions[e.oracle[i]], o.total_j * 1e3, e.actions[e.fixed], f.total_j * 1e3));
        step += 1;
    }
    s
}

/// A problem to test with: the committed objective, SmolLM2-135M's shape, edge times linear in
/// the layers, and a synthetic profile.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;
    use crate::link_profile::todo;

    pub(crate) fn committed() -> Objective {
        Objective::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/decision/objective.json")).unwrap()
    }

    pub(crate) fn shape() -> ModelShape {
        ModelShape { hidden: 576, layers: 30, layer_params: 3_538_944 }
    }

    pub(crate) fn edge(o: &Objective, per_layer_ms: f64) -> EdgeTimes {
        edge_fn(o, &|k, n| (1.0 + (30 - k) as f64 * per_layer_ms) * n as f64)
    }

    /// Edge step times of `ms(k, sessions)`.
    pub(crate) fn edge_fn(o: &Objective, ms: &dyn Fn(usize, usize) -> f64) -> EdgeTimes {
        let mut csv = String::from("k,sessions,step_ms,cpu_ms_per_token\n");
        for &k in &o.actions.ks {
            for &n in &o.states.edge_sessions {
                csv.push_str(&format!("{k},{n},{},0\n", ms(k, n)));
            }
        }
        EdgeTimes::parse(&csv).unwrap()
    }

    /// A profile where the analog link costs `analog` nats per 10 dB below 40 and each digital
    /// codec its bits' worth: the oracle must take analog in good channels only.
    pub(crate) fn rows(o: &Objective, role: Role, analog: f64) -> Vec<Row> {
        todo(&o.plan(role), &[])
            .unwrap()
            .into_iter()
            .map(|(k, mode, ch, seed)| {
                let nll = 3.0
                    + match (mode.name.as_str(), ch.snr_db()) {
                        ("raw", _) => 0.0,
                        (ANALOG, Some(db)) => analog * (40.0 - db) / 10.0 + 0.001 * (seed % 3) as f64,
                        ("int4", _) => 0.03,
                        ("int8", _) => 0.002,
                        _ => 0.0005,
                    };
                Row { k, mode: mode.name, channel: ch.name(), seed, nll, tokens: 100, seconds: 0.0 }
            })
            .collect()
    }

}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;
    use crate::link_profile::todo;

    #[test]
    fn the_committed_objective_loads_and_bad_ones_are_refused_by_what_is_wrong() {
        let o = committed();
        assert_eq!(o.actions().len(), o.actions.ks.len() * o.actions.codecs.len());
        let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/decision/objective.json")).unwrap();
        let refused = |from: &str, to: &str| {
            let dir = std::env::temp_dir().join(format!("splitinfer-objective-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let p = dir.join("o.json");
            assert!(text.contains(from), "{from}");
            std::fs::write(&p, text.replacen(from, to, 1)).unwrap();
            format!("{:#}", Objective::load(&p).unwrap_err())
        };
        assert!(refused("\"test\": [100,", "\"test\": [4,").contains("consecutive"));
        assert!(refused("\"test\": [100, 101, 102, 103, 104]", "\"test\": [4, 5]").contains("independent"));
        assert!(refused("\"int4\",", "\"fm\",").contains("\"fm\""));
        assert!(refused("\"version\": 1,", "\"version\": 1, \"weights\": 3,").contains("unknown field"));
        assert!(refused("\"test\": \"fiction\"", "\"test\": \"news\"").contains("differ"));
        assert!(refused("\"tpot_deadline_s\": 0.1", "\"tpot_deadline_s\": 0").contains("positive"));
    }

    #[test]
    fn the_plan_measures_every_cell_once_with_its_role_seeds() {
        let o = committed();
        let bins = o.states.snr_bins_db.len();
        let (ks, digital) = (o.actions.ks.len(), o.actions.codecs.iter().filter(|c| *c != ANALOG).count());
        for (role, seeds) in [(Role::Profile, &o.seeds.profile), (Role::Test, &o.seeds.test)] {
            let t = todo(&o.plan(role), &[]).unwrap();
            assert_eq!(t.len(), 1 + digital * ks + ks * bins * seeds.len());
            assert!(t.iter().all(|(_, m, c, s)| if m.name == ANALOG { seeds.contains(s) && c.snr_db().is_some() } else { *s == seeds[0] }));
        }
        assert_eq!((o.bin(9.9), o.bin(10.0), o.bin(27.0), o.bin(99.0)), (None, Some(10.0), Some(20.0), Some(40.0)));
    }

    #[test]
    fn costs_follow_the_formulas_of_the_docs() {
        let o = committed();
        let (m, e) = (shape(), edge(&o, 0.2));
        let s = State { snr_db: 0.0, sessions: 1 };
        // int8: 576 codes + one f32 scale = 4640 bits at 5 MHz · log2(2) = 5 Mb/s.
        let c = cost(&o, &m, &e, s, &Action { k: 0, codec: "int8".into() }, 0.01).unwrap();
        let air = 4640.0 / 5e6;
        assert!((c.air_s - air).abs() < 1e-12, "{}", c.air_s);
        assert!((c.ue_j - air * (1.28804 + 0.43839 * 5.0)).abs() < 1e-12);
        assert!((c.edge_j - 8.75 * 7e-3).abs() < 1e-12 && (c.tpot_s - (air + 7e-3)).abs() < 1e-12);
        assert_eq!(c.violations, 0);
        assert!((c.total_j - (c.ue_j + c.edge_j)).abs() < 1e-12);
        // Analog at 0 dB: 288 channel uses, sent again with the outage probability 1 − e⁻¹.
        let a = cost(&o, &m, &e, s, &Action { k: 30, codec: ANALOG.into() }, 0.0).unwrap();
        let sends = 1.0 + (1.0 - (-1f64).exp());
        assert!((a.air_s - 288.0 / 5e6 * sends).abs() < 1e-12);
        let ue_s = 30.0 * 3_538_944.0 * 9.41e-11;
        assert!((a.ue_j - (ue_s * 2.0 + a.air_s * 1.28804)).abs() < 1e-12);
        // The band is shared: 16 sessions, 16 times the air time; the ε budget and the
        // deadline each cost the penalty.
        let shared = cost(&o, &m, &e, State { snr_db: 0.0, sessions: 16 }, &Action { k: 0, codec: "int8".into() }, 0.2).unwrap();
        assert!((shared.air_s - 16.0 * air).abs() < 1e-12);
        assert_eq!(shared.violations, 2, "tpot {}", shared.tpot_s);
        assert!((shared.total_j - shared.ue_j - shared.edge_j - 2.0).abs() < 1e-12);
        assert!(cost(&o, &m, &e, s, &Action { k: 31, codec: "int8".into() }, 0.0).is_err());
    }

    #[test]
    fn the_oracle_is_the_cheapest_feasible_action_and_scores_one() {
        let o = committed();
        let (m, e) = (shape(), edge(&o, 0.2));
        let (profile, test) = (NllTable::new(&rows(&o, Role::Profile, 0.04)).unwrap(), NllTable::new(&rows(&o, Role::Test, 0.04)).unwrap());
        let ev = evaluate(&o, &m, &e, &profile, &test).unwrap();
        for (i, (_, s)) in ev.states.iter().enumerate() {
            let best = ev.expected[i].iter().map(|c| c.total_j).fold(f64::INFINITY, f64::min);
            assert_eq!(ev.expected[i][ev.oracle[i]].total_j, best);
            // Analog only where its bin keeps ε: at 40 dB (0.002) and 30 dB (0.042), not 20 dB.
            if ev.actions[ev.oracle[i]].codec == ANALOG {
                assert!(o.bin(s.snr_db).is_some_and(|b| b >= 30.0), "analog at {} dB", s.snr_db);
            }
        }
        assert!(ev.oracle.iter().any(|&a| ev.actions[a].codec == ANALOG), "the analog branch is exercised");
        assert!(ev.oracle.iter().any(|&a| ev.actions[a].codec != ANALOG));
        let oracle = ev.score(&|i| ev.oracle[i], &o.statistics);
        assert!((oracle.point - 1.0).abs() < 1e-12 && (oracle.low - 1.0).abs() < 1e-12 && (oracle.high - 1.0).abs() < 1e-12);
        let fixed = ev.score(&|_| ev.fixed, &o.statistics);
        assert!(fixed.point <= 1.0 && fixed.low <= fixed.point && fixed.point <= fixed.high, "{fixed:?}");
        let usage = ev.oracle_usage();
        assert!((usage.iter().map(|u| u.1).sum::<f64>() - 1.0).abs() < 1e-9);
        // A missing cell is an error that names it, not a silent zero.
        let partial: Vec<Row> = rows(&o, Role::Test, 0.04).into_iter().filter(|r| !(r.mode == "int8" && r.k == 10)).collect();
        let err = evaluate(&o, &m, &e, &profile, &NllTable::new(&partial).unwrap()).unwrap_err();
        assert!(format!("{err:#}").contains("k=10 int8"), "{err:#}");
    }
}
