//! One LoRA file: its layout, recognised from the tensor names in its header, and each of its
//! modules bound to a layer of the model.
//!
//! Two layouts are read:
//! - **Kohya / A1111**: `lora_unet_<module>`, `lora_te_<module>` (SD 1.x/2.x's one text
//!   encoder), `lora_te1_`/`lora_te2_` (SDXL's two), each with `.lora_down.weight`,
//!   `.lora_up.weight` and a scalar `.alpha`. The module is the diffusers path with `_` for
//!   `.`, which is ambiguous on its own (`down_blocks`, `to_q`), so it is looked up in the
//!   model's own modules spelled the same way ([`Targets`]).
//! - **diffusers / PEFT**: `unet.<module>`, `text_encoder.<module>`, `text_encoder_2.<module>`
//!   or `transformer.<module>` with `.lora_A.weight` and `.lora_B.weight`; `alpha` comes from
//!   the `lora_adapter_metadata` diffusers writes into the header (`<component>.lora_alpha`
//!   over `<component>.r`), and is the rank (a factor of 1) without it, as diffusers reads it.
//!
//! Kohya files for SDXL name the UNet's modules as the original SGM checkpoints do
//! (`lora_unet_input_blocks_4_1_...`); the targets know that spelling too
//! ([`crate::checkpoint::sd_unet::original_module`]). Kohya files for FLUX name the
//! transformer's modules as BFL's checkpoints do (`lora_unet_double_blocks_0_img_attn_qkv`,
//! `lora_unet_single_blocks_3_linear1`), where q, k and v (and a single block's MLP input) are
//! one fused layer that diffusers keeps as several. Such a module binds to each of those
//! layers with the rows of its change that layer takes ([`Cut`], from the same table that reads
//! BFL checkpoints, [`crate::checkpoint::flux_bfl::linears`]): the change `up @ down` is
//! `(out, in)` and the fused layer's rows are the split layers' rows stacked, so each layer's
//! share is `up[rows] @ down`, whether `up` is dense (one LoRA trained on the fused layer) or
//! block-diagonal (q, k and v trained apart and saved rank-concatenated). The final norm's
//! modulation swaps its halves, the change's rows too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use super::hook::{LowRank, Tag};
use super::targets::{ModuleKind, Targets};
use crate::checkpoint::flux_bfl::Cut;
use crate::error::{EngineError, Result};

/// How a file names its modules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Kohya,
    Peft,
}

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Self::Kohya => "kohya",
            Self::Peft => "diffusers/PEFT",
        }
    }
}

/// The tensor names of one module of the file.
#[derive(Debug, Clone, Default)]
struct ModuleKeys {
    down: Option<String>,
    up: Option<String>,
    alpha: Option<String>,
}

/// A LoRA file's header, read and sorted by module; tensors are read only by [`Self::load`].
#[derive(Debug, Clone)]
pub struct LoraFile {
    path: PathBuf,
    layout: Layout,
    /// By the module's name in the file, without the tensor suffix.
    modules: BTreeMap<String, ModuleKeys>,
    shapes: BTreeMap<String, Vec<usize>>,
    /// PEFT: `alpha` per component from the header's metadata.
    alphas: BTreeMap<String, f64>,
}

/// One module of a file bound to a layer of the model (a module on a fused BFL layer binds
/// to each of the layers it is cut into).
#[derive(Debug, Clone)]
pub struct Binding {
    pub tag: Tag,
    /// The rows of the module's change that this layer takes.
    rows: Cut,
    keys_down: String,
    keys_up: String,
    keys_alpha: Option<String>,
    rank: usize,
    /// PEFT's metadata alpha for the component, if any.
    alpha: Option<f64>,
}

const KOHYA_PREFIXES: [(&str, &str); 5] = [
    ("lora_unet_", "unet"),
    ("lora_te1_", "text_encoder"),
    ("lora_te2_", "text_encoder_2"),
    ("lora_te_", "text_encoder"),
    ("lora_transformer_", "transformer"),
];
const PEFT_PREFIXES: [&str; 4] = ["unet.", "text_encoder.", "text_encoder_2.", "transformer."];
/// Other adapter kinds, named so that the refusal says what the file is.
const OTHER_KINDS: [(&str, &str); 6] = [
    (".hada_w1_a", "LoHa"),
    (".lokr_w1", "LoKr"),
    (".lora_mid.weight", "LoCon with a Tucker core"),
    (".dora_scale", "DoRA"),
    (".lora_magnitude_vector", "DoRA"),
    (".oft_blocks", "OFT"),
];

fn bad(path: &Path, message: impl std::fmt::Display) -> EngineError {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    EngineError::invalid("loras", format!("{name}: {message}"))
}

