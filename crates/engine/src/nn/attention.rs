//! Scaled dot-product attention that never materialises the whole tokens x tokens matrix.
//!
//! A 1024x1024 SD image has 16,384 latent tokens in the first UNet block: the full score
//! matrix would be 16k x 16k floats per head (1 GiB each). We process the queries in chunks
//! so that the score block stays under a fixed budget, which bounds peak memory for any
//! image size while keeping the matmuls large enough to be efficient.

use candle_core::{Result, Tensor};

/// Upper bound on the elements of one score block (batch x heads x chunk x keys): 64 Mi f32
/// values = 256 MiB.
const SCORE_BLOCK_ELEMENTS: usize = 64 * 1024 * 1024;

/// `softmax(q k^T * scale) v` for `q: (B, H, Nq, D)`, `k, v: (B, H, Nk, D)`.
///
/// Scores and softmax are computed in f32 whatever the input dtype (as diffusers does with
/// `upcast_attention`, and as half precision needs for stability); the result has `q`'s dtype.
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
    let scores = (q.matmul(k_t)?.to_dtype(candle_core::DType::F32)? * scale)?;
    let weights = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(dtype)?;
    weights.matmul(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{D, DType, Device};

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
        assert_eq!(q.dtype(), DType::F32);
        Ok(())
    }
}
