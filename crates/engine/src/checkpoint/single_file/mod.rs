//! Describe a single-file checkpoint as a diffusers folder: read its header, tell what it is
//! from the tensors it holds, and write the folder's configs (inferred, or a base folder's),
//! tokenizers (built in, or the base's) and one [`super::POINTER`] per component.
//!
//! Beside `NAME.safetensors` (or `NAME.gguf`), an optional `NAME.json`, with paths relative to
//! the file, names a diffusers folder as `base`, whose configs, tokenizers and scheduler are
//! used instead of inferred ones and whose components fill in those the file lacks (a VAE-less
//! checkpoint, a FLUX transformer alone), and files for single components (`vae`,
//! `text_encoder`, `text_encoder_2`: see [`super::component_file`]). An optional `NAME.yaml`
//! (the original LDM config A1111 reads) marks a v-prediction model with
//! `parameterization: "v"`; SDXL files say so with a `v_pred` tensor.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::clip_text::{self, ClipShape};
use super::component_file::{self, Role};
use super::{Layout, Pointer, Shapes, flux_bfl, gguf, ldm_vae, sd_unet};
use crate::error::{EngineError, Result};

/// How a model is stored on disk, for listings.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelFormat {
    /// A diffusers folder (`model_index.json` and one folder per component).
    #[default]
    Folder,
    /// One `.safetensors` file in the original layout.
    SingleFile,
    /// A GGUF file (a FLUX.1 transformer or an SD/SDXL UNet), `quant` its most common
    /// quantized type (`q8_0`, `q4_k`, ...; `f16` when none is quantized).
    Gguf { quant: String },
}

impl std::fmt::Display for ModelFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Folder => f.write_str("diffusers folder"),
            Self::SingleFile => f.write_str("single file"),
            Self::Gguf { quant } => write!(f, "gguf {quant}"),
        }
    }
}

/// A checkpoint described as a diffusers folder, which lives as long as this does.
#[derive(Debug)]
pub struct Described {
    folder: tempfile::TempDir,
    pub format: ModelFormat,
    /// The bytes of the weight files it reads (the checkpoint, component files, the base's
    /// components), each once.
    pub weights_bytes: u64,
}

impl Described {
    pub fn dir(&self) -> &Path {
        self.folder.path()
    }
}

mod flux;

/// The CLIP tokenizer every SD checkpoint's text encoders use, built in so that a checkpoint
/// needs no folder.
const VOCAB: &[u8] = include_bytes!("../../../../../fixtures/clip-tokenizer/vocab.json");
const MERGES: &[u8] = include_bytes!("../../../../../fixtures/clip-tokenizer/merges.txt");

/// Where each component of an SD/SDXL checkpoint lives in the original layout.
const UNET: &str = "model.diffusion_model.";
const VAE: &str = "first_stage_model.";
const SD1_CLIP: &str = "cond_stage_model.transformer.";
const SD2_CLIP: &str = "cond_stage_model.model.";
const SDXL_CLIP_L: &str = "conditioner.embedders.0.transformer.";
const SDXL_CLIP_G: &str = "conditioner.embedders.1.model.";

/// Where the UNet's names start: under [`UNET`] in a full checkpoint, at the top in a file of
/// the UNet alone.
fn unet_prefix(shapes: &Shapes) -> Option<&'static str> {
    [UNET, ""]
        .into_iter()
        .find(|prefix| shapes.contains_key(&format!("{prefix}input_blocks.0.0.weight")))
}

/// The kinds of checkpoint recognised, by the tensors that give them away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sd1,
    Sd2,
    Sdxl,
    /// A FLUX.1 transformer in BFL's layout (safetensors or GGUF); the rest comes from
    /// component files or a base folder.
    Flux,
}

/// `NAME.json` beside a checkpoint; paths in it are relative to the checkpoint's folder.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Sidecar {
    /// A diffusers folder for configs, tokenizers, scheduler and missing components.
    base: Option<PathBuf>,
    /// Component files used instead of the checkpoint's own or the base's.
    text_encoder: Option<PathBuf>,
    text_encoder_2: Option<PathBuf>,
    vae: Option<PathBuf>,
}

