//! Split policies behind one object-safe trait, one file per policy:
//!
//! - [`fixed`]: always the same `k` (a baseline, and the way to hold a split for experiments).
//! - [`threshold`]: a table of SNR and loss thresholds read from a CSV file, with hysteresis.
//! - [`learned`]: a small network trained offline by RL, read from a policy file.
//!
//! A policy only proposes; the agent's rules (confirmation over consecutive observations, the
//! minimum dwell time, overrides) decide when a proposal becomes a decision.

pub mod fixed;
pub mod learned;
pub mod threshold;

use std::collections::BTreeMap;

use crate::observation::Observation;

pub use fixed::Fixed;
pub use learned::Learned;
pub use threshold::Threshold;

/// What a policy wants for one observation, and why in words.
#[derive(Debug, Clone, PartialEq)]
pub struct Proposal {
    pub k: u32,
    pub reason: String,
}

pub trait Policy: Send {
    /// The name in `--policy` and in decisions.
    fn name(&self) -> &str;
    /// Parameters for the status API, as name = value.
    fn params(&self) -> BTreeMap<String, String>;
    /// The split for `obs`, given the split in force (`None` before the first decision). Called
    /// once per observation, in order; a policy may keep state between calls.
    fn decide(&mut self, obs: &Observation, current_k: Option<u32>) -> Proposal;
}
