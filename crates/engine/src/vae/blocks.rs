//! The VAE's building blocks: its single-head spatial self-attention, the mid block, and the
//! encoder's and decoder's resolution steps.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

use crate::nn::attention::scaled_dot_product_for;
use crate::nn::conv::{Around, Conv3x3};
use crate::nn::layers::{self, Conv2d, GroupNorm, Linear};
use crate::nn::resnet::{ResnetBlock, ResnetConfig, conv3x3};

/// The VAE normalises with eps 1e-6 everywhere.
pub const EPS: f64 = 1e-6;

pub fn resnet(groups: usize, cin: usize, cout: usize, vb: VarBuilder) -> Result<ResnetBlock> {
    let config = ResnetConfig {
        in_channels: cin,
        out_channels: cout,
        temb_channels: None,
        groups,
        eps: EPS,
        output_scale_factor: 1.0,
    };
    ResnetBlock::new(&config, vb)
}

/// One head over all pixels, with a residual connection.
struct SpatialAttention {
    norm: GroupNorm,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
}

impl SpatialAttention {
    fn new(groups: usize, channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm: layers::group_norm(groups, channels, EPS, vb.pp("group_norm"))?,
            to_q: layers::linear(channels, channels, vb.pp("to_q"))?,
            to_k: layers::linear(channels, channels, vb.pp("to_k"))?,
            to_v: layers::linear(channels, channels, vb.pp("to_v"))?,
            to_out: layers::linear(channels, channels, vb.pp("to_out.0"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let tokens = self
            .norm
            .forward(x)?
            .reshape((b, c, h * w))?
            .transpose(1, 2)?;
        let heads = |t: Tensor| t.unsqueeze(1);
        let q = heads(self.to_q.forward(&tokens)?)?;
        let k = heads(self.to_k.forward(&tokens)?)?;
        let v = heads(self.to_v.forward(&tokens)?)?;
        let scale = (c as f64).powf(-0.5);
        let weights = self.to_q.weight_dtype();
        let attended = scaled_dot_product_for(weights, &q, &k, &v, scale)?.squeeze(1)?;
        let out = self.to_out.forward(&attended)?;
        out.transpose(1, 2)?.reshape((b, c, h, w))? + x
    }
}

pub struct MidBlock {
    first: ResnetBlock,
    attention: Option<SpatialAttention>,
    second: ResnetBlock,
}

impl MidBlock {
    pub fn new(groups: usize, channels: usize, attention: bool, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            first: resnet(groups, channels, channels, vb.pp("resnets.0"))?,
            attention: if attention {
                Some(SpatialAttention::new(
                    groups,
                    channels,
                    vb.pp("attentions.0"),
                )?)
            } else {
                None
            },
            second: resnet(groups, channels, channels, vb.pp("resnets.1"))?,
        })
    }

    /// `x` is given up to be written over ([`ResnetBlock::forward_owned`]), as in the blocks
    /// below.
    pub fn forward(&self, x: Tensor) -> Result<Tensor> {
        let mut x = self.first.forward_owned(x, None)?;
        if let Some(attention) = &self.attention {
            x = attention.forward(&x)?;
        }
        self.second.forward_owned(x, None)
    }
}

/// `DownEncoderBlock2D`: resnets, then (except last) a stride-2 conv after padding the
/// right and bottom by one pixel, as diffusers' `Downsample2D` with padding 0 does.
pub struct EncoderBlock {
    resnets: Vec<ResnetBlock>,
    downsample: Option<Conv2d>,
}

impl EncoderBlock {
    pub fn new(
        groups: usize,
        cin: usize,
        cout: usize,
        layers: usize,
        downsample: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let resnets = (0..layers)
            .map(|i| {
                resnet(
                    groups,
                    if i == 0 { cin } else { cout },
                    cout,
                    vb.pp(format!("resnets.{i}")),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let downsample = if downsample {
            let config = Conv2dConfig {
                stride: 2,
                ..Default::default()
            };
            Some(layers::conv2d(
                cout,
                cout,
                3,
                config,
                vb.pp("downsamplers.0.conv"),
            )?)
        } else {
            None
        };
        Ok(Self {
            resnets,
            downsample,
        })
    }

    pub fn forward(&self, mut x: Tensor) -> Result<Tensor> {
        for resnet in &self.resnets {
            x = resnet.forward_owned(x, None)?;
        }
        if let Some(conv) = &self.downsample {
            x = conv.forward(&x.pad_with_zeros(2, 0, 1)?.pad_with_zeros(3, 0, 1)?)?;
        }
        Ok(x)
    }
}

/// `UpDecoderBlock2D`: resnets, then (except last) nearest 2x upsampling and a conv.
pub struct DecoderBlock {
    resnets: Vec<ResnetBlock>,
    upsample: Option<Conv3x3>,
}

impl DecoderBlock {
    pub fn new(
        groups: usize,
        cin: usize,
        cout: usize,
        layers: usize,
        upsample: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let resnets = (0..layers)
            .map(|i| {
                resnet(
                    groups,
                    if i == 0 { cin } else { cout },
                    cout,
                    vb.pp(format!("resnets.{i}")),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let upsample = if upsample {
            Some(conv3x3(cout, cout, vb.pp("upsamplers.0.conv"))?)
        } else {
            None
        };
        Ok(Self { resnets, upsample })
    }

    pub fn forward(&self, mut x: Tensor) -> Result<Tensor> {
        for resnet in &self.resnets {
            x = resnet.forward_owned(x, None)?;
        }
        if let Some(conv) = &self.upsample {
            let upsample = Around {
                upsample: true,
                ..Around::default()
            };
            x = conv.forward_around(&x, upsample)?;
        }
        Ok(x)
    }
}
