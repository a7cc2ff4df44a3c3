#!/usr/bin/env bash
# The whole suite on a slow and a fast machine (`make test-stress`): run `make test-run`
# (the built suite, nothing compiled) five ways and say how each went:
#   one-core   on one core only (`taskset -c 0`): a machine half as fast, or slower;
#   cpu-hog    beside one busy loop per core: every test gets about half the CPU it had;
#   plain-1..3 as `make test` runs it, three times (a test that only sometimes passes).
# Each run's output is kept in $STRESS_DIR/<way>.log; a summary table ends the output and
# is written to $STRESS_DIR/summary.md. Exit status 1 if any way failed.
set -uo pipefail
cd "$(dirname "$0")/.."

MAKE=${MAKE:-make}
STRESS_DIR=${STRESS_DIR:-target/test-stress}
WAYS=${WAYS:-one-core cpu-hog plain-1 plain-2 plain-3}
mkdir -p "$STRESS_DIR"
summary="$STRESS_DIR/summary.md"
hogs=()

stop_hogs() {
  for p in "${hogs[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${hogs[@]}"; do wait "$p" 2>/dev/null; done
  hogs=()
}
trap stop_hogs EXIT

{
  echo "| way | result | minutes | failed tests |"
  echo "|---|---|---|---|"
} > "$summary"
failed_any=0
for way in $WAYS; do
  log="$STRESS_DIR/$way.log"
  prefix=()
  case "$way" in
    one-core) prefix=(taskset -c 0) ;;
    cpu-hog)
      for _ in $(seq "$(nproc)"); do
        bash -c 'while :; do :; done' &
        hogs+=($!)
      done ;;
    plain-*) ;;
    *) echo "unknown way: $way (one-core, cpu-hog, plain-N)"; exit 2 ;;
  esac
  echo "== $way: ${prefix[*]:-} $MAKE test-run (log: $log)"
  t0=$(date +%s)
  "${prefix[@]}" "$MAKE" --no-print-directory test-run > "$log" 2>&1
  rc=$?
  minutes=$(awk -v s=$(( $(date +%s) - t0 )) 'BEGIN { printf "%.1f", s / 60 }')
  stop_hogs
  # libtest prints "test <name> ... FAILED" for each failed test.
  failed=$(grep -E '^test .* \.\.\. FAILED$' "$log" | sed -E 's/^test (.*) \.\.\. FAILED$/\1/' | paste -sd, - || true)
  if [ "$rc" = 0 ]; then result=green; else result="red (exit $rc)"; failed_any=1; fi
  echo "| $way | $result | $minutes | ${failed:--} |" >> "$summary"
  echo "   $result in $minutes min${failed:+; failed: $failed}"
done
echo "== $(date -u +%Y-%m-%d), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
cat "$summary"
exit "$failed_any"
