//! Key/value caches for a contiguous range of decoder layers.
//!
//! A side of the split owns exactly the caches of the layers it runs. The invariant that every
//! layer in the range has seen the same number of positions is checked on every step rather than
//! assumed: a broken invariant after a split change is a wrong answer, not a crash, unless caught.
//!
//! Each layer's keys and values live in buffers with room for [`GROW`] more positions, written in
//! place; a step copies only its own new rows (appending by concatenation copied the whole cache
//! on every token, ~1 MB per layer per token at a few hundred positions of context).

use std::ops::Range;

use candle_core::Tensor;

use crate::error::{Error, Result};

/// Positions a layer's buffers grow by when full: the memory held beyond what is used is below
/// this many positions per layer, and a full copy happens once per this many tokens.
const GROW: usize = 64;

/// Keys and values of one layer, each `[1, kv_heads, positions, head_dim]` (views of the cache's
/// buffers when they come from a cache).
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

/// One layer's buffers (`[1, kv_heads, capacity, head_dim]`), of which positions `0..len` are
/// filled.
#[derive(Debug)]
struct Slot {
    k: Tensor,
    v: Tensor,
    len: usize,
}

impl Slot {
    fn capacity(&self) -> usize {
        self.k.dims().get(2).copied().unwrap_or(0)
    }

    fn view(&self) -> Result<LayerKv> {
        Ok(LayerKv { k: self.k.narrow(2, 0, self.len)?, v: self.v.narrow(2, 0, self.len)? })
    }

    /// Buffers of `capacity` positions holding `kv`'s.
    fn with_capacity(kv: &LayerKv, capacity: usize) -> Result<Self> {
        let (b, heads, len, dim) = kv.k.dims4()?;
        let k = Tensor::zeros((b, heads, capacity, dim), kv.k.dtype(), kv.k.device())?;
        let v = Tensor::zeros((b, heads, capacity, dim), kv.v.dtype(), kv.v.device())?;
        if len > 0 {
            k.slice_set(&kv.k.contiguous()?, 2, 0)?;
            v.slice_set(&kv.v.contiguous()?, 2, 0)?;
        }
        Ok(Self { k, v, len })
    }

    /// Writes `k`/`v` (`[1, kv_heads, seq, head_dim]`) after the filled positions, growing the
    /// buffers first if they are full.
    fn push(&mut self, k: &Tensor, v: &Tensor) -> Result<()> {
        let seq = k.dim(2)?;
        if self.len + seq > self.capacity() {
            *self = Self::with_capacity(&self.view()?, (self.len + seq).next_multiple_of(GROW))?;
        }
        self.k.slice_set(&k.contiguous()?, 2, self.len)?;
        self.v.slice_set(&v.contiguous()?, 2, self.len)?;
        self.len += seq;
        Ok(())
    }
}

/// The caches of layers `range`, all holding positions `0..position`. Not `Clone`: its buffers
/// are written in place, so two caches must never share them.
#[derive(Debug)]
pub struct KvCache {
    range: Range<usize>,
    layers: Vec<Option<Slot>>,
    position: usize,
}

impl KvCache {
    /// An empty cache for layers `range` (which may be empty, e.g. the UE at `k = 0`).
    pub fn new(range: Range<usize>) -> Self {
        let layers = (0..range.len()).map(|_| None).collect();
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
    pub fn layer(&self, layer: usize) -> Option<LayerKv> {
        if !self.range.contains(&layer) {
            return None;
        }
        self.layers[layer - self.range.start].as_ref().and_then(|s| s.view().ok())
    }

    /// A cache for layers `range` from entries moved from another side: one per layer, in order,
    /// each `[1, kv_heads, position, head_dim]`.
    pub fn from_entries(range: Range<usize>, entries: Vec<LayerKv>, position: usize, kv_heads: usize, head_dim: usize) -> Result<Self> {
        if position == 0 && entries.is_empty() {
            return Ok(Self::new(range));
        }
        if entries.len() != range.len() {
            return Err(Error::CacheInvariant(format!(
                "{} layer entries for the {} layers {range:?}",
                entries.len(),
                range.len()
            )));
        }
        let want = [1, kv_heads, position, head_dim];
        for (i, e) in entries.iter().enumerate() {
            for (what, t) in [("keys", &e.k), ("values", &e.v)] {
                if t.dims() != want {
                    return Err(Error::CacheInvariant(format!(
                        "{what} of layer {} have shape {:?}, expected {want:?}",
                        range.start + i,
                        t.dims()
                    )));
                }
            }
        }
        let layers = if position == 0 {
            (0..range.len()).map(|_| None).collect()
        } else {
            entries.iter().map(|e| Slot::with_capacity(e, position.next_multiple_of(GROW)).map(Some)).collect::<Result<_>>()?
        };
        Ok(Self { range, layers, position })
    }

    /// The entries of every layer in the range, in order (`None` before the first position).
    pub fn entries(&self) -> impl Iterator<Item = (usize, Option<LayerKv>)> {
        self.layers.iter().enumerate().map(|(i, l)| (self.range.start + i, l.as_ref().and_then(|s| s.view().ok())))
    }

    /// Takes the layers `at..end` out into their own cache; `self` keeps `start..at`.
    pub fn split_off(&mut self, at: usize) -> Result<Self> {
        if !(self.range.start..=self.range.end).contains(&at) {
            return Err(Error::CacheInvariant(format!("cannot split the cache of layers {:?} at layer {at}", self.range)));
        }
        let upper = self.layers.split_off(at - self.range.start);
        let upper = Self { range: at..self.range.end, layers: upper, position: self.position };
        self.range.end = at;
        Ok(upper)
    }

    /// Joins `self` (layers `a..b`) and `upper` (layers `b..c`) into one cache of `a..c`; both
    /// must hold the same positions.
    pub fn join(mut self, upper: Self) -> Result<Self> {
        if self.range.end != upper.range.start {
            return Err(Error::CacheInvariant(format!(
                "caches of layers {:?} and {:?} are not adjacent",
                self.range, upper.range
            )));
        }
        // An empty range has seen every position trivially.
        let position = match (self.range.is_empty(), upper.range.is_empty()) {
            (true, true) => self.position.max(upper.position),
            (true, false) => upper.position,
            (_, true) => self.position,
            _ if self.position == upper.position => self.position,
            _ => {
                return Err(Error::CacheInvariant(format!(
                    "layers {:?} hold {} positions but layers {:?} hold {}",
                    self.range, self.position, upper.range, upper.position
                )));
            }
        };
        self.layers.extend(upper.layers);
        Ok(Self { range: self.range.start..upper.range.end, layers: self.layers, position })
    }

    /// Bytes its buffers hold, used or not (keys and values of every layer).
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .map(|s| (s.k.elem_count() + s.v.elem_count()) * s.k.dtype().size_in_bytes())
            .sum()
    }

