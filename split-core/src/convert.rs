//! Conversions between the generated `splitinfer.v1` types and domain types. Generated types stop
//! at the service boundary; everything past it works with checked values.

use splitinfer_proto::v1 as pb;

use crate::error::{Error, Result};
use crate::sampling::SamplingConfig;
use crate::wire::{WireDType, WireTensor};

impl From<WireDType> for pb::DType {
    fn from(d: WireDType) -> Self {
        match d {
            WireDType::F32 => pb::DType::DtypeF32,
            WireDType::F16 => pb::DType::DtypeF16,
            WireDType::BF16 => pb::DType::DtypeBf16,
        }
    }
}

impl TryFrom<i32> for WireDType {
    type Error = Error;

    fn try_from(v: i32) -> Result<Self> {
        match pb::DType::try_from(v) {
            Ok(pb::DType::DtypeF32) => Ok(Self::F32),
            Ok(pb::DType::DtypeF16) => Ok(Self::F16),
            Ok(pb::DType::DtypeBf16) => Ok(Self::BF16),
            _ => Err(Error::InvalidArgument(format!("tensor dtype {v} is not one of f32 (1), f16 (2), bf16 (3)"))),
        }
    }
}

impl TryFrom<pb::Tensor> for WireTensor {
    type Error = Error;

    /// Checks that the byte length equals the product of the shape times the dtype's size.
    fn try_from(t: pb::Tensor) -> Result<Self> {
        let dtype = WireDType::try_from(t.dtype)?;
        let shape = t
            .shape
            .iter()
            .map(|&d| usize::try_from(d).map_err(|_| Error::InvalidArgument(format!("tensor dimension {d} is too large"))))
            .collect::<Result<Vec<_>>>()?;
        WireTensor::new(dtype, shape, t.data)
    }
}

impl From<WireTensor> for pb::Tensor {
    fn from(t: WireTensor) -> Self {
        let (dtype, shape, data) = t.into_parts();
        pb::Tensor { dtype: pb::DType::from(dtype) as i32, shape: shape.into_iter().map(|d| d as u64).collect(), data }
    }
}

impl From<SamplingConfig> for pb::Sampling {
    fn from(s: SamplingConfig) -> Self {
        pb::Sampling {
            temperature: s.temperature,
            top_k: s.top_k.unwrap_or(0) as u32,
            top_p: s.top_p.unwrap_or(0.0),
            seed: s.seed,
        }
    }
}

impl TryFrom<pb::Sampling> for SamplingConfig {
    type Error = Error;

    fn try_from(s: pb::Sampling) -> Result<Self> {
        let c = SamplingConfig {
            temperature: s.temperature,
            top_k: (s.top_k > 0).then_some(s.top_k as usize),
            top_p: (s.top_p > 0.0 && s.top_p < 1.0).then_some(s.top_p),
            seed: s.seed,
        };
        c.validate()?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_round_trips_and_checks_length() {
        let w = WireTensor::new(WireDType::BF16, vec![1, 2, 3], vec![7u8; 12].into()).unwrap();
        let p: pb::Tensor = w.clone().into();
        assert_eq!(p.dtype, pb::DType::DtypeBf16 as i32);
        assert_eq!(WireTensor::try_from(p.clone()).unwrap(), w);
        let short = pb::Tensor { data: vec![0u8; 11].into(), ..p.clone() };
        assert!(WireTensor::try_from(short).unwrap_err().to_string().contains("needs 12 bytes, got 11"));
        let bad_dtype = pb::Tensor { dtype: 9, ..p };
        assert!(WireTensor::try_from(bad_dtype).unwrap_err().to_string().contains("tensor dtype 9"));
    }

    #[test]
    fn sampling_zero_means_no_cut() {
        let s = SamplingConfig::try_from(pb::Sampling { temperature: 0.7, top_k: 0, top_p: 1.0, seed: 3 }).unwrap();
        assert_eq!(s, SamplingConfig { temperature: 0.7, top_k: None, top_p: None, seed: 3 });
        assert!(SamplingConfig::try_from(pb::Sampling { temperature: -1.0, ..Default::default() }).is_err());
    }
}
