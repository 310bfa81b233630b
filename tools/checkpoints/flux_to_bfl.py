# A diffusers FluxTransformer2DModel folder written as one single-file checkpoint in BFL's original layout (the names
# of black-forest-labs/flux and of the files people download: double_blocks.N.img_attn.qkv, single_blocks.N.linear1,
# final_layer.adaLN_modulation.1, ...). It is the reference the engine's `flux-bfl` layout is checked against, so it is
# written from diffusers' own conversion (convert_flux_transformer_checkpoint_to_diffusers, run backwards), with numpy
# and safetensors, and shares nothing with the Rust mapping. Tensors keep their dtype (bf16 goes through torch).
# usage: flux_to_bfl.py TRANSFORMER_DIR OUT.safetensors [--prefix model.diffusion_model.]
import argparse, json, os, sys
import numpy as np
from safetensors.numpy import save_file
sys.dont_write_bytecode = True


def load_folder(folder):
    """Every tensor of the folder's (possibly sharded) diffusers weights, as numpy arrays, and whether they were bf16
    (numpy has no bfloat16: those travel as their int16 bits, read and written back through torch)."""
    from safetensors import safe_open
    index = os.path.join(folder, "diffusion_pytorch_model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["diffusion_pytorch_model.safetensors"]
    tensors, bf16 = {}, False
    for name in files:
        path = os.path.join(folder, name)
        try:
            with safe_open(path, framework="numpy") as f:
                tensors.update({key: f.get_tensor(key) for key in f.keys()})
        except TypeError:  # bf16
            import torch
            bf16 = True
            with safe_open(path, framework="pt") as f:
                tensors.update({key: f.get_tensor(key).view(torch.int16).numpy() for key in f.keys()})
    return tensors, bf16


def to_bfl(sd, num_layers, num_single_layers):
    """diffusers names -> BFL names (the inverse of diffusers' single-file conversion)."""
    out = {}

    def take(name):
        return sd.pop(name)

    def pair(bfl, diffusers):
        out[f"{bfl}.weight"] = take(f"{diffusers}.weight")
        out[f"{bfl}.bias"] = take(f"{diffusers}.bias")

    for bfl, d in [("time_in", "timestep_embedder"), ("vector_in", "text_embedder"), ("guidance_in", "guidance_embedder")]:
        if f"time_text_embed.{d}.linear_1.weight" in sd:
            pair(f"{bfl}.in_layer", f"time_text_embed.{d}.linear_1")
            pair(f"{bfl}.out_layer", f"time_text_embed.{d}.linear_2")
    pair("txt_in", "context_embedder")
    pair("img_in", "x_embedder")

    cat = lambda parts: np.concatenate(parts, axis=0)
    for i in range(num_layers):
        b, d = f"double_blocks.{i}", f"transformer_blocks.{i}"
        pair(f"{b}.img_mod.lin", f"{d}.norm1.linear")
        pair(f"{b}.txt_mod.lin", f"{d}.norm1_context.linear")
        for stream, names in [("img", ["to_q", "to_k", "to_v"]), ("txt", ["add_q_proj", "add_k_proj", "add_v_proj"])]:
            for kind in ["weight", "bias"]:
                out[f"{b}.{stream}_attn.qkv.{kind}"] = cat([take(f"{d}.attn.{n}.{kind}") for n in names])
        out[f"{b}.img_attn.norm.query_norm.scale"] = take(f"{d}.attn.norm_q.weight")
        out[f"{b}.img_attn.norm.key_norm.scale"] = take(f"{d}.attn.norm_k.weight")
        out[f"{b}.txt_attn.norm.query_norm.scale"] = take(f"{d}.attn.norm_added_q.weight")
        out[f"{b}.txt_attn.norm.key_norm.scale"] = take(f"{d}.attn.norm_added_k.weight")
        pair(f"{b}.img_mlp.0", f"{d}.ff.net.0.proj")
        pair(f"{b}.img_mlp.2", f"{d}.ff.net.2")
        pair(f"{b}.txt_mlp.0", f"{d}.ff_context.net.0.proj")
        pair(f"{b}.txt_mlp.2", f"{d}.ff_context.net.2")
        pair(f"{b}.img_attn.proj", f"{d}.attn.to_out.0")
        pair(f"{b}.txt_attn.proj", f"{d}.attn.to_add_out")
    for i in range(num_single_layers):
        b, d = f"single_blocks.{i}", f"single_transformer_blocks.{i}"
        pair(f"{b}.modulation.lin", f"{d}.norm.linear")
        for kind in ["weight", "bias"]:
            out[f"{b}.linear1.{kind}"] = cat([take(f"{d}.{n}.{kind}") for n in ["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"]])
        out[f"{b}.norm.query_norm.scale"] = take(f"{d}.attn.norm_q.weight")
        out[f"{b}.norm.key_norm.scale"] = take(f"{d}.attn.norm_k.weight")
        pair(f"{b}.linear2", f"{d}.proj_out")
    pair("final_layer.linear", "proj_out")
    # diffusers' AdaLayerNormContinuous splits (scale, shift); BFL's final layer (shift, scale).
    for kind in ["weight", "bias"]:
        scale, shift = np.split(take(f"norm_out.linear.{kind}"), 2, axis=0)
        out[f"final_layer.adaLN_modulation.1.{kind}"] = cat([shift, scale])
    if sd:
        raise SystemExit(f"unmapped diffusers tensors: {sorted(sd)}")
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("transformer_dir")
    p.add_argument("out")
    p.add_argument("--prefix", default="", help="e.g. model.diffusion_model. as some files carry")
    a = p.parse_args()
    with open(os.path.join(a.transformer_dir, "config.json")) as f:
        config = json.load(f)
    arrays, bf16 = load_folder(a.transformer_dir)
    bfl = to_bfl(arrays, config["num_layers"], config["num_single_layers"])
    bfl = {a.prefix + k: np.ascontiguousarray(v) for k, v in bfl.items()}
    if bf16:
        import torch
        from safetensors.torch import save_file as save_torch
        save_torch({k: torch.from_numpy(v).view(torch.bfloat16) for k, v in bfl.items()}, a.out)
    else:
        save_file(bfl, a.out)
    print(f"{a.out}: {len(bfl)} tensors, {sum(v.nbytes for v in bfl.values())} bytes")


if __name__ == "__main__":
    main()
