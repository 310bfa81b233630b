"""Reference numbers for the engine's scheduler unit tests.

Generates `crates/engine/src/scheduler/reference_tests/reference_data.rs`: for each case, diffusers 0.42's
timesteps, sigmas and init_noise_sigma, and a short denoise loop on small fixed tensors (the
scaled UNet input and the latents after every step), with a fake "UNet" that is linear in its
input so the Rust side can recompute it exactly.

Run from the repository root with the reference environment:

    .venv-ref/bin/python tools/reference/scheduler_loops_reference.py \
        > crates/engine/src/scheduler/reference_tests/reference_data.rs

The tensor formulas below are mirrored in `crates/engine/src/scheduler/reference_tests/mod.rs`.
"""

import json
import math
import sys
from pathlib import Path

import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
)
from diffusers.schedulers import scheduling_euler_ancestral_discrete as euler_a_module

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "models"
SHAPE = (1, 2, 2, 2)
N = 8

CLASSES = {
    "ddim": DDIMScheduler,
    "euler": EulerDiscreteScheduler,
    "euler_a": EulerAncestralDiscreteScheduler,
    "dpmpp2m": DPMSolverMultistepScheduler,
}


def pattern(fn):
    return torch.tensor([fn(k) for k in range(N)], dtype=torch.float32).reshape(SHAPE)


# Shared with tests.rs.
INITIAL_NOISE = pattern(lambda k: math.sin(1.3 * k + 0.5) * 1.5)
CLEAN = pattern(lambda k: math.cos(0.9 * k) * 0.8)
IMG_NOISE = pattern(lambda k: math.sin(1.7 * k + 0.3))
UNET_PATTERN = pattern(lambda k: math.cos(0.7 * k - 0.2))


def step_noise(i):
    return pattern(lambda k: math.sin(2.1 * k + i))


def fake_unet(scaled, i):
    return scaled * 0.5 + UNET_PATTERN * (0.1 * (i + 1))


