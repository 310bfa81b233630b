"""The diffusers side of bench/first_image.sh: everything a one-shot script pays, from its imports
to the PNG written, for the pipeline the folder's model_index.json names, fp32 on the CPU,
guidance 0 and the folder's own scheduler (as `seedbed generate --guidance 0` uses it). SDXL
(StableDiffusionXLPipeline) runs without its invisible watermark, which diffusers adds only where the optional
invisible-watermark package is installed, so that the time does not depend on it.

    python bench/diffusers_first_image.py MODEL_DIR OUT.png --size 512 --steps 1 --threads 2
"""
import argparse
import json
import os

import torch
from diffusers import DiffusionPipeline

parser = argparse.ArgumentParser()
parser.add_argument("model_dir")
parser.add_argument("out")
parser.add_argument("--size", type=int, default=512)
parser.add_argument("--steps", type=int, default=1)
parser.add_argument("--threads", type=int, default=2)
parser.add_argument("--prompt", default="a photograph of an astronaut riding a horse")
args = parser.parse_args()

torch.set_num_threads(args.threads)
with open(os.path.join(args.model_dir, "model_index.json")) as f:
    pipeline_class = json.load(f)["_class_name"]
extra = {"add_watermarker": False} if pipeline_class == "StableDiffusionXLPipeline" else {}
pipe = DiffusionPipeline.from_pretrained(args.model_dir, torch_dtype=torch.float32, **extra)
image = pipe(
    args.prompt,
    width=args.size,
    height=args.size,
    num_inference_steps=args.steps,
    guidance_scale=0.0,
    generator=torch.Generator().manual_seed(1),
).images[0]
image.save(args.out)
