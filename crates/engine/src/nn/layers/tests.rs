use std::collections::HashMap;

use candle_core::Module;
use candle_nn::Conv2dConfig;

use super::linear::{LinearWeight, MAX_ROWS_IN_TILES, MIN_ROWS_AS_STORED};
use super::*;
use crate::nn::stored;

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
    use crate::nn::mapped::testing::{Stored, f32_bytes, write};
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
    use crate::nn::mapped::testing::{Stored, bf16_bytes, f32_bytes, write};
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
