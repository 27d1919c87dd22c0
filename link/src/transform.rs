//! The transmitter's and the receiver's processing of the hidden state around the channel.
//!
//! UE: [`Normalization`] (identity; per-dimension standardization `(y − μ)/σ` with the
//! calibration statistics of the boundary; or standardization followed by the boundary's transmit
//! gains, a power allocation towards the dimensions the model is most sensitive to), then the
//! wire codec. Edge: the codec's decoding,
//! undoing the normalization, then [`Concealment`] of the elements the channel lost (the
//! activation's element mask): zero-fill, the reference, or the calibration mean of each
//! dimension (Sun et al. 2024: fixing massive activations to their mean costs almost nothing,
//! zeroing them wrecks the model). [`LinkSetup`] is the pair of choices both ends agree on in
//! `Open`; in process, `split_core`'s channel boundary runs exactly these functions.

use std::fmt;
use std::str::FromStr;

use crate::calibration::{BoundaryStats, STD_FLOOR};
use crate::channel::{Channel, Transmission};
use crate::codec;
use crate::error::{Error, Result};
use crate::wire::{WireDType, WireTensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
pub enum Normalization {
    /// Send the hidden state as it is (bit-exact on a clean f32 link).
    #[default]
    Identity,
    /// Send `(y − μ_d)/σ_d` per dimension; the receiver multiplies back.
    Standardize,
    /// Send `a_d·(y − μ_d)/σ_d`, with the boundary's transmit gains `a_d`
    /// ([`crate::calibration::allocation_gains`]; 1 where the calibration has none, i.e. at
    /// every `k < L`); the receiver divides by `a_d` and multiplies back.
    Allocate,
    /// Send `T·(y − μ)/σ`, with the boundary's transmit rotation `T`
    /// ([`crate::calibration::Rotation`]: a code across dimensions, into the eigenbasis of the
    /// head's Fisher-weighted correlation, with power allocated along it); the receiver applies
    /// `T⁻¹` and multiplies back. Lost elements are concealed in the rotated domain with its mean,
    /// 0. Where the calibration has no rotation (every `k < L`), it is standardization.
    Rotate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
pub enum Concealment {
    /// Lost elements are 0, the reference mode of the authors' code.
    #[default]
    Zero,
    /// Lost elements take their dimension's calibration mean.
    Mean,
}

impl fmt::Display for Normalization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Identity => "identity",
            Self::Standardize => "standardize",
            Self::Allocate => "allocate",
            Self::Rotate => "rotate",
        })
    }
}

impl FromStr for Normalization {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "identity" | "none" => Ok(Self::Identity),
            "standardize" => Ok(Self::Standardize),
            "allocate" => Ok(Self::Allocate),
            "rotate" => Ok(Self::Rotate),
            _ => Err(Error::InvalidArgument(format!("unknown normalization {s:?}; expected identity, standardize, allocate or rotate"))),
        }
    }
}

impl fmt::Display for Concealment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Zero => "zero",
            Self::Mean => "mean",
        })
    }
}

impl FromStr for Concealment {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "zero" => Ok(Self::Zero),
            "mean" => Ok(Self::Mean),
            _ => Err(Error::InvalidArgument(format!("unknown concealment {s:?}; expected zero or mean"))),
        }
    }
}

/// What the two ends of the link agree on: codec, normalization and concealment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct LinkSetup {
    pub dtype: WireDType,
    pub normalization: Normalization,
    pub concealment: Concealment,
}

impl LinkSetup {
    /// Whether this setup needs the boundary's calibration statistics.
    pub fn needs_calibration(&self) -> bool {
        self.normalization != Normalization::Identity || self.concealment == Concealment::Mean
    }

