//! A Q5_0 matmul that returns, row by row, exactly the bits of candle's CPU kernel, several
//! times faster than it: most projections of Qwen2.5-Coder-0.5B's Q4_K_M file are Q5_0.
//!
//! candle 0.11.1 computes a Q5_0 product like a Q4_1 one (see [`super::q4_1`]): `k_quants::matmul`
//! quantizes each activation row to Q8_0 blocks and, per weight column, adds up per block
//! `sumi · d_w · d_x` with the scalar `vec_dot_unopt`. `sumi` is the exact integer dot product
//! of the block's 5-bit weights `q − 16` (`q` in 0..32: a nibble of `qs` and a bit of `qh`) with
//! its 8-bit activations. This kernel keeps that arithmetic and the [`super::q4_1`] layout: 16
//! columns side by side, two quant bytes of a column adjacent, and for each pair of bytes the
//! fifth bits of its 32 values as two 32-bit masks, one bit per byte of the vector. So a packed
//! block is as large as a Q5_0 one (22 bytes a column). One `maddubs` multiplies 32 unsigned `q`
//! by their activations; `sumi` is then `Σ q·a − 16 · Σ a`, exact. The float part is candle's
//! expression in candle's block order, lane by lane, with separate multiplies and adds.
//!
//! Where AVX2 and F16C are not enabled at compile time a portable version of the same loop runs;
//! it is exact too, and tested against candle on every machine.

use candle_core::Tensor;
use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;

use super::packed::{self, ActPairs, BLOCK, LANES, PAIRS, apply_each, msg, one, packable, rows_by_four};
use crate::error::Result;

/// Packed quant bytes of one block of one column group.
const GROUP_BLOCK_BYTES: usize = PAIRS * LANES * 2;
/// Fifth-bit masks of one block of one column group: per pair, one for the low nibbles and one
/// for the high nibbles.
const GROUP_BLOCK_MASKS: usize = PAIRS * 2;
/// Bytes of a Q5_0 block (`d: f16, qh: [u8; 4], qs: [u8; 16]`), as candle lays it out in memory
/// (`repr(C)`).
const Q5_0_BYTES: usize = 22;

/// The weights of a Q5_0 matrix `[n, k]` regrouped for [`PackedQ5_0::matmul`]: for each group
/// of [`LANES`] columns and each block, the 16 scales `d` (f16 bits), the quant bytes of every
/// pair `p` (bytes `2p`, `2p + 1` of column 0, of column 1, ... of column 15: 32 bytes, one
/// vector), and per pair two masks whose bit `2c + t` is the fifth bit of value `2p + t` (low
/// nibbles) or `2p + t + 16` (high nibbles) of column `c`.
#[derive(Debug, Clone)]
pub struct PackedQ5_0 {
    n: usize,
    k: usize,
    /// `[group][block][column: LANES]`
    scales: Vec<u16>,
    /// `[group][block][pair: PAIRS][column: LANES][2]`
    quants: Vec<u8>,
    /// `[group][block][pair: PAIRS][low, high]`
    masks: Vec<u32>,
}

/// One activation block, quantized by candle to Q8_0: its scale `d`, its values arranged for
/// the kernel, and their sum.
#[derive(Clone, Copy)]
struct ActBlock {
    d: f32,
    q: ActPairs,
    sum: i32,
}

impl PackedQ5_0 {
    /// Regroups `w` (`[n, k]`), or `None` if it is not a CPU Q5_0 matrix whose columns fill
    /// whole groups.
    pub fn new(w: &QTensor) -> Result<Option<Self>> {
        let Some((n, k, data)) = packable(w, GgmlDType::Q5_0, Q5_0_BYTES)? else { return Ok(None) };
        let blocks = k / BLOCK;
        let groups = n / LANES;
        let mut scales = vec![0u16; groups * blocks * LANES];
        let mut quants = vec![0u8; groups * blocks * GROUP_BLOCK_BYTES];
        let mut masks = vec![0u32; groups * blocks * GROUP_BLOCK_MASKS];
        for col in 0..n {
            let (g, c) = (col / LANES, col % LANES);
            for b in 0..blocks {
                let src = &data[(col * blocks + b) * Q5_0_BYTES..][..Q5_0_BYTES];
                let at = g * blocks + b;
                scales[at * LANES + c] = u16::from_ne_bytes([src[0], src[1]]);
                let qh = u32::from_le_bytes([src[2], src[3], src[4], src[5]]);
                let qs = &src[6..];
                let dst = &mut quants[at * GROUP_BLOCK_BYTES..][..GROUP_BLOCK_BYTES];
                let mask = &mut masks[at * GROUP_BLOCK_MASKS..][..GROUP_BLOCK_MASKS];
                for p in 0..PAIRS {
                    for t in 0..2 {
                        dst[(p * LANES + c) * 2 + t] = qs[2 * p + t];
                        let bit = |j: usize| (qh >> j) & 1;
                        mask[2 * p] |= bit(2 * p + t) << (2 * c + t);
                        mask[2 * p + 1] |= bit(2 * p + t + 16) << (2 * c + t);
                    }
                }
            }
        }
        Ok(Some(Self { n, k, scales, quants, masks }))
    }

