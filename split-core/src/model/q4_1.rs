//! A Q4_1 matmul that returns, row by row, exactly the bits of candle's CPU kernel, several
//! times faster than it for one row and for many.
//!
//! candle 0.11.1 computes a Q4_1 product row by row and column by column (`k_quants::matmul`)
//! with a scalar dot product (`vec_dot_unopt`; it has SIMD only for Q4_0, Q8_0 and the K types):
//! it quantizes each activation row to Q8_1 blocks of 32 and, for every weight column, adds up
//! per block `sumi · d_w · d_x + m_w · s_x`, where `sumi` is the exact integer dot product of the
//! block's 4-bit weights with its 8-bit activations. This kernel keeps that arithmetic and
//! changes the work layout. The weights of 16 columns are stored block by block side by side,
//! two quant bytes of a column next to each other, so that one 256-bit `maddubs` multiplies 32
//! weights by their activations and adds them in pairs, giving 16 columns' partial sums at once
//! (at most 8 · 2 · 15 · 128 = 30720 per half block, so the 16-bit sums cannot overflow).
//! Integer sums are exact in any order; the float part is the same expression, evaluated in the
//! same block order, lane by lane, with separate multiplies and adds (Rust never fuses or
//! reorders float operations), so each output is the same f32 as candle's. Activations are
//! quantized by candle itself (`QTensor::quantize` to Q8_1 is the `from_float` its matmul calls).
//!
//! Where AVX2 and F16C are not enabled at compile time a portable version of the same loop runs; it is
//! exact too, and tested against candle on every machine.

use candle_core::Tensor;
use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;

use super::packed::{self, ActPairs, BLOCK, LANES, PAIRS, apply_each, msg, one, packable, rows_by_four};
use crate::error::Result;

/// Packed quant bytes of one block of one column group.
const GROUP_BLOCK_BYTES: usize = PAIRS * LANES * 2;
/// Bytes of a Q4_1 block (`d: f16, m: f16, qs: [u8; 16]`), as candle lays it out in memory
/// (`repr(C)`).
const Q4_1_BYTES: usize = 20;

/// The weights of a Q4_1 matrix `[n, k]` regrouped for [`PackedQ4_1::matmul`]: for each group
/// of [`LANES`] columns and each block, the 16 scales `d` and the 16 minimums `m` (f16, as in
/// Q4_1: a decode step streams every weight from memory, so the packed form is no larger),
/// then for each pair `p` the two quant bytes `2p`, `2p + 1` of column 0, of column 1, ... of
/// column 15 (32 bytes: one vector).
#[derive(Debug, Clone)]
pub struct PackedQ4_1 {
    n: usize,
    k: usize,
    /// `[group][block][d: LANES, m: LANES]`, f16 bits
    scales: Vec<u16>,
    /// `[group][block][pair: PAIRS][column: LANES][2]`
    quants: Vec<u8>,
}

/// One activation block, quantized by candle to Q8_1: its scale `d`, `s` (`d` times the sum of
/// its values) and its values arranged for the kernel.
#[derive(Clone, Copy)]
struct ActBlock {
    d: f32,
    s: f32,
    q: ActPairs,
}

impl PackedQ4_1 {
    /// Regroups `w` (`[n, k]`), or `None` if it is not a CPU Q4_1 matrix whose columns fill
    /// whole groups.
    pub fn new(w: &QTensor) -> Result<Option<Self>> {
        let Some((n, k, data)) = packable(w, GgmlDType::Q4_1, Q4_1_BYTES)? else { return Ok(None) };
        let blocks = k / BLOCK;
        let groups = n / LANES;
        let mut scales = vec![0u16; groups * blocks * 2 * LANES];
        let mut quants = vec![0u8; groups * blocks * GROUP_BLOCK_BYTES];
        for col in 0..n {
            let (g, c) = (col / LANES, col % LANES);
            for b in 0..blocks {
                let src = &data[(col * blocks + b) * Q4_1_BYTES..][..Q4_1_BYTES];
                let at = g * blocks + b;
                scales[at * 2 * LANES + c] = u16::from_ne_bytes([src[0], src[1]]);
                scales[at * 2 * LANES + LANES + c] = u16::from_ne_bytes([src[2], src[3]]);
                let dst = &mut quants[at * GROUP_BLOCK_BYTES..][..GROUP_BLOCK_BYTES];
                for p in 0..PAIRS {
                    dst[(p * LANES + c) * 2] = src[4 + 2 * p];
                    dst[(p * LANES + c) * 2 + 1] = src[4 + 2 * p + 1];
                }
            }
        }
        Ok(Some(Self { n, k, scales, quants }))
    }

    /// `x` (`[..., k]`, f32) times the transposed weights: `[..., n]`, each row equal bit for
    /// bit to candle's `QMatMul::forward` of that row.
    pub fn matmul(&self, x: &Tensor) -> Result<Tensor> {
        one(Self::matmul_each(&[self], x)?)
    }

