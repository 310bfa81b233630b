//! The FLUX cases, stage by stage.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use candle_core::{DType, Tensor};

use super::{Bound, Case, Comparison, ParityRunner, check_tokens, compare};
use crate::error::{EngineError, Result};
use crate::flux::pipeline::FluxRun;
use crate::image_ops;
use crate::pipeline::LatentPipeline;

impl ParityRunner {
    /// A FLUX case: token ids, both prompt encodings, one transformer call, the final latents
    /// from the reference's own noise (and, for image-to-image, its picture's latents), the
    /// image from the reference's final latents.
    pub(super) fn check_flux(&mut self, case: &Case, out: &mut Vec<Comparison>) -> Result<()> {
        let case_tensors = self.tensors(case)?;
        let (tensors, get) = (&case_tensors.map, |name: &str| case_tensors.get(name));
        let (image_bound, stage) = (
            Bound::Absolute(self.image_tolerance),
            Bound::Relative(self.stage_tolerance),
        );
        let device = self.options.device.clone();
        let picture = self.cases_dir.join(format!("{}.init.png", case.name));
        let pipeline = self.flux(&case.model)?;
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
        // Image-to-image: our preprocessing and encoding of the picture against the
        // reference's; the loop then starts from the reference's latents, so that a VAE
        // encoder error is not reported as a denoising one.
        let image_latents = match case.init_image.unwrap_or(false) {
            true => {
                let reference = get("init_image")?.to_device(&device)?;
                if picture.is_file() {
                    out.push(init_image_stage(&picture, &reference, case)?);
                }
                out.push(compare(
                    "image latents",
                    "image_latents",
                    &pipeline.encode_image(&reference)?,
                    &get("image_latents")?,
                    stage,
                )?);
                Some(get("image_latents")?.to_device(&device)?)
            }
            false => None,
        };
        let noise = match image_latents {
            Some(_) => get("noise")?,
            None => get("initial_latents")?,
        }
        .to_device(&device)?;
        let run = FluxRun {
            prompt: &prompt,
            negative: negative.as_ref().map(|(prompt, scale)| (prompt, *scale)),
            noise: &noise,
            steps: case.steps,
            guidance: case.guidance_scale,
            image: image_latents
                .as_ref()
                .map(|latents| (latents, case.strength.unwrap_or(1.0))),
        };
        let latents = pipeline.denoise(&run, &mut |_, _| {}, &AtomicBool::new(false))?;
        out.push(compare(
            "latents",
            "final_latents",
            &latents,
            &get("final_latents")?,
            stage,
        )?);
        let decoded = pipeline.decode(&get("final_latents")?.to_device(&device)?)?;
        out.push(compare(
            "image",
            "image",
            &decoded.squeeze(0)?,
            &get("image")?,
            image_bound,
        )?);
        Ok(())
    }
}

/// The case's picture file, read and scaled to [-1, 1] as a request's would be, against the
/// picture the reference pipeline received.
fn init_image_stage(picture: &Path, reference: &Tensor, case: &Case) -> Result<Comparison> {
    let image = image::open(picture).map_err(|e| EngineError::Io {
        path: picture.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    let ours = image_ops::from_picture(
        &image,
        case.width,
        case.height,
        reference.device(),
        DType::F32,
    )?;
    compare(
        "init image",
        "init_image",
        &ours,
        reference,
        Bound::Absolute(1e-6),
    )
}
