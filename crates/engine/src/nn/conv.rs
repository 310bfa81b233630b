//! The 3x3 "same" convolution used throughout the UNet and the VAE, with fast CPU paths.
//!
//! On CPU in f32: once the image has enough 4x4 tiles to keep the GEMMs busy it runs as
//! Winograd F(4x4, 3x3) ([`super::winograd`], four times fewer multiplies), below that as a
//! single im2col GEMM on the weight as stored ([`super::im2col`]). 1x1 convolutions (the
//! ResNet shortcuts) are one GEMM on the NCHW data, where candle copies the input and the
//! output element by element. Everything else (GPU, half-precision activations) goes to candle.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Module, Result, Shape, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

use super::layers::{self, Conv2d};
use super::{im2col, winograd};
use crate::lora::hook::{self, Tag};

/// From this many output tiles on, Winograd beats one im2col GEMM (the weight transform and
/// narrow GEMMs cost more on the UNet's 16x16 and 8x8 levels); measured with
/// `cargo bench -p seedbed-engine --bench kernels -- conv3x3`.
const MIN_WINOGRAD_TILES: usize = 64;

/// A stride-1 convolution that keeps the image size: 3x3 with padding 1 ([`Conv3x3`]), or
/// 1x1 ([`Conv1x1`]).
pub struct SameConv {
    conv: Conv2d,
    kernel: usize,
    in_channels: usize,
    out_channels: usize,
    /// Where a LoRA finds a 1x1 convolution (`crate::lora::hook`); LoRAs on 3x3 ones
    /// (LoCon) are refused when the file is read, so those carry none.
    tag: Option<Tag>,
}

pub type Conv3x3 = SameConv;
pub type Conv1x1 = SameConv;

impl SameConv {
    /// A `kernel` x `kernel` convolution (1 or 3) with the padding that keeps the size.
    pub fn new(kernel: usize, cin: usize, cout: usize, vb: VarBuilder) -> Result<Self> {
        if kernel != 1 && kernel != 3 {
            candle_core::bail!("SameConv supports 1x1 and 3x3 kernels, not {kernel}x{kernel}");
        }
        let config = Conv2dConfig {
            padding: kernel / 2,
            ..Default::default()
        };
        let tag = if kernel == 1 {
            hook::tag_for(&vb.prefix())
        } else {
            None
        };
        Ok(Self {
            tag,
            conv: layers::conv2d(cin, cout, kernel, config, vb)?,
            kernel,
            in_channels: cin,
            out_channels: cout,
        })
    }

    /// candle's own convolution, for comparison.
    pub fn forward_candle(&self, x: &Tensor) -> Result<Tensor> {
        self.conv.forward(x)
    }

    fn runs_on_cpu_kernels(&self, x: &Tensor) -> bool {
        x.device().is_cpu() && x.dtype() == DType::F32 && x.rank() == 4
    }
}

impl Module for SameConv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let merged = hook::merged_weight(
            self.tag.as_ref(),
            || Ok(self.conv.weight().clone()),
            hook::Stored::Conv1x1,
        )?;
        self.forward_with(x, merged.as_ref().unwrap_or(self.conv.weight()))
    }
}

impl SameConv {
    /// The convolution with `weight`: its own, or one merged with LoRAs.
    fn forward_with(&self, x: &Tensor, weight: &Tensor) -> Result<Tensor> {
        if !self.runs_on_cpu_kernels(x) {
            return self.conv.forward_with(x, weight);
        }
        let (batch, _, height, width) = x.dims4()?;
        let op = CpuConv {
            kernel: self.kernel,
            shape: winograd::Shape {
                batch,
                in_channels: self.in_channels,
                out_channels: self.out_channels,
                height,
                width,
            },
            bias: match self.conv.bias() {
                Some(b) => Some(b.to_dtype(DType::F32)?.to_vec1::<f32>()?),
                None => None,
            },
        };
        // Half-precision weights (see `layers`) are widened here, once per call.
        let weight = layers::like(weight, x)?.contiguous()?;
        x.contiguous()?.apply_op2_no_bwd(&weight, &op)
    }
}

struct CpuConv {
    kernel: usize,
    shape: winograd::Shape,
    bias: Option<Vec<f32>>,
}

impl CpuConv {
    fn uses_winograd(&self) -> bool {
        self.shape.tiles() >= MIN_WINOGRAD_TILES
    }
}

/// The contiguous f32 data of a CPU tensor.
fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("conv3x3 takes f32, got {:?}", storage.dtype());
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("conv3x3 needs contiguous tensors"),
    }
}

impl CustomOp2 for CpuConv {
    fn name(&self) -> &'static str {
        "same-conv"
    }

    fn cpu_fwd(
        &self,
        input: &CpuStorage,
        input_layout: &Layout,
        weight: &CpuStorage,
        weight_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let s = self.shape;
        let input = contiguous_f32(input, input_layout)?;
        let weight = contiguous_f32(weight, weight_layout)?;
        let bias = self.bias.as_deref();
        let out = if self.kernel == 1 {
            im2col::conv1x1(input, s, weight, bias)
        } else if self.uses_winograd() {
            let u = winograd::transform_weights(weight, s.out_channels, s.in_channels);
            winograd::conv3x3(input, s, &u, bias)
        } else {
            im2col::conv3x3(input, s, weight, bias)
        };
        let shape = Shape::from((s.batch, s.out_channels, s.height, s.width));
        Ok((CpuStorage::F32(out), shape))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::VarMap;

    /// Both CPU paths agree with candle's convolution: a latent big enough for Winograd
    /// (10x9 tiles), and one small enough for im2col, both batched and non-contiguous.
    #[test]
    fn cpu_paths_match_candle() -> Result<()> {
        for (side_h, side_w) in [(40, 36), (12, 10)] {
            check_against_candle(3, side_h, side_w)?;
        }
        check_against_candle(1, 9, 11)
    }

    fn check_against_candle(kernel: usize, height: usize, width: usize) -> Result<()> {
        let map = VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
        let conv = SameConv::new(kernel, 6, 10, vb)?;
        let x =
            Tensor::randn(0f32, 1., (2, height, width, 6), &Device::Cpu)?.permute((0, 3, 1, 2))?;
        let expected = conv.forward_candle(&x)?;
        let got = conv.forward(&x)?;
        assert_eq!(got.dims(), expected.dims());
        let diff = (expected - got)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-4, "max diff {diff}");
        Ok(())
    }
}
