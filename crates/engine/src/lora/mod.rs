//! LoRA adapters, chosen per request and applied to a loaded model without reloading it.
//!
//! - [`file`](mod@file): a LoRA file's layout (Kohya/A1111 or diffusers/PEFT) from its header,
//!   and each module bound to a layer of the model, shapes checked.
//! - [`targets`]: the layers of a model folder a LoRA may change, from its weight headers.
//! - [`hook`]: how the layers see the request's LoRAs (a thread-local set during `generate`).
//!
//! **Merged copies of the affected weights, cached per LoRA set, not low-rank adds at run
//! time.** Both were measured on this engine (`lora::tests::cost_of_runtime_adds_and_merging`,
//! candle's f32 GEMM on 2 shared CPU cores, rank 16, best of 5; `bench/RESULTS.md`): adding
//! `(x A^T) B^T` after a layer's product costs +58% of the product for SD 1.5's 320-wide
//! layers at 512 px (4096 tokens), +19% at 640 wide, +9% and +12% for SDXL's 1280-wide
//! projections and its 1280->10240 feed-forward at 1024 px (the two thin products and the
//! extra pass over the output are memory-bound), on every call; merging `W + B A` once costs
//! 1.0, 1.6, 2.9 and 153 ms for the same layers, 3-15% of a single call. A generation calls
//! each layer once per step and guidance branch (20-60 times for a 20-30 step SDXL run with
//! CFG), so the merge is paid back within the first step. Its price is memory: each merged
//! weight is a copy in the weight's dtype, for every layer the set touches. So the copies are
//! made lazily, on a layer's first call under the set (a set that only touches the text
//! encoders copies nothing of the UNet), kept in the set ([`hook::ActiveSet`]), and the sets
//! are an LRU of [`SETS`] per pipeline keyed by file, size, modification time and scale: a
//! client iterating on a prompt with the same LoRAs pays the merge once, a third set drops the
//! oldest one's copies. The base weights are never modified, so requests without LoRAs, or
//! with another set, run the model as loaded. A quantized layer (a GGUF FLUX transformer's)
//! merges into its dequantized weight, so its copy is dense: f32 on the CPU.

pub mod file;
pub mod hook;
pub mod targets;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use candle_core::Device;

pub use file::{Layout, LoraFile};
pub use hook::{ActiveSet, with_active};
pub use targets::{FAMILIES_TAKING_LORAS, Targets};

use crate::error::{EngineError, Result};
use crate::lru::Lru;

/// One LoRA a request asks for: its file (resolved by the caller inside its LoRA folder) and
/// the factor on its change.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraChoice {
    /// The name the request used, for messages.
    pub name: String,
    pub path: PathBuf,
    pub scale: f64,
}

/// What checking a LoRA against a model found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoraSummary {
    pub layout: Layout,
    /// How many layers of the model it changes.
    pub layers: usize,
}

/// Check that the LoRA at `lora` fits the model (a folder or a checkpoint file), from headers
/// alone: the layout is known, every module names a layer of the model, every shape fits.
pub fn check(model: &Path, lora: &Path) -> Result<LoraSummary> {
    let targets = checked_targets(model)?;
    let file = LoraFile::open(lora)?;
    let bindings = file.bind(&targets)?;
    Ok(LoraSummary {
        layout: file.layout(),
        layers: bindings.len(),
    })
}

/// Models whose targets [`check`] keeps: it runs for every request that names LoRAs, and a
/// checkpoint file is described anew (a folder of configs) to read them.
const CHECKED_MODELS: usize = 8;

