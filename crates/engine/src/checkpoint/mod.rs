//! The files people download, read as if they were diffusers folders.
//!
//! A single-file checkpoint (SD's `model.diffusion_model.*`, BFL's FLUX layout, ...) holds the
//! same weights as a diffusers folder under other names, some fused or transposed. Rather than
//! teach every model builder a second naming, a checkpoint is *described* as a diffusers
//! folder: a small folder of configs (written at load time) whose component folders hold a
//! [`POINTER`] file naming the checkpoint and its [`Layout`]. [`crate::weights`] reads the
//! pointer and serves each tensor the builder asks for from the checkpoint through a
//! [`Remap`]: where it lives there, and how to cut or turn it into the diffusers tensor.
//!
//! A FLUX.1 transformer file (`flux1-dev.safetensors`, a fine-tune, ComfyUI's full checkpoint)
//! becomes a `transformer/` folder of two files: `config.json`, the base model's when there is
//! one, else [`flux_bfl::config`] of the file's [`read_shapes`] written out; and the pointer
//! `{"file": "/abs/flux1-dev.safetensors", "layout": "flux-bfl"}` ([`Pointer::write`] with
//! [`Layout::FluxBfl`]). A GGUF file (city96's `flux1-dev-Q4_K_S.gguf`) is pointed at the same
//! way: it is told apart by its magic and read by [`gguf::GgufFile`], whose quantized linears
//! stay quantized for models built through [`crate::weights::build_quantizable`] (FLUX's
//! transformer) and are dequantized for the others.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{Result as CandleResult, Tensor};

use crate::error::{EngineError, Result};

pub mod clip_text;
pub mod component_file;
pub mod flux_bfl;
pub mod gguf;
pub mod ldm_vae;
pub mod sd_unet;
mod single_file;

pub use single_file::{Described, ModelFormat, component_files, describe};

/// The file in a component folder that says its weights live in a checkpoint elsewhere.
pub const POINTER: &str = "seedbed-weights.json";

/// How the tensors of one component are named and shaped inside a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", tag = "layout")]
pub enum Layout {
    /// diffusers' own names, under `prefix` (empty for a file of one component).
    Diffusers { prefix: String },
    /// SD 1.x/2.x and SDXL's UNet in the LDM/SGM layout.
    SdUnet { prefix: String },
    /// The LDM autoencoder.
    LdmVae { prefix: String },
    /// Hugging Face's CLIP text model under a prefix.
    Clip { prefix: String },
    /// OpenCLIP's text tower, its first `layers` blocks (SD 2.x drops the last).
    OpenClip { prefix: String, layers: usize },
    /// A FLUX.1 transformer in Black Forest Labs' own names ([`flux_bfl`]), with or without
    /// ComfyUI's `model.diffusion_model.` prefix; a `.safetensors` file or a GGUF one.
    FluxBfl,
}

/// What a component folder's [`POINTER`] file holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Pointer {
    /// The checkpoint, absolute.
    pub file: PathBuf,
    #[serde(flatten)]
    pub layout: Layout,
}

impl Pointer {
    /// `dir/seedbed-weights.json`, if the component folder has one.
    pub fn read(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(POINTER);
        if !path.is_file() {
            return Ok(None);
        }
        crate::config_files::read_json(&path).map(Some)
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|source| EngineError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(POINTER);
        let json = serde_json::to_vec_pretty(self).expect("a pointer serializes");
        std::fs::write(&path, json).map_err(|source| EngineError::Io { path, source })
    }
}

/// Where a diffusers tensor comes from in a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// One tensor as it is; reshaped when only its shape differs (a 1x1 convolution's weight
    /// serving a linear layer, or back).
    Tensor(String),
    /// Rows `start..start + len` of a fused tensor (a fused q/k/v projection).
    Rows {
        name: String,
        start: usize,
        len: usize,
    },
    /// The two halves of dim 0 swapped: BFL's final norm stores (shift, scale) where
    /// diffusers has (scale, shift).
    SwappedHalves(String),
    /// A 2-D tensor transposed (OpenCLIP's `text_projection` multiplies from the right).
    Transposed(String),
}

impl Source {
    /// The checkpoint tensor it reads.
    pub fn tensor(&self) -> &str {
        match self {
            Self::Tensor(name)
            | Self::Rows { name, .. }
            | Self::SwappedHalves(name)
            | Self::Transposed(name) => name,
        }
    }

    /// The shape of the diffusers tensor, from the checkpoint's `shapes`.
    pub fn shape(&self, shapes: &Shapes) -> Option<Vec<usize>> {
        let mut shape = shapes.get(self.tensor())?.clone();
        match self {
            Self::Rows { len, .. } => *shape.first_mut()? = *len,
            Self::Transposed(_) => shape.reverse(),
            Self::Tensor(_) | Self::SwappedHalves(_) => {}
        }
        Some(shape)
    }

