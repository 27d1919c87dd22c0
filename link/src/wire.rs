//! Tensors as they travel between processes: little-endian bytes with an explicit dtype and shape.
//!
//! Two kinds of dtype. **Value** dtypes (f32, f16, bf16) carry each element as a number; the
//! analog link perturbs those numbers. f32 is exact, so split inference over the network
//! reproduces the monolithic model bit for bit. **Quantized** dtypes ([`crate::codec`]: int8
//! with a per-row scale, int4 with a per-group scale, and outlier-aware variants that send a
//! row's largest few elements separately in f16) are bits: the digital link delivers or loses
//! whole packets of them and never changes a bit it delivers.
//!
//! A quantized tensor's bytes are two sections: the side information (scales, outliers), then
//! the payload (the codes, row after row, each element at a fixed bit offset). The channel
//! packetizes and may lose only the payload; the side information is sent protected (a radio
//! codes such control fields more strongly) and counted in air time. A row is the last
//! dimension of the shape.

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use half::{bf16, f16};

use crate::codec;
use crate::error::{Error, Result};

/// Element type on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
pub enum WireDType {
    #[default]
    F32,
    F16,
    BF16,
    /// int8, symmetric, one f32 scale per row.
    I8,
    /// int4, symmetric, one f16 scale per group of [`codec::GROUP`] elements.
    I4,
    /// [`Self::I8`] after the row's [`codec::OUTLIERS`] largest |x| are sent apart in f16.
    I8Outlier,
    /// [`Self::I4`] after the row's [`codec::OUTLIERS`] largest |x| are sent apart in f16.
    I4Outlier,
}

impl WireDType {
    pub const ALL: [WireDType; 7] = [Self::F32, Self::F16, Self::BF16, Self::I8, Self::I4, Self::I8Outlier, Self::I4Outlier];

    /// Bits of one element's code in the payload.
    pub fn bits(self) -> usize {
        match self {
            Self::F32 => 32,
            Self::F16 | Self::BF16 => 16,
            Self::I8 | Self::I8Outlier => 8,
            Self::I4 | Self::I4Outlier => 4,
        }
    }

    /// Bytes of one element for the value dtypes (f32 4, f16/bf16 2); quantized dtypes round up.
    pub fn size(self) -> usize {
        self.bits().div_ceil(8)
    }

    /// True for f32, f16 and bf16, whose elements are numbers an analog link can perturb.
    pub fn is_value(self) -> bool {
        matches!(self, Self::F32 | Self::F16 | Self::BF16)
    }

    /// The dtype moved KV caches and replayed states travel in when activations use this one:
    /// itself for value dtypes, f16 for the quantized codecs (the codecs are for hidden states).
    pub fn for_caches(self) -> Self {
        if self.is_value() { self } else { Self::F16 }
    }

    /// Bytes of side information per row of `n` elements (0 for value dtypes).
    pub fn side_bytes_per_row(self, n: usize) -> usize {
        codec::side_bytes_per_row(self, n)
    }

    /// Payload bytes per row of `n` elements.
    pub fn payload_bytes_per_row(self, n: usize) -> usize {
        (n * self.bits()).div_ceil(8)
    }

    /// Total bytes of a tensor of `shape`, or `None` on overflow.
    pub fn tensor_bytes(self, shape: &[usize]) -> Option<usize> {
        let elems = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))?;
        if self.is_value() {
            return elems.checked_mul(self.size());
        }
        let n = *shape.last()?;
        let rows = elems.checked_div(n).unwrap_or(0);
        rows.checked_mul(self.side_bytes_per_row(n).checked_add(self.payload_bytes_per_row(n))?)
    }
}

impl fmt::Display for WireDType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::BF16 => "bf16",
            Self::I8 => "int8",
            Self::I4 => "int4",
            Self::I8Outlier => "int8-outlier",
            Self::I4Outlier => "int4-outlier",
        })
    }
}