    fn stats<'a>(&self, stats: Option<&'a BoundaryStats>, n: usize) -> Result<Option<&'a BoundaryStats>> {
        if !self.needs_calibration() {
            return Ok(None);
        }
        let s = stats.ok_or_else(|| {
            Error::InvalidArgument(format!("normalization {} / concealment {} need calibration statistics; none were loaded", self.normalization, self.concealment))
        })?;
        if s.mean.len() != n {
            return Err(Error::InvalidArgument(format!("calibration has {} dimensions at boundary {}, the hidden state {n}", s.mean.len(), s.k)));
        }
        Ok(Some(s))
    }

    /// The transmit gains this setup applies at a boundary: `Allocate`'s, where the calibration
    /// has them (at every other boundary, and for every other normalization, none: gain 1).
    fn gains<'a>(&self, stats: &'a BoundaryStats) -> Option<&'a [f32]> {
        (self.normalization == Normalization::Allocate && !stats.gain.is_empty()).then_some(stats.gain.as_slice())
    }

    /// The transmit rotation this setup applies at a boundary: `Rotate`'s, where the calibration
    /// has one.
    fn rotation<'a>(&self, stats: &'a BoundaryStats) -> Option<&'a crate::calibration::Rotation> {
        if self.normalization == Normalization::Rotate { stats.rotation.as_deref() } else { None }
    }

    /// Transmitter: normalizes `values` (rows of `shape`'s last dimension, the first at absolute
    /// position `position`) and encodes them.
    pub fn encode(&self, shape: Vec<usize>, values: &[f32], stats: Option<&BoundaryStats>, position: usize) -> Result<WireTensor> {
        let n = shape.last().copied().unwrap_or(0);
        let stats = self.stats(stats, n)?;
        match (self.normalization, stats) {
            (Normalization::Standardize | Normalization::Allocate | Normalization::Rotate, Some(s)) => {
                let mut v = values.to_vec();
                for (r, row) in v.chunks_exact_mut(n).enumerate() {
                    let (mean, std) = s.row(position + r);
                    for ((x, &m), &sd) in row.iter_mut().zip(mean).zip(std) {
                        *x = (*x - m) / sd.max(STD_FLOOR);
                    }
                    if let Some(gain) = self.gains(s) {
                        row.iter_mut().zip(gain).for_each(|(x, &a)| *x *= a);
                    }
                }
                if let Some(rot) = self.rotation(s) {
                    crate::calibration::Rotation::apply(&rot.forward, n, &mut v);
                }
                WireTensor::from_f32(self.dtype, shape, &v)
            }
            _ => WireTensor::from_f32(self.dtype, shape, values),
        }
    }

    /// Receiver: decodes, undoes the normalization and conceals the elements whose bit is set in
    /// `erased` (one per element, LSB first; empty = nothing lost). The first row is at absolute
    /// position `position`.
    pub fn decode(&self, tensor: &WireTensor, erased: &[u8], stats: Option<&BoundaryStats>, position: usize) -> Result<Vec<f32>> {
        let n = tensor.row_len();
        let stats = self.stats(stats, n)?;
        if tensor.dtype() != self.dtype {
            return Err(Error::InvalidArgument(format!("tensor dtype {} differs from the session's codec {}", tensor.dtype(), self.dtype)));
        }
        let elements = tensor.elements();
        if !erased.is_empty() && erased.len() != elements.div_ceil(8) {
            return Err(Error::InvalidArgument(format!("element mask of {} bytes for {elements} elements; expected {}", erased.len(), elements.div_ceil(8))));
        }
        let mut v = tensor.to_f32_vec();
        let lost = erased.iter().any(|&b| b != 0);
        // Outliers travel in the protected side information: their values arrived.
        let protected = if lost { codec::protected_elements(tensor.dtype(), n, tensor.data()) } else { Default::default() };
        let is_lost = |e: usize| erased[e / 8] & (1 << (e % 8)) != 0 && !protected.contains(&e);
        let rotation = stats.and_then(|s| self.rotation(s));
        if let Some(rot) = rotation {
            if lost {
                (0..v.len()).filter(|&e| is_lost(e)).for_each(|e| v[e] = 0.0);
            }
            crate::calibration::Rotation::apply(&rot.inverse, n, &mut v);
        }
        if let (Normalization::Standardize | Normalization::Allocate | Normalization::Rotate, Some(s)) = (self.normalization, stats) {
            for (r, row) in v.chunks_exact_mut(n).enumerate() {
                if let Some(gain) = self.gains(s) {
                    row.iter_mut().zip(gain).for_each(|(x, &a)| *x /= a);
                }
                let (mean, std) = s.row(position + r);
                for ((x, &m), &sd) in row.iter_mut().zip(mean).zip(std) {
                    *x = *x * sd.max(STD_FLOOR) + m;
                }
            }
        }
        if lost && rotation.is_none() {
            for (e, x) in v.iter_mut().enumerate() {
                if is_lost(e) {
                    *x = match (self.concealment, stats) {
                        (Concealment::Mean, Some(s)) => s.row(position + e / n).0[e % n],
                        _ => 0.0,
                    };
                }
            }
        }
        Ok(v)
    }
}

