//! Deep Q-learning (Mnih et al. 2015): a replay buffer, a target network copied every
//! `target_update` transitions, ε-greedy exploration decaying linearly, the Huber loss, and
//! optionally the double-DQN target (van Hasselt et al. 2016). The Q network is a ReLU MLP.

use std::time::Instant;

use anyhow::ensure;
use candle_core::{Device, Module, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{
    OnUpdate, Trained, UpdateStats, adam, check_env, gather_rows, gradient_step,
    named_vars, obs_tensor, reset, seeded_mlp, sorted_vars,
};
use crate::env::VecEnv;
use crate::nets::{Activation, Mlp};

#[derive(Debug, Clone, PartialEq)]
pub struct DqnConfig {
    pub seed: u64,
    /// Environment transitions to train on (`n_envs` per vectorised step).
    pub total_steps: usize,
    pub lr: f64,
    pub gamma: f32,
    /// Transitions the replay buffer keeps (the oldest are overwritten).
    pub buffer_size: usize,
    /// Transitions per gradient step.
    pub batch_size: usize,
    /// Transitions collected before the first gradient step.
    pub learning_starts: usize,
    /// Transitions per gradient step once learning has started.
    pub train_every: usize,
    /// Transitions between copies of the Q network into the target network.
    pub target_update: usize,
    pub eps_start: f32,
    pub eps_end: f32,
    /// Fraction of `total_steps` over which ε falls linearly from `eps_start` to `eps_end`.
    pub eps_decay_fraction: f32,
    /// Pick the next action with the Q network and value it with the target network.
    pub double: bool,
    /// Hidden layer widths.
    pub hidden: Vec<usize>,
    /// Global gradient-norm limit, if any.
    pub max_grad_norm: Option<f32>,
    /// Transitions per reported update (one [`UpdateStats`], one call of `on_update`).
    pub report_every: usize,
}

impl Default for DqnConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            total_steps: 100_000,
            lr: 1e-3,
            gamma: 0.99,
            buffer_size: 50_000,
            batch_size: 64,
            learning_starts: 1_000,
            train_every: 4,
            target_update: 1_000,
            eps_start: 1.0,
            eps_end: 0.05,
            eps_decay_fraction: 0.3,
            double: true,
            hidden: vec![64, 64],
            max_grad_norm: Some(10.0),
            report_every: 1_000,
        }
    }
}

