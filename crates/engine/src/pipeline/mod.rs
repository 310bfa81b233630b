//! The engine's front door: one [`Pipeline`] for every model family. It reads
//! `model_index.json`, hands the folder to the family that runs its class
//! ([`crate::model`]), and checks every request the same way before the family sees it.

mod batch;
mod request;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use candle_core::{DType, Device, Tensor};

pub(crate) use batch::{Decoded, each_image, each_latent_image, guidance_negative};
pub use request::{
    GenerateRequest, InitImage, MAX_GUIDANCE, MAX_IMAGES, MAX_SIDE, MAX_STEPS, OnStep, Progress,
    image_seed, img2img_start,
};

use crate::checkpoint::Described;
use crate::error::Result;
use crate::lora::{LoraChoice, Loras};
use crate::model::{Family, ModelSummary};
use crate::residency::MemoryPlan;
use crate::weights::Variant;

pub use crate::vae::VaeTiling;

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    /// Weight dtype of the text encoders and denoiser (and of the VAE unless its config asks
    /// to stay in f32 via `force_upcast`). They compute in it too, except half precision on
    /// CPU, which computes in f32 ([`crate::nn::layers::compute_dtype`]).
    pub dtype: DType,
    pub variant: Variant,
    pub vae_tiling: VaeTiling,
    /// Whether components stay loaded between stages (the transformer families follow it).
    pub memory_plan: MemoryPlan,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dtype: DType::F32,
            variant: Variant::Auto,
            vae_tiling: VaeTiling::Auto,
            memory_plan: MemoryPlan::default(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct GeneratedImage {
    pub seed: u64,
    pub image: image::RgbImage,
    pub times: StageTimes,
}

/// Where one image's time went (for latency metrics and `seedbed bench`).
#[derive(Debug, Clone, Copy, Default)]
pub struct StageTimes {
    /// Encoding the prompts; done once per `generate` call, so only its first image carries it.
    pub text_encode: Duration,
    /// The denoising loop, with image-to-image's encode of the picture.
    pub denoise: Duration,
    pub decode: Duration,
}

/// What every family's pipeline does. The request reaching it has passed
/// [`GenerateRequest::validate`] and [`Family::check_options`].
pub trait Generator: Send + Sync {
    fn generate(
        &self,
        request: &GenerateRequest,
        on_progress: &mut dyn FnMut(Progress),
        cancel: &AtomicBool,
    ) -> Result<Vec<GeneratedImage>>;

    /// The latents a [`Progress`] carries as a small picture ([`crate::preview`]).
    fn preview(&self, latents: &Tensor) -> Result<image::RgbImage>;
}

/// A loaded model folder of any supported family.
pub struct Pipeline {
    dir: PathBuf,
    summary: ModelSummary,
    generator: Box<dyn Generator>,
    /// For a checkpoint file: the folder it is read through, kept while the model is loaded
    /// (components loaded per stage read it again).
    described: Option<Described>,
    /// The LoRA sets of recent requests, applied on top of the loaded weights.
    loras: Loras,
}

impl Pipeline {
    /// Load a diffusers model folder (the one holding `model_index.json`) or a single-file
    /// checkpoint.
    pub fn load(path: &Path, options: LoadOptions) -> Result<Self> {
        let described = match path.is_file() {
            true => Some(crate::checkpoint::describe(path)?),
            false => None,
        };
        let (summary, folder) = match &described {
            Some(described) => (ModelSummary::described(described)?, described.dir()),
            None => (ModelSummary::read(path)?, path),
        };
        let loras = Loras::new(folder, options.device.clone());
        let (_, generator) = crate::model::load(folder, options)?;
        release_free_heap();
        Ok(Self {
            dir: path.to_path_buf(),
            summary,
            generator,
            described,
            loras,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The latents of a [`Progress`] as a picture of their size: a preview of the image
    /// forming, for the progress callback to send on. The first call fits the model's
    /// projection (one small decode).
    pub fn preview(&self, latents: &Tensor) -> Result<image::RgbImage> {
        self.generator.preview(latents)
    }

    /// Bytes held by the weights merged with recent requests' LoRAs, beyond the model's own.
    pub fn lora_bytes(&self) -> u64 {
        self.loras.merged_bytes()
    }

    pub fn family(&self) -> Family {
        self.summary.family
    }

    /// Pixels per latent token per side; sizes must be multiples of it.
    pub fn latent_factor(&self) -> u32 {
        self.summary.shape.latent_factor
    }

    /// The resolution the model was trained at.
    pub fn native_size(&self) -> u32 {
        self.summary.shape.native_size
    }

    /// Generate `request.count` images, image `i` from seed `request.seed + i`.
    pub fn generate(
        &self,
        request: &GenerateRequest,
        on_progress: &mut dyn FnMut(Progress),
        cancel: &AtomicBool,
    ) -> Result<Vec<GeneratedImage>> {
        self.generate_with_loras(request, &[], on_progress, cancel)
    }

    /// [`Self::generate`] with `loras` applied to the loaded weights for this call only.
    pub fn generate_with_loras(
        &self,
        request: &GenerateRequest,
        loras: &[LoraChoice],
        on_progress: &mut dyn FnMut(Progress),
        cancel: &AtomicBool,
    ) -> Result<Vec<GeneratedImage>> {
        request.validate(self.latent_factor())?;
        // A folder's name, or a checkpoint's without its extension.
        let name = match self.described {
            Some(_) => self.dir.file_stem(),
            None => self.dir.file_name(),
        };
        let name = name.unwrap_or_default().to_string_lossy();
        self.family().check_options(
            &name,
            request.scheduler,
            request.karras_sigmas,
            request.true_cfg_scale,
        )?;
        let set = self.loras.set(loras)?;
        crate::lora::with_active(set, || {
            self.generator.generate(request, on_progress, cancel)
        })
    }
}

/// Hand the heap's free pages back to the OS (after a load, and before each VAE decode of a
/// half-precision model on the CPU, [`crate::vae::Vae::decode_scaled`]). Loading converts each weight through a
/// temporary (f32 read from the file, then bf16 or packed), and the temporaries leave holes
/// between the weights that the heap keeps resident and that later, larger activations
/// cannot use: 370 MiB after loading the SDXL-shaped model in bf16, a fifth of its decode's
/// peak over the weights. The pages come back zeroed if the heap reuses them.
pub(crate) fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases pages of free chunks; it is safe to call at any time
    // from any thread.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}
