//! Element-wise activations on CPU f32 tensors through the vectorisable functions of
//! [`super::math`], in parallel chunks: candle's CPU `gelu` and `silu` call libm's `tanh` and
//! `exp` one value at a time (measured on T5-XXL's 256 x 10240 gated GELU: 30 ms against
//! PyTorch's 4 ms).
//! Other devices and dtypes use candle's ops, which compute the same functions.

use candle_core::{CpuStorage, Result, Storage, Tensor};
use rayon::prelude::*;

use super::rounded::{Activations, Rounded};
use super::{cpu_f32, math};

/// Values per parallel task: large enough to amortise the task, small enough to share out.
const CHUNK: usize = 1 << 14;

/// GELU, tanh approximation (PyTorch's `approximate="tanh"`).
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    mapped(x, math::gelu_tanh, |x| x.gelu())
}

/// Exact GELU (PyTorch's default; CLIP's `gelu`).
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    mapped(x, math::gelu_erf, |x| x.gelu_erf())
}

/// CLIP's `quick_gelu`, `x sigmoid(1.702 x)`.
pub fn quick_gelu(x: &Tensor) -> Result<Tensor> {
    mapped(x, math::quick_gelu, quick_gelu_candle)
}

fn quick_gelu_candle(x: &Tensor) -> Result<Tensor> {
    x * candle_nn::ops::sigmoid(&(x * 1.702)?)?
}

/// [`gelu_erf`] as rows rounded to bf16 when `rounded` (for the linear layer that
/// [takes them](super::layers::Linear::takes_rounded)) and `x` is f32 on the CPU: CLIP's
/// MLP, where the activation's output is read only by the second linear layer, which would
/// round a copy of it.
pub fn gelu_erf_as(x: &Tensor, rounded: bool) -> Result<Activations> {
    mapped_as(x, math::gelu_erf, |x| x.gelu_erf(), rounded)
}

/// [`gelu_tanh`] as [`gelu_erf_as`] gives [`gelu_erf`].
pub fn gelu_tanh_as(x: &Tensor, rounded: bool) -> Result<Activations> {
    mapped_as(x, math::gelu_tanh, |x| x.gelu(), rounded)
}

/// [`quick_gelu`] as [`gelu_erf_as`] gives [`gelu_erf`].
pub fn quick_gelu_as(x: &Tensor, rounded: bool) -> Result<Activations> {
    mapped_as(x, math::quick_gelu, quick_gelu_candle, rounded)
}

/// `gelu_tanh(gate) * value` in one pass (T5's gated feed-forward), for same-shaped inputs.
pub fn gelu_tanh_mul(gate: &Tensor, value: &Tensor) -> Result<Tensor> {
    gated(gate, value, math::gelu_tanh, |gate| gate.gelu(), false)?.to_tensor()
}

/// `gelu_erf(gate) * value` in one pass (SD's GEGLU feed-forward).
pub fn gelu_erf_mul(gate: &Tensor, value: &Tensor) -> Result<Tensor> {
    gelu_erf_mul_as(gate, value, false)?.to_tensor()
}

/// [`gelu_erf_mul`] as rows rounded to bf16 when `rounded` (for the linear layer that
/// [takes them](super::layers::Linear::takes_rounded)) and the inputs are f32 CPU rows.
pub fn gelu_erf_mul_as(gate: &Tensor, value: &Tensor, rounded: bool) -> Result<Activations> {
    gated(gate, value, math::gelu_erf, |gate| gate.gelu_erf(), rounded)
}

/// `silu(gate) * value` in one pass (SwiGLU: Qwen3's and Z-Image's feed-forward).
pub fn silu_mul(gate: &Tensor, value: &Tensor) -> Result<Tensor> {
    gated(gate, value, math::silu, |gate| gate.silu(), false)?.to_tensor()
}

