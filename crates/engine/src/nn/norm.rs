//! GroupNorm followed by SiLU in one pass, as every ResNet block and both model outputs use;
//! GroupNorm alone the same way.
//!
//! candle computes this as about eight tensor ops (mean, centre, square, mean, divide,
//! affine, then SiLU's exp and divide), each reading and writing the whole activation. Here
//! each group is read twice (statistics) and written once, in parallel over groups, with a
//! vectorisable exp. Off the CPU/f32 path it falls back to candle's ops.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Module, Result, Shape, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use super::layers::{self, GroupNorm};
use super::math::silu;

pub struct GroupNormSilu {
    norm: GroupNorm,
}

impl GroupNormSilu {
    pub fn new(groups: usize, channels: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm: layers::group_norm(groups, channels, eps, vb)?,
        })
    }

    /// candle's composition of the same two steps, for comparison and for other devices.
    pub fn forward_candle(&self, x: &Tensor) -> Result<Tensor> {
        self.norm.forward_candle(x)?.silu()
    }
}

impl GroupNormSilu {
    /// For `x` (batch, channels, ...) f32 on the CPU, the `(scale, shift)` per image and
    /// channel (`batch x channels`) that make this layer `silu(x scale + shift)`
    /// ([`silu_affine`]); `None` where [`Module::forward`] would not run the fused kernel.
    pub fn affine(&self, x: &Tensor) -> Result<Option<Vec<(f32, f32)>>> {
        let Some(params) = Params::for_cpu(&self.norm, x)? else {
            return Ok(None);
        };
        let channels = x.dim(1)?;
        params.check(channels)?;
        let per_channel: usize = x.dims()[2..].iter().product();
        let per_group = channels / params.groups * per_channel;
        let affine = super::cpu_f32(x, |data| {
            data.par_chunks(per_group)
                .enumerate()
                .flat_map_iter(|(index, src)| {
                    let group = params.group(index, channels, per_channel);
                    let (mean, rstd) = group.statistics(src);
                    (0..group.weight.len()).map(move |c| group.affine(c, mean, rstd))
                })
                .collect()
        });
        affine.transpose()
    }
}

impl Module for GroupNormSilu {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match fused(&self.norm, x, true)? {
            Some(y) => Ok(y),
            None => self.forward_candle(x),
        }
    }
}

/// `norm` of `x`, then SiLU where `silu`, in one pass on the CPU in f32 (rank 3 or more);
/// `None` elsewhere, for candle's ops. [`GroupNorm`] itself takes it without SiLU (a
/// transformer's input norm, the VAE attention's).
pub fn fused(norm: &GroupNorm, x: &Tensor, silu: bool) -> Result<Option<Tensor>> {
    let Some(params) = Params::for_cpu(norm, x)? else {
        return Ok(None);
    };
    let op = FusedOp { params, silu };
    x.contiguous()?.apply_op1_no_bwd(&op).map(Some)
}

/// A group norm's parameters in f32, for the CPU kernels here.
struct Params {
    groups: usize,
    eps: f32,
    weight: Vec<f32>,
    bias: Vec<f32>,
}

impl Params {
    /// `norm`'s parameters where `x` takes the CPU kernels: f32 on the CPU, rank 3 or more.
    fn for_cpu(norm: &GroupNorm, x: &Tensor) -> Result<Option<Self>> {
        if !super::own_kernels(x.device()) || x.dtype() != DType::F32 || x.rank() < 3 {
            return Ok(None);
        }
        let values = |t: &Tensor| t.to_dtype(DType::F32)?.to_vec1::<f32>();
        Ok(Some(Self {
            groups: norm.groups(),
            eps: norm.eps() as f32,
            weight: values(norm.weight())?,
            bias: values(norm.bias())?,
        }))
    }

    /// Whether an input of `channels` fits these parameters.
    fn check(&self, channels: usize) -> Result<()> {
        if !channels.is_multiple_of(self.groups) || self.weight.len() != channels {
            candle_core::bail!(
                "group-norm-silu: {channels} channels, {} groups",
                self.groups
            );
        }
        Ok(())
    }

