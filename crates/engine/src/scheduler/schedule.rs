//! The training noise schedule and the ways samplers pick their steps from it.
//!
//! diffusers computes betas and their cumulative products as f32 torch tensors and the
//! inference sigmas through numpy; we keep f32 where it does so the timesteps and sigmas come
//! out the same, and do the rest in f64.

use super::config::{BetaSchedule, SchedulerConfig, TimestepSpacing};
use crate::error::{EngineError, Result};

/// `alphas_cumprod` of the training schedule (f32 values, as the reference stores them).
pub fn alphas_cumprod(config: &SchedulerConfig) -> Vec<f32> {
    let n = config.num_train_timesteps;
    let mut betas: Vec<f32> = match (&config.trained_betas, config.beta_schedule) {
        (Some(betas), _) => betas.iter().map(|&b| b as f32).collect(),
        (None, BetaSchedule::Linear) => linspace_f32(config.beta_start, config.beta_end, n),
        (None, BetaSchedule::ScaledLinear) => {
            linspace_f32(config.beta_start.sqrt(), config.beta_end.sqrt(), n)
                .into_iter()
                .map(|b| b * b)
                .collect()
        }
        (None, BetaSchedule::SquaredcosCapV2) => cosine_betas(n),
    };
    if config.rescale_betas_zero_snr {
        betas = rescale_zero_terminal_snr(&betas);
    }
    // torch's cumprod of f32 accumulates in f64.
    let mut product = 1f64;
    betas
        .iter()
        .map(|beta| {
            product *= f64::from(1.0 - beta);
            product as f32
        })
        .collect()
}

/// torch.linspace in f32, bit for bit: the first half counts up from `start`, the second
/// down from `end`, each value one fused multiply-add.
fn linspace_f32(start: f64, end: f64, n: usize) -> Vec<f32> {
    if n == 1 {
        return vec![start as f32];
    }
    let (start, end) = (start as f32, end as f32);
    let step = (end - start) / (n - 1) as f32;
    let half = n / 2;
    (0..n)
        .map(|i| {
            if i < half {
                step.mul_add(i as f32, start)
            } else {
                (-step).mul_add((n - 1 - i) as f32, end)
            }
        })
        .collect()
}

/// The "squaredcos_cap_v2" (cosine) schedule, betas capped at 0.999.
fn cosine_betas(n: usize) -> Vec<f32> {
    let alpha_bar = |t: f64| {
        ((t + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2)
            .cos()
            .powi(2)
    };
    (0..n)
        .map(|i| {
            let (t1, t2) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
        })
        .collect()
}

/// Rescale betas to zero terminal SNR (Lin et al., "Common Diffusion Noise Schedules and
/// Sample Steps are Flawed").
fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let mut product = 1f32;
    let mut sqrt_bar: Vec<f32> = betas
        .iter()
        .map(|b| {
            product *= 1.0 - b;
            product.sqrt()
        })
        .collect();
    let (first, last) = (sqrt_bar[0], sqrt_bar[sqrt_bar.len() - 1]);
    for value in &mut sqrt_bar {
        *value = (*value - last) * (first / (first - last));
    }
    let bar: Vec<f32> = sqrt_bar.iter().map(|v| v * v).collect();
    let mut out = Vec::with_capacity(bar.len());
    out.push(1.0 - bar[0]);
    for i in 1..bar.len() {
        out.push(1.0 - bar[i] / bar[i - 1]);
    }
    out
}

/// `sqrt((1 - a) / a)` per training timestep, in f32 as the reference computes it.
pub fn training_sigmas(alphas_cumprod: &[f32]) -> Vec<f32> {
    alphas_cumprod
        .iter()
        .map(|a| ((1.0 - a) / a).sqrt())
        .collect()
}

/// Check the step count against the training schedule.
pub fn check_steps(steps: usize, config: &SchedulerConfig) -> Result<()> {
    if steps == 0 || steps > config.num_train_timesteps {
        return Err(EngineError::invalid(
            "steps",
            format!(
                "{steps} must be between 1 and {} (the model's training timesteps)",
                config.num_train_timesteps
            ),
        ));
    }
    Ok(())
}

