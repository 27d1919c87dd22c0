//! Attention of decode rows: each session's one new position over its own KV cache, the query
//! heads of all sessions shared out over candle's matmul workers.
//!
//! Every (session, query head) is one unit of work, computed start to end by one thread with the
//! same code whichever thread takes it, so the result does not depend on the thread count, on how
//! the units fall to threads, or on which other sessions share the step: a session's bits are the
//! same alone and batched. Per unit, in f32:
//! - each score is the dot product of the query row and a cached key row: eight lanes, each a
//!   chain of fused multiply-adds over its elements in order, added up in a fixed order
//!   ([`portable::dot`]), then times `1/√head_dim`;
//! - the softmax subtracts the largest score, exponentiates, and divides by the sum taken in
//!   position order;
//! - each output element is a chain of fused multiply-adds of the probabilities and the value
//!   rows, in position order.
//!
//! On x86-64 with AVX2, FMA and F16C (the release build's target) the [`simd`] kernels compute
//! exactly this with 256-bit vectors; elsewhere [`portable`] does, and a unit test holds the two
//! to the same bits.
//!
//! This is not candle's order (its batched matmul runs a `gemm` per head, whose blocking depends on
//! the shapes), so the logits are not bit for bit candle-transformers' llama; the reference test
//! checks that path with [`super::LoadOptions::reference_attention`] and bounds this one
//! (tests/tests/reference.rs, docs/performance.md). A cache held in f16 is read through the same
//! code, each row widened to f32 (exactly) as it is read: on the same rounded values the two
//! caches give the same bits.

use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout, Storage};

use super::kv_cache::LayerKv;
use crate::error::Result;

/// Below this many multiply-adds in a step's attention (heads × positions × head_dim × 2, summed
/// over sessions) the units run on the calling thread: handing them to the other core costs more
/// than it saves.
const PARALLEL_MIN_MACS: usize = 8 * 1024;

/// Keys or values of one cache: the storage and where row `j` of kv head `g` starts
/// (`start + g · head_stride + j · row_stride`, its `head_dim` values adjacent).
#[derive(Clone, Copy)]
struct Rows<'a> {
    data: Data<'a>,
    start: usize,
    head_stride: usize,
    row_stride: usize,
}

#[derive(Clone, Copy)]
enum Data<'a> {
    F32(&'a [f32]),
    F16(&'a [half::f16]),
}

impl Rows<'_> {
    /// Where row `j` of kv head `g` starts.
    fn at(&self, g: usize, j: usize) -> usize {
        self.start + g * self.head_stride + j * self.row_stride
    }
}

/// One session's decode row: its query heads (`heads · head_dim`, roped) and its cache.
pub(super) struct DecodeRow<'a> {
    pub q: &'a [f32],
    pub kv: &'a LayerKv,
}

