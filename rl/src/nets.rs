//! The small multilayer perceptrons every learner here uses (policy, value, Q and the reward
//! surrogate), on candle-nn, and their export to the plain-number layers of a policy file.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder, linear};

/// The nonlinearity between hidden layers (none after the last).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Tanh,
    Relu,
}

/// One dense layer as plain numbers: `y = W x + b`, `W` is `outputs × inputs`, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Dense {
    pub inputs: usize,
    pub outputs: usize,
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

/// `sizes[0] → sizes[1] → … → sizes[n]`, `activation` between the layers.
#[derive(Debug, Clone)]
pub struct Mlp {
    layers: Vec<Linear>,
    activation: Activation,
    sizes: Vec<usize>,
}

impl Mlp {
    /// Registers its variables under `vb` as `l0`, `l1`, … (weights with candle-nn's default
    /// initialisation).
    pub fn new(sizes: &[usize], activation: Activation, vb: VarBuilder) -> Result<Self> {
        assert!(sizes.len() >= 2, "an MLP needs an input and an output size");
        let layers = sizes
            .windows(2)
            .enumerate()
            .map(|(i, w)| linear(w[0], w[1], vb.pp(format!("l{i}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers, activation, sizes: sizes.to_vec() })
    }

    pub fn sizes(&self) -> &[usize] {
        &self.sizes
    }

    pub fn activation(&self) -> Activation {
        self.activation
    }

    /// The layers' current weights as plain numbers.
    pub fn export(&self) -> Result<Vec<Dense>> {
        self.layers
            .iter()
            .map(|l| {
                let w = l.weight();
                let (outputs, inputs) = w.dims2()?;
                let bias = match l.bias() {
                    Some(b) => b.to_vec1::<f32>()?,
                    None => vec![0.0; outputs],
                };
                Ok(Dense { inputs, outputs, weight: w.flatten_all()?.to_vec1::<f32>()?, bias })
            })
            .collect()
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        let last = self.layers.len() - 1;
        for (i, l) in self.layers.iter().enumerate() {
            h = l.forward(&h)?;
            if i < last {
                h = match self.activation {
                    Activation::Tanh => h.tanh()?,
                    Activation::Relu => h.relu()?,
                };
            }
        }
        Ok(h)
    }
}

/// The same forward pass on plain numbers (one input row), as the agent runs a policy file.
pub fn forward_plain(layers: &[Dense], activation: Activation, x: &[f32]) -> Vec<f32> {
    let mut h = x.to_vec();
    for (i, l) in layers.iter().enumerate() {
        let mut y: Vec<f32> = l.bias.clone();
        for (o, yo) in y.iter_mut().enumerate() {
            let row = &l.weight[o * l.inputs..(o + 1) * l.inputs];
            *yo += row.iter().zip(&h).map(|(w, v)| w * v).sum::<f32>();
        }
        if i + 1 < layers.len() {
            for v in &mut y {
                *v = match activation {
                    Activation::Tanh => v.tanh(),
                    Activation::Relu => v.max(0.0),
                };
            }
        }
        h = y;
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    #[test]
    fn exported_layers_compute_what_the_network_computes() {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        for act in [Activation::Tanh, Activation::Relu] {
            let net = Mlp::new(&[3, 16, 16, 5], act, vb.pp(format!("{act:?}"))).unwrap();
            let x = [0.3f32, -1.2, 2.0];
            let y = net.forward(&Tensor::new(&[x], &Device::Cpu).unwrap()).unwrap().to_vec2::<f32>().unwrap();
            let plain = forward_plain(&net.export().unwrap(), act, &x);
            assert_eq!(plain.len(), 5);
            for (a, b) in y[0].iter().zip(&plain) {
                assert!((a - b).abs() < 1e-5, "{a} vs {b}");
            }
        }
    }
}
