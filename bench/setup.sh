# Sourced by the comparison scripts here: the Python with torch and diffusers, the model folder
# (built if missing) and the release binary. Sets `python`, `model`, `threads` and `steps`
# from the environment (PYTHON, MODEL, THREADS, STEPS) and the scripts' first argument.
python=${PYTHON:-.venv-bench/bin/python}
if [ ! -x "$python" ]; then
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
cargo build --release -q -p seedbed
export RAYON_NUM_THREADS=$threads OMP_NUM_THREADS=$threads
