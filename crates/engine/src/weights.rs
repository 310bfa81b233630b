//! Safetensors weights for one model component.
//!
//! Each file stays memory-mapped while its model is built and, through the layers that read
//! their weights in place ([`crate::nn::mapped`]: f32 weights computed on in f32 on the CPU),
//! for as long as the model lives. candle's CPU tensors own their memory, so every other
//! tensor is read once into memory of its own: with `pread` straight from the file into the
//! tensor's buffer, one copy out of the page cache (copying out of the mapping instead faulted
//! every 64 KiB of a 5 GB model in and out again).
//!
//! Real checkpoints come as `diffusion_pytorch_model.safetensors`, `model.safetensors`, their
//! `.fp16` variants, or sharded behind an `*.safetensors.index.json`, in f32, f16 or bf16.
//! Tensors are converted to the compute dtype as they are read; a missing tensor or one of the
//! wrong shape becomes an error naming the file and the tensor instead of a panic.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;
use candle_nn::var_builder::SimpleBackend;
use memmap2::Mmap;
use safetensors::SafeTensors;
use safetensors::tensor::TensorInfo;

use crate::checkpoint::gguf::{GgufFile, is_gguf};
use crate::checkpoint::{Pointer, Remap, Shapes};
use crate::error::{EngineError, Result};
use crate::nn::layers::Weights;
use crate::nn::mapped::{MappedSource, MappedTensor};

/// Which weight file to prefer when a component folder has several variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Variant {
    /// The plain file when present, else the `.fp16` variant.
    #[default]
    Auto,
    /// The `.fp16` variant when present, else the plain file.
    PreferFp16,
}

/// How tensor names in the file may differ from the names the model asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameScheme {
    Exact,
    /// CLIP text weights are saved with or without the `text_model.` prefix.
    OptionalTextModelPrefix,
}

const STEMS: [&str; 2] = ["diffusion_pytorch_model", "model"];

/// Find the safetensors file(s) of a component folder such as `unet/`.
pub fn find_weight_files(dir: &Path, variant: Variant) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Err(EngineError::MissingFile {
            path: dir.to_path_buf(),
        });
    }
    if let Some(pointer) = Pointer::read(dir)? {
        return Ok(vec![pointer.file]);
    }
    let infixes: &[&str] = match variant {
        Variant::Auto => &["", ".fp16"],
        Variant::PreferFp16 => &[".fp16", ""],
    };
    for infix in infixes {
        for stem in STEMS {
            let single = dir.join(format!("{stem}{infix}.safetensors"));
            if single.is_file() {
                return Ok(vec![single]);
            }
            // diffusers names a variant's index `x.safetensors.index.fp16.json`; some
            // converters write `x.fp16.safetensors.index.json`.
            for index in [
                format!("{stem}.safetensors.index{infix}.json"),
                format!("{stem}{infix}.safetensors.index.json"),
            ] {
                let index = dir.join(index);
                if index.is_file() {
                    return shards_from_index(&index);
                }
            }
        }
    }
    let other = ["diffusion_pytorch_model.bin", "pytorch_model.bin"]
        .iter()
        .map(|name| dir.join(name))
        .find(|path| path.is_file());
    Err(match other {
        Some(path) => EngineError::Weights {
            path,
            message: "pickle (.bin) weights are not supported; convert them to safetensors".into(),
        },
        None => EngineError::MissingFile {
            path: dir.join("diffusion_pytorch_model.safetensors"),
        },
    })
}

fn shards_from_index(index: &Path) -> Result<Vec<PathBuf>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: std::collections::BTreeMap<String, String>,
    }
    let index_json: Index = crate::config_files::read_json(index)?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let shards: BTreeSet<&String> = index_json.weight_map.values().collect();
    shards
        .into_iter()
        .map(|name| {
            let path = dir.join(name);
            if path.is_file() {
                Ok(path)
            } else {
                Err(EngineError::MissingFile { path })
            }
        })
        .collect()
}

/// One safetensors file and its parsed header.
struct WeightFile {
    file: std::fs::File,
    map: Arc<Mmap>,
    /// Where the tensor data starts: after the 8-byte length and the JSON header.
    data_start: usize,
    tensors: HashMap<String, TensorInfo>,
}

/// Map a weights file read-only (safetensors or GGUF).
pub(crate) fn map_file(path: &Path) -> Result<Mmap> {
    map_open_file(path, &open_file(path)?)
}

