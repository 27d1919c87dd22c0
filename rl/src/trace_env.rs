//! The decision process the policies learn: at each state of a channel trace, choose `k`; the
//! reward (see [`crate::reward`]) needs the perplexity of that choice, which comes either from the
//! surrogate (cheap) or from the real environment (one real evaluation per step).
//!
//! The observation is `(snr_db, fading_m, prev_k)`, clamped to the state space and scaled to
//! about [−1, 1] exactly as the agent does with a policy file's metadata.

use anyhow::Result;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::env::{Step, VecEnv};
use crate::real::{ChannelState, RealEnv};
use crate::reward::RewardModel;
use crate::surrogate::Surrogate;
use crate::traces::{M_RANGE, SNR_RANGE, training_episode};

/// The state features, in input order, with their clamp range; normalisation maps the range
/// onto [−1, 1]. Matches the agent's `PolicyMeta` (features, lower, upper, mean, std).
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    pub features: Vec<String>,
    pub lower: Vec<f32>,
    pub upper: Vec<f32>,
}

impl Layout {
    pub fn fading(n_layers: usize) -> Self {
        Self {
            features: vec!["snr_db".into(), "fading_m".into(), "prev_k".into()],
            lower: vec![SNR_RANGE.0 as f32, M_RANGE.0 as f32, 0.0],
            upper: vec![SNR_RANGE.1 as f32, M_RANGE.1 as f32, n_layers as f32],
        }
    }

    pub fn mean(&self) -> Vec<f32> {
        self.lower.iter().zip(&self.upper).map(|(l, u)| (l + u) / 2.0).collect()
    }

    pub fn std(&self) -> Vec<f32> {
        self.lower.iter().zip(&self.upper).map(|(l, u)| ((u - l) / 2.0).max(1e-6)).collect()
    }

    /// Raw features of a fading state with `prev` in force (0 when none yet).
    pub fn raw(&self, state: &ChannelState, prev: Option<usize>) -> Vec<f32> {
        match *state {
            ChannelState::Fading { snr_db, m } => vec![snr_db as f32, m as f32, prev.unwrap_or(0) as f32],
            ChannelState::Erasure { .. } => unreachable!("policies are trained on fading states"),
        }
    }

    /// Clamp, then `(x − mean) / std`.
    pub fn normalize(&self, raw: &[f32]) -> Vec<f32> {
        let (mean, std) = (self.mean(), self.std());
        raw.iter().enumerate().map(|(j, &x)| (x.clamp(self.lower[j], self.upper[j]) - mean[j]) / std[j]).collect()
    }

    pub fn obs(&self, state: &ChannelState, prev: Option<usize>) -> Vec<f32> {
        self.normalize(&self.raw(state, prev))
    }
}

/// Where the perplexity of a choice comes from.
pub trait Quality {
    fn ppl(&mut self, points: &[(usize, ChannelState)]) -> Result<Vec<f64>>;
    fn real_evaluations(&self) -> usize;
}

impl Quality for &Surrogate {
    fn ppl(&mut self, points: &[(usize, ChannelState)]) -> Result<Vec<f64>> {
        self.predict_ppl(points)
    }

    fn real_evaluations(&self) -> usize {
        0
    }
}

/// The real environment, each point a real evaluation with a fresh channel seed.
pub struct Real<'a> {
    pub env: &'a mut RealEnv,
    pub next_seed: u64,
}

impl Quality for Real<'_> {
    fn ppl(&mut self, points: &[(usize, ChannelState)]) -> Result<Vec<f64>> {
        points
            .iter()
            .map(|&(k, s)| {
                self.next_seed += 1;
                self.env.ppl(k, s, self.next_seed)
            })
            .collect()
    }

    fn real_evaluations(&self) -> usize {
        self.env.evaluations()
    }
}

/// `n_envs` episodes of `episode_len` training states each, side by side.
pub struct TraceEnv<Q: Quality> {
    pub quality: Q,
    reward: RewardModel,
    layout: Layout,
    n_envs: usize,
    episode_len: usize,
    rng: StdRng,
    episodes: Vec<Vec<ChannelState>>,
    t: Vec<usize>,
    prev: Vec<usize>,
}

impl<Q: Quality> TraceEnv<Q> {
    pub fn new(quality: Q, reward: RewardModel, n_envs: usize, episode_len: usize, seed: u64) -> Self {
        let layout = Layout::fading(reward.n_layers);
        Self { quality, reward, layout, n_envs, episode_len, rng: StdRng::seed_from_u64(seed), episodes: Vec::new(), t: Vec::new(), prev: Vec::new() }
    }

    fn start(&mut self, i: usize) {
        self.episodes[i] = training_episode(&mut self.rng, self.episode_len);
        self.t[i] = 0;
        // Episodes start from any split, so the policy learns to leave each of them.
        self.prev[i] = self.rng.random_range(0..=self.reward.n_layers);
    }

    fn observe(&self) -> Vec<f32> {
        (0..self.n_envs).flat_map(|i| self.layout.obs(&self.episodes[i][self.t[i]], Some(self.prev[i]))).collect()
    }
}

impl<Q: Quality> VecEnv for TraceEnv<Q> {
    fn n_envs(&self) -> usize {
        self.n_envs
    }

    fn obs_dim(&self) -> usize {
        self.layout.features.len()
    }

    fn n_actions(&self) -> usize {
        self.reward.n_layers + 1
    }

    fn reset(&mut self) -> Result<Vec<f32>> {
        self.episodes = vec![Vec::new(); self.n_envs];
        self.t = vec![0; self.n_envs];
        self.prev = vec![0; self.n_envs];
        for i in 0..self.n_envs {
            self.start(i);
        }
        Ok(self.observe())
    }

    fn step(&mut self, actions: &[usize]) -> Result<Step> {
        anyhow::ensure!(actions.len() == self.n_envs, "{} actions for {} environments", actions.len(), self.n_envs);
        let points: Vec<(usize, ChannelState)> = (0..self.n_envs).map(|i| (actions[i], self.episodes[i][self.t[i]])).collect();
        let ppl = self.quality.ppl(&points)?;
        let mut reward = Vec::with_capacity(self.n_envs);
        let mut done = Vec::with_capacity(self.n_envs);
        for i in 0..self.n_envs {
            let (k, state) = points[i];
            reward.push(self.reward.reward(k, Some(self.prev[i]), &state, ppl[i]) as f32);
            self.prev[i] = k;
            self.t[i] += 1;
            let end = self.t[i] == self.episode_len;
            if end {
                self.start(i);
            }
            done.push(end);
        }
        Ok(Step { obs: self.observe(), reward, done })
    }

    fn real_evaluations(&self) -> usize {
        self.quality.real_evaluations()
    }
}
