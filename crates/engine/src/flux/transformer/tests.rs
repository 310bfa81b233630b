use std::path::Path;

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device};
use serde::Deserialize;

use super::*;
use crate::checkpoint::{Layout, Pointer, gguf};
use crate::nn::layers::QuantizedWeights;
use crate::test_support::{assert_close, dit_case_tensors, dit_cases, dit_model_dir, max_abs};

#[derive(Deserialize)]
struct Case {
    name: String,
    model: String,
    height: usize,
    width: usize,
}

/// One transformer call on the reference's own inputs (its packed probe latents, T5 states,
/// pooled vector, sigma 0.625 and, for dev, the guidance) gives the reference's output.
#[test]
fn the_probe_matches_every_flux_case() {
    let cases: Vec<Case> = dit_cases();
    let mut checked = 0;
    for case in cases.iter().filter(|c| c.model.contains("flux")) {
        let dir = dit_model_dir(&case.model).join("transformer");
        let model = FluxTransformer::load(&dir, Variant::Auto, DType::F32, &Device::Cpu).unwrap();
        let t = dit_case_tensors(&case.name);
        let scalar = |name: &str| t[name].to_vec1::<f32>().unwrap()[0];
        let guidance = t
            .contains_key("probe_guidance")
            .then(|| scalar("probe_guidance"));
        assert_eq!(
            guidance.is_some(),
            model.config().guidance_embeds,
            "{}",
            case.name
        );
        let inputs = FluxInputs {
            text: &t["prompt_embeds"],
            pooled: &t["pooled_prompt_embeds"],
            timestep: scalar("probe_timestep"),
            guidance,
            rows: case.height / 16,
            cols: case.width / 16,
        };
        let ours = model.forward(&t["probe_latents"], &inputs).unwrap();
        assert_close(&case.name, &ours, &t["probe_out"]);
        checked += 1;
    }
    assert_eq!(checked, 4);
}

#[test]
fn rope_ids_put_text_first_then_image_rows() {
    let ids = rope::ids(2, 2, 3);
    assert_eq!(ids.len(), 8);
    assert_eq!(ids[0], [0.0; 3]);
    assert_eq!(ids[2], [0.0, 0.0, 0.0]);
    assert_eq!(
        ids[3],
        [0.0, 0.0, 1.0],
        "(0, row, col): columns vary fastest"
    );
    assert_eq!(ids[5], [0.0, 1.0, 0.0]);
}

/// A `transformer/` folder of `config` whose weights are the checkpoint `file` in BFL's layout.
fn pointer_folder(file: &Path, config: &FluxConfig) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let pointer = Pointer {
        file: file.to_path_buf(),
        layout: Layout::FluxBfl,
    };
    pointer.write(dir.path()).unwrap();
    let json = serde_json::to_vec_pretty(config).unwrap();
    std::fs::write(dir.path().join("config.json"), json).unwrap();
    dir
}

/// `||got - reference|| / ||reference||`.
fn relative_error(got: &Tensor, reference: &Tensor) -> f32 {
    let norm = |t: &Tensor| {
        t.sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .sqrt()
    };
    norm(&(got - reference).unwrap()) / norm(reference)
}

