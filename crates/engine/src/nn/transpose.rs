//! A cache-blocked, parallel transpose of 2-D CPU tensors.
//!
//! The linear layers keep their CPU weights transposed ([`super::layers::Linear`]), because
//! the GEMM runs a third faster on a row-major `(in, out)` right-hand side than on the stored
//! `(out, in)` one (measured on T5-XXL's 4096 -> 10240 at 256 tokens: 134 ms against 209 ms,
//! `cargo bench -p seedbed-engine --bench kernels -- t5`). Every weight goes through here once
//! at load, so it must run near memory speed: candle's strided copy moves one element at a
//! time, this moves square tiles that stay in the L1 cache, 8x8 blocks at a time in vector
//! registers (1280x5120 f32: 12.7 ms element by element, copying it takes 2.5 ms).

use candle_core::{CpuStorage, Result, Storage, Tensor};
use rayon::prelude::*;

use super::rounded::{Activations, Rounded};

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
        Storage::Cpu(CpuStorage::F32(data)) => transposed_values(&data[start..end], rows, cols),
        Storage::Cpu(CpuStorage::F16(data)) => {
            Tensor::from_vec(transpose(&data[start..end], rows, cols), shape, t.device())
        }
        Storage::Cpu(CpuStorage::BF16(data)) => {
            Tensor::from_vec(transpose(&data[start..end], rows, cols), shape, t.device())
        }
        _ => t.t()?.contiguous(),
    }
}

/// The 3-D tensor `t` (`items, rows, cols`) with each item transposed (`items, cols, rows`),
/// contiguous: an image's channels-first map to its pixels' rows of channels and back. By
/// tiles in parallel on CPU in f32; otherwise candle's copy, which is one thread's.
pub fn transposed_items(t: &Tensor) -> Result<Tensor> {
    let (items, rows, cols) = t.dims3()?;
    let transposed = super::cpu_f32(t, |data| {
        let mut out = super::buffers::zeros::<f32>(data.len());
        let size = rows * cols;
        if size > 0 {
            for (src, dst) in data.chunks_exact(size).zip(out.chunks_exact_mut(size)) {
                transpose_to(src, rows, cols, dst);
            }
        }
        out
    });
    match transposed {
        Some(out) => Tensor::from_vec(out?, (items, cols, rows), t.device()),
        None => t.transpose(1, 2)?.contiguous(),
    }
}

/// Attention's output `(batch, heads, tokens, dim)` as rows of tokens `(batch, tokens,
/// heads dim)`, contiguous: each token's heads side by side, tokens in parallel on CPU in f32;
/// otherwise candle's copy, which is one thread's.
pub fn heads_to_tokens(t: &Tensor) -> Result<Tensor> {
    heads_to_tokens_as(t, false)?.to_tensor()
}

/// [`heads_to_tokens`], as rows rounded to bf16 when `rounded` (for the linear layer that
/// [takes them](super::layers::Linear::takes_rounded)) and `t` is f32 on the CPU.
pub fn heads_to_tokens_as(t: &Tensor, rounded: bool) -> Result<Activations> {
    let (batch, heads, tokens, dim) = t.dims4()?;
    let row = heads * dim;
    let moved = super::cpu_f32(t, |data| {
        // Token `i`'s row: each head's values for it side by side.
        let token_row = |i: usize, dst: &mut [f32]| {
            let (b, token) = (i / tokens, i % tokens);
            for (h, dst) in dst.chunks_exact_mut(dim.max(1)).enumerate() {
                let src = ((b * heads + h) * tokens + token) * dim;
                dst.copy_from_slice(&data[src..src + dim]);
            }
        };
        if rounded && row > 0 {
            let rows = Rounded::from_f32_rows(batch * tokens, row, token_row);
            return Ok(Activations::Rounded {
                rows,
                dims: vec![batch, tokens, row],
            });
        }
        let out = super::buffers::par_filled(data.len(), row, token_row);
        Tensor::from_vec(out, (batch, tokens, row), t.device()).map(Activations::Tensor)
    });
    match moved {
        Some(moved) => moved?,
        None => Ok(Activations::Tensor(
            t.transpose(1, 2)?.reshape((batch, tokens, row))?,
        )),
    }
}

