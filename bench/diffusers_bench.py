"""Time diffusers stage by stage, the way `seedbed bench` does: one warm-up and R timed text-to-image runs,
medians per stage, fp32 on the CPU by default (--dtype, --device cuda: the GPU, synchronized at each stage's
end as seedbed is). The pipeline is the one the folder's model_index.json names:
- StableDiffusionPipeline: guidance 0, Euler (the folder's scheduler config);
- StableDiffusionXLPipeline: as SD, both CLIP encoders, the pooled embedding and the size/crop time ids as
  the UNet's added conditioning, the VAE in f32 as its force_upcast asks;
- FluxPipeline: guidance 0 (used only by a model with a guidance embedding), the folder's flow-match Euler
  scheduler with the pipeline's own sigmas and shift, T5 padded to --max-sequence-length (256, as schnell);
- ZImagePipeline: guidance 0 (Turbo), the pipeline's own sigmas and the folder's shift, Qwen3 on the
  chat-templated prompt (padded to 512, as the pipeline does);
- StableDiffusion3Pipeline: guidance 0 (Large Turbo), the scheduler's own shifted sigmas, T5 on
  --max-sequence-length tokens.

    python bench/diffusers_bench.py MODEL_DIR --width 512 --height 512 --steps 1 --runs 3 --threads 2
Prints one JSON line with text_encode_s, denoise_s, vae_decode_s, total_s (medians), load_s.
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch

parser = argparse.ArgumentParser()
parser.add_argument("model_dir")
parser.add_argument("--width", type=int, default=512)
parser.add_argument("--height", type=int, default=512)
parser.add_argument("--steps", type=int, default=1)
parser.add_argument("--runs", type=int, default=3)
parser.add_argument("--threads", type=int, default=2)
parser.add_argument("--dtype", choices=["f32", "bf16", "f16"], default="f32",
                    help="weights and compute of the text encoders and UNet (SD and SDXL; the VAE stays f32 "
                         "as seedbed keeps it)")
parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
parser.add_argument("--max-sequence-length", type=int, default=256, help="FLUX: T5 token count")
args = parser.parse_args()

with open(os.path.join(args.model_dir, "model_index.json")) as f:
    pipeline_class = json.load(f)["_class_name"]
torch.set_num_threads(args.threads)
dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[args.dtype]
if dtype == torch.float16 and pipeline_class not in ("StableDiffusionPipeline", "StableDiffusionXLPipeline"):
    sys.exit("--dtype f16 is measured for SD and SDXL only (the transformer families are made for bf16)")
if args.device != "cpu" and pipeline_class not in ("StableDiffusionPipeline", "StableDiffusionXLPipeline"):
    sys.exit(f"--device {args.device} is measured for SD and SDXL only")
device = args.device


def now():
    """The time once the device has finished what was queued (a GPU runs asynchronously)."""
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


prompt = "a photograph of an astronaut riding a horse"
started = time.perf_counter()
if pipeline_class == "FluxPipeline":
    from diffusers import FluxPipeline
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps
    pipe = FluxPipeline.from_pretrained(args.model_dir, torch_dtype=dtype)
elif pipeline_class == "ZImagePipeline":
    from diffusers import ZImagePipeline
    from diffusers.pipelines.z_image.pipeline_z_image import (calculate_shift, get_default_z_image_sigmas,
                                                               retrieve_timesteps)
    pipe = ZImagePipeline.from_pretrained(args.model_dir, torch_dtype=dtype)
elif pipeline_class == "StableDiffusion3Pipeline":
    from diffusers import StableDiffusion3Pipeline
    from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import retrieve_timesteps
    pipe = StableDiffusion3Pipeline.from_pretrained(args.model_dir, torch_dtype=dtype)
    # diffusers 0.42.1 leaves the patch and time embeddings in f32 (72 tensors), and then
    # fails on their bf16 inputs: the whole transformer in bf16, as the checkpoint is.
    pipe.transformer.to(dtype)
elif pipeline_class == "StableDiffusionXLPipeline":
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    pipe = StableDiffusionXLPipeline.from_pretrained(args.model_dir, torch_dtype=dtype, add_watermarker=False)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
else:
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline
    pipe = StableDiffusionPipeline.from_pretrained(args.model_dir, torch_dtype=dtype, safety_checker=None)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
pipe.vae.to(torch.float32)  # a no-op at f32; in bf16 and f16 the VAE stays f32, as seedbed keeps it
pipe.to(device)
load_s = now() - started


@torch.no_grad()
def run_sd(seed):
    t0 = now()
    embeds, _ = pipe.encode_prompt(prompt, device, 1, False)
    t1 = now()
    pipe.scheduler.set_timesteps(args.steps, device=device)
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, 4, args.height // 8, args.width // 8, generator=g).to(device)
    latents = latents * pipe.scheduler.init_noise_sigma
    for t in pipe.scheduler.timesteps:
        eps = pipe.unet(pipe.scheduler.scale_model_input(latents, t).to(dtype), t, encoder_hidden_states=embeds).sample
        latents = pipe.scheduler.step(eps.float(), t, latents).prev_sample
    t2 = now()
    image = pipe.vae.decode(latents.float() / pipe.vae.config.scaling_factor).sample
    pipe.image_processor.postprocess(image, output_type="np")
    t3 = now()
    return {"text_encode_s": t1 - t0, "denoise_s": t2 - t1, "vae_decode_s": t3 - t2, "total_s": t3 - t0}


@torch.no_grad()
def run_sdxl(seed):
    """What StableDiffusionXLPipeline.__call__ does at guidance 0, split at the stage boundaries."""
    t0 = now()
    embeds, _, pooled, _ = pipe.encode_prompt(prompt, device=device, do_classifier_free_guidance=False)
    t1 = now()
    pipe.scheduler.set_timesteps(args.steps, device=device)
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, 4, args.height // 8, args.width // 8, generator=g).to(device)
    latents = latents * pipe.scheduler.init_noise_sigma
    size = (args.height, args.width)  # original and target size, crop origin (0, 0)
    time_ids = pipe._get_add_time_ids(size, (0, 0), size, dtype=embeds.dtype,
                                      text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)
    time_ids = time_ids.to(device)
    added = {"text_embeds": pooled, "time_ids": time_ids}
    for t in pipe.scheduler.timesteps:
        eps = pipe.unet(pipe.scheduler.scale_model_input(latents, t).to(dtype), t, encoder_hidden_states=embeds,
                        added_cond_kwargs=added).sample
        latents = pipe.scheduler.step(eps.float(), t, latents).prev_sample
    t2 = now()
    upcast = pipe.vae.dtype == torch.float16 and pipe.vae.config.force_upcast  # as the pipeline; never at f32
    if upcast:
        pipe.vae.to(torch.float32)
    image = pipe.vae.decode(latents.to(pipe.vae.dtype) / pipe.vae.config.scaling_factor).sample
    if upcast:
        pipe.vae.to(torch.float16)
    pixels = pipe.image_processor.postprocess(image, output_type="np")
    t3 = now()
    if not np.isfinite(pixels).all() or not torch.isfinite(latents).all():
        print("warning: non-finite latents or pixels", file=sys.stderr)
    return {"text_encode_s": t1 - t0, "denoise_s": t2 - t1, "vae_decode_s": t3 - t2, "total_s": t3 - t0}


@torch.no_grad()
def run_flux(seed):
    """What FluxPipeline.__call__ does (guidance 0, no true CFG), split at the stage boundaries."""
    t0 = time.perf_counter()
    embeds, pooled, text_ids = pipe.encode_prompt(prompt, None, device="cpu",
                                                  max_sequence_length=args.max_sequence_length)
    t1 = time.perf_counter()
    h, w = 2 * (args.height // 16), 2 * (args.width // 16)  # latent size, even
    g = torch.Generator().manual_seed(seed)
    latents = pipe._pack_latents(torch.randn(1, 16, h, w, generator=g), 1, 16, h, w).to(dtype)
    img_ids = pipe._prepare_latent_image_ids(1, h // 2, w // 2, "cpu", torch.float32)
    config = pipe.scheduler.config
    mu = calculate_shift(latents.shape[1], config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                         config.get("base_shift", 0.5), config.get("max_shift", 1.15))
    sigmas = np.linspace(1.0, 1 / args.steps, args.steps)
    timesteps, _ = retrieve_timesteps(pipe.scheduler, args.steps, "cpu", sigmas=sigmas, mu=mu)
    guidance = torch.full([1], 0.0) if pipe.transformer.config.guidance_embeds else None
    for t in timesteps:
        velocity = pipe.transformer(hidden_states=latents, timestep=t.expand(1).to(latents.dtype) / 1000,
                                    guidance=guidance, pooled_projections=pooled, encoder_hidden_states=embeds,
                                    txt_ids=text_ids, img_ids=img_ids, return_dict=False)[0]
        latents = pipe.scheduler.step(velocity, t, latents, return_dict=False)[0]
    t2 = time.perf_counter()
    latents = pipe._unpack_latents(latents, args.height, args.width, pipe.vae_scale_factor).to(pipe.vae.dtype)
    latents = latents / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
    image = pipe.vae.decode(latents, return_dict=False)[0]
    pixels = pipe.image_processor.postprocess(image, output_type="np")
    t3 = time.perf_counter()
    if not np.isfinite(pixels).all() or not torch.isfinite(latents).all():
        print("warning: non-finite latents or pixels", file=sys.stderr)
    return {"text_encode_s": t1 - t0, "denoise_s": t2 - t1, "vae_decode_s": t3 - t2, "total_s": t3 - t0}


def decode(latents):
    latents = latents.to(pipe.vae.dtype) / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
    image = pipe.vae.decode(latents, return_dict=False)[0]
    pixels = pipe.image_processor.postprocess(image, output_type="np")
    if not np.isfinite(pixels).all() or not torch.isfinite(latents).all():
        print("warning: non-finite latents or pixels", file=sys.stderr)


@torch.no_grad()
def run_zimage(seed):
    """What ZImagePipeline.__call__ does at guidance 0, split at the stage boundaries."""
    t0 = time.perf_counter()
    embeds, _ = pipe.encode_prompt(prompt, device="cpu", do_classifier_free_guidance=False)
    t1 = time.perf_counter()
    h, w = 2 * (args.height // 16), 2 * (args.width // 16)
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, 16, h, w, generator=g)
    config = pipe.scheduler.config
    mu = calculate_shift((h // 2) * (w // 2), config.get("base_image_seq_len", 256),
                         config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                         config.get("max_shift", 1.15))
    timesteps, _ = retrieve_timesteps(pipe.scheduler, args.steps, "cpu",
                                      sigmas=get_default_z_image_sigmas(args.steps), mu=mu)
    pipe.scheduler.set_begin_index(0)
    for t in timesteps:
        model_input = latents.to(pipe.transformer.dtype).unsqueeze(2)
        out = pipe.transformer(list(model_input.unbind(dim=0)), (1000 - t.expand(1)) / 1000, embeds,
                               return_dict=False)[0]
        velocity = -torch.stack([o.float() for o in out], dim=0).squeeze(2)
        latents = pipe.scheduler.step(velocity, t, latents, return_dict=False)[0]
    t2 = time.perf_counter()
    decode(latents)
    t3 = time.perf_counter()
    return {"text_encode_s": t1 - t0, "denoise_s": t2 - t1, "vae_decode_s": t3 - t2, "total_s": t3 - t0}


@torch.no_grad()
def run_sd3(seed):
    """What StableDiffusion3Pipeline.__call__ does at guidance 0, split at the stage boundaries."""
    t0 = time.perf_counter()
    embeds, _, pooled, _ = pipe.encode_prompt(prompt, None, None, device="cpu", do_classifier_free_guidance=False,
                                              max_sequence_length=args.max_sequence_length)
    t1 = time.perf_counter()
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, 16, args.height // 8, args.width // 8, generator=g).to(dtype)
    timesteps, _ = retrieve_timesteps(pipe.scheduler, args.steps, "cpu")
    for t in timesteps:
        velocity = pipe.transformer(hidden_states=latents, timestep=t.expand(1), encoder_hidden_states=embeds,
                                    pooled_projections=pooled, return_dict=False)[0]
        latents = pipe.scheduler.step(velocity, t, latents, return_dict=False)[0]
    t2 = time.perf_counter()
    decode(latents)
    t3 = time.perf_counter()
    return {"text_encode_s": t1 - t0, "denoise_s": t2 - t1, "vae_decode_s": t3 - t2, "total_s": t3 - t0}


run = {"StableDiffusionXLPipeline": run_sdxl, "FluxPipeline": run_flux, "ZImagePipeline": run_zimage,
       "StableDiffusion3Pipeline": run_sd3}.get(pipeline_class, run_sd)
run(0)
samples = [run(i + 1) for i in range(args.runs)]
report = {key: statistics.median(s[key] for s in samples) for key in samples[0]}
report.update(load_s=load_s, dtype=args.dtype, device=device, runs=args.runs, threads=args.threads,
              torch=torch.__version__)
print(json.dumps(report))
