# Sourced by the comparison benchmarks (bench-sizes.sh, bench-merges.sh) after they set
# $bin, $models and $bench (their name) and shifted those arguments off: takes BUDGET
# (16000) and OUT (target/$bench), empties $out and prints the date and the machine.
# `run NAME [flags...]` times one demo comparison (every strategy, $budget tokens) into
# $out/NAME, its log in $out/NAME.log, and prints its wall time in seconds; `baseline
# [flags...]` times the plain one (NAME `plain`), prints its line and leaves its time in
# $plain.
budget=${BUDGET:-16000}
out=${OUT:-target/$bench}
rm -rf "$out"
mkdir -p "$out"
date -u +"%Y-%m-%d %H:%M UTC, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores"

run() {
    name=$1
    shift
    start=$(date +%s.%N)
    "$bin" --models-dir "$models" compare --model default --tasks assets/demo/*.jsonl --strategies all \
        --budget-tokens "$budget" --out "$out/$name" "$@" >"$out/$name.log" 2>&1 || {
        tail -20 "$out/$name.log"
        exit 1
    }
    end=$(date +%s.%N)
    awk "BEGIN { print $end - $start }"
}

baseline() {
    plain=$(run plain "$@")
    printf 'one comparison (all strategies, %s tokens%s): %.0f s\n' "$budget" "${*:+, $*}" "$plain"
}
