//! The interface between learners and environments: a batch of independent episodes stepped
//! together, with discrete actions (the split `k`) and observations already normalised.
//!
//! The surrogate environment (cheap: a network predicts the quality) and the real one (the split
//! model and the channel, seconds per step) both implement it, so the same PPO runs on either.

/// What one step of every environment returned.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// `n_envs × obs_dim`, row-major: the observation after the step. Where an episode ended, the
    /// first observation of the next one (environments reset themselves).
    pub obs: Vec<f32>,
    pub reward: Vec<f32>,
    /// Whether this step ended the environment's episode.
    pub done: Vec<bool>,
}

pub trait VecEnv {
    fn n_envs(&self) -> usize;
    fn obs_dim(&self) -> usize;
    fn n_actions(&self) -> usize;
    /// Starts a fresh episode in every environment; `n_envs × obs_dim` observations.
    fn reset(&mut self) -> anyhow::Result<Vec<f32>>;
    /// One action (in `0..n_actions`) per environment.
    fn step(&mut self, actions: &[usize]) -> anyhow::Result<Step>;
    /// Evaluations of the real model this environment has cost so far (0 for a surrogate).
    fn real_evaluations(&self) -> usize {
        0
    }
}

/// A trained policy that picks actions for a batch of observations (greedy: no exploration).
pub trait Actor {
    /// `obs` is `n × obs_dim`, row-major; one action per row.
    fn act(&self, obs: &[f32]) -> anyhow::Result<Vec<usize>>;
}
