//! The digital link's codecs: symmetric integer quantization of the hidden state, row by row.
//!
//! - int8: one f32 scale per row, `s = max|x| / 127`, codes in −127..=127.
//! - int4: one f16 scale per group of [`GROUP`] elements, `s = max|x| / 7` (rounded up to the
//!   next f16, so no code clips), codes in −7..=7, two per byte (low nibble first).
//! - outlier-aware int8 / int4: the row's [`OUTLIERS`] largest |x| are sent apart as
//!   (u16 index, f16 value) and left out of the scales. The residual stream of an LLM has a few
//!   "massive" dimensions (Sun et al. 2024) that would otherwise set every scale of their row and
//!   flush the other elements' codes to zero.
//!
//! Round-trip error, for elements that are not outliers: at most half a step, `s/2`, i.e.
//! `max|x| / 254` of the row for int8 and `max|x| / 14 · (1 + 2⁻¹⁰)` of the group for int4
//! (plus f32 rounding). An outlier is off by its f16 rounding, `|x|·2⁻¹¹`. Values beyond f16's
//! range (65504) are clamped there.
//!
//! Layout (see [`crate::wire`]): every row's side information, then every row's codes.

use half::f16;

use crate::wire::WireDType;

/// Elements per int4 scale.
pub const GROUP: usize = 32;
/// Elements per row sent apart by the outlier-aware codecs.
pub const OUTLIERS: usize = 8;

fn outliers(dtype: WireDType, n: usize) -> usize {
    match dtype {
        WireDType::I8Outlier | WireDType::I4Outlier => OUTLIERS.min(n),
        _ => 0,
    }
}

fn scale_bytes(dtype: WireDType, n: usize) -> usize {
    match dtype {
        WireDType::I8 | WireDType::I8Outlier => 4,
        WireDType::I4 | WireDType::I4Outlier => n.div_ceil(GROUP) * 2,
        _ => 0,
    }
}

/// Side information per row of `n` elements: scales, then outliers (4 bytes each).
pub fn side_bytes_per_row(dtype: WireDType, n: usize) -> usize {
    scale_bytes(dtype, n) + outliers(dtype, n) * 4
}

fn clamp_f16(v: f32) -> f16 {
    f16::from_f32(v.clamp(-65504.0, 65504.0))
}

/// The smallest f16 ≥ `v` (v ≥ 0), so that a scale never rounds below max|x| / qmax.
fn f16_at_least(v: f32) -> f16 {
    let h = clamp_f16(v);
    if h.to_f32() >= v || h.to_f32() >= 65504.0 { h } else { f16::from_bits(h.to_bits() + 1) }
}

/// Indices of the `count` largest |x| of `row`, ties to the lower index.
fn top_abs(row: &[f32], count: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| row[b].abs().total_cmp(&row[a].abs()).then(a.cmp(&b)));
    idx.truncate(count);
    idx.sort_unstable();
    idx
}

