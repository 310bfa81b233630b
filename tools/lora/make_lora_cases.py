# Tiny LoRA files for the tiny SD/SDXL fixtures, made with the reference tooling (peft + diffusers), and
# reference outputs of diffusers' own `load_lora_weights` + `fuse_lora(lora_scale=...)` at two scales.
#
#   python tools/lora/make_lora_cases.py fixtures [sd|flux|all]
#
# writes fixtures/loras/*.safetensors and fixtures/cases-lora/{cases.json,<case>.safetensors}. A case has the
# fields of fixtures/cases (fixtures/README.md) plus `loras`: [{"file": NAME, "scale": S}], and the same
# tensors: initial latents, token ids, prompt embeddings (with the LoRA's text encoder layers), the lone UNet
# probe, final latents and the image, so each stage the LoRA changes is compared where it happens.
# `flux` adds a PEFT LoRA on tiny-flux-dev's transformer (fixtures/loras/tiny-flux-dev-peft.safetensors) and its
# cases in fixtures/cases-lora-dit, in the DiT case format, made by tools/dit/make_dit_cases.py's own run_case
# with the LoRA loaded and fused into the pipeline first.
import json, os, sys, torch, numpy as np
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline, DDIMScheduler, EulerDiscreteScheduler
from peft import LoraConfig, inject_adapter_in_model
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file, load_file
torch.set_num_threads(2)
FIX = sys.argv[1]
LORAS, CASES = os.path.join(FIX, "loras"), os.path.join(FIX, "cases-lora")
os.makedirs(LORAS, exist_ok=True); os.makedirs(CASES, exist_ok=True)
MODEL = {"tiny-sd": StableDiffusionPipeline, "tiny-sdxl": StableDiffusionXLPipeline}
SCHED = {"ddim": DDIMScheduler, "euler": EulerDiscreteScheduler}
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]

def load(model):
    pipe = MODEL[model].from_pretrained(os.path.join(FIX, "models", model))
    pipe.set_progress_bar_config(disable=True)
    return pipe

def randomize(module, seed, std):
    # peft starts B at zero (a LoRA that changes nothing); give both matrices small random values so the
    # change is visible at every stage but keeps the tiny model in its range.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * std)

def make_peft(model, name, seed, rank=4, alpha=8):
    """A PEFT LoRA on the UNet and every text encoder, saved as diffusers saves it (with its alpha in the
    header's adapter metadata)."""
    pipe = load(model)
    unet_cfg = LoraConfig(r=rank, lora_alpha=alpha, target_modules=UNET_TARGETS, init_lora_weights=False)
    text_cfg = LoraConfig(r=rank, lora_alpha=alpha, target_modules=TEXT_TARGETS, init_lora_weights=False)
    pipe.unet.add_adapter(unet_cfg); randomize(pipe.unet, seed, 0.1)
    encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if model == "tiny-sdxl" else [])
    for i, te in enumerate(encoders):
        # peft's own injection: transformers' `add_adapter` wants a newer peft than the registry has.
        inject_adapter_in_model(text_cfg, te); randomize(te, seed + 1 + i, 0.1)
    kw = dict(unet_lora_layers=get_peft_model_state_dict(pipe.unet),
              text_encoder_lora_layers=get_peft_model_state_dict(pipe.text_encoder),
              unet_lora_adapter_metadata=unet_cfg.to_dict(), text_encoder_lora_adapter_metadata=text_cfg.to_dict())
    if model == "tiny-sdxl":
        kw.update(text_encoder_2_lora_layers=get_peft_model_state_dict(pipe.text_encoder_2),
                  text_encoder_2_lora_adapter_metadata=text_cfg.to_dict())
    type(pipe).save_lora_weights(LORAS, weight_name=name, **kw)

def kohya_from_peft(src, dst, alpha):
    """The same LoRA renamed the way kohya's sd-scripts name SD 1.x modules: `lora_unet_` / `lora_te_`, the
    diffusers module path with `_` for `.`, `lora_down`/`lora_up`, and a scalar `.alpha` per module (here not
    the PEFT file's, so that the alpha/rank factor is exercised)."""
    out = {}
    for key, t in load_file(os.path.join(LORAS, src)).items():
        component, rest = key.split(".", 1)
        module, which = rest.rsplit(".lora_", 1)
        prefix = {"unet": "lora_unet_", "text_encoder": "lora_te_"}[component]
        # kohya names CLIP's layers from the `transformers` 4 module tree, under `text_model.`.
        if component == "text_encoder" and not module.startswith("text_model."):
            module = "text_model." + module
        kohya = prefix + module.replace(".", "_")
        out[kohya + (".lora_down.weight" if which.startswith("A") else ".lora_up.weight")] = t
        out[kohya + ".alpha"] = torch.tensor(float(alpha))
    save_file(out, os.path.join(LORAS, dst), metadata={"ss_network_module": "networks.lora"})

