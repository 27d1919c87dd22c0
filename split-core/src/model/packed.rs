//! What our packed quantized kernels (`q4_1`, `q5_0`) share: the block constants, activation
//! blocks arranged for `maddubs`, the check that a matrix can be packed, columns in groups of
//! [`LANES`] shared out over candle's matmul pool, and each group's outputs put back in place.

use std::borrow::Cow;
use std::sync::Mutex;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use crate::error::Result;

/// Columns computed together: one 256-bit vector of 16-bit lanes.
pub(super) const LANES: usize = 16;

/// Values per block of the weight and activation types the kernels read (Q4_1, Q5_0, Q8_0, Q8_1).
pub(super) const BLOCK: usize = 32;
/// Pairs of quant bytes per weight block and column: byte `j` holds (the low four bits of)
/// values `j` (low nibble) and `j + 16` (high nibble); pair `p` is bytes `2p` and `2p + 1`.
pub(super) const PAIRS: usize = 8;

/// The 32 eight-bit activations of one block, arranged for `maddubs`: `lo[p]` holds activations
/// `2p` and `2p + 1` (which multiply the low nibbles of pair `p`) in its low and high byte,
/// `hi[p]` activations `2p + 16` and `2p + 17` (the high nibbles).
#[derive(Clone, Copy)]
pub(super) struct ActPairs {
    pub lo: [i16; PAIRS],
    pub hi: [i16; PAIRS],
}

impl ActPairs {
    /// From a block's 32 quant bytes.
    pub fn new(qs: &[u8]) -> Self {
        let pair = |j: usize| i16::from_le_bytes([qs[j], qs[j + 1]]);
        Self { lo: std::array::from_fn(|p| pair(2 * p)), hi: std::array::from_fn(|p| pair(16 + 2 * p)) }
    }

    /// Activation `j` of the block (`0..32`).
    #[cfg_attr(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "f16c"), allow(dead_code))]
    pub fn value(&self, j: usize) -> i32 {
        let pair = if j < 16 { self.lo[j / 2] } else { self.hi[(j - 16) / 2] };
        let [first, second] = pair.to_le_bytes();
        i32::from(if j.is_multiple_of(2) { first } else { second } as i8)
    }
}

/// A matrix's size `(n, k)` and its bytes.
type Sized<'a> = (usize, usize, Cow<'a, [u8]>);

/// `w`'s size `(n, k)` and bytes if it is a CPU matrix of `dtype` (blocks of `block_bytes`)
/// whose columns fill whole groups, else `None`.
pub(super) fn packable(w: &QTensor, dtype: GgmlDType, block_bytes: usize) -> Result<Option<Sized<'_>>> {
    let Ok((n, k)) = w.shape().dims2() else { return Ok(None) };
    if w.dtype() != dtype || !w.device().is_cpu() || n % LANES != 0 || k % BLOCK != 0 {
        return Ok(None);
    }
    let data = w.data()?;
    Ok((data.len() == n * (k / BLOCK) * block_bytes).then_some((n, k, data)))
}

