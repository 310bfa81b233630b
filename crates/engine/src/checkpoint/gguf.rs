//! GGUF checkpoints: the quantized single files the community shares for the diffusion
//! transformers (city96's ComfyUI-GGUF conversions of FLUX.1: BFL's tensor names, ggml's
//! dimension order, the large weights in q8_0 ... q4_K and the small ones, the embedders and
//! any tensor whose rows do not split into the type's blocks, kept f32 or f16).
//!
//! A GGUF file is pointed at like a safetensors checkpoint: a component folder's
//! [`super::POINTER`] names the `.gguf` file and its [`Layout`] (`flux-bfl` for FLUX); the file
//! is recognised by its magic. [`GgufFile`] then serves the component twice over:
//!
//! - as a `VarBuilder` backend, every diffusers tensor dense (dequantized), through the
//!   layout's [`Remap`] like a safetensors checkpoint: norms, biases, the f32/f16 tensors;
//! - as [`QuantizedWeights`], each linear weight stored in a quantized type as a [`QTensor`]
//!   still in its blocks, cut from a fused tensor by whole rows (a row of a quantized tensor is
//!   a run of whole blocks, so the cut needs no requantization). Linear layers built through
//!   [`crate::nn::layers::Weights`] (FLUX's transformer, the UNet's attention and feed-forward)
//!   keep those and multiply through [`crate::nn::quantized::BlockMatrix`] on the CPU.
//!
//! Tensors are copied out of the memory-mapped file one at a time and the mapped pages handed
//! back right after, as [`crate::weights`] does for safetensors.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use candle_core::quantized::{GgmlDType, QStorage, QTensor, gguf_file};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use memmap2::{Mmap, UncheckedAdvice};

use super::{Layout, Remap, Shapes, Source};
use crate::error::{EngineError, Result};
use crate::nn::layers::QuantizedWeights;

/// GGUF's magic, the file's first four bytes.
const MAGIC: &[u8; 4] = b"GGUF";

/// Whether `path` is a GGUF file (by its magic, not its name).
pub fn is_gguf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut file| file.read_exact(&mut magic))
        .is_ok()
        && &magic == MAGIC
}

/// A memory-mapped GGUF checkpoint read through a layout.
pub struct GgufFile {
    path: PathBuf,
    map: Mmap,
    content: gguf_file::Content,
    remap: Remap,
    /// Where the quantized weights go: the model's device.
    device: Device,
}

impl GgufFile {
    pub fn open(path: &Path, layout: &Layout) -> Result<Self> {
        let invalid = |message: String| EngineError::Weights {
            path: path.to_path_buf(),
            message,
        };
        let map = crate::weights::map_file(path)?;
        let content =
            gguf_file::Content::read(&mut std::io::Cursor::new(&map[..])).map_err(|e| {
                invalid(format!(
                    "not a valid GGUF file (truncated or corrupt?): {e}"
                ))
            })?;
        let mut file = Self {
            path: path.to_path_buf(),
            map,
            content,
            remap: Remap::new(),
            device: Device::Cpu,
        };
        for (name, info) in &file.content.tensor_infos {
            file.byte_range(name, info).map_err(&invalid)?;
        }
        file.remap = layout
            .remap(&file.shapes())
            .map_err(|e| invalid(e.to_string()))?;
        Ok(file)
    }

    /// Every tensor's name and shape, in PyTorch's dimension order (ggml stores them reversed).
    pub fn shapes(&self) -> Shapes {
        self.content
            .tensor_infos
            .iter()
            .map(|(name, info)| (name.clone(), info.shape.dims().to_vec()))
            .collect()
    }

    /// The GGUF type each tensor is stored in.
    pub fn types(&self) -> impl Iterator<Item = (&str, GgmlDType)> {
        self.content
            .tensor_infos
            .iter()
            .map(|(name, info)| (name.as_str(), info.ggml_dtype))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A `VarBuilder` over the dense tensors, and these quantized weights, for a model builder.
    pub fn weights(mut self, dtype: DType, device: &Device) -> crate::nn::layers::Weights<'static> {
        self.device = device.clone();
        let file = std::sync::Arc::new(self);
        let vb = candle_nn::VarBuilder::from_backend(
            Box::new(Dense(file.clone())),
            dtype,
            device.clone(),
        );
        crate::nn::layers::Weights::new(vb, Some(file))
    }

