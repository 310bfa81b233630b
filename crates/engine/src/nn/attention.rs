//! Scaled dot-product attention that never materialises the whole tokens x tokens matrix.
//!
//! A 1024x1024 SD image has 16,384 latent tokens in the first UNet block: the full score
//! matrix would be 16k x 16k floats per head (1 GiB each). We process the queries in chunks
//! so that the score block stays under a fixed budget, which bounds peak memory for any
//! image size while keeping the matmuls large enough to be efficient.
//!
//! On CPU in f32 the whole thing is one kernel ([`FusedCpu`]): per (batch, head, block of
//! 64 queries) one GEMM for the scores with the scale folded in, a softmax in place with a
//! vectorised exp, one GEMM into the output. Q, K and V are read through their strides (the
//! heads are transposed views of the projections), so nothing is copied, and the score
//! block is 64 rows of one head, a few MiB at most.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::gemm;
use super::math::{exp, exp_fused};

/// Attention for the short sequences of text encoders, with an additive `bias` on the scores
/// (a causal mask, T5's position bias) that broadcasts to `(B, H, T, T)`, the heads in any
/// layout (e.g. transposed views of the projections):
/// `softmax(q k^T * scale + bias) v` for `(B, H, T, D)` inputs, the scores and the softmax in
/// f32 whatever the inputs' dtype (as transformers computes them, so f16 stays stable), the
/// result `(B, T, H * D)` in the inputs' dtype. On CPU in f32 this is the fused kernel with the
/// bias added to each block of scores; elsewhere the whole score matrix is formed (with at
/// most a few hundred tokens it is small).
pub fn with_bias(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, bias: &Tensor) -> Result<Tensor> {
    let (batch, heads, tokens, head_dim) = q.dims4()?;
    let keys = k.dim(2)?;
    let on_cpu_f32 = [q, k, v, bias]
        .iter()
        .all(|t| super::own_kernels(t.device()) && t.dtype() == DType::F32);
    let out = if on_cpu_f32 {
        let bias = bias.broadcast_as((batch, heads, tokens, keys))?;
        q.apply_op3_no_bwd(
            k,
            v,
            &FusedCpu {
                scale: scale as f32,
                bias: Some(bias),
                tiles: false,
            },
        )?
    } else {
        let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
        let scores = (q.matmul(&k.t()?)?.to_dtype(DType::F32)? * scale)?.broadcast_add(bias)?;
        let weights = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(q.dtype())?;
        weights.matmul(&v)?
    };
    out.transpose(1, 2)?
        .reshape((batch, tokens, heads * head_dim))
}

/// The causal mask of the text encoders' [`with_bias`]: `(T, T)` f32, 0 on and below the
/// diagonal, -inf above it, so a token attends to itself and earlier tokens only.
pub fn causal_mask(tokens: usize, device: &candle_core::Device) -> Result<Tensor> {
    let values: Vec<f32> = (0..tokens)
        .flat_map(|i| (0..tokens).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(values, (tokens, tokens), device)
}

/// Upper bound on the elements of one score block (batch x heads x chunk x keys): 64 Mi f32
/// values = 256 MiB.
const SCORE_BLOCK_ELEMENTS: usize = 64 * 1024 * 1024;

/// `softmax(q k^T * scale) v` for `q: (B, H, Nq, D)`, `k, v: (B, H, Nk, D)`.
///
/// The softmax is computed in f32 whatever the input dtype, and for f16 inputs the scores too
/// (as diffusers' `upcast_attention`): f16 overflows on large scores (SD 2.x's black images),
/// while bf16 has f32's range. The result has `q`'s dtype.
pub fn scaled_dot_product(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    attention(q, k, v, scale, false)
}

/// [`scaled_dot_product`] for a bf16 model: on a CPU with AVX512-BF16, f32 q, k and v are rounded to
/// bf16 for the two products, which run in bf16 ([`super::tiled_attention`]), as PyTorch
/// computes a bf16 model's attention there; elsewhere as [`scaled_dot_product`].
pub fn scaled_dot_product_bf16(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    attention(q, k, v, scale, super::tiles::available())
}

/// The attention of a model whose projections hold weights of `weights`' dtype:
/// [`scaled_dot_product_bf16`] for a bf16 one, [`scaled_dot_product`] otherwise.
pub fn scaled_dot_product_for(
    weights: Option<DType>,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
) -> Result<Tensor> {
    match weights {
        Some(DType::BF16) => scaled_dot_product_bf16(q, k, v, scale),
        _ => scaled_dot_product(q, k, v, scale),
    }
}

/// The fused CPU kernel for f32 operands on the CPU (its products in bf16 with `tiles`),
/// the chunked candle version elsewhere.
fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, tiles: bool) -> Result<Tensor> {
    let on_cpu_f32 = [q, k, v]
        .iter()
        .all(|t| super::own_kernels(t.device()) && t.dtype() == DType::F32);
    if on_cpu_f32 {
        let op = FusedCpu {
            scale: scale as f32,
            bias: None,
            tiles,
        };
        return q.apply_op3_no_bwd(k, v, &op);
    }
    chunked(q, k, v, scale)
}