    /// `x` (`[..., k]`, f32) times the transposed weights: `[..., n]`, each row equal bit for
    /// bit to candle's `QMatMul::forward` of that row.
    pub fn matmul(&self, x: &Tensor) -> Result<Tensor> {
        one(Self::matmul_each(&[self], x)?)
    }

    /// `x` times each of `ws` (all `[_, k]` with the same `k`): each output as [`PackedQ5_0::matmul`]
    /// gives it, from one quantization of `x` and one pass of the workers over all the columns.
    pub fn matmul_each(ws: &[&Self], x: &Tensor) -> Result<Vec<Tensor>> {
        let k = ws.first().map_or(0, |w| w.k);
        if ws.iter().any(|w| w.k != k) {
            return Err(msg("packed q5_0 matmul: matrices of different widths on one input".into()));
        }
        let ns: Vec<usize> = ws.iter().map(|w| w.n).collect();
        apply_each(x, &ns, k, "packed q5_0 matmul", |m| Ok((quantize_rows(x, m, k)?, m)), |i, g, (acts, m), out| {
            let w = ws[i].group(g);
            let row = |r: usize| &acts[r * w.blocks..][..w.blocks];
            rows_by_four(*m, out, |r| rows::<4>(&w, std::array::from_fn(|i| row(r + i))), |r| rows::<1>(&w, [row(r)])[0]);
        })
    }

    /// The packed weights of column group `g`.
    fn group(&self, g: usize) -> Group<'_> {
        let blocks = self.k / BLOCK;
        Group {
            blocks,
            scales: &self.scales[g * blocks * LANES..][..blocks * LANES],
            quants: &self.quants[g * blocks * GROUP_BLOCK_BYTES..][..blocks * GROUP_BLOCK_BYTES],
            masks: &self.masks[g * blocks * GROUP_BLOCK_MASKS..][..blocks * GROUP_BLOCK_MASKS],
        }
    }
}

/// One column group's packed weights, every block.
struct Group<'a> {
    blocks: usize,
    scales: &'a [u16],
    quants: &'a [u8],
    masks: &'a [u32],
}