/// The attention of each row of `rows` (`heads` query heads on `heads / n_rep` kv heads of
/// `dim` values): `[rows, heads · dim]`, row-major, the input of the output projection.
pub(super) fn attend_rows(rows: &[DecodeRow], heads: usize, n_rep: usize, dim: usize) -> Result<Vec<f32>> {
    let kv_heads = heads / n_rep.max(1);
    let guards = rows
        .iter()
        .map(|r| Ok((r.kv.k.storage_and_layout(), r.kv.v.storage_and_layout(), r.kv.k.dtype(), r.kv.v.dtype())))
        .collect::<Result<Vec<_>>>()?;
    let mut views = Vec::with_capacity(rows.len());
    for (row, ((ks, kl), (vs, vl), kt, vt)) in rows.iter().zip(&guards) {
        let t = row.kv.positions();
        if n_rep == 0 || heads != kv_heads * n_rep || row.q.len() != heads * dim || row.kv.k.dims4()? != (1, kv_heads, t, dim) || row.kv.v.dims4()? != (1, kv_heads, t, dim) || kt != vt {
            return Err(msg(format!("attention: a query of {} values ({heads} heads of {dim}) against a cache {:?}", row.q.len(), row.kv.k.dims())));
        }
        views.push((rows_of(ks, kl, kv_heads, t, dim)?, rows_of(vs, vl, kv_heads, t, dim)?, t));
    }
    let scale = (1.0 / (dim as f64).sqrt()) as f32;
    let units = rows.len() * heads;
    // One unit: query head `h` of session `s`, into `out` (`dim` values).
    let unit = |u: usize, scores: &mut Vec<f32>, out: &mut [f32]| {
        let (s, h) = (u / heads, u % heads);
        let (k, v, t) = &views[s];
        head(&rows[s].q[h * dim..][..dim], (k, v), h / n_rep, *t, scale, scores, out);
    };
    let macs: usize = views.iter().map(|(_, _, t)| t * heads * dim * 2).sum();
    let mut dst = vec![0f32; units * dim];
    if macs < PARALLEL_MIN_MACS {
        let mut scores = Vec::new();
        for (u, out) in dst.chunks_exact_mut(dim).enumerate() {
            unit(u, &mut scores, out);
        }
        return Ok(dst);
    }
    let parts: Mutex<Vec<(usize, Vec<f32>)>> = Mutex::new(Vec::new());
    candle_core::utils::barrier_pool().execute_chunked(units, |range| {
        let mut scores = Vec::new();
        let mut out = vec![0f32; range.len() * dim];
        for (u, o) in range.clone().zip(out.chunks_exact_mut(dim)) {
            unit(u, &mut scores, o);
        }
        if let Ok(mut p) = parts.lock() {
            p.push((range.start, out));
        }
    });
    let parts = parts.into_inner().map_err(|_| msg("attention: a worker panicked".into()))?;
    let mut filled = 0;
    for (start, out) in parts {
        dst[start * dim..][..out.len()].copy_from_slice(&out);
        filled += out.len() / dim;
    }
    if filled != units {
        return Err(msg(format!("attention: {filled} of {units} heads computed")));
    }
    Ok(dst)
}

/// Where the rows of a `[1, kv_heads, t, dim]` cache view lie in its storage, checked to lie
/// inside it.
fn rows_of<'a>(storage: &'a Storage, layout: &Layout, kv_heads: usize, t: usize, dim: usize) -> Result<Rows<'a>> {
    let Storage::Cpu(cpu) = storage else {
        return Err(msg("attention runs on the cpu only".into()));
    };
    let (data, len) = match cpu {
        CpuStorage::F32(d) => (Data::F32(d), d.len()),
        CpuStorage::F16(d) => (Data::F16(d), d.len()),
        other => return Err(msg(format!("attention: a cache of {:?}", other.dtype()))),
    };
    let s = layout.stride();
    let last = layout.start_offset() + s[1] * kv_heads.saturating_sub(1) + s[2] * t.saturating_sub(1) + dim;
    if s[3] != 1 || last > len {
        return Err(msg(format!("attention: a cache view {:?} with strides {s:?}", layout.dims())));
    }
    Ok(Rows { data, start: layout.start_offset(), head_stride: s[1], row_stride: s[2] })
}

/// One query head `q` over the `t` cached rows of kv head `g`: scores, softmax, weighted sum of
/// the values into `out`. `scores` is scratch.
fn head(q: &[f32], (k, v): (&Rows, &Rows), g: usize, t: usize, scale: f32, scores: &mut Vec<f32>, out: &mut [f32]) {
    match (k.data, v.data) {
        (Data::F32(kd), Data::F32(vd)) => head_on(q, (kd, k), (vd, v), g, t, scale, scores, out),
        (Data::F16(kd), Data::F16(vd)) => head_on(q, (kd, k), (vd, v), g, t, scale, scores, out),
        // `attend_rows` refuses keys and values of different types before any unit runs.
        _ => out.fill(f32::NAN),
    }
}

#[allow(clippy::too_many_arguments)]
fn head_on<E: Elem>(q: &[f32], (kd, k): (&[E], &Rows), (vd, v): (&[E], &Rows), g: usize, t: usize, scale: f32, scores: &mut Vec<f32>, out: &mut [f32]) {
    let dim = q.len();
    let key = |j: usize| &kd[k.at(g, j)..][..dim];
    scores.clear();
    scores.extend(dots(q, t, key).into_iter().map(|s| s * scale));
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for x in scores.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    for x in scores.iter_mut() {
        *x /= sum;
    }
    weighted_sum(scores, |j| &vd[v.at(g, j)..][..dim], out);
}

