//! Activations rounded to bf16 once, by the layer that makes them, for the linear layers that
//! multiply them in bf16 ([`super::bf16`]).
//!
//! Such a product reads its activations as bf16 rows. Given f32, it first rounded them into
//! rows of its own: a pass reading four bytes and writing two per value, after the producer
//! had written the four, and the three projections of a self-attention each rounded the same
//! input again (the rounding alone was 6% of an SDXL bf16 UNet call on the Xeon of
//! bench/RESULTS.md). A LayerNorm, a gated activation or attention's heads can instead write
//! their rows straight in bf16, half the bytes, rounded as the product would have rounded
//! them (nearest even): the same sums.

use candle_core::{Device, Result, Tensor};

use super::buffers::Lines;
use super::tiles::{BLOCK, STEP};

/// Bytes of rows a parallel task rounds.
const TASK_BYTES: usize = 64 * 1024;

/// `rows` rows of `inner` values rounded to bf16, each `depth` values long (`inner` rounded up
/// to a whole step of the tiles, the rest zeros), and zero rows up to a whole block of them,
/// starting on a cache line: the left operand of [`super::bf16`]'s tiles as they read it.
pub struct Rounded {
    values: Lines<u16>,
    rows: usize,
    inner: usize,
    depth: usize,
}

impl std::fmt::Debug for Rounded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Rounded({}x{} bf16)", self.rows, self.inner)
    }
}

