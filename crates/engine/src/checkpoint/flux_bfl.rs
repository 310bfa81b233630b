//! Black Forest Labs' own FLUX.1 transformer layout: the names of the reference code and of the
//! files people download (`flux1-dev.safetensors`, fine-tunes, city96's GGUF files), mapped onto
//! diffusers' `FluxTransformer2DModel`, as diffusers' `convert_flux_transformer_checkpoint_to_diffusers`
//! maps them.
//!
//! BFL fuses what diffusers keeps apart: a double block's `img_attn.qkv` / `txt_attn.qkv` are
//! q, k and v stacked by rows, and a single block's `linear1` is q, k, v and the MLP's input.
//! Those are [`Cut::Rows`]. The final layer's modulation stores (shift, scale) where
//! diffusers has (scale, shift): [`Cut::SwappedHalves`]. [`linears`] is the one table of every
//! linear layer's two names and cut; checkpoints are read through it ([`remap`]), and so are
//! Kohya's FLUX LoRAs, which name BFL's modules (`crate::lora::targets`). Some files carry every name under
//! `model.diffusion_model.` (ComfyUI's full checkpoints); the prefix is found, not configured.

use super::{Remap, Shapes, Source};
use crate::flux::transformer::FluxConfig;

/// The prefix ComfyUI-style full checkpoints put before the transformer's names.
const COMFY_PREFIX: &str = "model.diffusion_model.";

/// The prefix of the transformer's names in this checkpoint: empty or [`COMFY_PREFIX`].
fn prefix(shapes: &Shapes) -> Result<&'static str, String> {
    for prefix in ["", COMFY_PREFIX] {
        if shapes.contains_key(&format!("{prefix}img_in.weight")) {
            return Ok(prefix);
        }
    }
    Err("not a FLUX transformer in BFL's layout: it has no `img_in.weight`".into())
}

/// The shape of `name` (without the prefix).
fn shape<'a>(shapes: &'a Shapes, prefix: &str, name: &str) -> Result<&'a [usize], String> {
    shapes
        .get(&format!("{prefix}{name}"))
        .map(Vec::as_slice)
        .ok_or_else(|| format!("the checkpoint has no `{prefix}{name}`"))
}

/// How many blocks `double_blocks.N.` or `single_blocks.N.` there are (the highest N + 1).
fn blocks(shapes: &Shapes, prefix: &str, kind: &str) -> usize {
    let start = format!("{prefix}{kind}.");
    shapes
        .keys()
        .filter_map(|name| {
            name.strip_prefix(&start)?
                .split('.')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .map(|i| i + 1)
        .max()
        .unwrap_or(0)
}

/// Which rows of a BFL tensor a diffusers layer takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// All of them, as they are.
    Whole,
    /// Rows `start..start + len`: one of q, k, v (or the MLP's input) of a fused projection.
    Rows { start: usize, len: usize },
    /// All of them with the two halves of dim 0 swapped: the final norm's (shift, scale).
    SwappedHalves,
}

impl Cut {
    /// Where the diffusers tensor comes from, when BFL's is `name`.
    pub fn source(self, name: String) -> Source {
        match self {
            Self::Whole => Source::Tensor(name),
            Self::Rows { start, len } => Source::Rows { name, start, len },
            Self::SwappedHalves => Source::SwappedHalves(name),
        }
    }
}

/// One linear layer of diffusers' transformer and where BFL keeps it: the weight and bias
/// under `bfl` (`double_blocks.0.img_attn.qkv`), cut by `cut`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Linear {
    /// diffusers' module path, `transformer_blocks.0.attn.to_q`.
    pub diffusers: String,
    /// BFL's module path, without any file prefix.
    pub bfl: String,
    pub cut: Cut,
}

/// The sizes BFL's names and cuts depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    /// The model width: each of q, k and v.
    pub width: usize,
    pub double_blocks: usize,
    pub single_blocks: usize,
    /// The width of a single block's MLP input, the rows of `linear1` after q, k and v.
    pub single_mlp: usize,
    /// Whether there is a guidance embedder (\[dev\]; \[schnell\] has none).
    pub guidance: bool,
}

