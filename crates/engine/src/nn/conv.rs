//! The 3x3 "same" convolution used throughout the UNet and the VAE, with fast CPU paths.
//!
//! On CPU in f32: once the image has enough 4x4 tiles to keep the GEMMs busy it runs as
//! Winograd F(4x4, 3x3) ([`super::winograd`], four times fewer multiplies), below that as a
//! single im2col GEMM on the weight as stored ([`super::im2col`]). 1x1 convolutions (the
//! ResNet shortcuts) are one GEMM on the NCHW data, where candle copies the input and the
//! output element by element. bf16 weights on a CPU with AVX512-BF16 run in bf16
//! ([`super::tiled_conv`]; without AMX, the larger 3x3 ones widened to f32 by Winograd).
//! Everything else (GPU, half-precision activations) goes to candle.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Module, Result, Shape, Storage, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

use super::layers::{self, Conv2d};
use super::mapped::{self, MappedTensor};
use super::norm::GroupNormSilu;
use super::tiled_conv::PackedConv;
use super::{buffers, im2col, tiles, winograd};
use crate::lora::hook::{self, Tag};

/// From this many output tiles on, Winograd beats one im2col GEMM (the weight transform and
/// narrow GEMMs cost more on the UNet's 16x16 and 8x8 levels); measured with
/// `cargo bench -p seedbed-engine --bench kernels -- conv3x3`. Below it, images with many
/// channels for their tiles take Winograd with U made by chunks where that pays
/// ([`winograd::by_chunks_pay`]: the 16x16 and 24x24 levels on AVX2-only CPUs).
const MIN_WINOGRAD_TILES: usize = 64;

/// A stride-1 convolution that keeps the image size: 3x3 with padding 1 ([`Conv3x3`]), or
/// 1x1 ([`Conv1x1`]).
pub struct SameConv {
    weight: ConvWeight,
    kernel: usize,
    in_channels: usize,
    out_channels: usize,
    /// Where a LoRA finds a 1x1 convolution (`crate::lora::hook`); LoRAs on 3x3 ones
    /// (LoCon) are refused when the file is read, so those carry none.
    tag: Option<Tag>,
}

enum ConvWeight {
    /// Read into memory: any dtype, any device.
    Loaded(Conv2d),
    /// f32 on the CPU, read in place from the weights file ([`mapped`]); our kernels only.
    Mapped { weight: MappedTensor, bias: Tensor },
    /// bf16 on a CPU with AVX512-BF16 (and AMX or not), packed at load for the bf16 kernels
    /// ([`super::tiled_conv`]), in place of the loaded weight.
    Tiles {
        weight: PackedConv,
        bias: Option<Tensor>,
    },
}

pub type Conv3x3 = SameConv;
pub type Conv1x1 = SameConv;

impl SameConv {
    /// A `kernel` x `kernel` convolution (1 or 3) with the padding that keeps the size.
    pub fn new(kernel: usize, cin: usize, cout: usize, vb: VarBuilder) -> Result<Self> {
        if kernel != 1 && kernel != 3 {
            candle_core::bail!("SameConv supports 1x1 and 3x3 kernels, not {kernel}x{kernel}");
        }
        let tag = if kernel == 1 {
            hook::tag_for(&vb.prefix())
        } else {
            None
        };
        let weight = match mapped::lookup(&vb, "weight", &[cout, cin, kernel, kernel]) {
            Some(weight) => ConvWeight::Mapped {
                weight,
                bias: vb.get(cout, "bias")?,
            },
            None => {
                let conv = layers::conv2d_unpacked(cin, cout, kernel, config(kernel), vb)?;
                let weight = conv.weight();
                if weight.dtype() == DType::BF16
                    && super::own_kernels(weight.device())
                    && tiles::available()
                {
                    let values = weight.flatten_all()?.to_vec1::<half::bf16>()?;
                    ConvWeight::Tiles {
                        weight: PackedConv::new(&values, cout, cin, kernel),
                        bias: conv.bias().cloned(),
                    }
                } else {
                    ConvWeight::Loaded(conv)
                }
            }
        };
        Ok(Self {
            tag,
            weight,
            kernel,
            in_channels: cin,
            out_channels: cout,
        })
    }