    /// Where a tensor's bytes lie in the file, checked against the file's length.
    fn byte_range(
        &self,
        name: &str,
        info: &gguf_file::TensorInfo,
    ) -> std::result::Result<(usize, usize), String> {
        let (elements, block) = (info.shape.elem_count(), info.ggml_dtype.block_size());
        let row = info.shape.dims().last().copied().unwrap_or(1);
        if row % block != 0 {
            return Err(format!(
                "tensor `{name}`: rows of {row} do not split into {:?} blocks of {block}",
                info.ggml_dtype
            ));
        }
        let len = elements / block * info.ggml_dtype.type_size();
        let start = self.content.tensor_data_offset as usize + info.offset as usize;
        if start
            .checked_add(len)
            .is_none_or(|end| end > self.map.len())
        {
            return Err(format!("tensor `{name}` runs past the end of the file"));
        }
        Ok((start, len))
    }

    /// Rows `rows` of a stored tensor, as a tensor of its own type: copied out of the mapping
    /// (aligned for the block type), then the mapped pages released.
    fn rows(
        &self,
        name: &str,
        rows: std::ops::Range<usize>,
        device: &Device,
    ) -> candle_core::Result<QTensor> {
        let info = self.content.tensor_infos.get(name).ok_or_else(|| {
            candle_core::Error::msg(format!("missing checkpoint tensor `{name}`"))
        })?;
        let (start, len) = self
            .byte_range(name, info)
            .map_err(candle_core::Error::msg)?;
        let dims = info.shape.dims();
        let count = dims.first().copied().unwrap_or(1);
        let (from, to) = if rows == (0..count) {
            (start, start + len)
        } else {
            // A cut is whole rows: a vector's elements only when its type's blocks are of 1.
            if rows.start > rows.end || rows.end > count || len % count != 0 {
                candle_core::bail!("tensor `{name}` {dims:?}: no rows {rows:?} to cut");
            }
            let row_bytes = len / count;
            (start + rows.start * row_bytes, start + rows.end * row_bytes)
        };
        // A u32 buffer: the block types need at most 4-byte alignment, the mapping gives none.
        let mut words = vec![0u32; (to - from).div_ceil(4)];
        let bytes = &mut bytemuck::cast_slice_mut::<u32, u8>(&mut words)[..to - from];
        bytes.copy_from_slice(&self.map[from..to]);
        // SAFETY: as in crate::weights: DONTNEED on a read-only shared file mapping drops only
        // this process's page-table entries, and no reference into the range outlives the copy.
        #[allow(unsafe_code)]
        let _ = unsafe {
            self.map
                .unchecked_advise_range(UncheckedAdvice::DontNeed, from, to - from)
        };
        let mut shape = dims.to_vec();
        if let Some(first) = shape.first_mut() {
            *first = rows.len();
        }
        let storage = QStorage::from_data(Cow::Borrowed(bytes), device, info.ggml_dtype)?;
        QTensor::new(storage, shape)
    }

    /// The stored tensor's row count.
    fn row_count(&self, name: &str) -> candle_core::Result<usize> {
        self.content
            .tensor_infos
            .get(name)
            .and_then(|info| info.shape.dims().first().copied())
            .ok_or_else(|| candle_core::Error::msg(format!("missing checkpoint tensor `{name}`")))
    }

    /// A diffusers tensor in its stored type: the source's rows, or its halves swapped. A
    /// transposed source has no such form (`None`).
    fn produce(&self, source: &Source, device: &Device) -> candle_core::Result<Option<QTensor>> {
        let name = source.tensor();
        let rows = self.row_count(name)?;
        Ok(Some(match source {
            Source::Tensor(_) => self.rows(name, 0..rows, device)?,
            Source::Rows { start, len, .. } => self.rows(name, *start..start + len, device)?,
            Source::SwappedHalves(_) => {
                let half = rows / 2;
                let second = self.rows(name, half..rows, device)?;
                let first = self.rows(name, 0..half, device)?;
                let (second, first) = (second.data()?, first.data()?);
                let len = second.len() + first.len();
                let mut words = vec![0u32; len.div_ceil(4)];
                let bytes = &mut bytemuck::cast_slice_mut::<u32, u8>(&mut words)[..len];
                bytes[..second.len()].copy_from_slice(&second);
                bytes[second.len()..].copy_from_slice(&first);
                let info = &self.content.tensor_infos[name];
                let storage = QStorage::from_data(Cow::Borrowed(bytes), device, info.ggml_dtype)?;
                QTensor::new(storage, info.shape.clone())?
            }
            Source::Transposed(_) => return Ok(None),
        }))
    }