    /// The `index`-th group of an input's `(image, group)` chunks, `channels` channels of
    /// `per_channel` values each.
    fn group(&self, index: usize, channels: usize, per_channel: usize) -> Group<'_> {
        let width = channels / self.groups;
        let first = (index % self.groups) * width;
        Group {
            weight: &self.weight[first..first + width],
            bias: &self.bias[first..first + width],
            eps: self.eps,
            per_channel,
        }
    }
}

struct FusedOp {
    params: Params,
    silu: bool,
}

impl CustomOp1 for FusedOp {
    fn name(&self) -> &'static str {
        "group-norm-silu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!(
                "group-norm-silu takes f32, got {:?}",
                candle_core::backend::BackendStorage::dtype(storage)
            );
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("group-norm-silu needs a contiguous input");
        };
        let input = &data[start..end];
        let dims = layout.dims();
        let channels = dims[1];
        self.params.check(channels)?;
        let per_channel: usize = dims[2..].iter().product();
        let per_group = channels / self.params.groups * per_channel;
        let out = super::buffers::par_filled(input.len(), per_group, |index, dst| {
            let src = &input[index * per_group..][..dst.len()];
            let group = self.params.group(index, channels, per_channel);
            match self.silu {
                true => group.normalize_widest::<true>(src, dst),
                false => group.normalize_widest::<false>(src, dst),
            }
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

struct Group<'a> {
    weight: &'a [f32],
    bias: &'a [f32],
    eps: f32,
    per_channel: usize,
}

impl Group<'_> {
    /// [`Group::normalize`] built for AVX-512 or AVX2+FMA where the CPU has them (the x86-64
    /// baseline runs the loops, SiLU's exp among them, four lanes at a time); the same sums.
    fn normalize_widest<const SILU: bool>(&self, src: &[f32], dst: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            if super::math::has_avx512() {
                // SAFETY: the CPU has the features the copy is built for.
                #[allow(unsafe_code)]
                return unsafe { self.normalize_avx512::<SILU>(src, dst) };
            }
            if super::math::has_avx2_fma() {
                // SAFETY: as above.
                #[allow(unsafe_code)]
                return unsafe { self.normalize_avx2::<SILU>(src, dst) };
            }
        }
        self.normalize::<SILU>(src, dst)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512dq,avx512vl,avx2,fma")]
    fn normalize_avx512<const SILU: bool>(&self, src: &[f32], dst: &mut [f32]) {
        self.normalize::<SILU>(src, dst)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn normalize_avx2<const SILU: bool>(&self, src: &[f32], dst: &mut [f32]) {
        self.normalize::<SILU>(src, dst)
    }

    /// `dst = group_norm(src)` for the group's values `src`, through SiLU where `SILU`.
    #[inline(always)]
    fn normalize<const SILU: bool>(&self, src: &[f32], dst: &mut [f32]) {
        let (mean, rstd) = statistics(src, self.eps);
        for (c, (d, s)) in dst
            .chunks_mut(self.per_channel)
            .zip(src.chunks(self.per_channel))
            .enumerate()
        {
            let (scale, shift) = self.affine(c, mean, rstd);
            affine_row::<SILU>(s, d, scale, shift);
        }
    }

    /// The group's mean and reciprocal standard deviation, on the widest vectors this CPU has
    /// (the sums are the same on each: their lanes are explicit).
    fn statistics(&self, src: &[f32]) -> (f32, f32) {
        #[cfg(target_arch = "x86_64")]
        {
            if super::math::has_avx512() {
                #[allow(unsafe_code)]
                return unsafe { statistics_avx512(src, self.eps) };
            }
            if super::math::has_avx2_fma() {
                #[allow(unsafe_code)]
                return unsafe { statistics_avx2(src, self.eps) };
            }
        }
        statistics(src, self.eps)
    }

    /// Channel `c`'s `(scale, shift)` for the group's `mean` and `rstd`.
    #[inline(always)]
    fn affine(&self, c: usize, mean: f32, rstd: f32) -> (f32, f32) {
        let scale = rstd * self.weight[c];
        (scale, self.bias[c] - mean * scale)
    }
}

/// `dst = x scale + shift` (then SiLU) for each `x` of `src`: one channel of a group norm.
#[inline(always)]
fn affine_row<const SILU: bool>(src: &[f32], dst: &mut [f32], scale: f32, shift: f32) {
    for (d, &s) in dst.iter_mut().zip(src) {
        let normed = s * scale + shift;
        *d = if SILU { silu(normed) } else { normed };
    }
}

/// `dst = silu(x scale + shift)` for each `x` of `src`, exactly as [`GroupNormSilu`] computes
/// a channel with the `(scale, shift)` of [`GroupNormSilu::affine`]: for a convolution that
/// normalizes its input rows as it reads them ([`super::winograd::Fused`]).
pub fn silu_affine(src: &[f32], dst: &mut [f32], scale: f32, shift: f32) {
    #[cfg(target_arch = "x86_64")]
    {
        if super::math::has_avx512() {
            #[allow(unsafe_code)]
            return unsafe { silu_affine_avx512(src, dst, scale, shift) };
        }
        if super::math::has_avx2_fma() {
            #[allow(unsafe_code)]
            return unsafe { silu_affine_avx2(src, dst, scale, shift) };
        }
    }
    affine_row::<true>(src, dst, scale, shift)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512vl,avx2,fma")]
fn silu_affine_avx512(src: &[f32], dst: &mut [f32], scale: f32, shift: f32) {
    affine_row::<true>(src, dst, scale, shift)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn silu_affine_avx2(src: &[f32], dst: &mut [f32], scale: f32, shift: f32) {
    affine_row::<true>(src, dst, scale, shift)
}

/// LayerNorm of one row: `dst = (src - mean) rstd weight + bias`, the statistics two-pass as
/// a group's (candle's one pass over values and squares lost the variance of rows far from
/// zero), on the widest vectors this CPU has (the same sums on each).
pub fn layer_norm_row(src: &[f32], dst: &mut [f32], weight: &[f32], bias: &[f32], eps: f32) {
    #[cfg(target_arch = "x86_64")]
    {
        if super::math::has_avx512() {
            // SAFETY: the CPU has the features the copy is built for.
            #[allow(unsafe_code)]
            return unsafe { layer_norm_row_avx512(src, dst, weight, bias, eps) };
        }
        if super::math::has_avx2_fma() {
            // SAFETY: as above.
            #[allow(unsafe_code)]
            return unsafe { layer_norm_row_avx2(src, dst, weight, bias, eps) };
        }
    }
    layer_norm_row_with(src, dst, weight, bias, eps)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512vl,avx2,fma")]
fn layer_norm_row_avx512(src: &[f32], dst: &mut [f32], weight: &[f32], bias: &[f32], eps: f32) {
    layer_norm_row_with(src, dst, weight, bias, eps)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn layer_norm_row_avx2(src: &[f32], dst: &mut [f32], weight: &[f32], bias: &[f32], eps: f32) {
    layer_norm_row_with(src, dst, weight, bias, eps)
}

#[inline(always)]
fn layer_norm_row_with(src: &[f32], dst: &mut [f32], weight: &[f32], bias: &[f32], eps: f32) {
    let (mean, rstd) = statistics(src, eps);
    for (d, ((&s, &w), &b)) in dst.iter_mut().zip(src.iter().zip(weight).zip(bias)) {
        *d = (s - mean) * rstd * w + b;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512vl,avx2,fma")]
fn statistics_avx512(x: &[f32], eps: f32) -> (f32, f32) {
    statistics(x, eps)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn statistics_avx2(x: &[f32], eps: f32) -> (f32, f32) {
    statistics(x, eps)
}

/// Values of a block of [`statistics`]: 16 KB, read twice from L1.
const STATISTICS_BLOCK: usize = 4096;

/// The mean and `1 / sqrt(variance + eps)` of `x`, two passes over each block of
/// [`STATISTICS_BLOCK`] values (its sum, then its squared deviations from its own mean),
/// the blocks combined in f64 (Chan, Golub and LeVeque's pairwise update). Two passes over
/// the whole of `x` read a group at 1024x1024 (16 MiB) from memory twice, where this reads it
/// once. A row of one block (a LayerNorm's) gets the plain two-pass values. Each sum in 16
/// lanes, so that the loops vectorise.
#[inline(always)]
fn statistics(x: &[f32], eps: f32) -> (f32, f32) {
    let (mut count, mut mean, mut squares) = (0f64, 0f64, 0f64);
    for block in x.chunks(STATISTICS_BLOCK) {
        let n = block.len() as f64;
        let block_mean = lane_sum(block, |v| v) / n;
        let rounded = block_mean as f32;
        let block_squares = lane_sum(block, |v| (v - rounded) * (v - rounded));
        if count == 0.0 {
            (count, mean, squares) = (n, block_mean, block_squares);
            continue;
        }
        let total = count + n;
        let delta = block_mean - mean;
        mean += delta * n / total;
        squares += block_squares + delta * delta * count * n / total;
        count = total;
    }
    let variance = squares / count.max(1.0);
    (mean as f32, (1.0 / (variance + eps as f64).sqrt()) as f32)
}

/// The sum of `f` over `x` (at most [`STATISTICS_BLOCK`] values, so that the f32 lanes'
/// rounding stays at f64-like levels) in explicit lanes, the same on every vector width.
#[inline(always)]
fn lane_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    const LANES: usize = 16;
    let mut acc = [0f32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a += f(v);
        }
    }
    let rest = chunks.remainder().iter().map(|&v| f(v) as f64).sum::<f64>();
    rest + acc.iter().map(|&a| a as f64).sum::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn fused_matches_candle_group_norm_with_and_without_silu() -> Result<()> {
        // Non-trivial affine parameters, and an offset so that the mean matters.
        let tensors = std::collections::HashMap::from([
            (
                "weight".to_string(),
                Tensor::randn(1f32, 0.5, 12, &Device::Cpu)?,
            ),
            (
                "bias".to_string(),
                Tensor::randn(0f32, 0.5, 12, &Device::Cpu)?,
            ),
        ]);
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        let norm = GroupNormSilu::new(4, 12, 1e-6, vb)?;
        let x = (Tensor::randn(0f32, 3., (2, 12, 9, 7), &Device::Cpu)? + 5.0)?;
        let expected = norm.forward_candle(&x)?;
        let got = norm.forward(&x)?;
        let diff = (expected - got)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "max diff {diff}");
        // The group norm alone, as a transformer's input norm takes it.
        let expected = norm.norm.forward_candle(&x)?;
        let got = norm.norm.forward(&x)?;
        let diff = (expected - got)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "group norm alone: max diff {diff}");
        Ok(())
    }

    /// A group of many blocks, some not whole, far from zero: the blocks' combined mean and
    /// deviation are an f64 computation's to f32 precision; one block's are the plain
    /// two-pass ones.
    #[test]
    fn statistics_combine_blocks_as_one_pass_in_f64_would() -> Result<()> {
        let eps = 1e-6;
        for (len, offset) in [
            (5 * STATISTICS_BLOCK + 123, 1000f32),
            (40_000, -3.0),
            (77, 2.0),
        ] {
            let x = (Tensor::randn(0f32, 2., len, &Device::Cpu)? + offset as f64)?;
            let x = x.to_vec1::<f32>()?;
            let n = len as f64;
            let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
            let variance = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
            let rstd = 1.0 / (variance + eps as f64).sqrt();
            let (got_mean, got_rstd) = statistics(&x, eps);
            assert!(
                (got_mean as f64 - mean).abs() <= 1e-6 * mean.abs().max(1.0),
                "{len} values: mean {got_mean}, want {mean}"
            );
            assert!(
                (got_rstd as f64 - rstd).abs() <= 1e-6 * rstd,
                "{len} values: rstd {got_rstd}, want {rstd}"
            );
        }
        // One block: the mean of the sum, the squares about it.
        let row: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin() + 4.0).collect();
        let mean = (lane_sum(&row, |v| v) / 1000.0) as f32;
        let variance = lane_sum(&row, |v| (v - mean) * (v - mean)) / 1000.0;
        let rstd = (1.0 / (variance + eps as f64).sqrt()) as f32;
        assert_eq!(statistics(&row, eps), (mean, rstd));
        Ok(())
    }
}