    /// candle's own convolution, for comparison.
    pub fn forward_candle(&self, x: &Tensor) -> Result<Tensor> {
        self.candle(x, &self.weight_tensor()?)
    }

    /// The weight as a tensor: the layer's own, or a copy of the mapped one.
    fn weight_tensor(&self) -> Result<Tensor> {
        match &self.weight {
            ConvWeight::Loaded(conv) => Ok(conv.weight().clone()),
            ConvWeight::Mapped { weight, .. } => weight.to_tensor(),
            ConvWeight::Tiles { weight, .. } => {
                Tensor::from_vec(weight.stored(), weight.dims(), &candle_core::Device::Cpu)
            }
        }
    }

    fn bias(&self) -> Option<&Tensor> {
        match &self.weight {
            ConvWeight::Loaded(conv) => conv.bias(),
            ConvWeight::Mapped { bias, .. } => Some(bias),
            ConvWeight::Tiles { bias, .. } => bias.as_ref(),
        }
    }

    /// The bias as f32 values, for the CPU kernels.
    fn bias_values(&self) -> Result<Option<Vec<f32>>> {
        self.bias()
            .map(|b| b.to_dtype(DType::F32)?.to_vec1::<f32>())
            .transpose()
    }

    fn candle(&self, x: &Tensor, weight: &Tensor) -> Result<Tensor> {
        let (weight, bias) = (layers::like(weight, x)?, self.bias().cloned());
        let bias = bias.map(|b| layers::like(&b, x)).transpose()?;
        candle_nn::Conv2d::new(weight, bias, config(self.kernel)).forward(x)
    }

    fn runs_on_cpu_kernels(&self, x: &Tensor) -> bool {
        super::own_kernels(x.device()) && x.dtype() == DType::F32 && x.rank() == 4
    }
}

fn config(kernel: usize) -> Conv2dConfig {
    Conv2dConfig {
        padding: kernel / 2,
        ..Default::default()
    }
}

impl Module for SameConv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let stored = || self.weight_tensor();
        let merged = hook::merged_weight(self.tag.as_ref(), stored, hook::Stored::Conv1x1)?;
        match (merged, &self.weight) {
            (Some(merged), _) => self.forward_with(x, &merged),
            (None, ConvWeight::Tiles { weight, .. }) if self.runs_on_cpu_kernels(x) => {
                self.run(x, Operand::Tiles(weight))
            }
            (None, ConvWeight::Tiles { .. }) => self.candle(x, &self.weight_tensor()?),
            (None, ConvWeight::Loaded(conv)) => self.forward_with(x, conv.weight()),
            (None, ConvWeight::Mapped { weight, .. }) if self.runs_on_cpu_kernels(x) => {
                self.cpu(x, weight.values())
            }
            (None, ConvWeight::Mapped { weight, .. }) => self.candle(x, &weight.to_tensor()?),
        }
    }
}

impl SameConv {
    /// The convolution of `x`, which the caller is done with (see [`buffers::take_f32`] for
    /// what that asks): a 1x1 one with no more outputs than inputs is written over `x`'s data
    /// ([`im2col::conv1x1_over`], in bf16 [`super::tiled_conv::conv1x1_over`]) where the
    /// CPU kernels run it with the weight as stored (no LoRA merged into it).
    pub fn forward_consuming(&self, x: Tensor) -> Result<Tensor> {
        let stored = || self.weight_tensor();
        let merged = hook::merged_weight(self.tag.as_ref(), stored, hook::Stored::Conv1x1)?;
        let over = self.kernel == 1
            && self.out_channels <= self.in_channels
            && merged.is_none()
            && self.runs_on_cpu_kernels(&x);
        let bias = self.bias_values()?;
        if let (true, ConvWeight::Tiles { weight, .. }) = (over, &self.weight) {
            return self.over_input(x, |data, shape| {
                match super::tiled_conv::conv1x1_over(data, shape, weight, bias.as_deref()) {
                    Ok(out) => Ok(out),
                    Err(_) => candle_core::bail!("the bf16 kernels went away"),
                }
            });
        }
        let loaded = match &self.weight {
            ConvWeight::Loaded(conv) if over && conv.weight().dtype() == DType::F32 => {
                Some(conv.weight().contiguous()?)
            }
            _ => None,
        };
        let guard = loaded.as_ref().map(|w| w.storage_and_layout());
        let weight = match (&self.weight, &guard) {
            (ConvWeight::Mapped { weight, .. }, _) if over => weight.values(),
            (_, Some((storage, layout))) => match &**storage {
                Storage::Cpu(storage) => contiguous_f32(storage, layout)?,
                _ => return self.forward(&x),
            },
            _ => return self.forward(&x),
        };
        self.over_input(x, |data, shape| {
            Ok(im2col::conv1x1_over(data, shape, weight, bias.as_deref()))
        })
    }

