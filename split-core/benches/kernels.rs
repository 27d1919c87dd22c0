//! Micro-benchmarks of the pieces a decode step is made of (issue 8), with criterion:
//!
//! ```sh
//! cargo bench -p split-core --bench kernels            # all, ~2 min
//! cargo bench -p split-core --bench kernels -- q4_1    # one group
//! ```
//!
//! - `q4_1/*`: a SmolLM2-135M projection (random Q4_1 weights of the model's shapes) on 1 and 4
//!   activation rows, candle's kernel against ours ([`PackedQ4_1`], same bits);
//! - `q5_0/*`: the same for two Qwen2.5-Coder-0.5B projections (random Q5_0 weights of its
//!   shapes) and [`PackedQ5_0`];
//! - `head_q8_0`: the tied Q8_0 LM heads of both models (49,152 × 576 and 151,936 × 896) on one
//!   row, candle's kernel against ours (`/packed`, same bits);
//! - `wire/*`: a hidden state to wire bytes and back, decode (1 × 576) and prefill (512 × 576)
//!   sized, f32 and f16;
//! - `channel/*`: one decode-sized message through a clean channel and through Rayleigh fading
//!   with noise at 20 dB.
//!
//! `scripts/bench.sh` runs them and copies the medians into `docs/benchmarks.md`.

use std::hint::black_box;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use split_core::channel::{Channel, ChannelConfig};
use split_core::model::{PackedQ4_1, PackedQ5_0, q8_0_matmul_rows};
use split_core::wire::{WireDType, WireTensor};

/// Deterministic values in [-0.5, 0.5).
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f32 / (1u64 << 53) as f32 - 0.5
        })
        .collect()
}

fn matrix(n: usize, k: usize, dtype: GgmlDType) -> QTensor {
    let w = Tensor::from_vec(values(n * k, (n * k) as u64), (n, k), &Device::Cpu).unwrap();
    QTensor::quantize(&w, dtype).unwrap()
}

/// A packed kernel against candle's on the same random matrices of `dtype`, on 1 and 4 rows:
/// `shapes` are (name, n = output columns, k = inner).
fn against_candle<P>(c: &mut Criterion, group: &str, dtype: GgmlDType, shapes: &[(&str, usize, usize)], pack: impl Fn(&QTensor) -> P, matmul: impl Fn(&P, &Tensor) -> Tensor) {
    let mut group = c.benchmark_group(group);
    for &(name, n, k) in shapes {
        let q = matrix(n, k, dtype);
        let packed = pack(&q);
        let candle = QMatMul::from_qtensor(q).unwrap();
        for rows in [1usize, 4] {
            let x = Tensor::from_vec(values(rows * k, 7), (rows, 1, k), &Device::Cpu).unwrap();
            group.throughput(Throughput::Elements((rows * n * k) as u64));
            group.bench_with_input(BenchmarkId::new(format!("{name}/candle"), rows), &x, |b, x| b.iter(|| candle.forward(black_box(x)).unwrap()));
            group.bench_with_input(BenchmarkId::new(format!("{name}/packed"), rows), &x, |b, x| b.iter(|| matmul(&packed, black_box(x))));
        }
    }
    group.finish();
}

fn q4_1(c: &mut Criterion) {
    // SmolLM2-135M's gate/up and down projections.
    let shapes = [("gate_1536x576", 1536, 576), ("down_576x1536", 576, 1536)];
    against_candle(c, "q4_1", GgmlDType::Q4_1, &shapes, |q| PackedQ4_1::new(q).unwrap().expect("q4_1 packs"), |p, x| p.matmul(x).unwrap());
}

fn q5_0(c: &mut Criterion) {
    // Qwen2.5-Coder-0.5B's gate/up projection and its q/o projection.
    let shapes = [("gate_4864x896", 4864, 896), ("q_896x896", 896, 896)];
    against_candle(c, "q5_0", GgmlDType::Q5_0, &shapes, |q| PackedQ5_0::new(q).unwrap().expect("q5_0 packs"), |p, x| p.matmul(x).unwrap());
}

fn head(c: &mut Criterion) {
    // SmolLM2-135M's and Qwen2.5-Coder-0.5B's tied Q8_0 heads on one row: candle's kernel
    // against ours (split_core::model::q8_0_matmul_rows, same bits).
    let mut group = c.benchmark_group("head_q8_0");
    for (name, n, k) in [("49152x576", 49_152, 576), ("151936x896", 151_936, 896)] {
        let candle = QMatMul::from_qtensor(matrix(n, k, GgmlDType::Q8_0)).unwrap();
        let QMatMul::QTensor(q) = &candle else { unreachable!("a quantized matrix stays quantized") };
        let x = Tensor::from_vec(values(k, 3), (1, k), &Device::Cpu).unwrap();
        group.throughput(Throughput::Elements((n * k) as u64));
        group.bench_with_input(BenchmarkId::new(format!("{name}/candle"), 1), &x, |b, x| b.iter(|| candle.forward(black_box(x)).unwrap()));
        group.bench_with_input(BenchmarkId::new(format!("{name}/packed"), 1), &x, |b, x| {
            b.iter(|| q8_0_matmul_rows(q, black_box(x)).unwrap().expect("a Q8_0 head with k not a multiple of 256 takes ours"))
        });
    }
    group.finish();
}

fn wire(c: &mut Criterion) {
    let mut group = c.benchmark_group("wire");
    for (name, rows) in [("decode", 1usize), ("prefill", 512)] {
        let hidden = values(rows * 576, 5);
        for dtype in [WireDType::F32, WireDType::F16] {
            group.throughput(Throughput::Bytes((rows * 576 * dtype.size()) as u64));
            group.bench_function(format!("{name}/{dtype}/encode"), |b| {
                b.iter(|| WireTensor::from_f32(dtype, vec![1, rows, 576], black_box(&hidden)).unwrap())
            });
            let t = WireTensor::from_f32(dtype, vec![1, rows, 576], &hidden).unwrap();
            group.bench_function(format!("{name}/{dtype}/decode"), |b| b.iter(|| black_box(&t).to_f32_vec()));
        }
    }
    group.finish();
}

fn channel(c: &mut Criterion) {
    let mut group = c.benchmark_group("channel");
    let faded = ChannelConfig { snr_db: 20.0, fading_m: Some(1.0), noise: true, ..ChannelConfig::default() };
    for (name, config) in [("clean", ChannelConfig::default()), ("rayleigh_noise_20db", faded)] {
        let mut ch = Channel::new(config, 1).unwrap();
        let hidden = values(576, 9);
        group.bench_function(format!("decode/{name}"), |b| {
            b.iter_batched_ref(|| hidden.clone(), |v| ch.transmit(v, 4), criterion::BatchSize::SmallInput)
        });
    }
    group.finish();
}

criterion_group!(benches, q4_1, q5_0, head, wire, channel);
criterion_main!(benches);
