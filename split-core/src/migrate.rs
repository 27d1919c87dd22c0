//! Live split changes: the layers that change sides need their KV caches on the new side
//! (docs/design.md, Split semantics). Two ways, both exact:
//!
//! - **transfer**: the side giving up the layers ships their key/value entries;
//! - **recompute**: the side taking them replays the hidden states at the lower boundary of the
//!   moved layers through them, for every past position, *in the row chunks each position was
//!   first computed in* — the same shapes take the same kernels, so the rebuilt entries are
//!   bit-identical to the originals (a single batched replay would not be: candle's quantized
//!   matmul rounds activations per block, and the dense prefill path differs from the decode path).
//!
//! The UE keeps a [`BoundaryLog`] of the hidden states at every layer boundary it computed, which
//! is what a recompute replays; [`CostModel::plan`] picks the cheaper way from measured layer times
//! and the link rate.
//!
//! Both ends move caches through the same four functions: [`give`] takes the layers that leave a
//! side out of its cache, [`take`] joins the layers that arrive, and [`to_wire`] and [`from_wire`]
//! turn moved entries into wire tensors and back.

use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::model::{KvCache, LayerKv, SplitModel};
use crate::protocol::LayerEntries;
use crate::wire::{CandleWire, WireDType, WireTensor};

/// Which side of the split a cache belongs to: the UE holds layers `0..k`, the edge `k..L`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Ue,
    Edge,
}

/// Takes the layers that leave `side` when the split moves to `to` out of `cache` and returns
/// them; `cache` keeps the rest, at the same position (also when it is left with no layer).
pub fn give(side: Side, cache: &mut KvCache, to: usize) -> Result<KvCache> {
    let position = cache.position();
    let given = match side {
        // The UE keeps 0..to and gives to..from.
        Side::Ue => cache.split_off(to)?,
        // The edge keeps to..L and gives from..to.
        Side::Edge => {
            let kept = cache.split_off(to)?;
            std::mem::replace(cache, kept)
        }
    };
    cache.set_empty_position(position);
    Ok(given)
}

/// Joins the layers `gained` that arrive on `side` to its `cache`: above the UE's layers, below
/// the edge's.
pub fn take(side: Side, cache: &mut KvCache, gained: KvCache) -> Result<()> {
    let own = std::mem::replace(cache, KvCache::new(0..0));
    *cache = match side {
        Side::Ue => own.join(gained)?,
        Side::Edge => gained.join(own)?,
    };
    Ok(())
}

/// The entries of every layer of `moved` that has seen a position, for the wire in `dtype`.
pub fn to_wire(moved: &KvCache, dtype: WireDType) -> Result<Vec<LayerEntries>> {
    moved
        .entries()
        .filter_map(|(layer, e)| e.map(|e| (layer, e)))
        .map(|(layer, e)| Ok(LayerEntries { layer, k: WireTensor::from_tensor(&e.k, dtype)?, v: WireTensor::from_tensor(&e.v, dtype)? }))
        .collect()
}

/// The caches of the layers that change sides when the split moves from `from` to `to`, at
/// `position`, from the entries the other side sent in `message` (for the words of a refusal):
/// one per moved layer, in order, or none at position 0.
pub fn from_wire(model: &SplitModel, message: &str, entries: &[LayerEntries], from: usize, to: usize, position: usize) -> Result<KvCache> {
    let layers = from.min(to)..from.max(to);
    let want: Vec<usize> = layers.clone().collect();
    let got: Vec<usize> = entries.iter().map(|e| e.layer).collect();
    if got != want && !(position == 0 && got.is_empty()) {
        return Err(Error::InvalidArgument(format!(
            "{message} carries entries of layers {got:?}; moving the split from {from} to {to} needs layers {want:?}"
        )));
    }
    let (kv_heads, head_dim) = model.kv_layout();
    let device = model.device();
    let entries = entries
        .iter()
        .map(|e| {
            let stored = |t: &WireTensor| -> Result<_> { Ok(t.to_tensor(device)?.to_dtype(model.kv_dtype())?) };
            Ok(LayerKv { k: stored(&e.k)?, v: stored(&e.v)? })
        })
        .collect::<Result<Vec<_>>>()?;
    KvCache::from_entries(layers, entries, position, kv_heads, head_dim).map_err(|e| Error::InvalidArgument(format!("moved caches: {e}")))
}