/// Every linear layer of a transformer of these `dims`, diffusers' name to BFL's: the one
/// table that both checkpoints ([`remap`]) and Kohya's LoRAs in BFL's names
/// (`crate::lora::targets`) are read through.
pub fn linears(dims: &Dims) -> Vec<Linear> {
    let mut out = Vec::new();
    let mut put = |diffusers: String, bfl: String, cut: Cut| {
        out.push(Linear {
            diffusers,
            bfl,
            cut,
        });
    };
    for (bfl_stem, embedder) in [
        ("time_in", "timestep_embedder"),
        ("vector_in", "text_embedder"),
        ("guidance_in", "guidance_embedder"),
    ] {
        if bfl_stem == "guidance_in" && !dims.guidance {
            continue; // [schnell]
        }
        let d = format!("time_text_embed.{embedder}");
        put(
            format!("{d}.linear_1"),
            format!("{bfl_stem}.in_layer"),
            Cut::Whole,
        );
        put(
            format!("{d}.linear_2"),
            format!("{bfl_stem}.out_layer"),
            Cut::Whole,
        );
    }
    put("context_embedder".into(), "txt_in".into(), Cut::Whole);
    put("x_embedder".into(), "img_in".into(), Cut::Whole);
    let width = dims.width;
    for i in 0..dims.double_blocks {
        let (d, b) = (
            format!("transformer_blocks.{i}"),
            format!("double_blocks.{i}"),
        );
        for (diffusers, bfl) in [
            ("norm1.linear", "img_mod.lin"),
            ("norm1_context.linear", "txt_mod.lin"),
            ("ff.net.0.proj", "img_mlp.0"),
            ("ff.net.2", "img_mlp.2"),
            ("ff_context.net.0.proj", "txt_mlp.0"),
            ("ff_context.net.2", "txt_mlp.2"),
            ("attn.to_out.0", "img_attn.proj"),
            ("attn.to_add_out", "txt_attn.proj"),
        ] {
            put(format!("{d}.{diffusers}"), format!("{b}.{bfl}"), Cut::Whole);
        }
        // q, k and v stacked by rows in one projection per stream.
        for (stream, names) in [
            ("img", ["to_q", "to_k", "to_v"]),
            ("txt", ["add_q_proj", "add_k_proj", "add_v_proj"]),
        ] {
            for (part, name) in names.iter().enumerate() {
                put(
                    format!("{d}.attn.{name}"),
                    format!("{b}.{stream}_attn.qkv"),
                    Cut::Rows {
                        start: part * width,
                        len: width,
                    },
                );
            }
        }
    }
    for i in 0..dims.single_blocks {
        let (d, b) = (
            format!("single_transformer_blocks.{i}"),
            format!("single_blocks.{i}"),
        );
        put(
            format!("{d}.norm.linear"),
            format!("{b}.modulation.lin"),
            Cut::Whole,
        );
        put(format!("{d}.proj_out"), format!("{b}.linear2"), Cut::Whole);
        // q, k, v and the MLP's input stacked by rows.
        for (name, start, len) in [
            ("attn.to_q", 0, width),
            ("attn.to_k", width, width),
            ("attn.to_v", 2 * width, width),
            ("proj_mlp", 3 * width, dims.single_mlp),
        ] {
            put(
                format!("{d}.{name}"),
                format!("{b}.linear1"),
                Cut::Rows { start, len },
            );
        }
    }
    put("proj_out".into(), "final_layer.linear".into(), Cut::Whole);
    // BFL's final modulation gives (shift, scale), diffusers' `AdaLayerNormContinuous` (scale, shift).
    put(
        "norm_out.linear".into(),
        "final_layer.adaLN_modulation.1".into(),
        Cut::SwappedHalves,
    );
    out
}

/// The sizes of the BFL checkpoint with these `shapes` (under `prefix`); every single block's
/// `linear1` must hold q, k, v and an MLP of the same width.
fn dims(shapes: &Shapes, prefix: &str) -> Result<Dims, String> {
    let width = shape(shapes, prefix, "img_in.weight")?[0];
    let single_blocks = blocks(shapes, prefix, "single_blocks");
    let mut single_mlp = 0;
    for i in 0..single_blocks {
        let b = format!("single_blocks.{i}");
        let fused = shape(shapes, prefix, &format!("{b}.linear1.weight"))?[0];
        match fused.checked_sub(3 * width).filter(|&mlp| mlp > 0) {
            Some(mlp) if i == 0 || mlp == single_mlp => single_mlp = mlp,
            _ => {
                return Err(format!(
                    "`{b}.linear1.weight` has {fused} rows, not q, k, v of {width} and an MLP"
                ));
            }
        }
    }
    Ok(Dims {
        width,
        double_blocks: blocks(shapes, prefix, "double_blocks"),
        single_blocks,
        single_mlp,
        guidance: shapes.contains_key(&format!("{prefix}guidance_in.in_layer.weight")),
    })
}

