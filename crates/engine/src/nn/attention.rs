//! Scaled dot-product attention that never materialises the whole tokens x tokens matrix.
//!
//! A 1024x1024 SD image has 16,384 latent tokens in the first UNet block: the full score
//! matrix would be 16k x 16k floats per head (1 GiB each). We process the queries in chunks
//! so that the score block stays under a fixed budget, which bounds peak memory for any
//! image size while keeping the matmuls large enough to be efficient.

use candle_core::{DType, Result, Tensor};

/// Upper bound on the elements of one score block (batch x heads x chunk x keys): 64 Mi f32
/// values = 256 MiB.
const SCORE_BLOCK_ELEMENTS: usize = 64 * 1024 * 1024;

/// `softmax(q k^T * scale) v` for `q: (B, H, Nq, D)`, `k, v: (B, H, Nk, D)`.
///
/// The softmax is computed in f32 whatever the input dtype, and for f16 inputs the scores too
/// (as diffusers' `upcast_attention`): f16 overflows on large scores (SD 2.x's black images),
/// while bf16 has f32's range. The result has `q`'s dtype.
pub fn scaled_dot_product(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{D, Device};

    fn naive(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
        let scores = (q.matmul(&k.t()?)? * scale)?;
        candle_nn::ops::softmax(&scores, D::Minus1)?.matmul(v)
    }

    #[test]
    fn chunked_matches_naive() -> Result<()> {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1., (2, 3, 37, 8), &dev)?;
        let k = Tensor::randn(0f32, 1., (2, 3, 11, 8), &dev)?;
        let v = Tensor::randn(0f32, 1., (2, 3, 11, 8), &dev)?;
        let expected = naive(&q, &k, &v, 0.35)?;
        let got = scaled_dot_product(&q, &k, &v, 0.35)?;
        let diff = (expected - got)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "diff {diff}");
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
