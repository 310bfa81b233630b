//! An SD / SDXL model folder loaded for text-to-image and image-to-image: text encoders, UNet,
//! VAE and the scheduler settings.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};

use super::SdKind;
use super::conditioning::{Conditioning, EncodedPrompts};
use super::denoise::Denoise;
use crate::error::{EngineError, Result};
use crate::model::ModelIndex;
use crate::nn::layers;
use crate::noise::SeededNoise;
use crate::pipeline::{
    Decoded, GenerateRequest, GeneratedImage, Generator, LoadOptions, OnStep, Progress, each_image,
    img2img_start,
};
use crate::preview::LatentPreview;
use crate::scheduler::{self, NoiseSource, SchedulerConfig, SchedulerKind};
use crate::sd::text::{PromptEmbedding, TextEncoder};
use crate::sd::unet::UNet;
use crate::shared::load_shared;
use crate::vae::Vae;

/// Where the latents of one run start.
pub enum Start {
    /// Text-to-image: unit-normal noise `(1, C, h, w)`, scaled by the scheduler's initial sigma.
    Noise(Tensor),
    /// Image-to-image: the picture `(1, 3, H, W)` in [-1, 1], the noise to add to its latents,
    /// and the strength.
    Image {
        image: Tensor,
        noise: Tensor,
        strength: f64,
    },
}

/// One run of the loop on explicit inputs (the reference-parity checks feed the noise).
pub struct Run<'a> {
    pub prompts: &'a EncodedPrompts,
    pub guidance_scale: f64,
    pub width: u32,
    pub height: u32,
    pub steps: usize,
    pub scheduler: SchedulerKind,
    pub scheduler_config: &'a SchedulerConfig,
    pub karras_sigmas: bool,
    pub start: Start,
}

pub struct RunOutput {
    /// After the last scheduler step, before un-scaling and decoding.
    pub final_latents: Tensor,
    /// `(B, H, W, 3)` f32 in [0, 1].
    pub image: Tensor,
    /// Wall time of the denoising loop (with image-to-image's encode) and of the decode.
    pub denoise_time: Duration,
    pub decode_time: Duration,
}

pub struct SdPipeline {
    kind: SdKind,
    force_zeros_for_empty_prompt: bool,
    text: TextEncoder,
    unet: Arc<UNet>,
    vae: Arc<Vae>,
    preview: LatentPreview,
    scheduler_config: SchedulerConfig,
    default_scheduler: SchedulerKind,
    options: LoadOptions,
}

impl SdPipeline {
    /// Load an SD or SDXL model folder (the one holding `model_index.json`).
    pub fn load(dir: &Path, options: LoadOptions) -> Result<Self> {
        let index = ModelIndex::read(dir)?;
        let kind = match index.family(dir)? {
            crate::model::Family::StableDiffusion => SdKind::Sd,
            crate::model::Family::StableDiffusionXl => SdKind::Xl,
            other => {
                return Err(EngineError::config(
                    dir.join("model_index.json"),
                    format!("a {other:?} pipeline, not Stable Diffusion"),
                ));
            }
        };
        Self::load_kind(dir, &index, options, kind)
    }

    pub(super) fn load_kind(
        dir: &Path,
        index: &ModelIndex,
        options: LoadOptions,
        kind: SdKind,
    ) -> Result<Self> {
        let scheduler_path = dir.join("scheduler").join("scheduler_config.json");
        let scheduler_config = SchedulerConfig::from_file(&scheduler_path)?;
        let default_scheduler = scheduler_config.default_kind();
        let (device, dtype, variant) = (&options.device, options.dtype, options.variant);
        let text = TextEncoder::load(dir, kind, variant, dtype, device)?;
        let (unet_dir, vae_dir) = (dir.join("unet"), dir.join("vae"));
        let unet = load_shared(&unet_dir, variant, dtype, device, || {
            UNet::load(&unet_dir, variant, dtype, device)
        })?;
        let vae = load_shared(&vae_dir, variant, dtype, device, || {
            Vae::load(&vae_dir, variant, dtype, device)
        })?;
        if kind == SdKind::Xl && !unet.needs_added_conditioning() {
            return Err(EngineError::config(
                dir.join("unet").join("config.json"),
                "an SDXL pipeline needs addition_embed_type \"text_time\"",
            ));
        }
        Ok(Self {
            kind,
            force_zeros_for_empty_prompt: index.force_zeros_for_empty_prompt.unwrap_or(false),
            text,
            unet,
            vae,
            preview: LatentPreview::default(),
            scheduler_config,
            default_scheduler,
            options,
        })
    }

    pub fn device(&self) -> &Device {
        &self.options.device
    }

    pub fn kind(&self) -> SdKind {
        self.kind
    }

    pub fn text(&self) -> &TextEncoder {
        &self.text
    }

    pub fn unet(&self) -> &UNet {
        &self.unet
    }

    pub fn vae(&self) -> &Vae {
        &self.vae
    }

    pub fn scheduler_config(&self) -> &SchedulerConfig {
        &self.scheduler_config
    }

    /// The sampler matching the model's own scheduler config.
    pub fn default_scheduler(&self) -> SchedulerKind {
        self.default_scheduler
    }

    /// Pixels per latent per side (8 for SD and SDXL).
    pub fn latent_factor(&self) -> u32 {
        self.vae.downscale_factor() as u32
    }

    /// The resolution the model was trained at: UNet sample size x VAE factor.
    pub fn native_size(&self) -> u32 {
        self.unet.config().sample_size as u32 * self.latent_factor()
    }

