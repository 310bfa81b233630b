#!/usr/bin/env bash
# The CUDA row of bench/RESULTS.md, run on a GPU machine that has PyTorch built for CUDA 13 but
# neither cargo nor diffusers (the lent H100/H200 machines): seedbed against diffusers, both in
# f16, SD-Turbo-shaped at 512x512 and SDXL-Turbo-shaped at 1024x1024 (the model folders are
# made there first, random weights at real widths).
#
# Where cargo is, first:
#   PROFILE=release bash bench/check_cuda_build.sh      (writes .cuda-carry/seedbed.xz)
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp -d .whl diffusers==0.42.1     (the machine has diffusers' own needs)
# Then on the GPU machine, with .cuda-carry and .whl carried into the checkout:
#   bash bench/cuda_row.sh
# Environment: PYTHON (python3), RUNS (3), ROUNDS (1), SIZES (which rows: "512 1024").
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if ls .whl/*.whl >/dev/null 2>&1; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/seedbed-site .whl/*.whl
  export PYTHONPATH=/tmp/seedbed-site${PYTHONPATH:+:$PYTHONPATH}
fi
bin=/tmp/seedbed-cuda/seedbed
mkdir -p "$(dirname "$bin")"
xz -dc .cuda-carry/seedbed.xz >"$bin"
chmod +x "$bin"
# The CUDA 13 libraries the binary links (cuBLAS, nvrtc, cuRAND, the runtime) from PyTorch's
# own nvidia-* wheels; libcuda comes with the driver.
libs=$("$python" - <<'PY'
import glob, os, nvidia
names = ("libcublas.so.", "libcublasLt.so.", "libnvrtc.so.", "libcurand.so.", "libcudart.so.")
dirs = {os.path.dirname(p) for root in nvidia.__path__
        for p in glob.glob(os.path.join(root, "**", "lib*.so.*"), recursive=True)
        if os.path.basename(p).startswith(names)}
print(":".join(sorted(dirs)))
PY
)
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
"$bin" --version
for size in ${SIZES:-512 1024}; do
  model=target/sd-turbo-shaped
  [ "$size" -le 512 ] || model=target/sdxl-shaped
  echo "== $model at ${size}x$size, f16, cuda"
  MODEL=$model SIZE=$size DEVICE=cuda DTYPE=f16 SEEDBED=$bin PYTHON=$python \
    RUNS=${RUNS:-3} ROUNDS=${ROUNDS:-1} bash bench/compare_diffusers.sh
done
