//! GGUF-quantized linear weights on the CPU, multiplied without a second copy of the weight.
//!
//! candle 0.11's x86 quantized matmul repacks q8_0, q4_K and q6_K weights into tiles on their
//! first use and keeps the tiles beside the original blocks, so from the first call on such a
//! weight is in memory twice: a q8_0 FLUX transformer peaked above its bf16 form
//! (bench/RESULTS.md). Here each weight is held once, in one of two ways:
//!
//! - q8_0 and q4_K, the types people run, on a CPU with AVX2 or AVX-512 VNNI: repacked at load
//!   for integer kernels ([`q8`], [`q4k`], sharing [`int8`]) and the file's blocks dropped. The
//!   activations are rounded to q8_0 per call, as ggml does; the products run in integers, about
//!   twice the f32 GEMM's speed.
//! - Every other type (and every type elsewhere): the file's blocks, and a product dequantizes
//!   one band of the weight's rows at a time into a small f32 buffer and multiplies through the
//!   f32 GEMM. That costs dequantizing the weight once per call, `out x in` values, against
//!   the `tokens x out x in` multiply-adds of the product itself: under 1 % for the hundreds to
//!   thousands of image tokens of a diffusion model; the activations stay f32.

use std::mem::{align_of, size_of};
use std::sync::Arc;

use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ5_0, BlockQ5_1, BlockQ5K, BlockQ6K,
    BlockQ8_0, BlockQ8_1, BlockQ8K, GgmlType,
};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use half::{bf16, f16};
use rayon::prelude::*;

use super::gemm::{self, View};

/// Values of one band of dequantized rows: 16 MiB of f32, large enough that the GEMM runs at
/// full speed on it, small beside any weight worth quantizing.
const BAND_VALUES: usize = 4 * 1024 * 1024;

mod int8;
mod q4k;
mod q8;

pub use int8::Kernel;
use q4k::PackedQ4K;
use q8::PackedQ8;

/// An `(out, in)` weight held in GGUF blocks on the CPU.
#[derive(Debug, Clone)]
pub struct BlockMatrix {
    storage: Storage,
    rows: usize,
    cols: usize,
}

#[derive(Debug, Clone)]
enum Storage {
    /// The file's blocks, multiplied band by band through the f32 GEMM.
    Blocks(Arc<QTensor>),
    /// q8_0 repacked for the CPU's integer dot products ([`q8`]).
    Q8(Arc<PackedQ8>),
    /// q4_K likewise ([`q4k`]).
    Q4K(Arc<PackedQ4K>),
}

impl BlockMatrix {
    /// The weight as it is, or `None` where this kernel does not apply (not where our own
    /// kernels run, [`crate::nn::own_kernels`]; not 2-D; or rows not made of whole blocks).
    pub fn new(weight: Arc<QTensor>) -> Result<Option<Self>> {
        if !crate::nn::own_kernels(&weight.device()) {
            return Ok(None);
        }
        let &[rows, cols] = weight.shape().dims() else {
            return Ok(None);
        };
        let dtype = weight.dtype();
        if cols % dtype.block_size() != 0 {
            return Ok(None);
        }
        let expected = rows * cols / dtype.block_size() * dtype.type_size();
        if weight.storage_size_in_bytes() != expected {
            candle_core::bail!(
                "a {dtype:?} weight of {rows}x{cols} holds {} bytes, expected {expected}",
                weight.storage_size_in_bytes()
            );
        }
        let packed = match (dtype, Kernel::detect()) {
            (GgmlDType::Q8_0, Some(kernel)) => PackedQ8::pack(&weight.data()?, rows, cols, kernel)
                .map(|packed| Storage::Q8(Arc::new(packed))),
            (GgmlDType::Q4K, Some(kernel)) => PackedQ4K::pack(&weight.data()?, rows, cols, kernel)
                .map(|packed| Storage::Q4K(Arc::new(packed))),
            _ => None,
        };
        let storage = packed.unwrap_or(Storage::Blocks(weight));
        Ok(Some(Self {
            storage,
            rows,
            cols,
        }))
    }

