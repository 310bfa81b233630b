//! Reference parity: run the engine on the diffusers reference cases (format in
//! `fixtures/README.md`) and compare every stage the case carries.
//!
//! The intermediate stages are what make this meaningful: with random weights a tiny VAE is
//! almost blind to latent errors, so the image alone would let a wrong UNet pass. Each stage
//! is checked where it happens and the first failing one is named.

use std::any::Any;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use candle_core::{DType, Device, Tensor};

mod flow;
mod flux;
mod sd3;
mod zimage;

use crate::config_files::read_json;
use crate::error::{EngineError, Result};
use crate::model::{Family, ModelIndex};
use crate::pipeline::LoadOptions;
use crate::scheduler::{NoiseSource, SchedulerKind, unset_init_noise_sigma};
use crate::sd::unet::AddedConditioning;
use crate::sd::{EncodedPrompts, Run, SdPipeline, Start};

/// One entry of `cases.json`.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Case {
    pub name: String,
    pub model: String,
    pub prompt: String,
    #[serde(default)]
    pub negative_prompt: Option<String>,
    pub seed: u64,
    pub height: u32,
    pub width: u32,
    pub steps: usize,
    pub guidance_scale: f64,
    pub scheduler: String,
    #[serde(default)]
    pub scheduler_config: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    pub strength: Option<f64>,
    #[serde(default)]
    pub init_image: Option<bool>,
    /// The DiT families: the T5 (or Qwen3) token count.
    #[serde(default)]
    pub max_sequence_length: Option<usize>,
    /// FLUX: true CFG with the negative prompt when above 1.
    #[serde(default)]
    pub true_cfg_scale: Option<f64>,
    /// LoRAs applied for this case (`fixtures/cases-lora`), files in the runner's LoRA folder.
    #[serde(default)]
    pub loras: Vec<CaseLora>,
}

/// One LoRA of a case: a file name in the LoRA folder and its scale.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct CaseLora {
    pub file: String,
    pub scale: f64,
}

/// One compared tensor.
#[derive(Debug, Clone)]
pub struct Comparison {
    pub stage: &'static str,
    pub tensor: String,
    pub max_abs: f64,
    pub mean_abs: f64,
    pub bound: f64,
}

impl Comparison {
    pub fn passed(&self) -> bool {
        self.max_abs <= self.bound
    }
}

#[derive(Debug, Clone)]
pub struct CaseReport {
    pub name: String,
    pub comparisons: Vec<Comparison>,
    /// Set when the case could not be run to the end, or its token ids differ.
    pub error: Option<String>,
    /// Set for a case of a model family this engine does not run yet: neither passed nor
    /// failed.
    pub skipped: Option<String>,
}

impl CaseReport {
    pub fn passed(&self) -> bool {
        self.skipped.is_none()
            && self.error.is_none()
            && self.comparisons.iter().all(Comparison::passed)
    }

    /// `NAME max_abs=... mean_abs=... PASS|FAIL`, the numbers being the final image's; a
    /// failure names its first failing stage.
    pub fn line(&self) -> String {
        if let Some(reason) = &self.skipped {
            return format!("{} SKIP ({reason})", self.name);
        }
        let image = self.comparisons.iter().find(|c| c.stage == "image");
        let numbers = match image {
            Some(c) => format!("max_abs={:.3e} mean_abs={:.3e}", c.max_abs, c.mean_abs),
            None => "max_abs=- mean_abs=-".to_string(),
        };
        if self.passed() {
            return format!("{} {numbers} PASS", self.name);
        }
        let cause = match (&self.error, self.comparisons.iter().find(|c| !c.passed())) {
            (Some(error), _) => error.clone(),
            (None, Some(c)) => format!(
                "first failing stage: {} ({} max_abs {:.3e} > {:.3e})",
                c.stage, c.tensor, c.max_abs, c.bound
            ),
            (None, None) => String::new(),
        };
        format!("{} {numbers} FAIL ({cause})", self.name)
    }
}

pub fn read_cases(cases_dir: &Path) -> Result<Vec<Case>> {
    read_json(&cases_dir.join("cases.json"))
}

/// Runs cases, loading each model folder once.
pub struct ParityRunner {
    models_dir: PathBuf,
    cases_dir: PathBuf,
    image_tolerance: f64,
    stage_tolerance: f64,
    options: LoadOptions,
    /// Each model's pipeline, of its family's type, loaded by its first case.
    pipelines: HashMap<String, Box<dyn Any>>,
    /// Where a case's `loras` files are: `loras/` beside the cases folder unless told.
    loras_dir: PathBuf,
}

