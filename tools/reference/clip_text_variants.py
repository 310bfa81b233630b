"""Generates crates/engine/src/text/clip/testdata/: two tiny random CLIP text encoders in the
configurations the fixtures do not cover, with transformers' outputs for fixed ids.

  gelu-legacy-eos/  CLIPTextModelWithProjection, hidden_act "gelu" (exact erf), 3 layers,
                    eos_token_id 2 (the legacy argmax pooling), padded with id 0 like SD 2.x;
                    weights saved with the "text_model." prefix
  gelu-new-one-layer/  CLIPTextModel, hidden_act "gelu_new", 1 layer (so hidden_states[-2] is
                    the embedding output), eos_token_id = pad id; weights saved without prefix

Each folder holds config.json, model.safetensors and expected.safetensors (input_ids,
last_hidden_state, penultimate_hidden_state, pooled).

Run: .venv-ref/bin/python tools/reference/clip_text_variants.py
"""

import json
import os

import torch
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "..", "crates", "engine", "src", "text", "clip", "testdata")
VOCAB, BOS, EOS = 64, 62, 63


def ids(rows, pad, length=12):
    return torch.tensor([[BOS] + r + [EOS] + [pad] * (length - len(r) - 2) for r in rows])


def build(name, cls, config, input_ids, strip_prefix):
    torch.manual_seed(len(name))
    model = cls(config).eval()
    # Random init leaves biases and layer norms at 0/1; perturb every tensor so that each
    # one matters to the outputs.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
        out = model(input_ids, output_hidden_states=True)
    pooled = out.text_embeds if cls is CLIPTextModelWithProjection else out.pooler_output
    folder = os.path.join(OUT, name)
    os.makedirs(folder, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if "position_ids" not in k}
    if strip_prefix:
        state = {k.removeprefix("text_model."): v for k, v in state.items()}
    else:
        state = {k if k.startswith(("text_model.", "text_projection")) else "text_model." + k: v
                 for k, v in state.items()}
    save_file(state, os.path.join(folder, "model.safetensors"))
    config_dict = config.to_dict()
    config_dict["architectures"] = [cls.__name__]
    with open(os.path.join(folder, "config.json"), "w") as fh:
        json.dump({k: config_dict[k] for k in sorted(config_dict) if k in KEYS}, fh, indent=1)
    save_file({
        "input_ids": input_ids.to(torch.int64),
        "last_hidden_state": out.last_hidden_state.contiguous(),
        "penultimate_hidden_state": out.hidden_states[-2].contiguous(),
        "pooled": pooled.contiguous(),
    }, os.path.join(folder, "expected.safetensors"))
    print(name, sorted(state)[:3], pooled.shape)


KEYS = {"architectures", "vocab_size", "hidden_size", "intermediate_size", "projection_dim",
        "num_hidden_layers", "num_attention_heads", "max_position_embeddings", "hidden_act",
        "layer_norm_eps", "eos_token_id", "bos_token_id", "pad_token_id"}

build(
    "gelu-legacy-eos",
    CLIPTextModelWithProjection,
    CLIPTextConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=24, projection_dim=8,
                   num_hidden_layers=3, num_attention_heads=2, max_position_embeddings=12,
                   hidden_act="gelu", layer_norm_eps=1e-6, bos_token_id=BOS, eos_token_id=2,
                   pad_token_id=0),
    ids([[5, 9, 33, 7], [12, 61, 40, 3, 3, 20, 8]], pad=0),
    strip_prefix=False,
)
build(
    "gelu-new-one-layer",
    CLIPTextModel,
    CLIPTextConfig(vocab_size=VOCAB, hidden_size=12, intermediate_size=20, projection_dim=12,
                   num_hidden_layers=1, num_attention_heads=3, max_position_embeddings=16,
                   hidden_act="gelu_new", layer_norm_eps=1e-5, bos_token_id=BOS, eos_token_id=EOS,
                   pad_token_id=EOS),
    ids([[4, 50, 1], [30]], pad=EOS, length=10),
    strip_prefix=True,
)
