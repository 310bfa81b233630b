//! Sinusoidal timestep embeddings and the MLP that widens them (`TimestepEmbedding`), shared
//! by the UNet and the transformer families.

use candle_core::{Device, Module, Result, Tensor};

use crate::nn::layers::{self, Linear, Weights};

/// diffusers' `get_timestep_embedding` for one value per batch row, computed in f32 like
/// the reference so that large timesteps give the same angles.
pub fn sinusoidal(
    values: &[f64],
    dim: usize,
    flip_sin_to_cos: bool,
    shift: f64,
    device: &Device,
) -> Result<Tensor> {
    let half = dim / 2;
    let denominator = half as f32 - shift as f32;
    let frequencies: Vec<f32> = (0..half)
        .map(|i| ((-(10000f32.ln())) * i as f32 / denominator).exp())
        .collect();
    let mut data = Vec::with_capacity(values.len() * dim);
    for &value in values {
        let angles: Vec<f32> = frequencies.iter().map(|f| value as f32 * f).collect();
        let sin = angles.iter().map(|a| a.sin());
        let cos = angles.iter().map(|a| a.cos());
        if flip_sin_to_cos {
            data.extend(cos.chain(sin));
        } else {
            data.extend(sin.chain(cos));
        }
        // Odd widths are zero-padded, as in the reference.
        data.extend(std::iter::repeat_n(0.0, dim - 2 * half));
    }
    Tensor::from_vec(data, (values.len(), dim), device)
}

pub struct TimestepEmbedding {
    linear_1: Linear,
    linear_2: Linear,
}

impl TimestepEmbedding {
    pub fn new<'a>(in_dim: usize, out_dim: usize, vb: impl Into<Weights<'a>>) -> Result<Self> {
        let vb = vb.into();
        Ok(Self {
            linear_1: layers::linear(in_dim, out_dim, vb.pp("linear_1"))?,
            linear_2: layers::linear(out_dim, out_dim, vb.pp("linear_2"))?,
        })
    }
}

impl Module for TimestepEmbedding {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.linear_2.forward(&self.linear_1.forward(x)?.silu()?)
    }
}
