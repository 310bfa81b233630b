"""The diffusers side of bench/first_image.sh: everything a one-shot script pays, from its imports
to the PNG written, for the pipeline the folder's model_index.json names, fp32 on the CPU,
guidance 0 and the folder's own scheduler (as `seedbed generate --guidance 0` uses it).

    python bench/diffusers_first_image.py MODEL_DIR OUT.png --size 512 --steps 1 --threads 2
"""
import argparse

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
pipe = DiffusionPipeline.from_pretrained(args.model_dir, torch_dtype=torch.float32)
image = pipe(
    args.prompt,
    width=args.size,
    height=args.size,
    num_inference_steps=args.steps,
    guidance_scale=0.0,
    generator=torch.Generator().manual_seed(1),
).images[0]
image.save(args.out)
