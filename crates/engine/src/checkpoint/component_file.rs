//! One component as a file of its own, as ComfyUI users keep them: `clip_l.safetensors`,
//! `t5xxl_fp16.safetensors`, `ae.safetensors`, `sdxl_vae.safetensors`. Named in a checkpoint's
//! `NAME.json`; the layout is told from the tensors and the config inferred from their shapes.

use serde_json::{Value, json};

use super::clip_text::{self, ClipShape};
use super::{Found, Layout, Shapes, count_indices, ldm_vae, shape_of};

/// What a component file must be.
#[derive(Debug, Clone, Copy)]
pub enum Role {
    /// A CLIP (OpenAI's or OpenCLIP's) or T5 text encoder; `clip_act` is the activation of
    /// the CLIP that the pipeline has in this place (OpenAI's CLIP-L `quick_gelu`, OpenCLIP's
    /// `gelu`), which no tensor tells.
    TextEncoder { clip_act: &'static str },
    /// An autoencoder, with its family's latent scale and shift.
    Vae { scale: f64, shift: Option<f64> },
}

fn has(shapes: &Shapes, prefix: &str) -> bool {
    shapes
        .range(prefix.to_string()..)
        .next()
        .is_some_and(|(name, _)| name.starts_with(prefix))
}

/// The layout and config of a component file with `shapes`, or what was expected of it.
pub fn read(shapes: &Shapes, role: Role) -> Found<(Layout, Value)> {
    match role {
        Role::TextEncoder { clip_act } => text_encoder(shapes, clip_act),
        Role::Vae { scale, shift } => vae(shapes, scale, shift),
    }
}

fn text_encoder(shapes: &Shapes, clip_act: &str) -> Found<(Layout, Value)> {
    if has(shapes, "encoder.block.") {
        // Hugging Face's own names, which the T5 encoder reads as they are.
        let layout = Layout::Diffusers {
            prefix: String::new(),
        };
        return Ok((layout, t5_config(shapes)?));
    }
    if has(shapes, "transformer.resblocks.") {
        let layers = clip_text::open_clip_layers(shapes, "");
        let layout = Layout::OpenClip {
            prefix: String::new(),
            layers,
        };
        let shape = ClipShape::read(shapes, &layout.remap(shapes)?)?;
        return Ok((layout, shape.config(clip_act)));
    }
    for prefix in ["", "text_model."] {
        if has(shapes, &format!("{prefix}embeddings.token_embedding.")) {
            let layout = Layout::Clip {
                prefix: String::new(),
            };
            let shape = ClipShape::read(shapes, &layout.remap(shapes)?)?;
            return Ok((layout, shape.config(clip_act)));
        }
    }
    Err(expected(
        shapes,
        "a text encoder: CLIP (`text_model.embeddings.*`), OpenCLIP (`transformer.resblocks.*`) \
         or T5 (`encoder.block.*`)",
    ))
}

/// Hugging Face's `T5EncoderModel` config: every size is in the shapes, the head count in the
/// relative attention bias (buckets x heads).
fn t5_config(shapes: &Shapes) -> Found<Value> {
    let at = |name: &str| shape_of(shapes, name);
    let embedding = match shapes.get("shared.weight") {
        Some(shape) => shape,
        None => at("encoder.embed_tokens.weight")?,
    };
    let attention = "encoder.block.0.layer.0.SelfAttention.";
    let bias = at(&format!("{attention}relative_attention_bias.weight"))?;
    let (buckets, heads) = (bias[0], bias[1]);
    let inner = at(&format!("{attention}q.weight"))?[0];
    let feed = "encoder.block.0.layer.1.DenseReluDense.";
    let gated = shapes.contains_key(&format!("{feed}wi_0.weight"));
    let d_ff = match gated {
        true => at(&format!("{feed}wi_0.weight"))?[0],
        false => at(&format!("{feed}wi.weight"))?[0],
    };
    Ok(json!({
        "architectures": ["T5EncoderModel"],
        "model_type": "t5",
        "vocab_size": embedding[0],
        "d_model": embedding[1],
        "d_kv": inner / heads.max(1),
        "d_ff": d_ff,
        "num_layers": count_indices(shapes, "encoder.block."),
        "num_heads": heads,
        "relative_attention_num_buckets": buckets,
        "relative_attention_max_distance": 128,
        "feed_forward_proj": if gated { "gated-gelu" } else { "relu" },
        "dense_act_fn": if gated { "gelu_new" } else { "relu" },
        "is_gated_act": gated,
        "layer_norm_epsilon": 1e-6,
    }))
}

fn vae(shapes: &Shapes, scale: f64, shift: Option<f64>) -> Found<(Layout, Value)> {
    for prefix in ["", "first_stage_model.", "vae."] {
        if has(shapes, &format!("{prefix}decoder.up.")) {
            let config = ldm_vae::config(shapes, prefix, scale, shift)?;
            let layout = Layout::LdmVae {
                prefix: prefix.into(),
            };
            return Ok((layout, config));
        }
    }
    if has(shapes, "decoder.up_blocks.") {
        let names = ldm_vae::VaeNames {
            prefix: "",
            levels: "encoder.down_blocks.",
            first_conv: |i| format!("encoder.down_blocks.{i}.resnets.0.conv1.weight"),
            first_level_blocks: "encoder.down_blocks.0.resnets.",
            mid_attention: "decoder.mid_block.attentions.",
        };
        let config = names.config(shapes, scale, shift)?;
        return Ok((
            Layout::Diffusers {
                prefix: String::new(),
            },
            config,
        ));
    }
    Err(expected(
        shapes,
        "an autoencoder: the original layout (`decoder.up.*`) or diffusers' (`decoder.up_blocks.*`)",
    ))
}

fn expected(shapes: &Shapes, what: &str) -> String {
    let sample: Vec<&str> = shapes.keys().take(3).map(String::as_str).collect();
    format!(
        "expected {what}; it holds {} tensors such as {}",
        shapes.len(),
        sample.join(", ")
    )
}
