//! The UNet of SD 1.x/2.x and SDXL checkpoints in the original (LDM/SGM) layout:
//! `input_blocks.I.J`, `middle_block.J`, `output_blocks.I.J`, `time_embed`, `label_emb`, `out`,
//! read as diffusers' `UNet2DConditionModel`, and its config inferred from the shapes.

use regex::Regex;
use serde_json::{Value, json};
use std::sync::LazyLock;

use super::{Found, Remap, Shapes, Source, count_indices, shape_of};

/// What the UNet's tensors say about it, and what convention adds for head counts (which no
/// tensor carries).
#[derive(Debug, Clone, PartialEq)]
pub struct UnetShape {
    pub channels: Vec<usize>,
    pub layers_per_block: usize,
    /// Transformer blocks per down block (0: no attention in that block).
    pub depth: Vec<usize>,
    pub mid_depth: usize,
    pub cross_attention_dim: usize,
    pub linear_projection: bool,
    pub in_channels: usize,
    pub out_channels: usize,
    /// SDXL's size-and-crop conditioning: its input width.
    pub addition_input: Option<usize>,
}

static INPUT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^input_blocks\.(\d+)\.(\d+)\.(.*)$").unwrap());
static MIDDLE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^middle_block\.(\d+)\.(.*)$").unwrap());
static OUTPUT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^output_blocks\.(\d+)\.(\d+)\.(.*)$").unwrap());

/// A resnet's parts: LDM name to diffusers name.
const RESNET: [(&str, &str); 6] = [
    ("in_layers.0.", "norm1."),
    ("in_layers.2.", "conv1."),
    ("emb_layers.1.", "time_emb_proj."),
    ("out_layers.0.", "norm2."),
    ("out_layers.3.", "conv2."),
    ("skip_connection.", "conv_shortcut."),
];

fn resnet(rest: &str) -> Option<String> {
    RESNET
        .iter()
        .find_map(|(ldm, ours)| rest.strip_prefix(ldm).map(|tail| format!("{ours}{tail}")))
}

/// The diffusers name of one UNet tensor (`name` without the checkpoint's prefix).
fn diffusers_name(name: &str, layers: usize) -> Option<String> {
    const SIMPLE: [(&str, &str); 7] = [
        ("input_blocks.0.0.", "conv_in."),
        ("time_embed.0.", "time_embedding.linear_1."),
        ("time_embed.2.", "time_embedding.linear_2."),
        ("label_emb.0.0.", "add_embedding.linear_1."),
        ("label_emb.0.2.", "add_embedding.linear_2."),
        ("out.0.", "conv_norm_out."),
        ("out.2.", "conv_out."),
    ];
    if let Some(found) = SIMPLE
        .iter()
        .find_map(|(ldm, ours)| name.strip_prefix(ldm).map(|tail| format!("{ours}{tail}")))
    {
        return Some(found);
    }
    if let Some(c) = INPUT.captures(name) {
        let (index, part, rest) = (c[1].parse::<usize>().ok()?, &c[2], &c[3]);
        let (block, layer) = ((index - 1) / (layers + 1), (index - 1) % (layers + 1));
        return match (part, layer == layers) {
            ("0", true) => {
                let tail = rest.strip_prefix("op.")?;
                Some(format!("down_blocks.{block}.downsamplers.0.conv.{tail}"))
            }
            ("0", false) => Some(format!(
                "down_blocks.{block}.resnets.{layer}.{}",
                resnet(rest)?
            )),
            ("1", false) => Some(format!("down_blocks.{block}.attentions.{layer}.{rest}")),
            _ => None,
        };
    }
    if let Some(c) = MIDDLE.captures(name) {
        return match &c[1] {
            "0" => Some(format!("mid_block.resnets.0.{}", resnet(&c[2])?)),
            "1" => Some(format!("mid_block.attentions.0.{}", &c[2])),
            "2" => Some(format!("mid_block.resnets.1.{}", resnet(&c[2])?)),
            _ => None,
        };
    }
    if let Some(c) = OUTPUT.captures(name) {
        let (index, part, rest) = (c[1].parse::<usize>().ok()?, &c[2], &c[3]);
        let (block, layer) = (index / (layers + 1), index % (layers + 1));
        // An up block's upsampler follows its last resnet, after the attention if any:
        // it is the only part named `conv.`.
        if let Some(tail) = rest.strip_prefix("conv.")
            && part != "0"
        {
            return Some(format!("up_blocks.{block}.upsamplers.0.conv.{tail}"));
        }
        return match part {
            "0" => Some(format!(
                "up_blocks.{block}.resnets.{layer}.{}",
                resnet(rest)?
            )),
            "1" => Some(format!("up_blocks.{block}.attentions.{layer}.{rest}")),
            _ => None,
        };
    }
    None
}

static DIFFUSERS_BLOCK: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(down|up)_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)$").unwrap()
});
static DIFFUSERS_MID: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^mid_block\.(resnets|attentions)\.(\d+)\.(.*)$").unwrap());

