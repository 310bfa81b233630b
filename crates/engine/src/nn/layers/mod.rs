//! The weight-bearing layers, whose weights may be stored narrower than the activations.
//!
//! candle's CPU backend has no bf16 matmul or convolution, and its f16 ones widen to f32
//! inside every call anyway. So on CPU a half-precision model keeps its weights in that dtype
//! (half the memory) and computes in f32 ([`compute_dtype`]): each layer here widens its
//! weights to the input's dtype when the two differ. Where they match (f32 everywhere, or
//! half precision on a GPU) nothing is converted and candle's layer runs as before. The one
//! exception: bf16 linear layers on a CPU with AVX512-BF16 multiply in bf16 ([`super::bf16`]).
//!
//! An f32 weight on the CPU is read in place from the weights file's mapping where the layer
//! can multiply it as stored ([`super::mapped`]).
//!
//! A linear layer's weight may also come quantized, from a GGUF checkpoint ([`Weights`]): it
//! stays in its blocks (q8_0, q4_K, ...) and multiplies through candle's quantized matmul.

use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::{CpuStorage, DType, Device, Result, Storage, Tensor};
use candle_nn::VarBuilder;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

mod conv2d;
mod linear;
mod norms;
#[cfg(test)]
mod tests;

pub use conv2d::{Conv2d, conv2d, conv2d_unpacked};
pub(crate) use linear::add_to_rows;
pub use linear::{FeedForward, Linear, linear, linear_no_bias};
pub use norms::{GroupNorm, LayerNorm, RmsNorm, group_norm, layer_norm, rms_norm};

/// The dtype activations are computed in for weights stored in `weights` on `device`: their
/// own on a GPU; f32 on the CPU, except f16 on candle's ops ([`super::candle_ops_only`]),
/// which then computes as a GPU does, so that the tests there prove a GPU's f16 path, every
/// tensor's dtype included (candle's CPU ops have no bf16 matrix product to do the same).
pub fn compute_dtype(weights: DType, device: &Device) -> DType {
    match (device, weights) {
        (Device::Cpu, DType::F16) if !super::candle_ops_only() => DType::F32,
        (Device::Cpu, DType::BF16) => DType::F32,
        _ => weights,
    }
}

/// `weight` in the dtype of `x` (a cheap handle clone when it already is).
pub fn like(weight: &Tensor, x: &Tensor) -> Result<Tensor> {
    if weight.dtype() == x.dtype() {
        Ok(weight.clone())
    } else if super::own_kernels(weight.device()) && x.dtype() == DType::F32 {
        widen_on_cpu(weight)
    } else {
        weight.to_dtype(x.dtype())
    }
}

/// Half-precision CPU weights as f32, in parallel chunks through `half`'s slice conversion,
/// which uses the F16C instructions when the CPU has them; candle's `to_dtype` converts one
/// element at a time in software (measured: f16 text encoding 1.97 s vs 1.29 s for bf16).
fn widen_on_cpu(weight: &Tensor) -> Result<Tensor> {
    let weight = weight.contiguous()?;
    let mut out = vec![0f32; weight.elem_count()];
    let widened = {
        let (storage, layout) = weight.storage_and_layout();
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("widen: the weight is not contiguous");
        };
        match &*storage {
            Storage::Cpu(CpuStorage::F16(data)) => {
                widen_into(&mut out, &data[start..end]);
                true
            }
            Storage::Cpu(CpuStorage::BF16(data)) => {
                widen_into(&mut out, &data[start..end]);
                true
            }
            _ => false,
        }
    };
    if widened {
        Tensor::from_vec(out, weight.shape(), weight.device())
    } else {
        weight.to_dtype(DType::F32)
    }
}

/// `src` (f16 or bf16) into `dst`, in parallel chunks.
fn widen_into<T: Sync>(dst: &mut [f32], src: &[T])
where
    [T]: HalfFloatSliceExt,
{
    const CHUNK: usize = 1 << 16;
    dst.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .for_each(|(dst, src)| src.convert_to_f32_slice(dst));
}

fn like_opt(weight: Option<&Tensor>, x: &Tensor) -> Result<Option<Tensor>> {
    weight.map(|w| like(w, x)).transpose()
}

/// Quantized weights by tensor name, beside a model's dense ones: a GGUF checkpoint's.
pub trait QuantizedWeights: Send + Sync {
    /// The weight stored under `name`, when it is stored quantized; `None` when it is stored
    /// as floats (the dense path reads it then) or not at all.
    fn quantized(&self, name: &str) -> Result<Option<QTensor>>;
}

/// What a model builder reads its weights from: a `VarBuilder` for every tensor, and, for a
/// quantized checkpoint, the linear layers' quantized weights. A `VarBuilder` converts into
/// one without them, so builders that take `impl Into<Weights>` accept either.
#[derive(Clone)]
pub struct Weights<'a> {
    vb: VarBuilder<'a>,
    quantized: Option<Arc<dyn QuantizedWeights>>,
}

impl<'a> Weights<'a> {
    pub fn new(vb: VarBuilder<'a>, quantized: Option<Arc<dyn QuantizedWeights>>) -> Self {
        Self { vb, quantized }
    }

    /// The same weights under `prefix.`.
    pub fn pp(&self, prefix: impl ToString) -> Self {
        Self {
            vb: self.vb.pp(prefix),
            quantized: self.quantized.clone(),
        }
    }

    /// The dense tensors under `prefix.`, for layers that are never quantized (norms,
    /// convolutions).
    pub fn dense(&self, prefix: impl ToString) -> VarBuilder<'a> {
        self.vb.pp(prefix)
    }

    /// The dense tensors.
    pub fn vb(&self) -> &VarBuilder<'a> {
        &self.vb
    }

    /// The quantized `(out, in)` weight of the linear layer here, if it is stored quantized.
    fn quantized_linear(&self, cin: usize, cout: usize) -> Result<Option<QTensor>> {
        let Some(quantized) = &self.quantized else {
            return Ok(None);
        };
        let name = format!("{}.weight", self.vb.prefix());
        let Some(weight) = quantized.quantized(&name)? else {
            return Ok(None);
        };
        if weight.shape().dims() != [cout, cin] {
            candle_core::bail!(
                "tensor `{name}` has shape {:?}, the config implies {:?}",
                weight.shape().dims(),
                [cout, cin]
            );
        }
        Ok(Some(weight))
    }
}

impl<'a> From<VarBuilder<'a>> for Weights<'a> {
    fn from(vb: VarBuilder<'a>) -> Self {
        Self::new(vb, None)
    }
}
