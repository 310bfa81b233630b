"""Build a FLUX.1-schnell-shaped diffusers folder with random weights, for speed and memory comparisons.

Real widths, fewer blocks: the transformer has FLUX's hidden size 3072 (24 heads x 128, RoPE axes 16/56/56,
64 packed input channels, T5 width 4096 in, CLIP pooled 768 in) but 2 double + 4 single blocks instead of
19 + 38, and no guidance embedding (schnell); T5 v1.1 XXL widths (d_model 4096, d_ff 10240, 64 heads x 64,
gated-gelu) with 4 layers instead of 24; CLIP-L at full size; the real FLUX VAE (16 latent channels, no quant
convs); the real schnell scheduler config. Tokenizers and scheduler come from the repository's tiny FLUX
fixture (the real tokenizer files). Weights are random (seeded, float32): only time and memory mean anything.
Large components are saved in 2 GB shards with an index, as the real repositories are.

    python bench/make_flux_shaped.py [OUT_DIR] [--fixtures fixtures/models-dit/tiny-flux-schnell]
    (default OUT_DIR: target/flux-shaped)
"""
import argparse
import gc
import json
import os
import shutil
import time

import torch
from diffusers import AutoencoderKL, FluxTransformer2DModel
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

parser = argparse.ArgumentParser()
parser.add_argument("out", nargs="?", default=os.path.join("target", "flux-shaped"))
parser.add_argument("--fixtures", default=os.path.join("fixtures", "models-dit", "tiny-flux-schnell"))
args = parser.parse_args()
SHARD = "2GB"


def transformer():
    return FluxTransformer2DModel(
        patch_size=1, in_channels=64, out_channels=None, num_layers=2, num_single_layers=4,
        attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
        guidance_embeds=False, axes_dims_rope=(16, 56, 56),
    )


def text_encoder():  # CLIP-L, as FLUX's text_encoder (quick_gelu, 77 positions)
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768, layer_norm_eps=1e-5,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    ))


def text_encoder_2():  # T5 v1.1 XXL widths, 4 of its 24 layers
    return T5EncoderModel(T5Config(
        vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=4, num_heads=64,
        feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, relative_attention_max_distance=128,
        layer_norm_epsilon=1e-6, dropout_rate=0.0, tie_word_embeddings=False, is_encoder_decoder=False,
        use_cache=False, pad_token_id=0, eos_token_id=1,
    ))


def vae():  # the FLUX.1 VAE config
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16, layers_per_block=2, norm_num_groups=32,
        block_out_channels=(128, 256, 512, 512), act_fn="silu", sample_size=1024,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False,
        mid_block_add_attention=True, force_upcast=True,
    )


os.makedirs(args.out, exist_ok=True)
total = 0
# one component at a time (the transformer alone is ~5 GB in float32), each from its own seed; PyTorch's default
# initialisation (as bench/make_sd_turbo_shaped.py) keeps every Linear/conv's gain below 1, so activations stay finite
for seed, (name, build) in enumerate([("transformer", transformer), ("text_encoder_2", text_encoder_2),
                                      ("text_encoder", text_encoder), ("vae", vae)]):
    started = time.perf_counter()
    torch.manual_seed(seed)
    with torch.no_grad():
        model = build()
    count = sum(p.numel() for p in model.parameters())
    total += count
    model.save_pretrained(os.path.join(args.out, name), max_shard_size=SHARD)
    print(f"{name}: {count / 1e6:.1f}M parameters ({count * 4 / 2**30:.2f} GiB f32), "
          f"{time.perf_counter() - started:.0f}s", flush=True)
    del model
    gc.collect()
print(f"total: {total / 1e6:.1f}M parameters ({total * 4 / 2**30:.2f} GiB f32)")

for sub in ["tokenizer", "tokenizer_2", "scheduler"]:  # the real tokenizer files; schnell's scheduler config
    shutil.copytree(os.path.join(args.fixtures, sub), os.path.join(args.out, sub), dirs_exist_ok=True)
with open(os.path.join(args.fixtures, "model_index.json")) as f:
    index = json.load(f)
assert index["_class_name"] == "FluxPipeline", index["_class_name"]
with open(os.path.join(args.out, "model_index.json"), "w") as f:
    json.dump(index, f, indent=2)
    f.write("\n")
