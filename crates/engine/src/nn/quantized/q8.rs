//! q8_0 weights multiplied in 8-bit integers, as ggml does, without a second copy.
//!
//! A q8_0 block is 32 integers and an f16 scale; against activations rounded the same way
//! (scale `s`, integers `x`), a block's share of a dot product is `s d sum(w x)`, one integer
//! dot product. At load the integers are repacked in [`super::int8`]'s groups of 16 rows, with
//! the scales and each block's integer sum beside them (9 bits a value against the file's
//! 8.5), and the file's blocks dropped.
//!
//! `vpdpbusd` multiplies unsigned by signed bytes, so the VNNI path offsets the activations by
//! 128 and takes `128 x sum(w)` back off, exactly, in integers. AVX2 without VNNI multiplies
//! |x| by w with x's sign (`vpsignb`, `vpmaddubsw`), which cannot overflow 16 bits for values
//! within ±127, 8 rows at a time.

use half::f16;
use rayon::prelude::*;

use super::int8::{Activations, BLOCK, Kernel, QUADS, ROWS, drive};

/// Bytes of a q8_0 block in a GGUF file: the f16 scale, then 32 integers.
const FILE_BLOCK: usize = 2 + BLOCK;

/// An `(out, in)` q8_0 weight repacked for [`Kernel`].
#[derive(Debug)]
pub struct PackedQ8 {
    rows: usize,
    cols: usize,
    kernel: Kernel,
    /// `[group][block][quad][row of group][4]`.
    quants: Vec<i8>,
    /// `[group][block][row of group]`.
    scales: Vec<f16>,
    /// `[group][block][row of group]`, the sum of the block's integers (for the VNNI offset).
    sums: Vec<i16>,
}

