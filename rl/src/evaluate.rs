//! Evaluation on held-out traces against the real environment.
//!
//! The oracle evaluates every split at every state of every held-out trace for real (one seed per
//! state); that table is the ground truth every policy is scored on, so all of them are compared
//! on the same real perplexities. The oracle itself is the best sequence of splits for the table,
//! switching costs included (dynamic programming over the trace).

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};
use rand::rngs::StdRng;
use rand::Rng;

use crate::env::Actor;
use crate::real::{ChannelState, RealEnv};
use crate::reward::{RewardModel, loss_rate};
use crate::surrogate::Surrogate;
use crate::trace_env::Layout;
use crate::traces::Trace;

/// Real perplexity of every split at every state of the held-out traces.
pub struct Table {
    pub traces: Vec<Trace>,
    /// `[trace][t][k]`.
    pub ppl: Vec<Vec<Vec<f64>>>,
    pub evaluations: usize,
    pub seconds: f64,
}

const TABLE_HEADER: &str = "trace,t,snr_db,m,k,ppl,seconds";

/// Fills the table, reading what `csv` already holds and appending what it evaluates.
pub fn oracle_table(env: &mut RealEnv, traces: &[Trace], csv: &Path, progress: &mut dyn FnMut(usize, usize)) -> Result<Table> {
    let n = env.n_layers();
    let mut known: HashMap<(String, usize, usize), (f64, f64)> = HashMap::new();
    if let Ok(text) = std::fs::read_to_string(csv) {
        for (i, line) in text.lines().enumerate().skip(1).filter(|(_, l)| !l.trim().is_empty()) {
            let f: Vec<&str> = line.split(',').collect();
            let bad = || anyhow::anyhow!("{} line {}: malformed row {line:?}", csv.display(), i + 1);
            if f.len() != 7 {
                return Err(bad());
            }
            let (t, k): (usize, usize) = (f[1].parse().map_err(|_| bad())?, f[4].parse().map_err(|_| bad())?);
            known.insert((f[0].to_string(), t, k), (f[5].parse().map_err(|_| bad())?, f[6].parse().map_err(|_| bad())?));
        }
    }
    let new_file = !csv.exists();
    let mut out = OpenOptions::new().create(true).append(true).open(csv).with_context(|| format!("cannot write {}", csv.display()))?;
    if new_file {
        writeln!(out, "{TABLE_HEADER}")?;
    }
    let total = traces.iter().map(|t| t.states.len()).sum::<usize>() * (n + 1);
    let (mut done, mut evaluations, mut seconds) = (0, 0, 0.0);
    let mut ppl = Vec::new();
    for (ti, trace) in traces.iter().enumerate() {
        let mut per_t = Vec::new();
        for (t, state) in trace.states.iter().enumerate() {
            let ChannelState::Fading { snr_db, m } = *state else { bail!("held-out traces are fading states") };
            let mut row = Vec::with_capacity(n + 1);
            for k in 0..=n {
                let (p, s) = match known.get(&(trace.name.clone(), t, k)) {
                    Some(&v) => v,
                    None => {
                        let before = env.seconds();
                        let p = env.ppl(k, *state, 1_000_000 + 1_000 * ti as u64 + t as u64)?;
                        let s = env.seconds() - before;
                        writeln!(out, "{},{t},{snr_db},{m},{k},{p:.6},{s:.4}", trace.name)?;
                        out.flush()?;
                        (p, s)
                    }
                };
                row.push(p);
                evaluations += 1;
                seconds += s;
                done += 1;
                progress(done, total);
            }
            per_t.push(row);
        }
        ppl.push(per_t);
    }
    Ok(Table { traces: traces.to_vec(), ppl, evaluations, seconds })
}

/// A policy under evaluation: one split per state, given the split in force.
pub trait Chooser {
    fn name(&self) -> String;
    /// Called at the start of each trace.
    fn reset(&mut self) {}
    fn choose(&mut self, state: &ChannelState, prev: Option<usize>) -> Result<usize>;
}

pub struct Fixed(pub usize);

impl Chooser for Fixed {
    fn name(&self) -> String {
        format!("fixed k = {}", self.0)
    }

    fn choose(&mut self, _: &ChannelState, _: Option<usize>) -> Result<usize> {
        Ok(self.0)
    }
}

/// A split drawn uniformly at every state (a floor for the table).
pub struct Random(pub StdRng, pub usize);

impl Chooser for Random {
    fn name(&self) -> String {
        "random".into()
    }

    fn choose(&mut self, _: &ChannelState, _: Option<usize>) -> Result<usize> {
        Ok(self.0.random_range(0..=self.1))
    }
}