/// The portable version: candle ops on query chunks.
fn chunked(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let (batch, heads, queries, _) = q.dims4()?;
    let keys = k.dim(2)?;
    let per_query = (batch * heads * keys).max(1);
    let chunk = (SCORE_BLOCK_ELEMENTS / per_query).clamp(1, queries.max(1));
    let k_t = k.transpose(2, 3)?.contiguous()?;
    let v = v.contiguous()?;
    let mut outputs = Vec::with_capacity(queries.div_ceil(chunk));
    let mut start = 0;
    while start < queries {
        let len = chunk.min(queries - start);
        let q_chunk = q.narrow(2, start, len)?.contiguous()?;
        outputs.push(attend(&q_chunk, &k_t, &v, scale)?);
        start += len;
    }
    if outputs.len() == 1 {
        return Ok(outputs.remove(0));
    }
    Tensor::cat(&outputs, 2)
}

fn attend(q: &Tensor, k_t: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let dtype = q.dtype();
    let scores = if dtype == DType::F16 {
        q.to_dtype(DType::F32)?.matmul(&k_t.to_dtype(DType::F32)?)?
    } else {
        q.matmul(k_t)?.to_dtype(DType::F32)?
    };
    let scores = (scores * scale)?;
    let weights = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(dtype)?;
    weights.matmul(v)
}

/// Queries per task of the CPU kernel: the gemm crate packs the head's keys and values again
/// for every block, as many elements as a block's products have multiply-adds divided by its
/// queries, whatever the keys' count and width; its scores take 1 KiB per key (16 MiB at the
/// SDXL VAE's 16384 tokens at 1024x1024). Intel Xeon (AVX-512), 2 threads: 10 heads of 4096
/// tokens of 64, 64 queries 216 ms, 256 queries 181-189 ms (PyTorch's flash kernel 188 ms);
/// one head of 16384 tokens of 512, 64 queries 2.98 s, 128 2.37 s, 256 2.07 s, 512 1.98 s.
const QUERY_BLOCK: usize = 256;

struct FusedCpu {
    scale: f32,
    /// Added to the scores before the softmax: `(B, H, Nq, Nk)`, any strides (broadcast).
    bias: Option<Tensor>,
    /// Products in bf16 ([`super::tiles`], no bias).
    tiles: bool,
}

/// A strided 4-D f32 view: (batch, heads, tokens, dim).
struct View<'a> {
    data: &'a [f32],
    dims: [usize; 4],
    strides: [usize; 4],
}