/// A resnet's part, diffusers' name to LDM's: `rest` is the part's name, alone or followed by
/// `.` and a tensor or sub-module.
fn ldm_resnet(rest: &str) -> Option<String> {
    RESNET.iter().find_map(|(ldm, ours)| {
        let part = ours.trim_end_matches('.');
        let tail = rest.strip_prefix(part)?;
        (tail.is_empty() || tail.starts_with('.'))
            .then(|| format!("{}{tail}", ldm.trim_end_matches('.')))
    })
}

/// The LDM/SGM name of a module of diffusers' UNet (the inverse of [`diffusers_name`] for
/// what lives in resnets, attentions and the embeddings): how Kohya's SDXL LoRAs address
/// layers (`lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q`). `layers` is the
/// UNet's `layers_per_block`.
pub fn original_module(module: &str, layers: usize) -> Option<String> {
    const SIMPLE: [(&str, &str); 6] = [
        ("conv_in", "input_blocks.0.0"),
        ("time_embedding.linear_1", "time_embed.0"),
        ("time_embedding.linear_2", "time_embed.2"),
        ("add_embedding.linear_1", "label_emb.0.0"),
        ("add_embedding.linear_2", "label_emb.0.2"),
        ("conv_out", "out.2"),
    ];
    if let Some((_, ldm)) = SIMPLE.iter().find(|(ours, _)| *ours == module) {
        return Some(ldm.to_string());
    }
    if let Some(c) = DIFFUSERS_BLOCK.captures(module) {
        let (block, i): (usize, usize) = (c[2].parse().ok()?, c[4].parse().ok()?);
        let (blocks, index) = match &c[1] {
            "down" => ("input_blocks", 1 + block * (layers + 1) + i),
            _ => ("output_blocks", block * (layers + 1) + i),
        };
        return match &c[3] {
            "resnets" => Some(format!("{blocks}.{index}.0.{}", ldm_resnet(&c[5])?)),
            _ => Some(format!("{blocks}.{index}.1.{}", &c[5])),
        };
    }
    let c = DIFFUSERS_MID.captures(module)?;
    match (&c[1], &c[2]) {
        ("attentions", "0") => Some(format!("middle_block.1.{}", &c[3])),
        ("resnets", i) => {
            let index = 2 * i.parse::<usize>().ok()?;
            Some(format!("middle_block.{index}.{}", ldm_resnet(&c[3])?))
        }
        _ => None,
    }
}

/// Every UNet tensor under `prefix`, by its diffusers name.
pub fn remap(shapes: &Shapes, prefix: &str) -> Found<Remap> {
    let layers = read_shape(shapes, prefix)?.layers_per_block;
    Ok(shapes
        .keys()
        .filter_map(|name| {
            let ours = diffusers_name(name.strip_prefix(prefix)?, layers)?;
            Some((ours, Source::Tensor(name.clone())))
        })
        .collect())
}

/// Read the UNet's structure from the shapes of its tensors under `prefix`.
pub fn read_shape(shapes: &Shapes, prefix: &str) -> Found<UnetShape> {
    let at = |name: &str| shape_of(shapes, &format!("{prefix}{name}"));
    let inputs = count_indices(shapes, &format!("{prefix}input_blocks."));
    // Block b's downsampler is input block 1 + b(L+1) + L; the last block has none.
    let first_down = (1..inputs)
        .find(|i| shapes.contains_key(&format!("{prefix}input_blocks.{i}.0.op.weight")))
        .unwrap_or(inputs);
    let layers_per_block = first_down - 1;
    let blocks = (inputs - 1).div_ceil(layers_per_block + 1);
    let mut channels = Vec::new();
    let mut depth = Vec::new();
    for block in 0..blocks {
        let first = 1 + block * (layers_per_block + 1);
        channels.push(at(&format!("input_blocks.{first}.0.in_layers.2.weight"))?[0]);
        depth.push(count_indices(
            shapes,
            &format!("{prefix}input_blocks.{first}.1.transformer_blocks."),
        ));
    }
    let cross = shapes
        .iter()
        .find(|(name, _)| name.starts_with(prefix) && name.ends_with("attn2.to_k.weight"))
        .map(|(_, shape)| shape[1])
        .unwrap_or(0);
    let proj_in = shapes
        .iter()
        .find(|(name, _)| name.starts_with(prefix) && name.ends_with(".proj_in.weight"))
        .map(|(_, shape)| shape.len());
    Ok(UnetShape {
        channels,
        layers_per_block,
        depth,
        mid_depth: count_indices(
            shapes,
            &format!("{prefix}middle_block.1.transformer_blocks."),
        ),
        cross_attention_dim: cross,
        linear_projection: proj_in == Some(2),
        in_channels: at("input_blocks.0.0.weight")?[1],
        out_channels: at("out.2.weight")?[0],
        addition_input: shapes
            .get(&format!("{prefix}label_emb.0.0.weight"))
            .map(|shape| shape[1]),
    })
}