impl Sidecar {
    fn resolve(self, dir: &Path) -> Self {
        let at = |path: Option<PathBuf>| path.map(|path| dir.join(path));
        Self {
            base: at(self.base),
            text_encoder: at(self.text_encoder),
            text_encoder_2: at(self.text_encoder_2),
            vae: at(self.vae),
        }
    }

    fn file(&self, component: &str) -> Option<&Path> {
        match component {
            "text_encoder" => self.text_encoder.as_deref(),
            "text_encoder_2" => self.text_encoder_2.as_deref(),
            "vae" => self.vae.as_deref(),
            _ => None,
        }
    }
}

/// Describe `file` (see the module docs).
pub fn describe(file: &Path) -> Result<Described> {
    let invalid = |message: String| EngineError::Weights {
        path: file.to_path_buf(),
        message,
    };
    let shapes = super::read_shapes(file)?;
    let kind = recognise(&shapes).map_err(invalid)?;
    let sidecar = read_sidecar(file)?.resolve(file.parent().unwrap_or(Path::new(".")));
    if let Some(base) = &sidecar.base
        && !base.join("model_index.json").is_file()
    {
        return Err(EngineError::MissingFile {
            path: base.join("model_index.json"),
        });
    }
    let folder = tempfile::Builder::new()
        .prefix("seedbed-checkpoint-")
        .tempdir()
        .map_err(|source| EngineError::Io {
            path: std::env::temp_dir(),
            source,
        })?;
    let writer = Writer {
        file,
        shapes: &shapes,
        sidecar: &sidecar,
        out: folder.path(),
        v_prediction: v_prediction(file, &shapes),
    };
    writer.write(kind).map_err(|error| match error {
        Problem::Layout(message) => invalid(message),
        Problem::Engine(error) => error,
    })?;
    Ok(Described {
        format: format_of(file)?,
        weights_bytes: crate::model::safetensors_bytes(folder.path()),
        folder,
    })
}

/// A safetensors checkpoint, or a GGUF one by its most common quantized type.
fn format_of(file: &Path) -> Result<ModelFormat> {
    if !gguf::is_gguf(file) {
        return Ok(ModelFormat::SingleFile);
    }
    let mut handle = std::fs::File::open(file).map_err(|source| EngineError::Io {
        path: file.to_path_buf(),
        source,
    })?;
    let content = candle_core::quantized::gguf_file::Content::read(&mut handle).map_err(|e| {
        EngineError::Weights {
            path: file.to_path_buf(),
            message: format!("not a valid GGUF file: {e}"),
        }
    })?;
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for info in content.tensor_infos.values() {
        *counts.entry(ggml_type_name(info.ggml_dtype)).or_default() += 1;
    }
    let dense = ["f32", "f16", "bf16"];
    let quantized = counts
        .iter()
        .filter(|(name, _)| !dense.contains(&name.as_str()));
    let most = quantized
        .max_by_key(|(_, count)| **count)
        .map(|(name, _)| name.clone());
    let quant = most.unwrap_or_else(|| match counts.contains_key("f16") {
        true => "f16".into(),
        false => "f32".into(),
    });
    Ok(ModelFormat::Gguf { quant })
}

/// A GGUF type as the community names it: `q8_0`, `q4_k`, `f16`.
fn ggml_type_name(dtype: candle_core::quantized::GgmlDType) -> String {
    let name = format!("{dtype:?}").to_ascii_lowercase();
    match name.strip_suffix('k') {
        Some(stem) if !stem.ends_with('_') => format!("{stem}_k"),
        _ => name,
    }
}

