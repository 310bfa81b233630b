//! Linear layers: dense, read in place, packed bf16 or quantized; and the transformers' MLP.

use std::sync::{Arc, OnceLock};

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{CpuStorage, DType, Device, Module, Result, Storage, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use super::{Weights, like, like_opt};
use crate::lora::hook::{self, Tag};
use crate::nn::gemm::{self, View};
use crate::nn::mapped::{self, MappedTensor};
use crate::nn::quantized::BlockMatrix;
use crate::nn::rounded::Activations;
use crate::nn::stored;

/// `y = x W^T + b`.
///
/// On CPU a dense weight is kept transposed, `(in, out)` row-major, so that the GEMM reads its
/// right-hand side the way it runs fastest (see [`crate::nn::transpose`]); it is transposed once,
/// when the layer is built. Elsewhere it stays `(out, in)` as stored.
#[derive(Debug, Clone)]
pub struct Linear {
    pub(super) weight: LinearWeight,
    bias: Option<Tensor>,
    /// Where a LoRA finds this layer (`crate::lora::hook`); `None` when built by hand.
    tag: Option<Tag>,
}

#[derive(Debug, Clone)]
pub(super) enum LinearWeight {
    Dense {
        weight: Tensor,
        transposed: bool,
    },
    /// `(out, in)` on the CPU, read in place from the weights file ([`mapped`]) and multiplied
    /// as stored ([`Linear::mapped_product`]): f32, or bf16 on a CPU with the bf16 kernel. For
    /// f32 on a CPU without [`stored`]'s tiles, the first product with few rows makes a
    /// transposed copy, which such products use from then on.
    Mapped {
        weight: MappedTensor,
        transposed: Arc<OnceLock<Tensor>>,
    },
    /// `(out, in)` in GGUF blocks on the CPU, multiplied band by band ([`BlockMatrix`]).
    Blocks(BlockMatrix),
    /// bf16 on a CPU with a bf16 kernel, packed once into its panels ([`crate::nn::bf16::Packed`]).
    Packed(Arc<crate::nn::bf16::Packed>),
    /// `(out, in)` in GGUF blocks on a GPU, through candle's quantized matmul.
    Quantized(QMatMul),
}

impl Linear {
    pub(super) fn new(weight: &Tensor, bias: Option<&Tensor>) -> Result<Self> {
        let cpu = crate::nn::own_kernels(weight.device());
        if cpu && weight.dtype() == DType::BF16 && crate::nn::tiles::available() {
            let (out, inner) = weight.dims2()?;
            let values = weight.flatten_all()?.to_vec1::<half::bf16>()?;
            let packed = crate::nn::bf16::Packed::from_stored(&values, out, inner);
            return Ok(Self {
                weight: LinearWeight::Packed(Arc::new(packed)),
                bias: bias.cloned(),
                tag: None,
            });
        }
        let transposed = cpu;
        Ok(Self {
            weight: LinearWeight::Dense {
                weight: if transposed {
                    crate::nn::transpose::transposed(weight)?
                } else {
                    weight.clone()
                },
                transposed,
            },
            bias: bias.cloned(),
            tag: None,
        })
    }

    /// Whether [`Self::forward_activations`] multiplies rows already rounded to bf16 as they
    /// are: a bf16 weight on the bf16 kernels, which would round f32 activations the same way.
    pub fn takes_rounded(&self) -> bool {
        let bf16 = match &self.weight {
            LinearWeight::Packed(_) => true,
            LinearWeight::Mapped { weight, .. } => weight.dtype() == DType::BF16,
            _ => false,
        };
        bf16 && crate::nn::tiles::available()
    }

    /// The layer applied to `x`: a tensor as [`Module::forward`] does, rows rounded to bf16
    /// as they are where the layer [takes them](Self::takes_rounded) and no LoRA changes it
    /// (a merged weight keeps the weight's dtype, so its product rounds them the same way).
    pub fn forward_activations(&self, x: &Activations) -> Result<Tensor> {
        let Activations::Rounded { rows, dims } = x else {
            return self.forward(&x.to_tensor()?);
        };
        if !self.takes_rounded() || hook::changes(self.tag.as_ref()) {
            return self.forward(&x.to_tensor()?);
        }
        let lhs = crate::nn::bf16::Lhs::Rounded(rows);
        match self.bf16_kernel_product(lhs, dims.clone())? {
            Some(y) => Ok(y),
            None => self.forward(&x.to_tensor()?),
        }
    }

    /// The weight's dtype as loaded; `None` for quantized blocks.
    pub fn weight_dtype(&self) -> Option<DType> {
        match &self.weight {
            LinearWeight::Dense { weight, .. } => Some(weight.dtype()),
            LinearWeight::Mapped { weight, .. } => Some(weight.dtype()),
            LinearWeight::Packed(_) => Some(DType::BF16),
            LinearWeight::Blocks(_) | LinearWeight::Quantized(_) => None,
        }
    }

    fn mapped(weight: MappedTensor, bias: Option<Tensor>) -> Self {
        Self {
            weight: LinearWeight::Mapped {
                weight,
                transposed: Arc::default(),
            },
            bias,
            tag: None,
        }
    }

    fn quantized(weight: QTensor, bias: Option<Tensor>) -> Result<Self> {
        let weight = Arc::new(weight);
        let weight = match BlockMatrix::new(weight.clone())? {
            Some(blocks) => LinearWeight::Blocks(blocks),
            None => LinearWeight::Quantized(QMatMul::from_arc(weight)?),
        };
        Ok(Self {
            weight,
            bias,
            tag: None,
        })
    }

    /// Whether the weight is kept quantized.
    pub fn is_quantized(&self) -> bool {
        matches!(
            self.weight,
            LinearWeight::Blocks(_) | LinearWeight::Quantized(_)
        )
    }

    fn tagged(mut self, vb: &VarBuilder) -> Self {
        self.tag = hook::tag_for(&vb.prefix());
        self
    }
}

pub fn linear<'a>(cin: usize, cout: usize, weights: impl Into<Weights<'a>>) -> Result<Linear> {
    let weights = weights.into();
    if let Some(weight) = weights.quantized_linear(cin, cout)? {
        let bias = weights.vb.get(cout, "bias")?;
        return Ok(Linear::quantized(weight, Some(bias))?.tagged(&weights.vb));
    }
    if let Some(weight) = mapped::lookup_linear(&weights.vb, "weight", &[cout, cin]) {
        let bias = weights.vb.get(cout, "bias")?;
        return Ok(Linear::mapped(weight, Some(bias)).tagged(&weights.vb));
    }
    let layer = candle_nn::linear(cin, cout, weights.vb.clone())?;
    Ok(Linear::new(layer.weight(), layer.bias())?.tagged(&weights.vb))
}

