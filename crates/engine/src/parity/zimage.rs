//! The Z-Image cases, stage by stage.

use std::sync::atomic::AtomicBool;

use candle_core::DType;

use super::{Bound, Case, Comparison, ParityRunner, check_tokens, compare};
use crate::error::Result;
use crate::zimage::pipeline::{MAX_SEQUENCE_LENGTH, ZImagePipeline, ZImageRun};

impl ParityRunner {
    /// A Z-Image case: the chat-templated token ids and attention mask and the caption states
    /// of the prompt (and, under CFG, of the negative prompt or ""), one transformer call, the
    /// final latents from the reference's noise, the image from the reference's final latents.
    pub(crate) fn check_zimage(&mut self, case: &Case, out: &mut Vec<Comparison>) -> Result<()> {
        let tensors = self.tensors(case)?;
        let stage = Bound::Relative(self.stage_tolerance);
        let device = self.options.device.clone();
        self.load(&case.model, |dir, _, options| {
            ZImagePipeline::load(dir, options)
        })?;
        let pipeline: &ZImagePipeline = self.loaded(&case.model)?;
        let length = case.max_sequence_length.unwrap_or(MAX_SEQUENCE_LENGTH);
        let negative_text = case.negative_prompt.clone().unwrap_or_default();
        let mut prompts = vec![("", case.prompt.as_str())];
        if case.guidance_scale > 0.0 {
            prompts.push(("negative_", negative_text.as_str()));
        }
        let mut encoded = Vec::new();
        for (prefix, text) in prompts {
            let tokens = pipeline.tokenizer().encode(text, length)?;
            check_tokens(
                &tokens.ids,
                &tensors.get(&format!("{prefix}prompt_token_ids"))?,
            )?;
            let mask = tensors.get(&format!("{prefix}prompt_attention_mask"))?;
            check_tokens(&tokens.attention_mask(), &mask)?;
            let states = pipeline.encode(text, length)?;
            let name = format!("{prefix}prompt_embeds");
            out.push(compare(
                "text",
                &name,
                &states,
                &tensors.get(&name)?,
                stage,
            )?);
            encoded.push(states);
        }
        if let (Some(latents), Some(timestep)) = (
            tensors.map.get("probe_latents"),
            tensors.map.get("probe_timestep"),
        ) {
            // The probe's argument is already the model's time, 1 - sigma.
            let time = timestep
                .flatten_all()?
                .to_dtype(DType::F32)?
                .to_vec1::<f32>()?[0];
            let probe = pipeline.probe(&encoded[0], &latents.to_device(&device)?, time)?;
            out.push(compare(
                "transformer probe",
                "probe_out",
                &probe,
                &tensors.get("probe_out")?,
                stage,
            )?);
        }
        self.denoise_stages(case, &tensors, pipeline.vae(), out, |noise, image| {
            let run = ZImageRun {
                prompt: &encoded[0],
                negative: encoded.get(1),
                noise,
                steps: case.steps,
                guidance: case.guidance_scale,
                image,
            };
            pipeline.denoise(&run, &mut |_, _, _| {}, &AtomicBool::new(false))
        })
    }
}
