//! Micro-benchmarks of the engine's hot kernels, so that regressions show:
//! `cargo bench -p seedbed-engine --bench kernels` (add a filter such as `conv3x3` to pick).
//! Shapes are the SD-Turbo ones at 512x512 where they run in well under a second, and the
//! tiny fixture UNet for a whole step. Not part of CI's timing: speed lives here and in
//! `seedbed bench`, never in tests.

// The `gemm` crate is called directly to compare operand layouts.
#![allow(unsafe_code)]

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{VarBuilder, VarMap};
use criterion::{Criterion, criterion_group, criterion_main};
use seedbed_engine::nn::attention::{scaled_dot_product, scaled_dot_product_bf16};
use seedbed_engine::nn::conv::Conv3x3;
use seedbed_engine::nn::norm::GroupNormSilu;
use seedbed_engine::nn::tiles::Unit;
use seedbed_engine::nn::{im2col, winograd};
use seedbed_engine::sd::unet::UNet;
use seedbed_engine::text::clip::tokenizer::ClipTokenizer;
use seedbed_engine::weights::Variant;

/// The repository's `fixtures/` folder (the tiny models and the CLIP tokenizer).
fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn random_vb(map: &VarMap) -> VarBuilder<'static> {
    VarBuilder::from_varmap(map, DType::F32, &Device::Cpu)
}

fn conv3x3(c: &mut Criterion) {
    let mut group = c.benchmark_group("conv3x3");
    group.sample_size(10);
    // (channels, side) at 512x512: the UNet's first and third levels (Winograd and im2col
    // paths), and the VAE decoder's 256x256 level.
    for (channels, side) in [(320, 64), (1280, 16), (128, 256)] {
        let map = VarMap::new();
        let conv = Conv3x3::new(3, channels, channels, random_vb(&map)).unwrap();
        let x = Tensor::randn(0f32, 1., (1, channels, side, side), &Device::Cpu).unwrap();
        group.bench_function(format!("ours c{channels} {side}x{side}"), |b| {
            b.iter(|| conv.forward(&x).unwrap())
        });
        group.bench_function(format!("candle c{channels} {side}x{side}"), |b| {
            b.iter(|| conv.forward_candle(&x).unwrap())
        });
        // The same layer with a bf16 weight: AMX tiles where the CPU has them.
        if seedbed_engine::nn::amx::available() {
            let map = VarMap::new();
            let vb = VarBuilder::from_varmap(&map, DType::BF16, &Device::Cpu);
            let conv = Conv3x3::new(3, channels, channels, vb).unwrap();
            group.bench_function(format!("bf16 tiles c{channels} {side}x{side}"), |b| {
                b.iter(|| conv.forward(&x).unwrap())
            });
        }
    }
    // The per-call weight transform of the largest Winograd layer (the VAE's 512 channels),
    // for any input and for the phases of a doubled one.
    let weight: Vec<f32> = (0..512 * 512 * 9).map(|i| (i as f32).sin()).collect();
    group.bench_function("winograd weight transform c512", |b| {
        b.iter(|| winograd::Filters::new(&weight, 512, 512))
    });
    group.bench_function("winograd weight transform c512 by phases", |b| {
        b.iter(|| winograd::Filters::by_phases(&weight, 512, 512))
    });
    // The SD-Turbo VAE's last upsampler (256 channels, 256x256 -> 512x512): by phases, and
    // by F(4x4, 3x3) reading each input pixel twice each way.
    let (channels, side) = (256, 512);
    let (weight, input, shape) = square_layer(channels, side, side / 2);
    let doubled = winograd::Fused {
        doubled: true,
        ..Default::default()
    };
    for (name, filters) in [
        (
            "by phases",
            winograd::Filters::by_phases(&weight, channels, channels),
        ),
        (
            "read twice",
            winograd::Filters::new(&weight, channels, channels),
        ),
    ] {
        group.bench_function(format!("upsampler c{channels} {side}x{side} {name}"), |b| {
            b.iter(|| winograd::conv3x3_fused(&input, shape, &filters, doubled))
        });
    }
    // The products by the gemm crate and by the register tiles, weight transform included
    // as it runs per call: the SD VAE decoder's 512x512 level (128 channels) and its
    // 256x256 one.
    for (channels, side) in [(128, 512), (256, 256)] {
        let (weight, input, shape) = square_layer(channels, side, side);
        let paths = [winograd::Products::Gemm, winograd::Products::Tiles];
        for products in paths.into_iter().filter(|p| p.runs()) {
            let name = format!("winograd c{channels} {side}x{side} products {products:?}");
            group.bench_function(name, |b| {
                b.iter(|| {
                    let filters = winograd::Filters::for_shape_on(&weight, shape, false, products);
                    winograd::conv3x3(&input, shape, &filters, None)
                })
            });
        }
    }
    // The UNet's 16x16 level (1280 channels): one im2col GEMM, Winograd with U made whole
    // first, and with U made by chunks as it runs (where this CPU takes that path).
    let (channels, side) = (1280, 16);
    let (weight, input, shape) = square_layer(channels, side, side);
    group.bench_function("c1280 16x16 im2col", |b| {
        b.iter(|| im2col::conv3x3(&input, shape, &weight, None))
    });
    group.bench_function("c1280 16x16 winograd U made whole", |b| {
        b.iter(|| {
            let filters = winograd::Filters::for_shape(&weight, shape, false);
            winograd::conv3x3(&input, shape, &filters, None)
        })
    });
    if winograd::by_chunks_pay(shape, false) {
        group.bench_function("c1280 16x16 winograd U by chunks", |b| {
            let fused = winograd::Fused::default();
            b.iter(|| winograd::conv3x3_weight(&input, shape, &weight, fused, None))
        });
    }
    group.finish();
}

