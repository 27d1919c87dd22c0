//! Helpers shared by the unit tests of our quantized kernels (`q4_1`, `q5_0`, `q8_0`).

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};

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

/// Asserts that `matmul` (a packed kernel on `q`'s weights) gives every row of random
/// activations exactly candle's bits, for each `(n, k, m)`: an `[n, k]` matrix of `dtype`, `m`
/// rows.
pub(super) fn assert_kernel_is_candles(dtype: GgmlDType, shapes: &[(usize, usize, usize)], matmul: impl Fn(&QTensor, &Tensor) -> Tensor) {
    let dev = Device::Cpu;
    for &(n, k, m) in shapes {
        let w = Tensor::from_vec(values(n * k, n as u64), (n, k), &dev).unwrap();
        let q = QTensor::quantize(&w, dtype).unwrap();
        let x = Tensor::from_vec(values(m * k, 7 + k as u64), (m, 1, k), &dev).unwrap();
        let got = matmul(&q, &x);
        let reference = QMatMul::from_qtensor(q).unwrap();
        assert_eq!(got.dims(), [m, 1, n]);
        for r in 0..m {
            assert_row_is_candles(&reference, &x, &got, r, &format!("n={n} k={k} m={m}"));
        }
    }
}

/// Asserts that `matmul` gives candle's bits for the weights `w` (`[n, k]`, quantized to
/// `dtype`) on a row of activations that all quantize to +127 and on one of −127, and that every
/// output is large (|v| > 100), so the case does reach the kernel's largest partial sums.
pub(super) fn assert_extremes_are_candles(dtype: GgmlDType, w: Vec<f32>, (n, k): (usize, usize), what: &str, matmul: impl Fn(&QTensor, &Tensor) -> Tensor) {
    let dev = Device::Cpu;
    let q = QTensor::quantize(&Tensor::from_vec(w, (n, k), &dev).unwrap(), dtype).unwrap();
    let xs = [1.0f32, -1.0].map(|sign| Tensor::from_vec(vec![3.5 * sign; k], (1, 1, k), &dev).unwrap());
    let gots = xs.clone().map(|x| matmul(&q, &x).flatten_all().unwrap().to_vec1::<f32>().unwrap());
    let reference = QMatMul::from_qtensor(q).unwrap();
    for (x, got) in xs.iter().zip(gots) {
        let sign = x.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0].signum();
        let want = reference.forward(x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(want.iter().all(|v| v.abs() > 100.0), "{what}: the case is not extreme: {want:?}");
        assert_eq!(want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "{what}, sign {sign}");
    }
}

/// Asserts that a matrix multiplied among others on the same input (`each`: one pass over all
/// their columns) gives candle's bits, and that the others give their own one-matrix products.
pub(super) fn assert_product_among_others_is_candles<P>(dtype: GgmlDType, pack: impl Fn(&QTensor) -> P, each: impl Fn(&[&P], &Tensor) -> Vec<Tensor>) {
    let other_w = Tensor::from_vec(values(48 * 576, 99), (48, 576), &Device::Cpu).unwrap();
    let other = pack(&QTensor::quantize(&other_w, dtype).unwrap());
    assert_kernel_is_candles(dtype, &[(16, 576, 1), (192, 576, 5)], |q, x| {
        let p = pack(q);
        let mut ys = each(&[&other, &p, &other], x);
        let alone = each(&[&other], x).remove(0).flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for y in [&ys[0], &ys[2]] {
            assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), alone);
        }
        ys.swap_remove(1)
    });
}
