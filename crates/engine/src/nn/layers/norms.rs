//! RMS, layer and group norms.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};

use super::like;
use crate::nn::rounded::Activations;

/// RMS norm over the last dimension with a learned scale, no mean and no bias (T5's layer norm,
/// diffusers' `RMSNorm`): computed in f32, then back in the input's dtype.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    pub(super) weight: Tensor,
    pub(super) eps: f64,
}

pub fn rms_norm(size: usize, eps: f64, vb: VarBuilder) -> Result<RmsNorm> {
    Ok(RmsNorm {
        weight: vb.get(size, "weight")?,
        eps,
    })
}

impl Module for RmsNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.dtype() == DType::F32 && crate::nn::own_kernels(x.device()) {
            // candle's fused kernel: one pass per row, rows in parallel (five tensor ops
            // otherwise, which Z-Image's per-head q/k norms over 4096 tokens feel).
            return candle_nn::ops::rms_norm(
                &x.contiguous()?,
                &like(&self.weight, x)?,
                self.eps as f32,
            );
        }
        let wide = x.to_dtype(DType::F32)?;
        let variance = wide.sqr()?.mean_keepdim(candle_core::D::Minus1)?;
        let normed = wide
            .broadcast_div(&(variance + self.eps)?.sqrt()?)?
            .to_dtype(x.dtype())?;
        normed.broadcast_mul(&like(&self.weight, x)?)
    }
}

/// LayerNorm over the last dimension, with a learned scale and shift.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub(super) weight: Tensor,
    pub(super) bias: Tensor,
    pub(super) eps: f64,
}

pub fn layer_norm(size: usize, eps: f64, vb: VarBuilder) -> Result<LayerNorm> {
    Ok(LayerNorm {
        weight: vb.get_with_hints(size, "weight", Init::Const(1.))?,
        bias: vb.get_with_hints(size, "bias", Init::Const(0.))?,
        eps,
    })
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_as(x, false)?.to_tensor()
    }
}

impl LayerNorm {
    /// The norm of `x`, as rows rounded to bf16 when `rounded` (for linear layers that
    /// [take them](super::Linear::takes_rounded)) and `x` is f32 on the CPU, else as a tensor. Rows
    /// in parallel on the CPU in f32 ([`crate::nn::norm::layer_norm_row`]); candle's elsewhere.
    pub fn forward_as(&self, x: &Tensor, rounded: bool) -> Result<Activations> {
        let cols = x.dim(candle_core::D::Minus1)?;
        let rows = x.elem_count() / cols.max(1);
        let cpu_f32 = crate::nn::own_kernels(x.device()) && x.dtype() == DType::F32;
        if !cpu_f32 || cols == 0 {
            let norm =
                candle_nn::LayerNorm::new(like(&self.weight, x)?, like(&self.bias, x)?, self.eps);
            return Ok(Activations::Tensor(norm.forward(x)?));
        }
        let weight = self.weight.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let bias = self.bias.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let eps = self.eps as f32;
        let normed = crate::nn::cpu_f32(x, |data| {
            let row = |r: usize, dst: &mut [f32]| {
                crate::nn::norm::layer_norm_row(&data[r * cols..][..cols], dst, &weight, &bias, eps)
            };
            if rounded {
                let rows = crate::nn::rounded::Rounded::from_f32_rows(rows, cols, row);
                return Ok(Activations::Rounded {
                    rows,
                    dims: x.dims().to_vec(),
                });
            }
            let rows_per_task = (ROW_TASK_VALUES / cols).max(1);
            let out =
                crate::nn::buffers::par_filled(rows * cols, rows_per_task * cols, |task, chunk| {
                    for (i, dst) in chunk.chunks_exact_mut(cols).enumerate() {
                        row(task * rows_per_task + i, dst);
                    }
                });
            Ok(Activations::Tensor(Tensor::from_vec(
                out,
                x.dims(),
                x.device(),
            )?))
        });
        match normed {
            Some(normed) => normed?,
            None => candle_core::bail!("layer norm: the input is not f32 on the CPU"),
        }
    }
}

/// Values of rows a parallel task of a row-wise kernel takes.
const ROW_TASK_VALUES: usize = 16 * 1024;

/// GroupNorm over `(B, C, ...)`, with a learned per-channel scale and shift.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    channels: usize,
    groups: usize,
    eps: f64,
}

pub fn group_norm(groups: usize, channels: usize, eps: f64, vb: VarBuilder) -> Result<GroupNorm> {
    if !channels.is_multiple_of(groups) {
        candle_core::bail!("GroupNorm: {channels} channels do not split into {groups} groups");
    }
    Ok(GroupNorm {
        weight: vb.get_with_hints(channels, "weight", Init::Const(1.))?,
        bias: vb.get_with_hints(channels, "bias", Init::Const(0.))?,
        channels,
        groups,
        eps,
    })
}

impl GroupNorm {
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> &Tensor {
        &self.bias
    }

    pub fn groups(&self) -> usize {
        self.groups
    }

    pub fn eps(&self) -> f64 {
        self.eps
    }
}

impl Module for GroupNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // One pass in parallel on the CPU; candle's is eight tensor ops.
        match crate::nn::norm::fused(self, x, false)? {
            Some(y) => Ok(y),
            None => self.forward_candle(x),
        }
    }
}

impl GroupNorm {
    /// candle's group norm, for comparison and for other devices and dtypes.
    pub fn forward_candle(&self, x: &Tensor) -> Result<Tensor> {
        let (weight, bias) = (like(&self.weight, x)?, like(&self.bias, x)?);
        candle_nn::GroupNorm::new(weight, bias, self.channels, self.groups, self.eps)?.forward(x)
    }
}
