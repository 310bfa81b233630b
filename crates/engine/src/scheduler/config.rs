//! `scheduler/scheduler_config.json`: the settings the samplers read, whatever scheduler class
//! the model folder ships with. Missing keys take the defaults of the sampler that uses them,
//! as diffusers' `from_config` does.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::SchedulerKind;
use crate::error::{EngineError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictionType {
    Epsilon,
    VPrediction,
    Sample,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSpacing {
    Leading,
    Trailing,
    Linspace,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BetaSchedule {
    Linear,
    ScaledLinear,
    SquaredcosCapV2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinalSigmas {
    Zero,
    SigmaMin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DpmAlgorithm {
    #[serde(rename = "dpmsolver++")]
    DpmSolverPlusPlus,
    #[serde(rename = "dpmsolver")]
    DpmSolver,
    #[serde(rename = "sde-dpmsolver++")]
    SdeDpmSolverPlusPlus,
    #[serde(rename = "sde-dpmsolver")]
    SdeDpmSolver,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DpmSolverType {
    Midpoint,
    Heun,
}

fn thousand() -> usize {
    1000
}
fn default_beta_start() -> f64 {
    0.0001
}
fn default_beta_end() -> f64 {
    0.02
}
fn linear() -> BetaSchedule {
    BetaSchedule::Linear
}
fn epsilon() -> PredictionType {
    PredictionType::Epsilon
}
fn one() -> f64 {
    1.0
}
fn two() -> usize {
    2
}
fn yes() -> bool {
    true
}

/// Treat JSON `null` like an absent key (configs write `"trained_betas": null`).
fn null_as_default<'de, D, T>(deserializer: D) -> std::result::Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

#[derive(Debug, Clone, Deserialize)]
pub struct SchedulerConfig {
    /// The scheduler class the model folder ships with (`_class_name`).
    #[serde(rename = "_class_name", default)]
    pub class_name: Option<String>,
    #[serde(default = "thousand")]
    pub num_train_timesteps: usize,
    #[serde(default = "default_beta_start")]
    pub beta_start: f64,
    #[serde(default = "default_beta_end")]
    pub beta_end: f64,
    #[serde(default = "linear")]
    pub beta_schedule: BetaSchedule,
    #[serde(default)]
    pub trained_betas: Option<Vec<f64>>,
    #[serde(default = "epsilon")]
    pub prediction_type: PredictionType,
    /// None: the sampler's own default (DDIM leading, the others linspace).
    #[serde(default)]
    pub timestep_spacing: Option<TimestepSpacing>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub steps_offset: usize,
    #[serde(default = "yes")]
    pub set_alpha_to_one: bool,
    #[serde(default = "yes")]
    pub clip_sample: bool,
    #[serde(default = "one")]
    pub clip_sample_range: f64,
    #[serde(default, deserialize_with = "null_as_default")]
    pub thresholding: bool,
    #[serde(default, deserialize_with = "null_as_default")]
    pub use_karras_sigmas: bool,
    #[serde(default, deserialize_with = "null_as_default")]
    pub use_exponential_sigmas: bool,
    #[serde(default, deserialize_with = "null_as_default")]
    pub use_beta_sigmas: bool,
    #[serde(default, deserialize_with = "null_as_default")]
    pub use_lu_lambdas: bool,
    #[serde(default, deserialize_with = "null_as_default")]
    pub rescale_betas_zero_snr: bool,
    #[serde(default)]
    pub final_sigmas_type: Option<FinalSigmas>,
    #[serde(default)]
    pub sigma_min: Option<f64>,
    #[serde(default)]
    pub sigma_max: Option<f64>,
    #[serde(default)]
    pub interpolation_type: Option<String>,
    #[serde(default)]
    pub timestep_type: Option<String>,
    #[serde(default = "two")]
    pub solver_order: usize,
    #[serde(default)]
    pub algorithm_type: Option<DpmAlgorithm>,
    #[serde(default)]
    pub solver_type: Option<DpmSolverType>,
    #[serde(default = "yes")]
    pub lower_order_final: bool,
    #[serde(default, deserialize_with = "null_as_default")]
    pub euler_at_final: bool,
    #[serde(default)]
    pub variance_type: Option<String>,
    #[serde(default)]
    pub lambda_min_clipped: Option<f64>,
    /// Where the settings came from, for error messages.
    #[serde(skip)]
    pub source: PathBuf,
    /// The keys as read, so that overrides can be applied on top of them.
    #[serde(skip)]
    raw: serde_json::Map<String, serde_json::Value>,
}

impl SchedulerConfig {
    /// Read `scheduler_config.json`; errors name the file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = crate::config_files::read_text(path)?;
        // Python's json module writes non-finite floats (e.g. `lambda_min_clipped: -Infinity`)
        // that strict JSON parsers refuse; they mean "no limit", as an absent key does.
        let text = text
            .replace("-Infinity", "null")
            .replace("Infinity", "null")
            .replace("NaN", "null");
        let raw: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&text).map_err(|e| EngineError::config(path, e))?;
        Self::from_map(raw, path)
    }

    fn from_map(raw: serde_json::Map<String, serde_json::Value>, source: &Path) -> Result<Self> {
        let mut config: Self =
            crate::config_files::parse_json(serde_json::Value::Object(raw.clone()), source)?;
        config.source = source.to_path_buf();
        config.raw = raw;
        Ok(config)
    }

    /// These settings with `overrides` (same keys as the file) applied on top.
    pub fn with_overrides(
        &self,
        overrides: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Self> {
        let mut merged = self.raw.clone();
        for (key, value) in overrides {
            merged.insert(key.clone(), value.clone());
        }
        Self::from_map(merged, &self.source)
    }

    /// The sampler matching the folder's own scheduler class: Euler for Euler and for
    /// classes we don't implement (PNDM, LMS, ...), since it works with every model.
    pub fn default_kind(&self) -> SchedulerKind {
        match self.class_name.as_deref() {
            Some("DDIMScheduler") => SchedulerKind::Ddim,
            Some("EulerAncestralDiscreteScheduler") => SchedulerKind::EulerAncestral,
            Some("DPMSolverMultistepScheduler") => SchedulerKind::DpmPlusPlus2M,
            _ => SchedulerKind::Euler,
        }
    }

    pub fn spacing_for(&self, kind: SchedulerKind) -> TimestepSpacing {
        self.timestep_spacing.unwrap_or(match kind {
            SchedulerKind::Ddim => TimestepSpacing::Leading,
            _ => TimestepSpacing::Linspace,
        })
    }

    /// Reject settings the samplers do not implement instead of computing something else.
    pub fn check(&self, kind: SchedulerKind) -> Result<()> {
        let unsupported = |key: &str, value: &dyn std::fmt::Debug| {
            Err(EngineError::config(
                &self.source,
                format!("`{key}` = {value:?} is not supported"),
            ))
        };
        if self.num_train_timesteps < 2 {
            return unsupported("num_train_timesteps", &self.num_train_timesteps);
        }
        if self.thresholding {
            return unsupported("thresholding", &true);
        }
        if self.use_exponential_sigmas || self.use_beta_sigmas || self.use_lu_lambdas {
            return unsupported(
                "use_exponential_sigmas / use_beta_sigmas / use_lu_lambdas",
                &true,
            );
        }
        if self
            .interpolation_type
            .as_deref()
            .is_some_and(|t| t != "linear")
        {
            return unsupported("interpolation_type", &self.interpolation_type);
        }
        if self
            .timestep_type
            .as_deref()
            .is_some_and(|t| t != "discrete")
        {
            return unsupported("timestep_type", &self.timestep_type);
        }
        if let Some(betas) = &self.trained_betas
            && betas.len() != self.num_train_timesteps
        {
            return Err(EngineError::config(
                &self.source,
                "trained_betas must have num_train_timesteps entries",
            ));
        }
        if kind == SchedulerKind::DpmPlusPlus2M {
            if !matches!(self.solver_order, 1 | 2) {
                return unsupported("solver_order", &self.solver_order);
            }
            if matches!(
                self.algorithm_type,
                Some(DpmAlgorithm::SdeDpmSolver | DpmAlgorithm::SdeDpmSolverPlusPlus)
            ) {
                return unsupported("algorithm_type", &self.algorithm_type);
            }
            if self.variance_type.is_some() {
                return unsupported("variance_type", &self.variance_type);
            }
        }
        Ok(())
    }
}