/// Every diffusers tensor of the transformer and where it lives in the checkpoint.
pub(super) fn remap(shapes: &Shapes) -> Result<Remap, String> {
    let prefix = prefix(shapes)?;
    let dims = dims(shapes, prefix)?;
    let bfl = |name: &str| format!("{prefix}{name}");
    let mut remap = Remap::new();
    for linear in linears(&dims) {
        for kind in ["weight", "bias"] {
            remap.insert(
                format!("{}.{kind}", linear.diffusers),
                linear.cut.source(bfl(&format!("{}.{kind}", linear.bfl))),
            );
        }
    }
    // The per-head norms' scales.
    for i in 0..dims.double_blocks {
        let (d, b) = (
            format!("transformer_blocks.{i}.attn"),
            format!("double_blocks.{i}"),
        );
        for (stream, norms) in [
            ("img", ["norm_q", "norm_k"]),
            ("txt", ["norm_added_q", "norm_added_k"]),
        ] {
            for (norm, bfl_norm) in norms.iter().zip(["query_norm", "key_norm"]) {
                remap.insert(
                    format!("{d}.{norm}.weight"),
                    Source::Tensor(bfl(&format!("{b}.{stream}_attn.norm.{bfl_norm}.scale"))),
                );
            }
        }
    }
    for i in 0..dims.single_blocks {
        let (d, b) = (
            format!("single_transformer_blocks.{i}.attn"),
            format!("single_blocks.{i}"),
        );
        for (norm, bfl_norm) in [("norm_q", "query_norm"), ("norm_k", "key_norm")] {
            remap.insert(
                format!("{d}.{norm}.weight"),
                Source::Tensor(bfl(&format!("{b}.norm.{bfl_norm}.scale"))),
            );
        }
    }
    Ok(remap)
}

