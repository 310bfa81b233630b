//! A diffusers model folder: `model_index.json` names the pipeline class and its components.

use std::path::Path;

use crate::config_files::read_json;
use crate::error::{EngineError, Result};

pub const SUPPORTED_PIPELINES: [&str; 4] = [
    "StableDiffusionPipeline",
    "StableDiffusionImg2ImgPipeline",
    "StableDiffusionXLPipeline",
    "StableDiffusionXLImg2ImgPipeline",
];

/// The pipeline family, which decides how text is encoded and what the UNet is fed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Stable Diffusion 1.x / 2.x (and SD-Turbo): one CLIP text encoder, last hidden state.
    StableDiffusion,
    /// SDXL (and SDXL-Turbo): two text encoders, penultimate hidden states, pooled embeddings
    /// and size/crop time ids.
    StableDiffusionXl,
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct ModelIndex {
    #[serde(rename = "_class_name")]
    pub class_name: String,
    /// SDXL: use zeros, not the encoded empty string, for the unconditional branch when no
    /// negative prompt is given.
    #[serde(default)]
    pub force_zeros_for_empty_prompt: Option<bool>,
}

impl ModelIndex {
    /// Whether `class` is one of [`SUPPORTED_PIPELINES`] (the UNet families).
    pub fn is_supported_class(class: &str) -> bool {
        SUPPORTED_PIPELINES.contains(&class)
    }

    pub fn family(&self, path: &Path) -> Result<Family> {
        match self.class_name.as_str() {
            "StableDiffusionPipeline" | "StableDiffusionImg2ImgPipeline" => {
                Ok(Family::StableDiffusion)
            }
            "StableDiffusionXLPipeline" | "StableDiffusionXLImg2ImgPipeline" => {
                Ok(Family::StableDiffusionXl)
            }
            other => Err(EngineError::UnsupportedPipeline {
                path: path.to_path_buf(),
                class: other.to_string(),
                supported: SUPPORTED_PIPELINES.join(", "),
            }),
        }
    }
}

/// What a server needs to know about a model folder before loading it: read from the
/// configs alone, no weights touched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSummary {
    pub family: Family,
    /// Training resolution: UNet sample size x VAE factor (512 for SD 1.5, 1024 for SDXL).
    pub native_size: u32,
    /// Pixels per latent per side (8 for SD and SDXL); sizes must be multiples of it.
    pub latent_factor: u32,
    /// Bytes of every `.safetensors` file under the folder: a bound on the memory the
    /// model takes once loaded.
    pub weights_bytes: u64,
}

impl ModelSummary {
    pub fn read(dir: &Path) -> Result<Self> {
        let index_path = dir.join("model_index.json");
        let index: ModelIndex = read_json(&index_path)?;
        let family = index.family(&index_path)?;
        let unet = crate::unet::UNetConfig::load(&dir.join("unet").join("config.json"))?;
        let vae = crate::vae::VaeConfig::load(&dir.join("vae").join("config.json"))?;
        let latent_factor = 1u32 << vae.block_out_channels.len().saturating_sub(1);
        Ok(Self {
            family,
            native_size: unet.sample_size as u32 * latent_factor,
            latent_factor,
            weights_bytes: safetensors_bytes(dir),
        })
    }
}

fn safetensors_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| {
            let path = entry.path();
            if path.is_dir() {
                safetensors_bytes(&path)
            } else if path.extension().is_some_and(|e| e == "safetensors") {
                entry.metadata().map(|m| m.len()).unwrap_or(0)
            } else {
                0
            }
        })
        .sum()
}
