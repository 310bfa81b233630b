#!/usr/bin/env bash
# Time diffusers and seedbed on the same model with random weights at real layer sizes, same threads,
# and print the ratios. Results go in bench/RESULTS.md.
#
#   bash bench/compare_diffusers.sh [MODEL_DIR]
#     default target/sd-turbo-shaped (SD-Turbo-shaped, 512x512, 1 step);
#     target/sdxl-shaped (or any folder whose name contains sdxl): SDXL-Turbo-shaped at full size
#     (bench/make_sdxl_shaped.py), 1 step at guidance 0, e.g. SIZE=1024;
#     target/flux-shaped, target/zimage-shaped, target/sd3-shaped (or any folder whose name contains
#     flux, zimage or sd3): FLUX.1-schnell, Z-Image-Turbo or SD3.5-Large-Turbo shaped models at real
#     widths with fewer layers (bench/make_dit_shaped.py), run with their default steps (4, 9, 4) at
#     guidance 0. A missing folder is built first.
# Environment: MODEL (instead of the argument), THREADS (default: all cores), RUNS (3), SIZE (512),
#              STEPS (1 for SD and SDXL, 4 for FLUX and SD3, 9 for Z-Image), PYTHON (a python with torch + diffusers; default .venv-bench,
#              created if missing), DTYPE (f32; bf16 for SD and SDXL: text encoders and UNet in bf16 on
#              both sides, the VAE f32), ISA (native; avx2: both sides held to AVX2, see setup.sh).
#              FLUX runs with guidance 0 and T5 padded to 256 tokens.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-${MODEL:-target/sd-turbo-shaped}}
runs=${RUNS:-3}
dtype=${DTYPE:-f32}
size=${SIZE:-512}
. bench/setup.sh
echo "diffusers ($threads threads)..." >&2
theirs=$("$python" bench/diffusers_bench.py "$model" --width "$size" --height "$size" --steps "$steps" \
  --runs "$runs" --threads "$threads" --dtype "$dtype" 2>/dev/null | tail -n 1)
echo "seedbed ($threads threads)..." >&2
ours=$("$seedbed" bench "$model" --width "$size" --height "$size" --steps "$steps" --runs "$runs" \
  --dtype "$dtype" --json 2>/dev/null | tail -n 1)
python3 - "$theirs" "$ours" <<'PY'
import json, sys
theirs, ours = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"{'stage':<14}{'diffusers s':>12}{'seedbed s':>12}{'ratio':>8}")
for key in ["text_encode_s", "denoise_s", "vae_decode_s", "total_s"]:
    print(f"{key:<14}{theirs[key]:>12.3f}{ours[key]:>12.3f}{ours[key] / theirs[key]:>8.2f}")
print(f"seedbed peak RSS: {ours['peak_rss_bytes'] / 2**30:.2f} GiB; "
      f"load: seedbed {ours['load_s']:.1f}s (again, warm: {ours['load_warm_s']:.1f}s), "
      f"diffusers {theirs['load_s']:.1f}s")
PY