pub fn linear_no_bias<'a>(
    cin: usize,
    cout: usize,
    weights: impl Into<Weights<'a>>,
) -> Result<Linear> {
    let weights = weights.into();
    if let Some(weight) = weights.quantized_linear(cin, cout)? {
        return Ok(Linear::quantized(weight, None)?.tagged(&weights.vb));
    }
    if let Some(weight) = mapped::lookup_linear(&weights.vb, "weight", &[cout, cin]) {
        return Ok(Linear::mapped(weight, None).tagged(&weights.vb));
    }
    let layer = candle_nn::linear_no_bias(cin, cout, weights.vb.clone())?;
    Ok(Linear::new(layer.weight(), None)?.tagged(&weights.vb))
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.weight {
            LinearWeight::Dense { weight, transposed } => {
                let layout = match transposed {
                    true => hook::Stored::InOut,
                    false => hook::Stored::OutIn,
                };
                let merged = hook::merged_weight(self.tag.as_ref(), || Ok(weight.clone()), layout)?;
                self.dense(x, merged.as_ref().unwrap_or(weight), *transposed)
            }
            LinearWeight::Mapped { weight, transposed } => {
                let stored = || weight.to_tensor();
                let layout = hook::Stored::OutIn;
                if let Some(merged) = hook::merged_weight(self.tag.as_ref(), stored, layout)? {
                    return self.dense(x, &merged, false);
                }
                self.mapped_product(x, weight, transposed)
            }
            LinearWeight::Packed(packed) => {
                let stored = || packed_tensor(packed);
                let layout = hook::Stored::OutIn;
                if let Some(merged) = hook::merged_weight(self.tag.as_ref(), stored, layout)? {
                    return self.dense(x, &merged, false);
                }
                self.packed_product(x, packed)
            }
            LinearWeight::Blocks(blocks) => {
                // A LoRA on a quantized layer merges into its dequantized weight, once per
                // LoRA set; the layer itself stays quantized.
                let layout = hook::Stored::OutIn;
                let dequantized = || blocks.dequantize();
                if let Some(merged) = hook::merged_weight(self.tag.as_ref(), dequantized, layout)? {
                    return self.dense(x, &merged, false);
                }
                self.add_bias(blocks.forward(x)?, x)
            }
            LinearWeight::Quantized(quantized) => {
                let dequantized = || match quantized {
                    QMatMul::QTensor(q) => q.dequantize(&q.device()),
                    QMatMul::Tensor(t) | QMatMul::TensorF16(t) => Ok(t.clone()),
                };
                let layout = hook::Stored::OutIn;
                if let Some(merged) = hook::merged_weight(self.tag.as_ref(), dequantized, layout)? {
                    return self.dense(x, &merged, false);
                }
                // The quantized matmul takes f32 rows, contiguous.
                let y = quantized
                    .forward(&x.to_dtype(DType::F32)?.contiguous()?)?
                    .to_dtype(x.dtype())?;
                self.add_bias(y, x)
            }
        }
    }
}

