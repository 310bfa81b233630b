//! An SD3.5 model folder as diffusers' `StableDiffusion3Pipeline` runs it: CLIP-L, CLIP-G and
//! T5 for the conditioning ([`super::text`]), flow-match Euler on the scheduler's own twice
//! shifted sigmas, the MMDiT on unpacked latents (it patches them itself), classifier-free
//! guidance as one batch `[negative, positive]`, the 16-channel VAE with its scaling and
//! shift. The denoising loop is ours, step by step with progress and cancel.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, Tensor};

use super::text::{Sd3Prompt, Sd3TextEncoders};
use super::transformer::{Sd3Config, Sd3Transformer};
use crate::error::{EngineError, Result};
use crate::lru::PromptCache;
use crate::model::ModelIndex;
use crate::pipeline::{LoadOptions, OnStep};
use crate::residency::Component;
use crate::scheduler::flow_match::{FlowMatchConfig, FlowMatchEuler, Spacing};
use crate::vae::VaeStage;

/// T5's token count in diffusers' pipeline unless the caller says otherwise.
pub const MAX_SEQUENCE_LENGTH: usize = 256;

pub struct Sd3Pipeline {
    text: Sd3TextEncoders,
    transformer: Component<Sd3Transformer>,
    transformer_config: Sd3Config,
    vae: VaeStage,
    scheduler: FlowMatchConfig,
    prompts: PromptCache<Sd3Prompt>,
}

/// One denoising run on explicit inputs.
pub struct Sd3Run<'a> {
    pub prompt: &'a Sd3Prompt,
    /// Classifier-free guidance (`guidance_scale > 1`): the negative prompt's conditioning.
    pub negative: Option<&'a Sd3Prompt>,
    /// Unit noise `(1, 16, h, w)`.
    pub noise: &'a Tensor,
    pub steps: usize,
    pub guidance: f64,
    /// Image-to-image: the picture's scaled latents `(1, 16, h, w)` and the strength.
    pub image: Option<(&'a Tensor, f64)>,
}

impl Sd3Pipeline {
    /// The VAE stage: latent shape, decoding, encoding a reference picture.
    pub fn vae(&self) -> &VaeStage {
        &self.vae
    }

    /// Load an SD3 folder; under a sequential [`crate::residency::MemoryPlan`] the weights are
    /// only checked now and each component is loaded for its stage.
    pub fn load(dir: &Path, index: &ModelIndex, options: LoadOptions) -> Result<Self> {
        let sequential = options
            .memory_plan
            .is_sequential(crate::model::safetensors_bytes(dir));
        let at = |sub: &str| dir.join(sub);
        let transformer_config = Sd3Config::read(&at("transformer/config.json"))?;
        Ok(Self {
            text: Sd3TextEncoders::load(
                dir,
                index.has_component("text_encoder_3"),
                transformer_config.joint_attention_dim,
                sequential,
                &options,
            )?,
            transformer: Component::new(
                "transformer",
                sequential,
                &at("transformer"),
                &options,
                |dir, o| Sd3Transformer::load(dir, o.variant, o.dtype, &o.device),
            )?,
            transformer_config,
            vae: VaeStage::load(&at("vae"), sequential, &options)?,
            scheduler: FlowMatchConfig::from_file(&at("scheduler/scheduler_config.json"))?,
            prompts: PromptCache::new(),
        })
    }

    pub fn text_encoders(&self) -> &Sd3TextEncoders {
        &self.text
    }

    /// The prompt's conditioning, from the cache when it was encoded lately.
    pub fn encode(&self, prompt: &str, length: usize) -> Result<Sd3Prompt> {
        self.prompts
            .get_or_encode(prompt, length, || self.text.encode(prompt, length))
    }

    /// One transformer call on `latents` at `timestep` (sigma * 1000; parity's probe).
    pub fn probe(&self, prompt: &Sd3Prompt, latents: &Tensor, timestep: f32) -> Result<Tensor> {
        Ok(self
            .transformer
            .get()?
            .forward(latents, &prompt.text, &prompt.pooled, timestep)?)
    }

    /// Denoise to the final latents `(1, 16, h, w)` (still scaled), calling
    /// `on_step(step, steps)` after each step; `cancel` stops it between steps.
    pub fn denoise(
        &self,
        run: &Sd3Run,
        on_step: &mut OnStep,
        cancel: &AtomicBool,
    ) -> Result<Tensor> {
        let (_, _, h, w) = run.noise.dims4()?;
        let patch = self.transformer_config.patch_size;
        if h % patch != 0 || w % patch != 0 {
            return Err(EngineError::invalid(
                "size",
                format!(
                    "SD3 latents must be a multiple of the patch size {patch} a side (images a \
                     multiple of {})",
                    patch * self.vae.factor() as usize
                ),
            ));
        }
        let sampler = FlowMatchEuler::new(&self.scheduler, run.steps, Spacing::Scheduler, 0)?;
        let (start, mut latents) = sampler.start(run.noise, run.image)?;
        // CFG runs the batch [negative, positive] in one call, as diffusers does.
        let conditioning = match run.negative {
            Some(negative) => Some(Sd3Prompt {
                text: Tensor::cat(&[&negative.text, &run.prompt.text], 0)?,
                pooled: Tensor::cat(&[&negative.pooled, &run.prompt.pooled], 0)?,
            }),
            None => None,
        };
        let prompt = conditioning.as_ref().unwrap_or(run.prompt);
        let transformer = self.transformer.get()?;
        let steps = sampler.steps();
        for index in start..steps {
            if cancel.load(Ordering::SeqCst) {
                return Err(EngineError::Cancelled);
            }
            let timestep = sampler.timesteps()[index];
            let input = match conditioning {
                Some(_) => Tensor::cat(&[&latents, &latents], 0)?,
                None => latents.clone(),
            };
            let output = transformer
                .forward(&input, &prompt.text, &prompt.pooled, timestep)?
                .to_dtype(DType::F32)?;
            let velocity = match conditioning {
                Some(_) => {
                    let (negative, positive) = (output.narrow(0, 0, 1)?, output.narrow(0, 1, 1)?);
                    (&negative + ((positive - &negative)? * run.guidance)?)?
                }
                None => output,
            };
            latents = sampler.step(&velocity, index, &latents)?;
            on_step(index + 1 - start, steps - start, &latents);
        }
        Ok(latents)
    }
}
