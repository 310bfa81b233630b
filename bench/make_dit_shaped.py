"""Build a transformer-family diffusers folder with random weights at the real widths, for speed and memory
comparisons: FLUX.1-schnell, Z-Image-Turbo or SD3.5-Large-Turbo shaped.

Real widths, fewer layers; tokenizers and the scheduler config come from the repository's tiny fixture of the
family (the real tokenizer files); weights are random (seeded, float32): only time and memory mean anything.
Large components are saved in 2 GB shards with an index, as the real repositories are.

- flux: transformer hidden 3072 (24 heads x 128, RoPE axes 16/56/56, 64 packed input channels, T5 width 4096
  in, CLIP pooled 768 in), 2 double + 4 single blocks (real: 19 + 38), no guidance embedding (schnell); T5 v1.1
  XXL widths (d_model 4096, d_ff 10240, 64 heads x 64) with 4 of its 24 layers; CLIP-L at full size; the
  FLUX VAE.
- zimage: transformer dim 3840 (30 heads x 128, RoPE axes 32/48/48, caption width 2560) with its 2 noise- and
  2 context-refiner layers and 2 main layers (real: 30); Qwen3-4B widths (hidden 2560, 32 query / 8 key-value
  heads x 128, MLP 9728) with 4 of its 36 layers; the FLUX VAE (Z-Image uses it).
- sd3: SD3.5 Large widths (38 heads x 64 = 2432, T5 width 4096 in, pooled 2048 in, position table 192), 3 of
  its 38 layers (the last `context_pre_only`); CLIP-L and CLIP-G (OpenCLIP bigG: 1280 wide, 32 layers) at
  full size, both with projections; T5 v1.1 XXL widths with 4 layers; the SD3 VAE.

    python bench/make_dit_shaped.py FAMILY [OUT_DIR] [--fixtures DIR]
    (default OUT_DIR: target/FAMILY-shaped; default fixtures: fixtures/models-dit/tiny-flux-schnell,
     tiny-zimage or tiny-sd3)
"""
import argparse
import gc
import json
import os
import shutil
import time

import torch
from diffusers import AutoencoderKL
from transformers import CLIPTextConfig, T5Config

FIXTURES = {"flux": "tiny-flux-schnell", "zimage": "tiny-zimage", "sd3": "tiny-sd3"}
PIPELINES = {"flux": "FluxPipeline", "zimage": "ZImagePipeline", "sd3": "StableDiffusion3Pipeline"}
parser = argparse.ArgumentParser()
parser.add_argument("family", choices=sorted(FIXTURES))
parser.add_argument("out", nargs="?")
parser.add_argument("--fixtures")
args = parser.parse_args()
out = args.out or os.path.join("target", f"{args.family}-shaped")
fixtures = args.fixtures or os.path.join("fixtures", "models-dit", FIXTURES[args.family])
SHARD = "2GB"


def clip_l(with_projection):  # CLIP-L (quick_gelu, 77 positions)
    from transformers import CLIPTextModel, CLIPTextModelWithProjection
    config = CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768, layer_norm_eps=1e-5,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    )
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def clip_g():  # OpenCLIP bigG as SD3's text_encoder_2 (exact gelu, projection 1280)
    from transformers import CLIPTextModelWithProjection
    return CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
        max_position_embeddings=77, hidden_act="gelu", projection_dim=1280, layer_norm_eps=1e-5,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=1,
    ))


def t5_xxl():  # T5 v1.1 XXL widths, 4 of its 24 layers
    from transformers import T5EncoderModel
    return T5EncoderModel(T5Config(
        vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=4, num_heads=64,
        feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, relative_attention_max_distance=128,
        layer_norm_epsilon=1e-6, dropout_rate=0.0, tie_word_embeddings=False, is_encoder_decoder=False,
        use_cache=False, pad_token_id=0, eos_token_id=1,
    ))


def qwen3_4b():  # Qwen3-4B widths, 4 of its 36 layers
    from transformers import Qwen3Config, Qwen3Model
    return Qwen3Model(Qwen3Config(
        vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=4, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, hidden_act="silu", max_position_embeddings=40960, rms_norm_eps=1e-6,
        rope_theta=1000000.0, tie_word_embeddings=True, attention_bias=False,
    ))