/// The transpose of the row-major `rows x cols` f32 matrix `values`, as a CPU tensor.
pub fn transposed_values(values: &[f32], rows: usize, cols: usize) -> Result<Tensor> {
    let device = candle_core::Device::Cpu;
    Tensor::from_vec(transpose(values, rows, cols), (cols, rows), &device)
}

/// `src`, `rows x cols` row-major, as `cols x rows` row-major. Each task writes a band of
/// `TILE` output rows (input columns), walking down the input one tile at a time; inside a
/// tile, 8x8 blocks move through vector registers where the CPU allows.
fn transpose<T: Copy + Default + Send + Sync>(src: &[T], rows: usize, cols: usize) -> Vec<T> {
    assert_eq!(
        src.len(),
        rows * cols,
        "transpose: {rows}x{cols} needs {} values",
        rows * cols
    );
    let mut dst = vec![T::default(); src.len()];
    transpose_to(src, rows, cols, &mut dst);
    dst
}

/// [`transpose`] into `dst` (`rows x cols` values).
fn transpose_to<T: Copy + Send + Sync>(src: &[T], rows: usize, cols: usize, dst: &mut [T]) {
    if dst.is_empty() {
        return;
    }
    let block = block_kernel::<T>();
    dst.par_chunks_mut(TILE * rows)
        .enumerate()
        .for_each(|(band, out)| {
            let first_col = band * TILE;
            let band_cols = out.len() / rows;
            for first_row in (0..rows).step_by(TILE) {
                let band_rows = TILE.min(rows - first_row);
                let tile = Block {
                    rows: band_rows,
                    cols: band_cols,
                    src_stride: cols,
                    dst_stride: rows,
                };
                tile.transpose(
                    &src[first_row * cols + first_col..],
                    &mut out[first_row..],
                    block,
                );
            }
        });
}

/// `rows x cols` values of `src` (rows `src_stride` apart) into `dst` as `cols` rows of
/// `rows` (rows `dst_stride` apart): a transpose within wider matrices, 8x8 blocks in vector
/// registers where the CPU allows (for 4- and 2-byte values).
pub fn transpose_into<T: Copy>(
    src: &[T],
    src_stride: usize,
    rows: usize,
    cols: usize,
    dst: &mut [T],
    dst_stride: usize,
) {
    let block = Block {
        rows,
        cols,
        src_stride,
        dst_stride,
    };
    block.transpose(src, dst, block_kernel::<T>());
}

/// A block of a strided matrix to transpose into another.
struct Block {
    rows: usize,
    cols: usize,
    src_stride: usize,
    dst_stride: usize,
}