    /// A diffusers tensor dense, in `dtype`.
    fn load(&self, name: &str, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        let source = self
            .remap
            .get(name)
            .ok_or_else(|| candle_core::Error::msg(format!("missing tensor `{name}`")))?;
        let dense = match self.produce(source, device)? {
            Some(stored) => stored.dequantize(device),
            None => source.produce(|stored| {
                self.rows(stored, 0..self.row_count(stored)?, device)?
                    .dequantize(device)
            }),
        };
        dense
            .and_then(|t| t.to_dtype(dtype))
            .map_err(|e| candle_core::Error::msg(format!("tensor `{name}`: {e}")))
    }
}

/// Whether a GGUF type is a float type (read dense) rather than blocks (kept quantized).
fn is_float(dtype: GgmlDType) -> bool {
    matches!(dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
}

impl QuantizedWeights for GgufFile {
    fn quantized(&self, name: &str) -> candle_core::Result<Option<QTensor>> {
        let Some(source) = self.remap.get(name) else {
            return Ok(None);
        };
        let stored = self.content.tensor_infos.get(source.tensor());
        if stored.is_none_or(|info| is_float(info.ggml_dtype)) {
            return Ok(None);
        }
        self.produce(source, &self.device)
            .map_err(|e| candle_core::Error::msg(format!("tensor `{name}`: {e}")))
    }
}

/// The dense side of a shared [`GgufFile`], as a `VarBuilder` backend.
struct Dense(std::sync::Arc<GgufFile>);

impl SimpleBackend for Dense {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let tensor = self.0.load(name, dtype, device)?;
        crate::weights::shaped_as(name, tensor, shape, true)
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
        self.0.remap.contains_key(name)
    }
}

/// The type a tensor is stored in when a checkpoint is written as `dtype`, following city96's
/// FLUX converter (ComfyUI-GGUF) and llama.cpp's quantizer: vectors (biases, norm scales) and
/// tiny tensors stay f32; the embedders and the final layer, which the community files keep
/// at full precision, f16; a tensor whose rows do not split into the type's blocks (K-quants
/// need multiples of 256) falls back to f16.
pub fn storage_type(name: &str, shape: &[usize], dtype: GgmlDType) -> GgmlDType {
    const KEPT: [&str; 6] = [
        "img_in.",
        "txt_in.",
        "time_in.",
        "vector_in.",
        "guidance_in.",
        "final_layer.",
    ];
    let elements: usize = shape.iter().product();
    if shape.len() < 2 || elements <= 1024 || dtype == GgmlDType::F32 {
        return GgmlDType::F32;
    }
    let bare = name.strip_prefix("model.diffusion_model.").unwrap_or(name);
    let row = shape[shape.len() - 1];
    if is_float(dtype)
        || KEPT.iter().any(|kept| bare.starts_with(kept))
        || !row.is_multiple_of(dtype.block_size())
    {
        return GgmlDType::F16;
    }
    dtype
}

