//! Sinusoidal timestep embeddings and the MLP that widens them (`TimestepEmbedding`), shared
//! by the UNet and the transformer families.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Embedding, VarBuilder};
use half::{bf16, f16};

use crate::nn::layers::{self, Linear, Weights};
use crate::nn::mapped::{self, MappedTensor};

/// diffusers' `get_timestep_embedding` for one value per batch row, computed in f32 like
/// the reference so that large timesteps give the same angles.
pub fn sinusoidal(
    values: &[f64],
    dim: usize,
    flip_sin_to_cos: bool,
    shift: f64,
    device: &Device,
) -> Result<Tensor> {
    let half = dim / 2;
    let denominator = half as f32 - shift as f32;
    let frequencies: Vec<f32> = (0..half)
        .map(|i| ((-(10000f32.ln())) * i as f32 / denominator).exp())
        .collect();
    let mut data = Vec::with_capacity(values.len() * dim);
    for &value in values {
        let angles: Vec<f32> = frequencies.iter().map(|f| value as f32 * f).collect();
        let sin = angles.iter().map(|a| a.sin());
        let cos = angles.iter().map(|a| a.cos());
        if flip_sin_to_cos {
            data.extend(cos.chain(sin));
        } else {
            data.extend(sin.chain(cos));
        }
        // Odd widths are zero-padded, as in the reference.
        data.extend(std::iter::repeat_n(0.0, dim - 2 * half));
    }
    Tensor::from_vec(data, (values.len(), dim), device)
}

pub struct TimestepEmbedding {
    linear_1: Linear,
    linear_2: Linear,
}

impl TimestepEmbedding {
    pub fn new<'a>(in_dim: usize, out_dim: usize, vb: impl Into<Weights<'a>>) -> Result<Self> {
        let vb = vb.into();
        Ok(Self {
            linear_1: layers::linear(in_dim, out_dim, vb.pp("linear_1"))?,
            linear_2: layers::linear(out_dim, out_dim, vb.pp("linear_2"))?,
        })
    }
}

impl Module for TimestepEmbedding {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.linear_2.forward(&self.linear_1.forward(x)?.silu()?)
    }
}

/// A text encoder's token table (`vocab x width`): the row of each token id.
///
/// A prompt reads 77 of CLIP's 49,408 rows, or a few hundred of Qwen3's 151,936: read in
/// place from the weights file, the table costs neither a copy at load (200 MB of fresh
/// memory for SD-Turbo's CLIP in f32, 1.5 GB for Qwen3-4B's) nor memory while loaded. Each row
/// read is rounded through the layer's dtype, so it holds what a table converted at load would.
pub struct TokenTable {
    rows: Rows,
    /// The dtype the rows come out in, the weights' (`VarBuilder`'s) dtype.
    dtype: DType,
}

enum Rows {
    /// Read into memory: any dtype, any device, or a file that cannot be read in place.
    Loaded(Embedding),
    /// f32 or bf16 in the file, on the CPU.
    Mapped { table: MappedTensor, width: usize },
}

impl TokenTable {
    /// The `(vocab, width)` tensor `name` under `vb`.
    pub fn new(vocab: usize, width: usize, name: &str, vb: &VarBuilder) -> Result<Self> {
        let rows = match mapped::lookup_stored(vb, name, &[vocab, width]) {
            Some(table) => Rows::Mapped { table, width },
            None => Rows::Loaded(Embedding::new(vb.get((vocab, width), name)?, width)),
        };
        Ok(Self {
            rows,
            dtype: vb.dtype(),
        })
    }

    /// The rows of `ids` (any shape, integer), as `(ids..., width)` in the weights' dtype.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (table, width) = match &self.rows {
            Rows::Loaded(embedding) => return embedding.forward(ids),
            Rows::Mapped { table, width } => (table, *width),
        };
        let vocab = table.shape()[0];
        let mut dims = ids.dims().to_vec();
        dims.push(width);
        let ids = ids.flatten_all()?.to_dtype(DType::U32)?.to_vec1::<u32>()?;
        let mut values = Vec::with_capacity(ids.len() * width);
        for &id in &ids {
            let id = id as usize;
            if id >= vocab {
                candle_core::bail!("token id {id} is outside the table's {vocab} rows");
            }
            let row = id * width..(id + 1) * width;
            match table.dtype() {
                DType::BF16 => values.extend(table.bf16_values()[row].iter().map(|v| v.to_f32())),
                _ => values.extend(&table.values()[row]),
            }
        }
        let round: fn(f32) -> f32 = match self.dtype {
            DType::BF16 => |v| bf16::from_f32(v).to_f32(),
            DType::F16 => |v| f16::from_f32(v).to_f32(),
            _ => |v| v,
        };
        values.iter_mut().for_each(|v| *v = round(*v));
        Tensor::from_vec(values, dims, &Device::Cpu)?.to_dtype(self.dtype)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::mapped::testing::{Stored, bf16_bytes, f32_bytes, write};
    use crate::weights::{NameScheme, Variant, build_component};

    /// A table read in place gives the rows a table read into memory (and converted to the
    /// weights' dtype at load) gives, for f32 and bf16 files in f32, bf16 and f16, and refuses
    /// an id past its end.
    #[test]
    fn mapped_rows_are_the_rows_of_a_loaded_table() -> Result<()> {
        let values: Vec<f32> = (0..7 * 5).map(|i| (i as f32 * 0.731).sin() * 3.3).collect();
        let ids = Tensor::new(&[[6u32, 0, 3], [3, 3, 1]], &Device::Cpu)?;
        for (stored, bytes) in [("F32", f32_bytes(&values)), ("BF16", bf16_bytes(&values))] {
            let dir = tempfile::tempdir()?;
            write(
                &dir.path().join("model.safetensors"),
                &[Stored("table", stored, vec![7, 5], bytes)],
            );
            for dtype in [DType::F32, DType::BF16, DType::F16] {
                let (names, device) = (NameScheme::Exact, Device::Cpu);
                let build = |vb: VarBuilder| TokenTable::new(7, 5, "table", &vb);
                let mapped =
                    build_component(dir.path(), Variant::Auto, names, dtype, &device, build)
                        .map_err(candle_core::Error::wrap)?;
                assert!(
                    matches!(mapped.rows, Rows::Mapped { .. }),
                    "{stored} {dtype:?}"
                );
                let file =
                    candle_core::safetensors::load(dir.path().join("model.safetensors"), &device)?;
                let loaded = TokenTable::new(
                    7,
                    5,
                    "table",
                    &VarBuilder::from_tensors(file, dtype, &device),
                )?;
                assert!(matches!(loaded.rows, Rows::Loaded(_)));
                let (ours, theirs) = (mapped.forward(&ids)?, loaded.forward(&ids)?);
                assert_eq!((ours.dims(), ours.dtype()), (&[2, 3, 5][..], dtype));
                let as_f32 = |t: &Tensor| t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>();
                assert_eq!(as_f32(&ours)?, as_f32(&theirs)?, "{stored} {dtype:?}");
                let past = Tensor::new(&[7u32], &Device::Cpu)?;
                let error = mapped.forward(&past).unwrap_err().to_string();
                assert!(error.contains("token id 7"), "{error}");
            }
        }
        Ok(())
    }
}