/// Trains a Q network on `env`; `on_update` sees every `report_every` transitions and can stop
/// training.
pub fn train(
    env: &mut dyn VecEnv,
    cfg: &DqnConfig,
    on_update: OnUpdate<'_>,
) -> anyhow::Result<Trained> {
    let (n, d, n_actions) = check_env(env)?;
    ensure!(
        cfg.buffer_size > 0 && cfg.batch_size > 0 && cfg.train_every > 0 && cfg.report_every > 0,
        "buffer_size {}, batch_size {}, train_every {} and report_every {} must be positive",
        cfg.buffer_size,
        cfg.batch_size,
        cfg.train_every,
        cfg.report_every
    );
    let start = Instant::now();
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let sizes = [&[d][..], &cfg.hidden, &[n_actions]].concat();
    let (q_net, q_vars) = seeded_mlp(&sizes, Activation::Relu, 1.0, &mut rng)?;
    let (target, target_vars) = seeded_mlp(&sizes, Activation::Relu, 1.0, &mut rng)?;
    let q_list = named_vars(&q_vars)?;
    let target_list = named_vars(&target_vars)?;
    let copy_to_target = || -> anyhow::Result<()> {
        for ((_, src), (_, dst)) in q_list.iter().zip(&target_list) {
            dst.set(src.as_tensor())?;
        }
        Ok(())
    };
    copy_to_target()?;
    let vars = sorted_vars(&q_vars)?;
    let mut opt = adam(vars.clone(), cfg.lr)?;

    let mut buffer = Replay::new(cfg.buffer_size, d);
    let mut obs = reset(env, n, d)?;
    let mut curve = Vec::new();
    let decay_steps = (cfg.eps_decay_fraction * cfg.total_steps as f32).max(1.0);
    let (mut env_steps, mut since_train, mut since_target) = (0usize, 0usize, 0usize);
    let (mut reward_sum, mut reward_count, mut loss_sum, mut loss_count) =
        (0f32, 0usize, 0f32, 0usize);
    let mut next_report = cfg.report_every;
    while env_steps < cfg.total_steps {
        let eps = cfg.eps_start
            + (cfg.eps_end - cfg.eps_start) * (env_steps as f32 / decay_steps).min(1.0);
        let greedy = q_net.forward(&obs_tensor(&obs, d)?)?.argmax(1)?.to_vec1::<u32>()?;
        let actions: Vec<usize> = greedy
            .into_iter()
            .map(|g| {
                if rng.random::<f32>() < eps { rng.random_range(0..n_actions) } else { g as usize }
            })
            .collect();
        let step = super::checked_step(env, &actions, n, d)?;
        for e in 0..n {
            // Where the episode ended `step.obs` is the next episode's start, but `done` masks
            // the bootstrap, so it is never used.
            buffer.push(
                &obs[e * d..(e + 1) * d],
                actions[e],
                step.reward[e],
                &step.obs[e * d..(e + 1) * d],
                step.done[e],
            );
        }
        reward_sum += step.reward.iter().sum::<f32>();
        reward_count += n;
        obs = step.obs;
        env_steps += n;
        since_target += n;

        if env_steps >= cfg.learning_starts && buffer.len >= cfg.batch_size {
            since_train += n;
            while since_train >= cfg.train_every {
                since_train -= cfg.train_every;
                let loss = td_loss(&q_net, &target, &buffer, cfg, &mut rng)?;
                gradient_step(&mut opt, &vars, &loss, cfg.max_grad_norm)?;
                loss_sum += loss.to_scalar::<f32>()?;
                loss_count += 1;
            }
        }
        if since_target >= cfg.target_update {
            since_target = 0;
            copy_to_target()?;
        }

        if env_steps >= next_report || env_steps >= cfg.total_steps {
            next_report = env_steps + cfg.report_every;
            let stats = UpdateStats {
                update: curve.len() + 1,
                env_steps,
                real_evaluations: env.real_evaluations(),
                mean_reward: reward_sum / reward_count.max(1) as f32,
                loss: if loss_count > 0 { loss_sum / loss_count as f32 } else { 0.0 },
                seconds: start.elapsed().as_secs_f64(),
            };
            (reward_sum, reward_count, loss_sum, loss_count) = (0.0, 0, 0.0, 0);
            if !super::record(&mut curve, stats, &q_net, on_update)? {
                break;
            }
        }
    }
    Ok(Trained { algorithm: "dqn", net: q_net, varmap: q_vars, curve })
}

/// The mean Huber loss (δ = 1) between `Q(s, a)` and the one-step target on a random batch.
fn td_loss(
    q_net: &Mlp,
    target: &Mlp,
    buffer: &Replay,
    cfg: &DqnConfig,
    rng: &mut StdRng,
) -> anyhow::Result<Tensor> {
    let d = buffer.obs_dim;
    let b = cfg.batch_size;
    let idx: Vec<usize> = (0..b).map(|_| rng.random_range(0..buffer.len)).collect();
    let x = Tensor::from_vec(gather_rows(&buffer.obs, d, &idx), (b, d), &Device::Cpu)?;
    let x_next = Tensor::from_vec(gather_rows(&buffer.next_obs, d, &idx), (b, d), &Device::Cpu)?;
    let actions: Vec<u32> = idx.iter().map(|&i| buffer.actions[i]).collect();
    let actions = Tensor::from_vec(actions, (b, 1), &Device::Cpu)?;

    let next_target = target.forward(&x_next)?.detach();
    let next_value = if cfg.double {
        let best = q_net.forward(&x_next)?.detach().argmax_keepdim(1)?;
        next_target.gather(&best, 1)?.squeeze(1)?
    } else {
        next_target.max(1)?
    }
    .to_vec1::<f32>()?;
    let y: Vec<f32> = idx
        .iter()
        .zip(&next_value)
        .map(|(&i, v)| {
            let live = if buffer.dones[i] { 0.0 } else { 1.0 };
            buffer.rewards[i] + cfg.gamma * live * v
        })
        .collect();
    let y = Tensor::from_vec(y, b, &Device::Cpu)?;

    let q = q_net.forward(&x)?.gather(&actions, 1)?.squeeze(1)?;
    let err = (q - y)?.abs()?;
    // Huber: ½e² for |e| ≤ 1, |e| − ½ beyond, written as ½m² + (|e| − m) with m = min(|e|, 1).
    let m = err.minimum(1.0)?;
    let huber = ((m.sqr()? * 0.5)? + (err - m)?)?;
    Ok(huber.mean_all()?)
}

