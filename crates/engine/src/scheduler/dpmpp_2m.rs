//! DPM-Solver++(2M) (Lu et al. 2022), multistep, as diffusers' `DPMSolverMultistepScheduler`
//! with its defaults: data prediction, second order, midpoint, first order at the end.

use candle_core::Tensor;

use super::config::{DpmAlgorithm, DpmSolverType, FinalSigmas, PredictionType, SchedulerConfig};
use super::schedule::{
    dpm_timesteps, interpolate, karras_sigmas, log_f32, sampler_training_sigmas, sigma_to_t,
};
use super::{NoiseSource, Scheduler, SchedulerKind};

pub struct DpmPlusPlus2M {
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    prediction: PredictionType,
    /// Data prediction (`dpmsolver++`) or noise prediction (`dpmsolver`).
    data_prediction: bool,
    heun: bool,
    second_order: bool,
    /// Drop to first order at the end (few steps, or a zero final sigma).
    lower_order_final: bool,
    /// Converted outputs of the previous step, for the second-order update.
    previous: Option<Tensor>,
}

/// `(alpha_t, sigma_t)` of the variance-preserving process at noise level `sigma`.
fn alpha_sigma(sigma: f64) -> (f64, f64) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

fn lambda(sigma: f64) -> f64 {
    let (alpha, sigma_t) = alpha_sigma(sigma);
    alpha.ln() - sigma_t.ln()
}

/// How many of the noisiest training steps `lambda_min_clipped` removes: those whose
/// log-SNR `lambda` is below it (for cosine schedules, whose last steps are unstable).
fn clipped_steps(config: &SchedulerConfig, train_sigmas: &[f32]) -> usize {
    let Some(min) = config.lambda_min_clipped.filter(|l| l.is_finite()) else {
        return 0;
    };
    // lambda = log(alpha_t) - log(sigma_t) = -log(sigma) for sigma = sigma_t / alpha_t.
    train_sigmas
        .iter()
        .filter(|&&sigma| f64::from(-(sigma.ln())) < min)
        .count()
}

impl DpmPlusPlus2M {
    pub fn new(config: &SchedulerConfig, steps: usize, karras: bool) -> Self {
        let train_sigmas = sampler_training_sigmas(config);
        let spacing = config.spacing_for(SchedulerKind::DpmPlusPlus2M);
        let last_timestep = config.num_train_timesteps - clipped_steps(config, &train_sigmas);
        let mut timesteps = dpm_timesteps(config, spacing, steps, last_timestep);
        let mut sigmas: Vec<f64> = if karras {
            let min = config.sigma_min.unwrap_or(f64::from(train_sigmas[0]));
            let max = config
                .sigma_max
                .unwrap_or(f64::from(train_sigmas[train_sigmas.len() - 1]));
            let sigmas = karras_sigmas(min, max, steps);
            let log_sigmas = log_f32(&train_sigmas);
            let cosine = config.beta_schedule == super::BetaSchedule::SquaredcosCapV2;
            timesteps = sigmas
                .iter()
                .map(|&s| sigma_to_t(s, &log_sigmas))
                .map(|t| {
                    if cosine {
                        t
                    } else {
                        super::schedule::round_half_even(t)
                    }
                })
                .collect();
            sigmas
        } else {
            timesteps
                .iter()
                .map(|&t| interpolate(&train_sigmas, t))
                .collect()
        };
        let final_sigmas = config.final_sigmas_type.unwrap_or(FinalSigmas::Zero);
        sigmas.push(match final_sigmas {
            FinalSigmas::Zero => 0.0,
            FinalSigmas::SigmaMin => f64::from(train_sigmas[0]),
        });
        let sigmas = sigmas.into_iter().map(|s| f64::from(s as f32)).collect();
        // The reference stores these timesteps as integers (truncating Karras' fractions).
        let timesteps: Vec<f64> = timesteps.into_iter().map(f64::trunc).collect();
        let few_steps = timesteps.len() < 15;
        Self {
            lower_order_final: config.euler_at_final
                || (config.lower_order_final && few_steps)
                || final_sigmas == FinalSigmas::Zero,
            second_order: config.solver_order == 2,
            timesteps,
            sigmas,
            prediction: config.prediction_type,
            data_prediction: config
                .algorithm_type
                .unwrap_or(DpmAlgorithm::DpmSolverPlusPlus)
                == DpmAlgorithm::DpmSolverPlusPlus,
            heun: config.solver_type == Some(DpmSolverType::Heun),
            previous: None,
        }
    }