/// A family's stage-by-stage check of one case (its row in `crate::model`'s table).
pub(crate) type ParityCheck = fn(&mut ParityRunner, &Case, &mut Vec<Comparison>) -> Result<()>;

/// Intermediate stages (text embeddings, the UNet probe, final latents) may differ by this
/// fraction of the reference tensor's largest magnitude (at least 1) unless told otherwise.
pub const DEFAULT_STAGE_TOLERANCE: f64 = 1e-3;

impl ParityRunner {
    pub fn new(
        cases_dir: &Path,
        models_dir: &Path,
        image_tolerance: f64,
        options: LoadOptions,
    ) -> Self {
        Self {
            models_dir: models_dir.to_path_buf(),
            cases_dir: cases_dir.to_path_buf(),
            image_tolerance,
            stage_tolerance: DEFAULT_STAGE_TOLERANCE,
            options,
            pipelines: HashMap::new(),
            loras_dir: cases_dir.parent().unwrap_or(Path::new(".")).join("loras"),
        }
    }

    /// The LoRA set a case asks for, bound to its model (none without `loras`).
    fn lora_set(&self, case: &Case) -> Result<Option<std::sync::Arc<crate::lora::ActiveSet>>> {
        let choices: Vec<_> = case
            .loras
            .iter()
            .map(|lora| crate::lora::LoraChoice {
                name: lora.file.clone(),
                path: self.loras_dir.join(&lora.file),
                scale: lora.scale,
            })
            .collect();
        crate::lora::Loras::new(
            &self.models_dir.join(&case.model),
            self.options.device.clone(),
        )
        .set(&choices)
    }

    /// The image's budget for the cases run next (the models stay loaded).
    pub fn set_image_tolerance(&mut self, tolerance: f64) {
        self.image_tolerance = tolerance;
    }

    /// Allow intermediate stages to differ by `fraction` of the reference's largest magnitude
    /// (half-precision weights need more than [`DEFAULT_STAGE_TOLERANCE`]).
    pub fn with_stage_tolerance(mut self, fraction: f64) -> Self {
        self.stage_tolerance = fraction;
        self
    }

    pub fn run(&mut self, case: &Case) -> CaseReport {
        let mut comparisons = Vec::new();
        let mut skipped = None;
        let outcome = match self.family_of(&case.model) {
            // A case's LoRAs are active for every stage its family's check runs.
            Ok(Ok(family)) => match self.lora_set(case) {
                Ok(set) => crate::lora::with_active(set, || {
                    (family.entry().parity)(self, case, &mut comparisons)
                }),
                Err(error) => Err(error),
            },
            Ok(Err(class)) => {
                skipped = Some(format!("{class} is not supported yet"));
                Ok(())
            }
            Err(error) => Err(error),
        };
        CaseReport {
            name: case.name.clone(),
            comparisons,
            error: outcome.err().map(|e| e.to_string()),
            skipped,
        }
    }

    /// The family of a model folder, or the class it names when no family runs it.
    fn family_of(&self, model: &str) -> Result<std::result::Result<Family, String>> {
        let dir = self.models_dir.join(model);
        let index = ModelIndex::read(&dir)?;
        Ok(index.family(&dir).map_err(|_| index.class_name))
    }