/// `activation` of every value on CPU f32, in parallel chunks built for the widest vectors;
/// elsewhere candle's `fallback`.
fn mapped<F: Fn(f32) -> f32 + Copy + Sync>(
    x: &Tensor,
    activation: F,
    fallback: fn(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    match cpu_f32(x, |x| {
        let mut out = x.to_vec();
        out.par_chunks_mut(CHUNK)
            .for_each(|out| widest(out, |o: &mut f32, _: f32| *o = activation(*o)));
        out
    }) {
        Some(out) => Tensor::from_vec(out?, x.shape(), x.device()),
        None => fallback(x),
    }
}

/// [`mapped`], or rows rounded to bf16 as each is made where `rounded` and `x` is CPU f32 rows.
fn mapped_as<F: Fn(f32) -> f32 + Copy + Sync>(
    x: &Tensor,
    activation: F,
    fallback: fn(&Tensor) -> Result<Tensor>,
    rounded: bool,
) -> Result<Activations> {
    let cols = x.dims().last().copied().unwrap_or(0);
    if rounded && cols > 0 {
        let rows = cpu_f32(x, |values| {
            Rounded::from_f32_rows(values.len() / cols, cols, |r, out| {
                out.copy_from_slice(&values[r * cols..][..cols]);
                widest(out, |o: &mut f32, _: f32| *o = activation(*o));
            })
        });
        if let Some(rows) = rows {
            let dims = x.dims().to_vec();
            return Ok(Activations::Rounded { rows: rows?, dims });
        }
    }
    mapped(x, activation, fallback).map(Activations::Tensor)
}

/// `update(o, o)` for every value, compiled for AVX-512 or AVX2+FMA where the CPU has them:
/// the activations inline into the loop, which the x86-64 baseline would run four lanes at a
/// time.
#[inline(always)]
fn widest<F: Fn(&mut f32, f32) + Copy>(out: &mut [f32], update: F) {
    widest_with(out, None, update)
}

/// `update(o, other[i])` for every value `o` of `out` (`other` as long), or `update(o, o)`
/// without `other`, built as [`widest`] is.
#[inline(always)]
fn widest_with<F: Fn(&mut f32, f32) + Copy>(out: &mut [f32], other: Option<&[f32]>, update: F) {
    #[cfg(target_arch = "x86_64")]
    {
        if math::has_avx512() {
            // SAFETY: the CPU has the features the copy is built for.
            #[allow(unsafe_code)]
            return unsafe { each_avx512(out, other, update) };
        }
        if math::has_avx2_fma() {
            // SAFETY: as above.
            #[allow(unsafe_code)]
            return unsafe { each_avx2(out, other, update) };
        }
    }
    each(out, other, update)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512vl,avx2,fma")]
fn each_avx512<F: Fn(&mut f32, f32) + Copy>(out: &mut [f32], other: Option<&[f32]>, update: F) {
    each(out, other, update)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn each_avx2<F: Fn(&mut f32, f32) + Copy>(out: &mut [f32], other: Option<&[f32]>, update: F) {
    each(out, other, update)
}

#[inline(always)]
fn each<F: Fn(&mut f32, f32) + Copy>(out: &mut [f32], other: Option<&[f32]>, update: F) {
    match other {
        Some(other) => {
            for (o, &x) in out.iter_mut().zip(other) {
                update(o, x);
            }
        }
        None => {
            for o in out.iter_mut() {
                update(o, *o);
            }
        }
    }
}

/// `activation(gate) * value` on CPU f32 through the vectorisable `activation`, as rows
/// rounded to bf16 when `rounded` and both are rows; elsewhere through candle's `fallback`.
fn gated<F: Fn(f32) -> f32 + Copy + Sync>(
    gate: &Tensor,
    value: &Tensor,
    activation: F,
    fallback: fn(&Tensor) -> Result<Tensor>,
    rounded: bool,
) -> Result<Activations> {
    if gate.shape() != value.shape() {
        candle_core::bail!(
            "gated activation: {:?} and {:?}",
            gate.shape(),
            value.shape()
        );
    }
    // The two halves of one projection (GEGLU's, SwiGLU's) are views with rows of their last
    // dimension apart: read them in place, where copying each contiguous first cost three
    // passes over them.
    let (shape, device) = (gate.shape(), gate.device());
    if let Some(out) = with_rows(value, |value, value_rows| {
        with_rows(gate, |gate, gate_rows| {
            (value_rows.cols == gate_rows.cols).then(|| {
                let (cols, rows) = (value_rows.cols, value_rows.count);
                let row = |r: usize, out: &mut [f32]| {
                    out.copy_from_slice(&value[r * value_rows.stride..][..cols]);
                    let gate = &gate[r * gate_rows.stride..][..cols];
                    widest_with(out, Some(gate), |o: &mut f32, g: f32| *o *= activation(g));
                };
                if rounded {
                    let rows = Rounded::from_f32_rows(rows, cols, row);
                    let dims = shape.dims().to_vec();
                    return Ok(Activations::Rounded { rows, dims });
                }
                let rows_per_task = (CHUNK / cols.max(1)).max(1);
                let task_len = (rows_per_task * cols).max(1);
                let out = super::buffers::par_filled(rows * cols, task_len, |task, out| {
                    for (i, out) in out.chunks_exact_mut(cols).enumerate() {
                        row(task * rows_per_task + i, out);
                    }
                });
                Tensor::from_vec(out, shape, device).map(Activations::Tensor)
            })
        })
        .flatten()
    })
    .flatten()
    {
        return out;
    }
    let tensor = |x: Result<Tensor>| x.map(Activations::Tensor);
    let value_data = match cpu_f32(value, <[f32]>::to_vec) {
        Some(data) => data?,
        None => return tensor(fallback(gate)? * value),
    };
    match cpu_f32(gate, |gate| {
        let mut out = value_data;
        out.par_chunks_mut(CHUNK)
            .zip(gate.par_chunks(CHUNK))
            .for_each(|(out, gate)| {
                widest_with(out, Some(gate), |o: &mut f32, g: f32| *o *= activation(g))
            });
        out
    }) {
        Some(out) => tensor(Tensor::from_vec(out?, gate.shape(), gate.device())),
        None => tensor(fallback(gate)? * value),
    }
}

/// Evenly spaced rows of a tensor's last dimension, each contiguous.
struct Rows {
    count: usize,
    cols: usize,
    /// Values from one row's start to the next's.
    stride: usize,
}

/// `f` of a CPU f32 tensor's values from its first element, and its rows, where the tensor is
/// evenly spaced contiguous rows of its last dimension (a narrow of that dimension, say);
/// `None` otherwise, and for an empty tensor.
fn with_rows<R>(x: &Tensor, f: impl FnOnce(&[f32], Rows) -> R) -> Option<R> {
    let dims = x.dims();
    let cols = *dims.last()?;
    if !super::own_kernels(x.device())
        || x.dtype() != candle_core::DType::F32
        || x.elem_count() == 0
    {
        return None;
    }
    let (storage, layout) = x.storage_and_layout();
    let strides = layout.stride();
    let rank = dims.len();
    let stride = if rank >= 2 { strides[rank - 2] } else { cols };
    // The leading dimensions must merge into one run of rows `stride` apart.
    let merges = (0..rank.saturating_sub(2)).all(|i| strides[i] == strides[i + 1] * dims[i + 1]);
    if strides[rank - 1] != 1 || stride < cols || !merges {
        return None;
    }
    let count = x.elem_count() / cols;
    let Storage::Cpu(CpuStorage::F32(data)) = &*storage else {
        return None;
    };
    let values = data.get(layout.start_offset()..)?;
    if values.len() < (count - 1) * stride + cols {
        return None;
    }
    Some(f(
        values,
        Rows {
            count,
            cols,
            stride,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
    }

    #[test]
    fn halves_of_one_projection_are_read_in_place_and_match_candle() -> Result<()> {
        // (batch, tokens, 2 x inner) split on the last dimension, as GEGLU does; rows longer
        // than one task's share, and a 1-D pair.
        for dims in [vec![2, 3, 2 * 7], vec![1, 5, 2 * 20000], vec![2 * 9]] {
            let projected = Tensor::randn(0f32, 2., dims.as_slice(), &Device::Cpu)?;
            let last = dims.len() - 1;
            let inner = dims[last] / 2;
            let value = projected.narrow(last, 0, inner)?;
            let gate = projected.narrow(last, inner, inner)?;
            assert!(with_rows(&gate, |_, rows| rows.stride).is_some());
            let want = (gate.gelu_erf()? * &value)?;
            assert!(max_diff(&gelu_erf_mul(&gate, &value)?, &want)? < 1e-5);
            let want = (gate.silu()? * &value)?;
            assert!(max_diff(&silu_mul(&gate, &value)?, &want)? < 1e-5);
        }
        // A narrow of a middle dimension is not evenly spaced rows.
        let x = Tensor::randn(0f32, 1., (2, 6, 4), &Device::Cpu)?.narrow(1, 1, 3)?;
        assert!(with_rows(&x, |_, rows| rows.stride).is_none());
        Ok(())
    }

    /// Asked for rounded rows, each activation writes its values rounded to bf16 (nearest
    /// even, as a bf16 product rounds them); asked for none, the tensor.
    #[test]
    fn activations_as_rounded_rows_are_the_activations_rounded() -> Result<()> {
        let x = Tensor::randn(0f32, 2., (2, 77, 40), &Device::Cpu)?;
        type AsRows = fn(&Tensor, bool) -> Result<Activations>;
        type Plain = fn(&Tensor) -> Result<Tensor>;
        let kinds: [(AsRows, Plain); 3] = [
            (gelu_erf_as, gelu_erf),
            (gelu_tanh_as, gelu_tanh),
            (quick_gelu_as, quick_gelu),
        ];
        for (as_rows, plain) in kinds {
            let want = plain(&x)?;
            let Activations::Rounded { rows, dims } = as_rows(&x, true)? else {
                panic!("rounded rows asked for");
            };
            assert_eq!(dims, x.dims());
            let rounded = want.to_dtype(DType::BF16)?.to_dtype(DType::F32)?;
            assert_eq!(rows.widened(), rounded.flatten_all()?.to_vec1::<f32>()?);
            let Activations::Tensor(tensor) = as_rows(&x, false)? else {
                panic!("a tensor asked for");
            };
            assert_eq!(max_diff(&tensor, &want)?, 0.0);
        }
        Ok(())
    }

    #[test]
    fn match_candles_ops_on_views_and_fall_back_elsewhere() -> Result<()> {
        // A transposed view, more values than one chunk.
        let x = (Tensor::randn(0f32, 3., (130, 257), &Device::Cpu)?).t()?;
        let y = Tensor::randn(0f32, 1., (257, 130), &Device::Cpu)?;
        assert!(max_diff(&gelu_tanh(&x)?, &x.gelu()?)? < 1e-5);
        assert!(max_diff(&gelu_tanh_mul(&x, &y)?, &(x.gelu()? * &y)?)? < 1e-5);
        assert!(max_diff(&silu_mul(&x, &y)?, &(x.silu()? * &y)?)? < 1e-5);
        assert!(max_diff(&gelu_erf(&x)?, &x.gelu_erf()?)? < 1e-5);
        assert!(max_diff(&gelu_erf_mul(&x, &y)?, &(x.gelu_erf()? * &y)?)? < 1e-5);
        let quick = (&x * candle_nn::ops::sigmoid(&(&x * 1.702)?)?)?;
        assert!(max_diff(&quick_gelu(&x)?, &quick)? < 1e-5);
        let half = x.to_dtype(DType::BF16)?;
        assert_eq!(gelu_tanh(&half)?.dtype(), DType::BF16);
        assert!(gelu_tanh_mul(&x, &y.t()?).is_err());
        Ok(())
    }
}
