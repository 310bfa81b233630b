//! A Z-Image model folder as diffusers' `ZImagePipeline` runs it: Qwen3 on the chat-templated
//! prompt for the caption states, flow-match Euler on the pipeline's own sigmas with the
//! folder's static shift, the transformer on unpacked latents (it patches them itself) with
//! its output negated, classifier-free guidance when `guidance_scale > 0` as
//! `pos + g (pos - neg)`, the 16-channel VAE with its scaling and shift. The denoising loop is
//! ours, step by step with progress and cancel.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, Tensor};

use super::transformer::ZImageTransformer;
use crate::error::{EngineError, Result};
use crate::lru::PromptCache;
use crate::pipeline::{LoadOptions, OnStep};
use crate::residency::Component;
use crate::scheduler::flow_match::{FlowMatchConfig, FlowMatchEuler, Spacing};
use crate::text::qwen3::{Qwen3Encoder, Qwen3Tokenizer};
use crate::vae::VaeStage;

/// The Qwen3 token count the pipeline pads and cuts prompts to.
pub const MAX_SEQUENCE_LENGTH: usize = 512;

pub struct ZImagePipeline {
    tokenizer: Qwen3Tokenizer,
    text_encoder: Component<Qwen3Encoder>,
    transformer: Component<ZImageTransformer>,
    vae: VaeStage,
    scheduler: FlowMatchConfig,
    prompts: PromptCache<Tensor>,
}

/// One denoising run on explicit inputs.
pub struct ZImageRun<'a> {
    /// `(1, L, D)` caption states of the prompt's real tokens.
    pub prompt: &'a Tensor,
    /// Classifier-free guidance (`guidance_scale > 0`): the negative prompt's states.
    pub negative: Option<&'a Tensor>,
    /// Unit noise `(1, 16, h, w)`.
    pub noise: &'a Tensor,
    pub steps: usize,
    pub guidance: f64,
    /// Image-to-image: the picture's scaled latents `(1, 16, h, w)` and the strength.
    pub image: Option<(&'a Tensor, f64)>,
}

impl ZImagePipeline {
    /// The VAE stage: latent shape, decoding, encoding a reference picture.
    pub fn vae(&self) -> &VaeStage {
        &self.vae
    }

    /// Load a Z-Image folder; under a sequential [`crate::residency::MemoryPlan`] the weights
    /// are only checked now and each component is loaded for its stage.
    pub fn load(dir: &Path, options: LoadOptions) -> Result<Self> {
        let sequential = options
            .memory_plan
            .is_sequential(crate::model::safetensors_bytes(dir));
        let at = |sub: &str| dir.join(sub);
        Ok(Self {
            tokenizer: Qwen3Tokenizer::load(&at("tokenizer"))?,
            text_encoder: Component::new(
                "qwen3",
                sequential,
                &at("text_encoder"),
                &options,
                |dir, o| Qwen3Encoder::load(dir, o.variant, o.dtype, &o.device),
            )?,
            transformer: Component::new(
                "transformer",
                sequential,
                &at("transformer"),
                &options,
                |dir, o| ZImageTransformer::load(dir, o.variant, o.dtype, &o.device),
            )?,
            vae: VaeStage::load(&at("vae"), sequential, &options)?,
            scheduler: FlowMatchConfig::from_file(&at("scheduler/scheduler_config.json"))?,
            prompts: PromptCache::new(),
        })
    }

    pub fn tokenizer(&self) -> &Qwen3Tokenizer {
        &self.tokenizer
    }

    /// The caption states `(1, L, D)` of the prompt's real tokens, from the cache when it was
    /// encoded lately.
    pub fn encode(&self, prompt: &str, length: usize) -> Result<Tensor> {
        self.prompts.get_or_encode(prompt, length, || {
            let tokens = self.tokenizer.encode(prompt, length)?;
            let states = self.text_encoder.get()?.embed(tokens.real_ids())?;
            Ok(states.to_dtype(DType::F32)?)
        })
    }

    /// One transformer call, raw (not negated), at `timestep` = 1 - sigma (parity's probe).
    pub fn probe(&self, caption: &Tensor, latents: &Tensor, timestep: f32) -> Result<Tensor> {
        Ok(self
            .transformer
            .get()?
            .forward(latents, caption, timestep)?)
    }

    /// Denoise to the final latents `(1, 16, h, w)` (still scaled), calling
    /// `on_step(step, steps)` after each step; `cancel` stops it between steps.
    pub fn denoise(
        &self,
        run: &ZImageRun,
        on_step: &mut OnStep,
        cancel: &AtomicBool,
    ) -> Result<Tensor> {
        let (_, _, h, w) = run.noise.dims4()?;
        if h % 2 == 1 || w % 2 == 1 {
            return Err(EngineError::invalid(
                "size",
                "Z-Image latents must have even sides (images a multiple of 16)",
            ));
        }
        let sampler = FlowMatchEuler::new(
            &self.scheduler,
            run.steps,
            Spacing::Pipeline,
            (h / 2) * (w / 2),
        )?;
        let (start, mut latents) = sampler.start(run.noise, run.image)?;
        let transformer = self.transformer.get()?;
        let steps = sampler.steps();
        for index in start..steps {
            if cancel.load(Ordering::SeqCst) {
                return Err(EngineError::Cancelled);
            }
            // The model's time runs the other way: (1000 - t) / 1000 with t = sigma * 1000.
            let time = (1000.0 - sampler.timesteps()[index]) / 1000.0;
            let call = |caption: &Tensor| -> Result<Tensor> {
                Ok(transformer
                    .forward(&latents, caption, time)?
                    .to_dtype(DType::F32)?)
            };
            let mut prediction = call(run.prompt)?;
            if let Some(negative) = run.negative {
                let unconditional = call(negative)?;
                // diffusers' form: pos + g (pos - neg), not neg + g (pos - neg).
                prediction = (&prediction + ((&prediction - unconditional)? * run.guidance)?)?;
            }
            latents = sampler.step(&prediction.neg()?, index, &latents)?;
            on_step(index + 1 - start, steps - start, &latents);
        }
        Ok(latents)
    }
}
