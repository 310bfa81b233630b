//! diffusers' `AutoencoderKL`: pictures to latents (posterior mean) and back, every shape
//! from `vae/config.json`.

mod blocks;
mod config;
mod stage;
mod tiled;

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;

use crate::nn::norm::GroupNormSilu;

pub use config::VaeConfig;
pub use stage::VaeStage;
pub use tiled::Tiling;

/// When to decode the VAE in tiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VaeTiling {
    /// Tile only images larger than 1024x1024, where a full decode's activations get large.
    #[default]
    Auto,
    Always,
    Never,
}

use crate::error::Result;
use crate::nn::conv::{Around, Conv1x1, Conv3x3};
use crate::nn::layers;
use crate::nn::resnet::{conv1x1, conv3x3};
use crate::weights::{NameScheme, Variant, build_component};
use blocks::{DecoderBlock, EPS, EncoderBlock, MidBlock};

struct Encoder {
    conv_in: Conv3x3,
    blocks: Vec<EncoderBlock>,
    mid: MidBlock,
    norm_out: GroupNormSilu,
    conv_out: Conv3x3,
}

impl Encoder {
    fn new(config: &VaeConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let channels = &config.block_out_channels;
        let groups = config.norm_num_groups;
        let last = channels.len() - 1;
        let blocks = (0..channels.len())
            .map(|i| {
                let cin = if i == 0 { channels[0] } else { channels[i - 1] };
                let vb = vb.pp(format!("down_blocks.{i}"));
                EncoderBlock::new(
                    groups,
                    cin,
                    channels[i],
                    config.layers_per_block,
                    i != last,
                    vb,
                )
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            conv_in: conv3x3(config.in_channels, channels[0], vb.pp("conv_in"))?,
            blocks,
            mid: MidBlock::new(
                groups,
                channels[last],
                config.mid_block_add_attention,
                vb.pp("mid_block"),
            )?,
            norm_out: GroupNormSilu::new(groups, channels[last], EPS, vb.pp("conv_norm_out"))?,
            conv_out: conv3x3(
                channels[last],
                2 * config.latent_channels,
                vb.pp("conv_out"),
            )?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut x = self.conv_in.forward(x)?;
        for block in &self.blocks {
            x = block.forward(x)?;
        }
        let x = self.mid.forward(x)?;
        let normed = Around {
            norm: Some(&self.norm_out),
            ..Around::default()
        };
        self.conv_out.forward_around(&x, normed)
    }
}

struct Decoder {
    conv_in: Conv3x3,
    mid: MidBlock,
    blocks: Vec<DecoderBlock>,
    norm_out: GroupNormSilu,
    conv_out: Conv3x3,
}

impl Decoder {
    fn new(config: &VaeConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let channels = &config.block_out_channels;
        let groups = config.norm_num_groups;
        let last = channels.len() - 1;
        let mut prev = channels[last];
        let mut blocks = Vec::with_capacity(channels.len());
        for i in 0..channels.len() {
            let out = channels[last - i];
            let vb = vb.pp(format!("up_blocks.{i}"));
            blocks.push(DecoderBlock::new(
                groups,
                prev,
                out,
                config.layers_per_block + 1,
                i != last,
                vb,
            )?);
            prev = out;
        }
        Ok(Self {
            conv_in: conv3x3(config.latent_channels, channels[last], vb.pp("conv_in"))?,
            mid: MidBlock::new(
                groups,
                channels[last],
                config.mid_block_add_attention,
                vb.pp("mid_block"),
            )?,
            blocks,
            norm_out: GroupNormSilu::new(groups, channels[0], EPS, vb.pp("conv_norm_out"))?,
            conv_out: conv3x3(channels[0], config.out_channels, vb.pp("conv_out"))?,
        })
    }

    fn forward(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        // Each block's input is handed over, to be written over ([`MidBlock::forward`]).
        let mut x = self.mid.forward(self.conv_in.forward(z)?)?;
        for block in &self.blocks {
            x = block.forward(x)?;
        }
        let normed = Around {
            norm: Some(&self.norm_out),
            ..Around::default()
        };
        self.conv_out.forward_around(&x, normed)
    }
}

/// Whether a VAE whose config has `force_upcast` is kept in f32 rather than `dtype`. That flag
/// is about f16, whose range SD's and SDXL's VAEs overflow; bf16 has f32's range, and
/// diffusers keeps such a VAE in bf16 too. On a CPU without AMX, though, a VAE's convolutions
/// (on images large enough for f32 Winograd there, [`crate::nn::conv`]) would widen bf16
/// weights at every call, slower than f32 weights: there it stays f32.
fn upcast(dtype: DType, device: &Device) -> bool {
    match dtype {
        DType::F16 => true,
        DType::BF16 => device.is_cpu() && !crate::nn::amx::available(),
        _ => false,
    }
}

pub struct Vae {
    config: VaeConfig,
    encoder: Encoder,
    quant_conv: Option<Conv1x1>,
    decoder: Decoder,
    post_quant_conv: Option<Conv1x1>,
    dtype: DType,
    /// A half-precision model on the CPU, loaded to save memory: each decode first hands the
    /// heap's free pages back ([`Vae::decode_scaled`]).
    gives_back_heap: bool,
}

impl Vae {
    /// Load from a component folder such as `model/vae`, with weights in `dtype` unless the
    /// config's `force_upcast` asks for f32 ([`upcast`]). It computes in that dtype, or in f32
    /// for half weights on CPU ([`layers::compute_dtype`]).
    pub fn load(dir: &Path, variant: Variant, dtype: DType, device: &Device) -> Result<Self> {
        let config = VaeConfig::load(&dir.join("config.json"))?;
        let gives_back_heap = device.is_cpu() && matches!(dtype, DType::F16 | DType::BF16);
        let dtype = if config.force_upcast && upcast(dtype, device) {
            DType::F32
        } else {
            dtype
        };
        build_component(dir, variant, NameScheme::Exact, dtype, device, |vb| {
            let latent2 = 2 * config.latent_channels;
            let latent = config.latent_channels;
            Ok(Self {
                encoder: Encoder::new(&config, vb.pp("encoder"))?,
                quant_conv: if config.use_quant_conv {
                    Some(conv1x1(latent2, latent2, vb.pp("quant_conv"))?)
                } else {
                    None
                },
                decoder: Decoder::new(&config, vb.pp("decoder"))?,
                post_quant_conv: if config.use_post_quant_conv {
                    Some(conv1x1(latent, latent, vb.pp("post_quant_conv"))?)
                } else {
                    None
                },
                config,
                dtype: layers::compute_dtype(dtype, device),
                gives_back_heap,
            })
        })
    }

    pub fn config(&self) -> &VaeConfig {
        &self.config
    }

    /// The dtype the VAE computes in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Pixels per latent per side: 2 to the number of downsampling steps (8 for SD).
    pub fn downscale_factor(&self) -> usize {
        self.config.downscale_factor()
    }

    /// Posterior mean of `image: (B, 3, H, W)` in [-1, 1], not yet scaled.
    pub fn encode_mean(&self, image: &Tensor) -> candle_core::Result<Tensor> {
        let moments = self.encoder.forward(image)?;
        let moments = match &self.quant_conv {
            Some(conv) => conv.forward(&moments)?,
            None => moments,
        };
        moments.narrow(1, 0, self.config.latent_channels)
    }

    /// Picture `(1, 3, H, W)` in [-1, 1] to the latents a denoiser works on: the posterior
    /// mean (as the reference), shifted by `shift_factor` and times `scaling_factor`, in f32.
    pub fn encode_scaled(&self, image: &Tensor) -> candle_core::Result<Tensor> {
        let config = self.config();
        let mean = self
            .encode_mean(&image.to_dtype(self.dtype())?)?
            .to_dtype(DType::F32)?;
        (mean - config.shift_factor.unwrap_or(0.0))? * config.scaling_factor
    }

    /// A denoiser's latents to `(B, H, W, 3)` f32 pixels in [0, 1]: divided by
    /// `scaling_factor`, shifted back, decoded (in tiles as `tiling` says).
    pub fn decode_scaled(
        &self,
        latents: &Tensor,
        tiling: VaeTiling,
    ) -> candle_core::Result<Tensor> {
        if self.gives_back_heap {
            // The denoise's freed activations stay in the heap for the next step's reuse, in
            // holes of their sizes that the decode's larger images do not fit: handed back
            // first, the SDXL-shaped bf16 decode at 1024x1024 peaks 0.3 GiB lower (8.19 GiB
            // against 8.51, 1.27x the weights), its time unchanged. In f32 the pages faulted
            // in again cost the next image 1-6 % of its time for 0.1-0.2 GiB of 14.5.
            crate::pipeline::release_free_heap();
        }
        let config = self.config();
        let latents = ((latents / config.scaling_factor)? + config.shift_factor.unwrap_or(0.0))?
            .to_dtype(self.dtype())?;
        let (_, _, h, w) = latents.dims4()?;
        let tile = match tiling {
            VaeTiling::Always => true,
            VaeTiling::Never => false,
            VaeTiling::Auto => h * w > 128 * 128,
        };
        let decoded = if tile {
            self.decode_tiled(&latents, Tiling::default())?
        } else {
            self.decode(&latents)?
        };
        crate::image_ops::to_unit_range(&decoded.to_dtype(DType::F32)?)
    }

    /// Decode latents already divided by `scaling_factor` (and shifted) to `(B, 3, H, W)`.
    pub fn decode(&self, latents: &Tensor) -> candle_core::Result<Tensor> {
        let z = match &self.post_quant_conv {
            Some(conv) => conv.forward(latents)?,
            None => latents.clone(),
        };
        self.decoder.forward(&z)
    }

    /// Decode in overlapping tiles blended at the seams, so memory stays bounded.
    pub fn decode_tiled(&self, latents: &Tensor, tiling: Tiling) -> candle_core::Result<Tensor> {
        tiled::decode(self, latents, tiling)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image_ops::to_unit_range;
    use crate::test_support::{case_tensors, model_dir};

    fn vae(model: &str) -> Vae {
        Vae::load(
            &model_dir(model).join("vae"),
            Variant::Auto,
            DType::F32,
            &Device::Cpu,
        )
        .unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn decoding_reference_latents_gives_the_reference_image() {
        for (case, model) in [
            ("sd-ddim-cfg", "tiny-sd"),
            ("sd-euler-turbo", "tiny-sd"),
            ("sdxl-euler-turbo", "tiny-sdxl"),
        ] {
            let vae = vae(model);
            let t = case_tensors(case);
            let latents = (&t["final_latents"] / vae.config().scaling_factor).unwrap();
            let image = to_unit_range(&vae.decode(&latents).unwrap())
                .unwrap()
                .squeeze(0)
                .unwrap();
            let diff = max_diff(&image, &t["image"]);
            assert!(diff <= 4e-3, "{case}: {diff}");
        }
    }

    #[test]
    fn tiled_decode_matches_below_one_tile_and_stays_close_above() {
        let vae = vae("tiny-sd");
        let small = Tensor::randn(0f32, 1.0, (1, 4, 12, 10), &Device::Cpu).unwrap();
        let tiling = Tiling {
            tile_latent: 16,
            overlap_latent: 4,
        };
        assert_eq!(
            max_diff(
                &vae.decode(&small).unwrap(),
                &vae.decode_tiled(&small, tiling).unwrap()
            ),
            0.0
        );

        let large = Tensor::randn(0f32, 1.0, (1, 4, 40, 48), &Device::Cpu).unwrap();
        let full = vae.decode(&large).unwrap();
        let tiled = vae.decode_tiled(&large, tiling).unwrap();
        assert_eq!(tiled.dims(), full.dims());
        let mean = (&full - &tiled)
            .unwrap()
            .abs()
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let scale = full
            .abs()
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            mean.is_finite() && mean < scale,
            "tiled differs by {mean} (scale {scale})"
        );
    }

    #[test]
    fn encode_gives_latents_of_the_right_shape() {
        let vae = vae("tiny-sd");
        let image = Tensor::zeros((1, 3, 64, 48), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(vae.downscale_factor(), 8);
        assert_eq!(vae.encode_mean(&image).unwrap().dims(), &[1, 4, 8, 6]);
    }
}
