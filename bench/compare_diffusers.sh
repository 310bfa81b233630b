#!/usr/bin/env bash
# Time diffusers and seedbed on the same SD-Turbo-shaped model (random weights, real layer
# sizes), same threads, 512x512, 1 step, and print the ratios. Results go in bench/RESULTS.md.
#
#   bash bench/compare_diffusers.sh [MODEL_DIR]   (default: target/sd-turbo-shaped, built if missing)
# Environment: THREADS (default: all cores), RUNS (3), SIZE (512), STEPS (1),
#              PYTHON (a python with torch + diffusers; default .venv-bench, created if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-target/sd-turbo-shaped}
threads=${THREADS:-$(nproc)}
runs=${RUNS:-3}
size=${SIZE:-512}
steps=${STEPS:-1}
python=${PYTHON:-.venv-bench/bin/python}
if [ ! -x "$python" ]; then
  python3 -m venv .venv-bench
  .venv-bench/bin/pip install -q torch diffusers transformers safetensors numpy
  python=.venv-bench/bin/python
fi
if [ ! -f "$model/model_index.json" ]; then
  "$python" bench/make_sd_turbo_shaped.py fixtures "$model"
fi
cargo build --release -q -p seedbed
export RAYON_NUM_THREADS=$threads OMP_NUM_THREADS=$threads
echo "diffusers ($threads threads)..." >&2
theirs=$("$python" bench/diffusers_bench.py "$model" --width "$size" --height "$size" --steps "$steps" \
  --runs "$runs" --threads "$threads" 2>/dev/null | tail -n 1)
echo "seedbed ($threads threads)..." >&2
ours=$(target/release/seedbed bench "$model" --width "$size" --height "$size" --steps "$steps" --runs "$runs" \
  --json 2>/dev/null | tail -n 1)
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