/// The names and shapes in a safetensors header; a file shorter than its header says is
/// refused as truncated.
pub(super) fn read_safetensors_shapes(file: &Path) -> Result<Shapes> {
    let io = |source| EngineError::Io {
        path: file.to_path_buf(),
        source,
    };
    let invalid = |message: String| EngineError::Weights {
        path: file.to_path_buf(),
        message,
    };
    use std::io::Read;
    let mut handle = std::fs::File::open(file).map_err(io)?;
    let length = handle.metadata().map_err(io)?.len();
    let mut size = [0u8; 8];
    handle
        .read_exact(&mut size)
        .map_err(|_| invalid("not a safetensors file: shorter than its header".into()))?;
    let header_len = u64::from_le_bytes(size);
    if header_len > 100_000_000 || 8 + header_len > length {
        return Err(invalid(format!(
            "not a safetensors file (truncated or corrupt?): a {header_len}-byte header in a \
             {length}-byte file"
        )));
    }
    let mut header = vec![0u8; header_len as usize];
    handle.read_exact(&mut header).map_err(io)?;
    let entries: serde_json::Map<String, Value> = serde_json::from_slice(&header).map_err(|e| {
        invalid(format!(
            "not a safetensors file: its header is not JSON ({e})"
        ))
    })?;
    let mut shapes = Shapes::new();
    let mut data_end = 0u64;
    for (name, entry) in entries {
        if name == "__metadata__" {
            continue;
        }
        let shape = entry["shape"].as_array().map(|dims| {
            dims.iter()
                .filter_map(|d| d.as_u64().map(|d| d as usize))
                .collect::<Vec<_>>()
        });
        let end = entry["data_offsets"][1].as_u64();
        let (Some(shape), Some(end)) = (shape, end) else {
            return Err(invalid(format!("tensor `{name}` has no shape or offsets")));
        };
        data_end = data_end.max(end);
        shapes.insert(name, shape);
    }
    // Offsets come from the file: no arithmetic on them may overflow.
    let end = (8 + header_len).saturating_add(data_end);
    if end > length {
        return Err(invalid(format!(
            "truncated: its tensors end at byte {end} but the file has {length}"
        )));
    }
    Ok(shapes)
}

fn recognise(shapes: &Shapes) -> Result<Kind, String> {
    let has = |prefix: &str| {
        shapes
            .range(prefix.to_string()..)
            .next()
            .is_some_and(|(name, _)| name.starts_with(prefix))
    };
    if let Some(unet) = unet_prefix(shapes) {
        if has(SDXL_CLIP_G) || has(&format!("{unet}label_emb.")) {
            return Ok(Kind::Sdxl);
        }
        if has(SD2_CLIP) {
            return Ok(Kind::Sd2);
        }
        if has(SD1_CLIP) {
            return Ok(Kind::Sd1);
        }
        // A UNet alone (city96's GGUF UNets, UNet-only files): its cross-attention width
        // tells SD 1.x (CLIP-L) from SD 2.x (OpenCLIP-H).
        let cross = sd_unet::read_shape(shapes, unet)?.cross_attention_dim;
        return Ok(if cross == 768 { Kind::Sd1 } else { Kind::Sd2 });
    }
    if flux_bfl::config(shapes).is_ok() {
        return Ok(Kind::Flux);
    }
    let sample: Vec<&str> = shapes.keys().take(3).map(String::as_str).collect();
    let lora = shapes.keys().any(|name| {
        name.contains("lora_down") || name.contains("lora_A") || name.contains(".lora.")
    });
    Err(if lora {
        "this is a LoRA, not a model: put it in the --loras-dir folder".into()
    } else {
        format!(
            "not a checkpoint seedbed knows: expected an SD 1.x/2.x or SDXL checkpoint in the \
             original layout (tensors `{UNET}input_blocks.*`, `{VAE}*`, `cond_stage_model.*` or \
             `conditioner.embedders.*`) or a FLUX.1 transformer in BFL's (`double_blocks.*`, \
             `img_in.*`); it holds {} tensors such as {}",
            shapes.len(),
            sample.join(", ")
        )
    })
}

/// The component files `file`'s `NAME.json` names (absolute when the file's path is): parts
/// of that model, not models of their own.
pub fn component_files(file: &Path) -> Vec<PathBuf> {
    let Ok(sidecar) = read_sidecar(file) else {
        return Vec::new();
    };
    let sidecar = sidecar.resolve(file.parent().unwrap_or(Path::new(".")));
    [sidecar.text_encoder, sidecar.text_encoder_2, sidecar.vae]
        .into_iter()
        .flatten()
        .collect()
}

