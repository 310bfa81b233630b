# Sourced by the comparison scripts here: the Python with torch and diffusers, the model folder
# (built if missing) and the release binary. Sets `python`, `model`, `threads`, `steps` and
# `seedbed` (the binary) from the environment (PYTHON, MODEL, THREADS, STEPS, ISA, SEEDBED) and
# the scripts' first argument.
#
# SEEDBED names a binary to run as it is, built elsewhere: a `cuda` build
# (`PROFILE=release bash bench/check_cuda_build.sh`) carried to a GPU machine without cargo.
#
# ISA=avx2 measures an AVX2-only CPU's row on an AVX-512 machine: seedbed built without its
# `avx512` feature (target/avx2, the paths runtime detection takes on such a CPU, gemm's
# included), PyTorch held to AVX2 in ATen, oneDNN and MKL by their own switches.
# A name on PATH (PYTHON=python3, a GPU machine's own) or a path.
python=$(command -v "${PYTHON:-.venv-bench/bin/python}" || true)
if [ -z "$python" ]; then
  python3 -m venv .venv-bench
  .venv-bench/bin/pip install -q torch diffusers transformers safetensors numpy sentencepiece protobuf
  python=.venv-bench/bin/python
fi
model=${model:-${MODEL:-target/sd-turbo-shaped}}
threads=${THREADS:-$(nproc)}
if [ ! -f "$model/model_index.json" ]; then
  case "$(basename "$model")" in
    *flux*) "$python" bench/make_dit_shaped.py flux "$model" ;;
    *zimage*) "$python" bench/make_dit_shaped.py zimage "$model" ;;
    *sd3*) "$python" bench/make_dit_shaped.py sd3 "$model" ;;
    *sdxl*) "$python" bench/make_sdxl_shaped.py fixtures "$model" ;;
    *) "$python" bench/make_sd_turbo_shaped.py fixtures "$model" ;;
  esac
fi
case "$(grep -o '"_class_name": *"[A-Za-z0-9]*"' "$model/model_index.json")" in
  *'"FluxPipeline"'|*'"StableDiffusion3Pipeline"') steps=${STEPS:-4} ;;
  *'"ZImagePipeline"') steps=${STEPS:-9} ;;
  *) steps=${STEPS:-1} ;;  # StableDiffusionPipeline, StableDiffusionXLPipeline (SD-Turbo, SDXL-Turbo)
esac
case "${SEEDBED:+given}${ISA:-native}" in
  given*)
    seedbed=$SEEDBED ;;
  native)
    cargo build --release -q -p seedbed
    seedbed=target/release/seedbed ;;
  avx2)
    CARGO_TARGET_DIR=target/avx2 cargo build --release -q -p seedbed --no-default-features
    seedbed=target/avx2/release/seedbed
    export ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 DNNL_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 ;;
  *) echo "ISA must be native or avx2, not $ISA" >&2; exit 2 ;;
esac
export RAYON_NUM_THREADS=$threads OMP_NUM_THREADS=$threads