impl<'a> View<'a> {
    fn new(storage: &'a CpuStorage, layout: &Layout) -> Result<Self> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!(
                "attention takes f32, got {:?}",
                candle_core::backend::BackendStorage::dtype(storage)
            );
        };
        let (dims, strides) = (layout.dims(), layout.stride());
        if dims.len() != 4 {
            candle_core::bail!("attention takes (batch, heads, tokens, dim), got {dims:?}");
        }
        Ok(Self {
            data: &data[layout.start_offset()..],
            dims: [dims[0], dims[1], dims[2], dims[3]],
            strides: [strides[0], strides[1], strides[2], strides[3]],
        })
    }

    /// Tokens `first..first + count` of head (b, h) as a (count x dim) matrix.
    fn tokens(&self, b: usize, h: usize, first: usize, count: usize) -> gemm::View<'a> {
        let [_, _, tokens, dim] = self.dims;
        assert!(first + count <= tokens);
        let start = b * self.strides[0] + h * self.strides[1] + first * self.strides[2];
        gemm::View {
            data: &self.data[start.min(self.data.len())..],
            rows: count,
            cols: dim,
            row_stride: self.strides[2],
            col_stride: self.strides[3],
        }
    }
}

/// The kernel's inputs, checked to agree in shape.
struct Operands<'a> {
    q: View<'a>,
    k: View<'a>,
    v: View<'a>,
    bias: Option<View<'a>>,
}

impl CustomOp3 for FusedCpu {
    fn name(&self) -> &'static str {
        "attention"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        q_l: &Layout,
        k: &CpuStorage,
        k_l: &Layout,
        v: &CpuStorage,
        v_l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (q, k, v) = (View::new(q, q_l)?, View::new(k, k_l)?, View::new(v, v_l)?);
        let [batch, heads, queries, dim] = q.dims;
        let keys = k.dims[2];
        let dim_v = v.dims[3];
        if k.dims != [batch, heads, keys, dim] || v.dims != [batch, heads, keys, dim_v] {
            candle_core::bail!(
                "attention shapes q {:?} k {:?} v {:?}",
                q.dims,
                k.dims,
                v.dims
            );
        }
        let mut out = super::buffers::zeros::<f32>(batch * heads * queries * dim_v);
        if out.is_empty() {
            return Ok((CpuStorage::F32(out), Shape::from(&q.dims)));
        }
        let bias_storage = self.bias.as_ref().map(|b| b.storage_and_layout());
        let bias = match &bias_storage {
            Some((storage, layout)) => {
                let candle_core::Storage::Cpu(storage) = &**storage else {
                    candle_core::bail!("attention: the bias is not on the CPU");
                };
                let bias = View::new(storage, layout)?;
                if bias.dims != [batch, heads, queries, keys] {
                    candle_core::bail!("attention bias {:?}", bias.dims);
                }
                Some(bias)
            }
            None => None,
        };
        if self.tiles && bias.is_none() {
            let head = |i: usize| super::tiled_attention::Head {
                q: q.tokens(i / heads, i % heads, 0, queries),
                k: k.tokens(i / heads, i % heads, 0, keys),
                v: v.tokens(i / heads, i % heads, 0, keys),
            };
            if super::tiled_attention::attend(batch * heads, head, self.scale, &mut out).is_some() {
                return Ok((
                    CpuStorage::F32(out),
                    Shape::from((batch, heads, queries, dim_v)),
                ));
            }
        }
        let operands = Operands { q, k, v, bias };
        let head_len = queries * dim_v;
        out.par_chunks_mut(head_len)
            .enumerate()
            .flat_map(|(bh, head)| {
                head.par_chunks_mut(QUERY_BLOCK * dim_v)
                    .enumerate()
                    .map(move |(block, rows)| (bh, block, rows))
            })
            .for_each_init(Vec::new, |scores, (bh, block, rows)| {
                let (b, h) = (bh / heads, bh % heads);
                let first = block * QUERY_BLOCK;
                let count = rows.len() / dim_v;
                scores.resize(count * keys, 0.0);
                self.block(&operands, (b, h, first, count), scores, rows);
            });
        Ok((
            CpuStorage::F32(out),
            Shape::from((batch, heads, queries, dim_v)),
        ))
    }
}