    /// `compute` given `x`'s data, moved out (see [`buffers::take_f32`]), and its shape, for
    /// the output's data; the ordinary way where `x` is a view into a larger storage.
    fn over_input(
        &self,
        x: Tensor,
        compute: impl FnOnce(Vec<f32>, winograd::Shape) -> Result<Vec<f32>>,
    ) -> Result<Tensor> {
        let (batch, _, height, width) = x.dims4()?;
        let shape = winograd::Shape {
            batch,
            in_channels: self.in_channels,
            out_channels: self.out_channels,
            height,
            width,
        };
        let device = x.device().clone();
        let data = match buffers::take_f32(x) {
            Ok(data) => data,
            Err(x) => return self.forward(&x),
        };
        let out = compute(data, shape)?;
        Tensor::from_vec(out, (batch, self.out_channels, height, width), &device)
    }
}

/// The ops a ResNet block or an upsampler runs around a convolution, which
/// [`SameConv::forward_around`] does inside it where the CPU kernels allow
/// ([`winograd::Fused`]): no full-size intermediate image, the same values.
#[derive(Clone, Copy, Default)]
pub struct Around<'a> {
    /// GroupNorm and SiLU on the input, first.
    pub norm: Option<&'a GroupNormSilu>,
    /// Nearest 2x upsampling of the input, next.
    pub upsample: bool,
    /// `(batch, out)`: added to each image's channels after the convolution (a UNet ResNet
    /// block's time embedding).
    pub image_bias: Option<&'a Tensor>,
    /// Added to the output, last.
    pub residual: Option<&'a Tensor>,
}

impl SameConv {
    /// `residual + (conv(upsample(norm(x))) + image_bias)`, each part as `around` asks.
    pub fn forward_around(&self, x: &Tensor, around: Around) -> Result<Tensor> {
        self.around(x, around, false)
    }

    /// [`Self::forward_around`] with `residual` given up by the caller (see
    /// [`buffers::take_f32`] for what that asks): where the f32 Winograd path or the bf16 kernel
    /// runs, the output is written over it ([`winograd::conv3x3_onto`],
    /// [`super::tiled_conv::conv_onto`]), one full-size image fewer alive.
    pub fn forward_around_onto(
        &self,
        x: &Tensor,
        around: Around,
        residual: Tensor,
    ) -> Result<Tensor> {
        let around = Around {
            residual: Some(&residual),
            ..around
        };
        self.around(x, around, true)
    }

    /// `over_residual`: the residual is the caller's to be written over.
    fn around(&self, x: &Tensor, around: Around, over_residual: bool) -> Result<Tensor> {
        if let Some(y) = self.fused(x, around, over_residual)? {
            return Ok(y);
        }
        let mut x = match around.norm {
            Some(norm) => norm.forward(x)?,
            None => x.clone(),
        };
        if around.upsample {
            let (_, _, h, w) = x.dims4()?;
            x = x.upsample_nearest2d(h * 2, w * 2)?;
        }
        let mut y = self.forward(&x)?;
        if let Some(image_bias) = around.image_bias {
            y = y.broadcast_add(&image_bias.unsqueeze(2)?.unsqueeze(3)?)?;
        }
        match around.residual {
            Some(residual) => residual + y,
            None => Ok(y),
        }
    }