impl Linear {
    fn add_bias(&self, y: Tensor, x: &Tensor) -> Result<Tensor> {
        match like_opt(self.bias.as_ref(), x)? {
            Some(bias) => y.broadcast_add(&bias),
            None => Ok(y),
        }
    }

    /// The f32 product `y` (rows of `dims`' last size) on the CPU as a tensor, the bias added
    /// in place, rows in parallel: what [`Self::add_bias`] computes, without the serial pass
    /// and the second output (measured: a sixth of the serial time of a bf16 UNet step).
    fn with_bias(&self, mut y: Vec<f32>, dims: Vec<usize>) -> Result<Tensor> {
        let Some(bias) = &self.bias else {
            return Tensor::from_vec(y, dims, &Device::Cpu);
        };
        add_to_rows(&mut y, &bias.to_dtype(DType::F32)?.to_vec1::<f32>()?);
        Tensor::from_vec(y, dims, &Device::Cpu)
    }

    /// The product with a dense `weight`: the layer's own, or one merged with LoRAs;
    /// `transposed` when it is stored `(in, out)`.
    fn dense(&self, x: &Tensor, weight: &Tensor, transposed: bool) -> Result<Tensor> {
        if !transposed {
            let bias = like_opt(self.bias.as_ref(), x)?;
            return candle_nn::Linear::new(like(weight, x)?, bias).forward(x);
        }
        // All leading dimensions as rows of one 2-D product.
        let (inner, out) = weight.dims2()?;
        let mut dims = x.dims().to_vec();
        dims.pop();
        let rows = dims.iter().product::<usize>();
        let x2 = x.reshape((rows, inner))?;
        let y = match bf16_product(&x2, weight)? {
            Some(y) => y,
            None => x2.matmul(&like(weight, x)?)?,
        };
        dims.push(out);
        self.add_bias(y.reshape(dims)?, x)
    }
}

/// Up to this many rows, a mapped weight is multiplied through [`stored`]'s register tiles,
/// which transpose a panel of it at a time into the cache; from there on the gemm crate packs
/// it as stored, which wins once its packing is spread over enough rows. Intel Xeon (family 6
/// model 167, AVX-512), 2 threads, both products timed alone (best of 5; `cargo bench -p
/// seedbed-engine --bench kernels -- stored` has these shapes), tiles against gemm: 77 rows of
/// 1024 -> 4096 3.0 against 4.0 ms, of 5120 -> 1280 5.3 against 9.5; 256 rows of 1280 -> 1280
/// 3.4 against 3.4, of 1280 -> 10240 25.2 against 25.9; 512 rows of 1280 -> 1280 7.0 against
/// 5.8; 1024 rows 15.4 against 11.8, of 5120 -> 1280 58.7 against 46.4 (PyTorch 42.2): each
/// tile streams its rows from beyond L2 once per panel, where gemm keeps a block of them in L2.
/// (On the AMD EPYC family 25 the two were level up to 1024 rows; gemm won at 4096.)
pub(super) const MAX_ROWS_IN_TILES: usize = 256;

/// Without [`stored`]'s tiles (a CPU with neither AVX2 nor AVX-512), below this many rows a
/// mapped weight is multiplied through a transposed copy: the gemm crate packs a weight as
/// stored on every call, which costs about as much as the product itself when there are few
/// rows (77 rows of 1024 -> 4096: 9.7 against 3.4 ms on the machine above).
pub(super) const MIN_ROWS_AS_STORED: usize = 256;

