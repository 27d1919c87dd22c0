//! Synchronous advantage actor-critic (A2C, the synchronous form of Mnih et al. 2016's A3C):
//! n-step returns bootstrapped from the critic, one gradient step per rollout; separate actor
//! and critic MLPs (tanh).

use std::time::Instant;

use anyhow::ensure;
use candle_core::{Device, Module, Tensor};
use candle_nn::ops::log_softmax;
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::{
    OnUpdate, Trained, UpdateStats, adam, check_env, collect_rollout, gradient_step,
    normalise, reset, seeded_mlp, sorted_vars,
};
use crate::env::VecEnv;
use crate::nets::Activation;

#[derive(Debug, Clone, PartialEq)]
pub struct A2cConfig {
    pub seed: u64,
    /// Environment transitions to train on (`n_envs` per vectorised step); the last rollout may
    /// overshoot it.
    pub total_steps: usize,
    /// Steps per environment in one rollout (the `n` of the n-step return).
    pub rollout_len: usize,
    pub lr: f64,
    pub gamma: f32,
    pub value_coef: f32,
    pub entropy_coef: f32,
    /// Normalise the advantages of each rollout to zero mean and unit deviation.
    pub normalize_advantages: bool,
    /// Hidden layer widths of both actor and critic.
    pub hidden: Vec<usize>,
    /// Global gradient-norm limit, if any.
    pub max_grad_norm: Option<f32>,
}

impl Default for A2cConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            total_steps: 100_000,
            rollout_len: 5,
            lr: 7e-4,
            gamma: 0.99,
            value_coef: 0.5,
            entropy_coef: 0.01,
            normalize_advantages: false,
            hidden: vec![64, 64],
            max_grad_norm: Some(0.5),
        }
    }
}

/// Trains a policy on `env`; `on_update` sees every update and can stop training.
pub fn train(
    env: &mut dyn VecEnv,
    cfg: &A2cConfig,
    on_update: OnUpdate<'_>,
) -> anyhow::Result<Trained> {
    let (n, d, n_actions) = check_env(env)?;
    ensure!(cfg.rollout_len > 0, "rollout_len must be positive");
    let start = Instant::now();
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let sizes = |out: usize| [&[d][..], &cfg.hidden, &[out]].concat();
    let (actor, actor_vars) = seeded_mlp(&sizes(n_actions), Activation::Tanh, 0.01, &mut rng)?;
    let (critic, critic_vars) = seeded_mlp(&sizes(1), Activation::Tanh, 1.0, &mut rng)?;
    let vars = [sorted_vars(&actor_vars)?, sorted_vars(&critic_vars)?].concat();
    let mut opt = adam(vars.clone(), cfg.lr)?;

    let batch = n * cfg.rollout_len;
    let updates = cfg.total_steps.div_ceil(batch);
    let mut obs = reset(env, n, d)?;
    let mut curve = Vec::with_capacity(updates);
    for update in 1..=updates {
        let ro = collect_rollout(env, &mut obs, &actor, &critic, cfg.rollout_len, &mut rng)?;
        let returns = n_step_returns(&ro.rewards, &ro.dones, &ro.last_values, n, cfg.gamma);
        let mut adv: Vec<f32> = returns.iter().zip(&ro.values).map(|(r, v)| r - v).collect();
        if cfg.normalize_advantages {
            normalise(&mut adv);
        }

        let x = Tensor::from_slice(&ro.obs, (batch, d), &Device::Cpu)?;
        let actions: Vec<u32> = ro.actions.iter().map(|&a| a as u32).collect();
        let actions = Tensor::from_vec(actions, (batch, 1), &Device::Cpu)?;
        let adv_t = Tensor::from_vec(adv, batch, &Device::Cpu)?;
        let ret_t = Tensor::from_vec(returns, batch, &Device::Cpu)?;

        let log_p_all = log_softmax(&actor.forward(&x)?, 1)?;
        let log_p = log_p_all.gather(&actions, 1)?.squeeze(1)?;
        let policy_loss = (log_p * adv_t)?.mean_all()?.neg()?;
        let entropy = (log_p_all.exp()? * &log_p_all)?.sum(1)?.mean_all()?.neg()?;
        let value = critic.forward(&x)?.squeeze(1)?;
        let value_loss = (value - ret_t)?.sqr()?.mean_all()?;
        let loss = ((policy_loss + (value_loss * f64::from(cfg.value_coef))?)?
            - (entropy * f64::from(cfg.entropy_coef))?)?;
        gradient_step(&mut opt, &vars, &loss, cfg.max_grad_norm)?;

        let stats = UpdateStats {
            update,
            env_steps: update * batch,
            real_evaluations: env.real_evaluations(),
            mean_reward: ro.mean_reward(),
            loss: loss.to_scalar::<f32>()?,
            seconds: start.elapsed().as_secs_f64(),
        };
        if !super::record(&mut curve, stats, &actor, on_update)? {
            break;
        }
    }
    Ok(Trained { algorithm: "a2c", net: actor, varmap: actor_vars, curve })
}