impl FromStr for WireDType {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let s = s.to_ascii_lowercase();
        Self::ALL.into_iter().find(|d| d.to_string() == s).ok_or_else(|| {
            Error::InvalidArgument(format!("unknown wire dtype {s:?}; expected f32, f16, bf16, int8, int4, int8-outlier or int4-outlier"))
        })
    }
}

/// A dense tensor whose byte length is checked against its dtype and shape.
#[derive(Debug, Clone, PartialEq)]
pub struct WireTensor {
    dtype: WireDType,
    shape: Vec<usize>,
    data: Bytes,
}

impl WireTensor {
    pub fn new(dtype: WireDType, shape: Vec<usize>, data: Bytes) -> Result<Self> {
        if !dtype.is_value() && shape.is_empty() {
            return Err(Error::InvalidArgument(format!("a {dtype} tensor needs at least one dimension (its rows)")));
        }
        let expected = dtype.tensor_bytes(&shape);
        if expected != Some(data.len()) {
            return Err(Error::InvalidArgument(format!(
                "tensor of shape {shape:?} and dtype {dtype} needs {} bytes, got {}",
                expected.map_or("more than usize::MAX".to_string(), |e| e.to_string()),
                data.len()
            )));
        }
        Ok(Self { dtype, shape, data })
    }

    /// Encodes f32 values of `shape` in `dtype` (quantizing for the quantized dtypes).
    pub fn from_f32(dtype: WireDType, shape: Vec<usize>, values: &[f32]) -> Result<Self> {
        let elems: usize = shape.iter().product();
        if elems != values.len() {
            return Err(Error::InvalidArgument(format!("shape {shape:?} holds {elems} values, got {}", values.len())));
        }
        let mut data = Vec::with_capacity(dtype.tensor_bytes(&shape).unwrap_or(0));
        match dtype {
            WireDType::F32 => values.iter().for_each(|v| data.extend_from_slice(&v.to_le_bytes())),
            WireDType::F16 => values.iter().for_each(|v| data.extend_from_slice(&f16::from_f32(*v).to_le_bytes())),
            WireDType::BF16 => values.iter().for_each(|v| data.extend_from_slice(&bf16::from_f32(*v).to_le_bytes())),
            _ => codec::encode(dtype, *shape.last().unwrap_or(&0), values, &mut data),
        }
        Self::new(dtype, shape, data.into())
    }