fn open_file(path: &Path) -> Result<std::fs::File> {
    std::fs::File::open(path).map_err(|source| EngineError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn map_open_file(path: &Path, file: &std::fs::File) -> Result<Mmap> {
    // SAFETY: the file is mapped read-only; like every inference server we require that
    // model files are not rewritten in place while they are loaded.
    #[allow(unsafe_code)]
    unsafe { Mmap::map(file) }.map_err(|e| EngineError::Weights {
        path: path.to_path_buf(),
        message: format!("cannot memory-map the file: {e}"),
    })
}

impl WeightFile {
    fn open(path: &Path) -> Result<Self> {
        let invalid = |message: String| EngineError::Weights {
            path: path.to_path_buf(),
            message,
        };
        let file = open_file(path)?;
        // The header parse also checks every tensor's range against the file's length.
        let map = map_open_file(path, &file)?;
        let (header_len, metadata) = SafeTensors::read_metadata(&map).map_err(|e| {
            invalid(format!(
                "not a valid safetensors file (truncated or corrupt?): {e:?}"
            ))
        })?;
        let tensors = metadata
            .tensors()
            .into_iter()
            .map(|(name, info)| (name, info.clone()))
            .collect();
        Ok(Self {
            file,
            map: Arc::new(map),
            data_start: 8 + header_len,
            tensors,
        })
    }

    /// The tensor `info` read in place, when it is stored as f32 or bf16.
    fn mapped(&self, info: &TensorInfo) -> Option<MappedTensor> {
        let start = self.data_start + info.data_offsets.0;
        let dtype = match info.dtype {
            safetensors::Dtype::F32 => DType::F32,
            safetensors::Dtype::BF16 => DType::BF16,
            _ => return None,
        };
        MappedTensor::new(self.map.clone(), start, info.shape.clone(), dtype)
    }

    /// Read one tensor from the file into a buffer of its own.
    fn load(&self, info: &TensorInfo, device: &Device) -> candle_core::Result<Tensor> {
        let (start, end) = info.data_offsets;
        let offset = (self.data_start + start) as u64;
        let shape = info.shape.as_slice();
        // The header parse checked that `end - start` is the shape's size in this dtype.
        let elements: usize = shape.iter().product();
        use safetensors::Dtype as S;
        match info.dtype {
            S::F32 => Tensor::from_vec(self.read::<f32>(offset, elements)?, shape, device),
            S::F16 => Tensor::from_vec(self.read::<half::f16>(offset, elements)?, shape, device),
            S::BF16 => Tensor::from_vec(self.read::<half::bf16>(offset, elements)?, shape, device),
            _ => {
                let mut bytes = vec![0u8; end - start];
                self.read_bytes(offset, &mut bytes)?;
                Tensor::from_raw_buffer(&bytes, candle_dtype(info.dtype)?, shape, device)
            }
        }
    }

    /// `elements` values of `T` stored little-endian at `offset`.
    fn read<T: bytemuck::Pod + Default>(
        &self,
        offset: u64,
        elements: usize,
    ) -> candle_core::Result<Vec<T>> {
        if cfg!(target_endian = "big") {
            candle_core::bail!("safetensors files are little-endian; this machine is not");
        }
        // Zeroed rather than uninitialised: one pass, small against the read.
        let mut values = vec![T::default(); elements];
        self.read_bytes(offset, bytemuck::cast_slice_mut(&mut values))?;
        Ok(values)
    }

    fn read_bytes(&self, offset: u64, bytes: &mut [u8]) -> candle_core::Result<()> {
        use std::os::unix::fs::FileExt;
        self.file
            .read_exact_at(bytes, offset)
            .map_err(|e| candle_core::Error::msg(format!("reading the weights file: {e}")))
    }
}

fn candle_dtype(dtype: safetensors::Dtype) -> candle_core::Result<DType> {
    use safetensors::Dtype as S;
    Ok(match dtype {
        S::F32 => DType::F32,
        S::F16 => DType::F16,
        S::BF16 => DType::BF16,
        S::F64 => DType::F64,
        S::I64 => DType::I64,
        S::U32 => DType::U32,
        S::U8 => DType::U8,
        other => candle_core::bail!("unsupported tensor dtype {other:?}"),
    })
}

/// Open every weight file of a component and read its header, without loading a tensor: a
/// missing, truncated or corrupt file is found at load time even when the component itself is
/// loaded only later, for its stage.
pub fn check_weight_files(dir: &Path, variant: Variant) -> Result<()> {
    if gguf_pointer(dir)?.is_some() {
        return Ok(());
    }
    for path in find_weight_files(dir, variant)? {
        WeightFile::open(&path)?;
    }
    Ok(())
}

/// The tensors of one component, read from its files on demand.
pub struct WeightFiles {
    files: Vec<PathBuf>,
    opened: Vec<WeightFile>,
    /// Tensor name to the index of the file holding it.
    index: HashMap<String, usize>,
    names: NameScheme,
    /// For a component inside a checkpoint: each diffusers name to its tensor there.
    remap: Option<Remap>,
}

impl WeightFiles {
    pub fn open(dir: &Path, variant: Variant, names: NameScheme) -> Result<Self> {
        let files = find_weight_files(dir, variant)?;
        let opened = files
            .iter()
            .map(|path| WeightFile::open(path))
            .collect::<Result<Vec<_>>>()?;
        let index = opened
            .iter()
            .enumerate()
            .flat_map(|(i, file)| file.tensors.keys().map(move |name| (name.clone(), i)))
            .collect();
        let remap = match Pointer::read(dir)? {
            Some(pointer) => {
                let shapes: Shapes = opened
                    .iter()
                    .flat_map(|file| &file.tensors)
                    .map(|(name, info)| (name.clone(), info.shape.clone()))
                    .collect();
                let remap = pointer.layout.remap(&shapes);
                Some(remap.map_err(|message| EngineError::Weights {
                    path: pointer.file.clone(),
                    message,
                })?)
            }
            None => None,
        };
        Ok(Self {
            files,
            opened,
            index,
            names,
            remap,
        })
    }

    /// Every tensor's name and shape, as the model asks for them; a tensor served from a
    /// checkpoint through a remap has no shape here (the remap may cut or reshape it).
    pub(crate) fn tensor_shapes(&self) -> std::collections::BTreeMap<String, Option<Vec<usize>>> {
        match &self.remap {
            Some(remap) => {
                let shapes: Shapes = self
                    .opened
                    .iter()
                    .flat_map(|file| &file.tensors)
                    .map(|(name, info)| (name.clone(), info.shape.clone()))
                    .collect();
                remapped_shapes(remap, &shapes)
            }
            None => self
                .opened
                .iter()
                .flat_map(|file| &file.tensors)
                .map(|(name, info)| (name.clone(), Some(info.shape.clone())))
                .collect(),
        }
    }

    /// The file that errors are reported against (the first shard when sharded).
    pub fn path(&self) -> &Path {
        &self.files[0]
    }

    /// A `VarBuilder` reading these tensors, converted to `dtype` on `device`.
    pub fn var_builder(self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        Shared(Arc::new(self)).var_builder(dtype, device)
    }

    /// Every tensor name it serves: the file's, or a checkpoint's diffusers names.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = match &self.remap {
            Some(remap) => remap.keys().cloned().collect(),
            None => self.index.keys().cloned().collect(),
        };
        names.sort();
        names
    }

    /// One tensor by the name a model asks for, in `dtype`.
    pub fn tensor(&self, name: &str, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        self.load(name, dtype, device)
    }

    fn resolve(&self, name: &str) -> Option<String> {
        if let Some(remap) = &self.remap {
            return remap.contains_key(name).then(|| name.to_string());
        }
        if self.index.contains_key(name) {
            return Some(name.to_string());
        }
        let alternate = match self.names {
            NameScheme::Exact => return None,
            NameScheme::OptionalTextModelPrefix => match name.strip_prefix("text_model.") {
                Some(bare) => bare.to_string(),
                None => format!("text_model.{name}"),
            },
        };
        self.index.contains_key(&alternate).then_some(alternate)
    }

    fn load(&self, name: &str, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        let resolved = self
            .resolve(name)
            .ok_or_else(|| candle_core::Error::msg(format!("missing tensor `{name}`")))?;
        let read = |stored: &str| {
            let file = self
                .index
                .get(stored)
                .map(|&i| &self.opened[i])
                .ok_or_else(|| {
                    candle_core::Error::msg(format!("missing checkpoint tensor `{stored}`"))
                })?;
            file.load(&file.tensors[stored], device)
        };
        match &self.remap {
            Some(remap) => remap[&resolved].produce(read),
            None => read(&resolved),
        }
        .and_then(|t| t.to_dtype(dtype))
        .map_err(|e| candle_core::Error::msg(format!("tensor `{name}`: {e}")))
    }
}

