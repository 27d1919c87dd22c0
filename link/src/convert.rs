//! Conversions between the generated `splitinfer.v1` tensor types and the wire's domain types.
//! Generated types stop at the service boundary; everything past it works with checked values.

use splitinfer_proto::v1 as pb;

use crate::error::{Error, Result};
use crate::transform::{Concealment, LinkSetup, Normalization};
use crate::wire::{WireDType, WireTensor};

impl From<WireDType> for pb::DType {
    fn from(d: WireDType) -> Self {
        match d {
            WireDType::F32 => pb::DType::DtypeF32,
            WireDType::F16 => pb::DType::DtypeF16,
            WireDType::BF16 => pb::DType::DtypeBf16,
            WireDType::I8 => pb::DType::DtypeI8,
            WireDType::I4 => pb::DType::DtypeI4,
            WireDType::I8Outlier => pb::DType::DtypeI8Outlier,
            WireDType::I4Outlier => pb::DType::DtypeI4Outlier,
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
            Ok(pb::DType::DtypeI8) => Ok(Self::I8),
            Ok(pb::DType::DtypeI4) => Ok(Self::I4),
            Ok(pb::DType::DtypeI8Outlier) => Ok(Self::I8Outlier),
            Ok(pb::DType::DtypeI4Outlier) => Ok(Self::I4Outlier),
            _ => Err(Error::InvalidArgument(format!(
                "tensor dtype {v} is not one of f32 (1), f16 (2), bf16 (3), int8 (4), int4 (5), int8-outlier (6), int4-outlier (7)"
            ))),
        }
    }
}

impl TryFrom<pb::Tensor> for WireTensor {
    type Error = Error;

    /// Checks that the byte length is what the dtype and shape need.
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

impl From<Normalization> for pb::Normalization {
    fn from(n: Normalization) -> Self {
        match n {
            Normalization::Identity => Self::Identity,
            Normalization::Standardize => Self::Standardize,
            Normalization::Allocate => Self::Allocate,
            Normalization::Rotate => Self::Rotate,
        }
    }
}

impl From<Concealment> for pb::Concealment {
    fn from(c: Concealment) -> Self {
        match c {
            Concealment::Zero => Self::Zero,
            Concealment::Mean => Self::Mean,
        }
    }
}

impl LinkSetup {
    /// The setup an `Open` asks for, with the dtype its activations will carry.
    pub fn from_open(dtype: WireDType, normalization: i32, concealment: i32) -> Result<Self> {
        let normalization = match pb::Normalization::try_from(normalization) {
            Ok(pb::Normalization::Identity) => Normalization::Identity,
            Ok(pb::Normalization::Standardize) => Normalization::Standardize,
            Ok(pb::Normalization::Allocate) => Normalization::Allocate,
            Ok(pb::Normalization::Rotate) => Normalization::Rotate,
            Err(_) => return Err(Error::InvalidArgument(format!("normalization {normalization} is not one of identity (0), standardize (1), allocate (2), rotate (3)"))),
        };
        let concealment = match pb::Concealment::try_from(concealment) {
            Ok(pb::Concealment::Zero) => Concealment::Zero,
            Ok(pb::Concealment::Mean) => Concealment::Mean,
            Err(_) => return Err(Error::InvalidArgument(format!("concealment {concealment} is not one of zero (0), mean (1)"))),
        };
        Ok(Self { dtype, normalization, concealment })
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
        for d in WireDType::ALL {
            assert_eq!(WireDType::try_from(pb::DType::from(d) as i32).unwrap(), d);
        }
    }

    #[test]
    fn open_setup_values_are_checked() {
        let s = LinkSetup::from_open(WireDType::I8, 1, 1).unwrap();
        assert_eq!((s.normalization, s.concealment), (Normalization::Standardize, Concealment::Mean));
        assert!(LinkSetup::from_open(WireDType::F32, 5, 0).unwrap_err().to_string().contains("normalization 5 is not one of"));
        assert!(LinkSetup::from_open(WireDType::F32, 0, -1).unwrap_err().to_string().contains("concealment -1 is not one of"));
    }
}