    /// `x` times each of `ws` (all `[_, k]` with the same `k`): each output as [`PackedQ4_1::matmul`]
    /// gives it, from one quantization of `x` and one pass of the workers over all the columns.
    pub fn matmul_each(ws: &[&Self], x: &Tensor) -> Result<Vec<Tensor>> {
        let k = ws.first().map_or(0, |w| w.k);
        if ws.iter().any(|w| w.k != k) {
            return Err(msg("packed q4_1 matmul: matrices of different widths on one input".into()));
        }
        let blocks = k / BLOCK;
        let ns: Vec<usize> = ws.iter().map(|w| w.n).collect();
        apply_each(x, &ns, k, "packed q4_1 matmul", |m| Ok((quantize_rows(x, m, k)?, m)), |i, g, (acts, m), out| ws[i].group(g, acts, *m, blocks, out))
    }

    /// Outputs of column group `g` for every row: `out[r * LANES + c]`. Rows go four at a time
    /// (each weight vector loaded and unpacked once for four rows), the rest one at a time.
    fn group(&self, g: usize, acts: &[ActBlock], m: usize, blocks: usize, out: &mut [f32]) {
        let scales = &self.scales[g * blocks * 2 * LANES..][..blocks * 2 * LANES];
        let quants = &self.quants[g * blocks * GROUP_BLOCK_BYTES..][..blocks * GROUP_BLOCK_BYTES];
        let row = |r: usize| &acts[r * blocks..][..blocks];
        rows_by_four(m, out, |r| rows::<4>(scales, quants, std::array::from_fn(|i| row(r + i))), |r| rows::<1>(scales, quants, [row(r)])[0]);
    }
}

/// The outputs of one column group for `R` rows (`ys[i]`: row `i`'s blocks).
#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "f16c"))]
#[inline(always)]
#[allow(unsafe_code, clippy::needless_range_loop)]
fn rows<const R: usize>(scales: &[u16], quants: &[u8], ys: [&[ActBlock]; R]) -> [[f32; LANES]; R] {
    use std::arch::x86_64::*;
    let blocks = scales.len() / (2 * LANES);
    assert!(quants.len() == blocks * GROUP_BLOCK_BYTES && ys.iter().all(|y| y.len() == blocks));
    let mut sums = [[0f32; LANES]; R];
    // SAFETY: AVX2 is enabled at compile time (the cfg above); every pointer read stays inside
    // `quants` and `scales`, whose lengths the assert checks, and loads are unaligned ones.
    unsafe {
        let nibble = _mm256_set1_epi8(0x0F);
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        for b in 0..blocks {
            let q = quants.as_ptr().add(b * GROUP_BLOCK_BYTES);
            let mut lo = [_mm256_setzero_si256(); R];
            let mut hi = [_mm256_setzero_si256(); R];
            for p in 0..PAIRS {
                let x = _mm256_loadu_si256(q.add(p * 2 * LANES).cast());
                let wl = _mm256_and_si256(x, nibble);
                let wh = _mm256_and_si256(_mm256_srli_epi16::<4>(x), nibble);
                for i in 0..R {
                    let y = &ys[i][b];
                    lo[i] = _mm256_add_epi16(lo[i], _mm256_maddubs_epi16(wl, _mm256_set1_epi16(y.q.lo[p])));
                    hi[i] = _mm256_add_epi16(hi[i], _mm256_maddubs_epi16(wh, _mm256_set1_epi16(y.q.hi[p])));
                }
            }
            // f16 → f32 is exact, so these are the values candle's `f16::to_f32` gives.
            let sc = scales.as_ptr().add(b * 2 * LANES);
            let half = |at: usize| _mm256_cvtph_ps(_mm_loadu_si128(sc.add(at).cast()));
            let d = [half(0), half(8)];
            let mins = [half(LANES), half(LANES + 8)];
            for i in 0..R {
                let y = &ys[i][b];
                let (yd, ys_) = (_mm256_set1_ps(y.d), _mm256_set1_ps(y.s));
                let halves = [
                    _mm256_add_epi32(
                        _mm256_cvtepi16_epi32(_mm256_castsi256_si128(lo[i])),
                        _mm256_cvtepi16_epi32(_mm256_castsi256_si128(hi[i])),
                    ),
                    _mm256_add_epi32(
                        _mm256_cvtepi16_epi32(_mm256_extracti128_si256::<1>(lo[i])),
                        _mm256_cvtepi16_epi32(_mm256_extracti128_si256::<1>(hi[i])),
                    ),
                ];
                for h in 0..2 {
                    // candle: `sumf += sumi as f32 * d_w * d_x + m_w * s_x`, same association.
                    let sumi = _mm256_cvtepi32_ps(halves[h]);
                    let term = _mm256_add_ps(_mm256_mul_ps(_mm256_mul_ps(sumi, d[h]), yd), _mm256_mul_ps(mins[h], ys_));
                    acc[i][h] = _mm256_add_ps(acc[i][h], term);
                }
            }
        }
        for i in 0..R {
            _mm256_storeu_ps(sums[i].as_mut_ptr(), acc[i][0]);
            _mm256_storeu_ps(sums[i].as_mut_ptr().add(8), acc[i][1]);
        }
    }
    sums
}