    /// [`Self::forward_around`] as one convolution, where its f32 Winograd path or its bf16
    /// kernel runs.
    fn fused(&self, x: &Tensor, around: Around, over_residual: bool) -> Result<Option<Tensor>> {
        if self.kernel != 3 || self.tag.is_some() || !self.runs_on_cpu_kernels(x) {
            return Ok(None);
        }
        let (batch, _, height, width) = x.dims4()?;
        let factor = if around.upsample { 2 } else { 1 };
        let shape = winograd::Shape {
            batch,
            in_channels: self.in_channels,
            out_channels: self.out_channels,
            height: height * factor,
            width: width * factor,
        };
        // The weight first: before any pass over x, whether a fused path runs at all.
        let loaded = match &self.weight {
            ConvWeight::Mapped { .. } => None,
            ConvWeight::Tiles { .. } => None,
            ConvWeight::Loaded(conv) if conv.weight().dtype() == DType::F32 => {
                Some(conv.weight().contiguous()?)
            }
            _ => return Ok(None),
        };
        let winograd_weight = !matches!(self.weight, ConvWeight::Tiles { .. });
        let winograd =
            shape.tiles() >= MIN_WINOGRAD_TILES || winograd::by_chunks_pay(shape, around.upsample);
        if winograd_weight && !winograd {
            return Ok(None);
        }
        let guard = loaded.as_ref().map(|w| w.storage_and_layout());
        let weight = match (&self.weight, &guard) {
            (ConvWeight::Mapped { weight, .. }, _) => Operand::F32(weight.values()),
            (ConvWeight::Tiles { weight, .. }, _) if winograd_instead(&shape) => {
                Operand::Widened(weight)
            }
            (ConvWeight::Tiles { weight, .. }, _) => Operand::Tiles(weight),
            (_, Some((storage, layout))) => match &**storage {
                Storage::Cpu(storage) => Operand::F32(contiguous_f32(storage, layout)?),
                _ => return Ok(None),
            },
            _ => return Ok(None),
        };
        let out_dims = (batch, shape.out_channels, shape.height, shape.width);
        let image_bias = match around.image_bias {
            Some(b) if b.dims() == [batch, shape.out_channels] => {
                Some(b.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
            }
            Some(_) => return Ok(None),
            None => None,
        };
        let residual = match around.residual {
            Some(r)
                if r.dtype() == DType::F32
                    && super::own_kernels(r.device())
                    && r.dims4()? == out_dims =>
            {
                Some(r.contiguous()?)
            }
            Some(_) => return Ok(None),
            None => None,
        };
        let input_norm = match around.norm {
            Some(norm) => match norm.affine(x)? {
                Some(affine) => Some(affine),
                None => return Ok(None),
            },
            None => None,
        };
        // The residual moved into the output, where the caller gave it up; never `x`'s own
        // storage, which is read meanwhile.
        let onto = match &residual {
            Some(r) if over_residual && !same_storage(r, x) => buffers::take_f32(r.clone()).ok(),
            _ => None,
        };
        let residual_guard = match onto {
            Some(_) => None,
            None => residual.as_ref().map(|r| r.storage_and_layout()),
        };
        let residual = match &residual_guard {
            Some((storage, layout)) => match &**storage {
                Storage::Cpu(storage) => Some(contiguous_f32(storage, layout)?),
                _ => return Ok(None),
            },
            None => None,
        };
        let bias = self.bias_values()?;
        let fused = winograd::Fused {
            input_norm: input_norm.as_deref(),
            doubled: around.upsample,
            bias: bias.as_deref(),
            image_bias: image_bias.as_deref(),
            residual,
        };
        let x = x.contiguous()?;
        let (storage, layout) = x.storage_and_layout();
        let Storage::Cpu(storage) = &*storage else {
            return Ok(None);
        };
        let input = contiguous_f32(storage, layout)?;
        let out = match weight {
            Operand::F32(weight) => winograd::conv3x3_weight(input, shape, weight, fused, onto),
            Operand::Widened(packed) => {
                let widen = |o: usize, filter: &mut [f32]| packed.widen_output(o, filter);
                let weight = winograd::Source::ByOutput(&widen);
                winograd::conv3x3_from(input, shape, weight, fused, onto)
            }
            Operand::Tiles(packed) => {
                let out = match onto {
                    Some(onto) => {
                        super::tiled_conv::conv_onto(input, shape, packed, fused, onto).ok()
                    }
                    None => super::tiled_conv::conv_fused(input, shape, packed, fused),
                };
                match out {
                    Some(out) => out,
                    None => candle_core::bail!("the bf16 kernels went away"),
                }
            }
        };
        Tensor::from_vec(out, out_dims, x.device()).map(Some)
    }

    /// The convolution with `weight`: its own, or one merged with LoRAs.
    fn forward_with(&self, x: &Tensor, weight: &Tensor) -> Result<Tensor> {
        if !self.runs_on_cpu_kernels(x) {
            return self.candle(x, weight);
        }
        // Half-precision weights (see `layers`) are widened here, once per call.
        let weight = layers::like(weight, x)?.contiguous()?;
        let (storage, layout) = weight.storage_and_layout();
        let Storage::Cpu(storage) = &*storage else {
            candle_core::bail!("conv: the weight is not on the CPU");
        };
        self.cpu(x, contiguous_f32(storage, layout)?)
    }

    /// The convolution on our CPU kernels, `x` f32 and 4-D, `weight` `(out, in, k, k)`.
    fn cpu(&self, x: &Tensor, weight: &[f32]) -> Result<Tensor> {
        self.run(x, Operand::F32(weight))
    }

    fn run(&self, x: &Tensor, weight: Operand) -> Result<Tensor> {
        let (batch, _, height, width) = x.dims4()?;
        let op = CpuConv {
            kernel: self.kernel,
            shape: winograd::Shape {
                batch,
                in_channels: self.in_channels,
                out_channels: self.out_channels,
                height,
                width,
            },
            weight,
            bias: self.bias_values()?,
        };
        x.contiguous()?.apply_op1_no_bwd(&op)
    }
}

struct CpuConv<'a> {
    kernel: usize,
    shape: winograd::Shape,
    weight: Operand<'a>,
    bias: Option<Vec<f32>>,
}

