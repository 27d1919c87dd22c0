//! Key/value caches for a contiguous range of decoder layers.
//!
//! A side of the split owns exactly the caches of the layers it runs. The invariant that every
//! layer in the range has seen the same number of positions is checked on every step rather than
//! assumed: a broken invariant after a split change is a wrong answer, not a crash, unless caught.

use std::ops::Range;

use candle_core::Tensor;

use crate::error::{Error, Result};

/// Keys and values of one layer, each `[1, kv_heads, positions, head_dim]`.
#[derive(Debug, Clone)]
pub struct LayerKv {
    pub k: Tensor,
    pub v: Tensor,
}

impl LayerKv {
    pub fn positions(&self) -> usize {
        self.k.dims().get(2).copied().unwrap_or(0)
    }
}

/// The caches of layers `range`, all holding positions `0..position`.
#[derive(Debug, Clone)]
pub struct KvCache {
    range: Range<usize>,
    layers: Vec<Option<LayerKv>>,
    position: usize,
}

impl KvCache {
    /// An empty cache for layers `range` (which may be empty, e.g. the UE at `k = 0`).
    pub fn new(range: Range<usize>) -> Self {
        let layers = vec![None; range.len()];
        Self { range, layers, position: 0 }
    }

    pub fn range(&self) -> Range<usize> {
        self.range.clone()
    }

    /// Number of positions every layer in the range has processed.
    pub fn position(&self) -> usize {
        self.position
    }

    /// The cached entries of `layer`, if the range holds it and it has seen any position.
    pub fn layer(&self, layer: usize) -> Option<&LayerKv> {
        if !self.range.contains(&layer) {
            return None;
        }
        self.layers[layer - self.range.start].as_ref()
    }

    /// Appends `k`/`v` for `layer`, returning the full keys and values to attend over.
    pub(crate) fn append(&mut self, layer: usize, k: Tensor, v: Tensor) -> Result<LayerKv> {
        if !self.range.contains(&layer) {
            return Err(Error::CacheInvariant(format!(
                "layer {layer} is not in this cache's range {:?}",
                self.range
            )));
        }
        let slot = &mut self.layers[layer - self.range.start];
        let before = slot.as_ref().map_or(0, LayerKv::positions);
        if before != self.position {
            return Err(Error::CacheInvariant(format!(
                "layer {layer} holds {before} positions but the cache is at position {}",
                self.position
            )));
        }
        let entry = match slot.take() {
            None => LayerKv { k, v },
            Some(old) => LayerKv { k: Tensor::cat(&[&old.k, &k], 2)?, v: Tensor::cat(&[&old.v, &v], 2)? },
        };
        *slot = Some(entry.clone());
        Ok(entry)
    }

    /// Records that every layer has taken `steps` more positions; checks they all did.
    pub(crate) fn advance(&mut self, steps: usize) -> Result<()> {
        let next = self.position + steps;
        for (i, slot) in self.layers.iter().enumerate() {
            let have = slot.as_ref().map_or(0, LayerKv::positions);
            if have != next {
                return Err(Error::CacheInvariant(format!(
                    "layer {} holds {have} positions, expected {next}",
                    self.range.start + i
                )));
            }
        }
        self.position = next;
        Ok(())
    }
}
