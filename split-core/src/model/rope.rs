//! Rotary position embedding tables, shared by every layer of a model.

use candle_core::{DType, Device, Tensor};

use crate::error::Result;

/// cos/sin of `position × θ^(-2i/d)` for every position up to the context length.
#[derive(Debug, Clone)]
pub struct RopeTable {
    cos: Tensor,
    sin: Tensor,
    neox: bool,
}

impl RopeTable {
    pub fn new(head_dim: usize, theta: f32, max_positions: usize, neox: bool, device: &Device) -> Result<Self> {
        let inv_freq: Vec<f32> = (0..head_dim / 2)
            .map(|i| 1.0 / theta.powf(2.0 * i as f32 / head_dim as f32))
            .collect();
        let inv_freq = Tensor::from_vec(inv_freq, (1, head_dim / 2), device)?;
        let positions = Tensor::arange(0u32, max_positions as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((max_positions, 1))?;
        let angles = positions.broadcast_mul(&inv_freq)?;
        Ok(Self { cos: angles.cos()?, sin: angles.sin()?, neox })
    }

    /// Rotates `x` of shape `[batch, heads, seq, head_dim]` whose first row is at `position`.
    pub fn apply(&self, x: &Tensor, position: usize) -> Result<Tensor> {
        let seq = x.dim(2)?;
        let cos = self.cos.narrow(0, position, seq)?;
        let sin = self.sin.narrow(0, position, seq)?;
        let x = x.contiguous()?;
        let y = if self.neox {
            candle_nn::rotary_emb::rope(&x, &cos, &sin)?
        } else {
            candle_nn::rotary_emb::rope_i(&x, &cos, &sin)?
        };
        Ok(y)
    }
}