    /// Encode the prompt, and under guidance (`guidance_scale > 1`) the negative prompt: the
    /// empty string when none is given, or zeros where the model asks for them (SDXL).
    pub fn encode_prompts(
        &self,
        prompt: &str,
        negative_prompt: Option<&str>,
        guidance_scale: f64,
    ) -> Result<EncodedPrompts> {
        for text in std::iter::once(prompt).chain(negative_prompt) {
            if self.text.is_truncated(text) {
                tracing::warn!(
                    "the prompt is longer than the text encoder's 77 tokens; the rest is ignored"
                );
            }
        }
        let cond = self.text.encode(prompt)?;
        let uncond = if guidance_scale > 1.0 {
            Some(match negative_prompt {
                None if self.force_zeros_for_empty_prompt => zeros_like(&cond)?,
                other => self.text.encode(other.unwrap_or(""))?,
            })
        } else {
            None
        };
        Ok(EncodedPrompts { cond, uncond })
    }

    /// Run the denoising loop from explicit starting noise and decode the result.
    pub fn run(
        &self,
        run: Run<'_>,
        noise: &mut dyn NoiseSource,
        on_step: &mut OnStep,
        cancel: &AtomicBool,
    ) -> Result<RunOutput> {
        let mut scheduler = scheduler::build(
            run.scheduler,
            run.scheduler_config,
            run.steps,
            run.karras_sigmas,
        )?;
        let conditioning = Conditioning::new(
            run.prompts,
            run.guidance_scale,
            run.width,
            run.height,
            self.unet_dtype(),
        )?;
        let started = Instant::now();
        let (latents, first_step) = match run.start {
            Start::Noise(noise) => {
                let sigma = scheduler.init_noise_sigma();
                ((noise.to_dtype(DType::F32)? * sigma)?, 0)
            }
            Start::Image {
                image,
                noise,
                strength,
            } => {
                let first_step = img2img_start(run.steps, strength)? * scheduler.order();
                let encoded = self.encode_image(&image)?;
                let latents =
                    scheduler.add_noise(&encoded, &noise.to_dtype(DType::F32)?, first_step)?;
                (latents, first_step)
            }
        };
        let denoise = Denoise {
            unet: &self.unet,
            conditioning: &conditioning,
            first_step,
            cancel,
        };
        let final_latents = denoise.run(scheduler.as_mut(), latents, noise, on_step)?;
        // GPU work is asynchronous: wait for it so the stage times are real.
        self.options.device.synchronize()?;
        let denoise_time = started.elapsed();
        let decoding = Instant::now();
        let image = self.decode(&final_latents)?;
        self.options.device.synchronize()?;
        Ok(RunOutput {
            final_latents,
            image,
            denoise_time,
            decode_time: decoding.elapsed(),
        })
    }

    /// Picture `(1, 3, H, W)` in [-1, 1] to scaled latents (posterior mean, as the reference).
    pub fn encode_image(&self, image: &Tensor) -> Result<Tensor> {
        Ok(self.vae.encode_scaled(image)?)
    }

    /// Scaled latents to `(B, H, W, 3)` f32 pixels in [0, 1].
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        Ok(self.vae.decode_scaled(latents, self.options.vae_tiling)?)
    }

    /// The dtype the text encoders and UNet compute in.
    pub fn unet_dtype(&self) -> DType {
        layers::compute_dtype(self.options.dtype, &self.options.device)
    }

    /// Generate `request.count` images, image `i` from seed `request.seed + i`.
    pub fn generate(
        &self,
        request: &GenerateRequest,
        on_progress: &mut dyn FnMut(Progress),
        cancel: &AtomicBool,
    ) -> Result<Vec<GeneratedImage>> {
        request.validate(self.latent_factor())?;
        let scheduler = request.scheduler.unwrap_or(self.default_scheduler);
        let encoding = Instant::now();
        let prompts = self.encode_prompts(
            &request.prompt,
            request.negative_prompt.as_deref(),
            request.guidance_scale,
        )?;
        let text_encode = encoding.elapsed();
        let device = &self.options.device;
        let init_picture = request.init_pixels(device)?;
        let factor = self.latent_factor();
        let latent_shape = [
            1,
            self.unet.config().in_channels,
            (request.height / factor) as usize,
            (request.width / factor) as usize,
        ];
        each_image(request, text_encode, on_progress, |seed, on_step| {
            let mut noise = SeededNoise::new(seed);
            let initial = noise.randn(&latent_shape, device)?;
            let start = match (&init_picture, &request.init_image) {
                (Some(picture), Some(init)) => Start::Image {
                    image: picture.clone(),
                    noise: initial,
                    strength: init.strength,
                },
                _ => Start::Noise(initial),
            };
            let run = Run {
                prompts: &prompts,
                guidance_scale: request.guidance_scale,
                width: request.width,
                height: request.height,
                steps: request.steps,
                scheduler,
                scheduler_config: &self.scheduler_config,
                karras_sigmas: request.karras_sigmas,
                start,
            };
            let output = self.run(run, &mut noise, on_step, cancel)?;
            Ok(Decoded {
                pixels: output.image,
                denoise: output.denoise_time,
                decode: output.decode_time,
            })
        })
    }
}

impl Generator for SdPipeline {
    fn generate(
        &self,
        request: &GenerateRequest,
        on_progress: &mut dyn FnMut(Progress),
        cancel: &AtomicBool,
    ) -> Result<Vec<GeneratedImage>> {
        SdPipeline::generate(self, request, on_progress, cancel)
    }

    fn preview(&self, latents: &Tensor) -> Result<image::RgbImage> {
        self.preview.render(&self.vae, latents)
    }
}

fn zeros_like(prompt: &PromptEmbedding) -> candle_core::Result<PromptEmbedding> {
    Ok(PromptEmbedding {
        embeds: prompt.embeds.zeros_like()?,
        pooled: prompt.pooled.as_ref().map(Tensor::zeros_like).transpose()?,
    })
}