/// `x` (`[..., k]`, f32) times each of several packed matrices `[n_i, k]` (`ns`): `[..., n_i]`
/// each. `quantize(m)` prepares the activations of the `m` rows of `x` once for all of them;
/// `group(i, g, acts, out)` fills column group `g` of matrix `i` as [`by_groups`] asks. The
/// workers take the column groups of all the matrices in one pass, so a step makes one hand-off
/// instead of one per matrix; every output is what that matrix's own product gives.
pub(super) fn apply_each<A: Sync>(
    x: &Tensor,
    ns: &[usize],
    k: usize,
    what: &str,
    quantize: impl FnOnce(usize) -> Result<A>,
    group: impl Fn(usize, usize, &A, &mut [f32]) + Sync,
) -> Result<Vec<Tensor>> {
    let mut dims = x.dims().to_vec();
    if dims.last() != Some(&k) || ns.iter().any(|n| n % LANES != 0) {
        return Err(msg(format!("{what}: input {dims:?} against matrices of {ns:?} columns by {k}")));
    }
    let m = x.elem_count() / k;
    let acts = quantize(m)?;
    // The first global column group of each matrix, and the total.
    let starts: Vec<usize> = ns.iter().scan(0, |at, n| Some(std::mem::replace(at, *at + n / LANES))).collect();
    let total: usize = ns.iter().sum();
    let dst = by_groups(total, m, what, |g, out| {
        let i = starts.partition_point(|&s| s <= g) - 1;
        group(i, g - starts[i], &acts, out);
    })?;
    ns.iter()
        .zip(&starts)
        .map(|(&n, &start)| {
            let cols: Vec<f32> = dst.chunks_exact(total).flat_map(|row| row[start * LANES..][..n].iter().copied()).collect();
            if let Some(last) = dims.last_mut() {
                *last = n;
            }
            Ok(Tensor::from_vec(cols, dims.clone(), &Device::Cpu)?)
        })
        .collect()
}

/// The `[m, n]` outputs of a kernel over `n / LANES` column groups for `m` rows. `group(g, out)`
/// fills `out[r * LANES + c]` with column `g · LANES + c` of row `r`. Groups run on candle's own
/// thread pool, in ranges; `what` names the kernel in errors.
pub(super) fn by_groups(n: usize, m: usize, what: &str, group: impl Fn(usize, &mut [f32]) + Sync) -> Result<Vec<f32>> {
    let groups = n / LANES;
    let parts: Mutex<Vec<(usize, Vec<f32>)>> = Mutex::new(Vec::new());
    candle_core::utils::barrier_pool().execute_chunked(groups, |range| {
        let mut out = vec![0f32; range.len() * m * LANES];
        for (i, g) in range.clone().enumerate() {
            group(g, &mut out[i * m * LANES..][..m * LANES]);
        }
        if let Ok(mut p) = parts.lock() {
            p.push((range.start, out));
        }
    });
    let parts = parts.into_inner().map_err(|_| msg(format!("{what}: a worker panicked")))?;
    let mut dst = vec![0f32; m * n];
    let mut filled = 0;
    for (start, out) in parts {
        for (i, group) in out.chunks_exact(m * LANES).enumerate() {
            let col = (start + i) * LANES;
            for (r, lanes) in group.chunks_exact(LANES).enumerate() {
                dst[r * n + col..][..LANES].copy_from_slice(lanes);
            }
            filled += 1;
        }
    }
    if filled != groups {
        return Err(msg(format!("{what}: {filled} of {groups} column groups computed")));
    }
    Ok(dst)
}

/// One column group's outputs for `m` rows into `out[r * LANES + c]`: `four(r)` computes rows
/// `r..r + 4` together (each weight loaded and unpacked once for four rows), `one(r)` a single
/// row, for the rest.
pub(super) fn rows_by_four(m: usize, out: &mut [f32], four: impl Fn(usize) -> [[f32; LANES]; 4], one: impl Fn(usize) -> [f32; LANES]) {
    let mut r = 0;
    while r + 4 <= m {
        for (i, s) in four(r).iter().enumerate() {
            out[(r + i) * LANES..][..LANES].copy_from_slice(s);
        }
        r += 4;
    }
    for r in r..m {
        out[r * LANES..][..LANES].copy_from_slice(&one(r));
    }
}

/// The only product of a one-matrix [`apply_each`].
pub(super) fn one(mut ys: Vec<Tensor>) -> Result<Tensor> {
    match (ys.pop(), ys.is_empty()) {
        (Some(y), true) => Ok(y),
        _ => Err(msg("packed matmul: not one product".into())),
    }
}

pub(super) fn msg(text: String) -> crate::Error {
    candle_core::Error::Msg(text).into()
}