# (name, kind, model, overrides, steps, karras flag, image-to-image begin index or None,
#  run the loop)
CASES = [
    ("ddim_leading", "ddim", "tiny-sd", {}, 4, False, None, True),
    ("ddim_trailing", "ddim", "tiny-sd", {"timestep_spacing": "trailing"}, 4, False, None, True),
    ("ddim_linspace", "ddim", "tiny-sd", {"timestep_spacing": "linspace"}, 3, False, None, True),
    ("ddim_v_zero_snr", "ddim", "tiny-sd",
     {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True, "timestep_spacing": "trailing"},
     3, False, None, True),
    ("ddim_img2img", "ddim", "tiny-sd", {}, 5, False, 2, True),
    # The Euler config has no clip_sample / set_alpha_to_one: DDIM's defaults (true) apply.
    ("ddim_sample_clip_from_euler_config", "ddim", "tiny-sdxl", {"prediction_type": "sample"},
     3, False, None, True),
    ("ddim_cosine", "ddim", "tiny-sd", {"beta_schedule": "squaredcos_cap_v2"}, 4, False, None, True),
    ("ddim_linear", "ddim", "tiny-sd", {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
     4, False, None, True),
    ("euler_sdxl_trailing", "euler", "tiny-sdxl", {}, 2, False, None, True),
    ("euler_leading", "euler", "tiny-sd", {}, 5, False, None, True),
    ("euler_linspace_linear", "euler", "tiny-sd", {"timestep_spacing": "linspace", "beta_schedule": "linear"},
     7, False, None, True),
    ("euler_karras", "euler", "tiny-sdxl", {}, 6, True, None, True),
    ("euler_v_zero_snr", "euler", "tiny-sd",
     {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True, "timestep_spacing": "trailing"},
     4, False, None, True),
    ("euler_img2img", "euler", "tiny-sdxl", {}, 4, False, 1, True),
    ("euler_cosine_sigma_min", "euler", "tiny-sd",
     {"beta_schedule": "squaredcos_cap_v2", "final_sigmas_type": "sigma_min", "timestep_spacing": "linspace"},
     5, False, None, True),
    ("euler_continuous_karras_range", "euler", "tiny-sd",
     {"timestep_type": "continuous", "prediction_type": "v_prediction", "use_karras_sigmas": True,
      "sigma_min": 0.05, "sigma_max": 10.0},
     4, False, None, True),
    # numpy's arange gives 62 timesteps (the last one -1) for 61 trailing steps.
    ("euler_trailing_61", "euler", "tiny-sdxl", {}, 61, False, None, False),
    ("euler_sample", "euler", "tiny-sd", {"prediction_type": "sample"}, 3, False, None, True),
    ("euler_a_leading", "euler_a", "tiny-sd", {}, 4, False, None, True),
    ("euler_a_karras", "euler_a", "tiny-sdxl", {}, 5, True, None, True),
    ("euler_a_v_trailing", "euler_a", "tiny-sd",
     {"prediction_type": "v_prediction", "timestep_spacing": "trailing"}, 3, False, None, True),
    ("euler_a_img2img", "euler_a", "tiny-sd", {}, 4, False, 2, True),
    ("dpmpp2m_leading", "dpmpp2m", "tiny-sd", {}, 6, False, None, True),
    ("dpmpp2m_karras", "dpmpp2m", "tiny-sdxl", {}, 5, True, None, True),
    ("dpmpp2m_img2img", "dpmpp2m", "tiny-sd", {}, 5, False, 2, True),
    ("dpmpp2m_v_zero_snr_heun", "dpmpp2m", "tiny-sd",
     {"prediction_type": "v_prediction", "timestep_spacing": "trailing", "rescale_betas_zero_snr": True,
      "solver_type": "heun"},
     4, False, None, True),
    # 16 steps and a non-zero final sigma: the last step stays second order.
    ("dpmpp2m_long_sigma_min", "dpmpp2m", "tiny-sd",
     {"final_sigmas_type": "sigma_min", "timestep_spacing": "linspace"}, 16, False, None, True),
    ("dpmpp2m_cosine_clipped", "dpmpp2m", "tiny-sd",
     {"beta_schedule": "squaredcos_cap_v2", "lambda_min_clipped": -5.1, "timestep_spacing": "linspace"},
     5, False, None, True),
    # The cosine schedule's own sigma_max (2e4) would repeat timestep 998, and diffusers would
    # then start at the second one: cap it.
    ("dpmpp2m_cosine_karras", "dpmpp2m", "tiny-sd",
     {"beta_schedule": "squaredcos_cap_v2", "use_karras_sigmas": True, "sigma_max": 80.0},
     5, False, None, True),
    ("dpmpp2m_sample_no_lower_final", "dpmpp2m", "tiny-sd",
     {"prediction_type": "sample", "final_sigmas_type": "sigma_min", "lower_order_final": False},
     5, False, None, True),
]


def build(kind, model, overrides, steps, karras):
    config = json.loads((FIXTURES / model / "scheduler" / "scheduler_config.json").read_text())
    # Overrides are merged into the config object (like SchedulerConfig::with_overrides), so
    # keys a class does not take as arguments (DPM-Solver's sigma_min/sigma_max) still count.
    config.update(overrides)
    if karras and kind in ("euler", "dpmpp2m"):
        config["use_karras_sigmas"] = True
    scheduler = CLASSES[kind].from_config(config)
    scheduler.set_timesteps(steps)
    if karras and kind == "euler_a":
        # diffusers' Euler ancestral has no Karras option; seedbed's uses the sigmas and
        # timesteps EulerDiscreteScheduler builds for Karras.
        euler = EulerDiscreteScheduler.from_config({**config, "use_karras_sigmas": True})
        euler.set_timesteps(steps)
        scheduler.sigmas = euler.sigmas.clone()
        scheduler.timesteps = euler.timesteps.clone()
    return scheduler


class RecordedNoise:
    """Stands in for randn_tensor in the Euler ancestral module: step i gets step_noise(i)."""

    index = 0

    def __call__(self, shape, **kwargs):
        return step_noise(self.index).reshape(shape).to(kwargs.get("dtype") or torch.float32)


def run_case(kind, model, overrides, steps, karras, begin, run_loop):
    scheduler = build(kind, model, overrides, steps, karras)
    timesteps = [float(t) for t in scheduler.timesteps]
    sigmas = [float(s) for s in scheduler.sigmas] if kind != "ddim" else []
    init_sigma = float(scheduler.init_noise_sigma)
    scaled_all, latents_all, start = [], [], []
    if run_loop:
        noise = RecordedNoise()
        euler_a_module.randn_tensor = noise
        if begin is None:
            first = 0
            latents = INITIAL_NOISE * scheduler.init_noise_sigma
        else:
            first = begin
            if hasattr(scheduler, "set_begin_index"):  # what the img2img pipelines do
                scheduler.set_begin_index(begin)
            latents = scheduler.add_noise(CLEAN, IMG_NOISE, scheduler.timesteps[begin:begin + 1])
        start = latents.flatten().tolist()
        for i in range(first, len(scheduler.timesteps)):
            t = scheduler.timesteps[i]
            scaled = scheduler.scale_model_input(latents, t)
            noise.index = i
            latents = scheduler.step(fake_unet(scaled, i), t, latents).prev_sample
            scaled_all.append(scaled.flatten().tolist())
            latents_all.append(latents.flatten().tolist())
    return timesteps, sigmas, init_sigma, start, scaled_all, latents_all


def rust_floats(values):
    return "&[" + ", ".join(repr(float(v)) for v in values) + "]"


def main():
    out = sys.stdout
    out.write("// @generated by tools/reference/scheduler_loops_reference.py (diffusers 0.42, torch CPU).\n")
    out.write("// Do not edit by hand: rerun the script.\n\n")
    out.write("use super::Case;\n\n")
    out.write("#[rustfmt::skip]\npub(super) const CASES: &[Case] = &[\n")
    for name, kind, model, overrides, steps, karras, begin, run_loop in CASES:
        timesteps, sigmas, init_sigma, start, scaled, latents = run_case(
            kind, model, overrides, steps, karras, begin, run_loop
        )
        out.write("    Case {\n")
        out.write(f"        name: {json.dumps(name)},\n")
        out.write(f"        kind: {json.dumps(kind)},\n")
        out.write(f"        model: {json.dumps(model)},\n")
        out.write(f"        overrides: {json.dumps(json.dumps(overrides))},\n")
        out.write(f"        steps: {steps},\n")
        out.write(f"        karras: {'true' if karras else 'false'},\n")
        out.write(f"        begin: {'None' if begin is None else f'Some({begin})'},\n")
        out.write(f"        timesteps: {rust_floats(timesteps)},\n")
        out.write(f"        sigmas: {rust_floats(sigmas)},\n")
        out.write(f"        init_noise_sigma: {float(init_sigma)!r},\n")
        out.write(f"        start: {rust_floats(start)},\n")
        out.write("        scaled: &[" + ", ".join(rust_floats(s) for s in scaled) + "],\n")
        out.write("        latents: &[" + ", ".join(rust_floats(s) for s in latents) + "],\n")
        out.write("    },\n")
    out.write("];\n")


if __name__ == "__main__":
    main()
