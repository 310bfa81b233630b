//! What the integer kernels ([`super::q8`], [`super::q4k`]) share: the CPU's kernel, the
//! activations rounded to 8 bits, and how a product is cut into work.
//!
//! A weight is repacked in groups of 16 rows: for each block of 32 columns, runs of 4 columns,
//! each run the 16 rows' 4 values side by side, so that one 64-byte load feeds one AVX-512
//! `vpdpbusd` (4 multiply-adds in each of 16 lanes) for 16 outputs, or two AVX2 registers.

use rayon::prelude::*;

/// Rows per group: one AVX-512 register of 32-bit lanes.
pub(super) const ROWS: usize = 16;
/// Values per block (a q8_0 block, a q4_K sub-block), with one scale each.
pub(super) const BLOCK: usize = 32;
/// Runs of 4 columns per block.
pub(super) const QUADS: usize = BLOCK / 4;
/// Tokens a worker takes at once: their quantized rows stay in its L2 cache while it walks
/// every group of the weight.
const TOKEN_CHUNK: usize = 64;

/// The integer kernel this CPU runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// AVX-512 with VNNI: 16 rows a register.
    Vnni512,
    /// AVX2 with FMA and F16C: 8 rows a register.
    Avx2,
}

impl Kernel {
    /// The best kernel this CPU has, if any.
    pub fn detect() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        {
            let has = |f: &str| match f {
                "avx512f" => crate::nn::math::has_avx512(),
                "avx512bw" => std::arch::is_x86_feature_detected!("avx512bw"),
                "avx512vnni" => std::arch::is_x86_feature_detected!("avx512vnni"),
                "avx2" => std::arch::is_x86_feature_detected!("avx2"),
                "fma" => std::arch::is_x86_feature_detected!("fma"),
                "f16c" => std::arch::is_x86_feature_detected!("f16c"),
                _ => false,
            };
            if ["avx512f", "avx512bw", "avx512vnni", "f16c"]
                .iter()
                .all(|f| has(f))
            {
                return Some(Self::Vnni512);
            }
            if ["avx2", "fma", "f16c"].iter().all(|f| has(f)) {
                return Some(Self::Avx2);
            }
        }
        None
    }
}

/// Activations rounded to q8_0: per token and block of 32, a scale and 32 integers (offset by
/// 128 where a kernel needs unsigned bytes), and the integers' sum times the scale.
#[derive(Debug)]
pub(super) struct Activations {
    pub(super) tokens: usize,
    pub(super) cols: usize,
    pub(super) quants: Vec<u8>,
    pub(super) scales: Vec<f32>,
    /// Per token and block, `scale x sum(integers)` (before any offset), for weights stored
    /// with an offset of their own (q4_K's minimums).
    pub(super) sums: Vec<f32>,
}

impl Activations {
    pub(super) fn quantize(x: &[f32], cols: usize, unsigned: bool) -> Self {
        let tokens = x.len() / cols;
        let blocks = cols / BLOCK;
        let mut quants = vec![0u8; x.len()];
        let mut scales = vec![0f32; tokens * blocks];
        let mut sums = vec![0f32; tokens * blocks];
        let offset = if unsigned { 128 } else { 0 };
        quants
            .par_chunks_mut(BLOCK)
            .zip(scales.par_iter_mut())
            .zip(sums.par_iter_mut())
            .zip(x.par_chunks(BLOCK))
            .for_each(|(((quants, scale), sum), x)| {
                let largest = x.iter().fold(0f32, |m, v| m.max(v.abs()));
                *scale = largest / 127.0;
                let inverse = if largest > 0.0 { 127.0 / largest } else { 0.0 };
                let mut total = 0i32;
                for (q, v) in quants.iter_mut().zip(x) {
                    let rounded = (v * inverse).round().clamp(-127.0, 127.0) as i32;
                    total += rounded;
                    *q = (rounded + offset) as u8;
                }
                *sum = *scale * total as f32;
            });
        Self {
            tokens,
            cols,
            quants,
            scales,
            sums,
        }
    }

    /// The 4 bytes of token `token`'s run `quad` of block `block`, as one 32-bit lane.
    #[inline(always)]
    pub(super) fn four(&self, token: usize, block: usize, quad: usize) -> i32 {
        let at = token * self.cols + block * BLOCK + quad * 4;
        let bytes = &self.quants[at..at + 4];
        i32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
    }
}

/// Runs `tile(first, count, group, out)` over a `rows`-wide product of `x`: chunks of tokens in
/// parallel, in each every group of 16 rows over tiles of up to 4 tokens, `out` starting at
/// the tile's first token's row (rows `rows` apart).
pub(super) fn drive(
    rows: usize,
    x: &Activations,
    out: &mut [f32],
    tile: impl Fn(usize, usize, usize, &mut [f32]) + Sync,
) {
    assert_eq!(out.len(), x.tokens * rows, "output size");
    out.par_chunks_mut(TOKEN_CHUNK * rows)
        .enumerate()
        .for_each(|(chunk, out)| {
            let first = chunk * TOKEN_CHUNK;
            let count = out.len() / rows;
            for group in 0..rows / ROWS {
                let mut done = 0;
                while done < count {
                    let take = (count - done).min(4);
                    tile(first + done, take, group, &mut out[done * rows..]);
                    done += take;
                }
            }
        });
}
