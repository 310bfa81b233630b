"""Write SD 1.x/2.x and SDXL diffusers folders as single-file checkpoints in the original layout.

The layout is the one Stability's and the community's `.safetensors` checkpoints use:
`model.diffusion_model.*` (the LDM/SGM UNet), `first_stage_model.*` (the VAE), and the text
encoders under `cond_stage_model.transformer.*` (SD 1.x, CLIP-L), `cond_stage_model.model.*`
(SD 2.x, OpenCLIP with fused attention projections) or `conditioner.embedders.{0,1}.*` (SDXL).
The renaming here is written from the original model code's module names, independently of
seedbed's Rust mapping, so that the engine's tests compare two separate readings of the layout.

    python sd_to_single_file.py fixtures   # the tiny fixtures and the real-shape headers

Writes, under fixtures/single-file/:
- tiny-sd.safetensors, tiny-sdxl.safetensors: the tiny fixtures in the original layout, and
  each beside a `<stem>.json` naming the fixture folder as its `base` (its configs: the tiny
  models' head counts are not the real models', so no checkpoint reader could infer them);
- real-shapes/<model>.json: for SD 1.5, SD 2.1 (768-v) and SDXL base, the names and shapes a
  real checkpoint has, and the diffusers configs they were made from (built on the meta device:
  no weights, no download), so that the engine's config inference is checked on real layouts.
"""

import json
import re
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}


def resnet_part(rest):
    head, _, tail = rest.partition(".")
    return f"{RESNET[head]}.{tail}"


def unet_name(name, layers):
    """diffusers UNet2DConditionModel name -> LDM/SGM UNet name (without the prefix)."""
    simple = {
        "conv_in.": "input_blocks.0.0.",
        "time_embedding.linear_1.": "time_embed.0.",
        "time_embedding.linear_2.": "time_embed.2.",
        "add_embedding.linear_1.": "label_emb.0.0.",
        "add_embedding.linear_2.": "label_emb.0.2.",
        "conv_norm_out.": "out.0.",
        "conv_out.": "out.2.",
    }
    for old, new in simple.items():
        if name.startswith(old):
            return new + name[len(old):]
    m = re.match(r"down_blocks\.(\d+)\.(resnets|attentions|downsamplers)\.(\d+)\.(.*)", name)
    if m:
        block, kind, i, rest = int(m[1]), m[2], int(m[3]), m[4]
        if kind == "downsamplers":
            index = 1 + block * (layers + 1) + layers
            return f"input_blocks.{index}.0.op.{rest.removeprefix('conv.')}"
        index = 1 + block * (layers + 1) + i
        if kind == "resnets":
            return f"input_blocks.{index}.0.{resnet_part(rest)}"
        return f"input_blocks.{index}.1.{rest}"
    m = re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", name)
    if m:
        kind, i, rest = m[1], int(m[2]), m[3]
        if kind == "attentions":
            return f"middle_block.1.{rest}"
        return f"middle_block.{2 * i}.{resnet_part(rest)}"
    m = re.match(r"up_blocks\.(\d+)\.(resnets|attentions|upsamplers)\.(\d+)\.(.*)", name)
    if m:
        block, kind, i, rest = int(m[1]), m[2], int(m[3]), m[4]
        if kind == "upsamplers":
            return ("up", block, rest)  # its index depends on the block having attention
        index = block * (layers + 1) + i
        if kind == "resnets":
            return f"output_blocks.{index}.0.{resnet_part(rest)}"
        return f"output_blocks.{index}.1.{rest}"
    raise KeyError(name)


def unet_to_original(tensors, layers):
    out = {}
    attention_blocks = {int(n.split(".")[1]) for n in tensors if n.startswith("up_blocks.") and ".attentions." in n}
    for name, value in tensors.items():
        new = unet_name(name, layers)
        if isinstance(new, tuple):
            _, block, rest = new
            index = block * (layers + 1) + layers
            slot = 2 if block in attention_blocks else 1
            new = f"output_blocks.{index}.{slot}.{rest}"
        out["model.diffusion_model." + new] = value
    return out


VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def vae_name(name, blocks):
    for old, new in [("conv_norm_out.", "norm_out."), ("conv_shortcut.", "nin_shortcut.")]:
        name = name.replace(old, new)
    m = re.match(r"encoder\.down_blocks\.(\d+)\.(resnets|downsamplers)\.(\d+)\.(.*)", name)
    if m:
        if m[2] == "downsamplers":
            return f"encoder.down.{m[1]}.downsample.{m[4]}"
        return f"encoder.down.{m[1]}.block.{m[3]}.{m[4]}"
    m = re.match(r"decoder\.up_blocks\.(\d+)\.(resnets|upsamplers)\.(\d+)\.(.*)", name)
    if m:
        level = blocks - 1 - int(m[1])
        if m[2] == "upsamplers":
            return f"decoder.up.{level}.upsample.{m[4]}"
        return f"decoder.up.{level}.block.{m[3]}.{m[4]}"
    m = re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", name)
    if m:
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
    m = re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)\.(weight|bias)", name)
    if m:
        return f"{m[1]}.mid.attn_1.{VAE_ATTENTION[m[2]]}.{m[3]}"
    return name


def vae_to_original(tensors, blocks):
    out = {}
    for name, value in tensors.items():
        new = vae_name(name, blocks)
        # The original attention is made of 1x1 convolutions.
        if ".mid.attn_1." in new and new.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]
        out["first_stage_model." + new] = value
    return out


def clip_to_original(tensors, prefix):
    """HF CLIPTextModel: the same names, under the checkpoint's prefix."""
    return {prefix + name: value for name, value in tensors.items()}


