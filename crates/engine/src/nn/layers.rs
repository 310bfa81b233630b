//! The weight-bearing layers, whose weights may be stored narrower than the activations.
//!
//! candle's CPU backend has no bf16 matmul or convolution, and its f16 ones widen to f32
//! inside every call anyway. So on CPU a half-precision model keeps its weights in that dtype
//! (half the memory) and computes in f32 ([`compute_dtype`]): each layer here widens its
//! weights to the input's dtype when the two differ. Where they match (f32 everywhere, or
//! half precision on a GPU) nothing is converted and candle's layer runs as before. The one
//! exception: bf16 linear layers on a CPU with AVX512-BF16 multiply in bf16 ([`super::bf16`]).
//!
//! An f32 weight on the CPU is read in place from the weights file's mapping where the layer
//! can multiply it as stored ([`super::mapped`]).
//!
//! A linear layer's weight may also come quantized, from a GGUF checkpoint ([`Weights`]): it
//! stays in its blocks (q8_0, q4_K, ...) and multiplies through candle's quantized matmul.

use std::sync::{Arc, OnceLock};

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{CpuStorage, DType, Device, Module, Result, Storage, Tensor};
use candle_nn::{Conv2dConfig, Init, VarBuilder};
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

use super::gemm::{self, View};
use super::mapped::{self, MappedTensor};
use super::quantized::BlockMatrix;
use super::rounded::Activations;
use super::stored;
use crate::lora::hook::{self, Tag};

/// The dtype activations are computed in for weights stored in `weights` on `device`: their
/// own on a GPU; f32 on the CPU, except f16 on candle's ops ([`super::candle_ops_only`]),
/// which then computes as a GPU does, so that the tests there prove a GPU's f16 path, every
/// tensor's dtype included (candle's CPU ops have no bf16 matrix product to do the same).
pub fn compute_dtype(weights: DType, device: &Device) -> DType {
    match (device, weights) {
        (Device::Cpu, DType::F16) if !super::candle_ops_only() => DType::F32,
        (Device::Cpu, DType::BF16) => DType::F32,
        _ => weights,
    }
}

/// `weight` in the dtype of `x` (a cheap handle clone when it already is).
pub fn like(weight: &Tensor, x: &Tensor) -> Result<Tensor> {
    if weight.dtype() == x.dtype() {
        Ok(weight.clone())
    } else if super::own_kernels(weight.device()) && x.dtype() == DType::F32 {
        widen_on_cpu(weight)
    } else {
        weight.to_dtype(x.dtype())
    }
}

/// Half-precision CPU weights as f32, in parallel chunks through `half`'s slice conversion,
/// which uses the F16C instructions when the CPU has them; candle's `to_dtype` converts one
/// element at a time in software (measured: f16 text encoding 1.97 s vs 1.29 s for bf16).
fn widen_on_cpu(weight: &Tensor) -> Result<Tensor> {
    let weight = weight.contiguous()?;
    let mut out = vec![0f32; weight.elem_count()];
    let widened = {
        let (storage, layout) = weight.storage_and_layout();
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("widen: the weight is not contiguous");
        };
        match &*storage {
            Storage::Cpu(CpuStorage::F16(data)) => {
                widen_into(&mut out, &data[start..end]);
                true
            }
            Storage::Cpu(CpuStorage::BF16(data)) => {
                widen_into(&mut out, &data[start..end]);
                true
            }
            _ => false,
        }
    };
    if widened {
        Tensor::from_vec(out, weight.shape(), weight.device())
    } else {
        weight.to_dtype(DType::F32)
    }
}

/// `src` (f16 or bf16) into `dst`, in parallel chunks.
fn widen_into<T: Sync>(dst: &mut [f32], src: &[T])
where
    [T]: HalfFloatSliceExt,
{
    const CHUNK: usize = 1 << 16;
    dst.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .for_each(|(dst, src)| src.convert_to_f32_slice(dst));
}

fn like_opt(weight: Option<&Tensor>, x: &Tensor) -> Result<Option<Tensor>> {
    weight.map(|w| like(w, x)).transpose()
}

/// Quantized weights by tensor name, beside a model's dense ones: a GGUF checkpoint's.
pub trait QuantizedWeights: Send + Sync {
    /// The weight stored under `name`, when it is stored quantized; `None` when it is stored
    /// as floats (the dense path reads it then) or not at all.
    fn quantized(&self, name: &str) -> Result<Option<QTensor>>;
}

/// What a model builder reads its weights from: a `VarBuilder` for every tensor, and, for a
/// quantized checkpoint, the linear layers' quantized weights. A `VarBuilder` converts into
/// one without them, so builders that take `impl Into<Weights>` accept either.
#[derive(Clone)]
pub struct Weights<'a> {
    vb: VarBuilder<'a>,
    quantized: Option<Arc<dyn QuantizedWeights>>,
}

impl<'a> Weights<'a> {
    pub fn new(vb: VarBuilder<'a>, quantized: Option<Arc<dyn QuantizedWeights>>) -> Self {
        Self { vb, quantized }
    }

    /// The same weights under `prefix.`.
    pub fn pp(&self, prefix: impl ToString) -> Self {
        Self {
            vb: self.vb.pp(prefix),
            quantized: self.quantized.clone(),
        }
    }