/// How the caches of moved layers get to their new side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Transfer,
    Recompute,
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Transfer => "transfer",
            Self::Recompute => "recompute",
        })
    }
}

/// What the UE may choose: one method always, or the cheaper by [`CostModel`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MigrationMode {
    #[default]
    Auto,
    Transfer,
    Recompute,
}

impl FromStr for MigrationMode {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Self::Auto),
            "transfer" => Ok(Self::Transfer),
            "recompute" => Ok(Self::Recompute),
            other => Err(Error::InvalidArgument(format!(
                "unknown migration mode {other:?}: expected auto, transfer or recompute"
            ))),
        }
    }
}

impl fmt::Display for MigrationMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Transfer => "transfer",
            Self::Recompute => "recompute",
        })
    }
}

/// One step the UE computed: its row count and the hidden states at boundaries `0..=height`
/// (boundary 0 is the embedding, boundary `j` the output of layer `j - 1`).
#[derive(Debug, Clone)]
struct LoggedStep {
    rows: usize,
    boundaries: Vec<Tensor>,
}

/// The hidden states at every layer boundary the UE computed, step by step.
#[derive(Debug, Clone, Default)]
pub struct BoundaryLog {
    steps: Vec<LoggedStep>,
}

impl BoundaryLog {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a step of `rows` rows; `boundaries[j]` is `[1, rows, hidden]` at boundary `j`.
    pub fn push(&mut self, rows: usize, boundaries: Vec<Tensor>) -> Result<()> {
        if boundaries.is_empty() || boundaries.iter().any(|b| b.dims().get(1) != Some(&rows)) {
            return Err(Error::CacheInvariant(format!("a logged step of {rows} rows needs its embedding and boundaries of {rows} rows")));
        }
        self.steps.push(LoggedStep { rows, boundaries });
        Ok(())
    }

    /// Positions logged.
    pub fn positions(&self) -> usize {
        self.steps.iter().map(|s| s.rows).sum()
    }

    /// Row count of every step, in order.
    pub fn chunks(&self) -> Vec<usize> {
        self.steps.iter().map(|s| s.rows).collect()
    }

    /// The highest boundary every step holds.
    pub fn common_height(&self) -> usize {
        self.steps.iter().map(|s| s.boundaries.len() - 1).min().unwrap_or(0)
    }