def openclip_to_original(tensors, prefix, pad_layers=0):
    """HF CLIPTextModel(WithProjection) -> OpenCLIP's text tower, attention projections fused."""
    out = {}
    fused = {}
    for name, value in tensors.items():
        m = re.match(r"text_model\.encoder\.layers\.(\d+)\.(.*)", name)
        if m:
            layer, rest = int(m[1]), m[2]
            q = re.match(r"self_attn\.(q|k|v)_proj\.(weight|bias)", rest)
            if q:
                fused.setdefault((layer, q[2]), {})[q[1]] = value
                continue
            for old, new in [("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"),
                             ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")]:
                rest = rest.replace(old, new)
            out[f"{prefix}transformer.resblocks.{layer}.{rest}"] = value
        elif name == "text_model.embeddings.token_embedding.weight":
            out[prefix + "token_embedding.weight"] = value
        elif name == "text_model.embeddings.position_embedding.weight":
            out[prefix + "positional_embedding"] = value
        elif name.startswith("text_model.final_layer_norm."):
            out[prefix + "ln_final." + name.rsplit(".", 1)[1]] = value
        elif name == "text_projection.weight":
            out[prefix + "text_projection"] = np.ascontiguousarray(value.T)
        elif name == "text_model.embeddings.position_ids":
            continue
        else:
            raise KeyError(name)
    for (layer, kind), parts in fused.items():
        out[f"{prefix}transformer.resblocks.{layer}.attn.in_proj_{kind}"] = np.concatenate(
            [parts["q"], parts["k"], parts["v"]], axis=0)
    # SD 2.x's checkpoints keep OpenCLIP's last layer, which diffusers drops (SD 2 reads the
    # penultimate layer's output).
    layers = 1 + max(layer for layer, _ in fused)
    for extra in range(layers, layers + pad_layers):
        for name, value in list(out.items()):
            if f".resblocks.{layers - 1}." in name:
                out[name.replace(f".resblocks.{layers - 1}.", f".resblocks.{extra}.")] = value
    out[prefix + "logit_scale"] = np.array(4.6052, dtype=np.float32)
    return out


def read_component(folder, component):
    files = sorted((folder / component).glob("*.safetensors"))
    tensors = {}
    for file in files:
        tensors.update(load_file(file))
    return tensors


def convert_folder(folder):
    index = json.loads((folder / "model_index.json").read_text())
    unet_config = json.loads((folder / "unet" / "config.json").read_text())
    vae_config = json.loads((folder / "vae" / "config.json").read_text())
    out = {}
    out.update(unet_to_original(read_component(folder, "unet"), unet_config["layers_per_block"]))
    out.update(vae_to_original(read_component(folder, "vae"), len(vae_config["block_out_channels"])))
    if index["_class_name"] == "StableDiffusionXLPipeline":
        out.update(clip_to_original(read_component(folder, "text_encoder"), "conditioner.embedders.0.transformer."))
        out.update(openclip_to_original(read_component(folder, "text_encoder_2"), "conditioner.embedders.1.model."))
    else:
        out.update(clip_to_original(read_component(folder, "text_encoder"), "cond_stage_model.transformer."))
    return out


def real_shapes(out_dir):
    """Names, shapes and configs of real SD 1.5, SD 2.1-v and SDXL checkpoints, on the meta device."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    sd_unet = dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8,
                   block_out_channels=[320, 640, 1280, 1280], layers_per_block=2,
                   down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                   up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3)
    sd2_unet = dict(sd_unet, sample_size=96, cross_attention_dim=1024, attention_head_dim=[5, 10, 20, 20],
                    use_linear_projection=True, upcast_attention=True)
    sdxl_unet = dict(sample_size=128, cross_attention_dim=2048, attention_head_dim=[5, 10, 20],
                     block_out_channels=[320, 640, 1280], layers_per_block=2, use_linear_projection=True,
                     transformer_layers_per_block=[1, 2, 10], addition_embed_type="text_time",
                     addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
                     down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                     up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"])
    vae = dict(block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=4,
               down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
               sample_size=512)
    clip_l = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                  projection_dim=768, hidden_act="quick_gelu", max_position_embeddings=77, vocab_size=49408)
    open_h = dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=23,
                  projection_dim=1024, hidden_act="gelu", max_position_embeddings=77, vocab_size=49408)
    big_g = dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32,
                 projection_dim=1280, hidden_act="gelu", max_position_embeddings=77, vocab_size=49408)
    models = {
        "sd15": (sd_unet, dict(vae, sample_size=512), [("clip", clip_l, "cond_stage_model.transformer.")]),
        "sd21-v": (sd2_unet, dict(vae, sample_size=768), [("openclip", open_h, "cond_stage_model.model.")]),
        "sdxl": (sdxl_unet, dict(vae, sample_size=1024, scaling_factor=0.13025),
                 [("clip", clip_l, "conditioner.embedders.0.transformer."),
                  ("openclip-projection", big_g, "conditioner.embedders.1.model.")]),
    }
    for name, (unet_cfg, vae_cfg, encoders) in models.items():
        shapes = {}
        configs = {}
        with torch.device("meta"):
            unet = UNet2DConditionModel(**unet_cfg)
            configs["unet"] = dict(unet.config)
            state = {k: np.empty(0) for k in unet.state_dict()}
            renamed = unet_to_original(state, unet_cfg["layers_per_block"])
            sizes = {k: list(v.shape) for k, v in unet.state_dict().items()}
            for (old, _), new in zip(state.items(), renamed):
                shapes[new] = sizes[old]
            v = AutoencoderKL(**vae_cfg)
            configs["vae"] = dict(v.config)
            vstate = v.state_dict()
            for old in vstate:
                new = "first_stage_model." + vae_name(old, 4)
                shape = list(vstate[old].shape)
                if ".mid.attn_1." in new and new.endswith(".weight") and len(shape) == 2:
                    shape += [1, 1]
                shapes[new] = shape
            for slot, (kind, cfg, prefix) in enumerate(encoders):
                model_class = CLIPTextModelWithProjection if kind == "openclip-projection" else CLIPTextModel
                text = model_class(CLIPTextConfig(**cfg))
                configs[f"text_encoder{'' if slot == 0 else '_2'}"] = {
                    k: cfg[k] for k in sorted(cfg)}
                # transformers 5 names CLIPTextModel's state without `text_model.` (its
                # saved files still have it); the checkpoints have it.
                tstate = {(k if k.startswith(("text_model.", "text_projection")) else "text_model." + k):
                          np.zeros(tuple(t.shape), dtype=np.int8) for k, t in text.state_dict().items()}
                if kind == "clip":
                    converted = clip_to_original(tstate, prefix)
                else:
                    pad = 1 if name == "sd21-v" else 0
                    converted = openclip_to_original(tstate, prefix, pad_layers=pad)
                for k, value in converted.items():
                    shapes[k] = list(value.shape)
        configs["unet"] = {k: v for k, v in configs["unet"].items() if not k.startswith("_")}
        configs["vae"] = {k: v for k, v in configs["vae"].items() if not k.startswith("_")}
        (out_dir / f"{name}.json").write_text(json.dumps({"shapes": shapes, "configs": configs},
                                                          indent=0, sort_keys=True, default=list))


def main():
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "fixtures")
    out = root / "single-file"
    out.mkdir(exist_ok=True)
    for model in ["tiny-sd", "tiny-sdxl"]:
        tensors = convert_folder(root / "models" / model)
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, out / f"{model}.safetensors")
        (out / f"{model}.json").write_text(json.dumps({"base": f"../models/{model}"}, indent=2) + "\n")
    shapes = out / "real-shapes"
    shapes.mkdir(exist_ok=True)
    real_shapes(shapes)


if __name__ == "__main__":
    main()
