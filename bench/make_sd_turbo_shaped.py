"""Build an SD-Turbo-shaped diffusers folder with random weights, for speed comparisons.

Real layer sizes (SD 2.1 / SD-Turbo): UNet 866M parameters, OpenCLIP-H text encoder 340M
(23 layers), VAE 84M; Euler scheduler with trailing spacing. The CLIP tokenizer comes from the
repository's fixtures. Weights are random: only the timing is meaningful.

    python bench/make_sd_turbo_shaped.py fixtures OUT_DIR
"""
import json
import os
import shutil
import sys

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

fixtures, out = sys.argv[1], sys.argv[2]
torch.manual_seed(0)

unet = UNet2DConditionModel(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280), attention_head_dim=(5, 10, 20, 20),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=1024, use_linear_projection=True,
)
text = CLIPTextModel(CLIPTextConfig(
    vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
    num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu", projection_dim=512,
    bos_token_id=49406, eos_token_id=49407, pad_token_id=1,
))
vae = AutoencoderKL(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=768,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)
scheduler = EulerDiscreteScheduler(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
    timestep_spacing="trailing", prediction_type="epsilon",
)
for name, model in [("unet", unet), ("text_encoder", text), ("vae", vae)]:
    count = sum(p.numel() for p in model.parameters())
    print(f"{name}: {count / 1e6:.1f}M parameters", flush=True)
    model.save_pretrained(os.path.join(out, name))
scheduler.save_pretrained(os.path.join(out, "scheduler"))
# The fixture's CLIP tokenizer. (SD 2.x's own pads with "!" where this one pads with <|endoftext|>:
# the token ids differ, the work does not.)
shutil.copytree(os.path.join(fixtures, "models", "tiny-sdxl", "tokenizer_2"), os.path.join(out, "tokenizer"),
                dirs_exist_ok=True)
with open(os.path.join(out, "model_index.json"), "w") as f:
    json.dump({
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
        "feature_extractor": [None, None], "requires_safety_checker": False, "safety_checker": [None, None],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }, f, indent=1)
