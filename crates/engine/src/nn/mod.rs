//! Building blocks shared by the text encoder, the UNet and the VAE.

pub mod activation;
pub mod amx;
pub mod attention;
pub mod bf16;
pub mod buffers;
pub mod conv;
pub mod embeddings;
pub mod gemm;
pub mod im2col;
pub mod layers;
pub mod mapped;
pub mod math;
pub mod norm;
pub mod quantized;
pub mod resnet;
pub mod rounded;
pub mod stored;
pub mod tiled_attention;
pub mod tiled_conv;
pub mod tiles;
pub mod transpose;
pub mod winograd;

use candle_core::{CpuStorage, Result, Storage, Tensor};

/// `f` of the values of a CPU f32 tensor (made contiguous first); `None` for other tensors.
pub(crate) fn cpu_f32<R>(x: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Option<Result<R>> {
    if !x.device().is_cpu() || x.dtype() != candle_core::DType::F32 {
        return None;
    }
    let x = match x.contiguous() {
        Ok(x) => x,
        Err(e) => return Some(Err(e)),
    };
    let (storage, layout) = x.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(data)), Some((start, end))) => Some(Ok(f(&data[start..end]))),
        _ => None,
    }
}

/// What the kernels' tests share.
#[cfg(test)]
pub(crate) mod testing {
    /// `n` values in [-1, 1) from a xorshift generator seeded with `seed`: the same on every
    /// machine, with no dependency.
    pub fn random(n: usize, seed: u32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(2654435761).max(1);
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state as f32 / u32::MAX as f32) * 2.0 - 1.0
            })
            .collect()
    }
}
