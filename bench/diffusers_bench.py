"""Time diffusers' StableDiffusionPipeline stage by stage, the way `seedbed bench` does:
one warm-up and R timed text-to-image runs (guidance 0, Euler), medians per stage, fp32, CPU.

    python bench/diffusers_bench.py MODEL_DIR --width 512 --height 512 --steps 1 --runs 3 --threads 2
Prints one JSON line with text_encode_s, denoise_s, vae_decode_s, total_s.
"""
import argparse
import json
import statistics
import time

import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

parser = argparse.ArgumentParser()
parser.add_argument("model_dir")
parser.add_argument("--width", type=int, default=512)
parser.add_argument("--height", type=int, default=512)
parser.add_argument("--steps", type=int, default=1)
parser.add_argument("--runs", type=int, default=3)
parser.add_argument("--threads", type=int, default=2)
args = parser.parse_args()

torch.set_num_threads(args.threads)
started = time.perf_counter()
pipe = StableDiffusionPipeline.from_pretrained(args.model_dir, torch_dtype=torch.float32, safety_checker=None)
pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
load_s = time.perf_counter() - started
prompt = "a photograph of an astronaut riding a horse"


@torch.no_grad()
def run(seed):
    t0 = time.perf_counter()
    embeds, _ = pipe.encode_prompt(prompt, "cpu", 1, False)
    t1 = time.perf_counter()
    pipe.scheduler.set_timesteps(args.steps)
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, 4, args.height // 8, args.width // 8, generator=g) * pipe.scheduler.init_noise_sigma
    for t in pipe.scheduler.timesteps:
        eps = pipe.unet(pipe.scheduler.scale_model_input(latents, t), t, encoder_hidden_states=embeds).sample
        latents = pipe.scheduler.step(eps, t, latents).prev_sample
    t2 = time.perf_counter()
    image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    pipe.image_processor.postprocess(image, output_type="np")
    t3 = time.perf_counter()
    return {"text_encode_s": t1 - t0, "denoise_s": t2 - t1, "vae_decode_s": t3 - t2, "total_s": t3 - t0}


run(0)
samples = [run(i + 1) for i in range(args.runs)]
report = {key: statistics.median(s[key] for s in samples) for key in samples[0]}
report.update(load_s=load_s, runs=args.runs, threads=args.threads, torch=torch.__version__)
print(json.dumps(report))