impl LinkSetup {
    /// The whole link in one call, as `ppl` and the profiler run it in process: transmitter
    /// ([`Self::encode`]), `channel` ([`Channel::transmit_wire`]), receiver ([`Self::decode`]).
    /// The emulator runs the middle step on the live stream, and the UE and edge the others.
    pub fn send(&self, channel: &mut Channel, shape: Vec<usize>, values: &[f32], stats: Option<&BoundaryStats>, position: usize) -> Result<(Vec<f32>, Transmission)> {
        let wire = self.encode(shape, values, stats, position)?;
        let (arrived, t) = channel.transmit_wire(&wire)?;
        let out = self.decode(&arrived, &t.erased, stats, position)?;
        Ok((out, t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calibration::Accumulator;

    fn stats(n: usize) -> BoundaryStats {
        let mut acc = Accumulator::new(n);
        let rows: Vec<f32> = (0..n * 50).map(|i| ((i * 7919) % 101) as f32 / 10.0 + if i % n == 1 { 500.0 } else { 0.0 }).collect();
        acc.add(&rows);
        Accumulator::finish(0, &acc, &acc, &acc)
    }

    #[test]
    fn identity_on_f32_is_bit_exact_and_standardize_round_trips() {
        let n = 16;
        let s = stats(n);
        let x: Vec<f32> = (0..2 * n).map(|i| (i as f32 * 0.3).cos() * 4.0 + if i % n == 1 { 500.0 } else { 0.0 }).collect();
        let id = LinkSetup::default();
        let w = id.encode(vec![1, 2, n], &x, None, 1).unwrap();
        assert_eq!(id.decode(&w, &[], None, 1).unwrap(), x);
        let std = LinkSetup { normalization: Normalization::Standardize, ..id };
        let w = std.encode(vec![1, 2, n], &x, Some(&s), 1).unwrap();
        // The massive dimension is sent at unit scale, not at 500.
        assert!(w.to_f32_vec().iter().all(|v| v.abs() < 10.0), "{:?}", w.to_f32_vec());
        for (a, b) in x.iter().zip(std.decode(&w, &[], Some(&s), 1).unwrap()) {
            assert!((a - b).abs() <= 1e-4 * a.abs().max(1.0), "{a} vs {b}");
        }
        let e = std.encode(vec![1, 2, n], &x, None, 1).unwrap_err().to_string();
        assert!(e.contains("need calibration statistics"), "{e}");
    }

    /// Allocate sends the standardized values times the boundary's gains and the receiver gets
    /// them back; without gains (every k < L) it is bit-for-bit standardization.
    #[test]
    fn allocate_scales_by_the_gains_and_is_standardize_where_there_are_none() {
        let n = 16;
        let mut s = stats(n);
        let x: Vec<f32> = (0..2 * n).map(|i| (i as f32 * 0.7).sin() * 3.0 + if i % n == 1 { 500.0 } else { 0.0 }).collect();
        let standardize = LinkSetup { normalization: Normalization::Standardize, ..LinkSetup::default() };
        let allocate = LinkSetup { normalization: Normalization::Allocate, ..LinkSetup::default() };
        let plain = standardize.encode(vec![2, n], &x, Some(&s), 1).unwrap();
        assert_eq!(allocate.encode(vec![2, n], &x, Some(&s), 1).unwrap().to_f32_vec(), plain.to_f32_vec());
        assert_eq!(allocate.decode(&plain, &[], Some(&s), 1).unwrap(), standardize.decode(&plain, &[], Some(&s), 1).unwrap());
        s.gain = (0..n).map(|d| if d == 1 { 3.0 } else { 0.5 }).collect();
        let sent = allocate.encode(vec![2, n], &x, Some(&s), 1).unwrap().to_f32_vec();
        for (i, (a, b)) in sent.iter().zip(plain.to_f32_vec()).enumerate() {
            assert!((a - b * s.gain[i % n]).abs() < 1e-5, "element {i}: {a} vs {b}");
        }
        let back = allocate.decode(&allocate.encode(vec![2, n], &x, Some(&s), 1).unwrap(), &[], Some(&s), 1).unwrap();
        for (a, b) in x.iter().zip(back) {
            assert!((a - b).abs() <= 1e-4 * a.abs().max(1.0), "{a} vs {b}");
        }
        // Standardize ignores gains the calibration has.
        assert_eq!(standardize.encode(vec![2, n], &x, Some(&s), 1).unwrap().to_f32_vec(), plain.to_f32_vec());
        assert_eq!("allocate".parse::<Normalization>().unwrap(), Normalization::Allocate);
        assert!(allocate.encode(vec![1, n], &x[..n], None, 1).unwrap_err().to_string().contains("need calibration statistics"));
    }

    /// Rotate sends `T·z` and the receiver gets the row back; a lost element is concealed in the
    /// rotated domain (with 0, its mean), so its error spreads over the row through `T⁻¹`;
    /// without a rotation it is bit-for-bit standardization.
    #[test]
    fn rotate_mixes_dimensions_and_is_standardize_where_there_is_no_rotation() {
        use crate::calibration::Rotation;
        let n = 4;
        let mut s = stats(n);
        let x: Vec<f32> = vec![1.0, 500.5, 3.0, -2.0, 0.5, 501.0, 4.0, 1.0];
        let standardize = LinkSetup { normalization: Normalization::Standardize, concealment: Concealment::Mean, ..LinkSetup::default() };
        let rotate = LinkSetup { normalization: Normalization::Rotate, ..standardize };
        let plain = standardize.encode(vec![2, n], &x, Some(&s), 1).unwrap();
        assert_eq!(rotate.encode(vec![2, n], &x, Some(&s), 1).unwrap().to_f32_vec(), plain.to_f32_vec());
        assert_eq!(rotate.decode(&plain, &[0b1], Some(&s), 1).unwrap(), standardize.decode(&plain, &[0b1], Some(&s), 1).unwrap());
        // T = a Givens rotation of dimensions 0 and 1, scaled by 2 and 1/2 in dimensions 2 and 3.
        let (c, sn) = (0.6f32, 0.8f32);
        let forward = vec![c, -sn, 0.0, 0.0, sn, c, 0.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.5];
        let inverse = vec![c, sn, 0.0, 0.0, -sn, c, 0.0, 0.0, 0.0, 0.0, 0.5, 0.0, 0.0, 0.0, 0.0, 2.0];
        s.rotation = Some(std::sync::Arc::new(Rotation { n, forward, inverse }));
        let sent = rotate.encode(vec![2, n], &x, Some(&s), 1).unwrap().to_f32_vec();
        let z = plain.to_f32_vec();
        assert!((sent[0] - (c * z[0] - sn * z[1])).abs() < 1e-5 && (sent[2] - 2.0 * z[2]).abs() < 1e-5, "{sent:?} from {z:?}");
        let wire = rotate.encode(vec![2, n], &x, Some(&s), 1).unwrap();
        for (a, b) in x.iter().zip(rotate.decode(&wire, &[], Some(&s), 1).unwrap()) {
            assert!((a - b).abs() <= 1e-4 * a.abs().max(1.0), "{a} vs {b}");
        }
        // Element 0 lost: the rotated value 0 becomes, through T⁻¹, an error in dimensions 0
        // and 1 of that row, and nothing else moves.
        let y = rotate.decode(&wire, &[0b1], Some(&s), 1).unwrap();
        let back_z = [c * 0.0 + sn * sent[1], -sn * 0.0 + c * sent[1]];
        for d in 0..2 {
            let want = back_z[d] * s.std[d].max(STD_FLOOR) + s.mean[d];
            assert!((y[d] - want).abs() <= 1e-3 * want.abs().max(1.0), "dimension {d}: {} vs {want}", y[d]);
        }
        assert!(y[2..].iter().zip(&x[2..]).all(|(a, b)| (a - b).abs() <= 1e-4 * b.abs().max(1.0)));
        assert_eq!("rotate".parse::<Normalization>().unwrap(), Normalization::Rotate);
    }

    /// Position 0 is standardized and concealed with its own statistics (the attention sink's
    /// massive values), every other position with the pooled ones.
    #[test]
    fn position_zero_has_statistics_of_its_own() {
        let n = 4;
        let mut s = stats(n);
        s.first = crate::calibration::RowStats { mean: vec![9000.0; n], std: vec![10.0; n], max_abs: 9000.0, top_dims: vec![0] };
        let setup = LinkSetup { normalization: Normalization::Standardize, concealment: Concealment::Mean, ..LinkSetup::default() };
        let x = vec![9000.0f32, 9000.0, 9000.0, 9000.0, 3.0, 3.0, 3.0, 3.0];
        let w = setup.encode(vec![2, n], &x, Some(&s), 0).unwrap();
        assert!(w.to_f32_vec()[..n].iter().all(|&v| v == 0.0), "row 0 standardized with position 0's mean");
        let mask = [0b0001_0001u8]; // element 0 of each row
        let y = setup.decode(&w, &mask, Some(&s), 0).unwrap();
        assert_eq!((y[0], y[n]), (9000.0, s.mean[0]));
        // The same rows later in the sequence use the pooled statistics for both.
        let y = setup.decode(&setup.encode(vec![2, n], &x, Some(&s), 5).unwrap(), &mask, Some(&s), 5).unwrap();
        assert_eq!((y[0], y[n]), (s.mean[0], s.mean[0]));
    }

    #[test]
    fn concealment_fills_lost_elements_with_zero_or_the_mean() {
        let n = 16;
        let s = stats(n);
        let x = vec![3.0f32; n];
        let mut mask = vec![0u8; 2];
        mask[0] = 0b10; // element 1, the massive dimension
        for (c, want) in [(Concealment::Zero, 0.0), (Concealment::Mean, s.mean[1])] {
            let setup = LinkSetup { concealment: c, ..LinkSetup::default() };
            let w = setup.encode(vec![1, n], &x, Some(&s), 1).unwrap();
            let y = setup.decode(&w, &mask, Some(&s), 1).unwrap();
            assert_eq!(y[1], want);
            assert!(y.iter().enumerate().all(|(i, &v)| i == 1 || v == 3.0));
        }
        let setup = LinkSetup::default();
        let w = setup.encode(vec![1, n], &x, None, 1).unwrap();
        assert!(setup.decode(&w, &[0u8; 3], None, 1).unwrap_err().to_string().contains("element mask of 3 bytes for 16 elements"));
    }
}