/// The targets of the model at `path`, kept per path, size and modification time (a file
/// replaced under the same name is read again).
fn checked_targets(model: &Path) -> Result<Arc<Targets>> {
    static KEPT: Mutex<Option<Lru<ModelKey, Arc<Targets>>>> = Mutex::new(None);
    let meta = std::fs::metadata(model).map_err(|source| EngineError::Io {
        path: model.to_path_buf(),
        source,
    })?;
    let key = (model.to_path_buf(), meta.len(), meta.modified().ok());
    if let Some(targets) = lock(&KEPT).as_mut().and_then(|kept| kept.get(&key)) {
        return Ok(targets);
    }
    // A checkpoint file is read through the folder it is described as.
    let described = match model.is_file() {
        true => Some(crate::checkpoint::describe(model)?),
        false => None,
    };
    let targets = Arc::new(Targets::read(
        described.as_ref().map_or(model, |d| d.dir()),
    )?);
    lock(&KEPT)
        .get_or_insert_with(|| Lru::new(CHECKED_MODELS))
        .insert(key, targets.clone());
    Ok(targets)
}

type ModelKey = (PathBuf, u64, Option<SystemTime>);

/// LoRA sets kept per pipeline, each with its merged weights: a client iterating on a prompt
/// sends the same set again, and each set may hold a copy of most of a UNet's attention and
/// feed-forward weights.
pub const SETS: usize = 2;

/// Identifies a LoRA set: each file (with its size and modification time, so a file replaced
/// in the folder is read again) and its scale.
type SetKey = Vec<(PathBuf, u64, Option<SystemTime>, u64)>;

/// A pipeline's LoRA state: the model's targets, read on first use, and recent sets.
pub struct Loras {
    model_dir: PathBuf,
    device: Device,
    targets: Mutex<Option<Arc<Targets>>>,
    sets: Mutex<Lru<SetKey, Arc<ActiveSet>>>,
}

impl Loras {
    pub fn new(model_dir: &Path, device: Device) -> Self {
        Self {
            model_dir: model_dir.to_path_buf(),
            device,
            targets: Mutex::new(None),
            sets: Mutex::new(Lru::new(SETS)),
        }
    }

    /// The active set for `choices` (none for an empty list), from the cache or made now.
    pub fn set(&self, choices: &[LoraChoice]) -> Result<Option<Arc<ActiveSet>>> {
        if choices.is_empty() {
            return Ok(None);
        }
        let key = choices
            .iter()
            .map(|choice| {
                let meta = std::fs::metadata(&choice.path).map_err(|source| EngineError::Io {
                    path: choice.path.clone(),
                    source,
                })?;
                Ok((
                    choice.path.clone(),
                    meta.len(),
                    meta.modified().ok(),
                    choice.scale.to_bits(),
                ))
            })
            .collect::<Result<SetKey>>()?;
        if let Some(set) = lock(&self.sets).get(&key) {
            return Ok(Some(set));
        }
        let targets = self.targets()?;
        let mut layers: std::collections::HashMap<_, Vec<_>> = Default::default();
        for choice in choices {
            let file = LoraFile::open(&choice.path)?;
            let bindings = file.bind(&targets)?;
            for (tag, term) in file.load(&bindings, choice.scale, &self.device)? {
                layers.entry(tag).or_default().push(term);
            }
        }
        let set = Arc::new(ActiveSet::new(layers));
        lock(&self.sets).insert(key, set.clone());
        Ok(Some(set))
    }

    /// How many bytes the kept sets' merged weights hold: memory this pipeline uses beyond its
    /// weight files, which a model cache with a budget counts.
    pub fn merged_bytes(&self) -> u64 {
        lock(&self.sets)
            .values()
            .map(|set| set.merged_bytes() as u64)
            .sum()
    }

    fn targets(&self) -> Result<Arc<Targets>> {
        let mut slot = lock(&self.targets);
        if let Some(targets) = slot.as_ref() {
            return Ok(targets.clone());
        }
        let targets = Arc::new(Targets::read(&self.model_dir)?);
        *slot = Some(targets.clone());
        Ok(targets)
    }
}

/// A poisoned lock only means another request panicked mid-insert; the cache is still sound.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests;