/// `tensor` (the one called `name`) checked against the `shape` the model's config implies.
/// A tensor from a checkpoint (`remapped`) may differ in shape alone: a linear layer's weight
/// stored as a 1x1 convolution's, or back. Anything else is an error naming the tensor.
pub(crate) fn shaped_as(
    name: &str,
    tensor: Tensor,
    shape: Shape,
    remapped: bool,
) -> candle_core::Result<Tensor> {
    if tensor.shape() == &shape {
        return Ok(tensor);
    }
    if remapped && tensor.elem_count() == shape.elem_count() {
        return tensor.reshape(shape);
    }
    Err(candle_core::Error::msg(format!(
        "tensor `{name}` has shape {:?}, the config implies {:?}",
        tensor.dims(),
        shape.dims()
    )))
}

impl WeightFiles {
    /// Start reading the files into the page cache in the background, for a model that will
    /// compute on them in place and fault them in as its layers first run (a no-op for files
    /// in the page cache already).
    fn read_ahead(&self) {
        for file in &self.opened {
            let _ = file.map.advise(memmap2::Advice::WillNeed);
        }
    }
}

impl MappedSource for WeightFiles {
    fn mapped(&self, name: &str) -> Option<MappedTensor> {
        // A checkpoint's remap may cut, join or rename tensors: those are read as usual.
        if self.remap.is_some() {
            return None;
        }
        let stored = self.resolve(name)?;
        let file = &self.opened[*self.index.get(&stored)?];
        file.mapped(&file.tensors[&stored])
    }
}