impl Rounded {
    /// The rows `row` writes in f32 (the row's index, `inner` values to fill), each rounded
    /// as soon as it is written, rows in parallel.
    pub fn from_f32_rows(
        rows: usize,
        inner: usize,
        row: impl Fn(usize, &mut [f32]) + Sync,
    ) -> Self {
        thread_local! {
            static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        Self::from_rows(rows, inner, |r, dst| {
            SCRATCH.with_borrow_mut(|scratch| {
                scratch.resize(inner, 0.0);
                row(r, scratch);
                super::bf16::round_into(scratch, dst);
            })
        })
    }

    /// `x` (`rows x inner`, row-major) rounded.
    pub fn round(x: &[f32], rows: usize, inner: usize) -> Self {
        assert_eq!(x.len(), rows * inner, "activations size");
        Self::from_rows(rows, inner, |r, dst| {
            super::bf16::round_into(&x[r * inner..][..inner], dst)
        })
    }

    /// The rows `row` writes in bf16 bits (the row's index, its `inner` zeros to write over).
    fn from_rows(rows: usize, inner: usize, row: impl Fn(usize, &mut [u16]) + Sync) -> Self {
        let depth = inner.div_ceil(STEP) * STEP;
        let len = rows.div_ceil(BLOCK) * BLOCK * depth;
        let rows_per_task = (TASK_BYTES / (2 * depth).max(1)).max(1);
        let values = Lines::par_filled(len, rows_per_task * depth, |task, chunk| {
            for (i, dst) in chunk.chunks_exact_mut(depth).enumerate() {
                let r = task * rows_per_task + i;
                if r < rows {
                    row(r, &mut dst[..inner]);
                }
            }
        });
        Self {
            values,
            rows,
            inner,
            depth,
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn inner(&self) -> usize {
        self.inner
    }

    /// Values a row takes, padding included (a multiple of [`STEP`]).
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// The rows' bits, [`Self::depth`] apart, padding rows included.
    pub fn bits(&self) -> &[u16] {
        &self.values
    }

    /// The values as f32 `rows x inner` (exact: every bf16 value is an f32), for a product
    /// the tiles do not run.
    pub fn widened(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.rows * self.inner);
        for r in 0..self.rows {
            let row = &self.values[r * self.depth..][..self.inner];
            out.extend(row.iter().map(|&b| f32::from_bits(u32::from(b) << 16)));
        }
        out
    }
}

/// What a linear layer multiplies: activations as a tensor, or rows already rounded to bf16
/// (with the tensor's dimensions, the last being the rows' length) for a layer that
/// [`takes them`](super::layers::Linear::takes_rounded).
#[derive(Debug)]
pub enum Activations {
    Tensor(Tensor),
    Rounded { rows: Rounded, dims: Vec<usize> },
}

impl Activations {
    /// The activations as an f32 CPU tensor where they are rounded rows.
    pub fn to_tensor(&self) -> Result<Tensor> {
        match self {
            Self::Tensor(x) => Ok(x.clone()),
            Self::Rounded { rows, dims } => {
                Tensor::from_vec(rows.widened(), dims.as_slice(), &Device::Cpu)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::layers::{self, LayerNorm};
    use crate::nn::testing::random;
    use candle_core::{DType, Module};
    use candle_nn::VarBuilder;
    use std::collections::HashMap;

    fn tensor(values: Vec<f32>, dims: &[usize]) -> Tensor {
        Tensor::from_vec(values, dims, &Device::Cpu).unwrap()
    }

    /// The rows `activations` holds, which must be rounded ones.
    fn bits(activations: &Activations) -> &[u16] {
        match activations {
            Activations::Rounded { rows, .. } => rows.bits(),
            Activations::Tensor(_) => panic!("not rounded"),
        }
    }

    /// `x` rounded as a product would round it.
    fn rounded(x: &Tensor) -> Rounded {
        let inner = x.dims().last().copied().unwrap();
        let values = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        Rounded::round(&values, values.len() / inner, inner)
    }

    /// A LayerNorm, a gated GELU and attention's heads written as bf16 rows hold what rounding
    /// their f32 outputs gives, to the bit, and as a tensor they stay f32.
    #[test]
    fn producers_round_what_they_would_write() -> Result<()> {
        let (rows, cols) = (70, 100);
        let x = tensor(random(rows * cols, 1), &[2, rows / 2, cols]);
        let mut weights = HashMap::new();
        weights.insert("weight".to_string(), tensor(random(cols, 2), &[cols]));
        weights.insert("bias".to_string(), tensor(random(cols, 3), &[cols]));
        let vb = VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
        let norm: LayerNorm = layers::layer_norm(cols, 1e-5, vb)?;
        let normed = norm.forward(&x)?;
        assert_eq!(bits(&norm.forward_as(&x, true)?), rounded(&normed).bits());
        assert_eq!(norm.forward_as(&x, true)?.to_tensor()?.dims(), x.dims());

        let projected = tensor(random(rows * 2 * cols, 4), &[rows, 2 * cols]);
        let (value, gate) = (
            projected.narrow(1, 0, cols)?,
            projected.narrow(1, cols, cols)?,
        );
        let gated = crate::nn::activation::gelu_erf_mul(&gate, &value)?;
        let as_rows = crate::nn::activation::gelu_erf_mul_as(&gate, &value, true)?;
        assert_eq!(bits(&as_rows), rounded(&gated).bits());

        let heads = tensor(random(2 * 3 * 33 * 8, 5), &[2, 3, 33, 8]);
        let tokens = crate::nn::transpose::heads_to_tokens(&heads)?;
        let as_rows = crate::nn::transpose::heads_to_tokens_as(&heads, true)?;
        assert_eq!(bits(&as_rows), rounded(&tokens).bits());
        assert_eq!(as_rows.to_tensor()?.dims(), tokens.dims());
        Ok(())
    }

    /// A linear layer multiplies rounded rows as it multiplies the f32 rows they came from
    /// (to the bit where its bf16 weight runs on the bf16 kernels, which round them the same way),
    /// and one that does not take them (f32 weights) multiplies their widened values.
    #[test]
    fn linear_layers_multiply_rounded_rows_as_the_f32_ones() -> Result<()> {
        let (rows, inner, out) = (45, 1000, 70);
        let x = tensor(random(rows * inner, 6), &[rows, inner]);
        for dtype in [DType::BF16, DType::F32] {
            let mut weights = HashMap::new();
            weights.insert(
                "weight".to_string(),
                tensor(random(out * inner, 7), &[out, inner]),
            );
            weights.insert("bias".to_string(), tensor(random(out, 8), &[out]));
            let vb = VarBuilder::from_tensors(weights, dtype, &Device::Cpu);
            let linear = layers::linear(inner, out, vb)?;
            let bf16 = crate::nn::tiles::available();
            assert_eq!(
                linear.takes_rounded(),
                bf16 && dtype == DType::BF16,
                "{dtype:?}"
            );
            let as_rows = Activations::Rounded {
                rows: rounded(&x),
                dims: vec![rows, inner],
            };
            let got = linear.forward_activations(&as_rows)?;
            let want = match linear.takes_rounded() {
                true => linear.forward(&x)?,
                false => linear.forward(&as_rows.to_tensor()?)?,
            };
            assert_eq!(got.dims(), &[rows, out]);
            let (got, want) = (
                got.flatten_all()?.to_vec1::<f32>()?,
                want.flatten_all()?.to_vec1::<f32>()?,
            );
            assert_eq!(got, want, "{dtype:?}");
        }
        Ok(())
    }

    #[test]
    fn rows_are_rounded_nearest_even_and_padded_with_zeros() {
        for (rows, inner) in [(1, 1), (3, 31), (33, 64), (77, 100), (0, 8)] {
            let x = random(rows * inner, 3);
            let rounded = Rounded::round(&x, rows, inner);
            let depth = inner.div_ceil(STEP) * STEP;
            assert_eq!(
                (rounded.rows(), rounded.inner(), rounded.depth()),
                (rows, inner, depth)
            );
            assert_eq!(rounded.bits().len(), rows.div_ceil(BLOCK) * BLOCK * depth);
            assert_eq!(rounded.bits().as_ptr() as usize % 64, 0);
            for (r, row) in rounded.bits().chunks_exact(depth).enumerate() {
                for (k, &bits) in row.iter().enumerate() {
                    let expected = match r < rows && k < inner {
                        true => half::bf16::from_f32(x[r * inner + k]).to_bits(),
                        false => 0,
                    };
                    assert_eq!(bits, expected, "row {r}, value {k}");
                }
            }
            let widened: Vec<f32> = x
                .iter()
                .map(|&v| half::bf16::from_f32(v).to_f32())
                .collect();
            assert_eq!(rounded.widened(), widened);
            let made = Rounded::from_f32_rows(rows, inner, |r, dst| {
                dst.copy_from_slice(&x[r * inner..][..inner])
            });
            assert_eq!(made.bits(), rounded.bits());
        }
    }
}
