//! Tensors as they travel between processes: little-endian bytes with an explicit dtype and shape.
//!
//! f32 on the wire is exact, so split inference over the network reproduces the monolithic model
//! bit for bit; f16 and bf16 halve the bytes at a small cost in accuracy.

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use candle_core::{DType, Device, Tensor};
use half::{bf16, f16};

use crate::error::{Error, Result};

/// Element type on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum WireDType {
    #[default]
    F32,
    F16,
    BF16,
}

impl WireDType {
    pub fn size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
        }
    }
}

impl fmt::Display for WireDType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::BF16 => "bf16",
        })
    }
}

impl FromStr for WireDType {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            "bf16" => Ok(Self::BF16),
            _ => Err(Error::InvalidArgument(format!("unknown wire dtype {s:?}; expected f32, f16 or bf16"))),
        }
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
        let elems = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        let expected = elems.and_then(|e| e.checked_mul(dtype.size()));
        if expected != Some(data.len()) {
            return Err(Error::InvalidArgument(format!(
                "tensor of shape {shape:?} and dtype {dtype} needs {} bytes, got {}",
                expected.map_or("more than usize::MAX".to_string(), |e| e.to_string()),
                data.len()
            )));
        }
        Ok(Self { dtype, shape, data })
    }

    /// Encodes an f32 tensor in `dtype`.
    pub fn from_tensor(t: &Tensor, dtype: WireDType) -> Result<Self> {
        let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        Self::from_f32(dtype, t.dims().to_vec(), &values)
    }

    /// Encodes f32 values of `shape` in `dtype`.
    pub fn from_f32(dtype: WireDType, shape: Vec<usize>, values: &[f32]) -> Result<Self> {
        let mut data = Vec::with_capacity(values.len() * dtype.size());
        match dtype {
            WireDType::F32 => values.iter().for_each(|v| data.extend_from_slice(&v.to_le_bytes())),
            WireDType::F16 => values.iter().for_each(|v| data.extend_from_slice(&f16::from_f32(*v).to_le_bytes())),
            WireDType::BF16 => values.iter().for_each(|v| data.extend_from_slice(&bf16::from_f32(*v).to_le_bytes())),
        }
        Self::new(dtype, shape, data.into())
    }

    /// Decodes into an f32 tensor.
    pub fn to_tensor(&self, device: &Device) -> Result<Tensor> {
        Ok(Tensor::from_vec(self.to_f32_vec(), self.shape.as_slice(), device)?)
    }

    /// The values as f32, whatever the wire dtype.
    pub fn to_f32_vec(&self) -> Vec<f32> {
        let d = &self.data;
        match self.dtype {
            WireDType::F32 => d.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            WireDType::F16 => d.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            WireDType::BF16 => d.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        }
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
        let t = Tensor::from_vec(v.clone(), (1, 4, 6), &Device::Cpu).unwrap();
        let w = WireTensor::from_tensor(&t, WireDType::F32).unwrap();
        assert_eq!(w.data().len(), 96);
        assert_eq!(w.to_tensor(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(), v);
    }

    #[test]
    fn half_precision_halves_bytes_within_rounding() {
        let v: Vec<f32> = (0..10).map(|i| i as f32 / 3.0).collect();
        let t = Tensor::from_vec(v.clone(), (2, 5), &Device::Cpu).unwrap();
        for (dtype, rel) in [(WireDType::F16, 2f32.powi(-11)), (WireDType::BF16, 2f32.powi(-8))] {
            let w = WireTensor::from_tensor(&t, dtype).unwrap();
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
    }

    #[test]
    fn dtype_names_parse() {
        assert_eq!("F16".parse::<WireDType>().unwrap(), WireDType::F16);
        assert!("f8".parse::<WireDType>().unwrap_err().to_string().contains("unknown wire dtype \"f8\""));
    }
}