    /// The integer kernel this weight multiplies with, if any (else the f32 GEMM).
    pub fn kernel(&self) -> Option<Kernel> {
        match &self.storage {
            Storage::Q8(packed) => Some(packed.kernel()),
            Storage::Q4K(packed) => Some(packed.kernel()),
            Storage::Blocks(_) => None,
        }
    }

    /// The whole weight as f32 `(out, in)`.
    pub fn dequantize(&self) -> Result<Tensor> {
        let values = match &self.storage {
            Storage::Blocks(weight) => return weight.dequantize(&weight.device()),
            Storage::Q8(packed) => packed.dequantize(),
            Storage::Q4K(packed) => packed.dequantize(),
        };
        Tensor::from_vec(values, (self.rows, self.cols), &candle_core::Device::Cpu)
    }

    /// `x W^T` for `x` of shape `(..., in)`, in `x`'s dtype (computed in f32).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        x.to_dtype(DType::F32)?
            .contiguous()?
            .apply_op1_no_bwd(self)?
            .to_dtype(dtype)
    }

    /// Rows `first..first + out.len() / cols` of `weight` as f32 into `out`, in parallel by
    /// row.
    fn dequantize_rows(&self, weight: &QTensor, first: usize, out: &mut [f32]) -> Result<()> {
        let dtype = weight.dtype();
        let row_bytes = self.cols / dtype.block_size() * dtype.type_size();
        let data = weight.data()?;
        let rows = out.len() / self.cols;
        let bytes = &data[first * row_bytes..(first + rows) * row_bytes];
        out.par_chunks_mut(self.cols)
            .zip(bytes.par_chunks(row_bytes))
            .try_for_each(|(row, blocks)| dequantize_blocks(dtype, blocks, row))
    }
}

impl CustomOp1 for BlockMatrix {
    fn name(&self) -> &'static str {
        "block-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("block-matmul: the input is not f32");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("block-matmul: the input is not contiguous");
        };
        let mut dims = layout.dims().to_vec();
        if dims.last() != Some(&self.cols) {
            candle_core::bail!(
                "block-matmul: input {dims:?} against a {}-wide weight",
                self.cols
            );
        }
        let x = &data[start..end];
        let tokens = x.len() / self.cols;
        let mut out = vec![0f32; tokens * self.rows];
        *dims.last_mut().expect("checked above") = self.rows;
        let weight = match &self.storage {
            Storage::Q8(packed) => {
                packed.matmul(x, tokens, &mut out);
                return Ok((CpuStorage::F32(out), Shape::from(dims)));
            }
            Storage::Q4K(packed) => {
                packed.matmul(x, tokens, &mut out);
                return Ok((CpuStorage::F32(out), Shape::from(dims)));
            }
            Storage::Blocks(weight) => weight,
        };
        let band = (BAND_VALUES / self.cols).clamp(16, self.rows.max(16));
        let mut weights = vec![0f32; band.min(self.rows) * self.cols];
        let lhs = View::row_major(x, tokens, self.cols, self.cols);
        for first in (0..self.rows).step_by(band) {
            let rows = band.min(self.rows - first);
            let weights = &mut weights[..rows * self.cols];
            self.dequantize_rows(weight, first, weights)?;
            // The band is `(rows, in)` row-major, so its transpose is the GEMM's right side.
            let rhs = View::row_major(weights, rows, self.cols, self.cols).t();
            let threads = rayon::current_num_threads();
            gemm::matmul_into(lhs, rhs, &mut out[first..], self.rows, 1.0, threads);
        }
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

