//! Our learners for discrete actions over a [`VecEnv`]: PPO ([`ppo`]), synchronous advantage
//! actor-critic ([`a2c`]) and DQN ([`dqn`]), on candle, CPU only. Everything random (parameter
//! initialisation, action sampling, shuffles, exploration) comes from the config's seed, so the
//! same seed gives the same run.
//!
//! This module holds what they share: the result types, the seeded initialisation, gradient
//! clipping, greedy action selection and the on-policy rollout.

pub mod a2c;
pub mod dqn;
pub mod ppo;

pub use a2c::A2cConfig;
pub use dqn::DqnConfig;
pub use ppo::PpoConfig;

use std::collections::HashMap;

use anyhow::{Context, ensure};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use rand::Rng;
use rand::rngs::StdRng;

use crate::env::{Actor, VecEnv};
use crate::nets::{Activation, Mlp};

/// What one update (one rollout for PPO/A2C, `report_every` transitions for DQN) did.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateStats {
    /// 1-based.
    pub update: usize,
    /// Environment transitions so far (`n_envs` per vectorised step).
    pub env_steps: usize,
    /// [`VecEnv::real_evaluations`] after this update.
    pub real_evaluations: usize,
    /// Mean per-step reward over this update's transitions.
    pub mean_reward: f32,
    /// Mean training loss over this update's gradient steps (0 if there were none).
    pub loss: f32,
    /// Wall time since training started.
    pub seconds: f64,
}

/// A trained policy network and its learning curve.
pub struct Trained {
    pub algorithm: &'static str,
    /// Outputs `n_actions` values per observation: logits (PPO, A2C) or Q-values (DQN); the greedy
    /// action is the argmax.
    pub net: Mlp,
    /// The variables of `net` (only those).
    pub varmap: VarMap,
    pub curve: Vec<UpdateStats>,
}

impl Actor for Trained {
    fn act(&self, obs: &[f32]) -> anyhow::Result<Vec<usize>> {
        greedy_actions(&self.net, obs)
    }
}

/// Called after every update with the stats and the current greedy policy; return `Ok(false)` to
/// stop training early.
pub type OnUpdate<'a> = &'a mut dyn FnMut(&UpdateStats, &dyn Actor) -> anyhow::Result<bool>;

/// The greedy policy of a network during training.
struct Greedy<'a>(&'a Mlp);

impl Actor for Greedy<'_> {
    fn act(&self, obs: &[f32]) -> anyhow::Result<Vec<usize>> {
        greedy_actions(self.0, obs)
    }
}

/// Argmax of `net`'s output for each row of `obs`.
fn greedy_actions(net: &Mlp, obs: &[f32]) -> anyhow::Result<Vec<usize>> {
    let x = obs_tensor(obs, net.sizes()[0])?;
    let best = net.forward(&x)?.argmax(1)?.to_vec1::<u32>()?;
    Ok(best.into_iter().map(|a| a as usize).collect())
}

/// `obs` (row-major, `obs_dim` per row) as an `n × obs_dim` tensor.
fn obs_tensor(obs: &[f32], obs_dim: usize) -> anyhow::Result<Tensor> {
    ensure!(
        obs_dim > 0 && obs.len().is_multiple_of(obs_dim),
        "observation length {} is not a multiple of obs_dim {obs_dim}",
        obs.len()
    );
    Ok(Tensor::from_slice(obs, (obs.len() / obs_dim, obs_dim), &Device::Cpu)?)
}

/// The variables of `varmap`, sorted by name so that anything iterating them (initialisation,
/// norms) does it in the same order every run.
fn named_vars(varmap: &VarMap) -> anyhow::Result<Vec<(String, Var)>> {
    let data = varmap.data().lock().map_err(|_| anyhow::anyhow!("var map lock poisoned"))?;
    let mut vars: Vec<_> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(vars)
}

fn sorted_vars(varmap: &VarMap) -> anyhow::Result<Vec<Var>> {
    Ok(named_vars(varmap)?.into_iter().map(|(_, v)| v).collect())
}

/// Overwrites every variable of `varmap` with values uniform in ±1/√fan_in drawn from `rng`, in
/// name order (candle's own initialisation cannot be seeded). A bias takes the fan-in of the
/// weight next to it.
pub(crate) fn seed_init(varmap: &VarMap, rng: &mut StdRng) -> anyhow::Result<()> {
    let vars = named_vars(varmap)?;
    let fan_in: HashMap<&str, usize> = vars
        .iter()
        .filter_map(|(name, v)| match (name.strip_suffix("weight"), v.dims()) {
            (Some(prefix), [_, inputs]) => Some((prefix, *inputs)),
            _ => None,
        })
        .collect();
    for (name, var) in &vars {
        let fan = match (var.dims(), name.strip_suffix("bias")) {
            ([_, inputs], _) => *inputs,
            (_, Some(prefix)) => fan_in.get(prefix).copied().unwrap_or(var.elem_count()),
            _ => var.elem_count(),
        };
        let bound = 1.0 / (fan.max(1) as f32).sqrt();
        let values: Vec<f32> =
            (0..var.elem_count()).map(|_| rng.random_range(-bound..bound)).collect();
        var.set(&Tensor::from_vec(values, var.shape(), var.device())?)?;
    }
    Ok(())
}

