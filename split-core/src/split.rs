//! Domain values of the split itself.

use crate::error::{Error, Result};

/// `k`: the number of decoder layers run on the UE, checked to lie in `0..=L`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SplitPoint {
    k: usize,
}

impl SplitPoint {
    pub fn new(k: usize, n_layers: usize) -> Result<Self> {
        if k > n_layers {
            return Err(Error::SplitOutOfRange { k, n_layers });
        }
        Ok(Self { k })
    }

    pub fn k(self) -> usize {
        self.k
    }

    /// Layers the UE runs.
    pub fn ue_layers(self) -> std::ops::Range<usize> {
        0..self.k
    }

    /// Layers the edge runs, for a model of `n_layers`.
    pub fn edge_layers(self, n_layers: usize) -> std::ops::Range<usize> {
        self.k..n_layers
    }
}

/// The epoch of a split decision: the agent's counter, which only moves forward. A decision of a
/// higher epoch supersedes every lower one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Epoch(pub u64);

impl Epoch {
    pub const ZERO: Self = Self(0);

    pub fn get(self) -> u64 {
        self.0
    }
}

impl std::fmt::Display for Epoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A split decision: `k` layers on the UE, as of `epoch`. The one shape a moving split has, on
/// both ends; `splitinfer.v1.Split` is its form on the wire ([`crate::convert`]). `k` is checked
/// against the model where one is at hand ([`SplitPoint`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Split {
    pub k: usize,
    pub epoch: Epoch,
}

impl Split {
    pub fn new(k: usize, epoch: u64) -> Self {
        Self { k, epoch: Epoch(epoch) }
    }

    /// Whether this decision supersedes `other` (a higher epoch).
    pub fn supersedes(self, other: Self) -> bool {
        self.epoch > other.epoch
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "k = {} (epoch {})", self.k, self.epoch)
    }
}
