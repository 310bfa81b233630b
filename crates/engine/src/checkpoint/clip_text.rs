//! The CLIP text encoders inside SD checkpoints. SD 1.x and SDXL's first encoder are Hugging
//! Face's `CLIPTextModel` under a prefix (some files drop its `text_model.`); SD 2.x and SDXL's
//! second are OpenCLIP's text tower: `transformer.resblocks.N` with the attention's q, k and v
//! fused into `in_proj_weight`, and a `text_projection` that multiplies from the right.

use regex::Regex;
use serde_json::{Value, json};
use std::sync::LazyLock;

use super::{Found, Remap, Shapes, Source, count_indices, shape_of};

/// Hugging Face names under `prefix`, `text_model.` put back where a file left it out.
pub fn remap_clip(shapes: &Shapes, prefix: &str) -> Remap {
    shapes
        .keys()
        .filter_map(|name| {
            let bare = name.strip_prefix(prefix)?;
            if bare.ends_with("position_ids") {
                return None;
            }
            let ours = if bare.starts_with("text_model.") || bare.starts_with("text_projection") {
                bare.to_string()
            } else {
                format!("text_model.{bare}")
            };
            Some((ours, Source::Tensor(name.clone())))
        })
        .collect()
}

static RESBLOCK: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^transformer\.resblocks\.(\d+)\.(.*)$").unwrap());

/// OpenCLIP's text tower under `prefix`, its first `layers` blocks, as `CLIPTextModel(WithProjection)`.
pub fn remap_open_clip(shapes: &Shapes, prefix: &str, layers: usize) -> Found<Remap> {
    let width = shape_of(shapes, &format!("{prefix}token_embedding.weight"))?[1];
    let mut remap = Remap::new();
    for name in shapes.keys() {
        let Some(bare) = name.strip_prefix(prefix) else {
            continue;
        };
        let tensor = || Source::Tensor(name.clone());
        match bare {
            "token_embedding.weight" => {
                remap.insert(
                    "text_model.embeddings.token_embedding.weight".into(),
                    tensor(),
                );
            }
            "positional_embedding" => {
                remap.insert(
                    "text_model.embeddings.position_embedding.weight".into(),
                    tensor(),
                );
            }
            "text_projection" => {
                remap.insert(
                    "text_projection.weight".into(),
                    Source::Transposed(name.clone()),
                );
            }
            _ => {}
        }
        if let Some(tail) = bare.strip_prefix("ln_final.") {
            remap.insert(format!("text_model.final_layer_norm.{tail}"), tensor());
        }
        let Some(c) = RESBLOCK.captures(bare) else {
            continue;
        };
        let layer: usize = c[1].parse().unwrap_or(usize::MAX);
        if layer >= layers {
            continue;
        }
        let ours = format!("text_model.encoder.layers.{layer}");
        if let Some(kind) = c[2].strip_prefix("attn.in_proj_") {
            for (i, part) in ["q", "k", "v"].iter().enumerate() {
                let source = Source::Rows {
                    name: name.clone(),
                    start: i * width,
                    len: width,
                };
                remap.insert(format!("{ours}.self_attn.{part}_proj.{kind}"), source);
            }
            continue;
        }
        const PARTS: [(&str, &str); 5] = [
            ("attn.out_proj.", "self_attn.out_proj."),
            ("ln_1.", "layer_norm1."),
            ("ln_2.", "layer_norm2."),
            ("mlp.c_fc.", "mlp.fc1."),
            ("mlp.c_proj.", "mlp.fc2."),
        ];
        if let Some((tail, part)) = PARTS
            .iter()
            .find_map(|(theirs, part)| c[2].strip_prefix(theirs).map(|tail| (tail, part)))
        {
            remap.insert(format!("{ours}.{part}{tail}"), tensor());
        }
    }
    Ok(remap)
}

/// How many blocks the OpenCLIP tower under `prefix` has.
pub fn open_clip_layers(shapes: &Shapes, prefix: &str) -> usize {
    count_indices(shapes, &format!("{prefix}transformer.resblocks."))
}

/// The architecture read from a text encoder's remapped shapes.
pub struct ClipShape {
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub positions: usize,
    pub vocab: usize,
    /// The projection's output width, for the encoder that has one.
    pub projection: Option<usize>,
}

impl ClipShape {
    /// Read it from diffusers-named shapes (the checkpoint's, looked up through `remap`).
    pub fn read(shapes: &Shapes, remap: &Remap) -> Found<Self> {
        let at = |ours: &str| -> Found<Vec<usize>> {
            let source = remap.get(ours).ok_or_else(|| super::missing(ours))?;
            let mut shape = shape_of(shapes, source.tensor())?.clone();
            match source {
                Source::Rows { len, .. } => shape[0] = *len,
                Source::Transposed(_) => shape.reverse(),
                _ => {}
            }
            Ok(shape)
        };
        let embedding = at("text_model.embeddings.token_embedding.weight")?;
        let layers = (0..)
            .take_while(|i| {
                remap.contains_key(&format!("text_model.encoder.layers.{i}.mlp.fc1.weight"))
            })
            .count();
        Ok(Self {
            hidden: embedding[1],
            vocab: embedding[0],
            intermediate: at("text_model.encoder.layers.0.mlp.fc1.weight")?[0],
            layers,
            positions: at("text_model.embeddings.position_embedding.weight")?[0],
            projection: at("text_projection.weight").ok().map(|shape| shape[0]),
        })
    }

    /// Hugging Face's `config.json` for it. Heads are 64 channels wide in every CLIP text
    /// encoder SD uses (CLIP-L 12, OpenCLIP-H 16, OpenCLIP-bigG 20); `act` is `quick_gelu`
    /// for OpenAI's CLIP and `gelu` for OpenCLIP's.
    pub fn config(&self, act: &str) -> Value {
        let class = match self.projection {
            Some(_) => "CLIPTextModelWithProjection",
            None => "CLIPTextModel",
        };
        json!({
            "architectures": [class],
            "model_type": "clip_text_model",
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_attention_heads": (self.hidden / 64).max(1),
            "num_hidden_layers": self.layers,
            "max_position_embeddings": self.positions,
            "vocab_size": self.vocab,
            "projection_dim": self.projection.unwrap_or(self.hidden),
            "hidden_act": act,
            "layer_norm_eps": 1e-5,
            "bos_token_id": 49406,
            "eos_token_id": 49407,
            "pad_token_id": 49407,
        })
    }
}