    /// The UNet output as the solver's variable: the denoised sample (`dpmsolver++`) or the
    /// noise (`dpmsolver`).
    fn convert(&self, output: &Tensor, sample: &Tensor, sigma: f64) -> candle_core::Result<Tensor> {
        let (alpha, sigma_t) = alpha_sigma(sigma);
        if self.data_prediction {
            match self.prediction {
                PredictionType::Epsilon => (sample - (output * sigma_t)?)? / alpha,
                PredictionType::Sample => Ok(output.clone()),
                PredictionType::VPrediction => (sample * alpha)? - (output * sigma_t)?,
            }
        } else {
            match self.prediction {
                PredictionType::Epsilon => Ok(output.clone()),
                PredictionType::Sample => (sample - (output * alpha)?)? / sigma_t,
                PredictionType::VPrediction => (output * alpha)? + (sample * sigma_t)?,
            }
        }
    }
}

impl Scheduler for DpmPlusPlus2M {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn scale_model_input(&self, sample: &Tensor, _: usize) -> candle_core::Result<Tensor> {
        Ok(sample.clone())
    }

    fn step(
        &mut self,
        output: &Tensor,
        i: usize,
        sample: &Tensor,
        _: &mut dyn NoiseSource,
    ) -> candle_core::Result<Tensor> {
        let (s0, t) = (self.sigmas[i], self.sigmas[i + 1]);
        let m0 = self.convert(output, sample, s0)?;
        let (alpha_t, sigma_t) = alpha_sigma(t);
        let (alpha_s0, sigma_s0) = alpha_sigma(s0);
        let h = lambda(t) - lambda(s0);
        let last = i + 1 == self.timesteps.len();
        let first_order = !self.second_order
            || i == 0
            || self.previous.is_none()
            || (last && self.lower_order_final);
        let next = if first_order {
            if self.data_prediction {
                ((sample * (sigma_t / sigma_s0))? - (&m0 * (alpha_t * ((-h).exp() - 1.0)))?)?
            } else {
                ((sample * (alpha_t / alpha_s0))? - (&m0 * (sigma_t * (h.exp() - 1.0)))?)?
            }
        } else {
            let m1 = self
                .previous
                .as_ref()
                .ok_or_else(|| candle_core::Error::msg("missing history"))?;
            let h0 = lambda(s0) - lambda(self.sigmas[i - 1]);
            let d1 = ((&m0 - m1)? * (h / h0))?;
            match (self.data_prediction, self.heun) {
                (true, false) => {
                    let c = alpha_t * ((-h).exp() - 1.0);
                    (((sample * (sigma_t / sigma_s0))? - (&m0 * c)?)? - (d1 * (0.5 * c))?)?
                }
                (true, true) => {
                    let c = alpha_t * ((-h).exp() - 1.0);
                    let c1 = alpha_t * (((-h).exp() - 1.0) / h + 1.0);
                    (((sample * (sigma_t / sigma_s0))? - (&m0 * c)?)? + (d1 * c1)?)?
                }
                (false, false) => {
                    let c = sigma_t * (h.exp() - 1.0);
                    (((sample * (alpha_t / alpha_s0))? - (&m0 * c)?)? - (d1 * (0.5 * c))?)?
                }
                (false, true) => {
                    let c = sigma_t * (h.exp() - 1.0);
                    let c1 = sigma_t * ((h.exp() - 1.0) / h - 1.0);
                    (((sample * (alpha_t / alpha_s0))? - (&m0 * c)?)? - (d1 * c1)?)?
                }
            }
        };
        self.previous = Some(m0);
        Ok(next)
    }

    fn add_noise(
        &self,
        original: &Tensor,
        noise: &Tensor,
        step_index: usize,
    ) -> candle_core::Result<Tensor> {
        let (alpha, sigma) = alpha_sigma(self.sigmas[step_index]);
        (original * alpha)? + (noise * sigma)?
    }
}