/// The weight as the kernels take it.
#[derive(Clone, Copy)]
enum Operand<'a> {
    /// `(out, in, k, k)` f32.
    F32(&'a [f32]),
    /// bf16, packed for the tiles.
    Tiles(&'a PackedConv),
    /// bf16 packed for the tiles, run in f32 by Winograd ([`winograd_instead`]): each output
    /// channel's filters widened just before their transform, where a whole f32 copy of the
    /// weight was written to fresh pages and read back once (an SD-Turbo-shaped bf16 bench:
    /// 10 % fewer page faults, bench/RESULTS.md).
    Widened(&'a PackedConv),
}

impl CpuConv<'_> {
    fn uses_winograd(&self) -> bool {
        self.shape.tiles() >= MIN_WINOGRAD_TILES
    }
}

/// Whether a 3x3 convolution with a bf16 weight packed for [`super::tiled_conv`] runs in f32
/// by Winograd instead, its weight widened for the call: where the blocks are computed in
/// AVX-512 registers (no AMX) and the image has the tiles Winograd needs. There bf16 doubles
/// the multiply-adds an instruction, Winograd's 4x4 tiles divide the multiplies by four: an
/// SD-Turbo-shaped bf16 UNet call at 512x512 on 2 cores of a Zen 4 EPYC, 2.72-2.78 s with
/// every convolution on the bf16 kernel, 2.48-2.57 s with those at 64x64 and 32x32 latents
/// by Winograd (bench/RESULTS.md). AMX's tiles beat Winograd everywhere.
fn winograd_instead(shape: &winograd::Shape) -> bool {
    tiles::Unit::detect() == Some(tiles::Unit::Registers) && shape.tiles() >= MIN_WINOGRAD_TILES
}

/// Whether `a` and `b` are views of one storage.
fn same_storage(a: &Tensor, b: &Tensor) -> bool {
    // One lock at a time: both may be the same one.
    let at = |t: &Tensor| std::ptr::from_ref::<Storage>(&t.storage_and_layout().0).addr();
    at(a) == at(b)
}

/// The contiguous f32 data of a CPU tensor.
pub(super) fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("a convolution takes f32 here, got {:?}", storage.dtype());
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("a convolution needs contiguous tensors here"),
    }
}