/// The outputs of one column group for `R` rows, without SIMD intrinsics: the same sums in the
/// same float order as the AVX2 version.
#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "f16c")))]
fn rows<const R: usize>(scales: &[u16], quants: &[u8], ys: [&[ActBlock]; R]) -> [[f32; LANES]; R] {
    rows_portable(scales, quants, ys)
}

#[cfg_attr(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "f16c"), allow(dead_code))]
fn rows_portable<const R: usize>(scales: &[u16], quants: &[u8], ys: [&[ActBlock]; R]) -> [[f32; LANES]; R] {
    let mut sums = [[0f32; LANES]; R];
    for (b, (sc, q)) in scales.chunks_exact(2 * LANES).zip(quants.chunks_exact(GROUP_BLOCK_BYTES)).enumerate() {
        let (d, mins) = sc.split_at(LANES);
        let (d, mins) = (d.iter().map(|&h| f16::from_bits(h).to_f32()), mins.iter().map(|&h| f16::from_bits(h).to_f32()));
        let (d, mins): (Vec<f32>, Vec<f32>) = (d.collect(), mins.collect());
        for i in 0..R {
            let y = &ys[i][b];
            for c in 0..LANES {
                let mut sumi = 0i32;
                for p in 0..PAIRS {
                    for half in 0..2 {
                        let byte = i32::from(q[(p * LANES + c) * 2 + half]);
                        let j = 2 * p + half;
                        sumi += (byte & 0x0F) * y.q.value(j) + (byte >> 4) * y.q.value(j + 16);
                    }
                }
                sums[i][c] += sumi as f32 * d[c] * y.d + mins[c] * y.s;
            }
        }
    }
    sums
}

/// `x` as `m` rows of Q8_1 blocks, as candle's `from_float` (the one its matmul uses) makes them.
fn quantize_rows(x: &Tensor, m: usize, k: usize) -> Result<Vec<ActBlock>> {
    packed::quantize_rows(x, m, k, |d, qs, sum| ActBlock { d: d.to_f32(), s: (f16::from_f32(sum as f32) * d).to_f32(), q: ActPairs::new(qs) })
}

#[cfg(test)]
mod tests {
    use super::super::kernel_tests::{assert_extremes_are_candles, assert_kernel_is_candles, assert_product_among_others_is_candles, values};
    use super::*;
    use candle_core::{Device, Module};
    use candle_core::quantized::QMatMul;

    fn packed(q: &QTensor, x: &Tensor) -> Tensor {
        PackedQ4_1::new(q).unwrap().expect("a q4_1 matrix packs").matmul(x).unwrap()
    }

    /// A matrix multiplied among others on the same input still gives candle's bits.
    #[test]
    fn products_on_one_input_each_equal_their_own() {
        assert_product_among_others_is_candles(GgmlDType::Q4_1, |q| PackedQ4_1::new(q).unwrap().unwrap(), |ws, x| PackedQ4_1::matmul_each(ws, x).unwrap());
    }

    #[test]
    fn equals_candles_kernel_bit_for_bit() {
        assert_kernel_is_candles(GgmlDType::Q4_1, &[(16, 32, 1), (48, 64, 3), (192, 576, 16), (64, 1536, 21), (32, 96, 6)], packed);
    }

    /// The largest 16-bit partial sums: every weight at nibble 15 against activations that all
    /// quantize to +127 or all to -127.
    #[test]
    fn extreme_values_do_not_overflow() {
        let (n, k) = (32, 256);
        // Each block spans [-1, 1] with one value at the minimum, so the others are at nibble 15.
        let w: Vec<f32> = (0..n * k).map(|i| if i % BLOCK == 0 { -1.0 } else { 1.0 }).collect();
        assert_extremes_are_candles(GgmlDType::Q4_1, w, (n, k), "all at nibble 15", packed);
    }

    /// The version without intrinsics (other CPUs) gives candle's bits too.
    #[test]
    fn portable_version_equals_candle() {
        let dev = Device::Cpu;
        let (n, k, m) = (48, 576, 3);
        let w = Tensor::from_vec(values(n * k, 3), (n, k), &dev).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q4_1).unwrap();
        let packed = PackedQ4_1::new(&q).unwrap().expect("a q4_1 matrix packs");
        let reference = QMatMul::from_qtensor(q).unwrap();
        let x = Tensor::from_vec(values(m * k, 11), (m, k), &dev).unwrap();
        let acts = quantize_rows(&x, m, k).unwrap();
        let blocks = k / BLOCK;
        for r in 0..m {
            let want = reference.forward(&x.narrow(0, r, 1).unwrap()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for g in 0..n / LANES {
                let scales = &packed.scales[g * blocks * 2 * LANES..][..blocks * 2 * LANES];
                let quants = &packed.quants[g * blocks * GROUP_BLOCK_BYTES..][..blocks * GROUP_BLOCK_BYTES];
                let [got] = rows_portable::<1>(scales, quants, [&acts[r * blocks..][..blocks]]);
                for c in 0..LANES {
                    assert_eq!(got[c].to_bits(), want[g * LANES + c].to_bits(), "row {r} column {}", g * LANES + c);
                }
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
