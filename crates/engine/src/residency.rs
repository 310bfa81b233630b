//! Which components a pipeline keeps in memory. A FLUX.1 checkpoint is a 24 GB transformer
//! beside a 9.5 GB T5 (bf16): kept together they need their sum, loaded each for its own
//! stage (text, denoise, decode) and released after it, the largest one plus activations.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use crate::error::Result;
use crate::pipeline::LoadOptions;
use crate::weights::check_weight_files;

/// How a pipeline holds its components.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryPlan {
    /// Sequential when the model's weight files add up to more than `budget` bytes, else
    /// resident.
    Auto { budget: u64 },
    /// Every component loaded once and kept: the fastest, the sum of them in memory.
    Resident,
    /// Each component loaded for its stage and released after it: at most the largest
    /// component at once, at the cost of reading it again for every image.
    Sequential,
}

impl Default for MemoryPlan {
    fn default() -> Self {
        Self::Auto { budget: u64::MAX }
    }
}

impl MemoryPlan {
    /// Whether a model with `weights_bytes` of weight files loads its components per stage.
    pub fn is_sequential(self, weights_bytes: u64) -> bool {
        match self {
            Self::Auto { budget } => weights_bytes > budget,
            Self::Resident => false,
            Self::Sequential => true,
        }
    }
}

type Loader<T> = Box<dyn Fn() -> Result<T> + Send + Sync>;

/// One component, kept or loaded on use.
pub(crate) struct Component<T> {
    name: &'static str,
    kept: Option<Arc<T>>,
    load: Loader<T>,
}

impl<T: 'static> Component<T> {
    /// The component in `dir`, read by `load`. Resident: loaded now. Sequential: its weight
    /// files checked now (so a broken model fails when loaded, not in the middle of a job)
    /// and loaded on each use.
    pub fn new(
        name: &'static str,
        sequential: bool,
        dir: &Path,
        options: &LoadOptions,
        load: fn(&Path, &LoadOptions) -> Result<T>,
    ) -> Result<Self> {
        let (path, options) = (dir.to_path_buf(), options.clone());
        let kept = if sequential {
            check_weight_files(dir, options.variant)?;
            None
        } else {
            Some(Arc::new(load(dir, &options)?))
        };
        Ok(Self {
            name,
            kept,
            load: Box::new(move || load(&path, &options)),
        })
    }

    /// The component: the kept one, or one loaded now that is released when the caller
    /// drops it.
    pub fn get(&self) -> Result<Arc<T>> {
        if let Some(kept) = &self.kept {
            return Ok(kept.clone());
        }
        let started = Instant::now();
        let component = (self.load)()?;
        tracing::debug!(
            component = self.name,
            seconds = started.elapsed().as_secs_f64(),
            "loaded for one stage"
        );
        Ok(Arc::new(component))
    }

    pub fn is_resident(&self) -> bool {
        self.kept.is_some()
    }
}
