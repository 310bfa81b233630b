//! The CLIP text transformer (transformers' `CLIPTextModel` and
//! `CLIPTextModelWithProjection`), every shape from the component's `config.json`.

use std::path::Path;

use candle_core::{DType, Device, IndexOp, Module, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder};

use crate::error::{EngineError, Result};
use crate::model::read_json;
use crate::weights::{NameScheme, Variant, build_component};

#[derive(Debug, Clone, serde::Deserialize)]
pub struct ClipConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_attention_heads: usize,
    pub num_hidden_layers: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub projection_dim: Option<usize>,
    #[serde(default = "default_eos")]
    pub eos_token_id: u32,
    #[serde(default)]
    pub architectures: Vec<String>,
}

fn default_act() -> String {
    "quick_gelu".into()
}
fn default_eps() -> f64 {
    1e-5
}
fn default_eos() -> u32 {
    2
}

#[derive(Debug, Clone, Copy)]
enum Activation {
    QuickGelu,
    GeluErf,
    GeluTanh,
}

impl Activation {
    fn parse(name: &str, path: &Path) -> Result<Self> {
        match name {
            "quick_gelu" => Ok(Self::QuickGelu),
            "gelu" => Ok(Self::GeluErf),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Self::GeluTanh),
            other => Err(EngineError::config(
                path,
                format!("hidden_act `{other}` is not supported (quick_gelu, gelu, gelu_new)"),
            )),
        }
    }

    fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::QuickGelu => x * candle_nn::ops::sigmoid(&(x * 1.702)?)?,
            Self::GeluErf => x.gelu_erf(),
            Self::GeluTanh => x.gelu(),
        }
    }
}

struct SelfAttention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
}

impl SelfAttention {
    fn new(vb: VarBuilder, config: &ClipConfig) -> candle_core::Result<Self> {
        let h = config.hidden_size;
        Ok(Self {
            q: candle_nn::linear(h, h, vb.pp("q_proj"))?,
            k: candle_nn::linear(h, h, vb.pp("k_proj"))?,
            v: candle_nn::linear(h, h, vb.pp("v_proj"))?,
            out: candle_nn::linear(h, h, vb.pp("out_proj"))?,
            heads: config.num_attention_heads,
        })
    }