impl LoraFile {
    /// Read the header of the safetensors file at `path` and recognise its layout.
    pub fn open(path: &Path) -> Result<Self> {
        let bytes = map_file(path)?;
        let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| bad(path, format!("not a safetensors file: {e:?}")))?;
        let shapes: BTreeMap<String, Vec<usize>> = metadata
            .tensors()
            .into_iter()
            .map(|(name, info)| (name, info.shape.clone()))
            .collect();
        let mut modules: BTreeMap<String, ModuleKeys> = BTreeMap::new();
        let (mut kohya, mut peft) = (0, 0);
        for name in shapes.keys() {
            if let Some((_, kind)) = OTHER_KINDS.iter().find(|(s, _)| name.contains(s)) {
                return Err(bad(
                    path,
                    format!(
                        "a {kind} adapter (`{name}`); only plain LoRA (down/up or A/B matrices) is applied"
                    ),
                ));
            }
            let (module, slot) = if let Some(m) = name.strip_suffix(".lora_down.weight") {
                kohya += 1;
                (m, 0)
            } else if let Some(m) = name.strip_suffix(".lora_up.weight") {
                kohya += 1;
                (m, 1)
            } else if let Some(m) = name.strip_suffix(".alpha") {
                (m, 2)
            } else if let Some(m) = name.strip_suffix(".lora_A.weight") {
                peft += 1;
                (m, 0)
            } else if let Some(m) = name.strip_suffix(".lora_B.weight") {
                peft += 1;
                (m, 1)
            } else {
                return Err(bad(
                    path,
                    no_layout(&format!("tensor `{name}` is not one of them")),
                ));
            };
            let keys = modules.entry(module.to_string()).or_default();
            let slot = match slot {
                0 => &mut keys.down,
                1 => &mut keys.up,
                _ => &mut keys.alpha,
            };
            *slot = Some(name.clone());
        }
        let layout = match (kohya, peft) {
            (0, 0) => return Err(bad(path, no_layout("it holds no LoRA tensors"))),
            (_, 0) => Layout::Kohya,
            (0, _) => Layout::Peft,
            _ => return Err(bad(path, no_layout("it mixes both"))),
        };
        for (module, keys) in &modules {
            if keys.down.is_none() || keys.up.is_none() {
                return Err(bad(
                    path,
                    format!("module `{module}` lacks its down (A) or up (B) matrix"),
                ));
            }
            let known = match layout {
                Layout::Kohya => KOHYA_PREFIXES.iter().any(|(p, _)| module.starts_with(p)),
                Layout::Peft => PEFT_PREFIXES.iter().any(|p| module.starts_with(p)),
            };
            if !known {
                let expected = match layout {
                    Layout::Kohya => "lora_unet_, lora_te_, lora_te1_ or lora_te2_",
                    Layout::Peft => "unet., text_encoder., text_encoder_2. or transformer.",
                };
                return Err(bad(
                    path,
                    format!(
                        "{} module `{module}` does not start with {expected}",
                        layout.name()
                    ),
                ));
            }
        }
        let alphas = peft_alphas(metadata.metadata().as_ref());
        Ok(Self {
            path: path.to_path_buf(),
            layout,
            modules,
            shapes,
            alphas,
        })
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Bind every module of the file to a layer of the model with these `targets`, checking
    /// ranks and shapes; an error names the first modules that fit nothing and what the model
    /// calls its layers.
    pub fn bind(&self, targets: &Targets) -> Result<Vec<Binding>> {
        let mut bindings = Vec::with_capacity(self.modules.len());
        let mut unknown = Vec::new();
        for (module, keys) in &self.modules {
            let (down, up) = (
                keys.down.clone().unwrap_or_default(),
                keys.up.clone().unwrap_or_default(),
            );
            let layers = self.layers_of(module, targets);
            if layers.is_empty() {
                unknown.push(module.clone());
                continue;
            }
            let (down_shape, up_shape) = (&self.shapes[&down], &self.shapes[&up]);
            let (rank, inner) = matrix(down_shape).ok_or_else(|| bad(&self.path, format!("`{down}` has shape {down_shape:?}; a LoRA's down matrix is (rank, in) or (rank, in, 1, 1)")))?;
            let (out, up_rank) = matrix(up_shape).ok_or_else(|| bad(&self.path, format!("`{up}` has shape {up_shape:?}; a LoRA's up matrix is (out, rank) or (out, rank, 1, 1)")))?;
            if up_rank != rank {
                return Err(bad(
                    &self.path,
                    format!("`{down}` has rank {rank} but `{up}` rank {up_rank}"),
                ));
            }
            self.check_shapes(module, (inner, out), &layers, targets)?;
            let alpha = self.alphas.get(&*layers[0].0.component).copied();
            for (tag, rows) in layers {
                bindings.push(Binding {
                    tag,
                    rows,
                    keys_down: down.clone(),
                    keys_up: up.clone(),
                    keys_alpha: keys.alpha.clone(),
                    rank,
                    alpha,
                });
            }
        }
        if !unknown.is_empty() {
            let component = bindings
                .first()
                .map(|b| b.tag.component.to_string())
                .unwrap_or_else(|| "unet".into());
            let mut examples = targets.examples(&component);
            if examples.is_empty() {
                examples = targets.examples("transformer");
            }
            return Err(bad(
                &self.path,
                format!(
                    "{} of its {} modules fit no layer of this model (first: `{}`); its layers are named like {}",
                    unknown.len(),
                    self.modules.len(),
                    unknown[0],
                    examples
                        .iter()
                        .map(|e| format!("`{e}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        Ok(bindings)
    }

    /// That `module`, mapping `features` `(in, out)`, fits the model's `layers` it binds to:
    /// none is a 3x3 convolution, each takes `in` features, and their rows add up to `out`.
    fn check_shapes(
        &self,
        module: &str,
        features: (usize, usize),
        layers: &[(Tag, Cut)],
        targets: &Targets,
    ) -> Result<()> {
        let mut expected = Some((0, 0));
        for (tag, _) in layers {
            match targets.modules[tag] {
                ModuleKind::Conv => {
                    return Err(bad(
                        &self.path,
                        format!(
                            "`{module}` changes the convolution {}.{}; LoRAs on 3x3 convolutions (LoCon) are not applied",
                            tag.component, tag.module
                        ),
                    ));
                }
                // A fused module's rows are its layers' rows stacked (the table cuts them by
                // the model's own widths).
                ModuleKind::Dense(Some((inner, out))) => {
                    expected = expected.map(|(_, rows)| (inner, rows + out));
                }
                ModuleKind::Dense(None) => expected = None,
            }
        }
        match expected {
            Some(expected) if expected != features => {
                let names: Vec<String> = layers
                    .iter()
                    .map(|(tag, _)| format!("{}.{}", tag.component, tag.module))
                    .collect();
                let layer = match names.as_slice() {
                    [one] => format!("model's {one}"),
                    many => format!("model's {} (fused)", many.join(" + ")),
                };
                Err(bad(
                    &self.path,
                    format!(
                        "`{module}` maps {} to {} features, but the {layer} maps {} to {}: a LoRA for another model",
                        features.0, features.1, expected.0, expected.1
                    ),
                ))
            }
            _ => Ok(()),
        }
    }

    /// The layers a module of the file names and the rows of its change each takes; none when
    /// the model has no such layer.
    fn layers_of(&self, module: &str, targets: &Targets) -> Vec<(Tag, Cut)> {
        let whole = |tag: Option<Tag>| tag.map(|tag| vec![(tag, Cut::Whole)]).unwrap_or_default();
        match self.layout {
            Layout::Peft => {
                let Some((component, path)) = PEFT_PREFIXES.iter().find_map(|p| {
                    module
                        .strip_prefix(p)
                        .map(|rest| (p.trim_end_matches('.'), rest))
                }) else {
                    return Vec::new();
                };
                let tag = Tag {
                    component: Arc::from(component),
                    module: Arc::from(path),
                };
                if targets.modules.contains_key(&tag) {
                    return whole(Some(tag));
                }
                // CLIP saved by a newer `transformers` has no `text_model.` prefix.
                let prefixed = Tag {
                    component: tag.component.clone(),
                    module: Arc::from(format!("text_model.{path}").as_str()),
                };
                whole(targets.modules.contains_key(&prefixed).then_some(prefixed))
            }
            Layout::Kohya => {
                let Some((prefix, component)) =
                    KOHYA_PREFIXES.iter().find(|(p, _)| module.starts_with(p))
                else {
                    return Vec::new();
                };
                let rest = &module[prefix.len()..];
                // FLUX's transformer in BFL's names (sd-scripts calls it the UNet too).
                if matches!(*component, "unet" | "transformer")
                    && let Some(layers) = targets.bfl.get(rest)
                {
                    return layers.clone();
                }
                whole(
                    targets
                        .kohya
                        .get(*component)
                        .and_then(|names| names.get(rest))
                        .cloned(),
                )
            }
        }
    }

    /// The bound modules' tensors as low-rank terms at the request's `scale`, on `device`.
    pub fn load(
        &self,
        bindings: &[Binding],
        scale: f64,
        device: &Device,
    ) -> Result<Vec<(Tag, LowRank)>> {
        let tensors = candle_core::safetensors::load(&self.path, &Device::Cpu)
            .map_err(|e| bad(&self.path, format!("cannot read its tensors: {e}")))?;
        let get = |name: &str| -> Result<Tensor> {
            tensors
                .get(name)
                .cloned()
                .ok_or_else(|| bad(&self.path, format!("missing tensor `{name}`")))
        };
        bindings
            .iter()
            .map(|binding| {
                let down = get(&binding.keys_down)?.to_dtype(DType::F32)?;
                let up = get(&binding.keys_up)?.to_dtype(DType::F32)?;
                let (rank, inner) = (down.dim(0)?, down.elem_count() / down.dim(0)?);
                let out = up.dim(0)?;
                let alpha = match &binding.keys_alpha {
                    Some(name) => get(name)?
                        .to_dtype(DType::F64)?
                        .flatten_all()?
                        .to_vec1::<f64>()?
                        .first()
                        .copied(),
                    None => binding.alpha,
                }
                .unwrap_or(binding.rank as f64);
                let factor = scale * alpha / rank as f64;
                let (down, up) = share(
                    down.reshape((rank, inner))?,
                    up.reshape((out, rank))?,
                    binding.rows,
                )?;
                let term = LowRank {
                    down_t: down.t()?.contiguous()?.to_device(device)?,
                    up_t: (up.t()? * factor)?.contiguous()?.to_device(device)?,
                };
                Ok((binding.tag.clone(), term))
            })
            .collect()
    }
}

/// A layer's share of a module's `down` `(rank, in)` and `up` `(out, rank)`: `up`'s rows
/// that the layer takes. When those rows leave some ranks unused (a block-diagonal `up`: q, k
/// and v trained apart and saved as one fused module), those ranks are dropped from both, so
/// the merge costs the layer's own rank and adds exactly what a file of the split layers would.
fn share(down: Tensor, up: Tensor, rows: Cut) -> candle_core::Result<(Tensor, Tensor)> {
    let up = match rows {
        Cut::Whole => return Ok((down, up)),
        Cut::SwappedHalves => {
            let half = up.dim(0)? / 2;
            return Ok((
                down,
                Tensor::cat(&[up.narrow(0, half, half)?, up.narrow(0, 0, half)?], 0)?,
            ));
        }
        Cut::Rows { start, len } => up.narrow(0, start, len)?,
    };
    let used: Vec<u32> = up
        .abs()?
        .max(0)?
        .to_vec1::<f32>()?
        .iter()
        .enumerate()
        .filter(|(_, largest)| **largest != 0.0)
        .map(|(rank, _)| rank as u32)
        .collect();
    if used.len() == up.dim(1)? {
        return Ok((down, up));
    }
    let used = Tensor::new(used.as_slice(), up.device())?;
    Ok((down.index_select(&used, 0)?, up.index_select(&used, 1)?))
}

/// `(rows, cols)` of a LoRA matrix stored 2-D or as a 1x1 convolution's weight.
fn matrix(shape: &[usize]) -> Option<(usize, usize)> {
    match shape {
        [a, b] | [a, b, 1, 1] => Some((*a, *b)),
        _ => None,
    }
}

fn no_layout(why: &str) -> String {
    format!(
        "fits no LoRA layout ({why}): expected Kohya names (`lora_unet_...`/`lora_te_...` with \
         `.lora_down.weight`, `.lora_up.weight`, `.alpha`) or diffusers/PEFT names \
         (`unet.`/`text_encoder.`/`transformer.<module>.lora_A.weight`, `.lora_B.weight`)"
    )
}

/// PEFT's `alpha` per component from diffusers' `lora_adapter_metadata` header entry
/// (`{"unet.lora_alpha": 8, "unet.r": 4, ...}`); components without one default to their rank.
fn peft_alphas(
    metadata: Option<&std::collections::HashMap<String, String>>,
) -> BTreeMap<String, f64> {
    let Some(raw) = metadata.and_then(|m| m.get("lora_adapter_metadata")) else {
        return BTreeMap::new();
    };
    let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(raw) else {
        return BTreeMap::new();
    };
    map.iter()
        .filter_map(|(key, value)| {
            let component = key.strip_suffix(".lora_alpha")?;
            Some((component.to_string(), value.as_f64()?))
        })
        .collect()
}

/// The file mapped read-only: parsing the header touches only its first pages (a LoRA can be
/// hundreds of MB and a request only needs its names).
fn map_file(path: &Path) -> Result<memmap2::Mmap> {
    let file = std::fs::File::open(path).map_err(|source| EngineError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    // SAFETY: mapped read-only; like the model folders, LoRA files must not be rewritten in
    // place while they are read.
    #[allow(unsafe_code)]
    unsafe { memmap2::Mmap::map(&file) }.map_err(|e| bad(path, format!("cannot map it: {e}")))
}