/// The agent's threshold policy (the same code the agent runs) on a table file.
pub struct ThresholdTable {
    pub path: std::path::PathBuf,
    pub hysteresis_db: f64,
    policy: Option<agent::policy::Threshold>,
}

impl ThresholdTable {
    pub fn new(path: &Path, hysteresis_db: f64) -> Self {
        Self { path: path.to_path_buf(), hysteresis_db, policy: None }
    }
}

impl Chooser for ThresholdTable {
    fn name(&self) -> String {
        format!("threshold ({})", self.path.file_name().map(|f| f.to_string_lossy()).unwrap_or_default())
    }

    fn reset(&mut self) {
        self.policy = None;
    }

    fn choose(&mut self, state: &ChannelState, prev: Option<usize>) -> Result<usize> {
        use agent::policy::Policy;
        if self.policy.is_none() {
            let table = agent::policy::threshold::Table::load(&self.path)?;
            self.policy = Some(agent::policy::Threshold::new(table, self.hysteresis_db));
        }
        let ChannelState::Fading { snr_db, m } = *state else { bail!("the threshold table reads fading states") };
        let obs = agent::observation::Observation {
            unix_ms: 0,
            scenario: "trace".into(),
            snr_db,
            fading_m: m,
            loss_rate: loss_rate(state),
            erasure_rate: 0.0,
            mean_delay_ms: 0.0,
            impaired: true,
            channel_version: 0,
            edge: None,
        };
        let p = self.policy.as_mut().expect("set above").decide(&obs, prev.map(|k| k as u32));
        Ok(p.k as usize)
    }
}

/// At each state the split the surrogate's reward ranks first (no training at all).
pub struct Greedy<'a> {
    pub surrogate: &'a Surrogate,
    pub reward: RewardModel,
}

impl Chooser for Greedy<'_> {
    fn name(&self) -> String {
        "greedy on surrogate".into()
    }

    fn choose(&mut self, state: &ChannelState, prev: Option<usize>) -> Result<usize> {
        let ks: Vec<(usize, ChannelState)> = (0..=self.reward.n_layers).map(|k| (k, *state)).collect();
        let ppl = self.surrogate.predict_ppl(&ks)?;
        Ok(argmax((0..ks.len()).map(|k| self.reward.reward(k, prev, state, ppl[k]))))
    }
}

/// A trained network, fed the layout's normalised observation.
pub struct Learned<'a> {
    pub name: String,
    pub actor: &'a dyn Actor,
    pub layout: Layout,
}

impl Chooser for Learned<'_> {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn choose(&mut self, state: &ChannelState, prev: Option<usize>) -> Result<usize> {
        Ok(self.actor.act(&self.layout.obs(state, prev))?[0])
    }
}

/// Index of the largest value (the first of equals).
pub fn argmax(values: impl Iterator<Item = f64>) -> usize {
    let mut best = (0, f64::NEG_INFINITY);
    for (i, v) in values.enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    best.0
}

/// How one policy did on the held-out traces.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Outcome {
    pub name: String,
    /// Mean reward per decision over all traces.
    pub mean_reward: f64,
    /// Mean reward per decision, per trace.
    pub per_trace: Vec<f64>,
    /// The splits chosen, `[trace][t]`.
    pub ks: Vec<Vec<usize>>,
    /// Mean real perplexity of the choices.
    pub mean_ppl: f64,
    pub switches: usize,
}

/// Scores recorded splits (`[trace][t]`) on the table.
pub fn outcome(name: String, table: &Table, reward: &RewardModel, ks: Vec<Vec<usize>>) -> Outcome {
    let (mut total, mut n, mut ppl_sum, mut switches) = (0.0, 0, 0.0, 0);
    let mut per_trace = Vec::new();
    for (ti, trace) in table.traces.iter().enumerate() {
        let mut sum = 0.0;
        for (t, state) in trace.states.iter().enumerate() {
            let k = ks[ti][t];
            let prev = (t > 0).then(|| ks[ti][t - 1]);
            switches += usize::from(prev.is_some_and(|p| p != k));
            let p = table.ppl[ti][t][k];
            sum += reward.reward(k, prev, state, p);
            ppl_sum += p;
        }
        per_trace.push(sum / trace.states.len() as f64);
        total += sum;
        n += trace.states.len();
    }
    Outcome { name, mean_reward: total / n as f64, per_trace, ks, mean_ppl: ppl_sum / n as f64, switches }
}

