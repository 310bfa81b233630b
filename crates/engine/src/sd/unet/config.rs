//! `unet/config.json` of a diffusers `UNet2DConditionModel`.

use std::path::Path;

use crate::config_files::read_json;
use crate::error::{EngineError, Result};

/// A config value given either once for all blocks or per block.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(untagged)]
pub enum PerBlock<T> {
    One(T),
    Each(Vec<T>),
}

impl<T: Clone> PerBlock<T> {
    fn expand(&self, blocks: usize, key: &str, path: &Path) -> Result<Vec<T>> {
        match self {
            Self::One(value) => Ok(vec![value.clone(); blocks]),
            Self::Each(values) if values.len() == blocks => Ok(values.clone()),
            Self::Each(values) => Err(EngineError::config(
                path,
                format!("`{key}` has {} entries for {blocks} blocks", values.len()),
            )),
        }
    }
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct UNetConfig {
    #[serde(default = "default_sample_size")]
    pub sample_size: usize,
    #[serde(default = "four")]
    pub in_channels: usize,
    #[serde(default = "four")]
    pub out_channels: usize,
    #[serde(default)]
    pub center_input_sample: bool,
    #[serde(default = "yes")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: f64,
    pub down_block_types: Vec<String>,
    #[serde(default)]
    pub mid_block_type: Option<String>,
    pub up_block_types: Vec<String>,
    #[serde(default)]
    pub only_cross_attention: PerBlockBool,
    pub block_out_channels: Vec<usize>,
    #[serde(default = "two_layers")]
    pub layers_per_block: PerBlock<usize>,
    #[serde(default = "one")]
    pub downsample_padding: usize,
    #[serde(default = "one_f")]
    pub mid_block_scale_factor: f64,
    #[serde(default = "thirty_two")]
    pub norm_num_groups: usize,
    #[serde(default = "norm_eps")]
    pub norm_eps: f64,
    pub cross_attention_dim: PerBlock<usize>,
    #[serde(default = "one_layer")]
    pub transformer_layers_per_block: PerBlock<usize>,
    #[serde(default)]
    pub reverse_transformer_layers_per_block: Option<serde_json::Value>,
    #[serde(default = "eight_heads")]
    pub attention_head_dim: PerBlock<usize>,
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock<usize>>,
    #[serde(default)]
    pub dual_cross_attention: bool,
    #[serde(default)]
    pub use_linear_projection: bool,
    #[serde(default)]
    pub upcast_attention: bool,
    #[serde(default)]
    pub class_embed_type: Option<String>,
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    #[serde(default)]
    pub addition_time_embed_dim: Option<usize>,
    #[serde(default)]
    pub projection_class_embeddings_input_dim: Option<usize>,
    #[serde(default = "default_shift")]
    pub resnet_time_scale_shift: String,
    #[serde(default = "one_f")]
    pub resnet_out_scale_factor: f64,
    #[serde(default = "positional")]
    pub time_embedding_type: String,
    #[serde(default)]
    pub time_embedding_dim: Option<usize>,
    #[serde(default)]
    pub time_cond_proj_dim: Option<usize>,
    #[serde(default)]
    pub encoder_hid_dim_type: Option<String>,
    #[serde(default = "three")]
    pub conv_in_kernel: usize,
    #[serde(default = "three")]
    pub conv_out_kernel: usize,
    #[serde(default = "silu")]
    pub act_fn: String,
    #[serde(default)]
    pub attention_type: Option<String>,
}

/// `only_cross_attention`: a bool or one per block.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(untagged)]
pub enum PerBlockBool {
    #[default]
    No,
    One(bool),
    Each(Vec<bool>),
}

fn default_sample_size() -> usize {
    64
}
fn four() -> usize {
    4
}
fn three() -> usize {
    3
}
fn one() -> usize {
    1
}
fn yes() -> bool {
    true
}
fn one_f() -> f64 {
    1.0
}
fn thirty_two() -> usize {
    32
}
fn norm_eps() -> f64 {
    1e-5
}
fn two_layers() -> PerBlock<usize> {
    PerBlock::One(2)
}
fn one_layer() -> PerBlock<usize> {
    PerBlock::One(1)
}
fn eight_heads() -> PerBlock<usize> {
    PerBlock::One(8)
}
fn default_shift() -> String {
    "default".into()
}
fn positional() -> String {
    "positional".into()
}
fn silu() -> String {
    "silu".into()
}

/// Everything the model needs per block, resolved and checked once.
#[derive(Debug, Clone)]
pub struct BlockPlan {
    pub out_channels: usize,
    pub layers: usize,
    /// Some(transformer layers) for cross-attention blocks.
    pub transformer_layers: Option<usize>,
    pub heads: usize,
    pub cross_attention_dim: usize,
}

impl UNetConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let config: Self = read_json(path)?;
        config.check(path)?;
        Ok(config)
    }

    fn check(&self, path: &Path) -> Result<()> {
        let unsupported = |key: &str, value: &dyn std::fmt::Debug| {
            Err(EngineError::config(
                path,
                format!("`{key}` = {value:?} is not supported"),
            ))
        };
        if self.block_out_channels.is_empty()
            || self.down_block_types.len() != self.block_out_channels.len()
            || self.up_block_types.len() != self.block_out_channels.len()
        {
            return Err(EngineError::config(
                path,
                "down_block_types, up_block_types and block_out_channels must have the same length",
            ));
        }
        if self
            .block_out_channels
            .iter()
            .any(|c| c % self.norm_num_groups != 0)
        {
            return Err(EngineError::config(
                path,
                "block_out_channels must be multiples of norm_num_groups",
            ));
        }
        if self.class_embed_type.is_some() {
            return unsupported("class_embed_type", &self.class_embed_type);
        }
        if !matches!(
            self.addition_embed_type.as_deref(),
            None | Some("text_time")
        ) {
            return unsupported("addition_embed_type", &self.addition_embed_type);
        }
        if self.resnet_time_scale_shift != "default" {
            return unsupported("resnet_time_scale_shift", &self.resnet_time_scale_shift);
        }
        if self.time_embedding_type != "positional" {
            return unsupported("time_embedding_type", &self.time_embedding_type);
        }
        if self.time_cond_proj_dim.is_some() {
            return unsupported("time_cond_proj_dim", &self.time_cond_proj_dim);
        }
        if self.encoder_hid_dim_type.is_some() {
            return unsupported("encoder_hid_dim_type", &self.encoder_hid_dim_type);
        }
        if self.dual_cross_attention {
            return unsupported("dual_cross_attention", &true);
        }
        if !matches!(
            self.only_cross_attention,
            PerBlockBool::No | PerBlockBool::One(false)
        ) && !matches!(&self.only_cross_attention, PerBlockBool::Each(v) if v.iter().all(|b| !b))
        {
            return unsupported("only_cross_attention", &self.only_cross_attention);
        }
        if self
            .reverse_transformer_layers_per_block
            .as_ref()
            .is_some_and(|v| !v.is_null())
        {
            return unsupported(
                "reverse_transformer_layers_per_block",
                &self.reverse_transformer_layers_per_block,
            );
        }
        if self.act_fn != "silu" {
            return unsupported("act_fn", &self.act_fn);
        }
        if !matches!(self.attention_type.as_deref(), None | Some("default")) {
            return unsupported("attention_type", &self.attention_type);
        }
        if !matches!(
            self.mid_block_type.as_deref(),
            None | Some("UNetMidBlock2DCrossAttn")
        ) {
            return unsupported("mid_block_type", &self.mid_block_type);
        }
        for kind in &self.down_block_types {
            if !matches!(kind.as_str(), "CrossAttnDownBlock2D" | "DownBlock2D") {
                return unsupported("down_block_types", kind);
            }
        }
        for kind in &self.up_block_types {
            if !matches!(kind.as_str(), "CrossAttnUpBlock2D" | "UpBlock2D") {
                return unsupported("up_block_types", kind);
            }
        }
        if self.conv_in_kernel.is_multiple_of(2) || self.conv_out_kernel.is_multiple_of(2) {
            return Err(EngineError::config(
                path,
                "conv_in_kernel and conv_out_kernel must be odd",
            ));
        }
        self.down_plan(path)?;
        Ok(())
    }

    /// Per down block: channels, resnet count, transformer layers, heads, cross-attention width.
    ///
    /// For these configs diffusers reads `attention_head_dim` as the number of heads when
    /// `num_attention_heads` is absent (a naming quirk kept for old checkpoints).
    pub fn down_plan(&self, path: &Path) -> Result<Vec<BlockPlan>> {
        let n = self.block_out_channels.len();
        let layers = self.layers_per_block.expand(n, "layers_per_block", path)?;
        let transformer =
            self.transformer_layers_per_block
                .expand(n, "transformer_layers_per_block", path)?;
        let heads_source = self
            .num_attention_heads
            .as_ref()
            .unwrap_or(&self.attention_head_dim);
        let heads = heads_source.expand(n, "num_attention_heads", path)?;
        let cross = self
            .cross_attention_dim
            .expand(n, "cross_attention_dim", path)?;
        (0..n)
            .map(|i| {
                let out_channels = self.block_out_channels[i];
                if heads[i] == 0 || !out_channels.is_multiple_of(heads[i]) {
                    return Err(EngineError::config(
                        path,
                        format!(
                            "block {i}: {out_channels} channels cannot be split into {} heads",
                            heads[i]
                        ),
                    ));
                }
                let cross_attn = self.down_block_types[i] == "CrossAttnDownBlock2D";
                Ok(BlockPlan {
                    out_channels,
                    layers: layers[i],
                    transformer_layers: cross_attn.then_some(transformer[i]),
                    heads: heads[i],
                    cross_attention_dim: cross[i],
                })
            })
            .collect()
    }

    /// The time embedding width: `time_embedding_dim` or 4x the first block's channels.
    pub fn time_embed_dim(&self) -> usize {
        self.time_embedding_dim
            .unwrap_or(self.block_out_channels[0] * 4)
    }
}