impl PackedQ8 {
    /// Repacks a q8_0 tensor's bytes (`rows x cols`, GGUF's blocks) for `kernel`; `None` when
    /// the rows do not make whole groups.
    pub fn pack(bytes: &[u8], rows: usize, cols: usize, kernel: Kernel) -> Option<Self> {
        let blocks = cols / BLOCK;
        if !rows.is_multiple_of(ROWS)
            || !cols.is_multiple_of(BLOCK)
            || bytes.len() != rows * blocks * FILE_BLOCK
        {
            return None;
        }
        let mut quants = vec![0i8; rows * cols];
        let mut scales = vec![f16::ZERO; rows * blocks];
        let mut sums = vec![0i16; rows * blocks];
        quants
            .par_chunks_mut(ROWS * cols)
            .zip(scales.par_chunks_mut(ROWS * blocks))
            .zip(sums.par_chunks_mut(ROWS * blocks))
            .zip(bytes.par_chunks(ROWS * blocks * FILE_BLOCK))
            .for_each(|(((quants, scales), sums), file)| {
                for r in 0..ROWS {
                    for b in 0..blocks {
                        let block = &file[(r * blocks + b) * FILE_BLOCK..][..FILE_BLOCK];
                        scales[b * ROWS + r] = f16::from_le_bytes([block[0], block[1]]);
                        let values = block[2..].iter().map(|&v| v as i8);
                        sums[b * ROWS + r] = values.clone().map(i16::from).sum();
                        for (c, value) in values.enumerate() {
                            let (quad, lane) = (c / 4, c % 4);
                            quants[((b * QUADS + quad) * ROWS + r) * 4 + lane] = value;
                        }
                    }
                }
            });
        Some(Self {
            rows,
            cols,
            kernel,
            quants,
            scales,
            sums,
        })
    }

    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// The weight as f32 `(out, in)`, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        let blocks = self.cols / BLOCK;
        let mut out = vec![0f32; self.rows * self.cols];
        for (row, values) in out.chunks_mut(self.cols).enumerate() {
            let (g, r) = (row / ROWS, row % ROWS);
            for (c, value) in values.iter_mut().enumerate() {
                let (b, quad, lane) = (c / BLOCK, c % BLOCK / 4, c % 4);
                let at = (g * blocks + b) * ROWS;
                let q = self.quants[(at * QUADS + quad * ROWS + r) * 4 + lane];
                *value = f32::from(q) * self.scales[at + r].to_f32();
            }
        }
        out
    }

    /// `out = x W^T` for `tokens` rows of `x` (`tokens x cols`), `out` `tokens x rows`.
    pub fn matmul(&self, x: &[f32], tokens: usize, out: &mut [f32]) {
        assert_eq!(x.len(), tokens * self.cols, "input size");
        let activations = Activations::quantize(x, self.cols, self.kernel == Kernel::Vnni512);
        drive(self.rows, &activations, out, |first, count, group, out| {
            self.tile(&activations, first, count, group, out)
        });
    }

    /// Outputs `group * 16..` of `tokens` tokens from `first`, into `out` (rows `self.rows`
    /// apart).
    fn tile(&self, x: &Activations, first: usize, tokens: usize, group: usize, out: &mut [f32]) {
        assert!(first + tokens <= x.tokens && (tokens - 1) * self.rows + self.rows <= out.len());
        // SAFETY: the kernel was detected on this CPU; the asserts above and the layout the
        // pack checked keep every read and write inside the slices.
        #[allow(unsafe_code)]
        #[cfg(target_arch = "x86_64")]
        unsafe {
            match (self.kernel, tokens) {
                (Kernel::Vnni512, 4) => x86::vnni::<4>(self, x, first, group, out),
                (Kernel::Vnni512, 3) => x86::vnni::<3>(self, x, first, group, out),
                (Kernel::Vnni512, 2) => x86::vnni::<2>(self, x, first, group, out),
                (Kernel::Vnni512, _) => x86::vnni::<1>(self, x, first, group, out),
                (Kernel::Avx2, 4) => x86::avx2::<4>(self, x, first, group, out),
                (Kernel::Avx2, 3) => x86::avx2::<3>(self, x, first, group, out),
                (Kernel::Avx2, 2) => x86::avx2::<2>(self, x, first, group, out),
                (Kernel::Avx2, _) => x86::avx2::<1>(self, x, first, group, out),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!(
            "no integer kernel off x86: {x:?} {first} {group} {}",
            out.len()
        );
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod x86 {
    use std::arch::x86_64::*;

    use super::PackedQ8;
    use crate::nn::quantized::int8::{Activations, BLOCK, QUADS, ROWS};

    /// `T` tokens x 16 outputs of one group with AVX-512 VNNI.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
    pub(super) unsafe fn vnni<const T: usize>(
        w: &PackedQ8,
        x: &Activations,
        first: usize,
        group: usize,
        out: &mut [f32],
    ) {
        let blocks = w.cols / BLOCK;
        let mut acc = [_mm512_setzero_ps(); T];
        for b in 0..blocks {
            let at = (group * blocks + b) * ROWS;
            let weights = unsafe { w.quants.as_ptr().add(at * QUADS * 4) };
            let mut dots = [_mm512_setzero_si512(); T];
            for quad in 0..QUADS {
                let wv = unsafe { _mm512_loadu_si512(weights.add(quad * ROWS * 4).cast()) };
                for (t, dot) in dots.iter_mut().enumerate() {
                    let four = _mm512_set1_epi32(x.four(first + t, b, quad));
                    *dot = _mm512_dpbusd_epi32(*dot, four, wv);
                }
            }
            let sums = unsafe { _mm256_loadu_si256(w.sums.as_ptr().add(at).cast()) };
            let offset = _mm512_slli_epi32::<7>(_mm512_cvtepi16_epi32(sums));
            let scales = unsafe { _mm256_loadu_si256(w.scales.as_ptr().add(at).cast()) };
            let scales = _mm512_cvtph_ps(scales);
            for (t, (acc, dot)) in acc.iter_mut().zip(dots).enumerate() {
                let exact = _mm512_cvtepi32_ps(_mm512_sub_epi32(dot, offset));
                let scale = _mm512_set1_ps(x.scales[(first + t) * blocks + b]);
                *acc = _mm512_fmadd_ps(exact, _mm512_mul_ps(scales, scale), *acc);
            }
        }
        for (t, acc) in acc.iter().enumerate() {
            unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(t * w.rows + group * ROWS), *acc) };
        }
    }

    /// `T` tokens x 16 outputs of one group with AVX2, 8 rows at a time.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn avx2<const T: usize>(
        w: &PackedQ8,
        x: &Activations,
        first: usize,
        group: usize,
        out: &mut [f32],
    ) {
        let blocks = w.cols / BLOCK;
        let ones = _mm256_set1_epi16(1);
        for half in 0..2 {
            let mut acc = [_mm256_setzero_ps(); T];
            for b in 0..blocks {
                let at = (group * blocks + b) * ROWS;
                let weights = unsafe { w.quants.as_ptr().add(at * QUADS * 4 + half * 32) };
                let mut dots = [_mm256_setzero_si256(); T];
                for quad in 0..QUADS {
                    let wv = unsafe { _mm256_loadu_si256(weights.add(quad * ROWS * 4).cast()) };
                    for (t, dot) in dots.iter_mut().enumerate() {
                        let xv = _mm256_set1_epi32(x.four(first + t, b, quad));
                        let magnitudes = _mm256_sign_epi8(xv, xv);
                        let signed = _mm256_sign_epi8(wv, xv);
                        let pairs = _mm256_maddubs_epi16(magnitudes, signed);
                        *dot = _mm256_add_epi32(*dot, _mm256_madd_epi16(pairs, ones));
                    }
                }
                let scales =
                    unsafe { _mm_loadu_si128(w.scales.as_ptr().add(at + half * 8).cast()) };
                let scales = _mm256_cvtph_ps(scales);
                for (t, (acc, dot)) in acc.iter_mut().zip(dots).enumerate() {
                    let scale = _mm256_set1_ps(x.scales[(first + t) * blocks + b]);
                    let dot = _mm256_cvtepi32_ps(dot);
                    *acc = _mm256_fmadd_ps(dot, _mm256_mul_ps(scales, scale), *acc);
                }
            }
            for (t, acc) in acc.iter().enumerate() {
                let at = t * w.rows + group * ROWS + half * 8;
                unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(at), *acc) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    fn kernels() -> Vec<Kernel> {
        match Kernel::detect() {
            Some(Kernel::Vnni512) => vec![Kernel::Vnni512, Kernel::Avx2],
            Some(Kernel::Avx2) => vec![Kernel::Avx2],
            None => vec![],
        }
    }

    /// Every kernel this CPU has gives the product with the dequantized weight, to the
    /// rounding of the activations to q8_0, for token counts on and off the tiles of 4 and
    /// the chunks of 64; the packed weight dequantizes to the file's values exactly.
    #[test]
    fn products_match_the_dequantized_weight() {
        let (rows, cols) = (48, 96);
        let weight = Tensor::randn(0f32, 1.0, (rows, cols), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&weight, GgmlDType::Q8_0).unwrap();
        let bytes = q.data().unwrap();
        let dense = q.dequantize(&Device::Cpu).unwrap();
        for kernel in kernels() {
            let packed = PackedQ8::pack(&bytes, rows, cols, kernel).unwrap();
            let unpacked = Tensor::from_vec(packed.dequantize(), (rows, cols), &Device::Cpu);
            let diff = (unpacked.unwrap() - &dense).unwrap().abs().unwrap();
            assert_eq!(diff.max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
            for tokens in [1, 3, 4, 7, 70] {
                let x = Tensor::randn(0f32, 1.0, (tokens, cols), &Device::Cpu).unwrap();
                let want = x.matmul(&dense.t().unwrap()).unwrap();
                let mut got = vec![0f32; tokens * rows];
                let values = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                packed.matmul(&values, tokens, &mut got);
                let got = Tensor::from_vec(got, (tokens, rows), &Device::Cpu).unwrap();
                let error = (&got - &want).unwrap().sqr().unwrap().sum_all().unwrap();
                let size = want.sqr().unwrap().sum_all().unwrap();
                let relative =
                    (error.to_scalar::<f32>().unwrap() / size.to_scalar::<f32>().unwrap()).sqrt();
                // q8_0 activations: about step/sqrt(12) of each block's largest value.
                assert!(relative < 1e-2, "{kernel:?} {tokens}: {relative}");
            }
        }
    }

    #[test]
    fn rows_short_of_a_group_are_not_packed() {
        let weight = Tensor::zeros((8, 32), candle_core::DType::F32, &Device::Cpu).unwrap();
        let q = QTensor::quantize(&weight, GgmlDType::Q8_0).unwrap();
        assert!(PackedQ8::pack(&q.data().unwrap(), 8, 32, Kernel::Avx2).is_none());
    }
}
