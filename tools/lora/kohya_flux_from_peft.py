"""Write fixtures/loras/tiny-flux-dev-kohya.safetensors: tiny-flux-dev's PEFT LoRA as kohya's
sd-scripts save a FLUX.1 LoRA, in BFL's module names (`lora_unet_double_blocks_0_img_attn_qkv`,
`lora_unet_single_blocks_2_linear1`, ...). BFL fuses what diffusers keeps apart: a double block's
q, k and v are one `qkv` layer per stream, a single block's q, k, v and MLP input one `linear1`.
The PEFT file trained those separately, so each fused module is saved the way sd-scripts saves
split q/k/v LoRAs: the parts' down matrices concatenated by rows (rank 3r or 4r) and a
block-diagonal up, which is what diffusers' `_convert_kohya_flux_lora_to_diffusers` recognises
as "sparse". Each module's `.alpha` keeps PEFT's alpha/rank factor at its own rank.

The BFL names are written here from diffusers' own conversion, independently of seedbed's Rust
table (crates/engine/src/checkpoint/flux_bfl.rs).

Then diffusers reads both files into tiny-flux-dev and the pictures must agree: diffusers' own
Kohya FLUX reader is the referee for the names and the fusing. That reader hard-codes FLUX.1's
widths for a single block's `linear1` (3072 for q, k, v and 12288 for the MLP); for the tiny model
the same function is run with the tiny model's widths in their place, nothing else changed.

    python tools/lora/kohya_flux_from_peft.py fixtures
"""

import inspect
import json
import os
import sys

import torch
from diffusers import FluxPipeline
from diffusers.loaders import lora_conversion_utils, lora_pipeline
from safetensors import safe_open
from safetensors.torch import load_file, save_file

torch.set_num_threads(2)
FIX = sys.argv[1] if len(sys.argv) > 1 else "fixtures"
LORAS = os.path.join(FIX, "loras")
MODEL = os.path.join(FIX, "models-dit", "tiny-flux-dev")
PEFT, KOHYA = "tiny-flux-dev-peft.safetensors", "tiny-flux-dev-kohya.safetensors"

# diffusers' layer -> BFL's, for layers BFL keeps whole (as in diffusers' Kohya FLUX reader).
DOUBLE_WHOLE = {
    "attn.to_out.0": "img_attn_proj",
    "attn.to_add_out": "txt_attn_proj",
    "ff.net.0.proj": "img_mlp_0",
    "ff.net.2": "img_mlp_2",
    "ff_context.net.0.proj": "txt_mlp_0",
    "ff_context.net.2": "txt_mlp_2",
    "norm1.linear": "img_mod_lin",
    "norm1_context.linear": "txt_mod_lin",
}
SINGLE_WHOLE = {"proj_out": "linear2", "norm.linear": "modulation_lin"}
# BFL's fused layer -> diffusers' layers, in the order of its rows.
DOUBLE_FUSED = {
    "img_attn_qkv": ["attn.to_q", "attn.to_k", "attn.to_v"],
    "txt_attn_qkv": ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"],
}
SINGLE_FUSED = {"linear1": ["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"]}


def peft_factor(path):
    """PEFT's alpha / rank for the transformer."""
    with safe_open(path, "pt") as f:
        meta = json.loads(f.metadata()["lora_adapter_metadata"])
    return meta["transformer.lora_alpha"] / meta["transformer.r"]


def convert():
    src = os.path.join(LORAS, PEFT)
    factor = peft_factor(src)
    peft = {}
    for key, t in load_file(src).items():
        module, which = key.removeprefix("transformer.").rsplit(".lora_", 1)
        peft.setdefault(module, {})[which.split(".")[0]] = t
    out = {}

    def save(bfl, down, up):
        name = "lora_unet_" + bfl
        out[name + ".lora_down.weight"] = down.contiguous()
        out[name + ".lora_up.weight"] = up.contiguous()
        out[name + ".alpha"] = torch.tensor(factor * down.shape[0])

    blocks = {}
    for module in peft:
        kind, index, rest = module.split(".", 2)
        blocks.setdefault((kind, int(index)), set()).add(rest)
    for (kind, i), layers in sorted(blocks.items()):
        whole, fused, bfl_block = {
            "transformer_blocks": (DOUBLE_WHOLE, DOUBLE_FUSED, f"double_blocks_{i}"),
            "single_transformer_blocks": (SINGLE_WHOLE, SINGLE_FUSED, f"single_blocks_{i}"),
        }[kind]
        for layer in sorted(layers):
            if layer in whole:
                m = peft.pop(f"{kind}.{i}.{layer}")
                save(f"{bfl_block}_{whole[layer]}", m["A"], m["B"])
        for bfl, parts in fused.items():
            present = [p for p in parts if p in layers]
            if not present:
                continue
            assert present == parts, f"{kind}.{i}: {bfl} needs all of {parts}, the file has {present}"
            ms = [peft.pop(f"{kind}.{i}.{p}") for p in parts]
            save(f"{bfl_block}_{bfl}", torch.cat([m["A"] for m in ms]), torch.block_diag(*[m["B"] for m in ms]))
    assert not peft, f"modules left unconverted: {sorted(peft)}"
    save_file(out, os.path.join(LORAS, KOHYA), metadata={"ss_network_module": "networks.lora_flux"})


def kohya_reader_for(transformer):
    """diffusers' Kohya FLUX reader with the model's own widths for `linear1`'s parts."""
    width = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    mlp = transformer.single_transformer_blocks[0].proj_mlp.out_features
    source = inspect.getsource(lora_conversion_utils._convert_kohya_flux_lora_to_diffusers)
    fixed = "dims=[3072, 3072, 3072, 12288]"
    assert source.count(fixed) == 1, "diffusers' Kohya FLUX reader changed; look again"
    source = source.replace(fixed, f"dims=[{width}, {width}, {width}, {mlp}]")
    namespace = dict(vars(lora_conversion_utils))
    exec(source, namespace)
    return namespace["_convert_kohya_flux_lora_to_diffusers"]


def picture(pipe, weight_name):
    pipe.unload_lora_weights()
    if weight_name:
        pipe.load_lora_weights(LORAS, weight_name=weight_name)
    generator = torch.Generator().manual_seed(3)
    return pipe("a cinematic photo of a lighthouse at dusk", num_inference_steps=2, height=64, width=64,
                guidance_scale=3.5, generator=generator, output_type="np").images[0]


if __name__ == "__main__":
    convert()
    pipe = FluxPipeline.from_pretrained(MODEL)
    pipe.set_progress_bar_config(disable=True)
    lora_pipeline._convert_kohya_flux_lora_to_diffusers = kohya_reader_for(pipe.transformer)
    peft, kohya = picture(pipe, PEFT), picture(pipe, KOHYA)
    diff = abs(peft - kohya).max()
    print("diffusers: PEFT vs Kohya BFL picture max |diff|", diff)
    assert diff < 1e-5, diff
    moved = abs(peft - picture(pipe, None)).max()
    print("the LoRA moves the picture by", moved)
    assert moved > 1e-3, "diffusers applied neither LoRA"