impl FusedCpu {
    /// Attention for `count` queries from `first` of head (b, h), into `rows` (count x dim_v).
    fn block(
        &self,
        Operands { q, k, v, bias }: &Operands,
        (b, h, first, count): (usize, usize, usize, usize),
        scores: &mut [f32],
        rows: &mut [f32],
    ) {
        let keys = k.dims[2];
        // scores = scale * Q[first..first+count] K^T, softmax row by row, then scores V.
        let queries = q.tokens(b, h, first, count);
        gemm::matmul(queries, k.tokens(b, h, 0, keys).t(), scores, self.scale);
        let bias = bias.as_ref().map(|bias| bias.tokens(b, h, first, count));
        for (r, row) in scores.chunks_mut(keys.max(1)).enumerate() {
            if let Some(bias) = &bias {
                let start = r * bias.row_stride;
                for (c, score) in row.iter_mut().enumerate() {
                    *score += bias.data[start + c * bias.col_stride];
                }
            }
            softmax_in_place(row, 1.0);
        }
        let weights = gemm::View::row_major(scores, count, keys, keys);
        gemm::matmul(weights, v.tokens(b, h, 0, keys), rows, 1.0);
    }
}

/// `row` replaced by `softmax(scale * row)` (`scale` > 0), compiled for the widest vectors
/// this CPU has: built for the x86-64 baseline the loops run four lanes at a time, and the
/// exps of a large image's attention (420M of them in an SD UNet call at 512x512) cost as
/// much as the products around them.
pub(super) fn softmax_in_place(row: &mut [f32], scale: f32) {
    #[cfg(target_arch = "x86_64")]
    {
        if super::math::has_avx512() {
            // SAFETY: the CPU has the features the copy is built for.
            #[allow(unsafe_code)]
            return unsafe { softmax_avx512(row, scale) };
        }
        if super::math::has_avx2_fma() {
            // SAFETY: as above.
            #[allow(unsafe_code)]
            return unsafe { softmax_avx2(row, scale) };
        }
    }
    softmax::<false>(row, scale)
}

