//! The layers of a model folder that a LoRA may change, read from its weight files' headers
//! (no tensor is loaded): every linear weight and 1x1 convolution of the components a LoRA
//! addresses, by the same [`Tag`] the built layers carry.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use super::hook::Tag;
use crate::checkpoint::flux_bfl::{self, Cut};
use crate::error::{EngineError, Result};
use crate::model::{Family, ModelIndex};
use crate::weights::NameScheme;

/// What a module is, as far as a LoRA is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleKind {
    /// A linear layer or 1x1 convolution with these `(in, out)` features; `None` when its
    /// file does not say.
    Dense(Option<(usize, usize)>),
    /// A 3x3 (or larger) convolution: LoCon's, which the engine does not apply.
    Conv,
}

/// A model's LoRA targets.
#[derive(Debug, Clone, Default)]
pub struct Targets {
    pub(crate) modules: BTreeMap<Tag, ModuleKind>,
    /// Per component, Kohya's spelling of each module (dots as `_`) to its tag.
    pub(crate) kohya: HashMap<Arc<str>, HashMap<String, Tag>>,
    /// FLUX's transformer: each module in BFL's names as Kohya spells them
    /// (`double_blocks_0_img_attn_qkv`) to the layers it is in diffusers and the rows of the
    /// module each takes ([`flux_bfl::linears`]).
    pub(crate) bfl: HashMap<String, Vec<(Tag, Cut)>>,
}

/// The component folders a LoRA may address, per family; `None` for a family that takes none.
pub fn components(family: Family) -> Option<&'static [&'static str]> {
    match family {
        Family::StableDiffusion => Some(&["unet", "text_encoder"]),
        Family::StableDiffusionXl => Some(&["unet", "text_encoder", "text_encoder_2"]),
        Family::Flux => Some(&["transformer", "text_encoder", "text_encoder_2"]),
        Family::ZImage | Family::StableDiffusion3 => None,
    }
}

/// The families that take LoRAs, for messages.
pub const FAMILIES_TAKING_LORAS: &str = "SD 1.x/2.x, SDXL and FLUX.1";

impl Targets {
    /// Read the targets of the model folder `dir`.
    pub fn read(dir: &Path) -> Result<Self> {
        let index = ModelIndex::read(dir)?;
        let family = index
            .family(dir)
            .map_err(|_| refuse_family(&index.class_name))?;
        let components = components(family).ok_or_else(|| refuse_family(&index.class_name))?;
        let mut targets = Self::default();
        for component in components {
            let folder = dir.join(component);
            if !folder.is_dir() {
                continue;
            }
            targets.add_component(
                component,
                crate::weights::component_shapes(&folder, NameScheme::Exact)?,
            );
        }
        if family.is_unet() {
            targets.add_original_unet_names(&dir.join("unet/config.json"))?;
        }
        if family == Family::Flux {
            targets.add_bfl_names();
        }
        Ok(targets)
    }

    /// Kohya's FLUX LoRAs name the transformer's layers as BFL's checkpoints do, where q, k
    /// and v (and a single block's MLP input) are one fused layer: each BFL module and the
    /// diffusers layers it is cut into, from the sizes of the model's own layers.
    fn add_bfl_names(&mut self) {
        let Some(dims) = self.flux_dims() else {
            return;
        };
        for linear in flux_bfl::linears(&dims) {
            let tag = Tag {
                component: Arc::from("transformer"),
                module: Arc::from(linear.diffusers.as_str()),
            };
            if self.modules.contains_key(&tag) {
                self.bfl
                    .entry(linear.bfl.replace('.', "_"))
                    .or_default()
                    .push((tag, linear.cut));
            }
        }
    }

