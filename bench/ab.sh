#!/usr/bin/env bash
# A/B of two seedbed binaries on one model, for a change whose gain is smaller than the machine's
# drift: on the shared 2-core machines of bench/RESULTS.md one binary's decode moves 10-20 % from
# minute to minute. Rounds of both, the order flipped every round (A B, B A, ...) so that a drift
# favours neither; every run of `seedbed bench` is kept and the min, median and max of each stage
# printed per binary. Compare the mins, and read a difference smaller than either side's spread
# as none.
#
#   bash bench/ab.sh OLD_BINARY NEW_BINARY [MODEL_DIR] [-- extra `seedbed bench` arguments]
#     e.g. bash bench/ab.sh /tmp/seedbed.old target/release/seedbed target/sdxl-shaped \
#            -- --width 1024 --height 1024
# Environment: ROUNDS (3), RUNS per `seedbed bench` call (4), after one warm-up run each.
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
# The binaries as given from the caller's directory; the model from the repository's, as the
# other scripts here take it.
old=$(realpath "$1")
new=$(realpath "$2")
shift 2
cd "$(dirname "$0")/.."
model=target/sd-turbo-shaped
if [ $# -gt 0 ] && [ "$1" != -- ]; then
  model=$1
  shift
fi
[ "${1:-}" = -- ] && shift
rounds=${ROUNDS:-3}
runs=${RUNS:-4}
log=$(mktemp)
trap 'rm -f "$log"' EXIT

one() {
  local name=$1 binary=$2
  shift 2
  "$binary" bench "$model" --runs "$runs" --warmup 1 "$@" 2>&1 | grep '^run' | sed "s/^/$name /" \
    >>"$log"
}
for round in $(seq "$rounds"); do
  if [ $((round % 2)) = 1 ]; then
    one old "$old" "$@"
    one new "$new" "$@"
  else
    one new "$new" "$@"
    one old "$old" "$@"
  fi
  echo "round $round of $rounds done" >&2
done

python3 - "$log" <<'PY'
import collections, re, sys
times = collections.defaultdict(lambda: collections.defaultdict(list))
for line in open(sys.argv[1]):
    name = line.split()[0]
    for stage, seconds in re.findall(r"(text|denoise|decode|total) ([0-9.]+)s", line):
        times[name][stage].append(float(seconds))
print(f"{'stage':8} {'binary':6} {'runs':>4} {'min':>8} {'median':>8} {'max':>8}")
for stage in ("text", "denoise", "decode", "total"):
    for name in ("old", "new"):
        values = sorted(times[name][stage])
        if values:
            print(f"{stage:8} {name:6} {len(values):4} {values[0]:8.3f} "
                  f"{values[len(values) // 2]:8.3f} {values[-1]:8.3f}")
PY