/// A new MLP in its own var map, initialised from `rng`. `output_gain` scales the last layer
/// (a small gain starts a policy near uniform).
fn seeded_mlp(
    sizes: &[usize],
    activation: Activation,
    output_gain: f32,
    rng: &mut StdRng,
) -> anyhow::Result<(Mlp, VarMap)> {
    let varmap = VarMap::new();
    let net =
        Mlp::new(sizes, activation, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu))?;
    seed_init(&varmap, rng)?;
    if output_gain != 1.0 {
        let last = format!("l{}.", sizes.len() - 2);
        for (name, var) in named_vars(&varmap)? {
            if name.starts_with(&last) {
                var.set(&(var.as_tensor() * f64::from(output_gain))?)?;
            }
        }
    }
    Ok((net, varmap))
}

/// Adam without weight decay over `vars`.
fn adam(vars: Vec<Var>, lr: f64) -> anyhow::Result<AdamW> {
    Ok(AdamW::new(vars, ParamsAdamW { lr, weight_decay: 0.0, ..ParamsAdamW::default() })?)
}

/// One optimiser step on `loss`, the gradient of `vars` first scaled down to a global norm of at
/// most `max_grad_norm` if given.
fn gradient_step(
    opt: &mut AdamW,
    vars: &[Var],
    loss: &Tensor,
    max_grad_norm: Option<f32>,
) -> anyhow::Result<()> {
    let mut grads = loss.backward()?;
    if let Some(max_norm) = max_grad_norm {
        clip_grad_norm(&mut grads, vars, max_norm)?;
    }
    opt.step(&grads)?;
    Ok(())
}

fn clip_grad_norm(grads: &mut GradStore, vars: &[Var], max_norm: f32) -> anyhow::Result<f32> {
    let mut sum_sq = 0f32;
    for v in vars {
        if let Some(g) = grads.get(v) {
            sum_sq += g.sqr()?.sum_all()?.to_scalar::<f32>()?;
        }
    }
    let norm = sum_sq.sqrt();
    if norm > max_norm {
        let scale = f64::from(max_norm / (norm + 1e-6));
        for v in vars {
            if let Some(g) = grads.remove(v) {
                grads.insert(v, (g * scale)?);
            }
        }
    }
    Ok(norm)
}

/// Index of the entry of a probability row that `u ∈ [0, 1)` falls into.
fn sample_index(probs: &[f32], u: f32) -> usize {
    let mut acc = 0.0;
    for (i, p) in probs.iter().enumerate() {
        acc += p;
        if u < acc {
            return i;
        }
    }
    // Rounding left the sum a little under 1.
    probs.len() - 1
}

/// `len` steps of every environment under a stochastic policy; index `t * n_envs + e`.
struct Rollout {
    obs: Vec<f32>,
    actions: Vec<usize>,
    log_probs: Vec<f32>,
    values: Vec<f32>,
    rewards: Vec<f32>,
    dones: Vec<bool>,
    /// The critic's value of the observations after the last step (`n_envs`).
    last_values: Vec<f32>,
}

impl Rollout {
    fn mean_reward(&self) -> f32 {
        self.rewards.iter().sum::<f32>() / self.rewards.len().max(1) as f32
    }
}