impl Linear {
    /// The product with a mapped weight: through the register tiles or the gemm crate as
    /// stored, else through the transposed copy, made on first use. Which one depends on the
    /// rows and the CPU alone, never on what ran before: they sum in different orders, and the
    /// same request must make the same picture every time.
    fn mapped_product(
        &self,
        x: &Tensor,
        weight: &MappedTensor,
        transposed: &OnceLock<Tensor>,
    ) -> Result<Tensor> {
        self.mapped_product_with(x, weight, transposed, stored::Kernel::detect())
    }

    /// [`Self::mapped_product`] with the CPU's tiles, or none.
    pub(super) fn mapped_product_with(
        &self,
        x: &Tensor,
        weight: &MappedTensor,
        transposed: &OnceLock<Tensor>,
        kernel: Option<stored::Kernel>,
    ) -> Result<Tensor> {
        if weight.dtype() == DType::BF16 {
            return self.mapped_bf16_product(x, weight);
        }
        let (out, inner) = (weight.shape()[0], weight.shape()[1]);
        let mut dims = x.dims().to_vec();
        let rows = dims[..dims.len() - 1].iter().product::<usize>();
        let cpu_f32 = crate::nn::own_kernels(x.device()) && x.dtype() == DType::F32;
        let tiles = kernel.filter(|_| cpu_f32 && rows <= MAX_ROWS_IN_TILES);
        if !cpu_f32 || (rows < MIN_ROWS_AS_STORED && tiles.is_none()) {
            let copy = match transposed.get() {
                Some(copy) => copy,
                None => {
                    let copy =
                        crate::nn::transpose::transposed_values(weight.values(), out, inner)?;
                    // Many rows may still read the stored layout, but its pages need not stay
                    // in this process meanwhile: they are in the page cache.
                    weight.release();
                    transposed.get_or_init(|| copy)
                }
            };
            return self.dense(x, copy, true);
        }
        let x2 = x.reshape((rows, inner))?;
        let y = crate::nn::cpu_f32(&x2, |xs| match tiles {
            Some(kernel) => stored::times_transposed(kernel, xs, weight.values(), rows, inner, out),
            None => {
                let x_view = View::row_major(xs, rows, inner, inner);
                let w_view = View::row_major(weight.values(), out, inner, inner);
                gemm::times_transposed(x_view, w_view, rayon::current_num_threads())
            }
        });
        let Some(y) = y.transpose()? else {
            candle_core::bail!("linear: the input is not f32 on the CPU");
        };
        dims.pop();
        dims.push(out);
        self.with_bias(y, dims)
    }
}

/// `bias` added to each row of `values` (rows of `bias.len()`), in parallel chunks of whole
/// rows of about 64 KiB.
pub(crate) fn add_to_rows(values: &mut [f32], bias: &[f32]) {
    if bias.is_empty() {
        return;
    }
    let rows_per_chunk = (16 * 1024 / bias.len()).max(1);
    values
        .par_chunks_mut(bias.len() * rows_per_chunk)
        .for_each(|rows| {
            for row in rows.chunks_exact_mut(bias.len()) {
                row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
            }
        });
}

/// A packed bf16 weight as the `(out, in)` tensor it was packed from.
fn packed_tensor(packed: &crate::nn::bf16::Packed) -> Result<Tensor> {
    Tensor::from_vec(packed.stored(), packed.dims(), &Device::Cpu)
}

impl Linear {
    /// The product with a packed bf16 weight; activations not f32 take the unpacked weight.
    fn packed_product(&self, x: &Tensor, packed: &crate::nn::bf16::Packed) -> Result<Tensor> {
        match self.bf16_f32_product(x)? {
            Some(y) => Ok(y),
            None => self.dense(x, &packed_tensor(packed)?, false),
        }
    }

    /// The product with a mapped bf16 weight, through the bf16 kernel on the weight as stored.
    fn mapped_bf16_product(&self, x: &Tensor, weight: &MappedTensor) -> Result<Tensor> {
        // Only a CPU with the bf16 kernel maps bf16 weights ([`mapped::lookup_linear`]);
        // activations in another dtype widen the weight for candle's product.
        match self.bf16_f32_product(x)? {
            Some(y) => Ok(y),
            None => self.dense(x, &weight.to_tensor()?, false),
        }
    }