/// Discounted returns to the end of the rollout, bootstrapped from `last_values` unless the
/// episode ended first; layout `t * n_envs + e`.
fn n_step_returns(
    rewards: &[f32],
    dones: &[bool],
    last_values: &[f32],
    n_envs: usize,
    gamma: f32,
) -> Vec<f32> {
    let len = rewards.len() / n_envs;
    let mut ret = vec![0f32; rewards.len()];
    for (e, &last) in last_values.iter().enumerate().take(n_envs) {
        let mut next = last;
        for t in (0..len).rev() {
            let i = t * n_envs + e;
            let live = if dones[i] { 0.0 } else { 1.0 };
            next = rewards[i] + gamma * live * next;
            ret[i] = next;
        }
    }
    ret
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::algo::test_envs::{Bandit, Quarters, bandit_choice};

    #[test]
    fn n_step_returns_bootstrap_only_through_live_steps() {
        // Two envs, two steps; env 0's episode ends at t = 0.
        let r = n_step_returns(
            &[1.0, 2.0, 3.0, 4.0],
            &[true, false, false, false],
            &[10.0, 20.0],
            2,
            0.5,
        );
        assert_eq!(r, [1.0, 2.0 + 0.5 * (4.0 + 0.5 * 20.0), 3.0 + 0.5 * 10.0, 4.0 + 0.5 * 20.0]);
    }

    #[test]
    fn a2c_picks_the_best_arm_of_a_noisy_bandit() {
        let t = Instant::now();
        let mut env = Bandit::new(16, &[0.1, 0.5, 0.9, 0.3, 0.7], 0.5, 21);
        let cfg =
            A2cConfig { total_steps: 8192, lr: 3e-3, hidden: vec![32], ..A2cConfig::default() };
        let trained = train(&mut env, &cfg, &mut |_, _| Ok(true)).unwrap();
        let choice = bandit_choice(&trained);
        let last = trained.curve.last().unwrap();
        println!(
            "a2c bandit: greedy arm {choice} (best {}), last mean reward {:.3}, {} updates, {:.2?}",
            env.best_arm(),
            last.mean_reward,
            trained.curve.len(),
            t.elapsed()
        );
        assert_eq!(choice, env.best_arm());
    }

    #[test]
    fn a2c_learns_the_optimal_action_per_context() {
        let t = Instant::now();
        let mut env = Quarters::new(16, 0.1, 22);
        let cfg = A2cConfig { total_steps: 32_768, lr: 3e-3, ..A2cConfig::default() };
        let trained = train(&mut env, &cfg, &mut |_, _| Ok(true)).unwrap();
        let acc = Quarters::accuracy(&trained);
        println!(
            "a2c contextual bandit: {:.1}% optimal on the grid, {:.2?}",
            acc * 100.0,
            t.elapsed()
        );
        assert!(acc >= 0.9, "only {:.1}% optimal", acc * 100.0);
    }
}
