//! What our packed quantized kernels (`q4_1`, `q5_0`) share: the block constants, activation
//! blocks arranged for `maddubs`, the check that a matrix can be packed, columns in groups of
//! [`LANES`] shared out over candle's matmul pool, and each group's outputs put back in place.

use std::borrow::Cow;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use half::f16;

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

/// One block of 32 activations quantized as candle 0.11.1's `from_float` for Q8_0 and Q8_1 does
/// it (the Q8_1 scale sum aside): `d = amax / 127`, stored as f16, and each value
/// `round(x · (1 / d))` through the f32 `d`. Returns `d`, the values as bytes and their sum.
/// The kernels quantize their rows with this instead of through a `QTensor`, which allocated a
/// tensor and took a second pass to arrange the blocks, on the one thread while the other waited.
pub(super) fn quantize_block(xs: &[f32]) -> (f16, [u8; BLOCK], i32) {
    let amax = xs.iter().fold(0f32, |a, &x| a.max(x.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut qs = [0u8; BLOCK];
    let mut sum = 0;
    for (q, &x) in qs.iter_mut().zip(xs) {
        let v = f32::round(x * id) as i8;
        *q = v as u8;
        sum += i32::from(v);
    }
    (f16::from_f32(d), qs, sum)
}

/// `x`'s `m · k` values, row after row, in blocks of [`BLOCK`], each made into `block` by
/// [`quantize_block`]'s results.
pub(super) fn quantize_rows<B>(x: &Tensor, m: usize, k: usize, block: impl Fn(f16, &[u8; BLOCK], i32) -> B) -> Result<Vec<B>> {
    let values = x.flatten_all()?.to_vec1::<f32>()?;
    if values.len() != m * k || !k.is_multiple_of(BLOCK) {
        return Err(msg(format!("{} activations for {m} rows of {k}", values.len())));
    }
    Ok(values
        .chunks_exact(BLOCK)
        .map(|xs| {
            let (d, qs, sum) = quantize_block(xs);
            block(d, &qs, sum)
        })
        .collect())
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
    if let [n] = ns {
        // One matrix: the buffer is its output as it stands.
        if let Some(last) = dims.last_mut() {
            *last = *n;
        }
        return Ok(vec![Tensor::from_vec(dst, dims, &Device::Cpu)?]);
    }
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
/// thread pool, in ranges, and each writes its columns straight into the one output buffer (a
/// decode step makes ~150 of these calls; a buffer per range and a copy afterwards cost about
/// as much as the serial work between them); `what` names the kernel in errors.
pub(super) fn by_groups(n: usize, m: usize, what: &str, group: impl Fn(usize, &mut [f32]) + Sync) -> Result<Vec<f32>> {
    let groups = n / LANES;
    let mut dst = vec![0f32; m * n];
    let out = Disjoint::new(&mut dst);
    let filled = AtomicUsize::new(0);
    candle_core::utils::barrier_pool().execute_chunked(groups, |range| {
        let mut scratch = vec![0f32; if m == 1 { 0 } else { m * LANES }];
        for g in range.clone() {
            // SAFETY (both slices): column group `g` is in exactly one range, so its columns of
            // each row are taken once, and each slice is dropped before the next is taken.
            if m == 1 {
                #[allow(unsafe_code)]
                group(g, unsafe { out.slice(g * LANES, LANES) });
            } else {
                group(g, &mut scratch);
                for (r, lanes) in scratch.chunks_exact(LANES).enumerate() {
                    #[allow(unsafe_code)]
                    unsafe { out.slice(r * n + g * LANES, LANES) }.copy_from_slice(lanes);
                }
            }
        }
        filled.fetch_add(range.len(), Ordering::Relaxed);
    });
    let filled = filled.into_inner();
    if filled != groups {
        return Err(msg(format!("{what}: {filled} of {groups} column groups computed")));
    }
    Ok(dst)
}

/// An output buffer shared by the pool's threads (of [`by_groups`], and of the Q8_0 head), each
/// writing only its own columns of each row, so no two writers touch the same element. It
/// borrows the buffer for as long as it lives.
pub(super) struct Disjoint<'a> {
    ptr: *mut f32,
    len: usize,
    _buffer: PhantomData<&'a mut [f32]>,
}

// SAFETY: `Disjoint` only hands out ranges through `slice`, whose callers promise that no two
// live ranges overlap; the buffer is borrowed mutably for `'a`, so nothing else touches it.
#[allow(unsafe_code)]
unsafe impl Sync for Disjoint<'_> {}

impl<'a> Disjoint<'a> {
    pub fn new(buffer: &'a mut [f32]) -> Self {
        Self { ptr: buffer.as_mut_ptr(), len: buffer.len(), _buffer: PhantomData }
    }

    /// Elements `at..at + len` (panics if they are outside the buffer).
    ///
    /// # Safety
    /// No other live slice from this `Disjoint`, on any thread, may overlap `at..at + len`.
    #[allow(unsafe_code, clippy::mut_from_ref)]
    pub unsafe fn slice(&self, at: usize, len: usize) -> &mut [f32] {
        assert!(at + len <= self.len, "column range outside the output");
        // SAFETY: in bounds (the assert), inside a buffer borrowed mutably for `'a`; the caller
        // rules out overlapping slices.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(at), len) }
    }
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

#[cfg(test)]
mod tests {
    use super::super::kernel_tests::values;
    use super::*;

    /// Our block quantizer gives candle's Q8_0 and Q8_1 blocks bit for bit (Q8_1's `s` is
    /// `f16(sum) · d` in f16, as candle computes it).
    #[test]
    fn blocks_are_candles() {
        let mut xs = values(32 * 64, 11);
        xs[5] = f32::MAX;
        xs[40] = -1e-30;
        xs.extend([0.5f32, -0.5, 1.5, -1.5, 2.5].iter().cycle().take(32));
        let x = Tensor::from_vec(xs.clone(), xs.len(), &Device::Cpu).unwrap();
        for (dtype, bytes) in [(GgmlDType::Q8_0, 34), (GgmlDType::Q8_1, 36)] {
            let q = QTensor::quantize(&x, dtype).unwrap();
            for (b, want) in q.data().unwrap().chunks_exact(bytes).enumerate() {
                let (d, qs, sum) = quantize_block(&xs[b * BLOCK..][..BLOCK]);
                assert_eq!(want[..2], d.to_ne_bytes(), "{dtype:?} block {b}: d");
                assert_eq!(want[bytes - BLOCK..], qs, "{dtype:?} block {b}: values");
                if dtype == GgmlDType::Q8_1 {
                    let s = f16::from_f32(sum as f32) * d;
                    assert_eq!(want[2..4], s.to_ne_bytes(), "{dtype:?} block {b}: s");
                }
            }
        }
    }
}