/// Dequantizes whole blocks of `dtype` from their bytes into `out`.
fn dequantize_blocks(dtype: GgmlDType, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    match dtype {
        GgmlDType::F32 => blocks_to_f32::<f32>(bytes, out),
        GgmlDType::F16 => blocks_to_f32::<f16>(bytes, out),
        GgmlDType::BF16 => blocks_to_f32::<bf16>(bytes, out),
        GgmlDType::Q4_0 => blocks_to_f32::<BlockQ4_0>(bytes, out),
        GgmlDType::Q4_1 => blocks_to_f32::<BlockQ4_1>(bytes, out),
        GgmlDType::Q5_0 => blocks_to_f32::<BlockQ5_0>(bytes, out),
        GgmlDType::Q5_1 => blocks_to_f32::<BlockQ5_1>(bytes, out),
        GgmlDType::Q8_0 => blocks_to_f32::<BlockQ8_0>(bytes, out),
        GgmlDType::Q8_1 => blocks_to_f32::<BlockQ8_1>(bytes, out),
        GgmlDType::Q2K => blocks_to_f32::<BlockQ2K>(bytes, out),
        GgmlDType::Q3K => blocks_to_f32::<BlockQ3K>(bytes, out),
        GgmlDType::Q4K => blocks_to_f32::<BlockQ4K>(bytes, out),
        GgmlDType::Q5K => blocks_to_f32::<BlockQ5K>(bytes, out),
        GgmlDType::Q6K => blocks_to_f32::<BlockQ6K>(bytes, out),
        GgmlDType::Q8K => blocks_to_f32::<BlockQ8K>(bytes, out),
    }
}

