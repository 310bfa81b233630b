//! A cache-blocked, parallel transpose of 2-D CPU tensors.
//!
//! The linear layers keep their CPU weights transposed ([`super::layers::Linear`]), because
//! the GEMM runs a third faster on a row-major `(in, out)` right-hand side than on the stored
//! `(out, in)` one (measured on T5-XXL's 4096 -> 10240 at 256 tokens: 134 ms against 209 ms,
//! `cargo bench -p seedbed-engine --bench kernels -- t5`). Every weight goes through here once
//! at load, so it must run near memory speed: candle's strided copy moves one element at a
//! time, this moves square tiles that stay in the L1 cache.

use candle_core::{CpuStorage, Result, Storage, Tensor};
use rayon::prelude::*;

/// Side of the square tiles: 32x32 f32 is 4 KiB read and 4 KiB written.
const TILE: usize = 32;

/// The transpose of the 2-D tensor `t`, contiguous. On CPU in f32, f16 and bf16 by tiles;
/// otherwise candle's copy.
pub fn transposed(t: &Tensor) -> Result<Tensor> {
    let (rows, cols) = t.dims2()?;
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("transpose: the tensor is not contiguous");
    };
    let shape = (cols, rows);
    match &*storage {
        Storage::Cpu(CpuStorage::F32(data)) => {
            Tensor::from_vec(transpose(&data[start..end], rows, cols), shape, t.device())
        }
        Storage::Cpu(CpuStorage::F16(data)) => {
            Tensor::from_vec(transpose(&data[start..end], rows, cols), shape, t.device())
        }
        Storage::Cpu(CpuStorage::BF16(data)) => {
            Tensor::from_vec(transpose(&data[start..end], rows, cols), shape, t.device())
        }
        _ => t.t()?.contiguous(),
    }
}

/// `src`, `rows x cols` row-major, as `cols x rows` row-major. Each task writes a band of
/// `TILE` output rows (input columns), walking down the input one tile at a time.
fn transpose<T: Copy + Default + Send + Sync>(src: &[T], rows: usize, cols: usize) -> Vec<T> {
    assert_eq!(
        src.len(),
        rows * cols,
        "transpose: {rows}x{cols} needs {} values",
        rows * cols
    );
    let mut dst = vec![T::default(); src.len()];
    if dst.is_empty() {
        return dst;
    }
    dst.par_chunks_mut(TILE * rows)
        .enumerate()
        .for_each(|(band, out)| {
            let first_col = band * TILE;
            let band_cols = out.len() / rows;
            for first_row in (0..rows).step_by(TILE) {
                let band_rows = TILE.min(rows - first_row);
                for c in 0..band_cols {
                    let out_row = &mut out[c * rows + first_row..][..band_rows];
                    for (r, value) in out_row.iter_mut().enumerate() {
                        *value = src[(first_row + r) * cols + first_col + c];
                    }
                }
            }
        });
    dst
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn matches_candles_transpose_for_ragged_tiles_and_every_dtype() -> Result<()> {
        // Neither side a multiple of the tile; one a single row.
        for (rows, cols) in [(70, 45), (1, 33), (33, 1), (64, 64)] {
            let t = Tensor::randn(0f32, 1., (rows, cols), &Device::Cpu)?;
            for dtype in [DType::F32, DType::F16, DType::BF16] {
                let t = t.to_dtype(dtype)?;
                let ours = transposed(&t)?;
                let theirs = t.t()?.contiguous()?;
                assert_eq!(ours.dims(), &[cols, rows]);
                assert_eq!(ours.dtype(), dtype);
                let diff = (ours.to_dtype(DType::F32)? - theirs.to_dtype(DType::F32)?)?
                    .abs()?
                    .max_all()?
                    .to_scalar::<f32>()?;
                assert_eq!(diff, 0.0, "{rows}x{cols} {dtype:?}");
            }
        }
        Ok(())
    }

    #[test]
    fn a_view_is_transposed_as_its_values() -> Result<()> {
        let t = Tensor::arange(0f32, 12., &Device::Cpu)?.reshape((3, 4))?;
        let back = transposed(&t.t()?)?;
        assert_eq!(back.to_vec2::<f32>()?, t.to_vec2::<f32>()?);
        Ok(())
    }
}
