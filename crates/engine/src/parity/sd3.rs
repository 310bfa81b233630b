//! The SD3.5 cases, stage by stage.

use std::sync::atomic::AtomicBool;

use super::{Bound, Case, Comparison, ParityRunner, check_tokens, compare};
use crate::error::Result;
use crate::sd3::pipeline::{MAX_SEQUENCE_LENGTH, Sd3Pipeline, Sd3Run};

impl ParityRunner {
    /// An SD3.5 case: the three token id sets and the conditioning of the prompt (and, under
    /// CFG, of the negative prompt or ""), one transformer call, the final latents from the
    /// reference's noise, the image from the reference's final latents.
    pub(crate) fn check_sd3(&mut self, case: &Case, out: &mut Vec<Comparison>) -> Result<()> {
        let tensors = self.tensors(case)?;
        let stage = Bound::Relative(self.stage_tolerance);
        let device = self.options.device.clone();
        self.load(&case.model, Sd3Pipeline::load)?;
        let pipeline: &Sd3Pipeline = self.loaded(&case.model)?;
        let length = case.max_sequence_length.unwrap_or(MAX_SEQUENCE_LENGTH);
        let cfg = case.guidance_scale > 1.0;
        let negative_text = case.negative_prompt.clone().unwrap_or_default();
        let mut prompts = vec![("", case.prompt.as_str())];
        if cfg {
            prompts.push(("negative_", negative_text.as_str()));
        }
        let mut encoded = Vec::new();
        for (prefix, text) in prompts {
            let ids = pipeline.text_encoders().token_ids(text, length)?;
            check_tokens(
                &ids.clip_l,
                &tensors.get(&format!("{prefix}prompt_token_ids"))?,
            )?;
            check_tokens(
                &ids.clip_g,
                &tensors.get(&format!("{prefix}prompt_token_ids_2"))?,
            )?;
            if let Some(t5) = &ids.t5 {
                check_tokens(t5, &tensors.get(&format!("{prefix}prompt_token_ids_3"))?)?;
            }
            let prompt = pipeline.encode(text, length)?;
            for (name, ours) in [
                ("prompt_embeds", &prompt.text),
                ("pooled_prompt_embeds", &prompt.pooled),
            ] {
                let name = format!("{prefix}{name}");
                out.push(compare("text", &name, ours, &tensors.get(&name)?, stage)?);
            }
            encoded.push(prompt);
        }
        if let (Some(latents), Some(timestep)) = (
            tensors.map.get("probe_latents"),
            tensors.map.get("probe_timestep"),
        ) {
            let timestep = timestep.flatten_all()?.to_vec1::<f32>()?[0];
            let probe = pipeline.probe(&encoded[0], &latents.to_device(&device)?, timestep)?;
            out.push(compare(
                "transformer probe",
                "probe_out",
                &probe,
                &tensors.get("probe_out")?,
                stage,
            )?);
        }
        self.denoise_stages(case, &tensors, pipeline.vae(), out, |noise, image| {
            let run = Sd3Run {
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
