//! The reference mode of the authors' released code: every element is set to zero independently
//! with probability p (their operating points are p ∈ [0.01, 0.30]). Also: a lost packet's
//! values are zero-filled. Both mark what they erased, for the receiver's concealment.

use rand::Rng;
use rand::rngs::StdRng;

use super::{Impairment, Packet};

#[derive(Debug, Clone)]
pub struct ElementErasure {
    p: f64,
}

impl ElementErasure {
    pub fn new(p: f64) -> Self {
        Self { p }
    }
}

impl Impairment for ElementErasure {
    fn name(&self) -> &'static str {
        "element-erasure"
    }

    fn apply(&mut self, p: &mut Packet<'_>, rng: &mut StdRng) {
        for (i, v) in p.values.iter_mut().enumerate() {
            if rng.random::<f64>() < self.p {
                *v = 0.0;
                // A lost packet's elements are already marked.
                if !p.lost {
                    p.erased.push(i);
                }
            }
        }
    }
}

/// Zero-fills a packet the loss stage marked lost.
#[derive(Debug, Clone, Default)]
pub struct EraseLost;

impl Impairment for EraseLost {
    fn name(&self) -> &'static str {
        "erase-lost"
    }

    fn apply(&mut self, p: &mut Packet<'_>, _: &mut StdRng) {
        if p.lost {
            p.values.iter_mut().for_each(|v| *v = 0.0);
            p.erased.extend(0..p.values.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// The erased fraction of 10⁶ elements within 5 binomial standard errors of p.
    #[test]
    fn erasure_rate_matches_p() {
        let n = 1_000_000;
        for p_erase in [0.01, 0.1, 0.3] {
            let mut values = vec![1.0f32; n];
            let mut p = Packet::new(&mut values, 1.0);
            ElementErasure::new(p_erase).apply(&mut p, &mut StdRng::seed_from_u64(11));
            let zeros = values.iter().filter(|&&v| v == 0.0).count();
            let got = zeros as f64 / n as f64;
            let se = (p_erase * (1.0 - p_erase) / n as f64).sqrt();
            assert!((got - p_erase).abs() < 5.0 * se, "p={p_erase}: {got}");
        }
    }
}
