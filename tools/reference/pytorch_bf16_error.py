# How far diffusers' own bf16 lands from its f32 reference on each parity case: the whole pipeline cast
# to bf16 (`pipe.to(torch.bfloat16)`, the VAE too, as `torch_dtype=torch.bfloat16` loads it), run on the
# case's own inputs, its image's max |diff| against the case's f32 image. The engine's bf16 test on a CPU
# with AVX512-BF16 (crates/engine/tests/it/parity.rs, PYTORCH_BF16_IMAGE) holds each case to this figure;
# with `float16`, the same in f16, which holds the engine's f16 computed as a GPU does (PYTORCH_F16_IMAGE).
# usage (repository root, diffusers installed): python tools/reference/pytorch_bf16_error.py [float16|float32]
import json, os, sys
import numpy as np
import torch
from safetensors.torch import load_file

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "dit"))
import make_dit_cases as dit  # noqa: E402
from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler,  # noqa: E402
                       StableDiffusionImg2ImgPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline)
import diffusers  # noqa: E402

diffusers.utils.logging.set_verbosity_error()
torch.set_num_threads(2)
SCHED = {"ddim": DDIMScheduler, "euler": EulerDiscreteScheduler, "dpmpp2m": DPMSolverMultistepScheduler}


class Mean:  # the posterior's mean for a sample, as the fixtures and the engine take it
    def __init__(self, m):
        self.m = m

    def sample(self, generator=None):
        return self.m

    def mode(self):
        return self.m


class Encoded:
    def __init__(self, m):
        self.latent_dist = Mean(m)


def sd_case(c, stored, models, dtype):
    """An SD/SDXL case (tools/reference/make_fixtures.py) in `dtype`, on the latents and noise it stored."""
    cls = StableDiffusionXLPipeline if c["model"] == "tiny-sdxl" else StableDiffusionPipeline
    if c.get("init_image"):
        cls = StableDiffusionImg2ImgPipeline
    pipe = cls.from_pretrained(os.path.join(models, c["model"])).to(dtype)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = SCHED[c["scheduler"]].from_config(pipe.scheduler.config, **c.get("scheduler_config", {}))
    kw = dict(prompt=c["prompt"], negative_prompt=c.get("negative_prompt"), num_inference_steps=c["steps"],
              guidance_scale=c["guidance_scale"], output_type="np")
    if cls is StableDiffusionImg2ImgPipeline:
        import diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img as m
        noise = stored["noise"]
        m.randn_tensor = lambda shape, generator=None, device=None, dtype=None, **k: noise.to(dtype=dtype)
        encode = pipe.vae.encode
        pipe.vae.encode = lambda x, **k: Encoded(encode(x).latent_dist.mean)
        img = pipe(image=(stored["init_image"] + 1) / 2, strength=c["strength"], **kw).images
    else:
        lat = stored["initial_latents"].to(dtype) * pipe.scheduler.init_noise_sigma
        img = pipe(height=c["height"], width=c["width"], latents=lat, **kw).images
    return torch.from_numpy(np.ascontiguousarray(img[0])).float()


def main():
    # `float16` runs the pipelines in f16 instead (as a GPU does); `float32` checks that this script
    # reruns each case as its reference did (differences ~0).
    named = {"float32": torch.float32, "float16": torch.float16}
    dtype = named.get(sys.argv[1] if sys.argv[1:] else "", torch.bfloat16)
    root = "fixtures"
    sets = [("cases", "models", sd_case), ("cases-dit", "models-dit", None), ("cases-dit-own", "models-dit", None)]
    for cases_dir, models_dir, run in sets:
        cases_dir, models = os.path.join(root, cases_dir), os.path.join(root, models_dir)
        for c in json.load(open(os.path.join(cases_dir, "cases.json"))):
            stored = load_file(os.path.join(cases_dir, c["name"] + ".safetensors"))
            if run:
                image = run(c, stored, models, dtype)
            else:
                image = dit.run_case(dict(c), models, dtype=dtype)["image"]
            d = (stored["image"].double() - image.double()).abs().max().item()
            print(f'    ("{c["name"]}", {d:.2e}),', flush=True)


if __name__ == "__main__":
    main()
