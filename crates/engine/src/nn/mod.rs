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

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{CpuStorage, Device, Result, Storage, Tensor};

/// Whether the engine's own kernels, and the weight layouts made for them (read in place,
/// transposed, packed), take the tensors of `device`: on the CPU, unless candle's ops were
/// asked for ([`candle_ops_only`]). Every device but the CPU runs candle's own ops.
pub fn own_kernels(device: &Device) -> bool {
    device.is_cpu() && !candle_ops_only()
}

/// Whether the CPU runs candle's own ops, as every other device does: when the environment
/// says `SEEDBED_KERNELS=candle` (to compare against, or to step around a kernel of ours on
/// some CPU; `own`, the default, or unset: ours), or a test asked for it
/// ([`use_candle_ops_only`]). It is what checks, on a machine with no GPU, that the path a GPU
/// takes computes the reference pictures.
pub fn candle_ops_only() -> bool {
    static FROM_ENV: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    FORCED.load(Ordering::Relaxed)
        || *FROM_ENV.get_or_init(|| match std::env::var("SEEDBED_KERNELS") {
            Ok(value) if value == "candle" => true,
            Ok(value) if value != "own" && !value.is_empty() => {
                tracing::warn!("SEEDBED_KERNELS={value} is neither `candle` nor `own`: ours run");
                false
            }
            _ => false,
        })
}

/// Makes [`candle_ops_only`] true for the rest of the process: for a test binary of its own,
/// before it builds any model (layers choose their weights' layout as they are built).
pub fn use_candle_ops_only() {
    FORCED.store(true, Ordering::Relaxed);
}

static FORCED: AtomicBool = AtomicBool::new(false);

/// `f` of the values of a CPU f32 tensor (made contiguous first) where our own kernels run
/// ([`own_kernels`]); `None` for other tensors.
pub(crate) fn cpu_f32<R>(x: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Option<Result<R>> {
    if !own_kernels(x.device()) || x.dtype() != candle_core::DType::F32 {
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
