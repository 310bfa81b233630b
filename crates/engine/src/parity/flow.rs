//! What the transformer families' (FLUX, Z-Image, SD3.5) cases share: the image-to-image
//! reference picture and its latents, the starting noise, and the last two stages (final
//! latents from the loop, the image decoded from the reference's final latents).

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::{Bound, Case, CaseTensors, Comparison, ParityRunner, compare};
use crate::error::{EngineError, Result};
use crate::image_ops;
use crate::vae::VaeStage;

impl ParityRunner {
    /// Image-to-image cases: our reading of the case's picture file (when present) and our
    /// encoding of the reference's picture, each against the reference's; then the
    /// reference's own latents, so that the loop starts where the reference's did and a VAE
    /// encoder error is not reported as a denoising one. `None` for text-to-image.
    pub(super) fn reference_latents(
        &self,
        case: &Case,
        tensors: &CaseTensors,
        out: &mut Vec<Comparison>,
        encode_image: impl Fn(&Tensor) -> Result<Tensor>,
    ) -> Result<Option<Tensor>> {
        if !case.init_image.unwrap_or(false) {
            return Ok(None);
        }
        let device = &self.options.device;
        let reference = tensors.get("init_image")?.to_device(device)?;
        let picture = self.cases_dir.join(format!("{}.init.png", case.name));
        if picture.is_file() {
            out.push(init_image_stage(&picture, &reference, case)?);
        }
        out.push(compare(
            "image latents",
            "image_latents",
            &encode_image(&reference)?,
            &tensors.get("image_latents")?,
            Bound::Relative(self.stage_tolerance),
        )?);
        Ok(Some(tensors.get("image_latents")?.to_device(device)?))
    }
}

impl ParityRunner {
    /// The stages from the starting point on: the reference picture's latents (image to
    /// image), `denoise(noise, reference)` from the reference's own noise against its final
    /// latents, and the decode of its final latents against its image.
    pub(super) fn denoise_stages(
        &self,
        case: &Case,
        tensors: &CaseTensors,
        vae: &VaeStage,
        out: &mut Vec<Comparison>,
        denoise: impl FnOnce(&Tensor, Option<(&Tensor, f64)>) -> Result<Tensor>,
    ) -> Result<()> {
        let image_latents =
            self.reference_latents(case, tensors, out, |picture| vae.encode_image(picture))?;
        let noise = start_noise(tensors, image_latents.is_some(), vae.device())?;
        let image = image_latents
            .as_ref()
            .map(|latents| (latents, case.strength.unwrap_or(1.0)));
        let latents = denoise(&noise, image)?;
        let stage = Bound::Relative(self.stage_tolerance);
        final_stages(vae, &latents, tensors, self.image_tolerance, stage, out)
    }
}

/// The reference's unit noise: `noise` beside a reference picture, else `initial_latents`.
fn start_noise(tensors: &CaseTensors, image: bool, device: &Device) -> Result<Tensor> {
    let name = if image { "noise" } else { "initial_latents" };
    Ok(tensors.get(name)?.to_device(device)?)
}

/// Our final latents against the reference's, and our decoding of the reference's final
/// latents against its image.
fn final_stages(
    vae: &VaeStage,
    latents: &Tensor,
    tensors: &CaseTensors,
    image_tolerance: f64,
    stage: Bound,
    out: &mut Vec<Comparison>,
) -> Result<()> {
    let reference = tensors.get("final_latents")?;
    out.push(compare(
        "latents",
        "final_latents",
        latents,
        &reference,
        stage,
    )?);
    let decoded = vae.decode(&reference.to_device(vae.device())?)?;
    out.push(compare(
        "image",
        "image",
        &decoded.squeeze(0)?,
        &tensors.get("image")?,
        Bound::Absolute(image_tolerance),
    )?);
    Ok(())
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
