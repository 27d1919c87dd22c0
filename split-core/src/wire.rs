//! Tensors on the wire ([`splitinfer_link::wire`]), and their conversion from and to candle
//! tensors, which only the model's side needs.

use candle_core::{DType, Device, Tensor};

use crate::error::Result;
pub use splitinfer_link::wire::{WireDType, WireTensor};

/// Candle tensors in and out of wire tensors.
pub trait CandleWire: Sized {
    /// Encodes an f32 tensor in `dtype`.
    fn from_tensor(t: &Tensor, dtype: WireDType) -> Result<Self>;
    /// Decodes into an f32 tensor.
    fn to_tensor(&self, device: &Device) -> Result<Tensor>;
}

impl CandleWire for WireTensor {
    fn from_tensor(t: &Tensor, dtype: WireDType) -> Result<Self> {
        let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(WireTensor::from_f32(dtype, t.dims().to_vec(), &values)?)
    }

    fn to_tensor(&self, device: &Device) -> Result<Tensor> {
        Ok(Tensor::from_vec(self.to_f32_vec(), self.shape(), device)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_tensor_round_trip_is_exact() {
        let v: Vec<f32> = (0..24).map(|i| (i as f32 * 0.731).sin() * 1e3 + f32::EPSILON).collect();
        let t = Tensor::from_vec(v.clone(), (1, 4, 6), &Device::Cpu).unwrap();
        let w = WireTensor::from_tensor(&t, WireDType::F32).unwrap();
        assert_eq!(w.to_tensor(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(), v);
    }
}