    /// Make the diffusers tensor from the checkpoint's, fetched by `fetch`.
    pub fn produce(
        &self,
        fetch: impl FnOnce(&str) -> CandleResult<Tensor>,
    ) -> CandleResult<Tensor> {
        let tensor = fetch(self.tensor())?;
        match self {
            Self::Tensor(_) => Ok(tensor),
            Self::Rows { start, len, .. } => tensor.narrow(0, *start, *len),
            Self::SwappedHalves(_) => {
                let half = tensor.dim(0)? / 2;
                Tensor::cat(
                    &[tensor.narrow(0, half, half)?, tensor.narrow(0, 0, half)?],
                    0,
                )
            }
            Self::Transposed(_) => tensor.t()?.contiguous(),
        }
    }
}

/// Every diffusers tensor of a component, by name, and where it comes from.
pub type Remap = HashMap<String, Source>;

/// The names and shapes in a checkpoint's header: what a layout reads to map it.
pub type Shapes = BTreeMap<String, Vec<usize>>;

/// The names and shapes in a checkpoint's header, safetensors or GGUF (in PyTorch's dimension
/// order), without reading a tensor; a safetensors file shorter than its header says is refused
/// as truncated.
pub fn read_shapes(path: &Path) -> Result<Shapes> {
    if !gguf::is_gguf(path) {
        return single_file::read_safetensors_shapes(path);
    }
    let invalid = |message: String| EngineError::Weights {
        path: path.to_path_buf(),
        message,
    };
    let mut file = std::fs::File::open(path).map_err(|source| EngineError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let content = candle_core::quantized::gguf_file::Content::read(&mut file)
        .map_err(|e| invalid(format!("not a valid GGUF file: {e}")))?;
    Ok(content
        .tensor_infos
        .into_iter()
        .map(|(name, info)| (name, info.shape.dims().to_vec()))
        .collect())
}

impl Layout {
    /// The diffusers names of the component's tensors, mapped onto the checkpoint's.
    pub fn remap(&self, shapes: &Shapes) -> Found<Remap> {
        match self {
            Self::Diffusers { prefix } => Ok(shapes
                .keys()
                .filter_map(|name| {
                    let bare = name.strip_prefix(prefix.as_str())?;
                    Some((bare.to_string(), Source::Tensor(name.clone())))
                })
                .collect()),
            Self::SdUnet { prefix } => sd_unet::remap(shapes, prefix),
            Self::LdmVae { prefix } => ldm_vae::remap(shapes, prefix),
            Self::Clip { prefix } => Ok(clip_text::remap_clip(shapes, prefix)),
            Self::OpenClip { prefix, layers } => {
                clip_text::remap_open_clip(shapes, prefix, *layers)
            }
            Self::FluxBfl => flux_bfl::remap(shapes),
        }
    }
}

/// The shape of the checkpoint tensor `name`, or an error naming it.
pub(crate) fn shape_of<'a>(shapes: &'a Shapes, name: &str) -> Found<&'a Vec<usize>> {
    shapes.get(name).ok_or_else(|| missing(name))
}

pub(crate) fn missing(name: &str) -> String {
    format!("the checkpoint has no tensor `{name}`")
}

/// What reading a checkpoint's layout finds wrong, said about its tensors; the caller names
/// the file.
pub(crate) type Found<T> = std::result::Result<T, String>;

/// How many numbered children `prefix` has (`input_blocks.` -> 1 + the highest N in
/// `input_blocks.N.*`), 0 when none.
pub(crate) fn count_indices(shapes: &Shapes, prefix: &str) -> usize {
    shapes
        .range(prefix.to_string()..)
        .take_while(|(name, _)| name.starts_with(prefix))
        .filter_map(|(name, _)| {
            name[prefix.len()..]
                .split('.')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .max()
        .map_or(0, |highest| highest + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The pointer a caller writes by hand (or the server for a downloaded file) for a FLUX
    /// single file, `.safetensors` or GGUF alike.
    #[test]
    fn a_flux_bfl_pointer_is_written_as_its_kebab_name() {
        let json = r#"{"file": "/models/flux1-dev-Q4_K_S.gguf", "layout": "flux-bfl"}"#;
        let pointer: Pointer = serde_json::from_str(json).unwrap();
        assert_eq!(pointer.layout, Layout::FluxBfl);
        assert_eq!(
            serde_json::to_value(&pointer).unwrap(),
            serde_json::from_str::<serde_json::Value>(json).unwrap()
        );
    }

    #[test]
    fn sources_cut_swap_and_turn_the_checkpoint_tensor() {
        let t = Tensor::arange(0f32, 8., &Device::Cpu)
            .unwrap()
            .reshape((4, 2))
            .unwrap();
        let get = |_: &str| Ok(t.clone());
        let rows = Source::Rows {
            name: "x".into(),
            start: 1,
            len: 2,
        };
        let v = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(v(rows.produce(get).unwrap()), [2., 3., 4., 5.]);
        let swapped = Source::SwappedHalves("x".into()).produce(get).unwrap();
        assert_eq!(v(swapped), [4., 5., 6., 7., 0., 1., 2., 3.]);
        let turned = Source::Transposed("x".into()).produce(get).unwrap();
        assert_eq!(turned.dims(), [2, 4]);
        assert_eq!(v(turned), [0., 2., 4., 6., 1., 3., 5., 7.]);
    }
}
