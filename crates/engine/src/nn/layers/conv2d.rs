//! The general 2-D convolution.

use std::sync::Arc;

use candle_core::{DType, Device, Module, Result, Storage, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

use super::{add_to_rows, like, like_opt};
use crate::nn::gemm::{self, View};

/// A general 2-D convolution (strides, other kernels); the stride-1 "same" ones the models
/// use most are [`crate::nn::conv::SameConv`], which has faster CPU paths.
#[derive(Debug, Clone)]
pub struct Conv2d {
    pub(super) weight: Tensor,
    pub(super) bias: Option<Tensor>,
    config: Conv2dConfig,
    /// A bf16 CPU weight packed for the bf16 product, where the CPU has one: the layer runs as
    /// pixel rows ([`crate::nn::im2col::pixel_rows`]) times it (the UNet's stride-2 downsamplers,
    /// which candle ran in f32 on a weight widened every call).
    pub(super) packed: Option<Arc<crate::nn::bf16::Packed>>,
}

pub fn conv2d(
    cin: usize,
    cout: usize,
    kernel: usize,
    config: Conv2dConfig,
    vb: VarBuilder,
) -> Result<Conv2d> {
    let mut conv = conv2d_unpacked(cin, cout, kernel, config, vb)?;
    let weight = &conv.weight;
    let plain = config.groups == 1 && config.dilation == 1;
    if plain
        && weight.dtype() == DType::BF16
        && crate::nn::own_kernels(weight.device())
        && crate::nn::bf16::available()
    {
        let values = weight.flatten_all()?.to_vec1::<half::bf16>()?;
        let inner = cin * kernel * kernel;
        let packed = crate::nn::bf16::Packed::from_stored(&values, cout, inner);
        conv.packed = Some(Arc::new(packed));
    }
    Ok(conv)
}

/// [`conv2d`] without the bf16 packing, for a layer that lays its weight out itself
/// ([`crate::nn::conv::SameConv`]).
pub fn conv2d_unpacked(
    cin: usize,
    cout: usize,
    kernel: usize,
    config: Conv2dConfig,
    vb: VarBuilder,
) -> Result<Conv2d> {
    let layer = candle_nn::conv2d(cin, cout, kernel, config, vb)?;
    Ok(Conv2d {
        weight: layer.weight().clone(),
        bias: layer.bias().cloned(),
        config,
        packed: None,
    })
}

impl Conv2d {
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let on_cpu_f32 =
            crate::nn::own_kernels(x.device()) && x.dtype() == DType::F32 && x.rank() == 4;
        if let Some(packed) = &self.packed
            && on_cpu_f32
        {
            // The pixel rows rounded to bf16 as they are made, the bias where the sums start.
            return self.pixel_rows_forward(x, |image, dims, window, bias| {
                let pixels = window.out(dims.1) * window.out(dims.2);
                let inner = dims.0 * window.kernel * window.kernel;
                let rows = crate::nn::rounded::Rounded::from_f32_rows(pixels, inner, |p, row| {
                    crate::nn::im2col::pixel_row(image, dims, window, p, row)
                });
                let lhs = crate::nn::bf16::Lhs::Rounded(&rows);
                crate::nn::bf16::linear_packed(lhs, packed, bias).ok_or_else(|| {
                    candle_core::Error::Msg(
                        "conv2d: the bf16 product is not available on this CPU".into(),
                    )
                })
            });
        }
        let plain = self.config.groups == 1 && self.config.dilation == 1;
        if on_cpu_f32 && plain && self.weight.dtype() == DType::F32 {
            // candle's CPU conv2d multiplies small tiles one at a time: the UNet's stride-2
            // downsamplers took 0.6 s of an SDXL call at 1024x1024 that one product does in
            // a fraction of it.
            let (storage, layout) = self.weight.storage_and_layout();
            let Storage::Cpu(storage) = &*storage else {
                candle_core::bail!("conv2d: the weight is not on the CPU");
            };
            let values = crate::nn::conv::contiguous_f32(storage, layout)?;
            let out = self.weight.dim(0)?;
            let inner = values.len() / out.max(1);
            return self.pixel_rows_forward(x, |image, (channels, height, width), window, bias| {
                let rows = crate::nn::im2col::pixel_rows(image, channels, height, width, window);
                let pixels = rows.len() / inner.max(1);
                let rows = View::row_major(&rows, pixels, inner, inner);
                let weight = View::row_major(values, out, inner, inner);
                let mut y = gemm::times_transposed(rows, weight, rayon::current_num_threads());
                if let Some(bias) = bias {
                    add_to_rows(&mut y, bias);
                }
                Ok(y)
            });
        }
        let (weight, bias) = (like(&self.weight, x)?, like_opt(self.bias.as_ref(), x)?);
        candle_nn::Conv2d::new(weight, bias, self.config).forward(x)
    }
}

impl Conv2d {
    /// Each image's pixel rows ([`crate::nn::im2col::pixel_rows`]) times the weight plus the bias
    /// through `product(image, (channels, height, width), window, bias)` (`pixels x out`),
    /// back to channels first.
    fn pixel_rows_forward(
        &self,
        x: &Tensor,
        product: impl Fn(
            &[f32],
            (usize, usize, usize),
            crate::nn::im2col::Window,
            Option<&[f32]>,
        ) -> Result<Vec<f32>>,
    ) -> Result<Tensor> {
        let (batch, channels, height, width) = x.dims4()?;
        let out = self.weight.dim(0)?;
        let window = crate::nn::im2col::Window {
            kernel: self.weight.dim(3)?,
            stride: self.config.stride,
            padding: self.config.padding,
        };
        let (out_h, out_w) = (window.out(height), window.out(width));
        let bias = match &self.bias {
            Some(bias) => Some(bias.to_dtype(DType::F32)?.to_vec1::<f32>()?),
            None => None,
        };
        let dims = (channels, height, width);
        let maps = crate::nn::cpu_f32(x, |images| {
            let image_len = (channels * height * width).max(1);
            images
                .chunks_exact(image_len)
                .map(|image| {
                    let y = product(image, dims, window, bias.as_deref())?;
                    let pixels = Tensor::from_vec(y, (1, out_h * out_w, out), &Device::Cpu)?;
                    crate::nn::transpose::transposed_items(&pixels)
                })
                .collect::<Result<Vec<_>>>()
        });
        let Some(maps) = maps else {
            candle_core::bail!("conv2d: the input is not f32 on the CPU");
        };
        Tensor::cat(&maps??, 0)?.reshape((batch, out, out_h, out_w))
    }
}