fn read_sidecar(file: &Path) -> Result<Sidecar> {
    let path = file.with_extension("json");
    if path.is_file() {
        crate::config_files::read_json(&path)
    } else {
        Ok(Sidecar::default())
    }
}

/// An SDXL `v_pred` marker tensor, or `parameterization: "v"` in the LDM yaml beside the file.
fn v_prediction(file: &Path, shapes: &Shapes) -> bool {
    if shapes.contains_key("v_pred") {
        return true;
    }
    let yaml = std::fs::read_to_string(file.with_extension("yaml")).unwrap_or_default();
    yaml.lines().any(|line| {
        let line = line.trim();
        line.strip_prefix("parameterization:")
            .is_some_and(|value| value.trim().trim_matches(['"', '\'']) == "v")
    })
}

enum Problem {
    /// The tensors are not what the layout needs.
    Layout(String),
    Engine(EngineError),
}

impl From<String> for Problem {
    fn from(message: String) -> Self {
        Self::Layout(message)
    }
}

impl From<EngineError> for Problem {
    fn from(error: EngineError) -> Self {
        Self::Engine(error)
    }
}

struct Writer<'a> {
    file: &'a Path,
    shapes: &'a Shapes,
    sidecar: &'a Sidecar,
    out: &'a Path,
    v_prediction: bool,
}

/// One text encoder slot of a pipeline: where its tensors live in the file and how its
/// tokenizer pads.
struct TextSlot {
    component: &'static str,
    tokenizer: &'static str,
    layout: Option<Layout>,
    act: &'static str,
    pad: &'static str,
}