    /// The hidden states at boundary `j` for every logged position, `[1, positions, hidden]`.
    pub fn boundary(&self, j: usize) -> Result<Tensor> {
        let parts = self
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| s.boundaries.get(j).ok_or_else(|| Error::CacheInvariant(format!("step {i} holds no boundary {j}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&parts, 1)?)
    }

    /// Bytes the log holds in memory.
    pub fn bytes(&self) -> usize {
        self.steps.iter().flat_map(|s| &s.boundaries).map(|t| t.elem_count() * t.dtype().size_in_bytes()).sum()
    }
}

/// Rebuilds the caches of `layers` for every logged position from the log alone. Replays from
/// the highest boundary every step holds at or below `layers.start`, through the layers above it,
/// step by step, and fills in the log's missing boundaries on the way.
pub fn recompute(model: &SplitModel, log: &mut BoundaryLog, layers: Range<usize>) -> Result<KvCache> {
    let from = log.common_height().min(layers.start);
    let mut cache = KvCache::new(from..layers.end);
    for step in &mut log.steps {
        let mut trace = Vec::with_capacity(layers.end - from);
        model.run_layers_traced(&step.boundaries[from], &mut cache, &mut trace)?;
        // Boundaries the step already held are bit-identical to the replayed ones: keep them.
        let have = step.boundaries.len();
        step.boundaries.extend(trace.into_iter().skip(have - 1 - from));
    }
    let moved = cache.split_off(layers.start)?;
    Ok(moved)
}

/// Rebuilds the caches of `layers` by replaying `input` (the hidden states at boundary
/// `layers.start`, `[1, positions, hidden]`) in the row chunks `chunks` it was first computed in.
pub fn replay(model: &SplitModel, input: &Tensor, chunks: &[usize], layers: Range<usize>) -> Result<KvCache> {
    let positions = input.dims().get(1).copied().unwrap_or(0);
    if chunks.iter().sum::<usize>() != positions || chunks.contains(&0) {
        return Err(Error::InvalidArgument(format!(
            "replay chunks {chunks:?} do not split the {positions} positions of the replayed states"
        )));
    }
    let mut cache = KvCache::new(layers);
    let mut at = 0;
    for &rows in chunks {
        model.run_layers(&input.narrow(1, at, rows)?, &mut cache)?;
        at += rows;
    }
    cache.set_empty_position(positions);
    Ok(cache)
}

/// Estimates what each method costs, from the UE's measured layer times and the link rate.
#[derive(Debug, Clone)]
pub struct CostModel {
    /// Bytes per second that migration data crosses the link at, either direction.
    pub link_bytes_per_s: f64,
    /// Seconds one UE layer takes on a step, fixed part…
    pub layer_step_s: f64,
    /// …and per row.
    pub layer_row_s: f64,
    /// How many times faster the edge runs a layer than the UE.
    pub edge_speedup: f64,
}

impl CostModel {
    /// Defaults measured for SmolLM2-135M on this project's 2-core CI machine: ~0.65 ms per layer
    /// for a one-row step, ~0.15 ms per layer per prefill row.
    pub fn new(link_mbps: f64, edge_speedup: f64) -> Self {
        Self { link_bytes_per_s: link_mbps * 1e6 / 8.0, layer_step_s: 6.5e-4, layer_row_s: 1.5e-4, edge_speedup }
    }

    /// Folds in a measured UE step: `layers` layers over `rows` rows took `seconds`.
    pub fn observe(&mut self, rows: usize, layers: usize, seconds: f64) {
        if layers == 0 || rows == 0 {
            return;
        }
        let per_layer = seconds / layers as f64;
        if rows == 1 {
            self.layer_step_s = 0.8 * self.layer_step_s + 0.2 * per_layer;
        } else {
            let row = ((per_layer - self.layer_step_s) / rows as f64).max(0.0);
            self.layer_row_s = 0.8 * self.layer_row_s + 0.2 * row;
        }
    }

    /// Seconds one UE layer takes over every logged step.
    fn replay_layer_s(&self, chunks: &[usize]) -> f64 {
        chunks.iter().map(|&r| self.layer_step_s + self.layer_row_s * r as f64).sum()
    }

    /// Chooses how to move from `from_k` to `to_k` after steps of `chunks` rows, when the UE's log
    /// holds boundaries up to `log_height` for every step.
    pub fn plan(&self, shape: &MigrationShape, from_k: usize, to_k: usize, chunks: &[usize], log_height: usize, mode: MigrationMode) -> Plan {
        let positions: usize = chunks.iter().sum();
        let (lo, hi) = (from_k.min(to_k), from_k.max(to_k));
        let moved = hi - lo;
        let transfer_bytes = (moved * positions * shape.kv_elems_per_layer_position * shape.bytes_per_elem) as u64;
        let transfer_s = transfer_bytes as f64 / self.link_bytes_per_s;
        // The UE replays from its log's common height up to the boundary it needs.
        let base = log_height.min(lo);
        let layer_s = self.replay_layer_s(chunks);
        let (recompute_s, recompute_bytes) = if to_k > from_k {
            ((hi - base) as f64 * layer_s, 0)
        } else {
            let bytes = (positions * shape.hidden * shape.bytes_per_elem) as u64;
            let ue = (lo - base) as f64 * layer_s;
            (ue + bytes as f64 / self.link_bytes_per_s + moved as f64 * layer_s / self.edge_speedup, bytes)
        };
        let method = match mode {
            MigrationMode::Transfer => Method::Transfer,
            MigrationMode::Recompute => Method::Recompute,
            MigrationMode::Auto if recompute_s < transfer_s => Method::Recompute,
            MigrationMode::Auto => Method::Transfer,
        };
        Plan { method, transfer_s, recompute_s, transfer_bytes, recompute_bytes }
    }
}

/// The sizes a plan depends on.
#[derive(Debug, Clone, Copy)]
pub struct MigrationShape {
    /// Elements of keys plus values per layer per position: `2 × kv_heads × head_dim`.
    pub kv_elems_per_layer_position: usize,
    pub hidden: usize,
    /// Bytes per element on the wire.
    pub bytes_per_elem: usize,
}

impl MigrationShape {
    pub fn new(model: &SplitModel, bytes_per_elem: usize) -> Self {
        let (kv_heads, head_dim) = model.kv_layout();
        Self { kv_elems_per_layer_position: 2 * kv_heads * head_dim, hidden: model.config().hidden_size, bytes_per_elem }
    }
}

/// A chosen method with both estimates, for the log.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub method: Method,
    pub transfer_s: f64,
    pub recompute_s: f64,
    pub transfer_bytes: u64,
    pub recompute_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn log_of(heights: &[usize], rows: &[usize]) -> BoundaryLog {
        let mut log = BoundaryLog::new();
        for (&h, &r) in heights.iter().zip(rows) {
            let b = (0..=h).map(|j| Tensor::full(j as f32, (1, r, 4), &Device::Cpu).unwrap()).collect();
            log.push(r, b).unwrap();
        }
        log
    }

    #[test]
    fn log_tracks_positions_chunks_and_common_height() {
        let log = log_of(&[5, 2, 7], &[10, 1, 1]);
        assert_eq!(log.positions(), 12);
        assert_eq!(log.chunks(), vec![10, 1, 1]);
        assert_eq!(log.common_height(), 2);
        assert_eq!(log.boundary(2).unwrap().dims(), &[1, 12, 4]);
        let e = log.boundary(3).unwrap_err();
        assert!(e.to_string().contains("step 1 holds no boundary 3"), "{e}");
    }

    #[test]
    fn plan_prefers_the_cheaper_method_and_obeys_a_forced_mode() {
        let shape = MigrationShape { kv_elems_per_layer_position: 384, hidden: 576, bytes_per_elem: 4 };
        let log = log_of(&[10; 3], &[100, 1, 1]);
        let (chunks, height) = (log.chunks(), log.common_height());
        // A fast link: moving entries is cheaper than replaying 102 positions.
        let fast = CostModel::new(10_000.0, 1.0);
        let p = fast.plan(&shape, 10, 20, &chunks, height, MigrationMode::Auto);
        assert_eq!(p.method, Method::Transfer);
        assert_eq!(p.transfer_bytes, 10 * 102 * 384 * 4);
        // A slow link: replaying is cheaper.
        let slow = CostModel::new(0.1, 1.0);
        assert_eq!(slow.plan(&shape, 10, 20, &chunks, height, MigrationMode::Auto).method, Method::Recompute);
        assert_eq!(slow.plan(&shape, 10, 20, &chunks, height, MigrationMode::Transfer).method, Method::Transfer);
        // Toward the edge, recompute uploads one boundary's states.
        let p = slow.plan(&shape, 10, 4, &chunks, height, MigrationMode::Recompute);
        assert_eq!(p.recompute_bytes, 102 * 576 * 4);
    }

    #[test]
    fn observe_moves_the_estimates_toward_measurements() {
        let mut c = CostModel::new(100.0, 1.0);
        for _ in 0..50 {
            c.observe(1, 10, 0.02);
        }
        assert!((c.layer_step_s - 0.002).abs() < 1e-4, "{}", c.layer_step_s);
    }
}
