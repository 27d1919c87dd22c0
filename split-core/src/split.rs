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