/// Appends the encoding of `values` (rows of `n`) in the quantized `dtype` to `out`.
///
/// # Panics
/// If `n` is 0 or does not divide `values.len()`, or an outlier-aware codec gets rows longer than
/// 65536 (its indices are u16): [`crate::wire::WireTensor::from_f32`] checks the shape first.
pub fn encode(dtype: WireDType, n: usize, values: &[f32], out: &mut Vec<u8>) {
    assert!(n > 0 && values.len().is_multiple_of(n), "rows of {n} do not tile {} values", values.len());
    let n_out = outliers(dtype, n);
    assert!(n_out == 0 || n <= 65536, "outlier indices are u16: rows of {n} are too long");
    let qmax = if dtype.bits() == 8 { 127.0f32 } else { 7.0 };
    let mut payload = Vec::with_capacity(values.len() * dtype.bits() / 8 + 1);
    for row in values.chunks_exact(n) {
        let mut rest = row.to_vec();
        let picked = top_abs(row, n_out);
        for &i in &picked {
            rest[i] = 0.0;
        }
        let mut codes = vec![0i8; n];
        if dtype.bits() == 8 {
            let s = rest.iter().fold(0f32, |m, v| m.max(v.abs())) / qmax;
            out.extend_from_slice(&s.to_le_bytes());
            if s > 0.0 {
                for (c, v) in codes.iter_mut().zip(&rest) {
                    *c = (v / s).round().clamp(-qmax, qmax) as i8;
                }
            }
        } else {
            for (g, group) in rest.chunks(GROUP).enumerate() {
                let s = f16_at_least(group.iter().fold(0f32, |m, v| m.max(v.abs())) / qmax);
                out.extend_from_slice(&s.to_le_bytes());
                let s = s.to_f32();
                if s > 0.0 {
                    for (j, v) in group.iter().enumerate() {
                        codes[g * GROUP + j] = (v / s).round().clamp(-qmax, qmax) as i8;
                    }
                }
            }
        }
        for &i in &picked {
            out.extend_from_slice(&(i as u16).to_le_bytes());
            out.extend_from_slice(&clamp_f16(row[i]).to_le_bytes());
        }
        if dtype.bits() == 8 {
            payload.extend(codes.iter().map(|&c| c as u8));
        } else {
            payload.extend(codes.chunks(2).map(|p| (p[0] as u8 & 0x0f) | ((p.get(1).copied().unwrap_or(0) as u8 & 0x0f) << 4)));
        }
    }
    out.extend_from_slice(&payload);
}

/// Decodes a quantized tensor's bytes (rows of `n`) into f32 values. The length was checked.
pub fn decode(dtype: WireDType, n: usize, data: &[u8]) -> Vec<f32> {
    if n == 0 {
        return Vec::new();
    }
    let side_row = side_bytes_per_row(dtype, n);
    let payload_row = dtype.payload_bytes_per_row(n);
    let rows = data.len() / (side_row + payload_row);
    let (side, payload) = data.split_at(rows * side_row);
    let n_out = outliers(dtype, n);
    let mut out = Vec::with_capacity(rows * n);
    for r in 0..rows {
        let side = &side[r * side_row..(r + 1) * side_row];
        let codes = &payload[r * payload_row..(r + 1) * payload_row];
        let start = out.len();
        if dtype.bits() == 8 {
            let s = f32::from_le_bytes([side[0], side[1], side[2], side[3]]);
            out.extend(codes.iter().map(|&c| f32::from(c as i8) * s));
        } else {
            for j in 0..n {
                let nib = (codes[j / 2] >> ((j % 2) * 4)) & 0x0f;
                let q = ((nib << 4) as i8) >> 4; // sign-extend the nibble
                let g = j / GROUP;
                let s = f16::from_le_bytes([side[2 * g], side[2 * g + 1]]).to_f32();
                out.push(f32::from(q) * s);
            }
        }
        let sb = scale_bytes(dtype, n);
        for o in 0..n_out {
            let b = &side[sb + 4 * o..sb + 4 * o + 4];
            let i = usize::from(u16::from_le_bytes([b[0], b[1]]));
            if i < n {
                out[start + i] = f16::from_le_bytes([b[2], b[3]]).to_f32();
            }
        }
    }
    out
}

