//! A Q4_1 matmul for many activation rows at once that returns, row by row, exactly the bits of
//! candle's CPU kernel.
//!
//! candle 0.11.1 computes a Q4_1 product row by row and column by column (`k_quants::matmul`):
//! it quantizes each activation row to Q8_1 blocks of 32 and, for every weight column, adds up
//! per block `sumi · d_w · d_x + m_w · s_x`, where `sumi` is the exact integer dot product of the
//! block's 4-bit weights with its 8-bit activations. That kernel's cost grows with the rows
//! times the columns whatever the batch (it is compute-bound, not memory-bound, here), so a batch
//! of decode steps gains little from it. This one keeps the arithmetic and changes the work
//! layout: the weights of 16 columns are stored block by block side by side, the integer dot
//! products of those 16 columns are computed together in 16-bit lanes (at most 16 · 15 · 128 =
//! 30720 per half block, so they cannot overflow) and the float part is the same expression,
//! evaluated in the same block order, lane by lane. Integer sums are exact in any order and Rust
//! never fuses or reorders float operations, so each output is the same f32 as candle's.
//! Activations are quantized by candle itself (`QTensor::quantize` to Q8_1 is the `from_float`
//! its matmul calls).
//!
//! The batch path uses it for two rows or more; a single row keeps candle's kernel.

use std::sync::Mutex;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use half::f16;

use crate::error::Result;

/// Columns computed together: one 256-bit vector of 16-bit lanes.
const LANES: usize = 16;
/// Values per Q4_1 and Q8_1 block.
const BLOCK: usize = 32;
/// Bytes of a Q4_1 block (`d: f16, m: f16, qs: [u8; 16]`) and of a Q8_1 block
/// (`d: f16, s: f16, qs: [i8; 32]`), as candle lays them out in memory (`repr(C)`).
const Q4_1_BYTES: usize = 20;
const Q8_1_BYTES: usize = 36;

/// The weights of a Q4_1 matrix `[n, k]` regrouped for [`PackedQ4_1::matmul`]: for each group
/// of [`LANES`] columns and each block, the 16 scales `d`, the 16 minimums `m` (as f32, exact)
/// and the 16 quant bytes of every column side by side (byte `j` of a block holds values `j`
/// and `j + 16` in its low and high nibble, as in Q4_1 itself).
#[derive(Debug, Clone)]
pub(crate) struct PackedQ4_1 {
    n: usize,
    k: usize,
    /// `[group][block][d: LANES, m: LANES]`
    scales: Vec<f32>,
    /// `[group][block][j: 16][column: LANES]`
    quants: Vec<u8>,
}

/// One activation block, quantized by candle to Q8_1, widened for the kernel.
#[derive(Clone, Copy)]
struct ActBlock {
    d: f32,
    s: f32,
    qs: [i16; BLOCK],
}

impl PackedQ4_1 {
    /// Regroups `w` (`[n, k]`), or `None` if it is not a CPU Q4_1 matrix whose columns fill
    /// whole groups.
    pub fn new(w: &QTensor) -> Result<Option<Self>> {
        let Ok((n, k)) = w.shape().dims2() else { return Ok(None) };
        if w.dtype() != GgmlDType::Q4_1 || !w.device().is_cpu() || n % LANES != 0 || k % BLOCK != 0 {
            return Ok(None);
        }
        let data = w.data()?;
        let blocks = k / BLOCK;
        if data.len() != n * blocks * Q4_1_BYTES {
            return Ok(None);
        }
        let groups = n / LANES;
        let mut scales = vec![0f32; groups * blocks * 2 * LANES];
        let mut quants = vec![0u8; groups * blocks * 16 * LANES];
        for col in 0..n {
            let (g, c) = (col / LANES, col % LANES);
            for b in 0..blocks {
                let src = &data[(col * blocks + b) * Q4_1_BYTES..][..Q4_1_BYTES];
                let at = g * blocks + b;
                scales[at * 2 * LANES + c] = f16::from_ne_bytes([src[0], src[1]]).to_f32();
                scales[at * 2 * LANES + LANES + c] = f16::from_ne_bytes([src[2], src[3]]).to_f32();
                for j in 0..16 {
                    quants[(at * 16 + j) * LANES + c] = src[4 + j];
                }
            }
        }
        Ok(Some(Self { n, k, scales, quants }))
    }