/// Steps `env` `len` times from `obs` (updated in place), sampling from the actor's softmax with
/// one batched forward per step.
fn collect_rollout(
    env: &mut dyn VecEnv,
    obs: &mut Vec<f32>,
    actor: &Mlp,
    critic: &Mlp,
    len: usize,
    rng: &mut StdRng,
) -> anyhow::Result<Rollout> {
    let (n, d) = (env.n_envs(), env.obs_dim());
    let mut r = Rollout {
        obs: Vec::with_capacity(len * n * d),
        actions: Vec::with_capacity(len * n),
        log_probs: Vec::with_capacity(len * n),
        values: Vec::with_capacity(len * n),
        rewards: Vec::with_capacity(len * n),
        dones: Vec::with_capacity(len * n),
        last_values: Vec::new(),
    };
    for _ in 0..len {
        let x = obs_tensor(obs, d)?;
        let log_p =
            candle_nn::ops::log_softmax(&actor.forward(&x)?.detach(), 1)?.to_vec2::<f32>()?;
        let values = critic.forward(&x)?.detach().squeeze(1)?.to_vec1::<f32>()?;
        let mut actions = Vec::with_capacity(n);
        for row in &log_p {
            let probs: Vec<f32> = row.iter().map(|l| l.exp()).collect();
            let a = sample_index(&probs, rng.random::<f32>());
            actions.push(a);
            r.log_probs.push(row[a]);
        }
        let step = checked_step(env, &actions, n, d)?;
        r.obs.extend_from_slice(obs);
        r.actions.extend(actions);
        r.values.extend(values);
        r.rewards.extend(step.reward);
        r.dones.extend(step.done);
        *obs = step.obs;
    }
    r.last_values = critic.forward(&obs_tensor(obs, d)?)?.detach().squeeze(1)?.to_vec1::<f32>()?;
    Ok(r)
}

/// Rows `idx` of a row-major matrix with `width` columns.
fn gather_rows(data: &[f32], width: usize, idx: &[usize]) -> Vec<f32> {
    let mut out = Vec::with_capacity(idx.len() * width);
    for &i in idx {
        out.extend_from_slice(&data[i * width..(i + 1) * width]);
    }
    out
}

/// To zero mean and unit standard deviation.
fn normalise(xs: &mut [f32]) {
    let n = xs.len().max(1) as f32;
    let mean = xs.iter().sum::<f32>() / n;
    let std = (xs.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / n).sqrt();
    for x in xs.iter_mut() {
        *x = (*x - mean) / (std + 1e-8);
    }
}

/// Checks the environment has something to learn on.
fn check_env(env: &dyn VecEnv) -> anyhow::Result<(usize, usize, usize)> {
    let (n, d, a) = (env.n_envs(), env.obs_dim(), env.n_actions());
    ensure!(n > 0 && d > 0 && a > 0, "environment has {n} envs, obs_dim {d}, {a} actions");
    Ok((n, d, a))
}

fn reset(env: &mut dyn VecEnv, n: usize, d: usize) -> anyhow::Result<Vec<f32>> {
    let obs = env.reset().context("resetting the environment")?;
    ensure!(obs.len() == n * d, "reset returned {} values, expected {n} × {d}", obs.len());
    Ok(obs)
}

/// Synthetic environments with a known optimum, for the learners' tests.
#[cfg(test)]
pub(crate) mod test_envs {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use rand_distr::StandardNormal;

    use crate::env::{Actor, Step, VecEnv};

    /// A stateless bandit: the observation is always 1, arm `a` pays `means[a]` plus Gaussian
    /// noise, every episode is one step.
    pub struct Bandit {
        pub n_envs: usize,
        pub means: Vec<f32>,
        pub noise: f32,
        pub rng: StdRng,
    }

    impl Bandit {
        pub fn new(n_envs: usize, means: &[f32], noise: f32, seed: u64) -> Self {
            Self { n_envs, means: means.to_vec(), noise, rng: StdRng::seed_from_u64(seed) }
        }

        pub fn best_arm(&self) -> usize {
            (0..self.means.len()).max_by(|&a, &b| self.means[a].total_cmp(&self.means[b])).unwrap()
        }
    }

    impl VecEnv for Bandit {
        fn n_envs(&self) -> usize {
            self.n_envs
        }
        fn obs_dim(&self) -> usize {
            1
        }
        fn n_actions(&self) -> usize {
            self.means.len()
        }
        fn reset(&mut self) -> anyhow::Result<Vec<f32>> {
            Ok(vec![1.0; self.n_envs])
        }
        fn step(&mut self, actions: &[usize]) -> anyhow::Result<Step> {
            let reward = actions
                .iter()
                .map(|&a| self.means[a] + self.noise * self.rng.sample::<f32, _>(StandardNormal))
                .collect();
            Ok(Step { obs: vec![1.0; self.n_envs], reward, done: vec![true; self.n_envs] })
        }
    }

    /// A contextual bandit: the observation is `x` uniform in [-1, 1), the right action is the
    /// quarter of [-1, 1) that `x` falls in (of 4), which pays 1 (others 0) plus Gaussian noise;
    /// every episode is one step.
    pub struct Quarters {
        pub n_envs: usize,
        pub noise: f32,
        pub rng: StdRng,
        x: Vec<f32>,
    }

    impl Quarters {
        pub fn new(n_envs: usize, noise: f32, seed: u64) -> Self {
            Self { n_envs, noise, rng: StdRng::seed_from_u64(seed), x: Vec::new() }
        }