/// The diffusers `transformer/config.json` a BFL-layout checkpoint implies, from its shapes
/// alone: block counts, width, heads (the q-norm's scale is one head wide), the text and pooled
/// widths, the packed input channels, and whether it is guidance-distilled (\[dev\]). A file says
/// nothing of its RoPE axes: they follow FLUX.1's split of a head of width d into
/// `[d/8, 7d/16, 7d/16]` (16, 56, 56 for 128). A base model folder's config, when the caller
/// has one, is the better answer.
pub fn config(shapes: &Shapes) -> Result<FluxConfig, String> {
    let prefix = prefix(shapes)?;
    let get = |name: &str| shape(shapes, prefix, name);
    let dim = |name: &str, axis: usize| -> Result<usize, String> {
        get(name)?
            .get(axis)
            .copied()
            .ok_or_else(|| format!("`{prefix}{name}` has no dimension {axis}"))
    };
    let (width, in_channels) = (dim("img_in.weight", 0)?, dim("img_in.weight", 1)?);
    let num_layers = blocks(shapes, prefix, "double_blocks");
    let num_single_layers = blocks(shapes, prefix, "single_blocks");
    let head_dim = if num_layers > 0 {
        dim("double_blocks.0.img_attn.norm.query_norm.scale", 0)?
    } else {
        dim("single_blocks.0.norm.query_norm.scale", 0)?
    };
    if head_dim == 0 || width % head_dim != 0 || head_dim % 32 != 0 {
        return Err(format!(
            "a head width of {head_dim} does not divide the model width {width} or split into \
             FLUX's RoPE axes (a multiple of 32)"
        ));
    }
    let out_channels = dim("final_layer.linear.weight", 0)?;
    Ok(FluxConfig {
        patch_size: 1,
        in_channels,
        out_channels: (out_channels != in_channels).then_some(out_channels),
        num_layers,
        num_single_layers,
        attention_head_dim: head_dim,
        num_attention_heads: width / head_dim,
        joint_attention_dim: dim("txt_in.weight", 1)?,
        pooled_projection_dim: dim("vector_in.in_layer.weight", 1)?,
        guidance_embeds: shapes.contains_key(&format!("{prefix}guidance_in.in_layer.weight")),
        axes_dims_rope: vec![head_dim / 8, 7 * head_dim / 16, 7 * head_dim / 16],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The header of a BFL-layout file for FLUX.1 \[dev\]'s real widths, `blocks` of each kind.
    fn dev_shapes(prefix: &str, blocks: usize) -> Shapes {
        let (w, mlp) = (3072, 12288);
        let mut shapes = Shapes::new();
        let mut add = |name: &str, shape: &[usize]| {
            shapes.insert(format!("{prefix}{name}"), shape.to_vec());
        };
        let mut linear = |stem: &str, cin: usize, cout: usize| {
            add(&format!("{stem}.weight"), &[cout, cin]);
            add(&format!("{stem}.bias"), &[cout]);
        };
        linear("img_in", 64, w);
        linear("txt_in", 4096, w);
        for stem in ["time_in", "guidance_in"] {
            linear(&format!("{stem}.in_layer"), 256, w);
            linear(&format!("{stem}.out_layer"), w, w);
        }
        linear("vector_in.in_layer", 768, w);
        linear("vector_in.out_layer", w, w);
        linear("final_layer.linear", w, 64);
        linear("final_layer.adaLN_modulation.1", w, 2 * w);
        for i in 0..blocks {
            let b = format!("double_blocks.{i}");
            for stream in ["img", "txt"] {
                linear(&format!("{b}.{stream}_mod.lin"), w, 6 * w);
                linear(&format!("{b}.{stream}_attn.qkv"), w, 3 * w);
                linear(&format!("{b}.{stream}_attn.proj"), w, w);
                linear(&format!("{b}.{stream}_mlp.0"), w, mlp);
                linear(&format!("{b}.{stream}_mlp.2"), mlp, w);
            }
            let b = format!("single_blocks.{i}");
            linear(&format!("{b}.modulation.lin"), w, 3 * w);
            linear(&format!("{b}.linear1"), w, 3 * w + mlp);
            linear(&format!("{b}.linear2"), w + mlp, w);
        }
        for i in 0..blocks {
            for norm in ["query_norm", "key_norm"] {
                for stream in ["img", "txt"] {
                    add(
                        &format!("double_blocks.{i}.{stream}_attn.norm.{norm}.scale"),
                        &[128],
                    );
                }
                add(&format!("single_blocks.{i}.norm.{norm}.scale"), &[128]);
            }
        }
        shapes
    }

    #[test]
    fn the_config_of_flux_dev_is_read_off_its_shapes() {
        for prefix in ["", COMFY_PREFIX] {
            let config = config(&dev_shapes(prefix, 2)).unwrap();
            let expected = FluxConfig {
                patch_size: 1,
                in_channels: 64,
                out_channels: None,
                num_layers: 2,
                num_single_layers: 2,
                attention_head_dim: 128,
                num_attention_heads: 24,
                joint_attention_dim: 4096,
                pooled_projection_dim: 768,
                guidance_embeds: true,
                axes_dims_rope: vec![16, 56, 56],
            };
            assert_eq!(config, expected, "prefix `{prefix}`");
        }
        let mut schnell = dev_shapes("", 1);
        schnell.retain(|name, _| !name.starts_with("guidance_in"));
        assert!(!config(&schnell).unwrap().guidance_embeds);
    }

    /// Every checkpoint tensor is read, and the cuts tile the fused tensors exactly.
    #[test]
    fn the_remap_reads_every_tensor_and_tiles_the_fused_ones() {
        let shapes = dev_shapes(COMFY_PREFIX, 2);
        let remap = remap(&shapes).unwrap();
        // diffusers' FLUX.1 [dev] with 2 + 2 blocks: 20 tensors outside the blocks, 32 in a
        // double block (8 linears and 6 cut projections, weight and bias, and 4 norms), 14 in a
        // single one (2 linears, 4 cut, 2 norms).
        assert_eq!(remap.len(), 20 + 2 * 32 + 2 * 14);
        let read: std::collections::BTreeSet<&str> = remap.values().map(Source::tensor).collect();
        let all: std::collections::BTreeSet<&str> = shapes.keys().map(String::as_str).collect();
        assert_eq!(read, all);
        let mut rows: std::collections::BTreeMap<&str, Vec<(usize, usize)>> = Default::default();
        for source in remap.values() {
            if let Source::Rows { name, start, len } = source {
                rows.entry(name).or_default().push((*start, *len));
            }
        }
        for (name, mut cuts) in rows {
            cuts.sort();
            let mut next = 0;
            for (start, len) in cuts {
                assert_eq!(start, next, "{name}");
                next += len;
            }
            assert_eq!(next, shapes[name][0], "{name}");
        }
        assert_eq!(
            remap["single_transformer_blocks.1.proj_mlp.weight"],
            Source::Rows {
                name: format!("{COMFY_PREFIX}single_blocks.1.linear1.weight"),
                start: 3 * 3072,
                len: 12288
            }
        );
        assert_eq!(
            remap["norm_out.linear.bias"],
            Source::SwappedHalves(format!("{COMFY_PREFIX}final_layer.adaLN_modulation.1.bias"))
        );
    }

    #[test]
    fn a_file_of_another_layout_is_refused() {
        let mut shapes = Shapes::new();
        shapes.insert("x_embedder.weight".into(), vec![3072, 64]);
        assert!(remap(&shapes).unwrap_err().contains("img_in.weight"));
    }
}