/// A `channels` to `channels` 3x3 convolution's weight, an input `input_side` square and the
/// shape of its `side` square output.
fn square_layer(
    channels: usize,
    side: usize,
    input_side: usize,
) -> (Vec<f32>, Vec<f32>, winograd::Shape) {
    let weight: Vec<f32> = (0..channels * channels * 9)
        .map(|i| (i as f32 * 1.7).sin() * 0.05)
        .collect();
    let input: Vec<f32> = (0..channels * input_side * input_side)
        .map(|i| (i as f32 * 0.618).sin())
        .collect();
    let shape = winograd::Shape {
        batch: 1,
        in_channels: channels,
        out_channels: channels,
        height: side,
        width: side,
    };
    (weight, input, shape)
}

/// The GEMM everything rests on, for the machine's ceiling: 2048^3 x 2 = 17.2 GFLOP.
fn matmul(c: &mut Criterion) {
    let mut group = c.benchmark_group("matmul");
    group.sample_size(10);
    let a = Tensor::randn(0f32, 1., (2048, 2048), &Device::Cpu).unwrap();
    group.bench_function("f32 2048x2048x2048", |b| b.iter(|| a.matmul(&a).unwrap()));
    group.finish();
}

fn attention(c: &mut Criterion) {
    let mut group = c.benchmark_group("attention");
    group.sample_size(10);
    // SD 2.x's first transformer level at 512x512: 4096 tokens, 5 heads of 64; self and
    // cross (77 text tokens).
    let q = Tensor::randn(0f32, 1., (1, 5, 4096, 64), &Device::Cpu).unwrap();
    let text = Tensor::randn(0f32, 1., (1, 5, 77, 64), &Device::Cpu).unwrap();
    group.bench_function("self 4096x4096 h5 d64", |b| {
        b.iter(|| scaled_dot_product(&q, &q, &q, 0.125).unwrap())
    });
    group.bench_function("cross 4096x77 h5 d64", |b| {
        b.iter(|| scaled_dot_product(&q, &text, &text, 0.125).unwrap())
    });
    if seedbed_engine::nn::amx::available() {
        group.bench_function("bf16 tiles self 4096x4096 h5 d64", |b| {
            b.iter(|| scaled_dot_product_bf16(&q, &q, &q, 0.125).unwrap())
        });
    }
    group.finish();
}

