//! diffusers' `UNet2DConditionModel` for SD 1.x / 2.x and SDXL, every shape from its config.

mod blocks;
mod config;
mod transformer;

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::Conv2dConfig;

use crate::nn::layers::{self, Conv2d, Weights};
use crate::nn::norm::GroupNormSilu;

pub use config::{BlockPlan, UNetConfig};

use crate::nn::embeddings::{TimestepEmbedding, sinusoidal};
use blocks::{
    Common, CrossAttention, DownBlock, DownBlockConfig, MidBlock, UpBlock, UpBlockConfig,
};

use crate::error::Result;
use crate::weights::{NameScheme, Variant, build_quantizable};

/// SDXL's extra conditioning: pooled text embeddings and the size/crop "time ids".
pub struct AddedConditioning {
    /// `(B, P)`.
    pub text_embeds: Tensor,
    /// `(B, 6)`: original size, crop top-left, target size.
    pub time_ids: Tensor,
}

/// SDXL's `add_time_proj` + `add_embedding`.
struct TextTimeEmbedding {
    time_dim: usize,
    embedding: TimestepEmbedding,
}

pub struct UNet {
    config: UNetConfig,
    conv_in: Conv2d,
    time_embedding: TimestepEmbedding,
    add_embedding: Option<TextTimeEmbedding>,
    down: Vec<DownBlock>,
    mid: MidBlock,
    up: Vec<UpBlock>,
    norm_out: GroupNormSilu,
    conv_out: Conv2d,
}

impl UNet {
    /// Load from a component folder such as `model/unet`.
    pub fn load(dir: &Path, variant: Variant, dtype: DType, device: &Device) -> Result<Self> {
        let config_path = dir.join("config.json");
        let config = UNetConfig::load(&config_path)?;
        let plan = config.down_plan(&config_path)?;
        // A GGUF UNet keeps its quantized attention and feed-forward weights in their blocks.
        build_quantizable(dir, variant, NameScheme::Exact, dtype, device, |weights| {
            Self::build(config, &plan, weights)
        })
    }

    fn build(config: UNetConfig, plan: &[BlockPlan], vb: Weights) -> candle_core::Result<Self> {
        let channels = &config.block_out_channels;
        let c0 = channels[0];
        let temb = config.time_embed_dim();
        let common = Common {
            temb_channels: temb,
            groups: config.norm_num_groups,
            eps: config.norm_eps,
            use_linear_projection: config.use_linear_projection,
            resnet_out_scale_factor: config.resnet_out_scale_factor,
        };
        let same_padding = |k: usize| Conv2dConfig {
            padding: (k - 1) / 2,
            ..Default::default()
        };
        let conv_in = layers::conv2d(
            config.in_channels,
            c0,
            config.conv_in_kernel,
            same_padding(config.conv_in_kernel),
            vb.dense("conv_in"),
        )?;
        let time_embedding = TimestepEmbedding::new(c0, temb, vb.dense("time_embedding"))?;
        let add_embedding = match config.addition_embed_type.as_deref() {
            Some(_) => {
                let (Some(time_dim), Some(input_dim)) = (
                    config.addition_time_embed_dim,
                    config.projection_class_embeddings_input_dim,
                ) else {
                    return Err(candle_core::Error::msg(
                        "addition_embed_type text_time needs addition_time_embed_dim and \
                         projection_class_embeddings_input_dim",
                    ));
                };
                Some(TextTimeEmbedding {
                    time_dim,
                    embedding: TimestepEmbedding::new(input_dim, temb, vb.dense("add_embedding"))?,
                })
            }
            None => None,
        };
        let cross_of = |p: &BlockPlan| {
            p.transformer_layers.map(|layers| CrossAttention {
                layers,
                heads: p.heads,
                context_dim: p.cross_attention_dim,
            })
        };

        let last = plan.len() - 1;
        let mut down = Vec::with_capacity(plan.len());
        for (i, p) in plan.iter().enumerate() {
            let block = DownBlockConfig {
                in_channels: if i == 0 { c0 } else { channels[i - 1] },
                out_channels: p.out_channels,
                layers: p.layers,
                cross: cross_of(p),
                downsample_padding: (i != last).then_some(config.downsample_padding),
            };
            down.push(DownBlock::new(
                &common,
                &block,
                vb.pp(format!("down_blocks.{i}")),
            )?);
        }

        let deepest = &plan[last];
        let mid_cross = CrossAttention {
            layers: deepest.transformer_layers.unwrap_or(
                match &config.transformer_layers_per_block {
                    config::PerBlock::One(n) => *n,
                    config::PerBlock::Each(v) => v.last().copied().unwrap_or(1),
                },
            ),
            heads: deepest.heads,
            context_dim: deepest.cross_attention_dim,
        };
        let mid = MidBlock::new(
            &common,
            channels[last],
            config.mid_block_scale_factor,
            mid_cross,
            vb.pp("mid_block"),
        )?;

        let mut up = Vec::with_capacity(plan.len());
        let mut prev_channels = channels[last];
        for i in 0..plan.len() {
            let mirrored = &plan[last - i];
            let cross =
                (config.up_block_types[i] == "CrossAttnUpBlock2D").then(|| CrossAttention {
                    layers: mirrored.transformer_layers.unwrap_or(1),
                    heads: mirrored.heads,
                    context_dim: mirrored.cross_attention_dim,
                });
            let block = UpBlockConfig {
                in_channels: channels[last.saturating_sub(i + 1)],
                prev_channels,
                out_channels: mirrored.out_channels,
                layers: mirrored.layers + 1,
                cross,
                upsample: i != last,
            };
            prev_channels = mirrored.out_channels;
            up.push(UpBlock::new(
                &common,
                &block,
                vb.pp(format!("up_blocks.{i}")),
            )?);
        }

        Ok(Self {
            conv_in,
            time_embedding,
            add_embedding,
            down,
            mid,
            up,
            norm_out: GroupNormSilu::new(
                config.norm_num_groups,
                c0,
                config.norm_eps,
                vb.dense("conv_norm_out"),
            )?,
            conv_out: layers::conv2d(
                c0,
                config.out_channels,
                config.conv_out_kernel,
                same_padding(config.conv_out_kernel),
                vb.dense("conv_out"),
            )?,
            config,
        })
    }

    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    /// Whether the model needs [`AddedConditioning`] (SDXL's `text_time`).
    pub fn needs_added_conditioning(&self) -> bool {
        self.add_embedding.is_some()
    }

