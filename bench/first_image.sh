#!/usr/bin/env bash
# Time to the first image: one process from its start to the picture written, what a CLI user
# feels and what a server pays when it loads a model on demand. `seedbed generate` against a
# Python script doing the same with diffusers (import, load, one text-to-image call at guidance
# 0 with the folder's scheduler, PNG written), the same thread count, best of two runs taken
# alternately. Results go in bench/RESULTS.md.
#
#   bash bench/first_image.sh [--cold] [MODEL_DIR]
#     default target/sd-turbo-shaped (512x512, 1 step); target/sdxl-shaped (SDXL-Turbo-shaped, 1 step,
#     e.g. SIZE=1024) and other folders as compare_diffusers.sh.
#     Warm (default): one untimed run of each first, so the weights, the binary and Python's
#     imports are in the page cache. --cold: the model's files are evicted from the page cache
#     before every run (the binary and Python's imports stay cached).
# Environment: MODEL, THREADS (default: all cores), SIZE (512), STEPS, PYTHON, ISA (as
#              compare_diffusers.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
cold=0
if [ "${1:-}" = --cold ]; then
  cold=1
  shift
fi
model=${1:-${MODEL:-target/sd-turbo-shaped}}
size=${SIZE:-512}
. bench/setup.sh
# `seedbed generate` reads a models folder: one holding only this model.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
ln -s "$(realpath "$model")" "$work/model"
prompt="a photograph of an astronaut riding a horse"

evict() {
  "$python" - "$model" <<'PY'
import os, sys
for root, _, files in os.walk(sys.argv[1], followlinks=True):
    for name in files:
        fd = os.open(os.path.join(root, name), os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
PY
}
diffusers() {
  "$python" bench/diffusers_first_image.py "$model" "$work/diffusers.png" --size "$size" \
    --steps "$steps" --threads "$threads" --prompt "$prompt" 2>/dev/null
}
ours() {
  "$seedbed" generate "$prompt" --models-dir "$work" --model model --size "${size}x${size}" \
    --steps "$steps" --guidance 0 --seed 1 --output "$work/seedbed.png" --force >/dev/null 2>&1
}
# Seconds one run of "$1" takes, from process start to exit (the file is written before exit).
timed() {
  [ "$cold" = 1 ] && evict
  local start end
  start=$(date +%s.%N)
  "$1"
  end=$(date +%s.%N)
  awk "BEGIN { print $end - $start }"
}

if [ "$cold" = 0 ]; then
  echo "warming the page cache..." >&2
  diffusers
  ours
fi
best_theirs="" best_ours=""
for run in 1 2; do
  theirs=$(timed diffusers)
  ours_s=$(timed ours)
  echo "run $run: diffusers ${theirs}s, seedbed ${ours_s}s" >&2
  best_theirs=$(printf '%s\n' $theirs $best_theirs | sort -g | head -n 1)
  best_ours=$(printf '%s\n' $ours_s $best_ours | sort -g | head -n 1)
done
mode=$([ "$cold" = 1 ] && echo cold || echo warm)
printf 'time to first image (%s, %s threads, %sx%s, %s step(s)): diffusers %.1fs, seedbed %.1fs, ratio %.2f\n' \
  "$mode" "$threads" "$size" "$size" "$steps" "$best_theirs" "$best_ours" "$(awk "BEGIN { print $best_ours / $best_theirs }")"