/// Timesteps for `steps` inference steps, descending, as DDIM / Euler space them. Euler keeps
/// linspace timesteps fractional; DDIM rounds them (`round_linspace`).
pub fn spaced_timesteps(
    config: &SchedulerConfig,
    spacing: TimestepSpacing,
    steps: usize,
    round_linspace: bool,
) -> Vec<f64> {
    let n = config.num_train_timesteps;
    let mut timesteps: Vec<f64> = match spacing {
        TimestepSpacing::Linspace => {
            let last = (n - 1) as f64;
            (0..steps)
                .map(|i| {
                    let t = if steps == 1 {
                        0.0
                    } else {
                        last * i as f64 / (steps - 1) as f64
                    };
                    if round_linspace {
                        round_half_even(t)
                    } else {
                        f64::from(t as f32)
                    }
                })
                .collect()
        }
        TimestepSpacing::Leading => {
            let ratio = n / steps;
            (0..steps)
                .map(|i| (i * ratio + config.steps_offset) as f64)
                .collect()
        }
        TimestepSpacing::Trailing => arange_down(n as f64, n as f64 / steps as f64)
            .into_iter()
            .rev()
            .collect(),
    };
    timesteps.reverse();
    timesteps
}

/// Timesteps as DPM-Solver spaces them: `steps + 1` points below `last_timestep` (the
/// training length, less what `lambda_min_clipped` cuts off) with the last dropped.
pub fn dpm_timesteps(
    config: &SchedulerConfig,
    spacing: TimestepSpacing,
    steps: usize,
    last_timestep: usize,
) -> Vec<f64> {
    match spacing {
        TimestepSpacing::Linspace => {
            let last = last_timestep.saturating_sub(1) as f64;
            (0..=steps)
                .map(|i| round_half_even(last * i as f64 / steps as f64))
                .rev()
                .take(steps)
                .collect()
        }
        TimestepSpacing::Leading => {
            let ratio = last_timestep / (steps + 1);
            (0..=steps)
                .map(|i| (i * ratio) as f64)
                .rev()
                .take(steps)
                .map(|t| t + config.steps_offset as f64)
                .collect()
        }
        TimestepSpacing::Trailing => {
            let ratio = config.num_train_timesteps as f64 / steps as f64;
            arange_down(last_timestep as f64, ratio)
        }
    }
}

/// `np.arange(start, 0, -ratio).round() - 1`, descending: as many values as fit above zero.
fn arange_down(start: f64, ratio: f64) -> Vec<f64> {
    let count = (start / ratio).ceil() as usize;
    (0..count)
        .map(|i| round_half_even(start - i as f64 * ratio) - 1.0)
        .collect()
}

/// numpy's `round` (half to even).
pub fn round_half_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - x.signum()
    } else {
        r
    }
}

/// `np.interp(t, arange(len), sigmas)`.
pub fn interpolate(sigmas: &[f32], t: f64) -> f64 {
    let last = sigmas.len() - 1;
    if t <= 0.0 {
        return f64::from(sigmas[0]);
    }
    if t >= last as f64 {
        return f64::from(sigmas[last]);
    }
    let low = t.floor() as usize;
    let frac = t - low as f64;
    let (a, b) = (f64::from(sigmas[low]), f64::from(sigmas[low + 1]));
    a + (b - a) * frac
}

/// Karras et al. (2022) sigmas: `steps` values from `max` to `min` spaced in `sigma^(1/7)`.
pub fn karras_sigmas(min: f64, max: f64, steps: usize) -> Vec<f64> {
    let rho = 7.0;
    let (min_inv, max_inv) = (min.powf(1.0 / rho), max.powf(1.0 / rho));
    (0..steps)
        .map(|i| {
            let ramp = if steps == 1 {
                0.0
            } else {
                i as f64 / (steps - 1) as f64
            };
            (max_inv + ramp * (min_inv - max_inv)).powf(rho)
        })
        .collect()
}

/// The (fractional) training timestep whose sigma is `sigma`, interpolating in log-sigma.
pub fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    let count = log_sigmas.len();
    let low = log_sigmas
        .iter()
        .rposition(|&l| log_sigma - f64::from(l) >= 0.0)
        .unwrap_or(0)
        .min(count - 2);
    let (lo, hi) = (log_sigmas[low], log_sigmas[low + 1]);
    // numpy subtracts the two f32 neighbours in f32, the rest in f64.
    let w = ((f64::from(lo) - log_sigma) / f64::from(lo - hi)).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * (low + 1) as f64
}

/// Natural logs of f32 values, correctly rounded to f32 (as numpy's f32 `log` gives them).
pub fn log_f32(values: &[f32]) -> Vec<f32> {
    values.iter().map(|&v| f64::from(v).ln() as f32).collect()
}

/// The training sigmas of the sigma-based samplers; with zero terminal SNR the last one is
/// kept finite as the reference does (`alphas_cumprod[-1] = 2^-24`).
pub fn sampler_training_sigmas(config: &SchedulerConfig) -> Vec<f32> {
    let mut cumprod = alphas_cumprod(config);
    if config.rescale_betas_zero_snr
        && let Some(last) = cumprod.last_mut()
    {
        *last = 2f32.powi(-24);
    }
    training_sigmas(&cumprod)
}
