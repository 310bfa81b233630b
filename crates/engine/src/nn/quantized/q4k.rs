//! q4_K weights multiplied in integers, without a second copy.
//!
//! A q4_K super-block holds 256 values of a row as 4-bit integers `q` in 8 sub-blocks of 32,
//! each with a 6-bit scale `sc` and minimum `m`, and the super-block's f16 `d` and `dmin`: a
//! value is `d sc q - dmin m`. Against activations rounded to q8_0 (scale `s`, integers `x`,
//! one block per sub-block), a sub-block's share of a dot product is
//! `s (d sc sum(q x) - dmin m sum(x))`: one integer dot product of unsigned 4-bit by signed
//! 8-bit values, which `vpdpbusd` (and AVX2's `vpmaddubsw`, whose pair sums of at most
//! 2 x 15 x 127 cannot overflow 16 bits) takes as it is, and `s sum(x)` computed once per
//! token.
//!
//! At load the 4-bit integers are repacked in [`super::int8`]'s groups of 16 rows, two runs
//! of 4 columns to a byte (the low nibbles one run, the high nibbles the next), with the
//! scales, minimums, `d` and `dmin` beside them: 4.6 bits a value against the file's 4.5.

use half::f16;
use rayon::prelude::*;

use super::int8::{Activations, BLOCK, Kernel, ROWS, drive};

/// Values of a q4_K super-block.
const SUPER: usize = 256;
/// Sub-blocks of a super-block.
const SUBS: usize = SUPER / BLOCK;
/// Bytes of a q4_K super-block in a GGUF file: `d`, `dmin`, 12 bytes of packed 6-bit scales
/// and minimums, 128 bytes of 4-bit integers.
const FILE_SUPER: usize = 4 + 12 + SUPER / 2;
/// Bytes of 4-bit integers per group and block: 16 rows x 32 values / 2.
const NIBBLE_BYTES: usize = ROWS * BLOCK / 2;

/// An `(out, in)` q4_K weight repacked for [`Kernel`].
#[derive(Debug)]
pub struct PackedQ4K {
    rows: usize,
    cols: usize,
    kernel: Kernel,
    /// `[group][block][pair of runs][row of group][4]`: run `2p` in the low nibbles, `2p + 1`
    /// in the high ones.
    nibbles: Vec<u8>,
    /// `[group][block][row of group]`, the sub-blocks' 6-bit scales and minimums.
    scales: Vec<u8>,
    mins: Vec<u8>,
    /// `[group][super-block][row of group]`.
    d: Vec<f16>,
    dmin: Vec<f16>,
}

/// Sub-block `j`'s (scale, minimum) from a super-block's 12 packed bytes, as ggml packs them.
fn scale_and_min(j: usize, packed: &[u8]) -> (u8, u8) {
    if j < 4 {
        (packed[j] & 63, packed[j + 4] & 63)
    } else {
        let scale = (packed[j + 4] & 0xF) | ((packed[j - 4] >> 6) << 4);
        let min = (packed[j + 4] >> 4) | ((packed[j] >> 6) << 4);
        (scale, min)
    }
}