impl Writer<'_> {
    /// Write the described folder.
    fn write(&self, kind: Kind) -> Result<(), Problem> {
        match kind {
            Kind::Flux => self.write_flux()?,
            _ => self.write_sd(kind)?,
        }
        self.scheduler(kind)?;
        self.model_index(kind)?;
        Ok(())
    }

    /// SD and SDXL's components.
    fn write_sd(&self, kind: Kind) -> Result<(), Problem> {
        let prefix = unet_prefix(self.shapes).unwrap_or(UNET);
        let unet = sd_unet::read_shape(self.shapes, prefix)?;
        let sdxl = kind == Kind::Sdxl;
        for slot in self.text_slots(kind) {
            let own = match slot.layout {
                Some(layout) => {
                    let shape = ClipShape::read(self.shapes, &layout.remap(self.shapes)?)?;
                    Some((layout, shape.config(slot.act)))
                }
                None => None,
            };
            let role = Role::TextEncoder { clip_act: slot.act };
            self.component(slot.component, own, Some(role))?;
            self.tokenizer(slot.tokenizer, slot.pad)?;
        }
        let sample_size = match kind {
            Kind::Sd1 => 64,
            Kind::Sd2 if self.v_prediction => 96,
            Kind::Sd2 => 64,
            Kind::Sdxl | Kind::Flux => 128,
        };
        // SDXL's pooled text embedding (the second encoder's projection) shares the UNet's
        // addition input with the size-and-crop embeddings.
        let pooled = match sdxl {
            true => self.written_config("text_encoder_2")?["projection_dim"]
                .as_u64()
                .unwrap_or(0) as usize,
            false => 0,
        };
        let unet_layout = Layout::SdUnet {
            prefix: prefix.into(),
        };
        let own_unet = Some((unet_layout, unet.config(pooled, sample_size)));
        self.component("unet", own_unet, None)?;
        let scale = if sdxl { 0.13025 } else { 0.18215 };
        let own_vae = match self
            .shapes
            .contains_key(&format!("{VAE}decoder.conv_in.weight"))
        {
            true => {
                let mut config = ldm_vae::config(self.shapes, VAE, scale, None)?;
                config["sample_size"] = json!(sample_size * 8);
                Some((Layout::LdmVae { prefix: VAE.into() }, config))
            }
            false => None,
        };
        let role = Role::Vae { scale, shift: None };
        self.component("vae", own_vae, Some(role))?;
        Ok(())
    }

    /// The config a component got in the described folder.
    fn written_config(&self, component: &str) -> Result<Value> {
        crate::config_files::read_json(&self.out.join(component).join("config.json"))
    }

    fn text_slots(&self, kind: Kind) -> Vec<TextSlot> {
        let present = |prefix: &str| {
            self.shapes
                .range(prefix.to_string()..)
                .next()
                .is_some_and(|(name, _)| name.starts_with(prefix))
        };
        let clip = |prefix: &str| {
            present(prefix).then(|| Layout::Clip {
                prefix: prefix.into(),
            })
        };
        let open_clip = |prefix: &str, drop_last: bool| {
            present(prefix).then(|| Layout::OpenClip {
                prefix: prefix.into(),
                layers: clip_text::open_clip_layers(self.shapes, prefix) - usize::from(drop_last),
            })
        };
        match kind {
            Kind::Sd1 => vec![TextSlot {
                component: "text_encoder",
                tokenizer: "tokenizer",
                layout: clip(SD1_CLIP),
                act: "quick_gelu",
                pad: "<|endoftext|>",
            }],
            // SD 2 reads OpenCLIP's penultimate layer: diffusers keeps the layers before it.
            Kind::Sd2 => vec![TextSlot {
                component: "text_encoder",
                tokenizer: "tokenizer",
                layout: open_clip(SD2_CLIP, true),
                act: "gelu",
                pad: "!",
            }],
            Kind::Flux => Vec::new(),
            Kind::Sdxl => vec![
                TextSlot {
                    component: "text_encoder",
                    tokenizer: "tokenizer",
                    layout: clip(SDXL_CLIP_L),
                    act: "quick_gelu",
                    pad: "<|endoftext|>",
                },
                TextSlot {
                    component: "text_encoder_2",
                    tokenizer: "tokenizer_2",
                    layout: open_clip(SDXL_CLIP_G, false),
                    act: "gelu",
                    pad: "!",
                },
            ],
        }
    }

    /// The base folder's `component`, when there is a base and it has one.
    fn base_dir(&self, component: &str) -> Option<PathBuf> {
        self.sidecar
            .base
            .as_ref()
            .map(|base| base.join(component))
            .filter(|dir| dir.is_dir())
    }

    /// Give the folder its component `name`: from the file `NAME.json` names for it, else
    /// from the checkpoint (`own`: its layout there and inferred config), else the base's
    /// folder as it is. A config from the base wins over an inferred one. `role` says what a
    /// separate file must be (`None`: the component never comes as one).
    fn component(
        &self,
        name: &str,
        own: Option<(Layout, Value)>,
        role: Option<Role>,
    ) -> Result<(), Problem> {
        let dir = self.out.join(name);
        // Only text encoders and VAEs come as files of their own.
        let separate = role.and_then(|role| Some((self.sidecar.file(name)?, role)));
        let (file, layout, inferred) = match (separate, own) {
            (Some((file, role)), _) => {
                let shapes = super::read_shapes(file)?;
                let (layout, config) = component_file::read(&shapes, role).map_err(|message| {
                    EngineError::Weights {
                        path: file.to_path_buf(),
                        message,
                    }
                })?;
                (file.to_path_buf(), layout, config)
            }
            (None, Some((layout, config))) => (self.file.to_path_buf(), layout, config),
            (None, None) => {
                let Some(base) = self.base_dir(name) else {
                    return Err(Problem::Layout(format!(
                        "it has no {name}; name a file for it, or a diffusers folder to take it \
                         from, in {} ({{\"{name}\": \"FILE\"}} or {{\"base\": \"FOLDER\"}})",
                        self.file.with_extension("json").display()
                    )));
                };
                return Ok(link(&base, &dir)?);
            }
        };
        let pointer = Pointer {
            file: std::path::absolute(&file).unwrap_or_else(|_| file.clone()),
            layout,
        };
        pointer.write(&dir)?;
        match self.base_dir(name) {
            Some(base) => copy(&base.join("config.json"), &dir.join("config.json"))?,
            None => write_json(&dir.join("config.json"), &inferred)?,
        }
        Ok(())
    }

    fn tokenizer(&self, name: &str, pad: &str) -> Result<()> {
        if let Some(base) = self.base_dir(name) {
            return link(&base, &self.out.join(name));
        }
        let dir = self.out.join(name);
        create(&dir)?;
        write(&dir.join("vocab.json"), VOCAB)?;
        write(&dir.join("merges.txt"), MERGES)?;
        let config = json!({
            "tokenizer_class": "CLIPTokenizer",
            "model_max_length": 77,
            "bos_token": "<|startoftext|>",
            "eos_token": "<|endoftext|>",
            "unk_token": "<|endoftext|>",
            "pad_token": pad,
        });
        write_json(&dir.join("tokenizer_config.json"), &config)
    }

    fn scheduler(&self, kind: Kind) -> Result<()> {
        if let Some(base) = self.base_dir("scheduler") {
            return link(&base, &self.out.join("scheduler"));
        }
        if kind == Kind::Flux {
            return self.flux_scheduler();
        }
        let prediction = if self.v_prediction {
            "v_prediction"
        } else {
            "epsilon"
        };
        // What SD's and SDXL's original training used.
        let config = json!({
            "_class_name": "EulerDiscreteScheduler",
            "num_train_timesteps": 1000,
            "beta_start": 0.00085,
            "beta_end": 0.012,
            "beta_schedule": "scaled_linear",
            "prediction_type": prediction,
            "timestep_spacing": "leading",
            "steps_offset": 1,
        });
        let dir = self.out.join("scheduler");
        create(&dir)?;
        write_json(&dir.join("scheduler_config.json"), &config)
    }

    fn model_index(&self, kind: Kind) -> Result<()> {
        let path = self.out.join("model_index.json");
        if let Some(base) = &self.sidecar.base {
            return copy(&base.join("model_index.json"), &path);
        }
        let pair = |library: &str, class: &str| json!([library, class]);
        let mut index = json!({
            "_class_name": "StableDiffusionPipeline",
            "scheduler": pair("diffusers", "EulerDiscreteScheduler"),
            "text_encoder": pair("transformers", "CLIPTextModel"),
            "tokenizer": pair("transformers", "CLIPTokenizer"),
            "unet": pair("diffusers", "UNet2DConditionModel"),
            "vae": pair("diffusers", "AutoencoderKL"),
        });
        if kind == Kind::Flux {
            index = json!({
                "_class_name": "FluxPipeline",
                "scheduler": pair("diffusers", "FlowMatchEulerDiscreteScheduler"),
                "text_encoder": pair("transformers", "CLIPTextModel"),
                "text_encoder_2": pair("transformers", "T5EncoderModel"),
                "tokenizer": pair("transformers", "CLIPTokenizer"),
                "tokenizer_2": pair("transformers", "T5TokenizerFast"),
                "transformer": pair("diffusers", "FluxTransformer2DModel"),
                "vae": pair("diffusers", "AutoencoderKL"),
            });
        }
        if kind == Kind::Sdxl {
            index["_class_name"] = json!("StableDiffusionXLPipeline");
            index["text_encoder_2"] = pair("transformers", "CLIPTextModelWithProjection");
            index["tokenizer_2"] = pair("transformers", "CLIPTokenizer");
            index["force_zeros_for_empty_prompt"] = json!(true);
        }
        write_json(&path, &index)
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> EngineError + '_ {
    move |source| EngineError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn create(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io(dir))
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(io(path))
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    write(
        path,
        &serde_json::to_vec_pretty(value).expect("JSON values serialize"),
    )
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to).map(|_| ()).map_err(io(from))
}

/// The base's folder, in place (a symbolic link: nothing is copied).
fn link(from: &Path, to: &Path) -> Result<()> {
    let from = std::path::absolute(from).map_err(io(from))?;
    std::os::unix::fs::symlink(&from, to).map_err(io(to))
}