    /// `x` (`[..., k]`, f32) times the transposed weights: `[..., n]`, each row equal bit for
    /// bit to candle's `QMatMul::forward` of that row.
    pub fn matmul(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let k = *dims.last().unwrap_or(&0);
        if k != self.k {
            return Err(msg(format!("packed q4_1 matmul: input {dims:?} does not end in {}", self.k)));
        }
        let m = x.elem_count() / k;
        let blocks = k / BLOCK;
        let acts = quantize_rows(x, m, k)?;
        let groups = self.n / LANES;
        // Groups are split over candle's own thread pool; each range returns its outputs.
        let parts: Mutex<Vec<(usize, Vec<f32>)>> = Mutex::new(Vec::new());
        candle_core::utils::barrier_pool().execute_chunked(groups, |range| {
            let mut out = vec![0f32; range.len() * m * LANES];
            for (i, g) in range.clone().enumerate() {
                self.group(g, &acts, m, blocks, &mut out[i * m * LANES..][..m * LANES]);
            }
            if let Ok(mut p) = parts.lock() {
                p.push((range.start, out));
            }
        });
        let parts = parts.into_inner().map_err(|_| msg("packed q4_1 matmul: a worker panicked".into()))?;
        let mut dst = vec![0f32; m * self.n];
        let mut filled = 0;
        for (start, out) in parts {
            for (i, group) in out.chunks_exact(m * LANES).enumerate() {
                let col = (start + i) * LANES;
                for (r, lanes) in group.chunks_exact(LANES).enumerate() {
                    dst[r * self.n + col..][..LANES].copy_from_slice(lanes);
                }
                filled += 1;
            }
        }
        if filled != groups {
            return Err(msg(format!("packed q4_1 matmul: {filled} of {groups} column groups computed")));
        }
        let mut out_dims = dims;
        if let Some(last) = out_dims.last_mut() {
            *last = self.n;
        }
        Ok(Tensor::from_vec(dst, out_dims, &Device::Cpu)?)
    }

    /// Outputs of column group `g` for every row: `out[r * LANES + c]`. Rows go four at a time
    /// (each weight byte unpacked once for four rows: 1.6x faster here than one at a time;
    /// more rows run out of vector registers), the rest one at a time.
    fn group(&self, g: usize, acts: &[ActBlock], m: usize, blocks: usize, out: &mut [f32]) {
        let scales = &self.scales[g * blocks * 2 * LANES..][..blocks * 2 * LANES];
        let quants = &self.quants[g * blocks * 16 * LANES..][..blocks * 16 * LANES];
        let row = |r: usize| &acts[r * blocks..][..blocks];
        let mut r = 0;
        while r + 4 <= m {
            let sums = rows::<4>(scales, quants, std::array::from_fn(|i| row(r + i)));
            for (i, s) in sums.iter().enumerate() {
                out[(r + i) * LANES..][..LANES].copy_from_slice(s);
            }
            r += 4;
        }
        for r in r..m {
            let [s] = rows::<1>(scales, quants, [row(r)]);
            out[r * LANES..][..LANES].copy_from_slice(&s);
        }
    }
}

/// The outputs of one column group for `R` rows (`ys[i]`: row `i`'s blocks).
#[inline(always)]
fn rows<const R: usize>(scales: &[f32], quants: &[u8], ys: [&[ActBlock]; R]) -> [[f32; LANES]; R] {
    let mut sumf = [[0f32; LANES]; R];
    for (b, (sc, q)) in scales.chunks_exact(2 * LANES).zip(quants.chunks_exact(16 * LANES)).enumerate() {
        let y: [&ActBlock; R] = std::array::from_fn(|i| &ys[i][b]);
        // Values j (low nibbles) and j + 16 (high nibbles) in separate 16-bit sums. They cannot
        // saturate (see the module doc); saturating adds are not associative, so LLVM keeps the
        // loop over j and vectorizes across the 16 columns instead of turning each column into
        // a reduction across j (5x slower here).
        let mut lo = [[0i16; LANES]; R];
        let mut hi = [[0i16; LANES]; R];
        for (j, bytes) in q.chunks_exact(LANES).enumerate() {
            let wl: [i16; LANES] = std::array::from_fn(|c| i16::from(bytes[c]) & 0x0F);
            let wh: [i16; LANES] = std::array::from_fn(|c| i16::from(bytes[c]) >> 4);
            for i in 0..R {
                let (y0, y1) = (y[i].qs[j], y[i].qs[j + 16]);
                for c in 0..LANES {
                    lo[i][c] = lo[i][c].saturating_add(wl[c].wrapping_mul(y0));
                    hi[i][c] = hi[i][c].saturating_add(wh[c].wrapping_mul(y1));
                }
            }
        }
        let (d, mins) = sc.split_at(LANES);
        for i in 0..R {
            for c in 0..LANES {
                let sumi = i32::from(lo[i][c]) + i32::from(hi[i][c]);
                // candle: `sumf += sumi as f32 * d_w * d_x + m_w * s_x`, same association.
                sumf[i][c] += sumi as f32 * d[c] * y[i].d + mins[c] * y[i].s;
            }
        }
    }
    sumf
}

