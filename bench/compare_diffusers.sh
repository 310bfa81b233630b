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
#              created if missing), DTYPE (f32; bf16, or f16 for SD and SDXL: text encoders and UNet or
#              transformer in that dtype on both sides, the VAE f32), ISA (native; avx2: both sides held to AVX2, see setup.sh).
#              FLUX runs with guidance 0 and T5 padded to 256 tokens.
#              DEVICE (cpu; cuda: both sides on the GPU, SD and SDXL, with DTYPE=f16 for the CUDA
#              row, SEEDBED=a cuda build; see bench/RESULTS.md's header), SEEDBED (a binary to run
#              as it is instead of building one).
#              ROUNDS (1): rounds of both sides, the order flipped every round (diffusers first in
#              odd ones), for machines whose speed drifts from minute to minute (bench/RESULTS.md:
#              one binary's stage 30 % apart in two runs): each side's fastest round per stage is
#              compared, and every round's times printed with it.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-${MODEL:-target/sd-turbo-shaped}}
runs=${RUNS:-3}
dtype=${DTYPE:-f32}
device=${DEVICE:-cpu}
size=${SIZE:-512}
. bench/setup.sh
rounds=${ROUNDS:-1}
theirs=()
ours=()
run_diffusers() {
  echo "diffusers ($threads threads)..." >&2
  theirs+=("$("$python" bench/diffusers_bench.py "$model" --width "$size" --height "$size" \
    --steps "$steps" --runs "$runs" --threads "$threads" --dtype "$dtype" --device "$device" \
    2>/dev/null | tail -n 1)")
}
run_seedbed() {
  echo "seedbed ($threads threads)..." >&2
  ours+=("$("$seedbed" bench "$model" --width "$size" --height "$size" --steps "$steps" \
    --runs "$runs" --dtype "$dtype" --device "$device" --json 2>/dev/null | tail -n 1)")
}
for round in $(seq "$rounds"); do
  if [ $((round % 2)) = 1 ]; then
    run_diffusers
    run_seedbed
  else
    run_seedbed
    run_diffusers
  fi
done
python3 - "${#theirs[@]}" "${theirs[@]}" "${ours[@]}" <<'PY'
import json, sys
count = int(sys.argv[1])
theirs = [json.loads(line) for line in sys.argv[2:2 + count]]
ours = [json.loads(line) for line in sys.argv[2 + count:]]
print(f"{'stage':<14}{'diffusers s':>12}{'seedbed s':>12}{'ratio':>8}")
for key in ["text_encode_s", "denoise_s", "vae_decode_s", "total_s"]:
    best_theirs, best_ours = min(r[key] for r in theirs), min(r[key] for r in ours)
    line = f"{key:<14}{best_theirs:>12.3f}{best_ours:>12.3f}{best_ours / best_theirs:>8.2f}"
    if count > 1:
        each = lambda rounds: "/".join(f"{r[key]:.3f}" for r in rounds)
        line += f"   rounds: diffusers {each(theirs)}, seedbed {each(ours)}"
    print(line)
peak = max(r["peak_rss_bytes"] for r in ours)
print(f"seedbed peak RSS: {peak / 2**30:.2f} GiB; "
      f"load: seedbed {ours[0]['load_s']:.1f}s (again, warm: {ours[0]['load_warm_s']:.1f}s), "
      f"diffusers {theirs[0]['load_s']:.1f}s")
PY