    /// The dense tensors under `prefix.`, for layers that are never quantized (norms,
    /// convolutions).
    pub fn dense(&self, prefix: impl ToString) -> VarBuilder<'a> {
        self.vb.pp(prefix)
    }

    /// The dense tensors.
    pub fn vb(&self) -> &VarBuilder<'a> {
        &self.vb
    }

    /// The quantized `(out, in)` weight of the linear layer here, if it is stored quantized.
    fn quantized_linear(&self, cin: usize, cout: usize) -> Result<Option<QTensor>> {
        let Some(quantized) = &self.quantized else {
            return Ok(None);
        };
        let name = format!("{}.weight", self.vb.prefix());
        let Some(weight) = quantized.quantized(&name)? else {
            return Ok(None);
        };
        if weight.shape().dims() != [cout, cin] {
            candle_core::bail!(
                "tensor `{name}` has shape {:?}, the config implies {:?}",
                weight.shape().dims(),
                [cout, cin]
            );
        }
        Ok(Some(weight))
    }
}

impl<'a> From<VarBuilder<'a>> for Weights<'a> {
    fn from(vb: VarBuilder<'a>) -> Self {
        Self::new(vb, None)
    }
}

/// `y = x W^T + b`.
///
/// On CPU a dense weight is kept transposed, `(in, out)` row-major, so that the GEMM reads its
/// right-hand side the way it runs fastest (see [`super::transpose`]); it is transposed once,
/// when the layer is built. Elsewhere it stays `(out, in)` as stored.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: LinearWeight,
    bias: Option<Tensor>,
    /// Where a LoRA finds this layer (`crate::lora::hook`); `None` when built by hand.
    tag: Option<Tag>,
}

#[derive(Debug, Clone)]
enum LinearWeight {
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
    /// bf16 on a CPU with a bf16 kernel, packed once into its panels ([`super::bf16::Packed`]).
    Packed(Arc<super::bf16::Packed>),
    /// `(out, in)` in GGUF blocks on a GPU, through candle's quantized matmul.
    Quantized(QMatMul),
}