fn blocks_to_f32<T: GgmlType>(bytes: &[u8], out: &mut [f32]) -> Result<()> {
    let count = bytes.len() / size_of::<T>();
    if count * size_of::<T>() != bytes.len()
        || count * T::BLCK_SIZE != out.len()
        || !(bytes.as_ptr() as usize).is_multiple_of(align_of::<T>())
    {
        candle_core::bail!(
            "{:?} blocks: {} bytes for {} values",
            T::DTYPE,
            bytes.len(),
            out.len()
        );
    }
    // SAFETY: the bytes are a whole number of `T`s, aligned for `T` (checked above); they come
    // from a `QTensor`'s storage of `T` blocks, and every GGUF block type is plain data that
    // any bit pattern inhabits.
    #[allow(unsafe_code)]
    let blocks = unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), count) };
    T::to_float(blocks, out);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, IndexOp};

    /// Every type's product equals the product with its dequantized weight (to f32 rounding,
    /// or the activations' 8-bit rounding where an integer kernel multiplies), for shapes that
    /// take one band and several (the last one short), with leading batch dimensions.
    #[test]
    fn products_equal_the_dequantized_weights_product() -> Result<()> {
        let device = Device::Cpu;
        let types = [
            GgmlDType::F32,
            GgmlDType::F16,
            GgmlDType::BF16,
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q5_1,
            GgmlDType::Q8_0,
            GgmlDType::Q2K,
            GgmlDType::Q3K,
            GgmlDType::Q4K,
            GgmlDType::Q5K,
            GgmlDType::Q6K,
        ];
        for (out_features, in_features) in [(48, 256), (BAND_VALUES / 512 * 2 + 40, 512)] {
            let weight = Tensor::randn(0f32, 1.0, (out_features, in_features), &device)?;
            let x = Tensor::randn(0f32, 1.0, (2, 3, in_features), &device)?;
            for dtype in types {
                let quantized = Arc::new(QTensor::quantize(&weight, dtype)?);
                let matrix = BlockMatrix::new(quantized)?.expect("a CPU matrix of whole blocks");
                let got = matrix.forward(&x)?;
                let want = x.broadcast_matmul(&matrix.dequantize()?.t()?)?;
                assert_eq!(got.dims(), [2, 3, out_features]);
                let diff = (&got - &want)?.abs()?.max_all()?.to_scalar::<f32>()?;
                let size = want.abs()?.max_all()?.to_scalar::<f32>()?;
                // Integer kernels round the activations to 8 bits per block, too.
                let bound = if matrix.kernel().is_some() {
                    2e-2
                } else {
                    1e-5
                };
                assert!(
                    diff <= bound * size,
                    "{dtype:?} {out_features}: {diff} of {size}"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn one_row_of_input_and_bf16_inputs_work() -> Result<()> {
        let device = Device::Cpu;
        let weight = Tensor::randn(0f32, 1.0, (64, 64), &device)?;
        let matrix = BlockMatrix::new(Arc::new(QTensor::quantize(&weight, GgmlDType::Q8_0)?))?
            .expect("a CPU matrix");
        let x = Tensor::randn(0f32, 1.0, (1, 64), &device)?;
        let want = x.matmul(&matrix.dequantize()?.t()?)?;
        let got = matrix.forward(&x.to_dtype(DType::BF16)?)?;
        assert_eq!(got.dtype(), DType::BF16);
        // Outputs ~N(0, 64), rounded to bf16 (and the input to 8 bits where an integer
        // kernel multiplies): a few tenths of a percent of the largest.
        let diff = (got.to_dtype(DType::F32)? - &want)?.abs()?.max_all()?;
        let size = want.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff.to_scalar::<f32>()? < 0.02 * size, "{diff} of {size}");
        assert_eq!(matrix.forward(&x)?.i(0)?.dims(), [64]);
        Ok(())
    }

    #[test]
    fn only_matrices_take_this_kernel() -> Result<()> {
        let weight = Tensor::zeros((4, 16), DType::F32, &Device::Cpu)?;
        let quantized = QTensor::quantize(&weight, GgmlDType::F16)?;
        assert!(BlockMatrix::new(Arc::new(quantized))?.is_some());
        let odd = Tensor::zeros((2, 3, 32), DType::F32, &Device::Cpu)?;
        let three_d = QTensor::quantize(&odd, GgmlDType::Q8_0)?;
        assert!(BlockMatrix::new(Arc::new(three_d))?.is_none());
        Ok(())
    }

    /// The cost of this kernel against candle's repacking one and the dense f32 product, on
    /// FLUX-wide layers at 1280 tokens (512x512 plus 256 text tokens), best of 3:
    /// `cargo test -p seedbed-engine --lib cost_against_candles_kernel -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn cost_against_candles_kernel() -> Result<()> {
        use candle_core::Module;
        use candle_core::quantized::QMatMul;
        use std::time::Instant;
        let device = Device::Cpu;
        let best = |f: &dyn Fn() -> Result<Tensor>| -> Result<f64> {
            let mut best = f64::MAX;
            for _ in 0..3 {
                let start = Instant::now();
                f()?;
                best = best.min(start.elapsed().as_secs_f64());
            }
            Ok(best)
        };
        let shapes = [
            (1280, 3072, 3072),
            (1280, 12288, 3072),
            (1280, 3072, 12288),
            (1, 18432, 3072),
            (256, 3072, 3072),
        ];
        for (tokens, out_features, in_features) in shapes {
            let weight = Tensor::randn(0f32, 0.02, (out_features, in_features), &device)?;
            let x = Tensor::randn(0f32, 1.0, (tokens, in_features), &device)?;
            let dense_t = weight.t()?.contiguous()?;
            let dense = best(&|| x.matmul(&dense_t))?;
            for dtype in [GgmlDType::Q8_0, GgmlDType::Q4K] {
                let quantized = Arc::new(QTensor::quantize(&weight, dtype)?);
                let ours = BlockMatrix::new(quantized.clone())?.expect("a CPU matrix");
                let bands = BlockMatrix {
                    storage: Storage::Blocks(quantized.clone()),
                    ..ours.clone()
                };
                let bands = best(&|| bands.forward(&x))?;
                let candle = QMatMul::from_arc(quantized)?;
                let kernel = ours.kernel();
                let ours = best(&|| ours.forward(&x))?;
                let candle = best(&|| candle.forward(&x))?;
                println!(
                    "{tokens} x {out_features}x{in_features} {dtype:?}: ours ({:?}) {ours:.3} s, f32 bands {bands:.3} s, candle {candle:.3} s, dense f32 {dense:.3} s",
                    kernel
                );
            }
        }
        Ok(())
    }
}