def run_case(c):
    pipe = load(c["model"])
    for i, l in enumerate(c["loras"]):
        pipe.load_lora_weights(LORAS, weight_name=l["file"], adapter_name=f"a{i}")
    pipe.set_adapters([f"a{i}" for i in range(len(c["loras"]))], adapter_weights=[l["scale"] for l in c["loras"]])
    pipe.fuse_lora(adapter_names=[f"a{i}" for i in range(len(c["loras"]))])
    pipe.scheduler = SCHED[c["scheduler"]].from_config(pipe.scheduler.config, **c.get("scheduler_config", {}))
    sdxl, cfg = c["model"] == "tiny-sdxl", c["guidance_scale"] > 1
    h, w = c["height"], c["width"]
    g = torch.Generator().manual_seed(c["seed"])
    lat0 = torch.randn(1, 4, h // 8, w // 8, generator=g)
    t = {"initial_latents": lat0}
    t["prompt_token_ids"] = pipe.tokenizer(c["prompt"], padding="max_length", max_length=77, truncation=True,
                                           return_tensors="pt").input_ids.to(torch.int64)
    with torch.no_grad():
        if sdxl:
            pe, npe, ppe, nppe = pipe.encode_prompt(c["prompt"], do_classifier_free_guidance=cfg, negative_prompt=c.get("negative_prompt"))
            t.update(prompt_embeds=pe, pooled_prompt_embeds=ppe)
            if cfg: t.update(negative_prompt_embeds=npe, negative_pooled_prompt_embeds=nppe)
        else:
            pe, npe = pipe.encode_prompt(c["prompt"], "cpu", 1, cfg, negative_prompt=c.get("negative_prompt"))
            t.update(prompt_embeds=pe)
            if cfg: t.update(negative_prompt_embeds=npe)
    kw = dict(prompt=c["prompt"], negative_prompt=c.get("negative_prompt"), num_inference_steps=c["steps"],
              guidance_scale=c["guidance_scale"], height=h, width=w)
    lat = pipe(latents=lat0 * pipe.scheduler.init_noise_sigma, output_type="latent", **kw).images
    with torch.no_grad():
        img = pipe.vae.decode(lat / pipe.vae.config.scaling_factor).sample
    t["final_latents"] = lat
    t["image"] = (img / 2 + 0.5).clamp(0, 1)[0].permute(1, 2, 0)
    g = torch.Generator().manual_seed(c["seed"] + 1000)
    probe_lat = torch.randn(1, 4, h // 8, w // 8, generator=g)
    probe_t = torch.tensor([500], dtype=torch.int64)
    with torch.no_grad():
        cond = {}
        if sdxl:
            cond["added_cond_kwargs"] = {"text_embeds": t["pooled_prompt_embeds"],
                                         "time_ids": torch.tensor([[h, w, 0, 0, h, w]], dtype=torch.float32)}
        t["probe_eps"] = pipe.unet(probe_lat, probe_t, encoder_hidden_states=t["prompt_embeds"], **cond).sample
    t["probe_latents"] = probe_lat
    out = {k: v.contiguous().float() for k, v in t.items()}
    out["prompt_token_ids"] = t["prompt_token_ids"]; out["probe_timestep"] = probe_t
    save_file(out, os.path.join(CASES, c["name"] + ".safetensors"))
    # How far the LoRA moved the picture from the base model's (a LoRA that changes nothing proves nothing).
    base = load(c["model"]); base.scheduler = SCHED[c["scheduler"]].from_config(base.scheduler.config, **c.get("scheduler_config", {}))
    blat = base(latents=lat0 * base.scheduler.init_noise_sigma, output_type="latent", **kw).images
    return (lat - blat).abs().max().item()

SD = dict(model="tiny-sd", prompt="a photograph of an astronaut riding a horse", negative_prompt="blurry", seed=7,
          height=64, width=64, steps=4, guidance_scale=7.5, scheduler="ddim")
SDXL = dict(model="tiny-sdxl", prompt="a cinematic photo of a lighthouse", seed=9, height=64, width=64, steps=2,
            guidance_scale=0.0, scheduler="euler", scheduler_config={"timestep_spacing": "trailing"})
CASE_LIST = [
    dict(name="sd-lora-peft-1", loras=[{"file": "tiny-sd-peft.safetensors", "scale": 1.0}], **SD),
    dict(name="sd-lora-peft-0.5", loras=[{"file": "tiny-sd-peft.safetensors", "scale": 0.5}], **SD),
    dict(name="sd-lora-kohya-0.8", loras=[{"file": "tiny-sd-kohya.safetensors", "scale": 0.8}], **SD),
    dict(name="sdxl-lora-peft-1", loras=[{"file": "tiny-sdxl-peft.safetensors", "scale": 1.0}], **SDXL),
    dict(name="sdxl-lora-peft-0.6", loras=[{"file": "tiny-sdxl-peft.safetensors", "scale": 0.6}], **SDXL),
]

FLUX_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
                "proj_mlp", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2"]
FLUX_CASE = dict(model="tiny-flux-dev", prompt="a cinematic photo of a lighthouse at dusk", seed=3, height=64,
                 width=64, steps=4, guidance_scale=3.5, max_sequence_length=512, scheduler="flow_euler",
                 tolerance={"tensors_rel": 0.001, "image_abs": 0.004})

def flux_cases():
    from diffusers import FluxPipeline
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "dit"))
    import make_dit_cases
    models = os.path.join(FIX, "models-dit")
    pipe = FluxPipeline.from_pretrained(os.path.join(models, "tiny-flux-dev"))
    cfg = LoraConfig(r=4, lora_alpha=4, target_modules=FLUX_TARGETS, init_lora_weights=False)
    pipe.transformer.add_adapter(cfg); randomize(pipe.transformer, 41, 0.1)
    FluxPipeline.save_lora_weights(LORAS, weight_name="tiny-flux-dev-peft.safetensors",
                                   transformer_lora_layers=get_peft_model_state_dict(pipe.transformer),
                                   transformer_lora_adapter_metadata=cfg.to_dict())
    out_dir = os.path.join(FIX, "cases-lora-dit"); os.makedirs(out_dir, exist_ok=True)
    cases = [dict(name="flux-dev-lora-peft-1", loras=[{"file": "tiny-flux-dev-peft.safetensors", "scale": 1.0}], **FLUX_CASE),
             dict(name="flux-dev-lora-peft-0.5", loras=[{"file": "tiny-flux-dev-peft.safetensors", "scale": 0.5}], **FLUX_CASE)]
    for c in cases:
        def tweak(pipe, c, kw):
            pipe.load_lora_weights(LORAS, weight_name=c["loras"][0]["file"], adapter_name="a")
            pipe.fuse_lora(lora_scale=c["loras"][0]["scale"], adapter_names=["a"])
        t = make_dit_cases.run_case(c, models, tweak=tweak)
        base = make_dit_cases.run_case(c, models)
        save_file(t, os.path.join(out_dir, c["name"] + ".safetensors"))
        print(c["name"], "final latents moved by", (t["final_latents"] - base["final_latents"]).abs().max().item())
    json.dump(cases, open(os.path.join(out_dir, "cases.json"), "w"), indent=1)

