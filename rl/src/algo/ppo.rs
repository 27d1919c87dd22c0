//! Proximal policy optimisation (Schulman et al. 2017) with the clipped surrogate, generalised
//! advantage estimation, per-batch advantage normalisation and an entropy bonus; separate actor
//! and critic MLPs (tanh).

use std::time::Instant;

use anyhow::ensure;
use candle_core::{Device, Module, Tensor};
use candle_nn::ops::log_softmax;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use super::{
    OnUpdate, Trained, UpdateStats, adam, check_env, collect_rollout, gather_rows,
    gradient_step, normalise, reset, seeded_mlp, sorted_vars,
};
use crate::env::VecEnv;
use crate::nets::Activation;

#[derive(Debug, Clone, PartialEq)]
pub struct PpoConfig {
    pub seed: u64,
    /// Environment transitions to train on (`n_envs` per vectorised step); the last rollout may
    /// overshoot it.
    pub total_steps: usize,
    /// Steps per environment in one rollout; a rollout is `n_envs × rollout_len` transitions.
    pub rollout_len: usize,
    /// Passes over each rollout.
    pub epochs: usize,
    /// Transitions per minibatch.
    pub minibatch: usize,
    pub lr: f64,
    pub gamma: f32,
    pub gae_lambda: f32,
    /// The probability ratio is clipped to `1 ± clip`.
    pub clip: f32,
    pub value_coef: f32,
    pub entropy_coef: f32,
    /// Hidden layer widths of both actor and critic.
    pub hidden: Vec<usize>,
    /// Global gradient-norm limit, if any.
    pub max_grad_norm: Option<f32>,
}

impl Default for PpoConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            total_steps: 100_000,
            rollout_len: 128,
            epochs: 4,
            minibatch: 64,
            lr: 3e-4,
            gamma: 0.99,
            gae_lambda: 0.95,
            clip: 0.2,
            value_coef: 0.5,
            entropy_coef: 0.01,
            hidden: vec![64, 64],
            max_grad_norm: Some(0.5),
        }
    }
}

/// Trains a policy on `env`; `on_update` sees every update and can stop training.
pub fn train(
    env: &mut dyn VecEnv,
    cfg: &PpoConfig,
    on_update: OnUpdate<'_>,
) -> anyhow::Result<Trained> {
    let (n, d, n_actions) = check_env(env)?;
    ensure!(
        cfg.rollout_len > 0 && cfg.epochs > 0 && cfg.minibatch > 0,
        "rollout_len {}, epochs {} and minibatch {} must be positive",
        cfg.rollout_len,
        cfg.epochs,
        cfg.minibatch
    );
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
    let mut order: Vec<usize> = (0..batch).collect();
    for update in 1..=updates {
        let ro = collect_rollout(env, &mut obs, &actor, &critic, cfg.rollout_len, &mut rng)?;
        let mut adv = gae(&ro.rewards, &ro.values, &ro.dones, &ro.last_values, n, cfg);
        let returns: Vec<f32> = adv.iter().zip(&ro.values).map(|(a, v)| a + v).collect();
        normalise(&mut adv);

        let (mut loss_sum, mut loss_count) = (0f32, 0usize);
        for _ in 0..cfg.epochs {
            order.shuffle(&mut rng);
            for idx in order.chunks(cfg.minibatch) {
                let m = idx.len();
                let x = Tensor::from_vec(gather_rows(&ro.obs, d, idx), (m, d), &Device::Cpu)?;
                let pick = |v: &[f32]| Tensor::from_vec(gather_rows(v, 1, idx), m, &Device::Cpu);
                let actions: Vec<u32> = idx.iter().map(|&i| ro.actions[i] as u32).collect();
                let actions = Tensor::from_vec(actions, (m, 1), &Device::Cpu)?;
                let (old_log_p, adv_t, ret_t) =
                    (pick(&ro.log_probs)?, pick(&adv)?, pick(&returns)?);

                let log_p_all = log_softmax(&actor.forward(&x)?, 1)?;
                let log_p = log_p_all.gather(&actions, 1)?.squeeze(1)?;
                let ratio = (log_p - old_log_p)?.exp()?;
                let unclipped = (&ratio * &adv_t)?;
                let clipped = (ratio.clamp(1.0 - cfg.clip, 1.0 + cfg.clip)? * &adv_t)?;
                let policy_loss = unclipped.minimum(&clipped)?.mean_all()?.neg()?;
                let entropy = (log_p_all.exp()? * &log_p_all)?.sum(1)?.mean_all()?.neg()?;
                let value = critic.forward(&x)?.squeeze(1)?;
                let value_loss = (value - ret_t)?.sqr()?.mean_all()?;
                let loss = ((policy_loss + (value_loss * f64::from(cfg.value_coef))?)?
                    - (entropy * f64::from(cfg.entropy_coef))?)?;
                gradient_step(&mut opt, &vars, &loss, cfg.max_grad_norm)?;
                loss_sum += loss.to_scalar::<f32>()?;
                loss_count += 1;
            }
        }

        let stats = UpdateStats {
            update,
            env_steps: update * batch,
            real_evaluations: env.real_evaluations(),
            mean_reward: ro.mean_reward(),
            loss: loss_sum / loss_count.max(1) as f32,
            seconds: start.elapsed().as_secs_f64(),
        };
        if !super::record(&mut curve, stats, &actor, on_update)? {
            break;
        }
    }
    Ok(Trained { algorithm: "ppo", net: actor, varmap: actor_vars, curve })
}