    /// The values as f32, whatever the wire dtype (dequantized for the quantized ones).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        let d = &self.data;
        match self.dtype {
            WireDType::F32 => d.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            WireDType::F16 => d.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            WireDType::BF16 => d.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            _ => codec::decode(self.dtype, self.row_len(), d),
        }
    }

    /// Elements in the tensor.
    pub fn elements(&self) -> usize {
        self.shape.iter().product()
    }

    /// Elements per row (the last dimension).
    pub fn row_len(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }

    /// Byte range of the side information (empty for value dtypes); the payload follows it.
    pub fn side_len(&self) -> usize {
        let n = self.row_len();
        self.elements().checked_div(n).map_or(0, |rows| rows * self.dtype.side_bytes_per_row(n))
    }

    /// Zeroes the payload codes of the elements whose bit is set in `erased` (one bit per element,
    /// LSB first): a lost packet's codes are gone, and code 0 decodes to 0 in every dtype.
    pub fn zero_elements(&mut self, erased: &[u8]) {
        if !erased.iter().any(|&b| b != 0) {
            return;
        }
        let side = self.side_len();
        let bits = self.dtype.bits();
        let n = self.row_len();
        let row_payload = self.dtype.payload_bytes_per_row(n);
        let mut data = self.data.to_vec();
        for e in 0..self.elements() {
            if erased.get(e / 8).is_some_and(|b| b & (1 << (e % 8)) != 0) {
                let (row, col) = (e / n, e % n);
                let bit = (side + row * row_payload) * 8 + col * bits;
                if bits >= 8 {
                    data[bit / 8..bit / 8 + bits / 8].fill(0);
                } else {
                    data[bit / 8] &= !(((1u16 << bits) - 1) << (bit % 8)) as u8;
                }
            }
        }
        self.data = data.into();
    }

    pub fn dtype(&self) -> WireDType {
        self.dtype
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn data(&self) -> &Bytes {
        &self.data
    }

    pub fn into_parts(self) -> (WireDType, Vec<usize>, Bytes) {
        (self.dtype, self.shape, self.data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_round_trip_is_exact() {
        let v: Vec<f32> = (0..24).map(|i| (i as f32 * 0.731).sin() * 1e3 + f32::EPSILON).collect();
        let w = WireTensor::from_f32(WireDType::F32, vec![1, 4, 6], &v).unwrap();
        assert_eq!(w.data().len(), 96);
        assert_eq!(w.to_f32_vec(), v);
    }

    #[test]
    fn half_precision_halves_bytes_within_rounding() {
        let v: Vec<f32> = (0..10).map(|i| i as f32 / 3.0).collect();
        for (dtype, rel) in [(WireDType::F16, 2f32.powi(-11)), (WireDType::BF16, 2f32.powi(-8))] {
            let w = WireTensor::from_f32(dtype, vec![2, 5], &v).unwrap();
            assert_eq!(w.data().len(), 20);
            for (a, b) in v.iter().zip(w.to_f32_vec()) {
                assert!((a - b).abs() <= a.abs() * rel, "{dtype}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn length_must_match_dtype_and_shape() {
        let e = WireTensor::new(WireDType::F16, vec![2, 3], Bytes::from(vec![0u8; 10])).unwrap_err();
        assert_eq!(e.to_string(), "invalid argument: tensor of shape [2, 3] and dtype f16 needs 12 bytes, got 10");
        let e = WireTensor::new(WireDType::F32, vec![usize::MAX, 2], Bytes::new()).unwrap_err();
        assert!(e.to_string().contains("more than usize::MAX"), "{e}");
        // int8: 4 bytes of scale + 3 codes per row.
        let e = WireTensor::new(WireDType::I8, vec![2, 3], Bytes::from(vec![0u8; 13])).unwrap_err();
        assert!(e.to_string().contains("dtype int8 needs 14 bytes, got 13"), "{e}");
        assert!(WireTensor::new(WireDType::I4, vec![], Bytes::new()).is_err());
    }

    #[test]
    fn dtype_names_parse() {
        assert_eq!("F16".parse::<WireDType>().unwrap(), WireDType::F16);
        assert_eq!("int4-outlier".parse::<WireDType>().unwrap(), WireDType::I4Outlier);
        assert!("f8".parse::<WireDType>().unwrap_err().to_string().contains("unknown wire dtype \"f8\""));
        for d in WireDType::ALL {
            assert_eq!(d.to_string().parse::<WireDType>().unwrap(), d);
        }
    }

    #[test]
    fn zeroing_elements_touches_only_their_codes() {
        let v: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin()).collect();
        for dtype in WireDType::ALL {
            let mut w = WireTensor::from_f32(dtype, vec![2, 32], &v).unwrap();
            let before = w.to_f32_vec();
            let mut mask = vec![0u8; 8];
            for e in [0usize, 5, 33, 63] {
                mask[e / 8] |= 1 << (e % 8);
            }
            w.zero_elements(&mask);
            let after = w.to_f32_vec();
            for e in 0..64 {
                let erased = [0, 5, 33, 63].contains(&e);
                if erased {
                    // An outlier's value lives in the side information, which is never lost.
                    assert!(after[e] == 0.0 || (!dtype.is_value() && after[e] == before[e] && dtype.to_string().ends_with("outlier")), "{dtype} element {e}: {}", after[e]);
                } else {
                    assert_eq!(after[e], before[e], "{dtype} element {e}");
                }
            }
        }
    }
}
