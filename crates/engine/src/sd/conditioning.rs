//! What the UNet is conditioned on: text embeddings, batched for classifier-free guidance,
//! and for SDXL the pooled text embedding plus the size/crop "time ids".

use candle_core::{DType, Tensor};

use crate::sd::text::PromptEmbedding;
use crate::sd::unet::AddedConditioning;

/// The encoded prompt and, under guidance, the encoded negative prompt.
pub struct EncodedPrompts {
    pub cond: PromptEmbedding,
    /// Present when guidance is on (`guidance_scale > 1`).
    pub uncond: Option<PromptEmbedding>,
}

/// Everything one UNet call needs besides the latents and the timestep.
pub struct Conditioning {
    /// `(B, 77, D)`: B = 2 (unconditional first, as diffusers batches it) under guidance, else 1.
    pub encoder_hidden_states: Tensor,
    pub added: Option<AddedConditioning>,
    /// Some(scale) when both branches are batched and must be combined.
    pub guidance_scale: Option<f64>,
}

impl Conditioning {
    pub fn new(
        prompts: &EncodedPrompts,
        guidance_scale: f64,
        width: u32,
        height: u32,
        dtype: DType,
    ) -> candle_core::Result<Self> {
        let branches: Vec<&PromptEmbedding> = match &prompts.uncond {
            Some(uncond) => vec![uncond, &prompts.cond],
            None => vec![&prompts.cond],
        };
        let embeds: Vec<&Tensor> = branches.iter().map(|p| &p.embeds).collect();
        let encoder_hidden_states = Tensor::cat(&embeds, 0)?.to_dtype(dtype)?;
        let added = match prompts.cond.pooled {
            Some(_) => Some(added_conditioning(&branches, width, height, dtype)?),
            None => None,
        };
        Ok(Self {
            encoder_hidden_states,
            added,
            guidance_scale: prompts.uncond.as_ref().map(|_| guidance_scale),
        })
    }

    /// Combine a batched prediction into one: `uncond + scale * (cond - uncond)`.
    pub fn guide(&self, prediction: Tensor) -> candle_core::Result<Tensor> {
        let Some(scale) = self.guidance_scale else {
            return Ok(prediction);
        };
        let uncond = prediction.narrow(0, 0, 1)?;
        let cond = prediction.narrow(0, 1, 1)?;
        &uncond + ((cond - &uncond)? * scale)?
    }
}

/// SDXL's micro-conditioning: pooled text embeds and `[H, W, crop_top, crop_left, H, W]`
/// (original size, crop origin, target size), the same ids for both branches.
fn added_conditioning(
    branches: &[&PromptEmbedding],
    width: u32,
    height: u32,
    dtype: DType,
) -> candle_core::Result<AddedConditioning> {
    let pooled = branches
        .iter()
        .map(|p| {
            p.pooled
                .clone()
                .ok_or_else(|| candle_core::Error::msg("pooled embedding missing for one branch"))
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    let (h, w) = (height as f32, width as f32);
    let ids = [h, w, 0.0, 0.0, h, w];
    let device = branches[0].embeds.device();
    let time_ids = Tensor::new(&ids, device)?
        .unsqueeze(0)?
        .repeat((branches.len(), 1))?
        .to_dtype(dtype)?;
    Ok(AddedConditioning {
        text_embeds: Tensor::cat(&pooled, 0)?.to_dtype(dtype)?,
        time_ids,
    })
}