impl PackedQ4K {
    /// Repacks a q4_K tensor's bytes (`rows x cols`, GGUF's super-blocks) for `kernel`; `None`
    /// when the rows do not make whole groups.
    pub fn pack(bytes: &[u8], rows: usize, cols: usize, kernel: Kernel) -> Option<Self> {
        let supers = cols / SUPER;
        if !rows.is_multiple_of(ROWS)
            || !cols.is_multiple_of(SUPER)
            || bytes.len() != rows * supers * FILE_SUPER
        {
            return None;
        }
        let blocks = cols / BLOCK;
        let mut nibbles = vec![0u8; rows * cols / 2];
        let mut scales = vec![0u8; rows * blocks];
        let mut mins = vec![0u8; rows * blocks];
        let mut d = vec![f16::ZERO; rows * supers];
        let mut dmin = vec![f16::ZERO; rows * supers];
        nibbles
            .par_chunks_mut(ROWS * cols / 2)
            .zip(scales.par_chunks_mut(ROWS * blocks))
            .zip(mins.par_chunks_mut(ROWS * blocks))
            .zip(d.par_chunks_mut(ROWS * supers))
            .zip(dmin.par_chunks_mut(ROWS * supers))
            .zip(bytes.par_chunks(ROWS * supers * FILE_SUPER))
            .for_each(|(((((nibbles, scales), mins), d), dmin), file)| {
                for r in 0..ROWS {
                    for sb in 0..supers {
                        let block = &file[(r * supers + sb) * FILE_SUPER..][..FILE_SUPER];
                        d[sb * ROWS + r] = f16::from_le_bytes([block[0], block[1]]);
                        dmin[sb * ROWS + r] = f16::from_le_bytes([block[2], block[3]]);
                        let (packed, quants) = (&block[4..16], &block[16..]);
                        for j in 0..SUBS {
                            let b = sb * SUBS + j;
                            (scales[b * ROWS + r], mins[b * ROWS + r]) = scale_and_min(j, packed);
                            // Sub-block 2i is the low nibbles of bytes 32i.., 2i + 1 the high.
                            let run = &quants[j / 2 * BLOCK..][..BLOCK];
                            let shift = if j % 2 == 0 { 0 } else { 4 };
                            for (c, byte) in run.iter().enumerate() {
                                let value = (byte >> shift) & 0xF;
                                let (quad, lane) = (c / 4, c % 4);
                                let (pair, high) = (quad / 2, quad % 2);
                                let at = b * NIBBLE_BYTES + (pair * ROWS + r) * 4 + lane;
                                nibbles[at] |= value << (4 * high);
                            }
                        }
                    }
                }
            });
        Some(Self {
            rows,
            cols,
            kernel,
            nibbles,
            scales,
            mins,
            d,
            dmin,
        })
    }

    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// The weight as f32 `(out, in)`, row-major: the file's values exactly.
    pub fn dequantize(&self) -> Vec<f32> {
        let (blocks, supers) = (self.cols / BLOCK, self.cols / SUPER);
        let mut out = vec![0f32; self.rows * self.cols];
        for (row, values) in out.chunks_mut(self.cols).enumerate() {
            let (g, r) = (row / ROWS, row % ROWS);
            for (c, value) in values.iter_mut().enumerate() {
                let (b, quad, lane) = (c / BLOCK, c % BLOCK / 4, c % 4);
                let (sb, at) = (c / SUPER, (g * blocks + b) * ROWS + r);
                let byte = self.nibbles
                    [(g * blocks + b) * NIBBLE_BYTES + (quad / 2 * ROWS + r) * 4 + lane];
                let q = (byte >> (4 * (quad % 2))) & 0xF;
                let d = self.d[(g * supers + sb) * ROWS + r].to_f32();
                let dmin = self.dmin[(g * supers + sb) * ROWS + r].to_f32();
                *value =
                    d * f32::from(self.scales[at]) * f32::from(q) - dmin * f32::from(self.mins[at]);
            }
        }
        out
    }

    /// `out = x W^T` for `tokens` rows of `x` (`tokens x cols`), `out` `tokens x rows`.
    pub fn matmul(&self, x: &[f32], tokens: usize, out: &mut [f32]) {
        assert_eq!(x.len(), tokens * self.cols, "input size");
        let activations = Activations::quantize(x, self.cols, false);
        drive(self.rows, &activations, out, |first, count, group, out| {
            self.tile(&activations, first, count, group, out)
        });
    }

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

    use super::{NIBBLE_BYTES, PackedQ4K, SUBS, SUPER};
    use crate::nn::quantized::int8::{Activations, BLOCK, QUADS, ROWS};

