//! A Q8_0 matmul for several activation rows that reads each weight block once per four rows and
//! returns, row by row, exactly the bits of candle's x86-64 kernel.
//!
//! The LM head of the default model is Q8_0 (49,152 × 576, 30 MB). candle 0.11.1 multiplies it
//! row by row (`k_quants::matmul` with `vec_dot_q8_0_q8_0` from its `avx` module), so a batched
//! decode step of n sessions streams the whole head from memory n times. This kernel does, per
//! column and row, the very computation of candle's: for each block, the exact integer sums of
//! four products in eight lanes (`maddubs` on the sign-adjusted bytes, then `madd`), converted
//! to f32 and accumulated with one fused multiply-add by `d_w · d_x` per block in block order,
//! then the same horizontal sum. It only interleaves up to four rows over one load of the weight
//! block. It exists only where candle takes that AVX2 path (x86-64 with AVX2 and FMA); elsewhere
//! callers keep candle's kernel.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use super::packed::Disjoint;
use crate::error::Result;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Values per Q8_0 block; its bytes (`d: f16, qs: [i8; 32]`, candle's `repr(C)` layout).
const BLOCK: usize = 32;
const BLOCK_BYTES: usize = 34;

/// `x` (`[m, k]`, f32) times the transposed Q8_0 weights `w` (`[n, k]`): `[m, n]`, each row equal
/// bit for bit to candle's `QMatMul::forward` of that row alone. `None` where this kernel does not
/// apply (another type, not on the CPU, or a build without AVX2 and FMA) or where candle may take
/// a repacked kernel with other bits instead (`k` a multiple of 256, on a CPU with VNNI).
pub fn matmul_rows(w: &QTensor, x: &Tensor) -> Result<Option<Tensor>> {
    let Ok((n, k)) = w.shape().dims2() else { return Ok(None) };
    let Ok((m, xk)) = x.dims2() else { return Ok(None) };
    if !cfg!(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))
        || w.dtype() != GgmlDType::Q8_0
        || !w.device().is_cpu()
        || k % BLOCK != 0
        || k % 256 == 0
        || xk != k
    {
        return Ok(None);
    }
    let weights = w.data()?;
    let blocks = k / BLOCK;
    if weights.len() != n * blocks * BLOCK_BYTES {
        return Ok(None);
    }
    // candle's matmul quantizes each row to Q8_0 with this same `from_float`.
    let acts = QTensor::quantize(x, GgmlDType::Q8_0)?;
    let acts = acts.data()?;
    let row_bytes = blocks * BLOCK_BYTES;
    let mut dst = vec![0f32; m * n];
    let out = Disjoint::new(&mut dst);
    let filled = AtomicUsize::new(0);
    candle_core::utils::barrier_pool().execute_chunked(n, |cols| {
        // Each row's outputs for this range of columns, written in place.
        // SAFETY: the ranges `execute_chunked` hands out do not overlap, so neither do these
        // slices of different rows or of different ranges.
        #[allow(unsafe_code)]
        let mut rows: Vec<&mut [f32]> = (0..m).map(|r| unsafe { out.slice(r * n + cols.start, cols.len()) }).collect();
        for (i, col) in cols.clone().enumerate() {
            let w = &weights[col * row_bytes..][..row_bytes];
            let row = |r: usize| &acts[r * row_bytes..][..row_bytes];
            let mut r = 0;
            while r + 4 <= m {
                let sums = column::<4>(w, std::array::from_fn(|j| row(r + j)));
                for (j, s) in sums.into_iter().enumerate() {
                    rows[r + j][i] = s;
                }
                r += 4;
            }
            for (r, out) in rows.iter_mut().enumerate().skip(r) {
                out[i] = column::<1>(w, [row(r)])[0];
            }
        }
        filled.fetch_add(cols.len(), Ordering::Relaxed);
    });
    let filled = filled.into_inner();
    if filled != n {
        return Err(candle_core::Error::Msg(format!("q8_0 matmul: {filled} of {n} columns computed")).into());
    }
    Ok(Some(Tensor::from_vec(dst, (m, n), &Device::Cpu)?))
}

