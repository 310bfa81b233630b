"""Build an SDXL-Turbo-shaped diffusers folder with random weights, for speed comparisons.

Real layer sizes (SDXL / SDXL-Turbo): UNet 2567M parameters (320/640/1280 wide, 1/2/10 transformer layers per
block, cross-attention width 2048, "text_time" micro-conditioning), CLIP-L text encoder 123M (12 layers,
quick_gelu), OpenCLIP bigG text encoder 695M (32 layers, projection 1280), VAE 84M (scaling factor 0.13025,
force_upcast); Euler scheduler with trailing spacing, as stabilityai/sdxl-turbo's folder. Native size 512
(UNet sample_size 64, as sdxl-turbo). Both CLIP tokenizers come from the repository's fixtures. Weights are
random: only the timing is meaningful. Components are built, saved and freed one at a time (the UNet alone is
10 GB in float32), each in one safetensors file as the real repository's float32 files are.

    python bench/make_sdxl_shaped.py fixtures OUT_DIR
"""
import gc
import json
import os
import shutil
import sys

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

fixtures, out = sys.argv[1], sys.argv[2]


def unet():
    return UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280), attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=2048, use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,  # 6 time ids x 256 + pooled 1280
    )


def clip_l():  # CLIP ViT-L/14's text tower
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=1,
    ))


def clip_g():  # OpenCLIP ViT-bigG/14's text tower, with its projection (the pooled embedding)
    return CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
        num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu", projection_dim=1280,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=1,
    ))


def vae():
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=1024,
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        scaling_factor=0.13025, force_upcast=True,
    )


total = 0
for seed, (name, build) in enumerate([("unet", unet), ("text_encoder", clip_l), ("text_encoder_2", clip_g),
                                      ("vae", vae)]):
    torch.manual_seed(seed)
    with torch.no_grad():
        model = build()
    count = sum(p.numel() for p in model.parameters())
    total += count
    print(f"{name}: {count / 1e6:.1f}M parameters", flush=True)
    model.save_pretrained(os.path.join(out, name), max_shard_size="20GB")
    del model
    gc.collect()
print(f"total: {total / 1e6:.1f}M parameters", flush=True)
scheduler = EulerDiscreteScheduler(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
    timestep_spacing="trailing", prediction_type="epsilon",
)
scheduler.save_pretrained(os.path.join(out, "scheduler"))
for sub in ["tokenizer", "tokenizer_2"]:
    shutil.copytree(os.path.join(fixtures, "models", "tiny-sdxl", sub), os.path.join(out, sub), dirs_exist_ok=True)
with open(os.path.join(out, "model_index.json"), "w") as f:
    json.dump({
        "_class_name": "StableDiffusionXLPipeline", "_diffusers_version": "0.42.1",
        "feature_extractor": [None, None], "force_zeros_for_empty_prompt": True, "image_encoder": [None, None],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
    }, f, indent=1)