fn group_norm(c: &mut Criterion) {
    let mut group = c.benchmark_group("group_norm_silu");
    group.sample_size(20);
    for (channels, side) in [(320, 64), (128, 256)] {
        let map = VarMap::new();
        let vb = random_vb(&map);
        let norm = GroupNormSilu::new(32, channels, 1e-5, vb.pp("fused")).unwrap();
        let stock = candle_nn::group_norm(32, channels, 1e-5, vb.pp("stock")).unwrap();
        let x = Tensor::randn(0f32, 1., (1, channels, side, side), &Device::Cpu).unwrap();
        group.bench_function(format!("fused c{channels} {side}x{side}"), |b| {
            b.iter(|| norm.forward(&x).unwrap())
        });
        group.bench_function(format!("candle c{channels} {side}x{side}"), |b| {
            b.iter(|| stock.forward(&x).unwrap().silu().unwrap())
        });
    }
    // The statistics alone, as a convolution that normalizes its input takes them, over an
    // image whose groups (4 MiB) outgrow L2: read from memory once per group.
    let map = VarMap::new();
    let norm = GroupNormSilu::new(32, 128, 1e-5, random_vb(&map)).unwrap();
    let x = Tensor::randn(0f32, 1., (1, 128, 512, 512), &Device::Cpu).unwrap();
    group.bench_function("statistics c128 512x512", |b| {
        b.iter(|| norm.affine(&x).unwrap())
    });
    group.finish();
}

fn unet_step(c: &mut Criterion) {
    let dir = fixtures().join("models/tiny-sd/unet");
    let unet = UNet::load(&dir, Variant::Auto, DType::F32, &Device::Cpu).unwrap();
    let sample = Tensor::randn(0f32, 1., (2, 4, 32, 32), &Device::Cpu).unwrap();
    let text = Tensor::randn(0f32, 1., (2, 77, 32), &Device::Cpu).unwrap();
    c.bench_function("unet step tiny-sd 2x4x32x32", |b| {
        b.iter(|| unet.forward(&sample, 500.0, &text, None).unwrap())
    });
}

/// One prompt that is a single word of 100,000 random letters: a pasted blob is one CLIP word,
/// and its BPE merge must stay O(n log n) in the word's length (the first, rescanning merge
/// took minutes on it). `encode` is what the pipeline runs; `encode_unpadded` tokenizes all of
/// it, and a single word cannot be cut short, so both do the whole merge.
fn tokenizer(c: &mut Criterion) {
    use rand::{Rng, SeedableRng};
    let dir = fixtures().join("clip-tokenizer");
    let tok = ClipTokenizer::from_dir(&dir).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let word: String = (0..100_000)
        .map(|_| rng.random_range(b'a'..=b'z') as char)
        .collect();
    let mut group = c.benchmark_group("tokenizer");
    group.sample_size(10);
    group.bench_function("encode 100000-letter word", |b| {
        b.iter(|| tok.encode(&word))
    });
    group.bench_function("encode_unpadded 100000-letter word", |b| {
        b.iter(|| tok.encode_unpadded(&word))
    });
    group.finish();
}