impl Block {
    fn transpose<T: Copy>(&self, src: &[T], out: &mut [T], kernel: Option<BlockKernel>) {
        let (cols, rows) = (self.src_stride, self.dst_stride);
        // Eight source rows at a time, each read start to end: eight streams the hardware
        // prefetcher follows, where a column of blocks at a time would be one per row.
        for r in (0..self.rows).step_by(8) {
            for c in (0..self.cols).step_by(8) {
                let from = r * cols + c;
                let to = c * rows + r;
                match kernel {
                    Some(kernel) if c + 8 <= self.cols && r + 8 <= self.rows => {
                        assert!(from + 7 * cols + 8 <= src.len());
                        assert!(to + 7 * rows + 8 <= out.len());
                        // SAFETY: the asserts keep the 8 rows of 8 read from `src` and
                        // written to `out` inside their slices; `block_kernel` returned this
                        // kernel only for `T`'s size on a CPU with its instructions.
                        #[allow(unsafe_code)]
                        unsafe {
                            kernel(
                                src.as_ptr().add(from).cast(),
                                cols,
                                out.as_mut_ptr().add(to).cast(),
                                rows,
                            )
                        };
                    }
                    _ => {
                        for cc in c..(c + 8).min(self.cols) {
                            for rr in r..(r + 8).min(self.rows) {
                                out[cc * rows + rr] = src[rr * cols + cc];
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Transposes the 8x8 block at `src` (rows `src_stride` elements apart) into `dst` (rows
/// `dst_stride` apart); elements of the size it was chosen for.
type BlockKernel = unsafe fn(*const u8, usize, *mut u8, usize);

/// The vector kernel for 8x8 blocks of `T`, if this CPU has one: AVX2 for 4-byte values,
/// SSE2 for 2-byte ones. Shuffles move bits, so f32 NaN payloads survive.
fn block_kernel<T>() -> Option<BlockKernel> {
    #[cfg(target_arch = "x86_64")]
    match std::mem::size_of::<T>() {
        4 if std::arch::is_x86_feature_detected!("avx2") => return Some(x86::block_32_avx2),
        2 => return Some(x86::block_16_sse2),
        _ => {}
    }
    None
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod x86 {
    use std::arch::x86_64::*;

    /// 8x8 4-byte values. Safety: AVX2 is present; both blocks are in bounds.
    #[target_feature(enable = "avx2")]
    pub unsafe fn block_32_avx2(
        src: *const u8,
        src_stride: usize,
        dst: *mut u8,
        dst_stride: usize,
    ) {
        let (src, dst) = (src.cast::<f32>(), dst.cast::<f32>());
        // SAFETY: the caller keeps the 8 rows of 8 values at both ends in bounds.
        unsafe {
            let row = |i: usize| _mm256_loadu_ps(src.add(i * src_stride));
            let (r0, r1, r2, r3) = (row(0), row(1), row(2), row(3));
            let (r4, r5, r6, r7) = (row(4), row(5), row(6), row(7));
            // Pairs of rows interleaved, then pairs of pairs, then the 128-bit halves.
            let (t0, t1) = (_mm256_unpacklo_ps(r0, r1), _mm256_unpackhi_ps(r0, r1));
            let (t2, t3) = (_mm256_unpacklo_ps(r2, r3), _mm256_unpackhi_ps(r2, r3));
            let (t4, t5) = (_mm256_unpacklo_ps(r4, r5), _mm256_unpackhi_ps(r4, r5));
            let (t6, t7) = (_mm256_unpacklo_ps(r6, r7), _mm256_unpackhi_ps(r6, r7));
            let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
            let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
            let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
            let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
            let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
            let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
            let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
            let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
            let store = |i: usize, v: __m256| _mm256_storeu_ps(dst.add(i * dst_stride), v);
            store(0, _mm256_permute2f128_ps::<0x20>(u0, u4));
            store(1, _mm256_permute2f128_ps::<0x20>(u1, u5));
            store(2, _mm256_permute2f128_ps::<0x20>(u2, u6));
            store(3, _mm256_permute2f128_ps::<0x20>(u3, u7));
            store(4, _mm256_permute2f128_ps::<0x31>(u0, u4));
            store(5, _mm256_permute2f128_ps::<0x31>(u1, u5));
            store(6, _mm256_permute2f128_ps::<0x31>(u2, u6));
            store(7, _mm256_permute2f128_ps::<0x31>(u3, u7));
        }
    }

    /// 8x8 2-byte values. Safety: both blocks are in bounds (SSE2 is part of x86-64).
    pub unsafe fn block_16_sse2(
        src: *const u8,
        src_stride: usize,
        dst: *mut u8,
        dst_stride: usize,
    ) {
        let (src, dst) = (src.cast::<u16>(), dst.cast::<u16>());
        // SAFETY: the caller keeps the 8 rows of 8 values at both ends in bounds.
        unsafe {
            let row = |i: usize| _mm_loadu_si128(src.add(i * src_stride).cast());
            let (a0, a1, a2, a3) = (row(0), row(1), row(2), row(3));
            let (a4, a5, a6, a7) = (row(4), row(5), row(6), row(7));
            let (b0, b1) = (_mm_unpacklo_epi16(a0, a1), _mm_unpackhi_epi16(a0, a1));
            let (b2, b3) = (_mm_unpacklo_epi16(a2, a3), _mm_unpackhi_epi16(a2, a3));
            let (b4, b5) = (_mm_unpacklo_epi16(a4, a5), _mm_unpackhi_epi16(a4, a5));
            let (b6, b7) = (_mm_unpacklo_epi16(a6, a7), _mm_unpackhi_epi16(a6, a7));
            let (c0, c1) = (_mm_unpacklo_epi32(b0, b2), _mm_unpackhi_epi32(b0, b2));
            let (c2, c3) = (_mm_unpacklo_epi32(b1, b3), _mm_unpackhi_epi32(b1, b3));
            let (c4, c5) = (_mm_unpacklo_epi32(b4, b6), _mm_unpackhi_epi32(b4, b6));
            let (c6, c7) = (_mm_unpacklo_epi32(b5, b7), _mm_unpackhi_epi32(b5, b7));
            let store = |i: usize, v: __m128i| _mm_storeu_si128(dst.add(i * dst_stride).cast(), v);
            store(0, _mm_unpacklo_epi64(c0, c4));
            store(1, _mm_unpackhi_epi64(c0, c4));
            store(2, _mm_unpacklo_epi64(c1, c5));
            store(3, _mm_unpackhi_epi64(c1, c5));
            store(4, _mm_unpacklo_epi64(c2, c6));
            store(5, _mm_unpackhi_epi64(c2, c6));
            store(6, _mm_unpacklo_epi64(c3, c7));
            store(7, _mm_unpackhi_epi64(c3, c7));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn matches_candles_transpose_for_ragged_tiles_and_every_dtype() -> Result<()> {
        // Neither side a multiple of the tile; one a single row.
        for (rows, cols) in [(70, 45), (1, 33), (33, 1), (64, 64), (100, 77)] {
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

    fn values(t: &Tensor) -> Result<Vec<f32>> {
        t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
    }

    /// Every item of a batch transposed on its own, ragged tiles and a view included; other
    /// dtypes through candle's copy.
    #[test]
    fn items_are_transposed_each_as_candle_does() -> Result<()> {
        for (items, rows, cols) in [(2, 70, 45), (3, 1, 33), (1, 64, 320), (2, 0, 5)] {
            let t = Tensor::randn(0f32, 1., (items, rows, cols), &Device::Cpu)?;
            for t in [t.clone(), t.to_dtype(DType::BF16)?, t.transpose(1, 2)?] {
                let ours = transposed_items(&t)?;
                let theirs = t.transpose(1, 2)?.contiguous()?;
                assert_eq!(ours.dims(), theirs.dims());
                let case = format!("{items}x{rows}x{cols} {:?}", t.dtype());
                assert_eq!(values(&ours)?, values(&theirs)?, "{case}");
            }
        }
        Ok(())
    }

    #[test]
    fn heads_become_rows_of_tokens_as_candle_reshapes_them() -> Result<()> {
        for (batch, heads, tokens, dim) in [(2, 5, 7, 64), (1, 1, 3, 8), (2, 3, 0, 4)] {
            let t = Tensor::randn(0f32, 1., (batch, heads, tokens, dim), &Device::Cpu)?;
            for t in [t.clone(), t.to_dtype(DType::BF16)?] {
                let ours = heads_to_tokens(&t)?;
                let theirs = t.transpose(1, 2)?.reshape((batch, tokens, heads * dim))?;
                assert_eq!(ours.dims(), theirs.dims());
                assert_eq!(values(&ours)?, values(&theirs)?);
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