impl Linear {
    fn new(weight: &Tensor, bias: Option<&Tensor>) -> Result<Self> {
        let cpu = super::own_kernels(weight.device());
        if cpu && weight.dtype() == DType::BF16 && super::tiles::available() {
            let (out, inner) = weight.dims2()?;
            let values = weight.flatten_all()?.to_vec1::<half::bf16>()?;
            let packed = super::bf16::Packed::from_stored(&values, out, inner);
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
                    super::transpose::transposed(weight)?
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
        bf16 && super::tiles::available()
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
        let lhs = super::bf16::Lhs::Rounded(rows);
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
const MAX_ROWS_IN_TILES: usize = 256;

/// Without [`stored`]'s tiles (a CPU with neither AVX2 nor AVX-512), below this many rows a
/// mapped weight is multiplied through a transposed copy: the gemm crate packs a weight as
/// stored on every call, which costs about as much as the product itself when there are few
/// rows (77 rows of 1024 -> 4096: 9.7 against 3.4 ms on the machine above).
const MIN_ROWS_AS_STORED: usize = 256;

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
    fn mapped_product_with(
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
        let cpu_f32 = super::own_kernels(x.device()) && x.dtype() == DType::F32;
        let tiles = kernel.filter(|_| cpu_f32 && rows <= MAX_ROWS_IN_TILES);
        if !cpu_f32 || (rows < MIN_ROWS_AS_STORED && tiles.is_none()) {
            let copy = match transposed.get() {
                Some(copy) => copy,
                None => {
                    let copy = super::transpose::transposed_values(weight.values(), out, inner)?;
                    // Many rows may still read the stored layout, but its pages need not stay
                    // in this process meanwhile: they are in the page cache.
                    weight.release();
                    transposed.get_or_init(|| copy)
                }
            };
            return self.dense(x, copy, true);
        }
        let x2 = x.reshape((rows, inner))?;
        let y = super::cpu_f32(&x2, |xs| match tiles {
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
pub(super) fn add_to_rows(values: &mut [f32], bias: &[f32]) {
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
fn packed_tensor(packed: &super::bf16::Packed) -> Result<Tensor> {
    Tensor::from_vec(packed.stored(), packed.dims(), &Device::Cpu)
}

impl Linear {
    /// The product with a packed bf16 weight; activations not f32 take the unpacked weight.
    fn packed_product(&self, x: &Tensor, packed: &super::bf16::Packed) -> Result<Tensor> {
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
        if !(super::own_kernels(x.device()) && x.dtype() == DType::F32) {
            return Ok(None);
        }
        let inner = x.dim(candle_core::D::Minus1)?;
        let rows = x.elem_count() / inner.max(1);
        let x2 = x.reshape((rows, inner))?;
        let dims = x.dims().to_vec();
        let product = |xs: &[f32]| self.bf16_kernel_product(super::bf16::Lhs::F32(xs, rows), dims);
        match super::cpu_f32(&x2, product) {
            Some(y) => y?,
            None => Ok(None),
        }
    }

    /// `x` (of `dims`) times the layer's bf16 weight (packed, or mapped as stored) plus the
    /// bias, added as the sums are stored; `None` for other weights or where the CPU has no
    /// bf16 kernel.
    fn bf16_kernel_product(
        &self,
        x: super::bf16::Lhs,
        mut dims: Vec<usize>,
    ) -> Result<Option<Tensor>> {
        let bias = match &self.bias {
            Some(bias) => Some(bias.to_dtype(DType::F32)?.to_vec1::<f32>()?),
            None => None,
        };
        let bias = bias.as_deref();
        let (y, out) = match &self.weight {
            LinearWeight::Packed(packed) => {
                (super::bf16::linear_packed(x, packed, bias), packed.dims().0)
            }
            LinearWeight::Mapped { weight, .. } if weight.dtype() == DType::BF16 => {
                let out = weight.shape()[0];
                let w = weight.bf16_values();
                (super::bf16::linear_stored(x, w, out, bias), out)
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
/// the CPU has the instructions ([`super::bf16`]); `None` to widen the weight instead.
fn bf16_product(x: &Tensor, weight: &Tensor) -> Result<Option<Tensor>> {
    if weight.dtype() != DType::BF16 || x.dtype() != DType::F32 || !super::bf16::available() {
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
    let y = super::bf16::matmul(&xs[xa..xb], &ws[wa..wb], rows, inner, out);
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
            .forward(&super::activation::gelu_tanh(&self.up.forward(x)?)?)
    }
}

/// RMS norm over the last dimension with a learned scale, no mean and no bias (T5's layer norm,
/// diffusers' `RMSNorm`): computed in f32, then back in the input's dtype.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

pub fn rms_norm(size: usize, eps: f64, vb: VarBuilder) -> Result<RmsNorm> {
    Ok(RmsNorm {
        weight: vb.get(size, "weight")?,
        eps,
    })
}

impl Module for RmsNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.dtype() == DType::F32 && super::own_kernels(x.device()) {
            // candle's fused kernel: one pass per row, rows in parallel (five tensor ops
            // otherwise, which Z-Image's per-head q/k norms over 4096 tokens feel).
            return candle_nn::ops::rms_norm(
                &x.contiguous()?,
                &like(&self.weight, x)?,
                self.eps as f32,
            );
        }
        let wide = x.to_dtype(DType::F32)?;
        let variance = wide.sqr()?.mean_keepdim(candle_core::D::Minus1)?;
        let normed = wide
            .broadcast_div(&(variance + self.eps)?.sqrt()?)?
            .to_dtype(x.dtype())?;
        normed.broadcast_mul(&like(&self.weight, x)?)
    }
}

/// LayerNorm over the last dimension, with a learned scale and shift.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

pub fn layer_norm(size: usize, eps: f64, vb: VarBuilder) -> Result<LayerNorm> {
    Ok(LayerNorm {
        weight: vb.get_with_hints(size, "weight", Init::Const(1.))?,
        bias: vb.get_with_hints(size, "bias", Init::Const(0.))?,
        eps,
    })
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_as(x, false)?.to_tensor()
    }
}

impl LayerNorm {
    /// The norm of `x`, as rows rounded to bf16 when `rounded` (for linear layers that
    /// [take them](Linear::takes_rounded)) and `x` is f32 on the CPU, else as a tensor. Rows
    /// in parallel on the CPU in f32 ([`super::norm::layer_norm_row`]); candle's elsewhere.
    pub fn forward_as(&self, x: &Tensor, rounded: bool) -> Result<Activations> {
        let cols = x.dim(candle_core::D::Minus1)?;
        let rows = x.elem_count() / cols.max(1);
        let cpu_f32 = super::own_kernels(x.device()) && x.dtype() == DType::F32;
        if !cpu_f32 || cols == 0 {
            let norm =
                candle_nn::LayerNorm::new(like(&self.weight, x)?, like(&self.bias, x)?, self.eps);
            return Ok(Activations::Tensor(norm.forward(x)?));
        }
        let weight = self.weight.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let bias = self.bias.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let eps = self.eps as f32;
        let normed = super::cpu_f32(x, |data| {
            let row = |r: usize, dst: &mut [f32]| {
                super::norm::layer_norm_row(&data[r * cols..][..cols], dst, &weight, &bias, eps)
            };
            if rounded {
                let rows = super::rounded::Rounded::from_f32_rows(rows, cols, row);
                return Ok(Activations::Rounded {
                    rows,
                    dims: x.dims().to_vec(),
                });
            }
            let rows_per_task = (ROW_TASK_VALUES / cols).max(1);
            let out =
                super::buffers::par_filled(rows * cols, rows_per_task * cols, |task, chunk| {
                    for (i, dst) in chunk.chunks_exact_mut(cols).enumerate() {
                        row(task * rows_per_task + i, dst);
                    }
                });
            Ok(Activations::Tensor(Tensor::from_vec(
                out,
                x.dims(),
                x.device(),
            )?))
        });
        match normed {
            Some(normed) => normed?,
            None => candle_core::bail!("layer norm: the input is not f32 on the CPU"),
        }
    }
}

/// Values of rows a parallel task of a row-wise kernel takes.
const ROW_TASK_VALUES: usize = 16 * 1024;

/// GroupNorm over `(B, C, ...)`, with a learned per-channel scale and shift.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    channels: usize,
    groups: usize,
    eps: f64,
}

pub fn group_norm(groups: usize, channels: usize, eps: f64, vb: VarBuilder) -> Result<GroupNorm> {
    if !channels.is_multiple_of(groups) {
        candle_core::bail!("GroupNorm: {channels} channels do not split into {groups} groups");
    }
    Ok(GroupNorm {
        weight: vb.get_with_hints(channels, "weight", Init::Const(1.))?,
        bias: vb.get_with_hints(channels, "bias", Init::Const(0.))?,
        channels,
        groups,
        eps,
    })
}

impl GroupNorm {
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> &Tensor {
        &self.bias
    }

    pub fn groups(&self) -> usize {
        self.groups
    }

    pub fn eps(&self) -> f64 {
        self.eps
    }
}

impl Module for GroupNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // One pass in parallel on the CPU; candle's is eight tensor ops.
        match super::norm::fused(self, x, false)? {
            Some(y) => Ok(y),
            None => self.forward_candle(x),
        }
    }
}

impl GroupNorm {
    /// candle's group norm, for comparison and for other devices and dtypes.
    pub fn forward_candle(&self, x: &Tensor) -> Result<Tensor> {
        let (weight, bias) = (like(&self.weight, x)?, like(&self.bias, x)?);
        candle_nn::GroupNorm::new(weight, bias, self.channels, self.groups, self.eps)?.forward(x)
    }
}

/// A general 2-D convolution (strides, other kernels); the stride-1 "same" ones the models
/// use most are [`super::conv::SameConv`], which has faster CPU paths.
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    config: Conv2dConfig,
    /// A bf16 CPU weight packed for the bf16 product, where the CPU has one: the layer runs as
    /// pixel rows ([`super::im2col::pixel_rows`]) times it (the UNet's stride-2 downsamplers,
    /// which candle ran in f32 on a weight widened every call).
    packed: Option<Arc<super::bf16::Packed>>,
}

pub fn conv2d(
    cin: usize,
    cout: usize,
    kernel: usize,
    config: Conv2dConfig,
    vb: VarBuilder,
) -> Result<Conv2d> {
    let mut conv = conv2d_unpacked(cin, cout, kernel, config, vb)?;
    let weight = &conv.weight;
    let plain = config.groups == 1 && config.dilation == 1;
    if plain
        && weight.dtype() == DType::BF16
        && super::own_kernels(weight.device())
        && super::bf16::available()
    {
        let values = weight.flatten_all()?.to_vec1::<half::bf16>()?;
        let inner = cin * kernel * kernel;
        let packed = super::bf16::Packed::from_stored(&values, cout, inner);
        conv.packed = Some(Arc::new(packed));
    }
    Ok(conv)
}

/// [`conv2d`] without the bf16 packing, for a layer that lays its weight out itself
/// ([`super::conv::SameConv`]).
pub fn conv2d_unpacked(
    cin: usize,
    cout: usize,
    kernel: usize,
    config: Conv2dConfig,
    vb: VarBuilder,
) -> Result<Conv2d> {
    let layer = candle_nn::conv2d(cin, cout, kernel, config, vb)?;
    Ok(Conv2d {
        weight: layer.weight().clone(),
        bias: layer.bias().cloned(),
        config,
        packed: None,
    })
}

impl Conv2d {
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let on_cpu_f32 = super::own_kernels(x.device()) && x.dtype() == DType::F32 && x.rank() == 4;
        if let Some(packed) = &self.packed
            && on_cpu_f32
        {
            // The pixel rows rounded to bf16 as they are made, the bias where the sums start.
            return self.pixel_rows_forward(x, |image, dims, window, bias| {
                let pixels = window.out(dims.1) * window.out(dims.2);
                let inner = dims.0 * window.kernel * window.kernel;
                let rows = super::rounded::Rounded::from_f32_rows(pixels, inner, |p, row| {
                    super::im2col::pixel_row(image, dims, window, p, row)
                });
                let lhs = super::bf16::Lhs::Rounded(&rows);
                super::bf16::linear_packed(lhs, packed, bias).ok_or_else(|| {
                    candle_core::Error::Msg(
                        "conv2d: the bf16 product is not available on this CPU".into(),
                    )
                })
            });
        }
        let plain = self.config.groups == 1 && self.config.dilation == 1;
        if on_cpu_f32 && plain && self.weight.dtype() == DType::F32 {
            // candle's CPU conv2d multiplies small tiles one at a time: the UNet's stride-2
            // downsamplers took 0.6 s of an SDXL call at 1024x1024 that one product does in
            // a fraction of it.
            let (storage, layout) = self.weight.storage_and_layout();
            let Storage::Cpu(storage) = &*storage else {
                candle_core::bail!("conv2d: the weight is not on the CPU");
            };
            let values = super::conv::contiguous_f32(storage, layout)?;
            let out = self.weight.dim(0)?;
            let inner = values.len() / out.max(1);
            return self.pixel_rows_forward(x, |image, (channels, height, width), window, bias| {
                let rows = super::im2col::pixel_rows(image, channels, height, width, window);
                let pixels = rows.len() / inner.max(1);
                let rows = View::row_major(&rows, pixels, inner, inner);
                let weight = View::row_major(values, out, inner, inner);
                let mut y = gemm::times_transposed(rows, weight, rayon::current_num_threads());
                if let Some(bias) = bias {
                    add_to_rows(&mut y, bias);
                }
                Ok(y)
            });
        }
        let (weight, bias) = (like(&self.weight, x)?, like_opt(self.bias.as_ref(), x)?);
        candle_nn::Conv2d::new(weight, bias, self.config).forward(x)
    }
}

impl Conv2d {
    /// Each image's pixel rows ([`super::im2col::pixel_rows`]) times the weight plus the bias
    /// through `product(image, (channels, height, width), window, bias)` (`pixels x out`),
    /// back to channels first.
    fn pixel_rows_forward(
        &self,
        x: &Tensor,
        product: impl Fn(
            &[f32],
            (usize, usize, usize),
            super::im2col::Window,
            Option<&[f32]>,
        ) -> Result<Vec<f32>>,
    ) -> Result<Tensor> {
        let (batch, channels, height, width) = x.dims4()?;
        let out = self.weight.dim(0)?;
        let window = super::im2col::Window {
            kernel: self.weight.dim(3)?,
            stride: self.config.stride,
            padding: self.config.padding,
        };
        let (out_h, out_w) = (window.out(height), window.out(width));
        let bias = match &self.bias {
            Some(bias) => Some(bias.to_dtype(DType::F32)?.to_vec1::<f32>()?),
            None => None,
        };
        let dims = (channels, height, width);
        let maps = super::cpu_f32(x, |images| {
            let image_len = (channels * height * width).max(1);
            images
                .chunks_exact(image_len)
                .map(|image| {
                    let y = product(image, dims, window, bias.as_deref())?;
                    let pixels = Tensor::from_vec(y, (1, out_h * out_w, out), &Device::Cpu)?;
                    super::transpose::transposed_items(&pixels)
                })
                .collect::<Result<Vec<_>>>()
        });
        let Some(maps) = maps else {
            candle_core::bail!("conv2d: the input is not f32 on the CPU");
        };
        Tensor::cat(&maps??, 0)?.reshape((batch, out, out_h, out_w))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        let diff = (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap()).unwrap();
        diff.abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    /// One layer of each kind built from `vb`.
    fn layers(vb: &VarBuilder) -> Result<(Linear, LayerNorm, GroupNorm, Conv2d)> {
        let config = Conv2dConfig {
            stride: 2,
            padding: 1,
            ..Default::default()
        };
        Ok((
            linear(6, 5, vb.pp("lin"))?,
            layer_norm(6, 1e-5, vb.pp("ln"))?,
            group_norm(2, 6, 1e-6, vb.pp("gn"))?,
            conv2d(6, 4, 3, config, vb.pp("conv"))?,
        ))
    }

    /// A convolution through pixel rows computes candle's convolution: an f32 one of the
    /// input (one product with the weight as stored, summed in another order), a bf16 one with
    /// a packed weight of the bf16-rounded input. Strided and not, with and without padding,
    /// SD3's 2x2 patches, ragged sizes, two images.
    #[test]
    fn pixel_row_convolutions_compute_what_candle_does() -> Result<()> {
        for dtype in [DType::F32, DType::BF16] {
            if dtype == DType::BF16 && !super::super::bf16::available() {
                eprintln!("skipped bf16: this CPU has no bf16 product");
                continue;
            }
            for (cin, cout, kernel, stride, padding, side) in [
                (6, 40, 3, 2, 1, 9),
                (33, 7, 3, 1, 1, 5),
                (4, 3, 1, 2, 0, 8),
                (5, 9, 2, 2, 0, 8),
            ] {
                let map = candle_nn::VarMap::new();
                let vb = VarBuilder::from_varmap(&map, dtype, &Device::Cpu);
                let config = Conv2dConfig {
                    stride,
                    padding,
                    ..Default::default()
                };
                let conv = conv2d(cin, cout, kernel, config, vb.pp("c"))?;
                assert_eq!(conv.packed.is_some(), dtype == DType::BF16);
                let x = Tensor::randn(0f32, 1., (2, cin, side, side + 1), &Device::Cpu)?;
                let ours = conv.forward(&x)?;
                let input = x.to_dtype(dtype)?.to_dtype(DType::F32)?;
                let weight = conv.weight.to_dtype(DType::F32)?;
                let bias = conv
                    .bias
                    .as_ref()
                    .map(|b| b.to_dtype(DType::F32))
                    .transpose()?;
                let theirs = candle_nn::Conv2d::new(weight, bias, config).forward(&input)?;
                assert_eq!(ours.dims(), theirs.dims());
                let taps = (cin * kernel * kernel) as f32;
                let diff = max_diff(&ours, &theirs);
                // Only the order of the f32 sums differs (bf16 products sum in longer runs).
                let per_tap = if dtype == DType::F32 { 1e-6 } else { 1e-5 };
                assert!(
                    diff < per_tap * taps.sqrt() + 1e-6,
                    "{dtype:?} {cin}->{cout} k{kernel} s{stride}: {diff}"
                );
            }
        }
        Ok(())
    }

    /// The transposed CPU weight computes what candle's layer computes, for any number of
    /// leading dimensions, with and without a bias.
    #[test]
    fn linear_matches_candles_layer() -> Result<()> {
        let weight = Tensor::randn(0f32, 1., (5, 6), &Device::Cpu)?;
        let bias = Tensor::randn(0f32, 1., 5, &Device::Cpu)?;
        for bias in [None, Some(&bias)] {
            let ours = Linear::new(&weight, bias)?;
            let theirs = candle_nn::Linear::new(weight.clone(), bias.cloned());
            for dims in [&[4, 6][..], &[2, 3, 6], &[2, 1, 3, 6]] {
                let x = Tensor::randn(0f32, 1., dims, &Device::Cpu)?;
                let (a, b) = (ours.forward(&x)?, theirs.forward(&x)?);
                assert_eq!(a.dims(), b.dims());
                assert!(max_diff(&a, &b) < 1e-5, "{dims:?}");
            }
        }
        Ok(())
    }

    /// Linear layers built from an f32 safetensors file read their weights in place and compute
    /// what layers holding the same weights in memory do: through each register tile this CPU
    /// has, through gemm as stored, and, without tiles, few rows through a transposed copy
    /// made on first use. A weight misaligned for f32 in the file is read into memory instead.
    #[test]
    fn mapped_weights_compute_what_loaded_ones_do() -> Result<()> {
        use super::mapped::testing::{Stored, f32_bytes, write};
        use crate::weights::{NameScheme, Variant, build_component};
        let dir = tempfile::tempdir()?;
        let values = |n: usize, seed: f32| -> Vec<f32> {
            (0..n).map(|i| ((i as f32 + seed) * 0.37).sin()).collect()
        };
        let (w, b, odd) = (values(30, 1.0), values(5, 2.0), values(30, 3.0));
        // A 3-value f16 tensor first puts everything after it 2 bytes off f32 alignment.
        let f16 = vec![0u8; 6];
        let stored = [
            Stored("lin.weight", "F32", vec![5, 6], f32_bytes(&w)),
            Stored("lin.bias", "F32", vec![5], f32_bytes(&b)),
            Stored("pad", "F16", vec![3], f16),
            Stored("odd.weight", "F32", vec![5, 6], f32_bytes(&odd)),
        ];
        write(&dir.path().join("model.safetensors"), &stored);
        let device = Device::Cpu;
        let (lin, misaligned) = build_component(
            dir.path(),
            Variant::Auto,
            NameScheme::Exact,
            DType::F32,
            &device,
            |vb| {
                Ok((
                    linear(6, 5, vb.pp("lin"))?,
                    linear_no_bias(6, 5, vb.pp("odd"))?,
                ))
            },
        )
        .map_err(candle_core::Error::wrap)?;
        let LinearWeight::Mapped { weight, transposed } = &lin.weight else {
            panic!("the aligned f32 weight is read in place");
        };
        assert!(matches!(misaligned.weight, LinearWeight::Dense { .. }));

        let loaded = Linear::new(
            &Tensor::from_vec(w, (5, 6), &device)?,
            Some(&Tensor::new(b, &device)?),
        )?;
        let product = |x: &Tensor, kernel| lin.mapped_product_with(x, weight, transposed, kernel);
        // Past the tiles' rows: gemm reads the weight as stored.
        let many = Tensor::randn(0f32, 1., (2, MAX_ROWS_IN_TILES / 2 + 3, 6), &device)?;
        let some = Tensor::randn(0f32, 1., (2, MIN_ROWS_AS_STORED / 2 + 3, 6), &device)?;
        let few = Tensor::randn(0f32, 1., (3, 6), &device)?;
        for kernel in stored::Kernel::supported() {
            for x in [&many, &some, &few] {
                assert!(max_diff(&product(x, Some(kernel))?, &loaded.forward(x)?) < 1e-5);
            }
        }
        assert!(
            transposed.get().is_none(),
            "no copy where the CPU has tiles"
        );
        // Without tiles, gemm as stored from `MIN_ROWS_AS_STORED` rows, a copy below.
        assert!(max_diff(&product(&some, None)?, &loaded.forward(&some)?) < 1e-5);
        assert!(transposed.get().is_none(), "no copy for many rows");
        let first = product(&few, None)?;
        assert!(max_diff(&first, &loaded.forward(&few)?) < 1e-5);
        assert!(transposed.get().is_some());
        assert_eq!(max_diff(&first, &product(&few, None)?), 0.0);
        assert!(max_diff(&product(&some, None)?, &loaded.forward(&some)?) < 1e-5);
        // The layer itself takes this CPU's path.
        assert_eq!(max_diff(&lin.forward(&few)?, &lin.forward(&few)?), 0.0);
        assert!(max_diff(&lin.forward(&many)?, &loaded.forward(&many)?) < 1e-5);
        let odd = Linear::new(&Tensor::from_vec(odd, (5, 6), &device)?, None)?;
        assert_eq!(
            max_diff(&misaligned.forward(&few)?, &odd.forward(&few)?),
            0.0
        );
        Ok(())
    }

    /// With `--dtype bf16` on a CPU with the bf16 kernel, a bf16 weight in the file is read in
    /// place and multiplied as stored, to the bit what the loaded (transposed) layer computes;
    /// an f32 weight in the same file is converted as before. Elsewhere both are loaded.
    #[test]
    fn bf16_weights_are_read_in_place_where_the_cpu_multiplies_bf16() -> Result<()> {
        use super::mapped::testing::{Stored, bf16_bytes, f32_bytes, write};
        use crate::weights::{NameScheme, Variant, build_component};
        let dir = tempfile::tempdir()?;
        let values = |n: usize, seed: f32| -> Vec<f32> {
            (0..n).map(|i| ((i as f32 + seed) * 0.37).sin()).collect()
        };
        let (w, b, other) = (values(40 * 64, 1.0), values(40, 2.0), values(40 * 64, 3.0));
        let stored = [
            Stored("lin.weight", "BF16", vec![40, 64], bf16_bytes(&w)),
            Stored("lin.bias", "BF16", vec![40], bf16_bytes(&b)),
            Stored("f32.weight", "F32", vec![40, 64], f32_bytes(&other)),
        ];
        write(&dir.path().join("model.safetensors"), &stored);
        let device = Device::Cpu;
        let (lin, converted) = build_component(
            dir.path(),
            Variant::Auto,
            NameScheme::Exact,
            DType::BF16,
            &device,
            |vb| {
                Ok((
                    linear(64, 40, vb.pp("lin"))?,
                    linear_no_bias(64, 40, vb.pp("f32"))?,
                ))
            },
        )
        .map_err(candle_core::Error::wrap)?;
        assert!(!matches!(converted.weight, LinearWeight::Mapped { .. }));
        assert_eq!(converted.weight_dtype(), Some(DType::BF16));
        let in_place = matches!(&lin.weight, LinearWeight::Mapped { weight, .. }
            if weight.dtype() == DType::BF16);
        assert_eq!(in_place, super::super::bf16::available());
        let to_bf16 = |v: Vec<f32>, shape: &[usize]| {
            Tensor::from_vec(v, shape, &device).and_then(|t| t.to_dtype(DType::BF16))
        };
        let loaded = Linear::new(&to_bf16(w, &[40, 64])?, Some(&to_bf16(b, &[40])?))?;
        for rows in [1, 77, 300] {
            let x = Tensor::randn(0f32, 1., (rows, 64), &device)?;
            assert_eq!(max_diff(&lin.forward(&x)?, &loaded.forward(&x)?), 0.0);
        }
        Ok(())
    }

    /// A weight stored quantized stays so and computes what its dequantized values do, up to
    /// the 8-bit rounding of the activations where the CPU multiplies q8_0 in integers; one of
    /// the wrong shape is refused by name.
    #[test]
    fn a_quantized_linear_matches_its_dequantized_weight() -> Result<()> {
        use candle_core::quantized::GgmlDType;
        struct Stored(Tensor);
        impl QuantizedWeights for Stored {
            fn quantized(&self, name: &str) -> Result<Option<QTensor>> {
                match name {
                    "lin.weight" => QTensor::quantize(&self.0, GgmlDType::Q8_0).map(Some),
                    _ => Ok(None),
                }
            }
        }
        let weight = Tensor::randn(0f32, 1., (64, 128), &Device::Cpu)?;
        let bias = Tensor::randn(0f32, 1., 64, &Device::Cpu)?;
        let dense: HashMap<String, Tensor> = [
            ("lin.weight".to_string(), weight.clone()),
            ("lin.bias".to_string(), bias.clone()),
        ]
        .into();
        let vb = VarBuilder::from_tensors(dense, DType::F32, &Device::Cpu);
        let weights = Weights::new(vb, Some(Arc::new(Stored(weight.clone()))));
        let quantized = linear(128, 64, weights.pp("lin"))?;
        assert!(quantized.is_quantized());
        let rounded = QTensor::quantize(&weight, GgmlDType::Q8_0)?.dequantize(&Device::Cpu)?;
        let reference = Linear::new(&rounded, Some(&bias))?;
        assert!(!reference.is_quantized());
        let x = Tensor::randn(0f32, 1., (2, 3, 128), &Device::Cpu)?;
        let (a, b) = (quantized.forward(&x)?, reference.forward(&x)?);
        assert_eq!(a.dims(), [2, 3, 64]);
        // Outputs are ~N(0, 128); 8-bit activations move them by a few hundredths.
        let diff = max_diff(&a, &b);
        assert!(diff < 0.5, "{diff}");
        let err = linear(64, 128, weights.pp("lin")).unwrap_err().to_string();
        assert!(
            err.contains("lin.weight") && err.contains("[128, 64]"),
            "{err}"
        );
        Ok(())
    }

    /// The fused CPU path is the definition: `x / sqrt(mean(x^2) + eps) * weight`, per row,
    /// also for a non-contiguous view.
    /// Our LayerNorm computes the definition (in f64 here) within f32's rounding, rows far
    /// from zero included, where candle's one-pass variance (of values and their squares) is
    /// over 30 times further off; it matches candle's off f32, which it falls back to.
    #[test]
    fn layer_norm_matches_its_definition() -> Result<()> {
        let (rows, cols) = (37, 300);
        let device = Device::Cpu;
        let values: Vec<f32> = super::super::testing::random(rows * cols, 11)
            .iter()
            .enumerate()
            .map(|(i, v)| v + (i / cols) as f32 * 0.5)
            .collect();
        let weight = super::super::testing::random(cols, 12);
        let bias = super::super::testing::random(cols, 13);
        let mut want = Vec::new();
        for row in values.chunks(cols) {
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / cols as f64;
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / cols as f64;
            let rstd = 1.0 / (var + 1e-5).sqrt();
            for (k, &v) in row.iter().enumerate() {
                want.push(((v as f64 - mean) * rstd * weight[k] as f64 + bias[k] as f64) as f32);
            }
        }
        let want = Tensor::from_vec(want, (rows, cols), &device)?;
        let x = Tensor::from_vec(values, (rows, cols), &device)?;
        let (weight, bias) = (Tensor::new(weight, &device)?, Tensor::new(bias, &device)?);
        let ours = LayerNorm {
            weight: weight.clone(),
            bias: bias.clone(),
            eps: 1e-5,
        };
        let diff = max_diff(&ours.forward(&x)?, &want);
        assert!(diff < 1e-5, "{diff}");
        let candle = candle_nn::LayerNorm::new(weight.clone(), bias.clone(), 1e-5);
        let theirs = max_diff(&candle.forward(&x)?, &want);
        assert!(theirs > 30.0 * diff);
        let half = x.to_dtype(DType::BF16)?;
        let candle = candle_nn::LayerNorm::new(
            weight.to_dtype(DType::BF16)?,
            bias.to_dtype(DType::BF16)?,
            1e-5,
        );
        assert_eq!(
            max_diff(&ours.forward(&half)?, &candle.forward(&half)?),
            0.0
        );
        Ok(())
    }

    #[test]
    fn rms_norm_matches_its_definition() -> Result<()> {
        let weight = Tensor::randn(0f32, 1., 8, &Device::Cpu)?;
        let norm = RmsNorm {
            weight: weight.clone(),
            eps: 1e-6,
        };
        let x = Tensor::randn(0f32, 2., (3, 8, 5), &Device::Cpu)?.transpose(1, 2)?;
        let mean_square = x.sqr()?.mean_keepdim(candle_core::D::Minus1)?;
        let expected = x
            .broadcast_div(&(mean_square + 1e-6)?.sqrt()?)?
            .broadcast_mul(&weight)?;
        assert!(max_diff(&norm.forward(&x)?, &expected) < 1e-5);
        Ok(())
    }

    #[test]
    fn widening_matches_candles_conversion() -> Result<()> {
        let x = Tensor::zeros(1, DType::F32, &Device::Cpu)?;
        let full = Tensor::randn(0f32, 3., (3, 70_001), &Device::Cpu)?;
        for dtype in [DType::F16, DType::BF16] {
            // A transposed (non-contiguous) view too.
            for narrow in [full.to_dtype(dtype)?, full.to_dtype(dtype)?.t()?] {
                let ours = like(&narrow, &x)?;
                assert_eq!(ours.dtype(), DType::F32);
                assert_eq!(ours.dims(), narrow.dims());
                assert_eq!(max_diff(&ours, &narrow.to_dtype(DType::F32)?), 0.0);
            }
        }
        Ok(())
    }

    #[test]
    fn half_precision_on_cpu_computes_in_f32() {
        assert_eq!(compute_dtype(DType::BF16, &Device::Cpu), DType::F32);
        assert_eq!(compute_dtype(DType::F16, &Device::Cpu), DType::F32);
        assert_eq!(compute_dtype(DType::F32, &Device::Cpu), DType::F32);
    }

    #[test]
    fn bf16_weights_widen_to_f32_activations() -> Result<()> {
        let shapes: [(&str, &[usize]); 8] = [
            ("lin.weight", &[5, 6]),
            ("lin.bias", &[5]),
            ("ln.weight", &[6]),
            ("ln.bias", &[6]),
            ("gn.weight", &[6]),
            ("gn.bias", &[6]),
            ("conv.weight", &[4, 6, 3, 3]),
            ("conv.bias", &[4]),
        ];
        let full: HashMap<String, Tensor> = shapes
            .iter()
            .map(|(name, shape)| {
                let t = Tensor::randn(0.5f32, 1., *shape, &Device::Cpu)?;
                Ok((name.to_string(), t))
            })
            .collect::<Result<_>>()?;
        let narrow = full
            .iter()
            .map(|(name, t)| Ok((name.clone(), t.to_dtype(DType::BF16)?)))
            .collect::<Result<HashMap<_, _>>>()?;
        let f32_layers = layers(&VarBuilder::from_tensors(full, DType::F32, &Device::Cpu))?;
        let bf16_layers = layers(&VarBuilder::from_tensors(narrow, DType::BF16, &Device::Cpu))?;
        // Kept in bf16: as is, or packed for the bf16 kernel where the CPU has one.
        match &bf16_layers.0.weight {
            LinearWeight::Dense { weight, .. } => assert_eq!(weight.dtype(), DType::BF16),
            LinearWeight::Packed(_) => assert!(super::super::bf16::available()),
            _ => panic!("a dense linear"),
        }

        let tokens = Tensor::randn(0f32, 1., (2, 3, 6), &Device::Cpu)?;
        let image = Tensor::randn(0f32, 1., (1, 6, 8, 8), &Device::Cpu)?;
        let pairs = [
            (
                f32_layers.0.forward(&tokens)?,
                bf16_layers.0.forward(&tokens)?,
            ),
            (
                f32_layers.1.forward(&tokens)?,
                bf16_layers.1.forward(&tokens)?,
            ),
            (
                f32_layers.2.forward(&image)?,
                bf16_layers.2.forward(&image)?,
            ),
            (
                f32_layers.3.forward(&image)?,
                bf16_layers.3.forward(&image)?,
            ),
        ];
        for (full, narrow) in pairs {
            assert_eq!(narrow.dtype(), DType::F32);
            assert_eq!(narrow.dims(), full.dims());
            // bf16 keeps 8 significant bits: the outputs differ by the weights' rounding only.
            let diff = max_diff(&full, &narrow);
            assert!(diff > 0.0, "the bf16 weights were not rounded");
            assert!(diff < 0.1, "bf16 weights moved the output by {diff}");
        }
        Ok(())
    }
}