/// T5-XXL at FLUX's 256 tokens, the text stage's cost: one encoder layer at the real widths
/// (d_model 4096, d_ff 10240, 64 heads of 64) and its parts.
fn t5(c: &mut Criterion) {
    use seedbed_engine::nn::{activation::gelu_tanh_mul, attention::with_bias, layers};
    use seedbed_engine::text::t5::{T5Config, T5Encoder};
    let config: T5Config = serde_json::from_value(serde_json::json!({
        "vocab_size": 1000, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 1,
        "num_heads": 64, "feed_forward_proj": "gated-gelu"
    }))
    .unwrap();
    // Built once to name the variables, which are then randomised, and built again from them
    // (the layers keep their own transposed copies).
    let map = VarMap::new();
    T5Encoder::new(config.clone(), random_vb(&map)).unwrap();
    for var in map.all_vars() {
        var.set(&Tensor::randn(0f32, 0.02, var.shape(), &Device::Cpu).unwrap())
            .unwrap();
    }
    let encoder = T5Encoder::new(config, random_vb(&map)).unwrap();
    let ids = Tensor::arange(0u32, 256, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let x = Tensor::randn(0f32, 1., (1, 256, 4096), &Device::Cpu).unwrap();
    let wide = Tensor::randn(0f32, 1., (1, 256, 10240), &Device::Cpu).unwrap();
    let map = VarMap::new();
    let vb = random_vb(&map);
    let up = layers::linear_no_bias(4096, 10240, vb.pp("up")).unwrap();
    let square = layers::linear_no_bias(4096, 4096, vb.pp("square")).unwrap();
    let down = layers::linear_no_bias(10240, 4096, vb.pp("down")).unwrap();
    let heads = Tensor::randn(0f32, 1., (1, 64, 256, 64), &Device::Cpu).unwrap();
    let bias = Tensor::randn(0f32, 1., (1, 64, 256, 256), &Device::Cpu).unwrap();
    let mut group = c.benchmark_group("t5");
    group.sample_size(10);
    group.bench_function("xxl layer 256 tokens", |b| {
        b.iter(|| encoder.forward(&ids).unwrap())
    });
    group.bench_function("linear 256x4096->10240", |b| {
        b.iter(|| up.forward(&x).unwrap())
    });
    group.bench_function("linear 256x4096->4096", |b| {
        b.iter(|| square.forward(&x).unwrap())
    });
    let up_t = Tensor::randn(0f32, 0.02, (4096, 10240), &Device::Cpu).unwrap();
    let x2 = x.squeeze(0).unwrap();
    group.bench_function("matmul pre-transposed 256x4096->10240", |b| {
        b.iter(|| x2.matmul(&up_t).unwrap())
    });
    // The weight as stored (10240 rows of 4096) and the product computed transposed:
    // C^T = W X^T, written through C's strides.
    let w_rows = Tensor::randn(0f32, 0.02, (10240, 4096), &Device::Cpu).unwrap();
    let w_data = w_rows.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let x_data = x2.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let mut out = vec![0f32; 256 * 10240];
    group.bench_function("gemm swapped 256x4096->10240", |b| {
        b.iter(|| unsafe {
            gemm::gemm(
                10240,
                256,
                4096,
                out.as_mut_ptr(),
                10240,
                1,
                false,
                w_data.as_ptr(),
                1,
                4096,
                x_data.as_ptr(),
                4096,
                1,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(2),
            )
        })
    });
    group.bench_function("gemm as candle 256x4096->10240", |b| {
        b.iter(|| unsafe {
            gemm::gemm(
                256,
                10240,
                4096,
                out.as_mut_ptr(),
                1,
                10240,
                false,
                x_data.as_ptr(),
                1,
                4096,
                w_data.as_ptr(),
                4096,
                1,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(2),
            )
        })
    });
    group.bench_function("linear 256x10240->4096", |b| {
        b.iter(|| down.forward(&wide).unwrap())
    });
    group.bench_function("attention with bias h64 256x256", |b| {
        b.iter(|| with_bias(&heads, &heads, &heads, 1.0, &bias).unwrap())
    });
    group.bench_function("gated gelu 256x10240", |b| {
        b.iter(|| gelu_tanh_mul(&wide, &wide).unwrap())
    });
    group.finish();
}

/// Linear layers with bf16 weights: in bf16 dot products (AVX512-BF16, where the CPU has it;
/// as stored also on AMX tiles where it has those)
/// against the weight widened to f32 as the layer runs; and the transpose every linear weight
/// takes at load. Shapes: SD-Turbo's feed-forward at 64x64 latents, CLIP-H's MLP at 77 tokens.
fn bf16(c: &mut Criterion) {
    use seedbed_engine::nn::{bf16, layers, transpose::transposed};
    let mut group = c.benchmark_group("bf16");
    group.sample_size(10);
    for (rows, inner, out) in [
        (4096, 320, 2560),
        (4096, 1280, 320),
        (1024, 640, 5120),
        (77, 1024, 4096),
    ] {
        let x = Tensor::randn(0f32, 1., (rows, inner), &Device::Cpu).unwrap();
        let w = Tensor::randn(0f32, 0.02, (inner, out), &Device::Cpu).unwrap();
        let w16 = w.to_dtype(DType::BF16).unwrap();
        let (xs, ws) = (
            x.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            w16.flatten_all().unwrap().to_vec1::<half::bf16>().unwrap(),
        );
        let name = format!("{rows}x{inner}->{out}");
        if bf16::available() {
            group.bench_function(format!("kernel {name}"), |b| {
                b.iter(|| bf16::matmul(&xs, &ws, rows, inner, out).unwrap())
            });
            // The same weight as a file stores it, `(out, in)`.
            let stored = w16.t().unwrap().contiguous().unwrap();
            let stored = stored
                .flatten_all()
                .unwrap()
                .to_vec1::<half::bf16>()
                .unwrap();
            for unit in [Unit::Registers, Unit::Amx] {
                if !unit.runs() {
                    continue;
                }
                group.bench_function(format!("{unit:?} as stored {name}"), |b| {
                    b.iter(|| bf16::matmul_stored_on(unit, &xs, &stored, rows, inner, out).unwrap())
                });
            }
            // Packed once, as a layer holding its weight in memory does.
            let packed = bf16::Packed::from_stored(&stored, out, inner);
            group.bench_function(format!("packed {name}"), |b| {
                b.iter(|| bf16::matmul_packed(&xs, &packed, rows).unwrap())
            });
        }
        group.bench_function(format!("widened f32 {name}"), |b| {
            b.iter(|| x.matmul(&layers::like(&w16, &x).unwrap()).unwrap())
        });
    }
    let weight = Tensor::randn(0f32, 1., (5120, 1280), &Device::Cpu).unwrap();
    group.bench_function("transpose f32 5120x1280", |b| {
        b.iter(|| transposed(&weight).unwrap())
    });
    let weight = weight.to_dtype(DType::BF16).unwrap();
    group.bench_function("transpose bf16 5120x1280", |b| {
        b.iter(|| transposed(&weight).unwrap())
    });
    group.finish();
}

/// A linear layer's product with its weight as stored, `(out, in)` (read in place from the
/// file), against the transposed copy the layers make for few rows: where the threshold
/// between the two comes from (`nn::layers`).
fn stored(c: &mut Criterion) {
    use seedbed_engine::nn::gemm::{View, times_transposed};
    let mut group = c.benchmark_group("stored");
    group.sample_size(10);
    for (rows, inner, out) in [
        (1, 320, 1280),
        (77, 768, 3072),
        (77, 1024, 4096),
        (77, 5120, 1280),
        (154, 2048, 640),
        (256, 1280, 10240),
        (256, 1280, 1280),
        (256, 5120, 1280),
        (512, 1280, 1280),
        (1024, 1280, 1280),
        (1024, 5120, 1280),
        (1024, 640, 5120),
        (1024, 2560, 640),
        (4096, 320, 2560),
    ] {
        let x = Tensor::randn(0f32, 1., (rows, inner), &Device::Cpu).unwrap();
        let w = Tensor::randn(0f32, 0.02, (out, inner), &Device::Cpu).unwrap();
        let w_t = w.t().unwrap().contiguous().unwrap();
        let (xs, ws) = (
            x.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            w.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        let threads = rayon::current_num_threads();
        let name = format!("{rows}x{inner}->{out}");
        group.bench_function(format!("as stored {name}"), |b| {
            b.iter(|| {
                let (x, w) = (
                    View::row_major(&xs, rows, inner, inner),
                    View::row_major(&ws, out, inner, inner),
                );
                times_transposed(x, w, threads)
            })
        });
        for kernel in seedbed_engine::nn::stored::Kernel::supported() {
            group.bench_function(format!("tiles {kernel:?} {name}"), |b| {
                b.iter(|| {
                    seedbed_engine::nn::stored::times_transposed(kernel, &xs, &ws, rows, inner, out)
                })
            });
        }
        group.bench_function(format!("transposed {name}"), |b| {
            b.iter(|| x.matmul(&w_t).unwrap())
        });
    }
    group.finish();
}

criterion_group!(
    kernels, matmul, conv3x3, attention, group_norm, unet_step, tokenizer, t5, bf16, stored
);
criterion_main!(kernels);