/// tiny-flux-dev's BFL file (fixtures/single-file) written as GGUF the community's way, read
/// through a pointer. Its rows of 96 split into q8_0's blocks of 32, so q8_0 keeps the linears
/// quantized (the fused q/k/v cut by whole rows of blocks, exactly); they do not split into
/// q4_K's blocks of 256, so q4_K falls back to f16 for every matrix, as the community's
/// converter does. Either way the probe stays close to the folder's.
#[test]
fn gguf_files_of_the_tiny_model_keep_what_fits_quantized() {
    let base = dit_model_dir("tiny-flux-dev").join("transformer");
    let config = FluxConfig::read(&base.join("config.json")).unwrap();
    let bfl = crate::test_support::fixtures_dir().join("single-file/tiny-flux-dev-bfl.safetensors");
    let mut tensors: Vec<(String, Tensor)> = candle_core::safetensors::load(&bfl, &Device::Cpu)
        .unwrap()
        .into_iter()
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));

    let scratch = tempfile::tempdir().unwrap();
    // Measured: q8_0 1.8e-3, q4_K (all f16) 2.8e-4.
    for (dtype, bound) in [(GgmlDType::Q8_0, 1e-2), (GgmlDType::Q4K, 1e-3)] {
        let file = scratch.path().join(format!("tiny-{dtype:?}.gguf"));
        gguf::write(&file, &tensors, dtype).unwrap();
        let gguf = gguf::GgufFile::open(&file, &Layout::FluxBfl).unwrap();
        let types: std::collections::HashMap<&str, GgmlDType> = gguf.types().collect();
        assert_eq!(
            types["double_blocks.0.img_attn.norm.query_norm.scale"],
            GgmlDType::F32
        );
        assert_eq!(
            types["img_in.weight"],
            GgmlDType::F16,
            "the embedders stay f16"
        );
        let fused = "double_blocks.1.txt_attn.qkv.weight";
        let q = gguf
            .quantized("transformer_blocks.1.attn.add_k_proj.weight")
            .unwrap();
        if dtype == GgmlDType::Q8_0 {
            assert_eq!(types[fused], GgmlDType::Q8_0);
            // The cut of the quantized tensor is the dense cut of the whole, bit for bit.
            let q = q.expect("k cut from the quantized fused tensor");
            assert_eq!(
                (q.dtype(), q.shape().dims()),
                (GgmlDType::Q8_0, &[96, 96][..])
            );
            let cut = q.dequantize(&Device::Cpu).unwrap();
            let whole = gguf::GgufFile::open(&file, &Layout::FluxBfl)
                .unwrap()
                .weights(DType::F32, &Device::Cpu)
                .vb()
                .get((96, 96), "transformer_blocks.1.attn.add_k_proj.weight")
                .unwrap();
            assert_eq!(
                (cut - whole)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap(),
                0.0
            );
        } else {
            assert_eq!(
                types[fused],
                GgmlDType::F16,
                "rows of 96 are no q4_K blocks"
            );
            assert!(q.is_none(), "an f16 weight is read dense");
        }
        let dir = pointer_folder(&file, &config);
        let error = probe_error_against_the_folder(dir.path());
        eprintln!("tiny-flux-dev as {dtype:?}: relative error {error:.2e}");
        assert!(error < bound, "{dtype:?}: relative error {error}");
    }
}

/// tiny-flux-dev's probe (the inputs of case `flux-dev-guidance`) through the transformer in
/// `dir`: its relative error against the diffusers folder's.
fn probe_error_against_the_folder(dir: &Path) -> f32 {
    let t = dit_case_tensors("flux-dev-guidance");
    let scalar = |name: &str| t[name].to_vec1::<f32>().unwrap()[0];
    let inputs = FluxInputs {
        text: &t["prompt_embeds"],
        pooled: &t["pooled_prompt_embeds"],
        timestep: scalar("probe_timestep"),
        guidance: Some(scalar("probe_guidance")),
        rows: 4,
        cols: 4,
    };
    let probe = |dir: &Path| {
        FluxTransformer::load(dir, Variant::Auto, DType::F32, &Device::Cpu)
            .unwrap()
            .forward(&t["probe_latents"], &inputs)
            .unwrap()
    };
    let folder = dit_model_dir("tiny-flux-dev").join("transformer");
    relative_error(&probe(dir), &probe(&folder))
}

