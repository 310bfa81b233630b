//! A diffusers model folder: `model_index.json` names the pipeline class, and the class names
//! the family that runs it. [`FAMILIES`] is the one table from class to family (its classes,
//! shape, loader and parity check); a new family is a module of its own, its parity file, and
//! one row here.

use std::path::Path;

use crate::checkpoint::{Described, ModelFormat};
use crate::config_files::read_json;
use crate::error::{EngineError, Result};
use crate::pipeline::{Generator, LoadOptions};
use crate::scheduler::SchedulerKind;

/// The model families the engine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Family {
    /// Stable Diffusion 1.x / 2.x (and SD-Turbo).
    StableDiffusion,
    /// SDXL (and SDXL-Turbo).
    StableDiffusionXl,
    /// FLUX.1 \[schnell\] and \[dev\].
    Flux,
    /// Z-Image (Turbo).
    ZImage,
    /// Stable Diffusion 3.5 (Large, Large Turbo, Medium).
    StableDiffusion3,
}

impl Family {
    /// Whether it denoises with a UNet and takes the UNet samplers (`scheduler`, Karras sigmas).
    pub fn is_unet(self) -> bool {
        matches!(self, Self::StableDiffusion | Self::StableDiffusionXl)
    }

    /// Refuse, by field, the options this family does not take: the UNet samplers (`scheduler`,
    /// Karras sigmas) outside SD/SDXL, true CFG outside FLUX. `model` names it in the message.
    pub fn check_options(
        self,
        model: &str,
        scheduler: Option<SchedulerKind>,
        karras_sigmas: bool,
        true_cfg_scale: Option<f64>,
    ) -> Result<()> {
        if !self.is_unet() {
            if let Some(kind) = scheduler {
                return Err(EngineError::invalid(
                    "scheduler",
                    format!(
                        "scheduler `{}`: {model} samples with its own flow-match Euler schedule; \
                         leave scheduler out",
                        kind.name()
                    ),
                ));
            }
            if karras_sigmas {
                return Err(EngineError::invalid(
                    "karras_sigmas",
                    format!(
                        "{model} samples with a flow-match schedule, which takes no Karras sigmas"
                    ),
                ));
            }
        }
        if true_cfg_scale.is_some() && self != Self::Flux {
            return Err(EngineError::invalid(
                "true_cfg_scale",
                format!("{model} guides with guidance_scale; true_cfg_scale is for FLUX models"),
            ));
        }
        Ok(())
    }

    pub(crate) fn entry(self) -> &'static FamilyEntry {
        FAMILIES
            .iter()
            .find(|entry| entry.family == self)
            .expect("every family has a row in FAMILIES")
    }
}

/// What a family module provides: the pipeline classes it runs, how to read a folder's shape
/// from its configs alone, how to load it, and how to check it against diffusers' cases.
pub(crate) struct FamilyEntry {
    pub family: Family,
    pub classes: &'static [&'static str],
    pub shape: fn(&Path) -> Result<ModelShape>,
    pub load: fn(&Path, &ModelIndex, LoadOptions) -> Result<Box<dyn Generator>>,
    pub parity: crate::parity::ParityCheck,
}

const FAMILIES: [&FamilyEntry; 5] = [
    &crate::sd::SD,
    &crate::sd::SDXL,
    &crate::flux::FLUX,
    &crate::zimage::ZIMAGE,
    &crate::sd3::SD3,
];

/// Every `_class_name` the engine runs.
pub fn supported_classes() -> impl Iterator<Item = &'static str> {
    FAMILIES
        .iter()
        .flat_map(|entry| entry.classes.iter().copied())
}

/// A family's reading of a folder's configs: sizes and the defaults its model cards recommend.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelShape {
    /// Training resolution (512 for SD 1.5, 1024 for SDXL and FLUX).
    pub native_size: u32,
    /// Pixels per latent token per side (8 for SD and SDXL, 16 for FLUX's 2x2 packing);
    /// sizes must be multiples of it.
    pub latent_factor: u32,
    pub default_steps: u32,
    pub default_guidance_scale: f64,
    /// The longest side in pixels the model computes: the engine's
    /// [`crate::pipeline::MAX_SIDE`], or less where the model's positions end (SD3's stored
    /// position table).
    pub max_side: u32,
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct ModelIndex {
    #[serde(rename = "_class_name")]
    pub class_name: String,
    /// SDXL: use zeros, not the encoded empty string, for the unconditional branch when no
    /// negative prompt is given.
    #[serde(default)]
    pub force_zeros_for_empty_prompt: Option<bool>,
    /// Every other key, among them the components: `[library, class]`, or `[null, null]`
    /// for one the folder leaves out (SD3.5 without T5).
    #[serde(flatten)]
    others: std::collections::BTreeMap<String, serde_json::Value>,
}

