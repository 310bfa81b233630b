//! The FLUX cases, stage by stage.

use std::sync::atomic::AtomicBool;

use super::{Bound, Case, Comparison, ParityRunner, check_tokens, compare};
use crate::error::Result;
use crate::flux::pipeline::{FluxPipeline, FluxRun};

impl ParityRunner {
    /// A FLUX case: token ids, both prompt encodings, one transformer call, the final latents
    /// from the reference's own noise (and, for image-to-image, its picture's latents), the
    /// image from the reference's final latents.
    pub(crate) fn check_flux(&mut self, case: &Case, out: &mut Vec<Comparison>) -> Result<()> {
        let case_tensors = self.tensors(case)?;
        let (tensors, get) = (&case_tensors.map, |name: &str| case_tensors.get(name));
        let stage = Bound::Relative(self.stage_tolerance);
        let device = self.options.device.clone();
        self.load(&case.model, |dir, _, options| {
            FluxPipeline::load(dir, options)
        })?;
        let pipeline: &FluxPipeline = self.loaded(&case.model)?;
        let length = case
            .max_sequence_length
            .unwrap_or_else(|| pipeline.default_max_sequence_length());
        let (clip_ids, t5_ids) = pipeline.token_ids(&case.prompt, length)?;
        check_tokens(&clip_ids, &get("prompt_token_ids")?)?;
        check_tokens(&t5_ids, &get("prompt_token_ids_2")?)?;
        let prompt = pipeline.encode(&case.prompt, length)?;
        out.push(compare(
            "text",
            "prompt_embeds",
            &prompt.text,
            &get("prompt_embeds")?,
            stage,
        )?);
        out.push(compare(
            "text",
            "pooled_prompt_embeds",
            &prompt.pooled,
            &get("pooled_prompt_embeds")?,
            stage,
        )?);
        let negative = match (&case.negative_prompt, case.true_cfg_scale) {
            (Some(negative), Some(scale)) if scale > 1.0 => {
                Some((pipeline.encode(negative, length)?, scale))
            }
            _ => None,
        };
        if let (Some(latents), Some(timestep)) =
            (tensors.get("probe_latents"), tensors.get("probe_timestep"))
        {
            let sigma = timestep.flatten_all()?.to_vec1::<f32>()?[0];
            let guidance = match tensors.get("probe_guidance") {
                Some(g) => Some(g.flatten_all()?.to_vec1::<f32>()?[0]),
                None => None,
            };
            let probe = pipeline.probe(
                &prompt,
                &latents.to_device(&device)?,
                sigma,
                guidance,
                case.height,
                case.width,
            )?;
            out.push(compare(
                "transformer probe",
                "probe_out",
                &probe,
                &get("probe_out")?,
                stage,
            )?);
        }
        self.denoise_stages(case, &case_tensors, pipeline.vae(), out, |noise, image| {
            let run = FluxRun {
                prompt: &prompt,
                negative: negative.as_ref().map(|(prompt, scale)| (prompt, *scale)),
                noise,
                steps: case.steps,
                guidance: case.guidance_scale,
                image,
            };
            pipeline.denoise(&run, &mut |_, _, _| {}, &AtomicBool::new(false))
        })
    }
}