impl CustomOp1 for CpuConv<'_> {
    fn name(&self) -> &'static str {
        "same-conv"
    }

    fn cpu_fwd(&self, input: &CpuStorage, input_layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let s = self.shape;
        let input = contiguous_f32(input, input_layout)?;
        let bias = self.bias.as_deref();
        let weight = match self.weight {
            Operand::F32(weight) => weight,
            Operand::Tiles(packed) | Operand::Widened(packed)
                if self.kernel == 3 && winograd_instead(&s) =>
            {
                let widen = |o: usize, filter: &mut [f32]| packed.widen_output(o, filter);
                let weight = winograd::Source::ByOutput(&widen);
                let u = winograd::Filters::new_from(weight, s.out_channels, s.in_channels);
                let out = winograd::conv3x3(input, s, &u, bias);
                let shape = Shape::from((s.batch, s.out_channels, s.height, s.width));
                return Ok((CpuStorage::F32(out), shape));
            }
            Operand::Tiles(packed) | Operand::Widened(packed) => {
                let out = super::tiled_conv::conv(input, s, packed, bias);
                let out = out
                    .ok_or_else(|| candle_core::Error::Msg("the bf16 kernels went away".into()))?;
                let shape = Shape::from((s.batch, s.out_channels, s.height, s.width));
                return Ok((CpuStorage::F32(out), shape));
            }
        };
        let expected = s.out_channels * s.in_channels * self.kernel * self.kernel;
        if weight.len() != expected {
            candle_core::bail!("conv: {} weight values, expected {expected}", weight.len());
        }
        let out = if self.kernel == 1 {
            im2col::conv1x1(input, s, weight, bias)
        } else if winograd::by_chunks_pay(s, false) {
            let fused = winograd::Fused {
                bias,
                ..winograd::Fused::default()
            };
            winograd::conv3x3_weight(input, s, weight, fused, None)
        } else if self.uses_winograd() {
            let u = winograd::Filters::new(weight, s.out_channels, s.in_channels);
            winograd::conv3x3(input, s, &u, bias)
        } else {
            im2col::conv3x3(input, s, weight, bias)
        };
        let shape = Shape::from((s.batch, s.out_channels, s.height, s.width));
        Ok((CpuStorage::F32(out), shape))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::VarMap;

    /// Both CPU paths agree with candle's convolution: a latent big enough for Winograd
    /// (10x9 tiles), and one small enough for im2col, both batched and non-contiguous.
    #[test]
    fn cpu_paths_match_candle() -> Result<()> {
        for (side_h, side_w) in [(40, 36), (12, 10)] {
            check_against_candle(3, side_h, side_w)?;
        }
        check_against_candle(1, 9, 11)
    }

    /// Convolutions built from an f32 safetensors file read their weights in place and compute
    /// what ones holding the same weights in memory do, on both 3x3 paths and the 1x1 one.
    #[test]
    fn mapped_weights_compute_what_loaded_ones_do() -> Result<()> {
        use crate::nn::mapped::testing::{Stored, f32_bytes, write};
        use crate::weights::{NameScheme, Variant, build_component};
        let dir = tempfile::tempdir()?;
        let values = |n: usize| -> Vec<f32> { (0..n).map(|i| (i as f32 * 0.37).sin()).collect() };
        let stored = [
            Stored(
                "c3.weight",
                "F32",
                vec![10, 6, 3, 3],
                f32_bytes(&values(540)),
            ),
            Stored("c3.bias", "F32", vec![10], f32_bytes(&values(10))),
            Stored(
                "c1.weight",
                "F32",
                vec![10, 6, 1, 1],
                f32_bytes(&values(60)),
            ),
            Stored("c1.bias", "F32", vec![10], f32_bytes(&values(10))),
        ];
        write(&dir.path().join("model.safetensors"), &stored);
        let build = |vb: VarBuilder| {
            Ok((
                SameConv::new(3, 6, 10, vb.pp("c3"))?,
                SameConv::new(1, 6, 10, vb.pp("c1"))?,
            ))
        };
        let device = Device::Cpu;
        let (names, dtype) = (NameScheme::Exact, DType::F32);
        let mapped = build_component(dir.path(), Variant::Auto, names, dtype, &device, build)
            .map_err(candle_core::Error::wrap)?;
        let tensors = stored
            .iter()
            .map(|Stored(name, _, shape, bytes)| {
                let floats: Vec<f32> = bytemuck::pod_collect_to_vec(bytes);
                Ok((
                    name.to_string(),
                    Tensor::from_vec(floats, shape.as_slice(), &device)?,
                ))
            })
            .collect::<Result<std::collections::HashMap<_, _>>>()?;
        let loaded = build(VarBuilder::from_tensors(tensors, dtype, &device))?;
        for conv in [&mapped.0, &mapped.1] {
            assert!(matches!(conv.weight, ConvWeight::Mapped { .. }));
        }
        assert!(matches!(loaded.0.weight, ConvWeight::Loaded(_)));
        for (height, width) in [(40, 36), (12, 10)] {
            let x = Tensor::randn(0f32, 1., (2, 6, height, width), &device)?;
            for (ours, theirs) in [(&mapped.0, &loaded.0), (&mapped.1, &loaded.1)] {
                let diff = (ours.forward(&x)? - theirs.forward(&x)?)?
                    .abs()?
                    .max_all()?;
                assert_eq!(diff.to_scalar::<f32>()?, 0.0);
            }
        }
        Ok(())
    }

    /// A convolution with its norm, upsampling and residual inside computes what the ops
    /// one by one compute, to the bit, on weights read in place and weights in memory. (From
    /// a 256x256 output up, an f32 upsampler convolves by phases instead, which sums in
    /// another order: [`winograd`]'s tests hold that to an f64 convolution.)
    #[test]
    fn ops_around_a_convolution_give_the_values_of_separate_ones() -> Result<()> {
        use crate::nn::mapped::testing::{Stored, f32_bytes, write};
        use crate::weights::{NameScheme, Variant, build_component};
        let device = Device::Cpu;
        let values = |n: usize, seed: f32| -> Vec<f32> {
            (0..n).map(|i| (i as f32 * 0.37 + seed).sin()).collect()
        };
        let stored = [
            Stored(
                "c.weight",
                "F32",
                vec![6, 4, 3, 3],
                f32_bytes(&values(216, 0.1)),
            ),
            Stored("c.bias", "F32", vec![6], f32_bytes(&values(6, 0.2))),
            Stored("n.weight", "F32", vec![4], f32_bytes(&values(4, 0.3))),
            Stored("n.bias", "F32", vec![4], f32_bytes(&values(4, 0.4))),
        ];
        let dir = tempfile::tempdir()?;
        write(&dir.path().join("model.safetensors"), &stored);
        let build = |vb: VarBuilder| {
            Ok((
                SameConv::new(3, 4, 6, vb.pp("c"))?,
                GroupNormSilu::new(2, 4, 1e-6, vb.pp("n"))?,
            ))
        };
        let (names, dtype) = (NameScheme::Exact, DType::F32);
        let mapped = build_component(dir.path(), Variant::Auto, names, dtype, &device, build)
            .map_err(candle_core::Error::wrap)?;
        let tensors =
            candle_core::safetensors::load(dir.path().join("model.safetensors"), &device)?;
        let loaded = build(VarBuilder::from_tensors(tensors.clone(), dtype, &device))?;
        assert!(matches!(loaded.0.weight, ConvWeight::Loaded(_)));
        // bf16 weights on the bf16 kernels, where the CPU has them.
        let tiled = build(VarBuilder::from_tensors(tensors, DType::BF16, &device))?;
        let mut layers = vec![&mapped, &loaded];
        if matches!(tiled.0.weight, ConvWeight::Tiles { .. }) {
            layers.push(&tiled);
        }
        for (conv, norm) in layers {
            for (upsample, side) in [(false, 36), (true, 18)] {
                let (h, w) = (side, side - 2);
                let (out_h, out_w) = if upsample { (2 * h, 2 * w) } else { (h, w) };
                let x = (Tensor::randn(0f32, 1., (2, 4, h, w), &device)? * 3.0)?;
                let time = Tensor::randn(0f32, 1., (2, 6), &device)?;
                let residual = Tensor::randn(0f32, 1., (2, 6, out_h, out_w), &device)?;
                let around = Around {
                    norm: Some(norm),
                    upsample,
                    image_bias: Some(&time),
                    residual: Some(&residual),
                };
                assert!(conv.fused(&x, around, false)?.is_some());
                let mut separate = norm.forward(&x)?;
                if upsample {
                    separate = separate.upsample_nearest2d(out_h, out_w)?;
                }
                let time = time.unsqueeze(2)?.unsqueeze(3)?;
                let separate = conv.forward(&separate)?.broadcast_add(&time)?;
                let separate = (&residual + separate)?;
                let fused = conv.forward_around(&x, around)?;
                assert_eq!(fused.dims(), separate.dims());
                let diff = (fused - &separate)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert_eq!(diff, 0.0, "upsample {upsample}");
                // The residual given up, to be written over: the same.
                let apart = Around {
                    residual: None,
                    ..around
                };
                let over = conv.forward_around_onto(&x, apart, residual.copy()?)?;
                let diff = (over - &separate)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert_eq!(diff, 0.0, "upsample {upsample}, over the residual");
                // The caller's own residual is never written over.
                let before = residual.flatten_all()?.to_vec1::<f32>()?;
                conv.forward_around(&x, around)?;
                assert_eq!(residual.flatten_all()?.to_vec1::<f32>()?, before);
            }
        }
        Ok(())
    }

    /// A small image with many output channels, whose U is made by chunks as it runs where
    /// the CPU takes that path ([`winograd::by_chunks_pay`]), on its own and with a norm
    /// read on the way in: candle's values, and the separate ops'.
    #[test]
    fn small_wide_images_match_candle() -> Result<()> {
        let map = VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
        let conv = SameConv::new(3, 8, 512, vb.pp("c"))?;
        let norm = GroupNormSilu::new(2, 8, 1e-6, vb.pp("n"))?;
        let x = Tensor::randn(0f32, 1., (2, 8, 16, 16), &Device::Cpu)?;
        let max_diff = |a: &Tensor, b: &Tensor| -> Result<f32> {
            (a - b)?.abs()?.max_all()?.to_scalar::<f32>()
        };
        assert!(max_diff(&conv.forward(&x)?, &conv.forward_candle(&x)?)? < 1e-4);
        let around = Around {
            norm: Some(&norm),
            ..Around::default()
        };
        let expected = conv.forward_candle(&norm.forward(&x)?)?;
        assert!(max_diff(&conv.forward_around(&x, around)?, &expected)? < 1e-4);
        Ok(())
    }

    fn check_against_candle(kernel: usize, height: usize, width: usize) -> Result<()> {
        let map = VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
        let conv = SameConv::new(kernel, 6, 10, vb)?;
        let x =
            Tensor::randn(0f32, 1., (2, height, width, 6), &Device::Cpu)?.permute((0, 3, 1, 2))?;
        let expected = conv.forward_candle(&x)?;
        let got = conv.forward(&x)?;
        assert_eq!(got.dims(), expected.dims());
        let diff = (&expected - got)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-4, "max diff {diff}");
        Ok(())
    }

    /// A 1x1 convolution to fewer channels, handed its input: written over it, the values of
    /// candle's; a view of a larger tensor goes the ordinary way, the tensor untouched.
    #[test]
    fn a_consumed_input_gives_the_same_values() -> Result<()> {
        let map = VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
        let conv = SameConv::new(1, 6, 4, vb)?;
        let x = Tensor::randn(0f32, 1., (3, 6, 9, 7), &Device::Cpu)?;
        let expected = conv.forward_candle(&x)?;
        let max_diff = |a: &Tensor, b: &Tensor| -> Result<f32> {
            (a - b)?.abs()?.max_all()?.to_scalar::<f32>()
        };
        let got = conv.forward_consuming(x.copy()?)?;
        assert!(max_diff(&got, &expected)? < 1e-5);
        let part = conv.forward_consuming(x.narrow(0, 1, 1)?)?;
        assert!(max_diff(&part, &expected.narrow(0, 1, 1)?)? < 1e-5);
        assert!(max_diff(&conv.forward_candle(&x)?, &expected)? == 0.0);
        Ok(())
    }

    /// The same with bf16 weights on the bf16 kernels, where the CPU has them: the bits of the
    /// convolution into a buffer of its own.
    #[test]
    fn a_consumed_input_on_the_tiles_gives_the_same_values() -> Result<()> {
        let map = VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::BF16, &Device::Cpu);
        let conv = SameConv::new(1, 40, 33, vb)?;
        if !matches!(conv.weight, ConvWeight::Tiles { .. }) {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return Ok(());
        }
        let x = Tensor::randn(0f32, 1., (2, 40, 9, 7), &Device::Cpu)?;
        let expected = conv.forward(&x)?.flatten_all()?.to_vec1::<f32>()?;
        let got = conv.forward_consuming(x.copy()?)?;
        assert_eq!(got.flatten_all()?.to_vec1::<f32>()?, expected);
        Ok(())
    }
}