/// The BFL-layout tensors of a random FLUX-shaped transformer whose widths split into K-quant
/// blocks: width 256 (2 heads of 128), MLP 1024, T5 and pooled widths 256, 2 + 2 blocks. Each
/// weight is N(0, 1/fan_in), as a trained layer's roughly is; biases and norm scales small.
fn flux_shaped_random(config: &FluxConfig) -> Vec<(String, Tensor)> {
    let (w, mlp, head) = (
        config.inner_dim(),
        4 * config.inner_dim(),
        config.attention_head_dim,
    );
    let mut shapes: Vec<(String, Vec<usize>)> = Vec::new();
    let mut linear = |stem: &str, cin: usize, cout: usize| {
        shapes.push((format!("{stem}.weight"), vec![cout, cin]));
        shapes.push((format!("{stem}.bias"), vec![cout]));
    };
    linear("img_in", config.in_channels, w);
    linear("txt_in", config.joint_attention_dim, w);
    linear("time_in.in_layer", 256, w);
    linear("time_in.out_layer", w, w);
    linear("guidance_in.in_layer", 256, w);
    linear("guidance_in.out_layer", w, w);
    linear("vector_in.in_layer", config.pooled_projection_dim, w);
    linear("vector_in.out_layer", w, w);
    linear("final_layer.linear", w, config.in_channels);
    linear("final_layer.adaLN_modulation.1", w, 2 * w);
    for i in 0..config.num_layers {
        for stream in ["img", "txt"] {
            let b = format!("double_blocks.{i}.{stream}");
            linear(&format!("{b}_mod.lin"), w, 6 * w);
            linear(&format!("{b}_attn.qkv"), w, 3 * w);
            linear(&format!("{b}_attn.proj"), w, w);
            linear(&format!("{b}_mlp.0"), w, mlp);
            linear(&format!("{b}_mlp.2"), mlp, w);
        }
    }
    for i in 0..config.num_single_layers {
        let b = format!("single_blocks.{i}");
        linear(&format!("{b}.modulation.lin"), w, 3 * w);
        linear(&format!("{b}.linear1"), w, 3 * w + mlp);
        linear(&format!("{b}.linear2"), w + mlp, w);
    }
    for i in 0..config.num_layers {
        for stream in ["img", "txt"] {
            for norm in ["query_norm", "key_norm"] {
                shapes.push((
                    format!("double_blocks.{i}.{stream}_attn.norm.{norm}.scale"),
                    vec![head],
                ));
            }
        }
    }
    for i in 0..config.num_single_layers {
        for norm in ["query_norm", "key_norm"] {
            shapes.push((format!("single_blocks.{i}.norm.{norm}.scale"), vec![head]));
        }
    }
    let mut noise = crate::noise::SeededNoise::new(7);
    shapes
        .into_iter()
        .map(|(name, shape)| {
            let unit = noise.randn(&shape, &Device::Cpu).unwrap();
            let tensor = match shape.as_slice() {
                [_, cin] => unit * (1.0 / *cin as f64).sqrt(),
                _ if name.ends_with(".scale") => (unit * 0.1).and_then(|t| t + 1.0),
                _ => unit * 0.02,
            };
            (name, tensor.unwrap())
        })
        .collect()
}

/// Each GGUF type's error on the transformer's output, against the same random weights in
/// f32 (a GGUF of f32 tensors, read dense), for a FLUX-shaped model whose rows split into
/// every type's blocks (widths 256, 1024). f16 is read dense, so its error is the weights'
/// rounding alone; the quantized types multiply in their blocks (`nn::quantized`): q8_0 and
/// q4_K in integers where the CPU has them, the activations rounded to q8_0 too, as ggml does;
/// the others through f32 bands, so theirs is the weights' rounding alone.
///
/// Measured relative errors `||out - f32|| / ||f32||` on this seeded model (in brackets:
/// through candle 0.11's quantized matmul, which rounds the activations to 8 bits for every
/// type; the weights' rounding alone is 7.3e-3 for q8_0, 1.08e-1 for q4_K):
///
/// | f16 | q8_0 | q6_K | q5_K | q5_1 | q5_0 | q4_K | q4_1 | q4_0 |
/// | --- | --- | --- | --- | --- | --- | --- | --- | --- |
/// | 5.0e-4 | 1.14e-2 (1.36e-2) | 2.7e-2 (2.9e-2) | 5.0e-2 (5.2e-2) | 5.2e-2 (5.2e-2) | 5.7e-2 (5.8e-2) | 1.09e-1 (1.08e-1) | 1.02e-1 (1.04e-1) | 1.24e-1 (1.25e-1) |
///
/// Random weights are a harsh case (a block's largest weight sets its step, and nothing is
/// smooth): per matrix the expected rounding is about step / sqrt(12), 0.5 % of the weights'
/// spread for q8_0 and 7.6 % for q4_0, and the eight blocks here add about half again. The
/// bounds are about 1.5x the measurements, and more bits must never do worse.
#[test]
fn every_gguf_type_stays_near_f32_on_a_flux_shaped_model() {
    let config = FluxConfig {
        patch_size: 1,
        in_channels: 64,
        out_channels: None,
        num_layers: 2,
        num_single_layers: 2,
        attention_head_dim: 128,
        num_attention_heads: 2,
        joint_attention_dim: 256,
        pooled_projection_dim: 256,
        guidance_embeds: true,
        axes_dims_rope: vec![16, 56, 56],
    };
    let tensors = flux_shaped_random(&config);
    let scratch = tempfile::tempdir().unwrap();
    let device = Device::Cpu;
    let mut noise = crate::noise::SeededNoise::new(8);
    let latents = noise.randn(&[1, 16, 64], &device).unwrap();
    let text = noise.randn(&[1, 8, 256], &device).unwrap();
    let pooled = noise.randn(&[1, 256], &device).unwrap();
    let inputs = FluxInputs {
        text: &text,
        pooled: &pooled,
        timestep: 0.6,
        guidance: Some(3.5),
        rows: 4,
        cols: 4,
    };
    let run = |dtype: GgmlDType| {
        let file = scratch.path().join(format!("{dtype:?}.gguf"));
        gguf::write(&file, &tensors, dtype).unwrap();
        let dir = pointer_folder(&file, &config);
        let model = FluxTransformer::load(dir.path(), Variant::Auto, DType::F32, &device).unwrap();
        let out = model.forward(&latents, &inputs).unwrap();
        std::fs::remove_file(&file).unwrap();
        out
    };
    let reference = run(GgmlDType::F32);
    let bounds = [
        (GgmlDType::F16, 1e-3),
        (GgmlDType::Q8_0, 1.7e-2),
        (GgmlDType::Q6K, 4e-2),
        (GgmlDType::Q5K, 8e-2),
        (GgmlDType::Q5_1, 8e-2),
        (GgmlDType::Q5_0, 8e-2),
        (GgmlDType::Q4K, 1.6e-1),
        (GgmlDType::Q4_1, 1.6e-1),
        (GgmlDType::Q4_0, 1.8e-1),
    ];
    let errors: Vec<(GgmlDType, f32, f32)> = bounds
        .into_iter()
        .map(|(dtype, bound)| (dtype, relative_error(&run(dtype), &reference), bound))
        .collect();
    for (dtype, error, _) in &errors {
        eprintln!("{dtype:?}: relative error {error:.2e}");
    }
    for &(dtype, error, bound) in &errors {
        assert!(
            error < bound,
            "{dtype:?}: relative error {error} over {bound}"
        );
    }
    // By bits a weight: f16, 8.5 (q8_0), 6.6 (q6_K), 5.5-6 (q5), 4.5-5 (q4).
    let worst =
        |range: std::ops::Range<usize>| errors[range].iter().map(|e| e.1).fold(0f32, f32::max);
    let best =
        |range: std::ops::Range<usize>| errors[range].iter().map(|e| e.1).fold(f32::MAX, f32::min);
    assert!(errors[0].1 < errors[1].1 && errors[1].1 < errors[2].1);
    assert!(
        errors[2].1 < best(3..6) && worst(3..6) < best(6..9),
        "{errors:?}"
    );
}

