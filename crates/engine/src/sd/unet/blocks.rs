//! The UNet's down, mid and up blocks (with or without cross-attention) and its resamplers.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

use super::transformer::{Transformer2D, Transformer2DConfig};
use crate::nn::conv::{Around, Conv3x3};
use crate::nn::layers::{self, Conv2d, Weights};
use crate::nn::resnet::{ResnetBlock, ResnetConfig, conv3x3};

/// Settings every block shares.
#[derive(Clone, Copy)]
pub struct Common {
    pub temb_channels: usize,
    pub groups: usize,
    pub eps: f64,
    pub use_linear_projection: bool,
    pub resnet_out_scale_factor: f64,
}

/// Cross-attention settings of a block that has transformers.
#[derive(Clone, Copy)]
pub struct CrossAttention {
    pub layers: usize,
    pub heads: usize,
    pub context_dim: usize,
}

fn resnet(
    common: &Common,
    cin: usize,
    cout: usize,
    scale: f64,
    vb: VarBuilder,
) -> Result<ResnetBlock> {
    let config = ResnetConfig {
        in_channels: cin,
        out_channels: cout,
        temb_channels: Some(common.temb_channels),
        groups: common.groups,
        eps: common.eps,
        output_scale_factor: scale,
    };
    ResnetBlock::new(&config, vb)
}

fn transformer(
    common: &Common,
    channels: usize,
    cross: CrossAttention,
    vb: Weights,
) -> Result<Transformer2D> {
    let config = Transformer2DConfig {
        channels,
        heads: cross.heads,
        layers: cross.layers,
        context_dim: cross.context_dim,
        groups: common.groups,
        use_linear_projection: common.use_linear_projection,
    };
    Transformer2D::new(&config, vb)
}

pub struct DownBlock {
    resnets: Vec<ResnetBlock>,
    attentions: Vec<Transformer2D>,
    downsampler: Option<Conv2d>,
}

pub struct DownBlockConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub layers: usize,
    pub cross: Option<CrossAttention>,
    pub downsample_padding: Option<usize>,
}

impl DownBlock {
    pub fn new(common: &Common, config: &DownBlockConfig, vb: Weights) -> Result<Self> {
        let cout = config.out_channels;
        let mut resnets = Vec::with_capacity(config.layers);
        let mut attentions = Vec::new();
        for i in 0..config.layers {
            let cin = if i == 0 { config.in_channels } else { cout };
            let scale = common.resnet_out_scale_factor;
            resnets.push(resnet(
                common,
                cin,
                cout,
                scale,
                vb.dense(format!("resnets.{i}")),
            )?);
            if let Some(cross) = config.cross {
                attentions.push(transformer(
                    common,
                    cout,
                    cross,
                    vb.pp(format!("attentions.{i}")),
                )?);
            }
        }
        let downsampler = match config.downsample_padding {
            Some(padding) => {
                let conv = Conv2dConfig {
                    padding,
                    stride: 2,
                    ..Default::default()
                };
                Some(layers::conv2d(
                    cout,
                    cout,
                    3,
                    conv,
                    vb.dense("downsamplers.0.conv"),
                )?)
            }
            None => None,
        };
        Ok(Self {
            resnets,
            attentions,
            downsampler,
        })
    }

    /// Returns the block's output and pushes every skip connection onto `skips`.
    pub fn forward(
        &self,
        x: &Tensor,
        temb: &Tensor,
        context: &Tensor,
        skips: &mut Vec<Tensor>,
    ) -> Result<Tensor> {
        let mut x = x.clone();
        for (i, resnet) in self.resnets.iter().enumerate() {
            x = resnet.forward(&x, Some(temb))?;
            if let Some(attention) = self.attentions.get(i) {
                x = attention.forward(&x, context)?;
            }
            skips.push(x.clone());
        }
        if let Some(downsampler) = &self.downsampler {
            x = downsampler.forward(&x)?;
            skips.push(x.clone());
        }
        Ok(x)
    }
}

pub struct MidBlock {
    first: ResnetBlock,
    layers: Vec<(Transformer2D, ResnetBlock)>,
}