/// Generalised advantage estimates for a rollout laid out `t * n_envs + e`; an episode's end cuts
/// the bootstrap (the next observation belongs to a new episode).
fn gae(
    rewards: &[f32],
    values: &[f32],
    dones: &[bool],
    last_values: &[f32],
    n_envs: usize,
    cfg: &PpoConfig,
) -> Vec<f32> {
    let len = rewards.len() / n_envs;
    let mut adv = vec![0f32; rewards.len()];
    for (e, &last) in last_values.iter().enumerate().take(n_envs) {
        let mut next_adv = 0f32;
        let mut next_value = last;
        for t in (0..len).rev() {
            let i = t * n_envs + e;
            let live = if dones[i] { 0.0 } else { 1.0 };
            let delta = rewards[i] + cfg.gamma * next_value * live - values[i];
            next_adv = delta + cfg.gamma * cfg.gae_lambda * live * next_adv;
            adv[i] = next_adv;
            next_value = values[i];
        }
    }
    adv
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::algo::test_envs::{Bandit, Quarters, bandit_choice};
    use crate::env::Actor;

    #[test]
    fn gae_with_lambda_one_is_the_discounted_return_minus_value() {
        let cfg = PpoConfig { gamma: 0.5, gae_lambda: 1.0, ..PpoConfig::default() };
        // One env, three steps, the episode ends after the second.
        let adv = gae(&[1.0, 2.0, 4.0], &[0.5, 0.25, 1.0], &[false, true, false], &[8.0], 1, &cfg);
        let expect = [1.0 + 0.5 * 2.0 - 0.5, 2.0 - 0.25, 4.0 + 0.5 * 8.0 - 1.0];
        for (a, e) in adv.iter().zip(expect) {
            assert!((a - e).abs() < 1e-6, "{adv:?} vs {expect:?}");
        }
    }

    #[test]
    fn ppo_picks_the_best_arm_of_a_noisy_bandit() {
        let t = Instant::now();
        let mut env = Bandit::new(16, &[0.1, 0.5, 0.9, 0.3, 0.7], 0.5, 11);
        let cfg = PpoConfig {
            total_steps: 4096,
            rollout_len: 8,
            minibatch: 64,
            lr: 3e-3,
            hidden: vec![32],
            ..PpoConfig::default()
        };
        let trained = train(&mut env, &cfg, &mut |_, _| Ok(true)).unwrap();
        let choice = bandit_choice(&trained);
        let last = trained.curve.last().unwrap();
        println!(
            "ppo bandit: greedy arm {choice} (best {}), last mean reward {:.3}, {} updates, {:.2?}",
            env.best_arm(),
            last.mean_reward,
            trained.curve.len(),
            t.elapsed()
        );
        assert_eq!(choice, env.best_arm());
        // The sampling policy has concentrated too: 0.9 is the best possible mean.
        assert!(last.mean_reward > 0.75, "{}", last.mean_reward);
    }

    #[test]
    fn ppo_learns_the_optimal_action_per_context() {
        let t = Instant::now();
        let mut env = Quarters::new(16, 0.1, 12);
        let cfg = PpoConfig {
            total_steps: 16_384,
            rollout_len: 16,
            minibatch: 64,
            lr: 3e-3,
            ..PpoConfig::default()
        };
        let trained = train(&mut env, &cfg, &mut |_, _| Ok(true)).unwrap();
        let acc = Quarters::accuracy(&trained);
        println!(
            "ppo contextual bandit: {:.1}% optimal on the grid, {:.2?}",
            acc * 100.0,
            t.elapsed()
        );
        assert!(acc >= 0.9, "only {:.1}% optimal", acc * 100.0);
    }

    #[test]
    fn ppo_same_seed_same_policy() {
        let run = |seed| {
            let mut env = Quarters::new(8, 0.1, 5);
            let cfg = PpoConfig {
                seed,
                total_steps: 2048,
                rollout_len: 16,
                lr: 3e-3,
                hidden: vec![32],
                ..PpoConfig::default()
            };
            let trained = train(&mut env, &cfg, &mut |_, _| Ok(true)).unwrap();
            let grid: Vec<f32> = (0..200).map(|i| -1.0 + (i as f32 + 0.5) / 100.0).collect();
            (trained.act(&grid).unwrap(), trained.net.export().unwrap(), trained.curve)
        };
        let (a, b, c) = (run(3), run(3), run(4));
        assert_eq!(a.0, b.0, "greedy actions differ");
        assert_eq!(a.1, b.1, "weights differ");
        assert_eq!(
            a.2.iter().map(|s| (s.mean_reward, s.loss)).collect::<Vec<_>>(),
            b.2.iter().map(|s| (s.mean_reward, s.loss)).collect::<Vec<_>>()
        );
        assert_ne!(a.1, c.1, "a different seed gave the same weights");
    }

    #[test]
    fn ppo_stops_when_the_callback_says_so() {
        let mut env = Bandit::new(4, &[0.0, 1.0], 0.1, 1);
        let cfg = PpoConfig { total_steps: 10_000, rollout_len: 8, ..PpoConfig::default() };
        let mut seen = Vec::new();
        let trained = train(&mut env, &cfg, &mut |s, actor| {
            assert_eq!(actor.act(&[1.0, 1.0]).unwrap().len(), 2);
            seen.push(s.update);
            Ok(s.update < 3)
        })
        .unwrap();
        assert_eq!(seen, [1, 2, 3]);
        assert_eq!(trained.curve.len(), 3);
        assert_eq!(trained.curve[2].env_steps, 3 * 4 * 8);
    }
}
