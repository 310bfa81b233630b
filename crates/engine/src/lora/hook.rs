//! Where a LoRA meets a layer: every [`crate::nn::layers::Linear`] and 1x1
//! [`crate::nn::conv::SameConv`] built through [`crate::weights::build_component`] carries a
//! [`Tag`] (its component folder and diffusers module path, `unet` +
//! `down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`), and computes with the weight
//! merged with the LoRAs active on the calling thread for that tag, when there are any: made on
//! the layer's first call under the set and kept in the set ([`ActiveSet`]), so every later
//! step and request with the same set reuses it.
//!
//! Why a thread-local and not a field of the model: the models are immutable trees shared by
//! every request, and the LoRA set changes per request. A thread-local set for the duration of
//! one `Pipeline::generate` call ([`with_active`]) reaches every layer without threading a
//! parameter through each `forward`, and two threads running the same model with different
//! sets never see each other's. It holds because a model's `forward` runs on the thread that
//! called `generate`: rayon is used inside kernels only, never around a layer's `forward`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::{Result, Tensor};

/// A layer's address: its component folder (`unet`, `text_encoder_2`, `transformer`) and its
/// diffusers module path inside it, dotted.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag {
    pub component: Arc<str>,
    pub module: Arc<str>,
}

thread_local! {
    /// The component folder being built on this thread (set by `build_component`), so that the
    /// layers built inside it know which component they belong to.
    static BUILDING: RefCell<Option<Arc<str>>> = const { RefCell::new(None) };
    /// The adapters of the current `generate` call on this thread.
    static ACTIVE: RefCell<Option<Arc<ActiveSet>>> = const { RefCell::new(None) };
}

/// Run `build` with `component` as the folder its layers are tagged with.
pub(crate) fn building<T>(component: &str, build: impl FnOnce() -> T) -> T {
    let previous = BUILDING.with(|b| b.replace(Some(Arc::from(component))));
    let _restore = Restore(|| BUILDING.with(|b| *b.borrow_mut() = previous.clone()));
    build()
}

/// The tag of a layer being built at `prefix` (its `VarBuilder`'s), or `None` outside
/// `build_component` (tests building layers by hand).
pub(crate) fn tag_for(prefix: &str) -> Option<Tag> {
    BUILDING.with(|b| {
        b.borrow().as_ref().map(|component| Tag {
            component: component.clone(),
            module: Arc::from(prefix),
        })
    })
}

/// One LoRA's change to one layer's weight, `scale * B A` (`(out, in)`), as its two factors.
#[derive(Debug, Clone)]
pub struct LowRank {
    /// `(in, rank)`: the file's `lora_down`/`lora_A` transposed, so that `x` multiplies it as is.
    pub down_t: Tensor,
    /// `(rank, out)`: `lora_up`/`lora_B` transposed and multiplied by the request's scale
    /// times the file's `alpha / rank`, once, rather than scaling every call's product.
    pub up_t: Tensor,
}

/// The adapters of one LoRA set, by layer, and the weights merged with them so far.
#[derive(Debug, Default)]
pub struct ActiveSet {
    pub(crate) layers: HashMap<Tag, Vec<LowRank>>,
    /// Each layer's weight with the set's terms added, in the layer's stored layout and dtype.
    merged: Mutex<HashMap<Tag, Tensor>>,
}

impl ActiveSet {
    pub(crate) fn new(layers: HashMap<Tag, Vec<LowRank>>) -> Self {
        Self {
            layers,
            merged: Mutex::default(),
        }
    }

    /// Whether any adapter targets `component` (a text encoder's, say, so that encoded prompts
    /// cached without the set are not reused with it).
    pub fn touches(&self, component: &str) -> bool {
        self.layers.keys().any(|tag| &*tag.component == component)
    }

    /// How many layers the set changes.
    pub fn layer_count(&self) -> usize {
        self.layers.len()
    }

    /// How many bytes the merged copies made so far hold.
    pub fn merged_bytes(&self) -> usize {
        lock(&self.merged)
            .values()
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .sum()
    }
}

/// Run `work` with `set` active on this thread (none: no LoRA), restoring the previous set
/// afterwards, also when `work` panics.
pub fn with_active<T>(set: Option<Arc<ActiveSet>>, work: impl FnOnce() -> T) -> T {
    let previous = ACTIVE.with(|a| a.replace(set));
    let _restore = Restore(|| ACTIVE.with(|a| *a.borrow_mut() = previous.clone()));
    work()
}

/// The set active on this thread, if any.
pub fn active() -> Option<Arc<ActiveSet>> {
    ACTIVE.with(|a| a.borrow().clone())
}

/// Runs its closure when dropped.
struct Restore<F: FnMut()>(F);

impl<F: FnMut()> Drop for Restore<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

/// How a layer stores its weight, so that a LoRA's `(out, in)` change is added in that layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stored {
    /// `(out, in)`, as in the file (a linear layer off the CPU).
    OutIn,
    /// `(in, out)`: a linear layer on the CPU keeps its weight transposed for the GEMM.
    InOut,
    /// `(out, in, 1, 1)`: a 1x1 convolution.
    Conv1x1,
}

/// The weight a layer tagged `tag` should compute with: `None` when no active LoRA targets it
/// (use its own), else its weight, read by `stored` only then (a quantized layer dequantizes),
/// merged with the active terms, made once per set.
/// Whether the active LoRA set changes the layer with this tag ([`merged_weight`] would
/// return a merged copy).
pub(crate) fn changes(tag: Option<&Tag>) -> bool {
    tag.is_some_and(|tag| {
        ACTIVE.with(|a| {
            a.borrow()
                .as_ref()
                .is_some_and(|set| set.layers.contains_key(tag))
        })
    })
}

pub(crate) fn merged_weight(
    tag: Option<&Tag>,
    stored: impl FnOnce() -> Result<Tensor>,
    layout: Stored,
) -> Result<Option<Tensor>> {
    let Some(tag) = tag else {
        return Ok(None);
    };
    let Some(set) = ACTIVE.with(|a| a.borrow().clone()) else {
        return Ok(None);
    };
    let Some(terms) = set.layers.get(tag) else {
        return Ok(None);
    };
    if let Some(merged) = lock(&set.merged).get(tag) {
        return Ok(Some(merged.clone()));
    }
    let merged = merge(&stored()?, terms, layout)?;
    lock(&set.merged).insert(tag.clone(), merged.clone());
    Ok(Some(merged))
}

/// `stored + sum(down^T up)` in `layout`, computed in f32 (or the weight's own float type off
/// the CPU) and stored back in the weight's dtype, so a merged copy costs what the weight does.
fn merge(stored: &Tensor, terms: &[LowRank], layout: Stored) -> Result<Tensor> {
    let dtype = stored.dtype();
    let wide = if stored.device().is_cpu() {
        candle_core::DType::F32
    } else {
        dtype
    };
    let mut weight = stored.to_dtype(wide)?;
    for term in terms {
        // (in, out)
        let delta = term
            .down_t
            .to_dtype(wide)?
            .matmul(&term.up_t.to_dtype(wide)?)?;
        let delta = match layout {
            Stored::InOut => delta,
            Stored::OutIn => delta.t()?,
            Stored::Conv1x1 => {
                let (inner, out) = delta.dims2()?;
                delta.t()?.reshape((out, inner, 1, 1))?
            }
        };
        weight = (weight + delta)?;
    }
    weight.to_dtype(dtype)?.contiguous()
}

/// A poisoned lock only means another thread panicked mid-insert; the map is still sound.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