    /// The sizes of the FLUX transformer among the targets, `None` when its files do not say.
    fn flux_dims(&self) -> Option<flux_bfl::Dims> {
        let features = |module: &str| match self.modules.get(&Tag {
            component: Arc::from("transformer"),
            module: Arc::from(module),
        }) {
            Some(ModuleKind::Dense(Some((_, out)))) => Some(*out),
            _ => None,
        };
        let blocks = |kind: &str| {
            self.modules
                .keys()
                .filter(|tag| &*tag.component == "transformer")
                .filter_map(|tag| {
                    tag.module
                        .strip_prefix(kind)?
                        .split('.')
                        .next()?
                        .parse()
                        .ok()
                })
                .map(|i: usize| i + 1)
                .max()
                .unwrap_or(0)
        };
        let single_blocks = blocks("single_transformer_blocks.");
        Some(flux_bfl::Dims {
            width: features("x_embedder")?,
            double_blocks: blocks("transformer_blocks."),
            single_blocks,
            single_mlp: match single_blocks {
                0 => 0,
                _ => features("single_transformer_blocks.0.proj_mlp")?,
            },
            guidance: features("time_text_embed.guidance_embedder.linear_1").is_some(),
        })
    }

    /// Kohya's SDXL LoRAs name the UNet's layers as the original (SGM) checkpoints do
    /// (`input_blocks_4_1_transformer_blocks_0_attn1_to_q`): their spelling of each UNet module
    /// too.
    fn add_original_unet_names(&mut self, config: &Path) -> Result<()> {
        let config: serde_json::Value = crate::config_files::read_json(config)?;
        // One count for every block in the UNets Kohya trains (2 in SD and SDXL).
        let layers = match &config["layers_per_block"] {
            serde_json::Value::Array(counts) => counts.first().and_then(|n| n.as_u64()),
            count => count.as_u64(),
        }
        .unwrap_or(2) as usize;
        let unet: Vec<Tag> = self
            .modules
            .keys()
            .filter(|tag| &*tag.component == "unet")
            .cloned()
            .collect();
        let kohya = self.kohya.entry(Arc::from("unet")).or_default();
        for tag in unet {
            if let Some(original) = crate::checkpoint::sd_unet::original_module(&tag.module, layers)
            {
                kohya.insert(original.replace('.', "_"), tag);
            }
        }
        Ok(())
    }

    fn add_component(
        &mut self,
        component: &str,
        shapes: std::collections::BTreeMap<String, Option<Vec<usize>>>,
    ) {
        let component: Arc<str> = Arc::from(component);
        // CLIP weights may be stored without the `text_model.` prefix its layers are built with.
        let clip_without_prefix = shapes
            .keys()
            .any(|name| name.starts_with("embeddings.token_embedding"));
        let kohya = self.kohya.entry(component.clone()).or_default();
        for (name, shape) in &shapes {
            let Some(module) = name.strip_suffix(".weight") else {
                continue;
            };
            // Embedding tables are 2-D too, but no layer of ours applies a LoRA to them.
            if module.ends_with("embedding") {
                continue;
            }
            let kind = match shape.as_deref() {
                Some([out, inner]) => ModuleKind::Dense(Some((*inner, *out))),
                Some([out, inner, 1, 1]) => ModuleKind::Dense(Some((*inner, *out))),
                Some([_, _, _, _]) => ModuleKind::Conv,
                Some(_) => continue,
                None => ModuleKind::Dense(None),
            };
            let module = if clip_without_prefix && !module.starts_with("text_projection") {
                format!("text_model.{module}")
            } else {
                module.to_string()
            };
            let tag = Tag {
                component: component.clone(),
                module: Arc::from(module.as_str()),
            };
            kohya.insert(module.replace('.', "_"), tag.clone());
            self.modules.insert(tag, kind);
        }
    }

    /// A few module names of `component`, for messages that say what was expected.
    pub(crate) fn examples(&self, component: &str) -> Vec<String> {
        self.modules
            .iter()
            .filter(|(tag, kind)| &*tag.component == component && **kind != ModuleKind::Conv)
            .filter(|(tag, _)| tag.module.contains("attn") || tag.module.contains("attention"))
            .take(2)
            .map(|(tag, _)| format!("{}.{}", tag.component, tag.module))
            .collect()
    }
}

fn refuse_family(class: &str) -> EngineError {
    EngineError::invalid(
        "loras",
        format!("a {class} model takes no LoRAs; {FAMILIES_TAKING_LORAS} models do"),
    )
}