if __name__ == "__main__":
    if (sys.argv[2] if len(sys.argv) > 2 else "all") == "flux":
        flux_cases(); sys.exit(0)
    make_peft("tiny-sd", "tiny-sd-peft.safetensors", seed=21)
    kohya_from_peft("tiny-sd-peft.safetensors", "tiny-sd-kohya.safetensors", alpha=2.0)
    make_peft("tiny-sdxl", "tiny-sdxl-peft.safetensors", seed=31)
    for c in CASE_LIST:
        moved = run_case(c)
        print(c["name"], "final latents moved by", round(moved, 4))
    # The Kohya file's text encoder half must have been read by diffusers too: its prompt embeddings differ
    # from the base model's.
    base = load("tiny-sd")
    with torch.no_grad():
        pe, _ = base.encode_prompt(SD["prompt"], "cpu", 1, False)
    kohya = load_file(os.path.join(CASES, "sd-lora-kohya-0.8.safetensors"))["prompt_embeds"]
    assert (kohya - pe).abs().max() > 1e-3, "diffusers ignored the Kohya file's text encoder LoRA"
    print("kohya text encoder moved prompt embeddings by", (kohya - pe).abs().max().item())
    if (sys.argv[2] if len(sys.argv) > 2 else "all") == "all":
        flux_cases()
    json.dump(CASE_LIST, open(os.path.join(CASES, "cases.json"), "w"), indent=1)
