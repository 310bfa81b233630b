#!/usr/bin/env bash
# Build seedbed with the `cuda` feature on a machine without a GPU or a CUDA toolkit, to prove
# that the GPU build compiles and links. Nothing here needs a GPU; running on one does.
#
#   bash bench/check_cuda_build.sh            (then: seedbed bench MODEL --device cuda)
#
# Where the pieces come from (about 1 GB, downloaded once):
# - NVIDIA's compiler, runtime and the libraries candle links (nvrtc, cuBLAS, cuRAND): PyPI's
#   nvidia-* wheels, into CUDA_VENV (default .venv-cuda);
# - libcuda.so, which only the GPU driver ships: Debian's non-free libcuda1 package, unpacked
#   into that venv (apt is pointed at its own lists there; the system's sources are untouched).
# Environment: COMPUTE_CAP (default 90, Hopper) for candle's kernels; CUDA_RELEASE (default
# 13.0), the compiler's and runtime's release: candle's kernels are PTX that the GPU's driver
# compiles when they load, and a driver refuses PTX from a newer toolkit than its own (the lent
# H100/H200 machines run driver 580, CUDA 13.0; their PyTorch links CUDA 13 libraries, which
# this binary then uses); CUDA_VERSION as cudarc spells it (default from CUDA_RELEASE, 13000;
# it picks the driver API surface; cudarc 0.19 knows releases up to 13040); TARGET_DIR (default target/cuda); PROFILE (default dev;
# `release` for a binary to benchmark with, also written stripped and xz-compressed to
# .cuda-carry/seedbed.xz, small enough to carry to a GPU machine without cargo).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${CUDA_VENV:-.venv-cuda}
[ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
# Absolute: apt runs below from inside the venv, and reads these paths from there.
venv=$(realpath "$venv")
release=${CUDA_RELEASE:-13.0}
"$venv/bin/pip" install -q --disable-pip-version-check "nvidia-cuda-nvcc==$release.*" \
  "nvidia-cuda-runtime==$release.*" "nvidia-cuda-cccl==$release.*" "nvidia-cuda-crt==$release.*" \
  "nvidia-cuda-nvrtc==$release.*" "nvidia-nvvm==$release.*" nvidia-cublas nvidia-curand
cuda=$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13"))')
"$cuda/bin/nvcc" --version | tail -n 2

driver="$venv/libcuda"
if [ ! -e "$driver/libcuda.so.1" ]; then
  apt="$venv/apt"
  mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$driver"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg]" \
    "http://deb.debian.org/debian bookworm non-free" >"$apt/sources.list"
  opts=(-o "Dir::Etc::SourceList=$apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" -o Debug::NoLocking=1
    -o APT::Sandbox::User=root)
  apt-get "${opts[@]}" update -qq
  (cd "$apt" && apt-get "${opts[@]}" download -qq libcuda1)
  dpkg-deb -x "$apt"/libcuda1_*.deb "$apt/root"
  cp -P "$apt"/root/usr/lib/x86_64-linux-gnu/nvidia/current/libcuda.so* "$driver/"
fi
# The linker looks for libNAME.so, the loader for the versioned name (libcuda.so.1, ...); the
# wheels ship only the latter. One folder with both serves -L and LD_LIBRARY_PATH.
links="$venv/link"
mkdir -p "$links"
for lib in "$driver/libcuda.so.1" "$cuda"/lib/lib{cudart,nvrtc,cublas,cublasLt,curand}.so.*; do
  name=$(basename "$lib")
  ln -sf "$(realpath "$lib")" "$links/$name"
  ln -sf "$(realpath "$lib")" "$links/${name%%.so.*}.so"
done

export PATH="$cuda/bin:$PATH" CUDA_HOME="$cuda" CUDA_PATH="$cuda" CUDA_ROOT="$cuda"
major=${release%%.*} minor=${release#*.}
export CUDA_COMPUTE_CAP=${COMPUTE_CAP:-90}
export CUDARC_CUDA_VERSION=${CUDA_VERSION:-$((major * 1000 + minor * 10))}
export CARGO_TARGET_DIR=${TARGET_DIR:-target/cuda} LIBRARY_PATH="$(realpath "$links")"
profile=${PROFILE:-dev}
cargo build --profile "$profile" -p seedbed --features cuda
dir=$([ "$profile" = dev ] && echo debug || echo "$profile")
out="$CARGO_TARGET_DIR/$dir/seedbed"
# The PTX ISA candle's kernels carry: a driver loads only the versions it knows.
ptx=$(find "$CARGO_TARGET_DIR/$dir/build" -path '*candle-kernels*' -name '*.ptx' | head -n 1)
[ -z "$ptx" ] || echo "candle's kernels: PTX $(grep -m1 -o '^\.version [0-9.]*' "$ptx")"

# candle links the CUDA libraries dynamically, so the binary needs them to start; without a
# GPU it must still run on CPU and refuse --device cuda with the driver's own reason.
export LD_LIBRARY_PATH="$(realpath "$links")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fixtures=fixtures/models
"$out" generate "a fox" --models-dir "$fixtures" --model tiny-sd -o "$CARGO_TARGET_DIR/cpu.png"
if "$out" generate "a fox" --models-dir "$fixtures" --model tiny-sd --device cuda \
  -o "$CARGO_TARGET_DIR/cuda.png" 2>"$CARGO_TARGET_DIR/cuda.err"; then
  echo "generated on the GPU: $CARGO_TARGET_DIR/cuda.png"
else
  grep -m1 'caused by' "$CARGO_TARGET_DIR/cuda.err" || head -n 3 "$CARGO_TARGET_DIR/cuda.err"
fi
echo "cuda build OK: $out (run it with LD_LIBRARY_PATH=$(realpath "$links"))"
if [ "$profile" != dev ]; then
  # For a GPU machine without cargo: no debug info, compressed (the release binary is over
  # 200 MB with its line tables).
  mkdir -p .cuda-carry
  strip -o .cuda-carry/seedbed "$out"
  xz -T0 -f .cuda-carry/seedbed
  echo "to carry: .cuda-carry/seedbed.xz, $(du -h .cuda-carry/seedbed.xz | cut -f1)"
fi