/// A file from the community's writer: tiny-flux-dev's BFL file written as q8_0 by the ggml
/// project's own Python package (tools/checkpoints/bfl_to_gguf.py, as city96's converter
/// does) reads like our own writer's: ggml's reversed dimensions, its alignment and type
/// codes, q/k/v and the MLP cut from fused rows. Every weight is within half a q8_0 step
/// (a block's largest magnitude / 127 / 2) of the folder's, give or take the f16 rounding of
/// the block's scale (up to 127 x 2^-11 of a step at the block's extremes), and the probe is
/// as close to the folder's as from our file (measured 1.8e-3 both).
#[test]
fn a_gguf_file_from_ggmls_python_writer_reads_like_ours() {
    let fixtures = crate::test_support::fixtures_dir();
    let file = fixtures.join("single-file/tiny-flux-dev-q8_0.gguf");
    let base = dit_model_dir("tiny-flux-dev").join("transformer");
    let folder = candle_core::safetensors::load(
        base.join("diffusion_pytorch_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let gguf = gguf::GgufFile::open(&file, &Layout::FluxBfl).unwrap();
    let types: std::collections::HashMap<&str, GgmlDType> = gguf.types().collect();
    assert_eq!(types["single_blocks.0.linear1.weight"], GgmlDType::Q8_0);
    assert_eq!(types["txt_in.weight"], GgmlDType::F16);
    for name in [
        "transformer_blocks.1.attn.add_k_proj.weight",
        "transformer_blocks.0.ff_context.net.2.weight",
        "single_transformer_blocks.2.proj_mlp.weight",
        "single_transformer_blocks.0.attn.to_v.weight",
    ] {
        let original = &folder[name];
        let read = gguf.quantized(name).unwrap().expect(name);
        assert_eq!(read.shape().dims(), original.dims(), "{name}");
        let read = read.dequantize(&Device::Cpu).unwrap();
        let step = max_abs(original) / 127.0;
        let bound = step / 2.0 + step * 127.0 / 2048.0;
        let diff = max_abs(&(read - original).unwrap());
        assert!(diff <= bound, "{name}: {diff} > {bound}");
    }

    let config = FluxConfig::read(&base.join("config.json")).unwrap();
    let dir = pointer_folder(&file.canonicalize().unwrap(), &config);
    let error = probe_error_against_the_folder(dir.path());
    eprintln!("tiny-flux-dev as q8_0 from gguf-py: relative error {error:.2e}");
    assert!(error < 1e-2, "relative error {error}");
}