impl UnetShape {
    /// diffusers' `unet/config.json` for it. `pooled` is the width of SDXL's pooled text
    /// embedding (the second encoder's projection), which shares the addition input with six
    /// size-and-crop embeddings; `sample_size` is the latent side it was trained at.
    pub fn config(&self, pooled: usize, sample_size: usize) -> Value {
        let attention = |d: &usize| *d > 0;
        let down: Vec<&str> = self
            .depth
            .iter()
            .map(|d| {
                if attention(d) {
                    "CrossAttnDownBlock2D"
                } else {
                    "DownBlock2D"
                }
            })
            .collect();
        let up: Vec<&str> = self
            .depth
            .iter()
            .rev()
            .map(|d| {
                if attention(d) {
                    "CrossAttnUpBlock2D"
                } else {
                    "UpBlock2D"
                }
            })
            .collect();
        // Heads: SD 1.x has 8 in every block; SD 2.x and SDXL heads of 64 channels.
        let heads: Vec<usize> = if self.cross_attention_dim == 768 {
            vec![8; self.channels.len()]
        } else {
            self.channels.iter().map(|c| (c / 64).max(1)).collect()
        };
        let layers: Vec<usize> = self.depth.iter().map(|d| (*d).max(1)).collect();
        let mut config = json!({
            "_class_name": "UNet2DConditionModel",
            "sample_size": sample_size,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "down_block_types": down,
            "up_block_types": up,
            "mid_block_type": "UNetMidBlock2DCrossAttn",
            "block_out_channels": self.channels,
            "layers_per_block": self.layers_per_block,
            "cross_attention_dim": self.cross_attention_dim,
            "attention_head_dim": heads,
            "transformer_layers_per_block": layers,
            "use_linear_projection": self.linear_projection,
            "flip_sin_to_cos": true,
            "freq_shift": 0,
            "norm_num_groups": 32,
            "norm_eps": 1e-5,
            "act_fn": "silu",
        });
        if let Some(input) = self.addition_input {
            config["addition_embed_type"] = json!("text_time");
            config["addition_time_embed_dim"] = json!((input - pooled) / 6);
            config["projection_class_embeddings_input_dim"] = json!(input);
        }
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn original_names_become_diffusers_names() {
        let cases = [
            ("input_blocks.0.0.weight", "conv_in.weight"),
            (
                "input_blocks.1.0.in_layers.2.weight",
                "down_blocks.0.resnets.0.conv1.weight",
            ),
            (
                "input_blocks.2.1.proj_in.weight",
                "down_blocks.0.attentions.1.proj_in.weight",
            ),
            (
                "input_blocks.3.0.op.bias",
                "down_blocks.0.downsamplers.0.conv.bias",
            ),
            (
                "input_blocks.4.0.skip_connection.weight",
                "down_blocks.1.resnets.0.conv_shortcut.weight",
            ),
            (
                "middle_block.2.emb_layers.1.bias",
                "mid_block.resnets.1.time_emb_proj.bias",
            ),
            (
                "middle_block.1.transformer_blocks.0.attn2.to_k.weight",
                "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight",
            ),
            (
                "output_blocks.2.1.conv.weight",
                "up_blocks.0.upsamplers.0.conv.weight",
            ),
            (
                "output_blocks.5.2.conv.bias",
                "up_blocks.1.upsamplers.0.conv.bias",
            ),
            (
                "output_blocks.5.1.norm.bias",
                "up_blocks.1.attentions.2.norm.bias",
            ),
            (
                "output_blocks.4.0.out_layers.3.weight",
                "up_blocks.1.resnets.1.conv2.weight",
            ),
            ("label_emb.0.2.weight", "add_embedding.linear_2.weight"),
            ("out.0.weight", "conv_norm_out.weight"),
        ];
        for (ldm, ours) in cases {
            assert_eq!(diffusers_name(ldm, 2).as_deref(), Some(ours), "{ldm}");
        }
        assert_eq!(diffusers_name("input_blocks.3.1.norm.weight", 2), None);
    }

    /// Every module a LoRA may address maps to its LDM name and back.
    #[test]
    fn diffusers_modules_have_their_original_names() {
        let modules = [
            "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
            "down_blocks.0.resnets.1.time_emb_proj",
            "down_blocks.2.resnets.0.conv_shortcut",
            "mid_block.attentions.0.proj_in",
            "mid_block.resnets.1.conv2",
            "up_blocks.0.attentions.2.transformer_blocks.1.ff.net.0.proj",
            "up_blocks.1.resnets.2.conv1",
            "time_embedding.linear_1",
            "add_embedding.linear_2",
        ];
        for module in modules {
            let ldm = original_module(module, 2).unwrap_or_else(|| panic!("{module}"));
            let back = diffusers_name(&format!("{ldm}.weight"), 2);
            assert_eq!(back, Some(format!("{module}.weight")), "{module} -> {ldm}");
        }
        assert_eq!(
            original_module(
                "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
                2
            )
            .as_deref(),
            Some("input_blocks.4.1.transformer_blocks.0.attn1.to_q")
        );
        assert_eq!(
            original_module("up_blocks.0.resnets.0.time_emb_proj", 2).as_deref(),
            Some("output_blocks.0.0.emb_layers.1")
        );
    }
}