/// Write tensors as a GGUF checkpoint of `dtype`, each in its [`storage_type`], under the
/// names given (BFL's, for a FLUX transformer). Converting a downloaded safetensors file this
/// way gives what the community's GGUF files hold; tests use it to make their own.
pub fn write(path: &Path, tensors: &[(String, Tensor)], dtype: GgmlDType) -> Result<()> {
    let write = || -> candle_core::Result<()> {
        let quantized = tensors
            .iter()
            .map(|(name, tensor)| {
                let to = storage_type(name, tensor.dims(), dtype);
                let tensor = tensor.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
                Ok((name.as_str(), QTensor::quantize(&tensor, to)?))
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let architecture = gguf_file::Value::String("flux".into());
        let version = gguf_file::Value::U32(2);
        let metadata = [
            ("general.architecture", &architecture),
            ("general.quantization_version", &version),
        ];
        let refs: Vec<(&str, &QTensor)> = quantized.iter().map(|(n, t)| (*n, t)).collect();
        let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
        gguf_file::write(&mut file, &metadata, &refs)?;
        use std::io::Write;
        file.flush()?;
        Ok(())
    };
    write().map_err(|e| EngineError::Weights {
        path: path.to_path_buf(),
        message: format!("cannot write the GGUF file: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::fixtures_dir;

    /// tiny-flux-dev's BFL tensors with every matrix in q8_0, the final layer's too (which
    /// [`write`] would keep f16), written with candle's writer directly.
    fn all_q8_0(dir: &Path) -> PathBuf {
        let bfl = fixtures_dir().join("single-file/tiny-flux-dev-bfl.safetensors");
        let tensors = candle_core::safetensors::load(&bfl, &Device::Cpu).unwrap();
        let quantized: Vec<(String, QTensor)> = tensors
            .into_iter()
            .map(|(name, t)| {
                let dtype = if t.rank() == 2 {
                    GgmlDType::Q8_0
                } else {
                    GgmlDType::F32
                };
                (name, QTensor::quantize(&t, dtype).unwrap())
            })
            .collect();
        let refs: Vec<(&str, &QTensor)> = quantized.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let path = dir.join("q8_0.gguf");
        let mut file = std::fs::File::create(&path).unwrap();
        gguf_file::write(&mut file, &[], &refs).unwrap();
        path
    }

    /// Cut and swapped quantized tensors are, block for block, what the dense path makes of
    /// the same stored tensor: rows for a fused q/k/v or linear1, halves for the final
    /// modulation.
    #[test]
    fn quantized_cuts_and_swaps_match_the_dense_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = all_q8_0(dir.path());
        let quantized = GgufFile::open(&path, &Layout::FluxBfl).unwrap();
        assert!(
            quantized
                .shapes()
                .contains_key("single_blocks.2.linear1.weight")
        );
        let weights = GgufFile::open(&path, &Layout::FluxBfl)
            .unwrap()
            .weights(DType::F32, &Device::Cpu);
        for (name, shape) in [
            ("norm_out.linear.weight", (192, 96)),
            ("single_transformer_blocks.2.proj_mlp.weight", (384, 96)),
            ("transformer_blocks.0.attn.to_v.weight", (96, 96)),
            ("x_embedder.weight", (96, 64)),
        ] {
            let q = quantized.quantized(name).unwrap().expect(name);
            assert_eq!(q.dtype(), GgmlDType::Q8_0);
            let dense = weights.vb().get(shape, name).unwrap();
            let diff = (q.dequantize(&Device::Cpu).unwrap() - dense).unwrap();
            let diff: f32 = diff.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
            assert_eq!(diff, 0.0, "{name}");
        }
        // Vectors are stored f32 and read dense only.
        assert!(
            quantized
                .quantized("norm_out.linear.bias")
                .unwrap()
                .is_none()
        );
        // A cut past the tensor's rows is refused, not read from its neighbour's bytes.
        let err = quantized
            .rows("img_in.bias", 90..100, &Device::Cpu)
            .unwrap_err();
        assert!(err.to_string().contains("no rows 90..100"), "{err}");
    }

    #[test]
    fn storage_types_follow_the_community_converter() {
        let q4k = GgmlDType::Q4K;
        assert_eq!(
            storage_type("double_blocks.0.img_mlp.0.bias", &[12288], q4k),
            GgmlDType::F32
        );
        assert_eq!(
            storage_type("double_blocks.0.img_mlp.0.weight", &[12288, 3072], q4k),
            q4k
        );
        assert_eq!(
            storage_type("model.diffusion_model.img_in.weight", &[3072, 64], q4k),
            GgmlDType::F16
        );
        assert_eq!(
            storage_type("x.weight", &[96, 96], q4k),
            GgmlDType::F16,
            "rows of 96"
        );
        assert_eq!(
            storage_type("x.weight", &[96, 96], GgmlDType::Q8_0),
            GgmlDType::Q8_0
        );
        assert_eq!(
            storage_type("x.weight", &[16, 16], GgmlDType::Q8_0),
            GgmlDType::F32,
            "tiny"
        );
    }

    #[test]
    fn a_gguf_file_is_known_by_its_magic() {
        let dir = tempfile::tempdir().unwrap();
        assert!(is_gguf(&all_q8_0(dir.path())));
        let bfl = fixtures_dir().join("single-file/tiny-flux-dev-bfl.safetensors");
        assert!(!is_gguf(&bfl));
        assert!(!is_gguf(&dir.path().join("absent.gguf")));
    }
}