/// `q · key(j)` for `j` in `0..t`, each as [`portable::dot`] computes it.
fn dots<'a, E: Elem>(q: &[f32], t: usize, key: impl Fn(usize) -> &'a [E]) -> Vec<f32> {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c"))]
    if q.len().is_multiple_of(8) {
        return simd::dots(q, t, key);
    }
    (0..t).map(|j| portable::dot(q, key(j))).collect()
}

/// `out = Σ_j p[j] · row(j)`, as [`portable::weighted_sum`] computes it.
fn weighted_sum<'a, E: Elem>(p: &[f32], row: impl Fn(usize) -> &'a [E], out: &mut [f32]) {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c"))]
    match out.len() {
        64 => return simd::weighted_sum::<E, 8>(p, row, out),
        128 => return simd::weighted_sum::<E, 16>(p, row, out),
        _ => {}
    }
    portable::weighted_sum(p, row, out)
}

/// What a cache holds, read as f32 (exactly: f16 widens without rounding).
trait Elem: Copy + Sync + 'static {
    fn f32(self) -> f32;
    /// Eight values from `p` as a vector.
    ///
    /// # Safety
    /// `p` must be valid for reading eight values.
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c"))]
    #[allow(unsafe_code)]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
}

impl Elem for f32 {
    fn f32(self) -> f32 {
        self
    }

    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c"))]
    #[allow(unsafe_code)]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256 {
        // SAFETY: the caller guarantees eight readable values at `p`; loadu has no alignment need.
        unsafe { std::arch::x86_64::_mm256_loadu_ps(p) }
    }
}

impl Elem for half::f16 {
    fn f32(self) -> f32 {
        self.to_f32()
    }

    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c"))]
    #[allow(unsafe_code)]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm256_cvtph_ps};
        // SAFETY: the caller guarantees eight readable values (16 bytes) at `p`; loadu has no
        // alignment need.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast::<__m128i>())) }
    }
}

/// The definition of the arithmetic, in plain Rust.
mod portable {
    use super::Elem;

    /// Eight lanes: lane `i` is the fused multiply-add chain over elements `i, i + 8, …` in order;
    /// then `((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7))`; then the elements past the last
    /// whole eight, each fused onto the sum in order.
    pub fn dot<E: Elem>(q: &[f32], k: &[E]) -> f32 {
        let whole = q.len() / 8 * 8;
        let mut l = [0f32; 8];
        for c in (0..whole).step_by(8) {
            for i in 0..8 {
                l[i] = q[c + i].mul_add(k[c + i].f32(), l[i]);
            }
        }
        let t = [l[0] + l[4], l[1] + l[5], l[2] + l[6], l[3] + l[7]];
        let mut sum = (t[0] + t[2]) + (t[1] + t[3]);
        for i in whole..q.len() {
            sum = q[i].mul_add(k[i].f32(), sum);
        }
        sum
    }

    /// Each `out[d]` the fused multiply-add chain of `p[j] · row(j)[d]` over `j` in order, from 0.
    pub fn weighted_sum<'a, E: Elem>(p: &[f32], row: impl Fn(usize) -> &'a [E], out: &mut [f32]) {
        out.fill(0.0);
        for (j, w) in p.iter().enumerate() {
            for (o, x) in out.iter_mut().zip(row(j)) {
                *o = w.mul_add(x.f32(), *o);
            }
        }
    }
}

/// [`portable`]'s arithmetic on 256-bit vectors: the same operations in the same order, four keys
/// at a time for the scores and the whole output row in registers for the weighted sum.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c"))]
#[allow(unsafe_code)]
mod simd {
    use std::arch::x86_64::*;

    use super::Elem;

