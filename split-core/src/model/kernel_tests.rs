//! Helpers shared by the unit tests of our quantized kernels (`q4_1`, `q8_0`).

use candle_core::quantized::QMatMul;
use candle_core::{Module, Tensor};

/// Deterministic values with a spread of magnitudes per block of 32, including whole zero blocks.
pub(super) fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let u = (s >> 11) as f32 / (1u64 << 53) as f32 - 0.5;
            u * [1.0, 0.01, 37.0, 0.0][(i / 32) % 4]
        })
        .collect()
}

/// Asserts that row `r` (along dim 0) of `got` has exactly the bits candle's `reference` gives
/// for row `r` of `x` alone, as a single decode step runs it.
pub(super) fn assert_row_is_candles(reference: &QMatMul, x: &Tensor, got: &Tensor, r: usize, what: &str) {
    let want = reference.forward(&x.narrow(0, r, 1).unwrap()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let row = got.narrow(0, r, 1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(want.len(), row.len(), "{what}: row {r} has the wrong width");
    let same = want.iter().zip(&row).all(|(a, b)| a.to_bits() == b.to_bits());
    assert!(same, "{what}: row {r} differs from candle's");
}