    fn forward(&self, x: &Tensor, causal_mask: &Tensor) -> candle_core::Result<Tensor> {
        let (batch, tokens, hidden) = x.dims3()?;
        let head_dim = hidden / self.heads;
        let split = |t: Tensor| {
            t.reshape((batch, tokens, self.heads, head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(self.q.forward(x)?)?;
        let k = split(self.k.forward(x)?)?;
        let v = split(self.v.forward(x)?)?;
        let scores = (q.matmul(&k.t()?)? * (head_dim as f64).powf(-0.5))?;
        let scores = scores.to_dtype(DType::F32)?.broadcast_add(causal_mask)?;
        let weights = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(x.dtype())?;
        let attended = weights
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((batch, tokens, hidden))?;
        self.out.forward(&attended)
    }
}

struct EncoderLayer {
    norm1: LayerNorm,
    attention: SelfAttention,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    activation: Activation,
}

impl EncoderLayer {
    fn new(
        vb: VarBuilder,
        config: &ClipConfig,
        activation: Activation,
    ) -> candle_core::Result<Self> {
        let (h, eps) = (config.hidden_size, config.layer_norm_eps);
        Ok(Self {
            norm1: candle_nn::layer_norm(h, eps, vb.pp("layer_norm1"))?,
            attention: SelfAttention::new(vb.pp("self_attn"), config)?,
            norm2: candle_nn::layer_norm(h, eps, vb.pp("layer_norm2"))?,
            fc1: candle_nn::linear(h, config.intermediate_size, vb.pp("mlp.fc1"))?,
            fc2: candle_nn::linear(config.intermediate_size, h, vb.pp("mlp.fc2"))?,
            activation,
        })
    }

    fn forward(&self, x: &Tensor, causal_mask: &Tensor) -> candle_core::Result<Tensor> {
        let x = (x + self
            .attention
            .forward(&self.norm1.forward(x)?, causal_mask)?)?;
        let hidden = self
            .activation
            .apply(&self.fc1.forward(&self.norm2.forward(&x)?)?)?;
        x + self.fc2.forward(&hidden)?
    }
}

pub struct ClipOutput {
    /// After the final layer norm (what SD 1.x / 2.x condition on).
    pub last_hidden_state: Tensor,
    /// The input of the last layer, without the final norm (what SDXL conditions on).
    pub penultimate_hidden_state: Tensor,
    /// The end-of-text token's final state; projected for `CLIPTextModelWithProjection`.
    pub pooled: Tensor,
}

pub struct ClipTextModel {
    config: ClipConfig,
    token_embedding: Embedding,
    position_embedding: Embedding,
    layers: Vec<EncoderLayer>,
    final_norm: LayerNorm,
    projection: Option<Linear>,
}

impl ClipTextModel {
    /// Load from a component folder such as `model/text_encoder`.
    pub fn load(dir: &Path, variant: Variant, dtype: DType, device: &Device) -> Result<Self> {
        let config_path = dir.join("config.json");
        let config: ClipConfig = read_json(&config_path)?;
        if config.num_hidden_layers < 2 {
            return Err(EngineError::config(
                &config_path,
                "num_hidden_layers must be at least 2",
            ));
        }
        let activation = Activation::parse(&config.hidden_act, &config_path)?;
        let with_projection = config
            .architectures
            .iter()
            .any(|a| a == "CLIPTextModelWithProjection");
        build_component(
            dir,
            variant,
            NameScheme::OptionalTextModelPrefix,
            dtype,
            device,
            |vb| {
                let text = vb.pp("text_model");
                let h = config.hidden_size;
                let embeddings = text.pp("embeddings");
                let layers = (0..config.num_hidden_layers)
                    .map(|i| {
                        EncoderLayer::new(
                            text.pp(format!("encoder.layers.{i}")),
                            &config,
                            activation,
                        )
                    })
                    .collect::<candle_core::Result<Vec<_>>>()?;
                let projection = match (with_projection, config.projection_dim) {
                    (true, Some(dim)) => {
                        Some(candle_nn::linear_no_bias(h, dim, vb.pp("text_projection"))?)
                    }
                    (true, None) => {
                        return Err(candle_core::Error::msg("config has no projection_dim"));
                    }
                    (false, _) => None,
                };
                Ok(Self {
                    token_embedding: candle_nn::embedding(
                        config.vocab_size,
                        h,
                        embeddings.pp("token_embedding"),
                    )?,
                    position_embedding: candle_nn::embedding(
                        config.max_position_embeddings,
                        h,
                        embeddings.pp("position_embedding"),
                    )?,
                    layers,
                    final_norm: candle_nn::layer_norm(
                        h,
                        config.layer_norm_eps,
                        text.pp("final_layer_norm"),
                    )?,
                    projection,
                    config: config.clone(),
                })
            },
        )
    }

    pub fn config(&self) -> &ClipConfig {
        &self.config
    }

    /// `input_ids: (B, T)` u32.
    pub fn forward(&self, input_ids: &Tensor) -> candle_core::Result<ClipOutput> {
        let (batch, tokens) = input_ids.dims2()?;
        if tokens > self.config.max_position_embeddings {
            return Err(candle_core::Error::msg(format!(
                "{tokens} tokens exceed the text encoder's {} positions",
                self.config.max_position_embeddings
            )));
        }
        let device = input_ids.device();
        let positions = Tensor::arange(0u32, tokens as u32, device)?;
        let mut x = self
            .token_embedding
            .forward(input_ids)?
            .broadcast_add(&self.position_embedding.forward(&positions)?)?;
        let mask = causal_mask(tokens, device)?;
        let last = self.layers.len() - 1;
        let mut penultimate = None;
        for (i, layer) in self.layers.iter().enumerate() {
            if i == last {
                penultimate = Some(x.clone());
            }
            x = layer.forward(&x, &mask)?;
        }
        let last_hidden_state = self.final_norm.forward(&x)?;
        let pooled = self.pool(&last_hidden_state, input_ids, batch)?;
        let pooled = match &self.projection {
            Some(projection) => projection.forward(&pooled)?,
            None => pooled,
        };
        Ok(ClipOutput {
            last_hidden_state,
            penultimate_hidden_state: penultimate.unwrap_or(x),
            pooled,
        })
    }

    /// The state at the end-of-text token: the first `eos_token_id`, or (legacy configs with
    /// eos id 2) the highest id, as transformers picks it.
    fn pool(
        &self,
        hidden: &Tensor,
        input_ids: &Tensor,
        batch: usize,
    ) -> candle_core::Result<Tensor> {
        let ids: Vec<Vec<u32>> = input_ids.to_vec2()?;
        let rows = (0..batch)
            .map(|b| {
                let row = &ids[b];
                let at = if self.config.eos_token_id == 2 {
                    row.iter()
                        .enumerate()
                        .max_by_key(|(i, id)| (**id, std::cmp::Reverse(*i)))
                        .map(|(i, _)| i)
                } else {
                    row.iter().position(|&id| id == self.config.eos_token_id)
                };
                hidden.i((b, at.unwrap_or(row.len() - 1)))
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Tensor::stack(&rows, 0)
    }
}

/// `(T, T)` f32 with `-inf` above the diagonal.
fn causal_mask(tokens: usize, device: &Device) -> candle_core::Result<Tensor> {
    let values: Vec<f32> = (0..tokens)
        .flat_map(|i| (0..tokens).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(values, (tokens, tokens), device)
}