/// Runs `policy` along every held-out trace and scores its choices on the real table.
pub fn evaluate(table: &Table, reward: &RewardModel, policy: &mut dyn Chooser) -> Result<Outcome> {
    let mut ks = Vec::new();
    for trace in &table.traces {
        policy.reset();
        let mut prev = None;
        let mut chosen = Vec::new();
        for state in &trace.states {
            let k = policy.choose(state, prev)?;
            if k > reward.n_layers {
                bail!("{} chose split {k} outside 0..={}", policy.name(), reward.n_layers);
            }
            chosen.push(k);
            prev = Some(k);
        }
        ks.push(chosen);
    }
    Ok(outcome(policy.name(), table, reward, ks))
}

/// The best split sequence for the real table (exhaustive over splits, exact over switching).
pub fn oracle(table: &Table, reward: &RewardModel) -> Outcome {
    let kk = reward.n_layers + 1;
    let mut ks = Vec::new();
    for (ti, trace) in table.traces.iter().enumerate() {
        let r = |t: usize, k: usize, prev: Option<usize>| reward.reward(k, prev, &trace.states[t], table.ppl[ti][t][k]);
        let mut value: Vec<f64> = (0..kk).map(|k| r(0, k, None)).collect();
        let mut back: Vec<Vec<usize>> = Vec::new();
        for t in 1..trace.states.len() {
            let mut next = vec![f64::NEG_INFINITY; kk];
            let mut from = vec![0; kk];
            for k in 0..kk {
                for (j, &before) in value.iter().enumerate() {
                    let v = before + r(t, k, Some(j));
                    if v > next[k] {
                        next[k] = v;
                        from[k] = j;
                    }
                }
            }
            value = next;
            back.push(from);
        }
        let mut k = argmax(value.iter().copied());
        let mut seq = vec![k];
        for from in back.iter().rev() {
            k = from[k];
            seq.push(k);
        }
        seq.reverse();
        ks.push(seq);
    }
    outcome("oracle".into(), table, reward, ks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reward::{Latency, Weights};

    fn table() -> (Table, RewardModel) {
        let lat = Latency { edge_layer_ms: 0.5, ue_layer_ms: 1.5, hidden_bytes: 1152.0, bandwidth_hz: 20e6, fixed_rate_bps: 100e6, propagation_ms: 1.0 };
        let reward = RewardModel::new(Weights::Weighted { quality: 1.0, load: 0.2, latency: 0.0, switch: 0.1 }, 4, 10.0, lat, -5.0);
        let s = |snr| ChannelState::Fading { snr_db: snr, m: 1.0 };
        let traces = vec![Trace { name: "a".into(), states: vec![s(20.0), s(0.0), s(20.0)] }];
        // Good states: every k is clean. The bad state: only k = 3 is (nearly) clean.
        let good = vec![10.0; 5];
        let bad = vec![100.0, 100.0, 100.0, 11.0, 100.0];
        (Table { traces, ppl: vec![vec![good.clone(), bad, good]], evaluations: 15, seconds: 0.0 }, reward)
    }

    #[test]
    fn oracle_is_the_best_sequence_with_switching_costs() {
        let (t, r) = table();
        let o = oracle(&t, &r);
        // k = 3 for the bad state gains 0.81 of quality for 0.15 of load and 0.2 of switching
        // there and back: 3.159 against 3.109 staying at 3 and 3.059 at 3 throughout.
        assert_eq!(o.ks, vec![vec![0, 3, 0]], "{o:?}");
        assert!((o.mean_reward - 3.159_090_909 / 3.0).abs() < 1e-6, "{}", o.mean_reward);
        // No policy beats the oracle on its own table.
        for k in 0..=4 {
            let f = evaluate(&t, &r, &mut Fixed(k)).unwrap();
            assert!(f.mean_reward <= o.mean_reward + 1e-12, "{k}: {f:?}");
        }
        // With dearer switches, staying at 3 from the start wins.
        let dear = RewardModel { weights: Weights::Weighted { quality: 1.0, load: 0.2, latency: 0.0, switch: 2.0 }, ..r };
        assert_eq!(oracle(&t, &dear).ks, vec![vec![3, 3, 3]]);
    }

    #[test]
    fn outcomes_count_switches_and_score_the_table() {
        let (t, r) = table();
        let o = evaluate(&t, &r, &mut Fixed(0)).unwrap();
        assert_eq!(o.switches, 0);
        let expect = (r.reward(0, None, &t.traces[0].states[0], 10.0) + r.reward(0, Some(0), &t.traces[0].states[1], 100.0) + r.reward(0, Some(0), &t.traces[0].states[2], 10.0)) / 3.0;
        assert!((o.mean_reward - expect).abs() < 1e-12);
        assert_eq!(evaluate(&t, &r, &mut Fixed(5)).unwrap_err().to_string(), "fixed k = 5 chose split 5 outside 0..=4");
    }
}
