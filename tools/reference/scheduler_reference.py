"""Print reference numbers for seedbed's scheduler unit tests (crates/engine/src/scheduler/tests.rs).

Run with the diffusers reference environment:
    .venv-ref/bin/python tools/reference/scheduler_reference.py fixtures/models \
        > crates/engine/tests/data/scheduler_reference.jsonl
Prints, for each configuration, the timesteps, the sigmas (where the sampler has them), the
init_noise_sigma and one or two steps on fixed small tensors, as JSON lines.
"""
import json
import sys

import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler

MODELS = sys.argv[1]
CLASSES = {"ddim": DDIMScheduler, "euler": EulerDiscreteScheduler, "euler_a": EulerAncestralDiscreteScheduler,
           "dpmpp2m": DPMSolverMultistepScheduler}
CASES = [
    ("ddim", "tiny-sd", {}, 5),
    ("ddim", "tiny-sd", {"timestep_spacing": "trailing"}, 4),
    ("ddim", "tiny-sd", {"timestep_spacing": "linspace", "prediction_type": "v_prediction"}, 7),
    ("euler", "tiny-sdxl", {}, 3),
    ("euler", "tiny-sd", {"timestep_spacing": "linspace"}, 6),
    ("euler", "tiny-sd", {"use_karras_sigmas": True}, 5),
    ("euler", "tiny-sd", {"beta_schedule": "squaredcos_cap_v2", "prediction_type": "v_prediction"}, 4),
    ("euler_a", "tiny-sdxl", {}, 3),
    ("dpmpp2m", "tiny-sd", {}, 6),
    ("dpmpp2m", "tiny-sd", {"use_karras_sigmas": True}, 7),
    ("dpmpp2m", "tiny-sd", {"timestep_spacing": "trailing", "prediction_type": "v_prediction"}, 5),
]


def fixed(seed, shape=(1, 2, 2, 2)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g)


for kind, model, overrides, steps in CASES:
    base = CLASSES["ddim" if model == "tiny-sd" else "euler"].from_pretrained(f"{MODELS}/{model}", subfolder="scheduler")
    sched = CLASSES[kind].from_config(base.config, **overrides)
    sched.set_timesteps(steps)
    sample, outputs, noise = fixed(1), [fixed(2), fixed(3)], fixed(4)
    result = {"kind": kind, "model": model, "overrides": overrides, "steps": steps,
              "timesteps": [float(t) for t in sched.timesteps],
              "sigmas": [float(s) for s in getattr(sched, "sigmas", [])] if kind != "ddim" else [],
              "init_noise_sigma": float(sched.init_noise_sigma),
              "sample": sample.flatten().tolist(), "outputs": [o.flatten().tolist() for o in outputs],
              "noise": noise.flatten().tolist()}
    x = sample
    results = []
    for i, out in enumerate(outputs):
        t = sched.timesteps[i]
        scaled = sched.scale_model_input(x, t)
        if kind == "euler_a":
            import diffusers.schedulers.scheduling_euler_ancestral_discrete as m
            m.randn_tensor = lambda shape, **k: noise
        x = sched.step(out, t, x).prev_sample
        results.append({"scaled": scaled.flatten().tolist(), "next": x.flatten().tolist()})
    result["steps_out"] = results
    print(json.dumps(result))