/// A ring buffer of transitions.
struct Replay {
    capacity: usize,
    obs_dim: usize,
    obs: Vec<f32>,
    next_obs: Vec<f32>,
    actions: Vec<u32>,
    rewards: Vec<f32>,
    dones: Vec<bool>,
    /// Where the next transition goes.
    pos: usize,
    len: usize,
}

impl Replay {
    fn new(capacity: usize, obs_dim: usize) -> Self {
        Self {
            capacity,
            obs_dim,
            obs: vec![0.0; capacity * obs_dim],
            next_obs: vec![0.0; capacity * obs_dim],
            actions: vec![0; capacity],
            rewards: vec![0.0; capacity],
            dones: vec![false; capacity],
            pos: 0,
            len: 0,
        }
    }

    fn push(&mut self, obs: &[f32], action: usize, reward: f32, next_obs: &[f32], done: bool) {
        let (i, d) = (self.pos, self.obs_dim);
        self.obs[i * d..(i + 1) * d].copy_from_slice(obs);
        self.next_obs[i * d..(i + 1) * d].copy_from_slice(next_obs);
        self.actions[i] = action as u32;
        self.rewards[i] = reward;
        self.dones[i] = done;
        self.pos = (i + 1) % self.capacity;
        self.len = (self.len + 1).min(self.capacity);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::algo::test_envs::{Bandit, Quarters, bandit_choice};

    #[test]
    fn replay_overwrites_the_oldest_transition() {
        let mut r = Replay::new(2, 1);
        for i in 0..3 {
            r.push(&[i as f32], i, i as f32, &[0.0], false);
        }
        assert_eq!(r.len, 2);
        assert_eq!(r.obs, [2.0, 1.0]);
        assert_eq!(r.actions, [2, 1]);
    }

    #[test]
    fn dqn_picks_the_best_arm_of_a_noisy_bandit() {
        let t = Instant::now();
        let mut env = Bandit::new(8, &[0.1, 0.5, 0.9, 0.3, 0.7], 0.5, 31);
        let cfg = DqnConfig {
            total_steps: 6000,
            learning_starts: 500,
            target_update: 500,
            eps_decay_fraction: 0.5,
            hidden: vec![32],
            ..DqnConfig::default()
        };
        let trained = train(&mut env, &cfg, &mut |_, _| Ok(true)).unwrap();
        let choice = bandit_choice(&trained);
        let q = trained.net.forward(&Tensor::new(&[[1f32]], &Device::Cpu).unwrap()).unwrap();
        println!(
            "dqn bandit: greedy arm {choice} (best {}), Q {:?}, {} updates, {:.2?}",
            env.best_arm(),
            q.to_vec2::<f32>().unwrap()[0],
            trained.curve.len(),
            t.elapsed()
        );
        assert_eq!(choice, env.best_arm());
    }

    #[test]
    fn dqn_learns_the_optimal_action_per_context() {
        let t = Instant::now();
        let mut env = Quarters::new(8, 0.1, 32);
        let cfg = DqnConfig {
            total_steps: 16_000,
            learning_starts: 500,
            target_update: 500,
            eps_decay_fraction: 0.5,
            ..DqnConfig::default()
        };
        let trained = train(&mut env, &cfg, &mut |_, _| Ok(true)).unwrap();
        let acc = Quarters::accuracy(&trained);
        println!(
            "dqn contextual bandit: {:.1}% optimal on the grid, {:.2?}",
            acc * 100.0,
            t.elapsed()
        );
        assert!(acc >= 0.9, "only {:.1}% optimal", acc * 100.0);
    }
}