    /// `T` tokens x 16 outputs of one group with AVX-512 VNNI.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
    pub(super) unsafe fn vnni<const T: usize>(
        w: &PackedQ4K,
        x: &Activations,
        first: usize,
        group: usize,
        out: &mut [f32],
    ) {
        let (blocks, supers) = (w.cols / BLOCK, w.cols / SUPER);
        let low = _mm512_set1_epi8(0xF);
        let mut acc = [_mm512_setzero_ps(); T];
        for sb in 0..supers {
            let at = (group * supers + sb) * ROWS;
            let d = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(w.d.as_ptr().add(at).cast()) });
            let dmin =
                _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(w.dmin.as_ptr().add(at).cast()) });
            for j in 0..SUBS {
                let b = sb * SUBS + j;
                let nibbles =
                    unsafe { w.nibbles.as_ptr().add((group * blocks + b) * NIBBLE_BYTES) };
                let mut dots = [_mm512_setzero_si512(); T];
                for pair in 0..QUADS / 2 {
                    let v = unsafe { _mm512_loadu_si512(nibbles.add(pair * ROWS * 4).cast()) };
                    let lo = _mm512_and_si512(v, low);
                    let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(v), low);
                    for (t, dot) in dots.iter_mut().enumerate() {
                        let x0 = _mm512_set1_epi32(x.four(first + t, b, 2 * pair));
                        let x1 = _mm512_set1_epi32(x.four(first + t, b, 2 * pair + 1));
                        *dot = _mm512_dpbusd_epi32(*dot, lo, x0);
                        *dot = _mm512_dpbusd_epi32(*dot, hi, x1);
                    }
                }
                let at = (group * blocks + b) * ROWS;
                let widen = |bytes: &[u8]| {
                    let v = unsafe { _mm_loadu_si128(bytes.as_ptr().add(at).cast()) };
                    _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(v))
                };
                let scale = _mm512_mul_ps(d, widen(&w.scales));
                let min = _mm512_mul_ps(dmin, widen(&w.mins));
                for (t, (acc, dot)) in acc.iter_mut().zip(dots).enumerate() {
                    let at = (first + t) * blocks + b;
                    let s = _mm512_mul_ps(scale, _mm512_set1_ps(x.scales[at]));
                    *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), s, *acc);
                    *acc = _mm512_fnmadd_ps(min, _mm512_set1_ps(x.sums[at]), *acc);
                }
            }
        }
        for (t, acc) in acc.iter().enumerate() {
            unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(t * w.rows + group * ROWS), *acc) };
        }
    }

    /// `T` tokens x 16 outputs of one group with AVX2, 8 rows at a time.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn avx2<const T: usize>(
        w: &PackedQ4K,
        x: &Activations,
        first: usize,
        group: usize,
        out: &mut [f32],
    ) {
        let (blocks, supers) = (w.cols / BLOCK, w.cols / SUPER);
        let low = _mm256_set1_epi8(0xF);
        let ones = _mm256_set1_epi16(1);
        for half in 0..2 {
            let mut acc = [_mm256_setzero_ps(); T];
            for sb in 0..supers {
                let at = (group * supers + sb) * ROWS + half * 8;
                let d = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(w.d.as_ptr().add(at).cast()) });
                let dmin =
                    _mm256_cvtph_ps(unsafe { _mm_loadu_si128(w.dmin.as_ptr().add(at).cast()) });
                for j in 0..SUBS {
                    let b = sb * SUBS + j;
                    let nibbles = unsafe {
                        w.nibbles
                            .as_ptr()
                            .add((group * blocks + b) * NIBBLE_BYTES + half * 32)
                    };
                    let mut dots = [_mm256_setzero_si256(); T];
                    for pair in 0..QUADS / 2 {
                        let v = unsafe { _mm256_loadu_si256(nibbles.add(pair * ROWS * 4).cast()) };
                        let lo = _mm256_and_si256(v, low);
                        let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), low);
                        for (t, dot) in dots.iter_mut().enumerate() {
                            let x0 = _mm256_set1_epi32(x.four(first + t, b, 2 * pair));
                            let x1 = _mm256_set1_epi32(x.four(first + t, b, 2 * pair + 1));
                            let pairs = _mm256_add_epi16(
                                _mm256_maddubs_epi16(lo, x0),
                                _mm256_maddubs_epi16(hi, x1),
                            );
                            *dot = _mm256_add_epi32(*dot, _mm256_madd_epi16(pairs, ones));
                        }
                    }
                    let at = (group * blocks + b) * ROWS + half * 8;
                    let widen = |bytes: &[u8]| {
                        let v = unsafe { _mm_loadl_epi64(bytes.as_ptr().add(at).cast()) };
                        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v))
                    };
                    let scale = _mm256_mul_ps(d, widen(&w.scales));
                    let min = _mm256_mul_ps(dmin, widen(&w.mins));
                    for (t, (acc, dot)) in acc.iter_mut().zip(dots).enumerate() {
                        let at = (first + t) * blocks + b;
                        let s = _mm256_mul_ps(scale, _mm256_set1_ps(x.scales[at]));
                        *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), s, *acc);
                        *acc = _mm256_fnmadd_ps(min, _mm256_set1_ps(x.sums[at]), *acc);
                    }
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
        let (rows, cols) = (48, 512);
        let weight = Tensor::randn(0.3f32, 1.0, (rows, cols), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&weight, GgmlDType::Q4K).unwrap();
        let bytes = q.data().unwrap();
        let dense = q.dequantize(&Device::Cpu).unwrap();
        for kernel in kernels() {
            let packed = PackedQ4K::pack(&bytes, rows, cols, kernel).unwrap();
            let unpacked = Tensor::from_vec(packed.dequantize(), (rows, cols), &Device::Cpu);
            let diff = (unpacked.unwrap() - &dense).unwrap().abs().unwrap();
            assert_eq!(diff.max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
            for tokens in [1, 3, 4, 7, 70] {
                let x = Tensor::randn(0.2f32, 1.0, (tokens, cols), &Device::Cpu).unwrap();
                let want = x.matmul(&dense.t().unwrap()).unwrap();
                let mut got = vec![0f32; tokens * rows];
                let values = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                packed.matmul(&values, tokens, &mut got);
                let got = Tensor::from_vec(got, (tokens, rows), &Device::Cpu).unwrap();
                let error = (&got - &want).unwrap().sqr().unwrap().sum_all().unwrap();
                let size = want.sqr().unwrap().sum_all().unwrap();
                let relative =
                    (error.to_scalar::<f32>().unwrap() / size.to_scalar::<f32>().unwrap()).sqrt();
                assert!(relative < 1e-2, "{kernel:?} {tokens}: {relative}");
            }
        }
    }
}