/// The files shared between the `VarBuilder` that reads tensors from them and the layers that
/// compute on them in place.
struct Shared(Arc<WeightFiles>);

impl Shared {
    fn var_builder(self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self), dtype, device.clone())
    }
}

impl SimpleBackend for Shared {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let tensor = self.0.load(name, dtype, device)?;
        shaped_as(name, tensor, shape, self.0.remap.is_some())
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        self.0.load(name, dtype, device)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.resolve(name).is_some()
    }
}

/// The GGUF checkpoint a component folder's pointer names, opened; `None` for any other folder.
/// Every diffusers name of `remap` with its shape in the checkpoint's `shapes`.
fn remapped_shapes(
    remap: &Remap,
    shapes: &Shapes,
) -> std::collections::BTreeMap<String, Option<Vec<usize>>> {
    remap
        .iter()
        .map(|(name, source)| (name.clone(), source.shape(shapes)))
        .collect()
}

/// The tensors a component folder serves, by the names its model asks for, with their shapes
/// (`None` where a file does not say): from its safetensors files or the checkpoint, GGUF
/// included, that its pointer names. Headers only.
pub(crate) fn component_shapes(
    dir: &Path,
    names: NameScheme,
) -> Result<std::collections::BTreeMap<String, Option<Vec<usize>>>> {
    if let Some(pointer) = Pointer::read(dir)?
        && is_gguf(&pointer.file)
    {
        let shapes = crate::checkpoint::read_shapes(&pointer.file)?;
        let remap = pointer
            .layout
            .remap(&shapes)
            .map_err(|message| EngineError::Weights {
                path: pointer.file.clone(),
                message,
            })?;
        return Ok(remapped_shapes(&remap, &shapes));
    }
    Ok(WeightFiles::open(dir, Variant::Auto, names)?.tensor_shapes())
}

fn gguf_pointer(dir: &Path) -> Result<Option<GgufFile>> {
    match Pointer::read(dir)? {
        Some(pointer) if is_gguf(&pointer.file) => {
            GgufFile::open(&pointer.file, &pointer.layout).map(Some)
        }
        _ => Ok(None),
    }
}

/// Load a component's weights and build a model from them; any tensor error while building
/// is reported against the component's weight file. A GGUF checkpoint is read dense here
/// (dequantized); models whose linears can stay quantized load through [`build_quantizable`].
pub fn build_component<M>(
    dir: &Path,
    variant: Variant,
    names: NameScheme,
    dtype: DType,
    device: &Device,
    build: impl FnOnce(VarBuilder<'static>) -> candle_core::Result<M>,
) -> Result<M> {
    build_quantizable(dir, variant, names, dtype, device, |weights| {
        build(weights.vb().clone())
    })
}

/// [`build_component`] for a builder that takes [`Weights`]: from a GGUF checkpoint, its
/// quantized linear weights come quantized; from safetensors, everything dense as before.
pub fn build_quantizable<M>(
    dir: &Path,
    variant: Variant,
    names: NameScheme,
    dtype: DType,
    device: &Device,
    build: impl FnOnce(Weights<'static>) -> candle_core::Result<M>,
) -> Result<M> {
    let (path, weights, mapped) = match gguf_pointer(dir)? {
        Some(file) => (file.path().to_path_buf(), file.weights(dtype, device), None),
        None => {
            let files = Arc::new(WeightFiles::open(dir, variant, names)?);
            let in_place =
                dtype == DType::F32 || (dtype == DType::BF16 && crate::nn::bf16::available());
            if device.is_cpu() && in_place {
                files.read_ahead();
            }
            let path = files.path().to_path_buf();
            let mapped: Arc<dyn MappedSource> = files.clone();
            let vb = Shared(files).var_builder(dtype, device);
            (path, vb.into(), Some(mapped))
        }
    };
    // The folder's name is the component a LoRA addresses (`unet`, `text_encoder_2`, ...).
    let component = dir.file_name().unwrap_or_default().to_string_lossy();
    let build = || crate::lora::hook::building(&component, || build(weights));
    crate::nn::mapped::building(mapped, build).map_err(|e| EngineError::Weights {
        path,
        message: e.to_string(),
    })
}