/// Flat element indices whose values travel in the side information (the outliers), which the
/// channel never loses; empty for codecs without outliers.
pub fn protected_elements(dtype: WireDType, n: usize, data: &[u8]) -> Vec<usize> {
    let n_out = outliers(dtype, n);
    if n_out == 0 {
        return Vec::new();
    }
    let side_row = side_bytes_per_row(dtype, n);
    let rows = data.len() / (side_row + dtype.payload_bytes_per_row(n));
    let sb = scale_bytes(dtype, n);
    (0..rows)
        .flat_map(|r| {
            (0..n_out).filter_map(move |o| {
                let at = r * side_row + sb + 4 * o;
                let i = usize::from(u16::from_le_bytes([data[at], data[at + 1]]));
                (i < n).then_some(r * n + i)
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::WireTensor;
    use rand::{Rng, SeedableRng};

    /// Rows shaped like a residual stream: mostly N(0, 1)-ish values and a few massive ones.
    fn rows(rng: &mut rand::rngs::StdRng, rows: usize, n: usize) -> Vec<f32> {
        (0..rows * n)
            .map(|i| {
                let v: f32 = rng.random_range(-2.0..2.0);
                if i % n == 3 || i % n == n / 2 { v * 300.0 } else { v }
            })
            .collect()
    }

    /// The stated bounds over many random rows, for every quantized codec.
    #[test]
    fn round_trip_errors_stay_within_the_stated_bounds() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(17);
        for n in [576usize, 896, 37] {
            let x = rows(&mut rng, 40, n);
            for dtype in [WireDType::I8, WireDType::I4, WireDType::I8Outlier, WireDType::I4Outlier] {
                let w = WireTensor::from_f32(dtype, vec![1, 40, n], &x).unwrap();
                let y = w.to_f32_vec();
                let protected = protected_elements(dtype, n, w.data());
                for (r, (xr, yr)) in x.chunks(n).zip(y.chunks(n)).enumerate() {
                    let out: Vec<usize> = protected.iter().filter(|&&e| e / n == r).map(|e| e % n).collect();
                    let rest_max = |lo: usize, hi: usize| (lo..hi).filter(|i| !out.contains(i)).fold(0f32, |m, i| m.max(xr[i].abs()));
                    for i in 0..n {
                        let err = (xr[i] - yr[i]).abs();
                        let bound = if out.contains(&i) {
                            xr[i].abs() * 2f32.powi(-11)
                        } else if dtype.bits() == 8 {
                            rest_max(0, n) / 254.0 * (1.0 + 1e-5)
                        } else {
                            let g = i / GROUP * GROUP;
                            rest_max(g, (g + GROUP).min(n)) / 14.0 * (1.0 + 2f32.powi(-10)) * (1.0 + 1e-5)
                        };
                        assert!(err <= bound + 1e-30, "{dtype} n={n} row {r} element {i}: |{} − {}| = {err} > {bound}", xr[i], yr[i]);
                    }
                }
            }
        }
    }

    #[test]
    fn outlier_codecs_keep_massive_values_and_resolve_the_rest() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let n = 576;
        let x = rows(&mut rng, 8, n);
        let rmse = |dtype| {
            let y = WireTensor::from_f32(dtype, vec![8, n], &x).unwrap().to_f32_vec();
            let small: Vec<f32> = x.iter().zip(&y).enumerate().filter(|(i, _)| i % n != 3 && i % n != n / 2).map(|(_, (a, b))| a - b).collect();
            (small.iter().map(|d| d * d).sum::<f32>() / small.len() as f32).sqrt()
        };
        // Without outliers the massive values set int8's scale to ~600/127: most small values
        // flush to 0. With them apart, the step is ~2/127.
        assert!(rmse(WireDType::I8) > 0.5, "{}", rmse(WireDType::I8));
        assert!(rmse(WireDType::I8Outlier) < 0.01, "{}", rmse(WireDType::I8Outlier));
        assert!(rmse(WireDType::I4Outlier) < rmse(WireDType::I4) / 5.0);
    }

    #[test]
    fn sizes_are_what_the_layout_says() {
        // SmolLM2's hidden 576: int8 580 B, int4 288 + 36 = 324 B, outliers +32 B.
        assert_eq!(WireDType::I8.tensor_bytes(&[1, 1, 576]), Some(580));
        assert_eq!(WireDType::I4.tensor_bytes(&[1, 1, 576]), Some(324));
        assert_eq!(WireDType::I4Outlier.tensor_bytes(&[1, 2, 576]), Some(2 * 356));
        assert_eq!(WireDType::F16.tensor_bytes(&[1, 2, 576]), Some(2304));
    }

    #[test]
    fn zero_rows_and_huge_values_are_handled() {
        let x = vec![0.0f32; 64];
        for dtype in [WireDType::I8, WireDType::I4, WireDType::I4Outlier] {
            assert_eq!(WireTensor::from_f32(dtype, vec![2, 32], &x).unwrap().to_f32_vec(), x);
        }
        let big = vec![1e6f32; 32];
        let y = WireTensor::from_f32(WireDType::I4Outlier, vec![1, 32], &big).unwrap().to_f32_vec();
        assert!(y.iter().all(|v| v.is_finite()), "{y:?}");
    }
}