/// One weight column (`w`: its blocks' bytes) against `R` activation rows, as candle's
/// `vec_dot_q8_0_q8_0` computes each.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
#[inline(always)]
#[allow(unsafe_code, clippy::needless_range_loop)]
fn column<const R: usize>(w: &[u8], ys: [&[u8]; R]) -> [f32; R] {
    use std::arch::x86_64::*;
    let blocks = w.len() / BLOCK_BYTES;
    assert!(w.len() == blocks * BLOCK_BYTES && ys.iter().all(|y| y.len() == w.len()));
    let scale = |b: &[u8], at: usize| half::f16::from_ne_bytes([b[at], b[at + 1]]).to_f32();
    let mut sums = [0f32; R];
    // SAFETY: AVX2 and FMA are enabled at compile time (the cfg above); each 32-byte load reads
    // bytes 2..34 of a block that the assert keeps inside its slice.
    unsafe {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); R];
        for b in 0..blocks {
            let at = b * BLOCK_BYTES;
            let dw = scale(w, at);
            let bx = _mm256_loadu_si256(w.as_ptr().add(at + 2).cast());
            let ax = _mm256_sign_epi8(bx, bx);
            for r in 0..R {
                let d = _mm256_set1_ps(dw * scale(ys[r], at));
                let by = _mm256_loadu_si256(ys[r].as_ptr().add(at + 2).cast());
                let sy = _mm256_sign_epi8(by, bx);
                let q = _mm256_cvtepi32_ps(_mm256_madd_epi16(ones, _mm256_maddubs_epi16(ax, sy)));
                acc[r] = _mm256_fmadd_ps(d, q, acc[r]);
            }
        }
        for r in 0..R {
            // candle's `hsum_float_8`, in its order.
            let x = acc[r];
            let s = _mm_add_ps(_mm256_extractf128_ps::<1>(x), _mm256_castps256_ps128(x));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_movehdup_ps(s));
            sums[r] = _mm_cvtss_f32(s);
        }
    }
    sums
}

/// Never called: [`matmul_rows`] returns `None` first on builds without AVX2 and FMA.
#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
fn column<const R: usize>(_w: &[u8], _ys: [&[u8]; R]) -> [f32; R] {
    [f32::NAN; R]
}

#[cfg(test)]
mod tests {
    use super::super::kernel_tests::{assert_row_is_candles, values};
    use super::*;
    use candle_core::quantized::QMatMul;

    #[test]
    fn equals_candles_kernel_row_by_row() {
        let dev = Device::Cpu;
        for (n, k, m) in [(40, 576, 1), (48, 896, 1), (33, 576, 6), (64, 96, 9)] {
            let w = QTensor::quantize(&Tensor::from_vec(values(n * k, n as u64), (n, k), &dev).unwrap(), GgmlDType::Q8_0).unwrap();
            let x = Tensor::from_vec(values(m * k, 5), (m, k), &dev).unwrap();
            let Some(got) = matmul_rows(&w, &x).unwrap() else {
                println!("SKIPPED: this build has no AVX2+FMA, where the kernel does not exist");
                return;
            };
            let reference = QMatMul::from_qtensor(w).unwrap();
            for r in 0..m {
                assert_row_is_candles(&reference, &x, &got, r, &format!("n={n} k={k} m={m}"));
            }
        }
    }

    #[test]
    fn widths_candle_may_repack_are_left_to_candle() {
        // With VNNI candle takes a repacked Q8_0 kernel of other bits where k is a multiple of 256.
        let dev = Device::Cpu;
        let w = QTensor::quantize(&Tensor::from_vec(values(16 * 512, 1), (16, 512), &dev).unwrap(), GgmlDType::Q8_0).unwrap();
        let x = Tensor::from_vec(values(512, 2), (1, 512), &dev).unwrap();
        assert!(matmul_rows(&w, &x).unwrap().is_none());
    }

    #[test]
    fn other_types_are_left_to_candle() {
        let dev = Device::Cpu;
        let w = QTensor::quantize(&Tensor::from_vec(values(32 * 64, 1), (32, 64), &dev).unwrap(), GgmlDType::Q4_1).unwrap();
        let x = Tensor::from_vec(values(2 * 64, 2), (2, 64), &dev).unwrap();
        assert!(matmul_rows(&w, &x).unwrap().is_none());
    }
}