    /// Load `model` with `load` unless an earlier case did.
    fn load<P: 'static>(
        &mut self,
        model: &str,
        load: impl FnOnce(&Path, &ModelIndex, LoadOptions) -> Result<P>,
    ) -> Result<()> {
        if !self.pipelines.contains_key(model) {
            let dir = self.models_dir.join(model);
            let index = ModelIndex::read(&dir)?;
            let pipeline = load(&dir, &index, self.options.clone())?;
            self.pipelines.insert(model.to_string(), Box::new(pipeline));
        }
        Ok(())
    }

    /// The pipeline [`Self::load`] loaded for `model`.
    fn loaded<P: 'static>(&self, model: &str) -> Result<&P> {
        self.pipelines
            .get(model)
            .and_then(|pipeline| pipeline.downcast_ref::<P>())
            .ok_or_else(|| {
                EngineError::invalid("model", format!("{model} is not loaded as this family"))
            })
    }

    fn tensors(&self, case: &Case) -> Result<CaseTensors> {
        let path = self.cases_dir.join(format!("{}.safetensors", case.name));
        let map = candle_core::safetensors::load(&path, &Device::Cpu).map_err(|e| {
            EngineError::Weights {
                path: path.clone(),
                message: e.to_string(),
            }
        })?;
        Ok(CaseTensors { path, map })
    }

    /// An SD or SDXL case.
    pub(crate) fn check_sd(&mut self, case: &Case, out: &mut Vec<Comparison>) -> Result<()> {
        let case_tensors = self.tensors(case)?;
        let (tensors, get) = (&case_tensors.map, |name: &str| case_tensors.get(name));
        let image_bound = Bound::Absolute(self.image_tolerance);
        let stage = Bound::Relative(self.stage_tolerance);
        let device = self.options.device.clone();
        self.load(&case.model, |dir, _, options| {
            SdPipeline::load(dir, options)
        })?;
        let pipeline: &SdPipeline = self.loaded(&case.model)?;

        check_tokens(
            &pipeline.text().token_ids(&case.prompt),
            &get("prompt_token_ids")?,
        )?;

        let prompts = pipeline.encode_prompts(
            &case.prompt,
            case.negative_prompt.as_deref(),
            case.guidance_scale,
        )?;
        compare_text(&prompts, tensors, stage, out)?;

        if let (Some(latents), Some(timestep), Some(eps)) = (
            tensors.get("probe_latents"),
            tensors.get("probe_timestep"),
            tensors.get("probe_eps"),
        ) {
            let probe = probe_unet(pipeline, case, tensors, latents, timestep, &device)?;
            out.push(compare("unet probe", "probe_eps", &probe, eps, stage)?);
        }

        let scheduler: SchedulerKind = case
            .scheduler
            .parse()
            .map_err(|e: EngineError| EngineError::invalid("scheduler", e.to_string()))?;
        let scheduler_config = match &case.scheduler_config {
            Some(overrides) => pipeline.scheduler_config().with_overrides(overrides)?,
            None => pipeline.scheduler_config().clone(),
        };
        let start = if case.init_image.unwrap_or(false) {
            Start::Image {
                image: get("init_image")?.to_device(&device)?,
                noise: get("noise")?.to_device(&device)?,
                strength: case.strength.unwrap_or(1.0),
            }
        } else {
            // The reference scripts scale the stored noise by a fresh scheduler's
            // init_noise_sigma before handing it to the pipeline, which scales it again once
            // the timesteps are set (this matters for Euler, where the factor is not 1).
            let prescale = unset_init_noise_sigma(scheduler, &scheduler_config);
            Start::Noise((get("initial_latents")?.to_device(&device)? * prescale)?)
        };
        let run = Run {
            prompts: &prompts,
            guidance_scale: case.guidance_scale,
            width: case.width,
            height: case.height,
            steps: case.steps,
            scheduler,
            scheduler_config: &scheduler_config,
            karras_sigmas: false,
            start,
        };
        let output = pipeline.run(
            run,
            &mut NoFreshNoise,
            &mut |_, _, _| {},
            &AtomicBool::new(false),
        )?;
        if let Some(reference) = tensors.get("final_latents") {
            out.push(compare(
                "latents",
                "final_latents",
                &output.final_latents,
                reference,
                stage,
            )?);
        }
        let image = output.image.squeeze(0)?;
        out.push(compare(
            "image",
            "image",
            &image,
            &get("image")?,
            image_bound,
        )?);
        Ok(())
    }
}

/// A case's tensors, and the file they came from for error messages.
struct CaseTensors {
    path: PathBuf,
    map: HashMap<String, Tensor>,
}

impl CaseTensors {
    fn get(&self, name: &str) -> Result<Tensor> {
        self.map
            .get(name)
            .cloned()
            .ok_or_else(|| EngineError::Weights {
                path: self.path.clone(),
                message: format!("missing tensor `{name}`"),
            })
    }
}

/// The reference cases record no per-step noise, so a scheduler that asks for some cannot
/// be checked against them.
struct NoFreshNoise;

impl NoiseSource for NoFreshNoise {
    fn randn_like(&mut self, _: &Tensor) -> candle_core::Result<Tensor> {
        Err(candle_core::Error::msg(
            "this scheduler draws fresh noise each step, which reference cases do not record",
        ))
    }
}