/// The outputs of one column group for `R` rows (`ys[i]`: row `i`'s blocks).
#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "f16c"))]
#[inline(always)]
#[allow(unsafe_code, clippy::needless_range_loop)]
fn rows<const R: usize>(w: &Group<'_>, ys: [&[ActBlock]; R]) -> [[f32; LANES]; R] {
    use std::arch::x86_64::*;
    let blocks = w.blocks;
    assert!(
        w.scales.len() == blocks * LANES
            && w.quants.len() == blocks * GROUP_BLOCK_BYTES
            && w.masks.len() == blocks * GROUP_BLOCK_MASKS
            && ys.iter().all(|y| y.len() == blocks)
    );
    let mut sums = [[0f32; LANES]; R];
    // SAFETY: AVX2 is enabled at compile time (the cfg above); every pointer read stays inside
    // `quants` and `scales`, whose lengths the assert checks, and loads are unaligned ones.
    unsafe {
        let nibble = _mm256_set1_epi8(0x0F);
        let fifth = _mm256_set1_epi8(0x10);
        // Byte `i` of a mask's expansion takes mask byte `i / 8` and tests bit `i % 8`.
        let spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
        let bits = _mm256_set1_epi64x(0x8040_2010_0804_0201_u64 as i64);
        let expand = |mask: u32| {
            let m = _mm256_and_si256(_mm256_shuffle_epi8(_mm256_set1_epi32(mask as i32), spread), bits);
            _mm256_and_si256(_mm256_cmpeq_epi8(m, bits), fifth)
        };
        let widen = |v: __m256i| [_mm256_cvtepi16_epi32(_mm256_castsi256_si128(v)), _mm256_cvtepi16_epi32(_mm256_extracti128_si256::<1>(v))];
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        for b in 0..blocks {
            let q = w.quants.as_ptr().add(b * GROUP_BLOCK_BYTES);
            let masks = &w.masks[b * GROUP_BLOCK_MASKS..][..GROUP_BLOCK_MASKS];
            // Σ q·a per column in 32-bit lanes. Four pairs of one nibble add up to at most
            // 4 · 2 · 31 · 128 = 31744 in 16 bits, so each run of four is widened.
            let mut sumi = [[_mm256_setzero_si256(); 2]; R];
            for run in 0..2 {
                let mut lo = [_mm256_setzero_si256(); R];
                let mut hi = [_mm256_setzero_si256(); R];
                for p in run * 4..run * 4 + 4 {
                    let x = _mm256_loadu_si256(q.add(p * 2 * LANES).cast());
                    let wl = _mm256_or_si256(_mm256_and_si256(x, nibble), expand(masks[2 * p]));
                    let wh = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(x), nibble), expand(masks[2 * p + 1]));
                    for i in 0..R {
                        let y = &ys[i][b];
                        lo[i] = _mm256_add_epi16(lo[i], _mm256_maddubs_epi16(wl, _mm256_set1_epi16(y.q.lo[p])));
                        hi[i] = _mm256_add_epi16(hi[i], _mm256_maddubs_epi16(wh, _mm256_set1_epi16(y.q.hi[p])));
                    }
                }
                for i in 0..R {
                    let (l, h) = (widen(lo[i]), widen(hi[i]));
                    for half in 0..2 {
                        sumi[i][half] = _mm256_add_epi32(sumi[i][half], _mm256_add_epi32(l[half], h[half]));
                    }
                }
            }
            // f16 → f32 is exact, so these are the values candle's `f16::to_f32` gives.
            let sc = w.scales.as_ptr().add(b * LANES);
            let d = [_mm256_cvtph_ps(_mm_loadu_si128(sc.cast())), _mm256_cvtph_ps(_mm_loadu_si128(sc.add(8).cast()))];
            for i in 0..R {
                let y = &ys[i][b];
                let (yd, offset) = (_mm256_set1_ps(y.d), _mm256_set1_epi32(16 * y.sum));
                for half in 0..2 {
                    // candle: `sumf += sumi as f32 * d_w * d_x`, same association.
                    let s = _mm256_cvtepi32_ps(_mm256_sub_epi32(sumi[i][half], offset));
                    acc[i][half] = _mm256_add_ps(acc[i][half], _mm256_mul_ps(_mm256_mul_ps(s, d[half]), yd));
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
fn rows<const R: usize>(w: &Group<'_>, ys: [&[ActBlock]; R]) -> [[f32; LANES]; R] {
    rows_portable(w, ys)
}

#[cfg_attr(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "f16c"), allow(dead_code))]
#[allow(clippy::needless_range_loop)]
fn rows_portable<const R: usize>(w: &Group<'_>, ys: [&[ActBlock]; R]) -> [[f32; LANES]; R] {
    let mut sums = [[0f32; LANES]; R];
    for b in 0..w.blocks {
        let q = &w.quants[b * GROUP_BLOCK_BYTES..][..GROUP_BLOCK_BYTES];
        let masks = &w.masks[b * GROUP_BLOCK_MASKS..][..GROUP_BLOCK_MASKS];
        for i in 0..R {
            let y = &ys[i][b];
            for c in 0..LANES {
                let mut sumi = 0i32;
                for p in 0..PAIRS {
                    for t in 0..2 {
                        let byte = i32::from(q[(p * LANES + c) * 2 + t]);
                        let fifth = |mask: u32| (((mask >> (2 * c + t)) & 1) << 4) as i32;
                        let (low, high) = ((byte & 0x0F) | fifth(masks[2 * p]), (byte >> 4) | fifth(masks[2 * p + 1]));
                        sumi += (low - 16) * y.q.value(2 * p + t) + (high - 16) * y.q.value(2 * p + t + 16);
                    }
                }
                sums[i][c] += sumi as f32 * f16::from_bits(w.scales[b * LANES + c]).to_f32() * y.d;
            }
        }
    }
    sums
}

/// `x` as `m` rows of Q8_0 blocks, as candle's `from_float` (the one its matmul uses) makes them.
fn quantize_rows(x: &Tensor, m: usize, k: usize) -> Result<Vec<ActBlock>> {
    packed::quantize_rows(x, m, k, |d, qs, sum| ActBlock { d: d.to_f32(), q: ActPairs::new(qs), sum })
}

#[cfg(test)]
mod tests {
    use super::super::kernel_tests::{assert_extremes_are_candles, assert_kernel_is_candles, assert_product_among_others_is_candles, values};
    use super::*;
    use candle_core::quantized::QMatMul;
    use candle_core::{Device, Module};

    fn packed(q: &QTensor, x: &Tensor) -> Tensor {
        PackedQ5_0::new(q).unwrap().expect("a q5_0 matrix packs").matmul(x).unwrap()
    }

    /// A matrix multiplied among others on the same input still gives candle's bits.
    #[test]
    fn products_on_one_input_each_equal_their_own() {
        assert_product_among_others_is_candles(GgmlDType::Q5_0, |q| PackedQ5_0::new(q).unwrap().unwrap(), |ws, x| PackedQ5_0::matmul_each(ws, x).unwrap());
    }

    #[test]
    fn equals_candles_kernel_bit_for_bit() {
        assert_kernel_is_candles(GgmlDType::Q5_0, &[(16, 32, 1), (48, 64, 3), (128, 896, 16), (64, 1536, 21), (32, 96, 6)], packed);
    }

    /// The largest 16-bit partial sums: every weight at 15 (q = 31) against activations that all
    /// quantize to +127, and at −16 (q = 0) against −127, and values whose fifth bit alternates.
    #[test]
    fn extreme_values_do_not_overflow() {
        let (n, k) = (32, 256);
        type Weight = fn(usize) -> f32;
        let cases: [(&str, Weight); 3] = [
            // A block's scale is its largest magnitude over −16, so −16 maps to q = 0 ...
            ("all at q = 31", |i| if i % BLOCK == 0 { -16.0 } else { 15.0 }),
            // ... and everything else of the same sign to q = 0 as well.
            ("all at q = 0", |_| -16.0),
            ("fifth bits alternating", |i| if i % 2 == 0 { -16.0 } else { 15.0 }),
        ];
        for (what, weight) in cases {
            assert_extremes_are_candles(GgmlDType::Q5_0, (0..n * k).map(weight).collect(), (n, k), what, packed);
        }
    }

    /// The version without intrinsics (other CPUs) gives candle's bits too.
    #[test]
    fn portable_version_equals_candle() {
        let dev = Device::Cpu;
        let (n, k, m) = (48, 896, 3);
        let w = Tensor::from_vec(values(n * k, 3), (n, k), &dev).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q5_0).unwrap();
        let packed = PackedQ5_0::new(&q).unwrap().expect("a q5_0 matrix packs");
        let reference = QMatMul::from_qtensor(q).unwrap();
        let x = Tensor::from_vec(values(m * k, 11), (m, k), &dev).unwrap();
        let acts = quantize_rows(&x, m, k).unwrap();
        let blocks = k / BLOCK;
        for r in 0..m {
            let want = reference.forward(&x.narrow(0, r, 1).unwrap()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for g in 0..n / LANES {
                let [got] = rows_portable::<1>(&packed.group(g), [&acts[r * blocks..][..blocks]]);
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
        assert!(PackedQ5_0::new(&QTensor::quantize(&w, GgmlDType::Q4_1).unwrap()).unwrap().is_none());
        let w = Tensor::from_vec(values(8 * 64, 1), (8, 64), &dev).unwrap();
        assert!(PackedQ5_0::new(&QTensor::quantize(&w, GgmlDType::Q5_0).unwrap()).unwrap().is_none(), "8 columns fill no group");
    }
}