    /// Sets the position of a cache with no layers (it follows the side's other caches).
    pub fn set_empty_position(&mut self, position: usize) {
        if self.range.is_empty() {
            self.position = position;
        }
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
        let before = slot.as_ref().map_or(0, |s| s.len);
        if before != self.position {
            return Err(Error::CacheInvariant(format!(
                "layer {layer} holds {before} positions but the cache is at position {}",
                self.position
            )));
        }
        match slot {
            Some(s) => s.push(&k, &v)?,
            None => {
                let capacity = k.dim(2)?.next_multiple_of(GROW);
                *slot = Some(Slot::with_capacity(&LayerKv { k, v }, capacity)?);
            }
        }
        slot.as_ref().map_or_else(|| Err(Error::CacheInvariant(format!("layer {layer} has no entries after an append"))), Slot::view)
    }

    /// Records that every layer has taken `steps` more positions; checks they all did.
    pub(crate) fn advance(&mut self, steps: usize) -> Result<()> {
        let next = self.position + steps;
        for (i, slot) in self.layers.iter().enumerate() {
            let have = slot.as_ref().map_or(0, |s| s.len);
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn filled(range: Range<usize>, position: usize) -> KvCache {
        let entries = range
            .clone()
            .map(|l| {
                let t = Tensor::full(l as f32, (1, 2, position, 4), &Device::Cpu).unwrap();
                LayerKv { k: t.clone(), v: t }
            })
            .collect();
        KvCache::from_entries(range, entries, position, 2, 4).unwrap()
    }

    #[test]
    fn split_then_join_restores_the_cache() {
        let mut c = filled(3..9, 5);
        let upper = c.split_off(6).unwrap();
        assert_eq!((c.range(), upper.range()), (3..6, 6..9));
        assert_eq!(upper.layer(7).unwrap().k.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0], 7.0);
        let joined = c.join(upper).unwrap();
        assert_eq!(joined.range(), 3..9);
        assert_eq!(joined.position(), 5);
        for (l, e) in joined.entries() {
            assert_eq!(e.unwrap().v.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0], l as f32);
        }
    }

    #[test]
    fn join_refuses_gaps_and_position_mismatch() {
        let e = filled(0..2, 5).join(filled(3..4, 5)).unwrap_err();
        assert!(e.to_string().contains("not adjacent"), "{e}");
        let e = filled(0..2, 5).join(filled(2..4, 6)).unwrap_err();
        assert!(e.to_string().contains("hold 5 positions"), "{e}");
        // An empty side takes the other's position.
        let j = KvCache::new(0..0).join(filled(0..3, 6)).unwrap();
        assert_eq!(j.position(), 6);
    }

    #[test]
    fn from_entries_checks_shapes() {
        let t = Tensor::zeros((1, 2, 4, 4), DType::F32, &Device::Cpu).unwrap();
        let e = KvCache::from_entries(0..1, vec![LayerKv { k: t.clone(), v: t }], 5, 2, 4).unwrap_err();
        assert!(e.to_string().contains("expected [1, 2, 5, 4]"), "{e}");
        let e = KvCache::from_entries(0..2, vec![], 5, 2, 4).unwrap_err();
        assert!(e.to_string().contains("0 layer entries for the 2 layers"), "{e}");
    }
}