/// `exp(scale (x - max))` of each value of `row` in place, `max` the row's largest; returns
/// their sum. The softmax without its division, for kernels that divide later.
pub(super) fn exponentials_in_place(row: &mut [f32], scale: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if super::math::has_avx512() {
            // SAFETY: the CPU has the features the copy is built for.
            #[allow(unsafe_code)]
            return unsafe { exponentials_avx512(row, scale) };
        }
        if super::math::has_avx2_fma() {
            // SAFETY: as above.
            #[allow(unsafe_code)]
            return unsafe { exponentials_avx2(row, scale) };
        }
    }
    exponentials::<false>(row, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512vl,avx2,fma")]
fn softmax_avx512(row: &mut [f32], scale: f32) {
    softmax::<true>(row, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn softmax_avx2(row: &mut [f32], scale: f32) {
    softmax::<true>(row, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512vl,avx2,fma")]
fn exponentials_avx512(row: &mut [f32], scale: f32) -> f32 {
    exponentials::<true>(row, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn exponentials_avx2(row: &mut [f32], scale: f32) -> f32 {
    exponentials::<true>(row, scale)
}

#[inline(always)]
fn softmax<const FUSED: bool>(row: &mut [f32], scale: f32) {
    let inverse = 1.0 / exponentials::<FUSED>(row, scale);
    for x in row.iter_mut() {
        *x *= inverse;
    }
}

/// Lanes the loops below keep apart, so that they vectorise: one AVX-512 register.
const LANES: usize = 16;

/// `FUSED`: the exponentials' multiply-adds fused ([`super::math::exp_fused`]), for the
/// copies built with FMA.
#[inline(always)]
fn exponentials<const FUSED: bool>(row: &mut [f32], scale: f32) -> f32 {
    let exp = |x: f32| if FUSED { exp_fused(x) } else { exp(x) };
    // The values past the last whole vector, padded with -inf (whose exponentials are 0) to a
    // vector of their own: one at a time, the exponentials of 13 of a text encoder's 77 keys
    // cost about three times the other 64 by their instructions (`exp` vectorises; lane by
    // lane it is a couple of dozen instructions a value).
    let (whole, tail) = row.split_at_mut(row.len() / LANES * LANES);
    let mut last = [f32::NEG_INFINITY; LANES];
    last[..tail.len()].copy_from_slice(tail);
    let padded = !tail.is_empty();
    let mut maxes = [f32::NEG_INFINITY; LANES];
    for chunk in whole.chunks_exact(LANES).chain(padded.then_some(&last[..])) {
        for (m, &x) in maxes.iter_mut().zip(chunk) {
            // One `vmaxps` a vector, where `f32::max`'s NaN rule adds a compare and a blend
            // (a NaN score makes the row NaN either way, through its exponential).
            *m = if x > *m { x } else { *m };
        }
    }
    let max = maxes.into_iter().fold(f32::NEG_INFINITY, f32::max);
    // One pass computes and sums them.
    let mut sums = [0f32; LANES];
    for chunk in whole
        .chunks_exact_mut(LANES)
        .chain(padded.then_some(&mut last[..]))
    {
        for (s, x) in sums.iter_mut().zip(chunk) {
            *x = exp((*x - max) * scale);
            *s += *x;
        }
    }
    tail.copy_from_slice(&last[..tail.len()]);
    sums.iter().sum::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{D, Device};

    fn naive(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
        let scores = (q.matmul(&k.t()?)? * scale)?;
        candle_nn::ops::softmax(&scores, D::Minus1)?.matmul(v)
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a - b)?.abs()?.max_all()?.to_scalar::<f32>()
    }

    #[test]
    fn chunked_matches_naive() -> Result<()> {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1., (2, 3, 37, 8), &dev)?;
        let k = Tensor::randn(0f32, 1., (2, 3, 11, 8), &dev)?;
        let v = Tensor::randn(0f32, 1., (2, 3, 11, 8), &dev)?;
        let diff = max_diff(&naive(&q, &k, &v, 0.35)?, &chunked(&q, &k, &v, 0.35)?)?;
        assert!(diff < 1e-5, "diff {diff}");
        Ok(())
    }

    /// The CPU kernel on heads that are transposed views (as the UNet passes them), with
    /// more queries than one block, a ragged last block, and a value width unlike the keys'.
    #[test]
    fn fused_cpu_matches_naive_on_strided_heads() -> Result<()> {
        let dev = Device::Cpu;
        let heads = |t: Tensor, d: usize| -> Result<Tensor> {
            let (b, n, _) = t.dims3()?;
            t.reshape((b, n, 3, d))?.transpose(1, 2)
        };
        let q = heads(Tensor::randn(0f32, 1., (2, 150, 24), &dev)?, 8)?;
        let k = heads(Tensor::randn(0f32, 1., (2, 21, 24), &dev)?, 8)?;
        let v = heads(Tensor::randn(0f32, 1., (2, 21, 15), &dev)?, 5)?;
        assert!(!q.is_contiguous());
        let expected = naive(&q.contiguous()?, &k.contiguous()?, &v.contiguous()?, 0.35)?;
        let got = scaled_dot_product(&q, &k, &v, 0.35)?;
        assert_eq!(got.dims(), &[2, 3, 150, 5]);
        let diff = max_diff(&expected, &got)?;
        assert!(diff < 1e-5, "diff {diff}");
        Ok(())
    }

    /// The fused kernel with a bias of either shape the text encoders pass (a causal `(T, T)`
    /// mask with -inf, a per-head `(1, H, T, T)` table) on transposed-view heads, against the
    /// whole-matrix computation on contiguous copies.
    #[test]
    fn with_bias_on_cpu_matches_the_whole_matrix() -> Result<()> {
        let dev = Device::Cpu;
        let heads = |t: Tensor| -> Result<Tensor> { t.reshape((2, 70, 3, 8))?.transpose(1, 2) };
        let (q, k, v) = (
            heads(Tensor::randn(0f32, 1., (2, 70, 24), &dev)?)?,
            heads(Tensor::randn(0f32, 1., (2, 70, 24), &dev)?)?,
            heads(Tensor::randn(0f32, 1., (2, 70, 24), &dev)?)?,
        );
        let causal: Vec<f32> = (0..70)
            .flat_map(|i| (0..70).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        let causal = Tensor::from_vec(causal, (70, 70), &dev)?;
        let table = Tensor::randn(0f32, 1., (1, 3, 70, 70), &dev)?;
        for bias in [causal, table] {
            let scores = (q.contiguous()?.matmul(&k.contiguous()?.t()?)? * 0.3)?;
            let weights = candle_nn::ops::softmax_last_dim(&scores.broadcast_add(&bias)?)?;
            let expected = weights
                .matmul(&v.contiguous()?)?
                .transpose(1, 2)?
                .reshape((2, 70, 24))?;
            let got = with_bias(&q, &k, &v, 0.3, &bias)?;
            let diff = max_diff(&expected, &got)?;
            assert!(diff < 1e-5, "diff {diff}");
        }
        Ok(())
    }

    /// Deterministic values in [-scale, scale].
    fn pattern(shape: (usize, usize, usize, usize), seed: f32, scale: f32) -> Result<Tensor> {
        let n = shape.0 * shape.1 * shape.2 * shape.3;
        let values: Vec<f32> = (0..n)
            .map(|i| (i as f32 * 0.37 + seed).sin() * scale)
            .collect();
        Tensor::from_vec(values, shape, &Device::Cpu)
    }

    #[test]
    fn half_precision_keeps_its_dtype_and_stays_close() -> Result<()> {
        let shape = (1, 2, 9, 8);
        let (q, k, v) = (
            pattern(shape, 0.1, 1.0)?,
            pattern(shape, 0.7, 1.0)?,
            pattern(shape, 1.3, 1.0)?,
        );
        let expected = naive(&q, &k, &v, 0.35)?;
        for dtype in [DType::F16, DType::BF16] {
            let (qh, kh, vh) = (q.to_dtype(dtype)?, k.to_dtype(dtype)?, v.to_dtype(dtype)?);
            let got = scaled_dot_product(&qh, &kh, &vh, 0.35)?;
            assert_eq!(got.dtype(), dtype);
            let diff = (&expected - got.to_dtype(DType::F32)?)?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?;
            assert!(diff < 0.05, "{dtype:?} diff {diff}");
        }
        Ok(())
    }

    /// Scores of 80,000 overflow f16 (max 65,504); computed in f32 they stay finite.
    #[test]
    fn f16_scores_do_not_overflow() -> Result<()> {
        let shape = (1, 1, 4, 8);
        let q = (Tensor::ones(shape, DType::F32, &Device::Cpu)? * 100.0)?;
        let v = pattern(shape, 0.5, 1.0)?;
        let expected = naive(&q, &q, &v, 1.0)?;
        let half = |t: &Tensor| t.to_dtype(DType::F16);
        let got =
            scaled_dot_product(&half(&q)?, &half(&q)?, &half(&v)?, 1.0)?.to_dtype(DType::F32)?;
        let values = got.flatten_all()?.to_vec1::<f32>()?;
        assert!(values.iter().all(|x| x.is_finite()), "{values:?}");
        let diff = (&expected - got)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 0.01, "diff {diff}");
        Ok(())
    }
}