    /// `portable::dot(q, key(j))` for `j` in `0..t`; `q.len()` a multiple of 8.
    pub fn dots<'a, E: Elem>(q: &[f32], t: usize, key: impl Fn(usize) -> &'a [E]) -> Vec<f32> {
        let n = q.len();
        let mut out = Vec::with_capacity(t);
        let mut j = 0;
        while j < t {
            let rows: [&[E]; 4] = std::array::from_fn(|i| key((j + i).min(t - 1)));
            if rows.iter().any(|r| r.len() < n) {
                break;
            }
            let mut acc = [unsafe { _mm256_setzero_ps() }; 4];
            for c in (0..n).step_by(8) {
                // SAFETY: `c + 8 <= n` and every row and `q` hold at least `n` values (checked
                // above); AVX2, FMA and F16C are enabled for the whole build (this module's cfg).
                unsafe {
                    let x = _mm256_loadu_ps(q.as_ptr().add(c));
                    for (a, r) in acc.iter_mut().zip(&rows) {
                        *a = _mm256_fmadd_ps(x, E::load8(r.as_ptr().add(c)), *a);
                    }
                }
            }
            for a in acc.iter().take(t - j) {
                out.push(reduce(*a));
            }
            j += 4;
        }
        // Only if a row was short, which `attend_rows` rules out: the plain definition, which
        // panics on it like any slice.
        out.extend((out.len()..t).map(|j| super::portable::dot(q, key(j))));
        out
    }

    /// `((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7))`.
    fn reduce(l: __m256) -> f32 {
        // SAFETY: plain register arithmetic; the features are enabled for the build.
        unsafe {
            let t = _mm_add_ps(_mm256_castps256_ps128(l), _mm256_extractf128_ps::<1>(l));
            let u = _mm_add_ps(t, _mm_movehl_ps(t, t));
            _mm_cvtss_f32(_mm_add_ss(u, _mm_shuffle_ps::<1>(u, u)))
        }
    }

    /// `portable::weighted_sum` for `out.len() == 8 · C`, the output in `C` vectors throughout.
    pub fn weighted_sum<'a, E: Elem, const C: usize>(p: &[f32], row: impl Fn(usize) -> &'a [E], out: &mut [f32]) {
        let mut acc = [unsafe { _mm256_setzero_ps() }; C];
        for (j, &w) in p.iter().enumerate() {
            let r = &row(j)[..8 * C];
            // SAFETY: `r` holds `8 · C` values (the slice above panics otherwise); the features
            // are enabled for the build.
            unsafe {
                let w = _mm256_set1_ps(w);
                for (c, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(w, E::load8(r.as_ptr().add(8 * c)), *a);
                }
            }
        }
        let out = &mut out[..8 * C];
        for (c, a) in acc.iter().enumerate() {
            // SAFETY: `out` holds `8 · C` values.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(8 * c), *a) };
        }
    }
}

fn msg(text: String) -> crate::Error {
    candle_core::Error::Msg(text).into()
}

#[cfg(test)]
mod tests {
    use super::super::kernel_tests::values;
    use super::{dots, portable, weighted_sum};

    #[test]
    fn the_vector_kernels_give_the_plain_definitions_bits() {
        // dims with and without a tail, for the scores; 64 and 128 (vector) and 40 (plain) for
        // the weighted sum; f32 and f16 rows; t not a multiple of four.
        for (dim, t, seed) in [(64usize, 13usize, 1u64), (128, 7, 2), (40, 5, 3), (24, 1, 4), (20, 6, 5)] {
            let q: Vec<f32> = values(dim, seed);
            let rows: Vec<f32> = values(t * dim, seed + 100);
            let rows16: Vec<half::f16> = rows.iter().map(|&x| half::f16::from_f32(x)).collect();
            let key = |j: usize| &rows[j * dim..][..dim];
            let key16 = |j: usize| &rows16[j * dim..][..dim];
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            let want: Vec<f32> = (0..t).map(|j| portable::dot(&q, key(j))).collect();
            assert_eq!(bits(&dots(&q, t, key)), bits(&want), "dots, dim {dim}, t {t}");
            let want16: Vec<f32> = (0..t).map(|j| portable::dot(&q, key16(j))).collect();
            assert_eq!(bits(&dots(&q, t, key16)), bits(&want16), "f16 dots, dim {dim}, t {t}");
            let p: Vec<f32> = values(t, seed + 7).iter().map(|x| x.abs()).collect();
            let (mut got, mut want) = (vec![1f32; dim], vec![2f32; dim]);
            weighted_sum(&p, key, &mut got);
            portable::weighted_sum(&p, key, &mut want);
            assert_eq!(bits(&got), bits(&want), "weighted sum, dim {dim}, t {t}");
            weighted_sum(&p, key16, &mut got);
            portable::weighted_sum(&p, key16, &mut want);
            assert_eq!(bits(&got), bits(&want), "f16 weighted sum, dim {dim}, t {t}");
        }
    }
}
