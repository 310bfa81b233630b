//! FLUX transformers as GGUF, for the memory and speed measurement in bench/RESULTS.md.
//!
//! ```text
//! flux_gguf convert BFL.safetensors OUT.gguf TYPE   # TYPE: f16 q8_0 q4_0 q4_1 q5_0 q5_1 q4_k q5_k q6_k
//! flux_gguf run TRANSFORMER_DIR DTYPE CALLS [OUT]   # DTYPE: f32 f16 bf16 (of the dense tensors)
//! ```
//!
//! `convert` writes a checkpoint in BFL's layout (tools/checkpoints/flux_to_bfl.py makes one
//! from a diffusers folder) as GGUF the community's way (`checkpoint::gguf::write`). `run`
//! loads a `transformer/` folder (diffusers weights, or a pointer to a BFL or GGUF file),
//! calls it `CALLS` times at 512x512 (1024 image tokens, 256 T5 tokens) and prints the load
//! time, the resident memory once loaded, each call's time and the process's peak RSS as JSON; OUT keeps the last output
//! (safetensors, `out`) for comparing types.

use std::path::Path;
use std::time::Instant;

use seedbed_engine::candle::quantized::GgmlDType;
use seedbed_engine::candle::{DType, Device, Tensor};
use seedbed_engine::checkpoint::{Layout, Pointer, read_shapes};
use seedbed_engine::flux::transformer::{FluxInputs, FluxTransformer};
use seedbed_engine::noise::SeededNoise;
use seedbed_engine::weights::{NameScheme, Variant, WeightFiles};

fn ggml_type(name: &str) -> GgmlDType {
    match name {
        "f16" => GgmlDType::F16,
        "q8_0" => GgmlDType::Q8_0,
        "q4_0" => GgmlDType::Q4_0,
        "q4_1" => GgmlDType::Q4_1,
        "q5_0" => GgmlDType::Q5_0,
        "q5_1" => GgmlDType::Q5_1,
        "q4_k" => GgmlDType::Q4K,
        "q5_k" => GgmlDType::Q5K,
        "q6_k" => GgmlDType::Q6K,
        other => panic!("unknown GGUF type {other}"),
    }
}

/// The process's peak (`VmHWM`) or current (`VmRSS`) resident memory, GiB.
fn rss_gib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kib / (1024.0 * 1024.0)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("convert") => {
            let (from, to, dtype) = (&args[2], &args[3], ggml_type(&args[4]));
            // Read through the engine's own memory-mapped weights: a pointer to the file in
            // diffusers' (identity) layout serves every tensor under its own name.
            let from = Path::new(from).canonicalize()?;
            let pointer_dir = tempfile::tempdir()?;
            Pointer {
                file: from.clone(),
                layout: Layout::Diffusers {
                    prefix: String::new(),
                },
            }
            .write(pointer_dir.path())?;
            let vb = WeightFiles::open(pointer_dir.path(), Variant::Auto, NameScheme::Exact)?
                .var_builder(DType::F32, &Device::Cpu);
            let tensors: Vec<(String, Tensor)> = read_shapes(&from)?
                .into_keys()
                .map(|name| Ok((name.clone(), vb.get_unchecked(&name)?)))
                .collect::<anyhow::Result<_>>()?;
            let start = Instant::now();
            seedbed_engine::checkpoint::gguf::write(Path::new(to), &tensors, dtype)?;
            eprintln!("{to}: written in {:.1} s", start.elapsed().as_secs_f64());
        }
        Some("run") => {
            let dir = Path::new(&args[2]);
            let dtype = match args[3].as_str() {
                "f32" => DType::F32,
                "f16" => DType::F16,
                "bf16" => DType::BF16,
                other => anyhow::bail!("unknown dtype {other}"),
            };
            let calls: usize = args[4].parse()?;
            let device = Device::Cpu;
            let start = Instant::now();
            let model = FluxTransformer::load(dir, Variant::Auto, dtype, &device)?;
            let load_s = start.elapsed().as_secs_f64();
            let loaded_gib = rss_gib("VmRSS:");
            let config = model.config().clone();
            let mut noise = SeededNoise::new(1);
            let latents = noise.randn(&[1, 1024, config.in_channels], &device)?;
            let text = noise.randn(&[1, 256, config.joint_attention_dim], &device)?;
            let pooled = noise.randn(&[1, config.pooled_projection_dim], &device)?;
            let inputs = FluxInputs {
                text: &text,
                pooled: &pooled,
                timestep: 0.75,
                guidance: config.guidance_embeds.then_some(3.5),
                rows: 32,
                cols: 32,
            };
            let mut call_s = Vec::new();
            let mut out = None;
            for _ in 0..calls {
                let start = Instant::now();
                out = Some(model.forward(&latents, &inputs)?);
                call_s.push(start.elapsed().as_secs_f64());
            }
            let checksum = match &out {
                Some(out) => out.abs()?.mean_all()?.to_scalar::<f32>()?,
                None => 0.0,
            };
            if let (Some(path), Some(out)) = (args.get(5), out) {
                out.save_safetensors("out", path)?;
            }
            println!(
                "{{\"dir\": {:?}, \"load_s\": {load_s:.2}, \"rss_loaded_gib\": {loaded_gib:.2}, \"call_s\": {call_s:.2?}, \"peak_rss_gib\": {:.2}, \"mean_abs_out\": {checksum:.5}}}",
                dir.display().to_string(),
                rss_gib("VmHWM:")
            );
        }
        _ => anyhow::bail!(
            "usage: flux_gguf convert BFL.safetensors OUT.gguf TYPE | run DIR DTYPE CALLS"
        ),
    }
    Ok(())
}