        pub fn optimal(x: f32) -> usize {
            (((x + 1.0) * 2.0).floor().max(0.0) as usize).min(3)
        }

        fn draw(&mut self) -> Vec<f32> {
            self.x = (0..self.n_envs).map(|_| self.rng.random_range(-1.0..1.0)).collect();
            self.x.clone()
        }

        /// Fraction of a fine grid of fresh `x` (cell centres, none on a boundary) where the
        /// actor picks the optimal action.
        pub fn accuracy(actor: &dyn Actor) -> f64 {
            let n = 1000;
            let grid: Vec<f32> = (0..n).map(|i| -1.0 + (i as f32 + 0.5) * 2.0 / n as f32).collect();
            let acts = actor.act(&grid).unwrap();
            let right = grid.iter().zip(&acts).filter(|(x, a)| Self::optimal(**x) == **a).count();
            right as f64 / n as f64
        }
    }

    impl VecEnv for Quarters {
        fn n_envs(&self) -> usize {
            self.n_envs
        }
        fn obs_dim(&self) -> usize {
            1
        }
        fn n_actions(&self) -> usize {
            4
        }
        fn reset(&mut self) -> anyhow::Result<Vec<f32>> {
            Ok(self.draw())
        }
        fn step(&mut self, actions: &[usize]) -> anyhow::Result<Step> {
            let mut reward = Vec::with_capacity(actions.len());
            for (i, &a) in actions.iter().enumerate() {
                let hit = if Self::optimal(self.x[i]) == a { 1.0 } else { 0.0 };
                reward.push(hit + self.noise * self.rng.sample::<f32, _>(StandardNormal));
            }
            Ok(Step { obs: self.draw(), reward, done: vec![true; self.n_envs] })
        }
    }

    /// The action the actor picks on the bandit's constant observation.
    pub fn bandit_choice(actor: &dyn Actor) -> usize {
        actor.act(&[1.0]).unwrap()[0]
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn seeded_init_is_reproducible_and_bounded() {
        let draw = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            let (net, _) = seeded_mlp(&[3, 8, 2], Activation::Tanh, 1.0, &mut rng).unwrap();
            net.export().unwrap()
        };
        let (a, b, c) = (draw(1), draw(1), draw(2));
        assert_eq!(a, b);
        assert_ne!(a, c);
        // Layer 0 has fan-in 3, layer 1 fan-in 8.
        for (layer, fan) in a.iter().zip([3f32, 8.0]) {
            let bound = 1.0 / fan.sqrt();
            assert!(layer.weight.iter().chain(&layer.bias).all(|w| w.abs() <= bound));
        }
    }

    #[test]
    fn clipping_scales_the_gradient_to_the_max_norm() {
        let v = Var::from_slice(&[3f32, 4.0], 2, &Device::Cpu).unwrap();
        let loss = (v.as_tensor() * v.as_tensor()).unwrap().sum_all().unwrap();
        let mut grads = loss.backward().unwrap();
        // d/dv Σ v² = 2v = (6, 8), norm 10.
        let norm = clip_grad_norm(&mut grads, std::slice::from_ref(&v), 1.0).unwrap();
        assert!((norm - 10.0).abs() < 1e-4);
        let g = grads.get(&v).unwrap().to_vec1::<f32>().unwrap();
        assert!((g[0] - 0.6).abs() < 1e-4 && (g[1] - 0.8).abs() < 1e-4, "{g:?}");
    }

    #[test]
    fn sampling_follows_the_cumulative_distribution() {
        let p = [0.2, 0.5, 0.3];
        assert_eq!(sample_index(&p, 0.0), 0);
        assert_eq!(sample_index(&p, 0.19), 0);
        assert_eq!(sample_index(&p, 0.21), 1);
        assert_eq!(sample_index(&p, 0.71), 2);
        assert_eq!(sample_index(&p, 0.999_999_9), 2);
    }
}

/// One step of every environment, checked for the shapes the learners rely on.
fn checked_step(env: &mut dyn VecEnv, actions: &[usize], n: usize, d: usize) -> anyhow::Result<crate::env::Step> {
    let step = env.step(actions)?;
    ensure!(
        step.obs.len() == n * d && step.reward.len() == n && step.done.len() == n,
        "environment step returned {} observations, {} rewards, {} dones for {n} envs",
        step.obs.len(),
        step.reward.len(),
        step.done.len()
    );
    Ok(step)
}

/// Records an update on the curve after showing it to `on_update`; whether to go on.
fn record(curve: &mut Vec<UpdateStats>, stats: UpdateStats, net: &Mlp, on_update: OnUpdate<'_>) -> anyhow::Result<bool> {
    let go_on = on_update(&stats, &Greedy(net))?;
    curve.push(stats);
    Ok(go_on)
}