    /// Predict noise (or v) for `sample: (B, C, h, w)` at one timestep, conditioned on
    /// `encoder_hidden_states: (B, T, D)`.
    pub fn forward(
        &self,
        sample: &Tensor,
        timestep: f64,
        encoder_hidden_states: &Tensor,
        added: Option<&AddedConditioning>,
    ) -> candle_core::Result<Tensor> {
        let (batch, _, height, width) = sample.dims4()?;
        let dtype = sample.dtype();
        let device = sample.device();
        let c0 = self.config.block_out_channels[0];
        let t = sinusoidal(
            &vec![timestep; batch],
            c0,
            self.config.flip_sin_to_cos,
            self.config.freq_shift,
            device,
        )?
        .to_dtype(dtype)?;
        let mut temb = self.time_embedding.forward(&t)?;
        match (&self.add_embedding, added) {
            (Some(add), Some(added)) => {
                let ids: Vec<f64> = added
                    .time_ids
                    .to_dtype(DType::F64)?
                    .flatten_all()?
                    .to_vec1()?;
                let time = sinusoidal(
                    &ids,
                    add.time_dim,
                    self.config.flip_sin_to_cos,
                    self.config.freq_shift,
                    device,
                )?
                .to_dtype(dtype)?
                .reshape((batch, ()))?;
                let input = Tensor::cat(&[&added.text_embeds.to_dtype(dtype)?, &time], 1)?;
                temb = (temb + add.embedding.forward(&input)?)?;
            }
            (Some(_), None) => {
                return Err(candle_core::Error::msg(
                    "this UNet (SDXL) needs pooled text embeddings and time ids",
                ));
            }
            (None, _) => {}
        }

        let mut x = if self.config.center_input_sample {
            ((sample * 2.0)? - 1.0)?
        } else {
            sample.clone()
        };
        x = self.conv_in.forward(&x)?;
        let mut skips = vec![x.clone()];
        for block in &self.down {
            x = block.forward(&x, &temb, encoder_hidden_states, &mut skips)?;
        }
        x = self.mid.forward(&x, &temb, encoder_hidden_states)?;

        // Sizes that do not halve evenly are upsampled back to the matching skip's size.
        let factor = 1usize << (self.up.len() - 1);
        let uneven = height % factor != 0 || width % factor != 0;
        for block in &self.up {
            let layers = block.layers();
            let upsample_to = if uneven && skips.len() > layers {
                let (_, _, h, w) = skips[skips.len() - layers - 1].dims4()?;
                Some((h, w))
            } else {
                None
            };
            x = block.forward(&x, &temb, encoder_hidden_states, &mut skips, upsample_to)?;
        }
        let x = self.norm_out.forward(&x)?;
        self.conv_out.forward(&x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{assert_close, case_tensors, max_abs, model_dir};

    fn probe(case: &str, model: &str, size: (f32, f32)) {
        let unet = UNet::load(
            &model_dir(model).join("unet"),
            Variant::Auto,
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        let t = case_tensors(case);
        let timestep = t["probe_timestep"]
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec1::<f64>()
            .unwrap()[0];
        let added = t
            .get("pooled_prompt_embeds")
            .map(|pooled| AddedConditioning {
                text_embeds: pooled.clone(),
                time_ids: Tensor::new(&[[size.0, size.1, 0.0, 0.0, size.0, size.1]], &Device::Cpu)
                    .unwrap(),
            });
        let eps = unet
            .forward(
                &t["probe_latents"],
                timestep,
                &t["prompt_embeds"],
                added.as_ref(),
            )
            .unwrap();
        assert_close(case, &eps, &t["probe_eps"]);
    }

    #[test]
    fn sd_probe_matches_reference() {
        probe("sd-ddim-cfg", "tiny-sd", (64.0, 64.0));
        probe("sd-euler-turbo", "tiny-sd", (64.0, 96.0));
    }

    #[test]
    fn sdxl_probe_matches_reference() {
        probe("sdxl-euler-turbo", "tiny-sdxl", (64.0, 64.0));
    }

    /// Linear weights a GGUF file holds quantized reach the UNet's attention and feed-forward
    /// in their blocks, and the UNet computes with them what it computes with their dense
    /// values, to q8_0's rounding.
    #[test]
    fn quantized_attention_and_feed_forward_weights_stay_in_their_blocks() {
        use crate::nn::layers::QuantizedWeights;
        use crate::weights::WeightFiles;
        use candle_core::quantized::{GgmlDType, QTensor};
        use candle_nn::VarBuilder;
        use std::sync::{Arc, Mutex};

        struct AsQ8(VarBuilder<'static>, Mutex<Vec<String>>);
        impl QuantizedWeights for AsQ8 {
            fn quantized(&self, name: &str) -> candle_core::Result<Option<QTensor>> {
                let weight = self.0.get_unchecked(name)?;
                if weight.rank() != 2 || weight.dim(1)? % 32 != 0 {
                    return Ok(None);
                }
                self.1.lock().unwrap().push(name.to_string());
                QTensor::quantize(&weight, GgmlDType::Q8_0).map(Some)
            }
        }
        let dir = model_dir("tiny-sd").join("unet");
        let config = UNetConfig::load(&dir.join("config.json")).unwrap();
        let plan = config.down_plan(&dir.join("config.json")).unwrap();
        let vb = WeightFiles::open(&dir, Variant::Auto, NameScheme::Exact)
            .unwrap()
            .var_builder(DType::F32, &Device::Cpu);
        let asked = Arc::new(AsQ8(vb.clone(), Mutex::default()));
        let quantized = UNet::build(
            config.clone(),
            &plan,
            Weights::new(vb.clone(), Some(asked.clone())),
        )
        .unwrap();
        let dense = UNet::build(config, &plan, vb.into()).unwrap();
        let asked = asked.1.lock().unwrap().clone();
        for layer in [
            "attn1.to_q",
            "attn2.to_k",
            "attn2.to_out.0",
            "ff.net.0.proj",
            "ff.net.2",
        ] {
            let name = format!("mid_block.attentions.0.transformer_blocks.0.{layer}.weight");
            assert!(asked.contains(&name), "{name} not among {asked:?}");
        }
        let t = case_tensors("sd-ddim-cfg");
        let eps = |unet: &UNet| {
            unet.forward(&t["probe_latents"], 500.0, &t["prompt_embeds"], None)
                .unwrap()
        };
        let (a, b) = (eps(&quantized), eps(&dense));
        let (diff, size) = (max_abs(&(&a - &b).unwrap()), max_abs(&b));
        assert!(diff < 0.02 * size, "{diff} of {size}");
    }

    #[test]
    fn sdxl_without_added_conditioning_is_an_error() {
        let unet = UNet::load(
            &model_dir("tiny-sdxl").join("unet"),
            Variant::Auto,
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        assert!(unet.needs_added_conditioning());
        let latents = Tensor::zeros((1, 4, 8, 8), DType::F32, &Device::Cpu).unwrap();
        let context = Tensor::zeros((1, 77, 64), DType::F32, &Device::Cpu).unwrap();
        let err = unet
            .forward(&latents, 10.0, &context, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("time ids"), "{err}");
    }

    #[test]
    fn uneven_latent_sizes_run() {
        let unet = UNet::load(
            &model_dir("tiny-sd").join("unet"),
            Variant::Auto,
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        let latents = Tensor::zeros((2, 4, 7, 5), DType::F32, &Device::Cpu).unwrap();
        let context = Tensor::zeros((2, 77, 32), DType::F32, &Device::Cpu).unwrap();
        let out = unet.forward(&latents, 500.0, &context, None).unwrap();
        assert_eq!(out.dims(), &[2, 4, 7, 5]);
    }

    #[test]
    fn unsupported_block_type_names_the_key() {
        let tmp = tempfile::tempdir().unwrap();
        let text = std::fs::read_to_string(model_dir("tiny-sd").join("unet/config.json")).unwrap();
        let broken = text.replace("\"DownBlock2D\"", "\"AttnDownBlock2D\"");
        std::fs::write(tmp.path().join("config.json"), broken).unwrap();
        let err = match UNet::load(tmp.path(), Variant::Auto, DType::F32, &Device::Cpu) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("loaded"),
        };
        assert!(
            err.contains("down_block_types") && err.contains("AttnDownBlock2D"),
            "{err}"
        );
    }
}
