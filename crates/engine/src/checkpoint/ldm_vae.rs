//! The VAE in the original (LDM) layout: `encoder.down.I.block.J`, `decoder.up.I` counted from
//! the bottom, `mid.attn_1` made of 1x1 convolutions. SD's `first_stage_model.*` and the
//! autoencoder files that FLUX (`ae.safetensors`) and SD3 ship use it.

use regex::Regex;
use serde_json::{Value, json};
use std::sync::LazyLock;

use super::{Found, Remap, Shapes, Source, count_indices, shape_of};

static DOWN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^encoder\.down\.(\d+)\.(?:block\.(\d+)|downsample)\.(.*)$").unwrap()
});
static UP: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^decoder\.up\.(\d+)\.(?:block\.(\d+)|upsample)\.(.*)$").unwrap());
static MID: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(encoder|decoder)\.mid\.(?:block_(\d)|attn_1\.(norm|q|k|v|proj_out))\.(.*)$")
        .unwrap()
});

fn diffusers_name(name: &str, levels: usize) -> Option<String> {
    let name = name
        .replace("nin_shortcut.", "conv_shortcut.")
        .replace(".norm_out.", ".conv_norm_out.");
    if let Some(c) = DOWN.captures(&name) {
        return Some(match c.get(2) {
            Some(j) => format!(
                "encoder.down_blocks.{}.resnets.{}.{}",
                &c[1],
                j.as_str(),
                &c[3]
            ),
            None => format!("encoder.down_blocks.{}.downsamplers.0.{}", &c[1], &c[3]),
        });
    }
    if let Some(c) = UP.captures(&name) {
        let block = levels.checked_sub(1 + c[1].parse::<usize>().ok()?)?;
        return Some(match c.get(2) {
            Some(j) => format!("decoder.up_blocks.{block}.resnets.{}.{}", j.as_str(), &c[3]),
            None => format!("decoder.up_blocks.{block}.upsamplers.0.{}", &c[3]),
        });
    }
    if let Some(c) = MID.captures(&name) {
        let part = match (c.get(2), c.get(3).map(|m| m.as_str())) {
            (Some(i), _) => format!("resnets.{}", i.as_str().parse::<usize>().ok()? - 1),
            (None, Some("norm")) => "attentions.0.group_norm".into(),
            (None, Some("proj_out")) => "attentions.0.to_out.0".into(),
            (None, Some(qkv)) => format!("attentions.0.to_{qkv}"),
            _ => return None,
        };
        return Some(format!("{}.mid_block.{part}.{}", &c[1], &c[4]));
    }
    Some(name)
}

/// Every VAE tensor under `prefix`, by its diffusers name.
pub fn remap(shapes: &Shapes, prefix: &str) -> Found<Remap> {
    let levels = count_indices(shapes, &format!("{prefix}decoder.up."));
    Ok(shapes
        .keys()
        .filter_map(|name| {
            let ours = diffusers_name(name.strip_prefix(prefix)?, levels)?;
            Some((ours, Source::Tensor(name.clone())))
        })
        .collect())
}

/// diffusers' `vae/config.json` for the VAE under `prefix`, with the family's latent scale.
pub fn config(
    shapes: &Shapes,
    prefix: &str,
    scaling_factor: f64,
    shift_factor: Option<f64>,
) -> Found<Value> {
    let names = VaeNames {
        prefix,
        levels: "encoder.down.",
        first_conv: |i| format!("encoder.down.{i}.block.0.conv1.weight"),
        first_level_blocks: "encoder.down.0.block.",
        mid_attention: "decoder.mid.attn_1.",
    };
    names.config(shapes, scaling_factor, shift_factor)
}

/// Where a VAE's config shows in its tensor names: the original layout's or diffusers'.
pub(super) struct VaeNames<'a> {
    pub prefix: &'a str,
    /// The numbered levels of the encoder.
    pub levels: &'a str,
    /// A level's first convolution, whose output width is the level's.
    pub first_conv: fn(usize) -> String,
    /// The numbered blocks of the first level.
    pub first_level_blocks: &'a str,
    /// The decoder's middle attention, when there is one.
    pub mid_attention: &'a str,
}

impl VaeNames<'_> {
    pub(super) fn config(
        &self,
        shapes: &Shapes,
        scaling_factor: f64,
        shift_factor: Option<f64>,
    ) -> Found<Value> {
        let prefix = self.prefix;
        let at = |name: &str| shape_of(shapes, &format!("{prefix}{name}"));
        let has = |name: &str| {
            let name = format!("{prefix}{name}");
            shapes
                .range(name.clone()..)
                .next()
                .is_some_and(|(found, _)| found.starts_with(&name))
        };
        let levels = count_indices(shapes, &format!("{prefix}{}", self.levels));
        let channels = (0..levels)
            .map(|i| Ok(at(&(self.first_conv)(i))?[0]))
            .collect::<Found<Vec<usize>>>()?;
        Ok(json!({
            "_class_name": "AutoencoderKL",
            "in_channels": at("encoder.conv_in.weight")?[1],
            "out_channels": at("decoder.conv_out.weight")?[0],
            "block_out_channels": channels,
            "down_block_types": vec!["DownEncoderBlock2D"; levels],
            "up_block_types": vec!["UpDecoderBlock2D"; levels],
            "layers_per_block": count_indices(shapes, &format!("{prefix}{}", self.first_level_blocks)),
            "latent_channels": at("decoder.conv_in.weight")?[1],
            "norm_num_groups": 32,
            "act_fn": "silu",
            "scaling_factor": scaling_factor,
            "shift_factor": shift_factor,
            "use_quant_conv": has("quant_conv.weight"),
            "use_post_quant_conv": has("post_quant_conv.weight"),
            "mid_block_add_attention": has(self.mid_attention),
            "force_upcast": true,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn original_names_become_diffusers_names() {
        let cases = [
            (
                "encoder.down.1.block.0.nin_shortcut.weight",
                "encoder.down_blocks.1.resnets.0.conv_shortcut.weight",
            ),
            (
                "encoder.down.0.downsample.conv.bias",
                "encoder.down_blocks.0.downsamplers.0.conv.bias",
            ),
            (
                "decoder.up.3.block.2.conv1.weight",
                "decoder.up_blocks.0.resnets.2.conv1.weight",
            ),
            (
                "decoder.up.1.upsample.conv.weight",
                "decoder.up_blocks.2.upsamplers.0.conv.weight",
            ),
            (
                "decoder.mid.block_2.norm1.bias",
                "decoder.mid_block.resnets.1.norm1.bias",
            ),
            (
                "encoder.mid.attn_1.proj_out.weight",
                "encoder.mid_block.attentions.0.to_out.0.weight",
            ),
            (
                "decoder.mid.attn_1.norm.weight",
                "decoder.mid_block.attentions.0.group_norm.weight",
            ),
            ("decoder.norm_out.weight", "decoder.conv_norm_out.weight"),
            ("post_quant_conv.weight", "post_quant_conv.weight"),
        ];
        for (ldm, ours) in cases {
            assert_eq!(diffusers_name(ldm, 4).as_deref(), Some(ours), "{ldm}");
        }
    }
}
