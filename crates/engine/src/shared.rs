//! Model components shared between loaded pipelines.
//!
//! An SDXL base and its refiner use the same VAE and second text encoder; two revisions in a
//! Hugging Face cache point at the same blobs; a folder may be served under two names. Each
//! component is keyed by the files it is built from (canonical paths, size and mtime of its
//! config and weights) plus dtype and device, and a second load of the same key returns the
//! already-loaded component instead of a second copy in memory. Entries are weak: a
//! component is freed when the last pipeline using it is dropped.

use std::any::Any;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::SystemTime;

use candle_core::{DType, Device, DeviceLocation};

use crate::error::Result;
use crate::weights::{Variant, find_weight_files};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FileId {
    path: PathBuf,
    len: u64,
    modified: Option<SystemTime>,
}

impl FileId {
    fn of(path: &Path) -> Option<Self> {
        let path = path.canonicalize().ok()?;
        let meta = std::fs::metadata(&path).ok()?;
        Some(Self {
            path,
            len: meta.len(),
            modified: meta.modified().ok(),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    /// The Rust type of the component: a UNet and a VAE never share.
    kind: &'static str,
    files: Vec<FileId>,
    dtype: DType,
    device: DeviceLocation,
}

type Entries = HashMap<Key, Weak<dyn Any + Send + Sync>>;

static LOADED: LazyLock<Mutex<Entries>> = LazyLock::new(Default::default);

/// The component built from `dir` (its `config.json` and weights), loading it with `load`
/// unless an identical one is already in memory.
pub fn load_shared<T: Send + Sync + 'static>(
    dir: &Path,
    variant: Variant,
    dtype: DType,
    device: &Device,
    load: impl FnOnce() -> Result<T>,
) -> Result<Arc<T>> {
    // Anything unreadable gets no key: `load` then reports the problem properly.
    let Some(key) = key_for::<T>(dir, variant, dtype, device) else {
        return Ok(Arc::new(load()?));
    };
    if let Some(found) = lookup::<T>(&key) {
        tracing::info!(component = %dir.display(), "sharing an already loaded component");
        return Ok(found);
    }
    // Load without holding the lock: a UNet takes seconds. Two racing loads of the same
    // component both load; the first to finish is kept.
    let loaded = Arc::new(load()?);
    let mut entries = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    entries.retain(|_, weak| weak.strong_count() > 0);
    if let Some(existing) = entries.get(&key).and_then(upgrade::<T>) {
        return Ok(existing);
    }
    let erased: Arc<dyn Any + Send + Sync> = loaded.clone();
    entries.insert(key, Arc::downgrade(&erased));
    Ok(loaded)
}

fn key_for<T: 'static>(dir: &Path, variant: Variant, dtype: DType, device: &Device) -> Option<Key> {
    let mut files = vec![FileId::of(&dir.join("config.json"))?];
    for path in find_weight_files(dir, variant).ok()? {
        files.push(FileId::of(&path)?);
    }
    Some(Key {
        kind: std::any::type_name::<T>(),
        files,
        dtype,
        device: device.location(),
    })
}

fn lookup<T: Send + Sync + 'static>(key: &Key) -> Option<Arc<T>> {
    let entries = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    entries.get(key).and_then(upgrade::<T>)
}

fn upgrade<T: Send + Sync + 'static>(weak: &Weak<dyn Any + Send + Sync>) -> Option<Arc<T>> {
    weak.upgrade()?.downcast::<T>().ok()
}
