//! Model-based reinforcement learning for the split agent (docs/design.md, Model-based RL): the real environment,
//! the profile, the reward and its surrogate, the learners and baselines, and the report.

pub mod algo;
pub mod env;
pub mod nets;
pub mod profile;
pub mod real;
pub mod reward;
pub mod surrogate;
pub mod traces;
pub mod trace_env;
pub mod evaluate;
pub mod link_profile;
pub mod decision;
pub mod decision_learn;
pub mod pipeline;
pub mod plots;
pub mod report;