    /// [`Self::bf16_kernel_product`] of f32 activations on the CPU; `None` for others.
    fn bf16_f32_product(&self, x: &Tensor) -> Result<Option<Tensor>> {
        if !(crate::nn::own_kernels(x.device()) && x.dtype() == DType::F32) {
            return Ok(None);
        }
        let inner = x.dim(candle_core::D::Minus1)?;
        let rows = x.elem_count() / inner.max(1);
        let x2 = x.reshape((rows, inner))?;
        let dims = x.dims().to_vec();
        let product =
            |xs: &[f32]| self.bf16_kernel_product(crate::nn::bf16::Lhs::F32(xs, rows), dims);
        match crate::nn::cpu_f32(&x2, product) {
            Some(y) => y?,
            None => Ok(None),
        }
    }

    /// `x` (of `dims`) times the layer's bf16 weight (packed, or mapped as stored) plus the
    /// bias, added as the sums are stored; `None` for other weights or where the CPU has no
    /// bf16 kernel.
    fn bf16_kernel_product(
        &self,
        x: crate::nn::bf16::Lhs,
        mut dims: Vec<usize>,
    ) -> Result<Option<Tensor>> {
        let bias = match &self.bias {
            Some(bias) => Some(bias.to_dtype(DType::F32)?.to_vec1::<f32>()?),
            None => None,
        };
        let bias = bias.as_deref();
        let (y, out) = match &self.weight {
            LinearWeight::Packed(packed) => (
                crate::nn::bf16::linear_packed(x, packed, bias),
                packed.dims().0,
            ),
            LinearWeight::Mapped { weight, .. } if weight.dtype() == DType::BF16 => {
                let out = weight.shape()[0];
                let w = weight.bf16_values();
                (crate::nn::bf16::linear_stored(x, w, out, bias), out)
            }
            _ => return Ok(None),
        };
        let Some(y) = y else {
            return Ok(None);
        };
        dims.pop();
        dims.push(out);
        Tensor::from_vec(y, dims, &Device::Cpu).map(Some)
    }
}

/// `x` (`rows x inner`, f32) times a bf16 CPU `weight` (`inner x out`), computed in bf16 where
/// the CPU has the instructions ([`crate::nn::bf16`]); `None` to widen the weight instead.
fn bf16_product(x: &Tensor, weight: &Tensor) -> Result<Option<Tensor>> {
    if weight.dtype() != DType::BF16 || x.dtype() != DType::F32 || !crate::nn::bf16::available() {
        return Ok(None);
    }
    let ((rows, inner), (_, out)) = (x.dims2()?, weight.dims2()?);
    let (x, weight) = (x.contiguous()?, weight.contiguous()?);
    let (x_storage, x_layout) = x.storage_and_layout();
    let (w_storage, w_layout) = weight.storage_and_layout();
    let (Some((xa, xb)), Some((wa, wb))) =
        (x_layout.contiguous_offsets(), w_layout.contiguous_offsets())
    else {
        return Ok(None);
    };
    let (Storage::Cpu(CpuStorage::F32(xs)), Storage::Cpu(CpuStorage::BF16(ws))) =
        (&*x_storage, &*w_storage)
    else {
        return Ok(None);
    };
    let y = crate::nn::bf16::matmul(&xs[xa..xb], &ws[wa..wb], rows, inner, out);
    y.map(|y| Tensor::from_vec(y, (rows, out), x.device()))
        .transpose()
}

/// The diffusion transformers' 4x-wide tanh-GELU MLP (diffusers' `FeedForward` with
/// `gelu-approximate`: `net.0.proj`, then `net.2`), as FLUX.1 and SD3.5 use it.
#[derive(Debug, Clone)]
pub struct FeedForward {
    up: Linear,
    down: Linear,
}

impl FeedForward {
    pub fn new<'a>(width: usize, vb: impl Into<Weights<'a>>) -> Result<Self> {
        let vb = vb.into();
        Ok(Self {
            up: linear(width, 4 * width, vb.pp("net.0.proj"))?,
            down: linear(4 * width, width, vb.pp("net.2"))?,
        })
    }
}

impl Module for FeedForward {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.down
            .forward(&crate::nn::activation::gelu_tanh(&self.up.forward(x)?)?)
    }
}
