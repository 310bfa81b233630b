//! A FLUX.1 model folder as diffusers' `FluxPipeline` runs it: CLIP-L for the pooled vector, T5
//! for the token states, flow-match Euler on 2x2-packed latents, the 16-channel VAE with its
//! scaling and shift. The denoising loop is ours, step by step with progress and cancel.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, Tensor};

use super::transformer::{FluxConfig, FluxInputs, FluxTransformer};
use crate::error::{EngineError, Result};
use crate::lru::PromptCache;
use crate::pipeline::{LoadOptions, OnStep};
use crate::residency::Component;
use crate::scheduler::flow_match::{FlowMatchConfig, FlowMatchEuler, Spacing};
use crate::text::clip::ClipTextModel;
use crate::text::clip::tokenizer::ClipTokenizer;
use crate::text::t5::{T5Encoder, T5Tokenizer};
use crate::vae::VaeStage;

pub struct FluxPipeline {
    clip_tokenizer: ClipTokenizer,
    clip: Component<ClipTextModel>,
    t5_tokenizer: T5Tokenizer,
    t5: Component<T5Encoder>,
    transformer: Component<FluxTransformer>,
    transformer_config: FluxConfig,
    vae: VaeStage,
    scheduler: FlowMatchConfig,
    options: LoadOptions,
    prompts: PromptCache<FluxPrompt>,
}

/// An encoded prompt: T5 states `(1, L, D)` and the CLIP pooled vector `(1, D_clip)`.
#[derive(Debug, Clone)]
pub struct FluxPrompt {
    pub text: Tensor,
    pub pooled: Tensor,
}