def vae(scaling_factor, shift_factor):  # the FLUX.1 / SD3 VAE (16 latent channels, no quant convs)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16, layers_per_block=2, norm_num_groups=32,
        block_out_channels=(128, 256, 512, 512), act_fn="silu", sample_size=1024,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        scaling_factor=scaling_factor, shift_factor=shift_factor, use_quant_conv=False, use_post_quant_conv=False,
        mid_block_add_attention=True, force_upcast=True,
    )


def flux_transformer():
    from diffusers import FluxTransformer2DModel
    return FluxTransformer2DModel(
        patch_size=1, in_channels=64, out_channels=None, num_layers=2, num_single_layers=4,
        attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
        guidance_embeds=False, axes_dims_rope=(16, 56, 56),
    )


def zimage_transformer():
    from diffusers import ZImageTransformer2DModel
    return ZImageTransformer2DModel(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=3840, n_layers=2, n_refiner_layers=2,
        n_heads=30, n_kv_heads=30, norm_eps=1e-5, qk_norm=True, cap_feat_dim=2560, rope_theta=256.0,
        t_scale=1000.0, axes_dims=[32, 48, 48], axes_lens=[1536, 512, 512],
    )


def sd3_transformer():
    from diffusers import SD3Transformer2DModel
    return SD3Transformer2DModel(
        sample_size=128, patch_size=2, in_channels=16, num_layers=3, attention_head_dim=64, num_attention_heads=38,
        joint_attention_dim=4096, caption_projection_dim=2432, pooled_projection_dim=2048, out_channels=16,
        pos_embed_max_size=192, qk_norm="rms_norm", dual_attention_layers=(),
    )


COMPONENTS = {  # (folder, builder), largest first; copied: the tokenizers and the scheduler
    "flux": ([("transformer", flux_transformer), ("text_encoder_2", t5_xxl),
              ("text_encoder", lambda: clip_l(False)), ("vae", lambda: vae(0.3611, 0.1159))],
             ["tokenizer", "tokenizer_2", "scheduler"]),
    "zimage": ([("transformer", zimage_transformer), ("text_encoder", qwen3_4b),
                ("vae", lambda: vae(0.3611, 0.1159))],
               ["tokenizer", "scheduler"]),
    "sd3": ([("transformer", sd3_transformer), ("text_encoder_3", t5_xxl), ("text_encoder_2", clip_g),
             ("text_encoder", lambda: clip_l(True)), ("vae", lambda: vae(1.5305, 0.0609))],
            ["tokenizer", "tokenizer_2", "tokenizer_3", "scheduler"]),
}

os.makedirs(out, exist_ok=True)
built, copied = COMPONENTS[args.family]
total = 0
# one component at a time (a transformer alone is several GB in float32), each from its own seed; PyTorch's
# default initialisation (as bench/make_sd_turbo_shaped.py) keeps every Linear/conv's gain below 1, so
# activations stay finite
for seed, (name, build) in enumerate(built):
    started = time.perf_counter()
    torch.manual_seed(seed)
    with torch.no_grad():
        model = build()
    count = sum(p.numel() for p in model.parameters())
    total += count
    model.save_pretrained(os.path.join(out, name), max_shard_size=SHARD)
    print(f"{name}: {count / 1e6:.1f}M parameters ({count * 4 / 2**30:.2f} GiB f32), "
          f"{time.perf_counter() - started:.0f}s", flush=True)
    del model
    gc.collect()
print(f"total: {total / 1e6:.1f}M parameters ({total * 4 / 2**30:.2f} GiB f32)")

for sub in copied:  # the real tokenizer files; the real scheduler config
    shutil.copytree(os.path.join(fixtures, sub), os.path.join(out, sub), dirs_exist_ok=True)
with open(os.path.join(fixtures, "model_index.json")) as f:
    index = json.load(f)
assert index["_class_name"] == PIPELINES[args.family], index["_class_name"]
with open(os.path.join(out, "model_index.json"), "w") as f:
    json.dump(index, f, indent=2)
    f.write("\n")
