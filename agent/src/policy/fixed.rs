//! The fixed policy: always `k`.

use std::collections::BTreeMap;

use super::{Policy, Proposal};
use crate::observation::Observation;

#[derive(Debug, Clone)]
pub struct Fixed {
    k: u32,
}

impl Fixed {
    /// `k` must already be checked against the model's layer count (see `AgentConfig::policy`).
    pub fn new(k: u32) -> Self {
        Self { k }
    }
}

impl Policy for Fixed {
    fn name(&self) -> &str {
        "fixed"
    }

    fn params(&self) -> BTreeMap<String, String> {
        BTreeMap::from([("k".to_string(), self.k.to_string())])
    }

    fn decide(&mut self, _: &Observation, _: Option<u32>) -> Proposal {
        Proposal { k: self.k, reason: format!("fixed policy: k={}", self.k) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn always_the_same_k() {
        let mut p = Fixed::new(7);
        for (snr, loss) in [(30.0, 0.0), (-5.0, 0.5)] {
            assert_eq!(p.decide(&Observation::with(snr, loss), Some(3)).k, 7);
        }
        assert_eq!(p.params()["k"], "7");
    }
}