impl ModelIndex {
    /// `dir/model_index.json`.
    pub fn read(dir: &Path) -> Result<Self> {
        read_json(&dir.join("model_index.json"))
    }

    /// Whether the folder has the component `name` (listed, and not as `[null, null]`).
    pub fn has_component(&self, name: &str) -> bool {
        match self.others.get(name) {
            Some(serde_json::Value::Array(pair)) => {
                !pair.is_empty() && pair.iter().all(|part| !part.is_null())
            }
            _ => false,
        }
    }

    /// The family that runs this class, or an error naming the classes that are supported.
    pub fn family(&self, dir: &Path) -> Result<Family> {
        FAMILIES
            .iter()
            .find(|entry| entry.classes.contains(&self.class_name.as_str()))
            .map(|entry| entry.family)
            .ok_or_else(|| EngineError::UnsupportedPipeline {
                path: dir.join("model_index.json"),
                class: self.class_name.clone(),
                supported: supported_classes().collect::<Vec<_>>().join(", "),
            })
    }
}

/// Load a folder with its family's pipeline.
pub(crate) fn load(dir: &Path, options: LoadOptions) -> Result<(Family, Box<dyn Generator>)> {
    let index = ModelIndex::read(dir)?;
    let family = index.family(dir)?;
    Ok((family, (family.entry().load)(dir, &index, options)?))
}

/// What a server needs to know about a model folder before loading it: read from the
/// configs alone, no weights touched.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSummary {
    pub family: Family,
    pub shape: ModelShape,
    /// Bytes of every `.safetensors` file under the folder (or of the checkpoint): a bound on
    /// the memory the model takes once loaded.
    pub weights_bytes: u64,
    pub format: ModelFormat,
}

impl ModelSummary {
    /// Read a diffusers folder's configs, or describe a checkpoint file (its header only).
    pub fn read(path: &Path) -> Result<Self> {
        if path.is_file() {
            return Self::described(&crate::checkpoint::describe(path)?);
        }
        Self::read_folder(path)
    }

    /// What a checkpoint described as a folder amounts to.
    pub fn described(described: &Described) -> Result<Self> {
        Ok(Self {
            weights_bytes: described.weights_bytes,
            format: described.format.clone(),
            ..Self::read_folder(described.dir())?
        })
    }

    fn read_folder(dir: &Path) -> Result<Self> {
        let family = ModelIndex::read(dir)?.family(dir)?;
        Ok(Self {
            family,
            shape: (family.entry().shape)(dir)?,
            weights_bytes: safetensors_bytes(dir),
            format: ModelFormat::Folder,
        })
    }
}

/// The bytes of the weights a folder reads: its `.safetensors` files, and for a checkpoint
/// described as a folder the files its pointers name, each file once (one checkpoint serves
/// several components).
pub(crate) fn safetensors_bytes(dir: &Path) -> u64 {
    let mut files = std::collections::BTreeSet::new();
    weight_files(dir, &mut files);
    files
        .iter()
        .map(|path| std::fs::metadata(path).map(|m| m.len()).unwrap_or(0))
        .sum()
}

fn weight_files(dir: &Path, files: &mut std::collections::BTreeSet<std::path::PathBuf>) {
    if let Ok(Some(pointer)) = crate::checkpoint::Pointer::read(dir) {
        files.insert(pointer.file.canonicalize().unwrap_or(pointer.file));
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for path in entries.flatten().map(|entry| entry.path()) {
        if path.is_dir() {
            weight_files(&path, files);
        } else if path.extension().is_some_and(|e| e == "safetensors") {
            files.insert(path.canonicalize().unwrap_or(path));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_left_out_as_null_pairs_are_absent() {
        let index: ModelIndex = serde_json::from_str(
            r#"{"_class_name": "StableDiffusion3Pipeline", "_diffusers_version": "0.42.1",
                "text_encoder": ["transformers", "CLIPTextModelWithProjection"],
                "text_encoder_3": [null, null], "image_encoder": [null, null]}"#,
        )
        .unwrap();
        assert!(index.has_component("text_encoder"));
        assert!(!index.has_component("text_encoder_3"));
        assert!(!index.has_component("tokenizer_3"));
        assert!(!index.has_component("_diffusers_version"));
    }
}
