#!/bin/sh
# What --tune-merges adds to a comparison, measured in one run: the demo comparison
# (every strategy), then the same with --tune-merges, one after the other on this
# machine; prints both wall times, the share the tuning adds (the target: at most 20%)
# and each merge's search as its report records it.
# Usage: scripts/bench-merges.sh BIN MODELS_DIR [compare flags...]
#   BUDGET (16000), OUT (target/bench-merges)
set -eu
bin=$1 models=$2 bench=bench-merges
shift 2
. "$(dirname "$0")/bench-compare.sh"
baseline "$@"
tuned=$(run tuned --tune-merges "$@")
printf 'with --tune-merges: %.0f s\n' "$tuned"
printf 'the tuning adds %.0f s: %.1f%% (target: at most 20%%)\n' \
    "$(awk "BEGIN { print $tuned - $plain }")" "$(awk "BEGIN { print 100 * ($tuned - $plain) / $plain }")"
python3 - "$out/tuned/report.json" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1]))["runs"]:
    t = r.get("merge_tuning")
    if t:
        print(f"  {t['method']}: search {t['wall_s']:.0f} s, {t['default_params']} -> {t['chosen_params']}")
PY