impl MidBlock {
    pub fn new(
        common: &Common,
        channels: usize,
        scale: f64,
        cross: CrossAttention,
        vb: Weights,
    ) -> Result<Self> {
        // UNetMidBlock2DCrossAttn has one transformer (with `cross.layers` layers) between two resnets.
        Ok(Self {
            first: resnet(common, channels, channels, scale, vb.dense("resnets.0"))?,
            layers: vec![(
                transformer(common, channels, cross, vb.pp("attentions.0"))?,
                resnet(common, channels, channels, scale, vb.dense("resnets.1"))?,
            )],
        })
    }

    pub fn forward(&self, x: &Tensor, temb: &Tensor, context: &Tensor) -> Result<Tensor> {
        let mut x = self.first.forward(x, Some(temb))?;
        for (attention, resnet) in &self.layers {
            x = resnet.forward(&attention.forward(&x, context)?, Some(temb))?;
        }
        Ok(x)
    }
}

pub struct UpBlock {
    resnets: Vec<ResnetBlock>,
    attentions: Vec<Transformer2D>,
    upsampler: Option<Conv3x3>,
}

pub struct UpBlockConfig {
    /// Channels of the matching down block's input (its last skip).
    pub in_channels: usize,
    /// Channels coming from the previous up block.
    pub prev_channels: usize,
    pub out_channels: usize,
    pub layers: usize,
    pub cross: Option<CrossAttention>,
    pub upsample: bool,
}

impl UpBlock {
    pub fn new(common: &Common, config: &UpBlockConfig, vb: Weights) -> Result<Self> {
        let cout = config.out_channels;
        let mut resnets = Vec::with_capacity(config.layers);
        let mut attentions = Vec::new();
        for i in 0..config.layers {
            let skip = if i + 1 == config.layers {
                config.in_channels
            } else {
                cout
            };
            let cin = if i == 0 { config.prev_channels } else { cout };
            let scale = common.resnet_out_scale_factor;
            resnets.push(resnet(
                common,
                cin + skip,
                cout,
                scale,
                vb.dense(format!("resnets.{i}")),
            )?);
            if let Some(cross) = config.cross {
                attentions.push(transformer(
                    common,
                    cout,
                    cross,
                    vb.pp(format!("attentions.{i}")),
                )?);
            }
        }
        let upsampler = if config.upsample {
            Some(conv3x3(cout, cout, vb.dense("upsamplers.0.conv"))?)
        } else {
            None
        };
        Ok(Self {
            resnets,
            attentions,
            upsampler,
        })
    }

    /// Consumes this block's skip connections from the end of `skips`. `upsample_to` is the
    /// size of the next skip when the latents do not halve evenly.
    pub fn forward(
        &self,
        x: &Tensor,
        temb: &Tensor,
        context: &Tensor,
        skips: &mut Vec<Tensor>,
        upsample_to: Option<(usize, usize)>,
    ) -> Result<Tensor> {
        let mut x = x.clone();
        for (i, resnet) in self.resnets.iter().enumerate() {
            let skip = skips
                .pop()
                .ok_or_else(|| candle_core::Error::msg("UNet ran out of skip connections"))?;
            x = resnet.forward(&Tensor::cat(&[&x, &skip], 1)?, Some(temb))?;
            if let Some(attention) = self.attentions.get(i) {
                x = attention.forward(&x, context)?;
            }
        }
        if let Some(upsampler) = &self.upsampler {
            let (_, _, h, w) = x.dims4()?;
            x = match upsample_to {
                Some((th, tw)) if (th, tw) != (h * 2, w * 2) => {
                    upsampler.forward(&x.upsample_nearest2d(th, tw)?)?
                }
                _ => {
                    let upsample = Around {
                        upsample: true,
                        ..Around::default()
                    };
                    upsampler.forward_around(&x, upsample)?
                }
            };
        }
        Ok(x)
    }
}

impl UpBlock {
    /// How many skip connections this block consumes.
    pub fn layers(&self) -> usize {
        self.resnets.len()
    }
}
