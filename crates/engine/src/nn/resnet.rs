//! diffusers' `ResnetBlock2D` (the "default" time-scale-shift variant), shared by the UNet
//! (with a time embedding) and the VAE (without).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::conv::{Around, Conv1x1, Conv3x3};
use super::layers::{self, Linear};
use super::norm::GroupNormSilu;

pub struct ResnetConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    /// Width of the time embedding; None for the VAE's blocks.
    pub temb_channels: Option<usize>,
    pub groups: usize,
    pub eps: f64,
    pub output_scale_factor: f64,
}

pub struct ResnetBlock {
    norm1: GroupNormSilu,
    conv1: Conv3x3,
    time_emb_proj: Option<Linear>,
    norm2: GroupNormSilu,
    conv2: Conv3x3,
    conv_shortcut: Option<Conv1x1>,
    output_scale_factor: f64,
}

pub fn conv3x3(in_channels: usize, out_channels: usize, vb: VarBuilder) -> Result<Conv3x3> {
    Conv3x3::new(3, in_channels, out_channels, vb)
}

pub fn conv1x1(in_channels: usize, out_channels: usize, vb: VarBuilder) -> Result<Conv1x1> {
    Conv1x1::new(1, in_channels, out_channels, vb)
}

impl ResnetBlock {
    pub fn new(config: &ResnetConfig, vb: VarBuilder) -> Result<Self> {
        let (cin, cout) = (config.in_channels, config.out_channels);
        let time_emb_proj = match config.temb_channels {
            Some(t) => Some(layers::linear(t, cout, vb.pp("time_emb_proj"))?),
            None => None,
        };
        // diffusers adds a 1x1 shortcut exactly when the channel count changes.
        let conv_shortcut = if cin != cout {
            Some(conv1x1(cin, cout, vb.pp("conv_shortcut"))?)
        } else {
            None
        };
        Ok(Self {
            norm1: GroupNormSilu::new(config.groups, cin, config.eps, vb.pp("norm1"))?,
            conv1: conv3x3(cin, cout, vb.pp("conv1"))?,
            time_emb_proj,
            norm2: GroupNormSilu::new(config.groups, cout, config.eps, vb.pp("norm2"))?,
            conv2: conv3x3(cout, cout, vb.pp("conv2"))?,
            conv_shortcut,
            output_scale_factor: config.output_scale_factor,
        })
    }

    /// `temb` is the (already computed) time embedding `(B, T)`, before its SiLU.
    pub fn forward(&self, x: &Tensor, temb: Option<&Tensor>) -> Result<Tensor> {
        self.run(Input::Shared(x), temb)
    }

    /// [`Self::forward`] on an `x` the caller gives up (see
    /// [`super::buffers::take_f32`] for what that asks): the shortcut is computed over it and
    /// the output written over the shortcut where the CPU kernels allow, so that the VAE's
    /// first full-resolution block (1 GiB in, 512 MiB out at 1024x1024) holds the input and
    /// one output at most, not the input and three.
    pub fn forward_owned(&self, x: Tensor, temb: Option<&Tensor>) -> Result<Tensor> {
        self.run(Input::Owned(x), temb)
    }

    fn run(&self, x: Input, temb: Option<&Tensor>) -> Result<Tensor> {
        // Each norm runs inside the convolution after it, the time embedding is added by the
        // first and the shortcut by the second, where the CPU kernels allow ([`Around`]): at
        // the VAE's full-resolution blocks each intermediate image is hundreds of megabytes.
        let normed = |norm| Around {
            norm: Some(norm),
            ..Around::default()
        };
        let time = match (&self.time_emb_proj, temb) {
            (Some(proj), Some(temb)) => Some(proj.forward(&temb.silu()?)?),
            _ => None,
        };
        let first = Around {
            image_bias: time.as_ref(),
            ..normed(&self.norm1)
        };
        let h = self.conv1.forward_around(x.as_ref(), first)?;
        // Whether the shortcut is ours to write over: a new tensor, or the given-up input.
        let (shortcut, ours) = match (&self.conv_shortcut, x) {
            (Some(conv), Input::Owned(x)) => (conv.forward_consuming(x)?, true),
            (Some(conv), Input::Shared(x)) => (conv.forward(x)?, true),
            (None, Input::Owned(x)) => (x, true),
            (None, Input::Shared(x)) => (x.clone(), false),
        };
        if self.output_scale_factor != 1.0 {
            let h = self.conv2.forward_around(&h, normed(&self.norm2))?;
            return (shortcut + h)? / self.output_scale_factor;
        }
        match ours {
            true => self
                .conv2
                .forward_around_onto(&h, normed(&self.norm2), shortcut),
            false => {
                let around = Around {
                    residual: Some(&shortcut),
                    ..normed(&self.norm2)
                };
                self.conv2.forward_around(&h, around)
            }
        }
    }
}

/// A block's input: borrowed, or given up to be written over.
enum Input<'a> {
    Shared(&'a Tensor),
    Owned(Tensor),
}

impl Input<'_> {
    fn as_ref(&self) -> &Tensor {
        match self {
            Input::Shared(x) => x,
            Input::Owned(x) => x,
        }
    }
}