/// One denoising run on explicit inputs.
pub struct FluxRun<'a> {
    pub prompt: &'a FluxPrompt,
    /// True CFG: a negative prompt and `true_cfg_scale > 1` (two calls a step).
    pub negative: Option<(&'a FluxPrompt, f64)>,
    /// Unit noise `(1, 16, h, w)`, unpacked.
    pub noise: &'a Tensor,
    pub steps: usize,
    /// \[dev\]'s distilled guidance; \[schnell\] ignores it.
    pub guidance: f64,
    /// Image-to-image: the picture's scaled latents `(1, 16, h, w)` and the strength.
    pub image: Option<(&'a Tensor, f64)>,
}

impl FluxPipeline {
    /// The VAE stage: latent shape, decoding, encoding a reference picture.
    pub fn vae(&self) -> &VaeStage {
        &self.vae
    }

    /// Load a FLUX folder; under a sequential [`crate::residency::MemoryPlan`] the weights
    /// are only checked now and each component is loaded for its stage.
    pub fn load(dir: &Path, options: LoadOptions) -> Result<Self> {
        let sequential = options
            .memory_plan
            .is_sequential(crate::model::safetensors_bytes(dir));
        if sequential {
            tracing::info!(model = %dir.display(), "components load per stage (sequential memory plan)");
        }
        let at = |sub: &str| dir.join(sub);
        Ok(Self {
            clip_tokenizer: ClipTokenizer::from_dir(&at("tokenizer"))?,
            clip: Component::new(
                "clip",
                sequential,
                &at("text_encoder"),
                &options,
                |dir, o| ClipTextModel::load(dir, o.variant, o.dtype, &o.device),
            )?,
            t5_tokenizer: T5Tokenizer::load(&at("tokenizer_2"))?,
            t5: Component::new(
                "t5",
                sequential,
                &at("text_encoder_2"),
                &options,
                |dir, o| T5Encoder::load(dir, o.variant, o.dtype, &o.device),
            )?,
            transformer: Component::new(
                "transformer",
                sequential,
                &at("transformer"),
                &options,
                |dir, o| FluxTransformer::load(dir, o.variant, o.dtype, &o.device),
            )?,
            transformer_config: FluxConfig::read(&at("transformer/config.json"))?,
            vae: VaeStage::load(&at("vae"), sequential, &options)?,
            scheduler: FlowMatchConfig::from_file(&dir.join("scheduler/scheduler_config.json"))?,
            options,
            prompts: PromptCache::new(),
        })
    }

    /// Whether every component stays loaded between stages.
    pub fn is_resident(&self) -> bool {
        self.transformer.is_resident()
    }

    /// \[dev\] has a guidance embedding; \[schnell\] does not.
    pub fn is_guidance_distilled(&self) -> bool {
        self.transformer_config.guidance_embeds
    }

    /// diffusers' default T5 length: 512 tokens for \[dev\], 256 for \[schnell\].
    pub fn default_max_sequence_length(&self) -> usize {
        if self.is_guidance_distilled() {
            512
        } else {
            256
        }
    }

    /// CLIP ids (77, padded with end-of-text) and T5 ids (`length`, `</s>` then pads).
    pub fn token_ids(&self, prompt: &str, length: usize) -> Result<(Vec<u32>, Vec<u32>)> {
        Ok((
            self.clip_tokenizer.encode(prompt),
            self.t5_tokenizer.encode(prompt, length)?,
        ))
    }

    /// The prompt's T5 states and CLIP pooled vector, from the cache when it was encoded lately.
    pub fn encode(&self, prompt: &str, length: usize) -> Result<FluxPrompt> {
        // The cache holds prompts encoded by the plain encoders; a LoRA on either changes them.
        let lora_on_text = crate::lora::hook::active()
            .is_some_and(|set| set.touches("text_encoder") || set.touches("text_encoder_2"));
        if lora_on_text {
            return self.encode_uncached(prompt, length);
        }
        self.prompts
            .get_or_encode(prompt, length, || self.encode_uncached(prompt, length))
    }

    fn encode_uncached(&self, prompt: &str, length: usize) -> Result<FluxPrompt> {
        let (clip_ids, t5_ids) = self.token_ids(prompt, length)?;
        let row = |ids: Vec<u32>| {
            let n = ids.len();
            Tensor::from_vec(ids, (1, n), &self.options.device)
        };
        // One encoder in memory at a time under the sequential plan.
        let (_, pooled) = self
            .clip
            .get()?
            .forward_penultimate(&row(clip_ids)?, true)?;
        let pooled = pooled
            .expect("asked for the pooled output")
            .to_dtype(DType::F32)?;
        let text = self
            .t5
            .get()?
            .forward(&row(t5_ids)?)?
            .to_dtype(DType::F32)?;
        Ok(FluxPrompt { text, pooled })
    }

    /// One transformer call on packed `latents` at flow time `sigma` (parity's probe).
    pub fn probe(
        &self,
        prompt: &FluxPrompt,
        latents: &Tensor,
        sigma: f32,
        guidance: Option<f32>,
        height: u32,
        width: u32,
    ) -> Result<Tensor> {
        let inputs = FluxInputs {
            text: &prompt.text,
            pooled: &prompt.pooled,
            timestep: sigma,
            guidance: guidance.filter(|_| self.is_guidance_distilled()),
            rows: height as usize / 16,
            cols: width as usize / 16,
        };
        Ok(self.transformer.get()?.forward(latents, &inputs)?)
    }

    /// Denoise to the final latents `(1, 16, h, w)` (unpacked, still scaled), calling
    /// `on_step(step, steps)` after each step; `cancel` stops it between steps.
    pub fn denoise(
        &self,
        run: &FluxRun,
        on_step: &mut OnStep,
        cancel: &AtomicBool,
    ) -> Result<Tensor> {
        let (_, channels, h, w) = run.noise.dims4()?;
        if h % 2 == 1 || w % 2 == 1 {
            return Err(EngineError::invalid(
                "size",
                "FLUX latents must have even sides (images a multiple of 16)",
            ));
        }
        let (rows, cols) = (h / 2, w / 2);
        let sampler =
            FlowMatchEuler::new(&self.scheduler, run.steps, Spacing::Pipeline, rows * cols)?;
        let image = run
            .image
            .map(|(image, strength)| Ok::<_, candle_core::Error>((pack(image)?, strength)))
            .transpose()?;
        let image = image.as_ref().map(|(packed, strength)| (packed, *strength));
        let (start, mut latents) = sampler.start(&pack(run.noise)?, image)?;
        let guidance = self.is_guidance_distilled().then_some(run.guidance as f32);
        let transformer = self.transformer.get()?;
        let call = |prompt: &FluxPrompt, latents: &Tensor, sigma: f32| {
            let inputs = FluxInputs {
                text: &prompt.text,
                pooled: &prompt.pooled,
                timestep: sigma,
                guidance,
                rows,
                cols,
            };
            transformer.forward(latents, &inputs)
        };
        let steps = sampler.steps();
        for index in start..steps {
            if cancel.load(Ordering::SeqCst) {
                return Err(EngineError::Cancelled);
            }
            // The model's time input is t / 1000 with t = sigma * 1000 in f32, as diffusers.
            let sigma = sampler.timesteps()[index] / 1000.0;
            let mut velocity = call(run.prompt, &latents, sigma)?;
            if let Some((negative, scale)) = run.negative {
                let unconditional = call(negative, &latents, sigma)?;
                velocity = (&unconditional + ((velocity - &unconditional)? * scale)?)?;
            }
            latents = sampler.step(&velocity.to_dtype(DType::F32)?, index, &latents)?;
            on_step(
                index + 1 - start,
                steps - start,
                &unpack(&latents, channels, rows, cols)?,
            );
        }
        unpack(&latents, channels, rows, cols)
    }
}

/// `(B, C, h, w)` to `(B, h/2 * w/2, C * 4)`, a token's features ordered (channel, dy, dx).
pub fn pack(x: &Tensor) -> candle_core::Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    x.reshape((b, c, h / 2, 2, w / 2, 2))?
        .permute((0, 2, 4, 1, 3, 5))?
        .reshape((b, (h / 2) * (w / 2), c * 4))
}

/// The inverse of [`pack`] for a `rows x cols` grid.
pub fn unpack(x: &Tensor, channels: usize, rows: usize, cols: usize) -> Result<Tensor> {
    let b = x.dim(0)?;
    Ok(x.reshape((b, rows, cols, channels, 2, 2))?
        .permute((0, 3, 1, 4, 2, 5))?
        .reshape((b, channels, rows * 2, cols * 2))?)
}
