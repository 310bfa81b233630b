"""Write fixtures/loras/tiny-sdxl-kohya.safetensors: tiny-sdxl's PEFT LoRA renamed the way kohya's
sd-scripts name SDXL modules. Its UNet is sd-scripts' own copy of the original SGM UNet, so its
layers are `lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q` (the SGM module path, `_`
for `.`); the text encoders are `lora_te1_` / `lora_te2_` with the Hugging Face CLIP module paths.
The SGM names come from tools/checkpoints/sd_to_single_file.py's map, written independently of
seedbed's Rust one. Each module's `.alpha` is the PEFT file's alpha, so both files are one LoRA.

Then diffusers reads both files into tiny-sdxl and the pictures must agree: diffusers' own Kohya
reader is the referee for the names.

    python tools/lora/kohya_sdxl_from_peft.py fixtures
"""

import json
import os
import sys

import torch
from diffusers import StableDiffusionXLPipeline
from safetensors import safe_open
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "checkpoints"))
from sd_to_single_file import unet_name  # noqa: E402

torch.set_num_threads(2)
FIX = sys.argv[1] if len(sys.argv) > 1 else "fixtures"
LORAS = os.path.join(FIX, "loras")
PEFT, KOHYA = "tiny-sdxl-peft.safetensors", "tiny-sdxl-kohya.safetensors"


def peft_alpha(path):
    with safe_open(path, "pt") as f:
        meta = json.loads(f.metadata()["lora_adapter_metadata"])
    return meta["unet.lora_alpha"]


def convert():
    src = os.path.join(LORAS, PEFT)
    alpha = peft_alpha(src)
    config = json.load(open(os.path.join(FIX, "models", "tiny-sdxl", "unet", "config.json")))
    out = {}
    for key, t in load_file(src).items():
        component, rest = key.split(".", 1)
        module, which = rest.rsplit(".lora_", 1)
        if component == "unet":
            module = unet_name(module + ".weight", config["layers_per_block"]).removesuffix(".weight")
            prefix = "lora_unet_"
        else:
            prefix = {"text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}[component]
            if not module.startswith("text_model."):
                module = "text_model." + module
        kohya = prefix + module.replace(".", "_")
        out[kohya + (".lora_down.weight" if which.startswith("A") else ".lora_up.weight")] = t
        out[kohya + ".alpha"] = torch.tensor(float(alpha))
    save_file(out, os.path.join(LORAS, KOHYA), metadata={"ss_network_module": "networks.lora"})


def picture(weight_name):
    pipe = StableDiffusionXLPipeline.from_pretrained(os.path.join(FIX, "models", "tiny-sdxl"))
    pipe.set_progress_bar_config(disable=True)
    if weight_name:
        pipe.load_lora_weights(LORAS, weight_name=weight_name)
    generator = torch.Generator().manual_seed(5)
    return pipe("a lighthouse", num_inference_steps=2, height=64, width=64, generator=generator,
                output_type="np").images[0]


if __name__ == "__main__":
    convert()
    peft, kohya = picture(PEFT), picture(KOHYA)
    diff = abs(peft - kohya).max()
    print("diffusers: PEFT vs Kohya SGM picture max |diff|", diff)
    assert diff < 1e-5, diff
    moved = abs(peft - picture(None)).max()
    print("the LoRA moves the picture by", moved)
    assert moved > 1e-3, "diffusers applied neither LoRA"
