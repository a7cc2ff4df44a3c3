#!/bin/sh
# The data-size curves' cost, measured in one run: one comparison of the demo tasks, then
# the same comparison with --data-fractions (the full data and the smaller shares), one
# after the other on this machine; prints both wall times and their ratio (the target:
# three sizes in at most twice one comparison's time).
# Usage: scripts/bench-sizes.sh BIN MODELS_DIR [compare flags...]
#   FRACTIONS (default 0.25,0.5,1), BUDGET (16000), OUT (target/bench-sizes)
set -eu
bin=$1 models=$2 bench=bench-sizes
shift 2
fractions=${FRACTIONS:-0.25,0.5,1}
. "$(dirname "$0")/bench-compare.sh"
baseline "$@"
sizes=$(run sizes --data-fractions "$fractions" "$@")
printf 'with --data-fractions %s: %.0f s\n' "$fractions" "$sizes"
printf 'ratio: %.2f (target: at most 2)\n' "$(awk "BEGIN { print $sizes / $plain }")"