fn check_tokens(ours: &[u32], reference: &Tensor) -> Result<()> {
    let reference: Vec<i64> = reference.flatten_all()?.to_dtype(DType::I64)?.to_vec1()?;
    let ours: Vec<i64> = ours.iter().map(|&id| i64::from(id)).collect();
    if let Some(at) =
        (0..ours.len().max(reference.len())).find(|&i| ours.get(i) != reference.get(i))
    {
        return Err(EngineError::invalid(
            "tokens",
            format!(
                "first failing stage: tokens (id at position {at}: got {:?}, expected {:?})",
                ours.get(at),
                reference.get(at)
            ),
        ));
    }
    Ok(())
}

fn compare_text(
    prompts: &EncodedPrompts,
    reference: &HashMap<String, Tensor>,
    bound: Bound,
    out: &mut Vec<Comparison>,
) -> Result<()> {
    let pairs = [
        ("prompt_embeds", Some(&prompts.cond.embeds)),
        ("pooled_prompt_embeds", prompts.cond.pooled.as_ref()),
        (
            "negative_prompt_embeds",
            prompts.uncond.as_ref().map(|u| &u.embeds),
        ),
        (
            "negative_pooled_prompt_embeds",
            prompts.uncond.as_ref().and_then(|u| u.pooled.as_ref()),
        ),
    ];
    for (name, ours) in pairs {
        match (ours, reference.get(name)) {
            (Some(ours), Some(theirs)) => out.push(compare("text", name, ours, theirs, bound)?),
            (None, Some(_)) => {
                return Err(EngineError::invalid(
                    "text",
                    format!("first failing stage: text (the engine produced no `{name}`)"),
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// One UNet call on the reference's own inputs, so a UNet error is told apart from a text one.
fn probe_unet(
    pipeline: &SdPipeline,
    case: &Case,
    tensors: &HashMap<String, Tensor>,
    latents: &Tensor,
    timestep: &Tensor,
    device: &Device,
) -> Result<Tensor> {
    let dtype = pipeline.unet_dtype();
    let timestep = timestep
        .flatten_all()?
        .to_dtype(DType::F64)?
        .to_vec1::<f64>()?;
    let timestep = *timestep
        .first()
        .ok_or_else(|| EngineError::invalid("probe_timestep", "empty"))?;
    let embeds = tensors
        .get("prompt_embeds")
        .ok_or_else(|| EngineError::invalid("prompt_embeds", "missing from the case"))?
        .to_device(device)?
        .to_dtype(dtype)?;
    let added = match tensors.get("pooled_prompt_embeds") {
        Some(pooled) => {
            let (h, w) = (case.height as f32, case.width as f32);
            Some(AddedConditioning {
                text_embeds: pooled.to_device(device)?.to_dtype(dtype)?,
                time_ids: Tensor::new(&[[h, w, 0.0, 0.0, h, w]], device)?.to_dtype(dtype)?,
            })
        }
        None => None,
    };
    let latents = latents.to_device(device)?.to_dtype(dtype)?;
    Ok(pipeline
        .unet()
        .forward(&latents, timestep, &embeds, added.as_ref())?)
}

/// How far a stage may be from its reference.
#[derive(Debug, Clone, Copy)]
enum Bound {
    Absolute(f64),
    /// A fraction of the reference's largest magnitude (at least 1).
    Relative(f64),
}

fn compare(
    stage: &'static str,
    name: &str,
    ours: &Tensor,
    reference: &Tensor,
    bound: Bound,
) -> Result<Comparison> {
    let ours = ours.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
    let reference = reference.to_dtype(DType::F32)?;
    if ours.dims() != reference.dims() {
        return Err(EngineError::invalid(
            "shape",
            format!(
                "first failing stage: {stage} ({name} has shape {:?}, the reference {:?})",
                ours.dims(),
                reference.dims()
            ),
        ));
    }
    let diff = (ours - &reference)?.abs()?;
    let max_abs = f64::from(diff.max_all()?.to_scalar::<f32>()?);
    let mean_abs = f64::from(diff.mean_all()?.to_scalar::<f32>()?);
    let scale = f64::from(reference.abs()?.max_all()?.to_scalar::<f32>()?);
    Ok(Comparison {
        stage,
        tensor: name.to_string(),
        max_abs,
        mean_abs,
        bound: match bound {
            Bound::Absolute(limit) => limit,
            Bound::Relative(fraction) => fraction * scale.max(1.0),
        },
    })
}