/// `x` as `m` rows of Q8_1 blocks, quantized by candle's `from_float` (the one its matmul uses).
fn quantize_rows(x: &Tensor, m: usize, k: usize) -> Result<Vec<ActBlock>> {
    let q = QTensor::quantize(&x.reshape((m, k))?, GgmlDType::Q8_1)?;
    let data = q.data()?;
    if data.len() != m * (k / BLOCK) * Q8_1_BYTES {
        return Err(msg(format!("q8_1 activations take {} bytes, expected {}", data.len(), m * (k / BLOCK) * Q8_1_BYTES)));
    }
    Ok(data
        .chunks_exact(Q8_1_BYTES)
        .map(|b| {
            let mut qs = [0i16; BLOCK];
            for (q, &byte) in qs.iter_mut().zip(&b[4..]) {
                *q = i16::from(byte as i8);
            }
            ActBlock {
                d: f16::from_ne_bytes([b[0], b[1]]).to_f32(),
                s: f16::from_ne_bytes([b[2], b[3]]).to_f32(),
                qs,
            }
        })
        .collect())
}

fn msg(text: String) -> crate::Error {
    candle_core::Error::Msg(text).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Module;
    use candle_core::quantized::QMatMul;

    /// Deterministic values with a spread of magnitudes, including whole zero blocks.
    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let u = (s >> 11) as f32 / (1u64 << 53) as f32 - 0.5;
                let scale = [1.0, 0.01, 37.0, 0.0][(i / BLOCK) % 4];
                u * scale
            })
            .collect()
    }

    #[test]
    fn equals_candles_kernel_bit_for_bit() {
        let dev = Device::Cpu;
        for (n, k, m) in [(16, 32, 1), (48, 64, 3), (192, 576, 16), (64, 1536, 21), (32, 96, 6)] {
            let w = Tensor::from_vec(values(n * k, n as u64), (n, k), &dev).unwrap();
            let q = QTensor::quantize(&w, GgmlDType::Q4_1).unwrap();
            let packed = PackedQ4_1::new(&q).unwrap().expect("a q4_1 matrix packs");
            let reference = QMatMul::from_qtensor(q).unwrap();
            let x = Tensor::from_vec(values(m * k, 7 + k as u64), (m, 1, k), &dev).unwrap();
            let got = packed.matmul(&x).unwrap();
            assert_eq!(got.dims(), [m, 1, n]);
            for r in 0..m {
                // candle's kernel on the row alone, as a single decode step runs it.
                let want = reference.forward(&x.narrow(0, r, 1).unwrap()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let row = got.narrow(0, r, 1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let same = want.iter().zip(&row).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "n={n} k={k} row {r} of {m} differs");
            }
        }
    }

    #[test]
    fn other_matrices_are_not_packed() {
        let dev = Device::Cpu;
        let w = Tensor::from_vec(values(16 * 64, 1), (16, 64), &dev).unwrap();
        assert!(PackedQ4_1::new(&QTensor::quantize(&w, GgmlDType::Q8_0).unwrap()).unwrap().is_none());
        let w = Tensor::from_vec(values(8 * 64, 1), (8, 64), &dev).unwrap();
        assert!(PackedQ4_1::new(&QTensor::quantize(&w, GgmlDType::Q4_1).unwrap()).unwrap().is_none(), "8 columns fill no group");
    }
}
